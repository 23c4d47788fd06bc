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
//! config or by the code, never by what a remote peer sends. The per-delivery-queue series
//! ([`delivery_queues`]) are the exception: their `queue` and `next_hop` labels come from
//! recipient domains, so they are bounded by count instead (the [`QUEUE_SERIES`] queues
//! with most messages).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::queue::hop::HopStatus;
use crate::queue::manager::QueueView;
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
        EventKind::Routed | EventKind::Attempt | EventKind::Session => {}
    }
}

/// One TLS failure: `direction` is `inbound` (a client's handshake) or `outbound` (toward a
/// next hop); `reason` a short class such as `handshake`, `starttls_refused`,
/// `certificate_untrusted`, `name_mismatch`, `expired`.
/// TLS-RPT (RFC 8460) reports: `method` is `https` or `mailto`, `outcome` `sent` or
/// `failed` (a mailed report counts as sent once queued).
pub fn tlsrpt_report(method: &'static str, outcome: &'static str) {
    metrics::counter!("connector_relay_tlsrpt_reports_total", "method" => method, "outcome" => outcome)
        .increment(1);
}

pub fn tls_failure(direction: &'static str, reason: &'static str) {
    metrics::counter!("connector_relay_tls_failures_total", "direction" => direction, "reason" => reason)
        .increment(1);
}

/// One MTA-STS policy lookup for a route group; `mode` is the policy's (`enforce`,
/// `testing`, `none`; `none` also when the domain has no policy).
pub fn mta_sts_lookup(mode: &'static str) {
    metrics::counter!("connector_relay_mta_sts_lookups_total", "mode" => mode).increment(1);
}

/// One MTA-STS policy fetch: `ok`, or the TLS-RPT class of the failure
/// (`sts-policy-fetch-error`, `sts-webpki-invalid`, `sts-policy-invalid`).
pub fn mta_sts_fetch(result: &'static str) {
    metrics::counter!("connector_relay_mta_sts_fetches_total", "result" => result).increment(1);
}

/// One MTA-STS verdict on an MX host: `mode` `enforce`/`testing`; `verdict` `ok`,
/// `mx_mismatch`, `tls_failed` (under testing: would have failed).
pub fn mta_sts_verdict(mode: &'static str, verdict: &'static str) {
    metrics::counter!("connector_relay_mta_sts_verdicts_total", "mode" => mode, "verdict" => verdict)
        .increment(1);
}

/// One DANE outcome toward a next-hop host (README "DANE"): the plan (`not_applicable`,
/// `no_dane`, `tlsa_usable`, `tlsa_unusable`, `dnssec_invalid`, `dane_required`) and,
/// after the handshake, `verified`, `encrypted`, `starttls_not_supported`,
/// `certificate_expired`, `tlsa_invalid`, `certificate_host_mismatch`.
pub fn dane_outcome(outcome: &'static str) {
    metrics::counter!("connector_relay_dane_outcomes_total", "outcome" => outcome).increment(1);
}

/// Trace rows that never reached the store: `buffer_full` (the writer's buffer was full,
/// e.g. during a store outage), `refused` (the store refused a batch), `stopped` (the
/// store was still unreachable when the relay stopped).
pub fn trace_rows_dropped(reason: &'static str, rows: u64) {
    metrics::counter!("connector_relay_trace_rows_dropped_total", "reason" => reason)
        .increment(rows);
}

/// The trace store became unreachable (one per outage, however long), and whether it is
/// reachable now (1) or in an outage (0).
pub fn trace_store_outage() {
    metrics::counter!("connector_relay_trace_store_outages_total").increment(1);
    metrics::gauge!("connector_relay_trace_store_up").set(0.0);
}

pub fn trace_store_up() {
    metrics::gauge!("connector_relay_trace_store_up").set(1.0);
}

/// Time from acceptance (250 to DATA) to delivery of one recipient.
pub fn delivery_latency(latency: Duration) {
    metrics::histogram!(DELIVERY_LATENCY).record(latency.as_secs_f64());
}

/// At most this many delivery queues get series of their own: those with most messages.
pub const QUEUE_SERIES: usize = 50;

const QUEUE_STATUSES: [HopStatus; 4] = [
    HopStatus::Ready,
    HopStatus::Active,
    HopStatus::Retry,
    HopStatus::Suspended,
];

