//! The server side of one SMTP session (RFC 5321), generic over the stream so that the same
//! code runs over TCP, over TLS and in memory. A state enum, one handler per command, and
//! typed replies; policy decisions and message storage are delegated to a `Backend`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_rustls::TlsAcceptor;

use rustls::pki_types::CertificateDer;

use super::body::{Message, Receiver};
use super::client_cert::{ClientCertInfo, ClientCertValidator};
use super::command::{self, Address, Command, MAX_COMMAND_LINE, MailParams};
use super::data::{DataError, DataReader};
use super::pregreet::PassCache;
use super::reply::Reply;
use super::sasl;
use crate::policy::BareNewlinePolicy;
use crate::policy::inbound::Attribution;

/// What the session knows about its client. Handed to the backend at every decision.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// The client: the connection's peer, or the address a PROXY protocol header carried.
    pub peer: SocketAddr,
    /// The load balancer the client came through (`ProxyProtocolFrom`), when it did.
    pub proxy: Option<SocketAddr>,
    pub local: SocketAddr,
    pub helo: Option<String>,
    pub esmtp: bool,
    pub tls: Option<TlsInfo>,
    /// The client certificate presented under TLS, judged (see `client_cert`).
    pub client_cert: Option<ClientCertInfo>,
    /// The user name of a successful AUTH (only with `SessionConfig::auth`).
    pub auth_user: Option<String>,
}

/// Facts about a TLS session, for the Received header, the trace and policy.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// The client certificate chain, when the client presented one.
    pub peer_certificates: Vec<CertificateDer<'static>>,
}

/// One mail transaction: MAIL FROM, the accepted RCPT TOs.
#[derive(Debug, Clone, Default)]
pub struct Transaction {
    /// The reverse-path; `None` is the null sender `<>`.
    pub mail_from: Option<Address>,
    pub params: MailParams,
    pub recipients: Vec<Address>,
    /// The inbound connector this transaction is attributed to, set by `Backend::mail`.
    pub attribution: Option<Attribution>,
    /// The recipients refused, each with the rule that refused it (the trace's facts row
    /// keeps them: an impact preview replays refused recipients too).
    pub refused: Vec<(Address, &'static str)>,
    /// The rule that refused MAIL FROM or the message at DATA, if one did.
    pub refused_by: Option<&'static str>,
    /// The queue id of the message, once it is stored.
    pub queue_id: Option<String>,
}

/// Where a mail transaction ended, for [`Backend::transaction_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxEnd {
    /// MAIL FROM was refused (`Transaction::refused_by` says by which rule).
    Mail,
    /// DATA was answered: stored (`queue_id`) or refused (`refused_by`).
    Data,
    /// RSET, EHLO/HELO or STARTTLS reset it before DATA.
    Reset,
    /// The session ended before DATA was answered (QUIT, disconnect, timeout, a limit).
    Closed,
}

impl TxEnd {
    pub fn as_str(self) -> &'static str {
        match self {
            TxEnd::Mail => "MAIL",
            TxEnd::Data => "DATA",
            TxEnd::Reset => "RSET",
            TxEnd::Closed => "CLOSED",
        }
    }
}

/// Session limits and features; built once from the policy and shared by all sessions.
#[derive(Clone)]
pub struct SessionConfig {
    pub fqdn: String,
    pub max_message_size: u64,
    /// `MaxHeaderSize`: the header block as received, up to the first empty line;
    /// `u64::MAX` = no limit (the sink).
    pub max_header_size: u64,
    pub max_recipients: usize,
    pub bare_newline: BareNewlinePolicy,
    pub inactivity_timeout: Duration,
    pub session_timeout: Duration,
    /// Slowest average DATA input, bytes per second, enforced once `min_data_rate_grace`
    /// has passed since the `354` (a slow-drip client); 0 = no minimum.
    pub min_data_rate: u64,
    pub min_data_rate_grace: Duration,
    pub max_protocol_errors: u32,
    /// Present when STARTTLS is offered (and for implicit TLS listeners).
    pub tls: Option<TlsAcceptor>,
    /// Refuse MAIL until the session is under TLS (the sink's `--require-tls`).
    pub require_tls: bool,
    /// Judges client certificates after the TLS handshake (the relay; not the sink).
    pub client_certs: Option<Arc<ClientCertValidator>>,
    /// Checks AUTH credentials (the sink's `--auth`). `None`: AUTH is not offered and the
    /// command is answered 502 (the relay).
    pub auth: Option<AuthVerifier>,
    /// How STARTTLS is answered when `tls` is set (test knobs of the sink).
    pub starttls: StartTlsMode,
    /// RFC 8689: offer REQUIRETLS in the EHLO reply under TLS and accept the MAIL FROM
    /// parameter. On for the relay (it carries the flag in its spool and enforces it on
    /// delivery); the sink's `--no-requiretls` plays a next hop without it.
    pub offer_requiretls: bool,
    /// Postfix `smtpd_forbid_unauth_pipelining`: a client that talks before the greeting
    /// (listened for during `pregreet.wait`), pipelines without EHLO, or sends more input
    /// after a command that must end a group (RFC 2920 §3.1: EHLO, HELO, DATA, QUIT, NOOP,
    /// VRFY, HELP, AUTH) gets `554 5.5.0 Error: SMTP protocol synchronization` and is
    /// disconnected. On for the relay; off for the sink.
    pub forbid_unauth_pipelining: bool,
    /// The pre-greeting test of `forbid_unauth_pipelining`.
    pub pregreet: Pregreet,
}

