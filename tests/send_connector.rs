//! Send connector parameters over real sockets: AUTH PLAIN / LOGIN, BasicAuthRequireTLS,
//! client certificates (TlsCertificateName, DomainSecureEnabled), connection reuse,
//! SourceIPAddress, Port, Fqdn / ForceHELO, the protocol log, ErrorPolicies and the external
//! DNS servers. The delivery engine (`Deliverer`) is driven directly, so every outcome is
//! asserted exactly, without waiting for the queue's retries.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use connector_relay::delivery::{
    Data, Deliverer, DelivererOptions, DeliveryJob, DeliveryStatus, RecipientOutcome,
};
use connector_relay::dns::Resolver;
use connector_relay::dns::hickory::HickoryResolver;
use connector_relay::sink::{self, SinkOptions};
use connector_relay::smtp::Reply;
use support::dns::TestDns;
use support::{Dialog, Sink, certs, header_values as header, messages};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const USER: &str = "relay-user";
const PASS: &str = "s3cret, pass";

/// A relay config with one Send connector (`connector`: its keys after Name).
fn config(dir: &Path, relay_extra: &str, connector: &str) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TlsCertificate = "{cert}"
TlsPrivateKey = "{key}"
TrustedCaFile = "{ca}"
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}/data"
ProtocolLogDir = "{dir}/protocol"
{relay_extra}

[[SendConnector]]
Name = "Partner"
{connector}
"#,
        cert = certs("relay.contoso.test.crt"),
        key = certs("relay.contoso.test.key"),
        ca = certs("ca.crt"),
        dir = dir.display(),
    )
}

/// A smart host connector for fabrikam.test pointing at `sink` (port through `Port`).
fn smart_host(sink: SocketAddr, extra: &str) -> String {
    format!(
        r#"AddressSpaces = ["fabrikam.test"]
DNSRoutingEnabled = false
SmartHosts = ["{}"]
Port = {}
{extra}"#,
        sink.ip(),
        sink.port()
    )
}

fn password_file(dir: &Path, password: &str) -> String {
    let path = dir.join("password.txt");
    std::fs::write(&path, format!("{password}\n")).unwrap();
    format!(
        r#"AuthenticationCredential = {{ UserName = "{USER}", PasswordFile = "{}" }}"#,
        path.display()
    )
}

fn deliverer(toml: &str, resolver: Arc<dyn Resolver>) -> Deliverer {
    Deliverer::new(Arc::new(support::policy(toml)), resolver).with_options(DelivererOptions {
        connect_timeout: Duration::from_secs(5),
        command_timeout: Some(Duration::from_secs(5)),
        data_end_timeout: Duration::from_secs(5),
    })
}

fn no_dns() -> Arc<dyn Resolver> {
    // Nothing listens there: smart hosts given as IPs never ask.
    Arc::new(
        HickoryResolver::with_timeout(&["127.0.0.1:9".parse().unwrap()], Duration::from_secs(1))
            .unwrap(),
    )
}

async fn send(d: &Deliverer, to: &[&str], body: &str) -> Vec<RecipientOutcome> {
    let rcpts: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    let data = format!("From: a@contoso.test\r\nSubject: send connector\r\n\r\n{body}\r\n");
    d.deliver(&DeliveryJob {
        id: "T1",
        mail_from: "a@contoso.test",
        recipients: &rcpts,
        data: Data::memory(data.as_bytes()),
        from_outside_org: false,
        requiretls: false,
    })
    .await
}

async fn sink_with(opts: SinkOptions) -> Sink {
    let dir = tempfile::tempdir().unwrap();
    let opts = SinkOptions {
        listen: opts.listen.or(Some("127.0.0.1:0".parse().unwrap())),
        maildir: dir.path().to_path_buf(),
        ..opts
    };
    Sink {
        handle: sink::start(opts).await.expect("sink starts"),
        dir,
    }
}

