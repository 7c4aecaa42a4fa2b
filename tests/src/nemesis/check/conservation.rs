//! Conservation of stock (SPEC §4 guarantee 11), judged by replaying the
//! whole change log, every location's, from its first change.
//!
//! Per sku, on hand plus in transit (the sum of `quantity` over the sku's
//! items at every location, plus what transfers shipped and did not
//! receive) may change only by the ops that add or remove stock: create,
//! set (a count), add, remove, fulfil, hold_fulfil and delete. The replay
//! judges each change by its op: add, remove, fulfil and hold_fulfil move
//! the quantity by their amount; create and set leave the quantity they
//! name; a delete writes off what the item held; reserve, release, the
//! hold steps other than fulfil and the lock ops leave it alone; a
//! transfer_ship lowers `from`'s quantity by its amount and puts that in
//! transit for its transfer, a transfer_receive takes its amount out of
//! transit (never more than is there) and adds it at `to`. A change that
//! moves the sum otherwise is reported with the sku's sum before and after.
//!
//! At the end every transfer read back (`GET /v1/transfers/{id}`) must
//! agree with the log: per line, `shipped` and `received` are the sums of
//! its ship and receive changes, `received + lost <= shipped`, and what the
//! log leaves in transit is `lost` for a closed transfer and `shipped -
//! received` (with nothing lost yet) for an open one; it ships from the
//! location its ship changes are at and receives at its receipts'. Every
//! transfer the log names must have been read back.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Anomaly, fmt_change};
use crate::nemesis::history::{Change, Final, Key, TransferView};

const CHECKER: &str = "conservation";

/// What the log says of one line of a transfer.
#[derive(Debug, Default, Clone, Copy)]
struct Moved {
    shipped: u64,
    received: u64,
    in_transit: u64,
}

/// What the log says of one transfer: per sku, and where its changes were.
#[derive(Debug, Default)]
struct Logged {
    lines: BTreeMap<String, Moved>,
    from: BTreeSet<String>,
    to: BTreeSet<String>,
}

/// Replays `fin`'s change log and checks the transfers read back.
pub fn conservation(fin: &Final) -> Vec<Anomaly> {
    let mut found = Vec::new();
    // Per key, its quantity (`None`: absent).
    let mut quantity: HashMap<&Key, Option<u64>> = HashMap::new();
    let mut transfers: BTreeMap<String, Logged> = BTreeMap::new();
    for (key, c) in fin.log() {
        let before = quantity.get(key).copied().flatten();
        let after = c.quantity();
        let transit_before = in_transit(&transfers, &key.sku);
        let judged = judge(key, c, before, &mut transfers);
        quantity.insert(key, c.item.as_ref().map(|i| i.quantity));
        let stock = match judged {
            Ok(stock) => stock,
            Err(detail) => {
                let detail = format!("{detail}: {}", fmt_change(c));
                found.push(Anomaly::new(CHECKER, Some(key), detail));
                continue;
            }
        };
        let transit_after = in_transit(&transfers, &key.sku);
        let moved = i128::from(after) - i128::from(before.unwrap_or(0)) + i128::from(transit_after)
            - i128::from(transit_before);
        if moved != stock {
            let on_hand = |q: &HashMap<&Key, Option<u64>>| -> u64 {
                q.iter()
                    .filter(|(k, _)| k.sku == key.sku)
                    .filter_map(|(_, q)| *q)
                    .sum()
            };
            let mut old = quantity.clone();
            old.insert(key, before);
            found.push(Anomaly::new(
                CHECKER,
                Some(key),
                format!(
                    "{} moved on hand + in transit of {} by {moved}, its op by {stock} \
                     ({} + {transit_before} -> {} + {transit_after}): {}",
                    c.op_kind,
                    key.sku,
                    on_hand(&old),
                    on_hand(&quantity),
                    fmt_change(c)
                ),
            ));
        }
    }
    found.extend(check_transfers(&transfers, &fin.transfers));
    found
}

/// Units of `sku` in transit, over every transfer.
fn in_transit(transfers: &BTreeMap<String, Logged>, sku: &str) -> u64 {
    transfers
        .values()
        .filter_map(|t| t.lines.get(sku))
        .map(|m| m.in_transit)
        .sum()
}

