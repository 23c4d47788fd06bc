//! Exchange value syntaxes for time spans and byte sizes.

use std::time::Duration;

/// Parses an Exchange time span (a .NET `TimeSpan`): `hh:mm:ss` or `d.hh:mm:ss`, each with an
/// optional fraction of a second (`hh:mm:ss.fff`). Set-SendConnector documents the format as
/// "dd.hh:mm:ss where dd = days, hh = hours, mm = minutes and ss = seconds".
///
/// Hours must be below 24 and minutes and seconds below 60, so that `"25:00:00"` (which .NET
/// reads in surprising ways) is rejected instead of guessed at.
pub fn parse_timespan(s: &str) -> Result<Duration, String> {
    let expected = "write hh:mm:ss (such as \"00:10:00\") or d.hh:mm:ss (such as \"2.00:00:00\")";
    let bad = || format!("{s:?} is not a valid time span; {expected}");
    if s.starts_with('-') {
        return Err(format!("{s:?} is negative; {expected}"));
    }
    let mut parts = s.split(':');
    let (Some(first), Some(minutes), Some(seconds), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let (days, hours) = match first.split_once('.') {
        Some((d, h)) => (number(d).ok_or_else(bad)?, h),
        None => (0, first),
    };
    let hours = two_digit(hours, 23).ok_or_else(|| {
        format!("{s:?} has hours outside 0-23; write days as d.hh:mm:ss (e.g. \"1.00:00:00\")")
    })?;
    let minutes = two_digit(minutes, 59).ok_or_else(bad)?;
    let (seconds, nanos) = match seconds.split_once('.') {
        Some((sec, frac)) => (sec, fraction_nanos(frac).ok_or_else(bad)?),
        None => (seconds, 0),
    };
    let seconds = two_digit(seconds, 59).ok_or_else(bad)?;
    let total = days
        .checked_mul(86_400)
        .and_then(|d| d.checked_add(hours * 3600 + minutes * 60 + seconds))
        .ok_or_else(|| format!("{s:?} is too large"))?;
    Ok(Duration::new(total, nanos))
}

/// Parses a size: a number of bytes (`"1024"`), or a number with a unit `B`, `KB`, `MB`, `GB`
/// or `TB` (binary multiples, as Exchange's ByteQuantifiedSize: 1KB = 1024 bytes). Case and a
/// space before the unit are tolerated, and so is a fraction (`"1.5MB"`). The way Exchange
/// displays sizes, `"25 MB (26,214,400 bytes)"`, is accepted too so values can be pasted from
/// `Get-SendConnector` output.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{s:?} is not a valid size; write a number of bytes, or a number with the unit B, KB, MB, GB or TB (such as \"25MB\")"
        )
    };
    let text = s.trim();
    if let Some(bytes) = exchange_display_bytes(text) {
        return Ok(bytes);
    }
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "KB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(bad()),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (number.contains('.') && frac.is_empty()) {
        return Err(bad());
    }
    let too_large = || format!("{s:?} is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut bytes = whole.checked_mul(multiplier).ok_or_else(too_large)?;
    if !frac.is_empty() {
        // Fractions only make sense with a unit; cap the digits so the arithmetic cannot overflow.
        let digits = &frac[..frac.len().min(9)];
        let scale = 10u128.pow(digits.len() as u32);
        let part = digits.parse::<u128>().unwrap_or(0) * u128::from(multiplier) / scale;
        bytes = bytes.checked_add(part as u64).ok_or_else(too_large)?;
    }
    Ok(bytes)
}

/// `"25 MB (26,214,400 bytes)"` -> 26214400.
fn exchange_display_bytes(text: &str) -> Option<u64> {
    let inner = text.split_once('(')?.1.strip_suffix("bytes)")?;
    let digits: String = inner.trim().chars().filter(|c| *c != ',').collect();
    digits.parse().ok()
}

fn number(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// One or two digits, at most `max`.
fn two_digit(s: &str, max: u64) -> Option<u64> {
    if s.len() > 2 {
        return None;
    }
    number(s).filter(|n| *n <= max)
}

/// `"5"` -> 500 ms, `"0000001"` -> 100 ns (.NET allows up to seven digits).
fn fraction_nanos(frac: &str) -> Option<u32> {
    if frac.is_empty() || frac.len() > 7 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let padded = format!("{frac:0<9}");
    padded.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timespans() {
        assert_eq!(parse_timespan("00:10:00"), Ok(Duration::from_secs(600)));
        assert_eq!(
            parse_timespan("1.00:00:00"),
            Ok(Duration::from_secs(86_400))
        );
        assert_eq!(
            parse_timespan("2.03:04:05"),
            Ok(Duration::from_secs(2 * 86_400 + 3 * 3600 + 4 * 60 + 5))
        );
        assert_eq!(parse_timespan("0:0:1"), Ok(Duration::from_secs(1)));
        assert_eq!(
            parse_timespan("00:00:01.5"),
            Ok(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_timespan("00:00:00.0000001"),
            Ok(Duration::from_nanos(100))
        );
    }

    #[test]
    fn bad_timespans() {
        for bad in [
            "",
            "10",
            "10:00",
            "25:00:00",
            "00:60:00",
            "00:00:60",
            "-00:10:00",
            "1.2.00:00:00",
            "a.00:00:00",
            "00:00:00.",
            "00:00:00.12345678",
            "00:00:00:00",
            "1d",
            " 00:10:00",
        ] {
            assert!(parse_timespan(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(
            parse_timespan("25:00:00").unwrap_err(),
            "\"25:00:00\" has hours outside 0-23; write days as d.hh:mm:ss (e.g. \"1.00:00:00\")"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("25MB"), Ok(25 * 1024 * 1024));
        assert_eq!(parse_size("256KB"), Ok(256 * 1024));
        assert_eq!(parse_size("1GB"), Ok(1 << 30));
        assert_eq!(parse_size("2TB"), Ok(2 << 40));
        assert_eq!(parse_size("100B"), Ok(100));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("10 mb"), Ok(10 << 20));
        assert_eq!(parse_size("1.5MB"), Ok(1536 * 1024));
        assert_eq!(parse_size("25 MB (26,214,400 bytes)"), Ok(26_214_400));
    }

    #[test]
    fn bad_sizes() {
        for bad in [
            "",
            "MB",
            "25XB",
            "-1",
            "25 M B",
            "1.MB",
            ".5MB",
            "ten",
            "99999999999999999999",
            "20000000TB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
