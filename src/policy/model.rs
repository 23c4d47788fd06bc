//! The validated, immutable policy model. Built once by `crate::config` from the TOML file;
//! the SMTP server, the queue and the delivery engine only ever see these types
//! (shared as `Arc<Policy>`), never raw configuration.
//!
//! Field names follow the Exchange parameter names in snake_case so that a reader can map
//! each field to `shared/spec/config.md` at a glance.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    pub relay: RelaySettings,
    pub inbound: Vec<InboundConnector>,
    pub outbound: Vec<OutboundConnector>,
    pub send: Vec<SendConnector>,
}

/// `[Relay]`.
#[derive(Debug, Clone)]
pub struct RelaySettings {
    pub fqdn: String,
    pub listen: Vec<SocketAddr>,
    pub implicit_tls_listen: Vec<SocketAddr>,
    pub tls_certificate: Option<PathBuf>,
    pub tls_private_key: Option<PathBuf>,
    pub certificates: Vec<CertificateIdentity>,
    pub trusted_ca_file: Option<PathBuf>,
    pub revocation_lists: Vec<PathBuf>,
    pub spool_dir: PathBuf,
    pub data_dir: PathBuf,
    pub accepted_domains: Vec<DomainPattern>,
    /// Bytes.
    pub max_message_size: u64,
    pub max_recipients_per_message: usize,
    /// Empty: the system resolver configuration.
    pub dns_servers: Vec<SocketAddr>,
    pub external_dns_servers: Vec<SocketAddr>,
    pub delivery_port: u16,
    /// `MtaStsPolicyPort` (extension, labs and tests): the HTTPS port of MTA-STS policy
    /// hosts, 443 by RFC 8461 §3.3.
    pub mta_sts_policy_port: u16,
    pub message_expiration_timeout: Duration,
    pub transient_failure_retry_interval: Duration,
    pub max_retry_interval: Duration,
    pub delay_notification_timeout: Duration,
    pub admin_listen: SocketAddr,
    pub admin_token_file: PathBuf,
    pub protocol_log_dir: PathBuf,
    /// `SendProtocolLogMaxAge`: protocol log files last written longer ago are removed;
    /// zero keeps them all.
    pub send_protocol_log_max_age: Duration,
    pub trace_retention_days: u32,
    /// `TraceStore`: SQLite under `data_dir`, or a PostgreSQL a fleet shares.
    pub trace_store: crate::trace::StoreTarget,
    pub srs_secret_file: PathBuf,
    pub bare_newline_policy: BareNewlinePolicy,
    /// `DnssecValidation` (extension): where DANE's DNSSEC status comes from.
    pub dnssec_validation: crate::dns::DnssecValidation,
    /// `DnssecTrustAnchorFile` (extension): DNSKEY anchors for `DnssecValidation = "Local"`.
    pub dnssec_trust_anchor_file: Option<PathBuf>,
    pub max_inbound_connection: usize,
    pub max_inbound_connection_per_source: usize,
    /// `MaxInboundConnectionRatePerSource` (extension): new connections per minute per
    /// client IP; 0 = no limit. OnPremises connector IPs are exempt.
    pub max_inbound_connection_rate_per_source: u32,
    /// `InboundConnectionsReservedForOnPremises` (extension): of `max_inbound_connection`,
    /// the sessions only clients at an OnPremises connector's IP may take.
    pub inbound_connections_reserved_for_on_premises: usize,
    /// `SourceIPv6PrefixLength` (extension): IPv6 clients count per prefix of this length
    /// in the per-source limits (32..=128).
    pub source_ipv6_prefix_length: u8,
    /// `ProxyProtocolFrom` (extension): load balancers whose connections must start with a
    /// PROXY protocol header; the client address it carries is the session's.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    /// `MaxOutboundConnections`: delivery attempts under way in all (each holds at most
    /// one connection); counted in the open-files budget at start.
    pub max_outbound_connections: usize,
    /// `MaxPerDomainOutboundConnections`: attempts under way per delivery queue.
    pub max_per_domain_outbound_connections: usize,
    /// `TransientFailureRetryCount`: probes of a queue in Retry that come
    /// `TransientFailureRetryInterval` apart before `OutboundConnectionFailureRetryInterval`.
    pub transient_failure_retry_count: u32,
    pub outbound_connection_failure_retry_interval: Duration,
    pub connection_timeout: Duration,
    pub connection_inactivity_timeout: Duration,
    pub max_protocol_errors: u32,
    /// Bytes.
    pub max_header_size: u64,
    /// `PreGreetingWait` (extension key): how long an unknown client listens before its
    /// banner; zero = no wait.
    pub pre_greeting_wait: Duration,
    /// Slowest average rate of DATA/BDAT input, bytes per second, once `min_data_rate_grace`
    /// has passed since the `354`; 0 = no minimum. Not a config key: always
    /// [`MIN_DATA_RATE`] from the loader (tests lower the grace on the model).
    pub min_data_rate: u64,
    pub min_data_rate_grace: Duration,
    /// The back-pressure thresholds (`DiskSpace*Threshold`, `Memory*Threshold`,
    /// `QueueLength*Threshold`), Exchange's model (`crate::relay::pressure`).
    pub back_pressure: BackPressureSettings,
    /// TLS-RPT (RFC 8460) reporting: the `TlsRpt*` extension keys.
    pub tlsrpt: TlsRptSettings,
}

