//! The outbound SMTP client against a scripted SMTP server on loopback (real sockets, real
//! TLS with a certificate generated at test time).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use connector_relay::delivery::client::{self, ClientConfig, Envelope, StartTls};
use connector_relay::delivery::tls::TlsContext;
use connector_relay::delivery::{Data, Deliverer, DelivererOptions, DeliveryJob, DeliveryStatus};
use connector_relay::dns::{BoxFuture, DnsError, MxAnswer, Resolver};
use connector_relay::policy::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the scripted server behaves.
#[derive(Clone)]
struct Behavior {
    pipelining: bool,
    /// Offer STARTTLS with this certificate.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Raw bytes answered to STARTTLS (one write).
    starttls_reply: &'static str,
    /// Close the connection right after the STARTTLS reply (handshake failure).
    close_after_starttls: bool,
    /// Reply to RCPT TO for an address.
    rcpt: fn(&str) -> &'static str,
    /// Reply to the final ".".
    data_end: &'static str,
}

impl Default for Behavior {
    fn default() -> Self {
        Behavior {
            pipelining: false,
            tls: None,
            starttls_reply: "220 2.0.0 ready\r\n",
            close_after_starttls: false,
            rcpt: |_| "250 2.1.5 ok\r\n",
            data_end: "250 2.0.0 queued as ABC\r\n",
        }
    }
}

/// What the server saw.
#[derive(Default, Debug)]
struct Log {
    connections: usize,
    tls_sessions: usize,
    /// Every read() result, in order (to see what arrived together).
    reads: Vec<Vec<u8>>,
    commands: Vec<String>,
    /// Message bytes as on the wire, up to and including the ".\r\n" terminator.
    messages: Vec<Vec<u8>>,
}

type SharedLog = Arc<Mutex<Log>>;

async fn start_server(b: Behavior) -> (SocketAddr, SharedLog) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log: SharedLog = Arc::default();
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            l.lock().unwrap().connections += 1;
            tokio::spawn(serve(stream, b.clone(), l.clone()));
        }
    });
    (addr, log)
}

enum Next {
    Done,
    StartTls,
}

struct Reader {
    pending: Vec<u8>,
}

