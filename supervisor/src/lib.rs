//! The pod's PID 1: pivots the mount namespace so the user's source (read-only) and output
//! dirs appear at `/work/src` and `/work/out`, starts the Bazel server there and keeps it
//! healthy, serves readiness, reaps zombies, and shuts Bazel down cleanly.
//!
//! Reading order: [`cli`] -> [`config`] (validation, reads only) -> [`plan`] (the host's
//! facts, read once; the plan and its `--dry-run` rendering, pure) -> [`owner`] (who Bazel
//! runs as) -> [`pivot`] (syscalls, single-threaded) -> [`run`] (`supervisor run`: a
//! synchronous init loop) or [`jobs`] (the Bazel job, in a current-thread tokio runtime:
//! [`lock`], [`bazel`], [`server_end`], [`cgroup`], [`health`], [`report`], [`publish`],
//! [`reaper`], [`signals`]).

pub mod bazel;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod health;
pub mod jobs;
pub mod lock;
pub mod owner;
pub mod pivot;
pub mod plan;
pub mod publish;
pub mod reaper;
pub mod relay;
pub mod report;
pub mod run;
pub mod seccomp;
pub mod server_end;
pub mod signals;
