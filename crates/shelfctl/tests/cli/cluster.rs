//! A coordinator in this process, bound to `127.0.0.1:0`, with generated
//! certificates, two registered stores (`store-1`, `store-2`) and a shelfctl
//! config for the admin certificate.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use shelfsync_coordinator::{Config, Coordinator};
use shelfsync_proto::{Client, TlsFiles};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running coordinator and what it takes to talk to it.
pub struct Cluster {
    /// Temp dir with `certs/`, `data/`, `shelfctl.toml` and test files.
    pub dir: tempfile::TempDir,
    /// The coordinator's QUIC address.
    pub quic_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Cluster {
    /// Generates certificates, binds a coordinator and serves it in a task.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs = dir.path().join("certs");
        let stores = ["store-1".to_string(), "store-2".to_string()];
        shelfsync_proto::certs::init(&certs, &stores, &[], false).unwrap();
        // A long sync interval: no store turns stale while a slow CI runs the test.
        let config = format!(
            r#"
            listen = "127.0.0.1:0"
            http_listen = "127.0.0.1:0"
            data_dir = '{data}'
            [tls]
            ca_cert = '{certs}/ca.pem'
            cert = '{certs}/coordinator.pem'
            key = '{certs}/coordinator.key'
            [[stores]]
            id = "store-1"
            name = "Store 1"
            sync_interval = "1h"
            writable = ["store-1", "online"]
            readable = ["store-1", "online"]
            [[stores]]
            id = "store-2"
            name = "Store 2"
            sync_interval = "1h"
            writable = ["store-2"]
            readable = ["store-2", "online"]
            "#,
            data = dir.path().join("data").display(),
            certs = certs.display(),
        );
        let config: Config = toml::from_str(&config).unwrap();
        config.validate().unwrap();
        let coordinator = Coordinator::bind(config).await.unwrap();
        let quic_addr = coordinator.quic_addr;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(coordinator.run(async move {
            let _ = stopped.await;
        }));
        let cluster = Cluster {
            dir,
            quic_addr,
            stop,
            task,
        };
        write_shelfctl_config(
            &cluster.config_path(),
            &quic_addr.to_string(),
            &certs,
            "10s",
        );
        cluster
    }

    /// The shelfctl config with the admin certificate.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("shelfctl.toml")
    }

    /// The certificate files of `identity` (`admin`, `store-1`, ...).
    pub fn tls(&self, identity: &str) -> TlsFiles {
        let certs = self.dir.path().join("certs");
        TlsFiles {
            ca_cert: certs.join("ca.pem"),
            cert: certs.join(format!("{identity}.pem")),
            key: certs.join(format!("{identity}.key")),
        }
    }

    /// A protocol client with the certificate of `identity`.
    pub async fn client(&self, identity: &str) -> Client {
        let config = shelfsync_proto::tls::client_config(&self.tls(identity)).unwrap();
        Client::connect(self.quic_addr, "localhost", config, Duration::from_secs(10))
            .await
            .unwrap()
    }

    /// Writes `contents` to a file in the temp dir and returns its path.
    pub fn file(&self, name: &str, contents: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path.to_str().unwrap().to_string()
    }

    /// Runs `shelfctl --config <admin config> args...` off the runtime's threads.
    pub async fn shelfctl(&self, args: &[&str]) -> Output {
        let config = self.config_path();
        let mut all = vec!["--config".to_string(), config.to_str().unwrap().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            crate::shelfctl(&args)
        })
        .await
        .unwrap()
    }

    /// The coordinator's head, read with `shelfctl status --json`.
    pub async fn head(&self) -> u64 {
        let out = self.shelfctl(&["status", "--json"]).await;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", crate::text(&out.stderr)));
        json["head"].as_u64().unwrap()
    }

    /// Stops the coordinator and waits for it to flush.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// Writes a shelfctl config for the admin certificate in `certs`.
pub fn write_shelfctl_config(path: &Path, coordinator: &str, certs: &Path, timeout: &str) {
    let text = format!(
        "coordinator = \"{coordinator}\"\nserver_name = \"localhost\"\ntimeout = \"{timeout}\"\n\
         [tls]\nca_cert = '{certs}/ca.pem'\ncert = '{certs}/admin.pem'\nkey = '{certs}/admin.key'\n",
        certs = certs.display()
    );
    std::fs::write(path, text).unwrap();
}
