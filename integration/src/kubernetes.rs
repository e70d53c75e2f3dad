//! The local Kubernetes cluster (integration/kubernetes/local.sh) as tests see it.
//!
//! [`Cluster::connect`] reads the kubeconfig (`KUBECONFIG`, else
//! [`DEFAULT_KUBECONFIG`]), checks that the API server answers and that a node is Ready, and
//! fails with an error that says how to start the cluster otherwise: a test that cannot reach
//! the cluster fails, it never skips. [`Cluster::test_namespace`] gives each test its own
//! namespace, deleted when the value is dropped. [`wait_for_pod`] waits for a pod goal with a
//! deadline by watching the pod (kube-runtime's `await_condition`), and stops early with the
//! reason when the pod cannot get there (image missing, crash loop, failed).
//!
//! Architecture invariant: this module never starts or stops the cluster; `kubernetes/local.sh up`
//! does, once, before the tests (they share the cluster, each in its own namespace).

use proto::error_chain::ErrorChain;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::runtime::wait::{await_condition, conditions};
use kube::{Api, Client, Config};

/// The admin kubeconfig `kubernetes/local.sh up` writes.
pub const DEFAULT_KUBECONFIG: &str = "/var/lib/jbazel-cluster/admin.kubeconfig";
/// The pod image `image/build.sh` imports into the cluster's containerd.
pub const IMAGE: &str = "docker.io/library/jbazel-bazel-server:dev";
/// The static pause image `kubernetes/local.sh up` imports (the pod sandbox image): a container that
/// runs until SIGTERM, for tests that need a pod but not Bazel.
pub const PAUSE_IMAGE: &str = "docker.io/library/jbazel-pause:3.4.1";
/// The CNI bridge's address: the host as pods see it (the orchestrator listens there).
pub const POD_GATEWAY: &str = "10.244.0.1";
/// Label on every namespace [`Cluster::test_namespace`] creates; `kubernetes/local.sh up` deletes
/// such namespaces left by killed test runs when it restarts the cluster.
pub const TEST_NAMESPACE_LABEL: &str = "jbazel.dev/test-namespace";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SERVICE_ACCOUNT_DEADLINE: Duration = Duration::from_secs(30);
const HINT: &str =
    "start it with `integration/kubernetes/local.sh up` (and `image/build.sh` for the pod image)";

/// Why the cluster fixture could not do what a test asked.
#[derive(thiserror::Error)]
pub enum ClusterError {
    /// The kubeconfig is missing or invalid.
    #[error("cannot load kubeconfig {path} ({HINT})")]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    /// The kube client could not be built from the kubeconfig.
    #[error("cannot build a Kubernetes client from {path}")]
    Client { path: PathBuf, source: kube::Error },
    /// The API server did not answer.
    #[error("the API server of {path} does not answer: {reason}; {HINT}")]
    Unreachable { path: PathBuf, reason: String },
    /// The API server answers but no node is Ready.
    #[error("no Ready node in the cluster of {path} (nodes: {nodes}); {HINT}")]
    NoReadyNode { path: PathBuf, nodes: String },
    /// An API call failed.
    #[error("{action}")]
    Api { action: String, source: kube::Error },
    /// The watch behind a wait failed.
    #[error("watching {what} failed")]
    Watch {
        what: String,
        source: kube::runtime::wait::Error,
    },
    /// A wait ran past its deadline.
    #[error("timed out after {after:?} waiting for {what}; last seen: {last_seen}")]
    Timeout {
        what: String,
        after: Duration,
        last_seen: String,
    },
    /// The pod can no longer reach the goal (image missing, crash loop, failed, deleted).
    #[error("pod {namespace}/{pod} will not become {goal:?}: {reason}")]
    PodFailed {
        namespace: String,
        pod: String,
        goal: PodGoal,
        reason: String,
    },
}
debug_is_the_chain!(ClusterError);

