use super::*;
use crate::trace::TraceEvent;
use crate::trace::backend::Backend;
use crate::trace::sqlite::Sqlite;

const NOW: i64 = 1_795_766_400_000; // 2026-11-27T08:00:00Z
const M: i64 = 60_000;
const H: i64 = 60 * M;

fn ev(
    kind: EventKind,
    t: i64,
    qid: Option<&str>,
    connector: Option<&str>,
    tls: Option<&str>,
) -> TraceEvent {
    let mut e = TraceEvent::new(kind);
    e.time_ms = t;
    e.queue_id = qid.map(str::to_string);
    e.connector = connector.map(str::to_string);
    e.tls = tls.map(str::to_string);
    e
}

fn rejected(t: i64, rule: Option<&str>) -> TraceEvent {
    let mut e = ev(EventKind::Rejected, t, None, Some("Partner fabrikam"), None);
    e.rule = rule.map(str::to_string);
    e
}

const T13: Option<&str> = Some("TLSv1.3 TLS13_AES_256_GCM_SHA384");
/// How outbound rows spelled it before the trace spelled every version the same way.
const T13_OLD: Option<&str> = Some("TLSv1_3 TLS13_AES_256_GCM_SHA384");
const T12: Option<&str> = Some("TLSv1.2 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384");
const ONPREM: Option<&str> = Some("From on-premises");
const TO_ONPREM: Option<&str> = Some("To on-premises");

/// Known rows around the three hours before NOW (05:00, 06:00, 07:00 UTC).
fn rows() -> Vec<TraceEvent> {
    use EventKind::*;
    let start = NOW - 3 * H;
    vec![
        // A: two recipients, received over TLS 1.3, delivered through two connectors.
        ev(Received, start + 10 * M, Some("A"), ONPREM, T13),
        ev(Received, start + 10 * M + 1, Some("A"), ONPREM, T13),
        ev(Routed, start + 10 * M + 2, Some("A"), TO_ONPREM, None),
        ev(Attempt, start + 11 * M, Some("A"), TO_ONPREM, T13_OLD),
        ev(Delivered, start + 11 * M, Some("A"), TO_ONPREM, T13_OLD),
        ev(
            Delivered,
            start + 90 * M,
            Some("A"),
            Some("To fabrikam"),
            None,
        ),
        // B: plaintext, its two rows either side of 07:00: counted once, at the first.
        ev(Received, start + 2 * H - 1, Some("B"), ONPREM, None),
        ev(Received, start + 2 * H + 1, Some("B"), ONPREM, None),
        // C: anonymous, TLS 1.2 both ways, the default MX route.
        ev(Received, start + 150 * M, Some("C"), None, T12),
        ev(Delivered, start + 151 * M, Some("C"), None, T12),
        // D: received before the period, delivered in it.
        ev(
            Received,
            start - M,
            Some("D"),
            Some("Partner fabrikam"),
            T13,
        ),
        ev(Delivered, start + M, Some("D"), TO_ONPREM, T13),
        // G: an old protocol.
        ev(
            Received,
            start + 160 * M,
            Some("G"),
            ONPREM,
            Some("SSLv3 X"),
        ),
        // E: at `until`, which is exclusive.
        ev(Received, NOW, Some("E"), ONPREM, T13),
        // Refusals: the first at `since` (inclusive), one before the period.
        rejected(start, Some("RelayWithoutOnPremisesAttribution")),
        rejected(start + 5 * M, Some("RelayWithoutOnPremisesAttribution")),
        rejected(start + 125 * M, Some("RelayWithoutOnPremisesAttribution")),
        rejected(start + 126 * M, Some("RequireTls")),
        rejected(start + 127 * M, None),
        rejected(start - H, Some("RequireTls")),
    ]
}

fn three_hours(top: usize) -> ReportQuery {
    ReportQuery {
        since_ms: NOW - 3 * H,
        until_ms: NOW,
        bucket_ms: H,
        top,
    }
}

fn filled() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    Sqlite::open(dir.path())
        .unwrap()
        .insert("node-a", &rows())
        .unwrap();
    dir
}

fn series(name: &str, total: u64, counts: &[u64]) -> ConnectorSeries {
    ConnectorSeries {
        connector: name.into(),
        grouped: None,
        total,
        counts: counts.to_vec(),
    }
}

