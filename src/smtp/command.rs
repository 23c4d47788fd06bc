//! Sans-IO SMTP command parser (RFC 5321 §4.1). Takes one command line (without its CRLF)
//! and returns a typed `Command` or the `Reply` that explains what is wrong with it.

use super::reply::Reply;

/// RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including the CRLF.
pub const MAX_COMMAND_LINE: usize = 512;

/// A mailbox `local@domain`. `domain` may be an address literal such as `[192.0.2.1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl Address {
    /// The domain lower-cased, for policy decisions.
    pub fn domain_lc(&self) -> String {
        self.domain.to_ascii_lowercase()
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// `MAIL FROM` parameters we understand (RFC 1870 SIZE, RFC 6152 8BITMIME, RFC 6531
/// SMTPUTF8, RFC 8689 REQUIRETLS).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MailParams {
    pub size: Option<u64>,
    pub body_8bit: bool,
    pub smtputf8: bool,
    /// RFC 8689 §4.1: the message must only travel over validated TLS to next hops that
    /// offer REQUIRETLS too. The session accepts it only under TLS.
    pub requiretls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Ehlo(String),
    Helo(String),
    /// `None` is the null reverse-path `<>` (bounces).
    Mail(Option<Address>, MailParams),
    Rcpt(Address),
    Data,
    Rset,
    Noop,
    Quit,
    Vrfy,
    Help,
    StartTls,
    /// RFC 4954: `AUTH mechanism [initial-response]` (mechanism upper-cased; the response
    /// as sent, `=` for an empty one). Only served when the session has an auth verifier.
    Auth(String, Option<String>),
}

/// Parses one command line. The caller has already enforced the line length limit.
pub fn parse(line: &[u8]) -> Result<Command, Reply> {
    let line = std::str::from_utf8(line)
        .map_err(|_| Reply::syntax("Syntax error: command is not valid UTF-8"))?;
    if line.bytes().any(|b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(Reply::syntax("Syntax error: control characters in command"));
    }
    let (verb, rest) = match line.find(' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, ""),
    };
    let arg = rest.trim();
    match verb.to_ascii_uppercase().as_str() {
        "EHLO" => Ok(Command::Ehlo(helo_arg(arg)?)),
        "HELO" => Ok(Command::Helo(helo_arg(arg)?)),
        "MAIL" => parse_mail(rest),
        "RCPT" => parse_rcpt(rest),
        "DATA" => no_arg(arg, Command::Data),
        "RSET" => no_arg(arg, Command::Rset),
        "QUIT" => no_arg(arg, Command::Quit),
        "STARTTLS" => no_arg(arg, Command::StartTls),
        // RFC 5321 §4.1.1.9: NOOP may carry a string, which is ignored.
        "NOOP" => Ok(Command::Noop),
        "VRFY" if arg.is_empty() => Err(Reply::param_syntax("Syntax: VRFY <address>")),
        "VRFY" => Ok(Command::Vrfy),
        "HELP" => Ok(Command::Help),
        "AUTH" => parse_auth(arg),
        "EXPN" | "TURN" | "ETRN" | "ATRN" | "BDAT" | "SEND" | "SOML" | "SAML" => {
            Err(Reply::not_implemented("Command not implemented"))
        }
        "" => Err(Reply::syntax("Syntax error: empty command")),
        _ => Err(Reply::syntax("Syntax error: command unrecognized")),
    }
}

/// Does this command line start an HTTP request (`GET / HTTP/1.1`, `POST`, `CONNECT`, ...)?
/// Postfix refuses these verbs (`smtpd_forbidden_commands`); a browser or a cross-protocol
/// attack is not an SMTP client.
pub fn is_http_request(line: &[u8]) -> bool {
    const METHODS: [&[u8]; 9] = [
        b"GET ",
        b"POST ",
        b"HEAD ",
        b"PUT ",
        b"CONNECT ",
        b"OPTIONS ",
        b"DELETE ",
        b"PATCH ",
        b"TRACE ",
    ];
    METHODS
        .iter()
        .any(|m| line.len() >= m.len() && line[..m.len()].eq_ignore_ascii_case(m))
}

