//! Outbound route selection: which connector (if any) carries mail for a recipient domain.
//!
//! Pure: no sockets, no DNS, no clock. The only source of nondeterminism is the load-balancing
//! pick among equally good connectors, and that goes through an RNG the caller passes
//! ([`select_route_with_rng`]); [`select_route`] uses the thread RNG.
//!
//! Semantics are those of `shared/spec/policy.md`, "Outbound: choosing a route":
//!
//! 1. connectors with `IsTransportRuleScoped = true` or `Enabled = false` are skipped;
//! 2. an `OnPremises` Outbound connector with `RouteAllMessagesViaOnPremises = true` takes
//!    every message that arrived from outside the organization (it outranks any domain match);
//! 3. the most specific match wins: exact domain > longest `*.suffix` > `*`; an
//!    `AllAcceptedDomains = true` connector matches every accepted domain as if that
//!    accepted-domain pattern were listed in its `RecipientDomains`;
//! 4. among equally specific matches the lowest cost wins (Send connector `AddressSpaces`
//!    cost; Outbound connectors cost 1); remaining ties are load-balanced (random pick);
//! 5. `TestMode = true` connectors are evaluated: when one of them is among the winners it
//!    is reported as `would_route`, but the actual route is chosen as if no TestMode
//!    connector existed;
//! 6. no connector: MX delivery on `[Relay] DeliveryPort` with opportunistic TLS.

use crate::policy::DaneMode;
use std::net::IpAddr;
use std::time::Duration;

use rand::Rng;

use super::model::{
    AuthMechanism, ConnectorType, Credential, DomainPattern, ErrorPolicy, MtaStsMode,
    OutboundConnector, Policy, ProtocolLoggingLevel, SendConnector, SmartHost, TlsLevel,
};

/// Where the next hops of a route come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RouteTarget {
    /// MX lookup of the recipient domain (`UseMXRecord` / `DNSRoutingEnabled`).
    Mx,
    /// The connector's smart hosts, tried in order.
    SmartHosts(Vec<SmartHost>),
}

/// Which kind of connector a route comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnectorKind {
    /// `[[OutboundConnector]]` (Exchange Online style).
    Outbound,
    /// `[[SendConnector]]` (Exchange Server style).
    Send,
}

/// The STARTTLS policy of a route (see policy.md "Outbound: TLS levels").
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsPolicy {
    /// Use STARTTLS when offered, no certificate checks, fall back to plaintext when the
    /// handshake fails.
    Opportunistic,
    /// `IgnoreSTARTTLS = true`: never issue STARTTLS.
    Never,
    /// STARTTLS is mandatory, with the given validation level. The pattern is `TlsDomain`
    /// (`None`: for `DomainValidation`, the recipient domain / host name is used).
    Required(TlsLevel, Option<DomainPattern>),
}

/// Everything the delivery engine needs to know about how a recipient's mail leaves.
///
/// `Route` is `Eq + Hash`, so recipients can be grouped by it directly (for MX routes the
/// caller must also group by recipient domain, since next hops depend on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Route {
    /// Connector name; `None` = the default MX route.
    pub connector: Option<String>,
    /// Connector kind; `None` = the default MX route.
    pub kind: Option<ConnectorKind>,
    pub target: RouteTarget,
    /// Port for MX hosts and for smart hosts written without an explicit port.
    pub port: u16,
    pub tls: TlsPolicy,
    /// EHLO name (Send connector `Fqdn`); `None` = `[Relay] Fqdn`.
    pub helo: Option<String>,
    /// Send connector `ForceHELO`: greet with HELO instead of EHLO.
    pub force_helo: bool,
    /// Send connector `SourceIPAddress`: local address to bind outgoing connections to.
    pub source_ip: Option<IpAddr>,
    /// Send connector `ConnectionInactivityTimeOut`; `None` = the relay default.
    pub inactivity_timeout: Option<Duration>,
    /// Send connector `MaxMessageSize` (bytes); `None` = unlimited.
    pub max_message_size: Option<u64>,
    /// The connector's `CloudServicesMailEnabled`; `None` = the default MX route (treated
    /// as `false`: cross-premises headers are removed).
    pub cloud_services_mail_enabled: Option<bool>,
    /// `SenderRewritingEnabled` on an OnPremises Outbound connector: SRS for senders whose
    /// domain is not accepted.
    pub sender_rewriting: bool,
    /// The other Send connector session settings (defaults for the other routes).
    pub send: SendSettings,
    /// MTA-STS (RFC 8461) for this route's MX hosts: the Outbound connector's
    /// `MtaStsMode`, `Opportunistic` for the default MX route and DNS-routed Send
    /// connectors, `None` for smart hosts (no MX to authenticate) and `IgnoreSTARTTLS`.
    pub mta_sts: MtaStsMode,
    /// `SmtpDaneMode` of an Outbound connector; `Opportunistic` for the default MX route
    /// (Exchange Online's default), `None` for Send connectors (Exchange Server has no
    /// outbound DANE). Only MX routes use it (README "DANE").
    pub dane: DaneMode,
}

