//! jbazel: a drop-in `bazel` that runs each command on the user's own Bazel server in a pod.
//!
//! Read top-down: `main.rs` gathers the [`invocation`] (argv, cwd, environment, terminals)
//! and calls [`command::run`], which settles the workspace, the caller and the paths
//! ([`command::Plan`]) and runs the command on the server ([`remote`]); every failure is an
//! [`error::Error`] whose [`error::Error::exit_code`] is one of Bazel's ([`exit_code`]).
//! - pure decisions (table-tested): [`workspace`] (root, RepoHash), [`identity`] (UserId,
//!   SessionId), [`rc`] (rc files as Bazel's client reads them), [`args`] (command line split,
//!   startup options, RunRequest args, client env), [`request`] (the RunRequest from all of
//!   those), [`paths`] (desktop <-> pod paths), [`file_flags`] (options naming files: pod
//!   paths, or staged and delivered), [`symlink_prefix`] (`--symlink_prefix` moved into the
//!   pod's links directory), [`exec_policy`] (which exec request is honoured: only `run`'s
//!   binary, from the workspace or the mirror);
//! - edges (I/O): [`untrusted_fs`] (the one way to read and create in trees the pod writes),
//!   [`links`] (Bazel's convenience symlinks, mirrored from the pod's links directory),
//!   [`mirror`] (cookies and published files in the output base's mirror),
//!   [`orchestrator_client`] (GetServer/WatchServer), [`endpoint_cache`] (the last pod-IP
//!   endpoint, dialled while GetServer confirms it), [`hop`] (the route to the server: port-forward,
//!   pod IP, or the fixed `JBAZEL_SERVER` address), [`client`] (Run, Cancel, exec), [`runfiles`] (`jbazel run`'s desktop
//!   runfiles view), [`terminal`], [`progress`];
//! - [`config`]: jbazel's own `--jbazel-*` options and `JBAZEL_*` variables.
//!
//! Architecture invariant: the Bazel server is never started, stopped or configured from
//! here; jbazel only speaks the client protocol to a server the pod runs.

pub mod args;
pub mod client;
pub mod command;
pub mod config;
pub mod credential;
pub mod endpoint_cache;
pub mod error;
pub mod exec_policy;
pub mod exit_code;
pub mod expunge;
pub mod file_flags;
pub mod hop;
pub mod identity;
pub mod invocation;
pub mod links;
pub mod mirror;
pub mod orchestrator_client;
pub mod paths;
pub mod progress;
pub mod rc;
pub mod remote;
pub mod request;
pub mod runfiles;
pub mod symlink_prefix;
pub mod terminal;
pub mod untrusted_fs;
pub mod workspace;
