//! The validated configuration: names checked with [`proto::names`], the repository's
//! `src`/`out` dirs resolved (symlinks included) and proven to stay inside the repository's
//! own directory of the filestore.
//!
//! Architecture invariant: this module only reads (stat, canonicalize, read the system rc).
//! It creates nothing and mounts nothing, so a refused input leaves no trace.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use proto::names::{InvalidName, RepoHash, SessionId, UserId};
use proto::pod::env;

use crate::cgroup::{self, MemoryLimit};
use crate::cli::{Command, Opts};
use crate::owner::Owner;

/// Largest system rc accepted (it is copied into the output base and sent with every command).
pub const MAX_SYSTEM_RC_BYTES: u64 = 1 << 20;

/// The idle timeout without IDLE_TIMEOUT_SECS: 3 h, Bazel's own `--max_idle_secs` default.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u32 = 10_800;
/// Bazel's `--max_idle_secs` is a Java int.
pub const MAX_IDLE_TIMEOUT_SECS: u32 = i32::MAX as u32;

/// Why the configuration was refused. Messages name the variable or the path.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required setting is absent.
    #[error("{0} is not set (env or flag)")]
    Missing(&'static str),
    /// UserId, RepoHash or SessionId broke the API's naming rules.
    #[error(transparent)]
    Name(#[from] InvalidName),
    /// The filestore root must be an absolute path.
    #[error("filestore root {0:?} must be an absolute path")]
    RelativeRoot(PathBuf),
    /// The filestore root cannot be resolved.
    #[error("filestore root {path:?} is unusable")]
    Root { path: PathBuf, source: io::Error },
    /// A repository dir does not exist (or is a dangling symlink).
    #[error(
        "{what} dir {path:?} does not exist (the filestore must hold R/<user>/<repo_hash>/{what})"
    )]
    MissingDir { what: &'static str, path: PathBuf },
    /// A path exists but is no directory.
    #[error("{what} {path:?} is not a directory")]
    NotADirectory { what: &'static str, path: PathBuf },
    /// A repository dir resolves (through symlinks) outside the repository's own directory.
    #[error("{what} dir {path:?} resolves to {resolved:?}, outside {allowed:?}: refused")]
    Escapes {
        what: &'static str,
        path: PathBuf,
        resolved: PathBuf,
        allowed: PathBuf,
    },
    /// src and out resolve to the same dir or one inside the other.
    #[error("src {src:?} and out {out:?} overlap: refused")]
    Overlap { src: PathBuf, out: PathBuf },
    /// A path could not be inspected.
    #[error("cannot inspect {path:?}")]
    Io { path: PathBuf, source: io::Error },
    /// The system bazelrc cannot be read.
    #[error("system bazelrc {path:?}: {reason}")]
    SystemRc { path: PathBuf, reason: String },
    /// The orchestrator address is not an http(s) URL.
    #[error("{var} {0:?} must be an http:// or https:// URL", var = env::ORCHESTRATOR_ADDR)]
    OrchestratorAddr(String),
    /// IDLE_TIMEOUT_SECS is not a positive whole number of seconds Bazel accepts.
    #[error(
        "{var} {0} must be a whole number of seconds from 1 to {MAX_IDLE_TIMEOUT_SECS}",
        var = env::IDLE_TIMEOUT_SECS
    )]
    IdleTimeout(String),
}

/// What the supervisor runs in the pivoted view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// The Bazel server (the pod's job).
    Serve,
    /// A command instead of Bazel (`supervisor run -- CMD...`).
    Run(Vec<String>),
}

/// The user's names, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: UserId,
    pub repo_hash: RepoHash,
    pub session_id: Option<SessionId>,
}

/// The repository's dirs on the filestore, canonical (symlinks resolved) and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoDirs {
    /// Canonical filestore root.
    pub root: PathBuf,
    /// Canonical `R/<user>/<repo_hash>/src`.
    pub src: PathBuf,
    /// Canonical `R/<user>/<repo_hash>/out`.
    pub out: PathBuf,
    /// `R/<user>/<repo_hash>` (canonical root joined with the names; a real directory).
    pub repo: PathBuf,
    /// Its owner: Bazel and every build action run as this uid and gid.
    pub owner: Owner,
}

