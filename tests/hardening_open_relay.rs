//! The open-relay battery (nmap `smtp-open-relay` cases) from an anonymous client:
//! every sender × every recipient trick must be refused at RCPT with a clear code, and no
//! message may reach the foreign domain's server (nor the accepted domain's, since nothing
//! is accepted).
//!
//! `cargo test --test hardening_open_relay -- --nocapture` prints the figures.

mod support;

use std::time::Duration;

use support::*;

/// S: the relay's accepted domain; D: a foreign domain with its own (sink) server.
const S: &str = "contoso.test";
const D: &str = "foreign.test";
const IP: &str = "127.0.0.1";

#[tokio::test]
async fn open_relay_battery_relays_nothing() {
    let s_sink = start_sink().await;
    let d_sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    // D has a route (a smart host of its own), so anything the relay let through would
    // really arrive there.
    let extra = format!(
        "[[OutboundConnector]]\nName = \"To {D}\"\n\
         ConnectorType = \"Partner\"\nRecipientDomains = [\"{D}\"]\nUseMXRecord = false\n\
         SmartHosts = [\"{}\"]\n",
        d_sink.addr()
    );
    let toml = relay_config(tmp.path(), s_sink.addr(), "MaxProtocolErrors = 1000").replace(
        "[[OutboundConnector]]\nName = \"To on-premises\"",
        &format!("{extra}\n[[OutboundConnector]]\nName = \"To on-premises\""),
    );
    let relay = start_relay(&toml, None).await;

    let senders = [
        "<>".to_string(),
        format!("<from@{D}>"),
        format!("<from@{S}>"),
        format!("<from@[{IP}]>"),
    ];
    let recipients = [
        format!("<to%{D}@[{IP}]>"),
        format!("<to%{D}@{S}>"),
        format!("<\"to@{D}\">"),
        format!("<\"to%{D}\">"),
        format!("<\"to@{D}\"@[{IP}]>"),
        format!("<to@{D}@{S}>"),
        format!("<@[{IP}]:to@{D}>"),
        format!("<{D}!to>"),
        format!("<{D}!to@[{IP}]>"),
        format!("<to@[{IP}]>"),
        format!("<to@{D}>"),
        // The same tricks aimed through the accepted domain.
        format!("<\"to@{D}\"@{S}>"),
        format!("<\"to%{D}\"@{S}>"),
        format!("<{D}!to@{S}>"),
        format!("<@{S}:to@{D}>"),
    ];

    let mut d = Dialog::connect(relay.smtp_addrs[0]).await;
    d.cmd("EHLO client.test", "250").await;
    let mut tried = 0;
    let mut accepted = Vec::new();
    for from in &senders {
        for to in &recipients {
            tried += 1;
            d.cmd(&format!("MAIL FROM:{from}"), "250 2.1.0").await;
            d.send(format!("RCPT TO:{to}\r\n").as_bytes()).await;
            let reply = d.read_reply().await;
            println!("MAIL FROM:{from} RCPT TO:{to} -> {reply}");
            if reply.starts_with("250") {
                accepted.push(format!("{from} -> {to}"));
                // Let it try: DATA, so the assertion on the sinks is meaningful.
                d.cmd("DATA", "354").await;
                d.cmd("Subject: relay test\r\n\r\nrelay test\r\n.", "250")
                    .await;
            } else {
                assert!(
                    ["501 5.5.4 ", "550 5.7.64 ", "550 5.7.1 ", "550 5.1."]
                        .iter()
                        .any(|c| reply.starts_with(c)),
                    "unclear refusal for {from} -> {to}: {reply}"
                );
                d.cmd("RSET", "250").await;
            }
        }
    }
    d.cmd("QUIT", "221").await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let to_d = messages(d_sink.maildir()).len();
    let to_s = messages(s_sink.maildir()).len();
    println!(
        "{tried} combinations tried, {to_d} relayed ({} accepted at RCPT, {to_s} delivered to {S})",
        accepted.len()
    );
    // Control: the route to D works, so a relayed message would have been seen there.
    let mut c = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    c.cmd("EHLO onprem.contoso.test", "250").await;
    c.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    c.cmd(&format!("RCPT TO:<to@{D}>"), "250").await;
    c.cmd("DATA", "354").await;
    c.cmd("Subject: control\r\n\r\ncontrol\r\n.", "250").await;
    c.cmd("QUIT", "221").await;
    let control = wait_messages(d_sink.maildir(), 1, Duration::from_secs(30)).await;
    assert_eq!(control.len(), 1, "the control message reaches {D}");
    relay.shutdown(Duration::from_secs(5)).await;
    assert!(accepted.is_empty(), "accepted: {accepted:#?}");
    assert_eq!(to_d, 0);
    assert_eq!(to_s, 0);
}

/// An OnPremises client (127.0.0.10) may still use such local parts: the downstream it
/// relays for is trusted (Postfix's `allow_untrusted_routing` concerns untrusted clients).
#[tokio::test]
async fn on_premises_client_may_use_routing_characters() {
    let sink = start_sink().await;
    let tmp = tempfile::tempdir().unwrap();
    let relay = start_relay(&relay_config(tmp.path(), sink.addr(), ""), None).await;
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO onprem.contoso.test", "250").await;
    d.cmd("MAIL FROM:<app@contoso.test>", "250").await;
    d.cmd("RCPT TO:<list%team@contoso.test>", "250 2.1.5").await;
    d.cmd("QUIT", "221").await;
    let mut a = Dialog::connect(relay.smtp_addrs[0]).await;
    a.cmd("EHLO client.test", "250").await;
    a.cmd("MAIL FROM:<a@fabrikam.test>", "250").await;
    a.cmd("RCPT TO:<list%team@contoso.test>", "550 5.7.1").await;
    a.cmd("RCPT TO:<team@contoso.test>", "250 2.1.5").await;
    a.cmd("QUIT", "221").await;
    relay.shutdown(Duration::from_secs(5)).await;
}
