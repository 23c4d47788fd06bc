//! Message trace end to end: a relayed message and a refused session through the real
//! relay, read back with `trace::query` and with the `connector-relay trace` binary
//! (table and JSON), plus the command's exit codes.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use connector_relay::trace::{self, EventKind, TraceEvent, TraceQuery};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// A Partner connector for fabrikam.test: its sessions are attributed, but may not relay.
const PARTNER: &str = r#"
[[InboundConnector]]
Name = "Fabrikam partner"
ConnectorType = "Partner"
SenderDomains = ["fabrikam.test"]
"#;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn by_sender(sender: &str) -> TraceQuery {
    TraceQuery {
        sender: Some(sender.into()),
        limit: 100,
        ..Default::default()
    }
}

/// The rows of `q` without the delivery engine's own Routed/Attempt rows (their content is
/// the delivery engine's business and has its own tests).
fn rows(data_dir: &Path, q: &TraceQuery) -> Vec<TraceEvent> {
    trace::query(data_dir, q)
        .expect("trace store readable")
        .into_iter()
        .filter(|e| !matches!(e.event, EventKind::Routed | EventKind::Attempt))
        .collect()
}

/// Polls (bounded) until a row of `kind` is there; the assertions that follow decide.
async fn wait_for(data_dir: &Path, q: &TraceQuery, kind: EventKind) -> Vec<TraceEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = rows(data_dir, q);
        if r.iter().any(|e| e.event == kind) || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn trace_cmd(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
        .arg("trace")
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[tokio::test]
async fn relayed_and_refused_messages_are_traced_and_printed() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let extra = format!("TrustedCaFile = \"{}\"\n{PARTNER}", certs("ca.crt"));
    let toml = relay_config(data, sink.addr(), &extra);
    let relay = start_relay(&toml, None).await;
    let addr = relay.smtp_addrs[0];

    // 1. Relayed: the on-premises server (127.0.0.10), STARTTLS with its certificate.
    let mut d = Dialog::connect_from(ip("127.0.0.10"), addr).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("STARTTLS", "220").await;
    let mut d = d
        .starttls(
            "relay.contoso.test",
            Some(("onprem.contoso.test.crt", "onprem.contoso.test.key")),
        )
        .await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<Alice@Contoso.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(b"Message-ID: <trace-1@contoso.test>\r\nSubject: traced\r\n\r\nhello\r\n.\r\n")
        .await;
    let accepted = d.expect("250 2.0.0 Ok: queued as ", "end of DATA").await;
    let queue_id = accepted.rsplit(' ').next().unwrap().to_string();
    d.cmd("QUIT", "221").await;
    assert_eq!(wait_messages(sink.maildir(), 1, WAIT).await.len(), 1);

    // Found by the sender in any case, and by the Message-ID without its brackets.
    let got = wait_for(data, &by_sender("alice@contoso.test"), EventKind::Delivered).await;
    let kinds: Vec<EventKind> = got.iter().map(|e| e.event).collect();
    assert_eq!(
        kinds,
        [EventKind::Received, EventKind::Delivered],
        "{got:#?}"
    );
    let (received, delivered) = (&got[0], &got[1]);
    let tls = received.tls.as_deref().unwrap_or_default();
    assert!(tls.starts_with("TLSv1.3 TLS13_"), "{received:#?}");
    assert_eq!(
        received,
        &TraceEvent {
            time_ms: received.time_ms,
            event: EventKind::Received,
            queue_id: Some(queue_id.clone()),
            message_id: Some("<trace-1@contoso.test>".into()),
            sender: Some("Alice@Contoso.test".into()),
            recipient: Some("bob@contoso.test".into()),
            client_ip: Some("127.0.0.10".into()),
            helo: Some("onprem.contoso.test".into()),
            connector: Some("From on-premises".into()),
            rule: None,
            host: None,
            ip: None,
            tls: Some(tls.to_string()),
            certificate: received.certificate.clone(),
            reply: Some(accepted.clone()),
            detail: received.detail.clone(),
            // The relay's node: the host name unless `run --node` names it.
            node: Some(connector_relay::config::machine_host_name()),
        }
    );
    let cert = received.certificate.as_deref().unwrap_or_default();
    assert_eq!(
        cert, "O=connector-relay tests, CN=mail.contoso.test",
        "trusted"
    );
    assert!(
        received
            .detail
            .as_deref()
            .unwrap_or_default()
            .ends_with("bytes, 1 recipient(s)"),
        "{received:#?}"
    );
    assert_eq!(delivered.queue_id.as_deref(), Some(queue_id.as_str()));
    assert_eq!(delivered.message_id, received.message_id);
    assert_eq!(delivered.sender.as_deref(), Some("Alice@Contoso.test"));
    assert_eq!(delivered.recipient.as_deref(), Some("bob@contoso.test"));
    assert_eq!(delivered.connector.as_deref(), Some("To on-premises"));
    assert_eq!(
        delivered.host.as_deref(),
        Some("127.0.0.1"),
        "{delivered:#?}"
    );
    assert_eq!(delivered.ip.as_deref(), Some("127.0.0.1"), "{delivered:#?}");
    assert_eq!(delivered.tls, None, "the sink has no TLS");
    assert!(
        delivered
            .reply
            .as_deref()
            .unwrap_or_default()
            .starts_with("250 "),
        "{delivered:#?}"
    );
    assert!(delivered.time_ms >= received.time_ms);
    let by_id = rows(
        data,
        &TraceQuery {
            message_id: Some("trace-1@contoso.test".into()),
            limit: 100,
            ..Default::default()
        },
    );
    assert_eq!(by_id, got);

    // The command line reads the store while the relay writes it: the same rows as JSON.
    let config = data.join("relay.toml");
    std::fs::write(&config, &toml).unwrap();
    let config = config.to_str().unwrap();
    let out = trace_cmd(&[
        "--config",
        config,
        "--sender",
        "alice@contoso.test",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let printed: Vec<TraceEvent> = serde_json::from_slice(&out.stdout).expect("a JSON array");
    let printed: Vec<TraceEvent> = printed
        .into_iter()
        .filter(|e| !matches!(e.event, EventKind::Routed | EventKind::Attempt))
        .collect();
    assert_eq!(printed, rows(data, &by_sender("alice@contoso.test")));

    // 2. Refused before DATA: a partner's session trying to relay to the internet.
    let mut d = Dialog::connect_from(ip("127.0.0.77"), addr).await;
    d.cmd("EHLO mail.fabrikam.test", "250").await;
    let too_big = d
        .cmd("MAIL FROM:<big@fabrikam.test> SIZE=999999999", "552")
        .await;
    d.cmd("MAIL FROM:<mallory@fabrikam.test>", "250").await;
    let refusal = "550 5.7.64 TenantAttribution; Relay Access Denied \
                   (connector \"Fabrikam partner\" is not an OnPremises connector)";
    assert_eq!(d.cmd("RCPT TO:<victim@example.test>", "550").await, refusal);
    d.cmd("QUIT", "221").await;
    // Shutdown writes what is queued: no polling for this row.
    relay.shutdown(Duration::from_secs(5)).await;
    let got = rows(data, &by_sender("MALLORY@fabrikam.test"));
    assert_eq!(
        got,
        [TraceEvent {
            time_ms: got.first().map_or(0, |e| e.time_ms),
            event: EventKind::Rejected,
            queue_id: None,
            message_id: None,
            sender: Some("mallory@fabrikam.test".into()),
            recipient: Some("victim@example.test".into()),
            client_ip: Some("127.0.0.77".into()),
            helo: Some("mail.fabrikam.test".into()),
            connector: Some("Fabrikam partner".into()),
            rule: Some("RelayWithoutOnPremisesAttribution".into()),
            host: None,
            ip: None,
            tls: None,
            certificate: None,
            reply: Some(refusal.into()),
            detail: Some("refused at RCPT".into()),
            node: Some(connector_relay::config::machine_host_name()),
        }]
    );

    // A limit of the session itself, before any connector was consulted.
    let got = rows(data, &by_sender("big@fabrikam.test"));
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        (
            got[0].event,
            got[0].rule.as_deref(),
            got[0].connector.as_deref()
        ),
        (EventKind::Rejected, Some("MaxMessageSize"), None)
    );
    assert_eq!(got[0].reply.as_deref(), Some(too_big.as_str()));
    assert_eq!(got[0].detail.as_deref(), Some("refused at MAIL"));
    assert_eq!(got[0].client_ip.as_deref(), Some("127.0.0.77"));

    // 3. The command line, on the same config file (table, and the rest).
    let out = trace_cmd(&["--config", config, "--connector", "fabrikam PARTNER"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    println!("{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    let columns: Vec<&str> = lines[0]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        columns,
        [
            "TIME",
            "NODE",
            "EVENT",
            "QUEUE ID",
            "SENDER",
            "RECIPIENT",
            "CONNECTOR",
            "DETAILS"
        ]
    );
    let cells: Vec<&str> = lines[1]
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        cells,
        [
            trace::time::format_utc(got[0].time_ms).as_str(),
            connector_relay::config::machine_host_name().as_str(),
            "Rejected",
            "-",
            "mallory@fabrikam.test",
            "victim@example.test",
            "Fabrikam partner",
            "rule=RelayWithoutOnPremisesAttribution client=127.0.0.77 helo=mail.fabrikam.test \
             reply=\"550 5.7.64 TenantAttribution; Relay Access Denied (connector \"Fabrikam \
             partner\" is not an OnPremises connector)\" refused at RCPT",
        ]
    );
    // Columns line up: DETAILS starts at the same offset in every line.
    assert_eq!(lines[0].find("DETAILS"), lines[1].find("rule="));

    // Everything, as printed for the issue's evidence (`-- --nocapture`).
    let out = trace_cmd(&["--config", config, "--since", "1h"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let all = text(&out.stdout);
    println!("connector-relay trace --since 1h\n{all}");
    for (kind, n) in [("Received", 1), ("Delivered", 1), ("Rejected", 2)] {
        assert_eq!(
            all.lines()
                .filter(|l| l.split("  ").filter(|c| !c.is_empty()).nth(2) == Some(kind))
                .count(),
            n,
            "{kind}: {all}"
        );
    }

    let out = trace_cmd(&["--config", config, "--recipient", "nobody@contoso.test"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
    assert_eq!(text(&out.stderr).trim(), "no trace rows match");
    let out = trace_cmd(&[
        "--config", config, "--since", "1h", "--until", "2h", "--json",
    ]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(text(&out.stdout).trim(), "[]");
}

#[test]
fn trace_command_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let config = tmp.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[Relay]\nSpoolDir = \"{d}\"\nDataDir = \"{d}\"\n",
            d = empty.display()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    // No store: a runtime failure (2) naming the file.
    let out = trace_cmd(&["--config", config]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("trace.sqlite"),
        "{}",
        text(&out.stderr)
    );
    // Bad arguments: 1.
    let out = trace_cmd(&["--config", config, "--since", "yesterday"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("--since: cannot read \"yesterday\""));
    let out = trace_cmd(&["--config", config, "--limit", "0"]);
    assert_eq!(out.status.code(), Some(1));
    let out = trace_cmd(&["--config", config, "--bogus"]);
    assert_eq!(out.status.code(), Some(1));
    let out = trace_cmd(&["--config", &format!("{config}.missing")]);
    assert_eq!(out.status.code(), Some(1), "a config that cannot be loaded");
}

/// The queue's rows: a 451 then a delivery (Deferred, Delivered), a 550 (Failed and the
/// failure DSN), a host that never answers (Deferred until Expired, and the DSN).
#[tokio::test]
async fn queue_outcomes_are_traced() {
    use connector_relay::smtp::Reply;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let busy_tries = Arc::new(AtomicUsize::new(0));
    let tries = busy_tries.clone();
    let hook: connector_relay::sink::RcptHook = Arc::new(move |rcpt: &str| match rcpt {
        "busy@fabrikam.test" if tries.fetch_add(1, Ordering::SeqCst) == 0 => {
            Some(Reply::new(451, "4.3.0", "try again later"))
        }
        "gone@fabrikam.test" => Some(Reply::new(550, "5.1.1", "user gone away")),
        _ => None,
    });
    let partner = start_sink_with("127.0.0.1:0".parse().unwrap(), false, Some(hook)).await;
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path();
    let mut cfg = relay_config(
        data,
        onprem.addr(),
        "MessageExpirationTimeout = \"00:00:05\"",
    );
    cfg.push_str(&format!(
        "\n[[OutboundConnector]]\nName = \"To Fabrikam\"\nRecipientDomains = [\"fabrikam.test\"]\n\
         UseMXRecord = false\nSmartHosts = [\"{}\"]\n\
         \n[[OutboundConnector]]\nName = \"To nowhere\"\nRecipientDomains = [\"nowhere.test\"]\n\
         UseMXRecord = false\nSmartHosts = [\"127.0.0.1:{}\"]\n",
        partner.addr(),
        free_port()
    ));
    let relay = start_relay(&cfg, None).await;
    let mut d = Dialog::connect_from(ip("127.0.0.10"), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    for rcpts in [&["busy", "gone"][..], &["dan"][..]] {
        d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
        for r in rcpts {
            let domain = if *r == "dan" {
                "nowhere.test"
            } else {
                "fabrikam.test"
            };
            d.cmd(&format!("RCPT TO:<{r}@{domain}>"), "250").await;
        }
        d.cmd("DATA", "354").await;
        d.cmd("Subject: outcomes\r\n\r\nhello\r\n.", "250").await;
    }
    d.cmd("QUIT", "221").await;

    let q = by_sender("alice@contoso.test");
    let deadline = tokio::time::Instant::now() + WAIT;
    let got = loop {
        let got = rows(data, &q);
        let done = got.iter().any(|e| e.event == EventKind::Expired)
            && got.iter().filter(|e| e.event == EventKind::DsnSent).count() == 2
            && got.iter().any(|e| e.event == EventKind::Delivered);
        if done || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    relay.shutdown(Duration::from_secs(5)).await;
    let of = |rcpt: &str| -> Vec<&TraceEvent> {
        got.iter()
            .filter(|e| e.recipient.as_deref() == Some(rcpt))
            .collect()
    };
    let kinds = |rows: &[&TraceEvent]| rows.iter().map(|e| e.event).collect::<Vec<_>>();

    let busy = of("busy@fabrikam.test");
    use EventKind::*;
    assert_eq!(kinds(&busy), [Received, Deferred, Delivered], "{got:#?}");
    let deferred = busy[1];
    assert_eq!(deferred.connector.as_deref(), Some("To Fabrikam"));
    assert_eq!(deferred.host.as_deref(), Some("127.0.0.1"));
    assert_eq!(deferred.rule.as_deref(), Some("MailSystem"));
    assert_eq!(deferred.reply.as_deref(), Some("451 4.3.0 try again later"));
    let detail = deferred.detail.as_deref().unwrap_or_default();
    assert!(
        detail.starts_with("attempt 1; next attempt at ") && detail.ends_with("(in 1s)"),
        "{detail}"
    );
    assert_eq!(busy[2].queue_id, deferred.queue_id);

    let gone = of("gone@fabrikam.test");
    assert_eq!(kinds(&gone), [Received, Failed], "{got:#?}");
    assert_eq!(gone[1].rule.as_deref(), Some("Addressing"));
    assert_eq!(gone[1].reply.as_deref(), Some("550 5.1.1 user gone away"));
    assert_eq!(gone[1].connector.as_deref(), Some("To Fabrikam"));

    let dan = of("dan@nowhere.test");
    let n = dan.len();
    assert!(n >= 3, "{got:#?}");
    assert_eq!(dan[0].event, Received);
    assert!(
        dan[1..n - 1].iter().all(|e| e.event == Deferred),
        "{got:#?}"
    );
    // The last attempt says what came next: nothing (it ended past the expiry), or the
    // queue's next connection attempt, which the expiry then came before.
    let last_try = dan[n - 2].detail.as_deref().unwrap_or_default();
    assert!(
        last_try.starts_with("attempt ")
            && (last_try.ends_with("; no further attempt (expired)")
                || last_try.contains("next connection attempt at ")),
        "{last_try}"
    );
    assert_eq!(dan[n - 1].event, Expired);
    assert_eq!(dan[n - 1].rule.as_deref(), Some("MessageExpirationTimeout"));
    let why = dan[n - 1].detail.as_deref().unwrap_or_default();
    assert!(
        why.contains("(MessageExpirationTimeout); last error: "),
        "{why}"
    );

    // One DSN for each message, to the sender, naming what it reports on.
    let dsns: Vec<&TraceEvent> = got.iter().filter(|e| e.event == DsnSent).collect();
    assert_eq!(dsns.len(), 2, "{got:#?}");
    for (dsn, (about, of_message)) in dsns.iter().zip([
        ("gone@fabrikam.test", &gone[0]),
        ("dan@nowhere.test", &dan[0]),
    ]) {
        assert_eq!(dsn.queue_id, of_message.queue_id);
        let detail = dsn.detail.as_deref().unwrap_or_default();
        let prefix = format!("failure notice to alice@contoso.test about {about}; queued as ");
        assert!(detail.starts_with(&prefix), "{detail}");
    }
    assert_eq!(
        wait_messages(onprem.maildir(), 2, WAIT).await.len(),
        2,
        "both DSNs"
    );
}

/// A store that cannot be opened stops the start with a clear error and exit code 2.
#[test]
fn unopenable_store_stops_the_relay_with_exit_2() {
    let tmp = tempfile::tempdir().unwrap();
    let not_a_dir = tmp.path().join("data");
    std::fs::write(&not_a_dir, b"a file where DataDir should be").unwrap();
    let config = tmp.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[Relay]\nListen = [\"127.0.0.1:0\"]\nSpoolDir = \"{}\"\nDataDir = \"{}\"\n",
            tmp.path().join("spool").display(),
            not_a_dir.display()
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("binary runs");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the relay started without its trace store");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot open the message trace store {}/trace.sqlite",
            not_a_dir.display()
        )),
        "{stderr}"
    );
}
