//! Reading back what a run left: the coordinator's change log (of every
//! location of the run) and state, each replica's items and digest check,
//! the transfers, and `shelfctl history` beside the change log.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::Value;
use shelfsync_core::{ItemKey, Op as LogOp};
use shelfsync_proto::{ChangesRequest, Client, ReadRequest, Request, Response};

use crate::Cluster;
use crate::binaries::binary;
use crate::nemesis::check::Anomaly;

use crate::nemesis::history::{Change, ItemState, Key, LockState, OpArgs, Replica, TransferView};
use crate::nemesis::run::SHARED;
use crate::nemesis::workload;
use crate::rest::{RestClient, item_path};

/// Changes asked for per page when the change log is read back.
const PAGE: u32 = 1000;

/// The coordinator's change log of `locations`, from the start, per key:
/// every key of `keys` (with no changes, if it has none) and every key
/// the log holds.
pub(crate) async fn read_histories(
    admin: &Client,
    locations: &[String],
    keys: &[Key],
) -> anyhow::Result<Vec<(Key, Vec<Change>)>> {
    let mut per_key: BTreeMap<Key, Vec<Change>> =
        keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    let mut after = 0;
    loop {
        let request = Request::Changes(ChangesRequest {
            after,
            locations: locations.to_vec(),
            limit: PAGE,
        });
        let Response::Changes(page) = admin.request(&request).await? else {
            anyhow::bail!("the coordinator did not answer a changes request with a page");
        };
        for change in page.changes {
            let key = Key::new(&change.key.location, &change.key.sku);
            let commit_end = change.commit_end();
            let item = change.state.item();
            per_key.entry(key).or_default().push(Change {
                seq: change.seq,
                store: change.store,
                op_kind: change.op.kind().to_string(),
                idempotency_key: change.idempotency_key,
                version: change.state.version(),
                item: item.map(|item| ItemState {
                    name: item.name.clone(),
                    quantity: item.quantity,
                    reserved: item.reserved,
                    version: item.version,
                }),
                at_ms: change.at_ms,
                commit_end,
                args: args_of(&change.op),
                lock: item.and_then(|i| i.lock.as_ref()).map(|l| LockState {
                    holder: l.holder.clone(),
                    token: l.token,
                    expires_at_ms: l.expires_at_ms,
                }),
            });
        }
        if page.next >= page.head || page.next == after {
            return Ok(per_key.into_iter().collect());
        }
        after = page.next;
    }
}

/// The fields of a logged op, as the checkers read them.
fn args_of(op: &LogOp) -> OpArgs {
    let mut args = OpArgs::default();
    match op {
        LogOp::Create { quantity, .. } => args.quantity = Some(*quantity),
        LogOp::Set { quantity, .. } => args.quantity = *quantity,
        LogOp::Add { amount }
        | LogOp::Remove { amount }
        | LogOp::Reserve { amount }
        | LogOp::Release { amount }
        | LogOp::Fulfil { amount } => args.amount = Some(*amount),
        LogOp::Delete => {}
        LogOp::LockGrant { holder, ttl_ms } => {
            args.holder = Some(holder.clone());
            args.ttl_ms = Some(*ttl_ms);
        }
        LogOp::LockRenew { token, ttl_ms } => {
            args.token = Some(*token);
            args.ttl_ms = Some(*ttl_ms);
        }
        LogOp::LockRelease { token } | LogOp::LockExpire { token } => args.token = Some(*token),
        LogOp::Hold { hold, amount }
        | LogOp::HoldFulfil { hold, amount }
        | LogOp::HoldRelease { hold, amount }
        | LogOp::HoldExpire { hold, amount } => {
            args.hold = Some(hold.clone());
            args.amount = Some(*amount);
        }
        LogOp::TransferShip { transfer, amount } | LogOp::TransferReceive { transfer, amount } => {
            args.transfer = Some(transfer.clone());
            args.amount = Some(*amount);
        }
    }
    args
}

/// Whether the coordinator still has something of `key` to end by
/// itself: a stored lock, or units held by active holds.
pub(crate) async fn awaits_expiry(admin: &Client, key: &Key) -> anyhow::Result<bool> {
    let key = ItemKey::new(key.location.clone(), key.sku.clone())?;
    match admin.call(&Request::Read(ReadRequest { key })).await? {
        Response::Read(reply) => Ok(reply.item.lock.is_some() || reply.item.held > 0),
        Response::Error(err) if err.code == shelfsync_proto::ErrorCode::NotFound => Ok(false),
        other => anyhow::bail!("strong read: unexpected answer {other:?}"),
    }
}

/// Transfer `id` read through an agent (`None`: 404).
pub(crate) async fn read_transfer(
    rest: &RestClient,
    id: &str,
) -> anyhow::Result<Option<TransferView>> {
    let reply = rest.get(&format!("/v1/transfers/{id}")).await?;
    match reply.status {
        200 => match workload::transfer_view(&reply.json) {
            Some(view) => Ok(Some(view)),
            None => anyhow::bail!("transfer {id}: not a transfer: {reply}"),
        },
        404 => Ok(None),
        _ => anyhow::bail!("transfer {id}: {reply}"),
    }
}