/// The rule name of a refusal for talking out of turn (before the greeting, or improper
/// pipelining).
const PROTOCOL_SYNC: &str = "ProtocolSynchronization";

/// The default of `PreGreetingWait`: how long a session with `forbid_unauth_pipelining`
/// listens before sending its greeting to a client it does not know; a client whose
/// commands arrive in that time is talking first (a spam engine's shortcut).
pub const PREGREET_WAIT: Duration = Duration::from_millis(100);

/// The pre-greeting test (Postfix postscreen's "pregreet"): how long an unknown client
/// listens before its banner, and the clients that passed recently, who (like OnPremises
/// addresses) get it at once. Those are still checked for input already waiting.
#[derive(Clone, Default)]
pub struct Pregreet {
    /// `PreGreetingWait`; zero turns the wait off (the instant check remains).
    pub wait: Duration,
    pub passes: Option<Arc<PassCache>>,
}

/// STARTTLS behaviour of a session that has a TLS configuration. Anything but `Offer` is
/// for the sink, to play remote servers that get STARTTLS wrong.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StartTlsMode {
    /// Advertise STARTTLS and do it.
    #[default]
    Offer,
    /// Never advertise it; `STARTTLS` gets `502` as without a certificate.
    Hide,
    /// Advertise it, answer `454 4.7.0 TLS not available due to temporary reason`.
    Refuse,
    /// Advertise it, answer `220`, then close the connection (the handshake fails).
    Break,
}

/// Checks a user name and password (RFC 4954 AUTH PLAIN / LOGIN).
pub type AuthVerifier = Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// Decisions and storage, supplied by the relay or the sink.
pub trait Backend: Send + Sync + 'static {
    /// A session started, or finished its TLS handshake (facts changed): attribution
    /// can be (re-)evaluated and recorded.
    fn session_facts(&self, _s: &SessionInfo) {}
    /// MAIL FROM: may refuse the sender (and name the rule in `tx.refused_by`); may record
    /// its decision in `tx.attribution`.
    fn mail(&self, _s: &SessionInfo, _tx: &mut Transaction) -> Result<(), Reply> {
        Ok(())
    }
    /// A transaction ended (see [`TxEnd`]): called once for every transaction that got as
    /// far as MAIL FROM, refused there or not.
    fn transaction_end(&self, _s: &SessionInfo, _tx: &Transaction, _end: TxEnd) {}
    /// The session refused something by one of its own limits or protocol rules (for the
    /// trace): `stage` is where (`CONNECT`, `SESSION`, `MAIL`, `RCPT`, `DATA`), `rule` names the
    /// setting or rule, `reply` is what the client was told.
    fn refused(
        &self,
        _s: &SessionInfo,
        _tx: Option<&Transaction>,
        _stage: &'static str,
        _rule: &'static str,
        _reply: &Reply,
    ) {
    }
    /// The session was dropped without a reply (`rule`, e.g. `WriteTimeout`: the client
    /// stopped reading, so no 421 could reach it); `detail` says which limit and when.
    fn dropped(
        &self,
        _s: &SessionInfo,
        _tx: Option<&Transaction>,
        _rule: &'static str,
        _detail: String,
    ) {
    }
    /// A connection was refused before its session started (connection limits).
    fn connection_refused(&self, _peer: SocketAddr, _rule: &'static str, _reply: &Reply) {}
    /// RCPT TO: may refuse the recipient (and record it with its rule in `tx.refused`).
    fn rcpt(&self, s: &SessionInfo, tx: &mut Transaction, to: &Address) -> Result<(), Reply>;
    /// Where a large message continues once its first part is in memory (see
    /// `smtp::body`); `None` keeps messages whole in memory.
    fn spill_dir(&self) -> Option<std::path::PathBuf> {
        None
    }
    /// End of DATA: store the message (setting `tx.queue_id`); the reply is the final
    /// answer to the client (250 only once the message is safely stored).
    fn data(
        &self,
        s: &SessionInfo,
        tx: &mut Transaction,
        message: Message,
    ) -> impl Future<Output = Reply> + Send;
}

/// Why `serve_stream` returned.
enum Exit {
    /// QUIT, fatal error, timeout or shutdown: close the connection.
    Close,
    /// STARTTLS accepted: the caller upgrades the stream and starts over.
    StartTls,
}

/// The two time limits of a session (RFC 5321 §4.5.3.2 server timeouts, Exchange's
/// `ConnectionInactivityTimeout` and `ConnectionTimeout`). Every wait of the session — TLS
/// handshakes, the pre-greeting wait, each read and each write — ends at `next()`: the
/// inactivity timeout from now, never past the end of the whole session, which counts
/// from the accept.
#[derive(Debug, Clone, Copy)]
struct Deadlines {
    inactivity: Duration,
    session_end: Instant,
}

impl Deadlines {
    /// The deadline of the next wait, and the name of the limit that sets it.
    fn next(&self) -> (Instant, &'static str) {
        let idle = Instant::now() + self.inactivity;
        if idle < self.session_end {
            (idle, "ConnectionInactivityTimeout")
        } else {
            (self.session_end, "ConnectionTimeout")
        }
    }
}

/// Why a write failed: it could not complete before its deadline, i.e. the client is not
/// reading its replies (its receive window and our send buffer are full). `limit` names
/// the limit that ran out.
#[derive(Debug)]
struct WriteTimeout {
    limit: &'static str,
}

impl std::fmt::Display for WriteTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "write not completed within {}", self.limit)
    }
}

impl std::error::Error for WriteTimeout {}