fn tls(pairs: &[(&str, u64)]) -> Vec<TlsCount> {
    pairs
        .iter()
        .map(|(v, n)| TlsCount {
            version: v.to_string(),
            count: *n,
        })
        .collect()
}

#[test]
fn counts_are_exact() {
    let dir = filled();
    let r = report(dir.path(), &three_hours(5)).unwrap();
    assert_eq!(r.since, "2026-11-27T05:00:00Z");
    assert_eq!(r.until, "2026-11-27T08:00:00Z");
    assert_eq!(r.bucket, "1h");
    assert_eq!(r.buckets, [NOW - 3 * H, NOW - 2 * H, NOW - H]);

    let inbound = &r.directions[0];
    assert_eq!(inbound.direction, Direction::Inbound);
    assert_eq!(inbound.event, "Received");
    assert_eq!(inbound.total, 4);
    assert_eq!(inbound.counts, [1, 1, 2]);
    assert_eq!(
        inbound.connectors,
        [
            series("From on-premises", 3, &[1, 1, 1]),
            series(NO_CONNECTOR, 1, &[0, 0, 1]),
        ]
    );
    assert_eq!(
        inbound.tls,
        tls(&[("TLSv1.3", 1), ("TLSv1.2", 1), ("Other", 1), ("None", 1)])
    );
    assert_eq!(inbound.tls_share, Some(0.75));

    let outbound = &r.directions[1];
    assert_eq!(outbound.direction, Direction::Outbound);
    assert_eq!(outbound.total, 4);
    assert_eq!(outbound.counts, [2, 1, 1]);
    assert_eq!(
        outbound.connectors,
        [
            series("To on-premises", 2, &[2, 0, 0]),
            series(NO_CONNECTOR, 1, &[0, 0, 1]),
            series("To fabrikam", 1, &[0, 1, 0]),
        ]
    );
    // A counts under TLS 1.3 (the old spelling) and in plaintext (two sessions).
    assert_eq!(
        outbound.tls,
        tls(&[("TLSv1.3", 2), ("TLSv1.2", 1), ("None", 1)])
    );
    assert_eq!(outbound.tls_share, Some(0.75));

    let rules: Vec<(&str, u64)> = r
        .refusals
        .iter()
        .map(|c| (c.rule.as_str(), c.count))
        .collect();
    assert_eq!(
        rules,
        [
            ("RelayWithoutOnPremisesAttribution", 3),
            ("", 1),
            ("RequireTls", 1)
        ]
    );
    assert_eq!(r.refusals_total, 5);
}

#[test]
fn the_busiest_connectors_are_named_and_the_rest_summed() {
    let dir = filled();
    let r = report(dir.path(), &three_hours(1)).unwrap();
    assert_eq!(
        r.directions[1].connectors,
        [
            series("To on-premises", 2, &[2, 0, 0]),
            ConnectorSeries {
                connector: "Other (2 connectors)".into(),
                grouped: Some(2),
                total: 2,
                counts: vec![0, 1, 1],
            },
        ]
    );
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["Directions"][1]["Connectors"][1]["Grouped"], 2);
    assert!(
        json["Directions"][1]["Connectors"][0]
            .get("Grouped")
            .is_none()
    );
    assert_eq!(json["Directions"][0]["TlsShare"], 0.75);
    assert_eq!(json["Directions"][0]["Direction"], "Inbound");
    assert_eq!(json["RefusalsTotal"], 5);
}

#[test]
fn an_empty_period_has_zero_buckets_and_no_share() {
    let dir = filled();
    let q = ReportQuery {
        since_ms: NOW + H,
        until_ms: NOW + 3 * H,
        bucket_ms: H,
        top: 5,
    };
    let r = report(dir.path(), &q).unwrap();
    for d in &r.directions {
        assert_eq!(d.total, 0);
        assert_eq!(d.counts, [0, 0]);
        assert!(d.connectors.is_empty());
        assert_eq!(d.tls, tls(&[("TLSv1.3", 0), ("TLSv1.2", 0), ("None", 0)]));
        assert_eq!(d.tls_share, None);
    }
    assert!(r.refusals.is_empty());
    let text = text::render(&r);
    assert!(text.contains("No mail in this period."), "{text}");
    assert!(text.contains("No refusals in this period."), "{text}");
    let missing = report(&dir.path().join("nothing"), &q);
    assert!(missing.unwrap_err().contains("no trace store"));
}

