//! Issue 20, the binary as a service sees it (no Docker needed): the readiness protocol of
//! `Type=notify` over a real notify socket, the log formats (`json`, and `auto` turning to
//! journald's form when stderr is the `JOURNAL_STREAM`), `--version` with the git revision,
//! shell completions and man pages.

mod support;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::net::UnixDatagram;

const BIN: &str = env!("CARGO_BIN_EXE_connector-relay");
/// A bound on waiting for the next notification (a slow machine); nothing asserts on time.
const WAIT: Duration = Duration::from_secs(120);

async fn next_state(sock: &UnixDatagram) -> String {
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, sock.recv(&mut buf))
        .await
        .expect("a notification in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn signal(child: &std::process::Child, sig: libc::c_int) {
    assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, sig) }, 0);
}

/// READY=1 comes when port and greeting are there; a message goes through; SIGHUP is
/// RELOADING=1 then READY=1 with the new generation; SIGTERM is STOPPING=1. Every log line
/// of the run is a JSON object with the text line's fields.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_protocol_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let sink = start_sink().await;
    let port = free_port();
    let config = write_kill9_config(dir.path(), port, sink.addr());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let ready = next_state(&sock).await;
    assert!(ready.contains("READY=1\n"), "{ready}");
    assert!(
        ready.contains(&format!("STATUS=listening on 127.0.0.1:{port}")),
        "{ready}"
    );
    // Ready means ready: the listener answers at once.
    let to: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut d = Dialog::connect(to).await;
    d.cmd("EHLO client.contoso.test", "250").await;
    d.send_message(
        "alice@fabrikam.test",
        "bob@contoso.test",
        "Subject: notify\r\n\r\nhello",
    )
    .await;
    d.cmd("QUIT", "221").await;
    assert_eq!(wait_messages(sink.maildir(), 1, WAIT).await.len(), 1);

    signal(&child, libc::SIGHUP);
    let reloading = next_state(&sock).await;
    assert!(reloading.contains("RELOADING=1\n"), "{reloading}");
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading}");
    let reloaded = next_state(&sock).await;
    assert!(reloaded.contains("READY=1\n"), "{reloaded}");
    assert!(
        reloaded.contains("configuration generation 2"),
        "{reloaded}"
    );

    signal(&child, libc::SIGTERM);
    let stopping = next_state(&sock).await;
    assert!(stopping.contains("STOPPING=1\n"), "{stopping}");
    let out = tokio::task::spawn_blocking(move || {
        let mut stderr = String::new();
        std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
        (child.wait().unwrap(), stderr)
    })
    .await
    .unwrap();
    assert!(out.0.success(), "{}", out.1);
    check_json_log(&out.1, port);
}

/// Every line parses, carries the text line's parts, and the events have their fields.
fn check_json_log(log: &str, port: u16) {
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for line in &lines {
        for key in ["timestamp", "level", "target", "message"] {
            assert!(line[key].is_string(), "{key} missing: {line}");
        }
    }
    let event = |message: &str| {
        lines
            .iter()
            .find(|l| l["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"))
    };
    let listening = event("listening");
    assert_eq!(listening["addr"], format!("127.0.0.1:{port}"));
    assert_eq!(listening["implicit_tls"], false);
    assert_eq!(listening["level"], "INFO");
    assert_eq!(listening["target"], "connector_relay::relay");
    assert!(event("spool recovered")["messages"].is_u64());
    let starting = event("starting");
    assert!(
        starting["version"].as_str().unwrap().contains("(git "),
        "{starting}"
    );
    assert_eq!(
        json_fields(starting),
        BTreeSet::from(["config".to_string(), "version".to_string()])
    );
    event("stopped");
}

/// An event's own fields (what follows the message on a text line).
fn json_fields(line: &Value) -> BTreeSet<String> {
    line.as_object()
        .unwrap()
        .keys()
        .filter(|k| !["timestamp", "level", "target", "message"].contains(&k.as_str()))
        .cloned()
        .collect()
}

/// The field names of a text line: `key=value` pairs after the message (values may be
/// quoted and hold spaces).
fn text_fields(line: &str) -> BTreeSet<String> {
    let mut fields = BTreeSet::new();
    let mut quoted = false;
    for (i, ch) in line.char_indices() {
        match ch {
            '"' => quoted = !quoted,
            '=' if !quoted => {
                let key = line[..i].rsplit(' ').next().unwrap_or("");
                fields.insert(key.to_string());
            }
            _ => {}
        }
    }
    fields
}

