//! `/v1/locks/{location}/{sku}`: lease locks for stock counts. A grant,
//! renewal or release is a write like any other, forwarded to the
//! coordinator, which owns locks and judges their expiry by its own clock.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shelfsync_core::{ItemKey, Op};
use shelfsync_proto::ErrorCode;

use super::{AppState, Problem, Result, forward, json, key, lock_token};

/// `POST` body: who takes the lock, and for how long.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Grant {
    holder: String,
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

/// `PUT` body: the new lease, from now.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Renewal {
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

/// A granted or renewed lock.
#[derive(Serialize)]
struct Granted {
    token: u64,
    holder: String,
    expires_in_ms: u64,
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

fn required_token(headers: &HeaderMap) -> Result<u64> {
    lock_token(headers)?.ok_or_else(|| {
        Problem::new(
            StatusCode::PRECONDITION_REQUIRED,
            "precondition_required",
            "this request needs the lock's Lock-Token header",
        )
    })
}

/// Forwards a grant or renewal and answers with the lock it left.
async fn lock_write(
    state: &AppState,
    headers: &HeaderMap,
    key: ItemKey,
    op: Op,
    status: StatusCode,
) -> Result<Response> {
    let ack = forward(state, headers, key, op, None).await?;
    let now = shelfsync_proto::time::now_ms();
    let lock = ack.state.item().and_then(|item| item.lock.clone());
    let Some(lock) = lock else {
        return Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "unexpected",
            "the coordinator accepted the lock but answered without one",
        ));
    };
    let granted = Granted {
        token: lock.token,
        holder: lock.holder.clone(),
        expires_in_ms: lock.expires_in_ms(now),
    };
    Ok((status, axum::Json(granted)).into_response())
}

pub(super) async fn grant(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let Grant { holder, ttl } = json(body)?;
    let op = Op::LockGrant {
        holder,
        ttl_ms: ttl_ms(ttl),
    };
    lock_write(&state, &headers, key, op, StatusCode::CREATED).await
}

pub(super) async fn renew(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let token = required_token(&headers)?;
    let Renewal { ttl } = json(body)?;
    let op = Op::LockRenew {
        token,
        ttl_ms: ttl_ms(ttl),
    };
    lock_write(&state, &headers, key, op, StatusCode::OK).await
}

/// Releases the lock; a lock already gone (released, expired, taken over)
/// is released too, as far as the caller is concerned.
pub(super) async fn release(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response> {
    let key = key(path)?;
    let token = required_token(&headers)?;
    match forward(&state, &headers, key, Op::LockRelease { token }, None).await {
        Ok(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(problem) if problem.is(ErrorCode::LockLost) => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Err(problem) => Err(problem),
    }
}
