//! The push half of readiness: `ReportReady` to the orchestrator once the server answers.
//!
//! Runs as its own task; the Bazel server never waits for it. A failed call is retried with
//! jittered exponential backoff ([`after_failure`]) within a bounded budget, then given up
//! with one error: the push is only the fast path. The orchestrator also marks the row READY
//! from the pod's Ready condition (the readiness probe on `/readyz`), so a lost push delays
//! readiness by a probe period and a watch event, nothing more: the push is for speed, the
//! pod's condition is the truth. Without a usable `POD_IP` nothing is sent at all: a report without the pod's
//! address would only be refused or, worse, point jbazel nowhere.

use proto::error_chain::ErrorChain;
use std::net::IpAddr;
use std::time::Duration;

use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::ReportReadyRequest;
use proto::pod::env;
use tokio::time::Instant;
use tonic::transport::Endpoint;

use crate::config::{Identity, ReportSettings};
use proto::backoff::{jitter, Backoff};

/// The pauses between attempts: 0.5 s (before jitter), doubling up to 10 s.
pub const BACKOFF: Backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(10));
/// At most this many calls per readiness transition. With the delays above (each between
/// half and all of 0.5, 1, 2, 4, 8, 10, 10, ... s) ten attempts span about 28-56 s of
/// pauses: long enough to ride out an orchestrator restart, short enough that a pod does
/// not keep calling an orchestrator that is gone.
pub const MAX_ATTEMPTS: u32 = 10;
/// And never past this much time since the first attempt began (a slow or black-holed
/// orchestrator costs up to the connect and request timeouts on every attempt).
pub const BUDGET: Duration = Duration::from_secs(120);
/// Per attempt: connecting, then the call itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Wait this long, then try again.
    Retry(Duration),
    /// Stop: the attempts or the time budget are used up.
    GiveUp,
}

/// After failed attempt number `attempt` (1-based), begun `elapsed` after the first one:
/// retry after [`BACKOFF`]'s pause for `jitter` (in [0, 1]: between half and all of the
/// ceiling, so the pods of a restarted orchestrator do not call back in step), or give up
/// after [`MAX_ATTEMPTS`] or when the pause would end past [`BUDGET`]. Pure.
pub fn after_failure(attempt: u32, elapsed: Duration, jitter: f64) -> Next {
    if attempt >= MAX_ATTEMPTS {
        return Next::GiveUp;
    }
    let delay = BACKOFF.pause(attempt, jitter);
    if elapsed.saturating_add(delay) >= BUDGET {
        Next::GiveUp
    } else {
        Next::Retry(delay)
    }
}

/// Why no report can be sent for this POD_IP.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodIpProblem {
    #[error("POD_IP is not set")]
    Empty,
    #[error("POD_IP {0:?} is not an IP address")]
    Unparsable(String),
}

/// The pod IP a report carries, or why there is none. Pure.
pub fn pod_ip(text: &str) -> Result<IpAddr, PodIpProblem> {
    let t = text.trim();
    if t.is_empty() {
        return Err(PodIpProblem::Empty);
    }
    t.parse().map_err(|_| {
        // Downward-API values are short; keep a log line short whatever was set.
        PodIpProblem::Unparsable(t.chars().take(64).collect())
    })
}

/// The request this pod sends. Pure.
pub fn request(id: &Identity, r: &ReportSettings, command_port: u16) -> ReportReadyRequest {
    ReportReadyRequest {
        user_id: id.user_id.to_string(),
        repo_hash: id.repo_hash.to_string(),
        session_id: id
            .session_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        pod_name: r.pod_name.clone(),
        pod_ip: r.pod_ip.clone(),
        command_port: u32::from(command_port),
    }
}

/// The orchestrator's endpoint; `https://` verifies it with the CA bundle in
/// [`env::ORCHESTRATOR_CA_PEM`] (else
/// the system roots are not consulted: the CA must be given).
fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    let ep = Endpoint::from_shared(addr.to_owned())?;
    if !addr.starts_with("https://") {
        return Ok(ep);
    }
    let mut tls = tonic::transport::ClientTlsConfig::new();
    if let Some(ca) = std::env::var(env::ORCHESTRATOR_CA_PEM)
        .ok()
        .filter(|c| !c.trim().is_empty())
    {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(ca));
    }
    ep.tls_config(tls)
}

/// A token file read through a handle on its directory, opened once: the pivot covers the
/// pod's secret dirs with an empty tmpfs in the supervisor's own view too (its children
/// inherit that view), so the path no longer leads there afterwards; the handle does, and
/// the file is opened relative to it at each read (the kubelet renews the file inside the
/// directory). Close-on-exec: Bazel and its actions never hold it.
#[derive(Debug)]
pub struct TokenDir {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::OsString,
}

