//! Asking the orchestrator for the user's Bazel server (GetServer), and following its spawn
//! (WatchServer) until READY, with progress, within a deadline, riding through an
//! orchestrator restart.
//!
//! - Progress: the wait begins quietly ("asking the orchestrator"), each stage is shown as
//!   it comes, and the display is ticked every [`TICK`] all along (GetServer, the watch,
//!   a reconnection pause), so the user is never left without news (see [`crate::progress`]).
//! - Restarts: a transport failure or UNAVAILABLE (connection refused or reset, the watch
//!   stream breaking or ending without READY or FAILED) is retried on a new connection
//!   after a jittered exponential pause ([`BACKOFF`]: 100 ms doubling to 2 s), shown as
//!   "orchestrator unavailable: reconnecting (attempt N)", then GetServer again (idempotent
//!   for the same session) and a new watch. Anything else (PermissionDenied,
//!   InvalidArgument, FailedPrecondition such as a superseded session, STAGE_FAILED) is
//!   final. Past the deadline: [`OrchestratorError::Deadline`], with the last reason the
//!   orchestrator could not be had as its cause.
//!
//! Decisions are pure ([`step`], [`location`], [`retryable`], [`BACKOFF`]); [`await_ready`]
//! is the gRPC edge.

use crate::progress::{Progress, TICK};
use proto::backoff::{jitter, Backoff};
use proto::error_chain::ErrorChain;
use proto::names::{RepoHash, SessionId, UserId};
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{
    GetServerRequest, Server, ServerEvent, ServerStatus, Stage, WatchServerRequest,
};
use std::time::Duration;
use tokio::sync::mpsc;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::credential::Credential;

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
    /// The deadline passed; `cause` is why the orchestrator could not be had when it passed
    /// during a reconnection.
    #[error("no server after {secs}s (last stage: {last_stage}); raise JBAZEL_DEADLINE_SECS or check the pod")]
    Deadline {
        secs: u64,
        last_stage: String,
        #[source]
        cause: Option<Box<OrchestratorError>>,
    },
    /// READY without a usable location.
    #[error("the orchestrator said READY but gave no usable server location: {what}")]
    Incomplete { what: &'static str },
    #[error("the kubeconfig's token cannot be sent in a header")]
    BadToken,
    #[error("the orchestrator at {addr} refused the TLS session: check the client certificate of your kubeconfig (expired? of another cluster?) and the orchestrator's CA (JBAZEL_ORCHESTRATOR_CA)")]
    TlsRefused {
        addr: String,
        #[source]
        source: tonic::Status,
    },
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

/// What the wait shows before the orchestrator said anything (only if it lasts).
pub const ASKING: &str = "asking the orchestrator for your server";
/// The stage shown while the orchestrator cannot be reached.
pub const UNAVAILABLE: &str = "orchestrator unavailable";

/// A person's name for a stage.
pub fn stage_label(stage: Stage) -> &'static str {
    match stage {
        Stage::Unspecified => "waiting",
        Stage::Session => "session recorded",
        Stage::PreviousStopping => "stopping your previous server",
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

/// Whether a status means the orchestrator, or the way to it, is away for a moment: it
/// said UNAVAILABLE, or the status was made here from a transport error (a connection
/// refused, reset or closed mid-stream: such a status carries its cause, one the
/// orchestrator sent does not).
pub fn transient(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unavailable || std::error::Error::source(status).is_some()
}

/// Whether an error's chain says TLS refused the peer (an untrusted, expired or revoked
/// certificate on either side): waiting does not fix that, the user's kubeconfig or the
/// orchestrator's certificate must change. Only the transport's own errors count: a status
/// the orchestrator sent (it has no source; say, "no client certificate or bearer token")
/// is never a TLS refusal. Read from the text, as no type survives: h2 hands rustls' alert
/// up as a string ("received fatal alert: CertificateExpired").
pub fn tls_refused(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.downcast_ref::<tonic::Status>()
        .is_some_and(|s| std::error::Error::source(s).is_none())
    {
        return false;
    }
    let text = ErrorChain(e).to_string().to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "handshake",
        "decrypterror",
        "bad_certificate",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

/// Whether a failure is worth a new connection and GetServer again (see the module doc).
pub fn retryable(e: &OrchestratorError) -> bool {
    match e {
        OrchestratorError::Connect { source, .. } => !tls_refused(source),
        OrchestratorError::EndedEarly { .. } => true,
        OrchestratorError::GetServer { status, .. } | OrchestratorError::Watch { status } => {
            transient(status) && !tls_refused(status)
        }
        OrchestratorError::BadAddress { .. }
        | OrchestratorError::Failed { .. }
        | OrchestratorError::Deadline { .. }
        | OrchestratorError::Incomplete { .. }
        | OrchestratorError::BadToken
        | OrchestratorError::TlsRefused { .. } => false,
    }
}

/// First pause before reconnecting.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest pause before reconnecting.
pub const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// The reconnection pauses: [`BACKOFF_BASE`] doubling to [`BACKOFF_CAP`], the upper half
/// jittered (so clients cut off together do not come back together).
pub const BACKOFF: Backoff = Backoff::new(BACKOFF_BASE, BACKOFF_CAP);

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

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on the watch's connection, so an orchestrator that vanished without closing
/// it (a dead node) is noticed and reconnected to, instead of waited for until the deadline.
const KEEP_ALIVE: Duration = Duration::from_secs(10);

/// The orchestrator's endpoint: TLS for `https://` (verifying the orchestrator with the
/// credential's CA and presenting its client certificate), plain HTTP/2 for `http://`; a
/// bad address is final.
fn endpoint(addr: &str, cred: &Credential) -> Result<Endpoint, OrchestratorError> {
    let bad = |source| OrchestratorError::BadAddress {
        addr: addr.to_string(),
        source,
    };
    let mut ep = Endpoint::from_shared(addr.to_string()).map_err(bad)?;
    if addr.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &cred.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &cred.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        ep = ep.tls_config(tls).map_err(bad)?;
    }
    Ok(ep
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEP_ALIVE)
        .keep_alive_timeout(KEEP_ALIVE)
        .keep_alive_while_idle(true))
}

/// The orchestrator: its address as given, its endpoint, and the bearer token to present
/// (when the credential is a token rather than a certificate).
struct Orchestrator<'a> {
    addr: &'a str,
    ep: Endpoint,
    bearer: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Orchestrator<'_> {
    /// `message` as a request carrying the credential.
    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(message);
        if let Some(b) = &self.bearer {
            r.metadata_mut().insert("authorization", b.clone());
        }
        r
    }
}

