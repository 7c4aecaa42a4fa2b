//! The records a ledger stores, apart from the wire messages: each is an
//! enum with one variant per version of its layout, encoded as compact
//! msgpack (fields by position). A new layout adds a variant (the old
//! type kept beside the new) and the code that reads the old one; the wire
//! protocol can change without touching what is on disk, and the other way
//! round.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shelfsync_core::{ItemKey, KeyState, Op};
#[cfg(doc)]
use shelfsync_proto::ErrorCode;
use shelfsync_proto::{Change, StoreReport};

use super::{IdempotencyRecord, ItemRecord, LedgerError, StoredReport};

/// An item's state and the seq of the change that produced it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ItemV {
    V1(ItemRecord),
}

/// An idempotency record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum IdempotencyV {
    V1(IdempotencyRecord),
}

/// A change-log entry; its seq is the storage key. Its own fields, not the
/// wire's [`Change`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChangeV {
    V1 {
        key: ItemKey,
        state: KeyState,
        op: Op,
        store: String,
        idempotency_key: String,
        at_ms: u64,
        commit_end: u64,
        /// The key's previous change, which links its history.
        prior_seq: Option<u64>,
    },
}

/// A store's last report. Its own fields, not the wire's [`StoreReport`].
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ReportV {
    V1 {
        cursor: u64,
        digest: u64,
        item_count: u64,
        pending_forwards: u64,
        last_error: Option<String>,
        software_version: String,
        locations: Vec<String>,
        at_ms: u64,
        digest_ok: Option<bool>,
    },
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    rmp_serde::to_vec(value).map_err(|e| LedgerError::Storage(format!("cannot encode: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, LedgerError> {
    rmp_serde::from_slice(bytes).map_err(|e| LedgerError::corrupt(key, e))
}

/// Error codes are stored by name
/// ([`as_str`](shelfsync_proto::ErrorCode::as_str)), not through the
/// wire's serde, which reads a name it does not know as `Unknown`: here an
/// unknown name makes the record corrupt.
pub(crate) mod code_name {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer, Serializer};
    use shelfsync_proto::ErrorCode;

    pub(crate) fn serialize<S: Serializer>(code: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(code.as_str())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let name = String::deserialize(d)?;
        ErrorCode::from_name(&name)
            .ok_or_else(|| D::Error::custom(format!("unknown error code {name:?}")))
    }
}

impl From<ItemV> for ItemRecord {
    fn from(ItemV::V1(record): ItemV) -> Self {
        record
    }
}

impl From<IdempotencyV> for IdempotencyRecord {
    fn from(IdempotencyV::V1(record): IdempotencyV) -> Self {
        record
    }
}

impl ChangeV {
    pub(crate) fn new(change: &Change, prior_seq: Option<u64>) -> Self {
        ChangeV::V1 {
            key: change.key.clone(),
            state: change.state.clone(),
            op: change.op.clone(),
            store: change.store.clone(),
            idempotency_key: change.idempotency_key.clone(),
            at_ms: change.at_ms,
            commit_end: change.commit_end(),
            prior_seq,
        }
    }

    /// The change at `seq`, and the seq of its key's previous change.
    pub(crate) fn into_change(self, seq: u64) -> (Change, Option<u64>) {
        let ChangeV::V1 {
            key,
            state,
            op,
            store,
            idempotency_key,
            at_ms,
            commit_end,
            prior_seq,
        } = self;
        let change = Change {
            seq,
            key,
            state,
            op,
            store,
            idempotency_key,
            at_ms,
            commit_end,
        };
        (change, prior_seq)
    }
}

impl From<&StoredReport> for ReportV {
    fn from(stored: &StoredReport) -> Self {
        let r = &stored.report;
        ReportV::V1 {
            cursor: r.cursor,
            digest: r.digest,
            item_count: r.item_count,
            pending_forwards: r.pending_forwards,
            last_error: r.last_error.clone(),
            software_version: r.software_version.clone(),
            locations: r.locations.clone(),
            at_ms: stored.at_ms,
            digest_ok: stored.digest_ok,
        }
    }
}

impl From<ReportV> for StoredReport {
    fn from(value: ReportV) -> Self {
        let ReportV::V1 {
            cursor,
            digest,
            item_count,
            pending_forwards,
            last_error,
            software_version,
            locations,
            at_ms,
            digest_ok,
        } = value;
        StoredReport {
            report: StoreReport {
                cursor,
                digest,
                item_count,
                pending_forwards,
                last_error,
                software_version,
                locations,
            },
            at_ms,
            digest_ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use shelfsync_core::Item;
    use shelfsync_proto::ErrorCode;

    use super::*;
    use crate::ledger::{Line, Recorded, Refusal};

    fn rejection() -> IdempotencyRecord {
        IdempotencyRecord {
            at_ms: 42,
            outcome: Recorded::Rejected {
                lines: vec![Line {
                    key: ItemKey::new("s1", "milk").unwrap(),
                    op: Op::Remove { amount: 5 },
                    expected_version: Some(7),
                    lock_token: None,
                }],
                refusal: Refusal {
                    code: ErrorCode::InsufficientStock,
                    message: "2 available".into(),
                    current: Some(Item {
                        location: "s1".into(),
                        sku: "milk".into(),
                        name: "Milk".into(),
                        quantity: 3,
                        reserved: 1,
                        version: 7,
                        ..Default::default()
                    }),
                    line: None,
                },
            },
        }
    }

    #[test]
    fn a_rejection_round_trips_with_its_code_and_item() {
        let record = rejection();
        let bytes = encode(&IdempotencyV::V1(record.clone())).unwrap();
        let back: IdempotencyRecord = decode::<IdempotencyV>(b"k", &bytes).unwrap().into();
        assert_eq!(back, record);
    }

    /// Items stored before `held`, `allowance` and `lock` existed (fields
    /// by position, six of them) still decode, with those at their defaults.
    #[test]
    fn an_item_from_before_holds_and_locks_decodes() {
        #[derive(Serialize)]
        struct Before {
            location: String,
            sku: String,
            name: String,
            quantity: u64,
            reserved: u64,
            version: u64,
        }
        let before = Before {
            location: "s1".into(),
            sku: "milk".into(),
            name: "Milk".into(),
            quantity: 3,
            reserved: 1,
            version: 7,
        };
        let bytes = encode(&before).unwrap();
        let item: Item = decode(b"k", &bytes).unwrap();
        let (held, allowance, lock) = (item.held, item.allowance, item.lock.clone());
        assert_eq!((item.quantity, item.reserved, item.version), (3, 1, 7));
        assert_eq!((held, allowance, lock), (0, 0, None));
    }

    #[test]
    fn an_unknown_code_is_a_corrupt_record_not_a_panic() {
        // The code is stored by its name: put one of the same length that
        // no build knows in its place.
        let mut bytes = encode(&IdempotencyV::V1(rejection())).unwrap();
        let name = b"insufficient_stock";
        let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
        bytes[at..at + name.len()].copy_from_slice(b"no_such_code_at_al");
        assert!(matches!(
            decode::<IdempotencyV>(b"k", &bytes),
            Err(LedgerError::Corrupt { .. })
        ));
        assert!(decode::<ChangeV>(b"c", b"\xc1garbage").is_err());
    }
}
