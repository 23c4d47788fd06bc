//! `connector-relay queue ...` (the real binary) against a relay whose smart host refuses
//! connections: the delivery queue goes to Retry, and every command of README's table
//! ("Delivery queues") is run and its effect checked through the CLI's JSON, the admin API
//! and `/metrics`. Exit codes: 1 for an id the API does not know, 2 when the relay is down.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::http::{http, start_relay_from_file, until};
use support::*;

/// Retries an hour apart: the queue stays in Retry unless a command changes it.
fn config_text(dir: &Path, admin_port: u16, smart_host: SocketAddr) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:{admin_port}"
AdminTokenFile = "{dir}/admin.token"
TransientFailureRetryInterval = "01:00:00"
MaxRetryInterval = "01:00:00"

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{smart_host}"]
"#,
        dir = dir.display()
    )
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?} / {:?}", self.stdout, self.stderr))
    }
}

/// `connector-relay queue ARGS --config CONFIG`, run off the runtime's threads (the relay
/// under test runs in this process).
async fn queue(config: &Path, args: &[&str]) -> Run {
    let config: PathBuf = config.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
            .arg("queue")
            .args(&args)
            .arg("--config")
            .arg(&config)
            .output()
            .expect("the binary runs");
        Run {
            code: out.status.code().expect("exited"),
            stdout: String::from_utf8(out.stdout).unwrap(),
            stderr: String::from_utf8(out.stderr).unwrap(),
        }
    })
    .await
    .unwrap()
}

/// A command that must succeed.
async fn ok(config: &Path, args: &[&str]) -> Run {
    let r = queue(config, args).await;
    assert_eq!(r.code, 0, "{args:?}: {} / {}", r.stdout, r.stderr);
    r
}

/// The only delivery queue, from `queue list --json`.
async fn the_queue(config: &Path) -> Value {
    let list = ok(config, &["list", "--json"]).await.json();
    let all = list.as_array().expect("an array");
    assert_eq!(all.len(), 1, "one delivery queue: {list}");
    all[0].clone()
}

