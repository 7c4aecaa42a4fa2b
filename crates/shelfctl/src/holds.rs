//! `shelfctl holds LOCATION [SKU]`: the active holds (carts, click &
//! collect orders) with a line at a location, or on one of its items,
//! earliest expiry first. A hold is listed with all of its lines, those at
//! other locations too. No active hold is not an error: an empty list.

use comfy_table::Cell;
use serde::Serialize;
use shelfsync_proto::{HoldAck, HoldsRequest, ProtoError, Request, Response};

use crate::Outcome;
use crate::config::Config;
use crate::coordinator;
use crate::render;

/// What `shelfctl holds` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The location (already validated).
    pub location: String,
    /// Only holds on this sku.
    pub sku: Option<String>,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// One hold as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HoldView {
    /// The hold's id.
    pub id: String,
    /// Whose hold it is.
    pub owner: String,
    /// Milliseconds until it expires.
    pub expires_in_ms: u64,
    /// Its lines.
    pub lines: Vec<LineView>,
}

/// One line of a hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineView {
    /// The item's location.
    pub location: String,
    /// The item's sku.
    pub sku: String,
    /// Units held.
    pub amount: u64,
}

impl From<&HoldAck> for HoldView {
    fn from(ack: &HoldAck) -> Self {
        let lines = ack.hold.lines.iter().map(|line| LineView {
            location: line.key.location.clone(),
            sku: line.key.sku.clone(),
            amount: line.amount,
        });
        HoldView {
            id: ack.hold.id.clone(),
            owner: ack.hold.owner.clone(),
            expires_in_ms: ack.expires_in_ms,
            lines: lines.collect(),
        }
    }
}

/// The listing as a table, one hold per row.
pub fn to_text(holds: &[HoldView], styled: bool) -> String {
    let mut table = render::table(&["ID", "OWNER", "EXPIRES IN", "LINES"], styled);
    for hold in holds {
        let lines: Vec<String> = hold
            .lines
            .iter()
            .map(|l| format!("{}/{} ×{}", l.location, l.sku, l.amount))
            .collect();
        table.add_row(vec![
            Cell::new(&hold.id),
            Cell::new(&hold.owner),
            Cell::new(render::span(hold.expires_in_ms)),
            Cell::new(lines.join(", ")),
        ]);
    }
    let plural = if holds.len() == 1 { "" } else { "s" };
    format!("{} active hold{plural}\n{table}\n", holds.len())
}

/// Runs `shelfctl holds`.
pub async fn run(config: &Config, settings: &Settings) -> anyhow::Result<Outcome> {
    let client = coordinator::connect(config).await?;
    let request = Request::Holds(HoldsRequest {
        location: settings.location.clone(),
        sku: settings.sku.clone(),
    });
    let reply = client.call(&request).await;
    client.close().await;
    let holds = match reply? {
        Response::Holds(holds) => holds,
        Response::Error(err) => return Err(ProtoError::Refused(err).into()),
        _ => return Err(ProtoError::Unexpected("expected a list of holds").into()),
    };
    let views: Vec<HoldView> = holds.iter().map(HoldView::from).collect();
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&views)?);
    } else {
        print!("{}", to_text(&views, render::stdout_is_styled()));
    }
    Ok(Outcome::Success)
}
