//! Prometheus metrics for `GET /metrics`, built on the `metrics` facade with the
//! `metrics-exporter-prometheus` recorder (rendered on request; no listener of its own).
//!
//! Message counters are derived from trace events ([`observe`]) so every emitter feeds
//! both the trace store and the metrics from one call. TLS failures and the delivery
//! latency histogram have their own functions, called where the value is known; the gauges
//! (sessions, queue, certificate expiry) are set by the admin API at scrape time
//! (`admin/status.rs`, `relay/certs.rs`).
//!
//! Label values are connector names, rule names and reason classes: all bounded by the
//! config or by the code, never by what a remote peer sends.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::trace::{EventKind, TraceEvent};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Delivery latency buckets (seconds): from a few milliseconds on loopback to the
/// hours a deferred message may wait.
const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
    3600.0, 14400.0, 86400.0,
];

/// Installs the process-wide recorder (once; later calls are no-ops). Before it is
/// installed, the `metrics` macros are no-ops, so tools that never serve `/metrics` pay
/// nothing.
pub fn install() {
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full(DELIVERY_LATENCY.into()),
                LATENCY_BUCKETS,
            )
            .ok()?
            .install_recorder()
            .ok()
    });
}

/// The current metrics in Prometheus text format.
pub fn render() -> String {
    install();
    match HANDLE.get() {
        Some(Some(h)) => h.render(),
        _ => String::new(),
    }
}

const DELIVERY_LATENCY: &str = "connector_relay_delivery_latency_seconds";

/// The connector label of an event: `(none)` for the default route or an unattributed
/// session, so every series has the label.
fn connector(event: &TraceEvent) -> String {
    event
        .connector
        .clone()
        .unwrap_or_else(|| "(none)".to_string())
}

/// Counts one trace event.
pub fn observe(event: &TraceEvent) {
    match event.event {
        EventKind::Received => {
            metrics::counter!("connector_relay_messages_received_total", "connector" => connector(event))
                .increment(1)
        }
        EventKind::Rejected => metrics::counter!(
            "connector_relay_rejections_total",
            "rule" => event.rule.clone().unwrap_or_else(|| "(none)".to_string()),
            "connector" => connector(event)
        )
        .increment(1),
        EventKind::Delivered => {
            metrics::counter!("connector_relay_messages_relayed_total", "connector" => connector(event))
                .increment(1)
        }
        EventKind::Deferred => {
            metrics::counter!("connector_relay_messages_deferred_total", "connector" => connector(event))
                .increment(1)
        }
        EventKind::Failed => {
            metrics::counter!("connector_relay_messages_failed_total", "connector" => connector(event))
                .increment(1)
        }
        EventKind::DsnSent => metrics::counter!("connector_relay_dsn_sent_total").increment(1),
        EventKind::Expired => {
            metrics::counter!("connector_relay_messages_expired_total").increment(1)
        }
        EventKind::Routed | EventKind::Attempt => {}
    }
}

/// One TLS failure: `direction` is `inbound` (a client's handshake) or `outbound` (toward a
/// next hop); `reason` a short class such as `handshake`, `starttls_refused`,
/// `certificate_untrusted`, `name_mismatch`, `expired`.
pub fn tls_failure(direction: &'static str, reason: &'static str) {
    metrics::counter!("connector_relay_tls_failures_total", "direction" => direction, "reason" => reason)
        .increment(1);
}

/// Time from acceptance (250 to DATA) to delivery of one recipient.
pub fn delivery_latency(latency: Duration) {
    metrics::histogram!(DELIVERY_LATENCY).record(latency.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_become_labelled_counters() {
        install();
        let mut e = TraceEvent::new(EventKind::Rejected);
        e.rule = Some("RestrictDomainsToIPAddresses".into());
        e.connector = Some("Partner fabrikam".into());
        observe(&e);
        let mut d = TraceEvent::new(EventKind::Delivered);
        d.connector = Some("To on-premises".into());
        observe(&d);
        delivery_latency(Duration::from_millis(30));
        let text = render();
        assert!(
            text.contains(
                r#"connector_relay_rejections_total{rule="RestrictDomainsToIPAddresses",connector="Partner fabrikam"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"connector_relay_messages_relayed_total{connector="To on-premises"}"#),
            "{text}"
        );
        assert!(
            text.contains(r#"connector_relay_delivery_latency_seconds_bucket{le="0.05"}"#),
            "{text}"
        );
    }
}