/// Connects to the orchestrator once.
async fn connect(t: &Orchestrator<'_>) -> Result<OrchestratorClient<Channel>, OrchestratorError> {
    let ch =
        t.ep.connect()
            .await
            .map_err(|source| OrchestratorError::Connect {
                addr: t.addr.to_string(),
                source,
            })?;
    Ok(OrchestratorClient::new(ch))
}

/// What the work tells the display.
enum Note {
    /// A stage from the orchestrator (or the first one after GetServer).
    Stage { stage: String, message: String },
    /// Reconnection `attempt` comes after a pause; `error` is why.
    Retry {
        attempt: u32,
        error: OrchestratorError,
    },
}

/// What the display was last told, for the deadline's error.
struct Told {
    last_stage: String,
    /// Why the orchestrator cannot be had, while reconnecting.
    cause: Option<OrchestratorError>,
}

impl Told {
    fn apply(&mut self, note: Note, progress: &mut dyn Progress) {
        match note {
            Note::Stage { stage, message } => {
                progress.stage(&stage, &message);
                self.last_stage = stage;
                self.cause = None;
            }
            Note::Retry { attempt, error } => {
                let message = format!("reconnecting (attempt {attempt})");
                progress.stage(UNAVAILABLE, &message);
                self.last_stage = format!("{UNAVAILABLE}, {message}");
                self.cause = Some(error);
            }
        }
    }
}

