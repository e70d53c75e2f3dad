//! `PodClient`: the thin edge to the Kubernetes API for the platform's pods. Decisions come
//! from [`crate::session::pod_step`]; this file only performs them.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, ListParams, PostParams, Preconditions};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client};
use tokio::time::Instant;

use super::manifest::{PodSettings, PodSpecFor, LABEL_REPO_HASH, LABEL_USER};
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

/// Pods of one namespace, with the settings their manifests are built from.
#[derive(Clone)]
pub struct PodClient {
    api: Api<Pod>,
    settings: Arc<PodSettings>,
}

impl PodClient {
    pub fn new(client: Client, settings: PodSettings) -> Self {
        PodClient {
            api: Api::namespaced(client, &settings.namespace),
            settings: Arc::new(settings),
        }
    }

    pub fn settings(&self) -> &PodSettings {
        &self.settings
    }

    pub fn api(&self) -> &Api<Pod> {
        &self.api
    }

    fn err(&self, op: &'static str, pod: &str) -> impl FnOnce(kube::Error) -> PodError {
        let namespace = self.settings.namespace.clone();
        let pod = pod.to_string();
        move |source| PodError::Kube {
            op,
            namespace,
            pod,
            source,
        }
    }

    /// The pod under `name`, if any.
    pub async fn get(&self, name: &str) -> Result<Option<Pod>, PodError> {
        self.api.get_opt(name).await.map_err(self.err("get", name))
    }

    /// Deletes `name` if it still is the pod with `uid` (a newer pod of the same name is
    /// left alone). Gone already, or replaced meanwhile: success.
    pub async fn delete(&self, name: &str, uid: Option<&str>) -> Result<(), PodError> {
        let params = DeleteParams {
            preconditions: uid.map(|uid| Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..Default::default()
        };
        match self.api.delete(name, &params).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.is_not_found() || s.is_conflict() => Ok(()),
            Err(e) => Err(self.err("delete", name)(e)),
        }
    }

    /// Waits (watch, no polling) until the pod with `uid` no longer exists.
    pub async fn wait_gone(
        &self,
        name: &str,
        uid: Option<&str>,
        deadline: Instant,
    ) -> Result<(), PodError> {
        let wait = async {
            match uid {
                Some(uid) => {
                    await_condition(self.api.clone(), name, conditions::is_deleted(uid)).await
                }
                None => {
                    await_condition(self.api.clone(), name, |p: Option<&Pod>| p.is_none()).await
                }
            }
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(PodError::Wait {
                namespace: self.settings.namespace.clone(),
                pod: name.to_string(),
                source,
            }),
            Err(_) => Err(PodError::StillTerminating {
                namespace: self.settings.namespace.clone(),
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
        const MAX_ROUNDS: u32 = 8;
        for _ in 0..MAX_ROUNDS {
            let current = self.get(&name).await?;
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
                        namespace = %self.settings.namespace,
                        "Creating Pod for repo {}",
                        spec.repo_hash
                    );
                    let manifest = spec.manifest(&self.settings);
                    match self.api.create(&PostParams::default(), &manifest).await {
                        Ok(pod) => return Ok(EnsureOutcome::Created(Box::new(pod))),
                        // Someone else created it first: look again (next round).
                        Err(kube::Error::Api(s)) if s.is_already_exists() => {}
                        Err(e) => return Err(self.err("create", &name)(e)),
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
                    self.delete(&name, uid.as_deref()).await?;
                    self.wait_gone(&name, uid.as_deref(), deadline).await?;
                }
                PodStep::WaitGone { uid } => {
                    tracing::debug!(pod = %name, "waiting for a terminating pod to be gone");
                    self.wait_gone(&name, uid.as_deref(), deadline).await?;
                }
            }
        }
        Err(PodError::NoProgress {
            namespace: self.settings.namespace.clone(),
            pod: name,
            rounds: MAX_ROUNDS,
        })
    }

    /// Records the reported command port on the pod, only if the pod still carries
    /// `session_id` (a JSON patch `test` makes the check and the write one operation).
    /// Returns false when the pod is gone or belongs to another session.
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
            .api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(self.err("list", &selector))?;
        let mut removed = Vec::new();
        for pod in pods.items {
            if view::generation_of(&pod).is_some_and(|g| g >= generation) {
                continue;
            }
            let name = pod.metadata.name.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_none() {
                self.delete(&name, pod.metadata.uid.as_deref()).await?;
            }
            removed.push(name);
        }
        Ok(removed)
    }
}
