//! The queue manager: one task owns the schedule (Stalwart's `queue/manager.rs` pattern).
//! New messages and finished attempts arrive over a channel; due messages are handed to
//! attempt tasks (bounded by a semaphore), which deliver, persist each recipient's
//! outcome, send DSNs, and hand the message back with its next due time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::spool::{Envelope, LogRecord, RcptState, Recovered, Spool, unix_now};
use crate::delivery::{DeliveryJob, DeliveryStatus, RecipientOutcome};
use crate::message::dsn::{DsnAction, DsnInput, DsnKind, DsnRecipient, build_dsn};
use crate::message::received::rfc5322_date;
use crate::trace::{EventKind, Events, TraceEvent};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the queue needs from the delivery engine (a trait so the schedule can be tested
/// without sockets).
pub trait Transport: Send + Sync + 'static {
    fn deliver<'a>(&'a self, job: &'a DeliveryJob<'a>) -> BoxFuture<'a, Vec<RecipientOutcome>>;
}

impl Transport for crate::delivery::Deliverer {
    fn deliver<'a>(&'a self, job: &'a DeliveryJob<'a>) -> BoxFuture<'a, Vec<RecipientOutcome>> {
        Box::pin(crate::delivery::Deliverer::deliver(self, job))
    }
}

/// Timing of retries, notices and expiry (from `[Relay]`).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub fqdn: String,
    pub retry_first: Duration,
    pub retry_max: Duration,
    pub expiration: Duration,
    pub delay_notice: Duration,
    pub max_concurrent_attempts: usize,
}

impl QueueSettings {
    /// Back-off after `attempts` failed attempts: doubling from the first interval, capped.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(16);
        self.retry_first.saturating_mul(factor).min(self.retry_max)
    }
}

/// A message the queue is responsible for.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: String,
    pub env: Envelope,
    pub states: Vec<RcptState>,
    pub last_error: Vec<Option<String>>,
    pub attempts: u32,
    pub delay_notified: bool,
    /// When the message was accepted, on this process's clock (delivery latency metric;
    /// for a message recovered from the spool, reconstructed from its arrival second).
    pub accepted: std::time::Instant,
}

impl Entry {
    pub fn new(id: String, env: Envelope) -> Entry {
        let n = env.recipients.len();
        Entry {
            id,
            env,
            states: vec![RcptState::Pending; n],
            last_error: vec![None; n],
            attempts: 0,
            delay_notified: false,
            accepted: std::time::Instant::now(),
        }
    }

    fn from_recovered(r: Recovered) -> Entry {
        let age = unix_now().saturating_sub(r.envelope.arrived);
        let now = std::time::Instant::now();
        Entry {
            accepted: now.checked_sub(Duration::from_secs(age)).unwrap_or(now),
            id: r.id,
            env: r.envelope,
            states: r.states,
            last_error: r.last_error,
            attempts: r.attempts,
            delay_notified: r.delay_notified,
        }
    }

    fn pending(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i] == RcptState::Pending)
            .collect()
    }
}

enum Msg {
    New(Box<Entry>),
    /// The attempt on message `id` finished; `next` is `None` when the message is done and
    /// removed.
    Done {
        id: String,
        next: Option<(Box<Entry>, Duration)>,
    },
    /// From the admin API (see [`AdminCommand`]).
    Admin(AdminCommand),
}

/// The handle the SMTP side uses to hand over stored messages.
#[derive(Clone)]
pub struct QueueHandle {
    tx: mpsc::UnboundedSender<Msg>,
}

impl QueueHandle {
    /// Schedules a message that is already durably in the spool.
    pub fn submit(&self, id: String, env: Envelope) {
        let _ = self.tx.send(Msg::New(Box::new(Entry::new(id, env))));
    }
}

