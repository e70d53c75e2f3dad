//! The desktop's view of the server's output base (`R/U/H/out`), and what jbazel reads
//! there: what Bazel writes (`server/request_cookie`, `server/response_cookie`, the server
//! log `server/jvm.out`, and `exit_code_to_use_on_abrupt_exit`, in the output base itself)
//! and what the supervisor publishes (`jbazel/system.bazelrc`, `jbazel/client-env`).
//! Whoever can read the output base may talk to its server, as with a local Bazel.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Bazel's client's exit code for a server that died mid-command without leaving another
/// (`blaze_exit_code::INTERNAL_ERROR`).
pub const ABRUPT_EXIT_DEFAULT: i32 = 37;
/// Where Bazel's server leaves the code its client should exit with if the server dies
/// (`CustomExitCodePublisher`: in the output base itself, e.g. 33 after an OutOfMemoryError).
const ABRUPT_EXIT_FILE: &str = "exit_code_to_use_on_abrupt_exit";
/// More than this in the abrupt-exit file is not an exit code.
pub const ABRUPT_EXIT_MAX_BYTES: u64 = 64;

/// An exit code as Bazel's server writes it (`String.valueOf(int)`, no newline), trusting
/// nothing: at most [`ABRUPT_EXIT_MAX_BYTES`], leading whitespace skipped, then only the
/// digits of a number in 0..=255 (what a process can exit with). Trailing whitespace makes
/// it invalid, as for Bazel 4.2.3's client (its `safe_strto32` trims the end, then parses
/// the untrimmed rest: a file `33\n` gives 37, checked against the real client). Stricter
/// than Bazel's: no sign, and no value it would truncate (`256` would exit 0).
pub fn parse_exit_code(content: &[u8]) -> Option<i32> {
    if content.len() as u64 > ABRUPT_EXIT_MAX_BYTES {
        return None;
    }
    let text = std::str::from_utf8(content)
        .ok()?
        .trim_start_matches([' ', '\t', '\n', '\x0b', '\x0c', '\r']);
    if text.is_empty() || text.len() > 3 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse::<u8>().ok().map(i32::from)
}

/// Bazel's client's `GetExitCodeForAbruptExit` as a decision: the file's code when it was
/// read (`content`), removed, and holds a valid code; else [`ABRUPT_EXIT_DEFAULT`].
pub fn abrupt_exit_code(content: Option<&[u8]>, removed: bool) -> i32 {
    match content {
        Some(c) if removed => parse_exit_code(c).unwrap_or(ABRUPT_EXIT_DEFAULT),
        _ => ABRUPT_EXIT_DEFAULT,
    }
}

/// A regular file's first bytes, never following a link nor blocking on a FIFO; `limit`+1
/// bytes at most, so an overlong file reads as invalid.
fn read_small_regular_file(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut buf = Vec::new();
    f.take(limit + 1).read_to_end(&mut buf)?;
    Ok(buf)
}

/// PATH sent when the supervisor has not published `jbazel/client-env`: Debian's default,
/// which is what the pod image has.
pub const FALLBACK_POD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A file of the mirror that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", path.display())]
pub struct MirrorError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The mirror of one output base.
#[derive(Debug, Clone)]
pub struct Mirror {
    pub out: PathBuf,
}

impl Mirror {
    pub fn new(out: &Path) -> Self {
        Mirror {
            out: out.to_path_buf(),
        }
    }

    fn read(&self, rel: &str) -> Result<String, MirrorError> {
        let path = self.out.join(rel);
        std::fs::read_to_string(&path).map_err(|source| MirrorError { path, source })
    }

    pub fn request_cookie_path(&self) -> PathBuf {
        self.out.join("server/request_cookie")
    }

    /// The cookie every request must carry.
    pub fn request_cookie(&self) -> Result<String, MirrorError> {
        self.read("server/request_cookie")
            .map(|s| s.trim().to_string())
    }

    /// The cookie every response must carry.
    pub fn response_cookie(&self) -> Result<String, MirrorError> {
        self.read("server/response_cookie")
            .map(|s| s.trim().to_string())
    }

    /// The server's log, which Bazel's client names when the server died.
    pub fn server_log(&self) -> PathBuf {
        self.out.join("server/jvm.out")
    }

    pub fn abrupt_exit_code_path(&self) -> PathBuf {
        self.out.join(ABRUPT_EXIT_FILE)
    }

