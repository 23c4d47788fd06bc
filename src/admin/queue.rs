//! `/api/queue`: the messages the relay holds, retry now, suspend/resume, delete. Answers
//! use the names of Exchange's `Get-Message` (`Identity`, `FromAddress`, `Status`,
//! `RetryCount`, ...). `/api/queues`: the delivery queues, one per next hop, with the names
//! of `Get-Queue`; `Retry-Queue`, `Suspend-Queue` and `Resume-Queue`.
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
use crate::queue::manager::{AdminError, QueueView, QueuedMessage};
use crate::queue::spool::{RcptState, unix_now};

fn message_json(m: &QueuedMessage, now: u64) -> Value {
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
        "Status": m.status,
        "Queues": m.queues,
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
        AdminError::NotFound | AdminError::QueueNotFound => StatusCode::NOT_FOUND,
        AdminError::InFlight | AdminError::Ambiguous => StatusCode::CONFLICT,
        AdminError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        AdminError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    error(status, e.to_string())
}

/// `POST /api/queue/adopt` `{"From": "/path/to/the/dead/node/spool"}`: takes over the
/// spool of a node that is gone (README "Running more than one node"). 409 while a live
/// process holds that spool; 400 for what is not a spool, or this relay's own.
pub(super) async fn adopt(
    State(state): State<Arc<AdminState>>,
    Json(body): Json<Value>,
) -> Response {
    use crate::queue::adopt::AdoptError;
    let Some(from) = body
        .get("From")
        .and_then(Value::as_str)
        .filter(|f| !f.is_empty())
    else {
        return super::connectors::key_error("From", "the path of the spool to adopt is needed");
    };
    let (control, from) = (state.control.clone(), std::path::PathBuf::from(from));
    match tokio::task::spawn_blocking(move || control.adopt_spool(&from)).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => {
            let status = match e {
                AdoptError::Busy(_) => StatusCode::CONFLICT,
                AdoptError::Refused(_) => StatusCode::BAD_REQUEST,
                AdoptError::Io(_) => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, e.to_string())
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
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

/// `{"Status": "Suspended"}` or `{"Status": "Active"}` (Exchange's resume sets Active).
#[derive(serde::Deserialize)]
pub(super) struct StatusBody {
    #[serde(rename = "Status")]
    status: String,
}

impl StatusBody {
    /// `true` = suspend; anything but the two values is a 400 with a sentence.
    fn suspend(&self) -> Result<bool, Box<Response>> {
        match self.status.as_str() {
            "Suspended" => Ok(true),
            "Active" | "Ready" => Ok(false),
            other => Err(Box::new(error(
                StatusCode::BAD_REQUEST,
                format!("Status must be \"Suspended\" or \"Active\", not {other:?}"),
            ))),
        }
    }
}

/// `PUT /api/queue/{id}/status`: `Suspend-Message` / `Resume-Message`.
pub(super) async fn set_message_status(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Response {
    let suspend = match body.suspend() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.queue.suspend_message(&id, suspend).await {
        Ok(()) => {
            let list = state.queue.list().await;
            match list.iter().find(|m| m.id == id) {
                Some(m) => Json(message_json(m, unix_now())).into_response(),
                None => answer(AdminError::NotFound),
            }
        }
        Err(e) => answer(e),
    }
}

pub(super) fn queue_json(q: &QueueView, now: u64) -> Value {
    json!({
        "Identity": q.identity,
        "DeliveryType": q.delivery_type,
        "NextHopDomain": q.next_hop_domain,
        "NextHopConnector": q.connector,
        "Status": q.status.as_str(),
        "MessageCount": q.message_count,
        "ActiveConnections": q.active_connections,
        "FailureCount": q.failures,
        "LastError": q.last_error,
        "LastRetryTime": q.last_retry_time.map(rfc3339),
        "NextRetryTime": q.next_retry_time.map(rfc3339),
        "OldestMessageAgeSeconds": q.oldest_arrived.map(|a| now.saturating_sub(a)),
    })
}

/// `GET /api/queues`: `Get-Queue`.
pub(super) async fn queues(State(state): State<Arc<AdminState>>) -> Response {
    let now = unix_now();
    let all = state.queue.queues().await;
    Json(all.iter().map(|q| queue_json(q, now)).collect::<Vec<_>>()).into_response()
}

/// One queue after a command, by the identity the command resolved.
async fn queue_answer(state: &AdminState, id: &str) -> Response {
    let now = unix_now();
    let all = state.queue.queues().await;
    let number = id.rsplit('\\').next().unwrap_or(id);
    let found = all.iter().find(|q| {
        q.identity == id
            || q.identity.rsplit('\\').next() == Some(number)
            || q.next_hop_domain.eq_ignore_ascii_case(id)
    });
    match found {
        Some(q) => Json(queue_json(q, now)).into_response(),
        // Gone in between (it emptied): the command itself succeeded.
        None => Json(json!({ "Identity": id })).into_response(),
    }
}

/// `POST /api/queues/{id}/retry`: `Retry-Queue` (a queue in Retry probes now).
pub(super) async fn retry_queue(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
) -> Response {
    match state.queue.retry_queue(&id).await {
        Ok(()) => queue_answer(&state, &id).await,
        Err(e) => answer(e),
    }
}

/// `PUT /api/queues/{id}/status`: `Suspend-Queue` / `Resume-Queue`.
pub(super) async fn set_queue_status(
    State(state): State<Arc<AdminState>>,
    Path(id): Path<String>,
    Json(body): Json<StatusBody>,
) -> Response {
    let suspend = match body.suspend() {
        Ok(s) => s,
        Err(r) => return *r,
    };
    match state.queue.suspend_queue(&id, suspend).await {
        Ok(()) => queue_answer(&state, &id).await,
        Err(e) => answer(e),
    }
}
