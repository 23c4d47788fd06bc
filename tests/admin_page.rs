//! The admin web page in a real headless Chromium (Debian's `chromium`, driven over
//! WebDriver by `chromedriver`, both installed by `scripts/install-deps.sh`): sign in with
//! the token, see the connectors of the config file, disable one and see the change in the
//! API and the file, search the trace for a message that went through the relay, and look at
//! the queue; suspend and resume a delivery queue in Retry in the Queues view; import a
//! pasted connector script with a preview before applying it. The browser and the page
//! actions are in `support/browser.rs`; the screenshots land in the target dir (and in
//! `docs/` with `UPDATE_SCREENSHOTS=1`).

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::{Value, json};
use support::browser::*;
use support::http::{http, start_relay_from_file, until};
use support::*;

fn config_text(dir: &Path, onprem: SocketAddr) -> String {
    format!(
        r#"# The lab config the page shows (comments must survive changes made on the page).
[Relay]
Fqdn = "relay.contoso.test"
Listen = ["127.0.0.1:0"]
TlsCertificate = "{cert}"
TlsPrivateKey = "{key}"
AcceptedDomains = ["contoso.test"]
SpoolDir = "{dir}/spool"
DataDir = "{dir}"
AdminListen = "127.0.0.1:0"
AdminTokenFile = "{dir}/admin.token"

# Our own mail servers.
[[InboundConnector]]
Name = "From on-premises"
ConnectorType = "OnPremises"
SenderIPAddresses = ["127.0.0.10/32"]

# A partner that must use TLS.
[[InboundConnector]]
Name = "Partner fabrikam"
SenderDomains = ["fabrikam.test"]
SenderIPAddresses = ["127.0.0.20/32"]
RequireTls = true

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["{onprem}"]
ValidationRecipients = ["postmaster@contoso.test"]
"#,
        cert = certs("relay.contoso.test.crt"),
        key = certs("relay.contoso.test.key"),
        dir = dir.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_lists_toggles_and_traces() {
    let sink = start_sink().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(&config, config_text(dir.path(), sink.addr())).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");

    // A message through the relay, from the on-premises server, for the trace search.
    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO app.contoso.test", "250").await;
    d.send_message(
        "page-test@contoso.test",
        "bob@contoso.test",
        "Subject: seen on the page\r\nMessage-ID: <page-test@contoso.test>\r\n\r\nhello",
    )
    .await;
    d.cmd("QUIT", "221").await;
    let got = wait_messages(sink.maildir(), 1, WAIT).await;
    assert_eq!(got.len(), 1, "relayed to the sink");

    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    let result = async {
        c.goto(&format!("http://{admin}/")).await.unwrap();

        // A wrong token is refused and the form stays.
        type_into(&c, "#token", "not-the-token").await;
        click(&c, "#login").await;
        wait_for_text(&c, "#login-error", "refused").await;

        type_into(&c, "#token", &token).await;
        click(&c, "#login").await;
        wait_for_text(&c, "#connectors tbody tr", "Partner fabrikam").await;
        let rows = c
            .find_all(Locator::Css("#connectors tbody tr"))
            .await
            .unwrap();
        assert_eq!(rows.len(), 3, "every connector of the config is listed");
        let partner = "#connectors tbody tr[data-name='Partner fabrikam']";
        let row = text(&c, partner).await;
        for want in [
            "Inbound",
            "Partner",
            "Enabled",
            "fabrikam.test",
            "127.0.0.20/32",
            "Required",
        ] {
            assert!(row.contains(want), "{want:?} in the partner row: {row:?}");
        }
        let onprem = text(&c, "#connectors tbody tr[data-name='From on-premises']").await;
        assert!(onprem.contains("On-premises"), "{onprem:?}");

        // Disable the partner on the page: the API and the file say so.
        click(&c, &format!("{partner} button.toggle")).await;
        wait_for_text(&c, &format!("{partner} td.status"), "Disabled").await;
        let list = http(admin, "GET", "/api/exchange/connectors", Some(&token), None).await;
        let listed: Value = list.json();
        let p = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["Name"] == "Partner fabrikam")
            .expect("listed")
            .clone();
        assert_eq!(p["Enabled"], json!(false), "{p}");
        let file = std::fs::read_to_string(&config).unwrap();
        assert!(file.contains("Enabled = false"), "{file}");
        assert!(
            file.contains("# A partner that must use TLS."),
            "comments kept: {file}"
        );

        // Validate the outbound connector: the report shows on the page, the result is
        // recorded in the file.
        let outbound = "#connectors tbody tr[data-name='To on-premises']";
        click(&c, &format!("{outbound} button.validate")).await;
        wait_for_text(&c, "#report-title", "succeeded").await;
        let steps = text(&c, "#report-steps").await;
        for want in ["Route", "Connect", "Reply: ", "250"] {
            assert!(steps.contains(want), "{want:?} in the report: {steps}");
        }
        let file = std::fs::read_to_string(&config).unwrap();
        assert!(file.contains("IsValidated = true"), "{file}");
        // The list shows it (IsValidated and LastValidationTimestamp).
        wait_for_text(&c, &format!("{outbound} td.validated"), "Yes, 20").await;
        let png = c.screenshot().await.unwrap();
        let shot = save_screenshot(&png, "admin-connectors.png");

        // Search the trace for the message sent above.
        click(&c, "#tabs button[data-tab='trace']").await;
        type_into(&c, "#trace-sender", "page-test@contoso.test").await;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            click(&c, "#trace-search").await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            let events: Vec<String> = {
                let mut v = Vec::new();
                for e in c
                    .find_all(Locator::Css("#trace-results td.event"))
                    .await
                    .unwrap()
                {
                    v.push(e.text().await.unwrap());
                }
                v
            };
            if events.iter().any(|e| e == "Received") && events.iter().any(|e| e == "Delivered") {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "trace rows on the page: {events:?}"
            );
        }
        let received = text(&c, "#trace-results tr.event-Received").await;
        assert!(received.contains("127.0.0.10"), "{received}");
        assert!(received.contains("From on-premises"), "{received}");
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-trace.png");

        // The queue view answers (empty: the message was delivered).
        click(&c, "#tabs button[data-tab='queue']").await;
        wait_for_text(&c, "#message", "0 messages in the queue").await;
        shot
    }
    .await;
    c.close().await.unwrap();
    println!("screenshot: {}", result.display());
    relay.shutdown(Duration::from_secs(5)).await;
}

