//! Tenancy, tried as a hostile user would, against the running platform: the real
//! orchestrator binary (TLS, its least-privilege ServiceAccount), the real cluster and pod
//! image, Spanner, and jbazel. Alice has a READY server; mallory is the attacker, with her
//! own credential, her own pod and BUILD files of her choosing; bob is a curious neighbour
//! with his own kubeconfig.
//!
//! One test function per attack, so a failure names its attack. They share one [`World`]
//! (set up once per test process: the platform, alice's build, mallory's hostile build) and
//! take turns on it: [`attack`] snapshots the state, runs the attack, which asserts its
//! refusal, and asserts that nothing changed: the BuildSessions rows, the server pods with
//! their uids, and the files of every other user's tree under R. What the hostile build
//! found is in its report, one test per way out (`hostile_build::*`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use gcloud_spanner::statement::Statement;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{AttachParams, ListParams};
use kube::Api;
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{GetServerRequest, ReportReadyRequest, WatchServerRequest};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

use integration::credentials::{self, UserCredential};
use integration::platform::{channel_with, desktop_owner, repo_root, show, user_channel, Desktop};
use integration::stack::TestPlatform;
use orchestrator::pods::manifest::APP_SELECTOR;
use proto::error_chain::ErrorChain;

/// Alice's session: a secret nobody else may learn.
const ALICE_SESSION: &str = "alice-secret-session-7";
const MALLORY_SESSION: &str = "mallory-s1";
/// An address that is no pod's: where a forged ReportReady says the server is.
const FOREIGN_IP: &str = "10.6.6.6";

/// What must not change when an attack is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Snapshot {
    /// (user, repo, session, status, generation, pod ip)
    rows: Vec<(String, String, String, String, i64, String)>,
    /// namespace/name -> uid of every live server pod
    pods: BTreeMap<String, String>,
    /// path -> (size, mtime, mode, uid) of every file in the other users' trees
    files: BTreeMap<PathBuf, (u64, i64, u32, u32)>,
}

/// What every test here runs against, set up once per test process by [`World::set_up`].
struct World {
    stack: TestPlatform,
    url: String,
    alice: Desktop,
    mallory: Desktop,
    /// Alice's server pod, once her first build was done.
    alice_pod: Pod,
    /// Mallory's server pod, which ran the hostile build.
    mallory_pod: Pod,
    /// What the hostile build found (`plant_probe`): `attempt=OK|DENIED` lines.
    report: String,
    /// The state before mallory's hostile build, and after it without her own row and pod.
    probe_before: Snapshot,
    probe_after: Snapshot,
}

impl World {
    /// The platform; alice builds (READY server, outputs); mallory plants the hostile
    /// package and builds it in her own pod. Panics (as a test does) when a step fails.
    async fn set_up() -> World {
        let stack = TestPlatform::start("tenancy")
            .await
            .expect("the platform must start");
        let url = stack.orchestrator.url();
        let workspace = repo_root().join("integration/sample-workspace");
        let alice = stack
            .desktop("alice", "home/alice/sample", &workspace)
            .expect("alice's desktop");
        let mallory = stack
            .desktop("mallory", "home/mallory/sample", &workspace)
            .expect("mallory's desktop");

        let out = jbazel(&url, &alice, ALICE_SESSION, &["build", "//app:hello"]);
        assert_eq!(out.status.code(), Some(0), "alice's build");
        let alice_pod = only_pod(&stack, "alice").await;

        // Mallory's pod, with the hostile package (planted before her first build).
        let alice_tree = stack.filestore.join("alice").join(alice.repo_hash.as_str());
        plant_probe(&mallory, &stack.filestore, &alice_tree);
        let probe_before = snapshot(&stack).await;
        let out = jbazel(&url, &mallory, MALLORY_SESSION, &["build", "//evil:probe"]);
        assert_eq!(out.status.code(), Some(0), "mallory's probe ran");
        let mallory_pod = only_pod(&stack, "mallory").await;
        let report = fs::read_to_string(mallory.artifact("evil", "report.txt")).expect("report");
        eprintln!("tenancy: the probe's report:\n{report}");
        let mut probe_after = snapshot(&stack).await;
        probe_after.rows.retain(|row| row.0 != "mallory");
        probe_after.pods.retain(|k, _| !k.contains("mallory"));
        World {
            stack,
            url,
            alice,
            mallory,
            alice_pod,
            mallory_pod,
            report,
            probe_before,
            probe_after,
        }
    }