pub(crate) async fn strong_read(admin: &Client, key: &Key) -> anyhow::Result<Option<ItemState>> {
    let key = ItemKey::new(key.location.clone(), key.sku.clone())?;
    match admin.call(&Request::Read(ReadRequest { key })).await? {
        Response::Read(reply) => Ok(Some(ItemState {
            name: reply.item.name,
            quantity: reply.item.quantity,
            reserved: reply.item.reserved,
            version: reply.item.version,
        })),
        Response::Error(err) if err.code == shelfsync_proto::ErrorCode::NotFound => Ok(None),
        other => anyhow::bail!("strong read: unexpected answer {other:?}"),
    }
}

pub(crate) async fn read_replica(
    store: &str,
    rest: &RestClient,
    keys: &[Key],
) -> anyhow::Result<Replica> {
    let mut items = Vec::new();
    for key in keys {
        let reply = rest.get(&item_path(&key.location, &key.sku)).await?;
        let item = match reply.status {
            200 => workload::item_state(&reply.json),
            404 => None,
            _ => anyhow::bail!("{store}: local read of {key}: {reply}"),
        };
        items.push((key.clone(), item));
    }
    let status = rest.sync_status().await?;
    Ok(Replica {
        store: store.to_string(),
        items,
        digest_ok: status["digest_ok"].as_bool(),
    })
}

/// Entries `shelfctl history` shows at most (its `--limit` cap).
const SHELFCTL_HISTORY_LIMIT: usize = 1000;

/// Runs the real `shelfctl history --json` for every key of the shared
/// location with changes (the hot keys and the locked ones) and reports
/// where it does not show the newest entries of the change log as read
/// above (seq, version and idempotency key, newest first): the
/// exactly-once checker judges the log, and admins read it with shelfctl.
/// (The stores' own keys are left out: a shelfctl process per key costs a
/// debug build about 0.15 s.)
pub(crate) async fn compare_shelfctl_history(
    cluster: &Cluster,
    histories: &[(Key, Vec<Change>)],
) -> anyhow::Result<Vec<Anomaly>> {
    let tls = cluster.certs().tls_files("admin");
    let config = cluster.dir().join("shelfctl.toml");
    let text = format!(
        "coordinator = {:?}\nserver_name = {:?}\n\n[tls]\nca_cert = {:?}\ncert = {:?}\nkey = {:?}\n",
        cluster.coordinator().quic_addr().to_string(),
        crate::SERVER_NAME,
        tls.ca_cert.display().to_string(),
        tls.cert.display().to_string(),
        tls.key.display().to_string(),
    );
    std::fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    // One shelfctl per key, all started at once: each spends most of its
    // time starting and connecting.
    let mut runs = Vec::new();
    let shared = histories
        .iter()
        .filter(|(k, c)| k.location == SHARED && !c.is_empty());
    for (key, changes) in shared {
        let args = [
            "--config".to_string(),
            config.display().to_string(),
            "history".into(),
            key.location.clone(),
            key.sku.clone(),
            "--json".into(),
            "--limit".into(),
            SHELFCTL_HISTORY_LIMIT.to_string(),
        ];
        let run = tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary("shelfctl"))
                .args(&args)
                .output()
        });
        runs.push((key, changes, run));
    }
    let mut anomalies = Vec::new();
    for (key, changes, run) in runs {
        let output = run.await?.context("cannot run shelfctl history")?;
        if !output.status.success() {
            anyhow::bail!(
                "shelfctl history {key} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let shown: Value = serde_json::from_slice(&output.stdout)
            .with_context(|| format!("shelfctl history {key}: not JSON"))?;
        let shown: Vec<(Option<u64>, Option<u64>, Option<String>)> = shown["changes"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .map(|e| {
                        (
                            e["seq"].as_u64(),
                            e["version"].as_u64(),
                            e["idempotency_key"].as_str().map(str::to_string),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let logged: Vec<(Option<u64>, Option<u64>, Option<String>)> = changes
            .iter()
            .rev()
            .take(SHELFCTL_HISTORY_LIMIT)
            .map(|c| {
                (
                    Some(c.seq),
                    Some(c.version),
                    Some(c.idempotency_key.clone()),
                )
            })
            .collect();
        if shown != logged {
            anomalies.push(Anomaly {
                checker: "exactly_once",
                key: Some(key.clone()),
                detail: format!(
                    "shelfctl history shows {} entries that differ from the change log's newest \
                     {} (first shown: {:?}; first logged: {:?})",
                    shown.len(),
                    logged.len(),
                    shown.first(),
                    logged.first()
                ),
            });
        }
    }
    Ok(anomalies)
}
