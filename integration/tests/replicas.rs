//! Two orchestrator replicas on one Spanner and one cluster, and the session store going
//! away: the platform's fencing and repairs, measured on the real cluster and emulator.
//!
//! The pods here run the pause image: these tests are about rows, pods and their fencing,
//! not about Bazel (the e2e and lifecycle tests run the real image), and a 2-core node
//! cannot start a Bazel server for each of hundreds of spawns.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use integration::kubernetes::{TestNamespace, PAUSE_IMAGE};
use integration::platform::Orchestrator;
use integration::stack::{PlatformOptions, TestPlatform};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use kube::Api;
use orchestrator::engine::SessionStore;
use orchestrator::pods::{pod_name, view};
use orchestrator::session::{SessionKey, SessionRow, Status};
use orchestrator::store::Store;
use proto::names::{RepoHash, UserId};
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{GetServerRequest, ReportReadyRequest};
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tonic::transport::Channel;

/// Two repositories of one user whose hashes share their first 16 hex digits, and more
/// users: the keys of the storm.
const HASHES: [&str; 2] = [
    "0123456789abcdef0123456789abcdef",
    "0123456789abcdefffffffffffffffff",
];
const USERS: [&str; 3] = ["alice", "bob", "carol"];
const SESSIONS: [&str; 3] = ["s1", "s2", "s3"];
const OPS: usize = 500;
const IN_FLIGHT: usize = 8;
const QUIESCE: Duration = Duration::from_secs(120);

fn options() -> PlatformOptions {
    PlatformOptions {
        image: PAUSE_IMAGE.into(),
        orchestrator_args: vec!["--resync-interval-secs".into(), "2".into()],
    }
}

fn keys() -> Vec<SessionKey> {
    USERS
        .iter()
        .flat_map(|u| {
            HASHES.iter().map(move |h| {
                SessionKey::new(
                    UserId::parse(*u).expect("valid"),
                    RepoHash::parse(*h).expect("valid"),
                )
            })
        })
        .collect()
}

/// Deadline of each call of the storm.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The clients of one orchestrator: one per user (each with the user's certificate), and
/// one without a client certificate for the pods' reports (their bound token instead).
#[derive(Clone)]
struct Clients {
    users: HashMap<String, OrchestratorClient<Channel>>,
    pod: OrchestratorClient<Channel>,
}

impl Clients {
    fn new(o: &Orchestrator, users: &[&str]) -> Clients {
        let url = o.url();
        let users = users
            .iter()
            .map(|u| {
                let channel = integration::platform::user_channel(&url, u)
                    .unwrap_or_else(|e| panic!("a channel as {u}: {e:?}"));
                (u.to_string(), OrchestratorClient::new(channel))
            })
            .collect();
        let pod = OrchestratorClient::new(
            integration::platform::channel_with(&url, "a pod", None).expect("channel"),
        );
        Clients { users, pod }
    }

    fn user(&self, user: &str) -> OrchestratorClient<Channel> {
        self.users
            .get(user)
            .unwrap_or_else(|| panic!("no client for {user}"))
            .clone()
    }
}

fn timed<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_TIMEOUT);
    request
}

/// ReportReady as a pod sends it: its bound token (if any) in `authorization`.
async fn report(
    clients: &Clients,
    request: ReportReadyRequest,
    token: Option<&str>,
) -> Result<bool, tonic::Status> {
    let mut request = timed(request);
    if let Some(token) = token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header value"),
        );
    }
    clients
        .pod
        .clone()
        .report_ready(request)
        .await
        .map(|r| r.into_inner().accepted)
}

/// The bound token of a live pod of `user` (None when it went away meanwhile).
async fn token_of(namespace: &TestNamespace, user: &str, pod: &Pod) -> Option<String> {
    let name = pod.metadata.name.as_deref()?;
    let uid = pod.metadata.uid.as_deref()?;
    namespace.pod_token(user, name, uid).await.ok()
}

/// Every server pod of the platform (each user's in the user's namespace).
async fn platform_pods(namespace: &TestNamespace) -> Vec<Pod> {
    namespace.platform_pods().await.expect("list pods")
}

