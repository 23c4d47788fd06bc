//! The relay's side of an SMTP session: inbound connector attribution and restrictions,
//! header rewriting, the `Received:` header, and the durable spool write before `250`.

use std::sync::Arc;

use super::pressure::{Level, Pressure};
use crate::message::headers::{InboundHeaderPolicy, rewrite_inbound_owned};
use crate::message::received::{ReceivedFields, received_header};
use crate::message::srs::{MAX_AGE_DAYS, Srs, SrsError, is_srs0, today};
use crate::policy::restrict::{
    InboundPolicy, Refusal, SessionFacts, is_accepted, message_connector,
};
use crate::policy::{ConnectorType, Policy};
use crate::queue::manager::QueueHandle;
use crate::queue::spool::{Envelope, Spool, unix_now};
use crate::smtp::Reply;
use crate::smtp::body::Message;
use crate::smtp::command::Address;
use crate::smtp::session::{Backend, SessionInfo, Transaction, TxEnd};
use crate::trace::facts::{self, CertFacts, TxFacts};
use crate::trace::{EventKind, Events, TraceEvent};

pub(super) struct RelayBackend {
    policy: Arc<Policy>,
    inbound: Arc<InboundPolicy>,
    spool: Arc<Spool>,
    queue: QueueHandle,
    /// SRS secret, when SRS is in use (`relay::load_srs`).
    srs: Option<Arc<Srs>>,
    /// The message trace: `Received` for every message answered 250, `Rejected` for every
    /// refusal by a policy rule or limit.
    events: Events,
    /// Back pressure: new transactions are refused while it is Medium (but from
    /// OnPremises) or High.
    pressure: Arc<Pressure>,
}

impl RelayBackend {
    pub(super) fn new(
        policy: Arc<Policy>,
        inbound: Arc<InboundPolicy>,
        spool: Arc<Spool>,
        queue: QueueHandle,
        srs: Option<Arc<Srs>>,
        events: Events,
        pressure: Arc<Pressure>,
    ) -> Self {
        RelayBackend {
            policy,
            inbound,
            spool,
            queue,
            srs,
            events,
            pressure,
        }
    }

    /// Exchange's back pressure at MAIL FROM: under Medium only OnPremises transactions
    /// are accepted (internal mail is favoured), under High none. A transaction already
    /// past MAIL FROM is never stopped, and delivery is not held, so the pressure drains.
    fn back_pressure(&self, s: &SessionInfo, tx: &Transaction) -> Result<(), Reply> {
        let level = self.pressure.level();
        let on_premises = tx.attribution.is_some_and(|a| {
            self.policy.inbound[a.index].connector_type == ConnectorType::OnPremises
        });
        if level == Level::Normal || (level == Level::Medium && on_premises) {
            return Ok(());
        }
        let reply = Reply::insufficient_resources();
        let reason = self.pressure.reason();
        tracing::info!(
            event = "rejected",
            stage = "MAIL",
            client_ip = %s.peer.ip(),
            via_proxy = via_proxy(s),
            address = mail_from(tx),
            rule = "BackPressure",
            level = level.as_str(),
            reason,
            "refused"
        );
        let mut e = self.rejected(s, Some(tx), "MAIL", "BackPressure", &reply);
        e.detail = Some(format!(
            "refused at MAIL: back pressure {} ({reason})",
            level.as_str()
        ));
        self.events.emit(e);
        Err(reply)
    }

    /// For an SRS0 address at one of our domains (an accepted domain or the relay's Fqdn)
    /// while SRS is in use: the original address, or why it is refused. `None`: not an SRS
    /// address of ours, an ordinary recipient. `max_age` in days.
    fn srs_reverse(&self, to: &Address, max_age: u32) -> Option<Result<String, SrsError>> {
        let srs = self.srs.as_ref()?;
        let domain = to.domain_lc();
        let ours = is_accepted(&self.policy, &domain)
            || domain == self.policy.relay.fqdn.to_ascii_lowercase();
        if !ours || !is_srs0(&to.local) {
            return None;
        }
        Some(srs.reverse_at(&to.to_string(), today(), max_age))
    }

