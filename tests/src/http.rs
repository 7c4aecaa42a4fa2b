//! Plain HTTP against a process under test: readiness polling and GETs.
//!
//! The client never uses a proxy (a `HTTP_PROXY` in the environment must not
//! route 127.0.0.1 elsewhere) and keeps no idle connections, so a request
//! after a restart never lands on a socket of the killed process.

use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

use crate::process::Process;

/// Time between two readiness probes.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long one HTTP request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A reply to a GET.
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// Status code.
    pub status: u16,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body as text.
    pub body: String,
}

/// Builds the HTTP client used by the harness (no proxy, no pooling, timeouts).
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")
}

/// GETs `url` and reads the whole body.
pub async fn get(client: &reqwest::Client, url: &str) -> anyhow::Result<HttpReply> {
    let response = client
        .get(url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response
        .text()
        .await
        .with_context(|| format!("GET {url}: reading the body"))?;
    Ok(HttpReply {
        status,
        content_type,
        body,
    })
}

/// How waiting for a process to become ready ended.
#[derive(Debug)]
pub enum Readiness {
    /// The readiness URL answered 200 while the process was running.
    Ready,
    /// The process exited first.
    Exited(std::process::ExitStatus),
    /// Neither happened within the timeout.
    TimedOut,
}

/// Polls `url` every few milliseconds until it answers 200 while `process`
/// still runs, the process exits, or `timeout` passes.
///
/// The process is checked after each answer as well as before, so a 200 from
/// a process that is already on its way out (or from someone else's socket,
/// should the port have been taken) is not mistaken for readiness.
pub async fn wait_ready(
    client: &reqwest::Client,
    process: &mut Process,
    url: &str,
    timeout: Duration,
) -> Readiness {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exit_status() {
            return Readiness::Exited(status);
        }
        let ok = matches!(
            client.get(url).timeout(Duration::from_secs(1)).send().await,
            Ok(response) if response.status() == reqwest::StatusCode::OK
        );
        if let Some(status) = process.exit_status() {
            return Readiness::Exited(status);
        }
        if ok {
            return Readiness::Ready;
        }
        if Instant::now() >= deadline {
            return Readiness::TimedOut;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