impl TokenDir {
    /// Opens the directory of the token file `path`.
    pub fn open(path: &std::path::Path) -> Result<Self, std::io::Error> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(std::io::Error::other("the token file names no directory"));
        };
        let dir = nix::fcntl::open(
            dir,
            nix::fcntl::OFlag::O_PATH
                | nix::fcntl::OFlag::O_DIRECTORY
                | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        Ok(TokenDir {
            dir,
            name: name.to_os_string(),
        })
    }

    /// The token as the file holds it now, trimmed. Opened with root's filesystem ids (the
    /// file is root's, 0400, and the supervisor touches the user's tree with the owner's).
    pub fn read(&self) -> Result<String, std::io::Error> {
        let fd = crate::owner::OwnerFs::as_root(|| {
            nix::fcntl::openat(
                &self.dir,
                self.name.as_os_str(),
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
        })?;
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut text)?;
        Ok(text.trim().to_owned())
    }
}

/// The bound token's directory, kept by [`keep_token_dir`] before the pivot.
static TOKEN_DIR: std::sync::OnceLock<TokenDir> = std::sync::OnceLock::new();

/// Opens the bound token's directory for [`bound_token`]; call before the pivot hides it.
/// Without a token file (outside a platform pod) this does nothing.
pub fn keep_token_dir() -> Result<(), std::io::Error> {
    let Some(path) = std::env::var_os(env::TOKEN_FILE).filter(|p| !p.is_empty()) else {
        return Ok(());
    };
    let _ = TOKEN_DIR.set(TokenDir::open(std::path::Path::new(&path))?);
    Ok(())
}

/// The bound token, if the pod has one (`None` outside a platform pod): through the
/// directory [`keep_token_dir`] kept, else (it could not be opened then) opened now, the one
/// way it is read (root's fs ids).
fn bound_token() -> Result<Option<String>, std::io::Error> {
    let token = match TOKEN_DIR.get() {
        Some(dir) => dir.read()?,
        None => {
            let Some(path) = std::env::var_os(env::TOKEN_FILE).filter(|p| !p.is_empty()) else {
                return Ok(None);
            };
            TokenDir::open(std::path::Path::new(&path))?.read()?
        }
    };
    Ok(Some(token).filter(|t| !t.is_empty()))
}

/// How the reporting ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// No ORCHESTRATOR_ADDR: nothing to do.
    Disabled,
    /// No usable POD_IP: nothing was sent.
    NoPodIp,
    Accepted,
    /// The orchestrator answered `accepted=false`: this pod's session is stale.
    Rejected,
    /// Every attempt failed; the readiness probe carries readiness instead.
    GaveUp,
}

