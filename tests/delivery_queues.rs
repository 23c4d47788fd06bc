//! Delivery queues, one per next hop (Exchange's `Get-Queue` unit), over real sockets: the
//! relay in-process (the real binary for kill -9) against fake next hops on loopback that
//! hang, refuse, greet with `421`, fail recipients with `451` or take every message
//! (`support::downstream`), with thousands of messages put in by pipelined sessions
//! (`support::inject`).
//!
//! What must hold (config.md, `[Relay]`): a next hop that cannot be used puts its queue in
//! Retry, where its messages wait without attempts and one probe connection is made at a
//! time (`TransientFailureRetryCount` probes `TransientFailureRetryInterval` apart, then
//! every `OutboundConnectionFailureRetryInterval`); a queue never has more than
//! `MaxPerDomainOutboundConnections` connections, all queues together never more than
//! `MaxOutboundConnections`; one stuck queue never holds up another; the admin API lists
//! queues (`GET /api/queues`), retries (`POST /api/queues/:id/retry`), suspends and resumes
//! them (`PUT /api/queues/:id/status`).

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::downstream::{Downstream, Gauge, Mode, exactly_once};
use support::http::{Resp, http, until};
use support::inject::inject;
use support::*;

const FQDN: &str = "relay.contoso.test";

/// The address of the OnPremises inbound connector: it may relay to any domain.
fn onprem() -> IpAddr {
    "127.0.0.10".parse().unwrap()
}

/// `[Relay]` keys of the queue behaviour under test.
fn queue_keys(per_hop: usize, quick: &str, quick_count: u32, slow: &str) -> String {
    format!(
        "MaxPerDomainOutboundConnections = {per_hop}\n\
         TransientFailureRetryInterval = \"{quick}\"\n\
         MaxRetryInterval = \"{quick}\"\n\
         TransientFailureRetryCount = {quick_count}\n\
         OutboundConnectionFailureRetryInterval = \"{slow}\""
    )
}

