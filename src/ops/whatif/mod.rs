//! Change impact preview (`connector-relay whatif`, the admin API's `?whatIf=true`): the
//! transactions the trace recorded, replayed through the current and a proposed
//! configuration, and what the proposed one would have decided otherwise — sessions and
//! recipients refused (by rule and connector, with the senders and counts), refusals
//! lifted, relaying made possible (flagged: [`Impact::opens_relay`]), recipients sent by
//! another route or TLS level, transactions attributed to another connector, and what
//! stays the same.
//!
//! Both sides are decided by [`crate::ops::decide::decide`], the code `explain` uses and
//! the live session applies command by command, from the facts of the trace's `Session`
//! rows (`crate::trace::facts`). The work is in two passes so that a week of a busy
//! gateway replays in seconds: [`collect`] counts rows with identical facts (one hash per
//! row, no allocation), [`replay`] decides each distinct fact set once per configuration.
//!
//! The admin API keeps the first pass between requests ([`ImpactCache`]): a preview
//! reads only the rows written since the previous one.

mod collect;
mod replay;
mod report;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, UNIX_EPOCH};

use crate::policy::Policy;
use crate::trace::facts::{SessionRange, read_sessions};

use collect::Collected;
use replay::{Memo, recorded_mismatch};
use report::Tally;
pub use report::{
    AcceptedGroup, AttributionChange, Counts, Impact, Mismatches, PeriodText, RefusedGroup, Relay,
    RelayClient, Replayed, Rerouted, RouteText, SenderCounts,
};

/// The recorded period to replay.
#[derive(Debug, Clone)]
pub struct Window {
    /// Unix milliseconds, inclusive.
    pub since_ms: i64,
    /// Unix milliseconds, exclusive.
    pub until_ms: i64,
    /// The period in words for the summary: `in the last 7 days`.
    pub words: String,
}

impl Window {
    /// The last `length_ms` before `now_ms`.
    pub fn last(now_ms: i64, length_ms: i64) -> Window {
        Window {
            since_ms: now_ms - length_ms,
            until_ms: now_ms,
            words: format!("in the last {}", duration_words(length_ms)),
        }
    }

    /// From `since_ms` to `until_ms`.
    pub fn between(since_ms: i64, until_ms: i64) -> Window {
        Window {
            since_ms,
            until_ms,
            words: format!("between {} and {}", time(since_ms), time(until_ms)),
        }
    }

    fn text(&self) -> PeriodText {
        PeriodText {
            since: time(self.since_ms),
            until: time(self.until_ms),
            words: self.words.clone(),
        }
    }
}

