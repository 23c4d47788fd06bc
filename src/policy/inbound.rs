//! Inbound attribution: which enabled `[[InboundConnector]]` a session belongs to
//! (`shared/spec/policy.md`, "Inbound: attributing a session to a connector").
//!
//! Pure: no I/O, no clock. [`InboundTable::new`] indexes the connectors once; each
//! [`InboundTable::attribute`] call is a handful of hash lookups and two prefix-trie
//! longest-prefix matches, independent of the number of connectors.
//!
//! Order of precedence:
//! 1. an `OnPremises` connector whose `TlsSenderCertificateName` matches a client certificate
//!    name (most specific pattern over all names wins, ties: lowest index);
//! 2. an `OnPremises` connector whose `SenderIPAddresses` holds the client IP (longest prefix
//!    wins, ties: lowest index);
//! 3. a `Partner` connector whose `SenderDomains` matches the MAIL FROM domain (most specific
//!    pattern wins: `a.b.com` > `*.b.com` > `*.com` > `*`, ties: lowest index);
//! 4. a `Partner` connector without `SenderDomains`, by IP (longest prefix) and then by
//!    certificate name (most specific), ties: lowest index.
//!
//! Not attribution: the `SenderDomains` of OnPremises connectors with
//! `RestrictDomainsToIPAddresses` are indexed apart ([`InboundTable::restricting_on_premises`]):
//! they never choose a connector, they only hold the organization's own domains to that
//! connector's addresses (`restrict.rs`).
//!
//! Certificate names: a name is compared case-insensitively and without a trailing dot. A
//! plain name matches `mail.contoso.com` (that name only), `*.contoso.com` (contoso.com and
//! every subdomain) and `*`. A name holding a `*` (a wildcard SAN such as `*.contoso.com`)
//! is not expanded: it matches only the pattern written with the same text (`*.contoso.com`
//! matches the pattern `*.contoso.com`, nothing else; a `*` SAN matches only the pattern `*`).
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`), both as client addresses and as
//! `SenderIPAddresses` entries of prefix length 96 or more, are treated as the IPv4 address.

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use super::model::{ConnectorType, DomainPattern, InboundConnector};

/// What is known about a session when it is (re-)attributed.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The client address; an IPv4-mapped IPv6 address counts as the IPv4 address.
    pub ip: IpAddr,
    /// DNS names of a trusted client certificate (any SAN dNSName, or the subject CN when
    /// the certificate has no SAN); empty when there is no (trusted) certificate.
    pub cert_names: &'a [String],
    /// The MAIL FROM domain; `None` before MAIL FROM and for the null sender.
    pub sender_domain: Option<&'a str>,
}

/// The connector a session is attributed to: `index` is its position in the slice given to
/// [`InboundTable::new`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Attribution {
    pub index: usize,
    pub by: AttributedBy,
}

/// Which fact attributed the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AttributedBy {
    Certificate,
    IpAddress,
    SenderDomain,
}

impl AttributedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            AttributedBy::Certificate => "Certificate",
            AttributedBy::IpAddress => "IpAddress",
            AttributedBy::SenderDomain => "SenderDomain",
        }
    }
}

/// The attribution indexes, built once per policy.
#[derive(Debug, Clone, Default)]
pub struct InboundTable {
    /// Rule 1: `TlsSenderCertificateName` of enabled OnPremises connectors.
    on_premises_cert: PatternIndex,
    /// Rule 2: `SenderIPAddresses` of enabled OnPremises connectors.
    on_premises_ip: IpIndex,
    /// Rule 3: `SenderDomains` of enabled Partner connectors.
    partner_domains: PatternIndex,
    /// Rule 4: `SenderIPAddresses` of enabled Partner connectors without `SenderDomains`.
    partner_ip: IpIndex,
    /// Rule 4: `TlsSenderCertificateName` of enabled Partner connectors without `SenderDomains`.
    partner_cert: PatternIndex,
    /// Not attribution: `SenderDomains` of enabled OnPremises connectors with
    /// `RestrictDomainsToIPAddresses`, for [`Self::restricting_on_premises`].
    on_premises_domains: PatternIndex,
    /// Every connector's own `SenderIPAddresses` (enabled or not), for [`Self::ip_allowed`].
    allowed_ips: AllowedIps,
    /// Every connector's own `TlsSenderCertificateName`, for [`Self::cert_allowed`].
    cert_patterns: Vec<Option<DomainPattern>>,
}

impl InboundTable {
    /// Indexes the ENABLED connectors; indices in results refer to positions in `connectors`.
    /// [`Self::ip_allowed`] and [`Self::cert_allowed`] answer for every connector, enabled
    /// or not.
    pub fn new(connectors: &[InboundConnector]) -> InboundTable {
        let mut t = InboundTable {
            allowed_ips: AllowedIps::new(connectors),
            cert_patterns: connectors
                .iter()
                .map(|c| c.tls_sender_certificate_name.clone())
                .collect(),
            ..InboundTable::default()
        };
        for (i, c) in connectors.iter().enumerate() {
            if !c.enabled {
                continue;
            }
            let i = u32::try_from(i).expect("fewer than 2^32 inbound connectors");
            let (ip, cert) = match c.connector_type {
                ConnectorType::OnPremises => {
                    if c.restrict_domains_to_ip_addresses {
                        for d in &c.sender_domains {
                            t.on_premises_domains.insert(d, i);
                        }
                    }
                    (&mut t.on_premises_ip, &mut t.on_premises_cert)
                }
                ConnectorType::Partner if c.sender_domains.is_empty() => {
                    (&mut t.partner_ip, &mut t.partner_cert)
                }
                ConnectorType::Partner => {
                    for d in &c.sender_domains {
                        t.partner_domains.insert(d, i);
                    }
                    continue;
                }
            };
            for net in &c.sender_ip_addresses {
                ip.insert(*net, i);
            }
            if let Some(p) = &c.tls_sender_certificate_name {
                cert.insert(p, i);
            }
        }
        t
    }

    /// The connector the session belongs to, if any (see the module documentation for the
    /// order of precedence).
    pub fn attribute(&self, facts: &Facts<'_>) -> Option<Attribution> {
        let ip = canonical_ip(facts.ip);
        let found = |index: u32, by| {
            Some(Attribution {
                index: index as usize,
                by,
            })
        };
        if let Some(i) = self.on_premises_cert.lookup_cert_names(facts.cert_names) {
            return found(i, AttributedBy::Certificate);
        }
        if let Some(i) = self.on_premises_ip.lookup(ip) {
            return found(i, AttributedBy::IpAddress);
        }
        if let Some(domain) = facts.sender_domain
            && let Some((_, i)) = self.partner_domains.lookup_domain(&normalize_name(domain))
        {
            return found(i, AttributedBy::SenderDomain);
        }
        if let Some(i) = self.partner_ip.lookup(ip) {
            return found(i, AttributedBy::IpAddress);
        }
        if let Some(i) = self.partner_cert.lookup_cert_names(facts.cert_names) {
            return found(i, AttributedBy::Certificate);
        }
        None
    }

    /// The enabled OnPremises connector with `RestrictDomainsToIPAddresses` whose
    /// `SenderDomains` match `sender_domain` (most specific pattern, ties: lowest index).
    /// Its domains are the organization's own: mail from them is accepted only from its
    /// `SenderIPAddresses`, whatever connector the session is attributed to. An OnPremises
    /// connector is never *attributed* by a sender domain, which anyone can write.
    pub fn restricting_on_premises(&self, sender_domain: &str) -> Option<usize> {
        self.on_premises_domains
            .lookup_domain(&normalize_name(sender_domain))
            .map(|(_, i)| i as usize)
    }

    /// The Partner connector whose `SenderDomains` match `domain` best (rule 3 alone).
    pub fn sender_domain_connector(&self, domain: &str) -> Option<usize> {
        self.partner_domains
            .lookup_domain(&normalize_name(domain))
            .map(|(_, i)| i as usize)
    }

    /// Is `ip` in the `SenderIPAddresses` of connector `index`? (`RestrictDomainsToIPAddresses`.)
    /// A binary search over that connector's own merged address ranges. `false` for an index
    /// out of range.
    pub fn ip_allowed(&self, index: usize, ip: IpAddr) -> bool {
        self.allowed_ips.contains(index, canonical_ip(ip))
    }

    /// Does any of `cert_names` match connector `index`'s `TlsSenderCertificateName`?
    /// (`RestrictDomainsToCertificate`.) `false` when the connector has none, for an empty
    /// `cert_names`, and for an index out of range.
    pub fn cert_allowed(&self, index: usize, cert_names: &[String]) -> bool {
        let Some(Some(pattern)) = self.cert_patterns.get(index) else {
            return false;
        };
        cert_names
            .iter()
            .any(|n| cert_name_matches(pattern, &normalize_name(n)))
    }
}

/// Does one certificate name (already normalized) match a pattern? Same rule as the index.
fn cert_name_matches(pattern: &DomainPattern, name: &str) -> bool {
    if name.contains('*') {
        // A wildcard (or otherwise starred) name: equal text only.
        return match (pattern, name.strip_prefix("*.")) {
            (DomainPattern::Subdomains(s), Some(rest)) => s == rest,
            (DomainPattern::Any, _) => name == "*",
            _ => false,
        };
    }
    pattern.matches(name)
}

/// Lower-case (ASCII) and without trailing dots; borrows when there is nothing to change.
fn normalize_name(name: &str) -> Cow<'_, str> {
    let name = name.trim_end_matches('.');
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(name.to_ascii_lowercase())
    } else {
        Cow::Borrowed(name)
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`; anything else unchanged.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}