/// The kubeconfig path tests use: the first entry of `KUBECONFIG`, else [`DEFAULT_KUBECONFIG`].
pub fn kubeconfig_path() -> PathBuf {
    std::env::var_os("KUBECONFIG")
        .and_then(|v| std::env::split_paths(&v).find(|p| !p.as_os_str().is_empty()))
        .unwrap_or_else(|| PathBuf::from(DEFAULT_KUBECONFIG))
}

/// A connection to the running local cluster, checked at creation.
#[derive(Clone)]
pub struct Cluster {
    client: Client,
    kubeconfig: PathBuf,
    node: String,
}

impl Cluster {
    /// Connects with [`kubeconfig_path`], checks the API server answers and a node is Ready.
    pub async fn connect() -> Result<Self, ClusterError> {
        Self::connect_with(&kubeconfig_path()).await
    }

    /// Like [`Cluster::connect`] with an explicit kubeconfig.
    pub async fn connect_with(kubeconfig: &Path) -> Result<Self, ClusterError> {
        proto::tls::install_crypto_provider();
        let path = kubeconfig.to_path_buf();
        let kc = Kubeconfig::read_from(&path).map_err(|source| ClusterError::Kubeconfig {
            path: path.clone(),
            source,
        })?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|source| ClusterError::Kubeconfig {
                path: path.clone(),
                source,
            })?;
        let client = Client::try_from(config).map_err(|source| ClusterError::Client {
            path: path.clone(),
            source,
        })?;
        let version = tokio::time::timeout(CONNECT_TIMEOUT, client.apiserver_version())
            .await
            .map_err(|_| ClusterError::Unreachable {
                path: path.clone(),
                reason: format!("no answer within {CONNECT_TIMEOUT:?}"),
            })?
            .map_err(|e| ClusterError::Unreachable {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let nodes = Api::<Node>::all(client.clone())
            .list(&ListParams::default())
            .await
            .map_err(|source| ClusterError::Api {
                action: "listing nodes".into(),
                source,
            })?;
        let node = nodes
            .items
            .iter()
            .find(|n| node_is_ready(n))
            .and_then(|n| n.metadata.name.clone())
            .ok_or_else(|| ClusterError::NoReadyNode {
                path: path.clone(),
                nodes: describe_nodes(&nodes.items),
            })?;
        tracing::debug!(kubeconfig = %path.display(), server = %version.git_version, node = %node, "connected to the cluster");
        Ok(Self {
            client,
            kubeconfig: path,
            node,
        })
    }

    /// The kube client (admin credentials).
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The kubeconfig this handle was made from (for child processes: `KUBECONFIG=...`).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The name of the Ready node.
    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Creates a namespace `<prefix>-<random>` labelled [`TEST_NAMESPACE_LABEL`], waits for
    /// its default service account (pods are refused until it exists), and deletes the
    /// namespace when the returned value is dropped.
    pub async fn test_namespace(&self, prefix: &str) -> Result<TestNamespace, ClusterError> {
        let name = unique_namespace_name(prefix, rand::random::<u32>());
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([(
                    TEST_NAMESPACE_LABEL.to_string(),
                    "true".to_string(),
                )])),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(self.client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|source| ClusterError::Api {
                action: format!("creating namespace {name}"),
                source,
            })?;
        let namespace = TestNamespace {
            name: name.clone(),
            client: self.client.clone(),
            kubeconfig: self.kubeconfig.clone(),
            deleted: false,
        };
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &name);
        let what = format!("service account {name}/default");
        tokio::time::timeout(
            SERVICE_ACCOUNT_DEADLINE,
            await_condition(sas, "default", |sa: Option<&ServiceAccount>| sa.is_some()),
        )
        .await
        .map_err(|_| ClusterError::Timeout {
            what: what.clone(),
            after: SERVICE_ACCOUNT_DEADLINE,
            last_seen: "absent (is kube-controller-manager running? kubernetes/local.sh status)"
                .into(),
        })?
        .map_err(|source| ClusterError::Watch { what, source })?;
        tracing::info!(namespace = %name, "test namespace ready");
        Ok(namespace)
    }
}

/// A namespace for one test; deleted (without waiting) on [`TestNamespace::cleanup`] or drop.
pub struct TestNamespace {
    name: String,
    client: Client,
    kubeconfig: PathBuf,
    deleted: bool,
}

