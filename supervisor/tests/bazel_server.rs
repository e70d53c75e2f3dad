//! The default job against the real Bazel (Debian's 4.2.3) and a copy of the sample
//! workspace: ready within a deadline, Ping with the cookies, the jbazel files published,
//! ReportReady pushed, restart after the Java server is killed, and SIGTERM -> clean exit 0
//! within the grace period with no Java process left.
//!
//! ReportReady goes to a recording gRPC server in this test that speaks the orchestrator's
//! real API (`proto::orchestrator`): it checks the supervisor's side of the wire. The real
//! orchestrator is exercised end to end by the `integration` crate.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use proto::command_server::command_server_client::CommandServerClient;
use proto::command_server::PingRequest;
use proto::orchestrator::orchestrator_server::{Orchestrator, OrchestratorServer};
use proto::orchestrator::{
    GetServerRequest, GetServerResponse, ReportReadyRequest, ReportReadyResponse, ServerEvent,
    WatchServerRequest,
};
use tonic::{Request, Response, Status};

/// Bazel's start (2-4 s measured) plus a wide margin for a loaded 2-core CI machine.
const READY_DEADLINE: Duration = Duration::from_secs(120);
const GRACE_SECS: u64 = 20;

#[derive(Clone, Default)]
struct RecordingOrchestrator {
    reports: Arc<Mutex<Vec<ReportReadyRequest>>>,
}

#[tonic::async_trait]
impl Orchestrator for RecordingOrchestrator {
    async fn get_server(
        &self,
        _: Request<GetServerRequest>,
    ) -> Result<Response<GetServerResponse>, Status> {
        Err(Status::unimplemented(
            "test orchestrator records ReportReady only",
        ))
    }

    type WatchServerStream = std::pin::Pin<
        Box<dyn tonic::codegen::tokio_stream::Stream<Item = Result<ServerEvent, Status>> + Send>,
    >;

    async fn watch_server(
        &self,
        _: Request<WatchServerRequest>,
    ) -> Result<Response<Self::WatchServerStream>, Status> {
        Err(Status::unimplemented(
            "test orchestrator records ReportReady only",
        ))
    }

    async fn report_ready(
        &self,
        req: Request<ReportReadyRequest>,
    ) -> Result<Response<ReportReadyResponse>, Status> {
        self.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(req.into_inner());
        Ok(Response::new(ReportReadyResponse { accepted: true }))
    }
}

/// Starts the recording orchestrator on a free loopback port; returns its URL.
fn start_orchestrator(rt: &tokio::runtime::Runtime, svc: RecordingOrchestrator) -> String {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .expect("bind orchestrator");
    let addr = listener.local_addr().expect("addr");
    rt.spawn(
        tonic::transport::Server::builder()
            .add_service(OrchestratorServer::new(svc))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}

/// Ping the server ourselves with the cookies from the output base.
fn ping(rt: &tokio::runtime::Runtime, out: &std::path::Path, port: u16) -> Result<(), String> {
    let req_cookie =
        std::fs::read_to_string(out.join(mirror::REQUEST_COOKIE)).map_err(|e| e.to_string())?;
    let resp_cookie =
        std::fs::read_to_string(out.join(mirror::RESPONSE_COOKIE)).map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut c = CommandServerClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .map_err(|e| e.to_string())?;
        let r = c
            .ping(PingRequest {
                cookie: req_cookie.trim().to_owned(),
            })
            .await
            .map_err(|e| e.to_string())?;
        if r.into_inner().cookie == resp_cookie.trim() {
            Ok(())
        } else {
            Err("response cookie mismatch".to_owned())
        }
    })
}

struct Setup {
    fs: Filestore,
    sup: Running,
    rc: std::path::PathBuf,
}

fn start_supervisor(mode: &str, orchestrator: Option<&str>) -> Setup {
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let mut env = vec![(pod_env::POD_NAME, "bazel-server-alice-01234567")];
    env.extend(orchestrator.map(|addr| (pod_env::ORCHESTRATOR_ADDR, addr)));
    let sup = fs.start_bazel_job_in(mode, &rc, "supervisor.log", &env);
    Setup { fs, sup, rc }
}

fn probe(port: u16) -> i32 {
    std::process::Command::new(supervisor_bin())
        .args(["probe", "--health-addr", &format!("127.0.0.1:{port}")])
        .output()
        .expect("probe runs")
        .status
        .code()
        .unwrap_or(-1)
}