/// A buffered connection: the read buffer allows pipelined commands to be parsed
/// without extra reads, the write buffer lets replies to a pipelined group go out in one
/// write (RFC 2920 §3.2). Writes carry the session's deadlines (see `Deadlines`).
struct Conn<S> {
    stream: S,
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    limits: Deadlines,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    fn new(stream: S, limits: Deadlines) -> Self {
        Conn {
            stream,
            rbuf: Vec::with_capacity(1024),
            rpos: 0,
            wbuf: Vec::with_capacity(512),
            limits,
        }
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..]
    }

    fn queue(&mut self, reply: &Reply) {
        self.wbuf.extend_from_slice(&reply.to_wire());
    }

    /// Sends the queued replies. A client that does not read cannot hold the session:
    /// the write ends at the next deadline with a `WriteTimeout` error (a deadline already
    /// past still gets one attempt, so a last 421 that fits in the socket buffer goes out).
    async fn flush(&mut self) -> std::io::Result<()> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let (at, limit) = self.limits.next();
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match timeout_at(at, write).await {
            Ok(r) => r?,
            Err(_) => return Err(std::io::Error::other(WriteTimeout { limit })),
        }
        self.wbuf.clear();
        Ok(())
    }

    /// Closes the write side (for TLS: close_notify, itself a write), bounded like `flush`.
    async fn close(&mut self) -> std::io::Result<()> {
        let (at, limit) = self.limits.next();
        match timeout_at(at, self.stream.shutdown()).await {
            Ok(_) => Ok(()), // an error closing a connection that is going away is no news
            Err(_) => Err(std::io::Error::other(WriteTimeout { limit })),
        }
    }

    /// Reads more bytes into the buffer. `Ok(0)` is end of stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.rpos > 0 && self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 4096 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        // Read straight into the buffer's spare room: a stack buffer here would live across
        // the `.await` and make every idle session's future 8 KB larger (10,000 idle
        // sessions: 80 MB).
        if self.rbuf.capacity() - self.rbuf.len() < 1024 {
            self.rbuf.reserve(4096);
        }
        self.stream.read_buf(&mut self.rbuf).await
    }

    /// Drops every buffered input byte (after STARTTLS: CVE-2011-0411 command injection).
    fn discard_input(&mut self) -> usize {
        let n = self.rbuf.len() - self.rpos;
        self.rbuf.clear();
        self.rpos = 0;
        n
    }
}

/// The per-session state machine.
pub struct Session<B: Backend> {
    cfg: Arc<SessionConfig>,
    backend: Arc<B>,
    pub info: SessionInfo,
    tx: Option<Transaction>,
    errors: u32,
    limits: Deadlines,
    shutdown: watch::Receiver<bool>,
    /// Attributed to an OnPremises connector by its address at connect: no pre-greeting
    /// wait.
    trusted: bool,
}

impl<B: Backend> Session<B> {
    pub fn new(
        cfg: Arc<SessionConfig>,
        backend: Arc<B>,
        peer: SocketAddr,
        local: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        // Called at accept (`server::serve`): the whole connection counts, TLS included.
        let limits = Deadlines {
            inactivity: cfg.inactivity_timeout,
            session_end: Instant::now() + cfg.session_timeout,
        };
        Session {
            cfg,
            backend,
            info: SessionInfo {
                peer,
                proxy: None,
                local,
                helo: None,
                esmtp: false,
                tls: None,
                client_cert: None,
                auth_user: None,
            },
            tx: None,
            errors: 0,
            limits,
            shutdown,
            trusted: false,
        }
    }

    /// Marks the client as trusted before the banner (an OnPremises connector's address).
    pub fn trusted(mut self, trusted: bool) -> Self {
        self.trusted = trusted;
        self
    }

    /// The client came through the balancer `proxy` (its PROXY protocol header carried the
    /// client's address, `peer`).
    pub fn via_proxy(mut self, proxy: Option<SocketAddr>) -> Self {
        self.info.proxy = proxy;
        self
    }

    /// Runs the whole session on a TCP connection: greeting, commands, STARTTLS upgrade.
    pub async fn run(mut self, stream: TcpStream, implicit_tls: bool) {
        if let Some(proxy) = self.info.proxy {
            tracing::debug!(client = %self.info.peer, %proxy,
                "client {} via proxy {}", self.info.peer.ip(), proxy.ip());
        }
        let _ = stream.set_nodelay(true);
        let result = if implicit_tls {
            self.run_implicit_tls(stream).await
        } else {
            self.run_plain(stream).await
        };
        if let Err(e) = result {
            self.write_failed(&e);
        }
        self.end_transaction(TxEnd::Closed);
    }

    /// Ends the transaction in progress, if any, and tells the backend how it ended.
    fn end_transaction(&mut self, end: TxEnd) {
        if let Some(tx) = self.tx.take() {
            self.backend.transaction_end(&self.info, &tx, end);
        }
    }

    /// An implicit-TLS listener: handshake first, then the greeting.
    async fn run_implicit_tls(&mut self, stream: TcpStream) -> std::io::Result<()> {
        let Some(tls) = self.handshake(stream).await else {
            return Ok(());
        };
        self.tls_established(tls.get_ref().1);
        let mut conn = Conn::new(tls, self.limits);
        conn.queue(&Reply::greeting(&self.cfg.fqdn));
        self.serve(&mut conn).await?;
        conn.close().await
    }

