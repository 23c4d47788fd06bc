//! The hybrid lab end to end (README "Hybrid lab"): the top-level `docker-compose.yml`
//! brought up under a project name of its own, with real peers on one private network —
//! Postfix as the on-premises server (mail.contoso.test) and as the partner
//! (mail.fabrikam.test), Postfix internet destinations (a right certificate, a wrong name,
//! no STARTTLS), a DNSSEC-signed zone behind a validating unbound, an MTA-STS policy host —
//! and the relay built from this checkout (the Dockerfile's `prebuilt` stage, so no Rust
//! image). Messages are sent with swaks from inside the peers; every assertion reads the
//! relay's message trace through its admin API (`GET /api/trace`), from inside the lab.
//! At the end the project is brought down with its volumes and the relay image removed;
//! the test checks that no container, network or volume of the project is left.
//!
//! Needs a Docker daemon and Compose (v2 plugin or v1), installed by
//! `scripts/install-deps.sh` → `scripts/lab-deps.sh`; without a reachable daemon it prints
//! a loud SKIPPED line and passes. The Debian base image (`scripts/lab-base-image.sh`,
//! debootstrap) and the peer image are cached by tag: the first run takes a few minutes,
//! later ones well under a minute.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::compose::{self, Project};
use support::docker::{base_image, poll, text};

const PEER_IMAGE: &str = "connector-relay-lab/peer:bookworm";
/// The lab's network (docker-compose.yml); a second lab on it cannot start.
const SUBNET: &str = "10.225.25.0/24";
/// Generous deadlines for a slow machine: they bound waiting, nothing asserts on time.
const READY: Duration = Duration::from_secs(180);
const SETTLE: Duration = Duration::from_secs(180);
/// The services the test starts: all but the Mailpit viewer (a public image).
const SERVICES: &[&str] = &[
    "certs",
    "dns",
    "relay",
    "onprem",
    "partner",
    "northwind",
    "adatum",
    "tailspin",
    "mta-sts",
];

type Lab = Project;

/// The base image (debootstrap, cached by tag), the peer image (layer cache), and the relay
/// image from this build's binary.
fn build_images(relay_image: &str) {
    base_image();
    let t = Instant::now();
    compose::lab_image(PEER_IMAGE, "Dockerfile.peer");
    compose::relay_image(relay_image);
    eprintln!("lab: images ready in {:?}", t.elapsed());
}

/// The relay's trace rows for one recipient, through the admin API, asked from inside the
/// lab (the on-premises container's curl) as a lab user's tool would.
fn trace(lab: &Lab, token: &str, recipient: &str) -> Vec<Value> {
    let url = format!("http://relay.contoso.test:8025/api/trace?recipient={recipient}");
    let auth = format!("Authorization: Bearer {token}");
    let out = lab.exec("onprem", &["curl", "-sf", "-H", &auth, &url]);
    if !out.status.success() {
        return Vec::new();
    }
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
}

fn field<'a>(row: &'a Value, key: &str) -> &'a str {
    row.get(key).and_then(Value::as_str).unwrap_or("")
}

fn rows_of<'a>(rows: &'a [Value], event: &str) -> Vec<&'a Value> {
    rows.iter().filter(|r| field(r, "event") == event).collect()
}

