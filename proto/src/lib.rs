//! The platform's API surface: generated gRPC code for its two protocols, and the rules
//! for the identifiers that cross them.
//!
//! - [`orchestrator`]: the project's own API (GetServer, WatchServer, ReportReady).
//! - [`command_server`]: Bazel 4.2.3's client/server protocol (Run, Ping, Cancel).
//! - [`names`]: the `UserId`, `RepoHash` and `SessionId` newtypes (built only by parsing),
//!   shared by all three programs.
//! - [`error_chain`]: the one printer of an error and its causes, used by all three.
//! - [`tls`]: the one process-wide rustls crypto provider choice, used by all three.
//! - [`pod`]: the orchestrator/supervisor contract of a server pod (env names, capabilities,
//!   the filestore root's default, the idle exit's termination message).
//! - [`mirror`]: the output base's layout that the supervisor writes and jbazel reads.
//! - [`backoff`]: the one retry-pause policy (exponential, capped, jittered).
//!
//! Architecture invariant: no network or file I/O and no program logic here; only the wire
//! types, the contracts between the programs, and the pure rules every side of the wire must
//! agree on.

pub mod backoff;
pub mod error_chain;
pub mod mirror;
pub mod names;
pub mod pod;
pub mod tls;

/// The orchestrator API (`orchestrator.proto`).
pub mod orchestrator {
    tonic::include_proto!("jbazel.orchestrator.v1");
}

/// Bazel's command server API (`command_server.proto`).
pub mod command_server {
    tonic::include_proto!("command_server");
}
