//! The `warm_noop` bench: a warm no-op `build` through the whole platform (GetServer on the
//! orchestrator, then the hop to the pod's Bazel server) vs the local Bazel client on its own
//! local server for the same workspace. Target (issue 12): jbazel's median <= 0.85x local.
//!
//! ```text
//! cargo build --release -p jbazel -p orchestrator     # first: the bench runs these binaries
//! cargo bench -p integration --bench warm_noop [-- --iterations 25]
//! ```
//!
//! Binaries: like every platform fixture, `integration::platform::workspace_binary` takes
//! `jbazel` and `orchestrator` from the profile dir this bench was built into. Under `cargo
//! bench` that is `target/release`, and cargo does not build other packages' binaries for
//! a bench, hence the `cargo build --release` line above (the bench stops and says so when
//! one is missing, and warns when one is older than its sources). Under `cargo test` it is
//! `target/debug` (`cargo build --workspace --bins`, as for the e2e tests). The pod runs the
//! image's supervisor, which must have the pod-IP relay: `image/build.sh` (e.g. `--supervisor
//! target/debug/supervisor`) after changing it.
//!
//! Under `cargo test --all-targets` (no `--bench` argument) the same binary runs a smoke
//! pass of 2 rounds, so CI checks the bench still works; those figures mean nothing.
//!
//! Set-up, all real, as `tests/e2e.rs`: the local cluster (its own namespace), a Spanner
//! emulator, the orchestrator binary, a desktop checkout of `integration/sample-workspace`
//! (a bind mount of the filestore). The first `jbazel build` spawns the pod (cold, reported).
//! The reference is the real client `/usr/bin/bazel` on a copy of the same workspace, with
//! its own local server: `--nosystem_rc --install_base=/usr/share/bazel --trust_install_base
//! --bazelrc=<image/bazel/system.bazelrc.in rendered for this checkout>
//! --output_base=<tmp>/local-out --max_idle_secs=600`; it is shut down at the end.
//!
//! Measured: each client builds twice (warm-up), then every round times one `jbazel` with
//! `JBAZEL_HOP=port-forward`, one with `JBAZEL_HOP=pod-ip` and one local `bazel`, the order
//! rotated each round; any exit but 0 fails the bench, as does a pod-IP run that fell back to
//! the port-forward or a server that restarted. Printed: median, p10, p90 of each; the ratio
//! of the medians and the median of the per-round ratios, jbazel/local, for both hops.
//! Then, for the scale page (docs/scale.md): the hop's set-up alone (a port-forward opened
//! through the API server, and its upgrade alone, vs a TCP connect to the pod IP; each up
//! to Bazel's HTTP/2 SETTINGS), and the CPU per command of kube-apiserver, kubelet,
//! containerd, etcd and the orchestrator (/proc utime+stime over a block of commands of one
//! kind, divided by the count; the local-bazel block is the cluster's background).
//! And authentication alone (issue 10: it may add only a few ms): the user's credential
//! loaded as jbazel loads it, a TCP connect to the orchestrator, GetServer on a fresh mTLS
//! channel and on a kept one; the handshake is fresh - kept - TCP, and credential +
//! handshake is what a command pays to prove who it is, shown against local's median.
//! No sleeps: the pod's start is bounded by jbazel's `JBAZEL_DEADLINE_SECS`, each probe by a
//! timeout; the commands are waited for to their exit, as in `tests/e2e.rs` (a polling
//! deadline would blur the timings).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use integration::platform::{bin_dir, repo_root, workspace_binary};
use integration::stack::TestPlatform;
use proto::error_chain::ErrorChain;
use proto::orchestrator::orchestrator_client::OrchestratorClient;
use proto::orchestrator::{GetServerRequest, ServerStatus};