impl RelaySettings {
    /// The identities a Send connector's `TlsCertificateName` may name, in the order they
    /// are searched: `Certificates`, then the relay's own `TlsCertificate` (with its key).
    pub fn client_identities(&self) -> Vec<CertificateIdentity> {
        let own = match (&self.tls_certificate, &self.tls_private_key) {
            (Some(certificate), Some(private_key)) => Some(CertificateIdentity {
                certificate: certificate.clone(),
                private_key: private_key.clone(),
            }),
            _ => None,
        };
        self.certificates.iter().cloned().chain(own).collect()
    }
}

/// One back-pressure threshold as written.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// `0` or `"Unlimited"`: this level is never entered.
    Off,
    /// Bytes (disk, memory) or messages (queue length).
    Absolute(u64),
    /// A percentage of the whole: the file system holding `SpoolDir` for the disk, the
    /// memory the relay may use (RAM, or its cgroup limit when lower) for memory.
    Percent(f64),
}

/// The three levels of one resource: it enters Medium or High when its value reaches
/// `medium` or `high`, and goes back to Normal only once it is back at `normal`
/// (hysteresis); from High it steps down to Medium once back at `medium`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PressureThresholds {
    pub high: Threshold,
    pub medium: Threshold,
    pub normal: Threshold,
}

/// `[Relay]` back-pressure keys (see the README, "Back pressure").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackPressureSettings {
    /// Free space under `SpoolDir` (lower is worse).
    pub disk: PressureThresholds,
    /// The relay's resident memory.
    pub memory: PressureThresholds,
    /// Messages in the queue.
    pub queue: PressureThresholds,
}

impl Default for BackPressureSettings {
    /// The defaults of the loader (`config::pressure`): disk High under 1 GB free, memory
    /// High at 75% of what the relay may use, queue High at 100,000 messages; Medium and
    /// Normal derived from them.
    fn default() -> Self {
        const GB: u64 = 1 << 30;
        BackPressureSettings {
            disk: PressureThresholds {
                high: Threshold::Absolute(GB),
                medium: Threshold::Absolute(2 * GB),
                normal: Threshold::Absolute(3 * GB),
            },
            memory: PressureThresholds {
                high: Threshold::Percent(75.0),
                medium: Threshold::Percent(60.0),
                normal: Threshold::Percent(45.0),
            },
            queue: PressureThresholds {
                high: Threshold::Absolute(100_000),
                medium: Threshold::Absolute(80_000),
                normal: Threshold::Absolute(60_000),
            },
        }
    }
}

/// Minimum average DATA rate, bytes per second (Postfix `smtpd_min_data_rate` is 500).
pub const MIN_DATA_RATE: u64 = 1024;
/// How long DATA may run before [`MIN_DATA_RATE`] is enforced (covers slow starts and
/// small messages: a message under 30 KB is never cut by the rate, only by the timeouts).
pub const MIN_DATA_RATE_GRACE: Duration = Duration::from_secs(30);

/// One entry of `[Relay] Certificates`.
#[derive(Debug, Clone)]
pub struct CertificateIdentity {
    pub certificate: PathBuf,
    pub private_key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareNewlinePolicy {
    Reject,
    Normalize,
}

/// A domain pattern as Exchange writes them: `contoso.com`, `*.contoso.com` (the domain and
/// every subdomain), or `*` (every domain). Stored lower-case, without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DomainPattern {
    Exact(String),
    /// `*.suffix`: the suffix itself and every subdomain of it.
    Subdomains(String),
    Any,
}