fn parse_auth(arg: &str) -> Result<Command, Reply> {
    let mut words = arg.split_ascii_whitespace();
    let Some(mechanism) = words.next() else {
        return Err(Reply::param_syntax(
            "Syntax: AUTH mechanism [initial-response]",
        ));
    };
    let initial = words.next().map(str::to_string);
    if words.next().is_some() {
        return Err(Reply::param_syntax(
            "Syntax: AUTH mechanism [initial-response]",
        ));
    }
    Ok(Command::Auth(mechanism.to_ascii_uppercase(), initial))
}

fn no_arg(arg: &str, cmd: Command) -> Result<Command, Reply> {
    if arg.is_empty() {
        Ok(cmd)
    } else {
        Err(Reply::param_syntax("Syntax error: no parameters allowed"))
    }
}

fn helo_arg(arg: &str) -> Result<String, Reply> {
    // RFC 5321 §4.1.1.1: EHLO takes a domain or address literal. We accept any single token
    // (many clients send bare host names) but refuse an empty one.
    let token = arg.split_whitespace().next().unwrap_or("");
    if token.is_empty() {
        return Err(Reply::param_syntax("Syntax: EHLO hostname"));
    }
    Ok(token.to_string())
}

/// Strips the `FROM:` / `TO:` keyword. RFC 5321 has no space after the colon, but
/// Postfix and Exchange both tolerate one; so do we.
fn after_keyword<'a>(rest: &'a str, keyword: &str) -> Option<&'a str> {
    let rest = rest.trim_start();
    // `get`, not indexing: a multi-byte character may straddle `keyword.len()` (fuzzing).
    match rest.get(..keyword.len()) {
        Some(head) if head.eq_ignore_ascii_case(keyword) => {
            Some(rest[keyword.len()..].trim_start())
        }
        _ => None,
    }
}

fn parse_mail(rest: &str) -> Result<Command, Reply> {
    let Some(rest) = after_keyword(rest, "FROM:") else {
        return Err(Reply::param_syntax("Syntax: MAIL FROM:<address>"));
    };
    let (path, params) = split_path(rest)?;
    let from = if path == "<>" {
        None
    } else {
        Some(parse_path(path)?)
    };
    let mut out = MailParams::default();
    for p in params.split_ascii_whitespace() {
        let (key, value) = match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        };
        match (key.to_ascii_uppercase().as_str(), value) {
            ("SIZE", Some(v)) => {
                let n: u64 = v
                    .parse()
                    .map_err(|_| Reply::param_syntax("Syntax error in SIZE parameter"))?;
                out.size = Some(n);
            }
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("8BITMIME") => out.body_8bit = true,
            ("BODY", Some(v)) if v.eq_ignore_ascii_case("7BIT") => out.body_8bit = false,
            ("SMTPUTF8", None) => out.smtputf8 = true,
            ("REQUIRETLS", None) => out.requiretls = true,
            _ => {
                return Err(Reply::param_not_implemented(format!(
                    "Unsupported MAIL FROM parameter {key}"
                )));
            }
        }
    }
    // RFC 6531 §3.4: a non-ASCII address needs the SMTPUTF8 parameter.
    if !out.smtputf8
        && from
            .as_ref()
            .is_some_and(|a| !a.local.is_ascii() || !a.domain.is_ascii())
    {
        return Err(Reply::smtputf8_required());
    }
    Ok(Command::Mail(from, out))
}

fn parse_rcpt(rest: &str) -> Result<Command, Reply> {
    let Some(rest) = after_keyword(rest, "TO:") else {
        return Err(Reply::param_syntax("Syntax: RCPT TO:<address>"));
    };
    let (path, params) = split_path(rest)?;
    if !params.trim().is_empty() {
        let key = params.split_ascii_whitespace().next().unwrap_or("");
        return Err(Reply::param_not_implemented(format!(
            "Unsupported RCPT TO parameter {key}"
        )));
    }
    // RFC 5321 §4.5.1: <Postmaster> without a domain must be accepted.
    if path.eq_ignore_ascii_case("<postmaster>") {
        return Ok(Command::Rcpt(Address {
            local: "postmaster".into(),
            domain: String::new(),
        }));
    }
    Ok(Command::Rcpt(parse_path(path)?))
}

