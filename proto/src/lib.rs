//! The platform's API surface: generated gRPC code for its two protocols, and the rules
//! for the identifiers that cross them.
//!
//! - [`orchestrator`]: the project's own API (GetServer, WatchServer, ReportReady).
//! - [`command_server`]: Bazel 4.2.3's client/server protocol (Run, Ping, Cancel).
//! - [`names`]: the `UserId`, `RepoHash` and `SessionId` newtypes (built only by parsing),
//!   shared by all three programs.
//! - [`error_chain`]: the one printer of an error and its causes, used by all three.
//! - [`tls`]: the one process-wide rustls crypto provider choice, used by all three.
//!
//! Architecture invariant: no network or file I/O and no program logic here; only the wire types and the
//! pure rules every side of the wire must agree on.

pub mod error_chain;
pub mod names;
pub mod tls;

/// The orchestrator API (`orchestrator.proto`).
pub mod orchestrator {
    tonic::include_proto!("jbazel.orchestrator.v1");
}

/// Bazel's command server API (`command_server.proto`).
pub mod command_server {
    tonic::include_proto!("command_server");
}
