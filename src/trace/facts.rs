//! The facts of one mail transaction: what its decisions were made from, recorded so that
//! they can be made again under another policy without the original bytes (`whatif`,
//! `src/ops/whatif/`).
//!
//! One `Session` row per transaction that reached MAIL FROM, written when it ends (refused
//! at MAIL FROM, answered at DATA, reset by RSET/EHLO/STARTTLS, or cut off). Its columns
//! hold what every row holds: `client_ip`, `helo`, `tls` (version and cipher; empty in
//! plaintext), `certificate` (the client certificate's subject), `sender` (empty for `<>`),
//! `connector` (the inbound connector the transaction was attributed to), `rule` (the rule
//! that refused MAIL FROM or DATA, if one did) and `queue_id` (when the message was
//! stored). The rest is compact JSON in `detail`, version 1:
//!
//! ```json
//! {"v":1,"by":"SenderDomain",
//!  "cert":{"names":["mail.fabrikam.test"],"issuer":"CN=Test CA","nb":1764547200,
//!          "na":1859241600,"trusted":true},
//!  "to":["bob@contoso.test"],
//!  "no":[["x@example.net","RelayWithoutOnPremisesAttribution"]],
//!  "end":"DATA"}
//! ```
//!
//! - `by`: what attributed the transaction to `connector` (`Certificate`, `IpAddress`,
//!   `SenderDomain`); absent when anonymous.
//! - `cert`: the client certificate as judged at the handshake: its names (SAN dNSNames,
//!   else the subject CN), issuer, validity (`nb`, `na`: Unix seconds) and the trust
//!   verdict (`trusted`; `problem` says why not). No certificate bytes: the verdict is
//!   replayed as recorded.
//! - `to`: the accepted recipients; `no`: the refused ones, each with the rule that refused
//!   it (a rule of `src/policy/restrict.rs`, or a limit such as `InvalidDomain`).
//! - `end`: `MAIL`, `DATA`, `RSET` or `CLOSED` (`smtp::session::TxEnd`).
//!
//! Keys are short and absent values left out: the row is written on the hot path, one per
//! transaction, next to the transaction's other rows.

use std::borrow::Cow;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The `detail` JSON of a `Session` row (see the module documentation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxFacts<'a> {
    /// Format version: 1.
    pub v: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<CertFacts<'a>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub no: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub end: Cow<'a, str>,
}

/// The client certificate of a transaction, as the session judged it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFacts<'a> {
    pub names: Vec<Cow<'a, str>>,
    pub issuer: Cow<'a, str>,
    /// `notBefore`, `notAfter`: Unix seconds.
    pub nb: i64,
    pub na: i64,
    pub trusted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<Cow<'a, str>>,
}

/// The current format version.
pub const VERSION: u8 = 1;

impl TxFacts<'_> {
    pub fn to_json(&self) -> String {
        // Strings, numbers and booleans only: serialization cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The facts of a `detail`; `None` for another format.
    pub fn parse(detail: &str) -> Option<TxFacts<'_>> {
        serde_json::from_str::<TxFacts<'_>>(detail)
            .ok()
            .filter(|f| f.v == VERSION)
    }
}

/// One `Session` row as [`read_sessions`] hands it over (borrowed from SQLite's buffers).
#[derive(Debug, Clone, Copy)]
pub struct SessionRow<'a> {
    pub id: i64,
    pub time_ms: i64,
    pub client_ip: &'a str,
    /// Under TLS.
    pub tls: bool,
    /// Empty for the null sender.
    pub sender: &'a str,
    /// The inbound connector of the transaction.
    pub connector: Option<&'a str>,
    /// The rule that refused MAIL FROM or DATA.
    pub rule: Option<&'a str>,
    /// The message was stored (the row has a queue id).
    pub stored: bool,
    pub detail: &'a str,
}

/// Which `Session` rows to read: `time_ms` in `since_ms..until_ms`, `id` above `after_id`
/// (to continue where an earlier read stopped).
#[derive(Debug, Clone, Copy)]
pub struct SessionRange {
    pub since_ms: i64,
    pub until_ms: i64,
    pub after_id: i64,
}

