//! `/api/exchange/connectors`: the connector list (keys as written in the config file, plus
//! computed fields for a connector page), creations (one, or several together), changes
//! and removals, validated like `check`, written back with comments kept and applied live.
//!
//! `Identity` is `in-`, `out-` or `send-` followed by the first 10 hex digits of the SHA-256
//! of the lower-cased `Name`: stable across restarts and reloads, usable in URLs without
//! encoding, and unique since names are unique (case-insensitively) within each direction.
//! Like Exchange's `Identity` (which is the name), it follows a rename.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};
use toml_edit::{DocumentMut, Item};

use super::{AdminState, error, reload_error};
use crate::config::edit::{self, Direction, Edit, json_to_toml, toml_to_json};
use crate::config::{ConfigError, canonical_key};
use crate::policy::{
    ConnectorType, DomainPattern, InboundConnector, OutboundConnector, Policy, SendConnector,
    SmartHost, TlsLevel,
};
use crate::relay::{EditOutcome, ReloadError};

/// Fields the list adds to the written keys; dropped from request bodies, so that what a
/// client got can be sent back.
const COMPUTED: [&str; 6] = [
    "Identity",
    "Direction",
    "Scenario",
    "TlsSummary",
    "SenderSummary",
    "RecipientSummary",
];

/// The stable id of a connector (see the module doc).
pub fn identity(direction: Direction, name: &str) -> String {
    let prefix = match direction {
        Direction::Inbound => "in",
        Direction::Outbound => "out",
        Direction::Send => "send",
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, name.to_lowercase().as_bytes());
    let hex: String = digest.as_ref()[..5]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{prefix}-{hex}")
}

/// The connector tables of `text` as JSON objects, per direction, in file order (the order
/// of the policy's connectors).
fn written(text: Option<&str>, direction: Direction) -> Vec<Map<String, Value>> {
    let Some(doc) = text.and_then(|t| t.parse::<DocumentMut>().ok()) else {
        return Vec::new();
    };
    let Some(item) = doc.get(direction.section()) else {
        return Vec::new();
    };
    let items: Vec<Value> = match item {
        Item::ArrayOfTables(a) => a
            .iter()
            .map(|t| toml_to_json(&Item::Table(t.clone())))
            .collect(),
        // `InboundConnector = [{ ... }, ...]` is accepted by the loader too.
        Item::Value(toml_edit::Value::Array(a)) => a
            .iter()
            .map(|v| toml_to_json(&Item::Value(v.clone())))
            .collect(),
        _ => Vec::new(),
    };
    // Keys under their canonical spelling, however the file writes them.
    items
        .into_iter()
        .map(|v| match v {
            Value::Object(m) => m
                .into_iter()
                .map(|(k, v)| (canonical_key(direction, &k).map_or(k, str::to_string), v))
                .collect(),
            _ => Map::new(),
        })
        .collect()
}

/// Every connector: its keys as written in the config file, plus `Identity`, `Direction`,
/// `Enabled` (explicit even when defaulted), `Scenario`, `TlsSummary` and `SenderSummary`
/// (inbound) or `RecipientSummary` (outbound, send). `text` is the file `policy` was
/// loaded from (`None`: only the computed fields and `Name`).
pub fn connectors_json(text: Option<&str>, policy: &Policy) -> Vec<Value> {
    let mut out = Vec::new();
    for direction in Direction::all() {
        let mut tables = written(text, direction).into_iter();
        let n = match direction {
            Direction::Inbound => policy.inbound.len(),
            Direction::Outbound => policy.outbound.len(),
            Direction::Send => policy.send.len(),
        };
        for i in 0..n {
            let mut obj = tables.next().unwrap_or_default();
            let (name, enabled, scenario, tls, summary) = match direction {
                Direction::Inbound => {
                    let c = &policy.inbound[i];
                    let s = ("SenderSummary", inbound_senders(c));
                    (&c.name, c.enabled, inbound_scenario(c), inbound_tls(c), s)
                }
                Direction::Outbound => {
                    let c = &policy.outbound[i];
                    let s = ("RecipientSummary", outbound_recipients(c));
                    let scenario = outbound_scenario(c);
                    (&c.name, c.enabled, scenario, outbound_tls(c), s)
                }
                Direction::Send => {
                    let c = &policy.send[i];
                    let s = ("RecipientSummary", send_recipients(c));
                    let scenario = send_scenario(c, policy);
                    (&c.name, c.enabled, scenario, send_tls(c), s)
                }
            };
            obj.insert("Name".into(), json!(name));
            obj.insert("Identity".into(), json!(identity(direction, name)));
            obj.insert("Direction".into(), json!(format!("{direction:?}")));
            obj.insert("Enabled".into(), json!(enabled));
            obj.insert("Scenario".into(), json!(scenario));
            obj.insert("TlsSummary".into(), json!(tls));
            obj.insert(summary.0.into(), json!(summary.1));
            out.push(Value::Object(obj));
        }
    }
    out
}

