//! `[Relay]`: the server itself.

use std::path::PathBuf;
use std::time::Duration;

use toml_edit::TableLike;

use super::check_file;
use super::reader::{Ctx, Reader, TIMESPAN, describe, describe_value};
use super::units::{parse_size, parse_timespan};
use super::values::{dns_server, domain_pattern, host_name, socket_addr};
use crate::policy::model::{MIN_DATA_RATE, MIN_DATA_RATE_GRACE};
use crate::policy::{
    BareNewlinePolicy, CertificateIdentity, DomainPattern, RelaySettings, TlsRptSettings,
};

const DNSSEC: [(&str, crate::dns::DnssecValidation); 3] = [
    ("Resolver", crate::dns::DnssecValidation::Resolver),
    ("Local", crate::dns::DnssecValidation::Local),
    ("Off", crate::dns::DnssecValidation::Off),
];

const BARE_NEWLINE: [(&str, BareNewlinePolicy); 2] = [
    ("Reject", BareNewlinePolicy::Reject),
    ("Normalize", BareNewlinePolicy::Normalize),
];

pub(crate) fn build(ctx: &mut Ctx, table: &dyn TableLike, header: usize) -> RelaySettings {
    let errors_before = ctx.errors.len();
    let mut r = Reader::new(table, header, "");
    let fqdn = r
        .parsed(ctx, "Fqdn", host_name)
        .unwrap_or_else(machine_host_name);
    let listen = r
        .parsed_list(ctx, "Listen", socket_addr)
        .unwrap_or_else(|| vec!["127.0.0.1:2525".parse().expect("valid literal")]);
    let implicit_tls_listen = r
        .parsed_list(ctx, "ImplicitTlsListen", socket_addr)
        .unwrap_or_default();
    let tls_certificate = existing_file(ctx, &mut r, "TlsCertificate");
    let tls_private_key = existing_file(ctx, &mut r, "TlsPrivateKey");
    let certificates = certificates(ctx, &mut r);
    let trusted_ca_file = existing_file(ctx, &mut r, "TrustedCaFile");
    let revocation_lists = existing_files(ctx, &mut r, "RevocationLists");
    let spool_dir = path(ctx, &mut r, "SpoolDir", "var/spool");
    let data_dir = path(ctx, &mut r, "DataDir", "var");
    let accepted_domains = r
        .parsed_list(ctx, "AcceptedDomains", domain_pattern)
        .unwrap_or_default();
    let max_message_size = size(ctx, &mut r, "MaxMessageSize", "25MB");
    let max_recipients_per_message =
        r.int(ctx, "MaxRecipientsPerMessage", 500, 1, i64::MAX) as usize;
    let dns_servers = r
        .parsed_list(ctx, "DnsServers", dns_server)
        .unwrap_or_default();
    let external_dns_servers = r
        .parsed_list(ctx, "ExternalDnsServers", dns_server)
        .unwrap_or_default();
    let delivery_port = r.int(ctx, "DeliveryPort", 25, 1, 65535) as u16;
    let mta_sts_policy_port = r.int(ctx, "MtaStsPolicyPort", 443, 1, 65535) as u16;
    let message_expiration_timeout =
        timespan(ctx, &mut r, "MessageExpirationTimeout", "2.00:00:00");
    let transient_failure_retry_interval =
        timespan(ctx, &mut r, "TransientFailureRetryInterval", "00:05:00");
    let max_retry_interval = timespan(ctx, &mut r, "MaxRetryInterval", "01:00:00");
    let delay_notification_timeout = timespan(ctx, &mut r, "DelayNotificationTimeout", "04:00:00");
    let admin_listen = r
        .parsed(ctx, "AdminListen", socket_addr)
        .unwrap_or_else(|| "127.0.0.1:8025".parse().expect("valid literal"));
    let admin_token_file = path(ctx, &mut r, "AdminTokenFile", "var/admin.token");
    let protocol_log_dir = path(ctx, &mut r, "ProtocolLogDir", "var/log/protocol");
    // Set-TransportService -SendProtocolLogMaxAge: 30 days, 00:00:00 keeps every file.
    let send_protocol_log_max_age = timespan(ctx, &mut r, "SendProtocolLogMaxAge", "30.00:00:00");
    let trace_retention_days = r.int(ctx, "TraceRetentionDays", 30, 1, i64::from(u32::MAX)) as u32;
    // Extension key: the trace store a fleet shares (README "Running more than one node").
    let trace_store = r
        .parsed(ctx, "TraceStore", crate::trace::StoreTarget::parse)
        .unwrap_or_default();
    let srs_secret_file = path(ctx, &mut r, "SrsSecretFile", "var/srs.key");
    let bare_newline_policy = r
        .choice(ctx, "BareNewlinePolicy", &BARE_NEWLINE)
        .unwrap_or(BareNewlinePolicy::Reject);
    let dnssec_validation = r
        .choice(ctx, "DnssecValidation", &DNSSEC)
        .unwrap_or_default();
    let dnssec_trust_anchor_file = existing_file(ctx, &mut r, "DnssecTrustAnchorFile");
    let max_inbound_connection = r.int(ctx, "MaxInboundConnection", 5000, 1, i64::MAX) as usize;
    let max_inbound_connection_per_source =
        r.int(ctx, "MaxInboundConnectionPerSource", 20, 1, i64::MAX) as usize;
    // Extension key (not an Exchange parameter): Postfix's smtpd_client_connection_rate_limit.
    let max_inbound_connection_rate_per_source =
        r.int(ctx, "MaxInboundConnectionRatePerSource", 600, 0, 1_000_000) as u32;
    // Extension key: sessions only OnPremises connector IPs may take (see `rules`).
    let reserved = r.int(
        ctx,
        "InboundConnectionsReservedForOnPremises",
        -1,
        0,
        i64::MAX,
    );
    let inbound_connections_reserved_for_on_premises = usize::try_from(reserved)
        .unwrap_or_else(|_| default_on_premises_reserve(max_inbound_connection));
    // Extension key (Postfix's smtpd_client_ipv6_prefix_length): IPv6 clients are counted
    // per prefix of this length by the per-source limits, since one host usually holds a
    // whole /64 (RFC 4291 §2.5.1 interface identifiers).
    let source_ipv6_prefix_length = r.int(ctx, "SourceIPv6PrefixLength", 64, 32, 128) as u8;
    let proxy_protocol_from = proxy_protocol_from(ctx, &mut r);
    let max_outbound_connections = r.int(ctx, "MaxOutboundConnections", 1000, 1, i64::MAX) as usize;
    let max_per_domain_outbound_connections =
        r.int(ctx, "MaxPerDomainOutboundConnections", 20, 1, i64::MAX) as usize;
    let transient_failure_retry_count = r.int(ctx, "TransientFailureRetryCount", 6, 0, 15) as u32;
    let outbound_connection_failure_retry_interval = timespan(
        ctx,
        &mut r,
        "OutboundConnectionFailureRetryInterval",
        "00:10:00",
    );
    let connection_timeout = timespan(ctx, &mut r, "ConnectionTimeout", "00:10:00");
    let connection_inactivity_timeout =
        timespan(ctx, &mut r, "ConnectionInactivityTimeout", "00:05:00");
    let max_protocol_errors = r.int(ctx, "MaxProtocolErrors", 5, 1, i64::from(u32::MAX)) as u32;
    let max_header_size = size(ctx, &mut r, "MaxHeaderSize", "256KB");
    // Extension key: Postfix postscreen's `postscreen_greet_wait` (0 turns the wait off).
    let pre_greeting_wait = timespan(ctx, &mut r, "PreGreetingWait", "00:00:00.1");
    let back_pressure = super::pressure::build(ctx, &mut r);
    let tlsrpt = tlsrpt_settings(ctx, &mut r, &fqdn);
    let lines = r.lines.clone();
    r.finish(ctx, "[Relay]");

    let settings = RelaySettings {
        fqdn,
        listen,
        implicit_tls_listen,
        tls_certificate,
        tls_private_key,
        certificates,
        trusted_ca_file,
        revocation_lists,
        spool_dir,
        data_dir,
        accepted_domains,
        max_message_size,
        max_recipients_per_message,
        dns_servers,
        external_dns_servers,
        delivery_port,
        mta_sts_policy_port,
        message_expiration_timeout,
        transient_failure_retry_interval,
        max_retry_interval,
        delay_notification_timeout,
        admin_listen,
        admin_token_file,
        protocol_log_dir,
        send_protocol_log_max_age,
        trace_retention_days,
        trace_store,
        srs_secret_file,
        bare_newline_policy,
        dnssec_validation,
        dnssec_trust_anchor_file,
        max_inbound_connection,
        max_inbound_connection_per_source,
        max_inbound_connection_rate_per_source,
        inbound_connections_reserved_for_on_premises,
        source_ipv6_prefix_length,
        proxy_protocol_from,
        max_outbound_connections,
        max_per_domain_outbound_connections,
        transient_failure_retry_count,
        outbound_connection_failure_retry_interval,
        connection_timeout,
        connection_inactivity_timeout,
        max_protocol_errors,
        max_header_size,
        pre_greeting_wait,
        min_data_rate: MIN_DATA_RATE,
        min_data_rate_grace: MIN_DATA_RATE_GRACE,
        back_pressure,
        tlsrpt,
    };
    // Rules between keys only once every value parsed, so that one bad value is not also
    // reported as a missing one.
    if ctx.errors.len() == errors_before {
        rules(ctx, &settings, &lines);
    }
    settings
}

