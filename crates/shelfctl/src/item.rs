//! `shelfctl item get LOCATION SKU`: a strong read of one item.
//!
//! The read goes to the coordinator, the single authority, so it shows the
//! durable state whatever any replica holds. The JSON shape is the agent
//! REST API's item JSON, `available` included. A missing item is not an
//! error of shelfctl: it prints a message on stderr and exits 1.

use comfy_table::Cell;
use serde::Serialize;
use shelfsync_core::{Item, ItemKey};

use crate::Outcome;
use crate::config::Config;
use crate::coordinator;
use crate::render;

/// What `shelfctl item get` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The key to read (already validated).
    pub key: ItemKey,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// An item as shown: the stored fields plus the derived `available`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ItemView {
    /// Location id.
    pub location: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Item name.
    pub name: String,
    /// Units on hand.
    pub quantity: u64,
    /// Units promised to orders.
    pub reserved: u64,
    /// The part of `reserved` in active holds.
    pub held: u64,
    /// Units granted to the owning store for offline sales.
    pub allowance: u64,
    /// `quantity - reserved - allowance`.
    pub available: u64,
    /// Version of the item.
    pub version: u64,
    /// The live lock, if any.
    pub lock: Option<LockView>,
}

/// A live lock as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockView {
    /// Who holds it.
    pub holder: String,
    /// Its fencing token.
    pub token: u64,
    /// Milliseconds until it expires.
    pub expires_in_ms: u64,
}

impl From<&Item> for ItemView {
    fn from(item: &Item) -> Self {
        ItemView {
            location: item.location.clone(),
            sku: item.sku.clone(),
            name: item.name.clone(),
            quantity: item.quantity,
            reserved: item.reserved,
            held: item.held,
            allowance: item.allowance,
            available: item.available(),
            version: item.version,
            lock: item
                .live_lock(shelfsync_proto::time::now_ms())
                .map(|lock| LockView {
                    holder: lock.holder.clone(),
                    token: lock.token,
                    expires_in_ms: lock.expires_in_ms(shelfsync_proto::time::now_ms()),
                }),
        }
    }
}

impl ItemView {
    /// A two-column table, one field per row.
    pub fn to_text(&self, styled: bool) -> String {
        let mut table = render::table(&["FIELD", "VALUE"], styled);
        let lock = match &self.lock {
            Some(lock) => format!(
                "{} (token {}, {} s left)",
                lock.holder,
                lock.token,
                lock.expires_in_ms.div_ceil(1000)
            ),
            None => "-".to_string(),
        };
        let rows: [(&str, String); 10] = [
            ("location", self.location.clone()),
            ("sku", self.sku.clone()),
            ("name", self.name.clone()),
            ("quantity", self.quantity.to_string()),
            ("reserved", self.reserved.to_string()),
            ("held", self.held.to_string()),
            ("allowance", self.allowance.to_string()),
            ("available", self.available.to_string()),
            ("version", self.version.to_string()),
            ("lock", lock),
        ];
        for (field, value) in rows {
            table.add_row(vec![Cell::new(field), Cell::new(value)]);
        }
        format!("{table}\n")
    }
}

/// Runs `shelfctl item get`.
pub async fn get(config: &Config, settings: &Settings) -> anyhow::Result<Outcome> {
    let client = coordinator::connect(config).await?;
    let item = coordinator::read(&client, &settings.key).await;
    client.close().await;
    let Some(item) = item? else {
        eprintln!("item {} not found", settings.key);
        return Ok(Outcome::Attention);
    };
    let view = ItemView::from(&item);
    if settings.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", view.to_text(render::stdout_is_styled()));
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_has_the_rest_api_shape() {
        let item = Item {
            location: "store-1".into(),
            sku: "milk-1l".into(),
            name: "Milk 1 l".into(),
            quantity: 10,
            reserved: 3,
            version: 4,
            ..Default::default()
        };
        let view = ItemView::from(&item);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "location": "store-1", "sku": "milk-1l", "name": "Milk 1 l",
                "quantity": 10, "reserved": 3, "held": 0, "allowance": 0,
                "available": 7, "version": 4, "lock": null
            })
        );
        let text = view.to_text(false);
        assert!(text.contains("Milk 1 l"), "{text}");
        assert!(text.contains("available"), "{text}");
    }
}
