//! The SMTP server's dialog over real sockets: every command's reply code, the RFC limits,
//! STARTTLS (and the command-injection defence), implicit TLS, bare newlines, the SIGTERM
//! drain, delay notices, the sink's TLS options, and start-up with a corrupt spool file.

mod support;

use std::sync::Arc;
use std::time::Duration;

use connector_relay::smtp::Reply;
use support::*;

const WAIT: Duration = Duration::from_secs(30);

async fn relay_with(extra: &str) -> (connector_relay::relay::RelayHandle, Sink, tempfile::TempDir) {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), extra), None).await;
    (relay, sink, tmp)
}

#[tokio::test]
async fn every_command_has_its_reply() {
    let (relay, _sink, _tmp) = relay_with("MaxProtocolErrors = 20").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("MAIL FROM:<a@b.test>", "503 5.5.1").await;
    let ehlo = d.cmd("EHLO client.test", "250 ").await;
    for ext in [
        "PIPELINING",
        "SIZE 26214400",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "STARTTLS",
    ] {
        assert!(
            ehlo.lines().any(|l| &l[4..] == ext),
            "EHLO lacks {ext}: {ehlo}"
        );
    }
    d.cmd("HELO client.test", "250 relay.contoso.test").await;
    d.cmd("NOOP", "250 2.0.0").await;
    d.cmd("VRFY bob", "252 2.5.0").await;
    d.cmd("HELP", "214 2.0.0").await;
    d.cmd("EXPN staff", "502 5.5.1").await;
    d.cmd("FROB", "500 5.5.2").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "503 5.5.1").await;
    d.cmd("DATA", "503 5.5.1").await;
    d.cmd("MAIL FROM:a@b.test", "501 5.5.4").await;
    d.cmd("MAIL FROM:<a@b.test> RET=HDRS", "555 5.5.4").await;
    d.cmd("MAIL FROM:<a@b.test>", "250 2.1.0").await;
    d.cmd("MAIL FROM:<a@b.test>", "503 5.5.1").await;
    d.cmd("RCPT TO:<bob@@contoso.test>", "501 5.5.4").await;
    d.cmd("DATA", "554 5.5.1").await;
    d.cmd("RSET", "250 2.0.0").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "503 5.5.1").await;
    d.cmd("QUIT", "221 2.0.0").await;
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn rfc_limits_are_enforced() {
    let (relay, sink, _tmp) =
        relay_with("MaxRecipientsPerMessage = 3\nMaxMessageSize = \"2KB\"").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    // RFC 5321 §4.5.3.1.4: 512-octet command lines.
    d.cmd(&format!("NOOP {}", "x".repeat(600)), "500 5.5.6")
        .await;
    d.cmd("MAIL FROM:<a@b.test> SIZE=4096", "552 5.3.4").await;
    d.cmd("MAIL FROM:<a@b.test> SIZE=100", "250").await;
    for i in 0..3 {
        d.cmd(&format!("RCPT TO:<u{i}@contoso.test>"), "250").await;
    }
    d.cmd("RCPT TO:<u3@contoso.test>", "452 4.5.3").await;
    d.cmd("DATA", "354").await;
    // Far over MaxMessageSize: refused after the end of data, session still in sync.
    let big = "0123456789".repeat(50) + "\r\n";
    d.send(big.repeat(20).as_bytes()).await;
    d.cmd(".", "552 5.3.4").await;
    // RFC 5321 §4.5.3.1.6: 1000-octet text lines.
    d.cmd("MAIL FROM:<a@b.test>", "250").await;
    d.cmd("RCPT TO:<u@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(format!("{}\r\n", "y".repeat(1200)).as_bytes()).await;
    d.cmd(".", "500 5.5.6").await;
    d.cmd("NOOP", "250").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        messages(sink.maildir()).is_empty(),
        "nothing refused was relayed"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn too_many_errors_drop_the_session() {
    let (relay, _sink, _tmp) = relay_with("MaxProtocolErrors = 3").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("BAD1", "500 5.5.2").await;
    d.cmd("BAD2", "500 5.5.2").await;
    d.cmd("BAD3", "500 5.5.2").await;
    d.send(b"BAD4\r\n").await;
    let r = d.read_reply().await;
    assert!(
        r.ends_with("421 4.7.0 Too many errors, closing connection"),
        "{r}"
    );
    assert_eq!(d.read_reply().await, "<closed>");
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn bare_newlines_are_refused_and_nothing_is_smuggled() {
    let (relay, sink, _tmp) = relay_with("").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<a@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(b"Subject: a\r\n\r\nbody\n.\nMAIL FROM:<x@evil.test>\r\nRCPT TO:<carol@contoso.test>\r\nDATA\r\nsmuggled\r\n").await;
    d.cmd(".", "550 5.6.11").await;
    d.cmd("QUIT", "221").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(messages(sink.maildir()).is_empty());
    relay.shutdown(Duration::from_secs(5)).await;
}

/// CVE-2011-0411: commands pipelined after STARTTLS must not run inside TLS.
#[tokio::test]
async fn starttls_discards_pipelined_commands() {
    let (relay, _sink, _tmp) = relay_with("").await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.send(b"STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\n")
        .await;
    d.expect("220 2.0.0", "STARTTLS").await;
    let mut t = d.starttls("relay.contoso.test", None).await;
    // The injected MAIL was dropped: the TLS session starts over and needs EHLO.
    t.cmd("MAIL FROM:<a@b.test>", "503 5.5.1").await;
    let ehlo = t.cmd("EHLO client.test", "250").await;
    assert!(
        !ehlo.contains("STARTTLS"),
        "STARTTLS is not offered twice: {ehlo}"
    );
    t.cmd("STARTTLS", "503 5.5.1").await;
    t.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}

/// STARTTLS negotiates TLS 1.2 and TLS 1.3; the Received header names the version.
#[tokio::test]
async fn starttls_speaks_tls12_and_tls13() {
    let (relay, sink, _tmp) = relay_with("").await;
    let versions: [(&'static rustls::SupportedProtocolVersion, &str); 2] = [
        (&rustls::version::TLS12, "TLSv1.2"),
        (&rustls::version::TLS13, "TLSv1.3"),
    ];
    for (version, label) in versions {
        let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
        d.cmd("EHLO client.test", "250").await;
        d.cmd("STARTTLS", "220 2.0.0").await;
        let stream = d.reader_stream();
        let tls = tls_connect_with(stream, "relay.contoso.test", None, &[version]).await;
        let mut t = Dialog::new(tls.expect("handshake"));
        t.cmd("EHLO client.test", "250").await;
        t.cmd("MAIL FROM:<a@fabrikam.test>", "250").await;
        t.cmd("RCPT TO:<bob@contoso.test>", "250").await;
        t.cmd("DATA", "354").await;
        t.cmd(&format!("Subject: {label}\r\n\r\nhi\r\n."), "250")
            .await;
        t.cmd("QUIT", "221").await;
    }
    let got = wait_messages(sink.maildir(), 2, WAIT).await;
    assert_eq!(got.len(), 2);
    for (_, label) in versions {
        let m = got
            .iter()
            .find(|m| m.contains(&format!("Subject: {label}\r\n")))
            .unwrap();
        assert!(m.contains(&format!("version={label} ")), "{m}");
    }
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn implicit_tls_listener() {
    let (relay, sink, _tmp) = relay_with("ImplicitTlsListen = [\"127.0.0.1:0\"]").await;
    let stream = tcp_from("127.0.0.1".parse().unwrap(), relay.implicit_tls_addrs[0]).await;
    let mut t = Dialog::new(
        tls_connect(stream, "relay.contoso.test", None)
            .await
            .unwrap(),
    );
    t.expect("220 ", "greeting").await;
    t.cmd("EHLO client.test", "250").await;
    t.cmd("MAIL FROM:<a@fabrikam.test>", "250").await;
    t.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    t.cmd("DATA", "354").await;
    t.cmd("Subject: implicit\r\n\r\nhi\r\n.", "250").await;
    let got = wait_messages(sink.maildir(), 1, WAIT).await;
    assert!(got[0].contains("with ESMTPS"), "{}", got[0]);
    relay.shutdown(Duration::from_secs(5)).await;
}

/// SIGTERM behaviour: idle sessions and new connections get 421 4.3.2, a transaction in
/// progress finishes and its message is delivered.
#[tokio::test]
async fn shutdown_drains() {
    let (relay, sink, _tmp) = relay_with("").await;
    let addr = relay.smtp_addrs[0];
    let mut busy = Dialog::connect(addr).await;
    busy.cmd("EHLO client.test", "250").await;
    busy.cmd("MAIL FROM:<a@fabrikam.test>", "250").await;
    busy.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    let mut idle = Dialog::connect(addr).await;
    idle.cmd("EHLO idle.test", "250").await;

    let stopping = tokio::spawn(relay.shutdown(Duration::from_secs(20)));
    idle.expect("421 4.3.2", "idle session at shutdown").await;
    let mut late = Dialog::new(tcp_from("127.0.0.1".parse().unwrap(), addr).await);
    late.expect("421 4.3.2", "new connection during the drain")
        .await;

    busy.cmd("DATA", "354").await;
    busy.cmd("Subject: drain\r\n\r\nhi\r\n.", "250 2.0.0").await;
    busy.cmd("NOOP", "421 4.3.2").await;
    tokio::time::timeout(WAIT, stopping)
        .await
        .expect("drain finishes")
        .unwrap();
    // Accepted during the drain: delivered already, or still safe in the spool for the
    // next start — exactly one of the two.
    let delivered = messages(sink.maildir()).len();
    let spooled = std::fs::read_dir(_tmp.path().join("msg")).unwrap().count();
    assert_eq!(
        delivered + spooled,
        1,
        "delivered {delivered}, spooled {spooled}"
    );
}

/// After DelayNotificationTimeout the sender gets exactly one delay DSN.
#[tokio::test]
async fn delay_notification() {
    let onprem = start_sink().await;
    let dead = free_port();
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = relay_config(
        tmp.path(),
        onprem.addr(),
        "DelayNotificationTimeout = \"00:00:02\"",
    );
    cfg.push_str(&format!(
        "\n[[OutboundConnector]]\nName = \"To Fabrikam\"\nRecipientDomains = [\"fabrikam.test\"]\nUseMXRecord = false\nSmartHosts = [\"127.0.0.1:{dead}\"]\n"
    ));
    let relay = start_relay(&cfg, None).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.test", "250").await;
    d.cmd("MAIL FROM:<alice@contoso.test>", "250").await;
    d.cmd("RCPT TO:<dan@fabrikam.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: slow\r\n\r\nhi\r\n.", "250").await;
    let got = wait_messages(onprem.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1, "a delay notice");
    assert!(got[0].contains("Action: delayed"), "{}", got[0]);
    assert!(got[0].contains("X-Sink-Mail-From: <>"), "{}", got[0]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(messages(onprem.maildir()).len(), 1, "only one delay notice");
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A bounce is never bounced: a failure of a message from the null sender makes no DSN.
#[tokio::test]
async fn no_dsn_to_the_null_sender() {
    let hook: connector_relay::sink::RcptHook =
        Arc::new(|_: &str| Some(Reply::new(550, "5.1.1", "no such user")));
    let onprem = start_sink_with("127.0.0.1:0".parse().unwrap(), false, Some(hook)).await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), onprem.addr(), ""), None).await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.cmd("Subject: bounce\r\n\r\nhi\r\n.", "250").await;
    // The message fails permanently and leaves the spool without a DSN being queued.
    let msg_dir = tmp.path().join("msg");
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_dir(&msg_dir).unwrap().count() > 0 && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        std::fs::read_dir(&msg_dir).unwrap().count(),
        0,
        "no DSN queued, spool empty"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sink_require_tls_and_client_ca() {
    let dir = tempfile::tempdir().unwrap();
    let sink = connector_relay::sink::start(connector_relay::sink::SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        tls_cert: Some(certs("sink.test.crt").into()),
        tls_key: Some(certs("sink.test.key").into()),
        require_tls: true,
        client_ca: Some(certs("ca.crt").into()),
        rcpt_hook: None,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut d = Dialog::connect(sink.addr).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<a@b.test>", "530 5.7.0").await;
    d.cmd("STARTTLS", "220").await;
    // Without a client certificate the handshake is refused.
    let stream = d.reader_stream();
    let no_cert = tls_connect(stream, "sink.test", None).await;
    let failed = match no_cert {
        Err(_) => true,
        Ok(s) => {
            let mut t = Dialog::new(s);
            t.send(b"EHLO client.test\r\n").await;
            t.read_reply().await == "<closed>"
        }
    };
    assert!(
        failed,
        "a session without a client certificate must not proceed"
    );
    // With one issued by the CA it works.
    let mut d = Dialog::connect(sink.addr).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("STARTTLS", "220").await;
    let mut t = d
        .starttls(
            "sink.test",
            Some(("onprem.contoso.test.crt", "onprem.contoso.test.key")),
        )
        .await;
    t.cmd("EHLO client.test", "250").await;
    t.cmd("MAIL FROM:<a@b.test>", "250").await;
    t.cmd("RCPT TO:<c@d.test>", "250").await;
    t.cmd("DATA", "354").await;
    t.cmd("Subject: mtls\r\n\r\nhi\r\n.", "250").await;
    let got = wait_messages(dir.path(), 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("X-Sink-Tls: TLSv1.3"), "{}", got[0]);
    sink.shutdown().await;
}

/// A corrupt spool file at start-up is moved aside and reported; the rest is delivered.
#[tokio::test]
async fn corrupt_spool_file_is_moved_aside() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = relay_config(tmp.path(), sink.addr(), "");
    {
        // A good message, stored through the spool API, and a garbage file beside it.
        let spool = connector_relay::queue::spool::Spool::open(tmp.path()).unwrap();
        let env = connector_relay::queue::spool::Envelope {
            mail_from: "a@fabrikam.test".into(),
            recipients: vec!["bob@contoso.test".into()],
            arrived: connector_relay::queue::spool::unix_now(),
            inbound_connector: None,
            from_outside_org: true,
            smtputf8: false,
            requiretls: false,
        };
        spool
            .store("GOOD1", &env, b"Subject: survivor\r\n\r\nhi\r\n")
            .unwrap();
        std::fs::write(
            tmp.path().join("msg").join("BROKEN1"),
            b"\x00\x01 not a spool file",
        )
        .unwrap();
    }
    let relay = start_relay(&cfg, None).await;
    let got = wait_messages(sink.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(got[0].contains("Subject: survivor"));
    assert!(tmp.path().join("corrupt").join("BROKEN1").exists());
    relay.shutdown(Duration::from_secs(5)).await;
}

/// `sink --discard` (the benchmark's TLS downstream): messages are accepted and counted in
/// `<maildir>/count`, and nothing else is written.
#[tokio::test]
async fn sink_discard_counts_without_storing() {
    let dir = tempfile::tempdir().unwrap();
    let sink = connector_relay::sink::start(connector_relay::sink::SinkOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        maildir: dir.path().to_path_buf(),
        discard: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut d = Dialog::connect(sink.addr).await;
    d.cmd("EHLO client.test", "250").await;
    for i in 0..3 {
        d.cmd("MAIL FROM:<a@b.test>", "250").await;
        d.cmd("RCPT TO:<c@d.test>", "250").await;
        d.cmd("DATA", "354").await;
        d.cmd(
            &format!("Subject: {i}\r\n\r\nhi\r\n."),
            "250 2.0.0 Ok: discarded",
        )
        .await;
    }
    d.cmd("QUIT", "221").await;
    let count = dir.path().join(connector_relay::sink::COUNT_FILE);
    let deadline = tokio::time::Instant::now() + WAIT;
    while std::fs::read_to_string(&count).unwrap_or_default().trim() != "3" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "count never reached 3"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let files: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(files, [connector_relay::sink::COUNT_FILE], "nothing stored");
    sink.shutdown().await;
}
