//! Sans-IO parsers of MTA-STS (RFC 8461): the `_mta-sts` TXT record (§3.1), the policy
//! file (§3.2), and MX pattern matching (§4.1). No sockets, no clock.

use std::fmt;

/// The largest `max_age` a policy may carry (RFC 8461 §3.2: "a maximum value of 31557600").
pub const MAX_AGE_LIMIT: u64 = 31_557_600;

/// A policy's mode (RFC 8461 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Enforce,
    Testing,
    None,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Testing => "testing",
            Mode::None => "none",
        }
    }

    fn parse(s: &str) -> Option<Mode> {
        match s {
            "enforce" => Some(Mode::Enforce),
            "testing" => Some(Mode::Testing),
            "none" => Some(Mode::None),
            _ => None,
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed policy file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub mode: Mode,
    /// Seconds the policy may be cached (RFC 8461 §3.2 `max_age`).
    pub max_age: u64,
    /// `mx` patterns, lower-case, no trailing dot: `mail.example.com` or `*.example.com`.
    pub mx: Vec<String>,
}

impl Policy {
    /// Does `host` (an MX host name) match one of the policy's `mx` patterns?
    pub fn mx_matches(&self, host: &str) -> bool {
        self.mx.iter().any(|p| mx_pattern_matches(p, host))
    }

    /// The policy in its canonical text form (what the cache stores and `explain` prints).
    pub fn to_text(&self) -> String {
        let mut s = format!("version: STSv1\nmode: {}\n", self.mode);
        for mx in &self.mx {
            s.push_str(&format!("mx: {mx}\n"));
        }
        s.push_str(&format!("max_age: {}\n", self.max_age));
        s
    }
}

/// RFC 8461 §4.1: a pattern is a host name, or `*.` plus a domain, where the wildcard
/// matches exactly one left-most label ("*.example.com" matches "mail.example.com", not
/// "example.com" nor "a.b.example.com"). Case-insensitive; trailing dots ignored.
pub fn mx_pattern_matches(pattern: &str, host: &str) -> bool {
    let pattern = pattern.trim_end_matches('.');
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(parent) => host
            .split_once('.')
            .is_some_and(|(label, rest)| !label.is_empty() && rest.eq_ignore_ascii_case(parent)),
        None => host.eq_ignore_ascii_case(pattern),
    }
}

/// Parses a policy body (RFC 8461 §3.2). Lines end in CRLF; a bare LF is accepted too
/// (published policies often have one, and being lenient costs nothing here). The first
/// field must be `version: STSv1`; the first value of a repeated key counts (except `mx`);
/// unknown keys are ignored (§3.2 "extension" fields).
pub fn parse_policy(body: &str) -> Result<Policy, String> {
    let mut fields = body
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once(':') {
            Some((k, v)) => Ok((k.trim(), v.trim())),
            None => Err(format!("line {l:?} is not \"key: value\"")),
        });
    match fields.next() {
        Some(Ok(("version", "STSv1"))) => {}
        Some(Ok((k, v))) => return Err(format!("first field is {k}: {v}, not version: STSv1")),
        Some(Err(e)) => return Err(e),
        None => return Err("empty policy".into()),
    }
    let (mut mode, mut max_age, mut mx) = (None, None, Vec::new());
    for field in fields {
        let (key, value) = field?;
        match key {
            "mode" if mode.is_none() => {
                mode = Some(Mode::parse(value).ok_or_else(|| format!("unknown mode {value:?}"))?)
            }
            "max_age" if max_age.is_none() => max_age = Some(parse_max_age(value)?),
            "mx" => mx.push(parse_mx(value)?),
            _ => {}
        }
    }
    let mode = mode.ok_or("no mode field")?;
    let max_age = max_age.ok_or("no max_age field")?;
    // §3.2: "mx" is required; a `none` policy without one is common and harmless (it
    // matches nothing and enforces nothing), so only enforce/testing insist.
    if mx.is_empty() && mode != Mode::None {
        return Err(format!("mode {mode} without any mx field"));
    }
    Ok(Policy { mode, max_age, mx })
}

fn parse_max_age(value: &str) -> Result<u64, String> {
    // §3.2: "plaintext non-negative integer seconds, maximum value of 31557600", at most
    // 10 digits.
    if value.is_empty() || value.len() > 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("max_age {value:?} is not a number of seconds"));
    }
    let n: u64 = value.parse().map_err(|_| format!("max_age {value:?}"))?;
    if n > MAX_AGE_LIMIT {
        return Err(format!("max_age {n} exceeds {MAX_AGE_LIMIT}"));
    }
    Ok(n)
}

