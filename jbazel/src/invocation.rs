//! The facts of one jbazel process, gathered once at the edge ([`Invocation::gather`]) so
//! that everything after reads them from one value: the command line, the working
//! directory, the environment, the terminals, who and where the process is.
//!
//! jbazel's own `--jbazel-*` settings read their `JBAZEL_*` variables through
//! [`crate::config::Settings`], and the identity its sources through
//! [`crate::identity::Sources::read`]; everything else the desktop tells jbazel is here.

use crate::terminal;
use std::path::PathBuf;
use std::time::Instant;

/// Everything jbazel reads from its process before it reads any file.
#[derive(Debug)]
pub struct Invocation {
    /// The arguments after the program name (lossy UTF-8).
    pub argv: Vec<String>,
    /// When the process started (for `--startup_time`).
    pub started: Instant,
    /// The working directory.
    pub cwd: std::io::Result<PathBuf>,
    /// The whole environment (lossy UTF-8), in the order the process has it.
    pub env: Vec<(String, String)>,
    /// Whether stdout is a terminal.
    pub stdout_tty: bool,
    /// Whether stderr is a terminal.
    pub stderr_tty: bool,
    /// The width of stdout's terminal, if it is one.
    pub stdout_columns: Option<u16>,
    /// The width of stderr's terminal (where progress is drawn), if it is one.
    pub stderr_columns: Option<u16>,
    /// This program's path (`--binary_path`).
    pub binary_path: String,
    /// The host name (for the client description).
    pub hostname: String,
    /// This process's id.
    pub pid: u32,
    /// Whether the effective user is root.
    pub root: bool,
}

impl Invocation {
    /// Reads the facts of this process.
    pub fn gather(started: Instant) -> Invocation {
        Invocation {
            argv: std::env::args_os()
                .skip(1)
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            started,
            cwd: std::env::current_dir(),
            env: std::env::vars_os()
                .map(|(k, v)| {
                    (
                        k.to_string_lossy().into_owned(),
                        v.to_string_lossy().into_owned(),
                    )
                })
                .collect(),
            stdout_tty: terminal::isatty(&std::io::stdout()),
            stderr_tty: terminal::isatty(&std::io::stderr()),
            stdout_columns: terminal::width(libc::STDOUT_FILENO),
            stderr_columns: terminal::width(libc::STDERR_FILENO),
            binary_path: std::env::current_exe()
                .map(|p| p.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "jbazel".into()),
            hostname: nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default(),
            pid: std::process::id(),
            root: nix::unistd::geteuid().is_root(),
        }
    }

    /// An environment variable (the last one, as `getenv`), if set.
    pub fn var(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An environment variable that is set and not empty.
    pub fn non_empty_var(&self, name: &str) -> Option<&str> {
        self.var(name).filter(|v| !v.is_empty())
    }

    /// `$HOME`, if set and not empty.
    pub fn home(&self) -> Option<PathBuf> {
        self.non_empty_var("HOME").map(PathBuf::from)
    }

    /// Bazel's `GetTerminalColumns()`: stdout's width, else `$COLUMNS`, else 80.
    pub fn terminal_columns(&self) -> u32 {
        terminal::columns(self.stdout_columns, self.var("COLUMNS"))
    }

    /// Milliseconds since [`Invocation::started`].
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A fixed invocation for tests: no terminal, the given environment.
    pub(crate) fn invocation(argv: &[&str], env: &[(&str, &str)]) -> Invocation {
        Invocation {
            argv: argv.iter().map(|s| s.to_string()).collect(),
            started: Instant::now(),
            cwd: Ok(PathBuf::from("/home/alice/proj/app")),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            stdout_tty: false,
            stderr_tty: false,
            stdout_columns: None,
            stderr_columns: None,
            binary_path: "/usr/bin/jbazel".into(),
            hostname: "desk".into(),
            pid: 4242,
            root: false,
        }
    }

    #[test]
    fn environment_lookups() {
        let inv = invocation(
            &[],
            &[("HOME", ""), ("X", "1"), ("X", "2"), ("COLUMNS", "123")],
        );
        assert_eq!(inv.var("X"), Some("2"), "the last one, as getenv");
        assert_eq!(inv.var("HOME"), Some(""));
        assert_eq!(inv.home(), None, "an empty HOME is no HOME");
        assert_eq!(inv.var("Y"), None);
        assert_eq!(inv.terminal_columns(), 123);
        let mut tty = invocation(&[], &[("COLUMNS", "123")]);
        tty.stdout_columns = Some(200);
        assert_eq!(tty.terminal_columns(), 200);
        assert_eq!(invocation(&[], &[]).terminal_columns(), 80);
    }
}
