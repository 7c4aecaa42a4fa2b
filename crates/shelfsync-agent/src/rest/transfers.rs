//! `/v1/transfers`: stock shipped from one location to another, received
//! in one or more steps, and closed (SPEC §5 "Transfers"). Transfers live at
//! the coordinator: every route here is forwarded, reads included, and each
//! step is one commit there. A transfer is shown as the coordinator keeps
//! it: per sku `shipped`, `received` and `lost` (written off at close).
//!
//! The open transfers of this agent's locations are also kept in its
//! replica ([`crate::transfers`]): `GET /v1/transfers?location=L&state=
//! in_transit` answers from there (also while the coordinator is away),
//! unless `consistency=strong`.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shelfsync_core::item::validate_id;
use shelfsync_core::transfer::TransferAmount;
use shelfsync_core::{Transfer, TransferState};
use shelfsync_proto::{MAX_BATCH_LINES, TransferAction, TransferRequest, TransfersRequest};

use super::{AppState, Problem, Result, idempotency_key, json, lock_token, object_id};
use crate::forward::ForwardError;

/// One sku and its units, in a shipment or a receipt.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineBody {
    sku: String,
    amount: u64,
}

/// `POST /v1/transfers` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    from: String,
    to: String,
    lines: Vec<LineBody>,
}

/// `POST /v1/transfers/{id}/receive` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReceiveBody {
    lines: Vec<LineBody>,
}

/// `GET /v1/transfers` query.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    location: String,
    state: Option<TransferState>,
    consistency: Option<String>,
}

#[derive(Serialize)]
struct Listed {
    transfers: Vec<Transfer>,
}

/// The lines as the coordinator takes them; a bad line is a 422 naming it.
fn lines(body: Vec<LineBody>) -> Result<Vec<TransferAmount>> {
    if !(1..=MAX_BATCH_LINES).contains(&body.len()) {
        return Err(Problem::invalid(format!(
            "a transfer or a receipt has 1 to {MAX_BATCH_LINES} lines, not {}",
            body.len()
        )));
    }
    let mut out: Vec<TransferAmount> = Vec::with_capacity(body.len());
    for (index, line) in body.into_iter().enumerate() {
        let at_line = |detail: String| Problem::invalid(detail).at_line(index);
        validate_id("sku", &line.sku).map_err(|e| at_line(e.to_string()))?;
        if out.iter().any(|earlier| earlier.sku == line.sku) {
            return Err(at_line(format!("{} is in the lines twice", line.sku)));
        }
        out.push(TransferAmount {
            sku: line.sku,
            amount: line.amount,
        });
    }
    Ok(out)
}

/// Forwards `action` and answers with the transfer after it.
async fn step(
    state: &AppState,
    headers: &HeaderMap,
    action: TransferAction,
    status: StatusCode,
) -> Result<Response> {
    let request = TransferRequest {
        idempotency_key: match action {
            TransferAction::Get { .. } => String::new(),
            _ => idempotency_key(headers)?,
        },
        action,
    };
    let ack = state.forwarder.transfer(request).await?;
    Ok((status, axum::Json(ack.transfer)).into_response())
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: CreateBody = json(body)?;
    validate_id("from", &body.from)?;
    validate_id("to", &body.to)?;
    let action = TransferAction::Create {
        from: body.from,
        to: body.to,
        lines: lines(body.lines)?,
        lock_token: lock_token(&headers)?,
    };
    step(&state, &headers, action, StatusCode::CREATED).await
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let action = TransferAction::Get {
        id: object_id(path)?,
    };
    step(&state, &headers, action, StatusCode::OK).await
}

pub(super) async fn receive(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let id = object_id(path)?;
    let body: ReceiveBody = json(body)?;
    let action = TransferAction::Receive {
        id,
        lines: lines(body.lines)?,
        lock_token: lock_token(&headers)?,
    };
    step(&state, &headers, action, StatusCode::OK).await
}

pub(super) async fn close(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let action = TransferAction::Close {
        id: object_id(path)?,
    };
    step(&state, &headers, action, StatusCode::OK).await
}

pub(super) async fn list(
    State(state): State<Arc<AppState>>,
    query: std::result::Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response> {
    let Query(query) = query.map_err(|e| Problem::invalid(e.body_text()))?;
    validate_id("location", &query.location)?;
    let held = state.syncer.locations().contains(&query.location);
    let open = query.state == Some(TransferState::InTransit);
    let transfers = match query.consistency.as_deref() {
        None | Some("local") if open && held => {
            if !state.replica.caught_up() {
                return Err(Problem::catching_up());
            }
            let replica = state.replica.clone();
            let location = query.location.clone();
            tokio::task::spawn_blocking(move || replica.transfers().list(&location))
                .await
                .map_err(|_| Problem::replica_failed())?
                .map_err(|e| Problem::from(ForwardError::Replica(e)))?
        }
        Some("local") => {
            return Err(Problem::invalid(
                "the replica keeps the open transfers (state=in_transit) of its own \
                 locations only; use consistency=strong",
            ));
        }
        None | Some("strong") => {
            let request = TransfersRequest {
                location: Some(query.location),
                state: query.state,
            };
            state.forwarder.transfers(request).await?
        }
        Some(other) => {
            return Err(Problem::invalid(format!(
                "consistency must be `strong` or `local`, not {other:?}"
            )));
        }
    };
    Ok((StatusCode::OK, axum::Json(Listed { transfers })).into_response())
}