/// The test config: a.test to smart host `a` ("To A"), b.test to smart host `b` ("To B"),
/// the OnPremises inbound connector for 127.0.0.10, `keys` added to `[Relay]`.
fn config(
    dir: &Path,
    listen: &str,
    admin: &str,
    a: SocketAddr,
    b: SocketAddr,
    keys: &str,
) -> String {
    format!(
        r#"
[Relay]
Fqdn = "{FQDN}"
Listen = ["{listen}"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "{admin}"
AdminTokenFile = "{dir}/admin.token"
{keys}

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

[[OutboundConnector]]
Name = "To A"
RecipientDomains = ["a.test"]
UseMXRecord = false
SmartHosts = ["{a}"]

[[OutboundConnector]]
Name = "To B"
RecipientDomains = ["b.test"]
UseMXRecord = false
SmartHosts = ["{b}"]
"#,
        dir = dir.display()
    )
}

/// A relay running in-process, and its admin API.
struct Lab {
    relay: connector_relay::relay::RelayHandle,
    _dir: tempfile::TempDir,
    token: String,
    admin: SocketAddr,
    smtp: SocketAddr,
}

impl Lab {
    async fn start(a: SocketAddr, b: SocketAddr, keys: &str, dns: Option<SocketAddr>) -> Lab {
        Self::start_edited(a, b, keys, dns, |t| t).await
    }

    /// As `start`, with the config text changed by `edit` first.
    async fn start_edited(
        a: SocketAddr,
        b: SocketAddr,
        keys: &str,
        dns: Option<SocketAddr>,
        edit: impl FnOnce(String) -> String,
    ) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let toml = edit(config(dir.path(), "127.0.0.1:0", "127.0.0.1:0", a, b, keys));
        let relay = start_relay(&toml, dns).await;
        let token = std::fs::read_to_string(dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_string();
        Lab {
            admin: relay.admin_addr.expect("admin listener"),
            smtp: relay.smtp_addrs[0],
            relay,
            _dir: dir,
            token,
        }
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        http(self.admin, method, path, Some(&self.token), body.as_ref()).await
    }

    async fn stop(self) {
        self.relay.shutdown(Duration::from_secs(5)).await;
    }
}

/// `GET /api/queues` as a list.
async fn queues(admin: SocketAddr, token: &str) -> Vec<Value> {
    let r = http(admin, "GET", "/api/queues", Some(token), None).await;
    assert_eq!(r.status, 200, "GET /api/queues: {}", r.body);
    r.json()
        .as_array()
        .unwrap_or_else(|| panic!("GET /api/queues is not an array: {}", r.body))
        .clone()
}

/// Polls `GET /api/queues` (30 s at most) until the queue whose `NextHopDomain` is `hop`
/// satisfies `ok`; answers it.
async fn wait_queue(
    admin: SocketAddr,
    token: &str,
    hop: &str,
    what: &str,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let last = std::sync::Mutex::new(Value::Null);
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let list = queues(admin, token).await;
            if let Some(q) = list.iter().find(|q| q["NextHopDomain"] == hop)
                && ok(q)
            {
                return q.clone();
            }
            *last.lock().unwrap() = Value::Array(list);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    found.unwrap_or_else(|_| {
        panic!(
            "timed out waiting for queue {hop}: {what}; last GET /api/queues: {:#}",
            last.lock().unwrap()
        )
    })
}

/// Checks the form of `Identity` (`fqdn\number`) and answers the number.
fn queue_number(q: &Value) -> u64 {
    let id = q["Identity"].as_str().unwrap_or_else(|| panic!("{q}"));
    let (fqdn, n) = id
        .split_once('\\')
        .unwrap_or_else(|| panic!("Identity {id:?} is not fqdn\\number"));
    assert_eq!(fqdn, FQDN, "{q}");
    n.parse()
        .unwrap_or_else(|_| panic!("Identity {id:?}: {n:?} is not a number"))
}

/// A smart-host queue as `GET /api/queues` must show it.
fn assert_smart_host_queue(q: &Value, hop: &Downstream, connector: &str) {
    assert_eq!(q["DeliveryType"], "SmartHostConnectorDelivery", "{q:#}");
    assert_eq!(q["NextHopDomain"], hop.addr.to_string(), "{q:#}");
    assert_eq!(q["NextHopConnector"], connector, "{q:#}");
    queue_number(q);
}

fn has_text(v: &Value) -> bool {
    v.as_str().is_some_and(|s| !s.trim().is_empty())
}

fn secs(d: Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

// ---- tests ------------------------------------------------------------------------------

/// A next hop that accepts TCP and never greets, with 3,000 messages for it: a message to
/// another next hop is still delivered within seconds, and the hung hop has exactly
/// `MaxPerDomainOutboundConnections` (3, below the slow-start window of 5) connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_next_hop_does_not_hold_up_other_queues() {
    let a = Downstream::start(Mode::Hang).await;
    let b = Downstream::start(Mode::Accept).await;
    let lab = Lab::start(
        a.addr,
        b.addr,
        &queue_keys(3, "00:00:01", 6, "00:10:00"),
        None,
    )
    .await;

    let started = Instant::now();
    let stuck = inject(lab.smtp, onprem(), "user@a.test", "hung", 3000, 8).await;
    assert_eq!(stuck.len(), 3000);
    println!("3000 messages injected in {:.1} s", secs(started.elapsed()));
    let hop = a.addr.to_string();
    let qa = wait_queue(lab.admin, &lab.token, &hop, "all 3000 messages", |q| {
        q["MessageCount"] == 3000
    })
    .await;
    assert_smart_host_queue(&qa, &a, "To A");
    assert_eq!(qa["Status"], "Active", "attempts are under way: {qa:#}");

    let sent = Instant::now();
    let to_b = inject(lab.smtp, onprem(), "user@b.test", "healthy", 1, 1).await;
    let got = b.wait_delivered(1, Duration::from_secs(30)).await;
    let took = sent.elapsed();
    println!(
        "b.test delivered after {:.2} s; hung hop: {} connections, at most {} open at once",
        secs(took),
        a.connections(),
        a.max_open()
    );
    assert_eq!(
        got,
        to_b,
        "the message to b.test must be delivered within 30 s while a.test's next hop hangs (waited {:.1} s)",
        secs(took)
    );
    assert_eq!(
        a.max_open(),
        3,
        "MaxPerDomainOutboundConnections = 3: connections open at once to the hung hop"
    );
    a.release_hung();
    lab.stop().await;
}

/// A next hop that closes every connection before the greeting, with 500 messages for it:
/// after the first failures the hop sees single probe connections, 1 s apart twice
/// (`TransientFailureRetryCount = 2`), then 5 s apart; never an attempt per message. The
/// queue shows Retry with its error and next retry time; the trace says why a message
/// waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_next_hop_gets_probes_not_an_attempt_per_message() {
    const PER_HOP: usize = 10;
    let a = Downstream::start(Mode::Close).await;
    let b = Downstream::start(Mode::Accept).await;
    let keys = queue_keys(PER_HOP, "00:00:01", 2, "00:00:05");
    let lab = Lab::start(a.addr, b.addr, &keys, None).await;

    let ids = inject(lab.smtp, onprem(), "user@a.test", "dead", 500, 4).await;
    let hop = a.addr.to_string();
    let q = wait_queue(
        lab.admin,
        &lab.token,
        &hop,
        "Retry with 500 messages",
        |q| q["Status"] == "Retry" && q["MessageCount"] == 500,
    )
    .await;
    assert_smart_host_queue(&q, &a, "To A");
    assert!(
        has_text(&q["LastError"]),
        "LastError of a queue in Retry: {q:#}"
    );
    assert!(
        !q["NextRetryTime"].is_null(),
        "NextRetryTime in Retry: {q:#}"
    );

    // Watch the hop for 10 s from its first connection.
    let t0 = *a.connection_times().first().expect("the hop was tried");
    tokio::time::sleep_until((t0 + Duration::from_secs(10)).into()).await;
    let times = a.connection_times();
    // Connections less than 0.5 s apart belong to one round: the first round is the burst
    // of attempts started before the first failure came back; each later one a probe.
    let mut rounds: Vec<Vec<Instant>> = Vec::new();
    for t in &times {
        match rounds.last_mut() {
            Some(r) if *t - *r.last().unwrap() < Duration::from_millis(500) => r.push(*t),
            _ => rounds.push(vec![*t]),
        }
    }
    let shape: Vec<String> = rounds
        .iter()
        .map(|r| format!("{}@{:.2}s", r.len(), secs(r[0] - t0)))
        .collect();
    println!(
        "dead hop, 500 messages: {} connections in 10 s, rounds (connections@start) {shape:?}",
        times.len()
    );
    assert!(
        times.len() <= PER_HOP + 5,
        "a queue in Retry must only probe: {} connections in 10 s, rounds {shape:?}",
        times.len()
    );
    assert!(
        rounds[0].len() <= 5,
        "slow start: a new queue runs at most 5 attempts before its hop has answered: {shape:?}"
    );
    let probes = &rounds[1..];
    assert!(
        probes.iter().all(|r| r.len() == 1),
        "a probe is one connection: {shape:?}"
    );
    assert!(
        probes.len() >= 2,
        "two quick probes 1 s apart within 10 s: {shape:?}"
    );
    // Late timers only stretch these gaps, so lower bounds are safe on a slow machine.
    let starts: Vec<Instant> = rounds.iter().map(|r| r[0]).collect();
    let gap = |i: usize| starts[i + 1] - *rounds[i].last().unwrap();
    assert!(gap(0) >= Duration::from_millis(800), "{shape:?}");
    assert!(gap(1) >= Duration::from_millis(800), "{shape:?}");
    if starts.len() > 3 {
        assert!(
            gap(2) >= Duration::from_millis(4000),
            "after TransientFailureRetryCount probes, OutboundConnectionFailureRetryInterval (5 s): {shape:?}"
        );
    }

    let q = wait_queue(
        lab.admin,
        &lab.token,
        &hop,
        "LastRetryTime after a probe",
        |q| !q["LastRetryTime"].is_null() && q["MessageCount"] == 500,
    )
    .await;
    println!("queue in Retry: {q:#}");

    // The last message was never attempted: its Deferred row says its queue is in Retry.
    let last = ids.last().unwrap().trim_matches(['<', '>']).to_string();
    let (admin, token) = (lab.admin, lab.token.clone());
    let row = until("a Deferred row naming the queue's Retry", || {
        let (last, token) = (last.clone(), token.clone());
        async move {
            let path = format!("/api/trace?messageId={last}");
            let rows = http(admin, "GET", &path, Some(&token), None).await.json();
            rows.as_array()?
                .iter()
                .find(|r| {
                    r["event"] == "Deferred"
                        && r["detail"].as_str().is_some_and(|d| {
                            d.contains("Retry") && d.to_ascii_lowercase().contains("queue")
                        })
                })
                .cloned()
        }
    })
    .await;
    println!("trace row of a held message: {row}");
    assert!(a.delivered().is_empty());
    lab.stop().await;
}

