//! The mount plan: a pure function of the validated config and the host's capabilities.
//!
//! It says which mounts make `/work/src` and `/work/out`, which command runs there, which mode
//! enters that view (and why), and the equivalent `bwrap` argv. `supervisor --dry-run` prints
//! it; [`crate::pivot`] carries it out.
//!
//! Three parts: [`facts`] reads what the plan is made from (the one I/O, kept apart), this
//! module makes the plan (pure), and [`render`] shows it for `--dry-run` (pure).
//!
//! Architecture invariant: no I/O here or in [`render`].

pub mod facts;
pub mod render;

use std::path::{Path, PathBuf};

use proto::names::{RepoHash, SessionId, UserId};
use serde::Serialize;

use crate::cgroup::{self, HeapChoice};
use crate::cli::ModeRequest;
use crate::config::{BazelSettings, Config, Job};
use crate::owner::{self, CannotSwitch, RunAs};

pub use facts::{HostFacts, ImageFacts, SECRET_DIRS};
pub use render::{render_capabilities, render_needs, shell_quote};

/// Where the pivoted view lives (a tmpfs, so the host's `/work` is never touched).
pub const WORK: &str = "/work";
/// The user's source, bound read-only from `R/U/H/src`: the checkout is the desktop's, and
/// neither Bazel nor a build action may change it (they write only the output base).
pub const WORK_SRC: &str = "/work/src";
/// Bazel's output base, bound from `R/U/H/out`.
pub const WORK_OUT: &str = "/work/out";
/// bwrap mode: the supervisor binary, bound read-only into the view, where it drops the
/// command's privileges (`drop-privileges`) after bwrap has made the mounts.
pub const WORK_HELPER: &str = "/work/.supervisor";

/// How the pivoted view is entered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// unshare(2) + mount(2) in the supervisor itself; children inherit the view.
    Direct,
    /// Every child runs under `bwrap` with the same binds; the supervisor stays outside.
    Bwrap,
}

/// The mode and why it was chosen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModeChoice {
    pub mode: Mode,
    /// Direct mode inside a new user namespace (no CAP_SYS_ADMIN).
    pub user_namespace: bool,
    pub reason: String,
}

/// No mode can work here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot pivot with --mode {requested:?}: {reason}")]
pub struct NoMode {
    pub requested: ModeRequest,
    pub reason: String,
}

/// Picks the mode: CAP_SYS_ADMIN -> direct; else a user namespace -> direct in it; else bwrap.
pub fn choose_mode(requested: ModeRequest, facts: &HostFacts) -> Result<ModeChoice, NoMode> {
    let direct = |why: &str| {
        if facts.cap_sys_admin {
            Some(ModeChoice {
                mode: Mode::Direct,
                user_namespace: false,
                reason: format!("{why}: CAP_SYS_ADMIN is in the effective set"),
            })
        } else if facts.user_namespaces {
            Some(ModeChoice {
                mode: Mode::Direct,
                user_namespace: true,
                reason: format!(
                    "{why}: no CAP_SYS_ADMIN, but user namespaces are allowed (uid {} -> 0)",
                    facts.euid
                ),
            })
        } else {
            None
        }
    };
    let bwrap = |why: &str| {
        facts.bwrap.as_ref().map(|p| ModeChoice {
            mode: Mode::Bwrap,
            user_namespace: false,
            reason: format!("{why}: bwrap found at {}", p.display()),
        })
    };
    let none = |reason: &str| NoMode {
        requested,
        reason: reason.to_owned(),
    };
    match requested {
        ModeRequest::Direct => direct("requested").ok_or_else(|| {
            none("direct mode needs CAP_SYS_ADMIN or user namespaces, and this process has neither")
        }),
        ModeRequest::Bwrap => bwrap("requested").ok_or_else(|| none("bwrap not found")),
        ModeRequest::Auto => direct("auto")
            .or_else(|| bwrap("auto: no CAP_SYS_ADMIN and no user namespaces"))
            .ok_or_else(|| {
                none("no CAP_SYS_ADMIN, no user namespaces and no bwrap: grant CAP_SYS_ADMIN")
            }),
    }
}

/// One step of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountStep {
    /// `make-rprivate`, `tmpfs` or `bind`.
    pub kind: MountKind,
    /// Host path (bind), `tmpfs`, or absent.
    pub source: Option<PathBuf>,
    pub target: PathBuf,
    pub flags: Vec<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountKind {
    /// Recursive private propagation on `/`: nothing leaks back to the host.
    MakeRprivate,
    Tmpfs,
    Bind,
    /// A read-only, empty tmpfs over the filestore root R: the rest of R (other users'
    /// trees) is gone from this namespace once src and out are bound.
    Hide,
}

