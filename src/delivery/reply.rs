//! Replies of a remote SMTP server, sans-IO: bytes in, [`Reply`] values out (RFC 5321 §4.2).
//!
//! The client ([`super::client::Conn`]) feeds what it reads into a [`ReplyReader`] and takes
//! complete replies out of it; the reader never touches a socket, so it is unit-tested and
//! fuzzed alone (`fuzz/fuzz_targets/reply_reader.rs`). Whatever the reader holds after a
//! reply was taken is input the server sent before being asked: the client uses
//! [`ReplyReader::is_empty`] to detect a server that is out of step with its commands.

use std::fmt;

use super::{DeliveryStatus, Failure};

/// RFC 5321 §4.5.3.1.5 limits a reply line to 512 octets; real servers exceed it now and
/// then, so we accept up to 4096 before calling it a protocol error.
pub const MAX_REPLY_LINE: usize = 4096;
/// Upper bound on the lines of one multi-line reply (EHLO answers have ~20).
pub const MAX_REPLY_LINES: usize = 128;

/// A parsed SMTP reply (RFC 5321 §4.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// RFC 2034/3463 enhanced status code of the first line, if present.
    pub enhanced: Option<String>,
    /// Text of each line, without the code (and without the enhanced code on the first).
    pub lines: Vec<String>,
}

impl Reply {
    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    /// 3yz: the server waits for more input (RFC 5321 §4.2.1; only `354` after DATA and
    /// `334` in AUTH are used).
    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }

    /// The reply on one line: `250 2.0.0 Ok queued as X`.
    pub fn to_line(&self) -> String {
        let mut s = self.code.to_string();
        if let Some(e) = &self.enhanced {
            s.push(' ');
            s.push_str(e);
        }
        let text = self.lines.join(" ");
        if !text.is_empty() {
            s.push(' ');
            s.push_str(&text);
        }
        s
    }

    /// The reply as a failure, kept verbatim (its enhanced code or `X.0.0`).
    pub fn to_failure(&self) -> Failure {
        Failure {
            code: Some(self.code),
            enhanced: self
                .enhanced
                .clone()
                .unwrap_or_else(|| format!("{}.0.0", self.code / 100)),
            text: self.lines.join(" "),
        }
    }

    /// The status of a recipient given this reply. Only ever called with a reply that the
    /// caller has checked answers the command it asked about (see `client::expect_reply`).
    pub(crate) fn to_status(&self) -> DeliveryStatus {
        if self.is_positive() {
            DeliveryStatus::Delivered {
                reply: self.to_line(),
            }
        } else if self.is_permanent() {
            DeliveryStatus::Permanent(self.to_failure())
        } else {
            DeliveryStatus::Temporary(self.to_failure())
        }
    }
}

/// Why the server's bytes are not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyError {
    /// A line that is not `ddd`, `ddd text` or `ddd-text` with a code from 200 to 599.
    Malformed(String),
    /// A continuation line with another code than the first line (RFC 5321 §4.2.1).
    CodeChanged { from: u16, to: u16 },
    /// More than [`MAX_REPLY_LINES`] lines.
    TooManyLines,
    /// No line end within [`MAX_REPLY_LINE`] bytes.
    LineTooLong,
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplyError::Malformed(line) => write!(f, "malformed reply {:?}", preview(line)),
            ReplyError::CodeChanged { from, to } => {
                write!(f, "multi-line reply changed its code from {from} to {to}")
            }
            ReplyError::TooManyLines => write!(f, "reply has more than {MAX_REPLY_LINES} lines"),
            ReplyError::LineTooLong => write!(f, "reply line longer than {MAX_REPLY_LINE} bytes"),
        }
    }
}

/// At most 80 characters of `s`, for error texts.
pub fn preview(s: &str) -> String {
    s.chars().take(80).collect()
}

/// Bytes from the server, cut into lines and assembled into replies.
#[derive(Debug, Default)]
pub struct ReplyReader {
    /// Received and not yet consumed as a line.
    buf: Vec<u8>,
    /// The reply being assembled: its code, enhanced code and lines so far.
    partial: Option<Reply>,
}

