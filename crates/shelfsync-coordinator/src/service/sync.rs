//! The replication side of [`Service`]: push subscriptions, change pages
//! and snapshot pages for the replicas, their reports, and the status of
//! every store.

use std::sync::Arc;

use shelfsync_core::digest::Digest;
use shelfsync_core::{Item, ItemKey};
use shelfsync_ledger::{Ledger, LedgerError, StoredReport};
use shelfsync_proto::time::now_ms;
use shelfsync_proto::{
    Change, ChangesPage, ChangesRequest, ErrorCode, ReportAck, Response, SnapshotPage,
    SnapshotRequest, StatusReply, StoreReport, StoreStatus, WireError,
};

use super::{Access, MAX_COMMIT, Peer, Service, blocking, internal, page_limit, require_admin};

impl Service {
    /// A flag raised after every commit that touches one of `locations`,
    /// if the peer may read each one (a [`Request::Subscribe`]); the server
    /// sends a wake-up each time it is raised.
    pub fn subscribe(
        &self,
        peer: &Peer,
        locations: Vec<String>,
    ) -> Result<Arc<tokio::sync::Notify>, WireError> {
        let locations = self.readable(peer, locations)?;
        Ok(self.pipeline.subscribe(&locations))
    }

    /// A sync request's locations, sorted and distinct, if the peer may
    /// read each one.
    pub(super) fn readable(
        &self,
        peer: &Peer,
        mut locations: Vec<String>,
    ) -> Result<Vec<String>, WireError> {
        if locations.is_empty() {
            return Err(WireError::new(
                ErrorCode::BadRequest,
                "at least one location is needed",
            ));
        }
        for location in &locations {
            self.check(peer, Access::Read, location)?;
        }
        locations.sort();
        locations.dedup();
        Ok(locations)
    }

    pub(super) async fn changes(
        &self,
        peer: &Peer,
        req: ChangesRequest,
    ) -> Result<Response, WireError> {
        let locations = self.readable(peer, req.locations)?;
        let head = self.pipeline.read_head();
        let transfers_at = self.pipeline.transfers_at(&locations);
        if req.after == head {
            // A replica at the head (most syncs of an idle chain): no change
            // can follow it and the cursor cannot have expired (the oldest
            // retained seq is at most head + 1), so answer without a
            // ledger read or a hop to the blocking pool.
            return Ok(Response::Changes(ChangesPage {
                changes: Vec::new(),
                next: head,
                head,
                transfers_at,
            }));
        }
        let ledger = self.ledger.clone();
        let limit = page_limit(req.limit);
        let after = req.after;
        blocking(move || {
            // Checked again after the read: compaction may have removed
            // entries of the page meanwhile, and then it must not count.
            let expired = || -> Result<Option<Response>, LedgerError> {
                let oldest = ledger.oldest()?;
                let expired = after.saturating_add(1) < oldest || after > head;
                Ok(expired.then_some(Response::CursorExpired { oldest, head }))
            };
            if let Some(expired) = expired()? {
                return Ok(expired);
            }
            let (changes, next) = changes_page(ledger.as_ref(), &locations, after, head, limit)?;
            let page = Response::Changes(ChangesPage {
                changes,
                next,
                head,
                transfers_at,
            });
            Ok(expired()?.unwrap_or(page))
        })
        .await
    }

    pub(super) async fn snapshot(
        &self,
        peer: &Peer,
        req: SnapshotRequest,
    ) -> Result<Response, WireError> {
        let locations = self.readable(peer, req.locations)?;
        let head = self.pipeline.read_head();
        let ledger = self.ledger.clone();
        let limit = page_limit(req.limit);
        let (items, next, newest) =
            blocking(move || snapshot_page(ledger.as_ref(), &locations, req.after.as_ref(), limit))
                .await?;
        // Items are read from committed state; answer only once it is durable.
        if !self.pipeline.wait_durable(newest).await {
            return Err(WireError::new(
                ErrorCode::Unavailable,
                "the coordinator is shutting down",
            ));
        }
        Ok(Response::Snapshot(SnapshotPage { items, next, head }))
    }

