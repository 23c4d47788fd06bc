//! The change impact preview (issue 22): real SMTP traffic through the relay (plaintext,
//! STARTTLS with a client certificate, on-premises, partner and internet clients,
//! refusals at MAIL FROM and RCPT TO), then proposed configs replayed over its trace —
//! RequireTls on, a narrower CIDR, a connector disabled, a domain moved to a
//! DomainValidation connector, an accidental open relay. Each report is checked against
//! what a live relay running the proposed config answers to the same traffic: the same
//! transactions refused (by stage, rule, connector and sender), the same refusals lifted,
//! the same recipients rerouted.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use connector_relay::ops::whatif::{self, Impact, Window};
use connector_relay::trace::{self, EventKind, TraceQuery};
use serde_json::{Value, json};
use support::http::{http, start_relay_from_file, until};
use support::*;

/// One transaction of the recorded traffic.
struct Tx {
    ip: &'static str,
    /// STARTTLS presenting mail.fabrikam.test's certificate.
    tls: bool,
    sender: &'static str,
    rcpts: &'static [&'static str],
}

const TRAFFIC: &[Tx] = &[
    // The on-premises server: local mail, and relayed mail to the partner.
    Tx {
        ip: "127.0.0.10",
        tls: false,
        sender: "app@contoso.test",
        rcpts: &["bob@contoso.test", "x@fabrikam.test"],
    },
    Tx {
        ip: "127.0.0.10",
        tls: false,
        sender: "app@contoso.test",
        rcpts: &["carol@contoso.test"],
    },
    // The partner over TLS with its certificate, and in plaintext from two addresses.
    Tx {
        ip: "127.0.0.20",
        tls: true,
        sender: "alice@fabrikam.test",
        rcpts: &["bob@contoso.test"],
    },
    Tx {
        ip: "127.0.0.20",
        tls: false,
        sender: "carol@fabrikam.test",
        rcpts: &["bob@contoso.test"],
    },
    Tx {
        ip: "127.0.0.21",
        tls: false,
        sender: "dave@fabrikam.test",
        rcpts: &["bob@contoso.test"],
    },
    // An internet sender: accepted for contoso.test, refused as a relay.
    Tx {
        ip: "127.0.0.99",
        tls: false,
        sender: "eve@example.net",
        rcpts: &["bob@contoso.test", "victim@elsewhere.test"],
    },
    Tx {
        ip: "127.0.0.99",
        tls: false,
        sender: "eve@example.net",
        rcpts: &["victim@elsewhere.test"],
    },
];

