//! Outbound TLS levels, table-driven (policy.md "Outbound: TLS levels"): every level, on
//! Outbound and Send connectors, against sinks presenting the right certificate, a wrong
//! name, an expired, self-signed or revoked one, not offering STARTTLS, refusing it (454),
//! and breaking the handshake. Each case asserts delivered (and whether over TLS: the sink
//! file has `X-Sink-Tls:`) or deferred with the exact status code and reason (the relay's
//! spool log line `T <idx> <detail>`); at expiry every deferred recipient is in the NDR with
//! its last error and the connector's name.
//!
//! One message carries one recipient per case (`<level>-<sink>.test`, each domain routed by
//! its own connector to the sink of that case), so every case runs in parallel in the
//! relay's delivery groups.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use connector_relay::sink::{self, SinkOptions, StartTlsMode};
use support::*;

/// The remote server of a case.
#[derive(Clone, Copy)]
struct SinkKind {
    key: &'static str,
    /// Certificate base name in certs-test/.
    cert: &'static str,
    starttls: StartTlsMode,
}

const SINKS: &[SinkKind] = &[
    SinkKind {
        key: "right",
        cert: "sink.test",
        starttls: StartTlsMode::Offer,
    },
    SinkKind {
        key: "wrongname",
        cert: "wrongname",
        starttls: StartTlsMode::Offer,
    },
    SinkKind {
        key: "expired",
        cert: "expired",
        starttls: StartTlsMode::Offer,
    },
    SinkKind {
        key: "selfsigned",
        cert: "selfsigned",
        starttls: StartTlsMode::Offer,
    },
    SinkKind {
        key: "revoked",
        cert: "revoked",
        starttls: StartTlsMode::Offer,
    },
    SinkKind {
        key: "nostarttls",
        cert: "sink.test",
        starttls: StartTlsMode::Hide,
    },
    SinkKind {
        key: "refused",
        cert: "sink.test",
        starttls: StartTlsMode::Refuse,
    },
    SinkKind {
        key: "broken",
        cert: "sink.test",
        starttls: StartTlsMode::Break,
    },
];

/// A TLS level and the connector that expresses it.
struct Level {
    key: &'static str,
    title: &'static str,
    /// The connector for one domain and sink port: (name, TOML).
    connector: fn(name: &str, domain: &str, port: u16) -> String,
}

fn outbound(name: &str, domain: &str, port: u16, tls: &str) -> String {
    format!(
        "\n[[OutboundConnector]]\nName = \"{name}\"\nRecipientDomains = [\"{domain}\"]\nUseMXRecord = false\nSmartHosts = [\"127.0.0.1:{port}\"]\n{tls}\n"
    )
}

fn send(name: &str, domain: &str, port: u16, tls: &str) -> String {
    format!(
        "\n[[SendConnector]]\nName = \"{name}\"\nAddressSpaces = [\"SMTP:{domain};1\"]\nDNSRoutingEnabled = false\nSmartHosts = [\"127.0.0.1\"]\nPort = {port}\n{tls}\n"
    )
}

fn levels() -> Vec<Level> {
    vec![
        Level {
            key: "opp",
            title: "opportunistic (Outbound, no TlsSettings)",
            connector: |n, d, p| outbound(n, d, p, ""),
        },
        Level {
            key: "ignore",
            title: "IgnoreSTARTTLS (Send)",
            connector: |n, d, p| send(n, d, p, "IgnoreSTARTTLS = true"),
        },
        Level {
            key: "req",
            title: "RequireTLS, no level (Send)",
            connector: |n, d, p| send(n, d, p, "RequireTLS = true"),
        },
        Level {
            key: "enc",
            title: "EncryptionOnly (Outbound)",
            connector: |n, d, p| outbound(n, d, p, "TlsSettings = \"EncryptionOnly\""),
        },
        Level {
            key: "cv",
            title: "CertificateValidation (Outbound)",
            connector: |n, d, p| outbound(n, d, p, "TlsSettings = \"CertificateValidation\""),
        },
        Level {
            key: "scv",
            title: "CertificateValidation (Send)",
            connector: |n, d, p| {
                send(
                    n,
                    d,
                    p,
                    "RequireTLS = true\nTlsAuthLevel = \"CertificateValidation\"",
                )
            },
        },
        Level {
            key: "dv",
            title: "DomainValidation *.sink.test (Outbound)",
            connector: |n, d, p| {
                outbound(
                    n,
                    d,
                    p,
                    "TlsSettings = \"DomainValidation\"\nTlsDomain = \"*.sink.test\"",
                )
            },
        },
        Level {
            key: "sdv",
            title: "DomainValidation sink.test (Send)",
            connector: |n, d, p| {
                send(
                    n,
                    d,
                    p,
                    "RequireTLS = true\nTlsAuthLevel = \"DomainValidation\"\nTlsDomain = \"sink.test\"",
                )
            },
        },
    ]
}

