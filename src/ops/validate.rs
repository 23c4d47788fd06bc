//! Connector validation (Exchange's `Validate-OutboundConnector`): send a real test message
//! through one connector and report every step — route, next hops, connection, TLS,
//! certificate checks, the remote reply.
//!
//! Choices:
//! - **Which connectors**: Outbound connectors (what Exchange validates) and Send connectors
//!   (same machinery; useful before relying on a smart host). Only Outbound connectors have
//!   `ValidationRecipients`, `IsValidated` and `LastValidationTimestamp`: a Send connector
//!   needs explicit recipients and nothing is recorded for it.
//! - **The route is forced**: every recipient goes through the named connector, even when
//!   route selection would pick another one for its domain, and even when the connector is
//!   disabled or in TestMode — validation proves that *this* connector works before it is
//!   relied on. The report says which connector would normally carry each domain.
//! - **The steps come from the trace events** the delivery engine emits (`Routed`,
//!   `Attempt`), so the report and the message trace tell the same story.
//! - **Recording**: success sets `IsValidated = true` and `LastValidationTimestamp` (a TOML
//!   date-time, RFC 3339 UTC); failure sets `IsValidated = false` and keeps the timestamp of
//!   the last successful validation (Exchange shows a connector whose validation failed as
//!   not validated).
//! - The envelope and `From:` sender is `postmaster@<Fqdn>`, so a later bounce reaches
//!   the relay's postmaster.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::ConfigError;
use crate::config::edit::{Direction, Edit, Edited, edit_file};
use crate::delivery::{Deliverer, DeliveryJob, DeliveryStatus, RecipientOutcome};
use crate::dns::Resolver;
use crate::policy::Policy;
use crate::policy::route::{ConnectorKind, Route, TlsPolicy, select_route};
use crate::trace::{EventKind, Events, TraceEvent};

use super::{parse_recipient, rfc3339};

/// The outcome of one validation, step by step.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ValidationReport {
    /// The connector's name as configured (or as asked, when there is none).
    pub connector: String,
    /// `Outbound` or `Send`; `None` when no such connector exists.
    pub direction: Option<Direction>,
    pub recipients: Vec<String>,
    /// Every recipient accepted by the next hop.
    pub success: bool,
    /// The validation could not be run at all (unknown connector, no recipients): a
    /// problem of the request, not of the connector.
    pub error: Option<String>,
    pub steps: Vec<Step>,
    /// When the validation started (RFC 3339, UTC).
    pub timestamp: String,
    /// The test message's `Message-ID`, to find it in the trace and at the destination.
    pub message_id: Option<String>,
}

/// One step of a validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Step {
    /// `Route`, `NextHops`, `Connect`, `Greeting`, `Hello`, `TLS`, `Certificate`, `Auth`,
    /// `Reply`, `MtaSts` (the MTA-STS policy and its verdict on the host), `Dane` (TLSA
    /// records, DNSSEC status and verdict), or `Setup`
    /// (the route could not be used at all).
    pub step: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl Step {
    fn new(step: &'static str, ok: bool, detail: impl Into<String>) -> Self {
        Step {
            step,
            ok,
            detail: detail.into(),
        }
    }
}

impl ValidationReport {
    fn refused(
        connector: &str,
        direction: Option<Direction>,
        timestamp: String,
        e: String,
    ) -> Self {
        ValidationReport {
            connector: connector.to_string(),
            direction,
            recipients: Vec::new(),
            success: false,
            error: Some(e),
            steps: Vec::new(),
            timestamp,
            message_id: None,
        }
    }

