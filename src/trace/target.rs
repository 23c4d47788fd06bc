//! `[Relay] TraceStore`: where the trace rows go. `"sqlite"` (the default) is the embedded
//! store under `DataDir`, one per node; a `postgresql://` (or `postgres://`) URL is a
//! PostgreSQL server several nodes share, so one query finds a message on any node.
//!
//! The URL may hold a password. It never leaves this module in clear except to the
//! PostgreSQL client: [`PgUrl`]'s `Debug` and `Display` print it with the password as `***`
//! (logs, `check`, `/api/status`), and a config error about it never quotes it.

use std::fmt;
use std::str::FromStr;

/// Where the trace store lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum StoreTarget {
    /// `DataDir/trace.sqlite`.
    #[default]
    Sqlite,
    /// A PostgreSQL database, shared by a fleet.
    Postgres(PgUrl),
}

impl StoreTarget {
    /// The value of `TraceStore`: `"sqlite"` (any case) or a PostgreSQL URL.
    pub fn parse(text: &str) -> Result<StoreTarget, String> {
        let t = text.trim();
        if t.is_empty() {
            return Err(
                "must not be empty; use \"sqlite\" (the default) or a postgresql:// URL".into(),
            );
        }
        if t.eq_ignore_ascii_case("sqlite") {
            return Ok(StoreTarget::Sqlite);
        }
        PgUrl::parse(t).map(StoreTarget::Postgres)
    }

    /// For people: `SQLite (DataDir/trace.sqlite)` or the redacted URL.
    pub fn describe(&self) -> String {
        match self {
            StoreTarget::Sqlite => format!("SQLite ({})", super::store::FILE_NAME),
            StoreTarget::Postgres(url) => format!("PostgreSQL {url}"),
        }
    }
}

/// A PostgreSQL connection URL, validated. Printing it never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    url: String,
}

/// The `sslmode` values of libpq that the client has no name for: with rustls every TLS
/// connection verifies the server's certificate chain and name, which is what these ask.
const VERIFYING_SSL_MODES: [&str; 2] = ["sslmode=verify-full", "sslmode=verify-ca"];

impl PgUrl {
    /// Checks `text` is a PostgreSQL URL the client can use. The error never quotes it.
    pub fn parse(text: &str) -> Result<PgUrl, String> {
        let lower = text.to_ascii_lowercase();
        if !lower.starts_with("postgresql://") && !lower.starts_with("postgres://") {
            return Err(
                "is neither \"sqlite\" nor a postgresql:// (or postgres://) URL".to_string(),
            );
        }
        let url = PgUrl {
            url: text.to_string(),
        };
        let config = postgres::Config::from_str(&url.for_client()).map_err(|e| {
            // "invalid connection string", then what is wrong (which option).
            let why = match std::error::Error::source(&e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            };
            // The client's message names the option at fault; never let it echo a secret.
            match password_of(text) {
                Some(p) if !p.is_empty() && why.contains(p) => {
                    "is not a valid PostgreSQL URL".to_string()
                }
                _ => format!("is not a valid PostgreSQL URL: {why}"),
            }
        })?;
        if config.get_hosts().is_empty() {
            return Err(
                "names no host: write the server as postgresql://user@host:5432/database".into(),
            );
        }
        Ok(url)
    }

    /// The URL as the client reads it (`verify-full` / `verify-ca` as `require`, see
    /// [`VERIFYING_SSL_MODES`]).
    fn for_client(&self) -> String {
        let mut url = self.url.clone();
        for mode in VERIFYING_SSL_MODES {
            url = url.replace(mode, "sslmode=require");
        }
        url
    }

    /// The client's settings: the URL's, plus `PGPASSWORD` when the URL has no password
    /// (as libpq reads it), and timeouts so that a server that went away is noticed.
    pub fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::from_str(&self.for_client())
            .expect("validated when the config was loaded");
        if c.get_password().is_none()
            && let Ok(p) = std::env::var("PGPASSWORD")
        {
            c.password(p);
        }
        if c.get_application_name().is_none() {
            c.application_name("connector-relay");
        }
        if c.get_connect_timeout().is_none() {
            c.connect_timeout(std::time::Duration::from_secs(5));
        }
        // A write to a server that vanished without a reset fails after this instead of
        // the kernel's minutes of retransmissions.
        c.tcp_user_timeout(std::time::Duration::from_secs(15));
        c.keepalives_idle(std::time::Duration::from_secs(30));
        c
    }

    /// The URL with its password (in the user part or a `password=` parameter) as `***`.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }
}

impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({})", self.redacted())
    }
}

/// The user-info part of a URL (`user:password`), when it has one: between `://` and the
/// last `@` before the query.
fn user_info(url: &str) -> Option<(usize, usize)> {
    let start = url.find("://")? + 3;
    let end = url[start..].find('?').map_or(url.len(), |i| start + i);
    let at = url[start..end].rfind('@')? + start;
    Some((start, at))
}

/// The raw password of the URL's user part, if any.
fn password_of(url: &str) -> Option<&str> {
    let (start, at) = user_info(url)?;
    let colon = url[start..at].find(':')? + start;
    Some(&url[colon + 1..at])
}

/// `url` with the password of its user part and of any `password=` parameter as `***`.
pub fn redact(url: &str) -> String {
    let mut out = url.to_string();
    if let Some((start, at)) = user_info(url)
        && let Some(colon) = url[start..at].find(':')
    {
        out = format!("{}***{}", &url[..start + colon + 1], &url[at..]);
    }
    redact_parameter(&out)
}

/// `password=VALUE` parameters (in a query string) as `password=***`.
fn redact_parameter(url: &str) -> String {
    let Some(q) = url.find('?') else {
        return url.to_string();
    };
    let params: Vec<String> = url[q + 1..]
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => p.to_string(),
        })
        .collect();
    format!("{}?{}", &url[..q], params.join("&"))
}

/// `text` (a config line, a diff) with every PostgreSQL URL in it redacted.
pub fn redact_urls(text: &str) -> String {
    let lower = text.to_ascii_lowercase();
    let mut out = String::with_capacity(text.len());
    let mut last = 0;
    let mut from = 0;
    while let Some(i) = lower[from..].find("postgres").map(|i| from + i) {
        let end = text[i..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(text.len(), |n| i + n);
        if lower[i..end].contains("://") {
            out.push_str(&text[last..i]);
            out.push_str(&redact(&text[i..end]));
            last = end;
        }
        from = end.max(i + 1);
    }
    out.push_str(&text[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_and_urls() {
        assert_eq!(StoreTarget::parse("SQLite"), Ok(StoreTarget::Sqlite));
        let t = StoreTarget::parse("postgresql://relay:s3cret@db.contoso.test:5433/trace").unwrap();
        let StoreTarget::Postgres(url) = &t else {
            panic!("{t:?}")
        };
        assert_eq!(
            url.to_string(),
            "postgresql://relay:***@db.contoso.test:5433/trace"
        );
        assert!(!format!("{t:?}").contains("s3cret"));
        assert_eq!(url.config().get_password(), Some(&b"s3cret"[..]));
        assert_eq!(url.config().get_ports(), [5433]);
        // libpq's verifying modes are what the rustls client always does.
        let v = PgUrl::parse("postgres://relay@db/trace?sslmode=verify-full").unwrap();
        assert_eq!(
            v.config().get_ssl_mode(),
            postgres::config::SslMode::Require
        );
    }

    #[test]
    fn errors_never_quote_the_password() {
        for bad in [
            "mysql://relay:s3cret@db/trace",
            "postgresql://relay:s3cret@db:notaport/trace",
            "postgresql://relay:s3cret@db/trace?sslmode=allow",
        ] {
            let e = StoreTarget::parse(bad).unwrap_err();
            assert!(!e.contains("s3cret"), "{bad}: {e}");
        }
        assert!(
            StoreTarget::parse("postgresql:///trace")
                .unwrap_err()
                .contains("names no host")
        );
        assert!(StoreTarget::parse(" ").unwrap_err().contains("empty"));
    }

    #[test]
    fn redaction() {
        assert_eq!(
            redact("postgresql://u:p@ss@h/db?password=x&sslmode=require"),
            "postgresql://u:***@h/db?password=***&sslmode=require"
        );
        assert_eq!(redact("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(
            redact_urls(r#"TraceStore = "postgresql://u:pw@h/db" # and postgres://a:b@c/d"#),
            r#"TraceStore = "postgresql://u:***@h/db" # and postgres://a:***@c/d"#
        );
        assert_eq!(redact_urls("no url here"), "no url here");
    }
}