    /// Stops the orchestrator and the emulator, deletes the namespaces, removes the scratch
    /// dir (the desktops are unmounted first: they are mounted below it). The scratch dir
    /// goes once the pods are gone: the kubelet recreates the filestore (their hostPath)
    /// for a pod that is still stopping.
    async fn tear_down(self) {
        let World {
            stack,
            alice,
            mallory,
            ..
        } = self;
        drop((alice, mallory));
        let all_pods: Api<Pod> = Api::all(stack.cluster.client());
        let selector = orchestrator::pods::manifest::platform_selector(stack.namespace.name());
        let (scratch, done) = stack.cleanup().await;
        if let Err(e) = done {
            eprintln!("tenancy: cleanup: {}", ErrorChain(&e));
        }
        let gone = testkit::wait_until_async(
            Duration::from_secs(90),
            Duration::from_millis(500),
            async || {
                let left = all_pods
                    .list(&ListParams::default().labels(&selector))
                    .await;
                left.is_ok_and(|l| l.items.is_empty()).then_some(())
            },
        )
        .await;
        if gone.is_none() {
            eprintln!("tenancy: the pods still stop after 90 s; removing the scratch dir anyway");
        }
        drop(scratch);
    }

    async fn snapshot(&self) -> Snapshot {
        snapshot(&self.stack).await
    }

    fn alice_tree(&self) -> PathBuf {
        self.stack
            .filestore
            .join("alice")
            .join(self.alice.repo_hash.as_str())
    }

    fn jbazel(&self, who: &Desktop, session: &str, args: &[&str]) -> Output {
        jbazel(&self.url, who, session, args)
    }

    /// A ReportReady for alice's session and pod, from an IP that is not her pod's.
    fn forged_report(&self) -> ReportReadyRequest {
        ReportReadyRequest {
            user_id: "alice".into(),
            repo_hash: self.alice.repo_hash.to_string(),
            session_id: ALICE_SESSION.into(),
            pod_name: name(&self.alice_pod),
            pod_ip: FOREIGN_IP.into(),
            command_port: 9001,
        }
    }

    /// Alice's request cookie in the mirror of her output base.
    fn alice_cookie(&self) -> PathBuf {
        self.alice.out_dir().join(proto::mirror::REQUEST_COOKIE)
    }
}

/// The state [`assert_unchanged`] compares.
async fn snapshot(stack: &TestPlatform) -> Snapshot {
    let mut rows = Vec::new();
    let client = stack.emulator.client().await.expect("spanner client");
    let mut tx = client.single().await.expect("tx");
    let mut it = tx
        .query(Statement::new(
            "SELECT UserId, RepoHash, SessionId, Status, Generation, PodIP FROM BuildSessions ORDER BY UserId, RepoHash",
        ))
        .await
        .expect("query rows");
    while let Some(r) = it.next().await.expect("row") {
        rows.push((
            r.column::<String>(0).unwrap_or_default(),
            r.column::<String>(1).unwrap_or_default(),
            r.column::<Option<String>>(2)
                .ok()
                .flatten()
                .unwrap_or_default(),
            r.column::<Option<String>>(3)
                .ok()
                .flatten()
                .unwrap_or_default(),
            r.column::<Option<i64>>(4)
                .ok()
                .flatten()
                .unwrap_or_default(),
            r.column::<Option<String>>(5)
                .ok()
                .flatten()
                .unwrap_or_default(),
        ));
    }
    let pods = stack
        .namespace
        .platform_pods()
        .await
        .expect("list pods")
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let ns = p.metadata.namespace.clone().unwrap_or_default();
            (
                format!("{ns}/{}", name(&p)),
                p.metadata.uid.clone().unwrap_or_default(),
            )
        })
        .collect();
    let mut files = BTreeMap::new();
    for user in ["alice", "bob"] {
        collect(&stack.filestore.join(user), &mut files);
    }
    Snapshot { rows, pods, files }
}

/// The one server pod of `user` (fails when there is none).
async fn only_pod(stack: &TestPlatform, user: &str) -> Pod {
    let pods = stack
        .namespace
        .user_pods(user)
        .list(&ListParams::default().labels(APP_SELECTOR))
        .await
        .expect("list")
        .items;
    pods.into_iter()
        .next()
        .unwrap_or_else(|| panic!("{user}'s pod"))
}

fn jbazel(url: &str, who: &Desktop, session: &str, args: &[&str]) -> Output {
    let mut cmd = who.jbazel(url, session).expect("jbazel binary");
    cmd.args(args);
    let t = std::time::Instant::now();
    let out = cmd.output().expect("jbazel runs");
    eprintln!(
        "{}",
        show(&format!("jbazel {}", args.join(" ")), &out, t.elapsed())
    );
    out
}