/// A relay whose port is taken: it logs its start and the error, says why in STATUS= and
/// never READY=1, and exits 2. Returns its log.
async fn failed_start(journal_stream: impl Fn(u64, u64) -> String) -> String {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = write_kill9_config(dir.path(), port, "127.0.0.1:9".parse().unwrap());
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    let writer = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
    let meta = writer.metadata().unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("JOURNAL_STREAM", journal_stream(meta.dev(), meta.ino()))
        .env("RUST_LOG", "info")
        .env_remove("CONNECTOR_RELAY_LOG_FORMAT")
        .stdout(Stdio::null())
        .stderr(Stdio::from(writer))
        .spawn()
        .unwrap();
    let status = next_state(&sock).await;
    assert!(
        status.starts_with(&format!(
            "STATUS=cannot start: cannot listen on 127.0.0.1:{port}"
        )),
        "{status}"
    );
    let log = tokio::task::spawn_blocking(move || {
        let code = child.wait().unwrap().code();
        assert_eq!(code, Some(2));
        let mut log = String::new();
        let mut reader = reader;
        std::io::Read::read_to_string(&mut reader, &mut log).unwrap();
        log
    })
    .await
    .unwrap();
    let mut buf = [0u8; 64];
    assert!(
        sock.try_recv(&mut buf).is_err(),
        "a notification after the failure"
    );
    drop(taken);
    log
}

/// Under systemd (stderr is the JOURNAL_STREAM) the default format has journald's
/// priority prefixes and no time stamp; a JOURNAL_STREAM that is not stderr changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn journal_format_when_stderr_is_the_journal() {
    let journal = failed_start(|dev, ino| format!("{dev}:{ino}")).await;
    let starting = journal
        .lines()
        .find(|l| l.contains("starting"))
        .unwrap_or_else(|| panic!("{journal}"));
    assert!(
        starting.starts_with("<6> INFO connector_relay: starting version=\""),
        "{starting}"
    );
    let error = journal
        .lines()
        .find(|l| l.contains("cannot listen"))
        .unwrap_or_else(|| panic!("{journal}"));
    assert!(error.starts_with("<3>ERROR "), "{error}");
    // Every tracing line (the plain `connector-relay: ...` line repeats the error for a
    // terminal whatever RUST_LOG says).
    for line in journal
        .lines()
        .filter(|l| !l.starts_with("connector-relay: "))
    {
        assert!(line.starts_with('<'), "no priority: {line}\n{journal}");
    }

    let text = failed_start(|dev, ino| format!("{dev}:{}", ino + 1)).await;
    let starting = text
        .lines()
        .find(|l| l.contains("INFO connector_relay: starting"))
        .unwrap_or_else(|| panic!("{text}"));
    // 2026-12-06T00:37:22.853175Z  INFO ...
    assert!(
        starting.as_bytes()[..4].iter().all(u8::is_ascii_digit) && starting.contains("Z  INFO"),
        "{starting}"
    );
    // The text line's fields are the JSON line's (notify_protocol_and_json_logs).
    assert_eq!(
        text_fields(starting),
        BTreeSet::from(["config".to_string(), "version".to_string()])
    );
}

fn output(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(out.status.success(), "{args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn version_names_the_git_revision() {
    let version = output(&["--version"]);
    let git = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let rev = git.unwrap_or_else(|| "unknown".into());
    assert_eq!(
        version,
        format!(
            "connector-relay {} (git {rev})\n",
            env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn completions_and_man_pages_come_from_the_cli() {
    let bash = output(&["completions", "bash"]);
    assert!(bash.contains("complete -F _connector__relay"), "{bash}");
    for word in ["queue", "suspend-message", "--log-format", "--config"] {
        assert!(bash.contains(word), "bash completion lacks {word}");
    }
    assert!(output(&["completions", "zsh"]).starts_with("#compdef connector-relay"));
    assert!(output(&["completions", "fish"]).contains("complete -c connector-relay"));

    let page = output(&["man"]);
    assert!(page.contains(".TH connector-relay 1"), "{page}");
    assert!(page.contains("\\-\\-log\\-format"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    output(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    for page in [
        "connector-relay.1",
        "connector-relay-run.1",
        "connector-relay-queue-retry.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page)).unwrap();
        assert!(text.contains(".SH NAME"), "{page}");
    }
    assert!(!Path::new(&dir.path().join("connector-relay-help.1")).exists());
}
