//! The engine's decisions on the in-memory fakes: no cluster, no emulator.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::orchestrator::{Server, ServerEvent, ServerStatus, Stage};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::fakes::{key, sid, soon, FakePods, FakeStore};
use super::{Engine, EngineError, Report, SessionStore};
use crate::notify::ReadyNotices;
use crate::pods::pod_name;
use crate::pods::view;
use crate::session::{Fence, SessionKey, Status};

type TestEngine = Engine<Arc<FakeStore>, Arc<FakePods>>;

struct Setup {
    store: Arc<FakeStore>,
    pods: Arc<FakePods>,
    engine: Arc<TestEngine>,
}

fn setup() -> Setup {
    let store = Arc::new(FakeStore::default());
    let pods = Arc::new(FakePods::default());
    let engine = Arc::new(Engine::new(
        store.clone(),
        pods.clone(),
        ReadyNotices::default(),
        9001,
    ));
    Setup {
        store,
        pods,
        engine,
    }
}

impl Setup {
    async fn get(&self, k: &SessionKey, session: &str) -> Result<Server, EngineError> {
        self.engine
            .clone()
            .get_server(k.clone(), sid(session), soon())
            .await
    }

    /// The name of the row's current pod (generation 1 before any row).
    fn current(&self, k: &SessionKey) -> String {
        name(k, self.store.row(k).map_or(1, |r| r.generation))
    }

    /// A report from the pod of `session`'s `generation`.
    async fn report_from(
        &self,
        k: &SessionKey,
        session: &str,
        generation: u64,
        ip: &str,
        port: u32,
    ) -> bool {
        let report = Report {
            fence: Fence {
                session_id: sid(session),
                generation,
            },
            pod_name: name(k, generation),
            pod_ip: ip.into(),
            command_port: port,
            pod_uid: None,
        };
        self.engine
            .clone()
            .report_ready(k.clone(), report, soon())
            .await
            .expect("report_ready")
    }

    /// A report from the row's current pod (as far as the session goes).
    async fn report(&self, k: &SessionKey, session: &str, ip: &str, port: u32) -> bool {
        let generation = self.store.row(k).map_or(1, |r| r.generation);
        self.report_from(k, session, generation, ip, port).await
    }

    async fn watch(&self, k: &SessionKey, session: &str) -> Result<Events, EngineError> {
        self.engine
            .clone()
            .watch_server(k.clone(), sid(session), soon())
            .await
    }
}

type Events = mpsc::Receiver<Result<ServerEvent, EngineError>>;

fn name(k: &SessionKey, generation: u64) -> String {
    pod_name(&k.user_id, &k.repo_hash, generation)
}

/// Collects events until the stream ends, or fails the test after 5 s.
async fn drain(mut rx: Events) -> Vec<Result<ServerEvent, EngineError>> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(item)) => out.push(item),
            Ok(None) => return out,
            Err(_) => panic!("stream did not end; got {out:?}"),
        }
    }
}

/// Waits for the next event that satisfies `cond` (bounded).
async fn next_matching(rx: &mut Events, cond: impl Fn(&ServerEvent) -> bool) -> ServerEvent {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ok(ev))) if cond(&ev) => return ev,
            Ok(Some(Ok(_))) => continue,
            other => panic!("expected a matching event, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn first_get_server_inserts_pending_and_creates_the_pod() {
    let s = setup();
    let k = key("alice");
    let server = s.get(&k, "s1").await.expect("get_server");
    assert_eq!(server.status, ServerStatus::Pending as i32);
    assert_eq!(server.pod_ip, "", "no address before READY");
    assert_eq!(server.session_id, "s1");
    assert_eq!(server.pod_name, s.current(&k));
    assert_eq!(server.command_port, 9001, "default until reported");
    let row = s.store.row(&k).expect("row inserted");
    assert_eq!(
        (row.session_id.as_str(), row.status),
        ("s1", Status::Pending)
    );
    let pod = s.pods.pod(&s.current(&k)).expect("pod created");
    assert_eq!(view::session_of(&pod), Some(sid("s1")));

    // The same session again: the same pod, nothing recreated.
    s.get(&k, "s1").await.expect("again");
    assert_eq!(s.pods.created.load(Ordering::SeqCst), 1);
    assert_eq!(
        s.pods.pod(&s.current(&k)).and_then(|p| p.metadata.uid),
        pod.metadata.uid
    );
}