/// Reports readiness until the orchestrator answers or the retry budget is spent. Cancel by
/// aborting the task.
pub async fn report_ready(id: Identity, r: ReportSettings, command_port: u16) -> ReportOutcome {
    let Some(addr) = r.orchestrator_addr.clone() else {
        tracing::info!(
            "ORCHESTRATOR_ADDR not set: readiness is not pushed (the pod watch still sees /readyz)"
        );
        return ReportOutcome::Disabled;
    };
    if let Err(problem) = pod_ip(&r.pod_ip) {
        tracing::error!(orchestrator = %addr, problem = %problem,
            "not reporting readiness: ReportReady needs this pod's IP (set POD_IP from the downward API, status.podIP); readiness is still visible through the readiness probe");
        return ReportOutcome::NoPodIp;
    }
    let req = request(&id, &r, command_port);
    let endpoint = match endpoint(&addr) {
        Ok(e) => e.connect_timeout(CONNECT_TIMEOUT).timeout(CALL_TIMEOUT),
        Err(e) => {
            // Validated at start-up; kept as a log rather than a panic.
            tracing::error!(orchestrator = %addr, error = %ErrorChain(&e), "bad orchestrator address");
            return ReportOutcome::Disabled;
        }
    };
    let began = Instant::now();
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = async {
            let mut client = OrchestratorClient::new(endpoint.connect().await?);
            let mut call = tonic::Request::new(req.clone());
            // The pod's bound token, read at each attempt (the kubelet renews the file).
            if let Some(token) = bound_token()? {
                call.metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse()?);
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                client.report_ready(call).await?.into_inner(),
            )
        }
        .await;
        let e = match result {
            Ok(resp) if resp.accepted => {
                tracing::info!(orchestrator = %addr, attempt, pod_ip = %req.pod_ip, "ReportReady accepted");
                return ReportOutcome::Accepted;
            }
            Ok(_) => {
                tracing::warn!(orchestrator = %addr, session = %req.session_id,
                    "ReportReady rejected: the session no longer matches (a newer desktop session owns the row)");
                return ReportOutcome::Rejected;
            }
            Err(e) => e,
        };
        match after_failure(attempt, began.elapsed(), jitter()) {
            Next::Retry(delay) => {
                tracing::warn!(orchestrator = %addr, attempt, error = %ErrorChain(e.as_ref()),
                    retry_in_ms = delay.as_millis() as u64, "ReportReady failed; retrying");
                tokio::time::sleep(delay).await;
            }
            Next::GiveUp => {
                tracing::error!(orchestrator = %addr, attempts = attempt,
                    elapsed_secs = began.elapsed().as_secs(), last_error = %ErrorChain(e.as_ref()),
                    "ReportReady gave up; readiness is still visible through the readiness probe (the orchestrator also marks READY from the pod's Ready condition)");
                return ReportOutcome::GaveUp;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_identity_and_port() {
        let id = Identity {
            user_id: "alice".parse().expect("valid user"),
            repo_hash: "0123456789abcdef0123456789abcdef"
                .parse()
                .expect("valid hash"),
            session_id: Some("s1".parse().expect("valid session")),
        };
        let r = ReportSettings {
            orchestrator_addr: Some("http://10.244.0.1:50051".into()),
            pod_name: "bazel-server-alice-01234567".into(),
            pod_ip: "10.244.0.9".into(),
        };
        let req = request(&id, &r, 9001);
        assert_eq!(req.user_id, "alice");
        assert_eq!(req.session_id, "s1");
        assert_eq!(req.pod_name, "bazel-server-alice-01234567");
        assert_eq!(req.pod_ip, "10.244.0.9");
        assert_eq!(req.command_port, 9001);
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backs_off_with_jitter_and_caps() {
        let zero = Duration::ZERO;
        // (attempt, jitter) -> delay: full backoff at jitter 1, half at jitter 0.
        let cases = [
            (1, 1.0, ms(500)),
            (1, 0.0, ms(250)),
            (2, 1.0, ms(1000)),
            (3, 0.5, ms(1500)),
            (4, 1.0, ms(4000)),
            (5, 1.0, ms(8000)),
            (6, 1.0, ms(10_000)),
            (9, 0.0, ms(5000)),
            (9, 1.0, ms(10_000)),
            // Out-of-range jitter is clamped, never negative or above the cap.
            (6, 7.0, ms(10_000)),
            (6, -3.0, ms(5000)),
            (6, f64::NAN, ms(10_000)),
        ];
        for (attempt, j, want) in cases {
            assert_eq!(
                after_failure(attempt, zero, j),
                Next::Retry(want),
                "attempt {attempt}, jitter {j}"
            );
        }
    }

    #[test]
    fn gives_up_after_the_attempts_or_the_budget() {
        assert_eq!(
            after_failure(MAX_ATTEMPTS, Duration::ZERO, 0.0),
            Next::GiveUp
        );
        assert_eq!(after_failure(u32::MAX, Duration::ZERO, 0.0), Next::GiveUp);
        assert!(matches!(
            after_failure(MAX_ATTEMPTS - 1, Duration::ZERO, 0.0),
            Next::Retry(_)
        ));
        // The pause would end past the budget.
        assert_eq!(after_failure(3, BUDGET - ms(500), 1.0), Next::GiveUp);
        assert_eq!(after_failure(1, BUDGET, 0.0), Next::GiveUp);
        assert!(matches!(
            after_failure(3, BUDGET - ms(5000), 1.0),
            Next::Retry(_)
        ));
        // Ten attempts at the longest jitter stay well inside the budget when calls fail fast.
        let mut elapsed = Duration::ZERO;
        let mut attempts = 1;
        while let Next::Retry(d) = after_failure(attempts, elapsed, 1.0) {
            elapsed += d;
            attempts += 1;
        }
        assert_eq!(attempts, MAX_ATTEMPTS);
        assert!(elapsed < BUDGET, "{elapsed:?}");
    }

    #[test]
    fn pod_ips() {
        assert_eq!(pod_ip("10.244.0.9"), Ok("10.244.0.9".parse().expect("ip")));
        assert_eq!(pod_ip(" fd00::9 "), Ok("fd00::9".parse().expect("ip")));
        assert_eq!(pod_ip(""), Err(PodIpProblem::Empty));
        assert_eq!(pod_ip("  "), Err(PodIpProblem::Empty));
        assert_eq!(
            pod_ip("pod-ip"),
            Err(PodIpProblem::Unparsable("pod-ip".into()))
        );
        let long = pod_ip(&"x".repeat(10_000)).expect_err("garbage");
        assert!(long.to_string().len() < 100, "{long}");
    }

    #[test]
    fn the_token_is_read_through_its_directory_after_the_path_is_gone() {
        let t = tempfile::tempdir().expect("tempdir");
        let secrets = t.path().join("secrets");
        std::fs::create_dir(&secrets).expect("mkdir");
        // As the kubelet lays out a projected volume: the file is a link into `..data`.
        std::fs::create_dir(secrets.join("..data")).expect("mkdir");
        std::fs::write(secrets.join("..data/token"), "first\n").expect("write");
        std::os::unix::fs::symlink("..data/token", secrets.join("token")).expect("link");
        let dir = TokenDir::open(&secrets.join("token")).expect("open");
        // The path stops leading there (the pivot's cover), and the kubelet renews the file.
        std::fs::rename(&secrets, t.path().join("covered")).expect("rename");
        assert!(std::fs::read(secrets.join("token")).is_err());
        std::fs::write(t.path().join("covered/..data/token"), "renewed\n").expect("renew");
        assert_eq!(dir.read().expect("read"), "renewed");
        assert!(TokenDir::open(std::path::Path::new("/")).is_err());
    }
}
