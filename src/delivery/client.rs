//! The outbound SMTP client, written by hand on tokio + tokio-rustls so that it can report a
//! result per recipient with pipelining and enforce the STARTTLS policy of each route.
//!
//! One attempt ([`deliver`]) is split into stages, each its own function:
//! [`connect`] → [`greet`] → [`hello`] → [`starttls`] (+ [`hello`] again) → [`transaction`]
//! (envelope, then [`send_data`]) → [`quit`].
//!
//! Failure classification (the enhanced codes of `shared/spec/replies.md`; Exchange uses the
//! same codes for the same socket-level conditions):
//!
//! | condition | status | try the next host? |
//! | --- | --- | --- |
//! | TCP connect timed out | `4.4.315` | yes |
//! | TCP connect refused / unreachable / other connect error | `4.4.316` | yes |
//! | connection closed or reset mid-session | `4.4.318` | yes, unless the message was sent |
//! | no reply within the inactivity timeout | `4.4.315` | yes, unless the message was sent |
//! | malformed reply, over-long reply, bytes after the STARTTLS 220 | `4.5.0` (RFC 3463 "other protocol status") | yes |
//! | TLS required but STARTTLS not offered / refused / handshake failed | `4.4.317` (`4.7.320` for certificate validation failures) | yes |
//! | greeting or EHLO/HELO not accepted | the remote's reply | yes |
//! | 4xx to MAIL FROM | the remote's reply | yes |
//! | 5xx to MAIL FROM | the remote's reply, permanent for every recipient | no |
//! | 4xx / 5xx to RCPT TO | that recipient's own result | no |
//! | 4xx / 5xx to DATA or to the final "." | every accepted recipient's result | no (the next host could end up with a duplicate) |
//!
//! Opportunistic TLS: when the handshake (or the STARTTLS exchange) fails, the attempt is
//! repeated on a new connection to the same address without STARTTLS (policy.md
//! "Outbound: TLS levels").

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;
use tokio::time::timeout;

use super::protolog::{LogSession, ProtocolLog};
pub use super::reply::Reply;
use super::reply::ReplyReader;
use super::tls::{PeerCertificate, TlsCheck, TlsFailure, certificate_names, classify_tls_error};
use super::{Data, DeliveryStatus, Failure};
use crate::smtp::sasl;

/// Size of the pieces the message is written in (each write has its own timeout).
const DATA_CHUNK: usize = 64 * 1024;

/// Any byte stream the client can speak SMTP over (TCP, TLS over TCP, in-memory in tests).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What to do about STARTTLS on this attempt.
#[derive(Clone)]
pub enum StartTls {
    /// Never issue STARTTLS (`IgnoreSTARTTLS`).
    Never,
    /// Use it when offered; fall back to plaintext when it fails.
    Opportunistic(Arc<rustls::ClientConfig>),
    /// It must succeed with this configuration, else the host fails with 4.4.317.
    Required(Arc<rustls::ClientConfig>),
}

impl std::fmt::Debug for StartTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StartTls::Never => "Never",
            StartTls::Opportunistic(_) => "Opportunistic",
            StartTls::Required(_) => "Required",
        })
    }
}

/// Settings of one delivery attempt.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Name sent in EHLO/HELO.
    pub helo_name: String,
    /// Send HELO instead of EHLO (Send connector `ForceHELO`).
    pub force_helo: bool,
    pub connect_timeout: Duration,
    /// Longest wait for any reply or write (connection inactivity).
    pub command_timeout: Duration,
    /// Longest wait for the reply to the final "." (RFC 5321 §4.5.3.2.6: 10 minutes).
    pub data_end_timeout: Duration,
    /// Local address to bind to (Send connector `SourceIPAddress`).
    pub source_ip: Option<IpAddr>,
    pub starttls: StartTls,
    /// AUTH after EHLO (Send connector `SmartHostAuthMechanism` = `BasicAuth*`).
    pub auth: Option<SmtpAuth>,
    /// Protocol log of the connector (`ProtocolLoggingLevel = "Verbose"`).
    pub protocol_log: Option<ProtocolLogger>,
    /// RFC 8689: the session must end up under TLS (with `starttls` a validating
    /// `Required` configuration) and the server must offer REQUIRETLS in its EHLO reply
    /// after STARTTLS; otherwise the host fails with `5.7.30` (see [`requiretls_failure`]).
    pub requiretls: bool,
}

/// A password that never shows in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }
    /// The password itself, for the SASL exchange only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Credentials for AUTH PLAIN / LOGIN.
#[derive(Debug, Clone)]
pub struct SmtpAuth {
    pub user: String,
    pub password: Secret,
    /// `BasicAuthRequireTLS`: never authenticate outside TLS.
    pub require_tls: bool,
}

/// The protocol log and the connector name its lines carry.
#[derive(Debug, Clone)]
pub struct ProtocolLogger {
    pub log: Arc<ProtocolLog>,
    pub connector: String,
}

impl ClientConfig {
    /// RFC 5321 §4.5.3.2 timeouts (5 minutes per command, 10 for the end of data).
    pub fn new(helo_name: impl Into<String>, starttls: StartTls) -> Self {
        ClientConfig {
            helo_name: helo_name.into(),
            force_helo: false,
            connect_timeout: Duration::from_secs(30),
            command_timeout: Duration::from_secs(300),
            data_end_timeout: Duration::from_secs(600),
            source_ip: None,
            starttls,
            auth: None,
            protocol_log: None,
            requiretls: false,
        }
    }
}

/// The message to send.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    /// `""` is the null reverse-path (`MAIL FROM:<>`).
    pub mail_from: &'a str,
    pub recipients: &'a [String],
    /// The message with CRLF line endings, not dot-stuffed.
    pub data: Data<'a>,
    /// RFC 8689: send `MAIL FROM:<...> REQUIRETLS` (only ever to a server that offered
    /// it; the transaction refuses to run otherwise).
    pub requiretls: bool,
}

/// SMTP service extensions announced in the EHLO reply (RFC 5321 §4.1.1.1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// RFC 2920.
    pub pipelining: bool,
    /// RFC 3207.
    pub starttls: bool,
    /// RFC 1870: `Some(0)` = announced without a limit.
    pub size: Option<u64>,
    /// RFC 6152.
    pub eight_bit_mime: bool,
    /// RFC 6531.
    pub smtputf8: bool,
    /// RFC 2034.
    pub enhanced_status_codes: bool,
    /// RFC 4954 mechanisms.
    pub auth: Vec<String>,
    /// RFC 8689 (offered only after STARTTLS).
    pub requiretls: bool,
}

impl Extensions {
    /// Parses the lines after the first of a 250 EHLO reply.
    pub fn parse(reply: &Reply) -> Extensions {
        let mut ext = Extensions::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => ext.pipelining = true,
                "STARTTLS" => ext.starttls = true,
                "SIZE" => ext.size = Some(words.next().and_then(|n| n.parse().ok()).unwrap_or(0)),
                "8BITMIME" => ext.eight_bit_mime = true,
                "SMTPUTF8" => ext.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => ext.enhanced_status_codes = true,
                "REQUIRETLS" => ext.requiretls = true,
                "AUTH" => ext.auth = words.map(|w| w.to_ascii_uppercase()).collect(),
                _ => {}
            }
        }
        ext
    }
}

/// TLS facts of a session, for the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    /// DNS names of the peer certificate (SANs, or the CN without SANs).
    pub peer_names: Vec<String>,
    /// Subject, SANs and issuer of the peer certificate.
    pub peer: Option<PeerCertificate>,
    /// The certificates the server sent, leaf first (MTA-STS `testing` validates them after
    /// the fact: `mta_sts::testing_verdict`). Shared: every recipient's outcome holds it.
    pub chain: Arc<Vec<rustls::pki_types::CertificateDer<'static>>>,
}

/// The stage a session was in when it failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Refused before connecting by the host's DANE verdict (`super::dane`: DNSSEC bogus,
    /// Mandatory without DANE, no usable TLSA record under Mandatory).
    Dane,
    Connect,
    Greeting,
    Hello,
    StartTls,
    Auth,
    Mail,
    Rcpt,
    Data,
}

