//! `PodSpecFor`: the pod of one session, as a pure function of (user, repo, session) and
//! the orchestrator's settings. No I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    HostPathVolumeSource, ObjectFieldSelector, Pod, PodSpec, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use md5::{Digest, Md5};
use proto::names::{RepoHash, SessionId, UserId};
use proto::pod::env as pod_env;

/// `app.kubernetes.io/name`: the platform's label; the reconciler watches it.
pub const LABEL_APP: &str = "app.kubernetes.io/name";
/// Value of [`LABEL_APP`] on every Bazel server pod.
pub const APP: &str = "jbazel-server";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "jbazel-orchestrator";
pub const LABEL_USER: &str = "jbazel.dev/user";
pub const LABEL_REPO_HASH: &str = "jbazel.dev/repo-hash";
pub const LABEL_SESSION: &str = "jbazel.dev/session";
/// The row generation the pod was made for (the fencing token; see `session`).
pub const LABEL_GENERATION: &str = "jbazel.dev/generation";
/// Annotation: the repository's directory in the filestore (`R/U/H`), for people.
pub const ANNOTATION_REPO_DIR: &str = "jbazel.dev/repo-dir";
/// The label selector of every platform pod.
pub const APP_SELECTOR: &str = "app.kubernetes.io/name=jbazel-server";
/// The platform namespace a pod belongs to (its user namespace is derived from it): a
/// platform's replicas watch only their own pods, whatever else shares the cluster.
pub const LABEL_PLATFORM: &str = "jbazel.dev/platform-namespace";

/// The label selector of this platform's pods (those of every user namespace of
/// `namespace`).
pub fn platform_selector(namespace: &str) -> String {
    format!("{APP_SELECTOR},{LABEL_PLATFORM}={namespace}")
}

/// The service account of every server pod, one in each user namespace, with no role:
/// its only use is the pod-bound token ReportReady presents (`auth::POD_AUDIENCE`).
pub const SERVER_SERVICE_ACCOUNT: &str = crate::auth::SERVER_SERVICE_ACCOUNT;
/// Where the pod's bound token is mounted (read by the supervisor, root-only).
pub const TOKEN_DIR: &str = "/var/run/secrets/jbazel";
/// The token file in [`TOKEN_DIR`].
pub const TOKEN_FILE: &str = "token";
/// Lifetime of the bound token; the kubelet renews it at 80%.
const TOKEN_SECONDS: i64 = 3600;
/// The container's name.
pub const CONTAINER: &str = "bazel-server";
/// The supervisor's health endpoint (it listens on 0.0.0.0:8080: `supervisor::cli`'s
/// default; `GET /readyz` answers 200 while Bazel answers Ping).
pub const HEALTH_PORT: i32 = proto::pod::HEALTH_PORT as i32;
pub const READYZ_PATH: &str = proto::pod::READYZ_PATH;
/// 200 while the supervisor lives (liveness).
pub const HEALTHZ_PATH: &str = proto::pod::HEALTHZ_PATH;
/// The supervisor binary in the image (its ENTRYPOINT); `supervisor probe` checks readiness.
pub const SUPERVISOR_BIN: &str = "/usr/local/bin/supervisor";

const NAME_PREFIX: &str = "bazel-";
const MAX_NAME: usize = 63;
/// Hex digits of md5(user, repo_hash) in the pod name.
const KEY_DIGEST: usize = 16;

/// `imagePullPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PullPolicy {
    #[value(name = "Always", alias = "always")]
    Always,
    #[value(name = "IfNotPresent", alias = "if-not-present")]
    IfNotPresent,
    #[value(name = "Never", alias = "never")]
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

impl fmt::Display for PullPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PullPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "Always" => Ok(PullPolicy::Always),
            "IfNotPresent" => Ok(PullPolicy::IfNotPresent),
            "Never" => Ok(PullPolicy::Never),
            _ => Err(format!("unknown image pull policy {s:?}")),
        }
    }
}

/// How the kubelet checks readiness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProbeMode {
    /// `httpGet` on the supervisor's `/readyz` (port 8080). The kubelet reaches pod IPs
    /// because the cluster's bridge is the gateway (isGateway true).
    Http,
    /// `exec` of `supervisor probe` inside the container, for clusters where the kubelet
    /// cannot reach pod IPs.
    Exec,
}

