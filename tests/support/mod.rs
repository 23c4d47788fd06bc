//! Shared test harness: in-process relay and sinks on loopback, a lettre client, a raw
//! SMTP dialog helper that asserts exact replies, and maildir polling.
#![allow(dead_code)]

pub mod browser;
pub mod compose;
pub mod dns;
pub mod docker;
pub mod downstream;
pub mod http;
pub mod https_sink;
pub mod inject;
pub mod mtasts;
pub mod postgres;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use connector_relay::relay::{self, RelayHandle};
use connector_relay::sink::{self, SinkHandle, SinkOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

/// A file of certs-test/; an absolute path (a certificate a test generated) as it is.
pub fn certs(name: &str) -> String {
    if name.starts_with('/') {
        return name.to_string();
    }
    format!("{}/certs-test/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Loads a config from TOML text (the same loader `connector-relay check` uses).
pub fn policy(toml: &str) -> connector_relay::policy::Policy {
    match connector_relay::config::load_str(toml, Path::new("test.toml")) {
        Ok(l) => machine_independent(toml, l.policy),
        Err(errors) => panic!(
            "test config invalid:\n{}\n{toml}",
            errors
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        ),
    }
}

/// A relay config: accepted domain contoso.test routed to `onprem` (smart host), the
/// OnPremises inbound connector for 127.0.0.10, and `extra` appended to `[Relay]`. The admin
/// API listens on a free port (never the fixed default 8025: tests run in parallel) with
/// its token file in `spool`.
pub fn relay_config(spool: &std::path::Path, onprem: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TlsCertificate = "{cert}"
TlsPrivateKey = "{key}"
AcceptedDomains = ["contoso.test"]
SpoolDir = "{spool}"
DataDir = "{spool}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{spool}/admin.token"
TransientFailureRetryInterval = "00:00:01"
MaxRetryInterval = "00:00:02"
{extra}

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{onprem}"]
"#,
        cert = certs("relay.contoso.test.crt"),
        key = certs("relay.contoso.test.key"),
        spool = spool.display(),
    )
}

/// `[Relay]` lines for MX delivery through the loopback DNS server at `dns`, to `port`.
/// A test relay's disk thresholds do not follow the free space of the machine the tests run
/// on (the defaults refuse new mail under 1-2 GB free, which a busy CI disk can reach): off
/// unless the test's config sets them (tests/back_pressure.rs does).
fn machine_independent(
    toml: &str,
    mut policy: connector_relay::policy::Policy,
) -> connector_relay::policy::Policy {
    use connector_relay::policy::Threshold;
    if !toml.contains("DiskSpace") {
        let disk = &mut policy.relay.back_pressure.disk;
        (disk.high, disk.medium, disk.normal) = (Threshold::Off, Threshold::Off, Threshold::Off);
    }
    policy
}

pub fn dns_relay_keys(dns: SocketAddr, port: u16) -> String {
    format!("DeliveryPort = {port}\nDnsServers = [\"{dns}\"]")
}

/// The relay of [`relay_config`] (spool in `dir`, contoso.test to `onprem`), MX-routed
/// mail resolved through the loopback DNS server at `dns` and delivered to `port`.
pub async fn start_relay_with_dns(
    dir: &Path,
    onprem: SocketAddr,
    dns: SocketAddr,
    port: u16,
) -> RelayHandle {
    let toml = relay_config(dir, onprem, &dns_relay_keys(dns, port));
    start_relay(&toml, Some(dns)).await
}

/// Starts the relay in-process, resolving through `dns` when given.
pub async fn start_relay(toml: &str, dns: Option<SocketAddr>) -> RelayHandle {
    let policy = Arc::new(policy(toml));
    let resolver: Arc<dyn connector_relay::dns::Resolver> = Arc::new(
        connector_relay::dns::hickory::HickoryResolver::with_timeout(
            &dns.map(|d| vec![d]).unwrap_or_default(),
            Duration::from_secs(2),
        )
        .expect("resolver"),
    );
    relay::start_with_resolver(policy, resolver)
        .await
        .expect("relay starts")
}

pub struct Sink {
    pub handle: SinkHandle,
    pub dir: tempfile::TempDir,
}

impl Sink {
    pub fn addr(&self) -> SocketAddr {
        self.handle.addr
    }
    pub fn maildir(&self) -> &Path {
        self.dir.path()
    }
}

pub async fn start_sink_with(listen: SocketAddr, tls: bool, hook: Option<sink::RcptHook>) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: Some(listen),
        maildir: dir.path().to_path_buf(),
        tls_cert: tls.then(|| certs("sink.test.crt").into()),
        tls_key: tls.then(|| certs("sink.test.key").into()),
        require_tls: false,
        client_ca: None,
        rcpt_hook: hook,
        ..Default::default()
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

pub async fn start_sink() -> Sink {
    start_sink_with("127.0.0.1:0".parse().unwrap(), false, None).await
}

/// The real relay binary on `config`, logging at `log` level to stderr.
pub fn spawn_relay_binary(config: &Path, log: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("relay binary starts")
}

/// Waits (bounded) until something listens on 127.0.0.1:`port`.
pub async fn wait_listening(port: u16) {
    for _ in 0..400 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("relay did not start listening on {port}");
}

/// Writes the kill -9 tests' relay config (listen on `port`, contoso.test to `sink`, short
/// retries) into `dir` and returns its path.
pub fn write_kill9_config(dir: &Path, port: u16, sink: SocketAddr) -> PathBuf {
    let cfg = format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:{port}"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{spool}"
DataDir = "{spool}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{spool}/admin.token"
TransientFailureRetryInterval = "00:00:01"
MaxRetryInterval = "00:00:02"

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{sink}"]
"#,
        spool = dir.join("spool").display(),
    );
    let path = dir.join("relay.toml");
    std::fs::write(&path, cfg).unwrap();
    path
}

/// A port that is free on every 127.0.0.x address right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Messages (file contents) in a maildir, sorted by name.
pub fn messages(dir: &Path) -> Vec<String> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "eml"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Waits until the maildir holds at least `n` messages (bounded wait; the assertion that
/// follows decides pass or fail).
pub async fn wait_messages(dir: &Path, n: usize, limit: Duration) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let m = messages(dir);
        if m.len() >= n || tokio::time::Instant::now() > deadline {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The values of every `name:` header line of a message (unfolded lines only), in order.
pub fn header_values<'a>(message: &'a str, name: &str) -> Vec<&'a str> {
    message
        .lines()
        .filter_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(": ")))
        .collect()
}

