//! The sequential model of one key, written from SPEC §2 and independent of
//! the project's own `shelfsync_core::apply`: what a single, correct
//! coordinator answers to each op, and the key's state after it.
//!
//! The checks run in this order: the op's fields (422), whether the key
//! exists (404, or 409 for a create), `If-Match` required (428), `If-Match`
//! stale (412), then the stock rules (409, or 422 for an overflow). Every
//! accepted write bumps the version by one; a read never changes the state.

use crate::nemesis::history::{ItemState, Op};

/// Amounts must be in `1..=MAX_AMOUNT` (SPEC §2).
pub const MAX_AMOUNT: u64 = 1_000_000_000;

/// Names are 1..=`MAX_NAME_CHARS` characters with no control characters.
pub const MAX_NAME_CHARS: usize = 200;

/// The statuses the model can answer with. A refusal with any other status
/// (403, 423, 429, ...) says nothing about the key's state.
pub const MODELED_STATUSES: [u16; 5] = [404, 409, 412, 422, 428];

/// One key's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    /// No item: never created (`last_version` 0) or deleted (`last_version`
    /// is the delete's version, the tombstone's).
    Absent {
        /// The key's last version.
        last_version: u64,
    },
    /// A live item.
    Live(ItemState),
}

impl State {
    /// The state of a key nobody has written yet.
    pub const INITIAL: State = State::Absent { last_version: 0 };

    /// The key's current version (a tombstone's for an absent key).
    pub fn version(&self) -> u64 {
        match self {
            State::Absent { last_version } => *last_version,
            State::Live(item) => item.version,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            State::Absent { last_version } => write!(f, "absent (last version {last_version})"),
            State::Live(item) => write!(f, "{}", super::fmt_item(item)),
        }
    }
}

/// What the model answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted (or read): the item answered, `None` for a delete.
    Ok(Option<ItemState>),
    /// Refused with this HTTP status; the state is unchanged.
    Refused(u16),
}

/// Applies `op` (with `If-Match` `if_match`) to `state`: the next state and
/// the answer.
pub fn step(state: &State, op: &Op, if_match: Option<u64>) -> (State, Answer) {
    match decide(state, op, if_match) {
        Ok((next, answer)) => (next, Answer::Ok(answer)),
        Err(status) => (state.clone(), Answer::Refused(status)),
    }
}

type Decision = Result<(State, Option<ItemState>), u16>;

fn decide(state: &State, op: &Op, if_match: Option<u64>) -> Decision {
    validate(op)?;
    if let Op::Read { .. } = op {
        return match state {
            State::Live(item) => Ok((state.clone(), Some(item.clone()))),
            State::Absent { .. } => Err(404),
        };
    }
    if let Op::Create { name, quantity } = op {
        if let State::Live(_) = state {
            return Err(409);
        }
        check_if_match(state, if_match)?;
        let item = ItemState {
            name: name.clone(),
            quantity: *quantity,
            reserved: 0,
            version: state.version() + 1,
        };
        return Ok((State::Live(item.clone()), Some(item)));
    }
    let State::Live(item) = state else {
        return Err(404);
    };
    if matches!(op, Op::Set { .. } | Op::Delete) && if_match.is_none() {
        return Err(428);
    }
    check_if_match(state, if_match)?;
    let available = item.quantity - item.reserved.min(item.quantity);
    let mut next = item.clone();
    next.version = item.version + 1;
    match op {
        // Handled above, or refused by `validate`: the model knows the
        // single-key ops only.
        Op::Create { .. }
        | Op::Read { .. }
        | Op::LockGrant { .. }
        | Op::LockRenew { .. }
        | Op::LockRelease { .. }
        | Op::Batch { .. }
        | Op::TransferCreate { .. }
        | Op::TransferReceive { .. }
        | Op::TransferClose { .. }
        | Op::HoldCreate { .. }
        | Op::HoldFulfil { .. }
        | Op::HoldRelease { .. } => {}
        Op::Set { name, quantity } => {
            if let Some(quantity) = *quantity {
                if quantity < item.reserved {
                    return Err(409);
                }
                next.quantity = quantity;
            }
            if let Some(name) = name {
                next.name = name.clone();
            }
        }
        Op::Add { amount } => next.quantity = item.quantity.checked_add(*amount).ok_or(422u16)?,
        Op::Remove { amount } => {
            refuse_if(*amount > available, 409)?;
            next.quantity -= amount;
        }
        Op::Reserve { amount } => {
            refuse_if(*amount > available, 409)?;
            next.reserved += amount;
        }
        Op::Release { amount } => {
            refuse_if(*amount > item.reserved, 409)?;
            next.reserved -= amount;
        }
        Op::Fulfil { amount } => {
            refuse_if(*amount > item.reserved || *amount > item.quantity, 409)?;
            next.reserved -= amount;
            next.quantity -= amount;
        }
        Op::Delete => {
            refuse_if(item.reserved > 0, 409)?;
            let tombstone = State::Absent {
                last_version: next.version,
            };
            return Ok((tombstone, None));
        }
    }
    Ok((State::Live(next.clone()), Some(next)))
}

