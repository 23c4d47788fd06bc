//! `[[SendConnector]]`: Set-SendConnector (Exchange Server).

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use toml_edit::TableLike;

use super::outbound::TLS_LEVELS;
use super::reader::{Ctx, Lines, Reader, TIMESPAN, describe, match_choice};
use super::units::{parse_size, parse_timespan};
use super::values::{address_space, domain_pattern, host_name, smart_host};
use super::{Env, connector_name, text};
use crate::policy::{
    AuthMechanism, Credential, DomainPattern, ErrorPolicy, ProtocolLoggingLevel, SendConnector,
    SmartHost, TlsLevel,
};

const AUTH_MECHANISMS: [(&str, AuthMechanism); 4] = [
    ("None", AuthMechanism::None),
    ("BasicAuth", AuthMechanism::BasicAuth),
    ("BasicAuthRequireTLS", AuthMechanism::BasicAuthRequireTls),
    (
        "ExternalAuthoritative",
        AuthMechanism::ExternalAuthoritative,
    ),
];

const ERROR_POLICIES: [(&str, ErrorPolicy); 4] = [
    ("Default", ErrorPolicy::Default),
    ("DowngradeDnsFailures", ErrorPolicy::DowngradeDnsFailures),
    (
        "DowngradeCustomFailures",
        ErrorPolicy::DowngradeCustomFailures,
    ),
    ("UpgradeCustomFailures", ErrorPolicy::UpgradeCustomFailures),
];

const LOGGING: [(&str, ProtocolLoggingLevel); 2] = [
    ("None", ProtocolLoggingLevel::None),
    ("Verbose", ProtocolLoggingLevel::Verbose),
];

/// Set-SendConnector -MaxMessageSize: "The valid input range for this parameter is 0 to
/// 2147483647 bytes" (0 would refuse every message, so the relay starts at 1).
const MAX_MESSAGE_SIZE: u64 = 2_147_483_647;

pub(crate) fn build(
    ctx: &mut Ctx,
    table: &dyn TableLike,
    header: usize,
    env: &Env,
) -> (SendConnector, Lines) {
    let errors_before = ctx.errors.len();
    let mut r = Reader::new(table, header, "");
    let c = SendConnector {
        name: connector_name(ctx, &mut r, "SendConnector"),
        enabled: r.bool(ctx, "Enabled", true),
        address_spaces: r
            .parsed_list(ctx, "AddressSpaces", address_space)
            .unwrap_or_default(),
        dns_routing_enabled: r.bool(ctx, "DNSRoutingEnabled", true),
        smart_hosts: r
            .parsed_list(ctx, "SmartHosts", send_smart_host)
            .unwrap_or_default(),
        port: r.int(ctx, "Port", 25, 1, 65535) as u16,
        require_tls: r.bool(ctx, "RequireTLS", false),
        tls_auth_level: r.choice(ctx, "TlsAuthLevel", &TLS_LEVELS),
        tls_domain: r.parsed(ctx, "TlsDomain", domain_pattern),
        ignore_starttls: r.bool(ctx, "IgnoreSTARTTLS", false),
        force_helo: r.bool(ctx, "ForceHELO", false),
        fqdn: r.parsed(ctx, "Fqdn", host_name),
        smart_host_auth_mechanism: r
            .choice(ctx, "SmartHostAuthMechanism", &AUTH_MECHANISMS)
            .unwrap_or(AuthMechanism::None),
        authentication_credential: credential(ctx, &mut r),
        max_message_size: max_message_size(ctx, &mut r),
        smtp_max_messages_per_connection: r.int(
            ctx,
            "SmtpMaxMessagesPerConnection",
            20,
            1,
            i64::from(i32::MAX),
        ) as u32,
        connection_inactivity_timeout: inactivity_timeout(ctx, &mut r),
        source_ip_address: r.parsed(ctx, "SourceIPAddress", |s| {
            IpAddr::from_str(s).map_err(|_| format!("{s:?} is not an IP address"))
        }),
        error_policies: error_policies(ctx, &mut r),
        protocol_logging_level: r
            .choice(ctx, "ProtocolLoggingLevel", &LOGGING)
            .unwrap_or(ProtocolLoggingLevel::None),
        tls_certificate_name: r.parsed(ctx, "TlsCertificateName", tls_certificate_name),
        domain_secure_enabled: r.bool(ctx, "DomainSecureEnabled", false),
        cloud_services_mail_enabled: r.bool(ctx, "CloudServicesMailEnabled", false),
        use_external_dns_servers_enabled: r.bool(ctx, "UseExternalDNSServersEnabled", false),
        comment: text(ctx, &mut r, "Comment"),
    };
    let lines = r.lines.clone();
    r.finish(ctx, "[[SendConnector]]");
    if ctx.errors.len() == errors_before {
        rules(ctx, &c, &lines, env);
    }
    (c, lines)
}