/// A relayed message (a sink file) split into its header block without the sink's
/// `X-Sink-*` lines and the relay's `Received:` header (dynamic ids and dates), and its
/// body.
pub fn split_relayed(msg: &str) -> (String, String) {
    let (head, body) = msg.split_once("\r\n\r\n").unwrap();
    let mut kept = String::new();
    let mut in_received = false;
    for line in head.split("\r\n") {
        if line.starts_with("X-Sink-") {
            continue;
        }
        if line.starts_with("Received:") {
            in_received = true;
            continue;
        }
        if in_received && line.starts_with([' ', '\t']) {
            continue;
        }
        in_received = false;
        kept.push_str(line);
        kept.push_str("\r\n");
    }
    (kept, body.to_string())
}

/// A raw SMTP client that asserts exact reply codes, over TCP or TLS.
pub struct Dialog<S = TcpStream> {
    reader: BufReader<tokio::io::ReadHalf<S>>,
    writer: tokio::io::WriteHalf<S>,
}

impl Dialog<TcpStream> {
    /// Connects from `source` (a 127.0.0.x address plays a distinct sending host).
    pub async fn connect_from(source: IpAddr, to: SocketAddr) -> Dialog {
        let mut d = Dialog::new(tcp_from(source, to).await);
        let greeting = d.read_reply().await;
        assert!(greeting.starts_with("220 "), "greeting: {greeting}");
        d
    }

    pub async fn connect(to: SocketAddr) -> Dialog {
        Self::connect_from("127.0.0.1".parse().unwrap(), to).await
    }

    /// The TCP stream back, for a hand-made TLS handshake.
    pub fn reader_stream(self) -> TcpStream {
        self.reader.into_inner().unsplit(self.writer)
    }

