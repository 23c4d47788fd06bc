//! Message trace: one [`TraceEvent`] per thing that happened to a session, message or
//! recipient. Emitters (SMTP session, relay backend, queue manager, delivery engine) call
//! [`Events::emit`], which never blocks: the event is handed to a bounded channel read by the
//! trace writer (written in batches off the hot path) and counted by the metrics.
//!
//! [`store`] is the writer, [`backend`] the store interface with its two implementations,
//! [`sqlite`] (`DataDir/trace.sqlite`, the default) and [`postgres`] (shared by a fleet,
//! `[Relay] TraceStore`, see [`target`]); [`query`] reads rows back (the `trace` command,
//! the admin API), [`reports`] aggregates them (the Reports view, the `report` command),
//! [`facts`] is the per-transaction `Session` row's facts (written by the relay backend,
//! read back by `whatif`), [`time`] parses the `--since` / `--until` bounds and [`table`]
//! prints rows for people.

pub mod backend;
pub mod facts;
pub mod postgres;
pub mod query;
pub mod reports;
pub mod sqlite;
pub mod store;
pub mod table;
pub mod target;
pub mod time;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use query::{TraceFilter, TraceQuery, query, query_store};
pub use target::StoreTarget;
pub use time::parse_since;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    /// A message was accepted (answered 250 after it was spooled).
    Received,
    /// A session, sender, recipient or message was refused (the rule and connector say why).
    Rejected,
    /// A recipient was given a route (outbound connector; "would route" under TestMode).
    Routed,
    /// One delivery attempt toward one next hop.
    Attempt,
    Delivered,
    Deferred,
    Failed,
    DsnSent,
    Expired,
    /// One per mail transaction, when it ends (refused at MAIL FROM, answered at DATA, reset
    /// or cut off): the facts its decisions were made from, as compact JSON in `detail`
    /// ([`facts`]), so that they can be made again under another policy (`whatif`). Not
    /// shown by [`query`]: the other rows say the same to a person.
    Session,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Received,
        EventKind::Rejected,
        EventKind::Routed,
        EventKind::Attempt,
        EventKind::Delivered,
        EventKind::Deferred,
        EventKind::Failed,
        EventKind::DsnSent,
        EventKind::Expired,
        EventKind::Session,
    ];

    /// The kind named by [`EventKind::as_str`].
    pub fn parse(name: &str) -> Option<EventKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Received => "Received",
            EventKind::Rejected => "Rejected",
            EventKind::Routed => "Routed",
            EventKind::Attempt => "Attempt",
            EventKind::Delivered => "Delivered",
            EventKind::Deferred => "Deferred",
            EventKind::Failed => "Failed",
            EventKind::DsnSent => "DsnSent",
            EventKind::Expired => "Expired",
            EventKind::Session => "Session",
        }
    }
}

/// One trace row. Fields that do not apply to an event are `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEvent {
    /// Unix time in milliseconds.
    pub time_ms: i64,
    pub event: EventKind,
    /// The relay's queue id of the message (absent for a session refused before DATA).
    pub queue_id: Option<String>,
    /// The message's `Message-ID` header.
    pub message_id: Option<String>,
    /// The envelope sender (MAIL FROM); empty for the null sender `<>`.
    pub sender: Option<String>,
    pub recipient: Option<String>,
    pub client_ip: Option<String>,
    pub helo: Option<String>,
    /// The inbound connector (Received, Rejected) or outbound/send connector (Routed,
    /// Attempt, Delivered, ...).
    pub connector: Option<String>,
    /// The rule that refused (Rejected), or the reason class (Deferred, Failed).
    pub rule: Option<String>,
    /// Next hop host name and address (Attempt, Delivered, Deferred, Failed).
    pub host: Option<String>,
    pub ip: Option<String>,
    /// TLS version and cipher, e.g. `TLSv1.3 TLS13_AES_256_GCM_SHA384`.
    pub tls: Option<String>,
    /// Client certificate subject (Received/Rejected) or the server certificate checks and
    /// their result (Attempt).
    pub certificate: Option<String>,
    /// The SMTP reply given (Rejected) or received (Attempt, Delivered, Deferred, Failed).
    pub reply: Option<String>,
    /// Anything else worth reading (route description, DSN kind, size, ...).
    pub detail: Option<String>,
    /// The relay node that wrote the row (`run --node`, default the host name): set by the
    /// store when the row is read back, never by emitters.
    #[serde(default)]
    pub node: Option<String>,
}

impl TraceEvent {
    /// An event of `kind` at the current time with every other field empty.
    pub fn new(kind: EventKind) -> Self {
        let time_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        TraceEvent {
            time_ms,
            event: kind,
            queue_id: None,
            message_id: None,
            sender: None,
            recipient: None,
            client_ip: None,
            helo: None,
            connector: None,
            rule: None,
            host: None,
            ip: None,
            tls: None,
            certificate: None,
            reply: None,
            detail: None,
            node: None,
        }
    }
}

/// The emitting end: cheap to clone, never blocks. A full channel drops the event (and
/// counts the drop) rather than slow down SMTP or delivery.
#[derive(Clone, Default)]
pub struct Events {
    tx: Option<mpsc::Sender<TraceEvent>>,
}

/// Events dropped because the channel was full, since the process started.
static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Events buffered between the emitters and the writer.
pub const CHANNEL_CAPACITY: usize = 65_536;

impl Events {
    /// Events that go nowhere (unit tests, tools that do not trace).
    pub fn disabled() -> Self {
        Events { tx: None }
    }

    /// A handle and the receiving end for the writer, buffering [`CHANNEL_CAPACITY`] events.
    pub fn channel() -> (Self, mpsc::Receiver<TraceEvent>) {
        Self::channel_with(CHANNEL_CAPACITY)
    }

    /// [`Events::channel`] buffering `capacity` events (at least 1).
    pub fn channel_with(capacity: usize) -> (Self, mpsc::Receiver<TraceEvent>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Events { tx: Some(tx) }, rx)
    }

    pub fn emit(&self, event: TraceEvent) {
        crate::metrics::observe(&event);
        let Some(tx) = &self.tx else {
            return;
        };
        match tx.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Warn on the first drop and every 1000th: a flood must not flood the log.
                let n = DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                crate::metrics::trace_rows_dropped("buffer_full", 1);
                if n % 1000 == 1 {
                    tracing::warn!(dropped = n, "trace channel full; events dropped");
                }
            }
            // The writer has stopped (relay shutdown): a straggler's event.
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::debug!("trace writer stopped; event dropped")
            }
        }
    }
}
