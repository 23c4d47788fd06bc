//! Parsers for single string values (domains, addresses, smart hosts, address spaces).
//!
//! Each returns `Err(reason)` with a complete sentence that quotes the offending value, so the
//! caller only has to prefix `file:line: key:`.

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

use crate::policy::{AddressSpace, DomainPattern, SmartHost};

const WILDCARD_RULE: &str = "only a leading \"*.\" (the domain and all its subdomains) or \"*\" alone (every domain) is allowed";

/// A domain pattern: `contoso.com`, `*.contoso.com` or `*`. Lower-cased, trailing dot removed.
///
/// Set-OutboundConnector -RecipientDomains: "you can't embed a wildcard character (for example,
/// `domain.*.contoso.com`)"; Set-SendConnector -AddressSpaces: "`*`, `*.com`, and
/// `*.contoso.com` are permitted, but `*contoso.com` is not".
pub fn domain_pattern(s: &str) -> Result<DomainPattern, String> {
    let lower = normalize_domain(s)?;
    if lower == "*" {
        return Ok(DomainPattern::Any);
    }
    if let Some(suffix) = lower.strip_prefix("*.") {
        if suffix.contains('*') {
            return Err(format!(
                "{s:?} has a wildcard in the wrong place; {WILDCARD_RULE}"
            ));
        }
        return Ok(DomainPattern::Subdomains(a_label_name(s, suffix)?));
    }
    if lower.contains('*') {
        return Err(format!(
            "{s:?} has a wildcard in the wrong place; {WILDCARD_RULE}"
        ));
    }
    Ok(DomainPattern::Exact(a_label_name(s, &lower)?))
}

/// A plain host or domain name without wildcards (`Fqdn`, smart host names).
pub fn host_name(s: &str) -> Result<String, String> {
    let lower = normalize_domain(s)?;
    if lower.contains('*') {
        return Err(format!(
            "{s:?} must be a host name; wildcards are not allowed here"
        ));
    }
    a_label_name(s, &lower)
}

fn normalize_domain(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the value is empty; expected a domain such as \"contoso.com\"".to_string());
    }
    let lower = s.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    Ok(lower.to_string())
}

/// `name` (a part of `original`) in the one form every comparison uses: lower-case
/// A-labels (`bücher.de` → `xn--bcher-kva.de`, see [`crate::dns::idn`]), then checked
/// for DNS shape.
fn a_label_name(original: &str, name: &str) -> Result<String, String> {
    let ascii = crate::dns::idn::to_ascii(name).map_err(|e| {
        format!(
            "{original:?} is not a valid domain name: {}; write it in Unicode (\"bücher.de\") or as its A-label (\"xn--bcher-kva.de\")",
            e.why
        )
    })?;
    check_domain(original, &ascii)?;
    Ok(ascii.into_owned())
}

