//! Outbound cross-premises headers through the relay (policy.md "Outbound: headers"): a
//! message from an OnPremises connector with CloudServicesMailEnabled carries
//! `X-MS-Exchange-CrossPremises-*` headers, promoted to `Organization-*` on receipt. One
//! message, three recipients, three routes: an Outbound connector and a Send connector with
//! CloudServicesMailEnabled preserve them as `CrossPremises-*` again; an Outbound connector
//! without it removes both kinds. Exact header block and byte-identical body at each sink.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::*;

const WAIT: Duration = Duration::from_secs(30);

const HEADERS: &str = "From: a@contoso.test\r\n\
To: bob@tailspin.test\r\n\
Subject: outbound\r\n\
X-MS-Exchange-CrossPremises-SCL: 5\r\n\
X-MS-Exchange-Organization-SCL: -1\r\n\
X-MS-Exchange-CrossPremises-AuthAs:\r\n Internal\r\n\
X-Other: keep\r\n";

const BODY: &str = "X-MS-Exchange-Organization-Fake: body line\r\n\
X-MS-Exchange-CrossPremises-SCL: 9\r\n\
\r\n";

fn config(
    spool: &std::path::Path,
    csme: SocketAddr,
    plain: SocketAddr,
    send: SocketAddr,
) -> String {
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

[[OutboundConnector]]
Name = "Hybrid to Tailspin"
ConnectorType = "OnPremises"
RecipientDomains = ["tailspin.test"]
UseMXRecord = false
SmartHosts = ["{csme}"]
CloudServicesMailEnabled = true

[[OutboundConnector]]
Name = "Plain to Fabrikam"
RecipientDomains = ["fabrikam.test"]
UseMXRecord = false
SmartHosts = ["{plain}"]

[[SendConnector]]
Name = "Hybrid send to Wingtip"
AddressSpaces = ["wingtip.test"]
DNSRoutingEnabled = false
SmartHosts = ["{send}"]
CloudServicesMailEnabled = true
"#,
        spool = spool.display()
    )
}

#[tokio::test]
async fn cross_premises_headers_per_route() {
    let csme = start_sink().await;
    let plain = start_sink().await;
    let send = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(
        &config(tmp.path(), csme.addr(), plain.addr(), send.addr()),
        None,
    )
    .await;

    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<a@contoso.test>", "250").await;
    for r in [
        "bob@tailspin.test",
        "carol@fabrikam.test",
        "dave@wingtip.test",
    ] {
        d.cmd(&format!("RCPT TO:<{r}>"), "250").await;
    }
    d.cmd("DATA", "354").await;
    d.send(format!("{HEADERS}\r\n{BODY}").as_bytes()).await;
    d.cmd(".", "250").await;
    d.cmd("QUIT", "221").await;

    let preserved = "From: a@contoso.test\r\n\
To: bob@tailspin.test\r\n\
Subject: outbound\r\n\
X-MS-Exchange-CrossPremises-SCL: 5\r\n\
X-MS-Exchange-CrossPremises-AuthAs:\r\n Internal\r\n\
X-Other: keep\r\n";
    let removed = "From: a@contoso.test\r\n\
To: bob@tailspin.test\r\n\
Subject: outbound\r\n\
X-Other: keep\r\n";
    for (sink, rcpt, expected) in [
        (&csme, "bob@tailspin.test", preserved),
        (&send, "dave@wingtip.test", preserved),
        (&plain, "carol@fabrikam.test", removed),
    ] {
        let got = wait_messages(sink.maildir(), 1, WAIT).await;
        assert_eq!(got.len(), 1, "{rcpt}");
        assert!(got[0].contains(&format!("X-Sink-Rcpt-To: <{rcpt}>\r\n")));
        let (head, body) = split_relayed(&got[0]);
        assert_eq!(head, expected, "{rcpt}");
        assert_eq!(body, BODY, "{rcpt}: body unchanged");
    }
    relay.shutdown(Duration::from_secs(5)).await;
}