/// Starts the queue manager on the recovered spool content. Outcomes (Delivered, Deferred,
/// Failed, Expired, DsnSent) go to `events`.
pub fn start(
    spool: Arc<Spool>,
    transport: Arc<dyn Transport>,
    settings: QueueSettings,
    recovered: Vec<Recovered>,
    shutdown: watch::Receiver<bool>,
    events: Events,
) -> (QueueHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let handle = QueueHandle { tx };
    let mgr = Manager {
        spool,
        transport,
        settings: Arc::new(settings),
        handle: handle.clone(),
        schedule: BinaryHeap::new(),
        waiting: HashMap::new(),
        in_flight: HashMap::new(),
        attempts: JoinSet::new(),
        permits: Arc::new(Semaphore::new(1)),
        events,
    };
    let join = tokio::spawn(mgr.run(rx, recovered, shutdown));
    (handle, join)
}

struct Manager {
    spool: Arc<Spool>,
    transport: Arc<dyn Transport>,
    settings: Arc<QueueSettings>,
    handle: QueueHandle,
    schedule: BinaryHeap<Reverse<(Instant, String)>>,
    /// Messages waiting for their due time (not in flight).
    waiting: HashMap<String, (Entry, Instant)>,
    /// Messages under a delivery attempt, as they were when it started (for the admin
    /// API's queue view; the attempt owns the real entry).
    in_flight: HashMap<String, Entry>,
    /// Attempts under way; owned here so that a stop can wait for them, then end them.
    attempts: JoinSet<()>,
    permits: Arc<Semaphore>,
    events: Events,
}

/// How long a stop waits for delivery attempts under way before ending them. An attempt
/// ended this way is retried at the next start (its recipients are still pending).
const ATTEMPT_DRAIN: Duration = Duration::from_secs(10);

impl Manager {
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Msg>,
        recovered: Vec<Recovered>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        self.permits = Arc::new(Semaphore::new(self.settings.max_concurrent_attempts.max(1)));
        let now = Instant::now();
        for r in recovered {
            let e = Entry::from_recovered(r);
            if e.pending().is_empty() {
                // Everything was final but the removal did not happen before a crash.
                let _ = self.spool.remove(&e.id);
                continue;
            }
            self.schedule_at(e, now);
        }
        loop {
            let next = self.schedule.peek().map(|Reverse((t, _))| *t);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Msg::New(e)) => self.schedule_at(*e, Instant::now()),
                    Some(Msg::Done { id, next }) => {
                        self.in_flight.remove(&id);
                        if let Some((e, delay)) = next {
                            self.schedule_at(*e, Instant::now() + delay);
                        }
                    }
                    Some(Msg::Admin(cmd)) => self.admin(cmd),
                    None => break,
                },
                Some(_) = self.attempts.join_next(), if !self.attempts.is_empty() => {}
                _ = sleep_until_opt(next) => self.start_due(),
                _ = shutdown.changed() => break,
            }
        }
        // Let attempts under way finish (their outcomes go to the spool log), then end
        // the stragglers: nothing may deliver after the relay has stopped.
        let in_flight = self.attempts.len();
        let drained = tokio::time::timeout(ATTEMPT_DRAIN, async {
            while self.attempts.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            self.attempts.shutdown().await;
        }
        tracing::info!(
            in_flight,
            drained,
            waiting = self.waiting.len(),
            "queue manager stopped"
        );
    }

    fn schedule_at(&mut self, e: Entry, at: Instant) {
        self.schedule.push(Reverse((at, e.id.clone())));
        self.waiting.insert(e.id.clone(), (e, at));
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        while let Some(Reverse((t, _))) = self.schedule.peek() {
            if *t > now {
                break;
            }
            let Some(Reverse((t, id))) = self.schedule.pop() else {
                break;
            };
            // Stale heap entries (rescheduled since) are skipped.
            if self.waiting.get(&id).is_none_or(|(_, due)| *due != t) {
                continue;
            }
            let Some((entry, _)) = self.waiting.remove(&id) else {
                continue;
            };
            let ctx = AttemptCtx {
                spool: self.spool.clone(),
                transport: self.transport.clone(),
                settings: self.settings.clone(),
                handle: self.handle.clone(),
                events: self.events.clone(),
            };
            let permits = self.permits.clone();
            let tx = self.handle.tx.clone();
            self.in_flight.insert(id.clone(), entry.clone());
            self.attempts.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let next = ctx.attempt(entry).await;
                let next = next.map(|(e, d)| (Box::new(e), d));
                let _ = tx.send(Msg::Done { id, next });
            });
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

