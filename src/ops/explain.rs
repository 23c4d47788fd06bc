//! The policy explainer: what the relay would decide for a session from `ip` (with an
//! optional client certificate), sender and recipients — attribution, restrictions and the
//! exact replies, acceptance of each recipient, and the route (connector, next hops, TLS
//! level) each accepted recipient would take. Nothing is sent and nothing is resolved.
//!
//! Every decision is made by the code the SMTP session uses: `ClientCertValidator` for the
//! certificate (against `TrustedCaFile`, the webpki roots and `RevocationLists`), then
//! [`super::decide::decide`] (the session's command parser, `InboundPolicy::check_mail`
//! and `check_recipient`, `message_connector`, route selection), which the change impact
//! preview calls too. Only the *reasons* (which CIDR, which name, which pattern matched)
//! are looked up here, for the reader.
//!
//! Assumptions, stated in the output: the session is under TLS when the relay offers
//! STARTTLS (it has a `TlsCertificate`) or a certificate is given; when that changes the
//! answer to MAIL FROM (`RequireTls`), the plaintext answer is given too. Next hops are not
//! resolved: an MX route says `MX lookup of <domain>`. SRS addresses are not verified (that
//! needs the secret). Load-balanced ties between connectors are picked at random, as in
//! delivery.

use std::net::IpAddr;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Serialize;

use crate::message::srs::is_srs0;
use crate::policy::Policy;
use crate::policy::inbound::{AttributedBy, Attribution};
use crate::policy::restrict::{
    InboundPolicy, Refusal, SessionFacts, is_accepted, is_relay_postmaster,
};
use crate::policy::route::{ConnectorKind, RouteDecision};
use crate::smtp::Reply;
use crate::smtp::client_cert::{ClientCertInfo, ClientCertValidator};

use super::decide::{RecipientDecision, decide};

/// The explainer's answer.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Explanation {
    pub client_ip: IpAddr,
    /// The session is taken to be under TLS (see the module documentation).
    pub tls: bool,
    pub client_certificate: Option<CertificateFacts>,
    pub sender: String,
    /// Attribution before MAIL FROM (client IP and certificate only).
    pub connect_attribution: Option<AttributionFacts>,
    /// Attribution of the transaction (at MAIL FROM, with the sender's domain).
    pub attribution: Option<AttributionFacts>,
    pub mail_from: Verdict,
    /// The answer to MAIL FROM in plaintext, when it differs from `mail_from`.
    pub mail_from_without_tls: Option<Verdict>,
    pub recipients: Vec<RecipientExplanation>,
    /// Problems with the question itself (an unreadable certificate, ...).
    pub errors: Vec<String>,
}

/// The client certificate as the session judges it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CertificateFacts {
    pub subject: String,
    pub issuer: String,
    /// SAN dNSNames, or the subject CN without SANs.
    pub names: Vec<String>,
    /// Counts for attribution (chains to a trusted root, in its dates, not revoked).
    pub trusted: bool,
    /// Why it does not count.
    pub problem: Option<String>,
}

/// The inbound connector a session or transaction is attributed to, and why.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AttributionFacts {
    pub connector: String,
    /// `Partner` or `OnPremises`.
    pub connector_type: String,
    /// `Certificate`, `IpAddress` or `SenderDomain`.
    pub by: String,
    /// The fact that matched, e.g. `client IP 127.0.0.20 is in SenderIPAddresses 127.0.0.20/30`.
    pub why: String,
}

/// The relay's answer to one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Verdict {
    pub accepted: bool,
    /// The rule that refused (as in the message trace), e.g. `RequireTls`.
    pub rule: Option<String>,
    /// The connector named by the refusal.
    pub connector: Option<String>,
    /// The exact reply, e.g. `550 5.7.64 TenantAttribution; Relay Access Denied`.
    pub reply: String,
}

impl Verdict {
    fn accepted(reply: Reply) -> Self {
        Verdict {
            accepted: true,
            rule: None,
            connector: None,
            reply: reply.to_string(),
        }
    }

