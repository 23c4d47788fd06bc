//! The Reports view and `GET /api/reports` over real mail: a relay with two inbound and two
//! outbound connectors takes messages over TLS 1.3, TLS 1.2 and plaintext, delivers them to
//! a TLS and a plaintext smart host, and refuses three (one `RequireTls`, two relays
//! without on-premises attribution). The API, the `report` command and the charts drawn in
//! a real headless Chromium (`support/browser.rs`) must all show the same exact numbers;
//! the page's screenshot goes to `docs/admin-reports.png` with `UPDATE_SCREENSHOTS=1`.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use rustls::SupportedProtocolVersion;
use serde_json::{Value, json};
use support::browser::*;
use support::http::{http, start_relay_from_file, until};
use support::*;
use tokio::io::{AsyncRead, AsyncWrite};

fn config_text(dir: &Path, onprem: SocketAddr, fabrikam: SocketAddr) -> String {
    format!(
        r#"[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TlsCertificate = "{cert}"
TlsPrivateKey = "{key}"
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

[[InboundConnector]]
Name = "Partner fabrikam"
SenderDomains = ["fabrikam.test"]
RequireTls = true

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{onprem}"]

[[OutboundConnector]]
Name = "To fabrikam"
RecipientDomains = ["fabrikam.test"]
UseMXRecord = false
SmartHosts = ["{fabrikam}"]
"#,
        cert = certs("relay.contoso.test.crt"),
        key = certs("relay.contoso.test.key"),
        dir = dir.display(),
    )
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// A session from `source` after EHLO, under STARTTLS with `tls` when given.
async fn session(
    relay: SocketAddr,
    source: &str,
    tls: Option<&'static SupportedProtocolVersion>,
) -> Dialog<Box<dyn Stream>> {
    let mut d = Dialog::connect_from(source.parse().unwrap(), relay).await;
    d.cmd("EHLO client.test", "250").await;
    let Some(version) = tls else {
        return Dialog::new(Box::new(d.reader_stream()));
    };
    d.cmd("STARTTLS", "220").await;
    let stream = tls_connect_with(d.reader_stream(), "relay.contoso.test", None, &[version])
        .await
        .expect("TLS handshake");
    let mut d: Dialog<Box<dyn Stream>> = Dialog::new(Box::new(stream));
    d.cmd("EHLO client.test", "250").await;
    d
}

/// One message from `from` to every address of `to`, accepted.
async fn accepted(mut d: Dialog<Box<dyn Stream>>, from: &str, to: &[&str]) {
    d.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
    for t in to {
        d.cmd(&format!("RCPT TO:<{t}>"), "250").await;
    }
    d.cmd("DATA", "354").await;
    d.send(b"Subject: counted in the reports\r\n\r\nhello\r\n.\r\n")
        .await;
    d.expect("250", "end of DATA").await;
    d.cmd("QUIT", "221").await;
}

const TLS13: Option<&SupportedProtocolVersion> = Some(&rustls::version::TLS13);
const TLS12: Option<&SupportedProtocolVersion> = Some(&rustls::version::TLS12);

/// The mail of every test: four messages accepted and delivered, three refusals.
async fn send_the_mail(relay: SocketAddr) {
    let onprem = "127.0.0.10";
    let partner = "127.0.0.20";
    // Two recipients, one message: counted once each way.
    let s = session(relay, onprem, TLS13).await;
    accepted(
        s,
        "app@contoso.test",
        &["bob@contoso.test", "carol@contoso.test"],
    )
    .await;
    let s = session(relay, onprem, TLS12).await;
    accepted(s, "app@contoso.test", &["dave@contoso.test"]).await;
    let s = session(relay, onprem, None).await;
    accepted(s, "app@contoso.test", &["erin@fabrikam.test"]).await;
    let s = session(relay, partner, TLS13).await;
    accepted(s, "a@fabrikam.test", &["bob@contoso.test"]).await;

    // Refused: the partner in plaintext (RequireTls), the partner and an anonymous
    // client relaying (RelayWithoutOnPremisesAttribution).
    let mut s = session(relay, partner, None).await;
    s.cmd("MAIL FROM:<a@fabrikam.test>", "451 5.7.3").await;
    let mut s = session(relay, partner, TLS13).await;
    s.cmd("MAIL FROM:<a@fabrikam.test>", "250").await;
    s.cmd("RCPT TO:<x@example.test>", "550 5.7.64").await;
    let mut s = session(relay, "127.0.0.30", None).await;
    s.cmd("MAIL FROM:<a@internet.test>", "250").await;
    s.cmd("RCPT TO:<y@example.test>", "550 5.7.64").await;
}

/// The relay of [`config_text`] with its two smart hosts: the on-premises one offers TLS,
/// fabrikam's does not.
struct Lab {
    relay: connector_relay::relay::RelayHandle,
    token: String,
    admin: SocketAddr,
    config: std::path::PathBuf,
    onprem: Sink,
    fabrikam: Sink,
    _dir: tempfile::TempDir,
}

async fn lab() -> Lab {
    let onprem = start_sink_with("127.0.0.1:0".parse().unwrap(), true, None).await;
    let fabrikam = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let text = config_text(dir.path(), onprem.addr(), fabrikam.addr());
    std::fs::write(&config, text).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");
    Lab {
        relay,
        token,
        admin,
        config,
        onprem,
        fabrikam,
        _dir: dir,
    }
}

async fn reports(lab: &Lab, query: &str) -> support::http::Resp {
    let path = format!("/api/reports{query}");
    http(lab.admin, "GET", &path, Some(&lab.token), None).await
}

/// Waits until the trace holds every row of [`send_the_mail`] (the writer batches) and
/// the sinks have the messages; the report of the last 24 hours.
async fn report_of_the_mail(lab: &Lab) -> Value {
    assert_eq!(wait_messages(lab.onprem.maildir(), 3, WAIT).await.len(), 3);
    assert_eq!(
        wait_messages(lab.fabrikam.maildir(), 1, WAIT).await.len(),
        1
    );
    until("every trace row in the report", || async {
        let r = reports(lab, "?since=24h").await.json();
        let done = r["Directions"][1]["Total"] == 4 && r["RefusalsTotal"] == 3;
        done.then_some(r)
    })
    .await
}

/// `[name, count]` pairs of a list of JSON objects.
fn pairs(list: &Value, name: &str, count: &str) -> Vec<(String, u64)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v[name].as_str().unwrap().to_string(),
                v[count].as_u64().unwrap(),
            )
        })
        .collect()
}

