//! `jbazel`: wires the command line, the workspace, the identity and the rc files into one
//! RunRequest, finds the server (orchestrator + hop, or `JBAZEL_SERVER`), runs the command
//! and exits with Bazel's exit code (or execs `bazel run`'s binary from the mirror).

use anyhow::anyhow;
use jbazel::args::{self, Startup};
use jbazel::client::{self, Cookies, Outcome, Output};
use jbazel::config::{Hop, Settings};
use jbazel::hop::{self, Target};
use jbazel::identity::{self, Identity};
use jbazel::mirror::{self, Mirror};
use jbazel::orchestrator_client::{self, Ids};
use jbazel::paths::{self, PathMap, StreamRewriter};
use jbazel::progress::{PlainLines, Progress, Spinner, TICK};
use jbazel::rc::{self, DiskFs, RcLocations};
use jbazel::{endpoint_cache, exec_policy, file_flags, links, terminal, workspace};
use proto::command_server::RunRequest;
use proto::error_chain::ErrorChain;
use proto::names::RepoHash;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// Bazel's exit code for a bad command line.
const BAD_ARGV: i32 = 2;
/// Bazel's exit code for a problem of the local environment.
const LOCAL_ENV: i32 = client::LOCAL_ENVIRONMENTAL_ERROR;

/// A failure with the exit code it maps to.
struct Fail {
    code: i32,
    err: anyhow::Error,
}

fn fail(code: i32, err: impl Into<anyhow::Error>) -> Fail {
    Fail {
        code,
        err: err.into(),
    }
}

enum Done {
    Exit(i32),
    Signal(i32),
}

fn main() {
    let start = Instant::now();
    // ring, not the programs' aws-lc (proto::tls): jbazel is a process per command, and
    // aws-lc seeds its RNG with CPU-jitter entropy at first use, 55 ms of every command
    // measured (strace: no syscall between its fork-safety probe and the ClientHello);
    // ring reads getrandom(2). Both the orchestrator's TLS and kube's port-forward use it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let argv: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let code = match real_main(start, argv) {
        Ok(Done::Exit(c)) => c,
        Ok(Done::Signal(sig)) => client::die_by_signal(sig),
        Err(f) => {
            eprintln!("jbazel: ERROR: {}", ErrorChain(f.err.as_ref()));
            f.code
        }
    };
    std::process::exit(code);
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

/// Everything known about this invocation before any server is contacted.
struct Plan {
    settings: Settings,
    cl: args::CommandLine,
    root: PathBuf,
    cwd: PathBuf,
    repo_hash: RepoHash,
    id: Identity,
    map: PathMap,
    mirror: Mirror,
}

fn real_main(start: Instant, argv: Vec<String>) -> Result<Done, Fail> {
    let cl = args::split_command_line(&argv).map_err(|e| fail(BAD_ARGV, e))?;
    let settings = match Settings::parse_from_options(&cl.jbazel) {
        Ok(s) => s,
        Err(e) => e.exit(),
    };
    if matches!(cl.command.as_str(), "--help" | "-h" | "-help") {
        print!("{}", Settings::help());
        return Ok(Done::Exit(0));
    }
    let cl_startup = args::apply_startup(&[], &cl.startup).map_err(|e| fail(BAD_ARGV, e))?;
    init_tracing(cl_startup.client_debug);
    if settings.local {
        return Err(exec_bazel_real(&argv));
    }
    if cl_startup.version {
        println!("jbazel {}", env!("CARGO_PKG_VERSION"));
        return Ok(Done::Exit(0));
    }
    for o in &cl_startup.ignored {
        eprintln!(
            "jbazel: WARNING: ignoring startup option {o}: the pod's Bazel server has its own \
             startup options"
        );
    }

    let cwd = std::env::current_dir().map_err(|e| {
        fail(
            LOCAL_ENV,
            anyhow!(e).context("cannot read the working directory"),
        )
    })?;
    let ws = workspace::find_root(&cwd, &workspace::Disk).map_err(|e| {
        let what = if cl.command.is_empty() {
            "jbazel".to_string()
        } else {
            format!("the '{}' command", cl.command)
        };
        fail(
            BAD_ARGV,
            anyhow!(e).context(format!("{what} is only supported from within a workspace")),
        )
    })?;
    let sources = identity::Sources::read(settings.user.clone(), settings.session_id.clone());
    let id = identity::resolve(&sources).map_err(|e| fail(BAD_ARGV, e))?;
    let repo_hash = workspace::repo_hash(&ws.root);
    let mut map = PathMap::new(&ws.root, &settings.filestore_root, &id.user_id, &repo_hash);
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
    tracing::debug!(user = %id.user_id, repo_hash = %repo_hash, session = %id.session_id,
        root = %ws.root.display(), marker = ws.marker, "workspace");
    let plan = Plan {
        settings,
        cl,
        root: ws.root,
        cwd,
        repo_hash,
        id,
        map,
        mirror,
    };

    if plan.settings.dry_run {
        return dry_run(&plan, start);
    }
    check_mirror(&plan);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            fail(
                LOCAL_ENV,
                anyhow!(e).context("cannot start the async runtime"),
            )
        })?;
    rt.block_on(remote(&plan, start))
}