    fn refused(r: &Refusal) -> Self {
        let (code, enhanced, text) = r.reply_parts();
        Verdict {
            accepted: false,
            rule: Some(r.rule().to_string()),
            connector: r.connector().map(str::to_string),
            reply: Reply::new(code, enhanced, text).to_string(),
        }
    }

    fn syntax(reply: Reply) -> Self {
        Verdict {
            accepted: false,
            rule: Some("Syntax".into()),
            connector: None,
            reply: reply.to_string(),
        }
    }
}

/// One recipient: accepted or not, and the route it would take.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecipientExplanation {
    pub recipient: String,
    pub verdict: Verdict,
    /// Why it is accepted (accepted domain, relay allowed, postmaster), or notes.
    pub why: String,
    /// For an accepted recipient.
    pub route: Option<RouteFacts>,
}

/// The route of one recipient.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RouteFacts {
    /// `None`: the default MX route.
    pub connector: Option<String>,
    /// `Outbound`, `Send`, or `None` for the default route.
    pub kind: Option<String>,
    /// `smart hosts 127.0.0.1:2626` or `MX lookup of fabrikam.test (port 25)`.
    pub next_hops: String,
    /// `opportunistic`, `none`, `EncryptionOnly`, `CertificateValidation`, `DomainValidation`.
    pub tls_level: String,
    /// The level in words (what is checked, against which name).
    pub tls: String,
    /// A TestMode connector that would have taken the recipient.
    pub would_route: Option<String>,
    /// MTA-STS (RFC 8461) for this route: what is looked up at delivery and what the
    /// policy's modes would do (nothing is fetched here).
    pub mta_sts: String,
}

/// Explains what the relay would decide (see the module documentation). `client_cert` is
/// the content of a certificate file, PEM (leaf first, chain allowed) or DER.
pub fn explain(
    policy: &Policy,
    ip: IpAddr,
    client_cert: Option<&[u8]>,
    sender: &str,
    recipients: &[String],
) -> Explanation {
    let mut errors = Vec::new();
    let offers_tls =
        policy.relay.tls_certificate.is_some() && policy.relay.tls_private_key.is_some();
    let cert = client_cert.and_then(|bytes| match judge_certificate(policy, bytes) {
        Ok(info) => Some(info),
        Err(e) => {
            errors.push(format!("client certificate: {e}"));
            None
        }
    });
    if client_cert.is_some() && !offers_tls {
        errors.push(
            "the relay offers no TLS (no TlsCertificate), so a client cannot present a certificate"
                .into(),
        );
    }
    let tls = offers_tls || cert.is_some();
    let names: &[String] = cert.as_ref().map_or(&[], |c| c.trusted_names());
    let facts = SessionFacts {
        ip,
        tls,
        trusted_cert_names: names,
        cert_problem: cert.as_ref().and_then(|c| c.problem.as_deref()),
        trusted_cert_issuer: cert.as_ref().and_then(|c| c.trusted_issuer()),
    };
    let inbound = InboundPolicy::new(policy);
    let describe = |a: Option<Attribution>, sender_domain: Option<&str>| {
        a.map(|a| attribution_facts(policy, &inbound, a, &facts, sender_domain))
    };
    let connect_attribution = describe(inbound.attribute(&facts, None), None);
    let decided = decide(
        policy,
        &inbound,
        &facts,
        sender,
        recipients,
        &mut rand::rng(),
    );
    let sender_domain = decided.sender_domain.clone();
    let attribution = decided.attribution;
    let mail_from = match (&decided.sender, &decided.mail) {
        (Err(reply), _) => Verdict::syntax(reply.clone()),
        (Ok(_), Ok(())) => Verdict::accepted(Reply::sender_ok()),
        (Ok(_), Err(r)) => Verdict::refused(r),
    };
    // The same question in plaintext: `check_mail` again, without TLS and certificate.
    let mail_from_without_tls = (tls && mail_from.accepted)
        .then(|| {
            let plain = SessionFacts {
                tls: false,
                trusted_cert_names: &[],
                cert_problem: None,
                trusted_cert_issuer: None,
                ..facts
            };
            match inbound
                .check_mail(policy, &plain, sender_domain.as_deref())
                .1
            {
                Ok(()) => None,
                Err(r) => Some(Verdict::refused(&r)),
            }
        })
        .flatten();
    let mut explained: Vec<RecipientExplanation> = decided
        .recipients
        .iter()
        .map(|r| recipient(policy, attribution, r))
        .collect();
    if !mail_from.accepted {
        for r in &mut explained {
            r.why = format!("{} (not reached: MAIL FROM is refused)", r.why);
        }
    }

    let attribution = describe(attribution, sender_domain.as_deref());
    Explanation {
        client_ip: ip,
        tls,
        client_certificate: cert.as_ref().map(|c| CertificateFacts {
            subject: c.subject.clone(),
            issuer: c.issuer.clone(),
            names: c.names.clone(),
            trusted: c.trusted,
            problem: c.problem.clone(),
        }),
        sender: sender.to_string(),
        connect_attribution,
        attribution,
        mail_from,
        mail_from_without_tls,
        recipients: explained,
        errors,
    }
}