/// A next hop that greets with `421`: its queue goes to Retry (the error names the 421),
/// nothing connects while the next probe is 30 s away, and `Retry-Queue` (by the bare queue
/// number) makes exactly one probe, after which the queue is back in Retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_421_greeting_puts_the_queue_in_retry_and_retry_queue_probes_once() {
    const PER_HOP: usize = 10;
    let a = Downstream::start(Mode::Greet421).await;
    let b = Downstream::start(Mode::Accept).await;
    let keys = queue_keys(PER_HOP, "00:00:30", 6, "00:10:00");
    let lab = Lab::start(a.addr, b.addr, &keys, None).await;

    inject(lab.smtp, onprem(), "user@a.test", "busy", 100, 4).await;
    let hop = a.addr.to_string();
    let q = wait_queue(
        lab.admin,
        &lab.token,
        &hop,
        "Retry with 100 messages",
        |q| q["Status"] == "Retry" && q["MessageCount"] == 100,
    )
    .await;
    assert_smart_host_queue(&q, &a, "To A");
    assert!(
        q["LastError"].as_str().is_some_and(|e| e.contains("421")),
        "LastError names the 421 greeting: {q:#}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let burst = a.connections();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a.connections(),
        burst,
        "no connection while the queue waits for its retry time"
    );
    assert!(
        (1..=PER_HOP).contains(&burst),
        "first round: {burst} connections"
    );

    // The queue routes want the token, know their queues, and take two statuses only.
    let r = http(lab.admin, "GET", "/api/queues", None, None).await;
    assert_eq!(r.status, 401, "GET /api/queues without the token");
    let r = lab.api("POST", "/api/queues/987654/retry", None).await;
    assert_eq!(r.status, 404, "Retry-Queue of an unknown queue: {}", r.body);
    let r = lab
        .api(
            "PUT",
            &format!("/api/queues/{hop}/status"),
            Some(json!({"Status": "Paused"})),
        )
        .await;
    assert_eq!(r.status, 400, "an unknown Status: {}", r.body);

    let n = queue_number(&q);
    let r = lab
        .api("POST", &format!("/api/queues/{n}/retry"), None)
        .await;
    assert!(
        (200..300).contains(&r.status),
        "Retry-Queue {n}: {} {}",
        r.status,
        r.body
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.connections() == burst && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        a.connections(),
        burst + 1,
        "Retry-Queue makes one probe connection"
    );
    let q = wait_queue(
        lab.admin,
        &lab.token,
        &hop,
        "Retry again after the probe",
        |q| q["Status"] == "Retry" && !q["LastRetryTime"].is_null(),
    )
    .await;
    assert_eq!(q["MessageCount"], 100, "{q:#}");
    lab.stop().await;
}

