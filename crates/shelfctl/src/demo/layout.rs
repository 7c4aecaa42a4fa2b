//! Where the demo keeps its files, and the files it writes before it starts
//! anything: certificates and the three kinds of config.
//!
//! Everything lives under one directory (`--dir`, default `./demo`):
//! ```text
//! certs/                    CA, coordinator, store-1..store-N and admin certificates
//! coordinator.toml          the coordinator's config (store registry included)
//! agent-store-K.toml        one agent config per store
//! shelfctl.toml             for `shelfctl --config DIR/shelfctl.toml status`
//! logs/                     coordinator.log, store-K.log (stdout and stderr, appended)
//! data/                     coordinator/, store-K/ (sled)
//! demo.pid                  the processes of the running demo
//! ```
//! Certificates and data survive a run, so a second run reuses them; the
//! configs are rewritten on every run with fresh ports. Every path inside a
//! config is absolute, so the configs work from any directory.
//!
//! Ports come from the OS: bind `127.0.0.1:0`, read the port, release it.
//! Another socket may take the port before the child binds it; the launcher
//! notices ("address in use" in the child's log) and tries fresh ports.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use shelfsync_proto::TlsFiles;
use shelfsync_proto::certs;

/// The shared pool every store reads and writes besides its own location.
pub const ONLINE: &str = "online";
/// The sync interval of every demo store (agent config and registry alike).
pub const SYNC_INTERVAL: Duration = Duration::from_secs(2);
/// Name of the coordinator's log and data directory.
pub const COORDINATOR: &str = "coordinator";
/// Identity of the admin certificate shelfctl uses.
const ADMIN: &str = "admin";

/// The demo directory and the paths inside it.
#[derive(Debug, Clone)]
pub struct Layout {
    dir: PathBuf,
}

impl Layout {
    /// Creates `dir` with its `logs/` and `data/` (when missing) and returns
    /// the layout with `dir` made absolute.
    pub fn create(dir: &Path) -> anyhow::Result<Self> {
        for sub in ["logs", "data"] {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
        }
        let dir = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve {}", dir.display()))?;
        Ok(Layout { dir })
    }

    /// The demo directory, absolute.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The certificate directory.
    pub fn certs(&self) -> PathBuf {
        self.dir.join("certs")
    }

    /// The coordinator's config file.
    pub fn coordinator_config(&self) -> PathBuf {
        self.dir.join("coordinator.toml")
    }

    /// The config file of the agent of `store`.
    pub fn agent_config(&self, store: &str) -> PathBuf {
        self.dir.join(format!("agent-{store}.toml"))
    }

    /// shelfctl's config file (admin certificate).
    pub fn shelfctl_config(&self) -> PathBuf {
        self.dir.join("shelfctl.toml")
    }

    /// The log file of `name` (`coordinator` or a store id).
    pub fn log(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// The data directory of `name` (`coordinator` or a store id).
    pub fn data(&self, name: &str) -> PathBuf {
        self.dir.join("data").join(name)
    }

    /// The pid file of the running demo.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("demo.pid")
    }

    /// The CA and the certificate of `identity` (`coordinator`, `admin` or a store id).
    pub fn tls(&self, identity: &str) -> TlsFiles {
        let certs = self.certs();
        TlsFiles {
            ca_cert: certs.join("ca.pem"),
            cert: certs.join(format!("{identity}.pem")),
            key: certs.join(format!("{identity}.key")),
        }
    }
}

/// The store ids of a demo with `count` stores: `store-1` .. `store-<count>`.
pub fn store_ids(count: u32) -> Vec<String> {
    (1..=count).map(|k| format!("store-{k}")).collect()
}

/// The locations a store writes and reads: its own and [`ONLINE`].
pub fn store_locations(store: &str) -> Vec<String> {
    vec![store.to_string(), ONLINE.to_string()]
}

/// What [`ensure_certs`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertsDone {
    /// A new CA and every certificate were written.
    Created,
    /// Everything was there already.
    Reused,
    /// The CA was there; these stores got new certificates.
    Issued(Vec<String>),
}

