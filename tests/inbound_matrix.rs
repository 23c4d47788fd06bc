//! Inbound connectors, table-driven: every parameter in both states, from the right and
//! the wrong source address (127.0.0.x plays distinct hosts; one IPv6 case on ::1), with
//! no certificate, the right one, a wrong-name, expired, self-signed, revoked and
//! untrusted one, over plaintext and over TLS. Each case asserts the exact reply code, the
//! enhanced code, and that a refusal names its connector.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use support::*;

fn config(spool: &std::path::Path, sink: SocketAddr) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0", "[::1]:0"]
TlsCertificate = "{cert}"
TlsPrivateKey = "{key}"
TrustedCaFile = "{ca}"
RevocationLists = ["{crl}"]
AcceptedDomains = ["contoso.test", "sales.contoso.test"]
SpoolDir = "{spool}"
DataDir = "{spool}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{spool}/admin.token"
MaxProtocolErrors = 50

[[InboundConnector]]
Name = "OnPrem by IP"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32", "::1/128"]

[[InboundConnector]]
Name = "OnPrem TLS only"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.12/32"]
RequireTls = true

[[InboundConnector]]
Name = "OnPrem by certificate"
ConnectorType = "OnPremises"
TlsSenderCertificateName = "*.contoso.test"

[[InboundConnector]]
Name = "Fabrikam IP-restricted"
SenderDomains = ["fabrikam.test"]
SenderIPAddresses = ["127.0.0.20/30"]
RestrictDomainsToIPAddresses = true

[[InboundConnector]]
Name = "Woodgrove forced TLS"
SenderDomains = ["woodgrove.test"]
RequireTls = true
TlsSenderCertificateName = "mail.fabrikam.test"
RestrictDomainsToCertificate = true

[[InboundConnector]]
Name = "Disabled partner"
Enabled = false
SenderDomains = ["disabled.test"]
RequireTls = true

[[InboundConnector]]
Name = "Sales-only partner"
SenderDomains = ["assoc.test"]
SenderIPAddresses = ["127.0.0.30/32"]
RestrictDomainsToIPAddresses = true
AssociatedAcceptedDomains = ["sales.contoso.test"]

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{sink}"]
"#,
        cert = certs("relay.contoso.test.crt"),
        key = certs("relay.contoso.test.key"),
        ca = certs("ca.crt"),
        crl = certs("ca.crl.pem"),
        spool = spool.display(),
    )
}