/// The `Status` of the only delivery queue, from the API.
async fn api_queue_status(admin: SocketAddr, token: &str) -> Value {
    let list = http(admin, "GET", "/api/queues", Some(token), None)
        .await
        .json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    list[0]["Status"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queues_view_suspends_and_resumes_a_queue_in_retry() {
    // The on-premises smart host is a port nothing listens on: its queue goes to Retry.
    let refused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    // One queued message is back pressure Medium: the page shows it in a banner. The disk
    // thresholds are set far below any machine's free space, so that the banner names the
    // queue alone whatever the disk the test runs on has left.
    let lab = config_text(dir.path(), refused).replacen(
        "[Relay]\n",
        "[Relay]\nQueueLengthMediumThreshold = 1\nDiskSpaceHighThreshold = \"1MB\"\n\
         DiskSpaceMediumThreshold = \"2MB\"\nDiskSpaceNormalThreshold = \"3MB\"\n",
        1,
    );
    std::fs::write(&config, lab).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");

    let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), relay.smtp_addrs[0]).await;
    d.cmd("EHLO app.contoso.test", "250").await;
    d.send_message(
        "queued@contoso.test",
        "bob@contoso.test",
        "Subject: waits in Retry\r\n\r\nhello",
    )
    .await;
    d.cmd("QUIT", "221").await;
    let (a, t) = (admin, token.as_str());
    until("the queue in Retry", || async move {
        (api_queue_status(a, t).await == "Retry").then_some(())
    })
    .await;

    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    async {
        c.goto(&format!("http://{admin}/")).await.unwrap();
        type_into(&c, "#token", &token).await;
        click(&c, "#login").await;
        wait_for_text(&c, "#connectors tbody tr", "To on-premises").await;

        // The Queues view: the queue, its next hop, connector, Retry and the error.
        click(&c, "#tabs button[data-tab='queues']").await;
        let row = "#queues tbody tr";
        wait_for_text(&c, &format!("{row} td.status"), "Retry").await;
        let text_of_row = text(&c, row).await;
        for want in [
            "relay.contoso.test\\",
            "SmartHostConnectorDelivery",
            &refused.to_string(),
            "To on-premises",
            "Connection refused",
        ] {
            assert!(text_of_row.contains(want), "{want:?} in {text_of_row:?}");
        }
        wait_for_text(
            &c,
            "#back-pressure",
            "Back pressure Medium: new mail gets 452 4.3.1 except from OnPremises connectors (queue Medium: queued messages 1",
        )
        .await;
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-queues.png");

        // Suspend: the page and the API say Suspended; Resume: back to Retry.
        click(&c, &format!("{row} button.suspend")).await;
        wait_for_text(&c, &format!("{row} td.status"), "Suspended").await;
        assert_eq!(api_queue_status(admin, &token).await, "Suspended");
        click(&c, &format!("{row} button.resume")).await;
        wait_for_text(&c, &format!("{row} td.status"), "Retry").await;
        assert_eq!(api_queue_status(admin, &token).await, "Retry");

        // The Messages view: Status, the queue, and Suspend/Resume of the message.
        click(&c, "#tabs button[data-tab='queue']").await;
        let msg = "#queue tbody tr";
        wait_for_text(&c, msg, "queued@contoso.test").await;
        let m = text(&c, msg).await;
        assert!(
            m.contains("Retry") && m.contains("relay.contoso.test\\"),
            "{m}"
        );
        click(&c, &format!("{msg} button.suspend")).await;
        wait_for_text(&c, &format!("{msg} td.status"), "Suspended").await;
        let list = http(admin, "GET", "/api/queue", Some(&token), None)
            .await
            .json();
        assert_eq!(list[0]["Status"], "Suspended", "{list}");
        click(&c, &format!("{msg} button.resume")).await;
        wait_for_text(&c, &format!("{msg} td.status"), "Retry").await;
    }
    .await;
    c.close().await.unwrap();
    relay.shutdown(Duration::from_secs(5)).await;
}