/// Makes sure `certs/` holds a CA and the coordinator, admin and store
/// certificates, reusing what an earlier run wrote.
///
/// With a complete CA (`ca`, `coordinator`, `admin`) only missing store
/// certificates are issued; otherwise everything is created anew (the old
/// files could not be trusted to belong together).
pub fn ensure_certs(layout: &Layout, stores: &[String]) -> anyhow::Result<CertsDone> {
    let dir = layout.certs();
    let present = |name: &str| {
        let tls = layout.tls(name);
        tls.cert.is_file() && tls.key.is_file()
    };
    if !(present("ca") && present(COORDINATOR) && present(ADMIN)) {
        certs::init(&dir, stores, &[], true)
            .with_context(|| format!("cannot create certificates in {}", dir.display()))?;
        return Ok(CertsDone::Created);
    }
    let mut issued = Vec::new();
    for store in stores.iter().filter(|s| !present(s)) {
        certs::issue(&dir, store, true)
            .with_context(|| format!("cannot issue a certificate for {store}"))?;
        issued.push(store.clone());
    }
    Ok(if issued.is_empty() {
        CertsDone::Reused
    } else {
        CertsDone::Issued(issued)
    })
}

/// A UDP address on 127.0.0.1 that was free a moment ago (for QUIC).
pub fn free_udp_addr() -> anyhow::Result<SocketAddr> {
    let socket = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a UDP socket")?;
    socket
        .local_addr()
        .context("cannot read a UDP socket's address")
}

/// A TCP address on 127.0.0.1 that was free a moment ago (for HTTP).
pub fn free_tcp_addr() -> anyhow::Result<SocketAddr> {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot bind a TCP listener")?;
    listener
        .local_addr()
        .context("cannot read a TCP listener's address")
}

/// The coordinator's config: QUIC on `quic`, HTTP on `http`, every store of
/// `stores` registered with its own location and [`ONLINE`].
pub fn coordinator_toml(
    layout: &Layout,
    stores: &[String],
    quic: SocketAddr,
    http: SocketAddr,
) -> String {
    let mut out = String::from("# Written by `shelfctl demo` on every run.\n");
    let _ = writeln!(out, "listen = {}", quote(&quic.to_string()));
    let _ = writeln!(out, "http_listen = {}", quote(&http.to_string()));
    let _ = writeln!(out, "data_dir = {}", path(&layout.data(COORDINATOR)));
    tls_table(&mut out, &layout.tls(COORDINATOR));
    for (k, store) in stores.iter().enumerate() {
        let locations = list(&store_locations(store));
        let _ = writeln!(out, "\n[[stores]]");
        let _ = writeln!(out, "id = {}", quote(store));
        let _ = writeln!(out, "name = {}", quote(&format!("Demo store {}", k + 1)));
        let _ = writeln!(out, "sync_interval = {}", duration(SYNC_INTERVAL));
        let _ = writeln!(out, "writable = {locations}");
        let _ = writeln!(out, "readable = {locations}");
    }
    out
}

/// The config of the agent of `store`, serving REST on `http` and syncing
/// from the coordinator at `coordinator`.
pub fn agent_toml(
    layout: &Layout,
    store: &str,
    coordinator: SocketAddr,
    http: SocketAddr,
) -> String {
    let mut out = String::from("# Written by `shelfctl demo` on every run.\n");
    let _ = writeln!(out, "store_id = {}", quote(store));
    let _ = writeln!(out, "coordinator = {}", quote(&coordinator.to_string()));
    let _ = writeln!(out, "server_name = \"localhost\"");
    let _ = writeln!(out, "data_dir = {}", path(&layout.data(store)));
    let _ = writeln!(out, "http_listen = {}", quote(&http.to_string()));
    let _ = writeln!(out, "sync_interval = {}", duration(SYNC_INTERVAL));
    let _ = writeln!(out, "locations = {}", list(&store_locations(store)));
    tls_table(&mut out, &layout.tls(store));
    out
}