/// GetServer, then WatchServer until READY, within `deadline`, reconnecting to the
/// orchestrator at `addr` whenever it is away (see the module doc).
pub async fn await_ready(
    addr: &str,
    cred: &Credential,
    ids: &Ids,
    deadline: Duration,
    progress: &mut dyn Progress,
) -> Result<ServerLocation, OrchestratorError> {
    let bearer = match &cred.bearer {
        Some(t) if cred.identity.is_none() => Some(
            format!("Bearer {t}")
                .parse()
                .map_err(|_| OrchestratorError::BadToken)?,
        ),
        _ => None,
    };
    let orchestrator = Orchestrator {
        addr,
        ep: endpoint(addr, cred)?,
        bearer,
    };
    progress.begin(ASKING, addr);
    let (tx, mut rx) = mpsc::unbounded_channel();
    let work = follow(&orchestrator, ids, tx);
    tokio::pin!(work);
    let stop = tokio::time::sleep(deadline);
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told = Told {
        last_stage: String::from("GetServer"),
        cause: None,
    };
    let result = loop {
        tokio::select! {
            biased;
            Some(note) = rx.recv() => told.apply(note, progress),
            r = &mut work => break r,
            _ = &mut stop => break Err(OrchestratorError::Deadline {
                secs: deadline.as_secs(),
                last_stage: std::mem::take(&mut told.last_stage),
                cause: told.cause.take().map(Box::new),
            }),
            _ = ticker.tick() => progress.tick(),
        }
    };
    // What the last poll of the work said before it ended (the plain log keeps it).
    while let Ok(note) = rx.try_recv() {
        told.apply(note, progress);
    }
    progress.finish();
    result
}

/// Attempts until one ends with something other than a retryable failure.
async fn follow(
    orchestrator: &Orchestrator<'_>,
    ids: &Ids,
    tx: mpsc::UnboundedSender<Note>,
) -> Result<ServerLocation, OrchestratorError> {
    let mut shown: Option<(String, String)> = None;
    let mut attempt = 0u32;
    loop {
        match attempt_once(orchestrator, ids, &tx, &mut shown).await {
            Err(e) if retryable(&e) => {
                attempt += 1;
                let pause = BACKOFF.pause(attempt, jitter());
                tracing::debug!(attempt, ?pause, error = %ErrorChain(&e),
                    "the orchestrator is unavailable; reconnecting");
                let _ = tx.send(Note::Retry { attempt, error: e });
                tokio::time::sleep(pause).await;
            }
            done => return done,
        }
    }
}

fn show(tx: &mpsc::UnboundedSender<Note>, stage: &str, message: &str) {
    let _ = tx.send(Note::Stage {
        stage: stage.to_string(),
        message: message.to_string(),
    });
}