struct AttemptCtx {
    spool: Arc<Spool>,
    transport: Arc<dyn Transport>,
    settings: Arc<QueueSettings>,
    handle: QueueHandle,
    events: Events,
}

impl AttemptCtx {
    /// One delivery attempt. Returns the entry and the delay until its next attempt, or
    /// `None` when every recipient is final and the message left the spool.
    async fn attempt(&self, mut entry: Entry) -> Option<(Entry, Duration)> {
        let pending = entry.pending();
        let spool = self.spool.clone();
        let id = entry.id.clone();
        let data = match tokio::task::spawn_blocking(move || spool.read(&id)).await {
            Ok(Ok((_, data))) => data,
            other => {
                tracing::error!(id = %entry.id, error = ?other.err(), "cannot read spooled message; will retry");
                return Some((entry, self.settings.retry_first));
            }
        };
        let recipients: Vec<String> = pending
            .iter()
            .map(|&i| entry.env.recipients[i].clone())
            .collect();
        let job = DeliveryJob {
            id: &entry.id,
            mail_from: &entry.env.mail_from,
            recipients: &recipients,
            data: &data,
            from_outside_org: entry.env.from_outside_org,
        };
        let outcomes = self.transport.deliver(&job).await;
        let now = unix_now();
        let trace = MessageTrace::new(&entry, &data);
        // Deferred rows wait for the next attempt's time.
        let mut deferred = Vec::new();
        let mut records = Vec::new();
        let mut failed = Vec::new();
        for (slot, &i) in pending.iter().enumerate() {
            let Some(o) = outcomes.get(slot) else {
                continue;
            };
            let via = o
                .connector
                .as_deref()
                .map(|c| format!(" via connector \"{c}\""))
                .unwrap_or_default();
            let host = o.remote_host.clone().unwrap_or_default();
            if let Some(w) = &o.would_route {
                // policy.md: a TestMode connector is evaluated and recorded, not used.
                tracing::info!(event = "routed", id = %entry.id, rcpt = %o.recipient, connector = ?o.connector,
                    would_route = %w, "TestMode connector would route this recipient");
            }
            match &o.status {
                DeliveryStatus::Delivered { reply } => {
                    tracing::info!(id = %entry.id, rcpt = %o.recipient, host = %host, connector = ?o.connector, reply = %reply, "delivered");
                    crate::metrics::delivery_latency(entry.accepted.elapsed());
                    let mut e = trace.outcome(EventKind::Delivered, o);
                    e.reply = Some(reply.clone());
                    self.events.emit(e);
                    entry.states[i] = RcptState::Delivered;
                    records.push(LogRecord::Delivered {
                        rcpt: i,
                        detail: format!("{host}{via}: {reply}"),
                    });
                }
                DeliveryStatus::Permanent(f) => {
                    tracing::warn!(id = %entry.id, rcpt = %o.recipient, host = %host, connector = ?o.connector, status = %f.enhanced, text = %f.text, "failed permanently");
                    self.events.emit(trace.failure(EventKind::Failed, o, f));
                    entry.states[i] = RcptState::Failed;
                    records.push(LogRecord::Failed {
                        rcpt: i,
                        detail: describe(f),
                    });
                    failed.push(dsn_recipient(o, &f.enhanced, f, now));
                }
                DeliveryStatus::Temporary(f) => {
                    tracing::info!(id = %entry.id, rcpt = %o.recipient, host = %host, connector = ?o.connector, status = %f.enhanced, text = %f.text, "deferred");
                    deferred.push(trace.failure(EventKind::Deferred, o, f));
                    let d = describe(f);
                    entry.last_error[i] = Some(format!("{d}{via}"));
                    records.push(LogRecord::Deferred { rcpt: i, detail: d });
                }
            }
        }
        entry.attempts += 1;

        // Expiry: what is still pending after MessageExpirationTimeout is returned (5.4.7).
        let age = Duration::from_secs(now.saturating_sub(entry.env.arrived));
        if age >= self.settings.expiration {
            // This attempt's deferrals were the last: they go in before the Expired rows.
            self.emit_deferred(std::mem::take(&mut deferred), entry.attempts, None);
            for i in entry.pending() {
                let last = entry.last_error[i]
                    .clone()
                    .unwrap_or_else(|| "no attempt succeeded".into());
                tracing::warn!(id = %entry.id, rcpt = %entry.env.recipients[i], last = %last, "expired");
                let mut e = trace.event(EventKind::Expired, &entry.env.recipients[i]);
                e.rule = Some("MessageExpirationTimeout".into());
                e.detail = Some(format!(
                    "not delivered after {} (MessageExpirationTimeout); last error: {last}",
                    span(age)
                ));
                self.events.emit(e);
                entry.states[i] = RcptState::Failed;
                records.push(LogRecord::Failed {
                    rcpt: i,
                    detail: format!("5.4.7 expired: {last}"),
                });
                failed.push(DsnRecipient {
                    address: entry.env.recipients[i].clone(),
                    action: DsnAction::Failed,
                    status: "5.4.7".into(),
                    diagnostic: Some(format!("smtp; delivery time expired; last error: {last}")),
                    remote_mta: None,
                    connector: None,
                    last_attempt: Some(rfc5322_date(now)),
                });
            }
        }

        // DSNs go into the spool before the log records the outcome: a crash in between
        // may repeat a DSN, but never lose one.
        if !failed.is_empty() {
            self.send_dsn(&entry, &trace, DsnKind::Failure, &failed, &data, now)
                .await;
        }
        let still_pending = entry.pending();
        if !still_pending.is_empty() && !entry.delay_notified && age >= self.settings.delay_notice {
            let delayed: Vec<DsnRecipient> = still_pending
                .iter()
                .map(|&i| DsnRecipient {
                    address: entry.env.recipients[i].clone(),
                    action: DsnAction::Delayed,
                    status: "4.4.7".into(),
                    diagnostic: entry.last_error[i].as_ref().map(|e| format!("smtp; {e}")),
                    remote_mta: None,
                    connector: None,
                    last_attempt: Some(rfc5322_date(now)),
                })
                .collect();
            self.send_dsn(&entry, &trace, DsnKind::Delay, &delayed, &data, now)
                .await;
            entry.delay_notified = true;
            records.push(LogRecord::DelayNotified);
        }

        let spool = self.spool.clone();
        let id = entry.id.clone();
        let done = still_pending.is_empty();
        let io = tokio::task::spawn_blocking(move || {
            spool.append_log(&id, &records)?;
            if done { spool.remove(&id) } else { Ok(()) }
        })
        .await;
        if let Ok(Err(e)) | Err(e) = io.map_err(std::io::Error::other) {
            tracing::error!(id = %entry.id, error = %e, "cannot record delivery outcome");
        }
        if done {
            // Nothing was deferred (a deferred recipient is pending until it expires).
            return None;
        }
        let mut delay = self.settings.backoff(entry.attempts);
        // Never sleep past the expiry moment: the message must be returned on time.
        let until_expiry = self.settings.expiration.saturating_sub(age);
        if !until_expiry.is_zero() {
            delay = delay.min(until_expiry);
        }
        if !entry.delay_notified {
            let until_notice = self.settings.delay_notice.saturating_sub(age);
            if !until_notice.is_zero() {
                delay = delay.min(until_notice);
            }
        }
        let delay = delay.max(Duration::from_millis(100));
        self.emit_deferred(deferred, entry.attempts, Some(delay));
        Some((entry, delay))
    }

