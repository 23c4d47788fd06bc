//! End to end over real sockets: lettre → relay → sink, STARTTLS, routes, MX through a
//! real DNS server on loopback, retries, DSNs, expiry, restart, open-relay refusal.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use connector_relay::smtp::Reply;
use support::dns::TestDns;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn header_value<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .collect()
}

#[tokio::test]
async fn lettre_plain_multiple_recipients_reach_sink() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), ""), None).await;
    let resp = lettre_send(
        relay.smtp_addrs[0],
        "alice@fabrikam.test",
        &["bob@contoso.test", "carol@contoso.test"],
        "plain",
        false,
    )
    .await
    .expect("accepted");
    assert_eq!(resp.code().to_string(), "250");
    let msgs = wait_messages(sink.maildir(), 1, WAIT).await;
    assert_eq!(msgs.len(), 1, "one transaction for both recipients");
    let m = &msgs[0];
    assert_eq!(
        header_value(m, "X-Sink-Mail-From"),
        ["<alice@fabrikam.test>"]
    );
    assert_eq!(
        header_value(m, "X-Sink-Rcpt-To"),
        ["<bob@contoso.test>", "<carol@contoso.test>"]
    );
    assert!(
        m.contains("Received: from client.test ([127.0.0.1])\r\n\tby relay.contoso.test"),
        "{m}"
    );
    assert!(m.contains("Subject: plain"));
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn lettre_starttls_to_relay_and_tls_to_sink() {
    let sink = start_sink_with("127.0.0.1:0".parse().unwrap(), true, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), ""), None).await;
    lettre_send(
        relay.smtp_addrs[0],
        "alice@fabrikam.test",
        &["bob@contoso.test"],
        "tls",
        true,
    )
    .await
    .expect("accepted over STARTTLS");
    let msgs = wait_messages(sink.maildir(), 1, WAIT).await;
    assert_eq!(msgs.len(), 1);
    let m = &msgs[0];
    assert!(m.contains("with ESMTPS"), "Received names ESMTPS: {m}");
    assert!(m.contains("version=TLSv1.3"), "{m}");
    // Opportunistic TLS outbound: the sink offered STARTTLS, so the hop used it.
    assert_eq!(
        header_value(m, "X-Sink-Tls").len(),
        1,
        "relay→sink hop used TLS: {m}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn recipients_on_two_routes_are_split() {
    let onprem = start_sink().await;
    let partner = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let extra = "";
    let mut cfg = relay_config(tmp.path(), onprem.addr(), extra);
    cfg.push_str(&format!(
        r#"
[[OutboundConnector]]
Name = "To Fabrikam"
RecipientDomains = ["fabrikam.test"]
UseMXRecord = false
SmartHosts = ["{}"]
"#,
        partner.addr()
    ));
    let relay = start_relay(&cfg, None).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250 2.1.0").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250 2.1.5").await;
    d.cmd("RCPT TO:<dan@fabrikam.test>", "250 2.1.5").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: two routes\r\n\r\nhello\r\n.", "250 2.0.0")
        .await;
    d.cmd("QUIT", "221").await;
    let a = wait_messages(onprem.maildir(), 1, WAIT).await;
    let b = wait_messages(partner.maildir(), 1, WAIT).await;
    assert_eq!(
        header_value(&a[0], "X-Sink-Rcpt-To"),
        ["<bob@contoso.test>"]
    );
    assert_eq!(
        header_value(&b[0], "X-Sink-Rcpt-To"),
        ["<dan@fabrikam.test>"]
    );
    // The Received header names the OnPremises inbound connector.
    assert!(
        b[0].contains("(inbound connector \"From on-premises\")"),
        "{}",
        b[0]
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn open_relay_is_refused() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), ""), None).await;
    // 127.0.0.20 is in no OnPremises connector: it may send to contoso.test, not elsewhere.
    let mut d = Dialog::connect_from("127.0.0.20".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO stranger.test", "250").await;
    d.cmd("MAIL FROM:<spammer@evil.test>", "250").await;
    let r = d.cmd("RCPT TO:<victim@gmail.test>", "550 5.7.64").await;
    assert!(r.contains("TenantAttribution; Relay Access Denied"), "{r}");
    d.cmd("RCPT TO:<victim@[127.0.0.1]>", "550 5.7.64").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250 2.1.5").await;
    d.cmd("QUIT", "221").await;
    // The OnPremises host may relay.
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    d.cmd("RCPT TO:<someone@fabrikam.test>", "250 2.1.5").await;
    relay.shutdown(Duration::from_secs(5)).await;
}

