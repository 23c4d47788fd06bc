//! MTA-STS (RFC 8461) over real sockets: the loopback DNS server answers `_mta-sts` TXT,
//! MX and A queries; a real HTTPS policy host (tests/support/mtasts.rs, certificate of the
//! test CA trusted through `TrustedCaFile`) serves the policy; a real SMTP sink receives.
//! The delivery engine is driven directly so every outcome is asserted exactly.
//!
//! Names: recipient domain `sink.test`, policy host `mta-sts.sink.test`, MX hosts
//! `mx.sink.test` and `mx2.sink.test` (named by the sink's certificate, `*.sink.test`)
//! and `mx.other.test` (never in a policy, not in the certificate), all on 127.0.0.1.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use connector_relay::delivery::mta_sts::{Settings, cache::Store};
use connector_relay::delivery::{Deliverer, DelivererOptions, DeliveryJob, RecipientOutcome};
use connector_relay::dns::hickory::HickoryResolver;
use connector_relay::sink::{self, SinkOptions};
use connector_relay::trace::{Events, TraceEvent};
use support::dns::TestDns;
use support::mtasts::{PolicyHost, policy};
use support::{Sink, certs, messages};

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

struct Lab {
    dns: TestDns,
    host: PolicyHost,
    sink: Sink,
    dir: tempfile::TempDir,
}

/// DNS for sink.test (MX `mx`, TXT id `id`), the policy host serving `body`, and a sink
/// offering STARTTLS with `sink_cert` (`None`: no STARTTLS).
async fn lab(mx: &str, id: &str, body: &str, sink_cert: Option<&str>) -> Lab {
    let dns = TestDns::start().await;
    dns.add_mx("sink.test", 10, mx);
    for h in [
        "mx.sink.test",
        "mx2.sink.test",
        "mx.other.test",
        "mta-sts.sink.test",
    ] {
        dns.add_ip(h, LOCAL);
    }
    dns.add_txt("_mta-sts.sink.test", &format!("v=STSv1; id={id};"));
    let host = PolicyHost::start("sink.test.crt", "sink.test.key", body).await;
    let sink = start_sink(sink_cert).await;
    Lab {
        dns,
        host,
        sink,
        dir: tempfile::tempdir().unwrap(),
    }
}

async fn start_sink(cert: Option<&str>) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        tls_cert: cert.map(|c| certs(&format!("{c}.crt")).into()),
        tls_key: cert.map(|c| certs(&format!("{c}.key")).into()),
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

fn config(lab: &Lab, data_dir: &Path, connector: &str) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TrustedCaFile = "{ca}"
AcceptedDomains = ["contoso.test"]
DataDir = "{data}"
DeliveryPort = {port}
MtaStsPolicyPort = {sts}
{connector}
"#,
        ca = certs("ca.crt"),
        data = data_dir.display(),
        port = lab.sink.addr().port(),
        sts = lab.host.addr.port(),
    )
}

/// A deliverer with MTA-STS, its cache in `data_dir`, and trace events.
fn deliverer(
    lab: &Lab,
    data_dir: &Path,
    connector: &str,
) -> (Deliverer, tokio::sync::mpsc::Receiver<TraceEvent>) {
    let policy = Arc::new(support::policy(&config(lab, data_dir, connector)));
    let resolver =
        Arc::new(HickoryResolver::with_timeout(&[lab.dns.addr], Duration::from_secs(2)).unwrap());
    let (events, rx) = Events::channel();
    let settings = Settings {
        port: lab.host.addr.port(),
        fetch_timeout: Duration::from_secs(10),
    };
    let store = Arc::new(Store::open(data_dir).unwrap());
    let d = Deliverer::new(policy, resolver)
        .with_options(DelivererOptions {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Some(Duration::from_secs(5)),
            data_end_timeout: Duration::from_secs(5),
        })
        .with_events(events)
        .with_mta_sts(&settings, Some(store));
    (d, rx)
}