fn owned(list: &[(&str, u64)]) -> Vec<(String, u64)> {
    list.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

const INBOUND: [(&str, u64); 2] = [("From on-premises", 3), ("Partner fabrikam", 1)];
const OUTBOUND: [(&str, u64); 2] = [("To on-premises", 3), ("To fabrikam", 1)];
const TLS_IN: [(&str, u64); 3] = [("TLSv1.3", 2), ("TLSv1.2", 1), ("None", 1)];
const TLS_OUT: [(&str, u64); 3] = [("TLSv1.3", 3), ("TLSv1.2", 0), ("None", 1)];
const RULES: [(&str, u64); 2] = [("RelayWithoutOnPremisesAttribution", 2), ("RequireTls", 1)];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_and_the_command_report_the_mail() {
    let lab = lab().await;

    // Parameters: checked, named when wrong; the token is required.
    let open = http(lab.admin, "GET", "/api/reports", None, None).await;
    assert_eq!(open.status, 401);
    for (query, key) in [
        ("?since=yesterday", "since"),
        ("?since=1h&until=2h", "since"),
        ("?bucket=1s", "bucket"),
        ("?since=30d&bucket=1m", "bucket"),
        ("?top=0", "top"),
        ("?top=many", "query"),
    ] {
        let r = reports(&lab, query).await;
        assert_eq!(r.status, 400, "{query}: {}", r.body);
        assert_eq!(r.json()["key"], key, "{query}: {}", r.body);
    }
    // Nothing yet: a whole report of zeros, 7 days in 6-hour buckets by default.
    let r = reports(&lab, "").await.json();
    assert_eq!(r["Bucket"], "6h", "{r}");
    assert!(r["Buckets"].as_array().unwrap().len() >= 28, "{r}");
    assert_eq!(r["Directions"][0]["Total"], 0);
    assert_eq!(r["Directions"][0]["TlsShare"], Value::Null);
    assert_eq!(r["Refusals"], json!([]));

    send_the_mail(lab.relay.smtp_addrs[0]).await;
    let r = report_of_the_mail(&lab).await;
    assert_eq!(r["Bucket"], "1h", "24 hours in hours");
    let (inbound, outbound) = (&r["Directions"][0], &r["Directions"][1]);
    assert_eq!(inbound["Direction"], "Inbound");
    assert_eq!(inbound["Total"], 4, "{r}");
    assert_eq!(
        pairs(&inbound["Connectors"], "Connector", "Total"),
        owned(&INBOUND)
    );
    assert_eq!(pairs(&inbound["Tls"], "Version", "Count"), owned(&TLS_IN));
    assert_eq!(inbound["TlsShare"], 0.75);
    assert_eq!(outbound["Total"], 4, "{r}");
    assert_eq!(
        pairs(&outbound["Connectors"], "Connector", "Total"),
        owned(&OUTBOUND)
    );
    assert_eq!(pairs(&outbound["Tls"], "Version", "Count"), owned(&TLS_OUT));
    assert_eq!(pairs(&r["Refusals"], "Rule", "Count"), owned(&RULES));
    let per_bucket: u64 = inbound["Counts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_u64().unwrap())
        .sum();
    assert_eq!(per_bucket, 4, "the buckets add up");
    // top=1: the busiest connector, then the other one summed.
    let r1 = reports(&lab, "?since=24h&top=1").await.json();
    assert_eq!(
        pairs(&r1["Directions"][1]["Connectors"], "Connector", "Total"),
        owned(&[("To on-premises", 3), ("Other (1 connectors)", 1)])
    );

    // The command reads the same store while the relay runs: the same numbers.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
        .args(["report", "--since", "24h", "--config"])
        .arg(&lab.config)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Inbound    From on-premises  3",
        "Inbound    Partner fabrikam  1",
        "Outbound   To on-premises    3",
        "Outbound   To fabrikam       1",
        "Inbound    2        1        1     75%",
        "Outbound   3        0        1     75%",
        "RelayWithoutOnPremisesAttribution  2",
        "RequireTls                         1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line:?} in\n{text}");
    }
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
        .args(["report", "--bucket", "1s", "--config"])
        .arg(&lab.config)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--bucket: must be at least 1m"));
    lab.relay.shutdown(Duration::from_secs(5)).await;
}

