//! DANE (RFC 7672) decision table over real sockets (README "DANE"): the production
//! resolver in `DnssecValidation = "Resolver"` mode (AD bit) against the test DNS server
//! (`tests/support/dns.rs`: AD per name, TLSA, SERVFAIL and bogus SERVFAIL), and the real
//! delivery engine against a real TLS sink. Each case asserts delivered (with or without
//! TLS) or deferred with Exchange's exact status, and a wrong TLSA must never deliver.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use connector_relay::delivery::{Deliverer, DelivererOptions, DeliveryJob, DeliveryStatus};
use connector_relay::dns::DnssecValidation;
use connector_relay::dns::hickory::HickoryResolver;
use connector_relay::sink::{self, SinkOptions, StartTlsMode};
use support::dns::{DnsFailure, TestDns};
use support::*;

const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn der(name: &str) -> Vec<u8> {
    let pem = std::fs::read(certs(name)).expect("test certificate");
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
    block.contents
}

fn sha256(b: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .to_vec()
}

fn spki_sha256(cert: &str) -> Vec<u8> {
    let der = der(cert);
    let (_, c) = x509_parser::parse_x509_certificate(&der).expect("certificate");
    sha256(c.public_key().raw)
}

/// What the destination's DNS says.
#[derive(Clone, Copy, PartialEq)]
enum Dnssec {
    /// MX, A and TLSA all secure.
    Secure,
    /// Nothing secure (unsigned zone, or a non-validating resolver).
    Insecure,
}

#[derive(Clone)]
enum Tlsa {
    None,
    Records(Vec<(u8, u8, u8, Vec<u8>)>),
    ServFail,
    Bogus,
}

struct Case {
    name: &'static str,
    mode: &'static str,
    dnssec: Dnssec,
    tlsa: Tlsa,
    cert: &'static str,
    starttls: StartTlsMode,
    /// `Ok(tls)`: delivered, over TLS or not; `Err(status)`: deferred with that status.
    expect: Result<bool, &'static str>,
    /// The message carries `TLS-Required: No` (RFC 8689 §5): DANE is not applied.
    tls_required_no: bool,
}

/// The destination of a case: a TLS sink as `mx` of `dest.test`, the test DNS server with
/// the case's records, the relay's policy (one Outbound connector "Partner" with the case's
/// SmtpDaneMode) and the production resolver in `Resolver` mode.
struct Setup {
    _dir: tempfile::TempDir,
    _sink: connector_relay::sink::SinkHandle,
    dns: TestDns,
    policy: connector_relay::policy::Policy,
    resolver: HickoryResolver,
}

async fn setup(case: &Case) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink::start(SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().join("maildir"),
        tls_cert: Some(certs(&format!("{}.crt", case.cert)).into()),
        tls_key: Some(certs(&format!("{}.key", case.cert)).into()),
        require_tls: false,
        client_ca: None,
        rcpt_hook: None,
        starttls: case.starttls,
        auth: None,
        discard: false,
        no_requiretls: false,
    })
    .await
    .expect("sink");
    let port = sink.addr.port();
    let dns = TestDns::start().await;
    let domain = "dest.test";
    let mx = "sink.test";
    dns.add_mx(domain, 10, mx);
    dns.add_ip(mx, LOCAL);
    let tlsa_name = format!("_{port}._tcp.{mx}");
    match &case.tlsa {
        Tlsa::None => dns.add_empty(&tlsa_name),
        Tlsa::Records(rs) => {
            for (u, s, m, d) in rs {
                dns.add_tlsa(&tlsa_name, *u, *s, *m, d.clone());
            }
        }
        Tlsa::ServFail => dns.fail(&tlsa_name, DnsFailure::ServFail),
        Tlsa::Bogus => dns.fail(&tlsa_name, DnsFailure::Bogus),
    }
    if case.dnssec == Dnssec::Secure {
        for n in [domain, mx, tlsa_name.as_str()] {
            dns.set_secure(n);
        }
    }
    let toml = format!(
        r#"
[Relay]
DeliveryPort = {port}

[[OutboundConnector]]
Name = "Partner"
RecipientDomains = ["{domain}"]
SmtpDaneMode = "{}"
"#,
        case.mode
    );
    let policy = connector_relay::config::load_str(&toml, Path::new("relay.toml"))
        .unwrap_or_else(|e| panic!("{}: config: {e:?}", case.name))
        .policy;
    let resolver = HickoryResolver::with_dnssec(
        &[dns.addr],
        Duration::from_secs(2),
        DnssecValidation::Resolver,
        None,
    )
    .unwrap();
    Setup {
        _dir: dir,
        _sink: sink,
        dns,
        policy,
        resolver,
    }
}