/// Books a change's transfer step, and returns by how much the op may
/// change the sku's on hand + in transit (0 but for the stock ops), or why
/// the change cannot be right.
fn judge(
    key: &Key,
    c: &Change,
    existed: Option<u64>,
    transfers: &mut BTreeMap<String, Logged>,
) -> Result<i128, String> {
    let after = c.quantity();
    let before = existed.unwrap_or(0);
    let amount = || {
        c.args
            .amount
            .map(i128::from)
            .ok_or_else(|| format!("{} without an amount", c.op_kind))
    };
    Ok(match c.op_kind.as_str() {
        "create" => {
            if existed.is_some() {
                return Err(format!("create over an item holding {before}"));
            }
            if c.args.quantity.is_some_and(|q| q != after) {
                return Err(format!("create left quantity {after}"));
            }
            i128::from(after)
        }
        "set" => {
            let asked = c.args.quantity.unwrap_or(before);
            if asked != after {
                return Err(format!("set left quantity {after} where it asked {asked}"));
            }
            i128::from(after) - i128::from(before)
        }
        "add" => amount()?,
        "remove" | "fulfil" | "hold_fulfil" => -amount()?,
        "delete" => -i128::from(before),
        "reserve" | "release" | "hold" | "hold_release" | "hold_expire" | "lock_grant"
        | "lock_renew" | "lock_release" | "lock_expire" => 0,
        "transfer_ship" | "transfer_receive" => {
            let units = c
                .args
                .amount
                .ok_or_else(|| format!("{} without an amount", c.op_kind))?;
            let Some(id) = &c.args.transfer else {
                return Err(format!("{} naming no transfer", c.op_kind));
            };
            let logged = transfers.entry(id.clone()).or_default();
            let line = logged.lines.entry(key.sku.clone()).or_default();
            if c.op_kind == "transfer_ship" {
                logged.from.insert(key.location.clone());
                line.shipped += units;
                line.in_transit += units;
            } else {
                logged.to.insert(key.location.clone());
                line.received += units;
                if units > line.in_transit {
                    let left = line.in_transit;
                    line.in_transit = 0;
                    return Err(format!(
                        "received {units} of {} for {id} with {left} in transit",
                        key.sku
                    ));
                }
                line.in_transit -= units;
            }
            0
        }
        other => return Err(format!("unknown op {other:?}")),
    })
}

