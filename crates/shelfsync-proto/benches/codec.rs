//! Message encode and decode: every request and answer crosses here.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use shelfsync_core::{Item, ItemKey, KeyState, Op};
use shelfsync_proto::codec::{decode, encode};
use shelfsync_proto::{Change, ChangesPage, Request, Response, WriteRequest};

fn item(i: u64) -> Item {
    Item {
        location: "store-1".into(),
        sku: format!("sku-{i:06}"),
        name: "Whole milk 1l".into(),
        quantity: 100 + i,
        reserved: 3,
        version: 7,
        ..Default::default()
    }
}

fn codec(c: &mut Criterion) {
    let write = Request::Write(WriteRequest {
        idempotency_key: "0b6f1c1e-6d1a-4c53-9d55-7a0f4a1f3a9e".into(),
        key: ItemKey::new("store-1", "sku-000123").unwrap(),
        op: Op::Reserve { amount: 1 },
        expected_version: Some(7),
        lock_token: None,
    });
    let page = Response::Changes(ChangesPage {
        changes: (0..1000)
            .map(|i| Change {
                seq: i,
                key: item(i).key(),
                state: KeyState::Live(item(i)),
                op: Op::Add { amount: 1 },
                store: "store-1".into(),
                idempotency_key: format!("k-{i}"),
                at_ms: 1_800_000_000_000,
                commit_end: 0,
            })
            .collect(),
        next: 1000,
        head: 5000,
        transfers_at: 0,
    });
    let mut group = c.benchmark_group("codec");
    group.bench_function("encode_write", |b| b.iter(|| encode(black_box(&write))));
    let bytes = encode(&write).unwrap();
    group.bench_function("decode_write", |b| {
        b.iter(|| decode::<Request>(black_box(&bytes)))
    });
    let bytes = encode(&page).unwrap();
    group.throughput(Throughput::Elements(1000));
    group.bench_function("encode_changes_page_1000", |b| {
        b.iter(|| encode(black_box(&page)))
    });
    group.bench_function("decode_changes_page_1000", |b| {
        b.iter(|| decode::<Response>(black_box(&bytes)))
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