/// What must happen to a case's recipient.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    /// Delivered; over TLS or in plaintext.
    Delivered { tls: bool },
    /// Deferred with this status and reason (the attempt's facts follow it), after this
    /// TLS check failed.
    Deferred(&'static str, &'static str, &'static str),
}

/// The table of policy.md, per level and sink.
fn expected(level: &str, sink: &str) -> Expect {
    use Expect::*;
    const NOT_OFFERED: Expect = Deferred("4.4.317", "STARTTLS not offered", "starttls");
    const REFUSED: Expect = Deferred(
        "4.4.317",
        "STARTTLS refused: 454 4.7.0 TLS not available due to temporary reason",
        "starttls",
    );
    const HANDSHAKE: Expect = Deferred("4.4.317", "TLS handshake failed: ", "handshake");
    match (level, sink) {
        ("ignore", _) => Delivered { tls: false },
        ("opp", "nostarttls" | "refused" | "broken") => Delivered { tls: false },
        ("opp", _) => Delivered { tls: true },
        (_, "nostarttls") => NOT_OFFERED,
        (_, "refused") => REFUSED,
        (_, "broken") => HANDSHAKE,
        ("req" | "enc", _) => Delivered { tls: true },
        (_, "expired") => Deferred("4.7.320", "certificate validation failed: expired", "dates"),
        (_, "revoked") => Deferred(
            "4.7.320",
            "certificate validation failed: revoked",
            "revocation",
        ),
        (_, "selfsigned") => Deferred(
            "4.7.320",
            "certificate validation failed: unknown issuer",
            "chain",
        ),
        ("cv" | "scv", "right" | "wrongname") => Delivered { tls: true },
        ("dv" | "sdv", "right") => Delivered { tls: true },
        ("dv", "wrongname") => Deferred(
            "4.4.317",
            "SubjectMismatch Expected Subject: *.sink.test. Presented Subject: CN=mail.evil.test, O=connector-relay tests",
            "name",
        ),
        ("sdv", "wrongname") => Deferred(
            "4.4.317",
            "SubjectMismatch Expected Subject: sink.test. Presented Subject: CN=mail.evil.test, O=connector-relay tests",
            "name",
        ),
        other => panic!("no expectation for {other:?}"),
    }
}

struct Case {
    title: String,
    connector: String,
    rcpt: String,
    sink: usize,
    expect: Expect,
}

async fn start_kind(k: &SinkKind) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        tls_cert: Some(certs(&format!("{}.crt", k.cert)).into()),
        tls_key: Some(certs(&format!("{}.key", k.cert)).into()),
        starttls: k.starttls,
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

/// The spool log of message `id`: the first record per recipient index.
fn first_records(spool: &Path, id: &str) -> HashMap<usize, String> {
    let text = std::fs::read_to_string(spool.join("log").join(id)).unwrap_or_default();
    let mut out = HashMap::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(kind), Some(idx), Some(detail)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if let Ok(i) = idx.parse::<usize>() {
            out.entry(i).or_insert_with(|| format!("{kind} {detail}"));
        }
    }
    out
}

/// The message file of the sink that holds `rcpt`, if any.
fn delivered_to(sink: &Sink, rcpt: &str) -> Option<String> {
    messages(sink.maildir())
        .into_iter()
        .find(|m| m.contains(&format!("X-Sink-Rcpt-To: <{rcpt}>\r\n")))
}