    /// The exit code for a server that died mid-command, as Bazel's client finds it: the
    /// code the server left in the output base, read and removed (so a later death does
    /// not reuse it); [`ABRUPT_EXIT_DEFAULT`] when it is missing, not a regular file, cannot
    /// be removed, or is not an exit code (see [`parse_exit_code`]).
    pub fn take_abrupt_exit_code(&self) -> i32 {
        let path = self.abrupt_exit_code_path();
        let content = match read_small_regular_file(&path, ABRUPT_EXIT_MAX_BYTES) {
            Ok(c) => Some(c),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "abrupt-exit code not read");
                None
            }
        };
        let removed = content.is_some()
            && std::fs::remove_file(&path)
                .inspect_err(|e| {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove the abrupt-exit code file");
                })
                .is_ok();
        let code = abrupt_exit_code(content.as_deref(), removed);
        tracing::debug!(path = %path.display(), found = content.is_some(), code, "abrupt-exit code");
        code
    }

    /// Waits (up to `limit`) for the abrupt-exit code to appear: when the kernel's OOM
    /// killer ends the server, Bazel writes nothing and the pod's supervisor leaves 33 a
    /// moment after the connection broke. True when the file is there.
    pub async fn wait_for_abrupt_exit_code(&self, limit: std::time::Duration) -> bool {
        let path = self.abrupt_exit_code_path();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if std::fs::symlink_metadata(&path).is_ok() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The pod image's system rc, as published by the supervisor.
    pub fn system_rc(&self) -> PathBuf {
        self.out.join("jbazel/system.bazelrc")
    }

    pub fn client_env_path(&self) -> PathBuf {
        self.out.join("jbazel/client-env")
    }

    /// The pod-side client env (`KEY=VALUE` lines), or None when not published.
    pub fn client_env(&self) -> Option<Vec<(String, String)>> {
        self.read("jbazel/client-env")
            .ok()
            .map(|t| crate::args::parse_env_file(&t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_bazel_and_the_supervisor_write() {
        let t = tempfile::tempdir().expect("tempdir");
        let m = Mirror::new(t.path());
        assert!(m.request_cookie().is_err());
        assert_eq!(m.take_abrupt_exit_code(), 37);
        assert!(m.client_env().is_none());
        std::fs::create_dir_all(t.path().join("server")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("jbazel")).expect("mkdir");
        std::fs::write(t.path().join("server/request_cookie"), "abc\n").expect("write");
        std::fs::write(t.path().join("server/response_cookie"), "def").expect("write");
        std::fs::write(t.path().join("exit_code_to_use_on_abrupt_exit"), "33").expect("write");
        std::fs::write(t.path().join("jbazel/client-env"), "PATH=/a:/b\n").expect("write");
        assert_eq!(m.request_cookie().expect("cookie"), "abc");
        assert_eq!(m.response_cookie().expect("cookie"), "def");
        assert_eq!(m.take_abrupt_exit_code(), 33);
        assert!(
            !m.abrupt_exit_code_path().exists(),
            "taken, as Bazel's client does"
        );
        assert_eq!(m.take_abrupt_exit_code(), 37, "not reused");
        assert_eq!(m.server_log(), t.path().join("server/jvm.out"));
        assert_eq!(m.client_env(), Some(vec![("PATH".into(), "/a:/b".into())]));
        let err = Mirror::new(&t.path().join("nope"))
            .request_cookie()
            .expect_err("missing");
        assert!(
            err.to_string().contains("nope/server/request_cookie"),
            "{err}"
        );
    }

    #[test]
    fn exit_code_table() {
        for (content, want) in [
            (&b"33"[..], Some(33)),
            (b" \t\n33", Some(33)),
            // Bazel's client rejects trailing whitespace (checked against the real one).
            (b"33\n", None),
            (b" 33 ", None),
            (b"0", Some(0)),
            (b"255", Some(255)),
            (b"007", Some(7)),
            (b"256", None),
            (b"-1", None),
            (b"+5", None),
            (b"3 3", None),
            (b"0x21", None),
            (b"", None),
            (b"  \n", None),
            (b"1000", None),
            (b"\xff33", None),
            (b"33; rm -rf /", None),
            (format!("{}33", " ".repeat(63)).as_bytes(), None),
        ] {
            assert_eq!(parse_exit_code(content), want, "{content:?}");
        }
        assert_eq!(abrupt_exit_code(None, false), ABRUPT_EXIT_DEFAULT);
        assert_eq!(abrupt_exit_code(Some(b"33"), true), 33);
        // Not removed: Bazel's client does not trust it either.
        assert_eq!(abrupt_exit_code(Some(b"33"), false), ABRUPT_EXIT_DEFAULT);
        assert_eq!(abrupt_exit_code(Some(b"oops"), true), ABRUPT_EXIT_DEFAULT);
    }

    #[test]
    fn abrupt_exit_file_is_never_followed_nor_waited_for() {
        let t = tempfile::tempdir().expect("tempdir");
        let m = Mirror::new(t.path());
        let path = m.abrupt_exit_code_path();
        // A link (to a valid code elsewhere) is not followed, and left alone.
        let elsewhere = t.path().join("elsewhere");
        std::fs::write(&elsewhere, "33").expect("write");
        std::os::unix::fs::symlink(&elsewhere, &path).expect("symlink");
        assert_eq!(m.take_abrupt_exit_code(), ABRUPT_EXIT_DEFAULT);
        assert!(path.symlink_metadata().is_ok());
        std::fs::remove_file(&path).expect("rm");
        // A FIFO: no blocking read.
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .expect("mkfifo");
        assert_eq!(m.take_abrupt_exit_code(), ABRUPT_EXIT_DEFAULT);
        std::fs::remove_file(&path).expect("rm");
        // Overlong: not a code, but taken.
        std::fs::write(&path, format!("33{}", " ".repeat(100))).expect("write");
        assert_eq!(m.take_abrupt_exit_code(), ABRUPT_EXIT_DEFAULT);
        assert!(!path.exists());
        // A directory: not a code.
        std::fs::create_dir(&path).expect("mkdir");
        assert_eq!(m.take_abrupt_exit_code(), ABRUPT_EXIT_DEFAULT);
    }
}
