//! Being a Bazel client: one `Run` call streamed to the terminal, with Cancel on Ctrl-C or
//! a lost connection, ending in Bazel's exit code or `bazel run`'s exec request.
//!
//! Behaviour (as Bazel's client, `BlazeServer::Communicate`):
//! - stdout/stderr chunks are written as they arrive, each flushed;
//! - every response must carry the response cookie from the mirror;
//! - first Ctrl-C: Cancel(command_id) (sent as soon as the id is known), keep streaming until
//!   the server finishes (exit 8); second Ctrl-C: the client dies by SIGINT at once;
//! - SIGTERM/SIGHUP: Cancel (waited for briefly), then die by that signal (128+signal);
//! - a broken stdout/stderr pipe: Cancel, keep draining, exit with the server's code;
//! - a Run stream broken before the exit code (the server died, e.g. out of memory, or the
//!   connection dropped): Cancel through a new connection when possible, then, as Bazel's
//!   client, print [`abrupt_message`] (or [`no_exit_code_message`] for a stream that ended
//!   without one) and exit with the code the server left in the output base
//!   ([`crate::mirror::Mirror::take_abrupt_exit_code`]: 37 unless Bazel wrote another).

use crate::exit_code::ExitCode;
use crate::expunge::HeldError;
use crate::paths::StreamRewriter;
use proto::command_server::command_server_client::CommandServerClient;
use proto::command_server::{
    CancelRequest, ExecRequest, FailureDetail, PingRequest, RunRequest, RunResponse,
};
use proto::error_chain::ErrorChain;
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tonic::transport::Channel;

/// How long a Cancel may take on the way out.
const CANCEL_TIMEOUT: Duration = Duration::from_secs(3);

/// How the command ended.
#[derive(Debug)]
pub enum Outcome {
    /// Exit with this code; why, when the server said (`RunResponse.failure_detail`).
    Exit(i32, Option<FailureDetail>),
    /// The server asks the client to execute this (Bazel's `run`; pod paths, not yet
    /// rewritten). Whatever the command was: the caller honours it only as
    /// [`crate::exec_policy`] allows.
    Exec(ExecRequest),
    /// Die by this signal (after the Cancel was sent).
    Signal(i32),
}

/// Why the command did not end normally.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server rejected the request cookie.
    #[error(
        "the Bazel server rejected the request cookie read from {cookie_path} (bad cookie): the \
         mirror of the output base does not belong to the server jbazel is connected to, or the \
         server restarted; check the server address and the filestore root"
    )]
    BadCookie { cookie_path: String },
    /// A response did not carry the expected response cookie.
    #[error(
        "the Bazel server's response cookie does not match {cookie_path}: not the server of this \
         output base"
    )]
    BadResponseCookie { cookie_path: String },
    /// The server did not take the command (no answer to the call itself): nothing ran, so
    /// the command may be sent again once the server is up.
    #[error("the Bazel server did not take the command: {}: {}", status.code(), status.message())]
    NotTaken { status: tonic::Status },
    /// The call failed during the command.
    #[error("lost the connection to the Bazel server: {}: {}", status.code(), status.message())]
    Lost {
        status: tonic::Status,
        /// Whether Cancel reached the server.
        cancelled: bool,
    },
    /// The stream ended without a final response.
    #[error("the Bazel server ended the command without an exit code")]
    NoExitCode,
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
}

/// Where output goes, with optional pod -> desktop path rewriting per stream.
pub struct Output {
    pub stdout: Option<StreamRewriter>,
    pub stderr: Option<StreamRewriter>,
    /// For `clean`: Bazel's report of the failed `rmdir` of the output base, held back
    /// until the command's end (see [`crate::expunge`]).
    pub held: Option<HeldError>,
}

impl Output {
    fn write(
        rw: &mut Option<StreamRewriter>,
        to_stdout: bool,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let data = match rw {
            Some(r) => std::borrow::Cow::Owned(r.push(bytes)),
            None => std::borrow::Cow::Borrowed(bytes),
        };
        write_all(to_stdout, &data)
    }