/// Waits for /readyz 200; asserts a 503 was seen first. Returns the time it took.
fn wait_ready(s: &Setup) -> Duration {
    let t0 = Instant::now();
    let mut saw_503 = false;
    let ready = wait_until(READY_DEADLINE, || match s.sup.readyz() {
        Some((200, _)) => true,
        Some((503, _)) => {
            saw_503 = true;
            false
        }
        _ => false,
    });
    assert!(
        ready,
        "not ready within {READY_DEADLINE:?}:\n{}",
        s.sup.logs()
    );
    assert!(saw_503, "/readyz must say 503 while Bazel starts");
    t0.elapsed()
}

/// SIGTERM: exit 0 within the grace period, the server and everything in its mount
/// namespace gone.
fn sigterm_cleanly(s: &mut Setup) {
    let server = s.sup.server_pid().expect("server pid");
    assert!(is_bazel_server(server));
    let ns = mnt_ns_of(server).expect("server's mount namespace");
    let t0 = Instant::now();
    signal(s.sup.pid(), Signal::SIGTERM);
    let status = wait_child(&mut s.sup.child, Duration::from_secs(GRACE_SECS + 10))
        .unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", s.sup.logs()));
    let took = t0.elapsed();
    assert_eq!(status.code(), Some(0), "{}", s.sup.logs());
    assert!(took < Duration::from_secs(GRACE_SECS), "took {took:?}");
    assert!(
        !is_bazel_server(server),
        "java server {server} still running"
    );
    assert!(
        wait_until(Duration::from_secs(5), || processes_in_mnt_ns(&ns)
            .is_empty()),
        "processes left in the pod's mount namespace: {:?}",
        processes_in_mnt_ns(&ns)
    );
    eprintln!("SIGTERM -> exit 0 in {took:?}");
}

#[test]
fn direct_mode_ready_ping_restart_and_clean_shutdown() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let orch = RecordingOrchestrator::default();
    let addr = start_orchestrator(&rt, orch.clone());
    let mut s = start_supervisor("direct", Some(&addr));

    // Ready within the deadline, and the probe agrees.
    let took = wait_ready(&s);
    eprintln!("ready after {took:?}");
    assert_eq!(probe(s.sup.health_port), 0, "probe exits 0 when ready");
    assert_eq!(
        http_get(s.sup.health_port, "/healthz").map(|r| r.0),
        Some(200)
    );
    ping(&rt, &s.sup.out, s.sup.command_port).expect("Ping with the request cookie");
    let port_file =
        std::fs::read_to_string(s.sup.out.join("server/command_port")).expect("port file");
    assert_eq!(
        port_file.trim(),
        format!("127.0.0.1:{}", s.sup.command_port)
    );

    // The server is the supervisor's (re-parented) child, in the pivoted view.
    let first = s.sup.server_pid().expect("pid file");
    assert!(is_bazel_server(first));
    let ppid = procfs::process::Process::new(first)
        .and_then(|p| p.stat())
        .expect("stat")
        .ppid;
    assert_eq!(
        ppid,
        s.sup.pid(),
        "the daemonized server is re-parented to the subreaper"
    );
    assert_eq!(
        mnt_ns_of(first),
        mnt_ns_of(s.sup.pid()),
        "server runs in the pivoted view"
    );
    let cmdline = std::fs::read_to_string(format!("/proc/{first}/cmdline")).expect("cmdline");
    assert!(
        cmdline.contains("/work/out"),
        "the server uses the pivoted output base: {cmdline}"
    );

    // Published for jbazel.
    let rc = std::fs::read_to_string(s.sup.out.join(mirror::SYSTEM_RC)).expect("rc published");
    assert_eq!(rc, std::fs::read_to_string(&s.rc).expect("rc"));
    let env = std::fs::read_to_string(s.sup.out.join(mirror::CLIENT_ENV)).expect("env published");
    assert!(env.starts_with("PATH=/"), "{env}");

    // Pushed to the orchestrator.
    let reports = || {
        orch.reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    };
    assert!(
        wait_until(Duration::from_secs(20), || !reports().is_empty()),
        "no ReportReady:\n{}",
        s.sup.logs()
    );
    let r = &reports()[0];
    assert_eq!(
        (
            r.user_id.as_str(),
            r.repo_hash.as_str(),
            r.session_id.as_str()
        ),
        (USER, HASH, "session-1")
    );
    assert_eq!(
        (r.pod_name.as_str(), r.pod_ip.as_str()),
        ("bazel-server-alice-01234567", "127.0.0.1")
    );
    assert_eq!(r.command_port, u32::from(s.sup.command_port));

    // Kill the Java server: the supervisor notices, reports not ready, and starts a new one.
    signal(first, Signal::SIGKILL);
    let restarted = wait_until(READY_DEADLINE, || {
        s.sup
            .server_pid()
            .is_some_and(|p| p != first && is_bazel_server(p))
            && matches!(s.sup.readyz(), Some((200, _)))
    });
    assert!(restarted, "no restart after kill:\n{}", s.sup.logs());
    assert!(!is_bazel_server(first));
    ping(&rt, &s.sup.out, s.sup.command_port).expect("Ping the new server");
    assert!(
        s.sup.logs().contains("Bazel server gone; restarting"),
        "{}",
        s.sup.logs()
    );
    assert!(
        wait_until(Duration::from_secs(20), || reports().len() >= 2),
        "readiness re-reported after the restart"
    );

    sigterm_cleanly(&mut s);
    assert!(
        s.sup.logs().contains("how=Protocol"),
        "clean protocol shutdown:\n{}",
        s.sup.logs()
    );
    drop(s.fs);
}

