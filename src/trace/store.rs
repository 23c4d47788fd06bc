//! The trace store: `DataDir/trace.sqlite`, one `events` table, written by one task that
//! drains the [`Events`] channel in batches (one transaction per batch, off the SMTP and
//! delivery paths) and deletes rows older than `TraceRetentionDays` at start and hourly.
//!
//! The trace is not the durability path (the spool is), so the database runs in WAL mode
//! with `synchronous = NORMAL`: a power cut may lose the last batches, never corrupt the
//! file, and readers ([`super::query`], the `trace` command) never wait for the writer.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{Events, TraceEvent};

/// The file name of the store inside `DataDir`.
pub const FILE_NAME: &str = "trace.sqlite";

/// The most rows written in one transaction.
pub const BATCH: usize = 1000;

/// How long the writer gathers events before writing them: one transaction per quarter
/// second instead of one per trickle of events. Every transaction rewrites the table's and
/// the six indexes' last pages into SQLite's WAL; written per event it was 1.5 GB of disk
/// writes (and a flush per checkpoint) for 17,000 messages in the latency benchmark,
/// competing with the spool's syncs.
const GATHER: Duration = Duration::from_millis(250);

/// How often old rows are deleted after the sweep at start.
const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// Rows deleted per statement by a sweep, so one sweep never holds the write lock long.
const SWEEP_CHUNK: usize = 5000;

/// The columns after `id`, in [`TraceEvent`] field order (the query reads them back in
/// this order). Addresses, ids and connector names compare without regard to ASCII case
/// (`COLLATE NOCASE`), and their indexes are built that way.
pub(super) const COLUMNS: &str = "time_ms, event, queue_id, message_id, sender, recipient, \
     client_ip, helo, connector, rule, host, ip, tls, certificate, reply, detail";

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
    detail      TEXT
);
CREATE INDEX IF NOT EXISTS events_time ON events (time_ms);
CREATE INDEX IF NOT EXISTS events_queue_id ON events (queue_id);
CREATE INDEX IF NOT EXISTS events_message_id ON events (message_id);
CREATE INDEX IF NOT EXISTS events_sender ON events (sender);
CREATE INDEX IF NOT EXISTS events_recipient ON events (recipient);
CREATE INDEX IF NOT EXISTS events_connector ON events (connector);
PRAGMA user_version = 1;
";

/// The store's path for a `DataDir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The writer's connection.
pub struct Store {
    conn: Connection,
    retention_days: u32,
}

impl Store {
    /// Opens (creating `data_dir` and the file if missing) the store for writing.
    pub fn open(data_dir: &Path, retention_days: u32) -> Result<Store, String> {
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
            .map_err(|e| fail(&e))?;
        Ok(Store {
            conn,
            retention_days,
        })
    }

    /// Writes `events` in one transaction.
    pub fn insert(&mut self, events: &[TraceEvent]) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        {
            let mut st = tx.prepare(&format!(
                "INSERT INTO events ({COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)"
            ))?;
            for e in events {
                st.execute(params![
                    e.time_ms,
                    e.event.as_str(),
                    e.queue_id,
                    e.message_id,
                    e.sender,
                    e.recipient,
                    e.client_ip,
                    e.helo,
                    e.connector,
                    e.rule,
                    e.host,
                    e.ip,
                    e.tls,
                    e.certificate,
                    e.reply,
                    e.detail,
                ])?;
            }
        }
        tx.commit()
    }

    /// Deletes the rows older than the retention period; returns how many.
    pub fn sweep(&self, now_ms: i64) -> rusqlite::Result<usize> {
        let cutoff = now_ms - i64::from(self.retention_days) * 86_400_000;
        let mut total = 0;
        loop {
            let n = self.conn.execute(
                "DELETE FROM events WHERE id IN \
                 (SELECT id FROM events WHERE time_ms < ?1 LIMIT ?2)",
                params![cutoff, SWEEP_CHUNK as i64],
            )?;
            total += n;
            if n < SWEEP_CHUNK {
                return Ok(total);
            }
        }
    }
}

