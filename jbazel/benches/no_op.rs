//! The `no_op` bench: warm no-op build time of jbazel vs the real `bazel` client on the SAME
//! Bazel server, and jbazel's own start-up time.
//!
//! `cargo bench -p jbazel --bench no_op` (root; Debian bazel-bootstrap). Under `cargo test
//! --all-targets` (no `--bench` argument) it is a smoke pass of 3 runs a client, so CI
//! checks the bench still works without paying for it; those figures mean nothing.
//!
//! Set-up (the integration tests' fixture): a temp filestore, a real Bazel 4.2.3 server in
//! its own mount namespace seeing `/work/src` + `/work/out`, its published system rc holding
//! exactly the options the real client sends (Debian's `/etc/bazel/bazelrc` + the platform
//! rc), so both clients leave the analysis cache warm for each other. The bench process
//! moves into a private mount namespace and binds the checkout at `P` for jbazel; the real
//! client is exec'd straight into the server's mount namespace (setns in the child, no
//! wrapper process) with the server's startup options, so it neither restarts the server
//! nor pays for anything jbazel does not.

#[path = "../tests/support/mod.rs"]
mod support;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "no_op",
    about = "Warm no-op build: jbazel vs the real bazel client on one server"
)]
struct Args {
    /// Timed runs per client (medians are reported).
    #[arg(long, default_value_t = 25)]
    iterations: usize,
    /// Runs of `jbazel --version` / dry run for the start-up time.
    #[arg(long, default_value_t = 50)]
    startup_iterations: usize,
    /// What to build.
    #[arg(long, default_value = "//...")]
    target: String,
    /// Passed by `cargo bench`: the full run (without it, a smoke pass).
    #[arg(long, hide = true)]
    bench: bool,
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    let n = v.len();
    if n == 0 {
        return Duration::ZERO;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn timed(mut c: Command, what: &str) -> Result<Duration> {
    let t = Instant::now();
    let st = c.status().with_context(|| format!("spawn {what}"))?;
    let d = t.elapsed();
    if !st.success() {
        // Once more with its output kept, for the message (a bench run is not the place to
        // stream every command's output).
        let again = c
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .with_context(|| format!("spawn {what}"))?;
        bail!(
            "{what} failed: {st}\n{}{}",
            String::from_utf8_lossy(&again.stdout),
            String::from_utf8_lossy(&again.stderr)
        );
    }
    Ok(d)
}

/// Private mount namespace for this process and its children, with `src` bound at `at`.
fn private_bind(src: &Path, at: &Path) -> Result<()> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).context("unshare(CLONE_NEWNS)")?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .context("make / private")?;
    mount(Some(src), at, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .with_context(|| format!("bind {} at {}", src.display(), at.display()))?;
    Ok(())
}

fn jbazel_path() -> PathBuf {
    // Cargo builds the package's binaries, in the bench profile, before it runs a bench.
    PathBuf::from(env!("CARGO_BIN_EXE_jbazel"))
}

fn main() -> Result<()> {
    // Before any thread exists: unshare(CLONE_NEWNS) needs a single-threaded process.
    let mut args = Args::parse();
    if !args.bench {
        println!("smoke run (not `cargo bench`): the figures below mean nothing");
        args.iterations = args.iterations.min(3);
        args.startup_iterations = args.startup_iterations.min(3);
    }
    let jbazel = jbazel_path();
    let srv = support::BazelServer::start(support::Options {
        debian_rc_in_system_rc: true,
        ..Default::default()
    })
    .context("start the Bazel server fixture")?;
    private_bind(&srv.src, &srv.desktop)?;
    eprintln!(
        "bench: server pid {} on {} (started in {}), jbazel {}",
        srv.server_pid,
        srv.addr(),
        ms(srv.startup),
        jbazel.display()
    );

    let jb = |extra: &[&str]| {
        let mut c = Command::new(&jbazel);
        c.args(extra)
            .current_dir(&srv.desktop)
            .env_clear()
            .env("PATH", support::POD_PATH)
            .env("HOME", &srv.home)
            .env("TERM", "dumb")
            .env("JBAZEL_SERVER", srv.addr())
            .env("JBAZEL_FILESTORE_ROOT", &srv.filestore)
            .env("JBAZEL_USER", support::USER)
            .env("JBAZEL_SESSION_ID", support::SESSION)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    };
    let ns_path = format!("/proc/{}/ns/mnt", srv.server_pid);
    let real = |extra: &[&str]| -> Result<Command> {
        let ns = std::fs::File::open(&ns_path).with_context(|| format!("open {ns_path}"))?;
        let mut c = Command::new("/usr/bin/bazel");
        c.args(support::server_startup_args(srv.port, &srv.system_rc))
            .args(extra)
            .env_clear()
            .env("PATH", support::POD_PATH)
            .env("HOME", &srv.home)
            .env("TERM", "dumb")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // SAFETY: setns and chdir are async-signal-safe syscalls; the fd stays open until
        // the child execs.
        unsafe {
            c.pre_exec(move || {
                use std::os::fd::AsFd;
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)
                    .map_err(std::io::Error::from)?;
                nix::unistd::chdir("/work/src").map_err(std::io::Error::from)?;
                Ok(())
            });
        }
        Ok(c)
    };