/// What the page drew, read back from the data attributes of the marks.
const READ_CHARTS: &str = r##"
const all = (sel) => [...document.querySelectorAll(sel)];
const sum = (sel, key) => {
  const out = {};
  for (const e of all(sel)) out[e.dataset[key]] = (out[e.dataset[key]] || 0) + Number(e.dataset.count);
  return out;
};
const legend = (id) => Object.fromEntries(all(id + " .legend li").map((li) => [li.dataset.series, Number(li.dataset.total)]));
return {
  tiles: Object.fromEntries(all("#report-tiles .tile").map((t) => [t.dataset.key, t.dataset.value])),
  traffic: sum("#chart-traffic rect.bar", "series"),
  inbound: sum("#chart-inbound rect.bar", "series"),
  inboundLegend: legend("#chart-inbound"),
  outbound: sum("#chart-outbound rect.bar", "series"),
  tlsIn: sum("#chart-tls-inbound circle.slice", "version"),
  tlsOut: sum("#chart-tls-outbound circle.slice", "version"),
  shareIn: all("#chart-tls-inbound text.share").map((t) => t.dataset.share),
  refusals: sum("#chart-refusals rect.bar", "rule"),
  empty: all("#reports-view .empty").map((p) => p.textContent),
  titles: all("#reports-view svg title").map((t) => t.textContent),
  axes: all("#reports-view svg text").map((t) => t.textContent),
};
"##;

