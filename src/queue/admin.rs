//! Admin commands on the queue (the admin API's `/api/queue` and `/api/queues` routes, the
//! CLI, the gauges): each carries a oneshot for its answer and is handled by the scheduler
//! task, which owns every message and queue (DESIGN.md).
//!
//! Messages are shown with the names of Exchange's `Get-Message`, queues with those of
//! `Get-Queue`; `Retry-Queue`, `Suspend-Queue`, `Resume-Queue`, `Suspend-Message`,
//! `Resume-Message` and `Remove-Message -WithNDR $false` have their command here.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::hop::{HopId, HopQueue, HopStatus};
use super::manager::{Due, Held, Manager, Msg, QueueHandle, QueueSettings};
use super::spool::{RcptState, unix_now};

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
    /// Unix time of the next attempt; `None` while an attempt is under way or suspended.
    pub next_attempt: Option<u64>,
    pub in_flight: bool,
    /// Get-Message's `Status`: `Active`, `Ready`, `Retry` or `Suspended`.
    pub status: &'static str,
    /// The identities of the queues holding its pending recipients.
    pub queues: Vec<String>,
    pub inbound_connector: Option<String>,
}

#[derive(Debug, Clone)]
pub struct QueuedRecipient {
    pub address: String,
    pub state: RcptState,
    /// The last temporary failure (for a pending recipient).
    pub last_error: Option<String>,
}

/// A delivery queue, with Get-Queue's fields.
#[derive(Debug, Clone)]
pub struct QueueView {
    /// `fqdn\id`.
    pub identity: String,
    /// `DnsConnectorDelivery` or `SmartHostConnectorDelivery`.
    pub delivery_type: &'static str,
    pub next_hop_domain: String,
    /// The connector of the route (`None`: the default MX route).
    pub connector: Option<String>,
    pub status: HopStatus,
    pub message_count: usize,
    /// Attempts under way (each holds at most one connection).
    pub active_connections: usize,
    /// Consecutive failures of the next hop.
    pub failures: u32,
    pub last_error: Option<String>,
    /// Unix seconds.
    pub last_retry_time: Option<u64>,
    pub next_retry_time: Option<u64>,
    /// Unix arrival second of its oldest message.
    pub oldest_arrived: Option<u64>,
}

/// Queue depth and the oldest arrival (gauges).
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueStats {
    pub depth: usize,
    /// Unix time of the oldest message's arrival.
    pub oldest_arrived: Option<u64>,
}

/// Why an admin command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminError {
    #[error("no message with this id is in the queue")]
    NotFound,
    #[error("no delivery queue has this identity or next hop")]
    QueueNotFound,
    #[error("several delivery queues have this next hop; use the Identity")]
    Ambiguous,
    #[error("a delivery attempt for this message is under way; try again when it has finished")]
    InFlight,
    #[error("the queue manager is not running")]
    Stopped,
    #[error("{0}")]
    Io(String),
}

type Answer = oneshot::Sender<Result<(), AdminError>>;

/// A request from the admin API to the scheduler task.
pub enum AdminCommand {
    List(oneshot::Sender<Vec<QueuedMessage>>),
    /// Attempt the message now instead of at its scheduled time (its queue probes now if
    /// it is in Retry).
    Retry(String, Answer),
    /// Remove the message from the queue and the spool without any DSN (`postsuper -d`).
    Delete(String, Answer),
    /// `Suspend-Message` (`true`) / `Resume-Message` (`false`).
    SuspendMessage(String, bool, Answer),
    Stats(oneshot::Sender<QueueStats>),
    Queues(oneshot::Sender<Vec<QueueView>>),
    /// `Retry-Queue`: a queue in Retry probes its next hop now.
    RetryQueue(String, Answer),
    /// `Suspend-Queue` (`true`) / `Resume-Queue` (`false`).
    SuspendQueue(String, bool, Answer),
    /// New retry/expiry settings and limits (live reload); used from now on.
    Settings(QueueSettings),
}

