//! The fleet lab end to end (`docker-compose.fleet.yml`, README "Running more than one
//! node"): HAProxy in front of two relay nodes that share one config file (a volume both
//! mount) and one PostgreSQL trace store, two client machines with their own addresses, an
//! on-premises sink; images from Debian packages on the debootstrap base image, the relay
//! image from this build's binary.
//!
//! 1. Attribution through the balancer: each client's message is attributed by its own
//!    address (PROXY protocol v2), whichever node took it.
//! 2. Shared configuration: a change through one node's admin API is written to the shared
//!    file and picked up by the other node's poll; two changes made at once through both
//!    nodes never lose one that was answered 200 (the other may get 409).
//! 3. Node loss: with the on-premises server down (so mail waits in the spools), both
//!    clients send through HAProxy while relay-a is killed (`docker kill`); the load carries
//!    on through relay-b; relay-a's spool is adopted by relay-b (`queue adopt`); once the
//!    server is back, every message answered 250 arrives, and one trace query finds every
//!    one of them delivered.
//!
//! Skips loudly without a Docker daemon (tests/support/compose.rs).

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::compose::{self, Project};
use support::docker::{base_image, must, poll, text};

const FLEET_IMAGE: &str = "connector-relay-lab/fleet:bookworm";
const SUBNET: &str = "10.225.26.0/24";
const READY: Duration = Duration::from_secs(180);
const SETTLE: Duration = Duration::from_secs(300);
/// Messages each client sends during the node-loss scenario.
const LOAD: usize = 60;
const RELAY_A: &str = "http://10.225.26.11:8025";
const RELAY_B: &str = "http://10.225.26.12:8025";

#[test]
fn fleet_behind_haproxy() {
    let Some(compose) = compose::ready("tests/fleet_lab.rs (fleet lab)", SUBNET) else {
        return;
    };
    let started = Instant::now();
    let project = format!("crfleet{}", std::process::id());
    let relay_image = format!("connector-relay-lab/relay:{project}");
    base_image();
    compose::lab_image(FLEET_IMAGE, "Dockerfile.fleet");
    compose::relay_image(&relay_image);
    eprintln!("fleet: images ready at {:?}", started.elapsed());
    let mut lab = Project {
        compose,
        project,
        file: "docker-compose.fleet.yml",
        env: vec![
            ("LAB_FLEET_IMAGE", FLEET_IMAGE.to_string()),
            ("FLEET_SMTP_PUBLISH", "127.0.0.1:".to_string()),
        ],
        relay_image,
        down: false,
    };
    must(lab.cmd().args(["up", "-d", "--no-build"]));
    let api = Api::new(&lab);
    eprintln!("fleet: up at {:?}", started.elapsed());

    attribution(&lab, &api);
    shared_config(&lab, &api);
    eprintln!(
        "fleet: attribution and shared config checked at {:?}",
        started.elapsed()
    );
    node_loss(&lab, &api);
    eprintln!("fleet: node loss checked at {:?}", started.elapsed());

    lab.teardown();
    let left = lab.leftovers();
    assert!(left.is_empty(), "fleet: left behind: {left}");
}

/// The admin API of both nodes, called with curl from client-1 (inside the lab).
struct Api<'a> {
    lab: &'a Project,
    auth: String,
}

