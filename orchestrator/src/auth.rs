//! Who is calling: the verified identity behind each request, never the request's own
//! `user_id`.
//!
//! Two kinds of callers, each with the credential Kubernetes already gives them:
//! - **A user** (jbazel on a desktop) presents the credential of their kubeconfig: a client
//!   certificate (mTLS: rustls verified it against the cluster CA during the handshake, so
//!   only its subject CN is read here) or a bearer token (verified by a TokenReview). The
//!   Kubernetes user name is the jbazel UserId; a name that is not a valid UserId (a
//!   service account, a node) is no user of ours.
//! - **A server pod** (its supervisor's ReportReady) presents a projected service-account
//!   token whose audience is [`POD_AUDIENCE`], bound to the pod: the TokenReview answers
//!   the service account and the pod's name and uid, which the report must match.
//!
//! Verified answers are cached for [`CACHE_TTL`] (a token review is an API-server round
//! trip; a warm command must not pay it), keyed by the whole credential; failures of the
//! review itself (API server unreachable) are not cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::Api;
use proto::names::UserId;
use tonic::transport::CertificateDer;

/// Audience of the pods' projected tokens (ReportReady's credential).
pub const POD_AUDIENCE: &str = "jbazel-orchestrator";
/// The service account of every server pod (one per user namespace).
pub const SERVER_SERVICE_ACCOUNT: &str = "jbazel-server";
/// How long a verified identity is trusted without asking again.
pub const CACHE_TTL: Duration = Duration::from_secs(60);
/// Most cached credentials; the cache is emptied when it would grow past this.
const CACHE_MAX: usize = 10_000;
/// Longest bearer token looked at (a JWT is about 1 KiB).
const MAX_TOKEN_LEN: usize = 16 * 1024;

/// TokenReview's user-extra keys of a pod-bound service-account token.
const EXTRA_POD_NAME: &str = "authentication.kubernetes.io/pod-name";
const EXTRA_POD_UID: &str = "authentication.kubernetes.io/pod-uid";

/// What a request carried to prove who sent it.
#[derive(Debug, Clone)]
pub enum Presented {
    /// The leaf of a client certificate chain rustls verified against the client CA.
    ClientCert(CertificateDer<'static>),
    /// `authorization: Bearer <token>`.
    Bearer(String),
    /// An `authorization` header that is not a bearer token.
    Malformed,
    /// Nothing.
    Nothing,
}

impl Presented {
    /// Reads a request's credential: its verified client certificate, else its bearer
    /// token.
    pub fn of<T>(request: &tonic::Request<T>) -> Presented {
        if let Some(leaf) = request.peer_certs().and_then(|c| c.first().cloned()) {
            return Presented::ClientCert(leaf);
        }
        match request.metadata().get("authorization") {
            None => Presented::Nothing,
            Some(v) => match v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
                Some(t) if !t.trim().is_empty() && t.len() <= MAX_TOKEN_LEN => {
                    Presented::Bearer(t.trim().to_string())
                }
                _ => Presented::Malformed,
            },
        }
    }
}

/// A server pod, as its bound token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodIdentity {
    pub namespace: String,
    pub service_account: String,
    pub pod_name: String,
    pub pod_uid: String,
}

/// Why a caller is not let in.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    /// No credential, or one that does not verify.
    #[error("not authenticated: {0}")]
    Unauthenticated(String),
    /// A verified identity that is not allowed this call.
    #[error("{0}")]
    Forbidden(String),
    /// The TokenReview could not be made (not the caller's fault: retry).
    #[error("cannot verify the token with the Kubernetes API")]
    Review(#[source] Arc<kube::Error>),
}

impl AuthError {
    /// The gRPC status of this refusal.
    pub fn status(&self) -> tonic::Status {
        let text = proto::error_chain::ErrorChain(self).to_string();
        match self {
            AuthError::Unauthenticated(_) => tonic::Status::unauthenticated(text),
            AuthError::Forbidden(_) => tonic::Status::permission_denied(text),
            AuthError::Review(_) => tonic::Status::unavailable(text),
        }
    }
}

/// The subject CN of a DER certificate.
pub fn common_name(cert: &[u8]) -> Result<String, AuthError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|_| AuthError::Unauthenticated("the client certificate does not parse".into()))?;
    let cn = parsed
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or_else(|| {
            AuthError::Unauthenticated("the client certificate has no subject CN".into())
        })?;
    Ok(cn.to_string())
}

/// The jbazel user a Kubernetes user name stands for.
pub fn user_of_name(name: &str) -> Result<UserId, AuthError> {
    UserId::parse(name).map_err(|_| {
        AuthError::Forbidden(format!(
            "identity {:?} is not a jbazel user (a user name must be a lower-case DNS label)",
            truncate(name)
        ))
    })
}

fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// The user name of an authenticated TokenReview, or why it is refused.
pub fn reviewed_name(status: &TokenReviewStatus) -> Result<String, AuthError> {
    if status.authenticated != Some(true) {
        return Err(AuthError::Unauthenticated(match status.error.as_deref() {
            Some(e) if !e.is_empty() => {
                format!("token rejected by the API server ({})", truncate(e))
            }
            _ => "token rejected by the API server".into(),
        }));
    }
    status
        .user
        .as_ref()
        .and_then(|u| u.username.clone())
        .ok_or_else(|| AuthError::Unauthenticated("the token names no user".into()))
}

/// The pod identity of an authenticated review of a pod-bound service-account token.
pub fn reviewed_pod(status: &TokenReviewStatus) -> Result<PodIdentity, AuthError> {
    let name = reviewed_name(status)?;
    let not_a_pod = || {
        AuthError::Forbidden(format!(
            "identity {:?} is not a server pod",
            truncate(&name)
        ))
    };
    let rest = name
        .strip_prefix("system:serviceaccount:")
        .ok_or_else(not_a_pod)?;
    let (namespace, service_account) = rest.split_once(':').ok_or_else(not_a_pod)?;
    let extra = status.user.as_ref().and_then(|u| u.extra.as_ref());
    let one = |key: &str| {
        extra
            .and_then(|e| e.get(key))
            .and_then(|v| v.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let (Some(pod_name), Some(pod_uid)) = (one(EXTRA_POD_NAME), one(EXTRA_POD_UID)) else {
        return Err(AuthError::Forbidden(format!(
            "the token of {:?} is not bound to a pod",
            truncate(&name)
        )));
    };
    Ok(PodIdentity {
        namespace: namespace.to_string(),
        service_account: service_account.to_string(),
        pod_name,
        pod_uid,
    })
}

/// Asks the API server about a bearer token (the port the authenticator's tests fake).
#[tonic::async_trait]
pub trait TokenReviewer: Send + Sync + 'static {
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, kube::Error>;
}

/// TokenReview through kube-rs (needs `create tokenreviews`).
pub struct KubeReviewer(pub kube::Client);

#[tonic::async_trait]
impl TokenReviewer for KubeReviewer {
    async fn review(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<TokenReviewStatus, kube::Error> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: (!audiences.is_empty()).then(|| audiences.to_vec()),
            },
            ..Default::default()
        };
        let api: Api<TokenReview> = Api::all(self.0.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        Ok(answer.status.unwrap_or_default())
    }
}

/// For which kind of caller a token was reviewed (the cache keeps them apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Audience {
    User,
    Pod,
}

type Verdict = Result<TokenReviewStatus, AuthError>;

/// Verifies callers, with a cache of verified tokens.
pub struct Authenticator {
    reviewer: Box<dyn TokenReviewer>,
    cache: Mutex<HashMap<(String, Audience), (Verdict, Instant)>>,
    ttl: Duration,
}

impl Authenticator {
    pub fn new(reviewer: Box<dyn TokenReviewer>) -> Self {
        Authenticator {
            reviewer,
            cache: Mutex::new(HashMap::new()),
            ttl: CACHE_TTL,
        }
    }

    /// The jbazel user behind a request (GetServer, WatchServer).
    pub async fn user(&self, presented: Presented) -> Result<UserId, AuthError> {
        let name = match presented {
            Presented::ClientCert(cert) => common_name(&cert)?,
            Presented::Bearer(token) => {
                reviewed_name(&self.reviewed(token, Audience::User).await?)?
            }
            Presented::Malformed => {
                return Err(AuthError::Unauthenticated(
                    "the authorization header is not a bearer token".into(),
                ))
            }
            Presented::Nothing => return Err(AuthError::Unauthenticated(
                "no client certificate or bearer token (jbazel sends your kubeconfig's credential)"
                    .into(),
            )),
        };
        user_of_name(&name)
    }

    /// The server pod behind a request (ReportReady): only a pod-bound token of
    /// [`POD_AUDIENCE`] will do.
    pub async fn pod(&self, presented: Presented) -> Result<PodIdentity, AuthError> {
        match presented {
            Presented::Bearer(token) => reviewed_pod(&self.reviewed(token, Audience::Pod).await?),
            Presented::ClientCert(_) => Err(AuthError::Forbidden(
                "ReportReady is for server pods, with their bound token".into(),
            )),
            Presented::Malformed | Presented::Nothing => Err(AuthError::Unauthenticated(
                "ReportReady needs the pod's bound service-account token".into(),
            )),
        }
    }

