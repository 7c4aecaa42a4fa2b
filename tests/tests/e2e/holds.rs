//! Holds through the agent's REST API (SPEC §5 "Holds", guarantee 10):
//! all lines or none, ended exactly once, released by the coordinator at
//! expiry (also across its SIGKILL), and never more units held than there
//! are, however many carts race.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shelfsync_tests::poll::{self, Check};
use shelfsync_tests::rest::item_path;
use shelfsync_tests::{RestClient, RestReply};

use super::agent::{PATIENCE, STORE_1, cluster_with_store_1, expect, store_1_spec};

/// How late after its expiry the coordinator may release a hold.
const EXPIRY_SLACK: Duration = Duration::from_secs(1);

async fn create(rest: &RestClient, sku: &str, quantity: u64) {
    let body = json!({"name": "Oat milk", "quantity": quantity});
    let reply = rest.put(&item_path(STORE_1, sku), &[], &body).await;
    expect(&reply.unwrap(), 201);
}

/// Holds `lines` of `(sku, amount)` at store-1 for `ttl`.
async fn hold(
    rest: &RestClient,
    lines: &[(&str, u64)],
    ttl: Duration,
    headers: &[(&str, &str)],
) -> RestReply {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, amount)| json!({"location": STORE_1, "sku": sku, "amount": amount}))
        .collect();
    let body = json!({"lines": lines, "ttl": format!("{}ms", ttl.as_millis()), "owner": "cart-1"});
    rest.post("/v1/holds", headers, &body).await.unwrap()
}

async fn strong(rest: &RestClient, sku: &str) -> Value {
    let path = format!("{}?consistency=strong", item_path(STORE_1, sku));
    let reply = rest.get(&path).await.unwrap();
    expect(&reply, 200);
    reply.json
}

/// `(quantity, reserved, held)` of an item view.
fn counts(item: &Value) -> (u64, u64, u64) {
    let field = |name: &str| item[name].as_u64().unwrap();
    (field("quantity"), field("reserved"), field("held"))
}

fn id_of(reply: &RestReply) -> String {
    reply.json["id"].as_str().unwrap().to_string()
}

/// A hold's whole life: all lines or none, the same hold for the same
/// Idempotency-Key, an extension, one fulfilment, then 410 for what
/// follows; a release is 204 every time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_reserves_every_line_and_ends_once() {
    let (_cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    create(&rest, "milk", 10).await;
    create(&rest, "eggs", 2).await;
    let ttl = Duration::from_secs(60);

    // eggs has 2: nothing is held, and the problem names the line.
    let short = hold(&rest, &[("milk", 3), ("eggs", 3)], ttl, &[]).await;
    expect(&short, 409);
    assert_eq!(short.json["line"], 1, "{short}");
    assert_eq!(counts(&strong(&rest, "milk").await), (10, 0, 0));

    let key = [("Idempotency-Key", "cart-1-checkout")];
    let held = hold(&rest, &[("milk", 3), ("eggs", 2)], ttl, &key).await;
    expect(&held, 201);
    assert_eq!(held.json["state"], "active");
    assert_eq!(held.json["owner"], "cart-1");
    assert!(
        held.json["expires_in_ms"].as_u64().unwrap() > 50_000,
        "{held}"
    );
    let lines = held.json["lines"].as_array().unwrap();
    assert_eq!(lines[0]["amount"], 3);
    assert_eq!(counts(&lines[0]), (10, 3, 3));
    assert_eq!(counts(&lines[1]), (2, 2, 2));
    assert_eq!(lines[1]["available"], 0);
    let again = hold(&rest, &[("milk", 3), ("eggs", 2)], ttl, &key).await;
    assert_eq!(again.status, 201, "{again}");
    assert_eq!(id_of(&again), id_of(&held), "a retry made another hold");
    assert_eq!(counts(&strong(&rest, "milk").await), (10, 3, 3));
    // The agent's own replica answers with the hold's effect at once.
    let local = rest.get(&item_path(STORE_1, "milk")).await.unwrap();
    assert_eq!(counts(&local.json), (10, 3, 3), "{local}");

    let path = format!("/v1/holds/{}", id_of(&held));
    let read = rest.get(&path).await.unwrap();
    expect(&read, 200);
    assert_eq!(read.json["id"], held.json["id"]);
    let extended = rest
        .post(&format!("{path}/extend"), &[], &json!({"ttl": "2h"}))
        .await
        .unwrap();
    expect(&extended, 200);
    assert!(extended.json["expires_in_ms"].as_u64().unwrap() > 3_600_000);

    let fulfilled = rest
        .post(&format!("{path}/fulfil"), &[], &json!({}))
        .await
        .unwrap();
    expect(&fulfilled, 200);
    assert_eq!(fulfilled.json["state"], "fulfilled");
    assert_eq!(counts(&fulfilled.json["lines"][0]), (7, 0, 0));
    assert_eq!(counts(&strong(&rest, "eggs").await), (0, 0, 0));
    for step in ["fulfil", "extend", "release"] {
        let body = json!({"ttl": "1m"});
        let body = if step == "extend" { body } else { json!({}) };
        let late = rest
            .post(&format!("{path}/{step}"), &[], &body)
            .await
            .unwrap();
        expect(&late, 410);
    }
    assert_eq!(counts(&strong(&rest, "milk").await), (7, 0, 0));
    expect(&rest.get("/v1/holds/h999999").await.unwrap(), 404);

    // A release gives the units back, and is 204 again after.
    let other = hold(&rest, &[("milk", 4)], ttl, &[]).await;
    expect(&other, 201);
    let release = format!("/v1/holds/{}/release", id_of(&other));
    for _ in 0..2 {
        let reply = rest.post(&release, &[], &json!({})).await.unwrap();
        expect(&reply, 204);
    }
    assert_eq!(counts(&strong(&rest, "milk").await), (7, 0, 0));
    let read = rest.get(&format!("/v1/holds/{}", id_of(&other))).await;
    assert_eq!(read.unwrap().json["state"], "released");
}