const USER: &str = "bench";
const SESSION: &str = "warm-noop";
/// The issue's target: jbazel's warm no-op at most this fraction of local Bazel's.
const TARGET_RATIO: f64 = 0.85;
/// What jbazel logs (warn) when the pod IP does not connect and it takes the port-forward.
const FALLBACK_WARNING: &str = "pod IP unreachable";
/// Deadline of one hop probe (a port-forward open or a TCP connect, up to HTTP/2 SETTINGS).
const PROBE_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "warm_noop",
    about = "Warm no-op build through the platform (port-forward and pod-IP hops) vs local bazel"
)]
struct Args {
    /// Timed rounds (each: jbazel port-forward, jbazel pod-ip, local bazel).
    #[arg(long, default_value_t = 25)]
    iterations: usize,
    /// Untimed builds of each client before the rounds.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// What to build.
    #[arg(long, default_value = "//app:hello")]
    target: String,
    /// Passed by `cargo bench`: the full run (without it, a smoke pass).
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    PortForward,
    PodIp,
    Local,
}

impl Client {
    const ALL: [Client; 3] = [Client::PortForward, Client::PodIp, Client::Local];

    fn label(self) -> &'static str {
        match self {
            Client::PortForward => "jbazel port-forward",
            Client::PodIp => "jbazel pod-ip",
            Client::Local => "local bazel",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

fn pct(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    match v.len() {
        0 => Duration::ZERO,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2,
    }
}

fn median_f(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn show(what: &str, out: &Output, took: Duration) -> String {
    format!(
        "{what}: exit {:?} in {took:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `cmd` to the end, timed; anything but exit 0 is an error with the output.
fn timed(mut cmd: Command, what: &str) -> Result<(Duration, Output)> {
    let started = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {what}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!("{}", show(what, &out, took));
    }
    Ok((took, out))
}

/// The newest modification time of the files under `dirs`.
fn newest(dirs: &[PathBuf]) -> Option<SystemTime> {
    let mut best = None;
    let mut stack: Vec<PathBuf> = dirs.to_vec();
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(rd) = fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        } else if let Ok(m) = meta.modified() {
            best = best.max(Some(m));
        }
    }
    best
}

/// The two binaries this bench runs, from this build's profile dir; a warning when one is
/// older than the sources it is built from.
fn platform_binaries(full: bool) -> Result<PathBuf> {
    let mut jbazel = None;
    for (name, crates) in [
        ("jbazel", &["jbazel", "proto"][..]),
        ("orchestrator", &["orchestrator", "proto"][..]),
    ] {
        let bin = workspace_binary(name).with_context(|| {
            if full {
                "under `cargo bench` the binaries come from target/release: run \
                 `cargo build --release -p jbazel -p orchestrator` first"
            } else {
                "run `cargo build --workspace --bins` first"
            }
        })?;
        let built = fs::metadata(&bin).and_then(|m| m.modified()).ok();
        let dirs: Vec<PathBuf> = crates
            .iter()
            .flat_map(|c| {
                let root = repo_root().join(c);
                [root.join("src"), root.join("Cargo.toml")]
            })
            .collect();
        if let (Some(built), Some(src)) = (built, newest(&dirs)) {
            if src > built {
                eprintln!(
                    "warm_noop: WARNING: {} is older than its sources ({}): rebuild it, or \
                     these figures are of the old code",
                    bin.display(),
                    crates.join(", ")
                );
            }
        }
        if name == "jbazel" {
            jbazel = Some(bin);
        }
    }
    jbazel.context("jbazel binary")
}

/// The local reference: `/usr/bin/bazel` with its own server on a copy of the workspace.
struct LocalBazel {
    workspace: PathBuf,
    startup: Vec<String>,
    /// Whether a command ran, so a server may be up to shut down.
    running: std::cell::Cell<bool>,
}

impl LocalBazel {
    fn new(scratch: &Path, sample: &Path) -> Result<Self> {
        let workspace = scratch.join("local/sample");
        testkit::copy_dir(sample, &workspace).context("copy the sample workspace")?;
        // image/bazel/system.bazelrc.in as the image installs it, with this checkout's
        // stand-ins (sed "/^#/!s|@RULES_DIR@|<repo>/image/bazel|g").
        let rules = repo_root().join("image/bazel");
        let template = rules.join("system.bazelrc.in");
        let text = fs::read_to_string(&template)
            .with_context(|| format!("read {}", template.display()))?;
        let rendered: String = text
            .lines()
            .map(|l| {
                if l.starts_with('#') {
                    l.to_string()
                } else {
                    l.replace("@RULES_DIR@", &rules.display().to_string())
                }
            })
            .map(|l| l + "\n")
            .collect();
        let rc = scratch.join("local/system.bazelrc");
        fs::write(&rc, rendered).with_context(|| format!("write {}", rc.display()))?;
        let output_base = scratch.join("local-out");
        Ok(LocalBazel {
            workspace,
            startup: vec![
                "--nosystem_rc".into(),
                "--install_base=/usr/share/bazel".into(),
                "--trust_install_base".into(),
                format!("--bazelrc={}", rc.display()),
                format!("--output_base={}", output_base.display()),
                "--max_idle_secs=600".into(),
            ],
            running: std::cell::Cell::new(false),
        })
    }

    fn cmd(&self, args: &[&str]) -> Command {
        self.running.set(true);
        let mut c = Command::new("/usr/bin/bazel");
        c.args(&self.startup)
            .args(args)
            .current_dir(&self.workspace)
            .stdin(Stdio::null());
        c
    }

    fn server_pid(&self) -> Option<String> {
        let base = self.startup[4].trim_start_matches("--output_base=");
        fs::read_to_string(Path::new(base).join("server/server.pid.txt"))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn shutdown(&mut self) -> Result<()> {
        if !self.running.get() {
            return Ok(());
        }
        let c = self.cmd(&["shutdown"]);
        self.running.set(false);
        timed(c, "local bazel shutdown").map(|_| ())
    }
}

impl Drop for LocalBazel {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            eprintln!("warm_noop: {e:#}");
        }
    }
}

/// CPU time (utime + stime) of the processes the commands load, read from /proc.
struct CpuMeter {
    procs: Vec<(&'static str, u32)>,
    tick: f64,
}

impl CpuMeter {
    /// The local cluster's components (pid files next to the kubeconfig, as
    /// `kubernetes/local.sh` writes them) and the orchestrator; those not found are left out.
    fn new(kubeconfig: &Path, orchestrator_pid: u32) -> Self {
        let run = kubeconfig
            .parent()
            .map(|d| d.join("run"))
            .unwrap_or_default();
        let mut procs = Vec::new();
        for name in ["kube-apiserver", "kubelet", "containerd", "etcd"] {
            let pid = fs::read_to_string(run.join(format!("{name}.pid")))
                .ok()
                .and_then(|t| t.split_whitespace().next()?.parse::<u32>().ok())
                .filter(|pid| Path::new(&format!("/proc/{pid}")).exists());
            if let Some(pid) = pid {
                procs.push((name, pid));
            }
        }
        procs.push(("orchestrator", orchestrator_pid));
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        CpuMeter {
            procs,
            tick: 1000.0 / if hz > 0 { hz as f64 } else { 100.0 },
        }
    }

