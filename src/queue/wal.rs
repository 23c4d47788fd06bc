//! The spool's write-ahead log: how a message is made durable before its 250 with one
//! shared `fdatasync` instead of two journal commits of its own.
//!
//! **Why.** A message file made durable on its own costs the file's fsync, a rename and the
//! directory's fsync: two ext4 journal commits in a row, each two cache flushes on a virtual
//! disk, plus inode allocation. The profile of the fixed-rate benchmark put the median
//! end-of-DATA → 250 time at 1.2–1.5 ms, nearly all of it waiting on those commits. An
//! overwrite in a file whose blocks already exist changes no metadata, so its `fdatasync` is
//! one data write and one flush (0.12 ms against 0.67 ms on the benchmark machine), and one
//! such sync covers every message appended while the previous one ran.
//!
//! **What.** `wal/` holds segment files of [`SEGMENT_BYTES`]. A store hands the complete
//! message file (envelope and data) to the log's writer thread ([`writer`]), which appends
//! the records of every store queued meanwhile to the active segment, covers them with one
//! `fdatasync`, and answers each: group commit, the batch being whatever arrived while the
//! previous sync ran. The message is then *resident*: queued, with its record as its only
//! copy on disk, and read from there by the delivery ([`Wal::read`]). It gets a file in
//! `msg/` only if it is still queued when it is deferred (the spool writes it) or when its
//! segment is checkpointed: a message delivered at once never touches `msg/` (creating and
//! unlinking a file per message was a fifth of the relay's CPU: ext4 inode allocation). A
//! removal appends a small `Done` record (written, not synced) before any unlink, so a
//! restart after kill -9 does not bring a delivered message back.
//!
//! **Checkpoint.** When a segment fills, the next one (a recycled *spare*, whose blocks
//! exist, or a new file) becomes active, and a background thread retires the full one a
//! second later ([`RETIRE_AFTER`]): it writes and fsyncs the file of every message of that
//! segment still queued (usually none: a relay delivers in milliseconds), fsyncs `msg/`,
//! and only then invalidates the segment's first record and keeps the file as a spare.
//! Segments retire oldest first, so a `Done` record is never dropped while the store it
//! cancels can still be replayed. A graceful stop checkpoints every segment
//! ([`Wal::checkpoint_all`]): a stopped relay's spool is plain files.
//!
//! **Records** are `[magic u32][kind u8][0u8; 3][len u32][crc u32][seq u64][payload]`,
//! little-endian. `seq` numbers segments (it starts from the clock, so it also grows across
//! restarts), and each record's CRC-32 is chained from the previous record's, so the
//! leftovers of a recycled segment's earlier life can never pass for records of its new one:
//! reading stops at the first record that does not continue the chain.
//!
//! **Recovery** ([`Wal::replay`]) reads the segments in `seq` order; the spool rewrites and
//! fsyncs the message file of every store without a later `Done`, deletes the files of the
//! `Done` ones, and then [`Wal::retire_replayed`] turns those segments into spares.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::oneshot;

/// Size of a segment file. 16 MB holds about 3,500 messages of 4 KB.
pub const SEGMENT_BYTES: u64 = 16 << 20;
/// Messages larger than this bypass the log (their file is fsynced on its own): a segment
/// must always have room for several records.
pub const MAX_PAYLOAD: usize = 1 << 20;
/// How long after it closed a segment is retired (unless a spare is needed sooner): by
/// then the messages stored in it have usually been delivered, so its checkpoint has no
/// message file to write (a checkpoint right at the switch wrote and fsynced the files of
/// the last messages in flight, whose removals a moment later stalled the next commits).
const RETIRE_AFTER: Duration = Duration::from_secs(1);
/// Retired segments kept for reuse; more are deleted.
const MAX_SPARES: usize = 2;
const MAGIC: u32 = u32::from_le_bytes(*b"CRW1");
const HEADER: usize = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Store = 1,
    Done = 2,
}

/// What the log holds for a restart, oldest first.
#[derive(Debug, Default)]
pub struct Replay {
    /// (queue id, the complete message file) of every store in the log.
    pub stored: Vec<(String, Vec<u8>)>,
    /// Queue ids with a `Done` record: finished and removed (or being removed).
    pub done: HashSet<String>,
}