impl TestNamespace {
    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pods of this namespace (a platform started on it puts no server pod here:
    /// see [`TestNamespace::user_pods`]).
    pub fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The namespace the orchestrator gives `user`'s pods when this is its platform
    /// namespace.
    pub fn user_namespace(&self, user: &str) -> String {
        orchestrator::pods::manifest::user_namespace(&self.name, user)
    }

    /// Every server pod of the platform whose namespace this is, in whichever namespace
    /// (they carry it in `jbazel.dev/platform-namespace`).
    pub async fn platform_pods(&self) -> Result<Vec<Pod>, ClusterError> {
        let selector = orchestrator::pods::manifest::platform_selector(&self.name);
        Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
            .map_err(|source| ClusterError::Api {
                action: format!("listing the pods of platform {}", self.name),
                source,
            })
    }

    /// The server pods of `user` (in [`TestNamespace::user_namespace`]).
    pub fn user_pods(&self, user: &str) -> Api<Pod> {
        Api::namespaced(self.client.clone(), &self.user_namespace(user))
    }

    /// A pod-bound service-account token for the server pod `pod` of `user` (uid `uid`),
    /// with the orchestrator's audience: exactly what the pod's projected token is, made
    /// through the TokenRequest API (as the harness's admin).
    pub async fn pod_token(
        &self,
        user: &str,
        pod: &str,
        uid: &str,
    ) -> Result<String, ClusterError> {
        use k8s_openapi::api::authentication::v1::{
            BoundObjectReference, TokenRequest, TokenRequestSpec,
        };
        let ns = self.user_namespace(user);
        let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![orchestrator::auth::POD_AUDIENCE.to_string()],
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".into()),
                    kind: Some("Pod".into()),
                    name: Some(pod.to_string()),
                    uid: Some(uid.to_string()),
                }),
                expiration_seconds: Some(600),
            },
            ..Default::default()
        };
        let answer = sas
            .create_token_request(
                orchestrator::auth::SERVER_SERVICE_ACCOUNT,
                &Default::default(),
                &request,
            )
            .await
            .map_err(|source| ClusterError::Api {
                action: format!("requesting a token for pod {ns}/{pod}"),
                source,
            })?;
        Ok(answer.status.map(|s| s.token).unwrap_or_default())
    }

    /// Deletes the namespace and the user namespaces the platform made under it, now (the
    /// API server finishes them in the background).
    pub async fn cleanup(mut self) -> Result<(), ClusterError> {
        self.deleted = true;
        let api = Api::<Namespace>::all(self.client.clone());
        let err = |what: String| {
            move |source| ClusterError::Api {
                action: what,
                source,
            }
        };
        let selector = format!(
            "{}={}",
            orchestrator::pods::manifest::LABEL_PLATFORM,
            self.name
        );
        let users = api
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(err(format!("listing the user namespaces of {}", self.name)))?;
        for ns in users.items {
            let name = ns.metadata.name.unwrap_or_default();
            api.delete(&name, &DeleteParams::background())
                .await
                .map_err(err(format!("deleting namespace {name}")))?;
        }
        api.delete(&self.name, &DeleteParams::background())
            .await
            .map_err(err(format!("deleting namespace {}", self.name)))?;
        Ok(())
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        // Drop cannot await, and the kube client's worker lives on the test's runtime which
        // this thread may be blocking: ask kubectl, synchronously. A namespace that survives
        // anyway (killed test) carries TEST_NAMESPACE_LABEL for `kubernetes/local.sh up` to collect.
        let users = format!(
            "{}={}",
            orchestrator::pods::manifest::LABEL_PLATFORM,
            self.name
        );
        let _ = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", "-l", &users, "--wait=false"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        let result = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
        match result {
            Ok(s) if s.success() => {}
            Ok(s) => {
                tracing::warn!(namespace = %self.name, status = %s, "kubectl delete namespace failed")
            }
            Err(e) => {
                tracing::warn!(namespace = %self.name, error = %ErrorChain(&e), "cannot run kubectl to delete the test namespace")
            }
        }
    }
}

