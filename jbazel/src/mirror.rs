//! The desktop's view of the server's output base (`R/U/H/out`), and what jbazel reads
//! there: the cookies Bazel writes (`server/request_cookie`, `server/response_cookie`,
//! `server/exit_code_to_use_on_abrupt_exit`) and what the supervisor publishes
//! (`jbazel/system.bazelrc`, `jbazel/client-env`). Whoever can read the output base may talk
//! to its server, as with a local Bazel.

use std::path::{Path, PathBuf};

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

    /// Bazel's exit code for a server that died mid-command (default 37, as its client).
    pub fn abrupt_exit_code(&self) -> i32 {
        self.read("server/exit_code_to_use_on_abrupt_exit")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(37)
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
        assert_eq!(m.abrupt_exit_code(), 37);
        assert!(m.client_env().is_none());
        std::fs::create_dir_all(t.path().join("server")).expect("mkdir");
        std::fs::create_dir_all(t.path().join("jbazel")).expect("mkdir");
        std::fs::write(t.path().join("server/request_cookie"), "abc\n").expect("write");
        std::fs::write(t.path().join("server/response_cookie"), "def").expect("write");
        std::fs::write(
            t.path().join("server/exit_code_to_use_on_abrupt_exit"),
            "33",
        )
        .expect("write");
        std::fs::write(t.path().join("jbazel/client-env"), "PATH=/a:/b\n").expect("write");
        assert_eq!(m.request_cookie().expect("cookie"), "abc");
        assert_eq!(m.response_cookie().expect("cookie"), "def");
        assert_eq!(m.abrupt_exit_code(), 33);
        assert_eq!(m.client_env(), Some(vec![("PATH".into(), "/a:/b".into())]));
        let err = Mirror::new(&t.path().join("nope"))
            .request_cookie()
            .expect_err("missing");
        assert!(
            err.to_string().contains("nope/server/request_cookie"),
            "{err}"
        );
    }
}
