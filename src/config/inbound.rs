//! `[[InboundConnector]]`: Set-InboundConnector (Exchange Online).

use toml_edit::TableLike;

use super::reader::{Ctx, Lines, Reader};
use super::values::domain_pattern;
use super::{CONNECTOR_SOURCES, CONNECTOR_TYPES, Env, connector_name, text};
use crate::policy::{ConnectorType, DomainPattern, InboundConnector};

pub(crate) fn build(
    ctx: &mut Ctx,
    table: &dyn TableLike,
    header: usize,
    env: &Env,
) -> (InboundConnector, Lines) {
    let errors_before = ctx.errors.len();
    let mut r = Reader::new(table, header, "");
    let c = InboundConnector {
        name: connector_name(ctx, &mut r, "InboundConnector"),
        enabled: r.bool(ctx, "Enabled", true),
        connector_type: r
            .choice(ctx, "ConnectorType", &CONNECTOR_TYPES)
            .unwrap_or(ConnectorType::Partner),
        sender_domains: r
            .parsed_list(ctx, "SenderDomains", domain_pattern)
            .unwrap_or_default(),
        sender_ip_addresses: r
            .ip_nets(ctx, "SenderIPAddresses")
            .into_iter()
            .map(|(net, _)| net)
            .collect(),
        tls_sender_certificate_name: r.parsed(ctx, "TlsSenderCertificateName", domain_pattern),
        tls_sender_certificate_issuer: r
            .parsed_list(ctx, "TlsSenderCertificateIssuer", issuer_name)
            .unwrap_or_default(),
        require_tls: r.bool(ctx, "RequireTls", false),
        restrict_domains_to_ip_addresses: r.bool(ctx, "RestrictDomainsToIPAddresses", false),
        restrict_domains_to_certificate: r.bool(ctx, "RestrictDomainsToCertificate", false),
        cloud_services_mail_enabled: r.bool(ctx, "CloudServicesMailEnabled", false),
        treat_messages_as_internal: r.bool(ctx, "TreatMessagesAsInternal", false),
        associated_accepted_domains: r
            .parsed_list(ctx, "AssociatedAcceptedDomains", domain_pattern)
            .unwrap_or_default(),
        comment: text(ctx, &mut r, "Comment"),
        connector_source: r
            .choice(ctx, "ConnectorSource", &CONNECTOR_SOURCES)
            .map(String::from),
    };
    let lines = r.lines.clone();
    r.finish(ctx, "[[InboundConnector]]");
    // Rules between keys are only meaningful once every value parsed; otherwise a bad entry
    // would also show up as a "missing" key.
    if ctx.errors.len() == errors_before {
        rules(ctx, &c, &lines, env);
    }
    (c, lines)
}

/// `TlsSenderCertificateIssuer`: an issuer DN (`CN=Fabrikam CA, O=Fabrikam`) or CN, kept
/// as written (compared without case and spacing, see `policy::dn`).
fn issuer_name(s: &str) -> Result<String, String> {
    crate::policy::dn::parse_dn_or_cn(s).map(|()| s.trim().to_string())
}

fn rules(ctx: &mut Ctx, c: &InboundConnector, lines: &Lines, env: &Env) {
    let on_prem = c.connector_type == ConnectorType::OnPremises;
    // Set-InboundConnector -TreatMessagesAsInternal: "an alternative method to identify
    // messages sent from an on-premises organization as internal messages".
    if c.treat_messages_as_internal && !on_prem {
        ctx.error(
            lines.of("TreatMessagesAsInternal"),
            "TreatMessagesAsInternal",
            "requires ConnectorType = \"OnPremises\"; only mail from the organization's own servers may be treated as internal",
        );
    }
    // -RestrictDomainsToIPAddresses "rejects mail from the domains specified by the
    // SenderDomains parameter if the mail originates from an IP address that isn't specified
    // by the SenderIPAddresses parameter": both lists are needed.
    if c.restrict_domains_to_ip_addresses
        && (c.sender_ip_addresses.is_empty() || c.sender_domains.is_empty())
    {
        ctx.error(
            lines.of("RestrictDomainsToIPAddresses"),
            "RestrictDomainsToIPAddresses",
            "requires both SenderDomains and SenderIPAddresses (mail from those domains is accepted only from those addresses)",
        );
    }
    // -RestrictDomainsToCertificate "rejects mail that originates from a namespace not
    // specified by the TlsSenderCertificateName parameter".
    if c.restrict_domains_to_certificate && c.tls_sender_certificate_name.is_none() {
        ctx.error(
            lines.of("RestrictDomainsToCertificate"),
            "RestrictDomainsToCertificate",
            "requires TlsSenderCertificateName (the certificate domain senders must present)",
        );
    }
    identification_rules(ctx, c, lines);
    issuer_rules(ctx, c, lines);
    on_premises_domain_rules(ctx, c, lines, env);
    // -TlsSenderCertificateName "specifies the certificate used by the sender's domain when
    // the RequireTls parameter is set to $true".
    if c.tls_sender_certificate_name.is_some() && !c.require_tls {
        ctx.warn(
            lines.of("TlsSenderCertificateName"),
            "TlsSenderCertificateName",
            "is set but RequireTls is false; set RequireTls = true so senders cannot skip TLS",
        );
    }
    // A Partner connector with SenderDomains is chosen by the sender's domain; its
    // SenderIPAddresses only take part with RestrictDomainsToIPAddresses (policy.md), so
    // without it they are written and never used.
    if c.connector_type == ConnectorType::Partner
        && !c.sender_domains.is_empty()
        && !c.sender_ip_addresses.is_empty()
        && !c.restrict_domains_to_ip_addresses
    {
        ctx.warn(
            lines.of("SenderIPAddresses"),
            "SenderIPAddresses",
            "is not used: this Partner connector is chosen by SenderDomains, and its addresses only count with RestrictDomainsToIPAddresses = true (then mail from these domains is accepted only from these addresses)",
        );
    }
    // -AssociatedAcceptedDomains: "the accepted domains that the connector applies to".
    for domain in &c.associated_accepted_domains {
        let name = domain.to_string();
        if !is_accepted_pattern(env, domain) {
            ctx.error(
                lines.of("AssociatedAcceptedDomains"),
                "AssociatedAcceptedDomains",
                format!("{name:?} is not one of the AcceptedDomains in [Relay]"),
            );
        }
    }
}

