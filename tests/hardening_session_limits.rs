//! Session limits a hostile client must not get around (issue 13), over real sockets, plain
//! and TLS:
//! - a client that never reads its replies is dropped once a write cannot complete within
//!   `ConnectionInactivityTimeout`, and never later than `ConnectionTimeout` after accept;
//! - `ConnectionTimeout` covers the whole connection, TLS handshakes included (a late
//!   STARTTLS, an implicit-TLS client that never finishes its handshake);
//! - `MaxHeaderSize` refuses an oversize header block with `552 5.3.4` (a folded header, a
//!   message made only of header lines) without buffering it; just under the limit passes;
//! - RFC 6531 §3.4 on RCPT: a non-ASCII recipient needs `SMTPUTF8` on MAIL, as a sender does.
//!
//! Run with `--nocapture` to see the measured figures (they go into SECURITY.md). The tests
//! take a lock so that the flooding clients of one do not disturb the figures of another.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use connector_relay::relay::RelayHandle;
use support::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The longest the tests wait for the relay to act; far above every configured limit, so
/// that a slow machine never fails a test, while a relay that does not act still fails it.
const BOUND: Duration = Duration::from_secs(60);

/// Sessions opened at once by each non-reading test (the run: 5 of 5 stayed open).
const SESSIONS: usize = 5;

async fn relay_with(extra: &str) -> (RelayHandle, Sink, tempfile::TempDir) {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), extra), None).await;
    (relay, sink, tmp)
}

/// Connects with a small receive buffer (set before connect, so the window is small from
/// the handshake on): the client's side fills up quickly once it stops reading.
async fn connect_small_rcvbuf(to: SocketAddr) -> TcpStream {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(to).await.expect("connect")
}

/// Reads one reply byte by byte (so nothing past it is consumed); "<closed>" at the end.
async fn read_reply<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut all = Vec::new();
    let mut line_start = 0;
    loop {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(Duration::from_secs(20), s.read(&mut b))
            .await
            .expect("reply within 20 s")
            .unwrap_or(0);
        if n == 0 {
            return String::from_utf8_lossy(&all).into_owned() + "<closed>";
        }
        all.push(b[0]);
        if b[0] == b'\n' {
            let line = &all[line_start..];
            if line.len() < 4 || line[3] != b'-' {
                return String::from_utf8_lossy(&all).trim_end().to_string();
            }
            line_start = all.len();
        }
    }
}

async fn command<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, line: &str, expect: &str) {
    s.write_all(format!("{line}\r\n").as_bytes()).await.unwrap();
    let reply = read_reply(s).await;
    let last = reply.lines().last().unwrap_or("");
    assert!(
        last.starts_with(expect),
        "{line}: expected {expect}, got {reply:?}"
    );
}

/// Pipelines RSETs (served after EHLO: RFC 2920 §3.1) and never reads a reply, until the
/// relay drops the connection; returns when the write failed. Panics past `BOUND`.
async fn flood_rsets<S: AsyncWrite + Unpin>(mut s: S) {
    let chunk = "RSET\r\n".repeat(1000);
    let flood = async { while s.write_all(chunk.as_bytes()).await.is_ok() {} };
    tokio::time::timeout(BOUND, flood)
        .await
        .expect("the relay still held a non-reading session after 60 s");
}

/// The time from connect, and from the last reply read, until a client was dropped.
#[derive(Debug, Clone, Copy)]
struct Dropped {
    since_connect: Duration,
    since_last_read: Duration,
}

/// One client that reads the greeting and EHLO reply (over TLS after STARTTLS when `tls`),
/// then floods without reading until the relay drops it.
async fn non_reading_session(to: SocketAddr, tls: bool) -> Dropped {
    let t = Instant::now();
    let mut s = connect_small_rcvbuf(to).await;
    assert!(read_reply(&mut s).await.starts_with("220 "));
    command(&mut s, "EHLO client.test", "250 ").await;
    let last_read = if tls {
        command(&mut s, "STARTTLS", "220 ").await;
        let mut s = tls_connect(s, "relay.contoso.test", None)
            .await
            .expect("TLS handshake");
        command(&mut s, "EHLO client.test", "250 ").await;
        let last_read = Instant::now();
        flood_rsets(s).await;
        last_read
    } else {
        let last_read = Instant::now();
        flood_rsets(s).await;
        last_read
    };
    Dropped {
        since_connect: t.elapsed(),
        since_last_read: last_read.elapsed(),
    }
}

fn span(times: &[Dropped], f: fn(&Dropped) -> Duration) -> String {
    let secs: Vec<f64> = times.iter().map(|d| f(d).as_secs_f64()).collect();
    let min = secs.iter().copied().fold(f64::MAX, f64::min);
    let max = secs.iter().copied().fold(0.0, f64::max);
    format!("{min:.1}-{max:.1} s")
}

/// `SESSIONS` non-reading clients at once; when each was dropped.
async fn non_reading_sessions(to: SocketAddr, tls: bool) -> Vec<Dropped> {
    let tasks: Vec<_> = (0..SESSIONS)
        .map(|_| tokio::spawn(non_reading_session(to, tls)))
        .collect();
    let mut times = Vec::new();
    for t in tasks {
        times.push(t.await.unwrap());
    }
    times
}

