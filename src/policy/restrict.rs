//! Inbound decisions: which connector a transaction belongs to, and which of its
//! restrictions refuse it (policy.md "Inbound", replies.md). Pure: the SMTP session turns
//! a `Refusal` into a reply and the trace records its `rule()`.

use std::net::IpAddr;

use super::dn::issuer_matches;
use super::inbound::{AttributedBy, Attribution, Facts, InboundTable};
use super::{ConnectorType, InboundConnector, Policy};

/// What the session knows when it asks.
#[derive(Debug, Clone, Copy)]
pub struct SessionFacts<'a> {
    pub ip: IpAddr,
    pub tls: bool,
    /// Names of the client certificate when it is trusted (empty otherwise).
    pub trusted_cert_names: &'a [String],
    /// Why a presented certificate does not count (untrusted, expired, ...), if one was
    /// presented; `None` when none was presented or it is trusted.
    pub cert_problem: Option<&'a str>,
    /// The issuer DN of the client certificate when it is trusted (x509-parser's text).
    pub trusted_cert_issuer: Option<&'a str>,
}

/// Why a command is refused, naming the connector (replies.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `RequireTls` and the session is in plaintext: 451 5.7.3 at MAIL FROM.
    TlsRequired { connector: String },
    /// `RestrictDomainsToIPAddresses`: 550 5.7.51 at RCPT TO.
    IpNotAllowed {
        connector: String,
        domain: String,
        ip: IpAddr,
    },
    /// `RestrictDomainsToCertificate`, or `TlsSenderCertificateName` with `RequireTls`:
    /// 550 5.7.51 at RCPT TO.
    CertificateRequired {
        connector: String,
        wanted: String,
        problem: String,
    },
    /// `TlsSenderCertificateIssuer` (extension): no trusted client certificate from one of
    /// the issuers: 550 5.7.51 at RCPT TO.
    IssuerRequired {
        connector: String,
        /// The configured issuers, quoted and joined with "or".
        wanted: String,
        problem: String,
    },
    /// Relay without an OnPremises attribution: 550 5.7.64.
    RelayDenied { connector: Option<String> },
    /// A local part at an accepted domain that carries a route (`%`, `!` or `@`: the
    /// percent hack, bang paths, quoted addresses) from a client not attributed to an
    /// OnPremises connector: 550 5.7.1 (Postfix `allow_untrusted_routing = no`).
    RoutingInLocalPart { local: String },
}

impl Refusal {
    /// (code, enhanced code, text).
    pub fn reply_parts(&self) -> (u16, &'static str, String) {
        match self {
            Refusal::TlsRequired { connector } => (
                451,
                "5.7.3",
                format!(
                    "STARTTLS is required to send mail; connector \"{connector}\" requires TLS"
                ),
            ),
            Refusal::IpNotAllowed {
                connector,
                domain,
                ip,
            } => (
                550,
                "5.7.51",
                format!(
                    "TenantInboundAttribution; connector \"{connector}\" restricts {domain} to its IP addresses, and {ip} is not one of them"
                ),
            ),
            Refusal::CertificateRequired {
                connector,
                wanted,
                problem,
            } => (
                550,
                "5.7.51",
                format!(
                    "TenantInboundAttribution; connector \"{connector}\" requires a TLS client certificate for {wanted}: {problem}"
                ),
            ),
            Refusal::IssuerRequired {
                connector,
                wanted,
                problem,
            } => (
                550,
                "5.7.51",
                format!(
                    "TenantInboundAttribution; connector \"{connector}\" requires a certificate issued by {wanted}: {problem}"
                ),
            ),
            Refusal::RelayDenied { connector: None } => (
                550,
                "5.7.64",
                "TenantAttribution; Relay Access Denied".to_string(),
            ),
            Refusal::RoutingInLocalPart { local } => (
                550,
                "5.7.1",
                format!(
                    "Recipient address rejected: routing characters (% ! @) not allowed in the local part {local}"
                ),
            ),
            Refusal::RelayDenied { connector: Some(c) } => (
                550,
                "5.7.64",
                format!(
                    "TenantAttribution; Relay Access Denied (connector \"{c}\" is not an OnPremises connector)"
                ),
            ),
        }
    }