/// A next hop without STARTTLS on a route that requires TLS (`TlsSettings =
/// "EncryptionOnly"`): the TLS level is not met, which makes the hop unusable like a refused
/// connection, so its queue goes to Retry; nothing is sent in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_level_not_met_puts_the_queue_in_retry() {
    const PER_HOP: usize = 10;
    let a = Downstream::start(Mode::Accept).await;
    let b = Downstream::start(Mode::Accept).await;
    let keys = queue_keys(PER_HOP, "01:00:00", 6, "01:00:00");
    let lab = Lab::start_edited(a.addr, b.addr, &keys, None, |t| {
        t.replace(
            "Name = \"To A\"\n",
            "Name = \"To A\"\nTlsSettings = \"EncryptionOnly\"\n",
        )
    })
    .await;

    inject(lab.smtp, onprem(), "user@a.test", "tls", 50, 2).await;
    let hop = a.addr.to_string();
    let q = wait_queue(lab.admin, &lab.token, &hop, "Retry with 50 messages", |q| {
        q["Status"] == "Retry" && q["MessageCount"] == 50
    })
    .await;
    println!("TLS level not met: {q:#}");
    assert!(has_text(&q["LastError"]), "{q:#}");
    assert_eq!(a.rcpts(), 0, "no RCPT without TLS");
    assert!(a.delivered().is_empty(), "nothing delivered in clear");
    assert!(
        a.connections() <= PER_HOP,
        "{} connections for 50 messages before the queue went to Retry",
        a.connections()
    );
    lab.stop().await;
}