fn show(rows: &[Value]) -> String {
    rows.iter()
        .map(|r| r.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until the recipient's trace has a row of `event`, then returns all its rows.
fn wait_for(lab: &Lab, token: &str, recipient: &str, event: &str) -> Vec<Value> {
    let mut last = Vec::new();
    let start = Instant::now();
    while start.elapsed() < SETTLE {
        last = trace(lab, token, recipient);
        if !rows_of(&last, event).is_empty() {
            return last;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!(
        "lab: no {event} row for {recipient}; its trace:\n{}",
        show(&last)
    );
}

/// swaks inside a peer, injecting into that peer's own Postfix (which then relays).
fn send_via_postfix(lab: &Lab, service: &str, from: &str, to: &str) {
    let subject = format!("Subject: lab {service} to {to}");
    let out = poll(READY, &format!("{service}'s Postfix"), || {
        let out = lab.exec(
            service,
            &[
                "swaks",
                "--server",
                "127.0.0.1",
                "--from",
                from,
                "--to",
                to,
                "--header",
                &subject,
            ],
        );
        out.status.success().then_some(out)
    });
    assert!(text(&out).contains("250"), "{}", text(&out));
}

#[test]
fn hybrid_lab_scenarios() {
    let Some(compose) = compose::ready("tests/lab.rs (hybrid lab)", SUBNET) else {
        return;
    };
    let started = Instant::now();
    let project = format!("crlab{}", std::process::id());
    let relay_image = format!("connector-relay-lab/relay:{project}");
    build_images(&relay_image);
    let mut lab = Project {
        compose,
        project,
        file: "docker-compose.yml",
        env: vec![
            ("LAB_PEER_IMAGE", PEER_IMAGE.to_string()),
            // No copies to the viewer (it is not started), and the admin port published
            // on a port the system picks (never a fixed one a developer's relay may hold).
            ("LAB_VIEWER", String::new()),
            ("LAB_ADMIN_PUBLISH", "127.0.0.1:".to_string()),
        ],
        relay_image,
        down: false,
    };
    eprintln!("lab: {} up ({SUBNET})", lab.project);
    support::docker::must(lab.cmd().args(["up", "-d", "--no-build"]).args(SERVICES));

    // The relay makes its admin token at start; the API answers once it runs.
    let token = poll(READY, "the relay's admin token", || {
        let out = lab.exec("relay", &["cat", "/var/lib/connector-relay/admin.token"]);
        let t = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !t.is_empty()).then_some(t)
    });
    eprintln!("lab: relay up at {:?}", started.elapsed());
    let auth = format!("Authorization: Bearer {token}");
    poll(READY, "the relay's admin API", || {
        let out = lab.exec(
            "onprem",
            &[
                "curl",
                "-sf",
                "-H",
                &auth,
                "http://relay.contoso.test:8025/api/status",
            ],
        );
        out.status.success().then_some(())
    });

    // 1. Partner → relay → on-premises: Fabrikam's Postfix sends over forced TLS with its
    //    certificate from its own address; the relay hands it to mail.contoso.test.
    send_via_postfix(&lab, "partner", "alice@fabrikam.test", "bob@contoso.test");
    // 2. On-premises → relay → internet, DomainValidation: a right certificate (and DANE).
    send_via_postfix(&lab, "onprem", "alice@contoso.test", "carol@northwind.test");
    // 3. A wrong-name destination: deferred with 4.4.317.
    send_via_postfix(&lab, "onprem", "alice@contoso.test", "dave@adatum.test");
    // 4. MTA-STS enforce (wingtip.test) and no STARTTLS (tailspin.test).
    send_via_postfix(&lab, "onprem", "alice@contoso.test", "erin@wingtip.test");
    send_via_postfix(&lab, "onprem", "alice@contoso.test", "frank@tailspin.test");
    // 5. A spoofed partner: an internet host (tailspin) claims fabrikam.test over TLS.
    let spoof = lab.exec(
        "tailspin",
        &[
            "swaks",
            "--server",
            "relay.contoso.test",
            "--tls",
            "--from",
            "ceo@fabrikam.test",
            "--to",
            "grace@contoso.test",
        ],
    );
    assert!(!spoof.status.success(), "{}", text(&spoof));
    assert!(text(&spoof).contains("550 5.7.51"), "{}", text(&spoof));

    eprintln!("lab: messages sent at {:?}", started.elapsed());
    check_partner_to_onprem(&lab, &token);
    check_internet(&lab, &token);
    check_spoof(&lab, &token);
    eprintln!("lab: trace checked at {:?}", started.elapsed());

    lab.teardown();
    let left = lab.leftovers();
    assert!(left.is_empty(), "lab: left behind: {left}");
    eprintln!("lab: passed in {:?}", started.elapsed());
}

fn check_partner_to_onprem(lab: &Lab, token: &str) {
    let rows = wait_for(lab, token, "bob@contoso.test", "Delivered");
    let received = rows_of(&rows, "Received");
    assert!(
        received
            .iter()
            .any(|r| field(r, "client_ip") == "10.225.25.20"
                && field(r, "connector") == "From Fabrikam (forced TLS)"
                && field(r, "certificate").contains("mail.fabrikam.test")
                && field(r, "tls").starts_with("TLS")),
        "partner's Received row:\n{}",
        show(&rows)
    );
    let delivered = rows_of(&rows, "Delivered");
    assert!(
        delivered
            .iter()
            .any(|r| field(r, "connector") == "Outbound to on-premises"
                && field(r, "ip") == "10.225.25.11"
                && field(r, "tls").starts_with("TLS")),
        "Delivered to on-premises:\n{}",
        show(&rows)
    );
    // And it is in bob's mailbox on the on-premises server.
    poll(SETTLE, "bob's mailbox", || {
        let out = lab.exec(
            "onprem",
            &[
                "sh",
                "-c",
                "grep -l 'lab partner to bob@contoso.test' /var/mail/vhosts/contoso.test/bob/new/*",
            ],
        );
        out.status.success().then_some(())
    });
}

fn check_internet(lab: &Lab, token: &str) {
    let internet = "To the internet (DomainValidation)";
    for to in ["carol@northwind.test", "erin@wingtip.test"] {
        let rows = wait_for(lab, token, to, "Delivered");
        assert!(
            rows_of(&rows, "Received").iter().any(|r| {
                field(r, "client_ip") == "10.225.25.11"
                    && field(r, "connector") == "Inbound from on-premises"
                    && field(r, "certificate").contains("mail.contoso.test")
            }),
            "on-premises Received row for {to}:\n{}",
            show(&rows)
        );
        assert!(
            rows_of(&rows, "Delivered")
                .iter()
                .any(|r| field(r, "connector") == internet
                    && field(r, "ip") == "10.225.25.30"
                    && field(r, "tls").starts_with("TLS")),
            "Delivered over TLS to {to}:\n{}",
            show(&rows)
        );
    }
    // northwind's MX host has TLSA in the signed zone: DANE decided; wingtip's policy
    // is MTA-STS enforce.
    let rows = trace(lab, token, "carol@northwind.test");
    assert!(
        rows.iter().any(|r| field(r, "detail").contains("DANE")),
        "DANE in northwind's attempt:\n{}",
        show(&rows)
    );
    let rows = trace(lab, token, "erin@wingtip.test");
    assert!(
        rows.iter().any(|r| field(r, "detail").contains("enforce")),
        "MTA-STS enforce in wingtip's attempt:\n{}",
        show(&rows)
    );
    // A wrong name and no STARTTLS: deferred with 4.4.317, never delivered.
    for (to, ip) in [
        ("dave@adatum.test", "10.225.25.31"),
        ("frank@tailspin.test", "10.225.25.32"),
    ] {
        let rows = wait_for(lab, token, to, "Deferred");
        assert!(
            rows_of(&rows, "Deferred").iter().any(|r| {
                field(r, "connector") == internet
                    && (field(r, "reply").contains("4.4.317")
                        || field(r, "detail").contains("4.4.317"))
            }),
            "4.4.317 for {to}:\n{}",
            show(&rows)
        );
        assert!(
            rows.iter().any(|r| field(r, "ip") == ip),
            "an attempt at {ip} for {to}:\n{}",
            show(&rows)
        );
        assert!(rows_of(&rows, "Delivered").is_empty(), "{}", show(&rows));
    }
}

fn check_spoof(lab: &Lab, token: &str) {
    let rows = wait_for(lab, token, "grace@contoso.test", "Rejected");
    assert!(
        rows_of(&rows, "Rejected").iter().any(|r| {
            field(r, "client_ip") == "10.225.25.32"
                && field(r, "connector") == "From Fabrikam (forced TLS)"
                && field(r, "reply").starts_with("550 5.7.51")
        }),
        "the spoof's Rejected row:\n{}",
        show(&rows)
    );
    assert!(rows_of(&rows, "Received").is_empty(), "{}", show(&rows));
}