/// `JBAZEL_LOCAL=1`: hand the command line to the real Bazel bazelisk found.
fn exec_bazel_real(argv: &[String]) -> Fail {
    use std::os::unix::process::CommandExt;
    let Some(real) = std::env::var_os("BAZEL_REAL").filter(|v| !v.is_empty()) else {
        return fail(
            BAD_ARGV,
            anyhow!("JBAZEL_LOCAL needs BAZEL_REAL (bazelisk sets it when it runs tools/bazel)"),
        );
    };
    let args = argv.iter().filter(|a| !a.starts_with(args::JBAZEL_PREFIX));
    let err = std::process::Command::new(&real).args(args).exec();
    fail(
        LOCAL_ENV,
        anyhow!(err).context(format!("cannot exec BAZEL_REAL={}", real.to_string_lossy())),
    )
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

/// Puts Bazel's convenience symlinks in the workspace root in `form` (see [`links`]). A
/// failure only costs the desktop its shortcuts, so it is logged, not fatal.
fn convenience_links(plan: &Plan, form: links::Form) {
    match links::flip(&plan.root, &plan.map, form) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(changed = n, ?form, "convenience symlinks"),
        Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot update the convenience symlinks"),
    }
}

/// A `clean` whose expunge only the pod's mount point `/work/out` stopped, finished as Bazel
/// does on the desktop (see [`jbazel::expunge`]): `--expunge_async`, which could not move
/// the output base aside and deleted nothing, is sent again in the foreground (not after a
/// `--`: what follows it is not parsed as options); an expunge that emptied the output base
/// and failed only on its `rmdir` removes the convenience links and ends 0. Anything else
/// is `outcome` as it was, with the held ERROR line shown.
async fn finish_expunge(
    plan: &Plan,
    channel: Channel,
    cookies: &Cookies,
    request: &RunRequest,
    out: &mut Output,
    mut outcome: Result<Outcome, client::ClientError>,
) -> Result<Outcome, client::ClientError> {
    let ended =
        |outcome: &Result<Outcome, client::ClientError>,
         test: fn(i32, Option<&proto::command_server::FailureDetail>) -> bool| {
            matches!(outcome, Ok(Outcome::Exit(code, detail)) if test(*code, detail.as_ref()))
        };
    if ended(&outcome, jbazel::expunge::could_not_move_aside)
        && !plan.cl.args.iter().any(|a| a == "--")
    {
        out.drop_held();
        eprintln!(
            "INFO: jbazel: the output base is a mount point in the pod and cannot be moved \
             aside; expunging in the foreground instead."
        );
        let mut again = request.clone();
        again.arg.extend(
            jbazel::expunge::FOREGROUND_EXPUNGE
                .iter()
                .map(|a| a.as_bytes().to_vec()),
        );
        outcome = client::run(channel, again, cookies, out).await;
    }
    if !ended(&outcome, jbazel::expunge::only_the_mount_point_left) {
        out.release_held();
        return outcome;
    }
    tracing::debug!("clean --expunge: the output base is emptied; only its mount point stays");
    if let Err(e) = links::remove(&plan.root, &plan.map) {
        eprintln!("jbazel: WARNING: {}", ErrorChain(&e));
    }
    Ok(Outcome::Exit(0, None))
}

