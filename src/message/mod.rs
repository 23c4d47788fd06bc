//! Header rewriting (`Received:`, cross-premises headers), and the messages the relay writes
//! itself (DSNs).

pub mod data;
pub mod dsn;
pub mod headers;
pub mod received;
pub mod srs;

/// The header block of an RFC 5322 message: the bytes up to and including the empty line
/// (CRLF CRLF) that separates the header section from the body (RFC 5322 §2.1). A message
/// without a body separator is all header, so the whole message is returned.
pub fn header_block(message: &[u8]) -> &[u8] {
    // A message that starts with CRLF has an empty header section.
    if message.starts_with(b"\r\n") {
        return &message[..2];
    }
    match message.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(end) => &message[..end + 4],
        None => message,
    }
}

/// The `Message-ID` of a message (its first one in the header block), unfolded and trimmed,
/// as written (usually with its angle brackets); `None` when there is none. For the trace.
pub fn message_id(message: &[u8]) -> Option<String> {
    header_value(message, "message-id")
}

/// The first header field `name` (any case) of the header block, unfolded and trimmed;
/// `None` when absent or empty.
pub fn header_value(message: &[u8], name: &str) -> Option<String> {
    let mut lines = header_block(message).split(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if !line[..colon]
            .trim_ascii()
            .eq_ignore_ascii_case(name.as_bytes())
        {
            continue;
        }
        let mut value = String::from_utf8_lossy(&line[colon + 1..])
            .trim()
            .to_string();
        // Folded continuation lines (RFC 5322 §2.2.3).
        while let Some(next) = lines.next_if(|l| l.starts_with(b" ") || l.starts_with(b"\t")) {
            let next = next.strip_suffix(b"\r").unwrap_or(next);
            value.push_str(String::from_utf8_lossy(next).trim());
        }
        return (!value.is_empty()).then_some(value);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{header_block, message_id};

    #[test]
    fn message_id_found_case_insensitively_unfolded_and_not_in_the_body() {
        let m = b"Subject: x\r\nmessage-ID:\r\n <a.b@c.test>\r\nTo: y\r\n\r\nMessage-ID: <b@x>\r\n";
        assert_eq!(message_id(m).as_deref(), Some("<a.b@c.test>"));
        assert_eq!(message_id(b"Subject: x\r\n\r\nMessage-ID: <b@x>\r\n"), None);
        assert_eq!(message_id(b"Message-Id: \r\n\r\n"), None);
    }

    #[test]
    fn header_block_ends_after_the_empty_line() {
        let msg = b"Subject: hi\r\nFrom: a@b\r\n\r\nbody\r\n\r\nmore\r\n";
        assert_eq!(header_block(msg), b"Subject: hi\r\nFrom: a@b\r\n\r\n");
    }

    #[test]
    fn header_block_without_body_is_whole_message() {
        let msg = b"Subject: hi\r\nFrom: a@b\r\n";
        assert_eq!(header_block(msg), msg);
        assert_eq!(header_block(b""), b"");
    }

    #[test]
    fn header_block_empty_header_section() {
        assert_eq!(header_block(b"\r\nbody\r\n"), b"\r\n");
    }
}
