//! The jbazel orchestrator: one BuildSessions row per (user, repository) in Spanner, one
//! Bazel server pod per row in Kubernetes, and the gRPC API (`proto::orchestrator`) that
//! jbazel (GetServer, WatchServer) and the supervisors (ReportReady) call.
//!
//! Code map, pure first:
//! - [`session`]: `SessionTransition`, every decision about a row and its pod (pure).
//! - [`pods::manifest`], [`pods::view`]: `PodSpecFor` and readings of pod status (pure).
//! - [`store`]: the only Spanner code (read-write transactions, ABORTED retries).
//! - [`pods::client`]: the only code that creates or deletes pods.
//! - [`engine`]: the GetServer, WatchServer and ReportReady decisions and their order,
//!   and the reconciler that repairs drift on every pod change and in a periodic sweep,
//!   over two ports (`SessionStore`, `Pods`) with in-memory fakes for their tests.
//! - [`pods::kube_pods`]: the `Pods` port on kube-rs (a reflector cache of the platform's
//!   pods, fed by one cluster-wide watch); [`store`] implements `SessionStore`.
//! - [`service`]: the tonic edge (validation, deadlines, status mapping); [`app`] wires
//!   everything; [`config`] is the CLI.
//!
//! Architecture invariants: names are validated (`proto::names`) before any other use;
//! READY is only written by a transaction that checks the SessionId (fencing); the cluster
//! is changed only after the row committed; nothing here polls.

pub mod app;
pub mod auth;
pub mod config;
pub mod engine;
pub mod notify;
pub mod pods;
pub mod probe;
pub mod schema;
pub mod service;
pub mod session;
pub mod store;
