//! End to end, all real: the Spanner emulator, the orchestrator binary, the local Kubernetes
//! cluster running the project image (supervisor + Bazel 4.2.3), and the jbazel binary in a
//! desktop checkout that is a bind mount of the filestore.
//!
//! One scenario walks a user's day, step by step, on one namespace: the first build spawns
//! the pod; the second reuses it; a failing target's exit code comes through; `run` runs
//! the binary on the desktop; Ctrl-C cancels the remote command; a pod deleted by hand is respawned; a desktop bounce (new
//! SessionId) replaces the pod. Needs `integration/kubernetes/local.sh up && image/build.sh`
//! (integration/test.sh does it) and fails, never skips, when a component is missing.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use orchestrator::pods::manifest::LABEL_SESSION;

use integration::kubernetes::{delete_pod_and_wait, live_server_pods};
use integration::platform::{repo_root, show, Desktop};
use integration::stack::TestPlatform;

const USER: &str = "alice";

fn run(cmd: &mut std::process::Command) -> (Output, Duration) {
    let started = Instant::now();
    let out = cmd.output().expect("jbazel must start");
    (out, started.elapsed())
}

/// Whether the slow genrule's `sleep 73` is running (in the pod; /proc shows it here).
fn sleeping_action_runs() -> bool {
    fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .any(|e| fs::read(e.path().join("cmdline")).is_ok_and(|c| c == b"sleep\x0073\x00"))
        })
        .unwrap_or(false)
}

