//! The demo's catalog and its simulated register traffic.
//!
//! [`seed`] creates [`PRODUCTS`] in every location through the coordinator
//! with the admin certificate, each create under a fixed idempotency key, so
//! a second run changes nothing: a replayed create or an item that already
//! exists both count as "already there".
//!
//! [`run`] then plays registers and handhelds: a few requests per second
//! ([`REQUEST_INTERVAL`]) to the agents' REST APIs, each a reserve, fulfil,
//! add or remove of a small amount on a random item the store may write.
//! Refusals (409 when there is not enough stock or nothing reserved) are
//! part of the game; only a [`Counter`] shows what happened.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shelfsync_core::{ItemKey, Op};
use shelfsync_proto::{Client, ErrorCode, ProtoError};
use tokio::task::JoinSet;

use crate::coordinator;

/// The catalog: `(sku, name)`, created in every location.
pub const PRODUCTS: [(&str, &str); 20] = [
    ("milk-1l", "Milk 1 l"),
    ("oat-drink-1l", "Oat drink 1 l"),
    ("bread-rye", "Rye bread"),
    ("butter-250g", "Butter 250 g"),
    ("eggs-10", "Eggs, 10 pack"),
    ("coffee-500g", "Coffee beans 500 g"),
    ("tea-green", "Green tea, 20 bags"),
    ("apples-1kg", "Apples 1 kg"),
    ("bananas-1kg", "Bananas 1 kg"),
    ("pasta-500g", "Pasta 500 g"),
    ("rice-1kg", "Rice 1 kg"),
    ("tomatoes-400g", "Chopped tomatoes 400 g"),
    ("olive-oil-750ml", "Olive oil 750 ml"),
    ("gouda-400g", "Gouda 400 g"),
    ("yogurt-500g", "Yogurt 500 g"),
    ("chocolate-100g", "Dark chocolate 100 g"),
    ("soap-bar", "Soap bar"),
    ("toothpaste-75ml", "Toothpaste 75 ml"),
    ("batteries-aa-4", "AA batteries, 4 pack"),
    ("umbrella", "Umbrella"),
];

/// Time between two simulated requests (all stores together).
pub const REQUEST_INTERVAL: Duration = Duration::from_millis(250);
/// How long one simulated request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The starting quantity of the product at `index` in [`PRODUCTS`].
fn initial_quantity(index: usize) -> u64 {
    20 + (index as u64 * 17) % 80
}

/// What [`seed`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Seeded {
    /// Items created now.
    pub created: u64,
    /// Items that were there already (an earlier run).
    pub existing: u64,
}

/// Creates every product in every one of `locations`.
pub async fn seed(client: &Arc<Client>, locations: &[String]) -> anyhow::Result<Seeded> {
    let mut tasks = JoinSet::new();
    for location in locations {
        for (index, (sku, name)) in PRODUCTS.iter().enumerate() {
            let key = ItemKey::new(location.as_str(), *sku)
                .with_context(|| format!("invalid demo item {location}/{sku}"))?;
            let op = Op::Create {
                name: (*name).to_string(),
                quantity: initial_quantity(index),
            };
            let idempotency_key = format!("demo-seed-{location}-{sku}");
            let client = client.clone();
            tasks.spawn(async move {
                let written = coordinator::write(&client, idempotency_key, &key, op, None).await;
                (key, written)
            });
        }
    }
    let mut seeded = Seeded::default();
    while let Some(joined) = tasks.join_next().await {
        let (key, written) = joined.context("a seeding task failed")?;
        match written {
            Ok(ack) if !ack.replayed => seeded.created += 1,
            Ok(_) => seeded.existing += 1,
            Err(ProtoError::Refused(err)) if err.code == ErrorCode::AlreadyExists => {
                seeded.existing += 1;
            }
            Err(err) => return Err(err).with_context(|| format!("cannot create {key}")),
        }
    }
    Ok(seeded)
}

/// A store agent the traffic goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://host:port` of its REST API.
    pub url: String,
    /// The locations it may write.
    pub locations: Vec<String>,
}

/// Counts of the simulated requests so far.
#[derive(Debug, Default)]
pub struct Counter {
    ok: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
}

