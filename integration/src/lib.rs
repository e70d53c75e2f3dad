//! Test fixtures and the end-to-end harness of the jbazel platform.
//!
//! - [`spanner`]: a real Cloud Spanner emulator per test, with the project's schema.
//!
//! Architecture invariant: fixtures start real components (emulator, Bazel, cluster) and
//! fail loudly when they cannot; nothing here fakes a component.

pub mod spanner;
