//! Transfers: stock shipped from one location to another, received in one
//! or more steps, and closed.
//!
//! Each step is a pure function of the transfer, the current states of the
//! keys it writes (in line order) and `now_ms`, returning the transfer after
//! it and every line's new item state (each one write, version +1), or a
//! rejection; a refused line is named with [`Rejection::Line`], and nothing
//! is applied then.
//!
//! Stock is conserved: per sku, `sum(quantity over locations) + in_transit`
//! is the same before and after [`create`] and [`receive`]; [`close`]
//! writes off what was never received as `lost`, the one step that lowers
//! it. `in_transit` of a line is `shipped - received - lost`, 0 once closed.
//!
//! Rules the spec leaves open, decided here: a transfer has at most 100
//! lines with distinct skus and `from != to`; a receipt of a sku that is
//! not in the transfer is an invalid field; a receipt or close of a closed
//! transfer is [`Rejection::TransferClosed`]; closing writes no item, so it
//! looks at no lock. Storing transfers and deciding who may ship or receive
//! are the coordinator's.

use serde::{Deserialize, Serialize};

use crate::error::Rejection;
use crate::item::{
    Item, ItemKey, KeyState, check_state_count, validate_amount, validate_id, validate_line_count,
};
use crate::lock::{self, LockTokens};
use crate::op::check_available;

/// Stock on its way from one location to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The transfer's id, given by the coordinator.
    pub id: String,
    /// The location the stock left.
    pub from: String,
    /// The location it goes to.
    pub to: String,
    /// One line per sku.
    pub lines: Vec<TransferLine>,
    /// Whether it is still open.
    pub state: TransferState,
}

/// One sku of a transfer and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferLine {
    /// The sku, the same at both ends.
    pub sku: String,
    /// The source item's name, for creating the item at `to` on receipt.
    pub name: String,
    /// Units taken from `from`.
    pub shipped: u64,
    /// Units added to `to` so far.
    pub received: u64,
    /// Units written off when the transfer was closed.
    pub lost: u64,
}

/// Whether a transfer is still open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TransferState {
    /// Shipped; receipts may follow.
    InTransit,
    /// Ended; what was not received is `lost`.
    Closed,
}

/// A sku and a number of units, as shipment and receipt requests name them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferAmount {
    /// The sku.
    pub sku: String,
    /// Units, 1..=1,000,000,000.
    pub amount: u64,
}

/// A request for a new transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewTransfer {
    /// The id the coordinator gives it.
    pub id: String,
    /// The location to ship from.
    pub from: String,
    /// The location to ship to; not `from`.
    pub to: String,
    /// 1..=100 lines with distinct skus.
    pub lines: Vec<TransferAmount>,
}

/// An accepted transfer step: the transfer after it and the new states of
/// the items it wrote, in line order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferStep {
    /// The transfer after the step.
    pub transfer: Transfer,
    /// Each line's new item state, in line order.
    pub items: Vec<KeyState>,
}

impl TransferLine {
    /// Units shipped and neither received nor written off.
    pub fn in_transit(&self) -> u64 {
        self.shipped
            .saturating_sub(self.received)
            .saturating_sub(self.lost)
    }
}

impl Transfer {
    /// Units of `sku` this transfer has in transit.
    pub fn in_transit(&self, sku: &str) -> u64 {
        self.lines
            .iter()
            .filter(|line| line.sku == sku)
            .map(TransferLine::in_transit)
            .sum()
    }

    fn check_open(&self) -> Result<(), Rejection> {
        match self.state {
            TransferState::InTransit => Ok(()),
            TransferState::Closed => Err(Rejection::TransferClosed {
                id: self.id.clone(),
            }),
        }
    }
}

/// Units of `sku` in transit over `transfers`.
pub fn in_transit<'a>(transfers: impl IntoIterator<Item = &'a Transfer>, sku: &str) -> u64 {
    transfers
        .into_iter()
        .map(|transfer| transfer.in_transit(sku))
        .fold(0, u64::saturating_add)
}

