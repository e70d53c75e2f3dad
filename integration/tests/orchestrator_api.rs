//! The orchestrator against the REAL local cluster and a real Spanner emulator, through its
//! gRPC API: pods created, replaced, recreated and reaped; the reconciler's repairs;
//! WatchServer's failure reporting; validation. Each test has its own namespace and its
//! own emulator.
//!
//! Needs `integration/kubernetes/local.sh up` first; fails (never skips) without it.
//! Pods that must actually run use the cluster's own pause image (always present), so
//! these tests do not depend on the Bazel server image being built; the manifest test
//! checks the contract's image name, whatever the pod's state.

use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use gcloud_spanner::statement::Statement;
use integration::kubernetes::{
    wait_for_pod, Cluster, PodGoal, TestNamespace, IMAGE, PAUSE_IMAGE, POD_GATEWAY,
};
use integration::spanner::SpannerEmulator;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::runtime::wait::{await_condition, conditions};
use kube::Api;
use orchestrator::app::{self, Parts, Running};
use orchestrator::engine::SessionStore;
use orchestrator::pods::manifest::{APP_SELECTOR, LABEL_SESSION};
use orchestrator::pods::{pod_name, PodSettings, PodSpecFor};
use orchestrator::service::ServiceSettings;
use orchestrator::session::{SessionKey, Status};
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
    client: OrchestratorClient<Channel>,
    pods: Api<Pod>,
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
            image: image.to_string(),
            filestore_root: filestore.path().to_path_buf(),
            // Tests simulate the supervisor's push themselves: a pod's own report would
            // target the host's gateway, where nothing of this test listens.
            orchestrator_addr: "http://10.244.0.1:1".to_string(),
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

    /// Creates a pod of the platform's manifest directly and waits until it runs.
    async fn running_pod(&self, pod: &Pod) -> Pod {
        let name = pod.metadata.name.clone().expect("name");
        let pods = self.namespace.pods();
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
            self.settings.orchestrator_addr = format!("http://{POD_GATEWAY}:{port}");
        }
        let running = app::start(
            Parts {
                store: self.store.clone(),
                kube: self.cluster.client(),
                pods: self.settings.clone(),
                service: ServiceSettings::default(),
                resync_interval: RESYNC,
            },
            listener,
        )
        .await
        .expect("orchestrator starts");
        let port = running.addr.port();
        let client = OrchestratorClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .expect("connect to the orchestrator");
        Fixture {
            store: self.store,
            client,
            pods: self.namespace.pods(),
            settings: self.settings,
            _running: running,
            _filestore: self.filestore,
            namespace: self.namespace,
            _emulator: self.emulator,
            _serial: self.serial,
        }
    }
}

impl Fixture {
    async fn start(image: &str) -> Fixture {
        Prepared::new(image).await.serve().await
    }

