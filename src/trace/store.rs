//! The trace writer: one task that drains the [`Events`] channel in batches (one
//! transaction per batch, off the SMTP and delivery paths) into the store `[Relay]
//! TraceStore` names ([`super::backend`]: SQLite in `DataDir`, or a PostgreSQL shared by a
//! fleet), stamping each row with this node's name, and deletes rows older than
//! `TraceRetentionDays` at start and hourly.
//!
//! **Outages** (a PostgreSQL server down, restarting, unreachable): the batch in hand is
//! kept and retried with back-off (1 s doubling to 30 s); meanwhile new events wait in the
//! channel, and once it is full further events are dropped and counted
//! (`connector_relay_trace_rows_dropped_total{reason="buffer_full"}`), exactly as when the
//! store cannot keep up. Mail never waits for the trace. An outage is logged once when it
//! starts and once when it ends, counted in `connector_relay_trace_store_outages_total`,
//! and `connector_relay_trace_store_up` is 0 while it lasts.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::backend::{self, Backend, Location, StoreError};
use super::{Events, TraceEvent};

pub use super::sqlite::{FILE_NAME, path};

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

/// The first retry after a failed write, doubled per failure up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// How long a stop waits for a write under way (a server that stopped answering).
const STOP_WAIT: Duration = Duration::from_secs(30);

/// The writer's view of the store: shared with the blocking pool, where every store call
/// runs.
type Shared = Arc<Mutex<Box<dyn Backend>>>;

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
        if tokio::time::timeout(STOP_WAIT, self.join).await.is_err() {
            tracing::error!(
                "the trace store did not answer within {STOP_WAIT:?} at stop; its last rows are lost"
            );
        }
    }
}

/// How the writer is set up beyond the store's location.
#[derive(Debug, Clone)]
pub struct WriterOptions {
    pub retention_days: u32,
    /// This node's name, written in every row.
    pub node: String,
    /// Events buffered between the emitters and the writer.
    pub buffer: usize,
}

/// Opens the store (see [`backend::open_writer`]) and starts its writer on the current
/// runtime. The returned [`Events`] feed it.
pub fn start(at: &Location<'_>, options: WriterOptions) -> Result<(Events, Writer), String> {
    let store: Shared = Arc::new(Mutex::new(backend::open_writer(at)?));
    let (events, rx) = Events::channel_with(options.buffer);
    let (stop, stop_rx) = oneshot::channel();
    crate::metrics::trace_store_up();
    let state = State {
        store,
        node: Arc::from(options.node),
        retention_days: options.retention_days,
        batch: Vec::with_capacity(BATCH),
        outage: None,
    };
    let join = tokio::spawn(state.run(rx, stop_rx));
    Ok((events, Writer { stop, join }))
}

/// An outage under way.
struct Outage {
    since: Instant,
    /// When the batch in hand is tried again.
    retry_at: Instant,
    delay: Duration,
}

struct State {
    store: Shared,
    node: Arc<str>,
    retention_days: u32,
    /// Rows read from the channel and not yet written.
    batch: Vec<TraceEvent>,
    outage: Option<Outage>,
}

impl State {
    /// The writer loop: a batch whenever events are queued (whatever is there, up to
    /// [`BATCH`]), a sweep at start and every [`SWEEP_EVERY`], during an outage only the
    /// retries of the batch in hand; on stop the rest of the queue.
    async fn run(mut self, mut rx: mpsc::Receiver<TraceEvent>, mut stop: oneshot::Receiver<()>) {
        let mut next_sweep = Instant::now();
        // A dropped `Writer` (no explicit stop) leaves the writer running until every
        // `Events` handle is gone.
        let mut stoppable = true;
        loop {
            let retry_at = self.outage.as_ref().map(|o| o.retry_at);
            tokio::select! {
                biased;
                r = &mut stop, if stoppable => match r {
                    Ok(()) => break,
                    Err(_) => stoppable = false,
                },
                _ = sleep_until(retry_at), if retry_at.is_some() => self.write().await,
                _ = tokio::time::sleep_until(next_sweep), if retry_at.is_none() => {
                    self.sweep().await;
                    next_sweep = Instant::now() + SWEEP_EVERY;
                }
                n = rx.recv_many(&mut self.batch, BATCH), if retry_at.is_none() => {
                    if n == 0 {
                        break;
                    }
                    let closed = gather(&mut rx, &mut self.batch).await;
                    self.write().await;
                    if closed {
                        break;
                    }
                }
            }
        }
        self.finish(rx).await;
    }

    /// Stop: refuse new events, write every queued one, unless the store is still
    /// unreachable (one last try), then what is left is dropped and counted.
    async fn finish(mut self, mut rx: mpsc::Receiver<TraceEvent>) {
        rx.close();
        loop {
            if self.batch.is_empty() && rx.recv_many(&mut self.batch, BATCH).await == 0 {
                break;
            }
            self.write().await;
            if self.outage.is_some() {
                break;
            }
        }
        let mut left = self.batch.len();
        while rx.try_recv().is_ok() {
            left += 1;
        }
        if left > 0 {
            crate::metrics::trace_rows_dropped("stopped", left as u64);
            tracing::error!(rows = left, "trace store unreachable at stop; rows dropped");
        }
        // Closing a connection blocks (PostgreSQL's client says goodbye): not here.
        let store = self.store;
        blocking(move || drop(store)).await;
    }