/// A dead next hop with 200 messages comes back: `Retry-Queue` (by the URL-encoded
/// Identity) drains the queue, every message arrives exactly once. Retry intervals are an
/// hour, so only the request can have done it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_hop_that_comes_back_gets_every_message_once() {
    let a = Downstream::start(Mode::Close).await;
    let b = Downstream::start(Mode::Accept).await;
    let keys = queue_keys(10, "01:00:00", 6, "01:00:00");
    let lab = Lab::start(a.addr, b.addr, &keys, None).await;

    let ids = inject(lab.smtp, onprem(), "user@a.test", "back", 200, 4).await;
    let hop = a.addr.to_string();
    let q = wait_queue(
        lab.admin,
        &lab.token,
        &hop,
        "Retry with 200 messages",
        |q| q["Status"] == "Retry" && q["MessageCount"] == 200,
    )
    .await;
    a.set_mode(Mode::Accept);
    let identity = q["Identity"].as_str().unwrap().replace('\\', "%5C");
    let r = lab
        .api("POST", &format!("/api/queues/{identity}/retry"), None)
        .await;
    assert!(
        (200..300).contains(&r.status),
        "Retry-Queue {identity}: {} {}",
        r.status,
        r.body
    );

    a.wait_delivered(ids.len(), Duration::from_secs(60)).await;
    // Duplicates would come right after.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = a.delivered();
    println!(
        "hop back: {} deliveries of {} messages, {} connections",
        got.len(),
        ids.len(),
        a.connections()
    );
    if let Err(e) = exactly_once(&ids, &got) {
        panic!("after Retry-Queue: {e}");
    }
    let left = queues(lab.admin, &lab.token).await;
    assert!(
        left.iter()
            .all(|q| q["NextHopDomain"] != hop || q["MessageCount"] == 0),
        "the queue is empty: {left:#?}"
    );
    lab.stop().await;
}

