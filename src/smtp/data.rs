//! Sans-IO DATA reader (RFC 5321 §4.1.1.4, §4.5.2): removes dot-stuffing, finds the end of
//! data, and enforces the message and line limits, without touching a socket.
//!
//! The only end-of-data sequence is `<CRLF>.<CRLF>` with real CRLFs on both sides. Bare CR
//! and bare LF are never line ends for that purpose, which is what defeats SMTP smuggling
//! (CVE-2023-51764 and relatives): `\n.\n`, `\r.\r`, `\n.\r\n` and friends never end a
//! message. With `BareNewlinePolicy::Reject` the message is refused with 550 5.6.11 (Postfix
//! `smtpd_forbid_bare_newline = yes`); with `Normalize` bare CR and LF become CRLF in the
//! stored message (but still cannot end it).

use crate::policy::BareNewlinePolicy;

/// RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including the CRLF.
pub const MAX_TEXT_LINE: usize = 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line that followed a real CRLF (a '.' here may end the data).
    LineStart,
    /// At the start of a line that followed a normalized bare newline ('.' is unstuffed
    /// but can never end the data).
    LooseLineStart,
    /// Saw '.' at a strict line start.
    Dot,
    /// Saw ".\r" at a strict line start.
    DotCr,
    /// Inside a line.
    Text,
    /// Saw '\r' inside a line.
    Cr,
}

/// Why the message must be refused once its end has been read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataError {
    TooBig,
    /// The header block (up to the first empty line) is over its limit (`MaxHeaderSize`).
    HeaderTooBig,
    LineTooLong,
    BareNewline,
}

/// Incremental DATA decoder. Feed it bytes as they arrive; it appends the unstuffed message
/// to `out` and reports how many input bytes belonged to the message.
#[derive(Debug)]
pub struct DataReader {
    state: State,
    max_size: u64,
    policy: BareNewlinePolicy,
    size: u64,
    /// `MaxHeaderSize`; `u64::MAX` = no limit.
    max_header: u64,
    /// Still inside the header block (RFC 5322 §2.1: it ends at the first empty line).
    in_header: bool,
    line_len: usize,
    error: Option<DataError>,
}

impl DataReader {
    pub fn new(max_size: u64, policy: BareNewlinePolicy) -> Self {
        DataReader {
            state: State::LineStart,
            max_size,
            policy,
            size: 0,
            max_header: u64::MAX,
            in_header: true,
            line_len: 0,
            error: None,
        }
    }

    /// Limits the header block to `max` octets of content as received (unstuffed, before
    /// the relay adds anything). Past it the rest is read and discarded like an oversize
    /// message, and the message is refused with `HeaderTooBig`.
    pub fn with_max_header(mut self, max: u64) -> Self {
        self.max_header = max;
        self
    }

