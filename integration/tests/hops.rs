//! Every hop from the desktop to the pod's Bazel server, end to end and all real (emulator,
//! orchestrator binary, local cluster with the project image, jbazel):
//! - the API server's port-forward (`JBAZEL_HOP=port-forward`, the default);
//! - the pod IP through the supervisor's relay (`JBAZEL_HOP=pod-ip`), which also caches
//!   the endpoint and dials it while GetServer confirms it;
//! - after a desktop bounce (new session, new pod), the cached endpoint is stale: jbazel
//!   drops it, dials the one GetServer gave, and the command runs on the NEW server.
//!
//! Needs `integration/kubernetes/local.sh up && image/build.sh` (integration/test.sh does
//! it) and fails, never skips, when a component is missing.

use std::fs;
use std::process::Output;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use orchestrator::pods::manifest::{LABEL_REPO_HASH, LABEL_SESSION};

use integration::platform::{repo_root, show};
use integration::stack::TestPlatform;

const USER: &str = "hopper";

/// The live server pod of the repository (there must be exactly one).
async fn server_pod(pods: &kube::Api<Pod>, repo_hash: &str) -> Pod {
    let live: Vec<Pod> = pods
        .list(&ListParams::default().labels(&format!("{LABEL_REPO_HASH}={repo_hash}")))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    assert_eq!(live.len(), 1, "exactly one live server pod");
    live.into_iter().next().expect("one pod")
}

fn label(pod: &Pod, key: &str) -> String {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(key).cloned())
        .unwrap_or_default()
}

fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_hop_mode_reaches_the_server_and_a_stale_endpoint_is_never_used() {
    let stack = TestPlatform::start("hops")
        .await
        .expect("the platform must start");
    let (orchestrator, pods) = (&stack.orchestrator, stack.namespace.user_pods(USER));
    let workspace = repo_root().join("integration/sample-workspace");
    let desktop = stack
        .desktop(USER, "home/hopper/sample", &workspace)
        .expect("desktop");
    let cache_home = stack.scratch().join("cache");
    let jbazel = |session: &str, hop: &str, args: &[&str]| -> (Output, Duration) {
        let mut cmd = desktop
            .jbazel(&orchestrator.url(), session)
            .expect("jbazel binary");
        cmd.args(args)
            .env("JBAZEL_HOP", hop)
            .env("XDG_CACHE_HOME", &cache_home)
            .env("RUST_LOG", "jbazel=debug")
            .env("NO_COLOR", "1");
        let started = Instant::now();
        let out = cmd.output().expect("jbazel must start");
        (out, started.elapsed())
    };
    let ok = |step: &str, (out, took): (Output, Duration)| -> String {
        assert_eq!(out.status.code(), Some(0), "{}", show(step, &out, took));
        eprintln!("hops: {step}: {took:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let cache_file = cache_home
        .join("jbazel/endpoints")
        .join(desktop.repo_hash.as_str());

    // Port-forward: the pod is spawned and serves; no endpoint is cached on this path.
    ok(
        "port-forward, cold",
        jbazel("s1", "port-forward", &["build", "//app:hello"]),
    );
    let first = server_pod(&pods, &desktop.repo_hash).await;
    assert!(!cache_file.exists(), "port-forward caches nothing");
    ok(
        "port-forward, warm",
        jbazel("s1", "port-forward", &["build", "//app:hello"]),
    );

    // Pod IP: straight to the relay (no fallback to port-forward), and the endpoint is
    // cached for the next command.
    let stderr = ok("pod-ip", jbazel("s1", "pod-ip", &["build", "//app:hello"]));
    assert!(
        !stderr.contains("pod IP unreachable"),
        "the relay must answer:\n{stderr}"
    );
    let cached = fs::read_to_string(&cache_file).expect("endpoint cached");
    assert!(
        cached.contains(&format!(" {} ", pod_ip(&first))) && cached.contains(" s1 "),
        "{cached}"
    );
    let stderr = ok(
        "pod-ip with the cached endpoint",
        jbazel("s1", "pod-ip", &["build", "//app:hello"]),
    );
    assert!(!stderr.contains("stale"), "{stderr}");

    // A bounce: a new session replaces the pod. The cached endpoint (old session, old pod)
    // is stale: it must be dropped, and the command must run on the new server.
    let stderr = ok(
        "bounce to s2 (pod-ip)",
        jbazel("s2", "pod-ip", &["build", "//app:hello"]),
    );
    assert!(
        stderr.contains("cached endpoint is stale"),
        "jbazel must notice the stale endpoint:\n{stderr}"
    );
    let second = server_pod(&pods, &desktop.repo_hash).await;
    assert_eq!(label(&second, LABEL_SESSION), "s2");
    assert_ne!(second.metadata.uid, first.metadata.uid, "a new pod");
    let cached = fs::read_to_string(&cache_file).expect("endpoint cached");
    assert!(
        cached.contains(" s2 ") && cached.contains(&format!(" {} ", pod_ip(&second))),
        "the cache follows the new server: {cached}"
    );

    // A kubeconfig whose user is an exec plugin (as GKE's, EKS's and OIDC logins are): the
    // plugin's ExecCredential (here the user's own certificate and key) authenticates both
    // hops. A plugin that fails stops the command with its own message.
    let plugin_kubeconfig = exec_plugin_kubeconfig(&stack.scratch().join("exec"), USER);
    for hop in ["port-forward", "pod-ip"] {
        let mut cmd = desktop
            .jbazel(&orchestrator.url(), "s2")
            .expect("jbazel binary");
        cmd.args(["build", "//app:hello"])
            .env("KUBECONFIG", &plugin_kubeconfig)
            .env("JBAZEL_HOP", hop)
            .env("XDG_CACHE_HOME", &cache_home);
        let started = Instant::now();
        let out = cmd.output().expect("jbazel must start");
        ok(
            &format!("exec plugin credential, {hop}"),
            (out, started.elapsed()),
        );
    }
    let failing = stack.scratch().join("exec/plugin");
    fs::write(
        &failing,
        "#!/bin/sh\necho 'your login expired: run login' >&2\nexit 1\n",
    )
    .expect("write the failing plugin");
    let mut cmd = desktop
        .jbazel(&orchestrator.url(), "s2")
        .expect("jbazel binary");
    cmd.args(["build", "//app:hello"])
        .env("KUBECONFIG", &plugin_kubeconfig);
    let started = Instant::now();
    let out = cmd.output().expect("jbazel must start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!(
        "hops: failing exec plugin -> exit {:?}: {}",
        out.status.code(),
        stderr.trim()
    );
    assert!(
        out.status.code() != Some(0) && stderr.contains("your login expired: run login"),
        "{}",
        show("failing exec plugin", &out, started.elapsed())
    );
}

/// A copy of `user`'s kubeconfig whose credential comes from an exec plugin (`dir/plugin`,
/// printing the user's certificate and key as an ExecCredential).
fn exec_plugin_kubeconfig(dir: &std::path::Path, user: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir).expect("exec dir");
    let cred = integration::credentials::user_credential(user).expect("user credential");
    let read = |p: &std::path::Path| fs::read_to_string(p).expect("read the user's PEM");
    let exec_credential = serde_json::json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {
            "clientCertificateData": read(&cred.cert_pem),
            "clientKeyData": read(&cred.key_pem),
        },
    });
    let json = dir.join("credential.json");
    fs::write(&json, exec_credential.to_string()).expect("write the ExecCredential");
    let plugin = dir.join("plugin");
    fs::write(
        &plugin,
        format!("#!/bin/sh\nexec cat '{}'\n", json.display()),
    )
    .expect("write the plugin");
    fs::set_permissions(&plugin, fs::Permissions::from_mode(0o755)).expect("chmod the plugin");

    let mut kc = kube::config::Kubeconfig::read_from(&cred.kubeconfig).expect("user kubeconfig");
    let exec: kube::config::ExecConfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": plugin,
        "interactiveMode": "Never",
    }))
    .expect("exec config");
    for named in &mut kc.auth_infos {
        named.auth_info = Some(kube::config::AuthInfo {
            exec: Some(exec.clone()),
            ..Default::default()
        });
    }
    let path = dir.join("kubeconfig");
    fs::write(
        &path,
        serde_json::to_string(&kc).expect("kubeconfig as JSON"),
    )
    .expect("write the kubeconfig");
    path
}