impl Reader {
    async fn line<S: AsyncRead + Unpin>(&mut self, s: &mut S, log: &SharedLog) -> Option<Vec<u8>> {
        loop {
            if let Some(p) = self.pending.iter().position(|&b| b == b'\n') {
                return Some(self.pending.drain(..=p).collect());
            }
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            log.lock().unwrap().reads.push(buf[..n].to_vec());
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

async fn serve(mut tcp: TcpStream, b: Behavior, log: SharedLog) {
    if tcp
        .write_all(b"220 mx.test ESMTP scripted\r\n")
        .await
        .is_err()
    {
        return;
    }
    let mut reader = Reader { pending: vec![] };
    if let Next::StartTls = dialogue(&mut tcp, &b, &log, &mut reader, false).await {
        if b.close_after_starttls {
            return; // drop: the client's handshake fails
        }
        let acceptor = tokio_rustls::TlsAcceptor::from(b.tls.clone().unwrap());
        let Ok(mut tls) = acceptor.accept(tcp).await else {
            return;
        };
        log.lock().unwrap().tls_sessions += 1;
        let mut reader = Reader { pending: vec![] };
        dialogue(&mut tls, &b, &log, &mut reader, true).await;
    }
}

async fn dialogue<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    b: &Behavior,
    log: &SharedLog,
    r: &mut Reader,
    under_tls: bool,
) -> Next {
    while let Some(line) = r.line(s, log).await {
        let cmd = String::from_utf8_lossy(&line).trim_end().to_string();
        log.lock().unwrap().commands.push(cmd.clone());
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            let mut ext = vec!["mx.test", "SIZE 1000000", "8BITMIME", "ENHANCEDSTATUSCODES"];
            if b.pipelining {
                ext.push("PIPELINING");
            }
            if b.tls.is_some() && !under_tls {
                ext.push("STARTTLS");
            }
            let n = ext.len();
            ext.iter()
                .enumerate()
                .map(|(i, e)| format!("250{}{e}\r\n", if i + 1 == n { ' ' } else { '-' }))
                .collect()
        } else if upper.starts_with("HELO") || upper.starts_with("MAIL") || upper == "RSET" {
            "250 2.0.0 ok\r\n".into()
        } else if upper == "STARTTLS" {
            s.write_all(b.starttls_reply.as_bytes()).await.ok();
            if b.starttls_reply.starts_with("220") {
                return Next::StartTls;
            }
            continue;
        } else if let Some(rest) = upper.strip_prefix("RCPT TO:<") {
            let addr = rest.trim_end_matches('>').to_ascii_lowercase();
            (b.rcpt)(&addr).into()
        } else if upper == "DATA" {
            s.write_all(b"354 go ahead\r\n").await.ok();
            let mut msg = Vec::new();
            loop {
                let Some(l) = r.line(s, log).await else {
                    return Next::Done;
                };
                msg.extend_from_slice(&l);
                if l == b".\r\n" {
                    break;
                }
            }
            log.lock().unwrap().messages.push(msg);
            b.data_end.into()
        } else if upper == "QUIT" {
            s.write_all(b"221 2.0.0 bye\r\n").await.ok();
            return Next::Done;
        } else {
            "500 5.5.2 what?\r\n".into()
        };
        if b.pipelining && upper.starts_with("EHLO") {
            // Let a pipelined batch arrive whole, so one read() shows what was sent together.
            s.write_all(reply.as_bytes()).await.ok();
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        if s.write_all(reply.as_bytes()).await.is_err() {
            return Next::Done;
        }
    }
    Next::Done
}

fn cfg(starttls: StartTls) -> ClientConfig {
    let mut c = ClientConfig::new("relay.contoso.test", starttls);
    c.connect_timeout = Duration::from_secs(5);
    c.command_timeout = Duration::from_secs(5);
    c.data_end_timeout = Duration::from_secs(5);
    c
}

fn opportunistic() -> StartTls {
    StartTls::Opportunistic(TlsContext::new(None, &[]).unwrap().opportunistic())
}

fn required() -> StartTls {
    StartTls::Required(
        TlsContext::new(None, &[])
            .unwrap()
            .client_config(TlsLevel::EncryptionOnly, None)
            .unwrap(),
    )
}

fn server_tls() -> Arc<rustls::ServerConfig> {
    let ck = rcgen::generate_simple_self_signed(vec!["mx.test".to_string()]).unwrap();
    let cert = CertificateDer::from(ck.cert.der().to_vec());
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert], key)
    .unwrap();
    Arc::new(config)
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn mixed_rcpt(addr: &str) -> &'static str {
    match addr {
        a if a.starts_with("bad@") => "550 5.1.1 no such user\r\n",
        a if a.starts_with("later@") => "450 4.2.1 mailbox busy\r\n",
        _ => "250 2.1.5 ok\r\n",
    }
}

const MESSAGE: &[u8] = b"Subject: test\r\n\r\n.leading dot\r\n..two dots\r\nend.\r\n.\r\nlast";