    /// The first step that failed, if any.
    pub fn failed_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| !s.ok)
    }

    /// The report as the CLI prints it: one line per step, then the verdict.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "Validation of {} connector \"{}\" at {}\n",
            self.direction
                .map(|d| format!("{d:?}"))
                .unwrap_or_else(|| "unknown".into()),
            self.connector,
            self.timestamp
        );
        if !self.recipients.is_empty() {
            out.push_str(&format!("Recipients: {}\n", self.recipients.join(", ")));
        }
        if let Some(id) = &self.message_id {
            out.push_str(&format!("Message-ID: {id}\n"));
        }
        for s in &self.steps {
            out.push_str(&format!(
                "  [{}] {:<11} {}\n",
                if s.ok { " ok " } else { "FAIL" },
                s.step,
                s.detail
            ));
        }
        match (&self.error, self.success) {
            (Some(e), _) => out.push_str(&format!("Error: {e}\n")),
            (None, true) => out.push_str("Result: validated\n"),
            (None, false) => out.push_str(&format!(
                "Result: validation failed at step {}\n",
                self.failed_step().map_or("Reply", |s| s.step)
            )),
        }
        out
    }
}

/// Sends a test message through the Outbound or Send connector `connector` to `recipients`
/// (empty: the connector's `ValidationRecipients`) and reports every step. Nothing is
/// recorded in the config: see [`record`].
pub async fn validate(
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    connector: &str,
    recipients: &[String],
) -> ValidationReport {
    validate_traced(policy, resolver, connector, recipients, None).await
}

/// [`validate`], also handing the test message's `Routed` and `Attempt` events to `forward`
/// (the running relay's trace store), so the validation shows in the message trace too.
pub async fn validate_traced(
    policy: Arc<Policy>,
    resolver: Arc<dyn Resolver>,
    connector: &str,
    recipients: &[String],
    forward: Option<&Events>,
) -> ValidationReport {
    let timestamp = rfc3339(std::time::SystemTime::now());
    let Some(route) = Route::for_connector(&policy, connector) else {
        return ValidationReport::refused(
            connector,
            None,
            timestamp,
            format!("there is no Outbound or Send connector named {connector:?}"),
        );
    };
    let name = route.connector.clone().unwrap_or_default();
    let direction = match route.kind {
        Some(ConnectorKind::Send) => Direction::Send,
        _ => Direction::Outbound,
    };
    let outbound = policy.outbound.iter().find(|c| c.name == name);
    let wanted: Vec<String> = match (recipients.is_empty(), outbound) {
        (false, _) => recipients.to_vec(),
        (true, Some(c)) if !c.validation_recipients.is_empty() => c.validation_recipients.clone(),
        (true, Some(_)) => {
            return ValidationReport::refused(
                &name,
                Some(direction),
                timestamp,
                format!(
                    "connector {name:?} has no ValidationRecipients; name a recipient (--recipient)"
                ),
            );
        }
        (true, None) => {
            return ValidationReport::refused(
                &name,
                Some(direction),
                timestamp,
                format!(
                    "Send connector {name:?} has no ValidationRecipients; name a recipient (--recipient)"
                ),
            );
        }
    };
    let mut rcpts = Vec::with_capacity(wanted.len());
    for r in &wanted {
        match parse_recipient(r) {
            Ok(a) if !a.domain.is_empty() => rcpts.push(a.to_string()),
            Ok(_) => {
                return ValidationReport::refused(
                    &name,
                    Some(direction),
                    timestamp,
                    format!("recipient {r:?}: an address with a domain is needed"),
                );
            }
            Err(e) => {
                return ValidationReport::refused(
                    &name,
                    Some(direction),
                    timestamp,
                    format!("recipient {r:?}: {e}"),
                );
            }
        }
    }

    let fqdn = &policy.relay.fqdn;
    let token = format!("{:016x}", rand::random::<u64>());
    let message_id = format!("<validation.{token}@{fqdn}>");
    let sender = format!("postmaster@{fqdn}");
    let data = test_message(&name, &sender, &rcpts, &message_id);
    let queue_id = format!("validate-{token}");

    let (events, mut rx) = Events::channel();
    let sts = crate::delivery::mta_sts::Settings {
        port: policy.relay.mta_sts_policy_port,
        ..Default::default()
    };
    // The relay's own policy cache (SQLite allows a running relay to share it).
    let store = crate::delivery::mta_sts::cache::Store::open(&policy.relay.data_dir)
        .ok()
        .map(Arc::new);
    let mut deliverer = Deliverer::new(policy.clone(), resolver)
        .with_events(events)
        .with_mta_sts(&sts, store);
    if route.send.external_dns && !policy.relay.external_dns_servers.is_empty() {
        // As `relay::start` does for `UseExternalDNSServersEnabled`.
        match crate::dns::hickory::HickoryResolver::new(&policy.relay.external_dns_servers) {
            Ok(r) => deliverer = deliverer.with_external_resolver(Arc::new(r)),
            Err(e) => {
                let mut report = ValidationReport::refused(&name, Some(direction), timestamp, e);
                report.recipients = rcpts;
                return report;
            }
        }
    }
    let job = DeliveryJob {
        id: &queue_id,
        mail_from: &sender,
        recipients: &rcpts,
        data: crate::message::data::Data::memory(&data),
        from_outside_org: false,
        requiretls: false,
    };
    let outcomes = deliverer.deliver_via(&job, &route).await;
    drop(deliverer); // closes the channel: the events are all in `rx`
    let mut trace = Vec::new();
    while let Ok(e) = rx.try_recv() {
        if let Some(f) = forward {
            f.emit(e.clone());
        }
        trace.push(e);
    }

    let mut steps = vec![route_step(&policy, &route, &trace, &rcpts, outbound)];
    steps.extend(delivery_steps(&route, &trace, &outcomes));
    let success = !outcomes.is_empty() && outcomes.iter().all(|o| o.status.is_delivered());
    ValidationReport {
        connector: name,
        direction: Some(direction),
        recipients: rcpts,
        success,
        error: None,
        steps,
        timestamp,
        message_id: Some(message_id),
    }
}