async fn run(case: &Case) {
    // Bound whole: the sink and the DNS server live until the end of the case.
    let setup = setup(case).await;
    let (policy, resolver) = (setup.policy, setup.resolver);
    let domain = "dest.test";
    let deliverer =
        Deliverer::new(Arc::new(policy), Arc::new(resolver)).with_options(DelivererOptions {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Some(Duration::from_secs(10)),
            data_end_timeout: Duration::from_secs(10),
        });
    let rcpts = vec![format!("user@{domain}")];
    let out = deliverer
        .deliver(&DeliveryJob {
            id: "dane1",
            mail_from: "sender@contoso.test",
            recipients: &rcpts,
            data: connector_relay::delivery::Data::memory(if case.tls_required_no {
                b"TLS-Required: No\r\nSubject: dane\r\n\r\nhello\r\n"
            } else {
                b"Subject: dane\r\n\r\nhello\r\n"
            }),
            from_outside_org: false,
            requiretls: false,
        })
        .await;
    let o = &out[0];
    match (&case.expect, &o.status) {
        (Ok(tls), DeliveryStatus::Delivered { .. }) => {
            assert_eq!(
                o.tls.is_some(),
                *tls,
                "{}: TLS used? {:?}",
                case.name,
                o.tls
            );
        }
        (Err(code), DeliveryStatus::Temporary(f)) => {
            assert_eq!(f.enhanced, *code, "{}: {f}", case.name);
        }
        (want, got) => panic!("{}: expected {want:?}, got {got:?}", case.name),
    }
}