fn check(case: &Case, record: Option<&String>, sinks: &[Sink]) -> Result<String, String> {
    let file = delivered_to(&sinks[case.sink], &case.rcpt);
    match (&case.expect, record) {
        (Expect::Delivered { tls }, Some(r)) if r.starts_with("D ") => {
            let file = file.ok_or("logged as delivered, but not in the sink")?;
            let over_tls = file.contains("\r\nX-Sink-Tls: TLS");
            if over_tls != *tls {
                return Err(format!("delivered, but TLS = {over_tls} (wanted {tls})"));
            }
            Ok(if *tls {
                "delivered, TLS"
            } else {
                "delivered, plaintext"
            }
            .to_string())
        }
        (Expect::Deferred(status, reason, check), Some(r)) if r.starts_with("T ") => {
            if file.is_some() {
                return Err("deferred, but the sink has it".into());
            }
            let want = format!("T {status} {reason}");
            if !r.starts_with(&want) {
                return Err(format!("wanted {want:?}, got {r:?}"));
            }
            // The attempt's facts: host, IP, the failed check, and the peer certificate
            // whenever one was presented.
            let mut facts = vec![format!("(host 127.0.0.1, ip 127.0.0.1, check {check}")];
            if matches!(*check, "name" | "dates" | "revocation" | "chain") {
                facts.push("issuer \"CN=".into());
                facts.push("peer subject \"CN=".into());
            }
            if let Some(f) = facts.iter().find(|f| !r.contains(f.as_str())) {
                return Err(format!("the record lacks {f:?}: {r:?}"));
            }
            Ok(format!("deferred {status} {reason}"))
        }
        (e, r) => Err(format!("wanted {e:?}, got {r:?}")),
    }
}

fn unfold(s: &str) -> String {
    s.replace("\r\n ", " ").replace("\r\n\t", " ")
}

#[tokio::test]
async fn outbound_tls_level_matrix() {
    let mut sinks = Vec::new();
    for k in SINKS {
        sinks.push(start_kind(k).await);
    }
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(
        tmp.path(),
        onprem.addr(),
        &format!(
            "TrustedCaFile = \"{}\"\nRevocationLists = [\"{}\"]\nMessageExpirationTimeout = \"00:00:06\"",
            certs("ca.crt"),
            certs("ca.crl.pem")
        ),
    );
    let mut cases = Vec::new();
    for level in levels() {
        for (si, k) in SINKS.iter().enumerate() {
            let domain = format!("{}-{}.test", level.key, k.key);
            let connector = format!("{} {}", level.key, k.key);
            cfg.push_str(&(level.connector)(
                &connector,
                &domain,
                sinks[si].addr().port(),
            ));
            cases.push(Case {
                title: format!("{} × {}", level.title, k.key),
                connector,
                rcpt: format!("user@{domain}"),
                sink: si,
                expect: expected(level.key, k.key),
            });
        }
    }
    let relay = start_relay(&cfg, None).await;

    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    for c in &cases {
        d.cmd(&format!("RCPT TO:<{}>", c.rcpt), "250").await;
    }
    d.cmd("DATA", "354").await;
    let queued = d.cmd("Subject: TLS levels\r\n\r\nhello\r\n.", "250").await;
    d.cmd("QUIT", "221").await;
    let id = queued
        .rsplit("queued as ")
        .next()
        .unwrap()
        .trim()
        .to_string();

    // First attempt: every recipient gets a record.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let records = loop {
        let r = first_records(tmp.path(), &id);
        if r.len() >= cases.len() || tokio::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    let mut failures = Vec::new();
    let mut table = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        match check(c, records.get(&i), &sinks) {
            Ok(outcome) => table.push(format!("{:<45} {outcome}", c.title)),
            Err(e) => failures.push(format!("{}: {e}", c.title)),
        }
    }

    // Expiry: one NDR listing every deferred recipient with its last error and connector.
    let ndr = wait_messages(onprem.maildir(), 1, Duration::from_secs(20)).await;
    match ndr.first().map(|n| unfold(n)) {
        None => failures.push("no NDR at expiry".into()),
        Some(ndr) => {
            for c in &cases {
                let Expect::Deferred(status, reason, _) = &c.expect else {
                    continue;
                };
                let rcpt = format!("Final-Recipient: rfc822; {}", c.rcpt);
                let last = format!("last error: {status} {reason}");
                let via = format!("via connector \"{}\"", c.connector);
                let Some(at) = ndr.find(&rcpt) else {
                    failures.push(format!("{}: not in the NDR", c.title));
                    continue;
                };
                let block = &ndr[at..];
                let block = &block[..block[rcpt.len()..]
                    .find("Final-Recipient:")
                    .map_or(block.len(), |e| e + rcpt.len())];
                for want in ["Status: 5.4.7", last.as_str(), via.as_str()] {
                    if !block.contains(want) {
                        failures.push(format!("{}: NDR lacks {want:?}: {block}", c.title));
                    }
                }
            }
        }
    }

    println!("{}", table.join("\n"));
    println!(
        "outbound TLS matrix: {} cases, {} failed",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