/// The uids of the platform's pods, sorted: what a refused call must not change.
async fn pod_uids(namespace: &TestNamespace) -> Vec<Option<String>> {
    let mut uids: Vec<_> = platform_pods(namespace)
        .await
        .into_iter()
        .map(|p| p.metadata.uid)
        .collect();
    uids.sort();
    uids
}

/// The live pods of one key.
async fn pods_of(pods: &Api<Pod>, k: &SessionKey) -> Vec<Pod> {
    let selector = format!(
        "jbazel.dev/user={},jbazel.dev/repo-hash={}",
        k.user_id, k.repo_hash
    );
    pods.list(&ListParams::default().labels(&selector))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

/// Every row of `keys`, read from the emulator.
async fn rows(store: &Store, keys: &[SessionKey]) -> HashMap<SessionKey, Option<SessionRow>> {
    let mut out = HashMap::new();
    for k in keys {
        let row = store
            .read(k, Instant::now() + Duration::from_secs(10))
            .await
            .expect("read row");
        out.insert(k.clone(), row);
    }
    out
}

/// What is wrong with the cluster against the rows, as sentences; empty when settled:
/// at most one pod per key and it carries the row's session and generation, no orphan
/// pods, no pod terminating, every READY (and PENDING) row has its live pod.
fn violations(rows: &HashMap<SessionKey, Option<SessionRow>>, pods: &[Pod]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut per_key: HashMap<SessionKey, Vec<&Pod>> = HashMap::new();
    for pod in pods {
        let name = pod.metadata.name.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            problems.push(format!("{name} is still terminating"));
            continue;
        }
        match view::key_of(pod) {
            Some(k) => per_key.entry(k).or_default().push(pod),
            None => problems.push(format!("{name} has no key labels")),
        }
    }
    for (k, pods) in &per_key {
        if pods.len() > 1 {
            problems.push(format!("{k} has {} pods", pods.len()));
        }
        let row = rows.get(k).cloned().flatten();
        for pod in pods {
            let v = view::view(pod);
            match &row {
                Some(r) if r.status != Status::Idle && v.fence() == Some(r.fence()) => {}
                _ => problems.push(format!(
                    "{} is an orphan ({:?} against row {row:?})",
                    pod.metadata.name.as_deref().unwrap_or("?"),
                    v.fence()
                )),
            }
        }
    }
    for (k, row) in rows {
        let Some(row) = row else { continue };
        if row.status == Status::Idle {
            continue;
        }
        let want = pod_name(&k.user_id, &k.repo_hash, row.generation);
        let live = per_key
            .get(k)
            .is_some_and(|ps| ps.iter().any(|p| p.metadata.name.as_deref() == Some(&want)));
        if !live {
            problems.push(format!("{k} is {} without its pod {want}", row.status));
        }
    }
    problems
}

#[derive(Default, Debug)]
struct Counts {
    get_server: usize,
    bounces: usize,
    reports: usize,
    /// Reports of a real pod with its own token.
    genuine_reports: usize,
    reports_accepted: usize,
    /// Reports without a token or with another pod's.
    forged_reports: usize,
    /// ... refused as they must be (Unauthenticated, PermissionDenied).
    forged_refused: usize,
    /// ... answered at all (must stay 0).
    forged_answered: usize,
    pod_deletes: usize,
    errors: usize,
    kills: usize,
}

/// What one operation of the storm came to.
enum Outcome {
    Done,
    Accepted,
    ForgedRefused,
    ForgedAnswered,
    Error,
}

type Op<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