/// A pasted script is previewed (whatIf: nothing written), then applied: the connectors
/// change live, the file keeps its comments; a bad value is shown with its pasted line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_imports_a_pasted_script_after_a_preview() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let unused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(&config, config_text(dir.path(), unused)).unwrap();
    let before = std::fs::read_to_string(&config).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");

    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    async {
        c.goto(&format!("http://{admin}/")).await.unwrap();
        type_into(&c, "#token", &token).await;
        click(&c, "#login").await;
        wait_for_text(&c, "#connectors tbody tr", "Partner fabrikam").await;

        // A value the relay cannot take: the error names the pasted line.
        type_into(&c, "#import-text", "# from the tenant\nNew-InboundConnector -Name Bad -SenderDomains 'mail.*.x.test'").await;
        click(&c, "#import-preview").await;
        wait_for_text(&c, "#import-errors li", "pasted:2: SenderDomains").await;
        assert!(c.find(Locator::Css("#import-apply")).await.unwrap().attr("disabled").await.unwrap().is_some());

        c.find(Locator::Css("#import-text")).await.unwrap().clear().await.unwrap();
        type_into(
            &c,
            "#import-text",
            "Set-InboundConnector 'Partner fabrikam' -RequireTls $false -EFSkipLastIP $true\nNew-OutboundConnector -Name 'To Fabrikam' -RecipientDomains fabrikam.test `\n  -TlsSettings DomainValidation -TlsDomain mail.fabrikam.test",
        )
        .await;
        click(&c, "#import-preview").await;
        wait_for_text(&c, "#import-changes li", "New OutboundConnector \"To Fabrikam\"").await;
        wait_for_text(&c, "#import-changes li", "RequireTls: true \u{2192} false").await;
        wait_for_text(&c, "#import-dropped li", "EFSkipLastIP").await;
        wait_for_text(&c, "#message", "nothing was written").await;
        assert_eq!(std::fs::read_to_string(&config).unwrap(), before, "whatIf wrote nothing");
        let listed = http(admin, "GET", "/api/exchange/connectors", Some(&token), None).await.json();
        assert_eq!(listed.as_array().map(Vec::len), Some(3), "whatIf applied nothing");
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-import.png");

        click(&c, "#import-apply").await;
        wait_for_text(&c, "#connectors tbody tr", "To Fabrikam").await;
        wait_for_text(&c, "#message", "the change is live").await;
        let file = std::fs::read_to_string(&config).unwrap();
        assert!(file.contains("# A partner that must use TLS."), "comments kept: {file}");
        assert!(file.contains("RequireTls = false"), "{file}");
        assert!(file.contains("Name = \"To Fabrikam\""), "{file}");
        assert!(file.contains("dropped EFSkipLastIP = $true"), "the dropped parameter is a comment: {file}");
        let listed = http(admin, "GET", "/api/exchange/connectors", Some(&token), None).await.json();
        assert_eq!(listed.as_array().map(Vec::len), Some(4), "{listed}");
    }
    .await;
    c.close().await.unwrap();
    relay.shutdown(Duration::from_secs(5)).await;
}

