//! Tenancy credentials of the local cluster, as tests and the demo use them.
//!
//! `integration/kubernetes/local.sh up` makes them (see its header): the cluster CA, the
//! orchestrator's serving certificate and ServiceAccount kubeconfig, and one client
//! certificate per platform user (`local.sh user NAME`: CN=NAME, O=jbazel:users, signed by the
//! cluster CA, in a kubeconfig with everything embedded). [`user_credential`] returns a user's
//! files and makes them first when they are missing, for any valid name (tests invent users);
//! `local.sh user` holds the cluster lock while it writes, so concurrent callers are safe.
//! [`expired_credential`] and [`foreign_ca_credential`] make credentials the API server must
//! refuse (401), in a temporary directory the caller keeps alive.
//!
//! Architecture invariant: the harness may shell out (to `local.sh`, `openssl`); the product
//! never does. Nothing here talks to the API server.

use std::ffi::OsStr;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use kube::config::{Kubeconfig, KubeconfigError};
use rand::Rng;
use tempfile::TempDir;

/// The state directory `local.sh` uses unless `JBAZEL_CLUSTER_STATE` says otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/jbazel-cluster";
/// The Kubernetes group of every platform user's client certificate.
pub const USER_GROUP: &str = "jbazel:users";
/// The users `local.sh up` makes (the demo's desktop users too, see `integration/setup.sh`).
pub const DEMO_USERS: [&str; 3] = ["alice", "bob", "mallory"];
/// Longest user name: `jbazel-<name>` must stay a DNS label (63).
pub const MAX_USER_NAME: usize = 40;

const UP_HINT: &str = "run integration/kubernetes/local.sh up";

/// Why a credential could not be found or made.
#[derive(thiserror::Error)]
pub enum CredentialError {
    /// The user name is not a lowercase DNS label of at most 40 characters.
    #[error("invalid user name {name:?}: a lowercase DNS label (a-z, 0-9, '-', starting and ending alphanumeric) of at most {MAX_USER_NAME} characters")]
    InvalidName { name: String },
    /// A file `local.sh up` makes is not there.
    #[error("{path} is missing: {UP_HINT}")]
    Missing { path: PathBuf },
    /// `local.sh user NAME` could not be started.
    #[error("cannot run {script} user {user}")]
    Spawn {
        script: PathBuf,
        user: String,
        source: io::Error,
    },
    /// `local.sh user NAME` failed.
    #[error("`{script} user {user}` failed ({status}): {stderr}")]
    Script {
        script: PathBuf,
        user: String,
        status: ExitStatus,
        stderr: String,
    },
    /// `local.sh user NAME` succeeded yet a file of the credential is missing.
    #[error("`local.sh user {user}` succeeded but left {path} missing")]
    Incomplete { user: String, path: PathBuf },
    /// A filesystem step failed.
    #[error("cannot {what} {path}")]
    Fs {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// openssl could not be started.
    #[error("cannot run openssl ({step}) for user {user}")]
    OpensslSpawn {
        step: &'static str,
        user: String,
        source: io::Error,
    },
    /// An openssl step failed.
    #[error("openssl {step} for user {user} failed ({status}): {stderr}")]
    Openssl {
        step: &'static str,
        user: String,
        status: ExitStatus,
        stderr: String,
    },
    /// The admin kubeconfig (where a made-up credential's cluster entry comes from) is unusable.
    #[error("cannot read the cluster entry of {path} ({UP_HINT})")]
    Kubeconfig {
        path: PathBuf,
        source: KubeconfigError,
    },
    /// The admin kubeconfig names no cluster.
    #[error("{path} names no cluster ({UP_HINT})")]
    NoCluster { path: PathBuf },
    /// A kubeconfig could not be encoded.
    #[error("cannot encode the kubeconfig of user {user}")]
    Encode {
        user: String,
        source: serde_json::Error,
    },
}
debug_is_the_chain!(CredentialError);

/// A platform user's client credential: a kubeconfig that authenticates as `user`, and the
/// certificate and key in it as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserCredential {
    pub user: String,
    pub kubeconfig: PathBuf,
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
}