/// Send connector parameters that shape the SMTP session (README "Send connector
/// parameters"). Outbound connectors and the default route use [`SendSettings::default`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SendSettings {
    /// `SmartHostAuthMechanism`.
    pub auth: AuthMechanism,
    /// `AuthenticationCredential` (used by `BasicAuth` / `BasicAuthRequireTLS`).
    pub credential: Option<Credential>,
    /// `TlsCertificateName` (`<I>issuer<S>subject`): the client certificate to present.
    pub tls_certificate_name: Option<String>,
    /// `DomainSecureEnabled`: present a client certificate (mutual TLS).
    pub domain_secure: bool,
    /// `SmtpMaxMessagesPerConnection` (Exchange's default 20 elsewhere).
    pub max_messages_per_connection: u32,
    /// `ErrorPolicies` without `Default` (empty: no downgrade or upgrade).
    pub error_policies: Vec<ErrorPolicy>,
    /// `ProtocolLoggingLevel = "Verbose"`.
    pub protocol_log: bool,
    /// `UseExternalDNSServersEnabled`.
    pub external_dns: bool,
}

impl Default for SendSettings {
    fn default() -> Self {
        SendSettings {
            auth: AuthMechanism::None,
            credential: None,
            tls_certificate_name: None,
            domain_secure: false,
            max_messages_per_connection: 20,
            error_policies: Vec::new(),
            protocol_log: false,
            external_dns: false,
        }
    }
}

impl Route {
    /// The route used when no connector matches: MX with opportunistic TLS.
    pub fn default_mx(delivery_port: u16) -> Route {
        Route {
            connector: None,
            kind: None,
            target: RouteTarget::Mx,
            port: delivery_port,
            tls: TlsPolicy::Opportunistic,
            helo: None,
            force_helo: false,
            source_ip: None,
            inactivity_timeout: None,
            max_message_size: None,
            send: SendSettings::default(),
            cloud_services_mail_enabled: None,
            sender_rewriting: false,
            mta_sts: MtaStsMode::Opportunistic,
            dane: DaneMode::Opportunistic,
        }
    }

    fn from_outbound(c: &OutboundConnector, delivery_port: u16) -> Route {
        let target = if c.use_mx_record || c.smart_hosts.is_empty() {
            RouteTarget::Mx
        } else {
            RouteTarget::SmartHosts(c.smart_hosts.clone())
        };
        // policy.md: an Outbound connector with a `TlsSettings` value always requires TLS.
        let tls = match c.tls_settings {
            Some(level) => TlsPolicy::Required(level, c.tls_domain.clone()),
            None => TlsPolicy::Opportunistic,
        };
        Route {
            connector: Some(c.name.clone()),
            kind: Some(ConnectorKind::Outbound),
            target: target.clone(),
            port: delivery_port,
            tls,
            helo: None,
            force_helo: false,
            source_ip: None,
            inactivity_timeout: None,
            max_message_size: None,
            send: SendSettings::default(),
            cloud_services_mail_enabled: Some(c.cloud_services_mail_enabled),
            // policy.md / New-OutboundConnector: effective only for OnPremises connectors.
            sender_rewriting: c.sender_rewriting_enabled
                && c.connector_type == ConnectorType::OnPremises,
            mta_sts: match target {
                RouteTarget::Mx => c.mta_sts_mode,
                RouteTarget::SmartHosts(_) => MtaStsMode::None,
            },
            dane: c.smtp_dane_mode,
        }
    }

