//! [`TestPlatform`]: the whole platform one end-to-end test or bench runs against, started
//! the same way everywhere: a fresh namespace on the local cluster, a Spanner emulator, a
//! scratch filestore under /tmp (pods mount it as a hostPath), and the orchestrator binary
//! serving on a free port. Fields drop in order: orchestrator, emulator, namespace, scratch.

use std::path::{Path, PathBuf};

use crate::kubernetes::{Cluster, ClusterError, TestNamespace, IMAGE};
use crate::platform::{Desktop, Orchestrator, OrchestratorOptions, PlatformError};
use crate::spanner::{EmulatorError, SpannerEmulator};

/// Why the platform could not start; each names the part.
#[derive(thiserror::Error)]
pub enum StackError {
    #[error("the local cluster must be up (integration/kubernetes/local.sh up)")]
    Cluster(#[from] ClusterError),
    #[error("the Spanner emulator must start")]
    Emulator(#[from] EmulatorError),
    #[error("cannot create the scratch filestore under /tmp")]
    Scratch(#[source] std::io::Error),
    #[error("no free port for the orchestrator")]
    Port(#[source] std::io::Error),
    #[error("the orchestrator must start")]
    Orchestrator(#[from] PlatformError),
}
debug_is_the_chain!(StackError);

/// A running platform for one test. Keep it alive as long as its desktops.
pub struct TestPlatform {
    pub orchestrator: Orchestrator,
    pub emulator: SpannerEmulator,
    pub namespace: TestNamespace,
    pub cluster: Cluster,
    /// The filestore root R (`<scratch>/filestore`).
    pub filestore: PathBuf,
    /// How `orchestrator` was started: a test starts replicas or a restart from it.
    pub options: OrchestratorOptions,
    scratch: tempfile::TempDir,
}

/// What a test changes about the platform.
#[derive(Debug, Clone)]
pub struct PlatformOptions {
    /// The pods' image.
    pub image: String,
    /// More orchestrator flags.
    pub orchestrator_args: Vec<String>,
}

impl Default for PlatformOptions {
    fn default() -> Self {
        PlatformOptions {
            image: IMAGE.into(),
            orchestrator_args: Vec::new(),
        }
    }
}

impl TestPlatform {
    /// Starts everything; `name` prefixes the namespace and the scratch dir.
    pub async fn start(name: &str) -> Result<Self, StackError> {
        Self::start_with(name, PlatformOptions::default()).await
    }

    /// Starts everything, with `options`.
    pub async fn start_with(name: &str, options: PlatformOptions) -> Result<Self, StackError> {
        let cluster = Cluster::connect().await?;
        let namespace = cluster.test_namespace(name).await?;
        let emulator = SpannerEmulator::start().await?;
        let scratch = tempfile::Builder::new()
            .prefix(&format!("jbazel-{name}-"))
            .tempdir_in("/tmp")
            .map_err(StackError::Scratch)?;
        let filestore = scratch.path().join("filestore");
        std::fs::create_dir_all(&filestore).map_err(StackError::Scratch)?;
        let options = OrchestratorOptions {
            spanner_host: emulator.host(),
            project: emulator.project().into(),
            instance: emulator.instance().into(),
            database: emulator.database().into(),
            namespace: namespace.name().into(),
            filestore_root: filestore.clone(),
            image: options.image,
            port: testkit::free_port().map_err(StackError::Port)?,
            log_path: scratch.path().join("orchestrator.log"),
            kubeconfig: crate::credentials::orchestrator_kubeconfig()
                .map_err(crate::platform::PlatformError::from)?,
            detached: false,
            extra_args: options.orchestrator_args,
        };
        let orchestrator = Orchestrator::start(&options)?;
        Ok(TestPlatform {
            orchestrator,
            emulator,
            namespace,
            cluster,
            filestore,
            options,
            scratch,
        })
    }

    /// SIGKILLs the orchestrator (a crash) and starts it again on the same port, logging
    /// to `<scratch>/<log>`.
    pub fn crash_and_restart_orchestrator(&mut self, log: &str) -> Result<(), PlatformError> {
        self.orchestrator.kill();
        self.orchestrator = self.orchestrator_on(self.options.port, log)?;
        Ok(())
    }

    /// Another orchestrator process on the same emulator, cluster and namespace (a
    /// replica, or the same one restarted), on `port`, logging to `<scratch>/<log>`.
    pub fn orchestrator_on(&self, port: u16, log: &str) -> Result<Orchestrator, PlatformError> {
        Orchestrator::start(&OrchestratorOptions {
            port,
            log_path: self.scratch.path().join(log),
            ..self.options.clone()
        })
    }

    /// Stops the orchestrator and deletes the namespace, waiting for it (drop does not
    /// wait). The scratch dir (the filestore) is handed back: a test can check what
    /// outlives the cluster's objects, and it is removed when the caller drops it.
    pub async fn cleanup(self) -> (tempfile::TempDir, Result<(), ClusterError>) {
        drop(self.orchestrator);
        let done = self.namespace.cleanup().await;
        (self.scratch, done)
    }

    /// The scratch directory (everything the test may write goes below it).
    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    pub fn kubeconfig(&self) -> &Path {
        self.cluster.kubeconfig()
    }

    /// A desktop checkout of `workspace` for `user` at `<scratch>/<rel_path>`.
    pub fn desktop(
        &self,
        user: &str,
        rel_path: &str,
        workspace: &Path,
    ) -> Result<Desktop, PlatformError> {
        Desktop::create(
            &self.filestore,
            user,
            &self.scratch.path().join(rel_path),
            workspace,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_start_says_what_to_start_when_a_test_expects_it() {
        let e = StackError::Cluster(ClusterError::Unreachable {
            path: "/var/lib/jbazel-cluster/admin.kubeconfig".into(),
            reason: "connection refused".into(),
        });
        // `.expect(..)` shows Debug: the chain, with the command to run.
        let shown = format!("{e:?}");
        assert!(
            shown.contains("connection refused")
                && shown.contains("integration/kubernetes/local.sh up"),
            "{shown}"
        );
    }
}
