//! `shelfctl history LOCATION SKU`: the change log of one key, newest first.
//!
//! Each entry shows the sequence number, when the coordinator accepted the
//! write (RFC 3339, UTC), which store (or `admin`) wrote it, the op in words,
//! the version and stock after it, and the idempotency key it carried, which
//! ties an entry to the client request that made it. Only the retained part
//! of the log is there: compaction drops the oldest entries. A key without
//! any retained entry prints a message on stderr and exits 1.

use comfy_table::Cell;
use serde::Serialize;
use shelfsync_core::{ItemKey, KeyState};
use shelfsync_proto::Change;

use crate::Outcome;
use crate::config::Config;
use crate::coordinator;
use crate::render;

/// Entries shown when `--limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// The most entries one request may ask for (the coordinator's page cap).
pub const MAX_LIMIT: u32 = 1000;

/// What `shelfctl history` was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The key (already validated).
    pub key: ItemKey,
    /// At most this many entries, 1..=[`MAX_LIMIT`].
    pub limit: u32,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// One change-log entry as shown.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChangeView {
    /// Global sequence number.
    pub seq: u64,
    /// When it was accepted, ms since the Unix epoch.
    pub at_ms: u64,
    /// The same in RFC 3339, UTC.
    pub time: String,
    /// The store (or `admin`) that wrote it.
    pub store: String,
    /// The op's name: `create`, `set`, `reserve`, ...
    pub op_kind: &'static str,
    /// The op in words, e.g. `reserve 3`.
    pub op: String,
    /// The key's version after the write.
    pub version: u64,
    /// Whether the item existed after the write (false after a delete).
    pub live: bool,
    /// Name after the write, `null` after a delete.
    pub name: Option<String>,
    /// Quantity after the write, `null` after a delete.
    pub quantity: Option<u64>,
    /// Reserved units after the write, `null` after a delete.
    pub reserved: Option<u64>,
    /// The idempotency key the write carried.
    pub idempotency_key: String,
    /// The state after the write in words, for the table.
    #[serde(skip)]
    pub after: String,
}

impl From<&Change> for ChangeView {
    fn from(change: &Change) -> Self {
        let item = change.state.item();
        ChangeView {
            seq: change.seq,
            at_ms: change.at_ms,
            time: render::rfc3339(change.at_ms),
            store: change.store.clone(),
            op_kind: change.op.kind(),
            op: render::op(&change.op),
            version: change.state.version(),
            live: matches!(change.state, KeyState::Live(_)),
            name: item.map(|i| i.name.clone()),
            quantity: item.map(|i| i.quantity),
            reserved: item.map(|i| i.reserved),
            idempotency_key: change.idempotency_key.clone(),
            after: render::key_state(&change.state),
        }
    }
}

/// The history as one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryView {
    /// The key.
    pub key: ItemKey,
    /// Entries, newest first.
    pub changes: Vec<ChangeView>,
}

impl HistoryView {
    /// A table, one change per row, newest first.
    pub fn to_text(&self, styled: bool) -> String {
        let mut table = render::table(
            &[
                "SEQ",
                "TIME",
                "STORE",
                "OP",
                "VERSION",
                "AFTER",
                "IDEMPOTENCY KEY",
            ],
            styled,
        );
        for view in &self.changes {
            table.add_row(vec![
                Cell::new(view.seq),
                Cell::new(&view.time),
                Cell::new(&view.store),
                Cell::new(&view.op),
                Cell::new(view.version),
                Cell::new(&view.after),
                Cell::new(&view.idempotency_key),
            ]);
        }
        format!("history of {}\n{table}\n", self.key)
    }
}

/// Runs `shelfctl history`.
pub async fn run(config: &Config, settings: &Settings) -> anyhow::Result<Outcome> {
    let client = coordinator::connect(config).await?;
    let changes = coordinator::history(&client, &settings.key, settings.limit).await;
    client.close().await;
    let changes = changes?;
    if changes.is_empty() {
        eprintln!("no changes recorded for {}", settings.key);
        return Ok(Outcome::Attention);
    }
    let view = HistoryView {
        key: settings.key.clone(),
        changes: changes.iter().map(ChangeView::from).collect(),
    };
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
    use shelfsync_core::{Item, Op};

    fn change(seq: u64, op: Op, state: KeyState) -> Change {
        Change {
            seq,
            key: ItemKey::new("store-1", "milk").unwrap(),
            state,
            op,
            store: "store-1".into(),
            idempotency_key: format!("k{seq}"),
            at_ms: 1_740_821_400_000 + seq,
            commit_end: 0,
        }
    }

    #[test]
    fn entries_show_the_op_and_the_state_after() {
        let item = Item {
            location: "store-1".into(),
            sku: "milk".into(),
            name: "Milk".into(),
            quantity: 10,
            reserved: 3,
            version: 2,
            ..Default::default()
        };
        let changes = [
            change(9, Op::Delete, KeyState::Deleted { version: 3 }),
            change(7, Op::Reserve { amount: 3 }, KeyState::Live(item)),
        ];
        let view = HistoryView {
            key: changes[0].key.clone(),
            changes: changes.iter().map(ChangeView::from).collect(),
        };
        assert_eq!(view.changes[0].op, "delete");
        assert_eq!(view.changes[0].version, 3);
        assert!(!view.changes[0].live);
        assert_eq!(view.changes[0].quantity, None);
        assert_eq!(view.changes[1].op, "reserve 3");
        assert_eq!(view.changes[1].time, "2025-03-01T09:30:00.007Z");
        assert_eq!(view.changes[1].reserved, Some(3));

        let text = view.to_text(false);
        assert!(text.starts_with("history of store-1/milk\n"), "{text}");
        let delete = text.find("delete").unwrap();
        let reserve = text.find("reserve 3").unwrap();
        assert!(delete < reserve, "newest first: {text}");
        assert!(text.contains("qty 10, reserved 3"), "{text}");
    }
}
