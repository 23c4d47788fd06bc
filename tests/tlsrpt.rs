//! TLS-RPT (RFC 8460) end to end: MX deliveries to a TLS sink and to a sink without
//! STARTTLS are counted, and after each (2 s) period the relay looks up `_smtp._tls`, POSTs
//! the gzip'ed JSON report to a real HTTPS endpoint (private CA) and mails it through its own
//! queue, DKIM-signed: the test checks the JSON fields and verifies the signature with
//! mail-auth's verifier against the key published in the test DNS. The mailed reports'
//! own deliveries are never reported (no loops), and a relay without `TlsRptEnabled`
//! records and sends nothing.

mod support;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use connector_relay::sink::{self, SinkOptions, StartTlsMode};
use serde_json::Value;
use support::dns::TestDns;
use support::https_sink::{Captured, HttpsSink};
use support::*;

const WAIT: Duration = Duration::from_secs(60);

async fn mx_sink(ip: &str, port: u16, starttls: StartTlsMode) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some(format!("{ip}:{port}").parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        tls_cert: Some(certs("sink.test.crt").into()),
        tls_key: Some(certs("sink.test.key").into()),
        starttls,
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

/// An Ed25519 DKIM key: the PEM file and the `p=` value of its DNS record.
fn dkim_key(dir: &Path) -> (std::path::PathBuf, String) {
    use ring::signature::KeyPair;
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        b64.encode(pkcs8.as_ref())
    );
    let path = dir.join("dkim.pem");
    std::fs::write(&path, pem).unwrap();
    (path, b64.encode(pair.public_key().as_ref()))
}

fn reports(captured: &[Captured]) -> Vec<Value> {
    captured
        .iter()
        .map(|c| {
            assert_eq!(c.method, "POST");
            assert_eq!(c.path, "/tlsrpt");
            assert_eq!(c.content_type, "application/tlsrpt+gzip");
            let mut json = String::new();
            flate2::read::GzDecoder::new(&c.body[..])
                .read_to_string(&mut json)
                .expect("gzip body");
            serde_json::from_str(&json).expect("JSON report")
        })
        .collect()
}

