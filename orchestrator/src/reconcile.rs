//! The reconciler: a kube-runtime watcher on the platform's label plus a periodic sweep,
//! that repairs drift between the BuildSessions rows and the pods by applying the pure
//! decisions of [`crate::session`]:
//! - pod Ready for the row's fence, row PENDING -> READY (the push was lost);
//! - pod failed, terminating or gone -> the row leaves READY, and the pod is made again;
//! - pod idled out -> the row says IDLE and the pod goes (the output base stays);
//! - pod with no row, no fence, or an older generation than the row's -> deleted;
//! - a PENDING row without its pod (a crash between the commit and the create) -> the
//!   pod is created, by the platform, without waiting for the user's next command.
//!
//! Every decision reads the row from Spanner, and every change is fenced there, so any
//! number of replicas can run this side by side: they compute the same decisions, their
//! creates are idempotent (one name per generation) and their deletes carry the UID.
//!
//! It also feeds the reflector store the request handlers read (the READY fast path).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::reflector::{self, ObjectRef, Store as PodCache};
use kube::runtime::{watcher, WatchStreamExt};
use proto::error_chain::ErrorChain;
use tokio::time::Instant;

use crate::engine::SessionStore;
use crate::notify::ReadyNotices;
use crate::pods::manifest::platform_selector;
use crate::pods::{pod_name, view, PodClient, PodSpecFor};
use crate::session::{
    self, DeleteReason, MissingPodDecision, PodHealth, ReadyDecision, ReconcileDecision,
    SessionKey, SessionRow,
};
use crate::store::Store;

/// Deadline of one repair transaction.
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);
/// Deadline of making a missing pod (it may wait for a terminating one of the same name).
const CREATE_DEADLINE: Duration = Duration::from_secs(60);

/// Watches the platform's pods and sweeps the rows; see the module doc.
pub struct Reconciler {
    store: Store,
    pods: PodClient,
    notices: ReadyNotices,
    cache: PodCache<Pod>,
    writer: Option<reflector::store::Writer<Pod>>,
    resync: Duration,
}

impl Reconciler {
    pub fn new(store: Store, pods: PodClient, notices: ReadyNotices, resync: Duration) -> Self {
        let (cache, writer) = reflector::store();
        Reconciler {
            store,
            pods,
            notices,
            cache,
            writer: Some(writer),
            resync,
        }
    }

    /// The reflector store of the platform's pods (filled by [`Reconciler::run`]).
    pub fn cache(&self) -> PodCache<Pod> {
        self.cache.clone()
    }

