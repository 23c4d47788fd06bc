//! The report queries on a PostgreSQL trace store (`[Relay] TraceStore`): the SQLite
//! store's SQL ([`super::sqlite`]), standard SQL both run, with PostgreSQL's parameter
//! marks and table name. On a store a fleet shares, the report covers every node.

use std::cell::RefCell;

use postgres::types::ToSql;

use super::sqlite::{REFUSALS, TLS, TRAFFIC};
use super::{Direction, ReportQuery, ReportStore};
use crate::trace::EventKind;
use crate::trace::backend::Dialect;
use crate::trace::postgres::Postgres;

/// A PostgreSQL trace store, read for reports (one connection; the trait reads through
/// `&self`).
pub struct PostgresReports {
    store: RefCell<Postgres>,
}

impl PostgresReports {
    pub fn new(store: Postgres) -> PostgresReports {
        PostgresReports {
            store: RefCell::new(store),
        }
    }

    fn rows<T>(
        &self,
        sql: &str,
        args: &[&(dyn ToSql + Sync)],
        row: impl Fn(&postgres::Row) -> Result<T, postgres::Error>,
    ) -> Result<Vec<T>, String> {
        let rows = self
            .store
            .borrow_mut()
            .rows(&dialect_sql(sql), args)
            .map_err(|e| e.message)?;
        rows.iter()
            .map(|r| row(r).map_err(|e| e.to_string()))
            .collect()
    }
}

/// The SQLite text in PostgreSQL's terms: `?N` marks as `$N`, its table's name.
fn dialect_sql(sql: &str) -> String {
    let mut out = sql.replace(" events", &format!(" {}", Dialect::Postgres.table()));
    for n in (1..=9).rev() {
        out = out.replace(&format!("?{n}"), &Dialect::Postgres.param(n));
    }
    out
}

fn count(r: &postgres::Row, i: usize) -> Result<u64, postgres::Error> {
    r.try_get::<_, i64>(i).map(|n| n.max(0) as u64)
}

impl ReportStore for PostgresReports {
    fn traffic(
        &self,
        q: &ReportQuery,
        direction: Direction,
    ) -> Result<Vec<(i64, Option<String>, u64)>, String> {
        let event = direction.event().as_str();
        self.rows(
            TRAFFIC,
            &[&q.since_ms, &q.until_ms, &q.bucket_ms, &event],
            |r| Ok((r.try_get(0)?, r.try_get(1)?, count(r, 2)?)),
        )
    }

    fn tls(&self, q: &ReportQuery, direction: Direction) -> Result<Vec<(String, u64)>, String> {
        let event = direction.event().as_str();
        self.rows(TLS, &[&q.since_ms, &q.until_ms, &event], |r| {
            Ok((r.try_get(0)?, count(r, 1)?))
        })
    }

    fn refusals(&self, q: &ReportQuery) -> Result<Vec<(String, u64)>, String> {
        let event = EventKind::Rejected.as_str();
        self.rows(REFUSALS, &[&q.since_ms, &q.until_ms, &event], |r| {
            Ok((r.try_get(0)?, count(r, 1)?))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_text_in_postgresql_terms() {
        let sql = dialect_sql(TRAFFIC);
        assert!(sql.contains("(first_ms - $1) / $3"), "{sql}");
        assert!(sql.contains("FROM connector_relay_trace"), "{sql}");
        assert!(sql.contains("event = $4"), "{sql}");
        assert!(!sql.contains('?') && !sql.contains(" events"), "{sql}");
    }
}
