//! Inbound connector settings the relay used to accept without effect (issue 19), over
//! real SMTP sessions, each answer compared with what `explain` says for the same facts:
//! - `RestrictDomainsToIPAddresses` on an OnPremises connector: its `SenderDomains` (the
//!   organization's own) are refused from any address outside its `SenderIPAddresses`,
//!   with the trace row naming the rule and the connector;
//! - `TlsSenderCertificateIssuer` (extension key): client certificates generated here by
//!   two trusted CAs, one the connector names and one it does not.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use connector_relay::ops;
use connector_relay::trace::{self, EventKind, TraceQuery};
use support::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `[Relay]` with STARTTLS, `TrustedCaFile = ca`, the trace under `spool`.
fn relay_section(spool: &Path, ca: &str, accepted: &str) -> String {
    format!(
        r#"
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TlsCertificate = "{cert}"
TlsPrivateKey = "{key}"
TrustedCaFile = "{ca}"
AcceptedDomains = [{accepted}]
SpoolDir = "{spool}"
DataDir = "{spool}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{spool}/admin.token"
"#,
        cert = certs("relay.contoso.test.crt"),
        key = certs("relay.contoso.test.key"),
        spool = spool.display(),
    )
}

fn on_premises_config(spool: &Path, sink: SocketAddr) -> String {
    relay_section(
        spool,
        &certs("ca.crt"),
        r#""contoso.test", "northwind.test""#,
    ) + &format!(
        r#"
[[InboundConnector]]
Name = "Northwind on-premises"
ConnectorType = "OnPremises"
SenderDomains = ["northwind.test"]
SenderIPAddresses = ["127.0.0.40/32"]
RestrictDomainsToIPAddresses = true

[[InboundConnector]]
Name = "Contoso on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.41/32"]

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{sink}"]
"#
    )
}

/// MAIL FROM and RCPT TO from `from`, in plaintext; returns the RCPT reply (or the MAIL
/// reply when MAIL is refused).
async fn rcpt_reply(relay: SocketAddr, from: &str, sender: &str, rcpt: &str) -> String {
    let mut d = Dialog::connect_from(ip(from), relay).await;
    d.cmd("EHLO client.test", "250").await;
    let mail = d.cmd(&format!("MAIL FROM:<{sender}>"), "").await;
    if !mail.starts_with("250") {
        return mail;
    }
    let reply = d.cmd(&format!("RCPT TO:<{rcpt}>"), "").await;
    d.cmd("QUIT", "221").await;
    reply
}

