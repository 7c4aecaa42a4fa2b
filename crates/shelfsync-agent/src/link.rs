//! The agent's one connection to the coordinator, shared by the sync loop,
//! forwarded writes and strong reads.
//!
//! The connection is made on first use and made again after it fails; a
//! caller never waits longer than the timeout it passes, connect included.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use shelfsync_proto::{Client, ProtoError, Request, Response};
use tokio::sync::Mutex;

/// A lazily (re)connected coordinator connection.
pub struct Link {
    coordinator: String,
    server_name: String,
    client_config: quinn::ClientConfig,
    current: Mutex<Option<Arc<Client>>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("coordinator", &self.coordinator)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link to `coordinator` (`host:port`), checking `server_name`.
    pub fn new(
        coordinator: String,
        server_name: String,
        client_config: quinn::ClientConfig,
    ) -> Self {
        Link {
            coordinator,
            server_name,
            client_config,
            current: Mutex::new(None),
        }
    }

    /// The open connection, connecting first if there is none.
    pub async fn client(&self, timeout: Duration) -> Result<Arc<Client>, ProtoError> {
        let connect = async {
            let mut current = self.current.lock().await;
            if let Some(client) = current.as_ref()
                && !client.is_closed()
            {
                return Ok(client.clone());
            }
            let addr = self.resolve().await?;
            let client = Arc::new(
                Client::connect(addr, &self.server_name, self.client_config.clone(), timeout)
                    .await?,
            );
            tracing::info!(coordinator = %addr, "connected to the coordinator");
            *current = Some(client.clone());
            Ok(client)
        };
        tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| ProtoError::Timeout(timeout))?
    }

    async fn resolve(&self) -> Result<SocketAddr, ProtoError> {
        let mut addrs = tokio::net::lookup_host(&self.coordinator)
            .await
            .map_err(ProtoError::Io)?;
        addrs.next().ok_or_else(|| {
            ProtoError::Io(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", self.coordinator),
            ))
        })
    }

    /// Sends one request; on a transport failure the connection is dropped
    /// so the next call connects again.
    pub async fn call(&self, request: &Request, timeout: Duration) -> Result<Response, ProtoError> {
        let started = std::time::Instant::now();
        let client = self.client(timeout).await?;
        let left = timeout.saturating_sub(started.elapsed());
        let result = client.call_within(request, left).await;
        if let Err(err) = &result
            && err.is_retryable()
        {
            self.forget(&client).await;
        }
        result
    }

    /// Drops `client` if it is still the current connection.
    pub async fn forget(&self, client: &Arc<Client>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, client)) {
            *current = None;
        }
    }
}
