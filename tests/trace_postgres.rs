//! The shared PostgreSQL trace store (`[Relay] TraceStore`, README "Running more than one
//! node") with a real server: Debian's PostgreSQL in a private cluster on loopback
//! (tests/support/postgres.rs; the test skips loudly when it is not installed) and two relay
//! nodes writing to it. A message goes through node A and on to node B (A's smart host);
//! one `trace` query, from either node's config, shows its whole path with every row
//! naming its node. Rows past `TraceRetentionDays` are deleted. PostgreSQL stopped mid-run:
//! mail still flows, the outage is counted once and rows beyond the buffer are dropped and
//! counted, and rows are written again once the server is back. The URL's password is
//! never shown (`check`, `trace`, the admin API).

mod support;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use connector_relay::relay::{self, RelayHandle, StartOptions};
use connector_relay::trace::backend::{Backend, Location};
use connector_relay::trace::postgres::Postgres;
use connector_relay::trace::target::PgUrl;
use connector_relay::trace::{EventKind, TraceEvent, TraceQuery, query_store};
use support::inject::inject;
use support::postgres::{PG_PASSWORD, TestPostgres};
use support::*;

const WAIT: Duration = Duration::from_secs(60);
/// The trace events each node buffers: small, so that an outage fills it quickly.
const BUFFER: usize = 64;

fn skip(why: &str) {
    eprintln!("\n======================================================================");
    eprintln!("SKIPPED tests/trace_postgres.rs: {why}");
    eprintln!("======================================================================\n");
}

fn onprem() -> IpAddr {
    "127.0.0.10".parse().unwrap()
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A node: its config file in `dir` (`extra` in `[Relay]`, contoso.test to `next`) and
/// the relay started from it under `node`.
async fn start_node(
    dir: &Path,
    node: &str,
    next: std::net::SocketAddr,
    extra: &str,
) -> (RelayHandle, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(&config, relay_config(dir, next, extra)).unwrap();
    let loaded = connector_relay::config::load_file(&config).expect("valid config");
    let options = StartOptions {
        config_path: Some(config.clone()),
        node: Some(node.into()),
        trace_buffer: BUFFER,
        ..Default::default()
    };
    let relay = relay::start_with_options(Arc::new(loaded.policy), options)
        .await
        .expect("relay starts");
    (relay, config)
}

/// The rows `q` selects, read as the `trace` command reads them (the store of `config`).
async fn rows(config: &Path, q: TraceQuery) -> Result<Vec<TraceEvent>, String> {
    let config = config.to_path_buf();
    blocking(move || {
        let loaded = connector_relay::config::load_file(&config).unwrap();
        query_store(
            &Location::of(&loaded.policy.relay),
            &TraceQuery { limit: 1000, ..q },
        )
    })
    .await
}

fn by_message_id(id: &str) -> TraceQuery {
    TraceQuery {
        message_id: Some(id.into()),
        ..Default::default()
    }
}

/// `(node, event)` of each row.
fn path_of(rows: &[TraceEvent]) -> Vec<(String, EventKind)> {
    rows.iter()
        .map(|r| (r.node.clone().unwrap_or_default(), r.event))
        .collect()
}

fn has(rows: &[TraceEvent], node: &str, kind: EventKind) -> bool {
    rows.iter()
        .any(|r| r.node.as_deref() == Some(node) && r.event == kind)
}

/// Polls until the message's trace has a Delivered row from both nodes.
async fn whole_path(config: &Path, id: &str) -> Vec<TraceEvent> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let r = match rows(config, by_message_id(id)).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("trace query: {e}");
                Vec::new()
            }
        };
        let done =
            has(&r, "node-a", EventKind::Delivered) && has(&r, "node-b", EventKind::Delivered);
        if done || tokio::time::Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The sum of the `/metrics` series whose line starts with `series` (name and labels).
