//! `HickoryResolver` against a real DNS server on loopback (`tests/support/dns.rs`).

#[path = "support/dns.rs"]
mod dns;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use connector_relay::dns::hickory::HickoryResolver;
use connector_relay::dns::{DnsError, MxAnswer, Resolver};
use dns::{DnsFailure, SilentDns, TestDns};

async fn setup() -> (TestDns, HickoryResolver) {
    let server = TestDns::start().await;
    let resolver = HickoryResolver::with_timeout(&[server.addr], Duration::from_secs(2))
        .expect("resolver for the test server");
    (server, resolver)
}

fn sorted(answer: MxAnswer) -> Vec<(u16, String)> {
    match answer {
        MxAnswer::Records(mut records) => {
            records.sort();
            records
        }
        other => panic!("expected MX records, got {other:?}"),
    }
}

#[tokio::test]
async fn mx_records_with_preferences() {
    let (server, resolver) = setup().await;
    server.add_mx("fabrikam.test", 20, "MX2.Fabrikam.test");
    server.add_mx("fabrikam.test", 10, "mx1.fabrikam.test.");
    server.add_mx("fabrikam.test", 10, "mx1b.fabrikam.test");

    let records = sorted(resolver.mx("fabrikam.test").await.unwrap());
    assert_eq!(
        records,
        vec![
            (10, "mx1.fabrikam.test".to_string()),
            (10, "mx1b.fabrikam.test".to_string()),
            // Lower-cased, no trailing dot.
            (20, "mx2.fabrikam.test".to_string()),
        ]
    );
    // Trailing dot and case in the query do not matter.
    let again = sorted(resolver.mx("FABRIKAM.test.").await.unwrap());
    assert_eq!(again, records);
}

#[tokio::test]
async fn mx_nodata_is_no_records() {
    let (server, resolver) = setup().await;
    server.add_a("implicit.test", Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(resolver.mx("implicit.test").await, Ok(MxAnswer::NoRecords));
}

#[tokio::test]
async fn nxdomain() {
    let (_server, resolver) = setup().await;
    assert_eq!(resolver.mx("nowhere.test").await, Err(DnsError::NxDomain));
    assert_eq!(resolver.ips("nowhere.test").await, Err(DnsError::NxDomain));
}

#[tokio::test]
async fn null_mx() {
    let (server, resolver) = setup().await;
    server.add_mx("nomail.test", 0, ".");
    assert_eq!(resolver.mx("nomail.test").await, Ok(MxAnswer::NullMx));
}

#[tokio::test]
async fn a_and_aaaa_are_merged_ipv6_first() {
    let (server, resolver) = setup().await;
    server.add_a("mx.dual.test", Ipv4Addr::new(192, 0, 2, 10));
    server.add_a("mx.dual.test", Ipv4Addr::new(192, 0, 2, 11));
    server.add_aaaa(
        "mx.dual.test",
        Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10),
    );

    let ips = resolver.ips("mx.dual.test").await.unwrap();
    assert_eq!(ips.len(), 3);
    assert_eq!(
        ips[0],
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10))
    );
    assert!(ips.contains(&IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))));
    assert!(ips.contains(&IpAddr::V4(Ipv4Addr::new(192, 0, 2, 11))));
}

#[tokio::test]
async fn single_family_hosts() {
    let (server, resolver) = setup().await;
    server.add_a("v4.test", Ipv4Addr::new(192, 0, 2, 20));
    server.add_aaaa("v6.test", Ipv6Addr::LOCALHOST);
    assert_eq!(
        resolver.ips("v4.test").await,
        Ok(vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 20))])
    );
    assert_eq!(
        resolver.ips("v6.test").await,
        Ok(vec![IpAddr::V6(Ipv6Addr::LOCALHOST)])
    );
}

#[tokio::test]
async fn ips_nodata_is_no_records() {
    let (server, resolver) = setup().await;
    server.add_mx("mxonly.test", 10, "mx.elsewhere.test");
    assert_eq!(resolver.ips("mxonly.test").await, Err(DnsError::NoRecords));
}

#[tokio::test]
async fn refused_and_servfail() {
    let (server, resolver) = setup().await;
    server.fail("refused.test", DnsFailure::Refused);
    server.fail("broken.test", DnsFailure::ServFail);
    assert_eq!(resolver.mx("refused.test").await, Err(DnsError::Refused));
    assert!(matches!(
        resolver.mx("broken.test").await,
        Err(DnsError::Failed(_))
    ));
}

#[tokio::test]
async fn records_can_change_at_runtime() {
    let (server, resolver) = setup().await;
    assert_eq!(resolver.mx("later.test").await, Err(DnsError::NxDomain));
    server.add_mx("later.test", 5, "mx.later.test");
    assert_eq!(
        resolver.mx("later.test").await,
        Ok(MxAnswer::Records(vec![(5, "mx.later.test".to_string())]))
    );
}

#[tokio::test]
async fn large_answers_fall_back_to_tcp() {
    let (server, resolver) = setup().await;
    // ~150 MX records with long names: far beyond a 4096-octet EDNS UDP payload, so the
    // server truncates and the resolver must retry over TCP (RFC 7766).
    for i in 0..150u16 {
        server.add_mx(
            "big.test",
            i,
            &format!("mail-exchanger-with-a-rather-long-name-{i:03}.big.test"),
        );
    }
    let records = sorted(resolver.mx("big.test").await.unwrap());
    assert_eq!(records.len(), 150);
    assert_eq!(
        records[149],
        (
            149,
            "mail-exchanger-with-a-rather-long-name-149.big.test".to_string()
        )
    );
}

#[tokio::test]
async fn silent_server_times_out() {
    let silent = SilentDns::start().await;
    let resolver = HickoryResolver::with_timeout(&[silent.addr], Duration::from_millis(300))
        .expect("resolver");
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), resolver.mx("slow.test"))
        .await
        .expect("the resolver must give up on its own");
    assert_eq!(result, Err(DnsError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// resolv.conf's `attempts:2`: a server that never answers gets two tries of a query, not
/// three (hickory counts its `attempts` as retries after the first try). With the 5 s
/// production timeout that is 10 s per lookup, not 15 s.
#[tokio::test]
async fn silent_server_gets_two_tries_per_query() {
    let silent = SilentDns::start().await;
    let timeout = Duration::from_millis(300);
    let resolver = HickoryResolver::with_timeout(&[silent.addr], timeout).expect("resolver");
    let started = Instant::now();
    let result = resolver.mx("slow.test").await;
    let elapsed = started.elapsed();
    assert_eq!(result, Err(DnsError::Timeout));
    println!(
        "silent server: {} tries in {elapsed:?} with a {timeout:?} timeout",
        silent.query_count()
    );
    assert_eq!(silent.query_count(), 2);
}
