//! Writes a realistic week of a busy gateway's message trace for the `whatif` benchmark
//! (`bench/whatif.sh`): a config with an on-premises connector and 200 partners (half
//! restricted to their addresses, a quarter with forced TLS and certificates), a proposed
//! config that changes three of them, and `--rows` trace rows in `DIR/trace.sqlite`,
//! written by the relay's own store code.
//!
//! Traffic: on-premises servers sending inside and to the internet, partners (mostly over
//! TLS with their certificate, some from the wrong address or in plaintext), internet
//! senders to the organization's users, and relay attempts. Every transaction's recorded
//! verdicts come from the relay's decision code under the written config, and it gets the
//! rows the relay writes: `Session`, and `Received`, `Routed`, `Attempt`, `Delivered` per
//! accepted recipient or `Rejected` per refusal.
//!
//! ```text
//! cargo run --release --example trace-gen -- --dir var/bench/whatif --rows 5000000
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use connector_relay::ops::decide::{RecipientDecision, decide};
use connector_relay::policy::Policy;
use connector_relay::policy::restrict::{InboundPolicy, SessionFacts};
use connector_relay::trace::backend::Backend;
use connector_relay::trace::facts::{CertFacts, TxFacts, VERSION};
use connector_relay::trace::sqlite::Sqlite;
use connector_relay::trace::{EventKind, TraceEvent};

const PARTNERS: u32 = 200;
const WEEK_MS: i64 = 7 * 86_400_000;

fn main() {
    let mut dir = PathBuf::from("var/bench/whatif");
    let mut rows: u64 = 5_000_000;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--dir" => dir = args.next().expect("--dir DIR").into(),
            "--rows" => rows = args.next().expect("--rows N").parse().expect("a number"),
            other => panic!("unknown argument {other}; use --dir DIR --rows N"),
        }
    }
    std::fs::create_dir_all(&dir).unwrap();
    let current = config(&dir, false);
    let proposed = config(&dir, true);
    std::fs::write(dir.join("relay.toml"), &current).unwrap();
    std::fs::write(dir.join("proposed.toml"), &proposed).unwrap();
    let _ = std::fs::remove_file(dir.join("trace.sqlite"));
    let policy = connector_relay::config::load_str(&current, Path::new("relay.toml"))
        .expect("valid generated config")
        .policy;
    let started = std::time::Instant::now();
    let (written, transactions) = generate(&policy, &dir, rows);
    println!(
        "wrote {written} rows ({transactions} transactions) to {} in {:.1} s",
        dir.join("trace.sqlite").display(),
        started.elapsed().as_secs_f64()
    );
}