#[tokio::test]
async fn a_storm_over_two_replicas_with_a_kill_settles_to_one_fenced_pod_per_key() {
    let p = TestPlatform::start_with("storm", options())
        .await
        .expect("platform");
    let port_b = testkit::free_port().expect("port");
    let mut replica_b = Some(
        p.orchestrator_on(port_b, "replica-b.log")
            .expect("replica B"),
    );
    let a = Clients::new(&p.orchestrator, &USERS);
    let b = Clients::new(replica_b.as_ref().expect("B"), &USERS);
    let store = Store::connect(&p.emulator.database_path(), &p.emulator.host())
        .await
        .expect("store");
    let namespace = &p.namespace;
    let keys = keys();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0013);
    let mut counts = Counts::default();
    let mut last_session: HashMap<SessionKey, &str> = HashMap::new();
    let t0 = std::time::Instant::now();

    let mut done = 0;
    while done < OPS {
        // One batch of concurrent operations, spread over both replicas.
        let mut batch: Vec<Op<'_>> = Vec::new();
        for _ in 0..IN_FLIGHT.min(OPS - done) {
            let k = keys[rng.random_range(0..keys.len())].clone();
            let use_b = replica_b.is_some() && rng.random_bool(0.5);
            let clients = if use_b { b.clone() } else { a.clone() };
            let pods = namespace.user_pods(k.user_id.as_str());
            let roll = rng.random_range(0..100);
            if roll < 55 {
                let session = SESSIONS[rng.random_range(0..SESSIONS.len())];
                counts.get_server += 1;
                if last_session
                    .insert(k.clone(), session)
                    .is_some_and(|s| s != session)
                {
                    counts.bounces += 1;
                }
                batch.push(Box::pin(async move {
                    let answer = clients
                        .user(k.user_id.as_str())
                        .get_server(timed(GetServerRequest {
                            user_id: k.user_id.to_string(),
                            repo_hash: k.repo_hash.to_string(),
                            session_id: session.into(),
                        }))
                        .await;
                    match answer {
                        Ok(_) => Outcome::Done,
                        Err(_) => Outcome::Error,
                    }
                }));
            } else if roll < 85 {
                // A report: half the time a real pod's with its own bound token (the
                // current one, or an older generation still there: a supervisor's genuine
                // report, maybe stale), half a forged one (any session and generation, an
                // address that is no pod's) without a token or with another pod's. Only the
                // current pod at its own address may be believed; a forged report is
                // refused before anything is read.
                let session = SESSIONS[rng.random_range(0..SESSIONS.len())];
                let generation = rng.random_range(1..=4);
                let genuine = rng.random_bool(0.5);
                let with_other_token = rng.random_bool(0.5);
                let other = keys[rng.random_range(0..keys.len())].clone();
                counts.reports += 1;
                let mut request = ReportReadyRequest {
                    user_id: k.user_id.to_string(),
                    repo_hash: k.repo_hash.to_string(),
                    session_id: session.into(),
                    pod_name: pod_name(&k.user_id, &k.repo_hash, generation),
                    pod_ip: format!("10.244.9.{generation}"),
                    command_port: 9001,
                };
                if genuine {
                    counts.genuine_reports += 1;
                    batch.push(Box::pin(async move {
                        let real = pods_of(&pods, &k).await.into_iter().find_map(|p| {
                            let ip = p.status.as_ref()?.pod_ip.clone()?;
                            let session = view::view(&p).session_id?;
                            Some((p, session, ip))
                        });
                        // No pod with an address: nothing to report (no supervisor runs).
                        let Some((pod, session, ip)) = real else {
                            return Outcome::Done;
                        };
                        let Some(token) = token_of(namespace, k.user_id.as_str(), &pod).await
                        else {
                            return Outcome::Done;
                        };
                        request.pod_name = pod.metadata.name.clone().unwrap_or_default();
                        request.session_id = session.to_string();
                        request.pod_ip = ip;
                        match report(&clients, request, Some(&token)).await {
                            Ok(true) => Outcome::Accepted,
                            Ok(false) => Outcome::Done,
                            Err(_) => Outcome::Error,
                        }
                    }));
                } else {
                    counts.forged_reports += 1;
                    let other_pods = namespace.user_pods(other.user_id.as_str());
                    batch.push(Box::pin(async move {
                        // Another pod's token: any live pod of a random key but the named one.
                        let mut token = None;
                        if with_other_token {
                            for pod in pods_of(&other_pods, &other).await {
                                if pod.metadata.name.as_deref() == Some(&request.pod_name) {
                                    continue;
                                }
                                token = token_of(namespace, other.user_id.as_str(), &pod).await;
                                if token.is_some() {
                                    break;
                                }
                            }
                        }
                        match report(&clients, request, token.as_deref()).await {
                            Ok(_) => Outcome::ForgedAnswered,
                            Err(e)
                                if matches!(
                                    e.code(),
                                    tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                                ) =>
                            {
                                Outcome::ForgedRefused
                            }
                            Err(_) => Outcome::Error,
                        }
                    }));
                }
            } else {
                counts.pod_deletes += 1;
                batch.push(Box::pin(async move {
                    for pod in pods_of(&pods, &k).await {
                        let name = pod.metadata.name.unwrap_or_default();
                        let _ = pods.delete(&name, &DeleteParams::default()).await;
                    }
                    Outcome::Done
                }));
            }
        }
        done += batch.len();
        for outcome in futures::future::join_all(batch).await {
            match outcome {
                Outcome::Done => {}
                Outcome::Accepted => counts.reports_accepted += 1,
                Outcome::ForgedRefused => counts.forged_refused += 1,
                Outcome::ForgedAnswered => counts.forged_answered += 1,
                Outcome::Error => counts.errors += 1,
            }
        }
        // Partway through, replica B dies (SIGKILL: no shutdown path) and comes back.
        if done >= OPS / 2 && counts.kills == 0 {
            if let Some(mut dead) = replica_b.take() {
                dead.kill();
                counts.kills += 1;
            }
        }
        if done >= OPS * 3 / 4 && replica_b.is_none() {
            replica_b = Some(
                p.orchestrator_on(port_b, "replica-b-restarted.log")
                    .expect("replica B restarts"),
            );
        }
    }
    let storm = t0.elapsed();
    assert_eq!(
        counts.forged_answered, 0,
        "a forged report got past authentication: {counts:?}"
    );

    // Quiescence: the reconcilers of both replicas settle the cluster on the rows.
    let settle = std::time::Instant::now();
    let mut last: Vec<String> = Vec::new();
    let settled = testkit::wait_until_async(QUIESCE, Duration::from_millis(500), async || {
        let rows = rows(&store, &keys).await;
        let list = platform_pods(namespace).await;
        last = violations(&rows, &list);
        last.is_empty().then_some((rows, list))
    })
    .await;
    let Some((settled_rows, list)) = settled else {
        panic!(
            "not settled after {QUIESCE:?}: {last:#?}\nreplica A log tail:\n{}",
            integration::platform::tail(&p.orchestrator.log(), 40)
        );
    };
    let by_status: BTreeMap<String, usize> =
        settled_rows
            .values()
            .flatten()
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry(r.status.to_string()).or_default() += 1;
                m
            });
    eprintln!(
        "storm: {OPS} ops in {storm:?} ({counts:?}); settled {:?} later: {} pods for {} rows {by_status:?}",
        settle.elapsed(),
        list.len(),
        settled_rows.values().flatten().count(),
    );
    assert!(counts.get_server > 200 && counts.reports > 100 && counts.pod_deletes > 30);
    assert!(
        counts.forged_refused > 30,
        "forged reports are refused: {counts:?}"
    );

    // Settled: each key's current pod reports, as its supervisor would, with its own
    // token, and is believed; the READY rows then still have their live pods.
    for k in &keys {
        let Some(row) = rows(&store, std::slice::from_ref(k))
            .await
            .remove(k)
            .flatten()
        else {
            continue;
        };
        let name = pod_name(&k.user_id, &k.repo_hash, row.generation);
        let pods = namespace.user_pods(k.user_id.as_str());
        let pod = testkit::wait_until_async(QUIESCE, Duration::from_millis(200), async || {
            let pod = pods.get_opt(&name).await.expect("get pod");
            pod.filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
        })
        .await
        .expect("the current pod gets an IP");
        let ip = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .expect("pod IP");
        let token = token_of(namespace, k.user_id.as_str(), &pod)
            .await
            .expect("the current pod's token");
        let request = ReportReadyRequest {
            user_id: k.user_id.to_string(),
            repo_hash: k.repo_hash.to_string(),
            session_id: row.session_id.to_string(),
            pod_name: name,
            pod_ip: ip,
            command_port: 9001,
        };
        // Forged first: without the token, and with another key's pod's token. Refused,
        // nothing changes.
        let before = (
            rows(&store, std::slice::from_ref(k)).await,
            pod_uids(namespace).await,
        );
        let err = report(&a, request.clone(), None)
            .await
            .expect_err("a report without a token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated, "{k}: {err}");
        let other = keys.iter().find(|o| *o != k).expect("another key");
        if let Some(other_pod) = pods_of(&namespace.user_pods(other.user_id.as_str()), other)
            .await
            .first()
        {
            if let Some(other_token) = token_of(namespace, other.user_id.as_str(), other_pod).await
            {
                let err = report(&a, request.clone(), Some(&other_token))
                    .await
                    .expect_err("a report with another pod's token");
                assert_eq!(err.code(), tonic::Code::PermissionDenied, "{k}: {err}");
            }
        }
        let after = (
            rows(&store, std::slice::from_ref(k)).await,
            pod_uids(namespace).await,
        );
        assert_eq!(after, before, "{k}: refused reports change nothing");
        let accepted = report(&a, request, Some(&token))
            .await
            .expect("ReportReady");
        assert!(accepted, "{k}: the current pod's own report");
    }
    let rows_now = rows(&store, &keys).await;
    let list = platform_pods(namespace).await;
    assert!(
        rows_now
            .values()
            .flatten()
            .all(|r| r.status == Status::Ready),
        "{rows_now:?}"
    );
    assert_eq!(violations(&rows_now, &list), Vec::<String>::new());
    drop(replica_b);
    let (_scratch, done) = p.cleanup().await;
    done.expect("namespace cleanup");
}

