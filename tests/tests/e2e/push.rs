//! Push (SPEC §5 "Sync push"): with a sync interval far longer than the
//! test, a write at one store reaches the other store's replica within a
//! fraction of a second, because the coordinator wakes its agent; also
//! after the coordinator was killed and restarted (the agent subscribes
//! again on its own).

use std::time::{Duration, Instant};

use serde_json::json;
use shelfsync_tests::poll::{self, Check};
use shelfsync_tests::rest::item_path;
use shelfsync_tests::{AgentSpec, Cluster, RestClient, StoreSpec, Wait};

use super::agent::{ONLINE, PATIENCE, STORE_1, STORE_2, expect};

/// Far longer than the test: only a wake-up can bring a change in time.
const INTERVAL: Duration = Duration::from_secs(60);
/// How soon a pushed change must be in the other replica (a debug build on
/// a loaded machine; it takes milliseconds).
const PROPAGATION: Duration = Duration::from_secs(2);
/// The same right after a coordinator restart: the agent learns its old
/// connection is dead from its next keep-alive (a second) and subscribes
/// again (its retries are at most a second apart).
const PROPAGATION_AFTER_RESTART: Duration = Duration::from_secs(3);

async fn two_stores() -> (Cluster, RestClient, RestClient) {
    let stores = [STORE_1, STORE_2].map(|id| {
        StoreSpec::new(id)
            .writable(&[id, ONLINE])
            .readable(&[id, ONLINE])
            .sync_interval(INTERVAL)
    });
    let mut cluster = Cluster::start(stores.to_vec()).await.unwrap();
    let mut rest = Vec::new();
    for id in [STORE_1, STORE_2] {
        let spec = AgentSpec::new(id, &[id, ONLINE]).sync_interval(INTERVAL);
        let agent = cluster.start_agent_with(spec, Wait::Ready).await.unwrap();
        rest.push(agent.rest());
    }
    let two = rest.pop().unwrap();
    let one = rest.pop().unwrap();
    (cluster, one, two)
}

/// Waits until `rest`'s replica shows `sku` at `quantity` (a local read)
/// and returns how long after `since` that was.
async fn seen(rest: &RestClient, sku: &str, quantity: u64, since: Instant) -> Duration {
    let path = item_path(ONLINE, sku);
    poll::until("the change reaches the other replica", PATIENCE, || async {
        let reply = rest.get(&path).await?;
        Ok(match reply.status {
            200 if reply.json["quantity"] == quantity => Check::Done(()),
            200 | 404 | 503 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    since.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_reaches_the_other_store_at_once_also_after_a_coordinator_restart() {
    let (mut cluster, one, two) = two_stores().await;
    let body = json!({"name": "Oat milk", "quantity": 7});
    let created = one
        .put(&item_path(ONLINE, "oat"), &[], &body)
        .await
        .unwrap();
    expect(&created, 201);
    let took = seen(&two, "oat", 7, Instant::now()).await;
    assert!(took <= PROPAGATION, "pushed after {took:?}");

    cluster.coordinator_mut().kill9();
    cluster.restart_coordinator().await.unwrap();
    let one = cluster.agent(STORE_1).rest();
    let two = cluster.agent(STORE_2).rest();
    let remove = format!("{}/remove", item_path(ONLINE, "oat"));
    let written = poll::until("a write after the restart", PATIENCE, || async {
        let reply = one
            .post(
                &remove,
                &[("Idempotency-Key", "after-restart")],
                &json!({"amount": 2}),
            )
            .await?;
        Ok(match reply.status {
            200 => Check::Done(Instant::now()),
            503 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    let took = seen(&two, "oat", 5, written).await;
    assert!(
        took <= PROPAGATION_AFTER_RESTART,
        "pushed after {took:?} once the coordinator was back"
    );
}
