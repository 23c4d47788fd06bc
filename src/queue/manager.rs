//! The queue scheduler: one task owns every queued message and one delivery queue per next
//! hop (Exchange's per-next-hop queues, Postfix qmgr's per-destination scheduling).
//!
//! - A message's pending recipients are routed when it arrives ([`Transport::queue_key`],
//!   no I/O) and split into *batches*, one per next hop; each batch waits in its hop's
//!   queue ([`super::hop`]).
//! - Batches start in round-robin order over the queues that may start one, within
//!   `MaxOutboundConnections` in all and `MaxPerDomainOutboundConnections` per queue, so a
//!   queue with 100,000 messages cannot starve one with 1.
//! - A batch that could not use its next hop at all puts the *queue* in Retry: its
//!   messages wait without attempts until a probe succeeds. Other failures stay the
//!   message's: its batch waits `TransientFailureRetryInterval`, doubling up to
//!   `MaxRetryInterval`.
//! - Expiry and the delay notice run on timers of their own, so a message waiting in a
//!   queue in Retry is returned on time. Both are measured on tokio's clock from the
//!   message's age at admission (its Unix arrival second), so paused-clock tests see them.
//!
//! Tasks ([`super::attempt`]) deliver, persist and notify; they report back over the
//! channel and decide nothing about the schedule. Hop state lives here, not in the
//! delivery engine, so a reload (which swaps the engine) keeps it.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::attempt::{self, Batch, BatchDone, FailNow, MessageRef, RcptResult, Work};
use super::hop::{HopId, HopLimits, HopQueue};
use super::notices::{Notifier, when};
use super::spool::{Envelope, RcptState, Recovered, Spool, unix_now};
use crate::delivery::{DeliveryJob, Failure, QueueKey, RecipientOutcome};
use crate::trace::{EventKind, Events, TraceEvent};

pub use super::admin::{
    AdminCommand, AdminError, QueueStats, QueueView, QueuedMessage, QueuedRecipient,
};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the queue needs from the delivery engine (a trait so the schedule can be tested
/// without sockets).
pub trait Transport: Send + Sync + 'static {
    /// The delivery queue of one recipient: route selection only, no I/O. An address that
    /// can never be routed fails now.
    fn queue_key(&self, recipient: &str, from_outside_org: bool) -> Result<QueueKey, Failure>;

    /// Delivers one batch (recipients of one queue); one outcome per recipient, in order.
    fn deliver<'a>(&'a self, job: &'a DeliveryJob<'a>) -> BoxFuture<'a, Vec<RecipientOutcome>>;

    /// Changes whenever routing may have changed (a reload): pending recipients are routed
    /// again.
    fn generation(&self) -> u64 {
        0
    }
}

impl Transport for crate::delivery::Deliverer {
    fn queue_key(&self, recipient: &str, from_outside_org: bool) -> Result<QueueKey, Failure> {
        crate::delivery::Deliverer::queue_key(self, recipient, from_outside_org)
    }

    fn deliver<'a>(&'a self, job: &'a DeliveryJob<'a>) -> BoxFuture<'a, Vec<RecipientOutcome>> {
        Box::pin(crate::delivery::Deliverer::deliver(self, job))
    }
}

/// Timing and limits (from `[Relay]`).
#[derive(Debug, Clone)]
pub struct QueueSettings {
    pub fqdn: String,
    /// `TransientFailureRetryInterval`: a message's first retry.
    pub retry_first: Duration,
    /// `MaxRetryInterval`: cap of the message back-off.
    pub retry_max: Duration,
    pub expiration: Duration,
    pub delay_notice: Duration,
    /// `MaxOutboundConnections`: attempts under way in all (each holds at most one
    /// connection at a time).
    pub max_connections: usize,
    pub hop: HopLimits,
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
    pub env: Arc<Envelope>,
    pub states: Vec<RcptState>,
    pub last_error: Vec<Option<String>>,
    pub attempts: u32,
    pub delay_notified: bool,
    /// Its Message-ID, when known (for the trace rows written without reading it back;
    /// `None` for a message recovered from the spool).
    pub message_id: Option<String>,
    /// When the message was accepted, on this process's clock (delivery latency metric;
    /// for a message recovered from the spool, reconstructed from its arrival second).
    pub accepted: std::time::Instant,
}

impl Entry {
    pub fn new(id: String, env: Envelope, message_id: Option<String>) -> Entry {
        let n = env.recipients.len();
        Entry {
            id,
            env: Arc::new(env),
            states: vec![RcptState::Pending; n],
            last_error: vec![None; n],
            attempts: 0,
            delay_notified: false,
            message_id,
            accepted: std::time::Instant::now(),
        }
    }