    /// The Deferred rows of an attempt, with when the next attempt is due (`None`: there is
    /// none, the message expired).
    fn emit_deferred(&self, rows: Vec<TraceEvent>, attempts: u32, next: Option<Duration>) {
        let when = match next {
            Some(d) => format!(
                "next attempt at {} (in {})",
                crate::trace::time::format_utc(crate::trace::time::now_ms() + d.as_millis() as i64),
                span(d)
            ),
            None => "no further attempt (expired)".to_string(),
        };
        for mut e in rows {
            e.detail = Some(format!("attempt {attempts}; {when}"));
            self.events.emit(e);
        }
    }

    /// Builds a DSN and queues it, from the null sender, to the original sender. Never to
    /// the null sender (RFC 5321 §4.5.5: no bounces of bounces).
    async fn send_dsn(
        &self,
        entry: &Entry,
        trace: &MessageTrace,
        kind: DsnKind,
        rcpts: &[DsnRecipient],
        original: &[u8],
        now: u64,
    ) {
        if entry.env.mail_from.is_empty() {
            return;
        }
        let dsn_id = self.spool.new_id();
        let message_id = format!("<{dsn_id}@{}>", self.settings.fqdn);
        let input = DsnInput {
            kind,
            reporting_mta: &self.settings.fqdn,
            original_envelope_id: None,
            original_sender: &entry.env.mail_from,
            arrival_date: &rfc5322_date(entry.env.arrived),
            date: &rfc5322_date(now),
            message_id: &message_id,
            recipients: rcpts,
            original_headers: crate::message::header_block(original),
        };
        let data = build_dsn(&input);
        let env = Envelope {
            mail_from: String::new(),
            recipients: vec![entry.env.mail_from.clone()],
            arrived: now,
            inbound_connector: None,
            from_outside_org: false,
            smtputf8: entry.env.smtputf8,
        };
        let spool = self.spool.clone();
        let (id2, env2) = (dsn_id.clone(), env.clone());
        match tokio::task::spawn_blocking(move || spool.store(&id2, &env2, &data)).await {
            Ok(Ok(())) => {
                tracing::info!(id = %entry.id, dsn = %dsn_id, to = %entry.env.mail_from, "DSN queued");
                let about: Vec<&str> = rcpts.iter().map(|r| r.address.as_str()).collect();
                let mut e = trace.event(EventKind::DsnSent, "");
                e.recipient = None;
                e.detail = Some(format!(
                    "{} notice to {} about {}; queued as {dsn_id}",
                    match kind {
                        DsnKind::Failure => "failure",
                        DsnKind::Delay => "delay",
                    },
                    entry.env.mail_from,
                    about.join(", ")
                ));
                self.events.emit(e);
                self.handle.submit(dsn_id, env);
            }
            other => tracing::error!(id = %entry.id, error = ?other, "cannot store DSN"),
        }
    }
}