/// A failure that ends the session before per-recipient results exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionError {
    pub stage: Stage,
    pub failure: Failure,
    pub permanent: bool,
    /// May the recipients be tried at the next address/host? (table in the module docs)
    pub try_next_host: bool,
    /// Opportunistic TLS failed: retry on a new connection without STARTTLS.
    tls_fallback: bool,
    /// The TLS check that failed (STARTTLS not offered, handshake, certificate).
    pub tls_failure: Option<Box<TlsFailure>>,
}

impl SessionError {
    fn local(stage: Stage, enhanced: &str, text: impl Into<String>) -> Self {
        SessionError {
            stage,
            failure: Failure {
                code: None,
                enhanced: enhanced.to_string(),
                text: text.into(),
            },
            permanent: enhanced.starts_with('5'),
            try_next_host: true,
            tls_fallback: false,
            tls_failure: None,
        }
    }

    fn remote(stage: Stage, reply: &Reply) -> Self {
        SessionError {
            stage,
            failure: reply.to_failure(),
            permanent: reply.is_permanent(),
            try_next_host: true,
            tls_fallback: false,
            tls_failure: None,
        }
    }

    /// A failed TLS requirement of this attempt: the reason, then the attempt's facts
    /// (host, IP, check, peer certificate) in the text, for the trace and DSNs.
    fn tls(failure: TlsFailure, host: &str, addr: SocketAddr) -> Self {
        let mut text = format!(
            "{} (host {host}, ip {}, check {}",
            failure.reason,
            addr.ip(),
            failure.check
        );
        if let Some(p) = &failure.peer {
            text.push_str(&format!(
                ", peer subject \"{}\", SANs [{}], issuer \"{}\"",
                p.subject,
                p.sans.join(", "),
                p.issuer
            ));
        }
        text.push(')');
        let mut e = Self::local(Stage::StartTls, failure.status, text);
        crate::metrics::tls_failure("outbound", failure.check.as_str());
        e.tls_failure = Some(Box::new(failure));
        e
    }

    fn protocol(stage: Stage, text: impl Into<String>) -> Self {
        Self::local(stage, "4.5.0", text)
    }

    fn io(stage: Stage, what: &str, e: &io::Error) -> Self {
        Self::local(
            stage,
            "4.4.318",
            format!("connection closed abruptly {what}: {e}"),
        )
    }

    fn timeout(stage: Stage, what: &str) -> Self {
        Self::local(stage, "4.4.315", format!("timed out {what}"))
    }

    fn no_retry(mut self) -> Self {
        self.try_next_host = false;
        self
    }

    /// The outcome of this error for every recipient.
    pub fn to_status(&self) -> DeliveryStatus {
        if self.permanent {
            DeliveryStatus::Permanent(self.failure.clone())
        } else {
            DeliveryStatus::Temporary(self.failure.clone())
        }
    }
}

/// The result of one attempt at one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// TLS facts when the session ran under TLS.
    pub tls: Option<TlsInfo>,
    /// One status per recipient (input order), or a session-level error.
    pub result: Result<Vec<DeliveryStatus>, SessionError>,
    /// Opportunistic TLS: the failed STARTTLS session that came before this plaintext one
    /// (a separate connection, reported as its own attempt in the trace).
    pub fallback: Option<Box<SessionError>>,
    /// The transaction ran on a connection kept from an earlier message.
    pub reused: bool,
}

impl Attempt {
    /// An attempt that failed before connecting (its settings could not be built).
    pub fn failed(stage: Stage, failure: Failure) -> Attempt {
        let mut e = SessionError::local(stage, "", "");
        e.permanent = failure.enhanced.starts_with('5');
        e.failure = failure;
        Attempt {
            tls: None,
            result: Err(e),
            fallback: None,
            reused: false,
        }
    }

    /// An attempt refused before connecting (a DANE verdict, `super::dane`): temporary,
    /// the next host is tried, no connection was made.
    pub fn refused(failure: Failure) -> Attempt {
        let permanent = failure.enhanced.starts_with('5');
        Attempt {
            tls: None,
            result: Err(SessionError {
                stage: Stage::Dane,
                failure,
                permanent,
                try_next_host: true,
                tls_fallback: false,
                tls_failure: None,
            }),
            fallback: None,
            reused: false,
        }
    }

    /// An attempt that failed before any connection (a local problem, `enhanced` status).
    pub fn local_failure(enhanced: &str, text: &str) -> Attempt {
        Attempt {
            tls: None,
            result: Err(SessionError::local(Stage::Connect, enhanced, text)),
            fallback: None,
            reused: false,
        }
    }
}

/// One delivery attempt to `addr` (`host` names it for SNI and certificate checks).
/// With opportunistic TLS, a failed STARTTLS is retried once in plaintext.
pub async fn deliver(
    addr: SocketAddr,
    host: &str,
    cfg: &ClientConfig,
    env: &Envelope<'_>,
) -> Attempt {
    let first = session(addr, host, cfg, env, true).await;
    trace_attempt(addr, host, &first);
    match first {
        Attempt { result: Err(e), .. } if e.tls_fallback => {
            tracing::info!(%addr, host, error = %e.failure, "STARTTLS failed; retrying in plaintext (opportunistic TLS)");
            let mut second = session(addr, host, cfg, env, false).await;
            trace_attempt(addr, host, &second);
            second.fallback = Some(Box::new(e));
            second
        }
        attempt => attempt,
    }
}

/// One structured event per session (`event = "delivery_attempt"`): host, IP, TLS version
/// and cipher, the peer certificate, the TLS check that failed, the reason and status.
fn trace_attempt(addr: SocketAddr, host: &str, attempt: &Attempt) {
    let (status, reason, failure) = match &attempt.result {
        Ok(_) => ("ok".to_string(), String::new(), None),
        Err(e) => (
            e.failure.enhanced.clone(),
            e.failure.text.clone(),
            e.tls_failure.as_deref(),
        ),
    };
    let peer = attempt
        .tls
        .as_ref()
        .and_then(|t| t.peer.as_ref())
        .or_else(|| failure.and_then(|f| f.peer.as_ref()));
    tracing::info!(
        event = "delivery_attempt",
        host,
        ip = %addr.ip(),
        tls_version = attempt.tls.as_ref().map(|t| t.version.as_str()).unwrap_or(""),
        tls_cipher = attempt.tls.as_ref().map(|t| t.cipher.as_str()).unwrap_or(""),
        peer_subject = peer.map(|p| p.subject.as_str()).unwrap_or(""),
        peer_sans = %peer.map(|p| p.sans.join(",")).unwrap_or_default(),
        peer_issuer = peer.map(|p| p.issuer.as_str()).unwrap_or(""),
        check = failure.map(|f| f.check.as_str()).unwrap_or(""),
        reason,
        status,
        "delivery attempt"
    );
}

/// One SMTP session over a new connection.
async fn session(
    addr: SocketAddr,
    host: &str,
    cfg: &ClientConfig,
    env: &Envelope<'_>,
    use_tls: bool,
) -> Attempt {
    let (tls, opened) = open(addr, host, cfg, use_tls).await;
    let result = match opened {
        Ok(mut est) => {
            let r = transaction(&mut est.conn, &est.ext, env).await;
            quit(&mut est.conn).await;
            r
        }
        Err(e) => Err(e),
    };
    Attempt {
        tls,
        result,
        fallback: None,
        reused: false,
    }
}

/// An open session, ready for a transaction: greeted, EHLO/HELO done, under TLS when that
/// was negotiated, authenticated when configured. Kept between messages for connection
/// reuse (`SmtpMaxMessagesPerConnection`).
pub struct Established {
    conn: Conn,
    ext: Extensions,
    tls: Option<TlsInfo>,
    messages: u32,
}

impl Established {
    /// Messages delivered on this connection so far.
    pub fn messages(&self) -> u32 {
        self.messages
    }

    /// QUIT and close.
    pub async fn close(mut self) {
        quit(&mut self.conn).await;
    }
}

