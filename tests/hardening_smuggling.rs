//! SMTP smuggling end to end (CVE-2023-51764/51765/51766, SEC Consult Dec 2023): each of
//! the 11 end-of-data look-alikes, followed by a pipelined second MAIL/RCPT/DATA
//! transaction and a real end, under both `BareNewlinePolicy` values. The downstream is a
//! scripted raw server that records every byte the relay sends, so the test sees exactly
//! what leaves the relay (no parser in between that could normalize): no bare CR or LF, and
//! never the smuggled transaction. Also: BDAT is not offered and answered 502.
//!
//! `cargo test --test hardening_smuggling -- --nocapture` prints the figures.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The 11 SEC Consult sequences.
const VECTORS: [&[u8]; 11] = [
    b"\n.\n",
    b"\n.\r",
    b"\r.\n",
    b"\r.\r",
    b"\n.\r\n",
    b"\r.\r\n",
    b"\r\n.\n",
    b"\r\n.\r",
    b"\r\n\x00.\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
];

/// One message as the raw server saw it.
#[derive(Debug, Clone)]
struct Captured {
    rcpts: Vec<String>,
    /// The DATA bytes as sent, dot-stuffing and the final `.<CRLF>` included.
    data: Vec<u8>,
}

#[derive(Default)]
struct Capture {
    messages: Vec<Captured>,
    /// Every byte of every connection, in order of arrival per connection.
    streams: Vec<Vec<u8>>,
}

/// A minimal SMTP server (no PIPELINING, no extensions) that ends DATA only on
/// `<CRLF>.<CRLF>` and records everything it receives.
async fn start_raw_server() -> (SocketAddr, Arc<Mutex<Capture>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let capture = Arc::new(Mutex::new(Capture::default()));
    let cap = capture.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let cap = cap.clone();
            tokio::spawn(async move {
                let _ = raw_session(stream, cap).await;
            });
        }
    });
    (addr, capture)
}

async fn raw_session(
    mut stream: tokio::net::TcpStream,
    cap: Arc<Mutex<Capture>>,
) -> std::io::Result<()> {
    let index = {
        let mut c = cap.lock().unwrap();
        c.streams.push(Vec::new());
        c.streams.len() - 1
    };
    stream.write_all(b"220 raw.test ESMTP\r\n").await?;
    let mut buf: Vec<u8> = Vec::new();
    let mut rcpts = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        // One command line.
        let line = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                let line: Vec<u8> = buf.drain(..i + 2).collect();
                break line;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            cap.lock().unwrap().streams[index].extend_from_slice(&chunk[..n]);
            buf.extend_from_slice(&chunk[..n]);
        };
        let text = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply: &[u8] = if text.starts_with("EHLO") {
            b"250-raw.test\r\n250 8BITMIME\r\n"
        } else if text.starts_with("RCPT") {
            rcpts.push(String::from_utf8_lossy(&line).trim_end().to_string());
            b"250 2.1.5 ok\r\n"
        } else if text.starts_with("DATA") {
            stream.write_all(b"354 go ahead\r\n").await?;
            // The data ends at the first <CRLF>.<CRLF> (the line before it counts).
            let mut data: Vec<u8> = Vec::new();
            loop {
                let mut probe = b"\r\n".to_vec();
                probe.extend_from_slice(&buf);
                if let Some(i) = probe.windows(5).position(|w| w == b"\r\n.\r\n") {
                    let end = i + 5 - 2; // in `buf` coordinates
                    data.extend(buf.drain(..end));
                    break;
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    return Ok(());
                }
                cap.lock().unwrap().streams[index].extend_from_slice(&chunk[..n]);
                buf.extend_from_slice(&chunk[..n]);
            }
            cap.lock().unwrap().messages.push(Captured {
                rcpts: std::mem::take(&mut rcpts),
                data,
            });
            b"250 2.0.0 queued\r\n"
        } else if text.starts_with("QUIT") {
            stream.write_all(b"221 2.0.0 bye\r\n").await?;
            return Ok(());
        } else if text.starts_with("RSET") {
            rcpts.clear();
            b"250 2.0.0 ok\r\n"
        } else {
            b"250 2.0.0 ok\r\n"
        };
        stream.write_all(reply).await?;
    }
}

/// True when every CR is followed by LF and every LF preceded by CR.
fn only_crlf(bytes: &[u8]) -> bool {
    bytes.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => bytes.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && bytes[i - 1] == b'\r',
        _ => true,
    })
}

fn printable(v: &[u8]) -> String {
    v.iter()
        .map(|&b| match b {
            b'\r' => "\\r".to_string(),
            b'\n' => "\\n".to_string(),
            0 => "\\0".to_string(),
            b => (b as char).to_string(),
        })
        .collect()
}

struct Outcome {
    vectors: usize,
    smuggled: usize,
    accepted: usize,
}

