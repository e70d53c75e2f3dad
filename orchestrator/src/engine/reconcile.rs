//! The reconciler: repairs drift between the BuildSessions rows and the pods, on every
//! change the pod cache sees ([`Pods::changes`]) and in a periodic sweep of every active
//! row, by performing the pure decisions of [`crate::session`]
//! ([`session::reconcile`] for a pod, [`session::missing_pod`] for a row without one):
//! - pod Ready for the row's fence, row PENDING -> READY (the push was lost);
//! - pod failed, terminating or gone -> the row leaves READY, and the pod is made again;
//! - pod idled out -> the row says IDLE and the pod goes (the output base stays);
//! - pod with no row, no fence, or an older generation than the row's -> deleted;
//! - a PENDING row without its pod (a crash between the commit and the create) -> the
//!   pod is created, by the platform, without waiting for the user's next command.
//!
//! It is written against the engine's ports and performs through the engine (the READY
//! write and notice of [`Engine::mark_ready_from_pod`], the pod work of `converge`), so it
//! runs on the in-memory fakes in its tests exactly as on Spanner and kube-rs.
//!
//! Every decision reads the row from the store, and every change is fenced there, so any
//! number of replicas can run this side by side: they compute the same decisions, their
//! creates are idempotent (one name per generation) and their deletes carry the UID.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use proto::error_chain::ErrorChain;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::{Engine, PodChange, Pods, SessionStore};
use crate::pods::{pod_name, view, EnsureOutcome};
use crate::session::{self, MissingPodDecision, ReconcileDecision, SessionKey, SessionRow};

/// Deadline of one repair transaction.
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline of making a missing pod (it may wait for a terminating one of the same name).
const CREATE_DEADLINE: Duration = Duration::from_secs(60);

/// Follows the pod cache's changes and sweeps the rows; see the module doc.
pub struct Reconciler<S, P> {
    engine: Arc<Engine<S, P>>,
    /// Subscribed at construction, so no change between `new` and `run` is lost.
    changes: BoxStream<'static, PodChange>,
    resync: Duration,
}

impl<S: SessionStore, P: Pods> Reconciler<S, P> {
    pub fn new(engine: Arc<Engine<S, P>>, resync: Duration) -> Self {
        let changes = engine.pods.changes();
        Reconciler {
            engine,
            changes,
            resync,
        }
    }

    /// Runs until the cache's changes end (never, for the real cache) or the task is
    /// aborted: each change is repaired as it comes; the first full listing of the cache
    /// (and every later one, or a missed change) starts a sweep, and a sweep runs every
    /// `resync` once the cache is complete.
    pub async fn run(self) {
        let Reconciler {
            engine,
            mut changes,
            resync,
        } = self;
        let this = Arc::new(Repairs { engine });
        let mut sweeper: Option<AbortOnDropHandle<()>> = None;
        while let Some(change) = changes.next().await {
            match change {
                PodChange::Applied(pod) => this.on_pod(&pod).await,
                PodChange::Deleted(pod) => this.on_deleted(&pod).await,
                PodChange::Resynced => {
                    this.sweep().await;
                    if sweeper.is_none() {
                        sweeper = Some(this.clone().sweep_every(resync));
                    }
                }
                // Only a complete cache can say that a row's pod is missing.
                PodChange::Missed if sweeper.is_some() => this.sweep().await,
                PodChange::Missed => {}
            }
        }
    }
}

/// The reconciler's repairs, shared with its periodic sweep.
struct Repairs<S, P> {
    engine: Arc<Engine<S, P>>,
}

impl<S: SessionStore, P: Pods> Repairs<S, P> {
    fn deadline() -> Instant {
        Instant::now() + REPAIR_DEADLINE
    }