/// Splits `<path> params` into the bracketed path and the parameter string.
fn split_path(s: &str) -> Result<(&str, &str), Reply> {
    if !s.starts_with('<') {
        return Err(Reply::param_syntax(
            "Syntax error: address must be enclosed in <>",
        ));
    }
    // The closing '>' is the first one outside a quoted string.
    let mut in_quote = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '>' if !in_quote => {
                let params = &s[i + 1..];
                if !params.is_empty() && !params.starts_with(' ') {
                    return Err(Reply::param_syntax("Syntax error after address"));
                }
                return Ok((&s[..=i], params));
            }
            _ => {}
        }
    }
    Err(Reply::param_syntax("Syntax error: unterminated address"))
}

/// Parses `<[@route,@route:]local@domain>`.
fn parse_path(path: &str) -> Result<Address, Reply> {
    let inner = &path[1..path.len() - 1];
    // RFC 5321 §4.1.2 / Appendix C: a source route (`@a,@b:`) must be accepted syntactically
    // and should be ignored: the mailbox after the colon is the destination. Anti-relay
    // decisions are therefore made on the final mailbox only.
    let mailbox = if inner.starts_with('@') {
        match inner.find(':') {
            Some(i) => &inner[i + 1..],
            None => return Err(Reply::param_syntax("Syntax error in source route")),
        }
    } else {
        inner
    };
    let bad = || Reply::param_syntax(format!("Syntax error in address <{mailbox}>"));
    let at = last_unquoted_at(mailbox).ok_or_else(bad)?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    if local.is_empty() || domain.is_empty() || local.len() > 64 || domain.len() > 255 {
        return Err(bad());
    }
    if !valid_local(local) || !valid_domain(domain) {
        return Err(bad());
    }
    Ok(Address {
        local: local.to_string(),
        domain: domain.to_string(),
    })
}

fn last_unquoted_at(s: &str) -> Option<usize> {
    let mut in_quote = false;
    let mut escaped = false;
    let mut found = None;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quote => escaped = true,
            '"' => in_quote = !in_quote,
            '@' if !in_quote => found = Some(i),
            _ => {}
        }
    }
    if in_quote { None } else { found }
}

/// RFC 5321 §4.1.2 Local-part = Dot-string / Quoted-string (RFC 6531 adds UTF-8).
fn valid_local(local: &str) -> bool {
    if local.starts_with('"') {
        return local.len() >= 2 && local.ends_with('"') && local.chars().all(|c| !c.is_control());
    }
    !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..")
        && local.chars().all(|c| {
            c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii()
        })
}

