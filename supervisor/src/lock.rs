//! The output-base lock: one Bazel server per output base, across pods.
//!
//! `/work/out` is the Bazel **output base** (`--output_base=/work/out`), bound from the
//! filestore's `R/<user>/<hash>/out`; every pod of the same repository mounts the same dir.
//! During a desktop bounce the new pod starts while the old pod of the same repository is
//! still stopping, on the same node and the same dirs. Two servers on one output base
//! corrupt it (the action cache, the execroot, `server/`), and the later one's pid file makes
//! the earlier one halt (Bazel's pid-file watcher, exit 37) in the middle of whatever it does.
//!
//! Bazel's own `<output_base>/lock` does not prevent that. The Bazel *client* takes it (an
//! fcntl lock) only while a command runs, or while it starts a server; the *server* holds
//! nothing. An idle server, which is what a pod's server is most of the time, leaves the
//! output base unlocked, and a client in another pod (another pid namespace, another
//! loopback) cannot reach that server through `server/command_port`, so it starts a second
//! one. Only something held for the whole life of the server can exclude the second.
//!
//! So the supervisor holds an exclusive `flock(2)` on [`LOCK_FILE`] (`<out>/jbazel/server.lock`,
//! beside the files it publishes for jbazel) from before it starts a server until that server
//! is gone (shutdown, or the idle exit), never shorter. The lock belongs to the open file
//! description, which is close-on-exec: neither the Bazel client nor the server inherits it,
//! so it is released exactly when the supervisor lets go or dies. The supervisor is PID 1 of
//! its container, so its death also kills the server: the kernel closes PID 1's files (and
//! so releases the lock) a moment before it SIGKILLs the rest of the pid namespace, while a
//! waiting supervisor polls every 200 ms and then needs seconds to start a server.
//!
//! `clean --expunge` (or a user's `rm -rf`) can delete the lock file under a holder. A lock on
//! an unlinked file excludes nobody, so [`OutputBaseLock::try_acquire`] only counts a lock
//! whose file is still the one at the path, and the supervisor checks
//! [`OutputBaseLock::still_held`] before every (re)start and takes the lock again when the
//! file was replaced. On NFS the kernel emulates `flock` with a whole-file POSIX lock, which
//! needs a file opened for writing: it is opened read-write.
//!
//! The holder writes `pod=<name> pid=<pid>` into the file, so a waiting supervisor can say
//! whom it waits for.

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// The lock file, relative to the output base.
pub const LOCK_FILE: &str = "jbazel/server.lock";

/// Why the lock could not be tried. Each names the path.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot create the lock's directory {path:?}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open the output-base lock {path:?}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot lock {path:?}")]
    Flock { path: PathBuf, source: nix::Error },
}

/// An exclusive flock on `<out>/jbazel/server.lock`; released on drop.
#[derive(Debug)]
pub struct OutputBaseLock {
    path: PathBuf,
    held: Flock<File>,
}

/// (device, inode) of a file: the identity of the lock file.
fn identity(m: &std::fs::Metadata) -> (u64, u64) {
    (m.dev(), m.ino())
}

impl OutputBaseLock {
    /// The lock file of an output base.
    pub fn path_in(out: &Path) -> PathBuf {
        out.join(LOCK_FILE)
    }

    /// Takes the lock if nobody holds it: Ok(None) while another holder has it. Never blocks.
    /// `holder` is written into the file for whoever waits next.
    pub fn try_acquire(out: &Path, holder: &str) -> Result<Option<OutputBaseLock>, LockError> {
        let path = Self::path_in(out);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| LockError::Dir {
                path: dir.to_owned(),
                source,
            })?;
        }
        // A file unlinked between open and flock would be locked in vain: retry a few times
        // (each retry means someone deleted the file just now; it does not spin).
        for _ in 0..3 {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o644)
                .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
                .open(&path)
                .map_err(|source| LockError::Open {
                    path: path.clone(),
                    source,
                })?;
            let mut held = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                Ok(l) => l,
                Err((_, nix::Error::EWOULDBLOCK)) => return Ok(None),
                Err((_, source)) => {
                    return Err(LockError::Flock {
                        path: path.clone(),
                        source,
                    })
                }
            };
            let same = match (held.metadata(), std::fs::symlink_metadata(&path)) {
                (Ok(fd), Ok(at_path)) => identity(&fd) == identity(&at_path),
                _ => false,
            };
            if !same {
                continue;
            }
            // Best effort: the note is for people and logs, the lock is the flock.
            let note = format!("{holder}\n");
            let _ = held
                .set_len(0)
                .and_then(|()| held.rewind())
                .and_then(|()| held.write_all(note.as_bytes()));
            return Ok(Some(OutputBaseLock { path, held }));
        }
        Ok(None)
    }

    /// Is the lock still worth something: the file at the path is the one locked? False
    /// after `clean --expunge` or `rm -rf` removed or replaced it.
    pub fn still_held(&self) -> bool {
        // While the descriptor is open its inode stays allocated, so the number cannot be
        // reused by a new file at the path; a link count of 0 says "unlinked" outright.
        match (self.held.metadata(), std::fs::symlink_metadata(&self.path)) {
            (Ok(fd), Ok(at_path)) => fd.nlink() > 0 && identity(&fd) == identity(&at_path),
            _ => false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Who holds the lock of `out`, as the holder wrote it (for logs; empty when unknown).
pub fn holder_note(out: &Path) -> String {
    let mut s = String::new();
    if let Ok(f) = File::open(OutputBaseLock::path_in(out)) {
        let _ = f.take(256).read_to_string(&mut s);
    }
    s.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_until_dropped() {
        let t = tempfile::tempdir().expect("tempdir");
        let a = OutputBaseLock::try_acquire(t.path(), "pod=a pid=1")
            .expect("try")
            .expect("free: acquired");
        assert!(a.still_held());
        assert_eq!(holder_note(t.path()), "pod=a pid=1");
        // Another open file description (as another supervisor's) is refused.
        assert!(OutputBaseLock::try_acquire(t.path(), "pod=b pid=2")
            .expect("try")
            .is_none());
        assert_eq!(
            holder_note(t.path()),
            "pod=a pid=1",
            "the waiter writes nothing"
        );
        drop(a);
        let b = OutputBaseLock::try_acquire(t.path(), "pod=b pid=2")
            .expect("try")
            .expect("released: acquired");
        assert_eq!(holder_note(t.path()), "pod=b pid=2");
        assert_eq!(b.path(), t.path().join(LOCK_FILE));
    }

    #[test]
    fn a_deleted_lock_file_is_no_longer_held() {
        let t = tempfile::tempdir().expect("tempdir");
        let a = OutputBaseLock::try_acquire(t.path(), "a")
            .expect("try")
            .expect("acquired");
        // `clean --expunge` empties the output base under a live holder.
        std::fs::remove_dir_all(t.path().join("jbazel")).expect("rm");
        assert!(!a.still_held());
        // The next supervisor would get a lock on a new file: the old holder must notice.
        let b = OutputBaseLock::try_acquire(t.path(), "b")
            .expect("try")
            .expect("new file, free");
        assert!(b.still_held());
        assert!(!a.still_held());
    }

    #[test]
    fn names_the_path_when_it_cannot_lock() {
        let t = tempfile::tempdir().expect("tempdir");
        // `jbazel` is a file: the directory cannot be made.
        std::fs::write(t.path().join("jbazel"), "x").expect("write");
        let err = OutputBaseLock::try_acquire(t.path(), "a").expect_err("no dir");
        assert!(err.to_string().contains("jbazel"), "{err}");
    }
}