    fn facts<'a>(&self, s: &'a SessionInfo) -> SessionFacts<'a> {
        let cert = s.client_cert.as_ref();
        SessionFacts {
            ip: s.peer.ip(),
            tls: s.tls.is_some(),
            trusted_cert_names: cert.map(|c| c.trusted_names()).unwrap_or(&[]),
            cert_problem: cert.and_then(|c| c.problem.as_deref()),
            trusted_cert_issuer: cert.and_then(|c| c.trusted_issuer()),
        }
    }

    /// A trace event with what the session knows: client IP, HELO, TLS, client
    /// certificate, and with a transaction its sender and inbound connector.
    fn event(&self, kind: EventKind, s: &SessionInfo, tx: Option<&Transaction>) -> TraceEvent {
        let mut e = TraceEvent::new(kind);
        e.client_ip = Some(s.peer.ip().to_string());
        e.helo = s.helo.clone();
        e.tls = s
            .tls
            .as_ref()
            .map(|t| format!("{} {}", t.version, t.cipher));
        e.certificate = s.client_cert.as_ref().map(|c| match &c.problem {
            Some(p) => format!("{} (not trusted: {p})", c.subject),
            None => c.subject.clone(),
        });
        if let Some(tx) = tx {
            e.sender = Some(mail_from(tx));
            e.connector = tx
                .attribution
                .map(|a| self.policy.inbound[a.index].name.clone());
        }
        e
    }

    /// A `Rejected` event: the rule, the reply given, where; its connector is the one the
    /// transaction is attributed to until the caller names the one that refused.
    fn rejected(
        &self,
        s: &SessionInfo,
        tx: Option<&Transaction>,
        stage: &str,
        rule: &str,
        reply: &Reply,
    ) -> TraceEvent {
        let mut e = self.event(EventKind::Rejected, s, tx);
        e.rule = Some(rule.to_string());
        e.reply = Some(reply.to_string());
        e.detail = Some(with_proxy(s, format!("refused at {stage}")));
        e
    }

    /// Logs a refusal as a structured event, records it in the trace and builds the reply.
    fn refuse(
        &self,
        s: &SessionInfo,
        tx: &Transaction,
        stage: &str,
        recipient: Option<&Address>,
        r: Refusal,
    ) -> Reply {
        let address = match recipient {
            Some(to) => to.to_string(),
            None => mail_from(tx),
        };
        let (code, enhanced, text) = r.reply_parts();
        tracing::info!(
            event = "rejected",
            stage,
            client_ip = %s.peer.ip(),
            via_proxy = via_proxy(s),
            address,
            rule = r.rule(),
            connector = r.connector().unwrap_or(""),
            cert_names = ?s.client_cert.as_ref().map(|c| c.names.clone()),
            reply = %format!("{code} {enhanced}"),
            "refused"
        );
        let reply = Reply::new(code, enhanced, text);
        let mut e = self.rejected(s, Some(tx), stage, r.rule(), &reply);
        e.recipient = recipient.map(|a| a.to_string());
        if let Some(c) = r.connector() {
            e.connector = Some(c.to_string());
        }
        self.events.emit(e);
        reply
    }
}

/// The load balancer's IP when the client came through one (`ProxyProtocolFrom`), for the
/// logs; empty otherwise.
fn via_proxy(s: &SessionInfo) -> String {
    s.proxy.map(|p| p.ip().to_string()).unwrap_or_default()
}

/// A trace detail with the balancer named when the client came through one.
fn with_proxy(s: &SessionInfo, detail: String) -> String {
    match s.proxy {
        Some(p) => format!("{detail}; client via proxy {}", p.ip()),
        None => detail,
    }
}

