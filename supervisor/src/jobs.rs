//! The Bazel job, run inside the (current-thread) tokio runtime after the pivot: take the
//! output-base lock ([`crate::lock`]), publish the jbazel files, start the server through the
//! client, Ping it once, then watch it without keeping it busy ([`Client::probe`]), serve
//! readiness, report it, and when the server ends on its own: after its idle timeout, end
//! the pod (exit 0, termination message); otherwise name the reason ([`server_end`]) and
//! restart it with backoff. SIGTERM/SIGINT shut it down cleanly; the lock is released only
//! once the server is gone. (`supervisor run` needs no runtime: see [`crate::run`].)

use proto::error_chain::ErrorChain;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument as _;

use crate::bazel::{self, Client};
use crate::cgroup;
use crate::config::Config;
use crate::health::{self, Readiness};
use crate::lock::{self, OutputBaseLock};
use crate::owner;
use crate::pivot;
use crate::plan::MountPlan;
use crate::publish;
use crate::reaper::{ExitInfo, Reaper};
use crate::relay;
use crate::report;
use crate::server_end::{self, EndFacts, ServerEnd};
use crate::signals::Shutdown;
use proto::backoff::{jitter, Backoff};

/// Settings of the Bazel job besides the config and the plan.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub health_addr: SocketAddr,
    pub health_interval: Duration,
    pub grace: Duration,
    pub startup_deadline: Duration,
    /// Where the idle exit writes its termination message (only into an existing file).
    pub termination_log: PathBuf,
}

/// The pause before a restart after the server died or failed to start: 0.5 s (before
/// jitter), doubling with each failure in a row up to 30 s.
pub const RESTART_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// A server that ran this long resets the backoff.
pub const STABLE_AFTER: Duration = Duration::from_secs(60);
/// Consecutive failed health checks of a live server before it counts as hung and is replaced.
const HUNG_AFTER_CHECKS: u32 = 15;
const PING_TIMEOUT: Duration = Duration::from_secs(3);
/// A server whose process is gone, or whose files vanished, or that stopped answering, is
/// given this long to deliver its exit status before the supervisor decides without it (a
/// server deletes its files and closes its port while it exits, 0.3 s before the exit).
const EXIT_SETTLE: Duration = Duration::from_secs(3);
/// How often a supervisor waiting for the output-base lock tries it again, and how often it
/// says that it still waits.
const LOCK_POLL: Duration = Duration::from_millis(200);
const LOCK_LOG_EVERY: Duration = Duration::from_secs(5);
/// The readiness detail (and log message) while another server holds the output base.
pub const WAITING_FOR_LOCK: &str = "waiting for the previous server to release the output base";

/// A started, answering server.
struct Running {
    client: Client,
    pid: i32,
    exited: Option<oneshot::Receiver<ExitInfo>>,
    /// The cgroup's OOM-kill counter at the last health check.
    oom_kills: Option<u64>,
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
    /// The process is gone; its exit status when the reaper delivered one.
    Exited(Option<ExitInfo>),
    /// Alive but of no use (hung, or its output base emptied): replace it.
    Replace(String),
}

/// How one server's run ended, as [`after_end`] needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// It never answered: the client failed or timed out, or the server did not Ping.
    StartFailed,
    /// It was alive but of no use (hung, or its output base emptied under it), and was
    /// stopped to be replaced.
    Replaced,
    /// It ended on its own, for this reason.
    Ended(ServerEnd),
}

/// What the Bazel job does after a server's run.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Start another server after `pause`. `failures` is the count of failed runs in a row
    /// (the backoff's attempt); `abrupt_exit_code`, when set, is written first for the client
    /// of the command the end interrupted ([`server_end::write_abrupt_exit_code`]).
    Restart {
        failures: u32,
        pause: Duration,
        abrupt_exit_code: Option<i32>,
    },
    /// End the pod with `code`, after the idle exit's termination message when `idle`.
    Exit { code: i32, idle: bool },
}

