//! Unauthenticated pipelining abuse (Postfix `smtpd_forbid_unauth_pipelining`): talking
//! before the greeting, pipelining without EHLO, data before `354`, commands after a
//! command that must end a group → `554 5.5.0 Error: SMTP protocol synchronization` and the
//! connection closed. Legitimate RFC 2920 pipelining after EHLO still works.

mod support;

use std::time::Duration;

use support::*;
use tokio::io::AsyncWriteExt;

const SYNC: &str = "554 5.5.0 Error: SMTP protocol synchronization";

async fn relay() -> (connector_relay::relay::RelayHandle, Sink, tempfile::TempDir) {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), ""), None).await;
    (relay, sink, tmp)
}

#[tokio::test]
async fn commands_before_the_greeting_are_refused() {
    let (relay, _sink, _tmp) = relay().await;
    let mut stream = tcp_from("127.0.0.1".parse().unwrap(), relay.smtp_addrs[0]).await;
    stream
        .write_all(b"EHLO bot.test\r\nMAIL FROM:<a@fabrikam.test>\r\n")
        .await
        .unwrap();
    let mut d = Dialog::new(stream);
    assert_eq!(d.read_reply().await, SYNC, "no greeting, only the refusal");
    assert_eq!(d.read_reply().await, "<closed>");
    relay.shutdown(Duration::from_secs(5)).await;
}

/// Each case: commands after the greeting, sent in one write; the replies expected before
/// the refusal.
#[tokio::test]
async fn improper_pipelining_is_refused_and_disconnected() {
    let (relay, sink, _tmp) = relay().await;
    let cases: [(&str, &[&str]); 7] = [
        // EHLO must end its group.
        ("EHLO a.test\r\nMAIL FROM:<a@fabrikam.test>\r\n", &[]),
        // HELO: no PIPELINING at all.
        (
            "HELO a.test\r\n",
            &["250 relay.contoso.test"], // then, below, a pipelined pair
        ),
        // Data sent right behind DATA, before 354.
        (
            "EHLO a.test\r\n",
            &["250"], // then MAIL/RCPT/DATA + content
        ),
        ("EHLO a.test\r\n", &["250"]),
        ("EHLO a.test\r\n", &["250"]),
        ("EHLO a.test\r\n", &["250"]),
        ("EHLO a.test\r\n", &["250"]),
    ];
    let follow: [&str; 7] = [
        "",
        "MAIL FROM:<a@fabrikam.test>\r\nRCPT TO:<bob@contoso.test>\r\n",
        "MAIL FROM:<a@fabrikam.test>\r\nRCPT TO:<bob@contoso.test>\r\nDATA\r\nSubject: x\r\n\r\nearly\r\n.\r\n",
        "NOOP\r\nNOOP\r\n",
        "QUIT\r\nNOOP\r\n",
        "EHLO again.test\r\nMAIL FROM:<a@fabrikam.test>\r\n",
        "VRFY bob\r\nMAIL FROM:<a@fabrikam.test>\r\n",
    ];
    let before_refusal: [&[&str]; 7] = [&[], &[], &["250 2.1.0", "250 2.1.5"], &[], &[], &[], &[]];
    for (i, ((first, first_replies), then)) in cases.iter().zip(follow).enumerate() {
        let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
        d.send(first.as_bytes()).await;
        for r in *first_replies {
            d.expect(r, first).await;
        }
        d.send(then.as_bytes()).await;
        for r in before_refusal[i] {
            d.expect(r, then).await;
        }
        let reply = d.read_reply().await;
        assert_eq!(reply, SYNC, "case {i}: {first:?} then {then:?}");
        assert_eq!(d.read_reply().await, "<closed>", "case {i}");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(messages(sink.maildir()).is_empty(), "nothing was accepted");
    relay.shutdown(Duration::from_secs(5)).await;
}

/// RFC 2920: after EHLO, MAIL/RCPT/RSET may be pipelined with DATA last; the message text
/// follows the 354; the next transaction may follow the end of data.
#[tokio::test]
async fn legitimate_pipelining_is_served() {
    let (relay, sink, _tmp) = relay().await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    d.send(
        b"RSET\r\nMAIL FROM:<a@fabrikam.test>\r\nRCPT TO:<bob@contoso.test>\r\n\
          RCPT TO:<carol@contoso.test>\r\nDATA\r\n",
    )
    .await;
    for r in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "250 2.1.5", "354"] {
        d.expect(r, "pipelined group").await;
    }
    d.send(b"Subject: pipelined\r\n\r\nok\r\n.\r\nMAIL FROM:<a@fabrikam.test>\r\nRCPT TO:<dave@contoso.test>\r\nDATA\r\n")
        .await;
    for r in ["250 2.0.0", "250 2.1.0", "250 2.1.5", "354"] {
        d.expect(r, "second group after end of data").await;
    }
    d.cmd("Subject: second\r\n\r\nok\r\n.", "250 2.0.0").await;
    d.cmd("QUIT", "221").await;
    let m = wait_messages(sink.maildir(), 2, Duration::from_secs(30)).await;
    assert_eq!(m.len(), 2);
    relay.shutdown(Duration::from_secs(5)).await;
}