#[test]
fn bwrap_mode_ready_and_clean_shutdown_without_orchestrator() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut s = start_supervisor("bwrap", None);
    let took = wait_ready(&s);
    eprintln!("bwrap: ready after {took:?}");
    ping(&rt, &s.sup.out, s.sup.command_port).expect("Ping");
    assert!(
        s.sup.logs().contains("ORCHESTRATOR_ADDR not set"),
        "{}",
        s.sup.logs()
    );
    let server = s.sup.server_pid().expect("pid");
    assert_ne!(
        mnt_ns_of(server),
        mnt_ns_of(s.sup.pid()),
        "bwrap: the server runs in bwrap's view"
    );
    let ppid = procfs::process::Process::new(server)
        .and_then(|p| p.stat())
        .expect("stat")
        .ppid;
    assert_eq!(
        ppid,
        s.sup.pid(),
        "bwrap: the server is re-parented to the subreaper too"
    );
    sigterm_cleanly(&mut s);
}

#[test]
fn probe_fails_when_nothing_listens() {
    assert_eq!(probe(free_port()), 1);
}

#[test]
fn sigterm_while_the_server_starts_leaves_nothing_behind() {
    // SIGTERM (a) as soon as the supervisor starts the client, (b) once the half-started
    // JVM has written its pid file but before it answers Ping.
    for trigger in ["client started", "pid file written"] {
        let mut s = start_supervisor("direct", None);
        let pid = s.sup.pid();
        let pid_file = s.sup.out.join("server/server.pid.txt");
        let reached = wait_until(Duration::from_secs(60), || match trigger {
            "client started" => s.sup.logs().contains("starting the Bazel server"),
            _ => pid_file.exists(),
        });
        assert!(reached, "{trigger}: {}", s.sup.logs());
        let ns = mnt_ns_of(pid).expect("supervisor's mount namespace");
        signal(pid, Signal::SIGTERM);
        let status = wait_child(&mut s.sup.child, Duration::from_secs(GRACE_SECS + 10))
            .unwrap_or_else(|| panic!("{trigger}: no exit after SIGTERM:\n{}", s.sup.logs()));
        assert_eq!(status.code(), Some(0), "{trigger}: {}", s.sup.logs());
        assert!(
            wait_until(Duration::from_secs(5), || processes_in_mnt_ns(&ns)
                .is_empty()),
            "{trigger}: left in the pod's mount namespace: {:?}\n{}",
            processes_in_mnt_ns(&ns),
            s.sup.logs()
        );
        if let Some(server) = s.sup.server_pid() {
            assert!(
                !is_bazel_server(server),
                "{trigger}: server {server} survived"
            );
        }
    }
}

/// The uid the tree is given: no passwd entry in the image (Bazel needs USER then).
const OWNER: u32 = 54321;
/// Another non-root uid, for "cannot read the cookie".
const OTHER: u32 = 65534;

