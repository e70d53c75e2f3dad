//! The orchestrator against the REAL local cluster and a real Spanner emulator, through its
//! gRPC API: pods created, replaced, recreated and reaped; the reconciler's repairs;
//! WatchServer's failure reporting; validation. Each test has its own namespace and its
//! own emulator.
//!
//! Needs `integration/kubernetes/local.sh up` first; fails (never skips) without it.
//! Pods that must actually run use the cluster's own pause image (always present), so
//! these tests do not depend on the Bazel server image being built; the manifest test
//! checks the contract's image name, whatever the pod's state.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use gcloud_spanner::statement::Statement;
use integration::kubernetes::{
    wait_for_pod, Cluster, PodGoal, TestNamespace, IMAGE, PAUSE_IMAGE, POD_GATEWAY,
};
use integration::spanner::SpannerEmulator;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::Api;
use orchestrator::app::{self, Parts, Running, TlsMaterial};
use orchestrator::engine::SessionStore;
use orchestrator::pods::manifest::LABEL_SESSION;
use orchestrator::pods::tenancy::UserNamespaces;
use orchestrator::pods::{pod_name, PodSettings, PodSpecFor};
use orchestrator::service::ServiceSettings;
use orchestrator::session::{SessionKey, SessionRow, Status};
use orchestrator::store::Store;
use proto::names::{RepoHash, SessionId, UserId};
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{
    GetServerRequest, ReportReadyRequest, Server, ServerEvent, ServerStatus, Stage,
    WatchServerRequest,
};
use tokio::time::Instant;
use tonic::transport::Channel;

const HASH: &str = "0123456789abcdef0123456789abcdef";
const WAIT: Duration = Duration::from_secs(60);
/// The reconciler's sweep interval in these tests.
const RESYNC: Duration = Duration::from_secs(2);

/// One test at a time on the cluster: the single kubelet of this machine slows down badly
/// (pod kills delayed by a minute) when many pods are created and deleted at once.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Fixture {
    store: Store,
    /// `https://127.0.0.1:<port>`.
    url: String,
    /// One client per user, each presenting that user's certificate (made on first use).
    clients: Mutex<HashMap<String, OrchestratorClient<Channel>>>,
    /// A client with no credential: what a pod's report goes through (its bound token in
    /// the `authorization` header), and the unauthenticated caller.
    anonymous: OrchestratorClient<Channel>,
    /// The harness's own (admin) client, for observations and set-up.
    kube: kube::Client,
    settings: PodSettings,
    _running: Running,
    // Dropped last: the orchestrator stops before its namespace and emulator go.
    _filestore: tempfile::TempDir,
    namespace: TestNamespace,
    _emulator: SpannerEmulator,
    _serial: tokio::sync::MutexGuard<'static, ()>,
}

/// Namespace, emulator and settings, before the orchestrator runs (to stage what it finds
/// when it starts).
struct Prepared {
    cluster: Cluster,
    store: Store,
    settings: PodSettings,
    filestore: tempfile::TempDir,
    namespace: TestNamespace,
    emulator: SpannerEmulator,
    serial: tokio::sync::MutexGuard<'static, ()>,
    reachable_from_pods: bool,
}

/// The orchestrator's TLS: its serving certificate, users' certificates verified against
/// the cluster CA.
fn tls() -> TlsMaterial {
    integration::credentials::orchestrator_tls_material()
        .expect("the orchestrator's TLS files (integration/kubernetes/local.sh up)")
}

/// The cluster CA (PEM), which the pods verify the orchestrator with.
fn cluster_ca_pem() -> String {
    std::fs::read_to_string(integration::credentials::cluster_ca().expect("the cluster CA"))
        .expect("read the cluster CA")
}

/// Makes `user`'s namespace, service account and role binding as the platform would
/// (as the harness's admin): for pods a test creates itself, before any spawn.
async fn user_namespace_ready(kube: &kube::Client, platform: &TestNamespace, user: &str) {
    UserNamespaces::new(kube.clone(), platform.name().to_string())
        .ensure(&UserId::parse(user).expect("valid"))
        .await
        .expect("the user's namespace");
}

impl Prepared {
    async fn new(image: &str) -> Prepared {
        // Logs show with --nocapture; RUST_LOG selects them.
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let serial = ONE_AT_A_TIME.lock().await;
        proto::tls::install_crypto_provider();
        let cluster = Cluster::connect()
            .await
            .expect("the local cluster must be up (integration/kubernetes/local.sh up)");
        let namespace = cluster
            .test_namespace("orch")
            .await
            .expect("test namespace");
        let emulator = SpannerEmulator::start().await.expect("emulator must start");
        let store = Store::from_client(emulator.client().await.expect("spanner client"));
        let filestore = tempfile::Builder::new()
            .prefix("orch-filestore-")
            .tempdir()
            .expect("filestore dir");
        let settings = PodSettings {
            namespace: namespace.name().to_string(),
            orchestrator_ca_pem: Some(cluster_ca_pem()),
            image: image.to_string(),
            filestore_root: filestore.path().to_path_buf(),
            // Tests simulate the supervisor's push themselves: a pod's own report would
            // target the host's gateway, where nothing of this test listens.
            orchestrator_addr: "https://10.244.0.1:1".to_string(),
            termination_grace_seconds: 2,
            ..PodSettings::default()
        };
        Prepared {
            cluster,
            store,
            settings,
            filestore,
            namespace,
            emulator,
            serial,
            reachable_from_pods: false,
        }
    }

    /// Listen on all addresses and give pods the bridge gateway's URL: the supervisor's
    /// ReportReady reaches this orchestrator.
    fn reachable_from_pods(mut self) -> Self {
        self.reachable_from_pods = true;
        self
    }

