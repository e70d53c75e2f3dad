//! The platform's own programs, run for real: an orchestrator process and a "desktop"
//! (a user's checkout that is a bind mount of the filestore, as in production's NFS mirror).
//!
//! Used by the end-to-end tests and the demo driver. Binaries come from the same cargo
//! target dir as the test or demo executable (`cargo build --workspace --bins` first).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::GroupChild;

/// Why a platform component could not be set up.
#[derive(thiserror::Error)]
pub enum PlatformError {
    /// A binary of the workspace is not built.
    #[error("binary {0} not found: run `cargo build --workspace --bins` first")]
    MissingBinary(PathBuf),
    /// A process could not be spawned.
    #[error("cannot start {what}")]
    Spawn { what: String, source: io::Error },
    /// The orchestrator did not come up.
    #[error("orchestrator on {addr} did not start: {reason}; log {log}:\n{tail}")]
    OrchestratorDown {
        addr: SocketAddr,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    /// A filesystem step failed.
    #[error("cannot {what} {path}")]
    Fs {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    /// The desktop bind mount failed.
    #[error("cannot bind-mount {src} on {target}")]
    Mount {
        src: PathBuf,
        target: PathBuf,
        source: nix::Error,
    },
    /// The sample workspace could not be copied into the filestore.
    #[error("cannot copy the workspace into the filestore")]
    CopyWorkspace(#[from] testkit::CopyError),
    /// A credential of the harness is missing or could not be made.
    #[error("credential")]
    Credential(#[from] crate::credentials::CredentialError),
    /// A TLS channel could not be set up.
    #[error("TLS channel to {url} as {user}")]
    Channel {
        url: String,
        user: String,
        #[source]
        source: tonic::transport::Error,
    },
}
debug_is_the_chain!(PlatformError);

/// A gRPC channel to the orchestrator at `url` (https) that authenticates as `user` with
/// the user's client certificate (made by `local.sh user` when missing). Lazy: it connects
/// at the first call.
pub fn user_channel(url: &str, user: &str) -> Result<tonic::transport::Channel, PlatformError> {
    let cred = crate::credentials::user_credential(user)?;
    let read = |p: &Path| fs::read(p).map_err(fs_err("read", p));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read(
            &crate::credentials::cluster_ca()?,
        )?))
        .identity(tonic::transport::Identity::from_pem(
            read(&cred.cert_pem)?,
            read(&cred.key_pem)?,
        ));
    channel_with(url, user, Some(tls))
}

/// A channel to `url` with `tls` as given (None: the CA only, no client certificate).
pub fn channel_with(
    url: &str,
    user: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Channel, PlatformError> {
    let err = |source| PlatformError::Channel {
        url: url.to_string(),
        user: user.to_string(),
        source,
    };
    let tls = match tls {
        Some(t) => t,
        None => tonic::transport::ClientTlsConfig::new().ca_certificate(
            tonic::transport::Certificate::from_pem(
                fs::read(crate::credentials::cluster_ca()?).map_err(|source| {
                    PlatformError::Fs {
                        what: "read",
                        path: PathBuf::from("the cluster CA"),
                        source,
                    }
                })?,
            ),
        ),
    };
    Ok(tonic::transport::Endpoint::from_shared(url.to_string())
        .map_err(err)?
        .tls_config(tls)
        .map_err(err)?
        .connect_timeout(Duration::from_secs(5))
        .connect_lazy())
}

fn fs_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PlatformError + 'a {
    move |source| PlatformError::Fs {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The cargo target dir's profile folder this executable was built into
/// (`target/debug` for `target/debug/deps/e2e-xxxx` and for `target/debug/jbazel-demo`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    }
}

/// Path of a workspace binary (`orchestrator`, `jbazel`, `supervisor`), checked to exist.
pub fn workspace_binary(name: &str) -> Result<PathBuf, PlatformError> {
    let path = bin_dir().join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(PlatformError::MissingBinary(path))
    }
}

/// The repository root (for the sample workspace and scripts).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// How to run an orchestrator.
#[derive(Debug, Clone)]
pub struct OrchestratorOptions {
    /// `host:port` of the Spanner emulator.
    pub spanner_host: String,
    pub project: String,
    pub instance: String,
    pub database: String,
    /// Kubernetes namespace for the pods.
    pub namespace: String,
    /// Filestore root R (hostPath of the pods).
    pub filestore_root: PathBuf,
    /// The pod image.
    pub image: String,
    /// Port to listen on (0.0.0.0:port, so pods reach it through the bridge gateway).
    pub port: u16,
    /// Where the log goes.
    pub log_path: PathBuf,
    /// The orchestrator's own kubeconfig: its least-privilege ServiceAccount
    /// ([`crate::credentials::orchestrator_kubeconfig`]), never the admin's.
    pub kubeconfig: PathBuf,
    /// Keep running after this handle is dropped (the demo leaves it running).
    pub detached: bool,
    /// More flags (e.g. `--idle-timeout-secs 20`), after the ones above.
    pub extra_args: Vec<String>,
}

/// A running orchestrator process (its own process group; killed on drop unless detached).
pub struct Orchestrator {
    child: GroupChild,
    addr: SocketAddr,
    log_path: PathBuf,
}

impl Orchestrator {
    /// Starts the orchestrator binary and waits until it accepts connections.
    pub fn start(opts: &OrchestratorOptions) -> Result<Self, PlatformError> {
        let bin = workspace_binary("orchestrator")?;
        let tls = crate::credentials::orchestrator_tls_args()?;
        let log = fs::File::create(&opts.log_path).map_err(fs_err("create", &opts.log_path))?;
        let log_err = log.try_clone().map_err(fs_err("open", &opts.log_path))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("--listen")
            .arg(format!("0.0.0.0:{}", opts.port))
            .arg("--project")
            .arg(&opts.project)
            .arg("--instance")
            .arg(&opts.instance)
            .arg("--database")
            .arg(&opts.database)
            .arg("--namespace")
            .arg(&opts.namespace)
            .arg("--image")
            .arg(&opts.image)
            .arg("--filestore-root")
            .arg(&opts.filestore_root)
            .arg("--pod-orchestrator-addr")
            .arg(format!(
                "https://{}:{}",
                crate::kubernetes::POD_GATEWAY,
                opts.port
            ))
            // TLS with the cluster's CA: users present their kubeconfig certificate.
            .args(&tls)
            .args(&opts.extra_args)
            .env("SPANNER_EMULATOR_HOST", &opts.spanner_host)
            .env("KUBECONFIG", &opts.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        let mut child =
            GroupChild::spawn(&mut cmd, opts.detached).map_err(|source| PlatformError::Spawn {
                what: bin.display().to_string(),
                source,
            })?;
        let addr = SocketAddr::from(([127, 0, 0, 1], opts.port));
        if let Err(reason) = child.wait_listening(addr, Duration::from_secs(30)) {
            let log = fs::read_to_string(&opts.log_path).unwrap_or_default();
            return Err(PlatformError::OrchestratorDown {
                addr,
                reason,
                log: opts.log_path.clone(),
                tail: tail(&log, 30),
            });
        }
        if opts.detached {
            child.detach();
        }
        Ok(Orchestrator {
            child,
            addr,
            log_path: opts.log_path.clone(),
        })
    }

    /// `https://127.0.0.1:port`, for jbazel.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Process group id (= pid): what a tear-down kills.
    pub fn pgid(&self) -> u32 {
        self.child.pgid()
    }

    /// SIGKILLs the process group (a crash: no shutdown path runs) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// The orchestrator's log so far.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A finished command for a failure message: the step, its exit code and duration, then
/// its stdout and stderr.
pub fn show(step: &str, out: &std::process::Output, took: Duration) -> String {
    format!(
        "{step}: exit {:?} in {took:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The last `n` lines of a text.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The uid and gid a user's files have on the filestore: the machine's account of that
/// name when there is one (`setup.sh` makes alice, bob and mallory), else a fixed uid
/// derived from the name (30000-59999), as a directory service would give.
pub fn desktop_owner(user: &str) -> (u32, u32) {
    if let Ok(Some(u)) = nix::unistd::User::from_name(user) {
        return (u.uid.as_raw(), u.gid.as_raw());
    }
    let h = user.bytes().fold(2166136261u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(16777619)
    });
    let id = 30000 + h % 30000;
    (id, id)
}

/// chowns `dir` and everything below it (no symlink is followed).
pub fn chown_tree(dir: &Path, uid: u32, gid: u32) -> Result<(), PlatformError> {
    let owner = (
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
    );
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        nix::unistd::fchownat(
            nix::fcntl::AT_FDCWD,
            &p,
            owner.0,
            owner.1,
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| PlatformError::Fs {
            what: "chown",
            path: p.clone(),
            source: e.into(),
        })?;
        let meta = fs::symlink_metadata(&p).map_err(fs_err("stat", &p))?;
        if meta.is_dir() {
            for entry in fs::read_dir(&p).map_err(fs_err("list", &p))? {
                stack.push(entry.map_err(fs_err("list", &p))?.path());
            }
        }
    }
    Ok(())
}

/// A user's desktop checkout: `desktop_path` is a bind mount of `R/<user>/<md5(path)>/src`,
/// as production's NFS mount would be. Unmounted on drop.
pub struct Desktop {
    pub filestore_root: PathBuf,
    pub user: String,
    pub desktop_path: PathBuf,
    pub repo_hash: proto::names::RepoHash,
    mounted: bool,
}

impl Desktop {
    /// Lays out `R/<user>/<hash>/{src,out}` with a copy of `workspace` in `src`, and mounts
    /// it at `desktop_path` (created if missing).
    pub fn create(
        filestore_root: &Path,
        user: &str,
        desktop_path: &Path,
        workspace: &Path,
    ) -> Result<Self, PlatformError> {
        // The same RepoHash jbazel computes for this checkout (its owner).
        let hash = jbazel::workspace::repo_hash(desktop_path);
        let repo = filestore_root.join(user).join(&hash);
        let src = repo.join("src");
        let out = repo.join("out");
        fs::create_dir_all(&src).map_err(fs_err("create", &src))?;
        fs::create_dir_all(&out).map_err(fs_err("create", &out))?;
        testkit::copy_dir(workspace, &src)?;
        // On a real filestore the user's tree is the user's: the pod runs Bazel as its owner.
        let (uid, gid) = desktop_owner(user);
        chown_tree(&filestore_root.join(user), uid, gid)?;
        fs::create_dir_all(desktop_path).map_err(fs_err("create", desktop_path))?;
        nix::mount::mount(
            Some(&src),
            desktop_path,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(|source| PlatformError::Mount {
            src: src.clone(),
            target: desktop_path.to_path_buf(),
            source,
        })?;
        Ok(Desktop {
            filestore_root: filestore_root.to_path_buf(),
            user: user.to_string(),
            desktop_path: desktop_path.to_path_buf(),
            repo_hash: hash,
            mounted: true,
        })
    }

    /// `R/<user>/<hash>/out`: the mirror of the pod's `/work/out`.
    pub fn out_dir(&self) -> PathBuf {
        self.filestore_root
            .join(&self.user)
            .join(&self.repo_hash)
            .join("out")
    }

    /// Where Bazel puts `//pkg:target` in the mirror.
    pub fn artifact(&self, package: &str, target: &str) -> PathBuf {
        self.out_dir()
            .join("execroot/__main__/bazel-out/k8-fastbuild/bin")
            .join(package)
            .join(target)
    }

    /// A `jbazel` command in the checkout, for this user and the given session, with the
    /// user's own kubeconfig (their credential for the orchestrator and the port-forward).
    pub fn jbazel(&self, orchestrator_url: &str, session: &str) -> Result<Command, PlatformError> {
        let kubeconfig = crate::credentials::user_credential(&self.user)?.kubeconfig;
        let mut cmd = Command::new(workspace_binary("jbazel")?);
        cmd.current_dir(&self.desktop_path)
            .env("JBAZEL_ORCHESTRATOR", orchestrator_url)
            .env("JBAZEL_FILESTORE_ROOT", &self.filestore_root)
            .env("JBAZEL_USER", &self.user)
            .env("JBAZEL_SESSION_ID", session)
            .env("KUBECONFIG", &kubeconfig)
            .env_remove("JBAZEL_ORCHESTRATOR_CA")
            .env_remove("JBAZEL_SERVER")
            .env_remove("JBAZEL_DRY_RUN")
            .stdin(Stdio::null());
        Ok(cmd)
    }

    /// Unmounts the desktop path now (also done on drop).
    pub fn unmount(&mut self) {
        if self.mounted {
            let _ = nix::mount::umount2(&self.desktop_path, nix::mount::MntFlags::MNT_DETACH);
            self.mounted = false;
        }
    }

    /// Keeps the mount after this handle is gone (the demo leaves it for the user).
    pub fn keep_mounted(mut self) {
        self.mounted = false;
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        self.unmount();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