async fn send(d: &Deliverer) -> RecipientOutcome {
    let rcpts = vec!["user@sink.test".to_string()];
    let data = b"From: a@contoso.test\r\nSubject: mta-sts\r\n\r\nhello\r\n";
    d.deliver(&DeliveryJob {
        id: "S1",
        mail_from: "a@contoso.test",
        recipients: &rcpts,
        data: connector_relay::delivery::Data::memory(data),
        from_outside_org: false,
        requiretls: false,
    })
    .await
    .remove(0)
}

fn code(o: &RecipientOutcome) -> String {
    match o.status.failure() {
        Some(f) => format!(
            "{} {}",
            if o.status.is_permanent() {
                "perm"
            } else {
                "temp"
            },
            f.enhanced
        ),
        None => "delivered".to_string(),
    }
}

fn drain(rx: &mut tokio::sync::mpsc::Receiver<TraceEvent>) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

#[tokio::test]
async fn enforce_with_a_matching_mx_delivers_over_validated_tls() {
    let body = policy("enforce", &["mx.sink.test"], 86400);
    let lab = lab("mx.sink.test", "1", &body, Some("sink.test")).await;
    let (d, mut rx) = deliverer(&lab, lab.dir.path(), "");
    let o = send(&d).await;
    assert_eq!(code(&o), "delivered", "{o:?}");
    assert!(o.tls.is_some(), "delivered under TLS");
    assert_eq!(messages(lab.sink.maildir()).len(), 1);
    let attempt = drain(&mut rx)
        .into_iter()
        .find(|e| e.host.as_deref() == Some("mx.sink.test"))
        .expect("attempt row");
    let detail = attempt.detail.unwrap();
    assert!(
        detail.contains("MTA-STS: enforce (id 1") && detail.contains("MX matched"),
        "{detail}"
    );
    // The second message uses the cached policy: no second fetch.
    assert_eq!(code(&send(&d).await), "delivered");
    assert_eq!(lab.host.requests(), 1);
}

#[tokio::test]
async fn enforce_skips_an_mx_outside_the_policy_with_4_4_8() {
    let body = policy("enforce", &["mx.sink.test"], 86400);
    let lab = lab("mx.other.test", "1", &body, Some("sink.test")).await;
    let (d, mut rx) = deliverer(&lab, lab.dir.path(), "");
    let o = send(&d).await;
    assert_eq!(code(&o), "temp 4.4.8", "{o:?}");
    let f = o.status.failure().unwrap();
    assert!(
        f.text
            .starts_with("MX hosts of sink.test failed MTA-STS validation"),
        "{f}"
    );
    assert!(o.hop_failure, "the whole next hop waits");
    assert!(
        messages(lab.sink.maildir()).is_empty(),
        "no connection made"
    );
    let rows = drain(&mut rx);
    assert!(
        rows.iter()
            .any(|e| e.rule.as_deref() == Some("MtaSts")
                && e.host.as_deref() == Some("mx.other.test")),
        "{rows:?}"
    );
}

#[tokio::test]
async fn enforce_with_a_wrong_certificate_is_4_7_5_and_never_plaintext() {
    let body = policy("enforce", &["mx.sink.test"], 86400);
    let lab = lab("mx.sink.test", "1", &body, Some("wrongname")).await;
    let (d, _rx) = deliverer(&lab, lab.dir.path(), "");
    let o = send(&d).await;
    assert_eq!(code(&o), "temp 4.7.5", "{o:?}");
    let f = o.status.failure().unwrap();
    assert!(
        f.text
            .starts_with("Remote certificate failed MTA-STS validation. Reason: ")
            && f.text.contains("mail.evil.test"),
        "{f}"
    );
    assert!(
        messages(lab.sink.maildir()).is_empty(),
        "no plaintext fallback for an enforced host"
    );
    // Control: the same destination with MtaStsMode = None takes opportunistic TLS.
    let dir = tempfile::tempdir().unwrap();
    let connector = r#"
[[OutboundConnector]]
Name = "No STS"
RecipientDomains = ["sink.test"]
MtaStsMode = "None"
"#;
    let (d, _rx) = deliverer(&lab, dir.path(), connector);
    assert_eq!(code(&send(&d).await), "delivered");
    assert_eq!(messages(lab.sink.maildir()).len(), 1);
}