impl ReplyReader {
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Nothing buffered: no partial reply, no unread byte.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.partial.is_none()
    }

    /// Bytes received and not consumed.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// What is buffered, as text (for the error that reports unsolicited input).
    pub fn buffered_preview(&self) -> String {
        preview(&String::from_utf8_lossy(&self.buf))
    }

    /// The next complete reply, `Ok(None)` when more bytes are needed. `on_line` sees each
    /// raw line as it is consumed (the protocol log). After an error the reader is useless,
    /// as is the connection.
    pub fn next_reply(
        &mut self,
        mut on_line: impl FnMut(&str),
    ) -> Result<Option<Reply>, ReplyError> {
        while let Some(line) = self.next_line()? {
            on_line(&line);
            if let Some(reply) = self.push_line(&line)? {
                return Ok(Some(reply));
            }
        }
        Ok(None)
    }

    /// One line without its line ending (CRLF, or a bare LF from sloppy servers).
    fn next_line(&mut self) -> Result<Option<String>, ReplyError> {
        let Some(pos) = self.buf.iter().position(|&b| b == b'\n') else {
            if self.buf.len() > MAX_REPLY_LINE {
                return Err(ReplyError::LineTooLong);
            }
            return Ok(None);
        };
        if pos > MAX_REPLY_LINE {
            return Err(ReplyError::LineTooLong);
        }
        let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Ok(Some(String::from_utf8_lossy(&line).into_owned()))
    }

    /// Adds a line to the reply being assembled; the reply when it was the last line.
    fn push_line(&mut self, line: &str) -> Result<Option<Reply>, ReplyError> {
        let (code, last, text) =
            parse_reply_line(line).ok_or_else(|| ReplyError::Malformed(line.to_string()))?;
        match &mut self.partial {
            None => {
                let (enhanced, rest) = split_enhanced(code, text);
                self.partial = Some(Reply {
                    code,
                    enhanced,
                    lines: vec![rest.to_string()],
                });
            }
            Some(reply) => {
                // RFC 5321 §4.2.1: every line of a multi-line reply carries the same code.
                if reply.code != code {
                    return Err(ReplyError::CodeChanged {
                        from: reply.code,
                        to: code,
                    });
                }
                // Drop the repeated enhanced code of continuation lines.
                let (_, rest) = split_enhanced(code, text);
                reply.lines.push(rest.to_string());
            }
        }
        if last {
            return Ok(self.partial.take());
        }
        if self
            .partial
            .as_ref()
            .is_some_and(|r| r.lines.len() >= MAX_REPLY_LINES)
        {
            return Err(ReplyError::TooManyLines);
        }
        Ok(None)
    }
}

/// `250-text` / `250 text` / `250` → (code, is last line, text). RFC 5321 §4.2.
pub fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let b = line.as_bytes();
    if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let code: u16 = line[..3].parse().ok()?;
    // RFC 5321 §4.2: first digit 2-5 (1yz is not used by SMTP).
    if !(200..600).contains(&code) {
        return None;
    }
    match b.get(3) {
        None => Some((code, true, "")),
        Some(b' ') => Some((code, true, &line[4..])),
        Some(b'-') => Some((code, false, &line[4..])),
        Some(_) => None,
    }
}