/// The running writer; [`Writer::finish`] stops it after writing what is queued.
pub struct Writer {
    stop: oneshot::Sender<()>,
    join: tokio::task::JoinHandle<()>,
}

impl Writer {
    /// Stops the writer once everything emitted so far is written (call it after the
    /// emitters have stopped: later events are dropped).
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.join.await;
    }
}

/// Opens the store in `data_dir` and starts its writer on the current runtime. The
/// returned [`Events`] feed it.
pub fn start(data_dir: &Path, retention_days: u32) -> Result<(Events, Writer), String> {
    let store = Store::open(data_dir, retention_days)?;
    let (events, rx) = Events::channel();
    let (stop, stop_rx) = oneshot::channel();
    let join = tokio::spawn(run(Arc::new(Mutex::new(store)), rx, stop_rx));
    Ok((events, Writer { stop, join }))
}

/// The writer loop: a batch whenever events are queued (whatever is there, up to
/// [`BATCH`]), a sweep at start and every [`SWEEP_EVERY`], and on stop the rest of the
/// queue. The SQLite work runs on the blocking pool.
async fn run(
    store: Arc<Mutex<Store>>,
    mut rx: mpsc::Receiver<TraceEvent>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut next_sweep = Instant::now();
    // A dropped `Writer` (no explicit stop) leaves the writer running until every
    // `Events` handle is gone.
    let mut stoppable = true;
    loop {
        tokio::select! {
            biased;
            r = &mut stop, if stoppable => match r {
                Ok(()) => break,
                Err(_) => stoppable = false,
            },
            _ = tokio::time::sleep_until(next_sweep) => {
                sweep(&store).await;
                next_sweep = Instant::now() + SWEEP_EVERY;
            }
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                let closed = gather(&mut rx, &mut batch).await;
                write(&store, &mut batch).await;
                if closed {
                    break;
                }
            }
        }
    }
    // Stop: refuse new events, write every queued one.
    rx.close();
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        write(&store, &mut batch).await;
    }
}

/// Adds the events that arrive within [`GATHER`] to `batch` (up to [`BATCH`]); true when
/// the channel closed.
async fn gather(rx: &mut mpsc::Receiver<TraceEvent>, batch: &mut Vec<TraceEvent>) -> bool {
    let deadline = Instant::now() + GATHER;
    while batch.len() < BATCH {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            n = rx.recv_many(batch, BATCH - batch.len()) => if n == 0 {
                return true;
            },
        }
    }
    false
}

async fn write(store: &Arc<Mutex<Store>>, batch: &mut Vec<TraceEvent>) {
    let rows = std::mem::replace(batch, Vec::with_capacity(BATCH));
    let store = store.clone();
    let n = rows.len();
    let done = tokio::task::spawn_blocking(move || {
        let mut s = store.lock().unwrap_or_else(|e| e.into_inner());
        s.insert(&rows)
    })
    .await;
    match done {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, rows = n, "trace store write failed; rows dropped")
        }
        Err(e) => tracing::error!(error = %e, rows = n, "trace writer task failed; rows dropped"),
    }
}

async fn sweep(store: &Arc<Mutex<Store>>) {
    let store = store.clone();
    let done = tokio::task::spawn_blocking(move || {
        let s = store.lock().unwrap_or_else(|e| e.into_inner());
        s.sweep(super::time::now_ms())
    })
    .await;
    match done {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(rows = n, "trace rows past TraceRetentionDays deleted"),
        Ok(Err(e)) => tracing::error!(error = %e, "trace retention sweep failed"),
        Err(e) => tracing::error!(error = %e, "trace retention sweep failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{EventKind, TraceQuery, query};

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
        let mut store = Store::open(&data, 30).unwrap();
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
        store.insert(&rows).unwrap();
        assert_eq!(store.sweep(now).unwrap(), 12_001, "more than one chunk");
        assert_eq!(store.sweep(now).unwrap(), 0);
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
        assert_eq!(kept[2], rows[12_003], "a row reads back as written");
    }
}
