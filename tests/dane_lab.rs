//! DANE end to end through real DNSSEC (README "DANE"): a private signed tree (root →
//! `test.` → `good.test.` / `broken.test.` / `expired.test.`) signed with ldns-signzone,
//! served by nsd, and
//! - `DnssecValidation = "Resolver"`: validated by unbound (AD bit, EDE on bogus);
//! - `DnssecValidation = "Local"`: validated in-process by hickory straight from nsd, with
//!   the private root's DNSKEY as the anchor.
//!
//! `tests/dnssec_lab/setup.sh` builds the tree. The binaries come from
//! `scripts/install-deps.sh`; without them the test says so loudly and does nothing.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use connector_relay::delivery::{Deliverer, DeliveryJob, DeliveryStatus};
use connector_relay::dns::hickory::HickoryResolver;
use connector_relay::dns::{DnssecValidation, Resolver, Security};
use connector_relay::sink::{self, SinkOptions, StartTlsMode};
use support::*;

/// Kills the two daemons of one lab (only the pids it wrote) when dropped.
struct Lab {
    dir: tempfile::TempDir,
}

impl Drop for Lab {
    fn drop(&mut self) {
        for pid in ["nsd.pid", "unbound.pid"] {
            if let Ok(text) = std::fs::read_to_string(self.dir.path().join(pid))
                && let Ok(pid) = text.trim().parse::<i32>()
            {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
    }
}

fn free_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

fn have(bin: &str) -> bool {
    [
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
        "/usr/local/sbin",
        "/usr/local/bin",
    ]
    .iter()
    .any(|d| Path::new(d).join(bin).exists())
}

fn spki_sha256_hex(cert: &str) -> String {
    let pem = std::fs::read(certs(cert)).unwrap();
    let (_, block) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let (_, c) = x509_parser::parse_x509_certificate(&block.contents).unwrap();
    ring::digest::digest(&ring::digest::SHA256, c.public_key().raw)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn deliver(
    resolver: HickoryResolver,
    port: u16,
    mode: &str,
    domain: &str,
) -> (DeliveryStatus, bool) {
    let toml = format!(
        "[Relay]\nDeliveryPort = {port}\n\n[[OutboundConnector]]\nName = \"Lab\"\nRecipientDomains = [\"{domain}\"]\nSmtpDaneMode = \"{mode}\"\n"
    );
    let policy = connector_relay::config::load_str(&toml, Path::new("relay.toml"))
        .unwrap()
        .policy;
    let d = Deliverer::new(Arc::new(policy), Arc::new(resolver));
    let rcpts = vec![format!("u@{domain}")];
    let out = d
        .deliver(&DeliveryJob {
            id: "lab",
            mail_from: "",
            recipients: &rcpts,
            data: connector_relay::delivery::Data::memory(b"Subject: lab\r\n\r\nx\r\n"),
            from_outside_org: false,
            requiretls: false,
        })
        .await;
    (out[0].status.clone(), out[0].tls.is_some())
}

fn code(s: &DeliveryStatus) -> &str {
    match s {
        DeliveryStatus::Delivered { .. } => "delivered",
        DeliveryStatus::Temporary(f) | DeliveryStatus::Permanent(f) => &f.enhanced,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dane_through_unbound_and_in_process_validation() {
    let missing: Vec<&str> = [
        "nsd",
        "unbound",
        "ldns-signzone",
        "ldns-keygen",
        "ldns-key2ds",
    ]
    .into_iter()
    .filter(|b| !have(b))
    .collect();
    if !missing.is_empty() {
        eprintln!(
            "\n\n!!!!! SKIPPED dane_lab: {} not installed; run scripts/install-deps.sh !!!!!\n\n",
            missing.join(", ")
        );
        return;
    }
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
    let lab = Lab {
        dir: tempfile::tempdir().unwrap(),
    };
    let (nsd_port, unbound_port) = (free_port(), free_port());
    let script = format!("{}/tests/dnssec_lab/setup.sh", env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(&script)
        .arg(lab.dir.path())
        .arg(nsd_port.to_string())
        .arg(unbound_port.to_string())
        .arg(port.to_string())
        .arg(spki_sha256_hex("sink.test.crt"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "setup.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unbound: std::net::SocketAddr = format!("127.0.0.1:{unbound_port}").parse().unwrap();
    let nsd: std::net::SocketAddr = format!("127.0.0.1:{nsd_port}").parse().unwrap();
    let via_unbound = || {
        HickoryResolver::with_dnssec(
            &[unbound],
            Duration::from_secs(3),
            DnssecValidation::Resolver,
            None,
        )
        .unwrap()
    };
    // Wait until both daemons answer (they daemonize before they listen).
    let mut ready = false;
    for _ in 0..50 {
        if let Ok(s) = via_unbound().mx_secured("good.test").await
            && s.security == Security::Secure
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "unbound never gave a secure MX for good.test");
    assert_eq!(via_unbound().probe_dnssec().await, Some(Ok(true)), "probe");

    // Resolver mode (AD bit from unbound).
    let (s, tls) = deliver(via_unbound(), port, "Mandatory", "good.test").await;
    assert!(s.is_delivered() && tls, "good.test via unbound: {s:?}");
    let (s, _) = deliver(via_unbound(), port, "Opportunistic", "broken.test").await;
    assert_eq!(
        code(&s),
        "4.7.324",
        "broken TLSA signature via unbound: {s:?}"
    );
    let (s, _) = deliver(via_unbound(), port, "Opportunistic", "expired.test").await;
    assert_eq!(code(&s), "4.7.324", "expired signatures via unbound: {s:?}");
    // SmtpDaneMode = None still refuses bogus data (the resolver SERVFAILs it): never used.
    let (s, _) = deliver(via_unbound(), port, "None", "expired.test").await;
    assert!(!s.is_delivered(), "expired zone delivered: {s:?}");

    // Local mode: hickory validates from nsd's raw signed answers.
    let anchor = lab.dir.path().join("root.dnskey");
    let local = || {
        HickoryResolver::with_dnssec(
            &[nsd],
            Duration::from_secs(3),
            DnssecValidation::Local,
            Some(&anchor),
        )
        .unwrap()
    };
    let tlsa = local()
        .tlsa(&format!("_{port}._tcp.mx.good.test"))
        .await
        .unwrap();
    assert_eq!(tlsa.security, Security::Secure, "{tlsa:?}");
    let (s, tls) = deliver(local(), port, "Mandatory", "good.test").await;
    assert!(
        s.is_delivered() && tls,
        "good.test validated locally: {s:?}"
    );
    let bogus = local().tlsa(&format!("_{port}._tcp.mx.broken.test")).await;
    assert!(
        matches!(bogus, Err(connector_relay::dns::DnsError::Bogus(_))),
        "{bogus:?}"
    );
    let (s, _) = deliver(local(), port, "Opportunistic", "broken.test").await;
    assert_eq!(
        code(&s),
        "4.7.324",
        "broken TLSA signature, local validation: {s:?}"
    );
    let (s, _) = deliver(local(), port, "Opportunistic", "expired.test").await;
    assert_eq!(
        code(&s),
        "4.7.324",
        "expired signatures, local validation: {s:?}"
    );
}
