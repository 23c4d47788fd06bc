//! Connector validation and the policy explainer (issue 6), plus the delivery engine's
//! `Routed` / `Attempt` trace events they are built on.
//!
//! Validation sends for real: through smart-host connectors to sinks on loopback that
//! present certificates from `certs-test/` (right name, wrong name, STARTTLS refused), with
//! the relay trusting the test CA. The explainer is checked against the library, the
//! binary (`--json`) and the live relay (its answers must be the replies a real session
//! gets).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use connector_relay::delivery::{Data, Deliverer, DeliveryJob};
use connector_relay::dns::Resolver;
use connector_relay::dns::hickory::HickoryResolver;
use connector_relay::ops::{self, ValidationReport};
use connector_relay::sink::{self, SinkOptions, StartTlsMode};
use connector_relay::trace::{EventKind, Events, TraceEvent};
use support::*;

/// A sink on 127.0.0.1 presenting `certs-test/<cert>.crt`, answering STARTTLS per `mode`.
async fn tls_sink(cert: &str, mode: StartTlsMode) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        tls_cert: Some(certs(&format!("{cert}.crt")).into()),
        tls_key: Some(certs(&format!("{cert}.key")).into()),
        starttls: mode,
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

/// `[Relay]` for validation configs: trusts the test CA (with its CRL), spool in `dir`.
fn relay_section(dir: &Path) -> String {
    format!(
        r#"# The lab relay.
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TrustedCaFile = "{ca}"
RevocationLists = ["{crl}"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{spool}"
DataDir = "{spool}"
"#,
        ca = certs("ca.crt"),
        crl = certs("ca.crl.pem"),
        spool = dir.join("spool").display(),
    )
}

fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("relay.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn resolver() -> Arc<dyn Resolver> {
    Arc::new(HickoryResolver::with_timeout(&[], Duration::from_secs(2)).unwrap())
}

fn load(path: &Path) -> connector_relay::policy::Policy {
    connector_relay::config::load_file(path)
        .map_err(|e| format!("{e:?}"))
        .unwrap()
        .policy
}

/// Runs the real binary (off the runtime's threads: the sinks live on them).
async fn run_binary(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("binary runs")
    })
    .await
    .unwrap()
}

fn step<'a>(report: &'a ValidationReport, name: &str) -> &'a ops::Step {
    report
        .steps
        .iter()
        .find(|s| s.step == name)
        .unwrap_or_else(|| panic!("no {name} step in {report:#?}"))
}

