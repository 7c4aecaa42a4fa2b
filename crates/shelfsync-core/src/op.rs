//! The write operations and their effect, as one pure function.
//!
//! [`apply`] takes what is known about a key, an op and the optional expected
//! version, and returns the key's next state or a [`Rejection`]. It is the
//! only place the stock rules live: the coordinator calls it under the key's
//! serialization, tests and benches call it directly.
//!
//! Invariants kept for every accepted op: `reserved <= quantity`, no counter
//! under- or overflows, and the version rises by exactly one.

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::item::{Item, ItemKey, KeyState, validate_amount, validate_name};

/// A write to one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// New item with a name and a quantity; refused when the key exists.
    Create {
        /// Item name.
        name: String,
        /// Units on hand.
        quantity: u64,
    },
    /// Replace the name and/or the quantity (a stock count). Needs the expected version.
    Set {
        /// New name, if it changes.
        #[serde(default)]
        name: Option<String>,
        /// New quantity, if it changes; never below `reserved`.
        #[serde(default)]
        quantity: Option<u64>,
    },
    /// `quantity += amount`.
    Add {
        /// Units to add.
        amount: u64,
    },
    /// `quantity -= amount`; no more than is available.
    Remove {
        /// Units to remove.
        amount: u64,
    },
    /// `reserved += amount`; no more than is available.
    Reserve {
        /// Units to reserve.
        amount: u64,
    },
    /// `reserved -= amount`; no more than is reserved.
    Release {
        /// Units to release.
        amount: u64,
    },
    /// `quantity -= amount` and `reserved -= amount` together; no more than is reserved.
    Fulfil {
        /// Units shipped out of the reservation.
        amount: u64,
    },
    /// Remove the item, leaving a tombstone. Needs the expected version; no reservations may remain.
    Delete,
}

impl Op {
    /// The op's name as the API and the metrics spell it.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Set { .. } => "set",
            Op::Add { .. } => "add",
            Op::Remove { .. } => "remove",
            Op::Reserve { .. } => "reserve",
            Op::Release { .. } => "release",
            Op::Fulfil { .. } => "fulfil",
            Op::Delete => "delete",
        }
    }

    /// Builds an amount op from its API name (`add`, `remove`, `reserve`, `release`, `fulfil`).
    pub fn with_amount(kind: &str, amount: u64) -> Option<Op> {
        Some(match kind {
            "add" => Op::Add { amount },
            "remove" => Op::Remove { amount },
            "reserve" => Op::Reserve { amount },
            "release" => Op::Release { amount },
            "fulfil" => Op::Fulfil { amount },
            _ => return None,
        })
    }

    /// Checks the op's own fields, independent of any item.
    pub fn validate(&self) -> Result<(), Rejection> {
        match self {
            Op::Create { name, .. } => validate_name(name),
            Op::Set { name, quantity } => {
                if name.is_none() && quantity.is_none() {
                    return Err(Rejection::InvalidField {
                        field: "name",
                        reason: "a set needs a name, a quantity or both".into(),
                    });
                }
                name.as_deref().map_or(Ok(()), validate_name)
            }
            Op::Add { amount }
            | Op::Remove { amount }
            | Op::Reserve { amount }
            | Op::Release { amount }
            | Op::Fulfil { amount } => validate_amount(*amount),
            Op::Delete => Ok(()),
        }
    }

    /// Whether the op is refused without an expected version.
    pub fn needs_expected_version(&self) -> bool {
        matches!(self, Op::Set { .. } | Op::Delete)
    }
}

/// Applies `op` to the key in `state` at `now_ms` (the coordinator's clock,
/// milliseconds since the Unix epoch) and returns the key's next state.
///
/// Taking the clock as an argument keeps the decision pure: rules that
/// depend on time are decided from it, never from a clock read inside. No
/// rule of the single-key ops depends on time yet.
///
/// Checks, in order: the key and op fields, that the item exists (or does
/// not, for create), that a set or delete carries `expected_version`, that
/// `expected_version` matches, and the stock rules.
pub fn apply(
    key: &ItemKey,
    state: &KeyState,
    op: &Op,
    expected_version: Option<u64>,
    now_ms: u64,
) -> Result<KeyState, Rejection> {
    let _ = now_ms;
    key.validate()?;
    op.validate()?;
    let next_version = state
        .version()
        .checked_add(1)
        .ok_or(Rejection::Overflow { field: "version" })?;

    if let Op::Create { name, quantity } = op {
        if let KeyState::Live(item) = state {
            return Err(Rejection::AlreadyExists {
                key: key.clone(),
                current: Box::new(item.clone()),
            });
        }
        check_version(state, expected_version)?;
        return Ok(KeyState::Live(Item {
            location: key.location.clone(),
            sku: key.sku.clone(),
            name: name.clone(),
            quantity: *quantity,
            reserved: 0,
            version: next_version,
        }));
    }

    let KeyState::Live(item) = state else {
        return Err(Rejection::NotFound { key: key.clone() });
    };
    if op.needs_expected_version() && expected_version.is_none() {
        return Err(Rejection::PreconditionRequired { op: op.kind() });
    }
    check_version(state, expected_version)?;

    let mut next = item.clone();
    next.version = next_version;
    match op {
        // Handled above; listed so the match stays exhaustive.
        Op::Create { .. } => {}
        Op::Set { name, quantity } => {
            if let Some(quantity) = *quantity {
                if quantity < item.reserved {
                    return Err(Rejection::BelowReserved {
                        quantity,
                        reserved: item.reserved,
                    });
                }
                next.quantity = quantity;
            }
            if let Some(name) = name {
                next.name = name.clone();
            }
        }
        Op::Add { amount } => {
            next.quantity = item
                .quantity
                .checked_add(*amount)
                .ok_or(Rejection::Overflow { field: "quantity" })?;
        }
        Op::Remove { amount } => {
            check_available(item, *amount)?;
            next.quantity = item.quantity - amount;
        }
        Op::Reserve { amount } => {
            check_available(item, *amount)?;
            next.reserved = item.reserved + amount;
        }
        Op::Release { amount } => {
            check_reserved(item, *amount)?;
            next.reserved = item.reserved - amount;
        }
        Op::Fulfil { amount } => {
            check_reserved(item, *amount)?;
            next.reserved = item.reserved - amount;
            next.quantity = item.quantity - amount;
        }
        Op::Delete => {
            if item.reserved > 0 {
                return Err(Rejection::HasReservations {
                    reserved: item.reserved,
                });
            }
            return Ok(KeyState::Deleted {
                version: next_version,
            });
        }
    }
    Ok(KeyState::Live(next))
}

fn check_version(state: &KeyState, expected: Option<u64>) -> Result<(), Rejection> {
    match expected {
        Some(expected) if expected != state.version() => Err(Rejection::VersionMismatch {
            expected,
            actual: state.version(),
            current: state.item().cloned().map(Box::new),
        }),
        _ => Ok(()),
    }
}

fn check_available(item: &Item, requested: u64) -> Result<(), Rejection> {
    if requested > item.available() {
        return Err(Rejection::InsufficientStock {
            available: item.available(),
            requested,
        });
    }
    Ok(())
}

fn check_reserved(item: &Item, requested: u64) -> Result<(), Rejection> {
    if requested > item.reserved {
        return Err(Rejection::InsufficientReserved {
            reserved: item.reserved,
            requested,
        });
    }
    Ok(())
}