impl DomainPattern {
    /// Does this pattern match `domain` (any case, trailing dot ignored)? Patterns are
    /// stored as A-labels, so a domain in Unicode (an SMTPUTF8 address, a U-label in a
    /// certificate) is converted first (see [`crate::dns::idn`]); one that is not valid
    /// IDNA matches nothing but `*`.
    pub fn matches(&self, domain: &str) -> bool {
        if domain.is_ascii() {
            return self.matches_ascii(domain);
        }
        match crate::dns::idn::to_ascii(domain) {
            Ok(ascii) => self.matches_ascii(&ascii),
            Err(_) => *self == DomainPattern::Any,
        }
    }

    fn matches_ascii(&self, domain: &str) -> bool {
        let d = domain.trim_end_matches('.');
        match self {
            DomainPattern::Any => true,
            DomainPattern::Exact(e) => d.eq_ignore_ascii_case(e),
            DomainPattern::Subdomains(s) => {
                if d.eq_ignore_ascii_case(s) {
                    return true;
                }
                d.len() > s.len() + 1
                    && d.as_bytes()[d.len() - s.len() - 1] == b'.'
                    && d[d.len() - s.len()..].eq_ignore_ascii_case(s)
            }
        }
    }

    /// Specificity for "most specific match wins": exact > longest `*.suffix` > `*`.
    /// Higher is more specific.
    pub fn specificity(&self) -> (u8, usize) {
        match self {
            DomainPattern::Exact(e) => (2, e.len()),
            DomainPattern::Subdomains(s) => (1, s.len()),
            DomainPattern::Any => (0, 0),
        }
    }
}

impl std::fmt::Display for DomainPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DomainPattern::Exact(e) => f.write_str(e),
            DomainPattern::Subdomains(s) => write!(f, "*.{s}"),
            DomainPattern::Any => f.write_str("*"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectorType {
    Partner,
    OnPremises,
}

/// `[[InboundConnector]]`.
#[derive(Debug, Clone)]
pub struct InboundConnector {
    pub name: String,
    pub enabled: bool,
    pub connector_type: ConnectorType,
    pub sender_domains: Vec<DomainPattern>,
    pub sender_ip_addresses: Vec<IpNet>,
    pub tls_sender_certificate_name: Option<DomainPattern>,
    /// `TlsSenderCertificateIssuer` (extension key, EAC "Require certificate from specific
    /// issuer"): issuer DNs or CNs; a session attributed to the connector must present a
    /// trusted certificate issued by one of them. Empty: no requirement.
    pub tls_sender_certificate_issuer: Vec<String>,
    pub require_tls: bool,
    pub restrict_domains_to_ip_addresses: bool,
    pub restrict_domains_to_certificate: bool,
    pub cloud_services_mail_enabled: bool,
    pub treat_messages_as_internal: bool,
    pub associated_accepted_domains: Vec<DomainPattern>,
    pub comment: Option<String>,
    pub connector_source: Option<String>,
}

/// A smart host entry. `port: None` means the connector's default port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SmartHost {
    /// An FQDN, resolved through A/AAAA at delivery time.
    Name { host: String, port: Option<u16> },
    /// An IP literal.
    Ip { addr: IpAddr, port: Option<u16> },
    /// An address range (Exchange Online accepts CIDR smart hosts).
    Cidr { net: IpNet, port: Option<u16> },
}

/// The TLS validation levels (`TlsSettings` / `TlsAuthLevel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsLevel {
    EncryptionOnly,
    CertificateValidation,
    DomainValidation,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MtaStsMode {
    Opportunistic,
    None,
}

/// `SmtpDaneMode` (README "DANE"): what DANE (RFC 7672) means for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaneMode {
    Opportunistic,
    Mandatory,
    None,
}

/// `[[OutboundConnector]]` (Exchange Online style route).
#[derive(Debug, Clone)]
pub struct OutboundConnector {
    pub name: String,
    pub enabled: bool,
    pub connector_type: ConnectorType,
    pub recipient_domains: Vec<DomainPattern>,
    pub all_accepted_domains: bool,
    pub use_mx_record: bool,
    pub smart_hosts: Vec<SmartHost>,
    pub tls_settings: Option<TlsLevel>,
    pub tls_domain: Option<DomainPattern>,
    pub route_all_messages_via_on_premises: bool,
    pub cloud_services_mail_enabled: bool,
    pub sender_rewriting_enabled: bool,
    pub mta_sts_mode: MtaStsMode,
    pub smtp_dane_mode: DaneMode,
    pub test_mode: bool,
    pub is_transport_rule_scoped: bool,
    pub validation_recipients: Vec<String>,
    pub is_validated: bool,
    pub last_validation_timestamp: Option<String>,
    pub comment: Option<String>,
    pub connector_source: Option<String>,
}

