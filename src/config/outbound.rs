//! `[[OutboundConnector]]`: Set-/New-OutboundConnector (Exchange Online).

use toml_edit::TableLike;

use super::reader::{Ctx, Lines, Reader};
use super::values::{domain_pattern, smart_host};
use super::{CONNECTOR_SOURCES, CONNECTOR_TYPES, connector_name, text};
use crate::dns::DnssecValidation;
use crate::policy::{ConnectorType, DaneMode, MtaStsMode, OutboundConnector, TlsLevel};

pub(crate) const TLS_LEVELS: [(&str, TlsLevel); 3] = [
    ("EncryptionOnly", TlsLevel::EncryptionOnly),
    ("CertificateValidation", TlsLevel::CertificateValidation),
    ("DomainValidation", TlsLevel::DomainValidation),
];

const MTA_STS: [(&str, MtaStsMode); 2] = [
    ("Opportunistic", MtaStsMode::Opportunistic),
    ("None", MtaStsMode::None),
];

const DANE: [(&str, DaneMode); 3] = [
    ("Opportunistic", DaneMode::Opportunistic),
    ("Mandatory", DaneMode::Mandatory),
    ("None", DaneMode::None),
];

pub(crate) fn build(
    ctx: &mut Ctx,
    table: &dyn TableLike,
    header: usize,
    env: &super::Env,
) -> (OutboundConnector, Lines) {
    let errors_before = ctx.errors.len();
    let mut r = Reader::new(table, header, "");
    let c = OutboundConnector {
        name: connector_name(ctx, &mut r, "OutboundConnector"),
        enabled: r.bool(ctx, "Enabled", true),
        connector_type: r
            .choice(ctx, "ConnectorType", &CONNECTOR_TYPES)
            .unwrap_or(ConnectorType::Partner),
        recipient_domains: r
            .parsed_list(ctx, "RecipientDomains", domain_pattern)
            .unwrap_or_default(),
        all_accepted_domains: r.bool(ctx, "AllAcceptedDomains", false),
        use_mx_record: r.bool(ctx, "UseMXRecord", true),
        smart_hosts: r
            .parsed_list(ctx, "SmartHosts", smart_host)
            .unwrap_or_default(),
        tls_settings: r.choice(ctx, "TlsSettings", &TLS_LEVELS),
        tls_domain: r.parsed(ctx, "TlsDomain", domain_pattern),
        route_all_messages_via_on_premises: r.bool(ctx, "RouteAllMessagesViaOnPremises", false),
        cloud_services_mail_enabled: r.bool(ctx, "CloudServicesMailEnabled", false),
        sender_rewriting_enabled: r.bool(ctx, "SenderRewritingEnabled", false),
        mta_sts_mode: r
            .choice(ctx, "MtaStsMode", &MTA_STS)
            .unwrap_or(MtaStsMode::Opportunistic),
        smtp_dane_mode: r
            .choice(ctx, "SmtpDaneMode", &DANE)
            .unwrap_or(DaneMode::Opportunistic),
        test_mode: r.bool(ctx, "TestMode", false),
        is_transport_rule_scoped: r.bool(ctx, "IsTransportRuleScoped", false),
        validation_recipients: r
            .parsed_list(ctx, "ValidationRecipients", email_address)
            .unwrap_or_default(),
        is_validated: r.bool(ctx, "IsValidated", false),
        last_validation_timestamp: last_validation_timestamp(ctx, &mut r),
        comment: text(ctx, &mut r, "Comment"),
        connector_source: r
            .choice(ctx, "ConnectorSource", &CONNECTOR_SOURCES)
            .map(String::from),
    };
    let lines = r.lines.clone();
    r.finish(ctx, "[[OutboundConnector]]");
    if ctx.errors.len() == errors_before {
        rules(ctx, &c, &lines);
        dane_rules(ctx, &c, &lines, env.dnssec);
    }
    (c, lines)
}