#[tokio::test]
async fn on_premises_domains_are_refused_from_other_addresses() {
    let sink = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let text = on_premises_config(dir.path(), sink.addr());
    let policy = policy(&text);
    let relay = start_relay(&text, None).await;
    let addr = relay.smtp_addrs[0];
    let refused = |client: &str| {
        format!(
            "550 5.7.51 TenantInboundAttribution; connector \"Northwind on-premises\" restricts northwind.test to its IP addresses, and {client} is not one of them"
        )
    };
    // (client, sender, recipient, expected reply)
    let cases: Vec<(&str, &str, &str, String)> = vec![
        // From its own address: the organization's server, which may also relay.
        (
            "127.0.0.40",
            "app@northwind.test",
            "bob@contoso.test",
            "250 2.1.5 Recipient OK".into(),
        ),
        (
            "127.0.0.40",
            "app@northwind.test",
            "x@elsewhere.test",
            "250 2.1.5 Recipient OK".into(),
        ),
        // From anywhere else: anonymous, or another OnPremises connector's server.
        (
            "127.0.0.50",
            "spoof@northwind.test",
            "bob@contoso.test",
            refused("127.0.0.50"),
        ),
        (
            "127.0.0.50",
            "other@NorthWind.Test",
            "bob@northwind.test",
            refused("127.0.0.50"),
        ),
        (
            "127.0.0.41",
            "app@northwind.test",
            "x@elsewhere.test",
            refused("127.0.0.41"),
        ),
        // Other domains are not concerned (SenderDomains names northwind.test only).
        (
            "127.0.0.50",
            "a@mail.northwind.test",
            "bob@contoso.test",
            "250 2.1.5 Recipient OK".into(),
        ),
        (
            "127.0.0.50",
            "a@contoso.test",
            "bob@contoso.test",
            "250 2.1.5 Recipient OK".into(),
        ),
        (
            "127.0.0.41",
            "a@contoso.test",
            "x@elsewhere.test",
            "250 2.1.5 Recipient OK".into(),
        ),
        // The null sender has no domain.
        (
            "127.0.0.50",
            "",
            "bob@northwind.test",
            "250 2.1.5 Recipient OK".into(),
        ),
    ];
    for (client, sender, rcpt, want) in &cases {
        let got = rcpt_reply(addr, client, sender, rcpt).await;
        assert_eq!(&got, want, "{client} {sender} -> {rcpt}");
        // `explain` decides the same, naming the rule and the connector.
        let sender = if sender.is_empty() { "<>" } else { sender };
        let e = ops::explain(&policy, ip(client), None, sender, &strings(&[rcpt]));
        let v = &e.recipients[0].verdict;
        assert_eq!(&v.reply, want, "explain {client} {sender} -> {rcpt}");
        if !v.accepted {
            assert_eq!(v.rule.as_deref(), Some("RestrictDomainsToIPAddresses"));
            assert_eq!(v.connector.as_deref(), Some("Northwind on-premises"));
            assert!(
                e.recipients[0].why.contains("SenderDomains"),
                "{}",
                e.recipients[0].why
            );
        }
    }
    // The explainer's text names the rule too.
    let e = ops::explain(
        &policy,
        ip("127.0.0.50"),
        None,
        "spoof@northwind.test",
        &strings(&["bob@contoso.test"]),
    );
    assert!(
        e.to_text()
            .contains("is not one of them [RestrictDomainsToIPAddresses]"),
        "{}",
        e.to_text()
    );

    // A whole message from the on-premises server goes through.
    let mut d = Dialog::connect_from(ip("127.0.0.40"), addr).await;
    d.cmd("EHLO onprem.northwind.test", "250").await;
    d.send_message(
        "app@northwind.test",
        "bob@contoso.test",
        "Subject: from on-premises\r\n\r\nhello",
    )
    .await;
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;

    // The trace row of a refusal: the rule and the connector that refused.
    let rows = trace::query(
        dir.path(),
        &TraceQuery {
            sender: Some("spoof@northwind.test".into()),
            limit: 100,
            ..Default::default()
        },
    )
    .unwrap();
    let refusals: Vec<_> = rows
        .iter()
        .filter(|r| r.event == EventKind::Rejected)
        .collect();
    assert_eq!(refusals.len(), 1, "{rows:#?}");
    let r = refusals[0];
    assert_eq!(r.rule.as_deref(), Some("RestrictDomainsToIPAddresses"));
    assert_eq!(r.connector.as_deref(), Some("Northwind on-premises"));
    assert_eq!(r.client_ip.as_deref(), Some("127.0.0.50"));
    assert_eq!(r.recipient.as_deref(), Some("bob@contoso.test"));
    assert_eq!(r.reply.as_deref(), Some(refused("127.0.0.50").as_str()));
}

/// A CA and the client certificate it issued for mail.fabrikam.test, as PEM files in `dir`.
struct Issued {
    ca_pem: String,
    leaf: String,
    key: String,
}

fn issue(dir: &Path, tag: &str, ca_cn: &str) -> Issued {
    use rcgen::{
        BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let dn = |o: &str, cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, o);
        dn.push(DnType::CommonName, cn);
        dn
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name = dn("Fabrikam", ca_cn);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["mail.fabrikam.test".to_string()]).unwrap();
    leaf.distinguished_name = dn("Fabrikam", "mail.fabrikam.test");
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ClientAuth,
        ExtendedKeyUsagePurpose::ServerAuth,
    ];
    let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

    let write = |name: &str, pem: String| {
        let path = dir.join(format!("{tag}-{name}"));
        std::fs::write(&path, pem).unwrap();
        path.display().to_string()
    };
    Issued {
        ca_pem: ca_cert.pem(),
        leaf: write("leaf.crt", leaf_cert.pem()),
        key: write("leaf.key", leaf_key.serialize_pem()),
    }
}

