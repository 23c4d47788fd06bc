//! PROXY protocol on the listeners (`[Relay] ProxyProtocolFrom`), over real sockets: a
//! "balancer" is a client bound to 127.0.0.5 that writes a v1 or v2 header by hand, then
//! speaks SMTP for the client whose address the header carries. The relay must use that
//! address for attribution, restrictions, per-source limits, EHLO, Received: and the trace;
//! refuse (421, counted) a listed balancer whose header is missing, malformed or late while
//! serving everyone else; and never honour a header from a peer that is not listed.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use connector_relay::relay::RelayHandle;
use connector_relay::smtp::proxy::{self, v1_header, v2_frame, v2_header, v2_local};
use support::http::{http, until};
use support::{Dialog, Sink, relay_config, start_relay, start_sink, tcp_from, wait_messages};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The load balancer's address, listed in `ProxyProtocolFrom`.
const BALANCER: &str = "127.0.0.5";

/// Inbound connectors for the carried addresses (none of them is the balancer's).
const CONNECTORS: &str = r#"
[[InboundConnector]]
Name = "Servers behind the balancer"
ConnectorType = "OnPremises"
SenderIPAddresses = ["203.0.113.0/24", "2001:db8:5::/64"]

[[InboundConnector]]
Name = "From Fabrikam"
ConnectorType = "Partner"
SenderDomains = ["fabrikam.test"]
SenderIPAddresses = ["198.51.100.0/24"]
RestrictDomainsToIPAddresses = true
"#;

struct Lab {
    relay: RelayHandle,
    sink: Sink,
    dir: tempfile::TempDir,
}

impl Lab {
    async fn start(relay_keys: &str) -> Lab {
        let sink = start_sink().await;
        let dir = tempfile::tempdir().unwrap();
        let keys = format!(
            "ProxyProtocolFrom = [\"{BALANCER}\"]\nImplicitTlsListen = [\"127.0.0.1:0\"]\n{relay_keys}"
        );
        let toml = relay_config(dir.path(), sink.addr(), &keys) + CONNECTORS;
        let relay = start_relay(&toml, None).await;
        Lab { relay, sink, dir }
    }

    fn smtp(&self) -> SocketAddr {
        self.relay.smtp_addrs[0]
    }