/// The cluster's state directory, chosen as `local.sh` chooses it: `JBAZEL_CLUSTER_STATE`,
/// else [`DEFAULT_STATE_DIR`] (with `-N` appended for `JBAZEL_CLUSTER_INSTANCE=N`, 1-9).
pub fn state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JBAZEL_CLUSTER_STATE").filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    match std::env::var("JBAZEL_CLUSTER_INSTANCE").as_deref() {
        Ok(n) if n.len() == 1 && ("1"..="9").contains(&n) => {
            PathBuf::from(format!("{DEFAULT_STATE_DIR}-{n}"))
        }
        _ => PathBuf::from(DEFAULT_STATE_DIR),
    }
}

/// The admin kubeconfig `local.sh up` writes (system:masters).
pub fn admin_kubeconfig() -> PathBuf {
    state_dir().join("admin.kubeconfig")
}

fn pki_dir() -> PathBuf {
    state_dir().join("pki")
}

/// The script that makes all of this.
pub fn local_sh() -> PathBuf {
    crate::platform::repo_root().join("integration/kubernetes/local.sh")
}

/// Whether `name` is a valid platform user name: a lowercase DNS label of at most 40
/// characters (the same rule as `local.sh user`).
pub fn valid_user_name(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= MAX_USER_NAME
        && b.iter().all(|c| alnum(c) || *c == b'-')
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
}

fn exists(path: &Path) -> Result<bool, CredentialError> {
    path.try_exists().map_err(|source| CredentialError::Fs {
        what: "check",
        path: path.to_path_buf(),
        source,
    })
}

fn require(path: PathBuf) -> Result<PathBuf, CredentialError> {
    if exists(&path)? {
        Ok(path)
    } else {
        Err(CredentialError::Missing { path })
    }
}

/// The cluster CA certificate (`pki/ca.crt`): what verifies the API server, the orchestrator's
/// serving certificate and every user's client certificate.
pub fn cluster_ca() -> Result<PathBuf, CredentialError> {
    require(pki_dir().join("ca.crt"))
}

/// The orchestrator's serving certificate and key (`pki/orchestrator.crt`, `.key`), signed by
/// the cluster CA for localhost, jbazel-orchestrator, 127.0.0.1 and the pod gateway.
pub fn orchestrator_tls() -> Result<(PathBuf, PathBuf), CredentialError> {
    let pki = pki_dir();
    Ok((
        require(pki.join("orchestrator.crt"))?,
        require(pki.join("orchestrator.key"))?,
    ))
}

/// The orchestrator binary's TLS flags: its serving certificate and key, and the cluster
/// CA for users' client certificates.
pub fn orchestrator_tls_args() -> Result<Vec<std::ffi::OsString>, CredentialError> {
    let (cert, key) = orchestrator_tls()?;
    Ok(vec![
        "--tls-cert-file".into(),
        cert.into(),
        "--tls-private-key-file".into(),
        key.into(),
        "--client-ca-file".into(),
        cluster_ca()?.into(),
    ])
}

/// The orchestrator's TLS material as an in-process orchestrator takes it: its serving
/// certificate, and the cluster CA for users' client certificates.
pub fn orchestrator_tls_material() -> Result<orchestrator::app::TlsMaterial, CredentialError> {
    let (cert, key) = orchestrator_tls()?;
    let read = |path: PathBuf| {
        std::fs::read(&path).map_err(|source| CredentialError::Fs {
            what: "read",
            path,
            source,
        })
    };
    Ok(orchestrator::app::TlsMaterial {
        cert_pem: read(cert)?,
        key_pem: read(key)?,
        client_ca_pem: Some(read(cluster_ca()?)?),
    })
}

/// The orchestrator's kubeconfig: ServiceAccount `jbazel/jbazel-orchestrator` and its token,
/// bound to ClusterRole `jbazel-orchestrator`.
pub fn orchestrator_kubeconfig() -> Result<PathBuf, CredentialError> {
    require(state_dir().join("orchestrator.kubeconfig"))
}

fn user_files(name: &str) -> UserCredential {
    let state = state_dir();
    UserCredential {
        user: name.to_string(),
        kubeconfig: state.join("users").join(format!("{name}.kubeconfig")),
        cert_pem: state.join("pki/users").join(format!("{name}.crt")),
        key_pem: state.join("pki/users").join(format!("{name}.key")),
    }
}

