//! The reconciler: a kube-runtime watcher on the platform's label (no polling loop) that
//! repairs drift between the BuildSessions rows and the pods, applying the pure decisions
//! of [`crate::session::reconcile`]:
//! - pod Ready with the row's session, row PENDING -> READY (the push was lost);
//! - pod failed, terminating or gone -> the row leaves READY;
//! - pod with no row, no session label, or another session than the row's -> deleted.
//!
//! It also feeds the reflector store the request handlers read (the READY fast path).
//! After every (re)list it sweeps the READY rows, so a pod that vanished while nobody was
//! watching (orchestrator down) still demotes its row.

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
use crate::pods::manifest::APP_SELECTOR;
use crate::pods::{pod_name, view, PodClient};
use crate::session::{self, PodHealth, ReadyDecision, ReconcileDecision, SessionKey};
use crate::store::Store;

/// Deadline of one repair transaction.
const REPAIR_DEADLINE: Duration = Duration::from_secs(10);

/// The reconciler and the pod cache it maintains.
pub struct Reconciler {
    store: Store,
    pods: PodClient,
    notices: ReadyNotices,
    cache: PodCache<Pod>,
    writer: Option<reflector::store::Writer<Pod>>,
}

impl Reconciler {
    pub fn new(store: Store, pods: PodClient, notices: ReadyNotices) -> Self {
        let (cache, writer) = reflector::store();
        Reconciler {
            store,
            pods,
            notices,
            cache,
            writer: Some(writer),
        }
    }

    /// The reflector store of platform pods (read by the request handlers).
    pub fn cache(&self) -> PodCache<Pod> {
        self.cache.clone()
    }

    /// Runs until the task is dropped. Watch errors are logged and the watch resumes with
    /// kube-runtime's default backoff.
    pub async fn run(mut self) {
        let Some(writer) = self.writer.take() else {
            return;
        };
        let config = watcher::Config::default().labels(APP_SELECTOR);
        let stream = reflector::reflector(
            writer,
            watcher(self.pods.api().clone(), config).default_backoff(),
        );
        let mut stream = std::pin::pin!(stream);
        let this = Arc::new(self);
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

    async fn on_pod(&self, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let Some(key) = view::key_of(pod) else {
            tracing::info!(pod = %name, "deleting a platform pod without user/repo labels");
            self.delete(&name, pod.metadata.uid.as_deref(), "no user/repo labels")
                .await;
            return;
        };
        let row = match self.store.read(&key).await {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot read the row; will retry on the next event");
                return;
            }
        };
        let v = view::view(pod);
        let decision = match session::reconcile(row.as_ref(), Some(&v)) {
            // Already going away: deleting it again would only add noise.
            ReconcileDecision::DeletePod { .. } if v.health == PodHealth::Terminating => {
                ReconcileDecision::Nothing
            }
            d => d,
        };
        self.apply(&key, &name, v.uid.as_deref(), decision).await;
    }

    async fn on_deleted(&self, pod: &Pod) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        // The reflector applied the deletion already: a pod still cached under the name is
        // a newer one, and it is the one that counts.
        let ns = self.pods.settings().namespace.clone();
        if let Some(newer) = self.cache.get(&ObjectRef::new(&name).within(&ns)) {
            self.on_pod(&newer).await;
            return;
        }
        let Some(key) = view::key_of(pod) else { return };
        let row = match self.store.read(&key).await {
            Ok(row) => row,
            Err(e) => {
                tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot read the row after a deletion");
                return;
            }
        };
        let decision = session::reconcile(row.as_ref(), None);
        self.apply(&key, &name, None, decision).await;
    }

    /// After a (re)list: every READY row must have a live pod of its session.
    async fn sweep(&self) {
        let rows = match self.store.ready_rows().await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "reconciler sweep cannot list READY rows");
                return;
            }
        };
        let ns = self.pods.settings().namespace.clone();
        let mut repaired = 0usize;
        for (key, row) in &rows {
            let name = pod_name(&key.user_id, &key.repo_hash);
            let pod = self.cache.get(&ObjectRef::new(&name).within(&ns));
            let v = pod.as_deref().map(view::view);
            let decision = session::reconcile(Some(row), v.as_ref());
            if decision != ReconcileDecision::Nothing {
                repaired += 1;
            }
            let uid = v.as_ref().and_then(|v| v.uid.clone());
            self.apply(key, &name, uid.as_deref(), decision).await;
        }
        tracing::info!(
            ready_rows = rows.len(),
            pods = self.cache.len(),
            repaired,
            "reconciler in sync with the cluster"
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
            ReconcileDecision::MarkReady { session_id, pod_ip } => {
                match self
                    .store
                    .mark_ready(key, &session_id, &pod_ip, Self::deadline())
                    .await
                {
                    Ok(ReadyDecision::Accept { .. }) => {
                        tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id,
                            pod = %name, pod_ip = %pod_ip, "pod Ready but the push was lost: row READY");
                        self.notices.send(key, &session_id);
                    }
                    Ok(ReadyDecision::Reject(why)) => {
                        tracing::debug!(pod = %name, reason = %why, "reconciler READY fenced off")
                    }
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot mark READY")
                    }
                }
            }
            ReconcileDecision::LeaveReady { session_id } => {
                match self
                    .store
                    .leave_ready(key, &session_id, Self::deadline())
                    .await
                {
                    Ok(true) => tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash,
                        session = %session_id, pod = %name, "pod failed or gone: row leaves READY"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(pod = %name, error = %ErrorChain(&e), "reconciler cannot demote the row")
                    }
                }
            }
            ReconcileDecision::DeletePod { reason } => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, pod = %name,
                    reason = %reason, "deleting an orphan pod");
                self.delete(name, uid, &reason.to_string()).await;
            }
        }
    }

    async fn delete(&self, name: &str, uid: Option<&str>, why: &str) {
        if let Err(e) = self.pods.delete(name, uid).await {
            tracing::warn!(pod = %name, reason = why, error = %ErrorChain(&e), "reconciler cannot delete the pod");
        }
    }
}
