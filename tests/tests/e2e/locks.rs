//! Locks and batches through the agent's REST API (SPEC §5, guarantees 9
//! and 11): one lock holder at a time, fenced by tokens, ended by the
//! coordinator when the lease passes, also across its restart; a batch is
//! applied whole or not at all.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shelfsync_tests::poll::{self, Check};
use shelfsync_tests::rest::item_path;
use shelfsync_tests::{RestClient, RestReply};

use super::agent::{
    PATIENCE, STORE_1, amount, cluster_with_store_1, expect, op_path, store_1_spec,
};

/// The lease the race takes: long enough for the steps while it is held.
const TTL: Duration = Duration::from_secs(2);
/// How late after its deadline an expiry may be seen: the coordinator's
/// second, and a debug build's scheduling.
const EXPIRY_SLACK: Duration = Duration::from_millis(1500);

fn lock_path(sku: &str) -> String {
    format!("/v1/locks/{STORE_1}/{sku}")
}

async fn take(rest: &RestClient, sku: &str, holder: &str, ttl: Duration) -> RestReply {
    let body = json!({"holder": holder, "ttl": format!("{}ms", ttl.as_millis())});
    rest.post(&lock_path(sku), &[], &body).await.unwrap()
}

/// A strong read's `lock` field.
async fn lock_of(rest: &RestClient, sku: &str) -> Value {
    let path = format!("{}?consistency=strong", item_path(STORE_1, sku));
    let reply = rest.get(&path).await.unwrap();
    expect(&reply, 200);
    reply.json["lock"].clone()
}

/// A local read, which must answer 200.
async fn local(rest: &RestClient, sku: &str) -> Value {
    let reply = rest.get(&item_path(STORE_1, sku)).await.unwrap();
    expect(&reply, 200);
    reply.json
}

async fn create(rest: &RestClient, sku: &str) {
    let body = json!({"name": "Shelf count", "quantity": 10});
    expect(
        &rest
            .put(&item_path(STORE_1, sku), &[], &body)
            .await
            .unwrap(),
        201,
    );
}