    async fn get_server(&self, user: &str, session: &str) -> Server {
        self.client
            .clone()
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

    /// A report from the row's current pod (generation).
    async fn report_ready(&self, user: &str, session: &str, ip: &str, port: u32) -> bool {
        let generation = self.row(user).await.map_or(1, |r| r.generation);
        self.report_ready_from(user, session, generation, ip, port)
            .await
    }

    async fn row(&self, user: &str) -> Option<orchestrator::session::SessionRow> {
        let key = SessionKey::new(
            UserId::parse(user).expect("valid"),
            RepoHash::parse(HASH).expect("valid"),
        );
        self.store
            .read(&key, Instant::now() + WAIT)
            .await
            .expect("read row")
    }

    /// A report from the pod of `generation`.
    async fn report_ready_from(
        &self,
        user: &str,
        session: &str,
        generation: u64,
        ip: &str,
        port: u32,
    ) -> bool {
        self.client
            .clone()
            .report_ready(ReportReadyRequest {
                user_id: user.into(),
                repo_hash: HASH.into(),
                session_id: session.into(),
                pod_name: pod_name(user, HASH, generation),
                pod_ip: ip.into(),
                command_port: port,
            })
            .await
            .unwrap_or_else(|s| panic!("ReportReady({user}, {session}): {s}"))
            .into_inner()
            .accepted
    }

    async fn platform_pods(&self) -> Vec<Pod> {
        self.pods
            .list(&ListParams::default().labels(APP_SELECTOR))
            .await
            .expect("list pods")
            .items
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

    /// Waits until the pod named `name` exists with `session` and another UID than `not_uid`.
    async fn wait_pod_of(&self, name: &str, session: &str, not_uid: Option<&str>) -> Pod {
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
        tokio::time::timeout(WAIT, await_condition(self.pods.clone(), name, cond))
            .await
            .unwrap_or_else(|_| panic!("pod {name} of the session did not appear"))
            .expect("watch")
            .expect("pod")
    }

    async fn wait_gone(&self, name: &str, uid: &str) {
        tokio::time::timeout(
            WAIT,
            await_condition(self.pods.clone(), name, conditions::is_deleted(uid)),
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
        cond: impl Fn(Option<&orchestrator::session::SessionRow>) -> bool,
    ) -> Option<orchestrator::session::SessionRow> {
        let key = SessionKey::new(
            UserId::parse(user).expect("valid"),
            RepoHash::parse(HASH).expect("valid"),
        );
        until(WAIT, what, || async {
            let row = self
                .store
                .read(&key, Instant::now() + WAIT)
                .await
                .expect("read row");
            cond(row.as_ref()).then_some(row)
        })
        .await
    }
}

/// Re-evaluates `check` every 50 ms until it yields a value, failing after `deadline`.
fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("valid session id")
}

async fn until<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out after {deadline:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    assert_eq!(server.namespace, f.namespace.name());
    assert_eq!(server.session_id, "desk-1");
    assert_eq!(server.pod_ip, "");

    let pods = f.platform_pods().await;
    assert_eq!(pods.len(), 1, "exactly one pod");
    let pod = &pods[0];
    assert_eq!(pod.metadata.name.as_deref(), Some(server.pod_name.as_str()));
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
    assert_eq!(env["ORCHESTRATOR_ADDR"], "http://10.244.0.1:1");
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
    assert_eq!(
        sc.capabilities.and_then(|c| c.add),
        Some(vec!["SYS_ADMIN".to_string()])
    );
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
            let mut client = f.client.clone();
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
    let old = f.wait_pod_of(&name, "boot-1", None).await;
    let old_uid = old.metadata.uid.clone().expect("uid");
    let running = wait_for_pod(&f.pods, &name, PodGoal::Running, WAIT)
        .await
        .expect("the first session's pod runs");
    let ip = running.status.and_then(|s| s.pod_ip).expect("pod IP");
    // A report naming another address than the pod's is not believed.
    assert!(!f.report_ready(&bob, "boot-1", "10.244.0.250", 9001).await);
    assert!(f.report_ready(&bob, "boot-1", &ip, 9001).await);
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
    let new = f.wait_pod_of(&server.pod_name, "boot-2", None).await;
    eprintln!("bounce: new pod created in {:?}", t0.elapsed());
    f.wait_gone(&name, &old_uid).await;
    eprintln!("bounce: old pod gone after {:?}", t0.elapsed());
    assert_ne!(new.metadata.uid.as_deref(), Some(old_uid.as_str()));
    assert_eq!(f.platform_pods().await.len(), 1);

    // The old pod's late report is fenced off.
    assert!(!f.report_ready_from(&bob, "boot-1", 1, &ip, 9001).await);
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
    let pod = f.wait_pod_of(&name, "s1", None).await;
    let uid = pod.metadata.uid.clone().expect("uid");
    let running = wait_for_pod(&f.pods, &name, PodGoal::Running, WAIT)
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

    f.pods
        .delete(&name, &DeleteParams::default())
        .await
        .expect("delete by hand");
    f.wait_gone(&name, &uid).await;
    // The reconciler saw it go: the row leaves READY.
    f.wait_row(&dave, "row leaves READY", |r| {
        r.is_some_and(|r| r.status == Status::Pending && r.pod_ip.is_none())
    })
    .await;

    // ... and makes the pod again by itself, before the user's next command.
    let new = f.wait_pod_of(&name, "s1", Some(&uid)).await;
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
    for pod in [&no_row, &other_session] {
        f.wait_gone(
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
        .wait_pod_of(&pod_name(&frank, HASH, 2), "current", None)
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
    let created = f
        .pods
        .create(&PostParams::default(), &orphan)
        .await
        .expect("create orphan");
    f.wait_gone(
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
    f.pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let row = f
        .wait_row(&gina, "row READY from the watch", |r| {
            r.is_some_and(|r| r.status == Status::Ready)
        })
        .await
        .expect("row");
    let live = f.pods.get(&pod_name(&gina, HASH, 1)).await.expect("pod");
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
        .client
        .clone()
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
        .client
        .clone()
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
                let pod = f.pods.get(&name).await.expect("pod");
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
        .client
        .clone()
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
    let mut client = f.client.clone();
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
        let err = client
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
        let err = client
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
    let pod = f.pods.get(&server.pod_name).await.expect("pod");
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
    let pod = f.pods.get(&pod_name(&kate, HASH, 1)).await.expect("pod");
    assert_eq!(row.status, Status::Ready);
    assert_eq!(row.pod_ip, pod.status.and_then(|s| s.pod_ip));
}
