//! The admin HTTP API on `[Relay] AdminListen` (spec: `shared/spec/config.md`, "Admin
//! API"): the connector list and changes, connector validation, the policy explainer, the
//! message trace and its reports, the queue, status, `/metrics`, and the web page that
//! uses them.
//!
//! Every request needs `Authorization: Bearer <token>`, the content of `AdminTokenFile`
//! (created with 32 random bytes, mode 0600, when missing); otherwise 401 with a JSON error.
//! `/metrics` is open when `AdminListen` is a loopback address. Headers are never logged,
//! so the token never reaches a log.
//!
//! To add a route: add it in [`router`]; a handler takes `State(state): State<Arc<AdminState>>`
//! and reaches the configuration in effect through `state.control` ([`Control::live`],
//! [`Control::policy`], [`Control::config_path`], [`Control::edit`], [`Control::reload`])
//! and the queue through `state.queue`. Paths served without the token (a login page and
//! its assets) go in [`AdminState::is_public`].

pub mod cli;
pub mod client;
mod connectors;
mod import;
mod ops;
mod page;
mod queue;
mod reports;
mod serve;
mod status;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ConfigError;
use crate::queue::manager::QueueHandle;
use crate::relay::{Control, ReloadError};
use crate::smtp::server::Limits;

pub use connectors::{connector_json, connectors_json, identity};
pub use serve::{DESCRIPTORS, HEADER_READ_TIMEOUT, IDLE_TIMEOUT, MAX_CONNECTIONS};

/// The bearer token. Never printed (`Debug` hides it).
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// Reads `AdminTokenFile`, creating it (32 random bytes as hex, mode 0600) if missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<Token> {
        crate::secret::load_or_create(path).map(Token)
    }

    /// Constant-time comparison: the SHA-256 digests of both are compared without an early
    /// exit, so the time taken says nothing about how much of a guess was right.
    fn matches(&self, presented: &[u8]) -> bool {
        use ring::digest::{SHA256, digest};
        let (a, b) = (digest(&SHA256, &self.0), digest(&SHA256, presented));
        let diff = a
            .as_ref()
            .iter()
            .zip(b.as_ref())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y));
        std::hint::black_box(diff) == 0
    }
}

/// What every handler shares.
pub struct AdminState {
    /// The configuration in effect, reloads and connector changes.
    pub control: Arc<Control>,
    /// The queue manager (list, retry, delete, stats).
    pub queue: QueueHandle,
    /// Session counts (`connector_relay_sessions_in_progress`).
    pub limits: Arc<Limits>,
    /// The change impact previews' first pass over the trace, kept between requests.
    pub impact: crate::ops::whatif::ImpactCache,
    token: Token,
    /// `/metrics` without the token: `AdminListen` is a loopback address.
    metrics_open: bool,
}

impl AdminState {
    pub fn new(
        control: Arc<Control>,
        queue: QueueHandle,
        limits: Arc<Limits>,
        token: Token,
        listen: SocketAddr,
    ) -> AdminState {
        let loopback = listen.ip().is_loopback();
        if !loopback {
            tracing::warn!(%listen, "AdminListen is not a loopback address: the admin API is reachable from the network (the token is still required, /metrics included); put TLS in front of it");
        }
        AdminState {
            control,
            queue,
            limits,
            impact: Default::default(),
            token,
            metrics_open: loopback,
        }
    }

    /// Paths served without the token: the page (it asks for the token), and `/metrics`
    /// on a loopback listener.
    fn is_public(&self, path: &str) -> bool {
        page::PATHS.contains(&path) || (path == "/metrics" && self.metrics_open)
    }

    fn authorized(&self, headers: &HeaderMap) -> bool {
        let Some(value) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        match value.trim().split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                self.token.matches(token.trim().as_bytes())
            }
            _ => false,
        }
    }
}