/// One `AddressSpaces` entry: `SMTP:*.contoso.com;2`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSpace {
    pub domain: DomainPattern,
    /// 1..=100, default 1.
    pub cost: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuthMechanism {
    None,
    BasicAuth,
    BasicAuthRequireTls,
    ExternalAuthoritative,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Credential {
    pub user_name: String,
    /// The password lives in this file; it is read at delivery time and never logged.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorPolicy {
    Default,
    DowngradeDnsFailures,
    DowngradeCustomFailures,
    UpgradeCustomFailures,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolLoggingLevel {
    None,
    Verbose,
}

/// `[[SendConnector]]` (Exchange Server style route).
#[derive(Debug, Clone)]
pub struct SendConnector {
    pub name: String,
    pub enabled: bool,
    pub address_spaces: Vec<AddressSpace>,
    pub dns_routing_enabled: bool,
    pub smart_hosts: Vec<SmartHost>,
    pub port: u16,
    pub require_tls: bool,
    pub tls_auth_level: Option<TlsLevel>,
    pub tls_domain: Option<DomainPattern>,
    pub ignore_starttls: bool,
    pub force_helo: bool,
    pub fqdn: Option<String>,
    pub smart_host_auth_mechanism: AuthMechanism,
    pub authentication_credential: Option<Credential>,
    /// `None` = `"Unlimited"`.
    pub max_message_size: Option<u64>,
    pub smtp_max_messages_per_connection: u32,
    pub connection_inactivity_timeout: Duration,
    pub source_ip_address: Option<IpAddr>,
    pub error_policies: Vec<ErrorPolicy>,
    pub protocol_logging_level: ProtocolLoggingLevel,
    pub tls_certificate_name: Option<String>,
    pub domain_secure_enabled: bool,
    pub cloud_services_mail_enabled: bool,
    pub use_external_dns_servers_enabled: bool,
    pub comment: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::DomainPattern;

    #[test]
    fn unicode_domains_match_their_a_label_patterns() {
        let exact = DomainPattern::Exact("xn--exmple-cua.test".into());
        assert!(exact.matches("exämple.test"));
        assert!(exact.matches("EXÄMPLE.test."));
        assert!(exact.matches("XN--EXMPLE-CUA.test"));
        assert!(!exact.matches("example.test"));
        let sub = DomainPattern::Subdomains("xn--bcher-kva.de".into());
        assert!(sub.matches("mail.bücher.de"));
        assert!(sub.matches("bücher.de"));
        assert!(!sub.matches("bucher.de"));
        // Not valid IDNA: matches only `*`.
        assert!(!sub.matches("x.b\u{fffd}cher.de"));
        assert!(DomainPattern::Any.matches("b\u{fffd}cher.de"));
    }
}

/// `[Relay] TlsRpt*` (extension keys): SMTP TLS Reporting (RFC 8460), see `crate::tlsrpt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsRptSettings {
    /// `TlsRptEnabled` (default false): record outbound TLS results and send reports.
    pub enabled: bool,
    /// `TlsRptReportInterval` (default one day): the reporting period.
    pub report_interval: Duration,
    /// `TlsRptOrganizationName` (default `Fqdn`).
    pub organization_name: String,
    /// `TlsRptContactInfo` (default `postmaster@<Fqdn>`).
    pub contact_info: String,
    /// `TlsRptSender` (default `noreply-tlsrpt@<Fqdn>`): From and MAIL FROM of mailed reports.
    pub sender: String,
    /// `TlsRptDkimKeyFile`: PEM RSA or Ed25519 key; without one `mailto:` rua are skipped.
    pub dkim_key_file: Option<PathBuf>,
    /// `TlsRptDkimSelector` (required with a key file).
    pub dkim_selector: String,
    /// `TlsRptDkimDomain` (default `Fqdn`): the signing domain `d=`.
    pub dkim_domain: String,
    /// `TlsRptMaxReportsPerRun` (default 100): reports sent per reporting run at most.
    pub max_reports_per_run: usize,
}

impl Default for TlsRptSettings {
    fn default() -> Self {
        TlsRptSettings {
            enabled: false,
            report_interval: Duration::from_secs(86_400),
            organization_name: String::new(),
            contact_info: String::new(),
            sender: String::new(),
            dkim_key_file: None,
            dkim_selector: String::new(),
            dkim_domain: String::new(),
            max_reports_per_run: 100,
        }
    }
}