/// The facts row's JSON of a transaction (`trace::facts`).
fn tx_facts<'a>(s: &'a SessionInfo, tx: &'a Transaction, end: TxEnd) -> TxFacts<'a> {
    TxFacts {
        v: facts::VERSION,
        by: tx.attribution.map(|a| a.by.as_str().into()),
        cert: s.client_cert.as_ref().map(|c| CertFacts {
            names: c.names.iter().map(|n| n.as_str().into()).collect(),
            issuer: c.issuer.as_str().into(),
            nb: c.not_before,
            na: c.not_after,
            trusted: c.trusted,
            problem: c.problem.as_deref().map(Into::into),
        }),
        to: tx.recipients.iter().map(|a| a.to_string().into()).collect(),
        no: tx
            .refused
            .iter()
            .map(|(a, rule)| (a.to_string().into(), (*rule).into()))
            .collect(),
        end: end.as_str().into(),
    }
}

/// The reverse-path as text; empty for the null sender `<>`.
fn mail_from(tx: &Transaction) -> String {
    tx.mail_from
        .as_ref()
        .map(|a| a.to_string())
        .unwrap_or_default()
}

fn sender_domain(tx: &Transaction) -> Option<String> {
    tx.mail_from.as_ref().map(|a| a.domain_lc())
}

impl Backend for RelayBackend {
    fn session_facts(&self, s: &SessionInfo) {
        // Attribution as far as it is known before MAIL FROM (IP, certificate).
        let a = self.inbound.attribute(&self.facts(s), None);
        tracing::debug!(
            event = "attribution",
            client_ip = %s.peer.ip(),
            via_proxy = via_proxy(s),
            tls = s.tls.is_some(),
            cert_subject = s.client_cert.as_ref().map(|c| c.subject.as_str()).unwrap_or(""),
            cert_names = ?s.client_cert.as_ref().map(|c| c.names.clone()),
            cert_trusted = s.client_cert.as_ref().is_some_and(|c| c.trusted),
            connector = a.map(|a| self.policy.inbound[a.index].name.as_str()).unwrap_or(""),
            by = ?a.map(|a| a.by),
            "session attributed"
        );
    }

    fn mail(&self, s: &SessionInfo, tx: &mut Transaction) -> Result<(), Reply> {
        let sender = sender_domain(tx);
        let (attribution, verdict) =
            self.inbound
                .check_mail(&self.policy, &self.facts(s), sender.as_deref());
        tx.attribution = attribution;
        tracing::info!(
            event = "attribution",
            client_ip = %s.peer.ip(),
            via_proxy = via_proxy(s),
            sender = sender.as_deref().unwrap_or(""),
            connector = attribution.map(|a| self.policy.inbound[a.index].name.as_str()).unwrap_or(""),
            by = ?attribution.map(|a| a.by),
            cert_names = ?s.client_cert.as_ref().map(|c| c.names.clone()),
            "transaction attributed"
        );
        if let Err(reply) = self.back_pressure(s, tx) {
            tx.refused_by = Some("BackPressure");
            return Err(reply);
        }
        verdict.map_err(|r| {
            tx.refused_by = Some(r.rule());
            self.refuse(s, tx, "MAIL", None, r)
        })
    }

    fn transaction_end(&self, s: &SessionInfo, tx: &Transaction, end: TxEnd) {
        let mut e = self.event(EventKind::Session, s, Some(tx));
        e.queue_id = tx.queue_id.clone();
        e.rule = tx.refused_by.map(str::to_string);
        e.detail = Some(tx_facts(s, tx, end).to_json());
        self.events.emit(e);
    }

    fn rcpt(&self, s: &SessionInfo, tx: &mut Transaction, to: &Address) -> Result<(), Reply> {
        self.check_rcpt(s, tx, to).map_err(|(rule, reply)| {
            tx.refused.push((to.clone(), rule));
            reply
        })
    }

    fn spill_dir(&self) -> Option<std::path::PathBuf> {
        Some(self.spool.tmp_dir().to_path_buf())
    }

