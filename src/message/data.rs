//! A message as delivery reads it: the part that is looked at in memory, the rest left in
//! its spool file and read piece by piece while it is sent.
//!
//! Delivery looks only at the header block (Message-ID for the trace, the cross-premises
//! header rewrite, the headers a DSN quotes), its size (SIZE, the connectors'
//! MaxMessageSize) and whether it is all ASCII (BODY=8BITMIME). A small message (up to
//! [`crate::queue::wal::MAX_PAYLOAD`]) is read whole, as before: one read, nothing to
//! stream. For a larger one the spool reads the header block into memory and keeps an open
//! file for the rest ([`FileRange`]); the SMTP client then sends it in pieces of a few
//! kilobytes, so the memory a delivery holds does not grow with the message (issue 16:
//! eight 50 MB messages in flight once took 1.1 GB).
//!
//! The open file keeps the bytes readable even if the message is removed meanwhile (a
//! second batch finishing first): on Unix a removed file lives as long as a descriptor does.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// The bytes of a spool file after the message's head: `len` bytes from `offset`.
#[derive(Debug, Clone)]
pub struct FileRange {
    file: Arc<File>,
    offset: u64,
    len: u64,
    /// No byte above 127 in the range (scanned when the message was read).
    ascii: bool,
}

impl FileRange {
    /// The range `offset..offset + len` of `file`, scanned for 8-bit bytes. Blocking.
    pub fn scan(file: Arc<File>, offset: u64, len: u64) -> io::Result<FileRange> {
        let mut range = FileRange {
            file,
            offset,
            len,
            ascii: true,
        };
        let mut buf = Vec::new();
        let mut at = 0;
        while at < len {
            range.read_at(at, SCAN_CHUNK, &mut buf)?;
            if !buf.is_ascii() {
                range.ascii = false;
                break;
            }
            at += buf.len() as u64;
        }
        Ok(range)
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Replaces `buf` with up to `max` bytes from `at` (relative to the range). Blocking.
    fn read_at(&self, at: u64, max: usize, buf: &mut Vec<u8>) -> io::Result<()> {
        let n = (self.len - at).min(max as u64) as usize;
        buf.resize(n, 0);
        self.file
            .read_exact_at(buf, self.offset + at)
            .map_err(|e| io::Error::new(e.kind(), format!("reading the spooled message: {e}")))
    }
}

/// How much of a file range one blocking read takes while scanning.
const SCAN_CHUNK: usize = 256 * 1024;

/// A message read for delivery, owned: see the module doc.
#[derive(Debug, Clone, Default)]
pub struct MessageData {
    head: Vec<u8>,
    rest: Option<FileRange>,
}

impl MessageData {
    /// A message held whole in memory.
    pub fn memory(data: Vec<u8>) -> MessageData {
        MessageData {
            head: data,
            rest: None,
        }
    }

    /// The message's `head` in memory and the rest in a file.
    pub fn split(head: Vec<u8>, rest: FileRange) -> MessageData {
        MessageData {
            head,
            rest: Some(rest),
        }
    }

    /// A borrowed view, as the delivery code passes it around.
    pub fn view(&self) -> Data<'_> {
        Data {
            head: &self.head,
            rest: self.rest.as_ref(),
        }
    }
}

/// A message as delivery sees it: `head` in memory (the whole message when small, else its
/// header block), then `rest` in the spool file. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct Data<'a> {
    head: &'a [u8],
    rest: Option<&'a FileRange>,
}

impl<'a> Data<'a> {
    /// A message held whole in memory.
    pub fn memory(data: &'a [u8]) -> Data<'a> {
        Data {
            head: data,
            rest: None,
        }
    }

    /// The bytes in memory: the whole message, or at least its header block.
    pub fn head(&self) -> &'a [u8] {
        self.head
    }

    /// The same message with another head (the header block as rewritten for a route).
    pub fn with_head<'b>(&self, head: &'b [u8]) -> Data<'b>
    where
        'a: 'b,
    {
        Data {
            head,
            rest: self.rest,
        }
    }

    /// The whole message's size in bytes.
    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.rest.map_or(0, FileRange::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// No byte above 127 anywhere in the message.
    pub fn is_ascii(&self) -> bool {
        self.head.is_ascii() && self.rest.is_none_or(|r| r.ascii)
    }

    /// The message from the start, piece by piece.
    pub fn pieces(&self, max: usize) -> Pieces<'a> {
        Pieces {
            data: *self,
            at: 0,
            max,
        }
    }

    /// The whole message in one buffer. For small messages and tests: it costs the
    /// message's size in memory.
    pub async fn to_vec(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(self.len() as usize);
        let mut pieces = self.pieces(SCAN_CHUNK);
        let mut buf = Vec::new();
        while pieces.next_into(&mut buf).await? {
            out.extend_from_slice(&buf);
        }
        Ok(out)
    }
}

