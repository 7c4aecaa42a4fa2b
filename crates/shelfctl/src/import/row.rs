//! One row of a catalog import, from CSV text to the write it calls for.
//!
//! Everything here is pure: [`Columns::from_header`] finds the four columns,
//! [`Row::parse`] validates a record with the same rules the coordinator
//! applies (so a bad row is reported with its line before any request), and
//! [`plan`] compares the row with the item as the coordinator holds it. The
//! idempotency key of a write is a hash of everything the write says, so the
//! same write sent again (a retry after a lost answer) is recognised by the
//! coordinator and applied at most once.

use csv::StringRecord;
use shelfsync_core::item::validate_name;
use shelfsync_core::{Item, ItemKey, Op};

/// The columns a catalog must have, in the order of the docs.
pub const COLUMNS: [&str; 4] = ["location", "sku", "name", "quantity"];

/// Where each column is in a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Columns {
    location: usize,
    sku: usize,
    name: usize,
    quantity: usize,
}

impl Columns {
    /// Finds the columns in the header row: all four, each once, in any
    /// order, case-insensitive, and no others (a misspelt column is an error,
    /// not ignored data).
    pub fn from_header(header: &StringRecord) -> Result<Self, String> {
        let expected = COLUMNS.join(",");
        let mut found = [None; 4];
        for (index, field) in header.iter().enumerate() {
            let name = field.to_ascii_lowercase();
            let Some(slot) = COLUMNS.iter().position(|c| *c == name) else {
                return Err(format!(
                    "unknown column {field:?} in the header; the columns are {expected}"
                ));
            };
            if found[slot].replace(index).is_some() {
                return Err(format!("column {name:?} appears twice in the header"));
            }
        }
        match found {
            [Some(location), Some(sku), Some(name), Some(quantity)] => Ok(Columns {
                location,
                sku,
                name,
                quantity,
            }),
            _ => {
                let missing: Vec<&str> = COLUMNS
                    .iter()
                    .zip(found)
                    .filter(|(_, at)| at.is_none())
                    .map(|(c, _)| *c)
                    .collect();
                Err(format!(
                    "the header row must name the columns {expected}; missing: {}",
                    missing.join(", ")
                ))
            }
        }
    }
}

/// A validated row: what the catalog says one item should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// 1-based line of the file the record starts on (the header is line 1).
    pub line: u64,
    /// The item's key.
    pub key: ItemKey,
    /// The item's name.
    pub name: String,
    /// Units on hand.
    pub quantity: u64,
}

impl Row {
    /// Validates one record; the error says what is wrong, in words.
    pub fn parse(record: &StringRecord, columns: &Columns, line: u64) -> Result<Self, String> {
        let field = |index: usize| record.get(index).unwrap_or("");
        let key =
            ItemKey::new(field(columns.location), field(columns.sku)).map_err(|e| e.to_string())?;
        let name = field(columns.name).to_string();
        validate_name(&name).map_err(|e| e.to_string())?;
        let quantity = parse_quantity(field(columns.quantity))?;
        Ok(Row {
            line,
            key,
            name,
            quantity,
        })
    }

    /// The write that [`plan`] calls for: the op and its expected version.
    pub fn write(&self, plan: Plan) -> Option<(Op, Option<u64>)> {
        match plan {
            Plan::Unchanged => None,
            Plan::Create => Some((
                Op::Create {
                    name: self.name.clone(),
                    quantity: self.quantity,
                },
                None,
            )),
            Plan::Set { expected_version } => Some((
                Op::Set {
                    name: Some(self.name.clone()),
                    quantity: Some(self.quantity),
                },
                Some(expected_version),
            )),
        }
    }

    /// The idempotency key of this row's write under `plan`: `import:` and a
    /// 128-bit hash (hex) of the op, the key, the name, the quantity, the
    /// expected version and `salt`. `salt` tells apart a create that must be
    /// made again after an identical earlier one was deleted.
    pub fn idempotency_key(&self, plan: Plan, salt: Option<u64>) -> String {
        let (kind, expected) = match plan {
            Plan::Unchanged => ("unchanged", 0),
            Plan::Create => ("create", 0),
            Plan::Set { expected_version } => ("set", expected_version),
        };
        let mut hash = Fnv128::new();
        // 0xff never occurs in UTF-8, so fields cannot run into each other.
        for text in [
            "shelfctl-import-v1",
            kind,
            &self.key.location,
            &self.key.sku,
            &self.name,
        ] {
            hash.write(text.as_bytes());
            hash.write(&[0xff]);
        }
        for number in [self.quantity, expected, salt.unwrap_or(0)] {
            hash.write(&number.to_be_bytes());
        }
        hash.write(&[u8::from(salt.is_some())]);
        format!("import:{:032x}", hash.0)
    }
}

/// Parses a quantity: a whole number from 0 up.
pub fn parse_quantity(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err("invalid quantity: must not be empty".to_string());
    }
    if let Some(rest) = text.strip_prefix('-')
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(format!("invalid quantity: {text} is negative"));
    }
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid quantity: {text:?} is not a whole number"));
    }
    text.parse()
        .map_err(|_| format!("invalid quantity: {text} is too large"))
}

/// What a row asks of the coordinator, given the item it holds now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// No live item: create it.
    Create,
    /// The item already has this name and quantity.
    Unchanged,
    /// The item differs: set name and quantity, if still at this version.
    Set {
        /// The version the item was read at.
        expected_version: u64,
    },
}

/// Compares a row with the current item.
pub fn plan(row: &Row, current: Option<&Item>) -> Plan {
    match current {
        None => Plan::Create,
        Some(item) if item.name == row.name && item.quantity == row.quantity => Plan::Unchanged,
        Some(item) => Plan::Set {
            expected_version: item.version,
        },
    }
}

