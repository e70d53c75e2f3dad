//! The user's credential for the orchestrator: the same Kubernetes identity the
//! port-forward uses, from the kubeconfig's current context (`KUBECONFIG`, else
//! `~/.kube/config`).
//!
//! - A client certificate and key (`client-certificate[-data]`, `client-key[-data]`) are
//!   presented in the TLS handshake (mTLS); the orchestrator verifies them against the
//!   cluster CA and takes the certificate's CN as the user.
//! - Else a bearer token (`token`, `token-file`) goes in the `authorization` header; the
//!   orchestrator verifies it with a TokenReview.
//! - Else an exec plugin (`user.exec`, e.g. `gke-gcloud-auth-plugin`, `aws eks get-token`,
//!   `kubelogin`) is run as kubectl runs it (`KUBERNETES_EXEC_INFO`, the plugin's `env`,
//!   stdin and stderr the terminal's unless `interactiveMode: Never`), and its
//!   `ExecCredential` status gives a token or a certificate and key (PEM), used as above.
//!   The plugin caches what it fetched, as it does for kubectl.
//! - The orchestrator's certificate is verified against `JBAZEL_ORCHESTRATOR_CA` when set,
//!   else the kubeconfig cluster's CA (the platform's certificate is signed by it).
//!
//! The kubeconfig is read once per command (well under a millisecond); nothing is cached on
//! disk.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::config::{AuthInfo, Cluster, ExecConfig, ExecInteractiveMode, Kubeconfig};
use secrecy::ExposeSecret;

/// Why no credential could be had.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("cannot read your kubeconfig (KUBECONFIG or ~/.kube/config): it holds your credential for the orchestrator")]
    Kubeconfig(#[source] kube::config::KubeconfigError),
    #[error("kubeconfig: {0}")]
    Incomplete(String),
    #[error("kubeconfig: {field} is not valid base64")]
    Base64 {
        field: &'static str,
        #[source]
        source: base64::DecodeError,
    },
    #[error("kubeconfig exec plugin {command:?} could not be started{hint}")]
    ExecStart {
        command: String,
        /// The kubeconfig's `installHint`, on its own line, when the program is missing.
        hint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("kubeconfig exec plugin {command:?} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    ExecFailed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    #[error("kubeconfig exec plugin {command:?} printed no usable ExecCredential: {why}")]
    ExecOutput { command: String, why: String },
    #[error("cannot read {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What jbazel presents to, and trusts of, the orchestrator.
#[derive(Clone, Default)]
pub struct Credential {
    /// Client certificate and key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// Bearer token (when there is no certificate).
    pub bearer: Option<String>,
    /// CA bundle (PEM) that verifies the orchestrator.
    pub ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("identity", &self.identity.is_some())
            .field("bearer", &self.bearer.is_some())
            .field("ca_pem", &self.ca_pem.is_some())
            .finish()
    }
}

impl Credential {
    /// Reads the kubeconfig (and `orchestrator_ca` when given).
    pub fn load(orchestrator_ca: Option<&Path>) -> Result<Credential, CredentialError> {
        let kc = Kubeconfig::read().map_err(CredentialError::Kubeconfig)?;
        let mut cred = from_kubeconfig(&kc)?;
        if let Some(path) = orchestrator_ca {
            cred.ca_pem = Some(read("the orchestrator CA bundle", path)?);
        }
        Ok(cred)
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|source| CredentialError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn decode(field: &'static str, data: &str) -> Result<Vec<u8>, CredentialError> {
    base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .map_err(|source| CredentialError::Base64 { field, source })
}

/// The credential of `kc`'s current context.
pub fn from_kubeconfig(kc: &Kubeconfig) -> Result<Credential, CredentialError> {
    let current = kc
        .current_context
        .as_deref()
        .ok_or_else(|| CredentialError::Incomplete("no current-context".into()))?;
    let context = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| CredentialError::Incomplete(format!("context {current:?} not found")))?;
    let auth = match context.user.as_deref() {
        Some(user) => kc
            .auth_infos
            .iter()
            .find(|a| a.name == user)
            .and_then(|a| a.auth_info.clone())
            .ok_or_else(|| CredentialError::Incomplete(format!("user {user:?} not found")))?,
        None => AuthInfo::default(),
    };
    let cluster = kc
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.as_ref());
    let ca_pem = match cluster {
        Some(c) => match (&c.certificate_authority_data, &c.certificate_authority) {
            (Some(data), _) => Some(decode("certificate-authority-data", data)?),
            (None, Some(path)) => Some(read("the cluster CA", Path::new(path))?),
            (None, None) => None,
        },
        None => None,
    };
    let cert = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(data), _) => Some(decode("client-certificate-data", data)?),
        (None, Some(path)) => Some(read("the client certificate", Path::new(path))?),
        (None, None) => None,
    };
    let key = match (&auth.client_key_data, &auth.client_key) {
        (Some(data), _) => Some(decode("client-key-data", data.expose_secret())?),
        (None, Some(path)) => Some(read("the client key", Path::new(path))?),
        (None, None) => None,
    };
    let identity = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        _ => {
            return Err(CredentialError::Incomplete(
                "a client certificate needs its key (and a key its certificate)".into(),
            ))
        }
    };
    let (identity, exec_token) = match (&identity, &auth.token, &auth.token_file, &auth.exec) {
        (None, None, None, Some(exec)) => {
            let c = run_exec_plugin(exec, cluster)?;
            (c.identity, c.bearer)
        }
        _ => (identity, None),
    };
    let bearer = match (&auth.token, &auth.token_file) {
        (Some(t), _) => Some(t.expose_secret().trim().to_string()),
        (None, Some(path)) => Some(
            String::from_utf8_lossy(&read("the token file", Path::new(path))?)
                .trim()
                .to_string(),
        ),
        (None, None) => exec_token,
    }
    .filter(|t| !t.is_empty());
    Ok(Credential {
        identity,
        bearer,
        ca_pem,
    })
}

