//! Internationalized domains (RFC 6531 SMTPUTF8 addresses, RFC 5890 IDNA) end to end over
//! real sockets: the relay looks the destination up in its A-label form in a real DNS
//! server on loopback, checks a certificate name against a `TlsDomain` written in Unicode,
//! matches accepted domains and connectors written in either form against addresses in
//! either form, and fails a domain that is not valid IDNA at once (`5.1.2`) instead of
//! deferring it until the message expires.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use connector_relay::sink::{self, SinkOptions};
use support::dns::TestDns;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

fn header_value<'a>(msg: &'a str, name: &str) -> Vec<&'a str> {
    msg.lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .collect()
}

/// A certificate for `name` issued by the test CA (certs-test/ca.key), written to `dir`:
/// (certificate, key) paths.
fn issue(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let dn = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "connector-relay tests");
        dn.push(DnType::CommonName, cn);
        dn
    };
    // The test CA as examples/gen-certs.rs made it: same name and key, so what it signs
    // chains to certs-test/ca.crt.
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(certs("ca.key")).unwrap()).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name = dn("connector-relay Test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec![name.to_string()]).unwrap();
    leaf.distinguished_name = dn(name);
    leaf.use_authority_key_identifier_extension = true;
    let cert = leaf.signed_by(&key, &ca, &ca_key).unwrap();
    let (crt, pem) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    (crt, pem)
}

/// A sink on `listen` presenting the certificate `cert`/`key` with STARTTLS.
async fn tls_sink(listen: SocketAddr, cert: &Path, key: &Path) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some(listen),
        maildir: dir.path().to_path_buf(),
        tls_cert: Some(cert.to_path_buf()),
        tls_key: Some(key.to_path_buf()),
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

