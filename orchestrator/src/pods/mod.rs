//! Bazel server pods: what they look like, what their status means, and the thin edge
//! that creates and deletes them.
//!
//! - [`manifest`]: `PodSpecFor` (pure): the pod name and manifest for one session.
//! - [`view`]: pure readings of a pod's status (the reconciler's [`crate::session::PodView`],
//!   WatchServer's progress stages and failure reasons).
//! - [`client`]: `PodClient`, the only code that calls the Kubernetes API for pods.
//! - [`tenancy`]: one namespace per user (namespace, pod service account, RoleBinding).
//! - [`kube_pods`]: `KubePods`, the engine's `Pods` port on `PodClient` and watchers.

pub mod client;
pub mod kube_pods;
pub mod manifest;
pub mod tenancy;
pub mod view;

pub use client::{EnsureOutcome, PodClient, PodError};
pub use kube_pods::KubePods;
pub use manifest::{pod_name, PodSettings, PodSpecFor, ProbeMode, PullPolicy};