/// `ProxyProtocolFrom` (extension key): the load balancers whose connections start with a
/// PROXY protocol header naming the real client. A range covering every address would let
/// any client claim any address (and with it an OnPremises connector's trust), so it is
/// refused.
fn proxy_protocol_from(ctx: &mut Ctx, r: &mut Reader<'_>) -> Vec<ipnet::IpNet> {
    let key = "ProxyProtocolFrom";
    let nets = r.ip_nets(ctx, key);
    for (net, line) in &nets {
        if net.prefix_len() == 0 {
            ctx.error(
                *line,
                key,
                format!("{net} covers every address: any client could then claim any address in a PROXY protocol header; name the load balancers' own addresses"),
            );
        }
    }
    nets.into_iter().map(|(net, _)| net).collect()
}

/// Rules between `[Relay]` keys.
fn rules(ctx: &mut Ctx, s: &RelaySettings, lines: &super::reader::Lines) {
    match (&s.tls_certificate, &s.tls_private_key) {
        (Some(_), None) => ctx.error(
            lines.of("TlsCertificate"),
            "TlsCertificate",
            "is set without TlsPrivateKey; give both the certificate chain and its private key",
        ),
        (None, Some(_)) => ctx.error(
            lines.of("TlsPrivateKey"),
            "TlsPrivateKey",
            "is set without TlsCertificate; give both the certificate chain and its private key",
        ),
        _ => {}
    }
    // Only report the missing certificate when neither key was written (the pair rule above
    // already covers a half-written pair).
    if !s.implicit_tls_listen.is_empty()
        && !lines.has("TlsCertificate")
        && !lines.has("TlsPrivateKey")
    {
        ctx.error(
            lines.of("ImplicitTlsListen"),
            "ImplicitTlsListen",
            "implicit TLS listeners need a certificate; set TlsCertificate and TlsPrivateKey",
        );
    }
    if s.listen.is_empty() && s.implicit_tls_listen.is_empty() {
        ctx.error(
            lines.of("Listen"),
            "Listen",
            "is empty and so is ImplicitTlsListen; the relay needs at least one listener",
        );
    }
    if s.accepted_domains.contains(&DomainPattern::Any) {
        ctx.error(
            lines.of("AcceptedDomains"),
            "AcceptedDomains",
            "\"*\" would make every domain an accepted domain (an open relay); list the organization's own domains",
        );
    }
    for key in [
        "MessageExpirationTimeout",
        "TransientFailureRetryInterval",
        "MaxRetryInterval",
        "DelayNotificationTimeout",
        "ConnectionTimeout",
        "ConnectionInactivityTimeout",
        "OutboundConnectionFailureRetryInterval",
    ] {
        if lines.has(key) && duration_of(s, key) == Some(Duration::ZERO) {
            ctx.error(lines.of(key), key, "must be longer than zero");
        }
    }
    for (key, value) in [
        ("MaxMessageSize", s.max_message_size),
        ("MaxHeaderSize", s.max_header_size),
    ] {
        if lines.has(key) && value == 0 {
            ctx.error(lines.of(key), key, "must be larger than zero bytes");
        }
    }
    if s.pre_greeting_wait >= s.connection_timeout {
        ctx.error(
            lines.of("PreGreetingWait"),
            "PreGreetingWait",
            "is not shorter than ConnectionTimeout, so no new client would ever get the banner; 0.1 s (\"00:00:00.1\") is the default",
        );
    }
    let key = "InboundConnectionsReservedForOnPremises";
    if lines.has(key) && s.inbound_connections_reserved_for_on_premises >= s.max_inbound_connection
    {
        ctx.error(
            lines.of(key),
            key,
            format!(
                "must be less than MaxInboundConnection ({}); other clients would get no session at all",
                s.max_inbound_connection
            ),
        );
    }
    retry_rules(ctx, s, lines);
    dnssec_rules(ctx, s, lines);
}