    fn write_stderr(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match &mut self.held {
            Some(h) => {
                let shown = h.push(bytes);
                Output::write(&mut self.stderr, false, &shown)
            }
            None => Output::write(&mut self.stderr, false, bytes),
        }
    }

    fn finish(&mut self) {
        if let Some(rest) = self.held.as_mut().map(HeldError::rest) {
            let _ = Output::write(&mut self.stderr, false, &rest);
        }
        for (rw, to_stdout) in [(&mut self.stdout, true), (&mut self.stderr, false)] {
            if let Some(r) = rw {
                let _ = write_all(to_stdout, &r.finish());
            }
        }
    }

    /// Forgets the held line (the command is sent again).
    pub fn drop_held(&mut self) {
        if let Some(h) = &mut self.held {
            h.take_held();
        }
    }

    /// Shows the held line after all (the command did not end as an expunge of a mount
    /// point), rewritten like the rest of stderr.
    pub fn release_held(&mut self) {
        let Some(line) = self.held.as_mut().map(HeldError::take_held) else {
            return;
        };
        if line.is_empty() {
            return;
        }
        let _ = Output::write(&mut self.stderr, false, &line);
        if let Some(r) = &mut self.stderr {
            let _ = write_all(false, &r.finish());
        }
    }
}

fn write_all(to_stdout: bool, data: &[u8]) -> std::io::Result<()> {
    if data.is_empty() {
        return Ok(());
    }
    if to_stdout {
        let mut o = std::io::stdout().lock();
        o.write_all(data)?;
        o.flush()
    } else {
        let mut e = std::io::stderr().lock();
        e.write_all(data)?;
        e.flush()
    }
}

struct Signals {
    int: Signal,
    term: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self, ClientError> {
        let s = |k| signal(k).map_err(ClientError::Signals);
        Ok(Signals {
            int: s(SignalKind::interrupt())?,
            term: s(SignalKind::terminate())?,
            hup: s(SignalKind::hangup())?,
        })
    }
}

/// Sends Cancel for a command; true when the server answered (a failure is logged).
pub async fn cancel(channel: Channel, cookie: String, command_id: String) -> bool {
    match try_cancel(channel, cookie, &command_id).await {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(command_id = %command_id, error = %ErrorChain(&e), "cancel failed");
            false
        }
    }
}

/// Why a Cancel did not reach the server.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    #[error("no answer to Cancel: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("no answer to Cancel within {0:?}")]
    Timeout(Duration),
}

/// Sends Cancel for a command, waiting at most [`CANCEL_TIMEOUT`].
async fn try_cancel(channel: Channel, cookie: String, command_id: &str) -> Result<(), CancelError> {
    let mut c = CommandServerClient::new(channel);
    let req = CancelRequest {
        cookie,
        command_id: command_id.to_string(),
    };
    match tokio::time::timeout(CANCEL_TIMEOUT, c.cancel(req)).await {
        Ok(Ok(_)) => {
            tracing::debug!(command_id = %command_id, "cancel sent");
            Ok(())
        }
        Ok(Err(status)) => Err(CancelError::Status(status)),
        Err(_) => Err(CancelError::Timeout(CANCEL_TIMEOUT)),
    }
}

/// Why a Ping did not prove the server is up.
#[derive(Debug, thiserror::Error)]
pub enum PingError {
    #[error("no answer to Ping: {}: {}", .0.code(), .0.message())]
    Status(tonic::Status),
    #[error("no answer to Ping within {0:?}")]
    Timeout(Duration),
    #[error("the server answered Ping with another response cookie (not this output base's)")]
    WrongCookie,
}

/// Pings the server with the request cookie; Ok when it answers with the response cookie.
pub async fn ping(channel: Channel, cookies: &Cookies, timeout: Duration) -> Result<(), PingError> {
    let mut c = CommandServerClient::new(channel);
    let req = PingRequest {
        cookie: cookies.request.clone(),
    };
    match tokio::time::timeout(timeout, c.ping(req)).await {
        Ok(Ok(resp)) if resp.get_ref().cookie == cookies.response => Ok(()),
        Ok(Ok(_)) => Err(PingError::WrongCookie),
        Ok(Err(status)) => Err(PingError::Status(status)),
        Err(_) => Err(PingError::Timeout(timeout)),
    }
}