/// `AuthenticationCredential = { UserName = "...", PasswordFile = "..." }`. The password is
/// never read here (only the file's existence is checked) and never printed.
fn credential(ctx: &mut Ctx, r: &mut Reader<'_>) -> Option<Credential> {
    let (table, line) = r.table(ctx, "AuthenticationCredential")?;
    let mut inner = Reader::new(table, line, "AuthenticationCredential.");
    let user = inner.string(ctx, "UserName");
    let password_file = inner.string(ctx, "PasswordFile");
    let lines = inner.lines.clone();
    // Unknown keys first: `Password = "..."` explains the missing PasswordFile that follows.
    inner.finish(ctx, "AuthenticationCredential");
    for (key, value) in [("UserName", &user), ("PasswordFile", &password_file)] {
        if value.is_none() && !lines.has(key) {
            ctx.error(
                line,
                &format!("AuthenticationCredential.{key}"),
                "missing; AuthenticationCredential needs UserName and PasswordFile",
            );
        }
    }
    let (user_name, user_line) = user?;
    if user_name.trim().is_empty() {
        ctx.error(
            user_line,
            "AuthenticationCredential.UserName",
            "must not be empty",
        );
    }
    let (file, file_line) = password_file?;
    let password_file = std::path::PathBuf::from(file);
    super::check_file(
        ctx,
        file_line,
        "AuthenticationCredential.PasswordFile",
        &password_file,
    );
    Some(Credential {
        user_name,
        password_file,
    })
}

/// A size, a number of bytes, or `"Unlimited"` (`None`). Default 25 MB, as Set-SendConnector
/// documents ("The default value is 25 MB").
fn max_message_size(ctx: &mut Ctx, r: &mut Reader<'_>) -> Option<u64> {
    let default = Some(25 << 20);
    let Some((item, line)) = r.item(ctx, "MaxMessageSize") else {
        return default;
    };
    let parsed = match (item.as_str(), item.as_integer()) {
        (Some(s), _) if s.trim().eq_ignore_ascii_case("unlimited") => return None,
        (Some(s), _) => parse_size(s),
        (_, Some(n)) => u64::try_from(n).map_err(|_| format!("{n} is negative")),
        _ => Err(format!(
            "expected a size such as \"25MB\", a number of bytes or \"Unlimited\", found {}",
            describe(item)
        )),
    };
    match parsed {
        Ok(n) if (1..=MAX_MESSAGE_SIZE).contains(&n) => Some(n),
        Ok(n) => {
            ctx.error(
                line,
                "MaxMessageSize",
                format!("{n} bytes is out of range; it must be from 1 to {MAX_MESSAGE_SIZE} bytes, or \"Unlimited\""),
            );
            default
        }
        Err(e) => {
            ctx.error(line, "MaxMessageSize", e);
            default
        }
    }
}

/// Set-SendConnector -ConnectionInactivityTimeOut: default ten minutes, "The valid input range
/// for this parameter is 00:00:01 to 1.00:00:00".
fn inactivity_timeout(ctx: &mut Ctx, r: &mut Reader<'_>) -> Duration {
    let key = "ConnectionInactivityTimeOut";
    let default = Duration::from_secs(600);
    let Some((s, line)) = r.string_of(ctx, key, TIMESPAN) else {
        return default;
    };
    match parse_timespan(&s) {
        Ok(d) if d >= Duration::from_secs(1) && d <= Duration::from_secs(86_400) => d,
        Ok(_) => {
            ctx.error(
                line,
                key,
                format!("{s:?} is out of range; it must be from 00:00:01 to 1.00:00:00"),
            );
            default
        }
        Err(e) => {
            ctx.error(line, key, e);
            default
        }
    }
}