#[tokio::test]
async fn report_ready_makes_the_row_ready_and_get_server_answers_with_the_address() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("spawn");
    s.pods.set_ready(&s.current(&k), "10.1.0.7");
    let accepted = s.report(&k, "s1", "10.1.0.7", 4321).await;
    assert!(accepted);
    let row = s.store.row(&k).expect("row");
    assert_eq!(row.status, Status::Ready);
    assert_eq!(row.pod_ip.as_deref(), Some("10.1.0.7"));

    let server = s.get(&k, "s1").await.expect("reuse");
    assert_eq!(server.status, ServerStatus::Ready as i32);
    assert_eq!(server.pod_ip, "10.1.0.7");
    assert_eq!(server.command_port, 4321, "the reported port");
    assert_eq!(
        s.pods.created.load(Ordering::SeqCst),
        1,
        "reuse, no new pod"
    );
}

#[tokio::test]
async fn a_bounce_starts_the_next_generation_and_fences_the_old_sessions_report() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("s1");
    let old = s.current(&k);
    s.pods.set_ready(&old, "10.1.0.7");
    s.report(&k, "s1", "10.1.0.7", 0).await;

    let server = s.get(&k, "s2").await.expect("bounce");
    assert_eq!(server.status, ServerStatus::Pending as i32);
    assert_eq!(server.pod_ip, "", "the old address is not given out");
    let row = s.store.row(&k).expect("row");
    assert_eq!(
        (
            row.session_id.as_str(),
            row.generation,
            row.status,
            row.pod_ip
        ),
        ("s2", 2, Status::Pending, None)
    );
    // The new pod has its own name: it never waits for the old one to free a name.
    let new = s.current(&k);
    assert_ne!(new, old);
    assert_eq!(server.pod_name, new);
    let pod = s.pods.pod(&new).expect("new pod");
    assert_eq!(view::session_of(&pod), Some(sid("s2")));
    assert!(
        s.pods.pod(&old).is_none(),
        "the old generation's pod was deleted"
    );

    // A late report of the old session's pod changes nothing.
    assert!(!s.report_from(&k, "s1", 1, "10.6.6.6", 0).await);
    // Nor one of the new session naming the old generation.
    assert!(!s.report_from(&k, "s2", 1, "10.6.6.6", 0).await);
    let after = s.store.row(&k).expect("row");
    assert_eq!((after.status, after.pod_ip), (Status::Pending, None));
}

#[tokio::test]
async fn watch_says_the_previous_server_is_stopping_during_a_bounce() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("s1");
    let old = s.current(&k);
    s.pods.set_ready(&old, "10.1.0.7");
    s.pods.slow_deletes(true);
    s.get(&k, "s2").await.expect("bounce");
    let mut rx = s.watch(&k, "s2").await.expect("watch");
    let ev = next_matching(&mut rx, |e| e.stage == Stage::PreviousStopping as i32).await;
    assert!(
        ev.message
            .contains("stopping your previous server (session s1"),
        "{}",
        ev.message
    );
    // Once it is gone, the stage is the new pod's own again.
    s.pods.set_running(&s.current(&k), "10.1.0.8");
    s.pods.remove(&old);
    next_matching(&mut rx, |e| e.stage == Stage::ContainerRunning as i32).await;
}