fn metric(series: &str) -> f64 {
    connector_relay::metrics::render()
        .lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn until_metric(series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let v = metric(series);
        if ok(v) || tokio::time::Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn binary(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("binary runs")
}

fn out_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rows written before the nodes start: one past retention, one recent.
async fn seed(url: &str) {
    let url = PgUrl::parse(url).unwrap();
    blocking(move || {
        let mut store = Postgres::new(&url, None, true).unwrap();
        let now = connector_relay::trace::time::now_ms();
        let mut old = TraceEvent::new(EventKind::Received);
        old.time_ms = now - 3 * 86_400_000;
        old.queue_id = Some("RETIRED".into());
        let mut recent = TraceEvent::new(EventKind::Received);
        recent.queue_id = Some("RECENT".into());
        store.insert("old-node", &[old, recent]).unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_share_one_postgresql_trace() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "connector_relay::trace=info".into()),
        ))
        .with_test_writer()
        .try_init();
    let pg = match blocking(TestPostgres::start).await {
        Ok(pg) => pg,
        Err(why) => return skip(&why),
    };
    seed(&pg.url()).await;
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!("TraceStore = \"{}\"\nTraceRetentionDays = 2", pg.url());
    let (b, b_config) = start_node(&tmp.path().join("b"), "node-b", sink.addr(), &extra).await;
    let (a, a_config) = start_node(&tmp.path().join("a"), "node-a", b.smtp_addrs[0], &extra).await;

    retention(&a_config).await;
    let id = &inject(a.smtp_addrs[0], onprem(), "bob@contoso.test", "fleet", 1, 1).await[0];
    assert_eq!(wait_messages(sink.maildir(), 1, WAIT).await.len(), 1);
    let path = whole_path(&a_config, id).await;
    for (node, kind) in [
        ("node-a", EventKind::Received),
        ("node-a", EventKind::Delivered),
        ("node-b", EventKind::Received),
        ("node-b", EventKind::Delivered),
    ] {
        assert!(
            has(&path, node, kind),
            "{node} {kind:?} in {:?}",
            path_of(&path)
        );
    }
    // From either node's config, the same rows; the table names the nodes; no password.
    let from_b = rows(&b_config, by_message_id(id)).await.unwrap();
    assert_eq!(path_of(&from_b), path_of(&path));
    for config in [&a_config, &b_config] {
        let c = config.to_str().unwrap();
        let table = blocking({
            let (c, id) = (c.to_string(), id.clone());
            move || binary(&["trace", "--config", &c, "--message-id", &id])
        })
        .await;
        let t = out_text(&table);
        assert!(table.status.success(), "{t}");
        assert!(
            t.contains("NODE") && t.contains("node-a") && t.contains("node-b"),
            "{t}"
        );
        assert!(!t.contains(PG_PASSWORD), "{t}");
        let check = blocking({
            let c = c.to_string();
            move || binary(&["check", "--config", &c])
        })
        .await;
        let t = out_text(&check);
        assert!(
            t.contains("trace store: PostgreSQL postgresql://relay:***@127.0.0.1"),
            "{t}"
        );
        assert!(!t.contains(PG_PASSWORD), "{t}");
    }
    no_password_in_the_api(&a).await;
    fleet_report(&b_config).await;

    outage(&pg, &a, &a_config, &sink).await;
    a.shutdown(Duration::from_secs(10)).await;
    b.shutdown(Duration::from_secs(10)).await;
}

/// The reports read the shared store: mail received by either node counts.
async fn fleet_report(config: &Path) {
    let c = config.to_str().unwrap().to_string();
    let out =
        blocking(move || binary(&["report", "--config", &c, "--since", "1h", "--json"])).await;
    assert!(out.status.success(), "{}", out_text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let inbound = report["Directions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["Direction"] == "Inbound")
        .unwrap();
    assert!(inbound["Total"].as_u64().unwrap() >= 2, "{report}");
}

/// The sweep at start deleted the row older than `TraceRetentionDays`, not the recent one.
async fn retention(config: &Path) {
    let queue_id = |id: &str| TraceQuery {
        queue_id: Some(id.into()),
        ..Default::default()
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    while !rows(config, queue_id("RETIRED")).await.unwrap().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old row is still there"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recent = rows(config, queue_id("RECENT")).await.unwrap();
    assert_eq!(recent.len(), 1);
    assert_eq!(recent[0].node.as_deref(), Some("old-node"));
}

async fn no_password_in_the_api(relay: &RelayHandle) {
    let token = std::fs::read_to_string(relay.policy().relay.admin_token_file.clone()).unwrap();
    let admin = relay.admin_addr.unwrap();
    for path in [
        "/api/status",
        "/api/trace?recipient=bob@contoso.test",
        "/metrics",
    ] {
        let r = http::http(admin, "GET", path, Some(token.trim()), None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.body);
        assert!(!r.body.contains(PG_PASSWORD), "{path}: {}", r.body);
    }
}

/// PostgreSQL stops: mail still flows, the outage is counted, rows beyond the buffer are
/// dropped and counted; it comes back: rows are written again, the ones buffered first.
async fn outage(pg: &TestPostgres, a: &RelayHandle, a_config: &Path, sink: &Sink) {
    let outages = metric("connector_relay_trace_store_outages_total");
    tokio::task::block_in_place(|| pg.stop_server());
    let smtp = a.smtp_addrs[0];
    let first = inject(smtp, onprem(), "carol@contoso.test", "outage", 2, 1).await;
    let down = until_metric("connector_relay_trace_store_outages_total", |v| v > outages).await;
    assert!(down > outages, "the outage is counted");
    assert_eq!(metric("connector_relay_trace_store_up"), 0.0);
    // The writers wait for the server; their buffers fill, then rows are dropped.
    inject(smtp, onprem(), "carol@contoso.test", "flood", 40, 4).await;
    assert_eq!(
        wait_messages(sink.maildir(), 43, WAIT).await.len(),
        43,
        "mail flows"
    );
    let dropped = until_metric(
        "connector_relay_trace_rows_dropped_total{reason=\"buffer_full\"}",
        |v| v > 0.0,
    )
    .await;
    assert!(
        dropped > 0.0,
        "rows beyond the buffer are dropped and counted"
    );
    assert_eq!(
        metric("connector_relay_trace_store_outages_total"),
        down,
        "one outage, counted once however many writes failed"
    );

    tokio::task::block_in_place(|| pg.start_server()).unwrap();
    // Back: the writers write what they kept and what their buffers hold; rows of mail
    // sent meanwhile would find the buffers still full (dropped, by design), so the
    // next message is sent once the store is up and the rows have stopped coming.
    assert_eq!(
        until_metric("connector_relay_trace_store_up", |v| v == 1.0).await,
        1.0
    );
    settled(a_config).await;
    let after = inject(smtp, onprem(), "dave@contoso.test", "after", 1, 1).await;
    assert_eq!(wait_messages(sink.maildir(), 44, WAIT).await.len(), 44);
    let path = whole_path(a_config, &after[0]).await;
    assert!(
        has(&path, "node-a", EventKind::Delivered) && has(&path, "node-b", EventKind::Delivered),
        "rows after the outage: {:?}",
        path_of(&path)
    );
    // The batch in hand when the server went away was kept and written once it was back.
    let kept = rows(a_config, by_message_id(&first[0])).await.unwrap();
    assert!(
        has(&kept, "node-a", EventKind::Received),
        "{:?}",
        path_of(&kept)
    );
}

/// Waits until the number of rows in the store stays the same for a second (bounded).
async fn settled(config: &Path) {
    let count = || async {
        rows(config, TraceQuery::default())
            .await
            .map(|r| r.len())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut last = count().await;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = count().await;
        if now == last && now > 0 {
            return;
        }
        last = now;
    }
}