    /// Milliseconds of CPU each process has used so far.
    fn read(&self) -> Vec<f64> {
        self.procs
            .iter()
            .map(|(_, pid)| {
                let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                // Fields after the parenthesised comm: state is the first, utime the 12th.
                let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
                let f: Vec<&str> = rest.split_whitespace().collect();
                let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                (ticks(11) + ticks(12)) as f64 * self.tick
            })
            .collect()
    }

    fn header(&self) -> String {
        self.procs
            .iter()
            .map(|(n, _)| format!("{n:>15}"))
            .collect::<Vec<_>>()
            .join("")
    }
}

/// Writes HTTP/2's client preface and an empty SETTINGS frame, and reads the first frame
/// header the server sends: the time to a live connection to Bazel's gRPC server.
async fn http2_handshake(s: &mut (impl AsyncRead + AsyncWrite + Unpin)) -> std::io::Result<()> {
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await?;
    s.flush().await?;
    let mut header = [0u8; 9];
    s.read_exact(&mut header).await?;
    if header[3] != 4 {
        return Err(std::io::Error::other(format!(
            "the server's first HTTP/2 frame is type {}, not SETTINGS",
            header[3]
        )));
    }
    Ok(())
}

/// One port-forward through the API server to the pod's command port: the time to the
/// upgraded (WebSocket) connection, and to Bazel's HTTP/2 SETTINGS through it.
async fn probe_port_forward(
    pods: &kube::Api<Pod>,
    pod: &str,
    port: u16,
) -> Result<(Duration, Duration)> {
    let started = Instant::now();
    let mut pf = pods
        .portforward(pod, &[port])
        .await
        .with_context(|| format!("port-forward to {pod}:{port}"))?;
    let upgraded = started.elapsed();
    let mut stream = pf
        .take_stream(port)
        .context("port-forward gave no stream")?;
    http2_handshake(&mut stream)
        .await
        .context("HTTP/2 handshake through the port-forward")?;
    let took = started.elapsed();
    drop(stream);
    pf.abort();
    let _ = pf.join().await;
    Ok((upgraded, took))
}

/// One TCP connection to the supervisor's relay on the pod IP, up to SETTINGS.
async fn probe_pod_ip(addr: &str) -> Result<Duration> {
    let started = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    s.set_nodelay(true)?;
    http2_handshake(&mut s)
        .await
        .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
    Ok(started.elapsed())
}

async fn with_deadline<T>(
    what: &str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(PROBE_DEADLINE, f)
        .await
        .with_context(|| format!("{what}: no answer within {PROBE_DEADLINE:?}"))?
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if !args.bench {
        println!("smoke run (not `cargo bench`): the figures below mean nothing");
        args.iterations = args.iterations.min(2);
    }
    if args.iterations == 0 {
        bail!("--iterations must be at least 1");
    }
    proto::tls::install_crypto_provider();
    let jbazel_bin = platform_binaries(args.bench)?;

    let stack = TestPlatform::start("warm-noop").await?;
    let (orchestrator, namespace) = (&stack.orchestrator, &stack.namespace);
    let kubeconfig = stack.kubeconfig().to_path_buf();
    let sample = repo_root().join("integration/sample-workspace");
    let desktop = stack.desktop(USER, "home/bench/sample", &sample)?;
    let url = orchestrator.url();
    let jbazel = |hop: &str, extra: &[&str]| -> Result<Command> {
        let mut c = desktop.jbazel(&url, SESSION)?;
        c.args(extra).env("JBAZEL_HOP", hop).env("RUST_LOG", "warn");
        Ok(c)
    };
    let build = ["build", args.target.as_str()];
    println!(
        "warm_noop: jbazel {} (bin dir {}), workspace {}, target {}",
        jbazel_bin.display(),
        bin_dir().display(),
        sample.display(),
        args.target
    );

    // Cold: the first command spawns the pod and waits for its server.
    let (cold, _) = timed(
        jbazel("port-forward", &build)?,
        "first jbazel build (spawns the pod)",
    )
    .with_context(|| format!("orchestrator log:\n{}", orchestrator.log()))?;
    let mut local = LocalBazel::new(stack.scratch(), &sample)?;
    let (local_cold, _) = timed(
        local.cmd(&build),
        "first local bazel build (starts its server)",
    )?;
    println!(
        "cold: first jbazel build (spawns the pod) {:.2} s; first local bazel build (starts \
         its server) {:.2} s",
        cold.as_secs_f64(),
        local_cold.as_secs_f64()
    );

    // Where the server is: GetServer, as jbazel asks it (as the user, with the user's
    // certificate).
    let mut oc = OrchestratorClient::new(integration::platform::user_channel(&url, USER)?);
    let server = oc
        .get_server(GetServerRequest {
            user_id: USER.into(),
            repo_hash: desktop.repo_hash.to_string(),
            session_id: SESSION.into(),
        })
        .await?
        .into_inner()
        .server
        .context("GetServer gave no server")?;
    if server.status() != ServerStatus::Ready || server.pod_ip.is_empty() {
        bail!("after a successful build the server should be READY with a pod IP: {server:?}");
    }
    let port = u16::try_from(server.command_port).context("command port")?;
    let pod_addr = format!("{}:{port}", server.pod_ip);
    with_deadline(
        "the supervisor's relay on the pod IP",
        probe_pod_ip(&pod_addr),
    )
    .await
    .context(
        "the pod-IP hop does not reach Bazel: is the image's supervisor current (with the \
         relay)? image/build.sh --supervisor target/debug/supervisor",
    )?;
    // The user's pods live in the user's own namespace.
    let pods: kube::Api<Pod> = namespace.user_pods(USER);
    let pod_uid = |p: Pod| p.metadata.uid.unwrap_or_default();
    let uid_before = pod_uid(pods.get(&server.pod_name).await?);
    let remote_pid = || fs::read_to_string(desktop.out_dir().join("server/server.pid.txt")).ok();

    // One command of a kind, checked; the pod-IP hop must not have fallen back.
    let run = |kind: Client, what: &str| -> Result<Duration> {
        let (took, out) = match kind {
            Client::PortForward => timed(jbazel("port-forward", &build)?, what)?,
            Client::PodIp => timed(jbazel("pod-ip", &build)?, what)?,
            Client::Local => timed(local.cmd(&build), what)?,
        };
        if kind == Client::PodIp && String::from_utf8_lossy(&out.stderr).contains(FALLBACK_WARNING)
        {
            bail!(
                "{}",
                show(&format!("{what}: took the port-forward"), &out, took)
            );
        }
        Ok(took)
    };

    for _ in 0..args.warmup {
        for kind in Client::ALL {
            run(kind, &format!("{} (warm-up)", kind.label()))?;
        }
    }
    let (remote_pid_before, local_pid_before) = (remote_pid(), local.server_pid());

    // The rounds: each client once, the order rotated, so none always follows another.
    let mut times: [Vec<Duration>; 3] = Default::default();
    let mut paired: [Vec<f64>; 2] = Default::default();
    for round in 0..args.iterations {
        let mut this = [Duration::ZERO; 3];
        for k in 0..3 {
            let kind = Client::ALL[(round + k) % 3];
            this[kind.index()] = run(kind, &format!("{} (round {})", kind.label(), round + 1))?;
        }
        for kind in Client::ALL {
            times[kind.index()].push(this[kind.index()]);
        }
        let local_s = this[Client::Local.index()].as_secs_f64();
        paired[0].push(this[Client::PortForward.index()].as_secs_f64() / local_s);
        paired[1].push(this[Client::PodIp.index()].as_secs_f64() / local_s);
    }

    // Blocks of one kind, for CPU per command (tear-down stays inside its own block).
    let meter = CpuMeter::new(&kubeconfig, orchestrator.pgid());
    let mut cpu = Vec::new();
    for kind in Client::ALL {
        let before = meter.read();
        let started = Instant::now();
        for i in 0..args.iterations {
            run(kind, &format!("{} (CPU block, {})", kind.label(), i + 1))?;
        }
        let wall = started.elapsed() / args.iterations as u32;
        let per: Vec<f64> = meter
            .read()
            .iter()
            .zip(&before)
            .map(|(a, b)| (a - b) / args.iterations as f64)
            .collect();
        cpu.push((kind.label().to_string(), wall, per));
    }

    // The hop alone, with nothing of jbazel around it.
    let (mut pf_upgrade, mut pf_open) = (Vec::new(), Vec::new());
    let before = meter.read();
    for _ in 0..args.iterations {
        let (upgraded, took) = with_deadline(
            "port-forward probe",
            probe_port_forward(&pods, &server.pod_name, port),
        )
        .await?;
        pf_upgrade.push(upgraded);
        pf_open.push(took);
    }
    let pf_cpu: Vec<f64> = meter
        .read()
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) / args.iterations as f64)
        .collect();
    let mut ip_open = Vec::new();
    let before = meter.read();
    for _ in 0..args.iterations {
        ip_open.push(with_deadline("pod IP probe", probe_pod_ip(&pod_addr)).await?);
    }
    let ip_cpu: Vec<f64> = meter
        .read()
        .iter()
        .zip(&before)
        .map(|(a, b)| (a - b) / args.iterations as f64)
        .collect();

