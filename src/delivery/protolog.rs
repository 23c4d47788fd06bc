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

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::message::received::civil_from_days;

/// The header of a new log file.
const FIELDS: &str = "#Fields: date-time,connector-id,session-id,sequence-number,local-endpoint,remote-endpoint,event,data";

/// The protocol log directory, shared by the delivery engine.
#[derive(Debug)]
pub struct ProtocolLog {
    dir: PathBuf,
    /// The file of the current day.
    file: Mutex<Option<(String, std::fs::File)>>,
    sessions: AtomicU64,
}

impl ProtocolLog {
    pub fn new(dir: PathBuf) -> Arc<ProtocolLog> {
        Arc::new(ProtocolLog {
            dir,
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
}