/// The metric lines for `queue`.
async fn queue_metrics(admin: SocketAddr, identity: &str) -> Vec<String> {
    let r = http(admin, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let escaped = identity.replace('\\', "\\\\");
    r.body
        .lines()
        .filter(|l| l.contains(&format!("queue=\"{escaped}\"")))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_against_a_queue_in_retry() {
    let dir = tempfile::tempdir().unwrap();
    let refused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let admin_port = free_port();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, config_text(dir.path(), admin_port, refused)).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");
    assert_eq!(admin.port(), admin_port);
    let cfg = config.as_path();

    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO exchange.contoso.test", "250").await;
    d.send_message(
        "app@contoso.test",
        "bob@contoso.test",
        "Subject: to a smart host that refuses\r\n\r\nWaiting.",
    )
    .await;
    d.cmd("QUIT", "221").await;

    // Get-Queue: the connection was refused, the queue is in Retry with the error.
    let q = until("the queue in Retry", || async move {
        let q = the_queue(cfg).await;
        (q["Status"] == "Retry").then_some(q)
    })
    .await;
    let identity = q["Identity"].as_str().unwrap().to_string();
    let next_hop = q["NextHopDomain"].as_str().unwrap().to_string();
    assert!(identity.starts_with("relay.contoso.test\\"), "{q}");
    assert_eq!(next_hop, refused.to_string(), "{q}");
    assert_eq!(q["DeliveryType"], "SmartHostConnectorDelivery");
    assert_eq!(q["MessageCount"], 1);
    assert_eq!(q["FailureCount"], 1);
    assert!(
        q["LastError"].as_str().is_some_and(|e| !e.is_empty()),
        "{q}"
    );
    assert!(q["NextRetryTime"].as_str().is_some(), "{q}");
    let table = ok(cfg, &["list"]).await.stdout;
    println!("queue list:\n{table}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("Identity"), "{table}");
    for column in [
        "DeliveryType",
        "Status",
        "MessageCount",
        "NextHopDomain",
        "LastError",
        "NextRetryTime",
    ] {
        assert!(lines[0].contains(column), "{column} in {table}");
    }
    assert!(lines[1].starts_with(&identity), "{table}");
    assert!(
        lines[1].contains("Retry") && lines[1].contains(&next_hop),
        "{table}"
    );

    // The per-queue series, with status="Retry", and the count by status.
    let series = queue_metrics(admin, &identity).await;
    let messages = format!(
        "connector_relay_delivery_queue_messages{{queue=\"{}\",next_hop=\"{next_hop}\",status=\"Retry\"}} 1",
        identity.replace('\\', "\\\\")
    );
    assert!(series.contains(&messages), "{messages} in {series:#?}");
    assert!(
        series
            .iter()
            .any(|l| l.starts_with("connector_relay_delivery_queue_oldest_message_age_seconds{")),
        "{series:#?}"
    );
    assert!(
        series.iter().any(
            |l| l.starts_with("connector_relay_delivery_queue_active_connections{")
                && l.ends_with(" 0")
        ),
        "{series:#?}"
    );
    let body = http(admin, "GET", "/metrics", None, None).await.body;
    assert!(
        body.contains("connector_relay_delivery_queues{status=\"Retry\"} 1\n"),
        "{body}"
    );

    // Suspend-Queue by NextHopDomain; the Retry series is gone, not left at its old value.
    let r = ok(cfg, &["suspend", &next_hop]).await;
    println!("queue suspend {next_hop}: {}", r.stdout);
    assert!(
        r.stdout.contains("Suspend-Queue") && r.stdout.contains("Status Suspended"),
        "{}",
        r.stdout
    );
    assert_eq!(the_queue(cfg).await["Status"], "Suspended");
    let api = http(admin, "GET", "/api/queues", Some(&token), None)
        .await
        .json();
    assert_eq!(api[0]["Status"], "Suspended", "{api}");
    let series = queue_metrics(admin, &identity).await;
    assert!(
        series.iter().all(|l| !l.contains("status=\"Retry\"")),
        "{series:#?}"
    );
    assert!(
        series.iter().any(
            |l| l.starts_with("connector_relay_delivery_queue_messages{")
                && l.contains("status=\"Suspended\"")
                && l.ends_with(" 1")
        ),
        "{series:#?}"
    );

    // Resume-Queue by Identity: back to Retry (the next hop has still failed).
    let r = ok(cfg, &["resume", &identity]).await;
    assert!(r.stdout.contains("Resume-Queue"), "{}", r.stdout);
    assert_eq!(the_queue(cfg).await["Status"], "Retry");

    // Retry-Queue by number: the probe happens now (and is refused again).
    let number = identity.rsplit('\\').next().unwrap().to_string();
    ok(cfg, &["retry", &number]).await;
    until("the probe of Retry-Queue", || async move {
        let q = the_queue(cfg).await;
        (q["FailureCount"] == 2 && q["Status"] == "Retry").then_some(())
    })
    .await;

    // Get-Message, Suspend-Message, Resume-Message.
    let msgs = ok(cfg, &["messages", "--json"]).await.json();
    assert_eq!(msgs.as_array().unwrap().len(), 1, "{msgs}");
    let id = msgs[0]["Identity"].as_str().unwrap().to_string();
    assert_eq!(msgs[0]["Queues"][0], identity.as_str(), "{msgs}");
    assert_eq!(msgs[0]["Status"], "Retry", "{msgs}");
    let table = ok(cfg, &["messages"]).await.stdout;
    println!("queue messages:\n{table}");
    for want in [
        "Identity",
        "FromAddress",
        "Queues",
        "RetryCount",
        "LastError",
        &id,
        "app@contoso.test",
    ] {
        assert!(table.contains(want), "{want} in {table}");
    }
    let r = ok(cfg, &["suspend-message", &id]).await;
    assert!(r.stdout.contains("Status Suspended"), "{}", r.stdout);
    assert_eq!(
        ok(cfg, &["messages", "--json"]).await.json()[0]["Status"],
        "Suspended"
    );
    let r = ok(cfg, &["resume-message", &id]).await;
    assert!(!r.stdout.contains("Suspended"), "{}", r.stdout);
    assert_ne!(
        ok(cfg, &["messages", "--json"]).await.json()[0]["Status"],
        "Suspended"
    );

    // Ids the API does not know: exit 1 with its sentence.
    let r = queue(cfg, &["suspend", "nosuch.example"]).await;
    println!("bad id: {}", r.stderr);
    assert_eq!(r.code, 1, "{} / {}", r.stdout, r.stderr);
    assert!(
        r.stderr
            .contains("no delivery queue has this identity or next hop"),
        "{}",
        r.stderr
    );
    let r = queue(cfg, &["remove", "NOSUCHID"]).await;
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("no message with this id is in the queue"),
        "{}",
        r.stderr
    );

    // Remove-Message: gone, and the queue with it.
    let r = ok(cfg, &["remove", &id]).await;
    assert!(r.stdout.contains("removed"), "{}", r.stdout);
    assert_eq!(
        ok(cfg, &["messages", "--json"]).await.json(),
        serde_json::json!([])
    );
    assert!(ok(cfg, &["messages"]).await.stdout.contains("no messages"));

    // The relay stopped: exit 2 naming the address. The token never shows.
    relay.shutdown(Duration::from_secs(5)).await;
    let r = queue(cfg, &["list"]).await;
    println!("relay stopped: {}", r.stderr);
    assert_eq!(r.code, 2, "{} / {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains(&format!("127.0.0.1:{admin_port}")),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains(&token) && !r.stdout.contains(&token));
}

#[tokio::test]
async fn a_config_with_an_ephemeral_admin_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let text = config_text(dir.path(), 0, SocketAddr::from(([127, 0, 0, 1], 25)));
    std::fs::write(&config, text).unwrap();
    let r = queue(&config, &["list"]).await;
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("AdminListen is 127.0.0.1:0"),
        "{}",
        r.stderr
    );
}

