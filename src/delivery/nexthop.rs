//! Next hops of a route: the hosts (and their addresses) to try, in order.
//!
//! - MX routes (policy.md "Outbound: next hops"; RFC 5321 §5.1): MX records sorted by
//!   preference, equal preferences shuffled (load balancing), the A/AAAA addresses of each
//!   exchange (a host without addresses is skipped); no MX records → the domain itself is
//!   the implicit MX; a null MX (RFC 7505) → permanent failure.
//! - Smart hosts: in configuration order; a name is resolved (A/AAAA), an IP literal is used
//!   as is, a CIDR range is expanded as documented on [`cidr_addresses`].
//! - Either way, one attempt tries at most [`MAX_ADDRESSES_PER_ATTEMPT`] addresses.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use rand::Rng;
use rand::seq::SliceRandom;

use crate::dns::{DnsError, MxAnswer, Resolver};
use crate::policy::SmartHost;
use crate::policy::route::{Route, RouteTarget};

use super::Failure;

/// The most addresses one delivery attempt tries, across all hosts of the route (MX hosts
/// in preference order with each host's addresses, or smart hosts in configuration order).
///
/// Postfix's `smtp_mx_address_limit` (default 5, postconf(5)): without a cap, a domain
/// whose 30 MX hosts accept TCP and never greet costs 30 connections and 30 greeting
/// timeouts per attempt. The hosts beyond the cap are not even resolved. The spec has no
/// key for this, so it is a constant; Exchange documents no such limit.
pub const MAX_ADDRESSES_PER_ATTEMPT: usize = 5;

/// One host to try, with every address to try for it (in order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// The host name (MX exchange or smart host name) used for TLS SNI, certificate name
    /// checks and logs; for IP literals and CIDR ranges, their text form.
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

/// Why no next hop could be found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HopError {
    /// RFC 7505 null MX: the domain accepts no mail (permanent, `5.1.10`).
    #[error("{domain} does not accept mail (null MX, RFC 7505)")]
    NullMx { domain: String },
    /// The recipient domain cannot be a DNS name (not valid IDNA, a label too long):
    /// permanent, `5.1.2` (RFC 3463: bad destination system address), never a deferral.
    #[error("{0}")]
    InvalidDomain(#[from] crate::dns::idn::InvalidDomain),
    /// The recipient domain does not exist, or has neither MX nor address records
    /// (permanent, `5.4.310`, Exchange's "DNS domain does not exist").
    #[error("{domain}: {reason}")]
    NoSuchDomain { domain: String, reason: String },
    /// A DNS lookup failed transiently (`4.4.312` failed, `4.4.315` timed out, `4.4.316`
    /// refused; `shared/spec/replies.md`).
    #[error("DNS lookup of {name} failed: {error}")]
    Dns { name: String, error: DnsError },
    /// No host of the route has any address (temporary: a DNS or configuration problem
    /// that may be fixed before the message expires).
    #[error("no address for any next hop ({detail})")]
    NoAddresses { detail: String },
}

impl HopError {
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            HopError::NullMx { .. } | HopError::NoSuchDomain { .. } | HopError::InvalidDomain(_)
        )
    }

    /// The enhanced status code recorded in the trace and DSN.
    pub fn enhanced(&self) -> &'static str {
        match self {
            HopError::NullMx { .. } => "5.1.10",
            HopError::InvalidDomain(_) => "5.1.2",
            HopError::NoSuchDomain { .. } => "5.4.310",
            HopError::Dns { error, .. } => dns_error_code(error),
            HopError::NoAddresses { .. } => "4.4.312",
        }
    }

    pub fn to_failure(&self) -> Failure {
        Failure {
            code: None,
            enhanced: self.enhanced().to_string(),
            text: self.to_string(),
        }
    }
}

/// replies.md: DNS query failed / timed out / refused → 4.4.312 / 4.4.315 / 4.4.316;
/// a bogus answer (DNSSEC validation failed) → 4.7.324.
fn dns_error_code(e: &DnsError) -> &'static str {
    match e {
        DnsError::Timeout => "4.4.315",
        DnsError::Refused => "4.4.316",
        DnsError::NxDomain | DnsError::NoRecords | DnsError::Failed(_) => "4.4.312",
        // Exchange's dnssec-invalid (replies.md): the destination's DNSSEC is broken.
        DnsError::Bogus(_) => "4.7.324",
    }
}