/// What a test waits for a pod to reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodGoal {
    /// Phase Running (containers started; not necessarily Ready).
    Running,
    /// The Ready condition is True (readiness probes pass).
    Ready,
    /// Phase Succeeded or Failed (run-to-completion pods; the caller checks which).
    Finished,
}

/// Where a pod stands relative to a [`PodGoal`]: a pure reading of its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodProgress {
    /// The goal is reached.
    Reached,
    /// Not yet.
    Pending,
    /// It will not get there; the reason names what the kubelet reported.
    Failed(String),
}

/// Reads a pod's status against a goal (None: the pod does not exist).
pub fn pod_progress(pod: Option<&Pod>, goal: PodGoal) -> PodProgress {
    let Some(pod) = pod else {
        return PodProgress::Failed("the pod does not exist (deleted?)".into());
    };
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    match (goal, phase) {
        (PodGoal::Finished, "Succeeded" | "Failed") => return PodProgress::Reached,
        (PodGoal::Running, "Running") => return PodProgress::Reached,
        (PodGoal::Ready, "Running") if ready => return PodProgress::Reached,
        (_, "Succeeded" | "Failed") => {
            return PodProgress::Failed(format!(
                "the pod ended in phase {phase}: {}",
                describe_pod(pod)
            ))
        }
        _ => {}
    }
    let waiting = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|cs| cs.state.as_ref()?.waiting.as_ref());
    for w in waiting {
        let reason = w.reason.as_deref().unwrap_or("");
        // The orchestrator's own list: the harness and WatchServer agree on "hopeless".
        if orchestrator::pods::view::FAILURE_REASONS.contains(&reason) {
            let mut msg = format!("container waiting: {reason}");
            if let Some(m) = &w.message {
                msg.push_str(": ");
                msg.push_str(m);
            }
            if reason == "ErrImageNeverPull" {
                msg.push_str(" (import the image with image/build.sh)");
            }
            return PodProgress::Failed(msg);
        }
    }
    PodProgress::Pending
}

/// One line on a pod's state: phase, Ready, pod IP, container states.
pub fn describe_pod(pod: &Pod) -> String {
    let Some(status) = &pod.status else {
        return "no status yet".into();
    };
    let mut out = format!("phase {}", status.phase.as_deref().unwrap_or("?"));
    if let Some(ip) = &status.pod_ip {
        out.push_str(&format!(", ip {ip}"));
    }
    for c in status.conditions.iter().flatten() {
        if c.status != "True" {
            out.push_str(&format!(", {} {}", c.type_, c.status));
            if let Some(r) = &c.reason {
                out.push_str(&format!(" ({r})"));
            }
        }
    }
    for cs in status.container_statuses.iter().flatten() {
        let state = match &cs.state {
            Some(s) if s.running.is_some() => "running".to_string(),
            Some(s) => match (&s.waiting, &s.terminated) {
                (Some(w), _) => format!("waiting {}", w.reason.as_deref().unwrap_or("")),
                (_, Some(t)) => format!(
                    "terminated exit {} {}",
                    t.exit_code,
                    t.reason.as_deref().unwrap_or("")
                ),
                _ => "unknown".into(),
            },
            None => "unknown".into(),
        };
        out.push_str(&format!(", container {} {}", cs.name, state.trim_end()));
    }
    out
}