/// MX routing through a real DNS server on loopback: preference order, failover when the
/// preferred host is down, and a null MX that bounces.
#[tokio::test]
async fn mx_delivery_failover_and_null_mx() {
    let dns = TestDns::start().await;
    let port = free_port();
    // mx1 (preferred) points at 127.0.0.31 where nothing listens; mx2 at a live sink.
    let mx2 = start_sink_with(format!("127.0.0.32:{port}").parse().unwrap(), false, None).await;
    let onprem = start_sink().await;
    dns.add_mx("fabrikam.test", 10, "mx1.fabrikam.test");
    dns.add_mx("fabrikam.test", 20, "mx2.fabrikam.test");
    dns.add_a("mx1.fabrikam.test", "127.0.0.31".parse().unwrap());
    dns.add_a("mx2.fabrikam.test", "127.0.0.32".parse().unwrap());
    dns.add_mx("nullmx.test", 0, ".");
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay_with_dns(tmp.path(), onprem.addr(), dns.addr, port).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    d.cmd("RCPT TO:<dan@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<nobody@nullmx.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: mx test\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;
    let got = wait_messages(mx2.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered through the second MX");
    assert_eq!(
        header_value(&got[0], "X-Sink-Rcpt-To"),
        ["<dan@fabrikam.test>"]
    );
    // The null MX recipient bounces to alice@contoso.test, which routes to on-premises.
    let ndr = wait_messages(onprem.maildir(), 1, WAIT).await;
    assert_eq!(ndr.len(), 1, "an NDR for the null MX recipient");
    assert_eq!(header_value(&ndr[0], "X-Sink-Mail-From"), ["<>"]);
    assert_eq!(
        header_value(&ndr[0], "X-Sink-Rcpt-To"),
        ["<alice@contoso.test>"]
    );
    assert!(ndr[0].contains("multipart/report"), "{}", ndr[0]);
    assert!(
        ndr[0].contains("Final-Recipient: rfc822; nobody@nullmx.test"),
        "{}",
        ndr[0]
    );
    assert!(ndr[0].contains("Status: 5.1.10"), "{}", ndr[0]);
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Downstream answers 451 to the first attempt, then accepts: delivered exactly once.
/// A 550 recipient gets a DSN carrying the remote's code and text.
#[tokio::test]
async fn retry_after_451_and_dsn_after_550() {
    let attempts = Arc::new(AtomicUsize::new(0));
    let a = attempts.clone();
    let hook: connector_relay::sink::RcptHook = Arc::new(move |rcpt: &str| {
        if rcpt == "busy@fabrikam.test" && a.fetch_add(1, Ordering::SeqCst) == 0 {
            return Some(Reply::new(451, "4.3.0", "try again later"));
        }
        if rcpt == "gone@fabrikam.test" {
            return Some(Reply::new(550, "5.1.1", "user gone away"));
        }
        None
    });
    let partner = start_sink_with("127.0.0.1:0".parse().unwrap(), false, Some(hook)).await;
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(tmp.path(), onprem.addr(), "");
    cfg.push_str(&format!(
        "\n[[OutboundConnector]]\nName = \"To Fabrikam\"\nRecipientDomains = [\"fabrikam.test\"]\nUseMXRecord = false\nSmartHosts = [\"{}\"]\n",
        partner.addr()
    ));
    let relay = start_relay(&cfg, None).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    d.cmd("RCPT TO:<busy@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<gone@fabrikam.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: retry\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;
    let got = wait_messages(partner.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert_eq!(
        header_value(&got[0], "X-Sink-Rcpt-To"),
        ["<busy@fabrikam.test>"]
    );
    let ndr = wait_messages(onprem.maildir(), 1, WAIT).await;
    assert_eq!(ndr.len(), 1);
    assert!(
        ndr[0].contains("Final-Recipient: rfc822; gone@fabrikam.test"),
        "{}",
        ndr[0]
    );
    assert!(
        ndr[0].contains("550 5.1.1 user gone away"),
        "remote code and text kept: {}",
        ndr[0]
    );
    // Let further retries happen if the relay wrongly scheduled any, then count.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        messages(partner.maildir()).len(),
        1,
        "delivered exactly once"
    );
    assert_eq!(
        attempts.load(Ordering::SeqCst),
        2,
        "one deferral, one success"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A downstream that never comes up: after MessageExpirationTimeout the sender gets an
/// NDR with 5.4.7 and the last error.
#[tokio::test]
async fn expiry_sends_ndr() {
    let onprem = start_sink().await;
    let dead_port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(
        tmp.path(),
        onprem.addr(),
        "MessageExpirationTimeout = \"00:00:03\"",
    );
    cfg.push_str(&format!(
        "\n[[OutboundConnector]]\nName = \"To Fabrikam\"\nRecipientDomains = [\"fabrikam.test\"]\nUseMXRecord = false\nSmartHosts = [\"127.0.0.1:{dead_port}\"]\n"
    ));
    let relay = start_relay(&cfg, None).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    d.cmd("RCPT TO:<dan@fabrikam.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: expiry\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;
    let ndr = wait_messages(onprem.maildir(), 1, WAIT).await;
    assert_eq!(ndr.len(), 1, "NDR after expiry");
    assert!(ndr[0].contains("Status: 5.4.7"), "{}", ndr[0]);
    assert!(
        ndr[0].contains("Final-Recipient: rfc822; dan@fabrikam.test"),
        "{}",
        ndr[0]
    );
    assert!(
        ndr[0].contains("To Fabrikam"),
        "the NDR names the connector: {}",
        ndr[0]
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Messages queued for a down host survive a restart and are delivered exactly once.
#[tokio::test]
async fn restart_keeps_queue_and_delivers_once() {
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let onprem_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let cfg = relay_config(tmp.path(), onprem_addr, "");
    let relay = start_relay(&cfg, None).await;
    for i in 0..5 {
        let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
        d.cmd("EHLO client.test", "250").await;
        d.cmd("MAIL FROM:<x@fabrikam.test>", "250").await;
        d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
        d.cmd("RCPT TO:<carol@contoso.test>", "250").await;
        d.cmd("DATA", "354").await;
        d.cmd(&format!("Subject: restart {i}\r\n\r\nhello\r\n."), "250")
            .await;
        d.cmd("QUIT", "221").await;
    }
    relay.shutdown(Duration::from_secs(5)).await;
    // The host comes up; a new relay process on the same spool delivers everything.
    let sink = start_sink_with(onprem_addr, false, None).await;
    let relay = start_relay(&cfg, None).await;
    let got = wait_messages(sink.maildir(), 5, WAIT).await;
    assert_eq!(got.len(), 5);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = messages(sink.maildir());
    assert_eq!(got.len(), 5, "no duplicates after restart");
    for i in 0..5 {
        assert_eq!(
            got.iter()
                .filter(|m| m.contains(&format!("Subject: restart {i}\r\n")))
                .count(),
            1
        );
    }
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A smart host given as an FQDN is resolved (A) through the configured DNS server, and a
/// domain without MX records falls back to its own A record (RFC 5321 §5.1 implicit MX).
#[tokio::test]
async fn fqdn_smart_host_and_implicit_mx() {
    let dns = TestDns::start().await;
    let port = free_port();
    let smarthost =
        start_sink_with(format!("127.0.0.41:{port}").parse().unwrap(), false, None).await;
    let implicit =
        start_sink_with(format!("127.0.0.42:{port}").parse().unwrap(), false, None).await;
    dns.add_a("smarthost.lab.test", "127.0.0.41".parse().unwrap());
    dns.add_a("nomx.test", "127.0.0.42".parse().unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let extra = dns_relay_keys(dns.addr, port);
    let cfg = relay_config(
        tmp.path(),
        format!("127.0.0.1:{port}").parse().unwrap(),
        &extra,
    )
    .replace(
        &format!("SmartHosts = [\"127.0.0.1:{port}\"]"),
        &format!("SmartHosts = [\"smarthost.lab.test:{port}\"]"),
    );
    let relay = start_relay(&cfg, Some(dns.addr)).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("RCPT TO:<eve@nomx.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: fqdn\r\n\r\nhello\r\n.", "250").await;
    let a = wait_messages(smarthost.maildir(), 1, WAIT).await;
    let b = wait_messages(implicit.maildir(), 1, WAIT).await;
    assert_eq!(
        header_value(&a[0], "X-Sink-Rcpt-To"),
        ["<bob@contoso.test>"]
    );
    assert_eq!(header_value(&b[0], "X-Sink-Rcpt-To"), ["<eve@nomx.test>"]);
    relay.shutdown(Duration::from_secs(5)).await;
}
