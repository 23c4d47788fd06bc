//! SMTP load and latency tool for `bench/relay-vs-postfix.sh` (an example, so the relay's
//! own binary stays lean: `cargo build --release --example smtp-latency`).
//!
//! Four uses, all over real sockets:
//! - **latency at a fixed offered rate** (`--rate R`): message *i* is due at `start + i/R`;
//!   a free session takes it at that moment (never earlier). Per message it times the span
//!   from the end-of-DATA dot to the server's `250` — the time the server needs to make the
//!   message durable — and prints p50/p99/p999 and the achieved rate;
//! - **maximum load** (`--rate 0`): every session sends back to back, like `smtp-source -d`;
//!   this is the load side of the STARTTLS scenario, since `smtp-source` has no STARTTLS;
//!   with `--per-message-connection` every message gets a connection of its own (banner,
//!   EHLO, STARTTLS and handshake, EHLO, the transaction, QUIT), as most senders do;
//! - **connect → banner** (`--banner-probe K`): K connections one after the other from the
//!   first `--source` address, each timed from `connect()` returning to the last line of
//!   the `220` greeting read, then QUIT: what a client waits before it may speak;
//! - **idle sessions** (`--idle N`): opens N sessions, reads the banner, says EHLO, then holds
//!   them for `--hold` seconds, and finally checks with NOOP how many are still alive.
//!
//! With `--proxy-header v1|v2` every connection starts with a PROXY protocol header, as
//! from a load balancer (`bench/relay-vs-postfix.sh --scenario proxy`).
//!
//! Like `smtp-source`, it does not pipeline: each command waits for its reply. Sessions are
//! kept open across messages unless `--per-message-connection`. One `rustls::ClientConfig`
//! serves every connection, so its in-memory resumption store (TLS 1.3 tickets, TLS 1.2
//! session IDs and tickets) lets later handshakes resume as a real client's would; the
//! result counts full and resumed handshakes. The last line is machine-readable
//! (`RESULT key=value ...`).
//! It runs on one thread so it leaves the other cores to the server under test.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::HandshakeKind;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "SMTP load generator: end-of-DATA → 250 latency at a fixed rate, connections per \
             message, connect → banner probes, or idle sessions"
)]
struct Args {
    /// Server address, ip:port.
    #[arg(long)]
    server: SocketAddr,
    /// Concurrent sessions.
    #[arg(long, short = 'c', default_value_t = 50)]
    sessions: usize,
    /// Messages to send in all.
    #[arg(long, short = 'n', default_value_t = 2000)]
    messages: u64,
    /// Offered rate in messages per second over all sessions; 0 = as fast as possible.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Recipients per message.
    #[arg(long, default_value_t = 1)]
    rcpts: usize,
    /// Approximate message size in bytes (headers + body).
    #[arg(long, default_value_t = 4096)]
    size: usize,
    #[arg(long, default_value = "load@onprem.test")]
    from: String,
    /// Recipient domain; recipients are `rN@DOMAIN`.
    #[arg(long, default_value = "example.test")]
    to_domain: String,
    /// Issue STARTTLS after EHLO and EHLO again.
    #[arg(long)]
    starttls: bool,
    /// CA file (PEM) that must sign the server certificate when --starttls is used.
    #[arg(long, default_value = "certs-test/ca.crt")]
    ca: PathBuf,
    /// Name the server certificate must carry.
    #[arg(long, default_value = "relay.contoso.test")]
    server_name: String,
    /// Source addresses to bind, used round-robin (e.g. to spread idle sessions over
    /// 127.0.0.x for ephemeral ports); default: the kernel's choice.
    #[arg(long, value_delimiter = ',')]
    source: Vec<IpAddr>,
    /// Idle mode: open this many sessions and hold them instead of sending mail.
    #[arg(long)]
    idle: Option<usize>,
    /// Idle mode: seconds to hold the sessions once all are open.
    #[arg(long, default_value_t = 10)]
    hold: u64,
    /// Idle mode: sessions opened at a time (each wave is greeted before the next starts,
    /// so a server's listen backlog is not what is measured).
    #[arg(long, default_value_t = 100)]
    wave: usize,
    /// Open a new connection for every message (banner, EHLO, [STARTTLS, EHLO,] the
    /// transaction, QUIT) instead of keeping sessions open across messages.
    #[arg(long)]
    per_message_connection: bool,
    /// Banner probe: open this many connections one after the other (from the first
    /// `--source`), time connect → complete 220 greeting, QUIT; no mail is sent.
    #[arg(long)]
    banner_probe: Option<usize>,
    /// Start every connection with a PROXY protocol header (`v1` or `v2`), as a load
    /// balancer does; the server must list the `--source` address as a balancer.
    #[arg(long)]
    proxy_header: Option<ProxyVersion>,
    /// The client address the PROXY header carries; default: the connection's own.
    #[arg(long)]
    proxy_client: Option<IpAddr>,
    /// Seconds to wait for any one reply.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
enum ProxyVersion {
    V1,
    V2,
}

/// The PROXY protocol header of `--proxy-header` for a connection from `local` to `server`.
fn proxy_header(args: &Args, local: SocketAddr) -> Option<Vec<u8>> {
    use connector_relay::smtp::proxy::{v1_header, v2_header};
    let client = SocketAddr::new(args.proxy_client.unwrap_or(local.ip()), local.port());
    Some(match args.proxy_header? {
        ProxyVersion::V1 => v1_header(client, args.server),
        ProxyVersion::V2 => v2_header(client, args.server, &[]),
    })
}

type Stream = Box<dyn Io>;
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP client connection, replies read line by line.
struct Conn {
    io: BufReader<Stream>,
    line: String,
    timeout: Duration,
    /// When `connect()` returned: the start of the connect → banner time.
    connected: Instant,
    /// Connect → complete greeting, in microseconds, once `greet` has read it.
    banner_us: u32,
    /// Whether the TLS handshake resumed a session (`None`: no TLS).
    resumed: Option<bool>,
}

impl Conn {
    async fn open(args: &Args, source: Option<IpAddr>) -> std::io::Result<Conn> {
        let tcp = match source {
            None => TcpStream::connect(args.server).await?,
            Some(ip) => {
                let sock = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                sock.bind(SocketAddr::new(ip, 0))?;
                sock.connect(args.server).await?
            }
        };
        tcp.set_nodelay(true)?;
        let connected = Instant::now();
        let mut tcp = tcp;
        if let Some(header) = proxy_header(args, tcp.local_addr()?) {
            tcp.write_all(&header).await?;
        }
        Ok(Conn {
            io: BufReader::new(Box::new(tcp)),
            line: String::new(),
            timeout: Duration::from_secs(args.timeout),
            connected,
            banner_us: 0,
            resumed: None,
        })
    }