/// `DnssecValidation = "Local"` cannot validate anything without anchors: refused now
/// rather than deferring every DANE destination. The file is read as the resolver will.
fn dnssec_rules(ctx: &mut Ctx, s: &RelaySettings, lines: &super::reader::Lines) {
    use crate::dns::DnssecValidation;
    match (s.dnssec_validation, &s.dnssec_trust_anchor_file) {
        (DnssecValidation::Local, None) => ctx.error(
            lines.of("DnssecValidation"),
            "DnssecValidation",
            "is \"Local\", so DnssecTrustAnchorFile must name a file of DNSKEY trust anchors (e.g. the output of `dig . DNSKEY`)",
        ),
        (DnssecValidation::Local, Some(path)) => {
            if let Err(e) = crate::dns::hickory::read_trust_anchors(path) {
                ctx.error(lines.of("DnssecTrustAnchorFile"), "DnssecTrustAnchorFile", e);
            }
        }
        (_, Some(_)) => ctx.warn(
            lines.of("DnssecTrustAnchorFile"),
            "DnssecTrustAnchorFile",
            "is only used with DnssecValidation = \"Local\"",
        ),
        (_, None) => {}
    }
}

/// The default of `InboundConnectionsReservedForOnPremises`: 10% of `MaxInboundConnection`
/// (rounded up), at least 5 so that a small relay still keeps room for its own servers, and
/// at most half so that other clients keep most of it.
pub(crate) fn default_on_premises_reserve(max_inbound_connection: usize) -> usize {
    max_inbound_connection
        .div_ceil(10)
        .max(5)
        .min(max_inbound_connection / 2)
}

