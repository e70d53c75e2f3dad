//! `supervisor run -- CMD`: run CMD in the pivoted view with all PID-1 duties, synchronously.
//!
//! A classic init loop, no async runtime: signal handlers write the signal number into a
//! self-pipe, and the loop reads it. SIGCHLD -> reap every exited child (the command and any
//! orphan re-parented to us); SIGTERM, SIGINT, SIGHUP, SIGQUIT -> forwarded to the command.
//! The supervisor exits with the command's status (128+signal when it was killed).
//!
//! Handlers, not a blocked mask + sigwait: a spawned child inherits the signal mask (std no
//! longer resets it), while handled signals fall back to their defaults across exec.

use proto::error_chain::ErrorChain;
use std::io::Read as _;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::fcntl::OFlag;
use nix::sys::signal::{kill, sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::unistd::Pid;

use crate::pivot;
use crate::plan::{Mode, MountPlan};
use crate::reaper::{self, ExitInfo};

/// The signals forwarded to the command.
pub const FORWARDED: [Signal; 4] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Write end of the self-pipe, for the handler.
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    // Async-signal-safe: one write(2) on a non-blocking pipe; errno preserved.
    // SAFETY: errno location is thread-local and valid; the fd is the pipe's write end.
    unsafe {
        let saved = *libc::__errno_location();
        let byte = sig as u8;
        let _ = libc::write(
            SIGNAL_PIPE.load(Ordering::Relaxed),
            std::ptr::addr_of!(byte).cast(),
            1,
        );
        *libc::__errno_location() = saved;
    }
}

/// Installs the handlers; returns the pipe's read end (its write end lives for the process).
fn install_handlers() -> std::io::Result<OwnedFd> {
    let (read, write) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    nix::fcntl::fcntl(&write, nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK))?;
    SIGNAL_PIPE.store(write.as_raw_fd(), Ordering::Relaxed);
    std::mem::forget(write);
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::SA_RESTART | SaFlags::SA_NOCLDSTOP,
        SigSet::empty(),
    );
    for sig in FORWARDED.iter().chain([Signal::SIGCHLD].iter()) {
        // SAFETY: the handler only calls async-signal-safe functions.
        unsafe { sigaction(*sig, &action) }?;
    }
    Ok(read)
}

/// Runs the command; returns the exit code (127/126 when it cannot be started).
pub fn run_command(plan: &MountPlan) -> i32 {
    // Before the spawn, so a signal that arrives early is not lost.
    let mut signals = match install_handlers() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "cannot install signal handlers");
            return 1;
        }
    };
    if let Err(e) = reaper::become_subreaper() {
        tracing::error!(error = %ErrorChain(&e), "cannot become the child subreaper");
        return 1;
    }
    let mut cmd = pivot::command_in_view(plan, &plan.command);
    let info = if plan.mode.mode == Mode::Bwrap {
        match pivot::add_bwrap_info_fd(&mut cmd) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "cannot create bwrap's info pipe");
                return 1;
            }
        }
    } else {
        None
    };
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(command = ?plan.command, error = %ErrorChain(&e), "cannot start the command");
            eprintln!("supervisor: cannot start {:?}: {e}", plan.command[0]);
            return if e.kind() == std::io::ErrorKind::NotFound {
                127
            } else {
                126
            };
        }
    };
    drop(cmd);
    let Ok(pid) = i32::try_from(child.id()) else {
        return 1;
    };
    // The reaper below owns waitpid; `Child` is dropped without waiting.
    drop(child);
    // Signals go to the command itself; under bwrap that is bwrap's child.
    let target = info.and_then(|i| i.child_pid()).unwrap_or(pid);
    tracing::info!(pid, signal_target = target, command = ?plan.command, "command started");

    let mut orphans = 0u64;
    let mut byte = [0u8; 1];
    let status = loop {
        let sig = match signals.read(&mut byte) {
            Ok(1) => Signal::try_from(i32::from(byte[0])).unwrap_or(Signal::SIGCHLD),
            Ok(_) => break None,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %ErrorChain(&e), "reading the signal pipe failed");
                break None;
            }
        };
        if sig != Signal::SIGCHLD {
            tracing::info!(pid = target, signal = %sig, "forwarding signal");
            if let Err(e) = kill(Pid::from_raw(target), sig) {
                tracing::warn!(pid = target, signal = %sig, error = %ErrorChain(&e), "forwarding failed");
            }
            continue;
        }
        // One SIGCHLD may stand for many exits.
        let mut mine = None;
        while let Some((p, info)) = reaper::reap_one() {
            if p == pid {
                mine = Some(info);
            } else {
                orphans += 1;
                tracing::debug!(pid = p, ?info, "reaped an orphan");
            }
        }
        if mine.is_some() {
            break mine;
        }
    };
    let code = status.map_or(1, ExitInfo::exit_code);
    tracing::info!(
        exit_code = code,
        ?status,
        orphans_reaped = orphans,
        "command exited"
    );
    code
}