/// Splits a leading RFC 3463 enhanced status code (`class.subject.detail`, class matching
/// the reply code's first digit, RFC 2034 §4) from the text.
pub fn split_enhanced(code: u16, text: &str) -> (Option<String>, &str) {
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    let parts: Vec<&str> = first.split('.').collect();
    let ok = parts.len() == 3
        && parts[0] == (code / 100).to_string()
        && parts[1..]
            .iter()
            .all(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        (Some(first.to_string()), rest)
    } else {
        (None, text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replies(input: &[u8]) -> (Vec<Reply>, Option<ReplyError>, ReplyReader) {
        let mut r = ReplyReader::default();
        r.feed(input);
        let mut out = Vec::new();
        loop {
            match r.next_reply(|_| {}) {
                Ok(Some(reply)) => out.push(reply),
                Ok(None) => return (out, None, r),
                Err(e) => return (out, Some(e), r),
            }
        }
    }

    #[test]
    fn reply_lines() {
        assert_eq!(
            parse_reply_line("250-PIPELINING"),
            Some((250, false, "PIPELINING"))
        );
        assert_eq!(parse_reply_line("250 OK"), Some((250, true, "OK")));
        assert_eq!(parse_reply_line("354"), Some((354, true, "")));
        assert_eq!(parse_reply_line("25"), None);
        assert_eq!(parse_reply_line("abc def"), None);
        assert_eq!(parse_reply_line("250xOK"), None);
        assert_eq!(parse_reply_line("100 continue"), None);
    }

    #[test]
    fn enhanced_codes() {
        assert_eq!(
            split_enhanced(550, "5.1.1 no such user"),
            (Some("5.1.1".into()), "no such user")
        );
        assert_eq!(
            split_enhanced(550, "4.1.1 wrong class"),
            (None, "4.1.1 wrong class")
        );
        assert_eq!(split_enhanced(250, "Ok"), (None, "Ok"));
        assert_eq!(split_enhanced(451, "4.4.318"), (Some("4.4.318".into()), ""));
    }

    #[test]
    fn multi_line_replies_and_what_is_left() {
        let (got, err, reader) =
            replies(b"250-first\r\n250-5.0.0 second\r\n250 last\n550 5.1.1 nope\r\n354 go");
        assert_eq!(err, None);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].lines, ["first", "5.0.0 second", "last"]);
        assert_eq!(got[1].to_line(), "550 5.1.1 nope");
        // The incomplete "354 go" stays: the reader is not empty.
        assert!(!reader.is_empty());
        assert_eq!(reader.buffered(), 6);
    }

    #[test]
    fn a_partial_multi_line_reply_is_not_empty() {
        let (got, err, reader) = replies(b"250-first\r\n");
        assert!(got.is_empty() && err.is_none());
        assert!(!reader.is_empty(), "half a reply was received");
    }

    #[test]
    fn every_line_with_a_space_is_a_reply_of_its_own() {
        // The EHLO answer of a broken server: each line ends the reply.
        let (got, err, reader) = replies(b"250 mx.test\r\n250 PIPELINING\r\n250 SIZE 1000\r\n");
        assert_eq!(err, None);
        assert_eq!(got.len(), 3);
        assert!(reader.is_empty());
    }

    #[test]
    fn errors() {
        let (_, err, _) = replies(b"250-a\r\n251 b\r\n");
        assert_eq!(err, Some(ReplyError::CodeChanged { from: 250, to: 251 }));
        let (_, err, _) = replies(b"hello\r\n");
        assert!(matches!(err, Some(ReplyError::Malformed(_))));
        let (_, err, _) = replies(&vec![b'2'; MAX_REPLY_LINE + 10]);
        assert_eq!(err, Some(ReplyError::LineTooLong));
        let mut long = vec![b'2'; MAX_REPLY_LINE + 10];
        long.extend_from_slice(b"\r\n");
        let (_, err, _) = replies(&long);
        assert_eq!(err, Some(ReplyError::LineTooLong));
        let many = "250-x\r\n".repeat(MAX_REPLY_LINES + 1);
        let (_, err, _) = replies(many.as_bytes());
        assert_eq!(err, Some(ReplyError::TooManyLines));
    }

    #[test]
    fn split_input_gives_the_same_replies() {
        let input = b"220-mx\r\n220 ready\r\n250 ok\r\n354 go ahead\r\n";
        let (whole, ..) = replies(input);
        for cut in 0..input.len() {
            let mut r = ReplyReader::default();
            let mut got = Vec::new();
            for part in [&input[..cut], &input[cut..]] {
                r.feed(part);
                while let Some(reply) = r.next_reply(|_| {}).unwrap() {
                    got.push(reply);
                }
            }
            assert_eq!(got, whole, "cut at {cut}");
        }
    }
}
