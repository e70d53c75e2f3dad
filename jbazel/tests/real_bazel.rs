//! jbazel against a REAL Bazel 4.2.3 server (Debian bazel-bootstrap), no cluster: the server
//! sees `/work/src` + `/work/out` in its own mount namespace, jbazel runs from the desktop
//! path `P` with `JBAZEL_SERVER`. Needs root, util-linux (unshare, nsenter) and bazel.
//!
//! Each test function has its own filestore, output base, port and server; the functions
//! run one at a time (2 cores, and the Ctrl-C timing must not compete with another build).

mod support;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::{describe, text, BazelServer, Options};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn jbazel_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_jbazel"))
}

fn run(mut c: std::process::Command) -> Output {
    c.output().expect("spawn")
}

fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0))
}

#[test]
fn build_run_mirror_and_wrong_cookie() {
    let _g = serial();
    let extra = vec![
        (
            "tools/where.sh".to_string(),
            "#!/bin/sh\necho \"pwd=$(pwd)\"\necho \"ws=$BUILD_WORKSPACE_DIRECTORY\"\necho \"args=$*\"\n\
             echo \"under=$JBAZEL_UNDER\"\n"
                .to_string(),
        ),
        (
            "tools/BUILD".to_string(),
            "sh_binary(name = \"where\", srcs = [\"where.sh\"])\n".to_string(),
        ),
        // A workspace rc with an import: jbazel must send it as Bazel's client would.
        (".bazelrc".to_string(), "build --jobs=2\ntry-import %workspace%/user.bazelrc\n".to_string()),
        ("user.bazelrc".to_string(), "build --color=no\n".to_string()),
    ];
    let srv = BazelServer::start(Options {
        files: extra,
        ..Default::default()
    })
    .expect("bazel server");
    let jb = jbazel_bin();

    // 1. A build from a subdirectory succeeds and the binary is in the mirror.
    let o = run(srv.jbazel(&jb, "app", &["build", ":hello"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("Build completed successfully"),
        "{}",
        describe(&o)
    );
    let bin = srv.bin("app/hello");
    assert!(bin.is_file(), "{} missing", bin.display());
    let hello = run(std::process::Command::new(&bin));
    assert_eq!(text(&hello.stdout).trim(), "hello from jbazel");

    // The server got the workspace rc and its import (announce_rc shows the sources).
    let o = run(srv.jbazel(&jb, "", &["build", "--announce_rc", "//app:hello"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(err.contains("/work/src/.bazelrc"), "{err}");
    assert!(err.contains("/work/src/user.bazelrc"), "{err}");
    assert!(err.contains("--color=no"), "{err}");

    // 2. `run` executes locally: the exec request's /work paths became desktop paths.
    let o = run(srv.jbazel(&jb, "", &["run", "//app:hello"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    assert_eq!(
        text(&o.stdout).trim(),
        "hello from jbazel",
        "{}",
        describe(&o)
    );
    let o = run(srv.jbazel(&jb, "app", &["run", "//tools:where", "--", "a", "b c"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    let out = text(&o.stdout);
    assert!(
        out.contains(&format!("ws={}\n", srv.desktop.display())),
        "{out}"
    );
    // It runs in its runfiles tree, as under Bazel: the desktop view of it.
    let pwd = out
        .lines()
        .find_map(|l| l.strip_prefix("pwd="))
        .unwrap_or_default();
    assert!(
        pwd.starts_with(&srv.runtime_dir().join("jbazel-run/").display().to_string())
            && pwd.ends_with("/where.runfiles/__main__"),
        "{out}"
    );
    assert!(out.contains("args=a b c"), "{out}");

    // --run_under: a tool built in the workspace runs the binary (here `where` runs
    // `hello`, so it prints hello's path as its argument)...
    let o = run(srv.jbazel(
        &jb,
        "",
        &["run", "--run_under=//tools:where", "//app:hello"],
    ));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    let out = text(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.starts_with("args=") && l.ends_with("/hello")),
        "{}",
        describe(&o)
    );
    // ...and a desktop tool the user names runs with the binary, in a shell.
    let o = run(srv.jbazel(
        &jb,
        "app",
        &[
            "run",
            "--run_under=env JBAZEL_UNDER=1",
            "//tools:where",
            "--",
            "x",
        ],
    ));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    let out = text(&o.stdout);
    assert!(
        out.contains("args=x\n") && out.contains("under=1\n"),
        "{}",
        describe(&o)
    );

    // A failing local binary gives its exit code (jbazel exec'd it).
    // 3. A wrong cookie gives a clear error and Bazel's exit code for it.
    std::fs::write(srv.out.join("server/request_cookie"), "not-the-cookie").expect("write cookie");
    let o = run(srv.jbazel(&jb, "", &["build", "//app:hello"]));
    assert_eq!(code(&o), 36, "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(err.contains("rejected the request cookie"), "{err}");
    assert!(err.contains("server/request_cookie"), "{err}");
}

/// The output of `//runfiles:show_data` under jbazel: every way to its runfiles works.
const SHOW_DATA: &str = "0: data from the workspace\ndir: generated by a genrule\n\
                         manifest: data from the workspace\n";

#[test]
fn run_finds_runfiles_on_the_desktop() {
    let _g = serial();
    let extra = vec![
        // A binary whose runfiles include the pod's @bazel_tools (outside the output base,
        // in Bazel's install base): left out of the view with a warning, the rest works.
        (
            "withlib/BUILD".to_string(),
            "sh_binary(name = \"withlib\", srcs = [\"withlib.sh\"], data = [\"lib.txt\"],\n\
             deps = [\"@bazel_tools//tools/bash/runfiles\"])\n"
                .to_string(),
        ),
        (
            "withlib/withlib.sh".to_string(),
            "#!/bin/sh\ncat \"$RUNFILES_DIR/__main__/withlib/lib.txt\"\n".to_string(),
        ),
        (
            "withlib/lib.txt".to_string(),
            "beside the library\n".to_string(),
        ),
        // A binary that is a link out of the workspace: refused, never run.
        (
            "escape/BUILD".to_string(),
            "sh_binary(name = \"escape\", srcs = [\"escape.sh\"])\n".to_string(),
        ),
    ];
    let srv = BazelServer::start(Options {
        files: extra,
        ..Default::default()
    })
    .expect("bazel server");
    std::os::unix::fs::symlink("/bin/true", srv.src.join("escape/escape.sh")).expect("symlink");
    let jb = jbazel_bin();
    let o = run(srv.jbazel(&jb, "", &["build", "//..."]));
    assert_eq!(code(&o), 0, "//... builds: {}", describe(&o));

    // sh_binary with data: $0.runfiles, RUNFILES_DIR and RUNFILES_MANIFEST_FILE all lead to
    // the files; arguments and the exit code pass through.
    let o = run(srv.jbazel(&jb, "runfiles", &["run", ":show_data"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    assert_eq!(text(&o.stdout), SHOW_DATA, "{}", describe(&o));
    let o = run(srv.jbazel(&jb, "", &["run", "//runfiles:show_data", "--", "3"]));
    assert_eq!(code(&o), 3, "{}", describe(&o));
    assert_eq!(text(&o.stdout), SHOW_DATA, "{}", describe(&o));
    // stdin reaches the binary.
    let mut c = srv.jbazel(
        &jb,
        "",
        &["run", "//runfiles:show_data", "--", "0", "stdin"],
    );
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn jbazel");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"typed by the user\n")
            .expect("write stdin");
    }
    let o = child.wait_with_output().expect("jbazel");
    assert_eq!(code(&o), 0, "{}", describe(&o));
    assert_eq!(
        text(&o.stdout),
        format!("{SHOW_DATA}stdin: typed by the user\n"),
        "{}",
        describe(&o)
    );

    // cc_binary with data: argv[0].runfiles.
    let o = run(srv.jbazel(&jb, "", &["run", "//runfiles:read_data"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    assert_eq!(
        text(&o.stdout),
        "argv0: data from the workspace\n",
        "{}",
        describe(&o)
    );
    let o = run(srv.jbazel(&jb, "", &["run", "//runfiles:read_data", "--", "42"]));
    assert_eq!(code(&o), 42, "{}", describe(&o));

    // How long the view takes to make, and to find again.
    for round in ["created", "reused"] {
        if round == "created" {
            std::fs::remove_dir_all(srv.runtime_dir().join("jbazel-run")).expect("clear views");
        }
        let mut c = srv.jbazel(&jb, "", &["run", "//runfiles:show_data"]);
        c.env("RUST_LOG", "jbazel=debug");
        let o = run(c);
        assert_eq!(code(&o), 0, "{}", describe(&o));
        let err = text(&o.stderr);
        let line = err
            .lines()
            .find(|l| l.contains("desktop runfiles"))
            .unwrap_or_else(|| panic!("no debug line about the view\n{err}"));
        eprintln!("{round}: {line}");
    }
    // The views are private to the user; the pod's tree is unchanged.
    {
        use std::os::unix::fs::PermissionsExt;
        let base = srv.runtime_dir().join("jbazel-run");
        let mode = std::fs::metadata(&base)
            .expect("views")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700, "{}", base.display());
    }
    assert_eq!(
        std::fs::read_link(srv.bin("runfiles/show_data.runfiles/__main__/runfiles/data.txt"))
            .expect("pod runfiles link"),
        PathBuf::from("/work/src/runfiles/data.txt")
    );
    // ...and the pod's Bazel still runs the binary from it.
    let o = run(srv.real_bazel(&["run", "//runfiles:read_data", "--", "5"]));
    assert_eq!(code(&o), 5, "{}", describe(&o));
    assert_eq!(
        text(&o.stdout),
        "argv0: data from the workspace\n",
        "{}",
        describe(&o)
    );

    // Runfiles outside the workspace and the output base are left out, with a warning.
    let o = run(srv.jbazel(&jb, "", &["run", "//withlib"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));
    assert_eq!(text(&o.stdout), "beside the library\n", "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("jbazel: WARNING: ")
            && err.contains("left out of the desktop runfiles")
            && err.contains("bazel_tools/tools/bash/runfiles/runfiles.bash"),
        "{}",
        describe(&o)
    );
    eprintln!(
        "{}",
        err.lines()
            .find(|l| l.contains("WARNING"))
            .unwrap_or_default()
    );

    // A binary that resolves outside the workspace and the output base is refused, and
    // nothing runs (Bazel's exit code for a refused exec request: 37).
    let o = run(srv.jbazel(&jb, "", &["run", "//escape"]));
    assert_eq!(code(&o), 37, "{}", describe(&o));
    let err = text(&o.stderr);
    assert!(
        err.contains("refusing to run /work/out/") && err.contains("/bin/true"),
        "{}",
        describe(&o)
    );
    eprintln!("{}", err.trim_end());
}

#[test]
fn exit_codes_match_the_real_bazel_client() {
    let _g = serial();
    let extra = vec![
        (
            "bad/BUILD".to_string(),
            "cc_binary(name = \"broken\", srcs = [\"broken.cc\"])\n".to_string(),
        ),
        (
            "bad/broken.cc".to_string(),
            "int main() { return this is not C++; }\n".to_string(),
        ),
        (
            "syntax/BUILD".to_string(),
            "cc_library(name = \"x\",, srcs = [\n".to_string(),
        ),
    ];
    let srv = BazelServer::start(Options {
        files: extra,
        ..Default::default()
    })
    .expect("bazel server");
    let jb = jbazel_bin();
    for (what, target) in [
        ("failing target", "//bad:broken"),
        ("BUILD syntax error", "//syntax:x"),
    ] {
        let real = run(srv
            .real_bazel_local(&["build", target])
            .expect("real bazel"));
        let ours = run(srv.jbazel(&jb, "", &["build", target]));
        assert_ne!(
            code(&real),
            0,
            "{what}: real bazel must fail\n{}",
            describe(&real)
        );
        assert_eq!(
            code(&ours),
            code(&real),
            "{what}: jbazel vs bazel\n--- jbazel\n{}\n--- bazel\n{}",
            describe(&ours),
            describe(&real)
        );
    }
    // The same error text reaches the user (compiler / parser message), with the pod's
    // paths when the output is not a terminal...
    let o = run(srv.jbazel(&jb, "", &["build", "//syntax:x"]));
    let err = text(&o.stderr);
    assert!(err.contains("syntax error"), "{}", describe(&o));
    assert!(err.contains("/work/src/syntax/BUILD"), "{}", describe(&o));

    // ...and the desktop's paths on a terminal (`script` gives jbazel one), unless turned off.
    let on_tty = |args: &[&str]| {
        let line = srv.jbazel_shell_line(&jb, "", args);
        run({
            let mut c = std::process::Command::new("script");
            c.args(["-qec", &line, "/dev/null"]).stdin(Stdio::null());
            c
        })
    };
    let o = on_tty(&["build", "//syntax:x"]);
    let shown = text(&o.stdout);
    let desktop_build = format!("{}/syntax/BUILD", srv.desktop.display());
    assert!(shown.contains(&desktop_build), "{}", describe(&o));
    assert!(
        !shown.contains("/work/src/syntax/BUILD"),
        "{}",
        describe(&o)
    );
    let o = on_tty(&["--jbazel-no-translate-paths", "build", "//syntax:x"]);
    let shown = text(&o.stdout);
    assert!(shown.contains("/work/src/syntax/BUILD"), "{}", describe(&o));
    assert!(!shown.contains(&desktop_build), "{}", describe(&o));
}

/// Waits for the child with a deadline; None when it is still running then.
fn wait_child(
    child: &mut std::process::Child,
    deadline: Duration,
) -> Option<std::process::ExitStatus> {
    let mut status = None;
    testkit::wait_until(deadline, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

fn slow_build(srv: &BazelServer, marker: &std::path::Path) -> std::process::Child {
    slow_build_via(srv, marker, None)
}

fn slow_build_via(
    srv: &BazelServer,
    marker: &std::path::Path,
    server: Option<&str>,
) -> std::process::Child {
    let _ = std::fs::remove_file(marker);
    let mut c = srv.jbazel(&jbazel_bin(), "", &["build", "//slow:slow"]);
    if let Some(addr) = server {
        c.env("JBAZEL_SERVER", addr);
    }
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = c.spawn().expect("spawn jbazel");
    support::wait_for("the slow action to start", Duration::from_secs(120), || {
        marker.exists()
    })
    .expect("slow action");
    child
}

fn read_stderr(child: &mut std::process::Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

#[test]
fn interrupts_and_lost_connections_cancel_and_free_the_lock() {
    let _g = serial();
    let extra = vec![(
        "slow/BUILD".to_string(),
        // Runs unsandboxed so it can tell the test it started; sleeps far longer than the test.
        "genrule(name = \"slow\", outs = [\"slow.txt\"], tags = [\"no-sandbox\", \"no-cache\"],\n\
         cmd = \"touch {T}/started; sleep 300; touch $@\")\n"
            .to_string(),
    )];
    let srv = BazelServer::start(Options {
        files: extra,
        ..Default::default()
    })
    .expect("bazel server");
    let jb = jbazel_bin();
    let marker = srv.tmp.path().join("started");
    // Warm up so the timed commands below are not the first build.
    let o = run(srv.jbazel(&jb, "", &["build", "//app:hello"]));
    assert_eq!(code(&o), 0, "{}", describe(&o));

    // SIGINT: the command is cancelled within 2 s and jbazel exits with Bazel's code (8).
    let mut child = slow_build(&srv, &marker);
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let st =
        wait_child(&mut child, Duration::from_secs(30)).expect("jbazel must exit after SIGINT");
    let took = t.elapsed();
    let err = read_stderr(&mut child);
    eprintln!("SIGINT -> jbazel exit: {took:?}");
    assert!(took < Duration::from_secs(2), "cancel took {took:?}\n{err}");
    assert_eq!(st.code(), Some(8), "{st:?}\n{err}");

    // The next command does not wait for the lock: with --noblock_for_lock a busy server
    // would answer exit 9 at once.
    let t = Instant::now();
    let o = run(srv.jbazel(&jb, "", &["--noblock_for_lock", "build", "//app:hello"]));
    assert_eq!(code(&o), 0, "after cancel: {}", describe(&o));
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );

    // Control: while a command runs, --noblock_for_lock does get exit 9 (so the check above
    // could fail), and SIGTERM to jbazel still cancels the command before jbazel dies.
    let mut child = slow_build(&srv, &marker);
    let o = run(srv.jbazel(&jb, "", &["--noblock_for_lock", "build", "//app:hello"]));
    assert_eq!(code(&o), 9, "busy server: {}", describe(&o));
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let st =
        wait_child(&mut child, Duration::from_secs(10)).expect("jbazel must exit after SIGTERM");
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
    // Cancel was sent before jbazel died; the server may still be unwinding for a moment, so
    // the proof is timing: without Cancel the next command would wait for the 300 s action.
    assert_next_command_is_not_blocked(&srv, "after SIGTERM");

    // A lost connection: jbazel sends Cancel through a new connection, then exits with
    // Bazel's abrupt-exit code; the server is free for the next command.
    let proxy = Proxy::start(&srv.addr());
    let mut child = slow_build_via(&srv, &marker, Some(&proxy.addr));
    proxy.cut();
    let st = wait_child(&mut child, Duration::from_secs(10))
        .expect("jbazel must exit when the connection drops");
    let err = read_stderr(&mut child);
    assert_eq!(st.code(), Some(37), "{st:?}\n{err}");
    assert!(err.contains("lost the connection"), "{err}");
    assert_next_command_is_not_blocked(&srv, "after a lost connection");
}

/// A server that dies mid-command (SIGKILL, as the kernel's OOM killer would): jbazel says
/// and exits what the real Bazel client says and exits on the same server, with and without
/// an exit code left by the server in the output base.
#[test]
fn a_server_killed_mid_command_exits_like_the_real_client() {
    let _g = serial();
    let extra = vec![(
        "slow/BUILD".to_string(),
        // Unsandboxed so it can tell the test it started and which process to end; the
        // sleep is the shell itself (exec), so its pid is the one written.
        "genrule(name = \"slow\", outs = [\"slow.txt\"], tags = [\"no-sandbox\", \"no-cache\"],\n\
         cmd = \"echo $$$$ > {T}/action.pid; touch {T}/started; exec sleep 300\")\n"
            .to_string(),
    )];
    let mut srv = BazelServer::start(Options {
        files: extra,
        ..Default::default()
    })
    .expect("bazel server");
    let jb = jbazel_bin();
    let marker = srv.tmp.path().join("started");
    let action_pid = srv.tmp.path().join("action.pid");
    // Where Bazel 4.2.3's server leaves it (CustomExitCodePublisher) and its client reads it.
    let left_file = srv.out.join("exit_code_to_use_on_abrupt_exit");
    let mut fresh = true;
    // Nothing left: 37. What the server writes (`33` after an OutOfMemoryError): that code.
    // With a trailing newline the real client ignores it, and so does jbazel.
    for (left, want) in [(None, 37), (Some("33"), 33), (Some("33\n"), 37)] {
        let mut seen = Vec::new();
        for client in ["bazel", "jbazel"] {
            if !fresh {
                srv.restart().expect("restart the server");
            }
            fresh = false;
            if let Some(code) = left {
                std::fs::write(&left_file, code).expect("write the abrupt-exit code");
            }
            let _ = std::fs::remove_file(&marker);
            let mut c = if client == "bazel" {
                srv.real_bazel(&["build", "//slow:slow"])
            } else {
                srv.jbazel(&jb, "", &["build", "//slow:slow"])
            };
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = c.spawn().expect("spawn the client");
            support::wait_for("the slow action to start", Duration::from_secs(120), || {
                marker.exists()
            })
            .expect("slow action");
            let server = nix::unistd::Pid::from_raw(srv.server_pid);
            nix::sys::signal::kill(server, nix::sys::signal::Signal::SIGKILL)
                .expect("SIGKILL the server");
            let st = wait_child(&mut child, Duration::from_secs(60))
                .unwrap_or_else(|| panic!("{client} must exit when its server dies"));
            let err = read_stderr(&mut child);
            // The orphaned action, so the next server finds the output base free.
            if let Some(pid) = std::fs::read_to_string(&action_pid)
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
            {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            support::wait_for("the server to be gone", Duration::from_secs(20), || {
                !srv.server_alive()
            })
            .expect("server gone");
            eprintln!(
                "{client}, {left:?} left: exit {:?}\n{}",
                st.code(),
                err.trim_end()
            );
            assert!(
                !left_file.exists(),
                "{client} takes the abrupt-exit code, as Bazel's client does"
            );
            seen.push((client, st, err));
        }
        let [(_, real, real_err), (_, ours, ours_err)] = &seen[..] else {
            unreachable!()
        };
        assert_eq!(
            ours.code(),
            real.code(),
            "jbazel vs bazel with {left:?} left\n--- bazel\n{real_err}\n--- jbazel\n{ours_err}"
        );
        assert_eq!(ours.code(), Some(want), "{ours_err}");
        for err in [real_err, ours_err] {
            assert!(
                err.contains("Server terminated abruptly (error code: 14, error message: '"),
                "{err}"
            );
        }
        // jbazel names the server's log where the user can open it: the mirror.
        let log = format!("log file: '{}')", srv.out.join("server/jvm.out").display());
        assert!(ours_err.contains(&log), "{ours_err}");
        assert!(
            real_err.contains("log file: '/work/out/server/jvm.out')"),
            "{real_err}"
        );
    }
}

/// The next (blocking) command finishes quickly: the slow action was cancelled.
fn assert_next_command_is_not_blocked(srv: &BazelServer, when: &str) {
    let t = Instant::now();
    let o = run(srv.jbazel(&jbazel_bin(), "", &["build", "//app:hello"]));
    let took = t.elapsed();
    eprintln!("{when}: next command took {took:?}");
    assert_eq!(code(&o), 0, "{when}: {}", describe(&o));
    assert!(
        took < Duration::from_secs(20),
        "{when}: next command took {took:?}\n{}",
        describe(&o)
    );
}

/// A TCP relay to the server whose open connections can be cut (new ones still pass).
struct Proxy {
    addr: String,
    conns: std::sync::Arc<Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    fn start(upstream: &str) -> Proxy {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = l.local_addr().expect("addr").to_string();
        let conns = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (up, keep) = (upstream.to_string(), conns.clone());
        std::thread::spawn(move || {
            for down in l.incoming().flatten() {
                let Ok(upc) = std::net::TcpStream::connect(&up) else {
                    continue;
                };
                let (Ok(d2), Ok(u2)) = (down.try_clone(), upc.try_clone()) else {
                    continue;
                };
                if let Ok(mut k) = keep.lock() {
                    k.push(down.try_clone().expect("clone"));
                    k.push(upc.try_clone().expect("clone"));
                }
                let (mut d, mut u) = (down, upc);
                let (mut d2, mut u2) = (d2, u2);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut d, &mut u);
                    let _ = u.shutdown(std::net::Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut u2, &mut d2);
                    let _ = d2.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        Proxy { addr, conns }
    }

    /// Cuts every connection open now.
    fn cut(&self) {
        let mut k = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        for c in k.drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[test]
fn dry_run_contacts_nothing() {
    let _g = serial();
    let t = tempfile::tempdir().expect("tempdir");
    let ws = t.path().join("ws");
    std::fs::create_dir_all(ws.join("pkg/sub")).expect("mkdir");
    std::fs::write(ws.join("MODULE.bazel"), "").expect("write");
    std::fs::write(ws.join(".bazelrc"), "build --jobs=3\n").expect("write");
    // Nothing listens on these addresses: contacting either would fail the command.
    let dead = testkit::free_port().expect("port");
    let o = std::process::Command::new(jbazel_bin())
        .args([
            "--nohome_rc",
            "--output_base=/ignored",
            "build",
            "//pkg:all",
        ])
        .current_dir(ws.join("pkg/sub"))
        .env_clear()
        .env("PATH", support::POD_PATH)
        .env("HOME", t.path())
        .env("JBAZEL_DRY_RUN", "1")
        .env("JBAZEL_USER", "alice")
        .env("JBAZEL_SESSION_ID", "s-1")
        .env("JBAZEL_ORCHESTRATOR", format!("http://127.0.0.1:{dead}"))
        .env("JBAZEL_FILESTORE_ROOT", t.path().join("fs"))
        .output()
        .expect("spawn");
    assert_eq!(code(&o), 0, "{}", describe(&o));
    let out = text(&o.stdout);
    let root = std::fs::canonicalize(&ws).expect("canonical");
    let hash = support::md5_hex(&root.to_string_lossy());
    for want in [
        format!("workspace_root: {}\n", root.display()),
        format!("repo_hash: {hash}\n"),
        "user_id: alice\n".to_string(),
        "session_id: s-1\n".to_string(),
        format!("at orchestrator http://127.0.0.1:{dead}"),
        "  build\n".to_string(),
        "  --rc_source=client\n".to_string(),
        "  --rc_source=/work/src/.bazelrc\n".to_string(),
        "  --default_override=1:build=--jobs=3\n".to_string(),
        format!(
            "  --client_env=PATH={}\n",
            jbazel::mirror::FALLBACK_POD_PATH
        ),
        "  --client_cwd=/work/src/pkg/sub\n".to_string(),
        "  //pkg:all\n".to_string(),
    ] {
        assert!(out.contains(&want), "missing {want:?} in\n{out}");
    }
    assert!(
        !out.contains("--client_env=HOME="),
        "desktop HOME must not be sent\n{out}"
    );
    assert!(
        text(&o.stderr).contains("ignoring startup option --output_base=/ignored"),
        "{}",
        describe(&o)
    );

    // Outside a workspace: Bazel's exit code 2 and a clear message.
    let o = std::process::Command::new(jbazel_bin())
        .args(["build", "//x"])
        .current_dir(t.path())
        .env("JBAZEL_DRY_RUN", "1")
        .env("JBAZEL_USER", "alice")
        .output()
        .expect("spawn");
    assert_eq!(code(&o), 2, "{}", describe(&o));
    assert!(
        text(&o.stderr).contains("only supported from within a workspace"),
        "{}",
        describe(&o)
    );
}