#[tokio::test]
async fn enforce_without_starttls_is_4_7_5() {
    let body = policy("enforce", &["mx.sink.test"], 86400);
    let lab = lab("mx.sink.test", "1", &body, None).await;
    let (d, _rx) = deliverer(&lab, lab.dir.path(), "");
    let o = send(&d).await;
    assert_eq!(code(&o), "temp 4.7.5", "{o:?}");
    assert!(
        o.status.failure().unwrap().text.contains("STARTTLS"),
        "{o:?}"
    );
    assert!(messages(lab.sink.maildir()).is_empty());
}

#[tokio::test]
async fn testing_mode_delivers_and_records_the_would_be_failure() {
    let body = policy("testing", &["mx.sink.test"], 86400);
    let lab = lab("mx.other.test", "1", &body, Some("sink.test")).await;
    let (d, mut rx) = deliverer(&lab, lab.dir.path(), "");
    assert_eq!(code(&send(&d).await), "delivered");
    assert_eq!(messages(lab.sink.maildir()).len(), 1);
    let rows = drain(&mut rx);
    let detail = rows
        .iter()
        .filter_map(|e| e.detail.clone())
        .find(|d| d.contains("MTA-STS"))
        .expect("MTA-STS in the attempt row");
    assert!(
        detail.contains("testing: would fail under enforce: MX host not in the policy"),
        "{detail}"
    );
}

/// Under `testing` the session runs with the route's own (opportunistic) verifier, so the
/// certificates it got are validated after the fact: a certificate of the test CA naming the
/// MX host would pass under enforce; a self-signed one naming it would not, and that is
/// reported while the message is delivered all the same.
#[tokio::test]
async fn testing_mode_validates_the_chain_after_the_fact() {
    let body = policy("testing", &["mx.sink.test"], 86400);
    let trusted = lab("mx.sink.test", "1", &body, Some("sink.test")).await;
    let (d, mut rx) = deliverer(&trusted, trusted.dir.path(), "");
    assert_eq!(code(&send(&d).await), "delivered");
    let detail = sts_detail_of(&drain(&mut rx));
    assert!(
        detail.contains("testing: would pass under enforce"),
        "{detail}"
    );

    let mut untrusted = lab("mx.sink.test", "1", &body, None).await;
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mx.sink.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (crt, pem) = (
        untrusted.dir.path().join("self.crt"),
        untrusted.dir.path().join("self.key"),
    );
    std::fs::write(&crt, cert.pem()).unwrap();
    std::fs::write(&pem, key.serialize_pem()).unwrap();
    untrusted.sink = start_sink_with_files(&crt, &pem).await;
    let (d, mut rx) = deliverer(&untrusted, untrusted.dir.path(), "");
    assert_eq!(code(&send(&d).await), "delivered");
    assert_eq!(messages(untrusted.sink.maildir()).len(), 1);
    let detail = sts_detail_of(&drain(&mut rx));
    assert!(
        detail.contains(
            "testing: would fail under enforce: certificate does not validate for mx.sink.test"
        ),
        "{detail}"
    );
}

/// A sink offering STARTTLS with the certificate and key at these paths.
async fn start_sink_with_files(crt: &Path, key: &Path) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        tls_cert: Some(crt.into()),
        tls_key: Some(key.into()),
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

