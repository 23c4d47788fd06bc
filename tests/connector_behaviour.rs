//! Connector parameters that only unit tests covered (issue 19), over real sockets: a relay
//! started in-process from a config file (so the admin API can change it live), real SMTP
//! clients from distinct 127.0.0.x addresses, capture sinks and fake next hops behind smart
//! hosts, and a DNS server on loopback for the default MX route. Each test asserts what
//! arrives where, what the message trace says, or which exact reply refuses what.
//!
//! `Enabled`, `TestMode`, `IsTransportRuleScoped`, `RouteAllMessagesViaOnPremises`, and on
//! Send connectors `MaxMessageSize`, `ConnectionInactivityTimeOut` and
//! `SmartHostAuthMechanism = "ExternalAuthoritative"`.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use connector_relay::relay::RelayHandle;
use serde_json::{Value, json};
use support::dns::TestDns;
use support::downstream::{Downstream, Mode};
use support::http::{Resp, http, start_relay_from_file_with_dns, until};
use support::*;

/// Bound on every wait for something that should happen within a second or two.
const WAIT: Duration = Duration::from_secs(30);

// ---- set-up -----------------------------------------------------------------------------

/// The on-premises servers' address: mail from it is the organization's own (OnPremises
/// attribution, may relay anywhere); any other 127.0.0.x is the outside world.
const ON_PREMISES: &str = "127.0.0.10";
const OUTSIDE: &str = "127.0.0.77";

