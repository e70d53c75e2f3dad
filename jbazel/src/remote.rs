//! A command on the server: find the [`Route`] (the orchestrator and the hop, or
//! `JBAZEL_SERVER`), read the cookies, send the RunRequest (once more after waiting for a
//! restarting server), finish a `clean --expunge` as Bazel does on the desktop, and turn
//! the outcome into Bazel's exit code, or execute `run`'s binary as [`exec_policy`] allows.

use crate::client::{self, ClientError, Cookies, Outcome, Output};
use crate::command::{self, Done, Plan};
use crate::config::Hop;
use crate::error::Error;
use crate::exec_policy;
use crate::exit_code::ExitCode;
use crate::hop::{self, Route};
use crate::invocation::Invocation;
use crate::mirror::Mirror;
use crate::orchestrator_client::{self, Ids};
use crate::paths::StreamRewriter;
use crate::progress::{PlainLines, Progress, Spinner, TICK};
use crate::{endpoint_cache, expunge, file_flags, links, runfiles};
use proto::command_server::RunRequest;
use proto::error_chain::ErrorChain;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// How often a waiting jbazel looks again at a restarting server (its cookie files are on
/// shared storage, where file notifications do not cross machines).
const SERVER_RETRY: Duration = Duration::from_millis(250);
const PING_TIMEOUT: Duration = Duration::from_secs(2);
/// The stage shown while a restarting server is waited for.
const SERVER_STARTING: &str = "waiting for the Bazel server to start";
/// How long a server that went away is given to leave the code of an OOM kill.
const ABRUPT_EXIT_WAIT: Duration = Duration::from_millis(1500);

/// Progress on stderr: a spinner on a terminal, plain lines otherwise.
fn stderr_progress(inv: &Invocation) -> Box<dyn Progress> {
    if inv.stderr_tty {
        Box::new(Spinner::new(
            std::io::stderr(),
            usize::from(inv.stderr_columns.unwrap_or(0)),
        ))
    } else {
        Box::new(PlainLines::new(std::io::stderr()))
    }
}