/// Resolves the next hops of `route` for mail to `domain`, shuffling equal MX preferences
/// with the thread RNG.
pub async fn resolve_next_hops(
    resolver: &dyn Resolver,
    route: &Route,
    domain: &str,
) -> Result<Vec<NextHop>, HopError> {
    // DNS carries A-labels only (RFC 5890 §2.3.2.1); callers normally pass them already.
    let domain = crate::dns::idn::routable(domain)?;
    let domain = domain.as_str();
    match &route.target {
        RouteTarget::Mx => {
            let exchanges = {
                let answer = match resolver.mx(domain).await {
                    Ok(a) => a,
                    // The name exists but has no MX RRset: same as an empty answer.
                    Err(DnsError::NoRecords) => MxAnswer::NoRecords,
                    Err(DnsError::NxDomain) => {
                        return Err(HopError::NoSuchDomain {
                            domain: domain.to_string(),
                            reason: "domain does not exist (NXDOMAIN)".into(),
                        });
                    }
                    Err(error) => {
                        return Err(HopError::Dns {
                            name: domain.to_string(),
                            error,
                        });
                    }
                };
                // The RNG is scoped so the future stays `Send`.
                mx_exchanges(answer, domain, &mut rand::rng())?
            };
            match exchanges {
                Some(hosts) => resolve_hosts(resolver, &hosts, route.port).await,
                None => implicit_mx(resolver, domain, route.port)
                    .await
                    .map(|hops| cap_addresses(hops, MAX_ADDRESSES_PER_ATTEMPT)),
            }
        }
        RouteTarget::SmartHosts(hosts) => smart_hosts(resolver, hosts, route.port).await,
    }
}

/// Orders an MX answer: `Ok(Some(hosts))` for MX records (by preference, equal preferences
/// shuffled), `Ok(None)` when there is none (implicit MX), `Err` for a null MX.
pub fn mx_exchanges<R: Rng + ?Sized>(
    answer: MxAnswer,
    domain: &str,
    rng: &mut R,
) -> Result<Option<Vec<String>>, HopError> {
    let mut records = match answer {
        MxAnswer::NullMx => {
            return Err(HopError::NullMx {
                domain: domain.to_string(),
            });
        }
        MxAnswer::NoRecords => return Ok(None),
        MxAnswer::Records(r) => r,
    };
    // RFC 7505 §3: a "." exchange is a null MX; if mixed with other records (a
    // misconfiguration) it is ignored and the real exchanges are used.
    records.retain(|(_, host)| !host.trim_end_matches('.').is_empty());
    if records.is_empty() {
        return Err(HopError::NullMx {
            domain: domain.to_string(),
        });
    }
    // RFC 5321 §5.1: "If there are multiple destinations with the same preference and there
    // is no clear reason to favor one ... the SMTP client SHOULD select one at random".
    records.shuffle(rng);
    records.sort_by_key(|(pref, _)| *pref); // stable: keeps the shuffle within a preference
    let mut hosts: Vec<String> = Vec::with_capacity(records.len());
    for (_, host) in records {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if !hosts.contains(&host) {
            hosts.push(host);
        }
    }
    Ok(Some(hosts))
}

/// RFC 5321 §5.1: no MX records → the domain is its own mail exchanger (preference 0).
async fn implicit_mx(
    resolver: &dyn Resolver,
    domain: &str,
    port: u16,
) -> Result<Vec<NextHop>, HopError> {
    match resolver.ips(domain).await {
        Ok(ips) if !ips.is_empty() => Ok(vec![NextHop {
            host: domain.to_ascii_lowercase(),
            addrs: ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        }]),
        Ok(_) | Err(DnsError::NoRecords) => Err(HopError::NoSuchDomain {
            domain: domain.to_string(),
            reason: "domain has no MX and no A/AAAA records".into(),
        }),
        Err(DnsError::NxDomain) => Err(HopError::NoSuchDomain {
            domain: domain.to_string(),
            reason: "domain does not exist (NXDOMAIN)".into(),
        }),
        Err(error) => Err(HopError::Dns {
            name: domain.to_string(),
            error,
        }),
    }
}

/// Resolves each named host in order; hosts without addresses are skipped. When none has an
/// address the most informative error is returned: a transient DNS failure if any lookup
/// failed transiently, otherwise [`HopError::NoAddresses`].
async fn resolve_hosts(
    resolver: &dyn Resolver,
    hosts: &[String],
    port: u16,
) -> Result<Vec<NextHop>, HopError> {
    let mut hops = Vec::with_capacity(hosts.len());
    let mut errors = Errors::default();
    for host in hosts {
        if address_count(&hops) >= MAX_ADDRESSES_PER_ATTEMPT {
            break;
        }
        if let Some(hop) = resolve_name(resolver, host, port, &mut errors).await {
            hops.push(hop);
        }
    }
    errors.finish(cap_addresses(hops, MAX_ADDRESSES_PER_ATTEMPT))
}