/// Like [`deliver`], but the session is kept for reuse: `reuse` is a session kept from an
/// earlier message to the same next hop (RSET first; when that connection turns out to be
/// broken, a new one is opened transparently). Returns the attempt and, when the
/// transaction went through, the session to keep (the caller QUITs it or pools it).
pub async fn deliver_reusing(
    addr: SocketAddr,
    host: &str,
    cfg: &ClientConfig,
    env: &Envelope<'_>,
    reuse: Option<Established>,
) -> (Attempt, Option<Established>) {
    if let Some(mut est) = reuse {
        if let Some(log) = est.conn.log.as_mut() {
            log.info(&format!(
                "reusing the connection (message {})",
                est.messages + 1
            ));
        }
        if reset(&mut est.conn).await {
            match transaction(&mut est.conn, &est.ext, env).await {
                Ok(statuses) => {
                    est.messages += 1;
                    let attempt = Attempt {
                        tls: est.tls.clone(),
                        result: Ok(statuses),
                        fallback: None,
                        reused: true,
                    };
                    return (attempt, est.conn.usable().then_some(est));
                }
                // The connection broke before anything was accepted: start over below.
                Err(e) if e.try_next_host && e.failure.code.is_none() => {
                    tracing::debug!(%addr, error = %e.failure, "pooled connection broken; reconnecting");
                }
                Err(e) => {
                    let tls = est.tls.clone();
                    quit(&mut est.conn).await;
                    return (
                        Attempt {
                            tls,
                            result: Err(e),
                            fallback: None,
                            reused: true,
                        },
                        None,
                    );
                }
            }
        }
    }
    let (mut tls, mut opened) = open(addr, host, cfg, true).await;
    let mut fallback = None;
    if let Err(e) = &opened
        && e.tls_fallback
    {
        tracing::info!(%addr, host, error = %e.failure, "STARTTLS failed; retrying in plaintext (opportunistic TLS)");
        let (t, o) = open(addr, host, cfg, false).await;
        fallback = std::mem::replace(&mut opened, o).err().map(Box::new);
        tls = t;
    }
    let attempt = |tls, result| Attempt {
        tls,
        result,
        fallback,
        reused: false,
    };
    let mut est = match opened {
        Ok(est) => est,
        Err(e) => return (attempt(tls, Err(e)), None),
    };
    match transaction(&mut est.conn, &est.ext, env).await {
        Ok(statuses) => {
            est.messages += 1;
            let keep = est.conn.usable().then_some(est);
            (attempt(tls, Ok(statuses)), keep)
        }
        Err(e) => {
            quit(&mut est.conn).await;
            (attempt(tls, Err(e)), None)
        }
    }
}

/// RSET before reusing a connection; false when the connection is no longer usable.
/// Input that arrived while the connection was pooled (a late stray reply) makes it unusable.
async fn reset(conn: &mut Conn) -> bool {
    if conn.out_of_sync
        || conn
            .expect_silence(Stage::Mail, "while the connection was idle")
            .is_err()
    {
        return false;
    }
    matches!(
        conn.command(Stage::Mail, "RSET\r\n", "RSET", Expect::Completion).await,
        Ok(r) if r.code == 250
    )
}

/// Stages 1-4 (and AUTH): a session ready for a transaction. The TLS facts are returned
/// even when a later stage failed.
async fn open(
    addr: SocketAddr,
    host: &str,
    cfg: &ClientConfig,
    use_tls: bool,
) -> (Option<TlsInfo>, Result<Established, SessionError>) {
    let mut tls = None;
    let result = async {
        let io = connect(addr, cfg).await?;
        let local = io.local_addr().ok();
        let mut conn = Conn::new(Box::new(io), cfg.command_timeout);
        conn.set_data_end_timeout(cfg.data_end_timeout);
        if let (Some(p), Some(local)) = (&cfg.protocol_log, local) {
            let mut log = p.log.session(&p.connector, local, addr);
            log.info(&format!("connected to {host} [{addr}]"));
            conn.log = Some(log);
        }
        greet(&mut conn).await?;
        let mut ext = hello(&mut conn, cfg).await?;
        let config = match (&cfg.starttls, use_tls) {
            (StartTls::Never, _) | (StartTls::Opportunistic(_), false) => None,
            (StartTls::Opportunistic(c), true) => ext.starttls.then_some((c, false)),
            (StartTls::Required(c), _) => {
                if !ext.starttls {
                    return Err(SessionError::tls(
                        TlsFailure {
                            status: "4.4.317",
                            check: TlsCheck::Offered,
                            reason: "STARTTLS not offered".into(),
                            peer: None,
                        },
                        host,
                        addr,
                    ));
                }
                Some((c, true))
            }
        };
        if let Some((config, required)) = config {
            match starttls(conn, config.clone(), host, addr, required).await? {
                Upgrade::Tls(c, info) => {
                    conn = c;
                    if let Some(log) = conn.log.as_mut() {
                        log.info(&format!("TLS negotiated: {} {}", info.version, info.cipher));
                    }
                    tls = Some(info);
                    // RFC 3207 §4.2: forget what the server said before TLS; EHLO again.
                    ext = hello(&mut conn, cfg).await?;
                }
                Upgrade::Refused(c) => conn = c,
            }
        }
        if cfg.requiretls {
            check_requiretls(tls.is_some(), &ext, host, addr)?;
        }
        if let Some(auth) = &cfg.auth {
            authenticate(&mut conn, &ext, auth, tls.is_some(), host).await?;
        }
        Ok(Established {
            conn,
            ext,
            tls: tls.clone(),
            messages: 0,
        })
    }
    .await;
    let result = match result {
        Err(e) if cfg.requiretls => Err(requiretls_failure(e)),
        other => other,
    };
    (tls, result)
}

/// RFC 8689 §4.1 step 4: after STARTTLS the EHLO reply must offer REQUIRETLS.
fn check_requiretls(
    under_tls: bool,
    ext: &Extensions,
    host: &str,
    addr: SocketAddr,
) -> Result<(), SessionError> {
    let text = if !under_tls {
        "no TLS session"
    } else if !ext.requiretls {
        "REQUIRETLS not offered after STARTTLS"
    } else {
        return Ok(());
    };
    Err(SessionError::local(
        Stage::StartTls,
        REQUIRETLS_STATUS,
        format!("REQUIRETLS: {text} (host {host}, ip {})", addr.ip()),
    ))
}

/// The status of a REQUIRETLS message refused by a next hop (replies.md; RFC 8689 §6
/// "REQUIRETLS support required").
pub const REQUIRETLS_STATUS: &str = "5.7.30";

/// A REQUIRETLS message and a host that cannot carry it: no STARTTLS, a certificate that
/// failed validation (chain, dates, revocation, name). RFC 8689 §4.1: such a host is
/// skipped for the next one, and when none is left the message is returned to its sender,
/// so the failure is permanent (`5.7.30`) with the next host still tried. A handshake that
/// broke (a network fault, not the host's policy) stays temporary, as do connection-level
/// failures: the host may carry the message on a later attempt.
fn requiretls_failure(mut e: SessionError) -> SessionError {
    let policy = e
        .tls_failure
        .as_ref()
        .is_some_and(|f| f.check != TlsCheck::Handshake);
    if policy {
        e.failure.text = format!("REQUIRETLS: {}", e.failure.text);
        e.failure.enhanced = REQUIRETLS_STATUS.to_string();
        e.permanent = true;
    }
    e
}

