//! Reports over the message trace (`GET /api/reports`, `connector-relay report`), the
//! relay's counterpart of the Exchange admin center's mail flow and TLS reports: messages
//! per direction and per connector over time, the TLS versions they travelled with, and
//! refusals by rule.
//!
//! What is counted:
//! - **Inbound** is mail the relay accepted (`Received` rows, by inbound connector);
//!   **Outbound** is mail it delivered (`Delivered` rows, by outbound or send connector;
//!   the default MX route has no connector). A message counts once per connector, at the
//!   time of its first row of that kind: a message with three recipients is one message,
//!   and one delivered through two outbound connectors counts once for each.
//! - **TLS** counts the same messages by the TLS version of the session that received or
//!   delivered them (`None`: plaintext); a message delivered over two kinds of session
//!   counts in each.
//! - **Refusals** are `Rejected` rows: every refused connection, command or message.
//!
//! The period is `[since, until)` with `since` rounded down to a multiple of the bucket
//! (UTC), so every bucket but the last (the current one) is whole.
//!
//! The numbers come from SQL aggregation in the store, one query per series, through the
//! [`ReportStore`] trait: [`sqlite::SqliteReports`] for `DataDir/trace.sqlite`,
//! [`postgres::PostgresReports`] for a PostgreSQL store (`[Relay] TraceStore`; a fleet's
//! report covers every node) with the same (standard) SQL, and [`build`] turns their rows
//! into a [`Report`].

pub mod postgres;
pub mod sqlite;
pub mod text;

use std::path::Path;

use serde::Serialize;

use super::EventKind;
use super::time::{format_duration, format_utc, parse_duration};

/// The label of the rows without a connector: anonymous inbound mail, the default MX
/// route outbound.
pub const NO_CONNECTOR: &str = "(no connector)";

/// The period when none is given (the Exchange admin center's default too).
pub const DEFAULT_SINCE: &str = "7d";

/// Connectors shown by name in each direction unless told otherwise; the rest are summed.
pub const DEFAULT_TOP: usize = 5;

/// The most connectors a report names per direction.
pub const MAX_TOP: usize = 50;

/// The most buckets in one report (a chart has room for far fewer).
pub const MAX_BUCKETS: i64 = 1000;

/// The smallest bucket.
pub const MIN_BUCKET_MS: i64 = 60_000;

/// The TLS versions a report names, in this order, then `Other` (only when some session
/// used another one) and `None`.
pub const TLS_VERSIONS: [&str; 2] = ["TLSv1.3", "TLSv1.2"];

/// Which way mail went through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// Accepted by the relay (`Received`).
    Inbound,
    /// Delivered by the relay (`Delivered`).
    Outbound,
}

impl Direction {
    pub const ALL: [Direction; 2] = [Direction::Inbound, Direction::Outbound];

    /// The trace event that counts a message in this direction.
    pub fn event(self) -> EventKind {
        match self {
            Direction::Inbound => EventKind::Received,
            Direction::Outbound => EventKind::Delivered,
        }
    }
}

/// A report's parameters as a person types them (`GET /api/reports`' query string, the
/// `report` command's options).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(default)]
pub struct ReportFilter {
    /// RFC 3339, a date, or back from now (`24h`, `7d`); default [`DEFAULT_SINCE`].
    pub since: Option<String>,
    /// Same forms; default now.
    pub until: Option<String>,
    /// A duration (`1h`, `1d`); default chosen from the span ([`auto_bucket`]).
    pub bucket: Option<String>,
    /// Connectors named per direction; default [`DEFAULT_TOP`].
    pub top: Option<usize>,
}

/// A validated report request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportQuery {
    /// Unix milliseconds, inclusive, a multiple of `bucket_ms`.
    pub since_ms: i64,
    /// Unix milliseconds, exclusive.
    pub until_ms: i64,
    pub bucket_ms: i64,
    pub top: usize,
}

impl ReportQuery {
    /// How many buckets cover the period.
    pub fn buckets(&self) -> usize {
        ((self.until_ms - self.since_ms + self.bucket_ms - 1) / self.bucket_ms) as usize
    }
}

/// A bucket that gives a chart of 24 to 60 bars for common periods: 15 minutes up to 6
/// hours, hours up to 2 days, 6 hours up to 14 days, days up to 90 days, weeks beyond.
pub fn auto_bucket(span_ms: i64) -> i64 {
    const M: i64 = 60_000;
    const H: i64 = 60 * M;
    const D: i64 = 24 * H;
    match span_ms {
        s if s <= 6 * H => 15 * M,
        s if s <= 2 * D => H,
        s if s <= 14 * D => 6 * H,
        s if s <= 90 * D => D,
        _ => 7 * D,
    }
}