impl<'a> Api<'a> {
    /// Waits for the shared admin token (made by the first node) and both nodes' APIs.
    fn new(lab: &'a Project) -> Api<'a> {
        let token = poll(READY, "the shared admin token", || {
            let out = lab.exec("relay-a", &["cat", "/etc/connector-relay/admin.token"]);
            let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
            (out.status.success() && !t.is_empty()).then_some(t)
        });
        let api = Api {
            lab,
            auth: format!("Authorization: Bearer {token}"),
        };
        for node in [RELAY_A, RELAY_B] {
            poll(READY, &format!("{node}'s admin API"), || {
                api.call("GET", node, "/api/status", None).map(|_| ())
            });
        }
        api
    }

    /// The JSON answer of a 2xx, `None` otherwise.
    fn call(&self, method: &str, node: &str, path: &str, body: Option<&Value>) -> Option<Value> {
        let (code, answer) = self.call_status(method, node, path, body);
        (200..300).contains(&code).then_some(answer)
    }

    /// The HTTP status and JSON answer.
    fn call_status(
        &self,
        method: &str,
        node: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{node}{path}");
        let body = body.map(Value::to_string).unwrap_or_default();
        let out = self.lab.exec(
            "client-1",
            &[
                "curl",
                "-s",
                "-X",
                method,
                "-H",
                &self.auth,
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                &body,
                "-w",
                "\n%{http_code}",
                &url,
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (answer, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", "0"));
        let answer = serde_json::from_str(answer).unwrap_or(Value::Null);
        (code.trim().parse().unwrap_or(0), answer)
    }

    /// Every trace row of the last hour, from `node` (the store is the fleet's).
    fn trace(&self, node: &str, query: &str) -> Vec<Value> {
        let path = format!("/api/trace?since=1h&limit=10000{query}");
        self.call("GET", node, &path, None)
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
    }
}

fn field<'a>(row: &'a Value, key: &str) -> &'a str {
    row.get(key).and_then(Value::as_str).unwrap_or("")
}

fn swaks(lab: &Project, client: &str, to: &str, id: &str) {
    let header = format!("Message-Id: {id}");
    let out = poll(READY, &format!("{client} through HAProxy"), || {
        let out = lab.exec(
            client,
            &[
                "swaks",
                "--server",
                "10.225.26.10",
                "--from",
                "app@contoso.test",
                "--to",
                to,
                "--header",
                &header,
            ],
        );
        out.status.success().then_some(out)
    });
    assert!(text(&out).contains("250"), "{}", text(&out));
}

/// 1. Each client is attributed by its own address behind HAProxy.
fn attribution(lab: &Project, api: &Api<'_>) {
    for (client, ip, connector) in [
        ("client-1", "10.225.26.21", "App one"),
        ("client-2", "10.225.26.22", "App two"),
    ] {
        let to = format!("hello-{client}@contoso.test");
        swaks(lab, client, &to, &format!("<hello-{client}@fleet.test>"));
        let rows = poll(SETTLE, &format!("{client}'s message delivered"), || {
            let rows = api.trace(RELAY_B, &format!("&recipient={to}"));
            rows.iter()
                .any(|r| field(r, "event") == "Delivered")
                .then_some(rows)
        });
        let received: Vec<&Value> = rows
            .iter()
            .filter(|r| field(r, "event") == "Received")
            .collect();
        assert!(
            received.iter().any(|r| field(r, "client_ip") == ip
                && field(r, "connector") == connector
                && field(r, "detail").contains("10.225.26.10")
                && field(r, "node").starts_with("relay-")),
            "{client}: a Received row from {ip} under {connector:?} via the balancer:\n{rows:#?}"
        );
    }
}

/// 2. A change on one node reaches the other through the shared file; of the changes made
///    at once through both nodes, every one answered 200 is in the file.
fn shared_config(lab: &Project, api: &Api<'_>) {
    let comment = json!({"Comment": "changed through relay-a"});
    let path = "/api/exchange/connectors/App%20one";
    api.call("PUT", RELAY_A, path, Some(&comment))
        .expect("a change through relay-a");
    poll(SETTLE, "relay-b's poll to pick the change up", || {
        let c = api.call("GET", RELAY_B, path, None)?;
        (c["Comment"] == "changed through relay-a").then_some(())
    });
    let mut answered = Vec::new();
    for round in 0..5 {
        let a = format!("a{round}");
        let b = format!("b{round}");
        // Both PUTs leave client-1 at the same moment.
        let script = format!(
            "curl -s -o /dev/null -w '%{{http_code}}\\n' -X PUT -H '{auth}' -H 'Content-Type: application/json' \
               --data '{{\"Comment\":\"{a}\"}}' {RELAY_A}/api/exchange/connectors/App%20one > /tmp/a & \
             curl -s -o /dev/null -w '%{{http_code}}\\n' -X PUT -H '{auth}' -H 'Content-Type: application/json' \
               --data '{{\"Comment\":\"{b}\"}}' {RELAY_B}/api/exchange/connectors/App%20two > /tmp/b & \
             wait; cat /tmp/a /tmp/b",
            auth = api.auth,
        );
        let out = lab.exec("client-1", &["bash", "-c", &script]);
        let codes: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        assert_eq!(codes.len(), 2, "{}", text(&out));
        for (code, value) in codes.iter().zip([a, b]) {
            assert!(code == "200" || code == "409", "round {round}: {code}");
            if code == "200" {
                answered.push(value);
            }
        }
        let file = must(lab.cmd().args([
            "exec",
            "-T",
            "relay-a",
            "cat",
            "/etc/connector-relay/relay.toml",
        ]));
        for value in answered.iter().filter(|v| v.ends_with(&round.to_string())) {
            assert!(
                file.contains(&format!("Comment = \"{value}\"")),
                "round {round}: {value} was answered 200 but is not in the file:\n{file}"
            );
        }
    }
    eprintln!("fleet: concurrent changes answered 200: {answered:?}");
    assert!(!answered.is_empty());
}

/// The Message-Ids (as written) of the messages in the sink.
fn sink_ids(lab: &Project) -> BTreeSet<String> {
    let out = lab.exec(
        "sink",
        &[
            "bash",
            "-c",
            "cat /mail/*.eml 2>/dev/null | grep -i '^Message-Id:' || true",
        ],
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.trim().to_string()))
        .collect()
}

/// What a client's load recorded: `(accepted, failed)` message ids, once it is done.
fn load_result(lab: &Project, client: &str, out: &str) -> Option<(Vec<String>, Vec<String>)> {
    let done = lab.exec(client, &["test", "-f", &format!("{out}.done")]);
    if !done.status.success() {
        return None;
    }
    let lines = must(lab.cmd().args(["exec", "-T", client, "cat", out]));
    let mut accepted = Vec::new();
    let mut failed = Vec::new();
    for line in lines.lines() {
        match line.split_once(' ') {
            Some(("250", id)) => accepted.push(id.to_string()),
            Some((_, id)) => failed.push(id.to_string()),
            None => {}
        }
    }
    Some((accepted, failed))
}

fn accepted_so_far(lab: &Project) -> usize {
    let out = lab.exec(
        "client-1",
        &["bash", "-c", "grep -c '^250' /tmp/one.out || true"],
    );
    let one: usize = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    let out = lab.exec(
        "client-2",
        &["bash", "-c", "grep -c '^250' /tmp/two.out || true"],
    );
    one + String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// 3. relay-a killed under load: nothing answered 250 is lost.
fn node_loss(lab: &Project, api: &Api<'_>) {
    // The on-premises server is down: accepted mail waits in the nodes' spools.
    must(lab.cmd().args(["stop", "-t", "5", "sink"]));
    let n = LOAD.to_string();
    for (client, tag, out) in [
        ("client-1", "one", "/tmp/one.out"),
        ("client-2", "two", "/tmp/two.out"),
    ] {
        must(lab.cmd().args([
            "exec",
            "-d",
            client,
            "bash",
            "/lab/fleet/load.sh",
            tag,
            &n,
            out,
        ]));
    }
    poll(SETTLE, "20 messages accepted", || {
        (accepted_so_far(lab) >= 20).then_some(())
    });
    must(lab.cmd().args(["kill", "relay-a"]));
    let killed_at = accepted_so_far(lab);
    eprintln!("fleet: relay-a killed after {killed_at} messages were accepted");
    let (one, one_failed) = poll(SETTLE, "client-1's load", || {
        load_result(lab, "client-1", "/tmp/one.out")
    });
    let (two, two_failed) = poll(SETTLE, "client-2's load", || {
        load_result(lab, "client-2", "/tmp/two.out")
    });
    eprintln!(
        "fleet: accepted {} + {}, failed {:?} {:?}",
        one.len(),
        two.len(),
        one_failed,
        two_failed
    );
    // The load carried on through relay-b: every message of the last quarter accepted.
    for (tag, accepted) in [("one", &one), ("two", &two)] {
        for i in (LOAD * 3 / 4 + 1)..=LOAD {
            let id = format!("<{tag}-{i}@fleet.test>");
            assert!(
                accepted.contains(&id),
                "{id} after the kill was not accepted"
            );
        }
    }

    // relay-b takes relay-a's spool over; the server comes back.
    let adopted = must(lab.cmd().args([
        "exec",
        "-T",
        "relay-b",
        "connector-relay",
        "queue",
        "adopt",
        "--from",
        "/peers/relay-a/spool",
        "--config",
        "/etc/connector-relay/relay.toml",
    ]));
    eprintln!("fleet: {}", adopted.trim());
    let count: usize = adopted
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        count > 0,
        "relay-a held messages when it was killed: {adopted}"
    );
    must(lab.cmd().args(["start", "sink"]));

    let accepted: BTreeSet<String> = one.iter().chain(&two).cloned().collect();
    let arrived = poll(SETTLE, "every accepted message at the sink", || {
        let ids = sink_ids(lab);
        accepted.is_subset(&ids).then_some(ids)
    });
    eprintln!(
        "fleet: {} accepted, {} arrived",
        accepted.len(),
        arrived.len()
    );

    // One trace query (relay-b; the store is the fleet's) finds every one delivered.
    let rows = poll(SETTLE, "a Delivered row for every accepted message", || {
        let rows = api.trace(RELAY_B, "");
        let delivered: BTreeSet<&str> = rows
            .iter()
            .filter(|r| field(r, "event") == "Delivered")
            .map(|r| field(r, "recipient"))
            .collect();
        let all = accepted
            .iter()
            .all(|id| delivered.contains(recipient_of(id).as_str()));
        all.then_some(rows)
    });
    let nodes: BTreeSet<&str> = rows.iter().map(|r| field(r, "node")).collect();
    assert!(
        nodes.contains("relay-a") && nodes.contains("relay-b"),
        "{nodes:?}"
    );
}

/// The recipient load.sh gives message `<TAG-I@fleet.test>`: `TAG-I@contoso.test`.
fn recipient_of(id: &str) -> String {
    let local = id.trim_matches(['<', '>']).split('@').next().unwrap_or("");
    format!("{local}@contoso.test")
}
