//! Fake next hops for the delivery queue tests: one listener on loopback whose behaviour can
//! be switched while it runs (hung, closing at once, `421` greeting, `451` to RCPT, or a
//! working SMTP server), counting what the relay does to it: connections in all, when each
//! came, how many were open at once, and the Message-IDs of the messages it took.
//!
//! A connection behaves as the mode said when it was accepted, so a switch never cuts a
//! session in half; `release_hung` ends the hung ones (so a relay stops without waiting for
//! its greeting timeout).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the fake does with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Accepts TCP and never says anything; holds the connection until the client closes it
    /// (or `release_hung`).
    Hang,
    /// Accepts and closes at once, before any greeting (a host whose SMTP service is down).
    Close,
    /// Greets with `421` and closes (RFC 5321 §3.1: service not available).
    Greet421,
    /// A working session that answers every RCPT with `451` (a message-level failure; the
    /// hop itself works).
    TempFailRcpt,
    /// A working SMTP server that takes every message.
    Accept,
    /// As `Accept`, but the reply to the end of each message comes after this long (a slow
    /// next hop whose sessions still succeed).
    SlowAccept(Duration),
    /// A working session up to MAIL FROM that never answers RCPT: a next hop that stalls
    /// mid-transaction. It holds the connection until the client closes it, and records how
    /// long the client waited (`stalls`).
    StallAtRcpt,
}

/// Connections open at once, and the most seen; can be shared by several fakes to count
/// what the relay has open towards all of them together.
#[derive(Debug, Default)]
pub struct Gauge {
    current: AtomicUsize,
    max: AtomicUsize,
}

impl Gauge {
    pub fn new() -> Arc<Gauge> {
        Arc::new(Gauge::default())
    }
    pub fn current(&self) -> usize {
        self.current.load(Ordering::SeqCst)
    }
    pub fn max(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }
    fn enter(self: &Arc<Self>) -> GaugeGuard {
        let now = self.current.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        GaugeGuard(self.clone())
    }
}

struct GaugeGuard(Arc<Gauge>);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.current.fetch_sub(1, Ordering::SeqCst);
    }
}

struct State {
    mode: Mutex<Mode>,
    gauge: Arc<Gauge>,
    shared: Option<Arc<Gauge>>,
    /// Sessions inside a transaction (from MAIL to the reply to its end).
    busy: Arc<Gauge>,
    accepted: Mutex<Vec<Instant>>,
    rcpts: AtomicUsize,
    /// Message-ID header of every message taken (one entry per delivery, duplicates kept).
    delivered: Mutex<Vec<String>>,
    /// `StallAtRcpt`: from each unanswered RCPT to the client closing the connection.
    stalls: Mutex<Vec<Duration>>,
    release: watch::Sender<bool>,
}

/// A fake next hop on 127.0.0.1 (its listener task ends with the test's runtime).
pub struct Downstream {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Downstream {
    pub async fn start(mode: Mode) -> Downstream {
        Self::start_with(mode, None).await
    }

    /// As `start`, also counting its connections in `shared`.
    pub async fn start_with(mode: Mode, shared: Option<Arc<Gauge>>) -> Downstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake next hop");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            mode: Mutex::new(mode),
            gauge: Gauge::new(),
            shared,
            busy: Gauge::new(),
            accepted: Mutex::new(Vec::new()),
            rcpts: AtomicUsize::new(0),
            delivered: Mutex::new(Vec::new()),
            stalls: Mutex::new(Vec::new()),
            release: watch::channel(false).0,
        });
        let s = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                s.accepted.lock().unwrap().push(Instant::now());
                let mode = *s.mode.lock().unwrap();
                let guards = (s.gauge.enter(), s.shared.as_ref().map(|g| g.enter()));
                let s = s.clone();
                tokio::spawn(async move {
                    session(stream, mode, &s).await;
                    drop(guards);
                });
            }
        });
        Downstream { addr, state }
    }

    /// Behaviour of the connections accepted from now on.
    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Ends every hung connection (and those that hang later).
    pub fn release_hung(&self) {
        self.state.release.send_replace(true);
    }

    /// Connections accepted in all.
    pub fn connections(&self) -> usize {
        self.state.accepted.lock().unwrap().len()
    }

    /// When each connection was accepted, in order.
    pub fn connection_times(&self) -> Vec<Instant> {
        self.state.accepted.lock().unwrap().clone()
    }

    pub fn open_now(&self) -> usize {
        self.state.gauge.current()
    }

    /// The most connections open at once so far.
    pub fn max_open(&self) -> usize {
        self.state.gauge.max()
    }

    /// The most sessions inside a transaction at once (MAIL to the reply to its end).
    pub fn max_busy(&self) -> usize {
        self.state.busy.max()
    }

    /// RCPT commands received (in any mode that reads commands).
    pub fn rcpts(&self) -> usize {
        self.state.rcpts.load(Ordering::SeqCst)
    }

    /// `StallAtRcpt`: how long each client waited for its RCPT reply before it closed the
    /// connection (sessions still waiting are not counted).
    pub fn stalls(&self) -> Vec<Duration> {
        self.state.stalls.lock().unwrap().clone()
    }

    /// Message-IDs of the messages taken, one entry per delivery.
    pub fn delivered(&self) -> Vec<String> {
        self.state.delivered.lock().unwrap().clone()
    }

    /// Waits (bounded) until at least `n` messages were taken; the assertion that follows
    /// decides.
    pub async fn wait_delivered(&self, n: usize, limit: Duration) -> Vec<String> {
        let deadline = Instant::now() + limit;
        loop {
            let d = self.delivered();
            if d.len() >= n || Instant::now() > deadline {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Every one of `expected` delivered exactly once and nothing else: `Err` says what is
/// missing, doubled or unexpected.
pub fn exactly_once(expected: &[String], delivered: &[String]) -> Result<(), String> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for d in delivered {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    let missing: Vec<&String> = expected
        .iter()
        .filter(|e| !counts.contains_key(e.as_str()))
        .collect();
    let doubled: Vec<(&&str, &usize)> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let unexpected: Vec<&&str> = counts
        .keys()
        .filter(|k| !expected.iter().any(|e| e == **k))
        .collect();
    if missing.is_empty() && doubled.is_empty() && unexpected.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} expected, {} deliveries: {} missing (first {:?}), {} delivered more than once \
         (first {:?}), {} unexpected (first {:?})",
        expected.len(),
        delivered.len(),
        missing.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        doubled.len(),
        doubled.iter().take(5).collect::<Vec<_>>(),
        unexpected.len(),
        unexpected.iter().take(5).collect::<Vec<_>>(),
    ))
}

