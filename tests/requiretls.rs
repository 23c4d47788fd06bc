//! REQUIRETLS (RFC 8689) over real sockets and real TLS: the relay offers it only after
//! STARTTLS, refuses the MAIL FROM parameter outside TLS, carries the flag to next hops that
//! offer it over validated TLS, and returns the message with `5.7.30` (headers only, the
//! notice itself sent with REQUIRETLS) when a next hop cannot carry it: no REQUIRETLS in its
//! EHLO, an untrusted certificate, no STARTTLS, a certificate for another name.

mod support;

use std::time::Duration;

use connector_relay::sink::{self, SinkOptions, StartTlsMode};
use support::dns::TestDns;
use support::*;

const WAIT: Duration = Duration::from_secs(30);
const SECRET: &str = "SECRET-BODY-LINE-7f3a";

fn header_value<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    let prefix = format!("{name}: ");
    msg.lines()
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.strip_prefix(prefix.as_str()))
        .collect()
}

async fn tls_sink(listen: &str, cert: &str, starttls: StartTlsMode, requiretls: bool) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some(listen.parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        tls_cert: Some(certs(&format!("{cert}.crt")).into()),
        tls_key: Some(certs(&format!("{cert}.key")).into()),
        starttls,
        no_requiretls: !requiretls,
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

fn outbound(name: &str, domain: &str, sink: &Sink) -> String {
    format!(
        "\n[[OutboundConnector]]\nName = \"{name}\"\nRecipientDomains = [\"{domain}\"]\nUseMXRecord = false\nSmartHosts = [\"{}\"]\n",
        sink.addr()
    )
}

/// A session from the OnPremises address, under STARTTLS, EHLO done.
async fn tls_session(
    relay: std::net::SocketAddr,
) -> Dialog<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("STARTTLS", "220").await;
    let mut d = d.starttls("relay.contoso.test", None).await;
    let ehlo = d.cmd("EHLO onprem.contoso.test", "250").await;
    assert!(
        ehlo.lines()
            .any(|l| l == "250-REQUIRETLS" || l == "250 REQUIRETLS"),
        "{ehlo}"
    );
    d
}

/// RFC 8689 §3: not offered in plaintext; the parameter outside TLS gets 530 5.7.10 and
/// the session may STARTTLS and try again.
#[tokio::test]
async fn offered_only_after_starttls() {
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), onprem.addr(), ""), None).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    let ehlo = d.cmd("EHLO onprem.contoso.test", "250").await;
    assert!(!ehlo.contains("REQUIRETLS"), "{ehlo}");
    assert!(ehlo.contains("STARTTLS"), "{ehlo}");
    d.cmd("MAIL FROM:<alice@contoso.test> REQUIRETLS", "530 5.7.10")
        .await;
    // Without the parameter the same session may still send.
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    d.cmd("RSET", "250").await;
    d.cmd("STARTTLS", "220").await;
    let mut d = d.starttls("relay.contoso.test", None).await;
    let ehlo = d.cmd("EHLO onprem.contoso.test", "250").await;
    assert!(ehlo.contains("REQUIRETLS"), "{ehlo}");
    d.cmd("MAIL FROM:<alice@contoso.test> REQUIRETLS", "250")
        .await;
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}