/// Waits until the pod reaches `goal`, watching it (no polling), for at most `deadline`.
/// Returns the pod as last seen; fails early when [`pod_progress`] says it never will.
pub async fn wait_for_pod(
    pods: &Api<Pod>,
    name: &str,
    goal: PodGoal,
    deadline: Duration,
) -> Result<Pod, ClusterError> {
    let namespace = pods.namespace().unwrap_or("default").to_string();
    let what = format!("pod {namespace}/{name} to be {goal:?}");
    let waited = tokio::time::timeout(
        deadline,
        await_condition(pods.clone(), name, move |p: Option<&Pod>| {
            pod_progress(p, goal) != PodProgress::Pending
        }),
    )
    .await;
    let pod = match waited {
        Ok(result) => result.map_err(|source| ClusterError::Watch {
            what: what.clone(),
            source,
        })?,
        Err(_) => {
            let last_seen = match pods.get_opt(name).await {
                Ok(Some(p)) => describe_pod(&p),
                Ok(None) => "absent".into(),
                Err(e) => format!("cannot read it: {e}"),
            };
            return Err(ClusterError::Timeout {
                what,
                after: deadline,
                last_seen,
            });
        }
    };
    match pod_progress(pod.as_ref(), goal) {
        PodProgress::Reached => pod.ok_or_else(|| ClusterError::PodFailed {
            namespace,
            pod: name.into(),
            goal,
            reason: "the pod vanished".into(),
        }),
        PodProgress::Failed(reason) => Err(ClusterError::PodFailed {
            namespace,
            pod: name.into(),
            goal,
            reason,
        }),
        PodProgress::Pending => {
            unreachable!("await_condition returns only once the condition holds")
        }
    }
}