/// Everything about the pod that comes from the orchestrator's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSettings {
    /// The platform's namespace; user U's pods live in [`user_namespace`]`(namespace, U)`.
    pub namespace: String,
    /// PEM of the CA that verifies the orchestrator's TLS certificate, given to the pods
    /// (`ORCHESTRATOR_CA_PEM`) for ReportReady; `None` with a plaintext orchestrator.
    pub orchestrator_ca_pem: Option<String>,
    pub image: String,
    pub pull_policy: PullPolicy,
    /// The filestore root R, mounted (hostPath) at the same path R in the pod.
    pub filestore_root: PathBuf,
    /// What pods get as `ORCHESTRATOR_ADDR` (a URL the pod can reach).
    pub orchestrator_addr: String,
    pub termination_grace_seconds: i64,
    pub probe: ProbeMode,
    /// nodeSelector of the pods (e.g. a node pool for Bazel servers); empty: any node.
    pub node_selector: BTreeMap<String, String>,
    /// Seconds without a command after which Bazel (`--max_idle_secs`) and with it the
    /// pod end; the row becomes IDLE and the output base stays.
    pub idle_timeout_secs: u64,
    /// Container requests and limits (Kubernetes quantities); `None`: not set.
    pub resources: PodResources,
    /// CIDRs the pods may reach besides the orchestrator (an artifact mirror, DNS); the
    /// user namespace's NetworkPolicy denies every other egress.
    pub egress_allow: Vec<String>,
}

/// The container's requests and limits. The supervisor sizes the JVM heap from the
/// memory limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodResources {
    pub cpu_request: Option<String>,
    pub memory_request: Option<String>,
    pub cpu_limit: Option<String>,
    pub memory_limit: Option<String>,
}

impl PodResources {
    fn requirements(&self) -> Option<ResourceRequirements> {
        let map = |pairs: [(&str, &Option<String>); 2]| {
            let m: BTreeMap<String, Quantity> = pairs
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), Quantity(v.clone()))))
                .collect();
            (!m.is_empty()).then_some(m)
        };
        let requests = map([("cpu", &self.cpu_request), ("memory", &self.memory_request)]);
        let limits = map([("cpu", &self.cpu_limit), ("memory", &self.memory_limit)]);
        (requests.is_some() || limits.is_some()).then(|| ResourceRequirements {
            requests,
            limits,
            ..Default::default()
        })
    }
}

impl Default for PodSettings {
    fn default() -> Self {
        PodSettings {
            namespace: "jbazel".into(),
            orchestrator_ca_pem: None,
            image: "docker.io/library/jbazel-bazel-server:dev".into(),
            pull_policy: PullPolicy::Never,
            filestore_root: PathBuf::from(proto::pod::DEFAULT_FILESTORE_ROOT),
            // No default address: it depends on the cluster's network (the orchestrator's
            // CLI requires it). Empty: the pods do not report (the probe path still works).
            orchestrator_addr: String::new(),
            termination_grace_seconds: 10,
            probe: ProbeMode::Http,
            node_selector: BTreeMap::new(),
            // Bazel's own default idle time (3 h).
            idle_timeout_secs: 3 * 3600,
            resources: PodResources::default(),
            egress_allow: Vec::new(),
        }
    }
}

/// The namespace of `user`'s pods: `<platform namespace>-<user>`, or, when that is longer
/// than a namespace may be, its first 54 characters and 8 hex digits of md5(namespace NUL
/// user), so two users never share one. One namespace per user is what lets RBAC say
/// "alice may port-forward to her pods and to no one else's" (a RoleBinding of the
/// `jbazel-user` ClusterRole in her namespace), and what scopes the pods' service account.
pub fn user_namespace(namespace: &str, user_id: &str) -> String {
    let full = format!("{namespace}-{user_id}");
    if full.len() <= MAX_NAME {
        return full;
    }
    let digest = hex::encode(Md5::digest(format!("{namespace}\0{user_id}").as_bytes()));
    let head = full[..54].trim_end_matches('-');
    format!("{head}-{}", &digest[..8])
}

