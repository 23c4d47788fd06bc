//! The embedded trace store: `DataDir/trace.sqlite`, one `events` table.
//!
//! The trace is not the durability path (the spool is), so the database runs in WAL mode
//! with `synchronous = NORMAL`: a power cut may lose the last batches, never corrupt the
//! file, and readers (a read-only connection: the `trace` command, the admin API) never
//! wait for the writer.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags, params};

use super::backend::{self, Arg, Backend, COLUMNS, Cells, Dialect, StoreError};
use super::{TraceEvent, TraceQuery};

/// The file name of the store inside `DataDir`.
pub const FILE_NAME: &str = "trace.sqlite";

/// Rows deleted per statement by a sweep, so one sweep never holds the write lock long.
const SWEEP_CHUNK: usize = 5000;

/// Addresses, ids and connector names compare without regard to ASCII case (`COLLATE
/// NOCASE`), and their indexes are built that way. `node` came with version 2.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    id          INTEGER PRIMARY KEY,
    time_ms     INTEGER NOT NULL,
    event       TEXT NOT NULL,
    queue_id    TEXT,
    message_id  TEXT COLLATE NOCASE,
    sender      TEXT COLLATE NOCASE,
    recipient   TEXT COLLATE NOCASE,
    client_ip   TEXT,
    helo        TEXT,
    connector   TEXT COLLATE NOCASE,
    rule        TEXT,
    host        TEXT,
    ip          TEXT,
    tls         TEXT,
    certificate TEXT,
    reply       TEXT,
    detail      TEXT,
    node        TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ms);
CREATE INDEX IF NOT EXISTS events_queue_id ON events (queue_id);
CREATE INDEX IF NOT EXISTS events_message_id ON events (message_id);
CREATE INDEX IF NOT EXISTS events_sender ON events (sender);
CREATE INDEX IF NOT EXISTS events_recipient ON events (recipient);
CREATE INDEX IF NOT EXISTS events_connector ON events (connector);
";

/// The store's path for a `DataDir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// One connection to the file.
pub struct Sqlite {
    conn: Connection,
    file: PathBuf,
}

impl Sqlite {
    /// Opens (creating `data_dir` and the file if missing, adding the `node` column to a
    /// store of an earlier version) the store for writing.
    pub fn open(data_dir: &Path) -> Result<Sqlite, String> {
        let file = path(data_dir);
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
        std::fs::create_dir_all(data_dir).map_err(|e| fail(&e))?;
        let conn = Connection::open(&file).map_err(|e| fail(&e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| fail(&e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %file.display(), mode, "trace store is not in WAL mode");
        }
        // Checkpoints every 128 pages (512 KB) instead of SQLite's 1000: each checkpoint
        // ends in fsyncs that flush the disk's cache, and a 4 MB one held the spool's
        // commits behind it for tens of milliseconds (the latency benchmark's p99.9).
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 128;")
            .and_then(|()| conn.execute_batch(SCHEMA))
            .and_then(|()| add_node_column(&conn))
            .map_err(|e| fail(&e))?;
        Ok(Sqlite { conn, file })
    }

    /// A read-only connection that works while the relay is writing. An error when the
    /// store does not exist.
    pub fn open_read(data_dir: &Path) -> Result<Sqlite, String> {
        Ok(Sqlite {
            conn: open_read_only(data_dir)?,
            file: path(data_dir),
        })
    }

    fn fail(&self, e: rusqlite::Error) -> StoreError {
        StoreError::permanent(format!("{}: {e}", self.file.display()))
    }
}

/// A read-only connection to the store in `data_dir` (it works while the relay writes);
/// an error naming the file when there is no store or it cannot be opened.
pub(crate) fn open_read_only(data_dir: &Path) -> Result<Connection, String> {
    let file = path(data_dir);
    let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
    if !file.exists() {
        return Err(fail(
            &"no trace store here (the relay creates it in its DataDir when it starts)",
        ));
    }
    let conn = Connection::open_with_flags(
        &file,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| fail(&e))?;
    conn.busy_timeout(Duration::from_secs(5))
        .map_err(|e| fail(&e))?;
    Ok(conn)
}

/// Version 1 stores had no `node` column.
fn add_node_column(conn: &Connection) -> rusqlite::Result<()> {
    let has: i64 = conn.query_row(
        "SELECT COUNT(*) FROM pragma_table_info('events') WHERE name = 'node'",
        [],
        |r| r.get(0),
    )?;
    if has == 0 {
        conn.execute_batch("ALTER TABLE events ADD COLUMN node TEXT")?;
    }
    conn.execute_batch("PRAGMA user_version = 2")
}

impl Backend for Sqlite {
    fn insert(&mut self, node: &str, rows: &[TraceEvent]) -> Result<(), StoreError> {
        let write = |conn: &mut Connection| -> rusqlite::Result<()> {
            let tx = conn.transaction()?;
            {
                let placeholders: Vec<String> = (1..=backend::COLUMN_COUNT)
                    .map(|n| Dialect::Sqlite.param(n))
                    .collect();
                let mut st = tx.prepare(&format!(
                    "INSERT INTO events ({COLUMNS}) VALUES ({})",
                    placeholders.join(", ")
                ))?;
                for e in rows {
                    let t = backend::texts(e);
                    st.execute(params![
                        e.time_ms,
                        e.event.as_str(),
                        t[0],
                        t[1],
                        t[2],
                        t[3],
                        t[4],
                        t[5],
                        t[6],
                        t[7],
                        t[8],
                        t[9],
                        t[10],
                        t[11],
                        t[12],
                        t[13],
                        node,
                    ])?;
                }
            }
            tx.commit()
        };
        write(&mut self.conn).map_err(|e| self.fail(e))
    }