    fn from_send(c: &SendConnector) -> Route {
        let target = if c.dns_routing_enabled || c.smart_hosts.is_empty() {
            RouteTarget::Mx
        } else {
            RouteTarget::SmartHosts(c.smart_hosts.clone())
        };
        let mx = target == RouteTarget::Mx;
        let tls = if c.ignore_starttls {
            TlsPolicy::Never
        } else if c.domain_secure_enabled {
            // Mutual TLS: DomainValidation against the recipient domain (or TlsDomain when
            // the connector sets DomainValidation with one).
            let wanted = c
                .tls_domain
                .clone()
                .filter(|_| c.tls_auth_level == Some(TlsLevel::DomainValidation));
            TlsPolicy::Required(TlsLevel::DomainValidation, wanted)
        } else if c.require_tls {
            TlsPolicy::Required(
                c.tls_auth_level.unwrap_or(TlsLevel::EncryptionOnly),
                c.tls_domain.clone(),
            )
        } else if c.smart_host_auth_mechanism == AuthMechanism::ExternalAuthoritative {
            // The smart host is a trusted hop: TLS is required (any certificate).
            TlsPolicy::Required(TlsLevel::EncryptionOnly, None)
        } else {
            TlsPolicy::Opportunistic
        };
        let basic = matches!(
            c.smart_host_auth_mechanism,
            AuthMechanism::BasicAuth | AuthMechanism::BasicAuthRequireTls
        );
        let send = SendSettings {
            auth: c.smart_host_auth_mechanism,
            credential: c.authentication_credential.clone().filter(|_| basic),
            tls_certificate_name: c.tls_certificate_name.clone(),
            domain_secure: c.domain_secure_enabled,
            max_messages_per_connection: c.smtp_max_messages_per_connection.max(1),
            error_policies: c
                .error_policies
                .iter()
                .copied()
                .filter(|p| *p != ErrorPolicy::Default)
                .collect(),
            protocol_log: c.protocol_logging_level == ProtocolLoggingLevel::Verbose,
            external_dns: c.use_external_dns_servers_enabled,
        };
        Route {
            connector: Some(c.name.clone()),
            kind: Some(ConnectorKind::Send),
            target,
            port: c.port,
            tls,
            helo: c.fqdn.clone(),
            force_helo: c.force_helo,
            source_ip: c.source_ip_address,
            inactivity_timeout: Some(c.connection_inactivity_timeout),
            max_message_size: c.max_message_size,
            send,
            cloud_services_mail_enabled: Some(c.cloud_services_mail_enabled),
            sender_rewriting: false,
            // Exchange Server has no MtaStsMode: a DNS-routed Send connector gets the
            // relay's default (Opportunistic), except that IgnoreSTARTTLS is an explicit
            // "never TLS" that MTA-STS cannot satisfy, so it turns MTA-STS off.
            mta_sts: if mx && !c.ignore_starttls {
                MtaStsMode::Opportunistic
            } else {
                MtaStsMode::None
            },
            dane: DaneMode::None,
        }
    }
}

/// Descriptions for the trace, connector validation and the policy explainer.
impl Route {
    /// The route of the Outbound or Send connector called `name` (compared without case,
    /// as the loader does), whether or not it is enabled or would be selected: connector
    /// validation sends through it regardless (an Outbound connector is looked up first;
    /// the loader keeps names unique across both kinds).
    pub fn for_connector(policy: &Policy, name: &str) -> Option<Route> {
        let port = policy.relay.delivery_port;
        if let Some(c) = policy
            .outbound
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
        {
            return Some(Route::from_outbound(c, port));
        }
        policy
            .send
            .iter()
            .find(|c| c.name.eq_ignore_ascii_case(name))
            .map(Route::from_send)
    }

    /// Who decides: `Outbound connector "X"`, `Send connector "X"` or `default MX route`.
    pub fn source(&self) -> String {
        match (&self.connector, self.kind) {
            (Some(name), Some(ConnectorKind::Send)) => format!("Send connector \"{name}\""),
            (Some(name), _) => format!("Outbound connector \"{name}\""),
            (None, _) => "default MX route".to_string(),
        }
    }

    /// Where the next hops come from, without resolving anything: `MX lookup of
    /// fabrikam.test (port 25)` or `smart hosts 127.0.0.1:2626, mail.contoso.test:25`.
    pub fn next_hops_text(&self, domain: &str) -> String {
        match &self.target {
            RouteTarget::Mx => format!("MX lookup of {domain} (port {})", self.port),
            RouteTarget::SmartHosts(hosts) => {
                let list: Vec<String> = hosts
                    .iter()
                    .map(|h| smart_host_text(h, self.port))
                    .collect();
                format!("smart hosts {}", list.join(", "))
            }
        }
    }

    /// The whole route on one line, for the `Routed` trace event and the explainer:
    /// `Outbound connector "X": smart hosts 127.0.0.1:2626; TLS: required, CertificateValidation ...`.
    pub fn describe(&self, domain: &str) -> String {
        format!(
            "{}: {}; TLS: {}",
            self.source(),
            self.next_hops_text(domain),
            self.tls.describe(domain)
        )
    }
}

