//! A spool belongs to one relay at a time, and a node that is gone for good can hand its
//! spool to another.
//!
//! **The lock.** A relay holds `SpoolDir/lock` (an exclusive `flock`, with its pid and host
//! written in the file for people) from start to exit; the kernel releases it when the
//! process dies, however it dies. A second relay on the same spool refuses to start, and
//! [`adopt`] refuses a spool that a live process holds.
//!
//! **Adoption** (`connector-relay queue adopt --from DIR`, `POST /api/queue/adopt`): the
//! running relay locks the old spool, recovers it as its own restart would (its
//! write-ahead log replayed into plain files), and moves its messages in one at a time:
//! each is copied durably into this spool with its recipients' progress
//! ([`Spool::copy_in`]), then removed from the old one ([`Spool::discard`]), then queued
//! here. A run interrupted anywhere leaves every message in at least one of the two
//! spools; run again, it finds the ones already copied (same queue id: ids are unique
//! across nodes) and only removes them from the old spool, so nothing is queued twice.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::spool::{RcptState, Recovered, Spool};

/// The lock file in a spool directory.
pub const LOCK_FILE: &str = "lock";

/// The spool lock, held while this value lives.
#[derive(Debug)]
pub struct SpoolLock {
    _file: File,
}

impl SpoolLock {
    /// Takes the lock of the spool at `root` (creating the directory and the file). A
    /// spool held by a live process is an error of kind `WouldBlock` naming the holder.
    pub fn acquire(root: &Path) -> io::Result<SpoolLock> {
        std::fs::create_dir_all(root)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join(LOCK_FILE))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(e);
            }
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "{} is in use by a running relay ({})",
                    root.display(),
                    holder.trim()
                ),
            ));
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(
            file,
            "pid {} on {}",
            std::process::id(),
            crate::config::machine_host_name()
        )?;
        Ok(SpoolLock { _file: file })
    }
}

/// What an adoption did.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Adoption {
    /// The old spool.
    pub from: PathBuf,
    /// Queue ids moved into this spool and queued here.
    pub adopted: Vec<String>,
    /// Queue ids already in this spool (a run interrupted after their copy): removed from
    /// the old spool only.
    pub already_here: Vec<String>,
    /// Messages whose recipients were all final (their removal was cut short): removed.
    pub finished: Vec<String>,
    /// Files of the old spool its recovery could not read (moved to its `corrupt/`):
    /// queue id and why.
    pub corrupt: Vec<(String, String)>,
}

/// Why an adoption did not start (nothing was moved).
#[derive(Debug, thiserror::Error)]
pub enum AdoptError {
    /// A live process holds the old spool: it is not dead.
    #[error("{0}")]
    Busy(String),
    /// Not a spool, or this relay's own.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(String),
}

/// Moves the messages of the spool at `from` into `into` (see the module documentation).
/// Blocking. Answers the report and the messages to queue here.
pub fn adopt(from: &Path, into: &Spool) -> Result<(Adoption, Vec<Recovered>), AdoptError> {
    let io = |what: &str, e: io::Error| AdoptError::Io(format!("{}: {what}: {e}", from.display()));
    check_spool_dir(from, into.root())?;
    let _lock = SpoolLock::acquire(from).map_err(|e| match e.kind() {
        io::ErrorKind::WouldBlock => AdoptError::Busy(e.to_string()),
        _ => io("cannot lock", e),
    })?;
    let old = Spool::open(from).map_err(|e| io("cannot open", e))?;
    let (recovered, corrupt) = old.recover().map_err(|e| io("cannot recover", e))?;
    let mut report = Adoption {
        from: from.to_path_buf(),
        corrupt,
        ..Adoption::default()
    };
    let mut queued = Vec::new();
    for r in recovered {
        let id = r.id.clone();
        if !r.states.contains(&RcptState::Pending) {
            report.finished.push(id.clone());
        } else if into.holds(&id).map_err(|e| io(&id, e))? {
            report.already_here.push(id.clone());
        } else {
            into.copy_in(&old, &id).map_err(|e| io(&id, e))?;
            report.adopted.push(id.clone());
            queued.push(r);
        }
        old.discard(&id).map_err(|e| io(&id, e))?;
    }
    Ok((report, queued))
}

