//! `connector-relay sink`: a capture SMTP server for labs, tests and benchmarks. Every
//! accepted message is written as one file in the maildir: the envelope as `X-Sink-*`
//! header lines, then the message exactly as received (unstuffed). Files are written to a
//! temporary name and renamed, so a reader never sees half a message. (No fsync: the sink
//! stands in for a downstream server, not for durable storage.)
//!
//! With `--discard` (benchmarks, like `smtp-sink -c`) nothing is stored: the sink counts
//! the messages it accepted in `<maildir>/count`, rewritten at most every 50 ms, so the
//! downstream does not compete with the server under test for the disk.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::policy::BareNewlinePolicy;
use crate::smtp::body::Message;
use crate::smtp::command::Address;
use crate::smtp::server::{self, Limits};
pub use crate::smtp::session::StartTlsMode;
use crate::smtp::session::{AuthVerifier, Backend, SessionConfig, SessionInfo, Transaction};
use crate::smtp::{Reply, tls};

/// A test hook deciding the reply to a recipient (`None`: accept).
pub type RcptHook = Arc<dyn Fn(&str) -> Option<Reply> + Send + Sync>;

#[derive(Clone, Default)]
pub struct SinkOptions {
    pub listen: Option<SocketAddr>,
    pub maildir: PathBuf,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub require_tls: bool,
    pub client_ca: Option<PathBuf>,
    pub rcpt_hook: Option<RcptHook>,
    /// STARTTLS behaviour with a certificate: offer (default), hide (`--no-starttls`),
    /// refuse with 454 (`--refuse-starttls`), or 220 then close (`--break-starttls`).
    pub starttls: StartTlsMode,
    /// `--auth USER:PASS`: offer AUTH PLAIN LOGIN (under `--require-tls` only after
    /// STARTTLS) and refuse MAIL without a successful AUTH (`530 5.7.0`).
    pub auth: Option<(String, String)>,
    /// `--discard`: count messages in `<maildir>/count` instead of storing them.
    pub discard: bool,
    /// `--no-requiretls`: do not offer RFC 8689 REQUIRETLS after STARTTLS (a next hop
    /// that cannot carry a REQUIRETLS message).
    pub no_requiretls: bool,
}

/// The file `--discard` keeps the count of accepted messages in.
pub const COUNT_FILE: &str = "count";

pub struct SinkHandle {
    pub addr: SocketAddr,
    draining: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    limits: Arc<Limits>,
    connections: Arc<AtomicU64>,
}

impl SinkHandle {
    /// SMTP connections accepted so far (each TCP session counts once, STARTTLS or not).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    pub async fn shutdown(self) {
        let _ = self.draining.send(true);
        self.limits.drain(Duration::from_secs(5)).await;
        let _ = self.stop.send(true);
    }
}

/// Binds and starts the sink.
pub async fn start(opts: SinkOptions) -> Result<SinkHandle, String> {
    std::fs::create_dir_all(&opts.maildir)
        .map_err(|e| format!("{}: {e}", opts.maildir.display()))?;
    let tls = match (&opts.tls_cert, &opts.tls_key) {
        (Some(c), Some(k)) => Some(TlsAcceptor::from(sink_tls_config(
            c,
            k,
            opts.client_ca.as_deref(),
        )?)),
        (None, None) if opts.require_tls || opts.client_ca.is_some() => {
            return Err("--require-tls and --client-ca need --tls-cert and --tls-key".into());
        }
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let listen = opts
        .listen
        .unwrap_or_else(|| "127.0.0.1:0".parse().expect("literal address"));
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let cfg = Arc::new(SessionConfig {
        fqdn: "sink.test".into(),
        max_message_size: 1 << 30,
        max_header_size: u64::MAX,
        max_recipients: 100_000,
        bare_newline: BareNewlinePolicy::Reject,
        inactivity_timeout: Duration::from_secs(300),
        session_timeout: Duration::from_secs(3600),
        min_data_rate: crate::policy::MIN_DATA_RATE,
        min_data_rate_grace: crate::policy::MIN_DATA_RATE_GRACE,
        max_protocol_errors: 100,
        tls,
        require_tls: opts.require_tls,
        client_certs: None,
        starttls: opts.starttls,
        offer_requiretls: !opts.no_requiretls,
        auth: opts.auth.clone().map(|(user, pass)| {
            let verifier: AuthVerifier = Arc::new(move |u: &str, p: &str| u == user && p == pass);
            verifier
        }),
        forbid_unauth_pipelining: false,
        pregreet: Default::default(),
    });
    let connections = Arc::new(AtomicU64::new(0));
    let discarded = opts.discard.then(|| Arc::new(AtomicU64::new(0)));
    let backend = Arc::new(SinkBackend {
        maildir: opts.maildir.clone(),
        discarded: discarded.clone(),
        seq: AtomicU64::new(0),
        hook: opts.rcpt_hook.clone(),
        connections: connections.clone(),
    });
    let limits = Limits::new(10_000, 10_000);
    let (draining, draining_rx) = watch::channel(false);
    let (stop, stop_rx) = watch::channel(false);
    let setup = server::Setup {
        cfg,
        backend,
        // The sink has no per-source cap: load generators open many sessions.
        exempt: Arc::new(|_| true),
        proxy_from: Arc::new([]),
    };
    let shared = server::Server {
        setup: Arc::new(arc_swap::ArcSwap::from_pointee(setup)),
        limits: limits.clone(),
        draining: draining_rx,
        stop: stop_rx,
    };
    tokio::spawn(server::serve(listener, false, shared));
    if let Some(count) = discarded {
        tokio::spawn(write_count(
            opts.maildir.join(COUNT_FILE),
            count,
            stop.subscribe(),
        ));
    }
    Ok(SinkHandle {
        addr,
        draining,
        stop,
        limits,
        connections,
    })
}

/// Keeps `path` holding the number of discarded messages (checked every 50 ms), until stop.
async fn write_count(path: PathBuf, count: Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    let mut written = None;
    let mut stopping = false;
    loop {
        let n = count.load(Ordering::Relaxed);
        if written != Some(n) {
            match tokio::fs::write(&path, format!("{n}\n")).await {
                Ok(()) => written = Some(n),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the message count")
                }
            }
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            // One last write once stopped (or once the sink is gone).
            r = stop.changed() => stopping = r.is_err() || *stop.borrow(),
        }
    }
}