    fn from_recovered(r: Recovered) -> Entry {
        let age = unix_now().saturating_sub(r.envelope.arrived);
        let now = std::time::Instant::now();
        Entry {
            accepted: now.checked_sub(Duration::from_secs(age)).unwrap_or(now),
            id: r.id,
            env: Arc::new(r.envelope),
            states: r.states,
            last_error: r.last_error,
            attempts: r.attempts,
            delay_notified: r.delay_notified,
            message_id: None,
        }
    }

    pub fn pending(&self) -> Vec<usize> {
        (0..self.states.len())
            .filter(|&i| self.states[i] == RcptState::Pending)
            .collect()
    }

    fn age(&self) -> Duration {
        Duration::from_secs(unix_now().saturating_sub(self.env.arrived))
    }
}

/// When a batch may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// In its hop's ready list (or held there while the message is suspended).
    Ready,
    /// Waiting for a message retry.
    At(Instant),
    /// Under way.
    Running,
}

/// A message's recipients on one hop.
#[derive(Debug)]
pub(super) struct HopBatch {
    pub hop: HopId,
    pub rcpts: Vec<usize>,
    pub due: Due,
    /// A "held: queue in Retry" row was written for it (once per batch).
    pub held_noted: bool,
}

/// A message under the scheduler.
pub(super) struct Held {
    pub entry: Entry,
    pub batches: Vec<HopBatch>,
    /// Tasks holding the message (attempts, notices); it can be neither deleted nor
    /// removed while any does.
    pub busy: usize,
    pub suspended: bool,
    /// `MessageExpirationTimeout`, on tokio's clock.
    pub expires: Instant,
    /// `DelayNotificationTimeout`, on tokio's clock.
    pub notice_at: Instant,
    /// Its entry in the timers (expiry or delay notice).
    pub timer_at: Option<Instant>,
    pub io: Arc<tokio::sync::Mutex<()>>,
    /// The routing generation its batches were built with.
    pub generation: u64,
}

impl Held {
    pub fn batch(&self, hop: HopId) -> Option<&HopBatch> {
        self.batches.iter().find(|b| b.hop == hop)
    }

    fn batch_mut(&mut self, hop: HopId) -> Option<&mut HopBatch> {
        self.batches.iter_mut().find(|b| b.hop == hop)
    }

    fn running(&self, rcpt: usize) -> bool {
        self.batches
            .iter()
            .any(|b| b.due == Due::Running && b.rcpts.contains(&rcpt))
    }

    fn reference(&self, last: bool) -> MessageRef {
        MessageRef {
            id: self.entry.id.clone(),
            env: self.entry.env.clone(),
            io: self.io.clone(),
            last,
        }
    }
}

pub(super) enum Msg {
    New(Box<Entry>),
    BatchDone(BatchDone),
    /// A notice task (expiry, unroutable, delay) ended; `removed`: it removed the message.
    TaskDone {
        id: String,
        removed: bool,
    },
    /// From the admin API (see [`AdminCommand`]).
    Admin(AdminCommand),
}

/// The handle the SMTP side uses to hand over stored messages.
#[derive(Clone)]
pub struct QueueHandle {
    pub(super) tx: mpsc::UnboundedSender<Msg>,
}

impl QueueHandle {
    /// Schedules a message that is already durably in the spool.
    pub fn submit(&self, id: String, env: Envelope, message_id: Option<String>) {
        let entry = Entry::new(id, env, message_id);
        let _ = self.tx.send(Msg::New(Box::new(entry)));
    }

    /// Schedules a message recovered from a spool, with its recipients' states: one just
    /// adopted from another node's spool (`queue adopt`), now durably in this one.
    pub fn adopt(&self, r: Recovered) {
        let _ = self.tx.send(Msg::New(Box::new(Entry::from_recovered(r))));
    }
}

/// Starts the scheduler on the recovered spool content. Outcomes (Delivered, Deferred,
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
    let handle = QueueHandle { tx: tx.clone() };
    let work = Arc::new(Work {
        notifier: Notifier {
            spool: spool.clone(),
            handle: handle.clone(),
            events: events.clone(),
            fqdn: settings.fqdn.clone(),
        },
        spool,
        transport,
        events,
    });
    let mgr = Manager {
        generation: work.transport.generation(),
        work,
        settings,
        tx,
        messages: HashMap::new(),
        hops: HashMap::new(),
        hop_ids: HashMap::new(),
        next_hop_id: 1,
        runnable: VecDeque::new(),
        active: 0,
        timers: BTreeSet::new(),
        tasks: JoinSet::new(),
    };
    let join = tokio::spawn(mgr.run(rx, recovered, shutdown));
    (handle, join)
}