fn domain_of(report: &Value) -> String {
    report["policies"][0]["policy"]["policy-domain"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

/// Sends one message from the OnPremises address to `rcpt`.
async fn send(relay: std::net::SocketAddr, rcpt: &str, subject: &str) {
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.send_message(
        "alice@contoso.test",
        rcpt,
        &format!("Subject: {subject}\r\n\r\nhello"),
    )
    .await;
    d.cmd("QUIT", "221").await;
}

fn strip_sink_headers(file: &str) -> String {
    file.split_inclusive('\n')
        .skip_while(|l| l.starts_with("X-Sink-"))
        .collect()
}

#[tokio::test]
async fn reports_are_posted_and_mailed_signed_and_never_about_reports() {
    let dns = TestDns::start().await;
    let port = free_port();
    let tls_mx = mx_sink("127.0.0.1", port, StartTlsMode::Offer).await;
    let plain_mx = mx_sink("127.0.0.2", port, StartTlsMode::Hide).await;
    let https = HttpsSink::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = dkim_key(tmp.path());

    let rua = format!(
        "v=TLSRPTv1; rua=https://reports.sink.test:{}/tlsrpt,mailto:tlsrpt@aa-reports.test",
        https.addr.port()
    );
    dns.add_mx("dest.test", 10, "mx.sink.test");
    dns.add_a("mx.sink.test", "127.0.0.1".parse().unwrap());
    dns.add_txt("_smtp._tls.dest.test", &rua);
    dns.add_mx("plain.test", 10, "mx.plain.test");
    dns.add_a("mx.plain.test", "127.0.0.2".parse().unwrap());
    dns.add_txt("_smtp._tls.plain.test", &rua);
    // Mailed reports go to the TLS MX too; the domain publishes TLSRPT as well, so a
    // report about their delivery would be sent if it were recorded. It sorts before
    // dest.test: the reporter would send it first within a run.
    dns.add_mx("aa-reports.test", 10, "mx.sink.test");
    dns.add_txt("_smtp._tls.aa-reports.test", &rua);
    dns.add_a("reports.sink.test", "127.0.0.1".parse().unwrap());
    dns.add_txt(
        "sel._domainkey.relay.contoso.test",
        &format!("v=DKIM1; k=ed25519; p={public}"),
    );

    let extra = format!(
        "TrustedCaFile = \"{ca}\"\n{dnskeys}\nTlsRptEnabled = true\nTlsRptReportInterval = \"00:00:02\"\n\
         TlsRptOrganizationName = \"Contoso Relay\"\nTlsRptDkimKeyFile = \"{key}\"\nTlsRptDkimSelector = \"sel\"",
        ca = certs("ca.crt"),
        dnskeys = dns_relay_keys(dns.addr, port),
        key = key.display()
    );
    let onprem = start_sink().await;
    let relay = start_relay(
        &relay_config(tmp.path(), onprem.addr(), &extra),
        Some(dns.addr),
    )
    .await;
    send(relay.smtp_addrs[0], "bob@dest.test", "one").await;
    send(relay.smtp_addrs[0], "carol@plain.test", "two").await;
    wait_messages(plain_mx.maildir(), 1, WAIT).await;

    // The HTTPS reports: one per domain, with the RFC 8460 fields.
    let got = https
        .wait_for("reports for dest.test and plain.test", |c| {
            let r = reports(c);
            ["dest.test", "plain.test"]
                .iter()
                .all(|d| r.iter().any(|x| domain_of(x) == *d))
        })
        .await;
    let all = reports(&got);
    let dest = all.iter().find(|r| domain_of(r) == "dest.test").unwrap();
    assert_eq!(dest["organization-name"], "Contoso Relay");
    assert_eq!(dest["contact-info"], "postmaster@relay.contoso.test");
    assert!(
        dest["report-id"]
            .as_str()
            .unwrap()
            .ends_with(".dest.test@relay.contoso.test")
    );
    assert!(
        dest["date-range"]["start-datetime"]
            .as_str()
            .unwrap()
            .ends_with('Z')
    );
    let p = &dest["policies"][0];
    assert_eq!(p["policy"]["policy-type"], "no-policy-found");
    assert_eq!(p["summary"]["total-successful-session-count"], 1, "{dest}");
    assert_eq!(p["summary"]["total-failure-session-count"], 0, "{dest}");
    let plain = all.iter().find(|r| domain_of(r) == "plain.test").unwrap();
    let p = &plain["policies"][0];
    assert_eq!(p["summary"]["total-successful-session-count"], 0, "{plain}");
    assert_eq!(p["summary"]["total-failure-session-count"], 1, "{plain}");
    let f = &p["failure-details"][0];
    assert_eq!(f["result-type"], "starttls-not-supported", "{plain}");
    assert_eq!(f["receiving-mx-hostname"], "mx.plain.test");
    assert_eq!(f["receiving-ip"], "127.0.0.2");
    assert_eq!(f["sending-mta-ip"], "127.0.0.1");
    assert_eq!(f["failed-session-count"], 1);

    // The mailed reports, DKIM-signed, delivered through the queue to the TLS MX.
    let mailed: Vec<String> = wait_messages(tls_mx.maildir(), 3, WAIT)
        .await
        .into_iter()
        .filter(|m| m.contains("X-Sink-Rcpt-To: <tlsrpt@aa-reports.test>"))
        .collect();
    assert_eq!(mailed.len(), 2, "one mailed report per domain");
    let resolver = mail_auth::MessageAuthenticator::new(
        mail_auth::hickory_resolver::config::ResolverConfig::from_parts(
            None,
            vec![],
            mail_auth::hickory_resolver::config::NameServerConfigGroup::from_ips_clear(
                &[dns.addr.ip()],
                dns.addr.port(),
                true,
            ),
        ),
        Default::default(),
    )
    .unwrap();
    for m in &mailed {
        assert!(
            m.contains("X-Sink-Mail-From: <noreply-tlsrpt@relay.contoso.test>"),
            "{m}"
        );
        assert!(
            m.contains("Content-Type: multipart/report; report-type=\"tlsrpt\""),
            "{m}"
        );
        assert!(m.contains("Content-Type: application/tlsrpt+gzip"), "{m}");
        assert!(m.contains("TLS-Required: No"), "{m}");
        assert!(m.contains("TLS-Report-Domain: "), "{m}");
        let raw = strip_sink_headers(m);
        let msg = mail_auth::AuthenticatedMessage::parse(raw.as_bytes()).expect("parses");
        let results = resolver.verify_dkim(&msg).await;
        assert!(!results.is_empty(), "a DKIM signature");
        assert!(
            results
                .iter()
                .all(|r| *r.result() == mail_auth::DkimResult::Pass),
            "DKIM: {:?}\n{raw}",
            results.iter().map(|r| r.result()).collect::<Vec<_>>()
        );
        // A tampered report fails verification: the check above can fail.
        let tampered = raw.replacen("TLS-Report-Domain: ", "TLS-Report-Domain: x", 1);
        let msg = mail_auth::AuthenticatedMessage::parse(tampered.as_bytes()).unwrap();
        let results = resolver.verify_dkim(&msg).await;
        assert!(
            results
                .iter()
                .all(|r| *r.result() != mail_auth::DkimResult::Pass)
        );
    }

    // No report about reports: the mailed reports' deliveries (to aa-reports.test) were
    // not counted. A new message to dest.test is reported in a later run; any report for
    // aa-reports.test of an earlier or the same period would come before it.
    let before = got.len();
    send(relay.smtp_addrs[0], "dan@dest.test", "three").await;
    let got = https
        .wait_for("a second dest.test report", |c| {
            reports(&c[before.min(c.len())..])
                .iter()
                .any(|r| domain_of(r) == "dest.test")
        })
        .await;
    let domains: Vec<String> = reports(&got).iter().map(domain_of).collect();
    assert!(
        !domains.iter().any(|d| d == "aa-reports.test"),
        "{domains:?}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// `TlsRptEnabled` defaults to false: nothing is recorded (no store), nothing is sent.
#[tokio::test]
async fn disabled_by_default_sends_nothing() {
    let dns = TestDns::start().await;
    let port = free_port();
    let mx = mx_sink("127.0.0.1", port, StartTlsMode::Offer).await;
    let https = HttpsSink::start().await;
    dns.add_mx("dest.test", 10, "mx.sink.test");
    dns.add_a("mx.sink.test", "127.0.0.1".parse().unwrap());
    dns.add_a("reports.sink.test", "127.0.0.1".parse().unwrap());
    dns.add_txt(
        "_smtp._tls.dest.test",
        &format!(
            "v=TLSRPTv1; rua=https://reports.sink.test:{}/tlsrpt",
            https.addr.port()
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "TrustedCaFile = \"{}\"\n{}\nTlsRptReportInterval = \"00:00:01\"",
        certs("ca.crt"),
        dns_relay_keys(dns.addr, port)
    );
    let onprem = start_sink().await;
    let relay = start_relay(
        &relay_config(tmp.path(), onprem.addr(), &extra),
        Some(dns.addr),
    )
    .await;
    send(relay.smtp_addrs[0], "bob@dest.test", "one").await;
    assert_eq!(wait_messages(mx.maildir(), 1, WAIT).await.len(), 1);
    // Three periods pass: an enabled relay would have reported by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(https.captured().is_empty());
    assert!(!tmp.path().join("tlsrpt.sqlite").exists());
    assert!(
        !dns.queried_names()
            .iter()
            .any(|n| n.starts_with("_smtp._tls"))
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Counts survive a restart: a store left by an earlier run (a period that ended while the
/// relay was down) is reported by the next start, over HTTPS.
#[tokio::test]
async fn counts_from_before_a_restart_are_reported() {
    use connector_relay::tlsrpt::{PolicyType, Record, ResultType, store::Store};
    let dns = TestDns::start().await;
    let https = HttpsSink::start().await;
    dns.add_a("reports.sink.test", "127.0.0.1".parse().unwrap());
    dns.add_txt(
        "_smtp._tls.earlier.test",
        &format!(
            "v=TLSRPTv1; rua=https://reports.sink.test:{}/tlsrpt",
            https.addr.port()
        ),
    );
    let tmp = tempfile::tempdir().unwrap();
    {
        let store = Store::open(tmp.path()).unwrap();
        let record = Record {
            policy_domain: "earlier.test".into(),
            policy_type: PolicyType::NoPolicyFound,
            policy_strings: vec![],
            policy_mx_hosts: vec![],
            result: ResultType::CertificateExpired,
            sending_mta_ip: Some("127.0.0.1".parse().unwrap()),
            receiving_mx_hostname: Some("mx.earlier.test".into()),
            receiving_ip: Some("127.0.0.3".parse().unwrap()),
            failure_reason: Some("certificate validation failed: expired".into()),
        };
        // Yesterday (UTC day periods, the default interval).
        let day = 86_400;
        let start = (connector_relay::queue::spool::unix_now() / day - 1) * day;
        store.add(start, start + day, &record).unwrap();
        store.add(start, start + day, &record).unwrap();
    }
    let extra = format!(
        "TrustedCaFile = \"{}\"\nDnsServers = [\"{}\"]\nTlsRptEnabled = true",
        certs("ca.crt"),
        dns.addr
    );
    let onprem = start_sink().await;
    let relay = start_relay(
        &relay_config(tmp.path(), onprem.addr(), &extra),
        Some(dns.addr),
    )
    .await;
    let got = https
        .wait_for("the report from before the restart", |c| !c.is_empty())
        .await;
    let report = &reports(&got)[0];
    assert_eq!(domain_of(report), "earlier.test");
    let p = &report["policies"][0];
    assert_eq!(p["summary"]["total-failure-session-count"], 2, "{report}");
    assert_eq!(
        p["failure-details"][0]["result-type"],
        "certificate-expired"
    );
    assert_eq!(p["failure-details"][0]["receiving-ip"], "127.0.0.3");
    relay.shutdown(Duration::from_secs(5)).await;
}
