//! The shared trace store: a PostgreSQL database (`[Relay] TraceStore = "postgresql://..."`)
//! that every node of a fleet writes to, so that one query shows a message's whole path
//! whichever nodes it crossed. One table, `connector_relay_trace`, created by the first
//! node that connects (under an advisory lock: two nodes starting together do not race),
//! with the `node` column saying which node wrote each row.
//!
//! The connection is opened lazily and reopened after any failure that is not about the
//! rows themselves ([`StoreError::transient`]): the writer ([`super::store`]) keeps the
//! batch and retries with back-off, so an outage costs trace rows only once the writer's
//! buffer is full, never mail. TLS (`sslmode=require`) is rustls, verifying the server's
//! certificate and name against the public roots and `TrustedCaFile`.

use std::path::Path;

use postgres::types::ToSql;
use postgres::{Client, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::backend::{self, Arg, Backend, COLUMN_COUNT, COLUMNS, Cells, Dialect, StoreError};
use super::target::PgUrl;
use super::{TraceEvent, TraceQuery};

const TABLE: &str = "connector_relay_trace";

/// Rows deleted per statement by a sweep (as for SQLite: short statements).
const SWEEP_CHUNK: i64 = 5000;

/// Any 64-bit number the fleet's nodes agree on: the advisory lock of the schema creation.
const SCHEMA_LOCK: i64 = 0x636f_6e6e_7472_6163;

fn schema() -> String {
    let lower =
        |c: &str| format!("CREATE INDEX IF NOT EXISTS {TABLE}_{c} ON {TABLE} (lower({c}));");
    format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (
            id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            time_ms     BIGINT NOT NULL,
            event       TEXT NOT NULL,
            queue_id    TEXT,
            message_id  TEXT,
            sender      TEXT,
            recipient   TEXT,
            client_ip   TEXT,
            helo        TEXT,
            connector   TEXT,
            rule        TEXT,
            host        TEXT,
            ip          TEXT,
            tls         TEXT,
            certificate TEXT,
            reply       TEXT,
            detail      TEXT,
            node        TEXT
        );
        CREATE INDEX IF NOT EXISTS {TABLE}_time ON {TABLE} (time_ms);
        CREATE INDEX IF NOT EXISTS {TABLE}_queue_id ON {TABLE} (queue_id);
        {} {} {} {}",
        lower("message_id"),
        lower("sender"),
        lower("recipient"),
        lower("connector"),
    )
}

/// A PostgreSQL store: the server's settings and, while it answers, a connection.
pub struct Postgres {
    config: postgres::Config,
    tls: MakeRustlsConnect,
    /// The URL with its password hidden, for messages.
    shown: String,
    /// Whether this connection writes (and so makes sure the table exists).
    writer: bool,
    client: Option<Client>,
}

impl Postgres {
    /// A store for `url`; a reader connects now (its caller reports a server that is
    /// down), the writer at its first operation.
    pub fn new(url: &PgUrl, trusted_ca: Option<&Path>, writer: bool) -> Result<Postgres, String> {
        let tls = crate::tlsrpt::reporter::https_config(trusted_ca)
            .map_err(|e| format!("TrustedCaFile for the trace store's TLS: {e}"))?;
        let mut store = Postgres {
            config: url.config(),
            tls: MakeRustlsConnect::new((*tls).clone()),
            shown: url.redacted(),
            writer,
            client: None,
        };
        if !writer {
            store.client().map_err(|e| e.message)?;
        }
        Ok(store)
    }

    /// The connection, opened (and, for the writer, the table made sure of) if needed.
    fn client(&mut self) -> Result<&mut Client, StoreError> {
        if self.client.is_none() {
            let mut client = self
                .config
                .connect(self.tls.clone())
                .map_err(|e| self.error(e))?;
            if self.writer {
                ensure_schema(&mut client).map_err(|e| self.error(e))?;
            }
            self.client = Some(client);
        }
        Ok(self.client.as_mut().expect("just connected"))
    }

    /// Classifies `e`, dropping the connection unless only the rows were at fault: the
    /// next operation reconnects (and recreates a table that was dropped).
    fn error(&mut self, e: postgres::Error) -> StoreError {
        let transient = is_transient(&e);
        if transient {
            self.client = None;
        }
        let message = match e.as_db_error() {
            Some(db) if db.code() == &postgres::error::SqlState::UNDEFINED_TABLE => format!(
                "{}: no trace table yet (the first relay node that writes creates it)",
                self.shown
            ),
            Some(db) => format!("{}: {} ({})", self.shown, db.message(), db.code().code()),
            None => format!("{}: {e}", self.shown),
        };
        StoreError { transient, message }
    }
}