/// Bazel server parameters the plan derived (absent for `run`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerPlan {
    pub output_base: &'static str,
    pub workspace: &'static str,
    pub command_port: u16,
    /// `--max_idle_secs`: after this long without a command the server exits, and so does
    /// the supervisor (the pod ends).
    pub idle_timeout_secs: u32,
    pub system_bazelrc: PathBuf,
    /// The container's memory limit as read at validation, and the heap it gives.
    pub memory_limit: cgroup::MemoryLimit,
    pub heap: HeapChoice,
}

/// The whole plan, as `--dry-run --format json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MountPlan {
    pub user_id: UserId,
    pub repo_hash: RepoHash,
    pub session_id: Option<SessionId>,
    #[serde(flatten)]
    pub mode: ModeChoice,
    /// Namespaces created in direct mode (`user` only without CAP_SYS_ADMIN).
    pub namespaces: Vec<&'static str>,
    /// uid/gid maps written in a user namespace ("inside outside count").
    pub uid_map: Option<String>,
    pub gid_map: Option<String>,
    pub src: PathBuf,
    pub out: PathBuf,
    pub mounts: Vec<MountStep>,
    /// Paths covered by an empty read-only tmpfs after the binds (the filestore root):
    /// the command sees its own src and out, nothing else of R.
    pub hidden: Vec<PathBuf>,
    /// Binds of the view made read-only, submounts included ([`WORK_SRC`]): the command
    /// writes only the output base.
    pub read_only: Vec<PathBuf>,
    pub cwd: &'static str,
    /// What runs in the pivoted view (the Bazel client starting the server, or `run`'s CMD).
    pub command: Vec<String>,
    pub server: Option<ServerPlan>,
    /// The bwrap form of the same plan, command included.
    pub bwrap_argv: Vec<String>,
    /// Where the supervisor itself reads the output base (`/work/out` in direct mode, the host
    /// path in bwrap mode, where it stays outside the view).
    pub out_seen_by_supervisor: PathBuf,
    /// Who the command runs as (the tree's owner when the supervisor is root), and why.
    pub run_as: RunAs,
    /// Bazel's home when it runs as the owner (HOME, TMPDIR, --output_user_root live there).
    pub bazel_home: Option<PathBuf>,
    /// Variables set for the command on top of the supervisor's environment.
    pub env: Vec<(String, String)>,
}

/// Why no plan can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    NoMode(#[from] NoMode),
    #[error(transparent)]
    RunAs(#[from] CannotSwitch),
    /// Bazel's home would be hidden by the view (under /work or the filestore root).
    #[error(
        "Bazel's home {home:?} would not be visible in the view ({why}): set BAZEL_HOME_PARENT"
    )]
    Home { home: PathBuf, why: String },
    /// bwrap mode must run this binary in the view, and its path is unknown.
    #[error("bwrap mode needs the supervisor's own path (/proc/self/exe) to drop privileges in the view")]
    NoExe,
}

/// How bwrap mode drops privileges: this binary, bound into the view, run as
/// `drop-privileges` before the command (bwrap's `--uid` would only map ids in a user
/// namespace, leaving the kernel uid 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BwrapHelper {
    pub exe: PathBuf,
    pub run_as: RunAs,
}

/// The Bazel client invocation that starts (or finds) the server; run from `/work/src`.
///
/// `--bazelrc=<system rc>` gives the client the image's rc (Bazel reads it as the user rc, in
/// addition to `/etc/bazel.bazelrc` and the workspace's `.bazelrc`); `info release` makes the
/// client start the server, wait for it and exit, leaving it running until it has been idle
/// for `--max_idle_secs`. `-Xmx` comes from the container's memory limit ([`cgroup::heap_for`]).
pub fn server_start_argv(b: &BazelSettings, home: Option<&Path>) -> Vec<String> {
    let mut argv = vec![
        b.client.display().to_string(),
        format!("--output_base={WORK_OUT}"),
    ];
    if let Some(h) = home {
        // The owner's own, writable: the default (~root/.cache/bazel) is not.
        argv.push(format!("--output_user_root={}", h.join("bazel").display()));
    }
    argv.extend([
        format!("--bazelrc={}", b.system_bazelrc.display()),
        format!("--command_port={}", b.command_port),
        "--host_jvm_args=-Djava.net.preferIPv4Stack=true".to_owned(),
        // Bazel's client asks the JVM for a heap dump on OutOfMemoryError, into the output
        // base: on the filestore, ~150 MB per crash that nothing removes. The crash itself
        // is reported (exit 33) and the server restarted; no dumps.
        "--host_jvm_args=-XX:-HeapDumpOnOutOfMemoryError".to_owned(),
    ]);
    argv.extend(cgroup::heap_for(&b.memory_limit).startup_option());
    argv.extend([
        format!("--max_idle_secs={}", b.idle_timeout_secs),
        "info".to_owned(),
        "release".to_owned(),
    ]);
    argv
}