/// The delivery-queue gauges in Prometheus text, for appending to [`render`]'s output.
///
/// They are rendered here from the queues as they are at this scrape instead of being set
/// on the recorder: a recorder gauge keeps its last value forever, so a queue that emptied
/// (and went away) or changed status (the `status` label) would leave a series with a stale
/// value behind. Rendered lines exist exactly while the queue does, with its status now.
/// `connector_relay_delivery_queues` counts every queue by status (all four, zeros too);
/// the per-queue series cover the [`QUEUE_SERIES`] queues with most messages.
pub fn delivery_queues(views: &[QueueView], now: u64) -> String {
    let mut out = String::new();
    out.push_str(
        "# HELP connector_relay_delivery_queues Delivery queues (one per next hop) by status.\n",
    );
    out.push_str("# TYPE connector_relay_delivery_queues gauge\n");
    for status in QUEUE_STATUSES {
        let n = views.iter().filter(|v| v.status == status).count();
        out.push_str(&format!(
            "connector_relay_delivery_queues{{status=\"{}\"}} {n}\n",
            status.as_str()
        ));
    }
    let top = largest(views, QUEUE_SERIES);
    type Value = fn(&QueueView, u64) -> u64;
    let series: [(&str, &str, Value); 3] = [
        (
            "connector_relay_delivery_queue_messages",
            "Messages waiting in a delivery queue.",
            |v, _| v.message_count as u64,
        ),
        (
            "connector_relay_delivery_queue_oldest_message_age_seconds",
            "Age of the oldest message in a delivery queue.",
            |v, now| v.oldest_arrived.map_or(0, |a| now.saturating_sub(a)),
        ),
        (
            "connector_relay_delivery_queue_active_connections",
            "Delivery attempts under way from a delivery queue.",
            |v, _| v.active_connections as u64,
        ),
    ];
    for (name, help, value) in series {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for v in &top {
            out.push_str(&format!(
                "{name}{{queue=\"{}\",next_hop=\"{}\",status=\"{}\"}} {}\n",
                label(&v.identity),
                label(&v.next_hop_domain),
                v.status.as_str(),
                value(v, now)
            ));
        }
    }
    out
}

/// The `n` queues with most messages (ties: the older queue, by identity number, first).
fn largest(views: &[QueueView], n: usize) -> Vec<&QueueView> {
    let number = |v: &QueueView| {
        v.identity
            .rsplit('\\')
            .next()
            .and_then(|n| n.parse::<u64>().ok())
    };
    let mut sorted: Vec<&QueueView> = views.iter().collect();
    sorted.sort_by_key(|v| (std::cmp::Reverse(v.message_count), number(v)));
    sorted.truncate(n);
    sorted
}

/// A label value escaped as the text format wants (the Identity has a backslash).
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: u64, messages: usize, status: HopStatus) -> QueueView {
        QueueView {
            identity: format!("relay.contoso.test\\{id}"),
            delivery_type: "DnsConnectorDelivery",
            next_hop_domain: format!("d{id}.test"),
            connector: None,
            status,
            message_count: messages,
            active_connections: 0,
            failures: 0,
            last_error: None,
            last_retry_time: None,
            next_retry_time: None,
            oldest_arrived: Some(1_000),
        }
    }

    #[test]
    fn queue_series_are_escaped_counted_and_capped() {
        let mut views: Vec<QueueView> = (1..=60)
            .map(|i| view(i, i as usize, HopStatus::Ready))
            .collect();
        views[59].status = HopStatus::Retry;
        let text = delivery_queues(&views, 1_030);
        assert!(
            text.contains(
                "connector_relay_delivery_queue_messages{queue=\"relay.contoso.test\\\\60\",next_hop=\"d60.test\",status=\"Retry\"} 60\n"
            ),
            "{text}"
        );
        assert!(text.contains("connector_relay_delivery_queues{status=\"Ready\"} 59\n"));
        assert!(text.contains("connector_relay_delivery_queues{status=\"Suspended\"} 0\n"));
        assert!(text.contains(
            "connector_relay_delivery_queue_oldest_message_age_seconds{queue=\"relay.contoso.test\\\\11\",next_hop=\"d11.test\",status=\"Ready\"} 30\n"
        ));
        // The 50 largest only: queue 10 (10 messages) and smaller are left out.
        assert!(!text.contains("d10.test"), "{text}");
        let per_queue = text
            .lines()
            .filter(|l| l.starts_with("connector_relay_delivery_queue_messages{"))
            .count();
        assert_eq!(per_queue, QUEUE_SERIES);
        assert_eq!(label("a\"b\nc"), "a\\\"b\\nc");
    }

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
