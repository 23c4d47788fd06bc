//! The admin API and live reload, over real sockets: a hand-written HTTP/1.1 client (no
//! HTTP client crate in the tree) against the relay's admin listener, real SMTP sessions
//! from distinct 127.0.0.x addresses, and a config file in a temp dir that the API rewrites
//! (comments kept) and the relay reloads when it changes on disk or on SIGHUP.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use connector_relay::relay::{RelayHandle, ReloadError};
use serde_json::{Value, json};
use support::http::{Resp, http, start_relay_from_file, until};
use support::*;

const WAIT: Duration = Duration::from_secs(30);

// ---- set-up -----------------------------------------------------------------------------

/// The test config: comments on purpose (they must survive API changes). Retries are an
/// hour apart, so a retry in the queue test happens only when asked for.
fn config_text(dir: &Path, onprem: SocketAddr, fabrikam: SocketAddr) -> String {
    format!(
        r#"# connector-relay admin API test
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"
TransientFailureRetryInterval = "01:00:00"
MaxRetryInterval = "01:00:00"

# the on-premises servers may relay anywhere
[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"] # the Exchange server

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{onprem}"]

# Fabrikam's gateway
[[OutboundConnector]]
Name = "To Fabrikam"
RecipientDomains = ["fabrikam.test"]
UseMXRecord = false
SmartHosts = ["{fabrikam}"]
"#,
        dir = dir.display()
    )
}

struct Lab {
    relay: RelayHandle,
    dir: tempfile::TempDir,
    config: PathBuf,
    token: String,
    admin: SocketAddr,
    smtp: SocketAddr,
}

impl Lab {
    async fn get(&self, path: &str) -> Resp {
        http(self.admin, "GET", path, Some(&self.token), None).await
    }
    async fn send(&self, method: &str, path: &str, body: Option<Value>) -> Resp {
        http(self.admin, method, path, Some(&self.token), body.as_ref()).await
    }
    fn file(&self) -> String {
        std::fs::read_to_string(&self.config).unwrap()
    }
    async fn connector(&self, name: &str) -> Value {
        let list = self.get("/api/exchange/connectors").await.json();
        list.as_array()
            .unwrap()
            .iter()
            .find(|c| c["Name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
            .clone()
    }
}

async fn start_lab(onprem: SocketAddr, fabrikam: SocketAddr) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, config_text(dir.path(), onprem, fabrikam)).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    Lab {
        admin: relay.admin_addr.expect("admin listener"),
        smtp: relay.smtp_addrs[0],
        relay,
        dir,
        config,
        token,
    }
}

/// A port nothing listens on: delivery there fails with "connection refused".
fn down_host() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

/// A session from `from` that asks to relay to fabrikam.test: the RCPT reply.
async fn relay_attempt(smtp: SocketAddr, from: &str) -> String {
    let mut d = Dialog::connect_from(ip(from), smtp).await;
    d.cmd("EHLO app.contoso.test", "250").await;
    d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    d.send(b"RCPT TO:<someone@fabrikam.test>\r\n").await;
    let reply = d.read_reply().await;
    d.send(b"QUIT\r\n").await;
    reply
}

// ---- tests ------------------------------------------------------------------------------

#[tokio::test]
async fn requests_without_the_token_get_401() {
    let sink = start_sink().await;
    let lab = start_lab(sink.addr(), sink.addr()).await;
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(lab.dir.path().join("admin.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "token file mode");
    assert_eq!(lab.token.len(), 64, "32 random bytes as hex");

    for path in [
        "/api/exchange/connectors",
        "/api/queue",
        "/api/status",
        "/nowhere",
    ] {
        let r = http(lab.admin, "GET", path, None, None).await;
        assert_eq!(r.status, 401, "{path} without a token");
        assert!(
            r.headers
                .to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{}",
            r.headers
        );
        assert!(r.json()["error"].as_str().unwrap().contains("token"));
        let r = http(lab.admin, "GET", path, Some("0123abcd"), None).await;
        assert_eq!(r.status, 401, "{path} with a wrong token");
        assert!(
            !r.body.contains(&lab.token),
            "the answer never shows the token"
        );
    }
    let r = http(
        lab.admin,
        "PUT",
        "/api/exchange/connectors/From%20on-premises/status",
        Some(&lab.token[..63]),
        Some(&json!({"Enabled": false})),
    )
    .await;
    assert_eq!(r.status, 401, "a token one character short");
    assert!(lab.file().contains("Name = \"From on-premises\""));
    assert!(!lab.file().contains("Enabled"), "nothing changed");

    assert_eq!(lab.get("/api/exchange/connectors").await.status, 200);
    assert_eq!(lab.get("/nowhere").await.status, 404);
    lab.relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn disabling_a_connector_applies_to_new_sessions_only() {
    let onprem = start_sink().await;
    let fabrikam = start_sink().await;
    let lab = start_lab(onprem.addr(), fabrikam.addr()).await;

    let list = lab.get("/api/exchange/connectors").await.json();
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["From on-premises", "To on-premises", "To Fabrikam"]);
    let c = lab.connector("From on-premises").await;
    assert_eq!(c["Direction"], "Inbound");
    assert_eq!(
        c["Enabled"], true,
        "explicit although the file leaves it out"
    );
    assert_eq!(c["ConnectorType"], "OnPremises");
    assert_eq!(c["SenderIPAddresses"], json!(["127.0.0.10/32"]));
    assert_eq!(c["Scenario"], "OnPremises");
    assert_eq!(c["SenderSummary"], "127.0.0.10/32");
    let id = c["Identity"].as_str().unwrap().to_string();
    assert!(id.starts_with("in-"), "{id}");
    assert_eq!(lab.connector("To Fabrikam").await["Scenario"], "Partner");

    // A session opened before the change: attributed to the OnPremises connector.
    let mut before = Dialog::connect_from(ip("127.0.0.10"), lab.smtp).await;
    before.cmd("EHLO exchange.contoso.test", "250").await;
    before.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    before.cmd("RCPT TO:<first@fabrikam.test>", "250").await;

    // whatIf: the answer says what would change; the file does not.
    let original = lab.file();
    let r = lab
        .send(
            "PUT",
            &format!("/api/exchange/connectors/{id}/status?whatIf=true"),
            Some(json!({"Enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["WhatIf"], true);
    assert_eq!(a["Live"], false);
    assert_eq!(
        a["Changes"],
        json!([{"Key": "Enabled", "Old": null, "New": false}])
    );
    assert!(
        a["Diff"]
            .as_array()
            .unwrap()
            .contains(&json!("+Enabled = false")),
        "{a}"
    );
    assert_eq!(lab.file(), original, "whatIf wrote the file");
    assert_eq!(relay_attempt(lab.smtp, "127.0.0.10").await[..3], *"250");

    // The change: written with the comments kept, and live at once.
    let r = lab
        .send(
            "PUT",
            &format!("/api/exchange/connectors/{id}/status"),
            Some(json!({"Enabled": false})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(a["Live"], true);
    assert_eq!(a["Connector"]["Enabled"], false);
    let text = lab.file();
    for kept in [
        "# connector-relay admin API test\n",
        "# the on-premises servers may relay anywhere\n",
        "SenderIPAddresses = [\"127.0.0.10/32\"] # the Exchange server\n",
        "# Fabrikam's gateway\n",
    ] {
        assert!(text.contains(kept), "lost {kept:?}:\n{text}");
    }
    assert!(text.contains("Enabled = false"), "{text}");
    assert_eq!(lab.connector("From on-premises").await["Enabled"], false);

    // A new session from the same IP: as if the connector did not exist.
    let reply = relay_attempt(lab.smtp, "127.0.0.10").await;
    assert!(reply.starts_with("550 5.7.64"), "{reply}");

    // The session opened before keeps its setup and completes its transaction.
    before.cmd("RCPT TO:<second@fabrikam.test>", "250").await;
    before.cmd("DATA", "354").await;
    before
        .send(b"Subject: before the change\r\n\r\nStill relayed.\r\n.\r\n")
        .await;
    before.expect("250", "end of DATA").await;
    before.cmd("QUIT", "221").await;
    let got = wait_messages(fabrikam.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1, "the message of the older session was relayed");
    assert!(got[0].contains("Subject: before the change"));

    // Enabled again (by URL-encoded Name this time).
    let r = lab
        .send(
            "PUT",
            "/api/exchange/connectors/From%20on-premises/status",
            Some(json!({"Enabled": true})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(lab.file().contains("Enabled = true"));
    assert_eq!(relay_attempt(lab.smtp, "127.0.0.10").await[..3], *"250");
    lab.relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn invalid_changes_are_refused_and_connectors_can_be_created() {
    let sink = start_sink().await;
    let lab = start_lab(sink.addr(), sink.addr()).await;
    let original = lab.file();

    // A bad CIDR: 400 with the key and the sentence, the file untouched.
    let r = lab
        .send(
            "PUT",
            "/api/exchange/connectors/From%20on-premises",
            Some(json!({"SenderIPAddresses": ["127.0.0.300/33"]})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let a = r.json();
    assert_eq!(a["key"], "SenderIPAddresses", "{a}");
    let sentence = a["error"].as_str().unwrap();
    assert!(sentence.contains("127.0.0.300/33"), "{sentence}");
    assert!(!a["errors"].as_array().unwrap().is_empty());
    assert_eq!(lab.file(), original, "a refused change wrote the file");
    assert_eq!(relay_attempt(lab.smtp, "127.0.0.10").await[..3], *"250");

    // Rules between keys too (UseMXRecord = false needs SmartHosts).
    let r = lab
        .send(
            "PUT",
            "/api/exchange/connectors/To%20Fabrikam",
            Some(json!({"SmartHosts": null})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(lab.file(), original);

    // Unknown connectors and bodies that are not connector keys.
    let r = lab
        .send(
            "PUT",
            "/api/exchange/connectors/nobody",
            Some(json!({"Enabled": false})),
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = lab
        .send(
            "PUT",
            "/api/exchange/connectors/From%20on-premises/status",
            Some(json!({"Enabled": "no"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["key"], "Enabled");
    let r = lab
        .send(
            "POST",
            "/api/exchange/connectors",
            Some(json!({"Name": "No direction"})),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["key"], "Direction");

    // Create: 127.0.0.11 may not relay before, may relay once the connector exists.
    assert!(
        relay_attempt(lab.smtp, "127.0.0.11")
            .await
            .starts_with("550 5.7.64")
    );
    let new = json!({
        "Direction": "Inbound",
        "Name": "Second server",
        "ConnectorType": "OnPremises",
        "SenderIPAddresses": ["127.0.0.11"],
        "Comment": "added by the API test",
    });
    let r = lab
        .send(
            "POST",
            "/api/exchange/connectors?whatIf=true",
            Some(new.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Connector"]["Scenario"], "OnPremises");
    assert_eq!(lab.file(), original, "whatIf created the connector");
    let r = lab
        .send("POST", "/api/exchange/connectors", Some(new.clone()))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let a = r.json();
    assert_eq!(a["Live"], true);
    assert_eq!(a["Connector"]["Name"], "Second server");
    let text = lab.file();
    for line in original.lines() {
        assert!(text.contains(line), "lost {line:?}:\n{text}");
    }
    assert!(
        text.contains(
            "[[InboundConnector]]\nName = \"Second server\"\nConnectorType = \"OnPremises\""
        ),
        "{text}"
    );
    assert_eq!(relay_attempt(lab.smtp, "127.0.0.11").await[..3], *"250");
    let r = lab
        .send("POST", "/api/exchange/connectors", Some(new))
        .await;
    assert_eq!(r.status, 400, "a second one with the same name");
    assert_eq!(r.json()["key"], "Name");

    // null removes a key.
    let id = a["Connector"]["Identity"].as_str().unwrap().to_string();
    let r = lab
        .send(
            "PUT",
            &format!("/api/exchange/connectors/{id}"),
            Some(json!({"Comment": null})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["Changes"],
        json!([{"Key": "Comment", "Old": "added by the API test", "New": null}])
    );
    assert!(!lab.file().contains("added by the API test"));
    lab.relay.shutdown(Duration::from_secs(5)).await;
}

/// DELETE removes a connector's table (whatIf first), live, comments elsewhere kept; it is
/// refused with a sentence when what is left would be invalid. An array POST creates
/// connectors together or not at all (the page's email security gateway pair).
#[tokio::test]
async fn connectors_are_deleted_and_created_together() {
    let sink = start_sink().await;
    let lab = start_lab(sink.addr(), sink.addr()).await;
    let original = lab.file();

    // whatIf: the lines that would go, nothing written or applied.
    let fabrikam = lab.connector("To Fabrikam").await["Identity"]
        .as_str()
        .unwrap()
        .to_string();
    let path = format!("/api/exchange/connectors/{fabrikam}");
    let r = lab
        .send("DELETE", &format!("{path}?whatIf=true"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let a = r.json();
    assert_eq!(
        (a["WhatIf"].clone(), a["Live"].clone()),
        (json!(true), json!(false))
    );
    assert_eq!(a["Removed"]["Name"], "To Fabrikam", "{a}");
    let diff: Vec<&str> = a["Diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    for line in [
        "-# Fabrikam's gateway",
        "-[[OutboundConnector]]",
        "-Name = \"To Fabrikam\"",
    ] {
        assert!(diff.contains(&line), "{line:?} in {diff:?}");
    }
    assert!(diff.iter().all(|l| !l.starts_with('+')), "{diff:?}");
    assert_eq!(lab.file(), original, "whatIf wrote");
    assert_eq!(lab.get(&path).await.status, 200, "whatIf removed it");

    // For real, an inbound connector by its name: the next session is no longer its.
    assert_eq!(relay_attempt(lab.smtp, "127.0.0.10").await[..3], *"250");
    let r = lab
        .send(
            "DELETE",
            "/api/exchange/connectors/From%20on-premises",
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["Live"], true);
    let file = lab.file();
    assert!(!file.contains("From on-premises"), "{file}");
    assert!(
        !file.contains("# the Exchange server"),
        "its own comments go: {file}"
    );
    for kept in [
        "# connector-relay admin API test",
        "# Fabrikam's gateway",
        "Name = \"To on-premises\"",
    ] {
        assert!(file.contains(kept), "{kept:?} kept: {file}");
    }
    assert!(
        relay_attempt(lab.smtp, "127.0.0.10")
            .await
            .starts_with("550 5.7.64"),
        "the removal is live"
    );
    let r = lab
        .send(
            "DELETE",
            "/api/exchange/connectors/From%20on-premises",
            None,
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let anonymous = http(lab.admin, "DELETE", &path, None, None).await;
    assert_eq!(anonymous.status, 401);

    // Two connectors in one change; a bad value in the second refuses both, with its index.
    let inbound = json!({"Direction": "Inbound", "Name": "From Gateway", "ConnectorType": "Partner",
        "SenderDomains": ["*"], "SenderIPAddresses": ["127.0.0.30"],
        "RestrictDomainsToIPAddresses": true, "RequireTls": true});
    let outbound = |hosts: Value| {
        json!({"Direction": "Outbound", "Name": "To Gateway",
        "RecipientDomains": ["*"], "UseMXRecord": false, "SmartHosts": hosts})
    };
    let before = lab.file();
    let bad = json!([inbound.clone(), outbound(json!(["bad host!"]))]);
    let r = lab
        .send("POST", "/api/exchange/connectors", Some(bad))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    let a = r.json();
    assert_eq!(
        (a["index"].clone(), a["key"].clone()),
        (json!(1), json!("SmartHosts")),
        "{a}"
    );
    assert_eq!(lab.file(), before, "neither was written");
    let r = lab
        .send(
            "POST",
            "/api/exchange/connectors",
            Some(json!([{"Name": "x"}])),
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        (r.json()["index"].clone(), r.json()["key"].clone()),
        (json!(0), json!("Direction"))
    );

    let pair = json!([inbound, outbound(json!(["127.0.0.31:2525"]))]);
    let r = lab
        .send(
            "POST",
            "/api/exchange/connectors?whatIf=true",
            Some(pair.clone()),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["Connectors"][1]["RecipientSummary"],
        "* via 127.0.0.31:2525"
    );
    assert_eq!(lab.file(), before, "whatIf wrote");
    let r = lab
        .send("POST", "/api/exchange/connectors", Some(pair))
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let a = r.json();
    assert_eq!(a["Live"], true);
    assert_eq!(a["Connectors"][0]["Name"], "From Gateway", "{a}");
    assert_eq!(a["Connectors"][1]["Name"], "To Gateway", "{a}");
    assert_eq!(
        lab.connector("From Gateway").await["RestrictDomainsToIPAddresses"],
        true
    );
    assert_eq!(lab.connector("To Gateway").await["Scenario"], "Internet");

    // A file made invalid on disk meanwhile: the removal would leave it invalid, so it is
    // refused (409) with a sentence, and nothing changes.
    let broken = lab.file().replace("[Relay]\n", "[Relay]\nNoSuchKey = 1\n");
    std::fs::write(&lab.config, &broken).unwrap();
    let r = lab
        .send("DELETE", "/api/exchange/connectors/To%20Gateway", None)
        .await;
    assert_eq!(r.status, 409, "{}", r.body);
    let a = r.json();
    assert_eq!(a["key"], "NoSuchKey", "{a}");
    let sentence = a["error"].as_str().unwrap();
    assert!(
        sentence.starts_with("OutboundConnector \"To Gateway\" was not removed: without it the configuration would be invalid (")
            && sentence.contains("NoSuchKey: unknown key"),
        "{sentence}"
    );
    assert_eq!(lab.file(), broken);
    assert_eq!(lab.connector("To Gateway").await["Name"], "To Gateway");
    lab.relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn queue_view_retry_and_delete() {
    let onprem = start_sink().await;
    let lab = start_lab(onprem.addr(), down_host()).await;

    let mut d = Dialog::connect_from(ip("127.0.0.10"), lab.smtp).await;
    d.cmd("EHLO exchange.contoso.test", "250").await;
    d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    d.cmd("RCPT TO:<someone@fabrikam.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(b"Subject: to a host that is down\r\n\r\nWaiting.\r\n.\r\n")
        .await;
    d.expect("250", "end of DATA").await;
    d.cmd("QUIT", "221").await;

    // The first attempt fails; the message waits an hour for the next one.
    let l = &lab;
    let msg = until("the deferred message in GET /api/queue", || async move {
        let q = l.get("/api/queue").await.json();
        (q[0]["Status"] == "Retry").then(|| q[0].clone())
    })
    .await;
    assert_eq!(msg["FromAddress"], "app@contoso.test");
    assert_eq!(msg["RetryCount"], 1);
    assert_eq!(msg["InboundConnector"], "From on-premises");
    let rcpt = &msg["Recipients"][0];
    assert_eq!(rcpt["Address"], "someone@fabrikam.test");
    assert_eq!(rcpt["Status"], "Pending");
    assert!(rcpt["LastError"].as_str().is_some(), "{msg}");
    assert!(msg["NextRetryTime"].as_str().unwrap().ends_with('Z'));
    let id = msg["Identity"].as_str().unwrap().to_string();

    // Retry now: a second attempt happens at once, not in an hour.
    let r = lab
        .send("POST", &format!("/api/queue/{id}/retry"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    until("the second attempt", || async move {
        let q = l.get("/api/queue").await.json();
        (q[0]["RetryCount"] == 2 && q[0]["Status"] == "Retry").then_some(())
    })
    .await;
    let r = lab.send("POST", "/api/queue/NOSUCHID/retry", None).await;
    assert_eq!(r.status, 404);

    // Delete: gone from the queue and the spool, and no DSN to the sender.
    let r = lab.send("DELETE", &format!("/api/queue/{id}"), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["NdrSent"], false);
    assert_eq!(lab.get("/api/queue").await.json(), json!([]));
    let spooled: Vec<_> = std::fs::read_dir(lab.dir.path().join("spool/msg"))
        .unwrap()
        .collect();
    assert!(spooled.is_empty(), "still in the spool: {spooled:?}");
    let r = lab.send("DELETE", &format!("/api/queue/{id}"), None).await;
    assert_eq!(r.status, 404);
    let status = lab.get("/api/status").await.json();
    assert_eq!(status["Queue"]["Depth"], 0, "{status}");
    assert!(
        messages(onprem.maildir()).is_empty(),
        "a DSN was sent for a deleted message"
    );
    lab.relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn metrics_on_loopback_need_no_token_and_certificates_are_watched() {
    // Started from a policy without a file: listing works, changes cannot be saved.
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let extra = format!(
        "Certificates = [{{ Certificate = \"{}\", PrivateKey = \"{}\" }}]",
        certs("expired.crt"),
        certs("expired.key")
    );
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), &extra), None).await;
    let admin = relay.admin_addr.unwrap();
    let token = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
    let token = token.trim();

    let r = http(admin, "GET", "/metrics", None, None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.headers.contains("text/plain"), "{}", r.headers);
    for gauge in [
        "connector_relay_sessions_in_progress",
        "connector_relay_queue_depth",
        "connector_relay_queue_oldest_age_seconds",
        "connector_relay_certificate_days_to_expiry{",
    ] {
        assert!(r.body.contains(gauge), "{gauge} missing:\n{}", r.body);
    }
    let expired = r
        .body
        .lines()
        .find(|l| {
            l.starts_with("connector_relay_certificate_days_to_expiry{")
                && l.contains("expired.crt")
        })
        .unwrap_or_else(|| panic!("no gauge for expired.crt:\n{}", r.body));
    let days: f64 = expired.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(days < 0.0, "{expired}");

    let status = http(admin, "GET", "/api/status", Some(token), None)
        .await
        .json();
    let certs = status["Certificates"].as_array().unwrap();
    let e = certs
        .iter()
        .find(|c| c["File"].as_str().unwrap().ends_with("expired.crt"))
        .unwrap();
    assert_eq!(e["ExpiringSoon"], true);
    assert_eq!(e["Key"], "Certificates");
    assert!(
        e["Subject"]
            .as_str()
            .unwrap()
            .contains("mail.fabrikam.test")
    );
    assert_eq!(status["ConfigFile"], Value::Null);

    let list = http(admin, "GET", "/api/exchange/connectors", Some(token), None)
        .await
        .json();
    assert_eq!(list[0]["Name"], "From on-premises");
    let r = http(
        admin,
        "PUT",
        "/api/exchange/connectors/From%20on-premises/status",
        Some(token),
        Some(&json!({"Enabled": false})),
    )
    .await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(matches!(
        relay.reload().await,
        Err(ReloadError::NoConfigFile)
    ));
    relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn file_changes_are_picked_up_and_invalid_files_refused() {
    let sink = start_sink().await;
    let lab = start_lab(sink.addr(), sink.addr()).await;
    let original = lab.file();
    assert!(
        relay_attempt(lab.smtp, "127.0.0.11")
            .await
            .starts_with("550 5.7.64")
    );

    // An editor changes the file: the poll applies it.
    let widened = original.replace(
        "[\"127.0.0.10/32\"]",
        "[\"127.0.0.10/32\", \"127.0.0.11/32\"]",
    );
    std::fs::write(&lab.config, &widened).unwrap();
    let smtp = lab.smtp;
    until("the edited file to be applied", || async move {
        relay_attempt(smtp, "127.0.0.11")
            .await
            .starts_with("250")
            .then_some(())
    })
    .await;
    let status = lab.get("/api/status").await.json();
    assert_eq!(status["LastReload"]["Trigger"], "file change", "{status}");
    assert_eq!(status["LastReload"]["Ok"], true);

    // An invalid file is refused with file:line errors; the running policy stays.
    let broken = widened.replace("127.0.0.11/32", "127.0.0.300/32");
    std::fs::write(&lab.config, &broken).unwrap();
    let l = &lab;
    until("the broken file to be refused", || async move {
        let s = l.get("/api/status").await.json();
        (s["LastReload"]["Ok"] == false).then_some(())
    })
    .await;
    let status = lab.get("/api/status").await.json();
    let errors = status["LastReload"]["Errors"].to_string();
    assert!(
        errors.contains("relay.toml:17: SenderIPAddresses"),
        "{errors}"
    );
    assert_eq!(relay_attempt(lab.smtp, "127.0.0.11").await[..3], *"250");
    match lab.relay.reload().await {
        Err(ReloadError::Invalid(e)) => assert_eq!(e[0].line, 17, "{e:?}"),
        other => panic!("the broken file was not refused: {other:?}"),
    }
    assert_eq!(
        lab.connector("From on-premises").await["SenderIPAddresses"],
        json!(["127.0.0.10/32", "127.0.0.11/32"]),
        "the list shows the configuration in effect"
    );

    // What cannot change live is kept, with the reason; the rest applies.
    let moved = widened.replace("Listen = [\"127.0.0.1:0\"]", "Listen = [\"127.0.0.1:1\"]");
    std::fs::write(&lab.config, moved).unwrap();
    let done = lab.relay.reload().await.expect("valid file");
    assert_eq!(done.restart_needed, ["Listen"]);
    let running: SocketAddr = "127.0.0.1:0".parse().unwrap();
    assert_eq!(
        lab.relay.policy().relay.listen,
        [running],
        "the running value"
    );
    assert_eq!(relay_attempt(lab.smtp, "127.0.0.11").await[..3], *"250");
    lab.relay.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sighup_reloads_the_running_binary_and_the_token_stays_out_of_logs() {
    use std::io::BufRead;
    let sink = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let smtp_port = free_port();
    let admin_port = loop {
        let p = free_port();
        if p != smtp_port {
            break p;
        }
    };
    let text = config_text(dir.path(), sink.addr(), sink.addr())
        .replace(
            "Listen = [\"127.0.0.1:0\"]",
            &format!("Listen = [\"127.0.0.1:{smtp_port}\"]"),
        )
        .replace(
            "AdminListen = \"127.0.0.1:0\"",
            &format!("AdminListen = \"127.0.0.1:{admin_port}\""),
        );
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, text).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_connector-relay"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("relay binary starts");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    wait_listening(smtp_port).await;
    wait_listening(admin_port).await;
    let token = std::fs::read_to_string(dir.path().join("admin.token"))
        .unwrap()
        .trim()
        .to_string();
    let admin = SocketAddr::from(([127, 0, 0, 1], admin_port));
    let r = http(admin, "GET", "/api/exchange/connectors", Some(&token), None).await;
    assert_eq!(r.status, 200);
    let r = http(admin, "GET", "/api/queue", Some("wrong"), None).await;
    assert_eq!(r.status, 401);

    // SIGHUP without a change to the file: only the signal can have caused this reload.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + WAIT;
    while !log
        .iter()
        .any(|l: &String| l.contains("configuration reloaded") && l.contains("SIGHUP"))
    {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => log.push(line),
            Err(_) => panic!("no reload after SIGHUP:\n{}", log.join("\n")),
        }
    }
    let r = http(admin, "GET", "/api/status", Some(&token), None).await;
    assert_eq!(r.json()["Generation"], 2, "{}", r.body);

    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    reader.join().unwrap();
    log.extend(rx.try_iter());
    let all = log.join("\n");
    assert!(all.contains("admin API listening"), "{all}");
    assert!(!all.contains(&token), "the token appeared in the log");
}

#[tokio::test]
async fn trace_explain_and_validate_routes() {
    let onprem = start_sink().await;
    let lab = start_lab(onprem.addr(), down_host()).await;

    // One relayed message and one refused relay attempt, then both through GET /api/trace.
    let mut d = Dialog::connect_from(ip("127.0.0.10"), lab.smtp).await;
    d.cmd("EHLO exchange.contoso.test", "250").await;
    d.send_message(
        "traced@contoso.test",
        "bob@contoso.test",
        "Message-ID: <api-trace@contoso.test>\r\nSubject: t\r\n\r\nx",
    )
    .await;
    d.cmd("QUIT", "221").await;
    let reply = relay_attempt(lab.smtp, "127.0.0.77").await;
    assert!(reply.starts_with("550 5.7.64"), "{reply}");

    let l = &lab;
    let rows = until("Received and Delivered rows", || async move {
        let r = l
            .get("/api/trace?messageId=api-trace@contoso.test&since=1h&sender=&connector=")
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        let rows = r.json();
        let events: Vec<String> = rows
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["event"].as_str().unwrap().to_string())
            .collect();
        (events.contains(&"Received".to_string()) && events.contains(&"Delivered".to_string()))
            .then_some(rows)
    })
    .await;
    let received = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["event"] == "Received")
        .unwrap();
    assert_eq!(received["client_ip"], "127.0.0.10");
    assert_eq!(received["connector"], "From on-premises");
    assert_eq!(received["sender"], "traced@contoso.test");
    let rejected = until("the Rejected row", || async move {
        let rows = l.get("/api/trace?sender=app@contoso.test").await.json();
        rows.as_array()
            .unwrap()
            .iter()
            .find(|r| r["event"] == "Rejected")
            .cloned()
    })
    .await;
    assert_eq!(rejected["client_ip"], "127.0.0.77");
    assert!(
        rejected["reply"]
            .as_str()
            .unwrap()
            .starts_with("550 5.7.64"),
        "{rejected}"
    );
    let bad = lab.get("/api/trace?since=yesterday-ish").await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["key"], "since");
    let anonymous = http(lab.admin, "GET", "/api/trace", None, None).await;
    assert_eq!(anonymous.status, 401);

    // The explainer answers what the relay just did, without sending anything.
    let body = json!({"ClientIp": "127.0.0.77", "Sender": "app@contoso.test",
        "Recipients": ["someone@fabrikam.test", "bob@contoso.test"]});
    let r = lab.send("POST", "/api/explain", Some(body)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.json()["Text"].as_str().unwrap().to_string();
    assert!(
        text.contains(&reply),
        "the live reply {reply:?} in:\n{text}"
    );
    assert!(text.contains("To on-premises"), "{text}");
    let r = lab
        .send("POST", "/api/explain", Some(json!({"ClientIp": "nope"})))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["key"], "ClientIp");

    // Validation of the on-premises connector: the report, and the result recorded in the
    // file (comments kept) and live.
    let id = lab.connector("To on-premises").await["Identity"]
        .as_str()
        .unwrap()
        .to_string();
    let r = lab
        .send(
            "POST",
            &format!("/api/exchange/connectors/{id}/validate"),
            Some(json!({"Recipients": ["postmaster@contoso.test"]})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let report = r.json();
    assert_eq!(report["Success"], true, "{report}");
    assert_eq!(report["Recorded"], true, "{report}");
    let steps: Vec<&str> = report["Steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["Step"].as_str().unwrap())
        .collect();
    assert!(
        steps.contains(&"Route") && steps.contains(&"Reply"),
        "{steps:?}"
    );
    let file = lab.file();
    assert!(file.contains("IsValidated = true"), "{file}");
    assert!(file.contains("LastValidationTimestamp = "), "{file}");
    assert!(file.contains("# Fabrikam's gateway"), "{file}");
    assert_eq!(lab.connector("To on-premises").await["IsValidated"], true);
    // The validation message reached the on-premises sink.
    let got = wait_messages(onprem.maildir(), 2, WAIT).await;
    assert!(
        got.iter()
            .any(|m| m.contains("connector-relay validation of To on-premises")),
        "{got:?}"
    );

    // Inbound connectors are not validated by sending.
    let inbound = lab.connector("From on-premises").await["Identity"]
        .as_str()
        .unwrap()
        .to_string();
    let r = lab
        .send(
            "POST",
            &format!("/api/exchange/connectors/{inbound}/validate"),
            None,
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.json()["key"], "Direction");
    lab.relay.shutdown(Duration::from_secs(5)).await;
}