/// Where a store record is: enough to read it back and check it is still that record.
#[derive(Debug, Clone)]
struct Loc {
    seq: u64,
    file: Arc<File>,
    offset: u64,
    len: usize,
    /// The CRC chain value before the record.
    chain: u32,
}

#[derive(Debug)]
pub struct Wal {
    shared: Arc<Shared>,
    /// To the writer thread (see [`writer`]).
    writer: mpsc::Sender<Req>,
}

/// A store for the writer thread: the record, and where to say that it is on disk.
#[derive(Debug)]
struct Req {
    id: String,
    content: Vec<u8>,
    done: Reply,
}

/// Where the writer answers a store: an async caller or a blocking one.
#[derive(Debug)]
enum Reply {
    Async(oneshot::Sender<io::Result<()>>),
    Blocking(mpsc::SyncSender<io::Result<()>>),
}

impl Reply {
    fn send(self, result: io::Result<()>) {
        let _ = match self {
            Reply::Async(tx) => tx.send(result).map_err(|_| ()),
            Reply::Blocking(tx) => tx.send(result).map_err(|_| ()),
        };
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    msg_dir: PathBuf,
    tmp_dir: PathBuf,
    segment_bytes: u64,
    state: Mutex<State>,
    /// Wakes the checkpointer: a segment to retire, a store finished, or shutdown.
    work: Condvar,
    retiring: Mutex<()>,
}

#[derive(Debug)]
struct State {
    active: Option<Active>,
    next_seq: u64,
    next_name: u64,
    /// Segments written by this process and not yet retired (the active one included).
    live: BTreeMap<u64, Live>,
    /// Full segments waiting for the checkpointer, oldest first, with when they closed.
    retire: VecDeque<(u64, Instant)>,
    /// Segments found at start-up with records in them: replayed by the spool's recovery.
    found: Vec<(u64, PathBuf)>,
    spares: Vec<PathBuf>,
    /// Closed segments that may hold records no sync has covered yet.
    unsynced: Vec<Arc<File>>,
    /// Messages whose only durable copy is their record: queued, no `Done` yet, and their
    /// segment not yet retired.
    resident: HashMap<String, Loc>,
    checkpointer: bool,
    stop: bool,
}

impl State {
    /// No spare, and the active segment is past half full: one should be ready in time.
    fn needs_spare(&self) -> bool {
        self.spares.is_empty() && self.active.as_ref().is_some_and(|a| a.offset * 2 >= a.cap)
    }
}

#[derive(Debug)]
struct Active {
    seq: u64,
    file: Arc<File>,
    offset: u64,
    cap: u64,
    chain: u32,
}

#[derive(Debug)]
struct Live {
    path: PathBuf,
    file: Arc<File>,
    /// Messages stored through this segment whose file is in `msg/`.
    ids: Vec<String>,
    /// Stores appended here whose message file is not yet in place (or abandoned).
    in_flight: usize,
}

impl Wal {
    /// Opens `dir` (creating it), finding the segments a previous run left: those with
    /// records wait for [`Wal::replay`], empty ones become spares.
    /// `msg_dir` and `tmp_dir` are the spool's: where checkpoints write message files.
    pub fn open(dir: &Path, msg_dir: &Path, tmp_dir: &Path) -> io::Result<Wal> {
        Wal::open_with(dir, msg_dir, tmp_dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with another segment size for new segments (tests).
    fn open_with(
        dir: &Path,
        msg_dir: &Path,
        tmp_dir: &Path,
        segment_bytes: u64,
    ) -> io::Result<Wal> {
        fs::create_dir_all(dir)?;
        let mut found = Vec::new();
        let mut spares = Vec::new();
        let mut next_name = 0;
        let mut max_seq = 0;
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            let Some(n) = segment_number(&path) else {
                continue;
            };
            next_name = next_name.max(n + 1);
            match first_seq(&path)? {
                Some(seq) => {
                    max_seq = max_seq.max(seq);
                    found.push((seq, path));
                }
                None => spares.push(path),
            }
        }
        found.sort();
        // Microseconds since the epoch: larger than any earlier run's numbers even when every
        // segment of that run was retired, unless the clock went back; `max_seq` covers that
        // as far as the segments on disk tell.
        let clock = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_micros() as u64;
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            msg_dir: msg_dir.to_path_buf(),
            tmp_dir: tmp_dir.to_path_buf(),
            segment_bytes,
            state: Mutex::new(State {
                active: None,
                next_seq: clock.max(max_seq + 1),
                next_name,
                live: BTreeMap::new(),
                retire: VecDeque::new(),
                found,
                spares,
                unsynced: Vec::new(),
                resident: HashMap::new(),
                checkpointer: false,
                stop: false,
            }),
            work: Condvar::new(),
            retiring: Mutex::new(()),
        });
        let (tx, rx) = mpsc::channel();
        let sh = shared.clone();
        std::thread::Builder::new()
            .name("spool-log".into())
            .spawn(move || writer(sh, rx))?;
        Ok(Wal { shared, writer: tx })
    }