/// The connector editor: create a "From partner" connector through the form (a bad IP
/// shows its error next to the field, the preview shows the TOML block before Save), see
/// it in the list and in force, edit it (prefilled), delete it after the confirmation;
/// create the email security gateway pair in one change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_creates_edits_and_deletes_connectors_by_scenario() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let unused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(&config, config_text(dir.path(), unused)).unwrap();
    let original = std::fs::read_to_string(&config).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");
    let smtp = relay.smtp_addrs[0];
    let file = || std::fs::read_to_string(&config).unwrap();

    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    async {
        c.set_window_size(1400, 1300).await.unwrap();
        c.goto(&format!("http://{admin}/")).await.unwrap();
        type_into(&c, "#token", &token).await;
        click(&c, "#login").await;
        wait_for_text(&c, "#connectors tbody tr", "To on-premises").await;
        let validated = "#connectors tbody tr[data-name='To on-premises'] td.validated";
        assert_eq!(text(&c, validated).await, "Not validated");
        let inbound = "#connectors tbody tr[data-name='From on-premises'] td.validated";
        assert_eq!(text(&c, inbound).await, "\u{2014}");

        // New connector, scenario "From partner"; a bad address is refused on blur, next
        // to its field, and Save stays disabled.
        click(&c, "#new-connector").await;
        click(&c, "#editor button[data-scenario='from-partner']").await;
        // The issuer field is there (its value is the relay's to accept: left empty here).
        c.find(Locator::Css(&field("TlsSenderCertificateIssuer")))
            .await
            .expect("a certificate issuer field");
        type_into(&c, &field("Name"), "Partner Woodgrove").await;
        type_into(&c, &field("SenderDomains"), "woodgrove.test").await;
        type_into(&c, &field("SenderIPAddresses"), "127.0.0.300/32\u{e004}").await;
        let ip_error = "#editor .field[data-key='SenderIPAddresses'] .field-error";
        wait_for_text(&c, ip_error, "127.0.0.300/32").await;
        let save = "#editor button.save";
        let disabled = c
            .find(Locator::Css(save))
            .await
            .unwrap()
            .attr("disabled")
            .await
            .unwrap();
        assert!(disabled.is_some(), "Save with an error in the form");
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-editor-error.png");

        // Fixed: the preview shows the block the file would get; nothing is written yet.
        c.find(Locator::Css(&field("SenderIPAddresses")))
            .await
            .unwrap()
            .clear()
            .await
            .unwrap();
        type_into(&c, &field("SenderIPAddresses"), "127.0.0.40/32").await;
        click(&c, &field("RestrictDomainsToIPAddresses")).await;
        click(&c, "#editor button.check").await;
        wait_for_text(
            &c,
            "#editor-diff",
            "SenderIPAddresses = [\"127.0.0.40/32\"]",
        )
        .await;
        let preview = text(&c, "#editor-diff").await;
        for want in [
            "+[[InboundConnector]]",
            "+Name = \"Partner Woodgrove\"",
            "+ConnectorType = \"Partner\"",
            "+SenderDomains = [\"woodgrove.test\"]",
            "+RestrictDomainsToIPAddresses = true",
            "+RequireTls = true",
        ] {
            assert!(
                preview.contains(want),
                "{want:?} in the preview:\n{preview}"
            );
        }
        assert_eq!(text(&c, ip_error).await, "", "the error went");
        wait_enabled(&c, save).await;
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-editor.png");
        assert_eq!(file(), original, "the preview wrote the file");

        // Save: listed, written with the comments kept, and in force for the next session.
        click(&c, save).await;
        let row = "#connectors tbody tr[data-name='Partner Woodgrove']";
        wait_for_text(&c, row, "woodgrove.test").await;
        wait_for_text(
            &c,
            "#message",
            "Created Partner Woodgrove; the change is live",
        )
        .await;
        let written = file();
        assert!(
            written.contains("# A partner that must use TLS."),
            "{written}"
        );
        assert!(
            written.contains("SenderIPAddresses = [\"127.0.0.40/32\"]"),
            "{written}"
        );
        let mut d = Dialog::connect_from("127.0.0.41".parse().unwrap(), smtp).await;
        d.cmd("EHLO mail.woodgrove.test", "250").await;
        d.send(b"MAIL FROM:<a@woodgrove.test>\r\nRCPT TO:<bob@contoso.test>\r\n")
            .await;
        let replies = format!("{} {}", d.read_reply().await, d.read_reply().await);
        assert!(
            replies.contains("connector \"Partner Woodgrove\""),
            "{replies}"
        );

        // Edit: prefilled from the API; two changes, previewed, saved.
        click(&c, &format!("{row} button.edit")).await;
        wait_for_text(&c, "#editor h3", "Edit inbound connector").await;
        assert_eq!(value(&c, &field("Name")).await, "Partner Woodgrove");
        assert_eq!(value(&c, &field("SenderDomains")).await, "woodgrove.test");
        assert_eq!(
            value(&c, &field("SenderIPAddresses")).await,
            "127.0.0.40/32"
        );
        let require_tls = c.find(Locator::Css(&field("RequireTls"))).await.unwrap();
        assert!(
            require_tls.is_selected().await.unwrap(),
            "RequireTls prefilled"
        );
        type_into(&c, &field("SenderDomains"), ", *.woodgrove.test").await;
        click(&c, &field("RequireTls")).await;
        click(&c, "#editor button.check").await;
        wait_for_text(&c, "#editor-diff", "+RequireTls = false").await;
        let preview = text(&c, "#editor-diff").await;
        assert!(
            preview.contains("+SenderDomains = [\"woodgrove.test\", \"*.woodgrove.test\"]"),
            "{preview}"
        );
        wait_enabled(&c, save).await;
        click(&c, save).await;
        wait_for_text(&c, "#message", "Saved Partner Woodgrove").await;
        let written = file();
        assert!(written.contains("RequireTls = false"), "{written}");
        assert!(
            written.contains("SenderDomains = [\"woodgrove.test\", \"*.woodgrove.test\"]"),
            "{written}"
        );

        // Delete: the confirmation shows the lines that go; confirmed, the connector is gone.
        click(&c, &format!("{row} button.delete")).await;
        wait_for_text(&c, "#delete-confirm pre", "-Name = \"Partner Woodgrove\"").await;
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-editor-delete.png");
        assert!(file().contains("Partner Woodgrove"), "asking deleted");
        click(&c, "#delete-confirm button.confirm-delete").await;
        wait_for_text(&c, "#message", "Deleted Partner Woodgrove").await;
        wait_gone(&c, row).await;
        let written = file();
        assert!(!written.contains("Woodgrove"), "{written}");
        assert_eq!(
            written, original,
            "back to the file as it was, comments and all"
        );
        let r = http(
            admin,
            "GET",
            "/api/exchange/connectors/Partner%20Woodgrove",
            Some(&token),
            None,
        )
        .await;
        assert_eq!(r.status, 404, "{}", r.body);

        // The email security gateway: two connectors from one form, in one change.
        click(&c, "#new-connector").await;
        click(&c, "#editor button[data-scenario='gateway']").await;
        type_into(&c, "#f-all-Name", "Shield").await;
        type_into(&c, &field("SenderIPAddresses"), "127.0.0.50").await;
        type_into(&c, &field("SmartHosts"), "127.0.0.51:2525").await;
        click(&c, "#editor button.check").await;
        wait_for_text(&c, "#editor-diff", "+Name = \"To Shield\"").await;
        wait_for_text(&c, "#editor-diff", "+Name = \"From Shield\"").await;
        wait_enabled(&c, save).await;
        click(&c, save).await;
        wait_for_text(&c, "#message", "Created From Shield and To Shield").await;
        wait_for_text(
            &c,
            "#connectors tbody tr[data-name='To Shield']",
            "* via 127.0.0.51:2525",
        )
        .await;
        let list = http(admin, "GET", "/api/exchange/connectors", Some(&token), None)
            .await
            .json();
        let from = list
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["Name"] == "From Shield")
            .unwrap();
        assert_eq!(from["RestrictDomainsToIPAddresses"], true, "{from}");
        assert_eq!(from["SenderDomains"], json!(["*"]), "{from}");
        assert_eq!(from["SenderIPAddresses"], json!(["127.0.0.50"]), "{from}");
    }
    .await;
    c.close().await.unwrap();
    relay.shutdown(Duration::from_secs(5)).await;
}