/// A tree owned by a non-root uid: the Bazel server and its actions run as the owner,
/// everything in out/ belongs to the owner (the supervisor's jbazel/* and lock included),
/// the cookies are 0600 in a 0700 server/, and another uid cannot read the request cookie.
fn bazel_runs_as_the_tree_owner(mode: &str) {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let fs = Filestore::new();
    let rc = fs.with_sample_workspace();
    let pkg = fs.src().join("who");
    std::fs::create_dir_all(&pkg).expect("mkdir");
    std::fs::write(
        pkg.join("BUILD"),
        "genrule(name = 'who', outs = ['who.txt'], \
         cmd = \"grep -E '^(Uid|Gid):' /proc/self/status > $@\")\n",
    )
    .expect("BUILD");
    fs.own_by(OWNER);
    let mut sup = fs.start_bazel_job_in(
        mode,
        &rc,
        "supervisor.log",
        &[(pod_env::POD_NAME, "bazel-server-alice-owner")],
    );
    let command_port = sup.command_port;
    assert!(
        sup.wait_ready(READY_DEADLINE),
        "{mode}: not ready:\n{}",
        sup.logs()
    );
    let server = sup.server_pid().expect("server pid");
    let status = status_lines(server);
    for want in [
        format!("Uid: {OWNER} {OWNER} {OWNER} {OWNER}"),
        format!("Gid: {OWNER} {OWNER} {OWNER} {OWNER}"),
        format!("Groups: {OWNER}"),
        "CapEff: 0000000000000000".to_owned(),
        "CapBnd: 0000000000000000".to_owned(),
    ] {
        assert!(
            status.contains(&want),
            "{mode}: server {want:?} missing in {status:?}"
        );
    }

    // An action runs as the owner too, and its output belongs to the owner.
    let (code, stderr) =
        run_command(&sup.out, command_port, &["build", "//who:who"]).expect("build runs");
    assert_eq!(code, 0, "{mode}: {stderr}\n{}", sup.logs());
    let who = std::fs::read_dir(fs.out().join("execroot"))
        .expect("execroot")
        .flatten()
        .map(|e| e.path().join("bazel-out/k8-fastbuild/bin/who/who.txt"))
        .find(|p| p.exists())
        .expect("who.txt in bazel-out");
    let text = std::fs::read_to_string(&who).expect("who.txt");
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        text.contains(&format!("Uid: {OWNER} {OWNER} {OWNER} {OWNER}")),
        "{mode}: the action's {text}"
    );

    // Everything in out/ is the owner's: Bazel's files, bazel-out, and the supervisor's.
    for f in [
        mirror::JBAZEL_DIR,
        supervisor::lock::LOCK_FILE,
        mirror::SYSTEM_RC,
        mirror::CLIENT_ENV,
    ] {
        assert!(fs.out().join(f).exists(), "{mode}: {f} missing");
    }
    let foreign = not_owned_by(&fs.out(), OWNER, OWNER);
    assert!(foreign.is_empty(), "{mode}: not the owner's: {foreign:?}");
    let home = std::path::PathBuf::from(format!("/tmp/jbazel-home-{OWNER}"));
    let hm = std::fs::symlink_metadata(&home).expect("Bazel's home");
    assert_eq!(
        (hm.uid(), hm.mode() & 0o777),
        (OWNER, 0o700),
        "{mode}: {home:?}"
    );

    // The cookies: 0600 in a 0700 dir, and no other uid can read them.
    let mode_of =
        |p: &std::path::Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode_of(&fs.out().join("server")), 0o700, "{mode}");
    for c in ["request_cookie", "response_cookie"] {
        assert_eq!(
            mode_of(&fs.out().join("server").join(c)),
            0o600,
            "{mode}: {c}"
        );
    }
    let cookie = std::fs::read_to_string(fs.out().join(mirror::REQUEST_COOKIE)).expect("cookie");
    let other = std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={OTHER}"),
            &format!("--regid={OTHER}"),
            "--clear-groups",
            "--",
            "cat",
        ])
        .arg(fs.out().join(mirror::REQUEST_COOKIE))
        .output()
        .expect("setpriv runs");
    assert!(
        !other.status.success(),
        "{mode}: uid {OTHER} read the cookie"
    );
    assert!(
        !String::from_utf8_lossy(&other.stdout).contains(cookie.trim()),
        "{mode}: uid {OTHER} read the cookie"
    );
    assert!(
        sup.logs()
            .contains("made server/ 0700 and the cookies 0600"),
        "{}",
        sup.logs()
    );

    // The supervisor (root) still stops its server, which runs as another uid.
    signal(sup.pid(), Signal::SIGTERM);
    let st = wait_child(&mut sup.child, Duration::from_secs(GRACE_SECS + 10))
        .unwrap_or_else(|| panic!("{mode}: no exit after SIGTERM:\n{}", sup.logs()));
    assert_eq!(st.code(), Some(0), "{mode}: {}", sup.logs());
    assert!(!is_bazel_server(server), "{mode}: server {server} survived");
}

#[test]
fn direct_mode_bazel_runs_as_the_tree_owner() {
    bazel_runs_as_the_tree_owner("direct");
}

#[test]
fn bwrap_mode_bazel_runs_as_the_tree_owner() {
    bazel_runs_as_the_tree_owner("bwrap");
}
