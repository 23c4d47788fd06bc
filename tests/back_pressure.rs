//! Back pressure over real sockets: a queue-length threshold of a few messages, a smart
//! host that refuses connections so that accepted mail stays queued. Under Medium an
//! anonymous (Internet) sender gets `452 4.3.1 Insufficient system resources` at MAIL FROM
//! while the OnPremises server is still accepted; under High the OnPremises server is
//! refused too, but a transaction already past MAIL FROM completes. Then the smart host
//! comes up, the queue is retried (Retry-Queue) and drains, and acceptance resumes by
//! itself (hysteresis: back at the Normal threshold).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde_json::Value;
use support::http::{http, until};
use support::{Dialog, relay_config, start_relay, start_sink_with, wait_messages};

const ONPREM: &str = "127.0.0.10";
const INTERNET: &str = "127.0.0.1";
const MESSAGE: &str = "Subject: back pressure\r\n\r\nhello";

/// The back-pressure gauges of `/metrics` are process-wide (one recorder per process), and
/// every relay started by this file sets them once a second: tests that read them must not
/// run at the same time as another relay of this file.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn session(from_ip: &str, relay: SocketAddr) -> Dialog {
    let mut d = Dialog::connect_from(from_ip.parse::<IpAddr>().unwrap(), relay).await;
    d.cmd("EHLO client.test", "250").await;
    d
}

/// One message from `from_ip` (must be accepted).
async fn send_one(from_ip: &str, relay: SocketAddr, from: &str) {
    let mut d = session(from_ip, relay).await;
    d.send_message(from, "user@contoso.test", MESSAGE).await;
    d.cmd("QUIT", "221").await;
}

/// The reply to MAIL FROM in a new session from `from_ip` (the transaction is reset).
async fn mail_reply(from_ip: &str, relay: SocketAddr, from: &str) -> String {
    let mut d = session(from_ip, relay).await;
    d.send(format!("MAIL FROM:<{from}>\r\n").as_bytes()).await;
    let reply = d.read_reply().await;
    d.cmd("RSET", "250").await;
    d.cmd("QUIT", "221").await;
    reply
}

/// Polls new sessions until MAIL FROM from `from_ip` is answered with `expect`.
async fn until_mail_reply(from_ip: &str, relay: SocketAddr, from: &str, expect: &str) -> String {
    until(
        &format!("MAIL FROM from {from_ip} answered {expect}"),
        || async {
            let r = mail_reply(from_ip, relay, from).await;
            r.starts_with(expect).then_some(r)
        },
    )
    .await
}

async fn metrics(admin: SocketAddr) -> String {
    http(admin, "GET", "/metrics", None, None).await.body
}

