//! Delivery status notifications (RFC 3464), the "NDR" a sender receives when the relay
//! gives up on a recipient, or the delay warning it receives while the relay keeps trying.
//!
//! [`build_dsn`] is a pure function: every date and identifier comes from the caller, so
//! the output is reproducible and testable. It returns a complete RFC 5322 message with
//! CRLF line endings, ready to be spooled. The caller sends it with a null reverse-path
//! (`MAIL FROM:<>`, RFC 5321 §4.5.5 and RFC 3464 §2) and never in reply to a message
//! whose own reverse-path was null (RFC 5321 §6.1: no DSNs about DSNs).
//!
//! Layout (RFC 6522 multipart/report, RFC 3464 §2):
//! 1. `text/plain`: a human explanation naming each recipient, the status, the remote
//!    server's reply and the connector involved (`shared/spec/replies.md`);
//! 2. `message/delivery-status`: the machine-readable per-message and per-recipient fields;
//! 3. `text/rfc822-headers` (RFC 6522 §4): the header block of the original message.

use std::fmt::Write as _;

/// RFC 5322 §2.1.1: lines SHOULD be at most 78 characters (excluding CRLF).
const SOFT_LINE: usize = 78;
/// RFC 5322 §2.1.1 and RFC 5321 §4.5.3.1.6: lines MUST be at most 998 octets (excluding
/// CRLF). Longer runs without whitespace are cut into pieces no longer than this, so that
/// every line stays legal whatever a remote server put in its reply.
const MAX_WORD: usize = 900;
/// A remote reply can be many lines long; after this many octets the diagnostic is cut
/// (the first lines carry the status that matters) to keep the DSN readable.
const MAX_DIAGNOSTIC: usize = 4000;
/// The original Subject is quoted after "Undeliverable: "; cap it so a hostile header
/// cannot make the DSN's own header block huge.
const MAX_SUBJECT: usize = 500;

/// Which kind of notification to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnKind {
    /// The relay gave up: the recipients listed will not get the message.
    Failure,
    /// Delivery is late but still being retried (RFC 3464 §2.3.3 `delayed`).
    Delay,
}

/// RFC 3464 §2.3.3 `Action` values the relay reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DsnAction {
    Failed,
    Delayed,
}

impl DsnAction {
    fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
        }
    }
}

/// One recipient the notification is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsnRecipient {
    /// The recipient address as given in `RCPT TO`, without angle brackets.
    pub address: String,
    pub action: DsnAction,
    /// Enhanced status code (RFC 3463), e.g. `5.1.1` or `4.4.317`.
    pub status: String,
    /// `diagnostic-type; text`, e.g. `smtp; 550 5.1.1 user unknown`. A value without a
    /// type is taken to be an SMTP reply and gets the `smtp; ` prefix.
    pub diagnostic: Option<String>,
    /// Host name of the remote MTA that gave the diagnostic.
    pub remote_mta: Option<String>,
    /// Name of the outbound/send connector that routed this recipient.
    pub connector: Option<String>,
    /// RFC 5322 date of the last delivery attempt.
    pub last_attempt: Option<String>,
}

/// Everything a notification is made of. Dates are RFC 5322 date-times, supplied by the
/// caller (the builder has no clock).
#[derive(Debug, Clone, Copy)]
pub struct DsnInput<'a> {
    pub kind: DsnKind,
    /// The relay's FQDN: `Reporting-MTA` and the MAILER-DAEMON address.
    pub reporting_mta: &'a str,
    /// The `ENVID` given at `MAIL FROM` (RFC 3461 §4.4), if any.
    pub original_envelope_id: Option<&'a str>,
    /// The original reverse-path, without angle brackets: the DSN's recipient.
    pub original_sender: &'a str,
    /// When the relay accepted the original message.
    pub arrival_date: &'a str,
    /// The DSN's own `Date`.
    pub date: &'a str,
    /// The DSN's own `Message-ID` (with or without angle brackets).
    pub message_id: &'a str,
    pub recipients: &'a [DsnRecipient],
    /// The original message's header block (see [`crate::message::header_block`]).
    pub original_headers: &'a [u8],
}

