//! The work the scheduler hands to tasks: one batch (a message's recipients on one next
//! hop) delivered, and the notices that need the message's bytes (expiry, unroutable
//! recipients, delay). Each task persists what it learned and reports back; none decides
//! anything about the schedule.
//!
//! Durability order, as before the per-hop queues: a failure DSN is in the spool before
//! the log records the failure (a crash in between may repeat a DSN, never lose one), and
//! the message leaves the spool only once every recipient's outcome is final.

use std::sync::Arc;
use std::time::Duration;

use super::hop::HopId;
use super::manager::Transport;
use super::notices::{MessageTrace, Notifier, describe, dsn_failed, span};
use super::spool::{Envelope, LogRecord, Spool, unix_now};
use crate::delivery::{DeliveryJob, DeliveryStatus, Failure, RecipientOutcome};
use crate::message::data::MessageData;
use crate::message::dsn::{DsnAction, DsnKind, DsnRecipient};
use crate::message::received::rfc5322_date;
use crate::trace::{EventKind, Events, TraceEvent};

/// What every task needs.
pub(super) struct Work {
    pub spool: Arc<Spool>,
    pub transport: Arc<dyn Transport>,
    pub notifier: Notifier,
    pub events: Events,
}

/// A message as a task sees it.
#[derive(Clone)]
pub(super) struct MessageRef {
    pub id: String,
    pub env: Arc<Envelope>,
    /// Spool writes of one message are serialized: its batches on different hops may end
    /// at the same moment.
    pub io: Arc<tokio::sync::Mutex<()>>,
    /// Every other recipient is final and no other task holds the message: when this task
    /// leaves nothing pending, it removes the message from the spool itself.
    pub last: bool,
}

/// One batch: the message's pending recipients on one hop.
pub(super) struct Batch {
    pub msg: MessageRef,
    pub hop: HopId,
    pub rcpts: Vec<usize>,
    /// When the message was accepted, on this process's clock (latency metric).
    pub accepted: std::time::Instant,
}

/// One recipient's result, as the scheduler needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum RcptResult {
    Delivered,
    Failed,
    /// `error` is what Get-Message shows; `hop_failure`: the next hop as a whole could not
    /// be used ([`RecipientOutcome::hop_failure`]).
    Deferred {
        error: String,
        hop_failure: bool,
    },
}

impl RcptResult {
    pub fn is_final(&self) -> bool {
        !matches!(self, RcptResult::Deferred { .. })
    }
}

pub(super) struct BatchDone {
    pub id: String,
    pub hop: HopId,
    pub results: Vec<(usize, RcptResult)>,
    /// Deferred rows without their detail: the scheduler knows when the next attempt is.
    pub deferred: Vec<TraceEvent>,
    /// The message left the spool (`MessageRef::last` and nothing pending).
    pub removed: bool,
}

/// Delivers one batch and records the outcomes.
pub(super) async fn deliver(work: Arc<Work>, batch: Batch) -> BatchDone {
    let msg = &batch.msg;
    let data = match read(&work.spool, &msg.id).await {
        Ok(data) => data,
        Err(e) => {
            tracing::error!(id = %msg.id, error = %e, "cannot read spooled message; will retry");
            let error = format!("4.3.0 cannot read the spooled message: {e}");
            return BatchDone {
                id: msg.id.clone(),
                hop: batch.hop,
                results: batch
                    .rcpts
                    .iter()
                    .map(|&i| {
                        let r = RcptResult::Deferred {
                            error: error.clone(),
                            hop_failure: false,
                        };
                        (i, r)
                    })
                    .collect(),
                deferred: Vec::new(),
                removed: false,
            };
        }
    };
    let recipients: Vec<String> = batch
        .rcpts
        .iter()
        .map(|&i| msg.env.recipients[i].clone())
        .collect();
    let job = DeliveryJob {
        id: &msg.id,
        mail_from: &msg.env.mail_from,
        recipients: &recipients,
        data: data.view(),
        from_outside_org: msg.env.from_outside_org,
        requiretls: msg.env.requiretls,
    };
    let outcomes = work.transport.deliver(&job).await;
    let now = unix_now();
    let trace = MessageTrace::new(&msg.id, &msg.env, Some(data.view().head()));
    let mut book = Book::default();
    for (slot, &i) in batch.rcpts.iter().enumerate() {
        match outcomes.get(slot) {
            Some(o) => book.outcome(&work.events, &trace, &batch, i, o, now),
            // The engine answers every recipient; should it not, the recipient waits.
            None => book.results.push((
                i,
                RcptResult::Deferred {
                    error: "4.3.0 no outcome from the delivery engine".into(),
                    hop_failure: false,
                },
            )),
        }
    }
    work.notifier
        .send_dsn(
            &msg.env,
            &trace,
            DsnKind::Failure,
            &book.failed,
            data.view().head(),
            now,
        )
        .await;
    let remove = msg.last && book.results.iter().all(|(_, r)| r.is_final());
    persist(&work.spool, msg, book.records, remove).await;
    BatchDone {
        id: msg.id.clone(),
        hop: batch.hop,
        results: book.results,
        deferred: book.deferred,
        removed: remove,
    }
}