fn name(p: &Pod) -> String {
    p.metadata.name.clone().unwrap_or_default()
}

/// Files of a tree (not following symlinks), without what a live, idle Bazel server
/// rewrites by itself (its logs and `server/` state).
fn collect(dir: &Path, into: &mut BTreeMap<PathBuf, (u64, i64, u32, u32)>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let n = e.file_name().to_string_lossy().into_owned();
        if n == "server" || n.contains(".log") || n == "command.log" {
            continue;
        }
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        if m.is_dir() {
            collect(&p, into);
        }
        into.insert(p, (m.len(), m.mtime(), m.mode(), m.uid()));
    }
}

fn assert_unchanged(before: &Snapshot, after: &Snapshot, case: &str) {
    assert_eq!(before.rows, after.rows, "{case}: the rows changed");
    assert_eq!(
        before.pods, after.pods,
        "{case}: the pods (or their uids) changed"
    );
    let changed: Vec<_> = after
        .files
        .iter()
        .filter(|(p, v)| before.files.get(*p) != Some(v))
        .map(|(p, _)| p.display().to_string())
        .chain(
            before
                .files
                .keys()
                .filter(|p| !after.files.contains_key(*p))
                .map(|p| format!("(gone) {}", p.display())),
        )
        .collect();
    assert!(
        changed.is_empty(),
        "{case}: files under R changed: {changed:?}"
    );
    eprintln!("tenancy: {case}: refused, nothing changed");
}

fn get_request(user: &str, repo: &str, session: &str) -> GetServerRequest {
    GetServerRequest {
        user_id: user.into(),
        repo_hash: repo.into(),
        session_id: session.into(),
    }
}

fn tls_as(cred: &UserCredential) -> ClientTlsConfig {
    let read = |p: &Path| fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(
            &credentials::cluster_ca().expect("cluster CA"),
        )))
        .identity(Identity::from_pem(
            read(&cred.cert_pem),
            read(&cred.key_pem),
        ))
}

fn client(channel: Channel) -> OrchestratorClient<Channel> {
    OrchestratorClient::new(channel)
}

async fn kube_as(user: &str) -> kube::Client {
    let path = credentials::user_credential(user)
        .expect("credential")
        .kubeconfig;
    let kc = kube::config::Kubeconfig::read_from(&path).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    kube::Client::try_from(config).expect("client")
}

/// The hostile package: one genrule (unsandboxed, as an attacker would ask) that tries
/// every way out of the pod's view and writes what worked.
fn plant_probe(mallory: &Desktop, r: &Path, alice_tree: &Path) {
    let dir = mallory.desktop_path.join("evil");
    fs::create_dir_all(&dir).expect("mkdir evil");
    let script = format!(
        r#"#!/bin/bash
out=$1
R={r}
A={a}
try() {{ local what=$1; shift; if "$@" >/dev/null 2>&1; then echo "$what=OK"; else echo "$what=DENIED"; fi; }}
{{
echo "uid=$(id -u) gid=$(id -g)"
grep -E '^Cap(Eff|Prm|Bnd|Amb):' /proc/self/status
echo "list_root=[$(ls -A "$R" 2>&1 | tr '\n' ' ')]"
try read_alice cat "$A/src/app/BUILD"
try list_alice ls "$A/src"
try proc1root ls "/proc/1/root$A/src"
try proc1root_etc cat /proc/1/root/etc/hostname
try dotdot cat "/work/src/../..$A/src/app/BUILD"
try write_alice sh -c "echo pwned > '$A/src/PWNED'"
try write_root sh -c "echo pwned > '$R/PWNED'"
try symlink cat evil/alice_link/app/BUILD
try mount mount -t tmpfs none /tmp
try umount umount "$R"
try unshare_mount unshare -m true
try userns unshare -U -r true
try userns_umount unshare -U -r -m sh -c "umount '$R' && ls '$A/src'"
try ptrace_pid1 cat /proc/1/environ
try token cat /var/run/secrets/jbazel/token
try host_shadow cat /etc/shadow
}} > "$out"
"#,
        r = r.display(),
        a = alice_tree.display()
    );
    fs::write(dir.join("probe.sh"), script).expect("probe.sh");
    fs::set_permissions(dir.join("probe.sh"), fs::Permissions::from_mode(0o755)).expect("chmod");
    fs::write(
        dir.join("BUILD"),
        "genrule(\n    name = \"probe\",\n    srcs = [\"probe.sh\"],\n    outs = [\"report.txt\"],\n    \
         cmd = \"bash $(location probe.sh) $@\",\n    tags = [\"no-sandbox\", \"no-cache\", \"no-remote\"],\n    local = 1,\n)\n",
    )
    .expect("BUILD");
    // A `run` target whose binary is a link out of the user's trees: the pod would have the
    // desktop exec whatever that path holds there.
    std::os::unix::fs::symlink("/usr/bin/id", dir.join("esc.sh")).expect("esc symlink");
    let mut build = fs::read_to_string(dir.join("BUILD")).expect("BUILD");
    build.push_str("sh_binary(name = \"esc\", srcs = [\"esc.sh\"])\n");
    fs::write(dir.join("BUILD"), build).expect("BUILD");
    // A source symlink into alice's tree (the pod resolves it in its own view).
    std::os::unix::fs::symlink(alice_tree.join("src"), dir.join("alice_link")).expect("symlink");
    let (uid, gid) = desktop_owner("mallory");
    integration::platform::chown_tree(&dir, uid, gid).expect("chown evil");
}

