//! The TLS-RPT counts: SQLite (`tlsrpt.sqlite` under `DataDir`), one row per period,
//! policy domain, policy and failure detail, with its count. Written by the recorder
//! thread, read and emptied by the reporter.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, params};

use super::{PolicyType, Record, ResultType};

pub struct Store {
    conn: Mutex<Connection>,
}

/// One aggregated row: the outcome and how many sessions had it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub record: Record,
    pub count: u64,
}

/// A period with counts for a domain, not yet reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Due {
    pub start: u64,
    pub end: u64,
    pub domain: String,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tlsrpt_counts (
    period_start INTEGER NOT NULL,
    period_end INTEGER NOT NULL,
    policy_domain TEXT NOT NULL,
    policy_type TEXT NOT NULL,
    policy_strings TEXT NOT NULL,
    policy_mx TEXT NOT NULL,
    result TEXT NOT NULL,
    sending_ip TEXT NOT NULL,
    receiving_mx TEXT NOT NULL,
    receiving_ip TEXT NOT NULL,
    reason TEXT NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (period_start, policy_domain, policy_type, policy_strings, policy_mx,
                 result, sending_ip, receiving_mx, receiving_ip, reason)
);";

impl Store {
    /// Opens (creating) `dir/tlsrpt.sqlite`.
    pub fn open(dir: &Path) -> Result<Store, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = dir.join("tlsrpt.sqlite");
        let conn = Connection::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        conn.execute_batch(SCHEMA)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts one outcome in the period `[start, end)`. A success keeps no failure detail
    /// (RFC 8460 §4.4: successes are only counted in the summary).
    pub fn add(&self, start: u64, end: u64, r: &Record) -> rusqlite::Result<()> {
        let detail = r.result != ResultType::Success;
        let text = |o: Option<String>| {
            if detail {
                o.unwrap_or_default()
            } else {
                String::new()
            }
        };
        self.conn().execute(
            "INSERT INTO tlsrpt_counts VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,1)
             ON CONFLICT DO UPDATE SET count = count + 1",
            params![
                start as i64,
                end as i64,
                r.policy_domain.to_ascii_lowercase(),
                r.policy_type.as_str(),
                serde_json::to_string(&r.policy_strings).unwrap_or_default(),
                serde_json::to_string(&r.policy_mx_hosts).unwrap_or_default(),
                r.result.as_str(),
                text(r.sending_mta_ip.map(|i| i.to_string())),
                text(r.receiving_mx_hostname.clone()),
                text(r.receiving_ip.map(|i| i.to_string())),
                text(r.failure_reason.clone()),
            ],
        )?;
        Ok(())
    }

    /// Periods that ended at `before` or earlier and still have counts.
    pub fn due(&self, before: u64) -> rusqlite::Result<Vec<Due>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT DISTINCT period_start, period_end, policy_domain FROM tlsrpt_counts
             WHERE period_end <= ?1 ORDER BY period_start, policy_domain",
        )?;
        let rows = stmt.query_map(params![before as i64], |row| {
            Ok(Due {
                start: row.get::<_, i64>(0)? as u64,
                end: row.get::<_, i64>(1)? as u64,
                domain: row.get(2)?,
            })
        })?;
        rows.collect()
    }

    /// The counts of one domain in one period.
    pub fn rows(&self, start: u64, domain: &str) -> rusqlite::Result<Vec<Row>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT policy_type, policy_strings, policy_mx, result, sending_ip, receiving_mx,
                    receiving_ip, reason, count
             FROM tlsrpt_counts WHERE period_start = ?1 AND policy_domain = ?2",
        )?;
        let rows = stmt.query_map(params![start as i64, domain], |row| {
            let s = |i: usize| row.get::<_, String>(i);
            let opt = |v: String| (!v.is_empty()).then_some(v);
            let ip = |v: String| v.parse::<IpAddr>().ok();
            Ok(Row {
                record: Record {
                    policy_domain: domain.to_string(),
                    policy_type: PolicyType::parse(&s(0)?).unwrap_or(PolicyType::NoPolicyFound),
                    policy_strings: serde_json::from_str(&s(1)?).unwrap_or_default(),
                    policy_mx_hosts: serde_json::from_str(&s(2)?).unwrap_or_default(),
                    result: ResultType::parse(&s(3)?).unwrap_or(ResultType::ValidationFailure),
                    sending_mta_ip: ip(s(4)?),
                    receiving_mx_hostname: opt(s(5)?),
                    receiving_ip: ip(s(6)?),
                    failure_reason: opt(s(7)?),
                },
                count: row.get::<_, i64>(8)? as u64,
            })
        })?;
        rows.collect()
    }

    /// Forgets one domain's counts of one period (reported, or given up on).
    pub fn remove(&self, start: u64, domain: &str) -> rusqlite::Result<()> {
        self.conn().execute(
            "DELETE FROM tlsrpt_counts WHERE period_start = ?1 AND policy_domain = ?2",
            params![start as i64, domain],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(result: ResultType) -> Record {
        Record {
            policy_domain: "Example.TEST".into(),
            policy_type: PolicyType::NoPolicyFound,
            policy_strings: vec![],
            policy_mx_hosts: vec![],
            result,
            sending_mta_ip: Some("127.0.0.1".parse().unwrap()),
            receiving_mx_hostname: Some("mx.example.test".into()),
            receiving_ip: Some("127.0.0.2".parse().unwrap()),
            failure_reason: Some("certificate validation failed: expired".into()),
        }
    }

    #[test]
    fn counts_aggregate_and_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..3 {
            store.add(0, 86_400, &rec(ResultType::Success)).unwrap();
        }
        store
            .add(0, 86_400, &rec(ResultType::CertificateExpired))
            .unwrap();
        store
            .add(86_400, 172_800, &rec(ResultType::Success))
            .unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let due = store.due(86_400).unwrap();
        assert_eq!(due.len(), 1, "only the ended period");
        assert_eq!(due[0].domain, "example.test");
        let rows = store.rows(0, "example.test").unwrap();
        let count = |r: ResultType| rows.iter().find(|x| x.record.result == r).unwrap();
        assert_eq!(count(ResultType::Success).count, 3);
        // Successes keep no failure detail.
        assert_eq!(count(ResultType::Success).record.receiving_ip, None);
        let expired = count(ResultType::CertificateExpired);
        assert_eq!(expired.count, 1);
        assert_eq!(
            expired.record.receiving_mx_hostname.as_deref(),
            Some("mx.example.test")
        );
        store.remove(0, "example.test").unwrap();
        assert!(store.due(86_400).unwrap().is_empty());
        assert_eq!(store.due(172_800).unwrap().len(), 1);
    }
}