fn cases() -> Vec<Case> {
    let ee = spki_sha256("sink.test.crt");
    let wrong = vec![0xab; 32];
    let ca_full = der("ca.crt");
    use StartTlsMode::*;
    let case = |name, mode, dnssec, tlsa: Tlsa, cert, starttls, expect| Case {
        name,
        mode,
        dnssec,
        tlsa,
        cert,
        starttls,
        expect,
        tls_required_no: false,
    };
    let recs = |v: Vec<(u8, u8, u8, Vec<u8>)>| Tlsa::Records(v);
    vec![
        // Opportunistic
        case(
            "opp/no-tlsa",
            "Opportunistic",
            Dnssec::Secure,
            Tlsa::None,
            "sink.test",
            Offer,
            Ok(true),
        ),
        case(
            "opp/no-tlsa/no-starttls",
            "Opportunistic",
            Dnssec::Secure,
            Tlsa::None,
            "sink.test",
            Hide,
            Ok(false),
        ),
        case(
            "opp/insecure-wrong-tlsa-ignored",
            "Opportunistic",
            Dnssec::Insecure,
            recs(vec![(3, 1, 1, wrong.clone())]),
            "sink.test",
            Offer,
            Ok(true),
        ),
        case(
            "opp/ee-match",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, ee.clone())]),
            "sink.test",
            Offer,
            Ok(true),
        ),
        case(
            "opp/ee-match-among-wrong",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, wrong.clone()), (3, 1, 1, ee.clone())]),
            "sink.test",
            Offer,
            Ok(true),
        ),
        case(
            "opp/ee-no-match",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, wrong.clone())]),
            "sink.test",
            Offer,
            Err("4.7.323"),
        ),
        case(
            "opp/ee-no-starttls",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, ee.clone())]),
            "sink.test",
            Hide,
            Err("4.7.321"),
        ),
        case(
            "opp/ee-starttls-refused",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, ee.clone())]),
            "sink.test",
            Refuse,
            Err("4.7.321"),
        ),
        case(
            "opp/tlsa-servfail",
            "Opportunistic",
            Dnssec::Secure,
            Tlsa::ServFail,
            "sink.test",
            Offer,
            Err("4.7.324"),
        ),
        case(
            "opp/tlsa-bogus",
            "Opportunistic",
            Dnssec::Secure,
            Tlsa::Bogus,
            "sink.test",
            Offer,
            Err("4.7.324"),
        ),
        case(
            "opp/unusable-forces-tls",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(1, 1, 1, ee.clone())]),
            "sink.test",
            Hide,
            Err("4.7.321"),
        ),
        case(
            "opp/unusable-tls-ok",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(0, 0, 1, wrong.clone())]),
            "selfsigned",
            Offer,
            Ok(true),
        ),
        case(
            "opp/ee-expired-cert-dates-ignored",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, spki_sha256("expired.crt"))]),
            "expired",
            Offer,
            Ok(true),
        ),
        case(
            "opp/ee-full-cert",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(3, 0, 1, sha256(&der("wrongname.crt")))]),
            "wrongname",
            Offer,
            Ok(true),
        ),
        case(
            "opp/ta-name-ok",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(2, 0, 0, ca_full.clone())]),
            "sink.test",
            Offer,
            Ok(true),
        ),
        case(
            "opp/ta-name-mismatch",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(2, 0, 0, ca_full.clone())]),
            "wrongname",
            Offer,
            Err("4.7.325"),
        ),
        case(
            "opp/ta-expired",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(2, 0, 0, ca_full.clone())]),
            "expired",
            Offer,
            Err("4.7.322"),
        ),
        case(
            "opp/ta-other-ca",
            "Opportunistic",
            Dnssec::Secure,
            recs(vec![(2, 0, 0, ca_full.clone())]),
            "selfsigned",
            Offer,
            Err("4.7.323"),
        ),
        // Mandatory
        case(
            "mand/no-tlsa",
            "Mandatory",
            Dnssec::Secure,
            Tlsa::None,
            "sink.test",
            Offer,
            Err("4.7.323"),
        ),
        case(
            "mand/insecure",
            "Mandatory",
            Dnssec::Insecure,
            recs(vec![(3, 1, 1, ee.clone())]),
            "sink.test",
            Offer,
            Err("4.7.323"),
        ),
        case(
            "mand/unusable",
            "Mandatory",
            Dnssec::Secure,
            recs(vec![(1, 1, 1, ee.clone())]),
            "sink.test",
            Offer,
            Err("4.7.323"),
        ),
        case(
            "mand/ee-match",
            "Mandatory",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, ee.clone())]),
            "sink.test",
            Offer,
            Ok(true),
        ),
        case(
            "mand/ee-no-match",
            "Mandatory",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, wrong.clone())]),
            "sink.test",
            Offer,
            Err("4.7.323"),
        ),
        case(
            "mand/tlsa-bogus",
            "Mandatory",
            Dnssec::Secure,
            Tlsa::Bogus,
            "sink.test",
            Offer,
            Err("4.7.324"),
        ),
        case(
            "mand/no-starttls",
            "Mandatory",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, ee.clone())]),
            "sink.test",
            Hide,
            Err("4.7.321"),
        ),
        // None: DANE is not consulted at all.
        case(
            "none/wrong-tlsa",
            "None",
            Dnssec::Secure,
            recs(vec![(3, 1, 1, wrong.clone())]),
            "sink.test",
            Offer,
            Ok(true),
        ),
        case(
            "none/tlsa-bogus",
            "None",
            Dnssec::Secure,
            Tlsa::Bogus,
            "sink.test",
            Offer,
            Ok(true),
        ),
        // TLS-Required: No (RFC 8689 §5): the route's own TLS settings, no DANE: a
        // mismatching TLSA and a Mandatory mode without TLSA both deliver.
        Case {
            tls_required_no: true,
            ..case(
                "tls-required-no/ee-mismatch",
                "Mandatory",
                Dnssec::Secure,
                recs(vec![(3, 1, 1, wrong.clone())]),
                "sink.test",
                Offer,
                Ok(true),
            )
        },
        Case {
            tls_required_no: true,
            ..case(
                "tls-required-no/mandatory-no-tlsa",
                "Mandatory",
                Dnssec::Secure,
                Tlsa::None,
                "sink.test",
                Offer,
                Ok(true),
            )
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decision_table() {
    for case in cases() {
        run(&case).await;
    }
}

/// `validate` shows the DANE step: the records, their DNSSEC status and the verdict, ok
/// for a matching DANE-EE record, failed for a mismatch (after connecting) and for
/// Mandatory without TLSA (refused before connecting: no Connect step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_shows_the_dane_step() {
    let ee = spki_sha256("sink.test.crt");
    let case = |name, mode, tlsa| Case {
        name,
        mode,
        dnssec: Dnssec::Secure,
        tlsa,
        cert: "sink.test",
        starttls: StartTlsMode::Offer,
        expect: Ok(true),
        tls_required_no: false,
    };
    let rcpts = vec!["user@dest.test".to_string()];
    let cases = [
        (
            case("match", "Mandatory", Tlsa::Records(vec![(3, 1, 1, ee)])),
            true,
            true,
        ),
        (
            case(
                "mismatch",
                "Opportunistic",
                Tlsa::Records(vec![(3, 1, 1, vec![0xab; 32])]),
            ),
            false,
            true,
        ),
        (case("required", "Mandatory", Tlsa::None), false, false),
    ];
    for (case, ok, connected) in cases {
        let setup = setup(&case).await;
        let report = connector_relay::ops::validate::validate(
            Arc::new(setup.policy.clone()),
            Arc::new(
                HickoryResolver::with_dnssec(
                    &[setup.dns.addr],
                    Duration::from_secs(2),
                    DnssecValidation::Resolver,
                    None,
                )
                .unwrap(),
            ),
            "Partner",
            &rcpts,
        )
        .await;
        let dane = report.steps.iter().find(|s| s.step == "Dane");
        let dane = dane.unwrap_or_else(|| panic!("{}: a Dane step: {report:?}", case.name));
        assert_eq!(dane.ok, ok, "{}: {dane:?}", case.name);
        assert!(dane.detail.contains("TLSA"), "{}: {dane:?}", case.name);
        assert_eq!(report.success, ok, "{}: {report:?}", case.name);
        if !ok {
            assert_eq!(
                report.failed_step().map(|s| s.step),
                Some("Dane"),
                "{}",
                case.name
            );
        }
        let connect = report.steps.iter().any(|s| s.step == "Connect");
        assert_eq!(connect, connected, "{}: {report:?}", case.name);
    }
}