/// RFC 1035 shape: labels of 1-63 letters, digits or hyphens (not at either end), at most
/// 253 characters in all. Underscores are tolerated because real names (`_mta-sts`) use them.
fn check_domain(original: &str, name: &str) -> Result<(), String> {
    let invalid = |why: String| Err(format!("{original:?} is not a valid domain name: {why}"));
    if name.len() > 253 {
        return invalid("it is longer than 253 characters".to_string());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return invalid("it has an empty label (two dots in a row, or a leading dot)".into());
        }
        if label.len() > 63 {
            return invalid(format!("the label {label:?} is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
        {
            return invalid(format!(
                "{c:?} is not allowed; use letters, digits and hyphens (punycode \"xn--\" for international names)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return invalid(format!("the label {label:?} starts or ends with a hyphen"));
        }
    }
    Ok(())
}

/// Outcome of parsing one `SenderIPAddresses` entry.
#[derive(Debug, PartialEq, Eq)]
pub struct IpRanges {
    pub nets: Vec<IpNet>,
    /// Set when the entry was a CIDR with host bits set (`10.0.0.1/24`): the normalized net.
    pub truncated_from: Option<IpNet>,
}

/// One `SenderIPAddresses` entry: an IP (`10.0.0.1`, `2001:db8::1`), a CIDR (`10.0.0.0/24`) or
/// an Exchange range (`192.168.0.1-192.168.0.254`, converted to the covering CIDR blocks).
pub fn ip_ranges(s: &str) -> Result<IpRanges, String> {
    let not_ip = || {
        format!(
            "{s:?} is not an IP address, CIDR range (10.0.0.0/24) or address range (10.0.0.1-10.0.0.9)"
        )
    };
    if let Some((from, to)) = s.split_once('-') {
        let (from, to) = (
            IpAddr::from_str(from.trim()).map_err(|_| not_ip())?,
            IpAddr::from_str(to.trim()).map_err(|_| not_ip())?,
        );
        let nets: Vec<IpNet> = match (from, to) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
                Ipv4Subnets::new(a, b, 0).map(IpNet::V4).collect()
            }
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => {
                Ipv6Subnets::new(a, b, 0).map(IpNet::V6).collect()
            }
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                return Err(format!(
                    "{s:?} is an address range whose start is after its end"
                ));
            }
            _ => return Err(format!("{s:?} mixes IPv4 and IPv6 in one range")),
        };
        return Ok(IpRanges {
            nets,
            truncated_from: None,
        });
    }
    if s.contains('/') {
        let net = IpNet::from_str(s).map_err(|_| cidr_reason(s))?;
        let trunc = net.trunc();
        return Ok(IpRanges {
            nets: vec![trunc],
            truncated_from: (trunc != net).then_some(net),
        });
    }
    let ip = IpAddr::from_str(s).map_err(|_| not_ip())?;
    Ok(IpRanges {
        nets: vec![IpNet::from(ip)],
        truncated_from: None,
    })
}

/// Says precisely what is wrong with a string containing '/'.
fn cidr_reason(s: &str) -> String {
    let (addr, prefix) = s.split_once('/').unwrap_or((s, ""));
    match (IpAddr::from_str(addr), prefix.parse::<u8>()) {
        (Ok(ip), Ok(p)) => {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            format!(
                "{s:?} is not an IP address or CIDR range: the prefix length /{p} is larger than {max}"
            )
        }
        _ => format!("{s:?} is not an IP address or CIDR range"),
    }
}

/// A smart host: FQDN, IP literal or CIDR (as Set-OutboundConnector documents), plus
/// `host:port`, `1.2.3.4:25` and `[2001:db8::1]:25` as a lab extension. A bare IPv6 literal
/// (`::1`) is an address, never `host:port`.
pub fn smart_host(s: &str) -> Result<SmartHost, String> {
    if s.is_empty() {
        return Err("the value is empty; expected a host name, IP address or CIDR range".into());
    }
    if s.contains('*') {
        return Err(format!(
            "{s:?} is not a smart host: wildcards are not allowed; give a host name, IP address or CIDR range"
        ));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (addr, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("{s:?} is missing the closing \"]\""))?;
        let addr =
            IpAddr::from_str(addr).map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        let port = match after {
            "" => None,
            _ => Some(port(
                s,
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("{s:?} has text after \"]\" that is not \":port\""))?,
            )?),
        };
        return Ok(SmartHost::Ip { addr, port });
    }
    if s.contains('/') {
        let net = IpNet::from_str(s).map_err(|_| cidr_reason(s))?;
        return Ok(SmartHost::Cidr {
            net: net.trunc(),
            port: None,
        });
    }
    if let Ok(addr) = IpAddr::from_str(s) {
        return Ok(SmartHost::Ip { addr, port: None });
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, p)) if !host.contains(':') => (host, Some(port(s, p)?)),
        Some(_) => {
            return Err(format!(
                "{s:?} is not a valid IPv6 address; write an IPv6 smart host with a port as \"[2001:db8::1]:25\""
            ));
        }
        None => (s, None),
    };
    if let Ok(addr) = IpAddr::from_str(host) {
        return Ok(SmartHost::Ip { addr, port });
    }
    let host = host_name(host)?;
    Ok(SmartHost::Name { host, port })
}

fn port(whole: &str, p: &str) -> Result<u16, String> {
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{whole:?} has an invalid port {p:?}; expected a number from 1 to 65535"
        )),
    }
}

/// `ip:port` (`127.0.0.1:2525`, `[::1]:25`).
pub fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(s).map_err(|_| {
        format!("{s:?} is not an address with a port; expected \"ip:port\" such as \"127.0.0.1:2525\" or \"[::1]:2525\"")
    })
}

/// A DNS server: `ip:port`, or a bare IP meaning port 53.
pub fn dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(ip) = IpAddr::from_str(s) {
        return Ok(SocketAddr::new(ip, 53));
    }
    SocketAddr::from_str(s).map_err(|_| {
        format!("{s:?} is not a DNS server address; expected an IP (port 53) or \"ip:port\" such as \"127.0.0.1:5353\"")
    })
}

