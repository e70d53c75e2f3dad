//! A developer's daily commands, end to end and all real: the Spanner emulator, the
//! orchestrator binary, the local Kubernetes cluster running the project image (supervisor +
//! Bazel 4.2.3), and the jbazel binary in a desktop checkout whose path contains a space.
//!
//! The workspace is `integration/daily-workspace/` (a cc_library with a passing and a
//! failing cc_test, an sh_binary with data, a genrule, a cc_binary, a package without tests
//! and a `manual` sleeping genrule). One pod serves the whole scenario, in numbered parts:
//! 1. offline build/test/coverage and Bazel's exit codes (0, 3, 4);
//! 2. the convenience symlinks resolve on the desktop;
//! 3. `info` into a pipe prints desktop paths;
//! 4. options that name files (BEP json, profile, --override_repository);
//! 5. `run` with arguments and exit code;
//! 6. the next command after `shutdown`, `clean`, `clean --expunge`;
//! 7. the server's command lock (`--noblock_for_lock`, waiting for another command);
//! 8. `supervisor --dry-run` on the desktop (no root, no image files).
//!
//! Each part runs even when an earlier one failed (their outcomes are printed with timings)
//! and the test fails at the end if any part did. Every wait has a deadline. Needs
//! `integration/kubernetes/local.sh up && image/build.sh`, and fails, never skips, when a
//! component is missing.

use std::fs;
use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use integration::platform::{repo_root, show, Desktop};
use integration::stack::TestPlatform;

const USER: &str = "dora";
const SESSION: &str = "daily1";
/// What `//app:daily` prints.
const GREETING: &str = "daily driver says hello";
/// What `//lib:fail_test` prints before it fails.
const FAIL_LINE: &str = "DAILY-DRIVER-EXPECTED-FAILURE";
/// The text of `tools/data.txt`.
const DATA_TEXT: &str = "daily data file: the quick brown fox";

/// The first command also waits for the pod to be scheduled and Bazel to start.
const COLD: Duration = Duration::from_secs(240);
/// Any other command.
const WARM: Duration = Duration::from_secs(120);

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The lines of `text` that contain `needle`, joined.
fn lines_with(text: &str, needle: &str) -> String {
    let found: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    found.join(" | ")
}

/// Collects a pipe as it comes, so a test can look at it while the process runs.
fn collect(mut pipe: impl Read + Send + 'static) -> (Arc<Mutex<Vec<u8>>>, JoinHandle<()>) {
    let buf = Arc::new(Mutex::new(Vec::new()));
    let sink = buf.clone();
    let handle = std::thread::spawn(move || {
        let mut chunk = [0u8; 8192];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
            }
        }
    });
    (buf, handle)
}

/// A jbazel process with its stdout and stderr captured (pipes, as an IDE or a script sees).
struct Spawned {
    what: String,
    child: Child,
    started: Instant,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Spawned {
    fn start(what: &str, cmd: &mut Command) -> Spawned {
        let started = Instant::now();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: jbazel must start: {e}"));
        let (stdout, r1) = collect(child.stdout.take().expect("stdout"));
        let (stderr, r2) = collect(child.stderr.take().expect("stderr"));
        Spawned {
            what: what.to_string(),
            child,
            started,
            stdout,
            stderr,
            readers: vec![r1, r2],
            status: None,
        }
    }

    fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Whether the process is still running (reaps it when it is not).
    fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("try_wait");
        }
        self.status.is_none()
    }

    /// Waits for `cond` on the output so far while the process runs, up to `within`.
    fn wait_for(&mut self, within: Duration, what: &str, cond: impl Fn(&str, &str) -> bool) {
        let held = testkit::wait_until(within, || {
            cond(&self.stdout_so_far(), &self.stderr_so_far()) || !self.running()
        });
        let (out, err) = (self.stdout_so_far(), self.stderr_so_far());
        let running = self.running();
        assert!(
            held && cond(&out, &err),
            "{}: {what} not seen within {within:?} (running: {running}, exit {:?})\n--- stdout\n{out}\n--- stderr\n{err}",
            self.what,
            self.status.and_then(|s| s.code()),
        );
    }

    /// Waits for the exit, up to `within`; past it, SIGTERM (jbazel cancels the command),
    /// then SIGKILL, and a failure with the output so far.
    fn finish(mut self, within: Duration) -> (Output, Duration) {
        let exited = testkit::wait_until(within, || !self.running());
        if !exited {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            if !testkit::wait_until(Duration::from_secs(10), || !self.running()) {
                let _ = self.child.kill();
                let _ = self.child.wait();
            }
            panic!(
                "{}: still running after {within:?}; killed\n--- stdout\n{}\n--- stderr\n{}",
                self.what,
                self.stdout_so_far(),
                self.stderr_so_far()
            );
        }
        let took = self.started.elapsed();
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let out = Output {
            status: self.status.expect("exited"),
            stdout: std::mem::take(&mut *self.stdout.lock().unwrap()),
            stderr: std::mem::take(&mut *self.stderr.lock().unwrap()),
        };
        (out, took)
    }
}

