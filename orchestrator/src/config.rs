//! Command line and environment: every knob of the orchestrator, with `--help`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::pods::manifest::PodResources;
use crate::pods::{PodSettings, ProbeMode, PullPolicy};
use crate::service::ServiceSettings;

/// The jbazel orchestrator: BuildSessions rows in Spanner, one Bazel server pod per
/// (user, repository) in Kubernetes, gRPC API for jbazel and the supervisors.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "orchestrator",
    version,
    after_help = "Probe: orchestrator probe --help"
)]
pub struct Config {
    /// Spanner emulator address (host:port). The store connects to the emulator only
    /// (no credentials).
    #[arg(long, env = "SPANNER_EMULATOR_HOST")]
    pub spanner_emulator_host: String,

    /// Spanner project id.
    #[arg(long, env = "SPANNER_PROJECT", default_value = "jbazel")]
    pub project: String,

    /// Spanner instance id.
    #[arg(long, env = "SPANNER_INSTANCE", default_value = "jbazel")]
    pub instance: String,

    /// Spanner database id (holds the BuildSessions table of schema.sql).
    #[arg(long, env = "SPANNER_DATABASE", default_value = "sessions")]
    pub database: String,

    /// Create the instance, the database and the schema.sql tables on the emulator at
    /// start when they are missing (handy for a demo; existing ones are kept).
    #[arg(long)]
    pub create_database: bool,

    /// Kubeconfig file; without it the standard lookup (in-cluster, ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,

    /// Namespace of the Bazel server pods (created at start when missing).
    #[arg(long, env = "JBAZEL_NAMESPACE", default_value = "jbazel")]
    pub namespace: String,