async fn charts(c: &fantoccini::Client) -> Value {
    c.execute(READ_CHARTS, vec![]).await.unwrap()
}

/// Waits until the Reports view has drawn the period `since`.
async fn drawn(c: &fantoccini::Client, since: &str) {
    until("the Reports view drawn", || async move {
        let loaded = c
            .execute(
                "return document.querySelector('#reports-view').dataset.loaded || ''",
                vec![],
            )
            .await
            .unwrap();
        (loaded == since).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reports_view_charts_the_mail() {
    let lab = lab().await;
    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    async {
        sign_in(&c, lab.admin, &lab.token).await;

        // Before any mail: every chart says so, the tiles are zero.
        click(&c, "#tabs button[data-tab='reports']").await;
        drawn(&c, "7d").await;
        let empty = charts(&c).await;
        assert_eq!(empty["tiles"]["inbound"], "0", "{empty}");
        assert_eq!(empty["tiles"]["tls-inbound"], "-", "{empty}");
        for want in ["No mail in this period.", "No messages accepted in this period.", "No refusals in this period."] {
            assert!(empty["empty"].as_array().unwrap().iter().any(|e| e == want), "{want:?}: {empty}");
        }

        send_the_mail(lab.relay.smtp_addrs[0]).await;
        let api = report_of_the_mail(&lab).await;
        click(&c, "#report-period button[data-since='24h']").await;
        drawn(&c, "24h").await;
        let got = charts(&c).await;
        assert_eq!(got["empty"], json!([]), "{got}");
        assert_eq!(
            got["tiles"],
            json!({"inbound": "4", "outbound": "4", "refusals": "3", "tls-inbound": "75%", "tls-outbound": "75%"})
        );
        assert_eq!(got["traffic"], json!({"Inbound": 4, "Outbound": 4}));
        assert_eq!(got["inbound"], json!({"From on-premises": 3, "Partner fabrikam": 1}));
        assert_eq!(got["inboundLegend"], got["inbound"], "the legend gives the totals");
        assert_eq!(got["outbound"], json!({"To on-premises": 3, "To fabrikam": 1}));
        assert_eq!(got["tlsIn"], json!({"TLSv1.3": 2, "TLSv1.2": 1, "None": 1}));
        assert_eq!(got["tlsOut"], json!({"TLSv1.3": 3, "None": 1}));
        assert_eq!(got["shareIn"], json!(["75"]));
        assert_eq!(got["refusals"], json!({"RelayWithoutOnPremisesAttribution": 2, "RequireTls": 1}));
        // The page draws the API's numbers: the inbound series per connector.
        for s in api["Directions"][0]["Connectors"].as_array().unwrap() {
            let name = s["Connector"].as_str().unwrap();
            assert_eq!(got["inbound"][name], s["Total"], "{name}");
        }
        // Tooltips and axes with units.
        let titles = got["titles"].as_array().unwrap();
        for want in ["RequireTls: 1 refusal", "TLS 1.2: 1 of 4 messages (25%)", "From on-premises, "] {
            assert!(titles.iter().any(|t| t.as_str().unwrap().contains(want)), "{want:?} in {titles:?}");
        }
        let axes = got["axes"].as_array().unwrap();
        for want in ["messages per hour", "time (UTC)", "refusals (Rejected trace rows)", "under TLS"] {
            assert!(axes.iter().any(|t| t == want), "{want:?} in {axes:?}");
        }

        // The whole view in the screenshot.
        c.set_window_size(1400, 1600).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        click(&c, "#report-refresh").await;
        drawn(&c, "24h").await;
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-reports.png");
    }
    .await;
    c.close().await.unwrap();
    lab.relay.shutdown(Duration::from_secs(5)).await;
}