fn refuse_if(refused: bool, status: u16) -> Result<(), u16> {
    if refused { Err(status) } else { Ok(()) }
}

fn check_if_match(state: &State, if_match: Option<u64>) -> Result<(), u16> {
    match if_match {
        Some(expected) if expected != state.version() => Err(412),
        _ => Ok(()),
    }
}

/// The field rules of SPEC §2 (422 when broken).
fn validate(op: &Op) -> Result<(), u16> {
    let name_ok = |name: &str| {
        let chars = name.chars().count();
        (1..=MAX_NAME_CHARS).contains(&chars) && !name.chars().any(char::is_control)
    };
    let ok = match op {
        Op::Create { name, .. } => name_ok(name),
        Op::Set { name, quantity } => {
            (name.is_some() || quantity.is_some()) && name.as_deref().is_none_or(name_ok)
        }
        Op::Add { amount }
        | Op::Remove { amount }
        | Op::Reserve { amount }
        | Op::Release { amount }
        | Op::Fulfil { amount } => (1..=MAX_AMOUNT).contains(amount),
        Op::Delete | Op::Read { .. } => true,
        // Not a single-key op of SPEC §2: the checkers never ask.
        _ => false,
    };
    refuse_if(!ok, 422)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(name: &str, quantity: u64, reserved: u64, version: u64) -> ItemState {
        ItemState {
            name: name.to_string(),
            quantity,
            reserved,
            version,
        }
    }

    fn live(quantity: u64, reserved: u64, version: u64) -> State {
        State::Live(item("n", quantity, reserved, version))
    }

    fn absent(last_version: u64) -> State {
        State::Absent { last_version }
    }

    fn ok(quantity: u64, reserved: u64, version: u64) -> Answer {
        Answer::Ok(Some(item("n", quantity, reserved, version)))
    }

    fn create(quantity: u64) -> Op {
        Op::Create {
            name: "n".into(),
            quantity,
        }
    }

    fn set_q(quantity: u64) -> Op {
        Op::Set {
            name: None,
            quantity: Some(quantity),
        }
    }

    const READ: Op = Op::Read { strong: true };

    #[test]
    fn step_table() {
        use Op::*;
        // (state, op, if_match, expected answer)
        let table: Vec<(State, Op, Option<u64>, Answer)> = vec![
            // create
            (absent(0), create(5), None, ok(5, 0, 1)),
            (absent(7), create(5), None, ok(5, 0, 8)),
            (live(5, 0, 1), create(5), None, Answer::Refused(409)),
            (absent(3), create(5), Some(2), Answer::Refused(412)),
            (absent(3), create(5), Some(3), ok(5, 0, 4)),
            // absent keys
            (absent(0), Add { amount: 1 }, None, Answer::Refused(404)),
            (absent(4), set_q(1), Some(4), Answer::Refused(404)),
            (absent(4), Delete, Some(4), Answer::Refused(404)),
            (absent(4), READ, None, Answer::Refused(404)),
            // If-Match
            (live(5, 0, 3), set_q(9), None, Answer::Refused(428)),
            (live(5, 0, 3), Delete, None, Answer::Refused(428)),
            (live(5, 0, 3), set_q(9), Some(2), Answer::Refused(412)),
            (
                live(5, 0, 3),
                Add { amount: 1 },
                Some(2),
                Answer::Refused(412),
            ),
            (live(5, 0, 3), Add { amount: 1 }, Some(3), ok(6, 0, 4)),
            // set
            (live(5, 2, 3), set_q(9), Some(3), ok(9, 2, 4)),
            (live(5, 2, 3), set_q(2), Some(3), ok(2, 2, 4)),
            (live(5, 2, 3), set_q(1), Some(3), Answer::Refused(409)),
            // add
            (live(5, 0, 1), Add { amount: 3 }, None, ok(8, 0, 2)),
            (
                live(u64::MAX - 1, 0, 1),
                Add { amount: 2 },
                None,
                Answer::Refused(422),
            ),
            // remove / reserve against available
            (live(5, 2, 1), Remove { amount: 3 }, None, ok(2, 2, 2)),
            (
                live(5, 2, 1),
                Remove { amount: 4 },
                None,
                Answer::Refused(409),
            ),
            (live(5, 2, 1), Reserve { amount: 3 }, None, ok(5, 5, 2)),
            (
                live(5, 2, 1),
                Reserve { amount: 4 },
                None,
                Answer::Refused(409),
            ),
            // release / fulfil against reserved
            (live(5, 2, 1), Release { amount: 2 }, None, ok(5, 0, 2)),
            (
                live(5, 2, 1),
                Release { amount: 3 },
                None,
                Answer::Refused(409),
            ),
            (live(5, 2, 1), Fulfil { amount: 2 }, None, ok(3, 0, 2)),
            (
                live(5, 2, 1),
                Fulfil { amount: 3 },
                None,
                Answer::Refused(409),
            ),
            // delete
            (live(5, 0, 6), Delete, Some(6), Answer::Ok(None)),
            (live(5, 1, 6), Delete, Some(6), Answer::Refused(409)),
            // reads
            (live(5, 1, 6), READ, None, ok(5, 1, 6)),
            // field rules
            (live(5, 0, 1), Add { amount: 0 }, None, Answer::Refused(422)),
            (
                live(5, 0, 1),
                Add {
                    amount: MAX_AMOUNT + 1,
                },
                None,
                Answer::Refused(422),
            ),
            (
                absent(0),
                Op::Create {
                    name: String::new(),
                    quantity: 1,
                },
                None,
                Answer::Refused(422),
            ),
            (
                live(5, 0, 1),
                Set {
                    name: None,
                    quantity: None,
                },
                Some(1),
                Answer::Refused(422),
            ),
        ];
        for (i, (state, op, if_match, want)) in table.into_iter().enumerate() {
            let (next, got) = step(&state, &op, if_match);
            assert_eq!(
                got, want,
                "row {i}: {op:?} if_match={if_match:?} on {state}"
            );
            let want_next = match &got {
                Answer::Refused(_) => state.clone(),
                Answer::Ok(Some(item)) => State::Live(item.clone()),
                Answer::Ok(None) if matches!(op, Read { .. }) => state.clone(),
                Answer::Ok(None) => absent(state.version() + 1),
            };
            assert_eq!(next, want_next, "row {i}: next state");
        }
    }

    #[test]
    fn set_replaces_name_and_keeps_the_rest() {
        let op = Op::Set {
            name: Some("new".into()),
            quantity: None,
        };
        let (next, answer) = step(&live(5, 1, 2), &op, Some(2));
        assert_eq!(answer, Answer::Ok(Some(item("new", 5, 1, 3))));
        assert_eq!(next, State::Live(item("new", 5, 1, 3)));
    }

    #[test]
    fn delete_then_create_continues_from_the_tombstone() {
        let (s, _) = step(&State::INITIAL, &create(1), None);
        let (s, a) = step(&s, &Op::Delete, Some(1));
        assert_eq!((s.clone(), a), (absent(2), Answer::Ok(None)));
        let (s, a) = step(&s, &create(4), None);
        assert_eq!((s, a), (live(4, 0, 3), ok(4, 0, 3)));
    }
}
