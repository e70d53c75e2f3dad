//! The command line: flags, their environment variables, and the subcommands.
//!
//! Every flag is global, so `supervisor --mode direct run -- true` and
//! `supervisor run --mode direct -- true` mean the same. Nothing here validates names or
//! paths: [`crate::config`] does that, before anything touches the filesystem.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};
use proto::pod::env;

/// Default Bazel command port inside the pod (bound on 127.0.0.1).
pub const DEFAULT_COMMAND_PORT: u16 = proto::pod::COMMAND_PORT;
/// Default health endpoint (`/readyz`, `/healthz`), on `proto::pod::HEALTH_PORT` (the
/// orchestrator's probes ask that port; a unit test keeps the two equal).
pub const DEFAULT_HEALTH_ADDR: &str = "0.0.0.0:8080";
/// Default system rc of the image.
pub const DEFAULT_SYSTEM_BAZELRC: &str = "/etc/jbazel/system.bazelrc";
/// Default parent of Bazel's home for a non-root owner.
pub const DEFAULT_BAZEL_HOME_PARENT: &str = "/tmp";
/// Kubernetes' default `terminationMessagePath`.
pub const DEFAULT_TERMINATION_LOG: &str = proto::pod::TERMINATION_LOG;

/// PID 1 of a jbazel Bazel-server pod.
///
/// Pivots the mount namespace so the user's source and output dirs from the filestore appear
/// at /work/src and /work/out, takes the output-base lock, starts the Bazel server there
/// (Ping with the request cookie), health-checks it, serves /readyz and /healthz, reports
/// readiness to the orchestrator, restarts a crashed server, ends the pod when the server
/// idles out, reaps zombies and shuts Bazel down cleanly on SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "supervisor", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub opts: Opts,
}

/// What to run after the pivot. Without a subcommand: the Bazel server (the pod's job).
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Pivot, then run CMD instead of Bazel (debugging, tests), with all PID-1 duties:
    /// reaping, signal forwarding, exit-code passthrough (128+signal when killed).
    Run {
        /// The command and its arguments, after `--`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Exit 0 only when the health endpoint's /readyz says ready (for exec probes).
    Probe,
    /// Internal (bwrap mode): inside bwrap's view, become uid/gid (supplementary groups
    /// just the gid), drop every capability (bounding set too), set no_new_privs, exec CMD.
    #[command(hide = true)]
    DropPrivileges {
        #[arg(long)]
        uid: u32,
        #[arg(long)]
        gid: u32,
        /// Switch ids (else only drop capabilities).
        #[arg(long)]
        switch: bool,
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
}

/// How to enter the pivoted view of the filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeRequest {
    /// Direct if CAP_SYS_ADMIN or user namespaces allow it, else bwrap.
    Auto,
    /// unshare(2) + mount(2) in this process.
    Direct,
    /// Run every child under bubblewrap with the same binds.
    Bwrap,
}

/// Output format of `--dry-run`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// A table for a person.
    Human,
    /// One JSON object for programs.
    Json,
}

