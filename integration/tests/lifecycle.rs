//! A server's life beyond one session, all real (emulator, orchestrator binary, cluster,
//! the project image, jbazel): a desktop bounce against a cold start, an orchestrator
//! SIGKILLed during a spawn and while READY, idle culling with a warm respawn, and a
//! server that runs out of memory. Figures are printed (medians where repeated); the
//! asserts are about behaviour, with loose time bounds that only catch regressions to
//! the old behaviour (waiting for the old pod to be gone before the new one starts).

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use integration::kubernetes::live_server_pods;
use kube::api::ListParams;
use orchestrator::engine::SessionStore;
use orchestrator::pods::manifest::APP_SELECTOR;
use orchestrator::session::{SessionKey, Status};
use orchestrator::store::Store;
use proto::names::UserId;

use integration::platform::{repo_root, show};
use integration::stack::{PlatformOptions, TestPlatform};

/// A finished jbazel: exit code, stderr lines with the time each arrived, and the total.
struct Timed {
    code: Option<i32>,
    stdout: String,
    lines: Vec<(Duration, String)>,
    took: Duration,
}

impl Timed {
    fn stderr(&self) -> String {
        self.lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn explain(&self, step: &str) -> String {
        format!(
            "{step}: exit {:?} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code,
            self.took,
            self.stdout,
            self.stderr()
        )
    }

    /// The longest time without a new stderr line, from the start to the exit.
    fn longest_silence(&self) -> Duration {
        let mut last = Duration::ZERO;
        let mut worst = Duration::ZERO;
        for (at, _) in &self.lines {
            worst = worst.max(at.saturating_sub(last));
            last = *at;
        }
        worst.max(self.took.saturating_sub(last))
    }
}

/// Runs `cmd`, timestamping each stderr line as it arrives.
fn run_timed(cmd: &mut Command) -> Timed {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jbazel must start");
    let stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut lines = Vec::new();
        // Progress redraws in place end with \r on a terminal; jbazel's plain mode (no
        // tty here) writes whole lines.
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            lines.push((started.elapsed(), line));
        }
        lines
    });
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut stdout);
    }
    let status = child.wait().expect("wait");
    let took = started.elapsed();
    Timed {
        code: status.code(),
        stdout,
        lines: reader.join().expect("reader"),
        took,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn options(extra: &[&str]) -> PlatformOptions {
    PlatformOptions {
        orchestrator_args: extra.iter().map(|s| s.to_string()).collect(),
        ..PlatformOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounce_takes_about_a_cold_start_and_jbazel_says_what_it_waits_for() {
    let stack = TestPlatform::start_with("bounce", options(&["--resync-interval-secs", "5"]))
        .await
        .expect("the platform must start");
    let url = stack.orchestrator.url();
    let workspace = repo_root().join("integration/sample-workspace");
    let pods = stack.namespace.user_pods("alice");
    let (mut colds, mut bounces) = (Vec::new(), Vec::new());
    let mut saw_previous = 0;
    for round in 0..3 {
        let desktop = stack
            .desktop("alice", &format!("home/alice/repo{round}"), &workspace)
            .expect("desktop");
        let info = |session: &str| {
            let mut cmd = desktop.jbazel(&url, session).expect("jbazel");
            cmd.args(["info", "release"]);
            run_timed(&mut cmd)
        };
        let cold = info("boot-1");
        assert_eq!(cold.code, Some(0), "{}", cold.explain("cold start"));
        let first = live_server_pods(&pods, &desktop.repo_hash)
            .await
            .expect("list pods");
        let bounce = info("boot-2");
        assert_eq!(bounce.code, Some(0), "{}", bounce.explain("bounce"));
        assert!(
            !bounce.stdout.trim().is_empty(),
            "{}",
            bounce.explain("bounce")
        );
        // Never silent for long while it waits for the server.
        let silence = bounce.longest_silence();
        assert!(
            silence <= Duration::from_millis(1500),
            "silent for {silence:?}: {}",
            bounce.explain("bounce")
        );
        if bounce.stderr().contains("previous server") {
            saw_previous += 1;
        }
        let after = live_server_pods(&pods, &desktop.repo_hash)
            .await
            .expect("list pods");
        assert_eq!(after.len(), 1, "one server pod after the bounce");
        assert_ne!(after[0].metadata.uid, first[0].metadata.uid);
        colds.push(cold.took);
        bounces.push(bounce.took);
    }
    let (cold, bounce) = (median(colds.clone()), median(bounces.clone()));
    let ratio = bounce.as_secs_f64() / cold.as_secs_f64();
    eprintln!(
        "lifecycle: cold start {colds:?} (median {cold:?}), bounce {bounces:?} (median {bounce:?}): {ratio:.2}x; 'previous server' shown in {saw_previous}/3"
    );
    assert!(
        saw_previous >= 1,
        "jbazel never said it waited for the previous server"
    );
    // A regression guard, not the target (1.2x, reported above): the old behaviour
    // (old pod gone first) took 2-3x.
    assert!(ratio < 1.8, "bounce {bounce:?} against cold {cold:?}");
    let (_scratch, _) = stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orchestrator_killed_during_a_spawn_or_while_ready_costs_no_wait_and_leaves_no_orphan() {
    let mut stack = TestPlatform::start_with("crash", options(&["--resync-interval-secs", "2"]))
        .await
        .expect("the platform must start");
    let url = stack.orchestrator.url();
    let workspace = repo_root().join("integration/sample-workspace");
    let pods = stack.namespace.user_pods("alice");

    // A reference cold start on another checkout.
    let reference = stack
        .desktop("bob", "home/bob/sample", &workspace)
        .expect("desktop");
    let mut cmd = reference.jbazel(&url, "s1").expect("jbazel");
    let cold = run_timed(cmd.args(["info", "release"]));
    assert_eq!(cold.code, Some(0), "{}", cold.explain("cold reference"));

    // 1. SIGKILL while alice's spawn is in flight, then start it again on the same port.
    let desktop = stack
        .desktop("alice", "home/alice/sample", &workspace)
        .expect("desktop");
    let mut cmd = desktop.jbazel(&url, "s1").expect("jbazel");
    cmd.args(["info", "release"]);
    let in_flight = std::thread::spawn(move || run_timed(&mut cmd));
    let log_has_spawn = || {
        stack
            .orchestrator
            .log()
            .contains(&format!("Creating Pod for repo {}", desktop.repo_hash))
    };
    assert!(
        testkit::wait_until(Duration::from_secs(60), log_has_spawn),
        "the spawn never started"
    );
    stack
        .crash_and_restart_orchestrator("orchestrator-restarted.log")
        .expect("restart on the same port");
    let rode = in_flight.join().expect("jbazel thread");
    assert_eq!(
        rode.code,
        Some(0),
        "{}",
        rode.explain("command in flight over the crash")
    );
    eprintln!(
        "lifecycle: command in flight over an orchestrator SIGKILL: {:?} (cold reference {:?}); reconnect shown: {}",
        rode.took,
        cold.took,
        rode.stderr().contains("reconnect")
    );
    assert!(
        rode.took <= cold.took + Duration::from_secs(12),
        "{:?} against cold {:?}",
        rode.took,
        cold.took
    );

    // 2. SIGKILL while READY: the next command is served by the same pod, with no wait.
    let before = live_server_pods(&pods, &desktop.repo_hash)
        .await
        .expect("list pods");
    assert_eq!(before.len(), 1);
    stack
        .crash_and_restart_orchestrator("orchestrator-restarted-2.log")
        .expect("restart on the same port");
    let mut cmd = desktop.jbazel(&url, "s1").expect("jbazel");
    let warm = run_timed(cmd.args(["info", "release"]));
    assert_eq!(warm.code, Some(0), "{}", warm.explain("after restart"));
    let after = live_server_pods(&pods, &desktop.repo_hash)
        .await
        .expect("list pods");
    assert_eq!(after.len(), 1);
    assert_eq!(
        after[0].metadata.uid, before[0].metadata.uid,
        "the READY server is reused after the restart"
    );
    eprintln!(
        "lifecycle: first command after a restart while READY: {:?}",
        warm.took
    );
    assert!(
        warm.took < cold.took,
        "{:?} is no faster than a cold start",
        warm.took
    );

    // No orphan: every platform pod is the current one of a row.
    let mut live = 0;
    for user in ["alice", "bob"] {
        let all = stack
            .namespace
            .user_pods(user)
            .list(&ListParams::default().labels(APP_SELECTOR))
            .await
            .expect("list")
            .items;
        live += all
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .count();
    }
    assert_eq!(live, 2, "alice's and bob's servers, nothing else");
    drop(desktop);
    drop(reference);
    let (_scratch, _) = stack.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_server_is_culled_and_the_next_command_respawns_on_the_warm_output_base() {
    let stack = TestPlatform::start_with(
        "idle",
        options(&["--idle-timeout-secs", "15", "--resync-interval-secs", "2"]),
    )
    .await
    .expect("the platform must start");
    let url = stack.orchestrator.url();
    let workspace = repo_root().join("integration/sample-workspace");
    let pods = stack.namespace.user_pods("carol");
    let desktop = stack
        .desktop("carol", "home/carol/sample", &workspace)
        .expect("desktop");
    // An action whose re-run would show: it takes 5 s and stamps its output.
    let slow = desktop.desktop_path.join("stamp");
    fs::create_dir_all(&slow).expect("mkdir");
    fs::write(
        slow.join("BUILD"),
        "genrule(name = \"stamp\", outs = [\"stamp.txt\"], cmd = \"sleep 5; date +%s%N > $@\")\n",
    )
    .expect("BUILD");
    let build = || {
        let mut cmd = desktop.jbazel(&url, "s1").expect("jbazel");
        cmd.args(["build", "//stamp", "//app:hello"]);
        run_timed(&mut cmd)
    };
    let first = build();
    assert_eq!(first.code, Some(0), "{}", first.explain("first build"));
    let stamp = desktop
        .out_dir()
        .join("execroot/__main__/bazel-out/k8-fastbuild/bin/stamp/stamp.txt");
    let stamped = fs::read_to_string(&stamp).expect("stamp output");

    // Idle: the pod goes by itself and the row says IDLE.
    let store = Store::connect(&stack.emulator.database_path(), &stack.emulator.host())
        .await
        .expect("store");
    let key = SessionKey::new(
        UserId::parse("carol").expect("valid"),
        desktop.repo_hash.clone(),
    );
    let idle_since = Instant::now();
    let culled = testkit::wait_until_async(
        Duration::from_secs(120),
        Duration::from_millis(500),
        async || {
            let row = store
                .read(&key, tokio::time::Instant::now() + Duration::from_secs(5))
                .await
                .expect("read");
            let gone = live_server_pods(&pods, &desktop.repo_hash)
                .await
                .expect("list pods")
                .is_empty();
            (gone && row.as_ref().is_some_and(|r| r.status == Status::Idle)).then_some(())
        },
    )
    .await;
    assert!(
        culled.is_some(),
        "not culled; orchestrator log:\n{}",
        integration::platform::tail(&stack.orchestrator.log(), 40)
    );
    eprintln!(
        "lifecycle: idle (15 s) server culled {:?} after the build",
        idle_since.elapsed()
    );
    assert!(
        desktop.out_dir().join("execroot").exists(),
        "the output base stays"
    );

    // The next command respawns on the kept output base: the action cache is warm.
    let again = build();
    assert_eq!(again.code, Some(0), "{}", again.explain("respawn build"));
    assert_eq!(
        fs::read_to_string(&stamp).expect("stamp"),
        stamped,
        "the 5 s action ran again: the action cache was not warm"
    );
    eprintln!(
        "lifecycle: first (cold) build {:?}; warm respawn after culling {:?} ({:.2}x); stamp action not re-run",
        first.took,
        again.took,
        again.took.as_secs_f64() / first.took.as_secs_f64()
    );
    assert!(again.took < first.took, "{}", show_both(&first, &again));
    let (_scratch, _) = stack.cleanup().await;
}

fn show_both(a: &Timed, b: &Timed) -> String {
    format!("{}\n{}", a.explain("first"), b.explain("second"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_out_of_memory_exits_33_like_bazel_and_is_restarted() {
    // A small container: the supervisor sizes the JVM heap from the limit.
    let stack = TestPlatform::start_with(
        "oom",
        options(&[
            "--pod-memory-limit",
            "768Mi",
            "--pod-memory-request",
            "256Mi",
        ]),
    )
    .await
    .expect("the platform must start");
    let url = stack.orchestrator.url();
    let workspace = repo_root().join("integration/sample-workspace");
    let desktop = stack
        .desktop("dora", "home/dora/sample", &workspace)
        .expect("desktop");
    let jbazel = |args: &[&str]| {
        let mut cmd = desktop.jbazel(&url, "s1").expect("jbazel");
        cmd.args(args);
        let t = Instant::now();
        let out = cmd.output().expect("jbazel");
        (out, t.elapsed())
    };
    let (out, took) = jbazel(&["build", "//app:hello"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("first build", &out, took)
    );

    // A package whose loading fills the heap: Bazel runs out of memory.
    let hog = desktop.desktop_path.join("hog");
    fs::create_dir_all(&hog).expect("mkdir");
    fs::write(
        hog.join("BUILD"),
        "HOG = [(\"x%d\" % i) * 4000000 for i in range(400)]\n\
         genrule(name = \"hog\", outs = [\"hog.txt\"], cmd = \"echo %d > $@\" % len(HOG))\n",
    )
    .expect("BUILD");
    let (out, took) = jbazel(&["build", "//hog"]);
    eprintln!(
        "lifecycle: out-of-memory build exited {:?} after {took:?}",
        out.status.code()
    );
    assert_eq!(
        out.status.code(),
        Some(33),
        "{}",
        show("out-of-memory build", &out, took)
    );
    // The server is restarted: the next command works.
    fs::remove_dir_all(&hog).expect("rm hog");
    let (out, took) = jbazel(&["build", "//app:hello"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("build after the OOM", &out, took)
    );
    eprintln!("lifecycle: next build after the OOM {took:?}");
    let (_scratch, _) = stack.cleanup().await;
}