/// One connector as in [`connectors_json`].
pub fn connector_json(
    text: Option<&str>,
    policy: &Policy,
    direction: Direction,
    name: &str,
) -> Option<Value> {
    let dir = format!("{direction:?}");
    connectors_json(text, policy)
        .into_iter()
        .find(|c| c["Direction"] == dir.as_str() && c["Name"] == name)
}

// ---- computed fields --------------------------------------------------------------------

fn inbound_scenario(c: &InboundConnector) -> &'static str {
    match c.connector_type {
        ConnectorType::Partner => "Partner",
        ConnectorType::OnPremises => "OnPremises",
    }
}

fn covers_everything(domains: &[DomainPattern]) -> bool {
    domains.contains(&DomainPattern::Any)
}

fn outbound_scenario(c: &OutboundConnector) -> &'static str {
    match c.connector_type {
        ConnectorType::OnPremises => "OnPremises",
        ConnectorType::Partner if covers_everything(&c.recipient_domains) => "Internet",
        ConnectorType::Partner => "Partner",
    }
}

/// Send connectors have no ConnectorType: `*` in the address spaces is the Internet route;
/// address spaces that are all accepted domains lead to the organization's own servers.
fn send_scenario(c: &SendConnector, policy: &Policy) -> &'static str {
    let domains: Vec<DomainPattern> = c.address_spaces.iter().map(|a| a.domain.clone()).collect();
    if covers_everything(&domains) {
        "Internet"
    } else if !domains.is_empty()
        && domains.iter().all(|d| {
            let d = d.to_string();
            crate::policy::restrict::is_accepted(policy, d.trim_start_matches("*."))
        })
    {
        "OnPremises"
    } else {
        "Partner"
    }
}

fn inbound_tls(c: &InboundConnector) -> String {
    let mut parts = vec![
        if c.require_tls {
            "Required"
        } else {
            "Opportunistic"
        }
        .to_string(),
    ];
    if let Some(name) = &c.tls_sender_certificate_name {
        parts.push(format!("certificate {name}"));
    }
    if c.restrict_domains_to_certificate {
        parts.push("domains restricted to the certificate".into());
    }
    if !c.tls_sender_certificate_issuer.is_empty() {
        parts.push(format!(
            "issued by {}",
            c.tls_sender_certificate_issuer.join(" or ")
        ));
    }
    parts.join(", ")
}

fn level(l: TlsLevel) -> String {
    format!("{l:?}")
}

/// The TLS level, and for MX routes the DANE and MTA-STS modes (smart hosts have no MX
/// for them to authenticate: README "DANE", "MTA-STS").
fn outbound_tls(c: &OutboundConnector) -> String {
    let mut s = match c.tls_settings {
        None => "Opportunistic".into(),
        Some(l) => {
            let mut s = format!("Required, {}", level(l));
            if let (TlsLevel::DomainValidation, Some(d)) = (l, &c.tls_domain) {
                s.push_str(&format!(", TlsDomain {d}"));
            }
            s
        }
    };
    if c.use_mx_record {
        s.push_str(&format!(
            "; DANE {:?}; MTA-STS {:?}",
            c.smtp_dane_mode, c.mta_sts_mode
        ));
    }
    s
}

fn send_tls(c: &SendConnector) -> String {
    if c.ignore_starttls {
        return "Off (IgnoreSTARTTLS)".into();
    }
    let mut s = if c.require_tls {
        "Required".to_string()
    } else {
        "Opportunistic".to_string()
    };
    if let Some(l) = c.tls_auth_level {
        s.push_str(&format!(", {}", level(l)));
        if let (TlsLevel::DomainValidation, Some(d)) = (l, &c.tls_domain) {
            s.push_str(&format!(", TlsDomain {d}"));
        }
    }
    if c.domain_secure_enabled {
        s.push_str(", DomainSecure");
    }
    s
}

