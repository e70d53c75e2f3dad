//! The gRPC service (`proto::orchestrator`): GetServer, WatchServer, ReportReady.
//!
//! Every handler validates its names with `proto::names` FIRST: a bad UserId, RepoHash or
//! SessionId is InvalidArgument and nothing is read, written, created or deleted.
//! Spanner and Kubernetes work runs in spawned tasks, so a client that goes away (or a
//! deadline that passes) never leaves a transaction or a pod creation half done.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::runtime::reflector::{ObjectRef, Store as PodCache};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Api;
use proto::names::{validate_repo_hash, validate_session_id, validate_user_id, InvalidName};
use proto::orchestrator::orchestrator_server::Orchestrator;
use proto::orchestrator::{
    GetServerRequest, GetServerResponse, ReportReadyRequest, ReportReadyResponse, Server,
    ServerEvent, ServerStatus, Stage, WatchServerRequest,
};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status as GrpcStatus};

use crate::notify::{KeyLocks, ReadyNotices};
use crate::pods::view::{self, Progress};
use crate::pods::{pod_name, EnsureOutcome, PodClient, PodSpecFor};
use crate::session::{GetServerOutcome, PodHealth, ReadyDecision, SessionKey, SessionRow, Status};
use crate::store::Store;

/// Handler settings that are not about pods.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Deadline of a request that carries no `grpc-timeout`.
    pub default_deadline: Duration,
    /// Longest a WatchServer stream lives without a `grpc-timeout`.
    pub watch_deadline: Duration,
    /// Bazel's command port when a pod has not reported one.
    pub default_command_port: u32,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            default_deadline: Duration::from_secs(30),
            watch_deadline: Duration::from_secs(600),
            default_command_port: 9001,
        }
    }
}

/// The orchestrator's request handlers and what they share.
#[derive(Clone)]
pub struct OrchestratorService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    pods: PodClient,
    kube: kube::Client,
    cache: PodCache<Pod>,
    notices: ReadyNotices,
    locks: KeyLocks,
    settings: ServiceSettings,
    /// Command ports from accepted ReportReady calls, by key, with their session. The pod
    /// annotation carries the same value across restarts, but reaches the reflector a
    /// moment later than the next GetServer may ask.
    reported_ports: std::sync::Mutex<HashMap<SessionKey, (String, u32)>>,
}

impl OrchestratorService {
    /// `cache` is the reconciler's reflector store of platform pods.
    pub fn new(
        store: Store,
        pods: PodClient,
        kube: kube::Client,
        cache: PodCache<Pod>,
        notices: ReadyNotices,
        settings: ServiceSettings,
    ) -> Self {
        OrchestratorService {
            inner: Arc::new(Inner {
                store,
                pods,
                kube,
                cache,
                notices,
                locks: KeyLocks::default(),
                settings,
                reported_ports: Default::default(),
            }),
        }
    }
}

/// Validates the three names of a request. Pure.
pub fn validate(user_id: &str, repo_hash: &str, session_id: &str) -> Result<(), InvalidName> {
    validate_user_id(user_id)?;
    validate_repo_hash(repo_hash)?;
    validate_session_id(session_id)
}

fn invalid(e: InvalidName) -> GrpcStatus {
    GrpcStatus::invalid_argument(e.to_string())
}

/// Parses a `grpc-timeout` header value (gRPC over HTTP/2: up to 8 digits and a unit).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn deadline_of<T>(request: &Request<T>, default: Duration) -> Instant {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(default);
    Instant::now() + timeout
}

impl Inner {
    fn server(&self, key: &SessionKey, row: &SessionRow, pod: Option<&Pod>) -> Server {
        let status = match row.status {
            Status::Pending => ServerStatus::Pending,
            Status::Ready => ServerStatus::Ready,
        };
        Server {
            user_id: key.user_id.clone(),
            repo_hash: key.repo_hash.clone(),
            session_id: row.session_id.clone(),
            status: status as i32,
            pod_name: pod_name(&key.user_id, &key.repo_hash),
            namespace: self.pods.settings().namespace.clone(),
            pod_ip: if row.status == Status::Ready {
                row.pod_ip.clone().unwrap_or_default()
            } else {
                String::new()
            },
            command_port: self
                .reported_port(key, &row.session_id)
                .or_else(|| pod.and_then(view::command_port_of))
                .unwrap_or(self.settings.default_command_port),
        }
    }