/// What every trace row of one message shares.
struct MessageTrace {
    queue_id: String,
    message_id: Option<String>,
    sender: String,
}

impl MessageTrace {
    fn new(entry: &Entry, data: &[u8]) -> Self {
        MessageTrace {
            queue_id: entry.id.clone(),
            message_id: crate::message::message_id(data),
            sender: entry.env.mail_from.clone(),
        }
    }

    fn event(&self, kind: EventKind, recipient: &str) -> TraceEvent {
        let mut e = TraceEvent::new(kind);
        e.queue_id = Some(self.queue_id.clone());
        e.message_id = self.message_id.clone();
        e.sender = Some(self.sender.clone());
        e.recipient = Some(recipient.to_string());
        e
    }

    /// A recipient's outcome: connector, the host that answered, TLS.
    fn outcome(&self, kind: EventKind, o: &RecipientOutcome) -> TraceEvent {
        let mut e = self.event(kind, &o.recipient);
        e.connector = o.connector.clone();
        if let Some(remote) = &o.remote_host {
            // `host [ip]`
            match remote.strip_suffix(']').and_then(|r| r.rsplit_once(" [")) {
                Some((host, ip)) => {
                    e.host = Some(host.to_string());
                    e.ip = Some(ip.to_string());
                }
                None => e.host = Some(remote.clone()),
            }
        }
        e.tls = o
            .tls
            .as_ref()
            .map(|t| format!("{} {}", t.version, t.cipher));
        e
    }

