//! The session store against the real Spanner emulator: every transition, fencing, and
//! contention (the emulator runs one read-write transaction at a time).

use std::collections::HashSet;
use std::time::Duration;

use gcloud_spanner::key::Key;
use integration::spanner::SpannerEmulator;
use orchestrator::engine::SessionStore;
use orchestrator::session::{
    Fence, GetServerOutcome, ReadyDecision, ReadyRejection, RowWrite, SessionKey, SessionRow,
    Status,
};
use orchestrator::store::Store;
use proto::names::{RepoHash, SessionId, UserId};
use tokio::time::Instant;

const HASH: &str = "0123456789abcdef0123456789abcdef";

async fn store() -> (SpannerEmulator, Store) {
    proto::tls::install_crypto_provider();
    let emulator = SpannerEmulator::start().await.expect("emulator must start");
    let client = emulator.client().await.expect("client");
    (emulator, Store::from_client(client))
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

fn sid(s: &str) -> SessionId {
    SessionId::parse(s).expect("valid session id")
}

fn fence(session: &str, generation: u64) -> Fence {
    Fence {
        session_id: sid(session),
        generation,
    }
}

fn key(user: &str) -> SessionKey {
    SessionKey::new(
        UserId::parse(user).expect("valid"),
        RepoHash::parse(HASH).expect("valid"),
    )
}

#[tokio::test]
async fn every_transition_against_the_emulator() {
    let (_emu, store) = store().await;
    let k = key("alice");
    assert_eq!(store.read(&k, soon()).await.expect("read"), None);

    // No row -> insert PENDING.
    let t = store
        .get_server(&k, &sid("s1"), soon())
        .await
        .expect("GetServer");
    assert_eq!(t.outcome, GetServerOutcome::Created);
    assert_eq!(
        store.read(&k, soon()).await.expect("read"),
        Some(SessionRow::pending(&sid("s1"), 1))
    );

    // Same session while PENDING: as is.
    let t = store
        .get_server(&k, &sid("s1"), soon())
        .await
        .expect("GetServer");
    assert_eq!(t.outcome, GetServerOutcome::InProgress);
    assert_eq!(t.write, RowWrite::Keep);

    // The push: READY with the pod IP.
    let d = store
        .mark_ready(&k, &fence("s1", 1), "10.244.0.7", Some(9001), soon())
        .await
        .expect("mark ready");
    assert!(matches!(d, ReadyDecision::Accept { .. }), "{d:?}");
    let ready = SessionRow {
        session_id: sid("s1"),
        generation: 1,
        pod_ip: Some("10.244.0.7".into()),
        command_port: Some(9001),
        status: Status::Ready,
    };
    assert_eq!(
        store.read(&k, soon()).await.expect("read"),
        Some(ready.clone())
    );

    // Same session while READY: reuse, nothing written.
    let t = store
        .get_server(&k, &sid("s1"), soon())
        .await
        .expect("GetServer");
    assert_eq!(t.outcome, GetServerOutcome::Reused);
    assert_eq!(t.row, ready);

    // The active row is listed for the reconciler's sweep.
    let listed = store.active_rows(soon()).await.expect("active rows");
    assert_eq!(listed, vec![(k.clone(), ready.clone())]);

    // Another session (a bounce): overwrite, PodIP cleared, PENDING.
    let t = store
        .get_server(&k, &sid("s2"), soon())
        .await
        .expect("GetServer");
    assert_eq!(
        t.outcome,
        GetServerOutcome::Bounced {
            previous_session: sid("s1")
        }
    );
    assert_eq!(
        store.read(&k, soon()).await.expect("read"),
        Some(SessionRow::pending(&sid("s2"), 2))
    );
    assert_eq!(
        store.active_rows(soon()).await.expect("active rows").len(),
        1,
        "a PENDING row is active too"
    );

    // Leaving READY (pod gone) is fenced too.
    store
        .mark_ready(&k, &fence("s2", 2), "10.244.0.8", Some(9001), soon())
        .await
        .expect("mark ready");
    assert!(!store
        .leave_ready(&k, &fence("s1", 1), soon())
        .await
        .expect("leave"));
    assert_eq!(
        store
            .read(&k, soon())
            .await
            .expect("read")
            .map(|r| r.status),
        Some(Status::Ready)
    );
    assert!(store
        .leave_ready(&k, &fence("s2", 2), soon())
        .await
        .expect("leave"));
    assert_eq!(
        store.read(&k, soon()).await.expect("read"),
        Some(SessionRow::pending(&sid("s2"), 2))
    );

    // Idling out: IDLE (fenced), not listed as active; the next GetServer resumes on a
    // new generation.
    assert!(!store
        .mark_idle(&k, &fence("s2", 1), soon())
        .await
        .expect("idle"));
    assert!(store
        .mark_idle(&k, &fence("s2", 2), soon())
        .await
        .expect("idle"));
    assert_eq!(
        store
            .read(&k, soon())
            .await
            .expect("read")
            .map(|r| r.status),
        Some(Status::Idle)
    );
    assert!(store.active_rows(soon()).await.expect("active").is_empty());
    let t = store
        .get_server(&k, &sid("s2"), soon())
        .await
        .expect("resume");
    assert_eq!(t.outcome, GetServerOutcome::Resumed);
    assert_eq!(
        store.read(&k, soon()).await.expect("read"),
        Some(SessionRow::pending(&sid("s2"), 3))
    );
}

#[tokio::test]
async fn a_stale_report_never_flips_a_newer_session() {
    let (_emu, store) = store().await;
    let k = key("bob");

    // No row at all: rejected, and no row appears.
    let d = store
        .mark_ready(&k, &fence("s1", 1), "10.244.0.7", Some(9001), soon())
        .await
        .expect("mark ready");
    assert_eq!(d, ReadyDecision::Reject(ReadyRejection::NoRow));
    assert_eq!(store.read(&k, soon()).await.expect("read"), None);

    store.get_server(&k, &sid("s1"), soon()).await.expect("s1");
    store
        .get_server(&k, &sid("s2"), soon())
        .await
        .expect("s2 bounce");
    // The old pod's late report.
    let d = store
        .mark_ready(&k, &fence("s1", 1), "10.244.0.7", Some(9001), soon())
        .await
        .expect("mark ready");
    assert_eq!(d, ReadyDecision::Reject(ReadyRejection::OtherSession));
    assert_eq!(
        store.read(&k, soon()).await.expect("read"),
        Some(SessionRow::pending(&sid("s2"), 2)),
        "a stale report must write nothing"
    );
    // Also when the newer session is already READY: its IP is not overwritten.
    store
        .mark_ready(&k, &fence("s2", 2), "10.244.0.9", Some(9001), soon())
        .await
        .expect("s2 ready");
    store
        .mark_ready(&k, &fence("s1", 1), "10.244.0.7", Some(9001), soon())
        .await
        .expect("stale");
    assert_eq!(
        store
            .read(&k, soon())
            .await
            .expect("read")
            .and_then(|r| r.pod_ip),
        Some("10.244.0.9".into())
    );
}

#[tokio::test]
async fn fifty_concurrent_get_server_on_one_key_yield_one_session() {
    let (_emu, store) = store().await;
    let k = key("carol");
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move { store.get_server(&k, &sid("desk-1"), soon()).await })
        })
        .collect();
    let mut created = 0;
    let mut in_progress = 0;
    for t in tasks {
        match t
            .await
            .expect("task")
            .expect("every GetServer succeeds")
            .outcome
        {
            GetServerOutcome::Created => created += 1,
            GetServerOutcome::InProgress => in_progress += 1,
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    eprintln!(
        "50 concurrent GetServer on one key: {:?}",
        started.elapsed()
    );
    assert_eq!((created, in_progress), (1, 49));
    assert_eq!(
        store.read(&k, soon()).await.expect("read"),
        Some(SessionRow::pending(&sid("desk-1"), 1))
    );
}

#[tokio::test]
async fn fifty_racing_sessions_on_one_key_serialize() {
    let (_emu, store) = store().await;
    let k = key("dave");
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            let k = k.clone();
            tokio::spawn(async move {
                (
                    i,
                    store.get_server(&k, &sid(&format!("s{i}")), soon()).await,
                )
            })
        })
        .collect();
    let mut created = 0;
    let mut previous = HashSet::new();
    for t in tasks {
        let (i, result) = t.await.expect("task");
        match result.expect("every GetServer succeeds").outcome {
            GetServerOutcome::Created => created += 1,
            GetServerOutcome::Bounced { previous_session } => {
                assert_ne!(previous_session.as_str(), format!("s{i}"));
                assert!(
                    previous.insert(previous_session.clone()),
                    "{previous_session} was taken over twice: not serialized"
                );
            }
            other => panic!("unexpected outcome {other:?}"),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(previous.len(), 49);
    // The row holds the one session nobody took over: the last committed.
    let row = store.read(&k, soon()).await.expect("read").expect("row");
    assert!(!previous.contains(&row.session_id));
    assert_eq!(row.status, Status::Pending);
}

#[tokio::test]
async fn concurrent_different_keys_all_succeed() {
    let (_emu, store) = store().await;
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let k = key(&format!("user-{i}"));
                store
                    .get_server(&k, &sid("s"), soon())
                    .await
                    .map(|t| (k, t))
            })
        })
        .collect();
    for t in tasks {
        let (k, t) = t.await.expect("task").expect("GetServer");
        assert_eq!(t.outcome, GetServerOutcome::Created);
        assert_eq!(
            store.read(&k, soon()).await.expect("read"),
            Some(SessionRow::pending(&sid("s"), 1))
        );
    }
}

#[tokio::test]
async fn a_transaction_left_open_does_not_block_get_server() {
    let (emu, store) = store().await;
    let other = emu.client().await.expect("second client");

    // Another client holds the emulator's only read-write transaction open (think: a
    // crashed client). Our first attempts are ABORTED; retried with backoff, the emulator
    // eventually gives our transaction priority and aborts the idle one.
    let mut blocker = other.begin_read_write_transaction().await.expect("begin");
    let held = Key::composite(&[&"someone", &HASH]);
    blocker
        .read_row("BuildSessions", &["SessionId"], held)
        .await
        .expect("blocker read");
    let t = store
        .get_server(&key("erin"), &sid("s1"), soon())
        .await
        .expect("GetServer gets through by retrying");
    assert_eq!(t.outcome, GetServerOutcome::Created);
    let blocked = blocker
        .end(Ok::<(), gcloud_spanner::client::Error>(()), None)
        .await;
    assert!(
        matches!(&blocked, Err(gcloud_spanner::client::Error::GRPC(s)) if s.code() == tonic::Code::Aborted),
        "the idle transaction was the one aborted"
    );
}
