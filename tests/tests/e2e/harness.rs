//! The harness itself: failed starts explain themselves, a port lost to
//! another socket is retried on fresh ones (and agents follow a coordinator
//! that moved), and dropping a cluster leaves no process behind.

use std::net::UdpSocket;
use std::time::Duration;

use shelfsync_tests::{Certs, Cluster, CoordinatorProcess, CoordinatorSpec, StoreSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_reports_the_log_tail() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::generate(&dir.path().join("certs"), &["store-1"]).unwrap();
    // `admin` is reserved, so the coordinator refuses this registry and exits.
    let spec = CoordinatorSpec::new(vec![StoreSpec::new("admin")]);
    let err = CoordinatorProcess::start(&dir.path().join("coordinator"), &certs, spec)
        .await
        .unwrap_err();
    let message = format!("{err:#}");
    assert!(message.contains("exited"), "{message}");
    assert!(message.contains("`admin` is reserved"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_moves_to_fresh_ports_when_its_port_was_taken() {
    let mut cluster = Cluster::start(vec![StoreSpec::new("store-1")])
        .await
        .unwrap();
    let old = cluster.coordinator().quic_addr();
    cluster.coordinator_mut().kill9();
    let _squatter = UdpSocket::bind(old).unwrap();

    cluster.coordinator_mut().restart().await.unwrap();
    assert_ne!(cluster.coordinator().quic_addr(), old);
    let client = cluster.connect("store-1").await.unwrap();
    assert_eq!(client.hello().identity, "store-1");
    assert!(
        cluster
            .coordinator()
            .log()
            .contains("Address already in use"),
        "the first restart attempt did not lose its port?"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_follow_a_coordinator_that_moved() {
    let mut cluster = Cluster::start(vec![StoreSpec::new("store-1")])
        .await
        .unwrap();
    cluster
        .start_agent("store-1", &["store-1"], Duration::from_millis(300))
        .await
        .unwrap();
    let old = cluster.coordinator().quic_addr();
    cluster.coordinator_mut().kill9();
    let _squatter = UdpSocket::bind(old).unwrap();

    assert!(
        cluster.restart_coordinator().await.unwrap(),
        "it did not move"
    );
    let new = cluster.coordinator().quic_addr();
    assert_ne!(new, old);
    let agent = cluster.agent("store-1");
    assert_eq!(agent.coordinator(), new);
    let config = std::fs::read_to_string(agent.config_path()).unwrap();
    assert!(
        config.contains(&format!("coordinator = \"{new}\"")),
        "{config}"
    );
    // The restarted agent reaches the coordinator at its new address.
    let reply = agent
        .rest()
        .put(
            "/v1/items/store-1/moved",
            &[],
            &serde_json::json!({"name": "Moved", "quantity": 1}),
        )
        .await
        .unwrap();
    assert_eq!(reply.status, 201, "{reply}");
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_cluster_kills_its_processes() {
    let mut cluster = Cluster::start(vec![StoreSpec::new("store-1")])
        .await
        .unwrap();
    let agent = cluster
        .start_agent("store-1", &["store-1"], Duration::from_millis(300))
        .await
        .unwrap()
        .pid()
        .unwrap();
    let pid = cluster.coordinator().pid().unwrap();
    let dir = cluster.dir().to_path_buf();
    for pid in [pid, agent] {
        assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    drop(cluster);
    // Killed and reaped in Drop: the pids are gone, not zombies.
    for pid in [pid, agent] {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    }
    assert!(!dir.exists(), "the temp dir was not removed");
}
