//! The records a ledger stores, apart from the wire messages: each is an
//! enum with one variant per version of its layout, encoded as compact
//! msgpack (fields by position). A new layout adds a variant and the code
//! that reads the old one; the wire protocol can change without touching
//! what is on disk, and the other way round.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shelfsync_core::{Item, ItemKey, KeyState, Op};
use shelfsync_proto::{Change, ErrorCode, StoreReport, WireError};

use super::{IdempotencyRecord, ItemRecord, LedgerError, Line, Recorded, StoredReport};

/// An item's state and the seq of the change that produced it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ItemV {
    V1 { state: KeyState, seq: u64 },
}

/// A change-log entry; its seq is the storage key.
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

/// An idempotency record.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum IdempotencyV {
    Accepted1 {
        at_ms: u64,
        seq: u64,
        expected_versions: Vec<Option<u64>>,
    },
    Rejected1 {
        at_ms: u64,
        lines: Vec<(ItemKey, Op, Option<u64>)>,
        code: String,
        message: String,
        current: Option<Item>,
    },
}

/// A store's last report.
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
    rmp_serde::from_slice(bytes).map_err(|e| LedgerError::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        detail: e.to_string(),
    })
}

impl From<&ItemRecord> for ItemV {
    fn from(record: &ItemRecord) -> Self {
        ItemV::V1 {
            state: record.state.clone(),
            seq: record.seq,
        }
    }
}

impl From<ItemV> for ItemRecord {
    fn from(value: ItemV) -> Self {
        let ItemV::V1 { state, seq } = value;
        ItemRecord { state, seq }
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

impl From<&IdempotencyRecord> for IdempotencyV {
    fn from(record: &IdempotencyRecord) -> Self {
        match &record.outcome {
            Recorded::Accepted {
                seq,
                expected_versions,
            } => IdempotencyV::Accepted1 {
                at_ms: record.at_ms,
                seq: *seq,
                expected_versions: expected_versions.clone(),
            },
            Recorded::Rejected { lines, error } => IdempotencyV::Rejected1 {
                at_ms: record.at_ms,
                lines: lines
                    .iter()
                    .map(|l| (l.key.clone(), l.op.clone(), l.expected_version))
                    .collect(),
                code: error.code.as_str().to_string(),
                message: error.message.clone(),
                current: error.current.as_deref().cloned(),
            },
        }
    }
}

impl IdempotencyV {
    pub(crate) fn into_record(self, storage_key: &[u8]) -> Result<IdempotencyRecord, LedgerError> {
        Ok(match self {
            IdempotencyV::Accepted1 {
                at_ms,
                seq,
                expected_versions,
            } => IdempotencyRecord {
                at_ms,
                outcome: Recorded::Accepted {
                    seq,
                    expected_versions,
                },
            },
            IdempotencyV::Rejected1 {
                at_ms,
                lines,
                code,
                message,
                current,
            } => {
                let code = ErrorCode::from_name(&code).ok_or_else(|| LedgerError::Corrupt {
                    key: String::from_utf8_lossy(storage_key).into_owned(),
                    detail: format!("unknown error code {code:?}"),
                })?;
                let lines = lines
                    .into_iter()
                    .map(|(key, op, expected_version)| Line {
                        key,
                        op,
                        expected_version,
                    })
                    .collect();
                let mut error = WireError::new(code, message);
                error.current = current.map(Box::new);
                IdempotencyRecord {
                    at_ms,
                    outcome: Recorded::Rejected { lines, error },
                }
            }
        })
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
    use super::*;

    #[test]
    fn a_rejection_round_trips_with_its_code_and_item() {
        let key = ItemKey::new("s1", "milk").unwrap();
        let current = Item {
            location: "s1".into(),
            sku: "milk".into(),
            name: "Milk".into(),
            quantity: 3,
            reserved: 1,
            version: 7,
        };
        let mut error = WireError::new(ErrorCode::InsufficientStock, "2 available");
        error.current = Some(Box::new(current));
        let record = IdempotencyRecord {
            at_ms: 42,
            outcome: Recorded::Rejected {
                lines: vec![Line {
                    key,
                    op: Op::Remove { amount: 5 },
                    expected_version: Some(7),
                }],
                error,
            },
        };
        let bytes = encode(&IdempotencyV::from(&record)).unwrap();
        let back = decode::<IdempotencyV>(b"k", &bytes)
            .unwrap()
            .into_record(b"k")
            .unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn an_unknown_code_is_a_corrupt_record_not_a_panic() {
        let bytes = encode(&IdempotencyV::Rejected1 {
            at_ms: 1,
            lines: vec![],
            code: "no_such_code".into(),
            message: String::new(),
            current: None,
        })
        .unwrap();
        let decoded = decode::<IdempotencyV>(b"k", &bytes).unwrap();
        assert!(matches!(
            decoded.into_record(b"k"),
            Err(LedgerError::Corrupt { .. })
        ));
        assert!(decode::<ChangeV>(b"c", b"\xc1garbage").is_err());
    }
}