/// How the Bazel server is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BazelSettings {
    pub client: PathBuf,
    pub command_port: u16,
    /// Bazel's `--max_idle_secs`: the server exits after this long without a command.
    pub idle_timeout_secs: u32,
    pub system_bazelrc: PathBuf,
    /// The system rc's text, read at validation (published into the output base).
    pub system_bazelrc_text: String,
    /// The cgroup filesystem (memory limit, OOM-kill counter).
    pub cgroup_root: PathBuf,
    /// The container's memory limit, read at validation (sizes the Java heap).
    pub memory_limit: MemoryLimit,
    /// Where Bazel's home (`jbazel-home-<uid>`) is made when Bazel runs as the tree's owner.
    pub home_parent: PathBuf,
}

/// Where readiness is reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReportSettings {
    pub orchestrator_addr: Option<String>,
    pub pod_name: String,
    pub pod_ip: String,
}

/// Everything the supervisor needs, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub identity: Identity,
    pub dirs: RepoDirs,
    pub job: Job,
    pub bazel: BazelSettings,
    pub report: ReportSettings,
}

/// Checks the names. Pure: this runs before any path is built from them.
pub fn validate_identity(
    user_id: Option<&str>,
    repo_hash: Option<&str>,
    session_id: Option<&str>,
) -> Result<Identity, ConfigError> {
    let user_id = user_id.ok_or(ConfigError::Missing(env::USER_ID))?;
    let repo_hash = repo_hash.ok_or(ConfigError::Missing(env::REPO_HASH))?;
    let user_id = UserId::parse(user_id)?;
    let repo_hash = RepoHash::parse(repo_hash)?;
    // An empty SESSION_ID counts as unset (`SESSION_ID=` in a manifest).
    let session_id = session_id
        .filter(|s| !s.is_empty())
        .map(SessionId::parse)
        .transpose()?;
    Ok(Identity {
        user_id,
        repo_hash,
        session_id,
    })
}

/// Resolves `root/<user>/<repo_hash>/{src,out}`. Reads only.
///
/// Each dir, after resolving every symlink, must stay inside `canonical(root)/<user>/<hash>`:
/// the repository's own directory. That is stricter than "inside the root": a `src` that
/// links into another user's tree is refused as firmly as one that links to `/etc`.
pub fn resolve_repo_dirs(root: &Path, id: &Identity) -> Result<RepoDirs, ConfigError> {
    if !root.is_absolute() {
        return Err(ConfigError::RelativeRoot(root.to_owned()));
    }
    let canon_root = std::fs::canonicalize(root).map_err(|source| ConfigError::Root {
        path: root.to_owned(),
        source,
    })?;
    if !canon_root.is_dir() {
        return Err(ConfigError::NotADirectory {
            what: "filestore root",
            path: root.to_owned(),
        });
    }
    let allowed = canon_root.join(&id.user_id).join(&id.repo_hash);
    let resolve = |what: &'static str| -> Result<PathBuf, ConfigError> {
        let path = allowed.join(what);
        let canon = match std::fs::canonicalize(&path) {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ConfigError::MissingDir { what, path })
            }
            Err(source) => return Err(ConfigError::Io { path, source }),
        };
        if !canon.starts_with(&allowed) || canon == allowed {
            return Err(ConfigError::Escapes {
                what,
                path,
                resolved: canon,
                allowed: allowed.clone(),
            });
        }
        let meta = std::fs::metadata(&canon).map_err(|source| ConfigError::Io {
            path: canon.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(ConfigError::NotADirectory { what, path });
        }
        Ok(canon)
    };
    let src = resolve("src")?;
    let out = resolve("out")?;
    if src.starts_with(&out) || out.starts_with(&src) {
        return Err(ConfigError::Overlap { src, out });
    }
    // The tree's owner. Not followed: src resolved inside `allowed`, so it is a real
    // directory (a link there would have resolved elsewhere and been refused above).
    let meta = std::fs::symlink_metadata(&allowed).map_err(|source| ConfigError::Io {
        path: allowed.clone(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ConfigError::NotADirectory {
            what: "repository",
            path: allowed,
        });
    }
    Ok(RepoDirs {
        root: canon_root,
        src,
        out,
        owner: Owner {
            uid: meta.uid(),
            gid: meta.gid(),
        },
        repo: allowed,
    })
}