impl Postgres {
    /// The rows of a query (the trace query, the reports' aggregations).
    pub fn rows(
        &mut self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let found = self.client()?.query(sql, args);
        found.map_err(|e| self.error(e))
    }
}

/// Whether retrying later may succeed: everything but data the server refused (classes
/// 22, data exception, and 23, integrity violation). Connection failures, shutdowns, a
/// missing database or role, a dropped table, resource limits: an outage.
fn is_transient(e: &postgres::Error) -> bool {
    match e.code() {
        Some(code) => !matches!(&code.code()[..2], "22" | "23"),
        None => true,
    }
}

fn ensure_schema(client: &mut Client) -> Result<(), postgres::Error> {
    let mut tx = client.transaction()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])?;
    tx.batch_execute(&schema())?;
    tx.commit()
}

/// PostgreSQL text cannot hold NUL; a peer's bytes must not make a batch unwritable.
fn text(s: Option<&str>) -> Option<String> {
    s.map(|s| s.replace('\0', "\u{FFFD}"))
}

/// One multi-row `INSERT` of `rows`: their values, in parameter order.
fn insert_values(node: &str, rows: &[TraceEvent]) -> (Vec<i64>, Vec<Option<String>>) {
    let times = rows.iter().map(|e| e.time_ms).collect();
    let mut texts = Vec::with_capacity(rows.len() * (COLUMN_COUNT - 1));
    for e in rows {
        texts.push(Some(e.event.as_str().to_string()));
        texts.extend(backend::texts(e).map(text));
        texts.push(text(Some(node)));
    }
    (times, texts)
}

fn insert_sql(rows: usize) -> String {
    let values: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=COLUMN_COUNT)
                .map(|c| Dialect::Postgres.param(r * COLUMN_COUNT + c))
                .collect();
            format!("({})", params.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO {TABLE} ({COLUMNS}) VALUES {}",
        values.join(", ")
    )
}

impl Backend for Postgres {
    fn insert(&mut self, node: &str, rows: &[TraceEvent]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let (times, texts) = insert_values(node, rows);
        let per_row = COLUMN_COUNT - 1;
        let mut params: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(rows.len() * COLUMN_COUNT);
        for (r, t) in times.iter().enumerate() {
            params.push(t);
            params.extend(
                texts[r * per_row..(r + 1) * per_row]
                    .iter()
                    .map(|v| v as &(dyn ToSql + Sync)),
            );
        }
        let sql = insert_sql(rows.len());
        let done = self.client()?.execute(&sql, &params);
        done.map(|_| ()).map_err(|e| self.error(e))
    }

    fn query(&mut self, q: &TraceQuery) -> Result<Vec<TraceEvent>, StoreError> {
        let (sql, args) = super::query::build(q, Dialect::Postgres);
        let params: Vec<Box<dyn ToSql + Sync>> = args
            .into_iter()
            .map(|a| match a {
                Arg::Text(t) => Box::new(t) as Box<dyn ToSql + Sync>,
                Arg::Int(n) => Box::new(n),
            })
            .collect();
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p.as_ref()).collect();
        let rows = self.rows(&sql, &refs)?;
        let mut events = rows
            .iter()
            .map(backend::event_of)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StoreError::permanent)?;
        events.reverse();
        Ok(events)
    }

    fn sweep(&mut self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let sql = format!(
            "DELETE FROM {TABLE} WHERE id IN \
             (SELECT id FROM {TABLE} WHERE time_ms < $1 LIMIT $2)"
        );
        let mut total = 0;
        loop {
            let done = self.client()?.execute(&sql, &[&cutoff_ms, &SWEEP_CHUNK]);
            let n = done.map_err(|e| self.error(e))?;
            total += n as usize;
            if (n as i64) < SWEEP_CHUNK {
                return Ok(total);
            }
        }
    }
}

impl Cells for Row {
    fn int(&self, i: usize) -> Result<i64, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }

    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.try_get(i).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_insert_numbers_every_parameter() {
        let sql = insert_sql(2);
        assert!(sql.contains("($1, $2,"), "{sql}");
        assert!(sql.contains("$17), ($18,"), "{sql}");
        assert!(sql.ends_with("$34)"), "{sql}");
        let mut e = TraceEvent::new(super::super::EventKind::Received);
        e.helo = Some("a\0b".into());
        let (times, texts) = insert_values("n1", &[e.clone(), e]);
        assert_eq!(times.len(), 2);
        assert_eq!(texts.len(), 2 * (COLUMN_COUNT - 1));
        assert_eq!(texts[0].as_deref(), Some("Received"));
        assert_eq!(texts[6].as_deref(), Some("a\u{FFFD}b"), "helo without NUL");
        assert_eq!(texts[15].as_deref(), Some("n1"));
    }
}
