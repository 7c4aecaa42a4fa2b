//! `shelfctl transfers [--location L] [--state in_transit]` and
//! `shelfctl transfer show ID`: stock on its way between locations, newest
//! first, with per sku what was shipped, received and written off as lost
//! at close. `transfer show` of an unknown id exits 1.

use comfy_table::Cell;
use shelfsync_core::{Transfer, TransferState};
use shelfsync_proto::{
    ErrorCode, ProtoError, Request, Response, TransferAction, TransferRequest, TransfersRequest,
};

use crate::Outcome;
use crate::config::Config;
use crate::coordinator;
use crate::render;

/// What `shelfctl transfers` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListSettings {
    /// Only those from or to this location (already validated).
    pub location: Option<String>,
    /// Only those in this state.
    pub state: Option<TransferState>,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// What `shelfctl transfer show` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShowSettings {
    /// The transfer's id (already validated).
    pub id: String,
    /// Print JSON instead of a table.
    pub json: bool,
}

fn state_name(state: TransferState) -> &'static str {
    match state {
        TransferState::InTransit => "in_transit",
        TransferState::Closed => "closed",
    }
}

/// Parses a state as the command line spells it.
pub fn parse_state(text: &str) -> Result<TransferState, String> {
    match text {
        "in_transit" => Ok(TransferState::InTransit),
        "closed" => Ok(TransferState::Closed),
        other => Err(format!("no state {other:?}: in_transit or closed")),
    }
}

/// Transfers as a table, one per row, lines as `sku shipped/received/lost`.
pub fn to_text(transfers: &[Transfer], styled: bool) -> String {
    let mut table = render::table(
        &["ID", "FROM", "TO", "STATE", "LINES (shipped/received/lost)"],
        styled,
    );
    for transfer in transfers {
        let lines: Vec<String> = transfer
            .lines
            .iter()
            .map(|l| format!("{} {}/{}/{}", l.sku, l.shipped, l.received, l.lost))
            .collect();
        table.add_row(vec![
            Cell::new(&transfer.id),
            Cell::new(&transfer.from),
            Cell::new(&transfer.to),
            Cell::new(state_name(transfer.state)),
            Cell::new(lines.join(", ")),
        ]);
    }
    let plural = if transfers.len() == 1 { "" } else { "s" };
    format!("{} transfer{plural}\n{table}\n", transfers.len())
}

fn print(transfers: &[Transfer], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(transfers)?);
    } else {
        print!("{}", to_text(transfers, render::stdout_is_styled()));
    }
    Ok(())
}

/// Runs `shelfctl transfers`.
pub async fn list(config: &Config, settings: &ListSettings) -> anyhow::Result<Outcome> {
    let client = coordinator::connect(config).await?;
    let request = Request::Transfers(TransfersRequest {
        location: settings.location.clone(),
        state: settings.state,
    });
    let reply = client.call(&request).await;
    client.close().await;
    let transfers = match reply? {
        Response::Transfers(transfers) => transfers,
        Response::Error(err) => return Err(ProtoError::Refused(err).into()),
        _ => return Err(ProtoError::Unexpected("expected a list of transfers").into()),
    };
    print(&transfers, settings.json)?;
    Ok(Outcome::Success)
}

/// Runs `shelfctl transfer show`.
pub async fn show(config: &Config, settings: &ShowSettings) -> anyhow::Result<Outcome> {
    let client = coordinator::connect(config).await?;
    let request = Request::Transfer(TransferRequest {
        idempotency_key: String::new(),
        action: TransferAction::Get {
            id: settings.id.clone(),
        },
    });
    let reply = client.call(&request).await;
    client.close().await;
    let transfer = match reply? {
        Response::Transfer(ack) => ack.transfer,
        Response::Error(err) if err.code == ErrorCode::NotFound => {
            eprintln!("no transfer {}", settings.id);
            return Ok(Outcome::Attention);
        }
        Response::Error(err) => return Err(ProtoError::Refused(err).into()),
        _ => return Err(ProtoError::Unexpected("expected a transfer").into()),
    };
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&transfer)?);
    } else {
        print(std::slice::from_ref(&transfer), false)?;
    }
    Ok(Outcome::Success)
}