    fn admin(&self) -> SocketAddr {
        self.relay.admin_addr.unwrap()
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A connection from the balancer to `to` that has written `header`.
async fn balancer_conn(to: SocketAddr, header: &[u8]) -> TcpStream {
    let mut stream = tcp_from(ip(BALANCER), to).await;
    stream.write_all(header).await.unwrap();
    stream
}

/// A session through the balancer: `header` written, the greeting read and asserted.
async fn via_balancer(to: SocketAddr, header: &[u8]) -> Dialog {
    let mut d = Dialog::new(balancer_conn(to, header).await);
    d.expect("220 ", "greeting through the balancer").await;
    d
}

/// The count of `connector_relay_proxy_header_errors_total{reason}` (0 before the first).
async fn header_errors(admin: SocketAddr, reason: &str) -> u64 {
    let body = http(admin, "GET", "/metrics", None, None).await.body;
    let series = format!("connector_relay_proxy_header_errors_total{{reason=\"{reason}\"}} ");
    body.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// Waits until the counter of `reason` has grown by `n` (it is process-wide: other tests'
/// relays count into it too, hence "at least").
async fn wait_header_errors(admin: SocketAddr, reason: &str, before: u64, n: u64) {
    until(&format!("{n} more {reason} header errors"), || async move {
        (header_errors(admin, reason).await >= before + n).then_some(())
    })
    .await;
}

/// The refusal a balancer gets without a usable header: 421, then the connection closes.
async fn assert_refused(stream: TcpStream, what: &str) {
    let mut d = Dialog::new(stream);
    let reply = d.read_reply().await;
    assert!(reply.starts_with("421 4.7.0 "), "{what}: {reply}");
    assert_eq!(
        d.read_reply().await,
        "<closed>",
        "{what}: closed after the 421"
    );
}

#[tokio::test]
async fn v1_header_carries_the_client_for_attribution_received_and_trace() {
    let lab = Lab::start("").await;
    let client = addr("203.0.113.9:40000");
    let mut d = via_balancer(lab.smtp(), &v1_header(client, lab.smtp())).await;
    let ehlo = d.cmd("EHLO app.contoso.test", "250").await;
    assert!(
        ehlo.contains("Hello app.contoso.test [203.0.113.9]"),
        "{ehlo}"
    );
    // Relaying to a domain that is not accepted needs an OnPremises attribution: the
    // carried address has it, the balancer's own (127.0.0.5) has not.
    d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    d.cmd("RCPT TO:<someone@fabrikam.test>", "250").await;
    d.cmd("RSET", "250").await;
    d.send_message(
        "app@contoso.test",
        "bob@contoso.test",
        "Message-ID: <proxied-v1@contoso.test>\r\nSubject: via the balancer\r\n\r\nbody",
    )
    .await;
    d.cmd("QUIT", "221").await;

    let delivered = wait_messages(lab.sink.maildir(), 1, Duration::from_secs(30)).await;
    assert_eq!(delivered.len(), 1, "relayed to the on-premises sink");
    let m = &delivered[0];
    assert!(m.contains("from app.contoso.test ([203.0.113.9])"), "{m}");
    assert!(
        m.contains("(inbound connector \"Servers behind the balancer\")"),
        "{m}"
    );
    assert!(
        !m.contains("127.0.0.5"),
        "the balancer is not the client: {m}"
    );

    let (admin, token) = (lab.admin(), lab.token());
    let row = until("the Received trace row", || {
        let token = token.clone();
        async move {
            let path = "/api/trace?messageId=proxied-v1@contoso.test";
            let rows = http(admin, "GET", path, Some(&token), None).await.json();
            rows.as_array()?
                .iter()
                .find(|r| r["event"] == "Received")
                .cloned()
        }
    })
    .await;
    assert_eq!(row["client_ip"], "203.0.113.9", "{row}");
    assert_eq!(row["connector"], "Servers behind the balancer", "{row}");
    let detail = row["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("client via proxy 127.0.0.5"), "{row}");
}

#[tokio::test]
async fn v2_header_carries_ipv4_and_ipv6_clients() {
    let lab = Lab::start("").await;
    for (client, tlvs) in [
        (addr("203.0.113.20:1234"), &[][..]),
        // With TLVs (an AWS NLB sends its VPC endpoint id as type 0xEA): skipped.
        (
            addr("[2001:db8:5::9]:4321"),
            &[0xEA, 0x00, 0x03, b'v', b'p', b'c'][..],
        ),
    ] {
        let header = v2_header(client, addr("[2001:db8::25]:25"), tlvs);
        let mut d = via_balancer(lab.smtp(), &header).await;
        let ehlo = d.cmd("EHLO app.contoso.test", "250").await;
        assert!(ehlo.contains(&format!("[{}]", client.ip())), "{ehlo}");
        d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
        d.cmd("RCPT TO:<someone@fabrikam.test>", "250 ").await;
        d.cmd("QUIT", "221").await;
    }
}

#[tokio::test]
async fn restrict_domains_to_ip_addresses_judges_the_carried_address() {
    let lab = Lab::start("").await;
    let attempt = |client: &'static str| {
        let smtp = lab.smtp();
        async move {
            let header = v1_header(addr(client), smtp);
            let mut d = via_balancer(smtp, &header).await;
            d.cmd("EHLO mail.fabrikam.test", "250").await;
            d.cmd("MAIL FROM:<partner@fabrikam.test>", "250").await;
            d.cmd("RCPT TO:<bob@contoso.test>", "").await
        }
    };
    let outside = attempt("192.0.2.77:5000").await;
    assert!(
        outside.starts_with("550 5.7.51 TenantInboundAttribution"),
        "{outside}"
    );
    assert!(outside.contains("From Fabrikam"), "{outside}");
    let listed = attempt("198.51.100.7:5000").await;
    assert!(listed.starts_with("250 "), "{listed}");
}

#[tokio::test]
async fn v2_local_is_the_balancers_own_connection() {
    let lab = Lab::start("").await;
    let mut d = via_balancer(lab.smtp(), &v2_local()).await;
    let ehlo = d.cmd("EHLO health.check", "250").await;
    assert!(ehlo.contains("[127.0.0.5]"), "{ehlo}");
    d.cmd("QUIT", "221").await;
    let mut d = via_balancer(lab.smtp(), b"PROXY UNKNOWN\r\n").await;
    let ehlo = d.cmd("EHLO health.check", "250").await;
    assert!(ehlo.contains("[127.0.0.5]"), "v1 UNKNOWN: {ehlo}");
}

#[tokio::test]
async fn implicit_tls_listener_reads_the_header_before_the_handshake() {
    let lab = Lab::start("").await;
    let to = lab.relay.implicit_tls_addrs[0];
    let client = addr("[2001:db8:5::77]:999");
    let stream = balancer_conn(to, &v2_header(client, to, &[])).await;
    let tls = support::tls_connect(stream, "relay.contoso.test", None)
        .await
        .expect("TLS handshake after the header");
    let mut d = Dialog::new(tls);
    d.expect("220 ", "greeting under TLS").await;
    let ehlo = d.cmd("EHLO app.contoso.test", "250").await;
    assert!(ehlo.contains("[2001:db8:5::77]"), "{ehlo}");
}

#[tokio::test]
async fn a_listed_balancer_without_a_header_is_refused_and_counted() {
    let lab = Lab::start("").await;
    let before = header_errors(lab.admin(), "missing").await;
    // A balancer that forwards the client's SMTP without send-proxy.
    let stream = balancer_conn(lab.smtp(), b"EHLO app.contoso.test\r\n").await;
    assert_refused(stream, "SMTP instead of a header").await;
    wait_header_errors(lab.admin(), "missing", before, 1).await;
}

#[tokio::test]
async fn malformed_headers_are_refused_and_counted() {
    let lab = Lab::start("").await;
    let before = header_errors(lab.admin(), "malformed").await;
    let v4 = v2_header(addr("203.0.113.9:1"), addr("10.0.0.1:25"), &[]);
    let mut long_v1 = b"PROXY UNKNOWN ".to_vec();
    long_v1.resize(proxy::V1_MAX + 10, b'x');
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "v1 port too large",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 70000 25\r\n".to_vec(),
        ),
        (
            "v1 family mismatch",
            b"PROXY TCP6 203.0.113.9 10.0.0.1 1 25\r\n".to_vec(),
        ),
        (
            "v1 bare LF",
            b"PROXY TCP4 203.0.113.9 10.0.0.1 1 25\n".to_vec(),
        ),
        ("v1 without CRLF in 107 bytes", long_v1),
        ("v2 over UDP", v2_frame(0x21, 0x12, &v4[16..])),
        ("v2 version 3", v2_frame(0x31, 0x11, &v4[16..])),
        ("v2 short address block", v2_frame(0x21, 0x11, &v4[16..24])),
    ];
    let n = cases.len() as u64;
    for (what, header) in cases {
        assert_refused(balancer_conn(lab.smtp(), &header).await, what).await;
    }
    wait_header_errors(lab.admin(), "malformed", before, n).await;
    // The listener is unaffected.
    let d = via_balancer(lab.smtp(), &v1_header(addr("203.0.113.9:1"), lab.smtp())).await;
    drop(d);
}

#[tokio::test]
async fn a_slow_header_is_dropped_after_the_timeout_while_others_are_served() {
    let lab = Lab::start("").await;
    let before = header_errors(lab.admin(), "timeout").await;
    let slow = balancer_conn(lab.smtp(), b"PROXY TCP4 203.0.113.9").await;
    let started = Instant::now();

    // Meanwhile a whole session through the same balancer, and one from a direct client.
    let mut d = via_balancer(lab.smtp(), &v1_header(addr("203.0.113.10:2"), lab.smtp())).await;
    d.cmd("EHLO app.contoso.test", "250").await;
    d.send_message(
        "app@contoso.test",
        "bob@contoso.test",
        "Subject: meanwhile\r\n\r\nx",
    )
    .await;
    d.cmd("QUIT", "221").await;
    let mut direct = Dialog::connect_from(ip("127.0.0.10"), lab.smtp()).await;
    direct.cmd("EHLO exchange.contoso.test", "250").await;
    direct.cmd("QUIT", "221").await;
    assert!(
        started.elapsed() < proxy::HEADER_TIMEOUT,
        "the other sessions did not wait for the slow header"
    );

    assert_refused(slow, "slow header").await;
    assert!(
        started.elapsed() >= proxy::HEADER_TIMEOUT - Duration::from_millis(500),
        "refused only once the header timeout ran out: {:?}",
        started.elapsed()
    );
    wait_header_errors(lab.admin(), "timeout", before, 1).await;
}

#[tokio::test]
async fn a_header_from_a_peer_that_is_not_listed_is_not_honoured() {
    let lab = Lab::start("").await;
    let claim = v1_header(addr("203.0.113.9:40000"), lab.smtp());
    // Sent at once: talking before the greeting, refused as such.
    let mut d = Dialog::new(tcp_from(ip("127.0.0.1"), lab.smtp()).await);
    d.send(&claim).await;
    let reply = d.read_reply().await;
    assert!(reply.starts_with("554 5.5.0"), "{reply}");

    // Sent after the greeting: an unknown command, and the session stays the peer's own.
    let mut d = Dialog::connect_from(ip("127.0.0.1"), lab.smtp()).await;
    d.send(&claim).await;
    d.expect("500", "a PROXY line as a command").await;
    let ehlo = d.cmd("EHLO app.contoso.test", "250").await;
    assert!(ehlo.contains("[127.0.0.1]"), "{ehlo}");
    d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    d.cmd("RCPT TO:<someone@fabrikam.test>", "550 5.7.64").await;
}

#[tokio::test]
async fn client_sending_before_the_greeting_through_the_balancer_is_refused() {
    // The header's bytes are consumed exactly: what follows it is the client's, so a
    // client talking first is caught by the pre-greeting test as it would be directly.
    let lab = Lab::start("").await;
    let mut bytes = v1_header(addr("192.0.2.9:7"), lab.smtp());
    bytes.extend_from_slice(b"EHLO early.example\r\n");
    let mut d = Dialog::new(balancer_conn(lab.smtp(), &bytes).await);
    let reply = d.read_reply().await;
    assert!(reply.starts_with("554 5.5.0"), "{reply}");
}

#[tokio::test]
async fn per_source_limits_count_the_carried_address() {
    let lab = Lab::start("MaxInboundConnectionPerSource = 2").await;
    let carried = |port| v1_header(SocketAddr::new(ip("192.0.2.50"), port), lab.smtp());
    let first = via_balancer(lab.smtp(), &carried(1)).await;
    let second = via_balancer(lab.smtp(), &carried(2)).await;
    let mut third = Dialog::new(balancer_conn(lab.smtp(), &carried(3)).await);
    let reply = third.read_reply().await;
    assert!(
        reply.starts_with("421 4.7.0 Too many connections from your host"),
        "{reply}"
    );
    // Every session comes from 127.0.0.5, yet another client is its own source.
    let other = v1_header(addr("192.0.2.51:4"), lab.smtp());
    let mut fourth = via_balancer(lab.smtp(), &other).await;
    fourth.cmd("QUIT", "221").await;
    drop((first, second));
}

/// A real HAProxy (Debian's, installed by scripts/install-deps.sh) run in the foreground,
/// killed when dropped.
struct HaProxy(std::process::Child);

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The haproxy binary, if installed (Debian puts it in /usr/sbin).
fn haproxy_binary() -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([std::path::PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file())
}

/// HAProxy in front of `relay`: `send-proxy` on port `v1`, `send-proxy-v2` on port `v2`,
/// both connecting to the relay from the balancer's address.
fn start_haproxy(
    bin: &std::path::Path,
    dir: &std::path::Path,
    relay: SocketAddr,
    v1: u16,
    v2: u16,
) -> HaProxy {
    let cfg = format!(
        r#"
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend smtp_v1
    bind 127.0.0.1:{v1}
    default_backend relay_v1
frontend smtp_v2
    bind 127.0.0.1:{v2}
    default_backend relay_v2
backend relay_v1
    server relay {relay} send-proxy source {BALANCER}
backend relay_v2
    server relay {relay} send-proxy-v2 source {BALANCER}
"#
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let child = std::process::Command::new(bin)
        .arg("-db")
        .arg("-f")
        .arg(&path)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("haproxy starts");
    HaProxy(child)
}

#[tokio::test]
async fn real_haproxy_send_proxy_v1_and_v2() {
    let Some(bin) = haproxy_binary() else {
        eprintln!(
            "SKIPPED real_haproxy_send_proxy_v1_and_v2: haproxy is not installed (scripts/install-deps.sh installs it)"
        );
        return;
    };
    let lab = Lab::start("").await;
    let (v1, v2) = (support::free_port(), support::free_port());
    let _haproxy = start_haproxy(&bin, lab.dir.path(), lab.smtp(), v1, v2);
    support::wait_listening(v1).await;
    support::wait_listening(v2).await;
    for (port, from) in [(v1, "127.0.0.10"), (v2, "127.0.0.10")] {
        // 127.0.0.10 is the OnPremises connector of `relay_config`; HAProxy's own address
        // toward the relay is the balancer's.
        let to = SocketAddr::new(ip("127.0.0.1"), port);
        let mut d = Dialog::connect_from(ip(from), to).await;
        let ehlo = d.cmd("EHLO exchange.contoso.test", "250").await;
        assert!(ehlo.contains(&format!("[{from}]")), "port {port}: {ehlo}");
        d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
        d.cmd("RCPT TO:<someone@fabrikam.test>", "250").await;
        d.cmd("QUIT", "221").await;
    }
    // A client HAProxy forwards that is not on-premises: relaying is refused for it.
    let to = SocketAddr::new(ip("127.0.0.1"), v2);
    let mut d = Dialog::connect_from(ip("127.0.0.77"), to).await;
    let ehlo = d.cmd("EHLO outsider.example", "250").await;
    assert!(ehlo.contains("[127.0.0.77]"), "{ehlo}");
    d.cmd("MAIL FROM:<x@outsider.example>", "250").await;
    d.cmd("RCPT TO:<someone@fabrikam.test>", "550 5.7.64").await;
}

#[tokio::test]
async fn proxy_protocol_from_changes_on_reload() {
    let sink = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let write = |keys: &str| {
        let text = relay_config(dir.path(), sink.addr(), keys) + CONNECTORS;
        std::fs::write(&path, text).unwrap();
    };
    write("");
    let (relay, _token) = support::http::start_relay_from_file(&path, dir.path()).await;
    let smtp = relay.smtp_addrs[0];
    let claim = v1_header(addr("203.0.113.9:40000"), smtp);

    // Not listed yet: the header is bytes before the greeting.
    let mut d = Dialog::new(balancer_conn(smtp, &claim).await);
    let reply = d.read_reply().await;
    assert!(reply.starts_with("554 5.5.0"), "before the reload: {reply}");

    write(&format!("ProxyProtocolFrom = [\"{BALANCER}\"]"));
    let reloaded = relay.reload().await.expect("reload accepted");
    assert!(
        reloaded.restart_needed.is_empty(),
        "{:?}",
        reloaded.restart_needed
    );
    let mut d = via_balancer(smtp, &claim).await;
    let ehlo = d.cmd("EHLO app.contoso.test", "250").await;
    assert!(ehlo.contains("[203.0.113.9]"), "after the reload: {ehlo}");
}