/// The relay config: contoso.test and cloud.contoso.test accepted, the on-premises servers
/// as an OnPremises inbound connector (with `CloudServicesMailEnabled`, so organization
/// headers they send survive the way in and only the outbound route decides about them),
/// `relay_extra` in `[Relay]`, then `connectors`. Retries are 1-2 s apart.
fn config_text(dir: &std::path::Path, relay_extra: &str, connectors: &str) -> String {
    format!(
        r#"[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
AcceptedDomains = ["contoso.test", "cloud.contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"
TransientFailureRetryInterval = "00:00:01"
MaxRetryInterval = "00:00:02"
{relay_extra}

[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["{ON_PREMISES}/32"]
CloudServicesMailEnabled = true

{connectors}
"#,
        dir = dir.display()
    )
}

/// An Outbound connector to the on-premises servers at `sink` for contoso.test (`extra`:
/// further keys).
fn to_on_premises(sink: SocketAddr, extra: &str) -> String {
    format!(
        r#"[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
RecipientDomains = ["contoso.test"]
UseMXRecord = false
SmartHosts = ["{sink}"]
{extra}
"#
    )
}

/// An Outbound connector `name` for `domains` (TOML array text) to the smart host `sink`.
fn outbound(name: &str, domains: &str, sink: SocketAddr, extra: &str) -> String {
    format!(
        r#"[[OutboundConnector]]
Name = "{name}"
RecipientDomains = {domains}
UseMXRecord = false
SmartHosts = ["{sink}"]
{extra}
"#
    )
}

/// A Send connector `name` for `spaces` (TOML array text) to the smart host `sink`.
fn send_connector(name: &str, spaces: &str, sink: SocketAddr, extra: &str) -> String {
    format!(
        r#"[[SendConnector]]
Name = "{name}"
AddressSpaces = {spaces}
DNSRoutingEnabled = false
SmartHosts = ["{}"]
Port = {}
{extra}
"#,
        sink.ip(),
        sink.port()
    )
}

struct Lab {
    relay: RelayHandle,
    _dir: tempfile::TempDir,
    token: String,
    admin: SocketAddr,
    smtp: SocketAddr,
}

impl Lab {
    async fn start(dns: Option<&TestDns>, relay_extra: &str, connectors: &str) -> Lab {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(&config, config_text(dir.path(), relay_extra, connectors)).unwrap();
        let (relay, token) =
            start_relay_from_file_with_dns(&config, dir.path(), dns.map(|d| d.addr)).await;
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

    /// `PUT /api/exchange/connectors/{name}/status`: asserts the change is live.
    async fn set_enabled(&self, name: &str, enabled: bool) {
        let path = format!("/api/exchange/connectors/{}/status", encode(name));
        let r = self
            .api("PUT", &path, Some(json!({ "Enabled": enabled })))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["Live"], true, "{}", r.body);
    }

    /// `POST /api/exchange/connectors/{name}/validate` to `rcpt`: the report.
    async fn validate(&self, name: &str, rcpt: &str) -> Value {
        let path = format!("/api/exchange/connectors/{}/validate", encode(name));
        let r = self
            .api("POST", &path, Some(json!({ "Recipients": [rcpt] })))
            .await;
        assert_eq!(r.status, 200, "{}", r.body);
        r.json()
    }

    /// The `Routed` trace row of `rcpt` in the message `<id>` (waits until it is written).
    async fn routed(&self, id: &str, rcpt: &str) -> Value {
        let path = format!("/api/trace?messageId={id}");
        until(&format!("the Routed row of {rcpt} in {id}"), || async {
            let rows = self.api("GET", &path, None).await.json();
            rows.as_array()?
                .iter()
                .find(|r| r["event"] == "Routed" && r["recipient"] == rcpt)
                .cloned()
        })
        .await
    }

    /// The queued message for `rcpt` once that recipient's `LastError` contains `status`
    /// (`GET /api/queue`).
    async fn deferred(&self, rcpt: &str, status: &str) -> Value {
        until(&format!("{rcpt} deferred with {status}"), || async {
            let queue = self.api("GET", "/api/queue", None).await.json();
            queue.as_array()?.iter().find_map(|m| {
                let r = &m["Recipients"][0];
                let error = r["LastError"].as_str()?;
                (r["Address"] == rcpt && error.contains(status)).then(|| m.clone())
            })
        })
        .await
    }

    async fn stop(self) {
        self.relay.shutdown(Duration::from_secs(5)).await;
    }
}

/// A connector name in a URL path.
fn encode(name: &str) -> String {
    name.replace(' ', "%20")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A sink on 127.0.0.1 (with STARTTLS when `tls`).
async fn sink(tls: bool) -> Sink {
    start_sink_with("127.0.0.1:0".parse().unwrap(), tls, None).await
}

/// The MX host of `domain` in `dns`: a sink on 127.0.0.41 at a free port, which the relay
/// must use as its `DeliveryPort`.
async fn mx_sink(dns: &TestDns, domain: &str) -> (Sink, u16) {
    let port = free_port();
    let mx = format!("mx.{domain}");
    dns.add_mx(domain, 10, &mx);
    dns.add_ip(&mx, ip("127.0.0.41"));
    let sink = start_sink_with(SocketAddr::new(ip("127.0.0.41"), port), false, None).await;
    (sink, port)
}

/// Submits one message with Message-ID `<id>` from `source` to `rcpts`; every reply must
/// be positive. `head`: further header lines (CRLF-terminated), `body`: the text.
async fn submit(lab: &Lab, source: &str, rcpts: &[&str], id: &str, head: &str, body: &str) {
    let mut d = Dialog::connect_from(ip(source), lab.smtp).await;
    d.cmd("EHLO mail.contoso.test", "250").await;
    d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    for r in rcpts {
        d.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    d.cmd("DATA", "354").await;
    let text = format!(
        "From: app@contoso.test\r\nTo: {}\r\nSubject: {id}\r\nMessage-ID: <{id}>\r\n{head}\r\n{body}\r\n.\r\n",
        rcpts.join(", ")
    );
    d.send(text.as_bytes()).await;
    d.expect("250", "end of DATA").await;
    d.cmd("QUIT", "221").await;
}

/// Submits a plain one-line message (see [`submit`]).
async fn send(lab: &Lab, source: &str, rcpts: &[&str], id: &str) {
    submit(lab, source, rcpts, id, "", "connector behaviour test").await;
}

/// Message-IDs (without brackets, sorted) of the messages in `sink` once it holds `n`
/// (bounded wait; the assertion that follows decides).
async fn arrived(sink: &Sink, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = wait_messages(sink.maildir(), n, WAIT)
        .await
        .iter()
        .flat_map(|m| header_values(m, "Message-ID"))
        .map(|v| v.trim_matches(['<', '>']).to_string())
        .collect();
    ids.sort();
    ids
}

/// Envelope recipients of every message in `sink` (after waiting for `n` messages).
async fn recipients(sink: &Sink, n: usize) -> Vec<String> {
    let mut all: Vec<String> = wait_messages(sink.maildir(), n, WAIT)
        .await
        .iter()
        .flat_map(|m| header_values(m, "X-Sink-Rcpt-To"))
        .map(str::to_string)
        .collect();
    all.sort();
    all
}

// ---- Enabled ----------------------------------------------------------------------------

#[tokio::test]
async fn disabled_outbound_connector_is_skipped_until_enabled_through_the_api() {
    let dns = TestDns::start().await;
    let (mx, port) = mx_sink(&dns, "fabrikam.test").await;
    let gateway = sink(false).await;
    let lab = Lab::start(
        Some(&dns),
        &format!("DeliveryPort = {port}"),
        &outbound(
            "To Fabrikam",
            r#"["fabrikam.test"]"#,
            gateway.addr(),
            "Enabled = false",
        ),
    )
    .await;

    // Disabled: the default route (MX) carries fabrikam.test; the gateway is never contacted.
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "off@contoso.test",
    )
    .await;
    assert_eq!(arrived(&mx, 1).await, ["off@contoso.test"]);
    let routed = lab.routed("off@contoso.test", "bob@fabrikam.test").await;
    assert_eq!(routed["connector"], Value::Null, "{routed}");
    let detail = routed["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("default MX route: MX lookup of fabrikam.test"),
        "{detail}"
    );
    assert_eq!(gateway.handle.connections(), 0);

    // Enabled through the admin API, without a restart: the next message takes it.
    lab.set_enabled("To Fabrikam", true).await;
    send(&lab, ON_PREMISES, &["bob@fabrikam.test"], "on@contoso.test").await;
    assert_eq!(arrived(&gateway, 1).await, ["on@contoso.test"]);
    let routed = lab.routed("on@contoso.test", "bob@fabrikam.test").await;
    assert_eq!(routed["connector"], "To Fabrikam", "{routed}");
    assert_eq!(messages(mx.maildir()).len(), 1, "nothing more went by MX");
    lab.stop().await;
}

#[tokio::test]
async fn disabled_send_connector_is_skipped_until_enabled_through_the_api() {
    let (primary, backup) = (sink(false).await, sink(false).await);
    let connectors = [
        send_connector(
            "Fabrikam primary",
            r#"["fabrikam.test;1"]"#,
            primary.addr(),
            "Enabled = false",
        ),
        send_connector(
            "Fabrikam backup",
            r#"["fabrikam.test;5"]"#,
            backup.addr(),
            "",
        ),
    ]
    .join("\n");
    let lab = Lab::start(None, "", &connectors).await;

    // Disabled: the costlier connector for the same address space takes the mail.
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "one@contoso.test",
    )
    .await;
    assert_eq!(arrived(&backup, 1).await, ["one@contoso.test"]);
    assert_eq!(primary.handle.connections(), 0);

    // Enabled: the cheaper one wins again; disabled again: back to the backup.
    lab.set_enabled("Fabrikam primary", true).await;
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "two@contoso.test",
    )
    .await;
    assert_eq!(arrived(&primary, 1).await, ["two@contoso.test"]);
    lab.set_enabled("Fabrikam primary", false).await;
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "three@contoso.test",
    )
    .await;
    assert_eq!(
        arrived(&backup, 2).await,
        ["one@contoso.test", "three@contoso.test"]
    );
    assert_eq!(messages(primary.maildir()).len(), 1);
    let routed = lab.routed("three@contoso.test", "bob@fabrikam.test").await;
    assert_eq!(routed["connector"], "Fabrikam backup", "{routed}");
    lab.stop().await;
}