fn address_count(hops: &[NextHop]) -> usize {
    hops.iter().map(|h| h.addrs.len()).sum()
}

/// Keeps the first `limit` addresses in order (hosts, then each host's addresses); a host
/// left without an address is dropped.
pub fn cap_addresses(mut hops: Vec<NextHop>, limit: usize) -> Vec<NextHop> {
    let mut left = limit;
    for hop in &mut hops {
        hop.addrs.truncate(left);
        left -= hop.addrs.len();
    }
    hops.retain(|h| !h.addrs.is_empty());
    hops
}

/// Collected failures of name lookups, to report when no hop remains.
#[derive(Default)]
struct Errors {
    transient: Option<HopError>,
    missing: Vec<String>,
}

impl Errors {
    fn finish(self, hops: Vec<NextHop>) -> Result<Vec<NextHop>, HopError> {
        if !hops.is_empty() {
            return Ok(hops);
        }
        Err(self.transient.unwrap_or_else(|| HopError::NoAddresses {
            detail: format!("no A/AAAA records for {}", self.missing.join(", ")),
        }))
    }
}

async fn resolve_name(
    resolver: &dyn Resolver,
    host: &str,
    port: u16,
    errors: &mut Errors,
) -> Option<NextHop> {
    match resolver.ips(host).await {
        Ok(ips) if !ips.is_empty() => Some(NextHop {
            host: host.to_string(),
            addrs: ips
                .into_iter()
                .map(|ip| SocketAddr::new(ip, port))
                .collect(),
        }),
        Ok(_) | Err(DnsError::NoRecords | DnsError::NxDomain) => {
            errors.missing.push(host.to_string());
            None
        }
        Err(error) => {
            errors.transient = Some(HopError::Dns {
                name: host.to_string(),
                error,
            });
            None
        }
    }
}

/// Smart hosts in configuration order. `default_port` applies to entries without a port.
async fn smart_hosts(
    resolver: &dyn Resolver,
    hosts: &[SmartHost],
    default_port: u16,
) -> Result<Vec<NextHop>, HopError> {
    let mut hops = Vec::with_capacity(hosts.len());
    let mut errors = Errors::default();
    for h in hosts {
        if address_count(&hops) >= MAX_ADDRESSES_PER_ATTEMPT {
            break;
        }
        match h {
            SmartHost::Name { host, port } => {
                let port = port.unwrap_or(default_port);
                if let Some(hop) = resolve_name(resolver, host, port, &mut errors).await {
                    hops.push(hop);
                }
            }
            SmartHost::Ip { addr, port } => hops.push(NextHop {
                host: addr.to_string(),
                addrs: vec![SocketAddr::new(*addr, port.unwrap_or(default_port))],
            }),
            SmartHost::Cidr { net, port } => {
                let port = port.unwrap_or(default_port);
                hops.push(NextHop {
                    host: net.to_string(),
                    addrs: cidr_addresses(net)
                        .into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect(),
                });
            }
        }
    }
    errors.finish(cap_addresses(hops, MAX_ADDRESSES_PER_ATTEMPT))
}

/// How many addresses of a CIDR smart host are tried.
pub const CIDR_MAX_ADDRESSES: usize = 4;

/// The addresses tried for a CIDR smart host (Exchange Online accepts ranges such as a
/// partner's outbound pool; it does not say how it picks an address).
///
/// Choice made here: a host route (`/32`, `/128`) is the address itself; otherwise the
/// first [`CIDR_MAX_ADDRESSES`] *host* addresses of the range, in ascending order, all of
/// them tried before the next smart host. For IPv4 the network and broadcast addresses are
/// excluded (except in a `/31`, RFC 3021); for IPv6 the Subnet-Router anycast address (host
/// part all zero, RFC 4291 §2.6.1) is excluded (except in a `/127`, RFC 6164).
pub fn cidr_addresses(net: &IpNet) -> Vec<IpAddr> {
    match net {
        IpNet::V4(n) => n.hosts().take(CIDR_MAX_ADDRESSES).map(IpAddr::V4).collect(),
        IpNet::V6(n) => {
            let skip = usize::from(n.prefix_len() < 127);
            n.hosts()
                .skip(skip)
                .take(CIDR_MAX_ADDRESSES)
                .map(IpAddr::V6)
                .collect()
        }
    }
}