    /// Stores a message: returns once its record (`id` and the complete message file) is
    /// on disk. The writer thread appends every store queued meanwhile and covers them with
    /// one `fdatasync`; then the message is *resident*: queued, its record its only copy on
    /// disk until it is finished or written to `msg/` ([`Wal::read`] reads it meanwhile).
    pub async fn store(&self, id: &str, content: Vec<u8>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.submit(id, content, Reply::Async(tx))?;
        rx.await.unwrap_or_else(|_| Err(writer_gone()))
    }

    /// [`Wal::store`] for a blocking caller.
    pub fn store_blocking(&self, id: &str, content: Vec<u8>) -> io::Result<()> {
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit(id, content, Reply::Blocking(tx))?;
        rx.recv().unwrap_or_else(|_| Err(writer_gone()))
    }

    fn submit(&self, id: &str, content: Vec<u8>, done: Reply) -> io::Result<()> {
        self.writer
            .send(Req {
                id: id.to_string(),
                content,
                done,
            })
            .map_err(|_| writer_gone())
    }

    /// The complete message file of a message that has its record in the log and no
    /// `Done`, read from the log; `None` otherwise (its file in `msg/` is the copy).
    pub fn read(&self, id: &str) -> io::Result<Option<Vec<u8>>> {
        let Some(loc) = self.shared.lock().resident.get(id).cloned() else {
            return Ok(None);
        };
        // The segment may have been retired and reused since the lookup (the message then
        // has its file in `msg/`): `None` unless the record is still this one.
        loc.read(id)
    }

    /// Records that a message is finished, before its file is removed. Written, not synced:
    /// a kill -9 cannot undo it; a power cut can (the message is then delivered again).
    pub fn done(&self, id: &str) -> io::Result<()> {
        self.shared.lock().resident.remove(id);
        self.shared.append(Kind::Done, id, &[]).map(|_| ())
    }

    /// Graceful stop: every queued message gets its file in `msg/` (fsynced) and every
    /// segment is retired, so the spool at rest is plain files.
    pub fn checkpoint_all(&self) -> io::Result<()> {
        let seqs: Vec<u64> = {
            let mut st = self.shared.lock();
            if let Some(a) = st.active.take() {
                st.unsynced.push(a.file);
                st.retire.push_back((a.seq, Instant::now()));
            }
            st.live.keys().copied().collect()
        };
        for seq in seqs {
            self.shared.retire_one(seq)?;
        }
        self.shared.lock().retire.clear();
        Ok(())
    }

    /// The records of the segments a previous run left, oldest first.
    pub fn replay(&self) -> io::Result<Replay> {
        let found = self.shared.lock().found.clone();
        let mut out = Replay::default();
        for (_, path) in found {
            let mut bytes = Vec::new();
            File::open(&path)?.read_to_end(&mut bytes)?;
            for (kind, payload) in records(&bytes) {
                let Some((id, rest)) = split_id(payload) else {
                    continue;
                };
                match kind {
                    Kind::Store => out.stored.push((id.to_string(), rest.to_vec())),
                    Kind::Done => {
                        out.done.insert(id.to_string());
                    }
                }
            }
        }
        Ok(out)
    }