    let build = ["build", args.target.as_str()];
    // Each client's convenience symlinks are the other's problem here: jbazel's point into
    // the filestore (dangling in a pod, which hides it, but this fixture's server sees it)
    // and the real client's are named by a prefix jbazel's commands do not use, so either
    // set would be walked by the other's `//...`. Both are removed before each command,
    // untimed (jbazel makes its own again after each command, as in a pod).
    let map = jbazel::paths::PathMap::new(&srv.desktop, &srv.filestore, support::USER, &srv.hash);
    let clear_links = || -> Result<()> {
        jbazel::links::remove(&srv.desktop, &map)?;
        Ok(())
    };
    let bazel_run = |what: &str| -> Result<Duration> {
        clear_links()?;
        timed(real(&build)?, what)
    };
    let jbazel_run = |what: &str| -> Result<Duration> {
        clear_links()?;
        timed(jb(&build), what)
    };
    // Warm up: both clients build once, twice, so every later run is a no-op.
    for _ in 0..2 {
        jbazel_run("jbazel build (warm-up)")?;
        bazel_run("bazel build (warm-up)")?;
    }
    // The real client must not have restarted the server.
    let pid_now = std::fs::read_to_string(srv.out.join("server/server.pid.txt"))?;
    if pid_now.trim() != srv.server_pid.to_string() {
        bail!(
            "the real client restarted the server (pid {} -> {})",
            srv.server_pid,
            pid_now.trim()
        );
    }

    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..args.iterations {
        // Alternate who goes first, so neither always follows the other.
        if i % 2 == 0 {
            ours.push(jbazel_run("jbazel build")?);
            theirs.push(bazel_run("bazel build")?);
        } else {
            theirs.push(bazel_run("bazel build")?);
            ours.push(jbazel_run("jbazel build")?);
        }
    }
    let pid_now = std::fs::read_to_string(srv.out.join("server/server.pid.txt"))?;
    if pid_now.trim() != srv.server_pid.to_string() {
        bail!("the server restarted during the bench");
    }

    let mut version = Vec::new();
    let mut dry = Vec::new();
    for _ in 0..args.startup_iterations {
        version.push(timed(jb(&["--version"]), "jbazel --version")?);
        let mut c = jb(&build);
        c.env("JBAZEL_DRY_RUN", "1");
        dry.push(timed(c, "jbazel dry run")?);
    }

    // Leave nothing behind: unbind P before the fixture removes its temp dir.
    let _ = nix::mount::umount2(&srv.desktop, nix::mount::MntFlags::MNT_DETACH);
    let (mo, mt) = (median(&mut ours), median(&mut theirs));
    let ratio = mo.as_secs_f64() / mt.as_secs_f64();
    println!(
        "warm no-op `build {}` on one Bazel 4.2.3 server, {} runs each",
        args.target, args.iterations
    );
    println!(
        "  jbazel      median {}  p10 {}  p90 {}",
        ms(mo),
        ms(pct(&mut ours, 0.1)),
        ms(pct(&mut ours, 0.9))
    );
    println!(
        "  bazel       median {}  p10 {}  p90 {}",
        ms(mt),
        ms(pct(&mut theirs, 0.1)),
        ms(pct(&mut theirs, 0.9))
    );
    println!(
        "  ratio       {ratio:.3}x (jbazel / bazel; target <= 1.05x: {})",
        if ratio <= 1.05 { "met" } else { "NOT met" }
    );
    println!(
        "jbazel start-up ({} runs): --version median {}, dry run median {}",
        args.startup_iterations,
        ms(median(&mut version)),
        ms(median(&mut dry))
    );
    Ok(())
}