    /// Sweeps every `resync` (the first one `resync` from now), until the handle drops.
    fn sweep_every(self: Arc<Self>, resync: Duration) -> AbortOnDropHandle<()> {
        AbortOnDropHandle::new(tokio::spawn(async move {
            let mut tick = tokio::time::interval_at(Instant::now() + resync, resync);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                self.sweep().await;
            }
        }))
    }

    /// The row of `key`; `None` when it cannot be read now (the next change or sweep
    /// tries again).
    async fn read(&self, key: &SessionKey, pod: &str) -> Option<Option<SessionRow>> {
        match self.engine.store.read(key, Self::deadline()).await {
            Ok(row) => Some(row),
            Err(e) => {
                tracing::warn!(pod = %pod, error = %ErrorChain(&e), "reconciler cannot read the row; will retry on the next change or sweep");
                None
            }
        }
    }

    /// A pod as it is now, against its row as it is now.
    async fn on_pod(&self, pod: &Pod) {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let row = match view::key_of(pod) {
            Some(key) => match self.read(&key, name).await {
                Some(row) => row,
                None => return,
            },
            // It names no (user, repo): no row can be its.
            None => None,
        };
        self.decide_pod(row.as_ref(), pod).await;
    }

    async fn decide_pod(&self, row: Option<&SessionRow>, pod: &Pod) {
        let decision = session::reconcile(row, &view::view(pod));
        self.apply(pod, decision).await;
    }

    /// A pod was deleted: if it was its row's current pod, the row needs another.
    async fn on_deleted(self: &Arc<Self>, pod: &Pod) {
        let Some(key) = view::key_of(pod) else { return };
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        // A pod of the same name made meanwhile (a replaced failed pod) is what counts.
        if let Some(now) = self.engine.pods.cached(&key.user_id, name) {
            self.on_pod(&now).await;
            return;
        }
        let Some(Some(row)) = self.read(&key, name).await else {
            return;
        };
        self.missing(key, row, Some(pod));
    }

    /// The row's current pod is not in the cache (`deleted`: after that pod's deletion):
    /// repaired in a task (a create may wait for a terminating pod of the same name), so
    /// the changes go on being handled meanwhile.
    fn missing(self: &Arc<Self>, key: SessionKey, row: SessionRow, deleted: Option<&Pod>) {
        let decision = session::missing_pod(&row, deleted.map(view::view).as_ref());
        if decision == MissingPodDecision::Nothing {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.make_missing_pod(key, row, decision).await });
    }

    async fn make_missing_pod(
        &self,
        key: SessionKey,
        row: SessionRow,
        decision: MissingPodDecision,
    ) {
        let name = pod_name(&key.user_id, &key.repo_hash, row.generation);
        if let MissingPodDecision::LeaveReady { fence } = &decision {
            match self
                .engine
                .store
                .leave_ready(&key, fence, Self::deadline())
                .await
            {
                Ok(true) => tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash,
                    session = %fence.session_id, pod = %name, "pod gone: row leaves READY"),
                // The row moved on meanwhile: whoever moved it makes its pod.
                Ok(false) => return,
                Err(e) => {
                    tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot demote the row");
                    return;
                }
            }
        }
        let deadline = Instant::now() + CREATE_DEADLINE;
        match self.engine.converge(&key, &row.session_id, deadline).await {
            Ok(Some(EnsureOutcome::Created(_))) => tracing::info!(
                user = %key.user_id, repo_hash = %key.repo_hash, session = %row.session_id,
                pod = %name, "the row's pod was missing: created it"),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot make the row's pod")
            }
        }
    }

    /// Every active row against the cache, and every cached pod against its row.
    async fn sweep(self: &Arc<Self>) {
        let rows = match self.engine.store.active_rows(Self::deadline()).await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "reconciler sweep cannot list the rows");
                return;
            }
        };
        let rows: HashMap<SessionKey, SessionRow> = rows.into_iter().collect();
        let mut missing = 0usize;
        for (key, row) in &rows {
            let name = pod_name(&key.user_id, &key.repo_hash, row.generation);
            if self.engine.pods.cached(&key.user_id, &name).is_none() {
                missing += 1;
                self.missing(key.clone(), row.clone(), None);
            }
        }
        let pods = self.engine.pods.cached_all();
        for pod in &pods {
            match view::key_of(pod).and_then(|key| rows.get(&key)) {
                Some(row) => self.decide_pod(Some(row), pod).await,
                // IDLE, no row at all, or no key: read it (rare).
                None => self.on_pod(pod).await,
            }
        }
        tracing::info!(
            active_rows = rows.len(),
            pods = pods.len(),
            missing,
            "reconciler sweep done"
        );
    }

    /// Performs `decision` about `pod`.
    async fn apply(&self, pod: &Pod, decision: ReconcileDecision) {
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let Some(key) = view::key_of(pod) else {
            if let ReconcileDecision::DeletePod { reason } = decision {
                tracing::info!(pod = %name, %reason, "deleting a platform pod without user/repo labels");
                self.delete(pod, &reason.to_string()).await;
            }
            return;
        };
        match decision {
            ReconcileDecision::Nothing => {}
            ReconcileDecision::MarkReady { fence, pod_ip } => {
                if let Err(e) = self
                    .engine
                    .mark_ready_from_pod(&key, &fence, &pod_ip, Self::deadline())
                    .await
                {
                    tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot mark READY");
                }
            }
            ReconcileDecision::LeaveReady { fence } => {
                match self
                    .engine
                    .store
                    .leave_ready(&key, &fence, Self::deadline())
                    .await
                {
                    Ok(true) => tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash,
                        session = %fence.session_id, pod = %name, "pod failed or going away: row leaves READY"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot demote the row")
                    }
                }
            }
            ReconcileDecision::MarkIdle { fence } => {
                match self
                    .engine
                    .store
                    .mark_idle(&key, &fence, Self::deadline())
                    .await
                {
                    Ok(changed) => {
                        if changed {
                            tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash,
                                session = %fence.session_id, pod = %name,
                                "server idled out: row IDLE, output base kept, pod deleted");
                        }
                        self.delete(pod, &session::DeleteReason::Culled.to_string())
                            .await;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot mark the row IDLE")
                    }
                }
            }
            ReconcileDecision::DeletePod { reason } => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, pod = %name,
                    %reason, "deleting a pod that is not the row's current one");
                self.delete(pod, &reason.to_string()).await;
            }
        }
    }

    async fn delete(&self, pod: &Pod, why: &str) {
        if let Err(e) = self.engine.pods.delete(pod).await {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            tracing::warn!(pod = %name, reason = why, error = %ErrorChain(&e), "reconciler cannot delete the pod");
        }
    }
}