/// What one batch's outcomes become: results, spool records, DSN lines, trace rows.
#[derive(Default)]
struct Book {
    results: Vec<(usize, RcptResult)>,
    records: Vec<LogRecord>,
    failed: Vec<DsnRecipient>,
    deferred: Vec<TraceEvent>,
}

impl Book {
    fn outcome(
        &mut self,
        events: &Events,
        trace: &MessageTrace,
        batch: &Batch,
        i: usize,
        o: &RecipientOutcome,
        now: u64,
    ) {
        let id = &batch.msg.id;
        let via = o
            .connector
            .as_deref()
            .map(|c| format!(" via connector \"{c}\""))
            .unwrap_or_default();
        let host = o.remote_host.as_deref().unwrap_or_default();
        if let Some(w) = &o.would_route {
            // policy.md: a TestMode connector is evaluated and recorded, not used.
            tracing::info!(event = "routed", id = %id, rcpt = %o.recipient, connector = ?o.connector,
                would_route = %w, "TestMode connector would route this recipient");
        }
        match &o.status {
            DeliveryStatus::Delivered { reply } => {
                tracing::info!(id = %id, rcpt = %o.recipient, host = %host, connector = ?o.connector, reply = %reply, "delivered");
                crate::metrics::delivery_latency(batch.accepted.elapsed());
                let mut e = trace.outcome(EventKind::Delivered, o);
                e.reply = Some(reply.clone());
                events.emit(e);
                self.results.push((i, RcptResult::Delivered));
                self.records.push(LogRecord::Delivered {
                    rcpt: i,
                    detail: format!("{host}{via}: {reply}"),
                });
            }
            DeliveryStatus::Permanent(f) => {
                tracing::warn!(id = %id, rcpt = %o.recipient, host = %host, connector = ?o.connector, status = %f.enhanced, text = %f.text, "failed permanently");
                events.emit(trace.failure(EventKind::Failed, o, f));
                self.results.push((i, RcptResult::Failed));
                self.records.push(LogRecord::Failed {
                    rcpt: i,
                    detail: describe(f),
                });
                self.failed.push(dsn_failed(o, f, now));
            }
            DeliveryStatus::Temporary(f) => {
                tracing::info!(id = %id, rcpt = %o.recipient, host = %host, connector = ?o.connector, status = %f.enhanced, text = %f.text, hop_failure = o.hop_failure, "deferred");
                self.deferred.push(trace.failure(EventKind::Deferred, o, f));
                let d = describe(f);
                self.results.push((
                    i,
                    RcptResult::Deferred {
                        error: format!("{d}{via}"),
                        hop_failure: o.hop_failure,
                    },
                ));
                self.records
                    .push(LogRecord::Deferred { rcpt: i, detail: d });
            }
        }
    }
}

/// Why recipients fail without a delivery attempt.
#[derive(Debug, Clone)]
pub(super) enum FailNow {
    /// `MessageExpirationTimeout` passed; `last` is the last temporary failure.
    Expired { age: Duration, last: String },
    /// The address can never be routed (no domain, invalid IDNA): 5.1.3 / 5.1.2.
    Unroutable(Failure),
}

/// The status of a recipient returned at expiry: `5.4.7`, except after a security-policy
/// deferral, whose permanent form tells the sender why (replies.md): MTA-STS `4.4.8` /
/// `4.7.5` become `5.4.8` / `5.7.5` (RFC 8461 §5.1 allows the permanent failure only then),
/// DANE's `4.7.321`–`4.7.325` become `5.7.32x` (DANE failures are deferred, never bounced,
/// until expiry).
pub(super) fn expired_status(last: &str) -> String {
    let code = last.split_whitespace().next().unwrap_or("");
    match code {
        "4.4.8" => "5.4.8".into(),
        "4.7.5" => "5.7.5".into(),
        _ => match code.strip_prefix("4.7.32") {
            Some(d) if matches!(d, "1" | "2" | "3" | "4" | "5") => format!("5.7.32{d}"),
            _ => "5.4.7".to_string(),
        },
    }
}