async fn run_policy(policy: &str) -> Outcome {
    let (raw, capture) = start_raw_server().await;
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!("BareNewlinePolicy = \"{policy}\"");
    let relay = start_relay(&relay_config(tmp.path(), raw, &extra), None).await;
    let addr = relay.smtp_addrs[0];

    // Per vector: was the legitimate message accepted (250) or refused (550 5.6.11)?
    let mut accepted = Vec::new();
    for (i, v) in VECTORS.iter().enumerate() {
        let mut d = Dialog::connect(addr).await;
        d.cmd("EHLO client.test", "250").await;
        d.cmd("MAIL FROM:<alice@fabrikam.test>", "250 2.1.0").await;
        d.cmd(&format!("RCPT TO:<bob{i}@contoso.test>"), "250 2.1.5")
            .await;
        d.cmd("DATA", "354").await;
        let mut data = format!("Subject: vector {i}\r\n\r\nfirst line").into_bytes();
        data.extend_from_slice(v);
        data.extend_from_slice(
            format!(
                "MAIL FROM:<smuggler@fabrikam.test>\r\nRCPT TO:<victim{i}@contoso.test>\r\nDATA\r\n\
                 Subject: smuggled {i}\r\n\r\nsmuggled body\r\n.\r\n"
            )
            .as_bytes(),
        );
        d.send(&data).await;
        let reply = d.read_reply().await;
        let ok = if reply.starts_with("250 ") {
            true
        } else {
            assert!(
                reply.starts_with("550 5.6.11"),
                "{policy} vector {}: {reply}",
                printable(v)
            );
            false
        };
        if policy == "Normalize" {
            assert!(ok, "Normalize accepts vector {}: {reply}", printable(v));
        }
        // The session is still in sync: the next reply is QUIT's, nothing smuggled ran.
        d.cmd("QUIT", "221").await;
        accepted.push(ok);
    }
    let expected = accepted.iter().filter(|&&a| a).count();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while capture.lock().unwrap().messages.len() < expected
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Anything extra would arrive now.
    tokio::time::sleep(Duration::from_millis(500)).await;
    relay.shutdown(Duration::from_secs(5)).await;

    let cap = capture.lock().unwrap();
    let mut smuggled = 0;
    for (i, v) in VECTORS.iter().enumerate() {
        let to_bob = format!("<bob{i}@contoso.test>");
        let to_victim = format!("<victim{i}@contoso.test>");
        let legit = cap
            .messages
            .iter()
            .filter(|m| m.rcpts.iter().any(|r| r.contains(&to_bob)))
            .count();
        let evil = cap
            .messages
            .iter()
            .filter(|m| m.rcpts.iter().any(|r| r.contains(&to_victim)))
            .count();
        smuggled += evil;
        assert_eq!(
            legit,
            usize::from(accepted[i]),
            "{policy} vector {}: legitimate message count",
            printable(v)
        );
    }
    for m in &cap.messages {
        // Exactly one end-of-data, at the end: nothing smuggled towards the downstream.
        let mut probe = b"\r\n".to_vec();
        probe.extend_from_slice(&m.data);
        let ends = probe.windows(5).filter(|w| w == b"\r\n.\r\n").count();
        assert_eq!(ends, 1, "{policy}: {:?}", printable(&m.data));
        assert!(only_crlf(&m.data), "{policy}: bare CR/LF relayed");
    }
    for s in &cap.streams {
        assert!(
            only_crlf(s),
            "{policy}: bare CR or LF left the relay: {}",
            printable(s)
        );
    }
    Outcome {
        vectors: VECTORS.len(),
        smuggled,
        accepted: expected,
    }
}

#[tokio::test]
async fn smuggling_vectors_never_smuggle_and_no_bare_newline_leaves() {
    let mut tried = 0;
    let mut smuggled = 0;
    for policy in ["Reject", "Normalize"] {
        let o = run_policy(policy).await;
        println!(
            "BareNewlinePolicy={policy}: {} vectors, {} legitimate messages relayed, {} smuggled",
            o.vectors, o.accepted, o.smuggled
        );
        if policy == "Normalize" {
            assert_eq!(o.accepted, VECTORS.len());
        } else {
            // Only `\r\n\0.\r\n` has no bare CR or LF: a NUL line, accepted as text.
            assert_eq!(o.accepted, 1);
        }
        tried += o.vectors;
        smuggled += o.smuggled;
    }
    println!("{tried} vectors tried, {smuggled} messages smuggled");
    assert_eq!(smuggled, 0);
}

#[tokio::test]
async fn bdat_is_not_offered_and_refused() {
    let (raw, _capture) = start_raw_server().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), raw, ""), None).await;
    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    let ehlo = d.cmd("EHLO client.test", "250 ").await;
    assert!(!ehlo.contains("CHUNKING"), "{ehlo}");
    d.cmd("MAIL FROM:<alice@fabrikam.test>", "250").await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("BDAT 5 LAST", "502 5.5.1").await;
    d.cmd("RSET", "250").await;
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}
