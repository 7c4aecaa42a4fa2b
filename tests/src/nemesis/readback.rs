//! Reading back what a run left: the coordinator's change log and state,
//! and each replica's items and digest check.

use shelfsync_core::{ItemKey, KeyState};
use shelfsync_proto::{ChangesRequest, Client, ReadRequest, Request, Response};

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