async fn status(admin: SocketAddr, token: &str) -> Value {
    http(admin, "GET", "/api/status", Some(token), None)
        .await
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_length_over_its_thresholds_turns_new_mail_away_and_recovers() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens there yet: delivery fails with connection refused, mail stays queued.
    let smart_host: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let extra = "QueueLengthHighThreshold = 5\nQueueLengthMediumThreshold = 3\nQueueLengthNormalThreshold = 1";
    let relay = start_relay(&relay_config(dir.path(), smart_host, extra), None).await;
    let smtp = relay.smtp_addrs[0];
    let admin = relay.admin_addr.unwrap();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let token = token.trim();

    // Normal: both accepted.
    assert!(
        mail_reply(INTERNET, smtp, "someone@fabrikam.test")
            .await
            .starts_with("250")
    );
    for i in 0..3 {
        send_one(ONPREM, smtp, &format!("app{i}@contoso.test")).await;
    }

    // Three queued: Medium. The Internet sender is turned away, the OnPremises server not.
    let refused = until_mail_reply(INTERNET, smtp, "someone@fabrikam.test", "452").await;
    assert_eq!(refused, "452 4.3.1 Insufficient system resources");
    assert!(
        mail_reply(ONPREM, smtp, "app@contoso.test")
            .await
            .starts_with("250"),
        "OnPremises is still accepted under Medium"
    );
    let m = metrics(admin).await;
    assert!(
        m.contains("connector_relay_back_pressure_state{resource=\"queue\"} 1"),
        "{m}"
    );
    assert!(m.contains("connector_relay_back_pressure_state{resource=\"disk\"} 0"));
    assert!(m.contains("connector_relay_back_pressure_value{resource=\"queue\"} 3"));
    assert!(
        m.lines()
            .any(|l| l.starts_with("connector_relay_rejections_total{rule=\"BackPressure\"")),
        "{m}"
    );
    let s = status(admin, token).await;
    assert_eq!(s["BackPressure"]["State"], "Medium", "{s:#}");
    let reason = s["BackPressure"]["Reason"].as_str().unwrap();
    assert!(
        reason.contains("queue Medium: queued messages 3 (threshold QueueLengthMediumThreshold 3)"),
        "{reason}"
    );

    // An OnPremises transaction opened under Medium, past MAIL FROM before High.
    let mut open = session(ONPREM, smtp).await;
    open.cmd("MAIL FROM:<late@contoso.test>", "250").await;
    open.cmd("RCPT TO:<user@contoso.test>", "250").await;

    // Two more from OnPremises: five queued, High; now OnPremises is refused too.
    send_one(ONPREM, smtp, "app3@contoso.test").await;
    send_one(ONPREM, smtp, "app4@contoso.test").await;
    until_mail_reply(ONPREM, smtp, "app@contoso.test", "452 4.3.1").await;
    assert_eq!(status(admin, token).await["BackPressure"]["State"], "High");

    // The transaction in progress keeps going.
    open.cmd("DATA", "354").await;
    open.send(format!("{MESSAGE}\r\n.\r\n").as_bytes()).await;
    open.expect("250", "end of DATA under High").await;
    open.cmd("QUIT", "221").await;

    // The trace says why (rows are written in the background: poll).
    let row = until("a BackPressure trace row", || async {
        let trace = http(
            admin,
            "GET",
            "/api/trace?sender=someone@fabrikam.test",
            Some(token),
            None,
        )
        .await
        .json();
        trace
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["rule"] == "BackPressure"))
            .cloned()
    })
    .await;
    let detail = row.to_string();
    assert!(
        detail.contains("452 4.3.1 Insufficient system resources"),
        "{detail}"
    );
    assert!(detail.contains("QueueLengthMediumThreshold"), "{detail}");

    // The smart host comes up; Retry-Queue; the six messages leave and the queue empties.
    let sink = start_sink_with(smart_host, false, None).await;
    let queues = http(admin, "GET", "/api/queues", Some(token), None)
        .await
        .json();
    for q in queues.as_array().unwrap() {
        let identity = q["Identity"].as_str().unwrap();
        let number = identity.rsplit('\\').next().unwrap();
        let r = http(
            admin,
            "POST",
            &format!("/api/queues/{number}/retry"),
            Some(token),
            None,
        )
        .await;
        assert!(r.status < 300, "retry {identity}: {} {}", r.status, r.body);
    }
    wait_messages(sink.maildir(), 6, Duration::from_secs(30)).await;

    // Back at the Normal threshold (1): the Internet sender is accepted again by itself.
    until_mail_reply(INTERNET, smtp, "someone@fabrikam.test", "250").await;
    let s = status(admin, token).await;
    assert_eq!(s["BackPressure"]["State"], "Normal", "{s:#}");
    let m = metrics(admin).await;
    assert!(
        m.contains("connector_relay_back_pressure_state{resource=\"queue\"} 0"),
        "{m}"
    );
    let mut d = session(INTERNET, smtp).await;
    d.send_message("someone@fabrikam.test", "user@contoso.test", MESSAGE)
        .await;
    d.cmd("QUIT", "221").await;
    wait_messages(sink.maildir(), 7, Duration::from_secs(30)).await;
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A memory threshold below what the relay already uses: High at once, everyone refused;
/// `Unlimited` (by reload) turns it off again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_threshold_below_the_resident_size_refuses_everyone_until_reloaded() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let smart_host: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let config = dir.path().join("relay.toml");
    let text = |memory: &str| {
        relay_config(
            dir.path(),
            smart_host,
            &format!("MemoryHighThreshold = {memory}"),
        )
    };
    std::fs::write(&config, text("\"1MB\"")).unwrap();
    let (relay, token) = support::http::start_relay_from_file(&config, dir.path()).await;
    let smtp = relay.smtp_addrs[0];
    let admin = relay.admin_addr.unwrap();

    until_mail_reply(ONPREM, smtp, "app@contoso.test", "452 4.3.1").await;
    let s = status(admin, &token).await;
    assert_eq!(s["BackPressure"]["State"], "High", "{s:#}");
    let memory = &s["BackPressure"]["Resources"][1];
    assert_eq!(memory["Resource"], "memory");
    assert_eq!(memory["HighThreshold"], 1 << 20);
    assert!(memory["Value"].as_u64().unwrap() > 1 << 20, "{memory}");

    std::fs::write(&config, text("\"Unlimited\"")).unwrap();
    let r = http(admin, "POST", "/api/reload", Some(&token), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    until_mail_reply(ONPREM, smtp, "app@contoso.test", "250").await;
    until_mail_reply(INTERNET, smtp, "someone@fabrikam.test", "250").await;
    let s = status(admin, &token).await;
    assert_eq!(s["BackPressure"]["Resources"][1]["Enabled"], false, "{s:#}");
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Free disk space under `SpoolDir` below the High threshold (one larger than any disk
/// here): High, in `/api/status` and `/metrics` with the free space measured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_disk_space_under_its_threshold_is_high_pressure() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let smart_host: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let extra = "DiskSpaceHighThreshold = \"1000TB\"";
    let relay = start_relay(&relay_config(dir.path(), smart_host, extra), None).await;
    let smtp = relay.smtp_addrs[0];
    let admin = relay.admin_addr.unwrap();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();

    until_mail_reply(ONPREM, smtp, "app@contoso.test", "452 4.3.1").await;
    let s = status(admin, token.trim()).await;
    let disk = &s["BackPressure"]["Resources"][0];
    assert_eq!(disk["Resource"], "disk", "{s:#}");
    assert_eq!(disk["State"], "High", "{s:#}");
    assert!(disk["Value"].as_u64().unwrap() > 0, "{disk}");
    let reason = s["BackPressure"]["Reason"].as_str().unwrap();
    assert!(
        reason.starts_with("disk High: free disk space under SpoolDir"),
        "{reason}"
    );
    let m = metrics(admin).await;
    assert!(
        m.contains("connector_relay_back_pressure_state{resource=\"disk\"} 2"),
        "{m}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A real small disk: the spool on a 64 MB tmpfs (needs root to mount, else skipped with
/// a message). A ballast file takes the free space under `DiskSpaceHighThreshold` (8 MB):
/// everyone gets `452 4.3.1`; the ballast goes and acceptance resumes by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_disk_filling_up_turns_mail_away_until_space_is_freed() {
    let _serial = SERIAL.lock().await;
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let _mount = match support::Tmpfs::mount(&spool, "64m") {
        Ok(m) => m,
        Err(e) => {
            println!(
                "SKIPPED tmpfs back pressure: {e}; free_disk_space_under_its_threshold_is_high_pressure covers the disk check"
            );
            return;
        }
    };
    let smart_host: SocketAddr = format!("127.0.0.1:{}", support::free_port())
        .parse()
        .unwrap();
    let extra = "DiskSpaceHighThreshold = \"8MB\"\nDiskSpaceMediumThreshold = \"12MB\"\nDiskSpaceNormalThreshold = \"16MB\"";
    // The trace store and the token live beside the spool, not on the small disk.
    let cfg = relay_config(&spool, smart_host, extra)
        .replace(
            &format!("DataDir = \"{}\"", spool.display()),
            &format!("DataDir = \"{}\"", tmp.path().display()),
        )
        .replace(
            &format!("AdminTokenFile = \"{}/admin.token\"", spool.display()),
            &format!("AdminTokenFile = \"{}/admin.token\"", tmp.path().display()),
        );
    let relay = start_relay(&cfg, None).await;
    let smtp = relay.smtp_addrs[0];
    let admin = relay.admin_addr.unwrap();
    let token = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
    let token = token.trim();

    let free = until("the first disk sample", || async {
        status(admin, token).await["BackPressure"]["Resources"][0]["Value"].as_u64()
    })
    .await;
    assert!(
        free > 16 << 20,
        "the spool disk starts Normal: {free} bytes free"
    );
    assert!(
        mail_reply(ONPREM, smtp, "app@contoso.test")
            .await
            .starts_with("250")
    );

    // Leave 4 MB free: under the High threshold.
    let ballast = spool.join("ballast");
    std::fs::write(&ballast, vec![0u8; (free - (4 << 20)) as usize]).unwrap();
    until_mail_reply(ONPREM, smtp, "app@contoso.test", "452 4.3.1").await;
    let s = status(admin, token).await;
    assert_eq!(s["BackPressure"]["Resources"][0]["State"], "High", "{s:#}");

    std::fs::remove_file(&ballast).unwrap();
    until_mail_reply(INTERNET, smtp, "someone@fabrikam.test", "250").await;
    assert_eq!(
        status(admin, token).await["BackPressure"]["State"],
        "Normal"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
