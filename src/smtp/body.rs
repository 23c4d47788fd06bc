//! Where a message goes while DATA is received. The header block and the first
//! [`IN_MEMORY_LIMIT`] bytes stay in memory: the backend rewrites only the header block,
//! and a message that small takes the spool's write-ahead-log path, which wants it whole.
//! Past that size the rest is appended, as it arrives (unstuffed and checked by the
//! `DataReader`), to a file under the spool's `tmp/`, so a session holds at most that
//! first part and one write buffer, whatever the message's size.
//!
//! The file is removed when its [`SpillFile`] is dropped: after the spool has copied it
//! into the message file, when the message is refused, and when the session ends mid-DATA.
//! A crash leaves it in `tmp/`, which the spool empties at start-up.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::AsyncWriteExt;

/// Bytes kept in memory before the rest goes to a file: the spool's log takes messages up
/// to this size, so every message that spills is one the spool writes to a file anyway.
pub const IN_MEMORY_LIMIT: usize = crate::queue::wal::MAX_PAYLOAD;

/// Bytes gathered before one write to the file: few writes, little memory.
const WRITE_CHUNK: usize = 256 * 1024;

/// A file of `tmp/` holding the end of a received message; removed when dropped.
#[derive(Debug)]
pub struct SpillFile {
    path: PathBuf,
    len: u64,
}