/// Two clients race for one lock: exactly one wins; the other gets 423 with
/// the holder until the lease passes, then takes it; the first holder's
/// token is refused from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_race_for_one_lock_and_the_loser_waits_for_the_expiry() {
    let (_cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    create(&rest, "shelf").await;

    let (a, b) = tokio::join!(
        take(&rest, "shelf", "counter-a", TTL),
        take(&rest, "shelf", "counter-b", TTL)
    );
    let granted_at = Instant::now();
    let (winner, loser, loser_name) = match (a.status, b.status) {
        (201, 423) => (a, b, "counter-b"),
        (423, 201) => (b, a, "counter-a"),
        _ => panic!("not exactly one winner: {a} / {b}"),
    };
    expect(&loser, 423);
    assert_eq!(loser.json["holder"], winner.json["holder"]);
    assert!(loser.json["expires_in_ms"].as_u64().unwrap() > 0, "{loser}");
    assert!(loser.retry_after().is_some(), "no Retry-After: {loser}");
    let token = winner.json["token"].as_u64().unwrap().to_string();
    assert_eq!(
        lock_of(&rest, "shelf").await["token"].as_u64(),
        winner.json["token"].as_u64()
    );

    // While it is held: no token is 423, a wrong one is 409, its own works.
    let remove = op_path(STORE_1, "shelf", "remove");
    expect(&rest.post(&remove, &[], &amount(1)).await.unwrap(), 423);
    let wrong = rest
        .post(&remove, &[("Lock-Token", "1")], &amount(1))
        .await
        .unwrap();
    expect(&wrong, 409);
    assert_eq!(wrong.json["type"], "urn:shelfsync:problem:lock_lost");
    let counted = rest
        .post(&remove, &[("Lock-Token", &token)], &amount(1))
        .await
        .unwrap();
    expect(&counted, 200);
    assert_eq!(
        counted.json["lock"]["token"], winner.json["token"],
        "{counted}"
    );

    // The loser takes it once the coordinator has ended the lease.
    let second = poll::until("the loser gets the lock", PATIENCE, || async {
        let reply = take(&rest, "shelf", loser_name, TTL).await;
        Ok(match reply.status {
            201 => Check::Done(reply),
            423 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    let waited = granted_at.elapsed();
    assert!(
        waited <= TTL + EXPIRY_SLACK,
        "a lease of {TTL:?} ended only after {waited:?}"
    );
    assert!(second.json["token"].as_u64() > winner.json["token"].as_u64());

    // The first holder's token is refused for good, also for a release.
    let stale = rest
        .post(&remove, &[("Lock-Token", &token)], &amount(1))
        .await
        .unwrap();
    expect(&stale, 409);
    let second_token = second.json["token"].as_u64().unwrap().to_string();
    let released = rest
        .delete(&lock_path("shelf"), &[("Lock-Token", &second_token)])
        .await;
    expect(&released.unwrap(), 204);
    let again = rest
        .delete(&lock_path("shelf"), &[("Lock-Token", &second_token)])
        .await;
    expect(&again.unwrap(), 204);
    assert!(lock_of(&rest, "shelf").await.is_null());
    expect(&rest.post(&remove, &[], &amount(1)).await.unwrap(), 200);
}

/// Lock deadlines are in the ledger: a coordinator killed with SIGKILL
/// while a lock is held ends it after its restart, within a second of the
/// deadline when the restart came before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_expires_across_a_coordinator_kill() {
    let (mut cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    create(&rest, "crate").await;
    let ttl = Duration::from_secs(4);
    let granted = take(&rest, "crate", "counter-7", ttl).await;
    expect(&granted, 201);
    let granted_at = Instant::now();
    let version = |item: &Value| item["version"].as_u64().unwrap();
    let path = format!("{}?consistency=strong", item_path(STORE_1, "crate"));
    let before = rest.get(&path).await.unwrap();

    cluster.coordinator_mut().kill9();
    cluster.restart_coordinator().await.unwrap();
    let restarted = granted_at.elapsed();
    let rest = cluster.agent(STORE_1).rest();
    // The expiry is a write of the coordinator's: the version moves.
    let expired = version(&before.json) + 1;
    let after = poll::until("the coordinator ends the lock", PATIENCE, || async {
        let reply = rest.get(&path).await?;
        Ok(match reply.status {
            200 if version(&reply.json) == expired => Check::Done(reply),
            200 | 503 => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    let waited = granted_at.elapsed();
    // The grant's answer came after the coordinator's clock started the
    // lease, by a round trip at most.
    assert!(
        waited >= ttl - Duration::from_millis(200),
        "ended before its lease: {waited:?}"
    );
    let due = ttl.max(restarted) + EXPIRY_SLACK;
    assert!(
        waited <= due,
        "ended after {waited:?}, restarted after {restarted:?}"
    );
    assert!(after.json["lock"].is_null(), "{after}");
}

/// A batch is one commit: with one bad line nothing changes and the
/// problem names the line; a good one changes every line, and its key
/// returns the same outcome when sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_with_one_bad_line_changes_nothing() {
    let (_cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    create(&rest, "a").await;
    create(&rest, "b").await;
    let (a, b) = (local(&rest, "a").await, local(&rest, "b").await);
    let line = |sku: &str, op: &str, amount: u64| json!({"location": STORE_1, "sku": sku, "op": op, "amount": amount});

    // b has 10: removing 11 fails, and a's add must not happen either.
    let bad = json!({"lines": [line("a", "add", 5), line("b", "remove", 11)]});
    let refused = rest.post("/v1/batch", &[], &bad).await.unwrap();
    expect(&refused, 409);
    assert_eq!(refused.json["line"], 1, "{refused}");
    assert_eq!(refused.json["current"]["sku"], "b");
    let twice = json!({"lines": [line("a", "add", 1), line("a", "add", 1)]});
    let dup = rest.post("/v1/batch", &[], &twice).await.unwrap();
    expect(&dup, 422);
    assert_eq!(dup.json["line"], 1, "{dup}");
    let strong = |sku| format!("{}?consistency=strong", item_path(STORE_1, sku));
    for (sku, before) in [("a", &a), ("b", &b)] {
        let now = rest.get(&strong(sku)).await.unwrap();
        assert_eq!(&now.json, before, "{sku} changed");
    }

    let good = json!({"lines": [line("a", "add", 5), line("b", "reserve", 3)]});
    let key = [("Idempotency-Key", "batch-1")];
    let accepted = rest.post("/v1/batch", &key, &good).await.unwrap();
    expect(&accepted, 200);
    let items = accepted.json["items"].as_array().unwrap();
    assert_eq!(items[0]["quantity"], 15);
    assert_eq!(items[1]["reserved"], 3);
    // Read back at once from this agent, and the retry changes nothing.
    assert_eq!(local(&rest, "a").await, items[0]);
    let again = rest.post("/v1/batch", &key, &good).await.unwrap();
    expect(&again, 200);
    assert_eq!(again.json, accepted.json);
    assert_eq!(rest.get(&strong("a")).await.unwrap().json, items[0]);
}
