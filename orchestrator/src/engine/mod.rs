//! The engine: GetServer, WatchServer and ReportReady as decisions and their order,
//! written against two ports ([`SessionStore`], [`Pods`]) so they run the same on Spanner
//! and kube-rs as on the in-memory fakes of the unit tests.
//!
//! The order it keeps, whatever the adapters:
//! - the row is written (one fenced transaction) before the cluster is touched;
//! - the cluster is made to match the row by a task that outlives the request, and only
//!   while the row still names the request's session;
//! - READY is answered only from a row that says READY for the caller's session.
//!
//! No tonic here beyond the wire messages: the service maps [`EngineError`] to a status.

mod ports;
mod watch;

#[cfg(test)]
mod fakes;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use proto::error_chain::ErrorChain;
use proto::names::SessionId;
use proto::orchestrator::{Server, ServerEvent, ServerStatus};
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use ports::{PodSignal, Pods, SessionStore};

use crate::notify::{KeyLocks, ReadyNotices};
use crate::pods::view;
use crate::pods::{pod_name, EnsureOutcome, PodError, PodSpecFor};
use crate::session::{
    self, GetServerOutcome, PodHealth, ReadyDecision, ReconcileDecision, RowWrite, SessionKey,
    SessionRow, Status,
};
use crate::store::StoreError;

/// Room the pod work gets beyond a short request: a bounce waits for the old pod's grace
/// period, and the response does not wait for it past the request's deadline.
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
    pub session_id: SessionId,
    pub pod_name: String,
    pub pod_ip: String,
    /// 0 when the supervisor did not say.
    pub command_port: u32,
}

/// The decisions, over a store and a pod port.
pub struct Engine<S, P> {
    store: S,
    pods: P,
    notices: ReadyNotices,
    locks: KeyLocks,
    /// Bazel's command port when a pod has not reported one.
    default_command_port: u32,
    /// Command ports from accepted ReportReady calls, by key, with their session. The pod
    /// annotation carries the same value across restarts, but reaches the pod cache a
    /// moment later than the next GetServer may ask.
    reported_ports: Mutex<HashMap<SessionKey, (SessionId, u32)>>,
}

impl<S: SessionStore, P: Pods> Engine<S, P> {
    pub fn new(store: S, pods: P, notices: ReadyNotices, default_command_port: u32) -> Self {
        Engine {
            store,
            pods,
            notices,
            locks: KeyLocks::default(),
            default_command_port,
            reported_ports: Mutex::default(),
        }
    }

    /// The wire view of a row. A PodIP is only given out with READY.
    fn server(&self, key: &SessionKey, row: &SessionRow, pod: Option<&Pod>) -> Server {
        let status = match row.status {
            Status::Pending => ServerStatus::Pending,
            Status::Ready => ServerStatus::Ready,
        };
        Server {
            user_id: key.user_id.to_string(),
            repo_hash: key.repo_hash.to_string(),
            session_id: row.session_id.to_string(),
            status: status as i32,
            pod_name: pod_name(&key.user_id, &key.repo_hash),
            namespace: self.pods.namespace().to_string(),
            pod_ip: match row.status {
                Status::Ready => row.pod_ip.clone().unwrap_or_default(),
                Status::Pending => String::new(),
            },
            command_port: self
                .reported_port(key, &row.session_id)
                .or_else(|| pod.and_then(view::command_port_of))
                .unwrap_or(self.default_command_port),
        }
    }

    fn reported_port(&self, key: &SessionKey, session_id: &SessionId) -> Option<u32> {
        let ports = self
            .reported_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match ports.get(key) {
            Some((session, port)) if session == session_id => Some(*port),
            _ => None,
        }
    }

    fn cached_pod(&self, key: &SessionKey) -> Option<Arc<Pod>> {
        self.pods.cached(&pod_name(&key.user_id, &key.repo_hash))
    }

