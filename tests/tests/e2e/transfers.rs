//! Transfers through two agents' REST APIs (SPEC §5 "Transfers"): shipped
//! from store-1 in one commit, received at store-2 in parts, never more
//! than shipped, closed with the rest written off; and stock conserved,
//! checked from the change log itself.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use shelfsync_core::{ItemKey, Op};
use shelfsync_proto::{HistoryRequest, Request, Response};
use shelfsync_tests::poll::{self, Check};
use shelfsync_tests::rest::item_path;
use shelfsync_tests::{AgentSpec, RestClient, Wait};

use super::agent::{
    ONLINE, PATIENCE, STORE_1, STORE_2, cluster_with_store_1, expect, store_1_spec,
};

async fn create(rest: &RestClient, location: &str, sku: &str, quantity: u64) {
    let body = json!({"name": format!("Item {sku}"), "quantity": quantity});
    let reply = rest.put(&item_path(location, sku), &[], &body).await;
    expect(&reply.unwrap(), 201);
}

fn lines(lines: &[(&str, u64)]) -> Value {
    let lines: Vec<Value> = lines
        .iter()
        .map(|(sku, amount)| json!({"sku": sku, "amount": amount}))
        .collect();
    json!({ "lines": lines })
}

/// `(shipped, received, lost)` per line of a transfer's JSON.
fn progress(transfer: &Value) -> Vec<(u64, u64, u64)> {
    let field = |line: &Value, name: &str| line[name].as_u64().unwrap();
    transfer["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| (field(l, "shipped"), field(l, "received"), field(l, "lost")))
        .collect()
}

/// Ids listed by `GET /v1/transfers?location=..&state=in_transit`, read
/// through the coordinator.
async fn open_at(rest: &RestClient, location: &str) -> Vec<String> {
    let path = format!("/v1/transfers?location={location}&state=in_transit&consistency=strong");
    let reply = rest.get(&path).await.unwrap();
    expect(&reply, 200);
    let listed = reply.json["transfers"].as_array().unwrap();
    listed
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits until the agent's replica lists exactly `ids` as the open
/// transfers of `location` (a local read).
async fn kept_open(rest: &RestClient, location: &str, ids: &[&str]) {
    let path = format!("/v1/transfers?location={location}&state=in_transit");
    poll::until("the replica's open transfers", PATIENCE, || async {
        let reply = rest.get(&path).await?;
        anyhow::ensure!(reply.status == 200, "unexpected answer: {reply}");
        let listed: Vec<&str> = (reply.json["transfers"].as_array())
            .map(|t| t.iter().filter_map(|t| t["id"].as_str()).collect())
            .unwrap_or_default();
        Ok(match listed == ids {
            true => Check::Done(()),
            false => Check::NotYet(reply.to_string()),
        })
    })
    .await
    .unwrap();
}

/// A store's replica keeps the open transfers of its locations and shows
/// them while the coordinator is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transfers_are_shown_while_the_coordinator_is_down() {
    let (mut cluster, one) = cluster_with_store_1(store_1_spec()).await;
    let spec = AgentSpec::new(STORE_2, &[STORE_2, ONLINE]);
    let two = cluster.start_agent_with(spec, Wait::Ready).await;
    let two = two.unwrap().rest();
    create(&one, STORE_1, "a", 10).await;
    let mut ship = lines(&[("a", 3)]);
    ship["from"] = json!(STORE_1);
    ship["to"] = json!(STORE_2);
    let shipped = one.post("/v1/transfers", &[], &ship).await.unwrap();
    expect(&shipped, 201);
    let id = shipped.json["id"].as_str().unwrap().to_string();
    kept_open(&two, STORE_2, &[id.as_str()]).await;

    cluster.coordinator_mut().kill9();
    let path = format!("/v1/transfers?location={STORE_2}&state=in_transit");
    let local = two.get(&path).await.unwrap();
    expect(&local, 200);
    assert_eq!(
        local.json["transfers"][0]["lines"][0]["shipped"], 3,
        "{local}"
    );
    let strong = two
        .get(&format!("{path}&consistency=strong"))
        .await
        .unwrap();
    expect(&strong, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_shipped_received_in_parts_and_closed_conserves_stock() {
    let (mut cluster, one) = cluster_with_store_1(store_1_spec()).await;
    let spec = AgentSpec::new(STORE_2, &[STORE_2, ONLINE]);
    let two = cluster.start_agent_with(spec, Wait::Ready).await;
    let two = two.unwrap().rest();
    create(&one, STORE_1, "a", 10).await;
    create(&one, STORE_1, "b", 5).await;
    create(&two, STORE_2, "b", 2).await;

    // Short of b: nothing leaves store-1.
    let mut short = lines(&[("a", 6), ("b", 6)]);
    short["from"] = json!(STORE_1);
    short["to"] = json!(STORE_2);
    let refused = one.post("/v1/transfers", &[], &short).await.unwrap();
    expect(&refused, 409);
    assert_eq!(refused.json["line"], 1, "{refused}");

    let mut ship = lines(&[("a", 6), ("b", 5)]);
    ship["from"] = json!(STORE_1);
    ship["to"] = json!(STORE_2);
    let key = [("Idempotency-Key", "truck-7")];
    let shipped = one.post("/v1/transfers", &key, &ship).await.unwrap();
    expect(&shipped, 201);
    assert_eq!(shipped.json["state"], "in_transit");
    assert_eq!(progress(&shipped.json), [(6, 0, 0), (5, 0, 0)]);
    let id = shipped.json["id"].as_str().unwrap().to_string();
    let again = one.post("/v1/transfers", &key, &ship).await.unwrap();
    assert_eq!(again.json["id"].as_str(), Some(id.as_str()), "{again}");
    let a1 = one.get(&item_path(STORE_1, "a")).await.unwrap();
    assert_eq!(a1.json["quantity"], 4, "{a1}");
    assert_eq!(open_at(&two, STORE_2).await, [id.as_str()]);
    assert_eq!(open_at(&one, STORE_1).await, [id.as_str()]);
    // store-2's replica learns of it at its next sync; store-1's at once.
    kept_open(&two, STORE_2, &[id.as_str()]).await;
    kept_open(&one, STORE_1, &[id.as_str()]).await;

    let path = format!("/v1/transfers/{id}");
    let receive = format!("{path}/receive");
    // store-1 may not receive into store-2.
    expect(
        &one.post(&receive, &[], &lines(&[("a", 1)])).await.unwrap(),
        403,
    );
    let first = two.post(&receive, &[], &lines(&[("a", 4), ("b", 5)])).await;
    let first = first.unwrap();
    expect(&first, 200);
    assert_eq!(progress(&first.json), [(6, 4, 0), (5, 5, 0)]);
    // The receipt created a at store-2 with the source's name.
    let a2 = two.get(&item_path(STORE_2, "a")).await.unwrap();
    assert_eq!(
        (a2.json["quantity"].as_u64(), a2.json["name"].as_str()),
        (Some(4), Some("Item a"))
    );
    let over = two.post(&receive, &[], &lines(&[("a", 3)])).await.unwrap();
    expect(&over, 409);
    assert_eq!(over.json["type"], "urn:shelfsync:problem:over_receipt");

    let closed = one.post(&format!("{path}/close"), &[], &json!({})).await;
    let closed = closed.unwrap();
    expect(&closed, 200);
    assert_eq!(closed.json["state"], "closed");
    assert_eq!(progress(&closed.json), [(6, 4, 2), (5, 5, 0)]);
    expect(
        &two.post(&receive, &[], &lines(&[("a", 1)])).await.unwrap(),
        410,
    );
    assert!(open_at(&two, STORE_2).await.is_empty());
    kept_open(&two, STORE_2, &[]).await;
    let read = two.get(&path).await.unwrap();
    assert_eq!(read.json["state"], "closed");

    // Conservation, from the change log: at every change, per sku, the
    // quantities at both ends plus what the log says is in transit equal
    // what was created; at the end, what is in transit is what was lost.
    let admin = cluster.connect("admin").await.unwrap();
    let mut log = BTreeMap::new();
    for (location, sku) in [
        (STORE_1, "a"),
        (STORE_1, "b"),
        (STORE_2, "a"),
        (STORE_2, "b"),
    ] {
        let request = Request::History(HistoryRequest {
            key: ItemKey::new(location, sku).unwrap(),
            limit: 1000,
        });
        let Response::History(reply) = admin.call(&request).await.unwrap() else {
            panic!("no history of {location}/{sku}");
        };
        for change in reply.changes {
            log.insert(change.seq, change);
        }
    }
    admin.close().await;
    let mut stock: BTreeMap<ItemKey, u64> = BTreeMap::new();
    let (mut created, mut in_transit) = (BTreeMap::new(), BTreeMap::<String, u64>::new());
    for change in log.values() {
        let sku = change.key.sku.clone();
        let after = change.state.item().map_or(0, |i| i.quantity);
        match &change.op {
            Op::Create { quantity, .. } => *created.entry(sku.clone()).or_insert(0) += quantity,
            Op::TransferShip { amount, .. } => {
                *in_transit.entry(sku.clone()).or_default() += amount
            }
            Op::TransferReceive { amount, .. } => {
                let moving = in_transit.entry(sku.clone()).or_default();
                *moving = moving
                    .checked_sub(*amount)
                    .expect("received more than shipped");
            }
            other => panic!("unexpected op in this test's log: {other:?}"),
        }
        stock.insert(change.key.clone(), after);
        let on_hand: u64 = stock
            .iter()
            .filter(|(k, _)| k.sku == sku)
            .map(|(_, q)| q)
            .sum();
        let moving = in_transit.get(&sku).copied().unwrap_or(0);
        assert_eq!(
            on_hand + moving,
            created[&sku],
            "{sku} not conserved at seq {}",
            change.seq
        );
    }
    assert_eq!(
        in_transit["a"], 2,
        "the lost units are what stayed in transit"
    );
    assert_eq!(in_transit["b"], 0);
}