/// What a timer is for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// A message's batch on a hop is due again (message retry).
    Batch(String, HopId),
    /// A queue in Retry may probe.
    Hop(HopId),
    /// A message's expiry or delay notice.
    Message(String),
}

pub(super) struct Manager {
    pub(super) work: Arc<Work>,
    pub(super) settings: QueueSettings,
    tx: mpsc::UnboundedSender<Msg>,
    pub(super) messages: HashMap<String, Held>,
    pub(super) hops: HashMap<HopId, HopQueue>,
    hop_ids: HashMap<QueueKey, HopId>,
    next_hop_id: HopId,
    /// Queues that may start a batch, in round-robin order (each at most once).
    runnable: VecDeque<HopId>,
    /// Attempts under way, in all.
    active: usize,
    /// Due times. A message's entries are removed when it leaves (the set stays as large
    /// as the queue, not as the traffic of the last `MessageExpirationTimeout`); others
    /// that went stale are skipped when they fire (each handler checks the state).
    timers: BTreeSet<(Instant, Timer)>,
    /// Tasks under way; owned here so that a stop can wait for them, then end them.
    tasks: JoinSet<()>,
    generation: u64,
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
        for r in recovered {
            let e = Entry::from_recovered(r);
            if e.pending().is_empty() {
                // Everything was final but the removal did not happen before a crash.
                let _ = self.work.spool.remove(&e.id);
                continue;
            }
            self.admit(e);
        }
        self.pump();
        loop {
            let next = self.timers.first().map(|(t, _)| *t);
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => self.handle(msg),
                    None => break,
                },
                Some(_) = self.tasks.join_next(), if !self.tasks.is_empty() => {}
                _ = sleep_until_opt(next) => self.fire_timers(),
                _ = shutdown.changed() => break,
            }
            self.follow_routing();
            self.pump();
        }
        self.stop().await;
    }

    fn handle(&mut self, msg: Msg) {
        match msg {
            Msg::New(e) => self.admit(*e),
            Msg::BatchDone(done) => self.batch_done(done),
            Msg::TaskDone { id, removed } => self.task_done(&id, removed),
            Msg::Admin(cmd) => self.admin(cmd),
        }
    }

    /// Lets tasks under way finish (their outcomes go to the spool log), then ends the
    /// stragglers: nothing may deliver after the relay has stopped.
    async fn stop(mut self) {
        let in_flight = self.tasks.len();
        let drained = tokio::time::timeout(ATTEMPT_DRAIN, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await
        .is_ok();
        if !drained {
            self.tasks.shutdown().await;
        }
        tracing::info!(
            in_flight,
            drained,
            waiting = self.messages.len(),
            "queue manager stopped"
        );
    }

    // ---- Admission and routing ---------------------------------------------------------

    /// Takes a message in: its timers, then its pending recipients into queues.
    fn admit(&mut self, entry: Entry) {
        let now = Instant::now();
        let age = entry.age();
        let expires = now + self.settings.expiration.saturating_sub(age);
        let notice_at = now + self.settings.delay_notice.saturating_sub(age);
        let id = entry.id.clone();
        let held = Held {
            entry,
            batches: Vec::new(),
            busy: 0,
            suspended: false,
            expires,
            notice_at,
            timer_at: None,
            io: Arc::default(),
            generation: self.generation,
        };
        self.messages.insert(id.clone(), held);
        // Expired or due for its delay notice already (a message recovered after a long
        // stop), or else the timer for them.
        self.message_time(&id);
        self.route(&id);
    }

    /// Puts the message's pending recipients that are not under way into batches, one
    /// per queue. Batches not under way are rebuilt (a reroute after a reload); a batch
    /// that stays on the same queue keeps its due time.
    fn route(&mut self, id: &str) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        let old: Vec<HopBatch> = {
            let (running, idle): (Vec<_>, Vec<_>) = std::mem::take(&mut held.batches)
                .into_iter()
                .partition(|b| b.due == Due::Running);
            held.batches = running;
            idle
        };
        held.generation = self.generation;
        let pending: Vec<usize> = held
            .entry
            .pending()
            .into_iter()
            .filter(|&i| !held.running(i))
            .collect();
        let env = held.entry.env.clone();
        let mut unroutable = Vec::new();
        let mut grouped: Vec<(HopId, Vec<usize>)> = Vec::new();
        for i in pending {
            let key = self
                .work
                .transport
                .queue_key(&env.recipients[i], env.from_outside_org);
            match key {
                Ok(key) => {
                    let hop = self.hop_for(key);
                    match grouped.iter_mut().find(|(h, _)| *h == hop) {
                        Some((_, rcpts)) => rcpts.push(i),
                        None => grouped.push((hop, vec![i])),
                    }
                }
                Err(f) => unroutable.push((i, FailNow::Unroutable(f))),
            }
        }
        // New batches first: leaving a queue can drop it, and `grouped` holds its id.
        for (hop, rcpts) in grouped {
            let kept = old.iter().find(|b| b.hop == hop).map(|b| b.due);
            self.add_batch(id, hop, rcpts, kept);
        }
        for b in &old {
            self.leave_hop(b.hop);
        }
        if !unroutable.is_empty() {
            self.fail_now(id, unroutable);
        }
    }

    /// The queue of `key`, created on first use.
    fn hop_for(&mut self, key: QueueKey) -> HopId {
        if let Some(&id) = self.hop_ids.get(&key) {
            return id;
        }
        let id = self.next_hop_id;
        self.next_hop_id += 1;
        self.hop_ids.insert(key.clone(), id);
        self.hops.insert(id, HopQueue::new(id, key));
        id
    }

    fn add_batch(&mut self, id: &str, hop: HopId, rcpts: Vec<usize>, due: Option<Due>) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        held.batches.push(HopBatch {
            hop,
            rcpts,
            due: Due::Running, // replaced just below
            held_noted: false,
        });
        if let Some(q) = self.hops.get_mut(&hop) {
            q.messages += 1;
        }
        match due {
            Some(Due::At(t)) if t > Instant::now() => self.wait_batch(id, hop, t),
            _ => self.make_ready(id, hop, false),
        }
    }

    /// A batch left its queue.
    fn leave_hop(&mut self, hop: HopId) {
        if let Some(q) = self.hops.get_mut(&hop) {
            q.messages = q.messages.saturating_sub(1);
        }
        self.drop_if_idle(hop);
    }

    fn drop_if_idle(&mut self, hop: HopId) {
        if self.hops.get(&hop).is_some_and(HopQueue::is_idle)
            && let Some(q) = self.hops.remove(&hop)
        {
            self.hop_ids.remove(&q.key);
        }
    }

    /// After a reload, every message not under way is routed again with the new policy;
    /// the others when their batch ends.
    fn follow_routing(&mut self) {
        let generation = self.work.transport.generation();
        if generation == self.generation {
            return;
        }
        self.generation = generation;
        let ids: Vec<String> = self.messages.keys().cloned().collect();
        for id in ids {
            self.route(&id);
        }
        tracing::info!(
            generation,
            "routing changed: queued recipients routed again"
        );
    }

    // ---- Due batches -------------------------------------------------------------------

    /// The batch may start: into its queue's ready list (at the head for the batch of a
    /// failed probe, so the next probe carries it again).
    fn make_ready(&mut self, id: &str, hop: HopId, front: bool) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        let suspended = held.suspended;
        let Some(batch) = held.batch_mut(hop) else {
            return;
        };
        batch.due = Due::Ready;
        let note_hold = !batch.held_noted;
        let Some(q) = self.hops.get_mut(&hop) else {
            return;
        };
        if suspended {
            return; // goes into the list when the message is resumed
        }
        if front {
            q.push_ready_front(id.to_string());
        } else {
            q.push_ready(id.to_string());
        }
        if q.in_retry() && note_hold {
            self.note_held(id, hop);
        }
        self.wake(hop);
    }

    fn wait_batch(&mut self, id: &str, hop: HopId, at: Instant) {
        if let Some(b) = self.messages.get_mut(id).and_then(|h| h.batch_mut(hop)) {
            b.due = Due::At(at);
            self.timers.insert((at, Timer::Batch(id.to_string(), hop)));
        }
    }

    /// Into the round-robin list, when the queue may start a batch.
    fn wake(&mut self, hop: HopId) {
        let limits = self.settings.hop;
        if let Some(q) = self.hops.get_mut(&hop)
            && !q.runnable
            && q.can_start(&limits)
        {
            q.runnable = true;
            self.runnable.push_back(hop);
        }
    }

    /// Starts batches while slots are free: one per queue per turn.
    fn pump(&mut self) {
        let limits = self.settings.hop;
        while self.active < self.settings.max_connections.max(1) {
            let Some(hop) = self.runnable.pop_front() else {
                break;
            };
            let Some(q) = self.hops.get_mut(&hop) else {
                continue;
            };
            q.runnable = false;
            if !q.can_start(&limits) {
                continue;
            }
            if let Some(id) = self.next_ready(hop) {
                self.start_batch(&id, hop);
            }
            self.wake(hop);
        }
    }

    /// The first message in the queue's ready list whose batch is still due (entries
    /// go stale when a message is deleted, suspended, rerouted or already started).
    fn next_ready(&mut self, hop: HopId) -> Option<String> {
        let q = self.hops.get_mut(&hop)?;
        while let Some(id) = q.pop_ready() {
            let due = self
                .messages
                .get(&id)
                .filter(|h| !h.suspended)
                .and_then(|h| h.batch(hop))
                .map(|b| b.due);
            if due == Some(Due::Ready) {
                return Some(id);
            }
        }
        None
    }

    fn start_batch(&mut self, id: &str, hop: HopId) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        let others_final = held.busy == 0
            && held.batches.iter().all(|b| b.hop == hop)
            && held.entry.pending().len() == held.batch(hop).map_or(0, |b| b.rcpts.len());
        let Some(batch) = held.batch_mut(hop) else {
            return;
        };
        batch.due = Due::Running;
        let rcpts = batch.rcpts.clone();
        held.busy += 1;
        let job = Batch {
            msg: held.reference(others_final),
            hop,
            rcpts,
            accepted: held.entry.accepted,
        };
        if let Some(q) = self.hops.get_mut(&hop) {
            q.active += 1;
        }
        self.active += 1;
        let (work, tx) = (self.work.clone(), self.tx.clone());
        self.tasks.spawn(async move {
            let done = attempt::deliver(work, job).await;
            let _ = tx.send(Msg::BatchDone(done));
        });
    }

    // ---- Results -----------------------------------------------------------------------

    fn batch_done(&mut self, done: BatchDone) {
        self.active = self.active.saturating_sub(1);
        let hop = done.hop;
        if let Some(q) = self.hops.get_mut(&hop) {
            q.active = q.active.saturating_sub(1);
        }
        let Some(held) = self.messages.get_mut(&done.id) else {
            self.drop_if_idle(hop);
            return;
        };
        held.busy = held.busy.saturating_sub(1);
        let mut hop_error = None;
        let mut reached = false;
        for (i, r) in &done.results {
            match r {
                RcptResult::Delivered => held.entry.states[*i] = RcptState::Delivered,
                RcptResult::Failed => held.entry.states[*i] = RcptState::Failed,
                RcptResult::Deferred { error, hop_failure } => {
                    held.entry.last_error[*i] = Some(error.clone());
                    if *hop_failure {
                        hop_error.get_or_insert_with(|| error.clone());
                        continue;
                    }
                }
            }
            reached = true;
        }
        let still: Vec<usize> = done
            .results
            .iter()
            .filter(|(_, r)| !r.is_final())
            .map(|(i, _)| *i)
            .collect();
        if done.removed {
            self.forget(&done.id);
        } else if still.is_empty() {
            self.drop_batch(&done.id, hop);
        } else if Instant::now() >= held.expires {
            self.last_attempt(&done, still, hop_error);
        } else if let Some(error) = hop_error {
            self.hop_failed(&done, error, still);
        } else {
            self.message_retry(&done, still);
        }
        if reached && let Some(q) = self.hops.get_mut(&hop) {
            q.on_hop_success(&self.settings.hop);
        }
        self.after_task(&done.id);
        self.wake(hop);
        self.drop_if_idle(hop);
    }

    /// A failed attempt that ended past the message's expiry: the last one. Its
    /// recipients are returned by `after_task`; a failure of the hop still counts for the
    /// queue.
    fn last_attempt(&mut self, done: &BatchDone, still: Vec<usize>, hop_error: Option<String>) {
        let (now, unix) = (Instant::now(), unix_now());
        let limits = self.settings.hop;
        if let Some(error) = hop_error
            && let Some(q) = self.hops.get_mut(&done.hop)
            && let Some(at) = q.on_hop_failure(now, unix, error, &limits)
        {
            self.timers.insert((at, Timer::Hop(done.hop)));
        }
        let Some(held) = self.messages.get_mut(&done.id) else {
            return;
        };
        held.entry.attempts += 1;
        let attempts = held.entry.attempts;
        if let Some(b) = held.batch_mut(done.hop) {
            b.rcpts = still;
            b.due = Due::Ready; // not in the ready list: expiry takes it
        }
        let detail = format!("attempt {attempts}; no further attempt (expired)");
        self.emit_deferred(&done.deferred, &detail);
    }

    /// The next hop could not be used: the queue goes to Retry and the batch waits at
    /// its head for the probe.
    fn hop_failed(&mut self, done: &BatchDone, error: String, still: Vec<usize>) {
        let hop = done.hop;
        let (now, unix) = (Instant::now(), unix_now());
        let limits = self.settings.hop;
        // The message itself was tried: it counts as an attempt (Get-Message's RetryCount).
        if let Some(held) = self.messages.get_mut(&done.id) {
            held.entry.attempts += 1;
        }
        let Some(q) = self.hops.get_mut(&hop) else {
            return;
        };
        let entered = q.on_hop_failure(now, unix, error.clone(), &limits);
        let identity = self.identity(hop);
        let next = self.hops.get(&hop).and_then(HopQueue::retry_at);
        if let Some(at) = entered {
            self.timers.insert((at, Timer::Hop(hop)));
            let failures = self.hops.get(&hop).map_or(0, |q| q.failures);
            tracing::warn!(queue = %identity, failures, error = %error, next_retry_in = ?at - now, "delivery queue in Retry");
        }
        let attempts = self.messages.get(&done.id).map_or(0, |h| h.entry.attempts);
        let detail = format!(
            "attempt {attempts}; the next hop could not be used: delivery queue {identity} is in Retry; next connection attempt at {}",
            next.map_or("once the queue is retried".into(), |t| when(t - now))
        );
        self.emit_deferred(&done.deferred, &detail);
        if let Some(b) = self
            .messages
            .get_mut(&done.id)
            .and_then(|h| h.batch_mut(hop))
        {
            b.rcpts = still;
            b.held_noted = true; // its Deferred row says so
        }
        self.make_ready(&done.id, hop, true);
        if entered.is_some() {
            self.note_held_in(hop);
        }
    }

    /// A failure of this message on a working hop: its batch waits for the back-off.
    fn message_retry(&mut self, done: &BatchDone, still: Vec<usize>) {
        let now = Instant::now();
        let Some(held) = self.messages.get_mut(&done.id) else {
            return;
        };
        held.entry.attempts += 1;
        let attempts = held.entry.attempts;
        let mut delay = self.settings.backoff(attempts);
        // Never sleep past the expiry moment: the message must be returned on time.
        let until_expiry = held.expires.saturating_duration_since(now);
        if !until_expiry.is_zero() {
            delay = delay.min(until_expiry);
        }
        let delay = delay.max(Duration::from_millis(100));
        if let Some(b) = held.batch_mut(done.hop) {
            b.rcpts = still;
        }
        let detail = format!("attempt {attempts}; next attempt at {}", when(delay));
        self.emit_deferred(&done.deferred, &detail);
        self.wait_batch(&done.id, done.hop, now + delay);
    }

    fn emit_deferred(&self, rows: &[TraceEvent], detail: &str) {
        for e in rows {
            let mut e = e.clone();
            e.detail = Some(detail.to_string());
            self.work.events.emit(e);
        }
    }

    fn drop_batch(&mut self, id: &str, hop: HopId) {
        if let Some(held) = self.messages.get_mut(id) {
            let before = held.batches.len();
            held.batches.retain(|b| b.hop != hop);
            if held.batches.len() < before {
                self.leave_hop(hop);
            }
        }
    }

    /// After any task of the message ended: expiry if due, a pending reroute, the end of
    /// the message when nothing is pending.
    fn after_task(&mut self, id: &str) {
        let Some(held) = self.messages.get(id) else {
            return;
        };
        let now = Instant::now();
        if now >= held.expires {
            self.expire(id);
        } else if held.busy == 0 {
            let notice_due = !held.entry.delay_notified
                && now >= held.notice_at
                && !held.entry.pending().is_empty();
            if held.generation != self.generation {
                self.route(id);
            }
            if notice_due {
                self.delay_notice(id);
            }
        }
        self.finish_if_done(id);
    }

    fn task_done(&mut self, id: &str, removed: bool) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        held.busy = held.busy.saturating_sub(1);
        if removed {
            self.forget(id);
        } else {
            self.after_task(id);
        }
    }

    /// Every recipient final and no task holding it: the message leaves the spool.
    fn finish_if_done(&mut self, id: &str) {
        let done = self
            .messages
            .get(id)
            .is_some_and(|h| h.busy == 0 && h.entry.pending().is_empty());
        if !done {
            return;
        }
        self.forget(id);
        let (spool, id) = (self.work.spool.clone(), id.to_string());
        self.tasks.spawn(async move {
            let id2 = id.clone();
            let removed = tokio::task::spawn_blocking(move || spool.remove(&id2)).await;
            if let Ok(Err(e)) | Err(e) = removed.map_err(std::io::Error::other) {
                tracing::error!(id = %id, error = %e, "cannot remove delivered message");
            }
        });
    }

    /// Drops the message from the schedule (its batches leave their queues).
    pub(super) fn forget(&mut self, id: &str) {
        if let Some(held) = self.messages.remove(id) {
            if let Some(at) = held.timer_at {
                self.timers.remove(&(at, Timer::Message(id.to_string())));
            }
            for b in held.batches {
                if let Due::At(at) = b.due {
                    self.timers
                        .remove(&(at, Timer::Batch(id.to_string(), b.hop)));
                }
                self.leave_hop(b.hop);
            }
        }
    }

    // ---- Timers ------------------------------------------------------------------------

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while self.timers.first().is_some_and(|(t, _)| *t <= now) {
            let Some((at, timer)) = self.timers.pop_first() else {
                break;
            };
            match timer {
                Timer::Batch(id, hop) => {
                    let due = self
                        .messages
                        .get(&id)
                        .and_then(|h| h.batch(hop))
                        .map(|b| b.due);
                    if due == Some(Due::At(at)) {
                        self.make_ready(&id, hop, false);
                    }
                }
                Timer::Hop(hop) => {
                    if let Some(q) = self.hops.get_mut(&hop)
                        && q.on_retry_due(at, unix_now())
                    {
                        tracing::info!(queue = %self.identity(hop), "delivery queue probing its next hop");
                        self.wake(hop);
                    }
                    self.drop_if_idle(hop);
                }
                Timer::Message(id) => self.message_time(&id),
            }
        }
    }

    /// The next of a message's expiry and delay notice.
    fn arm_message_timer(&mut self, id: &str) {
        if let Some(held) = self.messages.get_mut(id) {
            // A notice already due waits for the task holding the message (`after_task`).
            let at = if held.entry.delay_notified || held.notice_at <= Instant::now() {
                held.expires
            } else {
                held.notice_at.min(held.expires)
            };
            let key = Timer::Message(id.to_string());
            if let Some(old) = held.timer_at.replace(at) {
                self.timers.remove(&(old, key.clone()));
            }
            self.timers.insert((at, key));
        }
    }

    fn message_time(&mut self, id: &str) {
        let now = Instant::now();
        let Some(held) = self.messages.get(id) else {
            return;
        };
        if now >= held.expires {
            self.expire(id);
            self.finish_if_done(id);
            return;
        }
        // A task holding the message may remove it; the notice then waits for its end
        // (`after_task`).
        if !held.entry.delay_notified && now >= held.notice_at && held.busy == 0 {
            self.delay_notice(id);
        }
        self.arm_message_timer(id);
    }

    // ---- Notices -----------------------------------------------------------------------

    /// Returns what is still pending and not under way (5.4.7); batches under way are
    /// expired when they end.
    fn expire(&mut self, id: &str) {
        let Some(held) = self.messages.get(id) else {
            return;
        };
        let age = held.entry.age();
        let rcpts: Vec<(usize, FailNow)> = held
            .entry
            .pending()
            .into_iter()
            .filter(|&i| !held.running(i))
            .map(|i| {
                let last = held.entry.last_error[i]
                    .clone()
                    .unwrap_or_else(|| "no attempt succeeded".into());
                (i, FailNow::Expired { age, last })
            })
            .collect();
        if !rcpts.is_empty() {
            self.fail_now(id, rcpts);
        }
    }

    /// Marks recipients failed now and starts the task that records it and sends the DSN.
    fn fail_now(&mut self, id: &str, rcpts: Vec<(usize, FailNow)>) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        let mut emptied = Vec::new();
        for (i, _) in &rcpts {
            held.entry.states[*i] = RcptState::Failed;
            for b in held.batches.iter_mut().filter(|b| b.due != Due::Running) {
                b.rcpts.retain(|r| r != i);
            }
        }
        held.batches.retain(|b| {
            let keep = !b.rcpts.is_empty();
            if !keep {
                emptied.push(b.hop);
            }
            keep
        });
        let last = held.busy == 0 && held.entry.pending().is_empty();
        held.busy += 1;
        let msg = held.reference(last);
        for hop in emptied {
            self.leave_hop(hop);
        }
        let (work, tx, id) = (self.work.clone(), self.tx.clone(), id.to_string());
        self.tasks.spawn(async move {
            attempt::fail_now(work, msg, rcpts).await;
            let _ = tx.send(Msg::TaskDone { id, removed: last });
        });
    }

    fn delay_notice(&mut self, id: &str) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        held.entry.delay_notified = true;
        let pending: Vec<(usize, Option<String>)> = held
            .entry
            .pending()
            .into_iter()
            .map(|i| (i, held.entry.last_error[i].clone()))
            .collect();
        held.busy += 1;
        let msg = held.reference(false);
        let (work, tx, id) = (self.work.clone(), self.tx.clone(), id.to_string());
        self.tasks.spawn(async move {
            attempt::notify_delay(work, msg, pending).await;
            let _ = tx.send(Msg::TaskDone { id, removed: false });
        });
    }

    /// A trace row for a message that waits because its queue is in Retry (once per
    /// batch): why, and when the next connection attempt is.
    fn note_held(&mut self, id: &str, hop: HopId) {
        let identity = self.identity(hop);
        let (Some(held), Some(q)) = (self.messages.get_mut(id), self.hops.get(&hop)) else {
            return;
        };
        let Some(batch) = held.batch_mut(hop) else {
            return;
        };
        batch.held_noted = true;
        let rcpts = batch.rcpts.clone();
        let next = q
            .retry_at()
            .map(|t| when(t.saturating_duration_since(Instant::now())))
            .unwrap_or_else(|| "now".into());
        let detail = format!(
            "held without a delivery attempt: delivery queue {identity} (next hop {}) is in Retry after {} failure(s); last error: {}; next connection attempt at {next}",
            q.key.next_hop_domain(),
            q.failures,
            q.last_error.as_deref().unwrap_or("-"),
        );
        for i in rcpts {
            let mut e = TraceEvent::new(EventKind::Deferred);
            e.queue_id = Some(id.to_string());
            e.message_id = held.entry.message_id.clone();
            e.sender = Some(held.entry.env.mail_from.clone());
            e.recipient = Some(held.entry.env.recipients[i].clone());
            e.connector = q.key.route.connector.clone();
            e.rule = Some("QueueRetry".into());
            e.detail = Some(detail.clone());
            self.work.events.emit(e);
        }
    }

    /// Held rows for every message waiting in a queue that has just entered Retry.
    fn note_held_in(&mut self, hop: HopId) {
        let ids: Vec<String> = self
            .messages
            .iter()
            .filter(|(_, h)| {
                h.batch(hop)
                    .is_some_and(|b| !b.held_noted && b.due != Due::Running)
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.note_held(&id, hop);
        }
    }

    /// Get-Queue's `Identity`: `fqdn\id`.
    pub(super) fn identity(&self, hop: HopId) -> String {
        format!("{}\\{hop}", self.settings.fqdn)
    }

    // ---- Used by the admin commands (admin.rs) -----------------------------------------

    pub(super) fn retry_message(&mut self, id: &str) {
        let hops: Vec<HopId> = self
            .messages
            .get(id)
            .map(|h| h.batches.iter().map(|b| b.hop).collect())
            .unwrap_or_default();
        for hop in hops {
            if let Some(q) = self.hops.get_mut(&hop) {
                q.retry_now(unix_now());
            }
            self.make_ready(id, hop, true);
        }
    }

    pub(super) fn resume_message(&mut self, id: &str) {
        let Some(held) = self.messages.get_mut(id) else {
            return;
        };
        held.suspended = false;
        let ready: Vec<HopId> = held
            .batches
            .iter()
            .filter(|b| b.due == Due::Ready)
            .map(|b| b.hop)
            .collect();
        for hop in ready {
            self.make_ready(id, hop, false);
        }
    }

    pub(super) fn retry_hop(&mut self, hop: HopId) {
        if let Some(q) = self.hops.get_mut(&hop) {
            q.retry_now(unix_now());
        }
        self.wake(hop);
    }

    pub(super) fn set_hop_suspended(&mut self, hop: HopId, suspended: bool) {
        if let Some(q) = self.hops.get_mut(&hop) {
            q.suspended = suspended;
        }
        self.wake(hop);
        self.drop_if_idle(hop);
    }

    pub(super) fn update_settings(&mut self, settings: QueueSettings) {
        self.settings = settings;
        let hops: Vec<HopId> = self.hops.keys().copied().collect();
        for hop in hops {
            self.wake(hop);
        }
    }
}

async fn sleep_until_opt(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
