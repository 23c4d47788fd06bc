//! The first pass: the trace's `Session` rows, each reduced to what a decision and the
//! report need and counted with its like. A recipient keeps only its domain (and a local
//! part that is `postmaster` or carries a route), a certificate only its names and
//! verdict; the sender is kept whole (the report names senders). A busy gateway repeats
//! itself — the same servers, senders and recipient domains all week — so millions of
//! rows become far fewer groups, each parsed and decided once.
//!
//! A group is a handful of numbers: its strings (senders, connectors, rules, reduced
//! facts) are stored once each, so the admin API can keep a week's groups between
//! previews.

use std::hash::BuildHasher;
use std::net::IpAddr;

use foldhash::HashMap;

use crate::trace::facts::{CertFacts, SessionRow, TxFacts};

/// Strings stored once, by number: looked up by their hash, compared on a hit (two
/// strings with the same hash are rare; they are told apart through `collisions`).
#[derive(Debug, Default)]
struct Strings {
    all: Vec<Box<str>>,
    by_hash: HashMap<u64, u32>,
    collisions: HashMap<u64, Vec<u32>>,
    // Seeded per process: senders come from the internet, collisions must not be made to order.
    hasher: foldhash::fast::RandomState,
}

impl Strings {
    fn id(&mut self, s: &str) -> u32 {
        let h = self.hasher.hash_one(s);
        match self.by_hash.get(&h) {
            Some(&i) if *self.all[i as usize] == *s => i,
            Some(_) => {
                let others = self.collisions.entry(h).or_default();
                if let Some(&i) = others.iter().find(|&&i| *self.all[i as usize] == *s) {
                    return i;
                }
                let i = u32::try_from(self.all.len()).expect("fewer than 2^32 strings");
                others.push(i);
                self.all.push(s.into());
                i
            }
            None => {
                let i = u32::try_from(self.all.len()).expect("fewer than 2^32 strings");
                self.by_hash.insert(h, i);
                self.all.push(s.into());
                i
            }
        }
    }

    fn get(&self, i: u32) -> &str {
        &self.all[i as usize]
    }
}

/// The reduced facts of a row: everything but the time and the ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RowKey {
    ip: IpAddr,
    tls: bool,
    stored: bool,
    sender: u32,
    connector: Option<u32>,
    rule: Option<u32>,
    /// The reduced `TxFacts`, as JSON.
    facts: u32,
}

/// Rows with the same reduced facts, as the replay reads them. The `*_id`s number the
/// strings: equal ids, equal strings.
#[derive(Debug, Clone, Copy)]
pub struct Group<'c> {
    pub sender_id: u32,
    pub rule_id: Option<u32>,
    pub facts_id: u32,
    pub client_ip: IpAddr,
    pub tls: bool,
    /// The message was stored.
    pub stored: bool,
    /// Empty for the null sender.
    pub sender: &'c str,
    pub connector: Option<&'c str>,
    /// The rule that refused MAIL FROM or DATA.
    pub rule: Option<&'c str>,
    /// The reduced facts (`TxFacts` JSON: recipients reduced, see the module documentation).
    pub facts: &'c str,
    /// How many rows.
    pub count: u64,
}

/// Every group of a period, and where reading stopped.
#[derive(Debug, Default)]
pub struct Collected {
    groups: HashMap<RowKey, u64>,
    strings: Strings,
    /// Rows read.
    pub rows: u64,
    /// Rows in another format (skipped).
    pub unreadable: u64,
    /// The highest row id read.
    pub last_id: i64,
}

impl Collected {
    /// Counts one row into its group.
    pub fn add(&mut self, row: &SessionRow<'_>) {
        self.rows += 1;
        self.last_id = self.last_id.max(row.id);
        let (Ok(ip), Some(facts)) = (row.client_ip.parse(), TxFacts::parse(row.detail)) else {
            self.unreadable += 1;
            return;
        };
        let facts = reduce(&facts).to_json();
        let key = RowKey {
            ip,
            tls: row.tls,
            stored: row.stored,
            sender: self.strings.id(row.sender),
            connector: row.connector.map(|c| self.strings.id(c)),
            rule: row.rule.map(|r| self.strings.id(r)),
            facts: self.strings.id(&facts),
        };
        *self.groups.entry(key).or_default() += 1;
    }