/// The first few items, then "+N more".
fn few(items: Vec<String>) -> String {
    const SHOWN: usize = 3;
    if items.len() <= SHOWN {
        return items.join(", ");
    }
    format!(
        "{} +{} more",
        items[..SHOWN].join(", "),
        items.len() - SHOWN
    )
}

fn inbound_senders(c: &InboundConnector) -> String {
    let mut parts = Vec::new();
    if !c.sender_domains.is_empty() {
        parts.push(few(c
            .sender_domains
            .iter()
            .map(ToString::to_string)
            .collect()));
    }
    if !c.sender_ip_addresses.is_empty() {
        parts.push(few(c
            .sender_ip_addresses
            .iter()
            .map(ToString::to_string)
            .collect()));
    }
    if let Some(name) = &c.tls_sender_certificate_name {
        parts.push(format!("certificate {name}"));
    }
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join("; ")
    }
}

fn hosts(smart_hosts: &[SmartHost]) -> String {
    few(smart_hosts
        .iter()
        .map(|h| match h {
            SmartHost::Name { host, port } => with_port(host.clone(), *port),
            SmartHost::Ip { addr, port } => with_port(addr.to_string(), *port),
            SmartHost::Cidr { net, port } => with_port(net.to_string(), *port),
        })
        .collect())
}

fn with_port(host: String, port: Option<u16>) -> String {
    match port {
        Some(p) if host.contains(':') => format!("[{host}]:{p}"),
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

fn outbound_recipients(c: &OutboundConnector) -> String {
    let mut scope = Vec::new();
    if c.all_accepted_domains {
        scope.push("all accepted domains".to_string());
    }
    if c.route_all_messages_via_on_premises {
        scope.push("all messages".to_string());
    }
    if !c.recipient_domains.is_empty() {
        scope.push(few(c
            .recipient_domains
            .iter()
            .map(ToString::to_string)
            .collect()));
    }
    let via = if c.use_mx_record {
        "MX".to_string()
    } else {
        hosts(&c.smart_hosts)
    };
    format!("{} via {via}", scope.join("; "))
}

fn send_recipients(c: &SendConnector) -> String {
    let spaces = few(c
        .address_spaces
        .iter()
        .map(|a| format!("{};{}", a.domain, a.cost))
        .collect());
    let via = if c.dns_routing_enabled {
        "MX".to_string()
    } else {
        hosts(&c.smart_hosts)
    };
    format!("{spaces} via {via}")
}

// ---- handlers ---------------------------------------------------------------------------

#[derive(serde::Deserialize, Default)]
pub(super) struct WhatIf {
    #[serde(rename = "whatIf", alias = "WhatIf", alias = "whatif", default)]
    pub(super) what_if: bool,
}

/// `GET /api/exchange/connectors`
pub(super) async fn list(State(state): State<Arc<AdminState>>) -> Response {
    let live = state.control.live();
    Json(connectors_json(live.text.as_deref(), &live.policy)).into_response()
}

/// `GET /api/exchange/connectors/{id}`
pub(super) async fn get_one(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    let live = state.control.live();
    match resolve(&live.policy, &id) {
        Ok((direction, name)) => {
            match connector_json(live.text.as_deref(), &live.policy, direction, &name) {
                Some(c) => Json(c).into_response(),
                None => error(StatusCode::NOT_FOUND, format!("no connector {id:?}")),
            }
        }
        Err(r) => *r,
    }
}

/// The connector `id` names: an `Identity`, or a `Name` (exact, then without case).
/// An answer given early by a helper (boxed, so that the `Result`s stay small).
pub(super) type Early = Box<Response>;

pub(super) fn resolve(policy: &Policy, id: &str) -> Result<(Direction, String), Early> {
    let all: Vec<(Direction, &str)> = policy
        .inbound
        .iter()
        .map(|c| (Direction::Inbound, c.name.as_str()))
        .chain(
            policy
                .outbound
                .iter()
                .map(|c| (Direction::Outbound, c.name.as_str())),
        )
        .chain(
            policy
                .send
                .iter()
                .map(|c| (Direction::Send, c.name.as_str())),
        )
        .collect();
    if let Some((d, n)) = all.iter().find(|(d, n)| identity(*d, n) == id) {
        return Ok((*d, n.to_string()));
    }
    let mut by_name: Vec<&(Direction, &str)> = all.iter().filter(|(_, n)| *n == id).collect();
    if by_name.is_empty() {
        by_name = all
            .iter()
            .filter(|(_, n)| n.to_lowercase() == id.to_lowercase())
            .collect();
    }
    match by_name.as_slice() {
        [] => Err(Box::new(error(
            StatusCode::NOT_FOUND,
            format!("no connector has the Identity or Name {id:?}"),
        ))),
        [(d, n)] => Ok((*d, n.to_string())),
        many => Err(Box::new(error(
            StatusCode::CONFLICT,
            format!(
                "{id:?} names several connectors; use the Identity: {}",
                many.iter()
                    .map(|(d, n)| format!("{} ({d:?})", identity(*d, n)))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ))),
    }
}

/// A JSON object body, or a 400.
pub(super) fn object(body: &Bytes) -> Result<Map<String, Value>, Early> {
    let bad = |reason: String| Box::new(key_error("", reason));
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(bad(
            "the body must be a JSON object of connector keys".into()
        )),
        Err(e) => Err(bad(format!("the body is not valid JSON: {e}"))),
    }
}

pub(super) fn key_error(key: &str, reason: impl Into<String>) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({ "key": key, "error": reason.into() })),
    )
        .into_response()
}

