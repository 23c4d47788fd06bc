//! Send connector protocol logs (`ProtocolLoggingLevel = "Verbose"`), after Exchange's SEND
//! protocol log: one file per UTC day, `ProtocolLogDir/SEND<yyyymmdd>.log`, shared by every
//! connector that logs, one CSV line per event:
//!
//! `date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data`
//!
//! `event` is `>` (sent), `<` (received) or `*` (information). Every command and every reply
//! line is logged, except what must not be: the AUTH command and the SASL exchange are
//! written as `<redacted>` (server challenges too), and the message itself is one `*` line
//! with its size.
//!
//! Files last written more than `SendProtocolLogMaxAge` ago (Set-TransportService's key,
//! default 30 days, `00:00:00` keeps them all) are removed when the log is set up (start,
//! reload) and each time a new day's file is opened, so a relay that runs for months keeps
//! only that many days. Only `SEND*.log` files are touched: the directory may hold others.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::message::received::civil_from_days;

/// The header of a new log file.
const FIELDS: &str = "#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data";

/// The protocol log directory, shared by the delivery engine.
#[derive(Debug)]
pub struct ProtocolLog {
    dir: PathBuf,
    /// `SendProtocolLogMaxAge` (zero: no pruning).
    max_age: Duration,
    /// The file of the current day.
    file: Mutex<Option<(String, std::fs::File)>>,
    sessions: AtomicU64,
}

impl ProtocolLog {
    pub fn new(dir: PathBuf, max_age: Duration) -> Arc<ProtocolLog> {
        prune(&dir, max_age, SystemTime::now());
        Arc::new(ProtocolLog {
            dir,
            max_age,
            file: Mutex::new(None),
            sessions: AtomicU64::new(0),
        })
    }

    /// A new session of `connector` between the two endpoints.
    pub fn session(
        self: &Arc<Self>,
        connector: &str,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> LogSession {
        let n = self.sessions.fetch_add(1, Ordering::Relaxed);
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(0);
        LogSession {
            log: self.clone(),
            connector: connector.to_string(),
            id: format!("{micros:016X}{n:04X}"),
            seq: 0,
            local,
            remote,
        }
    }

    fn write(&self, day: &str, line: &str) {
        let mut guard = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_none_or(|(d, _)| d != day) {
            *guard = None;
            prune(&self.dir, self.max_age, SystemTime::now());
            let _ = std::fs::create_dir_all(&self.dir);
            let path = self.dir.join(format!("SEND{day}.log"));
            let new = !path.exists();
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(mut f) => {
                    if new {
                        let _ = writeln!(f, "{FIELDS}");
                    }
                    *guard = Some((day.to_string(), f));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot open the protocol log");
                    return;
                }
            }
        }
        if let Some((_, f)) = guard.as_mut() {
            let _ = f.write_all(line.as_bytes());
        }
    }
}

/// Where an SMTP session's lines go, with its own sequence numbers.
#[derive(Debug)]
pub struct LogSession {
    log: Arc<ProtocolLog>,
    connector: String,
    id: String,
    seq: u32,
    local: SocketAddr,
    remote: SocketAddr,
}

impl LogSession {
    /// A line the client sent.
    pub fn sent(&mut self, data: &str) {
        self.event('>', data);
    }
    /// A reply line the client received.
    pub fn received(&mut self, data: &str) {
        self.event('<', data);
    }
    /// Information (connection opened, TLS negotiated, message sent, ...).
    pub fn info(&mut self, data: &str) {
        self.event('*', data);
    }

    fn event(&mut self, event: char, data: &str) {
        let (day, stamp) = timestamp(SystemTime::now());
        let line = format!(
            "{stamp},{},{},{},{},{},{event},{}\n",
            csv(&self.connector),
            self.id,
            self.seq,
            self.local,
            self.remote,
            csv(data)
        );
        self.seq += 1;
        self.log.write(&day, &line);
    }
}

/// Removes the protocol log files in `dir` last modified more than `max_age` before `now`
/// (nothing when `max_age` is zero); returns what it removed. A directory that does not
/// exist yet has nothing to prune.
pub fn prune(dir: &Path, max_age: Duration, now: SystemTime) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    let Some(cutoff) = now.checked_sub(max_age).filter(|_| !max_age.is_zero()) else {
        return removed;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return removed;
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if !(name.starts_with("SEND") && name.ends_with(".log")) {
            continue;
        }
        let modified = std::fs::metadata(&path).and_then(|m| m.modified());
        if modified.is_ok_and(|m| m < cutoff) {
            match std::fs::remove_file(&path) {
                Ok(()) => {
                    tracing::info!(file = %path.display(), "protocol log older than SendProtocolLogMaxAge removed");
                    removed.push(path);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "cannot remove an old protocol log")
                }
            }
        }
    }
    removed
}

/// RFC 4180 quoting when the field needs it.
fn csv(field: &str) -> String {
    let field: String = field.chars().filter(|c| *c != '\r' && *c != '\n').collect();
    if field.contains([',', '"']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

/// (`yyyymmdd`, `yyyy-mm-ddThh:mm:ss.mmmZ`) in UTC.
fn timestamp(t: SystemTime) -> (String, String) {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    (
        format!("{y:04}{m:02}{day:02}"),
        format!(
            "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
            rem / 3600,
            rem / 60 % 60,
            rem % 60,
            d.subsec_millis()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates_and_quoting() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_789);
        assert_eq!(
            timestamp(t),
            ("20240229".into(), "2024-02-29T12:34:56.789Z".into())
        );
        assert_eq!(csv("250 OK"), "250 OK");
        assert_eq!(csv("a,\"b\""), "\"a,\"\"b\"\"\"");
    }

    /// Files older than the max age go, newer ones and other files stay; zero keeps all.
    #[test]
    fn prune_removes_send_logs_older_than_the_max_age() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::now();
        let day = Duration::from_secs(86_400);
        let file = |name: &str, age: Duration| {
            let path = dir.path().join(name);
            let f = std::fs::File::create(&path).unwrap();
            f.set_modified(now - age).unwrap();
            path
        };
        let old = file("SEND20240101.log", 31 * day);
        let recent = file("SEND20240130.log", 29 * day);
        let foreign = file("notes.log", 400 * day);
        assert!(prune(dir.path(), Duration::ZERO, now).is_empty());
        assert!(old.exists());
        assert_eq!(prune(dir.path(), 30 * day, now), vec![old.clone()]);
        assert!(!old.exists() && recent.exists() && foreign.exists());
        assert!(prune(&dir.path().join("missing"), day, now).is_empty());
    }

    /// A new day's file prunes too, so a relay that runs for months keeps `max_age` days.
    #[test]
    fn a_new_days_file_prunes_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let log = ProtocolLog::new(dir.path().to_path_buf(), Duration::from_secs(86_400));
        let old = dir.path().join("SEND20240101.log");
        let f = std::fs::File::create(&old).unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3 * 86_400))
            .unwrap();
        log.write("20240105", "line\n");
        assert!(!old.exists());
        let today = std::fs::read_to_string(dir.path().join("SEND20240105.log")).unwrap();
        assert_eq!(today, format!("{FIELDS}\nline\n"));
    }
}
