//! Test support every test tree needs, kept once: a free loopback port, a copy of a
//! directory tree, and a wait on a condition with a deadline (never a bare sleep).
//!
//! Architecture invariant: the bottom of the test side. It depends on no crate of the
//! workspace, and only tests and the integration harness depend on it.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A free loopback port: bind port 0, read it, release it. Another process may take it
/// before the caller's server binds; that server then fails to bind and says so.
pub fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A step of [`copy_dir`] failed on one path.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {}", path.display())]
pub struct CopyError {
    /// What was being done: "create", "read", "stat", "copy".
    pub op: &'static str,
    /// The path it was done to.
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// Copies the tree `from` into `to` (created if missing): directories and regular files.
/// Symlinks and special files are skipped, so a copy never points outside itself.
pub fn copy_dir(from: &Path, to: &Path) -> Result<(), CopyError> {
    let err = |op, path: &Path| {
        let path = path.to_path_buf();
        move |source| CopyError { op, path, source }
    };
    std::fs::create_dir_all(to).map_err(err("create", to))?;
    for entry in std::fs::read_dir(from).map_err(err("read", from))? {
        let entry = entry.map_err(err("read", from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ty = entry.file_type().map_err(err("stat", &src))?;
        if ty.is_dir() {
            copy_dir(&src, &dst)?;
        } else if ty.is_file() {
            std::fs::copy(&src, &dst).map_err(err("copy", &src))?;
        }
    }
    Ok(())
}

/// Checks `cond` every 20 ms until it holds or `within` has passed; returns whether it held.
/// The condition is always checked once more at the deadline.
pub fn wait_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().expect("port");
        assert_ne!(port, 0);
        TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
    }

    #[test]
    fn copy_dir_copies_files_and_dirs_and_skips_symlinks() {
        let base = std::env::temp_dir().join(format!("testkit-copy-{}", std::process::id()));
        let (from, to) = (base.join("from"), base.join("to"));
        std::fs::create_dir_all(from.join("a/b")).expect("mkdir");
        std::fs::write(from.join("a/b/f"), "x").expect("write");
        std::os::unix::fs::symlink("/etc/passwd", from.join("link")).expect("symlink");
        copy_dir(&from, &to).expect("copy");
        assert_eq!(
            std::fs::read_to_string(to.join("a/b/f")).expect("read"),
            "x"
        );
        assert!(std::fs::symlink_metadata(to.join("link")).is_err());
        let e = copy_dir(&base.join("missing"), &base.join("t2")).expect_err("missing source");
        assert!(e.to_string().starts_with("cannot read "), "{e}");
        std::fs::remove_dir_all(&base).expect("cleanup");
    }

    #[test]
    fn wait_until_sees_a_condition_and_times_out() {
        let mut n = 0;
        assert!(wait_until(Duration::from_secs(5), || {
            n += 1;
            n == 3
        }));
        let start = Instant::now();
        assert!(!wait_until(Duration::from_millis(60), || false));
        assert!(start.elapsed() >= Duration::from_millis(60));
    }
}