/// `queue adopt` (README "Node loss"): a relay (the real binary) killed with messages waiting
/// in its spool; another relay takes them over through the CLI, once, and delivers them. A
/// spool a live relay holds is refused.
#[tokio::test(flavor = "multi_thread")]
async fn adopt_takes_a_killed_relays_spool_over_once() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    for d in [&a_dir, &b_dir] {
        std::fs::create_dir_all(d).unwrap();
    }
    // Node A: its smart host refuses connections, so what it accepts stays in its spool.
    let dead: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let a_port = free_port();
    let a_config = a_dir.join("relay.toml");
    let text = config_text(&a_dir, free_port(), dead).replace(
        "Listen = [\"127.0.0.1:0\"]",
        &format!("Listen = [\"127.0.0.1:{a_port}\"]"),
    );
    std::fs::write(&a_config, text).unwrap();
    let mut a = spawn_relay_binary(&a_config, "warn");
    wait_listening(a_port).await;
    let a_smtp: SocketAddr = format!("127.0.0.1:{a_port}").parse().unwrap();
    let onprem = "127.0.0.10".parse().unwrap();
    let ids = support::inject::inject(a_smtp, onprem, "bob@contoso.test", "adopt", 5, 1).await;
    // Node B delivers to the sink.
    let b_config = b_dir.join("relay.toml");
    std::fs::write(&b_config, config_text(&b_dir, free_port(), sink.addr())).unwrap();
    let (b, _) = start_relay_from_file(&b_config, &b_dir).await;
    let from = a_dir.join("spool");
    let from = from.to_str().unwrap();

    let busy = queue(&b_config, &["adopt", "--from", from]).await;
    assert_eq!(busy.code, 1, "{} {}", busy.stdout, busy.stderr);
    assert!(
        busy.stderr.contains("in use by a running relay"),
        "{}",
        busy.stderr
    );

    a.kill().unwrap(); // SIGKILL: part of its spool is still in the write-ahead log
    a.wait().unwrap();
    let run = queue(&b_config, &["adopt", "--from", from]).await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains(": 5 message(s) adopted"),
        "{}",
        run.stdout
    );
    let got = wait_messages(sink.maildir(), 5, Duration::from_secs(30)).await;
    for id in &ids {
        assert!(
            got.iter().any(|m| m.contains(id.as_str())),
            "{id} not delivered"
        );
    }
    let again = queue(&b_config, &["adopt", "--from", from]).await;
    assert!(
        again.stdout.contains(": 0 message(s) adopted"),
        "{}",
        again.stdout
    );
    // Delivered once: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(messages(sink.maildir()).len(), 5);
    b.shutdown(Duration::from_secs(5)).await;
}