fn complete(c: &UserCredential) -> Result<Option<PathBuf>, CredentialError> {
    // The kubeconfig is written (by rename) after the key and certificate.
    for path in [&c.kubeconfig, &c.cert_pem, &c.key_pem] {
        if !exists(path)? {
            return Ok(Some(path.clone()));
        }
    }
    Ok(None)
}

/// The credential of platform user `name`, made by `local.sh user NAME` first when any of
/// its files is missing. Works for any valid name; safe when several processes ask for the
/// same user at once (the script writes under the cluster lock).
pub fn user_credential(name: &str) -> Result<UserCredential, CredentialError> {
    if !valid_user_name(name) {
        return Err(CredentialError::InvalidName {
            name: name.to_string(),
        });
    }
    let files = user_files(name);
    if complete(&files)?.is_none() {
        return Ok(files);
    }
    let script = local_sh();
    let out = Command::new(&script)
        .arg("user")
        .arg(name)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CredentialError::Spawn {
            script: script.clone(),
            user: name.to_string(),
            source,
        })?;
    if !out.status.success() {
        return Err(CredentialError::Script {
            script,
            user: name.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    match complete(&files)? {
        None => Ok(files),
        Some(path) => Err(CredentialError::Incomplete {
            user: name.to_string(),
            path,
        }),
    }
}

/// A client certificate for `name` signed by the cluster CA whose validity ended years ago
/// (2020-01-01 to 2020-01-02), with a kubeconfig using it, in a temporary directory (removed
/// when the returned [`TempDir`] drops). The API server must answer 401.
pub fn expired_credential(name: &str) -> Result<(UserCredential, TempDir), CredentialError> {
    let ca = cluster_ca()?;
    let ca_key = require(pki_dir().join("ca.key"))?;
    made_up_credential(
        name,
        "expired",
        |_| Ok((ca, ca_key)),
        Validity::Between("20200101000000Z", "20200102000000Z"),
    )
}

/// A client certificate for `name` (valid dates, right subject) signed by a CA the cluster
/// does not know, made on the spot, with a kubeconfig using it, in a temporary directory. The
/// API server must answer 401.
pub fn foreign_ca_credential(name: &str) -> Result<(UserCredential, TempDir), CredentialError> {
    made_up_credential(
        name,
        "foreign-ca",
        |dir| {
            let crt = dir.join("foreign-ca.crt");
            let key = dir.join("foreign-ca.key");
            openssl(
                name,
                "req -x509 (foreign CA)",
                [
                    os("req"),
                    os("-x509"),
                    os("-new"),
                    os("-newkey"),
                    os("rsa:2048"),
                    os("-nodes"),
                    os("-days"),
                    os("2"),
                    os("-subj"),
                    os("/CN=jbazel-foreign-ca"),
                    os("-keyout"),
                    key.as_os_str(),
                    os("-out"),
                    crt.as_os_str(),
                ],
            )?;
            Ok((crt, key))
        },
        Validity::Days(1),
    )
}

enum Validity {
    Between(&'static str, &'static str),
    Days(u32),
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn openssl<'a>(
    user: &str,
    step: &'static str,
    args: impl IntoIterator<Item = &'a OsStr>,
) -> Result<(), CredentialError> {
    let out = Command::new("openssl")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| CredentialError::OpensslSpawn {
            step,
            user: user.to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CredentialError::Openssl {
            step,
            user: user.to_string(),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn write(path: &Path, text: &str) -> Result<(), CredentialError> {
    fs::write(path, text).map_err(|source| CredentialError::Fs {
        what: "write",
        path: path.to_path_buf(),
        source,
    })
}

/// Key, CSR (CN=name, O=jbazel:users) and a certificate signed by the CA `ca` returns, with
/// `openssl ca` (the only signer in this openssl, 3.0, that takes an explicit start date).
fn made_up_credential(
    name: &str,
    label: &str,
    ca: impl FnOnce(&Path) -> Result<(PathBuf, PathBuf), CredentialError>,
    validity: Validity,
) -> Result<(UserCredential, TempDir), CredentialError> {
    if !valid_user_name(name) {
        return Err(CredentialError::InvalidName {
            name: name.to_string(),
        });
    }
    let dir = tempfile::Builder::new()
        .prefix(&format!("jbazel-{label}-{name}-"))
        .tempdir()
        .map_err(|source| CredentialError::Fs {
            what: "create a temporary directory for",
            path: std::env::temp_dir(),
            source,
        })?;
    let d = dir.path();
    let (ca_crt, ca_key) = ca(d)?;

    let key = d.join(format!("{name}.key"));
    let csr = d.join(format!("{name}.csr"));
    let crt = d.join(format!("{name}.crt"));
    let subject = format!("/O={USER_GROUP}/CN={name}");
    openssl(
        name,
        "req (client key and CSR)",
        [
            os("req"),
            os("-new"),
            os("-newkey"),
            os("rsa:2048"),
            os("-nodes"),
            os("-subj"),
            os(&subject),
            os("-keyout"),
            key.as_os_str(),
            os("-out"),
            csr.as_os_str(),
        ],
    )?;

    // A throwaway `openssl ca` database: nothing is written next to the real CA.
    let db = d.join("ca-db");
    fs::create_dir(&db).map_err(|source| CredentialError::Fs {
        what: "create",
        path: db.clone(),
        source,
    })?;
    write(&db.join("index.txt"), "")?;
    let serial: u64 = rand::rng().random::<u64>() | 1 << 62;
    write(&db.join("serial"), &format!("{serial:016X}\n"))?;
    let config = d.join("ca.cnf");
    write(
        &config,
        &format!(
            "[ca]\n\
             default_ca = signer\n\
             [signer]\n\
             dir = {db}\n\
             database = $dir/index.txt\n\
             new_certs_dir = $dir\n\
             serial = $dir/serial\n\
             default_md = sha256\n\
             policy = any\n\
             unique_subject = no\n\
             copy_extensions = none\n\
             [any]\n\
             organizationName = optional\n\
             commonName = supplied\n\
             [client]\n\
             basicConstraints = CA:FALSE\n\
             keyUsage = critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage = clientAuth\n",
            db = db.display()
        ),
    )?;
    let mut args: Vec<&OsStr> = vec![
        os("ca"),
        os("-batch"),
        os("-notext"),
        os("-preserveDN"),
        os("-config"),
        config.as_os_str(),
        os("-extensions"),
        os("client"),
        os("-cert"),
        ca_crt.as_os_str(),
        os("-keyfile"),
        ca_key.as_os_str(),
        os("-in"),
        csr.as_os_str(),
        os("-out"),
        crt.as_os_str(),
    ];
    let days;
    match validity {
        Validity::Between(start, end) => {
            args.extend([os("-startdate"), os(start), os("-enddate"), os(end)])
        }
        Validity::Days(n) => {
            days = n.to_string();
            args.extend([os("-days"), os(&days)]);
        }
    }
    openssl(name, "ca (sign the client certificate)", args)?;

    let kubeconfig = d.join(format!("{name}.kubeconfig"));
    write(&kubeconfig, &kubeconfig_text(name, &crt, &key)?)?;
    Ok((
        UserCredential {
            user: name.to_string(),
            kubeconfig,
            cert_pem: crt,
            key_pem: key,
        },
        dir,
    ))
}

/// A kubeconfig (JSON, which kubeconfig loaders read as YAML) for the cluster of the admin
/// kubeconfig, authenticating with the certificate and key files given.
fn kubeconfig_text(name: &str, crt: &Path, key: &Path) -> Result<String, CredentialError> {
    let admin = require(admin_kubeconfig())?;
    let config = Kubeconfig::read_from(&admin).map_err(|source| CredentialError::Kubeconfig {
        path: admin.clone(),
        source,
    })?;
    let cluster = config
        .clusters
        .into_iter()
        .next()
        .and_then(|c| c.cluster)
        .ok_or_else(|| CredentialError::NoCluster {
            path: admin.clone(),
        })?;
    let cluster = serde_json::to_value(cluster).map_err(|source| CredentialError::Encode {
        user: name.to_string(),
        source,
    })?;
    let text = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{ "name": "jbazel", "cluster": cluster }],
        "users": [{
            "name": name,
            "user": {
                "client-certificate": crt.display().to_string(),
                "client-key": key.display().to_string(),
            }
        }],
        "contexts": [{
            "name": "jbazel",
            "context": { "cluster": "jbazel", "user": name, "namespace": format!("jbazel-{name}") }
        }],
        "current-context": "jbazel",
    });
    serde_json::to_string_pretty(&text).map_err(|source| CredentialError::Encode {
        user: name.to_string(),
        source,
    })
}
