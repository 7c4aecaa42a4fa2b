//! `shelfctl status`, `item get`, `history` and `import` against a real
//! coordinator in this process: exit codes, output, and that a second import
//! writes nothing.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use serde_json::Value;
use shelfsync_core::digest::Digest;
use shelfsync_core::{ItemKey, Op};
use shelfsync_proto::{
    Client, ReadRequest, Request, Response, SnapshotRequest, StoreReport, WriteRequest,
};

use crate::cluster::{Cluster, write_shelfctl_config};
use crate::{shelfctl, text};

/// Lines 2..=51: two bad rows (line 7: an sku with '/', line 23: a negative
/// quantity) and 48 good ones, on `store-1` (even lines) and `online` (odd).
fn catalog() -> String {
    let mut csv = String::from("location,sku,name,quantity\n");
    for line in 2..=51 {
        let location = if line % 2 == 0 { "store-1" } else { "online" };
        let row = match line {
            7 => "store-1,bad/sku,Broken,1".to_string(),
            23 => "online,sku-23,Negative,-4".to_string(),
            _ => format!("{location},sku-{line},Item {line},{}", line * 3),
        };
        csv.push_str(&row);
        csv.push('\n');
    }
    csv
}

fn json(out: &std::process::Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_twice_then_update_read_and_history() {
    let cluster = Cluster::start().await;
    let catalog = cluster.file("catalog.csv", &catalog());

    let first = cluster.shelfctl(&["import", &catalog]).await;
    let (stdout, stderr) = (text(&first.stdout), text(&first.stderr));
    assert_eq!(first.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stdout.contains(
            "rows: 50\ncreated: 48\nupdated: 0\nunchanged: 0\nrejected: 2 (lines 7, 23)\n"
        ),
        "{stdout}"
    );
    assert!(stderr.contains("rejected line 7: invalid sku"), "{stderr}");
    assert!(
        stderr.contains("rejected line 23: invalid quantity: -4 is negative"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 2, "{stderr}");
    assert!(
        !stdout.contains('\x1b'),
        "no progress bar off a terminal: {stdout:?}"
    );
    assert_eq!(cluster.head().await, 48);

    // The same file again: nothing to do, nothing written.
    let second = cluster
        .shelfctl(&["import", &catalog, "--concurrency", "4"])
        .await;
    let stdout = text(&second.stdout);
    assert_eq!(second.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("created: 0\nupdated: 0\nunchanged: 48\nrejected: 2 (lines 7, 23)\n"),
        "{stdout}"
    );
    assert_eq!(cluster.head().await, 48);

    // Updates, and a key named twice, applied in file order.
    let updates = cluster.file(
        "updates.csv",
        "sku,location,quantity,name\n\
         sku-2,store-1,99,\"Item 2, recounted\"\n\
         sku-3,online,9,Item 3\n\
         sku-5,online,0,Item 5\n\
         sku-5,online,0,Item 5 renamed\n",
    );
    let third = cluster.shelfctl(&["import", &updates]).await;
    let stdout = text(&third.stdout);
    assert_eq!(
        third.status.code(),
        Some(0),
        "{stdout}{}",
        text(&third.stderr)
    );
    assert!(
        stdout.contains("rows: 4\ncreated: 0\nupdated: 3\nunchanged: 1\nrejected: 0\n"),
        "{stdout}"
    );
    assert_eq!(cluster.head().await, 51);

    // item get: JSON and table.
    let got = cluster
        .shelfctl(&["item", "get", "store-1", "sku-2", "--json"])
        .await;
    assert_eq!(got.status.code(), Some(0), "{}", text(&got.stderr));
    assert_eq!(
        json(&got),
        serde_json::json!({
            "location": "store-1", "sku": "sku-2", "name": "Item 2, recounted",
            "quantity": 99, "reserved": 0, "held": 0, "allowance": 0, "available": 99,
            "version": 2, "lock": null
        })
    );
    let table = cluster.shelfctl(&["item", "get", "online", "sku-5"]).await;
    assert_eq!(table.status.code(), Some(0));
    assert!(
        text(&table.stdout).contains("Item 5 renamed"),
        "{}",
        text(&table.stdout)
    );

    let missing = cluster.shelfctl(&["item", "get", "store-1", "nope"]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(missing.stdout.is_empty());
    assert_eq!(text(&missing.stderr), "item store-1/nope not found\n");

    // history: newest first.
    let history = cluster
        .shelfctl(&["history", "online", "sku-5", "--json"])
        .await;
    assert_eq!(history.status.code(), Some(0), "{}", text(&history.stderr));
    let changes = json(&history)["changes"].as_array().unwrap().clone();
    let ops: Vec<&str> = changes.iter().map(|c| c["op"].as_str().unwrap()).collect();
    assert_eq!(
        ops,
        [
            r#"set name "Item 5 renamed" qty 0"#,
            r#"set name "Item 5" qty 0"#,
            r#"create "Item 5" qty 15"#
        ]
    );
    let versions: Vec<u64> = changes
        .iter()
        .map(|c| c["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    let seqs: Vec<u64> = changes.iter().map(|c| c["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] > w[1]), "{seqs:?}");
    for change in &changes {
        assert_eq!(change["store"], "admin");
        assert!(
            change["idempotency_key"]
                .as_str()
                .unwrap()
                .starts_with("import:")
        );
        assert!(change["time"].as_str().unwrap().ends_with('Z'));
    }

    let limited = cluster
        .shelfctl(&["history", "online", "sku-5", "--limit", "1"])
        .await;
    let stdout = text(&limited.stdout);
    assert_eq!(limited.status.code(), Some(0));
    assert!(
        stdout.contains(r#"set name "Item 5 renamed" qty 0"#),
        "{stdout}"
    );
    assert!(!stdout.contains("create"), "{stdout}");

    let none = cluster.shelfctl(&["history", "store-1", "nope"]).await;
    assert_eq!(none.status.code(), Some(1));
    assert!(text(&none.stderr).contains("no changes recorded for store-1/nope"));

    cluster.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_creates_again_after_a_delete() {
    let cluster = Cluster::start().await;
    let file = cluster.file(
        "one.csv",
        "location,sku,name,quantity\nstore-1,milk,Milk,10\n",
    );
    let first = cluster.shelfctl(&["import", &file]).await;
    assert!(
        text(&first.stdout).contains("created: 1\n"),
        "{}",
        text(&first.stdout)
    );

    // Someone deletes the item; the identical create of the first import is
    // still in the coordinator's idempotency records.
    let admin = cluster.client("admin").await;
    let key = ItemKey::new("store-1", "milk").unwrap();
    let deleted = admin
        .request(&Request::Write(WriteRequest {
            idempotency_key: "test-delete".into(),
            key: key.clone(),
            op: Op::Delete,
            expected_version: Some(1),
            lock_token: None,
        }))
        .await
        .unwrap();
    assert!(matches!(deleted, Response::Write(_)), "{deleted:?}");

    let second = cluster.shelfctl(&["import", &file]).await;
    let stdout = text(&second.stdout);
    assert_eq!(
        second.status.code(),
        Some(0),
        "{stdout}{}",
        text(&second.stderr)
    );
    assert!(stdout.contains("created: 1\n"), "{stdout}");
    let read = admin
        .request(&Request::Read(ReadRequest { key }))
        .await
        .unwrap();
    let Response::Read(read) = read else {
        panic!("{read:?}")
    };
    assert_eq!((read.item.quantity, read.item.version), (10, 3));

    let history = cluster
        .shelfctl(&["history", "store-1", "milk", "--json"])
        .await;
    let changes = json(&history)["changes"].as_array().unwrap().clone();
    let ops: Vec<&str> = changes
        .iter()
        .map(|c| c["op_kind"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["create", "delete", "create"]);
    assert_ne!(changes[0]["idempotency_key"], changes[2]["idempotency_key"]);

    let third = cluster.shelfctl(&["import", &file]).await;
    assert!(text(&third.stdout).contains("unchanged: 1\n"));
    admin.close().await;
    cluster.stop().await;
}

/// Reports for `store` as an agent would: a snapshot of its locations, its
/// digest, at the snapshot's head. The client stays connected.
async fn report_in_sync(cluster: &Cluster, store: &str, locations: &[&str]) -> Client {
    let client = cluster.client(store).await;
    let locations: Vec<String> = locations.iter().map(|l| l.to_string()).collect();
    let snapshot = client
        .request(&Request::Snapshot(SnapshotRequest {
            locations: locations.clone(),
            after: None,
            limit: 1000,
        }))
        .await
        .unwrap();
    let Response::Snapshot(page) = snapshot else {
        panic!("{snapshot:?}")
    };
    assert!(page.next.is_none());
    let mut digest = Digest::default();
    page.items.iter().for_each(|item| digest.add(item));
    let ack = client
        .request(&Request::Report(StoreReport {
            cursor: page.head,
            digest: digest.sum,
            item_count: digest.count,
            pending_forwards: 0,
            last_error: None,
            software_version: "9.9.9-test".into(),
            locations,
        }))
        .await
        .unwrap();
    let Response::ReportAck(ack) = ack else {
        panic!("{ack:?}")
    };
    assert_eq!(ack.digest_ok, Some(true));
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_healthy_and_never_seen_stores() {
    let cluster = Cluster::start().await;
    let file = cluster.file(
        "few.csv",
        "location,sku,name,quantity\nstore-1,a,A,1\nonline,b,B,2\nstore-2,c,C,3\n",
    );
    assert_eq!(
        cluster.shelfctl(&["import", &file]).await.status.code(),
        Some(0)
    );
    let store_1 = report_in_sync(&cluster, "store-1", &["store-1", "online"]).await;

    let out = cluster.shelfctl(&["status", "--json"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let status = json(&out);
    assert_eq!(status["head"], 3);
    assert_eq!(status["healthy"], false);
    let stores = status["stores"].as_array().unwrap();
    assert_eq!(stores.len(), 2);
    assert_eq!(stores[0]["id"], "store-1");
    assert_eq!(stores[0]["health"], "healthy");
    assert_eq!(stores[0]["connected"], true);
    assert_eq!(stores[0]["cursor"], 3);
    assert_eq!(stores[0]["lag"], 0);
    assert_eq!(stores[0]["digest"], "ok");
    assert_eq!(stores[0]["item_count"], 2);
    assert_eq!(stores[0]["software_version"], "9.9.9-test");
    assert_eq!(stores[1]["id"], "store-2");
    assert_eq!(stores[1]["health"], "never_seen");
    assert_eq!(stores[1]["last_sync"], "never");
    assert_eq!(stores[1]["connected"], false);
    assert!(stores[1]["cursor"].is_null());

    let table = cluster.shelfctl(&["status"]).await;
    let stdout = text(&table.stdout);
    assert_eq!(table.status.code(), Some(1));
    assert!(stdout.contains("never seen"), "{stdout}");
    assert!(
        stdout.contains("1 of 2 stores need attention: store-2 (never seen)"),
        "{stdout}"
    );
    assert!(
        !stdout.contains('\x1b'),
        "no colour off a terminal: {stdout:?}"
    );

    // --watch: one JSON line per refresh; Ctrl-C ends it with the last code.
    let config = cluster.config_path();
    let watched = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_shelfctl"))
            .arg("--config")
            .arg(&config)
            .args(["status", "--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let killed = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
        (first, child.wait().unwrap())
    })
    .await
    .unwrap();
    let (first, exit) = watched;
    let refresh: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(refresh["stores"][1]["health"], "never_seen");
    assert_eq!(exit.code(), Some(1));

    // Once store-2 reports too, every store is healthy: exit 0.
    let store_2 = report_in_sync(&cluster, "store-2", &["store-2", "online"]).await;
    let table = cluster.shelfctl(&["status"]).await;
    let stdout = text(&table.stdout);
    assert_eq!(table.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("all 2 stores healthy"), "{stdout}");

    store_1.close().await;
    store_2.close().await;
    cluster.stop().await;
}

#[tokio::test]
async fn usage_config_and_connection_errors_exit_2() {
    let out = shelfctl(&["status"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("`shelfctl status` needs --config FILE"));

    let help = shelfctl(&["--help"]);
    assert_eq!(help.status.code(), Some(0));
    assert!(
        text(&help.stdout).contains("Exit codes:"),
        "{}",
        text(&help.stdout)
    );

    let out = shelfctl(&["--config", "x.toml", "history", "s1", "a", "--limit", "0"]);
    assert_eq!(out.status.code(), Some(2));

    // A UDP port that is bound but never answers: the handshake times out.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    shelfsync_proto::certs::init(&certs, &["store-1".to_string()], &[], false).unwrap();
    let config = dir.path().join("shelfctl.toml");
    let addr = silent.local_addr().unwrap().to_string();
    write_shelfctl_config(&config, &addr, &certs, "300ms");
    let config = config.to_str().unwrap();

    let out = shelfctl(&["--config", config, "status"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.starts_with("error: cannot connect to the coordinator at"),
        "{stderr}"
    );
    assert!(stderr.contains(&addr), "{stderr}");

    let out = shelfctl(&["--config", config, "item", "get", "store 1", "a"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("invalid location"));

    // The header is checked before connecting.
    let bad = dir.path().join("bad.csv");
    std::fs::write(&bad, "location,sku,name\ns1,a,A\n").unwrap();
    let out = shelfctl(&["--config", config, "import", bad.to_str().unwrap()]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("missing: quantity"), "{stderr}");

    let out = shelfctl(&["--config", config, "import", "/nonexistent/catalog.csv"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot open /nonexistent/catalog.csv"));
}

/// `shelfctl lock` takes the lock and prints its token, a second holder is
/// told who has it (exit 1), `item get` shows it, history names the lock
/// events, and `unlock` gives it back (also when it is already gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_item_get_history_and_unlock() {
    let cluster = Cluster::start().await;
    let file = cluster.file(
        "one.csv",
        "location,sku,name,quantity\nstore-1,milk,Milk,10\n",
    );
    assert_eq!(
        cluster.shelfctl(&["import", &file]).await.status.code(),
        Some(0)
    );

    let args = [
        "lock",
        "store-1",
        "milk",
        "--holder",
        "counter-7",
        "--ttl",
        "5m",
        "--json",
    ];
    let taken = cluster.shelfctl(&args).await;
    assert_eq!(taken.status.code(), Some(0), "{}", text(&taken.stderr));
    let granted = json(&taken);
    assert_eq!(granted["holder"], "counter-7");
    let token = granted["token"].as_u64().unwrap();
    assert_eq!(token, 2, "the item's version after the grant");

    let other = ["lock", "store-1", "milk", "--holder", "counter-8"];
    let refused = cluster.shelfctl(&other).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("locked by counter-7"),
        "{}",
        text(&refused.stderr)
    );

    let item = json(
        &cluster
            .shelfctl(&["item", "get", "store-1", "milk", "--json"])
            .await,
    );
    assert_eq!(item["lock"]["holder"], "counter-7");
    assert_eq!(item["lock"]["token"].as_u64(), Some(token));

    let token = token.to_string();
    let unlocked = cluster
        .shelfctl(&["unlock", "store-1", "milk", "--token", &token])
        .await;
    assert_eq!(
        unlocked.status.code(),
        Some(0),
        "{}",
        text(&unlocked.stderr)
    );
    let again = cluster
        .shelfctl(&["unlock", "store-1", "milk", "--token", &token])
        .await;
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
    assert!(
        text(&again.stdout).contains("holds no lock"),
        "{}",
        text(&again.stdout)
    );

    let item = json(
        &cluster
            .shelfctl(&["item", "get", "store-1", "milk", "--json"])
            .await,
    );
    assert!(item["lock"].is_null(), "{item}");
    let history = json(
        &cluster
            .shelfctl(&["history", "store-1", "milk", "--json"])
            .await,
    );
    let ops: Vec<&str> = history["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op_kind"].as_str().unwrap())
        .collect();
    assert_eq!(ops, ["lock_release", "lock_grant", "create"]);
    cluster.stop().await;
}

/// `shelfctl holds` lists the active holds of a location (or one sku), and
/// history names the hold's steps; an ended hold is no longer listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_lists_the_active_holds_and_history_names_their_steps() {
    use shelfsync_core::HoldLine;
    use shelfsync_proto::{HoldAction, HoldRequest};

    let cluster = Cluster::start().await;
    let file = cluster.file(
        "two.csv",
        "location,sku,name,quantity\nstore-1,milk,Milk,10\nstore-1,eggs,Eggs,6\n",
    );
    assert_eq!(
        cluster.shelfctl(&["import", &file]).await.status.code(),
        Some(0)
    );
    let client = cluster.client("store-1").await;
    let hold = |idem: &str, lines: &[(&str, u64)]| HoldRequest {
        idempotency_key: idem.to_string(),
        action: HoldAction::Create {
            owner: format!("cart-{idem}"),
            lines: lines
                .iter()
                .map(|(sku, amount)| HoldLine {
                    key: ItemKey::new("store-1", *sku).unwrap(),
                    amount: *amount,
                })
                .collect(),
            ttl_ms: 600_000,
            lock_token: None,
        },
    };
    let mut ids = Vec::new();
    for (idem, lines) in [
        ("a", &[("milk", 2), ("eggs", 1)][..]),
        ("b", &[("eggs", 3)]),
    ] {
        match client
            .call(&Request::Hold(hold(idem, lines)))
            .await
            .unwrap()
        {
            Response::Hold(ack) => ids.push(ack.hold.id),
            other => panic!("{other:?}"),
        }
    }

    let listed = |args: &'static [&'static str]| {
        let cluster = &cluster;
        async move {
            let out = cluster.shelfctl(args).await;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            let holds = json(&out);
            let ids: Vec<String> = holds
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["id"].as_str().unwrap().to_string())
                .collect();
            ids
        }
    };
    assert_eq!(listed(&["holds", "store-1", "--json"]).await, ids);
    assert_eq!(
        listed(&["holds", "store-1", "milk", "--json"]).await,
        ids[..1]
    );
    assert!(listed(&["holds", "online", "--json"]).await.is_empty());
    let table = cluster.shelfctl(&["holds", "store-1"]).await;
    let table = text(&table.stdout);
    assert!(table.contains("2 active holds"), "{table}");
    assert!(
        table.contains("store-1/milk ×2, store-1/eggs ×1"),
        "{table}"
    );

    let release = HoldRequest {
        idempotency_key: "c".into(),
        action: HoldAction::Release {
            id: ids[0].clone(),
            lock_token: None,
        },
    };
    let released = client.call(&Request::Hold(release)).await.unwrap();
    assert!(matches!(released, Response::Hold(_)), "{released:?}");
    assert_eq!(listed(&["holds", "store-1", "--json"]).await, ids[1..]);

    let history = json(
        &cluster
            .shelfctl(&["history", "store-1", "milk", "--json"])
            .await,
    );
    let ops: Vec<&str> = history["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["op"].as_str().unwrap())
        .collect();
    let hold_ops = [
        format!("hold_release {} 2", ids[0]),
        format!("hold {} 2", ids[0]),
    ];
    assert_eq!(ops[..2], hold_ops, "{history}");
    client.close().await;
    cluster.stop().await;
}

/// `shelfctl transfers` lists transfers by location and state, and
/// `transfer show` shows one (exit 1 for an unknown id); history names the
/// shipment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_and_transfer_show() {
    use shelfsync_core::transfer::TransferAmount;
    use shelfsync_proto::{TransferAction, TransferRequest};

    let cluster = Cluster::start().await;
    let file = cluster.file(
        "one.csv",
        "location,sku,name,quantity\nstore-1,milk,Milk,10\n",
    );
    assert_eq!(
        cluster.shelfctl(&["import", &file]).await.status.code(),
        Some(0)
    );
    let client = cluster.client("store-1").await;
    let ship = TransferRequest {
        idempotency_key: "truck-1".into(),
        action: TransferAction::Create {
            from: "store-1".into(),
            to: "store-2".into(),
            lines: vec![TransferAmount {
                sku: "milk".into(),
                amount: 4,
            }],
            lock_token: None,
        },
    };
    let id = match client.call(&Request::Transfer(ship)).await.unwrap() {
        Response::Transfer(ack) => ack.transfer.id,
        other => panic!("{other:?}"),
    };
    client.close().await;

    let listed = |args: &'static [&'static str]| {
        let cluster = &cluster;
        async move {
            let out = cluster.shelfctl(args).await;
            assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
            json(&out)
        }
    };
    let open = listed(&[
        "transfers",
        "--location",
        "store-2",
        "--state",
        "in_transit",
        "--json",
    ])
    .await;
    assert_eq!(open[0]["id"].as_str(), Some(id.as_str()), "{open}");
    assert_eq!(open[0]["lines"][0]["shipped"], 4);
    let closed = listed(&["transfers", "--state", "closed", "--json"]).await;
    assert_eq!(closed.as_array().map(Vec::len), Some(0), "{closed}");
    let table = cluster.shelfctl(&["transfers"]).await;
    let table = text(&table.stdout);
    assert!(
        table.contains("1 transfer\n") && table.contains("milk 4/0/0"),
        "{table}"
    );

    let shown = cluster.shelfctl(&["transfer", "show", &id, "--json"]).await;
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown.stderr));
    assert_eq!(json(&shown)["state"], "in_transit");
    let missing = cluster.shelfctl(&["transfer", "show", "t999999"]).await;
    assert_eq!(missing.status.code(), Some(1));
    let bad = cluster.shelfctl(&["transfers", "--state", "lost"]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad.stderr));

    let history = json(
        &cluster
            .shelfctl(&["history", "store-1", "milk", "--json"])
            .await,
    );
    assert_eq!(history["changes"][0]["op"], format!("transfer_ship {id} 4"));
    cluster.stop().await;
}
