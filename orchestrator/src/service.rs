//! The tonic edge of the orchestrator API (`proto::orchestrator`): GetServer,
//! WatchServer, ReportReady.
//!
//! Every handler parses its names with `proto::names` FIRST: a bad UserId, RepoHash or
//! SessionId is InvalidArgument and nothing is read, written, created or deleted. Then it
//! takes the request's deadline and hands over to the [`Engine`], whose work runs in
//! spawned tasks, so a client that goes away (or a deadline that passes) never leaves a
//! transaction or a pod creation half done. Engine errors become statuses here.

use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use proto::error_chain::ErrorChain;
use proto::names::{parse_request_names, InvalidName, UserId};
use proto::orchestrator::orchestrator_server::Orchestrator;
use proto::orchestrator::{
    GetServerRequest, GetServerResponse, ReportReadyRequest, ReportReadyResponse, ServerEvent,
    WatchServerRequest,
};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Request, Response, Status as GrpcStatus};

use crate::auth::{AuthError, Authenticator, Presented};
use crate::engine::{Engine, EngineError, Pods, Report, SessionStore};
use crate::pods::manifest::{generation_in_name, user_namespace};
use crate::session::{Fence, SessionKey};

/// Handler settings: deadlines, and the command port the engine falls back to.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Deadline of a request that carries no `grpc-timeout`.
    pub default_deadline: Duration,
    /// Longest a WatchServer stream lives without a `grpc-timeout`.
    pub watch_deadline: Duration,
    /// The longest any request may run, whatever its `grpc-timeout` asks.
    pub max_deadline: Duration,
    /// Bazel's command port when a pod has not reported one.
    pub default_command_port: u32,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            default_deadline: Duration::from_secs(30),
            watch_deadline: Duration::from_secs(600),
            max_deadline: Duration::from_secs(600),
            default_command_port: 9001,
        }
    }
}

/// The orchestrator's request handlers over an engine.
pub struct OrchestratorService<S, P> {
    engine: Arc<Engine<S, P>>,
    auth: Arc<Authenticator>,
    settings: ServiceSettings,
}

impl<S, P> OrchestratorService<S, P> {
    pub fn new(
        engine: Arc<Engine<S, P>>,
        auth: Arc<Authenticator>,
        settings: ServiceSettings,
    ) -> Self {
        OrchestratorService {
            engine,
            auth,
            settings,
        }
    }

    /// The caller must be the request's user: the verified identity decides, the request
    /// only names. Checked after the names parse and before anything is read.
    async fn authorize_user<T>(
        &self,
        request: &Request<T>,
        user_id: &UserId,
    ) -> Result<(), GrpcStatus> {
        let caller = self
            .auth
            .user(Presented::of(request))
            .await
            .map_err(|e| refused(&e))?;
        if &caller != user_id {
            let e = AuthError::Forbidden(format!(
                "authenticated as {caller}: the request is for user {user_id}"
            ));
            return Err(refused(&e));
        }
        Ok(())
    }
}

/// A refusal, logged (who was refused is what an operator looks for).
fn refused(e: &AuthError) -> GrpcStatus {
    tracing::info!(error = %ErrorChain(e), "request refused");
    e.status()
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

fn deadline_of<T>(request: &Request<T>, default: Duration, max: Duration) -> Instant {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout);
    Instant::now() + capped_timeout(timeout, default, max)
}

/// The request's timeout: the caller's `grpc-timeout`, else the default, never more than
/// the server's cap (a caller cannot hold a task, a watch or a pod wait for days), less a
/// margin (a tenth, at most 500 ms) so that an error answer (Spanner unreachable, pod not
/// ready) reaches the caller before it gives up on its own.
pub fn capped_timeout(asked: Option<Duration>, default: Duration, max: Duration) -> Duration {
    let t = asked.unwrap_or(default).min(max);
    t.saturating_sub((t / 10).min(Duration::from_millis(500)))
}

/// The status a caller sees for an engine error: its code, and the whole chain as text.
pub fn status_of(e: &EngineError) -> GrpcStatus {
    let code = match e {
        EngineError::Store(s) => s.code(),
        EngineError::Pods { .. } => Code::Unavailable,
        EngineError::Task { .. } => Code::Internal,
        EngineError::NoSession { .. } => Code::NotFound,
        EngineError::Superseded { .. } | EngineError::SpawnFailed { .. } => {
            Code::FailedPrecondition
        }
        EngineError::NotReady { .. } => Code::DeadlineExceeded,
    };
    if matches!(code, Code::Unavailable | Code::Internal) {
        tracing::warn!(error = %ErrorChain(e), "request failed");
    }
    GrpcStatus::new(code, ErrorChain(e).to_string())
}