/// AUTH (RFC 4954) with PLAIN (RFC 4616, initial response) when offered, else LOGIN.
///
/// Failures are temporary (`4.7.0`, the next smart host may be tried): a wrong or expired
/// password is fixed by an administrator, and Exchange too keeps the message queued for
/// retry; at `MessageExpirationTimeout` the sender gets an NDR with the last reply.
/// `BasicAuthRequireTLS` outside TLS fails before anything is sent.
async fn authenticate(
    conn: &mut Conn,
    ext: &Extensions,
    auth: &SmtpAuth,
    under_tls: bool,
    host: &str,
) -> Result<(), SessionError> {
    let fail = |text: String| SessionError::local(Stage::Auth, "4.7.0", text);
    if auth.require_tls && !under_tls {
        return Err(fail(format!(
            "BasicAuthRequireTLS: TLS not established with {host}; credentials not sent"
        )));
    }
    let plain = ext.auth.iter().any(|m| m == "PLAIN");
    if !plain && !ext.auth.iter().any(|m| m == "LOGIN") {
        return Err(fail(format!(
            "{host} does not offer AUTH PLAIN or LOGIN (offered: {})",
            if ext.auth.is_empty() {
                "none".to_string()
            } else {
                ext.auth.join(" ")
            }
        )));
    }
    let refused = |r: &Reply| fail(format!("authentication failed at {host}: {}", r.to_line()));
    conn.sasl = true;
    let result = async {
        if plain {
            let msg = sasl::encode(&sasl::plain_message(&auth.user, auth.password.expose()));
            conn.send_redacted(
                Stage::Auth,
                format!("AUTH PLAIN {msg}\r\n").as_bytes(),
                "AUTH PLAIN <redacted>",
            )
            .await?;
        } else {
            conn.send(Stage::Auth, b"AUTH LOGIN\r\n").await?;
            for answer in [auth.user.as_str(), auth.password.expose()] {
                let r = conn
                    .read_reply(Stage::Auth, "waiting for an AUTH LOGIN challenge")
                    .await?;
                if r.code != 334 {
                    return Err(refused(&r));
                }
                let line = format!("{}\r\n", sasl::encode(answer.as_bytes()));
                conn.send_redacted(Stage::Auth, line.as_bytes(), "<redacted>")
                    .await?;
            }
        }
        let r = conn
            .read_reply(Stage::Auth, "waiting for the AUTH result")
            .await?;
        if r.code == 334 {
            // A challenge we did not expect: cancel the exchange (RFC 4954 §4).
            let _ = conn.send_redacted(Stage::Auth, b"*\r\n", "*").await;
            let _ = conn.read_reply(Stage::Auth, "after cancelling AUTH").await;
            return Err(refused(&r));
        }
        if r.code != 235 {
            return Err(refused(&r));
        }
        Ok(())
    }
    .await;
    conn.sasl = false;
    result
}

/// Stage 1: TCP connection, bound to `source_ip` when set and of the same family.
pub async fn connect(
    addr: SocketAddr,
    cfg: &ClientConfig,
) -> Result<tokio::net::TcpStream, SessionError> {
    let connect_err = |e: io::Error| {
        SessionError::local(
            Stage::Connect,
            "4.4.316",
            format!("cannot connect to {addr}: {e}"),
        )
    };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(connect_err)?;
    if let Some(src) = cfg.source_ip.filter(|s| s.is_ipv4() == addr.is_ipv4()) {
        socket.bind(SocketAddr::new(src, 0)).map_err(connect_err)?;
    }
    match timeout(cfg.connect_timeout, socket.connect(addr)).await {
        Ok(Ok(stream)) => {
            // Commands are small and latency-bound; pipelined batches are one write anyway.
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(e)) => Err(connect_err(e)),
        Err(_) => Err(SessionError::local(
            Stage::Connect,
            "4.4.315",
            format!("connection to {addr} timed out"),
        )),
    }
}

/// Stage 2: the server greeting must be 220 (RFC 5321 §3.1, §4.3.2 "CONNECTION ESTABLISHMENT
/// S: 220 E: 554").
pub async fn greet(conn: &mut Conn) -> Result<Reply, SessionError> {
    let reply = conn
        .read_reply(Stage::Greeting, "waiting for the greeting")
        .await?;
    if reply.code != 220 {
        return Err(SessionError::remote(Stage::Greeting, &reply));
    }
    conn.expect_silence(Stage::Greeting, "after its greeting")?;
    Ok(reply)
}

/// Stage 3: EHLO, falling back to HELO when EHLO is rejected with 5xx (RFC 5321 §3.2).
/// An EHLO answer whose lines all end the reply (`250 ` instead of `250-`) is several
/// replies: the stray ones are caught by the silence check of [`Conn::command`].
pub async fn hello(conn: &mut Conn, cfg: &ClientConfig) -> Result<Extensions, SessionError> {
    if !cfg.force_helo {
        let line = format!("EHLO {}\r\n", cfg.helo_name);
        let reply = conn
            .command(Stage::Hello, &line, "EHLO", Expect::Completion)
            .await?;
        if reply.code == 250 {
            return Ok(Extensions::parse(&reply));
        }
        if !reply.is_permanent() {
            return Err(SessionError::remote(Stage::Hello, &reply));
        }
    }
    let line = format!("HELO {}\r\n", cfg.helo_name);
    let reply = conn
        .command(Stage::Hello, &line, "HELO", Expect::Completion)
        .await?;
    if reply.code != 250 {
        return Err(SessionError::remote(Stage::Hello, &reply));
    }
    Ok(Extensions::default())
}

/// The result of a STARTTLS exchange.
pub enum Upgrade {
    /// The session continues under TLS.
    Tls(Conn, TlsInfo),
    /// The server refused STARTTLS (opportunistic only): the plaintext session continues.
    Refused(Conn),
}

/// Stage 4: STARTTLS (RFC 3207) and the TLS handshake.
///
/// Response injection (CVE-2011-0411 class, the "STARTTLS injection" bugs): any byte the
/// server sent after its 220 reply was written before the handshake and must not be read as
/// a reply inside TLS; here it is a protocol error.
pub async fn starttls(
    mut conn: Conn,
    config: Arc<rustls::ClientConfig>,
    host: &str,
    addr: SocketAddr,
    required: bool,
) -> Result<Upgrade, SessionError> {
    let fail = |mut e: SessionError| {
        if required {
            e
        } else {
            e.tls_fallback = true;
            e
        }
    };
    conn.send(Stage::StartTls, b"STARTTLS\r\n").await?;
    let reply = conn
        .read_reply(Stage::StartTls, "waiting for the STARTTLS reply")
        .await?;
    if reply.code != 220 {
        if !required {
            // RFC 3207 §4: after a refusal the session continues in plaintext.
            return Ok(Upgrade::Refused(conn));
        }
        let e = SessionError::tls(
            TlsFailure {
                status: "4.4.317",
                check: TlsCheck::Offered,
                reason: format!("STARTTLS refused: {}", reply.to_line()),
                peer: None,
            },
            host,
            addr,
        );
        return Err(e);
    }
    let timeout_dur = conn.timeout;
    let data_end = conn.data_end_timeout;
    let mut log = conn.log.take();
    let io = conn.into_io().map_err(fail)?;
    let server_name = ServerName::try_from(host.to_string())
        .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
    let connector = tokio_rustls::TlsConnector::from(config);
    let stream = match timeout(timeout_dur, connector.connect(server_name, io)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            if let Some(log) = log.as_mut() {
                log.info(&format!("TLS handshake failed: {e}"));
            }
            return Err(fail(SessionError::tls(classify_tls_error(&e), host, addr)));
        }
        Err(_) => {
            let failure = TlsFailure {
                status: "4.4.317",
                check: TlsCheck::Handshake,
                reason: "TLS handshake failed: timed out".into(),
                peer: None,
            };
            return Err(fail(SessionError::tls(failure, host, addr)));
        }
    };
    let (_, session) = stream.get_ref();
    let peer_cert = session.peer_certificates().and_then(|c| c.first());
    let info = TlsInfo {
        // Spelled as inbound sessions spell it, so reports count both directions alike.
        version: crate::smtp::tls::version_name(session.protocol_version()),
        cipher: session
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
        peer_names: peer_cert.map(certificate_names).unwrap_or_default(),
        peer: peer_cert.and_then(PeerCertificate::from_der),
        chain: Arc::new(session.peer_certificates().unwrap_or_default().to_vec()),
    };
    let mut conn = Conn::new(Box::new(stream), timeout_dur);
    conn.set_data_end_timeout(data_end);
    conn.log = log;
    Ok(Upgrade::Tls(conn, info))
}

/// Does the address need SMTPUTF8 (RFC 6531)?
fn needs_utf8(addr: &str) -> bool {
    !addr.is_ascii()
}

