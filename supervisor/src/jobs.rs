//! The Bazel job, run inside the (current-thread) tokio runtime after the pivot: publish the
//! jbazel files, start the server through the client, Ping it, serve readiness, report it,
//! restart the server with backoff when it dies, and shut it down cleanly on SIGTERM/SIGINT.
//! (`supervisor run` needs no runtime: see [`crate::run`].)

use proto::error_chain::ErrorChain;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::backoff::backoff;
use crate::bazel::{self, Client};
use crate::config::Config;
use crate::health::{self, Readiness};
use crate::pivot;
use crate::plan::MountPlan;
use crate::publish;
use crate::reaper::{ExitInfo, Reaper};
use crate::relay;
use crate::report;
use crate::signals::Shutdown;

/// Settings of the Bazel job besides the config and the plan.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub health_addr: SocketAddr,
    pub health_interval: Duration,
    pub grace: Duration,
    pub startup_deadline: Duration,
}

/// First restart delay after the server died or failed to start; doubles up to 30 s.
const RESTART_FIRST: Duration = Duration::from_millis(500);
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A server that ran this long resets the backoff.
const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Consecutive failed Pings of a live server before it counts as hung and is replaced.
const HUNG_AFTER_PINGS: u32 = 15;
const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// A started, answering server.
struct Running {
    client: Client,
    pid: i32,
    exited: Option<oneshot::Receiver<ExitInfo>>,
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("cannot run the Bazel client {client:?}")]
    Spawn {
        client: String,
        source: std::io::Error,
    },
    #[error("the Bazel client exited with {0:?} before the server was up")]
    Client(ExitInfo),
    #[error("the Bazel client did not finish within {0:?}")]
    ClientTimeout(Duration),
    #[error(transparent)]
    Files(#[from] bazel::BazelError),
    #[error("server pid {0} from server.pid.txt is not running")]
    NotRunning(i32),
    #[error("server did not answer Ping within the start deadline: {0}")]
    NoPing(String),
}

/// How monitoring ended.
enum End {
    Shutdown,
    Died(String),
}