/// The routes. See the module doc for how to add one.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route(
            "/api/exchange/connectors",
            get(connectors::list).post(connectors::create),
        )
        .route(
            "/api/exchange/connectors/{id}",
            get(connectors::get_one)
                .put(connectors::update)
                .delete(connectors::remove),
        )
        .route("/api/exchange/import", post(import::import))
        .route(
            "/api/exchange/connectors/{id}/status",
            put(connectors::set_status),
        )
        .route(
            "/api/exchange/connectors/{id}/validate",
            post(ops::validate),
        )
        .route("/api/explain", post(ops::explain))
        .route("/api/trace", get(ops::trace))
        .route("/api/reports", get(reports::reports))
        .route("/api/queue", get(queue::list))
        .route("/api/queue/adopt", post(queue::adopt))
        .route("/api/queue/{id}", axum::routing::delete(queue::delete))
        .route("/api/queue/{id}/retry", post(queue::retry))
        .route("/api/queue/{id}/status", put(queue::set_message_status))
        .route("/api/queues", get(queue::queues))
        .route("/api/queues/{id}/retry", post(queue::retry_queue))
        .route("/api/queues/{id}/status", put(queue::set_queue_status))
        .route("/api/status", get(status::status))
        .route("/api/reload", post(status::reload))
        .route("/metrics", get(status::metrics))
        .route("/", get(page::index))
        .route("/index.html", get(page::index))
        .route("/app.js", get(page::script))
        .route("/editor.js", get(page::editor))
        .route("/reports.js", get(page::reports_script))
        .route("/app.css", get(page::style))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state)
}

/// Serves the admin API on `listener` until `stop` is set, with a connection cap and
/// header and idle timeouts (see `serve.rs`).
pub fn start(
    listener: TcpListener,
    state: AdminState,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "admin API listening");
    }
    let app = router(Arc::new(state));
    tokio::spawn(serve::serve(listener, app, stop))
}

async fn require_token(State(state): State<Arc<AdminState>>, req: Request, next: Next) -> Response {
    if state.is_public(req.uri().path()) || state.authorized(req.headers()) {
        return next.run(req).await;
    }
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send Authorization: Bearer <the content of AdminTokenFile>",
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"connector-relay\""),
    );
    response
}

/// `{"error": message}` with `status`.
pub fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// 400 for a refused configuration: the first problem as `key` and `error` (the sentence),
/// every problem in `errors`.
pub fn config_errors(errors: &[ConfigError]) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(config_errors_body(errors)),
    )
        .into_response()
}

/// The body of [`config_errors`].
pub fn config_errors_body(errors: &[ConfigError]) -> Value {
    let first = errors.first();
    json!({
        "key": first.map(|e| e.key.as_str()).unwrap_or(""),
        "error": first.map(|e| e.reason.as_str()).unwrap_or("invalid configuration"),
        "line": first.map(|e| e.line).unwrap_or(0),
        "errors": errors.iter().map(config_error_json).collect::<Vec<_>>(),
    })
}

pub fn config_error_json(e: &ConfigError) -> Value {
    json!({
        "key": e.key,
        "error": e.reason,
        "line": e.line,
        "message": e.to_string(),
    })
}

/// A refused reload or change as an HTTP answer.
pub fn reload_error(e: &ReloadError) -> Response {
    match e {
        ReloadError::Invalid(errors) => config_errors(errors),
        ReloadError::NoConfigFile => error(StatusCode::CONFLICT, e.to_string()),
        ReloadError::Io(_) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        ReloadError::ChangedOnDisk(_) => (
            StatusCode::CONFLICT,
            axum::Json(json!({
                "error": e.to_string(),
                "ChangedOnDisk": true,
                "Applied": false,
            })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comparison() {
        let t = Token(b"abc123".to_vec());
        assert!(t.matches(b"abc123"));
        assert!(!t.matches(b"abc124"));
        assert!(!t.matches(b"abc12"));
        assert!(!t.matches(b""));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }
}
