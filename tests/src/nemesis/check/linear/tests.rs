//! Tests of the linearizability checker: known-bad histories it must
//! reject, valid ones (hand-written and random) it must accept.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::nemesis::check::testkit::*;
use crate::nemesis::history::Outcome;

fn verdict(h: &H) -> Vec<Anomaly> {
    linearizable(&h.events)
}

fn assert_ok(h: &H) {
    let anomalies = verdict(h);
    assert!(anomalies.is_empty(), "{}", anomalies[0]);
}

fn assert_rejected(h: &H) -> String {
    let anomalies = verdict(h);
    assert_eq!(anomalies.len(), 1, "{anomalies:#?}");
    assert_eq!(anomalies[0].checker, "linearizable");
    assert_eq!(anomalies[0].key, Some(key()));
    let detail = anomalies[0].detail.clone();
    assert!(detail.starts_with("not linearizable"), "{detail}");
    detail
}

/// `create 10` acknowledged as version 1 at [0, 10].
fn created() -> H {
    let mut h = H::new();
    h.write(1, create(10), 0, 10).ok(it(10, 0, 1));
    h
}

#[test]
fn a_sequential_history_is_accepted() {
    let mut h = created();
    h.write(1, add(5), 20, 30).ok(it(15, 0, 2));
    h.write(2, reserve(4), 40, 50).ok(it(15, 4, 3));
    h.write(2, remove(12), 60, 70).refused(409);
    h.read(3, true, 80, 90).ok(it(15, 4, 3));
    assert_ok(&h);
}

#[test]
fn a_stale_strong_read_after_an_acknowledged_write_is_rejected() {
    let mut h = created();
    h.write(1, set_q(7), 20, 30).if_match(1).ok(it(7, 0, 2));
    h.read(2, true, 40, 50).ok(it(10, 0, 1));
    let detail = assert_rejected(&h);
    assert!(detail.contains("#2 c2@s1 strong read"), "{detail}");
    assert!(detail.contains("q=7 r=0 v=2"), "{detail}");
}

#[test]
fn a_read_showing_the_quantity_before_an_acknowledged_add_is_rejected() {
    // The add was acknowledged, then lost: a later read shows the old count.
    let mut h = created();
    h.write(1, add(5), 20, 30).ok(it(15, 0, 2));
    h.read(2, true, 40, 50).ok(it(10, 0, 1));
    assert_rejected(&h);
}

#[test]
fn two_writes_with_the_same_version_are_rejected() {
    let mut h = created();
    h.write(1, add(1), 20, 30).ok(it(11, 0, 2));
    h.write(2, add(2), 20, 30).ok(it(12, 0, 2));
    assert_rejected(&h);
}

#[test]
fn a_write_acknowledged_before_another_was_sent_must_come_first() {
    let mut h = created();
    h.write(1, add(1), 20, 30).ok(it(12, 0, 3));
    h.write(2, add(1), 40, 50).ok(it(11, 0, 2));
    assert_rejected(&h);
}

#[test]
fn a_refusal_the_state_does_not_explain_is_rejected() {
    let mut h = created();
    h.write(1, remove(3), 20, 30).refused(409);
    assert_rejected(&h);
}

#[test]
fn concurrent_writes_may_be_ordered_either_way() {
    for first_is_a in [true, false] {
        let mut h = created();
        let (a, b) = if first_is_a {
            (it(11, 0, 2), it(13, 0, 3))
        } else {
            (it(13, 0, 3), it(12, 0, 2))
        };
        h.write(1, add(1), 20, 50).ok(a);
        h.write(2, add(2), 25, 40).ok(b);
        h.read(3, true, 60, 70).ok(it(13, 0, 3));
        assert_ok(&h);
    }
}

#[test]
fn a_read_overlapping_a_write_may_see_either_value() {
    for seen in [it(10, 0, 1), it(15, 0, 2)] {
        let mut h = created();
        h.write(1, add(5), 20, 50).ok(it(15, 0, 2));
        h.read(2, true, 30, 40).ok(seen);
        assert_ok(&h);
    }
    // But not a value no order produces.
    let mut h = created();
    h.write(1, add(5), 20, 50).ok(it(15, 0, 2));
    h.read(2, true, 30, 40).ok(it(14, 0, 2));
    assert_rejected(&h);
}

#[test]
fn an_indeterminate_write_that_took_effect_is_accepted() {
    let mut h = created();
    h.write(1, add(5), 20, 30).indet();
    h.read(2, true, 1_000, 1_010).ok(it(15, 0, 2));
    h.write(2, add(1), 1_020, 1_030).ok(it(16, 0, 3));
    assert_ok(&h);
}