    /// Called once the spool has made every replayed message durable on its own: the
    /// segments found at start-up are invalidated and become spares.
    pub fn retire_replayed(&self) -> io::Result<()> {
        let found = std::mem::take(&mut self.shared.lock().found);
        for (_, path) in found {
            let file = OpenOptions::new().write(true).open(&path)?;
            invalidate(&file)?;
            self.shared.keep_spare(path);
        }
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.work.notify_all();
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes one record into the active segment (switching segments when it is full);
    /// returns where it is.
    fn append(self: &Arc<Self>, kind: Kind, id: &str, data: &[u8]) -> io::Result<Loc> {
        let payload_len = 2 + id.len() + data.len();
        let len = (HEADER + payload_len) as u64;
        let mut st = self.lock();
        if st.active.as_ref().is_none_or(|a| a.offset + len > a.cap) {
            self.switch(&mut st)?;
        }
        let a = st
            .active
            .as_mut()
            .expect("a segment is active after a switch");
        let mut rec = Vec::with_capacity(len as usize);
        rec.extend_from_slice(&MAGIC.to_le_bytes());
        rec.extend_from_slice(&[kind as u8, 0, 0, 0]);
        rec.extend_from_slice(&(payload_len as u32).to_le_bytes());
        rec.extend_from_slice(&[0; 4]); // the CRC, below
        rec.extend_from_slice(&a.seq.to_le_bytes());
        rec.extend_from_slice(&(id.len() as u16).to_le_bytes());
        rec.extend_from_slice(id.as_bytes());
        rec.extend_from_slice(data);
        let crc = record_crc(a.chain, &rec);
        rec[12..16].copy_from_slice(&crc.to_le_bytes());
        if let Err(e) = a.file.write_all_at(&rec, a.offset) {
            // Whatever part of the record was written is given back (a full disk must not
            // stay full of a refused message). The next record overwrites it; until then it
            // cannot pass for a record (its CRC does not continue the chain).
            punch_hole(&a.file, a.offset, len);
            if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
                return Err(e);
            }
            // Any other error: the segment is not trusted with more records.
            let seq = a.seq;
            let file = a.file.clone();
            st.active = None;
            st.unsynced.push(file);
            st.retire.push_back((seq, Instant::now()));
            self.work.notify_all();
            return Err(e);
        }
        let half = a.cap / 2;
        let crossed_half = a.offset < half && a.offset + len >= half;
        let loc = Loc {
            seq: a.seq,
            file: a.file.clone(),
            offset: a.offset,
            len: len as usize,
            chain: a.chain,
        };
        a.offset += len;
        a.chain = crc;
        let seq = a.seq;
        if crossed_half && st.spares.is_empty() {
            // A switch is coming and will want a spare (see `checkpointer`).
            self.work.notify_all();
        }
        if kind == Kind::Store
            && let Some(l) = st.live.get_mut(&seq)
        {
            l.in_flight += 1;
        }
        Ok(loc)
    }

    /// Closes the active segment (the next commit syncs it too) and opens the next one.
    fn switch(self: &Arc<Self>, st: &mut State) -> io::Result<()> {
        if let Some(old) = st.active.take() {
            st.unsynced.push(old.file);
            st.retire.push_back((old.seq, Instant::now()));
            self.work.notify_all();
        }
        let (path, file) = match st.spares.pop() {
            Some(path) => {
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                (path, file)
            }
            None => {
                // Sparse: its syncs cost a journal commit each until the spare is ready.
                let path = self.new_segment_path(st);
                (path.clone(), self.create_segment(&path, false)?)
            }
        };
        let cap = file.metadata()?.len();
        let file = Arc::new(file);
        let seq = st.next_seq;
        st.next_seq += 1;
        st.live.insert(
            seq,
            Live {
                path,
                file: file.clone(),
                ids: Vec::new(),
                in_flight: 0,
            },
        );
        st.active = Some(Active {
            seq,
            file,
            offset: 0,
            cap,
            chain: 0,
        });
        if !st.checkpointer {
            st.checkpointer = true;
            let weak = Arc::downgrade(self);
            std::thread::Builder::new()
                .name("spool-checkpoint".into())
                .spawn(move || checkpointer(weak))?;
        }
        Ok(())
    }