/// What every part needs: the desktop and how to run jbazel there.
struct Day<'a> {
    desktop: &'a Desktop,
    orchestrator: String,
    /// The checkout's root as the user sees it (with a space).
    root: PathBuf,
    /// `R/<user>/<hash>/out`, the mirror of the pod's output base.
    out_dir: PathBuf,
    scratch: PathBuf,
}

impl Day<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self
            .desktop
            .jbazel(&self.orchestrator, SESSION)
            .expect("jbazel binary");
        cmd.args(args);
        cmd
    }

    fn spawn(&self, args: &[&str]) -> Spawned {
        Spawned::start(&format!("jbazel {}", args.join(" ")), &mut self.cmd(args))
    }

    /// Runs jbazel to the end, within `within`.
    fn jbazel_within(&self, within: Duration, args: &[&str]) -> (Output, Duration) {
        let (out, took) = self.spawn(args).finish(within);
        eprintln!(
            "daily: jbazel {} -> exit {:?} in {took:?}",
            args.join(" "),
            out.status.code()
        );
        (out, took)
    }

    fn jbazel(&self, args: &[&str]) -> (Output, Duration) {
        self.jbazel_within(WARM, args)
    }

    /// Runs jbazel and checks its exit code; returns its stdout and stderr.
    fn expect(&self, code: i32, args: &[&str]) -> (String, String) {
        let (out, took) = self.jbazel(args);
        let step = format!("jbazel {}", args.join(" "));
        assert_eq!(out.status.code(), Some(code), "{}", show(&step, &out, took));
        text(&out)
    }
}

/// One numbered part of the day.
type Part = fn(&Day);

/// 1. Offline build, test and coverage, with Bazel's exit codes.
fn part1_offline_test(day: &Day) {
    let (out, took) = day.jbazel_within(COLD, &["build", "//..."]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("first build //... (cold)", &out, took)
    );
    eprintln!("daily: cold build //... in {took:?}");
    day.expect(0, &["test", "//lib:pass_test"]);
    let step = ["test", "//lib:fail_test", "--test_output=errors"];
    let (out, took) = day.jbazel(&step);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        show("failing test", &out, took)
    );
    let (stdout, stderr) = text(&out);
    assert!(
        stdout.contains(FAIL_LINE) || stderr.contains(FAIL_LINE),
        "the failing test's log line is shown\n{}",
        show("failing test", &out, took)
    );
    day.expect(4, &["test", "//notests/..."]);
    day.expect(0, &["coverage", "//lib:pass_test"]);
}

/// 2. The convenience symlinks resolve on the desktop, and the pod still builds with them.
fn part2_convenience_symlinks(day: &Day) {
    day.expect(0, &["test", "//lib:pass_test"]);
    let bin_link = day.root.join("bazel-bin");
    let target = fs::read_link(&bin_link)
        .unwrap_or_else(|e| panic!("{} is a symlink: {e}", bin_link.display()));
    assert!(
        target.starts_with(&day.out_dir) && !target.starts_with("/work/out"),
        "bazel-bin -> {} must point into the mirror {}",
        target.display(),
        day.out_dir.display()
    );
    let binary = day.root.join("bazel-bin/app/daily");
    assert!(binary.is_file(), "{} exists", binary.display());
    let ran = Command::new(&binary)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", binary.display()));
    assert!(
        ran.status.success(),
        "{}",
        show("bazel-bin/app/daily", &ran, Duration::ZERO)
    );
    assert_eq!(String::from_utf8_lossy(&ran.stdout).trim(), GREETING);
    let log = day.root.join("bazel-testlogs/lib/pass_test/test.log");
    let log_text =
        fs::read_to_string(&log).unwrap_or_else(|e| panic!("read {}: {e}", log.display()));
    assert!(
        log_text.contains("pass_test: greeting is"),
        "{}:\n{log_text}",
        log.display()
    );
    day.expect(0, &["build", "//..."]);
    let target = fs::read_link(&bin_link).expect("bazel-bin after the second build");
    assert!(
        target.starts_with(&day.out_dir),
        "bazel-bin -> {} after the second build",
        target.display()
    );
}