    /// Creates `R/<user>/<HASH>/{src,out}` with the sample workspace in src.
    fn sample_repo(&self, user: &str) -> PathBuf {
        let repo = self.filestore.path().join(user).join(HASH);
        let sample =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../integration/sample-workspace");
        testkit::copy_dir(&sample, &repo.join("src")).expect("copy the sample workspace");
        std::fs::create_dir_all(repo.join("out")).expect("mkdir out");
        repo
    }

    /// Creates a pod of the platform's manifest of `user` directly (in the user's
    /// namespace, made first) and waits until it runs.
    async fn running_pod(&self, user: &str, pod: &Pod) -> Pod {
        let name = pod.metadata.name.clone().expect("name");
        user_namespace_ready(&self.cluster.client(), &self.namespace, user).await;
        let pods = self.namespace.user_pods(user);
        pods.create(&PostParams::default(), pod)
            .await
            .expect("create pod");
        wait_for_pod(&pods, &name, PodGoal::Running, WAIT)
            .await
            .expect("pod runs")
    }

    async fn serve(mut self) -> Fixture {
        let bind = if self.reachable_from_pods {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        };
        let listener = tokio::net::TcpListener::bind(bind).await.expect("bind");
        if self.reachable_from_pods {
            let port = listener.local_addr().expect("addr").port();
            self.settings.orchestrator_addr = format!("https://{POD_GATEWAY}:{port}");
        }
        // The orchestrator's own least-privilege credentials, never the harness's admin.
        let kubeconfig = integration::credentials::orchestrator_kubeconfig()
            .expect("the orchestrator's kubeconfig (integration/kubernetes/local.sh up)");
        let kube = app::kube_client(Some(&kubeconfig))
            .await
            .expect("the orchestrator's kube client");
        let running = app::start(
            Parts {
                store: self.store.clone(),
                kube,
                tls: Some(tls()),
                pods: self.settings.clone(),
                service: ServiceSettings::default(),
                resync_interval: RESYNC,
            },
            listener,
        )
        .await
        .expect("orchestrator starts");
        let url = format!("https://127.0.0.1:{}", running.addr.port());
        let anonymous = OrchestratorClient::new(
            integration::platform::channel_with(&url, "a pod", None).expect("channel"),
        );
        Fixture {
            store: self.store,
            url,
            clients: Mutex::new(HashMap::new()),
            anonymous,
            kube: self.cluster.client(),
            settings: self.settings,
            _running: running,
            _filestore: self.filestore,
            namespace: self.namespace,
            _emulator: self.emulator,
            _serial: self.serial,
        }
    }
}

/// The request of a report from the pod of `generation` of `user`.
fn report_request(
    user: &str,
    session: &str,
    generation: u64,
    ip: &str,
    port: u32,
) -> ReportReadyRequest {
    ReportReadyRequest {
        user_id: user.into(),
        repo_hash: HASH.into(),
        session_id: session.into(),
        pod_name: pod_name(user, HASH, generation),
        pod_ip: ip.into(),
        command_port: port,
    }
}

impl Fixture {
    async fn start(image: &str) -> Fixture {
        Prepared::new(image).await.serve().await
    }

    /// A client that authenticates as `user` (its certificate is made on first use).
    fn client(&self, user: &str) -> OrchestratorClient<Channel> {
        let mut clients = self.clients.lock().expect("clients");
        clients
            .entry(user.to_string())
            .or_insert_with(|| {
                OrchestratorClient::new(
                    integration::platform::user_channel(&self.url, user)
                        .unwrap_or_else(|e| panic!("a channel as {user}: {e:?}")),
                )
            })
            .clone()
    }

    /// `user`'s pods (in the user's namespace).
    fn pods(&self, user: &str) -> Api<Pod> {
        self.namespace.user_pods(user)
    }

    async fn get_server(&self, user: &str, session: &str) -> Server {
        self.client(user)
            .get_server(GetServerRequest {
                user_id: user.into(),
                repo_hash: HASH.into(),
                session_id: session.into(),
            })
            .await
            .unwrap_or_else(|s| panic!("GetServer({user}, {session}): {s}"))
            .into_inner()
            .server
            .expect("server")
    }

    /// The bound token of `user`'s live pod of `generation`: what that pod's supervisor
    /// presents.
    async fn pod_token(&self, user: &str, generation: u64) -> String {
        let name = pod_name(user, HASH, generation);
        let pod = self.pods(user).get(&name).await.expect("the reporting pod");
        let uid = pod.metadata.uid.expect("uid");
        self.namespace
            .pod_token(user, &name, &uid)
            .await
            .expect("a token for the pod")
    }

    /// ReportReady with `token` (None: no credential), as a pod sends it.
    async fn report(
        &self,
        request: ReportReadyRequest,
        token: Option<&str>,
    ) -> Result<bool, tonic::Status> {
        let mut request = tonic::Request::new(request);
        if let Some(token) = token {
            request.metadata_mut().insert(
                "authorization",
                format!("Bearer {token}").parse().expect("header value"),
            );
        }
        self.anonymous
            .clone()
            .report_ready(request)
            .await
            .map(|r| r.into_inner().accepted)
    }

    /// Whether the orchestrator believes `request`, sent with a pod `token`; it must answer.
    async fn verdict(&self, request: ReportReadyRequest, token: &str) -> bool {
        let what = format!("ReportReady({}, {})", request.user_id, request.session_id);
        self.report(request, Some(token))
            .await
            .unwrap_or_else(|s| panic!("{what}: {s}"))
    }

    /// A genuine report from the row's current pod (generation), with its own token.
    async fn report_ready(&self, user: &str, session: &str, ip: &str, port: u32) -> bool {
        let generation = self.row(user).await.map_or(1, |r| r.generation);
        let token = self.pod_token(user, generation).await;
        self.verdict(report_request(user, session, generation, ip, port), &token)
            .await
    }