/// How the relay recognizes the connector's senders. An OnPremises connector identifies the
/// organization's own servers, which only an IP or a certificate can prove (a sender domain
/// is forgeable); a Partner connector needs at least one criterion or it matches nothing.
fn identification_rules(ctx: &mut Ctx, c: &InboundConnector, lines: &Lines) {
    let has_ip = !c.sender_ip_addresses.is_empty();
    let has_cert = c.tls_sender_certificate_name.is_some();
    match c.connector_type {
        ConnectorType::OnPremises if !has_ip && !has_cert => ctx.error(
            lines.of("ConnectorType"),
            "ConnectorType",
            "an OnPremises connector needs SenderIPAddresses or TlsSenderCertificateName to recognize the organization's servers",
        ),
        ConnectorType::Partner if !has_ip && !has_cert && c.sender_domains.is_empty() => ctx.error(
            lines.header,
            "InboundConnector",
            "a Partner connector needs at least one of SenderDomains, SenderIPAddresses or TlsSenderCertificateName",
        ),
        _ => {}
    }
}

/// Is every domain `pattern` covers an accepted domain (`*.contoso.com` is when contoso.com
/// is, as Exchange's usage of `*.` includes the domain itself)?
fn is_accepted_pattern(env: &Env, pattern: &DomainPattern) -> bool {
    let name = pattern.to_string();
    let probe = name.trim_start_matches("*.");
    env.accepted_domains.iter().any(|a| a.matches(probe))
}

/// `TlsSenderCertificateIssuer` (extension key, the admin centre's "Require certificate
/// from specific issuer", shown under Require TLS): a certificate is only presented under
/// TLS, so the connector must require it.
fn issuer_rules(ctx: &mut Ctx, c: &InboundConnector, lines: &Lines) {
    let key = "TlsSenderCertificateIssuer";
    if !c.tls_sender_certificate_issuer.is_empty() && !c.require_tls {
        ctx.error(
            lines.of(key),
            key,
            "requires RequireTls = true (a certificate is only presented under TLS)",
        );
    }
}

/// `SenderDomains` of an OnPremises connector: the organization's own domains ("Use this
/// value for accepted domains ... that are also specified by the SenderDomains parameter").
/// They never attribute a session (a sender domain is forgeable; the connector is
/// recognized by IP or certificate): they only count with RestrictDomainsToIPAddresses,
/// which refuses mail from them sent from elsewhere.
fn on_premises_domain_rules(ctx: &mut Ctx, c: &InboundConnector, lines: &Lines, env: &Env) {
    if c.connector_type != ConnectorType::OnPremises || c.sender_domains.is_empty() {
        return;
    }
    let key = "SenderDomains";
    if !c.restrict_domains_to_ip_addresses {
        ctx.warn(
            lines.of(key),
            key,
            "is not used: an OnPremises connector is recognized by SenderIPAddresses or TlsSenderCertificateName, never by the sender's domain; with RestrictDomainsToIPAddresses = true, mail from these domains is refused unless it comes from SenderIPAddresses",
        );
    }
    for domain in c
        .sender_domains
        .iter()
        .filter(|d| !is_accepted_pattern(env, d))
    {
        ctx.warn(
            lines.of(key),
            key,
            format!(
                "{:?} is not one of the AcceptedDomains in [Relay]; an OnPremises connector's SenderDomains are the organization's own domains",
                domain.to_string()
            ),
        );
    }
}