/// shelfctl's config for the admin certificate and the coordinator at `coordinator`.
pub fn shelfctl_toml(layout: &Layout, coordinator: SocketAddr) -> String {
    let mut out = String::from("# Written by `shelfctl demo` on every run.\n");
    let _ = writeln!(out, "coordinator = {}", quote(&coordinator.to_string()));
    let _ = writeln!(out, "server_name = \"localhost\"");
    tls_table(&mut out, &layout.tls(ADMIN));
    out
}

/// Writes a config file; the error names it.
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn tls_table(out: &mut String, tls: &TlsFiles) {
    let _ = writeln!(out, "\n[tls]");
    let _ = writeln!(out, "ca_cert = {}", path(&tls.ca_cert));
    let _ = writeln!(out, "cert = {}", path(&tls.cert));
    let _ = writeln!(out, "key = {}", path(&tls.key));
}

/// A TOML basic string (JSON's escaping is a subset of TOML's).
fn quote(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn path(p: &Path) -> String {
    quote(&p.to_string_lossy())
}

fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|s| quote(s)).collect();
    format!("[{}]", quoted.join(", "))
}

fn duration(d: Duration) -> String {
    quote(&format!("{}ms", d.as_millis()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout {
            dir: PathBuf::from("/tmp/demo \"x\""),
        }
    }

    #[test]
    fn the_coordinator_config_parses_and_registers_every_store() {
        let stores = store_ids(3);
        let text = coordinator_toml(
            &layout(),
            &stores,
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        let config: shelfsync_coordinator::Config = toml::from_str(&text).unwrap();
        config.validate().unwrap();
        assert_eq!(config.listen.port(), 1);
        assert_eq!(
            config.data_dir,
            Path::new("/tmp/demo \"x\"/data/coordinator")
        );
        let ids: Vec<&str> = config.stores.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["store-1", "store-2", "store-3"]);
        assert_eq!(config.stores[1].writable, ["store-2", "online"]);
        assert_eq!(config.stores[1].readable, ["store-2", "online"]);
        assert_eq!(config.stores[1].sync_interval, SYNC_INTERVAL);
    }

    #[test]
    fn the_shelfctl_config_parses() {
        let text = shelfctl_toml(&layout(), "127.0.0.1:7".parse().unwrap());
        let config = crate::config::Config::parse(&text).unwrap();
        assert_eq!(config.coordinator, "127.0.0.1:7");
        assert_eq!(
            config.tls.cert,
            Path::new("/tmp/demo \"x\"/certs/admin.pem")
        );
    }

    #[test]
    fn the_agent_config_names_its_store_and_locations() {
        let text = agent_toml(
            &layout(),
            "store-2",
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:3".parse().unwrap(),
        );
        let value: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(value["store_id"].as_str(), Some("store-2"));
        assert_eq!(value["http_listen"].as_str(), Some("127.0.0.1:3"));
        assert_eq!(value["sync_interval"].as_str(), Some("2000ms"));
        assert_eq!(
            value["locations"].as_array().unwrap().len(),
            2,
            "store-2 and online"
        );
        assert_eq!(
            value["tls"]["key"].as_str(),
            Some("/tmp/demo \"x\"/certs/store-2.key")
        );
    }

    #[test]
    fn certificates_are_created_once_and_extended() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout::create(&tmp.path().join("d")).unwrap();
        assert!(layout.dir().is_absolute());
        assert!(layout.dir().join("logs").is_dir());
        assert_eq!(
            ensure_certs(&layout, &store_ids(2)).unwrap(),
            CertsDone::Created
        );
        let ca = std::fs::read(layout.tls("ca").cert).unwrap();
        assert_eq!(
            ensure_certs(&layout, &store_ids(2)).unwrap(),
            CertsDone::Reused
        );
        assert_eq!(
            ensure_certs(&layout, &store_ids(3)).unwrap(),
            CertsDone::Issued(vec!["store-3".into()])
        );
        assert_eq!(std::fs::read(layout.tls("ca").cert).unwrap(), ca);
        std::fs::remove_file(layout.tls(ADMIN).key).unwrap();
        assert_eq!(
            ensure_certs(&layout, &store_ids(1)).unwrap(),
            CertsDone::Created
        );
        assert_ne!(std::fs::read(layout.tls("ca").cert).unwrap(), ca);
    }
}
