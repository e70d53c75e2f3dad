//! The engine: GetServer, WatchServer and ReportReady as decisions and their order, and
//! the [`Reconciler`] that repairs drift between rows and pods, written against two ports
//! ([`SessionStore`], [`Pods`]) so they run the same on Spanner and kube-rs as on the
//! in-memory fakes of the unit tests.
//!
//! The order it keeps, whatever the adapters:
//! - the row is written (one fenced transaction) before the cluster is touched;
//! - the cluster is made to match the row by a task that outlives the request, and only
//!   while the row still names the request's session; pods of older generations are
//!   removed whatever the reader's staleness (generations only grow), so several
//!   replicas need no shared lock: Spanner's row is the only arbiter;
//! - READY is answered only from a row that says READY for the caller's session; the
//!   common case (READY, same session) is one read-only transaction.
//!
//! No tonic here beyond the wire messages: the service maps [`EngineError`] to a status.

mod ports;
mod reconcile;
mod watch;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use proto::names::SessionId;
use proto::orchestrator::{Server, ServerEvent, ServerStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use ports::{PodChange, PodSignal, Pods, SessionStore};
pub use reconcile::Reconciler;

use crate::notify::ReadyNotices;
use crate::pods::manifest::user_namespace;
use crate::pods::view;
use crate::pods::{pod_name, EnsureOutcome, PodError, PodSpecFor};
use crate::session::{
    self, Fence, GetServerOutcome, PodHealth, ReadyDecision, ReconcileDecision, RowWrite,
    SessionKey, SessionRow, Status,
};
use crate::store::StoreError;

/// Room the pod work gets beyond a short request: replacing a failed pod waits for it to
/// be gone, and the response does not wait for it past the request's deadline.
const POD_WORK_ROOM: Duration = Duration::from_secs(120);

/// Why a request could not be answered. Each names the row or the pod.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The session store failed (its error names the row).
    #[error("session store")]
    Store(#[from] StoreError),
    /// Making the cluster match the row failed.
    #[error("cannot make pod {pod} match its session")]
    Pods {
        pod: String,
        #[source]
        source: PodError,
    },
    /// The pod work task panicked or was cancelled.
    #[error("pod task for {pod} failed")]
    Task {
        pod: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// WatchServer for a key that has no row.
    #[error("no session for {key}: call GetServer first")]
    NoSession { key: SessionKey },
    /// The caller's session no longer owns the row (a newer session took it over).
    #[error("session {session_id} was superseded by a newer session")]
    Superseded { session_id: SessionId },
    /// The spawn cannot succeed by itself (image missing, crash loop, ...).
    #[error("{reason}: {message}")]
    SpawnFailed { reason: String, message: String },
    /// The server was not ready by the caller's deadline.
    #[error("{pod} not ready before the deadline")]
    NotReady { pod: String },
}

/// A readiness report from a supervisor, with fields the service has checked.
#[derive(Debug, Clone)]
pub struct Report {
    pub fence: Fence,
    pub pod_name: String,
    pub pod_ip: String,
    /// 0 when the supervisor did not say.
    pub command_port: u32,
    /// The uid of the pod the report's credential is bound to (checked against the pod).
    pub pod_uid: Option<String>,
}

/// The decisions, over a store and a pod port.
pub struct Engine<S, P> {
    store: S,
    pods: P,
    notices: ReadyNotices,
    /// Bazel's command port when a pod has not reported one.
    default_command_port: u32,
}

impl<S: SessionStore, P: Pods> Engine<S, P> {
    pub fn new(store: S, pods: P, notices: ReadyNotices, default_command_port: u32) -> Self {
        Engine {
            store,
            pods,
            notices,
            default_command_port,
        }
    }

    /// The platform's namespace (each user's pods live in a namespace derived from it).
    pub fn platform_namespace(&self) -> &str {
        self.pods.namespace()
    }

    /// The wire view of a row. A PodIP is only given out with READY.
    fn server(&self, key: &SessionKey, row: &SessionRow) -> Server {
        let status = match row.status {
            Status::Ready => ServerStatus::Ready,
            Status::Pending | Status::Idle => ServerStatus::Pending,
        };
        Server {
            user_id: key.user_id.to_string(),
            repo_hash: key.repo_hash.to_string(),
            session_id: row.session_id.to_string(),
            status: status as i32,
            pod_name: pod_name(&key.user_id, &key.repo_hash, row.generation),
            namespace: user_namespace(self.pods.namespace(), &key.user_id),
            pod_ip: match row.status {
                Status::Ready => row.pod_ip.clone().unwrap_or_default(),
                Status::Pending | Status::Idle => String::new(),
            },
            command_port: row.command_port.unwrap_or(self.default_command_port),
        }
    }

    /// The row's current pod as the cache last saw it.
    fn cached_pod(&self, key: &SessionKey, row: &SessionRow) -> Option<Arc<Pod>> {
        self.pods.cached(
            &key.user_id,
            &pod_name(&key.user_id, &key.repo_hash, row.generation),
        )
    }

    /// True when the cache sees the row's current pod alive (starting or ready).
    fn alive_in_cache(&self, key: &SessionKey, row: &SessionRow) -> bool {
        self.cached_pod(key, row).is_some_and(|pod| {
            let v = view::view(&pod);
            v.fence().as_ref() == Some(&row.fence())
                && matches!(v.health, PodHealth::Ready | PodHealth::Starting)
        })
    }

    /// Makes the cluster match the row of `key` for `session_id`: the pod of the row's
    /// generation exists, older generations are deleted (not waited for: the new server
    /// waits for the old one's output-base lock). Re-reads the row first: when another
    /// session took it meanwhile, that session's request does the work.
    async fn converge(
        &self,
        key: &SessionKey,
        session_id: &SessionId,
        deadline: Instant,
    ) -> Result<Option<EnsureOutcome>, EngineError> {
        let row = self.store.read(key, deadline).await?;
        let Some(row) = row.filter(|r| r.session_id == *session_id && r.status != Status::Idle)
        else {
            tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id,
                "superseded (or idle) before its pod was made; nothing to do");
            return Ok(None);
        };
        let spec = PodSpecFor {
            user_id: &key.user_id,
            repo_hash: &key.repo_hash,
            session_id,
            generation: row.generation,
        };
        let name = spec.name();
        let pod_err = |source| EngineError::Pods {
            pod: name.clone(),
            source,
        };
        let older = self
            .pods
            .remove_older(key, row.generation)
            .await
            .map_err(pod_err)?;
        if !older.is_empty() {
            tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id,
                pod = %name, older = ?older, "older generations' pods are being deleted");
        }
        let outcome = self.pods.ensure(&spec, deadline).await.map_err(pod_err)?;
        if matches!(outcome, EnsureOutcome::Created(_)) && row.status == Status::Ready {
            // The READY row's pod was gone: the new pod must report again.
            self.store.leave_ready(key, &row.fence(), deadline).await?;
        }
        Ok(Some(outcome))
    }

    /// The watch path of readiness, taken by the engine itself: the session's pod passing
    /// its readiness probe (the supervisor's /readyz answers only while Ping does) makes a
    /// PENDING row READY, fenced by session and generation, exactly as the reconciler
    /// does. So the push (ReportReady), the reconciler and the requests converge on READY
    /// in any order; a push lost or a probe event missed cannot leave a serving server
    /// PENDING.
    async fn ready_from_pod(
        &self,
        key: &SessionKey,
        row: &SessionRow,
        pod: &Pod,
        deadline: Instant,
    ) -> Result<Option<SessionRow>, EngineError> {
        match session::reconcile(Some(row), &view::view(pod)) {
            ReconcileDecision::MarkReady { fence, pod_ip } => Ok(self
                .mark_ready_from_pod(key, &fence, &pod_ip, deadline)
                .await?),
            _ => Ok(None),
        }
    }

    /// [`ReconcileDecision::MarkReady`] performed: the fenced READY write for a pod whose
    /// readiness probe passes (no command port: the row keeps the one it has), and the
    /// notice to the WatchServer streams. The row when it was accepted.
    async fn mark_ready_from_pod(
        &self,
        key: &SessionKey,
        fence: &Fence,
        pod_ip: &str,
        deadline: Instant,
    ) -> Result<Option<SessionRow>, StoreError> {
        match self
            .store
            .mark_ready(key, fence, pod_ip, None, deadline)
            .await?
        {
            ReadyDecision::Accept { row, write } => {
                if write != RowWrite::Keep {
                    tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %fence.session_id,
                        generation = fence.generation, pod_ip = %pod_ip,
                        "pod Ready for the row's fence (without its report): row READY");
                }
                self.notices.send(key, &fence.session_id);
                Ok(Some(row))
            }
            ReadyDecision::Reject(why) => {
                tracing::debug!(user = %key.user_id, repo_hash = %key.repo_hash, session = %fence.session_id,
                    generation = fence.generation, reason = %why, "READY from the pod fenced off");
                Ok(None)
            }
        }
    }

    /// GetServer. The common case, a READY row of the caller's session whose pod the cache
    /// sees alive, is answered from one single-use read-only read of bounded staleness (no
    /// locks, never aborted, no wait for the newest timestamp). Otherwise one read-write
    /// transaction on the row, then the cluster made to match it.
    pub async fn get_server(
        self: Arc<Self>,
        key: SessionKey,
        session_id: SessionId,
        deadline: Instant,
    ) -> Result<Server, EngineError> {
        let current = self.store.read_recent(&key, deadline).await?;
        if let Some(row) = session::ready_for(current.as_ref(), &session_id) {
            if self.alive_in_cache(&key, row) {
                return Ok(self.server(&key, row));
            }
        }

        let t = self.store.get_server(&key, &session_id, deadline).await?;
        let name = pod_name(&key.user_id, &key.repo_hash, t.row.generation);
        match &t.outcome {
            GetServerOutcome::Bounced { previous_session } => tracing::info!(
                user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                previous_session = %previous_session, "session bounced: taking over the row"),
            outcome => tracing::debug!(
                user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                ?outcome, "GetServer committed"),
        }
        if t.row.status == Status::Ready && self.alive_in_cache(&key, &t.row) {
            return Ok(self.server(&key, &t.row));
        }

        // Make the cluster match, in a task that finishes even if this request does not.
        let worker = {
            let this = self.clone();
            let key = key.clone();
            let session_id = session_id.clone();
            let work_deadline = deadline.max(Instant::now() + POD_WORK_ROOM);
            tokio::spawn(async move { this.converge(&key, &session_id, work_deadline).await })
        };
        let pod = match tokio::time::timeout_at(deadline, worker).await {
            Ok(Ok(outcome)) => outcome?.map(|o| o.pod().clone()),
            Ok(Err(source)) => return Err(EngineError::Task { pod: name, source }),
            Err(_) => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                    "pod not settled by the request deadline; answering PENDING, the work goes on");
                None
            }
        };
        // The row as it is now (the pod step may have demoted a READY row whose pod was gone).
        let mut row = match self.store.read(&key, deadline).await? {
            Some(row) if row.session_id == session_id => row,
            _ => t.row,
        };
        if let Some(p) = pod.as_ref().filter(|_| row.status == Status::Pending) {
            if let Some(ready) = self.ready_from_pod(&key, &row, p, deadline).await? {
                row = ready;
            }
        }
        Ok(self.server(&key, &row))
    }

    /// ReportReady: the fenced READY write; true when accepted. A rejected report (another
    /// session or generation owns the row, there is none, or the cluster does not have
    /// the reporter's pod at the reported IP) changes nothing.
    pub async fn report_ready(
        self: Arc<Self>,
        key: SessionKey,
        report: Report,
        deadline: Instant,
    ) -> Result<bool, EngineError> {
        let pod = self
            .pods
            .get(&key.user_id, &report.pod_name)
            .await
            .map_err(|source| EngineError::Pods {
                pod: report.pod_name.clone(),
                source,
            })?;
        if let Err(why) = view::report_matches(
            pod.as_ref(),
            &key,
            &report.fence,
            &report.pod_ip,
            report.pod_uid.as_deref(),
        ) {
            tracing::warn!(user = %key.user_id, repo_hash = %key.repo_hash, session = %report.fence.session_id,
                pod = %report.pod_name, pod_ip = %report.pod_ip, reason = %why,
                "ReportReady does not match the cluster: nothing written");
            return Ok(false);
        }
        let port = (report.command_port != 0).then_some(report.command_port);
        let decision = self
            .store
            .mark_ready(&key, &report.fence, &report.pod_ip, port, deadline)
            .await?;
        let write = match decision {
            ReadyDecision::Accept { write, .. } => write,
            ReadyDecision::Reject(why) => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %report.fence.session_id,
                    pod = %report.pod_name, reason = %why, "ReportReady rejected (fenced): nothing written");
                return Ok(false);
            }
        };
        tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %report.fence.session_id,
            pod = %report.pod_name, pod_ip = %report.pod_ip, command_port = report.command_port,
            changed = write != RowWrite::Keep, "ReportReady accepted: row READY");
        self.notices.send(&key, &report.fence.session_id);
        Ok(true)
    }

    /// WatchServer: checks the row, then streams progress events until READY, failure,
    /// supersession, the deadline, or the receiver going away.
    pub async fn watch_server(
        self: Arc<Self>,
        key: SessionKey,
        session_id: SessionId,
        deadline: Instant,
    ) -> Result<mpsc::Receiver<Result<ServerEvent, EngineError>>, EngineError> {
        // Subscribe before reading the row: a READY that lands in between is not missed.
        let notices = self.notices.subscribe();
        let row = match self.store.read(&key, deadline).await? {
            None => return Err(EngineError::NoSession { key }),
            Some(r) if r.session_id != session_id => {
                return Err(EngineError::Superseded { session_id })
            }
            Some(r) => r,
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(watch::Watch::new(self, key, row.clone(), tx).run(row, notices, deadline));
        Ok(rx)
    }
}