    /// Deferred or Failed: the reason class and the reply or error.
    fn failure(
        &self,
        kind: EventKind,
        o: &RecipientOutcome,
        f: &crate::delivery::Failure,
    ) -> TraceEvent {
        let mut e = self.outcome(kind, o);
        e.rule = reason_class(&f.enhanced).map(str::to_string);
        e.reply = Some(describe(f));
        e
    }
}

/// The RFC 3463 subject of an enhanced status code, as the reason class of a Deferred or
/// Failed row (`4.4.1` → `NetworkRouting`, `5.7.1` → `Security`).
fn reason_class(enhanced: &str) -> Option<&'static str> {
    Some(match enhanced.split('.').nth(1)? {
        "0" => "Other",
        "1" => "Addressing",
        "2" => "Mailbox",
        "3" => "MailSystem",
        "4" => "NetworkRouting",
        "5" => "Protocol",
        "6" => "Content",
        "7" => "Security",
        _ => return None,
    })
}

/// A duration for people: `90s`, `5m`, `2h 30m`, `2d 4h`.
fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h {}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {}h", s / 86_400, s / 3600 % 24),
    }
}

// ---- Admin commands (the admin API's queue routes and gauges) ------------------------
// Kept in one block, apart from the delivery logic above: a command carries a oneshot for
// its answer and is handled by the manager task, which owns the schedule (DESIGN.md).

/// A message in the queue, as the admin API shows it.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    pub id: String,
    /// `""` = the null sender (a DSN).
    pub mail_from: String,
    pub recipients: Vec<QueuedRecipient>,
    pub attempts: u32,
    /// Unix time of arrival.
    pub arrived: u64,
    /// Unix time of the next attempt; `None` while an attempt is under way.
    pub next_attempt: Option<u64>,
    pub in_flight: bool,
    pub inbound_connector: Option<String>,
}

#[derive(Debug, Clone)]
pub struct QueuedRecipient {
    pub address: String,
    pub state: RcptState,
    /// The last temporary failure (for a pending recipient).
    pub last_error: Option<String>,
}

/// Queue depth and the oldest arrival (gauges).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub depth: usize,
    /// Unix time of the oldest message's arrival.
    pub oldest_arrived: Option<u64>,
}

/// Why an admin command on one message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no message with this id is in the queue")]
    NotFound,
    #[error("a delivery attempt for this message is under way; try again when it has finished")]
    InFlight,
    #[error("the queue manager is not running")]
    Stopped,
    #[error("{0}")]
    Io(String),
}

/// A request from the admin API to the manager task.
pub enum AdminCommand {
    List(oneshot::Sender<Vec<QueuedMessage>>),
    /// Attempt the message now instead of at its scheduled time.
    Retry(String, oneshot::Sender<Result<(), AdminError>>),
    /// Remove the message from the queue and the spool without any DSN (`postsuper -d`).
    Delete(String, oneshot::Sender<Result<(), AdminError>>),
    Stats(oneshot::Sender<QueueStats>),
    /// New retry/expiry settings (live reload); used from the next attempt on.
    Settings(QueueSettings),
}

impl QueueHandle {
    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> AdminCommand) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Admin(cmd(tx))).ok()?;
        rx.await.ok()
    }

    /// Every message in the queue, oldest first.
    pub async fn list(&self) -> Vec<QueuedMessage> {
        self.ask(AdminCommand::List).await.unwrap_or_default()
    }

    pub async fn retry(&self, id: &str) -> Result<(), AdminError> {
        let id = id.to_string();
        self.ask(|tx| AdminCommand::Retry(id, tx))
            .await
            .unwrap_or(Err(AdminError::Stopped))
    }

    pub async fn delete(&self, id: &str) -> Result<(), AdminError> {
        let id = id.to_string();
        self.ask(|tx| AdminCommand::Delete(id, tx))
            .await
            .unwrap_or(Err(AdminError::Stopped))
    }

    pub async fn stats(&self) -> QueueStats {
        self.ask(AdminCommand::Stats).await.unwrap_or_default()
    }

    pub fn update_settings(&self, settings: QueueSettings) {
        let _ = self.tx.send(Msg::Admin(AdminCommand::Settings(settings)));
    }
}

