//! Tests of the read side's paging.

use shelfsync_ledger::contract;
use shelfsync_ledger::engine::MemoryLedger;

use super::*;

/// s1 and s2 written at seqs 1..=6, with 3..=5 one commit over both.
fn ledger() -> MemoryLedger {
    let ledger = MemoryLedger::new(contract::BUCKETS).unwrap();
    let writes = [
        (1, "s1"),
        (2, "s2"),
        (3, "s1"),
        (4, "s2"),
        (5, "s1"),
        (6, "s2"),
    ]
    .into_iter()
    .map(|(seq, location)| {
        let mut w = contract::put(seq, &contract::key(location, &format!("k{seq}")), 1, 1);
        if (3..=5).contains(&seq) {
            w.change.commit_end = 5;
        }
        w
    })
    .collect();
    contract::commit_puts(&ledger, writes);
    ledger
}

fn page(locations: &[&str], after: u64, limit: usize) -> (Vec<u64>, u64) {
    let locations: Vec<String> = locations.iter().map(|l| l.to_string()).collect();
    let (changes, next) = changes_page(&ledger(), &locations, after, 6, limit).unwrap();
    (changes.iter().map(|c| c.seq).collect(), next)
}

#[test]
fn a_page_merges_locations_in_seq_order() {
    assert_eq!(page(&["s1", "s2"], 0, 10), (vec![1, 2, 3, 4, 5, 6], 6));
    assert_eq!(page(&["s2"], 0, 10), (vec![2, 4, 6], 6));
    assert_eq!(page(&["s1", "s2"], 4, 10), (vec![5, 6], 6));
    assert_eq!(page(&["nowhere"], 0, 10), (vec![], 6));
}

#[test]
fn a_page_never_ends_inside_a_commit() {
    // Cut at 3, inside the commit 3..=5: the page takes it whole.
    assert_eq!(page(&["s1", "s2"], 0, 3), (vec![1, 2, 3, 4, 5], 5));
    // One location: its part of the commit (3, 5) stays together.
    assert_eq!(page(&["s1"], 0, 2), (vec![1, 3, 5], 5));
    // A cut after the commit needs no more.
    assert_eq!(page(&["s1", "s2"], 0, 2), (vec![1, 2], 2));
}