/// The test message: RFC 5322 headers, a short plain-text body, CRLF line endings.
fn test_message(connector: &str, sender: &str, rcpts: &[String], message_id: &str) -> Vec<u8> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // The name is config text: no control characters in a header; RFC 2047 when not ASCII.
    let clean: String = connector.chars().filter(|c| !c.is_control()).collect();
    let subject = format!("connector-relay validation of {clean}");
    let subject = if subject.is_ascii() {
        subject
    } else {
        format!(
            "=?utf-8?b?{}?=",
            crate::smtp::sasl::encode(subject.as_bytes())
        )
    };
    format!(
        "From: connector-relay validation <{sender}>\r\n\
         To: {to}\r\n\
         Subject: {subject}\r\n\
         Message-ID: {message_id}\r\n\
         Date: {date}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This message was sent by connector-relay to validate the connector\r\n\
         \"{clean}\". It needs no answer.\r\n",
        to = rcpts.join(", "),
        date = crate::message::received::rfc5322_date(now),
    )
    .into_bytes()
}

/// `Route`: the route as the `Routed` events describe it, and which connector would carry
/// each domain without validation.
fn route_step(
    policy: &Policy,
    route: &Route,
    trace: &[TraceEvent],
    rcpts: &[String],
    outbound: Option<&crate::policy::OutboundConnector>,
) -> Step {
    let mut detail: Vec<String> = Vec::new();
    for e in trace.iter().filter(|e| e.event == EventKind::Routed) {
        if let Some(d) = &e.detail
            && !detail.contains(d)
        {
            detail.push(d.clone());
        }
    }
    let mut notes = Vec::new();
    let mut domains: Vec<&str> = Vec::new();
    for d in rcpts
        .iter()
        .filter_map(|r| r.rsplit_once('@').map(|(_, d)| d))
    {
        if !domains.contains(&d) {
            domains.push(d);
        }
    }
    for d in domains {
        let normal = select_route(policy, d, false).route;
        if normal.connector != route.connector {
            notes.push(format!(
                "{d} is normally carried by the {}",
                normal.source()
            ));
        }
    }
    let disabled = match route.kind {
        Some(ConnectorKind::Send) => policy
            .send
            .iter()
            .any(|c| Some(&c.name) == route.connector.as_ref() && !c.enabled),
        _ => outbound.is_some_and(|c| !c.enabled),
    };
    if disabled {
        notes.push("the connector is disabled (validated anyway)".into());
    }
    if outbound.is_some_and(|c| c.test_mode) {
        notes.push("the connector is in TestMode (validated anyway)".into());
    }
    let mut text = detail.join(" | ");
    if !notes.is_empty() {
        text.push_str(&format!(" ({})", notes.join("; ")));
    }
    Step::new("Route", true, text)
}

