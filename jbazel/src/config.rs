//! jbazel's own settings: `--jbazel-*` options before the Bazel command, each with an
//! environment variable. Everything else on the command line is Bazel's.

use clap::builder::FalseyValueParser;
use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// How to reach the pod's Bazel server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hop {
    /// Through the Kubernetes API server's port-forward (KUBECONFIG), in process.
    PortForward,
    /// Straight to the pod IP, falling back to port-forward when it does not connect.
    PodIp,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "jbazel",
    version,
    about = "A drop-in `bazel` that runs each command on your own Bazel server in the cluster",
    override_usage = "jbazel [--jbazel-OPTION...] [BAZEL STARTUP OPTION...] <command> [args...]",
    long_about = "A drop-in `bazel` that runs each command on your own Bazel server in the cluster.\n\n\
        Use it exactly like bazel (`jbazel build //...`, `jbazel run //app`, Ctrl-C, exit codes). \
        jbazel finds the workspace root, hashes its path (RepoHash), asks the orchestrator for \
        your server (spawning a pod if needed), and speaks Bazel's client/server protocol to it. \
        The output base lives on shared storage: `jbazel run` runs the binary here.\n\n\
        The options below go before the Bazel command; each also has an environment variable. \
        Bazel startup options that configure the server process (--output_base, \
        --host_jvm_args, --max_idle_secs, --batch, ...) are ignored with a warning: the pod owns \
        them. `jbazel help` shows Bazel's own help from your server.",
    after_help = "Examples:\n  jbazel build //...\n  JBAZEL_DRY_RUN=1 jbazel test //pkg:all\n  \
        JBAZEL_SERVER=127.0.0.1:9001 jbazel info\n  jbazel --jbazel-no-translate-paths build //x"
)]
pub struct Settings {
    /// Orchestrator gRPC address (https: TLS, presenting your kubeconfig's credential).
    #[arg(
        long = "jbazel-orchestrator",
        env = "JBAZEL_ORCHESTRATOR",
        value_name = "URL",
        default_value = "https://127.0.0.1:50051"
    )]
    pub orchestrator: String,

    /// CA bundle (PEM) that verifies the orchestrator (default: your kubeconfig cluster's CA).
    #[arg(
        long = "jbazel-orchestrator-ca",
        env = "JBAZEL_ORCHESTRATOR_CA",
        value_name = "FILE"
    )]
    pub orchestrator_ca: Option<PathBuf>,

    /// Where the desktop sees the filestore root R (the repository's output base is R/USER/HASH/out).
    #[arg(
        long = "jbazel-filestore-root",
        env = "JBAZEL_FILESTORE_ROOT",
        value_name = "DIR",
        default_value = proto::pod::DEFAULT_FILESTORE_ROOT
    )]
    pub filestore_root: PathBuf,

    /// UserId (default: your login name; must be a lower-case DNS label).
    #[arg(long = "jbazel-user", env = "JBAZEL_USER", value_name = "USER")]
    pub user: Option<String>,

    /// SessionId (default: derived from this boot and desktop login session).
    #[arg(
        long = "jbazel-session-id",
        env = "JBAZEL_SESSION_ID",
        value_name = "ID"
    )]
    pub session_id: Option<String>,

    /// Talk to the Bazel server at this address (host:port), skipping the orchestrator and the hop.
    #[arg(
        long = "jbazel-server",
        env = "JBAZEL_SERVER",
        value_name = "HOST:PORT"
    )]
    pub server: Option<String>,

    /// How to reach the pod's command port.
    #[arg(long = "jbazel-hop", env = "JBAZEL_HOP", value_enum, default_value_t = Hop::PortForward)]
    pub hop: Hop,

    /// Give up waiting for the server after this many seconds.
    #[arg(
        long = "jbazel-deadline-secs",
        env = "JBAZEL_DEADLINE_SECS",
        value_name = "SECS",
        default_value_t = 300
    )]
    pub deadline_secs: u64,

    /// Print the workspace root, RepoHash, UserId, SessionId, the server and the exact
    /// RunRequest args, and contact nothing.
    #[arg(long = "jbazel-dry-run", env = "JBAZEL_DRY_RUN", value_parser = FalseyValueParser::new(),
          default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub dry_run: bool,

    /// Do not show /work/src and /work/out as desktop paths in output on a terminal.
    #[arg(long = "jbazel-no-translate-paths", env = "JBAZEL_NO_TRANSLATE_PATHS",
          value_parser = FalseyValueParser::new(), default_value_t = false, num_args = 0,
          default_missing_value = "true")]
    pub no_translate_paths: bool,

    /// Run the local Bazel in $BAZEL_REAL instead (bazelisk's tools/bazel convention).
    #[arg(long = "jbazel-local", env = "JBAZEL_LOCAL", value_parser = FalseyValueParser::new(),
          default_value_t = false, num_args = 0, default_missing_value = "true")]
    pub local: bool,
}

impl Settings {
    /// Parses jbazel's own options (and their environment variables).
    pub fn parse_from_options(options: &[String]) -> Result<Self, clap::Error> {
        let mut s = Settings::try_parse_from(
            std::iter::once("jbazel".to_string()).chain(options.iter().cloned()),
        )?;
        // An empty variable means "not set".
        s.user = s.user.filter(|v| !v.is_empty());
        s.session_id = s.session_id.filter(|v| !v.is_empty());
        s.server = s.server.filter(|v| !v.is_empty());
        Ok(s)
    }

    /// The long help text.
    pub fn help() -> String {
        use clap::CommandFactory;
        Settings::command().render_long_help().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let s = Settings::parse_from_options(&[
            "--jbazel-server=127.0.0.1:9".into(),
            "--jbazel-dry-run".into(),
            "--jbazel-hop=pod-ip".into(),
        ])
        .expect("parse");
        assert_eq!(s.server.as_deref(), Some("127.0.0.1:9"));
        assert!(s.dry_run);
        assert!(!s.local);
        assert_eq!(s.hop, Hop::PodIp);
        assert!(Settings::parse_from_options(&["--jbazel-bogus".into()]).is_err());
        assert!(Settings::help().contains("JBAZEL_FILESTORE_ROOT"));
    }
}