/// The certificate judged as the session judges a presented one.
fn judge_certificate(policy: &Policy, bytes: &[u8]) -> Result<ClientCertInfo, String> {
    let chain: Vec<CertificateDer<'static>> = if bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("not a PEM certificate: {e}"))?
    } else {
        vec![CertificateDer::from(bytes.to_vec())]
    };
    let validator = ClientCertValidator::new(
        policy.relay.trusted_ca_file.as_deref(),
        &policy.relay.revocation_lists,
    )?;
    let info = validator
        .examine(&chain)
        .ok_or("no certificate in the file")?;
    if info.subject.is_empty() && !info.trusted {
        return Err(info
            .problem
            .unwrap_or_else(|| "unparsable certificate".into()));
    }
    Ok(info)
}

fn attribution_facts(
    policy: &Policy,
    inbound: &InboundPolicy,
    a: Attribution,
    facts: &SessionFacts<'_>,
    sender_domain: Option<&str>,
) -> AttributionFacts {
    let c = &policy.inbound[a.index];
    let why = match a.by {
        AttributedBy::Certificate => {
            let name = facts
                .trusted_cert_names
                .iter()
                .find(|n| {
                    inbound
                        .table()
                        .cert_allowed(a.index, std::slice::from_ref(n))
                })
                .map_or("?", String::as_str);
            format!(
                "client certificate name {name} matches TlsSenderCertificateName {}",
                c.tls_sender_certificate_name
                    .as_ref()
                    .map_or("-".to_string(), |p| p.to_string())
            )
        }
        AttributedBy::IpAddress => {
            let ip = match facts.ip {
                IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(facts.ip, IpAddr::V4),
                v4 => v4,
            };
            let net = c
                .sender_ip_addresses
                .iter()
                .filter(|n| n.contains(&ip) || n.contains(&facts.ip))
                .max_by_key(|n| n.prefix_len());
            match net {
                Some(n) => format!("client IP {} is in SenderIPAddresses {n}", facts.ip),
                None => format!("client IP {} is in SenderIPAddresses", facts.ip),
            }
        }
        AttributedBy::SenderDomain => {
            let domain = sender_domain.unwrap_or("");
            let pattern = c
                .sender_domains
                .iter()
                .filter(|p| p.matches(domain))
                .max_by_key(|p| p.specificity());
            format!(
                "sender domain {domain} matches SenderDomains {}",
                pattern.map_or("-".to_string(), |p| p.to_string())
            )
        }
    };
    AttributionFacts {
        connector: c.name.clone(),
        connector_type: format!("{:?}", c.connector_type),
        by: format!("{:?}", a.by),
        why,
    }
}

