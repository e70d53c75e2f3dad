//! The desktop's view of the server's output base (`R/U/H/out`), and what jbazel reads
//! there: what Bazel writes (`server/request_cookie`, `server/response_cookie`, the server
//! log `server/jvm.out`, and `exit_code_to_use_on_abrupt_exit`, in the output base itself)
//! and what the supervisor publishes (`jbazel/system.bazelrc`, `jbazel/client-env`).
//! Whoever can read the output base may talk to its server, as with a local Bazel.
//!
//! The build in the pod writes this tree: every file here is read through
//! [`crate::untrusted_fs`] (no links, no FIFOs, regular files only, a size cap each).

use std::io::Read;
use std::path::{Path, PathBuf};

use proto::mirror::{
    ABRUPT_EXIT_FILE, CLIENT_ENV, REQUEST_COOKIE, RESPONSE_COOKIE, SERVER_LOG, SYSTEM_RC,
};

use crate::untrusted_fs::{self, UntrustedFileError};

/// Bazel's client's exit code for a server that died mid-command without leaving another
/// (`blaze_exit_code::INTERNAL_ERROR`).
pub const ABRUPT_EXIT_DEFAULT: i32 = crate::exit_code::ExitCode::INTERNAL_ERROR.code();
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

/// A regular file's first bytes below `root` (see [`untrusted_fs::open_beneath`]);
/// `limit`+1 bytes at most, so an overlong file reads as invalid rather than as an error.
fn read_prefix(root: &Path, rel: &str, limit: u64) -> Result<Vec<u8>, UntrustedFileError> {
    let f = untrusted_fs::open_beneath(root, Path::new(rel))?;
    let mut buf = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|source| UntrustedFileError::Read {
            path: root.join(rel),
            source,
        })?;
    Ok(buf)
}

/// More than this in a cookie file is not a cookie (Bazel's are 36-character UUIDs).
pub const COOKIE_MAX_BYTES: u64 = 4096;
/// More than this in the published client env is not the supervisor's.
pub const CLIENT_ENV_MAX_BYTES: u64 = 64 * 1024;