/// The steps after the route: next hops, then per attempt connect / TLS / certificate /
/// reply, up to the stage where it failed.
fn delivery_steps(route: &Route, trace: &[TraceEvent], outcomes: &[RecipientOutcome]) -> Vec<Step> {
    let attempts: Vec<&TraceEvent> = trace
        .iter()
        .filter(|e| e.event == EventKind::Attempt)
        .collect();
    let Some(first) = attempts.first() else {
        // Nothing was sent: the route could not be used (DNS, TLS setup, credentials).
        let failure = outcomes.iter().find_map(|o| o.status.failure());
        let text = failure.map_or("no attempt was made".to_string(), |f| f.to_string());
        let dns = failure.is_some_and(|f| {
            matches!(
                f.enhanced.as_str(),
                "5.1.10" | "5.4.310" | "4.4.310" | "4.4.312" | "4.4.315" | "4.4.316"
            )
        });
        return vec![Step::new(
            if dns { "NextHops" } else { "Setup" },
            false,
            text,
        )];
    };
    let hops = first
        .detail
        .as_deref()
        .and_then(|d| d.split_once("next hops: "))
        .map(|(_, rest)| rest.split("; ").next().unwrap_or(rest).to_string())
        .unwrap_or_default();
    let mut steps = vec![Step::new("NextHops", true, hops)];
    let last = attempts.len() - 1;
    for (i, e) in attempts.iter().enumerate() {
        attempt_steps(route, e, (i == last).then_some(outcomes), &mut steps);
    }
    steps
}