/// Fails recipients now, with a failure DSN to the sender.
pub(super) async fn fail_now(work: Arc<Work>, msg: MessageRef, rcpts: Vec<(usize, FailNow)>) {
    let data = read(&work.spool, &msg.id).await.unwrap_or_default();
    let now = unix_now();
    let trace = MessageTrace::new(&msg.id, &msg.env, Some(data.view().head()));
    let mut records = Vec::new();
    let mut failed = Vec::new();
    for (i, why) in rcpts {
        let address = &msg.env.recipients[i];
        let (row, status, detail, diagnostic) = match why {
            FailNow::Expired { age, last } => {
                tracing::warn!(id = %msg.id, rcpt = %address, last = %last, "expired");
                let mut e = trace.event(EventKind::Expired, address);
                e.rule = Some("MessageExpirationTimeout".into());
                e.detail = Some(format!(
                    "not delivered after {} (MessageExpirationTimeout); last error: {last}",
                    span(age)
                ));
                let diagnostic = format!("smtp; delivery time expired; last error: {last}");
                let status = expired_status(&last);
                (
                    e,
                    status.clone(),
                    format!("{status} expired: {last}"),
                    diagnostic,
                )
            }
            FailNow::Unroutable(f) => {
                tracing::warn!(id = %msg.id, rcpt = %address, status = %f.enhanced, text = %f.text, "failed permanently");
                let mut e = trace.event(EventKind::Failed, address);
                e.rule = Some("Addressing".into());
                e.reply = Some(describe(&f));
                (
                    e,
                    f.enhanced.clone(),
                    describe(&f),
                    format!("smtp; {}", describe(&f)),
                )
            }
        };
        work.events.emit(row);
        records.push(LogRecord::Failed { rcpt: i, detail });
        failed.push(DsnRecipient {
            address: address.clone(),
            action: DsnAction::Failed,
            status,
            diagnostic: Some(diagnostic),
            remote_mta: None,
            connector: None,
            last_attempt: Some(rfc5322_date(now)),
        });
    }
    work.notifier
        .send_dsn(
            &msg.env,
            &trace,
            DsnKind::Failure,
            &failed,
            data.view().head(),
            now,
        )
        .await;
    let last = msg.last;
    persist(&work.spool, &msg, records, last).await;
}

/// The delay DSN (`DelayNotificationTimeout`) for the recipients still pending, each with
/// its last error.
pub(super) async fn notify_delay(
    work: Arc<Work>,
    msg: MessageRef,
    pending: Vec<(usize, Option<String>)>,
) {
    let data = read(&work.spool, &msg.id).await.unwrap_or_default();
    let now = unix_now();
    let trace = MessageTrace::new(&msg.id, &msg.env, Some(data.view().head()));
    let delayed: Vec<DsnRecipient> = pending
        .into_iter()
        .map(|(i, last)| DsnRecipient {
            address: msg.env.recipients[i].clone(),
            action: DsnAction::Delayed,
            status: "4.4.7".into(),
            diagnostic: last.map(|e| format!("smtp; {e}")),
            remote_mta: None,
            connector: None,
            last_attempt: Some(rfc5322_date(now)),
        })
        .collect();
    work.notifier
        .send_dsn(
            &msg.env,
            &trace,
            DsnKind::Delay,
            &delayed,
            data.view().head(),
            now,
        )
        .await;
    persist(&work.spool, &msg, vec![LogRecord::DelayNotified], false).await;
}

/// The message as delivery and the DSNs need it: a large one's body stays in its file (a
/// DSN quotes only the header block, which is always in memory).
async fn read(spool: &Arc<Spool>, id: &str) -> std::io::Result<MessageData> {
    let (spool, id) = (spool.clone(), id.to_string());
    match tokio::task::spawn_blocking(move || spool.read_for_delivery(&id)).await {
        Ok(r) => r.map(|(_, data)| data),
        Err(e) => Err(std::io::Error::other(e)),
    }
}

/// Appends a message's log records, and removes the message when `remove` (every
/// recipient final).
async fn persist(spool: &Arc<Spool>, msg: &MessageRef, records: Vec<LogRecord>, remove: bool) {
    let _serial = msg.io.lock().await;
    let (spool, id) = (spool.clone(), msg.id.clone());
    let io = tokio::task::spawn_blocking(move || {
        spool.append_log(&id, &records)?;
        if remove { spool.remove(&id) } else { Ok(()) }
    })
    .await;
    if let Ok(Err(e)) | Err(e) = io.map_err(std::io::Error::other) {
        tracing::error!(id = %msg.id, error = %e, "cannot record delivery outcome");
    }
}

#[cfg(test)]
mod tests {
    use super::expired_status;

    #[test]
    fn security_policy_deferrals_expire_with_their_permanent_form() {
        assert_eq!(
            expired_status("4.4.8 MX hosts of x.test failed MTA-STS validation (...)"),
            "5.4.8"
        );
        assert_eq!(
            expired_status("4.7.5 Remote certificate failed MTA-STS validation. Reason: x"),
            "5.7.5"
        );
        assert_eq!(expired_status("451 4.4.318 connection closed"), "5.4.7");
        assert_eq!(expired_status("4.4.316 connection refused"), "5.4.7");
    }

    #[test]
    fn dane_deferrals_expire_as_their_permanent_form() {
        assert_eq!(expired_status("4.7.323 tlsa-invalid: no match"), "5.7.323");
        assert_eq!(expired_status("4.7.321 starttls-not-supported"), "5.7.321");
        assert_eq!(
            expired_status("4.7.320 certificate validation failed"),
            "5.4.7"
        );
        assert_eq!(expired_status("4.4.316 refused"), "5.4.7");
        assert_eq!(expired_status("4.7.3250 odd"), "5.4.7");
    }
}
