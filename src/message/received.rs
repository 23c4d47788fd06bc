//! The `Received:` trace header (RFC 5321 §4.4) and RFC 5322 dates.

use crate::smtp::session::SessionInfo;

/// Facts for one `Received:` header.
pub struct ReceivedFields<'a> {
    pub by: &'a str,
    pub session: &'a SessionInfo,
    pub inbound_connector: Option<&'a str>,
    pub queue_id: &'a str,
    /// Named in a `for` clause only when the message has a single recipient (RFC 5321
    /// §4.4 allows it; with several recipients it would disclose the others).
    pub single_recipient: Option<&'a str>,
    pub unix_time: u64,
}

/// Builds the header, folded so that no line exceeds 78 characters by much and none
/// comes near RFC 5322's 998-octet limit. Ends with CRLF.
pub fn received_header(f: &ReceivedFields) -> String {
    let s = f.session;
    let helo = s.helo.as_deref().unwrap_or("unknown");
    let protocol = match (s.esmtp, s.tls.is_some()) {
        (false, _) => "SMTP",
        (true, false) => "ESMTP",
        (true, true) => "ESMTPS",
    };
    let mut parts = vec![
        format!("from {} ([{}])", clean(helo), s.peer.ip()),
        format!("by {} (connector-relay)", f.by),
        format!("with {protocol}"),
    ];
    if let Some(tls) = &s.tls {
        parts.push(format!("(version={} cipher={})", tls.version, tls.cipher));
    }
    if let Some(cert) = &s.client_cert {
        let trust = if cert.trusted {
            "verified"
        } else {
            "not verified"
        };
        parts.push(format!(
            "(client certificate \"{}\" {trust})",
            clean(&cert.subject)
        ));
    }
    if let Some(c) = f.inbound_connector {
        parts.push(format!("(inbound connector \"{}\")", clean(c)));
    }
    parts.push(format!("id {}", f.queue_id));
    if let Some(r) = f.single_recipient {
        parts.push(format!("for <{}>", clean(r)));
    }
    let date = rfc5322_date(f.unix_time);
    format!("Received: {};\r\n\t{date}\r\n", parts.join("\r\n\t"))
}

/// Header text kept on one line and safe inside an RFC 5322 comment: control characters
/// become spaces; `(`, `)` and `\` are escaped as quoted-pairs (RFC 5322 §3.2.2), so a
/// connector named `From Fabrikam (forced TLS)` still reads as such.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '(' | ')' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// RFC 5322 §3.3 date-time in UTC, e.g. `Mon, 23 Nov 2026 16:38:30 +0000`.
pub fn rfc5322_date(unix: u64) -> String {
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = civil_from_days(days);
    // 1970-01-01 was a Thursday.
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ][(m - 1) as usize];
    format!(
        "{weekday}, {d} {month} {y} {:02}:{:02}:{:02} +0000",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// `2024-05-01T12:00:00Z` (RFC 3339, UTC): timestamps in JSON answers.
pub fn rfc3339(unix: u64) -> String {
    let (y, m, d) = civil_from_days((unix / 86_400) as i64);
    let secs = unix % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`]: days since 1970-01-01 of a (proleptic Gregorian)
/// date.
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc5322_date(0), "Thu, 1 Jan 1970 00:00:00 +0000");
        assert_eq!(
            rfc5322_date(1_795_451_910),
            "Mon, 23 Nov 2026 16:38:30 +0000"
        );
        assert_eq!(rfc5322_date(951_782_400), "Tue, 29 Feb 2000 00:00:00 +0000");
        assert_eq!(rfc3339(951_782_400 + 3_723), "2000-02-29T01:02:03Z");
    }

    #[test]
    fn days_round_trip() {
        for days in [-800_000, -1, 0, 59, 60, 11_016, 19_782, 20_784, 2_000_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }
}