    fn new_segment_path(&self, st: &mut State) -> PathBuf {
        let path = self.dir.join(format!("seg-{:06}", st.next_name));
        st.next_name += 1;
        path
    }

    /// A new segment file of [`SEGMENT_BYTES`], durable under its name. `fill` writes zeros
    /// over it, so that its blocks exist and a later overwrite changes no metadata (an
    /// `fdatasync` without a journal commit); otherwise it is sparse.
    fn create_segment(&self, path: &Path, fill: bool) -> io::Result<File> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        if fill {
            // In 1 MB steps, each synced, with a pause between: one 16 MB write-back held
            // the commits queued behind it for tens of milliseconds.
            let zeros = vec![0u8; (1 << 20).min(self.segment_bytes as usize)];
            let mut at = 0;
            while at < self.segment_bytes {
                file.write_all_at(&zeros, at)?;
                file.sync_data()?;
                at += zeros.len() as u64;
                std::thread::sleep(Duration::from_millis(5));
            }
        } else {
            file.set_len(self.segment_bytes)?;
        }
        // The segment's name must be on disk before a commit in it counts.
        file.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(file)
    }

    /// Makes sure a written-through spare is ready for the next switch. The checkpointer
    /// calls this once the active segment is half full and no spare is left, so a relay that
    /// stores little never writes one.
    fn prepare_spare(&self) -> io::Result<()> {
        let path = {
            let mut st = self.lock();
            if !st.needs_spare() || st.stop {
                return Ok(());
            }
            self.new_segment_path(&mut st)
        };
        if let Err(e) = self.create_segment(&path, true) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        self.lock().spares.push(path);
        Ok(())
    }

    /// The group commit's sync: every segment that may hold a record appended before it
    /// started (the active one, and those closed since the last successful sync).
    fn sync_active(&self) -> io::Result<()> {
        let files: Vec<Arc<File>> = {
            let st = self.lock();
            st.unsynced
                .iter()
                .chain(st.active.as_ref().map(|a| &a.file))
                .cloned()
                .collect()
        };
        for f in &files {
            f.sync_data()?;
        }
        self.lock()
            .unsynced
            .retain(|u| !files.iter().any(|f| Arc::ptr_eq(f, u)));
        Ok(())
    }

    fn finish(&self, seq: u64, id: Option<&str>) {
        let mut st = self.lock();
        let mut last = false;
        if let Some(l) = st.live.get_mut(&seq) {
            l.in_flight = l.in_flight.saturating_sub(1);
            last = l.in_flight == 0;
            if let Some(id) = id {
                l.ids.push(id.to_string());
            }
        }
        // Only a retirement waits for a segment's stores, and only for a closed segment:
        // waking the checkpointer for every message cost a context switch each.
        let closed = st.active.as_ref().is_none_or(|a| a.seq != seq);
        drop(st);
        if last && closed {
            self.work.notify_all();
        }
    }

    fn keep_spare(&self, path: PathBuf) {
        let mut st = self.lock();
        if st.spares.len() < MAX_SPARES {
            st.spares.push(path);
        } else {
            drop(st);
            let _ = fs::remove_file(path);
        }
    }

    /// Retires a full segment (the oldest): waits for its stores to finish, gives each of
    /// its messages still queued a durable file in `msg/` (written from the record, or the
    /// file a deferral already wrote, fsynced), fsyncs `msg/`, then invalidates the segment.
    fn retire_one(&self, seq: u64) -> io::Result<()> {
        // One retirement at a time (the checkpointer's, or a graceful stop's).
        let _one = self.retiring.lock().unwrap_or_else(|e| e.into_inner());
        let (path, file, ids) = {
            let mut st = self.lock();
            loop {
                match st.live.get(&seq) {
                    // Shutting down: the segment stays for the next start's replay.
                    Some(_) if st.stop => return Ok(()),
                    Some(l) if l.in_flight > 0 => {
                        st = self.work.wait(st).unwrap_or_else(|e| e.into_inner())
                    }
                    Some(l) => break (l.path.clone(), l.file.clone(), l.ids.clone()),
                    None => return Ok(()),
                }
            }
        };
        let mut written = Vec::new();
        for id in &ids {
            let Some(loc) = self.lock().resident.get(id).cloned() else {
                continue; // finished
            };
            let Some(content) = loc.read(id)? else {
                return Err(io::Error::other(format!("log record of {id} unreadable")));
            };
            let tmp = self.tmp_dir.join(format!("{id}.ckpt"));
            write_synced(&tmp, &content)?;
            fs::rename(&tmp, self.msg_dir.join(id))?;
            written.push(id);
        }
        if !written.is_empty() {
            File::open(&self.msg_dir)?.sync_all()?;
        }
        {
            let mut st = self.lock();
            for id in written {
                if st.resident.remove(id).is_none() {
                    // Finished while its file was being written: the file must go too.
                    let _ = fs::remove_file(self.msg_dir.join(id));
                }
            }
        }
        invalidate(&file)?;
        self.lock().live.remove(&seq);
        self.keep_spare(path);
        Ok(())
    }
}

