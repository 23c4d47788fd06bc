//! One human-readable line per connector, printed by `connector-relay check`.

use crate::policy::{
    AddressSpace, ConnectorType, InboundConnector, OutboundConnector, Policy, SendConnector,
    SmartHost, TlsLevel,
};

/// A `Relay` line, then one line per inbound, outbound and send connector, in file order.
pub fn summary(policy: &Policy) -> Vec<String> {
    let mut out = vec![relay_line(policy)];
    out.extend(policy.inbound.iter().map(inbound_line));
    out.extend(policy.outbound.iter().map(outbound_line));
    out.extend(policy.send.iter().map(send_line));
    out
}

fn relay_line(policy: &Policy) -> String {
    let r = &policy.relay;
    let mut listen: Vec<String> = r.listen.iter().map(ToString::to_string).collect();
    listen.extend(
        r.implicit_tls_listen
            .iter()
            .map(|a| format!("{a} (implicit TLS)")),
    );
    // The trace store only when it is not the default (the URL's password hidden).
    let trace = match &r.trace_store {
        crate::trace::StoreTarget::Sqlite => String::new(),
        other => format!("; trace store: {}", other.describe()),
    };
    // Said only when set: behind a balancer, whose headers the listeners then require.
    let proxy = match r.proxy_protocol_from.as_slice() {
        [] => String::new(),
        nets => format!(
            "; PROXY protocol required from {}",
            nets.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    format!(
        "Relay    {} listen {}{proxy}; STARTTLS {}; accepted domains: {}{trace}",
        r.fqdn,
        join_or_dash(&listen),
        if r.tls_certificate.is_some() {
            "on"
        } else {
            "off"
        },
        join_or_dash(
            &r.accepted_domains
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        ),
    )
}

fn inbound_line(c: &InboundConnector) -> String {
    format!(
        "Inbound  {:?} {} {}: {} IP range(s), {} sender domain(s), cert={}, RequireTls={}",
        c.name,
        connector_type(c.connector_type),
        enabled(c.enabled),
        c.sender_ip_addresses.len(),
        c.sender_domains.len(),
        c.tls_sender_certificate_name
            .as_ref()
            .map_or_else(|| "-".to_string(), ToString::to_string),
        c.require_tls,
    )
}

fn outbound_line(c: &OutboundConnector) -> String {
    let mut scope = Vec::new();
    if c.all_accepted_domains {
        scope.push("all accepted domains".to_string());
    }
    if c.route_all_messages_via_on_premises {
        scope.push("all messages via on-premises".to_string());
    }
    if !c.recipient_domains.is_empty() {
        let domains: Vec<String> = c
            .recipient_domains
            .iter()
            .map(ToString::to_string)
            .collect();
        scope.push(format!("domains {}", domains.join(",")));
    }
    format!(
        "Outbound {:?} {} {}: {}; {}; TLS {}",
        c.name,
        connector_type(c.connector_type),
        enabled(c.enabled),
        join_or_dash(&scope),
        route(c.use_mx_record, &c.smart_hosts),
        tls(c.tls_settings, "opportunistic"),
    )
}

fn send_line(c: &SendConnector) -> String {
    let spaces: Vec<String> = c.address_spaces.iter().map(address_space).collect();
    format!(
        "Send     {:?} {}: address spaces {}; {}; port {}; RequireTLS={}, TLS {}",
        c.name,
        enabled(c.enabled),
        join_or_dash(&spaces),
        route(c.dns_routing_enabled, &c.smart_hosts),
        c.port,
        c.require_tls,
        tls(c.tls_auth_level, "-"),
    )
}

fn route(dns: bool, smart_hosts: &[SmartHost]) -> String {
    if dns {
        "MX routing".to_string()
    } else {
        let hosts: Vec<String> = smart_hosts.iter().map(smart_host).collect();
        format!("smart hosts {}", hosts.join(","))
    }
}

fn smart_host(h: &SmartHost) -> String {
    let (host, port) = match h {
        SmartHost::Name { host, port } => (host.clone(), *port),
        SmartHost::Ip { addr, port } => (addr.to_string(), *port),
        SmartHost::Cidr { net, port } => (net.to_string(), *port),
    };
    match port {
        Some(p) if host.contains(':') => format!("[{host}]:{p}"),
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

fn address_space(a: &AddressSpace) -> String {
    format!("{};{}", a.domain, a.cost)
}

fn tls(level: Option<TlsLevel>, none: &str) -> String {
    level.map_or_else(|| none.to_string(), |l| format!("{l:?}"))
}

fn connector_type(t: ConnectorType) -> &'static str {
    match t {
        ConnectorType::Partner => "Partner",
        ConnectorType::OnPremises => "OnPremises",
    }
}

fn enabled(on: bool) -> &'static str {
    if on { "enabled" } else { "disabled" }
}

fn join_or_dash(items: &[String]) -> String {
    if items.is_empty() {
        "-".to_string()
    } else {
        items.join(", ")
    }
}
