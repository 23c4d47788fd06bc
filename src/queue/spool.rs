//! The durable spool. A message is answered 250 only after `Spool::store` returned, and
//! `store` returns only once the message is on disk: neither a crash nor a power cut after
//! the reply can lose it.
//!
//! **Layout.** `msg/<id>` holds a message (envelope header with the data's `size`, then the
//! data), `log/<id>` its per-recipient progress, `wal/` the write-ahead log, `tmp/` files
//! being written, `corrupt/` what recovery could not read.
//!
//! **Store.** The common path (messages up to [`wal::MAX_PAYLOAD`]) appends the message
//! to the write-ahead log and returns once the log's group-committed `fdatasync` covers it
//! (see the `wal` module: one data flush shared by every message stored meanwhile, instead
//! of two journal commits and an inode per message). The message has no file in `msg/`
//! until it is deferred (`append_log` writes it, so `msg/` lists what waits for a retry)
//! or its log segment is checkpointed. Larger messages are written to `tmp/`, fsynced,
//! renamed into `msg/`, and the directory fsynced (chasquid's safeio pattern), directory
//! fsyncs being group-committed.
//!
//! **Progress.** Per-recipient outcomes go to an append-only log `log/<id>` (one fsynced
//! line per outcome), so a restart neither loses a recipient nor delivers one twice. A
//! torn last line (crash mid-append) carries no newline and is ignored; its outcome is
//! retried. When every recipient is final, a `Done` record goes to the write-ahead log,
//! then the message file is removed, then its log, so a crash in between leaves an orphan
//! log (removed at start-up), never a message without its history.
//!
//! **No log for a message finished at once.** When the first outcome records of a message
//! stored by this process make every recipient final, `append_log` records it done instead
//! of creating its log: a message with no pending recipient has no progress to remember,
//! and the caller's `remove` that follows finds nothing left to do. The `Done` record is
//! not synced and a removal is not fsynced (as Postfix does not fsync the removal of a
//! delivered queue file): a power cut before they reach the disk brings the message back,
//! so it is delivered again. A process crash (kill -9) cannot undo them. Duplicates are
//! possible after a power cut; loss is not.
//!
//! **Recovery** replays the write-ahead log (message files rewritten and fsynced, `Done`
//! ones removed), removes the leftovers of `tmp/`, then reads `msg/` and `log/`. A file in
//! `msg/` that is empty or shorter than its `size` and not in the log is the file of a
//! message removed before it was ever synced, brought back by a power cut: it is removed.
//! Any other unreadable file is moved to `corrupt/` and reported.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::wal::{self, Wal};
use crate::message::data::{FileRange, MessageData};
use crate::smtp::body::SpillFile;

const MAGIC: &str = "connector-relay-spool 1";

/// The envelope stored with each message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Empty for the null reverse-path `<>`.
    pub mail_from: String,
    pub recipients: Vec<String>,
    /// Seconds since the Unix epoch when the message was accepted.
    pub arrived: u64,
    /// The inbound connector the session was attributed to, if any.
    pub inbound_connector: Option<String>,
    /// Whether the message came from outside the organization (no OnPremises attribution).
    pub from_outside_org: bool,
    pub smtputf8: bool,
    /// RFC 8689 REQUIRETLS: deliver only over validated TLS to next hops that offer
    /// REQUIRETLS. Stored as `requiretls: 1`; files written before the field existed have
    /// no such line and read back as `false`.
    pub requiretls: bool,
}

/// The state of one recipient, as recovered from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptState {
    Pending,
    Delivered,
    Failed,
}

/// One line of a message's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogRecord {
    Delivered { rcpt: usize, detail: String },
    Failed { rcpt: usize, detail: String },
    Deferred { rcpt: usize, detail: String },
    DelayNotified,
}

/// A spool file that could not be read back: (queue id, reason). It was moved to `corrupt/`.
pub type Corrupt = (String, String);

/// A message recovered from the spool at start-up.
#[derive(Debug, Clone)]
pub struct Recovered {
    pub id: String,
    pub envelope: Envelope,
    pub states: Vec<RcptState>,
    /// The last temporary failure per recipient, for the NDR at expiry.
    pub last_error: Vec<Option<String>>,
    pub attempts: u32,
    pub delay_notified: bool,
}

#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    msg: PathBuf,
    log: PathBuf,
    tmp: PathBuf,
    corrupt: PathBuf,
    seq: AtomicU64,
    msg_sync: DirSync,
    log_sync: DirSync,
    wal: Wal,
    /// Recipient counts of the messages this process stored that have no log yet (see the
    /// module doc); an entry lives from `store` to the first `append_log`.
    unlogged: Mutex<HashMap<String, usize>>,
}

impl Spool {
    /// Opens (creating if needed) the spool directory.
    pub fn open(root: &Path) -> io::Result<Spool> {
        for d in ["msg", "log", "tmp", "corrupt"] {
            fs::create_dir_all(root.join(d))?;
        }
        let spool = Spool {
            root: root.to_path_buf(),
            msg: root.join("msg"),
            log: root.join("log"),
            tmp: root.join("tmp"),
            corrupt: root.join("corrupt"),
            seq: AtomicU64::new(0),
            msg_sync: DirSync::new(root.join("msg")),
            log_sync: DirSync::new(root.join("log")),
            wal: Wal::open(&root.join("wal"), &root.join("msg"), &root.join("tmp"))?,
            unlogged: Mutex::new(HashMap::new()),
        };
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A new queue id: microsecond timestamp, a per-process sequence and random bits, so
    /// ids sort by arrival and never collide across restarts.
    pub fn new_id(&self) -> String {
        let micros = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) & 0xffff;
        let rnd: u16 = rand::random();
        format!("{micros:014X}{seq:04X}{rnd:04X}")
    }

