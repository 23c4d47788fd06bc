//! `POST /api/exchange/import`: a pasted Exchange script, `Get-*Connector | ConvertTo-Json`
//! output or Microsoft365DSC configuration (README "Import and export") imported over the
//! config in effect. `?whatIf=true` previews: which connectors would be created, changed or
//! removed, key by key, and what would be dropped, with nothing written. Without whatIf the
//! change goes through the same path as every connector change ([`Control::edit_with`]):
//! validated like `check`, written atomically with comments kept, applied live.
//!
//! Body: `{"Text": "...", "FileName": "pasted.ps1"}` (`FileName` only names the input in
//! messages and comments). Errors: 400 with `errors: [{line, key, error, message}]`, the
//! lines being those of the pasted text.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::connectors::{WhatIf, diff, key_error, object};
use super::{AdminState, error, reload_error};
use crate::config::ConfigError;
use crate::exchange::{self, ImportError, Imported};

/// An import error as a config error (the file is the pasted text's name).
fn as_config_error(e: ImportError) -> ConfigError {
    ConfigError {
        file: PathBuf::from(e.at.file),
        line: e.at.line,
        key: e.key,
        reason: e.reason,
    }
}

pub(super) async fn import(
    State(state): State<Arc<AdminState>>,
    Query(q): Query<WhatIf>,
    body: Bytes,
) -> Response {
    let body = match object(&body) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(text) = body.get("Text").and_then(Value::as_str).map(str::to_string) else {
        return key_error(
            "Text",
            "missing; paste a connector script, Get- JSON or DSC configuration",
        );
    };
    let name = body
        .get("FileName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .unwrap_or("pasted")
        .to_string();
    let what_if = q.what_if;
    let control = state.control.clone();
    let run = move || {
        let mut result: Option<Imported> = None;
        let outcome = control.edit_with(
            |current, path| {
                let base = path.display().to_string();
                let imported = exchange::import(&[(name, text)], Some((&base, current)))
                    .map_err(|e| e.into_iter().map(as_config_error).collect::<Vec<_>>())?;
                let loaded = crate::config::load_str(&imported.text, path)?;
                let new_text = imported.text.clone();
                result = Some(imported);
                Ok(crate::config::edit::Edited {
                    old_text: current.to_string(),
                    new_text,
                    loaded,
                })
            },
            what_if,
        );
        (outcome, result)
    };
    let (outcome, imported) = match tokio::task::spawn_blocking(run).await {
        Ok(x) => x,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return reload_error(&e),
    };
    let imported = imported.expect("set when the edit succeeded");
    if !what_if {
        tracing::info!(
            connectors = imported.changes.len(),
            "connectors imported through the admin API"
        );
    }
    let applied = outcome.applied.as_ref();
    let mut body = json!({
        "WhatIf": what_if,
        "Live": applied.is_some(),
        "Generation": applied.map(|a| a.generation),
        "Connectors": imported.changes,
        "Notes": imported.notes,
        "Diff": diff(&outcome.old_text, &outcome.new_text),
        "Warnings": outcome.warnings.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    if let (true, Value::Object(map)) = (what_if, &mut body) {
        super::connectors::add_impact(map, &state, &outcome).await;
    }
    Json(body).into_response()
}
