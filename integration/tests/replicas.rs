//! Two orchestrator replicas on one Spanner and one cluster, and the session store going
//! away: the platform's fencing and repairs, measured on the real cluster and emulator.
//!
//! The pods here run the pause image: these tests are about rows, pods and their fencing,
//! not about Bazel (the e2e and lifecycle tests run the real image), and a 2-core node
//! cannot start a Bazel server for each of hundreds of spawns.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::StreamExt;
use integration::kubernetes::PAUSE_IMAGE;
use integration::platform::Orchestrator;
use integration::stack::{PlatformOptions, TestPlatform};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams};
use orchestrator::engine::SessionStore;
use orchestrator::pods::manifest::APP_SELECTOR;
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

async fn client(o: &Orchestrator) -> OrchestratorClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(o.url())
        .expect("url")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_lazy();
    OrchestratorClient::new(channel)
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
    reports_accepted: usize,
    pod_deletes: usize,
    errors: usize,
    kills: usize,
}

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
    let a = client(&p.orchestrator).await;
    let b = client(replica_b.as_ref().expect("B")).await;
    let store = Store::connect(&p.emulator.database_path(), &p.emulator.host())
        .await
        .expect("store");
    let pods = p.namespace.pods();
    let keys = keys();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0013);
    let mut counts = Counts::default();
    let mut last_session: HashMap<SessionKey, &str> = HashMap::new();
    let t0 = std::time::Instant::now();

    let mut done = 0;
    while done < OPS {
        // One batch of concurrent operations, spread over both replicas.
        let mut batch = Vec::new();
        for _ in 0..IN_FLIGHT.min(OPS - done) {
            let k = keys[rng.random_range(0..keys.len())].clone();
            let use_b = replica_b.is_some() && rng.random_bool(0.5);
            let mut c = if use_b { b.clone() } else { a.clone() };
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
                batch.push(tokio::spawn(async move {
                    c.get_server(GetServerRequest {
                        user_id: k.user_id.to_string(),
                        repo_hash: k.repo_hash.to_string(),
                        session_id: session.into(),
                    })
                    .await
                    .map(|_| false)
                }));
            } else if roll < 85 {
                // A report: half the time a real pod's (the current one, or an older
                // generation still there: a supervisor's genuine report, maybe stale), half
                // a forged one (any session and generation, an address that is no pod's).
                // Only the current pod at its own address may be believed.
                let session = SESSIONS[rng.random_range(0..SESSIONS.len())];
                let generation = rng.random_range(1..=4);
                let genuine = rng.random_bool(0.5);
                counts.reports += 1;
                let pods = pods.clone();
                batch.push(tokio::spawn(async move {
                    let mut request = ReportReadyRequest {
                        user_id: k.user_id.to_string(),
                        repo_hash: k.repo_hash.to_string(),
                        session_id: session.into(),
                        pod_name: pod_name(&k.user_id, &k.repo_hash, generation),
                        pod_ip: format!("10.244.9.{generation}"),
                        command_port: 9001,
                    };
                    if genuine {
                        let selector = format!(
                            "jbazel.dev/user={},jbazel.dev/repo-hash={}",
                            k.user_id, k.repo_hash
                        );
                        let list = pods.list(&ListParams::default().labels(&selector)).await;
                        let real = list.ok().and_then(|l| {
                            l.items.into_iter().find_map(|p| {
                                let ip = p.status.as_ref()?.pod_ip.clone()?;
                                let v = view::view(&p);
                                Some((p.metadata.name?, v.session_id?, ip))
                            })
                        });
                        if let Some((name, session, ip)) = real {
                            request.pod_name = name;
                            request.session_id = session.to_string();
                            request.pod_ip = ip;
                        }
                    }
                    c.report_ready(request)
                        .await
                        .map(|r| r.into_inner().accepted)
                }));
            } else {
                counts.pod_deletes += 1;
                let pods = pods.clone();
                batch.push(tokio::spawn(async move {
                    let selector = format!(
                        "jbazel.dev/user={},jbazel.dev/repo-hash={}",
                        k.user_id, k.repo_hash
                    );
                    if let Ok(list) = pods.list(&ListParams::default().labels(&selector)).await {
                        for pod in list.items {
                            let name = pod.metadata.name.unwrap_or_default();
                            let _ = pods.delete(&name, &DeleteParams::default()).await;
                        }
                    }
                    Ok(false)
                }));
            }
        }
        done += batch.len();
        for t in batch {
            match t.await.expect("task") {
                Ok(true) => counts.reports_accepted += 1,
                Ok(false) => {}
                Err(_) => counts.errors += 1,
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

    // Quiescence: the reconcilers of both replicas settle the cluster on the rows.
    let settle = std::time::Instant::now();
    let mut last: Vec<String>;
    loop {
        let rows = rows(&store, &keys).await;
        let list = pods
            .list(&ListParams::default().labels(APP_SELECTOR))
            .await
            .expect("list pods");
        last = violations(&rows, &list.items);
        if last.is_empty() {
            let by_status: BTreeMap<String, usize> =
                rows.values().flatten().fold(BTreeMap::new(), |mut m, r| {
                    *m.entry(r.status.to_string()).or_default() += 1;
                    m
                });
            eprintln!(
                "storm: {OPS} ops in {storm:?} ({counts:?}); settled {:?} later: {} pods for {} rows {by_status:?}",
                settle.elapsed(),
                list.items.len(),
                rows.values().flatten().count(),
            );
            break;
        }
        assert!(
            settle.elapsed() < QUIESCE,
            "not settled after {QUIESCE:?}: {last:#?}\nreplica A log tail:\n{}",
            integration::platform::tail(&p.orchestrator.log(), 40)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(last.is_empty());
    assert!(counts.get_server > 200 && counts.reports > 100 && counts.pod_deletes > 30);

    // Settled: each key's current pod reports, as its supervisor would, and is believed;
    // the READY rows then still have their live pods.
    let mut c = a.clone();
    for k in &keys {
        let Some(row) = rows(&store, std::slice::from_ref(k))
            .await
            .remove(k)
            .flatten()
        else {
            continue;
        };
        let name = pod_name(&k.user_id, &k.repo_hash, row.generation);
        let ip = tokio::time::timeout(QUIESCE, async {
            loop {
                let pod = pods.get_opt(&name).await.expect("get pod");
                if let Some(ip) = pod.and_then(|p| p.status?.pod_ip) {
                    return ip;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await
        .expect("the current pod gets an IP");
        let accepted = c
            .report_ready(ReportReadyRequest {
                user_id: k.user_id.to_string(),
                repo_hash: k.repo_hash.to_string(),
                session_id: row.session_id.to_string(),
                pod_name: name,
                pod_ip: ip,
                command_port: 9001,
            })
            .await
            .expect("ReportReady")
            .into_inner()
            .accepted;
        assert!(accepted, "{k}: the current pod's own report");
    }
    let rows_now = rows(&store, &keys).await;
    let list = pods
        .list(&ListParams::default().labels(APP_SELECTOR))
        .await
        .expect("list pods");
    assert!(
        rows_now
            .values()
            .flatten()
            .all(|r| r.status == Status::Ready),
        "{rows_now:?}"
    );
    assert_eq!(violations(&rows_now, &list.items), Vec::<String>::new());
    drop(replica_b);
    let (_scratch, done) = p.cleanup().await;
    done.expect("namespace cleanup");
}

#[tokio::test]
async fn when_spanner_goes_away_clients_get_clear_errors_no_pod_leaks_and_all_recovers() {
    let mut p = TestPlatform::start_with("spanner-down", options())
        .await
        .expect("platform");
    let mut c = client(&p.orchestrator).await;
    let pods = p.namespace.pods();
    let get = |user: &str| GetServerRequest {
        user_id: user.into(),
        repo_hash: HASHES[0].into(),
        session_id: "s1".into(),
    };
    c.get_server(get("dora")).await.expect("GetServer before");
    // The emulator dies (its data with it: it keeps everything in memory).
    p.emulator.kill();
    let t0 = std::time::Instant::now();
    let mut request = tonic::Request::new(get("eve"));
    request.set_timeout(Duration::from_secs(5));
    let err = c.get_server(request).await.expect_err("no store");
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
    let eves = pods
        .list(&ListParams::default().labels("jbazel.dev/user=eve"))
        .await
        .expect("list");
    assert!(eves.items.is_empty(), "no pod without a committed row");

    // Back (an empty emulator, as after any restart of it): everything recovers. The
    // first pod's row is gone, so the reconciler removes that pod: nothing leaks.
    p.emulator.restart().await.expect("emulator back");
    let recovered = std::time::Instant::now();
    let server = loop {
        match c.get_server(get("eve")).await {
            Ok(r) => break r.into_inner().server.expect("server"),
            Err(e) => {
                assert!(
                    recovered.elapsed() < Duration::from_secs(60),
                    "no recovery: {e:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    eprintln!(
        "GetServer works again {:?} after the emulator came back",
        recovered.elapsed()
    );
    assert_eq!(server.session_id, "s1");
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
