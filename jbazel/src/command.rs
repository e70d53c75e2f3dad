//! One jbazel command, top-down: split the command line, settle the workspace, the caller
//! and the path map ([`Plan`]), then either print the plan (`JBAZEL_DRY_RUN`), hand the
//! command line to the local Bazel (`JBAZEL_LOCAL`), or run it on the server
//! ([`crate::remote`]). `main.rs` gathers the [`Invocation`], calls [`run`], prints the
//! error chain and exits with [`Done`]'s code or [`Error::exit_code`].

use crate::args::{self, CommandLine};
use crate::config::{Hop, Settings};
use crate::error::Error;
use crate::exit_code::ExitCode;
use crate::identity::{self, Caller};
use crate::invocation::Invocation;
use crate::mirror::Mirror;
use crate::paths::{self, PathMap};
use crate::rc::{self, DiskFs, RcLocations};
use crate::request::{self, Prepared};
use crate::workspace;
use proto::names::RepoHash;
use std::path::PathBuf;

/// How a command ended, when it ended the way the server said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    /// Exit with this code.
    Exit(ExitCode),
    /// Die by this signal (after the Cancel was sent).
    Signal(i32),
}

/// Everything known about this command before any server is contacted.
#[derive(Debug)]
pub struct Plan {
    pub settings: Settings,
    pub cl: CommandLine,
    /// The workspace root (physical path).
    pub root: PathBuf,
    /// The working directory.
    pub cwd: PathBuf,
    pub repo_hash: RepoHash,
    pub caller: Caller,
    pub map: PathMap,
    pub mirror: Mirror,
}

/// Runs the command the invocation asks for.
pub fn run(inv: &Invocation) -> Result<Done, Error> {
    let cl = args::split_command_line(&inv.argv)?;
    let settings = match Settings::parse_from_options(&cl.jbazel) {
        Ok(s) => s,
        Err(e) => {
            // clap's own report: help and version on stdout, errors on stderr.
            let _ = e.print();
            return Ok(Done::Exit(ExitCode::from_raw(e.exit_code())));
        }
    };
    if matches!(cl.command.as_str(), "--help" | "-h" | "-help") {
        print!("{}", Settings::help());
        return Ok(Done::Exit(ExitCode::SUCCESS));
    }
    let cl_startup = args::apply_startup(&[], &cl.startup)?;
    init_tracing(cl_startup.client_debug);
    if settings.local {
        return Err(exec_bazel_real(inv));
    }
    if cl_startup.version {
        println!("jbazel {}", env!("CARGO_PKG_VERSION"));
        return Ok(Done::Exit(ExitCode::SUCCESS));
    }
    for o in &cl_startup.ignored {
        eprintln!(
            "jbazel: WARNING: ignoring startup option {o}: the pod's Bazel server has its own \
             startup options"
        );
    }
    let plan = Plan::settle(inv, settings, cl)?;
    if plan.settings.dry_run {
        return dry_run(&plan, inv);
    }
    check_mirror(&plan);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(crate::remote::run(&plan, inv))
}

fn init_tracing(debug: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if debug { "jbazel=debug,warn" } else { "warn" })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

impl Plan {
    /// Finds the workspace, the caller and the mirror.
    pub fn settle(inv: &Invocation, settings: Settings, cl: CommandLine) -> Result<Plan, Error> {
        let cwd = match &inv.cwd {
            Ok(cwd) => cwd.clone(),
            Err(e) => return Err(Error::Cwd(std::io::Error::new(e.kind(), e.to_string()))),
        };
        let ws = workspace::find_root(&cwd, &workspace::Disk).map_err(|source| {
            let what = if cl.command.is_empty() {
                "jbazel".to_string()
            } else {
                format!("the '{}' command", cl.command)
            };
            Error::NoWorkspace { what, source }
        })?;
        let sources = identity::Sources::read(settings.user.clone(), settings.session_id.clone());
        let caller = identity::resolve(&sources)?;
        let repo_hash = workspace::repo_hash(&ws.root);
        let mut map = PathMap::new(
            &ws.root,
            &settings.filestore_root,
            &caller.user_id,
            &repo_hash,
        );
        map.aliases = [
            (map.mirror_src.clone(), paths::POD_SRC),
            (map.mirror_out.clone(), paths::POD_OUT),
        ]
        .into_iter()
        .filter_map(|(p, pod)| {
            std::fs::canonicalize(&p)
                .ok()
                .filter(|c| *c != p)
                .map(|c| (c, pod))
        })
        .collect();
        let mirror = Mirror::new(&map.mirror_out);
        tracing::debug!(user = %caller.user_id, repo_hash = %repo_hash, session = %caller.session_id,
            root = %ws.root.display(), marker = ws.marker, "workspace");
        Ok(Plan {
            settings,
            cl,
            root: ws.root,
            cwd,
            repo_hash,
            caller,
            map,
            mirror,
        })
    }
}