impl Loc {
    /// The message file stored by the record at this place, if it is still the store
    /// record of `id` (its CRC continuing the chain it was written in).
    fn read(&self, id: &str) -> io::Result<Option<Vec<u8>>> {
        let mut rec = vec![0u8; self.len];
        self.file.read_exact_at(&mut rec, self.offset)?;
        Ok(match records_from(&rec, self.chain).next() {
            Some((Kind::Store, payload)) => match split_id(payload) {
                Some((rid, content)) if rid == id => Some(content.to_vec()),
                _ => None,
            },
            _ => None,
        })
    }
}

/// Writes a file and fsyncs it.
pub fn write_synced(path: &Path, content: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    std::io::Write::write_all(&mut f, content)?;
    f.sync_all()
}

fn writer_gone() -> io::Error {
    io::Error::other("the spool log writer has stopped")
}

/// The same error again (an `io::Error` cannot be cloned), for every store of a batch.
fn same_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(code) => io::Error::from_raw_os_error(code),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

/// The writer thread: takes every store queued, appends their records, covers them with
/// one sync, and answers each. While it syncs, new stores queue up and form the next batch
/// (group commit without a waiting thread per message: the profile of the thread-per-store
/// version spent a third of the relay's CPU in context switches). Ends when the log is
/// dropped.
fn writer(sh: Arc<Shared>, rx: mpsc::Receiver<Req>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        batch.extend(rx.try_iter());
        let appended: Vec<(Req, io::Result<Loc>)> = batch
            .into_iter()
            .map(|r| {
                let loc = sh.append(Kind::Store, &r.id, &r.content);
                (r, loc)
            })
            .collect();
        let synced = sh.sync_active();
        for (r, loc) in appended {
            let result = match (loc, &synced) {
                (Ok(loc), Ok(())) => {
                    let seq = loc.seq;
                    sh.lock().resident.insert(r.id.clone(), loc);
                    sh.finish(seq, Some(&r.id));
                    Ok(())
                }
                (Ok(loc), Err(e)) => {
                    // Refused with a temporary error: a `Done`, so no replay delivers it.
                    let _ = sh.append(Kind::Done, &r.id, &[]);
                    sh.finish(loc.seq, None);
                    Err(same_error(e))
                }
                (Err(e), _) => Err(e),
            };
            r.done.send(result);
        }
    }
}

enum Job {
    Retire(u64),
    Prepare,
}