impl SpillFile {
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SpillFile {
    fn drop(&mut self) {
        // Nothing of a message that was not stored may stay behind.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A received message: `head` (always the whole header block, see `Receiver::spill`)
/// followed, for a large message, by the bytes in `rest`.
#[derive(Debug, Default)]
pub struct Message {
    pub head: Vec<u8>,
    pub rest: Option<SpillFile>,
}

impl Message {
    pub fn in_memory(bytes: Vec<u8>) -> Message {
        Message {
            head: bytes,
            rest: None,
        }
    }

    pub fn len(&self) -> u64 {
        self.head.len() as u64 + self.rest.as_ref().map_or(0, SpillFile::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole message in memory, for backends that need it so (the test sink). Blocking.
    pub fn into_vec(self) -> io::Result<Vec<u8>> {
        let Message { mut head, rest } = self;
        if let Some(rest) = rest {
            head.extend_from_slice(&std::fs::read(rest.path())?);
        }
        Ok(head)
    }
}

/// Collects what the `DataReader` produces: in memory, then in a file (see the module doc).
#[derive(Debug)]
pub struct Receiver {
    /// Where files go; `None` keeps everything in memory (backends without a spool).
    dir: Option<PathBuf>,
    head: Vec<u8>,
    /// Bytes after `head` not yet written to the file.
    pending: Vec<u8>,
    file: Option<(tokio::fs::File, SpillFile)>,
    /// The first write error; later bytes are read and dropped, the message refused.
    failed: Option<io::Error>,
}

impl Receiver {
    pub fn new(dir: Option<PathBuf>) -> Receiver {
        Receiver {
            dir,
            head: Vec::with_capacity(8192),
            pending: Vec::new(),
            file: None,
            failed: None,
        }
    }

    /// Where the reader appends now.
    pub fn out(&mut self) -> &mut Vec<u8> {
        if self.file.is_some() || self.failed.is_some() {
            &mut self.pending
        } else {
            &mut self.head
        }
    }

    /// After each `DataReader::feed`: starts the file once the head is full and the header
    /// block complete (the header rewrite needs all of it in memory), and writes what has
    /// gathered. `in_header` is the reader's.
    pub async fn after_feed(&mut self, in_header: bool) {
        if self.failed.is_some() {
            self.pending.clear();
            return;
        }
        if self.file.is_none() && self.head.len() >= IN_MEMORY_LIMIT && !in_header {
            self.spill().await;
        }
        if self.pending.len() >= WRITE_CHUNK {
            self.write_pending().await;
        }
    }

    /// The message is refused (a limit broke): nothing of it is kept.
    pub fn discard(&mut self) {
        self.file = None;
        self.head = Vec::new();
        self.pending = Vec::new();
    }

    /// End of DATA: the message, its file complete (not synced: the spool copies it into
    /// the message file, which it syncs), or the error that made a write fail.
    pub async fn finish(mut self) -> io::Result<Message> {
        self.write_pending().await;
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let rest = match self.file.take() {
            Some((mut file, rest)) => {
                // tokio's File finishes its last write in the background: wait for it.
                file.flush().await?;
                Some(rest)
            }
            None => None,
        };
        Ok(Message {
            head: std::mem::take(&mut self.head),
            rest,
        })
    }

    async fn spill(&mut self) {
        let Some(dir) = &self.dir else { return };
        let path = dir.join(spill_name());
        match tokio::fs::File::create(&path).await {
            Ok(file) => {
                self.file = Some((file, SpillFile { path, len: 0 }));
                // A read adds a few kB past a full chunk: room for that, and no doubling.
                self.pending = Vec::with_capacity(WRITE_CHUNK + 64 * 1024);
                // The last growth may have doubled it; the head does not grow any more.
                self.head.shrink_to_fit();
            }
            Err(e) => self.fail(e),
        }
    }

    async fn write_pending(&mut self) {
        let Some((file, rest)) = &mut self.file else {
            return;
        };
        if self.pending.is_empty() {
            return;
        }
        match file.write_all(&self.pending).await {
            Ok(()) => {
                rest.len += self.pending.len() as u64;
                self.pending.clear();
            }
            Err(e) => self.fail(e),
        }
    }

    fn fail(&mut self, e: io::Error) {
        tracing::error!(error = %e, "cannot write a large message to the spool's tmp/; it will be refused");
        self.failed = Some(e);
        self.discard();
    }
}

/// A name no other file of `tmp/` has: the spool's own files there are named by queue id
/// (hex digits only), so the prefix keeps them apart.
fn spill_name() -> String {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let rnd: u32 = rand::random();
    format!("rx-{}-{seq}-{rnd:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn receive(dir: &Path, chunks: &[&[u8]], in_header: bool) -> Receiver {
        let mut r = Receiver::new(Some(dir.to_path_buf()));
        for c in chunks {
            r.out().extend_from_slice(c);
            r.after_feed(in_header).await;
        }
        r
    }

    #[tokio::test]
    async fn a_small_message_stays_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let r = receive(dir.path(), &[b"Subject: x\r\n\r\nhi\r\n"], false).await;
        let m = r.finish().await.unwrap();
        assert_eq!(m.head, b"Subject: x\r\n\r\nhi\r\n");
        assert!(m.rest.is_none());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_large_message_continues_in_a_file_that_goes_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = vec![b'a'; IN_MEMORY_LIMIT];
        let chunk = vec![b'b'; 100_000];
        let chunks: Vec<&[u8]> = std::iter::once(&first[..])
            .chain(std::iter::repeat_n(&chunk[..], 30))
            .collect();
        let r = receive(dir.path(), &chunks, false).await;
        let m = r.finish().await.unwrap();
        assert_eq!(m.head.len(), IN_MEMORY_LIMIT);
        assert_eq!(m.len(), (IN_MEMORY_LIMIT + 3_000_000) as u64);
        let path = m.rest.as_ref().unwrap().path().to_path_buf();
        assert_eq!(std::fs::read(&path).unwrap(), vec![b'b'; 3_000_000]);
        let whole = m.into_vec().unwrap();
        assert_eq!(whole.len(), IN_MEMORY_LIMIT + 3_000_000);
        assert!(!path.exists(), "the file goes when the message is dropped");
    }

    #[tokio::test]
    async fn the_header_block_is_never_split() {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![b'h'; IN_MEMORY_LIMIT + 10];
        let r = receive(dir.path(), &[&big, b"more header"], true).await;
        let m = r.finish().await.unwrap();
        assert!(m.rest.is_none());
        assert_eq!(m.head.len(), IN_MEMORY_LIMIT + 21);
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_written_refuses_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("no-such-dir");
        let first = vec![b'a'; IN_MEMORY_LIMIT];
        let r = receive(&gone, &[&first, &[b'b'; WRITE_CHUNK]], false).await;
        let e = r.finish().await.expect_err("the write failed");
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn a_discarded_message_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let first = vec![b'a'; IN_MEMORY_LIMIT];
        let mut r = receive(dir.path(), &[&first, &[b'b'; WRITE_CHUNK]], false).await;
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        r.discard();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        let r = receive(dir.path(), &[&first, b"x"], false).await;
        drop(r); // the session ended mid-DATA
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
