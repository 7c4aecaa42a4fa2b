//! Op application: the pure decision every write goes through.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use shelfsync_core::{Item, ItemKey, KeyState, Op, Precondition, apply};

fn ops(c: &mut Criterion) {
    let key = ItemKey::new("store-1", "sku-000123").unwrap();
    let state = KeyState::Live(Item {
        location: key.location.clone(),
        sku: key.sku.clone(),
        name: "Whole milk 1l".into(),
        quantity: 1_000_000,
        reserved: 10,
        version: 42,
        ..Item::default()
    });
    let mut group = c.benchmark_group("apply");
    for (name, op, expected) in [
        ("reserve", Op::Reserve { amount: 1 }, None),
        ("add_expected", Op::Add { amount: 5 }, Some(42)),
        (
            "set",
            Op::Set {
                name: None,
                quantity: Some(500),
            },
            Some(42),
        ),
        ("reserve_refused", Op::Reserve { amount: 2_000_000 }, None),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                apply(
                    black_box(&key),
                    black_box(&state),
                    black_box(&op),
                    Precondition::expecting(expected),
                    0,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, ops);
criterion_main!(benches);
