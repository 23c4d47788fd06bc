//! kill -9 at 20 random moments in one run: the real binary takes load from 10 concurrent
//! clients, is SIGKILLed at a random moment, restarted on the same spool, and the load goes
//! on; 20 times. Then it drains, and every message that was answered 250 must have reached
//! the sink (at least once: duplicates are deliveries that were in flight at a kill).
//! `cargo test --test kill9_many -- --nocapture` prints the figures.

mod support;

use std::collections::HashMap;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::*;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const CLIENTS: usize = 10;
const KILLS: usize = 20;
/// Messages each client sends after the last restart (the load "continues" to the end).
const FINAL_PER_CLIENT: usize = 10;

type Reader = BufReader<tokio::io::ReadHalf<tokio::net::TcpStream>>;

/// The last line of the next reply, `None` when the connection is gone.
async fn reply(r: &mut Reader) -> Option<String> {
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
        if line.len() >= 4 && line.as_bytes()[3] == b' ' {
            return Some(line);
        }
    }
}

/// One client: one session, up to `messages` pipelined transactions; records each tag
/// answered 250. Returns when done or when the relay dies.
async fn client(
    port: u16,
    cycle: usize,
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
    if reply(&mut r).await.is_none()
        || w.write_all(b"EHLO loadgen.test\r\n").await.is_err()
        || reply(&mut r).await.is_none()
    {
        return;
    }
    for n in 0..messages {
        let tag = format!("k9m-{cycle}-{c}-{n}");
        let tx = "MAIL FROM:<load@fabrikam.test>\r\nRCPT TO:<bob@contoso.test>\r\nDATA\r\n";
        if w.write_all(tx.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..3 {
            if reply(&mut r).await.is_none() {
                return;
            }
        }
        let body = format!(
            "Subject: {tag}\r\nMessage-ID: <{tag}@load.test>\r\n\r\nsmall load message {tag}\r\n.\r\n"
        );
        if w.write_all(body.as_bytes()).await.is_err() {
            return;
        }
        match reply(&mut r).await {
            Some(l) if l.starts_with("250") => {
                accepted.lock().unwrap().push(tag);
                count.fetch_add(1, Ordering::SeqCst);
            }
            _ => return,
        }
    }
    let _ = w.write_all(b"QUIT\r\n").await;
}

fn run_clients(
    port: u16,
    cycle: usize,
    messages: usize,
    accepted: &Arc<Mutex<Vec<String>>>,
    count: &Arc<AtomicUsize>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..CLIENTS)
        .map(|c| {
            tokio::spawn(client(
                port,
                cycle,
                c,
                messages,
                accepted.clone(),
                count.clone(),
            ))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_random_kill_points_lose_nothing() {
    let started = std::time::Instant::now();
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg_path = write_kill9_config(tmp.path(), port, sink.addr());

    let accepted = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let mut per_kill = Vec::new();
    for cycle in 0..KILLS {
        let mut relay = spawn_relay_binary(&cfg_path, "error");
        wait_listening(port).await;
        let before = count.load(Ordering::SeqCst);
        // Effectively unbounded: the kill ends the load of this cycle.
        let tasks = run_clients(port, cycle, 100_000, &accepted, &count);
        let at = Duration::from_millis(100 + rand::random::<u64>() % 500);
        tokio::time::sleep(at).await;
        relay.kill().expect("SIGKILL");
        relay.wait().unwrap();
        for t in tasks {
            let _ = t.await;
        }
        per_kill.push((at.as_millis(), count.load(Ordering::SeqCst) - before));
    }
    let accepted_at_kills = count.load(Ordering::SeqCst);

    // Last start: the load continues, then the queue drains.
    let mut relay = spawn_relay_binary(&cfg_path, "error");
    wait_listening(port).await;
    for t in run_clients(port, KILLS, FINAL_PER_CLIENT, &accepted, &count) {
        let _ = t.await;
    }
    let accepted = accepted.lock().unwrap().clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
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
    let under_load = per_kill.iter().filter(|(_, n)| *n > 0).count();
    println!("kill points (ms after listening, messages answered 250 in that run): {per_kill:?}");
    println!(
        "kill -9 x{KILLS} figures: kill points = {KILLS} ({under_load} with messages accepted in that run), \
         accepted (250) = {} ({accepted_at_kills} across the kills), delivered (distinct) = {}, \
         lost = {}, duplicates = {duplicates}, elapsed = {:.1} s",
        accepted.len(),
        seen.len(),
        lost.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        accepted.len(),
        accepted_at_kills + CLIENTS * FINAL_PER_CLIENT,
        "the final load ran in full"
    );
    assert!(
        under_load >= KILLS / 2,
        "most kills hit a relay under load: {per_kill:?}"
    );
    assert!(
        lost.is_empty(),
        "messages answered 250 but never delivered: {lost:?}"
    );
}