/// Ships: every line's amount leaves its item at `from`, or nothing does.
/// `sources` are the states of `(from, sku)` in line order.
pub fn create(
    request: &NewTransfer,
    sources: &[KeyState],
    tokens: &LockTokens,
    now_ms: u64,
) -> Result<TransferStep, Rejection> {
    validate_id("id", &request.id)?;
    validate_id("from", &request.from)?;
    validate_id("to", &request.to)?;
    if request.from == request.to {
        return Err(Rejection::InvalidField {
            field: "to",
            reason: format!("is {}, the location shipped from", request.to),
        });
    }
    check_amounts(&request.lines, "transfer")?;
    check_state_count(request.lines.len(), sources.len())?;
    let mut lines = Vec::with_capacity(request.lines.len());
    let mut items = Vec::with_capacity(request.lines.len());
    for (index, (line, state)) in request.lines.iter().zip(sources).enumerate() {
        let key = key(&request.from, &line.sku);
        let shipped = ship(&key, state, line.amount, tokens.get(&key).copied(), now_ms)
            .map_err(|rejection| rejection.at_line(index))?;
        lines.push(TransferLine {
            sku: line.sku.clone(),
            name: shipped.name.clone(),
            shipped: line.amount,
            received: 0,
            lost: 0,
        });
        items.push(KeyState::Live(shipped));
    }
    let transfer = Transfer {
        id: request.id.clone(),
        from: request.from.clone(),
        to: request.to.clone(),
        lines,
        state: TransferState::InTransit,
    };
    Ok(TransferStep { transfer, items })
}

/// Receives: every line's amount is added to its item at `to` (created
/// with the source's name if absent), never more than is in transit.
/// `targets` are the states of `(to, sku)` in the receipt's line order.
pub fn receive(
    transfer: &Transfer,
    receipt: &[TransferAmount],
    targets: &[KeyState],
    tokens: &LockTokens,
    now_ms: u64,
) -> Result<TransferStep, Rejection> {
    transfer.check_open()?;
    check_amounts(receipt, "receipt")?;
    check_state_count(receipt.len(), targets.len())?;
    let mut next = transfer.clone();
    let mut items = Vec::with_capacity(receipt.len());
    for (index, (line, state)) in receipt.iter().zip(targets).enumerate() {
        let key = key(&transfer.to, &line.sku);
        let received = next
            .lines
            .iter_mut()
            .find(|shipped| shipped.sku == line.sku)
            .ok_or_else(|| Rejection::InvalidField {
                field: "sku",
                reason: format!("{} is not part of transfer {}", line.sku, transfer.id),
            })
            .and_then(|shipped| {
                if line.amount > shipped.in_transit() {
                    return Err(Rejection::OverReceipt {
                        sku: line.sku.clone(),
                        outstanding: shipped.in_transit(),
                        requested: line.amount,
                    });
                }
                shipped.received += line.amount;
                let token = tokens.get(&key).copied();
                stock(&key, state, &shipped.name, line.amount, token, now_ms)
            })
            .map_err(|rejection| rejection.at_line(index))?;
        items.push(KeyState::Live(received));
    }
    Ok(TransferStep {
        transfer: next,
        items,
    })
}

/// Closes an open transfer: what was not received is written off as
/// `lost`. Writes no item.
pub fn close(transfer: &Transfer) -> Result<Transfer, Rejection> {
    transfer.check_open()?;
    let mut next = transfer.clone();
    for line in &mut next.lines {
        line.lost += line.in_transit();
    }
    next.state = TransferState::Closed;
    Ok(next)
}

fn key(location: &str, sku: &str) -> ItemKey {
    ItemKey {
        location: location.to_string(),
        sku: sku.to_string(),
    }
}

/// 1..=100 lines of valid skus and amounts, no sku twice.
fn check_amounts(lines: &[TransferAmount], what: &str) -> Result<(), Rejection> {
    validate_line_count(lines.len())?;
    for (index, line) in lines.iter().enumerate() {
        let checked = validate_id("sku", &line.sku).and_then(|()| validate_amount(line.amount));
        checked.map_err(|rejection| rejection.at_line(index))?;
        if lines[..index].iter().any(|l| l.sku == line.sku) {
            let rejection = Rejection::InvalidField {
                field: "sku",
                reason: format!("{} appears twice in the {what}", line.sku),
            };
            return Err(rejection.at_line(index));
        }
    }
    Ok(())
}