    /// Every name [`Refusal::rule`] gives: the connector-policy rules (a change impact
    /// preview decides these again; other refusals, such as limits, it keeps as recorded).
    pub const RULES: [&'static str; 5] = [
        "RequireTls",
        "RestrictDomainsToIPAddresses",
        "RestrictDomainsToCertificate",
        "RelayWithoutOnPremisesAttribution",
        "UntrustedRoutingInLocalPart",
    ];

    /// The rule's name for the trace.
    pub fn rule(&self) -> &'static str {
        match self {
            Refusal::TlsRequired { .. } => "RequireTls",
            Refusal::IpNotAllowed { .. } => "RestrictDomainsToIPAddresses",
            Refusal::CertificateRequired { .. } => "RestrictDomainsToCertificate",
            Refusal::IssuerRequired { .. } => "TlsSenderCertificateIssuer",
            Refusal::RelayDenied { .. } => "RelayWithoutOnPremisesAttribution",
            Refusal::RoutingInLocalPart { .. } => "UntrustedRoutingInLocalPart",
        }
    }

    pub fn connector(&self) -> Option<&str> {
        match self {
            Refusal::TlsRequired { connector }
            | Refusal::IpNotAllowed { connector, .. }
            | Refusal::CertificateRequired { connector, .. }
            | Refusal::IssuerRequired { connector, .. } => Some(connector),
            Refusal::RelayDenied { connector } => connector.as_deref(),
            Refusal::RoutingInLocalPart { .. } => None,
        }
    }
}

/// The inbound side of the policy, compiled once (the attribution tables).
pub struct InboundPolicy {
    table: InboundTable,
}

impl InboundPolicy {
    pub fn new(policy: &Policy) -> Self {
        InboundPolicy {
            table: InboundTable::new(&policy.inbound),
        }
    }

    pub fn table(&self) -> &InboundTable {
        &self.table
    }

    /// Attribution from what is known so far (connect, after STARTTLS, MAIL FROM).
    pub fn attribute(
        &self,
        facts: &SessionFacts<'_>,
        sender_domain: Option<&str>,
    ) -> Option<Attribution> {
        self.table.attribute(&Facts {
            ip: facts.ip,
            cert_names: facts.trusted_cert_names,
            sender_domain,
        })
    }

    /// MAIL FROM: the attribution for the transaction, and `RequireTls`.
    pub fn check_mail(
        &self,
        policy: &Policy,
        facts: &SessionFacts<'_>,
        sender_domain: Option<&str>,
    ) -> (Option<Attribution>, Result<(), Refusal>) {
        let attribution = self.attribute(facts, sender_domain);
        let verdict = match attribution.map(|a| &policy.inbound[a.index]) {
            Some(c) if c.require_tls && !facts.tls => Err(Refusal::TlsRequired {
                connector: c.name.clone(),
            }),
            _ => Ok(()),
        };
        (attribution, verdict)
    }

    /// RCPT TO, every rule in the order the session applies them: `<postmaster>` of the
    /// relay itself is always accepted (RFC 5321 §4.5.1); then [`Self::check_local_part`];
    /// then [`Self::check_rcpt`]. (SRS reversal, which needs the secret, comes before this
    /// in the relay backend.) The policy explainer calls this too, so it answers exactly
    /// what a session would.
    pub fn check_recipient(
        &self,
        policy: &Policy,
        facts: &SessionFacts<'_>,
        attribution: Option<Attribution>,
        sender_domain: Option<&str>,
        rcpt_local: &str,
        rcpt_domain: &str,
    ) -> Result<(), Refusal> {
        if is_relay_postmaster(policy, rcpt_local, rcpt_domain) {
            return Ok(());
        }
        self.check_local_part(policy, attribution, rcpt_domain, rcpt_local)?;
        self.check_rcpt(policy, facts, attribution, sender_domain, rcpt_domain)
    }