/// The MTA-STS part of the first attempt row that has one.
fn sts_detail_of(rows: &[TraceEvent]) -> String {
    rows.iter()
        .filter_map(|e| e.detail.clone())
        .find(|d| d.contains("MTA-STS"))
        .expect("MTA-STS in the attempt row")
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_cached_policy_and_a_new_id_is_fetched() {
    let lab = lab(
        "mx.sink.test",
        "1",
        &policy("enforce", &["mx.sink.test"], 86400),
        Some("sink.test"),
    )
    .await;
    let (d, _rx) = deliverer(&lab, lab.dir.path(), "");
    assert_eq!(code(&send(&d).await), "delivered");
    assert_eq!(lab.host.requests(), 1);

    // The domain moves its MX and announces a new policy, but the policy host is down:
    // the cached policy (id 1) still holds, so the new MX is refused.
    lab.dns.remove("sink.test");
    lab.dns.add_mx("sink.test", 10, "mx2.sink.test");
    lab.dns.remove("_mta-sts.sink.test");
    lab.dns.add_txt("_mta-sts.sink.test", "v=STSv1; id=2;");
    lab.host.set_down(true);
    assert_eq!(code(&send(&d).await), "temp 4.4.8");
    assert_eq!(lab.host.requests(), 1, "the refresh did not get through");

    // The policy host is back with the new policy: the failure re-checks the id (RFC 8461
    // §5.1), fetches id 2 and delivers to the new MX in the same attempt.
    lab.host
        .set_body(&policy("enforce", &["mx2.sink.test"], 86400));
    lab.host.set_down(false);
    assert_eq!(code(&send(&d).await), "delivered");
    assert_eq!(lab.host.requests(), 2);
    assert_eq!(messages(lab.sink.maildir()).len(), 2);
}

#[tokio::test]
async fn the_policy_cache_survives_a_restart() {
    let lab = lab(
        "mx.sink.test",
        "1",
        &policy("enforce", &["mx.sink.test"], 86400),
        Some("sink.test"),
    )
    .await;
    {
        let (d, _rx) = deliverer(&lab, lab.dir.path(), "");
        assert_eq!(code(&send(&d).await), "delivered");
    }
    // After the "restart" the policy host cannot be reached and the MX points elsewhere:
    // the policy from DataDir/mta-sts.sqlite still refuses the MX.
    lab.host.set_down(true);
    lab.dns.remove("sink.test");
    lab.dns.add_mx("sink.test", 10, "mx.other.test");
    let (d, _rx) = deliverer(&lab, lab.dir.path(), "");
    assert_eq!(code(&send(&d).await), "temp 4.4.8");
    // Control: without that cache (a fresh DataDir) nothing is known and the fetch fails,
    // so there is no MTA-STS (RFC 8461 §3.3) and the message goes out.
    let empty = tempfile::tempdir().unwrap();
    let (d, _rx) = deliverer(&lab, empty.path(), "");
    assert_eq!(code(&send(&d).await), "delivered");
}

/// Puts the policy host in one of the states under test.
type Setup<'a> = dyn Fn(&PolicyHost) + 'a;

#[tokio::test]
async fn unusable_policy_answers_mean_no_policy() {
    // Each case: a policy that would refuse the MX if it were accepted.
    let body = policy("enforce", &["mx.nowhere.test"], 86400);
    let lab = lab("mx.sink.test", "1", &body, Some("sink.test")).await;
    let cases: [(&str, &Setup<'_>); 4] = [
        ("redirect", &|h| h.set_status("301 Moved Permanently")),
        ("not found", &|h| h.set_status("404 Not Found")),
        ("media type", &|h| {
            h.set_status("200 OK");
            h.set_content_type("text/html")
        }),
        ("too large", &|h| {
            h.set_content_type("text/plain");
            h.set_body(&format!("{body}{}", "# padding\r\n".repeat(7000)))
        }),
    ];
    for (what, setup) in cases {
        setup(&lab.host);
        let dir = tempfile::tempdir().unwrap();
        let (d, _rx) = deliverer(&lab, dir.path(), "");
        assert_eq!(code(&send(&d).await), "delivered", "{what}");
    }
    // The same policy served properly refuses the MX: the cases above were really ignored.
    lab.host.set_body(&body);
    let dir = tempfile::tempdir().unwrap();
    let (d, _rx) = deliverer(&lab, dir.path(), "");
    assert_eq!(code(&send(&d).await), "temp 4.4.8");
}

#[tokio::test]
async fn a_policy_host_with_an_untrusted_certificate_gives_no_policy() {
    let body = policy("enforce", &["mx.nowhere.test"], 86400);
    let lab = lab("mx.sink.test", "1", &body, Some("sink.test")).await;
    // The policy host presents a certificate for another name.
    let wrong = PolicyHost::start("wrongname.crt", "wrongname.key", &body).await;
    let dir = tempfile::tempdir().unwrap();
    let policy_toml = config(&lab, dir.path(), "");
    let resolver =
        Arc::new(HickoryResolver::with_timeout(&[lab.dns.addr], Duration::from_secs(2)).unwrap());
    let settings = Settings {
        port: wrong.addr.port(),
        fetch_timeout: Duration::from_secs(10),
    };
    let d = Deliverer::new(Arc::new(support::policy(&policy_toml)), resolver)
        .with_mta_sts(&settings, Some(Arc::new(Store::open(dir.path()).unwrap())));
    assert_eq!(code(&send(&d).await), "delivered");
    assert_eq!(
        wrong.requests(),
        0,
        "no request over an unvalidated connection"
    );
}

#[tokio::test]
async fn validate_shows_the_mta_sts_steps() {
    let body = policy("enforce", &["mx.sink.test"], 86400);
    let lab = lab("mx.other.test", "7", &body, Some("sink.test")).await;
    let connector = r#"
[[OutboundConnector]]
Name = "To Sink"
RecipientDomains = ["sink.test"]
"#;
    let resolver =
        Arc::new(HickoryResolver::with_timeout(&[lab.dns.addr], Duration::from_secs(2)).unwrap());
    let policy = Arc::new(support::policy(&config(&lab, lab.dir.path(), connector)));
    let rcpts = vec!["user@sink.test".to_string()];
    let report = connector_relay::ops::validate::validate(
        policy.clone(),
        resolver.clone(),
        "To Sink",
        &rcpts,
    )
    .await;
    let failed = report.failed_step().expect("a failed step");
    assert_eq!(failed.step, "MtaSts", "{report:?}");
    assert!(
        failed
            .detail
            .starts_with("mx.other.test: 4.4.8 MX hosts of sink.test"),
        "{failed:?}"
    );
    // With the MX in the policy the step passes and names the policy and the verdict.
    lab.dns.remove("sink.test");
    lab.dns.add_mx("sink.test", 10, "mx.sink.test");
    let report =
        connector_relay::ops::validate::validate(policy, resolver, "To Sink", &rcpts).await;
    assert!(report.success, "{report:?}");
    let sts = report
        .steps
        .iter()
        .find(|s| s.step == "MtaSts")
        .expect("MtaSts step");
    assert!(
        sts.ok && sts.detail.contains("enforce (id 7") && sts.detail.contains("MX matched"),
        "{sts:?}"
    );
}

#[test]
fn explain_says_what_mta_sts_does_per_route() {
    let toml = r#"
[Relay]
Fqdn = "relay.contoso.test"
AcceptedDomains = ["contoso.test"]

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

[[OutboundConnector]]
Name = "Hub"
RecipientDomains = ["hub.test"]
UseMXRecord = false
SmartHosts = ["127.0.0.1:2525"]

[[OutboundConnector]]
Name = "No STS"
RecipientDomains = ["nosts.test"]
MtaStsMode = "None"
"#;
    let policy = support::policy(toml);
    let rcpts: Vec<String> = ["a@sink.test", "b@hub.test", "c@nosts.test"]
        .map(String::from)
        .to_vec();
    let e = connector_relay::ops::explain::explain(
        &policy,
        "127.0.0.10".parse().unwrap(),
        None,
        "s@contoso.test",
        &rcpts,
    );
    let sts: Vec<String> = e
        .recipients
        .iter()
        .map(|r| r.route.as_ref().expect("routed").mta_sts.clone())
        .collect();
    assert!(
        sts[0].starts_with("Opportunistic: at delivery, TXT _mta-sts.sink.test"),
        "{}",
        sts[0]
    );
    assert!(
        sts[1].starts_with("not applied: smart hosts are not MX hosts"),
        "{}",
        sts[1]
    );
    assert!(sts[2].starts_with("off (MtaStsMode = None"), "{}", sts[2]);
    assert!(
        e.to_text().contains("  MTA-STS: Opportunistic"),
        "{}",
        e.to_text()
    );
}