impl QueueHandle {
    async fn ask<T>(&self, cmd: impl FnOnce(oneshot::Sender<T>) -> AdminCommand) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Msg::Admin(cmd(tx))).ok()?;
        rx.await.ok()
    }

    async fn act(&self, cmd: impl FnOnce(Answer) -> AdminCommand) -> Result<(), AdminError> {
        self.ask(cmd).await.unwrap_or(Err(AdminError::Stopped))
    }

    /// Every message in the queue, oldest first.
    pub async fn list(&self) -> Vec<QueuedMessage> {
        self.ask(AdminCommand::List).await.unwrap_or_default()
    }

    pub async fn retry(&self, id: &str) -> Result<(), AdminError> {
        let id = id.to_string();
        self.act(|tx| AdminCommand::Retry(id, tx)).await
    }

    pub async fn delete(&self, id: &str) -> Result<(), AdminError> {
        let id = id.to_string();
        self.act(|tx| AdminCommand::Delete(id, tx)).await
    }

    pub async fn suspend_message(&self, id: &str, suspend: bool) -> Result<(), AdminError> {
        let id = id.to_string();
        self.act(|tx| AdminCommand::SuspendMessage(id, suspend, tx))
            .await
    }

    pub async fn stats(&self) -> QueueStats {
        self.ask(AdminCommand::Stats).await.unwrap_or_default()
    }

    /// Every delivery queue, by identity.
    pub async fn queues(&self) -> Vec<QueueView> {
        self.ask(AdminCommand::Queues).await.unwrap_or_default()
    }

    /// `queue`: the Identity (`fqdn\3`), its number (`3`), or the NextHopDomain.
    pub async fn retry_queue(&self, queue: &str) -> Result<(), AdminError> {
        let q = queue.to_string();
        self.act(|tx| AdminCommand::RetryQueue(q, tx)).await
    }

    pub async fn suspend_queue(&self, queue: &str, suspend: bool) -> Result<(), AdminError> {
        let q = queue.to_string();
        self.act(|tx| AdminCommand::SuspendQueue(q, suspend, tx))
            .await
    }

    pub fn update_settings(&self, settings: QueueSettings) {
        let _ = self.tx.send(Msg::Admin(AdminCommand::Settings(settings)));
    }
}

impl Manager {
    pub(super) fn admin(&mut self, cmd: AdminCommand) {
        match cmd {
            AdminCommand::List(reply) => {
                let mut all: Vec<QueuedMessage> = self
                    .messages
                    .values()
                    .map(|h| self.message_view(h))
                    .collect();
                all.sort_by(|a, b| (a.arrived, &a.id).cmp(&(b.arrived, &b.id)));
                let _ = reply.send(all);
            }
            AdminCommand::Retry(id, reply) => {
                let answer = self.idle_message(&id).map(|()| self.retry_message(&id));
                let _ = reply.send(answer);
            }
            AdminCommand::Delete(id, reply) => self.delete(id, reply),
            AdminCommand::SuspendMessage(id, suspend, reply) => {
                let answer = match self.messages.get_mut(&id) {
                    None => Err(AdminError::NotFound),
                    Some(h) if suspend => {
                        h.suspended = true;
                        Ok(())
                    }
                    Some(_) => {
                        self.resume_message(&id);
                        Ok(())
                    }
                };
                if answer.is_ok() {
                    let what = if suspend { "suspended" } else { "resumed" };
                    tracing::info!(id = %id, "message {what} by the admin API");
                }
                let _ = reply.send(answer);
            }
            AdminCommand::Stats(reply) => {
                let stats = QueueStats {
                    depth: self.messages.len(),
                    oldest_arrived: self.messages.values().map(|h| h.entry.env.arrived).min(),
                };
                let _ = reply.send(stats);
            }
            AdminCommand::Queues(reply) => {
                let _ = reply.send(self.queue_views());
            }
            AdminCommand::RetryQueue(q, reply) => {
                let answer = self.find_hop(&q).map(|hop| {
                    tracing::info!(queue = %self.identity(hop), "Retry-Queue by the admin API");
                    self.retry_hop(hop)
                });
                let _ = reply.send(answer);
            }
            AdminCommand::SuspendQueue(q, suspend, reply) => {
                let answer = self.find_hop(&q).map(|hop| {
                    let what = if suspend { "Suspend" } else { "Resume" };
                    tracing::info!(queue = %self.identity(hop), "{what}-Queue by the admin API");
                    self.set_hop_suspended(hop, suspend)
                });
                let _ = reply.send(answer);
            }
            AdminCommand::Settings(settings) => self.update_settings(settings),
        }
    }