/// Refuses what cannot be a dead node's spool: a directory without `msg/`, or this
/// relay's own spool.
fn check_spool_dir(from: &Path, own: &Path) -> Result<(), AdoptError> {
    if !from.join("msg").is_dir() {
        return Err(AdoptError::Refused(format!(
            "{} is not a spool directory (it has no msg/)",
            from.display()
        )));
    }
    let same = match (from.canonicalize(), own.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(AdoptError::Refused(format!(
            "{} is this relay's own spool",
            from.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::spool::{Envelope, LogRecord};

    fn envelope(rcpts: &[&str]) -> Envelope {
        Envelope {
            mail_from: "app@contoso.test".into(),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            arrived: 1_795_766_400,
            inbound_connector: None,
            from_outside_org: false,
            smtputf8: false,
            requiretls: false,
        }
    }

    #[test]
    fn a_held_spool_is_refused_and_released_with_its_holder() {
        let dir = tempfile::tempdir().unwrap();
        let lock = SpoolLock::acquire(dir.path()).unwrap();
        let e = SpoolLock::acquire(dir.path()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(
            e.to_string()
                .contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(lock);
        SpoolLock::acquire(dir.path()).unwrap();
    }

    /// Messages move with their recipients' progress (a delivered recipient stays
    /// delivered); a second run finds nothing; a run cut short after the copy does not
    /// queue the message twice.
    #[test]
    fn adoption_moves_each_message_once() {
        let tmp = tempfile::tempdir().unwrap();
        let (old_dir, new_dir) = (tmp.path().join("old"), tmp.path().join("new"));
        let old = Spool::open(&old_dir).unwrap();
        let env = envelope(&["a@contoso.test", "b@contoso.test"]);
        old.store("M1", &env, b"Subject: one\r\n\r\nbody\r\n")
            .unwrap();
        old.store(
            "M2",
            &envelope(&["c@contoso.test"]),
            b"Subject: two\r\n\r\n",
        )
        .unwrap();
        let done = LogRecord::Delivered {
            rcpt: 0,
            detail: "250 ok".into(),
        };
        old.append_log("M1", &[done]).unwrap();
        drop(old); // a crash: M2 is only in the write-ahead log

        let new = Spool::open(&new_dir).unwrap();
        // A copy that a cut-short run already made.
        let half = Spool::open(&old_dir).unwrap();
        half.recover().unwrap();
        new.copy_in(&half, "M2").unwrap();
        drop(half);

        let (report, queued) = adopt(&old_dir, &new).unwrap();
        assert_eq!(report.adopted, ["M1"]);
        assert_eq!(report.already_here, ["M2"]);
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].states, [RcptState::Delivered, RcptState::Pending]);
        let (env1, data1) = new.read("M1").unwrap();
        assert_eq!(env1, env);
        assert_eq!(data1, b"Subject: one\r\n\r\nbody\r\n");
        let (again, queued) = adopt(&old_dir, &new).unwrap();
        assert!(again.adopted.is_empty() && again.already_here.is_empty() && queued.is_empty());

        // This spool, after a restart, holds both with M1's progress.
        drop(new);
        let (mut back, _) = Spool::open(&new_dir).unwrap().recover().unwrap();
        back.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<_> = back.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["M1", "M2"]);
        assert_eq!(back[0].states[0], RcptState::Delivered);
    }

    #[test]
    fn a_live_spool_and_this_relays_own_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let own = Spool::open(&a).unwrap();
        Spool::open(&b).unwrap();
        let held = SpoolLock::acquire(&b).unwrap();
        assert!(matches!(adopt(&b, &own), Err(AdoptError::Busy(_))));
        drop(held);
        assert!(matches!(adopt(&a, &own), Err(AdoptError::Refused(_))));
        assert!(matches!(
            adopt(&tmp.path().join("nothing"), &own),
            Err(AdoptError::Refused(_))
        ));
    }
}
