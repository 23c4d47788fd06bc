//! `/metrics` (Prometheus text), `/api/status` (reload state, certificate expiry, gauges as
//! JSON) and `POST /api/reload`.

use std::sync::Arc;

use axum::Json;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::{AdminState, error, reload_error};
use crate::message::received::rfc3339;
use crate::relay::Trigger;
use crate::relay::certs::{self, unix_now};

/// Sets the gauges this module owns (sessions in progress, queue depth and oldest age,
/// certificate days to expiry) to their values now.
async fn update_gauges(state: &AdminState) -> (usize, crate::queue::manager::QueueStats) {
    let sessions = state.limits.in_progress();
    let stats = state.queue.stats().await;
    metrics::gauge!("connector_relay_sessions_in_progress").set(sessions as f64);
    metrics::gauge!("connector_relay_queue_depth").set(stats.depth as f64);
    let oldest = stats
        .oldest_arrived
        .map_or(0, |a| (unix_now() as u64).saturating_sub(a));
    metrics::gauge!("connector_relay_queue_oldest_age_seconds").set(oldest as f64);
    certs::set_gauges(&state.control.live().certificates);
    state.control.pressure().set_gauges();
    (sessions, stats)
}

/// `GET /metrics`
pub(super) async fn metrics(
    axum::extract::State(state): axum::extract::State<Arc<AdminState>>,
) -> Response {
    update_gauges(&state).await;
    // The per-delivery-queue lines are rendered from the queues of this moment and
    // appended (see `metrics::delivery_queues` for why they are not recorder gauges).
    let queues = state.queue.queues().await;
    let mut text = crate::metrics::render();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&crate::metrics::delivery_queues(&queues, unix_now() as u64));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// `GET /api/status`
pub(super) async fn status(
    axum::extract::State(state): axum::extract::State<Arc<AdminState>>,
) -> Response {
    let (sessions, stats) = update_gauges(&state).await;
    let live = state.control.live();
    let now = unix_now();
    let certificates: Vec<Value> = live
        .certificates
        .iter()
        .map(|c| {
            json!({
                "File": c.file.display().to_string(),
                "Key": c.key,
                "Subject": c.subject,
                "NotAfter": rfc3339(c.not_after.max(0) as u64),
                "DaysLeft": c.days_left(now),
                "ExpiringSoon": c.expiring_soon(now),
            })
        })
        .collect();
    let last = state.control.last_reload().map(|l| {
        json!({
            "Time": rfc3339(l.at),
            "Trigger": l.trigger.as_str(),
            "Ok": l.result.is_ok(),
            "Generation": l.result.as_ref().ok(),
            "Errors": l.result.as_ref().err().cloned().unwrap_or_default(),
            "RestartNeeded": l.restart_needed,
        })
    });
    Json(json!({
        "Generation": live.generation,
        "ConfigFile": state.control.config_path().map(|p| p.display().to_string()),
        "LastReload": last,
        "Warnings": live.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "Certificates": certificates,
        "CertificateWarningDays": certs::WARN_DAYS,
        "SessionsInProgress": sessions,
        "BackPressure": state.control.pressure().status(),
        "Queue": {
            "Depth": stats.depth,
            "OldestAgeSeconds": stats.oldest_arrived.map(|a| (now as u64).saturating_sub(a)),
        },
    }))
    .into_response()
}

/// `POST /api/reload`: re-reads the config file (as SIGHUP does).
pub(super) async fn reload(
    axum::extract::State(state): axum::extract::State<Arc<AdminState>>,
) -> Response {
    let control = state.control.clone();
    match tokio::task::spawn_blocking(move || control.reload(Trigger::Request)).await {
        Ok(Ok(r)) => Json(json!({
            "Live": true,
            "Generation": r.generation,
            "Warnings": r.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "RestartNeeded": r.restart_needed,
        }))
        .into_response(),
        Ok(Err(e)) => reload_error(&e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