    /// Reads one (possibly multi-line) reply and returns its code.
    async fn reply(&mut self) -> std::io::Result<u16> {
        loop {
            self.line.clear();
            let n = tokio::time::timeout(self.timeout, self.io.read_line(&mut self.line))
                .await
                .map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::TimedOut, "reply timeout")
                })??;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let b = self.line.as_bytes();
            if b.len() < 4 {
                return Err(bad(&self.line));
            }
            let code: u16 = self.line[..3].parse().map_err(|_| bad(&self.line))?;
            if b[3] != b'-' {
                return Ok(code);
            }
        }
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.io.get_mut().write_all(bytes).await?;
        self.io.get_mut().flush().await
    }

    /// Sends a command and expects a reply in the given class (2 or 3).
    async fn cmd(&mut self, bytes: &[u8], class: u16) -> std::io::Result<()> {
        self.send(bytes).await?;
        let code = self.reply().await?;
        if code / 100 != class {
            return Err(bad(&self.line));
        }
        Ok(())
    }

    /// Reads the greeting (RFC 5321 §4.2: `220`, possibly multi-line) and records the
    /// connect → banner time.
    async fn banner(&mut self) -> std::io::Result<()> {
        if self.reply().await? != 220 {
            return Err(bad(&self.line));
        }
        self.banner_us = micros(self.connected.elapsed());
        Ok(())
    }

    /// Banner, EHLO, and optionally STARTTLS + EHLO.
    async fn greet(
        mut self,
        tls: Option<&(TlsConnector, ServerName<'static>)>,
    ) -> std::io::Result<Conn> {
        self.banner().await?;
        self.cmd(b"EHLO load.onprem.test\r\n", 2).await?;
        let Some((connector, name)) = tls else {
            return Ok(self);
        };
        self.cmd(b"STARTTLS\r\n", 2).await?;
        let tcp = self.io.into_inner();
        let tls = connector.connect(name.clone(), tcp).await?;
        let resumed = tls.get_ref().1.handshake_kind() == Some(HandshakeKind::Resumed);
        let mut c = Conn {
            io: BufReader::new(Box::new(tls)),
            line: String::new(),
            timeout: self.timeout,
            connected: self.connected,
            banner_us: self.banner_us,
            resumed: Some(resumed),
        };
        c.cmd(b"EHLO load.onprem.test\r\n", 2).await?;
        Ok(c)
    }
}