/// A configured network, canonical: host bits cleared, `::ffff:0:0/96`-and-longer prefixes
/// turned into the IPv4 network they cover.
fn canonical_net(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(
                Ipv4Net::new(v4, n.prefix_len() - 96)
                    .expect("96..=128 minus 96 is a valid IPv4 prefix length")
                    .trunc(),
            ),
            None => IpNet::V6(n.trunc()),
        },
        other => other.trunc(),
    }
}

/// Specificity of a pattern match, higher wins: exact (2, len) > `*.suffix` (1, len) > `*`.
type Specificity = (u8, usize);

/// Domain patterns → the lowest connector index that lists each pattern.
///
/// Exact names and `*.suffix` patterns are kept in two hash maps; a lookup tries the exact
/// name, then every suffix from the longest (the name itself) to the shortest, then `*`:
/// at most `labels + 2` hash lookups.
#[derive(Debug, Clone, Default)]
struct PatternIndex {
    exact: HashMap<Box<str>, u32>,
    subdomains: HashMap<Box<str>, u32>,
    any: Option<u32>,
}

impl PatternIndex {
    /// Connectors are inserted in configuration order: the first index for a pattern stays.
    fn insert(&mut self, pattern: &DomainPattern, index: u32) {
        let (map, key) = match pattern {
            DomainPattern::Any => {
                self.any.get_or_insert(index);
                return;
            }
            DomainPattern::Exact(e) => (&mut self.exact, e),
            DomainPattern::Subdomains(s) => (&mut self.subdomains, s),
        };
        // Patterns come from config already normalized; normalize again so that a
        // hand-built model cannot defeat the lookup.
        let key: Box<str> = normalize_name(key).into();
        if let Entry::Vacant(v) = map.entry(key) {
            v.insert(index);
        }
    }