    async fn row(&self, user: &str) -> Option<SessionRow> {
        let key = SessionKey::new(
            UserId::parse(user).expect("valid"),
            RepoHash::parse(HASH).expect("valid"),
        );
        self.store
            .read(&key, Instant::now() + WAIT)
            .await
            .expect("read row")
    }

    /// `user`'s row and the (name, uid) of every platform pod: what a refused report
    /// must leave as it was.
    async fn state(&self, user: &str) -> (Option<SessionRow>, Vec<(String, String)>) {
        let mut pods: Vec<_> = self
            .platform_pods()
            .await
            .into_iter()
            .map(|p| {
                (
                    p.metadata.name.unwrap_or_default(),
                    p.metadata.uid.unwrap_or_default(),
                )
            })
            .collect();
        pods.sort();
        (self.row(user).await, pods)
    }

    /// Every server pod of this platform (each user's in the user's namespace).
    async fn platform_pods(&self) -> Vec<Pod> {
        self.namespace.platform_pods().await.expect("list pods")
    }

    async fn row_count(&self) -> i64 {
        let mut tx = self.store.client().single().await.expect("tx");
        let mut rows = tx
            .query(Statement::new("SELECT COUNT(*) FROM BuildSessions"))
            .await
            .expect("count");
        let row = rows.next().await.expect("row").expect("one row");
        row.column::<i64>(0).expect("count column")
    }

    /// Waits until `user`'s pod named `name` exists with `session` and another UID than
    /// `not_uid`.
    async fn wait_pod_of(
        &self,
        user: &str,
        name: &str,
        session: &str,
        not_uid: Option<&str>,
    ) -> Pod {
        let session = session.to_string();
        let not_uid = not_uid.map(str::to_string);
        let cond = move |p: Option<&Pod>| {
            p.is_some_and(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(LABEL_SESSION))
                        == Some(&session)
                    && p.metadata.uid != not_uid
            })
        };
        tokio::time::timeout(WAIT, await_condition(self.pods(user), name, cond))
            .await
            .unwrap_or_else(|_| panic!("pod {name} of the session did not appear"))
            .expect("watch")
            .expect("pod")
    }

    async fn wait_gone(&self, user: &str, name: &str, uid: &str) {
        tokio::time::timeout(
            WAIT,
            await_condition(self.pods(user), name, conditions::is_deleted(uid)),
        )
        .await
        .unwrap_or_else(|_| panic!("pod {name} ({uid}) was not deleted"))
        .expect("watch");
    }

    /// Waits until the row of `user` satisfies `cond` (checked on each change signal of
    /// the reconciler is not observable from outside, so: re-read at a short interval,
    /// bounded by a deadline).
    async fn wait_row(
        &self,
        user: &str,
        what: &str,
        cond: impl Fn(Option<&SessionRow>) -> bool,
    ) -> Option<SessionRow> {
        let key = SessionKey::new(
            UserId::parse(user).expect("valid"),
            RepoHash::parse(HASH).expect("valid"),
        );
        testkit::wait_until_async(WAIT, Duration::from_millis(50), async || {
            let row = self
                .store
                .read(&key, Instant::now() + WAIT)
                .await
                .expect("read row");
            cond(row.as_ref()).then_some(row)
        })
        .await
        .unwrap_or_else(|| panic!("timed out after {WAIT:?}: {what}"))
    }
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("valid session id")
}

fn user(prefix: &str) -> String {
    format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

#[tokio::test]
async fn get_server_creates_exactly_one_pod_with_the_contract_manifest() {
    let f = Fixture::start(IMAGE).await;
    let alice = user("alice");
    let server = f.get_server(&alice, "desk-1").await;
    assert_eq!(server.status(), ServerStatus::Pending);
    assert_eq!(server.pod_name, pod_name(&alice, HASH, 1));
    assert_eq!(server.namespace, f.namespace.user_namespace(&alice));
    assert_eq!(server.session_id, "desk-1");
    assert_eq!(server.pod_ip, "");

    let pods = f.platform_pods().await;
    assert_eq!(pods.len(), 1, "exactly one pod");
    let pod = &pods[0];
    assert_eq!(pod.metadata.name.as_deref(), Some(server.pod_name.as_str()));
    assert_eq!(
        pod.metadata.namespace.as_deref(),
        Some(server.namespace.as_str()),
        "the user's own namespace"
    );
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    assert_eq!(labels["app.kubernetes.io/name"], "jbazel-server");
    assert_eq!(labels["jbazel.dev/user"], alice);
    assert_eq!(labels["jbazel.dev/repo-hash"], HASH);
    assert_eq!(labels["jbazel.dev/session"], "desk-1");
    assert_eq!(labels["jbazel.dev/generation"], "1");

    let spec = pod.spec.clone().expect("spec");
    let c = &spec.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some("docker.io/library/jbazel-bazel-server:dev")
    );
    assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
    let env: std::collections::BTreeMap<String, String> = c
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| {
            let v = e.value.unwrap_or_else(|| {
                e.value_from
                    .and_then(|f| f.field_ref)
                    .map(|f| format!("fieldRef:{}", f.field_path))
                    .unwrap_or_default()
            });
            (e.name, v)
        })
        .collect();
    let root = f.settings.filestore_root.to_string_lossy().into_owned();
    assert_eq!(env["USER_ID"], alice);
    assert_eq!(env["REPO_HASH"], HASH);
    assert_eq!(env["SESSION_ID"], "desk-1");
    assert_eq!(env["MOCK_FILESTORE_PATH"], root);
    assert_eq!(env["ORCHESTRATOR_ADDR"], "https://10.244.0.1:1");
    assert_eq!(env["ORCHESTRATOR_CA_PEM"], cluster_ca_pem());
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("jbazel-server"),
        "the pod's token is its ReportReady credential"
    );
    assert_eq!(env["POD_NAME"], "fieldRef:metadata.name");
    assert_eq!(env["POD_IP"], "fieldRef:status.podIP");
    let volume = spec
        .volumes
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|v| v.host_path.is_some())
        .expect("a hostPath volume");
    assert_eq!(volume.host_path.map(|h| h.path), Some(root.clone()));
    let mount = c
        .volume_mounts
        .clone()
        .unwrap_or_default()
        .into_iter()
        .find(|m| m.name == volume.name)
        .expect("the volume is mounted");
    assert_eq!(mount.mount_path, root);
    let probe = c.readiness_probe.clone().expect("readinessProbe");
    let get = probe.http_get.expect("httpGet");
    assert_eq!(get.path.as_deref(), Some("/readyz"));
    assert_eq!(
        get.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)
    );
    let sc = c.security_context.clone().expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let added = caps.add.unwrap_or_default();
    assert_eq!(
        added,
        proto::pod::capability_names()
            .map(str::to_string)
            .collect::<Vec<_>>(),
        "exactly the supervisor's capabilities, nothing privileged grants beyond them"
    );
    assert!(added.iter().any(|c| c == "SYS_ADMIN"), "{added:?}");
    assert_eq!(spec.termination_grace_period_seconds, Some(2));

    // Again with the same session: the same pod, nothing new.
    let uid = pod.metadata.uid.clone();
    let again = f.get_server(&alice, "desk-1").await;
    assert_eq!(again.status(), ServerStatus::Pending);
    let pods = f.platform_pods().await;
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].metadata.uid, uid);
    assert_eq!(f.row_count().await, 1);
}

