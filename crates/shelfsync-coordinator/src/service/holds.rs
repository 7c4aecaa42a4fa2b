//! Holds at the coordinator (SPEC §5 "Holds"): who may take or change one,
//! and reads of holds. Steps go to the [`Pipeline`](crate::pipeline::Pipeline)
//! like any write.
//!
//! A new hold needs every line's location writable by the store; a step on
//! a hold needs one of its locations writable, a read one of them readable.

use shelfsync_core::item::validate_id;
use shelfsync_core::{Hold, HoldState, KeyState};
use shelfsync_ledger::{Action, Ledger, LedgerError, Object};
use shelfsync_proto::time::now_ms;
use shelfsync_proto::{
    ErrorCode, HoldAck, HoldAction, HoldRequest, HoldsRequest, MAX_BATCH_LINES, Response, WireError,
};
use shelfsync_sequencer::Answer;

use super::{Access, MAX_LISTED, MAX_SCANNED, Peer, Service, blocking, internal};

impl Service {
    /// Answers a step of a hold or a read of one.
    pub(super) async fn hold(
        &self,
        peer: &Peer,
        request: HoldRequest,
    ) -> Result<Response, WireError> {
        let action = match request.action {
            HoldAction::Get { id } => {
                let hold = self.existing_hold(peer, Access::Read, &id)?;
                let ledger = self.ledger.clone();
                return blocking(move || Ok(Response::Hold(ack(ledger.as_ref(), hold)?))).await;
            }
            HoldAction::Create {
                owner,
                lines,
                ttl_ms,
                lock_token,
            } => {
                if !(1..=MAX_BATCH_LINES).contains(&lines.len()) {
                    return Err(WireError::new(
                        ErrorCode::InvalidField,
                        format!("a hold has 1 to {MAX_BATCH_LINES} lines"),
                    ));
                }
                for (index, line) in lines.iter().enumerate() {
                    let checked = line
                        .key
                        .validate()
                        .map_err(|e| WireError::rejected(&e, None))
                        .and_then(|()| self.check(peer, Access::Write, &line.key.location));
                    checked.map_err(|mut err| {
                        err.line = u32::try_from(index).ok();
                        err
                    })?;
                }
                Action::HoldCreate {
                    owner,
                    lines,
                    ttl_ms,
                    lock_token,
                }
            }
            HoldAction::Extend { id, ttl_ms } => {
                self.existing_hold(peer, Access::Write, &id)?;
                Action::HoldExtend { id, ttl_ms }
            }
            HoldAction::Fulfil { id, lock_token } => {
                self.existing_hold(peer, Access::Write, &id)?;
                Action::HoldFulfil { id, lock_token }
            }
            HoldAction::Release { id, lock_token } => {
                self.existing_hold(peer, Access::Write, &id)?;
                Action::HoldRelease { id, lock_token }
            }
        };
        Ok(
            match self.step(peer, request.idempotency_key, action).await? {
                Answer::Stepped {
                    object: Object::Hold(hold),
                    changes,
                    replayed,
                } => Response::Hold(HoldAck {
                    expires_in_ms: expires_in_ms(&hold),
                    hold,
                    states: changes,
                    replayed,
                }),
                Answer::Refused(err) => Response::Error(err),
                _ => Response::Error(WireError::new(
                    ErrorCode::Internal,
                    "a hold step went astray",
                )),
            },
        )
    }

    /// The active holds with a line at the request's location (and sku),
    /// earliest expiry first: of the first `MAX_SCANNED` by id, the
    /// `MAX_LISTED` that end first.
    pub(super) async fn holds(
        &self,
        peer: &Peer,
        request: HoldsRequest,
    ) -> Result<Response, WireError> {
        self.check(peer, Access::Read, &request.location)?;
        let ledger = self.ledger.clone();
        blocking(move || {
            let mut found = ledger.active_holds(&request.location, MAX_SCANNED)?;
            if let Some(sku) = &request.sku {
                found.retain(|hold| {
                    (hold.lines.iter())
                        .any(|l| l.key.location == request.location && l.key.sku == *sku)
                });
            }
            found.sort_by_key(|hold| hold.expires_at_ms);
            found.truncate(MAX_LISTED);
            let out = (found.into_iter())
                .map(|hold| ack(ledger.as_ref(), hold))
                .collect::<Result<_, _>>()?;
            Ok(Response::Holds(out))
        })
        .await
    }

    /// The stored hold `id`, if the peer may `access` one of its locations.
    fn existing_hold(&self, peer: &Peer, access: Access, id: &str) -> Result<Hold, WireError> {
        validate_id("id", id).map_err(|e| WireError::rejected(&e, None))?;
        let hold = self.ledger.hold(id).map_err(|e| internal(&e))?;
        let Some(hold) = hold else {
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!("hold {id} does not exist"),
            ));
        };
        let mut refusal = None;
        for line in &hold.lines {
            match self.check(peer, access, &line.key.location) {
                Ok(()) => return Ok(hold),
                Err(err) => refusal = Some(err),
            }
        }
        Err(refusal.unwrap_or_else(|| WireError::new(ErrorCode::Forbidden, "a hold without lines")))
    }
}

/// Milliseconds until `hold` expires; 0 once it has ended.
fn expires_in_ms(hold: &Hold) -> u64 {
    match hold.state {
        HoldState::Active => hold.expires_in_ms(now_ms()),
        _ => 0,
    }
}

/// `hold` with its lines' current states, as read from the ledger.
fn ack(ledger: &dyn Ledger, hold: Hold) -> Result<HoldAck, LedgerError> {
    let mut states = Vec::with_capacity(hold.lines.len());
    for line in &hold.lines {
        let record = ledger.load(&line.key)?;
        states.push(record.map_or((0, KeyState::Absent), |r| (r.seq, r.state)));
    }
    Ok(HoldAck {
        expires_in_ms: expires_in_ms(&hold),
        hold,
        states,
        replayed: false,
    })
}
