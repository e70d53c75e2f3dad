//! Tenancy, tried as a hostile user would, against the running platform: the real
//! orchestrator binary (TLS, its least-privilege ServiceAccount), the real cluster and pod
//! image, Spanner, and jbazel. Alice has a READY server; mallory is the attacker, with her
//! own credential, her own pod and BUILD files of her choosing; bob is a curious neighbour
//! with his own kubeconfig.
//!
//! Every case asserts the refusal AND that nothing changed: the BuildSessions rows, the
//! server pods with their uids, and the files of every other user's tree under R.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
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

/// Alice's session: a secret nobody else may learn.
const ALICE_SESSION: &str = "alice-secret-session-7";
const MALLORY_SESSION: &str = "mallory-s1";

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

struct World {
    stack: TestPlatform,
    url: String,
    alice: Desktop,
    mallory: Desktop,
}

impl World {
    async fn snapshot(&self) -> Snapshot {
        let mut rows = Vec::new();
        let client = self.stack.emulator.client().await.expect("spanner client");
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
        let pods = self
            .stack
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
            collect(&self.stack.filestore.join(user), &mut files);
        }
        Snapshot { rows, pods, files }
    }

    fn alice_tree(&self) -> PathBuf {
        self.stack
            .filestore
            .join("alice")
            .join(self.alice.repo_hash.as_str())
    }

    fn jbazel(&self, who: &Desktop, session: &str, args: &[&str]) -> Output {
        let mut cmd = who.jbazel(&self.url, session).expect("jbazel binary");
        cmd.args(args);
        let t = std::time::Instant::now();
        let out = cmd.output().expect("jbazel runs");
        eprintln!(
            "{}",
            show(&format!("jbazel {}", args.join(" ")), &out, t.elapsed())
        );
        out
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_users_reach_nothing_of_another_user() {
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
    let world = World {
        url: url.clone(),
        alice,
        mallory,
        stack,
    };
    let alice_hash = world.alice.repo_hash.to_string();
    let alice_ns = world.stack.namespace.user_namespace("alice");

    // Alice works: her server is READY and her outputs are hers.
    let out = world.jbazel(&world.alice, ALICE_SESSION, &["build", "//app:hello"]);
    assert_eq!(out.status.code(), Some(0), "alice's build");
    let (alice_uid, _) = desktop_owner("alice");
    let hello = world.alice.artifact("app", "hello");
    assert_eq!(
        fs::metadata(&hello).expect("hello built").uid(),
        alice_uid,
        "outputs on the filestore belong to the tree's owner, not root"
    );
    let cookie = world.alice.out_dir().join("server/request_cookie");
    let mode = fs::metadata(&cookie).expect("cookie").mode() & 0o777;
    assert_eq!(mode, 0o600, "the cookie is the owner's alone");
    let alice_pods = world
        .stack
        .namespace
        .user_pods("alice")
        .list(&ListParams::default().labels(APP_SELECTOR))
        .await
        .expect("list")
        .items;
    let alice_pod = alice_pods.first().expect("alice's pod").clone();
    let alice_pod_ip = alice_pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default();

    // Mallory's pod, with the hostile package (planted before her first build).
    plant_probe(&world.mallory, &world.stack.filestore, &world.alice_tree());
    let before = world.snapshot().await;
    let out = world.jbazel(&world.mallory, MALLORY_SESSION, &["build", "//evil:probe"]);
    assert_eq!(out.status.code(), Some(0), "mallory's probe ran");
    let mallory_pods = world
        .stack
        .namespace
        .user_pods("mallory")
        .list(&ListParams::default().labels(APP_SELECTOR))
        .await
        .expect("list")
        .items;
    let mallory_pod = mallory_pods.first().expect("mallory's pod").clone();
    let report = fs::read_to_string(world.mallory.artifact("evil", "report.txt")).expect("report");
    eprintln!("tenancy: the probe's report:\n{report}");
    let r = report_lines(&report);
    // 1-3. What a build in mallory's pod is: mallory, with no capability.
    let (mallory_uid, mallory_gid) = desktop_owner("mallory");
    assert_eq!(
        report.lines().next().unwrap_or_default(),
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
    // 4-15. Every way to another user's tree, the host, or out of the view is refused.
    for attack in [
        "read_alice",
        "list_alice",
        "proc1root",
        "proc1root_etc",
        "dotdot",
        "write_alice",
        "write_root",
        "symlink",
        "mount",
        "umount",
        "unshare_mount",
        "userns",
        "userns_umount",
        "ptrace_pid1",
        "token",
        "host_shadow",
    ] {
        assert_eq!(
            r.get(attack).map(String::as_str),
            Some("DENIED"),
            "the build's attempt {attack:?}"
        );
    }
    // The user namespace's NetworkPolicy: the server pods' egress goes to the orchestrator
    // only (this cluster's bridge CNI does not enforce NetworkPolicy: the object is checked,
    // its effect is not).
    let policies: Api<k8s_openapi::api::networking::v1::NetworkPolicy> = Api::namespaced(
        world.stack.cluster.client(),
        &world.stack.namespace.user_namespace("mallory"),
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

    // Mallory's own build changed nothing of anyone else (her pod and row are new).
    let mut after = world.snapshot().await;
    after.rows.retain(|row| row.0 != "mallory");
    after.pods.retain(|k, _| !k.contains("mallory"));
    assert!(!world.alice_tree().join("src/PWNED").exists());
    assert!(!world.stack.filestore.join("PWNED").exists());
    assert_unchanged(&before, &after, "hostile genrule in mallory's pod");

    // From here on, each attack is checked against this state.
    let before = world.snapshot().await;

    // 16. Mallory's credential asking for alice's server (a new session would bounce it).
    let mut m = client(user_channel(&url, "mallory").expect("mallory channel"));
    let e = m
        .get_server(get_request("alice", &alice_hash, "mallory-bounce"))
        .await
        .expect_err("mallory may not act for alice");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(
        !e.message().contains(ALICE_SESSION),
        "no session leaks: {}",
        e.message()
    );
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "GetServer for alice with mallory's credential",
    );

    // 17. ... and watching alice's server (the watch would tell her session).
    let e = m
        .watch_server(WatchServerRequest {
            user_id: "alice".into(),
            repo_hash: alice_hash.clone(),
            session_id: "anything".into(),
        })
        .await
        .expect_err("mallory may not watch alice");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(!e.message().contains(ALICE_SESSION));
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "WatchServer on alice with mallory's credential",
    );

    // 18. No credential at all (TLS, no client certificate).
    let mut anon = client(channel_with(&url, "anonymous", None).expect("channel"));
    let e = anon
        .get_server(get_request("alice", &alice_hash, "anon"))
        .await
        .expect_err("no credential");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "GetServer without a credential",
    );

    // 19. A garbage bearer token.
    let mut req = tonic::Request::new(get_request("alice", &alice_hash, "garbage"));
    req.metadata_mut().insert(
        "authorization",
        "Bearer not-a-token".parse().expect("ascii"),
    );
    let e = anon.get_server(req).await.expect_err("garbage token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "GetServer with a garbage token",
    );

    // ... and a genuine token of an identity that is no user (the orchestrator's own
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
    let mut req = tonic::Request::new(get_request("alice", &alice_hash, "sa"));
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
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "GetServer with a service account's token",
    );

    // 20-21. An expired certificate, and one of a CA the platform does not trust.
    let (expired, _keep1) = credentials::expired_credential("alice").expect("expired cert");
    let (foreign, _keep2) = credentials::foreign_ca_credential("alice").expect("foreign cert");
    for (what, cred) in [("expired", &expired), ("foreign-CA", &foreign)] {
        let mut c = client(channel_with(&url, "alice", Some(tls_as(cred))).expect("channel"));
        let e = c
            .get_server(get_request("alice", &alice_hash, "forged"))
            .await
            .expect_err("refused");
        assert_ne!(e.code(), Code::Ok, "{what}");
        assert_unchanged(
            &before,
            &world.snapshot().await,
            &format!("GetServer with an {what} certificate"),
        );
    }

    // ... and jbazel itself with the expired kubeconfig: a final error, not a retry loop.
    let mut cmd = world.alice.jbazel(&url, ALICE_SESSION).expect("jbazel");
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
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "jbazel with an expired certificate",
    );

    // 22. Plaintext to the TLS port.
    let plain = tonic::transport::Endpoint::from_shared(url.replace("https://", "http://"))
        .expect("url")
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy();
    let e = client(plain)
        .get_server(get_request("alice", &alice_hash, "plain"))
        .await
        .expect_err("plaintext refused");
    assert_ne!(e.code(), Code::Ok);
    assert_unchanged(&before, &world.snapshot().await, "plaintext GetServer");

    // 23. ReportReady from outside any pod: alice's session, a foreign IP, no token.
    let forged = ReportReadyRequest {
        user_id: "alice".into(),
        repo_hash: alice_hash.clone(),
        session_id: ALICE_SESSION.into(),
        pod_name: name(&alice_pod),
        pod_ip: "10.6.6.6".into(),
        command_port: 9001,
    };
    let e = anon
        .report_ready(forged.clone())
        .await
        .expect_err("no token");
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    // ... and with a user's certificate instead of a pod token.
    let e = m
        .report_ready(forged.clone())
        .await
        .expect_err("a user is no pod");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "ReportReady from outside the pod",
    );

    // 24. ReportReady with mallory's pod's genuine token, claiming alice's pod.
    let mallory_token = world
        .stack
        .namespace
        .pod_token(
            "mallory",
            &name(&mallory_pod),
            mallory_pod.metadata.uid.as_deref().unwrap_or_default(),
        )
        .await
        .expect("mallory's pod token");
    let mut req = tonic::Request::new(forged.clone());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {mallory_token}").parse().expect("ascii"),
    );
    let e = anon
        .report_ready(req)
        .await
        .expect_err("another pod's token");
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "ReportReady for alice with mallory's pod token",
    );

    // 25. Alice's own pod's token (a build in her pod reading it) pointing elsewhere.
    let alice_token = world
        .stack
        .namespace
        .pod_token(
            "alice",
            &name(&alice_pod),
            alice_pod.metadata.uid.as_deref().unwrap_or_default(),
        )
        .await
        .expect("alice's pod token");
    let mut req = tonic::Request::new(forged.clone());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {alice_token}").parse().expect("ascii"),
    );
    let accepted = anon
        .report_ready(req)
        .await
        .map(|r| r.into_inner().accepted)
        .unwrap_or(false);
    assert!(
        !accepted,
        "a report with another IP than the pod's is not believed"
    );
    assert_ne!(alice_pod_ip, "10.6.6.6");
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "ReportReady with a foreign IP",
    );

    // 26. Bob's kubeconfig: alice's namespace is not his (no list, no port-forward, no exec).
    let bob = kube_as("bob").await;
    let alice_pods_as_bob: Api<Pod> = Api::namespaced(bob.clone(), &alice_ns);
    let e = alice_pods_as_bob
        .list(&ListParams::default())
        .await
        .expect_err("bob cannot list alice's pods (their labels carry her session)");
    assert!(matches!(&e, kube::Error::Api(s) if s.code == 403), "{e:?}");
    let pf = alice_pods_as_bob
        .portforward(&name(&alice_pod), &[9001])
        .await;
    assert!(pf.is_err(), "bob port-forwarding into alice's pod");
    let exec = alice_pods_as_bob
        .exec(
            &name(&alice_pod),
            ["cat", "/proc/self/status"],
            &AttachParams::default(),
        )
        .await;
    assert!(exec.is_err(), "bob exec into alice's pod");
    // Alice herself may port-forward to her pod (that is how jbazel reaches it), not exec.
    let alice_own: Api<Pod> = Api::namespaced(kube_as("alice").await, &alice_ns);
    let exec = alice_own
        .exec(&name(&alice_pod), ["id"], &AttachParams::default())
        .await;
    assert!(exec.is_err(), "no one execs into a server pod");
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "bob's port-forward and exec into alice's pod",
    );

    // 27. Bob on the desktop cannot read alice's cookie in the mirror (0600, hers).
    let (bob_uid, bob_gid) = desktop_owner("bob");
    let out = Command::new("cat")
        .arg(&cookie)
        .uid(bob_uid)
        .gid(bob_gid)
        .output()
        .expect("cat as bob");
    assert!(!out.status.success(), "bob read alice's cookie");
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "bob reading alice's cookie",
    );

    // 28. A pod-written system rc that imports /etc/passwd: mallory's desktop refuses it.
    let rc = world.mallory.out_dir().join("jbazel/system.bazelrc");
    let original = fs::read(&rc).expect("published system rc");
    fs::write(&rc, "import /etc/passwd\n").expect("forge rc");
    let out = world.jbazel(&world.mallory, MALLORY_SESSION, &["info", "release"]);
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
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "a pod-written rc importing /etc/passwd",
    );

    // 29. An exec request for a binary outside the user's trees: refused on the desktop.
    let marker = world.stack.scratch().join("ran-outside");
    let out = world.jbazel(
        &world.mallory,
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
    assert_unchanged(
        &before,
        &world.snapshot().await,
        "an exec request for a binary outside the trees",
    );

    // Alice still works, on the same pod.
    let out = world.jbazel(&world.alice, ALICE_SESSION, &["build", "//app:hello"]);
    assert_eq!(out.status.code(), Some(0), "alice's build after all this");
    let now = world.snapshot().await;
    assert_eq!(now.pods, before.pods, "alice's pod is the same pod");

    let World {
        stack,
        alice,
        mallory,
        ..
    } = world;
    drop((alice, mallory));
    let (_scratch, _) = stack.cleanup().await;
}