fn parse_mx(value: &str) -> Result<String, String> {
    let v = value.trim_end_matches('.').to_ascii_lowercase();
    let host = v.strip_prefix("*.").unwrap_or(&v);
    let valid = !host.is_empty()
        && host.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if valid {
        Ok(v)
    } else {
        Err(format!(
            "mx {value:?} is not a host name or *.domain pattern"
        ))
    }
}

/// Parses the `_mta-sts` TXT answer (RFC 8461 §3.1) into the policy `id`. Records not
/// starting with `v=STSv1` are ignored; none, or more than one, means no policy.
pub fn parse_txt(records: &[String]) -> Result<String, String> {
    let sts: Vec<&String> = records
        .iter()
        .filter(|r| {
            r.trim_start()
                .strip_prefix("v=STSv1")
                .is_some_and(|rest| rest.is_empty() || rest.trim_start().starts_with(';'))
        })
        .collect();
    let record = match sts.as_slice() {
        [one] => one,
        [] => return Err("no v=STSv1 TXT record".into()),
        _ => {
            return Err(format!(
                "{} v=STSv1 TXT records (exactly one allowed)",
                sts.len()
            ));
        }
    };
    for field in record.split(';').skip(1) {
        if let Some((k, v)) = field.trim().split_once('=')
            && k.trim() == "id"
        {
            let id = v.trim();
            // §3.1: id = 1*32(ALPHA / DIGIT).
            if id.is_empty() || id.len() > 32 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(format!("id {id:?} is not 1 to 32 letters and digits"));
            }
            return Ok(id.to_string());
        }
    }
    Err("v=STSv1 record without an id".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mx_patterns() {
        assert!(mx_pattern_matches("mail.example.com", "MAIL.example.com."));
        assert!(mx_pattern_matches("*.example.com", "mx1.example.com"));
        assert!(!mx_pattern_matches("*.example.com", "example.com"));
        assert!(!mx_pattern_matches("*.example.com", "a.b.example.com"));
        assert!(!mx_pattern_matches("*.example.com", "mx1.example.com.evil"));
        assert!(!mx_pattern_matches("mail.example.com", "mail2.example.com"));
    }

    #[test]
    fn policies() {
        let p = parse_policy(
            "version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.net.\r\nmax_age: 604800\r\nfuture: x\r\n",
        )
        .unwrap();
        assert_eq!(p.mode, Mode::Enforce);
        assert_eq!(p.max_age, 604800);
        assert_eq!(p.mx, ["mail.example.com", "*.example.net"]);
        assert!(p.mx_matches("a.example.net"));
        assert_eq!(parse_policy(&p.to_text()).unwrap(), p);
        let lf = parse_policy("version: STSv1\nmode: testing\nmx: a.test\nmax_age: 86400\n");
        assert_eq!(lf.unwrap().mode, Mode::Testing);
        let none = parse_policy("version: STSv1\nmode: none\nmax_age: 86400\n").unwrap();
        assert!(none.mx.is_empty());
        for bad in [
            "",
            "mode: enforce\nversion: STSv1\nmx: a\nmax_age: 1\n",
            "version: STSv2\nmode: enforce\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: 31557601\n",
            "version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n",
            "version: STSv1\nmode: enforce\nmx: a b\nmax_age: 1\n",
            "version: STSv1\nmode: enforce\nmx: a\n",
            "version: STSv1\ngarbage\n",
        ] {
            assert!(parse_policy(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn txt_records() {
        let r = |v: &[&str]| parse_txt(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            r(&["v=STSv1; id=20190429T010101;"]).unwrap(),
            "20190429T010101"
        );
        assert_eq!(r(&["v=spf1 -all", "v=STSv1;id=abc"]).unwrap(), "abc");
        assert!(r(&[]).is_err());
        assert!(r(&["v=STSv1; id=a", "v=STSv1; id=b"]).is_err());
        assert!(r(&["v=STSv1;"]).is_err());
        assert!(r(&["v=STSv1; id=not-alnum"]).is_err());
        assert!(r(&["v=STSv10; id=a"]).is_err());
    }
}
