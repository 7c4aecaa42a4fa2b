//! How shelfctl shows things to people: ages ("3s ago"), timestamps
//! (RFC 3339, UTC), ops ("reserve 3") and tables.
//!
//! The text functions are pure so their output is pinned by unit tests;
//! scripts should use `--json`, whose fields carry the raw numbers too.
//! Tables are coloured only when stdout is a terminal and `NO_COLOR` is not
//! set, so piped output never carries escape codes.

use std::io::IsTerminal;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{ContentArrangement, Table};
use shelfsync_core::{KeyState, Op};

/// How long ago `then_ms` was at `now_ms` (both milliseconds since the Unix
/// epoch), in the largest two units: `"42s ago"`, `"5m 3s ago"`,
/// `"2h 5m ago"`, `"3d 4h ago"`; `"never"` when there is no time. A time
/// after `now_ms` (clock skew) counts as now.
pub fn ago(now_ms: u64, then_ms: Option<u64>) -> String {
    let Some(then_ms) = then_ms else {
        return "never".to_string();
    };
    format!("{} ago", span(now_ms.saturating_sub(then_ms)))
}

/// A span of `ms` milliseconds in the largest two units: `"42s"`,
/// `"5m 3s"`, `"2h 5m"`, `"3d 4h"`.
pub fn span(ms: u64) -> String {
    let secs = ms / 1000;
    let (minutes, hours, days) = (secs / 60, secs / 3600, secs / 86_400);
    if days > 0 {
        two_units(days, 'd', hours % 24, 'h')
    } else if hours > 0 {
        two_units(hours, 'h', minutes % 60, 'm')
    } else if minutes > 0 {
        two_units(minutes, 'm', secs % 60, 's')
    } else {
        format!("{secs}s")
    }
}

fn two_units(big: u64, big_unit: char, small: u64, small_unit: char) -> String {
    if small == 0 {
        format!("{big}{big_unit}")
    } else {
        format!("{big}{big_unit} {small}{small_unit}")
    }
}

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with milliseconds,
/// e.g. `2025-03-01T09:30:00.250Z`.
pub fn rfc3339(ms: u64) -> String {
    let nanos = i128::from(ms) * 1_000_000;
    match time::OffsetDateTime::from_unix_timestamp_nanos(nanos) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        // Past year 9999: not a time the coordinator writes; show the number.
        Err(_) => format!("{ms}ms"),
    }
}

/// An op in words: `create "Milk" qty 10`, `set qty 12`, `reserve 3`,
/// `delete`. Names are quoted with Rust's escaping, so a name with quotes or
/// odd characters stays one readable token.
pub fn op(op: &Op) -> String {
    match op {
        Op::Create { name, quantity } => format!("create {name:?} qty {quantity}"),
        Op::Set { name, quantity } => {
            let mut text = "set".to_string();
            if let Some(name) = name {
                text.push_str(&format!(" name {name:?}"));
            }
            if let Some(quantity) = quantity {
                text.push_str(&format!(" qty {quantity}"));
            }
            text
        }
        Op::Add { amount }
        | Op::Remove { amount }
        | Op::Reserve { amount }
        | Op::Release { amount }
        | Op::Fulfil { amount } => format!("{} {amount}", op.kind()),
        Op::Delete => "delete".to_string(),
        Op::LockGrant { holder, ttl_ms } => format!("lock_grant {holder:?} ttl {ttl_ms} ms"),
        Op::LockRenew { token, ttl_ms } => format!("lock_renew token {token} ttl {ttl_ms} ms"),
        Op::LockRelease { token } | Op::LockExpire { token } => {
            format!("{} token {token}", op.kind())
        }
        Op::Hold { hold, amount }
        | Op::HoldFulfil { hold, amount }
        | Op::HoldRelease { hold, amount }
        | Op::HoldExpire { hold, amount } => format!("{} {hold} {amount}", op.kind()),
        Op::TransferShip { transfer, amount } | Op::TransferReceive { transfer, amount } => {
            format!("{} {transfer} {amount}", op.kind())
        }
    }
}