/// `JBAZEL_LOCAL=1`: hand the command line to the real Bazel bazelisk found. Returns only
/// on failure.
fn exec_bazel_real(inv: &Invocation) -> Error {
    use std::os::unix::process::CommandExt;
    let Some(real) = inv.non_empty_var("BAZEL_REAL") else {
        return Error::NoBazelReal;
    };
    let args = inv
        .argv
        .iter()
        .filter(|a| !a.starts_with(args::JBAZEL_PREFIX));
    let source = std::process::Command::new(real).args(args).exec();
    Error::ExecBazelReal {
        path: real.to_string(),
        source,
    }
}

/// Warns when the workspace root is not the filestore's copy: the server would not see the
/// user's files.
fn check_mirror(plan: &Plan) {
    use std::os::unix::fs::MetadataExt;
    let same = match (
        std::fs::metadata(&plan.root),
        std::fs::metadata(&plan.map.mirror_src),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    };
    if !same {
        tracing::warn!(root = %plan.root.display(), mirror = %plan.map.mirror_src.display(),
            "the workspace root is not the filestore's src directory; the server builds what the filestore holds");
    }
}

/// Reads the rc files (the pod's system rc from the mirror, when published). Bazel's
/// client reads them before it starts a server, and so does jbazel: a command that cannot
/// be sent (a refused import, a bad line) must not wait for a pod first.
pub fn read_rc_files(plan: &Plan, inv: &Invocation) -> Result<Vec<rc::RcFile>, Error> {
    let system_rc = plan.mirror.system_rc();
    let home = inv.home();
    let sel = args::rc_selection(&plan.cl.startup);
    let loc = RcLocations {
        system_rc: &system_rc,
        workspace: &plan.root,
        home: home.as_deref(),
        cwd: &plan.cwd,
    };
    Ok(rc::read_all(&DiskFs, &sel, &loc)?)
}

/// Reads the pod env from the mirror and builds the RunRequest ([`request::build`]) with
/// the rc files read by [`read_rc_files`].
pub fn prepare(plan: &Plan, inv: &Invocation, files: &[rc::RcFile]) -> Result<Prepared, Error> {
    let system_rc = plan.mirror.system_rc();
    if !system_rc.is_file() {
        tracing::warn!(path = %system_rc.display(), "the pod's system bazelrc is not published in the mirror");
    }
    let pod_env = plan.mirror.client_env();
    if pod_env.is_none() {
        tracing::warn!(path = %plan.mirror.client_env_path().display(),
            "the pod's client env is not published; sending Debian's default PATH");
    }
    let inputs = request::Inputs {
        invocation: inv,
        command_line: &plan.cl,
        map: &plan.map,
        cwd: &plan.cwd,
        rc_files: files,
        pod_env: pod_env.as_deref(),
        startup_time_ms: inv.elapsed_ms(),
        translate_paths: !plan.settings.no_translate_paths,
    };
    Ok(request::build(&inputs)?)
}

/// `JBAZEL_DRY_RUN`: what would be sent, and to whom; nothing is contacted.
fn dry_run(plan: &Plan, inv: &Invocation) -> Result<Done, Error> {
    let p = prepare(plan, inv, &read_rc_files(plan, inv)?)?;
    let kubeconfig = inv.var("KUBECONFIG").unwrap_or("~/.kube/config");
    print!("{}", dry_run_text(plan, &p, kubeconfig));
    Ok(Done::Exit(ExitCode::SUCCESS))
}

/// The dry run's report.
pub fn dry_run_text(plan: &Plan, p: &Prepared, kubeconfig: &str) -> String {
    let s = &plan.settings;
    let server = match &s.server {
        Some(addr) => format!("{addr} (JBAZEL_SERVER, no orchestrator)"),
        None => format!(
            "GetServer(user_id={}, repo_hash={}, session_id={}) at orchestrator {}, then {}",
            plan.caller.user_id,
            plan.repo_hash,
            plan.caller.session_id,
            s.orchestrator,
            match s.hop {
                Hop::PortForward => format!("API server port-forward (KUBECONFIG={kubeconfig})"),
                Hop::PodIp => "the pod IP (port-forward if unreachable)".into(),
            }
        ),
    };
    let mut out = String::new();
    out.push_str(&format!("workspace_root: {}\n", plan.root.display()));
    out.push_str(&format!("repo_hash: {}\n", plan.repo_hash));
    out.push_str(&format!("user_id: {}\n", plan.caller.user_id));
    out.push_str(&format!("session_id: {}\n", plan.caller.session_id));
    out.push_str(&format!(
        "filestore_src: {}\n",
        plan.map.mirror_src.display()
    ));
    out.push_str(&format!(
        "filestore_out: {}\n",
        plan.map.mirror_out.display()
    ));
    out.push_str(&format!(
        "request_cookie: {}\n",
        plan.mirror.request_cookie_path().display()
    ));
    out.push_str(&format!("server: {server}\n"));
    out.push_str(&format!("block_for_lock: {}\n", p.request.block_for_lock));
    out.push_str(&format!(
        "client_description: {}\n",
        p.request.client_description
    ));
    out.push_str("args:\n");
    for a in &p.request.arg {
        out.push_str(&format!("  {}\n", String::from_utf8_lossy(a)));
    }
    out
}