/// The steps of one `Attempt` event. `outcomes` for the last attempt (the one that gave
/// the recipients their results).
fn attempt_steps(
    route: &Route,
    e: &TraceEvent,
    outcomes: Option<&[RecipientOutcome]>,
    steps: &mut Vec<Step>,
) {
    let host = format!(
        "{} [{}]",
        e.host.as_deref().unwrap_or("?"),
        e.ip.as_deref().unwrap_or("?")
    );
    let failed = e.rule.as_deref();
    let reply = e.reply.clone().unwrap_or_default();
    let detail = e.detail.as_deref().unwrap_or("");
    // MTA-STS (RFC 8461): the policy and its verdict on this host, before the connection.
    if failed == Some("MtaSts") {
        let host = e.host.as_deref().unwrap_or("?");
        return steps.push(Step::new("MtaSts", false, format!("{host}: {reply}")));
    }
    if let Some((_, sts)) = detail.split_once("; MTA-STS: ") {
        let sts = sts.split("; DANE: ").next().unwrap_or(sts);
        steps.push(Step::new("MtaSts", true, sts.to_string()));
    }
    // DANE (RFC 7672): the records found, their DNSSEC status and the verdict. A host it
    // refused was never connected to.
    if let Some((_, dane)) = detail.split_once("; DANE: ") {
        let dane = dane.split("; on a kept connection").next().unwrap_or(dane);
        if failed == Some("Dane") {
            let host = e.host.as_deref().unwrap_or("?");
            return steps.push(Step::new("Dane", false, format!("{host}: {dane}; {reply}")));
        }
        let dane_failed = reply.starts_with("4.7.32") || reply.starts_with("5.7.32");
        steps.push(Step::new("Dane", !dane_failed, dane.to_string()));
    }
    let kept = if detail.contains("on a kept connection") {
        " (kept connection)"
    } else {
        ""
    };
    match failed {
        Some("Connect") => {
            return steps.push(Step::new("Connect", false, format!("{host}: {reply}")));
        }
        Some(stage @ ("Greeting" | "Hello")) => {
            steps.push(Step::new("Connect", true, format!("{host}{kept}")));
            let step = if stage == "Greeting" {
                "Greeting"
            } else {
                "Hello"
            };
            return steps.push(Step::new(step, false, reply));
        }
        _ => steps.push(Step::new("Connect", true, format!("{host}{kept}"))),
    }
    match (&e.tls, failed) {
        (Some(tls), _) => steps.push(Step::new("TLS", true, tls.clone())),
        (None, Some("StartTls")) => {
            let retried = if detail.contains("retried in plaintext") {
                "; retried in plaintext (opportunistic TLS)"
            } else {
                ""
            };
            // A rejected certificate ends the handshake: the certificate is the step that
            // failed (its verdict names the check), with the status the relay recorded.
            let step = match &e.certificate {
                Some(c) => {
                    let status = reply.split(' ').next().unwrap_or("");
                    Step::new(
                        "Certificate",
                        false,
                        format!("{c}; status {status}{retried}"),
                    )
                }
                None => Step::new("TLS", false, format!("{reply}{retried}")),
            };
            return steps.push(step);
        }
        (None, _) => {
            let why = match route.tls {
                TlsPolicy::Never => "plaintext (IgnoreSTARTTLS)",
                _ if detail.contains("plaintext after the failed STARTTLS") => {
                    "plaintext after the failed STARTTLS (opportunistic TLS)"
                }
                _ => "plaintext: STARTTLS not offered or refused (opportunistic TLS)",
            };
            steps.push(Step::new("TLS", true, why));
        }
    }
    if let Some(c) = &e.certificate {
        steps.push(Step::new("Certificate", true, c.clone()));
    }
    match failed {
        Some("Auth") => steps.push(Step::new("Auth", false, reply)),
        Some(_) => steps.push(Step::new("Reply", false, reply)),
        None => {
            let ok = outcomes.is_some_and(|o| {
                !o.is_empty()
                    && o.iter()
                        .all(|o| matches!(o.status, DeliveryStatus::Delivered { .. }))
            });
            steps.push(Step::new("Reply", ok, reply));
        }
    }
}

/// The config change that records a validation: `IsValidated` and, on success,
/// `LastValidationTimestamp` of an Outbound connector. `Ok(None)` when there is nothing to
/// record (a Send connector, or a validation that could not run).
pub fn record_edit(report: &ValidationReport) -> Result<Option<Edit>, String> {
    if report.error.is_some() || report.direction != Some(Direction::Outbound) {
        return Ok(None);
    }
    let mut set = vec![(
        "IsValidated".to_string(),
        Some(toml_edit::Value::from(report.success)),
    )];
    if report.success {
        let when: toml_edit::Datetime = report
            .timestamp
            .parse()
            .map_err(|e: toml_edit::DatetimeParseError| e.to_string())?;
        set.push((
            "LastValidationTimestamp".to_string(),
            Some(toml_edit::Value::from(when)),
        ));
    }
    Ok(Some(Edit {
        direction: Direction::Outbound,
        name: Some(report.connector.clone()),
        set,
    }))
}

/// Records a validation in the config file (atomically, comments kept), see
/// [`record_edit`]. The returned [`Edited`] holds the new, validated policy. The running
/// relay records through `Control::edit` instead, which also applies the change live.
pub fn record(
    config_file: &Path,
    report: &ValidationReport,
) -> Result<Option<Edited>, Vec<ConfigError>> {
    let edit = record_edit(report).map_err(|reason| {
        vec![ConfigError {
            file: config_file.to_path_buf(),
            line: 0,
            key: "LastValidationTimestamp".into(),
            reason,
        }]
    })?;
    match edit {
        Some(edit) => edit_file(config_file, &edit, false).map(Some),
        None => Ok(None),
    }
}