#[cfg(test)]
pub(crate) mod mock {
    //! A scripted [`Resolver`] for unit tests.
    use std::collections::HashMap;
    use std::net::IpAddr;
    use std::sync::Mutex;

    use crate::dns::{BoxFuture, DnsError, MxAnswer, Resolver};

    #[derive(Default)]
    pub struct MockResolver {
        pub mx: HashMap<String, Result<MxAnswer, DnsError>>,
        pub ips: HashMap<String, Result<Vec<IpAddr>, DnsError>>,
        pub queries: Mutex<Vec<String>>,
    }

    impl MockResolver {
        pub fn with_mx(mut self, domain: &str, answer: Result<MxAnswer, DnsError>) -> Self {
            self.mx.insert(domain.into(), answer);
            self
        }
        pub fn with_ips(mut self, host: &str, ips: &[&str]) -> Self {
            self.ips.insert(
                host.into(),
                Ok(ips.iter().map(|s| s.parse().unwrap()).collect()),
            );
            self
        }
        pub fn with_ip_error(mut self, host: &str, e: DnsError) -> Self {
            self.ips.insert(host.into(), Err(e));
            self
        }
    }

    impl Resolver for MockResolver {
        fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>> {
            self.queries.lock().unwrap().push(format!("MX {domain}"));
            let r = self
                .mx
                .get(domain)
                .cloned()
                .unwrap_or(Err(DnsError::NxDomain));
            Box::pin(async move { r })
        }
        fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
            self.queries.lock().unwrap().push(format!("A {host}"));
            let r = self
                .ips
                .get(host)
                .cloned()
                .unwrap_or(Err(DnsError::NxDomain));
            Box::pin(async move { r })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::mock::MockResolver;
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn mx_route() -> Route {
        Route::default_mx(25)
    }

    fn smart_route(hosts: Vec<SmartHost>) -> Route {
        Route {
            target: RouteTarget::SmartHosts(hosts),
            port: 2626,
            ..Route::default_mx(25)
        }
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn mx_by_preference_with_addresses() {
        let r = MockResolver::default()
            .with_mx(
                "fabrikam.test",
                Ok(MxAnswer::Records(vec![
                    (20, "mx2.fabrikam.test.".into()),
                    (10, "mx1.fabrikam.test".into()),
                    (30, "noaddr.fabrikam.test".into()),
                ])),
            )
            .with_ips("mx1.fabrikam.test", &["2001:db8::1", "192.0.2.1"])
            .with_ips("mx2.fabrikam.test", &["192.0.2.2"])
            .with_ips("noaddr.fabrikam.test", &[]);
        let hops = resolve_next_hops(&r, &mx_route(), "fabrikam.test")
            .await
            .unwrap();
        assert_eq!(
            hops,
            vec![
                NextHop {
                    host: "mx1.fabrikam.test".into(),
                    addrs: vec![sa("[2001:db8::1]:25"), sa("192.0.2.1:25")],
                },
                NextHop {
                    host: "mx2.fabrikam.test".into(),
                    addrs: vec![sa("192.0.2.2:25")],
                },
            ]
        );
    }

    #[test]
    fn equal_preferences_are_shuffled_but_order_by_preference_is_kept() {
        let answer = MxAnswer::Records(vec![
            (10, "a".into()),
            (10, "b".into()),
            (10, "c".into()),
            (5, "first".into()),
            (50, "last".into()),
        ]);
        let mut rng = StdRng::seed_from_u64(3);
        let mut middles = std::collections::HashSet::new();
        for _ in 0..50 {
            let hosts = mx_exchanges(answer.clone(), "d", &mut rng)
                .unwrap()
                .unwrap();
            assert_eq!(hosts.first().map(String::as_str), Some("first"));
            assert_eq!(hosts.last().map(String::as_str), Some("last"));
            middles.insert(hosts[1..4].to_vec());
        }
        assert!(middles.len() > 1, "equal preferences are load-balanced");
    }

    #[tokio::test]
    async fn no_mx_means_implicit_mx() {
        let r = MockResolver::default()
            .with_mx("fabrikam.test", Ok(MxAnswer::NoRecords))
            .with_ips("fabrikam.test", &["192.0.2.9"]);
        let hops = resolve_next_hops(&r, &mx_route(), "fabrikam.test")
            .await
            .unwrap();
        assert_eq!(hops.len(), 1);
        assert_eq!(hops[0].host, "fabrikam.test");
        assert_eq!(hops[0].addrs, vec![sa("192.0.2.9:25")]);

        // NoRecords reported as an error is the same thing.
        let r = MockResolver::default()
            .with_mx("fabrikam.test", Err(DnsError::NoRecords))
            .with_ips("fabrikam.test", &["192.0.2.9"]);
        assert!(
            resolve_next_hops(&r, &mx_route(), "fabrikam.test")
                .await
                .is_ok()
        );

        // Neither MX nor A: permanent.
        let r = MockResolver::default()
            .with_mx("fabrikam.test", Ok(MxAnswer::NoRecords))
            .with_ip_error("fabrikam.test", DnsError::NoRecords);
        let e = resolve_next_hops(&r, &mx_route(), "fabrikam.test")
            .await
            .unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.enhanced(), "5.4.310");
    }

