//! Store agents against a real coordinator: writes forwarded and read back
//! on another store, concurrent reservations, conditional writes,
//! idempotency, a coordinator outage, a SIGKILL in the middle of a bootstrap,
//! and the REST API's handling of bad input, rate limits and CORS.
//!
//! Every test starts its own cluster: a coordinator with two stores, each
//! writing and reading its own location and the shared `online` pool, and
//! the agents it needs, syncing every 300 ms.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shelfsync_core::digest::Digest;
use shelfsync_core::{Item, ItemKey, KeyState, Op};
use shelfsync_proto::{
    ChangesRequest, Client, HistoryRequest, ReadRequest, Request, Response, WriteAck, WriteRequest,
};
use shelfsync_tests::poll::{self, Check};
use shelfsync_tests::rest::item_path;
use shelfsync_tests::{
    AgentSpec, Cluster, CoordinatorSpec, RestClient, RestReply, StoreSpec, Wait,
};

pub(crate) const STORE_1: &str = "store-1";
pub(crate) const STORE_2: &str = "store-2";
/// The pool both stores write and replicate.
pub(crate) const ONLINE: &str = "online";
/// Sync interval of the agents (and expected by the coordinator).
const SYNC: Duration = Duration::from_millis(300);
/// Bound on anything a test waits for that should take far less.
pub(crate) const PATIENCE: Duration = Duration::from_secs(20);

/// store-1 and store-2, each writing and reading itself and `online`.
fn stores() -> Vec<StoreSpec> {
    [STORE_1, STORE_2]
        .into_iter()
        .map(|id| {
            StoreSpec::new(id)
                .writable(&[id, ONLINE])
                .readable(&[id, ONLINE])
                .sync_interval(SYNC)
        })
        .collect()
}

/// A cluster with the agent of store-1 (holding `store-1` and `online`) ready.
pub(crate) async fn cluster_with_store_1(spec: AgentSpec) -> (Cluster, RestClient) {
    let mut cluster = Cluster::start(stores()).await.unwrap();
    let rest = cluster
        .start_agent_with(spec, Wait::Ready)
        .await
        .unwrap()
        .rest();
    (cluster, rest)
}

pub(crate) fn store_1_spec() -> AgentSpec {
    AgentSpec::new(STORE_1, &[STORE_1, ONLINE]).sync_interval(SYNC)
}

/// The JSON the REST API shows for `item`.
pub(crate) fn item_json(item: &Item) -> Value {
    json!({
        "location": item.location,
        "sku": item.sku,
        "name": item.name,
        "quantity": item.quantity,
        "reserved": item.reserved,
        "held": item.held,
        "allowance": item.allowance,
        "available": item.available(),
        "version": item.version,
        "lock": null,
    })
}

pub(crate) fn amount(n: u64) -> Value {
    json!({ "amount": n })
}

pub(crate) fn op_path(location: &str, sku: &str, op: &str) -> String {
    format!("{}/{op}", item_path(location, sku))
}

/// Asserts `reply` has `status` and, for an error, is a problem document.
pub(crate) fn expect(reply: &RestReply, status: u16) {
    assert_eq!(reply.status, status, "{reply}");
    if status >= 400 {
        assert!(reply.is_problem(), "not a problem document: {reply}");
    }
}

/// A strong read through the admin connection.
async fn strong_read(admin: &Client, location: &str, sku: &str) -> Item {
    let key = ItemKey::new(location, sku).unwrap();
    match admin
        .call(&Request::Read(ReadRequest { key }))
        .await
        .unwrap()
    {
        Response::Read(reply) => reply.item,
        other => panic!("strong read of {location}/{sku}: {other:?}"),
    }
}

