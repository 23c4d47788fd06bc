//! Time bounds of a trace query: `--since` / `--until` on the command line and `?since=` /
//! `?until=` in the admin API take an RFC 3339 timestamp or a duration back from now.
//! Rows are printed in UTC, RFC 3339, to the second.

use crate::message::received::{civil_from_days, days_from_civil};

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A time bound as Unix milliseconds. Accepted forms:
///
/// - a duration back from `now_ms`: a number and a unit `s`, `m`, `h`, `d` or `w`, several
///   of them concatenated (`30m`, `2h`, `7d`, `1h30m`);
/// - an RFC 3339 timestamp (`2026-11-27T08:00:00Z`, `2026-11-27T09:00:00.5+01:00`; `t`, `z`
///   and a space for `T` are accepted as RFC 3339 §5.6 allows);
/// - a date alone (`2026-11-27`), meaning its midnight UTC.
pub fn parse_since(text: &str, now_ms: i64) -> Result<i64, String> {
    let t = text.trim();
    if t.is_empty() {
        return Err("empty time; expected an RFC 3339 timestamp or a duration like 2h".into());
    }
    if let Some(ms) = relative(t) {
        return ms.map(|d| now_ms - d);
    }
    rfc3339(t).ok_or_else(|| {
        format!(
            "cannot read {text:?} as a time: expected an RFC 3339 timestamp \
             (2026-11-27T08:00:00Z), a date (2026-11-27) or a duration back from now \
             (30m, 2h, 7d, 1h30m)"
        )
    })
}

/// A duration alone (`15m`, `1h`, `6h`, `1d`, `1h30m`; units s, m, h, d, w) in
/// milliseconds: the reports' `bucket`.
pub fn parse_duration(text: &str) -> Result<i64, String> {
    relative(text.trim()).unwrap_or_else(|| {
        Err(format!(
            "cannot read {text:?} as a duration: expected numbers with units s, m, h, d or w \
             (15m, 1h, 1d, 1h30m)"
        ))
    })
}