/// Waits for the coordinator to expire the hold at `path` and returns how
/// long after `since` that was seen.
async fn expired_after(rest: &RestClient, path: &str, since: Instant) -> Duration {
    poll::until("the coordinator expires the hold", PATIENCE, || async {
        let reply = rest.get(path).await?;
        Ok(match (reply.status, reply.json["state"].as_str()) {
            (200, Some("expired")) => Check::Done(()),
            (200, _) | (503, _) => Check::NotYet(reply.to_string()),
            _ => anyhow::bail!("unexpected answer: {reply}"),
        })
    })
    .await
    .unwrap();
    since.elapsed()
}

/// A hold of 2 s is released by the coordinator within a second of its
/// expiry, its units available again; the same when the coordinator was
/// killed with SIGKILL and restarted in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_hold_is_released_also_across_a_coordinator_kill() {
    let (mut cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    create(&rest, "bread", 5).await;
    let ttl = Duration::from_secs(2);

    let held = hold(&rest, &[("bread", 2)], ttl, &[]).await;
    expect(&held, 201);
    let answered = Instant::now();
    let path = format!("/v1/holds/{}", id_of(&held));
    let waited = expired_after(&rest, &path, answered).await;
    assert!(
        waited <= ttl + EXPIRY_SLACK,
        "a {ttl:?} hold expired after {waited:?}"
    );
    assert_eq!(counts(&strong(&rest, "bread").await), (5, 0, 0));

    let held = hold(&rest, &[("bread", 3)], ttl, &[]).await;
    expect(&held, 201);
    let answered = Instant::now();
    cluster.coordinator_mut().kill9();
    cluster.restart_coordinator().await.unwrap();
    let restarted = answered.elapsed();
    let rest = cluster.agent(STORE_1).rest();
    let path = format!("/v1/holds/{}", id_of(&held));
    let waited = expired_after(&rest, &path, answered).await;
    assert!(
        waited <= ttl.max(restarted) + EXPIRY_SLACK,
        "expired after {waited:?}, the coordinator restarted after {restarted:?}"
    );
    assert!(
        waited >= ttl - Duration::from_millis(200),
        "expired before its time: {waited:?}"
    );
    let bread = strong(&rest, "bread").await;
    assert_eq!(counts(&bread), (5, 0, 0), "{bread}");
}

/// 1,000 carts race for 10 units one unit each: exactly 10 holds are
/// granted, every other cart gets 409, and the item holds 10.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_carts_race_for_ten_units() {
    let (_cluster, rest) = cluster_with_store_1(store_1_spec()).await;
    create(&rest, "console", 10).await;
    let rest = rest.with_timeout(PATIENCE);
    let carts = (0..1000).map(|_| {
        let rest = rest.clone();
        tokio::spawn(
            async move { hold(&rest, &[("console", 1)], Duration::from_secs(600), &[]).await },
        )
    });
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for cart in carts.collect::<Vec<_>>() {
        let reply = cart.await.unwrap();
        if reply.status != 201 {
            expect(&reply, 409);
        }
        *statuses.entry(reply.status).or_default() += 1;
    }
    assert_eq!(statuses.get(&201), Some(&10), "{statuses:?}");
    assert_eq!(statuses.get(&409), Some(&990), "{statuses:?}");
    let console = strong(&rest, "console").await;
    assert_eq!(counts(&console), (10, 10, 10), "{console}");
    assert_eq!(console["available"], 0);
}