#[tokio::test]
async fn an_idle_row_resumes_on_a_new_pod() {
    let s = setup();
    let k = key("ivy");
    s.get(&k, "s1").await.expect("spawn");
    s.pods.set_running(&s.current(&k), "10.1.0.3");
    assert!(s.report(&k, "s1", "10.1.0.3", 0).await);
    let fence = s.store.row(&k).expect("row").fence();
    assert!(s.store.mark_idle(&k, &fence, soon()).await.expect("idle"));
    let server = s.get(&k, "s1").await.expect("resume");
    assert_eq!(server.status, ServerStatus::Pending as i32);
    let row = s.store.row(&k).expect("row");
    assert_eq!((row.status, row.generation), (Status::Pending, 2));
    assert!(s.pods.pod(&s.current(&k)).is_some());
}

#[tokio::test]
async fn a_ready_row_answers_from_one_read_without_a_transaction() {
    let s = setup();
    let k = key("jo");
    s.get(&k, "s1").await.expect("spawn");
    s.pods.set_ready(&s.current(&k), "10.1.0.4");
    s.report(&k, "s1", "10.1.0.4", 0).await;
    let before = s.store.transactions();
    let server = s.get(&k, "s1").await.expect("reuse");
    assert_eq!(server.status, ServerStatus::Ready as i32);
    assert_eq!(s.store.transactions(), before, "read-only fast path");
}