    /// Makes the cluster match the row of `key` for `session_id`, under the key's lock.
    /// Re-reads the row first: when another session took the row meanwhile, its own
    /// request does the work and this one does nothing (it would delete the newer pod).
    async fn converge(
        &self,
        key: &SessionKey,
        session_id: &SessionId,
        deadline: Instant,
    ) -> Result<Option<EnsureOutcome>, EngineError> {
        let _guard = self.locks.lock(key).await;
        let row = self.store.read(key).await?;
        let name = pod_name(&key.user_id, &key.repo_hash);
        if row.as_ref().map(|r| &r.session_id) != Some(session_id) {
            tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id,
                pod = %name, "superseded before its pod was made; nothing to do");
            return Ok(None);
        }
        let spec = PodSpecFor {
            user_id: &key.user_id,
            repo_hash: &key.repo_hash,
            session_id,
        };
        let outcome = self
            .pods
            .ensure(&spec, deadline)
            .await
            .map_err(|source| EngineError::Pods { pod: name, source })?;
        if matches!(outcome, EnsureOutcome::Created(_))
            && row.as_ref().is_some_and(|r| r.status == Status::Ready)
        {
            // The READY row's pod was gone: the new pod must report again.
            self.store.leave_ready(key, session_id, deadline).await?;
        }
        Ok(Some(outcome))
    }

    /// The watch path of readiness, taken by the engine itself: the session's pod passing
    /// its readiness probe (the supervisor's /readyz answers only while Ping does) makes a
    /// PENDING row READY, fenced by SessionId, exactly as the reconciler would. So the push
    /// (ReportReady), the reconciler and the requests converge on READY in any order; a
    /// push lost or a probe event missed cannot leave a serving server PENDING.
    async fn ready_from_pod(
        &self,
        key: &SessionKey,
        row: &SessionRow,
        pod: &Pod,
        deadline: Instant,
    ) -> Result<Option<SessionRow>, EngineError> {
        let ReconcileDecision::MarkReady { session_id, pod_ip } =
            session::reconcile(Some(row), Some(&view::view(pod)))
        else {
            return Ok(None);
        };
        match self
            .store
            .mark_ready(key, &session_id, &pod_ip, deadline)
            .await?
        {
            ReadyDecision::Accept { row, .. } => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id,
                    pod_ip = %pod_ip, "pod Ready for the row's session: row READY");
                self.notices.send(key, &session_id);
                Ok(Some(row))
            }
            ReadyDecision::Reject(_) => Ok(None),
        }
    }

    /// GetServer: one transaction on the row, then the cluster made to match it. Answers
    /// at once from the pod cache when the row is READY and its pod is alive.
    pub async fn get_server(
        self: Arc<Self>,
        key: SessionKey,
        session_id: SessionId,
        deadline: Instant,
    ) -> Result<Server, EngineError> {
        let t = self.store.get_server(&key, &session_id, deadline).await?;
        let name = pod_name(&key.user_id, &key.repo_hash);
        match &t.outcome {
            GetServerOutcome::Bounced { previous_session } => tracing::info!(
                user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                previous_session = %previous_session, "session bounced: taking over the row"),
            outcome => tracing::debug!(
                user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                ?outcome, "GetServer committed"),
        }

        // Fast path: READY row whose pod the cache sees alive for this session.
        if t.row.status == Status::Ready {
            if let Some(pod) = self.cached_pod(&key) {
                let v = view::view(&pod);
                if v.session_id.as_ref() == Some(&session_id)
                    && matches!(v.health, PodHealth::Ready | PodHealth::Starting)
                {
                    return Ok(self.server(&key, &t.row, Some(&pod)));
                }
            }
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
        let mut row = match self.store.read(&key).await? {
            Some(row) if row.session_id == session_id => row,
            _ => t.row,
        };
        if let Some(p) = pod.as_ref().filter(|_| row.status == Status::Pending) {
            if let Some(ready) = self.ready_from_pod(&key, &row, p, deadline).await? {
                row = ready;
            }
        }
        Ok(self.server(&key, &row, pod.as_ref()))
    }

    /// ReportReady: the fenced READY write; true when accepted. A rejected report (another
    /// session owns the row, or there is none) changes nothing.
    pub async fn report_ready(
        self: Arc<Self>,
        key: SessionKey,
        report: Report,
        deadline: Instant,
    ) -> Result<bool, EngineError> {
        let decision = self
            .store
            .mark_ready(&key, &report.session_id, &report.pod_ip, deadline)
            .await?;
        let write = match decision {
            ReadyDecision::Accept { write, .. } => write,
            ReadyDecision::Reject(why) => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %report.session_id,
                    pod = %report.pod_name, reason = %why, "ReportReady rejected (fenced): nothing written");
                return Ok(false);
            }
        };
        tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %report.session_id,
            pod = %report.pod_name, pod_ip = %report.pod_ip, command_port = report.command_port,
            changed = write != RowWrite::Keep, "ReportReady accepted: row READY");
        if report.command_port != 0 {
            self.reported_ports
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(
                    key.clone(),
                    (report.session_id.clone(), report.command_port),
                );
            match self
                .pods
                .annotate_command_port(&report.pod_name, &report.session_id, report.command_port)
                .await
            {
                Ok(true) => {}
                Ok(false) => tracing::warn!(pod = %report.pod_name, session = %report.session_id,
                    "could not record the command port: the pod is gone or another session's"),
                Err(e) => tracing::warn!(pod = %report.pod_name, error = %ErrorChain(&e),
                    "could not record the command port"),
            }
        }
        self.notices.send(&key, &report.session_id);
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
        let row = match self.store.read(&key).await? {
            None => return Err(EngineError::NoSession { key }),
            Some(r) if r.session_id != session_id => {
                return Err(EngineError::Superseded { session_id })
            }
            Some(r) => r,
        };
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(watch::Watch::new(self, key, session_id, tx).run(row, notices, deadline));
        Ok(rx)
    }
}