// ---- TestMode, IsTransportRuleScoped ------------------------------------------------------

#[tokio::test]
async fn test_mode_connector_is_traced_as_would_route_but_mail_takes_the_route_without_it() {
    let dns = TestDns::start().await;
    let (mx, port) = mx_sink(&dns, "fabrikam.test").await;
    let trial = sink(false).await;
    let lab = Lab::start(
        Some(&dns),
        &format!("DeliveryPort = {port}"),
        &outbound(
            "Fabrikam trial",
            r#"["fabrikam.test"]"#,
            trial.addr(),
            "TestMode = true",
        ),
    )
    .await;

    // policy.md step 5: evaluated and recorded as "would route", but the message goes by
    // the route that applies without the connector (here the default MX route).
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "trial@contoso.test",
    )
    .await;
    assert_eq!(arrived(&mx, 1).await, ["trial@contoso.test"]);
    let routed = lab.routed("trial@contoso.test", "bob@fabrikam.test").await;
    assert_eq!(routed["connector"], Value::Null, "{routed}");
    let detail = routed["detail"].as_str().unwrap();
    assert!(detail.starts_with("default MX route: "), "{detail}");
    assert!(
        detail.ends_with("; would route: Fabrikam trial (TestMode connector; not used)"),
        "{detail}"
    );
    assert_eq!(trial.handle.connections(), 0);

    // The connector itself works: validation sends through it despite TestMode.
    let report = lab.validate("Fabrikam trial", "bob@fabrikam.test").await;
    assert_eq!(report["Success"], true, "{report}");
    assert_eq!(messages(trial.maildir()).len(), 1);
    assert_eq!(messages(mx.maildir()).len(), 1);
    lab.stop().await;
}