/// After a run that ended as `end`, `uptime` after its start, with `failures` failed runs in
/// a row before it: the idle exit ends the pod (exit 0); a clean exit 0 restarts after the
/// shortest pause, the count reset; anything else is one more failure (back to 1 after a run longer
/// than [`STABLE_AFTER`]) and restarts after [`RESTART_BACKOFF`]'s pause for `jitter`. An
/// OOM kill also leaves Bazel's out-of-memory code for the interrupted command's client:
/// the kernel's SIGKILL gives Bazel no chance to write it. Pure.
pub fn after_end(end: &RunEnd, uptime: Duration, failures: u32, jitter: f64) -> Next {
    let restart = |failures: u32, abrupt_exit_code| Next::Restart {
        failures,
        pause: RESTART_BACKOFF.pause(failures, jitter),
        abrupt_exit_code,
    };
    match end {
        RunEnd::Ended(ServerEnd::Idle) => Next::Exit {
            code: 0,
            idle: true,
        },
        RunEnd::Ended(ServerEnd::ShutDown) => restart(0, None),
        RunEnd::Ended(ServerEnd::OomKilled { .. }) => restart(
            next_failures(failures, uptime),
            Some(server_end::BAZEL_OOM_EXIT),
        ),
        RunEnd::Ended(
            ServerEnd::OutOfMemory { .. }
            | ServerEnd::CrashedCleanly(_)
            | ServerEnd::Killed(_)
            | ServerEnd::Crashed(_)
            | ServerEnd::Vanished,
        )
        | RunEnd::Replaced => restart(next_failures(failures, uptime), None),
        // However long the start took (up to the start deadline), it never ran.
        RunEnd::StartFailed => restart(failures.saturating_add(1), None),
    }
}

