//! Reading the trace back (the `trace` command, the admin API), on a read-only connection
//! that works while the relay is writing.
//!
//! Semantics: filters select **messages**, and every event of a selected message is
//! returned, so a search by sender also shows the routing, attempts and delivery of what
//! that sender sent. A message (a queue id) is selected when, for each filter given, at
//! least one of its events matches it (`sender`, `recipient`, `connector`, `message_id`,
//! `queue_id` compared without regard to ASCII case; a `message_id` with or without its
//! angle brackets), and, when a time range is given, at least one of its events falls in it
//! (`since` inclusive, `until` exclusive). Rows without a queue id (sessions refused
//! before DATA, refused connections) are returned when they match every filter and the
//! time range themselves. No filter at all selects everything. Results are in time order;
//! when more than `limit` rows qualify, the most recent `limit` are returned.

use std::path::Path;

use super::TraceEvent;
use super::backend::{self, Arg, COLUMNS, Dialect, Location};

/// What to look for; `None` fields do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TraceQuery {
    pub message_id: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub connector: Option<String>,
    /// The relay's queue id of a message.
    pub queue_id: Option<String>,
    /// Unix milliseconds, inclusive.
    pub since_ms: Option<i64>,
    /// Unix milliseconds, exclusive.
    pub until_ms: Option<i64>,
    /// The most rows returned (the most recent ones).
    pub limit: usize,
}

/// The most rows a search returns unless told otherwise.
pub const DEFAULT_LIMIT: usize = 1000;

/// A search as a person types it (the `trace` command's options, `GET /api/trace`'s query
/// string): times still text, empty values meaning "no filter".
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TraceFilter {
    pub message_id: Option<String>,
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub connector: Option<String>,
    pub queue_id: Option<String>,
    /// RFC 3339, a date, or back from now (`2h`, `7d`): see [`super::parse_since`].
    pub since: Option<String>,
    pub until: Option<String>,
    /// Default [`DEFAULT_LIMIT`].
    pub limit: Option<usize>,
}

impl TraceFilter {
    /// The query, with times resolved against `now_ms`. A bad value is `Err((name, why))`,
    /// `name` being the option or parameter (`since`, `until`, `limit`).
    pub fn to_query(&self, now_ms: i64) -> Result<TraceQuery, (&'static str, String)> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let time = |name: &'static str, v: &Option<String>| match given(v) {
            Some(t) => super::parse_since(&t, now_ms)
                .map(Some)
                .map_err(|e| (name, e)),
            None => Ok(None),
        };
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if limit == 0 {
            return Err(("limit", "must be at least 1".into()));
        }
        Ok(TraceQuery {
            message_id: given(&self.message_id),
            sender: given(&self.sender),
            recipient: given(&self.recipient),
            connector: given(&self.connector),
            queue_id: given(&self.queue_id),
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            limit,
        })
    }
}

/// The rows `q` selects from the SQLite store in `data_dir`, oldest first (see the module
/// documentation). An error when the store does not exist or cannot be read.
pub fn query(data_dir: &Path, q: &TraceQuery) -> Result<Vec<TraceEvent>, String> {
    let mut store = super::sqlite::Sqlite::open_read(data_dir)?;
    backend::Backend::query(&mut store, q).map_err(|e| e.message)
}

/// The rows `q` selects from the store `at` names (`[Relay] TraceStore`): what the `trace`
/// command and the admin API show.
pub fn query_store(at: &Location<'_>, q: &TraceQuery) -> Result<Vec<TraceEvent>, String> {
    backend::open_reader(at)?.query(q).map_err(|e| e.message)
}

