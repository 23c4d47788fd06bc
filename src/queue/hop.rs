//! One delivery queue per next hop (Exchange's `Get-Queue` model, Postfix qmgr's
//! per-destination state): the messages waiting for one next hop, how many attempts to it
//! are under way, and whether the hop itself is usable.
//!
//! States, as Get-Queue shows them:
//! - `Ready`: batches may start, up to `MaxPerDomainOutboundConnections` at once;
//! - `Active`: `Ready` with attempts under way;
//! - `Retry`: the last attempt could not use the next hop at all (no connection, no
//!   greeting, EHLO, TLS level or authentication not met, no next-hop address). Nothing
//!   starts until the retry time; then one batch probes the hop (concurrency 1), and its
//!   success returns the queue to full concurrency. The first `TransientFailureRetryCount`
//!   retries come `TransientFailureRetryInterval` apart, later ones
//!   `OutboundConnectionFailureRetryInterval` apart;
//! - `Suspended`: nothing starts until it is resumed (`Suspend-Queue`).
//!
//! The transitions are pure functions of this module, tested on their own; the scheduler
//! (`manager.rs`) owns the queues and the timers.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::delivery::QueueKey;

/// Attempts a new or recovered queue may run at once before it has proved its next hop
/// (Postfix's `initial_destination_concurrency`): a dead next hop gets this many
/// connections, not `MaxPerDomainOutboundConnections`, before the queue goes to Retry.
pub const INITIAL_CONCURRENCY: usize = 5;

/// Stable id of a delivery queue while it exists (Get-Queue's `Identity` is `fqdn\id`).
pub type HopId = u64;

/// Get-Queue's `Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopStatus {
    Active,
    Ready,
    Retry,
    Suspended,
}

impl HopStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HopStatus::Active => "Active",
            HopStatus::Ready => "Ready",
            HopStatus::Retry => "Retry",
            HopStatus::Suspended => "Suspended",
        }
    }
}

/// The `[Relay]` keys that drive a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HopLimits {
    /// `MaxPerDomainOutboundConnections`.
    pub max_connections: usize,
    /// `TransientFailureRetryCount`.
    pub quick_retries: u32,
    /// `TransientFailureRetryInterval`.
    pub quick_interval: Duration,
    /// `OutboundConnectionFailureRetryInterval`.
    pub slow_interval: Duration,
}

/// The wall-clock moments Get-Queue shows (Unix seconds).
#[derive(Debug, Clone, Default)]
pub struct HopTimes {
    /// When the last probe of a queue in Retry started (`LastRetryTime`).
    pub last_retry: Option<u64>,
    /// When the next probe starts (`NextRetryTime`), while in Retry.
    pub next_retry: Option<u64>,
}

/// One delivery queue.
#[derive(Debug)]
pub struct HopQueue {
    pub id: HopId,
    pub key: QueueKey,
    /// Messages whose batch for this hop is due, in the order they became due. Entries can
    /// be stale (the message was deleted, rerouted or suspended): the scheduler checks each
    /// one it takes.
    ready: VecDeque<String>,
    /// Messages with a batch on this hop (due, waiting for a message retry, or under way).
    pub messages: usize,
    /// Attempts under way.
    pub active: usize,
    /// Consecutive failures of the whole hop (0: healthy).
    pub failures: u32,
    /// Attempts allowed at once: from [`INITIAL_CONCURRENCY`], one more per attempt that
    /// reached the next hop, up to the limit (slow start, as Postfix's qmgr).
    window: usize,
    /// While in Retry: when the next probe may start.
    retry_at: Option<Instant>,
    pub suspended: bool,
    pub last_error: Option<String>,
    pub times: HopTimes,
    /// In the scheduler's round-robin list of queues that may start a batch.
    pub runnable: bool,
}