/// A refused key of a request body: the key and the sentence.
type KeyError = (String, String);

/// The keys of a body as an edit: computed fields dropped, `null` = remove the key.
fn changes(
    direction: Direction,
    body: Map<String, Value>,
) -> Result<Vec<(String, Option<toml_edit::Value>)>, KeyError> {
    let mut set = Vec::new();
    for (key, value) in body {
        if COMPUTED.contains(&key.as_str()) {
            continue;
        }
        // Keys are not case-sensitive (PowerShell parameters are not); the file and the
        // answer use the canonical spelling. An unknown key is left for the loader to name.
        let key = canonical_key(direction, &key).map_or(key, str::to_string);
        let v = match value {
            Value::Null => None,
            v => Some(json_to_toml(&v).map_err(|e| (key.clone(), e))?),
        };
        set.push((key, v));
    }
    Ok(set)
}

/// The edit that creates the connector a body describes: `{"Direction": "Inbound", "Name":
/// ..., ...}`.
fn new_connector(mut body: Map<String, Value>) -> Result<Edit, KeyError> {
    let refused = |reason: String| ("Direction".to_string(), reason);
    let direction = match body.shift_remove("Direction") {
        Some(Value::String(s)) => Direction::parse(&s).ok_or_else(|| {
            refused(format!(
                "{s:?} is not a direction; use \"Inbound\", \"Outbound\" or \"Send\""
            ))
        })?,
        _ => {
            return Err(refused(
                "missing; say which kind of connector: \"Inbound\", \"Outbound\" or \"Send\""
                    .into(),
            ));
        }
    };
    let mut set: Vec<_> = changes(direction, body)?
        .into_iter()
        .filter(|(_, v)| v.is_some())
        .collect();
    // A new table starts with its Name, as connectors are written by hand.
    set.sort_by_key(|(k, _)| k != "Name");
    Ok(Edit {
        direction,
        name: None,
        set,
    })
}

