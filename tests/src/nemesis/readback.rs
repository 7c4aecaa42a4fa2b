//! Reading back what a run left: the coordinator's change log and state,
//! each replica's items and digest check, and `shelfctl history` beside
//! the change log.

use anyhow::Context;
use serde_json::Value;
use shelfsync_core::{ItemKey, KeyState};
use shelfsync_proto::{ChangesRequest, Client, ReadRequest, Request, Response};

use crate::Cluster;
use crate::binaries::binary;
use crate::nemesis::check::Anomaly;

use crate::nemesis::history::{Change, ItemState, Key, Replica};
use crate::nemesis::run::SHARED;
use crate::nemesis::workload;
use crate::rest::{RestClient, item_path};

/// Changes asked for per page when the change log is read back.
const PAGE: u32 = 1000;

/// The coordinator's change log of [`SHARED`], from the start, per key.
pub(crate) async fn read_histories(
    admin: &Client,
    keys: &[Key],
) -> anyhow::Result<Vec<(Key, Vec<Change>)>> {
    let mut per_key: Vec<(Key, Vec<Change>)> =
        keys.iter().map(|k| (k.clone(), Vec::new())).collect();
    let mut after = 0;
    loop {
        let request = Request::Changes(ChangesRequest {
            after,
            locations: vec![SHARED.to_string()],
            limit: PAGE,
        });
        let Response::Changes(page) = admin.request(&request).await? else {
            anyhow::bail!("the coordinator did not answer a changes request with a page");
        };
        for change in page.changes {
            let key = Key::new(&change.key.location, &change.key.sku);
            if let Some((_, list)) = per_key.iter_mut().find(|(k, _)| *k == key) {
                list.push(Change {
                    seq: change.seq,
                    store: change.store,
                    op_kind: change.op.kind().to_string(),
                    idempotency_key: change.idempotency_key,
                    version: change.state.version(),
                    item: match change.state {
                        KeyState::Live(item) => Some(ItemState {
                            name: item.name,
                            quantity: item.quantity,
                            reserved: item.reserved,
                            version: item.version,
                        }),
                        _ => None,
                    },
                });
            }
        }
        if page.next >= page.head || page.next == after {
            return Ok(per_key);
        }
        after = page.next;
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

/// Runs the real `shelfctl history --json` for every key with changes and
/// reports where it does not show the newest entries of the change log as
/// read above (seq, version and idempotency key, newest first): the
/// exactly-once checker judges the log, and admins read it with shelfctl.
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
    let mut anomalies = Vec::new();
    for (key, changes) in histories.iter().filter(|(_, c)| !c.is_empty()) {
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
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(binary("shelfctl"))
                .args(&args)
                .output()
        })
        .await?
        .context("cannot run shelfctl history")?;
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