impl HopQueue {
    pub fn new(id: HopId, key: QueueKey) -> HopQueue {
        HopQueue {
            id,
            key,
            ready: VecDeque::new(),
            messages: 0,
            active: 0,
            failures: 0,
            window: INITIAL_CONCURRENCY,
            retry_at: None,
            suspended: false,
            last_error: None,
            times: HopTimes::default(),
            runnable: false,
        }
    }

    pub fn status(&self) -> HopStatus {
        if self.suspended {
            HopStatus::Suspended
        } else if self.retry_at.is_some() {
            HopStatus::Retry
        } else if self.active > 0 {
            HopStatus::Active
        } else {
            HopStatus::Ready
        }
    }

    pub fn in_retry(&self) -> bool {
        self.retry_at.is_some()
    }

    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// How many attempts may run at once now: none in Retry or Suspended, one (the probe)
    /// while the hop has failed and not yet recovered, else the slow-start window within
    /// the limit.
    fn concurrency(&self, limits: &HopLimits) -> usize {
        if self.suspended || self.retry_at.is_some() {
            0
        } else if self.failures > 0 {
            1
        } else {
            self.window.min(limits.max_connections).max(1)
        }
    }

    /// May a batch start now (a slot is free and something may be due)?
    pub fn can_start(&self, limits: &HopLimits) -> bool {
        !self.ready.is_empty() && self.active < self.concurrency(limits)
    }

    pub fn push_ready(&mut self, id: String) {
        self.ready.push_back(id);
    }

    /// Due first: the batch of a failed probe goes back to the head, so the next probe
    /// carries it again and the order of the queue is kept.
    pub fn push_ready_front(&mut self, id: String) {
        self.ready.push_front(id);
    }

    pub fn pop_ready(&mut self) -> Option<String> {
        self.ready.pop_front()
    }

    /// A batch ended with a failure of the whole hop. Enters Retry and returns the retry
    /// time, or `None` when the queue was already in Retry (another batch of the same round
    /// failed: one round counts once).
    pub fn on_hop_failure(
        &mut self,
        now: Instant,
        unix_now: u64,
        error: String,
        limits: &HopLimits,
    ) -> Option<Instant> {
        self.last_error = Some(error);
        if self.retry_at.is_some() {
            return None;
        }
        self.failures = self.failures.saturating_add(1);
        self.window = INITIAL_CONCURRENCY;
        let wait = if self.failures <= limits.quick_retries {
            limits.quick_interval
        } else {
            limits.slow_interval
        };
        let wait = wait.max(Duration::from_millis(100));
        self.retry_at = Some(now + wait);
        self.times.next_retry = Some(unix_now + wait.as_secs());
        self.retry_at
    }

    /// A batch got a session from the hop (whatever the message's fate): the hop works, so
    /// the queue leaves Retry and runs at full concurrency again.
    pub fn on_hop_success(&mut self, limits: &HopLimits) {
        self.failures = 0;
        self.window = (self.window + 1).min(limits.max_connections.max(1));
        self.retry_at = None;
        self.times.next_retry = None;
    }

    /// The retry timer fired: the queue may probe. `false` when the timer is stale.
    pub fn on_retry_due(&mut self, at: Instant, unix_now: u64) -> bool {
        if self.retry_at != Some(at) {
            return false;
        }
        self.retry_at = None;
        self.times.next_retry = None;
        self.times.last_retry = Some(unix_now);
        true
    }

    /// `Retry-Queue`: probe now instead of at the retry time (keeps the failure count, so a
    /// failed probe goes on with the same interval sequence).
    pub fn retry_now(&mut self, unix_now: u64) {
        if self.retry_at.take().is_some() {
            self.times.next_retry = None;
            self.times.last_retry = Some(unix_now);
        }
    }