/// A step the job cannot go on without failed: logged, and said plainly on stderr as `main`
/// says a setup failure (whatever the log format). The job ends with exit code 1.
fn fatal(what: &str, e: &(dyn std::error::Error + 'static)) -> ControlFlow<i32> {
    tracing::error!(error = %ErrorChain(e), "{what}");
    eprintln!("supervisor: {what}: {}", ErrorChain(e));
    ControlFlow::Break(1)
}

/// The Bazel job. Returns the process exit code (0 after a clean shutdown or the idle exit).
pub async fn serve(cfg: &Config, plan: &MountPlan, s: &ServeSettings, reaper: &Reaper) -> i32 {
    let mut shutdown = match Shutdown::install() {
        Ok(x) => x,
        Err(e) => return exit_code(fatal("cannot install signal handlers", &e)),
    };
    let readiness = Readiness::new();
    let listener = match TcpListener::bind(s.health_addr).await {
        Ok(l) => l,
        Err(e) => {
            let what = format!("cannot listen for health checks on {}", s.health_addr);
            return exit_code(fatal(&what, &e));
        }
    };
    tracing::info!(addr = %s.health_addr, "health endpoint: GET /readyz, /healthz");
    let health = tokio::spawn(health::serve(listener, readiness.clone()).in_current_span());
    let relay = start_relay(&cfg.report.pod_ip, cfg.bazel.command_port).await;
    let heap = cgroup::heap_for(&cfg.bazel.memory_limit);
    tracing::info!(
        xmx_mib = heap.xmx_mib,
        reason = %heap.reason,
        idle_timeout_secs = cfg.bazel.idle_timeout_secs,
        "Bazel server settings"
    );
    if let Some(w) = &heap.warning {
        tracing::warn!(warning = %w, "small memory limit");
    }

    let job = Job {
        cfg,
        plan,
        s,
        reaper,
        readiness,
        out: &plan.out_seen_by_supervisor,
        client_env: publish::client_env_text(|k| std::env::var(k).ok()),
        holder: format!("pod={} pid={}", cfg.report.pod_name, nix::unistd::getpid()),
        client_pid: std::cell::Cell::new(None),
    };
    let mut lock = None;
    let code = job.run(&mut lock, &mut shutdown).await;
    // Whatever else still runs under us (a client killed mid-start leaves its half-started
    // server behind; an orphan of a build action) goes too: the pod's job is over.
    stop_children(reaper, Duration::from_secs(3)).await;
    // Only now, with no server of ours left, may the next supervisor start one.
    if let Some(l) = lock {
        let path = l.path().to_owned();
        drop(l);
        tracing::info!(lock = %path.display(), "released the output-base lock");
    }
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

/// The code a job that stopped ends with.
fn exit_code(stop: ControlFlow<i32>) -> i32 {
    match stop {
        ControlFlow::Break(code) => code,
        ControlFlow::Continue(()) => 0,
    }
}

/// What every step of the Bazel job works with.
struct Job<'a> {
    cfg: &'a Config,
    plan: &'a MountPlan,
    s: &'a ServeSettings,
    reaper: &'a Reaper,
    readiness: Readiness,
    /// The output base, as the supervisor sees it.
    out: &'a Path,
    /// The published `client-env` text.
    client_env: String,
    /// Who holds the output-base lock (written into it).
    holder: String,
    /// The client of the start under way, to stop it when shutdown interrupts a start.
    client_pid: std::cell::Cell<Option<i32>>,
}

impl Job<'_> {
    /// Servers, one after another, until the idle exit, a shutdown or a fatal error ends the
    /// job: [`Job::prepare`], [`Job::run_server`], then what [`after_end`] says. Returns the
    /// exit code. `lock` is left holding the output-base lock, to be released once no server
    /// of ours is left.
    async fn run(&self, lock: &mut Option<OutputBaseLock>, shutdown: &mut Shutdown) -> i32 {
        let mut failures = 0u32;
        loop {
            if shutdown.requested() {
                return self.stop_leftovers(None).await;
            }
            if let ControlFlow::Break(code) = self.prepare(lock, shutdown).await {
                return code;
            }
            let began = Instant::now();
            let end = match self.run_server(shutdown, began).await {
                ControlFlow::Continue(end) => end,
                ControlFlow::Break(code) => return code,
            };
            match after_end(&end, began.elapsed(), failures, jitter()) {
                Next::Exit { code, idle } => {
                    if idle {
                        tracing::info!(
                            idle_timeout_secs = self.cfg.bazel.idle_timeout_secs,
                            "Bazel server exited after its idle timeout; ending the pod"
                        );
                        write_idle_message(
                            &self.s.termination_log,
                            self.cfg.bazel.idle_timeout_secs,
                        );
                    }
                    return code;
                }
                Next::Restart {
                    failures: now,
                    pause,
                    abrupt_exit_code,
                } => {
                    if let Some(code) = abrupt_exit_code {
                        write_abrupt_exit_code(self.out, code);
                    }
                    failures = now;
                    tracing::info!(
                        failures,
                        pause_ms = pause.as_millis() as u64,
                        "Bazel server gone; restarting"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = shutdown.wait() => return self.stop_leftovers(None).await,
                    }
                }
            }
        }
    }

    /// Before every start: the output-base lock (held across restarts; taken again if
    /// `clean --expunge` deleted the file under it), the jbazel files (an expunge may have
    /// removed them with everything else) and Bazel's home when it runs as the owner (made
    /// with the owner's filesystem ids). Break: the job ends with that code.
    async fn prepare(
        &self,
        lock: &mut Option<OutputBaseLock>,
        shutdown: &mut Shutdown,
    ) -> ControlFlow<i32> {
        // Before the output base is touched: this supervisor's server must be the only one
        // on it.
        if !lock.as_ref().is_some_and(OutputBaseLock::still_held) {
            if let Some(old) = lock.take() {
                tracing::warn!(lock = %old.path().display(),
                    "the output-base lock file was removed or replaced (clean --expunge?); taking the lock again");
            }
            match acquire_lock(self.out, &self.holder, &self.readiness, shutdown).await {
                Ok(Some(l)) => *lock = Some(l),
                Ok(None) => return ControlFlow::Break(self.stop_leftovers(None).await),
                Err(e) => return fatal("cannot take the output-base lock", &e),
            }
        }
        if let Err(e) = publish::publish(
            self.out,
            &self.cfg.bazel.system_bazelrc_text,
            &self.client_env,
        ) {
            return fatal("cannot publish the jbazel files", &e);
        }
        tracing::info!(dir = %self.out.join(proto::mirror::JBAZEL_DIR).display(),
            "published system.bazelrc and client-env");
        if let Some(home) = &self.plan.bazel_home {
            if let Err(e) = owner::prepare_home(home, self.plan.run_as.uid) {
                return fatal("cannot prepare Bazel's home", &e);
            }
        }
        ControlFlow::Continue(())
    }

    /// One server's life from its start: ready, reported, watched until it ends or is of no
    /// use (then stopped). Continue: how it ended; Break: shutdown ended the job with that
    /// code (the server stopped first).
    async fn run_server(
        &self,
        shutdown: &mut Shutdown,
        began: Instant,
    ) -> ControlFlow<i32, RunEnd> {
        let s = self.s;
        self.readiness.set(false, "starting the Bazel server");
        let started = tokio::select! {
            r = start(self.plan, s, self.reaper, &self.client_pid, &self.cfg.bazel.cgroup_root) => r,
            _ = shutdown.wait() => {
                return ControlFlow::Break(self.stop_leftovers(self.client_pid.take()).await)
            }
        };
        let mut server = match started {
            Ok(server) => server,
            Err((e, client_pid)) => {
                tracing::error!(error = %ErrorChain(&e), "Bazel server start failed");
                self.readiness
                    .set(false, format!("start failed: {}", ErrorChain(&e)));
                if let Some(p) = client_pid {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return ControlFlow::Continue(RunEnd::StartFailed);
            }
        };
        let pid = server.pid;
        self.readiness
            .set(true, format!("Bazel server pid {pid} answers"));
        tracing::info!(pid, addr = %server.client.files().addr,
            startup_ms = began.elapsed().as_millis() as u64, "Bazel server ready");
        let cfg = self.cfg;
        let reporter = tokio::spawn(
            report::report_ready(
                cfg.identity.clone(),
                cfg.report.clone(),
                cfg.bazel.command_port,
            )
            .in_current_span(),
        );
        let end = monitor(&mut server, s, &self.readiness, shutdown, self.out, cfg).await;
        reporter.abort();
        match end {
            End::Shutdown => {
                self.readiness.set(false, "shutting down");
                let how =
                    bazel::stop(Some(&server.client), pid, server.exited.take(), s.grace).await;
                tracing::info!(pid, ?how, "Bazel server stopped");
                ControlFlow::Break(if how == bazel::Stopped::Failed { 1 } else { 0 })
            }
            End::Replace(why) => {
                // Hung or stale, not dead: replace it (Shutdown first; signals if hung).
                tracing::warn!(pid, reason = %why, "Bazel server of no use; stopping it");
                self.readiness.set(false, why);
                if bazel::alive(pid) && bazel::is_our_server(pid) {
                    let _ = bazel::stop(
                        Some(&server.client),
                        pid,
                        server.exited.take(),
                        Duration::from_secs(5),
                    )
                    .await;
                }
                self.reaper.unwatch(pid);
                ControlFlow::Continue(RunEnd::Replaced)
            }
            End::Exited(status) => {
                let why = classify_end(self.out, pid, status, server.oom_kills, cfg);
                self.reaper.unwatch(pid);
                let reason = format!("Bazel server pid {pid} {}", why.describe());
                self.readiness.set(false, reason.clone());
                let uptime_secs = began.elapsed().as_secs();
                if why.is_failure() {
                    tracing::error!(pid, exit = ?why.status(), uptime_secs, "{reason}");
                } else {
                    tracing::info!(pid, uptime_secs, "{reason}");
                }
                ControlFlow::Continue(RunEnd::Ended(why))
            }
        }
    }

    /// Shutdown while no server was known to be running: see [`stop_leftovers`].
    async fn stop_leftovers(&self, client_pid: Option<i32>) -> i32 {
        stop_leftovers(self.out, client_pid, self.s.grace).await
    }
}

/// The pod-IP hop: `<pod IP>:<command port>` -> Bazel on the pod's loopback. None when the
/// "pod IP" is a loopback or unspecified address (as in tests: Bazel's own address, nothing
/// to relay), is no address, or cannot be bound (jbazel then uses the port-forward).
async fn start_relay(pod_ip: &str, command_port: u16) -> Option<tokio::task::JoinHandle<()>> {
    let ip = pod_ip.parse::<std::net::IpAddr>().ok()?;
    if ip.is_loopback() || ip.is_unspecified() {
        return None;
    }
    match relay::bind(ip, command_port).await {
        Ok(l) => {
            tracing::info!(addr = %SocketAddr::new(ip, command_port), "relay to the Bazel server's command port");
            let to = SocketAddr::from(([127, 0, 0, 1], command_port));
            Some(tokio::spawn(relay::serve(l, to).in_current_span()))
        }
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "no relay on the pod IP: jbazel will use the port-forward");
            None
        }
    }
}

