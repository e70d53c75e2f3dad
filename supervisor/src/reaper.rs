//! PID-1 duty one: every child that exits is reaped, ours or an orphan re-parented to us.
//!
//! The reaper owns `waitpid(-1)`. Whoever wants a child's exit status registers its pid
//! ([`Reaper::spawn`], [`Reaper::watch`]) and gets it on a oneshot channel. Nothing else in
//! the process may wait for children (so no `tokio::process`, no `Child::wait`).

use std::collections::{HashMap, VecDeque};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
}

impl ExitInfo {
    /// The shell's convention: the code, or 128 + the signal number.
    pub fn exit_code(self) -> i32 {
        match self {
            ExitInfo::Code(c) => c,
            ExitInfo::Signal(s) => 128 + s,
        }
    }

    fn from_wait(status: WaitStatus) -> Option<(i32, ExitInfo)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), ExitInfo::Code(code))),
            WaitStatus::Signaled(pid, sig, _) => Some((pid.as_raw(), ExitInfo::Signal(sig as i32))),
            _ => None,
        }
    }
}

/// Orphans re-parented to us when we are not PID 1 (PID 1 gets them anyway).
pub fn become_subreaper() -> std::io::Result<()> {
    if nix::unistd::getpid().as_raw() != 1 {
        nix::sys::prctl::set_child_subreaper(true).map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Reaps one exited child, if any (never blocks).
pub fn reap_one() -> Option<(i32, ExitInfo)> {
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return None,
            Ok(status) => {
                if let Some(x) = ExitInfo::from_wait(status) {
                    return Some(x);
                }
                // Stopped/continued: not an exit; look further.
            }
        }
    }
}

/// Exits nobody had registered yet, kept briefly so a late [`Reaper::watch`] still sees them.
const UNCLAIMED_KEPT: usize = 256;

#[derive(Default)]
struct Inner {
    watchers: HashMap<i32, oneshot::Sender<ExitInfo>>,
    unclaimed: VecDeque<(i32, ExitInfo)>,
    orphans_reaped: u64,
}

/// Handle to the reaper task.
#[derive(Clone)]
pub struct Reaper {
    inner: Arc<Mutex<Inner>>,
}

impl Reaper {
    /// Becomes the child subreaper (unless PID 1 already) and starts reaping on SIGCHLD.
    /// Call inside the tokio runtime, before spawning anything.
    pub fn install() -> std::io::Result<Reaper> {
        become_subreaper()?;
        let mut sigchld = signal(SignalKind::child())?;
        let reaper = Reaper {
            inner: Arc::new(Mutex::new(Inner::default())),
        };
        let r = reaper.clone();
        tokio::spawn(async move {
            loop {
                // Signals coalesce: one SIGCHLD may stand for many exits, so reap them all.
                r.reap_all();
                if sigchld.recv().await.is_none() {
                    break;
                }
            }
        });
        Ok(reaper)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reaps every exited child now (the SIGCHLD task does this; callers may too).
    pub fn reap_all(&self) {
        while let Some((pid, info)) = reap_one() {
            let mut inner = self.lock();
            match inner.watchers.remove(&pid) {
                Some(tx) => {
                    tracing::debug!(pid, ?info, "child exited");
                    let _ = tx.send(info);
                }
                None => {
                    inner.orphans_reaped += 1;
                    tracing::debug!(pid, ?info, "reaped an orphan");
                    if inner.unclaimed.len() == UNCLAIMED_KEPT {
                        inner.unclaimed.pop_front();
                    }
                    inner.unclaimed.push_back((pid, info));
                }
            }
        }
    }

    /// Spawns `cmd` and registers it, so its exit status arrives on the receiver.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(i32, oneshot::Receiver<ExitInfo>)> {
        // Hold the lock across spawn: the child cannot be reaped before it is registered.
        let mut inner = self.lock();
        let child = cmd.spawn()?;
        let pid = i32::try_from(child.id()).map_err(std::io::Error::other)?;
        // Dropping `Child` neither waits nor kills; the reaper owns the exit status.
        drop(child);
        let (tx, rx) = oneshot::channel();
        inner.watchers.insert(pid, tx);
        Ok((pid, rx))
    }

    /// Registers interest in a process that is (or was) our child, e.g. the daemonized Bazel
    /// server re-parented to us.
    pub fn watch(&self, pid: i32) -> oneshot::Receiver<ExitInfo> {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.lock();
        if let Some(i) = inner.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, info)) = inner.unclaimed.remove(i) {
                inner.orphans_reaped = inner.orphans_reaped.saturating_sub(1);
                let _ = tx.send(info);
                return rx;
            }
        }
        inner.watchers.insert(pid, tx);
        rx
    }

    /// Forgets a registration (the receiver was dropped or is no longer wanted).
    pub fn unwatch(&self, pid: i32) {
        self.lock().watchers.remove(&pid);
    }

    /// How many processes nobody had registered were reaped (orphans re-parented to us).
    pub fn orphans_reaped(&self) -> u64 {
        self.lock().orphans_reaped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(ExitInfo::Code(0).exit_code(), 0);
        assert_eq!(ExitInfo::Code(7).exit_code(), 7);
        assert_eq!(ExitInfo::Signal(15).exit_code(), 143);
        assert_eq!(ExitInfo::Signal(9).exit_code(), 137);
    }

    #[test]
    fn from_wait_statuses() {
        let p = Pid::from_raw(42);
        assert_eq!(
            ExitInfo::from_wait(WaitStatus::Exited(p, 3)),
            Some((42, ExitInfo::Code(3)))
        );
        assert_eq!(
            ExitInfo::from_wait(WaitStatus::Signaled(
                p,
                nix::sys::signal::Signal::SIGKILL,
                false
            )),
            Some((42, ExitInfo::Signal(9)))
        );
        assert_eq!(ExitInfo::from_wait(WaitStatus::StillAlive), None);
    }
}