/// Calls `f` with every `Session` row of `range` in `DataDir`'s store, in id order;
/// returns the highest id read (`range.after_id` when none). One sequential pass over the
/// table on a read-only connection (the relay keeps writing meanwhile).
pub fn read_sessions(
    data_dir: &Path,
    range: SessionRange,
    mut f: impl FnMut(&SessionRow<'_>),
) -> Result<i64, String> {
    let file = super::sqlite::path(data_dir);
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    let conn = super::sqlite::open_read_only(data_dir)?;
    // By rowid, not through the time index: Session rows are spread over the whole table,
    // and a scan in rowid order reads each page once, where the index would visit pages
    // in time order, over and over.
    let mut st = conn
        .prepare(
            "SELECT id, time_ms, client_ip, tls IS NOT NULL, sender, connector, rule, \
             queue_id IS NOT NULL, detail FROM events NOT INDEXED \
             WHERE id > ?1 AND event = 'Session' AND time_ms >= ?2 AND time_ms < ?3 \
             ORDER BY id",
        )
        .map_err(|e| fail(&e))?;
    let mut rows = st
        .query([range.after_id, range.since_ms, range.until_ms])
        .map_err(|e| fail(&e))?;
    let mut last = range.after_id;
    while let Some(r) = rows.next().map_err(|e| fail(&e))? {
        let text = |i: usize| -> rusqlite::Result<Option<&str>> {
            match r.get_ref(i)? {
                rusqlite::types::ValueRef::Text(t) => Ok(std::str::from_utf8(t).ok()),
                _ => Ok(None),
            }
        };
        let row = SessionRow {
            id: r.get(0).map_err(|e| fail(&e))?,
            time_ms: r.get(1).map_err(|e| fail(&e))?,
            client_ip: text(2).map_err(|e| fail(&e))?.unwrap_or(""),
            tls: r.get(3).map_err(|e| fail(&e))?,
            sender: text(4).map_err(|e| fail(&e))?.unwrap_or(""),
            connector: text(5).map_err(|e| fail(&e))?,
            rule: text(6).map_err(|e| fail(&e))?,
            stored: r.get(7).map_err(|e| fail(&e))?,
            detail: text(8).map_err(|e| fail(&e))?.unwrap_or(""),
        };
        last = row.id;
        f(&row);
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::backend::Backend;
    use crate::trace::sqlite::Sqlite;
    use crate::trace::{EventKind, TraceEvent};

    #[test]
    fn facts_round_trip_and_stay_compact() {
        let facts = TxFacts {
            v: VERSION,
            by: Some("SenderDomain".into()),
            cert: Some(CertFacts {
                names: vec!["mail.fabrikam.test".into()],
                issuer: "CN=Test CA".into(),
                nb: 1,
                na: 2,
                trusted: true,
                problem: None,
            }),
            to: vec!["bob@contoso.test".into()],
            no: vec![(
                "x@example.net".into(),
                "RelayWithoutOnPremisesAttribution".into(),
            )],
            end: "DATA".into(),
        };
        let json = facts.to_json();
        assert_eq!(
            json,
            r#"{"v":1,"by":"SenderDomain","cert":{"names":["mail.fabrikam.test"],"issuer":"CN=Test CA","nb":1,"na":2,"trusted":true},"to":["bob@contoso.test"],"no":[["x@example.net","RelayWithoutOnPremisesAttribution"]],"end":"DATA"}"#
        );
        assert_eq!(TxFacts::parse(&json), Some(facts));
        let bare = TxFacts::parse(r#"{"v":1,"end":"MAIL"}"#).unwrap();
        assert!(bare.to.is_empty() && bare.cert.is_none());
        assert_eq!(TxFacts::parse(r#"{"v":2,"end":"MAIL"}"#), None);
        assert_eq!(TxFacts::parse("5000 bytes, 1 recipient(s)"), None);
    }

    #[test]
    fn reads_session_rows_in_range_and_after_an_id() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Sqlite::open(dir.path()).unwrap();
        let row = |kind, t: i64, sender: &str, stored: bool| {
            let mut e = TraceEvent::new(kind);
            e.time_ms = t;
            e.sender = Some(sender.into());
            e.client_ip = Some("192.0.2.1".into());
            e.queue_id = stored.then(|| "Q".to_string());
            e.detail = Some(r#"{"v":1,"end":"DATA"}"#.into());
            e
        };
        store
            .insert(
                "node-a",
                &[
                    row(EventKind::Session, 1000, "old@x.test", true),
                    row(EventKind::Received, 2000, "a@x.test", true),
                    row(EventKind::Session, 2000, "a@x.test", true),
                    row(EventKind::Session, 3000, "b@x.test", false),
                    row(EventKind::Session, 9000, "late@x.test", false),
                ],
            )
            .unwrap();
        let mut seen = Vec::new();
        let range = SessionRange {
            since_ms: 1500,
            until_ms: 5000,
            after_id: 0,
        };
        let last = read_sessions(dir.path(), range, |r| {
            seen.push((
                r.sender.to_string(),
                r.stored,
                r.tls,
                r.client_ip.to_string(),
            ))
        })
        .unwrap();
        assert_eq!(
            seen,
            [
                ("a@x.test".into(), true, false, "192.0.2.1".into()),
                ("b@x.test".into(), false, false, "192.0.2.1".into())
            ]
        );
        assert_eq!(last, 4);
        let mut more = 0;
        let again = SessionRange {
            after_id: last,
            ..range
        };
        assert_eq!(read_sessions(dir.path(), again, |_| more += 1).unwrap(), 4);
        assert_eq!(more, 0);
    }
}
