//! The write operations and their effect, as one pure function.
//!
//! [`apply`] takes what is known about a key, an op and the request's
//! [`Precondition`] (expected version, lock token), and returns the key's
//! next state or a [`Rejection`]. It is the only place the single-key stock
//! rules live: the coordinator calls it under the key's serialization, the
//! batch decision calls it per line, tests and benches call it directly.
//! The lock rules it applies are in [`crate::lock`].
//!
//! Invariants kept for every accepted op: `reserved + allowance <= quantity`,
//! `held <= reserved` (single-key release and fulfil never touch what holds
//! account for), no counter under- or overflows, and the version rises by
//! exactly one.

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::item::{
    Item, ItemKey, KeyState, validate_amount, validate_id, validate_name, validate_ttl,
};
use crate::lock;

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
    /// Lock the key for `holder`; the new version is the lock's token.
    LockGrant {
        /// Who takes the lock (same pattern as a location id).
        holder: String,
        /// Lease length in milliseconds, 1 s..=1 h.
        ttl_ms: u64,
    },
    /// Extend the live lock with `token` to `ttl_ms` from now.
    LockRenew {
        /// The lock's token.
        token: u64,
        /// New lease length in milliseconds from now, 1 s..=1 h.
        ttl_ms: u64,
    },
    /// End the live lock with `token`.
    LockRelease {
        /// The lock's token.
        token: u64,
    },
    /// The coordinator's own write ending the lock with `token` once its
    /// lease has passed. Never accepted from a store.
    LockExpire {
        /// The token of the lock to end.
        token: u64,
    },
    /// A line of a new hold: `reserved` and `held` grew by `amount`.
    /// This and the step ops below are written by the coordinator for the
    /// steps of holds and transfers ([`crate::hold`], [`crate::transfer`]),
    /// so that the change log says what happened; never accepted as a write.
    Hold {
        /// The hold's id.
        hold: String,
        /// Units of the line.
        amount: u64,
    },
    /// A hold's line left stock: `quantity`, `reserved` and `held` fell by `amount`.
    HoldFulfil {
        /// The hold's id.
        hold: String,
        /// Units of the line.
        amount: u64,
    },
    /// A client gave a hold's line back: `reserved` and `held` fell by `amount`.
    HoldRelease {
        /// The hold's id.
        hold: String,
        /// Units of the line.
        amount: u64,
    },
    /// The coordinator gave an expired hold's line back.
    HoldExpire {
        /// The hold's id.
        hold: String,
        /// Units of the line.
        amount: u64,
    },
    /// A transfer's line left its source: `quantity` fell by `amount`.
    TransferShip {
        /// The transfer's id.
        transfer: String,
        /// Units shipped.
        amount: u64,
    },
    /// A transfer's line arrived: `quantity` grew by `amount`.
    TransferReceive {
        /// The transfer's id.
        transfer: String,
        /// Units received.
        amount: u64,
    },
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
            Op::LockGrant { .. } => "lock_grant",
            Op::LockRenew { .. } => "lock_renew",
            Op::LockRelease { .. } => "lock_release",
            Op::LockExpire { .. } => "lock_expire",
            Op::Hold { .. } => "hold",
            Op::HoldFulfil { .. } => "hold_fulfil",
            Op::HoldRelease { .. } => "hold_release",
            Op::HoldExpire { .. } => "hold_expire",
            Op::TransferShip { .. } => "transfer_ship",
            Op::TransferReceive { .. } => "transfer_receive",
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
            Op::Delete | Op::LockRelease { .. } | Op::LockExpire { .. } => Ok(()),
            Op::LockGrant { holder, ttl_ms } => {
                validate_id("holder", holder)?;
                validate_ttl("ttl", *ttl_ms, lock::MIN_TTL_MS, lock::MAX_TTL_MS)
            }
            Op::LockRenew { ttl_ms, .. } => {
                validate_ttl("ttl", *ttl_ms, lock::MIN_TTL_MS, lock::MAX_TTL_MS)
            }
            Op::Hold { .. }
            | Op::HoldFulfil { .. }
            | Op::HoldRelease { .. }
            | Op::HoldExpire { .. }
            | Op::TransferShip { .. }
            | Op::TransferReceive { .. } => Err(not_a_write(self)),
        }
    }

    /// Whether the op records a step of a hold or a transfer: the
    /// coordinator writes these, [`apply`] refuses them.
    pub fn is_step(&self) -> bool {
        matches!(
            self,
            Op::Hold { .. }
                | Op::HoldFulfil { .. }
                | Op::HoldRelease { .. }
                | Op::HoldExpire { .. }
                | Op::TransferShip { .. }
                | Op::TransferReceive { .. }
        )
    }

    /// Whether the op is refused without an expected version.
    pub fn needs_expected_version(&self) -> bool {
        matches!(self, Op::Set { .. } | Op::Delete)
    }

    /// Whether the op grants, renews, releases or expires a lock rather
    /// than changing stock (the ops of the data model, which batches allow).
    pub fn is_lock_op(&self) -> bool {
        matches!(
            self,
            Op::LockGrant { .. }
                | Op::LockRenew { .. }
                | Op::LockRelease { .. }
                | Op::LockExpire { .. }
        )
    }
}