/// Log format on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Opts {
    /// The user (a DNS label): the filestore subtree R/<user>.
    #[arg(long, env = env::USER_ID, global = true)]
    pub user_id: Option<String>,

    /// The repository: md5 of the desktop workspace path, 32 lower-case hex digits.
    #[arg(long, env = env::REPO_HASH, global = true)]
    pub repo_hash: Option<String>,

    /// The desktop session this pod serves (sent back in ReportReady for fencing).
    #[arg(long, env = env::SESSION_ID, global = true)]
    pub session_id: Option<String>,

    /// Filestore root R; the repository lives at R/<user>/<repo_hash>/{src,out}.
    #[arg(long, env = env::FILESTORE_ROOT, default_value = proto::pod::DEFAULT_FILESTORE_ROOT, global = true)]
    pub filestore_root: PathBuf,

    /// Orchestrator gRPC address for ReportReady (e.g. http://10.244.0.1:50051); unset: no report.
    #[arg(long, env = env::ORCHESTRATOR_ADDR, global = true)]
    pub orchestrator_addr: Option<String>,

    /// This pod's name (downward API), sent in ReportReady.
    #[arg(long, env = env::POD_NAME, global = true)]
    pub pod_name: Option<String>,

    /// This pod's IP (downward API), sent in ReportReady.
    #[arg(long, env = env::POD_IP, global = true)]
    pub pod_ip: Option<String>,

    /// How to pivot: auto picks by capabilities and logs why.
    #[arg(long, env = "SUPERVISOR_MODE", value_enum, default_value_t = ModeRequest::Auto, global = true)]
    pub mode: ModeRequest,

    /// Bazel's gRPC command port, bound on 127.0.0.1 inside the pod.
    #[arg(long, env = "BAZEL_COMMAND_PORT", default_value_t = DEFAULT_COMMAND_PORT, global = true)]
    pub command_port: u16,

    /// Seconds without a command after which the Bazel server exits and the supervisor ends
    /// the pod (exit 0, termination message `idle: no command for N s`). Passed to Bazel as
    /// --max_idle_secs. A positive whole number; default 10800 (3 h, Bazel's own default).
    #[arg(long, env = env::IDLE_TIMEOUT_SECS, global = true)]
    pub idle_timeout_secs: Option<String>,

    /// Where the idle exit's termination message goes (Kubernetes reads it into the
    /// container's status). Written only when the file exists and is writable.
    #[arg(long, env = "TERMINATION_LOG_PATH", default_value = DEFAULT_TERMINATION_LOG, global = true)]
    pub termination_log: PathBuf,

    /// The cgroup filesystem: the memory limit (sizes the Java heap) and the OOM-kill counter.
    #[arg(long, env = "CGROUP_ROOT", default_value = crate::cgroup::DEFAULT_CGROUP_ROOT, global = true)]
    pub cgroup_root: PathBuf,

    /// The Bazel client used to start the server.
    #[arg(long, env = "BAZEL", default_value = "bazel", global = true)]
    pub bazel: PathBuf,

    /// The image's system bazelrc: given to the server start (--bazelrc) and published as
    /// <output base>/jbazel/system.bazelrc for jbazel.
    #[arg(long, env = "SYSTEM_BAZELRC", default_value = DEFAULT_SYSTEM_BAZELRC, global = true)]
    pub system_bazelrc: PathBuf,

    /// Where Bazel's home, `jbazel-home-<uid>` (HOME, TMPDIR, --output_user_root), is made
    /// when Bazel runs as the tree's owner. Must be writable by that uid (like /tmp), visible
    /// in the view, and outside the filestore root.
    #[arg(long, env = "BAZEL_HOME_PARENT", default_value = DEFAULT_BAZEL_HOME_PARENT, global = true)]
    pub bazel_home_parent: PathBuf,

    /// The bubblewrap binary for --mode bwrap (and auto's fallback).
    #[arg(long, env = "BWRAP", default_value = "bwrap", global = true)]
    pub bwrap: PathBuf,

    /// Health endpoint: GET /readyz (200 while the Bazel server answers) and /healthz.
    #[arg(long, env = "HEALTH_ADDR", default_value = DEFAULT_HEALTH_ADDR, global = true)]
    pub health_addr: SocketAddr,

    /// Seconds between health checks of the Bazel server (process, files, a gRPC probe that
    /// does not count as a command, so it does not keep an idle server alive).
    #[arg(long, env = "HEALTH_INTERVAL_SECS", default_value_t = 2, global = true)]
    pub health_interval_secs: u64,

    /// Seconds SIGTERM may take: protocol shutdown, then SIGTERM, then SIGKILL, all within it.
    /// Keep it below the pod's terminationGracePeriodSeconds (the orchestrator's is 10).
    #[arg(long, env = env::GRACE_PERIOD_SECS, default_value_t = 8, global = true)]
    pub grace_period_secs: u64,

    /// Seconds one Bazel server start may take (client run + first Ping) before it counts as failed.
    #[arg(
        long,
        env = "STARTUP_DEADLINE_SECS",
        default_value_t = 120,
        global = true
    )]
    pub startup_deadline_secs: u64,

    /// Print the plan (mounts, command, mode and why, bwrap argv) and exit; touches nothing.
    #[arg(long, global = true)]
    pub dry_run: bool,

    /// Format of --dry-run.
    #[arg(long, value_enum, default_value_t = Format::Human, global = true)]
    pub format: Format,

    /// Log format on stderr (RUST_LOG selects levels).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_health_addr_is_the_port_the_pods_probes_ask() {
        let addr: std::net::SocketAddr = DEFAULT_HEALTH_ADDR.parse().expect("an address");
        assert_eq!(addr.port(), proto::pod::HEALTH_PORT);
        assert!(addr.ip().is_unspecified(), "the kubelet probes the pod IP");
    }
}