    fn is_empty(&self) -> bool {
        self.any.is_none() && self.exact.is_empty() && self.subdomains.is_empty()
    }

    /// The most specific pattern matching `domain` (lower-case, no trailing dot).
    fn lookup_domain(&self, domain: &str) -> Option<(Specificity, u32)> {
        if let Some(&i) = self.exact.get(domain) {
            return Some(((2, domain.len()), i));
        }
        if !self.subdomains.is_empty() {
            // `*.suffix` matches the suffix itself: start with the whole name.
            let mut suffix = domain;
            loop {
                if let Some(&i) = self.subdomains.get(suffix) {
                    return Some(((1, suffix.len()), i));
                }
                match suffix.find('.') {
                    Some(dot) => suffix = &suffix[dot + 1..],
                    None => break,
                }
            }
        }
        self.any.map(|i| ((0, 0), i))
    }

    /// The best pattern for one certificate name (lower-case, no trailing dot).
    fn lookup_cert(&self, name: &str) -> Option<(Specificity, u32)> {
        if !name.contains('*') {
            return self.lookup_domain(name);
        }
        // A starred name is not expanded: equal text only.
        if name == "*" {
            return self.any.map(|i| ((0, 0), i));
        }
        let rest = name.strip_prefix("*.")?;
        self.subdomains.get(rest).map(|&i| ((1, rest.len()), i))
    }

    /// The most specific pattern over all names; ties: lowest index.
    fn lookup_cert_names(&self, names: &[String]) -> Option<u32> {
        if names.is_empty() || self.is_empty() {
            return None;
        }
        names
            .iter()
            .filter_map(|n| self.lookup_cert(&normalize_name(n)))
            .max_by(|(sa, ia), (sb, ib)| sa.cmp(sb).then(ib.cmp(ia)))
            .map(|(_, i)| i)
    }
}

/// Longest-prefix-match tries (one per address family) → the lowest connector index that
/// lists each prefix.
#[derive(Debug, Clone, Default)]
struct IpIndex {
    v4: PrefixMap<Ipv4Net, u32>,
    v6: PrefixMap<Ipv6Net, u32>,
}

impl IpIndex {
    fn insert(&mut self, net: IpNet, index: u32) {
        // Inserted in configuration order: the first index for a prefix stays.
        match canonical_net(net) {
            IpNet::V4(n) => {
                if self.v4.get(&n).is_none() {
                    self.v4.insert(n, index);
                }
            }
            IpNet::V6(n) => {
                if self.v6.get(&n).is_none() {
                    self.v6.insert(n, index);
                }
            }
        }
    }

    /// `ip` must already be canonical.
    fn lookup(&self, ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(a) => self.v4.get_lpm(&Ipv4Net::from(a)).map(|(_, &i)| i),
            IpAddr::V6(a) => self.v6.get_lpm(&Ipv6Net::from(a)).map(|(_, &i)| i),
        }
    }
}