/// The pod name of one generation of (user, repo): `bazel-<user>-<digest>-g<generation>`,
/// a DNS label. `digest` is 16 hex digits of md5(user NUL repo_hash): it covers the whole
/// user id and the whole RepoHash, so two repositories of one user never share a name,
/// whatever their hashes' prefixes, and cutting or escaping the readable user part never
/// merges two users. The generation makes each pod of the row's life its own name: a new
/// pod never waits for an old one to leave the name.
pub fn pod_name(user_id: &str, repo_hash: &str, generation: u64) -> String {
    let digest = hex::encode(Md5::digest(format!("{user_id}\0{repo_hash}").as_bytes()));
    let tail = format!("-{}-g{generation}", &digest[..KEY_DIGEST]);
    let room = MAX_NAME - NAME_PREFIX.len() - tail.len();
    let user: String = escape(user_id).chars().take(room).collect();
    let user = user.trim_matches('-');
    if user.is_empty() {
        format!("{}{}", NAME_PREFIX.trim_end_matches('-'), tail)
    } else {
        format!("{NAME_PREFIX}{user}{tail}")
    }
}

/// The generation whose pod name `name` is for (user, repo), if it is one: `name` must be
/// exactly [`pod_name`] of that generation.
pub fn generation_in_name(user_id: &str, repo_hash: &str, name: &str) -> Option<u64> {
    let (_, digits) = name.rsplit_once("-g")?;
    if digits.is_empty() || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let generation: u64 = digits.parse().ok()?;
    (pod_name(user_id, repo_hash, generation) == name).then_some(generation)
}

/// Lower-cases ASCII letters and replaces anything outside `[a-z0-9-]` with `-`.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect()
}

/// The pod of one session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpecFor<'a> {
    pub user_id: &'a UserId,
    pub repo_hash: &'a RepoHash,
    pub session_id: &'a SessionId,
    /// The row generation this pod serves.
    pub generation: u64,
}

