//! Test support every test tree needs, kept once: a free loopback port, a copy of a
//! directory tree, and a wait on a condition with a deadline (never a bare sleep), for
//! plain code ([`wait_until`]) and for async code ([`wait_until_async`]).
//!
//! Architecture invariant: the bottom of the test side. It depends on no crate of the
//! workspace (only on tokio's timer, for the async wait), and only tests and the
//! integration harness depend on it.

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

/// Runs the async `check` until it yields a value, pausing `every` between runs, for at
/// most `within`; returns the value, or `None` when the deadline passed first. `check` is
/// always run once more at the deadline. The clock is tokio's: a test with paused time
/// waits on its virtual clock.
///
/// A boolean condition yields `(cond).then_some(())`; a check that remembers why it has
/// not succeeded yet (for the caller's timeout message) can write to its captures, since
/// it is an `async` closure called one run at a time.
pub async fn wait_until_async<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        tokio::time::sleep(every.min(deadline - now)).await;
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

    #[tokio::test(start_paused = true)]
    async fn wait_until_async_returns_the_value_or_none_at_the_deadline() {
        let mut runs = 0;
        let start = tokio::time::Instant::now();
        let got = wait_until_async(
            Duration::from_secs(5),
            Duration::from_millis(100),
            async || {
                runs += 1;
                (runs == 3).then_some(runs * 10)
            },
        )
        .await;
        assert_eq!(got, Some(30));
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(200),
            "two pauses of `every`"
        );

        // Never: runs at 0, 400, 800 and once more at the deadline (1000), then gives up.
        let (mut runs, start) = (0, tokio::time::Instant::now());
        let got: Option<()> = wait_until_async(
            Duration::from_secs(1),
            Duration::from_millis(400),
            async || {
                runs += 1;
                None
            },
        )
        .await;
        assert_eq!(got, None);
        assert_eq!(runs, 4);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
    }
}