fn report_lines(report: &str) -> BTreeMap<String, String> {
    report
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .or_else(|| l.split_once(":\t"))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The shared world.
//
// Each test function takes its turn on one World, made by the first test that asks for it.
// Why not `#[tokio::test]`: each of those runs on its own runtime, dropped when the test
// ends, and the World's clients (kube, gRPC, Spanner) keep background tasks on the runtime
// that built them. So the World lives on one runtime of its own for the whole process
// (RUNTIME), and every test is a plain `#[test]` that runs its async body there.
//
// Turns: the tests of one file run on parallel threads, but an attack's "nothing changed"
// compares two snapshots around it, and some attacks change what others read (the forged
// rc is in mallory's mirror while the attack runs): the World sits behind a Mutex, so one
// test at a time has it. A test that panics poisons the Mutex; the next one takes the World
// anyway (each attack snapshots its own "before").
//
// The set-up runs as a task on RUNTIME's worker threads, which live as long as the process:
// the emulator and the orchestrator are started with PDEATHSIG (integration::process), which
// the kernel sends when the *thread* that spawned them ends, and a test's thread ends with
// its test. A failed set-up fails every test with its message: it is not retried per test
// (each retry would start a platform and two Bazel builds on the shared node).
//
// Clean-up, once, at the end: no test knows it is the last (the order is libtest's, and a
// filter runs any subset), and a static is never dropped. So the set-up registers an
// `atexit` handler: libtest's process ends through `exit` whether the tests passed or not,
// and the handler takes the World out of its Mutex and tears it down (orchestrator,
// emulator, namespaces, desktops' mounts, scratch dir), on a thread of its own so that
// nothing depends on the exiting thread's thread-locals. A process that is killed runs no
// handler: its namespaces carry the test label that `kubernetes/local.sh up` collects.

static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static WORLD: OnceLock<Result<Mutex<Option<World>>, String>> = OnceLock::new();

fn runtime() -> &'static tokio::runtime::Runtime {
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("the tenancy tests' runtime")
    })
}

/// Runs `test` on the World (set up on first use), its turn alone.
fn with_world<T>(test: impl AsyncFnOnce(&World) -> T) -> T {
    let world = WORLD.get_or_init(|| {
        // A task on the runtime's workers, not on this test's thread: see PDEATHSIG above.
        let made = runtime()
            .block_on(runtime().spawn(World::set_up()))
            .map_err(|e| match e.try_into_panic() {
                Ok(panic) => panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic without a message".into()),
                Err(e) => e.to_string(),
            })?;
        // SAFETY: registers a plain `extern "C" fn()` without arguments, as atexit takes.
        if unsafe { libc::atexit(tear_down_at_exit) } != 0 {
            eprintln!(
                "tenancy: cannot register the clean-up at exit; the platform is left running"
            );
        }
        Ok(Mutex::new(Some(made)))
    });
    let world = match world {
        Ok(world) => world,
        Err(e) => panic!("the tenancy set-up failed (alice's build, mallory's probe): {e}"),
    };
    let guard = world.lock().unwrap_or_else(PoisonError::into_inner);
    let world = guard.as_ref().expect("the World is taken only at exit");
    runtime().block_on(test(world))
}

extern "C" fn tear_down_at_exit() {
    let done = std::thread::spawn(|| {
        let Some(Ok(world)) = WORLD.get() else {
            return;
        };
        let taken = world.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(world) = taken {
            runtime().block_on(world.tear_down());
        }
    })
    .join();
    if done.is_err() {
        eprintln!("tenancy: the clean-up at exit panicked");
    }
}