#[cfg(test)]
mod tests {
    //! The reconciler's repairs on the in-memory fakes: each drift made by hand, then
    //! repaired by the running reconciler, from a change or from a sweep.

    use std::sync::atomic::Ordering;

    use super::*;
    use crate::engine::fakes::{key, sid, soon, FakePods, FakeStore};
    use crate::notify::ReadyNotices;
    use crate::pods::{PodSettings, PodSpecFor};
    use crate::session::Status;

    type TestEngine = Engine<Arc<FakeStore>, Arc<FakePods>>;

    struct Setup {
        store: Arc<FakeStore>,
        pods: Arc<FakePods>,
        engine: Arc<TestEngine>,
        notices: ReadyNotices,
    }

    fn setup() -> Setup {
        let store = Arc::new(FakeStore::default());
        let pods = Arc::new(FakePods::default());
        let notices = ReadyNotices::default();
        let engine = Arc::new(Engine::new(
            store.clone(),
            pods.clone(),
            notices.clone(),
            9001,
        ));
        Setup {
            store,
            pods,
            engine,
            notices,
        }
    }

    impl Setup {
        /// Starts the reconciler (subscribed to the changes from now on); it stops when
        /// the handle drops. No periodic sweep within a test: sweeps follow
        /// [`FakePods::resynced`].
        fn reconciler(&self) -> AbortOnDropHandle<()> {
            let r = Reconciler::new(self.engine.clone(), Duration::from_secs(3600));
            AbortOnDropHandle::new(tokio::spawn(r.run()))
        }

        /// A row of `session` whose pod exists (PENDING, generation 1).
        async fn spawned(&self, k: &SessionKey, session: &str) -> String {
            self.engine
                .clone()
                .get_server(k.clone(), sid(session), soon())
                .await
                .expect("get_server");
            self.current(k)
        }

        /// A READY row of `session` with its pod Ready at `ip`.
        async fn ready(&self, k: &SessionKey, session: &str, ip: &str) -> String {
            let name = self.spawned(k, session).await;
            let fence = self.row(k).fence();
            self.store
                .mark_ready(k, &fence, ip, Some(9001), soon())
                .await
                .expect("mark_ready");
            self.pods.set_ready(&name, ip);
            assert_eq!(self.row(k).status, Status::Ready);
            name
        }

        /// The reconciler's repairs, called directly (no changes followed).
        fn repairs(&self) -> Arc<Repairs<Arc<FakeStore>, Arc<FakePods>>> {
            Arc::new(Repairs {
                engine: self.engine.clone(),
            })
        }

        fn row(&self, k: &SessionKey) -> SessionRow {
            self.store.row(k).expect("row")
        }

        fn current(&self, k: &SessionKey) -> String {
            pod_name(&k.user_id, &k.repo_hash, self.row(k).generation)
        }
    }