/// Milliseconds as [`parse_duration`] reads them, in the largest units that fit: `1d`,
/// `6h`, `1h30m`; `0s` for zero, and whole seconds only (the rest is dropped).
pub fn format_duration(ms: i64) -> String {
    const UNITS: [(i64, &str); 5] = [
        (7 * 86_400_000, "w"),
        (86_400_000, "d"),
        (3_600_000, "h"),
        (60_000, "m"),
        (1_000, "s"),
    ];
    let mut rest = ms.max(0);
    let mut out = String::new();
    for (size, unit) in UNITS {
        if rest >= size {
            out.push_str(&format!("{}{unit}", rest / size));
            rest %= size;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// `Some` when `t` looks like a duration (digits then a unit letter); its milliseconds, or
/// why it is not one.
pub fn relative(t: &str) -> Option<Result<i64, String>> {
    let first = t.chars().next()?;
    let last = t.chars().last()?;
    if !first.is_ascii_digit() || last.is_ascii_digit() || t.contains(['-', ':']) {
        return None;
    }
    let mut total: i64 = 0;
    let mut number = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let unit: i64 = match c {
            's' => 1_000,
            'm' => 60_000,
            'h' => 3_600_000,
            'd' => 86_400_000,
            'w' => 7 * 86_400_000,
            _ => {
                return Some(Err(format!(
                    "unknown unit {c:?} in duration {t:?}; use s, m, h, d or w"
                )));
            }
        };
        let Ok(n) = number.parse::<i64>() else {
            return Some(Err(format!("a number must come before each unit in {t:?}")));
        };
        number.clear();
        match n.checked_mul(unit).and_then(|v| total.checked_add(v)) {
            Some(v) => total = v,
            None => return Some(Err(format!("duration {t:?} is too long"))),
        }
    }
    Some(Ok(total))
}

/// RFC 3339 `date-time` (or a bare `full-date`) to Unix milliseconds.
fn rfc3339(t: &str) -> Option<i64> {
    let b = t.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let s = t.get(from..from + len)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    if b.get(4) != Some(&b'-') || b.get(7) != Some(&b'-') {
        return None;
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month as u32, day as u32);
    if b.len() == 10 {
        return Some(days * 86_400_000);
    }
    if !matches!(b.get(10), Some(b'T' | b't' | b' ')) || b.get(13) != Some(&b':') {
        return None;
    }
    let (hour, minute) = (num(11, 2)?, num(14, 2)?);
    if b.get(16) != Some(&b':') {
        return None;
    }
    let second = num(17, 2)?;
    // RFC 3339 allows a leap second (60); it is read as the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0i64;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let frac = &t[start..i.min(start + 3)];
        millis = frac.parse::<i64>().ok()? * 10i64.pow(3 - frac.len() as u32);
    }
    let offset_min = match &t[i..] {
        "Z" | "z" => 0,
        zone => {
            let zb = zone.as_bytes();
            let sign = match zb.first() {
                Some(b'+') => 1,
                Some(b'-') => -1,
                _ => return None,
            };
            if zb.len() != 6 || zb[3] != b':' {
                return None;
            }
            let (h, m) = (num(i + 1, 2)?, num(i + 4, 2)?);
            if h > 23 || m > 59 {
                return None;
            }
            sign * (h * 60 + m)
        }
    };
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// `2026-11-27T08:00:00Z`: UTC, to the second.
pub fn format_utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_766_400_000; // 2026-11-27T08:00:00Z

    #[test]
    fn since_accepts_durations_timestamps_and_dates() {
        assert_eq!(format_utc(NOW), "2026-11-27T08:00:00Z");
        assert_eq!(parse_since("2h", NOW), Ok(NOW - 2 * 3_600_000));
        assert_eq!(parse_since("30m", NOW), Ok(NOW - 30 * 60_000));
        assert_eq!(parse_since("7d", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_since("45s", NOW), Ok(NOW - 45_000));
        assert_eq!(parse_since("1w", NOW), Ok(NOW - 7 * 86_400_000));
        assert_eq!(parse_since(" 1h30m ", NOW), Ok(NOW - 90 * 60_000));
        assert_eq!(parse_since("2026-11-27T08:00:00Z", NOW), Ok(NOW));
        assert_eq!(parse_since("2026-11-27t08:00:00z", NOW), Ok(NOW));
        assert_eq!(parse_since("2026-11-27 08:00:00Z", NOW), Ok(NOW));
        assert_eq!(parse_since("2026-11-27T09:30:00+01:30", NOW), Ok(NOW));
        assert_eq!(parse_since("2026-11-27T03:00:00-05:00", NOW), Ok(NOW));
        assert_eq!(parse_since("2026-11-27T08:00:00.25Z", NOW), Ok(NOW + 250));
        assert_eq!(
            parse_since("2026-11-27T08:00:00.123456Z", NOW),
            Ok(NOW + 123)
        );
        assert_eq!(parse_since("2026-11-27", NOW), Ok(NOW - 8 * 3_600_000));
        assert_eq!(parse_since("1970-01-01T00:00:00Z", NOW), Ok(0));
        assert_eq!(
            parse_since("2024-02-29T00:00:00Z", NOW),
            Ok(1_709_164_800_000)
        );
        for bad in [
            "",
            "2",
            "h",
            "2x",
            "2h-",
            "yesterday",
            "2026-11-27T08:00:00",
            "2026-11-27T08:00Z",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T08:00:00.Z",
            "2026-11-27T08:00:00+0100",
            "99999999999999999999d",
        ] {
            assert!(parse_since(bad, NOW).is_err(), "{bad:?} must be refused");
        }
        assert!(
            parse_since("2x", NOW).unwrap_err().contains("unknown unit"),
            "the error names the problem"
        );
    }

    #[test]
    fn durations_read_and_print_back() {
        for (text, ms) in [
            ("15m", 900_000),
            ("1h", 3_600_000),
            ("6h", 21_600_000),
            ("1d", 86_400_000),
            ("1w", 604_800_000),
            ("1h30m", 5_400_000),
            ("1d2h3m4s", 93_784_000),
        ] {
            assert_eq!(parse_duration(text), Ok(ms), "{text}");
            assert_eq!(format_duration(ms), text);
        }
        assert_eq!(parse_duration(" 2h "), Ok(7_200_000));
        assert_eq!(format_duration(0), "0s");
        for bad in ["", "h", "2", "2026-11-27", "2x", "-1h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be refused");
        }
    }
}