    /// A plain listener: pre-greeting wait, greeting, commands, and STARTTLS.
    async fn run_plain(&mut self, stream: TcpStream) -> std::io::Result<()> {
        self.backend.session_facts(&self.info);
        let mut conn = Conn::new(stream, self.limits);
        if self.cfg.forbid_unauth_pipelining && !self.pregreet_ok(&mut conn).await? {
            return conn.close().await;
        }
        conn.queue(&Reply::greeting(&self.cfg.fqdn));
        if let Exit::Close = self.serve(&mut conn).await? {
            return conn.close().await;
        }
        let Some(tls) = self.handshake(conn.stream).await else {
            return Ok(());
        };
        // RFC 3207 §4.2: the session starts over; the client must EHLO again.
        self.tls_established(tls.get_ref().1);
        self.info.helo = None;
        self.info.esmtp = false;
        self.info.auth_user = None;
        self.end_transaction(TxEnd::Reset);
        let mut conn = Conn::new(tls, self.limits);
        self.serve(&mut conn).await?;
        conn.close().await
    }

    /// Listens for the pre-greeting wait before the greeting: a client whose commands arrive
    /// in that time is talking first (Postfix postscreen's pregreet test) and is refused.
    /// False when the session must end. A client that waited is remembered as passed.
    async fn pregreet_ok(&mut self, conn: &mut Conn<TcpStream>) -> std::io::Result<bool> {
        let wait = self.pregreet_wait();
        let mut probe = [0u8; 1];
        let at = (Instant::now() + wait).min(self.limits.session_end);
        // No wait: only input already waiting counts (one poll; a timeout with a deadline
        // already past would cost a timer tick, about a millisecond, before the banner).
        let peeked = if wait.is_zero() {
            crate::now::now_or_never(conn.stream.peek(&mut probe))
        } else {
            timeout_at(at, conn.stream.peek(&mut probe)).await.ok()
        };
        match peeked {
            None => {
                if let (false, Some(passes)) = (wait.is_zero(), &self.cfg.pregreet.passes) {
                    passes.record(self.info.peer.ip(), Instant::now());
                }
                Ok(true)
            }
            Some(Ok(0)) | Some(Err(_)) => Ok(false),
            Some(Ok(_)) => {
                tracing::warn!(peer = %self.info.peer, "client sent commands before the greeting");
                let reply = Reply::sync_error();
                self.backend
                    .refused(&self.info, None, "CONNECT", PROTOCOL_SYNC, &reply);
                conn.queue(&reply);
                conn.flush().await?;
                Ok(false)
            }
        }
    }

    /// No wait for a client trusted at connect (an OnPremises address) or one that passed
    /// within the pass lifetime; `PreGreetingWait` for the others.
    fn pregreet_wait(&self) -> Duration {
        let p = &self.cfg.pregreet;
        let known = |c: &Arc<PassCache>| c.passed(self.info.peer.ip(), Instant::now());
        if self.trusted || p.passes.as_ref().is_some_and(known) {
            Duration::ZERO
        } else {
            p.wait
        }
    }