/// The RunRequest and what is needed to read the reply.
struct Prepared {
    request: RunRequest,
    translate_stdout: bool,
    translate_stderr: bool,
    /// Files the server writes into the output base for a desktop path elsewhere.
    deliveries: Vec<file_flags::Delivery>,
    /// What the user wrote about `run` (`--run_under`, `--script_path`), for the exec policy.
    named: exec_policy::Named,
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// Reads the rc files and the pod env from the mirror and builds the RunRequest.
fn prepare(plan: &Plan, start: Instant) -> Result<Prepared, Fail> {
    let system_rc = plan.mirror.system_rc();
    if !system_rc.is_file() {
        tracing::warn!(path = %system_rc.display(), "the pod's system bazelrc is not published in the mirror");
    }
    let home = home();
    let sel = args::rc_selection(&plan.cl.startup);
    let loc = RcLocations {
        system_rc: &system_rc,
        workspace: &plan.root,
        home: home.as_deref(),
        cwd: &plan.cwd,
    };
    let files = rc::read_all(&DiskFs, &sel, &loc).map_err(|e| {
        let code = e.exit_code();
        fail(code, e)
    })?;
    // The user's own rc files: every one but the system rc the pod publishes.
    let system_canonical = std::fs::canonicalize(&system_rc).ok();
    let run_names = exec_policy::Named::scan(plan.cl.args.iter().map(String::as_str)).merge(
        exec_policy::Named::scan_rc(
            files
                .iter()
                .filter(|f| f.canonical_paths.first() != system_canonical.as_ref())
                .flat_map(|f| &f.options)
                .map(|(section, opts)| {
                    (
                        section.as_str(),
                        opts.iter().map(|o| o.option.as_str()).collect(),
                    )
                }),
        ),
    );
    let name = |p: &Path| plan.map.pod_name(p);
    let rc_args = rc::rc_args(&files, &name);
    let rc_startup: Vec<(String, String)> = rc::startup_options(&files)
        .into_iter()
        .map(|(p, o)| (name(&p), o))
        .collect();
    let startup: Startup =
        args::apply_startup(&rc_startup, &plan.cl.startup).map_err(|e| fail(BAD_ARGV, e))?;

    let mut pod_env = plan.mirror.client_env().unwrap_or_else(|| {
        tracing::warn!(path = %plan.mirror.client_env_path().display(),
            "the pod's client env is not published; sending Debian's default PATH");
        Vec::new()
    });
    if !pod_env.iter().any(|(k, _)| k == "PATH") {
        pod_env.push(("PATH".into(), mirror::FALLBACK_POD_PATH.into()));
    }
    let desktop_env: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .collect();
    let named = args::named_env_vars(
        rc_args
            .iter()
            .map(|a| args::rc_option(a))
            .chain(plan.cl.args.iter().map(String::as_str)),
    );
    let client_env = args::client_env(&pod_env, &desktop_env, &named);

    let stdout_tty = terminal::isatty(&std::io::stdout());
    let stderr_tty = terminal::isatty(&std::io::stderr());
    let term = std::env::var("TERM").ok();
    let emacs = args::is_emacs(
        std::env::var("EMACS").ok().as_deref(),
        std::env::var_os("INSIDE_EMACS").is_some(),
    );
    let client_cwd = plan
        .map
        .pod_cwd(&plan.cwd)
        .map_err(|e| fail(LOCAL_ENV, e))?;
    let files =
        file_flags::rewrite(&plan.cl.args, &plan.cwd, &plan.map).map_err(|e| fail(BAD_ARGV, e))?;
    let binary_path = std::env::current_exe()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "jbazel".into());
    let input = args::RunArgsInput {
        command: plan.cl.command.clone(),
        startup_time_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        binary_path,
        isatty: args::is_standard_terminal(term.as_deref(), emacs, stdout_tty, stderr_tty),
        terminal_columns: terminal::columns(),
        emacs,
        rc_args,
        client_env,
        client_cwd,
        user_args: files.args,
    };
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_default();
    let request = RunRequest {
        cookie: String::new(),
        arg: args::run_request_args(&input)
            .into_iter()
            .map(String::into_bytes)
            .collect(),
        block_for_lock: startup.block_for_lock,
        client_description: format!(
            "pid={} (jbazel {} on {host})",
            std::process::id(),
            env!("CARGO_PKG_VERSION")
        ),
        invocation_policy: startup.invocation_policy.unwrap_or_default(),
        startup_options: Vec::new(),
    };
    let translate = !plan.settings.no_translate_paths;
    // `info` prints paths that IDEs read from a pipe: always the desktop's.
    let paths_on_stdout = plan.cl.command == "info";
    Ok(Prepared {
        request,
        translate_stdout: translate && (stdout_tty || paths_on_stdout),
        translate_stderr: translate && stderr_tty,
        deliveries: files.deliveries,
        named: run_names,
    })
}

