//! Replica page apply: one sync page of 1000 changes into sled, and a local read.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

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
}

criterion_group!(benches, replica);
criterion_main!(benches);