/// FNV-1a with 128 bits: stable across Rust releases and platforms (unlike
/// `std`'s hasher), and wide enough that two different writes never share a
/// key in practice.
struct Fnv128(u128);

impl Fnv128 {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;

    fn new() -> Self {
        Fnv128(Self::OFFSET)
    }

    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u128::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(fields: &[&str]) -> StringRecord {
        StringRecord::from(fields.to_vec())
    }

    fn columns() -> Columns {
        Columns::from_header(&record(&COLUMNS)).unwrap()
    }

    fn row(name: &str, quantity: u64) -> Row {
        Row {
            line: 2,
            key: ItemKey::new("store-1", "milk").unwrap(),
            name: name.into(),
            quantity,
        }
    }

    #[test]
    fn header_columns_in_any_order() {
        let columns =
            Columns::from_header(&record(&["Quantity", "name", "SKU", "location"])).unwrap();
        let parsed = Row::parse(&record(&["5", "Milk", "milk", "store-1"]), &columns, 3).unwrap();
        assert_eq!(parsed.key, ItemKey::new("store-1", "milk").unwrap());
        assert_eq!(
            (parsed.name.as_str(), parsed.quantity, parsed.line),
            ("Milk", 5, 3)
        );
    }

    #[test]
    fn bad_headers_are_explained() {
        let cases: [(&[&str], &str); 4] = [
            (&["location", "sku", "name"], "missing: quantity"),
            (
                &["location", "sku", "name", "qty"],
                "unknown column \"qty\"",
            ),
            (
                &["location", "sku", "sku", "name", "quantity"],
                "appears twice",
            ),
            (&[], "missing: location, sku, name, quantity"),
        ];
        for (header, needle) in cases {
            let err = Columns::from_header(&record(header)).unwrap_err();
            assert!(err.contains(needle), "{header:?}: {err}");
        }
    }

    #[test]
    fn row_validation() {
        let ok = Row::parse(
            &record(&["store-1", "milk-1l", "Milk 1 l", "0"]),
            &columns(),
            2,
        );
        assert_eq!(ok.unwrap().quantity, 0);

        let cases: [(&[&str], &str); 10] = [
            (&["store 1", "milk", "Milk", "1"], "invalid location"),
            (
                &["", "milk", "Milk", "1"],
                "invalid location: must not be empty",
            ),
            (&["store-1", "milk/1", "Milk", "1"], "invalid sku"),
            (
                &["store-1", "milk", "", "1"],
                "invalid name: must not be empty",
            ),
            (&["store-1", "milk", "Milk\u{7}", "1"], "invalid name"),
            (&["store-1", "milk", "Milk", "-3"], "-3 is negative"),
            (
                &["store-1", "milk", "Milk", "ten"],
                "\"ten\" is not a whole number",
            ),
            (&["store-1", "milk", "Milk", "1.5"], "not a whole number"),
            (
                &["store-1", "milk", "Milk", ""],
                "invalid quantity: must not be empty",
            ),
            (
                &["store-1", "milk", "Milk", "99999999999999999999999"],
                "too large",
            ),
        ];
        for (fields, needle) in cases {
            let err = Row::parse(&record(fields), &columns(), 2).unwrap_err();
            assert!(err.contains(needle), "{fields:?}: {err}");
        }
    }

    #[test]
    fn plans_compare_name_and_quantity() {
        let item = Item {
            location: "store-1".into(),
            sku: "milk".into(),
            name: "Milk".into(),
            quantity: 10,
            reserved: 2,
            version: 7,
            ..Default::default()
        };
        assert_eq!(plan(&row("Milk", 10), None), Plan::Create);
        assert_eq!(plan(&row("Milk", 10), Some(&item)), Plan::Unchanged);
        let set = Plan::Set {
            expected_version: 7,
        };
        assert_eq!(plan(&row("Milk", 11), Some(&item)), set);
        assert_eq!(plan(&row("Oat milk", 10), Some(&item)), set);

        assert_eq!(row("Milk", 10).write(Plan::Unchanged), None);
        assert_eq!(
            row("Milk", 11).write(set),
            Some((
                Op::Set {
                    name: Some("Milk".into()),
                    quantity: Some(11)
                },
                Some(7)
            ))
        );
        let (create, expected) = row("Milk", 10).write(Plan::Create).unwrap();
        assert_eq!(expected, None);
        assert!(create.validate().is_ok());
    }

    #[test]
    fn idempotency_keys_are_deterministic_and_distinct() {
        let milk = row("Milk", 10);
        let key = milk.idempotency_key(Plan::Create, None);
        assert_eq!(key, milk.clone().idempotency_key(Plan::Create, None));
        assert!(key.starts_with("import:"));
        assert_eq!(key.len(), "import:".len() + 32);
        // Pinned: a change of the hash would break retries across versions.
        assert_eq!(key, "import:fa069dd5baa324e3c84c6f8fe25ba1c4");

        let others = [
            row("Milk", 11).idempotency_key(Plan::Create, None),
            row("Milk ", 10).idempotency_key(Plan::Create, None),
            milk.idempotency_key(
                Plan::Set {
                    expected_version: 0,
                },
                None,
            ),
            milk.idempotency_key(
                Plan::Set {
                    expected_version: 1,
                },
                None,
            ),
            milk.idempotency_key(Plan::Create, Some(0)),
            milk.idempotency_key(Plan::Create, Some(12)),
            Row {
                key: ItemKey::new("store-2", "milk").unwrap(),
                ..milk.clone()
            }
            .idempotency_key(Plan::Create, None),
        ];
        let mut all = std::collections::HashSet::from([key]);
        for other in others {
            assert!(all.insert(other.clone()), "{other} repeats");
        }
    }
}
