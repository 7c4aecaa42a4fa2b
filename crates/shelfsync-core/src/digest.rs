//! The replica digest: one number that summarises a set of items, so that
//! an agent and the coordinator can check they hold the same state without
//! shipping it.
//!
//! The digest of a set is the wrapping sum of a 64-bit FNV-1a hash of each
//! live item, so it does not depend on order and can be kept up to date one
//! item at a time: add the new item's hash, subtract the old one's.
//!
//! The fields that came after `version` (`held`, `allowance`, `lock`) are
//! hashed only when one of them is set, so an item without them hashes as
//! it did before they existed and digests kept by earlier builds stay right.

use crate::item::Item;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The hash of one item over every field, with separators so that field
/// boundaries cannot shift.
pub fn item_hash(item: &Item) -> u64 {
    let mut h = FNV_OFFSET;
    for field in [&item.location, &item.sku, &item.name] {
        h = fnv(h, field.as_bytes());
        h = fnv(h, &[0xff]);
    }
    for number in [item.quantity, item.reserved, item.version] {
        h = fnv(h, &number.to_be_bytes());
    }
    if item.held != 0 || item.allowance != 0 || item.lock.is_some() {
        for number in [item.held, item.allowance] {
            h = fnv(h, &number.to_be_bytes());
        }
        if let Some(lock) = &item.lock {
            h = fnv(h, lock.holder.as_bytes());
            h = fnv(h, &[0xff]);
            for number in [lock.token, lock.expires_at_ms] {
                h = fnv(h, &number.to_be_bytes());
            }
        }
    }
    h
}

/// An order-independent digest of a set of items, kept incrementally.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Digest {
    /// Wrapping sum of item hashes.
    pub sum: u64,
    /// Number of items.
    pub count: u64,
}

impl Digest {
    /// Accounts for an item entering the set.
    pub fn add(&mut self, item: &Item) {
        self.sum = self.sum.wrapping_add(item_hash(item));
        self.count = self.count.wrapping_add(1);
    }

    /// Accounts for an item leaving the set.
    pub fn remove(&mut self, item: &Item) {
        self.sum = self.sum.wrapping_sub(item_hash(item));
        self.count = self.count.wrapping_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(sku: &str, quantity: u64) -> Item {
        Item {
            location: "s1".into(),
            sku: sku.into(),
            name: "n".into(),
            quantity,
            version: 1,
            ..Item::default()
        }
    }

    #[test]
    fn order_independent_and_incremental() {
        let (a, b) = (item("a", 1), item("b", 2));
        let mut x = Digest::default();
        x.add(&a);
        x.add(&b);
        let mut y = Digest::default();
        y.add(&b);
        y.add(&a);
        assert_eq!(x, y);
        y.remove(&a);
        let mut z = Digest::default();
        z.add(&b);
        assert_eq!(y, z);
    }

    #[test]
    fn any_field_changes_the_hash() {
        let base = item("a", 1);
        let mut other = base.clone();
        other.quantity = 2;
        assert_ne!(item_hash(&base), item_hash(&other));
        let shifted = Item {
            location: "s".into(),
            sku: "1a".into(),
            ..base.clone()
        };
        assert_ne!(item_hash(&base), item_hash(&shifted));
        let changes: [fn(&mut Item); 3] = [
            |i| i.held = 1,
            |i| i.allowance = 1,
            |i| {
                i.lock = Some(crate::lock::Lock {
                    holder: "c1".into(),
                    token: 1,
                    expires_at_ms: 1,
                })
            },
        ];
        for change in changes {
            let mut other = base.clone();
            change(&mut other);
            assert_ne!(item_hash(&base), item_hash(&other), "{other:?}");
        }
    }

    /// The hash of an item without held, allowance or lock is the one
    /// earlier builds computed, so their stored digests stay valid.
    #[test]
    fn items_without_the_new_fields_hash_as_before() {
        // Computed with the hash as it was before those fields.
        assert_eq!(item_hash(&item("a", 1)), 0xdccc_d25a_a1b2_8fb1);
    }
}