/// A date-time (Set-OutboundConnector: `DateTime`), as a TOML date-time (what `validate`
/// writes: RFC 3339, UTC) or a string in either ISO form: `"2016-05-06 14:30:00z"` (the
/// cmdlet's example) or `"2016-05-06T14:30:00Z"`, fractions of a second and offsets
/// allowed, no offset meaning UTC as the cmdlet documents (Exchange's JSON output reads
/// `"2025-03-02T10:00:00.0000000"`). Kept as written: the relay only displays it.
fn last_validation_timestamp(ctx: &mut Ctx, r: &mut Reader<'_>) -> Option<String> {
    let key = "LastValidationTimestamp";
    let (item, line) = r.item(ctx, key)?;
    let checked = match (item.as_str(), item.as_datetime()) {
        (Some(s), _) => date_time(s).map(|()| s.to_string()),
        (_, Some(dt)) => whole_date_time(dt, &dt.to_string()).map(|()| dt.to_string()),
        _ => Err(format!(
            "expected a date-time such as \"2016-05-06 14:30:00z\", found {}",
            super::reader::describe(item)
        )),
    };
    checked.map_err(|e| ctx.error(line, key, e)).ok()
}

/// An ISO 8601 / RFC 3339 date and time of day (`T` or a space between them).
fn date_time(s: &str) -> Result<(), String> {
    let dt: toml_edit::Datetime = s.trim().parse().map_err(|_| {
        format!("{s:?} is not a date-time; write it as \"2016-05-06 14:30:00z\" or \"2016-05-06T14:30:00Z\"")
    })?;
    whole_date_time(&dt, s)
}

/// A date alone or a time alone is not a timestamp.
fn whole_date_time(dt: &toml_edit::Datetime, written: &str) -> Result<(), String> {
    if dt.date.is_some() && dt.time.is_some() {
        return Ok(());
    }
    Err(format!(
        "{written:?} is not a whole date-time; give the date and the time, e.g. \"2016-05-06 14:30:00z\""
    ))
}

/// `ValidationRecipients`: mailbox addresses `local@domain`.
pub(crate) fn email_address(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not an email address such as \"postmaster@contoso.com\"");
    let (local, domain) = s.rsplit_once('@').ok_or_else(bad)?;
    if local.is_empty() || local.contains(char::is_whitespace) {
        return Err(bad());
    }
    let domain = super::values::host_name(domain).map_err(|_| bad())?;
    Ok(format!("{local}@{domain}"))
}

fn rules(ctx: &mut Ctx, c: &OutboundConnector, lines: &Lines) {
    routing_rules(ctx, c, lines);
    // AllAcceptedDomains: "You can only use this value when the ConnectorType parameter value
    // is OnPremises"; RouteAllMessagesViaOnPremises and SenderRewritingEnabled: "This setting
    // requires ... OnPremises for the ConnectorType value".
    if c.connector_type != ConnectorType::OnPremises {
        for (key, set) in [
            ("AllAcceptedDomains", c.all_accepted_domains),
            (
                "RouteAllMessagesViaOnPremises",
                c.route_all_messages_via_on_premises,
            ),
            ("SenderRewritingEnabled", c.sender_rewriting_enabled),
        ] {
            if set {
                ctx.error(
                    lines.of(key),
                    key,
                    "requires ConnectorType = \"OnPremises\"",
                );
            }
        }
    }
    // TlsSettings DomainValidation: "the certificate ... matches the domain specified in the
    // TlsDomain parameter". Behind smart hosts the recipient's domain (the fallback for
    // MX routes) is not a name a smart host carries, so every message would be deferred.
    if c.tls_settings == Some(TlsLevel::DomainValidation)
        && !c.use_mx_record
        && c.tls_domain.is_none()
    {
        ctx.error(
            lines.of("TlsSettings"),
            "TlsSettings",
            "\"DomainValidation\" with smart hosts (UseMXRecord = false) requires TlsDomain, the name the smart host certificate must carry; without it the recipient's domain would be required and every message deferred",
        );
    }
    // TlsDomain: "This parameter is only used if the TlsSettings parameter is set to
    // DomainValidation" -- harmless otherwise, so a warning.
    if c.tls_domain.is_some() && c.tls_settings != Some(TlsLevel::DomainValidation) {
        ctx.warn(
            lines.of("TlsDomain"),
            "TlsDomain",
            "is ignored unless TlsSettings = \"DomainValidation\"",
        );
    }
    // MTA-STS authenticates MX hosts (RFC 8461 §4); a smart host is not one, so the mode
    // does nothing there. Said when the key is written, so nobody believes it applies.
    if lines.has("MtaStsMode") && !c.use_mx_record && c.mta_sts_mode != MtaStsMode::None {
        ctx.warn(
            lines.of("MtaStsMode"),
            "MtaStsMode",
            "has no effect with UseMXRecord = false: MTA-STS authenticates MX hosts and smart hosts are not MX hosts; use TlsSettings = \"DomainValidation\" to authenticate the smart host",
        );
    }
    if c.recipient_domains.is_empty()
        && !c.all_accepted_domains
        && !c.route_all_messages_via_on_premises
    {
        ctx.warn(
            lines.header,
            "RecipientDomains",
            format!(
                "connector {:?} has no RecipientDomains, AllAcceptedDomains or RouteAllMessagesViaOnPremises, so it routes no mail",
                c.name
            ),
        );
    }
}

