//! Requests as HTTP (SPEC §3 and §5 paths, headers and bodies) and answers
//! as outcomes: [`send`] sends one request and classifies its answer.

use reqwest::Method;
use serde_json::{Value, json};

use super::{REQUEST_TIMEOUT, Request};
use crate::nemesis::history::{
    HoldLine, ItemState, Key, Op, Outcome, Reply, TransferLineView, TransferView, Units,
};
use crate::rest::{RestClient, RestReply, item_path};

/// The prefix of the project's problem types.
const PROBLEM: &str = "urn:shelfsync:problem:";

/// Sends one request; its outcome, and what a lock, batch or transfer
/// answer (or a refusal) carried.
pub(super) async fn send(rest: &RestClient, request: &Request) -> (Outcome, Option<Reply>) {
    let if_match = request.if_match.map(|v| format!("\"{v}\""));
    let token = request.lock_token.map(|t| t.to_string());
    let mut headers: Vec<(&str, &str)> = Vec::new();
    if let Some(key) = &request.idempotency_key {
        headers.push(("Idempotency-Key", key));
    }
    if let Some(v) = &if_match {
        headers.push(("If-Match", v));
    }
    if let Some(t) = &token {
        headers.push(("Lock-Token", t));
    }
    let (method, path, body) = http(request);
    let body = body.map(|b| b.to_string().into_bytes());
    match rest
        .clone()
        .with_timeout(REQUEST_TIMEOUT)
        .send(method, &path, &headers, body)
        .await
    {
        Ok(reply) => {
            let outcome = classify(&reply);
            let carried = match &outcome {
                Outcome::Ok { .. } => reply_of(&request.op, &reply.json),
                Outcome::Refused { .. } => problem(&reply.json),
                Outcome::Indeterminate { .. } => None,
            };
            (outcome, carried)
        }
        Err(err) => (
            Outcome::Indeterminate {
                reason: format!("{err:#}"),
            },
            None,
        ),
    }
}

/// The method, path and body of `request`.
fn http(request: &Request) -> (Method, String, Option<Value>) {
    let path = item_path(&request.key.location, &request.key.sku);
    let lock_path = format!("/v1/locks/{}/{}", request.key.location, request.key.sku);
    let ttl = |ms: &u64| format!("{ms}ms");
    match &request.op {
        Op::Read { strong: true } => (Method::GET, format!("{path}?consistency=strong"), None),
        Op::Read { strong: false } => (Method::GET, path, None),
        Op::Create { name, quantity } => (
            Method::PUT,
            path,
            Some(json!({"name": name, "quantity": quantity})),
        ),
        Op::Set { name, quantity } => (Method::PUT, path, Some(set_body(name, quantity))),
        Op::Delete => (Method::DELETE, path, None),
        Op::Add { amount }
        | Op::Remove { amount }
        | Op::Reserve { amount }
        | Op::Release { amount }
        | Op::Fulfil { amount } => {
            let name = request.op.log_kind().unwrap_or("add");
            (
                Method::POST,
                format!("{path}/{name}"),
                Some(json!({ "amount": amount })),
            )
        }
        Op::LockGrant { holder, ttl_ms } => (
            Method::POST,
            lock_path,
            Some(json!({"holder": holder, "ttl": ttl(ttl_ms)})),
        ),
        Op::LockRenew { ttl_ms, .. } => {
            (Method::PUT, lock_path, Some(json!({ "ttl": ttl(ttl_ms) })))
        }
        Op::LockRelease { .. } => (Method::DELETE, lock_path, None),
        Op::Batch { lines } => {
            let lines: Vec<Value> = lines
                .iter()
                .map(|line| {
                    let mut body = match &line.op {
                        Op::Create { name, quantity } => {
                            json!({"op": "create", "name": name, "quantity": quantity})
                        }
                        Op::Set { name, quantity } => {
                            let mut body = set_body(name, quantity);
                            body["op"] = json!("set");
                            body
                        }
                        Op::Delete => json!({"op": "delete"}),
                        op => json!({"op": op.log_kind(), "amount": op.amount()}),
                    };
                    body["location"] = json!(line.key.location);
                    body["sku"] = json!(line.key.sku);
                    if let Some(v) = line.expected_version {
                        body["expected_version"] = json!(v);
                    }
                    body
                })
                .collect();
            (
                Method::POST,
                "/v1/batch".into(),
                Some(json!({ "lines": lines })),
            )
        }
        Op::TransferCreate { from, to, lines } => (
            Method::POST,
            "/v1/transfers".into(),
            Some(json!({"from": from, "to": to, "lines": units(lines)})),
        ),
        Op::TransferReceive {
            transfer, lines, ..
        } => (
            Method::POST,
            format!("/v1/transfers/{transfer}/receive"),
            Some(json!({ "lines": units(lines) })),
        ),
        Op::TransferClose { transfer } => (
            Method::POST,
            format!("/v1/transfers/{transfer}/close"),
            Some(json!({})),
        ),
        Op::HoldCreate { lines, ttl_ms } => {
            let lines: Vec<Value> = lines
                .iter()
                .map(|l| json!({"location": l.key.location, "sku": l.key.sku, "amount": l.amount}))
                .collect();
            let owner = format!("cart-{}", request.key.sku);
            (
                Method::POST,
                "/v1/holds".into(),
                Some(json!({"lines": lines, "ttl": ttl(ttl_ms), "owner": owner})),
            )
        }
        Op::HoldFulfil { hold, .. } => (
            Method::POST,
            format!("/v1/holds/{hold}/fulfil"),
            Some(json!({})),
        ),
        Op::HoldRelease { hold, .. } => (
            Method::POST,
            format!("/v1/holds/{hold}/release"),
            Some(json!({})),
        ),
    }
}