/// Reads the system bazelrc the server is started with: a regular file of bounded size.
pub fn read_system_rc(path: &Path) -> Result<String, ConfigError> {
    let err = |reason: String| ConfigError::SystemRc {
        path: path.to_owned(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if !meta.is_file() {
        return Err(err("not a regular file".into()));
    }
    if meta.len() > MAX_SYSTEM_RC_BYTES {
        return Err(err(format!(
            "{} bytes, at most {MAX_SYSTEM_RC_BYTES}",
            meta.len()
        )));
    }
    std::fs::read_to_string(path).map_err(|e| err(e.to_string()))
}

/// Parses IDLE_TIMEOUT_SECS: unset or empty -> [`DEFAULT_IDLE_TIMEOUT_SECS`]; otherwise
/// whole seconds, 1 to [`MAX_IDLE_TIMEOUT_SECS`] (0 would mean "never" to Bazel, which is
/// not an idle timeout). Pure.
pub fn parse_idle_timeout(value: Option<&str>) -> Result<u32, ConfigError> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return Ok(DEFAULT_IDLE_TIMEOUT_SECS);
    };
    let refuse = || {
        ConfigError::IdleTimeout(if v.len() <= 32 {
            format!("{v:?}")
        } else {
            format!("({} bytes)", v.len())
        })
    };
    if !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(refuse());
    }
    match v.parse::<u32>() {
        Ok(n) if (1..=MAX_IDLE_TIMEOUT_SECS).contains(&n) => Ok(n),
        _ => Err(refuse()),
    }
}

/// Checks the orchestrator address; the pod name defaults to the hostname. POD_IP is kept as
/// given: without a usable one the supervisor still serves and only skips ReportReady
/// ([`crate::report::pod_ip`]), since the pod watch makes the row READY anyway.
pub fn validate_report(
    orchestrator_addr: Option<&str>,
    pod_name: Option<&str>,
    pod_ip: Option<&str>,
) -> Result<ReportSettings, ConfigError> {
    let orchestrator_addr = match orchestrator_addr.filter(|a| !a.is_empty()) {
        Some(a) => {
            let ok = (a.starts_with("http://") || a.starts_with("https://"))
                && tonic::transport::Endpoint::from_shared(a.to_owned()).is_ok();
            if !ok {
                return Err(ConfigError::OrchestratorAddr(a.to_owned()));
            }
            Some(a.to_owned())
        }
        None => None,
    };
    let pod_ip = pod_ip.unwrap_or_default();
    // Kubernetes sets the hostname to the pod name; POD_NAME (downward API) wins.
    let pod_name = match pod_name.filter(|n| !n.is_empty()) {
        Some(n) => n.to_owned(),
        None => nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .unwrap_or_default(),
    };
    Ok(ReportSettings {
        orchestrator_addr,
        pod_name,
        pod_ip: pod_ip.to_owned(),
    })
}