    fn query(&mut self, q: &TraceQuery) -> Result<Vec<TraceEvent>, StoreError> {
        let (sql, args) = super::query::build(q, Dialect::Sqlite);
        let args = args.into_iter().map(|a| match a {
            Arg::Text(t) => Value::Text(t),
            Arg::Int(n) => Value::Integer(n),
        });
        let read = || -> rusqlite::Result<Vec<TraceEvent>> {
            let mut st = self.conn.prepare(&sql)?;
            let rows = st.query_map(rusqlite::params_from_iter(args), |r| {
                backend::event_of(r).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        2,
                        rusqlite::types::Type::Text,
                        e.into(),
                    )
                })
            })?;
            rows.collect()
        };
        let mut rows = read().map_err(|e| self.fail(e))?;
        rows.reverse();
        Ok(rows)
    }

    fn sweep(&mut self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let n = self
                .conn
                .execute(
                    "DELETE FROM events WHERE id IN \
                     (SELECT id FROM events WHERE time_ms < ?1 LIMIT ?2)",
                    params![cutoff_ms, SWEEP_CHUNK as i64],
                )
                .map_err(|e| self.fail(e))?;
            total += n;
            if n < SWEEP_CHUNK {
                return Ok(total);
            }
        }
    }
}

impl Cells for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<i64, String> {
        self.get(i).map_err(|e| e.to_string())
    }

    fn text(&self, i: usize) -> Result<Option<String>, String> {
        self.get(i).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{EventKind, query};

    fn row(kind: EventKind, time_ms: i64, queue_id: &str) -> TraceEvent {
        let mut e = TraceEvent::new(kind);
        e.time_ms = time_ms;
        e.queue_id = Some(queue_id.into());
        e.sender = Some("alice@contoso.test".into());
        e
    }

    #[test]
    fn retention_deletes_rows_older_than_the_period() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("var"); // created by open
        let mut store = Sqlite::open(&data).unwrap();
        let now = 1_795_766_400_000;
        let day = 86_400_000;
        let rows: Vec<TraceEvent> = (0..12_000)
            .map(|i| row(EventKind::Received, now - 31 * day - i, &format!("OLD{i}")))
            .chain([
                row(EventKind::Received, now - 31 * day, "OLDEST"),
                row(EventKind::Received, now - 30 * day, "EDGE"),
                row(EventKind::Delivered, now - 29 * day, "KEPT"),
                row(EventKind::Delivered, now, "NEW"),
            ])
            .collect();
        store.insert("node-a", &rows).unwrap();
        let cutoff = now - 30 * day;
        assert_eq!(store.sweep(cutoff).unwrap(), 12_001, "more than one chunk");
        assert_eq!(store.sweep(cutoff).unwrap(), 0);
        let kept = query(
            &data,
            &TraceQuery {
                limit: 100,
                ..Default::default()
            },
        )
        .unwrap();
        let ids: Vec<_> = kept
            .iter()
            .map(|e| e.queue_id.as_deref().unwrap())
            .collect();
        assert_eq!(ids, ["EDGE", "KEPT", "NEW"]);
        let mut written = rows[12_003].clone();
        written.node = Some("node-a".into());
        assert_eq!(
            kept[2], written,
            "a row reads back as written, naming its node"
        );
    }

    /// A store made before rows named their node gains the column, its old rows none.
    #[test]
    fn a_version_1_store_gains_the_node_column() {
        let dir = tempfile::tempdir().unwrap();
        {
            let v1 = SCHEMA.replace(
                "    detail      TEXT,\n    node        TEXT\n",
                "    detail      TEXT\n",
            );
            assert_ne!(v1, SCHEMA);
            let conn = Connection::open(path(dir.path())).unwrap();
            conn.execute_batch(&v1).unwrap();
            conn.execute(
                "INSERT INTO events (time_ms, event, queue_id) VALUES (1, 'Received', 'OLD')",
                [],
            )
            .unwrap();
        }
        let mut store = Sqlite::open(dir.path()).unwrap();
        store
            .insert("node-b", &[row(EventKind::Delivered, 2, "NEW")])
            .unwrap();
        let rows = query(
            dir.path(),
            &TraceQuery {
                limit: 10,
                ..Default::default()
            },
        )
        .unwrap();
        let nodes: Vec<_> = rows.iter().map(|r| r.node.as_deref()).collect();
        assert_eq!(nodes, [None, Some("node-b")]);
    }
}
