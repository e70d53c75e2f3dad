//! How a Bazel server's end is handled, with the real Bazel (Debian's 4.2.3):
//!
//! - the idle timeout: the server exits on its own although the supervisor health-checks it
//!   every second; the supervisor writes the termination message and exits 0;
//! - the heap from the container's memory limit (a cgroup root given by `CGROUP_ROOT`), an
//!   OOM kill (the cgroup's `oom_kill` counter goes up as the server gets SIGKILL: the
//!   supervisor names it, writes Bazel's abrupt-exit code 33 and restarts), and Bazel's own
//!   out-of-memory exit (a package that fills the heap: the command gets 33, the server
//!   ends, named and restarted).
//!
//! There the cgroup root is a directory of the test: its counter is raised by hand, and
//! the heap must be small enough for a package to fill it (the server, its heap flag and its
//! out-of-memory exit are real). A last test has the kernel do it: the supervisor runs in a
//! memory cgroup of its own (cgroup v1, root), whose limit is lowered under the server until
//! the kernel OOM-kills it.

mod common;

use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

/// Bazel's start (2-4 s measured) plus a wide margin for a loaded 2-core machine.
const READY_DEADLINE: Duration = Duration::from_secs(120);

#[test]
fn an_idle_server_ends_the_pod_despite_health_checks() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let termination_log = fs.scratch().join("termination-log");
    std::fs::write(&termination_log, "").expect("termination log");
    let idle = 3;
    let mut sup = fs.start_bazel_job(
        &rc,
        "idle.log",
        &[
            (pod_env::IDLE_TIMEOUT_SECS, &idle.to_string()),
            (
                "TERMINATION_LOG_PATH",
                termination_log.to_str().expect("utf-8 path"),
            ),
        ],
    );
    assert!(sup.wait_ready(READY_DEADLINE), "not ready:\n{}", sup.logs());
    let ready_at = Instant::now();
    let server = sup.server_pid().expect("server pid");
    let cmdline = std::fs::read_to_string(format!("/proc/{server}/cmdline")).unwrap_or_default();
    assert!(cmdline.contains("--max_idle_secs=3"), "{cmdline}");

    let status = wait_child(&mut sup.child, Duration::from_secs(60)).unwrap_or_else(|| {
        panic!(
            "the supervisor did not end after the idle timeout:\n{}",
            sup.logs()
        )
    });
    let after = ready_at.elapsed();
    assert_eq!(status.code(), Some(0), "{}", sup.logs());
    // The countdown starts at the last command: the supervisor's start Ping, just before ready.
    assert!(
        after >= Duration::from_millis(2500),
        "ended {after:?} after ready"
    );
    let logs = sup.logs();
    let checks = logs.matches("health check: the server serves gRPC").count();
    assert!(
        checks >= 2,
        "health checks ran while the server idled ({checks}):\n{logs}"
    );
    assert!(
        logs.contains("Bazel server exited after its idle timeout; ending the pod"),
        "{logs}"
    );
    assert!(!logs.contains("restarting"), "{logs}");
    assert_eq!(
        std::fs::read_to_string(&termination_log).expect("termination log"),
        proto::pod::idle_message(3)
    );
    assert!(!is_bazel_server(server), "server {server} still runs");
    // The lock is free again: the next command's pod can start a server at once.
    assert!(logs.contains("released the output-base lock"), "{logs}");
    eprintln!("idle exit {after:?} after ready, {checks} health checks in between");
}

/// `//oom`: a package that fills a small heap while it loads.
fn add_heap_filling_package(fs: &Filestore) {
    std::fs::create_dir_all(fs.src().join("oom")).expect("mkdir");
    std::fs::write(
        fs.src().join("oom/BUILD"),
        "x = [\"a\" * 100 + str(i) for i in range(50000000)]\n",
    )
    .expect("BUILD");
}