/// One `AddressSpaces` entry: `[type:]domain[;cost]`. Set-SendConnector: "If you omit the
/// address space type, SMTP is assumed", "The valid input range for the cost is from 1 through
/// 100 ... If you omit the address space cost, a cost of 1 is assumed". A relay routes SMTP
/// only, so other types (X400, custom) are rejected rather than silently never matched.
pub fn address_space(s: &str) -> Result<AddressSpace, String> {
    let (typ, rest) = match s.split_once(':') {
        Some((typ, rest)) => (typ, rest),
        None => ("SMTP", s),
    };
    if !typ.eq_ignore_ascii_case("SMTP") {
        return Err(format!(
            "{s:?} has address space type {typ:?}; this relay routes SMTP only, so write \"SMTP:domain;cost\" or \"domain;cost\""
        ));
    }
    let (domain, cost) = match rest.split_once(';') {
        Some((domain, cost)) => (domain, parse_cost(s, cost)?),
        None => (rest, 1),
    };
    let domain = domain_pattern(domain).map_err(|e| format!("in {s:?}: {e}"))?;
    Ok(AddressSpace { domain, cost })
}

fn parse_cost(whole: &str, cost: &str) -> Result<u8, String> {
    match cost.trim().parse::<u32>() {
        Ok(n @ 1..=100) => Ok(n as u8),
        _ => Err(format!(
            "{whole:?} has cost {cost:?}; the cost must be a whole number from 1 to 100"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact(s: &str) -> DomainPattern {
        DomainPattern::Exact(s.into())
    }

    #[test]
    fn domain_patterns() {
        assert_eq!(domain_pattern("Contoso.COM."), Ok(exact("contoso.com")));
        assert_eq!(
            domain_pattern("*.Contoso.com"),
            Ok(DomainPattern::Subdomains("contoso.com".into()))
        );
        assert_eq!(domain_pattern("*"), Ok(DomainPattern::Any));
        assert_eq!(
            domain_pattern("*.com"),
            Ok(DomainPattern::Subdomains("com".into()))
        );
        assert_eq!(
            domain_pattern("_mta-sts.contoso.com"),
            Ok(exact("_mta-sts.contoso.com"))
        );
        assert_eq!(domain_pattern("localhost"), Ok(exact("localhost")));
    }

    #[test]
    fn international_domains_are_kept_as_a_labels() {
        let a = exact("xn--exmple-cua.test");
        assert_eq!(domain_pattern("exämple.test"), Ok(a.clone()));
        assert_eq!(domain_pattern("EXÄMPLE.test."), Ok(a.clone()));
        assert_eq!(domain_pattern("xn--exmple-cua.test"), Ok(a));
        assert_eq!(
            domain_pattern("*.bücher.de"),
            Ok(DomainPattern::Subdomains("xn--bcher-kva.de".into()))
        );
        assert_eq!(host_name("mx.bücher.de"), Ok("mx.xn--bcher-kva.de".into()));
        assert_eq!(
            address_space("SMTP:*.bücher.de;5"),
            Ok(AddressSpace {
                domain: DomainPattern::Subdomains("xn--bcher-kva.de".into()),
                cost: 5
            })
        );
        assert_eq!(
            domain_pattern("xn--zz.test").unwrap_err(),
            "\"xn--zz.test\" is not a valid domain name: it is not a valid internationalized domain name (IDNA, UTS #46); write it in Unicode (\"bücher.de\") or as its A-label (\"xn--bcher-kva.de\")"
        );
    }

    #[test]
    fn bad_domain_patterns() {
        for bad in [
            "",
            "mail.*.contoso.com",
            "contoso.*",
            "*contoso.com",
            "*.*.contoso.com",
            "**",
            "contoso..com",
            ".contoso.com",
            "con toso.com",
            " contoso.com",
            "-contoso.com",
            "contoso-.com",
            "xn--zz.contoso.com",
            "bü\u{fffd}cher.de",
            ".",
        ] {
            assert!(domain_pattern(bad).is_err(), "{bad:?} should be rejected");
        }
        let long_label = format!("{}.com", "a".repeat(64));
        assert!(domain_pattern(&long_label).is_err());
        let long_name = ["a".repeat(63).as_str(); 5].join(".");
        assert!(domain_pattern(&long_name).is_err());
        assert_eq!(
            domain_pattern("contoso.*").unwrap_err(),
            "\"contoso.*\" has a wildcard in the wrong place; only a leading \"*.\" (the domain and all its subdomains) or \"*\" alone (every domain) is allowed"
        );
    }

    #[test]
    fn ip_entries() {
        let one = |s: &str| ip_ranges(s).unwrap().nets;
        assert_eq!(
            one("10.0.0.1"),
            vec!["10.0.0.1/32".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            one("2001:db8::1"),
            vec!["2001:db8::1/128".parse::<IpNet>().unwrap()]
        );
        assert_eq!(
            one("10.0.0.0/8"),
            vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]
        );
        let host_bits = ip_ranges("10.0.0.1/24").unwrap();
        assert_eq!(
            host_bits.nets,
            vec!["10.0.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert!(host_bits.truncated_from.is_some());
        assert_eq!(
            one("192.168.0.0-192.168.0.255"),
            vec!["192.168.0.0/24".parse::<IpNet>().unwrap()]
        );
        assert_eq!(one("10.0.0.1-10.0.0.2").len(), 2);
        for bad in [
            "10.0.0.0/33",
            "2001:db8::/129",
            "garbage",
            "10.0.0.9-10.0.0.1",
            "10.0.0.1-::1",
            "",
        ] {
            assert!(ip_ranges(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn smart_hosts() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(
            smart_host("Mail.Contoso.com"),
            Ok(SmartHost::Name {
                host: "mail.contoso.com".into(),
                port: None
            })
        );
        assert_eq!(
            smart_host("mail.contoso.com:2525"),
            Ok(SmartHost::Name {
                host: "mail.contoso.com".into(),
                port: Some(2525)
            })
        );
        assert_eq!(
            smart_host("1.2.3.4:25"),
            Ok(SmartHost::Ip {
                addr: ip("1.2.3.4"),
                port: Some(25)
            })
        );
        assert_eq!(
            smart_host("10.10.1.1"),
            Ok(SmartHost::Ip {
                addr: ip("10.10.1.1"),
                port: None
            })
        );
        assert_eq!(
            smart_host("::1"),
            Ok(SmartHost::Ip {
                addr: ip("::1"),
                port: None
            })
        );
        assert_eq!(
            smart_host("[2001:db8::1]:2526"),
            Ok(SmartHost::Ip {
                addr: ip("2001:db8::1"),
                port: Some(2526)
            })
        );
        assert_eq!(
            smart_host("[::1]"),
            Ok(SmartHost::Ip {
                addr: ip("::1"),
                port: None
            })
        );
        assert_eq!(
            smart_host("192.168.0.1/25"),
            Ok(SmartHost::Cidr {
                net: "192.168.0.0/25".parse().unwrap(),
                port: None
            })
        );
        for bad in [
            "",
            "*.contoso.com",
            "host:0",
            "host:65536",
            "host:",
            "[::1]:x",
            "[::1",
            "[nope]:25",
            "10.0.0.0/40",
            "a..b",
            "1:2:3:zz",
            "[::1]25",
        ] {
            assert!(smart_host(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn socket_addrs() {
        assert_eq!(
            socket_addr("127.0.0.1:2525"),
            Ok("127.0.0.1:2525".parse().unwrap())
        );
        assert_eq!(socket_addr("[::1]:25"), Ok("[::1]:25".parse().unwrap()));
        assert!(socket_addr("127.0.0.1").is_err());
        assert!(socket_addr("localhost:25").is_err());
        assert_eq!(dns_server("9.9.9.9"), Ok("9.9.9.9:53".parse().unwrap()));
        assert_eq!(dns_server("::1"), Ok("[::1]:53".parse().unwrap()));
        assert_eq!(
            dns_server("127.0.0.1:5353"),
            Ok("127.0.0.1:5353".parse().unwrap())
        );
        assert!(dns_server("dns.google").is_err());
    }

    #[test]
    fn address_spaces() {
        let a = |s: &str| address_space(s).unwrap();
        assert_eq!(
            a("SMTP:*.contoso.com;2"),
            AddressSpace {
                domain: DomainPattern::Subdomains("contoso.com".into()),
                cost: 2
            }
        );
        assert_eq!(
            a("contoso.com;1"),
            AddressSpace {
                domain: exact("contoso.com"),
                cost: 1
            }
        );
        assert_eq!(
            a("contoso.com"),
            AddressSpace {
                domain: exact("contoso.com"),
                cost: 1
            }
        );
        assert_eq!(
            a("smtp:*;100"),
            AddressSpace {
                domain: DomainPattern::Any,
                cost: 100
            }
        );
        for bad in [
            "contoso.com;0",
            "contoso.com;101",
            "contoso.com;x",
            "X400:o=MySite;p=MyOrg;1",
            "SMTP:contoso.*",
            "",
        ] {
            assert!(address_space(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