    fn reported_port(&self, key: &SessionKey, session_id: &str) -> Option<u32> {
        let ports = self
            .reported_ports
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match ports.get(key) {
            Some((session, port)) if session == session_id => Some(*port),
            _ => None,
        }
    }

    fn cached_pod(&self, name: &str) -> Option<Arc<Pod>> {
        self.cache
            .get(&ObjectRef::new(name).within(&self.pods.settings().namespace))
    }

    /// Makes the cluster match the row of `key` for `session_id`, under the key's lock.
    /// Re-reads the row first: when another session took the row meanwhile, its own
    /// request does the work and this one does nothing (it would delete the newer pod).
    async fn converge(
        &self,
        key: &SessionKey,
        session_id: &str,
        deadline: Instant,
    ) -> Result<Option<EnsureOutcome>, GrpcStatus> {
        let _guard = self.locks.lock(key).await;
        let row = self.store.read(key).await.map_err(store_status)?;
        if row.as_ref().map(|r| r.session_id.as_str()) != Some(session_id) {
            tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, "superseded before its pod was made; nothing to do");
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
            .map_err(|e| GrpcStatus::unavailable(e.to_string()))?;
        if matches!(outcome, EnsureOutcome::Created(_))
            && row.as_ref().is_some_and(|r| r.status == Status::Ready)
        {
            // The READY row's pod was gone: the new pod must report again.
            self.store
                .leave_ready(key, session_id, deadline)
                .await
                .map_err(store_status)?;
        }
        Ok(Some(outcome))
    }

    async fn get_server(
        self: Arc<Self>,
        key: SessionKey,
        session_id: String,
        deadline: Instant,
    ) -> Result<GetServerResponse, GrpcStatus> {
        let t = self
            .store
            .get_server(&key, &session_id, deadline)
            .await
            .map_err(store_status)?;
        let name = pod_name(&key.user_id, &key.repo_hash);
        match &t.outcome {
            GetServerOutcome::Bounced { previous_session } => tracing::info!(
                user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                previous_session = %previous_session, "session bounced: taking over the row"),
            outcome => tracing::debug!(
                user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                ?outcome, "GetServer committed"),
        }

        // Fast path: READY row whose pod the reflector sees alive for this session.
        if t.row.status == Status::Ready {
            if let Some(pod) = self.cached_pod(&name) {
                let v = view::view(&pod);
                if v.session_id.as_deref() == Some(session_id.as_str())
                    && matches!(v.health, PodHealth::Ready | PodHealth::Starting)
                {
                    return Ok(GetServerResponse {
                        server: Some(self.server(&key, &t.row, Some(&pod))),
                    });
                }
            }
        }

        // Make the cluster match, in a task that finishes even if this request does not.
        let worker = {
            let this = self.clone();
            let key = key.clone();
            let session_id = session_id.clone();
            // The pod work may outlive the request (a bounce waits for the old pod's grace
            // period); give it room, the response does not wait for it past `deadline`.
            let work_deadline = deadline.max(Instant::now() + Duration::from_secs(120));
            tokio::spawn(async move { this.converge(&key, &session_id, work_deadline).await })
        };
        let pod = match tokio::time::timeout_at(deadline, worker).await {
            Ok(Ok(Ok(outcome))) => outcome.map(|o| o.pod().clone()),
            Ok(Ok(Err(status))) => return Err(status),
            Ok(Err(join)) => {
                return Err(GrpcStatus::internal(format!(
                    "pod task for {name} failed: {join}"
                )))
            }
            Err(_) => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %session_id, pod = %name,
                    "pod not settled by the request deadline; answering PENDING, the work goes on");
                None
            }
        };
        // The row as it is now (the pod step may have demoted a READY row whose pod was gone).
        let row = match self.store.read(&key).await.map_err(store_status)? {
            Some(row) if row.session_id == session_id => row,
            _ => t.row,
        };
        Ok(GetServerResponse {
            server: Some(self.server(&key, &row, pod.as_ref())),
        })
    }

    async fn report_ready(
        self: Arc<Self>,
        key: SessionKey,
        req: ReportReadyRequest,
        deadline: Instant,
    ) -> Result<ReportReadyResponse, GrpcStatus> {
        let decision = self
            .store
            .mark_ready(&key, &req.session_id, &req.pod_ip, deadline)
            .await
            .map_err(store_status)?;
        match decision {
            ReadyDecision::Accept { write, .. } => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %req.session_id,
                    pod = %req.pod_name, pod_ip = %req.pod_ip, command_port = req.command_port,
                    changed = write != crate::session::RowWrite::Keep, "ReportReady accepted: row READY");
                if req.command_port != 0 {
                    self.reported_ports
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key.clone(), (req.session_id.clone(), req.command_port));
                    match self
                        .pods
                        .annotate_command_port(&req.pod_name, &req.session_id, req.command_port)
                        .await
                    {
                        Ok(true) => {}
                        Ok(false) => tracing::warn!(pod = %req.pod_name, session = %req.session_id,
                            "could not record the command port: the pod is gone or another session's"),
                        Err(e) => {
                            tracing::warn!(pod = %req.pod_name, error = %e, "could not record the command port")
                        }
                    }
                }
                self.notices.send(&key, &req.session_id);
                Ok(ReportReadyResponse { accepted: true })
            }
            ReadyDecision::Reject(why) => {
                tracing::info!(user = %key.user_id, repo_hash = %key.repo_hash, session = %req.session_id,
                    pod = %req.pod_name, reason = %why, "ReportReady rejected (fenced): nothing written");
                Ok(ReportReadyResponse { accepted: false })
            }
        }
    }
}

