//! Header rewriting (`Received:`, cross-premises headers), and the messages the relay writes
//! itself (DSNs).

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

#[cfg(test)]
mod tests {
    use super::header_block;

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
