//! PID-1 duties under `run`: 100 orphaned grandchildren are reaped (no zombie left behind),
//! SIGTERM is forwarded to the command, and its fate becomes the exit code (128+15).

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

#[test]
fn hundred_orphans_are_reaped_and_sigterm_is_forwarded() {
    let fs = Filestore::new();
    for mode in ["direct", "bwrap"] {
        let mut cmd = fs.supervisor();
        // Each `sh -c 'sleep 0.2 &'` exits at once, orphaning its sleep: 100 grandchildren
        // re-parented to the supervisor (subreaper). Then the command waits to be signalled.
        let script = "for i in $(seq 100); do sh -c 'sleep 0.2 &'; done; echo spawned > /work/out/ready-$0; exec sleep 600";
        cmd.args(["--mode", mode, "run", "--", "sh", "-c", script, mode]);
        let log = fs.root().join(format!("{mode}.log"));
        let mut sup = Running::start(cmd, log, fs.out(), 0, 0);
        let pid = sup.pid();
        let ready = fs.out().join(format!("ready-{mode}"));
        assert!(
            wait_until(Duration::from_secs(30), || ready.exists()),
            "{mode}: the command did not start:\n{}",
            sup.logs()
        );
        // The orphans exit within 0.2 s; the supervisor must reap every one.
        assert!(
            wait_until(Duration::from_secs(20), || {
                sup.logs().matches("reaped an orphan").count() >= 100
            }),
            "{mode}: fewer than 100 orphans reaped:\n{}",
            sup.logs()
        );
        assert!(
            wait_until(Duration::from_secs(10), || zombie_children(pid).is_empty()),
            "{mode}: zombies left: {:?}",
            zombie_children(pid)
        );

        signal(pid, Signal::SIGTERM);
        let status = wait_child(&mut sup.child, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{mode}: supervisor ignored SIGTERM:\n{}", sup.logs()));
        assert_eq!(
            status.code(),
            Some(143),
            "{mode}: 128+SIGTERM:\n{}",
            sup.logs()
        );
        let logs = sup.logs();
        assert!(logs.contains("forwarding signal"), "{mode}: {logs}");
    }
}