fn micros(d: Duration) -> u32 {
    d.as_micros().min(u32::MAX as u128) as u32
}

fn bad(line: &str) -> std::io::Error {
    std::io::Error::other(format!("unexpected reply {:?}", line.trim_end()))
}

fn tls_connector(args: &Args) -> Result<(TlsConnector, ServerName<'static>), String> {
    let mut roots = rustls::RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(&args.ca)
        .map_err(|e| format!("{}: {e}", args.ca.display()))?;
    for c in certs {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = ServerName::try_from(args.server_name.clone()).map_err(|e| e.to_string())?;
    Ok((TlsConnector::from(Arc::new(config)), name))
}

/// The message data, dot-terminated; lines never start with a dot.
fn message(args: &Args) -> Vec<u8> {
    let mut m = format!(
        "From: <{}>\r\nTo: <r0@{}>\r\nSubject: connector-relay benchmark\r\n\
         Message-ID: <bench@load.onprem.test>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n",
        args.from, args.to_domain
    )
    .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789abcd\r\n";
    m.extend_from_slice(line);
    while m.len() + line.len() <= args.size {
        m.extend_from_slice(line);
    }
    m.extend_from_slice(b".\r\n");
    m
}

struct Shared {
    args: Args,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    envelope: Vec<Vec<u8>>,
    data: Vec<u8>,
    next: AtomicU64,
    errors: AtomicU64,
    start: Instant,
}

/// What one session measured.
#[derive(Default)]
struct Tally {
    /// End-of-DATA → 250 of every accepted message, in microseconds.
    data: Vec<u32>,
    /// Connect → complete greeting of every connection opened, in microseconds.
    banner: Vec<u32>,
    tls_full: u64,
    tls_resumed: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.data.extend(other.data);
        self.banner.extend(other.banner);
        self.tls_full += other.tls_full;
        self.tls_resumed += other.tls_resumed;
    }
}