/// Stage 5: the envelope (MAIL FROM, RCPT TO, DATA), then the message. Returns one status
/// per recipient; `Err` when the whole transaction failed (MAIL FROM rejected, connection
/// lost before the message was sent, replies out of step with the commands).
///
/// A recipient is delivered only when the server answered `354` to DATA, the whole message
/// was sent, and a 2xx came back as the reply to the final "." — every reply counted against
/// its command, pipelined or not, and any sign that they no longer line up (a stray reply,
/// a reply of the wrong kind) fails the transaction as temporary: a duplicate is acceptable,
/// a loss is not.
pub async fn transaction(
    conn: &mut Conn,
    ext: &Extensions,
    env: &Envelope<'_>,
) -> Result<Vec<DeliveryStatus>, SessionError> {
    check_envelope(ext, env)?;
    let mail = mail_command(ext, env);
    // Recipients that cannot be sent to this server at all (non-ASCII without SMTPUTF8).
    let mut statuses: Vec<Option<DeliveryStatus>> = env
        .recipients
        .iter()
        .map(|r| (needs_utf8(r) && !ext.smtputf8).then(utf8_recipient_refused))
        .collect();
    let to_send: Vec<usize> = (0..env.recipients.len())
        .filter(|&i| statuses[i].is_none())
        .collect();
    if to_send.is_empty() {
        return Ok(statuses.into_iter().flatten().collect());
    }
    let rcpts: Vec<String> = to_send
        .iter()
        .map(|&i| format!("RCPT TO:<{}>\r\n", env.recipients[i]))
        .collect();

    let data_reply = if ext.pipelining {
        pipelined_envelope(conn, &mail, &rcpts, &to_send, &mut statuses).await?
    } else {
        lockstep_envelope(conn, &mail, &rcpts, &to_send, &mut statuses).await?
    };
    let accepted: Vec<usize> = to_send
        .iter()
        .copied()
        .filter(|&i| statuses[i].is_none())
        .collect();
    let outcome = match data_reply {
        Some(reply) if reply.code == 354 && accepted.is_empty() => {
            // RFC 2920 §3.1: DATA was accepted although no RCPT was: end the empty message
            // so the server discards it, then reset.
            conn.send(Stage::Data, b".\r\n").await?;
            let _ = conn
                .answer(Stage::Data, "an empty DATA", Expect::Completion)
                .await;
            None
        }
        Some(reply) if reply.code == 354 => Some(send_data(conn, env.data).await?),
        // DATA refused: that is the answer for every accepted recipient.
        Some(reply) => Some(reply),
        None => None, // lock-step, nobody accepted: DATA was not sent
    };
    match outcome {
        Some(reply) if !accepted.is_empty() => {
            for &i in &accepted {
                statuses[i] = Some(reply.to_status());
            }
        }
        _ => rset(conn).await?,
    }
    Ok(statuses
        .into_iter()
        .map(|s| s.unwrap_or_else(|| DeliveryStatus::Temporary(no_result())))
        .collect())
}

/// What the server said it cannot take, checked before anything is sent: the size it
/// announced (RFC 1870 §6.2) and a non-ASCII sender without SMTPUTF8 (RFC 6531 §3.2).
fn check_envelope(ext: &Extensions, env: &Envelope<'_>) -> Result<(), SessionError> {
    // RFC 8689 §4.1: never hand a REQUIRETLS message to a server that did not offer it
    // (the parameter would be refused, or worse, dropped by a careless server).
    if env.requiretls && !ext.requiretls {
        return Err(SessionError::local(
            Stage::Mail,
            REQUIRETLS_STATUS,
            "REQUIRETLS: the server did not offer REQUIRETLS",
        ));
    }
    if let Some(limit) = ext.size.filter(|&l| l > 0)
        && env.data.len() > limit
    {
        let text = format!(
            "message size {} exceeds the remote limit of {limit} bytes",
            env.data.len()
        );
        return Err(SessionError::local(Stage::Mail, "5.3.4", text).no_retry());
    }
    if needs_utf8(env.mail_from) && !ext.smtputf8 {
        return Err(SessionError::local(
            Stage::Mail,
            "5.6.7",
            "the sender address is not ASCII and the server does not support SMTPUTF8",
        )
        .no_retry());
    }
    Ok(())
}

/// `MAIL FROM:<...>` with the parameters the server announced support for.
fn mail_command(ext: &Extensions, env: &Envelope<'_>) -> String {
    let utf8 = needs_utf8(env.mail_from) || env.recipients.iter().any(|r| needs_utf8(r));
    let mut mail = format!("MAIL FROM:<{}>", env.mail_from);
    if ext.size.is_some() {
        mail.push_str(&format!(" SIZE={}", env.data.len()));
    }
    // RFC 6152: declare 8-bit bodies when the server supports it. A server without 8BITMIME
    // gets the bytes as they are (no downgrade to quoted-printable is attempted).
    if ext.eight_bit_mime && !env.data.is_ascii() {
        mail.push_str(" BODY=8BITMIME");
    }
    if utf8 && ext.smtputf8 {
        mail.push_str(" SMTPUTF8");
    }
    if env.requiretls {
        mail.push_str(" REQUIRETLS");
    }
    mail.push_str("\r\n");
    mail
}

fn utf8_recipient_refused() -> DeliveryStatus {
    DeliveryStatus::Permanent(Failure {
        code: None,
        enhanced: "5.6.7".into(),
        text: "non-ASCII recipient address and the server does not support SMTPUTF8".into(),
    })
}

fn no_result() -> Failure {
    Failure {
        code: None,
        enhanced: "4.5.0".into(),
        text: "no result for this recipient".into(),
    }
}

/// The kind of reply a command may get (RFC 5321 §4.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// MAIL, RCPT, RSET, the end of data: a completion (2xx) or a failure (4xx, 5xx).
    Completion,
    /// DATA: `354` (start mail input) or a failure. A 2xx to DATA is not an acceptance of
    /// anything — the message has not been sent — so it can only be a reply out of step.
    StartInput,
}

impl Expect {
    fn admits(self, reply: &Reply) -> bool {
        match self {
            Expect::Completion => !reply.is_intermediate(),
            Expect::StartInput => reply.code == 354 || reply.code >= 400,
        }
    }
}

/// RFC 2920: MAIL, every RCPT and DATA in one write (DATA is the last command of the group),
/// then the replies, read in order, one per command. Returns the reply to DATA.
async fn pipelined_envelope(
    conn: &mut Conn,
    mail: &str,
    rcpts: &[String],
    to_send: &[usize],
    statuses: &mut [Option<DeliveryStatus>],
) -> Result<Option<Reply>, SessionError> {
    let mut batch =
        String::with_capacity(mail.len() + rcpts.iter().map(String::len).sum::<usize>() + 6);
    batch.push_str(mail);
    for r in rcpts {
        batch.push_str(r);
    }
    batch.push_str("DATA\r\n");
    conn.send(Stage::Mail, batch.as_bytes()).await?;

    let mail_reply = conn
        .answer(Stage::Mail, "MAIL FROM", Expect::Completion)
        .await?;
    let mail_ok = mail_reply.is_positive();
    for &i in to_send {
        match conn
            .answer(Stage::Rcpt, "RCPT TO", Expect::Completion)
            .await
        {
            Ok(r) => statuses[i] = (!r.is_positive()).then(|| r.to_status()),
            // After a rejected MAIL the rest only matters for staying in sync.
            Err(_) if !mail_ok => return Err(mail_error(&mail_reply)),
            Err(e) => return Err(e),
        }
    }
    let data_reply = conn.answer(Stage::Data, "DATA", Expect::StartInput).await;
    if !mail_ok {
        if matches!(&data_reply, Ok(r) if r.code == 354) {
            // A broken server accepted DATA after rejecting MAIL: end the empty message.
            let _ = conn.send(Stage::Data, b".\r\n").await;
            let _ = conn.read_reply(Stage::Data, "after an empty DATA").await;
        }
        return Err(mail_error(&mail_reply));
    }
    let data_reply = data_reply?;
    conn.expect_silence(Stage::Data, "after its reply to DATA")?;
    Ok(Some(data_reply))
}

/// MAIL FROM was rejected: 5xx is final for every recipient; 4xx may be tried elsewhere.
fn mail_error(reply: &Reply) -> SessionError {
    let e = SessionError::remote(Stage::Mail, reply);
    if reply.is_permanent() {
        e.no_retry()
    } else {
        e
    }
}

