//! PID-1 duty two: signals. As PID 1 a process gets no default signal actions, so without
//! handlers SIGTERM would be ignored until Kubernetes sends SIGKILL.
//!
//! - `run`: SIGTERM, SIGINT, SIGHUP and SIGQUIT are forwarded to the command; the supervisor
//!   exits with the command's status (128+signal when it was killed).
//! - the Bazel job: SIGTERM/SIGINT start the clean shutdown ([`Shutdown`]).

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::{oneshot, watch};

use crate::reaper::ExitInfo;

/// The signals `run` forwards.
const FORWARDED: [(SignalKind, Signal); 4] = [
    (SignalKind::terminate(), Signal::SIGTERM),
    (SignalKind::interrupt(), Signal::SIGINT),
    (SignalKind::hangup(), Signal::SIGHUP),
    (SignalKind::quit(), Signal::SIGQUIT),
];

/// Installs the handlers for the signals `run` forwards. Do it before spawning the command,
/// so a signal that arrives early is queued, not lost.
pub struct Forwarder {
    streams: Vec<(tokio::signal::unix::Signal, Signal)>,
}

impl Forwarder {
    pub fn install() -> std::io::Result<Forwarder> {
        let streams = FORWARDED
            .iter()
            .map(|(kind, sig)| signal(*kind).map(|s| (s, *sig)))
            .collect::<Result<_, _>>()?;
        Ok(Forwarder { streams })
    }

    /// Forwards signals to `target` until the command exits; returns how it exited.
    pub async fn forward_until_exit(
        mut self,
        target: i32,
        mut exited: oneshot::Receiver<ExitInfo>,
    ) -> Option<ExitInfo> {
        loop {
            let next = futures_select(&mut self.streams);
            tokio::select! {
                r = &mut exited => return r.ok(),
                sig = next => {
                    tracing::info!(pid = target, signal = %sig, "forwarding signal");
                    if let Err(e) = kill(Pid::from_raw(target), sig) {
                        tracing::warn!(pid = target, signal = %sig, error = %e, "forwarding failed");
                    }
                }
            }
        }
    }
}

/// Resolves with the first signal that arrives on any stream.
async fn futures_select(streams: &mut [(tokio::signal::unix::Signal, Signal)]) -> Signal {
    std::future::poll_fn(|cx| {
        for (stream, sig) in streams.iter_mut() {
            if stream.poll_recv(cx).is_ready() {
                return std::task::Poll::Ready(*sig);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

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