    // Authentication alone: what a command pays to prove who it is, against what it pays
    // anyway. Each round: the credential loaded as jbazel loads it (kubeconfig, PEM); a TCP
    // connect to the orchestrator; GetServer on a fresh channel (TCP, TLS with the client
    // certificate, HTTP/2, the call); GetServer on a kept channel (the call alone, with
    // the server's per-request identity check). Fresh minus kept minus TCP is the mTLS
    // handshake (an upper bound: HTTP/2's set-up is in it too).
    let orch_addr = url.trim_start_matches("https://").to_string();
    let user_kubeconfig = integration::credentials::user_credential(USER)?.kubeconfig;
    let request = GetServerRequest {
        user_id: USER.into(),
        repo_hash: desktop.repo_hash.to_string(),
        session_id: SESSION.into(),
    };
    let mut kept = OrchestratorClient::new(integration::platform::user_channel(&url, USER)?);
    kept.get_server(request.clone()).await?;
    let mut auth: [Vec<Duration>; 4] = Default::default();
    for _ in 0..args.iterations {
        let started = Instant::now();
        let kc = kube::config::Kubeconfig::read_from(&user_kubeconfig)?;
        let cred = jbazel::credential::from_kubeconfig(&kc)?;
        auth[0].push(started.elapsed());
        let (Some((cert, key)), Some(ca)) = (cred.identity, cred.ca_pem) else {
            bail!(
                "{} has no client certificate or cluster CA",
                user_kubeconfig.display()
            );
        };

        let started = Instant::now();
        let tcp = with_deadline("TCP to the orchestrator", async {
            Ok(tokio::net::TcpStream::connect(&orch_addr).await?)
        })
        .await?;
        auth[1].push(started.elapsed());
        drop(tcp);

        let started = Instant::now();
        let tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(ca))
            .identity(tonic::transport::Identity::from_pem(cert, key));
        let mut fresh =
            OrchestratorClient::new(integration::platform::channel_with(&url, USER, Some(tls))?);
        with_deadline("GetServer on a fresh channel", async {
            Ok(fresh.get_server(request.clone()).await?)
        })
        .await?;
        auth[2].push(started.elapsed());
        drop(fresh);