/// Without PIPELINING: one command, one reply, then silence (RFC 5321 §4.1.1.2-4). Returns
/// the reply to DATA, or `None` when no recipient was accepted (DATA not sent).
async fn lockstep_envelope(
    conn: &mut Conn,
    mail: &str,
    rcpts: &[String],
    to_send: &[usize],
    statuses: &mut [Option<DeliveryStatus>],
) -> Result<Option<Reply>, SessionError> {
    let reply = conn
        .command(Stage::Mail, mail, "MAIL FROM", Expect::Completion)
        .await?;
    if !reply.is_positive() {
        return Err(mail_error(&reply));
    }
    for (cmd, &i) in rcpts.iter().zip(to_send) {
        let r = conn
            .command(Stage::Rcpt, cmd, "RCPT TO", Expect::Completion)
            .await?;
        statuses[i] = (!r.is_positive()).then(|| r.to_status());
    }
    if to_send.iter().all(|&i| statuses[i].is_some()) {
        return Ok(None);
    }
    let reply = conn
        .command(Stage::Data, "DATA\r\n", "DATA", Expect::StartInput)
        .await?;
    Ok(Some(reply))
}

/// Stage 6: the message itself, dot-stuffed, then the reply to the final ".".
/// Errors here are never retried elsewhere: the server may already hold the message.
pub async fn send_data(conn: &mut Conn, data: Data<'_>) -> Result<Reply, SessionError> {
    let mut written = 0;
    let sent = write_message(conn, data, &mut written).await;
    if let Some(log) = conn.log.as_mut() {
        log.info(&format!("message data: {written} bytes"));
    }
    sent.map_err(SessionError::no_retry)?;
    let limit = conn.data_end_timeout;
    let what = "waiting for the reply to the end of data";
    let reply = conn
        .read_reply_within(Stage::Data, what, limit)
        .await
        .and_then(|r| conn.check(Stage::Data, "the end of data", r, Expect::Completion))
        .map_err(SessionError::no_retry)?;
    // A second reply right behind it means the one just read may have been sent early,
    // before the server had the message: in doubt, not delivered. A 421 closing notice is
    // no reply: the answer stands and only the connection is finished.
    match conn.expect_silence(Stage::Data, "after its reply to the end of data") {
        Ok(()) => Ok(reply),
        Err(e) if e.failure.code == Some(421) => Ok(reply),
        Err(e) => Err(e.no_retry()),
    }
}

/// Writes the message in [`DATA_CHUNK`]-sized pieces, read from memory or the spool file
/// (`message::data`) and dot-stuffed as they go by one [`DotStuffer`], which carries the
/// line state across the cuts: neither the message nor a stuffed copy of it is ever whole
/// in memory. Each piece is written under the command timeout; `written` counts the bytes
/// sent. The message is not protocol: it is never written to the protocol log.
///
/// Before the last piece (it holds the final "."), the server must still be silent: a reply
/// sent during the message cannot answer it, and as long as the final "." is not sent the
/// server cannot keep the message, so stopping there loses nothing. The same holds for a
/// spool file that cannot be read: the transfer stops without its final ".", deferred.
async fn write_message(
    conn: &mut Conn,
    data: Data<'_>,
    written: &mut usize,
) -> Result<(), SessionError> {
    let mut pieces = StuffedPieces::new(data);
    // One buffer for every piece: a chunk, its added dots, and the end of data.
    let mut piece = Vec::with_capacity(DATA_CHUNK + DATA_CHUNK / 2);
    loop {
        let last = pieces.next_into(&mut piece).await.map_err(|e| {
            SessionError::local(Stage::Data, "4.3.0", format!("message not sent: {e}"))
        })?;
        if last {
            conn.expect_silence(Stage::Data, "while the message was being sent")?;
        }
        conn.write(Stage::Data, &piece).await?;
        *written += piece.len();
        if last {
            return Ok(());
        }
    }
}

/// The message cut into [`DATA_CHUNK`]-sized pieces of data, each dot-stuffed on its own by
/// one [`DotStuffer`] (which carries the line state across the cuts); the last piece ends
/// with the terminating ".".
struct StuffedPieces<'a> {
    pieces: crate::message::data::Pieces<'a>,
    stuffer: DotStuffer,
    chunk: Vec<u8>,
}

impl<'a> StuffedPieces<'a> {
    fn new(data: Data<'a>) -> Self {
        StuffedPieces {
            pieces: data.pieces(DATA_CHUNK),
            stuffer: DotStuffer::default(),
            chunk: Vec::with_capacity(DATA_CHUNK),
        }
    }

    /// Replaces `piece` with the next piece; `true` for the last one (an empty message is
    /// one piece: the terminator). Not to be called after the last.
    async fn next_into(&mut self, piece: &mut Vec<u8>) -> io::Result<bool> {
        self.pieces.next_into(&mut self.chunk).await?;
        piece.clear();
        self.stuffer.push(&self.chunk, piece);
        let last = self.pieces.done();
        if last {
            std::mem::take(&mut self.stuffer).finish(piece);
        }
        Ok(last)
    }
}

/// RFC 5321 §4.5.2 transparency, piece by piece: a line starting with "." gets another
/// "."; at the end the data is made to end with CRLF and the terminating ".\r\n" is
/// appended (§4.1.1.4). The last byte (and the one before it) of the data seen so far is
/// kept, so a line start that falls on the boundary between two pieces is still seen.
///
/// Lines are taken to start after any LF and after a bare CR as well, so a message holding
/// `\n.\r\n` or `\r.\r\n` cannot end the transfer early at a lenient receiver (SMTP
/// smuggling).
#[derive(Debug, Default)]
pub struct DotStuffer {
    /// The last two bytes of the data so far, the latest last (`None`: not that many yet).
    tail: [Option<u8>; 2],
}

impl DotStuffer {
    /// Appends the stuffed form of the next piece of data to `out`.
    pub fn push(&mut self, piece: &[u8], out: &mut Vec<u8>) {
        let mut from = 0;
        for (i, &b) in piece.iter().enumerate() {
            if b != b'.' {
                continue;
            }
            let before = if i == 0 {
                self.tail[1]
            } else {
                Some(piece[i - 1])
            };
            if matches!(before, None | Some(b'\n' | b'\r')) {
                out.extend_from_slice(&piece[from..i]);
                out.push(b'.');
                from = i;
            }
        }
        out.extend_from_slice(&piece[from..]);
        match *piece {
            [] => {}
            [b] => self.tail = [self.tail[1], Some(b)],
            [.., a, b] => self.tail = [Some(a), Some(b)],
        }
    }

    /// Appends the end of the data: the missing end of its last line, if any, then ".\r\n".
    pub fn finish(self, out: &mut Vec<u8>) {
        match self.tail {
            [_, None] | [Some(b'\r'), Some(b'\n')] => {}
            [_, Some(b'\r')] => out.push(b'\n'),
            _ => out.extend_from_slice(b"\r\n"),
        }
        out.extend_from_slice(b".\r\n");
    }
}

/// The whole message dot-stuffed and terminated in one buffer ([`DotStuffer`] in one
/// piece), for callers that hold small messages.
pub fn dot_stuff(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + data.len() / 64 + 5);
    let mut stuffer = DotStuffer::default();
    stuffer.push(data, &mut out);
    stuffer.finish(&mut out);
    out
}

/// RSET (RFC 5321 §4.1.1.5) after a transaction that delivered nothing. Its reply does not
/// matter, but a reply out of step does: the recipients' results read before may be wrong.
async fn rset(conn: &mut Conn) -> Result<(), SessionError> {
    if conn.send(Stage::Data, b"RSET\r\n").await.is_ok() {
        let answered = conn.answer(Stage::Data, "RSET", Expect::Completion).await;
        if conn.out_of_sync {
            return answered.map(drop);
        }
    }
    Ok(())
}

/// Stage 7: QUIT (RFC 5321 §4.1.1.10); errors are ignored, the work is done. A connection
/// out of step gets no QUIT: the server might take it as message text.
pub async fn quit(conn: &mut Conn) {
    if !conn.out_of_sync && conn.send(Stage::Data, b"QUIT\r\n").await.is_ok() {
        let short = conn.timeout.min(Duration::from_secs(5));
        let _ = conn
            .read_reply_within(Stage::Data, "waiting for the QUIT reply", short)
            .await;
    }
    let _ = timeout(Duration::from_secs(1), conn.io.shutdown()).await;
    if let Some(log) = conn.log.as_mut() {
        log.info("connection closed");
    }
}

