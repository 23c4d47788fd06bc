//! `/api/queue`: the messages the relay holds, retry now, delete. Answers use the names of
//! Exchange's `Get-Message` (`Identity`, `FromAddress`, `Status`, `RetryCount`, ...).
//!
//! Delete removes the message from the queue and the spool without any DSN, like
//! `postsuper -d` (Exchange's `Remove-Message -WithNDR $false`). A message under a delivery
//! attempt cannot be retried or deleted until the attempt ends (409).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AdminState, error};
use crate::message::received::rfc3339;
use crate::queue::manager::{AdminError, QueuedMessage};
use crate::queue::spool::{RcptState, unix_now};

fn message_json(m: &QueuedMessage, now: u64) -> Value {
    let status = if m.in_flight {
        "Active"
    } else if m.attempts == 0 {
        "Ready"
    } else {
        "Retry"
    };
    let recipients: Vec<Value> = m
        .recipients
        .iter()
        .map(|r| {
            json!({
                "Address": r.address,
                "Status": match r.state {
                    RcptState::Pending => "Pending",
                    RcptState::Delivered => "Delivered",
                    RcptState::Failed => "Failed",
                },
                "LastError": r.last_error,
            })
        })
        .collect();
    let last_error = m.recipients.iter().rev().find_map(|r| r.last_error.clone());
    json!({
        "Identity": m.id,
        "FromAddress": m.mail_from,
        "Recipients": recipients,
        "Status": status,
        "RetryCount": m.attempts,
        "LastError": last_error,
        "DateReceived": rfc3339(m.arrived),
        "AgeSeconds": now.saturating_sub(m.arrived),
        "NextRetryTime": m.next_attempt.map(rfc3339),
        "InboundConnector": m.inbound_connector,
    })
}

fn answer(e: AdminError) -> Response {
    let status = match e {
        AdminError::NotFound => StatusCode::NOT_FOUND,
        AdminError::InFlight => StatusCode::CONFLICT,
        AdminError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        AdminError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// `GET /api/queue`
pub(super) async fn list(State(state): State<Arc<AdminState>>) -> Response {
    let now = unix_now();
    let all = state.queue.list().await;
    Json(all.iter().map(|m| message_json(m, now)).collect::<Vec<_>>()).into_response()
}

/// `POST /api/queue/{id}/retry`
pub(super) async fn retry(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    match state.queue.retry(&id).await {
        Ok(()) => {
            tracing::info!(id = %id, "retry requested through the admin API");
            Json(json!({ "Identity": id, "Status": "Ready", "NextRetryTime": rfc3339(unix_now()) }))
                .into_response()
        }
        Err(e) => answer(e),
    }
}

/// `DELETE /api/queue/{id}`
pub(super) async fn delete(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    match state.queue.delete(&id).await {
        Ok(()) => {
            Json(json!({ "Identity": id, "Deleted": true, "NdrSent": false })).into_response()
        }
        Err(e) => answer(e),
    }
}
