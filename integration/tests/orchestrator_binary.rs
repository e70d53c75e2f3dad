//! The `orchestrator` binary as the demo runs it: flags and env, TLS with the cluster CA
//! for users' certificates, its own least-privilege kubeconfig, `--create-database` on a
//! fresh database, the namespace created at start, the standard health service, callers
//! authenticated, the user's namespace made on the first spawn, the "Creating Pod for repo"
//! log line with its fields, and a clean exit on SIGTERM.
//! Needs the local cluster (integration/kubernetes/local.sh up).

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use integration::kubernetes::{kubeconfig_path, Cluster, PAUSE_IMAGE};
use integration::spanner::SpannerEmulator;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams};
use kube::Api;
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{GetServerRequest, ServerStatus};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const HASH: &str = "0123456789abcdef0123456789abcdef";

/// Deletes the namespace the binary created and the user namespaces it made under it,
/// whatever happens in the test.
struct NamespaceGuard(String);

impl Drop for NamespaceGuard {
    fn drop(&mut self) {
        let users = format!(
            "{}={}",
            orchestrator::pods::manifest::LABEL_PLATFORM,
            self.0
        );
        for args in [
            ["delete", "namespace", "-l", &users, "--wait=false"].as_slice(),
            ["delete", "namespace", &self.0, "--wait=false"].as_slice(),
        ] {
            let _ = Command::new("kubectl")
                .arg("--kubeconfig")
                .arg(kubeconfig_path())
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Kills the orchestrator's process group if the test ends before it exited.
struct ProcessGuard(std::process::Child);

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn the_binary_creates_its_database_serves_health_and_get_server_and_stops_on_sigterm() {
    proto::tls::install_crypto_provider();
    let cluster = Cluster::connect()
        .await
        .expect("the local cluster must be up (integration/kubernetes/local.sh up)");
    let emulator = SpannerEmulator::start().await.expect("emulator");
    let namespace = format!("orch-bin-{:08x}", rand::random::<u32>());
    let _ns_guard = NamespaceGuard(namespace.clone());
    let filestore = tempfile::tempdir().expect("filestore");
    let log_path = filestore.path().join("orchestrator.log");
    let port = testkit::free_port().expect("free port");
    let log = std::fs::File::create(&log_path).expect("log");
    let tls = integration::credentials::orchestrator_tls_args()
        .expect("the orchestrator's certificate (integration/kubernetes/local.sh up)");
    // The orchestrator's own ServiceAccount, never the admin's.
    let kubeconfig = integration::credentials::orchestrator_kubeconfig()
        .expect("the orchestrator's kubeconfig (integration/kubernetes/local.sh up)");
    let child = Command::new(
        integration::platform::workspace_binary("orchestrator").expect("cargo build --bins first"),
    )
    .args([
        "--project",
        emulator.project(),
        "--instance",
        emulator.instance(),
    ])
    // A database the fixture did not create: --create-database makes it from schema.sql.
    .args(["--database", "fresh", "--create-database"])
    .args(["--namespace", &namespace, "--image", PAUSE_IMAGE])
    .arg("--filestore-root")
    .arg(filestore.path())
    .args(["--listen", &format!("127.0.0.1:{port}")])
    .arg("--pod-orchestrator-addr")
    .arg(format!(
        "https://{}:{port}",
        integration::kubernetes::POD_GATEWAY
    ))
    .args(&tls)
    .env("SPANNER_EMULATOR_HOST", emulator.host())
    .env("KUBECONFIG", &kubeconfig)
    .env("RUST_LOG", "info")
    .env("NO_COLOR", "1")
    .stdin(Stdio::null())
    .stdout(log.try_clone().expect("log"))
    .stderr(log)
    .process_group(0)
    .spawn()
    .expect("start the orchestrator binary");
    let mut child = ProcessGuard(child);
    let url = format!("https://127.0.0.1:{port}");

    // Up when it accepts connections (bounded wait); then the standard health service
    // (no credential needed) says SERVING.
    let listening = testkit::wait_until_async(
        Duration::from_secs(60),
        Duration::from_millis(50),
        async || {
            if let Ok(Some(status)) = child.0.try_wait() {
                panic!(
                    "orchestrator exited with {status}: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
        },
    )
    .await;
    assert!(listening.is_some(), "orchestrator did not listen");
    let anonymous = integration::platform::channel_with(&url, "health", None).expect("TLS channel");
    let health = HealthClient::new(anonymous.clone())
        .check(HealthCheckRequest {
            service: "jbazel.orchestrator.v1.Orchestrator".into(),
        })
        .await
        .expect("health check")
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    // The namespace was created by the binary.
    let ns: Api<Namespace> = Api::all(cluster.client());
    assert!(ns.get_opt(&namespace).await.expect("get ns").is_some());

    let zoes = || GetServerRequest {
        user_id: "zoe".into(),
        repo_hash: HASH.into(),
        session_id: "s1".into(),
    };
    // Without a credential: refused.
    let err = OrchestratorClient::new(anonymous)
        .get_server(zoes())
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // Zoe, with her certificate.
    let channel = integration::platform::user_channel(&url, "zoe").expect("zoe's channel");
    let server = OrchestratorClient::new(channel)
        .get_server(zoes())
        .await
        .expect("GetServer")
        .into_inner()
        .server
        .expect("server");
    assert_eq!(server.status(), ServerStatus::Pending);
    let zoe_namespace = orchestrator::pods::manifest::user_namespace(&namespace, "zoe");
    assert_eq!(server.namespace, zoe_namespace);
    // Her namespace was made on the first spawn, with the pods' service account.
    assert!(ns.get_opt(&zoe_namespace).await.expect("get ns").is_some());
    let sa: Api<ServiceAccount> = Api::namespaced(cluster.client(), &zoe_namespace);
    assert!(sa
        .get_opt(orchestrator::auth::SERVER_SERVICE_ACCOUNT)
        .await
        .expect("get service account")
        .is_some());
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &zoe_namespace);
    let names: Vec<_> = pods
        .list(&ListParams::default())
        .await
        .expect("pods")
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, [orchestrator::pods::pod_name("zoe", HASH, 1)]);
    assert_eq!(server.pod_name, names[0]);

    // SIGTERM: a clean stop.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.0.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = testkit::wait_until_async(
        Duration::from_secs(20),
        Duration::from_millis(50),
        async || child.0.try_wait().expect("wait"),
    )
    .await
    .expect("no exit after SIGTERM");
    let mut log = String::new();
    std::fs::File::open(&log_path)
        .and_then(|mut f| f.read_to_string(&mut log))
        .expect("read log");
    assert!(status.success(), "exit {status}; log:\n{log}");
    let line = log
        .lines()
        .find(|l| l.contains(&format!("Creating Pod for repo {HASH}")))
        .unwrap_or_else(|| panic!("no creation line in:\n{log}"));
    for field in [
        "user=zoe",
        &format!("repo_hash={HASH}"),
        "session=s1",
        &format!("pod={}", server.pod_name),
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    let _ = pods
        .delete(&server.pod_name, &DeleteParams::default())
        .await;
}
