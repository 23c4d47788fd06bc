//! The trace store's one interface, implemented side by side for SQLite ([`super::sqlite`],
//! the embedded default) and PostgreSQL ([`super::postgres`], shared by a fleet): write a
//! batch of rows, run the trace query, delete what is past retention. The writer
//! ([`super::store`]) and the readers (the `trace` command, the admin API) only see this
//! trait; the SQL both dialects share is built once ([`super::query`], [`Dialect`]).

use std::path::Path;

use super::target::StoreTarget;
use super::{TraceEvent, TraceQuery};

/// Why a store operation failed, and whether waiting may help.
#[derive(Debug, Clone)]
pub struct StoreError {
    /// The server is unreachable, restarting, refusing connections, or out of resources:
    /// keep the rows and try again later (an outage). Otherwise the rows themselves were
    /// refused, and retrying them cannot help.
    pub transient: bool,
    pub message: String,
}

impl StoreError {
    pub fn permanent(message: impl std::fmt::Display) -> StoreError {
        StoreError {
            transient: false,
            message: message.to_string(),
        }
    }
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A trace store: one connection (opened, or reopened after an outage, by the
/// implementation itself). Calls block: run them off the async threads.
pub trait Backend: Send {
    /// Writes `rows` in one transaction, each naming `node`.
    fn insert(&mut self, node: &str, rows: &[TraceEvent]) -> Result<(), StoreError>;
    /// The rows `q` selects (see [`super::query`]), oldest first.
    fn query(&mut self, q: &TraceQuery) -> Result<Vec<TraceEvent>, StoreError>;
    /// Deletes the rows older than `cutoff_ms`; returns how many.
    fn sweep(&mut self, cutoff_ms: i64) -> Result<usize, StoreError>;
}

/// What the relay's settings say about the store: where it is, and the local pieces a
/// connection needs.
#[derive(Debug, Clone)]
pub struct Location<'a> {
    pub target: &'a StoreTarget,
    /// `DataDir`: the SQLite file's directory.
    pub data_dir: &'a Path,
    /// `TrustedCaFile`: trusted, besides the public roots, for TLS to PostgreSQL.
    pub trusted_ca_file: Option<&'a Path>,
}

impl<'a> Location<'a> {
    pub fn of(r: &'a crate::policy::RelaySettings) -> Location<'a> {
        Location {
            target: &r.trace_store,
            data_dir: &r.data_dir,
            trusted_ca_file: r.trusted_ca_file.as_deref(),
        }
    }
}

/// The writer's store. SQLite is opened (and its file created) now, so that a `DataDir`
/// that cannot hold it stops the start; PostgreSQL connects at the first write, so that a
/// server that is down never stops the relay (its rows wait, see [`super::store`]).
pub fn open_writer(at: &Location<'_>) -> Result<Box<dyn Backend>, String> {
    match at.target {
        StoreTarget::Sqlite => Ok(Box::new(super::sqlite::Sqlite::open(at.data_dir)?)),
        StoreTarget::Postgres(url) => Ok(Box::new(super::postgres::Postgres::new(
            url,
            at.trusted_ca_file,
            true,
        )?)),
    }
}

/// A reader's store (the `trace` command, the admin API), connected now.
pub fn open_reader(at: &Location<'_>) -> Result<Box<dyn Backend>, String> {
    match at.target {
        StoreTarget::Sqlite => Ok(Box::new(super::sqlite::Sqlite::open_read(at.data_dir)?)),
        StoreTarget::Postgres(url) => Ok(Box::new(super::postgres::Postgres::new(
            url,
            at.trusted_ca_file,
            false,
        )?)),
    }
}

/// The SQL differences between the two stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// The columns compared without regard to ASCII case (SQLite declares them `COLLATE
/// NOCASE`; PostgreSQL compares and indexes their `lower()`).
const NOCASE: [&str; 4] = ["message_id", "sender", "recipient", "connector"];

impl Dialect {
    /// The events table. PostgreSQL's name says whose it is: the database may be one the
    /// fleet shares with other applications.
    pub fn table(self) -> &'static str {
        match self {
            Dialect::Sqlite => "events",
            Dialect::Postgres => "connector_relay_trace",
        }
    }

    /// The `n`th (from 1) parameter.
    pub fn param(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// An expression of `column` or of a parameter as it is compared: PostgreSQL folds
    /// the case of [`NOCASE`] columns on both sides.
    pub fn compared(self, column: &str, expr: &str) -> String {
        if self == Dialect::Postgres && NOCASE.contains(&column) {
            format!("lower({expr})")
        } else {
            expr.to_string()
        }
    }
}

/// A query argument, bound by each store in its own way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Text(String),
    Int(i64),
}

/// The columns after `id`, in [`TraceEvent`] field order (queries read them back in this
/// order, after `id`).
pub const COLUMNS: &str = "time_ms, event, queue_id, message_id, sender, recipient, \
     client_ip, helo, connector, rule, host, ip, tls, certificate, reply, detail, node";

/// How many columns [`COLUMNS`] names.
pub const COLUMN_COUNT: usize = 17;

/// The text columns of a row between `event` and `node`, in [`COLUMNS`] order.
pub fn texts(e: &TraceEvent) -> [Option<&str>; 14] {
    [
        e.queue_id.as_deref(),
        e.message_id.as_deref(),
        e.sender.as_deref(),
        e.recipient.as_deref(),
        e.client_ip.as_deref(),
        e.helo.as_deref(),
        e.connector.as_deref(),
        e.rule.as_deref(),
        e.host.as_deref(),
        e.ip.as_deref(),
        e.tls.as_deref(),
        e.certificate.as_deref(),
        e.reply.as_deref(),
        e.detail.as_deref(),
    ]
}

/// A result row of `SELECT id, COLUMNS`, whichever store it comes from.
pub trait Cells {
    fn int(&self, i: usize) -> Result<i64, String>;
    fn text(&self, i: usize) -> Result<Option<String>, String>;
}

/// The event of a `SELECT id, COLUMNS` row.
pub fn event_of(r: &impl Cells) -> Result<TraceEvent, String> {
    let name = r.text(2)?.unwrap_or_default();
    let event = super::EventKind::parse(&name).ok_or(format!("unknown trace event {name:?}"))?;
    let t = |i| r.text(i);
    Ok(TraceEvent {
        time_ms: r.int(1)?,
        event,
        queue_id: t(3)?,
        message_id: t(4)?,
        sender: t(5)?,
        recipient: t(6)?,
        client_ip: t(7)?,
        helo: t(8)?,
        connector: t(9)?,
        rule: t(10)?,
        host: t(11)?,
        ip: t(12)?,
        tls: t(13)?,
        certificate: t(14)?,
        reply: t(15)?,
        detail: t(16)?,
        node: t(17)?,
    })
}
