//! SMTP load and latency tool for `bench/relay-vs-postfix.sh` (an example, so the relay's
//! own binary stays lean: `cargo build --release --example smtp-latency`).
//!
//! Three uses, all over real sockets:
//! - **latency at a fixed offered rate** (`--rate R`): message *i* is due at `start + i/R`;
//!   a free session takes it at that moment (never earlier). Per message it times the span
//!   from the end-of-DATA dot to the server's `250` — the time the server needs to make the
//!   message durable — and prints p50/p99/p999 and the achieved rate;
//! - **maximum load** (`--rate 0`): every session sends back to back, like `smtp-source -d`;
//!   this is the load side of the STARTTLS scenario, since `smtp-source` has no STARTTLS;
//! - **idle sessions** (`--idle N`): opens N sessions, reads the banner, says EHLO, then holds
//!   them for `--hold` seconds, and finally checks with NOOP how many are still alive.
//!
//! Like `smtp-source`, it does not pipeline: each command waits for its reply. Sessions are
//! kept open across messages. The last line is machine-readable (`RESULT key=value ...`).
//! It runs on one thread so it leaves the other cores to the server under test.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

#[derive(Parser, Debug, Clone)]
#[command(
    about = "SMTP load generator: end-of-DATA → 250 latency at a fixed rate, or idle sessions"
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
    /// Seconds to wait for any one reply.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

type Stream = Box<dyn Io>;
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One SMTP client connection, replies read line by line.
struct Conn {
    io: BufReader<Stream>,
    line: String,
    timeout: Duration,
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
        Ok(Conn {
            io: BufReader::new(Box::new(tcp)),
            line: String::new(),
            timeout: Duration::from_secs(args.timeout),
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

    /// Banner, EHLO, and optionally STARTTLS + EHLO.
    async fn greet(
        mut self,
        tls: Option<&(TlsConnector, ServerName<'static>)>,
    ) -> std::io::Result<Conn> {
        if self.reply().await? != 220 {
            return Err(bad(&self.line));
        }
        self.cmd(b"EHLO load.onprem.test\r\n", 2).await?;
        let Some((connector, name)) = tls else {
            return Ok(self);
        };
        self.cmd(b"STARTTLS\r\n", 2).await?;
        let tcp = self.io.into_inner();
        let tls = connector.connect(name.clone(), tcp).await?;
        let mut c = Conn {
            io: BufReader::new(Box::new(tls)),
            line: String::new(),
            timeout: self.timeout,
        };
        c.cmd(b"EHLO load.onprem.test\r\n", 2).await?;
        Ok(c)
    }
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

/// One session: takes the next message number, waits until it is due, sends it, records
/// the end-of-DATA → reply time. Reconnects after an error.
async fn session(sh: Arc<Shared>, idx: usize) -> Vec<u32> {
    let a = &sh.args;
    let mut lat = Vec::new();
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
        let source = (!a.source.is_empty()).then(|| a.source[idx % a.source.len()]);
        let mut c = match conn.take() {
            Some(c) => c,
            None => match Conn::open(a, source).await {
                Ok(c) => match c.greet(sh.tls.as_ref()).await {
                    Ok(c) => c,
                    Err(e) => {
                        sh.error(i, &e);
                        continue;
                    }
                },
                Err(e) => {
                    sh.error(i, &e);
                    continue;
                }
            },
        };
        match transaction(&mut c, &sh).await {
            Ok(us) => {
                lat.push(us);
                conn = Some(c);
            }
            Err(e) => {
                sh.error(i, &e);
                // A refused message leaves a usable session; a broken one fails RSET.
                if c.cmd(b"RSET\r\n", 2).await.is_ok() {
                    conn = Some(c);
                }
            }
        }
    }
    if let Some(mut c) = conn {
        let _ = c.cmd(b"QUIT\r\n", 2).await;
    }
    lat
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
    let us = t.elapsed().as_micros().min(u32::MAX as u128) as u32;
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
    let mut lat = Vec::with_capacity(args.messages as usize);
    for t in tasks {
        lat.extend(t.await.map_err(|e| e.to_string())?);
    }
    let secs = sh.start.elapsed().as_secs_f64();
    lat.sort_unstable();
    let ok = lat.len();
    let rate = ok as f64 / secs;
    let (p50, p99, p999) = (
        percentile(&lat, 50.0),
        percentile(&lat, 99.0),
        percentile(&lat, 99.9),
    );
    let max = lat.last().copied().unwrap_or(0) as f64 / 1000.0;
    let errors = sh.errors.load(Ordering::Relaxed);
    println!(
        "{ok} messages accepted in {secs:.2} s ({rate:.0} msg/s, offered {}), {errors} errors; \
         end-of-DATA -> 250: p50 {p50:.2} ms, p99 {p99:.2} ms, p99.9 {p999:.2} ms, max {max:.2} ms",
        if args.rate > 0.0 {
            format!("{:.0} msg/s", args.rate)
        } else {
            "as fast as possible".into()
        }
    );
    println!(
        "RESULT ok={ok} errors={errors} secs={secs:.3} rate={rate:.1} p50_ms={p50:.3} \
         p99_ms={p99:.3} p999_ms={p999:.3} max_ms={max:.3}"
    );
    if errors > 0 {
        return Err(format!("{errors} messages failed"));
    }
    Ok(())
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
        match args.idle {
            Some(n) => idle(args, n).await,
            None => load(args).await,
        }
    });
    if let Err(e) = result {
        eprintln!("smtp-latency: {e}");
        std::process::exit(1);
    }
}