/// 3. `info` into a pipe prints the desktop's paths.
fn part3_info(day: &Day) {
    let (stdout, stderr) = day.expect(0, &["info"]);
    let all = format!("--- stdout\n{stdout}\n--- stderr\n{stderr}");
    let value = |key: &str| -> String {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}: ")))
            .unwrap_or_else(|| panic!("info has no {key}\n{all}"))
            .to_string()
    };
    assert_eq!(
        Path::new(&value("workspace")),
        day.root,
        "workspace is the desktop root\n{all}"
    );
    for key in [
        "output_base",
        "execution_root",
        "bazel-bin",
        "bazel-testlogs",
    ] {
        let v = value(key);
        assert!(
            Path::new(&v).starts_with(&day.out_dir),
            "{key}: {v} must be under the mirror {}\n{all}",
            day.out_dir.display()
        );
    }
    let leaks: Vec<&str> = stdout.lines().filter(|l| l.contains("/work/")).collect();
    assert!(leaks.is_empty(), "pod paths in info: {leaks:#?}\n{all}");

    let (stdout, stderr) = day.expect(0, &["info", "output_base"]);
    let v = stdout.trim();
    assert!(
        Path::new(v).starts_with(&day.out_dir) && !v.contains("/work/"),
        "info output_base: {v:?} must be under the mirror {}\n--- stderr\n{stderr}",
        day.out_dir.display()
    );
}

/// 4. Options that name files: outside the workspace, inside it, and a refused one.
fn part4_file_flags(day: &Day) {
    // /tmp/jbazel-daily-XXXX/bep out/: neither the workspace nor the mirror.
    let dir = day.scratch.join("bep out");
    fs::create_dir_all(&dir).expect("BEP dir");
    let bep = dir.join("bep.json");
    let flag = format!("--build_event_json_file={}", bep.display());
    day.expect(0, &["build", "//app:daily", &flag]);
    let json = fs::read_to_string(&bep)
        .unwrap_or_else(|e| panic!("the BEP file {} on the desktop: {e}", bep.display()));
    assert!(!json.trim().is_empty(), "{} is empty", bep.display());
    let leaks: Vec<&str> = json
        .lines()
        .filter(|l| l.contains("file:///work/"))
        .collect();
    assert!(leaks.is_empty(), "pod URIs in the BEP: {leaks:#?}");
    let _ = fs::remove_dir_all(&dir);

    let profile = day.root.join("prof.gz");
    let _ = fs::remove_file(&profile);
    day.expect(0, &["build", "//app:daily", "--profile=prof.gz"]);
    assert!(profile.is_file(), "{} exists", profile.display());

    let (_, stderr) = day.expect(
        2,
        &[
            "build",
            "//app:daily",
            "--override_repository=foo=/opt/nowhere",
        ],
    );
    assert!(
        stderr.contains("outside the workspace"),
        "--override_repository outside the workspace:\n{stderr}"
    );
}

/// 5. `run` runs the binary on the desktop with its arguments and exit code.
fn part5_run(day: &Day) {
    let (out, took) = day.jbazel(&["run", "//tools:show_data", "--", "7"]);
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        show("run show_data -- 7", &out, took)
    );
    let (stdout, _) = text(&out);
    assert!(
        stdout.contains(DATA_TEXT) && stdout.contains("banner made by a genrule"),
        "{}",
        show("run show_data -- 7", &out, took)
    );
    let (out, took) = day.jbazel(&["run", "//app:daily"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("run //app:daily", &out, took)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(GREETING),
        "{}",
        show("run //app:daily", &out, took)
    );
}