#[derive(Clone, Copy, Debug)]
enum Tls {
    Plain,
    /// STARTTLS, with an optional client certificate (base name in certs-test/).
    StartTls(Option<&'static str>),
}

struct Case {
    name: &'static str,
    from_ip: &'static str,
    tls: Tls,
    sender: &'static str,
    rcpt: &'static str,
    /// Expected reply to MAIL FROM (code + enhanced code prefix).
    mail: &'static str,
    /// Expected reply to RCPT TO, when MAIL is accepted.
    rcpt_reply: &'static str,
    /// The connector a refusal must name.
    names: Option<&'static str>,
}

const C: &str = "";

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    use Tls::*;
    let ok = "250 2.1.5";
    let relay_denied = "550 5.7.64";
    let restricted = "550 5.7.51";
    let c = |name, from_ip, tls, sender, rcpt, mail, rcpt_reply, names| Case { name, from_ip, tls, sender, rcpt, mail, rcpt_reply, names };
    vec![
        // Anonymous internet mail: accepted domains only, in both transports.
        c("anonymous to accepted domain", "127.0.0.50", Plain, "a@internet.test", "bob@contoso.test", "250 2.1.0", ok, None),
        c("anonymous relay refused", "127.0.0.50", Plain, "a@internet.test", "x@elsewhere.test", "250 2.1.0", relay_denied, None),
        c("anonymous relay refused over TLS", "127.0.0.50", StartTls(None), "a@internet.test", "x@elsewhere.test", "250 2.1.0", relay_denied, None),
        c("anonymous relay to an IP literal refused", "127.0.0.50", Plain, "a@internet.test", "x@[127.0.0.1]", "250 2.1.0", relay_denied, None),
        // OnPremises by IP: the right and the wrong source address; IPv6.
        c("on-premises IP may relay", "127.0.0.10", Plain, "a@contoso.test", "x@elsewhere.test", "250 2.1.0", ok, None),
        c("on-premises IP may relay over TLS", "127.0.0.10", StartTls(None), "a@contoso.test", "x@elsewhere.test", "250 2.1.0", ok, None),
        c("neighbouring IP may not relay", "127.0.0.11", Plain, "a@contoso.test", "x@elsewhere.test", "250 2.1.0", relay_denied, None),
        c("on-premises IPv6 may relay", "::1", Plain, "a@contoso.test", "x@elsewhere.test", "250 2.1.0", ok, None),
        // RequireTls on an OnPremises connector: both states of the session.
        c("RequireTls refuses plaintext", "127.0.0.12", Plain, "a@contoso.test", "x@elsewhere.test", "451 5.7.3", C, Some("OnPrem TLS only")),
        c("RequireTls accepts TLS", "127.0.0.12", StartTls(None), "a@contoso.test", "x@elsewhere.test", "250 2.1.0", ok, None),
        // OnPremises by certificate name (*.contoso.test matches mail.contoso.test).
        c("on-premises certificate may relay", "127.0.0.50", StartTls(Some("onprem.contoso.test")), "a@contoso.test", "x@elsewhere.test", "250 2.1.0", ok, None),
        c("wrong-name certificate may not relay", "127.0.0.50", StartTls(Some("wrongname")), "a@contoso.test", "x@elsewhere.test", "250 2.1.0", relay_denied, None),
        c("partner certificate does not make on-premises", "127.0.0.50", StartTls(Some("mail.fabrikam.test")), "a@contoso.test", "x@elsewhere.test", "250 2.1.0", relay_denied, None),
        // RestrictDomainsToIPAddresses = true: right and wrong IP, plaintext and TLS.
        c("partner domain from its IP", "127.0.0.21", Plain, "a@fabrikam.test", "bob@contoso.test", "250 2.1.0", ok, None),
        c("partner domain from its IP over TLS", "127.0.0.22", StartTls(None), "a@fabrikam.test", "bob@contoso.test", "250 2.1.0", ok, None),
        c("partner domain from a foreign IP", "127.0.0.50", Plain, "a@fabrikam.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Fabrikam IP-restricted")),
        c("partner domain from a foreign IP over TLS", "127.0.0.50", StartTls(Some("mail.fabrikam.test")), "a@fabrikam.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Fabrikam IP-restricted")),
        c("partner attribution does not allow relay", "127.0.0.21", Plain, "a@fabrikam.test", "x@elsewhere.test", "250 2.1.0", relay_denied, Some("Fabrikam IP-restricted")),
        // RestrictDomainsToIPAddresses = false, RequireTls + RestrictDomainsToCertificate = true.
        c("forced TLS refuses plaintext", "127.0.0.50", Plain, "a@woodgrove.test", "bob@contoso.test", "451 5.7.3", C, Some("Woodgrove forced TLS")),
        c("forced TLS without a certificate", "127.0.0.50", StartTls(None), "a@woodgrove.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Woodgrove forced TLS")),
        c("forced TLS with the right certificate", "127.0.0.50", StartTls(Some("mail.fabrikam.test")), "a@woodgrove.test", "bob@contoso.test", "250 2.1.0", ok, None),
        c("forced TLS with a wrong-name certificate", "127.0.0.50", StartTls(Some("wrongname")), "a@woodgrove.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Woodgrove forced TLS")),
        c("forced TLS with an expired certificate", "127.0.0.50", StartTls(Some("expired")), "a@woodgrove.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Woodgrove forced TLS")),
        c("forced TLS with a self-signed certificate", "127.0.0.50", StartTls(Some("selfsigned")), "a@woodgrove.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Woodgrove forced TLS")),
        c("forced TLS with an untrusted CA", "127.0.0.50", StartTls(Some("untrusted")), "a@woodgrove.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Woodgrove forced TLS")),
        c("forced TLS with a revoked certificate", "127.0.0.50", StartTls(Some("revoked")), "a@woodgrove.test", "bob@contoso.test", "250 2.1.0", restricted, Some("Woodgrove forced TLS")),
        // Enabled = false: the connector never matches.
        c("disabled connector is ignored", "127.0.0.50", Plain, "a@disabled.test", "bob@contoso.test", "250 2.1.0", ok, None),
        // AssociatedAcceptedDomains: applies to sales.contoso.test only.
        c("associated domain restricted", "127.0.0.50", Plain, "a@assoc.test", "bob@sales.contoso.test", "250 2.1.0", restricted, Some("Sales-only partner")),
        c("associated domain from its IP", "127.0.0.30", Plain, "a@assoc.test", "bob@sales.contoso.test", "250 2.1.0", ok, None),
        c("outside the associated domains: anonymous rules", "127.0.0.50", Plain, "a@assoc.test", "bob@contoso.test", "250 2.1.0", ok, None),
    ]
}