fn tls_opts() -> SinkOptions {
    SinkOptions {
        tls_cert: Some(certs("sink.test.crt").into()),
        tls_key: Some(certs("sink.test.key").into()),
        ..Default::default()
    }
}

fn auth() -> Option<(String, String)> {
    Some((USER.into(), PASS.into()))
}

fn protocol_log(dir: &Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir.join("protocol")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with("SEND") && name.ends_with(".log"), "{name}");
        out.push_str(&std::fs::read_to_string(p).unwrap());
    }
    out
}

fn temporary(o: &RecipientOutcome) -> &connector_relay::delivery::Failure {
    match &o.status {
        DeliveryStatus::Temporary(f) => f,
        other => panic!("expected a temporary failure, got {other:?}"),
    }
}

#[tokio::test]
async fn auth_plain_after_starttls_with_protocol_log() {
    let sink = sink_with(SinkOptions {
        require_tls: true,
        auth: auth(),
        ..tls_opts()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let connector = smart_host(
        sink.addr(),
        &format!(
            "SmartHostAuthMechanism = \"BasicAuthRequireTLS\"\n{}\nProtocolLoggingLevel = \"Verbose\"",
            password_file(dir.path(), PASS)
        ),
    );
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "the secret body line").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    assert!(out[0].tls.is_some());
    let m = messages(sink.maildir());
    assert_eq!(m.len(), 1);
    assert_eq!(header(&m[0], "X-Sink-Auth"), [USER]);
    assert_eq!(header(&m[0], "X-Sink-Tls").len(), 1);

    let log = protocol_log(dir.path());
    assert!(log.starts_with("#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data\n"), "{log}");
    let events: Vec<(String, String)> = log
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.splitn(8, ',').collect();
            assert_eq!(f[1], "Partner", "{l}");
            assert_eq!(f[5], sink.addr().to_string(), "{l}");
            (f[6].to_string(), f[7].to_string())
        })
        .collect();
    let has = |ev: &str, prefix: &str| events.iter().any(|(e, d)| e == ev && d.starts_with(prefix));
    assert!(has(">", "EHLO relay.contoso.test"), "{log}");
    assert!(has("<", "220 "), "{log}");
    assert!(has(">", "STARTTLS"), "{log}");
    assert!(has("*", "TLS negotiated"), "{log}");
    assert!(has(">", "AUTH PLAIN <redacted>"), "{log}");
    assert!(has("<", "235 2.7.0"), "{log}");
    assert!(has(">", "MAIL FROM:<a@contoso.test>"), "{log}");
    assert!(has(">", "RCPT TO:<bob@fabrikam.test>"), "{log}");
    assert!(has("<", "250 2.0.0 Ok: stored"), "{log}");
    assert!(has("*", "message data: "), "{log}");
    // Neither the credentials (plain or base64) nor the body are in the log.
    let b64 = connector_relay::smtp::sasl::encode(&connector_relay::smtp::sasl::plain_message(
        USER, PASS,
    ));
    for secret in [PASS, b64.as_str(), "secret body line", "s3cret"] {
        assert!(!log.contains(secret), "{secret:?} in the log:\n{log}");
    }
    // Sequence numbers count up within the session.
    let seqs: Vec<u32> = log
        .lines()
        .skip(1)
        .map(|l| l.split(',').nth(3).unwrap().parse().unwrap())
        .collect();
    assert_eq!(seqs, (0..seqs.len() as u32).collect::<Vec<_>>());
}

