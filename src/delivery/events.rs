//! The delivery engine's trace events: one `Routed` per recipient and one `Attempt` per
//! session with a next hop (host, IP, TLS version and cipher, the server certificate checks
//! and their verdict, the remote reply or the connection error). Connector validation
//! (`crate::ops::validate`) reads the same events to build its report, so what an
//! administrator sees there is what the message trace records.
//!
//! Built only when the deliverer has an [`Events`] handle (`Deliverer::with_events`), so
//! delivery without a trace does none of this formatting.

use crate::policy::route::{RouteDecision, TlsPolicy};
use crate::policy::{DomainPattern, TlsLevel};
use crate::trace::{EventKind, Events, TraceEvent};

use super::DeliveryStatus;
use super::client::{Attempt, TlsInfo};
use super::tls::{TlsCheck, TlsFailure, name_matches};

/// What every event of one message shares.
pub(super) struct MessageFacts<'a> {
    pub events: &'a Events,
    pub queue_id: &'a str,
    pub message_id: Option<String>,
    pub sender: &'a str,
    /// `RevocationLists` are configured (the certificate verdict says whether revocation
    /// was checked).
    pub crls: bool,
}

impl MessageFacts<'_> {
    fn event(&self, kind: EventKind) -> TraceEvent {
        let mut e = TraceEvent::new(kind);
        e.queue_id = Some(self.queue_id.to_string());
        e.message_id = self.message_id.clone();
        e.sender = Some(self.sender.to_string());
        e
    }

    /// `Routed` for one recipient. `forced`: the route was imposed (connector validation)
    /// rather than selected.
    pub fn routed(&self, recipient: &str, domain: &str, decision: &RouteDecision, forced: bool) {
        let mut e = self.event(EventKind::Routed);
        e.recipient = Some(recipient.to_string());
        e.connector = decision.route.connector.clone();
        let mut detail = decision.route.describe(domain);
        if let Some(w) = &decision.would_route {
            detail.push_str(&format!(
                "; would route: {w} (TestMode connector; not used)"
            ));
        }
        if forced {
            detail.push_str("; route forced for connector validation");
        }
        e.detail = Some(detail);
        self.events.emit(e);
    }

    /// `Attempt` events for one attempt at one address: first the failed STARTTLS session
    /// of an opportunistic fallback (its own connection), then the attempt itself.
    pub fn attempts(&self, hop: &HopFacts<'_>, attempt: &Attempt) {
        if let Some(first) = &attempt.fallback {
            let mut e = self.attempt_base(hop);
            e.rule = Some(format!("{:?}", first.stage));
            e.certificate = certificate_verdict(hop, None, first.tls_failure.as_deref(), self.crls);
            e.reply = Some(first.failure.to_string());
            e.detail = Some(format!(
                "{}; opportunistic TLS failed, retried in plaintext on a new connection",
                hop.position
            ));
            self.events.emit(e);
        }
        let mut e = self.attempt_base(hop);
        e.tls = attempt
            .tls
            .as_ref()
            .map(|t| format!("{} {}", t.version, t.cipher));
        let failure = match &attempt.result {
            Err(err) => err.tls_failure.as_deref(),
            Ok(_) => None,
        };
        e.certificate = certificate_verdict(hop, attempt.tls.as_ref(), failure, self.crls);
        match &attempt.result {
            Ok(statuses) => e.reply = Some(replies(hop.recipients, statuses)),
            Err(err) => {
                e.rule = Some(format!("{:?}", err.stage));
                e.reply = Some(err.failure.to_string());
            }
        }
        let mut detail = hop.position.clone();
        if !hop.dane.is_empty() {
            detail.push_str(&format!("; DANE: {}", hop.dane));
        }
        if attempt.reused {
            detail.push_str("; on a kept connection");
        }
        if attempt.fallback.is_some() {
            detail.push_str("; plaintext after the failed STARTTLS");
        }
        e.detail = Some(detail);
        self.events.emit(e);
    }

    /// An `Attempt` row for an MX host that MTA-STS `enforce` did not let us use (no
    /// connection was made): rule `MtaSts`, the 4.4.8 status as the reply.
    pub fn sts_refused(
        &self,
        connector: Option<&str>,
        host: &str,
        recipients: &[String],
        failure: &super::Failure,
    ) {
        let mut e = self.event(EventKind::Attempt);
        e.recipient = Some(recipients.join(", "));
        e.connector = connector.map(str::to_string);
        e.host = Some(host.to_string());
        e.rule = Some("MtaSts".into());
        e.reply = Some(failure.to_string());
        e.detail = Some("MTA-STS enforce: MX host not in the policy; not used".into());
        self.events.emit(e);
    }

    fn attempt_base(&self, hop: &HopFacts<'_>) -> TraceEvent {
        let mut e = self.event(EventKind::Attempt);
        e.recipient = Some(hop.recipients.join(", "));
        e.connector = hop.connector.map(str::to_string);
        e.host = Some(hop.host.to_string());
        e.ip = Some(hop.ip.to_string());
        e
    }
}