/// A message to `user@exämple.test` sent with SMTPUTF8 is delivered to the MX of
/// `xn--exmple-cua.test` (the only form the DNS server knows), over TLS checked against
/// `TlsDomain = "*.exämple.test"` (the certificate names `mx.xn--exmple-cua.test`); an
/// A-label recipient of the same domain goes in the same transaction.
#[tokio::test]
async fn a_unicode_recipient_is_delivered_through_its_a_label_mx_over_checked_tls() {
    let dns = TestDns::start().await;
    let port = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = issue(tmp.path(), "mx.xn--exmple-cua.test");
    let mx = tls_sink(format!("127.0.0.41:{port}").parse().unwrap(), &cert, &key).await;
    dns.add_mx("xn--exmple-cua.test", 10, "mx.xn--exmple-cua.test");
    dns.add_a("mx.xn--exmple-cua.test", "127.0.0.41".parse().unwrap());
    let onprem = start_sink().await;
    let mut cfg = relay_config(
        tmp.path(),
        onprem.addr(),
        &format!(
            "DeliveryPort = {port}\nDnsServers = [\"{}\"]\nTrustedCaFile = \"{}\"",
            dns.addr,
            certs("ca.crt")
        ),
    );
    cfg.push_str(
        "\n[[OutboundConnector]]\nName = \"To Exämple\"\nRecipientDomains = [\"exämple.test\"]\nUseMXRecord = true\nTlsSettings = \"DomainValidation\"\nTlsDomain = \"*.exämple.test\"\n",
    );
    let relay = start_relay(&cfg, Some(dns.addr)).await;

    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test> SMTPUTF8", "250")
        .await;
    d.cmd("RCPT TO:<user@exämple.test>", "250").await;
    d.cmd("RCPT TO:<other@XN--EXMPLE-CUA.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: idn\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;

    let got = wait_messages(mx.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1, "one transaction for both forms of the domain");
    assert_eq!(
        header_value(&got[0], "X-Sink-Rcpt-To"),
        ["<user@exämple.test>", "<other@XN--EXMPLE-CUA.test>"]
    );
    assert_eq!(header_value(&got[0], "X-Sink-Tls").len(), 1, "over TLS");
    assert!(
        messages(onprem.maildir()).is_empty(),
        "no notice: nothing failed"
    );
    println!(
        "idn: user@exämple.test delivered through the MX of xn--exmple-cua.test over DomainValidation TLS ({} DNS queries)",
        dns.query_count()
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Accepted domains and connector domains written as U-labels match addresses written as
/// A-labels, and the other way round.
#[tokio::test]
async fn accepted_domains_and_connectors_match_in_either_form() {
    let exaemple = start_sink().await;
    let muenchen = start_sink().await;
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(tmp.path(), onprem.addr(), "").replace(
        "AcceptedDomains = [\"contoso.test\"]",
        "AcceptedDomains = [\"contoso.test\", \"bücher.test\", \"xn--caf-dma.test\"]",
    );
    cfg.push_str(&format!(
        "\n[[OutboundConnector]]\nName = \"To Exämple\"\nRecipientDomains = [\"exämple.test\"]\nUseMXRecord = false\nSmartHosts = [\"{}\"]\n\n[[OutboundConnector]]\nName = \"To München\"\nRecipientDomains = [\"*.xn--mnchen-3ya.test\"]\nUseMXRecord = false\nSmartHosts = [\"{}\"]\n",
        exaemple.addr(),
        muenchen.addr()
    ));
    let relay = start_relay(&cfg, None).await;
    let smtp = relay.smtp_addrs[0];

    // From the Internet: only accepted domains, whichever form either side uses.
    let mut d = Dialog::connect_from("127.0.0.50".parse().unwrap(), smtp).await;
    d.cmd("EHLO mail.example.net", "250").await;
    d.cmd("MAIL FROM:<someone@example.net> SMTPUTF8", "250")
        .await;
    d.cmd("RCPT TO:<a@xn--bcher-kva.test>", "250").await;
    d.cmd("RCPT TO:<b@café.test>", "250").await;
    d.cmd("RCPT TO:<c@exämple.test>", "550").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: in\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;

    // From on-premises: connectors chosen by domain, whichever form.
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), smtp).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test> SMTPUTF8", "250")
        .await;
    d.cmd("RCPT TO:<d@xn--exmple-cua.test>", "250").await;
    d.cmd("RCPT TO:<e@mail.münchen.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: out\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;

    let inbound = wait_messages(onprem.maildir(), 1, WAIT).await;
    assert_eq!(
        header_value(&inbound[0], "X-Sink-Rcpt-To"),
        ["<a@xn--bcher-kva.test>", "<b@café.test>"]
    );
    let e = wait_messages(exaemple.maildir(), 1, WAIT).await;
    assert_eq!(
        header_value(&e[0], "X-Sink-Rcpt-To"),
        ["<d@xn--exmple-cua.test>"]
    );
    let m = wait_messages(muenchen.maildir(), 1, WAIT).await;
    assert_eq!(
        header_value(&m[0], "X-Sink-Rcpt-To"),
        ["<e@mail.münchen.test>"]
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A recipient domain that is not valid IDNA (here a broken `xn--` label) can never be
/// looked up: it is refused at RCPT with `553 5.1.2` (rule `InvalidDomain` in the trace)
/// instead of being accepted and bounced or deferred; the valid recipient of the same
/// transaction is delivered. (Delivery fails such a domain permanently too, for messages
/// spooled before: `delivery::tests::an_unroutable_recipient_domain_fails_permanently`.)
#[tokio::test]
async fn an_invalid_idn_recipient_is_refused_at_rcpt_with_5_1_2() {
    let dns = TestDns::start().await;
    let port = free_port();
    let mx = start_sink_with(format!("127.0.0.42:{port}").parse().unwrap(), false, None).await;
    dns.add_mx("xn--exmple-cua.test", 10, "mx.xn--exmple-cua.test");
    dns.add_a("mx.xn--exmple-cua.test", "127.0.0.42".parse().unwrap());
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay_with_dns(tmp.path(), onprem.addr(), dns.addr, port).await;
    let started = std::time::Instant::now();
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test> SMTPUTF8", "250")
        .await;
    let refused = d.cmd("RCPT TO:<bad@xn--zz.test>", "553 5.1.2").await;
    d.cmd("RCPT TO:<good@exämple.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: invalid idn\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;

    let got = wait_messages(mx.maildir(), 1, WAIT).await;
    assert_eq!(
        header_value(&got[0], "X-Sink-Rcpt-To"),
        ["<good@exämple.test>"]
    );
    let deadline = std::time::Instant::now() + WAIT;
    let rows = loop {
        let q = connector_relay::trace::query::TraceQuery {
            recipient: Some("bad@xn--zz.test".into()),
            limit: 100,
            ..Default::default()
        };
        let rows = connector_relay::trace::query::query(tmp.path(), &q).unwrap_or_default();
        if !rows.is_empty() || std::time::Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        rows.iter()
            .any(|e| e.rule.as_deref() == Some("InvalidDomain")
                && e.detail
                    .as_deref()
                    .is_some_and(|d| d.contains("not a valid internationalized domain name"))),
        "{rows:#?}"
    );
    assert!(
        messages(onprem.maildir()).is_empty(),
        "no notice: nothing was accepted for it"
    );
    println!(
        "idn: bad@xn--zz.test refused at RCPT ({}), good@exämple.test delivered {:.2} s after acceptance",
        refused.trim_end(),
        started.elapsed().as_secs_f64()
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