/// A smart host as `host:port` (`[v6]:port`), with the route's port when it has none.
fn smart_host_text(h: &SmartHost, default_port: u16) -> String {
    match h {
        SmartHost::Name { host, port } => format!("{host}:{}", port.unwrap_or(default_port)),
        SmartHost::Ip { addr, port } => {
            std::net::SocketAddr::new(*addr, port.unwrap_or(default_port)).to_string()
        }
        SmartHost::Cidr { net, port } => format!("{net} port {}", port.unwrap_or(default_port)),
    }
}

impl TlsPolicy {
    /// The level in words; `domain` is the recipient domain a blank `TlsDomain` stands for.
    pub fn describe(&self, domain: &str) -> String {
        match self {
            TlsPolicy::Opportunistic => {
                "opportunistic (STARTTLS when offered, certificate not checked, plaintext fallback)"
                    .to_string()
            }
            TlsPolicy::Never => "none (IgnoreSTARTTLS)".to_string(),
            TlsPolicy::Required(TlsLevel::EncryptionOnly, _) => {
                "required, EncryptionOnly (certificate not checked)".to_string()
            }
            TlsPolicy::Required(TlsLevel::CertificateValidation, _) => {
                "required, CertificateValidation (chain, dates, revocation)".to_string()
            }
            TlsPolicy::Required(TlsLevel::DomainValidation, Some(p)) => format!(
                "required, DomainValidation (chain, dates, revocation; a certificate name must match TlsDomain {p})"
            ),
            TlsPolicy::Required(TlsLevel::DomainValidation, None) => format!(
                "required, DomainValidation (chain, dates, revocation; a certificate name must match the recipient domain *.{domain})"
            ),
        }
    }

    /// The level's short name: `opportunistic`, `none`, or the `TlsLevel` name.
    pub fn level_name(&self) -> &'static str {
        match self {
            TlsPolicy::Opportunistic => "opportunistic",
            TlsPolicy::Never => "none",
            TlsPolicy::Required(TlsLevel::EncryptionOnly, _) => "EncryptionOnly",
            TlsPolicy::Required(TlsLevel::CertificateValidation, _) => "CertificateValidation",
            TlsPolicy::Required(TlsLevel::DomainValidation, _) => "DomainValidation",
        }
    }
}

/// The result of route selection for one recipient domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDecision {
    /// The route the message actually takes.
    pub route: Route,
    /// The TestMode connector that would have taken the message, if any (trace only).
    pub would_route: Option<String>,
}

/// Ranking of a candidate: higher `specificity` wins, then lower `cost`.
/// Specificity is `(class, length)`: class 3 = RouteAllMessagesViaOnPremises, then
/// [`DomainPattern::specificity`] (2 exact, 1 `*.suffix`, 0 `*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rank {
    specificity: (u8, usize),
    cost: u8,
}

impl Rank {
    /// `true` when `self` is strictly better than `other`.
    fn beats(&self, other: &Rank) -> bool {
        self.specificity > other.specificity
            || (self.specificity == other.specificity && self.cost < other.cost)
    }
}

/// A connector that matched, before the final pick.
struct Candidate<'p> {
    rank: Rank,
    test_mode: bool,
    connector: CandidateConnector<'p>,
}

enum CandidateConnector<'p> {
    Outbound(&'p OutboundConnector),
    Send(&'p SendConnector),
}

impl Candidate<'_> {
    fn name(&self) -> &str {
        match self.connector {
            CandidateConnector::Outbound(c) => &c.name,
            CandidateConnector::Send(c) => &c.name,
        }
    }

    fn route(&self, delivery_port: u16) -> Route {
        match self.connector {
            CandidateConnector::Outbound(c) => Route::from_outbound(c, delivery_port),
            CandidateConnector::Send(c) => Route::from_send(c),
        }
    }
}

/// Best rank among `patterns` that match `domain` (Outbound connectors: cost 1).
fn best_pattern_rank<'a>(
    patterns: impl Iterator<Item = &'a DomainPattern>,
    domain: &str,
) -> Option<Rank> {
    patterns
        .filter(|p| p.matches(domain))
        .map(|p| Rank {
            specificity: p.specificity(),
            cost: 1,
        })
        .max_by_key(|r| r.specificity)
}

fn outbound_rank(
    c: &OutboundConnector,
    policy: &Policy,
    domain: &str,
    from_outside_org: bool,
) -> Option<Rank> {
    if c.route_all_messages_via_on_premises
        && c.connector_type == ConnectorType::OnPremises
        && from_outside_org
    {
        return Some(Rank {
            specificity: (3, 0),
            cost: 1,
        });
    }
    let accepted = c
        .all_accepted_domains
        .then_some(policy.relay.accepted_domains.iter())
        .into_iter()
        .flatten();
    best_pattern_rank(c.recipient_domains.iter().chain(accepted), domain)
}