/// Polls `GET path` on `rest` until `done` holds for a 200 reply.
async fn wait_item(
    rest: &RestClient,
    what: &str,
    path: &str,
    done: impl Fn(&Value) -> bool,
) -> RestReply {
    poll::until(what, PATIENCE, || async {
        let reply = rest.get(path).await?;
        Ok(match reply.status {
            200 if done(&reply.json) => Check::Done(reply),
            200 | 404 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap()
}

/// A write through one agent is read back at once on that agent and, after
/// the other agent's next sync, on the other one (guarantee 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_agent_is_read_on_the_other() {
    let mut cluster = Cluster::start(stores()).await.unwrap();
    let a = cluster
        .start_agent(STORE_1, &[STORE_1, ONLINE], SYNC)
        .await
        .unwrap()
        .rest();
    let b = cluster
        .start_agent(STORE_2, &[STORE_2, ONLINE], SYNC)
        .await
        .unwrap()
        .rest();
    let path = item_path(ONLINE, "umbrella");

    let created = a
        .put(&path, &[], &json!({"name": "Umbrella", "quantity": 12}))
        .await
        .unwrap();
    expect(&created, 201);
    assert_eq!(created.etag_version(), Some(1), "{created}");
    let expected = Item {
        location: ONLINE.into(),
        sku: "umbrella".into(),
        name: "Umbrella".into(),
        quantity: 12,
        reserved: 0,
        version: 1,
        ..Default::default()
    };
    assert_eq!(created.json, item_json(&expected));

    // Read-your-writes on the agent that forwarded it: no waiting.
    let own = a.get(&path).await.unwrap();
    expect(&own, 200);
    assert_eq!(own.json, created.json);
    assert_eq!(own.etag_version(), Some(1));

    let admin = cluster.connect("admin").await.unwrap();
    let key = ItemKey::new(ONLINE, "umbrella").unwrap();
    let seq = match admin
        .call(&Request::History(HistoryRequest { key, limit: 10 }))
        .await
        .unwrap()
    {
        Response::History(reply) => reply.changes[0].seq,
        other => panic!("history: {other:?}"),
    };

    let started = Instant::now();
    let seen = wait_item(&b, "store-2 reads the write", &path, |_| true).await;
    eprintln!(
        "the write reached store-2 after {:?} (sync interval {SYNC:?})",
        started.elapsed()
    );
    assert_eq!(seen.json, created.json);
    assert_eq!(seen.etag_version(), Some(1));
    let cursor = seen.replica_cursor().unwrap_or(0);
    assert!(
        cursor >= seq,
        "store-2 at cursor {cursor}, the write is {seq}"
    );
    assert!(seen.replica_age_ms().is_some(), "{seen:?}");
}

/// Guarantee 2 through the REST API: 32 clients on two agents reserve one
/// unit at a time from 100 until refused; exactly 100 succeed, each one a
/// distinct step, and both replicas end at reserved = 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_reservations_through_two_agents_never_oversell() {
    const CLIENTS_PER_AGENT: usize = 16;
    const STOCK: u64 = 100;
    let mut cluster = Cluster::start(stores()).await.unwrap();
    let a = cluster
        .start_agent(STORE_1, &[STORE_1, ONLINE], SYNC)
        .await
        .unwrap()
        .rest();
    let b = cluster
        .start_agent(STORE_2, &[STORE_2, ONLINE], SYNC)
        .await
        .unwrap()
        .rest();
    let created = a
        .put(
            &item_path(ONLINE, "hot"),
            &[],
            &json!({"name": "Hot item", "quantity": STOCK}),
        )
        .await
        .unwrap();
    expect(&created, 201);

    let started = Instant::now();
    let mut tasks = Vec::new();
    for rest in [&a, &b] {
        for _ in 0..CLIENTS_PER_AGENT {
            let rest = rest.clone();
            tasks.push(tokio::spawn(async move {
                let path = op_path(ONLINE, "hot", "reserve");
                let mut accepted = Vec::new();
                loop {
                    let reply = rest.post(&path, &[], &amount(1)).await?;
                    match reply.status {
                        200 => accepted.push((
                            reply.u64("version").unwrap_or(0),
                            reply.u64("reserved").unwrap_or(0),
                        )),
                        409 if reply.is_problem() => return Ok(accepted),
                        _ => anyhow::bail!("unexpected answer: {reply}"),
                    }
                }
            }));
        }
    }
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await.unwrap().unwrap());
    }
    eprintln!(
        "{} reservations and {} refusals in {:?}",
        accepted.len(),
        2 * CLIENTS_PER_AGENT,
        started.elapsed()
    );
    assert_eq!(accepted.len() as u64, STOCK, "successful reservations");
    // Every success is its own step: versions 2..=101 with reserved 1..=100.
    accepted.sort_unstable();
    let steps: Vec<(u64, u64)> = (1..=STOCK).map(|n| (n + 1, n)).collect();
    assert_eq!(accepted, steps);

    let admin = cluster.connect("admin").await.unwrap();
    let item = strong_read(&admin, ONLINE, "hot").await;
    assert_eq!(
        (item.quantity, item.reserved, item.version),
        (STOCK, STOCK, STOCK + 1),
        "{item:?}"
    );
    for (store, rest) in [(STORE_1, &a), (STORE_2, &b)] {
        let reply = wait_item(
            rest,
            &format!("{store} shows reserved = {STOCK}"),
            &item_path(ONLINE, "hot"),
            |item| item["version"] == STOCK + 1,
        )
        .await;
        assert_eq!(reply.json, item_json(&item), "{store}");
    }
}

