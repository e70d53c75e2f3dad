//! Test fixtures and the end-to-end harness of the jbazel platform.
//!
//! - [`spanner`]: a real Cloud Spanner emulator per test, with the project's schema.
//! - [`kubernetes`]: the local Kubernetes cluster (`integration/kubernetes/local.sh up`), a
//!   namespace per test, pod waits with deadlines.
//! - [`platform`]: the platform's own programs run for real: an orchestrator process and a
//!   desktop checkout that is a bind mount of the filestore.
//! - [`process`]: a server process in its own process group, killed with it on drop.
//!
//! Architecture invariant: fixtures start real components (emulator, Bazel, cluster) and
//! fail loudly when they cannot; nothing here fakes a component.

/// `Debug` for a fixture's error is its chain, as `Display` and the sources say it: a test's
/// `.expect(..)` prints `{:?}`, and must show what to start or install (`start it with
/// integration/kubernetes/local.sh up`), not the variant's fields.
macro_rules! debug_is_the_chain {
    ($error:ty) => {
        impl std::fmt::Debug for $error {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&proto::error_chain::ErrorChain(self), f)
            }
        }
    };
}

pub mod credentials;
pub mod kubernetes;
pub mod platform;
pub mod process;
pub mod spanner;
pub mod stack;