fn issuer_config(spool: &Path, trusted: &str) -> String {
    relay_section(spool, trusted, r#""contoso.test""#)
        + r#"
[[InboundConnector]]
Name = "Fabrikam by issuer DN"
SenderDomains = ["fabrikam.test"]
RequireTls = true
TlsSenderCertificateIssuer = "CN=Fabrikam Issuing CA, O=Fabrikam"

[[InboundConnector]]
Name = "Woodgrove by issuer CN"
SenderDomains = ["woodgrove.test"]
RequireTls = true
TlsSenderCertificateIssuer = ["Some Other CA", "fabrikam issuing ca"]
"#
}

/// STARTTLS (presenting `cert` when given), MAIL FROM and RCPT TO; the RCPT reply.
async fn rcpt_under_tls(relay: SocketAddr, cert: Option<&Issued>, sender: &str) -> String {
    let mut d = Dialog::connect_from(ip("127.0.0.60"), relay).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("STARTTLS", "220").await;
    let mut t = d
        .starttls(
            "relay.contoso.test",
            cert.map(|c| (c.leaf.as_str(), c.key.as_str())),
        )
        .await;
    t.cmd("EHLO client.test", "250").await;
    t.cmd(&format!("MAIL FROM:<{sender}>"), "250").await;
    let reply = t.cmd("RCPT TO:<bob@contoso.test>", "").await;
    t.cmd("QUIT", "221").await;
    reply
}

#[tokio::test]
async fn tls_sender_certificate_issuer_with_real_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let right = issue(dir.path(), "right", "Fabrikam Issuing CA");
    let other = issue(dir.path(), "other", "Fabrikam Other CA");
    // Both CAs are trusted: the other one's certificate counts, but is not the issuer asked.
    let trusted = dir.path().join("trusted.pem");
    std::fs::write(&trusted, format!("{}{}", right.ca_pem, other.ca_pem)).unwrap();
    let spool = dir.path().join("spool");
    let text = issuer_config(&spool, &trusted.display().to_string());
    let policy = policy(&text);
    let relay = start_relay(&text, None).await;
    let addr = relay.smtp_addrs[0];

    let wanted_dn = "\"CN=Fabrikam Issuing CA, O=Fabrikam\"";
    let refused = |connector: &str, wanted: &str, problem: &str| {
        format!(
            "550 5.7.51 TenantInboundAttribution; connector \"{connector}\" requires a certificate issued by {wanted}: {problem}"
        )
    };
    let ok = "250 2.1.5 Recipient OK".to_string();
    let woodgrove_wanted = "\"Some Other CA\" or \"fabrikam issuing ca\"";
    let other_issuer =
        "the certificate presented was issued by \"O=Fabrikam, CN=Fabrikam Other CA\"";
    let none = "no client certificate was presented";
    let cases: Vec<(Option<&Issued>, &str, String)> = vec![
        (Some(&right), "a@fabrikam.test", ok.clone()),
        (
            Some(&other),
            "a@fabrikam.test",
            refused("Fabrikam by issuer DN", wanted_dn, other_issuer),
        ),
        (
            None,
            "a@fabrikam.test",
            refused("Fabrikam by issuer DN", wanted_dn, none),
        ),
        // The issuer's CN alone, in another case, is enough.
        (Some(&right), "a@woodgrove.test", ok.clone()),
        (
            Some(&other),
            "a@woodgrove.test",
            refused("Woodgrove by issuer CN", woodgrove_wanted, other_issuer),
        ),
    ];
    for (cert, sender, want) in &cases {
        let got = rcpt_under_tls(addr, *cert, sender).await;
        assert_eq!(&got, want, "{sender} with {:?}", cert.map(|c| &c.leaf));
        // `explain` with the same certificate file decides the same.
        let bytes = cert.map(|c| std::fs::read(&c.leaf).unwrap());
        let e = ops::explain(
            &policy,
            ip("127.0.0.60"),
            bytes.as_deref(),
            sender,
            &strings(&["bob@contoso.test"]),
        );
        let v = &e.recipients[0].verdict;
        assert_eq!(&v.reply, want, "explain {sender}");
        if !v.accepted {
            assert_eq!(v.rule.as_deref(), Some("TlsSenderCertificateIssuer"));
        }
    }

    // In plaintext, RequireTls answers first (the certificate needs TLS).
    let mut d = Dialog::connect_from(ip("127.0.0.60"), addr).await;
    d.cmd("EHLO client.test", "250").await;
    d.cmd("MAIL FROM:<a@fabrikam.test>", "451 5.7.3").await;
    d.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}