/// Optimistic concurrency through `If-Match`: stale gets 412 with the
/// current item, a delete without it 428, the right version goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn if_match_guards_set_and_delete() {
    let (_cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    let path = item_path(STORE_1, "lamp");
    let created = rest
        .put(&path, &[], &json!({"name": "Lamp", "quantity": 5}))
        .await
        .unwrap();
    expect(&created, 201);
    let added = rest
        .post(&op_path(STORE_1, "lamp", "add"), &[], &amount(1))
        .await
        .unwrap();
    expect(&added, 200);
    assert_eq!(added.etag_version(), Some(2));

    let stale = rest
        .put(&path, &[("If-Match", "\"1\"")], &json!({"quantity": 7}))
        .await
        .unwrap();
    expect(&stale, 412);
    assert_eq!(stale.json["current"], added.json, "{stale}");
    assert_eq!(stale.json["current"]["version"], 2, "{stale}");

    let unconditional = rest.delete(&path, &[]).await.unwrap();
    expect(&unconditional, 428);
    // Without If-Match a PUT is a create, and the item exists.
    let again = rest
        .put(&path, &[], &json!({"name": "Lamp", "quantity": 7}))
        .await
        .unwrap();
    expect(&again, 409);

    let set = rest
        .put(&path, &[("If-Match", "\"2\"")], &json!({"quantity": 7}))
        .await
        .unwrap();
    expect(&set, 200);
    assert_eq!(set.etag_version(), Some(3), "{set:?}");
    assert_eq!(
        (set.u64("quantity"), set.u64("version")),
        (Some(7), Some(3))
    );
    assert_eq!(set.json["name"], "Lamp");

    let stale_delete = rest.delete(&path, &[("If-Match", "\"2\"")]).await.unwrap();
    expect(&stale_delete, 412);
    assert_eq!(stale_delete.json["current"], set.json);
    let deleted = rest.delete(&path, &[("If-Match", "\"3\"")]).await.unwrap();
    expect(&deleted, 204);
    let gone = rest.get(&path).await.unwrap();
    expect(&gone, 404);
}

/// Guarantee 3 through the REST API: a replayed `Idempotency-Key` returns
/// the original outcome and changes nothing; reused for another request it
/// is refused with 422.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_idempotency_key_changes_nothing() {
    let (cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    let admin = cluster.connect("admin").await.unwrap();
    let path = item_path(STORE_1, "kettle");
    let create_key = [("Idempotency-Key", "create-kettle")];
    let body = json!({"name": "Kettle", "quantity": 10});
    let created = rest.put(&path, &create_key, &body).await.unwrap();
    expect(&created, 201);

    let add_path = op_path(STORE_1, "kettle", "add");
    let add_key = [("Idempotency-Key", "add-five")];
    let first = rest.post(&add_path, &add_key, &amount(5)).await.unwrap();
    expect(&first, 200);
    assert_eq!(
        (first.u64("quantity"), first.etag_version()),
        (Some(15), Some(2))
    );

    let replay = rest.post(&add_path, &add_key, &amount(5)).await.unwrap();
    expect(&replay, 200);
    assert_eq!(
        replay.json, first.json,
        "the replay is not the original outcome"
    );
    assert_eq!(replay.etag_version(), Some(2));
    let item = strong_read(&admin, STORE_1, "kettle").await;
    assert_eq!((item.quantity, item.version), (15, 2), "{item:?}");

    // The create replayed after the add: its original outcome (version 1),
    // and the replica does not go back to it.
    let replayed_create = rest.put(&path, &create_key, &body).await.unwrap();
    expect(&replayed_create, 201);
    assert_eq!(replayed_create.json, created.json);
    let local = rest.get(&path).await.unwrap();
    expect(&local, 200);
    assert_eq!(local.json, item_json(&item), "the replica went back");

    let reused = rest.post(&add_path, &add_key, &amount(6)).await.unwrap();
    expect(&reused, 422);
    let strong = rest
        .get(&format!("{path}?consistency=strong"))
        .await
        .unwrap();
    expect(&strong, 200);
    assert_eq!(
        strong.json,
        item_json(&item),
        "the refused reuse changed it"
    );
}

