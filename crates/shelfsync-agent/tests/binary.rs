//! The `shelfsync-agent` binary's start-up errors: a config that cannot be
//! used stops the agent at once with exit code 2 and a message naming the
//! file and the problem, before anything listens or opens the replica.
//!
//! Beside them: the failpoints of a build with the `failpoints` feature
//! (the fault suite's), and their HTTP routes, which no other build has;
//! and the problem documents of requests the REST API refuses before it
//! asks the coordinator.
//!
//! (These tests also make `cargo test --workspace` build the agent binary,
//! which the end-to-end tests in `tests/` and `shelfctl demo` run.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Command, Output};

fn agent(config: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_shelfsync-agent"))
        .arg("--config")
        .arg(config)
        .env_remove("SHELFSYNC_CONFIG")
        .output()
        .unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

const VALID: &str = r#"
store_id = "store-1"
coordinator = "127.0.0.1:7400"
data_dir = "DATA_DIR"
http_listen = "127.0.0.1:0"
sync_interval = "5s"
locations = ["store-1"]
[tls]
ca_cert = "ca.pem"
cert = "store-1.pem"
key = "store-1.key"
"#;

#[test]
fn a_missing_config_file_exits_2_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nowhere.toml");
    let out = agent(&path);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&path.display().to_string()),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_unknown_key_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let data = dir.path().join("data");
    let valid = VALID.replace("DATA_DIR", &data.display().to_string());
    std::fs::write(&path, format!("sync_intervall = \"5s\"\n{valid}")).unwrap();
    let out = agent(&path);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("sync_intervall"), "{}", stderr(&out));
    assert!(
        !data.exists(),
        "the replica was opened for a config that is refused"
    );
}

/// One HTTP exchange: the status and the body.
async fn http(addr: std::net::SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let reply = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (reply.status().as_u16(), reply.text().await.unwrap())
}

/// An agent running in this process with its data in `dir` and no
/// coordinator to reach (it serves its replica regardless). Sending on the
/// returned channel stops it; the handle then yields how `run` ended.
async fn start_agent(
    dir: &Path,
) -> (
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let certs = dir.join("certs");
    shelfsync_proto::certs::init(&certs, &["store-1".into()], &[], false).unwrap();
    let path = dir.join("agent.toml");
    let config = VALID
        .replace("DATA_DIR", &dir.join("data").display().to_string())
        // Nothing listens there.
        .replace("127.0.0.1:7400", "127.0.0.1:9")
        .replace("\"ca.pem", &format!("\"{}/ca.pem", certs.display()))
        .replace("\"store-1.", &format!("\"{}/store-1.", certs.display()));
    std::fs::write(&path, config).unwrap();
    let agent = shelfsync_agent::Agent::bind(shelfsync_agent::Config::load(&path).unwrap())
        .await
        .unwrap();
    let addr = agent.http_addr;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(agent.run(async move {
        let _ = stopped.await;
    }));
    (addr, stop, run)
}

/// Requests refused before any coordinator is asked get a problem document
/// (SPEC §3) also where axum's extractors and router decide. Found beside
/// the schemathesis run (scripts/schemathesis.sh): a path segment that is
/// not UTF-8 once percent-decoded got a plain-text 400 from
/// `POST /v1/items/{location}/{sku}/{op}`, and a method a route does not
/// serve an empty 405.
#[tokio::test]
async fn refusals_before_the_coordinator_are_problem_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, run) = start_agent(dir.path()).await;
    let amount = r#"{"amount": 1}"#;
    let item = r#"{"name": "x", "quantity": 1}"#;
    let cases = [
        ("POST", "/v1/items/%FF/sku-1/add", amount, 400),
        ("POST", "/v1/items/store-1/sku-1/%C3%28", amount, 400),
        ("GET", "/v1/items/store-1/%FF", "", 400),
        ("PUT", "/v1/items/%FF/sku-1", item, 400),
        ("DELETE", "/v1/locks/store-1/%FF", "", 400),
        ("PATCH", "/v1/items/store-1/sku-1", "", 405),
        ("GET", "/v1/batch", "", 405),
        ("POST", "/v1/sync", "", 405),
        ("GET", "/v1/nothing-here", "", 404),
    ];
    for (method, path, body, status) in cases {
        let reply = reqwest::Client::new()
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                format!("http://{addr}{path}"),
            )
            .body(body)
            .send()
            .await
            .unwrap();
        let case = format!("{method} {path}");
        assert_eq!(reply.status().as_u16(), status, "{case}");
        let header = |name: &str| {
            reply
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        assert_eq!(
            header("content-type").as_deref(),
            Some("application/problem+json"),
            "{case}"
        );
        if status == 405 {
            assert!(header("allow").is_some(), "{case}: no Allow header");
        }
        let problem: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(problem["status"], status, "{case}: {problem}");
        for field in ["type", "title", "detail"] {
            assert!(problem[field].is_string(), "{case}: no {field}: {problem}");
        }
    }
    let _ = stop.send(());
    run.await.unwrap().unwrap();
}

