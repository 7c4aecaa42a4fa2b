//! The open transfers from or to this agent's locations, kept in the
//! replica (SPEC §5 "Transfers replicate to the stores that read `from` or
//! `to`"), so that a store sees what is on its way while the WAN is down.
//!
//! A sync page says when the transfers of its locations last changed
//! (`transfers_at`); when that passes what the replica has, the sync asks
//! the coordinator for the open transfers of each location and replaces
//! what is kept, in one batch ([`OpenTransfers::replace`]). A step this
//! agent forwards is kept at once from its answer
//! ([`OpenTransfers::remember`]): a closed one goes.

use shelfsync_core::{Transfer, TransferState};

use crate::replica::{ReplicaError, decode, encode, storage};

/// The key of `transfers_at` as last fetched; transfer ids never start
/// with a NUL byte.
const FETCHED_AT: &[u8] = b"\0fetched_at";

/// The open transfers of this agent's locations, in their own sled tree.
#[derive(Debug)]
pub struct OpenTransfers {
    tree: sled::Tree,
}

impl OpenTransfers {
    /// The transfers kept in `tree`.
    pub fn new(tree: sled::Tree) -> Self {
        OpenTransfers { tree }
    }

    /// The `transfers_at` the kept transfers were fetched for (0: never).
    pub fn fetched_at(&self) -> Result<u64, ReplicaError> {
        let bytes = self.tree.get(FETCHED_AT).map_err(storage)?;
        bytes.map_or(Ok(0), |bytes| decode(&bytes))
    }

    /// Keeps exactly `open`, fetched for `transfers_at`.
    pub fn replace(&self, open: &[Transfer], transfers_at: u64) -> Result<(), ReplicaError> {
        let mut batch = sled::Batch::default();
        for key in self.tree.iter().keys() {
            batch.remove(key.map_err(storage)?);
        }
        for transfer in open.iter().filter(|t| t.state == TransferState::InTransit) {
            batch.insert(transfer.id.as_bytes(), encode(transfer)?);
        }
        batch.insert(FETCHED_AT, encode(transfers_at)?);
        self.tree.apply_batch(batch).map_err(storage)
    }

    /// Keeps `transfer` as a step of this agent's left it (a closed one
    /// goes).
    pub fn remember(&self, transfer: &Transfer) -> Result<(), ReplicaError> {
        match transfer.state {
            TransferState::InTransit => {
                let value = encode(transfer)?;
                self.tree
                    .insert(transfer.id.as_bytes(), value)
                    .map_err(storage)?;
            }
            TransferState::Closed => {
                self.tree.remove(transfer.id.as_bytes()).map_err(storage)?;
            }
        }
        Ok(())
    }

    /// The open transfers from or to `location`, newest first.
    pub fn list(&self, location: &str) -> Result<Vec<Transfer>, ReplicaError> {
        let mut out = Vec::new();
        for entry in self.tree.iter() {
            let (key, value) = entry.map_err(storage)?;
            if key.as_ref() == FETCHED_AT {
                continue;
            }
            let transfer: Transfer = decode(&value)?;
            if transfer.from == location || transfer.to == location {
                out.push(transfer);
            }
        }
        let seq = |t: &Transfer| t.id.strip_prefix('t').and_then(|n| n.parse::<u64>().ok());
        out.sort_by_key(|t| std::cmp::Reverse(seq(t)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use shelfsync_core::TransferLine;

    use super::*;

    fn transfer(id: &str, from: &str, to: &str, state: TransferState) -> Transfer {
        Transfer {
            id: id.into(),
            from: from.into(),
            to: to.into(),
            lines: vec![TransferLine {
                sku: "a".into(),
                name: "A".into(),
                shipped: 2,
                received: 0,
                lost: 0,
            }],
            state,
        }
    }

    fn ids(transfers: Vec<Transfer>) -> Vec<String> {
        transfers.into_iter().map(|t| t.id).collect()
    }

    #[test]
    fn fetched_transfers_replace_what_was_kept_and_own_steps_update_them() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let open = OpenTransfers::new(db.open_tree("transfers").unwrap());
        assert_eq!(open.fetched_at().unwrap(), 0);
        let in_transit = TransferState::InTransit;
        open.replace(
            &[
                transfer("t9", "s1", "s2", in_transit),
                transfer("t12", "s3", "s1", in_transit),
                transfer("t4", "s2", "s3", TransferState::Closed),
            ],
            77,
        )
        .unwrap();
        assert_eq!(open.fetched_at().unwrap(), 77);
        assert_eq!(ids(open.list("s1").unwrap()), ["t12", "t9"]);
        assert!(open.list("s4").unwrap().is_empty());
        assert!(
            open.list("s2").unwrap().iter().all(|t| t.id != "t4"),
            "closed kept"
        );

        open.remember(&transfer("t9", "s1", "s2", TransferState::Closed))
            .unwrap();
        open.remember(&transfer("t20", "s1", "s4", in_transit))
            .unwrap();
        assert_eq!(ids(open.list("s1").unwrap()), ["t20", "t12"]);

        open.replace(&[transfer("t12", "s3", "s1", in_transit)], 80)
            .unwrap();
        assert_eq!(ids(open.list("s1").unwrap()), ["t12"]);
        assert_eq!(open.fetched_at().unwrap(), 80);
    }
}