async fn session(mut stream: TcpStream, mode: Mode, s: &State) {
    match mode {
        Mode::Hang => {
            let mut release = s.release.subscribe();
            let mut buf = [0u8; 512];
            loop {
                tokio::select! {
                    r = stream.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { return },
                    _ = release.wait_for(|r| *r) => return,
                }
            }
        }
        Mode::Close => drop(stream),
        Mode::Greet421 => {
            let _ = stream
                .write_all(b"421 4.3.2 fake.test Service not available, closing channel\r\n")
                .await;
        }
        Mode::TempFailRcpt | Mode::Accept | Mode::SlowAccept(_) | Mode::StallAtRcpt => {
            let _ = smtp(stream, mode, s).await;
        }
    }
}

/// A minimal SMTP server (RFC 5321 replies, PIPELINING-safe: one reply per command line),
/// answering RCPT and the end of data as `mode` says.
async fn smtp(stream: TcpStream, mode: Mode, s: &State) -> std::io::Result<()> {
    let delay = match mode {
        Mode::SlowAccept(d) => d,
        _ => Duration::ZERO,
    };
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    w.write_all(b"220 fake.test ESMTP\r\n").await?;
    let mut line = String::new();
    let mut recipients = 0usize;
    // Held from MAIL to the end of the transaction (dropped when the session ends too).
    let mut busy: Option<GaugeGuard> = None;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply: &[u8] = match verb.as_str() {
            "EHLO" => {
                b"250-fake.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n"
            }
            "HELO" | "NOOP" => b"250 2.0.0 OK\r\n",
            "RSET" => {
                recipients = 0;
                drop(busy.take());
                b"250 2.0.0 OK\r\n"
            }
            "MAIL" => {
                recipients = 0;
                drop(busy.replace(s.busy.enter()));
                b"250 2.1.0 OK\r\n"
            }
            "RCPT" if mode == Mode::StallAtRcpt => {
                s.rcpts.fetch_add(1, Ordering::SeqCst);
                let waited = stall(&mut r).await;
                s.stalls.lock().unwrap().push(waited);
                return Ok(());
            }
            "RCPT" => {
                s.rcpts.fetch_add(1, Ordering::SeqCst);
                if mode != Mode::TempFailRcpt {
                    recipients += 1;
                    b"250 2.1.5 OK\r\n"
                } else {
                    b"451 4.3.0 fake.test Temporary failure, try again later\r\n"
                }
            }
            "DATA" if recipients == 0 => b"554 5.5.1 No valid recipients\r\n",
            "DATA" => {
                w.write_all(b"354 Go ahead\r\n").await?;
                let Some(id) = read_message(&mut r).await? else {
                    return Ok(());
                };
                tokio::time::sleep(delay).await;
                s.delivered.lock().unwrap().push(id);
                recipients = 0;
                w.write_all(b"250 2.0.0 OK queued\r\n").await?;
                drop(busy.take());
                continue;
            }
            "QUIT" => {
                w.write_all(b"221 2.0.0 Bye\r\n").await?;
                return Ok(());
            }
            _ => b"500 5.5.2 Unknown command\r\n",
        };
        w.write_all(reply).await?;
    }
}

/// Says nothing and reads (and drops) whatever comes until the client closes the
/// connection; answers how long that took.
async fn stall(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 512];
    while matches!(r.read(&mut buf).await, Ok(n) if n > 0) {}
    start.elapsed()
}

/// Reads message text up to the final "."; its Message-ID header ("" without one), or
/// `None` when the connection ended first.
async fn read_message(
    r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
) -> std::io::Result<Option<String>> {
    let mut id = String::new();
    let mut in_header = true;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        if line == ".\r\n" || line == ".\n" {
            return Ok(Some(id));
        }
        if in_header {
            if line.trim_end().is_empty() {
                in_header = false;
            } else if line
                .get(..11)
                .is_some_and(|p| p.eq_ignore_ascii_case("message-id:"))
            {
                id = line[11..].trim().to_string();
            }
        }
    }
}