/// The config in effect: on-premises by IP, the partner by domain restricted to its
/// addresses, contoso.test to the on-premises sink, fabrikam.test to the partner's sink.
fn base_config(dir: &Path, onprem: SocketAddr, partner: SocketAddr) -> String {
    format!(
        r#"[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TlsCertificate = "{cert}"
TlsPrivateKey = "{key}"
TrustedCaFile = "{ca}"
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
TransientFailureRetryInterval = "00:10:00"
PreGreetingWait = "00:00:00"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"
[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

[[InboundConnector]]
Name = "Partner fabrikam"
ConnectorType = "Partner"
SenderDomains = ["fabrikam.test"]
SenderIPAddresses = ["127.0.0.20/30"]
RestrictDomainsToIPAddresses = true

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{onprem}"]

[[OutboundConnector]]
Name = "To Fabrikam"
ConnectorType = "Partner"
RecipientDomains = ["fabrikam.test"]
UseMXRecord = false
SmartHosts = ["{partner}"]
"#,
        cert = certs("relay.contoso.test.crt"),
        key = certs("relay.contoso.test.key"),
        ca = certs("ca.crt"),
        dir = dir.display(),
    )
}

/// The config with `from` replaced by `to` (which must be there).
fn changed(config: &str, from: &str, to: &str) -> String {
    assert!(config.contains(from), "{from:?} not in the config");
    config.replacen(from, to, 1)
}

const PARTNER: &str = "Name = \"Partner fabrikam\"\n";
const ONPREM_IPS: &str = "SenderIPAddresses = [\"127.0.0.10/32\"]";
const TO_FABRIKAM: &str =
    "Name = \"To Fabrikam\"\nConnectorType = \"Partner\"\nRecipientDomains = [\"fabrikam.test\"]";

/// The replies one transaction got.
#[derive(Debug, Clone)]
struct Answers {
    mail: String,
    rcpts: Vec<String>,
    /// The reply to the end of DATA, when DATA was sent.
    data: Option<String>,
}

fn accepted(reply: &str) -> bool {
    reply.starts_with('2')
}

/// MAIL, every RCPT, and DATA when a recipient was accepted; the replies.
async fn transaction<S>(d: &mut Dialog<S>, tx: &Tx) -> Answers
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite,
{
    let ask = async |d: &mut Dialog<S>, line: String| {
        d.send(format!("{line}\r\n").as_bytes()).await;
        d.read_reply().await
    };
    let mail = ask(d, format!("MAIL FROM:<{}>", tx.sender)).await;
    let mut answers = Answers {
        mail: mail.clone(),
        rcpts: Vec::new(),
        data: None,
    };
    if !accepted(&mail) {
        return answers;
    }
    for r in tx.rcpts {
        answers.rcpts.push(ask(d, format!("RCPT TO:<{r}>")).await);
    }
    if answers.rcpts.iter().any(|r| accepted(r)) {
        d.cmd("DATA", "354").await;
        let body = format!("Subject: whatif from {}\r\n\r\nhello\r\n.", tx.sender);
        answers.data = Some(ask(d, body).await);
    }
    answers
}

/// One session per transaction, as the client would send it.
async fn send(relay: SocketAddr, tx: &Tx) -> Answers {
    let mut d = Dialog::connect_from(tx.ip.parse().unwrap(), relay).await;
    d.cmd("EHLO client.test", "250").await;
    if !tx.tls {
        let answers = transaction(&mut d, tx).await;
        d.cmd("QUIT", "221").await;
        return answers;
    }
    d.cmd("STARTTLS", "220").await;
    let cert = Some(("mail.fabrikam.test.crt", "mail.fabrikam.test.key"));
    let mut d = d.starttls("relay.contoso.test", cert).await;
    d.cmd("EHLO client.test", "250").await;
    let answers = transaction(&mut d, tx).await;
    d.cmd("QUIT", "221").await;
    answers
}

/// What one relay did with the traffic: the replies, and from its trace the rule and
/// connector of every refusal and the outbound connector of every routed recipient.
struct Run {
    answers: Vec<Answers>,
    /// (sender, recipient or None at MAIL) → (rule, connector).
    refusals: HashMap<(String, Option<String>), (String, Option<String>)>,
    /// (sender, recipient) → outbound connector, one per message.
    routes: HashMap<(String, String), Vec<Option<String>>>,
}

/// Sends the traffic through a running relay, waits until the trace holds every
/// transaction and every route; `data_dir` is its DataDir.
async fn record(relay: SocketAddr, data_dir: &Path) -> Run {
    let mut answers = Vec::new();
    for tx in TRAFFIC {
        answers.push(send(relay, tx).await);
    }
    let routed: usize = answers
        .iter()
        .zip(TRAFFIC)
        .filter(|(a, _)| a.data.as_deref().is_some_and(accepted))
        .map(|(a, _)| a.rcpts.iter().filter(|r| accepted(r)).count())
        .sum();
    let rows = until("the trace has every route", || async {
        let rows = trace::query(
            data_dir,
            &TraceQuery {
                limit: 100_000,
                ..Default::default()
            },
        )
        .ok()?;
        let n = rows.iter().filter(|e| e.event == EventKind::Routed).count();
        (n >= routed).then_some(rows)
    })
    .await;
    until("the trace has every transaction", || async {
        let n = sessions(data_dir);
        (n >= TRAFFIC.len()).then_some(())
    })
    .await;
    let mut run = Run {
        answers,
        refusals: HashMap::new(),
        routes: HashMap::new(),
    };
    for e in rows {
        let sender = e.sender.clone().unwrap_or_default();
        match e.event {
            EventKind::Rejected => {
                let rule = e.rule.clone().unwrap_or_default();
                run.refusals
                    .insert((sender, e.recipient.clone()), (rule, e.connector.clone()));
            }
            EventKind::Routed => run
                .routes
                .entry((sender, e.recipient.clone().unwrap_or_default()))
                .or_default()
                .push(e.connector.clone()),
            _ => {}
        }
    }
    run
}

/// How many `Session` rows the trace holds now.
fn sessions(data_dir: &Path) -> usize {
    let mut n = 0;
    let range = trace::facts::SessionRange {
        since_ms: 0,
        until_ms: i64::MAX,
        after_id: 0,
    };
    let _ = trace::facts::read_sessions(data_dir, range, |_| n += 1);
    n
}

/// Runs `config` (written in `dir`) as a relay with its own sinks already in it, records
/// the traffic, stops the relay.
async fn run_relay(config: &str) -> Run {
    let policy = support::policy(config);
    let data_dir = policy.relay.data_dir.clone();
    let relay = connector_relay::relay::start(std::sync::Arc::new(policy))
        .await
        .expect("relay starts");
    let run = record(relay.smtp_addrs[0], &data_dir).await;
    relay.shutdown(Duration::from_secs(5)).await;
    run
}

/// (stage, rule, connector) → sender → transactions.
type BySender = BTreeMap<(String, String, Option<String>), BTreeMap<String, u64>>;

/// What the live relays did differently, in the report's terms: transactions refused
/// under `after` that `before` accepted, refusals `after` lifted (with the rule that
/// refused them before and whether they are relaying), and recipients routed elsewhere.
struct Live {
    refused: BySender,
    accepted: BTreeMap<(String, String, bool), BTreeMap<String, u64>>,
    rerouted: BTreeMap<(String, Option<String>, Option<String>), u64>,
}

fn live_difference(before: &Run, after: &Run) -> Live {
    let mut live = Live {
        refused: BTreeMap::new(),
        accepted: BTreeMap::new(),
        rerouted: BTreeMap::new(),
    };
    for ((tx, a), b) in TRAFFIC.iter().zip(&before.answers).zip(&after.answers) {
        let sender = tx.sender.to_string();
        let rule_of = |run: &Run, rcpt: Option<&str>| {
            run.refusals
                .get(&(sender.clone(), rcpt.map(str::to_string)))
                .cloned()
                .unwrap_or_else(|| panic!("no Rejected row for {sender} {rcpt:?}"))
        };
        let count = |map: &mut BySender, stage: &str, (rule, connector)| {
            *map.entry((stage.to_string(), rule, connector))
                .or_default()
                .entry(sender.clone())
                .or_default() += 1;
        };
        match (accepted(&a.mail), accepted(&b.mail)) {
            (true, false) => count(&mut live.refused, "MAIL", rule_of(after, None)),
            (false, true) => {
                let (rule, _) = rule_of(before, None);
                *live
                    .accepted
                    .entry(("MAIL".into(), rule, false))
                    .or_default()
                    .entry(sender.clone())
                    .or_default() += 1;
            }
            (false, false) => {}
            (true, true) => {
                let mut refused_here = BySender::new();
                for ((rcpt, x), y) in tx.rcpts.iter().zip(&a.rcpts).zip(&b.rcpts) {
                    match (accepted(x), accepted(y)) {
                        (true, false) => {
                            count(&mut refused_here, "RCPT", rule_of(after, Some(rcpt)))
                        }
                        (false, true) => {
                            let (rule, _) = rule_of(before, Some(rcpt));
                            let relay = !rcpt.ends_with("@contoso.test");
                            let e = live.accepted.entry(("RCPT".into(), rule, relay));
                            *e.or_default().entry(sender.clone()).or_default() += 1;
                        }
                        _ => {}
                    }
                }
                // One transaction per key, however many of its recipients.
                for (key, senders) in refused_here {
                    for s in senders.into_keys() {
                        *live
                            .refused
                            .entry(key.clone())
                            .or_default()
                            .entry(s)
                            .or_default() += 1;
                    }
                }
            }
        }
    }
    for (key, was) in &before.routes {
        if let Some(now) = after.routes.get(key)
            && was != now
        {
            let domain = key.1.rsplit_once('@').unwrap().1.to_string();
            *live
                .rerouted
                .entry((domain, was[0].clone(), now[0].clone()))
                .or_default() += was.len() as u64;
        }
    }
    live
}

/// The report in the same terms.
fn reported(i: &Impact) -> Live {
    let senders = |list: &[whatif::SenderCounts]| -> BTreeMap<String, u64> {
        list.iter()
            .map(|s| (s.sender.clone(), s.counts.transactions))
            .collect()
    };
    Live {
        refused: i
            .refused
            .iter()
            .filter(|g| g.was.is_none())
            .map(|g| {
                let key = (g.stage.clone(), g.rule.clone(), g.connector.clone());
                (key, senders(&g.senders))
            })
            .collect(),
        accepted: i
            .accepted
            .iter()
            .map(|g| {
                let key = (g.stage.clone(), g.was_rule.clone(), g.relay);
                (key, senders(&g.senders))
            })
            .collect(),
        rerouted: i
            .rerouted
            .iter()
            .map(|r| {
                let key = (
                    r.domain.clone(),
                    r.from.connector.clone(),
                    r.to.connector.clone(),
                );
                (key, r.recipients)
            })
            .collect(),
    }
}

fn assert_same(case: &str, live: &Live, report: &Live, impact: &Impact) {
    let text = impact.to_text();
    assert_eq!(report.refused, live.refused, "{case}: refused\n{text}");
    assert_eq!(report.accepted, live.accepted, "{case}: accepted\n{text}");
    assert_eq!(report.rerouted, live.rerouted, "{case}: rerouted\n{text}");
}

/// The replay of `data_dir`'s trace (the last hour) from `current` to `proposed`.
fn replay(current: &str, proposed: &str, data_dir: &Path) -> Impact {
    let window = Window::last(trace::time::now_ms() + 60_000, 3_600_000);
    whatif::whatif(
        &support::policy(current),
        &support::policy(proposed),
        data_dir,
        window,
    )
    .expect("the trace replays")
}

/// Every proposed change of the issue, each checked against a live relay running it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_impact_matches_the_live_relay_for_each_change() {
    let onprem = start_sink().await;
    let partner = start_sink().await;
    let recorded = tempfile::tempdir().unwrap();
    let current = base_config(recorded.path(), onprem.addr(), partner.addr());
    let before = run_relay(&current).await;
    assert_eq!(
        sessions(recorded.path()),
        TRAFFIC.len(),
        "one row per transaction"
    );
    // What the traffic was: the refusals the replay must see too.
    assert!(
        before.answers[5].rcpts[1].starts_with("550 5.7.64"),
        "{:?}",
        before.answers[5]
    );
    assert!(before.answers[6].data.is_none(), "all refused: no DATA");

    let cases: Vec<(&str, String)> = vec![
        (
            "RequireTls on",
            changed(&current, PARTNER, &format!("{PARTNER}RequireTls = true\n")),
        ),
        (
            "a narrower CIDR",
            changed(&current, "[\"127.0.0.20/30\"]", "[\"127.0.0.20/32\"]"),
        ),
        (
            "a connector disabled",
            changed(
                &current,
                "Name = \"From on-premises\"\n",
                "Name = \"From on-premises\"\nEnabled = false\n",
            ),
        ),
        (
            "a domain moved to DomainValidation",
            changed(
                &current,
                TO_FABRIKAM,
                "Name = \"To Fabrikam\"\nConnectorType = \"Partner\"\nRecipientDomains = [\"old.fabrikam.test\"]",
            ) + &format!(
                "\n[[OutboundConnector]]\nName = \"To Fabrikam (secure)\"\nRecipientDomains = [\"fabrikam.test\"]\nUseMXRecord = false\nSmartHosts = [\"{}\"]\nTlsSettings = \"DomainValidation\"\nTlsDomain = \"mail.fabrikam.test\"\n",
                partner.addr()
            ),
        ),
    ];
    for (case, proposed) in &cases {
        let impact = replay(&current, proposed, recorded.path());
        assert_eq!(impact.replayed.rows, TRAFFIC.len() as u64, "{case}");
        assert_eq!(
            impact.recorded_mismatches.transactions,
            0,
            "{case}: the facts reproduce every recorded decision\n{}",
            impact.to_text()
        );
        assert!(!impact.opens_relay, "{case}\n{}", impact.to_text());
        let live_dir = tempfile::tempdir().unwrap();
        let live_config = proposed.replace(
            &recorded.path().display().to_string(),
            &live_dir.path().display().to_string(),
        );
        let after = run_relay(&live_config).await;
        let live = live_difference(&before, &after);
        assert_same(case, &live, &reported(&impact), &impact);
        assert!(
            !live.refused.is_empty() || !live.rerouted.is_empty(),
            "{case}: the change changes something"
        );
        if *case == "RequireTls on" {
            // The other way round: the trace of the relay that refused at MAIL FROM,
            // replayed without RequireTls, accepts those transactions again.
            let back = replay(
                &live_config,
                &current.replace(
                    &recorded.path().display().to_string(),
                    &live_dir.path().display().to_string(),
                ),
                live_dir.path(),
            );
            assert_same(
                "RequireTls off",
                &live_difference(&after, &before),
                &reported(&back),
                &back,
            );
            let mail = &back.accepted[0];
            assert_eq!(
                (mail.stage.as_str(), mail.was_rule.as_str()),
                ("MAIL", "RequireTls")
            );
            // A "current" config that is not the one the traffic was recorded under: no
            // impact (both sides alike), but the recorded decisions it does not reproduce
            // are counted and shown.
            let drifted = replay(&live_config, &live_config, recorded.path());
            assert!(drifted.refused.is_empty() && drifted.accepted.is_empty());
            assert_eq!(
                drifted.recorded_mismatches.transactions,
                2,
                "{}",
                drifted.to_text()
            );
            let example = &drifted.recorded_mismatches.examples[0];
            assert!(
                example.contains(
                    "MAIL FROM recorded as accepted, the current config gives refused (RequireTls)"
                ),
                "{example}"
            );
            assert!(
                drifted
                    .to_text()
                    .contains("decides otherwise than the relay did")
            );
        }
    }
}