/// Suspend-Queue and Resume (by the `NextHopDomain`): a queue whose next hop answers `451`
/// to every RCPT stays usable (message-level failures retry those messages only, never put
/// the queue in Retry); suspended, it makes no attempt, neither for its messages coming due
/// nor for new ones, though the hop works again; resumed, every message arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_queue_holds_its_messages_until_resumed() {
    let a = Downstream::start(Mode::TempFailRcpt).await;
    let b = Downstream::start(Mode::Accept).await;
    let keys = queue_keys(10, "00:00:01", 6, "00:10:00");
    let lab = Lab::start(a.addr, b.addr, &keys, None).await;
    let hop = a.addr.to_string();

    let first = inject(lab.smtp, onprem(), "user@a.test", "first", 20, 2).await;
    // Every message tried and retried (back-off 1 s): the queue keeps working.
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.rcpts() < 40 && Instant::now() < deadline {
        let list = queues(lab.admin, &lab.token).await;
        if let Some(q) = list.iter().find(|q| q["NextHopDomain"] == hop) {
            assert_ne!(
                q["Status"], "Retry",
                "a 451 to RCPT is a message-level failure, not the hop's: {q:#}"
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        a.rcpts() >= 40,
        "messages failed with 451 are retried on their own: {} RCPTs",
        a.rcpts()
    );

    let r = lab
        .api(
            "PUT",
            &format!("/api/queues/{hop}/status"),
            Some(json!({"Status": "Suspended"})),
        )
        .await;
    assert!(
        (200..300).contains(&r.status),
        "suspend: {} {}",
        r.status,
        r.body
    );
    wait_queue(lab.admin, &lab.token, &hop, "Suspended", |q| {
        q["Status"] == "Suspended"
    })
    .await;
    // Attempts under way at the suspension end (a 451 takes milliseconds).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    a.set_mode(Mode::Accept);
    let connections = a.connections();

    let second = inject(lab.smtp, onprem(), "user@a.test", "second", 20, 2).await;
    // The first messages' retries come due meanwhile (1–2 s back-off).
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        a.connections(),
        connections,
        "no connection to the hop of a suspended queue"
    );
    assert!(
        a.delivered().is_empty(),
        "nothing delivered while suspended"
    );
    let q = wait_queue(lab.admin, &lab.token, &hop, "still Suspended", |_| true).await;
    assert_eq!(q["Status"], "Suspended", "{q:#}");
    assert_eq!(q["MessageCount"], 40, "{q:#}");

    let r = lab
        .api(
            "PUT",
            &format!("/api/queues/{hop}/status"),
            Some(json!({"Status": "Active"})),
        )
        .await;
    assert!(
        (200..300).contains(&r.status),
        "resume: {} {}",
        r.status,
        r.body
    );
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    a.wait_delivered(all.len(), Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    if let Err(e) = exactly_once(&all, &a.delivered()) {
        panic!("after resuming: {e}");
    }
    lab.stop().await;
}

/// The real binary, killed with SIGKILL while a queue is in Retry with 200 messages (each
/// answered 250), restarted with the next hop working: every message arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_dash_nine_while_a_queue_is_in_retry_loses_nothing() {
    /// Kills the relay if the test fails half-way.
    struct Relay(std::process::Child);
    impl Drop for Relay {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let a = Downstream::start(Mode::Close).await;
    let b = Downstream::start(Mode::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let (port, admin_port) = (free_port(), free_port());
    let keys = queue_keys(10, "00:00:02", 6, "00:10:00");
    let listen = format!("127.0.0.1:{port}");
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        config(
            dir.path(),
            &listen,
            &admin.to_string(),
            a.addr,
            b.addr,
            &keys,
        ),
    )
    .unwrap();

    let mut relay = Relay(spawn_relay_binary(&cfg, "warn"));
    wait_listening(port).await;
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let smtp = SocketAddr::from(([127, 0, 0, 1], port));
    let ids = inject(smtp, onprem(), "user@a.test", "kill", 200, 4).await;
    let hop = a.addr.to_string();
    wait_queue(admin, &token, &hop, "Retry with 200 messages", |q| {
        q["Status"] == "Retry" && q["MessageCount"] == 200
    })
    .await;
    relay.0.kill().expect("SIGKILL");
    relay.0.wait().unwrap();
    assert!(a.delivered().is_empty());

    a.set_mode(Mode::Accept);
    let _relay = Relay(spawn_relay_binary(&cfg, "warn"));
    wait_listening(port).await;
    a.wait_delivered(ids.len(), Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got = a.delivered();
    println!(
        "kill -9 in Retry: {} deliveries of {} messages after the restart",
        got.len(),
        ids.len()
    );
    if let Err(e) = exactly_once(&ids, &got) {
        panic!("after kill -9 and restart: {e}");
    }
}

/// `MaxOutboundConnections = 3` over two hung next hops with 20 messages each (5 per hop
/// allowed): never more than 3 connections open in all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_outbound_connections_caps_all_queues_together() {
    let all = Gauge::new();
    let a = Downstream::start_with(Mode::Hang, Some(all.clone())).await;
    let b = Downstream::start_with(Mode::Hang, Some(all.clone())).await;
    let keys = format!(
        "{}\nMaxOutboundConnections = 3",
        queue_keys(5, "00:00:01", 6, "00:10:00")
    );
    let lab = Lab::start(a.addr, b.addr, &keys, None).await;

    let (to_a, to_b) = tokio::join!(
        inject(lab.smtp, onprem(), "user@a.test", "cap-a", 20, 2),
        inject(lab.smtp, onprem(), "user@b.test", "cap-b", 20, 2),
    );
    assert_eq!(to_a.len() + to_b.len(), 40);
    let deadline = Instant::now() + Duration::from_secs(30);
    while all.current() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!(
        "MaxOutboundConnections = 3: at most {} open in all (a {}, b {})",
        all.max(),
        a.max_open(),
        b.max_open()
    );
    assert_eq!(
        all.max(),
        3,
        "both queues have work: the relay uses all 3 connections and never more"
    );
    a.release_hung();
    b.release_hung();
    lab.stop().await;
}

/// Without `MaxPerDomainOutboundConnections` a queue runs at most 20 transactions at once
/// (the default of Set-TransportService), and reaches 20 when its next hop answers (slow
/// start from 5: one more per attempt that reached the hop): 100 messages to a hop that
/// takes 1 s to answer each end of data, every one delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_per_hop_limit_is_20() {
    let a = Downstream::start(Mode::SlowAccept(Duration::from_secs(1))).await;
    let b = Downstream::start(Mode::Accept).await;
    let lab = Lab::start(a.addr, b.addr, "", None).await;

    let ids = inject(lab.smtp, onprem(), "user@a.test", "default", 100, 4).await;
    let got = a.wait_delivered(ids.len(), Duration::from_secs(30)).await;
    println!(
        "default limit: at most {} transactions and {} connections at once, {} connections in all",
        a.max_busy(),
        a.max_open(),
        a.connections()
    );
    if let Err(e) = exactly_once(&ids, &got) {
        panic!("{e}");
    }
    assert_eq!(a.max_busy(), 20, "transactions at once to one hop");
    lab.stop().await;
}