/// One recipient as decided, with why, and its route for the reader.
fn recipient(
    policy: &Policy,
    attribution: Option<Attribution>,
    decided: &RecipientDecision,
) -> RecipientExplanation {
    let (to, domain, verdict, route) = match decided {
        RecipientDecision::Syntax { text, reply } => {
            return RecipientExplanation {
                recipient: text.clone(),
                verdict: Verdict::syntax(reply.clone()),
                why: "the address does not parse".into(),
                route: None,
            };
        }
        RecipientDecision::Parsed {
            address,
            domain,
            verdict,
            route,
        } => (address, domain.as_str(), verdict, route),
    };
    let mut why = match verdict {
        Ok(()) if is_relay_postmaster(policy, &to.local, domain) => {
            "the relay's own postmaster (RFC 5321 §4.5.1)".to_string()
        }
        Ok(()) if is_accepted(policy, domain) => {
            let pattern = policy
                .relay
                .accepted_domains
                .iter()
                .filter(|p| p.matches(domain))
                .max_by_key(|p| p.specificity());
            format!(
                "{domain} is an accepted domain (AcceptedDomains {})",
                pattern.map_or("-".to_string(), |p| p.to_string())
            )
        }
        Ok(()) => format!(
            "relaying allowed: the session is attributed to OnPremises connector \"{}\"",
            attribution.map_or("?", |a| policy.inbound[a.index].name.as_str())
        ),
        Err(r) => refusal_why(r, domain),
    };
    if is_srs0(&to.local) && (is_accepted(policy, domain) || domain == policy.relay.fqdn) {
        why.push_str(
            "; an SRS0 address: the relay first checks its signature and age with the SRS secret (not evaluated here) and relays it to the original address",
        );
    }
    RecipientExplanation {
        recipient: to.to_string(),
        verdict: match verdict {
            Ok(()) => Verdict::accepted(Reply::recipient_ok()),
            Err(r) => Verdict::refused(r),
        },
        why,
        route: route.as_deref().map(|d| route_facts(policy, domain, d)),
    }
}

/// A route as the explainer shows it.
fn route_facts(policy: &Policy, domain: &str, decision: &RouteDecision) -> RouteFacts {
    let route = &decision.route;
    RouteFacts {
        connector: route.connector.clone(),
        kind: route.kind.map(|k| match k {
            ConnectorKind::Outbound => "Outbound".to_string(),
            ConnectorKind::Send => "Send".to_string(),
        }),
        next_hops: route.next_hops_text(domain),
        tls_level: route.tls.level_name().to_string(),
        tls: format!(
            "{}; {}",
            route.tls.describe(domain),
            crate::delivery::dane::describe_mode(route, policy.relay.dnssec_validation)
        ),
        would_route: decision.would_route.clone(),
        mta_sts: mta_sts_text(route, domain),
    }
}

/// What a refusal means, in the words of the rule.
fn refusal_why(r: &Refusal, domain: &str) -> String {
    match r {
        Refusal::RelayDenied { .. } => format!(
            "{domain} is not an accepted domain, and the session is not attributed to an OnPremises connector that applies to it"
        ),
        Refusal::IpNotAllowed { .. } => "RestrictDomainsToIPAddresses: the sender's domain is in the connector's SenderDomains, and the client IP is not in its SenderIPAddresses".into(),
        Refusal::CertificateRequired { .. } => "RestrictDomainsToCertificate (or TlsSenderCertificateName with RequireTls): no trusted client certificate with a matching name".into(),
        Refusal::IssuerRequired { .. } => "TlsSenderCertificateIssuer: no trusted client certificate issued by one of the connector's issuers".into(),
        Refusal::RoutingInLocalPart { .. } => "routing characters in the local part at an accepted domain are only taken from OnPremises connectors".into(),
        Refusal::TlsRequired { .. } => "RequireTls: the session is not under TLS".into(),
    }
}

