//! The user's credential for the orchestrator: the same Kubernetes identity the
//! port-forward uses, from the kubeconfig's current context (`KUBECONFIG`, else
//! `~/.kube/config`).
//!
//! - A client certificate and key (`client-certificate[-data]`, `client-key[-data]`) are
//!   presented in the TLS handshake (mTLS); the orchestrator verifies them against the
//!   cluster CA and takes the certificate's CN as the user.
//! - Else a bearer token (`token`, `token-file`) goes in the `authorization` header; the
//!   orchestrator verifies it with a TokenReview.
//! - The orchestrator's certificate is verified against `JBAZEL_ORCHESTRATOR_CA` when set,
//!   else the kubeconfig cluster's CA (the platform's certificate is signed by it).
//!
//! The kubeconfig is read once per command (well under a millisecond); nothing is cached on
//! disk.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use kube::config::{AuthInfo, Kubeconfig};
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
    let bearer = match (&auth.token, &auth.token_file) {
        (Some(t), _) => Some(t.expose_secret().trim().to_string()),
        (None, Some(path)) => Some(
            String::from_utf8_lossy(&read("the token file", Path::new(path))?)
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    }
    .filter(|t| !t.is_empty());
    Ok(Credential {
        identity,
        bearer,
        ca_pem,
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
}