    /// Image of the Bazel server pods.
    #[arg(
        long,
        env = "JBAZEL_IMAGE",
        default_value = "docker.io/library/jbazel-bazel-server:dev"
    )]
    pub image: String,

    /// imagePullPolicy of the pods (local images without a registry need Never).
    #[arg(long, value_enum, default_value_t = PullPolicy::Never)]
    pub image_pull_policy: PullPolicy,

    /// Filestore root R on the node; mounted (hostPath) at the same path in every pod.
    #[arg(
        long,
        env = proto::pod::env::FILESTORE_ROOT,
        default_value = proto::pod::DEFAULT_FILESTORE_ROOT
    )]
    pub filestore_root: PathBuf,

    /// gRPC listen address (Orchestrator API + grpc.health.v1).
    #[arg(
        long,
        env = "JBAZEL_ORCHESTRATOR_LISTEN",
        default_value = "0.0.0.0:50051"
    )]
    pub listen: SocketAddr,

    /// The orchestrator's URL as pods reach it (their ORCHESTRATOR_ADDR, for ReportReady),
    /// e.g. http://10.0.0.2:50051. Required: it depends on the cluster's network, so no
    /// default could be right in production.
    #[arg(long, env = "JBAZEL_POD_ORCHESTRATOR_ADDR")]
    pub pod_orchestrator_addr: String,

    /// How the kubelet checks the supervisor's readiness.
    #[arg(long, value_enum, default_value_t = ProbeMode::Http)]
    pub readiness_probe: ProbeMode,

    /// terminationGracePeriodSeconds of the pods (the supervisor stops Bazel within it).
    #[arg(long, default_value_t = 10)]
    pub termination_grace_period: i64,

    /// nodeSelector entry of the pods, KEY=VALUE (repeatable).
    #[arg(long = "node-selector", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub node_selector: Vec<(String, String)>,

    /// Bazel's command port in the pod when the supervisor has not reported one.
    #[arg(long, default_value_t = u32::from(proto::pod::COMMAND_PORT))]
    pub command_port: u32,

    /// Deadline, in seconds, of a request that carries no grpc-timeout.
    #[arg(long, default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// The longest, in seconds, any request or watch may run, whatever its grpc-timeout.
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_request_timeout_secs: u64,

    /// Seconds without a command after which a Bazel server (and its pod) stops; the row
    /// says IDLE and the output base stays on the filestore. Bazel's own default: 3 h.
    #[arg(long, default_value_t = 10800, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,

    /// Seconds between the reconciler's sweeps of every active row against the cluster
    /// (it also reacts to every pod event at once).
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub resync_interval_secs: u64,

    /// CPU request of the pods (a Kubernetes quantity, e.g. 500m).
    #[arg(long, default_value = "100m", value_parser = parse_quantity)]
    pub pod_cpu_request: String,

    /// Memory request of the pods (e.g. 1Gi).
    #[arg(long, default_value = "1Gi", value_parser = parse_quantity)]
    pub pod_memory_request: String,

    /// CPU limit of the pods; none by default (throttling makes builds slow, not safe).
    #[arg(long, value_parser = parse_quantity)]
    pub pod_cpu_limit: Option<String>,

    /// Memory limit of the pods; the supervisor sizes Bazel's JVM heap from it.
    #[arg(long, default_value = "4Gi", value_parser = parse_quantity)]
    pub pod_memory_limit: String,

    /// The orchestrator's TLS certificate (PEM, may hold the chain). With
    /// --tls-private-key-file, the API is served over TLS.
    #[arg(
        long,
        env = "JBAZEL_TLS_CERT_FILE",
        value_name = "FILE",
        requires = "tls_private_key_file"
    )]
    pub tls_cert_file: Option<PathBuf>,

    /// The private key of --tls-cert-file (PEM).
    #[arg(
        long,
        env = "JBAZEL_TLS_PRIVATE_KEY_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub tls_private_key_file: Option<PathBuf>,

    /// CA bundle that signs users' client certificates: the cluster's CA, so a user's
    /// kubeconfig certificate is their credential here too (like kube-apiserver's
    /// --client-ca-file). Needs TLS. Bearer tokens are verified by TokenReview either way.
    #[arg(
        long,
        env = "JBAZEL_CLIENT_CA_FILE",
        value_name = "FILE",
        requires = "tls_cert_file"
    )]
    pub client_ca_file: Option<PathBuf>,

    /// CA bundle the pods verify the orchestrator's certificate with (for ReportReady);
    /// default: --client-ca-file.
    #[arg(long, value_name = "FILE", requires = "tls_cert_file")]
    pub pod_orchestrator_ca_file: Option<PathBuf>,

    /// A CIDR the server pods may reach besides the orchestrator (repeatable), e.g. an
    /// artifact mirror or the node's DNS; every other egress of a pod is denied by its user
    /// namespace's NetworkPolicy (on a CNI that enforces NetworkPolicy).
    #[arg(long = "pod-egress-allow-cidr", value_name = "CIDR", value_parser = parse_cidr)]
    pub pod_egress_allow_cidr: Vec<String>,

    /// Serve plaintext gRPC on a non-loopback address (credentials and cookies would cross
    /// the network in clear). Without TLS files, only a loopback --listen is served.
    #[arg(long)]
    pub insecure_plaintext: bool,
}

/// How the API is served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS with these files.
    Tls {
        cert: PathBuf,
        key: PathBuf,
        client_ca: Option<PathBuf>,
    },
    /// Plaintext HTTP/2 (loopback, or --insecure-plaintext).
    Plaintext,
}

/// Why the transport settings are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refusing to serve plaintext gRPC on {listen}: give --tls-cert-file and --tls-private-key-file (or --insecure-plaintext to accept it)")]
pub struct PlaintextRefused {
    pub listen: SocketAddr,
}

/// The transport of a listen address and TLS files: TLS when both files are given;
/// plaintext only on loopback, or when explicitly accepted.
pub fn transport(
    listen: SocketAddr,
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
    client_ca: Option<&PathBuf>,
    insecure_plaintext: bool,
) -> Result<Transport, PlaintextRefused> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Transport::Tls {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: client_ca.cloned(),
        }),
        _ if listen.ip().is_loopback() || insecure_plaintext => Ok(Transport::Plaintext),
        _ => Err(PlaintextRefused { listen }),
    }
}