impl Config {
    /// Validates the options for a job: names first (pure), then the paths (reads only).
    pub fn load(opts: &Opts, command: Option<&Command>) -> Result<Config, ConfigError> {
        let identity = validate_identity(
            opts.user_id.as_deref(),
            opts.repo_hash.as_deref(),
            opts.session_id.as_deref(),
        )?;
        let report = validate_report(
            opts.orchestrator_addr.as_deref(),
            opts.pod_name.as_deref(),
            opts.pod_ip.as_deref(),
        )?;
        let idle_timeout_secs = parse_idle_timeout(opts.idle_timeout_secs.as_deref())?;
        let job = match command {
            Some(Command::Run { cmd }) => Job::Run(cmd.clone()),
            Some(Command::Probe | Command::DropPrivileges { .. }) | None => Job::Serve,
        };
        if job == Job::Serve && report.orchestrator_addr.is_some() && identity.session_id.is_none()
        {
            return Err(ConfigError::Missing(env::SESSION_ID));
        }
        let dirs = resolve_repo_dirs(&opts.filestore_root, &identity)?;
        // The system rc matters to the Bazel server only; `run` does not need one. A dry run
        // only prints the plan, so it runs on a desktop without the image's files: it lists
        // what is missing (`plan::needs`) instead of failing.
        let system_bazelrc_text = match job {
            Job::Serve if opts.dry_run => read_system_rc(&opts.system_bazelrc).unwrap_or_default(),
            Job::Serve => read_system_rc(&opts.system_bazelrc)?,
            Job::Run(_) => String::new(),
        };
        let memory_limit = match job {
            Job::Serve => cgroup::read_memory_limit(&opts.cgroup_root),
            Job::Run(_) => MemoryLimit::Unknown {
                reason: "not read for `run`".into(),
            },
        };
        Ok(Config {
            identity,
            dirs,
            job,
            bazel: BazelSettings {
                client: opts.bazel.clone(),
                command_port: opts.command_port,
                idle_timeout_secs,
                system_bazelrc: opts.system_bazelrc.clone(),
                system_bazelrc_text,
                cgroup_root: opts.cgroup_root.clone(),
                memory_limit,
                home_parent: opts.bazel_home_parent.clone(),
            },
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const HASH: &str = "0123456789abcdef0123456789abcdef";

    fn id(user: &str) -> Identity {
        validate_identity(Some(user), Some(HASH), None).expect("valid identity")
    }

    #[test]
    fn identity_table() {
        let long = "a".repeat(10_000);
        // (USER_ID, REPO_HASH, SESSION_ID, expected message fragment)
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a str>, &'a str);
        let cases: &[Case] = &[
            (None, Some(HASH), None, "USER_ID is not set"),
            (Some("alice"), None, None, "REPO_HASH is not set"),
            (Some("../etc"), Some(HASH), None, "invalid user_id"),
            (Some("a/b"), Some(HASH), None, "invalid user_id"),
            (Some("al\0ice"), Some(HASH), None, "invalid user_id"),
            (
                Some(&long),
                Some(HASH),
                None,
                "invalid user_id: 10000 bytes",
            ),
            (Some("alice"), Some("../../etc"), None, "invalid repo_hash"),
            (
                Some("alice"),
                Some("0123456789abcdef0123456789abcde\0"),
                None,
                "invalid repo_hash",
            ),
            (Some("alice"), Some(&long), None, "invalid repo_hash"),
            (Some("alice"), Some(HASH), Some("a/b"), "invalid session_id"),
        ];
        for (user, hash, session, want) in cases {
            let err = validate_identity(*user, *hash, *session).expect_err(want);
            let msg = err.to_string();
            assert!(msg.contains(want), "{msg:?} should contain {want:?}");
            assert!(msg.len() < 300, "message must not echo huge input: {msg}");
        }
        let ok = validate_identity(Some("alice"), Some(HASH), Some("")).expect("valid");
        assert_eq!(ok.session_id, None, "empty SESSION_ID counts as unset");
    }

    #[test]
    fn report_table() {
        assert!(validate_report(Some("http://10.244.0.1:50051"), None, Some("10.244.0.7")).is_ok());
        assert!(matches!(
            validate_report(Some("10.244.0.1:50051"), None, None),
            Err(ConfigError::OrchestratorAddr(_))
        ));
        // POD_IP is ReportReady's business (it skips the report), not a reason to refuse.
        let bad_ip = validate_report(None, None, Some("not-an-ip")).expect("kept");
        assert_eq!(bad_ip.pod_ip, "not-an-ip");
        let none = validate_report(Some(""), None, None).expect("empty addr = unset");
        assert_eq!(none.orchestrator_addr, None);
    }

    #[test]
    fn idle_timeout_table() {
        // (IDLE_TIMEOUT_SECS, Ok(seconds) or Err(fragment))
        let long = "9".repeat(1000);
        let cases: &[(Option<&str>, Result<u32, &str>)] = &[
            (None, Ok(10_800)),
            (Some(""), Ok(10_800)),
            (Some(" 3 "), Ok(3)),
            (Some("1"), Ok(1)),
            (Some("2147483647"), Ok(2_147_483_647)),
            (
                Some("0"),
                Err("\"0\" must be a whole number of seconds from 1"),
            ),
            (Some("2147483648"), Err("IDLE_TIMEOUT_SECS")),
            (Some("-5"), Err("\"-5\"")),
            (Some("+5"), Err("\"+5\"")),
            (Some("3s"), Err("\"3s\"")),
            (Some("1.5"), Err("\"1.5\"")),
            (Some(&long), Err("(1000 bytes)")),
        ];
        for (value, want) in cases {
            match (parse_idle_timeout(*value), want) {
                (Ok(got), Ok(w)) => assert_eq!(got, *w, "{value:?}"),
                (Err(e), Err(frag)) => {
                    let msg = e.to_string();
                    assert!(msg.starts_with("IDLE_TIMEOUT_SECS "), "{msg}");
                    assert!(msg.contains(frag), "{msg:?} should contain {frag:?}");
                    assert!(msg.len() < 200, "{msg}");
                }
                (got, want) => panic!("{value:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn tree() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().expect("tempdir");
        let repo = t.path().join("alice").join(HASH);
        std::fs::create_dir_all(repo.join("src")).expect("mkdir src");
        std::fs::create_dir_all(repo.join("out")).expect("mkdir out");
        (t, repo)
    }

    #[test]
    fn resolves_good_tree() {
        let (t, repo) = tree();
        let dirs = resolve_repo_dirs(t.path(), &id("alice")).expect("resolves");
        assert_eq!(dirs.src, repo.canonicalize().expect("canon").join("src"));
        assert_eq!(dirs.out, repo.canonicalize().expect("canon").join("out"));
        let meta = std::fs::metadata(&repo).expect("stat");
        assert_eq!(
            dirs.owner,
            Owner {
                uid: meta.uid(),
                gid: meta.gid()
            }
        );
        assert_eq!(dirs.repo, repo.canonicalize().expect("canon"));
    }

    #[test]
    fn symlink_inside_repo_is_fine() {
        let (_t, repo) = tree();
        std::fs::create_dir(repo.join("src.v2")).expect("mkdir");
        std::fs::remove_dir(repo.join("src")).expect("rmdir");
        symlink(repo.join("src.v2"), repo.join("src")).expect("symlink");
        let root = repo.parent().and_then(Path::parent).expect("root");
        let dirs = resolve_repo_dirs(root, &id("alice")).expect("resolves");
        assert!(dirs.src.ends_with("src.v2"));
    }

    #[test]
    fn refusals() {
        // (setup, expected error fragment)
        type Setup = fn(&Path);
        let cases: &[(&str, Setup, &str)] = &[
            (
                "src links to /etc",
                |repo| {
                    std::fs::remove_dir(repo.join("src")).expect("rmdir");
                    symlink("/etc", repo.join("src")).expect("symlink");
                },
                "outside",
            ),
            (
                "src links to another user's src",
                |repo| {
                    let other = repo
                        .parent()
                        .and_then(Path::parent)
                        .expect("root")
                        .join("bob");
                    std::fs::create_dir_all(other.join("x")).expect("mkdir");
                    std::fs::remove_dir(repo.join("src")).expect("rmdir");
                    symlink(other.join("x"), repo.join("src")).expect("symlink");
                },
                "outside",
            ),
            (
                "src links to ..",
                |repo| {
                    std::fs::remove_dir(repo.join("src")).expect("rmdir");
                    symlink("..", repo.join("src")).expect("symlink");
                },
                "outside",
            ),
            (
                "out missing",
                |repo| std::fs::remove_dir(repo.join("out")).expect("rmdir"),
                "does not exist",
            ),
            (
                "src dangling",
                |repo| {
                    std::fs::remove_dir(repo.join("src")).expect("rmdir");
                    symlink(repo.join("nowhere"), repo.join("src")).expect("symlink");
                },
                "does not exist",
            ),
            (
                "src is a file",
                |repo| {
                    std::fs::remove_dir(repo.join("src")).expect("rmdir");
                    std::fs::write(repo.join("src"), "x").expect("write");
                },
                "not a directory",
            ),
            (
                "out inside src",
                |repo| {
                    std::fs::remove_dir(repo.join("out")).expect("rmdir");
                    std::fs::create_dir(repo.join("src").join("o")).expect("mkdir");
                    symlink(repo.join("src").join("o"), repo.join("out")).expect("symlink");
                },
                "overlap",
            ),
        ];
        for (name, setup, want) in cases {
            let (t, repo) = tree();
            setup(&repo);
            let err = resolve_repo_dirs(t.path(), &id("alice")).expect_err(name);
            assert!(err.to_string().contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn root_must_exist_and_be_absolute() {
        let err = resolve_repo_dirs(Path::new("rel/root"), &id("alice")).expect_err("relative");
        assert!(matches!(err, ConfigError::RelativeRoot(_)));
        let err = resolve_repo_dirs(Path::new("/nonexistent/jbazel-root"), &id("alice"))
            .expect_err("missing");
        assert!(
            err.to_string().contains("/nonexistent/jbazel-root"),
            "{err}"
        );
    }
}