/// The `WriteTimeout` rejections counted so far in this process's `/metrics`.
fn write_timeouts() -> u64 {
    connector_relay::metrics::render()
        .lines()
        .filter(|l| {
            l.starts_with("connector_relay_rejections_total") && l.contains("rule=\"WriteTimeout\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn the_relay_drops_clients_that_do_not_read(tls: bool) {
    let _serial = SERIAL.lock().await;
    let counted_before = write_timeouts();
    // Only the per-write inactivity limit can end these sessions: the session limit is far.
    let (relay, _sink, _tmp) =
        relay_with("ConnectionInactivityTimeout = \"00:00:02\"\nConnectionTimeout = \"00:10:00\"")
            .await;
    let times = non_reading_sessions(relay.smtp_addrs[0], tls).await;
    let kind = if tls { "STARTTLS" } else { "plain" };
    println!(
        "{SESSIONS} {kind} sessions that never read, ConnectionInactivityTimeout 2 s: \
         dropped {} after the last reply read ({} after connect)",
        span(&times, |d| d.since_last_read),
        span(&times, |d| d.since_connect),
    );
    // A write stalls only after the client stopped reading: never before the 2 s limit.
    let limit = Duration::from_millis(1900);
    assert!(
        times.iter().all(|d| d.since_last_read >= limit),
        "{times:?}"
    );
    let counted = write_timeouts() - counted_before;
    println!("WriteTimeout rejections counted in /metrics: {counted}");
    assert!(counted >= SESSIONS as u64, "{counted} counted");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_clients_that_do_not_read_are_dropped() {
    the_relay_drops_clients_that_do_not_read(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_that_do_not_read_are_dropped() {
    the_relay_drops_clients_that_do_not_read(true).await;
}

async fn the_session_limit_bounds_writes(tls: bool) {
    let _serial = SERIAL.lock().await;
    // The inactivity limit is far: only ConnectionTimeout (4 s from accept) can end these.
    let (relay, _sink, _tmp) =
        relay_with("ConnectionInactivityTimeout = \"00:05:00\"\nConnectionTimeout = \"00:00:04\"")
            .await;
    let times = non_reading_sessions(relay.smtp_addrs[0], tls).await;
    let kind = if tls { "STARTTLS" } else { "plain" };
    println!(
        "{SESSIONS} {kind} sessions that never read, ConnectionTimeout 4 s \
         (inactivity 5 min): dropped {} after connect",
        span(&times, |d| d.since_connect),
    );
    // The session limit counts from accept, and cuts them long before the 5-minute
    // inactivity limit (`flood_rsets` fails the test past 60 s).
    let limit = Duration::from_millis(3900);
    assert!(times.iter().all(|d| d.since_connect >= limit), "{times:?}");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_non_reading_clients_end_at_the_session_limit() {
    the_session_limit_bounds_writes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_non_reading_clients_end_at_the_session_limit() {
    the_session_limit_bounds_writes(true).await;
}

/// Waits for the relay to close `s` (end of stream or reset); the time since `t`.
async fn wait_closed<S: AsyncRead + Unpin>(s: &mut S, t: Instant) -> Duration {
    let mut buf = [0u8; 512];
    let closed = async { while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {} };
    tokio::time::timeout(BOUND, closed)
        .await
        .expect("the relay did not close the connection within 60 s");
    t.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_starttls_is_cut_by_the_session_limit() {
    let _serial = SERIAL.lock().await;
    // Inactivity 20 s would allow the handshake to run until 22 s; the session ends at 4 s.
    let (relay, _sink, _tmp) =
        relay_with("ConnectionInactivityTimeout = \"00:00:20\"\nConnectionTimeout = \"00:00:04\"")
            .await;
    let t = Instant::now();
    let mut s = TcpStream::connect(relay.smtp_addrs[0]).await.unwrap();
    assert!(read_reply(&mut s).await.starts_with("220 "));
    command(&mut s, "EHLO client.test", "250 ").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    command(&mut s, "STARTTLS", "220 ").await;
    // The client never starts its handshake.
    let lasted = wait_closed(&mut s, t).await;
    println!(
        "STARTTLS at 2 s, handshake never started, ConnectionTimeout 4 s, inactivity 20 s: \
         closed {:.1} s after connect",
        lasted.as_secs_f64()
    );
    assert!(lasted >= Duration::from_millis(3900), "{lasted:?}");
    assert!(lasted < Duration::from_secs(20), "{lasted:?}");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_implicit_tls_handshake_is_cut_by_the_session_limit() {
    let _serial = SERIAL.lock().await;
    let (relay, _sink, _tmp) = relay_with(
        "ImplicitTlsListen = [\"127.0.0.1:0\"]\n\
         ConnectionInactivityTimeout = \"00:00:20\"\nConnectionTimeout = \"00:00:04\"",
    )
    .await;
    let t = Instant::now();
    let mut s = TcpStream::connect(relay.implicit_tls_addrs[0])
        .await
        .unwrap();
    // Half a ClientHello's record header, then nothing.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let lasted = wait_closed(&mut s, t).await;
    println!(
        "implicit TLS, handshake stalled, ConnectionTimeout 4 s, inactivity 20 s: \
         closed {:.1} s after connect",
        lasted.as_secs_f64()
    );
    assert!(lasted >= Duration::from_millis(3900), "{lasted:?}");
    assert!(lasted < Duration::from_secs(20), "{lasted:?}");
    relay.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// MaxHeaderSize

/// Sends `header` (CRLF lines) and a short body as one message; the reply to the dot.
async fn send_header(d: &mut Dialog, header: &[u8]) -> String {
    d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    for chunk in header.chunks(64 * 1024) {
        d.send(chunk).await;
    }
    d.send(b"\r\nbody\r\n.\r\n").await;
    d.read_reply().await
}

/// A header block of exactly `size` octets: Subject, then `X-Pad` lines of 100 octets.
fn header_of(size: usize) -> Vec<u8> {
    let mut h = b"Subject: header size test\r\n".to_vec();
    let line = format!("X-Pad: {}\r\n", "p".repeat(91));
    while h.len() + line.len() <= size {
        h.extend_from_slice(line.as_bytes());
    }
    let rest = size - h.len();
    if rest > 0 {
        // "X: " + filler + CRLF; at least 5 octets, so borrow from the last full line.
        h.truncate(h.len() - line.len());
        let rest = rest + line.len();
        h.extend_from_slice(format!("X-Pad: {}\r\n", "q".repeat(rest - 9)).as_bytes());
    }
    assert_eq!(h.len(), size);
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_headers_are_refused_with_552_and_not_buffered() {
    let _serial = SERIAL.lock().await;
    // The defaults: MaxHeaderSize 256 KB, MaxMessageSize 25 MB.
    let (relay, sink, _tmp) = relay_with("").await;
    let limit = relay.policy().relay.max_header_size as usize;
    assert_eq!(limit, 256 * 1024, "the documented default");
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;

    // A 1 MB folded Subject (RFC 5322 §2.2.3: continuation lines start with a space).
    let mut folded = b"Subject: folded".to_vec();
    while folded.len() < 1024 * 1024 {
        folded.extend_from_slice(format!("\r\n {}", "f".repeat(70)).as_bytes());
    }
    folded.extend_from_slice(b"\r\n");
    let r = send_header(&mut d, &folded).await;
    assert_eq!(r, "552 5.3.4 Message header size exceeds limit");

    // 22 MB of header lines and no body (under MaxMessageSize): streamed, RSS measured.
    d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    let before = rss_kib();
    let mut peak = before;
    let chunk = format!("X-Filler: {}\r\n", "h".repeat(88)).repeat(640); // 64,000 octets
    let mut sent = 0usize;
    while sent < 22 * 1024 * 1024 {
        d.send(chunk.as_bytes()).await;
        sent += chunk.len();
        peak = peak.max(rss_kib());
    }
    d.send(b".\r\n").await;
    let r = d.read_reply().await;
    let growth = peak.max(rss_kib()).saturating_sub(before);
    println!(
        "{} MB of header lines against MaxHeaderSize 256 KB: {r}; RSS grew {growth} KiB",
        sent / (1024 * 1024)
    );
    assert_eq!(r, "552 5.3.4 Message header size exceeds limit");
    assert!(growth < 20 * 1024, "RSS grew {growth} KiB");

    // One octet over the limit is refused; exactly the limit passes and is delivered.
    assert!(
        send_header(&mut d, &header_of(limit + 1))
            .await
            .starts_with("552 5.3.4")
    );
    let r = send_header(&mut d, &header_of(limit)).await;
    assert!(r.starts_with("250"), "{r}");
    d.cmd("QUIT", "221").await;
    let got = wait_messages(sink.maildir(), 1, BOUND).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Subject: header size test"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        messages(sink.maildir()).len(),
        1,
        "only the message at the limit"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

// ---------------------------------------------------------------------------------------
// SMTPUTF8 on RCPT

#[tokio::test]
async fn non_ascii_recipients_need_smtputf8_like_senders() {
    let (relay, _sink, _tmp) = relay_with("").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    let sender = d.cmd("MAIL FROM:<ä@fabrikam.test>", "553 5.6.7").await;
    d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    // RFC 6531 §3.4: the same refusal for a recipient, in its local part or its domain.
    let local = d.cmd("RCPT TO:<bö@contoso.test>", "553 5.6.7").await;
    let domain = d.cmd("RCPT TO:<bob@exämple.test>", "553 5.6.7").await;
    assert_eq!(local, sender);
    assert_eq!(domain, sender);
    d.cmd("RSET", "250").await;
    // With SMTPUTF8 the same recipient is accepted and the message stored.
    d.cmd("MAIL FROM:<alice@fabrikam.test> SMTPUTF8", "250")
        .await;
    d.cmd("RCPT TO:<bö@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(b"Subject: utf8\r\n\r\nhello\r\n").await;
    d.cmd(".", "250").await;
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}