/// How many transactions the trace of `data_dir` holds (its `Session` rows).
fn recorded_transactions(data_dir: &Path) -> usize {
    let mut n = 0;
    let range = connector_relay::trace::facts::SessionRange {
        since_ms: 0,
        until_ms: i64::MAX,
        after_id: 0,
    };
    let _ = connector_relay::trace::facts::read_sessions(data_dir, range, |_| n += 1);
    n
}

/// The on-premises server's mail: two senders relaying to partners, one local message.
const ONPREM_MAIL: [(&str, &str); 4] = [
    ("app1@contoso.test", "x@fabrikam.test"),
    ("app2@contoso.test", "y@example.net"),
    ("app1@contoso.test", "z@fabrikam.test"),
    ("app3@contoso.test", "bob@contoso.test"),
];

/// Sends [`ONPREM_MAIL`] from the on-premises address; the replies to RCPT TO.
async fn send_onprem_mail(smtp: SocketAddr) -> Vec<String> {
    let mut replies = Vec::new();
    for (from, to) in ONPREM_MAIL {
        let mut d = Dialog::connect_from("127.0.0.10".parse().unwrap(), smtp).await;
        d.cmd("EHLO app.contoso.test", "250").await;
        d.cmd(&format!("MAIL FROM:<{from}>"), "250").await;
        let reply = d.cmd(&format!("RCPT TO:<{to}>"), "").await;
        if reply.starts_with("250") {
            d.cmd("DATA", "354").await;
            d.send(b"Subject: impact\r\n\r\nhello\r\n.\r\n").await;
            d.expect("250", "end of DATA").await;
        }
        d.cmd("QUIT", "221").await;
        replies.push(reply);
    }
    replies
}

