//! The item record and its key, with the field rules of the data model.
//!
//! An item is keyed by `(location, sku)`. Every constructor that takes
//! outside input validates it here, so the rest of the system can assume a
//! well-formed key and name. `available` is always derived, never stored.

use serde::{Deserialize, Serialize};

use crate::error::Rejection;

/// Longest location or sku, in bytes (they are ASCII by rule).
pub const MAX_ID_LEN: usize = 64;
/// Longest item name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Smallest amount an add/remove/reserve/release/fulfil may carry.
pub const MIN_AMOUNT: u64 = 1;
/// Largest amount an add/remove/reserve/release/fulfil may carry.
pub const MAX_AMOUNT: u64 = 1_000_000_000;

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Location id.
    pub location: String,
    /// Stock keeping unit.
    pub sku: String,
    /// Human-readable name, 1..=200 characters, no control characters.
    pub name: String,
    /// Units on hand.
    pub quantity: u64,
    /// Units promised to orders; never more than `quantity`.
    pub reserved: u64,
    /// 1 on first create, +1 on every accepted write to this key.
    pub version: u64,
}

impl Item {
    /// Units that can still be sold or reserved: `quantity - reserved`.
    pub fn available(&self) -> u64 {
        self.quantity.saturating_sub(self.reserved)
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
    fn key_state_versions() {
        assert_eq!(KeyState::Absent.version(), 0);
        assert_eq!(KeyState::Deleted { version: 7 }.version(), 7);
    }
}