        let started = Instant::now();
        with_deadline("GetServer on a kept channel", async {
            Ok(kept.get_server(request.clone()).await?)
        })
        .await?;
        auth[3].push(started.elapsed());
    }

    // Nothing restarted under the bench.
    let uid_after = pod_uid(pods.get(&server.pod_name).await?);
    if uid_after != uid_before || remote_pid() != remote_pid_before {
        bail!("the pod or its Bazel server restarted during the bench");
    }
    if local.server_pid() != local_pid_before {
        bail!("the local Bazel server restarted during the bench");
    }
    local.shutdown()?;

    println!(
        "warm no-op `build {}`, {} rounds (each: jbazel port-forward, jbazel pod-ip, local \
         bazel; order rotated), after {} warm-up builds each",
        args.target, args.iterations, args.warmup
    );
    println!("  {:<22}{:>10}{:>10}{:>10}", "", "median", "p10", "p90");
    for kind in Client::ALL {
        let v = &times[kind.index()];
        println!(
            "  {:<22}{:>7.1} ms{:>7.1} ms{:>7.1} ms",
            kind.label(),
            ms(median(v)),
            ms(pct(v, 0.1)),
            ms(pct(v, 0.9))
        );
    }
    let local_median = median(&times[Client::Local.index()]).as_secs_f64();
    for (i, kind) in [Client::PortForward, Client::PodIp].into_iter().enumerate() {
        let ratio = median(&times[kind.index()]).as_secs_f64() / local_median;
        println!(
            "  ratio {} / local: {ratio:.3}x of the medians, {:.3}x median of the per-round \
             ratios (target <= {TARGET_RATIO}x: {})",
            kind.label(),
            median_f(&paired[i]),
            if ratio <= TARGET_RATIO {
                "met"
            } else {
                "missed"
            }
        );
    }
    println!(
        "hop set-up alone, {} each, up to Bazel's HTTP/2 SETTINGS:",
        args.iterations
    );
    println!(
        "  port-forward through the API server: median {:.1} ms, p10 {:.1} ms, p90 {:.1} ms \
         (of which the upgrade: median {:.1} ms, p10 {:.1} ms, p90 {:.1} ms)",
        ms(median(&pf_open)),
        ms(pct(&pf_open, 0.1)),
        ms(pct(&pf_open, 0.9)),
        ms(median(&pf_upgrade)),
        ms(pct(&pf_upgrade, 0.1)),
        ms(pct(&pf_upgrade, 0.9))
    );
    println!(
        "  TCP to the pod IP (supervisor relay): median {:.2} ms, p10 {:.2} ms, p90 {:.2} ms",
        ms(median(&ip_open)),
        ms(pct(&ip_open, 0.1)),
        ms(pct(&ip_open, 0.9))
    );
    let handshake = median(&auth[2])
        .saturating_sub(median(&auth[3]))
        .saturating_sub(median(&auth[1]));
    let per_command = median(&auth[0]) + handshake;
    println!(
        "authentication alone, {} each (in this process, aws-lc; jbazel uses ring):",
        args.iterations
    );
    for (label, v) in [
        "credential load (kubeconfig, PEM)",
        "TCP connect to the orchestrator",
        "GetServer, fresh mTLS channel",
        "GetServer, kept channel",
    ]
    .iter()
    .zip(&auth)
    {
        println!(
            "  {label:<36} median {:>6.2} ms, p10 {:>6.2} ms, p90 {:>6.2} ms",
            ms(median(v)),
            ms(pct(v, 0.1)),
            ms(pct(v, 0.9))
        );
    }
    println!(
        "  per command: credential {:.2} ms + mTLS handshake {:.2} ms (fresh - kept - TCP) = \
         {:.2} ms, {:.1}% of local bazel's warm no-op median",
        ms(median(&auth[0])),
        ms(handshake),
        ms(per_command),
        100.0 * per_command.as_secs_f64() / local_median
    );
    println!(
        "CPU ms per command ({} in a row of each; /proc utime+stime; the local-bazel row is \
         the background):",
        args.iterations
    );
    println!("  {:<30}{:>9}{}", "", "wall", meter.header());
    let row = |label: &str, wall: Option<Duration>, per: &[f64]| {
        let wall = wall.map_or(String::from("-"), |w| format!("{:.0} ms", ms(w)));
        let cells: String = per.iter().map(|v| format!("{v:>15.2}")).collect();
        println!("  {label:<30}{wall:>9}{cells}");
    };
    for (label, wall, per) in &cpu {
        row(&format!("{label} build"), Some(*wall), per);
    }
    row("port-forward open (probe)", Some(median(&pf_open)), &pf_cpu);
    row("pod IP connect (probe)", Some(median(&ip_open)), &ip_cpu);

    drop(desktop);
    if let (_, Err(e)) = stack.cleanup().await {
        eprintln!("warm_noop: namespace cleanup: {}", ErrorChain(&e));
    }
    Ok(())
}