/// An accidental open relay: the on-premises range widened to all of 127/8. The binary
/// says OPENS RELAY, exits 3 and sets `OpensRelay`; the live relay does relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_relay_is_flagged_loudly() {
    let onprem = start_sink().await;
    let partner = start_sink().await;
    let recorded = tempfile::tempdir().unwrap();
    let current = base_config(recorded.path(), onprem.addr(), partner.addr());
    let before = run_relay(&current).await;
    let proposed = changed(
        &current,
        ONPREM_IPS,
        "SenderIPAddresses = [\"127.0.0.0/8\"]",
    );
    let files = tempfile::tempdir().unwrap();
    let (cur, prop) = (
        files.path().join("relay.toml"),
        files.path().join("proposed.toml"),
    );
    std::fs::write(&cur, &current).unwrap();
    std::fs::write(&prop, &proposed).unwrap();
    let run = |json: bool| {
        let mut args = vec![
            "whatif",
            "--current",
            cur.to_str().unwrap(),
            "--config",
            prop.to_str().unwrap(),
            "--since",
            "1h",
        ];
        if json {
            args.push("--json");
        }
        std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("binary runs")
    };
    let text = run(false);
    let out = String::from_utf8_lossy(&text.stdout);
    assert_eq!(
        text.status.code(),
        Some(3),
        "{out}\n{}",
        String::from_utf8_lossy(&text.stderr)
    );
    assert!(
        out.starts_with("OPENS RELAY: This change would have"),
        "{out}"
    );
    assert!(out.contains("\nOPENS RELAY\n"), "{out}");
    assert!(out.contains("client 127.0.0.99 <eve@example.net> could relay to any domain through \"From on-premises\""), "{out}");
    let json = run(true);
    assert_eq!(json.status.code(), Some(3));
    let impact: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(impact["OpensRelay"], json!(true), "{impact}");
    assert_eq!(impact["Relay"]["Recipients"], json!(2), "{impact}");
    assert_eq!(
        impact["Relay"]["Anyone"],
        json!(false),
        "only 127/8: {impact}"
    );

    // The live relay with the change relays what the report says it would.
    let impact = replay(&current, &proposed, recorded.path());
    let live_dir = tempfile::tempdir().unwrap();
    let after = run_relay(&proposed.replace(
        &recorded.path().display().to_string(),
        &live_dir.path().display().to_string(),
    ))
    .await;
    let live = live_difference(&before, &after);
    assert_same("open relay", &live, &reported(&impact), &impact);
    let relayed: u64 = live
        .accepted
        .iter()
        .filter(|((_, _, relay), _)| *relay)
        .flat_map(|(_, s)| s.values())
        .sum();
    assert_eq!(
        relayed, 2,
        "the live relay relays both victim@elsewhere.test transactions"
    );

    // Open to anyone: 0.0.0.0/0 is caught by the probe even without a recorded attempt.
    let anyone = changed(&current, ONPREM_IPS, "SenderIPAddresses = [\"0.0.0.0/0\"]");
    let impact = replay(&current, &anyone, recorded.path());
    assert!(
        impact.opens_relay && impact.relay.anyone,
        "{}",
        impact.to_text()
    );
    assert!(
        impact.summary.contains("anyone could relay through it"),
        "{}",
        impact.summary
    );
}

