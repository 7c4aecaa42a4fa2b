//! The agent's REST API (SPEC §3), with axum.
//!
//! Reads are served from the local replica; writes are forwarded (see
//! [`crate::forward`]). Every error is `application/problem+json`; bad input
//! gets a 4xx with a message, never a 500. Every response carries
//! `X-Replica-Cursor` and `X-Replica-Age-Ms`, so a client can tell how fresh
//! the replica is, also when the coordinator is away.
//!
//! A build with failpoints (the fault suite's) also serves
//! `PUT /debug/failpoints/{name}` and `GET /debug/failpoints`
//! ([`crate::failpoints`]); they stay out of [`route_table`] and of
//! docs/openapi.json, which describe the API every build serves.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::{Deserialize, Serialize};
use shelfsync_core::{Item, ItemKey, Op};
use shelfsync_proto::WriteRequest;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::config::RateLimit;
use crate::forward::{ForwardError, Forwarder};
use crate::metrics::Metrics;
use crate::replica::Replica;
use crate::sync::Syncer;

/// Largest request body accepted.
pub const MAX_BODY: usize = 16 * 1024;
/// Longest client-supplied idempotency key.
const MAX_IDEMPOTENCY_KEY: usize = 128;
/// `Retry-After` (seconds) when the coordinator is unreachable.
const RETRY_AFTER_SECS: u64 = 2;

const X_REPLICA_CURSOR: HeaderName = HeaderName::from_static("x-replica-cursor");
const X_REPLICA_AGE_MS: HeaderName = HeaderName::from_static("x-replica-age-ms");
const IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
const LOCK_TOKEN: HeaderName = HeaderName::from_static("lock-token");
/// The prefix of every problem document's `type`.
const PROBLEM_TYPE: &str = "urn:shelfsync:problem:";

mod batch;
mod holds;
mod locks;
mod transfers;

/// What every handler shares.
pub struct AppState {
    /// The local replica.
    pub replica: Arc<Replica>,
    /// Forwards writes and strong reads.
    pub forwarder: Arc<Forwarder>,
    /// The sync loop, for `GET /v1/sync`.
    pub syncer: Arc<Syncer>,
    /// Metrics for `/metrics`.
    pub metrics: Arc<Metrics>,
    limiter: Option<Arc<DefaultKeyedRateLimiter<IpAddr>>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").finish_non_exhaustive()
    }
}

impl AppState {
    /// Bundles the shared parts; `rate_limit` enables the per-address limiter.
    pub fn new(
        replica: Arc<Replica>,
        forwarder: Arc<Forwarder>,
        syncer: Arc<Syncer>,
        metrics: Arc<Metrics>,
        rate_limit: Option<RateLimit>,
    ) -> Self {
        let limiter = rate_limit.and_then(|limit| {
            let per_second = NonZeroU32::new(limit.per_second)?;
            let burst = NonZeroU32::new(limit.burst)?;
            Some(Arc::new(RateLimiter::keyed(
                Quota::per_second(per_second).allow_burst(burst),
            )))
        });
        AppState {
            replica,
            forwarder,
            syncer,
            metrics,
            limiter,
        }
    }

