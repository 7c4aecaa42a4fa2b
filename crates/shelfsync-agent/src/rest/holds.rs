//! `/v1/holds`: reservations across items for a cart or a click & collect
//! order, with an expiry (SPEC §5 "Holds"). Holds live at the coordinator:
//! every route here is forwarded, reads included, and each step is one
//! commit there. The coordinator releases an expired hold by itself.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shelfsync_core::{Hold, HoldLine, Item, ItemKey, KeyState};
use shelfsync_proto::{HoldAck, HoldAction, HoldRequest, MAX_BATCH_LINES};

use super::{AppState, ItemView, Problem, Result, idempotency_key, json, lock_token, object_id};

/// One line of a new hold.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineBody {
    location: String,
    sku: String,
    amount: u64,
}

/// `POST /v1/holds` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    lines: Vec<LineBody>,
    #[serde(with = "humantime_serde")]
    ttl: Duration,
    owner: String,
}

/// `POST /v1/holds/{id}/extend` body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtendBody {
    #[serde(with = "humantime_serde")]
    ttl: Duration,
}

/// A hold as the API shows it: each line is its item as it stands, with
/// the units the hold takes.
#[derive(Serialize)]
struct HoldView {
    id: String,
    owner: String,
    state: String,
    expires_in_ms: u64,
    lines: Vec<LineView>,
}

#[derive(Serialize)]
struct LineView {
    amount: u64,
    #[serde(flatten)]
    item: ItemView,
}

impl From<HoldAck> for HoldView {
    fn from(ack: HoldAck) -> Self {
        let HoldAck {
            hold,
            expires_in_ms,
            states,
            ..
        } = ack;
        let Hold {
            id,
            owner,
            lines,
            state,
            ..
        } = hold;
        let lines = lines
            .into_iter()
            .map(|line| {
                let state = states
                    .iter()
                    .map(|(_, state)| state)
                    .find(|state| state.item().is_some_and(|item| item.key() == line.key));
                LineView {
                    amount: line.amount,
                    item: line_item(&line, state),
                }
            })
            .collect();
        HoldView {
            id,
            owner,
            state: state.to_string(),
            expires_in_ms,
            lines,
        }
    }
}

/// The line's item as it stands; one deleted since shows as empty.
fn line_item(line: &HoldLine, state: Option<&KeyState>) -> ItemView {
    match state.and_then(KeyState::item) {
        Some(item) => ItemView::from(item),
        None => ItemView::from(&Item {
            location: line.key.location.clone(),
            sku: line.key.sku.clone(),
            ..Item::default()
        }),
    }
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// Forwards `action` and answers with the hold after it.
async fn step(
    state: &AppState,
    headers: &HeaderMap,
    action: HoldAction,
    status: StatusCode,
) -> Result<Response> {
    let request = HoldRequest {
        idempotency_key: idempotency_key(headers)?,
        action,
    };
    let ack = state.forwarder.hold(request).await?;
    Ok((status, axum::Json(HoldView::from(ack))).into_response())
}

pub(super) async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let body: CreateBody = json(body)?;
    if !(1..=MAX_BATCH_LINES).contains(&body.lines.len()) {
        return Err(Problem::invalid(format!(
            "a hold has 1 to {MAX_BATCH_LINES} lines, not {}",
            body.lines.len()
        )));
    }
    let mut lines: Vec<HoldLine> = Vec::with_capacity(body.lines.len());
    for (index, line) in body.lines.into_iter().enumerate() {
        let at_line = |detail: String| Problem::invalid(detail).at_line(index);
        let key = ItemKey::new(&line.location, &line.sku).map_err(|e| at_line(e.to_string()))?;
        if lines.iter().any(|earlier| earlier.key == key) {
            return Err(at_line(format!("{key} is in the hold twice")));
        }
        lines.push(HoldLine {
            key,
            amount: line.amount,
        });
    }
    let action = HoldAction::Create {
        owner: body.owner,
        lines,
        ttl_ms: ttl_ms(body.ttl),
        lock_token: lock_token(&headers)?,
    };
    step(&state, &headers, action, StatusCode::CREATED).await
}

pub(super) async fn get(
    State(state): State<Arc<AppState>>,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let request = HoldRequest {
        idempotency_key: String::new(),
        action: HoldAction::Get {
            id: object_id(path)?,
        },
    };
    let ack = state.forwarder.hold(request).await?;
    Ok((StatusCode::OK, axum::Json(HoldView::from(ack))).into_response())
}

pub(super) async fn extend(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let id = object_id(path)?;
    let body: ExtendBody = json(body)?;
    let action = HoldAction::Extend {
        id,
        ttl_ms: ttl_ms(body.ttl),
    };
    step(&state, &headers, action, StatusCode::OK).await
}

pub(super) async fn fulfil(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let action = HoldAction::Fulfil {
        id: object_id(path)?,
        lock_token: lock_token(&headers)?,
    };
    step(&state, &headers, action, StatusCode::OK).await
}

pub(super) async fn release(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    path: std::result::Result<Path<String>, PathRejection>,
) -> Result<Response> {
    let request = HoldRequest {
        idempotency_key: idempotency_key(&headers)?,
        action: HoldAction::Release {
            id: object_id(path)?,
            lock_token: lock_token(&headers)?,
        },
    };
    state.forwarder.hold(request).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
