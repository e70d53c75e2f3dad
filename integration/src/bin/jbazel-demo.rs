//! The Phase 0 demo driver (README's main job, run by `integration/demo.sh` once the cluster
//! is up, the workspace built and the image imported).
//!
//! Starts the Spanner emulator and the orchestrator (left running), lays out the mock
//! filestore with the sample workspace, makes the desktop path a bind mount of
//! `R/alice/<md5(path)>/src`, runs `jbazel build //...` there, then checks and prints the
//! four verification points and a timing breakdown of the cold start.
//!
//! `jbazel-demo --down` stops what a previous run left (emulator, orchestrator, pods,
//! desktop mount), by the process groups it recorded.

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use futures::TryStreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, LogParams};
use kube::runtime::watcher::{self, Event};
use kube::Api;

use orchestrator::pods::manifest::{APP_SELECTOR, LABEL_REPO_HASH};

use integration::kubernetes::{delete_pod_and_wait, describe_pod, Cluster, IMAGE};
use integration::platform::{repo_root, Desktop, Orchestrator, OrchestratorOptions};
use integration::spanner::{EmulatorOptions, SpannerEmulator};

#[derive(Parser, Debug)]
#[command(
    name = "jbazel-demo",
    about = "End-to-end demo: `jbazel build //...` on a remote Bazel server in a local Kubernetes pod"
)]
struct Args {
    /// Stop what a previous run left running (emulator, orchestrator, pods, desktop mount).
    #[arg(long)]
    down: bool,
    /// Tear everything down at the end instead of leaving it running.
    #[arg(long)]
    teardown: bool,
    /// Mock filestore root R (hostPath of the pods).
    #[arg(
        long,
        env = proto::pod::env::FILESTORE_ROOT,
        default_value = proto::pod::DEFAULT_FILESTORE_ROOT
    )]
    filestore_root: PathBuf,
    /// The desktop checkout: a bind mount of R/<user>/<md5(path)>/src.
    #[arg(long, default_value = "/tmp/jbazel-demo/desktop/alice/sample")]
    desktop_path: PathBuf,
    /// The user.
    #[arg(long, default_value = "alice")]
    user: String,
    /// Kubernetes namespace of the Bazel server pods.
    #[arg(long, default_value = "jbazel")]
    namespace: String,
    /// Where the demo keeps its pid files and logs.
    #[arg(long, default_value = "/var/lib/jbazel-demo")]
    state_dir: PathBuf,
    /// Spanner emulator address.
    #[arg(long, default_value = "127.0.0.1:9010")]
    spanner: SocketAddr,
    /// Orchestrator port (0.0.0.0:PORT).
    #[arg(long, default_value_t = 50051)]
    orchestrator_port: u16,
}

/// The desktop's user account: jbazel runs as it, never as root.
struct DesktopUser {
    uid: u32,
    gid: u32,
    home: PathBuf,
    kubeconfig: PathBuf,
}