/// One session: takes the next message number, waits until it is due, sends it, records
/// the end-of-DATA → reply time. Reconnects after an error, and after every message with
/// `--per-message-connection`.
async fn session(sh: Arc<Shared>, idx: usize) -> Tally {
    let a = &sh.args;
    let mut t = Tally::default();
    let mut conn: Option<Conn> = None;
    loop {
        let i = sh.next.fetch_add(1, Ordering::Relaxed);
        if i >= a.messages {
            break;
        }
        if a.rate > 0.0 {
            let due = sh.start + Duration::from_secs_f64(i as f64 / a.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        let mut c = match conn.take() {
            Some(c) => c,
            None => match connect(&sh, idx, &mut t).await {
                Ok(c) => c,
                Err(e) => {
                    sh.error(i, &e);
                    continue;
                }
            },
        };
        let kept = match transaction(&mut c, &sh).await {
            Ok(us) => {
                t.data.push(us);
                true
            }
            Err(e) => {
                sh.error(i, &e);
                // A refused message leaves a usable session; a broken one fails RSET.
                c.cmd(b"RSET\r\n", 2).await.is_ok()
            }
        };
        if kept && !a.per_message_connection {
            conn = Some(c);
        } else {
            quit(c).await;
        }
    }
    if let Some(c) = conn {
        quit(c).await;
    }
    t
}

/// Opens and greets a connection (with STARTTLS if asked) and tallies its banner time and
/// handshake kind.
async fn connect(sh: &Shared, idx: usize, t: &mut Tally) -> std::io::Result<Conn> {
    let a = &sh.args;
    let source = (!a.source.is_empty()).then(|| a.source[idx % a.source.len()]);
    let c = Conn::open(a, source).await?.greet(sh.tls.as_ref()).await?;
    t.banner.push(c.banner_us);
    match c.resumed {
        Some(true) => t.tls_resumed += 1,
        Some(false) => t.tls_full += 1,
        None => {}
    }
    Ok(c)
}

/// Ends a session politely (RFC 5321 §4.1.1.10); the message is already accepted, so a
/// failed QUIT is not an error of the load.
async fn quit(mut c: Conn) {
    let _ = c.cmd(b"QUIT\r\n", 2).await;
}

/// One message on an open session; returns the end-of-DATA → 250 time in microseconds.
async fn transaction(c: &mut Conn, sh: &Shared) -> std::io::Result<u32> {
    for e in &sh.envelope {
        c.cmd(e, 2).await?;
    }
    c.cmd(b"DATA\r\n", 3).await?;
    let body = sh.data.len() - 3;
    c.send(&sh.data[..body]).await?;
    let t = Instant::now();
    c.send(&sh.data[body..]).await?;
    let code = c.reply().await?;
    let us = micros(t.elapsed());
    if code != 250 {
        return Err(bad(&c.line));
    }
    Ok(us)
}

impl Shared {
    fn error(&self, i: u64, e: &std::io::Error) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("message {i}: {e}");
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// p50, p99, p99.9 and max of a set of microsecond times, in milliseconds.
struct Summary {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Summary {
    fn of(v: &mut [u32]) -> Summary {
        v.sort_unstable();
        Summary {
            p50: percentile(v, 50.0),
            p99: percentile(v, 99.0),
            p999: percentile(v, 99.9),
            max: v.last().copied().unwrap_or(0) as f64 / 1000.0,
        }
    }

    /// `PREFIXp50_ms=… PREFIXp99_ms=… PREFIXp999_ms=… PREFIXmax_ms=…`
    fn kv(&self, prefix: &str) -> String {
        format!(
            "{prefix}p50_ms={:.3} {prefix}p99_ms={:.3} {prefix}p999_ms={:.3} {prefix}max_ms={:.3}",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

async fn load(args: Args) -> Result<(), String> {
    let tls = args.starttls.then(|| tls_connector(&args)).transpose()?;
    let mut envelope = vec![format!("MAIL FROM:<{}>\r\n", args.from).into_bytes()];
    for r in 0..args.rcpts {
        envelope.push(format!("RCPT TO:<r{r}@{}>\r\n", args.to_domain).into_bytes());
    }
    let sh = Arc::new(Shared {
        data: message(&args),
        args: args.clone(),
        tls,
        envelope,
        next: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        start: Instant::now(),
    });
    let tasks: Vec<_> = (0..args.sessions)
        .map(|i| tokio::spawn(session(sh.clone(), i)))
        .collect();
    let mut t = Tally::default();
    for task in tasks {
        t.add(task.await.map_err(|e| e.to_string())?);
    }
    let secs = sh.start.elapsed().as_secs_f64();
    let ok = t.data.len();
    let rate = ok as f64 / secs;
    let conns = t.banner.len();
    let data = Summary::of(&mut t.data);
    let banner = Summary::of(&mut t.banner);
    let errors = sh.errors.load(Ordering::Relaxed);
    println!(
        "{ok} messages accepted in {secs:.2} s ({rate:.0} msg/s, offered {}), {errors} errors; \
         end-of-DATA -> 250: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        if args.rate > 0.0 {
            format!("{:.0} msg/s", args.rate)
        } else {
            "as fast as possible".into()
        },
        data.p50,
        data.p99,
        data.p999,
        data.max
    );
    println!(
        "{conns} connections ({} TLS handshakes resumed of {}); connect -> banner: p50 {:.2} ms, \
         p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        t.tls_resumed,
        t.tls_resumed + t.tls_full,
        banner.p50,
        banner.p99,
        banner.p999,
        banner.max
    );
    println!(
        "RESULT ok={ok} errors={errors} secs={secs:.3} rate={rate:.1} {} connections={conns} \
         tls_full={} tls_resumed={} {}",
        data.kv(""),
        t.tls_full,
        t.tls_resumed,
        banner.kv("banner_")
    );
    if errors > 0 {
        return Err(format!("{errors} messages failed"));
    }
    Ok(())
}

/// Connect → banner, K connections one after the other from the first `--source`: the
/// first is reported apart (a server that remembers clients has not seen this one yet).
async fn banner_probe(args: Args, k: usize) -> Result<(), String> {
    let source = args.source.first().copied();
    let mut lat = Vec::with_capacity(k);
    let mut first = None;
    let mut errors = 0usize;
    for i in 0..k {
        match probe_once(&args, source).await {
            Ok(us) => {
                lat.push(us);
                if i == 0 {
                    first = Some(us as f64 / 1000.0);
                }
            }
            Err(e) => {
                errors += 1;
                if errors <= 5 {
                    eprintln!("probe {i}: {e}");
                }
            }
        }
    }
    let ok = lat.len();
    let s = Summary::of(&mut lat);
    let first = first.map_or("n/a".into(), |f| format!("{f:.3}"));
    let from = source.map_or("the kernel's choice".into(), |ip| ip.to_string());
    println!(
        "{ok} of {k} connections from {from} greeted, {errors} errors; connect -> banner: \
         first {first} ms, p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        s.p50, s.p99, s.p999, s.max
    );
    println!(
        "RESULT banner_ok={ok} banner_errors={errors} first_ms={first} {}",
        s.kv("")
    );
    if errors > 0 {
        return Err(format!("{errors} probes failed"));
    }
    Ok(())
}

/// One probe: connect, read the whole greeting, QUIT.
async fn probe_once(args: &Args, source: Option<IpAddr>) -> std::io::Result<u32> {
    let mut c = Conn::open(args, source).await?;
    c.banner().await?;
    c.cmd(b"QUIT\r\n", 2).await?;
    Ok(c.banner_us)
}

async fn idle(args: Args, n: usize) -> Result<(), String> {
    let tls = args.starttls.then(|| tls_connector(&args)).transpose()?;
    let args = Arc::new(args);
    let tls = Arc::new(tls);
    let start = Instant::now();
    let mut conns = Vec::with_capacity(n);
    let mut failed = 0usize;
    let mut first_error = None;
    for wave in (0..n).collect::<Vec<_>>().chunks(args.wave.max(1)) {
        let before = conns.len();
        let opens: Vec<_> = wave
            .iter()
            .map(|&i| {
                let (args, tls) = (args.clone(), tls.clone());
                tokio::spawn(async move {
                    let source =
                        (!args.source.is_empty()).then(|| args.source[i % args.source.len()]);
                    Conn::open(&args, source)
                        .await?
                        .greet((*tls).as_ref())
                        .await
                })
            })
            .collect();
        for o in opens {
            match o.await.map_err(|e| e.to_string())? {
                Ok(c) => conns.push(c),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e.to_string());
                }
            }
        }
        if conns.len() == before {
            // Not one session of the wave was greeted: the server serves no more; do not
            // wait for every further wave to time out too.
            failed = n - conns.len();
            break;
        }
    }
    let opened = conns.len();
    println!(
        "IDLE_READY opened={opened} failed={failed} secs={:.1}{}",
        start.elapsed().as_secs_f64(),
        first_error
            .map(|e| format!(" first_error={e:?}"))
            .unwrap_or_default()
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let checks: Vec<_> = conns
        .into_iter()
        .map(|mut c| tokio::spawn(async move { c.cmd(b"NOOP\r\n", 2).await.is_ok() }))
        .collect();
    let mut alive = 0;
    for c in checks {
        alive += usize::from(c.await.unwrap_or(false));
    }
    println!("RESULT idle_opened={opened} idle_failed={failed} idle_alive={alive}");
    Ok(())
}

fn main() {
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(async move {
        match (args.banner_probe, args.idle) {
            (Some(k), _) => banner_probe(args, k).await,
            (None, Some(n)) => idle(args, n).await,
            (None, None) => load(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("smtp-latency: {e}");
        std::process::exit(1);
    }
}