/// The failpoint routes answer in a build with failpoints (the fault
/// suite's) and are not there (404) in any other.
#[tokio::test]
async fn the_failpoint_routes_exist_only_in_a_build_with_failpoints() {
    #[cfg(feature = "failpoints")]
    let _scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let (addr, stop, run) = start_agent(dir.path()).await;

    let (list, body) = http(addr, "GET", "/debug/failpoints", "").await;
    let (set, _) = http(addr, "PUT", "/debug/failpoints/agent-replica-write", "off").await;
    let (bad, problem) = http(
        addr,
        "PUT",
        "/debug/failpoints/agent-replica-write",
        "nope(",
    )
    .await;
    if cfg!(feature = "failpoints") {
        assert_eq!((list, set, bad), (200, 200, 400), "{body} {problem}");
        assert!(problem.contains("bad_request"), "{problem}");
        let (_, body) = http(addr, "GET", "/debug/failpoints", "").await;
        assert!(body.contains(r#""agent-replica-write":"off""#), "{body}");
    } else {
        assert_eq!((list, set, bad), (404, 404, 404), "{body}");
    }
    let _ = stop.send(());
    run.await.unwrap().unwrap();
}

/// The agent's failpoints (a build with the `failpoints` feature).
/// Failpoints are global to the process: each test that sets one holds a
/// [`fail::FailScenario`], which serializes them and clears every
/// failpoint when it ends.
#[cfg(feature = "failpoints")]
mod failpoints {
    use super::*;
    use shelfsync_agent::failpoints as points;
    use shelfsync_agent::replica::{Replica, ReplicaError};
    use shelfsync_core::{Item, ItemKey};

    fn item(sku: &str, version: u64) -> Item {
        Item {
            location: "store-1".into(),
            sku: sku.into(),
            name: "n".into(),
            quantity: 1,
            reserved: 0,
            version,
            ..Default::default()
        }
    }

    #[test]
    fn a_replica_write_that_fails_changes_nothing() {
        let _scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let replica = Replica::open(dir.path()).unwrap();
        let key = ItemKey::new("store-1", "a").unwrap();
        let page = |replica: &Replica| {
            replica.begin_bootstrap(1)?;
            replica.apply_snapshot_page(vec![item("a", 1)], None, 1)
        };
        fail::cfg(points::REPLICA_WRITE, "return").unwrap();
        let err = page(&replica).unwrap_err();
        assert!(matches!(err, ReplicaError::Storage(_)), "{err}");
        assert_eq!(replica.get(&key).unwrap(), None);
        assert_eq!(replica.meta(), Default::default());
        fail::cfg(points::REPLICA_WRITE, "off").unwrap();
        page(&replica).unwrap();
        assert_eq!(replica.get(&key).unwrap(), Some(item("a", 1)));
    }

    /// A page of changes kept in memory is not written; the page whose
    /// flush fails is not applied, and the next page writes them all.
    #[test]
    fn a_flush_that_fails_changes_nothing() {
        use shelfsync_agent::replica::Flush;
        use shelfsync_core::{KeyState, Op};
        use shelfsync_proto::Change;
        let _scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let flush = Flush {
            after: std::time::Duration::from_secs(3600),
            keys: 2,
        };
        let replica = Replica::open_with(dir.path(), flush).unwrap();
        let change = |seq: u64, sku: &str| Change {
            seq,
            key: ItemKey::new("store-1", sku).unwrap(),
            state: KeyState::Live(item(sku, 1)),
            op: Op::Add { amount: 1 },
            store: "store-1".into(),
            idempotency_key: format!("k{seq}"),
            at_ms: 0,
            commit_end: seq,
        };
        fail::cfg(points::REPLICA_WRITE, "return").unwrap();
        replica.apply_changes(&[change(1, "a")], 1, None).unwrap();
        let err = replica.apply_changes(&[change(2, "b")], 2, None);
        assert!(matches!(err, Err(ReplicaError::Storage(_))), "{err:?}");
        let b = ItemKey::new("store-1", "b").unwrap();
        assert_eq!(replica.get(&b).unwrap(), None);
        assert_eq!(replica.meta().cursor, Some(1));
        fail::cfg(points::REPLICA_WRITE, "off").unwrap();
        replica.apply_changes(&[change(2, "b")], 2, None).unwrap();
        assert_eq!(replica.items().unwrap(), [item("a", 1), item("b", 1)]);
        assert_eq!(replica.meta().cursor, Some(2));
    }

    #[test]
    fn a_failpoints_variable_that_does_not_parse_stops_the_agent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        let data = dir.path().join("data");
        std::fs::write(
            &path,
            VALID.replace("DATA_DIR", &data.display().to_string()),
        )
        .unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_shelfsync-agent"))
            .arg("--config")
            .arg(&path)
            .env_remove("SHELFSYNC_CONFIG")
            .env("FAILPOINTS", "agent-replica-write")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("FAILPOINTS entry \"agent-replica-write\""),
            "{}",
            stderr(&out)
        );
    }
}
