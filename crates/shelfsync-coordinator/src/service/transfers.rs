//! Transfers at the coordinator (SPEC §5 "Transfers"): who may ship,
//! receive, close or read one, and listings. Steps go to the
//! [`Pipeline`](crate::pipeline::Pipeline) like any write.
//!
//! Shipping needs `from` writable by the store, receiving `to`; closing
//! needs either end writable, reading either end readable.

use shelfsync_core::item::validate_id;
use shelfsync_core::{Transfer, TransferState};
use shelfsync_ledger::{Action, Ledger, LedgerError, Object};
use shelfsync_proto::{
    ErrorCode, MAX_BATCH_LINES, Response, TransferAck, TransferAction, TransferRequest,
    TransfersRequest, WireError,
};
use shelfsync_sequencer::Answer;

use super::{Access, MAX_LISTED, MAX_SCANNED, Peer, Service, blocking, internal};

impl Service {
    /// Answers a step of a transfer or a read of one.
    pub(super) async fn transfer(
        &self,
        peer: &Peer,
        request: TransferRequest,
    ) -> Result<Response, WireError> {
        let action = match request.action {
            TransferAction::Get { id } => {
                let transfer = self.existing_transfer(peer, Access::Read, &id, Ends::Either)?;
                let ledger = self.ledger.clone();
                return blocking(move || Ok(Response::Transfer(ack(ledger.as_ref(), transfer)?)))
                    .await;
            }
            TransferAction::Create {
                from,
                to,
                lines,
                lock_token,
            } => {
                check_lines(lines.len())?;
                validate_id("to", &to).map_err(|e| WireError::rejected(&e, None))?;
                self.check(peer, Access::Write, &from)?;
                Action::TransferCreate {
                    from,
                    to,
                    lines,
                    lock_token,
                }
            }
            TransferAction::Receive {
                id,
                lines,
                lock_token,
            } => {
                check_lines(lines.len())?;
                self.existing_transfer(peer, Access::Write, &id, Ends::To)?;
                Action::TransferReceive {
                    id,
                    lines,
                    lock_token,
                }
            }
            TransferAction::Close { id } => {
                self.existing_transfer(peer, Access::Write, &id, Ends::Either)?;
                Action::TransferClose { id }
            }
        };
        Ok(
            match self.step(peer, request.idempotency_key, action).await? {
                Answer::Stepped {
                    object: Object::Transfer(transfer),
                    changes,
                    replayed,
                } => Response::Transfer(TransferAck {
                    transfer,
                    states: changes,
                    replayed,
                }),
                Answer::Refused(err) => Response::Error(err),
                _ => Response::Error(WireError::new(
                    ErrorCode::Internal,
                    "a transfer step went astray",
                )),
            },
        )
    }

    /// Transfers from or to the request's location (every one for an
    /// admin that names none), newest first, in the state asked for.
    pub(super) async fn transfers(
        &self,
        peer: &Peer,
        request: TransfersRequest,
    ) -> Result<Response, WireError> {
        match (&request.location, peer) {
            (Some(location), _) => self.check(peer, Access::Read, location)?,
            (None, Peer::Admin) => {}
            (None, Peer::Store(_)) => {
                return Err(WireError::new(
                    ErrorCode::BadRequest,
                    "a store lists the transfers of a location it reads: name it",
                ));
            }
        }
        let ledger = self.ledger.clone();
        blocking(move || {
            let open_only = request.state == Some(TransferState::InTransit);
            let location = request.location.as_deref();
            let mut found = ledger.transfers(location, open_only, MAX_SCANNED)?;
            found.retain(|t| request.state.is_none_or(|state| t.state == state));
            // Ids are `t` and the seq of the transfer's first change.
            let seq = |t: &Transfer| t.id.strip_prefix('t').and_then(|n| n.parse::<u64>().ok());
            found.sort_by_key(|t| std::cmp::Reverse(seq(t)));
            found.truncate(MAX_LISTED);
            Ok(Response::Transfers(found))
        })
        .await
    }

    /// The stored transfer `id`, if the peer may `access` the end(s) named.
    fn existing_transfer(
        &self,
        peer: &Peer,
        access: Access,
        id: &str,
        ends: Ends,
    ) -> Result<Transfer, WireError> {
        validate_id("id", id).map_err(|e| WireError::rejected(&e, None))?;
        let Some(transfer) = self.ledger.transfer(id).map_err(|e| internal(&e))? else {
            return Err(WireError::new(
                ErrorCode::NotFound,
                format!("transfer {id} does not exist"),
            ));
        };
        let to = self.check(peer, access, &transfer.to);
        let allowed = match ends {
            Ends::To => to,
            Ends::Either => to.or_else(|_| self.check(peer, access, &transfer.from)),
        };
        allowed.map(|()| transfer)
    }
}

/// Which end of a transfer a request needs access to.
#[derive(Clone, Copy)]
enum Ends {
    To,
    Either,
}

fn check_lines(lines: usize) -> Result<(), WireError> {
    if !(1..=MAX_BATCH_LINES).contains(&lines) {
        return Err(WireError::new(
            ErrorCode::InvalidField,
            format!("a transfer or a receipt has 1 to {MAX_BATCH_LINES} lines"),
        ));
    }
    Ok(())
}

/// `transfer` with the current states of its keys, as read from the ledger.
fn ack(ledger: &dyn Ledger, transfer: Transfer) -> Result<TransferAck, LedgerError> {
    let mut states = Vec::new();
    for key in Object::Transfer(transfer.clone()).keys() {
        if let Some(record) = ledger.load(&key)? {
            states.push((record.seq, record.state));
        }
    }
    Ok(TransferAck {
        transfer,
        states,
        replayed: false,
    })
}
