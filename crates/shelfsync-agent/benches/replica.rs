//! Replica page apply: one sync page of 1000 changes into sled, a bootstrap
//! of 200 snapshot pages of 1,000 items into an empty replica and into one
//! that holds them, and a local read of a key with a record of its own and
//! of one a chunk holds.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

/// The agent's allocator, so that allocation costs as in the agent.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shelfsync_agent::replica::Replica;
use shelfsync_core::{Item, ItemKey, KeyState, Op};
use shelfsync_proto::Change;

fn page(round: u64) -> Vec<Change> {
    (0..1000)
        .map(|i| {
            let item = Item {
                location: "store-1".into(),
                sku: format!("sku-{i:06}"),
                name: "Whole milk 1l".into(),
                quantity: 100 + round,
                reserved: 0,
                version: round + 1,
                ..Default::default()
            };
            Change {
                seq: round * 1000 + i + 1,
                key: item.key(),
                state: KeyState::Live(item),
                op: Op::Add { amount: 1 },
                store: "store-1".into(),
                idempotency_key: format!("k-{i}"),
                at_ms: 0,
                commit_end: 0,
            }
        })
        .collect()
}

fn snapshot_page(page: u64) -> (Vec<Item>, Option<ItemKey>) {
    let items: Vec<Item> = (0..1000)
        .map(|i| Item {
            location: "store-1".into(),
            sku: format!("sku-{:08}", page * 1000 + i),
            name: "Whole milk 1l".into(),
            quantity: 100,
            version: 1,
            ..Default::default()
        })
        .collect();
    let next = items.last().map(Item::key);
    (items, next)
}

/// 200,000 items in 200 pages into an empty replica, as an agent's first
/// bootstrap applies them (every page a batch of its own).
fn bootstrap(c: &mut Criterion) {
    const PAGES: u64 = 200;
    let mut group = c.benchmark_group("replica");
    group.sample_size(10);
    group.throughput(Throughput::Elements(PAGES * 1000));
    group.bench_function("bootstrap_200_pages_of_1000", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let replica = Replica::open(dir.path()).unwrap();
                let pages: Vec<_> = (0..PAGES).map(snapshot_page).collect();
                (dir, replica, pages)
            },
            |(dir, replica, pages)| {
                bootstrap_into(&replica, pages);
                (dir, replica)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    // The same into a replica that holds them already (a cursor that
    // expired): the sweep at the end reads every key again.
    group.bench_function("rebootstrap_200_pages_of_1000", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let replica = Replica::open(dir.path()).unwrap();
                bootstrap_into(&replica, (0..PAGES).map(snapshot_page).collect());
                replica.reset_cursor().unwrap();
                let pages: Vec<_> = (0..PAGES).map(snapshot_page).collect();
                (dir, replica, pages)
            },
            |(dir, replica, pages)| {
                bootstrap_into(&replica, pages);
                (dir, replica)
            },
            criterion::BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn bootstrap_into(replica: &Replica, pages: Vec<(Vec<Item>, Option<ItemKey>)>) {
    replica.begin_bootstrap(1).unwrap();
    let last = pages.len() - 1;
    for (i, (items, next)) in pages.into_iter().enumerate() {
        let next = if i == last { None } else { next };
        replica.apply_snapshot_page(items, next, 1).unwrap();
    }
}

fn replica(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let replica = Replica::open(dir.path()).unwrap();
    let mut round = 0;
    let mut group = c.benchmark_group("replica");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("apply_changes_page_1000", |b| {
        b.iter_batched(
            || {
                round += 1;
                (page(round), round * 1000 + 1000)
            },
            |(changes, next)| replica.apply_changes(&changes, next, None).unwrap(),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
    let key = ItemKey::new("store-1", "sku-000500").unwrap();
    c.bench_function("replica_get", |b| b.iter(|| replica.get(black_box(&key))));

    // A key no change has written since the bootstrap: its chunk's item.
    let dir = tempfile::tempdir().unwrap();
    let chunked = Replica::open(dir.path()).unwrap();
    chunked.begin_bootstrap(1).unwrap();
    for page in 0..10 {
        let (items, next) = snapshot_page(page);
        chunked
            .apply_snapshot_page(items, next.filter(|_| page < 9), 1)
            .unwrap();
    }
    let key = ItemKey::new("store-1", "sku-00005017").unwrap();
    assert!(chunked.get(&key).unwrap().is_some());
    c.bench_function("replica_get_chunked", |b| {
        b.iter(|| chunked.get(black_box(&key)))
    });
}

criterion_group!(benches, replica, bootstrap);
criterion_main!(benches);