fn dry_run(plan: &Plan, start: Instant) -> Result<Done, Fail> {
    let p = prepare(plan, start)?;
    let s = &plan.settings;
    let server = match &s.server {
        Some(addr) => format!("{addr} (JBAZEL_SERVER, direct)"),
        None => format!(
            "GetServer(user_id={}, repo_hash={}, session_id={}) at orchestrator {}, then {}",
            plan.id.user_id,
            plan.repo_hash,
            plan.id.session_id,
            s.orchestrator,
            match s.hop {
                Hop::PortForward => format!(
                    "API server port-forward (KUBECONFIG={})",
                    std::env::var("KUBECONFIG").unwrap_or_else(|_| "~/.kube/config".into())
                ),
                Hop::PodIp => "the pod IP (port-forward if unreachable)".into(),
            }
        ),
    };
    let mut out = String::new();
    out.push_str(&format!("workspace_root: {}\n", plan.root.display()));
    out.push_str(&format!("repo_hash: {}\n", plan.repo_hash));
    out.push_str(&format!("user_id: {}\n", plan.id.user_id));
    out.push_str(&format!("session_id: {}\n", plan.id.session_id));
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
    print!("{out}");
    Ok(Done::Exit(0))
}

/// The hop target, and a connection already open to it when the pod-IP hop could dial the
/// cached endpoint while GetServer confirmed it (see [`endpoint_cache`]).
async fn find_target(plan: &Plan) -> Result<(Target, Option<Channel>), Fail> {
    let s = &plan.settings;
    if let Some(addr) = &s.server {
        return Ok((Target::Direct { addr: addr.clone() }, None));
    }
    let ids = Ids {
        user_id: plan.id.user_id.clone(),
        repo_hash: plan.repo_hash.clone(),
        session_id: plan.id.session_id.clone(),
    };
    // Dial the last endpoint while GetServer runs; nothing is sent on it before GetServer
    // confirms it.
    let cache = (s.hop == Hop::PodIp)
        .then(|| endpoint_cache::path(plan.repo_hash.as_str()))
        .flatten();
    let cached = cache.as_deref().and_then(endpoint_cache::read);
    let early = cached
        .clone()
        .map(|e| tokio::spawn(async move { hop::dial_pod_ip(&e.ip, e.port).await }));
    let cred = jbazel::credential::Credential::load(s.orchestrator_ca.as_deref())
        .map_err(|e| fail(LOCAL_ENV, e))?;
    let mut progress = stderr_progress();
    let loc = orchestrator_client::await_ready(
        &s.orchestrator,
        &cred,
        &ids,
        Duration::from_secs(s.deadline_secs),
        progress.as_mut(),
    )
    .await
    .map_err(|e| fail(LOCAL_ENV, e))?;
    tracing::debug!(pod = %loc.pod_name, namespace = %loc.namespace, ip = %loc.pod_ip, port = loc.command_port, "server ready");
    if s.hop != Hop::PodIp || loc.pod_ip.is_empty() {
        if let Some(task) = early {
            task.abort();
        }
        let target = Target::PortForward {
            namespace: loc.namespace,
            pod: loc.pod_name,
            port: loc.command_port,
        };
        return Ok((target, None));
    }
    let fresh = endpoint_cache::Endpoint {
        session_id: plan.id.session_id.to_string(),
        namespace: loc.namespace.clone(),
        pod: loc.pod_name.clone(),
        ip: loc.pod_ip.clone(),
        port: loc.command_port,
    };
    let channel = match (cached, early) {
        (Some(c), Some(task)) if c == fresh => match task.await {
            Ok(Ok(channel)) => Some(channel),
            _ => None,
        },
        (Some(c), Some(task)) => {
            task.abort();
            tracing::debug!(cached = %c.to_line().trim(), fresh = %fresh.to_line().trim(),
                "cached endpoint is stale; dialling the one GetServer gave");
            None
        }
        _ => None,
    };
    if channel.is_none() {
        if let Some(path) = &cache {
            endpoint_cache::write(path, &fresh);
        }
    }
    let target = Target::PodIp {
        ip: loc.pod_ip,
        port: loc.command_port,
        namespace: loc.namespace,
        pod: loc.pod_name,
    };
    Ok((target, channel))
}