#[tokio::test]
async fn when_spanner_goes_away_clients_get_clear_errors_no_pod_leaks_and_all_recovers() {
    let mut p = TestPlatform::start_with("spanner-down", options())
        .await
        .expect("platform");
    let clients = Clients::new(&p.orchestrator, &["dora", "eve"]);
    let get = |user: &str| GetServerRequest {
        user_id: user.into(),
        repo_hash: HASHES[0].into(),
        session_id: "s1".into(),
    };
    clients
        .user("dora")
        .get_server(get("dora"))
        .await
        .expect("GetServer before");
    // The emulator dies (its data with it: it keeps everything in memory).
    p.emulator.kill();
    let t0 = std::time::Instant::now();
    let mut request = tonic::Request::new(get("eve"));
    request.set_timeout(Duration::from_secs(5));
    let err = clients
        .user("eve")
        .get_server(request)
        .await
        .expect_err("no store");
    let took = t0.elapsed();
    eprintln!(
        "GetServer with Spanner down: {:?} after {took:?}: {}",
        err.code(),
        err.message()
    );
    assert!(
        matches!(
            err.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
        ),
        "{err:?}"
    );
    assert!(
        err.message().contains("BuildSessions"),
        "names the row: {}",
        err.message()
    );
    assert!(
        took < Duration::from_secs(7),
        "bounded by the deadline: {took:?}"
    );
    let eves = p
        .namespace
        .user_pods("eve")
        .list(&ListParams::default().labels("jbazel.dev/user=eve"))
        .await
        .expect("list");
    assert!(eves.items.is_empty(), "no pod without a committed row");

    // Back (an empty emulator, as after any restart of it): everything recovers. The
    // first pod's row is gone, so the reconciler removes that pod: nothing leaks.
    p.emulator.restart().await.expect("emulator back");
    let recovered = std::time::Instant::now();
    let mut refused = None;
    let server = testkit::wait_until_async(
        Duration::from_secs(60),
        Duration::from_millis(200),
        async || match clients.user("eve").get_server(get("eve")).await {
            Ok(r) => Some(r.into_inner().server.expect("server")),
            Err(e) => {
                refused = Some(e);
                None
            }
        },
    )
    .await
    .unwrap_or_else(|| panic!("no recovery: {refused:?}"));
    eprintln!(
        "GetServer works again {:?} after the emulator came back",
        recovered.elapsed()
    );
    assert_eq!(server.session_id, "s1");
    let pods = p.namespace.user_pods("dora");
    let mut watch = kube::runtime::watcher(
        pods.clone(),
        kube::runtime::watcher::Config::default().labels("jbazel.dev/user=dora"),
    )
    .boxed();
    let gone = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let list = pods
                .list(&ListParams::default().labels("jbazel.dev/user=dora"))
                .await
                .expect("list");
            if list.items.is_empty() {
                return;
            }
            let _ = watch.next().await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the pod of the lost row was not removed");
    eprintln!(
        "the lost row's pod removed {:?} after recovery",
        recovered.elapsed()
    );
    let (_scratch, done) = p.cleanup().await;
    done.expect("namespace cleanup");
}