/// An array of values, or one string with comma-separated values as the cmdlet accepts
/// (`"DowngradeDnsFailures,DowngradeCustomFailures"`). Default: `Default`.
fn error_policies(ctx: &mut Ctx, r: &mut Reader<'_>) -> Vec<ErrorPolicy> {
    let key = "ErrorPolicies";
    let Some(entries) = r.strings(ctx, key) else {
        return vec![ErrorPolicy::Default];
    };
    let mut policies = Vec::new();
    let mut last_line = r.lines.of(key);
    for (entry, line) in entries {
        last_line = line;
        for value in entry.split(',') {
            match match_choice(value.trim(), &ERROR_POLICIES) {
                Ok(p) if !policies.contains(&p) => policies.push(p),
                Ok(_) => {}
                Err(e) => ctx.error(line, key, e),
            }
        }
    }
    if policies.is_empty() {
        return vec![ErrorPolicy::Default];
    }
    // Default means "no downgrade or upgrade" and the custom-failure policies pull in opposite
    // directions, so these combinations contradict themselves.
    if policies.len() > 1 && policies.contains(&ErrorPolicy::Default) {
        ctx.error(
            last_line,
            key,
            "\"Default\" cannot be combined with other error policies",
        );
    }
    if policies.contains(&ErrorPolicy::DowngradeCustomFailures)
        && policies.contains(&ErrorPolicy::UpgradeCustomFailures)
    {
        ctx.error(
            last_line,
            key,
            "\"DowngradeCustomFailures\" and \"UpgradeCustomFailures\" contradict each other; choose one",
        );
    }
    policies
}

/// Set-SendConnector -SmartHosts: an FQDN or an IP address ("If you enter an IP address,
/// you must enter the IP address as a literal"); unlike an Outbound connector's, not a
/// CIDR range.
fn send_smart_host(s: &str) -> Result<SmartHost, String> {
    match smart_host(s)? {
        SmartHost::Cidr { .. } => Err(format!(
            "{s:?} is an address range; a Send connector's smart host is a host name or one IP address written as a literal (CIDR ranges are for Outbound connectors)"
        )),
        host => Ok(host),
    }
}

/// `<I>issuer<S>subject`, the SmtpX509Identifier format of -TlsCertificateName.
fn tls_certificate_name(s: &str) -> Result<String, String> {
    let ok = s
        .strip_prefix("<I>")
        .and_then(|rest| rest.split_once("<S>"))
        .is_some_and(|(issuer, subject)| !issuer.trim().is_empty() && !subject.trim().is_empty());
    if ok {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a certificate identifier; expected \"<I>issuer<S>subject\""
        ))
    }
}

fn rules(ctx: &mut Ctx, c: &SendConnector, lines: &Lines, env: &Env) {
    if c.address_spaces.is_empty() {
        ctx.error(
            lines.of("AddressSpaces"),
            "AddressSpaces",
            "at least one address space is required (for example \"SMTP:*;1\" or \"contoso.com\"), or the connector routes no mail",
        );
    }
    routing_rules(ctx, c, lines);
    tls_rules(ctx, c, lines);
    auth_rules(ctx, c, lines);
    domain_secure_rules(ctx, c, lines);
    certificate_rules(ctx, c, lines, env);
    force_helo_rules(ctx, c, lines);
    if c.use_external_dns_servers_enabled && !env.has_external_dns {
        ctx.error(
            lines.of("UseExternalDNSServersEnabled"),
            "UseExternalDNSServersEnabled",
            "is true but [Relay] ExternalDnsServers is empty; list the external DNS servers there",
        );
    }
}