#[tokio::test]
async fn fifty_concurrent_get_server_on_one_key_make_one_session_and_one_pod() {
    let f = Fixture::start(PAUSE_IMAGE).await;
    let carol = user("carol");
    let started = Instant::now();
    let calls: Vec<_> = (0..50)
        .map(|_| {
            let mut client = f.client(&carol);
            let carol = carol.clone();
            tokio::spawn(async move {
                client
                    .get_server(GetServerRequest {
                        user_id: carol,
                        repo_hash: HASH.into(),
                        session_id: "desk-1".into(),
                    })
                    .await
            })
        })
        .collect();
    for c in calls {
        let server = c
            .await
            .expect("task")
            .expect("every GetServer succeeds")
            .into_inner()
            .server
            .expect("server");
        assert_eq!(server.session_id, "desk-1");
    }
    eprintln!(
        "50 concurrent GetServer (one key, with pod creation): {:?}",
        started.elapsed()
    );
    let pods = f.platform_pods().await;
    assert_eq!(pods.len(), 1, "one pod");
    assert_eq!(
        pods[0]
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(LABEL_SESSION))
            .map(String::as_str),
        Some("desk-1")
    );
    assert_eq!(f.row_count().await, 1, "one row");
}

#[tokio::test]
async fn a_bounce_deletes_the_old_pod_and_creates_a_new_one() {
    let f = Fixture::start(PAUSE_IMAGE).await;
    let bob = user("bob");
    let name = pod_name(&bob, HASH, 1);
    f.get_server(&bob, "boot-1").await;
    let old = f.wait_pod_of(&bob, &name, "boot-1", None).await;
    let old_uid = old.metadata.uid.clone().expect("uid");
    let running = wait_for_pod(&f.pods(&bob), &name, PodGoal::Running, WAIT)
        .await
        .expect("the first session's pod runs");
    let ip = running.status.and_then(|s| s.pod_ip).expect("pod IP");
    let old_token = f.pod_token(&bob, 1).await;
    let genuine = || report_request(&bob, "boot-1", 1, &ip, 9001);
    let before = f.state(&bob).await;
    // Forged reports change nothing. Without the pod's token: not authenticated.
    let err = f.report(genuine(), None).await.expect_err("no credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    // With the user's own certificate (no pod's credential): refused.
    let err = f
        .client(&bob)
        .report_ready(genuine())
        .await
        .expect_err("a user is no pod");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // With the pod's own token, naming another address than the pod's: not believed.
    let forged_ip = report_request(&bob, "boot-1", 1, "10.244.0.250", 9001);
    assert!(!f.verdict(forged_ip, &old_token).await, "not believed");
    assert_eq!(
        f.state(&bob).await,
        before,
        "refused reports change nothing"
    );
    // The pod's own report, with its token, is believed.
    assert!(f.verdict(genuine(), &old_token).await, "believed");
    assert_eq!(
        f.get_server(&bob, "boot-1").await.status(),
        ServerStatus::Ready
    );

    // The desktop rebooted: new session.
    let t0 = Instant::now();
    let server = f.get_server(&bob, "boot-2").await;
    assert_eq!(server.session_id, "boot-2");
    assert_eq!(server.status(), ServerStatus::Pending);
    assert_eq!(server.pod_ip, "", "PodIP is cleared on a bounce");
    // The new generation's pod is created at once, under its own name, while the old
    // one is deleted (its server releases the output base; the new one waits for that).
    assert_eq!(server.pod_name, pod_name(&bob, HASH, 2));
    let new = f.wait_pod_of(&bob, &server.pod_name, "boot-2", None).await;
    eprintln!("bounce: new pod created in {:?}", t0.elapsed());
    f.wait_gone(&bob, &name, &old_uid).await;
    eprintln!("bounce: old pod gone after {:?}", t0.elapsed());
    assert_ne!(new.metadata.uid.as_deref(), Some(old_uid.as_str()));
    assert_eq!(f.platform_pods().await.len(), 1);

    // The old pod's late report, with the token it had, is refused (its pod is gone: the
    // review fails, or, while the verified token is cached, the cluster has no such pod).
    let before = f.state(&bob).await;
    match f.report(genuine(), Some(&old_token)).await {
        Ok(accepted) => assert!(!accepted, "a gone pod's report is not believed"),
        Err(e) => assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e}"),
    }
    // The new pod's token cannot speak for the old pod ...
    let new_token = f.pod_token(&bob, 2).await;
    let err = f
        .report(genuine(), Some(&new_token))
        .await
        .expect_err("another pod's token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    // ... and the new pod's own report naming the old session is fenced off.
    let stale = report_request(&bob, "boot-1", 2, &ip, 9001);
    assert!(!f.verdict(stale, &new_token).await, "not believed");
    assert_eq!(
        f.state(&bob).await,
        before,
        "refused reports change nothing"
    );
    let row = f.row(&bob).await.expect("row");
    assert_eq!(
        (row.session_id.as_str(), row.status),
        ("boot-2", Status::Pending)
    );
}

#[tokio::test]
async fn a_pod_deleted_by_hand_demotes_the_row_and_the_platform_recreates_it() {
    let f = Fixture::start(PAUSE_IMAGE).await;
    let dave = user("dave");
    let name = pod_name(&dave, HASH, 1);
    f.get_server(&dave, "s1").await;
    let pod = f.wait_pod_of(&dave, &name, "s1", None).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let running = wait_for_pod(&f.pods(&dave), &name, PodGoal::Running, WAIT)
        .await
        .expect("the pod runs");
    let ip = running.status.and_then(|s| s.pod_ip).expect("pod IP");
    assert!(f.report_ready(&dave, "s1", &ip, 9002).await);
    let ready = f.get_server(&dave, "s1").await;
    assert_eq!(ready.status(), ServerStatus::Ready);
    assert_eq!(ready.pod_ip, ip);
    assert_eq!(
        ready.command_port, 9002,
        "the reported command port is served back"
    );

    f.pods(&dave)
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete by hand");
    f.wait_gone(&dave, &name, &uid).await;
    // The reconciler saw it go: the row leaves READY.
    f.wait_row(&dave, "row leaves READY", |r| {
        r.is_some_and(|r| r.status == Status::Pending && r.pod_ip.is_none())
    })
    .await;

    // ... and makes the pod again by itself, before the user's next command.
    let new = f.wait_pod_of(&dave, &name, "s1", Some(&uid)).await;
    assert_ne!(new.metadata.uid.as_deref(), Some(uid.as_str()));
    let server = f.get_server(&dave, "s1").await;
    assert_eq!(server.status(), ServerStatus::Pending);
    assert_eq!(f.platform_pods().await.len(), 1);
}

#[tokio::test]
async fn the_reconciler_deletes_orphan_pods() {
    // Staged while the orchestrator is down (think: it crashed between a bounce's commit
    // and its pod deletion): pods that no row accounts for are running.
    let p = Prepared::new(PAUSE_IMAGE).await;
    let erin = user("erin");
    let no_row = p
        .running_pod(
            &erin,
            &PodSpecFor {
                user_id: &UserId::parse(&erin).expect("valid"),
                repo_hash: &RepoHash::parse(HASH).expect("valid"),
                session_id: &sid("ghost"),
                generation: 1,
            }
            .manifest(&p.settings),
        )
        .await;
    // Frank bounced (generation 2, "current") but the crash came before anything touched
    // the cluster: generation 1's pod ("stale") runs, generation 2's was never made.
    let frank = user("frank");
    let frank_key = SessionKey::new(
        UserId::parse(&frank).expect("valid"),
        RepoHash::parse(HASH).expect("valid"),
    );
    for session in ["stale", "current"] {
        p.store
            .get_server(&frank_key, &sid(session), Instant::now() + WAIT)
            .await
            .expect("row");
    }
    let other_session = p
        .running_pod(
            &frank,
            &PodSpecFor {
                user_id: &UserId::parse(&frank).expect("valid"),
                repo_hash: &RepoHash::parse(HASH).expect("valid"),
                session_id: &sid("stale"),
                generation: 1,
            }
            .manifest(&p.settings),
        )
        .await;
    let keep_key = user("gus");
    p.store
        .get_server(
            &SessionKey::new(
                UserId::parse(&keep_key).expect("valid"),
                RepoHash::parse(HASH).expect("valid"),
            ),
            &sid("s1"),
            Instant::now() + WAIT,
        )
        .await
        .expect("row");
    let keep = p
        .running_pod(
            &keep_key,
            &PodSpecFor {
                user_id: &UserId::parse(&keep_key).expect("valid"),
                repo_hash: &RepoHash::parse(HASH).expect("valid"),
                session_id: &sid("s1"),
                generation: 1,
            }
            .manifest(&p.settings),
        )
        .await;

    let t0 = Instant::now();
    let f = p.serve().await;
    for (owner, pod) in [(&erin, &no_row), (&frank, &other_session)] {
        f.wait_gone(
            owner,
            pod.metadata.name.as_deref().expect("name"),
            pod.metadata.uid.as_deref().expect("uid"),
        )
        .await;
    }
    eprintln!(
        "orphan pods reaped {:?} after the orchestrator started",
        t0.elapsed()
    );
    // Frank's PENDING row without its pod is repaired by the platform: generation 2 made.
    let made = f
        .wait_pod_of(&frank, &pod_name(&frank, HASH, 2), "current", None)
        .await;
    eprintln!(
        "PENDING row without a pod repaired {:?} after start",
        t0.elapsed()
    );
    // The pod that matches its row stays; the reconciler wrote no row for the orphans.
    let left: HashSet<_> = f
        .platform_pods()
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| p.metadata.uid)
        .collect();
    assert_eq!(
        left,
        HashSet::from([keep.metadata.uid.clone(), made.metadata.uid.clone()])
    );
    assert_eq!(f.row_count().await, 2);
    let row = f.row(&frank).await.expect("row");
    assert_eq!(
        (row.session_id.as_str(), row.generation),
        ("current", 2),
        "the row is untouched"
    );

    // While it runs, too: a pod of no row appearing now is deleted at once. (It is kept
    // off the node: this 1.20 kubelet can take minutes to finish a pod deleted while its
    // volumes are being set up, which would measure the kubelet, not the reconciler.)
    let hugo = user("hugo");
    let mut orphan = PodSpecFor {
        user_id: &UserId::parse(&hugo).expect("valid"),
        repo_hash: &RepoHash::parse(HASH).expect("valid"),
        session_id: &sid("ghost"),
        generation: 1,
    }
    .manifest(&f.settings);
    if let Some(spec) = orphan.spec.as_mut() {
        spec.node_selector = Some(std::collections::BTreeMap::from([(
            "jbazel.dev/test".to_string(),
            "no-such-node".to_string(),
        )]));
    }
    user_namespace_ready(&f.kube, &f.namespace, &hugo).await;
    let created = f
        .pods(&hugo)
        .create(&PostParams::default(), &orphan)
        .await
        .expect("create orphan");
    f.wait_gone(
        &hugo,
        &pod_name(&hugo, HASH, 1),
        created.metadata.uid.as_deref().expect("uid"),
    )
    .await;
}

