//! The output-base lock with the real Bazel: a second supervisor on the same output base (a
//! desktop bounce: the new pod starts while the old one still stops) waits, not ready, and
//! says so; its server starts only after the first supervisor has shut its own down. A
//! supervisor that gets SIGTERM while it waits exits at once, without a server.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Bazel's start (2-4 s measured) plus a wide margin for a loaded 2-core machine.
const READY_DEADLINE: Duration = Duration::from_secs(120);
const WAITING: &str = "waiting for the previous server to release the output base";

#[test]
fn a_second_supervisor_waits_until_the_first_server_is_gone() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let mut first = fs.start_bazel_job(&rc, "first.log", &[]);
    assert!(
        first.wait_ready(READY_DEADLINE),
        "first not ready:\n{}",
        first.logs()
    );
    let first_server = first.server_pid().expect("first server's pid");
    assert!(is_bazel_server(first_server));

    // The second supervisor of the same repository: it waits, not ready, and says why.
    let mut second = fs.start_bazel_job(&rc, "second.log", &[]);
    assert!(
        wait_until(Duration::from_secs(30), || second.logs().contains(WAITING)),
        "second does not wait:\n{}",
        second.logs()
    );
    let (code, body) = second.readyz().expect("second's /readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains(WAITING), "{body}");
    assert!(
        second.logs().contains("holder=pod=bazel-server-first pid="),
        "the waiter names the holder:\n{}",
        second.logs()
    );
    // It says so again, with the time waited, at most every 5 s.
    assert!(
        wait_until(Duration::from_secs(30), || second
            .logs()
            .contains("waited_secs=5")),
        "no repeated waiting line:\n{}",
        second.logs()
    );
    let waited: Vec<u64> = second
        .logs()
        .lines()
        .filter(|l| l.contains(WAITING))
        .filter_map(|l| l.split("waited_secs=").nth(1))
        .filter_map(|v| v.split_whitespace().next()?.parse().ok())
        .collect();
    assert_eq!(waited.first(), Some(&0), "said at once: {waited:?}");
    assert!(
        waited.windows(2).all(|w| w[1] >= w[0] + 5),
        "said more often than every 5 s: {waited:?}"
    );
    // Meanwhile the first server is the only one: untouched, same pid file, no second start.
    assert_eq!(first.server_pid(), Some(first_server));
    assert!(is_bazel_server(first_server));
    assert!(
        !second.logs().contains("starting the Bazel server"),
        "{}",
        second.logs()
    );

    // A third one, stopped while it waits: exits 0 at once, nothing started.
    let mut third = fs.start_bazel_job(&rc, "third.log", &[]);
    assert!(
        wait_until(Duration::from_secs(30), || third.logs().contains(WAITING)),
        "third does not wait:\n{}",
        third.logs()
    );
    let t0 = Instant::now();
    signal(third.pid(), Signal::SIGTERM);
    let status = wait_child(&mut third.child, Duration::from_secs(10))
        .unwrap_or_else(|| panic!("third ignores SIGTERM while waiting:\n{}", third.logs()));
    assert_eq!(status.code(), Some(0), "{}", third.logs());
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(!third.logs().contains("starting the Bazel server"));
    assert!(
        is_bazel_server(first_server),
        "third touched the first server"
    );

    // The first pod stops: its server goes, then its lock; only then the second starts one.
    signal(first.pid(), Signal::SIGTERM);
    let status = wait_child(&mut first.child, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("first: no exit after SIGTERM:\n{}", first.logs()));
    assert_eq!(status.code(), Some(0), "{}", first.logs());
    assert!(!is_bazel_server(first_server));
    assert!(
        second.wait_ready(READY_DEADLINE),
        "second not ready after the first stopped:\n{}",
        second.logs()
    );
    let second_server = second.server_pid().expect("second server's pid");
    assert_ne!(second_server, first_server);
    assert!(is_bazel_server(second_server));

    let at = |r: &Running, what: &str| {
        r.logged_at(what)
            .unwrap_or_else(|| panic!("no {what:?} in:\n{}", r.logs()))
    };
    let stopped = at(&first, "Bazel server stopped");
    let released = at(&first, "released the output-base lock");
    let taken = at(&second, "took the output-base lock");
    let started = at(&second, "starting the Bazel server");
    assert!(
        stopped <= released && released <= taken && taken <= started,
        "order: first's server stopped {stopped}, lock released {released}; \
         second took it {taken}, started its server {started}"
    );

    signal(second.pid(), Signal::SIGTERM);
    let status = wait_child(&mut second.child, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("second: no exit after SIGTERM:\n{}", second.logs()));
    assert_eq!(status.code(), Some(0), "{}", second.logs());
    assert!(!is_bazel_server(second_server));
}

/// `clean --expunge` deletes everything in the output base, the lock file too, and shuts the
/// server down: the supervisor notices that its lock no longer guards the output base, takes
/// it again on a new file, and starts a new server.
#[test]
fn clean_expunge_deletes_the_lock_file_and_the_lock_is_taken_again() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let mut sup = fs.start_bazel_job(&rc, "expunge.log", &[]);
    assert!(sup.wait_ready(READY_DEADLINE), "not ready:\n{}", sup.logs());
    let first = sup.server_pid().expect("server pid");
    let lock = fs.out().join(supervisor::lock::LOCK_FILE);
    assert!(lock.exists(), "no lock file");

    // Bazel empties the output base, then fails to remove the dir itself, a mount point in
    // the pod ("/work/out (Device or resource busy)", exit 36): the contents are gone either
    // way, the lock file with them.
    let (code, stderr) = run_command(&sup.out, sup.command_port, &["clean", "--expunge"])
        .expect("clean --expunge runs");
    assert!(
        code == 0 || stderr.contains("/work/out"),
        "exit {code}: {stderr}"
    );
    let restarted = wait_until(READY_DEADLINE, || {
        sup.server_pid()
            .is_some_and(|p| p != first && is_bazel_server(p))
            && matches!(sup.readyz(), Some((200, _)))
    });
    assert!(
        restarted,
        "no new server after the expunge:\n{}",
        sup.logs()
    );
    let logs = sup.logs();
    assert!(
        logs.contains("the output-base lock file was removed or replaced"),
        "{logs}"
    );
    assert_eq!(
        logs.matches("took the output-base lock").count(),
        2,
        "{logs}"
    );
    // (A new file, maybe with the old inode number: the old one was freed on release.)
    assert!(lock.exists(), "no new lock file");
    // And it excludes a second supervisor again.
    let mut second = fs.start_bazel_job(&rc, "expunge-second.log", &[]);
    assert!(
        wait_until(Duration::from_secs(30), || second.logs().contains(WAITING)),
        "the new lock file does not exclude:\n{}",
        second.logs()
    );
    signal(second.pid(), Signal::SIGTERM);
    let status = wait_child(&mut second.child, Duration::from_secs(10)).expect("second exits");
    assert_eq!(status.code(), Some(0), "{}", second.logs());

    signal(sup.pid(), Signal::SIGTERM);
    let status = wait_child(&mut sup.child, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", sup.logs()));
    assert_eq!(status.code(), Some(0), "{}", sup.logs());
}
