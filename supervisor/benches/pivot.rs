//! `cargo bench -p supervisor --bench pivot` (release build, as root):
//!
//! 1. pivot + exec of `true`, direct vs bwrap with the same binds, median of N interleaved
//!    runs and the ratio (target: direct <= 0.5x bwrap), measured two ways. Whole
//!    processes: `supervisor --mode direct run -- true` vs `bwrap ... true` (and
//!    `supervisor --mode bwrap run -- true`), the supervisor's own start included. From a
//!    running process: fork + `pivot::enter_direct` + exec `true` vs spawn `bwrap ... true`,
//!    the supervisor's own start excluded.
//! 2. the supervisor's own RSS while a real Bazel server runs under it (target <= 2 MB).
//!
//! Env: `PIVOT_BENCH_RUNS` (default 100), `SUPERVISOR_BENCH=pivot|rss` (one part),
//! `SUPERVISOR_BIN` (measure another build of the supervisor, e.g. the image's).
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

/// CPU time (user + system) of all reaped descendants so far.
fn children_cpu() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a rusage into the pointer.
    let ru = unsafe {
        libc::getrusage(libc::RUSAGE_CHILDREN, ru.as_mut_ptr());
        ru.assume_init()
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall and CPU time (the whole process tree: robust when other work loads the machine).
struct Sample {
    wall: Vec<Duration>,
    cpu: Vec<Duration>,
}

/// Runs each command once per round, interleaved, so background load hits all alike.
fn time_interleaved(n: usize, makers: &mut [&mut dyn FnMut() -> Command]) -> Vec<Sample> {
    let mut out: Vec<Sample> = (0..makers.len())
        .map(|_| Sample {
            wall: Vec::with_capacity(n),
            cpu: Vec::with_capacity(n),
        })
        .collect();
    for _ in 0..n {
        for (i, make) in makers.iter_mut().enumerate() {
            let mut c = make();
            c.stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let cpu0 = children_cpu();
            let t0 = Instant::now();
            let status = c.status().expect("spawn");
            out[i].wall.push(t0.elapsed());
            out[i].cpu.push(children_cpu().saturating_sub(cpu0));
            assert!(status.success(), "{c:?} failed: {status:?}");
        }
    }
    out
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
        &[fs.root()],
        None,
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
    let t = time_interleaved(n, &mut [&mut direct, &mut raw_bwrap, &mut sup_bwrap]);
    println!("pivot + exec of `true`, median of {n} interleaved runs (spawn to exit; CPU = user+sys of the process tree):");
    println!("  supervisor: {}", supervisor_bin());
    let names = [
        "supervisor --mode direct run -- true",
        "bwrap (same binds) true             ",
        "supervisor --mode bwrap run -- true ",
    ];
    let mut med = Vec::new();
    for (name, s) in names.iter().zip(t) {
        let (w, c) = (median(s.wall), median(s.cpu));
        println!("  {name}: wall {}, CPU {}", ms(w), ms(c));
        med.push((w.as_secs_f64(), c.as_secs_f64()));
    }
    println!(
        "  ratio direct / bwrap: wall {:.2}x, CPU {:.2}x (target <= 0.5x)",
        med[0].0 / med[1].0,
        med[0].1 / med[1].1
    );
    println!(
        "  ratio direct / supervisor-with-bwrap: wall {:.2}x, CPU {:.2}x",
        med[0].0 / med[2].0,
        med[0].1 / med[2].1
    );
}

/// The same comparison without the supervisor's own process start (a PID 1 pays that once,
/// whatever it does next): fork a copy of this single-threaded process, pivot in it
/// (`pivot::enter_direct`: unshare, mounts, mountinfo check) and exec `true`, against
/// spawn `bwrap <same binds> true`. Both are one spawn from a running process to `true`
/// exiting in the new view.
fn in_process_bench(n: usize) {
    use clap::Parser as _;
    use supervisor::cli::{Cli, ModeRequest};
    use supervisor::config::Config;
    use supervisor::plan::{self, HostFacts};

    let fs = Filestore::new();
    let root = fs.root().display().to_string();
    let cli = Cli::parse_from([
        "supervisor",
        "--user-id",
        USER,
        "--repo-hash",
        HASH,
        "--filestore-root",
        &root,
        "run",
        "--",
        "true",
    ]);
    let cfg = Config::load(&cli.opts, cli.command.as_ref()).expect("config");
    // The bwrap plan runs the supervisor binary's `drop-privileges` in the view: that is
    // the supervisor, not this bench (detect() would name the running executable).
    let facts = HostFacts {
        exe: Some(std::path::PathBuf::from(supervisor_bin())),
        ..HostFacts::detect(std::path::Path::new("bwrap"))
    };
    let bwrap = std::path::Path::new("bwrap");
    let direct = plan::plan(&cfg, ModeRequest::Direct, &facts, bwrap).expect("direct plan");
    let bw = plan::plan(&cfg, ModeRequest::Bwrap, &facts, bwrap).expect("bwrap plan");
    let mut times = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..n {
        // Direct: fork; the child pivots, runs `true`, exits with its status.
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        // SAFETY: this bench process is single-threaded; the child only pivots, spawns and exits.
        match unsafe { nix::unistd::fork() }.expect("fork") {
            nix::unistd::ForkResult::Child => {
                use std::os::unix::process::CommandExt as _;
                if supervisor::pivot::enter_direct(&direct).is_ok() {
                    // exec only returns on failure.
                    let _ = Command::new("true").exec();
                }
                // SAFETY: leave the forked copy without running the parent's destructors.
                unsafe { libc::_exit(2) };
            }
            nix::unistd::ForkResult::Parent { child } => {
                let st = nix::sys::wait::waitpid(child, None).expect("waitpid");
                assert!(
                    matches!(st, nix::sys::wait::WaitStatus::Exited(_, 0)),
                    "direct pivot child: {st:?}"
                );
            }
        }
        times[0].push(t0.elapsed());
        times[1].push(children_cpu().saturating_sub(cpu0));
        // bwrap with the same binds.
        let cpu0 = children_cpu();
        let t0 = Instant::now();
        let st = Command::new(&bw.bwrap_argv[0])
            .args(&bw.bwrap_argv[1..])
            .stdin(Stdio::null())
            .status()
            .expect("bwrap");
        assert!(st.success(), "bwrap: {st:?}");
        times[2].push(t0.elapsed());
        times[3].push(children_cpu().saturating_sub(cpu0));
    }
    let [dw, dc, bw_w, bw_c] = times.map(median);
    println!("pivot + exec of `true` from a running process (no supervisor start), median of {n} interleaved runs:");
    println!(
        "  direct (fork, enter_direct, exec true): wall {}, CPU {}",
        ms(dw),
        ms(dc)
    );
    println!(
        "  bwrap (spawn bwrap <same binds> true) : wall {}, CPU {}",
        ms(bw_w),
        ms(bw_c)
    );
    println!(
        "  ratio direct / bwrap: wall {:.2}x, CPU {:.2}x (target <= 0.5x)",
        dw.as_secs_f64() / bw_w.as_secs_f64(),
        dc.as_secs_f64() / bw_c.as_secs_f64()
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
    println!("supervisor RSS while Bazel runs (direct mode, ready after {ready_after:?}, {probes} /readyz probes, ~10 Pings):");
    println!("  supervisor: {}", supervisor_bin());
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
        println!("smoke run (not `cargo bench`): the figures below mean nothing");
        pivot_bench(3);
        in_process_bench(3);
        return;
    }
    let n = std::env::var("PIVOT_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    // SUPERVISOR_BENCH=pivot|rss runs one part (default: both).
    let part = std::env::var("SUPERVISOR_BENCH").unwrap_or_default();
    if part != "rss" {
        pivot_bench(n);
        in_process_bench(n);
    }
    if part != "pivot" {
        rss_bench();
    }
}