/// The gateway's config; `proposed`: partner 7 must use TLS, partner 12 is narrowed to one
/// address, the on-premises range loses its upper half.
fn config(dir: &Path, proposed: bool) -> String {
    let onprem = if proposed {
        "10.0.0.0/25"
    } else {
        "10.0.0.0/24"
    };
    let mut c = format!(
        r#"[Relay]
Fqdn = "gw.contoso.test"
Listen = ["127.0.0.1:0"]
AcceptedDomains = ["contoso.test", "*.contoso.test", "fabrikam-corp.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["{onprem}"]

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["10.0.0.25"]
"#,
        dir = dir.display()
    );
    for p in 0..PARTNERS {
        let net = if proposed && p == 12 {
            format!("{}/32", partner_ip(p, 0))
        } else {
            format!("{}/30", partner_ip(p, 0))
        };
        c.push_str(&format!(
            "\n[[InboundConnector]]\nName = \"Partner {p}\"\nConnectorType = \"Partner\"\nSenderDomains = [\"partner{p}.test\"]\n"
        ));
        if p % 2 == 0 {
            c.push_str(&format!(
                "SenderIPAddresses = [\"{net}\"]\nRestrictDomainsToIPAddresses = true\n"
            ));
        }
        if p % 4 == 1 || (proposed && p == 7) {
            c.push_str(&format!(
                "RequireTls = true\nTlsSenderCertificateName = \"mail.partner{p}.test\"\n"
            ));
        }
        if p % 10 == 0 {
            c.push_str(&format!(
                "\n[[OutboundConnector]]\nName = \"To Partner {p}\"\nRecipientDomains = [\"partner{p}.test\"]\nTlsSettings = \"DomainValidation\"\n"
            ));
        }
    }
    c
}

/// Partner `p`'s `i`th address (0..4 are in its /30).
fn partner_ip(p: u32, i: u32) -> String {
    let n = p * 4 + i;
    format!("198.18.{}.{}", n / 256, n % 256)
}

/// One transaction's facts, as a client presents them.
struct Client {
    ip: IpAddr,
    helo: String,
    tls: bool,
    cert: Option<String>,
    sender: String,
    rcpts: Vec<String>,
}

/// A transaction of the traffic mix (see the module documentation).
fn client(rng: &mut StdRng) -> Client {
    // One recipient mostly, sometimes two or three.
    let n =
        1 + usize::from(rng.random_range(0..4) == 0) + usize::from(rng.random_range(0..10) == 0);
    match rng.random_range(0..100) {
        0..30 => on_premises(rng, n),
        30..55 => partner(rng, n),
        55..95 => internet(rng, n),
        _ => relay_attempt(rng, n),
    }
}

fn internal(rng: &mut StdRng) -> String {
    let domain = ["contoso.test", "eu.contoso.test", "fabrikam-corp.test"][rng.random_range(0..3)];
    format!("user{}@{domain}", rng.random_range(0..20_000))
}

fn external(rng: &mut StdRng) -> String {
    let (user, domain) = (rng.random_range(0..50), rng.random_range(0..2000));
    format!("someone{user}@ext{domain}.test")
}

/// On-premises servers: mail inside and out.
fn on_premises(rng: &mut StdRng, n: usize) -> Client {
    let host = rng.random_range(1..=200);
    Client {
        ip: format!("10.0.0.{host}").parse().unwrap(),
        helo: format!("app{host}.contoso.test"),
        tls: rng.random_range(0..2) == 0,
        cert: None,
        sender: format!("app{}@contoso.test", rng.random_range(0..500)),
        rcpts: (0..n)
            .map(|_| {
                if rng.random_range(0..10) < 7 {
                    internal(rng)
                } else {
                    external(rng)
                }
            })
            .collect(),
    }
}

/// Partners: over TLS with their certificate mostly, from their addresses mostly.
fn partner(rng: &mut StdRng, n: usize) -> Client {
    let p = rng.random_range(0..PARTNERS);
    let tls = rng.random_range(0..10) < 8;
    let i = if rng.random_range(0..20) == 0 {
        7
    } else {
        rng.random_range(0..4)
    };
    Client {
        ip: partner_ip(p, i).parse().unwrap(),
        helo: format!("mail.partner{p}.test"),
        tls,
        cert: tls.then(|| format!("mail.partner{p}.test")),
        sender: format!("staff{}@partner{p}.test", rng.random_range(0..20)),
        rcpts: (0..n).map(|_| internal(rng)).collect(),
    }
}

/// Internet senders to the organization.
fn internet(rng: &mut StdRng, n: usize) -> Client {
    let d = rng.random_range(0..5000);
    let (a, b) = (rng.random_range(0..64), rng.random_range(1..255));
    Client {
        ip: format!("203.0.{a}.{b}").parse().unwrap(),
        helo: format!("mx.sender{d}.test"),
        tls: rng.random_range(0..3) > 0,
        cert: None,
        sender: format!("news{}@sender{d}.test", rng.random_range(0..10)),
        rcpts: (0..n).map(|_| internal(rng)).collect(),
    }
}

fn relay_attempt(rng: &mut StdRng, n: usize) -> Client {
    let (user, domain) = (rng.random_range(0..1000), rng.random_range(0..100));
    Client {
        ip: format!("192.0.2.{}", rng.random_range(1..255))
            .parse()
            .unwrap(),
        helo: "spam.example".into(),
        tls: false,
        cert: None,
        sender: format!("x{user}@spam{domain}.test"),
        rcpts: (0..n).map(|_| external(rng)).collect(),
    }
}

/// Writes transactions until `rows` rows are written; (rows, transactions).
fn generate(policy: &Policy, dir: &Path, rows: u64) -> (u64, u64) {
    let inbound = InboundPolicy::new(policy);
    let mut store = Sqlite::open(dir).expect("trace store");
    let mut rng = StdRng::seed_from_u64(22);
    let now = connector_relay::trace::time::now_ms();
    let (mut written, mut transactions) = (0u64, 0u64);
    let mut batch: Vec<TraceEvent> = Vec::with_capacity(20_000);
    while written < rows {
        let c = client(&mut rng);
        // Spread over the week, in time order (rows are written as they happen).
        let t = now - WEEK_MS + (WEEK_MS as f64 * written as f64 / rows as f64) as i64;
        let before = batch.len();
        transaction(policy, &inbound, &c, t, transactions, &mut batch, &mut rng);
        written += (batch.len() - before) as u64;
        transactions += 1;
        if batch.len() >= 10_000 {
            store.insert("gen", &batch).expect("insert");
            batch.clear();
        }
    }
    store.insert("gen", &batch).expect("insert");
    (written, transactions)
}

/// The rows of one transaction, decided by the relay's code under `policy`.
fn transaction(
    policy: &Policy,
    inbound: &InboundPolicy,
    c: &Client,
    time_ms: i64,
    n: u64,
    out: &mut Vec<TraceEvent>,
    rng: &mut StdRng,
) {
    let names: Vec<String> = c.cert.iter().cloned().collect();
    let facts = SessionFacts {
        ip: c.ip,
        tls: c.tls,
        trusted_cert_names: &names,
        trusted_cert_issuer: None,
        cert_problem: None,
    };
    let d = decide(policy, inbound, &facts, &c.sender, &c.rcpts, rng);
    let connector = d.attribution.map(|a| policy.inbound[a.index].name.clone());
    let row = |kind| {
        let mut e = TraceEvent::new(kind);
        e.time_ms = time_ms;
        e.client_ip = Some(c.ip.to_string());
        e.helo = Some(c.helo.clone());
        e.tls = c
            .tls
            .then(|| "TLSv1.3 TLS13_AES_256_GCM_SHA384".to_string());
        e.certificate = c.cert.as_ref().map(|n| format!("CN={n}"));
        e.sender = Some(c.sender.clone());
        e.connector = connector.clone();
        e
    };
    let mut session = row(EventKind::Session);
    let mut to = Vec::new();
    let mut no = Vec::new();
    if let Err(r) = &d.mail {
        session.rule = Some(r.rule().to_string());
        let mut e = row(EventKind::Rejected);
        e.rule = Some(r.rule().to_string());
        e.detail = Some("refused at MAIL".into());
        out.push(e);
    } else {
        for r in &d.recipients {
            let RecipientDecision::Parsed {
                address, verdict, ..
            } = r
            else {
                continue;
            };
            match verdict {
                Ok(()) => to.push(address.to_string()),
                Err(refusal) => {
                    let mut e = row(EventKind::Rejected);
                    e.recipient = Some(address.to_string());
                    e.rule = Some(refusal.rule().to_string());
                    e.detail = Some("refused at RCPT".into());
                    out.push(e);
                    no.push((address.to_string(), refusal.rule().to_string()));
                }
            }
        }
    }
    let queue_id = format!("{:016X}{n:06X}", time_ms);
    if !to.is_empty() {
        session.queue_id = Some(queue_id.clone());
        delivered(&row, &queue_id, &to, out);
    }
    session.detail = Some(
        TxFacts {
            v: VERSION,
            by: d.attribution.map(|a| a.by.as_str().into()),
            cert: c.cert.as_ref().map(|name| CertFacts {
                names: vec![name.as_str().into()],
                issuer: "CN=Partner CA, O=Partners".into(),
                nb: 1_764_547_200,
                na: 1_859_241_600,
                trusted: true,
                problem: None,
            }),
            to: to.iter().map(|s| s.as_str().into()).collect(),
            no: no
                .iter()
                .map(|(a, r)| (a.as_str().into(), r.as_str().into()))
                .collect(),
            end: if d.mail.is_err() {
                "MAIL"
            } else if to.is_empty() {
                "CLOSED"
            } else {
                "DATA"
            }
            .into(),
        }
        .to_json(),
    );
    out.push(session);
}

/// `Received`, `Routed`, `Delivered` per recipient and one `Attempt`, as the relay and
/// the delivery engine write them.
fn delivered(
    row: &dyn Fn(EventKind) -> TraceEvent,
    id: &str,
    to: &[String],
    out: &mut Vec<TraceEvent>,
) {
    for r in to {
        let mut e = row(EventKind::Received);
        e.queue_id = Some(id.to_string());
        e.message_id = Some(format!("<{id}@gw.contoso.test>"));
        e.recipient = Some(r.clone());
        e.reply = Some(format!("250 2.0.0 Ok: queued as {id}"));
        e.detail = Some(format!("4812 bytes, {} recipient(s)", to.len()));
        out.push(e);
        let mut e = row(EventKind::Routed);
        e.queue_id = Some(id.to_string());
        e.recipient = Some(r.clone());
        e.detail = Some("Outbound connector \"To on-premises\": smart hosts 10.0.0.25:25; TLS: opportunistic (STARTTLS when offered, certificate not checked, plaintext fallback)".into());
        out.push(e);
    }
    let mut e = row(EventKind::Attempt);
    e.queue_id = Some(id.to_string());
    e.host = Some("10.0.0.25".into());
    e.ip = Some("10.0.0.25".into());
    e.reply = Some("250 2.0.0 Ok: stored".into());
    e.detail = Some("host 1 of 1, address 1 of 1".into());
    out.push(e);
    for r in to {
        let mut e = row(EventKind::Delivered);
        e.queue_id = Some(id.to_string());
        e.recipient = Some(r.clone());
        e.host = Some("10.0.0.25".into());
        e.reply = Some("250 2.0.0 Ok: stored".into());
        out.push(e);
    }
}