#[tokio::test]
async fn transport_rule_scoped_connector_carries_no_normal_mail() {
    let (scoped, internet) = (sink(false).await, sink(false).await);
    let connectors = [
        outbound(
            "Fabrikam by rule",
            r#"["fabrikam.test"]"#,
            scoped.addr(),
            "IsTransportRuleScoped = true",
        ),
        send_connector("Internet", r#"["*"]"#, internet.addr(), ""),
    ]
    .join("\n");
    let lab = Lab::start(None, "", &connectors).await;

    // The exact-domain connector is skipped (the relay has no transport rules to pick it):
    // the `*` connector carries fabrikam.test, and nothing reports a "would route".
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "scoped@contoso.test",
    )
    .await;
    assert_eq!(arrived(&internet, 1).await, ["scoped@contoso.test"]);
    let routed = lab.routed("scoped@contoso.test", "bob@fabrikam.test").await;
    assert_eq!(routed["connector"], "Internet", "{routed}");
    assert!(
        !routed["detail"].as_str().unwrap().contains("would route"),
        "{routed}"
    );
    assert_eq!(scoped.handle.connections(), 0);

    // Only validation uses it.
    let report = lab.validate("Fabrikam by rule", "bob@fabrikam.test").await;
    assert_eq!(report["Success"], true, "{report}");
    assert_eq!(messages(scoped.maildir()).len(), 1);
    assert_eq!(messages(internet.maildir()).len(), 1);
    lab.stop().await;
}

// ---- RouteAllMessagesViaOnPremises --------------------------------------------------------

