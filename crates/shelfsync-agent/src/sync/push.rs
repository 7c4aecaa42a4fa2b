//! Push (SPEC §5 "Sync push"): the agent holds a subscription to the
//! coordinator, which sends a wake-up with its head at once and after
//! every commit that touches one of the agent's locations; a wake-up past
//! the replica's cursor wakes the sync loop, which pulls at once. Wake-ups
//! that come while it pulls merge into one ([`tokio::sync::Notify`]).
//!
//! The sync interval stays as the fallback: when the subscription breaks
//! (a restarted coordinator, a lost path), the loop subscribes again with
//! exponential backoff capped at [`MAX_RETRY`] (or the interval, if
//! shorter), so that a coordinator back from a restart wakes its agents
//! within about a second; syncs keep their interval meanwhile.

use std::sync::Arc;
use std::time::Duration;

use backoff::backoff::Backoff;
use shelfsync_proto::{ProtoError, Request, Response, SubscribeRequest};

use super::Syncer;

/// The longest pause between two subscription attempts.
const MAX_RETRY: Duration = Duration::from_secs(1);

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
enum PushError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("the coordinator refused the subscription: {0}")]
    Refused(String),
    #[error("the coordinator ended the subscription")]
    Ended,
    #[error("the coordinator does not push wake-ups (protocol 4 needed)")]
    Unsupported,
}

impl Syncer {
    /// Holds the subscription until `shutdown` resolves.
    pub async fn push(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut retry = backoff::ExponentialBackoff {
            initial_interval: Duration::from_millis(100),
            max_interval: self.interval.min(MAX_RETRY),
            max_elapsed_time: None,
            ..Default::default()
        };
        loop {
            let ended = tokio::select! {
                ended = self.subscribe(&mut retry) => ended,
                () = &mut shutdown => return,
            };
            self.metrics.push_connected.set(0);
            let wait = match ended {
                PushError::Unsupported => self.interval,
                other => {
                    tracing::debug!(error = %other, "push subscription ended; subscribing again");
                    retry.next_backoff().unwrap_or(MAX_RETRY)
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = &mut shutdown => return,
            }
        }
    }

    /// Subscribes and wakes the sync loop until the subscription ends.
    async fn subscribe(&self, retry: &mut backoff::ExponentialBackoff) -> PushError {
        let client = match self.link.client(self.timeout).await {
            Ok(client) => client,
            Err(err) => return err.into(),
        };
        if !self.link.takes_subscriptions() {
            return PushError::Unsupported;
        }
        let request = Request::Subscribe(SubscribeRequest {
            locations: self.locations.clone(),
        });
        let mut subscription = match client.subscribe(&request).await {
            Ok(subscription) => subscription,
            Err(err) => return err.into(),
        };
        loop {
            match subscription.next().await {
                Ok(Some(Response::Wake { head })) => {
                    self.metrics.push_connected.set(1);
                    self.metrics.wakeups.inc();
                    retry.reset();
                    if self
                        .replica
                        .meta()
                        .cursor
                        .is_none_or(|cursor| head > cursor)
                    {
                        self.wake();
                    }
                }
                Ok(Some(Response::Error(err))) => return PushError::Refused(err.message),
                Ok(Some(_)) | Ok(None) => return PushError::Ended,
                Err(err) => return err.into(),
            }
        }
    }
}