fn set_body(name: &Option<String>, quantity: &Option<u64>) -> Value {
    let mut body = serde_json::Map::new();
    if let Some(name) = name {
        body.insert("name".into(), json!(name));
    }
    if let Some(quantity) = quantity {
        body.insert("quantity".into(), json!(quantity));
    }
    Value::Object(body)
}

fn units(lines: &[Units]) -> Vec<Value> {
    lines
        .iter()
        .map(|l| json!({"sku": l.sku, "amount": l.amount}))
        .collect()
}

/// The outcome an answer stands for (SPEC §3's status codes).
pub fn classify(reply: &RestReply) -> Outcome {
    match reply.status {
        200 | 201 => Outcome::Ok {
            item: item_state(&reply.json),
        },
        204 => Outcome::Ok { item: None },
        403 | 404 | 409 | 410 | 412 | 422 | 423 | 428 => Outcome::Refused {
            status: reply.status,
            current: item_state(&reply.json["current"]),
        },
        _ => Outcome::Indeterminate {
            reason: format!(
                "{} {}",
                reply.status,
                reply.json["type"].as_str().unwrap_or("")
            ),
        },
    }
}

/// What a 2xx answer to `op` carried besides an item.
fn reply_of(op: &Op, json: &Value) -> Option<Reply> {
    match op {
        Op::LockGrant { .. } | Op::LockRenew { .. } => Some(Reply::Lock {
            token: json["token"].as_u64()?,
            holder: json["holder"].as_str()?.to_string(),
        }),
        Op::Batch { .. } => Some(Reply::Items {
            items: json["items"].as_array()?.iter().map(item_state).collect(),
        }),
        Op::TransferCreate { .. } | Op::TransferReceive { .. } | Op::TransferClose { .. } => {
            transfer_view(json).map(Reply::Transfer)
        }
        Op::HoldCreate { .. } | Op::HoldFulfil { .. } => hold_reply(json),
        _ => None,
    }
}

/// A hold of the REST API: its id, state and lines.
fn hold_reply(json: &Value) -> Option<Reply> {
    let lines = json["lines"]
        .as_array()?
        .iter()
        .map(|l| {
            Some(HoldLine {
                key: Key::new(l["location"].as_str()?, l["sku"].as_str()?),
                amount: l["amount"].as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Reply::Hold {
        id: json["id"].as_str()?.to_string(),
        state: json["state"].as_str()?.to_string(),
        lines,
    })
}

/// A refusal's problem type and line.
fn problem(json: &Value) -> Option<Reply> {
    let kind = json["type"].as_str()?;
    Some(Reply::Problem {
        kind: kind.strip_prefix(PROBLEM).unwrap_or(kind).to_string(),
        line: json["line"].as_u64(),
    })
}

/// An item of the REST API as the checkers see it.
pub fn item_state(json: &Value) -> Option<ItemState> {
    Some(ItemState {
        name: json["name"].as_str()?.to_string(),
        quantity: json["quantity"].as_u64()?,
        reserved: json["reserved"].as_u64()?,
        version: json["version"].as_u64()?,
    })
}

/// A transfer of the REST API as the checkers see it.
pub fn transfer_view(json: &Value) -> Option<TransferView> {
    let lines = json["lines"]
        .as_array()?
        .iter()
        .map(|l| {
            Some(TransferLineView {
                sku: l["sku"].as_str()?.to_string(),
                shipped: l["shipped"].as_u64()?,
                received: l["received"].as_u64()?,
                lost: l["lost"].as_u64()?,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Some(TransferView {
        id: json["id"].as_str()?.to_string(),
        from: json["from"].as_str()?.to_string(),
        to: json["to"].as_str()?.to_string(),
        state: json["state"].as_str()?.to_string(),
        lines,
    })
}