    /// Writes the batch in hand. A transient failure keeps it (an outage starts, or goes
    /// on with a longer wait); a refused batch is dropped and counted.
    async fn write(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let rows = std::mem::take(&mut self.batch);
        let (store, node) = (self.store.clone(), self.node.clone());
        let done = blocking(move || {
            let result = lock(&store).insert(&node, &rows);
            (result, rows)
        })
        .await;
        let (result, rows) = match done {
            Some(r) => r,
            None => (
                Err(StoreError::permanent("the trace writer task failed")),
                Vec::new(),
            ),
        };
        match result {
            Ok(()) => self.store_up(rows.len()),
            Err(e) if e.transient => {
                self.batch = rows;
                self.store_down(&e);
            }
            Err(e) => {
                crate::metrics::trace_rows_dropped("refused", rows.len() as u64);
                tracing::error!(error = %e, rows = rows.len(), "trace store refused a batch; rows dropped");
            }
        }
    }

    /// A write succeeded: an outage under way is over.
    fn store_up(&mut self, written: usize) {
        if let Some(o) = self.outage.take() {
            crate::metrics::trace_store_up();
            tracing::warn!(
                down_secs = o.since.elapsed().as_secs(),
                rows = written,
                "trace store reachable again; buffered rows are being written"
            );
        }
    }

    /// A write failed for a reason that may pass: logged and counted once per outage.
    fn store_down(&mut self, e: &StoreError) {
        let now = Instant::now();
        match &mut self.outage {
            Some(o) => {
                o.delay = (o.delay * 2).min(RETRY_MAX);
                o.retry_at = now + o.delay;
                tracing::debug!(error = %e, retry_in = ?o.delay, "trace store still unreachable");
            }
            None => {
                crate::metrics::trace_store_outage();
                tracing::error!(
                    error = %e,
                    "trace store unreachable; rows are buffered (then dropped and counted once the buffer is full) and retried; mail is not affected"
                );
                self.outage = Some(Outage {
                    since: now,
                    retry_at: now + RETRY_FIRST,
                    delay: RETRY_FIRST,
                });
            }
        }
    }

    async fn sweep(&self) {
        let cutoff = super::time::now_ms() - i64::from(self.retention_days) * 86_400_000;
        let store = self.store.clone();
        match blocking(move || lock(&store).sweep(cutoff)).await {
            Some(Ok(0)) => {}
            Some(Ok(n)) => tracing::info!(rows = n, "trace rows past TraceRetentionDays deleted"),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "trace retention sweep failed; it runs again in an hour")
            }
            None => tracing::error!("trace retention sweep task failed"),
        }
    }
}

/// Sleeps until `at` (forever when `None`: the branch is disabled then).
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Box<dyn Backend>> {
    store.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs a store call on the blocking pool; `None` if it panicked.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(f).await.ok()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{EventKind, TraceQuery};

    /// A store that is down for its first `down` calls, recording what it was given.
    struct Flaky {
        down: usize,
        calls: Arc<Mutex<Vec<(String, usize)>>>,
    }

    impl Backend for Flaky {
        fn insert(&mut self, node: &str, rows: &[TraceEvent]) -> Result<(), StoreError> {
            self.calls
                .lock()
                .unwrap()
                .push((node.to_string(), rows.len()));
            if self.down > 0 {
                self.down -= 1;
                return Err(StoreError {
                    transient: true,
                    message: "connection refused".into(),
                });
            }
            Ok(())
        }
        fn query(&mut self, _: &TraceQuery) -> Result<Vec<TraceEvent>, StoreError> {
            Ok(Vec::new())
        }
        fn sweep(&mut self, _: i64) -> Result<usize, StoreError> {
            Ok(0)
        }
    }

    /// An outage keeps the batch in hand and retries it with back-off while new events
    /// wait in the buffer; once the store answers, everything is written, in order.
    #[tokio::test(start_paused = true)]
    async fn an_outage_keeps_rows_and_retries_with_back_off() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let store: Shared = Arc::new(Mutex::new(Box::new(Flaky {
            down: 3,
            calls: calls.clone(),
        })));
        let (events, rx) = Events::channel_with(8);
        let state = State {
            store,
            node: Arc::from("node-a"),
            retention_days: 30,
            batch: Vec::new(),
            outage: None,
        };
        let (stop, stop_rx) = oneshot::channel();
        let join = tokio::spawn(state.run(rx, stop_rx));
        for _ in 0..3 {
            events.emit(TraceEvent::new(EventKind::Received));
        }
        // First try at once, then 1 s, 2 s, 4 s later: the fourth succeeds.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(calls.lock().unwrap().len(), 1);
        for _ in 0..20 {
            events.emit(TraceEvent::new(EventKind::Delivered)); // 8 fit, the rest are dropped
        }
        tokio::time::sleep(Duration::from_secs(8)).await;
        let seen = calls.lock().unwrap().clone();
        assert_eq!(seen.len(), 5, "{seen:?}");
        assert!(
            seen[..4]
                .iter()
                .all(|(n, rows)| n == "node-a" && *rows == 3),
            "{seen:?}"
        );
        assert_eq!(seen[4].1, 8, "the buffered rows after the outage: {seen:?}");
        Writer { stop, join }.finish().await;
    }
}