/// DNSRoutingEnabled: "If you specify a SmartHosts parameter, the DNSRoutingEnabled parameter
/// must be $false"; SmartHosts: "This parameter is required if you set the DNSRoutingEnabled
/// parameter to $false".
fn routing_rules(ctx: &mut Ctx, c: &SendConnector, lines: &Lines) {
    if c.dns_routing_enabled && !c.smart_hosts.is_empty() {
        ctx.error(
            lines.of("SmartHosts"),
            "SmartHosts",
            "are only used when DNSRoutingEnabled = false (DNS routing is on by default); set DNSRoutingEnabled = false or remove SmartHosts",
        );
    }
    if !c.dns_routing_enabled && c.smart_hosts.is_empty() {
        ctx.error(
            lines.of("DNSRoutingEnabled"),
            "DNSRoutingEnabled",
            "is false, so SmartHosts must list at least one smart host",
        );
    }
}

fn tls_rules(ctx: &mut Ctx, c: &SendConnector, lines: &Lines) {
    // IgnoreSTARTTLS: "This parameter must be set to $false if the RequireTLS parameter is
    // set to $true".
    if c.ignore_starttls && c.require_tls {
        ctx.error(
            lines.of("IgnoreSTARTTLS"),
            "IgnoreSTARTTLS",
            "cannot be true when RequireTLS = true",
        );
    }
    // TlsAuthLevel: "You can't specify a value for this parameter if the IgnoreSTARTTLS
    // parameter is set to $true, or if the RequireTLS parameter is set to $false".
    if let Some(level) = c.tls_auth_level {
        if c.ignore_starttls {
            ctx.error(
                lines.of("TlsAuthLevel"),
                "TlsAuthLevel",
                "cannot be set when IgnoreSTARTTLS = true",
            );
        } else if !c.require_tls {
            ctx.error(
                lines.of("TlsAuthLevel"),
                "TlsAuthLevel",
                "requires RequireTLS = true",
            );
        }
        // TlsDomain: "A value for this parameter is required if the TLSAuthLevel parameter is
        // set to DomainValidation [and] the DNSRoutingEnabled parameter is set to $false".
        if level == TlsLevel::DomainValidation && !c.dns_routing_enabled && c.tls_domain.is_none() {
            ctx.error(
                lines.of("TlsAuthLevel"),
                "TlsAuthLevel",
                "\"DomainValidation\" with smart hosts requires TlsDomain (the name the smart host certificate must carry)",
            );
        }
    }
    // TlsDomain: "This parameter is used only if the TlsAuthLevel parameter is set to
    // DomainValidation".
    if c.tls_domain.is_some() && c.tls_auth_level != Some(TlsLevel::DomainValidation) {
        ctx.warn(
            lines.of("TlsDomain"),
            "TlsDomain",
            "is ignored unless TlsAuthLevel = \"DomainValidation\"",
        );
    }
}

/// SmartHostAuthMechanism: "Use this parameter only when a smart host is configured and the
/// DNSRoutingEnabled parameter is set to $false ... If you select BasicAuth or
/// BasicAuthRequireTLS, you must use the AuthenticationCredential parameter".
fn auth_rules(ctx: &mut Ctx, c: &SendConnector, lines: &Lines) {
    let key = "SmartHostAuthMechanism";
    let basic = matches!(
        c.smart_host_auth_mechanism,
        AuthMechanism::BasicAuth | AuthMechanism::BasicAuthRequireTls
    );
    if c.smart_host_auth_mechanism != AuthMechanism::None
        && (c.dns_routing_enabled || c.smart_hosts.is_empty())
    {
        ctx.error(
            lines.of(key),
            key,
            "is only used with smart hosts; set DNSRoutingEnabled = false and SmartHosts",
        );
    }
    if basic && c.authentication_credential.is_none() {
        ctx.error(
            lines.of(key),
            key,
            "BasicAuth and BasicAuthRequireTLS require AuthenticationCredential = { UserName = \"...\", PasswordFile = \"...\" }",
        );
    }
    if c.smart_host_auth_mechanism == AuthMechanism::BasicAuth && !c.require_tls {
        ctx.warn(
            lines.of(key),
            key,
            "\"BasicAuth\" may send the password unencrypted; use \"BasicAuthRequireTLS\" or RequireTLS = true",
        );
    }
    if c.authentication_credential.is_some() && !basic {
        ctx.warn(
            lines.of("AuthenticationCredential"),
            "AuthenticationCredential",
            "is ignored unless SmartHostAuthMechanism is \"BasicAuth\" or \"BasicAuthRequireTLS\"",
        );
    }
}