/// PATH sent when the supervisor has not published `jbazel/client-env`: Debian's default,
/// which is what the pod image has.
pub const FALLBACK_POD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A file of the mirror that could not be read (it names the file).
pub type MirrorError = UntrustedFileError;

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

    fn read(&self, rel: &str, limit: u64) -> Result<String, MirrorError> {
        untrusted_fs::read_beneath_to_string(&self.out, Path::new(rel), limit)
    }

    pub fn request_cookie_path(&self) -> PathBuf {
        self.out.join(REQUEST_COOKIE)
    }

    pub fn response_cookie_path(&self) -> PathBuf {
        self.out.join(RESPONSE_COOKIE)
    }

    /// The cookie every request must carry.
    pub fn request_cookie(&self) -> Result<String, MirrorError> {
        self.read(REQUEST_COOKIE, COOKIE_MAX_BYTES)
            .map(|s| s.trim().to_string())
    }

    /// The cookie every response must carry.
    pub fn response_cookie(&self) -> Result<String, MirrorError> {
        self.read(RESPONSE_COOKIE, COOKIE_MAX_BYTES)
            .map(|s| s.trim().to_string())
    }

    /// The server's log, which Bazel's client names when the server died (named, never
    /// read).
    pub fn server_log(&self) -> PathBuf {
        self.out.join(SERVER_LOG)
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
        let content = match read_prefix(&self.out, ABRUPT_EXIT_FILE, ABRUPT_EXIT_MAX_BYTES) {
            Ok(c) => Some(c),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %proto::error_chain::ErrorChain(&e), "abrupt-exit code not read");
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

    /// The pod image's system rc, as published by the supervisor (read by [`crate::rc`],
    /// the same safe way).
    pub fn system_rc(&self) -> PathBuf {
        self.out.join(SYSTEM_RC)
    }

    pub fn client_env_path(&self) -> PathBuf {
        self.out.join(CLIENT_ENV)
    }

    /// The pod-side client env (`KEY=VALUE` lines), or None when not published (or not
    /// readable the safe way: logged).
    pub fn client_env(&self) -> Option<Vec<(String, String)>> {
        match self.read(CLIENT_ENV, CLIENT_ENV_MAX_BYTES) {
            Ok(t) => Some(crate::args::parse_env_file(&t)),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                tracing::warn!(error = %proto::error_chain::ErrorChain(&e), "the pod's client env is not read");
                None
            }
        }
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
        std::fs::create_dir_all(t.path().join(proto::mirror::SERVER_DIR)).expect("mkdir");
        std::fs::create_dir_all(t.path().join(proto::mirror::JBAZEL_DIR)).expect("mkdir");
        std::fs::write(t.path().join(REQUEST_COOKIE), "abc\n").expect("write");
        std::fs::write(t.path().join(RESPONSE_COOKIE), "def").expect("write");
        std::fs::write(t.path().join(ABRUPT_EXIT_FILE), "33").expect("write");
        std::fs::write(t.path().join(CLIENT_ENV), "PATH=/a:/b\n").expect("write");
        assert_eq!(m.request_cookie().expect("cookie"), "abc");
        assert_eq!(m.response_cookie().expect("cookie"), "def");
        assert_eq!(m.take_abrupt_exit_code(), 33);
        assert!(
            !m.abrupt_exit_code_path().exists(),
            "taken, as Bazel's client does"
        );
        assert_eq!(m.take_abrupt_exit_code(), 37, "not reused");
        assert_eq!(m.server_log(), t.path().join(SERVER_LOG));
        assert_eq!(m.response_cookie_path(), t.path().join(RESPONSE_COOKIE));
        assert_eq!(m.system_rc(), t.path().join(SYSTEM_RC));
        assert_eq!(m.client_env(), Some(vec![("PATH".into(), "/a:/b".into())]));
        let err = Mirror::new(&t.path().join("nope"))
            .request_cookie()
            .expect_err("missing");
        assert!(
            err.to_string().contains("nope/server/request_cookie"),
            "{err}"
        );
    }

    use crate::untrusted_fs::within;

    #[test]
    fn a_planted_link_is_never_followed() {
        let t = tempfile::tempdir().expect("tempdir");
        let desktop = tempfile::tempdir().expect("tempdir");
        let canary = desktop.path().join("credentials");
        std::fs::write(&canary, "CANARY aws_secret_access_key=x").expect("write");
        let m = Mirror::new(t.path());
        std::fs::create_dir_all(t.path().join(proto::mirror::SERVER_DIR)).expect("mkdir");
        std::fs::create_dir_all(t.path().join(proto::mirror::JBAZEL_DIR)).expect("mkdir");
        // request_cookie -> ~/.aws/credentials: refused, the canary never returned.
        std::os::unix::fs::symlink(&canary, t.path().join(REQUEST_COOKIE)).expect("symlink");
        let err = m.request_cookie().expect_err("a link");
        assert!(matches!(err, UntrustedFileError::Link { .. }), "{err}");
        assert!(!err.to_string().contains("CANARY"));
        std::os::unix::fs::symlink(&canary, t.path().join(RESPONSE_COOKIE)).expect("symlink");
        assert!(m.response_cookie().is_err());
        std::os::unix::fs::symlink(&canary, t.path().join(CLIENT_ENV)).expect("symlink");
        assert_eq!(m.client_env(), None);
        // A symlinked server/ directory, with a genuine-looking cookie behind it.
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::write(desktop.path().join("request_cookie"), "CANARY").expect("write");
        std::os::unix::fs::symlink(desktop.path(), t.path().join(proto::mirror::SERVER_DIR))
            .expect("symlink");
        let m = Mirror::new(t.path());
        let err = m.request_cookie().expect_err("a linked directory");
        assert!(matches!(err, UntrustedFileError::Link { .. }), "{err}");
    }

    #[test]
    fn a_fifo_or_dev_zero_cookie_fails_promptly() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join(proto::mirror::SERVER_DIR)).expect("mkdir");
        std::fs::create_dir_all(t.path().join(proto::mirror::JBAZEL_DIR)).expect("mkdir");
        nix::unistd::mkfifo(
            &t.path().join(REQUEST_COOKIE),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        std::os::unix::fs::symlink("/dev/zero", t.path().join(RESPONSE_COOKIE)).expect("symlink");
        nix::unistd::mkfifo(
            &t.path().join(CLIENT_ENV),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let m = Mirror::new(t.path());
        let (req, resp, env) = within(std::time::Duration::from_secs(10), move || {
            (m.request_cookie(), m.response_cookie(), m.client_env())
        });
        assert!(
            matches!(req, Err(UntrustedFileError::NotRegular { .. })),
            "{req:?}"
        );
        assert!(
            matches!(resp, Err(UntrustedFileError::Link { .. })),
            "{resp:?}"
        );
        assert_eq!(env, None);
    }

    #[test]
    fn an_oversize_cookie_is_refused() {
        let t = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(t.path().join(proto::mirror::SERVER_DIR)).expect("mkdir");
        let f = std::fs::File::create(t.path().join(REQUEST_COOKIE)).expect("create");
        f.set_len(1 << 40).expect("sparse");
        let m = Mirror::new(t.path());
        let err = m.request_cookie().expect_err("too large");
        assert!(matches!(err, UntrustedFileError::TooLarge { .. }), "{err}");
        assert!(err.to_string().contains(REQUEST_COOKIE), "{err}");
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