type Refused = (&'static str, String);

impl ReportFilter {
    /// The query, times resolved against `now_ms`. A bad value is `Err((name, why))`,
    /// `name` being the parameter (`since`, `until`, `bucket`, `top`).
    pub fn to_query(&self, now_ms: i64) -> Result<ReportQuery, Refused> {
        let given = |v: &Option<String>| {
            v.as_deref()
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let time = |name: &'static str, v: Option<String>, default: i64| match v {
            Some(t) => super::parse_since(&t, now_ms).map_err(|e| (name, e)),
            None => Ok(default),
        };
        let default_since = now_ms - parse_duration(DEFAULT_SINCE).unwrap_or(0);
        let since = time("since", given(&self.since), default_since)?;
        let until = time("until", given(&self.until), now_ms)?;
        if since >= until {
            return Err(("since", "must be before until (and before now)".into()));
        }
        let bucket = match given(&self.bucket) {
            Some(b) => parse_duration(&b).map_err(|e| ("bucket", e))?,
            None => auto_bucket(until - since),
        };
        if bucket < MIN_BUCKET_MS {
            return Err(("bucket", "must be at least 1m".into()));
        }
        let top = self.top.unwrap_or(DEFAULT_TOP);
        if !(1..=MAX_TOP).contains(&top) {
            return Err(("top", format!("must be from 1 to {MAX_TOP}")));
        }
        let q = ReportQuery {
            since_ms: since.div_euclid(bucket) * bucket,
            until_ms: until,
            bucket_ms: bucket,
            top,
        };
        if q.buckets() as i64 > MAX_BUCKETS {
            return Err((
                "bucket",
                format!(
                    "{} buckets of {} in this period; at most {MAX_BUCKETS}: choose a larger bucket or a shorter period",
                    q.buckets(),
                    format_duration(bucket)
                ),
            ));
        }
        Ok(q)
    }
}

/// The rows a store answers; see the module documentation for what each counts.
pub trait ReportStore {
    /// `(bucket index, connector, messages)` of `direction` in the period: a bucket index
    /// is `(time - since) / bucket` of the message's first row there.
    fn traffic(
        &self,
        q: &ReportQuery,
        direction: Direction,
    ) -> Result<Vec<(i64, Option<String>, u64)>, String>;

    /// `(version, messages)` of `direction` in the period: the version is one of
    /// [`TLS_VERSIONS`], `Other` or `None`.
    fn tls(&self, q: &ReportQuery, direction: Direction) -> Result<Vec<(String, u64)>, String>;

    /// `(rule, refusals)` in the period (an empty rule for a refusal that names none).
    fn refusals(&self, q: &ReportQuery) -> Result<Vec<(String, u64)>, String>;
}

/// A report, as `GET /api/reports` answers it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Report {
    /// The period, RFC 3339 UTC and Unix milliseconds.
    pub since: String,
    pub until: String,
    pub since_ms: i64,
    pub until_ms: i64,
    /// The bucket as a duration (`1h`) and in milliseconds.
    pub bucket: String,
    pub bucket_ms: i64,
    /// The start of every bucket, Unix milliseconds.
    pub buckets: Vec<i64>,
    /// Inbound, then Outbound.
    pub directions: Vec<DirectionReport>,
    /// By rule, most refusals first.
    pub refusals: Vec<RuleCount>,
    pub refusals_total: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DirectionReport {
    pub direction: Direction,
    /// The trace event counted (`Received`, `Delivered`).
    pub event: &'static str,
    /// Messages in the period.
    pub total: u64,
    /// Messages per bucket.
    pub counts: Vec<u64>,
    /// The busiest connectors by name (most messages first), then one `Other` series
    /// summing the rest.
    pub connectors: Vec<ConnectorSeries>,
    /// Messages by TLS version: [`TLS_VERSIONS`], `Other` when not zero, `None`.
    pub tls: Vec<TlsCount>,
    /// The share of those under TLS, from 0 to 1; absent without messages.
    pub tls_share: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConnectorSeries {
    /// The connector's name, [`NO_CONNECTOR`], or `Other (N connectors)`.
    pub connector: String,
    /// For the `Other` series: how many connectors it sums.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grouped: Option<usize>,
    pub total: u64,
    pub counts: Vec<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TlsCount {
    pub version: String,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RuleCount {
    pub rule: String,
    pub count: u64,
}

/// The report of the trace store in `data_dir`.
pub fn report(data_dir: &Path, q: &ReportQuery) -> Result<Report, String> {
    build(&sqlite::SqliteReports::open(data_dir)?, q)
}

/// The report of the store `at` names (`[Relay] TraceStore`).
pub fn report_store(at: &super::backend::Location<'_>, q: &ReportQuery) -> Result<Report, String> {
    match at.target {
        super::StoreTarget::Sqlite => report(at.data_dir, q),
        super::StoreTarget::Postgres(url) => {
            let store = super::postgres::Postgres::new(url, at.trusted_ca_file, false)?;
            build(&postgres::PostgresReports::new(store), q)
        }
    }
}

/// The report from a store's rows.
pub fn build(store: &dyn ReportStore, q: &ReportQuery) -> Result<Report, String> {
    let n = q.buckets();
    let mut directions = Vec::new();
    for d in Direction::ALL {
        let traffic = store.traffic(q, d)?;
        let tls = store.tls(q, d)?;
        directions.push(direction_report(d, n, q.top, traffic, tls));
    }
    let mut refusals: Vec<RuleCount> = store
        .refusals(q)?
        .into_iter()
        .map(|(rule, count)| RuleCount { rule, count })
        .collect();
    refusals.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.rule.cmp(&b.rule)));
    Ok(Report {
        since: format_utc(q.since_ms),
        until: format_utc(q.until_ms),
        since_ms: q.since_ms,
        until_ms: q.until_ms,
        bucket: format_duration(q.bucket_ms),
        bucket_ms: q.bucket_ms,
        buckets: (0..n as i64)
            .map(|i| q.since_ms + i * q.bucket_ms)
            .collect(),
        directions,
        refusals_total: refusals.iter().map(|r| r.count).sum(),
        refusals,
    })
}

fn direction_report(
    direction: Direction,
    buckets: usize,
    top: usize,
    traffic: Vec<(i64, Option<String>, u64)>,
    tls: Vec<(String, u64)>,
) -> DirectionReport {
    let series = connector_series(buckets, traffic);
    let mut counts = vec![0; buckets];
    for s in &series {
        for (total, c) in counts.iter_mut().zip(&s.counts) {
            *total += c;
        }
    }
    let tls = tls_counts(tls);
    let all: u64 = tls.iter().map(|t| t.count).sum();
    let plain: u64 = tls
        .iter()
        .filter(|t| t.version == "None")
        .map(|t| t.count)
        .sum();
    DirectionReport {
        direction,
        event: direction.event().as_str(),
        total: counts.iter().sum(),
        counts,
        connectors: top_and_other(series, top),
        tls,
        tls_share: (all > 0).then(|| (all - plain) as f64 / all as f64),
    }
}

/// One series per connector, busiest first (ties by name); indexes outside the period
/// (a store answering more than asked) are ignored.
fn connector_series(buckets: usize, rows: Vec<(i64, Option<String>, u64)>) -> Vec<ConnectorSeries> {
    let mut series: Vec<ConnectorSeries> = Vec::new();
    for (bucket, connector, count) in rows {
        let Some(slot) = usize::try_from(bucket).ok().filter(|b| *b < buckets) else {
            continue;
        };
        let name = connector.unwrap_or_else(|| NO_CONNECTOR.to_string());
        let i = match series.iter().position(|s| s.connector == name) {
            Some(i) => i,
            None => {
                series.push(ConnectorSeries {
                    connector: name,
                    grouped: None,
                    total: 0,
                    counts: vec![0; buckets],
                });
                series.len() - 1
            }
        };
        series[i].counts[slot] += count;
        series[i].total += count;
    }
    series.sort_by(|a, b| {
        b.total
            .cmp(&a.total)
            .then_with(|| a.connector.cmp(&b.connector))
    });
    series
}

/// The first `top` series, then the rest summed into one `Other` series.
fn top_and_other(mut series: Vec<ConnectorSeries>, top: usize) -> Vec<ConnectorSeries> {
    if series.len() <= top {
        return series;
    }
    let rest = series.split_off(top);
    let mut other = ConnectorSeries {
        connector: format!("Other ({} connectors)", rest.len()),
        grouped: Some(rest.len()),
        total: 0,
        counts: vec![0; rest[0].counts.len()],
    };
    for s in rest {
        other.total += s.total;
        for (o, c) in other.counts.iter_mut().zip(s.counts) {
            *o += c;
        }
    }
    series.push(other);
    series
}

/// The versions in report order, every named one present, `Other` only when used.
fn tls_counts(rows: Vec<(String, u64)>) -> Vec<TlsCount> {
    let count = |v: &str| -> u64 { rows.iter().filter(|(k, _)| k == v).map(|(_, n)| n).sum() };
    let other = count("Other");
    TLS_VERSIONS
        .iter()
        .copied()
        .chain((other > 0).then_some("Other"))
        .chain(["None"])
        .map(|v| TlsCount {
            version: v.to_string(),
            count: count(v),
        })
        .collect()
}

#[cfg(test)]
mod tests;
