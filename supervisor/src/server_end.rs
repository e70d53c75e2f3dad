//! Why a Bazel server ended when the supervisor did not stop it, and the files that say so.
//!
//! [`classify`] is the decision, pure: the exit status, how the server's java.log ends
//! ([`LogEnd`]), and the container's OOM-kill counter before and after. What Bazel 4.2.3
//! does, measured:
//!
//! - **Idle** (`--max_idle_secs` passed without a command; Ping counts as one): java.log says
//!   `About to shutdown due to idleness` ([`IDLE_LOG_LINE`]), the server deletes its
//!   `server/` files and exits 0 about 0.3 s later. The countdown has millisecond precision
//!   (the watcher wakes at the deadline), so any positive number of seconds works.
//! - A `shutdown` command, or `clean --expunge`: also exit 0, without the idle line.
//! - **Bazel's own out-of-memory exit**: the JVM's heap is full; the client prints "bazel ran
//!   out of memory and crashed" and java.log says `Cleaning up in crash:
//!   DetailedExitCode{exitCode=OOM_ERROR` ([`CRASH_LOG_LINE`]). Two endings, seen both: an
//!   OOM in a Skyframe thread halts the JVM with status 33 ([`BAZEL_OOM_EXIT`]) after writing
//!   `33` to `<output_base>/exit_code_to_use_on_abrupt_exit`; an OOM in the command's own
//!   thread (e.g. while a `query` loads a package) answers the command with exit code 33
//!   and then shuts the server down with status 0.
//! - **OOM kill**: the kernel kills the JVM with SIGKILL when the container's memory cgroup
//!   is full, and counts it in `oom_kill` ([`crate::cgroup::read_oom_kills`]). Bazel writes
//!   nothing then, so the supervisor writes `33` for it ([`write_abrupt_exit_code`]): the
//!   client of the command that was running reads that file to pick its exit code.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

use proto::mirror::ABRUPT_EXIT_FILE;

use crate::reaper::ExitInfo;

/// What Bazel logs (java.log) when it shuts down for idleness.
pub const IDLE_LOG_LINE: &str = "About to shutdown due to idleness";
/// What Bazel logs (java.log) when it cleans up after a crash, followed by the exit code's
/// name (`OOM_ERROR`, ...) and a comma.
pub const CRASH_LOG_LINE: &str = "Cleaning up in crash: DetailedExitCode{exitCode=";
/// The crash exit code's name for running out of Java heap.
pub const OOM_CRASH: &str = "OOM_ERROR";
/// Bazel's exit status for "ran out of memory" (`ExitCode.OOM_ERROR`).
pub const BAZEL_OOM_EXIT: i32 = 33;
/// How much of the end of java.log is searched for [`IDLE_LOG_LINE`] and [`CRASH_LOG_LINE`];
/// both are among the last lines a server writes.
const JAVA_LOG_TAIL: u64 = 64 * 1024;

/// The last word of a server's java.log about why it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogEnd {
    /// Neither an idle shutdown nor a crash (or no log).
    Nothing,
    /// [`IDLE_LOG_LINE`].
    Idle,
    /// [`CRASH_LOG_LINE`] with this exit code's name (`OOM_ERROR`, ...).
    Crash(String),
}

/// Reads the end of a java.log: whichever of the idle line and the crash line comes last.
/// Pure.
pub fn log_end(text: &str) -> LogEnd {
    let idle = text.rfind(IDLE_LOG_LINE);
    let crash = text.rfind(CRASH_LOG_LINE);
    match (idle, crash) {
        (Some(i), Some(c)) if i > c => LogEnd::Idle,
        (Some(_), None) => LogEnd::Idle,
        (_, Some(c)) => {
            let rest = &text[c + CRASH_LOG_LINE.len()..];
            let name: String = rest
                .chars()
                .take_while(|ch| ch.is_ascii_alphanumeric() || *ch == '_')
                .take(64)
                .collect();
            LogEnd::Crash(name)
        }
        (None, None) => LogEnd::Nothing,
    }
}

/// What is known when the server is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndFacts {
    /// The exit status from the reaper; None when the process vanished without one.
    pub exit: Option<ExitInfo>,
    /// How the server's java.log ends.
    pub log: LogEnd,
    /// The cgroup's `oom_kill` counter at the last health check, and right after the exit.
    pub oom_kills_before: Option<u64>,
    pub oom_kills_after: Option<u64>,
}