/// `POST /api/exchange/connectors`: `{"Direction": "Inbound", "Name": ..., ...}`, or an
/// array of such objects, created together or not at all.
pub(super) async fn create(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<WhatIf>,
    body: Bytes,
) -> Response {
    if let Ok(Value::Array(items)) = serde_json::from_slice::<Value>(&body) {
        return create_several(state, items, q.what_if).await;
    }
    let body = match object(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    match new_connector(body) {
        Ok(edit) => apply(state, edit, q.what_if, StatusCode::CREATED).await,
        Err((key, reason)) => key_error(&key, reason),
    }
}

/// `key_error` for element `index` of an array body.
fn indexed(mut body: Value, index: usize) -> Response {
    body["index"] = json!(index);
    (StatusCode::BAD_REQUEST, Json(body)).into_response()
}

/// Several connectors in one change (the page's email security gateway scenario: an
/// inbound connector for the gateway's addresses and an outbound one through it), so
/// that neither exists without the other. A refusal says which element in `index`.
async fn create_several(state: Arc<AdminState>, items: Vec<Value>, what_if: bool) -> Response {
    let mut edits = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let edit = match item {
            Value::Object(m) => new_connector(m),
            _ => Err((
                String::new(),
                "each element must be a JSON object of connector keys".into(),
            )),
        };
        match edit {
            Ok(e) => edits.push(e),
            Err((key, reason)) => return indexed(json!({ "key": key, "error": reason }), i),
        }
    }
    if edits.is_empty() {
        return key_error("", "the array names no connector to create");
    }
    let control = state.control.clone();
    let all = edits.clone();
    let run = move || {
        let mut failed = 0;
        let result = control.edit_with(
            |text, path| {
                edit::apply_each(text, path, &all).map_err(|(i, errors)| {
                    failed = i;
                    errors
                })
            },
            what_if,
        );
        (result, failed)
    };
    let outcome = match blocking(run).await {
        Ok((Ok(o), _)) => o,
        Ok((Err(ReloadError::Invalid(errors)), i)) => {
            return indexed(super::config_errors_body(&errors), i);
        }
        Ok((Err(e), _)) => return reload_error(&e),
        Err(r) => return r,
    };
    let names: Vec<String> = edits.iter().map(created_name).collect();
    if !what_if {
        tracing::info!(connectors = ?names, "connectors created together through the admin API");
    }
    let created: Vec<Value> = edits
        .iter()
        .zip(&names)
        .map(|(e, n)| {
            connector_json(Some(&outcome.new_text), &outcome.policy, e.direction, n)
                .unwrap_or(Value::Null)
        })
        .collect();
    let mut body = outcome_json(&outcome, what_if);
    body.insert("Connectors".into(), Value::Array(created));
    if what_if {
        add_impact(&mut body, &state, &outcome).await;
    }
    let status = if what_if {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    (status, Json(Value::Object(body))).into_response()
}

/// The `Name` an edit sets, else the connector it changes.
fn created_name(edit: &Edit) -> String {
    edit.set
        .iter()
        .find(|(k, _)| k == "Name")
        .and_then(|(_, v)| v.as_ref()?.as_str().map(str::to_string))
        .or(edit.name.clone())
        .unwrap_or_default()
}

/// Runs blocking work (reading, validating and writing the config file) off the async
/// threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

/// A preview's `Impact`: the trace of the last 7 days replayed through the configuration
/// in effect and the one the change would make (`crate::ops::whatif`); `null` with
/// `ImpactError` when the trace cannot be read.
pub(super) async fn add_impact(
    body: &mut Map<String, Value>,
    state: &Arc<AdminState>,
    outcome: &EditOutcome,
) {
    let (state, proposed) = (state.clone(), outcome.policy.clone());
    let run = move || {
        let current = state.control.policy();
        let now = crate::trace::time::now_ms();
        let data_dir = current.relay.data_dir.clone();
        state.impact.impact(&current, &proposed, &data_dir, now)
    };
    let (impact, problem) = match blocking(run).await {
        Ok(Ok(i)) => (serde_json::to_value(i).unwrap_or(Value::Null), None),
        Ok(Err(e)) => (Value::Null, Some(e)),
        Err(_) => (Value::Null, Some("the impact preview failed".to_string())),
    };
    body.insert("Impact".into(), impact);
    if let Some(e) = problem {
        body.insert("ImpactError".into(), json!(e));
    }
}

/// What every change answers: `WhatIf`, `Live`, `Generation`, `Diff` (the lines of the
/// file removed and added), `Warnings`, `RestartNeeded`.
fn outcome_json(outcome: &EditOutcome, what_if: bool) -> Map<String, Value> {
    let applied = outcome.applied.as_ref();
    let body = json!({
        "WhatIf": what_if,
        "Live": applied.is_some(),
        "Generation": applied.map(|a| a.generation),
        "Diff": diff(&outcome.old_text, &outcome.new_text),
        "Warnings": outcome.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "RestartNeeded": applied.map(|a| a.restart_needed.clone()).unwrap_or_default(),
    });
    match body {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// `DELETE /api/exchange/connectors/{id}[?whatIf=true]`: removes the connector's table
/// from the config file (Remove-InboundConnector), through the same path as every change;
/// 409 when what is left would not be a valid configuration.
pub(super) async fn remove(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(q): Query<WhatIf>,
) -> Response {
    let live = state.control.live();
    let (direction, name) = match resolve(&live.policy, &id) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let removed = connector_json(live.text.as_deref(), &live.policy, direction, &name);
    let (control, n, what_if) = (state.control.clone(), name.clone(), q.what_if);
    let run = move || {
        let mut found = true;
        let result = control.edit_with(
            |text, path| match edit::remove(text, path, direction, &n) {
                Ok(Some(edited)) => Ok(edited),
                Ok(None) => {
                    found = false;
                    Err(vec![ConfigError {
                        file: path.to_path_buf(),
                        line: 0,
                        key: "Name".into(),
                        reason: format!("the config file has no {} named {n:?} any more (it was changed on disk; the relay reloads it within a few seconds)", direction.section()),
                    }])
                }
                Err(errors) => Err(errors),
            },
            what_if,
        );
        (result, found)
    };
    let outcome = match blocking(run).await {
        Ok((Ok(o), _)) => o,
        Ok((Err(ReloadError::Invalid(errors)), found)) => {
            return not_removed(direction, &name, &errors, found);
        }
        Ok((Err(e), _)) => return reload_error(&e),
        Err(r) => return r,
    };
    if !what_if {
        tracing::info!(?direction, connector = %name, "connector removed through the admin API");
    }
    let mut body = outcome_json(&outcome, what_if);
    body.insert("Removed".into(), removed.unwrap_or(Value::Null));
    if what_if {
        add_impact(&mut body, &state, &outcome).await;
    }
    Json(Value::Object(body)).into_response()
}

/// 409 for a removal that was refused: the connector stays, the sentence says why, the
/// problems are listed as for any refused change.
fn not_removed(direction: Direction, name: &str, errors: &[ConfigError], found: bool) -> Response {
    let why = match errors.first() {
        Some(first) if found => {
            format!("without it the configuration would be invalid ({first}); nothing was changed")
        }
        Some(first) => first.reason.clone(),
        None => "the configuration would be invalid".into(),
    };
    let mut body = super::config_errors_body(errors);
    body["error"] = json!(format!(
        "{} {name:?} was not removed: {why}",
        direction.section()
    ));
    (StatusCode::CONFLICT, Json(body)).into_response()
}

/// The connector `id` names and the request's JSON object (404 / 400 otherwise).
fn target(
    state: &AdminState,
    id: &str,
    body: &Bytes,
) -> Result<(Direction, String, Map<String, Value>), Early> {
    let (direction, name) = resolve(&state.control.policy(), id)?;
    Ok((direction, name, object(body)?))
}

/// `PUT /api/exchange/connectors/{id}`: the keys to set; `null` removes a key.
pub(super) async fn update(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(q): Query<WhatIf>,
    body: Bytes,
) -> Response {
    let (direction, name, body) = match target(&state, &id, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if let Some(d) = body.get("Direction")
        && d.as_str().and_then(Direction::parse) != Some(direction)
    {
        return key_error(
            "Direction",
            format!(
                "cannot be changed (the connector is {direction:?}); create a new connector instead"
            ),
        );
    }
    let set = match changes(direction, body) {
        Ok(s) => s,
        Err((key, reason)) => return key_error(&key, reason),
    };
    if set.is_empty() {
        return key_error("", "the body names no key to change");
    }
    let edit = Edit {
        direction,
        name: Some(name),
        set,
    };
    apply(state, edit, q.what_if, StatusCode::OK).await
}

/// `PUT /api/exchange/connectors/{id}/status`: `{"Enabled": true|false}`.
pub(super) async fn set_status(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Query(q): Query<WhatIf>,
    body: Bytes,
) -> Response {
    let (direction, name, body) = match target(&state, &id, &body) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    let Some(enabled) = body.get("Enabled").and_then(Value::as_bool) else {
        return key_error(
            "Enabled",
            "must be true or false, e.g. {\"Enabled\": false}",
        );
    };
    let edit = Edit {
        direction,
        name: Some(name),
        set: vec![("Enabled".into(), Some(toml_edit::Value::from(enabled)))],
    };
    apply(state, edit, q.what_if, StatusCode::OK).await
}

/// Runs an edit through [`crate::relay::Control::edit`] and answers what changed.
async fn apply(state: Arc<AdminState>, edit: Edit, what_if: bool, created: StatusCode) -> Response {
    let control = state.control.clone();
    let e = edit.clone();
    let outcome = match blocking(move || control.edit(&e, what_if)).await {
        Ok(Ok(o)) => o,
        Ok(Err(err)) => {
            tracing::info!(direction = ?edit.direction, connector = edit.name.as_deref().unwrap_or(""), error = %err, "connector change refused");
            return reload_error(&err);
        }
        Err(r) => return r,
    };
    let new_name = created_name(&edit);
    let old_name = edit.name.clone().unwrap_or_default();
    let keys: Vec<&str> = edit.set.iter().map(|(k, _)| k.as_str()).collect();
    if !what_if {
        tracing::info!(direction = ?edit.direction, connector = %new_name, keys = ?keys, "connector changed through the admin API");
    }
    let old_table = table(&outcome.old_text, edit.direction, &old_name);
    let new_table = table(&outcome.new_text, edit.direction, &new_name);
    let changes: Vec<Value> = keys
        .iter()
        .map(|k| {
            json!({
                "Key": k,
                "Old": old_table.as_ref().and_then(|t| t.get(*k)).cloned().unwrap_or(Value::Null),
                "New": new_table.as_ref().and_then(|t| t.get(*k)).cloned().unwrap_or(Value::Null),
            })
        })
        .collect();
    let connector = connector_json(
        Some(&outcome.new_text),
        &outcome.policy,
        edit.direction,
        &new_name,
    );
    let mut body = outcome_json(&outcome, what_if);
    body.insert("Connector".into(), connector.unwrap_or(Value::Null));
    body.insert("Changes".into(), Value::Array(changes));
    if what_if {
        add_impact(&mut body, &state, &outcome).await;
    }
    let status = if what_if { StatusCode::OK } else { created };
    (status, Json(Value::Object(body))).into_response()
}

/// The written keys of the connector `name` in `text`.
fn table(text: &str, direction: Direction, name: &str) -> Option<Map<String, Value>> {
    if name.is_empty() {
        return None;
    }
    written(Some(text), direction)
        .into_iter()
        .find(|t| t.get("Name").and_then(Value::as_str) == Some(name))
}

/// The changed lines of the file, in hunks: `@@ line N` (N: where the hunk starts in the
/// new file, which is also its place in the old file for the first hunk), then `-old` and
/// `+new` lines. The common head and tail are trimmed first; what is left is compared line
/// by line (longest common subsequence), so that two connectors added in two sections are
/// two hunks rather than one region repeating everything between them.
pub(super) fn diff(old: &str, new: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (old.lines().collect(), new.lines().collect());
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..]
        .iter()
        .rev()
        .zip(b[head..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (a_mid, b_mid) = (&a[head..a.len() - tail], &b[head..b.len() - tail]);
    // A changed region may span `[Relay]` lines: a TraceStore URL's password stays hidden.
    let shown = |sign: char, l: &str| format!("{sign}{}", crate::trace::target::redact_urls(l));
    let mut out = Vec::new();
    let (mut line, mut removed, mut added) = (head + 1, Vec::new(), Vec::new());
    let mut flush = |line: usize, removed: &mut Vec<&str>, added: &mut Vec<&str>| {
        if removed.is_empty() && added.is_empty() {
            return;
        }
        out.push(format!("@@ line {line}"));
        out.extend(removed.drain(..).map(|l| shown('-', l)));
        out.extend(added.drain(..).map(|l| shown('+', l)));
    };
    let mut new_line = head + 1;
    for step in line_steps(a_mid, b_mid) {
        match step {
            Step::Keep => {
                flush(line, &mut removed, &mut added);
                new_line += 1;
                line = new_line;
            }
            Step::Remove(l) => removed.push(l),
            Step::Add(l) => {
                added.push(l);
                new_line += 1;
            }
        }
    }
    flush(line, &mut removed, &mut added);
    out
}

#[derive(Debug, PartialEq)]
enum Step<'a> {
    Keep,
    Remove(&'a str),
    Add(&'a str),
}

/// The steps from `a` to `b` keeping a longest common subsequence of lines. Past a size
/// that would make the table large (an edit never gets there; a wholesale rewrite might)
/// everything is removed and added.
fn line_steps<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<Step<'a>> {
    const MAX_CELLS: usize = 4_000_000;
    let (n, m) = (a.len(), b.len());
    if (n + 1).saturating_mul(m + 1) > MAX_CELLS {
        let removed = a.iter().map(|l| Step::Remove(l));
        return removed.chain(b.iter().map(|l| Step::Add(l))).collect();
    }
    // lcs[i][j]: the longest common subsequence of a[i..] and b[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut steps) = (0, 0, Vec::new());
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            steps.push(Step::Keep);
            (i, j) = (i + 1, j + 1);
        } else if j < m && (i == n || lcs[i][j + 1] >= lcs[i + 1][j]) {
            steps.push(Step::Add(b[j]));
            j += 1;
        } else {
            steps.push(Step::Remove(a[i]));
            i += 1;
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
[Relay]
AcceptedDomains = ["contoso.test"]

# the partner
[[InboundConnector]]
Name = "Fabrikam"
SenderDomains = ["fabrikam.test"] # theirs
SenderIPAddresses = ["192.0.2.0/24"]
RequireTls = true
TlsSenderCertificateName = "mail.fabrikam.test"

[[OutboundConnector]]
Name = "To on-premises"
ConnectorType = "OnPremises"
AllAcceptedDomains = true
UseMXRecord = false
SmartHosts = ["192.0.2.25"]
TlsSettings = "CertificateValidation"

[[SendConnector]]
Name = "Internet"
AddressSpaces = ["*"]
"#;

    #[test]
    fn list_has_written_keys_and_computed_fields() {
        let policy = crate::config::load_str(TEXT, std::path::Path::new("t.toml"))
            .unwrap()
            .policy;
        let list = connectors_json(Some(TEXT), &policy);
        assert_eq!(list.len(), 3);
        let fab = &list[0];
        assert_eq!(fab["Direction"], "Inbound");
        assert_eq!(fab["Enabled"], true, "explicit although defaulted");
        assert_eq!(fab["SenderDomains"], json!(["fabrikam.test"]));
        assert_eq!(fab["Scenario"], "Partner");
        assert_eq!(
            fab["TlsSummary"],
            "Required, certificate mail.fabrikam.test"
        );
        assert_eq!(
            fab["SenderSummary"],
            "fabrikam.test; 192.0.2.0/24; certificate mail.fabrikam.test"
        );
        assert_eq!(fab["Identity"], identity(Direction::Inbound, "FABRIKAM"));
        assert!(fab["Identity"].as_str().unwrap().starts_with("in-"));
        assert_eq!(list[1]["Scenario"], "OnPremises");
        assert_eq!(list[1]["TlsSummary"], "Required, CertificateValidation");
        assert_eq!(
            list[1]["RecipientSummary"],
            "all accepted domains via 192.0.2.25"
        );
        assert_eq!(list[2]["Scenario"], "Internet");
        assert_eq!(list[2]["RecipientSummary"], "*;1 via MX");

        assert!(resolve(&policy, "fabrikam").is_ok(), "by name, any case");
        let id = identity(Direction::Send, "Internet");
        assert_eq!(resolve(&policy, &id).unwrap().0, Direction::Send);
        assert!(resolve(&policy, "nobody").is_err());
    }

    /// The page's TLS column names the DANE and MTA-STS modes of an MX route, and not of a
    /// smart-host route (they do not apply there).
    #[test]
    fn tls_summary_names_dane_and_mta_sts_on_mx_routes() {
        let text = r#"
[Relay]
AcceptedDomains = ["contoso.test"]

[[OutboundConnector]]
Name = "Partner"
RecipientDomains = ["fabrikam.test"]
TlsSettings = "DomainValidation"
SmtpDaneMode = "Mandatory"
MtaStsMode = "None"
"#;
        let policy = crate::config::load_str(text, std::path::Path::new("relay.toml"))
            .unwrap()
            .policy;
        let list = connectors_json(Some(text), &policy);
        assert_eq!(
            list[0]["TlsSummary"],
            "Required, DomainValidation; DANE Mandatory; MTA-STS None"
        );
        let policy = crate::config::load_str(TEXT, std::path::Path::new("relay.toml"))
            .unwrap()
            .policy;
        let smart = &connectors_json(Some(TEXT), &policy)[1];
        assert_eq!(smart["TlsSummary"], "Required, CertificateValidation");
    }

    #[test]
    fn diff_shows_the_changed_region() {
        let d = diff("a\nb\nc\n", "a\nB\nx\nc\n");
        assert_eq!(d, ["@@ line 2", "-b", "+B", "+x"]);
        assert!(diff("a\n", "a\n").is_empty());
        let d = diff("x\n", "TraceStore = \"postgresql://u:pw@db/t\"\n");
        assert_eq!(d[2], "+TraceStore = \"postgresql://u:***@db/t\"");
        // Two tables added in two places: two hunks, at their lines in the new file.
        let d = diff("[a]\nx\n[b]\ny\n", "[a]\nx\nnew a\n[b]\ny\nnew b\n");
        assert_eq!(d, ["@@ line 3", "+new a", "@@ line 6", "+new b"]);
        let d = diff("1\n2\n3\n4\n", "1\n4\n");
        assert_eq!(d, ["@@ line 2", "-2", "-3"]);
    }
}