impl Manager {
    fn admin(&mut self, cmd: AdminCommand) {
        match cmd {
            AdminCommand::List(reply) => {
                let now = Instant::now();
                let unix = unix_now();
                let waiting = self.waiting.values().map(|(e, due)| {
                    let wait = due.saturating_duration_since(now).as_secs();
                    queued(e, Some(unix + wait))
                });
                let running = self.in_flight.values().map(|e| queued(e, None));
                let mut all: Vec<QueuedMessage> = waiting.chain(running).collect();
                all.sort_by(|a, b| (a.arrived, &a.id).cmp(&(b.arrived, &b.id)));
                let _ = reply.send(all);
            }
            AdminCommand::Retry(id, reply) => {
                let answer = if self.in_flight.contains_key(&id) {
                    Err(AdminError::InFlight)
                } else if let Some((entry, _)) = self.waiting.remove(&id) {
                    self.schedule_at(entry, Instant::now());
                    Ok(())
                } else {
                    Err(AdminError::NotFound)
                };
                let _ = reply.send(answer);
            }
            AdminCommand::Delete(id, reply) => {
                if self.in_flight.contains_key(&id) {
                    let _ = reply.send(Err(AdminError::InFlight));
                    return;
                }
                // Its heap entry goes stale and is skipped by `start_due`.
                if self.waiting.remove(&id).is_none() {
                    let _ = reply.send(Err(AdminError::NotFound));
                    return;
                }
                tracing::warn!(id = %id, "deleted from the queue by the admin API (no DSN)");
                let spool = self.spool.clone();
                tokio::spawn(async move {
                    let removed = tokio::task::spawn_blocking(move || spool.remove(&id)).await;
                    let answer = match removed {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(e)) => Err(AdminError::Io(e.to_string())),
                        Err(e) => Err(AdminError::Io(e.to_string())),
                    };
                    let _ = reply.send(answer);
                });
            }
            AdminCommand::Stats(reply) => {
                let entries = self
                    .waiting
                    .values()
                    .map(|(e, _)| e)
                    .chain(self.in_flight.values());
                let mut stats = QueueStats::default();
                for e in entries {
                    stats.depth += 1;
                    stats.oldest_arrived = Some(
                        stats
                            .oldest_arrived
                            .map_or(e.env.arrived, |o| o.min(e.env.arrived)),
                    );
                }
                let _ = reply.send(stats);
            }
            AdminCommand::Settings(settings) => self.settings = Arc::new(settings),
        }
    }
}

fn queued(e: &Entry, next_attempt: Option<u64>) -> QueuedMessage {
    QueuedMessage {
        id: e.id.clone(),
        mail_from: e.env.mail_from.clone(),
        recipients: (0..e.env.recipients.len())
            .map(|i| QueuedRecipient {
                address: e.env.recipients[i].clone(),
                state: e.states[i].clone(),
                last_error: e.last_error[i].clone(),
            })
            .collect(),
        attempts: e.attempts,
        arrived: e.env.arrived,
        next_attempt,
        in_flight: next_attempt.is_none(),
        inbound_connector: e.env.inbound_connector.clone(),
    }
}

fn describe(f: &crate::delivery::Failure) -> String {
    match f.code {
        Some(c) => format!("{c} {} {}", f.enhanced, f.text),
        None => format!("{} {}", f.enhanced, f.text),
    }
}

fn dsn_recipient(
    o: &RecipientOutcome,
    status: &str,
    f: &crate::delivery::Failure,
    now: u64,
) -> DsnRecipient {
    DsnRecipient {
        address: o.recipient.clone(),
        action: DsnAction::Failed,
        status: status.to_string(),
        diagnostic: Some(format!("smtp; {}", describe(f))),
        remote_mta: o.remote_host.clone(),
        connector: o.connector.clone(),
        last_attempt: Some(rfc5322_date(now)),
    }
}