/// A cursor over a message's bytes: the head from memory, the rest read from the file on a
/// blocking thread, never more than `max` bytes at a time.
#[derive(Debug)]
pub struct Pieces<'a> {
    data: Data<'a>,
    /// Bytes of the message given so far.
    at: u64,
    max: usize,
}

impl Pieces<'_> {
    /// Replaces `buf` with the next piece; `false` (and `buf` empty) when all was given.
    pub async fn next_into(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        buf.clear();
        let head_len = self.data.head.len() as u64;
        if self.at < head_len {
            let from = self.at as usize;
            let to = (from + self.max).min(self.data.head.len());
            buf.extend_from_slice(&self.data.head[from..to]);
        } else if let Some(rest) = self.data.rest.filter(|_| self.at < self.data.len()) {
            let (rest, at, max) = (rest.clone(), self.at - head_len, self.max);
            let mut owned = std::mem::take(buf);
            owned = tokio::task::spawn_blocking(move || {
                rest.read_at(at, max, &mut owned).map(|()| owned)
            })
            .await
            .map_err(io::Error::other)??;
            *buf = owned;
        }
        self.at += buf.len() as u64;
        Ok(!buf.is_empty())
    }

    /// Whether every byte was given.
    pub fn done(&self) -> bool {
        self.at >= self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> Arc<File> {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        Arc::new(f)
    }

    #[tokio::test]
    async fn pieces_cover_head_then_file_in_order() {
        let file: Vec<u8> = (0..10_000u32).map(|i| (i % 100) as u8).collect();
        let range = FileRange::scan(
            file_with(&[b"envelope".as_slice(), &file].concat()),
            8,
            file.len() as u64,
        )
        .unwrap();
        let msg = MessageData::split(b"Subject: s\r\n\r\n".to_vec(), range);
        let data = msg.view();
        assert_eq!(data.len(), 14 + 10_000);
        assert!(data.is_ascii());
        let mut pieces = data.pieces(777);
        let (mut all, mut buf, mut n) = (Vec::new(), Vec::new(), 0);
        while pieces.next_into(&mut buf).await.unwrap() {
            assert!(buf.len() <= 777);
            all.extend_from_slice(&buf);
            n += 1;
        }
        assert!(pieces.done());
        assert_eq!(all, [b"Subject: s\r\n\r\n".as_slice(), &file].concat());
        assert_eq!(n, 1 + 10_000usize.div_ceil(777));
        assert_eq!(data.to_vec().await.unwrap(), all);
    }

    #[test]
    fn eight_bit_in_the_file_part_is_seen() {
        let mut body = vec![b'a'; 600_000];
        body[599_999] = 0xe9;
        let range = FileRange::scan(file_with(&body), 0, body.len() as u64).unwrap();
        let msg = MessageData::split(b"S: s\r\n\r\n".to_vec(), range);
        assert!(!msg.view().is_ascii());
        // Not when the byte lies outside the range.
        let range = FileRange::scan(file_with(&body), 0, 599_999).unwrap();
        assert!(MessageData::split(Vec::new(), range).view().is_ascii());
    }

    #[tokio::test]
    async fn a_file_cut_short_is_an_error_not_a_short_message() {
        let range = FileRange::scan(file_with(b"0123456789"), 0, 10).unwrap();
        let long = FileRange { len: 20, ..range };
        let msg = MessageData::split(Vec::new(), long);
        assert!(msg.view().to_vec().await.is_err());
    }

    #[tokio::test]
    async fn memory_messages_need_no_file() {
        let data = Data::memory(b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(data.to_vec().await.unwrap(), b"Subject: x\r\n\r\nbody\r\n");
        let rewritten = b"X: 1\r\nSubject: x\r\n\r\nbody\r\n".to_vec();
        assert_eq!(data.with_head(&rewritten).len(), rewritten.len() as u64);
        assert!(!Data::memory("é".as_bytes()).is_ascii());
    }
}
