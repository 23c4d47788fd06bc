//! Inbound attribution at scale: 10,000 inbound connectors holding 100,000 CIDR entries,
//! several thousand sender-domain patterns and a few thousand certificate names, built from
//! a fixed seed. Each benchmark cycles through 4,096 pre-generated sessions' facts, so the
//! figure is the cost of one `InboundTable::attribute` call (ns/iteration).
//!
//! `cargo bench --bench attribution -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use connector_relay::policy::inbound::{AttributedBy, Facts, InboundTable};
use connector_relay::policy::{ConnectorType, DomainPattern, InboundConnector};
use criterion::Criterion;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const CONNECTORS: usize = 10_000;
const CIDR_ENTRIES: usize = 100_000;
const QUERIES: usize = 4096; // a power of two: the index is masked

const TLDS: [&str; 6] = ["com", "net", "org", "de", "co.uk", "example"];

fn connector(i: usize, ty: ConnectorType) -> InboundConnector {
    InboundConnector {
        name: format!("connector-{i}"),
        enabled: true,
        connector_type: ty,
        sender_domains: vec![],
        sender_ip_addresses: vec![],
        tls_sender_certificate_name: None,
        tls_sender_certificate_issuer: Vec::new(),
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

/// 90 % IPv4 /16–/32 (weighted toward /24–/32), 10 % IPv6 /32–/64 and /128.
fn random_net(rng: &mut StdRng) -> IpNet {
    if rng.random_range(0..10) == 0 {
        let addr = Ipv6Addr::from(0x2000_u128 << 112 | rng.random_range(0..1u128 << 115));
        let len = if rng.random_bool(0.3) {
            128
        } else {
            rng.random_range(32..=64)
        };
        IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc())
    } else {
        let addr = Ipv4Addr::from(rng.random_range(0x0100_0000u32..0xE000_0000));
        let len = if rng.random_bool(0.25) {
            rng.random_range(16..=23)
        } else {
            rng.random_range(24..=32)
        };
        IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
    }
}

/// A random address inside `net`.
fn inside(rng: &mut StdRng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(n) => {
            let host_bits = 32 - u32::from(n.prefix_len());
            let host = if host_bits == 0 {
                0
            } else {
                rng.random::<u32>() >> (32 - host_bits)
            };
            IpAddr::V4(Ipv4Addr::from(u32::from(n.network()) | host))
        }
        IpNet::V6(n) => {
            let host_bits = 128 - u32::from(n.prefix_len());
            let host = if host_bits == 0 {
                0
            } else {
                rng.random::<u128>() >> (128 - host_bits)
            };
            IpAddr::V6(Ipv6Addr::from(u128::from(n.network()) | host))
        }
    }
}

struct Synthetic {
    connectors: Vec<InboundConnector>,
    v4_entries: usize,
    v6_entries: usize,
    domain_patterns: usize,
    cert_names: usize,
}

/// 60 % OnPremises (a third with a certificate name), 30 % Partner with 1–4 SenderDomains
/// (exact or `*.`), 10 % Partner without SenderDomains (half with a certificate name).
/// Every connector has at least one CIDR entry; the rest are spread at random.
fn synthetic(rng: &mut StdRng) -> Synthetic {
    let mut connectors: Vec<InboundConnector> = (0..CONNECTORS)
        .map(|i| match i % 10 {
            0..=5 => connector(i, ConnectorType::OnPremises),
            _ => connector(i, ConnectorType::Partner),
        })
        .collect();
    for i in 0..CIDR_ENTRIES {
        let c = if i < CONNECTORS {
            i
        } else {
            rng.random_range(0..CONNECTORS)
        };
        let net = random_net(rng);
        connectors[c].sender_ip_addresses.push(net);
    }
    let mut domain_patterns = 0;
    let mut cert_names = 0;
    for (i, c) in connectors.iter_mut().enumerate() {
        match i % 10 {
            0..=5 if i % 3 == 0 => {
                c.tls_sender_certificate_name = Some(if rng.random_bool(0.5) {
                    DomainPattern::Exact(format!("mail.corp{i}.example"))
                } else {
                    DomainPattern::Subdomains(format!("corp{i}.example"))
                });
                cert_names += 1;
            }
            6..=8 => {
                for k in 0..rng.random_range(1..=4) {
                    let base = format!("p{i}x{k}.{}", TLDS[rng.random_range(0..TLDS.len())]);
                    c.sender_domains.push(if rng.random_bool(0.5) {
                        DomainPattern::Exact(base)
                    } else {
                        DomainPattern::Subdomains(base)
                    });
                    domain_patterns += 1;
                }
            }
            9 if rng.random_bool(0.5) => {
                c.tls_sender_certificate_name =
                    Some(DomainPattern::Subdomains(format!("partner{i}.example")));
                cert_names += 1;
            }
            _ => {}
        }
    }
    let (mut v4_entries, mut v6_entries) = (0, 0);
    for n in connectors.iter().flat_map(|c| &c.sender_ip_addresses) {
        match n {
            IpNet::V4(_) => v4_entries += 1,
            IpNet::V6(_) => v6_entries += 1,
        }
    }
    Synthetic {
        connectors,
        v4_entries,
        v6_entries,
        domain_patterns,
        cert_names,
    }
}

/// The facts of one session; `Facts` borrows from it.
struct Query {
    ip: IpAddr,
    cert_names: Vec<String>,
    sender_domain: Option<String>,
}