/// The source item after `amount` units left it.
fn ship(
    key: &ItemKey,
    state: &KeyState,
    amount: u64,
    token: Option<u64>,
    now_ms: u64,
) -> Result<Item, Rejection> {
    let KeyState::Live(item) = state else {
        return Err(Rejection::NotFound { key: key.clone() });
    };
    lock::check(item.lock.as_ref(), token, now_ms)?;
    check_available(item, amount)?;
    Ok(Item {
        quantity: item.quantity - amount,
        version: state.next_version()?,
        ..item.clone()
    })
}

/// The target item after `amount` units arrived, created as `name` if the
/// key has no item.
fn stock(
    key: &ItemKey,
    state: &KeyState,
    name: &str,
    amount: u64,
    token: Option<u64>,
    now_ms: u64,
) -> Result<Item, Rejection> {
    let version = state.next_version()?;
    let KeyState::Live(item) = state else {
        lock::check(None, token, now_ms)?;
        return Ok(Item::new(key, name, amount, version));
    };
    lock::check(item.lock.as_ref(), token, now_ms)?;
    let quantity = item
        .quantity
        .checked_add(amount)
        .ok_or(Rejection::Overflow { field: "quantity" })?;
    Ok(Item {
        quantity,
        version,
        ..item.clone()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn live(location: &str, sku: &str, quantity: u64, reserved: u64) -> KeyState {
        KeyState::Live(Item {
            reserved,
            ..Item::new(&key(location, sku), format!("Item {sku}"), quantity, 1)
        })
    }

    fn amounts(lines: &[(&str, u64)]) -> Vec<TransferAmount> {
        lines
            .iter()
            .map(|(sku, amount)| TransferAmount {
                sku: sku.to_string(),
                amount: *amount,
            })
            .collect()
    }

    fn request(from: &str, to: &str, lines: &[(&str, u64)]) -> NewTransfer {
        NewTransfer {
            id: "t1".into(),
            from: from.into(),
            to: to.into(),
            lines: amounts(lines),
        }
    }

    /// `(name, quantity, version)` of each item.
    fn counts(items: &[KeyState]) -> Vec<(String, u64, u64)> {
        items
            .iter()
            .filter_map(KeyState::item)
            .map(|i| (i.name.clone(), i.quantity, i.version))
            .collect()
    }

    /// `(shipped, received, lost)` of each line.
    fn progress(transfer: &Transfer) -> Vec<(u64, u64, u64)> {
        transfer
            .lines
            .iter()
            .map(|l| (l.shipped, l.received, l.lost))
            .collect()
    }

    fn shipped() -> Transfer {
        let sources = [live("s1", "a", 5, 0), live("s1", "b", 5, 0)];
        let step = create(
            &request("s1", "s2", &[("a", 3), ("b", 2)]),
            &sources,
            &LockTokens::new(),
            0,
        );
        step.unwrap().transfer
    }

    #[test]
    fn create_ships_every_line_or_none() {
        type Case = (
            NewTransfer,
            Vec<KeyState>,
            Result<Vec<(u64, u64)>, &'static str>,
        );
        let cases: Vec<Case> = vec![
            (
                request("s1", "s2", &[("a", 3), ("b", 5)]),
                vec![live("s1", "a", 5, 0), live("s1", "b", 5, 0)],
                Ok(vec![(2, 2), (0, 2)]),
            ),
            (
                request("s1", "s2", &[("a", 3), ("b", 5)]),
                vec![live("s1", "a", 5, 0), live("s1", "b", 5, 1)],
                Err("line 1: insufficient stock: 5 requested, 4 available"),
            ),
            (
                request("s1", "s2", &[("a", 1)]),
                vec![KeyState::Absent],
                Err("line 0: item s1/a does not exist"),
            ),
            (
                request("s1", "s1", &[("a", 1)]),
                vec![live("s1", "a", 5, 0)],
                Err("invalid to: is s1"),
            ),
            (
                request("s1", "s2", &[("a", 1), ("a", 1)]),
                vec![live("s1", "a", 5, 0), live("s1", "a", 5, 0)],
                Err("line 1: invalid sku: a appears twice in the transfer"),
            ),
            (request("s1", "s2", &[]), vec![], Err("invalid lines")),
        ];
        for (request, sources, want) in cases {
            let got = create(&request, &sources, &LockTokens::new(), 0);
            match (&got, &want) {
                (Ok(step), Ok(want)) => {
                    let got: Vec<_> = counts(&step.items)
                        .into_iter()
                        .map(|(_, q, v)| (q, v))
                        .collect();
                    assert_eq!(&got, want);
                    assert_eq!(step.transfer.state, TransferState::InTransit);
                    assert_eq!(step.transfer.lines[0].name, "Item a");
                }
                (Err(err), Err(text)) => assert!(err.to_string().contains(text), "{err}"),
                _ => panic!("{request:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn receipts_add_up_to_what_was_shipped() {
        let none = LockTokens::new();
        let transfer = shipped();
        assert_eq!((transfer.in_transit("a"), transfer.in_transit("b")), (3, 2));

        // A first partial receipt creates the missing item with the source's name.
        let targets = [KeyState::Deleted { version: 4 }, live("s2", "b", 1, 0)];
        let first = receive(
            &transfer,
            &amounts(&[("a", 1), ("b", 2)]),
            &targets,
            &none,
            0,
        )
        .unwrap();
        assert_eq!(
            counts(&first.items),
            vec![("Item a".into(), 1, 5), ("Item b".into(), 3, 2)]
        );
        assert_eq!(progress(&first.transfer), vec![(3, 1, 0), (2, 2, 0)]);

        let over = receive(
            &first.transfer,
            &amounts(&[("a", 3)]),
            &first.items[..1],
            &none,
            0,
        );
        let err = over.unwrap_err();
        assert_eq!(err.line(), Some(0));
        assert!(
            err.to_string()
                .contains("receipt of 3 units of a is more than the 2"),
            "{err}"
        );
        let unknown = receive(
            &first.transfer,
            &amounts(&[("c", 1)]),
            &[KeyState::Absent],
            &none,
            0,
        );
        assert!(
            unknown
                .unwrap_err()
                .to_string()
                .contains("c is not part of transfer t1")
        );

        let second = receive(
            &first.transfer,
            &amounts(&[("a", 1)]),
            &first.items[..1],
            &none,
            0,
        )
        .unwrap();
        assert_eq!(progress(&second.transfer), vec![(3, 2, 0), (2, 2, 0)]);

        let closed = close(&second.transfer).unwrap();
        assert_eq!(progress(&closed), vec![(3, 2, 1), (2, 2, 0)]);
        assert_eq!(closed.state, TransferState::Closed);
        assert_eq!(in_transit([&transfer, &closed], "a"), 3);
        let gone = Err(Rejection::TransferClosed { id: "t1".into() });
        assert_eq!(close(&closed), gone);
        let late = receive(&closed, &amounts(&[("a", 1)]), &second.items, &none, 0);
        assert_eq!(late.map(|s| s.transfer), gone);
    }

    #[test]
    fn receipts_follow_the_target_locks() {
        let KeyState::Live(mut target) = live("s2", "a", 1, 0) else {
            unreachable!()
        };
        target.lock = Some(crate::lock::Lock {
            holder: "counter-7".into(),
            token: 1,
            expires_at_ms: 100,
        });
        let targets = [KeyState::Live(target)];
        let receipt = amounts(&[("a", 1)]);
        let err = receive(&shipped(), &receipt, &targets, &LockTokens::new(), 0).unwrap_err();
        assert!(matches!(err.cause(), Rejection::Locked { .. }), "{err}");
        let tokens = LockTokens::from([(key("s2", "a"), 1)]);
        assert!(receive(&shipped(), &receipt, &targets, &tokens, 0).is_ok());
        let err = receive(&shipped(), &receipt, &[KeyState::Absent], &tokens, 0).unwrap_err();
        assert_eq!(err.cause(), &Rejection::LockLost { token: 1 });
    }
}