/// Cookies of the server's output base, and where they were read.
#[derive(Debug, Clone)]
pub struct Cookies {
    pub request: String,
    pub response: String,
    pub request_path: String,
    pub response_path: String,
}

/// Runs one command on the server.
pub async fn run(
    channel: Channel,
    mut req: RunRequest,
    cookies: &Cookies,
    out: &mut Output,
) -> Result<Outcome, ClientError> {
    req.cookie = cookies.request.clone();
    let mut signals = Signals::install()?;
    let mut client = CommandServerClient::new(channel.clone());
    let mut interrupts = 0u32;
    let mut want_cancel = false;
    let mut command_id: Option<String> = None;
    let mut cancel_task: Option<tokio::task::JoinHandle<bool>> = None;
    let mut pipe_broken = false;
    let mut last: Option<RunResponse> = None;

    let call = client.run(req);
    tokio::pin!(call);
    let mut stream = loop {
        tokio::select! {
            r = &mut call => match r {
                Ok(resp) => break resp.into_inner(),
                Err(status) => return Err(ClientError::NotTaken { status }),
            },
            _ = signals.int.recv() => {
                interrupts += 1;
                if interrupts >= 2 {
                    return Ok(Outcome::Signal(libc::SIGINT));
                }
                want_cancel = true;
            }
            _ = signals.term.recv() => return Ok(Outcome::Signal(libc::SIGTERM)),
            _ = signals.hup.recv() => return Ok(Outcome::Signal(libc::SIGHUP)),
        }
    };

    loop {
        let mut die_by: Option<i32> = None;
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(resp)) => {
                    if resp.finished && resp.cookie.is_empty() && resp.command_id.is_empty()
                        && ExitCode::from_raw(resp.exit_code) == ExitCode::LOCAL_ENVIRONMENTAL_ERROR
                        && command_id.is_none() {
                        // GrpcServerImpl rejects a bad cookie with an uncookied final response.
                        return Err(ClientError::BadCookie { cookie_path: cookies.request_path.clone() });
                    }
                    if resp.cookie != cookies.response {
                        return Err(ClientError::BadResponseCookie { cookie_path: cookies.response_path.clone() });
                    }
                    if command_id.is_none() && !resp.command_id.is_empty() {
                        command_id = Some(resp.command_id.clone());
                        tracing::debug!(command_id = %resp.command_id, "command started");
                    }
                    if !pipe_broken {
                        let w = Output::write(&mut out.stdout, true, &resp.standard_output)
                            .and_then(|_| out.write_stderr(&resp.standard_error));
                        if let Err(e) = w {
                            pipe_broken = true;
                            want_cancel = true;
                            let _ = writeln!(std::io::stderr(), "\njbazel: cannot write output ({e}); cancelling...");
                        }
                    }
                    if resp.finished {
                        last = Some(resp);
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    out.finish();
                    // Usually the server died: a failed Cancel is expected, and the caller
                    // tells the user what happened.
                    let cancelled = match &command_id {
                        Some(id) => match try_cancel(channel.clone(), cookies.request.clone(), id).await {
                            Ok(()) => true,
                            Err(e) => {
                                tracing::debug!(command_id = %id, error = %ErrorChain(&e), "no Cancel after the stream broke");
                                false
                            }
                        },
                        None => false,
                    };
                    return Err(ClientError::Lost { status, cancelled });
                }
            },
            _ = signals.int.recv() => {
                interrupts += 1;
                if interrupts >= 2 {
                    out.finish();
                    let _ = writeln!(std::io::stderr(), "\njbazel: second interrupt; exiting without waiting for the server");
                    return Ok(Outcome::Signal(libc::SIGINT));
                }
                want_cancel = true;
            }
            _ = signals.term.recv() => die_by = Some(libc::SIGTERM),
            _ = signals.hup.recv() => die_by = Some(libc::SIGHUP),
        }
        if let Some(sig) = die_by {
            out.finish();
            if let Some(id) = &command_id {
                cancel(channel.clone(), cookies.request.clone(), id.clone()).await;
            }
            return Ok(Outcome::Signal(sig));
        }
        if want_cancel && cancel_task.is_none() {
            if let Some(id) = &command_id {
                cancel_task = Some(tokio::spawn(cancel(
                    channel.clone(),
                    cookies.request.clone(),
                    id.clone(),
                )));
            }
        }
    }
    out.finish();
    let last = last.ok_or(ClientError::NoExitCode)?;
    match last.exec_request {
        Some(exec) if !exec.argv.is_empty() => Ok(Outcome::Exec(exec)),
        _ => Ok(Outcome::Exit(last.exit_code, last.failure_detail)),
    }
}