/// The failure count after another failure: back to 1 after a server that ran long enough.
fn next_failures(failures: u32, uptime: Duration) -> u32 {
    if uptime > STABLE_AFTER {
        1
    } else {
        failures.saturating_add(1)
    }
}

/// Leaves `code` where the client of the command an OOM kill interrupted reads it.
fn write_abrupt_exit_code(out: &Path, code: i32) {
    match server_end::write_abrupt_exit_code(out, code) {
        Ok(files) => tracing::info!(
            ?files,
            code,
            "wrote the abrupt-exit code for the client of the interrupted command"
        ),
        Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot write the abrupt-exit code"),
    }
}

/// Gathers what [`server_end::classify`] needs about a server that is gone, and classifies.
fn classify_end(
    out: &Path,
    pid: i32,
    exit: Option<ExitInfo>,
    oom_kills_before: Option<u64>,
    cfg: &Config,
) -> ServerEnd {
    let facts = EndFacts {
        exit,
        log: server_end::read_log_end(out, pid),
        oom_kills_before,
        oom_kills_after: cgroup::read_oom_kills(&cfg.bazel.cgroup_root),
    };
    let why = server_end::classify(&facts);
    tracing::debug!(pid, ?facts, ?why, "Bazel server ended");
    why
}

/// The idle exit's termination message, for Kubernetes (and the orchestrator) to read.
fn write_idle_message(path: &Path, idle_timeout_secs: u32) {
    let message = proto::pod::idle_message(idle_timeout_secs);
    match server_end::write_termination_message(path, &message) {
        Ok(true) => {
            tracing::info!(path = %path.display(), message = %message, "wrote the termination message")
        }
        Ok(false) => tracing::info!(path = %path.display(), message = %message,
            "no termination-message file (not in Kubernetes?); not writing one"),
        Err(e) => tracing::warn!(error = %ErrorChain(&e), "cannot write the termination message"),
    }
}

