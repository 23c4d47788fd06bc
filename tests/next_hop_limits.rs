//! Bounded work per delivery attempt (issue 14), over real sockets with the real resolver
//! against a DNS server on loopback: at most 5 addresses per attempt (Postfix's
//! `smtp_mx_address_limit`), and DNS answers served from the resolver's cache.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::dns::TestDns;
use support::http::{http, until};
use support::*;
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

/// Listens on `addr`, counting connections and closing each at once (before any greeting,
/// so the relay moves on to the next address, RFC 5321 §5.1).
async fn counting_closer(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind counting listener");
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    count
}

/// The test relay config with retries an hour apart, so one attempt can be observed alone.
fn config_with_slow_retries(spool: &std::path::Path, onprem: SocketAddr, extra: &str) -> String {
    relay_config(spool, onprem, extra)
        .replace(
            "TransientFailureRetryInterval = \"00:00:01\"",
            "TransientFailureRetryInterval = \"01:00:00\"",
        )
        .replace(
            "MaxRetryInterval = \"00:00:02\"",
            "MaxRetryInterval = \"02:00:00\"",
        )
}

async fn send_to(relay: &connector_relay::relay::RelayHandle, rcpt: &str) {
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.send_message("alice@contoso.test", rcpt, "Subject: hops\r\n\r\nhello")
        .await;
    d.cmd("QUIT", "221").await;
}

/// Eight MX hosts (preferences 10..80) whose addresses accept TCP and close at once: one
/// attempt touches the five most preferred, once each, and the message is deferred.
#[tokio::test]
async fn one_attempt_tries_at_most_five_mx_addresses() {
    let dns = TestDns::start().await;
    let port = free_port();
    let mut counts = Vec::new();
    for i in 1..=8u8 {
        let host = format!("mx{i}.fabrikam.test");
        dns.add_mx("fabrikam.test", 10 * u16::from(i), &host);
        let ip = std::net::Ipv4Addr::new(127, 0, 0, 40 + i);
        dns.add_a(&host, ip);
        counts.push(counting_closer(SocketAddr::from((ip, port))).await);
    }
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let extra = dns_relay_keys(dns.addr, port);
    let relay = start_relay(
        &config_with_slow_retries(tmp.path(), onprem.addr(), &extra),
        Some(dns.addr),
    )
    .await;
    let before = dns.query_count();
    send_to(&relay, "dan@fabrikam.test").await;

    // The message waits in Retry after its first attempt.
    let admin = relay.admin_addr.expect("admin listener");
    let token = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
    let token = token.trim();
    let msg = until("the deferred message in GET /api/queue", || async move {
        let q = http(admin, "GET", "/api/queue", Some(token), None)
            .await
            .json();
        (q[0]["Status"] == "Retry").then(|| q[0].clone())
    })
    .await;
    assert_eq!(msg["RetryCount"], 1, "{msg}");
    assert_eq!(msg["Recipients"][0]["Status"], "Pending", "{msg}");
    let seen: Vec<usize> = counts.iter().map(|c| c.load(Ordering::SeqCst)).collect();
    let queries = dns.query_count() - before;
    println!("one attempt: connections per MX address (mx1..mx8) {seen:?}, {queries} DNS queries");
    assert_eq!(seen, [1, 1, 1, 1, 1, 0, 0, 0]);
    // MX, then AAAA and A of mx1..mx5 only (1 + 2 × 5 = 11; 17 before the cap): the hosts
    // past the cap are not resolved.
    let names = dns.queried_names();
    for past in [
        "mx6.fabrikam.test",
        "mx7.fabrikam.test",
        "mx8.fabrikam.test",
    ] {
        assert!(
            !names.iter().any(|n| n == past),
            "{past} resolved: {names:?}"
        );
    }
    assert!(
        messages(onprem.maildir()).is_empty(),
        "deferred, not bounced"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// DNS queries the relay makes to deliver one message to an MX domain, then another: the
/// second is served from the resolver's cache (answers with a TTL of 300 s).
#[tokio::test]
async fn second_message_to_a_domain_uses_cached_dns_answers() {
    let dns = TestDns::start().await;
    dns.set_ttl(300);
    let port = free_port();
    let mx = start_sink_with(format!("127.0.0.51:{port}").parse().unwrap(), false, None).await;
    dns.add_mx("fabrikam.test", 10, "mx1.fabrikam.test");
    dns.add_a("mx1.fabrikam.test", "127.0.0.51".parse().unwrap());
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay_with_dns(tmp.path(), onprem.addr(), dns.addr, port).await;

    let before = dns.query_count();
    send_to(&relay, "dan@fabrikam.test").await;
    assert_eq!(wait_messages(mx.maildir(), 1, WAIT).await.len(), 1);
    let first = dns.query_count() - before;
    send_to(&relay, "erin@fabrikam.test").await;
    assert_eq!(wait_messages(mx.maildir(), 2, WAIT).await.len(), 2);
    let second = dns.query_count() - before - first;
    println!("DNS queries: first message {first}, second message {second}");
    assert!(first > 0, "the first message was routed through DNS");
    assert!(second < first, "first {first}, second {second}");
    relay.shutdown(Duration::from_secs(5)).await;
}