fn join_status(e: tokio::task::JoinError) -> GrpcStatus {
    GrpcStatus::internal(format!("request task failed: {}", ErrorChain(&e)))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, GrpcStatus>> + Send + 'static>>;

#[tonic::async_trait]
impl<S: SessionStore, P: Pods> Orchestrator for OrchestratorService<S, P> {
    async fn get_server(
        &self,
        request: Request<GetServerRequest>,
    ) -> Result<Response<GetServerResponse>, GrpcStatus> {
        let deadline = deadline_of(
            &request,
            self.settings.default_deadline,
            self.settings.max_deadline,
        );
        let (user_id, repo_hash, session_id) = {
            let req = request.get_ref();
            parse_request_names(&req.user_id, &req.repo_hash, &req.session_id).map_err(invalid)?
        };
        self.authorize_user(&request, &user_id).await?;
        let key = SessionKey::new(user_id, repo_hash);
        let task = tokio::spawn(self.engine.clone().get_server(key, session_id, deadline));
        let server = task
            .await
            .map_err(join_status)?
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(GetServerResponse {
            server: Some(server),
        }))
    }

    type WatchServerStream = EventStream;

    async fn watch_server(
        &self,
        request: Request<WatchServerRequest>,
    ) -> Result<Response<EventStream>, GrpcStatus> {
        let deadline = deadline_of(
            &request,
            self.settings.watch_deadline,
            self.settings.max_deadline,
        );
        let (user_id, repo_hash, session_id) = {
            let req = request.get_ref();
            parse_request_names(&req.user_id, &req.repo_hash, &req.session_id).map_err(invalid)?
        };
        self.authorize_user(&request, &user_id).await?;
        let key = SessionKey::new(user_id, repo_hash);
        let events = self
            .engine
            .clone()
            .watch_server(key, session_id, deadline)
            .await
            .map_err(|e| status_of(&e))?;
        let stream = ReceiverStream::new(events).map(|item| item.map_err(|e| status_of(&e)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn report_ready(
        &self,
        request: Request<ReportReadyRequest>,
    ) -> Result<Response<ReportReadyResponse>, GrpcStatus> {
        let deadline = deadline_of(
            &request,
            self.settings.default_deadline,
            self.settings.max_deadline,
        );
        let presented = Presented::of(&request);
        let req = request.into_inner();
        let (user_id, repo_hash, session_id) =
            parse_request_names(&req.user_id, &req.repo_hash, &req.session_id).map_err(invalid)?;
        let Some(generation) = generation_in_name(&user_id, &repo_hash, &req.pod_name) else {
            return Err(GrpcStatus::invalid_argument(
                "pod_name is not a pod name of this user and repo_hash",
            ));
        };
        if req.pod_ip.parse::<IpAddr>().is_err() {
            return Err(GrpcStatus::invalid_argument("pod_ip is not an IP address"));
        }
        if req.command_port > 65535 {
            return Err(GrpcStatus::invalid_argument(
                "command_port is not a TCP port",
            ));
        }
        // Only the pod itself may report: its bound token names it, and the report must be
        // about that very pod (name here, uid against the API server in the engine).
        let pod = self.auth.pod(presented).await.map_err(|e| refused(&e))?;
        let namespace = user_namespace(self.engine.platform_namespace(), &user_id);
        if pod.service_account != crate::auth::SERVER_SERVICE_ACCOUNT
            || pod.namespace != namespace
            || pod.pod_name != req.pod_name
        {
            return Err(refused(&AuthError::Forbidden(format!(
                "the token of pod {}/{} cannot report for pod {}/{}",
                pod.namespace, pod.pod_name, namespace, req.pod_name
            ))));
        }
        let key = SessionKey::new(user_id, repo_hash);
        let report = Report {
            pod_uid: Some(pod.pod_uid),
            fence: Fence {
                session_id,
                generation,
            },
            pod_name: req.pod_name,
            pod_ip: req.pod_ip,
            command_port: req.command_port,
        };
        let task = tokio::spawn(self.engine.clone().report_ready(key, report, deadline));
        let accepted = task
            .await
            .map_err(join_status)?
            .map_err(|e| status_of(&e))?;
        Ok(Response::new(ReportReadyResponse { accepted }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_capped() {
        let (d, max) = (Duration::from_secs(30), Duration::from_secs(600));
        let margin = Duration::from_millis(500);
        assert_eq!(capped_timeout(None, d, max), d - margin);
        assert_eq!(
            capped_timeout(Some(Duration::from_secs(2)), d, max),
            Duration::from_millis(1800),
            "a tenth of a short deadline"
        );
        assert_eq!(
            capped_timeout(parse_grpc_timeout("99999999H"), d, max),
            max - margin,
            "a caller cannot ask for years"
        );
    }

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
    fn engine_errors_map_to_codes_and_print_their_chain() {
        let sid = proto::names::SessionId::parse("s1").expect("valid");
        let s = status_of(&EngineError::Superseded { session_id: sid });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "session s1 was superseded by a newer session");
        let s = status_of(&EngineError::NotReady { pod: "p".into() });
        assert_eq!(s.code(), Code::DeadlineExceeded);
        let s = status_of(&EngineError::SpawnFailed {
            reason: "ErrImageNeverPull".into(),
            message: "no image".into(),
        });
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(s.message(), "ErrImageNeverPull: no image");
    }
}