impl DesktopUser {
    /// Looks the account up and copies the user's kubeconfig to `~/.kube/config` (0600,
    /// theirs).
    fn prepare(user: &str) -> Result<Self> {
        let account = nix::unistd::User::from_name(user)
            .with_context(|| format!("looking up account {user}"))?
            .with_context(|| {
                format!("no account {user} on this machine (integration/setup.sh makes it)")
            })?;
        if account.uid.is_root() {
            bail!("the desktop user must not be root");
        }
        let source = integration::credentials::user_credential(user)
            .with_context(|| format!("the kubeconfig of {user}"))?
            .kubeconfig;
        let dir = account.dir.join(".kube");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let kubeconfig = dir.join("config");
        fs::copy(&source, &kubeconfig)
            .with_context(|| format!("copying {} to {}", source.display(), kubeconfig.display()))?;
        for p in [&dir, &kubeconfig] {
            nix::unistd::chown(p, Some(account.uid), Some(account.gid))
                .with_context(|| format!("chown {}", p.display()))?;
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&kubeconfig, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", kubeconfig.display()))?;
        Ok(DesktopUser {
            uid: account.uid.as_raw(),
            gid: account.gid.as_raw(),
            home: account.dir,
            kubeconfig,
        })
    }

    /// `cmd` as this user, with their home and kubeconfig.
    fn run(&self, mut cmd: Command) -> Command {
        use std::os::unix::process::CommandExt;
        cmd.uid(self.uid)
            .gid(self.gid)
            .env("HOME", &self.home)
            .env("KUBECONFIG", &self.kubeconfig);
        cmd
    }
}

const PGID_FILES: [&str; 2] = ["emulator.pgid", "orchestrator.pgid"];

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let result = if args.down {
        tear_down(&args).await
    } else {
        // A previous run's processes hold the ports: stop them first (idempotent demo).
        match tear_down(&args).await {
            Ok(()) => demo(&args).await,
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "jbazel-demo: error: {}",
                proto::error_chain::ErrorChain(e.as_ref())
            );
            std::process::ExitCode::FAILURE
        }
    }
}