    #[tokio::test]
    async fn null_mx_is_permanent() {
        let r = MockResolver::default().with_mx("nomail.test", Ok(MxAnswer::NullMx));
        let e = resolve_next_hops(&r, &mx_route(), "nomail.test")
            .await
            .unwrap_err();
        assert!(e.is_permanent());
        assert_eq!(e.enhanced(), "5.1.10");
        let r = MockResolver::default()
            .with_mx("nomail.test", Ok(MxAnswer::Records(vec![(0, ".".into())])));
        let e = resolve_next_hops(&r, &mx_route(), "nomail.test")
            .await
            .unwrap_err();
        assert_eq!(e.enhanced(), "5.1.10");
    }

    #[tokio::test]
    async fn dns_errors_are_classified() {
        let cases = [
            (DnsError::NxDomain, "5.4.310", true),
            (DnsError::Failed("servfail".into()), "4.4.312", false),
            (DnsError::Timeout, "4.4.315", false),
            (DnsError::Refused, "4.4.316", false),
        ];
        for (err, code, permanent) in cases {
            let r = MockResolver::default().with_mx("x.test", Err(err.clone()));
            let e = resolve_next_hops(&r, &mx_route(), "x.test")
                .await
                .unwrap_err();
            assert_eq!(e.enhanced(), code, "{err:?}");
            assert_eq!(e.is_permanent(), permanent, "{err:?}");
            assert_eq!(e.to_failure().enhanced, code);
        }
    }

    #[tokio::test]
    async fn mx_hosts_without_addresses_are_temporary() {
        let r = MockResolver::default()
            .with_mx(
                "x.test",
                Ok(MxAnswer::Records(vec![(1, "mx.x.test".into())])),
            )
            .with_ip_error("mx.x.test", DnsError::NxDomain);
        let e = resolve_next_hops(&r, &mx_route(), "x.test")
            .await
            .unwrap_err();
        assert!(!e.is_permanent());
        assert_eq!(e.enhanced(), "4.4.312");
        let r = MockResolver::default()
            .with_mx(
                "x.test",
                Ok(MxAnswer::Records(vec![(1, "mx.x.test".into())])),
            )
            .with_ip_error("mx.x.test", DnsError::Timeout);
        let e = resolve_next_hops(&r, &mx_route(), "x.test")
            .await
            .unwrap_err();
        assert_eq!(e.enhanced(), "4.4.315");
    }

    #[tokio::test]
    async fn smart_hosts_in_order_with_ports() {
        let r = MockResolver::default()
            .with_ips("smart.contoso.test", &["192.0.2.5"])
            .with_ip_error("gone.contoso.test", DnsError::NxDomain);
        let route = smart_route(vec![
            SmartHost::Name {
                host: "gone.contoso.test".into(),
                port: None,
            },
            SmartHost::Ip {
                addr: "2001:db8::7".parse().unwrap(),
                port: Some(587),
            },
            SmartHost::Name {
                host: "smart.contoso.test".into(),
                port: None,
            },
            SmartHost::Cidr {
                net: "192.0.2.64/30".parse().unwrap(),
                port: Some(26),
            },
        ]);
        let hops = resolve_next_hops(&r, &route, "anything.test")
            .await
            .unwrap();
        assert_eq!(
            hops,
            vec![
                NextHop {
                    host: "2001:db8::7".into(),
                    addrs: vec![sa("[2001:db8::7]:587")],
                },
                NextHop {
                    host: "smart.contoso.test".into(),
                    addrs: vec![sa("192.0.2.5:2626")],
                },
                NextHop {
                    host: "192.0.2.64/30".into(),
                    addrs: vec![sa("192.0.2.65:26"), sa("192.0.2.66:26")],
                },
            ]
        );
        // No MX lookup for smart-host routes.
        assert!(
            r.queries
                .lock()
                .unwrap()
                .iter()
                .all(|q| !q.starts_with("MX"))
        );
    }

