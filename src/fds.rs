//! Open-file descriptors: the process limit (`RLIMIT_NOFILE`), the budget a configuration
//! needs, the floor the SMTP accept loop keeps free, and rate-limited reporting of accept
//! errors.
//!
//! Every socket and file is a descriptor. A relay at its limit cannot accept, open a spool
//! or trace file, answer the admin API or resolve a name, so the limit is raised to the hard
//! limit at start ([`raise_soft_limit`]), a configuration whose connection limits cannot fit
//! in it is refused ([`Budget::check`]), and the SMTP listeners stop accepting before the
//! last [`Budget::reserve`] descriptors are taken ([`Floor`]).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::policy::RelaySettings;

/// Descriptors kept for files: standard streams, the runtime's own (epoll, eventfd, signal
/// pipe), the spool directory and write-ahead-log segments, the trace store (SQLite
/// database, its WAL and shared memory, the admin API's readers), config and certificate
/// files read at a reload, protocol log files, `/proc/self/fd` itself.
pub const FILES_RESERVE: u64 = 64;

/// Descriptors kept for DNS: the resolver opens a UDP (or TCP) socket per query in flight.
pub const DNS_RESERVE: u64 = 128;

/// The admin API's share: its connections (see [`crate::admin::MAX_CONNECTIONS`]).
pub const ADMIN_RESERVE: u64 = crate::admin::DESCRIPTORS as u64;

/// What SMTP sessions must leave free: every reserve above.
pub const SMTP_FLOOR: u64 = FILES_RESERVE + DNS_RESERVE + ADMIN_RESERVE;

/// The process's open-files limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

/// The current `RLIMIT_NOFILE`.
pub fn open_files() -> std::io::Result<OpenFiles> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OpenFiles {
        soft: clamp_infinity(lim.rlim_cur),
        hard: clamp_infinity(lim.rlim_max),
    })
}

/// Linux refuses a soft limit above `fs.nr_open` (1,048,576 by default) even when the hard
/// limit is "unlimited"; that is the real ceiling then.
fn clamp_infinity(v: libc::rlim_t) -> u64 {
    if v == libc::RLIM_INFINITY {
        std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1 << 20)
    } else {
        v
    }
}