    /// Stores a message durably. Blocking: call from `spawn_blocking` (async code uses
    /// [`Spool::store_async`]).
    pub fn store(&self, id: &str, env: &Envelope, data: &[u8]) -> io::Result<()> {
        let envelope = encode_envelope(id, env, data.len());
        let result = if envelope.len() + data.len() <= wal::MAX_PAYLOAD {
            self.wal
                .store_blocking(id, [envelope.as_bytes(), data].concat())
        } else {
            self.store_alone(id, &[envelope.as_bytes(), data], None)
        };
        self.stored(id, env, result)
    }

    /// Where a session writes the end of a large message while it arrives (see
    /// `smtp::body`); recovery empties it, so a crash mid-DATA leaves nothing.
    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// [`Spool::store`] from async code: the common path waits for the log's writer thread
    /// without holding a thread of its own. The data is `head`, `body`, then the content of
    /// `rest` (the relay's `Received:` header, the message's first part as received and
    /// rewritten, the file its end was received into): kept apart and owned, a message too
    /// large for the log is written as it is, without a copy of it in memory.
    pub async fn store_async(
        self: &Arc<Self>,
        id: &str,
        env: &Envelope,
        head: Vec<u8>,
        body: Vec<u8>,
        rest: Option<SpillFile>,
    ) -> io::Result<()> {
        let rest_len = rest.as_ref().map_or(0, |r| r.len() as usize);
        let size = head.len() + body.len() + rest_len;
        let envelope = encode_envelope(id, env, size);
        let result = if envelope.len() + size <= wal::MAX_PAYLOAD && rest.is_none() {
            let content = [envelope.as_bytes(), &head, &body].concat();
            drop((head, body));
            self.wal.store(id, content).await
        } else {
            let (spool, id) = (self.clone(), id.to_string());
            tokio::task::spawn_blocking(move || {
                let parts = [envelope.as_bytes(), &head, &body];
                spool.store_alone(&id, &parts, rest.as_ref().map(SpillFile::path))
            })
            .await
            .unwrap_or_else(|e| Err(io::Error::other(e)))
        };
        self.stored(id, env, result)
    }

    fn stored(&self, id: &str, env: &Envelope, result: io::Result<()>) -> io::Result<()> {
        match &result {
            Ok(()) => {
                self.unlogged().insert(id.to_string(), env.recipients.len());
            }
            Err(_) => {
                let _ = fs::remove_file(self.tmp.join(id));
            }
        }
        result
    }