/// An IPv4 or IPv6 CIDR (`10.0.0.0/8`, `192.0.2.1/32`).
fn parse_cidr(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a CIDR (e.g. 10.0.0.0/8)");
    let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| bad())?;
    let bits: u8 = bits.parse().map_err(|_| bad())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if bits > max {
        return Err(bad());
    }
    Ok(s.to_string())
}

/// A Kubernetes resource quantity: a decimal number and an optional suffix.
fn parse_quantity(s: &str) -> Result<String, String> {
    const SUFFIXES: &[&str] = &[
        "", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
    ];
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, suffix) = s.split_at(split);
    let number_ok = !number.is_empty()
        && number.matches('.').count() <= 1
        && number.bytes().any(|b| b.is_ascii_digit());
    if number_ok && SUFFIXES.contains(&suffix) && s.len() <= 32 {
        Ok(s.to_string())
    } else {
        Err(format!(
            "{s:?} is not a Kubernetes quantity (e.g. 500m, 2, 1Gi, 512Mi)"
        ))
    }
}

impl Config {
    /// TLS or plaintext, checked.
    pub fn transport(&self) -> Result<Transport, PlaintextRefused> {
        transport(
            self.listen,
            self.tls_cert_file.as_ref(),
            self.tls_private_key_file.as_ref(),
            self.client_ca_file.as_ref(),
            self.insecure_plaintext,
        )
    }

    /// The CA file pods verify the orchestrator with.
    pub fn pod_ca_file(&self) -> Option<&PathBuf> {
        self.pod_orchestrator_ca_file
            .as_ref()
            .or(self.client_ca_file.as_ref())
    }

    /// `projects/P/instances/I/databases/D`.
    pub fn database_path(&self) -> String {
        format!(
            "projects/{}/instances/{}/databases/{}",
            self.project, self.instance, self.database
        )
    }

    /// The pods' settings; `orchestrator_ca_pem` is the content of [`Config::pod_ca_file`],
    /// read by the caller.
    pub fn pod_settings(&self, orchestrator_ca_pem: Option<String>) -> PodSettings {
        PodSettings {
            namespace: self.namespace.clone(),
            orchestrator_ca_pem,
            image: self.image.clone(),
            pull_policy: self.image_pull_policy,
            filestore_root: self.filestore_root.clone(),
            orchestrator_addr: self.pod_orchestrator_addr.clone(),
            termination_grace_seconds: self.termination_grace_period,
            probe: self.readiness_probe,
            node_selector: self.node_selector.iter().cloned().collect(),
            idle_timeout_secs: self.idle_timeout_secs,
            resources: PodResources {
                cpu_request: Some(self.pod_cpu_request.clone()),
                memory_request: Some(self.pod_memory_request.clone()),
                cpu_limit: self.pod_cpu_limit.clone(),
                memory_limit: Some(self.pod_memory_limit.clone()),
            },
            egress_allow: self.pod_egress_allow_cidr.clone(),
        }
    }

    /// How often the reconciler sweeps.
    pub fn resync_interval(&self) -> Duration {
        Duration::from_secs(self.resync_interval_secs)
    }