/// One REQUIRETLS message to seven destinations: three next hops that can carry it (a
/// smart host with a trusted certificate, an MX host whose certificate names it, a smart
/// host behind a Send connector with `IgnoreSTARTTLS`, raised to TLS) get it with the
/// parameter over TLS; four cannot (no REQUIRETLS, self-signed, no STARTTLS, an MX host
/// name the certificate does not carry) and are returned in one notice with 5.7.30, which
/// holds the headers but not the body and is itself relayed with REQUIRETLS. A plain
/// message to the hop without REQUIRETLS is still delivered.
#[tokio::test]
async fn delivered_only_where_the_promise_holds() {
    let dns = TestDns::start().await;
    let port = free_port();
    // The MX sink: trusted certificate for sink.test and *.sink.test.
    let mx = tls_sink(
        &format!("127.0.0.1:{port}"),
        "sink.test",
        StartTlsMode::Offer,
        true,
    )
    .await;
    dns.add_mx("mxok.test", 10, "mail.sink.test");
    dns.add_a("mail.sink.test", "127.0.0.1".parse().unwrap());
    dns.add_mx("mxbad.test", 10, "mail.mxbad.test");
    dns.add_a("mail.mxbad.test", "127.0.0.1".parse().unwrap());
    let good = tls_sink("127.0.0.1:0", "sink.test", StartTlsMode::Offer, true).await;
    let noreq = tls_sink("127.0.0.1:0", "sink.test", StartTlsMode::Offer, false).await;
    let selfsigned = tls_sink("127.0.0.1:0", "selfsigned", StartTlsMode::Offer, true).await;
    let nostarttls = tls_sink("127.0.0.1:0", "sink.test", StartTlsMode::Hide, true).await;
    // Reached by a Send connector that says IgnoreSTARTTLS: the sender's demand wins.
    let ignoring = tls_sink("127.0.0.1:0", "sink.test", StartTlsMode::Offer, true).await;
    // Notices to alice@contoso.test go to on-premises, which must take REQUIRETLS too.
    let onprem = tls_sink("127.0.0.1:0", "sink.test", StartTlsMode::Offer, true).await;

    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "TrustedCaFile = \"{}\"\n{}",
        certs("ca.crt"),
        dns_relay_keys(dns.addr, port)
    );
    let mut toml = relay_config(tmp.path(), onprem.addr(), &extra);
    toml.push_str(&outbound("To good", "good.test", &good));
    toml.push_str(&outbound("To noreq", "noreq.test", &noreq));
    toml.push_str(&outbound("To selfsigned", "selfsigned.test", &selfsigned));
    toml.push_str(&outbound("To nostarttls", "nostarttls.test", &nostarttls));
    toml.push_str(&format!(
        "\n[[SendConnector]]\nName = \"Ignoring STARTTLS\"\nAddressSpaces = [\"SMTP:ignore.test;1\"]\n\
         DNSRoutingEnabled = false\nSmartHosts = [\"127.0.0.1\"]\nPort = {}\nIgnoreSTARTTLS = true\n",
        ignoring.addr().port()
    ));
    let relay = start_relay(&toml, Some(dns.addr)).await;

    let mut d = tls_session(relay.smtp_addrs[0]).await;
    d.cmd("MAIL FROM:<alice@contoso.test> REQUIRETLS", "250")
        .await;
    for r in [
        "a@good.test",
        "b@noreq.test",
        "c@selfsigned.test",
        "d@nostarttls.test",
        "e@mxok.test",
        "f@mxbad.test",
        "g@ignore.test",
    ] {
        d.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    d.cmd("DATA", "354").await;
    d.cmd(
        &format!(
            "Subject: the secret plan\r\nMessage-ID: <rtls-1@contoso.test>\r\n\r\n{SECRET}\r\n."
        ),
        "250",
    )
    .await;
    // A plain message to the hop without REQUIRETLS: the flag is the message's, not the hop's.
    d.send_message(
        "alice@contoso.test",
        "plain@noreq.test",
        "Subject: plain\r\n\r\nnot secret",
    )
    .await;
    d.cmd("QUIT", "221").await;

    for (sink, rcpt) in [
        (&good, "<a@good.test>"),
        (&mx, "<e@mxok.test>"),
        (&ignoring, "<g@ignore.test>"),
    ] {
        let got = wait_messages(sink.maildir(), 1, WAIT).await;
        assert_eq!(got.len(), 1, "{rcpt}");
        assert_eq!(header_value(&got[0], "X-Sink-Rcpt-To"), [rcpt]);
        assert_eq!(
            header_value(&got[0], "X-Sink-Requiretls"),
            ["yes"],
            "{}",
            got[0]
        );
        assert_eq!(header_value(&got[0], "X-Sink-Tls").len(), 1, "{}", got[0]);
        assert!(got[0].contains(SECRET));
    }
    let plain = wait_messages(noreq.maildir(), 1, WAIT).await;
    assert_eq!(plain.len(), 1);
    assert_eq!(
        header_value(&plain[0], "X-Sink-Rcpt-To"),
        ["<plain@noreq.test>"]
    );
    assert!(header_value(&plain[0], "X-Sink-Requiretls").is_empty());

    // One notice per delivery queue (the queue batches per next hop).
    let ndrs = wait_messages(onprem.maildir(), 4, WAIT).await;
    assert_eq!(
        ndrs.len(),
        4,
        "a notice for each of the four failed recipients"
    );
    let mut failed = Vec::new();
    for n in &ndrs {
        assert_eq!(header_value(n, "X-Sink-Mail-From"), ["<>"]);
        assert_eq!(header_value(n, "X-Sink-Rcpt-To"), ["<alice@contoso.test>"]);
        // RFC 8689 §5: the notice travels under REQUIRETLS, with the headers only.
        assert_eq!(header_value(n, "X-Sink-Requiretls"), ["yes"], "{n}");
        assert_eq!(header_value(n, "X-Sink-Tls").len(), 1, "{n}");
        assert!(
            !n.contains(SECRET),
            "the body must not be in the notice:\n{n}"
        );
        assert!(n.contains("text/rfc822-headers"), "{n}");
        assert!(n.contains("Status: 5.7.30"), "{n}");
        let rcpt = n
            .lines()
            .find_map(|l| l.strip_prefix("Final-Recipient: rfc822; "))
            .expect("Final-Recipient");
        failed.push(rcpt.to_string());
    }
    failed.sort();
    assert_eq!(
        failed,
        [
            "b@noreq.test",
            "c@selfsigned.test",
            "d@nostarttls.test",
            "f@mxbad.test"
        ]
    );
    let all = ndrs.join("\n");
    assert!(
        all.contains("REQUIRETLS not offered after STARTTLS"),
        "{all}"
    );
    // Nothing reached the hops that could not keep the promise.
    assert!(messages(noreq.maildir()).len() == 1);
    assert!(messages(selfsigned.maildir()).is_empty());
    assert!(messages(nostarttls.maildir()).is_empty());
    relay.shutdown(Duration::from_secs(5)).await;
}
