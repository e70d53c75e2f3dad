//! GetServer latency on a READY row vs one raw read-write transaction on the same emulator,
//! and the wall time of 100 distinct users' GetServer issued at once.
//!
//! `cargo bench -p integration --bench get_server` (full run). Under `cargo test
//! --all-targets` the same binary runs a short smoke pass (no `--bench` argument), so CI
//! checks the bench still works without paying for it.
//!
//! Real components: a Spanner emulator (integration::spanner) and the local cluster
//! (integration::kubernetes, its own namespace). The pods get a nodeSelector no node has:
//! they stay Pending (unscheduled), so 100 of them cost the API server only and never
//! take the single node's pod slots from other tests. GetServer's work is the same: one
//! transaction, then the pod create call.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use gcloud_spanner::key::Key;
use integration::kubernetes::Cluster;
use integration::spanner::SpannerEmulator;
use orchestrator::app::{self, Parts};
use orchestrator::engine::SessionStore;
use orchestrator::pods::{pod_name, PodSettings};
use orchestrator::service::ServiceSettings;
use orchestrator::store::Store;
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{GetServerRequest, ReportReadyRequest, ServerStatus};

const HASH: &str = "0123456789abcdef0123456789abcdef";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn summary(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (percentile(&v, 0.5), percentile(&v, 0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (iterations, users) = if full { (2000, 100) } else { (50, 10) };
    proto::tls::install_crypto_provider();

    let emulator = SpannerEmulator::start().await.expect("emulator must start");
    let store = Store::from_client(emulator.client().await.expect("spanner client"));
    let cluster = Cluster::connect()
        .await
        .expect("the local cluster must be up (integration/kubernetes/local.sh up)");
    let namespace = cluster
        .test_namespace("orch-bench")
        .await
        .expect("namespace");
    let settings = PodSettings {
        namespace: namespace.name().to_string(),
        node_selector: BTreeMap::from([(
            "jbazel.dev/bench".to_string(),
            "no-such-node".to_string(),
        )]),
        ..PodSettings::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let running = app::start(
        Parts {
            store: store.clone(),
            kube: cluster.client(),
            pods: settings,
            service: ServiceSettings::default(),
            resync_interval: Duration::from_secs(30),
        },
        listener,
    )
    .await
    .expect("orchestrator");
    let mut client = OrchestratorClient::connect(format!("http://{}", running.addr))
        .await
        .expect("connect");

    // A READY row whose pod the orchestrator sees.
    let request = || GetServerRequest {
        user_id: "bench".into(),
        repo_hash: HASH.into(),
        session_id: "s1".into(),
    };
    client.get_server(request()).await.expect("first GetServer");
    let accepted = client
        .report_ready(ReportReadyRequest {
            user_id: "bench".into(),
            repo_hash: HASH.into(),
            session_id: "s1".into(),
            pod_name: pod_name("bench", HASH, 1),
            pod_ip: "10.244.0.200".into(),
            command_port: 9001,
        })
        .await
        .expect("ReportReady")
        .into_inner()
        .accepted;
    assert!(accepted);
    // Wait (bounded) until the reflector has the pod: then GetServer takes the READY path.
    let t0 = Instant::now();
    while running.cache.is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "pod never reached the cache"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..50 {
        let s = client.get_server(request()).await.expect("warm-up");
        assert_eq!(
            s.into_inner().server.map(|s| s.status()),
            Some(ServerStatus::Ready)
        );
    }

    let mut get_server = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let s = client.get_server(request()).await.expect("GetServer");
        get_server.push(t.elapsed());
        assert_eq!(
            s.into_inner().server.map(|s| s.status()),
            Some(ServerStatus::Ready)
        );
    }

    // The store's transaction alone (no gRPC, no cache lookup).
    let key = orchestrator::session::SessionKey::new(
        proto::names::UserId::parse("bench").expect("valid"),
        proto::names::RepoHash::parse(HASH).expect("valid"),
    );
    let mut store_only = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        let session = proto::names::SessionId::parse("s1").expect("valid");
        let tr = store
            .get_server(&key, &session, deadline)
            .await
            .expect("store");
        store_only.push(t.elapsed());
        assert_eq!(tr.row.status, orchestrator::session::Status::Ready);
    }

    // The same read-write transaction with nothing around it: begin, read the row, commit.
    let spanner = store.client();
    let mut raw = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let t = Instant::now();
        let mut tx = spanner.begin_read_write_transaction().await.expect("begin");
        let key = Key::composite(&[&"bench", &HASH]);
        let row = tx
            .read_row("BuildSessions", &["SessionId", "PodIP", "Status"], key)
            .await
            .map_err(gcloud_spanner::client::Error::from);
        let (_, row) = tx.end(row, None).await.expect("commit");
        raw.push(t.elapsed());
        assert!(row.is_some());
    }

    let (g50, g99) = summary(get_server);
    let (r50, r99) = summary(raw);
    let (s50, s99) = summary(store_only);
    println!("GetServer on a READY row ({iterations} sequential calls over gRPC):");
    println!("  median {:.2} ms, p99 {:.2} ms", ms(g50), ms(g99));
    println!("Store::get_server alone (the same transaction, no gRPC):");
    println!("  median {:.2} ms, p99 {:.2} ms", ms(s50), ms(s99));
    println!("raw read-write transaction (begin + read + commit), same emulator:");
    println!("  median {:.2} ms, p99 {:.2} ms", ms(r50), ms(r99));
    println!(
        "ratio GetServer/raw: median {:.2}x, p99 {:.2}x (target <= 2x)",
        ms(g50) / ms(r50),
        ms(g99) / ms(r99)
    );

    // Distinct users at once: one transaction and one pod creation each.
    let t = Instant::now();
    let calls: Vec<_> = (0..users)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                client
                    .get_server(GetServerRequest {
                        user_id: format!("user-{i}"),
                        repo_hash: HASH.into(),
                        session_id: "s1".into(),
                    })
                    .await
                    .map(|_| t.elapsed())
            })
        })
        .collect();
    let mut each = Vec::with_capacity(users);
    for c in calls {
        each.push(c.await.expect("task").expect("GetServer"));
    }
    let wall = t.elapsed();
    let (e50, e99) = summary(each);
    let pods = namespace
        .pods()
        .list(&Default::default())
        .await
        .expect("list pods")
        .items
        .len();
    println!(
        "{users} distinct users' GetServer issued concurrently: wall {:.0} ms \
         (per call median {:.0} ms, p99 {:.0} ms); pods in the namespace: {pods}",
        ms(wall),
        ms(e50),
        ms(e99)
    );
    assert_eq!(pods, users + 1, "one pod per user (+ the READY one)");

    drop(running);
    if let Err(e) = namespace.cleanup().await {
        eprintln!("namespace cleanup: {e}");
    }
}
