//! Operations tools that answer an administrator's questions: connector validation (does
//! this connector deliver?), the policy explainer (what would the relay decide for such a
//! session?) and the change impact preview (what would this change have done to the mail
//! of last week?). Library functions: the CLI (`validate`, `explain`, `whatif`) and the
//! admin API call the same code; the explainer and the preview decide through [`decide`].

pub mod decide;
pub mod explain;
pub mod validate;
pub mod whatif;

pub use explain::{Explanation, explain};
pub use validate::{Step, ValidationReport, record, record_edit, validate, validate_traced};

use crate::smtp::Reply;
use crate::smtp::command::{self, Address, Command};

/// An address as the session's RCPT TO parser reads it (angle brackets optional); `Err` is
/// the reply the session would give.
pub(crate) fn parse_recipient(s: &str) -> Result<Address, Reply> {
    match command::parse(format!("RCPT TO:<{}>", unbracket(s)).as_bytes())? {
        Command::Rcpt(a) => Ok(a),
        _ => Err(Reply::param_syntax("Syntax: RCPT TO:<address>")),
    }
}

/// A reverse-path as the session's MAIL FROM parser reads it (`""` and `<>` are the null
/// sender); `Err` is the reply the session would give.
pub(crate) fn parse_sender(s: &str) -> Result<Option<Address>, Reply> {
    let s = unbracket(s);
    // RFC 6531: a client sends SMTPUTF8 with a non-ASCII address; so does this one.
    let utf8 = if s.is_ascii() { "" } else { " SMTPUTF8" };
    match command::parse(format!("MAIL FROM:<{s}>{utf8}").as_bytes())? {
        Command::Mail(a, _) => Ok(a),
        _ => Err(Reply::param_syntax("Syntax: MAIL FROM:<address>")),
    }
}

fn unbracket(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|r| r.strip_suffix('>'))
        .unwrap_or(s)
}

/// RFC 3339 in UTC with whole seconds: `2026-11-27T07:07:02Z` (also a TOML date-time).
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (y, m, d) = crate::message::received::civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        s / 3600,
        s / 60 % 60,
        s % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_451_910)),
            "2026-11-23T16:38:30Z"
        );
        let parsed: toml_edit::Datetime = rfc3339(UNIX_EPOCH).parse().unwrap();
        assert!(parsed.offset.is_some());
    }

    #[test]
    fn addresses_parse_like_the_session() {
        assert_eq!(
            parse_recipient("<bob@contoso.test>").unwrap().domain,
            "contoso.test"
        );
        assert_eq!(parse_recipient("bob@contoso.test").unwrap().local, "bob");
        assert_eq!(parse_sender("<>").unwrap(), None);
        assert_eq!(parse_sender("").unwrap(), None);
        assert!(parse_recipient("two words@x.test").is_err());
        assert_eq!(
            parse_sender("a@b.test").unwrap().unwrap().to_string(),
            "a@b.test"
        );
    }
}
