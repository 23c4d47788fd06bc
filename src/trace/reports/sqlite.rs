//! The report queries on `DataDir/trace.sqlite`, on a read-only connection (the relay
//! keeps writing meanwhile). Every query is bounded by `time_ms` first, so SQLite reads
//! the period through the `events_time` index rather than the table; the SQL is standard
//! (integer division, `COUNT`, `CASE`, `LIKE`), the same text a PostgreSQL store can run.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, params};

use super::{Direction, ReportQuery, ReportStore};
use crate::trace::EventKind;
use crate::trace::sqlite::open_read_only;
use crate::trace::store;

/// Messages per (bucket, connector): each message once per connector, at its first row.
pub(super) const TRAFFIC: &str = "
SELECT (first_ms - ?1) / ?3 AS bucket, connector, COUNT(*)
FROM (SELECT queue_id, connector, MIN(time_ms) AS first_ms
      FROM events
      WHERE time_ms >= ?1 AND time_ms < ?2 AND event = ?4
      GROUP BY queue_id, connector) AS messages
GROUP BY bucket, connector";

/// Messages per TLS version. In `LIKE`, `_` matches any one character: the version as the
/// trace spells it (`TLSv1.3`) and as outbound rows written before it was made the same
/// (`TLSv1_3`, rustls's debug name) both count.
pub(super) const TLS: &str = "
SELECT version, COUNT(*)
FROM (SELECT DISTINCT queue_id,
             CASE WHEN tls IS NULL OR tls = '' THEN 'None'
                  WHEN tls LIKE 'TLSv1_3%' THEN 'TLSv1.3'
                  WHEN tls LIKE 'TLSv1_2%' THEN 'TLSv1.2'
                  ELSE 'Other' END AS version
      FROM events
      WHERE time_ms >= ?1 AND time_ms < ?2 AND event = ?3) AS messages
GROUP BY version";

/// Refusals per rule.
pub(super) const REFUSALS: &str = "
SELECT COALESCE(rule, '') AS refused_by, COUNT(*)
FROM events
WHERE time_ms >= ?1 AND time_ms < ?2 AND event = ?3
GROUP BY refused_by";

/// The SQLite trace store, read for reports.
pub struct SqliteReports {
    conn: Connection,
    file: PathBuf,
}

impl SqliteReports {
    /// The store in `data_dir`; an error when it does not exist or cannot be opened.
    pub fn open(data_dir: &Path) -> Result<SqliteReports, String> {
        Ok(SqliteReports {
            conn: open_read_only(data_dir)?,
            file: store::path(data_dir),
        })
    }

    /// Runs `sql` with `args`, each row read by `row`.
    fn rows<T>(
        &self,
        sql: &str,
        args: impl rusqlite::Params,
        row: impl FnMut(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, String> {
        let fail = |e: rusqlite::Error| format!("{}: {e}", self.file.display());
        let mut st = self.conn.prepare(sql).map_err(fail)?;
        let rows = st.query_map(args, row).map_err(fail)?;
        rows.collect::<Result<_, _>>().map_err(fail)
    }
}

/// A count as SQLite gives it (never negative).
fn count(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    r.get::<_, i64>(i).map(|n| n.max(0) as u64)
}

impl ReportStore for SqliteReports {
    fn traffic(
        &self,
        q: &ReportQuery,
        direction: Direction,
    ) -> Result<Vec<(i64, Option<String>, u64)>, String> {
        let event = direction.event().as_str();
        self.rows(
            TRAFFIC,
            params![q.since_ms, q.until_ms, q.bucket_ms, event],
            |r| Ok((r.get(0)?, r.get(1)?, count(r, 2)?)),
        )
    }

    fn tls(&self, q: &ReportQuery, direction: Direction) -> Result<Vec<(String, u64)>, String> {
        let event = direction.event().as_str();
        self.rows(TLS, params![q.since_ms, q.until_ms, event], |r| {
            Ok((r.get(0)?, count(r, 1)?))
        })
    }

    fn refusals(&self, q: &ReportQuery) -> Result<Vec<(String, u64)>, String> {
        let event = EventKind::Rejected.as_str();
        self.rows(REFUSALS, params![q.since_ms, q.until_ms, event], |r| {
            Ok((r.get(0)?, count(r, 1)?))
        })
    }
}