#[tokio::test]
async fn validate_cli_succeeds_and_records_the_validation_keeping_comments() {
    let sink = tls_sink("sink.test", StartTlsMode::Offer).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{relay}
# The partner's relay, to be validated before use.
[[OutboundConnector]]
Name = "To partner"
RecipientDomains = ["partner.test"]
UseMXRecord = false
SmartHosts = ["{sink}"] # the sink plays the partner
TlsSettings = "CertificateValidation"
ValidationRecipients = ["check@partner.test", "someone@elsewhere.test"] # two domains
"#,
        relay = relay_section(dir.path()),
        sink = sink.addr(),
    );
    let path = write_config(dir.path(), &text);
    let out = run_binary(vec![
        "validate".into(),
        "--config".into(),
        path.display().to_string(),
        "--connector".into(),
        "To partner".into(),
    ])
    .await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    for expected in [
        "Recipients: check@partner.test, someone@elsewhere.test",
        "[ ok ] Route       Outbound connector \"To partner\": smart hosts",
        "elsewhere.test is normally carried by the default MX route",
        &format!("[ ok ] NextHops    127.0.0.1 [{}]", sink.addr()),
        "[ ok ] Connect     127.0.0.1 [127.0.0.1]",
        "[ ok ] TLS         TLSv1.3 TLS13_",
        "[ ok ] Certificate CertificateValidation: chain ok, dates ok, not revoked (RevocationLists); name not checked; presented \"CN=sink.test, O=connector-relay tests\"",
        "[ ok ] Reply       250 ",
        "Result: validated",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }

    // The test message arrived over TLS, to both recipients (the route was forced).
    let msgs = wait_messages(sink.maildir(), 1, Duration::from_secs(10)).await;
    assert_eq!(msgs.len(), 1);
    assert!(msgs[0].contains("Subject: connector-relay validation of To partner\r\n"));
    assert!(msgs[0].contains("X-Sink-Tls:"), "{}", msgs[0]);
    assert!(msgs[0].contains("X-Sink-Rcpt-To: <check@partner.test>\r\n"));
    assert!(msgs[0].contains("X-Sink-Rcpt-To: <someone@elsewhere.test>\r\n"));

    // Recorded in the file, comments and layout kept.
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.starts_with(&text.trim_end().to_string()), "{after}");
    assert!(after.contains("# The partner's relay, to be validated before use.\n"));
    assert!(after.contains("# the sink plays the partner\n"));
    assert!(after.contains("IsValidated = true\n"), "{after}");
    let policy = load(&path);
    let c = &policy.outbound[0];
    assert!(c.is_validated);
    let ts = c.last_validation_timestamp.as_deref().unwrap();
    assert!(
        ts.len() == 20 && ts.starts_with("20") && ts.ends_with('Z'),
        "{ts}"
    );
    assert!(
        stderr.contains(&format!("LastValidationTimestamp = {ts}")),
        "{stderr}"
    );

    // The validation is in the message trace (DataDir's store), as the admin API's is:
    // found by the Message-ID the report printed, with the `trace` command.
    let message_id = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Message-ID: "))
        .expect("the report names the test message")
        .to_string();
    let out = run_binary(vec![
        "trace".into(),
        "--config".into(),
        path.display().to_string(),
        "--message-id".into(),
        message_id.clone(),
        "--json".into(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    for event in ["Routed", "Attempt"] {
        let row = rows
            .iter()
            .find(|r| r["event"] == event)
            .unwrap_or_else(|| panic!("no {event} row for {message_id} in {rows:?}"));
        assert_eq!(row["connector"], "To partner", "{row}");
        assert!(
            row["queue_id"].as_str().unwrap().starts_with("validate-"),
            "{row}"
        );
    }
    let routed = rows.iter().filter(|r| r["event"] == "Routed").count();
    assert_eq!(routed, 2, "one Routed row per recipient: {rows:?}");
}

#[tokio::test]
async fn validate_names_the_certificate_step_on_a_wrong_name_and_records_not_validated() {
    let sink = tls_sink("wrongname", StartTlsMode::Offer).await;
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(
        dir.path(),
        &format!(
            r#"{relay}
[[OutboundConnector]]
Name = "To partner"
RecipientDomains = ["partner.test"]
UseMXRecord = false
SmartHosts = ["{sink}"]
TlsSettings = "DomainValidation"
TlsDomain = "sink.test"
ValidationRecipients = ["check@partner.test"]
IsValidated = true
LastValidationTimestamp = "2020-01-01 00:00:00z" # the last good one
"#,
            relay = relay_section(dir.path()),
            sink = sink.addr(),
        ),
    );
    let policy = Arc::new(load(&path));
    let report = ops::validate(policy, resolver(), "to PARTNER", &[]).await;
    assert!(!report.success, "{report:#?}");
    assert_eq!(report.error, None);
    assert_eq!(report.connector, "To partner");
    assert!(step(&report, "Connect").ok);
    let failed = report.failed_step().unwrap();
    assert_eq!(failed.step, "Certificate", "{report:#?}");
    assert!(
        failed.detail.starts_with(
            "DomainValidation: name check failed: SubjectMismatch Expected Subject: sink.test. Presented Subject: CN=mail.evil.test"
        ),
        "{}",
        failed.detail
    );
    assert!(
        failed.detail.ends_with("; status 4.4.317"),
        "{}",
        failed.detail
    );
    assert!(
        report
            .to_text()
            .contains("Result: validation failed at step Certificate")
    );
    assert!(
        messages(sink.maildir()).is_empty(),
        "nothing may be delivered"
    );

    ops::record(&path, &report).unwrap().expect("recorded");
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(after.contains("IsValidated = false\n"), "{after}");
    assert!(
        after.contains("LastValidationTimestamp = \"2020-01-01 00:00:00z\" # the last good one"),
        "{after}"
    );
}

#[tokio::test]
async fn validate_send_connector_with_starttls_refused_and_bad_requests() {
    let sink = tls_sink("sink.test", StartTlsMode::Refuse).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"{relay}
[[OutboundConnector]]
Name = "No recipients"
RecipientDomains = ["partner.test"]

[[SendConnector]]
Name = "Smart host"
AddressSpaces = ["SMTP:other.test;1"]
DNSRoutingEnabled = false
SmartHosts = ["127.0.0.1"]
Port = {port}
RequireTLS = true
TlsAuthLevel = "CertificateValidation"
"#,
        relay = relay_section(dir.path()),
        port = sink.addr().port(),
    );
    let path = write_config(dir.path(), &text);
    let policy = Arc::new(load(&path));
    let rcpt = vec!["a@other.test".to_string()];
    let report = ops::validate(policy.clone(), resolver(), "Smart host", &rcpt).await;
    assert!(!report.success);
    assert_eq!(
        report.direction,
        Some(connector_relay::config::edit::Direction::Send)
    );
    let failed = report.failed_step().unwrap();
    assert_eq!(failed.step, "TLS", "{report:#?}");
    assert!(
        failed
            .detail
            .starts_with("4.4.317 STARTTLS refused: 454 4.7.0"),
        "{}",
        failed.detail
    );
    // Send connectors have no IsValidated: nothing is written.
    assert!(ops::record(&path, &report).unwrap().is_none());
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);

    // Requests that cannot run: the reason, no steps, nothing sent.
    let unknown = ops::validate(policy.clone(), resolver(), "Nobody", &rcpt).await;
    assert_eq!(
        unknown.error.as_deref(),
        Some("there is no Outbound or Send connector named \"Nobody\"")
    );
    let none = ops::validate(policy.clone(), resolver(), "No recipients", &[]).await;
    assert!(
        none.error
            .as_deref()
            .unwrap()
            .contains("has no ValidationRecipients"),
        "{none:?}"
    );
    let bad = ops::validate(policy, resolver(), "Smart host", &["not an address".into()]).await;
    assert!(bad.error.is_some() && bad.steps.is_empty());
    assert_eq!(
        sink.handle.connections(),
        1,
        "only the real attempt connected"
    );

    // The binary: exit 3 for a failed validation, 1 for an unknown connector.
    let args = |name: &str| {
        vec![
            "validate".to_string(),
            "--config".into(),
            path.display().to_string(),
            "--connector".into(),
            name.into(),
            "--recipient".into(),
            "a@other.test".into(),
        ]
    };
    assert_eq!(run_binary(args("Smart host")).await.status.code(), Some(3));
    assert_eq!(run_binary(args("Nobody")).await.status.code(), Some(1));
}