/// Why the server ended ([`crate::jobs::after_end`] decides what follows).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEnd {
    /// Idle for `--max_idle_secs`: the pod's work is done (the supervisor exits 0).
    Idle,
    /// Exit 0 without idling or crashing: a `shutdown` command, `clean --expunge`. Restarted.
    ShutDown,
    /// SIGKILL while the cgroup's OOM-kill counter went up. Restarted.
    OomKilled { before: u64, after: u64 },
    /// Bazel's own out-of-memory exit (the Java heap): status 33, or 0 after it answered
    /// the command with 33. Restarted.
    OutOfMemory { status: i32 },
    /// Exit 0 after java.log logged a crash (other than out of memory). Restarted.
    CrashedCleanly(String),
    /// Killed by another signal (or SIGKILL without an OOM kill). Restarted.
    Killed(i32),
    /// Another exit status (37: Bazel's internal error, ...). Restarted.
    Crashed(i32),
    /// Gone, and its status was never seen. Restarted.
    Vanished,
}

/// Classifies the end of a server the supervisor did not stop. Pure.
pub fn classify(f: &EndFacts) -> ServerEnd {
    match f.exit {
        Some(ExitInfo::Code(0)) => match &f.log {
            LogEnd::Idle => ServerEnd::Idle,
            LogEnd::Crash(name) if name == OOM_CRASH => ServerEnd::OutOfMemory { status: 0 },
            LogEnd::Crash(name) => ServerEnd::CrashedCleanly(name.clone()),
            LogEnd::Nothing => ServerEnd::ShutDown,
        },
        Some(ExitInfo::Code(BAZEL_OOM_EXIT)) => ServerEnd::OutOfMemory {
            status: BAZEL_OOM_EXIT,
        },
        Some(ExitInfo::Code(c)) => ServerEnd::Crashed(c),
        Some(ExitInfo::Signal(s)) if s == libc::SIGKILL => {
            match (f.oom_kills_before, f.oom_kills_after) {
                (Some(before), Some(after)) if after > before => {
                    ServerEnd::OomKilled { before, after }
                }
                _ => ServerEnd::Killed(s),
            }
        }
        Some(ExitInfo::Signal(s)) => ServerEnd::Killed(s),
        None => ServerEnd::Vanished,
    }
}

impl ServerEnd {
    /// Whether this counts against the crash-loop backoff (a clean exit 0 does not).
    pub fn is_failure(&self) -> bool {
        !matches!(self, ServerEnd::Idle | ServerEnd::ShutDown)
    }

    /// The exit status it stands for (128 + signal when killed); None when unknown.
    pub fn status(&self) -> Option<i32> {
        match self {
            ServerEnd::Idle | ServerEnd::ShutDown | ServerEnd::CrashedCleanly(_) => Some(0),
            ServerEnd::OomKilled { .. } => Some(128 + libc::SIGKILL),
            ServerEnd::OutOfMemory { status } => Some(*status),
            ServerEnd::Killed(s) => Some(128 + s),
            ServerEnd::Crashed(c) => Some(*c),
            ServerEnd::Vanished => None,
        }
    }

    /// One phrase for logs and `/readyz`.
    pub fn describe(&self) -> String {
        match self {
            ServerEnd::Idle => "exited after its idle timeout without a command".into(),
            ServerEnd::ShutDown => {
                "exited 0 without idling out (a `shutdown` or `clean --expunge` command)".into()
            }
            ServerEnd::OomKilled { before, after } => format!(
                "OOM-killed by the container memory limit (SIGKILL; the cgroup's oom_kill \
                 count went from {before} to {after})"
            ),
            ServerEnd::OutOfMemory { status } => format!(
                "ran out of Java heap: Bazel's own out-of-memory exit (the command got exit code \
                 {BAZEL_OOM_EXIT}; the server exited {status})"
            ),
            ServerEnd::CrashedCleanly(name) => {
                format!("crashed ({name} in java.log) and shut down")
            }
            ServerEnd::Killed(s) => format!("killed by signal {}", signal_name(*s)),
            ServerEnd::Crashed(c) => format!("crashed with exit status {c}"),
            ServerEnd::Vanished => "gone without an exit status".into(),
        }
    }
}