/// What a write asserts about the key besides the op itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Precondition {
    /// The version the client last saw (`If-Match`); the write is refused
    /// when it differs from the key's version.
    pub expected_version: Option<u64>,
    /// The token of the key's lock (`Lock-Token`); needed while the key has
    /// a live lock, refused when it is not that lock's.
    pub lock_token: Option<u64>,
}

impl Precondition {
    /// A precondition on the version only, with no lock token.
    pub fn expecting(expected_version: Option<u64>) -> Self {
        Precondition {
            expected_version,
            lock_token: None,
        }
    }
}

/// Applies `op` to the key in `state` at `now_ms` (the coordinator's clock,
/// milliseconds since the Unix epoch) and returns the key's next state.
///
/// Taking the clock as an argument keeps the decision pure: rules that
/// depend on time (lock leases) are decided from it, never from a clock
/// read inside.
///
/// Checks, in order: the key and op fields, that the item exists (or does
/// not, for create), the key's lock ([`crate::lock`]), that a set or delete
/// carries `expected_version`, that `expected_version` matches, and the
/// stock rules.
pub fn apply(
    key: &ItemKey,
    state: &KeyState,
    op: &Op,
    precondition: Precondition,
    now_ms: u64,
) -> Result<KeyState, Rejection> {
    let Precondition {
        expected_version,
        lock_token,
    } = precondition;
    key.validate()?;
    op.validate()?;
    let next_version = state.next_version()?;

    if let Op::Create { name, quantity } = op {
        if let KeyState::Live(item) = state {
            return Err(Rejection::AlreadyExists {
                key: key.clone(),
                current: Box::new(item.clone()),
            });
        }
        lock::check(None, lock_token, now_ms)?;
        check_version(state, expected_version)?;
        return Ok(KeyState::Live(Item::new(
            key,
            name.clone(),
            *quantity,
            next_version,
        )));
    }

    let KeyState::Live(item) = state else {
        return Err(Rejection::NotFound { key: key.clone() });
    };
    lock::authorize(item, op, lock_token, now_ms)?;
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
                if quantity < item.reserved.saturating_add(item.allowance) {
                    return Err(Rejection::BelowReserved {
                        quantity,
                        reserved: item.reserved,
                        allowance: item.allowance,
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
            check_unheld(item, *amount)?;
            next.reserved = item.reserved - amount;
        }
        Op::Fulfil { amount } => {
            check_unheld(item, *amount)?;
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
        Op::LockGrant { .. }
        | Op::LockRenew { .. }
        | Op::LockRelease { .. }
        | Op::LockExpire { .. } => lock::effect(&mut next, op, now_ms),
        // Refused by `validate` above; listed so the match stays exhaustive.
        Op::Hold { .. }
        | Op::HoldFulfil { .. }
        | Op::HoldRelease { .. }
        | Op::HoldExpire { .. }
        | Op::TransferShip { .. }
        | Op::TransferReceive { .. } => return Err(not_a_write(op)),
    }
    Ok(KeyState::Live(next))
}

/// The refusal of a step op sent as a write.
fn not_a_write(op: &Op) -> Rejection {
    Rejection::InvalidField {
        field: "op",
        reason: format!(
            "{} is a step of a hold or a transfer, not a write",
            op.kind()
        ),
    }
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

/// Checks that `requested` units are available (`quantity - reserved - allowance`).
pub(crate) fn check_available(item: &Item, requested: u64) -> Result<(), Rejection> {
    if requested > item.available() {
        return Err(Rejection::InsufficientStock {
            available: item.available(),
            requested,
        });
    }
    Ok(())
}

/// Checks that `requested` units are reserved outside holds, which is all a
/// single-key release or fulfil may take.
fn check_unheld(item: &Item, requested: u64) -> Result<(), Rejection> {
    if requested > item.unheld() {
        return Err(Rejection::InsufficientReserved {
            reserved: item.unheld(),
            requested,
        });
    }
    Ok(())
}
