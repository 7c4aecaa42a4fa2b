//! `POST /v1/batch`: writes to several items as one commit at the
//! coordinator, every line or none (SPEC §5 "Batches"). One
//! `Idempotency-Key` covers the whole batch.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use shelfsync_core::{ItemKey, Op};
use shelfsync_proto::{BatchLine, BatchRequest, MAX_BATCH_LINES};

use super::{AppState, ItemView, Problem, Result, idempotency_key, json};

/// One line as a client sends it: the key, the op by name and that op's
/// fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LineBody {
    location: String,
    sku: String,
    op: String,
    name: Option<String>,
    quantity: Option<u64>,
    amount: Option<u64>,
    expected_version: Option<u64>,
    lock_token: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    lines: Vec<LineBody>,
}

/// Every line's item after the batch (`null` for a deleted one).
#[derive(Serialize)]
struct BatchItems {
    items: Vec<Option<ItemView>>,
}

/// The op a line names, with the fields it needs.
fn op_of(line: &LineBody) -> std::result::Result<Op, String> {
    let amount = || {
        line.amount
            .ok_or_else(|| format!("{} needs `amount`", line.op))
    };
    Ok(match line.op.as_str() {
        "create" => match (&line.name, line.quantity) {
            (Some(name), Some(quantity)) => Op::Create {
                name: name.clone(),
                quantity,
            },
            _ => return Err("create needs `name` and `quantity`".into()),
        },
        "set" => Op::Set {
            name: line.name.clone(),
            quantity: line.quantity,
        },
        "delete" => Op::Delete,
        other => Op::with_amount(other, amount()?).ok_or_else(|| {
            format!(
                "no operation {other:?}; use create, set, add, remove, reserve, release, fulfil \
                 or delete"
            )
        })?,
    })
}

/// The lines as the coordinator takes them; a bad line is a 422 naming it.
fn lines(body: BatchBody) -> Result<Vec<BatchLine>> {
    if !(1..=MAX_BATCH_LINES).contains(&body.lines.len()) {
        return Err(Problem::invalid(format!(
            "a batch has 1 to {MAX_BATCH_LINES} lines, not {}",
            body.lines.len()
        )));
    }
    let mut out: Vec<BatchLine> = Vec::with_capacity(body.lines.len());
    for (index, line) in body.lines.into_iter().enumerate() {
        let at_line = |detail: String| Problem::invalid(detail).at_line(index);
        let key = ItemKey::new(&line.location, &line.sku).map_err(|e| at_line(e.to_string()))?;
        if out.iter().any(|earlier| earlier.key == key) {
            return Err(at_line(format!("{key} is in the batch twice")));
        }
        let op = op_of(&line).map_err(at_line)?;
        op.validate().map_err(|e| at_line(e.to_string()))?;
        out.push(BatchLine {
            key,
            op,
            expected_version: line.expected_version,
            lock_token: line.lock_token,
        });
    }
    Ok(out)
}

pub(super) async fn post(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response> {
    let lines = lines(json(body)?)?;
    let request = BatchRequest {
        idempotency_key: idempotency_key(&headers)?,
        lines,
    };
    let ack = state.forwarder.batch(request).await?;
    let items = ack
        .states
        .iter()
        .map(|state| state.item().map(ItemView::from))
        .collect();
    Ok((StatusCode::OK, axum::Json(BatchItems { items })).into_response())
}