/// Progress on stderr: a spinner on a terminal, plain lines otherwise.
fn stderr_progress() -> Box<dyn Progress> {
    if terminal::isatty(&std::io::stderr()) {
        Box::new(Spinner::new(std::io::stderr(), terminal::stderr_columns()))
    } else {
        Box::new(PlainLines::new(std::io::stderr()))
    }
}

/// How often a waiting jbazel looks again at a restarting server (its cookie files are on
/// shared storage, where file notifications do not cross machines).
const SERVER_RETRY: Duration = Duration::from_millis(250);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The stage shown while a restarting server is waited for.
const SERVER_STARTING: &str = "waiting for the Bazel server to start";

/// Awaits `work`, ticking `progress` meanwhile (so a slow hop or Ping never leaves the
/// user without news).
async fn ticking<F: std::future::Future>(
    work: F,
    progress: &mut dyn Progress,
    ticker: &mut tokio::time::Interval,
) -> F::Output {
    tokio::pin!(work);
    loop {
        tokio::select! {
            r = &mut work => return r,
            _ = ticker.tick() => progress.tick(),
        }
    }
}

/// Connects to the server once it serves: its cookies are published and it answers Ping
/// with them. Used when it is not serving on the first try (after `shutdown`, `clean
/// --expunge`, a crash: the supervisor restarts it), with progress, until `deadline`.
async fn wait_for_server(
    plan: &Plan,
    target: &Target,
    deadline: Instant,
    why: &str,
) -> Result<(tonic::transport::Channel, Cookies), Fail> {
    let mut progress = stderr_progress();
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reason = why.to_string();
    progress.stage(SERVER_STARTING, why);
    loop {
        let attempt = async {
            let cookies =
                read_cookies(&plan.mirror).map_err(|f| ErrorChain(f.err.as_ref()).to_string())?;
            let channel = hop::connect(target)
                .await
                .map_err(|e| ErrorChain(&e).to_string())?;
            client::ping(channel.clone(), &cookies, PING_TIMEOUT)
                .await
                .map_err(|e| ErrorChain(&e).to_string())?;
            Ok::<_, String>((channel, cookies))
        };
        match ticking(attempt, progress.as_mut(), &mut ticker).await {
            Ok(ready) => {
                progress.finish();
                tracing::debug!(waited_for = %last_reason, "the Bazel server is serving");
                return Ok(ready);
            }
            Err(reason) => {
                if Instant::now() + SERVER_RETRY > deadline {
                    progress.finish();
                    return Err(fail(
                        LOCAL_ENV,
                        anyhow!(reason).context(format!(
                            "the Bazel server of {} did not serve within {} s",
                            plan.root.display(),
                            plan.settings.deadline_secs
                        )),
                    ));
                }
                if reason != last_reason {
                    progress.stage(SERVER_STARTING, &reason);
                    last_reason = reason;
                }
                ticking(
                    tokio::time::sleep(SERVER_RETRY),
                    progress.as_mut(),
                    &mut ticker,
                )
                .await;
            }
        }
    }
}