/// A scripted server offering only AUTH LOGIN; returns the lines it received.
async fn login_only_server() -> (SocketAddr, tokio::task::JoinHandle<Vec<String>>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        let mut seen = Vec::new();
        w.write_all(b"220 login.test ready\r\n").await.unwrap();
        let mut in_data = false;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                break;
            }
            let line = line.trim_end().to_string();
            if in_data {
                if line == "." {
                    in_data = false;
                    w.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
                }
                continue;
            }
            seen.push(line.clone());
            let reply: &[u8] = match seen.len() {
                _ if line.starts_with("EHLO") => b"250-login.test\r\n250 AUTH LOGIN\r\n",
                _ if line == "AUTH LOGIN" => b"334 VXNlcm5hbWU6\r\n",
                _ if seen.len() >= 2 && seen[seen.len() - 2] == "AUTH LOGIN" => {
                    b"334 UGFzc3dvcmQ6\r\n"
                }
                _ if seen.len() >= 3 && seen[seen.len() - 3] == "AUTH LOGIN" => b"235 2.7.0 ok\r\n",
                _ if line == "DATA" => {
                    in_data = true;
                    b"354 go\r\n"
                }
                _ if line == "QUIT" => {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    break;
                }
                _ => b"250 ok\r\n",
            };
            w.write_all(reply).await.unwrap();
        }
        seen
    });
    (addr, task)
}

#[tokio::test]
async fn auth_login_when_plain_is_not_offered() {
    let (addr, server) = login_only_server().await;
    let dir = tempfile::tempdir().unwrap();
    let connector = smart_host(
        addr,
        &format!(
            "SmartHostAuthMechanism = \"BasicAuth\"\n{}\nSmtpMaxMessagesPerConnection = 1",
            password_file(dir.path(), PASS)
        ),
    );
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    let seen = server.await.unwrap();
    let i = seen
        .iter()
        .position(|l| l == "AUTH LOGIN")
        .expect("AUTH LOGIN sent");
    let decode =
        |s: &str| String::from_utf8(connector_relay::smtp::sasl::decode(s).unwrap()).unwrap();
    assert_eq!(decode(&seen[i + 1]), USER);
    assert_eq!(decode(&seen[i + 2]), PASS);
    assert!(seen[i + 3].starts_with("MAIL FROM:"), "{seen:?}");
}