/// The Bazel job. Returns the process exit code (0 after a clean shutdown).
pub async fn serve(cfg: &Config, plan: &MountPlan, s: &ServeSettings, reaper: &Reaper) -> i32 {
    let mut shutdown = match Shutdown::install() {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %ErrorChain(&e), "cannot install signal handlers");
            return 1;
        }
    };
    let readiness = Readiness::new();
    let listener = match TcpListener::bind(s.health_addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(addr = %s.health_addr, error = %ErrorChain(&e), "cannot listen for health checks");
            eprintln!("supervisor: cannot listen on {}: {e}", s.health_addr);
            return 1;
        }
    };
    tracing::info!(addr = %s.health_addr, "health endpoint: GET /readyz, /healthz");
    let health = tokio::spawn(health::serve(listener, readiness.clone()).in_current_span());
    // The direct hop: <pod IP>:<command port> -> Bazel on the pod's loopback.
    // (A loopback "pod IP", as in tests, is Bazel's own address: nothing to relay.)
    let relay = match cfg.report.pod_ip.parse::<std::net::IpAddr>() {
        Ok(ip) if ip.is_loopback() || ip.is_unspecified() => None,
        Ok(ip) => match relay::bind(ip, cfg.bazel.command_port).await {
            Ok(l) => {
                tracing::info!(addr = %format!("{ip}:{}", cfg.bazel.command_port), "relay to the Bazel server's command port");
                let to = std::net::SocketAddr::from(([127, 0, 0, 1], cfg.bazel.command_port));
                Some(tokio::spawn(relay::serve(l, to).in_current_span()))
            }
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "no relay on the pod IP: jbazel will use the port-forward");
                None
            }
        },
        Err(_) => None,
    };

    let out = &plan.out_seen_by_supervisor;
    let env = publish::client_env_text(|k| std::env::var(k).ok());

    let mut failures = 0u32;
    // The client of the start under way, to stop it when shutdown interrupts a start.
    let client_pid = std::cell::Cell::new(None);
    let code = loop {
        if shutdown.requested() {
            break stop_leftovers(out, None, s.grace).await;
        }
        // Before every start: an expunge may have removed them with everything else.
        if let Err(e) = publish::publish(out, &cfg.bazel.system_bazelrc_text, &env) {
            tracing::error!(error = %ErrorChain(&e), "cannot publish the jbazel files");
            eprintln!("supervisor: {}", ErrorChain(&e));
            break 1;
        }
        tracing::info!(dir = %out.join(publish::DIR).display(), "published system.bazelrc and client-env");
        let began = Instant::now();
        readiness.set(false, "starting the Bazel server");
        let started = tokio::select! {
            r = start(plan, s, reaper, &client_pid) => r,
            _ = shutdown.wait() => break stop_leftovers(out, client_pid.take(), s.grace).await,
        };
        let mut server = match started {
            Ok(r) => r,
            Err((e, client_pid)) => {
                failures += 1;
                tracing::error!(error = %ErrorChain(&e), failures, "Bazel server start failed");
                readiness.set(false, format!("start failed: {}", ErrorChain(&e)));
                if let Some(p) = client_pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                if !pause_unless_shutdown(failures, &mut shutdown).await {
                    break stop_leftovers(out, None, s.grace).await;
                }
                continue;
            }
        };
        let pid = server.pid;
        readiness.set(true, format!("Bazel server pid {pid} answers Ping"));
        tracing::info!(pid, addr = %server.client.files().addr, startup_ms = began.elapsed().as_millis() as u64, "Bazel server ready");
        let reporter = tokio::spawn(
            report::report_ready(
                cfg.identity.clone(),
                cfg.report.clone(),
                cfg.bazel.command_port,
            )
            .in_current_span(),
        );
        let end = monitor(&mut server, s, &readiness, &mut shutdown, out).await;
        reporter.abort();
        match end {
            End::Shutdown => {
                readiness.set(false, "shutting down");
                let how =
                    bazel::stop(Some(&server.client), pid, server.exited.take(), s.grace).await;
                tracing::info!(pid, ?how, "Bazel server stopped");
                break if how == bazel::Stopped::Failed { 1 } else { 0 };
            }
            End::Died(why) => {
                readiness.set(false, why.clone());
                failures = if began.elapsed() > STABLE_AFTER {
                    1
                } else {
                    failures + 1
                };
                tracing::warn!(pid, reason = %why, failures, "Bazel server gone; restarting");
                if bazel::alive(pid) && bazel::is_our_server(pid) {
                    // Hung or stale, not dead: replace it (Shutdown first; signals if hung).
                    let _ = bazel::stop(
                        Some(&server.client),
                        pid,
                        server.exited.take(),
                        Duration::from_secs(5),
                    )
                    .await;
                }
                reaper.unwatch(pid);
                if !pause_unless_shutdown(failures, &mut shutdown).await {
                    break 0;
                }
            }
        }
    };
    // Whatever else still runs under us (a client killed mid-start leaves its half-started
    // server behind; an orphan of a build action) goes too: the pod's job is over.
    stop_children(reaper, Duration::from_secs(3)).await;
    health.abort();
    if let Some(r) = relay {
        r.abort();
    }
    tracing::info!(
        exit_code = code,
        orphans_reaped = reaper.orphans_reaped(),
        "supervisor exiting"
    );
    code
}

/// Waits the restart backoff; false when shutdown was requested meanwhile.
async fn pause_unless_shutdown(failures: u32, shutdown: &mut Shutdown) -> bool {
    let delay = backoff(failures, RESTART_FIRST, RESTART_MAX);
    tracing::info!(
        delay_ms = delay.as_millis() as u64,
        "waiting before the next start"
    );
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = shutdown.wait() => false,
    }
}