/// The background thread that retires full segments (each becomes the next spare) once
/// they are [`RETIRE_AFTER`] old, or at once when a spare is needed; when there is
/// nothing to retire and no spare, it prepares one. Ends with the log.
fn checkpointer(weak: Weak<Shared>) {
    loop {
        let Some(sh) = weak.upgrade() else {
            return;
        };
        let job = {
            let mut st = sh.lock();
            loop {
                if st.stop {
                    return;
                }
                let due = st
                    .retire
                    .front()
                    .map(|&(seq, closed)| (seq, closed + RETIRE_AFTER));
                match due {
                    Some((seq, at)) if at <= Instant::now() || st.needs_spare() => {
                        break Job::Retire(seq);
                    }
                    None if st.needs_spare() => break Job::Prepare,
                    _ => {}
                }
                // Wakes at the next due time, and now and then to notice that the log was
                // dropped.
                let wait = due.map_or(Duration::from_secs(1), |(_, at)| {
                    at.saturating_duration_since(Instant::now())
                        .min(Duration::from_secs(1))
                });
                st = sh
                    .work
                    .wait_timeout(st, wait)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
                if Arc::strong_count(&sh) == 1 {
                    return;
                }
            }
        };
        let result = match job {
            Job::Retire(seq) => sh.retire_one(seq).map(|()| {
                sh.lock().retire.retain(|&(s, _)| s != seq);
            }),
            // Only when retiring has not produced one (the first segments, or a backlog).
            Job::Prepare => sh.prepare_spare(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "spool log checkpoint failed; retrying in 1 s");
            drop(sh);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// Frees the blocks of a byte range of a segment (best effort).
fn punch_hole(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        );
    }
}

/// Zeroes a segment's first record header, so the segment reads as empty, and syncs it.
fn invalidate(file: &File) -> io::Result<()> {
    file.write_all_at(&[0; HEADER], 0)?;
    file.sync_data()
}

fn segment_number(path: &Path) -> Option<u64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("seg-")?
        .parse()
        .ok()
}

/// The `seq` of a segment's first valid record, or `None` for an empty (spare) segment.
fn first_seq(path: &Path) -> io::Result<Option<u64>> {
    let file = File::open(path)?;
    let mut head = [0u8; HEADER];
    if file.read_at(&mut head, 0)? < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes(head[8..12].try_into().unwrap()) as usize;
    let mut rec = vec![0u8; HEADER + len.min(MAX_PAYLOAD + 1024)];
    let n = file.read_at(&mut rec, 0)?;
    Ok(records(&rec[..n])
        .next()
        .map(|_| u64::from_le_bytes(head[16..24].try_into().unwrap())))
}

fn record_crc(chain: u32, rec: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(chain);
    h.update(&rec[..12]);
    h.update(&rec[16..]);
    h.finalize()
}

/// The valid records at the start of a segment's bytes.
fn records(bytes: &[u8]) -> impl Iterator<Item = (Kind, &[u8])> {
    records_from(bytes, 0)
}

/// The valid records at the start of `bytes`, the CRC chain starting at `chain`.
fn records_from(bytes: &[u8], chain: u32) -> impl Iterator<Item = (Kind, &[u8])> {
    let mut offset = 0;
    let mut chain = chain;
    let mut seq = None;
    std::iter::from_fn(move || {
        let head = bytes.get(offset..offset + HEADER)?;
        let word = |i: usize| u32::from_le_bytes(head[i..i + 4].try_into().unwrap());
        if word(0) != MAGIC {
            return None;
        }
        let kind = match head[4] {
            1 => Kind::Store,
            2 => Kind::Done,
            _ => return None,
        };
        let len = word(8) as usize;
        let rec_seq = u64::from_le_bytes(head[16..24].try_into().unwrap());
        if seq.is_some_and(|s| s != rec_seq) {
            return None;
        }
        let rec = bytes.get(offset..offset + HEADER + len)?;
        let crc = record_crc(chain, rec);
        if crc != word(12) {
            return None;
        }
        seq = Some(rec_seq);
        chain = crc;
        offset += HEADER + len;
        Some((kind, &rec[HEADER..]))
    })
}