    /// Drops rate-limiter state of addresses not seen lately (bounded memory).
    pub fn prune_rate_limiter(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The OpenAPI 3 description of this API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../../docs/openapi.json");

/// Builds the routes and remembers each (method, path), so a test can hold
/// the table against the OpenAPI description.
struct Routes {
    router: Router<Arc<AppState>>,
    table: Vec<(Method, &'static str)>,
}

impl Routes {
    fn add(
        mut self,
        method: Method,
        path: &'static str,
        route: axum::routing::MethodRouter<Arc<AppState>>,
    ) -> Self {
        self.table.push((method, path));
        self.router = self.router.route(path, route);
        self
    }
}

fn routes() -> Routes {
    use axum::routing::{delete, post, put};
    Routes {
        router: Router::new(),
        table: Vec::new(),
    }
    .add(Method::GET, "/v1/items", get(list_items))
    .add(Method::GET, "/v1/items/{location}/{sku}", get(get_item))
    .add(Method::PUT, "/v1/items/{location}/{sku}", put(put_item))
    .add(
        Method::DELETE,
        "/v1/items/{location}/{sku}",
        delete(delete_item),
    )
    .add(
        Method::POST,
        "/v1/items/{location}/{sku}/{op}",
        post(post_op),
    )
    .add(Method::POST, "/v1/batch", post(batch::post))
    .add(Method::POST, "/v1/holds", post(holds::create))
    .add(Method::GET, "/v1/holds/{id}", get(holds::get))
    .add(Method::POST, "/v1/holds/{id}/extend", post(holds::extend))
    .add(Method::POST, "/v1/holds/{id}/fulfil", post(holds::fulfil))
    .add(Method::POST, "/v1/holds/{id}/release", post(holds::release))
    .add(Method::GET, "/v1/transfers", get(transfers::list))
    .add(Method::POST, "/v1/transfers", post(transfers::create))
    .add(Method::GET, "/v1/transfers/{id}", get(transfers::get))
    .add(
        Method::POST,
        "/v1/transfers/{id}/receive",
        post(transfers::receive),
    )
    .add(
        Method::POST,
        "/v1/transfers/{id}/close",
        post(transfers::close),
    )
    .add(
        Method::POST,
        "/v1/locks/{location}/{sku}",
        post(locks::grant),
    )
    .add(Method::PUT, "/v1/locks/{location}/{sku}", put(locks::renew))
    .add(
        Method::DELETE,
        "/v1/locks/{location}/{sku}",
        delete(locks::release),
    )
    .add(Method::GET, "/v1/sync", get(sync_status))
    .add(Method::GET, "/v1/openapi.json", get(openapi))
    .add(Method::GET, "/healthz", get(|| async { "ok\n" }))
    .add(Method::GET, "/readyz", get(readyz))
    .add(Method::GET, "/metrics", get(metrics))
}

/// Every (method, path) the router serves.
pub fn route_table() -> Vec<(Method, &'static str)> {
    routes().table
}

/// The routes, with body limit, CORS, rate limit and replica headers.
pub fn router(state: Arc<AppState>, cors_origins: &[String]) -> Result<Router, String> {
    let routes = routes()
        .router
        .route_layer(middleware::from_fn_with_state(state.clone(), observe));
    #[cfg(feature = "failpoints")]
    let routes = routes.merge(debug_routes());
    let mut router = routes
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        // axum adds `Allow` to this answer as it does to its own 405.
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not serve that method; Allow lists the ones it does",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            replica_headers,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), rate_limit));
    if !cors_origins.is_empty() {
        let origins = cors_origins
            .iter()
            .map(|o| HeaderValue::from_str(o).map_err(|_| format!("invalid CORS origin {o:?}")))
            .collect::<Result<Vec<_>, _>>()?;
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::PUT, Method::POST, Method::DELETE])
                .allow_headers([
                    header::CONTENT_TYPE,
                    header::IF_MATCH,
                    IDEMPOTENCY_KEY,
                    LOCK_TOKEN,
                ])
                .expose_headers([header::ETAG, X_REPLICA_CURSOR, X_REPLICA_AGE_MS]),
        );
    }
    Ok(router.with_state(state))
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(skip)]
    status: StatusCode,
    #[serde(rename = "type")]
    kind: String,
    title: String,
    #[serde(rename = "status")]
    status_code: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<Box<ItemView>>,
    /// For 423: who holds the lock (`holder`) and for how long yet
    /// (`expires_in_ms`).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    locked: Option<Box<shelfsync_proto::LockedBy>>,
    /// For a batch: the index of the refused line.
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<u32>,
    #[serde(skip)]
    retry_after: Option<u64>,
}

impl Problem {
    fn new(status: StatusCode, code: &str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            kind: format!("{PROBLEM_TYPE}{code}"),
            title: status.canonical_reason().unwrap_or("error").to_string(),
            status_code: status.as_u16(),
            detail: detail.into(),
            current: None,
            locked: None,
            line: None,
            retry_after: None,
        }
    }

    fn invalid(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", detail)
    }

    /// Whether this problem is the coordinator's refusal `code`.
    fn is(&self, code: shelfsync_proto::ErrorCode) -> bool {
        self.kind.strip_prefix(PROBLEM_TYPE) == Some(code.as_str())
    }

    /// This problem as the refusal of line `index` of a batch.
    fn at_line(mut self, index: usize) -> Self {
        self.line = u32::try_from(index).ok();
        self
    }

    fn bad_request(detail: impl Into<String>) -> Self {
        Problem::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// A replica read whose task failed.
    fn replica_failed() -> Self {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "replica_failed",
            "replica read failed",
        )
    }

    /// Local reads of a replica that may have lost states after a crash.
    fn catching_up() -> Self {
        let mut problem = Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "replica_catching_up",
            "the agent stopped without closing its replica and waits for a sync before it \
             answers local reads; ?consistency=strong reads through the coordinator",
        );
        problem.retry_after = Some(RETRY_AFTER_SECS);
        problem
    }
}

