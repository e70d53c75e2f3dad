//! `PodClient`: the thin edge to the Kubernetes API for the platform's pods. Decisions come
//! from [`crate::session::pod_step`]; this file only performs them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use tokio::time::Instant;

use proto::names::UserId;

use super::manifest::{user_namespace, PodSettings, PodSpecFor, LABEL_REPO_HASH, LABEL_USER};
use super::tenancy::{Egress, TenancyError, UserNamespaces};
use super::view;
use crate::session::{pod_step, PodStep, SessionKey};

/// Errors from pod operations; each names the pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// A Kubernetes API call failed.
    #[error("{op} pod {namespace}/{pod}")]
    Kube {
        op: &'static str,
        namespace: String,
        pod: String,
        #[source]
        source: kube::Error,
    },
    /// Waiting for an old pod to go away did not finish before the deadline.
    #[error("pod {namespace}/{pod} was still terminating at the deadline")]
    StillTerminating { namespace: String, pod: String },
    /// The watch used to wait for a deletion failed.
    #[error("waiting for pod {namespace}/{pod} to be deleted")]
    Wait {
        namespace: String,
        pod: String,
        #[source]
        source: kube::runtime::wait::Error,
    },
    /// The user's namespace could not be made ready for the pod.
    #[error("pod {pod}")]
    Tenancy {
        pod: String,
        #[source]
        source: TenancyError,
    },
    /// The create/delete loop did not converge (another writer kept changing the pod).
    #[error("pod {namespace}/{pod} did not converge after {rounds} rounds")]
    NoProgress {
        namespace: String,
        pod: String,
        rounds: u32,
    },
}

/// What [`PodClient::ensure`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum EnsureOutcome {
    /// The session's pod was already there.
    Existing(Box<Pod>),
    /// It was created now (possibly after deleting another session's pod).
    Created(Box<Pod>),
}

impl EnsureOutcome {
    pub fn pod(&self) -> &Pod {
        match self {
            EnsureOutcome::Existing(p) | EnsureOutcome::Created(p) => p,
        }
    }
}

/// The platform's pods (each user's in their own namespace), with the settings their
/// manifests are built from.
#[derive(Clone)]
pub struct PodClient {
    client: Client,
    settings: Arc<PodSettings>,
    namespaces: UserNamespaces,
}

impl PodClient {
    pub fn new(client: Client, settings: PodSettings) -> Self {
        PodClient {
            namespaces: UserNamespaces::new(client.clone(), settings.namespace.clone())
                .with_egress(Egress::new(
                    &settings.orchestrator_addr,
                    &settings.egress_allow,
                )),
            client,
            settings: Arc::new(settings),
        }
    }

    pub fn settings(&self) -> &PodSettings {
        &self.settings
    }

    /// Every platform pod of every user namespace (the reconciler's watch; list/watch
    /// pods cluster-wide, filtered by the platform's label).
    pub fn all(&self) -> Api<Pod> {
        Api::all(self.client.clone())
    }

    /// `user`'s namespace.
    pub fn namespace_of(&self, user: &UserId) -> String {
        user_namespace(&self.settings.namespace, user)
    }