async fn demo(args: &Args) -> Result<()> {
    let t0 = Instant::now();
    fs::create_dir_all(&args.state_dir)
        .with_context(|| format!("creating {}", args.state_dir.display()))?;
    let cluster = Cluster::connect()
        .await
        .context("the local cluster must be up (integration/kubernetes/local.sh up)")?;

    step("Spanner emulator + schema");
    let emulator = SpannerEmulator::start_with(EmulatorOptions {
        addr: Some(args.spanner),
        detached: true,
    })
    .await
    .context("starting the Spanner emulator")?;
    write_pgid(&args.state_dir, "emulator.pgid", emulator.pgid())?;
    let t_emulator = t0.elapsed();

    step("orchestrator");
    fs::create_dir_all(&args.filestore_root)
        .with_context(|| format!("creating {}", args.filestore_root.display()))?;
    let log_path = args.state_dir.join("orchestrator.log");
    let orchestrator = Orchestrator::start(&OrchestratorOptions {
        spanner_host: emulator.host(),
        project: emulator.project().into(),
        instance: emulator.instance().into(),
        database: emulator.database().into(),
        namespace: args.namespace.clone(),
        filestore_root: args.filestore_root.clone(),
        image: IMAGE.into(),
        port: args.orchestrator_port,
        log_path: log_path.clone(),
        kubeconfig: integration::credentials::orchestrator_kubeconfig()
            .context("the orchestrator's ServiceAccount kubeconfig (local.sh up makes it)")?,
        detached: true,
        extra_args: Vec::new(),
    })
    .context("starting the orchestrator")?;
    write_pgid(&args.state_dir, "orchestrator.pgid", orchestrator.pgid())?;
    let t_orchestrator = t0.elapsed();

    step("mock filestore + desktop checkout");
    let workspace = repo_root().join("integration/sample-workspace");
    let desktop = Desktop::create(
        &args.filestore_root,
        &args.user,
        &args.desktop_path,
        &workspace,
    )
    .context("creating the desktop checkout")?;
    println!(
        "  desktop {} -> {}/{}/{}/src",
        desktop.desktop_path.display(),
        args.filestore_root.display(),
        args.user,
        desktop.repo_hash
    );

    // The desktop user: a plain account (setup.sh makes alice), with her own kubeconfig in
    // her home: the credential jbazel presents to the orchestrator and the port-forward.
    let desk = DesktopUser::prepare(&args.user).context("preparing the desktop user")?;
    println!(
        "  desktop user {} (uid {}), KUBECONFIG={}",
        args.user,
        desk.uid,
        desk.kubeconfig.display()
    );

    step(&format!("jbazel build //... (as {})", args.user));
    let user_ns = orchestrator::pods::manifest::user_namespace(&args.namespace, &args.user);
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &user_ns);
    let stages = Arc::new(Mutex::new(Vec::new()));
    let watch = tokio::spawn(watch_pod_stages(
        pods.clone(),
        desktop.repo_hash.clone(),
        Instant::now(),
        stages.clone(),
    ));
    let session = format!(
        "demo-{}",
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    );
    let t_build_start = Instant::now();
    let status = desk
        .run(desktop.jbazel(&orchestrator.url(), &session)?)
        .args(["build", "//..."])
        .stdout(Stdio::inherit())
        .stderr(Stdio::inherit())
        .status()
        .context("running jbazel")?;
    let t_build = t_build_start.elapsed();
    watch.abort();
    let stages = stages.lock().map(|s| s.clone()).unwrap_or_default();
    if !status.success() {
        bail!(
            "jbazel build //... failed ({status}); orchestrator log: {}",
            log_path.display()
        );
    }

    step("verification");
    let mut failures = 0;
    let needle = format!("Creating Pod for repo {}", desktop.repo_hash);
    failures += check(
        orchestrator.log().contains(&needle),
        &format!(
            "1. orchestrator logged \"{needle}\" ({})",
            log_path.display()
        ),
    );
    let listed = pods
        .list(&ListParams::default().labels(&format!("{LABEL_REPO_HASH}={}", desktop.repo_hash)))
        .await
        .context("listing pods")?;
    let pod_line = listed
        .items
        .iter()
        .map(describe_pod)
        .collect::<Vec<_>>()
        .join("; ");
    failures += check(
        !listed.items.is_empty(),
        &format!("2. the cluster lists the Bazel server pod: {pod_line}"),
    );
    println!(
        "     see it yourself (as {}): KUBECONFIG={} kubectl get pods -n {user_ns}",
        args.user,
        desk.kubeconfig.display(),
    );
    let binary = desktop.artifact("app", "hello");
    failures += check(
        binary.is_file(),
        &format!("3. Bazel artifacts are in {}", desktop.out_dir().display()),
    );
    let ran = desk.run(Command::new(&binary)).output();
    let output = ran
        .as_ref()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    failures += check(
        output == "hello from jbazel",
        &format!(
            "4. the mirror binary runs on the host: {} -> {output:?}",
            binary.display()
        ),
    );

    step("cold start timing");
    println!("  emulator + schema          {:>8.2?}", t_emulator);
    println!(
        "  orchestrator up            {:>8.2?}",
        t_orchestrator - t_emulator
    );
    for (stage, at) in &stages {
        println!("  {stage:<26} {at:>8.2?} after jbazel started");
    }
    if let Some(pod) = listed.items.first() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let logs = pods
            .logs(&name, &LogParams::default())
            .await
            .unwrap_or_default();
        if let Some(us) = log_field(&logs, "pivoted", "micros") {
            println!(
                "  pivot (in the pod)         {:>8.2?}",
                Duration::from_micros(us)
            );
        }
        if let Some(ms) = log_field(&logs, "Bazel server ready", "startup_ms") {
            println!(
                "  Bazel server start (pod)   {:>8.2?}",
                Duration::from_millis(ms)
            );
        }
    }
    println!("  jbazel build //... total   {:>8.2?}", t_build);

    if args.teardown {
        drop(desktop);
        tear_down(args).await?;
        println!("\nTorn down.");
    } else {
        desktop.keep_mounted();
        println!(
            "\nLeft running (emulator {}, orchestrator {}, pod in namespace {}). Tear down: ./integration/demo.sh --down",
            args.spanner,
            orchestrator.url(),
            user_ns
        );
    }
    if failures > 0 {
        bail!("{failures} verification point(s) failed");
    }
    Ok(())
}

/// The numeric `field=` of the first supervisor log line that contains `message`.
fn log_field(logs: &str, message: &str, field: &str) -> Option<u64> {
    let line = logs.lines().find(|l| l.contains(message))?;
    let value = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{field}=")))?;
    value.trim_matches('"').parse().ok()
}

fn step(what: &str) {
    println!("==> {what}");
}