impl From<shelfsync_core::Rejection> for Problem {
    fn from(rejection: shelfsync_core::Rejection) -> Self {
        let err = shelfsync_proto::WireError::rejected(&rejection, None);
        Problem::from(ForwardError::Refused(err))
    }
}

impl From<ForwardError> for Problem {
    fn from(err: ForwardError) -> Self {
        match err {
            ForwardError::Refused(err) => {
                let status =
                    StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
                let mut problem = Problem::new(status, err.code.as_str(), err.message);
                problem.current = err
                    .current
                    .as_deref()
                    .map(|item| Box::new(ItemView::from(item)));
                problem.line = err.line;
                if let Some(locked) = err.locked {
                    problem.retry_after = Some(locked.expires_in_ms.div_ceil(1000).max(1));
                    problem.locked = Some(Box::new(locked));
                }
                problem
            }
            ForwardError::Unavailable(err) => {
                let mut problem = Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "coordinator_unreachable",
                    format!(
                        "the coordinator did not answer ({err}); retry with the same Idempotency-Key, a write takes effect at most once"
                    ),
                );
                problem.retry_after = Some(RETRY_AFTER_SECS);
                problem
            }
            ForwardError::Replica(err) => {
                tracing::error!(error = %err, "replica failed");
                Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "replica_failed",
                    "the local replica failed; the write was accepted by the coordinator and will arrive with the next sync",
                )
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// An item as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ItemView {
    location: String,
    sku: String,
    name: String,
    quantity: u64,
    reserved: u64,
    held: u64,
    allowance: u64,
    available: u64,
    version: u64,
    lock: Option<LockView>,
}

/// A live lock as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct LockView {
    holder: String,
    token: u64,
    expires_in_ms: u64,
}

impl From<&Item> for ItemView {
    fn from(item: &Item) -> Self {
        let now = shelfsync_proto::time::now_ms();
        ItemView {
            location: item.location.clone(),
            sku: item.sku.clone(),
            name: item.name.clone(),
            quantity: item.quantity,
            reserved: item.reserved,
            held: item.held,
            allowance: item.allowance,
            available: item.available(),
            version: item.version,
            lock: item.live_lock(now).map(|lock| LockView {
                holder: lock.holder.clone(),
                token: lock.token,
                expires_in_ms: lock.expires_in_ms(now),
            }),
        }
    }
}

fn item_response(status: StatusCode, item: &Item) -> Response {
    let mut response = (status, axum::Json(ItemView::from(item))).into_response();
    if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", item.version)) {
        response.headers_mut().insert(header::ETAG, etag);
    }
    response
}

type Result<T, E = Problem> = std::result::Result<T, E>;

fn key(path: Result<Path<(String, String)>, PathRejection>) -> Result<ItemKey> {
    let Path((location, sku)) = path.map_err(|e| Problem::bad_request(e.body_text()))?;
    Ok(ItemKey::new(location, sku)?)
}

/// The id of a hold or transfer from the path: an id like a location's.
fn object_id(path: Result<Path<String>, PathRejection>) -> Result<String> {
    let Path(id) = path.map_err(|e| Problem::bad_request(e.body_text()))?;
    shelfsync_core::item::validate_id("id", &id)?;
    Ok(id)
}

fn json<T: for<'de> Deserialize<'de>>(body: Result<Bytes, BytesRejection>) -> Result<T> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {MAX_BODY} bytes"),
            )
        } else {
            Problem::bad_request(e.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Problem::invalid(e.to_string()),
        _ => Problem::bad_request(format!("malformed JSON: {e}")),
    })
}

/// Parses `If-Match: "N"` (quotes optional); `None` when absent.
fn if_match(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .map(|v| v.trim().trim_start_matches("W/").trim_matches('"'))
        .and_then(|v| v.parse().ok())
        .map(Some)
        .ok_or_else(|| Problem::bad_request("If-Match must be a version in quotes, like \"3\""))
}

/// Parses `Lock-Token: N`; `None` when absent.
fn lock_token(headers: &HeaderMap) -> Result<Option<u64>> {
    let Some(value) = headers.get(LOCK_TOKEN) else {
        return Ok(None);
    };
    let token = value.to_str().ok().and_then(|v| v.trim().parse().ok());
    token
        .map(Some)
        .ok_or_else(|| Problem::bad_request("Lock-Token must be the number a lock grant returned"))
}