    /// RCPT TO at an accepted domain: a local part with `%`, `!` or `@` (quoted or not) is a
    /// route to somewhere else (`to%D@S`, `D!to@S`, `"to@D"@S`). The relay never follows
    /// such routes, but a downstream server might (percent hack, bang paths), so only an
    /// OnPremises client may send them. Other recipients are left to `check_rcpt`.
    pub fn check_local_part(
        &self,
        policy: &Policy,
        attribution: Option<Attribution>,
        rcpt_domain: &str,
        local: &str,
    ) -> Result<(), Refusal> {
        if !is_accepted(policy, rcpt_domain) || !local.contains(['%', '!', '@']) {
            return Ok(());
        }
        let on_premises = attribution
            .filter(|a| applies_to(&policy.inbound[a.index], rcpt_domain))
            .is_some_and(|a| policy.inbound[a.index].connector_type == ConnectorType::OnPremises);
        if on_premises {
            return Ok(());
        }
        Err(Refusal::RoutingInLocalPart {
            local: local.to_string(),
        })
    }

    /// RCPT TO: the attributed connector's restrictions (when it applies to this
    /// recipient), the OnPremises connectors' hold on their own domains, then the anti-relay
    /// rule.
    pub fn check_rcpt(
        &self,
        policy: &Policy,
        facts: &SessionFacts<'_>,
        attribution: Option<Attribution>,
        sender_domain: Option<&str>,
        rcpt_domain: &str,
    ) -> Result<(), Refusal> {
        let applying = attribution.filter(|a| applies_to(&policy.inbound[a.index], rcpt_domain));
        if let Some(a) = applying {
            self.check_connector(policy, facts, a, sender_domain)?;
        }
        self.check_on_premises_domains(policy, facts, sender_domain, rcpt_domain)?;
        if is_accepted(policy, rcpt_domain) {
            return Ok(());
        }
        match applying.map(|a| &policy.inbound[a.index]) {
            Some(c) if c.connector_type == ConnectorType::OnPremises => Ok(()),
            other => Err(Refusal::RelayDenied {
                connector: other.map(|c| c.name.clone()),
            }),
        }
    }

    /// The restrictions of the connector the transaction is attributed to.
    fn check_connector(
        &self,
        policy: &Policy,
        facts: &SessionFacts<'_>,
        a: Attribution,
        sender_domain: Option<&str>,
    ) -> Result<(), Refusal> {
        let c = &policy.inbound[a.index];
        // A connector chosen by its SenderDomains holds them to its SenderIPAddresses.
        if c.restrict_domains_to_ip_addresses && a.by == AttributedBy::SenderDomain {
            self.ip_restriction(policy, a.index, facts, sender_domain.unwrap_or_default())?;
        }
        let cert_required = c.restrict_domains_to_certificate
            || (c.require_tls && c.tls_sender_certificate_name.is_some());
        if cert_required && !self.table.cert_allowed(a.index, facts.trusted_cert_names) {
            let wanted = c
                .tls_sender_certificate_name
                .as_ref()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "-".into());
            let problem = certificate_problem(facts, || match facts.trusted_cert_names {
                [] => "the certificate presented has no DNS name".to_string(),
                names => format!("the certificate names {} do not match", names.join(", ")),
            });
            return Err(Refusal::CertificateRequired {
                connector: c.name.clone(),
                wanted,
                problem,
            });
        }
        check_issuer(c, facts)
    }

    /// `RestrictDomainsToIPAddresses` of OnPremises connectors (Set-InboundConnector: it
    /// "rejects mail from the domains specified by the SenderDomains parameter if the mail
    /// originates from an IP address that isn't specified by the SenderIPAddresses
    /// parameter"). Their domains are the organization's own, so the rule holds whatever
    /// connector the session is attributed to (anonymous, Partner, another OnPremises one),
    /// for the recipients the connector applies to.
    fn check_on_premises_domains(
        &self,
        policy: &Policy,
        facts: &SessionFacts<'_>,
        sender_domain: Option<&str>,
        rcpt_domain: &str,
    ) -> Result<(), Refusal> {
        let Some(domain) = sender_domain else {
            return Ok(());
        };
        match self.table.restricting_on_premises(domain) {
            Some(index) if applies_to(&policy.inbound[index], rcpt_domain) => {
                self.ip_restriction(policy, index, facts, domain)
            }
            _ => Ok(()),
        }
    }

    /// Connector `index` accepts mail from `domain` only from its own SenderIPAddresses.
    fn ip_restriction(
        &self,
        policy: &Policy,
        index: usize,
        facts: &SessionFacts<'_>,
        domain: &str,
    ) -> Result<(), Refusal> {
        if self.table.ip_allowed(index, facts.ip) {
            return Ok(());
        }
        Err(Refusal::IpNotAllowed {
            connector: policy.inbound[index].name.clone(),
            domain: domain.to_string(),
            ip: facts.ip,
        })
    }
}