fn signal_name(s: i32) -> String {
    nix::sys::signal::Signal::try_from(s)
        .map(|sig| sig.as_str().to_owned())
        .unwrap_or_else(|_| s.to_string())
}

/// Is `name` the java.log of server `pid`? Bazel names it
/// `java.log.<host>.<user>.log.java.<yyyymmdd-hhmmss>.<pid>`. Pure.
pub fn is_java_log_of(name: &str, pid: i32) -> bool {
    name.starts_with("java.log.") && name.ends_with(&format!(".{pid}"))
}

/// The java.log of server `pid` in the output base: where the `java.log` link points, or else
/// the one named for the pid.
pub fn java_log_of(out: &Path, pid: i32) -> Option<PathBuf> {
    let linked = std::fs::read_link(out.join("java.log"))
        .ok()
        .and_then(|t| t.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| is_java_log_of(n, pid));
    if let Some(name) = linked {
        return Some(out.join(name));
    }
    std::fs::read_dir(out)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| is_java_log_of(n, pid))
        .map(|n| out.join(n))
}

/// How server `pid`'s java.log ends ([`log_end`] of its last 64 KiB).
pub fn read_log_end(out: &Path, pid: i32) -> LogEnd {
    let Some(path) = java_log_of(out, pid) else {
        return LogEnd::Nothing;
    };
    let Ok(mut f) = std::fs::File::open(&path) else {
        return LogEnd::Nothing;
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if f.seek(SeekFrom::Start(len.saturating_sub(JAVA_LOG_TAIL)))
        .is_err()
    {
        return LogEnd::Nothing;
    }
    let mut tail = Vec::new();
    if f.take(JAVA_LOG_TAIL).read_to_end(&mut tail).is_err() {
        return LogEnd::Nothing;
    }
    log_end(&String::from_utf8_lossy(&tail))
}

/// A file the supervisor could not write. Names the path.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path:?}")]
pub struct WriteError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Writes `code` as the abrupt-exit code where Bazel's client and jbazel read it (the output
/// base's [`ABRUPT_EXIT_FILE`]: Bazel 4.2.3 writes it in the output base itself, measured, and
/// its client reads and then deletes it there), unless the file is there already (Bazel wrote
/// its own). Returns the files written.
pub fn write_abrupt_exit_code(out: &Path, code: i32) -> Result<Vec<PathBuf>, WriteError> {
    let mut written = Vec::new();
    for rel in [ABRUPT_EXIT_FILE] {
        let path = out.join(rel);
        if path.parent().is_some_and(|d| !d.is_dir()) {
            continue;
        }
        // O_EXCL: never through a symlink a build may have planted (EEXIST instead).
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path);
        match file {
            Ok(mut f) => {
                f.write_all(code.to_string().as_bytes())
                    .map_err(|source| WriteError {
                        path: path.clone(),
                        source,
                    })?;
                written.push(path);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(WriteError { path, source }),
        }
    }
    Ok(written)
}

/// Writes the termination message Kubernetes reads into the container's status
/// (`terminationMessagePath`). Only into a file that exists: outside Kubernetes (or with the
/// path unset) nothing is created. Ok(false) when there is no such file.
pub fn write_termination_message(path: &Path, message: &str) -> Result<bool, WriteError> {
    let err = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    let mut f = match std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(err(e)),
    };
    f.write_all(message.as_bytes()).map_err(err)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(exit: Option<ExitInfo>, log: &LogEnd, before: u64, after: u64) -> EndFacts {
        EndFacts {
            exit,
            log: log.clone(),
            oom_kills_before: Some(before),
            oom_kills_after: Some(after),
        }
    }

    #[test]
    fn classify_table() {
        use ExitInfo::{Code, Signal};
        use ServerEnd::*;
        let idle = LogEnd::Idle;
        let none = LogEnd::Nothing;
        let oom = LogEnd::Crash("OOM_ERROR".into());
        let other = LogEnd::Crash("BLAZE_INTERNAL_ERROR".into());
        let cases = [
            (facts(Some(Code(0)), &idle, 0, 0), Idle),
            (facts(Some(Code(0)), &none, 0, 0), ShutDown),
            // An OOM kill of a build action meanwhile does not make a clean exit a crash.
            (facts(Some(Code(0)), &idle, 0, 1), Idle),
            // Both of Bazel's out-of-memory endings.
            (
                facts(Some(Code(33)), &oom, 0, 0),
                OutOfMemory { status: 33 },
            ),
            (
                facts(Some(Code(33)), &none, 0, 0),
                OutOfMemory { status: 33 },
            ),
            (facts(Some(Code(0)), &oom, 0, 0), OutOfMemory { status: 0 }),
            (
                facts(Some(Code(0)), &other, 0, 0),
                CrashedCleanly("BLAZE_INTERNAL_ERROR".into()),
            ),
            // An idle line does not make a failing exit idle.
            (
                facts(Some(Code(33)), &idle, 0, 0),
                OutOfMemory { status: 33 },
            ),
            (facts(Some(Code(37)), &idle, 0, 0), Crashed(37)),
            (facts(Some(Code(1)), &none, 0, 0), Crashed(1)),
            (
                facts(Some(Signal(9)), &none, 2, 3),
                OomKilled {
                    before: 2,
                    after: 3,
                },
            ),
            // SIGKILL without an OOM kill: someone killed it.
            (facts(Some(Signal(9)), &none, 3, 3), Killed(9)),
            // An OOM kill of another process, but the server died of SIGSEGV.
            (facts(Some(Signal(11)), &none, 0, 1), Killed(11)),
            (facts(Some(Signal(15)), &none, 0, 0), Killed(15)),
            (facts(None, &idle, 0, 5), Vanished),
        ];
        for (f, want) in cases {
            assert_eq!(classify(&f), want, "{f:?}");
        }
        // Counters unreadable: a SIGKILL is only a SIGKILL.
        let unknown = EndFacts {
            exit: Some(Signal(9)),
            log: LogEnd::Nothing,
            oom_kills_before: None,
            oom_kills_after: Some(1),
        };
        assert_eq!(classify(&unknown), Killed(9));
    }

    #[test]
    fn log_ends() {
        let crash = "261203 11:04:30.254:I 20 [...cleanUpForCrash] Cleaning up in crash: \
                     DetailedExitCode{exitCode=OOM_ERROR, failureDetail=message: \"Crashed\"\n";
        let idle = "261203 10:43:02.143:I 17 [...run] About to shutdown due to idleness\n";
        assert_eq!(log_end(""), LogEnd::Nothing);
        assert_eq!(log_end("Finished command\n"), LogEnd::Nothing);
        assert_eq!(log_end(idle), LogEnd::Idle);
        assert_eq!(log_end(crash), LogEnd::Crash("OOM_ERROR".into()));
        // The later one counts.
        assert_eq!(log_end(&format!("{crash}{idle}")), LogEnd::Idle);
        assert_eq!(
            log_end(&format!("{idle}{crash}")),
            LogEnd::Crash("OOM_ERROR".into())
        );
        // A cut-off line, and garbage after the marker.
        assert_eq!(
            log_end("Cleaning up in crash: DetailedExitCode{exitCode="),
            LogEnd::Crash(String::new())
        );
        let long = format!("{CRASH_LOG_LINE}{}", "X".repeat(1000));
        assert!(matches!(log_end(&long), LogEnd::Crash(n) if n.len() == 64));
    }

    #[test]
    fn what_counts_as_failure() {
        assert!(!ServerEnd::Idle.is_failure());
        // (end, exit status it stands for)
        let cases = [
            (ServerEnd::ShutDown, Some(0)),
            (
                ServerEnd::OomKilled {
                    before: 0,
                    after: 1,
                },
                Some(137),
            ),
            (ServerEnd::OutOfMemory { status: 33 }, Some(33)),
            (ServerEnd::OutOfMemory { status: 0 }, Some(0)),
            (ServerEnd::CrashedCleanly("X".into()), Some(0)),
            (ServerEnd::Killed(9), Some(137)),
            (ServerEnd::Crashed(37), Some(37)),
            (ServerEnd::Vanished, None),
        ];
        for (e, status) in cases {
            assert_eq!(e.is_failure(), e != ServerEnd::ShutDown, "{e:?}");
            assert_eq!(e.status(), status, "{e:?}");
        }
    }

    #[test]
    fn descriptions() {
        let oom = ServerEnd::OomKilled {
            before: 0,
            after: 1,
        }
        .describe();
        assert!(
            oom.starts_with("OOM-killed by the container memory limit"),
            "{oom}"
        );
        assert!(ServerEnd::OutOfMemory { status: 33 }
            .describe()
            .contains("Bazel's own out-of-memory exit"));
        assert_eq!(ServerEnd::Killed(9).describe(), "killed by signal SIGKILL");
        assert_eq!(ServerEnd::Killed(99).describe(), "killed by signal 99");
    }

    #[test]
    fn java_logs() {
        let name = "java.log.vm.root.log.java.20261203-104255.6916";
        assert!(is_java_log_of(name, 6916));
        assert!(!is_java_log_of(name, 916));
        assert!(!is_java_log_of("java.log", 6916));
        assert!(!is_java_log_of("jvm.out.6916", 6916));

        let t = tempfile::tempdir().expect("tempdir");
        assert_eq!(
            read_log_end(t.path(), 6916),
            LogEnd::Nothing,
            "no log at all"
        );
        let log = t.path().join(name);
        std::fs::write(
            &log,
            "261203 10:42:57.143:I 22 [...close] Finished command\n",
        )
        .expect("write");
        assert_eq!(read_log_end(t.path(), 6916), LogEnd::Nothing);
        // Found by name without the link, and through the link.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .expect("open");
        writeln!(f, "{}", "x".repeat(200_000)).expect("write");
        writeln!(
            f,
            "261203 10:43:02.143:I 17 [...ServerWatcherRunnable.run] {IDLE_LOG_LINE}"
        )
        .expect("write");
        assert_eq!(
            read_log_end(t.path(), 6916),
            LogEnd::Idle,
            "the end of a long log"
        );
        std::os::unix::fs::symlink(name, t.path().join("java.log")).expect("link");
        assert_eq!(java_log_of(t.path(), 6916), Some(log));
        assert_eq!(
            read_log_end(t.path(), 7000),
            LogEnd::Nothing,
            "another server's log"
        );
    }

    #[test]
    fn abrupt_exit_code_is_written_only_where_absent() {
        let t = tempfile::tempdir().expect("tempdir");
        // No server/ dir (expunged): the output base's file only.
        let w = write_abrupt_exit_code(t.path(), 33).expect("write");
        assert_eq!(w, [t.path().join(ABRUPT_EXIT_FILE)]);
        assert_eq!(
            std::fs::read_to_string(t.path().join(ABRUPT_EXIT_FILE)).expect("read"),
            "33"
        );
        // Bazel's own file is kept.
        std::fs::write(t.path().join(ABRUPT_EXIT_FILE), "37").expect("write");
        let w = write_abrupt_exit_code(t.path(), 33).expect("write");
        assert!(w.is_empty());
        assert_eq!(
            std::fs::read_to_string(t.path().join(ABRUPT_EXIT_FILE)).expect("read"),
            "37"
        );
        // A symlink planted by a build is not followed.
        std::fs::remove_file(t.path().join(ABRUPT_EXIT_FILE)).expect("rm");
        let target = t.path().join("elsewhere");
        std::os::unix::fs::symlink(&target, t.path().join(ABRUPT_EXIT_FILE)).expect("link");
        let w = write_abrupt_exit_code(t.path(), 33).expect("write");
        assert!(w.is_empty(), "{w:?}");
        assert!(!target.exists());
    }

    #[test]
    fn termination_message_only_into_an_existing_file() {
        let t = tempfile::tempdir().expect("tempdir");
        let path = t.path().join("termination-log");
        assert!(!write_termination_message(&path, "idle: no command for 3 s").expect("ok"));
        assert!(!path.exists(), "nothing created");
        std::fs::write(&path, "an older, longer message").expect("write");
        assert!(write_termination_message(&path, "idle: no command for 3 s").expect("ok"));
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "idle: no command for 3 s"
        );
        let err = write_termination_message(t.path(), "x").expect_err("a directory");
        assert!(err.to_string().contains("cannot write"), "{err}");
    }
}
