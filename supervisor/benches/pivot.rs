//! `cargo bench -p supervisor --bench pivot` (release build, as root):
//!
//! 1. pivot + exec of `true`: `supervisor --mode direct run -- true` against plain `bwrap` with
//!    the same binds (and `supervisor --mode bwrap run -- true`), median of N runs, the ratio
//!    (target: direct <= 0.5x bwrap);
//! 2. the supervisor's own RSS while a real Bazel server runs under it (target <= 2 MB).
//!
//! Not a timed test: under `cargo test` (no `--bench` argument) it only smoke-runs a few
//! iterations of part 1 and asserts nothing about speed.

#[path = "../tests/common/mod.rs"]
mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs each command once per round, interleaved, so background load hits all alike.
fn time_interleaved(n: usize, makers: &mut [&mut dyn FnMut() -> Command]) -> Vec<Vec<Duration>> {
    let mut times = vec![Vec::with_capacity(n); makers.len()];
    for _ in 0..n {
        for (i, make) in makers.iter_mut().enumerate() {
            let mut c = make();
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let t0 = Instant::now();
            let status = c.status().expect("spawn");
            times[i].push(t0.elapsed());
            assert!(status.success(), "{c:?} failed: {status:?}");
        }
    }
    times
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn pivot_bench(n: usize) {
    let fs = Filestore::new();
    let src = std::fs::canonicalize(fs.src()).expect("canon");
    let out = std::fs::canonicalize(fs.out()).expect("canon");
    let argv = supervisor::plan::bwrap_argv(
        std::path::Path::new("bwrap"),
        &src,
        &out,
        &["true".to_owned()],
    );
    let mut direct = || {
        let mut c = fs.supervisor();
        c.env("RUST_LOG", "info")
            .args(["--mode", "direct", "run", "--", "true"]);
        c
    };
    let mut raw_bwrap = || {
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c
    };
    let mut sup_bwrap = || {
        let mut c = fs.supervisor();
        c.env("RUST_LOG", "info")
            .args(["--mode", "bwrap", "run", "--", "true"]);
        c
    };
    let mut t = time_interleaved(n, &mut [&mut direct, &mut raw_bwrap, &mut sup_bwrap]).into_iter();
    let (direct, raw_bwrap, sup_bwrap) = (
        t.next().unwrap_or_default(),
        t.next().unwrap_or_default(),
        t.next().unwrap_or_default(),
    );
    let (d, b, sb) = (median(direct), median(raw_bwrap), median(sup_bwrap));
    println!("pivot + exec of `true`, median of {n} interleaved runs (wall time, spawn to exit):");
    println!("  supervisor --mode direct run -- true : {}", ms(d));
    println!("  bwrap (same binds) true              : {}", ms(b));
    println!("  supervisor --mode bwrap run -- true  : {}", ms(sb));
    println!(
        "  ratio direct / bwrap                 : {:.2}x (target <= 0.5x)",
        d.as_secs_f64() / b.as_secs_f64()
    );
    println!(
        "  ratio direct / supervisor-with-bwrap : {:.2}x",
        d.as_secs_f64() / sb.as_secs_f64()
    );
}

fn status_kb(pid: i32, key: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn rss_bench() {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let health_port = free_port();
    let command_port = free_port();
    let mut cmd = fs.supervisor();
    cmd.env("RUST_LOG", "info")
        .env("SYSTEM_BAZELRC", &rc)
        .env("BAZEL_COMMAND_PORT", command_port.to_string())
        .env("HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
        .env("HEALTH_INTERVAL_SECS", "1")
        .args(["--mode", "direct"]);
    let log = fs.root().join("supervisor.log");
    let mut sup = Running::start(cmd, log, fs.out(), health_port, command_port);
    let t0 = Instant::now();
    let ready = wait_until(Duration::from_secs(120), || {
        matches!(sup.readyz(), Some((200, _)))
    });
    assert!(ready, "Bazel not ready:\n{}", sup.logs());
    let ready_after = t0.elapsed();
    // Let it run a while: ~10 health Pings and 20 readiness probes.
    let until = Instant::now() + Duration::from_secs(10);
    let mut probes = 0;
    wait_until(Duration::from_secs(11), || {
        if sup.readyz().is_some() {
            probes += 1;
        }
        std::thread::sleep(Duration::from_millis(450));
        Instant::now() >= until
    });
    let pid = sup.pid();
    let server = sup.server_pid().expect("server pid");
    let field = |k| status_kb(pid, k).unwrap_or(0);
    println!("supervisor RSS while Bazel runs (release build, direct mode, ready after {ready_after:?}, {probes} /readyz probes, ~10 Pings):");
    println!(
        "  VmRSS {} kB (RssAnon {} kB, RssFile {} kB, RssShmem {} kB), VmHWM {} kB; threads {}",
        field("VmRSS:"),
        field("RssAnon:"),
        field("RssFile:"),
        field("RssShmem:"),
        field("VmHWM:"),
        field("Threads:")
    );
    println!(
        "  (target <= 2048 kB; the Bazel server JVM itself: VmRSS {} kB)",
        status_kb(server, "VmRSS:").unwrap_or(0)
    );
    common::signal(pid, nix::sys::signal::Signal::SIGTERM);
    let status = wait_child(&mut sup.child, Duration::from_secs(30));
    println!("  SIGTERM -> {status:?}");
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    if !bench {
        // `cargo test --all-targets`: smoke only.
        pivot_bench(3);
        return;
    }
    let n = std::env::var("PIVOT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    pivot_bench(n);
    rss_bench();
}