impl Query {
    fn facts(&self) -> Facts<'_> {
        Facts {
            ip: self.ip,
            cert_names: &self.cert_names,
            sender_domain: self.sender_domain.as_deref(),
        }
    }
}

fn ip_only(ip: IpAddr) -> Query {
    Query {
        ip,
        cert_names: vec![],
        sender_domain: None,
    }
}

/// Addresses no connector covers (found by asking the table).
fn miss_ips(rng: &mut StdRng, table: &InboundTable) -> Vec<IpAddr> {
    let mut out = Vec::with_capacity(QUERIES);
    while out.len() < QUERIES {
        let net = random_net(rng);
        let ip = inside(rng, &net);
        if table.attribute(&ip_only(ip).facts()).is_none() {
            out.push(ip);
        }
    }
    out
}

fn queries(rng: &mut StdRng, s: &Synthetic, table: &InboundTable) -> [Vec<Query>; 4] {
    let attributable_by_ip: Vec<&InboundConnector> = s
        .connectors
        .iter()
        .filter(|c| c.connector_type == ConnectorType::OnPremises || c.sender_domains.is_empty())
        .collect();
    let ip_hit: Vec<Query> = (0..QUERIES)
        .map(|_| {
            let c = attributable_by_ip[rng.random_range(0..attributable_by_ip.len())];
            let net = &c.sender_ip_addresses[rng.random_range(0..c.sender_ip_addresses.len())];
            ip_only(inside(rng, net))
        })
        .collect();

    let misses = miss_ips(rng, table);
    let ip_miss: Vec<Query> = misses.iter().map(|&ip| ip_only(ip)).collect();

    let patterns: Vec<&DomainPattern> = s
        .connectors
        .iter()
        .flat_map(|c| &c.sender_domains)
        .collect();
    let sender_domain: Vec<Query> = (0..QUERIES)
        .map(|q| {
            let domain = match patterns[rng.random_range(0..patterns.len())] {
                DomainPattern::Exact(e) => e.clone(),
                DomainPattern::Subdomains(sfx) if q % 2 == 0 => format!("mx{q}.{sfx}"),
                DomainPattern::Subdomains(sfx) => format!("a.b{q}.{sfx}"),
                DomainPattern::Any => unreachable!(),
            };
            Query {
                sender_domain: Some(domain),
                ..ip_only(misses[q])
            }
        })
        .collect();

    let certs: Vec<&DomainPattern> = s
        .connectors
        .iter()
        .filter_map(|c| c.tls_sender_certificate_name.as_ref())
        .collect();
    let certificate: Vec<Query> = (0..QUERIES)
        .map(|q| {
            let name = match certs[rng.random_range(0..certs.len())] {
                DomainPattern::Exact(e) => e.clone(),
                DomainPattern::Subdomains(sfx) => format!("smtp{q}.{sfx}"),
                DomainPattern::Any => unreachable!(),
            };
            // A realistic SAN list: the matching name plus an unrelated one first.
            Query {
                cert_names: vec![format!("autodiscover{q}.unrelated.example"), name],
                ..ip_only(misses[q])
            }
        })
        .collect();
    [ip_hit, ip_miss, sender_domain, certificate]
}

fn main() {
    let mut rng = StdRng::seed_from_u64(0x1b0c_2025);
    let s = synthetic(&mut rng);
    let started = Instant::now();
    let table = InboundTable::new(&s.connectors);
    let built = started.elapsed();
    println!(
        "inbound attribution: {} connectors, {} CIDR entries ({} IPv4, {} IPv6), {} sender-domain patterns, {} certificate names; InboundTable::new {:.1} ms",
        s.connectors.len(),
        s.v4_entries + s.v6_entries,
        s.v4_entries,
        s.v6_entries,
        s.domain_patterns,
        s.cert_names,
        built.as_secs_f64() * 1e3,
    );

    let [ip_hit, ip_miss, sender_domain, certificate] = queries(&mut rng, &s, &table);
    // The inputs do what their names say.
    let expect = |qs: &[Query], by: Option<AttributedBy>| {
        for q in qs {
            assert_eq!(table.attribute(&q.facts()).map(|a| a.by), by);
        }
    };
    expect(&ip_hit, Some(AttributedBy::IpAddress));
    expect(&ip_miss, None);
    expect(&sender_domain, Some(AttributedBy::SenderDomain));
    expect(&certificate, Some(AttributedBy::Certificate));

    let mut c = Criterion::default().configure_from_args();
    let mut group = c.benchmark_group("inbound_attribution");
    for (name, qs) in [
        ("ip_hit", &ip_hit),
        ("ip_miss", &ip_miss),
        ("sender_domain", &sender_domain),
        ("certificate", &certificate),
    ] {
        let facts: Vec<Facts<'_>> = qs.iter().map(Query::facts).collect();
        group.bench_function(name, |b| {
            let mut i = 0usize;
            b.iter(|| {
                let f = &facts[i & (QUERIES - 1)];
                i = i.wrapping_add(1);
                table.attribute(black_box(f))
            })
        });
    }
    // The restriction checks made after attribution.
    let restricted: Vec<(usize, IpAddr)> = ip_hit
        .iter()
        .map(|q| (table.attribute(&q.facts()).unwrap().index, q.ip))
        .collect();
    group.bench_function("ip_allowed", |b| {
        let mut i = 0usize;
        b.iter(|| {
            let (index, ip) = restricted[i & (QUERIES - 1)];
            i = i.wrapping_add(1);
            table.ip_allowed(black_box(index), black_box(ip))
        })
    });
    group.finish();
    c.final_summary();
}
