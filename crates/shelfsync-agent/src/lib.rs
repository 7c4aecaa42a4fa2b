//! shelfsync's store agent: a local replica of the store's locations, kept
//! in sync with the coordinator, serving reads locally and forwarding writes.
//!
//! Read in this order: [`config`], [`replica`] (what it keeps), [`link`] (its
//! one coordinator connection), [`sync`] (how the replica follows the change
//! log), [`forward`] (how writes reach the coordinator), [`rest`] (the API),
//! and [`Agent`], which wires them together.

pub mod config;
pub mod failpoints;
pub mod forward;
pub mod link;
pub mod metrics;
pub mod overlay;
pub mod replica;
pub mod rest;
pub mod sync;
pub mod transfers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::Config;

use crate::forward::Forwarder;
use crate::link::Link;
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::rest::AppState;
use crate::sync::Syncer;

/// The least time one sync call (a page of changes or of a snapshot, a
/// report) may take, connect included, before the sync gives it up and
/// tries again; the forward timeout when that is longer. A page is a few
/// hundred KiB at most, which a slow link needs seconds for; a restarted
/// coordinator ends a call on a dead connection at once (a stateless
/// reset), and a handshake is bounded on its own ([`link::Link::client`]).
const MIN_SYNC_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How often idle rate-limiter entries are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// An agent with its replica open and its HTTP listener bound.
pub struct Agent {
    /// The REST address actually bound (useful with port 0).
    pub http_addr: SocketAddr,
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    router: axum::Router,
    /// Whether to hold the push subscription.
    push: bool,
}

impl Agent {
    /// Opens the replica, loads the certificates and binds the REST listener.
    /// Does not contact the coordinator: the agent serves its replica even
    /// when the coordinator is unreachable.
    pub async fn bind(config: Config) -> anyhow::Result<Self> {
        let replica = Arc::new(Replica::open(&config.data_dir)?);
        let meta = replica.meta();
        tracing::info!(data_dir = %config.data_dir.display(), cursor = ?meta.cursor, items = meta.item_count, "replica opened");
        let client_config = shelfsync_proto::tls::client_config(&config.tls)?;
        let link = Arc::new(Link::new(
            config.coordinator.clone(),
            config.server_name.clone(),
            client_config,
        ));
        let metrics = Arc::new(Metrics::new());
        let syncer = Arc::new(Syncer::new(
            config.store_id.clone(),
            replica.clone(),
            link.clone(),
            config.locations.clone(),
            config.sync_interval,
            config.forward_timeout.max(MIN_SYNC_CALL_TIMEOUT),
            metrics.clone(),
        ));
        let forwarder = Arc::new(Forwarder::new(
            link,
            replica.clone(),
            metrics.clone(),
            config.forward_timeout,
        ));
        let state = Arc::new(AppState::new(
            replica,
            forwarder,
            syncer,
            metrics,
            config.rate_limit,
        ));
        let router =
            rest::router(state.clone(), &config.cors_origins).map_err(anyhow::Error::msg)?;
        let listener = tokio::net::TcpListener::bind(config.http_listen)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", config.http_listen))?;
        Ok(Agent {
            push: config.push,
            http_addr: listener.local_addr()?,
            listener,
            state,
            router,
        })
    }

    /// Serves and syncs until `shutdown` resolves, then closes the replica.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (stop_handle, stop) = shelfsync_runtime::stop_pair();
        let stopped = || stop.wait();
        tracing::info!(http = %self.http_addr, "agent serving");
        let sync = tokio::spawn(self.state.syncer.clone().run(stopped()));
        let push = self
            .push
            .then(|| tokio::spawn(self.state.syncer.clone().push(stopped())));
        let prune = {
            let state = self.state.clone();
            let stop = stopped();
            tokio::spawn(async move {
                tokio::pin!(stop);
                loop {
                    tokio::select! {
                        () = tokio::time::sleep(PRUNE_EVERY) => state.prune_rate_limiter(),
                        () = &mut stop => return,
                    }
                }
            })
        };
        let service = self
            .router
            .into_make_service_with_connect_info::<SocketAddr>();
        let http = tokio::spawn(
            axum::serve(self.listener, service)
                .with_graceful_shutdown(stopped())
                .into_future(),
        );
        shutdown.await;
        tracing::info!("shutting down");
        stop_handle.stop();
        let _ = sync.await;
        if let Some(push) = push {
            let _ = push.await;
        }
        let _ = prune.await;
        let _ = http.await;
        let replica = self.state.replica.clone();
        tokio::task::spawn_blocking(move || replica.close()).await??;
        tracing::info!("replica closed; bye");
        Ok(())
    }
}

/// Binds and runs `config` until `shutdown` resolves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    failpoints::setup_from_env().map_err(anyhow::Error::msg)?;
    Agent::bind(config).await?.run(shutdown).await
}