async fn run_mixed(pipelining: bool) -> SharedLog {
    let (addr, log) = start_server(Behavior {
        pipelining,
        rcpt: mixed_rcpt,
        ..Behavior::default()
    })
    .await;
    let to = rcpts(&[
        "ok@fabrikam.test",
        "bad@fabrikam.test",
        "later@fabrikam.test",
        "ok2@fabrikam.test",
    ]);
    let env = Envelope {
        mail_from: "sender@contoso.test",
        recipients: &to,
        data: Data::memory(MESSAGE),
        requiretls: false,
    };
    let attempt = client::deliver(addr, "mx.test", &cfg(StartTls::Never), &env).await;
    let statuses = attempt.result.expect("transaction");
    assert!(
        matches!(&statuses[0], DeliveryStatus::Delivered { reply } if reply.contains("queued as ABC"))
    );
    match &statuses[1] {
        DeliveryStatus::Permanent(f) => {
            assert_eq!(f.code, Some(550));
            assert_eq!(f.enhanced, "5.1.1");
            assert_eq!(f.text, "no such user");
        }
        other => panic!("{other:?}"),
    }
    match &statuses[2] {
        DeliveryStatus::Temporary(f) => {
            assert_eq!((f.code, f.enhanced.as_str()), (Some(450), "4.2.1"))
        }
        other => panic!("{other:?}"),
    }
    assert!(statuses[3].is_delivered());
    assert!(attempt.tls.is_none());

    let l = log.lock().unwrap();
    // RFC 5321 §4.5.2 transparency, on the wire.
    assert_eq!(
        l.messages,
        vec![
            b"Subject: test\r\n\r\n..leading dot\r\n...two dots\r\nend.\r\n..\r\nlast\r\n.\r\n"
                .to_vec()
        ]
    );
    drop(l);
    log
}

#[tokio::test]
async fn pipelined_envelope_in_one_write_with_per_recipient_results() {
    let log = run_mixed(true).await;
    let l = log.lock().unwrap();
    let batch = l
        .reads
        .iter()
        .map(|r| String::from_utf8_lossy(r).to_string())
        .find(|r| r.contains("MAIL FROM"))
        .unwrap();
    assert_eq!(
        batch,
        "MAIL FROM:<sender@contoso.test> SIZE=56\r\n\
         RCPT TO:<ok@fabrikam.test>\r\n\
         RCPT TO:<bad@fabrikam.test>\r\n\
         RCPT TO:<later@fabrikam.test>\r\n\
         RCPT TO:<ok2@fabrikam.test>\r\n\
         DATA\r\n",
        "RFC 2920: MAIL, RCPTs and DATA sent in one batch"
    );
    assert_eq!(l.commands.last().map(String::as_str), Some("QUIT"));
}

#[tokio::test]
async fn lockstep_without_pipelining() {
    let log = run_mixed(false).await;
    let l = log.lock().unwrap();
    let mail_read = l
        .reads
        .iter()
        .find(|r| r.starts_with(b"MAIL FROM"))
        .unwrap();
    assert_eq!(
        mail_read.as_slice(),
        b"MAIL FROM:<sender@contoso.test> SIZE=56\r\n"
    );
}