/// `TlsSenderCertificateIssuer`: a trusted client certificate issued by one of the
/// connector's issuers (by DN, or by the issuer's CN alone).
fn check_issuer(c: &InboundConnector, facts: &SessionFacts<'_>) -> Result<(), Refusal> {
    if c.tls_sender_certificate_issuer.is_empty() {
        return Ok(());
    }
    let issued_by_one = facts.trusted_cert_issuer.is_some_and(|issuer| {
        c.tls_sender_certificate_issuer
            .iter()
            .any(|wanted| issuer_matches(wanted, issuer))
    });
    if issued_by_one {
        return Ok(());
    }
    let wanted: Vec<String> = c
        .tls_sender_certificate_issuer
        .iter()
        .map(|w| format!("{w:?}"))
        .collect();
    Err(Refusal::IssuerRequired {
        connector: c.name.clone(),
        wanted: wanted.join(" or "),
        problem: certificate_problem(facts, || {
            format!(
                "the certificate presented was issued by {:?}",
                facts.trusted_cert_issuer.unwrap_or_default()
            )
        }),
    })
}

/// Why the session's client certificate does not satisfy a connector: no TLS, a certificate
/// that does not count, none at all, or else `mismatch` (a trusted one, the wrong one).
fn certificate_problem(facts: &SessionFacts<'_>, mismatch: impl FnOnce() -> String) -> String {
    if !facts.tls {
        "the session is not under TLS".to_string()
    } else if let Some(p) = facts.cert_problem {
        format!("the certificate presented does not count ({p})")
    } else if facts.trusted_cert_names.is_empty() && facts.trusted_cert_issuer.is_none() {
        "no client certificate was presented".to_string()
    } else {
        mismatch()
    }
}

/// `<postmaster@Fqdn>` of the relay itself (always accepted, RFC 5321 §4.5.1).
pub fn is_relay_postmaster(policy: &Policy, local: &str, domain: &str) -> bool {
    // `Fqdn` is stored as A-labels; the domain may be written in Unicode (SMTPUTF8).
    local.eq_ignore_ascii_case("postmaster")
        && crate::dns::idn::to_ascii(domain).is_ok_and(|d| {
            d.trim_end_matches('.')
                .eq_ignore_ascii_case(&policy.relay.fqdn)
        })
}

/// The inbound connector that counts for a whole message: the transaction's attribution
/// when the connector applies to at least one recipient (`AssociatedAcceptedDomains`).
/// It decides the header rewriting and whether the message came from outside the
/// organization (not from an OnPremises connector) for `RouteAllMessagesViaOnPremises`.
pub fn message_connector<D: AsRef<str>>(
    policy: &Policy,
    attribution: Option<Attribution>,
    recipient_domains: impl IntoIterator<Item = D>,
) -> Option<&InboundConnector> {
    attribution.map(|a| &policy.inbound[a.index]).filter(|c| {
        recipient_domains
            .into_iter()
            .any(|d| applies_to(c, d.as_ref()))
    })
}

/// `AssociatedAcceptedDomains`: when set, the connector applies only to those recipients.
pub fn applies_to(c: &InboundConnector, rcpt_domain: &str) -> bool {
    c.associated_accepted_domains.is_empty()
        || c.associated_accepted_domains
            .iter()
            .any(|p| p.matches(rcpt_domain))
}

/// Is `domain` one of the organization's accepted domains? Address literals never are:
/// mail to `user@[192.0.2.1]` is relaying.
pub fn is_accepted(policy: &Policy, domain: &str) -> bool {
    !domain.starts_with('[')
        && policy
            .relay
            .accepted_domains
            .iter()
            .any(|p| p.matches(domain))
}
