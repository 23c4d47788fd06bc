//! Admin API changes racing an administrator's edits of the config file on disk, over the
//! real admin listener, and the clean-up of the config writer's temporary files at start.
//!
//! The race test is exact because every version of the file that ever gets replaced is
//! seen by the test: the "administrator" (a thread) replaces the file with an atomic
//! exchange (`renameat2(RENAME_EXCHANGE)`), which hands back exactly the version it
//! displaced, and an API change's answer carries the old value of the key it changed
//! (`Changes[].Old`, read from the file it replaced). So:
//! - no disk edit is lost: the version each disk edit displaces still carries the marker
//!   of the previous disk edit (an API write based on an older file would carry an older
//!   marker), and the final file carries the last one;
//! - no `200` is missing from the file: each API value answered `200` is either the `Old`
//!   of the same connector's next `200`, or in a version a disk edit displaced, or in the
//!   final file; a value answered `409` is in none of them;
//! - once the poll has caught up, the connectors in effect are the ones in the file.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use support::http::{http, start_relay_from_file, until};

/// Connectors the API changes, one per API client.
const CLIENTS: usize = 4;
/// API changes per client (200 in all, as in the adversarial run).
const CHANGES: usize = 50;

/// The file as the administrator writes it: disk edit `n`, every `Comment` back to "orig".
fn config_text(dir: &Path, n: usize) -> String {
    let mut text = format!(
        r#"# disk-edit {n}
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"
"#,
        dir = dir.display()
    );
    for c in 0..CLIENTS {
        text.push_str(&format!(
            "\n[[OutboundConnector]]\nName = \"Api{c}\"\nComment = \"orig\"\nRecipientDomains = [\"p{c}.test\"]\nUseMXRecord = false\nSmartHosts = [\"127.0.0.1:1\"]\n"
        ));
    }
    text
}