/// One next-hop address being tried.
pub(super) struct HopFacts<'a> {
    pub connector: Option<&'a str>,
    pub tls: &'a TlsPolicy,
    /// The recipient domain (a blank `TlsDomain` means it).
    pub domain: &'a str,
    pub host: &'a str,
    pub ip: std::net::IpAddr,
    pub recipients: &'a [String],
    /// `address 1 of 2; next hops: a [ip], b [ip]`.
    pub position: String,
    /// The DANE steps and verdict for this host (`super::dane::HostPlan::steps`); empty
    /// when DANE is not in play for the route.
    pub dane: &'a str,
}

/// Next hops as `host [ip:port, ip:port], host [ip:port]`.
pub(super) fn hops_text(hops: &[super::nexthop::NextHop]) -> String {
    hops.iter()
        .map(|h| {
            let ips: Vec<String> = h.addrs.iter().map(|a| a.to_string()).collect();
            format!("{} [{}]", h.host, ips.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The replies of a transaction: one line when every recipient got the same, else one
/// `recipient: reply` per recipient.
fn replies(recipients: &[String], statuses: &[DeliveryStatus]) -> String {
    let text = |s: &DeliveryStatus| match s {
        DeliveryStatus::Delivered { reply } => reply.clone(),
        DeliveryStatus::Temporary(f) | DeliveryStatus::Permanent(f) => f.to_string(),
    };
    let lines: Vec<String> = statuses.iter().map(text).collect();
    if lines.windows(2).all(|w| w[0] == w[1]) {
        return lines.into_iter().next().unwrap_or_default();
    }
    recipients
        .iter()
        .zip(lines)
        .map(|(r, l)| format!("{r}: {l}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// The server certificate checks of an attempt and their verdict, e.g.
/// `DomainValidation: chain ok, dates ok, revocation ok; name sink.test matched TlsDomain
/// sink.test (presented CN=sink.test, issuer ...)`, or `DomainValidation: name check
/// failed: SubjectMismatch ...`. `None` when no certificate was seen (plaintext, STARTTLS
/// not offered or refused, handshake failed before the certificate).
pub(super) fn certificate_verdict(
    hop: &HopFacts<'_>,
    tls: Option<&TlsInfo>,
    failure: Option<&TlsFailure>,
    crls: bool,
) -> Option<String> {
    let label = match hop.tls {
        TlsPolicy::Never => return None,
        TlsPolicy::Opportunistic => "opportunistic TLS",
        other => other.level_name(),
    };
    if let Some(f) = failure {
        if matches!(f.check, TlsCheck::Offered | TlsCheck::Handshake) {
            return None;
        }
        let presented = f
            .peer
            .as_ref()
            .map(|p| {
                format!(
                    " (presented \"{}\", SANs [{}], issuer \"{}\")",
                    p.subject,
                    p.sans.join(", "),
                    p.issuer
                )
            })
            .unwrap_or_default();
        return Some(format!(
            "{label}: {} check failed: {}{presented}",
            f.check, f.reason
        ));
    }
    let info = tls?;
    let presented = match &info.peer {
        Some(p) => format!(
            "presented \"{}\", SANs [{}], issuer \"{}\"",
            p.subject,
            p.sans.join(", "),
            p.issuer
        ),
        None => format!("presented names [{}]", info.peer_names.join(", ")),
    };
    let revocation = if crls {
        "not revoked (RevocationLists)"
    } else {
        "revocation not checked (no RevocationLists)"
    };
    Some(match hop.tls {
        TlsPolicy::Required(TlsLevel::CertificateValidation, _) => {
            format!("{label}: chain ok, dates ok, {revocation}; name not checked; {presented}")
        }
        TlsPolicy::Required(TlsLevel::DomainValidation, wanted) => {
            let (wanted, what) = match wanted {
                Some(p) => (p.clone(), "TlsDomain"),
                None => (
                    DomainPattern::Subdomains(hop.domain.to_string()),
                    "the recipient domain",
                ),
            };
            let matched = info
                .peer_names
                .iter()
                .find(|n| name_matches(&wanted, n))
                .map(String::as_str)
                .unwrap_or("?");
            format!(
                "{label}: chain ok, dates ok, {revocation}; name {matched} matched {what} {wanted}; {presented}"
            )
        }
        _ => format!("{label}: certificate not checked; {presented}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_summarised() {
        let r = vec!["a@x.test".to_string(), "b@x.test".to_string()];
        let ok = DeliveryStatus::Delivered {
            reply: "250 2.0.0 Ok".into(),
        };
        assert_eq!(replies(&r, &[ok.clone(), ok.clone()]), "250 2.0.0 Ok");
        let bad = DeliveryStatus::Permanent(super::super::Failure {
            code: Some(550),
            enhanced: "5.1.1".into(),
            text: "no such user".into(),
        });
        assert_eq!(
            replies(&r, &[ok, bad]),
            "a@x.test: 250 2.0.0 Ok; b@x.test: 550 5.1.1 no such user"
        );
    }
}