fn sink_tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    client_ca: Option<&std::path::Path>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let Some(ca) = client_ca else {
        return tls::server_config(cert, key, false);
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in tls::load_certs(ca)? {
        roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        tls::provider(),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(tls::load_certs(cert)?, tls::load_key(key)?)
        .map_err(|e| e.to_string())?;
    Ok(Arc::new(config))
}

struct SinkBackend {
    maildir: PathBuf,
    /// `--discard`: the count of accepted messages, none stored.
    discarded: Option<Arc<AtomicU64>>,
    seq: AtomicU64,
    hook: Option<RcptHook>,
    connections: Arc<AtomicU64>,
}

impl Backend for SinkBackend {
    fn session_facts(&self, s: &SessionInfo) {
        // Called at the start of a session and again after STARTTLS: count the first.
        if s.tls.is_none() {
            self.connections.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn rcpt(&self, _s: &SessionInfo, _tx: &mut Transaction, to: &Address) -> Result<(), Reply> {
        match self.hook.as_ref().and_then(|h| h(&to.to_string())) {
            Some(r) => Err(r),
            None => Ok(()),
        }
    }

    async fn data(&self, s: &SessionInfo, tx: &mut Transaction, message: Message) -> Reply {
        // The sink has no spill directory: its messages are always whole in memory.
        let Ok(message) = message.into_vec() else {
            return Reply::local_error();
        };
        if let Some(count) = &self.discarded {
            count.fetch_add(1, Ordering::Relaxed);
            return Reply::ok("Ok: discarded");
        }
        let mut head = format!(
            "X-Sink-Mail-From: <{}>\r\n",
            tx.mail_from
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default()
        );
        for r in &tx.recipients {
            head.push_str(&format!("X-Sink-Rcpt-To: <{r}>\r\n"));
        }
        head.push_str(&format!("X-Sink-Client: {}\r\n", s.peer.ip()));
        // The client's address and port: one value per connection (connection reuse).
        head.push_str(&format!("X-Sink-Connection: {}\r\n", s.peer));
        if let Some(helo) = &s.helo {
            let verb = if s.esmtp { "EHLO" } else { "HELO" };
            head.push_str(&format!("X-Sink-Helo: {verb} {helo}\r\n"));
        }
        if let Some(user) = &s.auth_user {
            head.push_str(&format!("X-Sink-Auth: {user}\r\n"));
        }
        if tx.params.requiretls {
            head.push_str("X-Sink-Requiretls: yes\r\n");
        }
        if let Some(t) = &s.tls {
            head.push_str(&format!("X-Sink-Tls: {} {}\r\n", t.version, t.cipher));
            if let Some(subject) = t.peer_certificates.first().and_then(|c| {
                x509_parser::parse_x509_certificate(c.as_ref())
                    .ok()
                    .map(|(_, cert)| cert.subject().to_string())
            }) {
                head.push_str(&format!("X-Sink-Client-Cert: {subject}\r\n"));
            }
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let name = format!(
            "{}-{}-{n:08}.eml",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0),
            std::process::id()
        );
        let dir = self.maildir.clone();
        let res = tokio::task::spawn_blocking(move || {
            let tmp = dir.join(format!(".{name}.tmp"));
            let mut bytes = head.into_bytes();
            bytes.extend_from_slice(&message);
            std::fs::write(&tmp, &bytes)?;
            std::fs::rename(&tmp, dir.join(&name))
        })
        .await;
        match res {
            Ok(Ok(())) => Reply::ok("Ok: stored"),
            _ => Reply::local_error(),
        }
    }
}