#[tokio::test]
async fn a_stale_replica_does_not_touch_the_current_pod() {
    // Two engines (replicas) on one store and one cluster.
    let s = setup();
    let replica = Arc::new(Engine::new(
        s.store.clone(),
        s.pods.clone(),
        ReadyNotices::default(),
        9001,
    ));
    let k = key("kim");
    s.get(&k, "s1").await.expect("s1 on replica A");
    replica
        .clone()
        .get_server(k.clone(), sid("s2"), soon())
        .await
        .expect("s2 on replica B");
    let current = s.current(&k);
    let uid = s.pods.pod(&current).and_then(|p| p.metadata.uid);
    // Replica A converges for s1 late (its request was slow): nothing happens.
    let outcome = s
        .engine
        .converge(&k, &sid("s1"), soon())
        .await
        .expect("converge");
    assert!(outcome.is_none());
    assert_eq!(s.pods.pod(&current).and_then(|p| p.metadata.uid), uid);
    assert_eq!(s.pods.created.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_forged_report_is_checked_against_the_cluster_and_writes_nothing() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("spawn");
    // The right session and pod name, but the attacker's address: the pod has another.
    s.pods.set_running(&s.current(&k), "10.1.0.7");
    assert!(!s.report(&k, "s1", "10.6.6.6", 0).await);
    // Before the pod has an address at all.
    let k2 = key("bob");
    s.get(&k2, "s1").await.expect("spawn");
    assert!(!s.report(&k2, "s1", "10.1.0.8", 0).await);
    for k in [&k, &k2] {
        let row = s.store.row(k).expect("row");
        assert_eq!((row.status, row.pod_ip), (Status::Pending, None));
    }
    // The pod's own address is believed.
    assert!(s.report(&k, "s1", "10.1.0.7", 0).await);
}

#[tokio::test]
async fn a_report_without_a_row_writes_nothing() {
    let s = setup();
    let k = key("bob");
    let accepted = s.report(&k, "s1", "10.1.0.9", 0).await;
    assert!(!accepted);
    assert_eq!(s.store.row(&k), None);
    assert!(s.pods.pod(&s.current(&k)).is_none());
}

#[tokio::test]
async fn a_ready_row_whose_pod_vanished_gets_a_new_pod_and_leaves_ready() {
    let s = setup();
    let k = key("carol");
    s.get(&k, "s1").await.expect("spawn");
    s.pods.set_running(&s.current(&k), "10.1.0.3");
    assert!(s.report(&k, "s1", "10.1.0.3", 0).await);
    s.pods.remove(&s.current(&k));
    let server = s.get(&k, "s1").await.expect("respawn");
    assert_eq!(server.status, ServerStatus::Pending as i32);
    assert_eq!(s.store.row(&k).map(|r| r.status), Some(Status::Pending));
    assert!(s.pods.pod(&s.current(&k)).is_some());
    assert_eq!(s.pods.created.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn watch_streams_stages_then_ready() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("spawn");
    let mut rx = s.watch(&k, "s1").await.expect("watch");
    let first = next_matching(&mut rx, |_| true).await;
    assert_eq!(first.stage, Stage::Session as i32);
    // The container runs; the supervisor's push comes before the probe passes.
    s.pods.set_running(&s.current(&k), "10.1.0.7");
    next_matching(&mut rx, |e| e.stage == Stage::ContainerRunning as i32).await;
    s.report(&k, "s1", "10.1.0.7", 0).await;
    let rest = drain(rx).await;
    let last = rest
        .last()
        .expect("an event")
        .as_ref()
        .expect("not an error");
    assert_eq!(last.stage, Stage::Ready as i32);
    let server = last.server.as_ref().expect("server");
    assert_eq!(server.pod_ip, "10.1.0.7");
    assert_eq!(server.status, ServerStatus::Ready as i32);
}

#[tokio::test]
async fn watch_of_a_ready_row_answers_at_once() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("spawn");
    s.pods.set_running(&s.current(&k), "10.1.0.7");
    assert!(s.report(&k, "s1", "10.1.0.7", 0).await);
    let rx = s.watch(&k, "s1").await.expect("watch");
    let events = drain(rx).await;
    assert_eq!(events.len(), 1, "{events:?}");
    let ev = events[0].as_ref().expect("event");
    assert_eq!(ev.stage, Stage::Ready as i32);
}

#[tokio::test]
async fn watch_reports_a_hopeless_pod_with_its_reason() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("spawn");
    let rx = s.watch(&k, "s1").await.expect("watch");
    s.pods.set_waiting(&s.current(&k), "ErrImageNeverPull");
    let events = drain(rx).await;
    let failed = events
        .iter()
        .filter_map(|e| e.as_ref().ok())
        .find(|e| e.stage == Stage::Failed as i32)
        .expect("a FAILED stage");
    assert_eq!(failed.reason, "ErrImageNeverPull");
    match events.last() {
        Some(Err(EngineError::SpawnFailed { reason, .. })) => {
            assert_eq!(reason, "ErrImageNeverPull")
        }
        other => panic!("expected SpawnFailed last, got {other:?}"),
    }
    // Starting stages are not failures: a waiting ContainerCreating keeps the stream open.
    assert!(!view::FAILURE_REASONS.contains(&"ContainerCreating"));
}

#[tokio::test]
async fn watch_ends_superseded_when_another_session_takes_the_row() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("s1");
    let rx = s.watch(&k, "s1").await.expect("watch");
    s.get(&k, "s2").await.expect("s2");
    let events = drain(rx).await;
    match events.last() {
        Some(Err(EngineError::Superseded { session_id })) => assert_eq!(session_id, &sid("s1")),
        other => panic!("expected Superseded, got {other:?}"),
    }
    // The error names the caller's session, never the one that took over.
    let text =
        proto::error_chain::ErrorChain(events.last().and_then(|e| e.as_ref().err()).expect("err"))
            .to_string();
    assert!(!text.contains("s2"), "{text}");
}

#[tokio::test]
async fn watch_refuses_unknown_and_superseded_sessions() {
    let s = setup();
    let k = key("alice");
    let err = s.watch(&k, "s1").await.expect_err("no row");
    assert!(matches!(err, EngineError::NoSession { .. }), "{err:?}");
    s.get(&k, "s2").await.expect("s2");
    let err = s.watch(&k, "s1").await.expect_err("superseded");
    assert!(matches!(err, EngineError::Superseded { .. }), "{err:?}");
}

