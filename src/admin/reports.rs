//! `GET /api/reports?since=7d&until=&bucket=1h&top=5`: the numbers of the page's Reports
//! view (messages per direction and connector over time, TLS versions, refusals by rule),
//! aggregated by the trace store (`crate::trace::reports`). Every parameter is optional;
//! a bad one is `400 {"key", "error"}`.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::connectors::key_error;
use super::{AdminState, error};
use crate::trace::reports::{self, ReportFilter};

pub(super) async fn reports(
    State(state): State<Arc<AdminState>>,
    filter: Result<Query<ReportFilter>, QueryRejection>,
) -> Response {
    // A value of the wrong type (`top=many`) answers like any other bad parameter.
    let Query(filter) = match filter {
        Ok(f) => f,
        Err(e) => return key_error("query", e.body_text()),
    };
    let q = match filter.to_query(crate::trace::time::now_ms()) {
        Ok(q) => q,
        Err((name, why)) => return key_error(name, why),
    };
    let policy = state.control.policy();
    let read = move || {
        let at = crate::trace::backend::Location::of(&policy.relay);
        reports::report_store(&at, &q)
    };
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(report)) => Json(report).into_response(),
        Ok(Err(e)) => error(StatusCode::INTERNAL_SERVER_ERROR, e),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