/// The client's `Idempotency-Key`, or a fresh one.
fn idempotency_key(headers: &HeaderMap) -> Result<String> {
    match headers.get(IDEMPOTENCY_KEY) {
        None => Ok(uuid::Uuid::new_v4().to_string()),
        Some(value) => {
            let key = value
                .to_str()
                .map_err(|_| Problem::invalid("Idempotency-Key must be printable ASCII"))?;
            if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
                return Err(Problem::invalid(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )));
            }
            Ok(key.to_string())
        }
    }
}

async fn forward(
    state: &AppState,
    headers: &HeaderMap,
    key: ItemKey,
    op: Op,
    expected_version: Option<u64>,
) -> Result<shelfsync_proto::WriteAck> {
    op.validate()?;
    let request = WriteRequest {
        idempotency_key: idempotency_key(headers)?,
        key,
        op,
        expected_version,
        lock_token: lock_token(headers)?,
    };
    Ok(state.forwarder.write(request).await?)
}

#[derive(Deserialize)]
struct ItemQuery {
    consistency: Option<String>,
}

async fn get_item(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<ItemQuery>, QueryRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let Query(query) = query.map_err(|e| Problem::invalid(e.body_text()))?;
    let item = match query.consistency.as_deref() {
        Some("strong") => Some(state.forwarder.read(key.clone()).await?),
        None | Some("local") => {
            if !state.replica.caught_up() {
                return Err(Problem::catching_up());
            }
            let replica = state.replica.clone();
            let lookup = key.clone();
            tokio::task::spawn_blocking(move || replica.get(&lookup))
                .await
                .map_err(|_| Problem::replica_failed())?
                .map_err(|e| Problem::from(ForwardError::Replica(e)))?
        }
        Some(other) => {
            return Err(Problem::invalid(format!(
                "consistency must be `strong` or `local`, not {other:?}"
            )));
        }
    };
    match item {
        Some(item) => Ok(item_response(StatusCode::OK, &item)),
        None => Err(Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("item {key} does not exist"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    location: Option<String>,
    after: Option<String>,
    limit: Option<u32>,
}

#[derive(Serialize)]
struct ItemList {
    items: Vec<ItemView>,
    next: Option<String>,
}

async fn list_items(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Problem::invalid(e.body_text()))?;
    let location = query
        .location
        .ok_or_else(|| Problem::invalid("the `location` query parameter is required"))?;
    shelfsync_core::item::validate_id("location", &location)?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(Problem::invalid(format!(
            "limit is {limit}, it must be between 1 and 1000"
        )));
    }
    if !state.replica.caught_up() {
        return Err(Problem::catching_up());
    }
    let replica = state.replica.clone();
    let after = query.after;
    let (items, next) = tokio::task::spawn_blocking(move || {
        replica.list(&location, after.as_deref(), limit as usize)
    })
    .await
    .map_err(|_| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "replica_failed",
            "replica read failed",
        )
    })?
    .map_err(|e| Problem::from(ForwardError::Replica(e)))?;
    Ok(axum::Json(ItemList {
        items: items.iter().map(ItemView::from).collect(),
        next,
    })
    .into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutBody {
    name: Option<String>,
    quantity: Option<u64>,
}

async fn put_item(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let body: PutBody = json(body)?;
    let expected = if_match(&headers)?;
    let (op, status) = match expected {
        None => {
            let (Some(name), Some(quantity)) = (body.name, body.quantity) else {
                return Err(Problem::invalid(
                    "a create needs both `name` and `quantity` (to change an item, send If-Match)",
                ));
            };
            (Op::Create { name, quantity }, StatusCode::CREATED)
        }
        Some(_) => (
            Op::Set {
                name: body.name,
                quantity: body.quantity,
            },
            StatusCode::OK,
        ),
    };
    let ack = forward(&state, &headers, key, op, expected).await?;
    match ack.state.item() {
        Some(item) => Ok(item_response(status, item)),
        None => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "unexpected",
            "the coordinator returned no item",
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: u64,
}

async fn post_op(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let Path((location, sku, op)) = path.map_err(|e| Problem::bad_request(e.body_text()))?;
    let key = ItemKey::new(location, sku)?;
    let body: AmountBody = json(body)?;
    let op = Op::with_amount(&op, body.amount).ok_or_else(|| {
        Problem::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no operation {op:?}; use add, remove, reserve, release or fulfil"),
        )
    })?;
    let expected = if_match(&headers)?;
    let ack = forward(&state, &headers, key, op, expected).await?;
    match ack.state.item() {
        Some(item) => Ok(item_response(StatusCode::OK, item)),
        None => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "unexpected",
            "the coordinator returned no item",
        )),
    }
}