#[tokio::test]
async fn the_reconciler_marks_ready_when_the_push_was_lost() {
    let f = Fixture::start(PAUSE_IMAGE).await;
    let gina = user("gina");
    let key = SessionKey::new(
        UserId::parse(&gina).expect("valid"),
        RepoHash::parse(HASH).expect("valid"),
    );
    // The row exists (PENDING) and its pod becomes Ready, but nobody calls ReportReady.
    // The pod is the platform's manifest without the probe (the pause image serves no
    // /readyz), so the kubelet marks it Ready once it runs: what a passing probe does.
    // The namespace first: between the row and the pod the reconciler's sweep (every
    // RESYNC) would make the pod itself, so that window stays one API call short.
    user_namespace_ready(&f.kube, &f.namespace, &gina).await;
    f.store
        .get_server(&key, &sid("s1"), Instant::now() + WAIT)
        .await
        .expect("row");
    let mut pod = PodSpecFor {
        user_id: &UserId::parse(&gina).expect("valid"),
        repo_hash: &RepoHash::parse(HASH).expect("valid"),
        session_id: &sid("s1"),
        generation: 1,
    }
    .manifest(&f.settings);
    if let Some(spec) = pod.spec.as_mut() {
        spec.containers[0].readiness_probe = None;
    }
    // Should the sweep still win the race, its pod (with the probe the pause image fails)
    // is replaced by this one.
    let name = pod_name(&gina, HASH, 1);
    for attempt in 0.. {
        match f.pods(&gina).create(&PostParams::default(), &pod).await {
            Ok(_) => break,
            Err(kube::Error::Api(s)) if s.code == 409 && attempt < 3 => {
                let theirs = f.pods(&gina).get(&name).await.expect("get pod");
                let uid = theirs.metadata.uid.clone().unwrap_or_default();
                f.pods(&gina)
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await
                    .expect("delete the reconciler's pod");
                f.wait_gone(&gina, &name, &uid).await;
            }
            Err(e) => panic!("create pod: {e:?}"),
        }
    }
    let row = f
        .wait_row(&gina, "row READY from the watch", |r| {
            r.is_some_and(|r| r.status == Status::Ready)
        })
        .await
        .expect("row");
    let live = f
        .pods(&gina)
        .get(&pod_name(&gina, HASH, 1))
        .await
        .expect("pod");
    let ip = live.status.and_then(|s| s.pod_ip).expect("pod IP");
    assert_eq!(row.pod_ip.as_deref(), Some(ip.as_str()));
    assert_eq!(row.session_id, "s1");
    // GetServer now answers READY from the row with that IP (and the default port).
    let server = f.get_server(&gina, "s1").await;
    assert_eq!(server.status(), ServerStatus::Ready);
    assert_eq!(server.pod_ip, ip);
    assert_eq!(server.command_port, 9001);
}