/// The gRPC code Bazel's client would report for a status: a status made here from a
/// broken connection (it carries its transport cause; tonic calls it UNKNOWN or CANCELLED)
/// is 14 (UNAVAILABLE), as gRPC C++ reports a closed socket; one the server sent keeps its
/// code.
pub fn reported_code(status: &tonic::Status) -> i32 {
    if std::error::Error::source(status).is_some() {
        tonic::Code::Unavailable as i32
    } else {
        status.code() as i32
    }
}

/// Bazel's client's line (`BlazeServer::Communicate`, Bazel 4.2.3) for a Run stream that
/// failed before the exit code; `log` is the server's log as the user can open it.
pub fn abrupt_message(status: &tonic::Status, log: &Path) -> String {
    format!(
        "Server terminated abruptly (error code: {}, error message: '{}', log file: '{}')",
        reported_code(status),
        status.message(),
        log.display()
    )
}

/// Bazel's client's line for a Run stream that ended without an exit code.
pub fn no_exit_code_message(log: &Path) -> String {
    format!(
        "Server finished RPC without an explicit exit code (log file: '{}')",
        log.display()
    )
}

/// Dies by `sig` (default disposition, re-raised) so the parent sees 128+signal; exits with
/// that code if the signal does not kill.
pub fn die_by_signal(sig: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: resetting a disposition and raising a signal in our own process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, sig);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// Execs `bazel run`'s request (already admitted by [`crate::exec_policy`] and rewritten to
/// desktop paths): its environment on top of ours, its working directory, its argv. Returns
/// only on failure.
pub fn exec(req: &ExecRequest) -> std::io::Error {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let os = |b: &[u8]| std::ffi::OsStr::from_bytes(b).to_os_string();
    let Some(argv0) = req.argv.first() else {
        return std::io::Error::other("empty argv in exec request");
    };
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    let mut cmd = std::process::Command::new(os(argv0));
    cmd.arg0(os(argv0))
        .args(req.argv[1..].iter().map(|a| os(a)))
        .current_dir(os(&req.working_directory));
    for v in &req.environment_variable {
        cmd.env(os(&v.name), os(&v.value));
    }
    cmd.exec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abrupt_messages_read_as_bazels() {
        let log = Path::new("/fs/alice/0123/out/server/jvm.out");
        // A broken connection (made here, with its cause) reads as gRPC C++ reports it.
        let broken = tonic::Status::from_error(Box::new(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "stream closed because of a broken pipe",
        )));
        assert_eq!(
            abrupt_message(&broken, log),
            "Server terminated abruptly (error code: 14, error message: 'stream closed because \
             of a broken pipe', log file: '/fs/alice/0123/out/server/jvm.out')"
        );
        // A status the server sent keeps its code.
        assert_eq!(
            abrupt_message(&tonic::Status::internal("boom"), log),
            "Server terminated abruptly (error code: 13, error message: 'boom', log file: \
             '/fs/alice/0123/out/server/jvm.out')"
        );
        assert_eq!(
            no_exit_code_message(log),
            "Server finished RPC without an explicit exit code (log file: \
             '/fs/alice/0123/out/server/jvm.out')"
        );
    }
}