#[tokio::test]
async fn watch_ends_at_the_deadline() {
    let s = setup();
    let k = key("alice");
    s.get(&k, "s1").await.expect("spawn");
    let rx = s
        .engine
        .clone()
        .watch_server(
            k.clone(),
            sid("s1"),
            Instant::now() + Duration::from_millis(200),
        )
        .await
        .expect("watch");
    let events = drain(rx).await;
    assert!(
        matches!(events.last(), Some(Err(EngineError::NotReady { .. }))),
        "{events:?}"
    );
}

#[tokio::test]
async fn store_failures_surface_and_touch_no_pod() {
    let s = setup();
    let k = key("dave");
    s.store.set_unavailable(true);
    let err = s.get(&k, "s1").await.expect_err("store down");
    assert!(matches!(err, EngineError::Store(_)), "{err:?}");
    assert!(
        s.pods.pod(&s.current(&k)).is_none(),
        "no pod without a committed row"
    );
    assert_eq!(s.pods.created.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn users_do_not_share_rows_or_pods() {
    let s = setup();
    let (a, b) = (key("alice"), key("bob"));
    s.get(&a, "s1").await.expect("alice");
    s.get(&b, "s1").await.expect("bob");
    assert_ne!(s.current(&a), s.current(&b));
    assert!(s.pods.pod(&s.current(&a)).is_some() && s.pods.pod(&s.current(&b)).is_some());
    // Bob's pod reporting makes bob's row READY, never alice's.
    s.pods.set_running(&s.current(&b), "10.1.0.66");
    assert!(s.report(&b, "s1", "10.1.0.66", 0).await);
    assert_eq!(s.store.row(&a).map(|r| r.status), Some(Status::Pending));
    assert_eq!(s.store.row(&b).map(|r| r.status), Some(Status::Ready));
}

#[tokio::test]
async fn a_ready_pod_makes_the_row_ready_without_the_push() {
    // The push was lost (or raced the probe): the watch path alone must reach READY.
    let s = setup();
    let k = key("erin");
    s.get(&k, "s1").await.expect("spawn");
    let rx = s.watch(&k, "s1").await.expect("watch");
    s.pods.set_ready(&s.current(&k), "10.1.0.8");
    let events = drain(rx).await;
    let last = events
        .last()
        .expect("event")
        .as_ref()
        .expect("not an error");
    assert_eq!(last.stage, Stage::Ready as i32, "{events:?}");
    assert_eq!(
        last.server.as_ref().map(|s| s.pod_ip.as_str()),
        Some("10.1.0.8")
    );
    let row = s.store.row(&k).expect("row");
    assert_eq!(
        (row.status, row.pod_ip.as_deref()),
        (Status::Ready, Some("10.1.0.8"))
    );
}

#[tokio::test]
async fn get_server_answers_ready_when_the_pod_serves_but_the_row_is_pending() {
    let s = setup();
    let k = key("fred");
    s.get(&k, "s1").await.expect("spawn");
    s.pods.set_ready(&s.current(&k), "10.1.0.9");
    assert_eq!(s.store.row(&k).map(|r| r.status), Some(Status::Pending));
    let server = s.get(&k, "s1").await.expect("again");
    assert_eq!(server.status, ServerStatus::Ready as i32);
    assert_eq!(server.pod_ip, "10.1.0.9");
    assert_eq!(s.store.row(&k).map(|r| r.status), Some(Status::Ready));
    // After a bounce, the old session cannot make the row READY, even with the new pod Ready.
    let k2 = key("gail");
    s.get(&k2, "s1").await.expect("spawn");
    s.get(&k2, "s2").await.expect("bounce");
    s.pods.set_ready(&s.current(&k2), "10.1.0.10");
    let accepted = s.report(&k2, "s1", "10.1.0.10", 0).await;
    assert!(!accepted, "the old session's report is fenced");
}