/// The line of `key` in the `[Relay]` table of `text`, or of the `[Relay]` header when the
/// key is not written there; 0 when the text has no `[Relay]` table (or does not parse).
pub fn key_line(text: &str, key: &str) -> usize {
    let Ok(doc) = toml_edit::ImDocument::parse(text) else {
        return 0;
    };
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map_or(0, |s| text[..s.start].matches('\n').count() + 1)
    };
    let Some(relay) = doc.get("Relay").and_then(|i| i.as_table_like()) else {
        return 0;
    };
    match super::reader::find_key(relay, key) {
        Some((k, _)) => line_of(k.span()),
        None => line_of(doc.as_table().key("Relay").and_then(|k| k.span())),
    }
}

/// The retry schedule: the first delay cannot exceed the back-off cap (an error: the two
/// settings contradict each other). A cap or a delay-DSN time at or beyond the expiration
/// only wastes a setting, so those are warnings.
fn retry_rules(ctx: &mut Ctx, s: &RelaySettings, lines: &super::reader::Lines) {
    if s.transient_failure_retry_interval > s.max_retry_interval {
        let reason = "the first retry delay must not exceed the cap on later delays";
        if lines.has("TransientFailureRetryInterval") || !lines.has("MaxRetryInterval") {
            let key = "TransientFailureRetryInterval";
            ctx.error(
                lines.of(key),
                key,
                format!("is longer than MaxRetryInterval; {reason}"),
            );
        } else {
            let key = "MaxRetryInterval";
            ctx.error(
                lines.of(key),
                key,
                format!("is shorter than TransientFailureRetryInterval; {reason}"),
            );
        }
    }
    if s.max_retry_interval >= s.message_expiration_timeout {
        ctx.warn(
            lines.of("MaxRetryInterval"),
            "MaxRetryInterval",
            "is not shorter than MessageExpirationTimeout, so a message may expire with few or no retries",
        );
    }
    if s.delay_notification_timeout >= s.message_expiration_timeout {
        ctx.warn(
            lines.of("DelayNotificationTimeout"),
            "DelayNotificationTimeout",
            "is not shorter than MessageExpirationTimeout, so no delay notification will ever be sent",
        );
    }
}

fn duration_of(s: &RelaySettings, key: &str) -> Option<Duration> {
    Some(match key {
        "MessageExpirationTimeout" => s.message_expiration_timeout,
        "TransientFailureRetryInterval" => s.transient_failure_retry_interval,
        "MaxRetryInterval" => s.max_retry_interval,
        "DelayNotificationTimeout" => s.delay_notification_timeout,
        "ConnectionTimeout" => s.connection_timeout,
        "ConnectionInactivityTimeout" => s.connection_inactivity_timeout,
        "OutboundConnectionFailureRetryInterval" => s.outbound_connection_failure_retry_interval,
        _ => return None,
    })
}