/// One attack, `case`: runs it on the World (it asserts its own refusal), then asserts
/// that it changed nothing (rows, pods, other users' files) since just before it.
fn attack(case: &str, run: impl AsyncFnOnce(&World)) {
    with_world(async |w: &World| {
        let before = w.snapshot().await;
        run(w).await;
        assert_unchanged(&before, &w.snapshot().await, case);
    })
}

// ---------------------------------------------------------------------------------------
// Alice's own server: what the set-up's build left.

#[test]
fn alice_s_outputs_on_the_filestore_belong_to_her() {
    with_world(async |w: &World| {
        let (alice_uid, _) = desktop_owner("alice");
        let hello = w.alice.artifact("app", "hello");
        assert_eq!(
            fs::metadata(&hello).expect("hello built").uid(),
            alice_uid,
            "outputs on the filestore belong to the tree's owner, not root"
        );
    })
}

#[test]
fn alice_s_request_cookie_is_hers_alone() {
    with_world(async |w: &World| {
        let mode = fs::metadata(w.alice_cookie()).expect("cookie").mode() & 0o777;
        assert_eq!(mode, 0o600, "the cookie is the owner's alone");
    })
}

// ---------------------------------------------------------------------------------------
// Mallory's hostile build (`plant_probe`), run in her own pod by the set-up.

#[test]
fn a_build_action_runs_as_the_tree_owner_with_no_capability() {
    with_world(async |w: &World| {
        let r = report_lines(&w.report);
        let (mallory_uid, mallory_gid) = desktop_owner("mallory");
        assert_eq!(
            w.report.lines().next().unwrap_or_default(),
            format!("uid={mallory_uid} gid={mallory_gid}"),
            "a build action runs as the tree's owner"
        );
        for cap in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
            assert_eq!(
                r.get(cap).map(String::as_str),
                Some("0000000000000000"),
                "{cap}"
            );
        }
        assert_eq!(
            r.get("list_root").map(String::as_str),
            Some("[]"),
            "R is empty in the pod"
        );
    })
}

/// Asserts the hostile build's `attempt` was refused.
fn probe_denied(attempt: &str) {
    with_world(async |w: &World| {
        let r = report_lines(&w.report);
        assert_eq!(
            r.get(attempt).map(String::as_str),
            Some("DENIED"),
            "the build's attempt {attempt:?}; its report:\n{}",
            w.report
        );
    })
}

/// Every way from a build in mallory's pod to another user's tree, the host, or out of the
/// pod's view: one test each, named as the probe names the attempt.
mod hostile_build {
    macro_rules! denied {
        ($($attempt:ident: $what:literal,)*) => {$(
            #[doc = $what]
            #[test]
            fn $attempt() {
                super::probe_denied(stringify!($attempt));
            }
        )*};
    }
    denied! {
        read_alice: "Reading a file of alice's tree by its filestore path.",
        list_alice: "Listing alice's tree.",
        proc1root: "Alice's tree through /proc/1/root (PID 1's view).",
        proc1root_etc: "The pod's own root through /proc/1/root.",
        dotdot: "Climbing out of /work/src with `..`.",
        write_alice: "Writing into alice's tree.",
        write_root: "Writing into R itself.",
        symlink: "A source symlink into alice's tree.",
        mount: "Mounting a tmpfs.",
        umount: "Unmounting R.",
        unshare_mount: "A new mount namespace.",
        userns: "A new user namespace (root in it).",
        userns_umount: "Unmounting R from a new user and mount namespace.",
        ptrace_pid1: "Reading PID 1's environment.",
        token: "Reading the pod's service-account token.",
        host_shadow: "Reading /etc/shadow.",
    }
}

#[test]
fn the_hostile_build_changed_nothing_of_anyone_else() {
    with_world(async |w: &World| {
        assert!(!w.alice_tree().join("src/PWNED").exists());
        assert!(!w.stack.filestore.join("PWNED").exists());
        assert_unchanged(
            &w.probe_before,
            &w.probe_after,
            "hostile genrule in mallory's pod",
        );
    })
}