impl PodSpecFor<'_> {
    pub fn name(&self) -> String {
        pod_name(self.user_id, self.repo_hash, self.generation)
    }

    /// The fence this pod reports under.
    pub fn fence(&self) -> crate::session::Fence {
        crate::session::Fence {
            session_id: self.session_id.clone(),
            generation: self.generation,
        }
    }

    /// The labels identifying the pod; the session label is what fencing checks.
    pub fn labels(&self, settings: &PodSettings) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_PLATFORM.to_string(), settings.namespace.clone()),
            (LABEL_APP.to_string(), APP.to_string()),
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_USER.to_string(), self.user_id.to_string()),
            (LABEL_REPO_HASH.to_string(), self.repo_hash.to_string()),
            (LABEL_SESSION.to_string(), self.session_id.to_string()),
            (LABEL_GENERATION.to_string(), self.generation.to_string()),
        ])
    }

    /// The full manifest: [`PodSpecFor::metadata`], and the pod spec around
    /// [`PodSpecFor::container`] and [`volumes`].
    pub fn manifest(&self, settings: &PodSettings) -> Pod {
        Pod {
            metadata: self.metadata(settings),
            spec: Some(PodSpec {
                containers: vec![self.container(settings)],
                volumes: Some(volumes(settings)),
                service_account_name: Some(SERVER_SERVICE_ACCOUNT.to_string()),
                // Restart a crashed supervisor in place; exit 0 (Bazel idled out) ends
                // the pod, and the reconciler marks the row IDLE.
                restart_policy: Some("OnFailure".to_string()),
                // The supervisor shuts Bazel down on SIGTERM within this; a bounce's new
                // pod starts at once and waits for the old server's output-base lock.
                termination_grace_period_seconds: Some(settings.termination_grace_seconds),
                // The pod never calls the Kubernetes API: no API token (only the bound
                // one of the volumes), no service env vars.
                automount_service_account_token: Some(false),
                enable_service_links: Some(false),
                // The pod resolves no cluster names (it reaches the orchestrator by IP), and
                // clusters without cluster DNS warn on every sync under ClusterFirst.
                dns_policy: Some("Default".to_string()),
                node_selector: (!settings.node_selector.is_empty())
                    .then(|| settings.node_selector.clone()),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// Name, user namespace, labels ([`PodSpecFor::labels`]) and annotations.
    pub fn metadata(&self, settings: &PodSettings) -> ObjectMeta {
        let repo_dir = settings
            .filestore_root
            .join(self.user_id)
            .join(self.repo_hash);
        ObjectMeta {
            name: Some(self.name()),
            namespace: Some(user_namespace(&settings.namespace, self.user_id)),
            labels: Some(self.labels(settings)),
            annotations: Some(BTreeMap::from([
                (LABEL_USER.to_string(), self.user_id.to_string()),
                (LABEL_REPO_HASH.to_string(), self.repo_hash.to_string()),
                (LABEL_SESSION.to_string(), self.session_id.to_string()),
                (
                    ANNOTATION_REPO_DIR.to_string(),
                    repo_dir.to_string_lossy().into_owned(),
                ),
                // A bare pod with a hostPath volume keeps the cluster autoscaler from
                // removing its node; the server's state is on the filestore, so an
                // eviction only costs a respawn on the kept output base.
                (
                    "cluster-autoscaler.kubernetes.io/safe-to-evict".to_string(),
                    "true".to_string(),
                ),
            ])),
            ..Default::default()
        }
    }

    /// The supervisor's container: image, [`PodSpecFor::env`], the health port and its
    /// probes, the mounts of [`volumes`], resources and [`security_context`].
    pub fn container(&self, settings: &PodSettings) -> Container {
        Container {
            name: CONTAINER.to_string(),
            image: Some(settings.image.clone()),
            image_pull_policy: Some(settings.pull_policy.as_str().to_string()),
            env: Some(self.env(settings)),
            ports: Some(vec![ContainerPort {
                name: Some("health".to_string()),
                container_port: HEALTH_PORT,
                protocol: Some("TCP".to_string()),
                ..Default::default()
            }]),
            volume_mounts: Some(volume_mounts(settings)),
            readiness_probe: Some(readiness_probe(settings.probe)),
            resources: settings.resources.requirements(),
            // The supervisor writes `proto::pod::idle_message` here when Bazel idled out.
            termination_message_path: Some(proto::pod::TERMINATION_LOG.to_string()),
            // A hung supervisor is restarted; generous, since a busy node is not a hang.
            liveness_probe: (settings.probe == ProbeMode::Http).then(|| Probe {
                http_get: Some(HTTPGetAction {
                    path: Some(HEALTHZ_PATH.to_string()),
                    port: IntOrString::Int(HEALTH_PORT),
                    ..Default::default()
                }),
                initial_delay_seconds: Some(10),
                period_seconds: Some(10),
                timeout_seconds: Some(5),
                failure_threshold: Some(6),
                ..Default::default()
            }),
            security_context: Some(security_context()),
            ..Default::default()
        }
    }

    /// The supervisor's environment (`proto::pod::env`): who the pod serves, where the
    /// filestore is, how to report, and the pod's own name and address.
    pub fn env(&self, settings: &PodSettings) -> Vec<EnvVar> {
        let env = |name: &str, value: &str| EnvVar {
            name: name.to_string(),
            value: Some(value.to_string()),
            value_from: None,
        };
        let field = |name: &str, path: &str| EnvVar {
            name: name.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: path.to_string(),
                    api_version: None,
                }),
                ..Default::default()
            }),
        };
        vec![
            env(pod_env::USER_ID, self.user_id),
            env(pod_env::REPO_HASH, self.repo_hash),
            env(pod_env::SESSION_ID, self.session_id),
            env(
                pod_env::FILESTORE_ROOT,
                &settings.filestore_root.to_string_lossy(),
            ),
            // The supervisor must finish Bazel's clean shutdown before the kubelet's
            // SIGKILL: its own grace is the pod's minus a 2 s margin.
            env(
                pod_env::GRACE_PERIOD_SECS,
                &(settings.termination_grace_seconds - 2).max(1).to_string(),
            ),
            env(pod_env::ORCHESTRATOR_ADDR, &settings.orchestrator_addr),
            env(
                pod_env::ORCHESTRATOR_CA_PEM,
                settings.orchestrator_ca_pem.as_deref().unwrap_or(""),
            ),
            env(pod_env::TOKEN_FILE, &format!("{TOKEN_DIR}/{TOKEN_FILE}")),
            env(
                pod_env::IDLE_TIMEOUT_SECS,
                &settings.idle_timeout_secs.to_string(),
            ),
            field(pod_env::POD_NAME, "metadata.name"),
            field(pod_env::POD_NAMESPACE, "metadata.namespace"),
            field(pod_env::POD_IP, "status.podIP"),
        ]
    }
}