/// An agent killed with SIGKILL may have lost the last states it answered
/// from (its replica is not flushed per write), so after the restart it
/// answers local reads only once a sync has brought it to the coordinator's
/// head: never an older version than a client was already told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_answers_local_reads_only_after_a_sync() {
    let (mut cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    let path = item_path(STORE_1, "lamp");
    let created = rest
        .put(&path, &[], &json!({"name": "Lamp", "quantity": 3}))
        .await
        .unwrap();
    expect(&created, 201);
    let added = rest
        .post(&op_path(STORE_1, "lamp", "add"), &[], &amount(2))
        .await
        .unwrap();
    expect(&added, 200);

    cluster.coordinator_mut().kill9();
    let agent = cluster.agent_mut(STORE_1);
    agent.kill9();
    agent.restart_waiting(Wait::Serving).await.unwrap();
    let rest = agent.rest();
    let reply = rest.get(&path).await.unwrap();
    expect(&reply, 503);
    assert_eq!(
        reply.json["type"],
        "urn:shelfsync:problem:replica_catching_up"
    );
    assert!(reply.retry_after().is_some(), "no Retry-After: {reply}");
    let listed = rest
        .get(&format!("/v1/items?location={STORE_1}"))
        .await
        .unwrap();
    expect(&listed, 503);
    let ready = rest.get("/readyz").await.unwrap();
    assert_eq!(ready.status, 503, "ready before catching up: {ready}");
    let status = rest.sync_status().await.unwrap();
    assert_eq!(status["caught_up"], false, "{status}");

    cluster.restart_coordinator().await.unwrap();
    let rest = cluster.agent(STORE_1).rest();
    let read = poll::until("a local read after the sync", PATIENCE, || async {
        let reply = rest.get(&path).await?;
        Ok(match reply.status {
            200 => Check::Done(reply),
            503 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    assert_eq!(read.json, added.json);
}

/// Consistency over availability: with the coordinator gone, reads go on
/// (and say how stale they are), writes fail fast with 503 and
/// `Retry-After`, and `/v1/sync` shows the error; when it is back, writes
/// go through again without restarting the agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_outage_keeps_reads_and_fails_writes_fast() {
    const FORWARD_TIMEOUT: Duration = Duration::from_secs(1);
    /// What a 503 may take beyond the forward timeout (scheduling, debug build).
    const SLACK: Duration = Duration::from_millis(1500);
    let spec = store_1_spec().forward_timeout(FORWARD_TIMEOUT);
    let (mut cluster, rest) = cluster_with_store_1(spec).await;
    let path = item_path(STORE_1, "radio");
    let created = rest
        .put(&path, &[], &json!({"name": "Radio", "quantity": 3}))
        .await
        .unwrap();
    expect(&created, 201);
    let agent_pid = cluster.agent(STORE_1).pid();

    cluster.coordinator_mut().kill9();

    let first = rest.get(&path).await.unwrap();
    expect(&first, 200);
    assert_eq!(first.json, created.json);
    let first_age = first.replica_age_ms().unwrap();

    let add_path = op_path(STORE_1, "radio", "add");
    // A write refused for the outage, and how long the refusal took. The
    // client waits long enough to measure a slow answer, not cut it short.
    let refused_write = |idempotency_key: &'static str| {
        let rest = rest.clone().with_timeout(PATIENCE);
        let add_path = add_path.clone();
        async move {
            let started = Instant::now();
            let reply = rest
                .post(
                    &add_path,
                    &[("Idempotency-Key", idempotency_key)],
                    &amount(1),
                )
                .await
                .unwrap();
            let took = started.elapsed();
            eprintln!("write {idempotency_key} was answered in {took:?}: {reply}");
            expect(&reply, 503);
            assert!(reply.retry_after().is_some(), "no Retry-After: {reply:?}");
            took
        }
    };
    // Right away, while the agent's connection to the dead coordinator
    // still looks open.
    let first_refusal = refused_write("during-outage-1").await;

    // Reads keep answering, older and older.
    let older = poll::until("the replica age grows", PATIENCE, || async {
        let reply = rest.get(&path).await?;
        let age = reply.replica_age_ms().unwrap_or(0);
        Ok(match reply.status {
            200 if age >= first_age + 2 * SYNC.as_millis() as u64 => Check::Done(reply),
            200 => Check::NotYet(format!("age {age} ms")),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    assert_eq!(older.json, created.json);
    let status = cluster
        .agent(STORE_1)
        .wait_sync("reports the sync error", PATIENCE, |s| {
            s["last_error"].is_string()
        })
        .await
        .unwrap();
    eprintln!("sync status during the outage: {status}");
    // Again, now that the sync loop has noticed the outage too.
    let second_refusal = refused_write("during-outage-2").await;

    let moved = cluster.restart_coordinator().await.unwrap();
    let rest = cluster.agent(STORE_1).rest();
    let started = Instant::now();
    let added = poll::until("a write after the restart", PATIENCE, || async {
        // The same key on every try: whatever reached the coordinator took
        // effect once.
        let reply = rest
            .post(
                &add_path,
                &[("Idempotency-Key", "after-outage")],
                &amount(1),
            )
            .await?;
        Ok(match reply.status {
            200 => Check::Done(reply),
            503 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    eprintln!(
        "writes went through again {:?} after the restart (coordinator moved: {moved})",
        started.elapsed()
    );
    // The write refused during the outage never took effect.
    assert_eq!(
        (added.u64("quantity"), added.u64("version")),
        (Some(4), Some(2))
    );
    if !moved {
        assert_eq!(
            cluster.agent(STORE_1).pid(),
            agent_pid,
            "the agent was restarted"
        );
    }
    cluster
        .agent(STORE_1)
        .wait_sync("syncs again", PATIENCE, |s| {
            s["last_error"].is_null() && s["cursor"].as_u64() >= Some(2)
        })
        .await
        .unwrap();

    // Checked last, so that the rest of the outage is checked either way.
    for (which, took) in [("first", first_refusal), ("second", second_refusal)] {
        assert!(
            took <= FORWARD_TIMEOUT + SLACK,
            "the {which} write during the outage took {took:?} to be refused with 503; the \
             forward timeout is {FORWARD_TIMEOUT:?}"
        );
    }
}

/// Items preloaded for the bootstrap test.
const PRELOAD: usize = 100_000;
/// Writes in flight during the preload, spread over [`PRELOAD_CONNECTIONS`].
const PRELOAD_IN_FLIGHT: usize = 512;
const PRELOAD_CONNECTIONS: usize = 4;
/// The bootstrap must have copied more than this when the agent is killed.
const KILL_AFTER_ITEMS: u64 = 10_000;
/// Fresh starts allowed when a bootstrap completes before it is caught.
const BOOTSTRAP_ATTEMPTS: usize = 3;

/// The `i`th preloaded item, at version 1.
fn preloaded(i: usize) -> Item {
    Item {
        location: STORE_1.into(),
        sku: format!("sku-{i:06}"),
        name: format!("Item {i}"),
        quantity: (i as u64 * 7919) % 1000 + 1,
        reserved: 0,
        version: 1,
        ..Default::default()
    }
}

/// Creates the [`PRELOAD`] items through the admin connection.
async fn preload(cluster: &Cluster) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..PRELOAD_CONNECTIONS {
        let client = Arc::new(cluster.connect("admin").await.unwrap());
        for _ in 0..PRELOAD_IN_FLIGHT / PRELOAD_CONNECTIONS {
            let (client, next) = (client.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= PRELOAD {
                        return Ok::<(), String>(());
                    }
                    let item = preloaded(i);
                    let request = Request::Write(WriteRequest {
                        idempotency_key: format!("preload-{i}"),
                        key: item.key(),
                        op: Op::Create {
                            name: item.name,
                            quantity: item.quantity,
                        },
                        expected_version: None,
                        lock_token: None,
                    });
                    match client.call(&request).await {
                        Ok(Response::Write(WriteAck { state, .. })) if state.version() == 1 => {}
                        other => return Err(format!("preload of item {i}: {other:?}")),
                    }
                }
            }));
        }
    }
    for worker in workers {
        worker.await.unwrap().unwrap();
    }
}

/// Guarantee 6: `kill -9` of an agent in the middle of bootstrapping 100,000
/// items, then a restart, ends with a replica equal to the coordinator's
/// (count, digest, and every item listed through the API), resumed from
/// where it was rather than started over.
///
/// A bootstrap that completes before the test sees it past
/// [`KILL_AFTER_ITEMS`] (a much faster machine) would make the kill
/// pointless, so then the agent's replica is wiped and it bootstraps again,
/// up to [`BOOTSTRAP_ATTEMPTS`] times; after that the test fails rather
/// than pass without having killed anything. The restarted agent must also
/// log that it resumed a bootstrap, which a kill after the bootstrap
/// completed could not produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_killed_mid_bootstrap_resumes_to_an_equal_replica() {
    let mut cluster = Cluster::start(stores()).await.unwrap();
    let started = Instant::now();
    preload(&cluster).await;
    eprintln!("preloaded {PRELOAD} items in {:?}", started.elapsed());
    let mut expected = Digest::default();
    (0..PRELOAD).for_each(|i| expected.add(&preloaded(i)));

    let spec = AgentSpec::new(STORE_1, &[STORE_1]).sync_interval(SYNC);
    let started = Instant::now();
    cluster.start_agent_with(spec, Wait::Serving).await.unwrap();
    let mut caught = false;
    for attempt in 1..=BOOTSTRAP_ATTEMPTS {
        let agent = cluster.agent(STORE_1);
        let seen = agent
            .wait_sync("bootstraps", PATIENCE, |s| {
                let copying =
                    s["bootstrapping"] == true && s["item_count"].as_u64() > Some(KILL_AFTER_ITEMS);
                copying || s["cursor"].is_u64()
            })
            .await
            .unwrap();
        let agent = cluster.agent_mut(STORE_1);
        agent.kill9();
        if seen["cursor"].is_null() {
            eprintln!(
                "attempt {attempt}: killed {:?} into the bootstrap at {seen}",
                started.elapsed()
            );
            caught = true;
            break;
        }
        eprintln!("attempt {attempt}: the bootstrap completed before the kill ({seen}); again");
        std::fs::remove_dir_all(agent.data_dir()).unwrap();
        agent.restart_waiting(Wait::Serving).await.unwrap();
    }
    if !caught {
        panic!(
            "the bootstrap of {PRELOAD} items completed before {KILL_AFTER_ITEMS} items could be \
             seen, {BOOTSTRAP_ATTEMPTS} times: this test cannot kill it mid-way here"
        );
    }

    let agent = cluster.agent_mut(STORE_1);
    let restarted = Instant::now();
    agent.restart().await.unwrap();
    eprintln!(
        "the restarted agent was ready after {:?}",
        restarted.elapsed()
    );
    let log = agent.log_since_start();
    assert!(
        log.lines()
            .any(|l| l.contains("bootstrapping") && l.contains("resuming=true")),
        "the restarted agent did not resume its bootstrap:\n{log}"
    );
    // Ready means the bootstrap is complete; the cursor then moves on to
    // the head and the coordinator checks the digest with the next report.
    let head = PRELOAD as u64;
    let status = agent
        .wait_sync("is at the head with its digest confirmed", PATIENCE, |s| {
            s["cursor"] == head && s["digest_ok"] == true
        })
        .await
        .unwrap();
    assert_eq!(status["bootstrapping"], false, "{status}");
    assert_eq!(status["item_count"], PRELOAD as u64, "{status}");
    assert_eq!(status["digest"], expected.sum, "{status}");

    // Every item, through the API, page by page.
    let rest = agent.rest();
    let listed = list_all(&rest, STORE_1).await;
    assert_eq!(listed.len(), PRELOAD, "items listed");
    for (i, item) in listed.iter().enumerate() {
        assert_eq!(*item, item_json(&preloaded(i)), "item {i} of the listing");
    }
    let sample = rest.get_item(STORE_1, "sku-054321").await.unwrap();
    expect(&sample, 200);
    assert_eq!(sample.json, item_json(&preloaded(54_321)));
    eprintln!(
        "bootstrap test: {:?} from the agent's first start",
        started.elapsed()
    );
}

/// Every item of `location` through an agent's API, 1,000 a page.
async fn list_all(rest: &RestClient, location: &str) -> Vec<Value> {
    let mut listed = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let query = match &after {
            Some(sku) => format!("/v1/items?location={location}&limit=1000&after={sku}"),
            None => format!("/v1/items?location={location}&limit=1000"),
        };
        let page = rest.get(&query).await.unwrap();
        expect(&page, 200);
        let items = page.json["items"].as_array().unwrap();
        assert!(items.len() <= 1000, "{} items in a page", items.len());
        listed.extend(items.iter().cloned());
        match page.json["next"].as_str() {
            Some(next) => after = Some(next.to_string()),
            None => break,
        }
    }
    listed
}

/// Writes `op` to `key` (at `expected_version`, if given) through the
/// admin connection; the new state.
async fn admin_write(
    admin: &Client,
    idempotency_key: String,
    key: ItemKey,
    op: Op,
    expected_version: Option<u64>,
) -> KeyState {
    let request = Request::Write(WriteRequest {
        idempotency_key,
        key,
        op,
        expected_version,
        lock_token: None,
    });
    match admin.call(&request).await {
        Ok(Response::Write(WriteAck { state, .. })) => state,
        other => panic!("{request:?}: {other:?}"),
    }
}

/// Creates the `i`th preloaded item through the admin connection; its sku
/// and state.
async fn admin_create(admin: &Client, i: usize) -> (String, KeyState) {
    let item = preloaded(i);
    let op = Op::Create {
        name: item.name.clone(),
        quantity: item.quantity,
    };
    let state = admin_write(admin, format!("create-{i}"), item.key(), op, None).await;
    (item.sku, state)
}

/// A store away for longer than the coordinator keeps its log: its agent's
/// cursor has expired, so it bootstraps again over the replica it holds
/// (into chunks of a new epoch over those of the first bootstrap) and ends
/// equal to the coordinator: items changed meanwhile are new, deleted ones
/// gone, created ones there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_whose_cursor_expired_bootstraps_again_to_an_equal_replica() {
    const ITEMS: usize = 300;
    let mut spec = CoordinatorSpec::new(stores());
    spec.retain_changes = Some(10);
    spec.gc_interval = Some(Duration::from_millis(50));
    let mut cluster = Cluster::start_with(spec).await.unwrap();
    let admin = cluster.connect("admin").await.unwrap();
    let mut expected = std::collections::BTreeMap::new();
    for i in 0..ITEMS {
        let (sku, state) = admin_create(&admin, i).await;
        expected.insert(sku, state);
    }
    let spec = AgentSpec::new(STORE_1, &[STORE_1]).sync_interval(SYNC);
    cluster.start_agent_with(spec, Wait::Ready).await.unwrap();
    let agent = cluster.agent_mut(STORE_1);
    let status = agent
        .wait_sync("is at the head with its digest confirmed", PATIENCE, |s| {
            s["cursor"] == ITEMS as u64 && s["digest_ok"] == true
        })
        .await
        .unwrap();
    let cursor = status["cursor"].as_u64().unwrap();
    agent.kill9();

    // While it is away: 40 items change, 20 go, 20 are new.
    for i in 0..60 {
        let key = preloaded(i).key();
        let op = match i {
            0..40 => Op::Set {
                name: None,
                quantity: Some(5_000 + i as u64),
            },
            _ => Op::Delete,
        };
        let state = admin_write(&admin, format!("away-{i}"), key.clone(), op, Some(1)).await;
        expected.insert(key.sku, state);
    }
    for i in ITEMS..ITEMS + 20 {
        let (sku, state) = admin_create(&admin, i).await;
        expected.insert(sku, state);
    }
    let head = (ITEMS + 80) as u64;
    // The coordinator's log no longer reaches back to the agent's cursor.
    let request = Request::Changes(ChangesRequest {
        after: cursor,
        locations: vec![STORE_1.into()],
        limit: 1,
    });
    poll::until("the agent's cursor to expire", PATIENCE, || async {
        Ok(match admin.call(&request).await? {
            Response::CursorExpired { .. } => Check::Done(()),
            other => Check::NotYet(format!("{other:?}")),
        })
    })
    .await
    .unwrap();

    let agent = cluster.agent_mut(STORE_1);
    agent.restart().await.unwrap();
    let status = agent
        .wait_sync("is at the head with its digest confirmed", PATIENCE, |s| {
            s["cursor"] == head && s["digest_ok"] == true
        })
        .await
        .unwrap();
    let log = agent.log_since_start();
    assert!(
        log.contains("cursor older than the coordinator's log"),
        "the restarted agent did not bootstrap again:\n{log}"
    );
    let live: Vec<Value> = (expected.values())
        .filter_map(|state| state.item().map(item_json))
        .collect();
    assert_eq!(live.len(), ITEMS);
    assert_eq!(status["item_count"], live.len() as u64, "{status}");
    // The same from what it stored: after a restart too.
    for restarted in [false, true] {
        if restarted {
            agent.restart().await.unwrap();
        }
        let rest = agent.rest();
        assert_eq!(
            list_all(&rest, STORE_1).await,
            live,
            "restarted: {restarted}"
        );
        for i in [0, 39, 40, 59, 60, ITEMS + 19] {
            let reply = rest.get_item(STORE_1, &preloaded(i).sku).await.unwrap();
            match expected[&preloaded(i).sku].item() {
                Some(item) => assert_eq!(reply.json, item_json(item), "item {i}"),
                None => expect(&reply, 404),
            }
        }
    }
}

/// Guarantee 8 on the REST API: bad input gets the right 4xx as a problem
/// document, never a 500 or a leaked path; and CORS answers preflights for
/// the configured origin only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_problem_documents_and_cors_is_selective() {
    const ORIGIN: &str = "https://pos.example.internal";
    let spec = store_1_spec().cors_origins(&[ORIGIN]);
    let (cluster, rest) = cluster_with_store_1(spec).await;
    let cluster_dir = cluster.dir().display().to_string();
    let created = rest
        .put(
            &item_path(STORE_1, "mug"),
            &[],
            &json!({"name": "Mug", "quantity": 4}),
        )
        .await
        .unwrap();
    expect(&created, 201);

    let raw = |method: reqwest::Method, path: String, body: &[u8]| {
        let rest = rest.clone();
        let body = body.to_vec();
        async move { rest.send(method, &path, &[], Some(body)).await.unwrap() }
    };
    let too_big = format!(r#"{{"name": "{}", "quantity": 1}}"#, "x".repeat(17 * 1024));
    let long_sku = "s".repeat(65);
    let cases: Vec<(&str, RestReply, u16)> = vec![
        (
            "malformed JSON",
            raw(
                reqwest::Method::PUT,
                item_path(STORE_1, "new"),
                br#"{"name": "x", "quantity": "#,
            )
            .await,
            400,
        ),
        (
            "malformed JSON on an op",
            raw(
                reqwest::Method::POST,
                op_path(STORE_1, "mug", "add"),
                b"{amount: 1}",
            )
            .await,
            400,
        ),
        (
            "a body over 16 KiB",
            raw(
                reqwest::Method::PUT,
                item_path(STORE_1, "big"),
                too_big.as_bytes(),
            )
            .await,
            413,
        ),
        (
            "a sku with a space",
            rest.put(
                &item_path(STORE_1, "a%20b"),
                &[],
                &json!({"name": "x", "quantity": 1}),
            )
            .await
            .unwrap(),
            422,
        ),
        (
            "a 65-character sku",
            rest.put(
                &item_path(STORE_1, &long_sku),
                &[],
                &json!({"name": "x", "quantity": 1}),
            )
            .await
            .unwrap(),
            422,
        ),
        (
            "reading a 65-character sku",
            rest.get_item(STORE_1, &long_sku).await.unwrap(),
            422,
        ),
        (
            "a quantity that is not a number",
            rest.put(
                &item_path(STORE_1, "new"),
                &[],
                &json!({"name": "x", "quantity": "many"}),
            )
            .await
            .unwrap(),
            422,
        ),
        (
            "an amount of 0",
            rest.post(&op_path(STORE_1, "mug", "add"), &[], &amount(0))
                .await
                .unwrap(),
            422,
        ),
        (
            "an unknown op",
            rest.post(&op_path(STORE_1, "mug", "explode"), &[], &amount(1))
                .await
                .unwrap(),
            404,
        ),
        (
            "a list with limit=0",
            rest.get(&format!("/v1/items?location={STORE_1}&limit=0"))
                .await
                .unwrap(),
            422,
        ),
        (
            "a list with limit=1001",
            rest.get(&format!("/v1/items?location={STORE_1}&limit=1001"))
                .await
                .unwrap(),
            422,
        ),
        (
            "a list without a location",
            rest.get("/v1/items").await.unwrap(),
            422,
        ),
        (
            "an unknown route",
            rest.get("/v1/nothing-here").await.unwrap(),
            404,
        ),
    ];
    for (case, reply, status) in &cases {
        assert_eq!(reply.status, *status, "{case}: {reply}");
        assert!(
            reply.is_problem(),
            "{case}: not a problem document: {reply}"
        );
        assert!(
            reply.replica_cursor().is_some() && reply.replica_age_ms().is_some(),
            "{case}: no replica headers: {reply:?}"
        );
        for leak in [cluster_dir.as_str(), "panicked", "src/", ".rs:"] {
            assert!(!reply.body.contains(leak), "{case}: {leak:?} in {reply}");
        }
    }

    // None of it changed the item, and the agent still serves.
    let mug = rest.get_item(STORE_1, "mug").await.unwrap();
    expect(&mug, 200);
    assert_eq!(mug.json, created.json);

    let preflight = |origin: &'static str| {
        let rest = rest.clone();
        async move {
            rest.send(
                reqwest::Method::OPTIONS,
                &item_path(STORE_1, "mug"),
                &[
                    ("Origin", origin),
                    ("Access-Control-Request-Method", "PUT"),
                    (
                        "Access-Control-Request-Headers",
                        "if-match, idempotency-key",
                    ),
                ],
                None,
            )
            .await
            .unwrap()
        }
    };
    let allowed = preflight(ORIGIN).await;
    assert!(allowed.status < 300, "{allowed:?}");
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some(ORIGIN),
        "{allowed:?}"
    );
    let methods = allowed
        .header("access-control-allow-methods")
        .unwrap_or_default();
    assert!(methods.contains("PUT"), "{allowed:?}");
    let other = preflight("https://evil.example").await;
    assert_eq!(
        other.header("access-control-allow-origin"),
        None,
        "{other:?}"
    );
    let read = rest
        .send(
            reqwest::Method::GET,
            &item_path(STORE_1, "mug"),
            &[("Origin", ORIGIN)],
            None,
        )
        .await
        .unwrap();
    expect(&read, 200);
    assert_eq!(read.header("access-control-allow-origin"), Some(ORIGIN));
    let exposed = read
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        exposed.contains("etag") && exposed.contains("x-replica-age-ms"),
        "{read:?}"
    );
}

/// A client past the rate limit gets 429 with `Retry-After`, and is served
/// again once the rate allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_rate_limit_requests_get_429() {
    let spec = store_1_spec().rate_limit(1, 2);
    let (_cluster, rest) = cluster_with_store_1(spec).await;
    let mut limited = None;
    for _ in 0..10 {
        let reply = rest.get("/v1/sync").await.unwrap();
        match reply.status {
            200 => {}
            429 => {
                limited = Some(reply);
                break;
            }
            _ => panic!("unexpected answer: {reply}"),
        }
    }
    let limited = limited.expect("10 quick requests and no 429");
    assert!(limited.is_problem(), "{limited}");
    let retry_after = limited.retry_after();
    assert!(retry_after.is_some_and(|s| s >= 1), "{limited:?}");
    poll::until("served again", PATIENCE, || async {
        let reply = rest.get("/v1/sync").await?;
        Ok(match reply.status {
            200 => Check::Done(()),
            429 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
}