/// A key's state in words: `qty 10, reserved 3`, `deleted` or `absent`.
pub fn key_state(state: &KeyState) -> String {
    match state {
        KeyState::Absent => "absent".to_string(),
        KeyState::Live(item) => format!("qty {}, reserved {}", item.quantity, item.reserved),
        KeyState::Deleted { .. } => "deleted".to_string(),
    }
}

/// Whether output to stdout may carry colour and cursor escape codes.
pub fn stdout_is_styled() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// An empty table with shelfctl's look and `header`; colours and attributes
/// of its cells show only when `styled` (pass [`stdout_is_styled`]).
pub fn table(header: &[&str], styled: bool) -> Table {
    let mut table = Table::new();
    table
        .load_style(UTF8_FULL_CONDENSED)
        .set_content_arrangement(ContentArrangement::Dynamic)
        .set_header(header.to_vec());
    if styled {
        table.enforce_styling();
    } else {
        table.force_no_tty();
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use shelfsync_core::Item;

    #[test]
    fn ages_use_the_two_largest_units() {
        let now = 1_000_000_000_000;
        let cases = [
            (None, "never"),
            (Some(now), "0s ago"),
            (Some(now + 5_000), "0s ago"),
            (Some(now - 999), "0s ago"),
            (Some(now - 3_000), "3s ago"),
            (Some(now - 60_000), "1m ago"),
            (Some(now - 65_000), "1m 5s ago"),
            (Some(now - 3_600_000), "1h ago"),
            (Some(now - 7_500_000), "2h 5m ago"),
            (Some(now - 90_000_000), "1d 1h ago"),
            (Some(now - 3 * 86_400_000), "3d ago"),
        ];
        for (then, expected) in cases {
            assert_eq!(ago(now, then), expected, "{then:?}");
        }
        assert_eq!(ago(5_000, Some(0)), "5s ago");
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_740_821_400_250), "2025-03-01T09:30:00.250Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(u64::MAX), format!("{}ms", u64::MAX));
    }

    #[test]
    fn ops_in_words() {
        let cases = [
            (
                Op::Create {
                    name: "Milk".into(),
                    quantity: 10,
                },
                r#"create "Milk" qty 10"#,
            ),
            (
                Op::Set {
                    name: Some("Oat \"barista\"".into()),
                    quantity: Some(12),
                },
                r#"set name "Oat \"barista\"" qty 12"#,
            ),
            (
                Op::Set {
                    name: None,
                    quantity: Some(0),
                },
                "set qty 0",
            ),
            (
                Op::Set {
                    name: Some("Bread".into()),
                    quantity: None,
                },
                r#"set name "Bread""#,
            ),
            (Op::Add { amount: 4 }, "add 4"),
            (Op::Remove { amount: 1 }, "remove 1"),
            (Op::Reserve { amount: 3 }, "reserve 3"),
            (Op::Release { amount: 2 }, "release 2"),
            (Op::Fulfil { amount: 5 }, "fulfil 5"),
            (
                Op::HoldExpire {
                    hold: "h12".into(),
                    amount: 2,
                },
                "hold_expire h12 2",
            ),
            (Op::Delete, "delete"),
        ];
        for (o, expected) in cases {
            assert_eq!(op(&o), expected);
        }
    }

    #[test]
    fn key_states_in_words() {
        let item = Item {
            location: "store-1".into(),
            sku: "milk".into(),
            name: "Milk".into(),
            quantity: 10,
            reserved: 3,
            version: 4,
            ..Default::default()
        };
        assert_eq!(key_state(&KeyState::Live(item)), "qty 10, reserved 3");
        assert_eq!(key_state(&KeyState::Deleted { version: 5 }), "deleted");
        assert_eq!(key_state(&KeyState::Absent), "absent");
    }
}
