//! The persistent MTA-STS policy cache: `DataDir/mta-sts.sqlite`, one row per policy
//! domain, so a restart keeps every policy until its `max_age` runs out (RFC 8461 §3.3:
//! a cached policy must be applied when no fresh one can be fetched, and an attacker who
//! blocks the fetch right after a restart must not be able to downgrade delivery).
//!
//! Same approach as the trace store (`crate::trace::store`): rusqlite, WAL mode,
//! `synchronous = NORMAL` (a lost last write only means one more fetch). The hot path never
//! reads it: the engine keeps every policy in memory and reads a row only the first time a
//! domain is seen after a start, and writes one only after a fetch.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::policy::{Policy, parse_policy};

/// The file name inside `DataDir`.
pub const FILE_NAME: &str = "mta-sts.sqlite";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS policies (
    domain     TEXT PRIMARY KEY,
    id         TEXT NOT NULL,
    policy     TEXT NOT NULL,
    fetched_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
PRAGMA user_version = 1;
";

/// A policy as cached: the TXT `id` it was fetched under, when, and until when it holds
/// (unix seconds; `expires_at = fetched_at + max_age`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    pub id: String,
    pub policy: Policy,
    pub fetched_at: u64,
    pub expires_at: u64,
}

impl Cached {
    pub fn new(id: String, policy: Policy, now: u64) -> Cached {
        Cached {
            expires_at: now + policy.max_age,
            id,
            policy,
            fetched_at: now,
        }
    }

    pub fn valid_at(&self, now: u64) -> bool {
        now < self.expires_at
    }
}

/// The store's path for a `DataDir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// The SQLite file behind the in-memory cache.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating `data_dir` and the file if missing).
    pub fn open(data_dir: &Path) -> Result<Store, String> {
        let file = path(data_dir);
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", file.display());
        std::fs::create_dir_all(data_dir).map_err(|e| fail(&e))?;
        let conn = Connection::open(&file).map_err(|e| fail(&e))?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(|e| fail(&e))?;
        conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .map_err(|e| fail(&e))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL;")
            .and_then(|()| conn.execute_batch(SCHEMA))
            .map_err(|e| fail(&e))?;
        Ok(Store {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The cached policy of `domain`, expired or not. A row that no longer parses is
    /// treated as absent.
    pub fn load(&self, domain: &str) -> rusqlite::Result<Option<Cached>> {
        let row = self
            .conn()
            .query_row(
                "SELECT id, policy, fetched_at, expires_at FROM policies WHERE domain = ?1",
                params![domain],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, i64>(3)?,
                    ))
                },
            )
            .optional()?;
        Ok(row.and_then(|(id, text, fetched, expires)| {
            Some(Cached {
                id,
                policy: parse_policy(&text).ok()?,
                fetched_at: fetched.max(0) as u64,
                expires_at: expires.max(0) as u64,
            })
        }))
    }

    /// Stores (replaces) the policy of `domain`.
    pub fn save(&self, domain: &str, c: &Cached) -> rusqlite::Result<()> {
        self.conn().execute(
            "INSERT OR REPLACE INTO policies (domain, id, policy, fetched_at, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                domain,
                c.id,
                c.policy.to_text(),
                c.fetched_at as i64,
                c.expires_at as i64
            ],
        )?;
        Ok(())
    }

    /// Domains whose policy is still valid at `now` but expires before `before` (the
    /// background refresher's work list); expired rows are deleted on the way.
    pub fn expiring(&self, now: u64, before: u64) -> rusqlite::Result<Vec<String>> {
        let conn = self.conn();
        conn.execute(
            "DELETE FROM policies WHERE expires_at <= ?1",
            params![now as i64],
        )?;
        let mut st = conn.prepare("SELECT domain FROM policies WHERE expires_at < ?1")?;
        let rows = st.query_map(params![before as i64], |r| r.get::<_, String>(0))?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::mta_sts::policy::Mode;

    #[test]
    fn survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            mode: Mode::Enforce,
            max_age: 100,
            mx: vec!["mx.example.test".into(), "*.example.test".into()],
        };
        let c = Cached::new("id1".into(), policy, 1000);
        Store::open(dir.path())
            .unwrap()
            .save("example.test", &c)
            .unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.load("example.test").unwrap(), Some(c.clone()));
        assert_eq!(store.load("other.test").unwrap(), None);
        assert_eq!(store.expiring(1050, 1200).unwrap(), ["example.test"]);
        assert!(store.expiring(1050, 1090).unwrap().is_empty());
        assert!(store.expiring(1100, 2000).unwrap().is_empty());
        assert_eq!(store.load("example.test").unwrap(), None);
    }
}