#[tokio::test]
async fn route_all_messages_via_on_premises_takes_all_mail_from_outside() {
    let (onprem, cloud, internet) = (sink(false).await, sink(false).await, sink(false).await);
    let connectors = [
        to_on_premises(onprem.addr(), "RouteAllMessagesViaOnPremises = true"),
        outbound(
            "To cloud mailboxes",
            r#"["cloud.contoso.test"]"#,
            cloud.addr(),
            "",
        ),
        send_connector("Internet", r#"["*"]"#, internet.addr(), ""),
    ]
    .join("\n");
    let lab = Lab::start(None, "", &connectors).await;

    // From outside the organization: every recipient goes to the on-premises smart host,
    // cloud.contoso.test too although another connector names it exactly.
    let rcpts = ["alice@cloud.contoso.test", "bob@contoso.test"];
    send(&lab, OUTSIDE, &rcpts, "inbound@contoso.test").await;
    assert_eq!(
        recipients(&onprem, 1).await,
        ["<alice@cloud.contoso.test>", "<bob@contoso.test>"]
    );
    let routed = lab
        .routed("inbound@contoso.test", "alice@cloud.contoso.test")
        .await;
    assert_eq!(routed["connector"], "To on-premises", "{routed}");
    // Internet recipients cannot come from outside at all: that would be relaying.
    let mut d = Dialog::connect_from(ip(OUTSIDE), lab.smtp).await;
    d.cmd("EHLO mail.fabrikam.test", "250").await;
    d.cmd("MAIL FROM:<someone@fabrikam.test>", "250").await;
    let reply = d.cmd("RCPT TO:<dave@tailspin.test>", "550").await;
    assert_eq!(reply, "550 5.7.64 TenantAttribution; Relay Access Denied");
    d.cmd("QUIT", "221").await;

    // From the on-premises servers themselves (not from outside): the ordinary routes, so
    // nothing loops back to on-premises.
    let rcpts = ["carol@cloud.contoso.test", "dave@tailspin.test"];
    send(&lab, ON_PREMISES, &rcpts, "outbound@contoso.test").await;
    assert_eq!(arrived(&cloud, 1).await, ["outbound@contoso.test"]);
    assert_eq!(arrived(&internet, 1).await, ["outbound@contoso.test"]);
    assert_eq!(recipients(&cloud, 1).await, ["<carol@cloud.contoso.test>"]);
    assert_eq!(recipients(&internet, 1).await, ["<dave@tailspin.test>"]);
    assert_eq!(messages(onprem.maildir()).len(), 1);
    lab.stop().await;
}

// ---- Send connector MaxMessageSize ----------------------------------------------------------

#[tokio::test]
async fn send_connector_max_message_size_returns_larger_mail_to_its_sender_with_5_3_4() {
    let (onprem, fabrikam) = (sink(false).await, sink(false).await);
    let connectors = [
        to_on_premises(onprem.addr(), ""),
        send_connector(
            "Fabrikam",
            r#"["fabrikam.test"]"#,
            fabrikam.addr(),
            r#"MaxMessageSize = "4KB""#,
        ),
    ]
    .join("\n");
    let lab = Lab::start(None, r#"MaxMessageSize = "64KB""#, &connectors).await;

    // At receive time only the relay's own limit counts: it is advertised, and a declared
    // SIZE over it is refused at MAIL FROM. The route (and so the connector's limit) is a
    // delivery matter: a SIZE over the connector's 4 KB is accepted.
    let mut d = Dialog::connect_from(ip(ON_PREMISES), lab.smtp).await;
    let ehlo = d.cmd("EHLO mail.contoso.test", "250").await;
    assert!(ehlo.lines().any(|l| l == "250-SIZE 65536"), "{ehlo}");
    let reply = d
        .cmd("MAIL FROM:<app@contoso.test> SIZE=100000", "552")
        .await;
    assert_eq!(
        reply,
        "552 5.3.4 Message size exceeds fixed maximum message size"
    );
    d.cmd("MAIL FROM:<app@contoso.test> SIZE=10000", "250 2.1.0")
        .await;
    d.cmd("RCPT TO:<bob@fabrikam.test>", "250").await;
    d.cmd("DATA", "354").await;
    let line = "x".repeat(70);
    let body = vec![line.as_str(); 140].join("\r\n");
    let text = format!(
        "From: app@contoso.test\r\nSubject: big\r\nMessage-ID: <big@contoso.test>\r\n\r\n{body}\r\n.\r\n"
    );
    d.send(text.as_bytes()).await;
    d.expect("250", "end of DATA").await;
    d.cmd("QUIT", "221").await;
    // A message within the limit takes the connector.
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "small@contoso.test",
    )
    .await;
    assert_eq!(arrived(&fabrikam, 1).await, ["small@contoso.test"]);

    // The larger one is never sent through it: its sender gets an NDR (5.3.4, naming the
    // connector and its limit), through the on-premises route.
    let ndr = wait_messages(onprem.maildir(), 1, WAIT).await;
    assert_eq!(ndr.len(), 1, "one NDR");
    assert_eq!(header_values(&ndr[0], "X-Sink-Mail-From"), ["<>"]);
    assert_eq!(
        header_values(&ndr[0], "X-Sink-Rcpt-To"),
        ["<app@contoso.test>"]
    );
    let words = ndr[0].split_whitespace().collect::<Vec<_>>().join(" ");
    for expected in [
        "Action: failed",
        "Status: 5.3.4",
        "Connector: \"Fabrikam\"",
        "exceeds the MaxMessageSize 4096 of connector \"Fabrikam\"",
        "Message-ID: <big@contoso.test>",
    ] {
        assert!(
            words.contains(expected),
            "{expected:?} not in the NDR:\n{}",
            ndr[0]
        );
    }
    assert_eq!(messages(fabrikam.maildir()).len(), 1);
    assert_eq!(
        fabrikam.handle.connections(),
        1,
        "the big message never connected"
    );
    lab.stop().await;
}

// ---- Send connector ConnectionInactivityTimeOut ---------------------------------------------

#[tokio::test]
async fn send_connector_inactivity_timeout_drops_a_stalled_next_hop_and_defers() {
    // A next hop that greets and takes MAIL FROM, then never answers RCPT.
    let slow = Downstream::start(Mode::StallAtRcpt).await;
    let lab = Lab::start(
        None,
        "",
        &send_connector(
            "Slow partner",
            r#"["fabrikam.test"]"#,
            slow.addr,
            r#"ConnectionInactivityTimeOut = "00:00:02""#,
        ),
    )
    .await;
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "stalled@contoso.test",
    )
    .await;

    // The relay closes the connection after about 2 s of silence: well before the 10-minute
    // default of the key or the relay's own 5 minutes (`until` gives up after 30 s).
    let stalls = until("the relay to drop the stalled session", || async {
        let s = slow.stalls();
        (!s.is_empty()).then_some(s)
    })
    .await;
    assert!(
        stalls[0] >= Duration::from_secs(1),
        "dropped after {:?}, before the timeout",
        stalls[0]
    );

    // Deferred (4.4.315, the message stays queued), then delivered once the hop answers.
    let queued = lab.deferred("bob@fabrikam.test", "4.4.315").await;
    assert_eq!(queued["Recipients"][0]["Status"], "Pending", "{queued}");
    slow.set_mode(Mode::Accept);
    let delivered = slow.wait_delivered(1, WAIT).await;
    assert_eq!(delivered, ["<stalled@contoso.test>"]);
    lab.stop().await;
}