/// Builds the notification; see the module documentation.
pub fn build_dsn(input: &DsnInput) -> Vec<u8> {
    build_dsn_with_retry_until(input, None)
}

/// As [`build_dsn`], adding `Will-Retry-Until` (RFC 3464 §2.3.7) to every `delayed`
/// recipient: the date after which the relay gives up (arrival + expiration timeout).
pub fn build_dsn_with_retry_until(input: &DsnInput, will_retry_until: Option<&str>) -> Vec<u8> {
    let human = human_part(input, will_retry_until);
    let status = status_part(input, will_retry_until);
    let original = original_headers_part(input.original_headers);
    let boundary = choose_boundary(
        input.message_id,
        &[human.as_bytes(), status.as_bytes(), &original],
    );

    let mut head = String::new();
    push_field(
        &mut head,
        "From",
        &format!(
            "Mail Delivery System <MAILER-DAEMON@{}>",
            clean(input.reporting_mta)
        ),
    );
    push_field(
        &mut head,
        "To",
        &format!("<{}>", clean(input.original_sender)),
    );
    push_field(&mut head, "Subject", &subject(input));
    push_field(&mut head, "Date", input.date);
    push_field(&mut head, "Message-ID", &angle(input.message_id));
    // RFC 3834 §5: mark the message as automatic, so that auto-responders and vacation
    // programs do not answer it.
    push_field(&mut head, "Auto-Submitted", "auto-replied");
    push_field(&mut head, "MIME-Version", "1.0");
    // RFC 6522 §3: multipart/report with the report-type of the second part.
    push_field(
        &mut head,
        "Content-Type",
        &format!("multipart/report; report-type=delivery-status; boundary=\"{boundary}\""),
    );
    head.push_str("\r\n");
    // RFC 2046 §5.1.1: the preamble is ignored by MIME readers.
    head.push_str("This is a MIME-formatted delivery status notification.\r\n");

    let mut out = head.into_bytes();
    push_part(
        &mut out,
        &boundary,
        &text_part_headers(&human),
        human.as_bytes(),
    );
    push_part(
        &mut out,
        &boundary,
        &encoding_headers("message/delivery-status", &status),
        status.as_bytes(),
    );
    let original_ct = if original.is_ascii() {
        "Content-Type: text/rfc822-headers\r\n".to_string()
    } else {
        // RFC 6532 headers carry raw UTF-8.
        "Content-Type: text/rfc822-headers; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n"
            .to_string()
    };
    push_part(&mut out, &boundary, &original_ct, &original);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

fn push_part(out: &mut Vec<u8>, boundary: &str, headers: &str, body: &[u8]) {
    // RFC 2046 §5.1.1: the CRLF before a delimiter belongs to the delimiter, so each
    // delimiter starts with its own CRLF and the body keeps its final line ending.
    out.extend_from_slice(format!("\r\n--{boundary}\r\n").as_bytes());
    out.extend_from_slice(headers.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

fn text_part_headers(text: &str) -> String {
    encoding_headers("text/plain; charset=utf-8", text)
}

/// `Content-Type`, plus an 8bit transfer encoding when the body is not ASCII (RFC 2045
/// §6.2; recipients and remote replies can be UTF-8 under SMTPUTF8, RFC 6531).
fn encoding_headers(content_type: &str, body: &str) -> String {
    let encoding = if body.is_ascii() { "7bit" } else { "8bit" };
    format!("Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n")
}

/// The human-readable part: one paragraph per recipient.
fn human_part(input: &DsnInput, will_retry_until: Option<&str>) -> String {
    let mut text = String::new();
    let intro = match input.kind {
        DsnKind::Failure => format!(
            "This is the mail system at {}. Your message couldn't be delivered to one or more \
             recipients. The original message's headers are \
             attached.",
            clean(input.reporting_mta)
        ),
        DsnKind::Delay => format!(
            "This is the mail system at {}. Delivery of your message is delayed. This is only \
             a warning: the relay keeps trying and you don't need to resend the message.",
            clean(input.reporting_mta)
        ),
    };
    push_wrapped(&mut text, "", &intro, "");
    for rcpt in input.recipients {
        text.push_str("\r\n");
        let through = rcpt
            .connector
            .as_deref()
            .map(|c| format!(" through connector \"{}\"", clean(c)))
            .unwrap_or_default();
        let sentence = match rcpt.action {
            DsnAction::Failed => format!(
                "Your message couldn't be delivered to {}{through}.",
                clean(&rcpt.address)
            ),
            DsnAction::Delayed => {
                let until = will_retry_until
                    .map(|u| format!(" until {}", clean(u)))
                    .unwrap_or_default();
                format!(
                    "Delivery to {}{through} is delayed; the relay will keep trying{until}.",
                    clean(&rcpt.address)
                )
            }
        };
        push_wrapped(&mut text, "", &sentence, "");
        push_wrapped(&mut text, "  Status: ", &clean(&rcpt.status), "    ");
        if let Some(connector) = &rcpt.connector {
            push_wrapped(
                &mut text,
                "  Connector: ",
                &format!("\"{}\"", clean(connector)),
                "    ",
            );
        }
        if let Some(host) = &rcpt.remote_mta {
            push_wrapped(&mut text, "  Remote server: ", &clean(host), "    ");
        }
        if let Some(diagnostic) = &rcpt.diagnostic {
            let diagnostic = diagnostic_code(diagnostic);
            // Humans want the reply, not the `smtp; ` type label.
            let reply = diagnostic
                .split_once("; ")
                .map_or(diagnostic.as_str(), |(_, r)| r);
            push_wrapped(&mut text, "  Reason: ", reply, "    ");
        }
        if let Some(last) = &rcpt.last_attempt {
            push_wrapped(&mut text, "  Last attempt: ", &clean(last), "    ");
        }
    }
    text.push_str("\r\n");
    push_wrapped(
        &mut text,
        "",
        "The technical details are in the delivery status report attached to this message.",
        "",
    );
    text
}

/// The `message/delivery-status` body (RFC 3464 §2.1): per-message fields, then one
/// block of per-recipient fields for each recipient, blocks separated by empty lines.
fn status_part(input: &DsnInput, will_retry_until: Option<&str>) -> String {
    let mut s = String::new();
    // RFC 3464 §2.2.2: the MTA that generated the DSN, as an mta-name-type; name.
    push_field(
        &mut s,
        "Reporting-MTA",
        &format!("dns; {}", clean(input.reporting_mta)),
    );
    if let Some(envid) = input.original_envelope_id {
        // RFC 3464 §2.2.1: MUST be present if ENVID was given.
        push_field(&mut s, "Original-Envelope-Id", envid);
    }
    push_field(&mut s, "Arrival-Date", input.arrival_date);
    for rcpt in input.recipients {
        s.push_str("\r\n");
        // RFC 3464 §2.3.2: address-type `rfc822` for Internet mail addresses.
        push_field(
            &mut s,
            "Final-Recipient",
            &format!("rfc822; {}", clean(&rcpt.address)),
        );
        push_field(&mut s, "Action", rcpt.action.as_str());
        push_field(&mut s, "Status", &rcpt.status);
        if let Some(host) = &rcpt.remote_mta {
            push_field(&mut s, "Remote-MTA", &format!("dns; {}", clean(host)));
        }
        if let Some(diagnostic) = &rcpt.diagnostic {
            push_field(&mut s, "Diagnostic-Code", &diagnostic_code(diagnostic));
        }
        if let Some(last) = &rcpt.last_attempt {
            push_field(&mut s, "Last-Attempt-Date", last);
        }
        if let (DsnAction::Delayed, Some(until)) = (rcpt.action, will_retry_until) {
            push_field(&mut s, "Will-Retry-Until", until);
        }
    }
    s
}

/// The original header block as `text/rfc822-headers`: CRLF line endings, no trailing
/// empty line, no line longer than the hard limit.
fn original_headers_part(headers: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(headers.len() + 2);
    // Any of CRLF, bare LF or bare CR ends a line.
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < headers.len() {
        match headers[i] {
            b'\r' => {
                lines.push(&headers[start..i]);
                i += if headers.get(i + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                start = i;
            }
            b'\n' => {
                lines.push(&headers[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    if start < headers.len() {
        lines.push(&headers[start..]);
    }
    while lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    for line in lines {
        // An over-long line is cut and continued as a folded line (leading space), which
        // keeps the header section well-formed (RFC 5322 §2.2.3).
        let mut rest = line;
        let mut first = true;
        while !rest.is_empty() || first {
            let take = rest.len().min(MAX_WORD);
            if !first {
                out.push(b' ');
            }
            out.extend_from_slice(&rest[..take]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[take..];
            first = false;
        }
    }
    out
}

/// "Undeliverable: <original subject>" / "Delivery delayed: <original subject>".
fn subject(input: &DsnInput) -> String {
    let prefix = match input.kind {
        DsnKind::Failure => "Undeliverable",
        DsnKind::Delay => "Delivery delayed",
    };
    match original_subject(input.original_headers) {
        Some(s) if !s.is_empty() => format!("{prefix}: {}", truncate(&s, MAX_SUBJECT)),
        _ => format!("{prefix}: (no subject)"),
    }
}

/// The unfolded value of the first `Subject` field of a header block (RFC 5322 §3.6.5),
/// with control characters replaced. Encoded words (RFC 2047) are kept as they are: they
/// stay valid inside our own Subject.
fn original_subject(headers: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(headers);
    let mut value: Option<String> = None;
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match value.as_mut() {
            // RFC 5322 §2.2.3: a line starting with WSP continues the previous field.
            Some(v) if line.starts_with([' ', '\t']) => v.push_str(line),
            Some(_) => break,
            None => {
                if line.is_empty() {
                    break;
                }
                if let Some((name, rest)) = line.split_once(':')
                    && name.trim_end().eq_ignore_ascii_case("subject")
                {
                    value = Some(rest.to_string());
                }
            }
        }
    }
    value.map(|v| collapse_spaces(&clean(&v)))
}

/// Normalises a diagnostic to `type; text` (RFC 3464 §2.3.6), sanitised and capped.
fn diagnostic_code(diagnostic: &str) -> String {
    let diagnostic = collapse_spaces(&clean(diagnostic));
    let typed = diagnostic.split_once(';').is_some_and(|(kind, _)| {
        !kind.is_empty() && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    });
    let full = if typed {
        diagnostic
    } else {
        format!("smtp; {diagnostic}")
    };
    truncate(&full, MAX_DIAGNOSTIC)
}

/// Replaces control characters (CR, LF, TAB, NUL, DEL, C1...) with spaces: text that came
/// from the network (remote replies, addresses) must not inject header lines or MIME
/// structure into the DSN.
fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .trim()
        .to_string()
}

fn collapse_spaces(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Cuts `s` to at most `max` octets on a character boundary, marking the cut.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn angle(id: &str) -> String {
    let id = clean(id);
    let id = id.trim_start_matches('<').trim_end_matches('>');
    format!("<{id}>")
}

/// Appends `Name: value` CRLF, sanitised and folded (RFC 5322 §2.2.3) at whitespace.
fn push_field(out: &mut String, name: &str, value: &str) {
    push_wrapped(out, &format!("{name}: "), &clean(value), " ");
}

/// Appends `prefix` + `text`, wrapped at whitespace to [`SOFT_LINE`] where possible, each
/// continuation line starting with `indent`, every line ending in CRLF. Runs longer than
/// [`MAX_WORD`] octets are cut so that no line exceeds the 998-octet limit.
fn push_wrapped(out: &mut String, prefix: &str, text: &str, indent: &str) {
    out.push_str(prefix);
    let mut line_len = prefix.len();
    let mut line_has_word = false;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        for piece in pieces(word) {
            if line_has_word && line_len + 1 + piece.len() > SOFT_LINE {
                out.push_str("\r\n");
                out.push_str(indent);
                line_len = indent.len();
                line_has_word = false;
            }
            if line_has_word {
                out.push(' ');
                line_len += 1;
            }
            out.push_str(piece);
            line_len += piece.len();
            line_has_word = true;
        }
    }
    out.push_str("\r\n");
}

/// Splits a word into pieces of at most [`MAX_WORD`] octets on character boundaries.
fn pieces(word: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = word;
    while rest.len() > MAX_WORD {
        let mut end = MAX_WORD;
        while !rest.is_char_boundary(end) {
            end -= 1;
        }
        out.push(&rest[..end]);
        rest = &rest[end..];
    }
    out.push(rest);
    out
}

/// A boundary (RFC 2046 §5.1.1: 1–70 characters from `bchars`) derived from the DSN's
/// Message-ID, so output is deterministic; bumped until no part contains it.
fn choose_boundary(message_id: &str, parts: &[&[u8]]) -> String {
    // FNV-1a: a stable hash, no need for cryptographic strength here.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in message_id.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    let mut counter = 0u32;
    loop {
        let mut boundary = String::new();
        let _ = write!(boundary, "=_connector-relay-dsn-{hash:016x}");
        if counter > 0 {
            let _ = write!(boundary, "-{counter}");
        }
        let needle = format!("--{boundary}");
        let clash = parts
            .iter()
            .any(|p| p.windows(needle.len()).any(|w| w == needle.as_bytes()));
        if !clash {
            return boundary;
        }
        counter += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mail_parser::{MessageParser, MimeHeaders};

    const ORIGINAL: &[u8] = b"From: Alice <alice@contoso.test>\r\n\
To: bob@fabrikam.test\r\n\
Subject: Quarterly\r\n report\r\n\
Message-ID: <orig-1@contoso.test>\r\n\
\r\n";

    fn recipient(address: &str) -> DsnRecipient {
        DsnRecipient {
            address: address.to_string(),
            action: DsnAction::Failed,
            status: "5.1.1".to_string(),
            diagnostic: Some("smtp; 550 5.1.1 <bob@fabrikam.test>: user unknown".to_string()),
            remote_mta: Some("mx1.fabrikam.test".to_string()),
            connector: Some("To Fabrikam".to_string()),
            last_attempt: Some("Tue, 2 Jan 2024 10:00:05 +0000".to_string()),
        }
    }

    fn input<'a>(kind: DsnKind, recipients: &'a [DsnRecipient]) -> DsnInput<'a> {
        DsnInput {
            kind,
            reporting_mta: "relay.contoso.test",
            original_envelope_id: Some("QQ314159"),
            original_sender: "alice@contoso.test",
            arrival_date: "Tue, 2 Jan 2024 10:00:00 +0000",
            date: "Tue, 2 Jan 2024 10:00:06 +0000",
            message_id: "<dsn-1@relay.contoso.test>",
            recipients,
            original_headers: ORIGINAL,
        }
    }

    /// Every line ends in CRLF (no bare LF or CR) and is at most 998 octets long.
    fn assert_wire_format(bytes: &[u8]) {
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && bytes[i - 1] == b'\r', "bare LF at {i}");
            }
            if b == b'\r' {
                assert_eq!(bytes.get(i + 1), Some(&b'\n'), "bare CR at {i}");
            }
        }
        for line in bytes.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            assert!(line.len() <= 998, "line of {} octets", line.len());
        }
        assert!(bytes.ends_with(b"\r\n"));
    }

    fn part_text(msg: &mail_parser::Message, idx: u32) -> String {
        String::from_utf8_lossy(msg.part(idx).expect("part").contents()).into_owned()
    }

    #[test]
    fn failure_structure() {
        let rcpts = [recipient("bob@fabrikam.test")];
        let bytes = build_dsn(&input(DsnKind::Failure, &rcpts));
        assert_wire_format(&bytes);

        let msg = MessageParser::default().parse(&bytes).expect("parses");
        let ct = msg.content_type().expect("content type");
        assert_eq!(ct.ctype(), "multipart");
        assert_eq!(ct.subtype(), Some("report"));
        assert_eq!(ct.attribute("report-type"), Some("delivery-status"));
        assert_eq!(msg.subject(), Some("Undeliverable: Quarterly report"));
        assert_eq!(msg.message_id(), Some("dsn-1@relay.contoso.test"));
        let from = msg.from().and_then(|a| a.first()).expect("from");
        assert_eq!(from.address(), Some("MAILER-DAEMON@relay.contoso.test"));
        let to = msg.to().and_then(|a| a.first()).expect("to");
        assert_eq!(to.address(), Some("alice@contoso.test"));
        assert_eq!(
            msg.header_raw("Auto-Submitted").map(str::trim),
            Some("auto-replied")
        );

        let children = msg.root_part().sub_parts().expect("multipart");
        assert_eq!(children.len(), 3);
        let types: Vec<String> = children
            .iter()
            .map(|&i| {
                let ct = msg.part(i).and_then(|p| p.content_type()).expect("part ct");
                format!("{}/{}", ct.ctype(), ct.subtype().unwrap_or(""))
            })
            .collect();
        assert_eq!(
            types,
            [
                "text/plain",
                "message/delivery-status",
                "text/rfc822-headers"
            ]
        );

        // Wrapped text: compare with whitespace collapsed.
        let human = collapse_spaces(&part_text(&msg, children[0]));
        assert!(human.contains("couldn't be delivered to bob@fabrikam.test"));
        assert!(human.contains("connector \"To Fabrikam\""));
        assert!(human.contains("5.1.1"));
        assert!(human.contains("550 5.1.1 <bob@fabrikam.test>: user unknown"));

        let status = part_text(&msg, children[1]);
        for field in [
            "Reporting-MTA: dns; relay.contoso.test\r\n",
            "Original-Envelope-Id: QQ314159\r\n",
            "Arrival-Date: Tue, 2 Jan 2024 10:00:00 +0000\r\n",
            "\r\n\r\nFinal-Recipient: rfc822; bob@fabrikam.test\r\n",
            "Action: failed\r\n",
            "Status: 5.1.1\r\n",
            "Remote-MTA: dns; mx1.fabrikam.test\r\n",
            "Diagnostic-Code: smtp; 550 5.1.1 <bob@fabrikam.test>: user unknown\r\n",
            "Last-Attempt-Date: Tue, 2 Jan 2024 10:00:05 +0000\r\n",
        ] {
            assert!(status.contains(field), "missing {field:?} in {status:?}");
        }
        assert!(!status.contains("Will-Retry-Until"));

        let headers = part_text(&msg, children[2]);
        assert!(headers.contains("Message-ID: <orig-1@contoso.test>"));
    }

    #[test]
    fn delay_notification() {
        let mut rcpt = recipient("carol@fabrikam.test");
        rcpt.action = DsnAction::Delayed;
        rcpt.status = "4.4.317".to_string();
        rcpt.diagnostic = Some("STARTTLS not offered".to_string());
        rcpt.remote_mta = None;
        let rcpts = [rcpt];
        let bytes = build_dsn_with_retry_until(
            &input(DsnKind::Delay, &rcpts),
            Some("Wed, 3 Jan 2024 10:00:00 +0000"),
        );
        assert_wire_format(&bytes);
        let msg = MessageParser::default().parse(&bytes).expect("parses");
        assert_eq!(msg.subject(), Some("Delivery delayed: Quarterly report"));
        let children = msg.root_part().sub_parts().expect("multipart");
        let status = part_text(&msg, children[1]);
        assert!(status.contains("Action: delayed\r\n"));
        assert!(status.contains("Status: 4.4.317\r\n"));
        // An untyped diagnostic is an SMTP one.
        assert!(status.contains("Diagnostic-Code: smtp; STARTTLS not offered\r\n"));
        assert!(status.contains("Will-Retry-Until: Wed, 3 Jan 2024 10:00:00 +0000\r\n"));
        assert!(!status.contains("Remote-MTA"));
        let human = collapse_spaces(&part_text(&msg, children[0]));
        assert!(human.contains("is delayed"));
        assert!(human.contains("To Fabrikam"));
    }

    #[test]
    fn several_recipients_get_one_block_each() {
        let rcpts = [recipient("a@fabrikam.test"), recipient("b@fabrikam.test")];
        let bytes = build_dsn(&input(DsnKind::Failure, &rcpts));
        let msg = MessageParser::default().parse(&bytes).expect("parses");
        let children = msg.root_part().sub_parts().expect("multipart");
        let status = part_text(&msg, children[1]);
        assert_eq!(status.matches("Final-Recipient:").count(), 2);
        assert_eq!(status.matches("\r\n\r\n").count(), 2);
    }

    #[test]
    fn long_diagnostic_is_folded_under_998_octets() {
        let mut rcpt = recipient("bob@fabrikam.test");
        let words = "word ".repeat(2000);
        let blob = "x".repeat(5000);
        rcpt.diagnostic = Some(format!("smtp; 550 5.7.1 {words}{blob}"));
        let rcpts = [rcpt];
        let bytes = build_dsn(&input(DsnKind::Failure, &rcpts));
        assert_wire_format(&bytes);
        let msg = MessageParser::default().parse(&bytes).expect("parses");
        let children = msg.root_part().sub_parts().expect("multipart");
        assert_eq!(children.len(), 3);
        let status = part_text(&msg, children[1]);
        assert!(status.contains("Diagnostic-Code: smtp; 550 5.7.1 word"));
        // Capped, and marked as cut.
        assert!(status.len() < MAX_DIAGNOSTIC + 1000);
        assert!(status.contains("...\r\n"));
    }

    #[test]
    fn remote_text_cannot_inject_headers() {
        let mut rcpt = recipient("bob@fabrikam.test");
        rcpt.diagnostic = Some("smtp; 550 nope\r\nBcc: victim@example.test\nX-Evil: 1".into());
        rcpt.remote_mta = Some("mx.fabrikam.test\r\nX-Injected: yes".into());
        let rcpts = [rcpt];
        let bytes = build_dsn(&input(DsnKind::Failure, &rcpts));
        assert_wire_format(&bytes);
        let text = String::from_utf8(bytes).expect("utf-8");
        assert!(!text.contains("\r\nBcc:"));
        assert!(!text.contains("\r\nX-Evil:"));
        assert!(!text.contains("\r\nX-Injected:"));
        assert!(
            text.contains("Diagnostic-Code: smtp; 550 nope Bcc: victim@example.test X-Evil: 1")
        );
    }

    #[test]
    fn original_headers_are_normalised() {
        let original = b"Subject: bare\nX-Long: "
            .iter()
            .copied()
            .chain(std::iter::repeat_n(b'a', 2500))
            .chain(b"\n\n".iter().copied())
            .collect::<Vec<u8>>();
        let rcpts = [recipient("bob@fabrikam.test")];
        let mut inp = input(DsnKind::Failure, &rcpts);
        inp.original_headers = &original;
        let bytes = build_dsn(&inp);
        assert_wire_format(&bytes);
        let msg = MessageParser::default().parse(&bytes).expect("parses");
        assert_eq!(msg.subject(), Some("Undeliverable: bare"));
    }

    #[test]
    fn missing_subject_and_bare_message_id() {
        let rcpts = [recipient("bob@fabrikam.test")];
        let mut inp = input(DsnKind::Failure, &rcpts);
        inp.original_headers = b"From: a@b\r\n\r\n";
        inp.message_id = "dsn-2@relay.contoso.test";
        inp.original_envelope_id = None;
        let bytes = build_dsn(&inp);
        let msg = MessageParser::default().parse(&bytes).expect("parses");
        assert_eq!(msg.subject(), Some("Undeliverable: (no subject)"));
        assert_eq!(msg.message_id(), Some("dsn-2@relay.contoso.test"));
        let children = msg.root_part().sub_parts().expect("multipart");
        assert!(!part_text(&msg, children[1]).contains("Original-Envelope-Id"));
    }

    #[test]
    fn boundary_avoids_content() {
        let id = "<dsn-3@relay.contoso.test>";
        let first = choose_boundary(id, &[]);
        let clash = format!("--{first}");
        let second = choose_boundary(id, &[clash.as_bytes()]);
        assert_ne!(first, second);
        assert!(first.len() <= 70 && second.len() <= 70);
    }

    #[test]
    fn wrapping_keeps_words_and_limits() {
        let mut out = String::new();
        push_field(&mut out, "Diagnostic-Code", &"abc ".repeat(100));
        for line in out.split("\r\n").filter(|l| !l.is_empty()) {
            assert!(line.len() <= SOFT_LINE, "{line:?}");
        }
        assert!(out.starts_with("Diagnostic-Code: abc abc"));
        assert_eq!(out.matches("abc").count(), 100);
    }
}