/// 6. The next command after the server went away (shutdown, clean, clean --expunge).
fn part6_server_goes_away(day: &Day) {
    day.expect(0, &["shutdown"]);
    let (out, took) = day.jbazel(&["build", "//app:daily"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("build after shutdown", &out, took)
    );
    let (_, stderr) = text(&out);
    let waited = stderr.contains("waiting for the Bazel server");
    eprintln!(
        "daily: {}",
        lines_with(&stderr, "waiting for the Bazel server")
    );
    eprintln!("daily: build after shutdown in {took:?} (waited with progress: {waited})");

    day.expect(0, &["clean"]);
    day.expect(0, &["build", "//app:daily"]);

    // As local Bazel: exit 0, no error, the output base emptied and the convenience links
    // gone. In the pod the output base is a mount point, which Bazel can neither rmdir nor
    // (for --expunge_async) move aside; jbazel finishes the expunge.
    expunge_as_locally(day, "--expunge_async");
    let (out, took) = day.jbazel_within(Duration::from_secs(120), &["build", "//app:daily"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("build after clean --expunge_async", &out, took)
    );
    expunge_as_locally(day, "--expunge");
    let (out, took) = day.jbazel_within(Duration::from_secs(120), &["build", "//app:daily"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("build after clean --expunge", &out, took)
    );
    let (_, stderr) = text(&out);
    eprintln!(
        "daily: build after clean --expunge in {took:?} (waited with progress: {})",
        stderr.contains("waiting for the Bazel server")
    );
}

/// `clean <flag>` ends as local Bazel's: exit 0, no ERROR, the convenience links gone and
/// the output base emptied.
fn expunge_as_locally(day: &Day, flag: &str) {
    let links = |root: &Path| -> Vec<String> {
        fs::read_dir(root)
            .expect("list the workspace root")
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_symlink()))
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("bazel-"))
            .collect()
    };
    assert!(
        !links(&day.root).is_empty() && day.out_dir.join("execroot").exists(),
        "nothing to expunge before clean {flag}"
    );
    let (out, took) = day.jbazel(&["clean", flag]);
    let (_, stderr) = text(&out);
    eprintln!(
        "daily: clean {flag} -> exit {:?} in {took:?}\n--- stderr\n{stderr}",
        out.status.code(),
    );
    let step = format!("clean {flag}");
    assert_eq!(out.status.code(), Some(0), "{}", show(&step, &out, took));
    assert!(!stderr.contains("ERROR"), "{}", show(&step, &out, took));
    assert_eq!(
        links(&day.root),
        Vec::<String>::new(),
        "links left after {step}"
    );
    assert!(
        !day.out_dir.join("execroot").exists() && !day.out_dir.join("action_cache").exists(),
        "{step} did not empty the output base: {:?}",
        fs::read_dir(&day.out_dir).map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
}

/// Part 8, `supervisor --dry-run` on the desktop, as a user without privileges and without
/// the image's files: it prints the mount plan for this repository and names what the pod
/// would need (the image's system rc), exits 0, and creates nothing.
fn part8_dry_run(day: &Day) {
    let repo_dir = day.out_dir.parent().expect("R/U/H");
    let hash = repo_dir
        .file_name()
        .and_then(|h| h.to_str())
        .expect("hash")
        .to_string();
    let root = repo_dir
        .parent()
        .and_then(Path::parent)
        .expect("filestore root");
    let supervisor = integration::platform::workspace_binary("supervisor")
        .expect("cargo build --workspace --bins first");
    let missing_rc = day.scratch.join("no-image/system.bazelrc");
    let listing = |dir: &Path| -> Vec<PathBuf> {
        fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    let before = listing(repo_dir);
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&supervisor)
        .arg("--dry-run")
        .env("USER_ID", USER)
        .env("REPO_HASH", &hash)
        .env("MOCK_FILESTORE_PATH", root)
        .env("SYSTEM_BAZELRC", &missing_rc)
        .output()
        .expect("run supervisor --dry-run");
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let src = repo_dir.join("src");
    assert!(
        stdout.contains(&src.display().to_string()) && stdout.contains("/work/src"),
        "the plan binds this repository's src at /work/src:\n{stdout}"
    );
    assert!(
        stdout.contains(&format!("MISSING system bazelrc {}", missing_rc.display())),
        "names the image file a desktop lacks:\n{stdout}"
    );
    assert!(!missing_rc.exists(), "a dry run creates nothing");
    assert_eq!(listing(repo_dir), before, "a dry run creates nothing");
}

/// 7. The server's command lock: refused with --noblock_for_lock, waited for without it.
fn part7_lock(day: &Day) {
    let mut slow = day.spawn(&["build", "//slow:sleepy"]);
    slow.wait_for(
        Duration::from_secs(60),
        "the slow build's analysis",
        |_, err| err.contains("Found 1 target") || err.contains("Analyzed target //slow:sleepy"),
    );
    assert!(slow.running(), "the slow build still holds the lock");

    let (out, took) = day.jbazel(&["--noblock_for_lock", "build", "//app:daily"]);
    assert!(
        slow.running(),
        "the slow build was still running during --noblock_for_lock"
    );
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        show("--noblock_for_lock build", &out, took)
    );
    let (_, stderr) = text(&out);
    assert!(
        stderr.contains("Another command"),
        "{}",
        show("--noblock_for_lock build", &out, took)
    );
    eprintln!(
        "daily: --noblock_for_lock said: {}",
        lines_with(&stderr, "Another command")
    );

    let mut waiter = day.spawn(&["build", "//app:daily"]);
    waiter.wait_for(
        Duration::from_secs(30),
        "Bazel's 'Another command' line",
        |_, err| err.contains("Another command"),
    );
    assert!(
        slow.running(),
        "the second build announced its wait while the slow build ran"
    );
    assert!(waiter.running(), "the second build waits for the lock");
    let (slow_out, slow_took) = slow.finish(Duration::from_secs(60));
    let slow_done = Instant::now();
    assert_eq!(
        slow_out.status.code(),
        Some(0),
        "{}",
        show("the slow build", &slow_out, slow_took)
    );
    let (out, took) = waiter.finish(Duration::from_secs(60));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        show("the waiting build", &out, took)
    );
    eprintln!(
        "daily: the waiting build said: {}",
        lines_with(&text(&out).1, "Another command")
    );
    eprintln!(
        "daily: slow build {slow_took:?}; the waiting build ended {:?} after it, {took:?} in all",
        slow_done.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developers_daily_commands_on_the_remote_server() {
    let begun = Instant::now();
    let stack = TestPlatform::start("daily")
        .await
        .expect("the platform must start");

    // The checkout's path has spaces, as many desktops' do.
    let workspace = repo_root().join("integration/daily-workspace");
    let desktop = stack
        .desktop(USER, "desk top/my repo", &workspace)
        .expect("desktop");
    let day = Day {
        desktop: &desktop,
        orchestrator: stack.orchestrator.url(),
        root: desktop.desktop_path.clone(),
        out_dir: desktop.out_dir(),
        scratch: stack.scratch().to_path_buf(),
    };
    assert!(day.root.to_string_lossy().contains(' '));

    let parts: [(&str, Part); 8] = [
        ("1 offline build/test/coverage", part1_offline_test),
        ("2 convenience symlinks", part2_convenience_symlinks),
        ("3 info into a pipe", part3_info),
        ("4 file flags", part4_file_flags),
        ("5 run", part5_run),
        ("6 after the server goes away", part6_server_goes_away),
        ("7 the command lock", part7_lock),
        ("8 supervisor --dry-run on the desktop", part8_dry_run),
    ];
    let mut results = Vec::new();
    for (name, part) in parts {
        eprintln!("daily: === part {name}");
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| part(&day)));
        let took = started.elapsed();
        let failure = outcome.err().map(|p| {
            p.downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into())
        });
        eprintln!(
            "daily: === part {name}: {} in {took:?}",
            if failure.is_some() {
                "FAILED"
            } else {
                "passed"
            }
        );
        results.push((name, took, failure));
    }

    let summary: Vec<String> = results
        .iter()
        .map(|(name, took, f)| {
            format!(
                "part {name}: {} in {took:?}",
                if f.is_some() { "FAILED" } else { "passed" }
            )
        })
        .collect();
    eprintln!(
        "daily: summary ({:?} in all)\n{}",
        begun.elapsed(),
        summary.join("\n")
    );

    drop(day);
    drop(desktop);
    let _ = stack.cleanup().await.1;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|(name, _, f)| f.map(|f| format!("part {name}:\n{f}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