/// The route to the server, and a connection already open along it when the pod-IP hop
/// could dial the cached endpoint while GetServer confirmed it (see [`endpoint_cache`]).
async fn find_route(plan: &Plan, inv: &Invocation) -> Result<(Route, Option<Channel>), Error> {
    let s = &plan.settings;
    if let Some(addr) = &s.server {
        return Ok((Route::Fixed { addr: addr.clone() }, None));
    }
    let ids = Ids {
        user_id: plan.caller.user_id.clone(),
        repo_hash: plan.repo_hash.clone(),
        session_id: plan.caller.session_id.clone(),
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
    let cred = crate::credential::Credential::load(s.orchestrator_ca.as_deref())?;
    let mut progress = stderr_progress(inv);
    let loc = orchestrator_client::await_ready(
        &s.orchestrator,
        &cred,
        &ids,
        Duration::from_secs(s.deadline_secs),
        progress.as_mut(),
    )
    .await?;
    tracing::debug!(pod = %loc.pod_name, namespace = %loc.namespace, ip = %loc.pod_ip, port = loc.command_port, "server ready");
    if s.hop != Hop::PodIp || loc.pod_ip.is_empty() {
        if let Some(task) = early {
            task.abort();
        }
        let route = Route::PortForward {
            namespace: loc.namespace,
            pod: loc.pod_name,
            port: loc.command_port,
        };
        return Ok((route, None));
    }
    let fresh = endpoint_cache::Endpoint {
        session_id: plan.caller.session_id.to_string(),
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
    let route = Route::PodIp {
        ip: loc.pod_ip,
        port: loc.command_port,
        namespace: loc.namespace,
        pod: loc.pod_name,
    };
    Ok((route, channel))
}

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
    inv: &Invocation,
    route: &Route,
    deadline: Instant,
    why: &str,
) -> Result<(Channel, Cookies), Error> {
    let mut progress = stderr_progress(inv);
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_reason = why.to_string();
    progress.stage(SERVER_STARTING, why);
    loop {
        let attempt = async {
            let cookies = read_cookies(&plan.mirror).map_err(|e| ErrorChain(&e).to_string())?;
            let channel = hop::connect(route)
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
                    return Err(Error::NotServing {
                        root: plan.root.clone(),
                        deadline_secs: plan.settings.deadline_secs,
                        reason,
                    });
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

fn read_cookies(m: &Mirror) -> Result<Cookies, Error> {
    Ok(Cookies {
        request: m.request_cookie().map_err(Error::Cookies)?,
        response: m.response_cookie().map_err(Error::Cookies)?,
        request_path: m.request_cookie_path().display().to_string(),
        response_path: m.response_cookie_path().display().to_string(),
    })
}

/// Mirrors the convenience links the pod's Bazel made in its links directory into the
/// workspace root (see [`links`]); after a successful `clean`, removes them as Bazel's
/// `clean` does. A failure only costs the desktop its shortcuts, so it is a warning.
fn convenience_links(plan: &Plan, names: &[links::LinkName], cleaned: bool) {
    let done = if cleaned {
        links::clean(&plan.root, &plan.map, names)
    } else {
        links::mirror(&plan.root, &plan.map, names)
    };
    if done.changed > 0 {
        tracing::debug!(changed = done.changed, cleaned, "convenience symlinks");
    }
    for e in &done.errors {
        eprintln!("jbazel: WARNING: {}", ErrorChain(e));
    }
}

/// Creates the directory the server writes output files into for a desktop path elsewhere
/// (see [`file_flags`]) without following a link the pod planted, owned as the tree (a
/// jbazel run as root must not leave it root's). Failures are logged; the delivery will
/// say what is missing.
fn staging_dir(plan: &Plan) {
    if let Err(e) = file_flags::prepare_staging(&plan.map) {
        tracing::warn!(error = %ErrorChain(&e), "cannot create the staging dir for output files");
    }
}

/// A `clean` whose expunge only the pod's mount point `/work/out` stopped, finished as Bazel
/// does on the desktop (see [`crate::expunge`]): `--expunge_async`, which could not move
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
    mut outcome: Result<Outcome, ClientError>,
) -> Result<Outcome, ClientError> {
    let ended =
        |outcome: &Result<Outcome, ClientError>,
         test: fn(i32, Option<&proto::command_server::FailureDetail>) -> bool| {
            matches!(outcome, Ok(Outcome::Exit(code, detail)) if test(*code, detail.as_ref()))
        };
    if ended(&outcome, expunge::could_not_move_aside) && !plan.cl.args.iter().any(|a| a == "--") {
        out.drop_held();
        eprintln!(
            "INFO: jbazel: the output base is a mount point in the pod and cannot be moved \
             aside; expunging in the foreground instead."
        );
        let mut again = request.clone();
        again.arg.extend(
            expunge::FOREGROUND_EXPUNGE
                .iter()
                .map(|a| a.as_bytes().to_vec()),
        );
        outcome = client::run(channel, again, cookies, out).await;
    }
    if !ended(&outcome, expunge::only_the_mount_point_left) {
        out.release_held();
        return outcome;
    }
    tracing::debug!("clean --expunge: the output base is emptied; only its mount point stays");
    if let Err(e) = links::remove(&plan.root, &plan.map) {
        eprintln!("jbazel: WARNING: {}", ErrorChain(&e));
    }
    Ok(Outcome::Exit(0, None))
}

/// Runs the command on the server.
pub async fn run(plan: &Plan, inv: &Invocation) -> Result<Done, Error> {
    // Whether the pod's system rc is there is looked at before the rc files are read: a
    // server that publishes it meanwhile is caught by the second read below.
    let system_rc_read = plan.mirror.system_rc().is_file();
    let mut rc_files = command::read_rc_files(plan, inv)?;
    let (route, early) = find_route(plan, inv).await?;
    let deadline = Instant::now() + Duration::from_secs(plan.settings.deadline_secs);
    let (mut channel, mut cookies) = match read_cookies(&plan.mirror) {
        Ok(cookies) => {
            let channel = match early {
                Some(channel) => channel,
                None => hop::connect(&route).await?,
            };
            (channel, cookies)
        }
        Err(e) => {
            let why = ErrorChain(&e).to_string();
            wait_for_server(plan, inv, &route, deadline, &why).await?
        }
    };
    if !system_rc_read {
        // A new server published its system rc while jbazel waited for it.
        rc_files = command::read_rc_files(plan, inv)?;
    }
    let prepared = command::prepare(plan, inv, &rc_files)?;
    for p in &prepared.refused_prefixes {
        eprintln!(
            "jbazel: WARNING: {}",
            crate::symlink_prefix::refusal_message(p)
        );
    }
    // Paths Bazel prints under its links directory read as the desktop's links, as local
    // Bazel prints them (`bazel-bin/app/hello`), then the two trees' prefixes.
    let rewriter = plan.map.to_desktop_with(links::printed_path_rules(
        &prepared.links,
        &plan.root,
        plan.cwd == plan.root,
    ));
    let is_clean = plan.cl.command == "clean";
    let mut out = Output {
        stdout: prepared
            .translate_stdout
            .then(|| StreamRewriter::new(rewriter.clone())),
        stderr: prepared
            .translate_stderr
            .then(|| StreamRewriter::new(rewriter.clone())),
        held: is_clean.then(expunge::HeldError::default),
    };
    // Links an older jbazel left in the pod's form (`/work/out/...`, if it was killed
    // between its two flips) would resolve in the pod, and the new prefix no longer marks
    // them as Bazel's: `//...` would walk into the output base. The desktop form dangles
    // there (R is hidden). Nothing to change is one readdir of the root.
    if let Err(e) = links::flip(&plan.root, &plan.map, links::Form::Desktop) {
        tracing::debug!(error = %ErrorChain(&e), "convenience symlinks left in the pod's form");
    }
    if !prepared.deliveries.is_empty() {
        staging_dir(plan);
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
        Err(ClientError::NotTaken { status }) => Some(format!(
            "the server did not take the command ({})",
            status.code()
        )),
        Err(ClientError::BadCookie { .. }) => read_cookies(&plan.mirror)
            .ok()
            .filter(|now| now.request != cookies.request)
            .map(|_| "the server restarted with a new cookie".to_string()),
        _ => None,
    };
    if let Some(why) = retry {
        (channel, cookies) = wait_for_server(plan, inv, &route, deadline, &why).await?;
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
    convenience_links(
        plan,
        &prepared.links,
        is_clean && matches!(outcome, Ok(Outcome::Exit(0, _))),
    );
    let mut undelivered = false;
    for d in &prepared.deliveries {
        if let Err(e) = file_flags::deliver(d, &plan.map) {
            eprintln!("jbazel: ERROR: {}", ErrorChain(&e));
            undelivered = true;
        }
    }
    match outcome {
        // A file the user asked for is missing: a command that succeeded did not do what
        // was asked of it on this desktop (an IDE would read a file that is not there).
        Ok(Outcome::Exit(0, _)) if undelivered => {
            Ok(Done::Exit(ExitCode::LOCAL_ENVIRONMENTAL_ERROR))
        }
        Ok(Outcome::Exit(code, _)) => Ok(Done::Exit(ExitCode::from_raw(code))),
        Ok(Outcome::Signal(sig)) => Ok(Done::Signal(sig)),
        Ok(Outcome::Exec(req)) => Err(exec(plan, &prepared.named, &req)),
        // The stream broke before the exit code: as Bazel's client, say so and exit with
        // the code the server left (the message goes after all the output, on its own line).
        Err(ClientError::Lost { status, cancelled }) => {
            let log = plan.mirror.server_log();
            eprint!("\n{}\n", client::abrupt_message(&status, &log));
            if cancelled {
                eprintln!(
                    "jbazel: lost the connection to the Bazel server at {route}, which is \
                     still up; the command was cancelled there"
                );
            }
            tracing::debug!(error = %ErrorChain(&status), %route, cancelled, "Run stream broken");
            if !cancelled {
                // The server is gone: give the pod's supervisor a moment to leave the code
                // of an OOM kill (Bazel's own crashes write it before dying).
                plan.mirror
                    .wait_for_abrupt_exit_code(ABRUPT_EXIT_WAIT)
                    .await;
            }
            Ok(Done::Exit(ExitCode::from_raw(
                plan.mirror.take_abrupt_exit_code(),
            )))
        }
        Err(ClientError::NoExitCode) => {
            let log = plan.mirror.server_log();
            eprint!("\n{}\n", client::no_exit_code_message(&log));
            Ok(Done::Exit(ExitCode::from_raw(
                plan.mirror.take_abrupt_exit_code(),
            )))
        }
        Err(source @ ClientError::NotTaken { .. }) => Err(Error::NotTaken {
            route: route.to_string(),
            source,
        }),
        Err(e) => Err(e.into()),
    }
}

/// The server's exec request: only `run`'s binary, from the workspace or the mirror (see
/// [`exec_policy`]), from a desktop view of its runfiles tree (the pod's is made of
/// `/work/...` links). Returns only on failure.
fn exec(
    plan: &Plan,
    named: &exec_policy::Named,
    req: &proto::command_server::ExecRequest,
) -> Error {
    let program = match exec_policy::admit(&plan.cl.command, &req.argv, named) {
        Ok(p) => p,
        Err(refusal) => return refusal.into(),
    };
    let run = match runfiles::prepare(req, &program, &plan.map) {
        Ok(run) => run,
        Err(e) => return e.into(),
    };
    if let Some(warning) = run.warning() {
        eprintln!("jbazel: WARNING: {warning}");
    }
    let req = run.request;
    let source = client::exec(&req);
    Error::Exec {
        program: String::from_utf8_lossy(req.argv.first().map(Vec::as_slice).unwrap_or_default())
            .into_owned(),
        dir: String::from_utf8_lossy(&req.working_directory).into_owned(),
        source,
    }
}
