//! The records a ledger stores: each is an enum with one variant per
//! version of its layout, encoded as compact msgpack (fields by position).
//! A new layout adds a variant (the old type kept beside the new) and the
//! code that reads the old one. Records have fields of their own, so the
//! wire protocol and the disk layout change independently.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shelfsync_core::{Hold, ItemKey, KeyState, Op, Transfer};
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

/// A hold; its id is the storage key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum HoldV {
    V1(Hold),
}

impl From<HoldV> for Hold {
    fn from(HoldV::V1(hold): HoldV) -> Self {
        hold
    }
}

/// A transfer; its id is the storage key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum TransferV {
    V1(Transfer),
}

impl From<TransferV> for Transfer {
    fn from(TransferV::V1(transfer): TransferV) -> Self {
        transfer
    }
}

/// A change-log entry; its seq is the storage key.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ChangeV {
    V1(ChangeV1),
}

/// A change as layout 1 keeps it: the wire [`Change`]'s fields but the
/// seq, and the seq of the key's previous change, which links its history.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ChangeV1 {
    key: ItemKey,
    state: KeyState,
    op: Op,
    store: String,
    idempotency_key: String,
    at_ms: u64,
    commit_end: u64,
    prior_seq: Option<u64>,
}

/// A store's last report.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ReportV {
    V1(ReportV1),
}

/// A report as layout 1 keeps it: the wire [`StoreReport`]'s fields, when
/// it arrived and whether its digest matched.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ReportV1 {
    cursor: u64,
    digest: u64,
    item_count: u64,
    pending_forwards: u64,
    last_error: Option<String>,
    software_version: String,
    locations: Vec<String>,
    at_ms: u64,
    digest_ok: Option<bool>,
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, LedgerError> {
    rmp_serde::to_vec(value).map_err(|e| LedgerError::Storage(format!("cannot encode: {e}")))
}

pub(crate) fn decode<T: DeserializeOwned>(key: &[u8], bytes: &[u8]) -> Result<T, LedgerError> {
    rmp_serde::from_slice(bytes).map_err(|e| LedgerError::corrupt(key, e))
}

/// Error codes are stored by name, not through the wire's serde, which
/// reads a name it does not know as `Unknown`: here an unknown name makes
/// the record corrupt.
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
        ChangeV::V1(ChangeV1 {
            key: change.key.clone(),
            state: change.state.clone(),
            op: change.op.clone(),
            store: change.store.clone(),
            idempotency_key: change.idempotency_key.clone(),
            at_ms: change.at_ms,
            commit_end: change.commit_end(),
            prior_seq,
        })
    }

    /// The change at `seq`, and the seq of its key's previous change.
    pub(crate) fn into_change(self, seq: u64) -> (Change, Option<u64>) {
        let ChangeV::V1(c) = self;
        let change = Change {
            seq,
            key: c.key,
            state: c.state,
            op: c.op,
            store: c.store,
            idempotency_key: c.idempotency_key,
            at_ms: c.at_ms,
            commit_end: c.commit_end,
        };
        (change, c.prior_seq)
    }
}

impl From<&StoredReport> for ReportV {
    fn from(stored: &StoredReport) -> Self {
        let r = &stored.report;
        ReportV::V1(ReportV1 {
            cursor: r.cursor,
            digest: r.digest,
            item_count: r.item_count,
            pending_forwards: r.pending_forwards,
            last_error: r.last_error.clone(),
            software_version: r.software_version.clone(),
            locations: r.locations.clone(),
            at_ms: stored.at_ms,
            digest_ok: stored.digest_ok,
        })
    }
}

impl From<ReportV> for StoredReport {
    fn from(ReportV::V1(r): ReportV) -> Self {
        let report = StoreReport {
            cursor: r.cursor,
            digest: r.digest,
            item_count: r.item_count,
            pending_forwards: r.pending_forwards,
            last_error: r.last_error,
            software_version: r.software_version,
            locations: r.locations,
        };
        StoredReport {
            report,
            at_ms: r.at_ms,
            digest_ok: r.digest_ok,
        }
    }
}

#[cfg(test)]
mod tests {
    use shelfsync_core::Item;
    use shelfsync_proto::ErrorCode;

    use super::*;
    use crate::{Line, Recorded, Refusal};

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

    /// The bytes layout 7 writes for a change and a report: a change here
    /// means a new layout (a new variant), not an edit of this test.
    #[test]
    fn the_stored_layout_is_unchanged() {
        let hex = |bytes: Vec<u8>| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
        let change = Change {
            seq: 9,
            key: ItemKey::new("s1", "milk").unwrap(),
            state: KeyState::Live(Item {
                location: "s1".into(),
                sku: "milk".into(),
                name: "Milk".into(),
                quantity: 3,
                reserved: 1,
                version: 2,
                ..Default::default()
            }),
            op: Op::Add { amount: 2 },
            store: "store-1".into(),
            idempotency_key: "k9".into(),
            at_ms: 1234,
            commit_end: 10,
        };
        let bytes = encode(&ChangeV::new(&change, Some(4))).unwrap();
        assert_eq!(
            hex(bytes.clone()),
            "81a256319892a27331a46d696c6b81a44c69766599a27331a46d696c6ba44d696c6b\
             0301020000c081a36164649102a773746f72652d31a26b39cd04d20a04"
        );
        let back = decode::<ChangeV>(b"c", &bytes).unwrap().into_change(9);
        assert_eq!(back, (change, Some(4)));
        let report = StoredReport {
            report: StoreReport {
                cursor: 7,
                digest: 99,
                item_count: 3,
                pending_forwards: 1,
                last_error: Some("e".into()),
                software_version: "0.1.0".into(),
                locations: vec!["s1".into()],
            },
            at_ms: 5,
            digest_ok: Some(true),
        };
        let bytes = encode(&ReportV::from(&report)).unwrap();
        assert_eq!(
            hex(bytes.clone()),
            "81a256319907630301a165a5302e312e3091a2733105c3"
        );
        let back: StoredReport = decode::<ReportV>(b"r", &bytes).unwrap().into();
        assert_eq!(back, report);
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