/// Compares each transfer read back with what the log says of it.
fn check_transfers(
    logged: &BTreeMap<String, Logged>,
    read: &[(String, Option<TransferView>)],
) -> Vec<Anomaly> {
    let mut found = Vec::new();
    let mut report = |detail: String| found.push(Anomaly::new(CHECKER, None, detail));
    let read: BTreeMap<&str, Option<&TransferView>> = read
        .iter()
        .map(|(id, view)| (id.as_str(), view.as_ref()))
        .collect();
    let empty = Logged::default();
    for (id, view) in &read {
        let log = logged.get(*id).unwrap_or(&empty);
        let Some(view) = view else {
            if logged.contains_key(*id) {
                report(format!("transfer {id} is in the log but could not be read"));
            }
            continue;
        };
        let closed = view.state == "closed";
        for (place, named, ends) in [("from", &view.from, &log.from), ("to", &view.to, &log.to)] {
            if ends.iter().any(|l| l != named) {
                report(format!(
                    "transfer {id} has {place} {named} but its changes are at {ends:?}"
                ));
            }
        }
        for line in &view.lines {
            let m = log.lines.get(&line.sku).copied().unwrap_or_default();
            let mut wrong = Vec::new();
            if line.shipped != m.shipped {
                wrong.push(format!("the log shipped {}", m.shipped));
            }
            if line.received != m.received {
                wrong.push(format!("the log received {}", m.received));
            }
            if line.received.saturating_add(line.lost) > line.shipped {
                wrong.push("received + lost exceed shipped".to_string());
            }
            let (expected_lost, left) = match closed {
                true => (m.in_transit, line.lost),
                false => (0, line.shipped.saturating_sub(line.received)),
            };
            if line.lost != expected_lost || left != m.in_transit {
                wrong.push(format!("the log left {} in transit", m.in_transit));
            }
            if !wrong.is_empty() {
                report(format!(
                    "transfer {id} ({}) line {}: shipped {} received {} lost {}, but {}",
                    view.state,
                    line.sku,
                    line.shipped,
                    line.received,
                    line.lost,
                    wrong.join(", ")
                ));
            }
        }
        for sku in log.lines.keys() {
            if !view.lines.iter().any(|l| &l.sku == sku) {
                report(format!(
                    "transfer {id} has no line {sku}, which its changes move"
                ));
            }
        }
    }
    for id in logged.keys() {
        if !read.contains_key(id.as_str()) {
            report(format!("transfer {id} is in the log but was not read back"));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::*;
    use crate::nemesis::history::OpArgs;

    fn details(found: &[Anomaly]) -> String {
        found.iter().map(|a| format!("{a}\n")).collect()
    }

    /// s1/x created with 10, s2/x with 2; t1 ships 4 from s1, 3 arrive at
    /// s2, then 1 is sold at s2 and s1 counts 7; t1 closed with 1 lost.
    fn shipped_and_received() -> Log {
        let (s1x, s2x) = (Key::new("s1", "x"), Key::new("s2", "x"));
        let mut l = Log::new();
        l.commit("s1", "c1", &[(s1x.clone(), "create", qty(10), Some(10))]);
        l.commit("s2", "c2", &[(s2x.clone(), "create", qty(2), Some(2))]);
        l.commit(
            "s1",
            "t",
            &[(s1x.clone(), "transfer_ship", tx("t3", 4), Some(6))],
        );
        l.commit(
            "s2",
            "r",
            &[(s2x.clone(), "transfer_receive", tx("t3", 3), Some(5))],
        );
        l.commit("s2", "f", &[(s2x.clone(), "remove", amt(1), Some(4))]);
        l.commit("s1", "n", &[(s1x, "set", qty(7), Some(7))]);
        l.transfer("t3", "s1", "s2", "closed", &[("x", 4, 3, 1)]);
        l
    }

    #[test]
    fn a_conserving_log_is_accepted() {
        let l = shipped_and_received();
        let found = conservation(&l.fin);
        assert!(found.is_empty(), "{}", details(&found));
    }

    #[test]
    fn stock_created_by_a_transfer_step_is_rejected() {
        // The receipt adds 4 where 3 were received: one unit from nowhere.
        let mut l = shipped_and_received();
        for c in &mut l.fin.histories[1].1[1..] {
            if let Some(item) = c.item.as_mut() {
                item.quantity += 1;
            }
        }
        let found = conservation(&l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0]
                .detail
                .starts_with("transfer_receive moved on hand + in transit of x by 1, its op by 0"),
            "{}",
            found[0]
        );
    }

    #[test]
    fn a_remove_that_takes_more_than_its_amount_is_rejected() {
        let mut l = shipped_and_received();
        if let Some(item) = l.fin.histories[1].1[2].item.as_mut() {
            item.quantity -= 1;
        }
        let found = conservation(&l.fin);
        assert!(
            found[0]
                .detail
                .starts_with("remove moved on hand + in transit of x by -2, its op by -1"),
            "{}",
            details(&found)
        );
    }

    #[test]
    fn receiving_more_than_in_transit_is_rejected() {
        let mut l = shipped_and_received();
        let s2x = Key::new("s2", "x");
        l.commit(
            "s2",
            "r2",
            &[(s2x, "transfer_receive", tx("t3", 2), Some(6))],
        );
        let found = conservation(&l.fin);
        assert!(
            found.iter().any(|a| a
                .detail
                .starts_with("received 2 of x for t3 with 1 in transit")),
            "{}",
            details(&found)
        );
    }

    #[test]
    fn a_transfer_read_back_must_agree_with_the_log() {
        // Closed with 2 lost where the log left 1 in transit.
        let mut l = shipped_and_received();
        if let Some(t) = l.fin.transfers[0].1.as_mut() {
            t.lines[0].lost = 2;
        }
        let found = conservation(&l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(
            found[0].detail.contains(
                "line x: shipped 4 received 3 lost 2, but received + lost exceed shipped, \
                 the log left 1 in transit"
            ),
            "{}",
            found[0]
        );
        // Open, received 2: the log says 3.
        let mut l = shipped_and_received();
        l.transfer("t3", "s1", "s2", "in_transit", &[("x", 4, 2, 0)]);
        let found = conservation(&l.fin);
        assert!(
            found[0]
                .detail
                .contains("the log received 3, the log left 1 in transit"),
            "{}",
            details(&found)
        );
    }

    #[test]
    fn a_transfer_in_the_log_must_be_read_back() {
        let mut l = shipped_and_received();
        l.fin.transfers[0].1 = None;
        let found = conservation(&l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.contains("could not be read"));
        l.fin.transfers.clear();
        let found = conservation(&l.fin);
        assert!(found[0].detail.contains("was not read back"));
    }

    #[test]
    fn deletes_and_counts_change_stock_and_holds_do_not() {
        let k = Key::new("s1", "y");
        let mut l = Log::new();
        l.commit("s1", "c", &[(k.clone(), "create", qty(5), Some(5))]);
        l.commit("s1", "h", &[(k.clone(), "hold", hold("h1", 2), Some(5))]);
        l.commit(
            "s1",
            "hf",
            &[(k.clone(), "hold_fulfil", hold("h1", 2), Some(3))],
        );
        l.commit("s1", "d", &[(k.clone(), "delete", OpArgs::default(), None)]);
        l.commit("s1", "c2", &[(k.clone(), "create", qty(4), Some(4))]);
        assert!(conservation(&l.fin).is_empty());
        // A hold release that drops the quantity loses stock.
        l.commit("s1", "hr", &[(k, "hold_release", hold("h2", 1), Some(3))]);
        let found = conservation(&l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("hold_release moved"));
    }

    #[test]
    fn a_create_over_a_live_item_is_rejected() {
        let k = Key::new("s1", "z");
        let mut l = Log::new();
        l.commit("s1", "c", &[(k.clone(), "create", qty(0), Some(0))]);
        l.commit("s1", "c2", &[(k, "create", qty(3), Some(3))]);
        let found = conservation(&l.fin);
        assert_eq!(found.len(), 1, "{}", details(&found));
        assert!(found[0].detail.starts_with("create over an item holding 0"));
    }
}