    /// The TLS handshake (implicit or after STARTTLS), bounded by the session's deadlines
    /// like any other wait: a handshake cannot stretch the session past `ConnectionTimeout`.
    async fn handshake(
        &self,
        stream: TcpStream,
    ) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = self.cfg.tls.clone()?;
        let (at, limit) = self.limits.next();
        match timeout_at(at, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                tracing::debug!(peer = %self.info.peer, error = %e, "TLS handshake failed");
                crate::metrics::tls_failure("inbound", "handshake");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %self.info.peer, limit, "TLS handshake timed out");
                crate::metrics::tls_failure("inbound", "timeout");
                None
            }
        }
    }

    /// The session ended on an I/O error. A write that timed out means the client stopped
    /// reading: there is no way to tell it (a 421 would not be read either), so the
    /// connection is just dropped, logged and counted (trace rule `WriteTimeout`).
    fn write_failed(&self, e: &std::io::Error) {
        let Some(t) = e.get_ref().and_then(|i| i.downcast_ref::<WriteTimeout>()) else {
            return;
        };
        let secs = match t.limit {
            "ConnectionTimeout" => self.cfg.session_timeout.as_secs(),
            _ => self.cfg.inactivity_timeout.as_secs(),
        };
        tracing::warn!(peer = %self.info.peer, limit = t.limit, secs,
            "client is not reading its replies; connection dropped");
        let detail = format!("dropped: client not reading replies ({} {secs} s)", t.limit);
        self.backend
            .dropped(&self.info, self.tx.as_ref(), "WriteTimeout", detail);
    }

    /// Records the TLS facts and judges the client certificate, then lets the backend
    /// re-evaluate the session.
    fn tls_established(&mut self, conn: &rustls::ServerConnection) {
        let info = tls_info(conn);
        self.info.client_cert = self
            .cfg
            .client_certs
            .as_ref()
            .and_then(|v| v.examine(&info.peer_certificates));
        self.info.tls = Some(info);
        self.backend.session_facts(&self.info);
    }

    /// Serves commands until the session ends or STARTTLS is accepted.
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> std::io::Result<Exit> {
        loop {
            let line = match self.next_line(conn).await? {
                Line::Command(l) => l,
                Line::TooLong => {
                    if self.protocol_error(conn, Reply::line_too_long()) {
                        conn.flush().await?;
                        return Ok(Exit::Close);
                    }
                    continue;
                }
                Line::Closed => return Ok(Exit::Close),
                Line::Stop(reply) => {
                    conn.queue(&reply);
                    conn.flush().await?;
                    return Ok(Exit::Close);
                }
            };
            if command::is_http_request(&line) {
                // Postfix `smtpd_forbidden_commands`: a web client (or a cross-protocol
                // attack through one) is answered once and disconnected.
                tracing::warn!(peer = %self.info.peer, "HTTP request on the SMTP port");
                let reply = Reply::new(554, "5.7.0", "HTTP not allowed here");
                self.refused(conn, "HttpRequest", reply);
                conn.flush().await?;
                return Ok(Exit::Close);
            }
            let cmd = match command::parse(&line) {
                Ok(c) => c,
                Err(reply) => {
                    if self.protocol_error(conn, reply) {
                        conn.flush().await?;
                        return Ok(Exit::Close);
                    }
                    continue;
                }
            };
            if self.cfg.forbid_unauth_pipelining
                && self.must_end_group(&cmd)
                && input_pending(conn).await
            {
                tracing::warn!(peer = %self.info.peer, command = ?cmd,
                    "improper command pipelining (SMTP protocol synchronization)");
                self.refused(conn, PROTOCOL_SYNC, Reply::sync_error());
                conn.flush().await?;
                return Ok(Exit::Close);
            }
            match cmd {
                Command::Ehlo(name) => self.ehlo(conn, name, true),
                Command::Helo(name) => self.ehlo(conn, name, false),
                Command::Mail(from, params) => self.mail(conn, from, params),
                Command::Rcpt(to) => {
                    if self.rcpt(conn, to) {
                        conn.flush().await?;
                        return Ok(Exit::Close);
                    }
                }
                Command::Data => {
                    if let Some(exit) = self.data(conn).await? {
                        return Ok(exit);
                    }
                }
                Command::Rset => {
                    self.end_transaction(TxEnd::Reset);
                    conn.queue(&Reply::ok("Flushed"));
                }
                Command::Noop => conn.queue(&Reply::ok("OK")),
                Command::Vrfy => conn.queue(&Reply::new(
                    252,
                    "2.5.0",
                    "Cannot VRFY user, but will accept message and attempt delivery",
                )),
                Command::Help => conn.queue(&Reply::new(
                    214,
                    "2.0.0",
                    "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY HELP STARTTLS",
                )),
                Command::Quit => {
                    conn.queue(&Reply::bye(&self.cfg.fqdn));
                    conn.flush().await?;
                    return Ok(Exit::Close);
                }
                Command::Auth(mechanism, initial) => {
                    if let Some(exit) = self.auth(conn, &mechanism, initial).await? {
                        return Ok(exit);
                    }
                }
                Command::StartTls => {
                    if self.info.tls.is_some() {
                        conn.queue(&Reply::bad_sequence("TLS already active"));
                    } else if self.cfg.tls.is_none() || self.cfg.starttls == StartTlsMode::Hide {
                        conn.queue(&Reply::not_implemented("STARTTLS not available"));
                    } else if self.cfg.starttls == StartTlsMode::Refuse {
                        conn.queue(&Reply::new(
                            454,
                            "4.7.0",
                            "TLS not available due to temporary reason",
                        ));
                    } else if self.cfg.starttls == StartTlsMode::Break {
                        conn.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
                        conn.flush().await?;
                        return Ok(Exit::Close);
                    } else {
                        conn.queue(&Reply::new(220, "2.0.0", "Ready to start TLS"));
                        conn.flush().await?;
                        let dropped = conn.discard_input();
                        if dropped > 0 {
                            tracing::warn!(peer = %self.info.peer, bytes = dropped,
                                "discarded input pipelined after STARTTLS (command injection attempt)");
                        }
                        return Ok(Exit::StartTls);
                    }
                }
            }
        }
    }

    /// RFC 2920 §3.1: without EHLO there is no pipelining at all; with it, these commands
    /// must be the last of a group. STARTTLS is not listed: input after it is discarded
    /// (CVE-2011-0411) and the handshake proceeds.
    fn must_end_group(&self, cmd: &Command) -> bool {
        match cmd {
            Command::StartTls => false,
            Command::Ehlo(_)
            | Command::Helo(_)
            | Command::Data
            | Command::Quit
            | Command::Noop
            | Command::Vrfy
            | Command::Help
            | Command::Auth(..) => true,
            Command::Mail(..) | Command::Rcpt(_) | Command::Rset => !self.info.esmtp,
        }
    }

    /// Queues `reply`, a refusal by one of the session's own rules, and tells the backend
    /// (the trace) at stage `SESSION`: these end the session whatever its state.
    fn refused<S>(&mut self, conn: &mut Conn<S>, rule: &'static str, reply: Reply)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.backend
            .refused(&self.info, self.tx.as_ref(), "SESSION", rule, &reply);
        conn.queue(&reply);
    }

    /// Answers a bad command with `reply` and counts it. `MaxProtocolErrors` errors are
    /// tolerated (as Exchange's receive connector does); the next one is answered `421`
    /// instead, and the caller closes the session (returns true).
    fn protocol_error<S>(&mut self, conn: &mut Conn<S>, reply: Reply) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.errors += 1;
        if self.errors > self.cfg.max_protocol_errors {
            self.refused(conn, "MaxProtocolErrors", Reply::too_many_errors());
            return true;
        }
        conn.queue(&reply);
        false
    }

    fn ehlo<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        name: String,
        esmtp: bool,
    ) {
        // RFC 5321 §4.1.4: EHLO resets any transaction in progress.
        self.end_transaction(TxEnd::Reset);
        self.info.helo = Some(name.clone());
        self.info.esmtp = esmtp;
        if !esmtp {
            conn.queue(&Reply::new(250, "", self.cfg.fqdn.clone()));
            return;
        }
        let mut lines = vec![
            format!("{} Hello {} [{}]", self.cfg.fqdn, name, self.info.peer.ip()),
            "PIPELINING".to_string(),
            format!("SIZE {}", self.cfg.max_message_size),
            "8BITMIME".to_string(),
            "SMTPUTF8".to_string(),
            "ENHANCEDSTATUSCODES".to_string(),
        ];
        if self.cfg.tls.is_some()
            && self.info.tls.is_none()
            && self.cfg.starttls != StartTlsMode::Hide
        {
            lines.push("STARTTLS".to_string());
        }
        // RFC 8689 §3: REQUIRETLS is offered only in the EHLO reply of a TLS session.
        if self.info.tls.is_some() && self.cfg.offer_requiretls {
            lines.push("REQUIRETLS".to_string());
        }
        if self.auth_offered() {
            lines.push("AUTH PLAIN LOGIN".to_string());
        }
        // RFC 2034 §3: no enhanced codes on the EHLO reply.
        conn.queue(&Reply::new(250, "", lines.join("\n")));
    }

    fn mail<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        from: Option<Address>,
        params: MailParams,
    ) {
        let reply = (|| {
            if self.info.helo.is_none() {
                return Reply::bad_sequence("Send EHLO or HELO first");
            }
            if self.tx.is_some() {
                return Reply::bad_sequence("Nested MAIL command");
            }
            if self.cfg.require_tls && self.info.tls.is_none() {
                return Reply::tls_required();
            }
            // RFC 8689 §4.2.1 asks the receiver to honour the flag, which it can only
            // promise under TLS; a client that sends it unadvertised learns why.
            if params.requiretls && (self.info.tls.is_none() || !self.cfg.offer_requiretls) {
                let reply = if self.info.tls.is_none() {
                    Reply::requiretls_needs_tls()
                } else {
                    Reply::param_not_implemented("REQUIRETLS not offered")
                };
                return reply;
            }
            if self.cfg.auth.is_some() && self.info.auth_user.is_none() {
                return Reply::new(530, "5.7.0", "Authentication required");
            }
            let mut tx = Transaction {
                mail_from: from,
                params,
                ..Transaction::default()
            };
            // RFC 1870 §6: a declared size over the limit is refused at MAIL.
            if tx
                .params
                .size
                .is_some_and(|s| s > self.cfg.max_message_size)
            {
                let reply = Reply::message_too_big();
                self.backend
                    .refused(&self.info, Some(&tx), "MAIL", "MaxMessageSize", &reply);
                tx.refused_by = Some("MaxMessageSize");
                self.backend.transaction_end(&self.info, &tx, TxEnd::Mail);
                return reply;
            }
            if let Err(r) = self.backend.mail(&self.info, &mut tx) {
                self.backend.transaction_end(&self.info, &tx, TxEnd::Mail);
                return r;
            }
            self.tx = Some(tx);
            Reply::sender_ok()
        })();
        conn.queue(&reply);
    }

    /// RCPT TO. True when the session must close (the protocol-error limit was reached).
    fn rcpt<S: AsyncRead + AsyncWrite + Unpin>(&mut self, conn: &mut Conn<S>, to: Address) -> bool {
        let Some(tx) = self.tx.as_mut() else {
            conn.queue(&Reply::bad_sequence("Need MAIL before RCPT"));
            return false;
        };
        // RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter on MAIL; the
        // same refusal (and error count) as a non-ASCII sender without it.
        if !tx.params.smtputf8 && (!to.local.is_ascii() || !to.domain.is_ascii()) {
            return self.protocol_error(conn, Reply::smtputf8_required());
        }
        if tx.recipients.len() >= self.cfg.max_recipients {
            let reply = Reply::too_many_recipients();
            self.backend.refused(
                &self.info,
                Some(tx),
                "RCPT",
                "MaxRecipientsPerMessage",
                &reply,
            );
            conn.queue(&reply);
            return false;
        }
        let mut to = to;
        if to.domain.is_empty() {
            // <postmaster> (RFC 5321 §4.5.1) is the relay's own postmaster.
            to.domain = self.cfg.fqdn.clone();
        }
        match self.backend.rcpt(&self.info, tx, &to) {
            Ok(()) => {
                tx.recipients.push(to);
                conn.queue(&Reply::recipient_ok());
            }
            Err(r) => {
                // A client may try recipients without end: the refused ones kept for the
                // trace are bounded like the accepted ones.
                tx.refused.truncate(self.cfg.max_recipients);
                conn.queue(&r)
            }
        }
        false
    }

    /// AUTH is offered when a verifier is configured, and under `require_tls` only once
    /// the session is under TLS.
    fn auth_offered(&self) -> bool {
        self.cfg.auth.is_some() && (!self.cfg.require_tls || self.info.tls.is_some())
    }

    /// RFC 4954 AUTH with PLAIN (RFC 4616) or LOGIN, initial response allowed for both.
    /// Returns `Some(exit)` when the session must end (connection lost during the exchange).
    async fn auth<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
        mechanism: &str,
        initial: Option<String>,
    ) -> std::io::Result<Option<Exit>> {
        let Some(verify) = self.cfg.auth.clone() else {
            conn.queue(&Reply::not_implemented("Command not implemented"));
            return Ok(None);
        };
        let refuse = if self.info.helo.is_none() || !self.info.esmtp {
            Some(Reply::bad_sequence("Send EHLO first"))
        } else if !self.auth_offered() {
            Some(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ))
        } else if self.info.auth_user.is_some() {
            Some(Reply::bad_sequence("Already authenticated"))
        } else if self.tx.is_some() {
            Some(Reply::bad_sequence(
                "AUTH not allowed during a mail transaction",
            ))
        } else if mechanism != "PLAIN" && mechanism != "LOGIN" {
            Some(Reply::new(504, "5.5.4", "Unrecognized authentication type"))
        } else {
            None
        };
        if let Some(r) = refuse {
            conn.queue(&r);
            return Ok(None);
        }
        // Each step: the initial response if given, else a 334 challenge and the next line.
        let mut initial = initial;
        let mut step = async |conn: &mut Conn<S>,
                              challenge: &str|
               -> std::io::Result<Result<Vec<u8>, Reply>> {
            let line = match initial.take() {
                Some(l) => l,
                None => {
                    conn.queue(&Reply::new(334, "", challenge));
                    match self.next_line(conn).await? {
                        Line::Command(l) => String::from_utf8_lossy(&l).into_owned(),
                        _ => {
                            return Ok(Err(Reply::new(
                                501,
                                "5.5.2",
                                "Bad authentication exchange",
                            )));
                        }
                    }
                }
            };
            let line = line.trim();
            if line == "*" {
                return Ok(Err(Reply::new(501, "5.7.0", "Authentication cancelled")));
            }
            if line == "=" {
                return Ok(Ok(Vec::new()));
            }
            Ok(sasl::decode(line).ok_or_else(|| {
                Reply::new(501, "5.5.2", "Invalid base64 in authentication exchange")
            }))
        };
        let credentials = if mechanism == "PLAIN" {
            match step(conn, "").await? {
                Ok(m) => sasl::parse_plain(&m)
                    .ok_or_else(|| Reply::new(501, "5.5.2", "Malformed PLAIN message")),
                Err(r) => Err(r),
            }
        } else {
            match step(conn, sasl::LOGIN_USERNAME).await? {
                Ok(user) => match step(conn, sasl::LOGIN_PASSWORD).await? {
                    Ok(pass) => Ok((
                        String::from_utf8_lossy(&user).into_owned(),
                        String::from_utf8_lossy(&pass).into_owned(),
                    )),
                    Err(r) => Err(r),
                },
                Err(r) => Err(r),
            }
        };
        let reply = match credentials {
            Ok((user, pass)) if verify(&user, &pass) => {
                self.info.auth_user = Some(user);
                Reply::new(235, "2.7.0", "Authentication successful")
            }
            Ok(_) => Reply::new(535, "5.7.8", "Authentication credentials invalid"),
            Err(r) => r,
        };
        conn.queue(&reply);
        Ok(None)
    }

    async fn data<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> std::io::Result<Option<Exit>> {
        match &self.tx {
            None => {
                conn.queue(&Reply::bad_sequence("Need MAIL command"));
                return Ok(None);
            }
            Some(tx) if tx.recipients.is_empty() => {
                // RFC 2920 §3.1: DATA after all RCPTs failed.
                conn.queue(&Reply::new(554, "5.5.1", "No valid recipients"));
                return Ok(None);
            }
            Some(_) => {}
        }
        conn.queue(&Reply::start_data());
        conn.flush().await?;

        let mut reader = DataReader::new(self.cfg.max_message_size, self.cfg.bare_newline)
            .with_max_header(self.cfg.max_header_size);
        // Dropped on every early return, which removes a file it started.
        let mut body = Receiver::new(self.backend.spill_dir());
        let started = Instant::now();
        let mut received: u64 = 0;
        loop {
            let (used, done) = reader.feed(conn.buffered(), body.out());
            conn.rpos += used;
            received += used as u64;
            if reader.error().is_some() {
                // Refused once its end is read: drop what was kept, at once.
                body.discard();
            } else {
                body.after_feed(reader.in_header()).await;
            }
            if done {
                break;
            }
            // Every read has a timeout (the session is in DATA: shutdown does not cut it).
            let (deadline, _) = self.limits.next();
            // Minimum data rate: after the grace period the average must stay at or above
            // `min_data_rate`, so `received` bytes buy `received / rate` seconds in all.
            let slow_at = (self.cfg.min_data_rate > 0).then(|| {
                let earned =
                    Duration::from_secs_f64(received as f64 / self.cfg.min_data_rate as f64);
                started + earned.max(self.cfg.min_data_rate_grace)
            });
            match timeout_at(slow_at.map_or(deadline, |s| s.min(deadline)), conn.fill()).await {
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(Some(Exit::Close)),
                Ok(Ok(_)) => {}
                Err(_) => {
                    let reply = if slow_at.is_some_and(|s| s < deadline) {
                        tracing::warn!(peer = %self.info.peer, bytes = received,
                            secs = started.elapsed().as_secs(), "DATA below the minimum rate; closing");
                        let reply =
                            Reply::new(421, "4.4.2", "Data rate too slow, closing connection");
                        let tx = self.tx.as_ref();
                        self.backend
                            .refused(&self.info, tx, "DATA", "MinDataRate", &reply);
                        reply
                    } else {
                        Reply::timeout()
                    };
                    conn.queue(&reply);
                    conn.flush().await?;
                    return Ok(Some(Exit::Close));
                }
            }
        }
        let mut tx = self.tx.take().unwrap_or_default();
        let refused = match reader.error() {
            Some(DataError::TooBig) => Some(("MaxMessageSize", Reply::message_too_big())),
            Some(DataError::HeaderTooBig) => Some(("MaxHeaderSize", Reply::header_too_big())),
            Some(DataError::LineTooLong) => Some(("LineTooLong", Reply::line_too_long())),
            Some(DataError::BareNewline) => Some(("BareNewlinePolicy", Reply::bare_newline())),
            None => None,
        };
        let reply = match refused {
            Some((rule, reply)) => {
                self.backend
                    .refused(&self.info, Some(&tx), "DATA", rule, &reply);
                tx.refused_by = Some(rule);
                reply
            }
            None => match body.finish().await {
                Ok(message) => self.backend.data(&self.info, &mut tx, message).await,
                Err(e) => {
                    tx.refused_by = Some("SpoolWriteFailed");
                    self.spill_failed(&tx, &e)
                }
            },
        };
        self.backend.transaction_end(&self.info, &tx, TxEnd::Data);
        conn.queue(&reply);
        Ok(None)
    }

    /// A large message could not be written to `tmp/`: refused with a temporary error, as
    /// the backend refuses one it cannot store (ENOSPC / EDQUOT: 452 4.3.1, RFC 3463).
    fn spill_failed(&self, tx: &Transaction, e: &std::io::Error) -> Reply {
        let reply = if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            Reply::insufficient_storage()
        } else {
            Reply::local_error()
        };
        self.backend
            .refused(&self.info, Some(tx), "DATA", "SpoolWriteFailed", &reply);
        reply
    }

    /// The next command line, reading (and flushing pending replies) as needed.
    async fn next_line<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        conn: &mut Conn<S>,
    ) -> std::io::Result<Line> {
        let mut discarding = false;
        loop {
            let buf = conn.buffered();
            if let Some(i) = buf.iter().position(|&b| b == b'\n') {
                let too_long = discarding || i + 1 > MAX_COMMAND_LINE;
                let mut line = &buf[..i];
                if line.last() == Some(&b'\r') {
                    line = &line[..line.len() - 1];
                }
                let line = line.to_vec();
                conn.rpos += i + 1;
                return Ok(if too_long {
                    Line::TooLong
                } else {
                    Line::Command(line)
                });
            }
            if buf.len() > MAX_COMMAND_LINE {
                // Keep reading until the end of the over-long line, without storing it.
                discarding = true;
                conn.discard_input();
            }
            // No complete command buffered: the replies to the pipelined group go out now.
            conn.flush().await?;
            if *self.shutdown.borrow() && self.tx.is_none() {
                return Ok(Line::Stop(Reply::service_unavailable()));
            }
            let (deadline, _) = self.limits.next();
            let read = async {
                let mut shutdown = self.shutdown.clone();
                tokio::select! {
                    r = conn.fill() => Some(r),
                    _ = shutdown.changed(), if self.tx.is_none() => None,
                }
            };
            match timeout_at(deadline, read).await {
                Err(_) => return Ok(Line::Stop(Reply::timeout())),
                Ok(None) => continue, // shutdown signalled: re-checked above
                Ok(Some(Ok(0))) => return Ok(Line::Closed),
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(e),
            }
        }
    }
}