    async fn data(&self, s: &SessionInfo, tx: &mut Transaction, message: Message) -> Reply {
        let id = self.spool.new_id();
        let now = unix_now();
        // The connector counts for the message when it applies to at least one recipient
        // (AssociatedAcceptedDomains).
        let connector = message_connector(
            &self.policy,
            tx.attribution,
            tx.recipients.iter().map(|r| r.domain_lc()),
        );
        let sender = sender_domain(tx);
        let headers = InboundHeaderPolicy {
            cloud_services_mail_enabled: connector.is_some_and(|c| c.cloud_services_mail_enabled),
            mark_internal: connector.is_some_and(|c| {
                c.treat_messages_as_internal
                    && c.connector_type == ConnectorType::OnPremises
                    && sender
                        .as_deref()
                        .is_some_and(|d| is_accepted(&self.policy, d))
            }),
        };
        // The rewrite touches the header block only, which `head` holds whole (smtp::body).
        let Message { head, rest } = message;
        let message = rewrite_inbound_owned(head, &headers);
        let single = (tx.recipients.len() == 1).then(|| tx.recipients[0].to_string());
        let header = received_header(&ReceivedFields {
            by: &self.policy.relay.fqdn,
            session: s,
            inbound_connector: connector.map(|c| c.name.as_str()),
            queue_id: &id,
            single_recipient: single.as_deref(),
            unix_time: now,
        });
        // The Received header and the message stay apart (the spool writes them one after
        // the other): joined, they would be one more copy of the whole message. The
        // Message-ID is the message's own (the Received header holds none).
        let message_id = crate::message::message_id(&message);
        let size =
            header.len() as u64 + message.len() as u64 + rest.as_ref().map_or(0, |r| r.len());
        let env = Envelope {
            mail_from: tx
                .mail_from
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default(),
            // SRS bounces go to the original address. One day of grace over RCPT's check, so
            // a transaction that crosses midnight on the last valid day is not lost.
            recipients: tx
                .recipients
                .iter()
                .map(|a| match self.srs_reverse(a, MAX_AGE_DAYS + 1) {
                    Some(Ok(original)) => original,
                    _ => a.to_string(),
                })
                .collect(),
            arrived: now,
            from_outside_org: !connector
                .is_some_and(|c| c.connector_type == ConnectorType::OnPremises),
            inbound_connector: connector.map(|c| c.name.clone()),
            smtputf8: tx.params.smtputf8,
            requiretls: tx.params.requiretls,
        };
        let stored = self
            .spool
            .store_async(&id, &env, header.into_bytes(), message, rest)
            .await;
        match stored {
            Ok(()) => {
                tracing::info!(
                        event = "received",
                        id = %id,
                        client_ip = %s.peer.ip(),
                via_proxy = via_proxy(s),
                        helo = s.helo.as_deref().unwrap_or(""),
                        tls_version = s.tls.as_ref().map(|t| t.version.as_str()).unwrap_or(""),
                        tls_cipher = s.tls.as_ref().map(|t| t.cipher.as_str()).unwrap_or(""),
                        cert_subject = s.client_cert.as_ref().map(|c| c.subject.as_str()).unwrap_or(""),
                        from = %env.mail_from,
                        rcpts = env.recipients.len(),
                        connector = env.inbound_connector.as_deref().unwrap_or(""),
                        "message accepted"
                    );
                let reply = Reply::ok(format!("Ok: queued as {id}"));
                // Before the queue can deliver: Received comes first in the trace.
                for rcpt in &env.recipients {
                    let mut e = self.event(EventKind::Received, s, Some(tx));
                    e.queue_id = Some(id.clone());
                    e.message_id = message_id.clone();
                    e.recipient = Some(rcpt.clone());
                    e.connector = env.inbound_connector.clone();
                    e.reply = Some(reply.to_string());
                    let detail = format!("{size} bytes, {} recipient(s)", env.recipients.len());
                    e.detail = Some(with_proxy(s, detail));
                    self.events.emit(e);
                }
                self.queue.submit(id.clone(), env, message_id);
                tx.queue_id = Some(id);
                reply
            }
            Err(e) => {
                tracing::error!(error = %e, "spool write failed; message refused with a temporary error");
                // ENOSPC / EDQUOT: 452 4.3.1 (RFC 3463); anything else: 451 4.3.0.
                let reply = if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                    Reply::insufficient_storage()
                } else {
                    Reply::local_error()
                };
                tx.refused_by = Some("SpoolWriteFailed");
                let mut ev = self.rejected(s, Some(tx), "DATA", "SpoolWriteFailed", &reply);
                ev.message_id = message_id;
                ev.detail = Some(format!("refused at DATA: {e}"));
                self.events.emit(ev);
                reply
            }
        }
    }

    fn refused(
        &self,
        s: &SessionInfo,
        tx: Option<&Transaction>,
        stage: &'static str,
        rule: &'static str,
        reply: &Reply,
    ) {
        let e = self.rejected(s, tx, stage, rule, reply);
        self.events.emit(e);
    }

    fn dropped(
        &self,
        s: &SessionInfo,
        tx: Option<&Transaction>,
        rule: &'static str,
        detail: String,
    ) {
        // A `Rejected` event without a reply: none could be delivered.
        let mut e = self.event(EventKind::Rejected, s, tx);
        e.rule = Some(rule.to_string());
        e.detail = Some(with_proxy(s, detail));
        self.events.emit(e);
    }

    fn connection_refused(&self, peer: std::net::SocketAddr, rule: &'static str, reply: &Reply) {
        let mut e = TraceEvent::new(EventKind::Rejected);
        e.client_ip = Some(peer.ip().to_string());
        e.rule = Some(rule.to_string());
        e.reply = Some(reply.to_string());
        e.detail = Some("refused at CONNECT".into());
        self.events.emit(e);
    }
}