/// The user namespace's NetworkPolicy: the server pods' egress goes to the orchestrator
/// only (this cluster's bridge CNI does not enforce NetworkPolicy: the object is checked,
/// its effect is not).
#[test]
fn mallory_s_pod_may_reach_the_orchestrator_only() {
    with_world(async |w: &World| {
        let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(
            w.stack.cluster.client(),
            &w.stack.namespace.user_namespace("mallory"),
        );
        let policy = policies
            .get(orchestrator::pods::tenancy::NETWORK_POLICY)
            .await
            .expect("mallory's namespace has the egress policy");
        let spec = policy.spec.expect("spec");
        assert_eq!(spec.policy_types, Some(vec!["Egress".to_string()]));
        let egress = spec.egress.unwrap_or_default();
        let peers: Vec<String> = egress
            .iter()
            .flat_map(|r| r.to.clone().unwrap_or_default())
            .filter_map(|p| p.ip_block.map(|b| b.cidr))
            .collect();
        assert_eq!(
            peers,
            vec![format!("{}/32", integration::kubernetes::POD_GATEWAY)],
            "egress to the orchestrator only"
        );
    })
}

// ---------------------------------------------------------------------------------------
// The orchestrator's API: who may ask for what.

#[test]
fn get_server_for_alice_with_mallory_s_credential() {
    attack(
        "GetServer for alice with mallory's credential",
        async |w: &World| {
            // A new session would bounce alice's server.
            let mut m = client(user_channel(&w.url, "mallory").expect("mallory channel"));
            let e = m
                .get_server(get_request(
                    "alice",
                    w.alice.repo_hash.as_str(),
                    "mallory-bounce",
                ))
                .await
                .expect_err("mallory may not act for alice");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(
                !e.message().contains(ALICE_SESSION),
                "no session leaks: {}",
                e.message()
            );
        },
    )
}

#[test]
fn watch_server_on_alice_with_mallory_s_credential() {
    attack(
        "WatchServer on alice with mallory's credential",
        async |w: &World| {
            // The watch would tell her session.
            let mut m = client(user_channel(&w.url, "mallory").expect("mallory channel"));
            let e = m
                .watch_server(WatchServerRequest {
                    user_id: "alice".into(),
                    repo_hash: w.alice.repo_hash.to_string(),
                    session_id: "anything".into(),
                })
                .await
                .expect_err("mallory may not watch alice");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(!e.message().contains(ALICE_SESSION));
        },
    )
}

#[test]
fn get_server_without_a_credential() {
    attack("GetServer without a credential", async |w: &World| {
        // TLS, no client certificate.
        let mut anon = client(channel_with(&w.url, "anonymous", None).expect("channel"));
        let e = anon
            .get_server(get_request("alice", w.alice.repo_hash.as_str(), "anon"))
            .await
            .expect_err("no credential");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    })
}

#[test]
fn get_server_with_a_garbage_token() {
    attack("GetServer with a garbage token", async |w: &World| {
        let mut anon = client(channel_with(&w.url, "anonymous", None).expect("channel"));
        let mut req =
            tonic::Request::new(get_request("alice", w.alice.repo_hash.as_str(), "garbage"));
        req.metadata_mut().insert(
            "authorization",
            "Bearer not-a-token".parse().expect("ascii"),
        );
        let e = anon.get_server(req).await.expect_err("garbage token");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    })
}

#[test]
fn get_server_with_a_service_account_s_token() {
    attack(
        "GetServer with a service account's token",
        async |w: &World| {
            // A genuine token of an identity that is no user (the orchestrator's own
            // ServiceAccount, verified by a real TokenReview).
            let kc = kube::config::Kubeconfig::read_from(
                credentials::orchestrator_kubeconfig().expect("orchestrator kubeconfig"),
            )
            .expect("kubeconfig");
            let sa_token = kc
                .auth_infos
                .iter()
                .find_map(|a| a.auth_info.as_ref().and_then(|i| i.token.clone()))
                .expect("a token");
            let mut anon = client(channel_with(&w.url, "anonymous", None).expect("channel"));
            let mut req =
                tonic::Request::new(get_request("alice", w.alice.repo_hash.as_str(), "sa"));
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {}", secrecy::ExposeSecret::expose_secret(&sa_token))
                    .parse()
                    .expect("ascii"),
            );
            let e = anon
                .get_server(req)
                .await
                .expect_err("a service account is no user");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
            assert!(e.message().contains("not a jbazel user"), "{}", e.message());
        },
    )
}

/// GetServer as alice with `cred` (a certificate the platform must not accept).
async fn refused_certificate(w: &World, cred: &UserCredential) {
    let mut c = client(channel_with(&w.url, "alice", Some(tls_as(cred))).expect("channel"));
    let e = c
        .get_server(get_request("alice", w.alice.repo_hash.as_str(), "forged"))
        .await
        .expect_err("refused");
    assert_ne!(e.code(), Code::Ok);
}

#[test]
fn get_server_with_an_expired_certificate() {
    attack(
        "GetServer with an expired certificate",
        async |w: &World| {
            let (expired, _keep) = credentials::expired_credential("alice").expect("expired cert");
            refused_certificate(w, &expired).await;
        },
    )
}

