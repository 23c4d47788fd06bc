//! kill -9 under load: the real binary receives ≥ 500 messages from 10 concurrent clients
//! and is SIGKILLed at a random moment. After a restart every message that was answered
//! 250 must reach the sink; duplicates (at most the deliveries in flight at the kill) are
//! reported.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CLIENTS: usize = 10;
const PER_CLIENT: usize = 60;

/// One client: a session with many transactions; records the tags answered 250.
async fn client(
    port: u16,
    phase: &'static str,
    c: usize,
    messages: usize,
    accepted: Arc<Mutex<Vec<String>>>,
    count: Arc<AtomicUsize>,
) {
    let Ok(stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return;
    };
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    let mut line = String::new();
    async fn reply(
        r: &mut BufReader<tokio::io::ReadHalf<tokio::net::TcpStream>>,
        line: &mut String,
    ) -> Option<String> {
        loop {
            line.clear();
            match r.read_line(line).await {
                Ok(n) if n > 0 => {}
                _ => return None,
            }
            if line.len() >= 4 && line.as_bytes()[3] == b' ' {
                return Some(line.clone());
            }
        }
    }
    if reply(&mut r, &mut line).await.is_none() {
        return;
    }
    if w.write_all(b"EHLO loadgen.test\r\n").await.is_err()
        || reply(&mut r, &mut line).await.is_none()
    {
        return;
    }
    for n in 0..messages {
        let tag = format!("kill9-{phase}-{c}-{n}");
        let tx = "MAIL FROM:<load@fabrikam.test>\r\nRCPT TO:<bob@contoso.test>\r\nDATA\r\n";
        if w.write_all(tx.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..3 {
            match reply(&mut r, &mut line).await {
                Some(_) => {}
                None => return,
            }
        }
        let body = format!(
            "Subject: {tag}\r\nMessage-ID: <{tag}@load.test>\r\n\r\n{}\r\n.\r\n",
            "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n".repeat(30)
        );
        if w.write_all(body.as_bytes()).await.is_err() {
            return;
        }
        match reply(&mut r, &mut line).await {
            Some(l) if l.starts_with("250") => {
                accepted.lock().unwrap().push(tag);
                count.fetch_add(1, Ordering::SeqCst);
            }
            _ => return,
        }
    }
    let _ = w.write_all(b"QUIT\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_loses_nothing() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg_path = write_kill9_config(tmp.path(), port, sink.addr());

    let mut relay = spawn_relay_binary(&cfg_path, "warn");
    wait_listening(port).await;
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let total = CLIENTS * PER_CLIENT;
    let kill_at = 100 + rand::random::<u32>() as usize % (total - 200);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(client(
            port,
            "a",
            c,
            PER_CLIENT,
            accepted.clone(),
            count.clone(),
        )));
    }
    // SIGKILL once `kill_at` messages were answered 250.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while count.load(Ordering::SeqCst) < kill_at && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    relay.kill().expect("SIGKILL");
    relay.wait().unwrap();
    for t in tasks {
        let _ = t.await;
    }
    let acked_before_kill = count.load(Ordering::SeqCst);
    let delivered_before = messages(sink.maildir()).len();

    // Restart on the same spool; the clients send the rest of the load (new tags).
    let mut relay = spawn_relay_binary(&cfg_path, "warn");
    wait_listening(port).await;
    let remaining = (total - acked_before_kill).div_ceil(CLIENTS);
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(client(
            port,
            "b",
            c,
            remaining,
            accepted.clone(),
            count.clone(),
        )));
    }
    for t in tasks {
        let _ = t.await;
    }
    let accepted = accepted.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut seen: HashMap<String, usize>;
    loop {
        seen = HashMap::new();
        for m in messages(sink.maildir()) {
            if let Some(tag) = m.lines().find_map(|l| l.strip_prefix("Subject: ")) {
                *seen.entry(tag.to_string()).or_default() += 1;
            }
        }
        if accepted.iter().all(|t| seen.contains_key(t)) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = Command::new("kill").arg(relay.id().to_string()).status();
    let _ = relay.wait();

    let lost: Vec<&String> = accepted.iter().filter(|t| !seen.contains_key(*t)).collect();
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let delivered: usize = seen.len();
    println!(
        "kill -9 figures: SIGKILL after {acked_before_kill} acks (target {kill_at}); accepted (250) in all = {}, \
         delivered before the kill = {delivered_before}, distinct delivered = {delivered}, lost = {}, duplicates = {duplicates}",
        accepted.len(),
        lost.len()
    );
    assert!(acked_before_kill >= kill_at, "the load ran until the kill");
    assert!(
        accepted.len() >= total,
        "at least {total} messages were answered 250 across the kill"
    );
    assert!(
        lost.is_empty(),
        "messages answered 250 but never delivered: {lost:?}"
    );
    // Duplicates can only be deliveries that were in flight when the relay died.
    assert!(duplicates <= 100, "too many duplicates: {duplicates}");
}
