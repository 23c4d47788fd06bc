//! Resource abuse against the SMTP server: over-long command lines (and a very long line
//! without LF that must not be buffered), 10,000 recipients, a message far over
//! `MaxMessageSize` (memory measured on this process, where the relay runs), HTTP requests
//! on the SMTP port, NUL bytes and invalid UTF-8, and the protocol-error limit.
//!
//! The tests take a lock so that memory figures are not disturbed by each other.

mod support;

use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn relay_with(extra: &str) -> (connector_relay::relay::RelayHandle, Sink, tempfile::TempDir) {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), extra), None).await;
    (relay, sink, tmp)
}

/// Samples RSS every 5 ms until dropped; `peak()` is the highest value seen.
struct RssWatch {
    peak: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RssWatch {
    fn start() -> RssWatch {
        use std::sync::atomic::Ordering;
        let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_kib()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        RssWatch { peak, stop }
    }
    fn peak(&self) -> u64 {
        self.peak
            .fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed)
            .max(rss_kib())
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

const MAX_GROWTH_KIB: u64 = 20 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_long_command_lines_are_refused_and_not_buffered() {
    let _serial = SERIAL.lock().await;
    let (relay, _sink, _tmp) = relay_with("").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd(&format!("NOOP {}", "x".repeat(600)), "500 5.5.6")
        .await;
    // 64 MB without a line feed: the session discards as it reads.
    let before = rss_kib();
    let watch = RssWatch::start();
    let chunk = vec![b'A'; 64 * 1024];
    for _ in 0..1024 {
        d.send(&chunk).await;
    }
    d.cmd("", "500 5.5.6").await;
    let growth = watch.peak().saturating_sub(before);
    println!("64 MB command line: RSS grew {growth} KiB");
    assert!(growth < MAX_GROWTH_KIB, "RSS grew {growth} KiB");
    // Two errors so far (of 5): the session goes on.
    d.cmd("NOOP", "250 2.0.0").await;
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_recipients() {
    let _serial = SERIAL.lock().await;
    let (relay, _sink, _tmp) = relay_with("").await;
    let stream = tcp_from("127.0.0.1".parse().unwrap(), relay.smtp_addrs[0]).await;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut read_line = async |r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>| {
        line.clear();
        tokio::time::timeout(Duration::from_secs(20), r.read_line(&mut line))
            .await
            .expect("reply in time")
            .unwrap();
        line.clone()
    };
    assert!(read_line(&mut r).await.starts_with("220 "));
    w.write_all(b"EHLO client.test\r\n").await.unwrap();
    while read_line(&mut r).await.starts_with("250-") {}
    w.write_all(b"MAIL FROM:<a@fabrikam.test>\r\n")
        .await
        .unwrap();
    assert!(read_line(&mut r).await.starts_with("250 2.1.0"));
    let started = Instant::now();
    // RFC 2920: RCPTs pipelined, written while the replies are read.
    let writer = tokio::spawn(async move {
        let mut all = String::new();
        for i in 0..10_000 {
            all.push_str(&format!("RCPT TO:<user{i}@contoso.test>\r\n"));
        }
        w.write_all(all.as_bytes()).await.unwrap();
        w
    });
    let (mut ok, mut too_many) = (0, 0);
    for i in 0..10_000 {
        let reply = read_line(&mut r).await;
        if reply.starts_with("250 2.1.5") {
            assert!(i < 500, "RCPT {i} accepted: {reply}");
            ok += 1;
        } else {
            assert!(reply.starts_with("452 4.5.3"), "RCPT {i}: {reply}");
            too_many += 1;
        }
    }
    let mut w = writer.await.unwrap();
    let elapsed = started.elapsed();
    println!("10,000 RCPTs: {ok} accepted, {too_many} refused 452 4.5.3, in {elapsed:?}");
    assert_eq!((ok, too_many), (500, 9_500));
    assert!(elapsed < Duration::from_secs(20), "{elapsed:?}");
    // The session survives.
    w.write_all(b"RSET\r\n").await.unwrap();
    assert!(read_line(&mut r).await.starts_with("250 2.0.0"));
    w.write_all(b"QUIT\r\n").await.unwrap();
    assert!(read_line(&mut r).await.starts_with("221"));
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_far_over_max_message_size() {
    let _serial = SERIAL.lock().await;
    let (relay, sink, _tmp) = relay_with("MaxMessageSize = \"1MB\"").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<a@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    let before = rss_kib();
    let watch = RssWatch::start();
    // 50 MB of 100-octet lines, streamed.
    let line = format!("{}\r\n", "x".repeat(98));
    let chunk = line.repeat(640); // 64,000 octets
    let mut sent = 0usize;
    while sent < 50 * 1024 * 1024 {
        d.send(chunk.as_bytes()).await;
        sent += chunk.len();
    }
    d.cmd(".", "552 5.3.4").await;
    let growth = watch.peak().saturating_sub(before);
    println!(
        "{} MB against a 1 MB limit: 552 5.3.4, RSS grew {growth} KiB",
        sent / (1024 * 1024)
    );
    assert!(growth < MAX_GROWTH_KIB, "RSS grew {growth} KiB");
    // In sync, and nothing stored.
    d.cmd("NOOP", "250").await;
    d.cmd("QUIT", "221").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(messages(sink.maildir()).is_empty());
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn http_requests_are_closed_at_once() {
    let _serial = SERIAL.lock().await;
    let (relay, _sink, _tmp) = relay_with("").await;
    for request in [
        "GET / HTTP/1.1\r\nHost: relay.contoso.test\r\n\r\n",
        "POST /submit HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        "CONNECT mail.example:25 HTTP/1.1\r\n\r\n",
    ] {
        let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
        d.send(request.as_bytes()).await;
        d.expect("554 5.7.0 HTTP not allowed here", request).await;
        assert_eq!(d.read_reply().await, "<closed>", "{request}");
    }
    // Also in the middle of a session.
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("GET /index.html HTTP/1.0", "554 5.7.0").await;
    assert_eq!(d.read_reply().await, "<closed>");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn nul_bytes_and_invalid_utf8_in_commands() {
    let _serial = SERIAL.lock().await;
    let (relay, _sink, _tmp) = relay_with("").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    for bad in [
        &b"NOOP \0\r\n"[..],
        b"MAIL FROM:<a\0b@fabrikam.test>\r\n",
        b"\xff\xfe\xfd\r\n",
        b"RCPT TO:<\xc3\x28@contoso.test>\r\n",
    ] {
        d.send(bad).await;
        d.expect("500 5.5.2", &String::from_utf8_lossy(bad)).await;
    }
    // Four errors of five allowed: the session goes on.
    d.cmd("MAIL FROM:<a@fabrikam.test>", "250 2.1.0").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250 2.1.5").await;
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn error_limit_drops_the_session() {
    let _serial = SERIAL.lock().await;
    // MaxProtocolErrors defaults to 5.
    let (relay, _sink, _tmp) = relay_with("").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    for i in 0..5 {
        d.cmd(&format!("BOGUS{i}"), "500 5.5.2").await;
    }
    d.cmd("BOGUS5", "421 4.7.0").await;
    assert_eq!(d.read_reply().await, "<closed>");
    relay.shutdown(Duration::from_secs(5)).await;
}