/// Waits for the output-base lock: tries it every [`LOCK_POLL`], says so at once and then every
/// [`LOCK_LOG_EVERY`], readiness false meanwhile. Ok(None) when shutdown was requested first.
async fn acquire_lock(
    out: &Path,
    holder: &str,
    readiness: &Readiness,
    shutdown: &mut Shutdown,
) -> Result<Option<OutputBaseLock>, lock::LockError> {
    let began = Instant::now();
    let mut said_at: Option<Instant> = None;
    let mut tick = tokio::time::interval(LOCK_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.wait() => {
                tracing::info!(waited_ms = began.elapsed().as_millis() as u64,
                    "shutdown while waiting for the output-base lock");
                return Ok(None);
            }
            _ = tick.tick() => {}
        }
        if let Some(l) = OutputBaseLock::try_acquire(out, holder)? {
            tracing::info!(lock = %l.path().display(), waited_ms = began.elapsed().as_millis() as u64,
                "took the output-base lock");
            return Ok(Some(l));
        }
        if said_at.is_none_or(|t| t.elapsed() >= LOCK_LOG_EVERY) {
            readiness.set(false, WAITING_FOR_LOCK);
            tracing::info!(
                lock = %OutputBaseLock::path_in(out).display(),
                holder = %lock::holder_note(out),
                waited_secs = began.elapsed().as_secs(),
                "{WAITING_FOR_LOCK}"
            );
            said_at = Some(Instant::now());
        }
    }
}