    /// The message exists and no task holds it.
    fn idle_message(&self, id: &str) -> Result<(), AdminError> {
        match self.messages.get(id) {
            None => Err(AdminError::NotFound),
            Some(h) if h.busy > 0 => Err(AdminError::InFlight),
            Some(_) => Ok(()),
        }
    }

    fn delete(&mut self, id: String, reply: Answer) {
        if let Err(e) = self.idle_message(&id) {
            let _ = reply.send(Err(e));
            return;
        }
        // Its ready-list entries and timers go stale and are skipped.
        self.forget(&id);
        tracing::warn!(id = %id, "deleted from the queue by the admin API (no DSN)");
        let spool = self.work.spool.clone();
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

    /// A queue by `fqdn\id`, `id`, or next-hop domain (case-insensitive; must be unique).
    fn find_hop(&self, wanted: &str) -> Result<HopId, AdminError> {
        let number = wanted.rsplit('\\').next().unwrap_or(wanted);
        if let Ok(id) = number.parse::<HopId>()
            && self.hops.contains_key(&id)
        {
            return Ok(id);
        }
        let mut found = self
            .hops
            .values()
            .filter(|q| q.key.next_hop_domain().eq_ignore_ascii_case(wanted))
            .map(|q| q.id);
        match (found.next(), found.next()) {
            (Some(id), None) => Ok(id),
            (Some(_), Some(_)) => Err(AdminError::Ambiguous),
            (None, _) => Err(AdminError::QueueNotFound),
        }
    }

    fn queue_views(&self) -> Vec<QueueView> {
        let mut oldest: std::collections::HashMap<HopId, u64> = Default::default();
        for h in self.messages.values() {
            for b in &h.batches {
                let o = oldest.entry(b.hop).or_insert(u64::MAX);
                *o = (*o).min(h.entry.env.arrived);
            }
        }
        let mut views: Vec<QueueView> = self
            .hops
            .values()
            .map(|q| self.queue_view(q, oldest.get(&q.id).copied()))
            .collect();
        views.sort_by_key(|v| {
            v.identity
                .rsplit('\\')
                .next()
                .and_then(|n| n.parse::<u64>().ok())
        });
        views
    }

    fn queue_view(&self, q: &HopQueue, oldest: Option<u64>) -> QueueView {
        QueueView {
            identity: self.identity(q.id),
            delivery_type: q.key.delivery_type(),
            next_hop_domain: q.key.next_hop_domain(),
            connector: q.key.route.connector.clone(),
            status: q.status(),
            message_count: q.messages,
            active_connections: q.active,
            failures: q.failures,
            last_error: q.last_error.clone(),
            last_retry_time: q.times.last_retry,
            next_retry_time: q.times.next_retry,
            oldest_arrived: oldest,
        }
    }

    fn message_view(&self, h: &Held) -> QueuedMessage {
        let (now, unix) = (Instant::now(), unix_now());
        let in_retry = |hop| self.hops.get(&hop).is_some_and(HopQueue::in_retry);
        let status = if h.suspended {
            "Suspended"
        } else if h.busy > 0 {
            "Active"
        } else if h.entry.attempts > 0 || h.batches.iter().any(|b| in_retry(b.hop)) {
            "Retry"
        } else {
            "Ready"
        };
        // The earliest moment one of its batches may start.
        let next_attempt = (!h.suspended && h.busy == 0)
            .then(|| {
                h.batches
                    .iter()
                    .map(|b| match b.due {
                        Due::At(t) => unix + t.saturating_duration_since(now).as_secs(),
                        _ => self
                            .hops
                            .get(&b.hop)
                            .and_then(|q| q.times.next_retry)
                            .unwrap_or(unix),
                    })
                    .min()
            })
            .flatten();
        let e = &h.entry;
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
            in_flight: h.busy > 0,
            status,
            queues: h.batches.iter().map(|b| self.identity(b.hop)).collect(),
            inbound_connector: e.env.inbound_connector.clone(),
        }
    }
}
