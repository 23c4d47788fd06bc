//! Next hops that break the reply sequence (issue 13): a message must count as delivered
//! only when the server answered `354` to DATA, got the whole message, and answered the
//! final "." with a 2xx — replies counted against commands. Each fake next hop below makes
//! one mistake that buggy appliances, overloaded servers or a tampering middlebox make; the
//! relay must defer every message (never report it delivered), and deliver each once the
//! next hop behaves again.
//!
//! Every fake runs with and without PIPELINING, through the whole relay (SMTP in, spool,
//! queue, the outbound client, trace).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connector_relay::trace::EventKind;
use connector_relay::trace::query::{TraceQuery, query};
use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const WAIT: Duration = Duration::from_secs(60);
/// Messages sent through the relay per case.
const MESSAGES: usize = 3;

/// The one thing a fake next hop gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Answers DATA with `250` instead of `354` (and stays in command mode).
    DataGets250,
    /// Answers MAIL twice: every later reply is one off.
    MailTwice,
    /// Answers RCPT twice.
    RcptTwice,
    /// EHLO reply whose lines all start `250 ` (each line is a whole reply).
    EhloWithoutDashes,
    /// A stray `250` right after the greeting.
    StrayAfterGreeting,
    /// `354` and at once a `250`, before any message text.
    EarlyReplyAfter354,
    /// Two replies to the final ".": the first may not be the answer to the message.
    EndOfDataTwice,
    /// Not a fault: `250` to the final "." and at once an unsolicited `421` (RFC 5321 §3.8:
    /// a server being shut down), then the connection closes.
    ClosingNoticeAfterEndOfData,
}

/// What the fake saw.
#[derive(Default)]
struct Seen {
    /// MAIL commands received (one per attempt at a transaction).
    mails: AtomicUsize,
    /// Messages received whole, up to their final ".".
    stored: AtomicUsize,
}

async fn start_fake(
    fault: Fault,
    pipelining: bool,
) -> (SocketAddr, Arc<Seen>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(fake_session(stream, fault, pipelining, s.clone()));
        }
    });
    (addr, seen, task)
}

/// One SMTP session of the fake: correct except for `fault`. Each reply is its own write.
async fn fake_session(stream: TcpStream, fault: Fault, pipelining: bool, seen: Arc<Seen>) {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r);
    let mut greeting = "220 fake.test ESMTP\r\n".to_string();
    if fault == Fault::StrayAfterGreeting {
        greeting.push_str("250 2.0.0 stray\r\n");
    }
    if !out(&mut w, &greeting).await {
        return;
    }
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => ehlo_reply(fault, pipelining),
            "HELO" | "RSET" | "NOOP" => "250 2.0.0 ok\r\n".to_string(),
            "MAIL" => {
                seen.mails.fetch_add(1, Ordering::SeqCst);
                twice_if(fault == Fault::MailTwice, "250 2.1.0 sender ok\r\n")
            }
            "RCPT" => twice_if(fault == Fault::RcptTwice, "250 2.1.5 recipient ok\r\n"),
            "DATA" if fault == Fault::DataGets250 => "250 2.0.0 ok\r\n".to_string(),
            "DATA" => {
                let go = if fault == Fault::EarlyReplyAfter354 {
                    "354 go ahead\r\n250 2.0.0 queued early\r\n"
                } else {
                    "354 go ahead\r\n"
                };
                if !out(&mut w, go).await || !read_message(&mut lines).await {
                    return;
                }
                seen.stored.fetch_add(1, Ordering::SeqCst);
                if fault == Fault::ClosingNoticeAfterEndOfData {
                    let _ = out(&mut w, "250 2.0.0 queued\r\n421 4.3.2 shutting down\r\n").await;
                    return;
                }
                twice_if(fault == Fault::EndOfDataTwice, "250 2.0.0 queued\r\n")
            }
            "QUIT" => {
                let _ = out(&mut w, "221 2.0.0 bye\r\n").await;
                return;
            }
            _ => "500 5.5.2 what?\r\n".to_string(),
        };
        if !out(&mut w, &reply).await {
            return;
        }
    }
}

async fn out(w: &mut tokio::net::tcp::OwnedWriteHalf, text: &str) -> bool {
    w.write_all(text.as_bytes()).await.is_ok()
}

fn ehlo_reply(fault: Fault, pipelining: bool) -> String {
    let mut lines = vec!["fake.test", "8BITMIME", "ENHANCEDSTATUSCODES"];
    if pipelining {
        lines.insert(1, "PIPELINING");
    }
    let n = lines.len();
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let sep = if i + 1 == n || fault == Fault::EhloWithoutDashes {
                ' '
            } else {
                '-'
            };
            format!("250{sep}{l}\r\n")
        })
        .collect()
}

fn twice_if(twice: bool, reply: &str) -> String {
    if twice {
        reply.repeat(2)
    } else {
        reply.to_string()
    }
}

