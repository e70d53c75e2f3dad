//! The push half of readiness: `ReportReady` to the orchestrator once Ping works.
//!
//! Runs as its own task with retry and backoff; the Bazel server never waits for it, and a
//! lost report is repaired by the orchestrator's pod watch (design: "two paths, one truth").

use proto::error_chain::ErrorChain;
use std::time::Duration;

use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::ReportReadyRequest;
use tonic::transport::Endpoint;

use crate::config::{Identity, ReportSettings};

/// First retry delay; doubles up to [`MAX_BACKOFF`].
pub const FIRST_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

pub use crate::backoff::backoff;

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

/// How the reporting ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportOutcome {
    /// No ORCHESTRATOR_ADDR: nothing to do.
    Disabled,
    Accepted,
    /// The orchestrator answered `accepted=false`: this pod's session is stale.
    Rejected,
}

/// Reports readiness until the orchestrator answers (retrying transport errors forever, with
/// backoff). Cancel by aborting the task.
pub async fn report_ready(id: Identity, r: ReportSettings, command_port: u16) -> ReportOutcome {
    let Some(addr) = r.orchestrator_addr.clone() else {
        tracing::info!(
            "ORCHESTRATOR_ADDR not set: readiness is not pushed (the pod watch still sees /readyz)"
        );
        return ReportOutcome::Disabled;
    };
    if r.pod_ip.is_empty() {
        tracing::warn!("POD_IP not set: reporting readiness without a pod IP");
    }
    let req = request(&id, &r, command_port);
    let endpoint = match Endpoint::from_shared(addr.clone()) {
        Ok(e) => e
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(10)),
        Err(e) => {
            // Validated at start-up; kept as a log rather than a panic.
            tracing::error!(orchestrator = %addr, error = %ErrorChain(&e), "bad orchestrator address");
            return ReportOutcome::Disabled;
        }
    };
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = async {
            let mut client = OrchestratorClient::new(endpoint.connect().await?);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                client.report_ready(req.clone()).await?.into_inner(),
            )
        }
        .await;
        match result {
            Ok(resp) if resp.accepted => {
                tracing::info!(orchestrator = %addr, attempt, pod_ip = %req.pod_ip, "ReportReady accepted");
                return ReportOutcome::Accepted;
            }
            Ok(_) => {
                tracing::warn!(orchestrator = %addr, session = %req.session_id,
                    "ReportReady rejected: the session no longer matches (a newer desktop session owns the row)");
                return ReportOutcome::Rejected;
            }
            Err(e) => {
                let delay = backoff(attempt, FIRST_BACKOFF, MAX_BACKOFF);
                tracing::warn!(orchestrator = %addr, attempt, error = %ErrorChain(e.as_ref()), retry_in_ms = delay.as_millis() as u64,
                    "ReportReady failed; retrying");
                tokio::time::sleep(delay).await;
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
}