/// DomainSecureEnabled: mutual TLS "functions correctly only when ... DNSRoutingEnabled ...
/// must be $true ... IgnoreStartTLS ... must be $false. The wildcard character (*) is not
/// supported in domains that are configured for mutual TLS authentication".
fn domain_secure_rules(ctx: &mut Ctx, c: &SendConnector, lines: &Lines) {
    if !c.domain_secure_enabled {
        return;
    }
    let key = "DomainSecureEnabled";
    if !c.dns_routing_enabled {
        ctx.error(
            lines.of(key),
            key,
            "requires DNSRoutingEnabled = true (mutual TLS is not used with smart hosts)",
        );
    }
    if c.ignore_starttls {
        ctx.error(
            lines.of(key),
            key,
            "cannot be used with IgnoreSTARTTLS = true",
        );
    }
    if let Some(wild) = c
        .address_spaces
        .iter()
        .find(|a| !matches!(a.domain, DomainPattern::Exact(_)))
    {
        ctx.error(
            lines.of(key),
            key,
            format!(
                "cannot be used with the wildcard address space {:?}; mutual TLS needs each domain listed exactly",
                wild.domain.to_string()
            ),
        );
    }
}

/// The certificate a connector presents must exist, or every delivery fails with 4.7.320:
/// `TlsCertificateName` must name one of `[Relay] Certificates` or the relay's own
/// `TlsCertificate` (as delivery searches them), and `DomainSecureEnabled` without a name
/// presents `TlsCertificate`, which must then be set.
fn certificate_rules(ctx: &mut Ctx, c: &SendConnector, lines: &Lines, env: &Env) {
    if let Some(name) = &c.tls_certificate_name {
        if crate::delivery::identity::find(name, &env.certificates).is_err() {
            ctx.error(
                lines.of("TlsCertificateName"),
                "TlsCertificateName",
                format!(
                    "{name:?} names no certificate: none of [Relay] Certificates, nor [Relay] TlsCertificate, has that issuer and subject, so every delivery would fail (4.7.320)"
                ),
            );
        }
    } else if c.domain_secure_enabled && !env.own_certificate {
        ctx.error(
            lines.of("DomainSecureEnabled"),
            "DomainSecureEnabled",
            "has no certificate to present: set TlsCertificateName, or [Relay] TlsCertificate and TlsPrivateKey (mutual TLS needs a client certificate)",
        );
    }
}

/// ForceHELO: HELO gets no ESMTP extensions (RFC 5321 §4.1.1.1), so STARTTLS and AUTH are
/// never offered: whatever needs them can never be met and every message would defer.
fn force_helo_rules(ctx: &mut Ctx, c: &SendConnector, lines: &Lines) {
    if !c.force_helo {
        return;
    }
    let mut needs = Vec::new();
    if c.require_tls {
        needs.push("RequireTLS = true".to_string());
    }
    if let Some(level) = c.tls_auth_level {
        needs.push(format!("TlsAuthLevel = {:?}", level_name(level)));
    }
    if c.domain_secure_enabled {
        needs.push("DomainSecureEnabled = true".to_string());
    }
    if c.smart_host_auth_mechanism != AuthMechanism::None {
        let (name, _) = AUTH_MECHANISMS
            .iter()
            .find(|(_, m)| *m == c.smart_host_auth_mechanism)
            .expect("every mechanism is listed");
        needs.push(format!("SmartHostAuthMechanism = {name:?}"));
    }
    if needs.is_empty() {
        return;
    }
    ctx.error(
        lines.of("ForceHELO"),
        "ForceHELO",
        format!(
            "cannot be true with {}: HELO gets no ESMTP extensions, so STARTTLS and AUTH are never offered and every message would be deferred",
            needs.join(", ")
        ),
    );
}

fn level_name(level: TlsLevel) -> &'static str {
    TLS_LEVELS
        .iter()
        .find(|(_, l)| *l == level)
        .map(|(n, _)| *n)
        .expect("every level is listed")
}