fn store_status(e: crate::store::StoreError) -> GrpcStatus {
    tracing::warn!(error = %e, "session store error");
    GrpcStatus::new(e.code(), e.to_string())
}

fn join_status(e: tokio::task::JoinError) -> GrpcStatus {
    GrpcStatus::internal(format!("request task failed: {e}"))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, GrpcStatus>> + Send + 'static>>;

#[tonic::async_trait]
impl Orchestrator for OrchestratorService {
    async fn get_server(
        &self,
        request: Request<GetServerRequest>,
    ) -> Result<Response<GetServerResponse>, GrpcStatus> {
        let deadline = deadline_of(&request, self.inner.settings.default_deadline);
        let req = request.into_inner();
        validate(&req.user_id, &req.repo_hash, &req.session_id).map_err(invalid)?;
        let key = SessionKey::new(req.user_id, req.repo_hash);
        let inner = self.inner.clone();
        let task = tokio::spawn(inner.get_server(key, req.session_id, deadline));
        task.await.map_err(join_status)?.map(Response::new)
    }

    type WatchServerStream = EventStream;

    async fn watch_server(
        &self,
        request: Request<WatchServerRequest>,
    ) -> Result<Response<EventStream>, GrpcStatus> {
        let deadline = deadline_of(&request, self.inner.settings.watch_deadline);
        let req = request.into_inner();
        validate(&req.user_id, &req.repo_hash, &req.session_id).map_err(invalid)?;
        let key = SessionKey::new(req.user_id, req.repo_hash);
        // Subscribe before reading the row: a READY that lands in between is not missed.
        let notices = self.inner.notices.subscribe();
        let row = self.inner.store.read(&key).await.map_err(store_status)?;
        let row = match row {
            None => {
                return Err(GrpcStatus::not_found(format!(
                    "no session for {key}: call GetServer first"
                )))
            }
            Some(r) if r.session_id != req.session_id => {
                return Err(GrpcStatus::failed_precondition(format!(
                    "session {} was superseded by session {}",
                    req.session_id, r.session_id
                )))
            }
            Some(r) => r,
        };
        let (tx, rx) = mpsc::channel(16);
        let inner = self.inner.clone();
        tokio::spawn(async move {
            let watch = Watch {
                inner,
                key,
                session_id: req.session_id,
                tx,
                last: None,
            };
            watch.run(row, notices, deadline).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn report_ready(
        &self,
        request: Request<ReportReadyRequest>,
    ) -> Result<Response<ReportReadyResponse>, GrpcStatus> {
        let deadline = deadline_of(&request, self.inner.settings.default_deadline);
        let req = request.into_inner();
        validate(&req.user_id, &req.repo_hash, &req.session_id).map_err(invalid)?;
        let expected = pod_name(&req.user_id, &req.repo_hash);
        if req.pod_name != expected {
            return Err(GrpcStatus::invalid_argument(format!(
                "pod_name must be {expected} for this user and repo_hash"
            )));
        }
        if req.pod_ip.parse::<IpAddr>().is_err() {
            return Err(GrpcStatus::invalid_argument("pod_ip is not an IP address"));
        }
        if req.command_port > 65535 {
            return Err(GrpcStatus::invalid_argument(
                "command_port is not a TCP port",
            ));
        }
        let key = SessionKey::new(req.user_id.clone(), req.repo_hash.clone());
        let inner = self.inner.clone();
        let task = tokio::spawn(inner.report_ready(key, req, deadline));
        task.await.map_err(join_status)?.map(Response::new)
    }
}

/// One WatchServer stream: follows the pod (watch), its events (watch) and READY notices.
struct Watch {
    inner: Arc<Inner>,
    key: SessionKey,
    session_id: String,
    tx: mpsc::Sender<Result<ServerEvent, GrpcStatus>>,
    last: Option<(Stage, String)>,
}

enum Next {
    Continue,
    Done,
}

impl Watch {
    async fn run(
        mut self,
        row: SessionRow,
        mut notices: broadcast::Receiver<crate::notify::ReadyNotice>,
        deadline: Instant,
    ) {
        if row.status == Status::Ready {
            let pod = self.inner.cached_pod(&self.pod_name());
            self.ready(&row, pod.as_deref()).await;
            return;
        }
        let name = self.pod_name();
        if let Next::Done = self
            .send(
                Stage::Session,
                format!(
                    "session {} is PENDING; pod {name} is being created",
                    row.session_id
                ),
                None,
            )
            .await
        {
            return;
        }
        let ns = self.inner.pods.settings().namespace.clone();
        let pods = watcher(
            Api::<Pod>::namespaced(self.inner.kube.clone(), &ns),
            watcher::Config::default().fields(&format!("metadata.name={name}")),
        )
        .default_backoff();
        let events = watcher(
            Api::<Event>::namespaced(self.inner.kube.clone(), &ns),
            watcher::Config::default().fields(&format!(
                "involvedObject.kind=Pod,involvedObject.name={name}"
            )),
        )
        .default_backoff();
        let mut pods = std::pin::pin!(pods);
        let mut events = std::pin::pin!(events);
        let mut current_uid: Option<String> = None;
        loop {
            let next = tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {
                    let _ = self.tx.send(Err(GrpcStatus::deadline_exceeded(format!(
                        "{name} not ready before the deadline")))).await;
                    Next::Done
                }
                _ = self.tx.closed() => Next::Done,
                notice = notices.recv() => match notice {
                    Ok(n) if n.key != self.key || n.session_id != self.session_id => Next::Continue,
                    // Ours, or we lagged behind: look at the row.
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => self.check_row().await,
                    Err(broadcast::error::RecvError::Closed) => Next::Done,
                },
                ev = pods.next() => match ev {
                    Some(Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod))) => {
                        current_uid = pod.metadata.uid.clone();
                        self.on_pod(&pod).await
                    }
                    Some(Ok(watcher::Event::Delete(_))) => {
                        current_uid = None;
                        self.send(Stage::PodPending, format!("{name} was deleted; waiting for a new pod"), None).await
                    }
                    Some(Ok(_)) => Next::Continue,
                    Some(Err(e)) => {
                        tracing::warn!(pod = %name, error = %e, "WatchServer pod watch error (retrying)");
                        Next::Continue
                    }
                    None => Next::Done,
                },
                ev = events.next() => match ev {
                    Some(Ok(watcher::Event::Apply(e) | watcher::Event::InitApply(e))) => {
                        self.on_event(&e, current_uid.as_deref()).await
                    }
                    Some(Ok(_)) => Next::Continue,
                    Some(Err(e)) => {
                        tracing::debug!(pod = %name, error = %e, "WatchServer event watch error (retrying)");
                        Next::Continue
                    }
                    None => Next::Continue,
                },
            };
            if let Next::Done = next {
                return;
            }
        }
    }

    fn pod_name(&self) -> String {
        pod_name(&self.key.user_id, &self.key.repo_hash)
    }

    async fn send(&mut self, stage: Stage, message: String, pod: Option<&Pod>) -> Next {
        if self.last.as_ref() == Some(&(stage, message.clone())) {
            return Next::Continue;
        }
        self.last = Some((stage, message.clone()));
        let row = SessionRow::pending(&self.session_id);
        let event = ServerEvent {
            stage: stage as i32,
            message,
            reason: String::new(),
            server: Some(self.inner.server(&self.key, &row, pod)),
        };
        match self.tx.send(Ok(event)).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Done,
        }
    }

    async fn fail(&mut self, reason: String, message: String, pod: Option<&Pod>) -> Next {
        tracing::info!(user = %self.key.user_id, repo_hash = %self.key.repo_hash, session = %self.session_id,
            pod = %self.pod_name(), %reason, %message, "spawn failed");
        let row = SessionRow::pending(&self.session_id);
        let event = ServerEvent {
            stage: Stage::Failed as i32,
            message: message.clone(),
            reason: reason.clone(),
            server: Some(self.inner.server(&self.key, &row, pod)),
        };
        if self.tx.send(Ok(event)).await.is_ok() {
            let _ = self
                .tx
                .send(Err(GrpcStatus::failed_precondition(format!(
                    "{reason}: {message}"
                ))))
                .await;
        }
        Next::Done
    }

    async fn ready(&mut self, row: &SessionRow, pod: Option<&Pod>) {
        let event = ServerEvent {
            stage: Stage::Ready as i32,
            message: format!(
                "Bazel server ready at {}",
                row.pod_ip.as_deref().unwrap_or("?")
            ),
            reason: String::new(),
            server: Some(self.inner.server(&self.key, row, pod)),
        };
        let _ = self.tx.send(Ok(event)).await;
    }

    async fn check_row(&mut self) -> Next {
        match self.inner.store.read(&self.key).await {
            Ok(Some(row)) if row.session_id != self.session_id => {
                let _ = self
                    .tx
                    .send(Err(GrpcStatus::failed_precondition(format!(
                        "session {} was superseded by session {}",
                        self.session_id, row.session_id
                    ))))
                    .await;
                Next::Done
            }
            Ok(Some(row)) if row.status == Status::Ready => {
                let pod = self.inner.cached_pod(&self.pod_name());
                self.ready(&row, pod.as_deref()).await;
                Next::Done
            }
            Ok(_) => Next::Continue,
            Err(e) => {
                tracing::warn!(error = %e, "WatchServer could not read the row (will retry on the next event)");
                Next::Continue
            }
        }
    }

    async fn on_pod(&mut self, pod: &Pod) -> Next {
        if view::session_of(pod) != Some(self.session_id.as_str()) {
            // The previous session's pod is still there (a bounce) or the row moved on.
            if let Next::Done = self.check_row().await {
                return Next::Done;
            }
            return self
                .send(
                    Stage::PodPending,
                    format!(
                        "waiting for the previous session's pod {} to stop",
                        self.pod_name()
                    ),
                    Some(pod),
                )
                .await;
        }
        match view::progress(pod) {
            Progress::Failed { reason, message } => self.fail(reason, message, Some(pod)).await,
            Progress::Stage { stage, message } => {
                if view::view(pod).health == PodHealth::Ready {
                    // The reconciler marks the row READY from the probe; look now anyway.
                    if let Next::Done = self.check_row().await {
                        return Next::Done;
                    }
                }
                self.send(stage, message, Some(pod)).await
            }
        }
    }

    async fn on_event(&mut self, event: &Event, current_uid: Option<&str>) -> Next {
        // Events outlive pods: only those of the current pod count.
        if current_uid.is_none() || event.involved_object.uid.as_deref() != current_uid {
            return Next::Continue;
        }
        if let Some(Progress::Failed { reason, message }) = view::event_failure(event) {
            return self.fail(reason, message, None).await;
        }
        if view::expected_while_starting(event) {
            return Next::Continue;
        }
        let stage = self.last.as_ref().map_or(Stage::PodPending, |(s, _)| *s);
        let text = format!(
            "{}: {}",
            event.reason.as_deref().unwrap_or("Event"),
            event.message.as_deref().unwrap_or("")
        );
        self.send(stage, text, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts() {
        let cases = [
            ("1S", Some(Duration::from_secs(1))),
            ("250m", Some(Duration::from_millis(250))),
            ("2M", Some(Duration::from_secs(120))),
            ("1H", Some(Duration::from_secs(3600))),
            ("99999999u", Some(Duration::from_micros(99_999_999))),
            ("5n", Some(Duration::from_nanos(5))),
            ("", None),
            ("S", None),
            ("1x", None),
            ("-1S", None),
            ("123456789S", None),
        ];
        for (v, expected) in cases {
            assert_eq!(parse_grpc_timeout(v), expected, "{v:?}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let ok_hash = "0123456789abcdef0123456789abcdef";
        assert!(validate("alice", ok_hash, "s1").is_ok());
        assert_eq!(
            validate("Alice", ok_hash, "s1").unwrap_err().field,
            "user_id"
        );
        assert_eq!(
            validate("alice", "nothex", "s1").unwrap_err().field,
            "repo_hash"
        );
        assert_eq!(
            validate("alice", ok_hash, "").unwrap_err().field,
            "session_id"
        );
    }
}
