//! The admin web page: plain HTML, JavaScript and CSS compiled into the binary (no build
//! step), served without the token (the page asks for it and sends it with every API call).

use axum::http::header;
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
/// The connector editor (create, edit, delete), kept apart from `app.js`.
const EDITOR: &str = include_str!("page/editor.js");
const STYLE: &str = include_str!("page/app.css");
const REPORTS: &str = include_str!("page/reports.js");

/// The paths of the page, served without the token.
pub(super) const PATHS: [&str; 6] = [
    "/",
    "/index.html",
    "/app.js",
    "/editor.js",
    "/app.css",
    "/reports.js",
];

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Only this origin's own script and style; no framing (clickjacking).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

pub(super) async fn index() -> Response {
    asset("text/html; charset=utf-8", INDEX)
}

pub(super) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(super) async fn editor() -> Response {
    asset("text/javascript; charset=utf-8", EDITOR)
}

/// The Reports view (its own file: charts drawn as inline SVG, no library).
pub(super) async fn reports_script() -> Response {
    asset("text/javascript; charset=utf-8", REPORTS)
}

pub(super) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
