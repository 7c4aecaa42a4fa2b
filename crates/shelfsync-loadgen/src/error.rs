//! Why the load generator could not do what it was asked.
//!
//! One enum for the library. What a request to the coordinator answers
//! (accepted, rejected, failed in transport) is not an error here: it is
//! counted in the measurement. These are the failures that stop a run:
//! bad flags, missing certificates, a coordinator that cannot be reached at
//! all (nor Redis, for `shelfsync-loadgen redis`), files that cannot be
//! written.

use std::path::PathBuf;

use shelfsync_proto::ProtoError;
use shelfsync_proto::certs::CertError;
use shelfsync_proto::tls::TlsError;

/// A failure that ends a `setup` or `run`.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A flag value breaks its rule.
    #[error("{0}")]
    Usage(String),
    /// Fewer store certificates than connections asked for.
    #[error(
        "{needed} connections need the certificates of stores load-1 .. load-{needed} in {}, \
         but it has {found}; run `shelfsync-loadgen setup --dir DIR --stores {needed}` \
         (and restart the coordinator with the coordinator.toml it writes)",
        .dir.display()
    )]
    MissingCerts {
        /// The certificate directory.
        dir: PathBuf,
        /// Store certificates needed: the largest connection count.
        needed: usize,
        /// Store certificates found (`load-1` upwards, without a gap).
        found: usize,
    },
    /// A store's TLS files could not be loaded.
    #[error("cannot load the certificate of store {store}")]
    Tls {
        /// The store id.
        store: String,
        /// What is wrong with the files.
        #[source]
        source: Box<TlsError>,
    },
    /// The address of the coordinator (or of Redis) did not resolve.
    #[error("cannot resolve {what} address {addr:?}: {detail}")]
    Resolve {
        /// Whose address: "coordinator", "Redis".
        what: &'static str,
        /// The address as given.
        addr: String,
        /// Why.
        detail: String,
    },
    /// A client UDP socket could not be opened.
    #[error("cannot open a UDP socket for the connections")]
    Socket(#[source] std::io::Error),
    /// A connection (handshake and hello) as one of the stores failed.
    #[error("cannot connect to the coordinator at {addr} as store {store}")]
    Connect {
        /// The store id.
        store: String,
        /// The coordinator's address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: Box<ProtoError>,
    },
    /// The coordinator does not let a store write the benchmark location.
    #[error(
        "store {store} may not write location {location} (it may write {writable:?}); \
         use the coordinator.toml written by `shelfsync-loadgen setup` or pass --location"
    )]
    NotWritable {
        /// The store id.
        store: String,
        /// The location of the run.
        location: String,
        /// What the coordinator says the store may write.
        writable: Vec<String>,
    },
    /// Fewer fleet store certificates than `fleet --stores` asked for.
    #[error(
        "{needed} fleet stores need the certificates of stores fleet-1 .. fleet-{needed} in {}, \
         but it has {found}; run `shelfsync-loadgen setup --dir DIR --stores 1 --fleet {needed}` \
         (and restart the coordinator with the coordinator.toml it writes)",
        .dir.display()
    )]
    MissingFleetCerts {
        /// The certificate directory.
        dir: PathBuf,
        /// Fleet certificates needed.
        needed: usize,
        /// Fleet certificates found (`fleet-1` upwards, without a gap).
        found: usize,
    },
    /// The coordinator does not let a fleet store read its location.
    #[error(
        "store {store} may not read location {location} (it may read {readable:?}); \
         pass the --fleet-locations-prefix given to `shelfsync-loadgen setup` as --locations-prefix"
    )]
    NotReadable {
        /// The store id.
        store: String,
        /// The location it was to sync.
        location: String,
        /// What the coordinator says the store may read.
        readable: Vec<String>,
    },
    /// A fleet store could not find its starting cursor (its snapshot).
    #[error("store {store} could not bootstrap location {location}: {detail}")]
    FleetBootstrap {
        /// The store id.
        store: String,
        /// Its location.
        location: String,
        /// Why.
        detail: String,
    },
    /// A connection closed before a measurement that needs it.
    #[error(
        "the connection of store {store} was closed (see the errors of the last \
         measurement); stopping the sweep"
    )]
    Closed {
        /// The store whose connection closed.
        store: String,
    },
    /// Creating the keys before the measurement failed.
    #[error("preload failed at key {sku}: {detail}")]
    Preload {
        /// The key being created.
        sku: String,
        /// Why.
        detail: String,
    },
    /// Redis could not be reached, or refused a step before the measurement
    /// (loading the script, the preload). Failures of single writes during
    /// the measurement are counted, not returned.
    #[error("cannot {action} Redis at {addr}: {detail}")]
    Redis {
        /// What was being done: "connect to", "load the write script into".
        action: &'static str,
        /// The server's address.
        addr: std::net::SocketAddr,
        /// The client's error. (A string: the client's error repeats its
        /// I/O cause in its message, so as a source it would print twice.)
        detail: String,
    },
    /// Certificates could not be created.
    #[error("cannot create certificates")]
    Certs(#[source] Box<CertError>),
    /// A file could not be read or written.
    #[error("cannot {action} {}", .path.display())]
    Io {
        /// What was being done: "write", "read", "create directory".
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A results CSV could not be read or written.
    #[error("cannot use CSV file {}: {detail}", .path.display())]
    Csv {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The chart could not be drawn.
    #[error("cannot draw chart {}: {detail}", .path.display())]
    Chart {
        /// The PNG file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// A worker task failed or the histogram could not be used.
    #[error("internal failure: {0}")]
    Internal(String),
}

impl LoadError {
    /// Whether the error is the caller's to fix by changing flags or files
    /// (exit code 2) rather than a failure while running (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            LoadError::Usage(_)
                | LoadError::MissingCerts { .. }
                | LoadError::NotWritable { .. }
                | LoadError::MissingFleetCerts { .. }
                | LoadError::NotReadable { .. }
        )
    }
}