#[test]
fn an_indeterminate_write_that_took_effect_late_is_accepted() {
    // A delayed duplicate datagram may apply it after the client gave up.
    let mut h = created();
    h.write(1, add(5), 20, 30).indet();
    h.read(2, true, 40, 50).ok(it(10, 0, 1));
    h.read(2, true, 60, 70).ok(it(15, 0, 2));
    assert_ok(&h);
}

#[test]
fn an_indeterminate_write_that_did_not_take_effect_is_accepted() {
    let mut h = created();
    h.write(1, add(5), 20, 30).indet();
    h.write(1, remove(20), 35, 38).indet(); // refused by the model anyway
    h.read(2, true, 40, 50).ok(it(10, 0, 1));
    h.write(2, add(1), 60, 70).ok(it(11, 0, 2));
    assert_ok(&h);
}

#[test]
fn an_indeterminate_write_cannot_explain_an_impossible_value() {
    let mut h = created();
    h.write(1, add(5), 20, 30).indet();
    h.read(2, true, 40, 50).ok(it(20, 0, 3));
    assert_rejected(&h);
}

#[test]
fn an_indeterminate_write_cannot_take_effect_before_it_was_sent() {
    let mut h = created();
    h.read(2, true, 20, 30).ok(it(15, 0, 2));
    h.write(1, add(5), 40, 50).indet();
    assert_rejected(&h);
}

#[test]
fn delete_and_create_again_continue_the_versions() {
    let mut h = created();
    h.write(1, delete(), 20, 30).if_match(1).deleted();
    h.read(2, true, 40, 50).refused(404);
    h.write(1, create(3), 60, 70).ok(it(3, 0, 3));
    h.write(2, delete(), 80, 90).if_match(2).refused(412);
    assert_ok(&h);
}

#[test]
fn local_reads_replays_and_unmodeled_refusals_are_not_judged_here() {
    let mut h = created();
    h.read(2, false, 20, 30).ok(it(99, 0, 9));
    h.replay(0, 40, 50).ok(it(10, 0, 7));
    h.write(3, add(1), 60, 70).refused(429);
    h.read(4, true, 80, 90).indet();
    assert_ok(&h);
}

#[test]
fn keys_are_checked_independently() {
    let other = crate::nemesis::history::Key::new("loc", "b");
    let mut h = created();
    h.write(1, create(1), 5, 15)
        .on(other.clone())
        .ok(it(1, 0, 1));
    h.read(2, true, 20, 30).on(other.clone()).ok(it(1, 0, 1));
    assert_ok(&h);
    h.read(2, true, 40, 50).on(other.clone()).ok(it(10, 0, 1));
    let anomalies = verdict(&h);
    assert_eq!(anomalies.len(), 1);
    assert_eq!(anomalies[0].key, Some(other));
}

#[test]
fn a_search_past_its_budget_is_undecided_not_passed() {
    let mut h = created();
    h.read(2, true, 20, 30).ok(it(10, 0, 1));
    let anomalies = linearizable_with_budget(&h.events, 1);
    assert_eq!(anomalies.len(), 1);
    assert!(
        anomalies[0].detail.starts_with("undecided:"),
        "{}",
        anomalies[0]
    );
}

#[test]
fn random_valid_histories_are_accepted() {
    // 2,000 ops by 10 clients, ~4% indeterminate; and by 16, ~10%.
    for (seed, clients, indet_per_mille) in [(1, 10, 40), (2, 10, 40), (3, 10, 40), (4, 16, 100)] {
        let events = random_history(seed, 2_000, clients, indet_per_mille);
        let indet = events.iter().filter(|e| !e.outcome.is_definite()).count();
        assert!(indet > 40, "seed {seed}: only {indet} indeterminate ops");
        let started = std::time::Instant::now();
        let anomalies = linearizable(&events);
        eprintln!("seed {seed}: checked in {:?}", started.elapsed());
        assert!(anomalies.is_empty(), "seed {seed}: {}", anomalies[0]);
    }
}

#[test]
fn random_histories_with_one_answer_changed_are_rejected() {
    for seed in 1..=4 {
        let mut events = random_history(seed, 1_000, 8, 20);
        // Change the quantity a strong read saw, in the middle of the run.
        let read = events
            .iter_mut()
            .skip(500)
            .find(|e| {
                e.op == Op::Read { strong: true }
                    && matches!(e.outcome, Outcome::Ok { item: Some(_) })
            })
            .unwrap();
        let Outcome::Ok { item: Some(item) } = &mut read.outcome else {
            unreachable!()
        };
        item.quantity += 1_000;
        let anomalies = linearizable(&events);
        assert_eq!(anomalies.len(), 1, "seed {seed}");
        assert!(
            anomalies[0].detail.starts_with("not linearizable"),
            "{}",
            anomalies[0]
        );
    }
}