    /// The pods of `user`'s namespace.
    pub fn api(&self, user: &UserId) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.namespace_of(user))
    }

    fn err(
        &self,
        user: &UserId,
        op: &'static str,
        pod: &str,
    ) -> impl FnOnce(kube::Error) -> PodError {
        let namespace = self.namespace_of(user);
        let pod = pod.to_string();
        move |source| PodError::Kube {
            op,
            namespace,
            pod,
            source,
        }
    }

    /// The pod `name` of `user`, if any.
    pub async fn get(&self, user: &UserId, name: &str) -> Result<Option<Pod>, PodError> {
        self.api(user)
            .get_opt(name)
            .await
            .map_err(self.err(user, "get", name))
    }

    /// Deletes `name` if it still is the pod with `uid` (a newer pod of the same name is
    /// left alone). Gone already, or replaced meanwhile: success.
    pub async fn delete(
        &self,
        user: &UserId,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), PodError> {
        self.delete_in(&self.namespace_of(user), name, uid).await
    }

    /// [`PodClient::delete`] in `namespace` (a pod found by the cluster-wide watch).
    pub async fn delete_in(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<(), PodError> {
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        match api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
            Err(source) => Err(PodError::Kube {
                op: "delete",
                namespace: namespace.to_string(),
                pod: name.to_string(),
                source,
            }),
        }
    }

    /// Waits (watch, no polling) until the pod with `uid` no longer exists.
    pub async fn wait_gone(
        &self,
        user: &UserId,
        name: &str,
        uid: Option<&str>,
        deadline: Instant,
    ) -> Result<(), PodError> {
        let wait = async {
            match uid {
                Some(uid) => {
                    await_condition(self.api(user), name, conditions::is_deleted(uid)).await
                }
                None => await_condition(self.api(user), name, |p: Option<&Pod>| p.is_none()).await,
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(PodError::Wait {
                namespace: self.namespace_of(user),
                pod: name.to_string(),
                source,
            }),
            Err(_) => Err(PodError::StillTerminating {
                namespace: self.namespace_of(user),
                pod: name.to_string(),
            }),
        }
    }

    /// Makes the cluster hold exactly `spec`'s pod: a pod of another session (or a failed
    /// one) is deleted and waited for, then the pod is created; AlreadyExists is success
    /// when the existing pod is this session's. Idempotent.
    pub async fn ensure(
        &self,
        spec: &PodSpecFor<'_>,
        deadline: Instant,
    ) -> Result<EnsureOutcome, PodError> {
        let name = spec.name();
        let user = spec.user_id;
        const MAX_ROUNDS: u32 = 8;
        for _ in 0..MAX_ROUNDS {
            let current = self.get(user, &name).await?;
            let current_view = current.as_ref().map(view::view);
            match pod_step(&spec.fence(), current_view.as_ref()) {
                PodStep::Keep => {
                    if let Some(pod) = current {
                        return Ok(EnsureOutcome::Existing(Box::new(pod)));
                    }
                }
                PodStep::Create => {
                    tracing::info!(
                        user = %spec.user_id,
                        repo_hash = %spec.repo_hash,
                        session = %spec.session_id,
                        pod = %name,
                        namespace = %self.namespace_of(user),
                        "Creating Pod for repo {}",
                        spec.repo_hash
                    );
                    self.namespaces
                        .ensure(user)
                        .await
                        .map_err(|source| PodError::Tenancy {
                            pod: name.clone(),
                            source,
                        })?;
                    let manifest = spec.manifest(&self.settings);
                    match self
                        .api(user)
                        .create(&PostParams::default(), &manifest)
                        .await
                    {
                        Ok(pod) => return Ok(EnsureOutcome::Created(Box::new(pod))),
                        // Someone else created it first: look again (next round).
                        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                        Err(e) => return Err(self.err(user, "create", &name)(e)),
                    }
                }
                PodStep::Replace { uid } => {
                    let stale = current_view.as_ref().and_then(|v| v.session_id.clone());
                    tracing::info!(
                        user = %spec.user_id,
                        repo_hash = %spec.repo_hash,
                        session = %spec.session_id,
                        pod = %name,
                        stale_session = stale.as_deref().unwrap_or(""),
                        "deleting the pod of another session (or a failed pod) before creating"
                    );
                    self.delete(user, &name, uid.as_deref()).await?;
                    self.wait_gone(user, &name, uid.as_deref(), deadline)
                        .await?;
                }
                PodStep::WaitGone { uid } => {
                    tracing::debug!(pod = %name, "waiting for a terminating pod to be gone");
                    self.wait_gone(user, &name, uid.as_deref(), deadline)
                        .await?;
                }
            }
        }
        Err(PodError::NoProgress {
            namespace: self.namespace_of(user),
            pod: name,
            rounds: MAX_ROUNDS,
        })
    }

    /// Deletes every pod of `key` whose generation is older than `generation` (or that
    /// carries none), each by UID, without waiting. Listed from the API server, not a
    /// cache: a crash between the row's commit and this call must not leave one behind
    /// (the reconciler repeats it anyway). Returns the names.
    pub async fn remove_older(
        &self,
        key: &SessionKey,
        generation: u64,
    ) -> Result<Vec<String>, PodError> {
        let selector = format!(
            "{LABEL_USER}={},{LABEL_REPO_HASH}={}",
            key.user_id, key.repo_hash
        );
        let pods = self
            .api(&key.user_id)
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err(&key.user_id, "list", &selector))?;
        let mut removed = Vec::new();
        for pod in pods.items {
            if view::generation_of(&pod).is_some_and(|g| g >= generation) {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_none() {
                self.delete(&key.user_id, &name, pod.metadata.uid.as_deref())
                    .await?;
            }
            removed.push(name);
        }
        Ok(removed)
    }
}