/// An SMTP connection: the stream plus a reply reader, every read and write under a timeout.
pub struct Conn {
    io: Box<dyn Io>,
    reader: ReplyReader,
    timeout: Duration,
    data_end_timeout: Duration,
    /// Protocol log of this session, if the connector logs.
    log: Option<LogSession>,
    /// In a SASL exchange: server challenges are logged as `<redacted>`.
    sasl: bool,
    /// The server's replies no longer line up with our commands: the connection is closed
    /// without another command (QUIT could even be taken as message text).
    out_of_sync: bool,
}

impl Conn {
    pub fn new(io: Box<dyn Io>, timeout: Duration) -> Self {
        Conn {
            io,
            reader: ReplyReader::default(),
            timeout,
            data_end_timeout: timeout.max(Duration::from_secs(600)),
            log: None,
            sasl: false,
            out_of_sync: false,
        }
    }

    /// Sets the wait for the reply to the final "." (defaults to max(timeout, 10 minutes)).
    pub fn set_data_end_timeout(&mut self, d: Duration) {
        self.data_end_timeout = d;
    }

    /// The stream, for the TLS handshake. Bytes already buffered would be a response
    /// injection (RFC 3207 §4.2 / CVE-2011-0411 class): refused.
    pub fn into_io(mut self) -> Result<Box<dyn Io>, SessionError> {
        self.poll_unsolicited();
        if !self.reader.is_empty() {
            return Err(SessionError::protocol(
                Stage::StartTls,
                format!(
                    "the server sent {} bytes after its STARTTLS reply (response injection)",
                    self.reader.buffered()
                ),
            ));
        }
        Ok(self.io)
    }

    /// Writes all of `bytes` and flushes, under the command timeout. Each line is logged.
    pub async fn send(&mut self, stage: Stage, bytes: &[u8]) -> Result<(), SessionError> {
        if let Some(log) = self.log.as_mut() {
            for line in String::from_utf8_lossy(bytes).split("\r\n") {
                if !line.is_empty() {
                    log.sent(line);
                }
            }
        }
        self.write(stage, bytes).await
    }

    /// Like [`Conn::send`], logging `shown` instead of the bytes (credentials).
    pub async fn send_redacted(
        &mut self,
        stage: Stage,
        bytes: &[u8],
        shown: &str,
    ) -> Result<(), SessionError> {
        if let Some(log) = self.log.as_mut() {
            log.sent(shown);
        }
        self.write(stage, bytes).await
    }

    async fn write(&mut self, stage: Stage, bytes: &[u8]) -> Result<(), SessionError> {
        let write = async {
            self.io.write_all(bytes).await?;
            self.io.flush().await
        };
        match timeout(self.timeout, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(SessionError::io(stage, "while sending", &e)),
            Err(_) => Err(SessionError::timeout(stage, "while sending")),
        }
    }

    /// Reads one complete (possibly multi-line) reply under the command timeout.
    pub async fn read_reply(&mut self, stage: Stage, what: &str) -> Result<Reply, SessionError> {
        let t = self.timeout;
        self.read_reply_within(stage, what, t).await
    }

    /// Reads one reply; each read waits at most `limit` (inactivity timeout).
    pub async fn read_reply_within(
        &mut self,
        stage: Stage,
        what: &str,
        limit: Duration,
    ) -> Result<Reply, SessionError> {
        loop {
            let (log, sasl) = (&mut self.log, self.sasl);
            let next = self.reader.next_reply(|line| {
                if let Some(log) = log.as_mut() {
                    // A server challenge may echo a credential.
                    let redact = sasl && line.starts_with("334");
                    log.received(if redact { "334 <redacted>" } else { line });
                }
            });
            match next {
                Ok(Some(reply)) => return Ok(reply),
                Ok(None) => {}
                Err(e) => return Err(self.desync(stage, format!("{e} {what}"))),
            }
            let mut chunk = [0u8; 4096];
            match timeout(limit, self.io.read(&mut chunk)).await {
                Ok(Ok(0)) => {
                    let eof = io::Error::from(io::ErrorKind::UnexpectedEof);
                    return Err(SessionError::io(stage, what, &eof));
                }
                Ok(Ok(n)) => self.reader.feed(&chunk[..n]),
                Ok(Err(e)) => return Err(SessionError::io(stage, what, &e)),
                Err(_) => return Err(SessionError::timeout(stage, what)),
            }
        }
    }

    /// Reads the reply to `command` and checks it is of a kind that command can get.
    pub async fn answer(
        &mut self,
        stage: Stage,
        command: &str,
        expect: Expect,
    ) -> Result<Reply, SessionError> {
        let what = format!("waiting for the {command} reply");
        let reply = self.read_reply(stage, &what).await?;
        self.check(stage, command, reply, expect)
    }

    /// `reply` if `expect` admits it; otherwise the replies are out of step with the
    /// commands (a stray or missing reply earlier) and the connection is finished.
    pub fn check(
        &mut self,
        stage: Stage,
        command: &str,
        reply: Reply,
        expect: Expect,
    ) -> Result<Reply, SessionError> {
        if expect.admits(&reply) {
            return Ok(reply);
        }
        let line = super::reply::preview(&reply.to_line());
        Err(self.desync(
            stage,
            format!("lost synchronization: unexpected reply to {command}: {line:?}"),
        ))
    }

    /// One command of a lock-step exchange: sent, answered, then the server is silent.
    pub async fn command(
        &mut self,
        stage: Stage,
        line: &str,
        command: &str,
        expect: Expect,
    ) -> Result<Reply, SessionError> {
        self.send(stage, line.as_bytes()).await?;
        let reply = self.answer(stage, command, expect).await?;
        self.expect_silence(stage, &format!("after its reply to {command}"))?;
        Ok(reply)
    }

    /// The server must be silent now (it owes no reply: every command sent so far has had
    /// its answer). Input already buffered, or readable at once, is a reply nobody asked
    /// for: the server and the client no longer agree on which reply answers which command
    /// (Postfix: "lost synchronization"), so no later reply can be trusted.
    ///
    /// Checks without waiting: input that arrives later is caught by the next check, by
    /// the reply classes of [`expect_reply`], or by the check before a reused connection's
    /// next transaction.
    pub fn expect_silence(&mut self, stage: Stage, after: &str) -> Result<(), SessionError> {
        if self.reader.is_empty() {
            self.poll_unsolicited();
        }
        if self.reader.is_empty() {
            return Ok(());
        }
        let seen = self.reader.buffered_preview();
        if let Some(notice) = self.closing_notice() {
            return Err(SessionError::remote(stage, &notice));
        }
        Err(self.desync(
            stage,
            format!("lost synchronization: the server sent {seen:?} {after} without being asked"),
        ))
    }

    /// RFC 5321 §3.8: a server that is being shut down may send `421` unasked, at any
    /// moment. When exactly that is buffered it is a notice, not a reply out of step; either
    /// way the connection is finished (no QUIT, not reused).
    fn closing_notice(&mut self) -> Option<Reply> {
        self.out_of_sync = true;
        let notice = self.reader.next_reply(|_| {}).ok().flatten()?;
        if notice.code != 421 || !self.reader.is_empty() {
            return None;
        }
        if let Some(log) = self.log.as_mut() {
            log.received(&notice.to_line());
        }
        Some(notice)
    }

    /// Can this connection carry another transaction?
    pub fn usable(&self) -> bool {
        !self.out_of_sync
    }

    /// Reads what the server has sent if it is there right now, without waiting
    /// ([`crate::now::now_or_never`]). End of file and errors are left for the next real
    /// read to report.
    fn poll_unsolicited(&mut self) {
        let mut chunk = [0u8; 512];
        if let Some(Ok(n)) = crate::now::now_or_never(self.io.read(&mut chunk)) {
            self.reader.feed(&chunk[..n]);
        }
    }