/// Runs the Bazel client in the view until the server answers Ping.
async fn start(
    plan: &MountPlan,
    s: &ServeSettings,
    reaper: &Reaper,
    client_pid_slot: &std::cell::Cell<Option<i32>>,
    cgroup_root: &Path,
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
    // Whoever reads the request cookie can run commands on the server: the owner only.
    // (server/ is 0700 already, so a failure here exposes nothing; it is logged loudly.)
    match bazel::secure_server_files(out) {
        Ok(before) => tracing::info!(
            pid,
            server_dir_mode_before = format!("{:o}", before.server_dir),
            cookie_modes_before = ?before.cookies.iter().map(|(n, m)| format!("{n}={m:o}")).collect::<Vec<_>>(),
            "made server/ 0700 and the cookies 0600"
        ),
        Err(e) => {
            tracing::error!(pid, error = %ErrorChain(&e), "cannot make the server's cookies private")
        }
    }
    // The client returns once the server is up; Ping proves it (and the cookie).
    let mut last = String::new();
    while Instant::now() < deadline {
        let oom_kills = cgroup::read_oom_kills(cgroup_root);
        match client.ping(PING_TIMEOUT).await {
            Ok(()) => {
                return Ok(Running {
                    client,
                    pid,
                    exited: Some(exited),
                    oom_kills,
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

/// Watches the server every interval until it exits, hangs, has its output base emptied
/// under it, or shutdown is requested. The check is the process (procfs), its files, and
/// [`Client::probe`]: not Ping, which would count as a command and keep an idle server from
/// ever reaching its idle timeout.
async fn monitor(
    server: &mut Running,
    s: &ServeSettings,
    readiness: &Readiness,
    shutdown: &mut Shutdown,
    out: &Path,
    cfg: &Config,
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
                return End::Exited(status);
            }
            _ = tick.tick() => {
                if !bazel::alive(pid) {
                    return End::Exited(exit_within(server, EXIT_SETTLE).await.flatten());
                }
                // Read before the probe, kept only if the probe then succeeds: a server the
                // kernel has OOM-killed cannot answer, so a kept value predates its kill.
                let oom_kills = cgroup::read_oom_kills(&cfg.bazel.cgroup_root);
                match server.client.probe(PING_TIMEOUT).await {
                    Ok(()) if !publish::server_files_intact(out, &server.client.files().request_cookie) => {
                        // A server deletes its files as it exits (idle, `shutdown`): let the
                        // exit arrive. If it does not, `clean --expunge` or a user's `rm -rf`
                        // emptied the output base under a live server: Bazel's own client
                        // would have a shut-down server here; a stale one fails the next
                        // build, and jbazel cannot find it. Start a fresh one.
                        if let Some(status) = exit_within(server, EXIT_SETTLE).await {
                            return End::Exited(status);
                        }
                        return End::Replace(format!(
                            "the output base was emptied under Bazel server pid {pid} (clean --expunge?)"
                        ));
                    }
                    Ok(()) => {
                        failed = 0;
                        server.oom_kills = oom_kills;
                        tracing::debug!(pid, "health check: the server serves gRPC");
                        readiness.set(true, format!("Bazel server pid {pid} answers"));
                    }
                    Err(e) => {
                        // Exiting (it closes its port first)? Then it is an exit, not a hang.
                        if let Some(status) = exit_within(server, Duration::from_millis(500)).await {
                            return End::Exited(status);
                        }
                        failed += 1;
                        tracing::warn!(pid, failed, error = %ErrorChain(&e), "health check failed");
                        readiness.set(false, e.to_string());
                        if failed >= HUNG_AFTER_CHECKS {
                            return End::Replace(format!("Bazel server pid {pid} did not answer {failed} health checks"));
                        }
                    }
                }
            }
        }
    }
}

/// Waits up to `within` for the server's exit status. None: still running. Some(None): it
/// is gone but the status never came (the reaper had no registration for it).
async fn exit_within(server: &mut Running, within: Duration) -> Option<Option<ExitInfo>> {
    let pid = server.pid;
    let Some(rx) = server.exited.as_mut() else {
        return (!bazel::alive(pid)).then_some(None);
    };
    match tokio::time::timeout(within, rx).await {
        Ok(status) => {
            server.exited = None;
            Some(status.ok())
        }
        Err(_) => (!bazel::alive(pid)).then_some(None),
    }
}

/// Shutdown while no server was known to be running: stop whatever the pid file names.
async fn stop_leftovers(out: &Path, client_pid: Option<i32>, grace: Duration) -> i32 {
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

#[cfg(test)]
mod tests {
    use super::*;

    const SHORT: Duration = Duration::from_secs(5);
    const LONG: Duration = Duration::from_secs(61);

    fn restart(failures: u32, pause_ms: u64, abrupt_exit_code: Option<i32>) -> Next {
        Next::Restart {
            failures,
            pause: Duration::from_millis(pause_ms),
            abrupt_exit_code,
        }
    }

    #[test]
    fn what_follows_each_end() {
        use ServerEnd::*;
        let oom = Some(server_end::BAZEL_OOM_EXIT);
        // (end, uptime, failures before) -> next, at jitter 1 (the full pause).
        let cases = [
            // The idle exit ends the pod, whatever came before.
            (
                RunEnd::Ended(Idle),
                SHORT,
                3,
                Next::Exit {
                    code: 0,
                    idle: true,
                },
            ),
            (
                RunEnd::Ended(Idle),
                LONG,
                0,
                Next::Exit {
                    code: 0,
                    idle: true,
                },
            ),
            // `shutdown` / `clean --expunge`: no failure, the count starts over.
            (RunEnd::Ended(ShutDown), SHORT, 4, restart(0, 500, None)),
            // Failures count up and double the pause; a long run resets the count to 1.
            (
                RunEnd::Ended(OomKilled {
                    before: 0,
                    after: 1,
                }),
                SHORT,
                2,
                restart(3, 2000, oom),
            ),
            (
                RunEnd::Ended(OomKilled {
                    before: 0,
                    after: 1,
                }),
                LONG,
                5,
                restart(1, 500, oom),
            ),
            (
                RunEnd::Ended(OutOfMemory { status: 33 }),
                SHORT,
                0,
                restart(1, 500, None),
            ),
            (
                RunEnd::Ended(OutOfMemory { status: 0 }),
                SHORT,
                1,
                restart(2, 1000, None),
            ),
            (
                RunEnd::Ended(CrashedCleanly("BLAZE_INTERNAL_ERROR".into())),
                SHORT,
                0,
                restart(1, 500, None),
            ),
            (RunEnd::Ended(Killed(9)), SHORT, 6, restart(7, 30_000, None)),
            (RunEnd::Ended(Crashed(37)), LONG, 9, restart(1, 500, None)),
            (RunEnd::Ended(Vanished), SHORT, 0, restart(1, 500, None)),
            (RunEnd::Replaced, SHORT, 1, restart(2, 1000, None)),
            (RunEnd::Replaced, LONG, 8, restart(1, 500, None)),
            // A failed start never ran: a slow one (up to the start deadline) resets nothing.
            (RunEnd::StartFailed, SHORT, 0, restart(1, 500, None)),
            (RunEnd::StartFailed, LONG, 3, restart(4, 4000, None)),
            (
                RunEnd::StartFailed,
                SHORT,
                u32::MAX,
                restart(u32::MAX, 30_000, None),
            ),
        ];
        for (end, uptime, failures, want) in cases {
            assert_eq!(
                after_end(&end, uptime, failures, 1.0),
                want,
                "{end:?} after {uptime:?} with {failures} failures"
            );
        }
    }

    #[test]
    fn the_restart_pause_is_jittered_within_its_upper_half() {
        let end = RunEnd::Ended(ServerEnd::Crashed(1));
        let pause = |jitter| match after_end(&end, SHORT, 2, jitter) {
            Next::Restart { pause, .. } => pause,
            other => panic!("{other:?}"),
        };
        assert_eq!(pause(0.0), Duration::from_millis(1000));
        assert_eq!(pause(0.5), Duration::from_millis(1500));
        assert_eq!(pause(1.0), Duration::from_millis(2000));
    }
}