#[tokio::test]
async fn data_451_makes_accepted_recipients_temporary() {
    for pipelining in [false, true] {
        let (addr, log) = start_server(Behavior {
            pipelining,
            rcpt: mixed_rcpt,
            data_end: "451 4.3.0 try later\r\n",
            ..Behavior::default()
        })
        .await;
        let to = rcpts(&["ok@f.test", "bad@f.test"]);
        let env = Envelope {
            mail_from: "",
            recipients: &to,
            data: Data::memory(b"x\r\n"),
            requiretls: false,
        };
        let statuses = client::deliver(addr, "mx.test", &cfg(StartTls::Never), &env)
            .await
            .result
            .unwrap();
        match &statuses[0] {
            DeliveryStatus::Temporary(f) => {
                assert_eq!(
                    (f.code, f.enhanced.as_str(), f.text.as_str()),
                    (Some(451), "4.3.0", "try later")
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(statuses[1].is_permanent());
        assert!(
            log.lock()
                .unwrap()
                .commands
                .iter()
                .any(|c| c == "MAIL FROM:<> SIZE=3")
        );
    }
}

#[tokio::test]
async fn no_recipient_accepted_means_no_data() {
    let (addr, log) = start_server(Behavior {
        rcpt: |_| "550 5.1.1 nobody\r\n",
        ..Behavior::default()
    })
    .await;
    let to = rcpts(&["a@f.test", "b@f.test"]);
    let env = Envelope {
        mail_from: "s@contoso.test",
        recipients: &to,
        data: Data::memory(b"x\r\n"),
        requiretls: false,
    };
    let statuses = client::deliver(addr, "mx.test", &cfg(StartTls::Never), &env)
        .await
        .result
        .unwrap();
    assert!(statuses.iter().all(DeliveryStatus::is_permanent));
    let l = log.lock().unwrap();
    assert!(!l.commands.iter().any(|c| c == "DATA"));
    assert!(l.commands.iter().any(|c| c == "RSET"));
}

#[tokio::test]
async fn starttls_then_delivery_under_tls() {
    let (addr, log) = start_server(Behavior {
        pipelining: true,
        tls: Some(server_tls()),
        ..Behavior::default()
    })
    .await;
    let to = rcpts(&["a@f.test"]);
    let env = Envelope {
        mail_from: "s@contoso.test",
        recipients: &to,
        data: Data::memory(b"hello\r\n"),
        requiretls: false,
    };
    for starttls in [opportunistic(), required()] {
        let attempt = client::deliver(addr, "mx.test", &cfg(starttls), &env).await;
        assert!(attempt.result.unwrap()[0].is_delivered());
        let tls = attempt.tls.expect("TLS was used");
        assert!(tls.version.starts_with("TLS"), "{tls:?}");
        assert_eq!(tls.peer_names, ["mx.test"]);
    }
    let l = log.lock().unwrap();
    assert_eq!(l.tls_sessions, 2);
    assert_eq!(l.messages.len(), 2);
    // RFC 3207 §4.2: EHLO again after the handshake.
    assert_eq!(
        l.commands.iter().filter(|c| c.starts_with("EHLO")).count(),
        4
    );
}

#[tokio::test]
async fn opportunistic_falls_back_to_plaintext_when_handshake_fails() {
    let (addr, log) = start_server(Behavior {
        tls: Some(server_tls()),
        close_after_starttls: true,
        ..Behavior::default()
    })
    .await;
    let to = rcpts(&["a@f.test"]);
    let env = Envelope {
        mail_from: "s@contoso.test",
        recipients: &to,
        data: Data::memory(b"hello\r\n"),
        requiretls: false,
    };
    let attempt = client::deliver(addr, "mx.test", &cfg(opportunistic()), &env).await;
    assert!(attempt.result.unwrap()[0].is_delivered());
    assert!(attempt.tls.is_none());
    {
        let l = log.lock().unwrap();
        assert_eq!(l.connections, 2, "reconnected in plaintext");
        assert_eq!(l.commands.iter().filter(|c| *c == "STARTTLS").count(), 1);
        assert_eq!(l.messages.len(), 1);
    }

    // The same failure under required TLS is a host failure (4.4.317), no fallback.
    let attempt = client::deliver(addr, "mx.test", &cfg(required()), &env).await;
    let e = attempt.result.unwrap_err();
    assert_eq!(e.failure.enhanced, "4.4.317");
    assert!(!e.permanent && e.try_next_host);
    assert_eq!(log.lock().unwrap().messages.len(), 1);
}

#[tokio::test]
async fn required_tls_without_starttls_is_4_4_317() {
    let (addr, log) = start_server(Behavior::default()).await;
    let to = rcpts(&["a@f.test"]);
    let env = Envelope {
        mail_from: "s@contoso.test",
        recipients: &to,
        data: Data::memory(b"hello\r\n"),
        requiretls: false,
    };
    let e = client::deliver(addr, "mx.test", &cfg(required()), &env)
        .await
        .result
        .unwrap_err();
    assert_eq!(e.failure.enhanced, "4.4.317");
    assert!(e.failure.text.contains("STARTTLS"), "{}", e.failure.text);
    assert!(!e.permanent);
    assert!(
        !log.lock()
            .unwrap()
            .commands
            .iter()
            .any(|c| c.starts_with("MAIL"))
    );
}

#[tokio::test]
async fn bytes_after_starttls_reply_are_a_protocol_error() {
    let (addr, log) = start_server(Behavior {
        tls: Some(server_tls()),
        starttls_reply: "220 ready\r\n250 injected\r\n",
        ..Behavior::default()
    })
    .await;
    let to = rcpts(&["a@f.test"]);
    let env = Envelope {
        mail_from: "s@contoso.test",
        recipients: &to,
        data: Data::memory(b"hello\r\n"),
        requiretls: false,
    };
    let e = client::deliver(addr, "mx.test", &cfg(required()), &env)
        .await
        .result
        .unwrap_err();
    assert_eq!(e.failure.enhanced, "4.5.0");
    assert!(e.failure.text.contains("injection"), "{}", e.failure.text);
    let l = log.lock().unwrap();
    assert_eq!(l.tls_sessions, 0);
    assert!(l.messages.is_empty());
}

/// A resolver that knows nothing (smart hosts are IP literals).
struct NoDns;

impl Resolver for NoDns {
    fn mx<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<MxAnswer, DnsError>> {
        Box::pin(async { Err(DnsError::NxDomain) })
    }
    fn ips<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<std::net::IpAddr>, DnsError>> {
        Box::pin(async { Err(DnsError::NxDomain) })
    }
}

fn policy_with_send_connector(smart_hosts: Vec<SmartHost>) -> Policy {
    let relay = RelaySettings {
        fqdn: "relay.contoso.test".into(),
        listen: vec![],
        implicit_tls_listen: vec![],
        tls_certificate: None,
        tls_private_key: None,
        certificates: vec![],
        trusted_ca_file: None,
        revocation_lists: vec![],
        spool_dir: PathBuf::from("var/spool"),
        data_dir: PathBuf::from("var"),
        accepted_domains: vec![DomainPattern::Exact("contoso.test".into())],
        max_message_size: 25 << 20,
        max_recipients_per_message: 500,
        dns_servers: vec![],
        external_dns_servers: vec![],
        delivery_port: 25,
        mta_sts_policy_port: 443,
        message_expiration_timeout: Duration::from_secs(172800),
        transient_failure_retry_interval: Duration::from_secs(300),
        max_retry_interval: Duration::from_secs(3600),
        delay_notification_timeout: Duration::from_secs(14400),
        admin_listen: "127.0.0.1:8025".parse().unwrap(),
        admin_token_file: PathBuf::from("var/admin.token"),
        protocol_log_dir: PathBuf::from("var/log/protocol"),
        send_protocol_log_max_age: Duration::from_secs(30 * 86_400),
        trace_retention_days: 30,
        trace_store: Default::default(),
        srs_secret_file: PathBuf::from("var/srs.key"),
        bare_newline_policy: BareNewlinePolicy::Reject,
        dnssec_validation: connector_relay::dns::DnssecValidation::Off,
        dnssec_trust_anchor_file: None,
        max_inbound_connection: 5000,
        max_inbound_connection_per_source: 20,
        max_inbound_connection_rate_per_source: 600,
        inbound_connections_reserved_for_on_premises: 500,
        source_ipv6_prefix_length: 64,
        proxy_protocol_from: Vec::new(),
        max_outbound_connections: 1000,
        max_per_domain_outbound_connections: 20,
        transient_failure_retry_count: 6,
        outbound_connection_failure_retry_interval: Duration::from_secs(600),
        connection_timeout: Duration::from_secs(600),
        connection_inactivity_timeout: Duration::from_secs(300),
        max_protocol_errors: 5,
        max_header_size: 256 << 10,
        pre_greeting_wait: Duration::from_millis(100),
        min_data_rate: MIN_DATA_RATE,
        min_data_rate_grace: MIN_DATA_RATE_GRACE,
        back_pressure: Default::default(),
        tlsrpt: Default::default(),
    };
    let send = SendConnector {
        name: "Via smart hosts".into(),
        enabled: true,
        address_spaces: vec![AddressSpace {
            domain: DomainPattern::Any,
            cost: 1,
        }],
        dns_routing_enabled: false,
        smart_hosts,
        port: 25,
        require_tls: false,
        tls_auth_level: None,
        tls_domain: None,
        ignore_starttls: false,
        force_helo: false,
        fqdn: Some("out.contoso.test".into()),
        smart_host_auth_mechanism: AuthMechanism::None,
        authentication_credential: None,
        max_message_size: None,
        smtp_max_messages_per_connection: 20,
        connection_inactivity_timeout: Duration::from_secs(10),
        source_ip_address: None,
        error_policies: vec![],
        protocol_logging_level: ProtocolLoggingLevel::None,
        tls_certificate_name: None,
        domain_secure_enabled: false,
        cloud_services_mail_enabled: false,
        use_external_dns_servers_enabled: false,
        comment: None,
    };
    Policy {
        relay,
        inbound: vec![],
        outbound: vec![],
        send: vec![send],
    }
}

#[tokio::test]
async fn deliverer_fails_over_to_the_second_smart_host() {
    // A port with nothing listening: connection refused.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (good, log) = start_server(Behavior {
        pipelining: true,
        ..Behavior::default()
    })
    .await;
    let policy = policy_with_send_connector(vec![
        SmartHost::Ip {
            addr: closed.ip(),
            port: Some(closed.port()),
        },
        SmartHost::Ip {
            addr: good.ip(),
            port: Some(good.port()),
        },
    ]);
    let deliverer =
        Deliverer::new(Arc::new(policy), Arc::new(NoDns)).with_options(DelivererOptions {
            connect_timeout: Duration::from_secs(5),
            command_timeout: Some(Duration::from_secs(5)),
            data_end_timeout: Duration::from_secs(5),
        });
    let to = rcpts(&["a@fabrikam.test", "b@example.org"]);
    let out = deliverer
        .deliver(&DeliveryJob {
            id: "Q1",
            mail_from: "s@contoso.test",
            recipients: &to,
            data: Data::memory(b"Subject: hi\r\n\r\nbody\r\n"),
            from_outside_org: false,
            requiretls: false,
        })
        .await;
    assert_eq!(out.len(), 2);
    for (o, r) in out.iter().zip(&to) {
        assert_eq!(&o.recipient, r);
        assert!(o.status.is_delivered(), "{o:?}");
        assert_eq!(o.connector.as_deref(), Some("Via smart hosts"));
        assert_eq!(o.remote_host.as_deref(), Some("127.0.0.1 [127.0.0.1]"));
    }
    let l = log.lock().unwrap();
    // Both recipients share the route: one transaction.
    assert_eq!(l.messages.len(), 1);
    assert!(l.commands.iter().any(|c| c == "EHLO out.contoso.test"));
}

#[tokio::test]
async fn every_host_refusing_is_temporary() {
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let policy = policy_with_send_connector(vec![SmartHost::Ip {
        addr: closed.ip(),
        port: Some(closed.port()),
    }]);
    let deliverer = Deliverer::new(Arc::new(policy), Arc::new(NoDns));
    let to = rcpts(&["a@fabrikam.test"]);
    let out = deliverer
        .deliver(&DeliveryJob {
            id: "Q2",
            mail_from: "",
            recipients: &to,
            data: Data::memory(b"x\r\n"),
            from_outside_org: false,
            requiretls: false,
        })
        .await;
    match &out[0].status {
        DeliveryStatus::Temporary(f) => assert_eq!(f.enhanced, "4.4.316"),
        other => panic!("{other:?}"),
    }
}
