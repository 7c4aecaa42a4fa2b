//! A small client for the agent's REST API (SPEC §3), for tests.
//!
//! [`RestClient`] sends a request with the headers and body a test chooses
//! and returns everything a test asserts on as a [`RestReply`]: the status,
//! the headers, the body as text and, when it parses, as JSON. It never
//! fails on an HTTP error status (a 409 or a 503 is an answer to check, not
//! an error); only a transport failure is an `Err`.
//!
//! Like the harness's other HTTP client it uses no proxy and no idle
//! connections, so a request after an agent restart never lands on a socket
//! of the killed process.

use std::time::Duration;

use anyhow::Context;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::http;

/// The agent's replica headers (SPEC §3).
pub const X_REPLICA_CURSOR: &str = "x-replica-cursor";
/// See [`X_REPLICA_CURSOR`].
pub const X_REPLICA_AGE_MS: &str = "x-replica-age-ms";

/// One answer of the REST API.
#[derive(Debug, Clone)]
pub struct RestReply {
    /// The request, `METHOD path`, for messages.
    pub request: String,
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub body: String,
    /// The body as JSON; `Value::Null` when it is empty or not JSON.
    pub json: Value,
}

impl RestReply {
    /// The value of header `name` (case-insensitive), if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// A header parsed as an unsigned number.
    pub fn header_u64(&self, name: &str) -> Option<u64> {
        self.header(name).and_then(|v| v.trim().parse().ok())
    }

    /// The version in the `ETag` header (`"N"`).
    pub fn etag_version(&self) -> Option<u64> {
        self.header("etag")
            .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
            .and_then(|v| v.parse().ok())
    }

    /// `X-Replica-Cursor`.
    pub fn replica_cursor(&self) -> Option<u64> {
        self.header_u64(X_REPLICA_CURSOR)
    }

    /// `X-Replica-Age-Ms`.
    pub fn replica_age_ms(&self) -> Option<u64> {
        self.header_u64(X_REPLICA_AGE_MS)
    }

    /// `Retry-After`, in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.header_u64("retry-after")
    }

    /// The `Content-Type` header.
    pub fn content_type(&self) -> Option<&str> {
        self.header("content-type")
    }

    /// Whether this is an RFC 9457 problem document: the content type says
    /// so and the body has `type`, `title`, `status` (equal to the status
    /// code) and `detail`.
    pub fn is_problem(&self) -> bool {
        let json = &self.json;
        self.content_type()
            .is_some_and(|t| t.starts_with("application/problem+json"))
            && json["type"].is_string()
            && json["title"].is_string()
            && json["detail"].is_string()
            && json["status"].as_u64() == Some(u64::from(self.status))
    }

    /// A numeric field of the JSON body.
    pub fn u64(&self, field: &str) -> Option<u64> {
        self.json[field].as_u64()
    }
}

impl std::fmt::Display for RestReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {} {}", self.request, self.status, self.body)
    }
}

/// A client bound to one agent's base URL (`http://127.0.0.1:PORT`).
#[derive(Debug, Clone)]
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    timeout: Option<Duration>,
}

impl RestClient {
    /// A client for the API at `base` (no trailing slash).
    pub fn new(base: impl Into<String>) -> anyhow::Result<Self> {
        Ok(RestClient::with_client(http::client()?, base))
    }

    /// A client for the API at `base` that sends through `http`.
    pub fn with_client(http: reqwest::Client, base: impl Into<String>) -> Self {
        RestClient {
            http,
            base: base.into(),
            timeout: None,
        }
    }

    /// The same client with `timeout` for each whole request instead of the
    /// harness's default (a few seconds), to measure how long an answer
    /// takes rather than give up on it.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `method path` with `headers` and an optional raw `body`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> anyhow::Result<RestReply> {
        let request = format!("{method} {path}");
        let mut builder = self.http.request(method, format!("{}{path}", self.base));
        if let Some(timeout) = self.timeout {
            builder = builder.timeout(timeout);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        if let Some(body) = body {
            builder = builder
                .header("content-type", "application/json")
                .body(body);
        }
        let response = builder.send().await.with_context(|| request.clone())?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .with_context(|| format!("{request}: reading the body"))?;
        let json = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(RestReply {
            request,
            status,
            headers,
            body,
            json,
        })
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> anyhow::Result<RestReply> {
        self.send(Method::GET, path, &[], None).await
    }

    /// `PUT path` with a JSON body.
    pub async fn put(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> anyhow::Result<RestReply> {
        self.send(
            Method::PUT,
            path,
            headers,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `POST path` with a JSON body.
    pub async fn post(
        &self,
        path: &str,
        headers: &[(&str, &str)],
        body: &Value,
    ) -> anyhow::Result<RestReply> {
        self.send(
            Method::POST,
            path,
            headers,
            Some(body.to_string().into_bytes()),
        )
        .await
    }

    /// `DELETE path`.
    pub async fn delete(&self, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<RestReply> {
        self.send(Method::DELETE, path, headers, None).await
    }

    /// `GET /v1/items/{location}/{sku}`.
    pub async fn get_item(&self, location: &str, sku: &str) -> anyhow::Result<RestReply> {
        self.get(&item_path(location, sku)).await
    }

    /// `GET /v1/sync`, which must answer 200 with JSON.
    pub async fn sync_status(&self) -> anyhow::Result<Value> {
        let reply = self.get("/v1/sync").await?;
        if reply.status != 200 || !reply.json.is_object() {
            anyhow::bail!("unexpected answer: {reply}");
        }
        Ok(reply.json)
    }
}

/// `/v1/items/{location}/{sku}`, both segments used as given (callers
/// percent-encode what needs it).
pub fn item_path(location: &str, sku: &str) -> String {
    format!("/v1/items/{location}/{sku}")
}