    pub(super) fn report(&self, peer: &Peer, report: StoreReport) -> Result<Response, WireError> {
        let Peer::Store(id) = peer else {
            return Err(WireError::new(
                ErrorCode::Forbidden,
                "only stores send sync reports",
            ));
        };
        let replica = Digest {
            sum: report.digest,
            count: report.item_count,
        };
        let head = self.pipeline.read_head();
        let digest_ok = self
            .digests
            .verify(&report.locations, report.cursor, head, replica);
        if digest_ok == Some(false) {
            tracing::warn!(store = %id, cursor = report.cursor, "replica digest does not match; the store will resync");
        }
        // Keep the last known verdict while the answer is not known.
        let digest_ok = digest_ok.or_else(|| {
            self.reports
                .lock()
                .ok()
                .and_then(|r| r.get(id).and_then(|s| s.digest_ok))
        });
        let stored = StoredReport {
            report,
            at_ms: now_ms(),
            digest_ok,
        };
        self.ledger
            .save_report(id, &stored)
            .map_err(|e| internal(&e))?;
        if let Ok(mut reports) = self.reports.lock() {
            reports.insert(id.clone(), stored.clone());
        }
        Ok(Response::ReportAck(ReportAck {
            head: self.pipeline.read_head(),
            digest_ok: stored.digest_ok,
        }))
    }

    pub(super) fn status(&self, peer: &Peer) -> Result<Response, WireError> {
        require_admin(peer)?;
        let head = self.pipeline.read_head();
        let connected = self.connected.lock().map(|c| c.clone()).unwrap_or_default();
        let reports = self.reports.lock().map(|r| r.clone()).unwrap_or_default();
        let registry = self.registry();
        let stores = (registry.stores().iter())
            .map(|store| {
                let stored = reports.get(&store.id);
                let (conflicts_5m, rejections_5m) = self.metrics.recent(&store.id);
                StoreStatus {
                    id: store.id.clone(),
                    name: store.name.clone(),
                    sync_interval_ms: u64::try_from(store.sync_interval.as_millis())
                        .unwrap_or(u64::MAX),
                    connected: connected.get(&store.id).is_some_and(|n| *n > 0),
                    last_report_ms: stored.map(|s| s.at_ms),
                    report: stored.map(|s| s.report.clone()),
                    digest_ok: stored.and_then(|s| s.digest_ok),
                    lag: stored.map_or(head, |s| head.saturating_sub(s.report.cursor)),
                    conflicts_5m,
                    rejections_5m,
                }
            })
            .collect();
        Ok(Response::Status(StatusReply {
            head,
            now_ms: now_ms(),
            stores,
        }))
    }
}

/// The changes to `locations` (sorted, distinct) after `after` up to
/// `until`: at most `limit` of them, more only to finish a commit, since a
/// page never ends inside one. Returns them with the cursor to send next.
/// Reads each location's index, so its cost follows the changes returned,
/// not the chain's.
pub fn changes_page(
    ledger: &dyn Ledger,
    locations: &[String],
    after: u64,
    until: u64,
    limit: usize,
) -> Result<(Vec<Change>, u64), LedgerError> {
    let mut changes = Vec::new();
    let mut truncated = false;
    for location in locations {
        let found = ledger.location_changes(location, after, until, limit)?;
        truncated |= found.len() >= limit;
        changes.extend(found);
    }
    changes.sort_unstable_by_key(|c| c.seq);
    if !truncated {
        return Ok((changes, until));
    }
    // Every change up to the limit-th is here: a location whose list was
    // cut holds `limit` changes at or before it.
    changes.truncate(limit);
    let Some(last) = changes.last() else {
        return Ok((changes, until));
    };
    let (cut, end) = (last.seq, last.commit_end());
    if end > cut {
        for location in locations {
            changes.extend(ledger.location_changes(location, cut, end, MAX_COMMIT)?);
        }
        changes.sort_unstable_by_key(|c| c.seq);
    }
    Ok((changes, end.max(cut)))
}

/// Up to `limit` live items of `locations` (sorted, distinct) after the key
/// `after`. Returns them with the key to go on after (`None` once every
/// item was read) and the newest seq among the records read.
fn snapshot_page(
    ledger: &dyn Ledger,
    locations: &[String],
    after: Option<&ItemKey>,
    limit: usize,
) -> Result<(Vec<Item>, Option<ItemKey>, u64), LedgerError> {
    let (mut items, mut newest) = (Vec::new(), 0);
    for location in locations {
        let after_sku = match after {
            Some(after) if after.location > *location => continue,
            Some(after) if after.location == *location => Some(after.sku.as_str()),
            _ => None,
        };
        let room = limit - items.len();
        let records = ledger.items(location, after_sku, room)?;
        // A full read (tombstones count) may leave more in this location.
        let next = records
            .last()
            .filter(|_| records.len() >= room)
            .map(|(sku, _)| ItemKey {
                location: location.clone(),
                sku: sku.clone(),
            });
        for (_, record) in records {
            newest = newest.max(record.seq);
            items.extend(record.state.item().cloned());
        }
        if next.is_some() {
            return Ok((items, next, newest));
        }
    }
    Ok((items, None, newest))
}