/// One connection: GetServer, then the watch. `shown` is the last stage shown; after a
/// reconnection it is shown again until the new watch says more.
async fn attempt_once(
    orchestrator: &Orchestrator<'_>,
    ids: &Ids,
    tx: &mpsc::UnboundedSender<Note>,
    shown: &mut Option<(String, String)>,
) -> Result<ServerLocation, OrchestratorError> {
    let mut client = connect(orchestrator).await?;
    let got = client
        .get_server(orchestrator.request(GetServerRequest {
            user_id: ids.user_id.to_string(),
            repo_hash: ids.repo_hash.to_string(),
            session_id: ids.session_id.to_string(),
        }))
        .await
        .map_err(|status| {
            if tls_refused(&status) {
                OrchestratorError::TlsRefused {
                    addr: orchestrator.addr.to_string(),
                    source: status,
                }
            } else {
                OrchestratorError::GetServer {
                    user: ids.user_id.clone(),
                    repo_hash: ids.repo_hash.clone(),
                    status,
                }
            }
        })?
        .into_inner()
        .server;
    tracing::debug!(user = %ids.user_id, repo_hash = %ids.repo_hash, session = %ids.session_id, server = ?got, "GetServer");
    if let Some(s) = &got {
        if s.status == ServerStatus::Ready as i32 {
            return location(Some(s), None);
        }
    }
    let (stage, message) = shown
        .get_or_insert_with(|| (stage_label(Stage::Session).to_string(), String::new()))
        .clone();
    show(tx, &stage, &message);
    let mut stream = client
        .watch_server(orchestrator.request(WatchServerRequest {
            user_id: ids.user_id.to_string(),
            repo_hash: ids.repo_hash.to_string(),
            session_id: ids.session_id.to_string(),
        }))
        .await
        .map_err(|status| OrchestratorError::Watch { status })?
        .into_inner();
    loop {
        let ev = stream
            .message()
            .await
            .map_err(|status| OrchestratorError::Watch { status })?;
        let Some(ev) = ev else {
            let last_stage = shown.as_ref().map(|s| s.0.clone()).unwrap_or_default();
            return Err(OrchestratorError::EndedEarly { last_stage });
        };
        tracing::debug!(stage = ev.stage, message = %ev.message, reason = %ev.reason, "WatchServer event");
        match step(&ev) {
            Step::Wait { stage } => {
                show(tx, stage, &ev.message);
                *shown = Some((stage.to_string(), ev.message));
            }
            Step::Ready(server) => return location(server.as_ref(), got.as_ref()),
            Step::Failed { reason, message } => {
                return Err(OrchestratorError::Failed { reason, message })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{describe, Silent};
    use proto::orchestrator::orchestrator_server::{Orchestrator, OrchestratorServer};
    use proto::orchestrator::{GetServerResponse, ReportReadyRequest, ReportReadyResponse};
    use std::pin::Pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
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

    fn ready_ev(ip: &str) -> ServerEvent {
        ev(Stage::Ready, "", Some(server(ServerStatus::Ready, ip)))
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
            step(&ev(Stage::PreviousStopping, "", None)),
            Step::Wait {
                stage: "stopping your previous server"
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

    fn get_err(status: Status) -> OrchestratorError {
        OrchestratorError::GetServer {
            user: "alice".parse().expect("user"),
            repo_hash: "0123456789abcdef0123456789abcdef".parse().expect("hash"),
            status,
        }
    }

    #[test]
    fn retryable_table() {
        let reset = || {
            Status::from_error(Box::new(std::io::Error::from(
                std::io::ErrorKind::ConnectionReset,
            )))
        };
        // Away for a moment: retried.
        assert!(retryable(&get_err(Status::unavailable("spanner busy"))));
        assert!(retryable(&get_err(reset())));
        assert!(retryable(&OrchestratorError::Watch { status: reset() }));
        assert!(retryable(&OrchestratorError::Watch {
            status: Status::unavailable("")
        }));
        assert!(retryable(&OrchestratorError::EndedEarly {
            last_stage: "pod pending".into()
        }));
        // The orchestrator's answer: final.
        for status in [
            Status::permission_denied("not yours"),
            Status::invalid_argument("invalid user_id"),
            Status::failed_precondition("superseded by session s2"),
            Status::not_found("no session"),
            Status::deadline_exceeded("not ready"),
            Status::internal("bug"),
            Status::unknown("?"),
        ] {
            assert!(!retryable(&get_err(status.clone())), "{status:?}");
            assert!(!retryable(&OrchestratorError::Watch { status }));
        }
        assert!(!retryable(&OrchestratorError::Failed {
            reason: "ErrImageNeverPull".into(),
            message: String::new()
        }));
        assert!(!retryable(&OrchestratorError::Incomplete {
            what: "pod_name"
        }));
    }

    #[test]
    fn backoff_doubles_to_the_cap_with_jitter_in_the_upper_half() {
        let ms = |n| Duration::from_millis(n);
        let backoff = |attempt, jitter| BACKOFF.pause(attempt, jitter);
        assert_eq!(backoff(1, 0.0), ms(50));
        assert_eq!(backoff(1, 1.0), ms(100));
        assert_eq!(backoff(2, 1.0), ms(200));
        assert_eq!(backoff(3, 0.5), ms(300));
        assert_eq!(backoff(5, 1.0), ms(1600));
        assert_eq!(backoff(6, 1.0), ms(2000));
        assert_eq!(backoff(6, 0.0), ms(1000));
        assert_eq!(backoff(u32::MAX, 1.0), ms(2000));
        assert_eq!(backoff(0, 1.0), ms(100));
        // Out-of-range jitter stays in range.
        assert_eq!(backoff(1, 7.0), ms(100));
        assert_eq!(backoff(1, -1.0), ms(50));
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..=1.0).contains(&j), "{j}");
        }
    }

    /// One WatchServer call's script: these events, then `end_status` or the end of the
    /// stream, or (`hang`) an open stream that says nothing more.
    #[derive(Clone, Default)]
    struct Script {
        events: Vec<ServerEvent>,
        end_status: Option<Status>,
        hang: bool,
    }

    /// The fake: answers GetServer with `get` (UNAVAILABLE for the first
    /// `get_unavailable` calls); WatchServer call n plays `watches[n]` (the last one again
    /// when there are fewer).
    #[derive(Clone)]
    struct Fake {
        get: Result<Server, Status>,
        get_unavailable: usize,
        watches: Vec<Script>,
        get_calls: Arc<AtomicUsize>,
        watch_calls: Arc<AtomicUsize>,
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
            let n = self.get_calls.fetch_add(1, Ordering::SeqCst);
            if n < self.get_unavailable {
                return Err(Status::unavailable("spanner: session pool exhausted"));
            }
            self.get
                .clone()
                .map(|s| Response::new(GetServerResponse { server: Some(s) }))
        }
        type WatchServerStream = EventStream;
        async fn watch_server(
            &self,
            _req: Request<proto::orchestrator::WatchServerRequest>,
        ) -> Result<Response<EventStream>, Status> {
            let n = self.watch_calls.fetch_add(1, Ordering::SeqCst);
            let script = self
                .watches
                .get(n)
                .or(self.watches.last())
                .cloned()
                .unwrap_or_default();
            let mut items: Vec<Result<ServerEvent, Status>> =
                script.events.into_iter().map(Ok).collect();
            if let Some(s) = script.end_status {
                items.push(Err(s));
            }
            let s = tokio_stream::iter(items);
            if script.hang {
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

    fn serve_on(fake: Fake, listener: tokio::net::TcpListener) {
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(OrchestratorServer::new(fake))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
    }

    async fn serve(fake: Fake) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        serve_on(fake, listener);
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
            get_unavailable: 0,
            watches: vec![Script {
                events,
                ..Default::default()
            }],
            get_calls: Arc::new(AtomicUsize::new(0)),
            watch_calls: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn calls(c: &Arc<AtomicUsize>) -> usize {
        c.load(Ordering::SeqCst)
    }

    /// `await_ready` with the test ids and no credential (the fakes check none).
    async fn ask(
        addr: &str,
        deadline: Duration,
        progress: &mut dyn Progress,
    ) -> Result<ServerLocation, OrchestratorError> {
        await_ready(addr, &Credential::default(), &ids(), deadline, progress).await
    }

    async fn run(f: Fake, deadline: Duration) -> Result<ServerLocation, OrchestratorError> {
        let addr = serve(f).await;
        ask(&addr, deadline, &mut Silent).await
    }

    /// Records what would be shown (each stage as one described line), and lets a test
    /// wait until a line appears.
    #[derive(Clone)]
    struct Record(Arc<tokio::sync::watch::Sender<Vec<String>>>);

    impl Record {
        fn new() -> Self {
            Record(Arc::new(tokio::sync::watch::Sender::new(Vec::new())))
        }
        fn lines(&self) -> Vec<String> {
            self.0.borrow().clone()
        }
        /// Waits (up to 20 s) until a shown line contains `text`.
        async fn wait_for(&self, text: &str) {
            let mut rx = self.0.subscribe();
            let seen = tokio::time::timeout(
                Duration::from_secs(20),
                rx.wait_for(|lines| lines.iter().any(|l| l.contains(text))),
            )
            .await;
            assert!(
                matches!(seen, Ok(Ok(_))),
                "no {text:?} in {:?}",
                self.lines()
            );
        }
    }

    impl Progress for Record {
        fn begin(&mut self, stage: &str, message: &str) {
            let line = format!("(quiet) {}", describe(stage, message));
            self.0.send_modify(|v| v.push(line));
        }
        fn stage(&mut self, stage: &str, message: &str) {
            let line = describe(stage, message);
            self.0.send_modify(|v| v.push(line));
        }
        fn tick(&mut self) {}
        fn finish(&mut self) {}
    }

    /// A TCP relay to an upstream whose first `refuse` connections are accepted and closed
    /// at once, and whose relayed connections can be cut.
    struct Proxy {
        addr: String,
        accepted: Arc<AtomicUsize>,
        relays: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    }

    impl Proxy {
        async fn start(upstream: &str, refuse: usize) -> Proxy {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind proxy");
            let addr = format!("http://{}", l.local_addr().expect("addr"));
            let up = upstream.trim_start_matches("http://").to_string();
            let accepted = Arc::new(AtomicUsize::new(0));
            let relays = Arc::new(Mutex::new(Vec::new()));
            let (count, keep) = (accepted.clone(), relays.clone());
            tokio::spawn(async move {
                while let Ok((mut down, _)) = l.accept().await {
                    if count.fetch_add(1, Ordering::SeqCst) < refuse {
                        drop(down);
                        continue;
                    }
                    let up = up.clone();
                    let relay = tokio::spawn(async move {
                        if let Ok(mut upc) = tokio::net::TcpStream::connect(&up).await {
                            let _ = tokio::io::copy_bidirectional(&mut down, &mut upc).await;
                        }
                    });
                    keep.lock().expect("relays").push(relay);
                }
            });
            Proxy {
                addr,
                accepted,
                relays,
            }
        }

        /// Cuts every relayed connection (new ones still pass).
        fn cut(&self) {
            for r in self.relays.lock().expect("relays").drain(..) {
                r.abort();
            }
        }
    }

    const LONG: Duration = Duration::from_secs(20);

    #[tokio::test]
    async fn ready_at_once_needs_no_watch() {
        let f = fake(Ok(server(ServerStatus::Ready, "10.244.0.9")), vec![]);
        let watches = f.watch_calls.clone();
        let rec = Record::new();
        let addr = serve(f).await;
        let loc = ask(&addr, LONG, &mut rec.clone()).await.expect("ready");
        assert_eq!(loc.pod_ip, "10.244.0.9");
        assert_eq!(calls(&watches), 0);
        // The only status was the quiet one: a warm command prints nothing.
        assert_eq!(
            rec.lines(),
            [format!("(quiet) {ASKING}: {addr}")],
            "{:?}",
            rec.lines()
        );
    }

    #[tokio::test]
    async fn pending_then_ready_follows_the_watch() {
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![
                ServerEvent {
                    stage: Stage::PreviousStopping as i32,
                    message: "stopping your previous server (session s0)".into(),
                    ..Default::default()
                },
                ev(Stage::PodPending, "", None),
                ev(Stage::PodScheduled, "", None),
                ev(Stage::ContainerRunning, "", None),
                ready_ev("10.244.0.7"),
            ],
        );
        let rec = Record::new();
        let addr = serve(f).await;
        let loc = ask(&addr, LONG, &mut rec.clone()).await.expect("ready");
        assert_eq!(loc.pod_ip, "10.244.0.7");
        assert_eq!(loc.pod_name, "bazel-server-alice-01234567");
        assert_eq!(
            rec.lines()[1..],
            [
                "session recorded",
                "stopping your previous server (session s0)",
                "pod pending: PodPending",
                "pod scheduled, creating container: PodScheduled",
                "starting Bazel server: ContainerRunning",
            ]
        );
    }

    #[tokio::test]
    async fn failed_stage_gives_the_reason_and_is_not_retried() {
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![
                ev(Stage::PodScheduled, "", None),
                ev(Stage::Failed, "ErrImageNeverPull", None),
            ],
        );
        let (gets, watches) = (f.get_calls.clone(), f.watch_calls.clone());
        let err = run(f, LONG).await.expect_err("failed");
        assert!(err.to_string().contains("ErrImageNeverPull"), "{err}");
        assert_eq!((calls(&gets), calls(&watches)), (1, 1));
    }

    #[tokio::test]
    async fn watch_error_status_gives_the_reason_and_is_not_retried() {
        let mut f = fake(Ok(server(ServerStatus::Pending, "")), vec![]);
        f.watches[0].events = vec![ev(Stage::PodPending, "", None)];
        f.watches[0].end_status = Some(Status::failed_precondition(
            "CrashLoopBackOff: supervisor exited 1",
        ));
        let watches = f.watch_calls.clone();
        let err = run(f, LONG).await.expect_err("failed");
        assert!(err.to_string().contains("CrashLoopBackOff"), "{err}");
        assert_eq!(calls(&watches), 1);
    }

    #[tokio::test]
    async fn get_server_refusals_are_reported_not_retried() {
        for status in [
            Status::invalid_argument("invalid user_id"),
            Status::permission_denied("alice may not act for bob"),
            Status::failed_precondition("superseded by session s2"),
        ] {
            let f = fake(Err(status.clone()), vec![]);
            let gets = f.get_calls.clone();
            let err = run(f, LONG).await.expect_err("refused");
            assert!(err.to_string().contains(status.message()), "{err}");
            assert_eq!(calls(&gets), 1, "{status:?} must not be retried");
        }
    }

    #[tokio::test]
    async fn unavailable_get_server_is_retried() {
        let mut f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![ready_ev("10.244.0.3")],
        );
        f.get_unavailable = 2;
        let gets = f.get_calls.clone();
        let rec = Record::new();
        let addr = serve(f).await;
        let loc = ask(&addr, LONG, &mut rec.clone()).await.expect("ready");
        assert_eq!(loc.pod_ip, "10.244.0.3");
        assert_eq!(calls(&gets), 3);
        let lines = rec.lines();
        assert!(
            lines.contains(&"orchestrator unavailable: reconnecting (attempt 1)".to_string())
                && lines
                    .contains(&"orchestrator unavailable: reconnecting (attempt 2)".to_string()),
            "{lines:?}"
        );
    }

    #[tokio::test]
    async fn refused_until_the_orchestrator_comes_up() {
        // Nothing listens until the second reconnection is under way: connection refused.
        let port = testkit::free_port().expect("port");
        let addr = format!("http://127.0.0.1:{port}");
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![ev(Stage::PodPending, "", None), ready_ev("10.244.0.4")],
        );
        let gets = f.get_calls.clone();
        let rec = Record::new();
        let bring_up = async {
            rec.wait_for("reconnecting (attempt 2)").await;
            let l = tokio::net::TcpListener::bind(("127.0.0.1", port))
                .await
                .expect("bind the orchestrator's port");
            serve_on(f, l);
        };
        let mut shown = rec.clone();
        let (loc, ()) = tokio::join!(ask(&addr, LONG, &mut shown), bring_up);
        assert_eq!(loc.expect("ready").pod_ip, "10.244.0.4");
        assert_eq!(calls(&gets), 1, "GetServer once it was up");
    }

    #[tokio::test]
    async fn dropped_connections_are_retried_until_served() {
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![
                ev(Stage::ContainerRunning, "", None),
                ready_ev("10.244.0.5"),
            ],
        );
        let gets = f.get_calls.clone();
        let upstream = serve(f).await;
        let proxy = Proxy::start(&upstream, 3).await;
        let rec = Record::new();
        let loc = ask(&proxy.addr, LONG, &mut rec.clone())
            .await
            .expect("ready");
        assert_eq!(loc.pod_ip, "10.244.0.5");
        assert_eq!(calls(&proxy.accepted), 4, "3 dropped, then one served");
        assert_eq!(calls(&gets), 1);
        // (tonic's channel may itself redial within one attempt.)
        assert!(
            rec.lines()
                .contains(&"orchestrator unavailable: reconnecting (attempt 1)".to_string()),
            "{:?}",
            rec.lines()
        );
    }

    #[tokio::test]
    async fn a_watch_broken_mid_way_is_resumed() {
        let mut f = fake(Ok(server(ServerStatus::Pending, "")), vec![]);
        f.watches = vec![
            Script {
                events: vec![ev(Stage::PodScheduled, "", None)],
                hang: true,
                ..Default::default()
            },
            Script {
                events: vec![
                    ev(Stage::ContainerRunning, "", None),
                    ready_ev("10.244.0.6"),
                ],
                ..Default::default()
            },
        ];
        let (gets, watches) = (f.get_calls.clone(), f.watch_calls.clone());
        let upstream = serve(f).await;
        let proxy = Proxy::start(&upstream, 0).await;
        let rec = Record::new();
        let cut = async {
            rec.wait_for("pod scheduled").await;
            proxy.cut();
        };
        let mut shown = rec.clone();
        let (loc, ()) = tokio::join!(ask(&proxy.addr, LONG, &mut shown), cut);
        assert_eq!(loc.expect("ready").pod_ip, "10.244.0.6");
        assert_eq!((calls(&gets), calls(&watches)), (2, 2));
        let lines = rec.lines();
        let at = |want: &str| {
            lines
                .iter()
                .position(|l| l == want)
                .unwrap_or_else(|| panic!("no {want:?} in {lines:?}"))
        };
        // After the reconnection the last stage is shown again, then the new events.
        let broke = at("orchestrator unavailable: reconnecting (attempt 1)");
        assert_eq!(
            lines[broke + 1..],
            [
                "pod scheduled, creating container: PodScheduled",
                "starting Bazel server: ContainerRunning"
            ],
            "{lines:?}"
        );
        assert!(at("pod scheduled, creating container: PodScheduled") < broke);
    }

    #[tokio::test]
    async fn an_ended_watch_is_resumed_until_the_deadline() {
        let f = fake(
            Ok(server(ServerStatus::Pending, "")),
            vec![ev(Stage::PodPending, "", None)],
        );
        let watches = f.watch_calls.clone();
        let err = run(f, Duration::from_millis(600))
            .await
            .expect_err("deadline");
        let chain = ErrorChain(&err).to_string();
        assert!(matches!(err, OrchestratorError::Deadline { .. }), "{chain}");
        assert!(
            chain.contains("ended the watch before the server was ready (last stage: pod pending)"),
            "{chain}"
        );
        assert!(calls(&watches) >= 2, "{}", calls(&watches));
    }

    #[tokio::test]
    async fn deadline_is_honoured() {
        let mut f = fake(Ok(server(ServerStatus::Pending, "")), vec![]);
        f.watches[0].events = vec![ev(Stage::ContainerRunning, "", None)];
        f.watches[0].hang = true;
        let t = std::time::Instant::now();
        let err = run(f, Duration::from_millis(300))
            .await
            .expect_err("deadline");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(
            matches!(err, OrchestratorError::Deadline { ref last_stage, cause: None, .. } if last_stage == "starting Bazel server"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn unreachable_orchestrator_is_a_clear_error_at_the_deadline() {
        let port = testkit::free_port().expect("port");
        let addr = format!("http://127.0.0.1:{port}");
        let rec = Record::new();
        let t = std::time::Instant::now();
        let err = ask(&addr, Duration::from_millis(700), &mut rec.clone())
            .await
            .expect_err("unreachable");
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        let chain = ErrorChain(&err).to_string();
        assert!(
            chain.starts_with(
                "no server after 0s (last stage: orchestrator unavailable, reconnecting (attempt "
            ),
            "{chain}"
        );
        assert!(
            chain.contains(&format!("cannot reach the orchestrator at {addr}: ")),
            "{chain}"
        );
        assert!(
            rec.lines().iter().any(|l| l.ends_with("(attempt 2)")),
            "several attempts: {:?}",
            rec.lines()
        );
    }

    #[test]
    fn only_the_transport_can_say_tls_refused() {
        // What a refused client certificate looks like (measured: h2 keeps only the text).
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateExpired",
        );
        let status = tonic::Status::from_error(Box::new(alert));
        assert!(tls_refused(&status), "{status:?}");
        let reset = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed");
        assert!(!tls_refused(&tonic::Status::from_error(Box::new(reset))));
        // What the orchestrator says is never a TLS refusal, whatever its words.
        let said = tonic::Status::unauthenticated("no client certificate or bearer token");
        assert!(!tls_refused(&said));
    }

    #[tokio::test]
    async fn a_bad_address_is_final() {
        let err = ask("not a url", LONG, &mut Silent)
            .await
            .expect_err("bad address");
        assert!(matches!(err, OrchestratorError::BadAddress { .. }), "{err}");
    }
}