/// The number after `# disk-edit ` on the first line.
fn disk_marker(text: &str) -> usize {
    text.lines()
        .next()
        .and_then(|l| l.strip_prefix("# disk-edit "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no disk-edit marker in\n{text}"))
}

/// The `Comment` of each `ApiN` connector in `text`.
fn comments(text: &str) -> BTreeMap<String, String> {
    let doc: toml::Table = text.parse().expect("the file is valid TOML");
    doc["OutboundConnector"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["Name"].as_str().unwrap().to_string(),
                c["Comment"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Atomically exchanges two paths; both exist afterwards, each with the other's file.
fn exchange(a: &Path, b: &Path) {
    let swapped = connector_relay::config::edit::exchange(a, b).expect("renameat2");
    assert!(
        swapped,
        "RENAME_EXCHANGE is not supported on this file system"
    );
}

/// What the administrator saw: per disk edit, the version it displaced.
struct DiskLog {
    edits: usize,
    /// (disk edit number, marker of the displaced version, comments of it).
    displaced: Vec<(usize, usize, BTreeMap<String, String>)>,
}

/// Rewrites the whole file every 2-7 ms until `stop`, like an editor saving (temporary
/// file, then an atomic swap), each version marked `# disk-edit N`.
fn administrator(dir: PathBuf, config: PathBuf, stop: Arc<AtomicBool>) -> DiskLog {
    let tmp = dir.join("editor-save.tmp");
    let mut log = DiskLog {
        edits: 0,
        displaced: Vec::new(),
    };
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(2 + rand::random::<u64>() % 6));
        n += 1;
        std::fs::write(&tmp, config_text(&dir, n)).unwrap();
        exchange(&tmp, &config);
        let old = std::fs::read_to_string(&tmp).unwrap();
        log.displaced.push((n, disk_marker(&old), comments(&old)));
        std::fs::remove_file(&tmp).unwrap();
        log.edits = n;
    }
    log
}

/// One API client's answers, in order: (value sent, status, `Changes[0].Old`).
type Answers = Vec<(String, u16, Option<String>)>;

/// `CHANGES` changes of `Comment` on `ApiN`, one after the other.
async fn api_client(admin: std::net::SocketAddr, token: String, c: usize) -> Answers {
    let mut answers = Vec::new();
    for s in 0..CHANGES {
        let value = format!("api-{c}-{s}");
        let r = http(
            admin,
            "PUT",
            &format!("/api/exchange/connectors/Api{c}"),
            Some(&token),
            Some(&json!({ "Comment": value })),
        )
        .await;
        let old = match r.status {
            200 => {
                let a = r.json();
                assert_eq!(a["Live"], true, "{a}");
                Some(a["Changes"][0]["Old"].as_str().unwrap().to_string())
            }
            409 => {
                let a = r.json();
                let error = a["error"].as_str().unwrap();
                assert!(
                    error.contains("was changed on disk since this change read it")
                        && error.contains("the change was not applied"),
                    "{a}"
                );
                assert_eq!(a["Applied"], false, "{a}");
                None
            }
            other => panic!("PUT answered {other}: {}", r.body),
        };
        answers.push((value, r.status, old));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_changes_racing_disk_edits_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, config_text(dir.path(), 0)).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let disk = {
        let (dir, config, stop) = (dir.path().to_path_buf(), config.clone(), stop.clone());
        std::thread::spawn(move || administrator(dir, config, stop))
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(api_client(admin, token.clone(), c)))
        .collect();
    let mut answers = Vec::new();
    for client in clients {
        answers.push(client.await.unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    let disk = disk.join().unwrap();
    let last = std::fs::read_to_string(&config).unwrap();

    // No disk edit lost: each displaced version descends from the previous disk edit.
    let lost_disk: Vec<_> = disk
        .displaced
        .iter()
        .filter(|(n, marker, _)| *marker != n - 1)
        .collect();
    assert_eq!(
        disk_marker(&last),
        disk.edits,
        "the last disk edit is in the file"
    );

    // Every value the file ever held, as far as the test can see.
    let mut seen: BTreeSet<String> = disk
        .displaced
        .iter()
        .flat_map(|(_, _, c)| c.values().cloned())
        .collect();
    seen.extend(comments(&last).into_values());
    for client in &answers {
        seen.extend(client.iter().filter_map(|(_, _, old)| old.clone()));
    }
    let (mut ok, mut refused, mut missing, mut applied_409) = (0, 0, Vec::new(), Vec::new());
    for client in &answers {
        for (value, status, _) in client {
            match status {
                200 => ok += 1,
                _ => refused += 1,
            }
            match (*status, seen.contains(value)) {
                (200, false) => missing.push(value.clone()),
                (409, true) => applied_409.push(value.clone()),
                _ => {}
            }
        }
    }
    println!(
        "config race: {} API changes ({ok} answered 200, {refused} answered 409) against {} disk edits: {} disk edits lost, {} API changes answered 200 but missing from the file, {} answered 409 but applied",
        CLIENTS * CHANGES,
        disk.edits,
        lost_disk.len(),
        missing.len(),
        applied_409.len()
    );
    assert!(
        lost_disk.is_empty(),
        "disk edits overwritten: {lost_disk:?}"
    );
    assert!(
        missing.is_empty(),
        "answered 200, never in the file: {missing:?}"
    );
    assert!(
        applied_409.is_empty(),
        "answered 409, in the file: {applied_409:?}"
    );
    assert!(
        refused > 0,
        "the race did not happen: no change was refused"
    );
    assert!(ok > 0, "no change went through");

    // Once the poll has caught up, what is in effect is what is in the file.
    let want = comments(&last);
    let token = token.as_str();
    until("the connectors in effect to match the file", || {
        let want = want.clone();
        async move {
            let list = http(admin, "GET", "/api/exchange/connectors", Some(token), None)
                .await
                .json();
            let live: BTreeMap<String, String> = list
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|c| Some((c["Name"].as_str()?.into(), c["Comment"].as_str()?.into())))
                .collect();
            (live == want).then_some(())
        }
    })
    .await;
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A pid that no process has: a child that has exited and been reaped.
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

#[tokio::test]
async fn the_config_writers_leftover_temp_files_are_removed_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, config_text(dir.path(), 0)).unwrap();
    // What kill -9 during 19 config writes leaves: the writer's `.relay.toml.<pid>.tmp`.
    let leftovers: Vec<PathBuf> = (0..19)
        .map(|i| {
            let p = dir.path().join(format!(".relay.toml.{}.tmp", dead_pid()));
            std::fs::write(&p, format!("# half a config {i}")).unwrap();
            p
        })
        .collect();
    // Not the writer's, or a live writer's (pid 1 always runs): left alone.
    let others = [
        ".relay.toml.tmp".to_string(),
        ".relay.toml.abc.tmp".to_string(),
        ".other.toml.123.tmp".to_string(),
        "relay.toml.bak".to_string(),
        ".relay.toml.1.tmp".to_string(),
    ];
    for name in &others {
        std::fs::write(dir.path().join(name), "keep").unwrap();
    }
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let left: Vec<_> = leftovers.iter().filter(|p| p.exists()).collect();
    println!(
        "config writer leftovers: {} before start, {} after",
        leftovers.len(),
        left.len()
    );
    assert!(left.is_empty(), "not removed: {left:?}");
    for name in &others {
        assert!(dir.path().join(name).exists(), "{name} was removed");
    }

    // And a change through the API leaves no temporary file of its own.
    let admin = relay.admin_addr.unwrap();
    let r = http(
        admin,
        "PUT",
        "/api/exchange/connectors/Api0",
        Some(&token),
        Some(&json!({"Comment": "after start"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    names.sort();
    let mut expected: Vec<String> = others
        .iter()
        .filter(|n| n.ends_with(".tmp"))
        .cloned()
        .collect();
    expected.sort();
    assert_eq!(names, expected);
    let _: Value = r.json();
    relay.shutdown(Duration::from_secs(5)).await;
}