    /// Postfix's `smtp_mx_address_limit`: 8 MX hosts → the 5 most preferred are tried and
    /// only they are resolved; a host with several addresses counts each of them.
    #[tokio::test]
    async fn one_attempt_tries_at_most_five_addresses() {
        let mut records = Vec::new();
        let mut r = MockResolver::default();
        for i in 1..=8u16 {
            let host = format!("mx{i}.x.test");
            records.push((i * 10, host.clone()));
            r = r.with_ips(&host, &[&format!("192.0.2.{i}")]);
        }
        r = r.with_ips("mx2.x.test", &["192.0.2.21", "192.0.2.22", "192.0.2.23"]);
        r = r.with_mx("x.test", Ok(MxAnswer::Records(records)));
        let hops = resolve_next_hops(&r, &mx_route(), "x.test").await.unwrap();
        let tried: Vec<(String, SocketAddr)> = hops
            .iter()
            .flat_map(|h| h.addrs.iter().map(|a| (h.host.clone(), *a)))
            .collect();
        let want = [
            ("mx1.x.test", "192.0.2.1:25"),
            ("mx2.x.test", "192.0.2.21:25"),
            ("mx2.x.test", "192.0.2.22:25"),
            ("mx2.x.test", "192.0.2.23:25"),
            ("mx3.x.test", "192.0.2.3:25"),
        ];
        let want: Vec<(String, SocketAddr)> =
            want.iter().map(|(h, a)| (h.to_string(), sa(a))).collect();
        assert_eq!(tried, want);
        let lookups = r.queries.lock().unwrap().len();
        assert_eq!(lookups, 4, "MX x.test plus A of mx1..mx3, not of mx4..mx8");
    }

    #[tokio::test]
    async fn smart_hosts_count_towards_the_cap() {
        let r = MockResolver::default();
        let route = smart_route(vec![
            SmartHost::Cidr {
                net: "192.0.2.0/24".parse().unwrap(),
                port: None,
            },
            SmartHost::Cidr {
                net: "198.51.100.0/24".parse().unwrap(),
                port: None,
            },
            SmartHost::Name {
                host: "never.resolved.test".into(),
                port: None,
            },
        ]);
        let hops = resolve_next_hops(&r, &route, "any.test").await.unwrap();
        assert_eq!(hops.len(), 2);
        assert_eq!(hops[0].addrs.len(), CIDR_MAX_ADDRESSES);
        assert_eq!(hops[1].addrs, vec![sa("198.51.100.1:2626")]);
        assert!(
            r.queries.lock().unwrap().is_empty(),
            "the name is past the cap"
        );
    }

    #[test]
    fn cap_drops_hosts_left_without_addresses() {
        let hop = |host: &str, n: u8| NextHop {
            host: host.into(),
            addrs: (1..=n).map(|i| sa(&format!("192.0.2.{i}:25"))).collect(),
        };
        let capped = cap_addresses(vec![hop("a", 2), hop("b", 2), hop("c", 2)], 3);
        assert_eq!(capped, vec![hop("a", 2), hop("b", 1)]);
        assert_eq!(cap_addresses(vec![hop("a", 2)], 5), vec![hop("a", 2)]);
    }

    #[test]
    fn cidr_expansion() {
        let v = |s: &str| -> Vec<String> {
            cidr_addresses(&s.parse().unwrap())
                .iter()
                .map(|a| a.to_string())
                .collect()
        };
        assert_eq!(v("192.0.2.7/32"), ["192.0.2.7"]);
        assert_eq!(v("192.0.2.6/31"), ["192.0.2.6", "192.0.2.7"]);
        assert_eq!(
            v("10.0.0.0/8"),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
        );
        assert_eq!(v("2001:db8::5/128"), ["2001:db8::5"]);
        assert_eq!(v("2001:db8::/127"), ["2001:db8::", "2001:db8::1"]);
        assert_eq!(
            v("2001:db8::/64"),
            ["2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8::4"]
        );
    }
}