    pub fn service_settings(&self) -> ServiceSettings {
        ServiceSettings {
            default_deadline: Duration::from_secs(self.request_timeout_secs),
            default_command_port: self.command_port,
            max_deadline: Duration::from_secs(self.max_request_timeout_secs),
            ..ServiceSettings::default()
        }
    }
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["500m", "2", "1Gi", "512Mi", "1.5", "0.5Gi", "100k"] {
            assert_eq!(parse_quantity(ok).as_deref(), Ok(ok));
        }
        for bad in ["", "Gi", "1GB", "-1", "1 Gi", "1..5", "1Gi; rm"] {
            assert!(parse_quantity(bad).is_err(), "{bad}");
        }
    }
    use clap::CommandFactory;

    #[test]
    fn cidrs() {
        for ok in ["10.0.0.0/8", "192.0.2.1/32", "fd00::/8"] {
            assert_eq!(parse_cidr(ok).as_deref(), Ok(ok));
        }
        for bad in ["10.0.0.0", "10.0.0.0/33", "x/8", "", "10.0.0.0/8; rm"] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plaintext_only_on_loopback_or_when_asked() {
        let any: SocketAddr = "0.0.0.0:50051".parse().expect("addr");
        let lo: SocketAddr = "127.0.0.1:50051".parse().expect("addr");
        let (c, k) = (PathBuf::from("c.pem"), PathBuf::from("k.pem"));
        assert_eq!(
            transport(any, Some(&c), Some(&k), None, false),
            Ok(Transport::Tls {
                cert: c.clone(),
                key: k.clone(),
                client_ca: None
            })
        );
        assert_eq!(
            transport(lo, None, None, None, false),
            Ok(Transport::Plaintext)
        );
        assert_eq!(
            transport(any, None, None, None, true),
            Ok(Transport::Plaintext)
        );
        let e = transport(any, None, None, None, false).expect_err("refused");
        assert!(e.to_string().contains("0.0.0.0:50051"), "{e}");
        assert!(
            Config::try_parse_from([
                "orchestrator",
                "--spanner-emulator-host=h:1",
                "--pod-orchestrator-addr=x",
                "--tls-cert-file=c.pem",
            ])
            .is_err(),
            "a certificate needs its key"
        );
    }

    #[test]
    fn cli_is_consistent() {
        Config::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let c = Config::try_parse_from([
            "orchestrator",
            "--spanner-emulator-host",
            "127.0.0.1:9010",
            "--pod-orchestrator-addr",
            "http://192.0.2.1:50051",
        ])
        .expect("parse");
        assert_eq!(c.namespace, "jbazel");
        assert_eq!(c.listen.to_string(), "0.0.0.0:50051");
        assert_eq!(c.pod_orchestrator_addr, "http://192.0.2.1:50051");
        assert_eq!(c.image, "docker.io/library/jbazel-bazel-server:dev");
        assert_eq!(c.image_pull_policy, PullPolicy::Never);
        assert_eq!(
            c.filestore_root,
            PathBuf::from(proto::pod::DEFAULT_FILESTORE_ROOT)
        );
        assert_eq!(
            c.database_path(),
            "projects/jbazel/instances/jbazel/databases/sessions"
        );
        let p = c.pod_settings(None);
        assert_eq!(p.probe, ProbeMode::Http);
        assert_eq!(p.termination_grace_seconds, 10);
        assert_eq!(c.service_settings().default_command_port, 9001);
    }

    #[test]
    fn the_pods_orchestrator_address_has_no_default() {
        let err = Config::try_parse_from(["orchestrator", "--spanner-emulator-host=h"])
            .expect_err("a production default must not be a test address");
        assert!(err.to_string().contains("--pod-orchestrator-addr"), "{err}");
    }

    #[test]
    fn flags_override() {
        let c = Config::try_parse_from([
            "orchestrator",
            "--spanner-emulator-host=127.0.0.1:1",
            "--pod-orchestrator-addr=http://192.0.2.1:1",
            "--namespace=t1",
            "--image=x/y:z",
            "--image-pull-policy=IfNotPresent",
            "--readiness-probe=exec",
            "--listen=127.0.0.1:0",
            "--node-selector=pool=bazel",
            "--node-selector",
            "zone=a",
        ])
        .expect("parse");
        assert_eq!(c.namespace, "t1");
        assert_eq!(c.image_pull_policy, PullPolicy::IfNotPresent);
        assert_eq!(c.readiness_probe, ProbeMode::Exec);
        let p = c.pod_settings(None);
        assert_eq!(
            p.node_selector.get("pool").map(String::as_str),
            Some("bazel")
        );
        assert_eq!(p.node_selector.get("zone").map(String::as_str), Some("a"));
        assert!(Config::try_parse_from([
            "orchestrator",
            "--spanner-emulator-host=h",
            "--pod-orchestrator-addr=http://192.0.2.1:1",
            "--node-selector=novalue"
        ])
        .is_err());
        assert!(Config::try_parse_from([
            "orchestrator",
            "--spanner-emulator-host=h",
            "--pod-orchestrator-addr=http://192.0.2.1:1",
            "--image-pull-policy=sometimes"
        ])
        .is_err());
    }
}