/// `?whatIf=true` answers the Impact next to the validation result; applied, the change
/// does to the same traffic what the Impact said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_preview_has_the_impact_and_the_applied_change_matches_it() {
    let onprem = start_sink().await;
    let partner = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        base_config(dir.path(), onprem.addr(), partner.addr()),
    )
    .unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");
    let before = record(relay.smtp_addrs[0], dir.path()).await;

    let change = json!({ "RequireTls": true });
    let path = "/api/exchange/connectors/Partner%20fabrikam";
    let preview = http(
        admin,
        "PUT",
        &format!("{path}?whatIf=true"),
        Some(&token),
        Some(&change),
    )
    .await;
    assert_eq!(preview.status, 200, "{}", preview.body);
    let body = preview.json();
    assert_eq!(body["WhatIf"], json!(true));
    assert!(
        body["Diff"].as_array().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    let impact: Impact = impact_of(&body["Impact"]);
    assert_eq!(
        body["Impact"]["Summary"],
        json!(
            "This change would have refused 2 messages from 2 senders in the last 7 days: carol@fabrikam.test (1), dave@fabrikam.test (1)."
        )
    );
    // A preview that changes nothing says so.
    let noop = http(
        admin,
        "PUT",
        &format!("{path}?whatIf=true"),
        Some(&token),
        Some(&json!({"Comment": "the partner"})),
    )
    .await;
    let summary = noop.json()["Impact"]["Summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        summary.starts_with(
            "This change would not have changed any decision about the 7 transactions recorded in the last 7 days."
        ),
        "{summary}"
    );

    let applied = http(admin, "PUT", path, Some(&token), Some(&change)).await;
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert!(
        applied.json().get("Impact").is_none(),
        "only previews replay"
    );
    // The same traffic again, under the change.
    let mut after = Vec::new();
    for tx in TRAFFIC {
        after.push(send(relay.smtp_addrs[0], tx).await);
    }
    let refused: BTreeMap<String, u64> = TRAFFIC
        .iter()
        .zip(&before.answers)
        .zip(&after)
        .filter(|((_, a), b)| accepted(&a.mail) && !accepted(&b.mail))
        .map(|((tx, _), b)| {
            assert!(b.mail.starts_with("451 5.7.3"), "{}", b.mail);
            (tx.sender.to_string(), 1)
        })
        .collect();
    let reported = &reported(&impact).refused;
    let key = (
        "MAIL".to_string(),
        "RequireTls".to_string(),
        Some("Partner fabrikam".to_string()),
    );
    assert_eq!(reported.get(&key), Some(&refused), "{}", impact.to_text());
    assert_eq!(reported.len(), 1);
    relay.shutdown(Duration::from_secs(5)).await;
}

fn impact_of(v: &Value) -> Impact {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("an Impact ({e}): {v}"))
}