#[test]
fn get_server_with_a_certificate_of_a_foreign_ca() {
    attack(
        "GetServer with a foreign-CA certificate",
        async |w: &World| {
            let (foreign, _keep) =
                credentials::foreign_ca_credential("alice").expect("foreign cert");
            refused_certificate(w, &foreign).await;
        },
    )
}

#[test]
fn jbazel_with_an_expired_certificate_fails_at_once() {
    attack("jbazel with an expired certificate", async |w: &World| {
        // A final error, not a retry loop.
        let (expired, _keep) = credentials::expired_credential("alice").expect("expired cert");
        let mut cmd = w.alice.jbazel(&w.url, ALICE_SESSION).expect("jbazel");
        cmd.env("KUBECONFIG", &expired.kubeconfig)
            .args(["info", "release"]);
        let t = std::time::Instant::now();
        let out = cmd.output().expect("jbazel runs");
        let took = t.elapsed();
        eprintln!("{}", show("jbazel with an expired certificate", &out, took));
        assert_ne!(out.status.code(), Some(0));
        assert!(
            took < Duration::from_secs(30),
            "refused at once, not retried: {took:?}"
        );
    })
}

#[test]
fn plaintext_to_the_tls_port() {
    attack("plaintext GetServer", async |w: &World| {
        let plain = tonic::transport::Endpoint::from_shared(w.url.replace("https://", "http://"))
            .expect("url")
            .connect_timeout(Duration::from_secs(5))
            .connect_lazy();
        let e = client(plain)
            .get_server(get_request("alice", w.alice.repo_hash.as_str(), "plain"))
            .await
            .expect_err("plaintext refused");
        assert_ne!(e.code(), Code::Ok);
    })
}

// ---------------------------------------------------------------------------------------
// ReportReady: only the pod itself, about itself.

#[test]
fn report_ready_from_outside_the_pod() {
    attack("ReportReady from outside the pod", async |w: &World| {
        // Alice's session, a foreign IP, no token.
        let mut anon = client(channel_with(&w.url, "anonymous", None).expect("channel"));
        let e = anon
            .report_ready(w.forged_report())
            .await
            .expect_err("no token");
        assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
        // ... and with a user's certificate instead of a pod token.
        let mut m = client(user_channel(&w.url, "mallory").expect("mallory channel"));
        let e = m
            .report_ready(w.forged_report())
            .await
            .expect_err("a user is no pod");
        assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    })
}

#[test]
fn report_ready_for_alice_with_mallory_s_pod_token() {
    attack(
        "ReportReady for alice with mallory's pod token",
        async |w: &World| {
            let mallory_token = w
                .stack
                .namespace
                .pod_token(
                    "mallory",
                    &name(&w.mallory_pod),
                    w.mallory_pod.metadata.uid.as_deref().unwrap_or_default(),
                )
                .await
                .expect("mallory's pod token");
            let mut req = tonic::Request::new(w.forged_report());
            req.metadata_mut().insert(
                "authorization",
                format!("Bearer {mallory_token}").parse().expect("ascii"),
            );
            let mut anon = client(channel_with(&w.url, "anonymous", None).expect("channel"));
            let e = anon
                .report_ready(req)
                .await
                .expect_err("another pod's token");
            assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
        },
    )
}

#[test]
fn report_ready_with_alice_s_pod_token_and_a_foreign_ip() {
    attack("ReportReady with a foreign IP", async |w: &World| {
        // Alice's own pod's token (a build in her pod reading it) pointing elsewhere.
        let alice_pod_ip = w
            .alice_pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .unwrap_or_default();
        assert_ne!(alice_pod_ip, FOREIGN_IP);
        let alice_token = w
            .stack
            .namespace
            .pod_token(
                "alice",
                &name(&w.alice_pod),
                w.alice_pod.metadata.uid.as_deref().unwrap_or_default(),
            )
            .await
            .expect("alice's pod token");
        let mut req = tonic::Request::new(w.forged_report());
        req.metadata_mut().insert(
            "authorization",
            format!("Bearer {alice_token}").parse().expect("ascii"),
        );
        let mut anon = client(channel_with(&w.url, "anonymous", None).expect("channel"));
        let accepted = anon
            .report_ready(req)
            .await
            .map(|r| r.into_inner().accepted)
            .unwrap_or(false);
        assert!(
            !accepted,
            "a report with another IP than the pod's is not believed"
        );
    })
}

// ---------------------------------------------------------------------------------------
// The cluster's API as a user: alice's namespace is not bob's, and no one execs.

