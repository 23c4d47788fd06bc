//! Puts many messages into a relay quickly: several SMTP sessions at once from one source
//! address, each sending MAIL, RCPT and DATA as one pipelined group (RFC 2920: DATA ends a
//! group; the text waits for the `354`).

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The Message-ID (with its angle brackets) of message `i` of a batch tagged `tag`.
pub fn message_id(tag: &str, i: usize) -> String {
    format!("<{tag}-{i}@queues.test>")
}

/// Sends `count` messages to `rcpt` over `sessions` sessions from `source` (an address of
/// an OnPremises inbound connector, so any recipient domain may be relayed). Every reply
/// must be positive (else panics); answers the Message-IDs of the messages accepted (250),
/// all of them.
pub async fn inject(
    smtp: SocketAddr,
    source: IpAddr,
    rcpt: &str,
    tag: &str,
    count: usize,
    sessions: usize,
) -> Vec<String> {
    let mut tasks = Vec::new();
    for c in 0..sessions {
        let (rcpt, tag) = (rcpt.to_string(), tag.to_string());
        tasks.push(tokio::spawn(async move {
            let stream = super::tcp_from(source, smtp).await;
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            expect(&mut r, "220", "greeting").await;
            w.write_all(b"EHLO inject.contoso.test\r\n").await.unwrap();
            expect(&mut r, "250", "EHLO").await;
            let mut ids = Vec::new();
            for i in (c..count).step_by(sessions) {
                let id = message_id(&tag, i);
                let group = format!("MAIL FROM:<app@contoso.test>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n");
                w.write_all(group.as_bytes()).await.unwrap();
                expect(&mut r, "250", "MAIL").await;
                expect(&mut r, "250", "RCPT").await;
                expect(&mut r, "354", "DATA").await;
                let text = format!(
                    "From: app@contoso.test\r\nTo: {rcpt}\r\nSubject: {tag} {i}\r\n\
                     Message-ID: {id}\r\n\r\nqueue test message {i}\r\n.\r\n"
                );
                w.write_all(text.as_bytes()).await.unwrap();
                expect(&mut r, "250", "end of DATA").await;
                ids.push(id);
            }
            w.write_all(b"QUIT\r\n").await.unwrap();
            ids
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.extend(t.await.expect("injecting session"));
    }
    ids.sort();
    ids
}

/// Reads one reply (all its lines) and asserts its code.
async fn expect(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>, code: &str, what: &str) {
    let mut line = String::new();
    loop {
        line.clear();
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), r.read_line(&mut line))
            .await
            .unwrap_or_else(|_| panic!("reply to {what} within 30 s"))
            .unwrap_or(0);
        assert!(n > 0, "connection closed waiting for the reply to {what}");
        if line.len() < 4 || line.as_bytes()[3] != b'-' {
            break;
        }
    }
    assert!(
        line.starts_with(code),
        "{what}: expected {code}, got {line:?}"
    );
}
