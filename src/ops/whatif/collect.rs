//! The first pass: the trace's `Session` rows, counted by identical facts. A busy gateway
//! repeats itself (the same servers, senders and recipients all week), so millions of rows
//! become far fewer groups, and each group is parsed and decided once.
//!
//! A row is hashed as it comes from SQLite (borrowed, no allocation); only a row unlike
//! every row before it is copied into a new [`Group`].

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use crate::trace::facts::SessionRow;

/// Rows with identical facts.
#[derive(Debug, Clone)]
pub struct Group {
    pub client_ip: Box<str>,
    pub tls: bool,
    pub sender: Box<str>,
    pub connector: Option<Box<str>>,
    pub rule: Option<Box<str>>,
    pub stored: bool,
    pub detail: Box<str>,
    /// How many rows.
    pub count: u64,
}

impl Group {
    fn of(row: &SessionRow<'_>) -> Group {
        Group {
            client_ip: row.client_ip.into(),
            tls: row.tls,
            sender: row.sender.into(),
            connector: row.connector.map(Into::into),
            rule: row.rule.map(Into::into),
            stored: row.stored,
            detail: row.detail.into(),
            count: 0,
        }
    }

    fn matches(&self, row: &SessionRow<'_>) -> bool {
        *self.client_ip == *row.client_ip
            && self.tls == row.tls
            && *self.sender == *row.sender
            && self.connector.as_deref() == row.connector
            && self.rule.as_deref() == row.rule
            && self.stored == row.stored
            && *self.detail == *row.detail
    }
}

/// Every group of a period, and where reading stopped.
#[derive(Debug, Default)]
pub struct Collected {
    pub groups: Vec<Group>,
    /// Row hash → indexes in `groups` (several only when two different facts collide).
    index: HashMap<u64, Vec<u32>>,
    hasher: std::collections::hash_map::RandomState,
    /// Rows read.
    pub rows: u64,
    /// The highest row id read.
    pub last_id: i64,
    /// Time of the first and last row read (Unix ms; 0 when none).
    pub first_ms: i64,
    pub last_ms: i64,
}

impl Collected {
    /// Counts one row into its group.
    pub fn add(&mut self, row: &SessionRow<'_>) {
        self.rows += 1;
        self.last_id = self.last_id.max(row.id);
        if self.first_ms == 0 || row.time_ms < self.first_ms {
            self.first_ms = row.time_ms;
        }
        self.last_ms = self.last_ms.max(row.time_ms);
        let h = self.hash(row);
        let slots = self.index.entry(h).or_default();
        for &i in slots.iter() {
            let g = &mut self.groups[i as usize];
            if g.matches(row) {
                g.count += 1;
                return;
            }
        }
        let mut g = Group::of(row);
        g.count = 1;
        slots.push(u32::try_from(self.groups.len()).expect("fewer than 2^32 groups"));
        self.groups.push(g);
    }

    fn hash(&self, row: &SessionRow<'_>) -> u64 {
        let mut h = self.hasher.build_hasher();
        row.client_ip.hash(&mut h);
        row.tls.hash(&mut h);
        row.sender.hash(&mut h);
        row.connector.hash(&mut h);
        row.rule.hash(&mut h);
        row.stored.hash(&mut h);
        row.detail.hash(&mut h);
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(id: i64, sender: &'a str, detail: &'a str) -> SessionRow<'a> {
        SessionRow {
            id,
            time_ms: id * 10,
            client_ip: "192.0.2.1",
            tls: true,
            sender,
            connector: Some("Partner"),
            rule: None,
            stored: true,
            detail,
        }
    }

    #[test]
    fn identical_rows_are_one_group() {
        let mut c = Collected::default();
        c.add(&row(1, "a@x.test", "{}"));
        c.add(&row(2, "a@x.test", "{}"));
        c.add(&row(3, "b@x.test", "{}"));
        c.add(&row(4, "a@x.test", "{\"v\":1}"));
        c.add(&row(5, "a@x.test", "{}"));
        let counts: Vec<(&str, u64)> = c.groups.iter().map(|g| (&*g.sender, g.count)).collect();
        assert_eq!(counts, [("a@x.test", 3), ("b@x.test", 1), ("a@x.test", 1)]);
        assert_eq!((c.rows, c.last_id, c.first_ms, c.last_ms), (5, 5, 10, 50));
    }
}