impl Counter {
    /// `"42 requests: 40 ok, 2 refused, 0 failed"`.
    pub fn summary(&self) -> String {
        let ok = self.ok.load(Ordering::Relaxed);
        let refused = self.refused.load(Ordering::Relaxed);
        let failed = self.failed.load(Ordering::Relaxed);
        format!(
            "{} requests: {ok} ok, {refused} refused (stock rules), {failed} failed",
            ok + refused + failed
        )
    }
}

/// One simulated request: `POST {url}/v1/items/{location}/{sku}/{op}` with
/// `{"amount": amount}`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Request {
    url: String,
    op: &'static str,
    amount: u64,
}

/// A random request to a random target: reserve and fulfil most often, as
/// orders come in and are picked; add (a delivery) and remove (a loss) less.
fn pick(rng: &mut impl Rng, targets: &[Target]) -> Option<Request> {
    let target = targets.get(rng.random_range(0..targets.len().max(1)))?;
    let location = target
        .locations
        .get(rng.random_range(0..target.locations.len().max(1)))?;
    let (sku, _) = PRODUCTS[rng.random_range(0..PRODUCTS.len())];
    let (op, amount) = match rng.random_range(0..20) {
        0..8 => ("reserve", rng.random_range(1..=3)),
        8..13 => ("fulfil", 1),
        13..17 => ("add", rng.random_range(1..=10)),
        _ => ("remove", 1),
    };
    Some(Request {
        url: format!("{}/v1/items/{location}/{sku}/{op}", target.url),
        op,
        amount,
    })
}

/// Sends simulated requests to `targets` until the future is dropped.
pub async fn run(targets: Vec<Target>, counter: Arc<Counter>) -> anyhow::Result<Infallible> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("cannot build an HTTP client")?;
    let mut rng = StdRng::from_os_rng();
    let mut ticks = tokio::time::interval(REQUEST_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(request) = pick(&mut rng, &targets) else {
            continue;
        };
        let sent = http
            .post(&request.url)
            .json(&serde_json::json!({ "amount": request.amount }))
            .send()
            .await;
        let count = match sent {
            Ok(reply) if reply.status().is_success() => &counter.ok,
            Ok(reply) if reply.status().is_client_error() => &counter.refused,
            _ => &counter.failed,
        };
        count.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalog_has_valid_distinct_keys() {
        let mut skus: Vec<&str> = PRODUCTS.iter().map(|(sku, _)| *sku).collect();
        for (index, (sku, _)) in PRODUCTS.iter().enumerate() {
            ItemKey::new("online", *sku).unwrap();
            assert!(initial_quantity(index) >= 20);
        }
        skus.sort_unstable();
        skus.dedup();
        assert_eq!(skus.len(), PRODUCTS.len());
    }

    #[test]
    fn requests_go_to_writable_locations_with_small_amounts() {
        let targets = vec![
            Target {
                url: "http://127.0.0.1:1".into(),
                locations: vec!["store-1".into(), "online".into()],
            },
            Target {
                url: "http://127.0.0.1:2".into(),
                locations: vec!["store-2".into(), "online".into()],
            },
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut ops = std::collections::BTreeSet::new();
        for _ in 0..500 {
            let request = pick(&mut rng, &targets).unwrap();
            let ok = request
                .url
                .starts_with("http://127.0.0.1:1/v1/items/store-1/")
                || request
                    .url
                    .starts_with("http://127.0.0.1:2/v1/items/store-2/")
                || request.url.contains("/v1/items/online/");
            assert!(ok, "{request:?}");
            assert!(request.url.ends_with(&format!("/{}", request.op)));
            assert!((1..=10).contains(&request.amount), "{request:?}");
            ops.insert(request.op);
        }
        assert_eq!(
            ops.into_iter().collect::<Vec<_>>(),
            ["add", "fulfil", "remove", "reserve"]
        );
        assert_eq!(pick(&mut rng, &[]), None);
    }

    #[test]
    fn the_counter_sums_up() {
        let counter = Counter::default();
        counter.ok.fetch_add(3, Ordering::Relaxed);
        counter.refused.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            counter.summary(),
            "4 requests: 3 ok, 1 refused (stock rules), 0 failed"
        );
    }
}