/// Reads message text up to the final "." line; false when the connection closed first.
async fn read_message(lines: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> bool {
    let mut line = String::new();
    loop {
        line.clear();
        if lines.read_line(&mut line).await.unwrap_or(0) == 0 {
            return false;
        }
        if line == ".\r\n" {
            return true;
        }
    }
}

fn trace_rows(data: &std::path::Path) -> Vec<connector_relay::trace::TraceEvent> {
    let q = TraceQuery {
        sender: Some("alice@fabrikam.test".into()),
        limit: 10_000,
        ..Default::default()
    };
    query(data, &q).unwrap_or_default()
}

/// Sends `MESSAGES` messages through the relay to a next hop with `fault`, checks that none
/// is reported delivered while it misbehaves, then that each arrives once it behaves.
async fn case(fault: Fault, pipelining: bool) {
    let (addr, seen, fake) = start_fake(fault, pipelining).await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), addr, ""), None).await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    for i in 0..MESSAGES {
        let subject = format!("{fault:?} {pipelining} #{i}");
        d.send_message(
            "alice@fabrikam.test",
            "bob@contoso.test",
            &format!("Subject: {subject}\r\n\r\nhello"),
        )
        .await;
    }
    d.cmd("QUIT", "221").await;

    // Every message tried at least twice (a first attempt and a retry), none delivered.
    let deadline = Instant::now() + WAIT;
    let deferred = loop {
        let rows = trace_rows(tmp.path());
        let deferred = rows
            .iter()
            .filter(|e| e.event == EventKind::Deferred)
            .count();
        let tried = seen.mails.load(Ordering::SeqCst) >= 2 * MESSAGES
            || fault == Fault::EhloWithoutDashes
            || fault == Fault::StrayAfterGreeting;
        if deferred >= 2 * MESSAGES && tried {
            break rows;
        }
        assert!(
            Instant::now() < deadline,
            "{fault:?} pipelining={pipelining}: not deferred twice each: {rows:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivered = deferred
        .iter()
        .filter(|e| e.event == EventKind::Delivered)
        .count();
    assert_eq!(
        delivered, 0,
        "{fault:?} pipelining={pipelining}: reported delivered while the next hop misbehaves"
    );
    let reasons: Vec<String> = deferred
        .iter()
        .filter(|e| e.event == EventKind::Deferred)
        .map(|e| {
            format!(
                "{} {}",
                e.reply.as_deref().unwrap_or(""),
                e.detail.as_deref().unwrap_or("")
            )
        })
        .collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("4.5.0") && r.contains("lost synchronization")),
        "{fault:?} pipelining={pipelining}: {reasons:#?}"
    );
    let stored = seen.stored.load(Ordering::SeqCst);
    // Only a fake that answers twice after the whole message has it; the relay treats
    // those as not delivered (a duplicate later is acceptable, a loss is not).
    if fault != Fault::EndOfDataTwice {
        assert_eq!(
            stored, 0,
            "{fault:?} pipelining={pipelining}: the fake kept a message"
        );
    }
    println!(
        "{fault:?} pipelining={pipelining}: {} deferrals, 0 delivered, fake stored {stored}; e.g. {}",
        reasons.len(),
        reasons[0]
    );

    // The next hop behaves again: a real sink on the same address gets every message.
    fake.abort();
    let _ = fake.await;
    let sink = start_sink_with(addr, false, None).await;
    let got = wait_messages(sink.maildir(), MESSAGES, WAIT).await;
    for i in 0..MESSAGES {
        let subject = format!("Subject: {fault:?} {pipelining} #{i}");
        let n = got.iter().filter(|m| m.contains(&subject)).count();
        assert_eq!(n, 1, "{subject}: delivered {n} times: {got:#?}");
    }
    relay.shutdown(Duration::from_secs(5)).await;
}

async fn both_ways(fault: Fault) {
    case(fault, true).await;
    case(fault, false).await;
}

#[tokio::test]
async fn data_answered_250_is_not_delivery() {
    both_ways(Fault::DataGets250).await;
}

#[tokio::test]
async fn mail_answered_twice_is_lost_synchronization() {
    both_ways(Fault::MailTwice).await;
}

#[tokio::test]
async fn rcpt_answered_twice_is_lost_synchronization() {
    both_ways(Fault::RcptTwice).await;
}

#[tokio::test]
async fn ehlo_lines_without_dashes_are_stray_replies() {
    both_ways(Fault::EhloWithoutDashes).await;
}

#[tokio::test]
async fn stray_reply_after_the_greeting() {
    both_ways(Fault::StrayAfterGreeting).await;
}

#[tokio::test]
async fn reply_before_the_message_text_is_not_delivery() {
    both_ways(Fault::EarlyReplyAfter354).await;
}

#[tokio::test]
async fn two_replies_to_the_end_of_data_are_in_doubt() {
    both_ways(Fault::EndOfDataTwice).await;
}

/// A `421` closing notice right behind the `250` to the end of data is not a second reply:
/// each message is delivered once, never deferred, and the connection is not reused.
#[tokio::test]
async fn a_closing_notice_after_the_end_of_data_is_not_a_second_reply() {
    for pipelining in [true, false] {
        let (addr, seen, _fake) = start_fake(Fault::ClosingNoticeAfterEndOfData, pipelining).await;
        let tmp = tempfile::tempdir().unwrap();
        let relay = start_relay(&relay_config(tmp.path(), addr, ""), None).await;
        let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
        d.cmd("EHLO client.test", "250").await;
        for i in 0..MESSAGES {
            let body = format!("Subject: closing {i}\r\n\r\nhello");
            d.send_message("alice@fabrikam.test", "bob@contoso.test", &body)
                .await;
        }
        d.cmd("QUIT", "221").await;
        let deadline = Instant::now() + WAIT;
        let rows = loop {
            let rows = trace_rows(tmp.path());
            let delivered = rows
                .iter()
                .filter(|e| e.event == EventKind::Delivered)
                .count();
            if delivered >= MESSAGES {
                break rows;
            }
            assert!(
                Instant::now() < deadline,
                "pipelining={pipelining}: {rows:#?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            !rows.iter().any(|e| e.event == EventKind::Deferred),
            "pipelining={pipelining}: {rows:#?}"
        );
        assert_eq!(seen.stored.load(Ordering::SeqCst), MESSAGES, "each once");
        assert_eq!(seen.mails.load(Ordering::SeqCst), MESSAGES, "no retry");
        relay.shutdown(Duration::from_secs(5)).await;
    }
}