/// `SmtpDaneMode` (README "DANE"): a mode that says it enforces must be able to.
/// - `Mandatory` needs DNSSEC status (`DnssecValidation` not `Off`) and an MX route:
///   smart hosts have no DNSSEC-signed MX to authenticate, so Mandatory there is refused
///   (use `TlsSettings = "DomainValidation"` to authenticate a smart host).
/// - `Opportunistic` written on a smart-host connector has no effect: a warning.
fn dane_rules(ctx: &mut Ctx, c: &OutboundConnector, lines: &Lines, dnssec: DnssecValidation) {
    let smart_hosts = !c.use_mx_record && !c.smart_hosts.is_empty();
    let key = "SmtpDaneMode";
    match c.smtp_dane_mode {
        DaneMode::Mandatory if smart_hosts => ctx.error(
            lines.of(key),
            key,
            "is \"Mandatory\" but the connector delivers to SmartHosts, which have no DNSSEC-signed MX to authenticate with DANE; use UseMXRecord = true, or TlsSettings = \"DomainValidation\" with TlsDomain for the smart hosts",
        ),
        DaneMode::Mandatory if dnssec == DnssecValidation::Off => ctx.error(
            lines.of(key),
            key,
            "is \"Mandatory\" but [Relay] DnssecValidation = \"Off\", so no destination can ever be DANE-authenticated and every message would be deferred until it expires; set DnssecValidation = \"Resolver\" (a trusted validating resolver in DnsServers) or \"Local\"",
        ),
        DaneMode::Opportunistic if smart_hosts && lines.has(key) => ctx.warn(
            lines.of(key),
            key,
            "has no effect on a SmartHosts connector (DANE authenticates MX hosts found through DNSSEC); the connector's TlsSettings apply",
        ),
        _ => {}
    }
}

/// UseMXRecord: "$false: The connector delivers email to one or more smart hosts. This
/// setting requires one or more smart hosts"; SmartHosts are used only without MX routing.
fn routing_rules(ctx: &mut Ctx, c: &OutboundConnector, lines: &Lines) {
    if !c.use_mx_record && c.smart_hosts.is_empty() {
        ctx.error(
            lines.of("UseMXRecord"),
            "UseMXRecord",
            "is false, so SmartHosts must list at least one smart host",
        );
    }
    if c.use_mx_record && !c.smart_hosts.is_empty() {
        ctx.error(
            lines.of("SmartHosts"),
            "SmartHosts",
            "are only used when UseMXRecord = false; set UseMXRecord = false or remove SmartHosts",
        );
    }
}