fn uid(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_day_on_the_remote_bazel_server() {
    let stack = TestPlatform::start("e2e")
        .await
        .expect("the platform must start");
    let (orchestrator, namespace) = (&stack.orchestrator, &stack.namespace);
    let filestore = stack.filestore.clone();
    let pods = namespace.user_pods(USER);

    let desktop_path = stack.scratch().join("home/alice/sample");
    let workspace = repo_root().join("integration/sample-workspace");
    let desktop = Desktop::create(&filestore, USER, &desktop_path, &workspace).expect("desktop");
    let jbazel = |session: &str, args: &[&str]| {
        let mut cmd = desktop
            .jbazel(&orchestrator.url(), session)
            .expect("jbazel binary");
        cmd.args(args);
        run(&mut cmd)
    };

    // 1. The first build spawns the pod and builds in it; the artifact is in the mirror and
    //    runs on the desktop.
    let (out, cold) = jbazel("day1", &["build", "//..."]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("first build", &out, cold)
    );
    assert!(
        orchestrator
            .log()
            .contains(&format!("Creating Pod for repo {}", desktop.repo_hash)),
        "orchestrator log:\n{}",
        orchestrator.log()
    );
    let first = live_server_pods(&pods, &desktop.repo_hash)
        .await
        .expect("list pods");
    assert_eq!(first.len(), 1, "exactly one server pod");
    let binary = desktop.artifact("app", "hello");
    let ran = std::process::Command::new(&binary)
        .output()
        .unwrap_or_else(|e| panic!("mirror binary {}: {e}", binary.display()));
    assert_eq!(
        String::from_utf8_lossy(&ran.stdout).trim(),
        "hello from jbazel"
    );

    // 2. A second build reuses the READY server: same pod, faster.
    let (out, warm) = jbazel("day1", &["build", "//..."]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("second build", &out, warm)
    );
    let second = live_server_pods(&pods, &desktop.repo_hash)
        .await
        .expect("list pods");
    assert_eq!(second.len(), 1);
    assert_eq!(
        uid(&second[0]),
        uid(&first[0]),
        "the READY server is reused"
    );
    assert!(warm < cold, "warm {warm:?} must beat cold {cold:?}");
    eprintln!("e2e: cold build {cold:?}, warm build {warm:?}");

    // 3. A failing target: Bazel's exit code (1: build failed) through the whole chain.
    let broken = desktop.desktop_path.join("broken");
    fs::create_dir_all(&broken).unwrap();
    fs::write(
        broken.join("BUILD"),
        "cc_binary(name = \"broken\", srcs = [\"broken.cc\"])\n",
    )
    .unwrap();
    fs::write(broken.join("broken.cc"), "int main() { return missing; }\n").unwrap();
    let (out, took) = jbazel("day1", &["build", "//broken:broken"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        show("failing build", &out, took)
    );
    fs::remove_dir_all(&broken).unwrap();

    // 4. Ctrl-C cancels the remote command through the port-forward hop: jbazel exits with
    //    Bazel's 8 at once, and the next command does not wait for the lock (the genrule
    //    would hold it for 73 s).
    let slow = desktop.desktop_path.join("slow");
    fs::create_dir_all(&slow).unwrap();
    fs::write(
        slow.join("BUILD"),
        "genrule(name = \"slow\", outs = [\"slow.txt\"], cmd = \"sleep 73; echo done > $@\")\n",
    )
    .unwrap();
    let mut cmd = desktop
        .jbazel(&orchestrator.url(), "day1")
        .expect("jbazel binary");
    let mut child = cmd
        .args(["build", "//slow"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("jbazel must start");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("Found 1 target")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => panic!("the slow build never started:\n{}", seen.join("\n")),
        }
    }
    // Interrupt the running action, not the moment before it starts: Bazel 4 can miss an
    // interrupt that lands between analysis and the spawn (the local client too), and
    // then cancels only when the action ends. The pod's processes are visible from here.
    assert!(
        testkit::wait_until(Duration::from_secs(60), sleeping_action_runs),
        "the slow genrule's `sleep 73` never ran:\n{}",
        seen.join("\n")
    );
    let interrupted = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let status = child.wait().expect("wait");
    let cancel_took = interrupted.elapsed();
    assert_eq!(status.code(), Some(8), "Bazel's 'interrupted' exit code");
    assert!(
        cancel_took < Duration::from_secs(2),
        "cancel took {cancel_took:?}"
    );
    fs::remove_dir_all(&slow).unwrap();
    let (out, took) = jbazel("day1", &["build", "//app:hello"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("after cancel", &out, took)
    );
    assert!(
        took < Duration::from_secs(30),
        "the next command waited {took:?} for the lock"
    );
    eprintln!("e2e: Ctrl-C cancelled in {cancel_took:?}; next build {took:?}");

    // 5. `run` builds remotely and runs the binary here, on the desktop.
    let (out, took) = jbazel("day1", &["run", "//app:hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", show("run", &out, took));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("hello from jbazel"),
        "{}",
        show("run", &out, took)
    );

    // 6. A pod deleted by hand is respawned by the next build.
    let name = first[0].metadata.name.clone().unwrap_or_default();
    delete_pod_and_wait(&pods, &name, 0, Duration::from_secs(60))
        .await
        .expect("delete pod");
    let (out, took) = jbazel("day1", &["build", "//..."]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("respawn build", &out, took)
    );
    let respawned = live_server_pods(&pods, &desktop.repo_hash)
        .await
        .expect("list pods");
    assert_eq!(respawned.len(), 1);
    assert_ne!(uid(&respawned[0]), uid(&first[0]), "a new pod");

    // 7. A desktop bounce (new SessionId): the old pod goes, a new one builds.
    let (out, took) = jbazel("day2", &["build", "//..."]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("bounce build", &out, took)
    );
    let bounced = live_server_pods(&pods, &desktop.repo_hash)
        .await
        .expect("list pods");
    assert_eq!(bounced.len(), 1, "the old session's pod is gone");
    assert_ne!(uid(&bounced[0]), uid(&respawned[0]));
    let labels = bounced[0].metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels.get(LABEL_SESSION).map(String::as_str), Some("day2"));

    // 8. The pods pushed their readiness themselves (the pod-bound token, read by the
    // supervisor through the secret dir its pivot hides), not only the reconciler's watch.
    let log = stack.orchestrator.log();
    let pushed = log.matches("ReportReady accepted").count();
    assert!(
        pushed >= 3,
        "each of the three pods reported itself ready ({pushed} accepted):\n{}",
        integration::platform::tail(&log, 40)
    );

    drop(desktop);
    let (_scratch, _) = stack.cleanup().await;
    assert!(
        Path::new(&filestore).exists(),
        "the user's files outlive the pods"
    );
}