/// Alice's pods, as `user` may reach them with their own kubeconfig.
async fn alice_pods_as(w: &World, user: &str) -> Api<Pod> {
    Api::namespaced(
        kube_as(user).await,
        &w.stack.namespace.user_namespace("alice"),
    )
}

#[test]
fn bob_lists_alice_s_pods() {
    attack("bob listing alice's pods", async |w: &World| {
        let e = alice_pods_as(w, "bob")
            .await
            .list(&ListParams::default())
            .await
            .expect_err("bob cannot list alice's pods (their labels carry her session)");
        assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e:?}");
    })
}

#[test]
fn bob_port_forwards_into_alice_s_pod() {
    attack("bob's port-forward into alice's pod", async |w: &World| {
        let pf = alice_pods_as(w, "bob")
            .await
            .portforward(&name(&w.alice_pod), &[9001])
            .await;
        assert!(pf.is_err(), "bob port-forwarding into alice's pod");
    })
}

#[test]
fn bob_execs_into_alice_s_pod() {
    attack("bob's exec into alice's pod", async |w: &World| {
        let exec = alice_pods_as(w, "bob")
            .await
            .exec(
                &name(&w.alice_pod),
                ["cat", "/proc/self/status"],
                &AttachParams::default(),
            )
            .await;
        assert!(exec.is_err(), "bob exec into alice's pod");
    })
}

#[test]
fn alice_execs_into_her_own_pod() {
    attack("alice's exec into her own pod", async |w: &World| {
        // She may port-forward to it (that is how jbazel reaches it), not exec.
        let exec = alice_pods_as(w, "alice")
            .await
            .exec(&name(&w.alice_pod), ["id"], &AttachParams::default())
            .await;
        assert!(exec.is_err(), "no one execs into a server pod");
    })
}

// ---------------------------------------------------------------------------------------
// The desktop.

#[test]
fn bob_reads_alice_s_cookie() {
    attack("bob reading alice's cookie", async |w: &World| {
        // 0600, hers, in the mirror of her output base.
        let (bob_uid, bob_gid) = desktop_owner("bob");
        let out = Command::new("cat")
            .arg(w.alice_cookie())
            .uid(bob_uid)
            .gid(bob_gid)
            .output()
            .expect("cat as bob");
        assert!(!out.status.success(), "bob read alice's cookie");
    })
}

#[test]
fn a_pod_written_rc_importing_etc_passwd() {
    attack(
        "a pod-written rc importing /etc/passwd",
        async |w: &World| {
            // Mallory's desktop refuses it.
            let rc = w.mallory.out_dir().join(proto::mirror::SYSTEM_RC);
            let original = fs::read(&rc).expect("published system rc");
            fs::write(&rc, "import /etc/passwd\n").expect("forge rc");
            let out = w.jbazel(&w.mallory, MALLORY_SESSION, &["info", "release"]);
            fs::write(&rc, original).expect("restore rc");
            assert_eq!(
                out.status.code(),
                Some(2),
                "an rc import outside the workspace"
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("/etc/passwd"),
                "the error names the import"
            );
        },
    )
}

#[test]
fn an_exec_request_for_a_binary_outside_the_trees() {
    attack(
        "an exec request for a binary outside the trees",
        async |w: &World| {
            // `//evil:esc` is a link to /usr/bin/id: refused on the desktop.
            let marker = w.stack.scratch().join("ran-outside");
            let out = w.jbazel(
                &w.mallory,
                MALLORY_SESSION,
                &["run", "//evil:esc", "--", marker.to_string_lossy().as_ref()],
            );
            assert_eq!(
                out.status.code(),
                Some(37),
                "a binary outside the trees is not run (a refused exec request exits 37)"
            );
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("refusing to run"),
                "the refusal is named"
            );
        },
    )
}

// ---------------------------------------------------------------------------------------
// And alice still works.

#[test]
fn alice_builds_again_on_the_same_pod() {
    with_world(async |w: &World| {
        let before = w.snapshot().await;
        let out = w.jbazel(&w.alice, ALICE_SESSION, &["build", "//app:hello"]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "alice's build after the attacks"
        );
        let now = w.snapshot().await;
        assert_eq!(now.pods, before.pods, "alice's build moved no pod");
        let alice_pod = format!(
            "{}/{}",
            w.stack.namespace.user_namespace("alice"),
            name(&w.alice_pod)
        );
        assert_eq!(
            now.pods.get(&alice_pod),
            w.alice_pod.metadata.uid.as_ref(),
            "alice's pod is the one of her first build"
        );
    })
}