    /// A protocol error that leaves the connection unusable: logged, and remembered so that
    /// no QUIT is sent on it.
    fn desync(&mut self, stage: Stage, text: String) -> SessionError {
        self.out_of_sync = true;
        if let Some(log) = self.log.as_mut() {
            log.info(&text);
        }
        SessionError::protocol(stage, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::data::{FileRange, MessageData};

    /// Inputs and their stuffed, terminated form.
    const STUFFING: &[(&[u8], &[u8])] = &[
        (b"", b".\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
        // Not ending in CRLF: the line is completed.
        (b"a", b"a\r\n.\r\n"),
        (b"a\r", b"a\r\n.\r\n"),
        (b".", b"..\r\n.\r\n"),
        (b"x\r\n.", b"x\r\n..\r\n.\r\n"),
        (
            b".x\r\n..y\r\nz.\r\n.\r\n",
            b"..x\r\n...y\r\nz.\r\n..\r\n.\r\n",
        ),
        // Bare LF / bare CR before a dot (smuggling attempts) are stuffed as well.
        (b"a\n.\r\nb\r\n", b"a\n..\r\nb\r\n.\r\n"),
        (b"a\r.\r\nb\r\n", b"a\r..\r\nb\r\n.\r\n"),
    ];

    fn stuffed_in_pieces(pieces: &[&[u8]]) -> Vec<u8> {
        let (mut out, mut stuffer) = (Vec::new(), DotStuffer::default());
        for p in pieces {
            stuffer.push(p, &mut out);
        }
        stuffer.finish(&mut out);
        out
    }

    #[test]
    fn dot_stuffing() {
        for &(data, want) in STUFFING {
            assert_eq!(dot_stuff(data), want, "{data:?}");
        }
    }

    /// The stuffer carries the line state across pieces: every cut of every input (a "."
    /// at the start of a piece, a CR and its LF in different pieces, empty pieces), and the
    /// input byte by byte, give the same bytes as the input in one piece.
    #[test]
    fn dot_stuffing_across_pieces() {
        for &(data, want) in STUFFING {
            for cut in 0..=data.len() {
                let (a, b) = data.split_at(cut);
                assert_eq!(stuffed_in_pieces(&[a, b]), want, "{data:?} cut at {cut}");
                assert_eq!(
                    stuffed_in_pieces(&[a, b"", b]),
                    want,
                    "{data:?} cut at {cut}"
                );
            }
            let bytes: Vec<&[u8]> = data.chunks(1).collect();
            assert_eq!(stuffed_in_pieces(&bytes), want, "{data:?} byte by byte");
        }
        // A line start right at the cut, after a CRLF that ended the previous piece.
        assert_eq!(
            stuffed_in_pieces(&[b"a\r\n", b".b\r\n"]),
            b"a\r\n..b\r\n.\r\n"
        );
        // A dot at the start of a piece that does not start a line stays as it is.
        assert_eq!(stuffed_in_pieces(&[b"a", b".b"]), b"a.b\r\n.\r\n");
    }

    /// The pieces [`write_message`] sends: a message of several chunks with a line
    /// starting with "." right at a chunk boundary, and not ending in CRLF, comes out as
    /// the whole message stuffed at once; the terminator is only in the last piece; the
    /// pieces stay near the chunk size.
    #[tokio::test]
    async fn stuffed_pieces_of_a_large_message() {
        let mut data = b"Subject: x\r\n\r\n".to_vec();
        while data.len() < DATA_CHUNK - 2 {
            data.extend_from_slice(b"0123456789\r\n");
        }
        data.truncate(DATA_CHUNK - 2);
        data.extend_from_slice(b"\r\n");
        assert_eq!(data.len(), DATA_CHUNK);
        // The second chunk starts with a line that starts with ".".
        data.extend_from_slice(b".hidden\r\n.\r\n");
        for i in 0..2 * DATA_CHUNK {
            data.extend_from_slice(if i % 7 == 0 { b".\r\n" } else { b"ab\r\n" });
        }
        data.extend_from_slice(b"no CRLF at the end");
        let check = |lasts: &[bool], all: &[u8]| {
            assert_eq!(all, dot_stuff(&data));
            assert!(all[DATA_CHUNK..].starts_with(b"..hidden\r\n..\r\n"));
            assert!(all.ends_with(b"no CRLF at the end\r\n.\r\n"));
            assert_eq!(lasts.len(), data.len().div_ceil(DATA_CHUNK));
            assert!(lasts.last() == Some(&true) && lasts.iter().filter(|&&l| l).count() == 1);
        };
        // From memory, and with the body in a spool file behind a short head.
        let (lasts, all) = stuff_all(Data::memory(&data)).await;
        check(&lasts, &all);
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data[14..]).unwrap();
        let rest = FileRange::scan(Arc::new(file), 0, (data.len() - 14) as u64).unwrap();
        let split = MessageData::split(data[..14].to_vec(), rest);
        let (_, all) = stuff_all(split.view()).await;
        assert_eq!(all, dot_stuff(&data));
        // An empty message is one piece: the terminator.
        let (lasts, all) = stuff_all(Data::memory(b"")).await;
        assert_eq!((lasts, all), (vec![true], b".\r\n".to_vec()));
    }

    async fn stuff_all(data: Data<'_>) -> (Vec<bool>, Vec<u8>) {
        let mut pieces = StuffedPieces::new(data);
        let (mut piece, mut all, mut lasts) = (Vec::new(), Vec::new(), Vec::new());
        loop {
            let last = pieces.next_into(&mut piece).await.unwrap();
            assert!(piece.len() <= DATA_CHUNK + DATA_CHUNK / 2 + 5);
            lasts.push(last);
            all.extend_from_slice(&piece);
            if last {
                return (lasts, all);
            }
        }
    }

    #[test]
    fn extensions() {
        let reply = Reply {
            code: 250,
            enhanced: None,
            lines: [
                "mx.test greets you",
                "PIPELINING",
                "size 1000",
                "8BITMIME",
                "STARTTLS",
                "AUTH PLAIN login",
                "SMTPUTF8",
                "ENHANCEDSTATUSCODES",
            ]
            .map(String::from)
            .to_vec(),
        };
        let e = Extensions::parse(&reply);
        assert!(e.pipelining && e.starttls && e.eight_bit_mime && e.smtputf8);
        assert!(e.enhanced_status_codes);
        assert_eq!(e.size, Some(1000));
        assert_eq!(e.auth, ["PLAIN", "LOGIN"]);
    }

    #[tokio::test]
    async fn multi_line_reply_and_limits() {
        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut conn = Conn::new(Box::new(client), Duration::from_secs(5));
        server
            .write_all(b"250-first\r\n250-5.0.0 second\r\n250 last\n550 5.1.1 nope\r\n")
            .await
            .unwrap();
        let r = conn.read_reply(Stage::Hello, "t").await.unwrap();
        assert_eq!(r.code, 250);
        assert_eq!(r.lines, ["first", "5.0.0 second", "last"]);
        let r = conn.read_reply(Stage::Rcpt, "t").await.unwrap();
        assert_eq!(r.to_failure().enhanced, "5.1.1");
        assert_eq!(r.to_line(), "550 5.1.1 nope");

        server.write_all(b"250-a\r\n251 b\r\n").await.unwrap();
        let e = conn.read_reply(Stage::Hello, "t").await.unwrap_err();
        assert_eq!(e.failure.enhanced, "4.5.0");
        assert!(conn.out_of_sync, "a malformed reply ends the connection");

        let (client, mut server) = tokio::io::duplex(1 << 16);
        let mut conn = Conn::new(Box::new(client), Duration::from_secs(5));
        server
            .write_all(&vec![b'2'; super::super::reply::MAX_REPLY_LINE + 10])
            .await
            .unwrap();
        assert!(conn.read_reply(Stage::Hello, "t").await.is_err());
    }

    #[tokio::test]
    async fn read_timeout_and_eof() {
        let (client, server) = tokio::io::duplex(1024);
        let mut conn = Conn::new(Box::new(client), Duration::from_millis(50));
        let e = conn.read_reply(Stage::Greeting, "t").await.unwrap_err();
        assert_eq!(e.failure.enhanced, "4.4.315");
        drop(server);
        let e = conn.read_reply(Stage::Greeting, "t").await.unwrap_err();
        assert_eq!(e.failure.enhanced, "4.4.318");
    }
}
