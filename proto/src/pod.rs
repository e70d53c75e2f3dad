//! The contract between the orchestrator, which writes a server pod's manifest, and the
//! supervisor, which runs in it: the environment variable names, the capabilities, the
//! filestore root's default and the termination message of an idle exit.
//!
//! Both sides use these constants; neither spells the strings.

/// Environment variables the orchestrator sets on the server container and the supervisor
/// reads (its `clap` args name them through these constants).
pub mod env {
    /// The user the pod serves (`proto::names::UserId`).
    pub const USER_ID: &str = "USER_ID";
    /// The repository the pod serves (`proto::names::RepoHash`).
    pub const REPO_HASH: &str = "REPO_HASH";
    /// The desktop session that owns the pod (`proto::names::SessionId`).
    pub const SESSION_ID: &str = "SESSION_ID";
    /// The filestore root R inside the pod.
    pub const FILESTORE_ROOT: &str = "MOCK_FILESTORE_PATH";
    /// The supervisor's own grace for Bazel's clean shutdown, in seconds.
    pub const GRACE_PERIOD_SECS: &str = "GRACE_PERIOD_SECS";
    /// Where the supervisor sends ReportReady.
    pub const ORCHESTRATOR_ADDR: &str = "ORCHESTRATOR_ADDR";
    /// The PEM CA bundle that verifies an `https://` orchestrator.
    pub const ORCHESTRATOR_CA_PEM: &str = "ORCHESTRATOR_CA_PEM";
    /// The pod's bound service-account token file (audience: the orchestrator).
    pub const TOKEN_FILE: &str = "JBAZEL_TOKEN_FILE";
    /// Bazel's `--max_idle_secs` for this pod.
    pub const IDLE_TIMEOUT_SECS: &str = "IDLE_TIMEOUT_SECS";
    /// The pod's name (downward API).
    pub const POD_NAME: &str = "POD_NAME";
    /// The pod's namespace (downward API).
    pub const POD_NAMESPACE: &str = "POD_NAMESPACE";
    /// The pod's IP (downward API).
    pub const POD_IP: &str = "POD_IP";
}

/// The port of the supervisor's health endpoint (`0.0.0.0:HEALTH_PORT`), which the pod's
/// probes ask.
pub const HEALTH_PORT: u16 = 8080;
/// 200 once the Bazel server has answered (readiness).
pub const READYZ_PATH: &str = "/readyz";
/// 200 while the supervisor lives (liveness).
pub const HEALTHZ_PATH: &str = "/healthz";
/// Where the supervisor leaves its termination message (the container's
/// `terminationMessagePath`).
pub const TERMINATION_LOG: &str = "/dev/termination-log";
/// The Bazel server's command port in the pod, unless the supervisor reports another.
pub const COMMAND_PORT: u16 = 9001;

/// The filestore root R when nothing says otherwise (the harness's mock filestore).
pub const DEFAULT_FILESTORE_ROOT: &str = "/tmp/mock-filestore";

/// The capabilities the supervisor (PID 1) needs for the pivot and the switch to the
/// tree's owner, and why (measured one at a time by removing each). The orchestrator adds
/// exactly these to the container (after dropping ALL); the supervisor drops every one of
/// them before Bazel is exec'd and explains them in `supervisor --dry-run`.
pub const CAPABILITIES: &[(&str, &str)] = &[
    (
        "SYS_ADMIN",
        "unshare(CLONE_NEWNS) and mount(2) for the direct pivot (binds, tmpfs over R); bwrap's \
         mounts in bwrap mode. Without it no server starts",
    ),
    (
        "SETUID",
        "setresuid to the tree's owner for Bazel (direct: pre_exec; bwrap: the drop-privileges \
         helper), and setfsuid so the supervisor writes out/ as the owner",
    ),
    (
        "SETGID",
        "setgroups/setresgid to the owner's gid for Bazel, setfsgid for the supervisor's own \
         writes in out/, and dropping PID 1's supplementary groups",
    ),
    (
        "SETPCAP",
        "emptying the bounding set of Bazel's process (PR_CAPBSET_DROP); without it Bazel's \
         CapBnd stays full",
    ),
    (
        "KILL",
        "signals to processes of the owner's uid: forwarding SIGTERM, SIGTERM/SIGKILL to a hung \
         or leftover server, client or action (root may not signal another uid without it)",
    ),
    (
        "DAC_READ_SEARCH",
        "only for user trees closed to others (R/<user> or R/<user>/<hash> mode 0700): \
         validation and the pivot resolve src/out as root before any switch (measured: \
         'cannot inspect .../src: Permission denied' without it)",
    ),
];

/// The capability names of [`CAPABILITIES`], in order.
pub fn capability_names() -> impl Iterator<Item = &'static str> {
    CAPABILITIES.iter().map(|(name, _)| *name)
}

/// How the termination message of an idle exit starts: the supervisor writes
/// [`idle_message`], the orchestrator reads a Succeeded pod with it as "idled out".
pub const IDLE_MESSAGE_PREFIX: &str = "idle:";

/// The termination message of the idle exit.
pub fn idle_message(idle_timeout_secs: u32) -> String {
    format!("{IDLE_MESSAGE_PREFIX} no command for {idle_timeout_secs} s")
}

/// Whether a termination message is the idle exit's.
pub fn is_idle_message(message: &str) -> bool {
    message.trim_start().starts_with(IDLE_MESSAGE_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_message_is_recognised() {
        assert!(is_idle_message(&idle_message(10800)));
        assert!(is_idle_message("  idle: whatever"));
        assert!(!is_idle_message("OOMKilled"));
        assert!(!is_idle_message(""));
    }

    #[test]
    fn capabilities_are_named_once_and_explained() {
        let names: Vec<_> = capability_names().collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(names.len(), unique.len(), "{names:?}");
        assert!(CAPABILITIES.iter().all(|(_, why)| why.len() > 20));
        assert!(!names.contains(&"ALL"));
    }
}
