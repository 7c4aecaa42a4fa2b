//! The store registry reloads on SIGHUP without a restart: a store added to
//! `[[stores]]` (with a certificate from `shelfctl certs issue`) connects at
//! once, and a removed store's open connection is closed and it is refused
//! from then on.

use std::time::Duration;

use shelfsync_core::ItemKey;
use shelfsync_proto::{ErrorCode, ProtoError, ReadRequest, Request};
use shelfsync_runtime::launcher::Signal;
use shelfsync_tests::poll::{self, Check};
use shelfsync_tests::{Cluster, CoordinatorSpec, StoreSpec};

use super::agent::PATIENCE;

fn store(id: &str) -> StoreSpec {
    StoreSpec::new(id).writable(&[id]).readable(&[id])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_adds_and_removes_stores_without_a_restart() {
    let cluster = Cluster::start(vec![store("store-1"), store("store-2")])
        .await
        .unwrap();
    let leaving = cluster.connect("store-2").await.unwrap();

    // Onboarding: a certificate, the registry entry, a reload.
    cluster.certs().issue("store-3").unwrap();
    let early = cluster.connect("store-3").await;
    assert!(
        matches!(&early, Err(ProtoError::Refused(err)) if err.code == ErrorCode::UnknownPeer),
        "store-3 connected before it was registered"
    );
    let coordinator = cluster.coordinator();
    let spec = CoordinatorSpec::new(vec![store("store-1"), store("store-3")]);
    let toml = spec.to_toml(
        coordinator.quic_addr(),
        coordinator.http_addr(),
        coordinator.data_dir(),
        cluster.certs(),
    );
    std::fs::write(coordinator.config_path(), toml).unwrap();
    let pid_before = coordinator.pid();
    coordinator.signal(Signal::Hup).unwrap();
    let reloaded = coordinator
        .wait_for_log_line(PATIENCE, |line| line.contains("store registry reloaded"))
        .await;
    let reloaded = reloaded.expect("no reload logged");
    assert!(
        reloaded.contains("store-3") && reloaded.contains("store-2"),
        "{reloaded}"
    );
    assert_eq!(cluster.coordinator().pid(), pid_before, "it restarted");

    let joined = cluster.connect("store-3").await.unwrap();
    assert_eq!(joined.hello().writable, ["store-3"]);
    joined.close().await;

    // The removed store's open connection ends; a new one is refused.
    let read = Request::Read(ReadRequest {
        key: ItemKey::new("store-2", "a").unwrap(),
    });
    poll::until(
        "the removed store's connection is closed",
        PATIENCE,
        || async {
            Ok(match leaving.call(&read).await {
                Err(_) => Check::Done(()),
                Ok(answer) => Check::NotYet(format!("{answer:?}")),
            })
        },
    )
    .await
    .unwrap();
    let refused = cluster.connect("store-2").await;
    assert!(
        matches!(&refused, Err(ProtoError::Refused(err)) if err.code == ErrorCode::UnknownPeer),
        "store-2 connected after its removal"
    );

    // A config that does not load leaves the registry as it was.
    std::fs::write(cluster.coordinator().config_path(), "not = [toml").unwrap();
    cluster.coordinator().signal(Signal::Hup).unwrap();
    let kept = cluster
        .coordinator()
        .wait_for_log_line(PATIENCE, |line| {
            line.contains("store registry not reloaded")
        })
        .await;
    assert!(kept.is_some(), "a bad config was not reported");
    let still = tokio::time::timeout(Duration::from_secs(10), cluster.connect("store-3"));
    assert!(
        still.await.unwrap().is_ok(),
        "a bad config dropped the registry"
    );
}