#[tokio::test]
async fn attempt_events_carry_host_ip_tls_certificate_and_reply() {
    let good = tls_sink("sink.test", StartTlsMode::Offer).await;
    let broken = tls_sink("sink.test", StartTlsMode::Break).await;
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(&format!(
        r#"{relay}
[[OutboundConnector]]
Name = "Validated"
RecipientDomains = ["a.test"]
UseMXRecord = false
SmartHosts = ["{good}"]
TlsSettings = "DomainValidation"
TlsDomain = "*.sink.test"

[[OutboundConnector]]
Name = "Opportunistic"
RecipientDomains = ["b.test"]
UseMXRecord = false
SmartHosts = ["{broken}"]
"#,
        relay = relay_section(dir.path()),
        good = good.addr(),
        broken = broken.addr(),
    ));
    let (events, mut rx) = Events::channel();
    let deliverer = Deliverer::new(Arc::new(policy), resolver()).with_events(events);
    let rcpts = vec!["x@a.test".to_string(), "y@b.test".to_string()];
    let outcomes = deliverer
        .deliver(&DeliveryJob {
            id: "q-events",
            mail_from: "alice@contoso.test",
            recipients: &rcpts,
            data: Data::memory(b"Message-ID: <events-1@contoso.test>\r\nSubject: t\r\n\r\nhi\r\n"),
            from_outside_org: false,
            requiretls: false,
        })
        .await;
    assert!(
        outcomes.iter().all(|o| o.status.is_delivered()),
        "{outcomes:?}"
    );
    drop(deliverer);
    let mut all: Vec<TraceEvent> = Vec::new();
    while let Ok(e) = rx.try_recv() {
        all.push(e);
    }
    for e in &all {
        assert_eq!(e.queue_id.as_deref(), Some("q-events"));
        assert_eq!(e.message_id.as_deref(), Some("<events-1@contoso.test>"));
        assert_eq!(e.sender.as_deref(), Some("alice@contoso.test"));
    }
    let of = |kind: EventKind, connector: &str| -> Vec<&TraceEvent> {
        all.iter()
            .filter(|e| e.event == kind && e.connector.as_deref() == Some(connector))
            .collect()
    };

    let routed = of(EventKind::Routed, "Validated");
    assert_eq!(routed.len(), 1);
    assert_eq!(routed[0].recipient.as_deref(), Some("x@a.test"));
    assert_eq!(
        routed[0].detail.as_deref(),
        Some(
            format!(
                "Outbound connector \"Validated\": smart hosts {}; TLS: required, DomainValidation (chain, dates, revocation; a certificate name must match TlsDomain *.sink.test)",
                good.addr()
            )
            .as_str()
        )
    );
    let attempts = of(EventKind::Attempt, "Validated");
    assert_eq!(attempts.len(), 1, "{attempts:#?}");
    let a = attempts[0];
    assert_eq!(a.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(a.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(a.recipient.as_deref(), Some("x@a.test"));
    assert!(
        a.tls.as_deref().unwrap().starts_with("TLSv1.3 TLS13_"),
        "{a:?}"
    );
    assert!(
        a.certificate.as_deref().unwrap().starts_with(
            "DomainValidation: chain ok, dates ok, not revoked (RevocationLists); name sink.test matched TlsDomain *.sink.test; presented \"CN=sink.test"
        ),
        "{a:?}"
    );
    assert!(a.reply.as_deref().unwrap().starts_with("250 "), "{a:?}");
    assert_eq!(a.rule, None);
    assert_eq!(
        a.detail.as_deref(),
        Some(format!("address 1 of 1; next hops: 127.0.0.1 [{}]", good.addr()).as_str())
    );

    // Opportunistic TLS whose handshake breaks: the failed STARTTLS session, then the
    // plaintext one, each its own Attempt.
    let attempts = of(EventKind::Attempt, "Opportunistic");
    assert_eq!(attempts.len(), 2, "{attempts:#?}");
    assert_eq!(attempts[0].rule.as_deref(), Some("StartTls"));
    assert_eq!(attempts[0].tls, None);
    assert!(
        attempts[0]
            .reply
            .as_deref()
            .unwrap()
            .starts_with("4.4.317 TLS handshake failed"),
        "{:?}",
        attempts[0]
    );
    assert!(
        attempts[0]
            .detail
            .as_deref()
            .unwrap()
            .contains("retried in plaintext")
    );
    assert_eq!(attempts[1].rule, None);
    assert_eq!(attempts[1].tls, None);
    assert_eq!(attempts[1].certificate, None);
    assert!(attempts[1].reply.as_deref().unwrap().starts_with("250 "));
    assert!(
        attempts[1]
            .detail
            .as_deref()
            .unwrap()
            .ends_with("plaintext after the failed STARTTLS")
    );
}

/// The explainer's config: an OnPremises connector by IP and one by certificate, a
/// forced-TLS partner, and routes with different TLS levels.
fn explain_config(spool: &Path) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TlsCertificate = "{relay_crt}"
TlsPrivateKey = "{relay_key}"
TrustedCaFile = "{ca}"
RevocationLists = ["{crl}"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{spool}"
DataDir = "{spool}"

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.8/29"]

[[InboundConnector]]
Name = "On-premises by certificate"
ConnectorType = "OnPremises"
TlsSenderCertificateName = "onprem.contoso.test"

[[InboundConnector]]
Name = "From Fabrikam"
SenderDomains = ["fabrikam.test", "*.fabrikam.test"]
RequireTls = true
TlsSenderCertificateName = "mail.fabrikam.test"
RestrictDomainsToCertificate = true

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["127.0.0.11:2626"]
TlsSettings = "CertificateValidation"

[[OutboundConnector]]
Name = "To Fabrikam"
RecipientDomains = ["fabrikam.test"]
TlsSettings = "DomainValidation"
TlsDomain = "*.fabrikam.test"
"#,
        relay_crt = certs("relay.contoso.test.crt"),
        relay_key = certs("relay.contoso.test.key"),
        ca = certs("ca.crt"),
        crl = certs("ca.crl.pem"),
        spool = spool.display(),
    )
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[test]
fn explain_attribution_restrictions_relay_and_routes() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy(&explain_config(dir.path()));
    let fabrikam_cert = std::fs::read(certs("mail.fabrikam.test.crt")).unwrap();

    // The partner with its trusted certificate.
    let e = ops::explain(
        &policy,
        "127.0.0.20".parse().unwrap(),
        Some(&fabrikam_cert),
        "alice@fabrikam.test",
        &strings(&["bob@contoso.test", "carol@example.com"]),
    );
    assert!(e.tls && e.errors.is_empty(), "{e:#?}");
    let cert = e.client_certificate.as_ref().unwrap();
    assert!(
        cert.trusted && cert.names == ["mail.fabrikam.test"],
        "{cert:?}"
    );
    assert!(
        e.connect_attribution.is_none(),
        "a SenderDomains partner waits for MAIL FROM"
    );
    let a = e.attribution.as_ref().unwrap();
    assert_eq!(
        (
            a.connector.as_str(),
            a.connector_type.as_str(),
            a.by.as_str()
        ),
        ("From Fabrikam", "Partner", "SenderDomain")
    );
    assert_eq!(
        a.why,
        "sender domain fabrikam.test matches SenderDomains fabrikam.test"
    );
    assert_eq!(e.mail_from.reply, "250 2.1.0 Sender OK");
    let plain = e.mail_from_without_tls.as_ref().unwrap();
    assert_eq!(plain.rule.as_deref(), Some("RequireTls"));
    assert_eq!(
        plain.reply,
        "451 5.7.3 STARTTLS is required to send mail; connector \"From Fabrikam\" requires TLS"
    );
    let bob = &e.recipients[0];
    assert!(bob.verdict.accepted);
    assert_eq!(bob.verdict.reply, "250 2.1.5 Recipient OK");
    assert_eq!(
        bob.why,
        "contoso.test is an accepted domain (AcceptedDomains contoso.test)"
    );
    let route = bob.route.as_ref().unwrap();
    assert_eq!(route.connector.as_deref(), Some("To on-premises"));
    assert_eq!(route.kind.as_deref(), Some("Outbound"));
    assert_eq!(route.next_hops, "smart hosts 127.0.0.11:2626");
    assert_eq!(route.tls_level, "CertificateValidation");
    let carol = &e.recipients[1];
    assert!(!carol.verdict.accepted && carol.route.is_none());
    assert_eq!(
        carol.verdict.rule.as_deref(),
        Some("RelayWithoutOnPremisesAttribution")
    );
    assert_eq!(
        carol.verdict.reply,
        "550 5.7.64 TenantAttribution; Relay Access Denied (connector \"From Fabrikam\" is not an OnPremises connector)"
    );

    // The partner without a certificate: RestrictDomainsToCertificate refuses at RCPT.
    let e = ops::explain(
        &policy,
        "127.0.0.20".parse().unwrap(),
        None,
        "alice@fabrikam.test",
        &strings(&["bob@contoso.test"]),
    );
    let bob = &e.recipients[0];
    assert_eq!(
        bob.verdict.rule.as_deref(),
        Some("RestrictDomainsToCertificate")
    );
    assert_eq!(bob.verdict.connector.as_deref(), Some("From Fabrikam"));
    assert_eq!(
        bob.verdict.reply,
        "550 5.7.51 TenantInboundAttribution; connector \"From Fabrikam\" requires a TLS client certificate for mail.fabrikam.test: no client certificate was presented"
    );

    // On-premises by IP: relaying allowed; routes by recipient domain and TLS level.
    let e = ops::explain(
        &policy,
        "127.0.0.10".parse().unwrap(),
        None,
        "app@contoso.test",
        &strings(&["carol@fabrikam.test", "<dave@example.com>"]),
    );
    let a = e.attribution.as_ref().unwrap();
    assert_eq!(a.by, "IpAddress");
    assert_eq!(
        a.why,
        "client IP 127.0.0.10 is in SenderIPAddresses 127.0.0.8/29"
    );
    let carol = &e.recipients[0];
    assert!(carol.verdict.accepted, "{carol:?}");
    assert_eq!(
        carol.why,
        "relaying allowed: the session is attributed to OnPremises connector \"From on-premises\""
    );
    let route = carol.route.as_ref().unwrap();
    assert_eq!(route.connector.as_deref(), Some("To Fabrikam"));
    assert_eq!(route.next_hops, "MX lookup of fabrikam.test (port 25)");
    assert_eq!(route.tls_level, "DomainValidation");
    assert!(
        route.tls.contains("TlsDomain *.fabrikam.test"),
        "{}",
        route.tls
    );
    let dave = &e.recipients[1];
    assert_eq!(dave.recipient, "dave@example.com");
    let route = dave.route.as_ref().unwrap();
    assert_eq!(route.connector, None);
    assert_eq!(route.next_hops, "MX lookup of example.com (port 25)");
    assert_eq!(route.tls_level, "opportunistic");

    // On-premises by certificate name, from an address no connector lists.
    let onprem_cert = std::fs::read(certs("onprem.contoso.test.crt")).unwrap();
    let e = ops::explain(
        &policy,
        "127.0.0.99".parse().unwrap(),
        Some(&onprem_cert),
        "<>",
        &strings(&["x@example.com"]),
    );
    let a = e.connect_attribution.as_ref().unwrap();
    assert_eq!(
        (a.connector.as_str(), a.by.as_str()),
        ("On-premises by certificate", "Certificate")
    );
    assert_eq!(
        a.why,
        "client certificate name onprem.contoso.test matches TlsSenderCertificateName onprem.contoso.test"
    );
    assert!(e.recipients[0].verdict.accepted);

    // An expired certificate does not count; an unreadable one is an error.
    let expired = std::fs::read(certs("expired.crt")).unwrap();
    let e = ops::explain(
        &policy,
        "127.0.0.99".parse().unwrap(),
        Some(&expired),
        "a@example.org",
        &strings(&["x@example.com"]),
    );
    let cert = e.client_certificate.as_ref().unwrap();
    assert!(!cert.trusted && cert.problem.as_deref().unwrap().contains("expired"));
    assert!(e.attribution.is_none());
    assert_eq!(
        e.recipients[0].verdict.reply,
        "550 5.7.64 TenantAttribution; Relay Access Denied"
    );
    let e = ops::explain(
        &policy,
        "127.0.0.99".parse().unwrap(),
        Some(b"not a certificate"),
        "a@example.org",
        &strings(&["x@contoso.test"]),
    );
    assert_eq!(e.errors.len(), 1, "{e:#?}");
}

/// The explainer's replies are the ones a real session gets from the live relay.
#[tokio::test]
async fn explain_agrees_with_the_live_relay() {
    let dir = tempfile::tempdir().unwrap();
    let text = explain_config(&dir.path().join("spool"));
    let policy = policy(&text);
    let relay = start_relay(&text, None).await;
    let addr = relay.smtp_addrs[0];
    let partner: std::net::IpAddr = "127.0.0.20".parse().unwrap();
    let explained = |ip: &str, sender: &str, rcpt: &str| {
        ops::explain(
            &policy,
            ip.parse().unwrap(),
            None,
            sender,
            &strings(&[rcpt]),
        )
    };

    // Plaintext: RequireTls at MAIL FROM.
    let e = explained("127.0.0.20", "alice@fabrikam.test", "bob@contoso.test");
    let mut d = Dialog::connect_from(partner, addr).await;
    d.cmd("EHLO client.test", "250").await;
    let got = d.cmd("MAIL FROM:<alice@fabrikam.test>", "451").await;
    assert_eq!(got, e.mail_from_without_tls.unwrap().reply);
    d.cmd("QUIT", "221").await;

    // Under TLS without a certificate: RestrictDomainsToCertificate at RCPT TO.
    let mut d = Dialog::connect_from(partner, addr).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("STARTTLS", "220").await;
    let mut d = d.starttls("relay.contoso.test", None).await;
    d.cmd("EHLO client.test", "250").await;
    let got = d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    assert_eq!(got, e.mail_from.reply);
    let got = d.cmd("RCPT TO:<bob@contoso.test>", "550").await;
    assert_eq!(got, e.recipients[0].verdict.reply);
    d.cmd("QUIT", "221").await;

    // Anonymous relaying.
    let e = explained("127.0.0.1", "a@example.org", "carol@example.com");
    let mut d = Dialog::connect(addr).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<a@example.org>", "250").await;
    let got = d.cmd("RCPT TO:<carol@example.com>", "550").await;
    assert_eq!(got, e.recipients[0].verdict.reply);
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn explain_cli_prints_json() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), &explain_config(&dir.path().join("spool")));
    let args = |cert: &str| {
        vec![
            "explain".to_string(),
            "--config".into(),
            path.display().to_string(),
            "--ip".into(),
            "127.0.0.20".into(),
            "--cert".into(),
            certs(cert),
            "--sender".into(),
            "alice@fabrikam.test".into(),
            "--recipient".into(),
            "bob@contoso.test".into(),
            "--recipient".into(),
            "carol@example.com".into(),
            "--json".into(),
        ]
    };
    let out = run_binary(args("mail.fabrikam.test.crt")).await;
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ClientIp"], "127.0.0.20");
    assert_eq!(v["ClientCertificate"]["Trusted"], true);
    assert_eq!(v["Attribution"]["Connector"], "From Fabrikam");
    assert_eq!(v["Attribution"]["By"], "SenderDomain");
    assert_eq!(v["MailFrom"]["Accepted"], true);
    assert_eq!(v["MailFromWithoutTls"]["Rule"], "RequireTls");
    assert_eq!(
        v["Recipients"][0]["Verdict"]["Reply"],
        "250 2.1.5 Recipient OK"
    );
    assert_eq!(v["Recipients"][0]["Route"]["Connector"], "To on-premises");
    assert_eq!(
        v["Recipients"][0]["Route"]["TlsLevel"],
        "CertificateValidation"
    );
    assert_eq!(
        v["Recipients"][0]["Route"]["NextHops"],
        "smart hosts 127.0.0.11:2626"
    );
    assert_eq!(
        v["Recipients"][1]["Verdict"]["Rule"],
        "RelayWithoutOnPremisesAttribution"
    );
    assert_eq!(v["Recipients"][1]["Route"], serde_json::Value::Null);

    // A file that is not a certificate is bad input.
    let out = run_binary(args("ca.crl.pem")).await;
    assert_eq!(out.status.code(), Some(1));
}