/// Deletes a pod and waits (watching, for at most `deadline`) until it is gone.
/// The Bazel server pods of one repository that are not going away (any user, any
/// generation), as the API server lists them now.
pub async fn live_server_pods(pods: &Api<Pod>, repo_hash: &str) -> Result<Vec<Pod>, kube::Error> {
    let selector = format!(
        "{}={repo_hash}",
        orchestrator::pods::manifest::LABEL_REPO_HASH
    );
    Ok(pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

pub async fn delete_pod_and_wait(
    pods: &Api<Pod>,
    name: &str,
    grace_seconds: u32,
    deadline: Duration,
) -> Result<(), ClusterError> {
    let namespace = pods.namespace().unwrap_or("default").to_string();
    let params = DeleteParams {
        grace_period_seconds: Some(grace_seconds),
        ..DeleteParams::default()
    };
    let deleted = pods
        .delete(name, &params)
        .await
        .map_err(|source| ClusterError::Api {
            action: format!("deleting pod {namespace}/{name}"),
            source,
        })?;
    let uid = deleted
        .either(|p| p.metadata.uid, |s| s.details.map(|d| d.uid))
        .unwrap_or_default();
    let what = format!("pod {namespace}/{name} to be deleted");
    tokio::time::timeout(
        deadline,
        await_condition(pods.clone(), name, conditions::is_deleted(&uid)),
    )
    .await
    .map_err(|_| ClusterError::Timeout {
        what: what.clone(),
        after: deadline,
        last_seen: "still present".into(),
    })?
    .map_err(|source| ClusterError::Watch { what, source })?;
    Ok(())
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn describe_nodes(nodes: &[Node]) -> String {
    if nodes.is_empty() {
        return "none registered".into();
    }
    nodes
        .iter()
        .map(|n| {
            let name = n.metadata.name.as_deref().unwrap_or("?");
            let ready = if node_is_ready(n) {
                "Ready"
            } else {
                "NotReady"
            };
            format!("{name} {ready}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `<prefix>-<8 hex>`, lower-cased and cut to a valid namespace name (63 chars).
pub fn unique_namespace_name(prefix: &str, salt: u32) -> String {
    let clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "test" } else { clean };
    let suffix = format!("-{salt:08x}");
    let keep = 63 - suffix.len();
    let head: String = clean.chars().take(keep).collect();
    format!("{}{suffix}", head.trim_end_matches('-'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateWaiting, ContainerStatus, PodCondition, PodStatus,
    };

    fn pod(phase: &str, ready: bool, waiting: Option<&str>) -> Pod {
        Pod {
            status: Some(PodStatus {
                phase: Some(phase.into()),
                conditions: Some(vec![PodCondition {
                    type_: "Ready".into(),
                    status: if ready { "True" } else { "False" }.into(),
                    ..PodCondition::default()
                }]),
                container_statuses: waiting.map(|reason| {
                    vec![ContainerStatus {
                        name: "c".into(),
                        state: Some(ContainerState {
                            waiting: Some(ContainerStateWaiting {
                                reason: Some(reason.into()),
                                message: None,
                            }),
                            ..ContainerState::default()
                        }),
                        ..ContainerStatus::default()
                    }]
                }),
                ..PodStatus::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn pod_progress_table() {
        use PodGoal::*;
        let cases: &[(Pod, PodGoal, &str)] = &[
            (pod("Pending", false, None), Running, "pending"),
            (
                pod("Pending", false, Some("ContainerCreating")),
                Running,
                "pending",
            ),
            (
                pod("Pending", false, Some("ErrImageNeverPull")),
                Running,
                "failed",
            ),
            (
                pod("Pending", false, Some("ErrImageNeverPull")),
                Finished,
                "failed",
            ),
            (
                pod("Running", false, Some("CrashLoopBackOff")),
                Ready,
                "failed",
            ),
            (pod("Running", false, None), Running, "reached"),
            (pod("Running", false, None), Ready, "pending"),
            (pod("Running", true, None), Ready, "reached"),
            (pod("Running", true, None), Finished, "pending"),
            (pod("Succeeded", false, None), Finished, "reached"),
            (pod("Failed", false, None), Finished, "reached"),
            (pod("Succeeded", false, None), Running, "failed"),
            (pod("Failed", false, None), Ready, "failed"),
        ];
        for (p, goal, want) in cases {
            let got = match pod_progress(Some(p), *goal) {
                PodProgress::Reached => "reached",
                PodProgress::Pending => "pending",
                PodProgress::Failed(_) => "failed",
            };
            assert_eq!(got, *want, "goal {goal:?} for {}", describe_pod(p));
        }
        assert!(matches!(
            pod_progress(None, Running),
            PodProgress::Failed(_)
        ));
    }

    #[test]
    fn image_never_pull_names_the_fix() {
        let p = pod("Pending", false, Some("ErrImageNeverPull"));
        let PodProgress::Failed(reason) = pod_progress(Some(&p), PodGoal::Running) else {
            panic!("expected Failed");
        };
        assert!(reason.contains("image/build.sh"), "{reason}");
    }

    #[test]
    fn namespace_names_are_valid() {
        let cases = [
            ("cluster", 0xabc, "cluster-00000abc"),
            ("Pod_Start Test", 1, "pod-start-test-00000001"),
            ("--", 2, "test-00000002"),
        ];
        for (prefix, salt, want) in cases {
            assert_eq!(unique_namespace_name(prefix, salt), want);
        }
        let long = unique_namespace_name(&"x".repeat(100), 7);
        assert_eq!(long.len(), 63);
        assert!(long.ends_with("-00000007"));
    }

    #[tokio::test]
    async fn missing_kubeconfig_fails_with_the_path_and_the_fix() {
        let err = Cluster::connect_with(Path::new("/nonexistent/jbazel/admin.kubeconfig"))
            .await
            .err()
            .expect("connecting without a kubeconfig must fail");
        let msg = err.to_string();
        assert!(matches!(err, ClusterError::Kubeconfig { .. }), "{msg}");
        assert!(
            msg.contains("/nonexistent/jbazel/admin.kubeconfig"),
            "{msg}"
        );
        assert!(msg.contains("kubernetes/local.sh up"), "{msg}");
    }

    #[tokio::test]
    async fn dead_api_server_fails_as_unreachable() {
        // A port nothing listens on: connection refused, at once.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: x\n  context: {{cluster: c, user: u}}\ncurrent-context: x\n"
            ),
        )
        .expect("write kubeconfig");
        let err = Cluster::connect_with(&path)
            .await
            .err()
            .expect("a dead API server must fail");
        assert!(
            matches!(err, ClusterError::Unreachable { .. }),
            "unexpected error: {err}"
        );
    }

    #[test]
    fn kubeconfig_path_defaults_to_the_cluster_admin() {
        // Only meaningful when the environment does not set KUBECONFIG.
        if std::env::var_os("KUBECONFIG").is_none() {
            assert_eq!(kubeconfig_path(), PathBuf::from(DEFAULT_KUBECONFIG));
        } else {
            assert_ne!(kubeconfig_path().as_os_str(), "");
        }
    }
}