/// The SQL and its arguments in `dialect`: the newest `limit` qualifying rows, newest
/// first.
pub(super) fn build(q: &TraceQuery, dialect: Dialect) -> (String, Vec<Arg>) {
    let mut args: Vec<Arg> = Vec::new();
    let mut arg = |v: Arg| {
        args.push(v);
        dialect.param(args.len())
    };
    // One condition per filter, each true of a row that matches that filter.
    let mut filters = Vec::new();
    if let Some(id) = &q.message_id {
        let bare = id.trim().trim_start_matches('<').trim_end_matches('>');
        let (a, b) = (
            arg(Arg::Text(bare.to_string())),
            arg(Arg::Text(format!("<{bare}>"))),
        );
        let c = |e: &str| dialect.compared("message_id", e);
        filters.push(format!("{} IN ({}, {})", c("message_id"), c(&a), c(&b)));
    }
    for (column, value) in [
        ("sender", &q.sender),
        ("recipient", &q.recipient),
        ("connector", &q.connector),
        ("queue_id", &q.queue_id),
    ] {
        if let Some(v) = value {
            let mut v = v.trim().to_string();
            if column == "sender" && v == "<>" {
                v.clear(); // the null sender is stored empty
            }
            let p = arg(Arg::Text(v));
            filters.push(format!(
                "{} = {}",
                dialect.compared(column, column),
                dialect.compared(column, &p)
            ));
        }
    }
    let mut window = Vec::new();
    if let Some(t) = q.since_ms {
        window.push(format!("time_ms >= {}", arg(Arg::Int(t))));
    }
    if let Some(t) = q.until_ms {
        window.push(format!("time_ms < {}", arg(Arg::Int(t))));
    }
    let limit = arg(Arg::Int(q.limit.min(i64::MAX as usize) as i64));
    let order = format!("ORDER BY time_ms DESC, id DESC LIMIT {limit}");
    let table = dialect.table();
    // `Session` rows hold the facts `whatif` replays; the other rows say the same to a person.
    let shown = "event <> 'Session'";
    if filters.is_empty() && window.is_empty() {
        return (
            format!("SELECT id, {COLUMNS} FROM {table} WHERE {shown} {order}"),
            args,
        );
    }
    // Messages: one set of queue ids per filter (and one for the window), intersected.
    let sets: Vec<String> = filters
        .iter()
        .map(|f| f.to_string())
        .chain((!window.is_empty()).then(|| window.join(" AND ")))
        .map(|c| format!("SELECT queue_id FROM {table} WHERE queue_id IS NOT NULL AND {c}"))
        .collect();
    let session: Vec<&String> = filters.iter().chain(&window).collect();
    let session = session
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(" AND ");
    let sql = format!(
        "SELECT id, {COLUMNS} FROM {table} WHERE queue_id IN ({sets}) AND {shown} \
         UNION ALL \
         SELECT id, {COLUMNS} FROM {table} WHERE queue_id IS NULL AND {shown} AND {session} \
         {order}",
        sets = sets.join(" INTERSECT "),
    );
    (sql, args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::EventKind;
    use crate::trace::backend::Backend;
    use crate::trace::sqlite::Sqlite;

    fn ev(kind: EventKind, t: i64, qid: Option<&str>) -> TraceEvent {
        let mut e = TraceEvent::new(kind);
        e.time_ms = t;
        e.queue_id = qid.map(str::to_string);
        e
    }

    /// Two messages and a refused session; the filters select whole messages.
    #[test]
    fn filters_select_messages_and_session_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Sqlite::open(dir.path()).unwrap();
        let mut a = ev(EventKind::Received, 1000, Some("A"));
        a.sender = Some("Alice@Contoso.test".into());
        a.recipient = Some("bob@contoso.test".into());
        a.message_id = Some("<m1@contoso.test>".into());
        a.connector = Some("From on-premises".into());
        let mut a2 = ev(EventKind::Delivered, 3000, Some("A"));
        a2.recipient = Some("bob@contoso.test".into());
        a2.connector = Some("To on-premises".into());
        let mut b = ev(EventKind::Received, 2000, Some("B"));
        b.sender = Some(String::new());
        b.recipient = Some("carol@contoso.test".into());
        let mut r = ev(EventKind::Rejected, 2500, None);
        r.sender = Some("alice@contoso.test".into());
        r.recipient = Some("x@fabrikam.test".into());
        // Facts rows (one with a message, one without) are not shown.
        let mut facts = ev(EventKind::Session, 1000, Some("A"));
        facts.sender = Some("alice@contoso.test".into());
        let mut refused_facts = ev(EventKind::Session, 2500, None);
        refused_facts.sender = Some("alice@contoso.test".into());
        store
            .insert("node-a", &[a, b, r, a2, facts, refused_facts])
            .unwrap();
        let find = |q: TraceQuery| -> Vec<(String, i64)> {
            query(dir.path(), &TraceQuery { limit: 50, ..q })
                .unwrap()
                .into_iter()
                .map(|e| (e.queue_id.unwrap_or_else(|| "-".into()), e.time_ms))
                .collect()
        };
        let s = |v: &str| Some(v.to_string());
        let all = vec![
            ("A".into(), 1000),
            ("B".into(), 2000),
            ("-".into(), 2500),
            ("A".into(), 3000),
        ];
        assert_eq!(find(TraceQuery::default()), all);
        let alice = find(TraceQuery {
            sender: s("ALICE@contoso.TEST"),
            ..Default::default()
        });
        assert_eq!(
            alice,
            [("A".into(), 1000), ("-".into(), 2500), ("A".into(), 3000)]
        );
        for id in ["m1@contoso.test", "<M1@contoso.test>"] {
            let m = find(TraceQuery {
                message_id: s(id),
                ..Default::default()
            });
            assert_eq!(m, [("A".into(), 1000), ("A".into(), 3000)], "{id}");
        }
        // Each filter may be matched by a different event of the message.
        let both = find(TraceQuery {
            sender: s("alice@contoso.test"),
            connector: s("to on-premises"),
            ..Default::default()
        });
        assert_eq!(both, [("A".into(), 1000), ("A".into(), 3000)]);
        assert_eq!(
            find(TraceQuery {
                sender: s("<>"),
                ..Default::default()
            }),
            [("B".into(), 2000)]
        );
        // A message with an event in the window is shown whole.
        let window = find(TraceQuery {
            since_ms: Some(2500),
            until_ms: Some(3001),
            ..Default::default()
        });
        assert_eq!(
            window,
            [("A".into(), 1000), ("-".into(), 2500), ("A".into(), 3000)]
        );
        assert!(
            find(TraceQuery {
                until_ms: Some(1000),
                ..Default::default()
            })
            .is_empty(),
            "until is exclusive"
        );
        // The most recent rows when the limit cuts.
        let two = query(
            dir.path(),
            &TraceQuery {
                limit: 2,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(
            two.iter().map(|e| e.time_ms).collect::<Vec<_>>(),
            [2500, 3000]
        );
        let missing = query(&dir.path().join("nothing"), &TraceQuery::default());
        assert!(missing.unwrap_err().contains("no trace store"));
    }
}
