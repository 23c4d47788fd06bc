//! The process's own log on stderr (`RUST_LOG` filters it, default `info`), in one of three
//! shapes chosen by `--log-format` (or `CONNECTOR_RELAY_LOG_FORMAT`):
//!
//! - `text`: `2026-12-05T10:00:00.123456Z  INFO connector_relay::relay: listening addr=...`,
//!   coloured only on a terminal;
//! - `journal`: the same line without the time stamp (the journal stamps every line) and with
//!   an sd-daemon(3) priority prefix (`<6>` info, `<4>` warning, `<3>` error), which journald
//!   turns into the entry's PRIORITY, so `journalctl -p warning` works;
//! - `json`: one JSON object per line with the same fields as the text line (`timestamp`,
//!   `level`, `target`, `message` and the event's own fields at the top level), for a log
//!   shipper.
//!
//! `auto` (the default) is `journal` when stderr is the journal's stream (systemd sets
//! `JOURNAL_STREAM` to its `device:inode`, compared with stderr's own so that a child whose
//! stderr was redirected does not count), else `text`.

use std::fmt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// `journal` when stderr is the systemd journal, else `text`.
    Auto,
    /// Human text with a time stamp.
    Text,
    /// Text without time stamp, with `<N>` priority prefixes for journald.
    Journal,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber (once, at start of `main`).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match resolve(format, stderr_is_journal()) {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Journal => {
            let text = tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false);
            builder
                .with_ansi(false)
                .event_format(Prioritized(text))
                .init()
        }
        // Colour codes only on a terminal, not in log files.
        _ => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// The format `auto` stands for.
pub fn resolve(format: LogFormat, journal: bool) -> LogFormat {
    match format {
        LogFormat::Auto if journal => LogFormat::Journal,
        LogFormat::Auto => LogFormat::Text,
        other => other,
    }
}

/// Whether stderr is the stream `JOURNAL_STREAM` names (systemd.exec(5)).
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    // SAFETY: fstat writes into the zeroed struct it is given; fd 2 is only read.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    names_stream(&value.to_string_lossy(), st.st_dev, st.st_ino)
}

/// `JOURNAL_STREAM` is `device:inode` in decimal.
pub fn names_stream(value: &str, dev: u64, ino: u64) -> bool {
    value
        .split_once(':')
        .and_then(|(d, i)| Some((d.parse::<u64>().ok()?, i.parse::<u64>().ok()?)))
        == Some((dev, ino))
}

/// sd-daemon(3) priorities (syslog's): what journald reads from a `<N>` line prefix.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A text line behind its `<N>` priority prefix.
struct Prioritized<F>(F);

impl<S, N, F> FormatEvent<S, N> for Prioritized<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_journal_only_on_the_journal_stream() {
        assert_eq!(resolve(LogFormat::Auto, true), LogFormat::Journal);
        assert_eq!(resolve(LogFormat::Auto, false), LogFormat::Text);
        assert_eq!(resolve(LogFormat::Json, true), LogFormat::Json);
        assert_eq!(resolve(LogFormat::Text, true), LogFormat::Text);
        assert!(names_stream("8:12345", 8, 12345));
        assert!(!names_stream("8:12345", 8, 12346));
        assert!(!names_stream("garbage", 8, 12345));
        assert!(!names_stream("", 0, 0));
    }

    #[test]
    fn priorities_are_syslog_levels() {
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::WARN), 4);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::DEBUG), 7);
    }
}