/// Raises the soft limit to the hard limit (no privilege needed) and returns the limits
/// before and after. Most systems start processes with a soft limit of 1,024 whatever the
/// hard limit is: the soft limit is for programs that use `select(2)`, which this one does not.
pub fn raise_soft_limit() -> std::io::Result<(OpenFiles, OpenFiles)> {
    let before = open_files()?;
    if before.soft < before.hard {
        let lim = libc::rlimit {
            rlim_cur: before.hard as libc::rlim_t,
            rlim_max: before.hard as libc::rlim_t,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok((before, open_files()?))
}

/// Descriptors open in this process now (`/proc/self/fd`); `None` where it cannot be read.
pub fn count_open() -> Option<u64> {
    // The directory handle itself is one of the entries.
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

/// The descriptors a configuration needs at its limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// `MaxInboundConnection`: one per SMTP session.
    pub inbound: u64,
    /// `MaxOutboundConnections`: one per delivery connection.
    pub outbound: u64,
    /// Listening sockets: `Listen`, `ImplicitTlsListen`, `AdminListen`.
    pub listeners: u64,
}

/// Why a configuration does not fit in a limit: the key to lower and the sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    pub key: &'static str,
    pub reason: String,
}

impl Budget {
    pub fn of(r: &RelaySettings) -> Budget {
        Budget {
            inbound: r.max_inbound_connection as u64,
            outbound: r.max_outbound_connections as u64,
            listeners: (r.listen.len() + r.implicit_tls_listen.len() + 1) as u64,
        }
    }

    /// Descriptors kept beside the connections: [`SMTP_FLOOR`] and the listeners.
    pub fn reserve(&self) -> u64 {
        SMTP_FLOOR + self.listeners
    }

    pub fn total(&self) -> u64 {
        self.inbound + self.outbound + self.reserve()
    }

    /// Refuses a budget over `limit` (`where_` says whose limit, e.g. "on this machine"),
    /// naming the larger of the two connection keys and the value that would fit.
    pub fn check(&self, limit: u64, where_: &str) -> Result<(), Shortfall> {
        let total = self.total();
        if total <= limit {
            return Ok(());
        }
        let (key, value) = if self.inbound >= self.outbound {
            ("MaxInboundConnection", self.inbound)
        } else {
            ("MaxOutboundConnections", self.outbound)
        };
        let room = limit.saturating_sub(self.reserve());
        let advice = match value.checked_sub(total - limit).filter(|v| *v >= 1) {
            Some(v) => format!("lower {key} to {v} or less, or raise the hard limit"),
            None if room >= 2 => format!(
                "lower MaxInboundConnection and MaxOutboundConnections to {room} or less together, or raise the hard limit"
            ),
            None => "raise the hard limit".to_string(),
        };
        Err(Shortfall {
            key,
            reason: format!(
                "the relay needs {total} open files (MaxInboundConnection {} + MaxOutboundConnections {} + {} kept for the admin API, spool, trace, DNS and {} listeners) but the hard limit of open files (RLIMIT_NOFILE) is {limit} {where_}; {advice} (LimitNOFILE= in a systemd unit, ulimit -Hn in a shell)",
                self.inbound,
                self.outbound,
                self.reserve(),
                self.listeners,
            ),
        })
    }
}

/// The accept loop's check that [`SMTP_FLOOR`] descriptors stay free. The kernel hands out
/// the lowest free number (POSIX `open`/`accept`), so a new descriptor numbered `n` proves
/// at least `n + 1` are open: past `soft - floor` the table is short without counting.
/// Below half the limit the number alone is trusted (counting costs a directory read);
/// between the two, `/proc/self/fd` is counted.
pub struct Floor {
    soft: u64,
    floor: u64,
}

impl Floor {
    /// For the current soft limit.
    pub fn current() -> Floor {
        let soft = open_files().map_or(u64::MAX, |l| l.soft);
        Floor::new(soft, SMTP_FLOOR)
    }

    pub fn new(soft: u64, floor: u64) -> Floor {
        Floor { soft, floor }
    }

    /// True when a connection that got descriptor `fd` leaves fewer than the floor free.
    pub fn short(&self, fd: u64) -> bool {
        self.short_with(fd, count_open)
    }

    fn short_with(&self, fd: u64, count: impl FnOnce() -> Option<u64>) -> bool {
        let usable = self.soft.saturating_sub(self.floor);
        if fd >= usable {
            return true;
        }
        if fd < self.soft / 2 {
            return false;
        }
        count().is_some_and(|open| open > usable)
    }
}

/// Counts events and logs them at most once per [`Reporter::EVERY`]: the first at once, then
/// one line with the number seen meanwhile (an accept loop at `EMFILE` otherwise writes a
/// line per attempt).
pub struct Reporter {
    what: &'static str,
    total: AtomicU64,
    state: Mutex<ReportState>,
}

#[derive(Default)]
struct ReportState {
    last: Option<Instant>,
    unreported: u64,
}

impl Reporter {
    pub const EVERY: Duration = Duration::from_secs(10);

    pub const fn new(what: &'static str) -> Reporter {
        Reporter {
            what,
            total: AtomicU64::new(0),
            state: Mutex::new(ReportState {
                last: None,
                unreported: 0,
            }),
        }
    }

    /// Events counted since the start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one event; logs it (with those not yet logged) when the last log line is
    /// older than [`Reporter::EVERY`]. True when it logged.
    pub fn report(&self, detail: &dyn std::fmt::Display) -> bool {
        self.report_at(detail, Instant::now())
    }

    fn report_at(&self, detail: &dyn std::fmt::Display, now: Instant) -> bool {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.unreported += 1;
        if s.last.is_some_and(|t| now.duration_since(t) < Self::EVERY) {
            return false;
        }
        let n = std::mem::take(&mut s.unreported);
        s.last = Some(now);
        drop(s);
        tracing::warn!(what = self.what, %detail, since_last_report = n, total, "{}", self.what);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(inbound: u64, outbound: u64) -> Budget {
        Budget {
            inbound,
            outbound,
            listeners: 2,
        }
    }

    #[test]
    fn budget_names_the_key_to_lower() {
        let b = budget(5000, 500);
        assert_eq!(b.total(), 5500 + SMTP_FLOOR + 2);
        assert!(b.check(b.total(), "here").is_ok());
        let e = b.check(2000, "here").unwrap_err();
        assert_eq!(e.key, "MaxInboundConnection");
        let fits = 2000 - 500 - SMTP_FLOOR - 2;
        assert!(
            e.reason
                .contains(&format!("lower MaxInboundConnection to {fits} or less")),
            "{}",
            e.reason
        );
        let e = budget(10, 900).check(1024, "here").unwrap_err();
        assert_eq!(e.key, "MaxOutboundConnections");
        let e = budget(5000, 1000).check(1024, "here").unwrap_err();
        let room = 1024 - SMTP_FLOOR - 2;
        let both = format!(
            "lower MaxInboundConnection and MaxOutboundConnections to {room} or less together"
        );
        assert!(e.reason.contains(&both), "{}", e.reason);
        let e = budget(10, 10).check(100, "here").unwrap_err();
        assert!(e.reason.contains("; raise the hard limit"), "{}", e.reason);
    }

    #[test]
    fn floor_trusts_the_descriptor_number_then_counts() {
        let f = Floor::new(1000, 100);
        let never = || -> Option<u64> { panic!("must not count") };
        assert!(f.short_with(900, never), "number alone proves it");
        assert!(!f.short_with(10, never), "far below: no count");
        assert!(f.short_with(600, || Some(950)));
        assert!(!f.short_with(600, || Some(700)));
        assert!(
            !f.short_with(600, || None),
            "cannot count: trust the number"
        );
    }

    #[test]
    fn reporter_logs_once_per_period() {
        let r = Reporter::new("test");
        let t0 = Instant::now();
        assert!(r.report_at(&"a", t0));
        for i in 1..60 {
            assert!(!r.report_at(&"b", t0 + Duration::from_millis(i)));
        }
        assert!(r.report_at(&"c", t0 + Reporter::EVERY));
        assert_eq!(r.total(), 61);
    }

    #[test]
    fn raising_keeps_the_hard_limit() {
        let (before, after) = raise_soft_limit().unwrap();
        assert_eq!(after.soft, after.hard);
        assert_eq!(after.hard, before.hard);
    }
}
