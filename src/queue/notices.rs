//! What the queue tells people: trace rows for a message's outcomes, delay and failure
//! DSNs (RFC 3464), and the texts both use.

use std::sync::Arc;
use std::time::Duration;

use super::manager::QueueHandle;
use super::spool::{Envelope, Spool};
use crate::delivery::{Failure, RecipientOutcome};
use crate::message::dsn::{DsnAction, DsnInput, DsnKind, DsnRecipient, build_dsn};
use crate::message::received::rfc5322_date;
use crate::trace::{EventKind, Events, TraceEvent};

/// What every trace row of one message shares.
pub(super) struct MessageTrace {
    queue_id: String,
    message_id: Option<String>,
    sender: String,
}

impl MessageTrace {
    /// `data`: the message, when it was read (its Message-ID goes in every row).
    pub fn new(id: &str, env: &Envelope, data: Option<&[u8]>) -> Self {
        MessageTrace {
            queue_id: id.to_string(),
            message_id: data.and_then(crate::message::message_id),
            sender: env.mail_from.clone(),
        }
    }

    pub fn event(&self, kind: EventKind, recipient: &str) -> TraceEvent {
        let mut e = TraceEvent::new(kind);
        e.queue_id = Some(self.queue_id.clone());
        e.message_id = self.message_id.clone();
        e.sender = Some(self.sender.clone());
        e.recipient = Some(recipient.to_string());
        e
    }

    /// A recipient's outcome: connector, the host that answered, TLS.
    pub fn outcome(&self, kind: EventKind, o: &RecipientOutcome) -> TraceEvent {
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
    pub fn failure(&self, kind: EventKind, o: &RecipientOutcome, f: &Failure) -> TraceEvent {
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
pub(super) fn span(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        7200..172_800 => format!("{}h {}m", s / 3600, s / 60 % 60),
        _ => format!("{}d {}h", s / 86_400, s / 3600 % 24),
    }
}

/// `in 5m` from now, as a UTC time and a span (trace details).
pub(super) fn when(d: Duration) -> String {
    format!(
        "{} (in {})",
        crate::trace::time::format_utc(crate::trace::time::now_ms() + d.as_millis() as i64),
        span(d)
    )
}

/// `450 4.2.0 mailbox busy` / `4.4.316 connection refused`.
pub(super) fn describe(f: &Failure) -> String {
    match f.code {
        Some(c) => format!("{c} {} {}", f.enhanced, f.text),
        None => format!("{} {}", f.enhanced, f.text),
    }
}

/// A failed recipient of a failure DSN.
pub(super) fn dsn_failed(o: &RecipientOutcome, f: &Failure, now: u64) -> DsnRecipient {
    DsnRecipient {
        address: o.recipient.clone(),
        action: DsnAction::Failed,
        status: f.enhanced.clone(),
        diagnostic: Some(format!("smtp; {}", describe(f))),
        remote_mta: o.remote_host.clone(),
        connector: o.connector.clone(),
        last_attempt: Some(rfc5322_date(now)),
    }
}

/// Where DSNs are stored and announced.
pub(super) struct Notifier {
    pub spool: Arc<Spool>,
    pub handle: QueueHandle,
    pub events: Events,
    pub fqdn: String,
}

impl Notifier {
    /// Builds a DSN and queues it, from the null sender, to the original sender. Never to
    /// the null sender (RFC 5321 §4.5.5: no bounces of bounces).
    pub async fn send_dsn(
        &self,
        env: &Envelope,
        trace: &MessageTrace,
        kind: DsnKind,
        rcpts: &[DsnRecipient],
        original: &[u8],
        now: u64,
    ) {
        if env.mail_from.is_empty() || rcpts.is_empty() {
            return;
        }
        let id = &trace.queue_id;
        let dsn_id = self.spool.new_id();
        let message_id = format!("<{dsn_id}@{}>", self.fqdn);
        let input = DsnInput {
            kind,
            reporting_mta: &self.fqdn,
            original_envelope_id: None,
            original_sender: &env.mail_from,
            arrival_date: &rfc5322_date(env.arrived),
            date: &rfc5322_date(now),
            message_id: &message_id,
            recipients: rcpts,
            original_headers: crate::message::header_block(original),
        };
        let data = build_dsn(&input);
        let dsn_env = Envelope {
            mail_from: String::new(),
            recipients: vec![env.mail_from.clone()],
            arrived: now,
            inbound_connector: None,
            from_outside_org: false,
            smtputf8: env.smtputf8,
            // RFC 8689 §5: the notice about a REQUIRETLS message is itself sent with
            // REQUIRETLS (it carries the original's headers, never its body).
            requiretls: env.requiretls,
        };
        let spool = self.spool.clone();
        let (id2, env2) = (dsn_id.clone(), dsn_env.clone());
        match tokio::task::spawn_blocking(move || spool.store(&id2, &env2, &data)).await {
            Ok(Ok(())) => {
                tracing::info!(id = %id, dsn = %dsn_id, to = %env.mail_from, "DSN queued");
                let about: Vec<&str> = rcpts.iter().map(|r| r.address.as_str()).collect();
                let mut e = trace.event(EventKind::DsnSent, "");
                e.recipient = None;
                e.detail = Some(format!(
                    "{} notice to {} about {}; queued as {dsn_id}",
                    match kind {
                        DsnKind::Failure => "failure",
                        DsnKind::Delay => "delay",
                    },
                    env.mail_from,
                    about.join(", ")
                ));
                self.events.emit(e);
                self.handle.submit(dsn_id, dsn_env, Some(message_id));
            }
            other => tracing::error!(id = %id, error = ?other, "cannot store DSN"),
        }
    }
}
