//! Asking the orchestrator for the user's Bazel server (GetServer), and following its spawn
//! (WatchServer) until READY, with progress, within a deadline.
//!
//! Decisions are pure ([`step`], [`location`]); [`await_ready`] is the gRPC edge.

use crate::progress::{Progress, TICK};
use proto::names::{RepoHash, SessionId, UserId};
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{
    GetServerRequest, Server, ServerEvent, ServerStatus, Stage, WatchServerRequest,
};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint};

/// The identity of one build session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    pub user_id: UserId,
    pub repo_hash: RepoHash,
    pub session_id: SessionId,
}

/// Where a READY server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLocation {
    pub pod_name: String,
    pub namespace: String,
    pub pod_ip: String,
    pub command_port: u16,
}

/// Why no server could be had.
#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    /// The address is not a URL tonic accepts.
    #[error("invalid orchestrator address {addr:?}")]
    BadAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// No connection to the orchestrator.
    #[error("cannot reach the orchestrator at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    /// GetServer failed.
    #[error("orchestrator refused GetServer (user {user}, repo {repo_hash}): {}: {}", status.code(), status.message())]
    GetServer {
        user: UserId,
        repo_hash: RepoHash,
        status: tonic::Status,
    },
    /// WatchServer failed (the orchestrator's reason for a failed spawn is in the status).
    #[error("server spawn failed: {}: {}", status.code(), status.message())]
    Watch { status: tonic::Status },
    /// The orchestrator reported STAGE_FAILED.
    #[error("server spawn failed: {reason}{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    Failed { reason: String, message: String },
    /// The watch ended before READY.
    #[error(
        "the orchestrator ended the watch before the server was ready (last stage: {last_stage})"
    )]
    EndedEarly { last_stage: String },
    /// The deadline passed.
    #[error("no server after {secs}s (last stage: {last_stage}); raise JBAZEL_DEADLINE_SECS or check the pod")]
    Deadline { secs: u64, last_stage: String },
    /// READY without a usable location.
    #[error("the orchestrator said READY but gave no usable server location: {what}")]
    Incomplete { what: &'static str },
}

/// What an event means for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Keep waiting; show this stage.
    Wait { stage: &'static str },
    /// The server is ready.
    Ready(Option<Server>),
    /// The spawn failed.
    Failed { reason: String, message: String },
}

/// A person's name for a stage.
pub fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Unspecified => "waiting",
        Stage::Session => "session recorded",
        Stage::PodPending => "pod pending",
        Stage::PodScheduled => "pod scheduled, creating container",
        Stage::ContainerRunning => "starting Bazel server",
        Stage::Ready => "ready",
        Stage::Failed => "failed",
    }
}

/// The meaning of one WatchServer event.
pub fn step(ev: &ServerEvent) -> Step {
    let stage = Stage::try_from(ev.stage).unwrap_or(Stage::Unspecified);
    match stage {
        Stage::Ready => Step::Ready(ev.server.clone()),
        Stage::Failed => Step::Failed {
            reason: if ev.reason.is_empty() {
                "unknown reason".to_string()
            } else {
                ev.reason.clone()
            },
            message: ev.message.clone(),
        },
        s => Step::Wait {
            stage: stage_label(s),
        },
    }
}