fn check(ok: bool, what: &str) -> usize {
    println!("  [{}] {what}", if ok { " ok " } else { "FAIL" });
    usize::from(!ok)
}

fn write_pgid(dir: &Path, name: &str, pgid: u32) -> Result<()> {
    let path = dir.join(name);
    fs::write(&path, pgid.to_string()).with_context(|| format!("writing {}", path.display()))
}

/// Pod stages and when they were first seen, relative to the start of `jbazel`.
type Stages = Arc<Mutex<Vec<(String, Duration)>>>;

/// When the pod for `repo_hash` reached each stage, seen by a watch (not polling).
async fn watch_pod_stages(
    pods: Api<Pod>,
    repo_hash: proto::names::RepoHash,
    t0: Instant,
    seen: Stages,
) {
    let config = watcher::Config::default().labels(&format!("{LABEL_REPO_HASH}={repo_hash}"));
    let mut stream = std::pin::pin!(watcher::watcher(pods, config));
    let note = |name: &str| {
        if let Ok(mut stages) = seen.lock() {
            if !stages.iter().any(|(s, _)| s == name) {
                stages.push((name.to_string(), t0.elapsed()));
            }
        }
    };
    while let Ok(Some(event)) = stream.try_next().await {
        let pod = match event {
            Event::Apply(p) | Event::InitApply(p) if p.metadata.deletion_timestamp.is_none() => p,
            _ => continue,
        };
        note("pod created");
        let status = pod.status.unwrap_or_default();
        for c in status.conditions.unwrap_or_default() {
            if c.status == "True" {
                match c.type_.as_str() {
                    "PodScheduled" => note("pod scheduled"),
                    "Ready" => note("Bazel server ready"),
                    _ => {}
                }
            }
        }
        if status
            .container_statuses
            .unwrap_or_default()
            .iter()
            .any(|cs| cs.state.as_ref().and_then(|s| s.running.as_ref()).is_some())
        {
            note("supervisor running");
        }
    }
}

/// SIGKILLs a process group and waits (bounded) until its leader is gone, so its ports
/// are free for the next run.
async fn kill_group_and_wait(pgid: i32) {
    let pid = nix::unistd::Pid::from_raw(pgid);
    let _ = nix::sys::signal::killpg(pid, nix::sys::signal::Signal::SIGKILL);
    // The leader is not our child (a previous run started it): wait for it to vanish.
    testkit::wait_until_async(
        Duration::from_secs(10),
        Duration::from_millis(20),
        async || nix::sys::signal::kill(pid, None).is_err().then_some(()),
    )
    .await;
}

/// Stops what a previous run recorded, deletes the demo's pods, unmounts the desktop.
async fn tear_down(args: &Args) -> Result<()> {
    for name in PGID_FILES {
        let path = args.state_dir.join(name);
        if let Ok(text) = fs::read_to_string(&path) {
            if let Ok(pgid) = text.trim().parse::<i32>() {
                kill_group_and_wait(pgid).await;
            }
            let _ = fs::remove_file(&path);
        }
    }
    if args.desktop_path.exists() {
        let _ = nix::mount::umount2(&args.desktop_path, nix::mount::MntFlags::MNT_DETACH);
    }
    if let Ok(cluster) = Cluster::connect().await {
        // Wait until the old pods are gone, so the next run starts cold and measures it,
        // and two Bazel servers never share the output base.
        let user_ns = orchestrator::pods::manifest::user_namespace(&args.namespace, &args.user);
        let pods: Api<Pod> = Api::namespaced(cluster.client(), &user_ns);
        let old = pods
            .list(&ListParams::default().labels(APP_SELECTOR))
            .await
            .map(|l| l.items)
            .unwrap_or_default();
        for pod in old {
            let name = pod.metadata.name.unwrap_or_default();
            delete_pod_and_wait(&pods, &name, 10, Duration::from_secs(120))
                .await
                .with_context(|| format!("deleting the previous run's pod {name}"))?;
        }
    }
    Ok(())
}