/// The volume of the filestore root R (hostPath R, mounted at R).
const VOLUME_FILESTORE: &str = "filestore";
/// The volume of the pod's bound token (mounted at [`TOKEN_DIR`]).
const VOLUME_REPORT_TOKEN: &str = "report-token";

/// The pod's volumes: the filestore root R from the node, and the pod's only credential.
pub fn volumes(settings: &PodSettings) -> Vec<Volume> {
    vec![
        Volume {
            name: VOLUME_FILESTORE.to_string(),
            host_path: Some(HostPathVolumeSource {
                path: settings.filestore_root.to_string_lossy().into_owned(),
                type_: Some("DirectoryOrCreate".to_string()),
            }),
            ..Default::default()
        },
        // The pod's only credential: a token bound to this pod (the API server
        // invalidates it when the pod goes) for the orchestrator's audience alone,
        // readable by root only (Bazel runs as the tree's owner).
        Volume {
            name: VOLUME_REPORT_TOKEN.to_string(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(0o400),
                sources: Some(vec![VolumeProjection {
                    service_account_token: Some(ServiceAccountTokenProjection {
                        audience: Some(crate::auth::POD_AUDIENCE.to_string()),
                        expiration_seconds: Some(TOKEN_SECONDS),
                        path: TOKEN_FILE.to_string(),
                    }),
                    ..Default::default()
                }]),
            }),
            ..Default::default()
        },
    ]
}

/// Where the container mounts [`volumes`]: R at the same path R, the token read-only.
pub fn volume_mounts(settings: &PodSettings) -> Vec<VolumeMount> {
    vec![
        VolumeMount {
            name: VOLUME_FILESTORE.to_string(),
            mount_path: settings.filestore_root.to_string_lossy().into_owned(),
            ..Default::default()
        },
        VolumeMount {
            name: VOLUME_REPORT_TOKEN.to_string(),
            mount_path: TOKEN_DIR.to_string(),
            read_only: Some(true),
            ..Default::default()
        },
    ]
}

/// The readiness probe: the supervisor's `/readyz` (over HTTP, or by `supervisor probe`
/// in the container).
fn readiness_probe(mode: ProbeMode) -> Probe {
    match mode {
        ProbeMode::Http => Probe {
            http_get: Some(HTTPGetAction {
                path: Some(READYZ_PATH.to_string()),
                port: IntOrString::Int(HEALTH_PORT),
                ..Default::default()
            }),
            ..readiness_timing()
        },
        ProbeMode::Exec => Probe {
            exec: Some(ExecAction {
                command: Some(vec![SUPERVISOR_BIN.to_string(), "probe".to_string()]),
            }),
            ..readiness_timing()
        },
    }
}

/// The container's privileges: exactly the supervisor's capabilities.
pub fn security_context() -> SecurityContext {
    SecurityContext {
        // The supervisor pivots with unshare(CLONE_NEWNS) + bind mounts, then switches to
        // the tree owner's uid: that needs the few capabilities of
        // `proto::pod::CAPABILITIES` (each explained there and by `supervisor --dry-run`)
        // and nothing else that `privileged` would grant. Bazel and every action run with
        // none of them (bounding set emptied, no_new_privs) as the owner's uid.
        privileged: Some(false),
        capabilities: Some(Capabilities {
            add: Some(proto::pod::capability_names().map(str::to_string).collect()),
            drop: Some(vec!["ALL".to_string()]),
        }),
        // Seccomp: the container runtime's RuntimeDefault profile blocks unshare(2) and
        // mount(2) even with CAP_SYS_ADMIN on the local cluster, so the pivot needs
        // Unconfined at the container level. What runs after the pivot gets the
        // supervisor's own filter instead (see supervisor::pivot).
        seccomp_profile: Some(SeccompProfile {
            type_: "Unconfined".to_string(),
            localhost_profile: None,
        }),
        // allowPrivilegeEscalation is left unset: the API rejects `false` together with
        // CAP_SYS_ADMIN.
        ..Default::default()
    }
}

