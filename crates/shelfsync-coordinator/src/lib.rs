//! shelfsync's coordinator: the chain's single authority for every item.
//!
//! Read in this order: [`config`] (what it is told), [`shelfsync_ledger`]
//! (what it keeps), [`shelfsync_sequencer`] (how a group of writes is decided),
//! [`pipeline`] (the thread that decides and commits), [`service`] (what it
//! answers), [`server`] and [`http`] (how it listens), and [`run`], which
//! wires them together.

pub mod config;
pub mod digests;
pub mod failpoints;
pub mod gc;
pub mod http;
pub mod metrics;
pub mod pipeline;
pub mod server;
pub mod service;
pub mod wake;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
pub use config::Config;
use shelfsync_ledger::{Buckets, FjallLedger, Ledger, LedgerError};

use crate::digests::Digests;
use crate::metrics::Metrics;
use crate::pipeline::{BACKGROUND_NICE, Pipeline, set_nice};
use crate::service::Service;

/// The file in `data_dir` that keeps the QUIC stateless-reset key across
/// restarts, so agents learn of a restart at their next packet.
pub const RESET_KEY_FILE: &str = "quic-reset-key";
/// The directory in `data_dir` that holds the ledger.
pub const LEDGER_DIR: &str = "ledger";

/// A coordinator that has bound its sockets and opened its ledger.
pub struct Coordinator {
    /// The QUIC address actually bound (useful with port 0).
    pub quic_addr: SocketAddr,
    /// The HTTP address actually bound.
    pub http_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    http: tokio::net::TcpListener,
    service: Arc<Service>,
    ledger: Arc<dyn Ledger>,
    config: Config,
}

impl Coordinator {
    /// Opens the ledger, starts the pipeline and binds both listeners.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let ledger: Arc<dyn Ledger> = Arc::new(open_ledger(&config)?);
        tracing::info!(data_dir = %config.data_dir.display(), head = ledger.head()?, "ledger opened");
        let metrics = Arc::new(Metrics::new());
        let digests = Arc::new(Digests::load(ledger.as_ref())?);
        let pipeline = Pipeline::start(
            ledger.clone(),
            digests.clone(),
            metrics.clone(),
            config.idempotency_ttl,
        )?;
        let service = Arc::new(Service::new(
            ledger.clone(),
            pipeline,
            metrics,
            digests,
            config.stores.clone(),
        )?);
        let server_config = shelfsync_proto::tls::server_config(&config.tls)?;
        let reset_key_path = config.data_dir.join(RESET_KEY_FILE);
        let reset_key = shelfsync_proto::net::reset_key(&reset_key_path).with_context(|| {
            format!(
                "cannot load the QUIC reset key {}",
                reset_key_path.display()
            )
        })?;
        let endpoint =
            shelfsync_proto::net::server_endpoint(config.listen, server_config, &reset_key)
                .with_context(|| format!("cannot listen on {} (QUIC)", config.listen))?;
        let http = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .with_context(|| format!("cannot listen on {} (HTTP)", config.http_listen))?;
        Ok(Coordinator {
            quic_addr: endpoint.local_addr()?,
            http_addr: http.local_addr()?,
            endpoint,
            http,
            service,
            ledger,
            config,
        })
    }

    /// Serves until `shutdown` resolves. Ends with an error when the
    /// storage fails (a ledger commit fails): see [`pipeline`].
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_handle, stop) = shelfsync_runtime::stop_pair();
        let stopped = || stop.wait();
        tracing::info!(quic = %self.quic_addr, http = %self.http_addr, stores = self.config.stores.len(), "coordinator serving");
        let gc = tokio::spawn(gc::run(
            self.ledger.clone(),
            gc::GcConfig::from(&self.config),
            stopped(),
        ));
        let http = tokio::spawn(http::serve(self.http, self.service.clone(), stopped()));
        let reload = tokio::spawn(reload_on_sighup(
            self.config.source.clone(),
            self.service.clone(),
            stopped(),
        ));
        let quic = tokio::spawn(server::serve(
            self.endpoint,
            self.service.clone(),
            stopped(),
        ));
        // A storage failure ends the run with an error, for the supervisor
        // to restart the process: going on after a failed fdatasync is not
        // safe, and the restart reads what the ledger really holds.
        let failed = tokio::select! {
            () = shutdown => None,
            cause = self.service.pipeline().failed() => Some(cause),
        };
        match &failed {
            None => tracing::info!("shutting down"),
            Some(cause) => tracing::error!("coordinator stopping: storage failed: {cause}"),
        }
        stop_handle.stop();
        let _ = quic.await;
        let _ = http.await;
        let _ = gc.await;
        let _ = reload.await;
        self.service.pipeline().stop().await;
        if let Some(cause) = failed {
            anyhow::bail!("storage failed: {cause}");
        }
        tracing::info!("bye");
        Ok(())
    }
}

/// Opens the ledger in `data_dir` from a thread at [`BACKGROUND_NICE`]: the
/// engine's flush and compaction threads inherit the priority of the thread
/// that opens it, so they give way to the sequencer and the network tasks.
fn open_ledger(config: &Config) -> Result<FjallLedger, LedgerError> {
    let dir = config.data_dir.join(LEDGER_DIR);
    let buckets = Buckets::for_ttl(config.idempotency_ttl);
    let opened = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                set_nice(BACKGROUND_NICE);
                FjallLedger::open(&dir, buckets)
            })
            .join()
    });
    opened.map_err(|_| LedgerError::Storage("the thread opening the ledger panicked".into()))?
}

/// Reloads the store registry from the config file at `source` on every
/// SIGHUP until `stop` resolves: `shelfctl certs issue` for a new store and
/// a reload is the whole onboarding (docs/operations.md). Only `[[stores]]`
/// is taken from the file; a file that does not load leaves the registry
/// as it was.
async fn reload_on_sighup(
    source: Option<std::path::PathBuf>,
    service: Arc<Service>,
    stop: impl Future<Output = ()>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let Some(source) = source else { return };
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(hangups) => hangups,
        Err(err) => {
            tracing::warn!(error = %err, "cannot listen for SIGHUP; the store registry reloads only with a restart");
            return;
        }
    };
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some(()) = hangups.recv() => {}
            () = &mut stop => return,
        }
        match Config::load(&source) {
            Ok(config) => {
                let reloaded = service.reload(config.stores);
                tracing::info!(
                    stores = reloaded.stores,
                    added = ?reloaded.added,
                    removed = ?reloaded.removed,
                    changed = ?reloaded.changed,
                    "store registry reloaded"
                );
            }
            Err(err) => {
                tracing::error!(config = %source.display(), error = %err, "store registry not reloaded; the previous one stays");
            }
        }
    }
}

/// Binds and serves `config` until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    failpoints::setup_from_env().map_err(anyhow::Error::msg)?;
    Coordinator::bind(config).await?.run(shutdown).await
}