    async fn reviewed(
        &self,
        token: String,
        audience: Audience,
    ) -> Result<TokenReviewStatus, AuthError> {
        let key = (token, audience);
        let now = Instant::now();
        if let Ok(cache) = self.cache.lock() {
            if let Some((verdict, until)) = cache.get(&key) {
                if *until > now {
                    return verdict.clone();
                }
            }
        }
        let audiences = match audience {
            Audience::User => Vec::new(),
            Audience::Pod => vec![POD_AUDIENCE.to_string()],
        };
        let verdict = match self.reviewer.review(&key.0, &audiences).await {
            // The verdict is the refusal reviewed_name gives, or the status itself.
            Ok(status) => reviewed_name(&status).map(|_| status),
            // The API server did not answer: the caller may retry; nothing is cached.
            Err(e) => return Err(AuthError::Review(Arc::new(e))),
        };
        if let Ok(mut cache) = self.cache.lock() {
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(key, (verdict.clone(), now + self.ttl));
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::authentication::v1::UserInfo;
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn status(name: Option<&str>, extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(name.is_some()),
            user: name.map(|n| UserInfo {
                username: Some(n.to_string()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| (k.to_string(), vec![v.to_string()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    struct Fake {
        calls: Arc<AtomicUsize>,
        answer: TokenReviewStatus,
    }

    #[tonic::async_trait]
    impl TokenReviewer for Fake {
        async fn review(&self, _t: &str, _a: &[String]) -> Result<TokenReviewStatus, kube::Error> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.answer.clone())
        }
    }

    fn auth(answer: TokenReviewStatus) -> (Authenticator, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let a = Authenticator::new(Box::new(Fake {
            calls: calls.clone(),
            answer,
        }));
        (a, calls)
    }

    #[test]
    fn user_names() {
        assert_eq!(user_of_name("alice").expect("user").as_str(), "alice");
        for bad in [
            "system:serviceaccount:jbazel:x",
            "Alice",
            "",
            "system:node:vm",
        ] {
            let e = user_of_name(bad).expect_err(bad);
            assert_eq!(e.status().code(), tonic::Code::PermissionDenied, "{bad}");
        }
    }

    #[test]
    fn reviews_of_pods() {
        let ok = status(
            Some("system:serviceaccount:jbazel-alice:jbazel-server"),
            &[(EXTRA_POD_NAME, "bazel-alice-x-g1"), (EXTRA_POD_UID, "u-1")],
        );
        assert_eq!(
            reviewed_pod(&ok).expect("pod"),
            PodIdentity {
                namespace: "jbazel-alice".into(),
                service_account: "jbazel-server".into(),
                pod_name: "bazel-alice-x-g1".into(),
                pod_uid: "u-1".into(),
            }
        );
        let unbound = status(
            Some("system:serviceaccount:jbazel-alice:jbazel-server"),
            &[],
        );
        assert!(matches!(
            reviewed_pod(&unbound),
            Err(AuthError::Forbidden(_))
        ));
        let user = status(
            Some("alice"),
            &[(EXTRA_POD_NAME, "p"), (EXTRA_POD_UID, "u")],
        );
        assert!(matches!(reviewed_pod(&user), Err(AuthError::Forbidden(_))));
        let mut rejected = status(None, &[]);
        rejected.error = Some("token expired".into());
        let e = reviewed_pod(&rejected).expect_err("rejected");
        assert_eq!(e.status().code(), tonic::Code::Unauthenticated);
        assert!(e.to_string().contains("token expired"));
    }

    #[tokio::test]
    async fn verified_tokens_are_cached_and_refusals_too() {
        let (a, calls) = auth(status(Some("alice"), &[]));
        for _ in 0..3 {
            let u = a.user(Presented::Bearer("t1".into())).await.expect("alice");
            assert_eq!(u.as_str(), "alice");
        }
        assert_eq!(
            calls.load(Ordering::SeqCst),
            1,
            "one review for three calls"
        );
        // The same token for a pod is another question.
        assert!(a.pod(Presented::Bearer("t1".into())).await.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let (a, calls) = auth(status(None, &[]));
        for _ in 0..2 {
            let e = a
                .user(Presented::Bearer("junk".into()))
                .await
                .expect_err("junk");
            assert_eq!(e.status().code(), tonic::Code::Unauthenticated);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn nothing_or_malformed_is_unauthenticated_and_asks_nobody() {
        let (a, calls) = auth(status(Some("alice"), &[]));
        for p in [Presented::Nothing, Presented::Malformed] {
            let e = a.user(p.clone()).await.expect_err("refused");
            assert_eq!(e.status().code(), tonic::Code::Unauthenticated);
            let e = a.pod(p).await.expect_err("refused");
            assert_eq!(e.status().code(), tonic::Code::Unauthenticated);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_request_without_credential_presents_nothing() {
        let r = tonic::Request::new(());
        assert!(matches!(Presented::of(&r), Presented::Nothing));
        let mut r = tonic::Request::new(());
        r.metadata_mut()
            .insert("authorization", "Basic YTpi".parse().expect("ascii"));
        assert!(matches!(Presented::of(&r), Presented::Malformed));
        let mut r = tonic::Request::new(());
        r.metadata_mut()
            .insert("authorization", "Bearer abc".parse().expect("ascii"));
        assert!(matches!(Presented::of(&r), Presented::Bearer(t) if t == "abc"));
    }
}
