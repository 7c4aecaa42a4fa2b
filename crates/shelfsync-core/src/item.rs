//! The item record and its key, with the field rules of the data model.
//!
//! An item is keyed by `(location, sku)`. Every constructor that takes
//! outside input validates it here, so the rest of the system can assume a
//! well-formed key and name. `available` is always derived, never stored.
//!
//! Every accepted write keeps `reserved + allowance <= quantity` and
//! `held <= reserved`; the decisions in [`crate::op`], [`crate::hold`],
//! [`crate::batch`] and [`crate::transfer`] check it, this module only
//! states it and holds the field rules that requests share (ids, names,
//! amounts, durations, line counts).

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::lock::Lock;

/// Longest location or sku, in bytes (they are ASCII by rule).
pub const MAX_ID_LEN: usize = 64;
/// Longest item name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Smallest amount an add/remove/reserve/release/fulfil may carry.
pub const MIN_AMOUNT: u64 = 1;
/// Largest amount an add/remove/reserve/release/fulfil may carry.
pub const MAX_AMOUNT: u64 = 1_000_000_000;
/// Most lines a multi-key request (batch, hold, transfer step) may carry.
pub const MAX_LINES: usize = 100;

/// The identity of an item: where it is stocked and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ItemKey {
    /// Location id (store, warehouse or pool such as `online`).
    pub location: String,
    /// Stock keeping unit within the location.
    pub sku: String,
}

impl ItemKey {
    /// Builds a key after checking both parts against the id pattern.
    pub fn new(location: impl Into<String>, sku: impl Into<String>) -> Result<Self, Rejection> {
        let key = ItemKey {
            location: location.into(),
            sku: sku.into(),
        };
        key.validate()?;
        Ok(key)
    }

    /// Checks both parts against `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`.
    pub fn validate(&self) -> Result<(), Rejection> {
        validate_id("location", &self.location)?;
        validate_id("sku", &self.sku)
    }
}

impl std::fmt::Display for ItemKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.location, self.sku)
    }
}

/// One item record as the coordinator holds it and replicas copy it.
///
/// `Default` is an empty record, only there so that literals can name the
/// fields they care about (`Item { quantity: 5, ..Default::default() }`);
/// it is not a valid item by itself.
///
/// The fields after `version` came later: they are `#[serde(default)]` and
/// stay last, so records encoded before them (by name or by position)
/// still decode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Location id.
    pub location: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Human-readable name, 1..=200 characters, no control characters.
    pub name: String,
    /// Units on hand.
    pub quantity: u64,
    /// Units promised to orders and holds; `reserved + allowance <= quantity`.
    pub reserved: u64,
    /// 1 on first create, +1 on every accepted write to this key.
    pub version: u64,
    /// The part of `reserved` that active holds account for; `held <= reserved`.
    /// Single-key release and fulfil only touch `reserved - held`.
    #[serde(default)]
    pub held: u64,
    /// Units granted to the owning store for offline sales; not available
    /// to anyone else. Nothing grants it yet, so it stays 0.
    #[serde(default)]
    pub allowance: u64,
    /// The lease lock on this key, if one was granted and not yet released
    /// or ended by the coordinator. A lock whose `expires_at_ms` has passed
    /// may still be here until the coordinator's expiry write; it no longer
    /// counts ([`Lock::is_live`]).
    #[serde(default)]
    pub lock: Option<Lock>,
}

impl Item {
    /// A new item at `key` with nothing reserved, held, granted or locked.
    pub fn new(key: &ItemKey, name: impl Into<String>, quantity: u64, version: u64) -> Self {
        Item {
            location: key.location.clone(),
            sku: key.sku.clone(),
            name: name.into(),
            quantity,
            version,
            ..Item::default()
        }
    }

    /// Units that can still be sold, reserved, held or shipped:
    /// `quantity - reserved - allowance`.
    pub fn available(&self) -> u64 {
        self.quantity
            .saturating_sub(self.reserved)
            .saturating_sub(self.allowance)
    }

    /// Units reserved outside holds: what a single-key release or fulfil may take.
    pub fn unheld(&self) -> u64 {
        self.reserved.saturating_sub(self.held)
    }

    /// The lock that still counts at `now_ms`, if any.
    pub fn live_lock(&self, now_ms: u64) -> Option<&Lock> {
        self.lock.as_ref().filter(|lock| lock.is_live(now_ms))
    }

    /// The key of this item.
    pub fn key(&self) -> ItemKey {
        ItemKey {
            location: self.location.clone(),
            sku: self.sku.clone(),
        }
    }
}

/// What is known about one key: never written, live, or deleted at a version.
///
/// A tombstone keeps the version of the delete, so a key created again goes
/// on from there and replicas never take an older version back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyState {
    /// No write to this key was ever accepted.
    Absent,
    /// The item exists.
    Live(Item),
    /// The item was deleted; `version` is the version of the delete.
    Deleted {
        /// Version the delete produced.
        version: u64,
    },
}

impl KeyState {
    /// The key's current version: 0 when absent, the tombstone's when deleted.
    pub fn version(&self) -> u64 {
        match self {
            KeyState::Absent => 0,
            KeyState::Live(item) => item.version,
            KeyState::Deleted { version } => *version,
        }
    }

    /// The version the key's next accepted write gets.
    pub fn next_version(&self) -> Result<u64, Rejection> {
        self.version()
            .checked_add(1)
            .ok_or(Rejection::Overflow { field: "version" })
    }

    /// The live item, if any.
    pub fn item(&self) -> Option<&Item> {
        match self {
            KeyState::Live(item) => Some(item),
            _ => None,
        }
    }
}