async fn run_case(case: &Case, v4: SocketAddr, v6: SocketAddr) -> Result<(), String> {
    let ip: IpAddr = case.from_ip.parse().unwrap();
    let target = if ip.is_ipv6() { v6 } else { v4 };
    let mut d = Dialog::connect_from(ip, target).await;
    d.cmd("EHLO client.test", "250").await;
    let (mail, rcpt) = match case.tls {
        Tls::Plain => {
            let mail = d.cmd(&format!("MAIL FROM:<{}>", case.sender), "").await;
            let rcpt = if mail.starts_with("250") {
                d.cmd(&format!("RCPT TO:<{}>", case.rcpt), "").await
            } else {
                String::new()
            };
            (mail, rcpt)
        }
        Tls::StartTls(cert) => {
            d.cmd("STARTTLS", "220").await;
            let pair = cert.map(|c| (format!("{c}.crt"), format!("{c}.key")));
            let mut t = d
                .starttls(
                    "relay.contoso.test",
                    pair.as_ref().map(|(c, k)| (c.as_str(), k.as_str())),
                )
                .await;
            t.cmd("EHLO client.test", "250").await;
            let mail = t.cmd(&format!("MAIL FROM:<{}>", case.sender), "").await;
            let rcpt = if mail.starts_with("250") {
                t.cmd(&format!("RCPT TO:<{}>", case.rcpt), "").await
            } else {
                String::new()
            };
            (mail, rcpt)
        }
    };
    if !mail.starts_with(case.mail) {
        return Err(format!("MAIL: expected {:?}, got {mail:?}", case.mail));
    }
    let decisive = if mail.starts_with("250") {
        if !rcpt.starts_with(case.rcpt_reply) {
            return Err(format!(
                "RCPT: expected {:?}, got {rcpt:?}",
                case.rcpt_reply
            ));
        }
        rcpt
    } else {
        mail
    };
    if let Some(name) = case.names
        && !decisive.contains(&format!("\"{name}\""))
    {
        return Err(format!(
            "the refusal does not name connector {name:?}: {decisive:?}"
        ));
    }
    Ok(())
}

#[tokio::test]
async fn inbound_connector_matrix() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&config(tmp.path(), sink.addr()), None).await;
    let (v4, v6) = (relay.smtp_addrs[0], relay.smtp_addrs[1]);
    let cases = cases();
    let mut failures = Vec::new();
    for case in &cases {
        if let Err(e) = run_case(case, v4, v6).await {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    println!(
        "inbound matrix: {} cases, {} failed",
        cases.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
    relay.shutdown(Duration::from_secs(5)).await;
}