/// The bwrap argv for the same binds, ending with `--` and `command`.
///
/// `--dev-bind / /` keeps the host's `/dev` and `/proc`: bwrap's fresh `--proc` fails ("Can't
/// mount proc") in a pod with CAP_SYS_ADMIN that is not `privileged`, and Bazel needs neither
/// fresh.
pub fn bwrap_argv(
    bwrap: &Path,
    src: &Path,
    out: &Path,
    hidden: &[PathBuf],
    helper: Option<&BwrapHelper>,
    command: &[String],
) -> Vec<String> {
    let mut argv: Vec<String> = [
        &bwrap.display().to_string(),
        "--die-with-parent",
        // Bazel and its actions get no capability (bwrap keeps root's otherwise). The
        // helper keeps just what it needs to switch ids and empty the bounding set, and
        // drops those too before the command runs.
        "--cap-drop",
        "ALL",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(h) = helper {
        let mut keep = vec!["CAP_SETPCAP"];
        if h.run_as.switch {
            keep.extend(["CAP_SETUID", "CAP_SETGID"]);
        }
        for c in keep {
            argv.extend(["--cap-add".to_owned(), c.to_owned()]);
        }
    }
    argv.extend(["--dev-bind", "/", "/"].map(str::to_owned));
    for h in hidden {
        // Sources of the binds below are resolved outside the new root: hiding R first
        // does not hide src and out.
        argv.extend(["--tmpfs".to_owned(), h.display().to_string()]);
        argv.extend(["--remount-ro".to_owned(), h.display().to_string()]);
    }
    argv.extend(
        [
            "--tmpfs",
            WORK,
            // Read-only, submounts too.
            "--ro-bind",
            &src.display().to_string(),
            WORK_SRC,
            "--bind",
            &out.display().to_string(),
            WORK_OUT,
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    if let Some(h) = helper {
        argv.extend([
            "--ro-bind".to_owned(),
            h.exe.display().to_string(),
            WORK_HELPER.to_owned(),
        ]);
    }
    argv.extend(["--chdir", WORK_SRC, "--"].map(str::to_owned));
    if let Some(h) = helper {
        argv.extend([
            WORK_HELPER.to_owned(),
            "drop-privileges".to_owned(),
            format!("--uid={}", h.run_as.uid),
            format!("--gid={}", h.run_as.gid),
        ]);
        if h.run_as.switch {
            argv.push("--switch".to_owned());
        }
        argv.push("--".to_owned());
    }
    argv.extend(command.iter().cloned());
    argv
}

/// What of the filestore root the command must not see: R itself, unless hiding it would
/// hide the view (R is `/`, holds `/work`, or lies under it, where the tmpfs on /work
/// hides it already). Pure.
pub fn hidden_paths(root: &Path) -> Vec<PathBuf> {
    let work = Path::new(WORK);
    if root == Path::new("/") || work.starts_with(root) || root.starts_with(work) {
        return Vec::new();
    }
    vec![root.to_path_buf()]
}

/// Config + host facts -> the plan. Pure.
pub fn plan(
    cfg: &Config,
    requested: ModeRequest,
    facts: &HostFacts,
    bwrap: &Path,
) -> Result<MountPlan, PlanError> {
    let choice = choose_mode(requested, facts)?;
    let run_as = owner::decide(
        cfg.dirs.owner,
        &cfg.dirs.repo,
        owner::Supervisor {
            euid: facts.euid,
            egid: facts.egid,
            can_switch: facts.cap_setuid_setgid,
            user_namespace: choice.mode == Mode::Direct && choice.user_namespace,
        },
    )?;
    let mut hidden = hidden_paths(&cfg.dirs.root);
    hidden.extend(
        facts
            .secret_dirs
            .iter()
            .filter(|d| !Path::new(WORK).starts_with(d) && !d.starts_with(WORK))
            .cloned(),
    );
    let bazel_home = match (&cfg.job, run_as.switch) {
        (Job::Serve, true) => {
            let home = owner::bazel_home(&cfg.bazel.home_parent, run_as.uid);
            let why = if !home.is_absolute() {
                Some("not an absolute path".to_owned())
            } else if home.starts_with(WORK) {
                Some(format!("{WORK} is a tmpfs in the view"))
            } else {
                hidden
                    .iter()
                    .find(|h| home.starts_with(h))
                    .map(|h| format!("{} is hidden", h.display()))
            };
            if let Some(why) = why {
                return Err(PlanError::Home { home, why });
            }
            Some(home)
        }
        _ => None,
    };
    let env = match &bazel_home {
        Some(home) => owner::bazel_env(home, cfg.identity.user_id.as_ref()),
        None => Vec::new(),
    };
    let (command, server) = match &cfg.job {
        Job::Serve => (
            server_start_argv(&cfg.bazel, bazel_home.as_deref()),
            Some(ServerPlan {
                output_base: WORK_OUT,
                workspace: WORK_SRC,
                command_port: cfg.bazel.command_port,
                idle_timeout_secs: cfg.bazel.idle_timeout_secs,
                system_bazelrc: cfg.bazel.system_bazelrc.clone(),
                memory_limit: cfg.bazel.memory_limit.clone(),
                heap: cgroup::heap_for(&cfg.bazel.memory_limit),
            }),
        ),
        Job::Run(cmd) => (cmd.clone(), None),
    };
    let mounts = vec![
        MountStep {
            kind: MountKind::MakeRprivate,
            source: None,
            target: PathBuf::from("/"),
            flags: vec!["rec", "private"],
        },
        MountStep {
            kind: MountKind::Tmpfs,
            source: Some(PathBuf::from("tmpfs")),
            target: PathBuf::from(WORK),
            flags: vec!["nosuid", "nodev", "mode=0755"],
        },
        MountStep {
            kind: MountKind::Bind,
            source: Some(cfg.dirs.src.clone()),
            target: PathBuf::from(WORK_SRC),
            flags: vec!["rec", "ro"],
        },
        MountStep {
            kind: MountKind::Bind,
            source: Some(cfg.dirs.out.clone()),
            target: PathBuf::from(WORK_OUT),
            flags: vec!["rec"],
        },
    ];
    let mut mounts = mounts;
    mounts.extend(hidden.iter().map(|h| MountStep {
        kind: MountKind::Hide,
        source: None,
        target: h.clone(),
        flags: vec!["ro", "nosuid", "nodev", "noexec", "empty"],
    }));
    let bwrap_path = facts.bwrap.as_deref().unwrap_or(bwrap);
    // A root supervisor's bwrap (no user namespace) leaves the bounding set full: the
    // helper empties it and switches ids. An unprivileged bwrap runs in a user namespace
    // that holds nothing more than the supervisor's own uid.
    let helper = match (choice.mode, facts.euid) {
        (Mode::Bwrap, 0) => Some(BwrapHelper {
            exe: facts.exe.clone().ok_or(PlanError::NoExe)?,
            run_as: run_as.clone(),
        }),
        _ => None,
    };
    let (namespaces, uid_map, gid_map) = match (choice.mode, choice.user_namespace) {
        (Mode::Direct, true) => (
            vec!["user", "mnt"],
            Some(format!("0 {} 1", facts.euid)),
            Some(format!("0 {} 1", facts.egid)),
        ),
        (Mode::Direct, false) => (vec!["mnt"], None, None),
        (Mode::Bwrap, _) => (vec![], None, None),
    };
    let out_seen_by_supervisor = match choice.mode {
        Mode::Direct => PathBuf::from(WORK_OUT),
        Mode::Bwrap => cfg.dirs.out.clone(),
    };
    Ok(MountPlan {
        user_id: cfg.identity.user_id.clone(),
        repo_hash: cfg.identity.repo_hash.clone(),
        session_id: cfg.identity.session_id.clone(),
        mode: choice,
        namespaces,
        uid_map,
        gid_map,
        src: cfg.dirs.src.clone(),
        out: cfg.dirs.out.clone(),
        bwrap_argv: bwrap_argv(
            bwrap_path,
            &cfg.dirs.src,
            &cfg.dirs.out,
            &hidden,
            helper.as_ref(),
            &command,
        ),
        hidden,
        read_only: vec![PathBuf::from(WORK_SRC)],
        mounts,
        cwd: WORK_SRC,
        command,
        server,
        out_seen_by_supervisor,
        run_as,
        bazel_home,
        env,
    })
}

/// One thing the pod needs, and whether this host has it (`--dry-run` lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Need {
    pub what: String,
    pub have: bool,
    /// What happens without it, or why it is missing.
    pub detail: String,
}

/// What the pod needs to start the server as planned, against this host's facts. Pure.
pub fn needs(host: &HostFacts, image: &ImageFacts, mode: &ModeChoice) -> Vec<Need> {
    let direct = host.cap_sys_admin || host.user_namespaces;
    vec![
        Need {
            what: format!("system bazelrc {}", image.system_bazelrc.display()),
            have: image.system_bazelrc_problem.is_none(),
            detail: match &image.system_bazelrc_problem {
                None => "the platform's rc, published to jbazel".into(),
                Some(p) => format!("{p} (the image has it at /etc/jbazel/system.bazelrc)"),
            },
        },
        Need {
            what: format!("Bazel client {}", image.bazel.display()),
            have: image.bazel_found,
            detail: if image.bazel_found {
                "starts the server".into()
            } else {
                "not found (the image has Debian's bazel-bootstrap)".into()
            },
        },
        Need {
            what: "CAP_SYS_ADMIN or unprivileged user namespaces (direct pivot)".into(),
            have: direct,
            detail: if direct {
                "the pivot is a private mount namespace".into()
            } else {
                "without either, only bwrap can make the view".into()
            },
        },
        Need {
            what: "bwrap (fallback pivot)".into(),
            have: host.bwrap.is_some(),
            detail: match (&host.bwrap, mode.mode) {
                (Some(b), _) => b.display().to_string(),
                (None, Mode::Bwrap) => "needed by the chosen mode, not on PATH".into(),
                (None, Mode::Direct) => "not on PATH; not needed by the chosen mode".into(),
            },
        },
    ]
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::{Identity, RepoDirs, ReportSettings};

    #[test]
    fn needs_name_what_a_desktop_lacks() {
        let image = ImageFacts {
            system_bazelrc: "/etc/jbazel/system.bazelrc".into(),
            system_bazelrc_problem: Some("no such file".into()),
            bazel: "bazel".into(),
            bazel_found: true,
        };
        let host = facts(false, false, false);
        let mode = ModeChoice {
            mode: Mode::Bwrap,
            user_namespace: false,
            reason: "test".into(),
        };
        let n = needs(&host, &image, &mode);
        let missing: Vec<&str> = n
            .iter()
            .filter(|n| !n.have)
            .map(|n| n.what.as_str())
            .collect();
        assert_eq!(
            missing,
            [
                "system bazelrc /etc/jbazel/system.bazelrc",
                "CAP_SYS_ADMIN or unprivileged user namespaces (direct pivot)",
                "bwrap (fallback pivot)"
            ]
        );
        let text = render_needs(&n);
        assert!(
            text.contains("MISSING system bazelrc /etc/jbazel/system.bazelrc: no such file"),
            "{text}"
        );
        assert!(text.contains("needed by the chosen mode"), "{text}");
        let all = needs(
            &facts(true, false, true),
            &ImageFacts {
                system_bazelrc_problem: None,
                ..image
            },
            &mode,
        );
        assert!(all.iter().all(|n| n.have), "{all:?}");
    }

    pub(super) fn facts(cap: bool, userns: bool, bwrap: bool) -> HostFacts {
        HostFacts {
            euid: 1000,
            egid: 1000,
            cap_sys_admin: cap,
            user_namespaces: userns,
            bwrap: bwrap.then(|| PathBuf::from("/usr/bin/bwrap")),
            cap_setuid_setgid: cap,
            exe: Some(PathBuf::from("/usr/local/bin/supervisor")),
            secret_dirs: Vec::new(),
        }
    }

    /// A root supervisor (uid 0) with the capabilities, or without SETUID/SETGID.
    pub(super) fn root_facts(can_switch: bool) -> HostFacts {
        HostFacts {
            euid: 0,
            egid: 0,
            cap_setuid_setgid: can_switch,
            ..facts(true, true, true)
        }
    }

    pub(super) fn owned_by(job: Job, uid: u32) -> Config {
        let mut c = config(job);
        c.dirs.owner = crate::owner::Owner { uid, gid: uid };
        c
    }

    pub(super) fn config(job: Job) -> Config {
        let repo = PathBuf::from("/fs/alice/0123456789abcdef0123456789abcdef");
        Config {
            identity: Identity {
                user_id: "alice".parse().expect("valid user"),
                repo_hash: "0123456789abcdef0123456789abcdef"
                    .parse()
                    .expect("valid hash"),
                session_id: Some("s1".parse().expect("valid session")),
            },
            dirs: RepoDirs {
                root: PathBuf::from("/fs"),
                src: repo.join("src"),
                out: repo.join("out"),
                owner: crate::owner::Owner { uid: 0, gid: 0 },
                repo: repo.clone(),
            },
            job,
            bazel: BazelSettings {
                client: PathBuf::from("bazel"),
                command_port: 9001,
                idle_timeout_secs: 10_800,
                system_bazelrc: PathBuf::from("/etc/jbazel/system.bazelrc"),
                system_bazelrc_text: String::new(),
                cgroup_root: PathBuf::from("/sys/fs/cgroup"),
                memory_limit: cgroup::MemoryLimit::Limited {
                    bytes: 4 << 30,
                    source: PathBuf::from("/sys/fs/cgroup/memory.max"),
                },
                home_parent: PathBuf::from("/tmp"),
            },
            report: ReportSettings::default(),
        }
    }

    #[test]
    fn mode_table() {
        use ModeRequest::*;
        // (requested, cap, userns, bwrap) -> Some((mode, userns)) or None (error)
        let cases = [
            (Auto, true, true, true, Some((Mode::Direct, false))),
            (Auto, false, true, true, Some((Mode::Direct, true))),
            (Auto, false, false, true, Some((Mode::Bwrap, false))),
            (Auto, false, false, false, None),
            (Direct, true, false, false, Some((Mode::Direct, false))),
            (Direct, false, true, false, Some((Mode::Direct, true))),
            (Direct, false, false, true, None),
            (Bwrap, true, true, true, Some((Mode::Bwrap, false))),
            (Bwrap, true, true, false, None),
        ];
        for (req, cap, userns, bw, want) in cases {
            let got = choose_mode(req, &facts(cap, userns, bw));
            match (got, want) {
                (Ok(c), Some((m, u))) => {
                    assert_eq!(
                        (c.mode, c.user_namespace),
                        (m, u),
                        "{req:?} {cap} {userns} {bw}"
                    );
                    assert!(!c.reason.is_empty());
                }
                (Err(e), None) => assert!(!e.reason.is_empty()),
                (got, want) => panic!("{req:?} {cap} {userns} {bw}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn plan_table() {
        let run = Job::Run(vec!["cat".into(), "/work/src/MARKER".into()]);
        struct Case {
            job: Job,
            req: ModeRequest,
            facts: HostFacts,
            mode: Mode,
            namespaces: &'static [&'static str],
            out_seen: &'static str,
            command0: &'static str,
        }
        let out_host = "/fs/alice/0123456789abcdef0123456789abcdef/out";
        let cases = [
            Case {
                job: Job::Serve,
                req: ModeRequest::Auto,
                facts: facts(true, true, true),
                mode: Mode::Direct,
                namespaces: &["mnt"],
                out_seen: WORK_OUT,
                command0: "bazel",
            },
            Case {
                job: Job::Serve,
                req: ModeRequest::Auto,
                facts: facts(false, true, true),
                mode: Mode::Direct,
                namespaces: &["user", "mnt"],
                out_seen: WORK_OUT,
                command0: "bazel",
            },
            Case {
                job: run.clone(),
                req: ModeRequest::Bwrap,
                facts: facts(true, true, true),
                mode: Mode::Bwrap,
                namespaces: &[],
                out_seen: out_host,
                command0: "cat",
            },
            Case {
                job: run.clone(),
                req: ModeRequest::Auto,
                facts: facts(false, false, true),
                mode: Mode::Bwrap,
                namespaces: &[],
                out_seen: out_host,
                command0: "cat",
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            let p = plan(&config(c.job.clone()), c.req, &c.facts, Path::new("bwrap"))
                .unwrap_or_else(|e| panic!("case {i}: {e}"));
            assert_eq!(p.mode.mode, c.mode, "case {i}");
            assert_eq!(p.namespaces, c.namespaces, "case {i}");
            assert_eq!(
                p.out_seen_by_supervisor,
                PathBuf::from(c.out_seen),
                "case {i}"
            );
            assert_eq!(p.command[0], c.command0, "case {i}");
            assert_eq!(p.cwd, WORK_SRC);
            let targets: Vec<_> = p.mounts.iter().map(|m| m.target.clone()).collect();
            assert_eq!(
                targets,
                ["/", WORK, WORK_SRC, WORK_OUT, "/fs"].map(PathBuf::from),
                "case {i}: order matters: private first, tmpfs before binds, R hidden last"
            );
            assert_eq!(p.mounts[4].kind, MountKind::Hide, "case {i}");
            assert_eq!(p.hidden, [PathBuf::from("/fs")], "case {i}");
            assert_eq!(p.mounts[2].source.as_deref(), Some(p.src.as_path()));
            assert_eq!(p.mounts[3].source.as_deref(), Some(p.out.as_path()));
            // The checkout is read-only in the view, the output base is not.
            assert_eq!(p.mounts[2].flags, ["rec", "ro"], "case {i}");
            assert_eq!(p.mounts[3].flags, ["rec"], "case {i}");
            assert_eq!(p.read_only, [PathBuf::from(WORK_SRC)], "case {i}");
            let bw = p.bwrap_argv.join(" ");
            assert!(
                bw.contains(&format!("--ro-bind {} {WORK_SRC} ", p.src.display())),
                "case {i}: {bw}"
            );
            assert!(
                bw.contains(&format!("--bind {} {WORK_OUT} ", p.out.display())),
                "case {i}: {bw}"
            );
            // The bwrap form ends with the same command.
            let tail = &p.bwrap_argv[p.bwrap_argv.len() - p.command.len()..];
            assert_eq!(tail, p.command.as_slice(), "case {i}");
            assert_eq!(p.server.is_some(), c.job == Job::Serve, "case {i}");
            if c.namespaces.contains(&"user") {
                assert_eq!(p.uid_map.as_deref(), Some("0 1000 1"));
            } else {
                assert_eq!(p.uid_map, None);
            }
        }
    }

    #[test]
    fn server_argv_has_the_contract_flags() {
        let argv = server_start_argv(&config(Job::Serve).bazel, None);
        assert!(
            !argv.iter().any(|a| a.starts_with("--output_user_root")),
            "{argv:?}"
        );
        for want in [
            "--output_base=/work/out",
            "--command_port=9001",
            "--host_jvm_args=-Djava.net.preferIPv4Stack=true",
            "--host_jvm_args=-XX:-HeapDumpOnOutOfMemoryError",
            "--host_jvm_args=-Xmx3072m",
            "--max_idle_secs=10800",
            "--bazelrc=/etc/jbazel/system.bazelrc",
        ] {
            assert!(
                argv.iter().any(|a| a == want),
                "{want} missing from {argv:?}"
            );
        }
        // No limit: no -Xmx, the JVM's default.
        let mut unlimited = config(Job::Serve).bazel;
        unlimited.memory_limit = cgroup::MemoryLimit::Unlimited {
            source: PathBuf::from("/sys/fs/cgroup/memory.max"),
        };
        let argv2 = server_start_argv(&unlimited, None);
        assert!(!argv2.iter().any(|a| a.contains("-Xmx")), "{argv2:?}");
        // Startup options come before the command.
        let info = argv.iter().position(|a| a == "info").expect("info");
        assert!(argv[..info].iter().skip(1).all(|a| a.starts_with("--")));
    }

    #[test]
    fn the_filestore_root_is_hidden_unless_that_hides_the_view() {
        assert_eq!(
            hidden_paths(Path::new("/srv/fs")),
            [PathBuf::from("/srv/fs")]
        );
        for root in ["/", "/work", "/work/fs"] {
            assert!(hidden_paths(Path::new(root)).is_empty(), "{root}");
        }
    }

    #[test]
    fn the_pods_secrets_are_hidden_too() {
        let facts = HostFacts {
            secret_dirs: vec![PathBuf::from("/run/secrets")],
            ..root_facts(true)
        };
        let p = plan(
            &config(Job::Serve),
            ModeRequest::Auto,
            &facts,
            Path::new("bwrap"),
        )
        .expect("plan");
        let shown = serde_json::to_string(&p).expect("json");
        assert!(shown.contains("/run/secrets"), "{shown}");
    }

    #[test]
    fn bwrap_argv_binds_like_direct_mode() {
        let argv = bwrap_argv(
            Path::new("/usr/bin/bwrap"),
            Path::new("/fs/a/src"),
            Path::new("/fs/a/out"),
            &[PathBuf::from("/fs")],
            None,
            &["true".to_owned()],
        );
        let s = argv.join(" ");
        assert!(
            s.starts_with(
                "/usr/bin/bwrap --die-with-parent --cap-drop ALL --dev-bind / / \
                 --tmpfs /fs --remount-ro /fs --tmpfs /work"
            ),
            "{s}"
        );
        assert!(
            s.contains("--ro-bind /fs/a/src /work/src --bind /fs/a/out /work/out"),
            "{s}"
        );
        assert!(s.ends_with("--chdir /work/src -- true"));
    }

    #[test]
    fn bazel_runs_as_the_owner_of_the_tree() {
        // Root supervisor, tree of 54321, direct mode: switch in pre_exec, a home of its own.
        let p = plan(
            &owned_by(Job::Serve, 54321),
            ModeRequest::Direct,
            &root_facts(true),
            Path::new("bwrap"),
        )
        .expect("plan");
        assert_eq!(
            (p.run_as.uid, p.run_as.gid, p.run_as.switch),
            (54321, 54321, true)
        );
        assert_eq!(p.bazel_home, Some(PathBuf::from("/tmp/jbazel-home-54321")));
        assert!(
            p.command
                .contains(&"--output_user_root=/tmp/jbazel-home-54321/bazel".to_owned()),
            "{:?}",
            p.command
        );
        let env: Vec<String> = p.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            env,
            [
                "HOME=/tmp/jbazel-home-54321",
                "TMPDIR=/tmp/jbazel-home-54321/tmp",
                "USER=alice",
                "LOGNAME=alice"
            ]
        );
        let h = p.render_human();
        assert!(
            h.contains("run as:   uid 54321 gid 54321 (switched to"),
            "{h}"
        );
        assert!(h.contains("env:      HOME=/tmp/jbazel-home-54321"), "{h}");

        // bwrap mode: the helper binary in the view switches; bwrap keeps only what it needs.
        let b = plan(
            &owned_by(Job::Serve, 54321),
            ModeRequest::Bwrap,
            &root_facts(true),
            Path::new("bwrap"),
        )
        .expect("plan");
        let s = b.bwrap_argv.join(" ");
        assert!(
            s.contains(
                "--cap-drop ALL --cap-add CAP_SETPCAP --cap-add CAP_SETUID --cap-add CAP_SETGID --dev-bind / /"
            ),
            "{s}"
        );
        assert!(
            s.contains(
                "--ro-bind /usr/local/bin/supervisor /work/.supervisor --chdir /work/src -- \
                 /work/.supervisor drop-privileges --uid=54321 --gid=54321 --switch -- bazel "
            ),
            "{s}"
        );
        let tail = &b.bwrap_argv[b.bwrap_argv.len() - b.command.len()..];
        assert_eq!(tail, b.command.as_slice());

        // A root-owned tree: nothing switches, no home, no extra env; bwrap's helper only
        // empties the bounding set.
        let r = plan(
            &owned_by(Job::Serve, 0),
            ModeRequest::Bwrap,
            &root_facts(true),
            Path::new("bwrap"),
        )
        .expect("plan");
        assert!(!r.run_as.switch);
        assert_eq!((r.bazel_home.clone(), r.env.len()), (None, 0));
        let s = r.bwrap_argv.join(" ");
        assert!(
            s.contains("--cap-drop ALL --cap-add CAP_SETPCAP --dev-bind"),
            "{s}"
        );
        assert!(
            s.contains("drop-privileges --uid=0 --gid=0 -- bazel"),
            "{s}"
        );

        // `run` gets the switch but no Bazel home.
        let run = plan(
            &owned_by(Job::Run(vec!["id".into()]), 54321),
            ModeRequest::Direct,
            &root_facts(true),
            Path::new("bwrap"),
        )
        .expect("plan");
        assert!(run.run_as.switch && run.bazel_home.is_none() && run.env.is_empty());

        // Refusals: no CAP_SETUID/SETGID; a home the view would hide.
        let err = plan(
            &owned_by(Job::Serve, 54321),
            ModeRequest::Direct,
            &root_facts(false),
            Path::new("bwrap"),
        )
        .expect_err("cannot switch");
        assert!(matches!(err, PlanError::RunAs(_)), "{err}");
        for (parent, why) in [
            ("/fs/x", "/fs is hidden"),
            ("/work/h", "tmpfs"),
            ("rel", "absolute"),
        ] {
            let mut c = owned_by(Job::Serve, 54321);
            c.bazel.home_parent = PathBuf::from(parent);
            let err = plan(
                &c,
                ModeRequest::Direct,
                &root_facts(true),
                Path::new("bwrap"),
            )
            .expect_err(parent);
            assert!(err.to_string().contains(why), "{parent}: {err}");
        }
    }
}