async fn delete_item(
    State(state): State<Arc<AppState>>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response> {
    let key = key(path)?;
    let Some(expected) = if_match(&headers)? else {
        return Err(Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "a delete needs If-Match with the item's version",
        ));
    };
    forward(&state, &headers, key, Op::Delete, Some(expected)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The fault suite's failpoint routes (a build with failpoints only).
#[cfg(feature = "failpoints")]
fn debug_routes() -> Router<Arc<AppState>> {
    use axum::routing::put;

    async fn configure(Path(name): Path<String>, actions: String) -> Result<Response> {
        crate::failpoints::set(&name, &actions).map_err(Problem::bad_request)?;
        Ok((StatusCode::OK, "ok\n").into_response())
    }
    async fn list() -> Response {
        axum::Json(crate::failpoints::list()).into_response()
    }
    Router::new()
        .route("/debug/failpoints", get(list))
        .route("/debug/failpoints/{name}", put(configure))
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn sync_status(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.syncer.status()).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.replica.meta().cursor.is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "replica not yet synced\n").into_response()
    } else if !state.replica.caught_up() {
        let body = "replica catching up after an unclean stop\n";
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    } else {
        (StatusCode::OK, "ready\n").into_response()
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let synced = state.replica.meta().last_sync_ms;
    let age_ms = synced.map(|t| shelfsync_proto::time::now_ms().saturating_sub(t));
    (state.metrics.replica_age).set(age_ms.map_or(-1, |ms| crate::metrics::gauge_value(ms / 1000)));
    (
        [(
            header::CONTENT_TYPE,
            shelfsync_runtime::metrics_text::CONTENT_TYPE,
        )],
        shelfsync_runtime::metrics_text::prometheus_text(&state.metrics.render()),
    )
        .into_response()
}

/// Counts each request of a route and times it, by its route template.
async fn observe(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|matched| ROUTES.iter().find(|route| **route == matched.as_str()))
        .copied()
        .unwrap_or("other");
    let method = match *request.method() {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    };
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let labels = crate::metrics::RouteLabels { method, route };
    (state.metrics).request(labels, response.status().as_u16(), started.elapsed());
    response
}

/// The route templates, for the request metrics' labels.
static ROUTES: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| route_table().into_iter().map(|(_, path)| path).collect());

/// Adds `X-Replica-Cursor` and `X-Replica-Age-Ms` to every response.
async fn replica_headers(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = next.run(request).await;
    let meta = state.replica.meta();
    let headers = response.headers_mut();
    headers.insert(
        X_REPLICA_CURSOR,
        HeaderValue::from(meta.cursor.unwrap_or(0)),
    );
    if let Some(synced) = meta.last_sync_ms {
        let age = shelfsync_proto::time::now_ms().saturating_sub(synced);
        headers.insert(X_REPLICA_AGE_MS, HeaderValue::from(age));
    }
    response
}

/// Refuses requests past the per-address rate with 429 and `Retry-After`.
async fn rate_limit(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let Some(limiter) = &state.limiter else {
        return next.run(request).await;
    };
    let ip = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if let Some(ip) = ip
        && let Err(not_until) = limiter.check_key(&ip)
    {
        let wait = not_until.wait_time_from(governor::clock::Clock::now(
            &governor::clock::DefaultClock::default(),
        ));
        let mut problem = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests from this address; slow down",
        );
        problem.retry_after = Some(wait.as_secs().max(1));
        return problem.into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_openapi_description_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let described: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, ops)| {
                ops.as_object()
                    .unwrap()
                    .keys()
                    .map(move |method| (method.to_uppercase(), path.clone()))
            })
            .collect();
        let served: BTreeSet<(String, String)> = route_table()
            .into_iter()
            .map(|(method, path)| (method.to_string(), path.to_string()))
            .collect();
        let undocumented: Vec<_> = served.difference(&described).collect();
        let missing: Vec<_> = described.difference(&served).collect();
        assert!(
            undocumented.is_empty(),
            "routes not in docs/openapi.json: {undocumented:?}"
        );
        assert!(
            missing.is_empty(),
            "described routes the server lacks: {missing:?}"
        );
    }
}