/// Every connector's `SenderIPAddresses` as sorted, merged, inclusive address ranges, all
/// connectors in one flat vector per family; `*_start[i]..*_start[i + 1]` are connector
/// `i`'s ranges. A membership test is a binary search over that connector's ranges only.
#[derive(Debug, Clone, Default)]
struct AllowedIps {
    v4: Vec<(u32, u32)>,
    v4_start: Vec<usize>,
    v6: Vec<(u128, u128)>,
    v6_start: Vec<usize>,
}

impl AllowedIps {
    fn new(connectors: &[InboundConnector]) -> AllowedIps {
        let mut a = AllowedIps {
            v4_start: vec![0],
            v6_start: vec![0],
            ..AllowedIps::default()
        };
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for c in connectors {
            v4.clear();
            v6.clear();
            for net in &c.sender_ip_addresses {
                match canonical_net(*net) {
                    IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                    IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
                }
            }
            merge_into(&mut v4, &mut a.v4);
            merge_into(&mut v6, &mut a.v6);
            a.v4_start.push(a.v4.len());
            a.v6_start.push(a.v6.len());
        }
        a
    }

    fn contains(&self, index: usize, ip: IpAddr) -> bool {
        if index + 1 >= self.v4_start.len() {
            return false;
        }
        match ip {
            IpAddr::V4(addr) => {
                let ranges = &self.v4[self.v4_start[index]..self.v4_start[index + 1]];
                in_ranges(ranges, u32::from(addr))
            }
            IpAddr::V6(addr) => {
                let ranges = &self.v6[self.v6_start[index]..self.v6_start[index + 1]];
                in_ranges(ranges, u128::from(addr))
            }
        }
    }
}

/// Sorts `ranges` and appends them to `out` with overlapping and adjacent ranges merged.
fn merge_into<T: Ord + Copy + num_like::Succ>(ranges: &mut [(T, T)], out: &mut Vec<(T, T)>) {
    ranges.sort_unstable();
    let first = out.len();
    for &(lo, hi) in ranges.iter() {
        if out.len() > first {
            let last = out.last_mut().expect("non-empty");
            if last.1.succ().is_none_or(|next| lo <= next) {
                if hi > last.1 {
                    last.1 = hi;
                }
                continue;
            }
        }
        out.push((lo, hi));
    }
}

/// Is `x` inside one of the sorted, disjoint, inclusive `ranges`?
fn in_ranges<T: Ord + Copy>(ranges: &[(T, T)], x: T) -> bool {
    // The first range starting after `x`; the one before it is the only candidate.
    let after = ranges.partition_point(|&(lo, _)| lo <= x);
    after > 0 && x <= ranges[after - 1].1
}