fn readiness_timing() -> Probe {
    Probe {
        // Bazel answers Ping 2.3-3.1 s after start (measured on the local cluster): probe
        // every second.
        initial_delay_seconds: Some(1),
        period_seconds: Some(1),
        timeout_seconds: Some(1),
        success_threshold: Some(1),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "0123456789abcdef0123456789abcdef";

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn pod_names() {
        let name = pod_name("alice", HASH, 1);
        assert!(name.starts_with("bazel-alice-"), "{name}");
        assert!(name.ends_with("-g1"), "{name}");
        assert!(is_dns_label(&name), "{name}");
        // Deterministic, and a new name per generation.
        assert_eq!(name, pod_name("alice", HASH, 1));
        assert_ne!(name, pod_name("alice", HASH, 2));
    }

    #[test]
    fn generations_are_read_back_from_exact_names_only() {
        let name = pod_name("alice", HASH, 12);
        assert_eq!(generation_in_name("alice", HASH, &name), Some(12));
        assert_eq!(generation_in_name("bob", HASH, &name), None);
        let other = "fedcba9876543210fedcba9876543210";
        assert_eq!(generation_in_name("alice", other, &name), None);
        for bad in [
            "",
            "-g",
            "bazel-alice-g",
            &format!("{name}0x"),
            &format!("{name}-g1"),
        ] {
            assert_eq!(generation_in_name("alice", HASH, bad), None, "{bad}");
        }
    }

    #[test]
    fn the_whole_repo_hash_is_in_the_key() {
        // Same user, hashes sharing 8, 16 and 31 hex digits: distinct names.
        let other8 = "01234567ffffffffffffffffffffffff";
        let other16 = "0123456789abcdefffffffffffffffff";
        let other31 = "0123456789abcdef0123456789abcdee";
        let names: std::collections::HashSet<_> = [HASH, other8, other16, other31]
            .iter()
            .map(|h| pod_name("alice", h, 1))
            .collect();
        assert_eq!(names.len(), 4);
    }

    #[test]
    fn long_or_odd_users_still_give_distinct_dns_labels() {
        let long63 = "v".repeat(63);
        for user in [long63.as_str(), "Alice", "a.b", "../etc", "ålice", "", "-"] {
            for generation in [1, 42, u64::MAX] {
                let name = pod_name(user, HASH, generation);
                assert!(is_dns_label(&name), "{user:?} -> {name}");
                assert!(name.starts_with("bazel-"), "{name}");
            }
        }
        let a = pod_name(&format!("{}a", "x".repeat(50)), HASH, 1);
        let b = pod_name(&format!("{}b", "x".repeat(50)), HASH, 1);
        assert_ne!(a, b);
        assert_ne!(pod_name("Alice", HASH, 1), pod_name("alice", HASH, 1));
    }

    fn settings() -> PodSettings {
        PodSettings {
            filestore_root: PathBuf::from("/srv/fs"),
            orchestrator_addr: "http://192.0.2.1:50051".into(),
            ..PodSettings::default()
        }
    }

    /// alice's pod of session boot-1, generation 7.
    fn with_spec<T>(f: impl FnOnce(&PodSpecFor<'_>) -> T) -> T {
        f(&PodSpecFor {
            user_id: &UserId::parse("alice").expect("valid"),
            repo_hash: &RepoHash::parse(HASH).expect("valid"),
            session_id: &SessionId::parse("boot-1").expect("valid"),
            generation: 7,
        })
    }

    #[test]
    fn metadata_names_the_pod_in_the_users_namespace_with_its_fence() {
        let meta = with_spec(|spec| spec.metadata(&settings()));
        assert_eq!(
            meta.name.as_deref(),
            Some(pod_name("alice", HASH, 7).as_str())
        );
        assert_eq!(
            meta.namespace.as_deref(),
            Some("jbazel-alice"),
            "each user's pods in the user's own namespace"
        );
        let labels = meta.labels.clone().unwrap_or_default();
        assert_eq!(labels[LABEL_APP], "jbazel-server");
        assert_eq!(labels[LABEL_USER], "alice");
        assert_eq!(labels[LABEL_REPO_HASH], HASH);
        assert_eq!(labels[LABEL_SESSION], "boot-1");
        assert_eq!(labels[LABEL_GENERATION], "7");
        assert_eq!(
            labels[LABEL_PLATFORM], "jbazel",
            "a platform watches only its own pods"
        );
        assert_eq!(
            platform_selector("jbazel"),
            "app.kubernetes.io/name=jbazel-server,jbazel.dev/platform-namespace=jbazel"
        );
        let annotations = meta.annotations.clone().unwrap_or_default();
        assert_eq!(
            annotations[ANNOTATION_REPO_DIR],
            format!("/srv/fs/alice/{HASH}")
        );
        assert_eq!(
            annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"],
            "true"
        );
    }

    #[test]
    fn the_pod_spec_has_no_api_token_and_restarts_only_on_failure() {
        let pod = with_spec(|spec| spec.manifest(&settings()));
        assert_eq!(pod.metadata, with_spec(|spec| spec.metadata(&settings())));
        let spec = pod.spec.expect("spec");
        assert_eq!(
            spec.containers,
            vec![with_spec(|s| s.container(&settings()))]
        );
        assert_eq!(spec.volumes, Some(volumes(&settings())));
        assert_eq!(spec.termination_grace_period_seconds, Some(10));
        assert_eq!(spec.automount_service_account_token, Some(false));
        assert_eq!(spec.enable_service_links, Some(false));
        assert_eq!(spec.dns_policy.as_deref(), Some("Default"));
        assert_eq!(spec.node_selector, None);
        assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"));
        assert_eq!(spec.service_account_name.as_deref(), Some("jbazel-server"));
    }

    #[test]
    fn volumes_are_the_filestore_and_a_root_only_bound_token() {
        let volumes = volumes(&settings());
        let host_path = volumes[0].host_path.as_ref().expect("hostPath");
        assert_eq!(host_path.path, "/srv/fs");
        let token = volumes[1].projected.as_ref().expect("projected token");
        assert_eq!(token.default_mode, Some(0o400), "root-only");
        let sat = token.sources.as_ref().expect("sources")[0]
            .service_account_token
            .as_ref()
            .expect("bound token");
        assert_eq!(sat.audience.as_deref(), Some("jbazel-orchestrator"));
        let mounts = volume_mounts(&settings());
        let at: Vec<_> = mounts
            .iter()
            .map(|m| (m.name.as_str(), m.mount_path.as_str(), m.read_only))
            .collect();
        assert_eq!(
            at,
            [
                (volumes[0].name.as_str(), "/srv/fs", None),
                (volumes[1].name.as_str(), TOKEN_DIR, Some(true)),
            ],
            "R at the same path R; the token read-only"
        );
    }

    #[test]
    fn env_tells_the_supervisor_who_where_and_how_to_report() {
        let env: BTreeMap<_, _> = with_spec(|spec| spec.env(&settings()))
            .into_iter()
            .map(|e| {
                let v = e.value.clone().or_else(|| {
                    e.value_from
                        .as_ref()
                        .and_then(|f| f.field_ref.as_ref())
                        .map(|f| format!("fieldRef:{}", f.field_path))
                });
                (e.name, v.unwrap_or_default())
            })
            .collect();
        assert_eq!(env[pod_env::USER_ID], "alice");
        assert_eq!(env[pod_env::REPO_HASH], HASH);
        assert_eq!(env[pod_env::SESSION_ID], "boot-1");
        assert_eq!(env[pod_env::FILESTORE_ROOT], "/srv/fs");
        assert_eq!(
            env[pod_env::GRACE_PERIOD_SECS],
            "8",
            "the supervisor finishes before the kubelet kills"
        );
        assert_eq!(env[pod_env::ORCHESTRATOR_ADDR], "http://192.0.2.1:50051");
        assert_eq!(env[pod_env::ORCHESTRATOR_CA_PEM], "");
        assert_eq!(env[pod_env::IDLE_TIMEOUT_SECS], "10800");
        assert_eq!(env[pod_env::TOKEN_FILE], "/var/run/secrets/jbazel/token");
        assert_eq!(env[pod_env::POD_NAME], "fieldRef:metadata.name");
        assert_eq!(env[pod_env::POD_NAMESPACE], "fieldRef:metadata.namespace");
        assert_eq!(env[pod_env::POD_IP], "fieldRef:status.podIP");
    }

    #[test]
    fn container_probes_the_supervisor_with_least_privilege() {
        let c = with_spec(|spec| spec.container(&settings()));
        assert_eq!(
            c.image.as_deref(),
            Some("docker.io/library/jbazel-bazel-server:dev")
        );
        assert_eq!(c.image_pull_policy.as_deref(), Some("Never"));
        assert_eq!(c.volume_mounts, Some(volume_mounts(&settings())));
        let probe = c.readiness_probe.as_ref().expect("readiness probe");
        let get = probe.http_get.as_ref().expect("httpGet");
        assert_eq!(get.path.as_deref(), Some("/readyz"));
        assert_eq!(get.port, IntOrString::Int(8080));
        let live = c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref());
        assert_eq!(live.and_then(|g| g.path.as_deref()), Some("/healthz"));

        let sc = c.security_context.as_ref().expect("securityContext");
        assert_eq!(sc, &security_context());
        assert_eq!(sc.privileged, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.add.clone()),
            Some(proto::pod::capability_names().map(str::to_string).collect()),
            "exactly the supervisor's capabilities, in order"
        );
        assert_eq!(
            sc.capabilities.as_ref().and_then(|c| c.drop.clone()),
            Some(vec!["ALL".to_string()]),
            "everything else the runtime grants by default is dropped"
        );
        assert_eq!(
            sc.seccomp_profile.as_ref().map(|p| p.type_.as_str()),
            Some("Unconfined")
        );
        assert_eq!(sc.allow_privilege_escalation, None);
    }

    #[test]
    fn user_namespaces_are_distinct_labels() {
        assert_eq!(user_namespace("jbazel", "alice"), "jbazel-alice");
        let long = "u".repeat(63);
        let a = user_namespace("jbazel", &long);
        let b = user_namespace("jbazel", &format!("{}v", "u".repeat(62)));
        assert!(a.len() <= 63 && b.len() <= 63, "{a} {b}");
        assert_ne!(a, b, "a cut name keeps the users apart");
        assert!(!a.contains("--") && !a.ends_with('-'));
    }

    #[test]
    fn exec_probe_and_pull_policy_are_configurable() {
        let settings = PodSettings {
            probe: ProbeMode::Exec,
            pull_policy: PullPolicy::IfNotPresent,
            image: "example/img:1".into(),
            node_selector: BTreeMap::from([("pool".to_string(), "bazel".to_string())]),
            resources: PodResources {
                cpu_request: Some("500m".into()),
                memory_limit: Some("2Gi".into()),
                ..PodResources::default()
            },
            ..PodSettings::default()
        };
        let pod = PodSpecFor {
            user_id: &UserId::parse("bob").expect("valid"),
            repo_hash: &RepoHash::parse(HASH).expect("valid"),
            session_id: &SessionId::parse("s").expect("valid"),
            generation: 1,
        }
        .manifest(&settings);
        let spec = pod.spec.expect("spec");
        assert_eq!(
            spec.node_selector.and_then(|n| n.get("pool").cloned()),
            Some("bazel".to_string())
        );
        let c = &spec.containers[0];
        let res = c.resources.as_ref().expect("resources");
        let get = |m: &Option<BTreeMap<String, Quantity>>, k: &str| {
            m.as_ref().and_then(|m| m.get(k)).map(|q| q.0.clone())
        };
        assert_eq!(get(&res.requests, "cpu").as_deref(), Some("500m"));
        assert_eq!(get(&res.limits, "memory").as_deref(), Some("2Gi"));
        assert_eq!(get(&res.requests, "memory"), None);
        assert_eq!(get(&res.limits, "cpu"), None);
        assert_eq!(c.image.as_deref(), Some("example/img:1"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let probe = c.readiness_probe.as_ref().expect("probe");
        assert!(probe.http_get.is_none());
        assert_eq!(
            probe.exec.as_ref().and_then(|e| e.command.clone()),
            Some(vec![SUPERVISOR_BIN.to_string(), "probe".to_string()])
        );
    }

    #[test]
    fn pull_policy_parses() {
        for p in [
            PullPolicy::Always,
            PullPolicy::IfNotPresent,
            PullPolicy::Never,
        ] {
            assert_eq!(p.as_str().parse::<PullPolicy>(), Ok(p));
        }
        assert!("never".parse::<PullPolicy>().is_err());
    }
}