/// The location of a READY server (`fallback` fills fields an event leaves empty).
pub fn location(
    server: Option<&Server>,
    fallback: Option<&Server>,
) -> Result<ServerLocation, OrchestratorError> {
    let pick = |f: fn(&Server) -> String| {
        server
            .map(f)
            .filter(|s| !s.is_empty())
            .or_else(|| fallback.map(f).filter(|s| !s.is_empty()))
            .unwrap_or_default()
    };
    let pod_name = pick(|s| s.pod_name.clone());
    let namespace = pick(|s| s.namespace.clone());
    let pod_ip = pick(|s| s.pod_ip.clone());
    let port = server
        .map(|s| s.command_port)
        .filter(|p| *p != 0)
        .or_else(|| fallback.map(|s| s.command_port).filter(|p| *p != 0))
        .unwrap_or(0);
    if pod_name.is_empty() {
        return Err(OrchestratorError::Incomplete { what: "pod_name" });
    }
    let command_port =
        u16::try_from(port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or(OrchestratorError::Incomplete {
                what: "command_port",
            })?;
    Ok(ServerLocation {
        pod_name,
        namespace: if namespace.is_empty() {
            "jbazel".to_string()
        } else {
            namespace
        },
        pod_ip,
        command_port,
    })
}

/// Connects to the orchestrator (gRPC, plain HTTP/2).
pub async fn connect(addr: &str) -> Result<OrchestratorClient<Channel>, OrchestratorError> {
    let ep = Endpoint::from_shared(addr.to_string())
        .map_err(|source| OrchestratorError::BadAddress {
            addr: addr.to_string(),
            source,
        })?
        .connect_timeout(Duration::from_secs(5));
    let ch = ep
        .connect()
        .await
        .map_err(|source| OrchestratorError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    Ok(OrchestratorClient::new(ch))
}

/// GetServer, then WatchServer until READY, within `deadline`.
pub async fn await_ready(
    client: &mut OrchestratorClient<Channel>,
    ids: &Ids,
    deadline: Duration,
    progress: &mut dyn Progress,
) -> Result<ServerLocation, OrchestratorError> {
    let mut last_stage = String::from("GetServer");
    let result =
        tokio::time::timeout(deadline, follow(client, ids, progress, &mut last_stage)).await;
    progress.finish();
    match result {
        Ok(r) => r,
        Err(_) => Err(OrchestratorError::Deadline {
            secs: deadline.as_secs(),
            last_stage,
        }),
    }
}

async fn follow(
    client: &mut OrchestratorClient<Channel>,
    ids: &Ids,
    progress: &mut dyn Progress,
    last_stage: &mut String,
) -> Result<ServerLocation, OrchestratorError> {
    let got = client
        .get_server(GetServerRequest {
            user_id: ids.user_id.to_string(),
            repo_hash: ids.repo_hash.to_string(),
            session_id: ids.session_id.to_string(),
        })
        .await
        .map_err(|status| OrchestratorError::GetServer {
            user: ids.user_id.clone(),
            repo_hash: ids.repo_hash.clone(),
            status,
        })?
        .into_inner()
        .server;
    tracing::debug!(user = %ids.user_id, repo_hash = %ids.repo_hash, session = %ids.session_id, server = ?got, "GetServer");
    if let Some(s) = &got {
        if s.status == ServerStatus::Ready as i32 {
            return location(Some(s), None);
        }
    }
    *last_stage = stage_label(Stage::Session).to_string();
    progress.stage(last_stage, "");
    let mut stream = client
        .watch_server(WatchServerRequest {
            user_id: ids.user_id.to_string(),
            repo_hash: ids.repo_hash.to_string(),
            session_id: ids.session_id.to_string(),
        })
        .await
        .map_err(|status| OrchestratorError::Watch { status })?
        .into_inner();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            ev = stream.message() => {
                let ev = ev.map_err(|status| OrchestratorError::Watch { status })?;
                let Some(ev) = ev else {
                    return Err(OrchestratorError::EndedEarly { last_stage: last_stage.clone() });
                };
                tracing::debug!(stage = ev.stage, message = %ev.message, reason = %ev.reason, "WatchServer event");
                match step(&ev) {
                    Step::Wait { stage } => {
                        *last_stage = stage.to_string();
                        progress.stage(stage, &ev.message);
                    }
                    Step::Ready(server) => return location(server.as_ref(), got.as_ref()),
                    Step::Failed { reason, message } => {
                        return Err(OrchestratorError::Failed { reason, message })
                    }
                }
            }
            _ = ticker.tick() => progress.tick(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Silent;
    use proto::orchestrator::orchestrator_server::{Orchestrator, OrchestratorServer};
    use proto::orchestrator::{GetServerResponse, ReportReadyRequest, ReportReadyResponse};
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use tokio_stream::Stream;
    use tonic::{Request, Response, Status};

    fn server(status: ServerStatus, ip: &str) -> Server {
        Server {
            user_id: "alice".into(),
            repo_hash: "0123456789abcdef0123456789abcdef".into(),
            session_id: "s1".into(),
            status: status as i32,
            pod_name: "bazel-server-alice-01234567".into(),
            namespace: "jbazel".into(),
            pod_ip: ip.into(),
            command_port: 9001,
        }
    }

    fn ev(stage: Stage, reason: &str, srv: Option<Server>) -> ServerEvent {
        ServerEvent {
            stage: stage as i32,
            message: format!("{stage:?}"),
            reason: reason.into(),
            server: srv,
        }
    }

    #[test]
    fn step_table() {
        assert_eq!(
            step(&ev(Stage::PodPending, "", None)),
            Step::Wait {
                stage: "pod pending"
            }
        );
        assert_eq!(
            step(&ev(Stage::ContainerRunning, "", None)),
            Step::Wait {
                stage: "starting Bazel server"
            }
        );
        assert_eq!(
            step(&ServerEvent {
                stage: 99,
                ..Default::default()
            }),
            Step::Wait { stage: "waiting" }
        );
        assert!(matches!(
            step(&ev(Stage::Ready, "", None)),
            Step::Ready(None)
        ));
        assert_eq!(
            step(&ev(Stage::Failed, "ErrImageNeverPull", None)),
            Step::Failed {
                reason: "ErrImageNeverPull".into(),
                message: "Failed".into()
            }
        );
        assert!(
            matches!(step(&ev(Stage::Failed, "", None)), Step::Failed { reason, .. } if reason == "unknown reason")
        );
    }

    #[test]
    fn location_table() {
        let full = server(ServerStatus::Ready, "10.244.0.5");
        let loc = location(Some(&full), None).expect("loc");
        assert_eq!(loc.command_port, 9001);
        assert_eq!(loc.pod_ip, "10.244.0.5");
        // Fields missing in the event come from GetServer's answer.
        let sparse = Server {
            pod_name: String::new(),
            command_port: 0,
            ..full.clone()
        };
        assert_eq!(
            location(Some(&sparse), Some(&full)).expect("loc").pod_name,
            full.pod_name
        );
        assert!(matches!(
            location(Some(&sparse), None),
            Err(OrchestratorError::Incomplete { what: "pod_name" })
        ));
        let big = Server {
            command_port: 70000,
            ..full.clone()
        };
        assert!(matches!(
            location(Some(&big), None),
            Err(OrchestratorError::Incomplete {
                what: "command_port"
            })
        ));
        let no_ns = Server {
            namespace: String::new(),
            ..full
        };
        assert_eq!(
            location(Some(&no_ns), None).expect("loc").namespace,
            "jbazel"
        );
    }

    /// The fake: answers GetServer with `get`, then streams `events` and then, if `hang`,
    /// keeps the stream open forever (else ends it or fails with `end_status`).
    #[derive(Clone)]
    struct Fake {
        get: Result<Server, Status>,
        events: Vec<ServerEvent>,
        end_status: Option<Status>,
        hang: bool,
        watch_calls: Arc<Mutex<usize>>,
    }

    type EventStream = Pin<Box<dyn Stream<Item = Result<ServerEvent, Status>> + Send>>;

    #[tonic::async_trait]
    impl Orchestrator for Fake {
        async fn get_server(
            &self,
            req: Request<proto::orchestrator::GetServerRequest>,
        ) -> Result<Response<GetServerResponse>, Status> {
            assert_eq!(req.get_ref().user_id, "alice");
            assert_eq!(req.get_ref().session_id, "s1");
            self.get
                .clone()
                .map(|s| Response::new(GetServerResponse { server: Some(s) }))
        }
        type WatchServerStream = EventStream;
        async fn watch_server(
            &self,
            _req: Request<proto::orchestrator::WatchServerRequest>,
        ) -> Result<Response<EventStream>, Status> {
            *self
                .watch_calls
                .lock()
                .map_err(|_| Status::internal("lock"))? += 1;
            let mut items: Vec<Result<ServerEvent, Status>> =
                self.events.iter().cloned().map(Ok).collect();
            if let Some(s) = &self.end_status {
                items.push(Err(s.clone()));
            }
            let s = tokio_stream::iter(items);
            if self.hang {
                Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(
                    s,
                    tokio_stream::pending(),
                ))))
            } else {
                Ok(Response::new(Box::pin(s)))
            }
        }
        async fn report_ready(
            &self,
            _req: Request<ReportReadyRequest>,
        ) -> Result<Response<ReportReadyResponse>, Status> {
            Err(Status::unimplemented("not for jbazel"))
        }
    }

    async fn serve(fake: Fake) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OrchestratorServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        format!("http://{addr}")
    }

    fn ids() -> Ids {
        Ids {
            user_id: "alice".parse().expect("valid user"),
            repo_hash: "0123456789abcdef0123456789abcdef"
                .parse()
                .expect("valid hash"),
            session_id: "s1".parse().expect("valid session"),
        }
    }

    fn fake(get: Result<Server, Status>, events: Vec<ServerEvent>) -> Fake {
        Fake {
            get,
            events,
            end_status: None,
            hang: false,
            watch_calls: Arc::new(Mutex::new(0)),
        }
    }

    async fn run(f: Fake, deadline: Duration) -> Result<ServerLocation, OrchestratorError> {
        let addr = serve(f).await;
        let mut c = connect(&addr).await.expect("connect");
        await_ready(&mut c, &ids(), deadline, &mut Silent).await
    }

    const LONG: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn ready_at_once_needs_no_watch() {
        let f = fake(Ok(server(ServerStatus::Ready, "10.244.0.9")), vec![]);
        let calls = f.watch_calls.clone();
        let loc = run(f, LONG).await.expect("ready");
        assert_eq!(loc.pod_ip, "10.244.0.9");
        assert_eq!(*calls.lock().expect("lock"), 0);
    }

    #[tokio::test]
    async fn pending_then_ready_follows_the_watch() {
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![
                ev(Stage::PodPending, "", None),
                ev(Stage::PodScheduled, "", None),
                ev(Stage::ContainerRunning, "", None),
                ev(
                    Stage::Ready,
                    "",
                    Some(server(ServerStatus::Ready, "10.244.0.7")),
                ),
            ],
        );
        let loc = run(f, LONG).await.expect("ready");
        assert_eq!(loc.pod_ip, "10.244.0.7");
        assert_eq!(loc.pod_name, "bazel-server-alice-01234567");
    }

    #[tokio::test]
    async fn failed_stage_gives_the_reason() {
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![
                ev(Stage::PodScheduled, "", None),
                ev(Stage::Failed, "ErrImageNeverPull", None),
            ],
        );
        let err = run(f, LONG).await.expect_err("failed");
        assert!(err.to_string().contains("ErrImageNeverPull"), "{err}");
    }

    #[tokio::test]
    async fn watch_error_status_gives_the_reason() {
        let mut f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![ev(Stage::PodPending, "", None)],
        );
        f.end_status = Some(Status::failed_precondition(
            "CrashLoopBackOff: supervisor exited 1",
        ));
        let err = run(f, LONG).await.expect_err("failed");
        assert!(err.to_string().contains("CrashLoopBackOff"), "{err}");
    }

    #[tokio::test]
    async fn get_server_refusal_is_reported() {
        let f = fake(Err(Status::invalid_argument("invalid user_id")), vec![]);
        let err = run(f, LONG).await.expect_err("refused");
        assert!(err.to_string().contains("invalid user_id"), "{err}");
    }

    #[tokio::test]
    async fn ended_watch_is_an_error() {
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![ev(Stage::PodPending, "", None)],
        );
        let err = run(f, LONG).await.expect_err("ended");
        assert!(
            matches!(err, OrchestratorError::EndedEarly { ref last_stage } if last_stage == "pod pending"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn deadline_is_honoured() {
        let mut f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![ev(Stage::ContainerRunning, "", None)],
        );
        f.hang = true;
        let t = std::time::Instant::now();
        let err = run(f, Duration::from_millis(300))
            .await
            .expect_err("deadline");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            matches!(err, OrchestratorError::Deadline { ref last_stage, .. } if last_stage == "starting Bazel server"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_orchestrator_is_a_clear_error() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = format!("http://{}", l.local_addr().expect("addr"));
        drop(l);
        let err = connect(&addr).await.expect_err("unreachable");
        assert!(
            err.to_string().contains("cannot reach the orchestrator"),
            "{err}"
        );
    }
}