fn send_rank(c: &SendConnector, domain: &str) -> Option<Rank> {
    c.address_spaces
        .iter()
        .filter(|a| a.domain.matches(domain))
        .map(|a| Rank {
            specificity: a.domain.specificity(),
            cost: a.cost,
        })
        .reduce(|best, r| if r.beats(&best) { r } else { best })
}

/// Every enabled, not transport-rule-scoped connector that matches `domain`, with its rank.
fn candidates<'p>(policy: &'p Policy, domain: &str, from_outside_org: bool) -> Vec<Candidate<'p>> {
    let outbound = policy
        .outbound
        .iter()
        .filter(|c| c.enabled && !c.is_transport_rule_scoped)
        .filter_map(|c| {
            outbound_rank(c, policy, domain, from_outside_org).map(|rank| Candidate {
                rank,
                test_mode: c.test_mode,
                connector: CandidateConnector::Outbound(c),
            })
        });
    // Send connectors have no TestMode parameter.
    let send = policy.send.iter().filter(|c| c.enabled).filter_map(|c| {
        send_rank(c, domain).map(|rank| Candidate {
            rank,
            test_mode: false,
            connector: CandidateConnector::Send(c),
        })
    });
    outbound.chain(send).collect()
}

/// The candidates sharing the best rank (in configuration order: Outbound, then Send).
fn winners<'a, 'p>(cands: impl Iterator<Item = &'a Candidate<'p>>) -> Vec<&'a Candidate<'p>>
where
    'p: 'a,
{
    let mut best: Vec<&Candidate<'p>> = Vec::new();
    for c in cands {
        match best.first() {
            Some(b) if b.rank.beats(&c.rank) => {}
            Some(b) if c.rank.beats(&b.rank) => best = vec![c],
            _ => best.push(c),
        }
    }
    best
}

/// Chooses the route for `recipient_domain` (thread RNG for load balancing).
pub fn select_route(
    policy: &Policy,
    recipient_domain: &str,
    from_outside_org: bool,
) -> RouteDecision {
    select_route_with_rng(policy, recipient_domain, from_outside_org, &mut rand::rng())
}