#[test]
fn heap_from_the_memory_limit_oom_kill_and_bazels_own_oom_exit() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    add_heap_filling_package(&fs);
    // A cgroup v2 layout: a 192 MiB limit (-> -Xmx144m), no OOM kill yet.
    let cgroup = fs.scratch().join("cgroup");
    std::fs::create_dir(&cgroup).expect("mkdir");
    std::fs::write(cgroup.join("memory.max"), format!("{}\n", 192u64 << 20)).expect("limit");
    let events = cgroup.join("memory.events");
    std::fs::write(&events, "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n").expect("events");

    let mut sup = fs.start_bazel_job(
        &rc,
        "memory.log",
        &[("CGROUP_ROOT", cgroup.to_str().expect("utf-8 path"))],
    );
    assert!(sup.wait_ready(READY_DEADLINE), "not ready:\n{}", sup.logs());
    let first = sup.server_pid().expect("server pid");
    let cmdline = std::fs::read_to_string(format!("/proc/{first}/cmdline")).expect("cmdline");
    assert!(
        cmdline.split('\0').any(|a| a == "-Xmx144m"),
        "75% of 192 MiB: {cmdline:?}"
    );
    assert!(sup.logs().contains("small memory limit"), "{}", sup.logs());

    // The kernel OOM-kills the server: it counts the kill and sends SIGKILL.
    std::fs::write(&events, "low 0\nhigh 0\nmax 7\noom 1\noom_kill 1\n").expect("events");
    signal(first, Signal::SIGKILL);
    let second_ready = wait_until(READY_DEADLINE, || {
        sup.server_pid()
            .is_some_and(|p| p != first && is_bazel_server(p))
            && matches!(sup.readyz(), Some((200, _)))
    });
    assert!(
        second_ready,
        "no restart after the OOM kill:\n{}",
        sup.logs()
    );
    assert!(
        sup.logs()
            .contains("OOM-killed by the container memory limit"),
        "{}",
        sup.logs()
    );
    // The restarted server keeps the file: its reader (the client of the command that
    // died) deletes it, as Bazel's own client does.
    assert_eq!(
        std::fs::read_to_string(sup.out.join(mirror::ABRUPT_EXIT_FILE))
            .ok()
            .as_deref(),
        Some("33")
    );

    // Bazel's own out-of-memory exit: the heap fills while the package loads.
    std::fs::remove_file(sup.out.join(mirror::ABRUPT_EXIT_FILE)).expect("rm");
    let second = sup.server_pid().expect("second server");
    let result = run_command(&sup.out, sup.command_port, &["query", "//oom:all"]).map(|r| r.0);
    assert!(
        matches!(result, Ok(33) | Err(_)),
        "the command must fail with Bazel's OOM: {result:?}"
    );
    eprintln!("the OOM command ended with {result:?}");
    let third_ready = wait_until(READY_DEADLINE, || {
        sup.server_pid()
            .is_some_and(|p| p != second && is_bazel_server(p))
            && matches!(sup.readyz(), Some((200, _)))
    });
    assert!(
        third_ready,
        "no restart after Bazel's OOM exit:\n{}",
        sup.logs()
    );
    assert!(
        sup.logs()
            .contains("ran out of Java heap: Bazel's own out-of-memory exit"),
        "{}",
        sup.logs()
    );
    // Bazel told the client itself, one of its two ways: the command's exit code (an OOM in
    // the command's thread; the server then exits 0), or its own abrupt-exit file (an OOM
    // elsewhere halts the server with 33). The supervisor wrote nothing this time.
    let file = std::fs::read_to_string(sup.out.join(mirror::ABRUPT_EXIT_FILE)).ok();
    assert!(
        result == Ok(33) || file.as_deref() == Some("33"),
        "command {result:?}, abrupt-exit file {file:?}"
    );
    assert_eq!(
        sup.logs().matches("Bazel server gone; restarting").count(),
        2,
        "{}",
        sup.logs()
    );

    signal(sup.pid(), Signal::SIGTERM);
    let status = wait_child(&mut sup.child, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", sup.logs()));
    assert_eq!(status.code(), Some(0), "{}", sup.logs());
}