async fn watch_events(
    f: &Fixture,
    user: &str,
    session: &str,
    deadline: Duration,
) -> (Vec<ServerEvent>, Option<tonic::Status>, Duration) {
    let t0 = Instant::now();
    let mut stream = f
        .client(user)
        .watch_server(WatchServerRequest {
            user_id: user.into(),
            repo_hash: HASH.into(),
            session_id: session.into(),
        })
        .await
        .expect("WatchServer")
        .into_inner();
    let mut events = Vec::new();
    let end = tokio::time::timeout(deadline, async {
        loop {
            match stream.message().await {
                Ok(Some(e)) => events.push(e),
                Ok(None) => return None,
                Err(s) => return Some(s),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the stream did not end within {deadline:?}"));
    (events, end, t0.elapsed())
}

#[tokio::test]
async fn watch_server_reports_a_missing_image_as_a_failure_within_seconds() {
    let f = Fixture::start("docker.io/library/jbazel-no-such-image:never").await;
    let hana = user("hana");
    f.get_server(&hana, "s1").await;
    let (events, end, took) = watch_events(&f, &hana, "s1", Duration::from_secs(30)).await;
    eprintln!("missing image reported in {took:?}: {events:#?}");
    let last = events.last().expect("events");
    assert_eq!(last.stage(), Stage::Failed);
    assert_eq!(last.reason, "ErrImageNeverPull");
    assert!(
        last.message.contains("jbazel-no-such-image"),
        "{}",
        last.message
    );
    assert_eq!(events[0].stage(), Stage::Session);
    let status = end.expect("the stream ends with an error status");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(status.message().contains("ErrImageNeverPull"));
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[tokio::test]
async fn watch_server_follows_the_pod_and_ends_with_ready() {
    let f = Fixture::start(PAUSE_IMAGE).await;
    let ivan = user("ivan");
    let name = pod_name(&ivan, HASH, 1);
    f.get_server(&ivan, "s1").await;
    let mut stream = f
        .client(&ivan)
        .watch_server(WatchServerRequest {
            user_id: ivan.clone(),
            repo_hash: HASH.into(),
            session_id: "s1".into(),
        })
        .await
        .expect("WatchServer")
        .into_inner();
    let mut stages = Vec::new();
    // Follow until the container runs, then play the supervisor's push.
    let ip = tokio::time::timeout(WAIT, async {
        loop {
            let e = stream.message().await.expect("stream").expect("an event");
            stages.push(e.stage());
            if e.stage() == Stage::ContainerRunning {
                let pod = f.pods(&ivan).get(&name).await.expect("pod");
                break pod.status.and_then(|s| s.pod_ip).expect("pod IP");
            }
        }
    })
    .await
    .expect("the container runs");
    assert!(f.report_ready(&ivan, "s1", &ip, 9001).await);
    let last = tokio::time::timeout(WAIT, async {
        loop {
            let e = stream.message().await.expect("stream").expect("an event");
            stages.push(e.stage());
            if e.stage() == Stage::Ready {
                break e;
            }
        }
    })
    .await
    .expect("READY arrives");
    let server = last.server.expect("server");
    assert_eq!(server.status(), ServerStatus::Ready);
    assert_eq!(server.pod_ip, ip);
    assert_eq!(server.command_port, 9001);
    assert_eq!(stages[0], Stage::Session);
    assert!(
        stream.message().await.expect("clean end").is_none(),
        "READY is the last event"
    );
    // A watch on a READY row answers READY at once.
    let (events, end, _) = watch_events(&f, &ivan, "s1", Duration::from_secs(5)).await;
    assert_eq!(
        events.iter().map(|e| e.stage()).collect::<Vec<_>>(),
        [Stage::Ready]
    );
    assert!(end.is_none());
    // A superseded session is told so.
    f.get_server(&ivan, "s2").await;
    let err = f
        .client(&ivan)
        .watch_server(WatchServerRequest {
            user_id: ivan.clone(),
            repo_hash: HASH.into(),
            session_id: "s1".into(),
        })
        .await
        .expect_err("superseded");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
}

#[tokio::test]
async fn bad_inputs_are_invalid_argument_and_nothing_is_written_or_created() {
    let f = Fixture::start(PAUSE_IMAGE).await;
    let long = "a".repeat(10 * 1024);
    let cases: Vec<(String, String, String)> = vec![
        ("../etc".into(), HASH.into(), "s".into()),
        ("..".into(), HASH.into(), "s".into()),
        ("a/b".into(), HASH.into(), "s".into()),
        ("Alice".into(), HASH.into(), "s".into()),
        ("ALICE".into(), HASH.into(), "s".into()),
        ("al\0ce".into(), HASH.into(), "s".into()),
        ("".into(), HASH.into(), "s".into()),
        (long.clone(), HASH.into(), "s".into()),
        ("ålice".into(), HASH.into(), "s".into()),
        ("alice😀".into(), HASH.into(), "s".into()),
        ("-alice".into(), HASH.into(), "s".into()),
        ("alice.smith".into(), HASH.into(), "s".into()),
        (
            "alice".into(),
            "../../../../../../../../etc/passw".into(),
            "s".into(),
        ),
        ("alice".into(), HASH.to_uppercase(), "s".into()),
        ("alice".into(), "".into(), "s".into()),
        ("alice".into(), format!("{HASH}0"), "s".into()),
        ("alice".into(), format!("{}\0", &HASH[..31]), "s".into()),
        ("alice".into(), long.clone(), "s".into()),
        (
            "alice".into(),
            "0123456789abcdef0123456789abcdeé".into(),
            "s".into(),
        ),
        ("alice".into(), HASH.into(), "".into()),
        ("alice".into(), HASH.into(), "s/../x".into()),
        ("alice".into(), HASH.into(), "s\0".into()),
        ("alice".into(), HASH.into(), long.clone()),
        ("alice".into(), HASH.into(), "séssion".into()),
        ("alice".into(), HASH.into(), "s s".into()),
        ("alice".into(), HASH.into(), "s\n".into()),
    ];
    assert!(cases.len() >= 20);
    // Names are checked first, whoever calls: alice's certificate, and no credential at
    // all for ReportReady.
    let mut client = f.client("alice");
    let mut pod_client = f.anonymous.clone();
    for (u, h, s) in &cases {
        let what = format!("({:.40?}, {:.40?}, {:.40?})", u, h, s);
        let err = client
            .get_server(GetServerRequest {
                user_id: u.clone(),
                repo_hash: h.clone(),
                session_id: s.clone(),
            })
            .await
            .expect_err(&what);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "GetServer {what}: {err}"
        );
        assert!(
            err.message().len() < 300,
            "the message must not echo the input"
        );
        let err = client
            .watch_server(WatchServerRequest {
                user_id: u.clone(),
                repo_hash: h.clone(),
                session_id: s.clone(),
            })
            .await
            .expect_err(&what);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "WatchServer {what}"
        );
        let err = pod_client
            .report_ready(ReportReadyRequest {
                user_id: u.clone(),
                repo_hash: h.clone(),
                session_id: s.clone(),
                pod_name: "bazel-alice-0123456789abcdef-g1".into(),
                pod_ip: "10.244.0.9".into(),
                command_port: 9001,
            })
            .await
            .expect_err(&what);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "ReportReady {what}"
        );
    }
    // ReportReady's own fields.
    let alices = pod_name("alice", HASH, 1);
    for (pod, ip, port) in [
        (pod_name("mallory", HASH, 1), "10.244.0.9", 9001),
        (alices.clone(), "not-an-ip", 9001),
        (alices.clone(), "10.244.0.9", 70000),
    ] {
        let err = pod_client
            .report_ready(ReportReadyRequest {
                user_id: "alice".into(),
                repo_hash: HASH.into(),
                session_id: "s".into(),
                pod_name: pod.clone(),
                pod_ip: ip.into(),
                command_port: port,
            })
            .await
            .expect_err(&pod);
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
    }
    assert_eq!(f.row_count().await, 0, "no row written");
    assert!(f.platform_pods().await.is_empty(), "no pod created");

    // Valid names, but no credential, or another user's: refused, nothing done.
    let alice_s = || GetServerRequest {
        user_id: "alice".into(),
        repo_hash: HASH.into(),
        session_id: "s".into(),
    };
    let alice_watch = || WatchServerRequest {
        user_id: "alice".into(),
        repo_hash: HASH.into(),
        session_id: "s".into(),
    };
    let err = pod_client
        .get_server(alice_s())
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let err = pod_client
        .watch_server(alice_watch())
        .await
        .expect_err("no credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let mut bob = f.client("bob");
    let err = bob.get_server(alice_s()).await.expect_err("bob for alice");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    let err = bob
        .watch_server(alice_watch())
        .await
        .expect_err("bob for alice");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert_eq!(f.row_count().await, 0, "no row written");
    assert!(f.platform_pods().await.is_empty(), "no pod created");
    // The same service still works for a good request.
    assert_eq!(
        f.get_server("alice", "s").await.status(),
        ServerStatus::Pending
    );
    assert_eq!(f.row_count().await, 1);
    let names: HashSet<_> = f
        .platform_pods()
        .await
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    assert_eq!(names, HashSet::from([pod_name("alice", HASH, 1)]));

    // Alice's pod's token cannot report for another user's pod (a forged report with a
    // real token): refused, nothing changes.
    let token = f.pod_token("alice", 1).await;
    let before = (f.state("alice").await, f.row("bob").await);
    let err = f
        .report(
            ReportReadyRequest {
                user_id: "bob".into(),
                repo_hash: HASH.into(),
                session_id: "s".into(),
                pod_name: pod_name("bob", HASH, 1),
                pod_ip: "10.244.0.9".into(),
                command_port: 9001,
            },
            Some(&token),
        )
        .await
        .expect_err("another user's token");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err}");
    assert_eq!((f.state("alice").await, f.row("bob").await), before);
    assert_eq!(f.row_count().await, 1);
}

/// The real image: the supervisor pivots, starts Bazel, passes /readyz and pushes
/// ReportReady to this orchestrator through the bridge gateway.
#[tokio::test]
async fn the_real_supervisor_reports_ready_through_the_gateway() {
    let p = Prepared::new(IMAGE).await.reachable_from_pods();
    let jack = user("jack");
    let repo = p.sample_repo(&jack);
    let f = p.serve().await;
    let t0 = Instant::now();
    f.get_server(&jack, "s1").await;
    let (events, end, took) = watch_events(&f, &jack, "s1", Duration::from_secs(120)).await;
    let stages: Vec<_> = events.iter().map(|e| e.stage()).collect();
    eprintln!(
        "real image: GetServer -> READY in {:?} (watch {took:?}); stages {stages:?}",
        t0.elapsed()
    );
    assert!(end.is_none(), "clean end, got {end:?} after {events:#?}");
    let last = events.last().expect("events");
    assert_eq!(last.stage(), Stage::Ready, "{events:#?}");
    let server = last.server.clone().expect("server");
    let pod = f.pods(&jack).get(&server.pod_name).await.expect("pod");
    let ip = pod.status.and_then(|s| s.pod_ip).expect("pod IP");
    assert_eq!(server.pod_ip, ip);
    assert_eq!(server.command_port, 9001);
    // The supervisor ran Bazel on the mirror: its output base is in the filestore.
    assert!(
        repo.join("out/server/request_cookie").exists(),
        "no Bazel output base in {}",
        repo.display()
    );
}

/// The real image with the push lost (ORCHESTRATOR_ADDR leads nowhere): the readiness
/// probe passes and the reconciler's watch makes the row READY.
#[tokio::test]
async fn the_real_readiness_probe_makes_the_row_ready_when_the_push_is_lost() {
    let p = Prepared::new(IMAGE).await;
    let kate = user("kate");
    p.sample_repo(&kate);
    let f = p.serve().await;
    let t0 = Instant::now();
    f.get_server(&kate, "s1").await;
    let (events, end, _) = watch_events(&f, &kate, "s1", Duration::from_secs(120)).await;
    eprintln!(
        "real image, push lost: READY from the probe in {:?}",
        t0.elapsed()
    );
    assert!(end.is_none(), "clean end, got {end:?} after {events:#?}");
    assert_eq!(
        events.last().map(|e| e.stage()),
        Some(Stage::Ready),
        "{events:#?}"
    );
    let row = f.row(&kate).await.expect("row");
    let pod = f
        .pods(&kate)
        .get(&pod_name(&kate, HASH, 1))
        .await
        .expect("pod");
    assert_eq!(row.status, Status::Ready);
    assert_eq!(row.pod_ip, pod.status.and_then(|s| s.pod_ip));
}