/// RFC 7672 §2.2.1 and Exchange: a DANE failure at one MX host moves on to the next one;
/// the first host's TLSA does not match, the second's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_mx_is_tried_after_a_dane_failure() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink::start(SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().join("maildir"),
        tls_cert: Some(certs("sink.test.crt").into()),
        tls_key: Some(certs("sink.test.key").into()),
        require_tls: false,
        client_ca: None,
        rcpt_hook: None,
        starttls: StartTlsMode::Offer,
        auth: None,
        discard: false,
        no_requiretls: false,
    })
    .await
    .unwrap();
    let port = sink.addr.port();
    let dns = TestDns::start().await;
    dns.add_mx("two.test", 10, "mx1.two.test");
    dns.add_mx("two.test", 20, "mx2.two.test");
    for mx in ["mx1.two.test", "mx2.two.test"] {
        dns.add_ip(mx, LOCAL);
        dns.set_secure(mx);
    }
    dns.set_secure("two.test");
    let t1 = format!("_{port}._tcp.mx1.two.test");
    let t2 = format!("_{port}._tcp.mx2.two.test");
    dns.add_tlsa(&t1, 3, 1, 1, vec![0xab; 32]);
    dns.add_tlsa(&t2, 3, 1, 1, spki_sha256("sink.test.crt"));
    dns.set_secure(&t1);
    dns.set_secure(&t2);
    let toml = format!("[Relay]\nDeliveryPort = {port}\n");
    let policy = connector_relay::config::load_str(&toml, Path::new("relay.toml"))
        .unwrap()
        .policy;
    let resolver = HickoryResolver::with_dnssec(
        &[dns.addr],
        Duration::from_secs(2),
        DnssecValidation::Resolver,
        None,
    )
    .unwrap();
    // The default MX route: SmtpDaneMode Opportunistic.
    let deliverer = Deliverer::new(Arc::new(policy), Arc::new(resolver));
    let rcpts = vec!["a@two.test".to_string()];
    let out = deliverer
        .deliver(&DeliveryJob {
            id: "dane2",
            mail_from: "",
            recipients: &rcpts,
            data: connector_relay::delivery::Data::memory(b"Subject: x\r\n\r\nx\r\n"),
            from_outside_org: false,
            requiretls: false,
        })
        .await;
    assert!(out[0].status.is_delivered(), "{:?}", out[0].status);
    assert_eq!(
        out[0].remote_host.as_deref(),
        Some("mx2.two.test [127.0.0.1]")
    );
    // mx1 failed DANE first: both TLSA names were asked, mx1's before mx2's.
    let asked = dns.queried_names();
    let i1 = asked.iter().position(|n| *n == t1.to_ascii_lowercase());
    let i2 = asked.iter().position(|n| *n == t2.to_ascii_lowercase());
    assert!(i1.is_some() && i1 < i2, "{asked:?}");
}