fn time(ms: i64) -> String {
    super::rfc3339(UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// `7 days`, `36 hours`, `90 minutes`, `45 seconds`.
fn duration_words(ms: i64) -> String {
    let s = ms / 1000;
    let (n, unit) = match s {
        s if s % 86_400 == 0 && s > 0 => (s / 86_400, "day"),
        s if s % 3600 == 0 && s > 0 => (s / 3600, "hour"),
        s if s % 60 == 0 && s > 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if n == 1 {
        format!("{n} {unit}")
    } else {
        format!("{n} {unit}s")
    }
}

/// Replays the `Session` rows of `window` in `data_dir`'s trace store through `current`
/// and `proposed` (see the module documentation). `Err` when the store cannot be read.
pub fn whatif(
    current: &Policy,
    proposed: &Policy,
    data_dir: &Path,
    window: Window,
) -> Result<Impact, String> {
    sqlite_store(current)?;
    let started = Instant::now();
    let mut collected = Collected::default();
    let range = SessionRange {
        since_ms: window.since_ms,
        until_ms: window.until_ms,
        after_id: 0,
    };
    read_sessions(data_dir, range, |row| collected.add(row))?;
    Ok(replay(current, proposed, &collected, &window, started))
}

/// The replay reads the `Session` rows of the SQLite store under `DataDir`; a fleet's
/// PostgreSQL store is not read yet, and saying so beats an empty report that looks
/// like "no impact".
fn sqlite_store(current: &Policy) -> Result<(), String> {
    match &current.relay.trace_store {
        crate::trace::StoreTarget::Sqlite => Ok(()),
        crate::trace::StoreTarget::Postgres(_) => Err(
            "the impact preview replays the SQLite trace store under DataDir; with \
             TraceStore = PostgreSQL it is not available yet"
                .into(),
        ),
    }
}

/// The second pass and the report.
fn replay(
    current: &Policy,
    proposed: &Policy,
    collected: &Collected,
    window: &Window,
    started: Instant,
) -> Impact {
    let mut memo = Memo::new(current, proposed);
    let mut tally = Tally::default();
    let mut unreadable = collected.unreadable;
    for g in collected.groups() {
        let Some(i) = memo.get(&g) else {
            unreadable += g.count;
            continue;
        };
        let d = &memo.decided[i];
        if let Some(why) = recorded_mismatch(&g, &d.shape, &d.current) {
            tally.mismatch(&g, why);
        }
        tally.add(&g, &d.shape, (&d.current, &d.proposed), &memo.proposed);
    }
    let anyone = (
        memo.current.open_to_anyone(),
        memo.proposed.open_to_anyone(),
    );
    let replayed = Replayed {
        rows: collected.rows,
        groups: collected.len() as u64,
        decisions: memo.len() as u64,
        unreadable,
        milliseconds: started.elapsed().as_millis() as u64,
    };
    let mut impact = tally.finish(anyone, window.text(), replayed);
    impact.assumptions = assumptions(current, proposed);
    impact
}

/// What the replay takes for granted, with what the proposed config changes that it
/// cannot see.
fn assumptions(current: &Policy, proposed: &Policy) -> Vec<String> {
    let mut a = vec![
        "Both configs decide from the same recorded facts with the relay's own code (src/ops/decide.rs, as explain); every difference listed is one the change makes.".to_string(),
        "Client certificates count as the relay judged them at the handshake (trusted or not): the trace keeps their names, issuer and validity, not the certificates.".to_string(),
        "Clients send the same mail as recorded: one refused might have tried otherwise (after 451 5.7.3, with STARTTLS), and a transaction refused at MAIL FROM never named its recipients.".to_string(),
        "Refusals that are not connector decisions (back pressure, sizes, recipient limits, invalid domains and SRS addresses, spool errors) stay as recorded.".to_string(),
    ];
    let (c, p) = (&current.relay, &proposed.relay);
    if c.trusted_ca_file != p.trusted_ca_file || c.revocation_lists != p.revocation_lists {
        a.push("The proposed config changes TrustedCaFile or RevocationLists: a certificate it would judge otherwise is not found (verdicts are replayed as recorded).".into());
    }
    if c.tls_certificate.is_some() != p.tls_certificate.is_some() {
        a.push("The proposed config changes whether STARTTLS is offered (TlsCertificate): sessions are replayed with the TLS they had.".into());
    }
    a
}

/// How far the cached first pass may lag behind the start of the period before it is
/// read again from the start (rows older than the period stay counted until then).
const REBUILD_AFTER_MS: i64 = 3_600_000;

/// The period the admin API previews.
pub const API_PERIOD_MS: i64 = 7 * 86_400_000;

/// The first pass kept between previews of the admin API: each preview reads only the
/// rows written since the one before, and starts over once the period has moved on by
/// more than an hour (or the trace store is another one).
#[derive(Default)]
pub struct ImpactCache {
    cached: Mutex<Option<Cached>>,
}

struct Cached {
    data_dir: PathBuf,
    since_ms: i64,
    collected: Collected,
}

impl ImpactCache {
    /// The impact of `proposed` over the last [`API_PERIOD_MS`] before `now_ms`. Blocking
    /// (SQLite): call from `spawn_blocking`.
    pub fn impact(
        &self,
        current: &Policy,
        proposed: &Policy,
        data_dir: &Path,
        now_ms: i64,
    ) -> Result<Impact, String> {
        sqlite_store(current)?;
        let started = Instant::now();
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        let start = now_ms - API_PERIOD_MS;
        let fresh = cached.as_ref().is_some_and(|c| {
            c.data_dir == data_dir && c.since_ms <= start && start - c.since_ms < REBUILD_AFTER_MS
        });
        if !fresh {
            *cached = Some(Cached {
                data_dir: data_dir.to_path_buf(),
                since_ms: start,
                collected: Collected::default(),
            });
        }
        let c = cached.as_mut().expect("set above");
        let range = SessionRange {
            since_ms: c.since_ms,
            until_ms: i64::MAX,
            after_id: c.collected.last_id,
        };
        if let Err(e) = read_sessions(data_dir, range, |row| c.collected.add(row)) {
            *cached = None;
            return Err(e);
        }
        let window = Window {
            since_ms: c.since_ms,
            until_ms: now_ms,
            words: format!("in the last {}", duration_words(API_PERIOD_MS)),
        };
        Ok(replay(current, proposed, &c.collected, &window, started))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_in_words() {
        assert_eq!(duration_words(7 * 86_400_000), "7 days");
        assert_eq!(duration_words(86_400_000), "1 day");
        assert_eq!(duration_words(36 * 3_600_000), "36 hours");
        assert_eq!(duration_words(90 * 60_000), "90 minutes");
        assert_eq!(duration_words(45_000), "45 seconds");
        let w = Window::between(0, 86_400_000);
        assert_eq!(
            w.words,
            "between 1970-01-01T00:00:00Z and 1970-01-02T00:00:00Z"
        );
    }
}