    /// Consumes bytes from `input`. Returns `(consumed, done)`: when `done`, the end-of-data
    /// line was the last consumed byte and anything after it belongs to the next command.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        for (i, &b) in input.iter().enumerate() {
            if self.step(b, out) {
                return (i + 1, true);
            }
        }
        (input.len(), false)
    }

    /// The first limit the message broke, if any. Meaningful once `feed` reported `done`.
    pub fn error(&self) -> Option<DataError> {
        self.error
    }

    /// Still inside the header block: everything stored so far is header.
    pub fn in_header(&self) -> bool {
        self.in_header
    }

    /// Bytes of message content seen so far (after unstuffing), including discarded ones.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn step(&mut self, b: u8, out: &mut Vec<u8>) -> bool {
        use State::*;
        match (self.state, b) {
            (LineStart, b'.') => self.state = Dot,
            // RFC 5321 §4.5.2: a leading '.' of a stuffed line is removed.
            (LooseLineStart, b'.') => self.state = Text,
            (Dot, b'\r') => self.state = DotCr,
            (DotCr, b'\n') => return true,
            (DotCr, _) => {
                // ".\r" followed by anything but LF: the CR is bare.
                self.bare_newline(out);
                self.state = LooseLineStart;
                return self.step(b, out);
            }
            (Dot, _) => {
                self.state = Text;
                return self.step(b, out);
            }
            (Cr, b'\n') => {
                self.end_of_line();
                self.push(b"\r\n", out);
                self.line_len = 0;
                self.state = LineStart;
            }
            (Cr, _) => {
                self.bare_newline(out);
                self.state = LooseLineStart;
                return self.step(b, out);
            }
            (_, b'\r') => self.state = Cr,
            (_, b'\n') => {
                self.bare_newline(out);
                self.state = LooseLineStart;
            }
            (_, _) => {
                self.line_len += 1;
                // 998 octets of text + CRLF = 1000.
                if self.line_len > MAX_TEXT_LINE - 2 {
                    self.fail(DataError::LineTooLong);
                }
                self.push(&[b], out);
                self.state = Text;
            }
        }
        false
    }

    /// Called before a line's terminator is stored: an empty line ends the header block,
    /// whose terminator is not counted in it.
    fn end_of_line(&mut self) {
        if self.line_len == 0 {
            self.in_header = false;
        }
    }

    fn bare_newline(&mut self, out: &mut Vec<u8>) {
        self.end_of_line();
        match self.policy {
            BareNewlinePolicy::Reject => self.fail(DataError::BareNewline),
            BareNewlinePolicy::Normalize => self.push(b"\r\n", out),
        }
        self.line_len = 0;
    }

    fn fail(&mut self, e: DataError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn push(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        self.size += bytes.len() as u64;
        if self.in_header && self.size > self.max_header {
            // The header block is everything so far: same treatment as an oversize message.
            self.fail(DataError::HeaderTooBig);
        }
        if self.size > self.max_size {
            // Stop storing, keep reading to the end so the session stays in sync.
            self.fail(DataError::TooBig);
        }
        if self.error.is_none() {
            out.extend_from_slice(bytes);
        } else if !out.is_empty() {
            // Nothing of a refused message is kept.
            out.clear();
            out.shrink_to(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(
        input: &[u8],
        policy: BareNewlinePolicy,
    ) -> (Vec<u8>, usize, bool, Option<DataError>) {
        let mut r = DataReader::new(1 << 20, policy);
        let mut out = Vec::new();
        let (n, done) = r.feed(input, &mut out);
        (out, n, done, r.error())
    }

    #[test]
    fn unstuffs_and_finds_end() {
        let (out, n, done, err) = read_all(
            b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n",
            BareNewlinePolicy::Reject,
        );
        assert!(done);
        assert_eq!(err, None);
        assert_eq!(out, b"Subject: x\r\n\r\n.dot\r\n");
        assert_eq!(n, b"Subject: x\r\n\r\n..dot\r\n.\r\n".len());
    }

    #[test]
    fn empty_message() {
        let (out, n, done, _) = read_all(b".\r\n", BareNewlinePolicy::Reject);
        assert!(done);
        assert_eq!(n, 3);
        assert!(out.is_empty());
    }

    #[test]
    fn byte_by_byte_equals_whole() {
        let msg = b"a\r\n..b\r\n.c\r\n\r\n.\r\n";
        let mut r = DataReader::new(1 << 20, BareNewlinePolicy::Reject);
        let mut out = Vec::new();
        let mut done_at = None;
        for (i, b) in msg.iter().enumerate() {
            let (_, done) = r.feed(std::slice::from_ref(b), &mut out);
            if done {
                done_at = Some(i);
                break;
            }
        }
        assert_eq!(done_at, Some(msg.len() - 1));
        assert_eq!(out, b"a\r\n.b\r\nc\r\n\r\n");
    }

    /// The SMTP smuggling sequences of SEC Consult (Dec 2023): none may end the message.
    #[test]
    fn smuggling_sequences_never_end_data() {
        let seqs: [&[u8]; 11] = [
            b"\n.\n",
            b"\n.\r",
            b"\r.\n",
            b"\r.\r",
            b"\n.\r\n",
            b"\r.\r\n",
            b"\r\n.\n",
            b"\r\n.\r",
            b"\r\n\x00.\r\n",
            b"\r\n.\r\r\n",
            b"\r\r\n.\r\r\n",
        ];
        for policy in [BareNewlinePolicy::Reject, BareNewlinePolicy::Normalize] {
            for s in seqs {
                let mut input = b"Subject: a\r\n\r\nbody".to_vec();
                input.extend_from_slice(s);
                input.extend_from_slice(
                    b"MAIL FROM:<x@evil.test>\r\nRCPT TO:<y@z.test>\r\nDATA\r\nsmuggled\r\n",
                );
                let marker = input.len();
                input.extend_from_slice(b".\r\n");
                let (out, n, done, err) = read_all(&input, policy);
                assert!(done, "{s:?} {policy:?}");
                assert_eq!(n, marker + 3, "{s:?} ended early under {policy:?}");
                match policy {
                    BareNewlinePolicy::Reject if s != b"\r\n\x00.\r\n" => {
                        assert_eq!(err, Some(DataError::BareNewline), "{s:?}")
                    }
                    _ => {
                        assert_eq!(err, None, "{s:?}");
                        // Nothing bare is stored.
                        let bare = out.windows(2).enumerate().any(|(i, w)| {
                            (w[0] == b'\r' && w[1] != b'\n')
                                || (w[1] == b'\n' && w[0] != b'\r')
                                || (i == 0 && w[0] == b'\n')
                        });
                        assert!(!bare, "{s:?} stored a bare newline: {out:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn line_too_long() {
        let mut input = vec![b'a'; 998];
        input.extend_from_slice(b"\r\n");
        let (_, _, _, err) = read_all(&[&input[..], b".\r\n"].concat(), BareNewlinePolicy::Reject);
        assert_eq!(err, None);
        let mut input = vec![b'a'; 999];
        input.extend_from_slice(b"\r\n.\r\n");
        let (out, _, done, err) = read_all(&input, BareNewlinePolicy::Reject);
        assert!(done);
        assert_eq!(err, Some(DataError::LineTooLong));
        assert!(out.is_empty());
    }

    #[test]
    fn size_limit_stops_storing() {
        let mut r = DataReader::new(10, BareNewlinePolicy::Reject);
        let mut out = Vec::new();
        let big = b"0123456789abcdef\r\n".repeat(1000);
        let (_, done) = r.feed(&big, &mut out);
        assert!(!done);
        assert!(out.is_empty());
        let (_, done) = r.feed(b".\r\n", &mut out);
        assert!(done);
        assert_eq!(r.error(), Some(DataError::TooBig));
    }

    fn read_with_header_limit(input: &[u8], max_header: u64) -> (Vec<u8>, bool, Option<DataError>) {
        let mut r = DataReader::new(1 << 30, BareNewlinePolicy::Reject).with_max_header(max_header);
        let mut out = Vec::new();
        let (_, done) = r.feed(input, &mut out);
        (out, done, r.error())
    }

    #[test]
    fn header_limit_counts_up_to_the_first_empty_line() {
        // "A: 1\r\n" + "B: 2\r\n" = 12 octets of header; the body does not count.
        let msg = b"A: 1\r\nB: 2\r\n\r\n".iter().copied();
        let body = b"x\r\n".repeat(100);
        let input: Vec<u8> = msg.chain(body).chain(b".\r\n".iter().copied()).collect();
        let (out, done, err) = read_with_header_limit(&input, 12);
        assert!(done);
        assert_eq!(err, None);
        assert!(out.starts_with(b"A: 1\r\n"));
        let (out, done, err) = read_with_header_limit(&input, 11);
        assert!(done);
        assert_eq!(err, Some(DataError::HeaderTooBig));
        assert!(out.is_empty(), "nothing of a refused message is kept");
    }

    #[test]
    fn header_limit_covers_folded_lines_and_a_message_without_body() {
        // A folded header (RFC 5322 §2.2.3): continuation lines belong to the header block.
        let mut folded = b"Subject: start\r\n".to_vec();
        folded.extend_from_slice(&b" more folded text\r\n".repeat(100));
        folded.extend_from_slice(b"\r\nbody\r\n.\r\n");
        let (_, done, err) = read_with_header_limit(&folded, 1000);
        assert!(done);
        assert_eq!(err, Some(DataError::HeaderTooBig));
        // No empty line at all: the whole message is header.
        let only_headers = [&b"X-A: b\r\n".repeat(200)[..], b".\r\n"].concat();
        let (_, _, err) = read_with_header_limit(&only_headers, 1000);
        assert_eq!(err, Some(DataError::HeaderTooBig));
        // A message starting with the empty line has an empty header block.
        let no_header = [b"\r\n", &b"body line\r\n".repeat(200)[..], b".\r\n"].concat();
        let (_, _, err) = read_with_header_limit(&no_header, 10);
        assert_eq!(err, None);
    }
}