/// The machine's host name, the default `Fqdn`.
/// The machine's host name, lower case: the default `Fqdn`, and a relay's default node
/// name in the trace.
pub fn machine_host_name() -> String {
    gethostname::gethostname()
        .to_string_lossy()
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn path(ctx: &mut Ctx, r: &mut Reader<'_>, key: &'static str, default: &str) -> PathBuf {
    match r.string(ctx, key) {
        Some((s, line)) if s.is_empty() => {
            ctx.error(line, key, "must not be empty");
            PathBuf::from(default)
        }
        Some((s, _)) => PathBuf::from(s),
        None => PathBuf::from(default),
    }
}

/// `TlsRpt*` (extension keys, RFC 8460 reporting; see `crate::tlsrpt`). A DKIM key that
/// cannot be loaded is refused here, not found out when the first report is due.
fn tlsrpt_settings(ctx: &mut Ctx, r: &mut Reader<'_>, fqdn: &str) -> TlsRptSettings {
    let enabled = r.bool(ctx, "TlsRptEnabled", false);
    let report_interval = timespan(ctx, r, "TlsRptReportInterval", "1.00:00:00");
    if report_interval < Duration::from_secs(1) {
        let line = r.lines.of("TlsRptReportInterval");
        ctx.error(line, "TlsRptReportInterval", "must be at least one second");
    }
    let text = |ctx: &mut Ctx, r: &mut Reader<'_>, key: &'static str, default: String| {
        r.string(ctx, key).map(|(s, _)| s).unwrap_or(default)
    };
    let organization_name = text(ctx, r, "TlsRptOrganizationName", fqdn.to_string());
    let contact_info = text(ctx, r, "TlsRptContactInfo", format!("postmaster@{fqdn}"));
    let sender = text(ctx, r, "TlsRptSender", format!("noreply-tlsrpt@{fqdn}"));
    let dkim_key_file = existing_file(ctx, r, "TlsRptDkimKeyFile");
    let selector = r.string(ctx, "TlsRptDkimSelector");
    let dkim_domain = text(ctx, r, "TlsRptDkimDomain", fqdn.to_string());
    let max_reports_per_run = r.int(ctx, "TlsRptMaxReportsPerRun", 100, 1, 100_000) as usize;
    let dkim_selector = match (&dkim_key_file, selector) {
        (_, Some((s, _))) => s,
        (Some(_), None) => {
            let line = r.lines.of("TlsRptDkimKeyFile");
            ctx.error(
                line,
                "TlsRptDkimKeyFile",
                "needs TlsRptDkimSelector (the DKIM selector s=)",
            );
            String::new()
        }
        (None, None) => String::new(),
    };
    if let Some(path) = &dkim_key_file
        && path.is_file()
        && let Err(e) = crate::tlsrpt::dkim::Signer::load(path, &dkim_domain, &dkim_selector)
    {
        let line = r.lines.of("TlsRptDkimKeyFile");
        ctx.error(line, "TlsRptDkimKeyFile", e);
    }
    if enabled && dkim_key_file.is_none() {
        let line = r.lines.of("TlsRptEnabled");
        ctx.warn(
            line,
            "TlsRptEnabled",
            "no TlsRptDkimKeyFile: reports go to https: rua only (RFC 8460 §3: mailed reports must be DKIM-signed)",
        );
    }
    TlsRptSettings {
        enabled,
        report_interval,
        organization_name,
        contact_info,
        sender,
        dkim_key_file,
        dkim_selector,
        dkim_domain,
        max_reports_per_run,
    }
}

fn existing_file(ctx: &mut Ctx, r: &mut Reader<'_>, key: &'static str) -> Option<PathBuf> {
    let (s, line) = r.string(ctx, key)?;
    let path = PathBuf::from(s);
    check_file(ctx, line, key, &path);
    Some(path)
}

fn existing_files(ctx: &mut Ctx, r: &mut Reader<'_>, key: &'static str) -> Vec<PathBuf> {
    let entries = r.strings(ctx, key).unwrap_or_default();
    entries
        .into_iter()
        .map(|(s, line)| {
            let path = PathBuf::from(s);
            check_file(ctx, line, key, &path);
            path
        })
        .collect()
}

/// A size given as a string with a unit, or as an integer number of bytes.
fn size(ctx: &mut Ctx, r: &mut Reader<'_>, key: &'static str, default: &str) -> u64 {
    let fallback = parse_size(default).expect("valid default");
    let Some((item, line)) = r.item(ctx, key) else {
        return fallback;
    };
    let parsed = match (item.as_str(), item.as_integer()) {
        (Some(s), _) => parse_size(s),
        (_, Some(n)) => u64::try_from(n)
            .map_err(|_| format!("{n} is negative; expected a size such as \"25MB\"")),
        _ => Err(format!(
            "expected a size such as \"25MB\" or a number of bytes, found {}",
            describe(item)
        )),
    };
    parsed.unwrap_or_else(|e| {
        ctx.error(line, key, e);
        fallback
    })
}

fn timespan(ctx: &mut Ctx, r: &mut Reader<'_>, key: &'static str, default: &str) -> Duration {
    let fallback = || parse_timespan(default).expect("valid default");
    let Some((s, line)) = r.string_of(ctx, key, TIMESPAN) else {
        return fallback();
    };
    parse_timespan(&s).unwrap_or_else(|e| {
        ctx.error(line, key, e);
        fallback()
    })
}

/// `Certificates = [{ Certificate = "...", PrivateKey = "..." }]` or `[[Relay.Certificates]]`.
fn certificates(ctx: &mut Ctx, r: &mut Reader<'_>) -> Vec<CertificateIdentity> {
    let Some((item, line)) = r.item(ctx, "Certificates") else {
        return Vec::new();
    };
    let mut tables: Vec<(&dyn TableLike, usize)> = Vec::new();
    if let Some(aot) = item.as_array_of_tables() {
        tables.extend(
            aot.iter()
                .map(|t| (t as &dyn TableLike, ctx.line(t.span()).max(line))),
        );
    } else if let Some(array) = item.as_array() {
        for value in array.iter() {
            match value.as_inline_table() {
                Some(t) => tables.push((t, ctx.line(value.span()).max(line))),
                None => ctx.error(
                    line,
                    "Certificates",
                    format!(
                        "expected tables like {{ Certificate = \"cert.pem\", PrivateKey = \"key.pem\" }}, found {}",
                        describe_value(value)
                    ),
                ),
            }
        }
    } else {
        ctx.error(
            line,
            "Certificates",
            format!("expected an array of tables like {{ Certificate = \"cert.pem\", PrivateKey = \"key.pem\" }}, found {}", describe(item)),
        );
    }
    tables
        .into_iter()
        .filter_map(|(table, line)| certificate(ctx, table, line))
        .collect()
}

fn certificate(ctx: &mut Ctx, table: &dyn TableLike, line: usize) -> Option<CertificateIdentity> {
    let mut r = Reader::new(table, line, "Certificates.");
    let certificate = r.string(ctx, "Certificate");
    let private_key = r.string(ctx, "PrivateKey");
    let lines = r.lines.clone();
    // Unknown keys first: a misspelt key explains the "missing" message that follows.
    r.finish(ctx, "a Certificates entry");
    let file = |ctx: &mut Ctx, value: Option<(String, usize)>, key: &str| {
        let name = format!("Certificates.{key}");
        match value {
            Some((s, kline)) => {
                let path = PathBuf::from(s);
                check_file(ctx, kline, &name, &path);
                Some(path)
            }
            None => {
                if !lines.has(key) {
                    let reason =
                        "missing; each Certificates entry needs Certificate and PrivateKey";
                    ctx.error(line, &name, reason);
                }
                None
            }
        }
    };
    let certificate = file(ctx, certificate, "Certificate");
    let private_key = file(ctx, private_key, "PrivateKey");
    Some(CertificateIdentity {
        certificate: certificate?,
        private_key: private_key?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_premises_reserve_default() {
        assert_eq!(default_on_premises_reserve(5000), 500, "10%");
        assert_eq!(default_on_premises_reserve(30), 5, "at least 5");
        assert_eq!(default_on_premises_reserve(4), 2, "at most half");
        assert_eq!(default_on_premises_reserve(1), 0);
    }

    #[test]
    fn key_lines_in_relay() {
        let text = "# c\n[Relay]\nFqdn = \"a\"\nMaxInboundConnection = 9\n\n[[InboundConnector]]\nName = \"x\"\n";
        assert_eq!(key_line(text, "MaxInboundConnection"), 4);
        assert_eq!(key_line(text, "MaxOutboundConnections"), 2, "the header");
        assert_eq!(key_line("[[SendConnector]]\n", "MaxInboundConnection"), 0);
    }
}