/// A memory cgroup of the host's (v1) hierarchy for one test, removed on drop.
struct MemoryCgroup {
    dir: std::path::PathBuf,
}

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let dir = std::path::PathBuf::from(format!(
            "/sys/fs/cgroup/memory/jbazel-supervisor-test-{}",
            std::process::id()
        ));
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot create the memory cgroup {dir:?} (needs root and cgroup v1's memory hierarchy): {e}"));
        let cg = MemoryCgroup { dir };
        cg.set_limit(limit);
        cg
    }

    fn set_limit(&self, bytes: u64) {
        std::fs::write(self.dir.join("memory.limit_in_bytes"), bytes.to_string())
            .unwrap_or_else(|e| panic!("cannot set the limit of {:?}: {e}", self.dir));
    }

    fn usage(&self) -> u64 {
        std::fs::read_to_string(self.dir.join("memory.usage_in_bytes"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .expect("memory.usage_in_bytes")
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // Empty once every process in it is gone (the test's Running drops kill them first).
        let _ = testkit::wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(self.dir.join("cgroup.procs"))
                .is_ok_and(|p| p.trim().is_empty())
        });
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[test]
fn a_real_oom_kill_by_the_kernel_is_named_and_restarted() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    add_heap_filling_package(&fs);
    let cg = MemoryCgroup::new(1 << 30);
    // The supervisor reads this cgroup as its own: `<root>/memory` -> the cgroup's dir.
    let root = fs.scratch().join("cgroup-root");
    std::fs::create_dir(&root).expect("mkdir");
    std::os::unix::fs::symlink(&cg.dir, root.join("memory")).expect("link");

    let health_port = free_port();
    let command_port = free_port();
    // Enter the cgroup, then become the supervisor: everything it starts is inside.
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "echo $$ > \"$1\" && shift && exec \"$@\"", "sh"])
        .arg(cg.dir.join("cgroup.procs"))
        .arg(supervisor_bin())
        .args(["--mode", "direct"])
        .env_clear();
    for (k, v) in fs.supervisor().get_envs() {
        if let Some(v) = v {
            cmd.env(k, v);
        }
    }
    cmd.env("SYSTEM_BAZELRC", &rc)
        .env("BAZEL_COMMAND_PORT", command_port.to_string())
        .env("HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
        .env("HEALTH_INTERVAL_SECS", "1")
        .env(pod_env::POD_IP, "127.0.0.1")
        .env("CGROUP_ROOT", &root);
    let mut sup = Running::start(
        cmd,
        fs.scratch().join("real-oom.log"),
        fs.out(),
        health_port,
        command_port,
    );
    assert!(sup.wait_ready(READY_DEADLINE), "not ready:\n{}", sup.logs());
    let first = sup.server_pid().expect("server pid");
    let cmdline = std::fs::read_to_string(format!("/proc/{first}/cmdline")).expect("cmdline");
    assert!(cmdline.split('\0').any(|a| a == "-Xmx768m"), "{cmdline:?}");
    // Squeeze: a little above what the pod uses now, far below what the package needs.
    cg.set_limit(cg.usage() + (64 << 20));
    let result = run_command(&sup.out, sup.command_port, &["query", "//oom:all"]).map(|r| r.0);
    eprintln!("the command ended with {result:?}");
    let named = wait_until(Duration::from_secs(60), || {
        sup.logs()
            .contains("OOM-killed by the container memory limit")
    });
    assert!(named, "no OOM kill named:\n{}", sup.logs());
    assert_eq!(
        std::fs::read_to_string(sup.out.join(mirror::ABRUPT_EXIT_FILE))
            .ok()
            .as_deref(),
        Some("33")
    );
    cg.set_limit(1 << 30);
    let restarted = wait_until(READY_DEADLINE, || {
        sup.server_pid()
            .is_some_and(|p| p != first && is_bazel_server(p))
            && matches!(sup.readyz(), Some((200, _)))
    });
    assert!(restarted, "no restart after the OOM kill:\n{}", sup.logs());
    signal(sup.pid(), Signal::SIGTERM);
    let status = wait_child(&mut sup.child, Duration::from_secs(40))
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", sup.logs()));
    assert_eq!(status.code(), Some(0), "{}", sup.logs());
}
