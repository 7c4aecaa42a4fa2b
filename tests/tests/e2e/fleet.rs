//! Many real agents with push (issue: sync at fleet scale): after writes
//! stop, every replica reaches the coordinator's head and has its digest
//! confirmed by the coordinator within 2 s, although their sync interval
//! is far longer. Sized for CI (8 agents); `SHELFSYNC_E2E_FLEET_AGENTS=100`
//! runs the same test with 100 agent processes.

use std::time::{Duration, Instant};

use serde_json::json;
use shelfsync_proto::{Request, Response};
use shelfsync_tests::poll::{self, Check};
use shelfsync_tests::rest::item_path;
use shelfsync_tests::{AgentSpec, Cluster, RestClient, StoreSpec, Wait};

use super::agent::{ONLINE, PATIENCE, expect};

/// Agents when `SHELFSYNC_E2E_FLEET_AGENTS` does not say.
const DEFAULT_AGENTS: usize = 8;
/// Far longer than the test: only push brings the last writes in time.
const INTERVAL: Duration = Duration::from_secs(60);
/// The bound from the last write to every replica verified.
const CONVERGED: Duration = Duration::from_secs(2);
/// Write rounds: each agent writes its own location and the shared pool.
const ROUNDS: usize = 3;

fn agents() -> usize {
    std::env::var("SHELFSYNC_E2E_FLEET_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_AGENTS)
}

/// Whether every agent's replica is at `head` with its digest confirmed
/// (all asked at once, so that the check itself takes one round trip).
async fn all_verified(rests: &[RestClient], head: u64) -> anyhow::Result<Check<()>> {
    let mut asked = tokio::task::JoinSet::new();
    for rest in rests {
        let rest = rest.clone();
        asked.spawn(async move { rest.sync_status().await });
    }
    let mut behind = None;
    while let Some(status) = asked.join_next().await {
        let status = status??;
        let at_head = status["cursor"].as_u64() == Some(head);
        if !at_head || status["digest_ok"] != json!(true) {
            behind = Some(status.to_string());
        }
    }
    Ok(behind.map_or(Check::Done(()), Check::NotYet))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_writes_stop_every_replica_is_verified_within_two_seconds() {
    let ids: Vec<String> = (1..=agents()).map(|i| format!("store-{i}")).collect();
    let stores = ids.iter().map(|id| {
        StoreSpec::new(id)
            .writable(&[id, ONLINE])
            .readable(&[id, ONLINE])
            .sync_interval(INTERVAL)
    });
    let mut cluster = Cluster::start(stores.collect()).await.unwrap();
    let mut rests = Vec::new();
    for id in &ids {
        let spec = AgentSpec::new(id, &[id, ONLINE]).sync_interval(INTERVAL);
        let agent = cluster.start_agent_with(spec, Wait::Ready).await.unwrap();
        rests.push(agent.rest());
    }
    // The shared item every agent adds to.
    let pool = item_path(ONLINE, "shared");
    let body = json!({"name": "Shared", "quantity": 0});
    expect(&rests[0].put(&pool, &[], &body).await.unwrap(), 201);

    for round in 0..ROUNDS {
        let mut writes = tokio::task::JoinSet::new();
        for (rest, id) in rests.iter().zip(&ids) {
            let (rest, own) = (rest.clone(), item_path(id, &format!("sku-{round}")));
            let add = format!("{pool}/add");
            writes.spawn(async move {
                let body = json!({"name": "Own", "quantity": 5});
                expect(&rest.put(&own, &[], &body).await.unwrap(), 201);
                let added = rest.post(&add, &[], &json!({"amount": 1})).await;
                expect(&added.unwrap(), 200);
            });
        }
        while let Some(done) = writes.join_next().await {
            done.unwrap();
        }
    }
    let stopped = Instant::now();

    let admin = cluster.connect("admin").await.unwrap();
    let Response::Status(status) = admin.call(&Request::Status).await.unwrap() else {
        panic!("no status");
    };
    admin.close().await;
    poll::until("every replica verified at the head", PATIENCE, || {
        all_verified(&rests, status.head)
    })
    .await
    .unwrap();
    let took = stopped.elapsed();
    eprintln!(
        "{} replicas verified {took:?} after the writes stopped",
        rests.len()
    );
    assert!(
        took <= CONVERGED,
        "{} replicas verified {took:?} after the writes stopped",
        rests.len()
    );
    let shared = rests[rests.len() - 1].get(&pool).await.unwrap();
    assert_eq!(
        shared.json["quantity"],
        (ids.len() * ROUNDS) as u64,
        "{shared}"
    );
}