    /// Messages too large for the log: the file is fsynced, renamed into `msg/`, and the
    /// directory fsynced (group-committed with other changes to `msg/`).
    /// `rest`, when there is one, is appended after `parts` by a file-to-file copy (the
    /// kernel's `copy_file_range` on Linux): the message's bulk never passes through memory.
    fn store_alone(&self, id: &str, parts: &[&[u8]], rest: Option<&Path>) -> io::Result<()> {
        let tmp = self.tmp.join(id);
        let mut f = File::create(&tmp)?;
        for part in parts {
            f.write_all(part)?;
        }
        if let Some(rest) = rest {
            io::copy(&mut File::open(rest)?, &mut f)?;
        }
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, self.msg.join(id))?;
        self.msg_sync.sync()
    }

    /// Writes `msg/<id>` through `tmp/`, fsynced; the caller fsyncs `msg/`.
    fn write_synced(&self, id: &str, content: &[u8]) -> io::Result<()> {
        let tmp = self.tmp.join(id);
        wal::write_synced(&tmp, content)?;
        fs::rename(&tmp, self.msg.join(id))
    }

    /// A deferred message gets its file in `msg/` (unsynced: while it is resident, its log
    /// record is the durable copy, and the checkpoint writes the file durably), so `msg/`
    /// lists what waits for a retry.
    fn materialize(&self, id: &str) -> io::Result<()> {
        if let Some(content) = self.wal.read(id)? {
            let tmp = self.tmp.join(id);
            File::create(&tmp)?.write_all(&content)?;
            fs::rename(&tmp, self.msg.join(id))?;
        }
        Ok(())
    }

    /// Graceful stop: every queued message gets a durable file in `msg/` and the write-ahead
    /// log is emptied, so the spool at rest is plain files.
    pub fn checkpoint(&self) -> io::Result<()> {
        self.wal.checkpoint_all()
    }

    /// Records in the log that a message is finished, before its file goes.
    fn mark_done(&self, id: &str) {
        if let Err(e) = self.wal.done(id) {
            tracing::warn!(id, error = %e, "cannot log the removal of a finished message; a restart may deliver it again");
        }
    }

    fn unlogged(&self) -> MutexGuard<'_, HashMap<String, usize>> {
        self.unlogged.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads a stored message whole: its envelope and the message data. Delivery uses
    /// [`Spool::read_for_delivery`], which does not hold a large message in memory.
    pub fn read(&self, id: &str) -> io::Result<(Envelope, Vec<u8>)> {
        let bytes = match self.wal.read(id)? {
            Some(content) => content,
            None => fs::read(self.msg.join(id))?,
        };
        split_envelope(bytes)
    }

    /// Reads a stored message for delivery (see `message::data`): a small one whole, a
    /// larger one as its header block in memory and the rest left in the file. Blocking.
    pub fn read_for_delivery(&self, id: &str) -> io::Result<(Envelope, MessageData)> {
        if let Some(content) = self.wal.read(id)? {
            return split_envelope(content).map(|(env, data)| (env, MessageData::memory(data)));
        }
        let mut file = File::open(self.msg.join(id))?;
        let file_len = file.metadata()?.len();
        if file_len <= wal::MAX_PAYLOAD as u64 {
            let mut content = Vec::with_capacity(file_len as usize);
            file.read_to_end(&mut content)?;
            return split_envelope(content).map(|(env, data)| (env, MessageData::memory(data)));
        }
        let mut start = vec![0; wal::MAX_PAYLOAD];
        file.read_exact(&mut start)?;
        let Ok((env, offset, size)) = decode_envelope_head(&start) else {
            // An envelope larger than the part read (a huge recipient list), or a bad one:
            // the whole file decides.
            drop(start);
            let (env, data) = split_envelope(fs::read(self.msg.join(id))?)?;
            return Ok((env, MessageData::memory(data)));
        };
        let data_len = file_len - offset as u64;
        if size.is_some_and(|n| data_len < n as u64) {
            let e = format!("message file holds {data_len} bytes of the {size:?} recorded");
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        // The head ends after the header block, or failing that at the last line end read.
        let read = &start[offset..];
        let head_len = crate::message::header_block(read).len();
        let head_len = if head_len < read.len() {
            head_len
        } else {
            read.iter()
                .rposition(|&b| b == b'\n')
                .map_or(read.len(), |i| i + 1)
        };
        let head = read[..head_len].to_vec();
        drop(start);
        let rest_at = (offset + head_len) as u64;
        let rest = FileRange::scan(Arc::new(file), rest_at, file_len - rest_at)?;
        Ok((env, MessageData::split(head, rest)))
    }

    /// Appends outcome records to the message's log and fsyncs it. When these are the first
    /// records of a message stored by this process and they make every recipient final, the
    /// message is removed instead (see the module doc).
    pub fn append_log(&self, id: &str, records: &[LogRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let unlogged = self.unlogged().remove(id);
        if unlogged.is_some_and(|n| all_final(records, n)) {
            self.mark_done(id);
            return match fs::remove_file(self.msg.join(id)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(e),
            };
        }
        let path = self.log.join(id);
        let new = !path.exists();
        if new {
            self.materialize(id)?;
        }
        let mut f = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut buf = String::new();
        for r in records {
            buf.push_str(&encode_record(r));
            buf.push('\n');
        }
        f.write_all(buf.as_bytes())?;
        f.sync_data()?;
        if new {
            self.log_sync.sync()?;
        }
        Ok(())
    }

    /// Removes a finished message: the message file first, then its log (see module doc).
    pub fn remove(&self, id: &str) -> io::Result<()> {
        self.unlogged().remove(id);
        self.mark_done(id);
        match fs::remove_file(self.msg.join(id)) {
            // The unlink must be on disk before the log's: a message never outlives its
            // history, even across a power cut.
            Ok(()) => self.msg_sync.sync()?,
            // Already removed by `append_log` (a message finished at once, no log), or never
            // written (its log record was its only copy).
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match fs::remove_file(self.log.join(id)) {
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Whether a message `id` is in this spool (its file, or its record in the log).
    pub fn holds(&self, id: &str) -> io::Result<bool> {
        Ok(self.msg.join(id).exists() || self.wal.read(id)?.is_some())
    }

    /// Copies message `id` of `other` (a spool at rest: recovered, so the message is a file
    /// in its `msg/`) into this one, durably: its progress log first, then the message
    /// file, each through `tmp/`, fsynced and renamed, then both directories fsynced. Once
    /// this returns, a restart of this spool recovers the message with its recipients'
    /// states; until the message file is renamed in, it recovers nothing of it (an orphan
    /// log is removed). File to file: a large message never passes through memory.
    pub fn copy_in(&self, other: &Spool, id: &str) -> io::Result<()> {
        let copy = |from: &Path, to: &Path| -> io::Result<()> {
            let tmp = self.tmp.join(format!("{id}.adopt"));
            let mut out = File::create(&tmp)?;
            io::copy(&mut File::open(from)?, &mut out)?;
            out.sync_all()?;
            drop(out);
            fs::rename(&tmp, to)
        };
        let log = other.log.join(id);
        if log.exists() {
            copy(&log, &self.log.join(id))?;
            self.log_sync.sync()?;
        }
        copy(&other.msg.join(id), &self.msg.join(id))?;
        self.msg_sync.sync()
    }

    /// Removes message `id` of a spool at rest (adopted by another spool), the message
    /// file first, each removal made durable.
    pub fn discard(&self, id: &str) -> io::Result<()> {
        for (dir, sync) in [(&self.msg, &self.msg_sync), (&self.log, &self.log_sync)] {
            match fs::remove_file(dir.join(id)) {
                Ok(()) => sync.sync()?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Recovers every message in the spool. Corrupt message files are moved to `corrupt/`
    /// and reported in the second list; leftovers of interrupted writes are removed (they
    /// were never acknowledged).
    pub fn recover(&self) -> io::Result<(Vec<Recovered>, Vec<Corrupt>)> {
        self.replay_wal()?;
        for e in fs::read_dir(&self.tmp)? {
            let _ = fs::remove_file(e?.path());
        }
        let mut out = Vec::new();
        let mut corrupt = Vec::new();
        let mut ids = Vec::new();
        for e in fs::read_dir(&self.msg)? {
            let e = e?;
            if let Some(name) = e.file_name().to_str() {
                ids.push(name.to_string());
            }
        }
        ids.sort();
        for id in ids {
            match self.recover_one(&id) {
                Ok(r) => out.push(r),
                Err(Unreadable::Leftover) => {
                    // Not in the log and never fsynced: the file of a message removed before
                    // its segment was checkpointed, brought back by a power cut (see `wal`).
                    tracing::info!(
                        id,
                        "removing an incomplete spool file left by an undone removal"
                    );
                    let _ = fs::remove_file(self.msg.join(&id));
                    let _ = fs::remove_file(self.log.join(&id));
                }
                Err(Unreadable::Corrupt(reason)) => {
                    let _ = fs::rename(self.msg.join(&id), self.corrupt.join(&id));
                    if self.log.join(&id).exists() {
                        let _ =
                            fs::rename(self.log.join(&id), self.corrupt.join(format!("{id}.log")));
                    }
                    corrupt.push((id, reason));
                }
            }
        }
        // Logs without a message: the message was finished and removed just before a crash.
        for e in fs::read_dir(&self.log)? {
            let e = e?;
            if !self.msg.join(e.file_name()).exists() {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok((out, corrupt))
    }

    /// Rewrites, durably, the message file of every store left in the log without a `Done`
    /// record, and removes the files of the `Done` ones; then the log's segments are free.
    fn replay_wal(&self) -> io::Result<()> {
        let replay = self.wal.replay()?;
        let mut changed = false;
        for (id, content) in &replay.stored {
            if replay.done.contains(id) {
                continue;
            }
            self.write_synced(id, content)?;
            changed = true;
        }
        for id in &replay.done {
            for path in [self.msg.join(id), self.log.join(id)] {
                match fs::remove_file(path) {
                    Ok(()) => changed = true,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if changed {
            self.msg_sync.sync()?;
            self.log_sync.sync()?;
        }
        self.wal.retire_replayed()
    }

    fn recover_one(&self, id: &str) -> Result<Recovered, Unreadable> {
        let bytes = fs::read(self.msg.join(id)).map_err(|e| Unreadable::Corrupt(e.to_string()))?;
        let (envelope, _) = decode_envelope(&bytes).map_err(|e| match e {
            Decode::Incomplete => Unreadable::Leftover,
            Decode::Bad(reason) => Unreadable::Corrupt(reason),
        })?;
        let n = envelope.recipients.len();
        let mut rec = Recovered {
            id: id.to_string(),
            states: vec![RcptState::Pending; n],
            last_error: vec![None; n],
            attempts: 0,
            delay_notified: false,
            envelope,
        };
        let log = match fs::read(self.log.join(id)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Unreadable::Corrupt(e.to_string())),
        };
        let text = String::from_utf8_lossy(&log);
        // Only newline-terminated lines count: a torn final append is ignored.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            match decode_record(line) {
                Some(LogRecord::Delivered { rcpt, .. }) if rcpt < n => {
                    rec.states[rcpt] = RcptState::Delivered
                }
                Some(LogRecord::Failed { rcpt, .. }) if rcpt < n => {
                    rec.states[rcpt] = RcptState::Failed
                }
                Some(LogRecord::Deferred { rcpt, detail }) if rcpt < n => {
                    rec.last_error[rcpt] = Some(detail);
                    rec.attempts = rec.attempts.max(1);
                }
                Some(LogRecord::DelayNotified) => rec.delay_notified = true,
                _ => return Err(Unreadable::Corrupt(format!("bad log line {line:?}"))),
            }
        }
        Ok(rec)
    }
}

/// Whether `records` give every one of `n` recipients a final outcome.
fn all_final(records: &[LogRecord], n: usize) -> bool {
    let mut fin = vec![false; n];
    for r in records {
        match r {
            LogRecord::Delivered { rcpt, .. } | LogRecord::Failed { rcpt, .. } if *rcpt < n => {
                fin[*rcpt] = true
            }
            _ => {}
        }
    }
    fin.iter().all(|&f| f)
}

/// Group commit of one directory's fsyncs (leader / follower): a caller joins the open
/// batch; the first waiter of a batch that finds no fsync running closes the batch and
/// fsyncs for everyone in it, the others sleep until it is done. An fsync that starts after
/// a caller joined covers every change the caller made before.
#[derive(Debug)]
struct DirSync {
    dir: PathBuf,
    state: Mutex<SyncState>,
    done: Condvar,
}

#[derive(Debug)]
struct SyncState {
    /// The batch that the next fsync will cover; changes join it until that fsync starts.
    open: Arc<Batch>,
    /// Whether an fsync is running (its batch is no longer `open`).
    syncing: bool,
}

#[derive(Debug, Default)]
struct Batch {
    /// Set once the fsync covering this batch has finished: `Err` holds the OS error code
    /// (so ENOSPC still reads as ENOSPC) and the message.
    result: OnceLock<Result<(), (Option<i32>, String)>>,
}

impl DirSync {
    fn new(dir: PathBuf) -> DirSync {
        DirSync {
            dir,
            state: Mutex::new(SyncState {
                open: Arc::new(Batch::default()),
                syncing: false,
            }),
            done: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SyncState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns once an fsync of the directory that started after this call has finished,
    /// so it covers every change the caller made to the directory before calling.
    fn sync(&self) -> io::Result<()> {
        let mut st = self.lock();
        let mine = st.open.clone();
        loop {
            if let Some(result) = mine.result.get() {
                return result.clone().map_err(|(code, msg)| match code {
                    Some(c) => io::Error::from_raw_os_error(c),
                    None => io::Error::other(msg),
                });
            }
            if st.syncing {
                // Someone else's fsync is running; it may have started before our change,
                // so our batch waits for the next one.
                st = self.done.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            // Lead: close the open batch (ours; an unfinished batch that is not syncing is
            // always the open one) and sync for everyone in it.
            let batch = std::mem::take(&mut st.open);
            st.syncing = true;
            drop(st);
            let result = File::open(&self.dir)
                .and_then(|f| f.sync_all())
                .map_err(|e| (e.raw_os_error(), e.to_string()));
            let _ = batch.result.set(result);
            st = self.lock();
            st.syncing = false;
            self.done.notify_all();
        }
    }
}

/// Envelope fields can never hold a newline (the SMTP parser refuses control characters),
/// but connector names come from config: newlines there are flattened defensively.
fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The envelope header of a message file; `size` is the length of the data that follows,
/// so a file cut short (a power cut before it was synced) is recognised.
fn encode_envelope(id: &str, env: &Envelope, size: usize) -> String {
    let mut s = format!(
        "{MAGIC}\nid: {id}\nsize: {size}\narrived: {}\nfrom: {}\n",
        env.arrived,
        one_line(&env.mail_from)
    );
    for r in &env.recipients {
        s.push_str(&format!("rcpt: {}\n", one_line(r)));
    }
    if let Some(c) = &env.inbound_connector {
        s.push_str(&format!("inbound: {}\n", one_line(c)));
    }
    s.push_str(&format!(
        "outside: {}\nsmtputf8: {}\n",
        u8::from(env.from_outside_org),
        u8::from(env.smtputf8)
    ));
    // Written only when set: a spool without REQUIRETLS messages stays byte-identical
    // to the files older versions wrote (and read).
    if env.requiretls {
        s.push_str("requiretls: 1\n");
    }
    s.push('\n');
    s
}

/// Why a message file could not be read back.
#[derive(Debug)]
enum Decode {
    /// Empty, or shorter than its `size` says: a write that never completed.
    Incomplete,
    Bad(String),
}

impl std::fmt::Display for Decode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decode::Incomplete => f.write_str("incomplete message file"),
            Decode::Bad(reason) => f.write_str(reason),
        }
    }
}

impl From<&str> for Decode {
    fn from(s: &str) -> Decode {
        Decode::Bad(s.to_string())
    }
}

impl From<String> for Decode {
    fn from(s: String) -> Decode {
        Decode::Bad(s)
    }
}

/// A spool file that recovery does not queue.
enum Unreadable {
    /// See [`Decode::Incomplete`]: removed, not kept.
    Leftover,
    Corrupt(String),
}

/// A whole spool record cut into its envelope and data, in place (a copy of the data would
/// be a second message-sized buffer).
fn split_envelope(mut bytes: Vec<u8>) -> io::Result<(Envelope, Vec<u8>)> {
    let (env, offset) = decode_envelope(&bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
    bytes.drain(..offset);
    Ok((env, bytes))
}

fn decode_envelope(bytes: &[u8]) -> Result<(Envelope, usize), Decode> {
    let (env, offset, size) = decode_envelope_head(bytes)?;
    // Files written before the size field existed have none.
    if size.is_some_and(|n| bytes.len() - offset < n) {
        return Err(Decode::Incomplete);
    }
    Ok((env, offset))
}

/// The envelope at the start of `bytes` (which may hold only the start of the file): the
/// envelope, where the data starts, and the data's size when the file records it.
fn decode_envelope_head(bytes: &[u8]) -> Result<(Envelope, usize, Option<usize>), Decode> {
    if bytes.is_empty() {
        return Err(Decode::Incomplete);
    }
    let end = bytes
        .windows(2)
        .position(|w| w == b"\n\n")
        .ok_or("no end of envelope")?;
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| "envelope is not UTF-8")?;
    let mut lines = head.lines();
    if lines.next() != Some(MAGIC) {
        return Err("not a spool file (bad magic line)".into());
    }
    let mut env = Envelope {
        mail_from: String::new(),
        recipients: Vec::new(),
        arrived: 0,
        inbound_connector: None,
        from_outside_org: true,
        smtputf8: false,
        requiretls: false,
    };
    let mut seen_from = false;
    let mut size = None;
    for line in lines {
        let (k, v) = line
            .split_once(": ")
            .or_else(|| line.split_once(':').map(|(k, _)| (k, "")))
            .ok_or_else(|| format!("bad envelope line {line:?}"))?;
        match k {
            "id" => {}
            "size" => size = Some(v.parse::<usize>().map_err(|_| "bad size")?),
            "arrived" => env.arrived = v.parse().map_err(|_| "bad arrival time")?,
            "from" => {
                env.mail_from = v.to_string();
                seen_from = true;
            }
            "rcpt" => env.recipients.push(v.to_string()),
            "inbound" => env.inbound_connector = Some(v.to_string()),
            "outside" => env.from_outside_org = v == "1",
            "smtputf8" => env.smtputf8 = v == "1",
            "requiretls" => env.requiretls = v == "1",
            _ => return Err(format!("unknown envelope field {k:?}").into()),
        }
    }
    if !seen_from || env.recipients.is_empty() || env.arrived == 0 {
        return Err("incomplete envelope".into());
    }
    Ok((env, end + 2, size))
}

fn encode_record(r: &LogRecord) -> String {
    match r {
        LogRecord::Delivered { rcpt, detail } => format!("D {rcpt} {}", one_line(detail)),
        LogRecord::Failed { rcpt, detail } => format!("F {rcpt} {}", one_line(detail)),
        LogRecord::Deferred { rcpt, detail } => format!("T {rcpt} {}", one_line(detail)),
        LogRecord::DelayNotified => "N".to_string(),
    }
}

fn decode_record(line: &str) -> Option<LogRecord> {
    if line == "N" {
        return Some(LogRecord::DelayNotified);
    }
    let mut parts = line.splitn(3, ' ');
    let kind = parts.next()?;
    let rcpt: usize = parts.next()?.parse().ok()?;
    let detail = parts.next().unwrap_or("").to_string();
    match kind {
        "D" => Some(LogRecord::Delivered { rcpt, detail }),
        "F" => Some(LogRecord::Failed { rcpt, detail }),
        "T" => Some(LogRecord::Deferred { rcpt, detail }),
        _ => None,
    }
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn env() -> Envelope {
        Envelope {
            mail_from: "a@b.test".into(),
            recipients: vec!["x@y.test".into(), "z@y.test".into()],
            arrived: 1_700_000_000,
            inbound_connector: Some("From on-premises".into()),
            from_outside_org: false,
            smtputf8: false,
            requiretls: false,
        }
    }

    #[test]
    fn store_read_recover_log() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.new_id();
        spool
            .store(&id, &env(), b"Subject: x\r\n\r\nbody\r\n")
            .unwrap();
        let (e, data) = spool.read(&id).unwrap();
        assert_eq!(e, env());
        assert_eq!(data, b"Subject: x\r\n\r\nbody\r\n");
        spool
            .append_log(
                &id,
                &[LogRecord::Delivered {
                    rcpt: 1,
                    detail: "250 ok".into(),
                }],
            )
            .unwrap();
        // A torn append (no newline) must be ignored.
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join("log").join(&id))
            .unwrap();
        f.write_all(b"D 0 250 o").unwrap();
        let (rec, corrupt) = spool.recover().unwrap();
        assert!(corrupt.is_empty());
        assert_eq!(rec.len(), 1);
        assert_eq!(
            rec[0].states,
            vec![RcptState::Pending, RcptState::Delivered]
        );
        spool.remove(&id).unwrap();
        let (rec, _) = spool.recover().unwrap();
        assert!(rec.is_empty());
    }

    /// Many threads storing at once (the group-commit path): every store returns Ok, and
    /// every message is there with its data afterwards.
    #[test]
    fn concurrent_stores_share_directory_syncs() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let spool = spool.clone();
                std::thread::spawn(move || {
                    (0..25)
                        .map(|i| {
                            let id = spool.new_id();
                            let body = format!("Subject: {t}-{i}\r\n\r\nbody\r\n");
                            spool.store(&id, &env(), body.as_bytes()).unwrap();
                            (id, body)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let stored: Vec<_> = threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect();
        assert_eq!(stored.len(), 200);
        for (id, body) in &stored {
            assert_eq!(spool.read(id).unwrap().1, body.as_bytes());
        }
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        assert_eq!(spool.recover().unwrap().0.len(), 200);
    }

    /// First records that finish every recipient remove the message without a log; a partial
    /// outcome still creates the log, and later records append to it.
    #[test]
    fn message_finished_at_once_gets_no_log() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let delivered = |rcpt| LogRecord::Delivered {
            rcpt,
            detail: "250 ok".into(),
        };
        let done = spool.new_id();
        spool.store(&done, &env(), b"x\r\n").unwrap();
        spool
            .append_log(&done, &[delivered(0), delivered(1)])
            .unwrap();
        assert!(!dir.path().join("msg").join(&done).exists());
        assert!(!dir.path().join("log").join(&done).exists());
        spool.remove(&done).unwrap();

        let partial = spool.new_id();
        spool.store(&partial, &env(), b"x\r\n").unwrap();
        let deferred = LogRecord::Deferred {
            rcpt: 1,
            detail: "451 later".into(),
        };
        spool
            .append_log(&partial, &[delivered(0), deferred])
            .unwrap();
        assert!(dir.path().join("log").join(&partial).exists());
        spool.append_log(&partial, &[delivered(1)]).unwrap();
        let (rec, _) = spool.recover().unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].id, partial);
        assert_eq!(rec[0].states, vec![RcptState::Delivered; 2]);
        spool.remove(&partial).unwrap();
        assert!(spool.recover().unwrap().0.is_empty());
    }

    /// A failed directory fsync reaches every waiter of its batch with the OS error code.
    #[test]
    fn dir_sync_reports_errors_to_every_waiter() {
        let dir = tempfile::tempdir().unwrap();
        let sync = Arc::new(DirSync::new(dir.path().join("missing")));
        let waiters: Vec<_> = (0..4)
            .map(|_| {
                let sync = sync.clone();
                std::thread::spawn(move || sync.sync())
            })
            .collect();
        for w in waiters {
            let e = w.join().unwrap().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        }
        fs::create_dir(dir.path().join("missing")).unwrap();
        sync.sync().unwrap();
    }

    /// Queued messages live in the write-ahead log until deferred or checkpointed; a power
    /// cut can cut short the unsynced file of a deferred one. Recovery rewrites both from
    /// the log, does not bring back a message whose removal was logged, and leaves plain
    /// files that a second recovery reads alone.
    #[test]
    fn recovery_rewrites_messages_from_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let msg = dir.path().join("msg");
        let body = |i| format!("Subject: {i}\r\n\r\nbody\r\n");
        let (queued, deferred, delivered) = {
            let spool = Spool::open(dir.path()).unwrap();
            let ids: Vec<String> = (0..3).map(|_| spool.new_id()).collect();
            for (i, id) in ids.iter().enumerate() {
                spool.store(id, &env(), body(i).as_bytes()).unwrap();
            }
            assert!(
                !msg.join(&ids[0]).exists(),
                "a queued message has no file yet"
            );
            assert_eq!(spool.read(&ids[0]).unwrap().1, body(0).as_bytes());
            let deferred = LogRecord::Deferred {
                rcpt: 0,
                detail: "451 later".into(),
            };
            spool.append_log(&ids[1], &[deferred]).unwrap();
            assert!(
                msg.join(&ids[1]).exists(),
                "a deferred message has its file"
            );
            spool.remove(&ids[2]).unwrap();
            // The power cut: the deferred message's file cut short.
            let f = OpenOptions::new()
                .write(true)
                .open(msg.join(&ids[1]))
                .unwrap();
            f.set_len(40).unwrap();
            (ids[0].clone(), ids[1].clone(), ids[2].clone())
        };
        let spool = Spool::open(dir.path()).unwrap();
        let (rec, corrupt) = spool.recover().unwrap();
        assert!(corrupt.is_empty(), "{corrupt:?}");
        let mut got: Vec<_> = rec.iter().map(|r| r.id.clone()).collect();
        got.sort();
        assert_eq!(got, [queued.clone(), deferred.clone()]);
        assert_eq!(rec[1].last_error[0].as_deref(), Some("451 later"));
        assert_eq!(spool.read(&queued).unwrap().1, body(0).as_bytes());
        assert_eq!(spool.read(&deferred).unwrap().1, body(1).as_bytes());
        assert!(!msg.join(&delivered).exists());
        drop(spool);
        let (rec, _) = Spool::open(dir.path()).unwrap().recover().unwrap();
        assert_eq!(rec.len(), 2);
    }

    /// A graceful stop leaves every queued message as a durable file and the log empty.
    #[test]
    fn checkpoint_leaves_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let id = spool.new_id();
        spool.store(&id, &env(), b"x\r\n").unwrap();
        spool.checkpoint().unwrap();
        let (e, data) = decode_file(&fs::read(dir.path().join("msg").join(&id)).unwrap());
        assert_eq!((e, data.as_slice()), (env(), &b"x\r\n"[..]));
        assert!(spool.wal.replay().unwrap().stored.is_empty());
        drop(spool);
        let (rec, _) = Spool::open(dir.path()).unwrap().recover().unwrap();
        assert_eq!(rec.len(), 1);
    }

    /// RFC 8689: the REQUIRETLS flag survives the log, a checkpoint and recovery.
    #[test]
    fn requiretls_flag_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let (a, b) = (spool.new_id(), spool.new_id());
        let flagged = Envelope {
            requiretls: true,
            ..env()
        };
        spool.store(&a, &flagged, b"x\r\n").unwrap();
        spool.store(&b, &env(), b"y\r\n").unwrap();
        drop(spool);
        let (rec, corrupt) = Spool::open(dir.path()).unwrap().recover().unwrap();
        assert!(corrupt.is_empty(), "{corrupt:?}");
        let by_id = |id: &str| rec.iter().find(|r| r.id == id).unwrap().envelope.clone();
        assert!(by_id(&a).requiretls);
        assert!(!by_id(&b).requiretls);
        let file = encode_envelope(&a, &flagged, 3);
        assert!(file.contains("\nrequiretls: 1\n"), "{file}");
        assert!(!encode_envelope(&b, &env(), 3).contains("requiretls"));
    }

    /// A message file in the format written before REQUIRETLS existed (no `requiretls`
    /// line) is recovered, with the flag off.
    #[test]
    fn old_format_file_without_requiretls_is_recovered() {
        let dir = tempfile::tempdir().unwrap();
        drop(Spool::open(dir.path()).unwrap());
        let old = "connector-relay-spool 1\nid: OLD1\nsize: 9\narrived: 1700000000\n\
                   from: a@b.test\nrcpt: x@y.test\ninbound: From on-premises\n\
                   outside: 0\nsmtputf8: 0\n\nSubject: \r\n";
        fs::write(dir.path().join("msg").join("OLD1"), old).unwrap();
        let (rec, corrupt) = Spool::open(dir.path()).unwrap().recover().unwrap();
        assert!(corrupt.is_empty(), "{corrupt:?}");
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].id, "OLD1");
        assert!(!rec[0].envelope.requiretls);
        assert_eq!(rec[0].envelope.recipients, vec!["x@y.test".to_string()]);
    }

    fn decode_file(bytes: &[u8]) -> (Envelope, Vec<u8>) {
        let (e, offset) = decode_envelope(bytes).unwrap();
        (e, bytes[offset..].to_vec())
    }

    /// A file cut short that is not in the log (a removed message brought back by a power
    /// cut) is removed, not reported as corrupt; one too large for the log is fsynced alone.
    #[test]
    fn incomplete_files_outside_the_log_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let mut head = encode_envelope("CUT", &env(), 1000).into_bytes();
        head.extend_from_slice(b"only part of it");
        fs::write(dir.path().join("msg").join("CUT"), head).unwrap();
        fs::write(dir.path().join("msg").join("EMPTY"), b"").unwrap();
        let big = spool.new_id();
        let data = vec![b'x'; wal::MAX_PAYLOAD + 1];
        spool.store(&big, &env(), &data).unwrap();
        let (rec, corrupt) = spool.recover().unwrap();
        assert!(corrupt.is_empty(), "{corrupt:?}");
        assert_eq!(rec.len(), 1);
        assert_eq!(rec[0].id, big);
        assert!(!dir.path().join("msg").join("CUT").exists());
        assert!(!dir.path().join("msg").join("EMPTY").exists());
        assert_eq!(spool.read(&big).unwrap().1, data);
    }

    /// Delivery reads a large message as its header block and the rest of the file; a small
    /// one (from the log or `msg/`) whole; both give the stored bytes back.
    #[tokio::test]
    async fn read_for_delivery_keeps_only_the_head_of_a_large_message() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let headers = b"Subject: big\r\nX-A: 1\r\n\r\n".to_vec();
        let mut big = headers.clone();
        big.resize(3 << 20, b'a');
        big.extend_from_slice("é\r\n".as_bytes());
        let small = b"Subject: small\r\n\r\nbody\r\n".to_vec();
        for (data, head) in [(&big, &headers), (&small, &small)] {
            let id = spool.new_id();
            spool.store(&id, &env(), data).unwrap();
            let (e, read) = spool.read_for_delivery(&id).unwrap();
            assert_eq!(e.recipients, env().recipients);
            assert_eq!(read.view().head(), &head[..]);
            assert_eq!(read.view().len(), data.len() as u64);
            assert_eq!(read.view().is_ascii(), data.is_ascii());
            assert_eq!(&read.view().to_vec().await.unwrap(), data);
        }
        // A file cut short (the disk lost its end) is an error, not a short message.
        let id = spool.new_id();
        spool.store(&id, &env(), &big).unwrap();
        let path = dir.path().join("msg").join(&id);
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(f.metadata().unwrap().len() - 10).unwrap();
        assert!(spool.read_for_delivery(&id).is_err());
    }

    /// `store_async` writes the head then the body, on both paths (the log for a small
    /// message, a file of its own for a large one, written from the two parts without
    /// joining them): read back, recovered after a restart, the data is the two joined.
    /// A message received partly into `tmp/` (smtp::body): the file holds envelope, head,
    /// body and the streamed rest, in that order; the temp file is gone once stored, and
    /// the message survives a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_async_appends_the_streamed_rest() {
        use crate::smtp::body::{IN_MEMORY_LIMIT, Receiver};
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let mut rx = Receiver::new(Some(spool.tmp_dir().to_path_buf()));
        let mut first = b"Subject: l\r\n\r\n".to_vec();
        first.resize(IN_MEMORY_LIMIT, b'a');
        rx.out().extend_from_slice(&first);
        rx.after_feed(false).await;
        let rest: Vec<u8> = (0..3_000_000u32).map(|i| b'0' + (i % 10) as u8).collect();
        for chunk in rest.chunks(8192) {
            rx.out().extend_from_slice(chunk);
            rx.after_feed(false).await;
        }
        let message = rx.finish().await.unwrap();
        assert_eq!(message.len(), (first.len() + rest.len()) as u64);
        let received = b"Received: from x by y; id 1\r\n".to_vec();
        let id = spool.new_id();
        let crate::smtp::body::Message { head, rest: file } = message;
        assert!(file.is_some(), "the rest went to a file");
        spool
            .store_async(&id, &env(), received.clone(), head, file)
            .await
            .unwrap();
        let whole = [&received[..], &first, &rest].concat();
        assert_eq!(spool.read(&id).unwrap().1, whole);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        let (rec, corrupt) = spool.recover().unwrap();
        assert!(corrupt.is_empty(), "{corrupt:?}");
        assert_eq!(rec.len(), 1);
        assert_eq!(spool.read(&id).unwrap().1, whole);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn store_async_writes_head_then_body() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Arc::new(Spool::open(dir.path()).unwrap());
        let head = b"Received: from x by y; id 1\r\n".to_vec();
        let small = b"Subject: s\r\n\r\nsmall\r\n".to_vec();
        let mut large = b"Subject: l\r\n\r\n".to_vec();
        large.resize(wal::MAX_PAYLOAD + 10, b'y');
        let mut ids = Vec::new();
        for body in [small, large] {
            let id = spool.new_id();
            spool
                .store_async(&id, &env(), head.clone(), body.clone(), None)
                .await
                .unwrap();
            assert_eq!(spool.read(&id).unwrap().1, [&head[..], &body].concat());
            ids.push((id, body));
        }
        assert!(
            dir.path().join("msg").join(&ids[1].0).exists(),
            "the large one alone"
        );
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        drop(spool);
        let spool = Spool::open(dir.path()).unwrap();
        let (rec, corrupt) = spool.recover().unwrap();
        assert!(corrupt.is_empty(), "{corrupt:?}");
        assert_eq!(rec.len(), 2);
        for (id, body) in &ids {
            let (e, data) = spool.read(id).unwrap();
            assert_eq!(e, env());
            assert_eq!(data, [&head[..], body].concat());
        }
    }

    #[test]
    fn corrupt_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        fs::write(dir.path().join("msg").join("BAD"), b"garbage").unwrap();
        let id = spool.new_id();
        spool.store(&id, &env(), b"x\r\n").unwrap();
        drop(spool);
        let (rec, corrupt) = Spool::open(dir.path()).unwrap().recover().unwrap();
        assert_eq!(rec.len(), 1);
        assert_eq!(corrupt.len(), 1);
        assert_eq!(corrupt[0].0, "BAD");
        assert!(dir.path().join("corrupt").join("BAD").exists());
    }
}