fn read_cookies(m: &Mirror) -> Result<Cookies, Fail> {
    let hint = "is JBAZEL_FILESTORE_ROOT the filestore the server uses, and is the server up?";
    let request = m
        .request_cookie()
        .map_err(|e| fail(LOCAL_ENV, anyhow!(e).context(hint)))?;
    let response = m
        .response_cookie()
        .map_err(|e| fail(LOCAL_ENV, anyhow!(e).context(hint)))?;
    Ok(Cookies {
        request,
        response,
        request_path: m.request_cookie_path().display().to_string(),
        response_path: m.out.join("server/response_cookie").display().to_string(),
    })
}

async fn remote(plan: &Plan, start: Instant) -> Result<Done, Fail> {
    let (target, early) = find_target(plan).await?;
    let deadline = Instant::now() + Duration::from_secs(plan.settings.deadline_secs);
    let (mut channel, mut cookies) = match read_cookies(&plan.mirror) {
        Ok(cookies) => {
            let channel = match early {
                Some(channel) => channel,
                None => hop::connect(&target)
                    .await
                    .map_err(|e| fail(LOCAL_ENV, e))?,
            };
            (channel, cookies)
        }
        Err(f) => {
            let why = ErrorChain(f.err.as_ref()).to_string();
            wait_for_server(plan, &target, deadline, &why).await?
        }
    };
    let prepared = prepare(plan, start)?;
    let rewriter = plan.map.to_desktop();
    let is_clean = plan.cl.command == "clean";
    let mut out = Output {
        stdout: prepared
            .translate_stdout
            .then(|| StreamRewriter::new(rewriter.clone())),
        stderr: prepared
            .translate_stderr
            .then(|| StreamRewriter::new(rewriter.clone())),
        held: is_clean.then(jbazel::expunge::HeldError::default),
    };
    convenience_links(plan, links::Form::Pod);
    if !prepared.deliveries.is_empty() {
        let staging = plan.map.mirror_out.join(file_flags::FILES_DIR);
        if let Err(e) = std::fs::create_dir_all(&staging) {
            tracing::warn!(dir = %staging.display(), error = %ErrorChain(&e), "cannot create the staging dir for output files");
        }
        // The server writes there as the tree's owner: a jbazel run as root (an admin, a
        // test harness) must not leave the dir root's.
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::MetadataExt;
            if let Ok(owner) = std::fs::metadata(&plan.map.mirror_out) {
                let _ = nix::unistd::chown(
                    &staging,
                    Some(nix::unistd::Uid::from_raw(owner.uid())),
                    Some(nix::unistd::Gid::from_raw(owner.gid())),
                );
            }
        }
    }
    let mut outcome = client::run(
        channel.clone(),
        prepared.request.clone(),
        &cookies,
        &mut out,
    )
    .await;
    // The server went away or restarted since the cookies were read; nothing ran, so wait
    // for it and send the command again (once). A bad cookie counts only when the file
    // changed meanwhile: the same cookie rejected again means a mirror of another server.
    let retry = match &outcome {
        Err(client::ClientError::NotTaken { status }) => Some(format!(
            "the server did not take the command ({})",
            status.code()
        )),
        Err(client::ClientError::BadCookie { .. }) => read_cookies(&plan.mirror)
            .ok()
            .filter(|now| now.request != cookies.request)
            .map(|_| "the server restarted with a new cookie".to_string()),
        _ => None,
    };
    if let Some(why) = retry {
        (channel, cookies) = wait_for_server(plan, &target, deadline, &why).await?;
        outcome = client::run(
            channel.clone(),
            prepared.request.clone(),
            &cookies,
            &mut out,
        )
        .await;
    }
    if is_clean {
        outcome = finish_expunge(
            plan,
            channel,
            &cookies,
            &prepared.request,
            &mut out,
            outcome,
        )
        .await;
    }
    convenience_links(plan, links::Form::Desktop);
    for d in &prepared.deliveries {
        if let Err(e) = file_flags::deliver(d, &plan.map) {
            eprintln!("jbazel: WARNING: {}", ErrorChain(&e));
        }
    }
    match outcome {
        Ok(Outcome::Exit(code, _)) => Ok(Done::Exit(code)),
        Ok(Outcome::Signal(sig)) => Ok(Done::Signal(sig)),
        Ok(Outcome::Exec(req)) => {
            // Only `run`'s binary, from the workspace or the mirror (see exec_policy); it runs
            // from a desktop view of its runfiles tree (the pod's is made of /work/... links).
            let program = exec_policy::admit(&plan.cl.command, &req.argv, &prepared.named)
                .map_err(|e| fail(client::INTERNAL_ERROR, e))?;
            let run = jbazel::runfiles::prepare(&req, &program, &plan.map).map_err(|e| {
                let code = if e.is_refusal() {
                    client::INTERNAL_ERROR
                } else {
                    LOCAL_ENV
                };
                fail(code, e)
            })?;
            if let Some(warning) = run.warning() {
                eprintln!("jbazel: WARNING: {warning}");
            }
            let req = run.request;
            let err = client::exec(&req);
            Err(fail(
                client::INTERNAL_ERROR,
                anyhow!(err).context(format!(
                    "cannot run {} in {}",
                    String::from_utf8_lossy(
                        req.argv.first().map(Vec::as_slice).unwrap_or_default()
                    ),
                    String::from_utf8_lossy(&req.working_directory)
                )),
            ))
        }
        Err(e @ client::ClientError::BadCookie { .. }) => Err(fail(LOCAL_ENV, e)),
        Err(e @ client::ClientError::BadResponseCookie { .. }) => {
            Err(fail(client::INTERNAL_ERROR, e))
        }
        Err(e @ client::ClientError::Signals(_)) => Err(fail(client::INTERNAL_ERROR, e)),
        // The stream broke before the exit code: as Bazel's client, say so and exit with
        // the code the server left (the message goes after all the output, on its own line).
        Err(client::ClientError::Lost { status, cancelled }) => {
            let log = plan.mirror.server_log();
            eprint!("\n{}\n", client::abrupt_message(&status, &log));
            if cancelled {
                eprintln!(
                    "jbazel: lost the connection to the Bazel server at {target}, which is \
                     still up; the command was cancelled there"
                );
            }
            tracing::debug!(error = %ErrorChain(&status), %target, cancelled, "Run stream broken");
            if !cancelled {
                // The server is gone: give the pod's supervisor a moment to leave the code
                // of an OOM kill (Bazel's own crashes write it before dying).
                plan.mirror
                    .wait_for_abrupt_exit_code(std::time::Duration::from_millis(1500))
                    .await;
            }
            Ok(Done::Exit(plan.mirror.take_abrupt_exit_code()))
        }
        Err(client::ClientError::NoExitCode) => {
            let log = plan.mirror.server_log();
            eprint!("\n{}\n", client::no_exit_code_message(&log));
            Ok(Done::Exit(plan.mirror.take_abrupt_exit_code()))
        }
        Err(e @ client::ClientError::NotTaken { .. }) => Err(fail(
            client::INTERNAL_ERROR,
            anyhow!(e).context(format!("server {target}")),
        )),
    }
}
