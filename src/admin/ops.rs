//! The operations routes: connector validation (`POST
//! /api/exchange/connectors/{id}/validate`), the policy explainer (`POST /api/explain`) and
//! the message trace (`GET /api/trace`). They call the same library functions as the
//! `validate`, `explain` and `trace` commands, on the configuration in effect.

use std::net::IpAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use super::connectors::{key_error, object, resolve};
use super::{AdminState, error, reload_error};
use crate::config::edit::Direction;
use crate::trace::TraceFilter;

const NOT_A_LIST: &str = "must be a list of addresses";

/// Strings of a JSON array (a single string is taken as a one-element list).
fn strings(v: Option<&Value>) -> Result<Vec<String>, &'static str> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_string).ok_or(NOT_A_LIST))
            .collect(),
        Some(_) => Err(NOT_A_LIST),
    }
}

/// `POST /api/exchange/connectors/{id}/validate`, body optional: `{"Recipients": [...]}`
/// (default: the connector's `ValidationRecipients`). Sends the test message, answers the
/// report, and records `IsValidated` / `LastValidationTimestamp` for an Outbound connector
/// in the config file, applied live (`Recorded` says whether that happened).
pub(super) async fn validate(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let policy = state.control.policy();
    let (direction, name) = match resolve(&policy, &id) {
        Ok(x) => x,
        Err(r) => return *r,
    };
    if direction == Direction::Inbound {
        return key_error(
            "Direction",
            "only Outbound and Send connectors can be validated; for an inbound connector, ask POST /api/explain what it would decide",
        );
    }
    let recipients = if body.iter().all(u8::is_ascii_whitespace) {
        Vec::new()
    } else {
        let body = match object(&body) {
            Ok(b) => b,
            Err(r) => return *r,
        };
        match strings(body.get("Recipients")) {
            Ok(r) => r,
            Err(e) => return key_error("Recipients", e),
        }
    };
    let events = state.control.events();
    let report = crate::ops::validate_traced(
        policy,
        state.control.resolver(),
        &name,
        &recipients,
        Some(&events),
    )
    .await;
    if report.error.is_some() {
        let mut answer = serde_json::to_value(&report).unwrap_or_default();
        answer["error"] = Value::from(report.error.clone());
        return (StatusCode::BAD_REQUEST, Json(answer)).into_response();
    }
    let mut answer = serde_json::to_value(&report).unwrap_or_default();
    let recorded = match crate::ops::record_edit(&report) {
        Ok(Some(edit)) => {
            let control = state.control.clone();
            match tokio::task::spawn_blocking(move || control.edit(&edit, false)).await {
                Ok(Ok(_)) => true,
                Ok(Err(e)) => return reload_error(&e),
                Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
            }
        }
        Ok(None) => false,
        Err(e) => return key_error("LastValidationTimestamp", e),
    };
    answer["Recorded"] = Value::from(recorded);
    Json(answer).into_response()
}

/// `POST /api/explain` with `{"ClientIp": "192.0.2.1", "Sender": "a@x", "Recipients":
/// ["b@y"], "Certificate": "-----BEGIN CERTIFICATE-----..."}` (certificate optional): the
/// explainer's answer as JSON plus its text rendering in `Text`. Nothing is sent.
pub(super) async fn explain(State(state): State<Arc<AdminState>>, body: Bytes) -> Response {
    let body = match object(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(ip) = body
        .get("ClientIp")
        .and_then(Value::as_str)
        .and_then(|s| s.trim().parse::<IpAddr>().ok())
    else {
        return key_error("ClientIp", "must be an IPv4 or IPv6 address");
    };
    let Some(sender) = body.get("Sender").and_then(Value::as_str) else {
        return key_error(
            "Sender",
            "must be the MAIL FROM address (\"\" for the null sender)",
        );
    };
    let recipients = match strings(body.get("Recipients")) {
        Ok(r) if !r.is_empty() => r,
        Ok(_) => return key_error("Recipients", "at least one recipient is needed"),
        Err(e) => return key_error("Recipients", e),
    };
    let cert = match body.get("Certificate") {
        None | Some(Value::Null) => None,
        Some(Value::String(pem)) => Some(pem.as_bytes().to_vec()),
        Some(_) => return key_error("Certificate", "must be the PEM text of a certificate"),
    };
    let policy = state.control.policy();
    let explanation = crate::ops::explain(&policy, ip, cert.as_deref(), sender.trim(), &recipients);
    let mut answer = serde_json::to_value(&explanation).unwrap_or_default();
    answer["Text"] = Value::from(explanation.to_text());
    Json(answer).into_response()
}

/// `GET /api/trace?sender=&recipient=&messageId=&connector=&since=` (and `queueId`,
/// `until`, `limit` as on the command line): the rows, oldest first, as the `trace`
/// command's `--json` prints them.
pub(super) async fn trace(
    State(state): State<Arc<AdminState>>,
    Query(filter): Query<TraceFilter>,
) -> Response {
    let mut q = match filter.to_query(crate::trace::time::now_ms()) {
        Ok(q) => q,
        Err((name, why)) => return key_error(name, why),
    };
    q.limit = q.limit.min(10_000);
    let policy = state.control.policy();
    let read = move || {
        let at = crate::trace::backend::Location::of(&policy.relay);
        crate::trace::query_store(&at, &q)
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
