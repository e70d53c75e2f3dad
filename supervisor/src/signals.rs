//! PID-1 duty two, for the Bazel job: SIGTERM/SIGINT start the clean shutdown
//! ([`Shutdown`]). As PID 1 a process gets no default signal actions, so without handlers
//! SIGTERM would be ignored until Kubernetes sends SIGKILL. (`run` forwards signals
//! synchronously: see [`crate::run`].)

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// The Bazel job's stop request: flips once, on the first SIGTERM or SIGINT.
#[derive(Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl Shutdown {
    /// Installs SIGTERM/SIGINT handlers and returns the flag they raise.
    pub fn install() -> std::io::Result<Shutdown> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            let which = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = which, "shutdown requested");
            let _ = tx.send(true);
            // Keep the handlers installed: a second signal must not kill PID 1 mid-shutdown.
            loop {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                }
                tracing::info!("shutdown already under way");
            }
        });
        Ok(Shutdown(rx))
    }

    /// Has shutdown been requested?
    pub fn requested(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once shutdown is requested.
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }
}