/// What kubectl puts in `KUBERNETES_EXEC_INFO` for `exec` (the cluster only when the
/// plugin asks for it with `provideClusterInfo`).
pub fn exec_info(exec: &ExecConfig, cluster: Option<&Cluster>) -> serde_json::Value {
    let interactive = exec.interactive_mode != Some(ExecInteractiveMode::Never);
    let mut spec = serde_json::json!({ "interactive": interactive });
    if exec.provide_cluster_info {
        if let Some(c) = cluster {
            spec["cluster"] = serde_json::json!({
                "server": c.server,
                "certificate-authority-data": c.certificate_authority_data,
                "insecure-skip-tls-verify": c.insecure_skip_tls_verify,
                "proxy-url": c.proxy_url,
                "tls-server-name": c.tls_server_name,
            });
        }
    }
    serde_json::json!({
        "apiVersion": exec
            .api_version
            .as_deref()
            .unwrap_or("client.authentication.k8s.io/v1"),
        "kind": "ExecCredential",
        "spec": spec,
    })
}

/// The credential in a plugin's `ExecCredential` output: `status.token`, or
/// `status.clientCertificateData` with `status.clientKeyData` (PEM).
pub fn parse_exec_output(stdout: &[u8]) -> Result<Credential, String> {
    let v: serde_json::Value =
        serde_json::from_slice(stdout).map_err(|e| format!("not JSON ({e})"))?;
    if v["kind"] != "ExecCredential" {
        return Err(format!("kind is {}, not \"ExecCredential\"", v["kind"]));
    }
    let status = &v["status"];
    let text = |field: &str| {
        status[field]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let identity = match (text("clientCertificateData"), text("clientKeyData")) {
        (Some(c), Some(k)) => Some((c.into_bytes(), k.into_bytes())),
        (None, None) => None,
        _ => return Err("a client certificate needs its key (and a key its certificate)".into()),
    };
    let bearer = text("token");
    if identity.is_none() && bearer.is_none() {
        return Err("status has neither a token nor a client certificate".into());
    }
    Ok(Credential {
        identity,
        bearer,
        ca_pem: None,
    })
}

/// Runs `exec` as kubectl does and reads its credential.
fn run_exec_plugin(
    exec: &ExecConfig,
    cluster: Option<&Cluster>,
) -> Result<Credential, CredentialError> {
    let Some(program) = exec.command.clone().filter(|c| !c.is_empty()) else {
        return Err(CredentialError::Incomplete("exec has no command".into()));
    };
    let mut cmd = std::process::Command::new(&program);
    cmd.args(exec.args.iter().flatten());
    for pair in exec.env.iter().flatten() {
        if let (Some(name), Some(value)) = (pair.get("name"), pair.get("value")) {
            cmd.env(name, value);
        }
    }
    for name in exec.drop_env.iter().flatten() {
        cmd.env_remove(name);
    }
    cmd.env("KUBERNETES_EXEC_INFO", exec_info(exec, cluster).to_string());
    let interactive = exec.interactive_mode != Some(ExecInteractiveMode::Never);
    cmd.stdout(std::process::Stdio::piped());
    if interactive {
        cmd.stdin(std::process::Stdio::inherit())
            .stderr(std::process::Stdio::inherit());
    } else {
        cmd.stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
    }
    let out = cmd.output().map_err(|source| CredentialError::ExecStart {
        command: program.clone(),
        hint: match exec.install_hint.as_deref() {
            Some(h) if source.kind() == std::io::ErrorKind::NotFound => format!("\n{}", h.trim()),
            _ => String::new(),
        },
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(CredentialError::ExecFailed {
            command: program,
            status: out.status,
            stderr,
        });
    }
    parse_exec_output(&out.stdout).map_err(|why| CredentialError::ExecOutput {
        command: program,
        why,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(user: &str) -> Kubeconfig {
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters:\n- name: k\n  cluster:\n    server: https://127.0.0.1:6443\n    certificate-authority-data: Q0E=\n\
             contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\n\
             users:\n- name: u\n  user:\n{user}"
        );
        Kubeconfig::from_yaml(&yaml).expect("kubeconfig parses")
    }

    #[test]
    fn certificate_and_key() {
        let kc = kubeconfig("    client-certificate-data: Q0VSVA==\n    client-key-data: S0VZ\n");
        let c = from_kubeconfig(&kc).expect("credential");
        assert_eq!(c.identity, Some((b"CERT".to_vec(), b"KEY".to_vec())));
        assert_eq!(c.ca_pem.as_deref(), Some(&b"CA"[..]));
        assert!(c.bearer.is_none());
    }

    #[test]
    fn token() {
        let c = from_kubeconfig(&kubeconfig("    token: abc\n")).expect("credential");
        assert_eq!(c.bearer.as_deref(), Some("abc"));
        assert!(c.identity.is_none());
    }

    #[test]
    fn half_a_certificate_or_bad_base64_is_an_error() {
        let e = from_kubeconfig(&kubeconfig("    client-certificate-data: Q0VSVA==\n"))
            .expect_err("no key");
        assert!(e.to_string().contains("needs its key"), "{e}");
        let e = from_kubeconfig(&kubeconfig(
            "    client-certificate-data: '***'\n    client-key-data: S0VZ\n",
        ))
        .expect_err("bad base64");
        assert!(e.to_string().contains("client-certificate-data"), "{e}");
    }

    #[test]
    fn debug_shows_no_secret() {
        let c = from_kubeconfig(&kubeconfig("    token: s3cr3t\n")).expect("credential");
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }

    /// A kubeconfig whose user is the exec plugin `script` (a shell script in `dir`).
    fn exec_kubeconfig(dir: &Path, script: &str, extra: &str) -> Kubeconfig {
        use std::os::unix::fs::PermissionsExt;
        let plugin = dir.join("plugin");
        std::fs::write(&plugin, format!("#!/bin/sh\n{script}")).expect("write plugin");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        kubeconfig(&format!(
            "    exec:\n      apiVersion: client.authentication.k8s.io/v1\n      \
             command: {}\n      args: [one]\n      env:\n      - name: GREETING\n        \
             value: hi\n      interactiveMode: Never\n{extra}",
            plugin.display()
        ))
    }

    #[test]
    fn exec_plugin_token_or_certificate() {
        let dir = tempfile::tempdir().expect("tempdir");
        // The plugin sees its args, its env and KUBERNETES_EXEC_INFO, as under kubectl.
        let kc = exec_kubeconfig(
            dir.path(),
            r#"case "$1/$GREETING/$KUBERNETES_EXEC_INFO" in
  'one/hi/{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","spec":{"interactive":false}}') ;;
  *) echo "unexpected: $1/$GREETING/$KUBERNETES_EXEC_INFO" >&2; exit 3 ;;
esac
echo '{"apiVersion":"client.authentication.k8s.io/v1","kind":"ExecCredential","status":{"token":"t0k"}}'
"#,
            "",
        );
        let c = from_kubeconfig(&kc).expect("credential");
        assert_eq!(c.bearer.as_deref(), Some("t0k"));
        assert!(c.identity.is_none());
        assert_eq!(
            c.ca_pem.as_deref(),
            Some(&b"CA"[..]),
            "the CA stays the cluster's"
        );

        let kc = exec_kubeconfig(
            dir.path(),
            r#"printf '%s' '{"kind":"ExecCredential","status":{"clientCertificateData":"-----CERT\n","clientKeyData":"-----KEY\n"}}'"#,
            "",
        );
        let c = from_kubeconfig(&kc).expect("credential");
        assert_eq!(
            c.identity,
            Some((b"-----CERT".to_vec(), b"-----KEY".to_vec()))
        );
        assert!(c.bearer.is_none());
    }

    #[test]
    fn exec_plugin_failures_are_clear() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kc = exec_kubeconfig(dir.path(), "echo 'login expired' >&2; exit 1\n", "");
        let e = from_kubeconfig(&kc).expect_err("fails");
        assert!(matches!(e, CredentialError::ExecFailed { .. }), "{e}");
        assert!(e.to_string().contains("login expired"), "{e}");

        let kc = exec_kubeconfig(
            dir.path(),
            "echo '{\"kind\":\"ExecCredential\",\"status\":{}}'\n",
            "",
        );
        let e = from_kubeconfig(&kc).expect_err("empty status");
        assert!(e.to_string().contains("neither a token"), "{e}");

        let kc = kubeconfig(
            "    exec:\n      command: /nonexistent/plugin\n      installHint: install it with apt\n",
        );
        let e = from_kubeconfig(&kc).expect_err("missing");
        assert!(e.to_string().contains("install it with apt"), "{e}");
    }

    #[test]
    fn exec_output_parsing() {
        assert!(parse_exec_output(b"not json")
            .unwrap_err()
            .contains("not JSON"));
        assert!(
            parse_exec_output(br#"{"kind":"Other","status":{"token":"x"}}"#)
                .unwrap_err()
                .contains("not \"ExecCredential\"")
        );
        assert!(parse_exec_output(
            br#"{"kind":"ExecCredential","status":{"clientCertificateData":"c"}}"#
        )
        .unwrap_err()
        .contains("needs its key"));
        let c = parse_exec_output(br#"{"kind":"ExecCredential","status":{"token":" t \n"}}"#)
            .expect("token");
        assert_eq!(c.bearer.as_deref(), Some("t"));
    }

    #[test]
    fn exec_info_carries_the_cluster_only_when_asked() {
        let exec = |provide: bool| -> ExecConfig {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "p",
                "provideClusterInfo": provide,
            }))
            .expect("exec config")
        };
        let cluster = Cluster {
            server: Some("https://k:6443".into()),
            ..Cluster::default()
        };
        let v = exec_info(&exec(false), Some(&cluster));
        assert_eq!(v["apiVersion"], "client.authentication.k8s.io/v1beta1");
        assert_eq!(v["spec"]["interactive"], true);
        assert!(v["spec"].get("cluster").is_none());
        let v = exec_info(&exec(true), Some(&cluster));
        assert_eq!(v["spec"]["cluster"]["server"], "https://k:6443");
    }
}