/// Is client input waiting beyond the current command? Looks at the buffer, then polls the
/// stream once without waiting.
async fn input_pending<S: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<S>) -> bool {
    if !conn.buffered().is_empty() {
        return true;
    }
    matches!(timeout(Duration::ZERO, conn.fill()).await, Ok(Ok(n)) if n > 0)
}

enum Line {
    Command(Vec<u8>),
    TooLong,
    Closed,
    /// End the session with this reply (timeout, shutdown).
    Stop(Reply),
}

fn tls_info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = super::tls::version_name(conn.protocol_version());
    let cipher = conn
        .negotiated_cipher_suite()
        .map(|c| format!("{:?}", c.suite()))
        .unwrap_or_default();
    let peer_certificates = conn
        .peer_certificates()
        .map(|certs| certs.iter().map(|c| c.clone().into_owned()).collect())
        .unwrap_or_default();
    TlsInfo {
        version,
        cipher,
        peer_certificates,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(inactivity_ms: u64, session_ms: u64) -> Deadlines {
        Deadlines {
            inactivity: Duration::from_millis(inactivity_ms),
            session_end: Instant::now() + Duration::from_millis(session_ms),
        }
    }

    /// A reply queue to a peer that never reads: the in-memory pipe holds 64 bytes. The
    /// time the write took, and which limit ended it.
    async fn flush_to_a_peer_that_never_reads(limits: Deadlines) -> (Duration, &'static str) {
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut conn = Conn::new(ours, limits);
        for _ in 0..100 {
            conn.queue(&Reply::ok("Flushed"));
        }
        let t = Instant::now();
        let e = conn.flush().await.expect_err("the write cannot complete");
        let limit = e
            .get_ref()
            .and_then(|i| i.downcast_ref::<WriteTimeout>())
            .expect("a WriteTimeout")
            .limit;
        (t.elapsed(), limit)
    }

    #[tokio::test]
    async fn a_write_ends_at_the_inactivity_timeout() {
        let (took, limit) = flush_to_a_peer_that_never_reads(limits(200, 600_000)).await;
        assert_eq!(limit, "ConnectionInactivityTimeout");
        assert!(took >= Duration::from_millis(200) && took < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_write_never_outlasts_the_session() {
        let (took, limit) = flush_to_a_peer_that_never_reads(limits(600_000, 300)).await;
        assert_eq!(limit, "ConnectionTimeout");
        assert!(took >= Duration::from_millis(250) && took < Duration::from_secs(30));
    }

    #[tokio::test]
    async fn a_last_reply_past_the_deadline_still_gets_one_attempt() {
        // The session is over, but a 421 that fits in the buffer is still written.
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let mut conn = Conn::new(ours, limits(200, 0));
        conn.queue(&Reply::timeout());
        conn.flush().await.expect("written without waiting");
        let mut got = vec![0u8; Reply::timeout().to_wire().len()];
        theirs.read_exact(&mut got).await.unwrap();
        assert_eq!(got, Reply::timeout().to_wire());
    }
}
