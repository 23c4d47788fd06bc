//! Typed SMTP replies. Every reply the server sends is a `Reply` value built here or by a
//! policy decision, never a string literal in the session loop, so the codes of
//! `shared/spec/replies.md` live in one place.

use std::fmt;

/// An SMTP reply: basic code, RFC 3463 enhanced status code (RFC 2034: always sent, since
/// ENHANCEDSTATUSCODES is always advertised) and text. Multi-line texts are separated by `\n`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    pub enhanced: &'static str,
    pub text: String,
}

impl Reply {
    pub fn new(code: u16, enhanced: &'static str, text: impl Into<String>) -> Self {
        Reply {
            code,
            enhanced,
            text: text.into(),
        }
    }

    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Writes the reply in wire form. RFC 5321 §4.2.1: continuation lines use `code-`.
    /// Greeting-style replies without an enhanced code (220, 221 carry one too here: RFC 2034
    /// only forbids it on the greeting, which `greeting()` builds without one).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.text.len() + 16);
        let lines: Vec<&str> = self.text.split('\n').collect();
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if !self.enhanced.is_empty() {
                out.extend_from_slice(self.enhanced.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(sanitize(line).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    // ---- the replies of shared/spec/replies.md ----

    pub fn ok(text: impl Into<String>) -> Self {
        Reply::new(250, "2.0.0", text)
    }
    /// MAIL FROM accepted.
    pub fn sender_ok() -> Self {
        Reply::new(250, "2.1.0", "Sender OK")
    }
    /// RCPT TO accepted.
    pub fn recipient_ok() -> Self {
        Reply::new(250, "2.1.5", "Recipient OK")
    }
    pub fn greeting(fqdn: &str) -> Self {
        // RFC 2034 §3: enhanced codes are not used on the 220 greeting.
        Reply::new(220, "", format!("{fqdn} ESMTP connector-relay ready"))
    }
    pub fn bye(fqdn: &str) -> Self {
        Reply::new(221, "2.0.0", format!("{fqdn} closing connection"))
    }
    pub fn start_data() -> Self {
        Reply::new(354, "", "Start mail input; end with <CRLF>.<CRLF>")
    }
    pub fn syntax(text: impl Into<String>) -> Self {
        Reply::new(500, "5.5.2", text)
    }
    pub fn line_too_long() -> Self {
        Reply::new(500, "5.5.6", "Line too long")
    }
    pub fn param_syntax(text: impl Into<String>) -> Self {
        Reply::new(501, "5.5.4", text)
    }
    pub fn not_implemented(text: impl Into<String>) -> Self {
        Reply::new(502, "5.5.1", text)
    }
    pub fn bad_sequence(text: impl Into<String>) -> Self {
        Reply::new(503, "5.5.1", text)
    }
    pub fn param_not_implemented(text: impl Into<String>) -> Self {
        Reply::new(555, "5.5.4", text)
    }
    pub fn message_too_big() -> Self {
        Reply::new(
            552,
            "5.3.4",
            "Message size exceeds fixed maximum message size",
        )
    }
    /// Exchange's refusal of a header block over `MaxHeaderSize`.
    pub fn header_too_big() -> Self {
        Reply::new(552, "5.3.4", "Message header size exceeds limit")
    }
    /// RFC 6531 §3.4: a non-ASCII address in a transaction without `SMTPUTF8`.
    pub fn smtputf8_required() -> Self {
        Reply::new(
            553,
            "5.6.7",
            "Non-ASCII address requires the SMTPUTF8 parameter",
        )
    }
    pub fn too_many_recipients() -> Self {
        Reply::new(452, "4.5.3", "Too many recipients")
    }
    pub fn relay_denied() -> Self {
        Reply::new(550, "5.7.64", "TenantAttribution; Relay Access Denied")
    }
    pub fn bare_newline() -> Self {
        Reply::new(
            550,
            "5.6.11",
            "Bare line feed or carriage return not allowed",
        )
    }
    pub fn local_error() -> Self {
        Reply::new(
            451,
            "4.3.0",
            "Temporary local problem, please try again later",
        )
    }
    pub fn insufficient_storage() -> Self {
        Reply::new(452, "4.3.1", "Insufficient system storage")
    }
    /// Back pressure (Exchange's text for it).
    pub fn insufficient_resources() -> Self {
        Reply::new(452, "4.3.1", "Insufficient system resources")
    }
    pub fn service_unavailable() -> Self {
        Reply::new(
            421,
            "4.3.2",
            "Service not available, closing transmission channel",
        )
    }
    pub fn timeout() -> Self {
        Reply::new(421, "4.4.2", "Connection timed out")
    }
    /// Postfix's reply to improper pipelining (`smtpd_forbid_unauth_pipelining`).
    pub fn sync_error() -> Self {
        Reply::new(554, "5.5.0", "Error: SMTP protocol synchronization")
    }
    pub fn too_many_errors() -> Self {
        Reply::new(421, "4.7.0", "Too many errors, closing connection")
    }
    pub fn tls_required() -> Self {
        Reply::new(530, "5.7.0", "Must issue a STARTTLS command first")
    }
    /// `MAIL FROM ... REQUIRETLS` outside TLS. RFC 8689 advertises the keyword only after
    /// STARTTLS and names no reply for this case; RFC 3207 §4 gives 530 "Must issue a
    /// STARTTLS command first" and RFC 8689 §6 registers 5.7.10 "Encryption needed", so the
    /// client learns both what is wrong and how to fix it.
    pub fn requiretls_needs_tls() -> Self {
        Reply::new(
            530,
            "5.7.10",
            "REQUIRETLS needs a TLS session: issue STARTTLS first",
        )
    }
}

/// A reply text must never carry CR or LF (it would forge further reply lines).
fn sanitize(line: &str) -> std::borrow::Cow<'_, str> {
    if line.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
        line.replace(['\r', '\n', '\0'], " ").into()
    } else {
        line.into()
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.enhanced.is_empty() {
            write!(f, "{} {}", self.code, self.text)
        } else {
            write!(f, "{} {} {}", self.code, self.enhanced, self.text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multiline_wire_form() {
        let r = Reply::new(250, "", "relay.test\nPIPELINING\nSIZE 100");
        assert_eq!(
            r.to_wire(),
            b"250-relay.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n"
        );
    }

    #[test]
    fn enhanced_code_and_no_injection() {
        let r = Reply::new(550, "5.7.64", "a\rb");
        assert_eq!(r.to_wire(), b"550 5.7.64 a b\r\n");
    }
}
