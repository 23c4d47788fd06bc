//! The three use-case configs in `config/` (gateway, hybrid lab, partner forced TLS): each
//! passes `check`, and each is exercised — partly with swaks, a real SMTP client nobody
//! here wrote (`--local-interface`, `--tls`, `--tls-cert`, `--tls-key`), installed by
//! `scripts/install-deps.sh`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

/// An example config with its fixed lab ports and paths replaced for a test run.
fn example(name: &str, spool: &Path, smart_hosts: &[(&str, SocketAddr)]) -> String {
    let path = format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace(
        "Listen = [\"127.0.0.1:2525\"]",
        "Listen = [\"127.0.0.1:0\"]",
    );
    for (from, to) in smart_hosts {
        text = text.replace(&format!("\"{from}\""), &format!("\"{to}\""));
    }
    let mut out = String::new();
    for line in text.lines() {
        if line == "[Relay]" {
            // Never the fixed default admin port (tests run in parallel); token in the temp dir.
            out.push_str(&format!(
                "[Relay]\nAdminListen = \"127.0.0.1:0\"\nAdminTokenFile = \"{}\"\n",
                spool.join("admin.token").display()
            ));
            continue;
        }
        let line = if line.starts_with("SpoolDir") {
            format!("SpoolDir = \"{}\"", spool.join("spool").display())
        } else if line.starts_with("DataDir") {
            format!("DataDir = \"{}\"", spool.display())
        } else if let Some(rest) = line
            .strip_prefix("Tls")
            .filter(|_| line.contains("certs-test/"))
        {
            // Relative certificate paths → absolute, so the test does not depend on its cwd.
            format!(
                "Tls{}",
                rest.replace(
                    "\"certs-test/",
                    &format!("\"{}/certs-test/", env!("CARGO_MANIFEST_DIR"))
                )
            )
        } else {
            line.replace(
                "\"certs-test/",
                &format!("\"{}/certs-test/", env!("CARGO_MANIFEST_DIR")),
            )
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[test]
fn every_example_config_passes_check() {
    for name in [
        "relay.toml",
        "gateway.toml",
        "hybrid-lab.toml",
        "partner-forced-tls.toml",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_connector-relay"))
            .args(["check", "--config", &format!("config/{name}")])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(": OK"), "{name}: {stdout}");
    }
}

/// Runs swaks and returns its whole transcript (stdout + stderr).
fn swaks(
    server: SocketAddr,
    local: &str,
    from: &str,
    to: &str,
    tls: Option<Option<&str>>,
) -> String {
    let mut cmd = Command::new("swaks");
    cmd.args([
        "--server",
        &server.ip().to_string(),
        "--port",
        &server.port().to_string(),
    ])
    .args(["--local-interface", local, "--from", from, "--to", to])
    .args([
        "--helo",
        "swaks.test",
        "--timeout",
        "20",
        "--header",
        "Subject: swaks",
    ]);
    if let Some(cert) = tls {
        cmd.arg("--tls");
        if let Some(c) = cert {
            cmd.args([
                "--tls-cert",
                &certs(&format!("{c}.crt")),
                "--tls-key",
                &certs(&format!("{c}.key")),
            ]);
        }
    }
    let out = cmd
        .output()
        .expect("swaks is installed (scripts/install-deps.sh)");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The server's final word in a swaks transcript: the last `<~ ` / `<** ` reply line to
/// the command after `~> ` matching `command`.
fn reply_to(transcript: &str, command: &str) -> String {
    let mut lines = transcript.lines().skip_while(|l| {
        !l.trim_start()
            .trim_start_matches(['~', '-', '>', ' '])
            .starts_with(command)
    });
    lines.next();
    lines
        .map(|l| l.trim_start())
        .find(|l| l.starts_with("<~") || l.starts_with("<-") || l.starts_with("<**"))
        .map(|l| l.trim_start_matches(['<', '~', '-', '*', ' ']).to_string())
        .unwrap_or_else(|| format!("<no reply to {command}>\n{transcript}"))
}

#[tokio::test]
async fn partner_forced_tls_with_swaks() {
    let onprem = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = example(
        "partner-forced-tls.toml",
        tmp.path(),
        &[("127.0.0.1:2626", onprem.addr())],
    );
    let relay = start_relay(&cfg, None).await;
    let server = relay.smtp_addrs[0];
    let run = |local: &'static str,
               from: &'static str,
               to: &'static str,
               tls: Option<Option<&'static str>>| {
        tokio::task::spawn_blocking(move || swaks(server, local, from, to, tls))
    };

    // 1. Fabrikam over TLS with its certificate: accepted.
    let t = run(
        "127.0.0.20",
        "alice@fabrikam.test",
        "bob@contoso.test",
        Some(Some("mail.fabrikam.test")),
    )
    .await
    .unwrap();
    assert!(reply_to(&t, "RCPT TO").starts_with("250 2.1.5"), "{t}");
    assert!(reply_to(&t, ".").starts_with("250 2.0.0"), "{t}");
    // 2. Fabrikam in plaintext: 451 5.7.3, naming the connector.
    let t = run(
        "127.0.0.20",
        "alice@fabrikam.test",
        "bob@contoso.test",
        None,
    )
    .await
    .unwrap();
    let r = reply_to(&t, "MAIL FROM");
    assert!(
        r.starts_with("451 5.7.3") && r.contains("From Fabrikam (forced TLS)"),
        "{r}\n{t}"
    );
    // 3. Fabrikam over TLS without a certificate: 550 5.7.51.
    let t = run(
        "127.0.0.21",
        "alice@fabrikam.test",
        "bob@contoso.test",
        Some(None),
    )
    .await
    .unwrap();
    let r = reply_to(&t, "RCPT TO");
    assert!(
        r.starts_with("550 5.7.51") && r.contains("From Fabrikam (forced TLS)"),
        "{r}\n{t}"
    );
    // 4. Fabrikam with a revoked certificate: 550 5.7.51.
    let t = run(
        "127.0.0.22",
        "alice@fabrikam.test",
        "bob@contoso.test",
        Some(Some("revoked")),
    )
    .await
    .unwrap();
    assert!(reply_to(&t, "RCPT TO").starts_with("550 5.7.51"), "{t}");
    // 5. Fabrikam with an expired certificate: 550 5.7.51.
    let t = run(
        "127.0.0.22",
        "alice@fabrikam.test",
        "bob@contoso.test",
        Some(Some("expired")),
    )
    .await
    .unwrap();
    assert!(reply_to(&t, "RCPT TO").starts_with("550 5.7.51"), "{t}");
    // 6. A stranger cannot relay; the on-premises server (by IP) can.
    let t = run(
        "127.0.0.50",
        "x@internet.test",
        "y@elsewhere.test",
        Some(None),
    )
    .await
    .unwrap();
    assert!(reply_to(&t, "RCPT TO").starts_with("550 5.7.64"), "{t}");
    let t = run("127.0.0.10", "carol@contoso.test", "dan@contoso.test", None)
        .await
        .unwrap();
    assert!(reply_to(&t, ".").starts_with("250 2.0.0"), "{t}");

    let got = wait_messages(onprem.maildir(), 2, WAIT).await;
    assert_eq!(got.len(), 2, "the two accepted messages arrive");
    let fab = got
        .iter()
        .find(|m| m.contains("X-Sink-Mail-From: <alice@fabrikam.test>"))
        .expect("Fabrikam's message");
    assert!(
        fab.contains(r#"(inbound connector "From Fabrikam \(forced TLS\)")"#),
        "{fab}"
    );
    assert!(
        fab.contains("client certificate \""),
        "Received names the client certificate: {fab}"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn gateway_example() {
    let server = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = example(
        "gateway.toml",
        tmp.path(),
        &[("127.0.0.1:2626", server.addr())],
    );
    let relay = start_relay(&cfg, None).await;
    let gw = relay.smtp_addrs[0];
    let run = |local: &'static str,
               from: &'static str,
               to: &'static str,
               tls: Option<Option<&'static str>>| {
        tokio::task::spawn_blocking(move || swaks(gw, local, from, to, tls))
    };
    // Internet mail for a subdomain of the organization reaches the mail server.
    let t = run(
        "127.0.0.50",
        "x@internet.test",
        "bob@sales.contoso.test",
        None,
    )
    .await
    .unwrap();
    assert!(reply_to(&t, ".").starts_with("250 2.0.0"), "{t}");
    // Fabrikam from outside its addresses: refused even with its certificate.
    let t = run(
        "127.0.0.50",
        "a@fabrikam.test",
        "bob@contoso.test",
        Some(Some("mail.fabrikam.test")),
    )
    .await
    .unwrap();
    assert!(reply_to(&t, "RCPT TO").starts_with("550 5.7.51"), "{t}");
    // From its addresses with its certificate: accepted.
    let t = run(
        "127.0.0.21",
        "a@fabrikam.test",
        "bob@contoso.test",
        Some(Some("mail.fabrikam.test")),
    )
    .await
    .unwrap();
    assert!(reply_to(&t, ".").starts_with("250 2.0.0"), "{t}");
    let got = wait_messages(server.maildir(), 2, WAIT).await;
    assert_eq!(got.len(), 2);
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn hybrid_lab_example() {
    // The on-premises server: a TLS sink on 127.0.0.11 (its certificate is *.sink.test,
    // which the outbound connector's DomainValidation demands).
    let port = free_port();
    let onprem = start_sink_with(format!("127.0.0.11:{port}").parse().unwrap(), true, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let cfg = example(
        "hybrid-lab.toml",
        tmp.path(),
        &[("127.0.0.11:2626", onprem.addr())],
    );
    let relay = start_relay(&cfg, None).await;
    let exo = relay.smtp_addrs[0];
    // On-premises connects from anywhere with its certificate and may relay.
    let t = tokio::task::spawn_blocking(move || {
        swaks(
            exo,
            "127.0.0.60",
            "alice@contoso.test",
            "bob@contoso.test",
            Some(Some("onprem.contoso.test")),
        )
    })
    .await
    .unwrap();
    assert!(reply_to(&t, ".").starts_with("250 2.0.0"), "{t}");
    // Without the certificate the on-premises connector does not apply: plaintext from
    // the same host is anonymous and may not relay.
    let t = tokio::task::spawn_blocking(move || {
        swaks(
            exo,
            "127.0.0.60",
            "alice@contoso.test",
            "x@elsewhere.test",
            None,
        )
    })
    .await
    .unwrap();
    assert!(reply_to(&t, "RCPT TO").starts_with("550 5.7.64"), "{t}");
    let got = wait_messages(onprem.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1);
    assert!(
        got[0].contains("X-Sink-Tls: TLSv1.3"),
        "delivered to on-premises over TLS: {}",
        got[0]
    );
    assert!(
        got[0].contains("(inbound connector \"Inbound from on-premises\")"),
        "{}",
        got[0]
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