    /// Nothing refers to this queue any more: no message, nothing under way, not
    /// suspended, and not remembering a failure whose retry time is still ahead (a new
    /// message for a hop in Retry must wait like the others).
    pub fn is_idle(&self) -> bool {
        self.messages == 0 && self.active == 0 && !self.suspended && self.retry_at.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::route::test_support;

    fn limits() -> HopLimits {
        HopLimits {
            max_connections: 3,
            quick_retries: 2,
            quick_interval: Duration::from_secs(60),
            slow_interval: Duration::from_secs(600),
        }
    }

    fn queue() -> HopQueue {
        let route = crate::policy::route::select_route(&test_support::policy(), "x.test", false);
        HopQueue::new(
            1,
            QueueKey {
                route: route.route,
                domain: Some("x.test".into()),
            },
        )
    }

    #[test]
    fn quick_retries_then_the_slow_interval() {
        let (l, mut q) = (limits(), queue());
        let t0 = Instant::now();
        let mut waits = Vec::new();
        for round in 0..4u64 {
            let now = t0 + Duration::from_secs(round * 1000);
            let at = q
                .on_hop_failure(now, 0, "4.4.316 refused".into(), &l)
                .unwrap();
            waits.push((at - now).as_secs());
            assert_eq!(q.status(), HopStatus::Retry);
            // A second batch of the same round does not count again.
            assert_eq!(q.on_hop_failure(now, 0, "again".into(), &l), None);
            assert!(q.on_retry_due(at, 0));
        }
        assert_eq!(waits, [60, 60, 600, 600]);
        assert_eq!(q.failures, 4);
    }

    #[test]
    fn retry_admits_one_probe_and_success_restores_full_concurrency() {
        let (l, mut q) = (limits(), queue());
        for id in ["a", "b", "c", "d"] {
            q.push_ready(id.into());
        }
        assert!(q.can_start(&l));
        let at = q.on_hop_failure(Instant::now(), 0, "x".into(), &l).unwrap();
        assert!(!q.can_start(&l), "nothing starts in Retry");
        assert!(
            !q.on_retry_due(at + Duration::from_secs(1), 0),
            "stale timer"
        );
        assert!(q.on_retry_due(at, 7));
        assert_eq!(q.times.last_retry, Some(7));
        assert!(q.can_start(&l));
        q.active = 1;
        assert!(!q.can_start(&l), "one probe at a time");
        q.on_hop_success(&l);
        assert!(q.can_start(&l));
        q.active = 3;
        assert!(!q.can_start(&l), "MaxPerDomainOutboundConnections");
        assert_eq!(q.status(), HopStatus::Active);
    }

    #[test]
    fn suspended_and_retry_now() {
        let (l, mut q) = (limits(), queue());
        q.push_ready("a".into());
        q.suspended = true;
        assert_eq!(q.status(), HopStatus::Suspended);
        assert!(!q.can_start(&l));
        q.suspended = false;
        q.on_hop_failure(Instant::now(), 0, "x".into(), &l);
        assert!(!q.is_idle());
        q.retry_now(9);
        assert_eq!(q.status(), HopStatus::Ready);
        assert!(q.can_start(&l));
        assert_eq!(q.failures, 1, "a forced retry is still a probe");
    }

    #[test]
    fn slow_start_from_five_to_the_limit() {
        let mut l = limits();
        l.max_connections = 20;
        let mut q = queue();
        q.push_ready("a".into());
        let room = |q: &mut HopQueue| {
            let saved = q.active;
            let mut n = 0;
            q.active = 0;
            while q.can_start(&l) {
                q.active += 1;
                n += 1;
            }
            q.active = saved;
            n
        };
        assert_eq!(room(&mut q), INITIAL_CONCURRENCY);
        for _ in 0..3 {
            q.on_hop_success(&l);
        }
        assert_eq!(room(&mut q), 8);
        for _ in 0..100 {
            q.on_hop_success(&l);
        }
        assert_eq!(room(&mut q), 20);
        let at = q.on_hop_failure(Instant::now(), 0, "x".into(), &l).unwrap();
        q.on_retry_due(at, 0);
        assert_eq!(room(&mut q), 1, "the probe");
        q.on_hop_success(&l);
        assert_eq!(room(&mut q), INITIAL_CONCURRENCY + 1);
    }
}