    /// Waits (yielding to the reconciler's tasks) until `cond` holds; fails after 5 s.
    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !cond() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(waited.is_ok(), "not reached within 5 s: {what}");
    }

    #[tokio::test]
    async fn a_lost_push_is_repaired_from_the_ready_pod() {
        let s = setup();
        let k = key("alice");
        let name = s.spawned(&k, "s1").await;
        let mut notices = s.notices.subscribe();
        let _r = s.reconciler();
        s.pods.set_ready(&name, "10.1.0.5");
        until("row READY", || s.row(&k).status == Status::Ready).await;
        assert_eq!(s.row(&k).pod_ip.as_deref(), Some("10.1.0.5"));
        let notice = notices.recv().await.expect("a READY notice");
        assert_eq!((notice.key, notice.session_id), (k, sid("s1")));
    }

    #[tokio::test]
    async fn a_lost_pod_leaves_ready_and_is_made_again() {
        let s = setup();
        let k = key("bob");
        let name = s.ready(&k, "s1", "10.1.0.6").await;
        let _r = s.reconciler();
        s.pods.remove(&name);
        until("pod made again", || s.pods.pod(&name).is_some()).await;
        assert_eq!(s.pods.created.load(Ordering::SeqCst), 2);
        let row = s.row(&k);
        assert_eq!(
            (row.status, row.pod_ip, row.generation),
            (Status::Pending, None, 1),
            "the same generation's pod must report again"
        );
    }

    #[tokio::test]
    async fn a_sweep_finds_a_ready_row_without_its_pod() {
        let s = setup();
        let k = key("bob");
        let name = s.ready(&k, "s1", "10.1.0.6").await;
        // Gone while no reconciler ran: only a sweep can see it.
        s.pods.remove(&name);
        let _r = s.reconciler();
        s.pods.resynced();
        until("pod made again", || s.pods.pod(&name).is_some()).await;
        assert_eq!(s.row(&k).status, Status::Pending);
    }

    #[tokio::test]
    async fn a_pending_row_without_its_pod_gets_it() {
        let s = setup();
        let k = key("carol");
        // The spawn committed the row and crashed before the create.
        s.store
            .get_server(&k, &sid("s1"), soon())
            .await
            .expect("row");
        let name = s.current(&k);
        assert!(s.pods.pod(&name).is_none());
        let _r = s.reconciler();
        s.pods.resynced();
        until("pod created", || s.pods.pod(&name).is_some()).await;
        let pod = s.pods.pod(&name).expect("pod");
        assert_eq!(view::session_of(&pod), Some(sid("s1")));
        assert_eq!(s.row(&k).status, Status::Pending);
    }

    #[tokio::test]
    async fn an_idled_out_pod_makes_the_row_idle_and_goes() {
        let s = setup();
        let k = key("dave");
        let name = s.ready(&k, "s1", "10.1.0.7").await;
        let _r = s.reconciler();
        s.pods.set_idled_out(&name);
        until("pod deleted", || s.pods.pod(&name).is_none()).await;
        let row = s.row(&k);
        assert_eq!(
            (row.status, row.pod_ip, row.generation),
            (Status::Idle, None, 1)
        );
        // An IDLE row wants no pod: a sweep makes none.
        let created = s.pods.created.load(Ordering::SeqCst);
        s.repairs().sweep().await;
        assert_eq!(s.pods.created.load(Ordering::SeqCst), created);
        assert!(s.pods.pod(&name).is_none());
    }

    #[tokio::test]
    async fn stale_and_unlabelled_pods_are_deleted_and_the_current_one_kept() {
        let s = setup();
        let k = key("erin");
        s.spawned(&k, "s1").await;
        // Bounced to generation 2 (whose pod exists), with generation 1's pod left over.
        s.pods.slow_deletes(true);
        s.spawned(&k, "s2").await;
        let current = s.current(&k);
        assert_eq!(s.row(&k).generation, 2);
        let settings = PodSettings::default();
        let stale = PodSpecFor {
            user_id: &k.user_id,
            repo_hash: &k.repo_hash,
            session_id: &sid("s1"),
            generation: 1,
        }
        .manifest(&settings);
        let stale_name = stale.metadata.name.clone().expect("name");
        let mut unlabelled = stale.clone();
        unlabelled.metadata.name = Some("bazel-stray".into());
        unlabelled.metadata.uid = Some("uid-stray".into());
        unlabelled.metadata.labels = None;
        s.pods.slow_deletes(false);
        let _r = s.reconciler();
        let mut leftover = stale;
        leftover.metadata.uid = Some("uid-old".into());
        s.pods.insert(leftover);
        s.pods.insert(unlabelled);
        until("stale pod deleted", || s.pods.pod(&stale_name).is_none()).await;
        until("unlabelled pod deleted", || {
            s.pods.pod("bazel-stray").is_none()
        })
        .await;
        s.repairs().sweep().await;
        assert!(s.pods.pod(&current).is_some(), "the row's pod stays");
        let deleted = s.pods.deleted.lock().map(|d| d.clone()).unwrap_or_default();
        assert!(!deleted.contains(&current), "{deleted:?}");
    }

    #[tokio::test]
    async fn a_terminating_stale_pod_is_not_deleted_again() {
        let s = setup();
        let k = key("fay");
        s.spawned(&k, "s1").await;
        let old = s.current(&k);
        s.pods.slow_deletes(true);
        s.spawned(&k, "s2").await;
        // generation 1 is terminating (the bounce deleted it with a grace period).
        assert!(s
            .pods
            .pod(&old)
            .is_some_and(|p| p.metadata.deletion_timestamp.is_some()));
        let repairs = s.repairs();
        repairs.sweep().await;
        repairs.on_pod(&s.pods.pod(&old).expect("old pod")).await;
        assert!(s.pods.pod(&old).is_some());
        assert!(s.pods.deleted.lock().map(|d| d.is_empty()).unwrap_or(false));
    }
}