mod num_like {
    /// `x + 1`, `None` on overflow.
    pub trait Succ: Sized {
        fn succ(self) -> Option<Self>;
    }
    impl Succ for u32 {
        fn succ(self) -> Option<u32> {
            self.checked_add(1)
        }
    }
    impl Succ for u128 {
        fn succ(self) -> Option<u128> {
            self.checked_add(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> DomainPattern {
        if s == "*" {
            DomainPattern::Any
        } else if let Some(rest) = s.strip_prefix("*.") {
            DomainPattern::Subdomains(rest.to_string())
        } else {
            DomainPattern::Exact(s.to_string())
        }
    }

    fn conn(name: &str, ty: ConnectorType) -> InboundConnector {
        InboundConnector {
            name: name.to_string(),
            enabled: true,
            connector_type: ty,
            sender_domains: vec![],
            sender_ip_addresses: vec![],
            tls_sender_certificate_name: None,
            tls_sender_certificate_issuer: vec![],
            require_tls: false,
            restrict_domains_to_ip_addresses: false,
            restrict_domains_to_certificate: false,
            cloud_services_mail_enabled: false,
            treat_messages_as_internal: false,
            associated_accepted_domains: vec![],
            comment: None,
            connector_source: None,
        }
    }

    /// `a.b.c.d/len`, or a single address.
    fn net(s: &str) -> IpNet {
        s.parse()
            .unwrap_or_else(|_| IpNet::from(s.parse::<IpAddr>().unwrap()))
    }

    fn on_prem(ips: &[&str], cert: Option<&str>) -> InboundConnector {
        InboundConnector {
            sender_ip_addresses: ips.iter().map(|s| net(s)).collect(),
            tls_sender_certificate_name: cert.map(pat),
            ..conn("onprem", ConnectorType::OnPremises)
        }
    }

    fn partner(domains: &[&str], ips: &[&str], cert: Option<&str>) -> InboundConnector {
        InboundConnector {
            sender_domains: domains.iter().map(|s| pat(s)).collect(),
            sender_ip_addresses: ips.iter().map(|s| net(s)).collect(),
            tls_sender_certificate_name: cert.map(pat),
            ..conn("partner", ConnectorType::Partner)
        }
    }

    fn disabled(mut c: InboundConnector) -> InboundConnector {
        c.enabled = false;
        c
    }

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    /// Attribute with the given facts; returns (index, by).
    fn attr(
        t: &InboundTable,
        ip: &str,
        certs: &[&str],
        domain: Option<&str>,
    ) -> Option<(usize, AttributedBy)> {
        let certs = names(certs);
        t.attribute(&Facts {
            ip: ip.parse().unwrap(),
            cert_names: &certs,
            sender_domain: domain,
        })
        .map(|a| (a.index, a.by))
    }

    use AttributedBy::{Certificate as Cert, IpAddress as Ip, SenderDomain as Dom};

    #[test]
    fn nothing_configured_is_anonymous() {
        let t = InboundTable::new(&[]);
        assert_eq!(attr(&t, "192.0.2.1", &["a.test"], Some("a.test")), None);
        assert!(!t.ip_allowed(0, "192.0.2.1".parse().unwrap()));
        assert!(!t.cert_allowed(0, &names(&["a.test"])));
    }

    #[test]
    fn precedence_certificate_then_ip_then_domain_then_partner_ip_then_partner_cert() {
        let t = InboundTable::new(&[
            partner(&[], &["192.0.2.0/24"], Some("mail.partner.test")), // 0: rule 4
            partner(&["fabrikam.test"], &[], None),                     // 1: rule 3
            on_prem(&["192.0.2.0/24"], None),                           // 2: rule 2
            on_prem(&[], Some("*.contoso.test")),                       // 3: rule 1
        ]);
        // Everything known: the OnPremises certificate wins.
        assert_eq!(
            attr(&t, "192.0.2.7", &["mx.contoso.test"], Some("fabrikam.test")),
            Some((3, Cert))
        );
        // No certificate: the OnPremises IP beats the sender domain and the Partner IP.
        assert_eq!(
            attr(&t, "192.0.2.7", &[], Some("fabrikam.test")),
            Some((2, Ip))
        );
        // Another IP: the Partner sender domain beats the Partner certificate.
        assert_eq!(
            attr(
                &t,
                "198.51.100.1",
                &["mail.partner.test"],
                Some("fabrikam.test")
            ),
            Some((1, Dom))
        );
        // Unknown domain: the Partner-without-domains certificate.
        assert_eq!(
            attr(
                &t,
                "198.51.100.1",
                &["mail.partner.test"],
                Some("other.test")
            ),
            Some((0, Cert))
        );
        // Before MAIL FROM, nothing matches the remaining facts.
        assert_eq!(attr(&t, "198.51.100.1", &[], None), None);
    }

    #[test]
    fn partner_without_domains_ip_before_certificate() {
        let t = InboundTable::new(&[
            partner(&[], &[], Some("mail.a.test")),  // 0: by certificate
            partner(&[], &["203.0.113.0/24"], None), // 1: by IP
            partner(&["b.test"], &["10.0.0.0/8"], None), // 2: domains: never by IP
        ]);
        assert_eq!(
            attr(&t, "203.0.113.9", &["mail.a.test"], None),
            Some((1, Ip))
        );
        assert_eq!(
            attr(&t, "192.0.2.1", &["mail.a.test"], None),
            Some((0, Cert))
        );
        // A Partner with SenderDomains is matched by its domains only.
        assert_eq!(attr(&t, "10.1.2.3", &[], None), None);
        assert_eq!(attr(&t, "10.1.2.3", &[], Some("b.test")), Some((2, Dom)));
        // The sender domain outranks a Partner-without-domains IP.
        assert_eq!(attr(&t, "203.0.113.9", &[], Some("b.test")), Some((2, Dom)));
    }

    #[test]
    fn on_premises_sender_domains_do_not_attribute() {
        let mut c = on_prem(&["10.0.0.0/8"], None);
        c.sender_domains = vec![pat("contoso.test")];
        let t = InboundTable::new(&[c]);
        assert_eq!(attr(&t, "192.0.2.1", &[], Some("contoso.test")), None);
        assert_eq!(
            attr(&t, "10.0.0.1", &[], Some("contoso.test")),
            Some((0, Ip))
        );
    }

    #[test]
    fn on_premises_domains_restricted_to_their_addresses() {
        let restricted = |domains: &[&str], ips: &[&str]| {
            let mut c = on_prem(ips, None);
            c.sender_domains = domains.iter().map(|d| pat(d)).collect();
            c.restrict_domains_to_ip_addresses = true;
            c
        };
        let mut unrestricted = on_prem(&["10.9.0.0/16"], None);
        unrestricted.sender_domains = vec![pat("other.test")];
        let t = InboundTable::new(&[
            restricted(&["*.contoso.test"], &["10.0.0.0/8"]), // 0
            restricted(&["sales.contoso.test"], &["192.0.2.0/24"]), // 1
            disabled(restricted(&["fabrikam.test"], &["10.0.0.0/8"])), // 2
            unrestricted,                                     // 3
            partner(&["northwind.test"], &["198.51.100.0/24"], None), // 4
        ]);
        let r = |d: &str| t.restricting_on_premises(d);
        assert_eq!(r("contoso.test"), Some(0));
        assert_eq!(r("Mail.Contoso.Test."), Some(0));
        assert_eq!(r("sales.contoso.test"), Some(1)); // the most specific pattern
        assert_eq!(r("fabrikam.test"), None); // disabled
        assert_eq!(r("other.test"), None); // without RestrictDomainsToIPAddresses
        assert_eq!(r("northwind.test"), None); // a Partner's domains attribute instead
        // It is not attribution: the domain never makes a session OnPremises.
        assert_eq!(attr(&t, "203.0.113.1", &[], Some("contoso.test")), None);
        assert_eq!(
            attr(&t, "10.1.1.1", &[], Some("contoso.test")),
            Some((0, Ip))
        );
    }

    #[test]
    fn disabled_connectors_never_match() {
        let t = InboundTable::new(&[
            disabled(on_prem(&["10.0.0.0/8"], Some("*"))),
            disabled(partner(&["*"], &[], None)),
            disabled(partner(&[], &["0.0.0.0/0", "::/0"], Some("*"))),
            partner(&["fabrikam.test"], &[], None),
        ]);
        assert_eq!(attr(&t, "10.0.0.1", &["x.test"], Some("y.test")), None);
        assert_eq!(attr(&t, "2001:db8::1", &["x.test"], None), None);
        assert_eq!(
            attr(&t, "10.0.0.1", &["x.test"], Some("fabrikam.test")),
            Some((3, Dom))
        );
        // ip_allowed / cert_allowed still describe a disabled connector's own lists.
        assert!(t.ip_allowed(0, "10.9.9.9".parse().unwrap()));
        assert!(t.cert_allowed(0, &names(&["anything.test"])));
    }

    #[test]
    fn longest_prefix_wins_then_lowest_index() {
        let t = InboundTable::new(&[
            on_prem(&["10.0.0.0/8"], None),  // 0
            on_prem(&["10.1.0.0/16"], None), // 1
            on_prem(&["10.1.2.0/24"], None), // 2
            on_prem(&["10.1.2.0/24"], None), // 3: same prefix as 2, later
            on_prem(&["10.1.2.3"], None),    // 4: a single address (/32)
            on_prem(&["10.1.0.0/16"], None), // 5: same as 1
        ]);
        assert_eq!(attr(&t, "10.9.9.9", &[], None), Some((0, Ip)));
        assert_eq!(attr(&t, "10.1.9.9", &[], None), Some((1, Ip)));
        assert_eq!(attr(&t, "10.1.2.9", &[], None), Some((2, Ip)));
        assert_eq!(attr(&t, "10.1.2.3", &[], None), Some((4, Ip)));
        assert_eq!(attr(&t, "11.0.0.1", &[], None), None);
    }

    #[test]
    fn host_bits_in_a_configured_network_are_ignored() {
        let t = InboundTable::new(&[on_prem(&["10.1.2.3/16"], None)]);
        assert_eq!(attr(&t, "10.1.200.1", &[], None), Some((0, Ip)));
        assert!(t.ip_allowed(0, "10.1.200.1".parse().unwrap()));
        assert!(!t.ip_allowed(0, "10.2.0.1".parse().unwrap()));
    }

    #[test]
    fn ipv6_and_ipv4_mapped() {
        let t = InboundTable::new(&[
            on_prem(&["2001:db8::/32"], None),           // 0
            on_prem(&["2001:db8:1::/48"], None),         // 1
            on_prem(&["192.0.2.0/24"], None),            // 2
            on_prem(&["::ffff:198.51.100.0/120"], None), // 3: a mapped network = 198.51.100.0/24
        ]);
        assert_eq!(attr(&t, "2001:db8:ffff::1", &[], None), Some((0, Ip)));
        assert_eq!(attr(&t, "2001:db8:1::25", &[], None), Some((1, Ip)));
        assert_eq!(attr(&t, "2001:db9::1", &[], None), None);
        // A mapped client address counts as the IPv4 address, and the reverse.
        assert_eq!(attr(&t, "::ffff:192.0.2.10", &[], None), Some((2, Ip)));
        assert_eq!(attr(&t, "198.51.100.10", &[], None), Some((3, Ip)));
        assert_eq!(attr(&t, "::ffff:198.51.100.10", &[], None), Some((3, Ip)));
        // An IPv4-compatible (not mapped) address is IPv6.
        assert_eq!(attr(&t, "::192.0.2.10", &[], None), None);
        assert!(t.ip_allowed(2, "::ffff:192.0.2.200".parse().unwrap()));
        assert!(t.ip_allowed(3, "198.51.100.255".parse().unwrap()));
        assert!(t.ip_allowed(1, "2001:db8:1:ffff::1".parse().unwrap()));
        assert!(!t.ip_allowed(1, "2001:db8:2::1".parse().unwrap()));
        assert!(!t.ip_allowed(0, "192.0.2.1".parse().unwrap()));
    }

    #[test]
    fn sender_domain_most_specific_wins() {
        let t = InboundTable::new(&[
            partner(&["*"], &[], None),         // 0
            partner(&["*.com"], &[], None),     // 1
            partner(&["*.b.com"], &[], None),   // 2
            partner(&["a.b.com"], &[], None),   // 3
            partner(&["*.a.b.com"], &[], None), // 4
        ]);
        let dom = |d: &str| attr(&t, "192.0.2.1", &[], Some(d)).map(|(i, _)| i);
        // Exact beats every wildcard, even `*.a.b.com` which also matches a.b.com.
        assert_eq!(dom("a.b.com"), Some(3));
        assert_eq!(dom("x.a.b.com"), Some(4));
        assert_eq!(dom("c.b.com"), Some(2));
        assert_eq!(dom("b.com"), Some(2)); // `*.b.com` covers b.com itself
        assert_eq!(dom("deep.x.c.b.com"), Some(2));
        assert_eq!(dom("example.com"), Some(1));
        assert_eq!(dom("com"), Some(1));
        assert_eq!(dom("example.org"), Some(0));
        // Not a label boundary: ab.com is not under b.com.
        assert_eq!(dom("ab.com"), Some(1));
    }

    #[test]
    fn sender_domain_ties_go_to_the_lowest_index() {
        let t = InboundTable::new(&[
            partner(&["other.test"], &[], None),
            partner(&["*.fabrikam.test", "x.test"], &[], None),
            partner(&["*.fabrikam.test"], &[], None),
            partner(&["*"], &[], None),
            partner(&["*"], &[], None),
        ]);
        let dom = |d: &str| attr(&t, "192.0.2.1", &[], Some(d)).map(|(i, _)| i);
        assert_eq!(dom("mail.fabrikam.test"), Some(1));
        assert_eq!(dom("x.test"), Some(1));
        assert_eq!(dom("elsewhere.test"), Some(3));
    }

    #[test]
    fn case_and_trailing_dots_are_ignored() {
        let t = InboundTable::new(&[
            partner(&["Fabrikam.Test"], &[], None), // a hand-built, non-normalized pattern
            partner(&["*.contoso.test"], &[], None),
            on_prem(&[], Some("mail.corp.test")),
        ]);
        let dom = |d: &str| attr(&t, "192.0.2.1", &[], Some(d)).map(|(i, _)| i);
        assert_eq!(dom("FABRIKAM.test."), Some(0));
        assert_eq!(dom("fabrikam.test"), Some(0));
        assert_eq!(dom("MX.Contoso.TEST."), Some(1));
        assert_eq!(dom("contoso.test."), Some(1));
        assert_eq!(dom("fabrikam.test.x"), None);
        assert_eq!(
            attr(&t, "192.0.2.1", &["MAIL.Corp.Test."], None),
            Some((2, Cert))
        );
        assert!(t.cert_allowed(2, &names(&["Mail.CORP.test."])));
    }

    #[test]
    fn certificate_name_patterns() {
        let t = InboundTable::new(&[
            on_prem(&[], Some("*.contoso.test")), // 0
            on_prem(&[], Some("mail.corp.test")), // 1
        ]);
        let cert = |n: &[&str]| attr(&t, "192.0.2.1", n, None).map(|(i, _)| i);
        assert_eq!(cert(&["contoso.test"]), Some(0));
        assert_eq!(cert(&["a.b.contoso.test"]), Some(0));
        assert_eq!(cert(&["mail.corp.test"]), Some(1));
        assert_eq!(cert(&["x.mail.corp.test"]), None);
        assert_eq!(cert(&["corp.test"]), None);
        assert_eq!(cert(&["notcontoso.test"]), None);
        // A wildcard SAN counts only as the pattern with the same text.
        assert_eq!(cert(&["*.contoso.test"]), Some(0));
        assert_eq!(cert(&["*.corp.test"]), None);
        assert_eq!(cert(&["*.sub.contoso.test"]), None);
        // Several names: any one may match.
        assert_eq!(cert(&["unrelated.test", "mail.corp.test"]), Some(1));
        assert_eq!(cert(&[]), None);
    }

    #[test]
    fn certificate_most_specific_over_all_names_then_lowest_index() {
        let t = InboundTable::new(&[
            on_prem(&[], Some("*")),               // 0
            on_prem(&[], Some("*.contoso.test")),  // 1
            on_prem(&[], Some("mx.contoso.test")), // 2
            on_prem(&[], Some("*.contoso.test")),  // 3: same as 1
        ]);
        let cert = |n: &[&str]| attr(&t, "192.0.2.1", n, None).map(|(i, _)| i);
        assert_eq!(cert(&["contoso.test", "mx.contoso.test"]), Some(2));
        assert_eq!(cert(&["mx.contoso.test", "contoso.test"]), Some(2));
        assert_eq!(cert(&["other.test", "a.contoso.test"]), Some(1));
        assert_eq!(cert(&["other.test"]), Some(0));
        // `*` matches every plain name, but a wildcard SAN only by equal text.
        assert_eq!(cert(&["*.other.test"]), None);
        assert_eq!(cert(&["*"]), Some(0));
    }

    #[test]
    fn ip_allowed_per_connector() {
        let t = InboundTable::new(&[
            partner(
                &["a.test"],
                &["192.0.2.0/25", "192.0.2.128/25", "10.0.0.1"],
                None,
            ),
            partner(&["b.test"], &["198.51.100.0/24", "2001:db8::/64"], None),
            partner(&["c.test"], &["0.0.0.0/0"], None),
            partner(&["d.test"], &[], None),
            partner(
                &["e.test"],
                &["255.255.255.0/24", "255.255.255.255", "::/0"],
                None,
            ),
        ]);
        let ok = |i: usize, ip: &str| t.ip_allowed(i, ip.parse().unwrap());
        assert!(ok(0, "192.0.2.0"));
        assert!(ok(0, "192.0.2.127"));
        assert!(ok(0, "192.0.2.128"));
        assert!(ok(0, "192.0.2.255"));
        assert!(ok(0, "10.0.0.1"));
        assert!(!ok(0, "10.0.0.2"));
        assert!(!ok(0, "192.0.3.0"));
        assert!(!ok(0, "198.51.100.1")); // another connector's network
        assert!(ok(1, "198.51.100.1"));
        assert!(ok(1, "2001:db8::ffff"));
        assert!(!ok(1, "2001:db8:0:1::1"));
        assert!(ok(2, "203.0.113.1"));
        assert!(!ok(2, "2001:db8::1"));
        assert!(!ok(3, "192.0.2.1"));
        assert!(ok(4, "255.255.255.255"));
        assert!(ok(4, "::1"));
        assert!(!ok(4, "255.255.254.255"));
        assert!(!ok(5, "192.0.2.1")); // out of range
    }

    #[test]
    fn cert_allowed_per_connector() {
        let t = InboundTable::new(&[
            partner(&["a.test"], &[], Some("mail.fabrikam.test")),
            partner(&["b.test"], &[], Some("*.contoso.test")),
            partner(&["c.test"], &[], None),
        ]);
        let ok = |i: usize, n: &[&str]| t.cert_allowed(i, &names(n));
        assert!(ok(0, &["mail.fabrikam.test"]));
        assert!(ok(0, &["other.test", "MAIL.fabrikam.test."]));
        assert!(!ok(0, &["fabrikam.test"]));
        assert!(!ok(0, &["x.mail.fabrikam.test"]));
        assert!(!ok(0, &["*.fabrikam.test"]));
        assert!(!ok(0, &[]));
        assert!(ok(1, &["contoso.test"]));
        assert!(ok(1, &["a.b.contoso.test"]));
        assert!(ok(1, &["*.contoso.test"]));
        assert!(!ok(1, &["*.a.contoso.test"]));
        assert!(!ok(1, &["evilcontoso.test"]));
        assert!(!ok(2, &["c.test"]));
        assert!(!ok(3, &["a.test"]));
    }

    #[test]
    fn merge_into_merges_overlapping_and_adjacent_ranges() {
        let mut out = vec![(0u32, 0u32)]; // another connector's range stays untouched
        let mut r = vec![
            (10u32, 20u32),
            (0, 5),
            (6, 8),
            (15, 30),
            (32, 40),
            (u32::MAX, u32::MAX),
        ];
        merge_into(&mut r, &mut out);
        assert_eq!(
            out,
            vec![(0, 0), (0, 8), (10, 30), (32, 40), (u32::MAX, u32::MAX)]
        );
        let mut out = vec![];
        let mut r = vec![(0u128, u128::MAX), (5, 6)];
        merge_into(&mut r, &mut out);
        assert_eq!(out, vec![(0, u128::MAX)]);
    }
}
