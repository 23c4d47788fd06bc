//! Hardening against slow clients, connection floods and faults (issue 5): the session and
//! inactivity timeouts, the minimum DATA rate, the per-IP connection cap and rate (OnPremises
//! exempt), a full or unwritable spool (a temporary refusal, nothing half-accepted), and a
//! downstream that resets mid-DATA (the message stays queued and is delivered later).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connector_relay::relay::{self, RelayHandle};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const WAIT: Duration = Duration::from_secs(30);

async fn relay_with(extra: &str) -> (RelayHandle, Sink, tempfile::TempDir) {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), extra), None).await;
    (relay, sink, tmp)
}

/// Starts the relay on a policy the test changed after loading (internal knobs that are
/// not config keys, such as the minimum-data-rate grace period).
async fn start_policy(policy: connector_relay::policy::Policy) -> RelayHandle {
    let resolver =
        connector_relay::dns::hickory::HickoryResolver::with_timeout(&[], Duration::from_secs(2))
            .expect("resolver");
    relay::start_with_resolver(Arc::new(policy), Arc::new(resolver))
        .await
        .expect("relay starts")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Files in a spool subdirectory (`msg`, `tmp`, `log`).
fn files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Connects from `source` and returns the first reply (the greeting or a refusal).
async fn first_reply(source: &str, to: SocketAddr) -> (Dialog, String) {
    let mut d = Dialog::new(tcp_from(ip(source), to).await);
    let r = d.read_reply().await;
    (d, r)
}

async fn transaction(d: &mut Dialog, tag: &str, body: &str, expect: &str) -> String {
    d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(format!("Subject: {tag}\r\n\r\n{body}").as_bytes())
        .await;
    d.cmd(".", expect).await
}

// ---------------------------------------------------------------------------------------
// 1. Slow clients

#[tokio::test]
async fn inactivity_timeout_closes_with_421() {
    let (relay, _sink, _tmp) = relay_with("ConnectionInactivityTimeout = \"00:00:01\"").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    let t = Instant::now();
    let r = d.read_reply().await;
    let waited = t.elapsed();
    assert!(r.starts_with("421 4.4.2"), "{r}");
    assert_eq!(d.read_reply().await, "<closed>");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "closed after {waited:?}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn session_timeout_closes_a_busy_session_with_421() {
    // The client is never idle (a NOOP every 300 ms), yet the session ends at 3 s.
    let (relay, _sink, _tmp) = relay_with("ConnectionTimeout = \"00:00:03\"").await;
    let t = Instant::now();
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    let last = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.send(b"NOOP\r\n").await;
        let r = d.read_reply().await;
        if !r.starts_with("250") || t.elapsed() > Duration::from_secs(10) {
            break r;
        }
    };
    let lasted = t.elapsed();
    assert!(last.starts_with("421 4.4.2"), "{last}");
    assert_eq!(d.read_reply().await, "<closed>");
    assert!(
        lasted >= Duration::from_millis(2900) && lasted < Duration::from_secs(6),
        "session lasted {lasted:?}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn slow_drip_data_is_cut_by_the_minimum_rate() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let mut policy = policy(&relay_config(tmp.path(), sink.addr(), ""));
    assert_eq!(policy.relay.min_data_rate, 1024, "the documented default");
    // Each byte arrives well within the 5-minute inactivity timeout; only the rate cuts it.
    policy.relay.min_data_rate_grace = Duration::from_secs(2);
    let relay = start_policy(policy).await;

    // Control: a client at ~40 KB/s for 3 s (longer than the grace) is accepted.
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(b"Subject: fast enough\r\n\r\n").await;
    for _ in 0..30 {
        d.send(format!("{}\r\n", "x".repeat(78)).repeat(50).as_bytes())
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.cmd(".", "250 2.0.0").await;
    d.cmd("QUIT", "221").await;

    // The slow drip: one byte every 200 ms (5 bytes/s).
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    let t = Instant::now();
    let (r, mut w) = d.reader_stream().into_split();
    let drip = tokio::spawn(async move {
        for b in b"Subject: slow drip\r\n\r\n".iter().cycle() {
            if w.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let mut r = BufReader::new(r);
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
        .await
        .expect("a reply within 20 s")
        .unwrap();
    let cut = t.elapsed();
    assert!(
        line.starts_with("421 4.4.2 ") && line.contains("too slow"),
        "{line:?}"
    );
    line.clear();
    assert_eq!(r.read_line(&mut line).await.unwrap_or(0), 0, "closed");
    drip.abort();
    assert!(
        cut >= Duration::from_millis(1900) && cut < Duration::from_secs(6),
        "cut after {cut:?}"
    );
    // Nothing of the slow message was stored or relayed.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = messages(sink.maildir());
    assert_eq!(got.len(), 1, "only the fast message was relayed");
    assert!(got[0].contains("Subject: fast enough"));
    assert!(files(&tmp.path().join("msg")).is_empty());
    relay.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// 2. Connection floods

#[tokio::test]
async fn per_source_connection_cap_exempts_on_premises() {
    let (relay, _sink, _tmp) = relay_with("MaxInboundConnectionPerSource = 2").await;
    let addr = relay.smtp_addrs[0];
    let mut open = Vec::new();
    for _ in 0..2 {
        open.push(Dialog::connect_from(ip("127.0.0.50"), addr).await);
    }
    let (mut d, r) = first_reply("127.0.0.50", addr).await;
    assert_eq!(r, "421 4.7.0 Too many connections from your host");
    assert_eq!(d.read_reply().await, "<closed>");
    // Another host is not affected, and OnPremises servers (127.0.0.10) are exempt.
    let _other = Dialog::connect_from(ip("127.0.0.51"), addr).await;
    let mut onprem = Vec::new();
    for _ in 0..5 {
        onprem.push(Dialog::connect_from(ip("127.0.0.10"), addr).await);
    }
    // A session that ends frees its slot.
    open[0].cmd("QUIT", "221").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_d, r) = first_reply("127.0.0.50", addr).await;
        if r.starts_with("220 ") {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed: {r}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn per_source_connection_rate_exempts_on_premises() {
    let (relay, _sink, _tmp) = relay_with("MaxInboundConnectionRatePerSource = 3").await;
    let addr = relay.smtp_addrs[0];
    for _ in 0..3 {
        let mut d = Dialog::connect_from(ip("127.0.0.52"), addr).await;
        d.cmd("QUIT", "221").await;
    }
    // Sequential, closed connections: the concurrent cap is not what refuses the 4th.
    let (mut d, r) = first_reply("127.0.0.52", addr).await;
    assert_eq!(
        r,
        "421 4.7.0 Too many connections from your host, slow down"
    );
    assert_eq!(d.read_reply().await, "<closed>");
    let mut d = Dialog::connect_from(ip("127.0.0.53"), addr).await;
    d.cmd("QUIT", "221").await;
    for _ in 0..8 {
        let mut d = Dialog::connect_from(ip("127.0.0.10"), addr).await;
        d.cmd("QUIT", "221").await;
    }
    relay.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// 3. Faults

/// Disk full: the spool on a 64 KB tmpfs, a 200 KB message → `452 4.3.1`, nothing in
/// `msg/` or `tmp/`, the session goes on and a small message then passes.
#[tokio::test]
async fn full_spool_disk_refuses_with_452_and_keeps_nothing() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("spool");
    std::fs::create_dir(&spool).unwrap();
    let _mount = match support::Tmpfs::mount(&spool, "64k") {
        Ok(m) => m,
        Err(e) => {
            println!(
                "SKIPPED full_spool_disk: {e}; spool_log_unwritable_refuses_with_451 covers the write failure"
            );
            return;
        }
    };
    // Only the spool is on the tiny disk: the trace store (DataDir) lives beside it. Back
    // pressure on free disk space is off: this test is about the spool write failing (a
    // 64 KB disk is far under the default DiskSpaceHighThreshold, so it would refuse
    // every MAIL FROM instead).
    let extra = "DiskSpaceHighThreshold = \"Unlimited\"";
    let cfg = relay_config(&spool, sink.addr(), extra).replace(
        &format!("DataDir = \"{}\"", spool.display()),
        &format!("DataDir = \"{}\"", tmp.path().join("data").display()),
    );
    let relay = start_relay(&cfg, None).await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    let big = format!("{}\r\n", "z".repeat(98)).repeat(2000);
    let r = transaction(&mut d, "too big for the disk", &big, "452 4.3.1").await;
    println!("tmpfs 64 KB, 200 KB message: {r}");
    assert!(files(&spool.join("msg")).is_empty(), "nothing in msg/");
    assert!(files(&spool.join("tmp")).is_empty(), "temp file removed");
    // The session continues, and once there is room a message passes.
    d.cmd("NOOP", "250").await;
    transaction(&mut d, "small enough", "hello\r\n", "250 2.0.0").await;
    d.cmd("QUIT", "221").await;
    let got = wait_messages(sink.maildir(), 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_now = messages(sink.maildir());
    assert_eq!(got_now.len(), 1, "only the small message was relayed");
    assert!(got[0].contains("Subject: small enough"));
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Spool unwritable (always runs, also without root): the write-ahead log's directory
/// `wal/` is a regular file, so no log segment can be created → `451 4.3.0`; nothing
/// queued, the session goes on.
#[tokio::test]
async fn spool_log_unwritable_refuses_with_451() {
    let (relay, sink, tmp) = relay_with("").await;
    let wal_dir = tmp.path().join("wal");
    std::fs::remove_dir(&wal_dir).unwrap();
    std::fs::write(&wal_dir, b"not a directory").unwrap();
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    transaction(&mut d, "refused", "hello\r\n", "451 4.3.0").await;
    assert!(files(&tmp.path().join("msg")).is_empty(), "nothing in msg/");
    d.cmd("NOOP", "250").await;
    // Repaired: the same session delivers.
    std::fs::remove_file(&wal_dir).unwrap();
    std::fs::create_dir(&wal_dir).unwrap();
    transaction(&mut d, "accepted", "hello\r\n", "250 2.0.0").await;
    d.cmd("QUIT", "221").await;
    wait_messages(sink.maildir(), 1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = messages(sink.maildir());
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].contains("Subject: accepted"));
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A scripted downstream: accepts the envelope and DATA, reads part of the message, then
/// resets the connection (SO_LINGER 0). Counts connections.
async fn resetting_server(listener: TcpListener, connections: Arc<AtomicUsize>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            return;
        };
        connections.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut s = BufReader::new(stream);
            let _ = s.get_mut().write_all(b"220 scripted.test ESMTP\r\n").await;
            let mut line = String::new();
            loop {
                line.clear();
                if s.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                let reply: &[u8] = match verb.as_str() {
                    "EHLO" | "HELO" => b"250 scripted.test\r\n",
                    "MAIL" | "RCPT" => b"250 2.0.0 OK\r\n",
                    "DATA" => b"354 go ahead\r\n",
                    "QUIT" => b"221 bye\r\n",
                    _ => b"250 OK\r\n",
                };
                let _ = s.get_mut().write_all(reply).await;
                if verb == "DATA" {
                    let mut part = vec![0u8; 4096];
                    let _ = s.read_exact(&mut part).await;
                    let stream = s.into_inner();
                    let _ = stream.set_zero_linger();
                    drop(stream); // RST
                    return;
                }
            }
        });
    }
}

#[tokio::test]
async fn downstream_reset_mid_data_keeps_the_message_queued() {
    let port = free_port();
    let downstream: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let listener = TcpListener::bind(downstream).await.unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let scripted = tokio::spawn(resetting_server(listener, connections.clone()));
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), downstream, ""), None).await;

    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    let body = format!("{}\r\n", "r".repeat(98)).repeat(1000); // 100 KB
    transaction(&mut d, "reset mid-data", &body, "250 2.0.0").await;
    d.cmd("QUIT", "221").await;

    // Deferred with 4.4.318 in the spool log, the message file still in msg/.
    let deadline = Instant::now() + WAIT;
    let log = loop {
        let logs: Vec<String> = files(&tmp.path().join("log"))
            .iter()
            .filter_map(|f| std::fs::read_to_string(tmp.path().join("log").join(f)).ok())
            .collect();
        if let Some(l) = logs.iter().find(|l| l.contains("4.4.318")) {
            break l.clone();
        }
        assert!(Instant::now() < deadline, "no 4.4.318 deferral: {logs:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    println!("spool log after the reset: {}", log.trim_end());
    assert!(log.lines().any(|l| l.starts_with("T 0 ")), "{log}");
    assert_eq!(files(&tmp.path().join("msg")).len(), 1, "still queued");
    assert!(connections.load(Ordering::SeqCst) >= 1);

    // The downstream behaves again: a real sink on the same port gets it, once.
    scripted.abort();
    let _ = scripted.await;
    let sink = start_sink_with(downstream, false, None).await;
    let got = wait_messages(sink.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1, "delivered after the downstream recovered");
    assert!(got[0].contains("Subject: reset mid-data"));
    assert!(got[0].contains(&"r".repeat(98)));
    let deadline = Instant::now() + WAIT;
    while !files(&tmp.path().join("msg")).is_empty() {
        assert!(Instant::now() < deadline, "message left the queue");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(messages(sink.maildir()).len(), 1, "delivered exactly once");
    relay.shutdown(Duration::from_secs(5)).await;
}