impl Explanation {
    /// The explanation as the CLI prints it.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let tls = if self.tls {
            "under TLS"
        } else {
            "in plaintext"
        };
        out.push_str(&format!("Session from {} {tls}\n", self.client_ip));
        match &self.client_certificate {
            Some(c) => out.push_str(&format!(
                "  client certificate \"{}\" (issuer \"{}\"), names [{}]: {}\n",
                c.subject,
                c.issuer,
                c.names.join(", "),
                match &c.problem {
                    None => "trusted".to_string(),
                    Some(p) => format!("does not count ({p})"),
                }
            )),
            None => out.push_str("  no client certificate\n"),
        }
        out.push_str(&format!(
            "  at connect: {}\n",
            attribution_text(self.connect_attribution.as_ref())
        ));
        out.push_str(&format!(
            "MAIL FROM:<{}>\n",
            self.sender.trim_matches(['<', '>'])
        ));
        out.push_str(&format!(
            "  transaction: {}\n",
            attribution_text(self.attribution.as_ref())
        ));
        out.push_str(&format!("  {}\n", verdict_text(&self.mail_from)));
        if let Some(v) = &self.mail_from_without_tls {
            out.push_str(&format!("  without STARTTLS: {}\n", verdict_text(v)));
        }
        for r in &self.recipients {
            out.push_str(&format!("RCPT TO:<{}>\n", r.recipient));
            out.push_str(&format!("  {}\n", verdict_text(&r.verdict)));
            out.push_str(&format!("  {}\n", r.why));
            if let Some(route) = &r.route {
                let who = match (&route.connector, &route.kind) {
                    (Some(c), Some(k)) => format!("{k} connector \"{c}\""),
                    _ => "default MX route (no connector matches)".to_string(),
                };
                out.push_str(&format!("  route: {who}\n"));
                out.push_str(&format!("  next hops: {}\n", route.next_hops));
                out.push_str(&format!("  TLS: {}\n", route.tls));
                out.push_str(&format!("  MTA-STS: {}\n", route.mta_sts));
                if let Some(w) = &route.would_route {
                    out.push_str(&format!("  would route (TestMode): {w}\n"));
                }
            }
        }
        for e in &self.errors {
            out.push_str(&format!("error: {e}\n"));
        }
        out
    }
}

/// What MTA-STS means for a route (the steps delivery takes, nothing resolved).
fn mta_sts_text(route: &crate::policy::route::Route, domain: &str) -> String {
    use crate::policy::MtaStsMode;
    use crate::policy::route::RouteTarget;
    match (&route.target, route.mta_sts) {
        (RouteTarget::SmartHosts(_), _) => {
            "not applied: smart hosts are not MX hosts (MtaStsMode has no effect here; TlsSettings = \"DomainValidation\" authenticates a smart host)".to_string()
        }
        (RouteTarget::Mx, MtaStsMode::None) => "off (MtaStsMode = None, or IgnoreSTARTTLS)".to_string(),
        (RouteTarget::Mx, MtaStsMode::Opportunistic) => format!(
            "Opportunistic: at delivery, TXT _mta-sts.{domain} (v=STSv1; id=...) and the policy https://mta-sts.{domain}/.well-known/mta-sts.txt (cached) decide; enforce: only MX hosts listed in the policy, STARTTLS with a certificate valid (WebPKI) for the MX host, else 4.4.8 / 4.7.5 (deferred); testing: delivered, would-be failures recorded; none or no policy: the TLS setting above"
        ),
    }
}

fn attribution_text(a: Option<&AttributionFacts>) -> String {
    match a {
        Some(a) => format!(
            "{} connector \"{}\" by {}: {}",
            a.connector_type, a.connector, a.by, a.why
        ),
        None => "no inbound connector (anonymous)".to_string(),
    }
}

fn verdict_text(v: &Verdict) -> String {
    match (&v.rule, v.accepted) {
        (_, true) => v.reply.clone(),
        (Some(rule), false) => format!("{} [{rule}]", v.reply),
        (None, false) => v.reply.clone(),
    }
}