/// Each query reads the period through the time index, not the whole table.
#[test]
fn the_queries_use_the_time_index() {
    let dir = filled();
    let conn = crate::trace::sqlite::open_read_only(dir.path()).unwrap();
    for (sql, args) in [
        (sqlite::TRAFFIC, 4),
        (sqlite::TLS, 3),
        (sqlite::REFUSALS, 3),
    ] {
        let mut st = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let values: Vec<rusqlite::types::Value> = (0..args)
            .map(|i| rusqlite::types::Value::Integer(i as i64 + 1))
            .collect();
        let plan: Vec<String> = st
            .query_map(rusqlite::params_from_iter(values), |r| {
                r.get::<_, String>(3)
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|p| p.contains("USING INDEX events_time")),
            "{sql}\n{plan:#?}"
        );
    }
}

#[test]
fn the_text_has_the_same_numbers() {
    let dir = filled();
    let text = text::render(&report(dir.path(), &three_hours(5)).unwrap());
    let expected = "\
Period 2026-11-27T05:00:00Z to 2026-11-27T08:00:00Z, buckets of 1h

DIRECTION  CONNECTOR         MESSAGES
Inbound    From on-premises  3
Inbound    (no connector)    1
Inbound    (all)             4
Outbound   To on-premises    2
Outbound   (no connector)    1
Outbound   To fabrikam       1
Outbound   (all)             4

DIRECTION  TLSv1.3  TLSv1.2  Other  None  UNDER TLS
Inbound    1        1        1      1     75%
Outbound   2        1        0      1     75%

BUCKET (UTC)          INBOUND  OUTBOUND
2026-11-27T05:00:00Z  1        2
2026-11-27T06:00:00Z  1        1
2026-11-27T07:00:00Z  2        1

RULE                               REFUSALS
RelayWithoutOnPremisesAttribution  3
(none)                             1
RequireTls                         1
(all)                              5
";
    assert_eq!(text, expected);
}

#[test]
fn parameters_are_validated_with_defaults() {
    let f = |since: &str, until: &str, bucket: &str, top: Option<usize>| ReportFilter {
        since: Some(since.into()),
        until: Some(until.into()),
        bucket: Some(bucket.into()),
        top,
    };
    // Defaults: the last 7 days in 6-hour buckets, since rounded down to one.
    let q = ReportFilter::default().to_query(NOW + 5 * M).unwrap();
    assert_eq!(q.bucket_ms, 6 * H);
    assert_eq!(
        q.since_ms,
        NOW - 7 * 24 * H - 2 * H,
        "08:05 rounded down to 06:00"
    );
    assert_eq!(q.until_ms, NOW + 5 * M);
    assert_eq!(q.top, DEFAULT_TOP);
    assert_eq!(q.buckets(), 29);
    // The bucket follows the span unless given; empty values are defaults.
    let span = |since: &str| f(since, "", "", None).to_query(NOW).unwrap().bucket_ms;
    assert_eq!(span("6h"), 15 * M);
    assert_eq!(span("24h"), H);
    assert_eq!(span("30d"), 24 * H);
    assert_eq!(span("1y".replace('y', "000d").as_str()), 7 * 24 * H);
    let q = f(
        "2026-11-27T05:30:00Z",
        "2026-11-27T08:00:00Z",
        "1h",
        Some(3),
    )
    .to_query(NOW)
    .unwrap();
    assert_eq!(q, three_hours(3));
    for (filter, key, why) in [
        (f("1h", "2h", "", None), "since", "before until"),
        (f("tomorrow", "", "", None), "since", "cannot read"),
        (f("7d", "x", "", None), "until", "cannot read"),
        (f("7d", "", "hourly", None), "bucket", "duration"),
        (f("7d", "", "30s", None), "bucket", "at least 1m"),
        (f("30d", "", "1m", None), "bucket", "43200 buckets of 1m"),
        (f("7d", "", "", Some(0)), "top", "from 1 to 50"),
        (f("7d", "", "", Some(51)), "top", "from 1 to 50"),
    ] {
        let (k, w) = filter.to_query(NOW).unwrap_err();
        assert_eq!(k, key, "{filter:?}");
        assert!(w.contains(why), "{filter:?}: {w}");
    }
}