/// The editor's preview shows a change's impact on the recorded mail before it is saved:
/// narrowing the on-premises addresses would refuse the relayed messages (the sentence and
/// the senders with their counts), and widening them to everything says OPENS RELAY. Saved,
/// the narrowing refuses exactly what the preview said.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_editor_previews_a_changes_impact_on_recorded_mail() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("relay.toml");
    let unused = SocketAddr::from(([127, 0, 0, 1], free_port()));
    std::fs::write(&config, config_text(dir.path(), unused)).unwrap();
    let (relay, token) = start_relay_from_file(&config, dir.path()).await;
    let admin = relay.admin_addr.expect("admin listener");
    let smtp = relay.smtp_addrs[0];
    let before = send_onprem_mail(smtp).await;
    assert!(before.iter().all(|r| r.starts_with("250")), "{before:?}");
    let data_dir = dir.path().to_path_buf();
    until("the trace has the transactions", || {
        let d = data_dir.clone();
        async move { (recorded_transactions(&d) >= ONPREM_MAIL.len()).then_some(()) }
    })
    .await;

    let driver = chromedriver().await;
    let profile = tempfile::tempdir().unwrap();
    let c = browser(&driver, profile.path()).await;
    async {
        c.set_window_size(1400, 1300).await.unwrap();
        c.goto(&format!("http://{admin}/")).await.unwrap();
        type_into(&c, "#token", &token).await;
        click(&c, "#login").await;
        let row = "#connectors tbody tr[data-name='From on-premises']";
        wait_for_text(&c, row, "127.0.0.10/32").await;

        // Narrow the on-premises address: the relayed messages would be refused.
        click(&c, &format!("{row} button.edit")).await;
        wait_for_text(&c, "#editor h3", "Edit inbound connector").await;
        let ips = field("SenderIPAddresses");
        c.find(Locator::Css(&ips)).await.unwrap().clear().await.unwrap();
        type_into(&c, &ips, "127.0.0.11/32").await;
        click(&c, "#editor button.check").await;
        wait_for_text(
            &c,
            "#editor-impact .impact-summary",
            "This change would have refused 3 messages from 2 senders in the last 7 days: app1@contoso.test (2), app2@contoso.test (1).",
        )
        .await;
        let table = text(&c, "#editor-impact table").await;
        for want in [
            "Refused at RCPT",
            "RelayWithoutOnPremisesAttribution",
            "app1@contoso.test 2 2 2",
            "app2@contoso.test 1 1 1",
        ] {
            assert!(table.contains(want), "{want:?} in the impact table:\n{table}");
        }
        assert!(!table.contains("app3@contoso.test"), "local mail stays accepted:\n{table}");
        assert!(
            c.find_all(Locator::Css("#editor-impact .impact-relay")).await.unwrap().is_empty(),
            "narrowing opens nothing"
        );
        c.execute(
            "document.getElementById('editor-preview').scrollIntoView()",
            vec![],
        )
        .await
        .unwrap();
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-whatif.png");

        // Everything as on-premises: an open relay, said first and loudly.
        c.find(Locator::Css(&ips)).await.unwrap().clear().await.unwrap();
        type_into(&c, &ips, "0.0.0.0/0").await;
        click(&c, "#editor button.check").await;
        wait_for_text(&c, "#editor-impact .impact-relay", "OPENS RELAY").await;
        wait_for_text(&c, "#editor-impact .impact-relay", "Anyone, from any address, could relay").await;
        let png = c.screenshot().await.unwrap();
        save_screenshot(&png, "admin-whatif-relay.png");

        // Saved narrowed: the live relay refuses what the preview listed, and only that.
        c.find(Locator::Css(&ips)).await.unwrap().clear().await.unwrap();
        type_into(&c, &ips, "127.0.0.11/32").await;
        click(&c, "#editor button.check").await;
        wait_for_text(&c, "#editor-impact .impact-summary", "refused 3 messages").await;
        wait_enabled(&c, "#editor button.save").await;
        click(&c, "#editor button.save").await;
        wait_for_text(&c, "#message", "Saved From on-premises").await;
    }
    .await;
    c.close().await.unwrap();
    let after = send_onprem_mail(smtp).await;
    let refused: Vec<&str> = ONPREM_MAIL
        .iter()
        .zip(&after)
        .filter(|(_, r)| r.starts_with("550 5.7.64"))
        .map(|((from, _), _)| *from)
        .collect();
    assert_eq!(
        refused,
        [
            "app1@contoso.test",
            "app2@contoso.test",
            "app1@contoso.test"
        ],
        "{after:?}"
    );
    assert!(after[3].starts_with("250"), "{after:?}");
    relay.shutdown(Duration::from_secs(5)).await;
}