#[tokio::test]
async fn basic_auth_require_tls_never_sends_credentials_in_plaintext() {
    // The sink offers AUTH but cannot do TLS.
    let sink = sink_with(SinkOptions {
        auth: auth(),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let connector = smart_host(
        sink.addr(),
        &format!(
            "SmartHostAuthMechanism = \"BasicAuthRequireTLS\"\n{}\nProtocolLoggingLevel = \"Verbose\"",
            password_file(dir.path(), PASS)
        ),
    );
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    let f = temporary(&out[0]);
    assert_eq!(f.enhanced, "4.7.0");
    assert!(
        f.text
            .starts_with("BasicAuthRequireTLS: TLS not established"),
        "{f:?}"
    );
    assert!(messages(sink.maildir()).is_empty());
    let log = protocol_log(dir.path());
    assert!(log.contains(",>,EHLO relay.contoso.test"), "{log}");
    assert!(!log.contains(",>,AUTH"), "AUTH sent in plaintext:\n{log}");
}

#[tokio::test]
async fn basic_auth_in_plaintext_and_wrong_password() {
    let sink = sink_with(SinkOptions {
        auth: auth(),
        ..Default::default()
    })
    .await;
    // BasicAuth may authenticate without TLS (Exchange allows it).
    let dir = tempfile::tempdir().unwrap();
    let connector = smart_host(
        sink.addr(),
        &format!(
            "SmartHostAuthMechanism = \"BasicAuth\"\n{}",
            password_file(dir.path(), PASS)
        ),
    );
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    assert_eq!(header(&messages(sink.maildir())[0], "X-Sink-Auth"), [USER]);

    // A wrong password: 535 is kept in the text, the failure is temporary (retried).
    let dir = tempfile::tempdir().unwrap();
    let connector = smart_host(
        sink.addr(),
        &format!(
            "SmartHostAuthMechanism = \"BasicAuth\"\n{}",
            password_file(dir.path(), "wrong")
        ),
    );
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    let f = temporary(&out[0]);
    assert_eq!(f.enhanced, "4.7.0");
    assert!(f.text.contains("535 5.7.8"), "{f:?}");
    assert!(!f.text.contains("wrong"), "{f:?}");
    assert_eq!(messages(sink.maildir()).len(), 1);
}

#[tokio::test]
async fn sink_auth_dialog() {
    let sink = sink_with(SinkOptions {
        auth: auth(),
        ..Default::default()
    })
    .await;
    let mut d = Dialog::connect(sink.addr()).await;
    let ehlo = d.cmd("EHLO client.test", "250").await;
    assert!(ehlo.contains("AUTH PLAIN LOGIN"), "{ehlo}");
    d.cmd("MAIL FROM:<a@b.test>", "530 5.7.0").await;
    d.cmd("AUTH CRAM-MD5", "504").await;
    d.cmd("AUTH LOGIN", "334 VXNlcm5hbWU6").await;
    d.cmd(
        &connector_relay::smtp::sasl::encode(USER.as_bytes()),
        "334 UGFzc3dvcmQ6",
    )
    .await;
    d.cmd(&connector_relay::smtp::sasl::encode(b"nope"), "535 5.7.8")
        .await;
    d.cmd("AUTH PLAIN", "334").await;
    let plain = connector_relay::smtp::sasl::plain_message(USER, PASS);
    d.cmd(&connector_relay::smtp::sasl::encode(&plain), "235 2.7.0")
        .await;
    d.cmd("AUTH PLAIN", "503").await;
    d.cmd("MAIL FROM:<a@b.test>", "250").await;
    d.cmd("QUIT", "221").await;

    // The relay itself does not offer AUTH.
    let mut d = Dialog::connect(sink_with(Default::default()).await.addr()).await;
    let ehlo = d.cmd("EHLO client.test", "250").await;
    assert!(!ehlo.contains("AUTH"), "{ehlo}");
    d.cmd("AUTH PLAIN", "502").await;
}

const CA_DN: &str = "O=connector-relay tests, CN=connector-relay Test CA";

#[tokio::test]
async fn tls_certificate_name_presents_the_client_certificate() {
    let sink = sink_with(SinkOptions {
        client_ca: Some(certs("ca.crt").into()),
        ..tls_opts()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let relay_extra = format!(
        r#"Certificates = [{{ Certificate = "{}", PrivateKey = "{}" }}, {{ Certificate = "{}", PrivateKey = "{}" }}]"#,
        certs("mail.fabrikam.test.crt"),
        certs("mail.fabrikam.test.key"),
        certs("onprem.contoso.test.crt"),
        certs("onprem.contoso.test.key"),
    );
    // Written the Windows way (CN first), with odd case and spacing.
    let connector = smart_host(
        sink.addr(),
        &format!(
            "RequireTLS = true\nTlsCertificateName = \"<I>{CA_DN}<S>cn=mail.contoso.test,  O=connector-relay tests\""
        ),
    );
    let d = deliverer(&config(dir.path(), &relay_extra, &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    let m = messages(sink.maildir());
    assert_eq!(
        header(&m[0], "X-Sink-Client-Cert"),
        ["O=connector-relay tests, CN=mail.contoso.test"]
    );

    // The relay's own TlsCertificate may be named too.
    let connector = smart_host(
        sink.addr(),
        &format!(
            "RequireTLS = true\nTlsCertificateName = \"<I>{CA_DN}<S>CN=relay.contoso.test, O=connector-relay tests\""
        ),
    );
    let d = deliverer(&config(dir.path(), &relay_extra, &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    let m = messages(sink.maildir());
    assert_eq!(m.len(), 2);
    assert!(
        m.iter().any(|m| header(m, "X-Sink-Client-Cert")
            == ["O=connector-relay tests, CN=relay.contoso.test"]),
        "{m:?}"
    );

    // A name that matches no certificate: `check` refuses the config (file:line:key).
    let nobody = format!("RequireTLS = true\nTlsCertificateName = \"<I>{CA_DN}<S>CN=nobody.test\"");
    let text = config(dir.path(), &relay_extra, &smart_host(sink.addr(), &nobody));
    let errors = connector_relay::config::load_str(&text, Path::new("relay.toml")).unwrap_err();
    assert_eq!(errors[0].key, "TlsCertificateName", "{errors:?}");
    assert!(
        errors[0].reason.contains("names no certificate"),
        "{errors:?}"
    );
    // Should the files change under a loaded policy, delivery defers, nothing sent.
    let mut policy = support::policy(&config(dir.path(), &relay_extra, &connector));
    policy.send[0].tls_certificate_name = Some(format!("<I>{CA_DN}<S>CN=nobody.test"));
    let d = Deliverer::new(Arc::new(policy), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    let f = temporary(&out[0]);
    assert!(
        f.text.contains("no certificate in [Relay] Certificates"),
        "{f:?}"
    );

    // Without a certificate the sink refuses the handshake: deferred.
    let connector = smart_host(sink.addr(), "RequireTLS = true");
    let d = deliverer(&config(dir.path(), &relay_extra, &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    temporary(&out[0]);
    assert_eq!(messages(sink.maildir()).len(), 2);
}

#[tokio::test]
async fn domain_secure_presents_the_relay_certificate_and_validates_the_domain() {
    let port = support::free_port();
    let sink = sink_with(SinkOptions {
        listen: Some(SocketAddr::new("127.0.0.31".parse().unwrap(), port)),
        client_ca: Some(certs("ca.crt").into()),
        ..tls_opts()
    })
    .await;
    let dns = TestDns::start().await;
    dns.add_mx("sink.test", 10, "mx.sink.test");
    dns.add_ip("mx.sink.test", "127.0.0.31".parse().unwrap());
    dns.add_mx("other.test", 10, "mx.other.test");
    dns.add_ip("mx.other.test", "127.0.0.31".parse().unwrap());
    let resolver: Arc<dyn Resolver> =
        Arc::new(HickoryResolver::with_timeout(&[dns.addr], Duration::from_secs(2)).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let connector = format!(
        "AddressSpaces = [\"sink.test\", \"other.test\"]\nPort = {port}\nDomainSecureEnabled = true"
    );
    let d = deliverer(&config(dir.path(), "", &connector), resolver);
    let out = send(&d, &["bob@sink.test", "carol@other.test"], "hi").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    // The sink's certificate does not carry other.test: DomainValidation fails.
    let f = temporary(&out[1]);
    assert_eq!(f.enhanced, "4.4.317", "{f:?}");
    assert!(f.text.contains("Mismatch"), "{f:?}");
    let m = messages(sink.maildir());
    assert_eq!(m.len(), 1);
    assert_eq!(
        header(&m[0], "X-Sink-Client-Cert"),
        ["O=connector-relay tests, CN=relay.contoso.test"]
    );
}

#[tokio::test]
async fn connections_are_reused_up_to_smtp_max_messages_per_connection() {
    let sink = sink_with(tls_opts()).await;
    let dir = tempfile::tempdir().unwrap();
    let connector = smart_host(sink.addr(), "SmtpMaxMessagesPerConnection = 2");
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    let n = 5;
    for i in 0..n {
        let out = send(&d, &["bob@fabrikam.test"], &format!("message {i}")).await;
        assert!(out[0].status.is_delivered(), "{out:?}");
    }
    let m = messages(sink.maildir());
    assert_eq!(m.len(), n);
    let mut conns: Vec<&str> = m
        .iter()
        .flat_map(|m| header(m, "X-Sink-Connection"))
        .collect();
    conns.dedup();
    assert_eq!(conns.len(), n.div_ceil(2), "{conns:?}");
    assert_eq!(sink.handle.connections(), n.div_ceil(2) as u64);
    // Each reused session stayed under TLS.
    assert!(m.iter().all(|m| header(m, "X-Sink-Tls").len() == 1));
}

#[tokio::test]
async fn a_broken_pooled_connection_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let sink = sink_with(Default::default()).await;
    let addr = sink.addr();
    let connector = smart_host(addr, "");
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    assert!(
        send(&d, &["bob@fabrikam.test"], "one").await[0]
            .status
            .is_delivered()
    );
    // The sink goes away (its sessions end) and comes back on the same address.
    sink.handle.shutdown().await;
    // (the old listener closes asynchronously: wait until the port is free again)
    for _ in 0..100 {
        if std::net::TcpListener::bind(addr).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let again = sink_with(SinkOptions {
        listen: Some(addr),
        ..Default::default()
    })
    .await;
    let out = send(&d, &["bob@fabrikam.test"], "two").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    assert_eq!(messages(again.maildir()).len(), 1);
}

#[tokio::test]
async fn source_ip_port_fqdn_and_force_helo() {
    let sink = sink_with(Default::default()).await;
    let dir = tempfile::tempdir().unwrap();
    // (ConnectionInactivityTimeOut is only loaded here: the deliverer's command timeout
    // overrides it; tests/connector_behaviour.rs shows it taking effect.)
    let connector = smart_host(
        sink.addr(),
        "SourceIPAddress = \"127.0.0.5\"\nFqdn = \"out.contoso.test\"\nForceHELO = true\nConnectionInactivityTimeOut = \"00:00:03\"",
    );
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    let out = send(&d, &["bob@fabrikam.test"], "hi").await;
    assert!(out[0].status.is_delivered(), "{out:?}");
    let m = messages(sink.maildir());
    assert_eq!(header(&m[0], "X-Sink-Client"), ["127.0.0.5"]);
    assert_eq!(header(&m[0], "X-Sink-Helo"), ["HELO out.contoso.test"]);

    // Defaults: EHLO with the relay's Fqdn.
    let connector = smart_host(sink.addr(), "");
    let d = deliverer(&config(dir.path(), "", &connector), no_dns());
    assert!(
        send(&d, &["bob@fabrikam.test"], "hi").await[0]
            .status
            .is_delivered()
    );
    let m = messages(sink.maildir());
    assert_eq!(header(&m[1], "X-Sink-Helo"), ["EHLO relay.contoso.test"]);
    assert_eq!(header(&m[1], "X-Sink-Client"), ["127.0.0.1"]);
}

fn refusing_sink_hook() -> sink::RcptHook {
    Arc::new(|rcpt: &str| {
        if rcpt.starts_with("policy") {
            Some(Reply::new(550, "5.7.1", "Client not authorized"))
        } else if rcpt.starts_with("nouser") {
            Some(Reply::new(550, "5.1.1", "No such user"))
        } else if rcpt.starts_with("grey") {
            Some(Reply::new(451, "4.7.1", "Greylisted"))
        } else if rcpt.starts_with("busy") {
            Some(Reply::new(450, "4.2.1", "Mailbox busy"))
        } else {
            None
        }
    })
}

#[tokio::test]
async fn error_policies() {
    let sink = sink_with(SinkOptions {
        rcpt_hook: Some(refusing_sink_hook()),
        ..Default::default()
    })
    .await;
    let rcpts = [
        "policy@fabrikam.test",
        "nouser@fabrikam.test",
        "grey@fabrikam.test",
        "busy@fabrikam.test",
    ];
    let dir = tempfile::tempdir().unwrap();
    let outcome = async |policies: &str| {
        let connector = smart_host(sink.addr(), &format!("ErrorPolicies = {policies}"));
        let d = deliverer(&config(dir.path(), "", &connector), no_dns());
        send(&d, &rcpts, "hi")
            .await
            .into_iter()
            .map(|o| {
                let f = o.status.failure().unwrap().clone();
                (o.status.is_permanent(), f.enhanced)
            })
            .collect::<Vec<_>>()
    };
    let s = |p: bool, e: &str| (p, e.to_string());
    assert_eq!(
        outcome("[\"Default\"]").await,
        [
            s(true, "5.7.1"),
            s(true, "5.1.1"),
            s(false, "4.7.1"),
            s(false, "4.2.1")
        ]
    );
    assert_eq!(
        outcome("[\"DowngradeCustomFailures\"]").await,
        [
            s(false, "4.7.1"),
            s(true, "5.1.1"),
            s(false, "4.7.1"),
            s(false, "4.2.1")
        ]
    );
    assert_eq!(
        outcome("\"UpgradeCustomFailures\"").await,
        [
            s(true, "5.7.1"),
            s(true, "5.1.1"),
            s(true, "5.7.1"),
            s(false, "4.2.1")
        ]
    );

    // DowngradeDnsFailures: a domain that does not exist is retried instead of bounced.
    let dns = TestDns::start().await;
    let resolver: Arc<dyn Resolver> =
        Arc::new(HickoryResolver::with_timeout(&[dns.addr], Duration::from_secs(2)).unwrap());
    for (policies, permanent, code) in [
        ("\"Default\"", true, "5.4.310"),
        ("\"DowngradeDnsFailures\"", false, "4.4.310"),
    ] {
        let connector = format!("AddressSpaces = [\"gone.test\"]\nErrorPolicies = {policies}");
        let d = deliverer(&config(dir.path(), "", &connector), resolver.clone());
        let out = send(&d, &["x@gone.test"], "hi").await;
        let f = out[0].status.failure().unwrap();
        assert_eq!(
            (out[0].status.is_permanent(), f.enhanced.as_str()),
            (permanent, code),
            "{out:?}"
        );
    }
}

#[tokio::test]
async fn use_external_dns_servers() {
    let port = support::free_port();
    let inside = sink_with(SinkOptions {
        listen: Some(SocketAddr::new("127.0.0.21".parse().unwrap(), port)),
        ..Default::default()
    })
    .await;
    let outside = sink_with(SinkOptions {
        listen: Some(SocketAddr::new("127.0.0.22".parse().unwrap(), port)),
        ..Default::default()
    })
    .await;
    let (internal, external) = (TestDns::start().await, TestDns::start().await);
    for (dns, ip) in [(&internal, "127.0.0.21"), (&external, "127.0.0.22")] {
        for d in ["fabrikam.test", "tailspin.test"] {
            dns.add_mx(d, 10, &format!("mx.{d}"));
            dns.add_ip(&format!("mx.{d}"), ip.parse::<IpAddr>().unwrap());
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let toml = format!(
        r#"{}

[[SendConnector]]
Name = "Internal DNS"
AddressSpaces = ["tailspin.test"]
Port = {port}
"#,
        config(
            dir.path(),
            &format!("ExternalDnsServers = [\"{}\"]", external.addr),
            &format!(
                "AddressSpaces = [\"fabrikam.test\"]\nPort = {port}\nUseExternalDNSServersEnabled = true"
            ),
        )
    );
    let resolver = |dns: &TestDns| -> Arc<dyn Resolver> {
        Arc::new(HickoryResolver::with_timeout(&[dns.addr], Duration::from_secs(2)).unwrap())
    };
    let d = deliverer(&toml, resolver(&internal)).with_external_resolver(resolver(&external));
    let out = send(&d, &["a@fabrikam.test", "b@tailspin.test"], "hi").await;
    assert!(out.iter().all(|o| o.status.is_delivered()), "{out:?}");
    let (mi, mo) = (messages(inside.maildir()), messages(outside.maildir()));
    assert_eq!((mi.len(), mo.len()), (1, 1));
    assert_eq!(header(&mo[0], "X-Sink-Rcpt-To"), ["<a@fabrikam.test>"]);
    assert_eq!(header(&mi[0], "X-Sink-Rcpt-To"), ["<b@tailspin.test>"]);
}