    /// Runs until the task is aborted: the watch, and a sweep after each (re)list and
    /// every `resync`.
    pub async fn run(mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let selector = platform_selector(&self.pods.settings().namespace);
        let config = watcher::Config::default().labels(&selector);
        let stream =
            reflector::reflector(writer, watcher(self.pods.all(), config).default_backoff());
        let mut stream = std::pin::pin!(stream);
        let this = Arc::new(self);
        let sweeper = {
            let this = this.clone();
            tokio::spawn(async move {
                if this.cache.wait_until_ready().await.is_err() {
                    return;
                }
                let mut tick = tokio::time::interval(this.resync);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    this.sweep().await;
                }
            })
        };
        let _abort_sweeper = AbortOnDrop(sweeper);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                    this.on_pod(&pod).await
                }
                Ok(watcher::Event::Delete(pod)) => this.on_deleted(&pod).await,
                Ok(watcher::Event::Init) => {}
                Ok(watcher::Event::InitDone) => this.sweep().await,
                Err(e) => {
                    tracing::warn!(error = %ErrorChain(&e), "pod watch error; resuming with backoff")
                }
            }
        }
    }

    fn deadline() -> Instant {
        Instant::now() + REPAIR_DEADLINE
    }

    async fn read(&self, key: &SessionKey, pod: &str) -> Option<Option<SessionRow>> {
        match self.store.read(key, Self::deadline()).await {
            Ok(row) => Some(row),
            Err(e) => {
                tracing::warn!(pod = %pod, error = %ErrorChain(&e), "reconciler cannot read the row; will retry on the next event or sweep");
                None
            }
        }
    }

    async fn on_pod(self: &Arc<Self>, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(key) = view::key_of(pod) else {
            tracing::info!(pod = %name, "deleting a platform pod without user/repo labels");
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            self.delete(
                &ns,
                &name,
                pod.metadata.uid.as_deref(),
                "no user/repo labels",
            )
            .await;
            return;
        };
        let Some(row) = self.read(&key, &name).await else {
            return;
        };
        self.decide_pod(&key, row.as_ref(), pod).await;
    }

    async fn decide_pod(self: &Arc<Self>, key: &SessionKey, row: Option<&SessionRow>, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let v = view::view(pod);
        let decision = match session::reconcile(row, &v) {
            ReconcileDecision::DeletePod { .. } if v.health == PodHealth::Terminating => {
                ReconcileDecision::Nothing
            }
            d => d,
        };
        self.apply(key, &name, v.uid.as_deref(), decision).await;
    }

    async fn on_deleted(self: &Arc<Self>, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if let Some(newer) = self.cache.get(&ObjectRef::new(&name).within(&ns)) {
            self.on_pod(&newer).await;
            return;
        }
        let Some(key) = view::key_of(pod) else { return };
        let Some(Some(row)) = self.read(&key, &name).await else {
            return;
        };
        // Only the row's current pod matters; older generations are meant to go.
        if view::view(pod).fence() == Some(row.fence()) {
            self.missing(key, row);
        }
    }

    /// The row's current pod is not there: repair in a task (a create may wait for a
    /// terminating pod of the same name), so the watch goes on.
    fn missing(self: &Arc<Self>, key: SessionKey, row: SessionRow) {
        let decision = session::missing_pod(&row);
        if decision == MissingPodDecision::Nothing {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let name = pod_name(&key.user_id, &key.repo_hash, row.generation);
            if let MissingPodDecision::LeaveReady { fence } = &decision {
                match this.store.leave_ready(&key, fence, Self::deadline()).await {
                    Ok(true) => tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash,
                        session = %fence.session_id, pod = %name, "pod gone: row leaves READY"),
                    Ok(false) => return,
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot demote the row");
                        return;
                    }
                }
            }
            let spec = PodSpecFor {
                user_id: &key.user_id,
                repo_hash: &key.repo_hash,
                session_id: &row.session_id,
                generation: row.generation,
            };
            match this
                .pods
                .ensure(&spec, Instant::now() + CREATE_DEADLINE)
                .await
            {
                Ok(crate::pods::EnsureOutcome::Created(_)) => tracing::info!(
                    user = %key.user_id, repo_hash = %key.repo_hash, session = %row.session_id,
                    pod = %name, "the row's pod was missing: created it"),
                Ok(crate::pods::EnsureOutcome::Existing(_)) => {}
                Err(e) => {
                    tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot create the row's pod")
                }
            }
        });
    }

    /// Every active row against the cache, and every cached pod against its row.
    async fn sweep(self: &Arc<Self>) {
        let rows = match self.store.active_rows(Self::deadline()).await {
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
            let ns = self.pods.namespace_of(&key.user_id);
            if self.cache.get(&ObjectRef::new(&name).within(&ns)).is_none() {
                missing += 1;
                self.missing(key.clone(), row.clone());
            }
        }
        let pods = self.cache.state();
        for pod in &pods {
            match view::key_of(pod) {
                Some(key) => match rows.get(&key) {
                    Some(row) => self.decide_pod(&key, Some(row), pod).await,
                    // IDLE or no row at all: read it (rare).
                    None => self.on_pod(pod).await,
                },
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

    async fn apply(
        &self,
        key: &SessionKey,
        name: &str,
        uid: Option<&str>,
        decision: ReconcileDecision,
    ) {
        match decision {
            ReconcileDecision::Nothing => {}
            ReconcileDecision::MarkReady { fence, pod_ip } => {
                match self
                    .store
                    .mark_ready(key, &fence, &pod_ip, None, Self::deadline())
                    .await
                {
                    Ok(ReadyDecision::Accept { .. }) => {
                        tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %fence.session_id,
                            pod = %name, pod_ip = %pod_ip, "pod Ready but the push was lost: row READY");
                        self.notices.send(key, &fence.session_id);
                    }
                    Ok(ReadyDecision::Reject(why)) => {
                        tracing::debug!(pod = %name, reason = %why, "reconciler READY fenced off")
                    }
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot mark READY")
                    }
                }
            }
            ReconcileDecision::LeaveReady { fence } => {
                match self.store.leave_ready(key, &fence, Self::deadline()).await {
                    Ok(true) => tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash,
                        session = %fence.session_id, pod = %name, "pod failed or going away: row leaves READY"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot demote the row")
                    }
                }
            }
            ReconcileDecision::MarkIdle { fence } => {
                match self.store.mark_idle(key, &fence, Self::deadline()).await {
                    Ok(changed) => {
                        if changed {
                            tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash,
                                session = %fence.session_id, pod = %name,
                                "server idled out: row IDLE, output base kept, pod deleted");
                        }
                        self.delete(
                            &self.pods.namespace_of(&key.user_id),
                            name,
                            uid,
                            &DeleteReason::Culled.to_string(),
                        )
                        .await;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot mark the row IDLE")
                    }
                }
            }
            ReconcileDecision::DeletePod { reason } => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, pod = %name,
                    reason = %reason, "deleting a pod that is not the row's current one");
                self.delete(
                    &self.pods.namespace_of(&key.user_id),
                    name,
                    uid,
                    &reason.to_string(),
                )
                .await;
            }
        }
    }

    async fn delete(&self, namespace: &str, name: &str, uid: Option<&str>, why: &str) {
        if let Err(e) = self.pods.delete_in(namespace, name, uid).await {
            tracing::warn!(pod = %name, reason = why, error = %ErrorChain(&e), "reconciler cannot delete the pod");
        }
    }
}

/// Aborts a task when dropped (the sweeper ends with the watch).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