    /// After a `220` to STARTTLS: asserts the server sent nothing more, then handshakes.
    pub async fn starttls(
        self,
        name: &str,
        client_cert: Option<(&str, &str)>,
    ) -> Dialog<TlsStream<TcpStream>> {
        assert!(
            self.reader.buffer().is_empty(),
            "server sent bytes after 220 to STARTTLS"
        );
        let stream = self.reader.into_inner().unsplit(self.writer);
        Dialog::new(
            tls_connect(stream, name, client_cert)
                .await
                .expect("TLS handshake"),
        )
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite> Dialog<S> {
    pub fn new(stream: S) -> Self {
        let (r, w) = tokio::io::split(stream);
        Dialog {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    /// Reads one (possibly multi-line) reply; returns all its lines joined by '\n', or
    /// "<closed>" at end of stream.
    pub async fn read_reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(Duration::from_secs(20), self.reader.read_line(&mut line))
                .await
                .expect("reply within 20 s")
                .unwrap_or(0);
            if n == 0 {
                return all + "<closed>";
            }
            all.push_str(line.trim_end());
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
            all.push('\n');
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.unwrap();
    }

    /// Sends a command and asserts the reply's last line starts with `expect`
    /// (e.g. "250 2.1.5").
    pub async fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes()).await;
        self.expect(expect, line).await
    }

    /// One whole transaction after EHLO/HELO: MAIL, RCPT, DATA with `message` (CRLF lines,
    /// no final dot), each answer asserted as accepted; the reply to the final dot.
    pub async fn send_message(&mut self, from: &str, to: &str, message: &str) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        self.cmd(&format!("RCPT TO:<{to}>"), "250").await;
        self.cmd("DATA", "354").await;
        self.send(message.as_bytes()).await;
        self.send(b"\r\n.\r\n").await;
        self.expect("250", "end of DATA").await
    }

    /// Reads a reply and asserts it starts with `expect`.
    pub async fn expect(&mut self, expect: &str, context: &str) -> String {
        let reply = self.read_reply().await;
        let last = reply.lines().last().unwrap_or("");
        assert!(
            last.starts_with(expect),
            "{context:?}: expected {expect:?}, got {reply:?}"
        );
        reply
    }
}

pub async fn tcp_from(source: IpAddr, to: SocketAddr) -> TcpStream {
    let sock = if to.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .unwrap();
    sock.bind(SocketAddr::new(source, 0)).unwrap();
    sock.connect(to).await.expect("connect")
}

/// A TLS client trusting the test CA, optionally presenting a client certificate
/// (file names in certs-test/), verifying the server as `name`.
pub async fn tls_connect(
    stream: TcpStream,
    name: &str,
    client_cert: Option<(&str, &str)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    tls_connect_with(stream, name, client_cert, rustls::DEFAULT_VERSIONS).await
}

/// `tls_connect` restricted to the given protocol versions.
pub async fn tls_connect_with(
    stream: TcpStream,
    name: &str,
    client_cert: Option<(&str, &str)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> std::io::Result<TlsStream<TcpStream>> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(certs("ca.crt")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots);
    let config = match client_cert {
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(certs(cert))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
            let key = PrivateKeyDer::from_pem_file(certs(key)).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(name.to_string()).unwrap();
    connector.connect(name, stream).await
}

/// Sends one message with lettre (plain SMTP, or STARTTLS required when `tls`).
pub async fn lettre_send(
    relay: SocketAddr,
    from: &str,
    to: &[&str],
    subject: &str,
    tls: bool,
) -> Result<lettre::transport::smtp::response::Response, lettre::transport::smtp::Error> {
    use lettre::message::Mailbox;
    use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
    use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

    let mut builder = Message::builder()
        .from(from.parse::<Mailbox>().unwrap())
        .subject(subject);
    for t in to {
        builder = builder.to(t.parse::<Mailbox>().unwrap());
    }
    let msg = builder
        .body(format!(
            "Hello from the connector-relay tests.\r\nSubject was {subject}.\r\n"
        ))
        .unwrap();
    let mut t = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(relay.ip().to_string())
        .port(relay.port())
        .hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            "client.test".into(),
        ));
    if tls {
        let ca = Certificate::from_pem(&std::fs::read(certs("ca.crt")).unwrap()).unwrap();
        let params = TlsParameters::builder("relay.contoso.test".into())
            .add_root_certificate(ca)
            .build_rustls()
            .unwrap();
        t = t.tls(Tls::Required(params));
    }
    t.timeout(Some(Duration::from_secs(20)))
        .build()
        .send(msg)
        .await
}

/// This process's resident set size in KiB (the relay runs in-process).
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// A tmpfs of `size` (mount's syntax: `64k`, `64m`) mounted on `dir`, unmounted when
/// dropped, however the test ends. `Err` (with mount's words) where tmpfs cannot be
/// mounted (not root): the caller skips with a message naming what covers it instead.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("cannot run mount ({e})"))?;
        if !out.status.success() {
            return Err(format!(
                "cannot mount a tmpfs here ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