impl RelayBackend {
    /// RCPT TO's checks in the order the session applies them; a refusal with its rule.
    fn check_rcpt(
        &self,
        s: &SessionInfo,
        tx: &Transaction,
        to: &Address,
    ) -> Result<(), (&'static str, Reply)> {
        let domain = to.domain_lc();
        self.check_routable(s, tx, to, &domain)
            .map_err(|reply| ("InvalidDomain", reply))?;
        // An SRS bounce: refused unless we issued it (valid hash, fresh timestamp); then it
        // counts as mail to our (accepted) SRS domain and is relayed to the original address.
        if let Some(Err(e)) = self.srs_reverse(to, MAX_AGE_DAYS) {
            tracing::info!(
                event = "rejected",
                stage = "RCPT",
                client_ip = %s.peer.ip(),
                via_proxy = via_proxy(s),
                address = %to,
                rule = "srs",
                reason = %e,
                reply = "550 5.1.1",
                "refused"
            );
            let reply = Reply::new(550, "5.1.1", "Invalid SRS address");
            let mut ev = self.rejected(s, Some(tx), "RCPT", "InvalidSrsAddress", &reply);
            ev.recipient = Some(to.to_string());
            ev.detail = Some(format!("refused at RCPT: {e}"));
            self.events.emit(ev);
            return Err(("InvalidSrsAddress", reply));
        }
        // <postmaster> of the relay, routing characters, restrictions, anti-relay.
        let sender = sender_domain(tx);
        self.inbound
            .check_recipient(
                &self.policy,
                &self.facts(s),
                tx.attribution,
                sender.as_deref(),
                &to.local,
                &domain,
            )
            .map_err(|r| (r.rule(), self.refuse(s, tx, "RCPT", Some(to), r)))
    }

    /// A recipient domain that can never be a DNS name (not valid IDNA, an empty label, a
    /// label over 63 octets) is refused at RCPT with `553 5.1.2` (RFC 3463 "bad destination
    /// system address") instead of being accepted and bounced. Address literals are left
    /// to the relay rules.
    fn check_routable(
        &self,
        s: &SessionInfo,
        tx: &Transaction,
        to: &Address,
        domain: &str,
    ) -> Result<(), Reply> {
        if domain.starts_with('[') {
            return Ok(());
        }
        let Err(e) = crate::dns::idn::routable(domain) else {
            return Ok(());
        };
        let reply = Reply::new(553, "5.1.2", "Bad destination domain name");
        let mut ev = self.rejected(s, Some(tx), "RCPT", "InvalidDomain", &reply);
        ev.recipient = Some(to.to_string());
        ev.detail = Some(format!("refused at RCPT: {e}"));
        self.events.emit(ev);
        Err(reply)
    }
}