/// Chooses the route for `recipient_domain`; ties among equally good connectors are broken
/// with `rng` (pass a seeded RNG for reproducible results).
pub fn select_route_with_rng<R: Rng + ?Sized>(
    policy: &Policy,
    recipient_domain: &str,
    from_outside_org: bool,
    rng: &mut R,
) -> RouteDecision {
    let domain = recipient_domain.trim_end_matches('.').to_ascii_lowercase();
    let cands = candidates(policy, &domain, from_outside_org);

    // Step 5: evaluate with TestMode connectors included; if one of them is among the
    // winners it "would route" (the first one in configuration order is reported).
    let would_route = winners(cands.iter())
        .into_iter()
        .find(|c| c.test_mode)
        .map(|c| c.name().to_string());

    // The actual route ignores TestMode connectors entirely.
    let live = winners(cands.iter().filter(|c| !c.test_mode));
    let route = match live.len() {
        0 => Route::default_mx(policy.relay.delivery_port),
        1 => live[0].route(policy.relay.delivery_port),
        n => live[rng.random_range(0..n)].route(policy.relay.delivery_port),
    };
    RouteDecision { route, would_route }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! Builders for policy values in unit tests.
    use std::path::PathBuf;
    use std::time::Duration;

    use crate::policy::model::*;

    pub fn relay() -> RelaySettings {
        RelaySettings {
            fqdn: "relay.contoso.test".into(),
            listen: vec![],
            implicit_tls_listen: vec![],
            tls_certificate: None,
            tls_private_key: None,
            certificates: vec![],
            trusted_ca_file: None,
            revocation_lists: vec![],
            spool_dir: PathBuf::from("var/spool"),
            data_dir: PathBuf::from("var"),
            accepted_domains: vec![DomainPattern::Exact("contoso.test".into())],
            max_message_size: 25 << 20,
            max_recipients_per_message: 500,
            dns_servers: vec![],
            external_dns_servers: vec![],
            delivery_port: 2525,
            mta_sts_policy_port: 443,
            message_expiration_timeout: Duration::from_secs(172800),
            transient_failure_retry_interval: Duration::from_secs(300),
            max_retry_interval: Duration::from_secs(3600),
            delay_notification_timeout: Duration::from_secs(14400),
            admin_listen: "127.0.0.1:8025".parse().unwrap(),
            admin_token_file: PathBuf::from("var/admin.token"),
            protocol_log_dir: PathBuf::from("var/log/protocol"),
            send_protocol_log_max_age: Duration::from_secs(30 * 86_400),
            trace_retention_days: 30,
            trace_store: Default::default(),
            srs_secret_file: PathBuf::from("var/srs.key"),
            bare_newline_policy: BareNewlinePolicy::Reject,
            dnssec_validation: crate::dns::DnssecValidation::Off,
            dnssec_trust_anchor_file: None,
            max_inbound_connection: 5000,
            max_inbound_connection_per_source: 20,
            max_inbound_connection_rate_per_source: 600,
            inbound_connections_reserved_for_on_premises: 500,
            source_ipv6_prefix_length: 64,
            proxy_protocol_from: Vec::new(),
            max_outbound_connections: 1000,
            max_per_domain_outbound_connections: 20,
            transient_failure_retry_count: 6,
            outbound_connection_failure_retry_interval: Duration::from_secs(600),
            connection_timeout: Duration::from_secs(600),
            connection_inactivity_timeout: Duration::from_secs(300),
            max_protocol_errors: 5,
            max_header_size: 256 << 10,
            pre_greeting_wait: Duration::from_millis(100),
            min_data_rate: MIN_DATA_RATE,
            min_data_rate_grace: MIN_DATA_RATE_GRACE,
            back_pressure: Default::default(),
            tlsrpt: Default::default(),
        }
    }

    pub fn policy() -> Policy {
        Policy {
            relay: relay(),
            inbound: vec![],
            outbound: vec![],
            send: vec![],
        }
    }

    pub fn pat(s: &str) -> DomainPattern {
        if s == "*" {
            DomainPattern::Any
        } else if let Some(rest) = s.strip_prefix("*.") {
            DomainPattern::Subdomains(rest.into())
        } else {
            DomainPattern::Exact(s.into())
        }
    }

    pub fn outbound(name: &str, domains: &[&str]) -> OutboundConnector {
        OutboundConnector {
            name: name.into(),
            enabled: true,
            connector_type: ConnectorType::Partner,
            recipient_domains: domains.iter().map(|d| pat(d)).collect(),
            all_accepted_domains: false,
            use_mx_record: true,
            smart_hosts: vec![],
            tls_settings: None,
            tls_domain: None,
            route_all_messages_via_on_premises: false,
            cloud_services_mail_enabled: false,
            sender_rewriting_enabled: false,
            mta_sts_mode: MtaStsMode::Opportunistic,
            smtp_dane_mode: DaneMode::Opportunistic,
            test_mode: false,
            is_transport_rule_scoped: false,
            validation_recipients: vec![],
            is_validated: false,
            last_validation_timestamp: None,
            comment: None,
            connector_source: None,
        }
    }

    /// `spaces`: (pattern, cost).
    pub fn send(name: &str, spaces: &[(&str, u8)]) -> SendConnector {
        SendConnector {
            name: name.into(),
            enabled: true,
            address_spaces: spaces
                .iter()
                .map(|(d, cost)| AddressSpace {
                    domain: pat(d),
                    cost: *cost,
                })
                .collect(),
            dns_routing_enabled: true,
            smart_hosts: vec![],
            port: 25,
            require_tls: false,
            tls_auth_level: None,
            tls_domain: None,
            ignore_starttls: false,
            force_helo: false,
            fqdn: None,
            smart_host_auth_mechanism: AuthMechanism::None,
            authentication_credential: None,
            max_message_size: None,
            smtp_max_messages_per_connection: 20,
            connection_inactivity_timeout: Duration::from_secs(600),
            source_ip_address: None,
            error_policies: vec![],
            protocol_logging_level: ProtocolLoggingLevel::None,
            tls_certificate_name: None,
            domain_secure_enabled: false,
            cloud_services_mail_enabled: false,
            use_external_dns_servers_enabled: false,
            comment: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn route(p: &Policy, domain: &str) -> RouteDecision {
        select_route_with_rng(p, domain, false, &mut StdRng::seed_from_u64(1))
    }

    fn name(d: &RouteDecision) -> Option<&str> {
        d.route.connector.as_deref()
    }

    #[test]
    fn no_connector_is_default_mx_opportunistic_on_delivery_port() {
        let p = policy();
        let d = route(&p, "example.org");
        assert_eq!(d.route, Route::default_mx(2525));
        assert_eq!(d.route.tls, TlsPolicy::Opportunistic);
        assert_eq!(d.route.target, RouteTarget::Mx);
        assert_eq!(d.would_route, None);
    }

    #[test]
    fn disabled_and_transport_rule_scoped_are_skipped() {
        let mut p = policy();
        let mut a = outbound("disabled", &["fabrikam.test"]);
        a.enabled = false;
        let mut b = outbound("scoped", &["fabrikam.test"]);
        b.is_transport_rule_scoped = true;
        let mut s = send("send-disabled", &[("fabrikam.test", 1)]);
        s.enabled = false;
        p.outbound = vec![a, b];
        p.send = vec![s];
        assert_eq!(name(&route(&p, "fabrikam.test")), None);
    }

    #[test]
    fn most_specific_wins_exact_over_suffix_over_any() {
        let mut p = policy();
        p.outbound = vec![
            outbound("any", &["*"]),
            outbound("suffix", &["*.fabrikam.test"]),
            outbound("longer-suffix", &["*.eu.fabrikam.test"]),
            outbound("exact", &["mail.eu.fabrikam.test"]),
        ];
        assert_eq!(name(&route(&p, "mail.eu.fabrikam.test")), Some("exact"));
        assert_eq!(name(&route(&p, "MAIL.EU.FABRIKAM.TEST.")), Some("exact"));
        assert_eq!(
            name(&route(&p, "x.eu.fabrikam.test")),
            Some("longer-suffix")
        );
        assert_eq!(name(&route(&p, "eu.fabrikam.test")), Some("longer-suffix"));
        assert_eq!(name(&route(&p, "us.fabrikam.test")), Some("suffix"));
        assert_eq!(name(&route(&p, "fabrikam.test")), Some("suffix"));
        assert_eq!(name(&route(&p, "example.org")), Some("any"));
    }

    #[test]
    fn specificity_beats_cost() {
        let mut p = policy();
        p.send = vec![
            send("cheap-any", &[("*", 1)]),
            send("dear-exact", &[("fabrikam.test", 100)]),
        ];
        assert_eq!(name(&route(&p, "fabrikam.test")), Some("dear-exact"));
    }

    #[test]
    fn lowest_cost_wins_among_equally_specific() {
        let mut p = policy();
        p.send = vec![
            send("cost5", &[("*.fabrikam.test", 5)]),
            send("cost2", &[("*.fabrikam.test", 2)]),
        ];
        assert_eq!(name(&route(&p, "a.fabrikam.test")), Some("cost2"));
        // Outbound connectors cost 1 and beat a Send connector of cost 2.
        p.outbound = vec![outbound("outbound", &["*.fabrikam.test"])];
        assert_eq!(name(&route(&p, "a.fabrikam.test")), Some("outbound"));
    }

    #[test]
    fn send_connector_uses_its_best_address_space() {
        let mut p = policy();
        p.send = vec![
            send("multi", &[("*", 1), ("fabrikam.test", 3)]),
            send("exact-cheap", &[("fabrikam.test", 2)]),
        ];
        assert_eq!(name(&route(&p, "fabrikam.test")), Some("exact-cheap"));
        assert_eq!(name(&route(&p, "example.org")), Some("multi"));
    }

    #[test]
    fn ties_are_load_balanced() {
        let mut p = policy();
        p.outbound = vec![
            outbound("a", &["fabrikam.test"]),
            outbound("b", &["fabrikam.test"]),
        ];
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..64 {
            let d = select_route_with_rng(&p, "fabrikam.test", false, &mut rng);
            seen.insert(d.route.connector.unwrap());
        }
        assert_eq!(seen.len(), 2, "both tied connectors get traffic");
    }

    #[test]
    fn all_accepted_domains_matches_accepted_domains_as_listed() {
        let mut p = policy();
        p.relay.accepted_domains = vec![pat("contoso.test"), pat("*.corp.contoso.test")];
        let mut onprem = outbound("to-onprem", &[]);
        onprem.connector_type = ConnectorType::OnPremises;
        onprem.all_accepted_domains = true;
        p.outbound = vec![onprem, outbound("partner-any", &["*"])];
        assert_eq!(name(&route(&p, "contoso.test")), Some("to-onprem"));
        assert_eq!(name(&route(&p, "x.corp.contoso.test")), Some("to-onprem"));
        assert_eq!(name(&route(&p, "fabrikam.test")), Some("partner-any"));
        // An exact pattern on another connector beats the `*.corp.contoso.test` accepted
        // domain pattern: specificity is that of the accepted-domain pattern that matched.
        p.outbound.push(outbound("exact", &["x.corp.contoso.test"]));
        assert_eq!(name(&route(&p, "x.corp.contoso.test")), Some("exact"));
    }

    #[test]
    fn route_all_via_on_premises_takes_mail_from_outside_only() {
        let mut p = policy();
        let mut onprem = outbound("centralized", &[]);
        onprem.connector_type = ConnectorType::OnPremises;
        onprem.route_all_messages_via_on_premises = true;
        onprem.use_mx_record = false;
        onprem.smart_hosts = vec![SmartHost::Name {
            host: "onprem.contoso.test".into(),
            port: None,
        }];
        p.outbound = vec![outbound("exact", &["fabrikam.test"]), onprem];
        let mut rng = StdRng::seed_from_u64(1);
        let outside = select_route_with_rng(&p, "fabrikam.test", true, &mut rng);
        assert_eq!(outside.route.connector.as_deref(), Some("centralized"));
        let inside = select_route_with_rng(&p, "fabrikam.test", false, &mut rng);
        assert_eq!(inside.route.connector.as_deref(), Some("exact"));
    }

    #[test]
    fn test_mode_connector_would_route_but_is_ignored() {
        let mut p = policy();
        let mut t = outbound("trial", &["fabrikam.test"]);
        t.test_mode = true;
        p.outbound = vec![t, outbound("fallback", &["*.fabrikam.test"])];
        let d = route(&p, "fabrikam.test");
        assert_eq!(name(&d), Some("fallback"));
        assert_eq!(d.would_route.as_deref(), Some("trial"));
        // A TestMode connector that would not win is not reported.
        let d = route(&p, "x.fabrikam.test");
        assert_eq!(name(&d), Some("fallback"));
        assert_eq!(d.would_route, None);
        // With nothing else the default MX route applies.
        p.outbound.truncate(1);
        let d = route(&p, "fabrikam.test");
        assert_eq!(name(&d), None);
        assert_eq!(d.would_route.as_deref(), Some("trial"));
    }

    #[test]
    fn outbound_tls_and_port() {
        let mut p = policy();
        let mut c = outbound("partner", &["fabrikam.test"]);
        c.tls_settings = Some(TlsLevel::DomainValidation);
        c.tls_domain = Some(pat("*.fabrikam.test"));
        c.use_mx_record = false;
        c.smart_hosts = vec![SmartHost::Ip {
            addr: "192.0.2.1".parse().unwrap(),
            port: Some(2626),
        }];
        p.outbound = vec![c, outbound("opportunistic", &["example.org"])];
        let r = route(&p, "fabrikam.test").route;
        assert_eq!(r.kind, Some(ConnectorKind::Outbound));
        assert_eq!(
            r.tls,
            TlsPolicy::Required(TlsLevel::DomainValidation, Some(pat("*.fabrikam.test")))
        );
        assert_eq!(r.port, 2525, "Outbound connectors use DeliveryPort");
        assert!(matches!(r.target, RouteTarget::SmartHosts(ref h) if h.len() == 1));
        let r = route(&p, "example.org").route;
        assert_eq!(r.tls, TlsPolicy::Opportunistic);
        assert_eq!(r.target, RouteTarget::Mx);
    }

    #[test]
    fn send_connector_tls_port_and_helo() {
        let mut p = policy();
        let mut never = send("never", &[("a.test", 1)]);
        never.ignore_starttls = true;
        let mut req = send("required", &[("b.test", 1)]);
        req.require_tls = true;
        let mut lvl = send("level", &[("c.test", 1)]);
        lvl.require_tls = true;
        lvl.tls_auth_level = Some(TlsLevel::CertificateValidation);
        lvl.port = 2626;
        lvl.fqdn = Some("out.contoso.test".into());
        lvl.dns_routing_enabled = false;
        lvl.smart_hosts = vec![SmartHost::Name {
            host: "smart.contoso.test".into(),
            port: None,
        }];
        p.send = vec![never, req, lvl, send("plain", &[("d.test", 1)])];
        assert_eq!(route(&p, "a.test").route.tls, TlsPolicy::Never);
        assert_eq!(
            route(&p, "b.test").route.tls,
            TlsPolicy::Required(TlsLevel::EncryptionOnly, None)
        );
        let r = route(&p, "c.test").route;
        assert_eq!(
            r.tls,
            TlsPolicy::Required(TlsLevel::CertificateValidation, None)
        );
        assert_eq!(r.port, 2626);
        assert_eq!(r.helo.as_deref(), Some("out.contoso.test"));
        assert_eq!(r.kind, Some(ConnectorKind::Send));
        assert!(matches!(r.target, RouteTarget::SmartHosts(_)));
        let r = route(&p, "d.test").route;
        assert_eq!(r.tls, TlsPolicy::Opportunistic);
        assert_eq!(r.port, 25);
        assert_eq!(r.target, RouteTarget::Mx);
    }
}
