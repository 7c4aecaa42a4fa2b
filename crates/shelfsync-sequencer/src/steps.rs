//! The steps of holds and transfers in a group (SPEC §5): each is decided
//! by the pure rules of [`shelfsync_core::hold`] or
//! [`shelfsync_core::transfer`] against the view ([`super::holds`],
//! [`super::transfers`]) and, when it writes items, becomes one commit whose
//! changes name the hold or transfer. The hold's or transfer's record goes
//! to the same group.
//!
//! A new hold's id is `h` and the seq of its commit's first change, a new
//! transfer's `t` and that seq: unique, and the same however often the
//! decision is replayed.

use shelfsync_core::{HoldState, KeyState, LockTokens, Rejection};
use shelfsync_ledger::{Action, HoldWrite, IdempotencyRecord, Object, Recorded};
use shelfsync_proto::{ErrorCode, WireError};

use super::{
    Answer, Decision, Entry, Stamp, StepCommand, View, add_commit, holds, reused, transfers,
};

/// What a step does: the hold or transfer before and after it, and the
/// lines it writes.
pub(super) struct Outcome {
    pub(super) before: Option<Object>,
    pub(super) after: Object,
    pub(super) entries: Vec<Entry>,
}

impl Outcome {
    /// A step that changes nothing.
    pub(super) fn unchanged(object: Object) -> Self {
        Outcome {
            before: Some(object.clone()),
            after: object,
            entries: Vec::new(),
        }
    }
}

/// Decides a new step and adds what it writes to the group.
pub(super) fn step(
    command: &StepCommand,
    view: &mut View,
    decision: &mut Decision,
    now_ms: u64,
) -> Answer {
    let head = decision.group.head;
    let decided = match command.action.is_transfer() {
        false => holds::decide(&command.action, view, head, now_ms),
        true => transfers::decide(&command.action, view, head, now_ms),
    };
    let Outcome {
        before,
        after,
        entries,
    } = match decided {
        Ok(outcome) => outcome,
        Err(error) => return Answer::Refused(error),
    };
    let stamp = Stamp {
        store: &command.store,
        idempotency_key: &command.idempotency_key,
        now_ms,
    };
    let changes = add_commit(view, decision, stamp, entries);
    if before.as_ref() != Some(&after) {
        match &after {
            Object::Hold(hold) => {
                let prior_expiry = match before {
                    Some(Object::Hold(prior)) if prior.state == HoldState::Active => {
                        Some(prior.expires_at_ms)
                    }
                    _ => None,
                };
                let ended = prior_expiry.is_some() && hold.state != HoldState::Active;
                decision.group.holds.push(HoldWrite {
                    hold: hold.clone(),
                    prior_expiry,
                    ended_at_ms: ended.then_some(now_ms),
                });
                view.holds.insert(hold.id.clone(), Some(hold.clone()));
            }
            Object::Transfer(transfer) => {
                decision.group.transfers.push(transfer.clone());
                view.transfers
                    .insert(transfer.id.clone(), Some(transfer.clone()));
            }
        }
    }
    Answer::Stepped {
        object: after,
        changes,
        replayed: false,
    }
}

/// The request's one lock token, for each key whose item has a lock: a
/// client that holds the lock of a step's key names it in `Lock-Token`.
pub(super) fn tokens(lock_token: Option<u64>, states: &[KeyState]) -> LockTokens {
    let Some(token) = lock_token else {
        return LockTokens::new();
    };
    states
        .iter()
        .filter_map(KeyState::item)
        .filter(|item| item.lock.is_some())
        .map(|item| (item.key(), token))
        .collect()
}

/// The refusal of `rejection`, with the refused line's item as `current`.
pub(super) fn refused(rejection: &Rejection, states: &[KeyState]) -> WireError {
    let current = rejection.line().and_then(|i| states.get(i));
    WireError::rejected(rejection, current.and_then(KeyState::item))
}

pub(super) fn not_found(what: &str, id: &str) -> WireError {
    WireError::new(ErrorCode::NotFound, format!("{what} {id} does not exist"))
}

/// The outcome a new step's answer records. The coordinator's own hold
/// expiry records nothing: it is decided from the hold's state and clock
/// alone, and an expiry found not due (the hold was extended in the same
/// group) must not stand for the later one.
pub(super) fn record_of(command: &StepCommand, answer: &Answer) -> Option<Recorded> {
    if matches!(command.action, Action::HoldExpire { .. }) {
        return None;
    }
    Some(match answer {
        Answer::Stepped { object, .. } => Recorded::Step {
            action: command.action.clone(),
            id: object.id().to_string(),
        },
        Answer::Refused(error) if error.code == ErrorCode::Locked => return None,
        Answer::Refused(error) => Recorded::StepRejected {
            action: command.action.clone(),
            refusal: error.into(),
        },
        Answer::Accepted { .. } | Answer::Read { .. } => return None,
    })
}

/// Answers a retried step from its record: the hold or transfer as it is
/// now, with the current states of the keys it writes.
pub(super) fn replay(command: &StepCommand, record: &IdempotencyRecord, view: &View) -> Answer {
    match &record.outcome {
        Recorded::Step { action, id } if *action == command.action => {
            let Some(object) = view.object(action, id) else {
                return Answer::Refused(not_found("hold or transfer", id));
            };
            let changes = object
                .keys()
                .iter()
                .filter_map(|key| view.items.get(key).cloned().flatten())
                .map(|record| (record.seq, record.state))
                .collect();
            Answer::Stepped {
                object,
                changes,
                replayed: true,
            }
        }
        Recorded::StepRejected { action, refusal } if *action == command.action => {
            Answer::Refused(refusal.into())
        }
        _ => reused(&command.idempotency_key),
    }
}