    /// How many groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Every group.
    pub fn groups(&self) -> impl Iterator<Item = Group<'_>> {
        let s = &self.strings;
        self.groups.iter().map(move |(k, &count)| Group {
            sender_id: k.sender,
            rule_id: k.rule,
            facts_id: k.facts,
            client_ip: k.ip,
            tls: k.tls,
            stored: k.stored,
            sender: s.get(k.sender),
            connector: k.connector.map(|i| s.get(i)),
            rule: k.rule.map(|i| s.get(i)),
            facts: s.get(k.facts),
            count,
        })
    }
}

/// The facts a decision depends on.
fn reduce<'a>(f: &'a TxFacts<'a>) -> TxFacts<'a> {
    TxFacts {
        v: f.v,
        by: f.by.clone(),
        cert: f.cert.as_ref().map(|c| CertFacts {
            names: c.names.clone(),
            issuer: "".into(),
            nb: 0,
            na: 0,
            trusted: c.trusted,
            problem: c.problem.clone(),
        }),
        to: f.to.iter().map(|r| reduce_rcpt(r).into()).collect(),
        no: f
            .no
            .iter()
            .map(|(r, rule)| (reduce_rcpt(r).into(), rule.clone()))
            .collect(),
        end: f.end.clone(),
    }
}

/// A recipient as far as decisions go: its domain, and a local part that is `postmaster`
/// (RFC 5321 §4.5.1) or carries a route (`%`, `!`, `@`, or quoted) kept as it is. The
/// recorded address is the session's (`local@domain`; a domain never holds an `@`).
pub(super) fn reduce_rcpt(rcpt: &str) -> String {
    match rcpt.rsplit_once('@') {
        Some((local, domain)) if local.eq_ignore_ascii_case("postmaster") => {
            format!("postmaster@{domain}")
        }
        Some((local, _)) if local.contains(['%', '!', '@', '"']) => rcpt.to_string(),
        Some((_, domain)) => format!("u@{domain}"),
        None => rcpt.to_string(),
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
    fn rows_alike_once_reduced_are_one_group() {
        let mut c = Collected::default();
        let to_bob = r#"{"v":1,"to":["bob@contoso.test"],"end":"DATA"}"#;
        let to_carol = r#"{"v":1,"to":["Carol@contoso.test"],"end":"DATA"}"#;
        let to_postmaster = r#"{"v":1,"to":["postmaster@contoso.test"],"end":"DATA"}"#;
        c.add(&row(1, "a@x.test", to_bob));
        c.add(&row(2, "a@x.test", to_carol));
        c.add(&row(3, "b@x.test", to_bob));
        c.add(&row(4, "a@x.test", to_postmaster));
        c.add(&row(5, "a@x.test", "5000 bytes, 1 recipient(s)"));
        let mut counts: Vec<(&str, &str, u64)> =
            c.groups().map(|g| (g.sender, g.facts, g.count)).collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                (
                    "a@x.test",
                    r#"{"v":1,"to":["postmaster@contoso.test"],"end":"DATA"}"#,
                    1
                ),
                (
                    "a@x.test",
                    r#"{"v":1,"to":["u@contoso.test"],"end":"DATA"}"#,
                    2
                ),
                (
                    "b@x.test",
                    r#"{"v":1,"to":["u@contoso.test"],"end":"DATA"}"#,
                    1
                ),
            ]
        );
        assert_eq!((c.rows, c.unreadable, c.last_id, c.len()), (5, 1, 5, 3));
    }

    #[test]
    fn strings_are_stored_once_and_told_apart_on_a_collision() {
        let mut s = Strings::default();
        let (a, b) = (s.id("alice@x.test"), s.id("bob@x.test"));
        assert_ne!(a, b);
        assert_eq!(s.id("alice@x.test"), a);
        // A forced collision: another string under `alice`'s hash.
        let h = s.hasher.hash_one("alice@x.test");
        s.by_hash.insert(h, b);
        let c = s.id("alice@x.test");
        assert_eq!(s.get(c), "alice@x.test");
        assert_eq!(
            s.id("alice@x.test"),
            c,
            "found again through the collision list"
        );
        assert_eq!(s.get(b), "bob@x.test");
    }

    #[test]
    fn recipients_keep_only_what_decides() {
        assert_eq!(reduce_rcpt("bob@contoso.test"), "u@contoso.test");
        assert_eq!(
            reduce_rcpt("PostMaster@relay.test"),
            "postmaster@relay.test"
        );
        assert_eq!(reduce_rcpt("a%b@contoso.test"), "a%b@contoso.test");
        assert_eq!(reduce_rcpt("\"a@b\"@contoso.test"), "\"a@b\"@contoso.test");
    }
}