/// Slow start: a new queue whose next hop has not answered yet runs 5 attempts at once,
/// not `MaxPerDomainOutboundConnections` (20 by default), so a hop that hangs from the
/// start gets 5 connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_queue_starts_with_five_attempts() {
    let a = Downstream::start(Mode::Hang).await;
    let b = Downstream::start(Mode::Accept).await;
    let lab = Lab::start(a.addr, b.addr, "", None).await;

    inject(lab.smtp, onprem(), "user@a.test", "slow-start", 100, 4).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.open_now() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(a.max_open(), 5, "attempts at once before the hop answered");
    a.release_hung();
    lab.stop().await;
}

/// MX routes: one queue per recipient domain even when the domains share their MX host,
/// `DnsConnectorDelivery`, no connector; `Retry-Queue` by the domain probes that queue only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mx_routes_get_one_queue_per_recipient_domain() {
    let dns = support::dns::TestDns::start().await;
    let mx = Downstream::start(Mode::Close).await;
    dns.add_mx("c.test", 10, "mx.shared.test");
    dns.add_mx("d.test", 10, "mx.shared.test");
    dns.add_a("mx.shared.test", "127.0.0.1".parse().unwrap());
    let keys = format!(
        "{}\n{}",
        dns_relay_keys(dns.addr, mx.addr.port()),
        queue_keys(10, "01:00:00", 6, "01:00:00")
    );
    let lab = Lab::start(mx.addr, mx.addr, &keys, Some(dns.addr)).await;

    inject(lab.smtp, onprem(), "user@c.test", "mx-c", 5, 1).await;
    inject(lab.smtp, onprem(), "user@d.test", "mx-d", 3, 1).await;
    let mut numbers = Vec::new();
    for (domain, count) in [("c.test", 5), ("d.test", 3)] {
        let q = wait_queue(lab.admin, &lab.token, domain, "Retry", |q| {
            q["Status"] == "Retry" && q["MessageCount"] == count
        })
        .await;
        assert_eq!(q["DeliveryType"], "DnsConnectorDelivery", "{q:#}");
        assert!(q["NextHopConnector"].is_null(), "{q:#}");
        numbers.push(queue_number(&q));
    }
    assert_ne!(numbers[0], numbers[1], "two queues");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = mx.connections();
    let r = lab.api("POST", "/api/queues/c.test/retry", None).await;
    assert!(
        (200..300).contains(&r.status),
        "Retry-Queue c.test: {} {}",
        r.status,
        r.body
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while mx.connections() == before && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(mx.connections(), before + 1, "one probe, for c.test only");
    let d = wait_queue(lab.admin, &lab.token, "d.test", "still Retry", |_| true).await;
    assert!(
        d["LastRetryTime"].is_null(),
        "d.test was not retried: {d:#}"
    );
    lab.stop().await;
}