fn split_id(payload: &[u8]) -> Option<(&str, &[u8])> {
    let n = u16::from_le_bytes(payload.get(..2)?.try_into().ok()?) as usize;
    let id = std::str::from_utf8(payload.get(2..2 + n)?).ok()?;
    Some((id, &payload[2 + n..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs(root: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let d = |n| {
            let p = root.join(n);
            fs::create_dir_all(&p).unwrap();
            p
        };
        (d("wal"), d("msg"), d("tmp"))
    }

    fn stores(r: &Replay) -> Vec<&str> {
        r.stored.iter().map(|(id, _)| id.as_str()).collect()
    }

    fn store(wal: &Wal, id: &str, body: &[u8]) {
        wal.store_blocking(id, body.to_vec()).unwrap();
    }

    /// Records survive a restart in order; `Done` records are reported; a retired
    /// (invalidated) segment reused by the next run never replays its earlier life, even
    /// where its old records are still on disk behind the new ones.
    #[test]
    fn replay_then_recycle_never_replays_stale_records() {
        let dir = tempfile::tempdir().unwrap();
        let (wdir, msg, tmp) = dirs(dir.path());
        {
            let wal = Wal::open(&wdir, &msg, &tmp).unwrap();
            for id in ["A", "B", "C"] {
                store(&wal, id, format!("message {id}").as_bytes());
            }
            wal.done("B").unwrap();
        }
        let wal = Wal::open(&wdir, &msg, &tmp).unwrap();
        let r = wal.replay().unwrap();
        assert_eq!(stores(&r), ["A", "B", "C"]);
        assert_eq!(r.stored[0].1, b"message A");
        assert!(r.done.contains("B") && r.done.len() == 1);
        wal.retire_replayed().unwrap();
        // The spare is reused: one short record overwrites the start of the old ones.
        store(&wal, "D", b"d");
        drop(wal);
        let wal = Wal::open(&wdir, &msg, &tmp).unwrap();
        let r = wal.replay().unwrap();
        assert_eq!(stores(&r), ["D"]);
        assert!(r.done.is_empty());
        assert_eq!(
            fs::read_dir(&wdir).unwrap().count(),
            1,
            "one segment file, reused"
        );
        assert!(r.done.is_empty());
    }

    /// A torn or corrupted record ends the segment: what precedes it is replayed.
    #[test]
    fn a_damaged_record_ends_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        let (wdir, msg, tmp) = dirs(dir.path());
        {
            let wal = Wal::open(&wdir, &msg, &tmp).unwrap();
            store(&wal, "A", b"first");
            store(&wal, "B", b"second");
            store(&wal, "C", b"third");
        }
        let seg = fs::read_dir(&wdir).unwrap().next().unwrap().unwrap().path();
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        // Flip a byte of B's payload.
        let b_payload = (HEADER + 2 + 1 + 5) + HEADER + 2 + 1;
        f.write_all_at(b"X", b_payload as u64).unwrap();
        let r = Wal::open(&wdir, &msg, &tmp).unwrap().replay().unwrap();
        assert_eq!(stores(&r), ["A"]);
    }

    /// Full segments are retired in the background: their message files still in `msg/` are
    /// fsynced and the segment becomes a spare, so only the active segment replays.
    #[test]
    fn full_segments_are_checkpointed_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (wdir, msg, tmp) = dirs(dir.path());
        let body = vec![b'x'; 10_000];
        let wal = Wal::open_with(&wdir, &msg, &tmp, 64 * 1024).unwrap();
        let ids: Vec<String> = (0..30).map(|i| format!("M{i:02}")).collect();
        for id in &ids {
            store(&wal, id, &body);
        }
        // Six records per segment: five switches. Wait (bounded) for the checkpointer.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while wal.shared.lock().live.len() > 1 || !wal.shared.lock().retire.is_empty() {
            assert!(std::time::Instant::now() < deadline, "segments not retired");
            std::thread::sleep(Duration::from_millis(20));
        }
        let files = fs::read_dir(&wdir).unwrap().count();
        assert!(files <= 1 + MAX_SPARES, "{files} segment files");
        drop(wal);
        let r = Wal::open(&wdir, &msg, &tmp).unwrap().replay().unwrap();
        let replayed = stores(&r);
        assert!(!replayed.is_empty() && replayed.len() <= 6, "{replayed:?}");
        assert_eq!(replayed.last().copied(), Some("M29"));
    }
}
