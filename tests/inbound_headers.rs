//! Cross-premises headers through the relay: the exact header block the downstream receives
//! for an anonymous session, an OnPremises connector without and with
//! CloudServicesMailEnabled (+ TreatMessagesAsInternal), and a Partner connector with
//! CloudServicesMailEnabled. The body must arrive byte for byte (DKIM body hash unchanged).
//!
//! The outbound connector to the sink has CloudServicesMailEnabled too, so what the inbound
//! side kept is visible at the sink: every `X-MS-Exchange-Organization-NAME` the relay holds
//! leaves as `X-MS-Exchange-CrossPremises-NAME` (policy.md "Outbound: headers").

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

const HEADERS: &str = "From: a@contoso.test\r\n\
To: bob@contoso.test\r\n\
Subject: headers\r\n\
X-MS-Exchange-Organization-SCL: -1\r\n\
X-MS-Exchange-CrossPremises-SCL: 5\r\n\
x-ms-exchange-crosspremises-OriginalClientIPAddress: 10.0.0.1\r\n\
X-MS-Exchange-Organization-AuthSource: onprem.contoso.test\r\n\
X-MS-Exchange-Organization-AuthAs:\r\n Anonymous\r\n\
X-Other: keep\r\n";

/// Header-looking lines, 8-bit text, a dot line: all must pass untouched.
const BODY: &str = "X-MS-Exchange-Organization-Fake: body line\r\n\
X-MS-Exchange-CrossPremises-SCL: 9\r\n\
..leading dot (stuffed on the wire)\r\n\
caf\u{e9} \u{2603}\r\n\
\r\n";

fn config(spool: &std::path::Path, sink: SocketAddr) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
AcceptedDomains = ["contoso.test"]
SpoolDir = "{spool}"
DataDir = "{spool}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{spool}/admin.token"

[[InboundConnector]]
Name = "Hybrid on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10"]
CloudServicesMailEnabled = true
TreatMessagesAsInternal = true

[[InboundConnector]]
Name = "Plain on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.11"]

[[InboundConnector]]
Name = "Fabrikam hybrid partner"
SenderDomains = ["fabrikam.test"]
CloudServicesMailEnabled = true

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{sink}"]
CloudServicesMailEnabled = true
"#,
        spool = spool.display()
    )
}

/// Sends the test message from `ip` with `sender`; returns (relayed header block without
/// the sink's and the relay's trace lines, relayed body).
async fn relay_once(
    relay: SocketAddr,
    sink: &Sink,
    ip: &str,
    sender: &str,
    n: usize,
) -> (String, String) {
    let mut d = Dialog::connect_from(ip.parse().unwrap(), relay).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd(&format!("MAIL FROM:<{sender}> BODY=8BITMIME"), "250")
        .await;
    d.cmd("RCPT TO:<bob@contoso.test>", "250").await;
    d.cmd("DATA", "354").await;
    d.send(
        format!("{HEADERS}\r\n{BODY}")
            .replace("\r\n..leading", "\r\n...leading")
            .as_bytes(),
    )
    .await;
    d.cmd(".", "250").await;
    d.cmd("QUIT", "221").await;
    let got = wait_messages(sink.maildir(), n, WAIT).await;
    let msg = got
        .iter()
        .find(|m| m.contains(&format!("X-Sink-Mail-From: <{sender}>")))
        .expect("relayed")
        .clone();
    split_relayed(&msg)
}

fn body_hash(body: &str) -> Vec<u8> {
    // RFC 6376 §3.4.3 "simple" body canonicalization: trailing empty lines reduced to one CRLF.
    let trimmed = body.trim_end_matches("\r\n");
    let canon = format!("{trimmed}\r\n");
    ring::digest::digest(&ring::digest::SHA256, canon.as_bytes())
        .as_ref()
        .to_vec()
}

#[tokio::test]
async fn cross_premises_headers_exact() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&config(tmp.path(), sink.addr()), None).await;
    let addr = relay.smtp_addrs[0];

    let stripped =
        "From: a@contoso.test\r\nTo: bob@contoso.test\r\nSubject: headers\r\nX-Other: keep\r\n";

    // Anonymous: every Organization and CrossPremises header removed.
    let (head, body) = relay_once(addr, &sink, "127.0.0.50", "anon@internet.test", 1).await;
    assert_eq!(head, stripped);
    assert_eq!(body, BODY);
    assert_eq!(body_hash(&body), body_hash(BODY));

    // OnPremises without CloudServicesMailEnabled: the same removal.
    let (head, body) = relay_once(addr, &sink, "127.0.0.11", "a@contoso.test", 2).await;
    assert_eq!(head, stripped);
    assert_eq!(body, BODY);

    // OnPremises with CloudServicesMailEnabled + TreatMessagesAsInternal: CrossPremises
    // promoted in place (replacing Organization-SCL), other Organization headers kept,
    // internal marks last (replacing the AuthAs that was there).
    let (head, body) = relay_once(addr, &sink, "127.0.0.10", "alice@contoso.test", 3).await;
    assert_eq!(
        head,
        "From: a@contoso.test\r\n\
To: bob@contoso.test\r\n\
Subject: headers\r\n\
X-MS-Exchange-CrossPremises-SCL: 5\r\n\
X-MS-Exchange-CrossPremises-OriginalClientIPAddress: 10.0.0.1\r\n\
X-MS-Exchange-CrossPremises-AuthSource: onprem.contoso.test\r\n\
X-Other: keep\r\n\
X-MS-Exchange-CrossPremises-MessageDirectionality: Originating\r\n\
X-MS-Exchange-CrossPremises-AuthAs: Internal\r\n"
    );
    assert_eq!(body, BODY);
    assert_eq!(body_hash(&body), body_hash(BODY));

    // A Partner connector with CloudServicesMailEnabled promotes, but never marks internal.
    let (head, _) = relay_once(addr, &sink, "127.0.0.50", "p@fabrikam.test", 4).await;
    assert_eq!(
        head,
        "From: a@contoso.test\r\n\
To: bob@contoso.test\r\n\
Subject: headers\r\n\
X-MS-Exchange-CrossPremises-SCL: 5\r\n\
X-MS-Exchange-CrossPremises-OriginalClientIPAddress: 10.0.0.1\r\n\
X-MS-Exchange-CrossPremises-AuthSource: onprem.contoso.test\r\n\
X-MS-Exchange-CrossPremises-AuthAs:\r\n Anonymous\r\n\
X-Other: keep\r\n"
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