// ---- SmartHostAuthMechanism = "ExternalAuthoritative" ---------------------------------------

#[tokio::test]
async fn external_authoritative_smart_host_requires_tls_and_gets_no_auth() {
    let (tls, plain) = (sink(true).await, sink(false).await);
    let external = r#"SmartHostAuthMechanism = "ExternalAuthoritative""#;
    let connectors = [
        send_connector(
            "Trusted gateway",
            r#"["fabrikam.test"]"#,
            tls.addr(),
            external,
        ),
        send_connector(
            "Trusted gateway without TLS",
            r#"["woodgrove.test"]"#,
            plain.addr(),
            external,
        ),
    ]
    .join("\n");
    let lab = Lab::start(None, "", &connectors).await;

    // README: no AUTH, TLS required (EncryptionOnly), nothing else changes: organization
    // headers still leave only with CloudServicesMailEnabled.
    let head = "X-MS-Exchange-Organization-AuthAs: Internal\r\n";
    submit(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "trusted@contoso.test",
        head,
        "to a trusted hop",
    )
    .await;
    let m = wait_messages(tls.maildir(), 1, WAIT).await;
    assert_eq!(m.len(), 1);
    assert_eq!(header_values(&m[0], "X-Sink-Tls").len(), 1, "{}", m[0]);
    assert!(header_values(&m[0], "X-Sink-Auth").is_empty(), "{}", m[0]);
    assert!(
        header_values(&m[0], "X-MS-Exchange-Organization-AuthAs").is_empty(),
        "{}",
        m[0]
    );
    let routed = lab
        .routed("trusted@contoso.test", "bob@fabrikam.test")
        .await;
    let detail = routed["detail"].as_str().unwrap();
    assert!(
        detail.ends_with("TLS: required, EncryptionOnly (certificate not checked)"),
        "{detail}"
    );

    // A hop that offers no STARTTLS gets nothing: deferred with 4.4.317.
    send(
        &lab,
        ON_PREMISES,
        &["carl@woodgrove.test"],
        "notls@contoso.test",
    )
    .await;
    let queued = lab.deferred("carl@woodgrove.test", "4.4.317").await;
    let error = queued["Recipients"][0]["LastError"].as_str().unwrap();
    assert!(error.contains("STARTTLS"), "{error}");
    assert!(messages(plain.maildir()).is_empty());
    lab.stop().await;
}

#[tokio::test]
async fn external_authoritative_with_ignore_starttls_sends_in_plaintext() {
    // IgnoreSTARTTLS: the channel is secured outside SMTP (IPsec, a private link), so the
    // relay does not ask for TLS even from a hop that offers it.
    let tls = sink(true).await;
    let lab = Lab::start(
        None,
        "",
        &send_connector(
            "Gateway over IPsec",
            r#"["fabrikam.test"]"#,
            tls.addr(),
            "SmartHostAuthMechanism = \"ExternalAuthoritative\"\nIgnoreSTARTTLS = true",
        ),
    )
    .await;
    send(
        &lab,
        ON_PREMISES,
        &["bob@fabrikam.test"],
        "ipsec@contoso.test",
    )
    .await;
    let m = wait_messages(tls.maildir(), 1, WAIT).await;
    assert_eq!(m.len(), 1);
    assert!(header_values(&m[0], "X-Sink-Tls").is_empty(), "{}", m[0]);
    assert!(header_values(&m[0], "X-Sink-Auth").is_empty(), "{}", m[0]);
    lab.stop().await;
}
