//! Plain HTTP against a process under test: the harness's client and GETs
//! (readiness is polled by the shared launcher, with this client).
//!
//! The client never uses a proxy (a `HTTP_PROXY` in the environment must not
//! route 127.0.0.1 elsewhere) and keeps no idle connections, so a request
//! after a restart never lands on a socket of the killed process.

use std::time::Duration;

use anyhow::Context;

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