/// A domain name or an address literal (`[192.0.2.1]`, `[IPv6:2001:db8::1]`).
fn valid_domain(domain: &str) -> bool {
    if let Some(lit) = domain.strip_prefix('[').and_then(|d| d.strip_suffix(']')) {
        return match lit.get(..5) {
            Some(p) if p.eq_ignore_ascii_case("IPv6:") => {
                lit[5..].parse::<std::net::Ipv6Addr>().is_ok()
            }
            _ => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
    }
    domain.split('.').all(|label| {
        !label.is_empty()
            && label.len() <= 63
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(l: &str, d: &str) -> Address {
        Address {
            local: l.into(),
            domain: d.into(),
        }
    }

    #[test]
    fn basic_commands() {
        assert_eq!(
            parse(b"EHLO client.test"),
            Ok(Command::Ehlo("client.test".into()))
        );
        assert_eq!(parse(b"helo x"), Ok(Command::Helo("x".into())));
        assert_eq!(parse(b"DATA"), Ok(Command::Data));
        assert_eq!(parse(b"noop hello"), Ok(Command::Noop));
        assert_eq!(parse(b"QUIT"), Ok(Command::Quit));
        assert_eq!(parse(b"StartTLS"), Ok(Command::StartTls));
        assert_eq!(parse(b"EHLO").unwrap_err().code, 501);
        assert_eq!(parse(b"DATA x").unwrap_err().code, 501);
        assert_eq!(parse(b"FOO").unwrap_err().code, 500);
        assert_eq!(parse(b"EXPN list").unwrap_err().code, 502);
        assert_eq!(parse(b"VRFY bob").unwrap(), Command::Vrfy);
        assert_eq!(
            parse(b"auth plain AHUAcA=="),
            Ok(Command::Auth("PLAIN".into(), Some("AHUAcA==".into())))
        );
        assert_eq!(
            parse(b"AUTH LOGIN"),
            Ok(Command::Auth("LOGIN".into(), None))
        );
        assert_eq!(parse(b"AUTH").unwrap_err().code, 501);
    }

    #[test]
    fn mail_from() {
        assert_eq!(
            parse(b"MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME"),
            Ok(Command::Mail(
                Some(addr("a", "b.test")),
                MailParams {
                    size: Some(100),
                    body_8bit: true,
                    smtputf8: false,
                    requiretls: false,
                }
            ))
        );
        assert_eq!(
            parse(b"mail from: <>"),
            Ok(Command::Mail(None, MailParams::default()))
        );
        assert_eq!(parse(b"MAIL FROM:a@b").unwrap_err().code, 501);
        assert_eq!(parse(b"MAIL FROM:<a@b> RET=FULL").unwrap_err().code, 555);
        assert_eq!(
            parse("MAIL FROM:<ü@b.test>".as_bytes()).unwrap_err().code,
            553
        );
        assert!(parse("MAIL FROM:<ü@b.test> SMTPUTF8".as_bytes()).is_ok());
        // RFC 8689 §3: REQUIRETLS takes no value.
        match parse(b"MAIL FROM:<a@b.test> requiretls SIZE=10") {
            Ok(Command::Mail(_, p)) => assert!(p.requiretls && p.size == Some(10)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse(b"MAIL FROM:<a@b.test> REQUIRETLS=YES")
                .unwrap_err()
                .code,
            555
        );
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(
            parse(b"RCPT TO:<x@y.test>"),
            Ok(Command::Rcpt(addr("x", "y.test")))
        );
        assert_eq!(
            parse(b"RCPT TO:<Postmaster>"),
            Ok(Command::Rcpt(addr("postmaster", "")))
        );
        // Source routes are accepted and ignored (RFC 5321 Appendix C).
        assert_eq!(
            parse(b"RCPT TO:<@relay.test:x@y.test>"),
            Ok(Command::Rcpt(addr("x", "y.test")))
        );
        assert_eq!(
            parse(b"RCPT TO:<\"a@b\"@y.test>"),
            Ok(Command::Rcpt(addr("\"a@b\"", "y.test")))
        );
        assert_eq!(
            parse(b"RCPT TO:<x@[127.0.0.1]>"),
            Ok(Command::Rcpt(addr("x", "[127.0.0.1]")))
        );
        for bad in [
            &b"RCPT TO:<x>"[..],
            b"RCPT TO:<@y.test>",
            b"RCPT TO:<x@>",
            b"RCPT TO:<x@y..test>",
            b"RCPT TO:<x@[999.0.0.1]>",
            b"RCPT TO:<x@y.test",
            b"RCPT TO:<.x@y.test>",
            b"RCPT TO:<x@y.test>junk",
        ] {
            assert_eq!(
                parse(bad).unwrap_err().code,
                501,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(
            parse(b"RCPT TO:<x@y.test> NOTIFY=NEVER").unwrap_err().code,
            555
        );
    }

    #[test]
    fn http_requests_are_recognised() {
        assert!(is_http_request(b"GET / HTTP/1.1"));
        assert!(is_http_request(b"post /x HTTP/1.0"));
        assert!(is_http_request(b"CONNECT relay.test:25 HTTP/1.1"));
        assert!(!is_http_request(b"GETX"));
        assert!(!is_http_request(b"EHLO get"));
        assert!(!is_http_request(b"GET"));
    }

    #[test]
    fn rejects_control_bytes_and_bad_utf8() {
        assert_eq!(parse(b"NOOP \0").unwrap_err().code, 500);
        assert_eq!(parse(b"NOOP \xff").unwrap_err().code, 500);
    }

    /// Found by the `command_parser` fuzz target: a multi-byte character straddling the end
    /// of `FROM:`/`TO:` made `after_keyword` slice inside it and panic.
    #[test]
    fn keyword_followed_by_multibyte_char_is_a_syntax_error() {
        assert_eq!(
            parse("MAIL FROMé:<alice@contoso.com>".as_bytes())
                .unwrap_err()
                .code,
            501
        );
        assert_eq!(parse("RCPT Té:<a@b.com>".as_bytes()).unwrap_err().code, 501);
    }
}