/// Checks a location or sku: an ASCII letter or digit, then up to 63 of
/// letters, digits, `.`, `_` or `-`.
pub fn validate_id(field: &'static str, value: &str) -> Result<(), Rejection> {
    let invalid = |reason: String| Rejection::InvalidField { field, reason };
    let bytes = value.as_bytes();
    let Some(first) = bytes.first() else {
        return Err(invalid("must not be empty".into()));
    };
    if bytes.len() > MAX_ID_LEN {
        return Err(invalid(format!(
            "is {} characters long, at most {MAX_ID_LEN} are allowed",
            bytes.len()
        )));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(invalid("must start with a letter or digit".into()));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(format!(
            "contains {bad:?}; only letters, digits, '.', '_' and '-' are allowed"
        )));
    }
    Ok(())
}

/// Checks an item name: 1..=200 characters, none of them control characters.
pub fn validate_name(name: &str) -> Result<(), Rejection> {
    let invalid = |reason: String| Rejection::InvalidField {
        field: "name",
        reason,
    };
    let chars = name.chars().count();
    if chars == 0 {
        return Err(invalid("must not be empty".into()));
    }
    if chars > MAX_NAME_CHARS {
        return Err(invalid(format!(
            "is {chars} characters long, at most {MAX_NAME_CHARS} are allowed"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(invalid("must not contain control characters".into()));
    }
    Ok(())
}

/// Checks an op amount: an integer in 1..=1,000,000,000.
pub fn validate_amount(amount: u64) -> Result<(), Rejection> {
    if !(MIN_AMOUNT..=MAX_AMOUNT).contains(&amount) {
        return Err(Rejection::InvalidField {
            field: "amount",
            reason: format!("is {amount}, it must be between {MIN_AMOUNT} and {MAX_AMOUNT}"),
        });
    }
    Ok(())
}

/// Checks a duration in milliseconds against its bounds, both inclusive.
pub fn validate_ttl(
    field: &'static str,
    ttl_ms: u64,
    min_ms: u64,
    max_ms: u64,
) -> Result<(), Rejection> {
    if !(min_ms..=max_ms).contains(&ttl_ms) {
        return Err(Rejection::InvalidField {
            field,
            reason: format!("is {ttl_ms} ms, it must be between {min_ms} ms and {max_ms} ms"),
        });
    }
    Ok(())
}

/// Checks the number of lines of a multi-key request: 1..=[`MAX_LINES`].
pub fn validate_line_count(lines: usize) -> Result<(), Rejection> {
    if !(1..=MAX_LINES).contains(&lines) {
        return Err(Rejection::InvalidField {
            field: "lines",
            reason: format!("has {lines} lines, it must have between 1 and {MAX_LINES}"),
        });
    }
    Ok(())
}

/// Checks that a multi-key decision was given one state per line: a
/// caller's mistake, refused rather than trusted.
pub(crate) fn check_state_count(lines: usize, states: usize) -> Result<(), Rejection> {
    if lines != states {
        return Err(Rejection::InvalidField {
            field: "lines",
            reason: format!("{lines} lines came with {states} item states"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_pattern() {
        let ok = ["a", "Z9", "store-1", "sku.12_x", &"a".repeat(64)];
        for id in ok {
            assert!(validate_id("sku", id).is_ok(), "{id} should be valid");
        }
        let bad = ["", "-a", ".a", "a b", "a/b", "ä", &"a".repeat(65), "a\n"];
        for id in bad {
            assert!(validate_id("sku", id).is_err(), "{id:?} should be invalid");
        }
    }

    #[test]
    fn id_errors_name_the_field_and_reason() {
        let err = validate_id("location", "a/b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid location: contains '/'; only letters, digits, '.', '_' and '-' are allowed"
        );
    }

    #[test]
    fn names_follow_the_rules() {
        assert!(validate_name("Bread, whole wheat 500 g").is_ok());
        assert!(validate_name(&"é".repeat(200)).is_ok());
        assert!(validate_name(&"é".repeat(201)).is_err());
        assert!(validate_name("").is_err());
        assert!(validate_name("tab\there").is_err());
    }

    #[test]
    fn amounts_are_bounded() {
        assert!(validate_amount(0).is_err());
        assert!(validate_amount(1).is_ok());
        assert!(validate_amount(MAX_AMOUNT).is_ok());
        assert!(validate_amount(MAX_AMOUNT + 1).is_err());
    }

    #[test]
    fn available_leaves_out_reserved_and_allowance() {
        let item = Item {
            quantity: 10,
            reserved: 4,
            held: 3,
            allowance: 2,
            ..Item::default()
        };
        assert_eq!((item.available(), item.unheld()), (4, 1));
        let odd = Item {
            quantity: 1,
            reserved: 1,
            allowance: 1,
            ..Item::default()
        };
        assert_eq!(odd.available(), 0);
    }

    #[test]
    fn ttls_and_line_counts_are_bounded() {
        assert!(validate_ttl("ttl", 999, 1_000, 2_000).is_err());
        assert!(validate_ttl("ttl", 1_000, 1_000, 2_000).is_ok());
        assert!(validate_ttl("ttl", 2_001, 1_000, 2_000).is_err());
        assert!(validate_line_count(0).is_err());
        assert!(validate_line_count(MAX_LINES).is_ok());
        assert!(validate_line_count(MAX_LINES + 1).is_err());
    }

    #[test]
    fn key_state_versions() {
        assert_eq!(KeyState::Absent.version(), 0);
        assert_eq!(KeyState::Deleted { version: 7 }.version(), 7);
    }
}