/// Runs the Bazel client in the view until the server answers Ping.
async fn start(
    plan: &MountPlan,
    s: &ServeSettings,
    reaper: &Reaper,
    client_pid_slot: &std::cell::Cell<Option<i32>>,
) -> Result<Running, (StartError, Option<i32>)> {
    let deadline = Instant::now() + s.startup_deadline;
    let mut cmd = pivot::command_in_view(plan, &plan.command);
    tracing::info!(command = ?plan.command, mode = ?plan.mode.mode, "starting the Bazel server");
    let (client_pid, exited) = reaper.spawn(&mut cmd).map_err(|source| {
        (
            StartError::Spawn {
                client: plan.command[0].clone(),
                source,
            },
            None,
        )
    })?;
    client_pid_slot.set(Some(client_pid));
    let status = tokio::time::timeout_at(deadline, exited).await;
    client_pid_slot.set(None);
    let status = status.map_err(|_| {
        (
            StartError::ClientTimeout(s.startup_deadline),
            Some(client_pid),
        )
    })?;
    match status {
        Ok(ExitInfo::Code(0)) => {}
        Ok(other) => return Err((StartError::Client(other), None)),
        Err(_) => return Err((StartError::Client(ExitInfo::Code(-1)), None)),
    }
    let out = &plan.out_seen_by_supervisor;
    let files = bazel::read_server_files(out).map_err(|e| (e.into(), None))?;
    let pid = files.pid;
    let exited = reaper.watch(pid);
    if !bazel::alive(pid) {
        return Err((StartError::NotRunning(pid), None));
    }
    let client = Client::new(files).map_err(|e| (e.into(), None))?;
    // The client returns once the server is up; Ping proves it (and the cookie).
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.ping(PING_TIMEOUT).await {
            Ok(()) => {
                return Ok(Running {
                    client,
                    pid,
                    exited: Some(exited),
                })
            }
            Err(e) => last = e.to_string(),
        }
        if !bazel::alive(pid) {
            return Err((StartError::NotRunning(pid), None));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err((StartError::NoPing(last), None))
}

/// Pings the server every interval until it dies, hangs, has its output base emptied under
/// it, or shutdown is requested.
async fn monitor(
    server: &mut Running,
    s: &ServeSettings,
    readiness: &Readiness,
    shutdown: &mut Shutdown,
    out: &std::path::Path,
) -> End {
    let mut tick = tokio::time::interval(s.health_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failed = 0u32;
    let pid = server.pid;
    loop {
        let exited = async {
            match server.exited.as_mut() {
                Some(rx) => rx.await.ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait() => return End::Shutdown,
            status = exited => {
                server.exited = None;
                return End::Died(format!("Bazel server pid {pid} exited: {status:?}"));
            }
            _ = tick.tick() => {
                if !bazel::alive(pid) {
                    return End::Died(format!("Bazel server pid {pid} is gone"));
                }
                match server.client.ping(PING_TIMEOUT).await {
                    Ok(()) if !publish::server_files_intact(out, &server.client.files().request_cookie) => {
                        // `clean --expunge` on the mounted output base: Bazel's own client
                        // would have a shut-down server here; a stale one fails the next
                        // build, and jbazel cannot find it. Start a fresh one.
                        return End::Died(format!(
                            "the output base was emptied under Bazel server pid {pid} (clean --expunge?)"
                        ));
                    }
                    Ok(()) => {
                        failed = 0;
                        readiness.set(true, format!("Bazel server pid {pid} answers Ping"));
                    }
                    Err(e) => {
                        failed += 1;
                        tracing::warn!(pid, failed, error = %ErrorChain(&e), "Ping failed");
                        readiness.set(false, e.to_string());
                        if failed >= HUNG_AFTER_PINGS {
                            return End::Died(format!("Bazel server pid {pid} did not answer {failed} Pings"));
                        }
                    }
                }
            }
        }
    }
}

/// Shutdown while no server was known to be running: stop whatever the pid file names.
async fn stop_leftovers(out: &std::path::Path, client_pid: Option<i32>, grace: Duration) -> i32 {
    if let Some(p) = client_pid.filter(|p| bazel::alive(*p)) {
        tracing::info!(pid = p, "stopping the Bazel client");
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let Ok(pid) = bazel::read_pid(out) else {
        return 0;
    };
    if !bazel::alive(pid) || !bazel::is_our_server(pid) {
        return 0;
    }
    let client = bazel::read_server_files(out)
        .ok()
        .and_then(|f| Client::new(f).ok());
    let how = bazel::stop(client.as_ref(), pid, None, grace).await;
    tracing::info!(pid, ?how, "Bazel server stopped");
    if how == bazel::Stopped::Failed {
        1
    } else {
        0
    }
}

/// Our direct children (including orphans re-parented to us). procfs.
fn children() -> Vec<i32> {
    let me = nix::unistd::getpid().as_raw();
    procfs::process::all_processes()
        .map(|ps| {
            ps.flatten()
                .filter_map(|p| p.stat().ok())
                .filter(|s| s.ppid == me && s.state != 'Z')
                .map(|s| s.pid)
                .collect()
        })
        .unwrap_or_default()
}

/// SIGTERM every remaining child, SIGKILL after a second, until none is left or `within`
/// passes. Repeats: a dying intermediate hands its own children over to us.
async fn stop_children(reaper: &Reaper, within: Duration) {
    use nix::sys::signal::{kill, Signal};
    let start = Instant::now();
    loop {
        reaper.reap_all();
        let kids = children();
        if kids.is_empty() || start.elapsed() >= within {
            if !kids.is_empty() {
                tracing::warn!(?kids, "children still running at exit");
            }
            return;
        }
        let sig = if start.elapsed() < Duration::from_secs(1) {
            Signal::SIGTERM
        } else {
            Signal::SIGKILL
        };
        for pid in kids {
            tracing::info!(pid, signal = %sig, "stopping a leftover child");
            let _ = kill(nix::unistd::Pid::from_raw(pid), sig);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
