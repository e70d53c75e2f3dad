//! Talking to the Bazel server: its files in the output base (`server/server.pid.txt`,
//! `command_port`, cookies), Ping with the request cookie (the response cookie must match),
//! the liveness probe that does not count as activity, the protocol `shutdown`, and the
//! process checks (procfs) and signals around it.
//!
//! Ping is a command to Bazel: the server registers it like any command (java.log: "Starting
//! command ... on thread grpc-nio-worker"), and every command restarts the `--max_idle_secs`
//! countdown (measured with 4.2.3: an idle timeout of 5 s never fired while Ping came every
//! second; without it, the server exited 5.000 s after the last Ping). A supervisor that Pings
//! periodically therefore keeps an idle server alive forever. So Ping proves a fresh server
//! (the cookie) once, at start; afterwards [`Client::probe`] checks it: a call of a method the
//! server does not have. grpc-java answers UNIMPLEMENTED on the same event-loop thread that
//! runs Ping (Bazel's server uses the direct executor), without reaching Bazel's command
//! manager: the server is shown to serve gRPC, and its idle countdown runs on.

use proto::error_chain::ErrorChain;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use proto::command_server::command_server_client::CommandServerClient;
use proto::command_server::{PingRequest, RunRequest};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use proto::mirror;

use crate::reaper::ExitInfo;

/// Why talking to the server failed. Each names the file or the address.
#[derive(Debug, thiserror::Error)]
pub enum BazelError {
    #[error("cannot read {path:?}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path:?} holds {what}, not what Bazel writes there")]
    Parse { path: PathBuf, what: String },
    #[error("command port {addr}: {reason}")]
    Address { addr: String, reason: String },
    #[error("Ping to {addr} failed: {status}")]
    Ping { addr: String, status: tonic::Status },
    #[error("Ping to {addr} timed out after {after:?}")]
    PingTimeout { addr: String, after: Duration },
    #[error("Ping to {addr}: the response cookie does not match {path:?}")]
    Cookie { addr: String, path: PathBuf },
    #[error("liveness probe of {addr} failed: {status}")]
    Probe { addr: String, status: tonic::Status },
    #[error("liveness probe of {addr} timed out after {after:?}")]
    ProbeTimeout { addr: String, after: Duration },
    #[error("shutdown via {addr} failed: {reason}")]
    Shutdown { addr: String, reason: String },
    #[error("cannot make {path:?} private")]
    Secure {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path:?} is {what}: not making it private")]
    NotBazels { path: PathBuf, what: String },
}

/// The mode of the server dir and of each cookie after [`secure_server_files`].
pub const SERVER_DIR_MODE: u32 = 0o700;
pub const COOKIE_MODE: u32 = 0o600;
/// The files [`secure_server_files`] closes to everyone but their owner (relative to the
/// output base, in [`mirror::SERVER_DIR`]).
pub const COOKIES: [&str; 2] = [mirror::REQUEST_COOKIE, mirror::RESPONSE_COOKIE];

/// What [`secure_server_files`] found (Bazel's own modes) before it changed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModesBefore {
    pub server_dir: u32,
    pub cookies: Vec<(&'static str, u32)>,
}

/// Makes `<out>/server` mode 0700 and its cookies 0600 (Bazel 4.2.3 makes the dir 0700 but
/// writes the cookies with the umask's 0644): whoever holds the request cookie can run
/// commands on the server. Nothing is followed: the dir and each cookie are opened with
/// O_NOFOLLOW (and O_NONBLOCK, so a planted FIFO cannot block), must be a directory and
/// regular files, and must belong to the dir's owner (a hard link to someone else's file is
/// refused, not chmodded). Run it with the owner's filesystem ids ([`crate::owner::OwnerFs`]).
pub fn secure_server_files(out: &Path) -> Result<ModesBefore, BazelError> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let dir_path = out.join(mirror::SERVER_DIR);
    let secure = |path: &Path, source| BazelError::Secure {
        path: path.to_owned(),
        source,
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&dir_path)
        .map_err(|e| secure(&dir_path, e))?;
    let dmeta = dir.metadata().map_err(|e| secure(&dir_path, e))?;
    let fchmod = |f: &std::fs::File, mode: u32, path: &Path| {
        // SAFETY: fchmod on an fd we own.
        if unsafe { libc::fchmod(f.as_raw_fd(), mode) } == -1 {
            Err(secure(path, std::io::Error::last_os_error()))
        } else {
            Ok(())
        }
    };
    fchmod(&dir, SERVER_DIR_MODE, &dir_path)?;
    let mut before = ModesBefore {
        server_dir: dmeta.mode() & 0o7777,
        cookies: Vec::new(),
    };
    for rel in COOKIES {
        let path = out.join(rel);
        let name = Path::new(rel)
            .strip_prefix(mirror::SERVER_DIR)
            .unwrap_or(Path::new(rel))
            .display();
        // Relative to the dir just opened: no path component can be swapped in between.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(format!("/proc/self/fd/{}/{name}", dir.as_raw_fd()))
            .map_err(|e| secure(&path, e))?;
        let m = f.metadata().map_err(|e| secure(&path, e))?;
        if !m.is_file() || m.nlink() != 1 || m.uid() != dmeta.uid() {
            return Err(BazelError::NotBazels {
                path,
                what: format!(
                    "not a regular file of uid {} with one link (uid {}, {} links)",
                    dmeta.uid(),
                    m.uid(),
                    m.nlink()
                ),
            });
        }
        fchmod(&f, COOKIE_MODE, &path)?;
        before.cookies.push((rel, m.mode() & 0o7777));
    }
    Ok(before)
}

/// What the server wrote into `<output base>/server/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFiles {
    /// The output base they were read from.
    pub out: PathBuf,
    pub pid: i32,
    /// `host:port` as in `command_port` (`127.0.0.1:9001`, or `[::1]:N` without IPv4).
    pub addr: String,
    pub request_cookie: String,
    pub response_cookie: String,
}

fn read_trimmed(path: &Path) -> Result<String, BazelError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .map_err(|source| BazelError::File {
            path: path.to_owned(),
            source,
        })
}

/// Parses `server.pid.txt`. Pure.
pub fn parse_pid(text: &str) -> Option<i32> {
    text.trim().parse::<i32>().ok().filter(|p| *p > 1)
}

/// The server's pid from `<out>/server/server.pid.txt`.
pub fn read_pid(out: &Path) -> Result<i32, BazelError> {
    let path = out.join(mirror::SERVER_DIR).join("server.pid.txt");
    let text = read_trimmed(&path)?;
    parse_pid(&text).ok_or_else(|| BazelError::Parse {
        path,
        what: "no pid".into(),
    })
}

/// Reads every file Ping needs.
pub fn read_server_files(out: &Path) -> Result<ServerFiles, BazelError> {
    let dir = out.join(mirror::SERVER_DIR);
    let pid = read_pid(out)?;
    let addr = read_trimmed(&dir.join("command_port"))?;
    if addr.is_empty() || !addr.contains(':') {
        return Err(BazelError::Parse {
            path: dir.join("command_port"),
            what: "no host:port".into(),
        });
    }
    let request_cookie = read_trimmed(&out.join(mirror::REQUEST_COOKIE))?;
    let response_cookie = read_trimmed(&out.join(mirror::RESPONSE_COOKIE))?;
    for (rel, c) in [
        (mirror::REQUEST_COOKIE, &request_cookie),
        (mirror::RESPONSE_COOKIE, &response_cookie),
    ] {
        if c.is_empty() {
            return Err(BazelError::Parse {
                path: out.join(rel),
                what: "an empty cookie".into(),
            });
        }
    }
    Ok(ServerFiles {
        out: out.to_owned(),
        pid,
        addr,
        request_cookie,
        response_cookie,
    })
}

/// A gRPC client for one server incarnation.
pub struct Client {
    files: ServerFiles,
    channel: Channel,
}

impl Client {
    /// Connects lazily (the first RPC dials).
    pub fn new(files: ServerFiles) -> Result<Client, BazelError> {
        let uri = format!("http://{}", files.addr);
        let channel = Endpoint::from_shared(uri)
            .map_err(|e| BazelError::Address {
                addr: files.addr.clone(),
                reason: e.to_string(),
            })?
            .connect_timeout(Duration::from_secs(2))
            .connect_lazy();
        Ok(Client { files, channel })
    }

    pub fn files(&self) -> &ServerFiles {
        &self.files
    }

    /// Ping with the request cookie; Ok only when the response cookie matches.
    pub async fn ping(&self, timeout: Duration) -> Result<(), BazelError> {
        let mut c = CommandServerClient::new(self.channel.clone());
        let req = PingRequest {
            cookie: self.files.request_cookie.clone(),
        };
        let addr = &self.files.addr;
        let resp = tokio::time::timeout(timeout, c.ping(req))
            .await
            .map_err(|_| BazelError::PingTimeout {
                addr: addr.clone(),
                after: timeout,
            })?
            .map_err(|status| BazelError::Ping {
                addr: addr.clone(),
                status,
            })?;
        if resp.into_inner().cookie != self.files.response_cookie {
            return Err(BazelError::Cookie {
                addr: addr.clone(),
                path: self.files.out.join(mirror::RESPONSE_COOKIE),
            });
        }
        Ok(())
    }

    /// Checks that the server serves gRPC without counting as a command (so without
    /// resetting its idle countdown): calls [`PROBE_METHOD`], which the server does not have.
    /// Ok when the answer is UNIMPLEMENTED (or, should a server ever have it, a reply).
    pub async fn probe(&self, timeout: Duration) -> Result<(), BazelError> {
        let addr = &self.files.addr;
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        let call = async {
            grpc.ready()
                .await
                .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
            grpc.unary(
                tonic::Request::new(()),
                tonic::codegen::http::uri::PathAndQuery::from_static(PROBE_METHOD),
                EmptyCodec,
            )
            .await
        };
        match tokio::time::timeout(timeout, call).await {
            Err(_) => Err(BazelError::ProbeTimeout {
                addr: addr.clone(),
                after: timeout,
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if status.code() == tonic::Code::Unimplemented => Ok(()),
            Ok(Err(status)) => Err(BazelError::Probe {
                addr: addr.clone(),
                status,
            }),
        }
    }

    /// Runs Bazel's own `shutdown` command over the protocol (waits for the command lock, as
    /// the real client does). Ok once the server acknowledged it.
    pub async fn shutdown(&self, timeout: Duration) -> Result<i32, BazelError> {
        let addr = self.files.addr.clone();
        let fail = |reason: String| BazelError::Shutdown {
            addr: addr.clone(),
            reason,
        };
        let mut c = CommandServerClient::new(self.channel.clone());
        let req = RunRequest {
            cookie: self.files.request_cookie.clone(),
            arg: vec![
                b"shutdown".to_vec(),
                format!("--client_cwd={}", crate::plan::WORK_SRC).into_bytes(),
            ],
            block_for_lock: true,
            client_description: format!(
                "pid={} (jbazel supervisor shutdown)",
                nix::unistd::getpid()
            ),
            ..Default::default()
        };
        let run = async {
            let mut stream = c
                .run(req)
                .await
                .map_err(|s| fail(s.to_string()))?
                .into_inner();
            let mut acknowledged = false;
            loop {
                match stream.message().await {
                    Ok(Some(m)) => {
                        acknowledged |= m.termination_expected;
                        if m.finished {
                            return Ok(m.exit_code);
                        }
                    }
                    Ok(None) => {
                        return if acknowledged {
                            Ok(0)
                        } else {
                            Err(fail("stream ended without an exit code".into()))
                        }
                    }
                    // The server may drop the connection as it terminates.
                    Err(_) if acknowledged => return Ok(0),
                    Err(s) => return Err(fail(s.to_string())),
                }
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| fail(format!("no answer within {timeout:?}")))?
    }
}

/// The method [`Client::probe`] calls: in Bazel's service, so the server's own gRPC dispatch
/// answers it, but not one of its methods (Run, Cancel, Ping).
pub const PROBE_METHOD: &str = "/command_server.CommandServer/JbazelSupervisorLivenessProbe";

/// A codec for the probe: sends an empty message and expects none back (only a status).
#[derive(Debug, Clone, Copy, Default)]
struct EmptyCodec;

impl tonic::codec::Codec for EmptyCodec {
    type Encode = ();
    type Decode = ();
    type Encoder = EmptyCodec;
    type Decoder = EmptyCodec;

    fn encoder(&mut self) -> Self::Encoder {
        EmptyCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        EmptyCodec
    }
}

impl tonic::codec::Encoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;

    fn encode(
        &mut self,
        _item: (),
        _dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        Ok(())
    }
}

impl tonic::codec::Decoder for EmptyCodec {
    type Item = ();
    type Error = tonic::Status;

    fn decode(
        &mut self,
        _src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<()>, tonic::Status> {
        // Unreachable in practice: the method does not exist, so no reply message comes.
        Ok(Some(()))
    }
}

/// Is `pid` running (not a zombie)? procfs.
pub fn alive(pid: i32) -> bool {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|s| !matches!(s.state, 'Z' | 'X' | 'x'))
}

/// Is `pid` a Bazel server process? The JVM runs as `bazel(<workspace dir name>) ...`.
pub fn is_bazel_server(pid: i32) -> bool {
    procfs::process::Process::new(pid)
        .and_then(|p| p.cmdline())
        .is_ok_and(|c| c.first().is_some_and(|a| a.starts_with("bazel(")))
}

/// Is `pid` a Bazel server that belongs to this supervisor? It must be a Bazel JVM and our
/// child: the daemonized server is re-parented to us (PID 1 or subreaper). A stale
/// `server.pid.txt` whose pid now names someone else's process fails this test.
pub fn is_our_server(pid: i32) -> bool {
    let ours = procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .is_ok_and(|s| s.ppid == nix::unistd::getpid().as_raw());
    ours && is_bazel_server(pid)
}

/// How the server was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    AlreadyGone,
    Protocol,
    Sigterm,
    Sigkill,
    /// Still there after SIGKILL (should not happen).
    Failed,
}

/// Waits until `pid` is gone: its exit arrives from the reaper, or procfs stops showing it.
async fn wait_gone(
    pid: i32,
    exited: &mut Option<oneshot::Receiver<ExitInfo>>,
    until: Instant,
) -> bool {
    loop {
        if !alive(pid) {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        let poll = tokio::time::sleep_until(until.min(Instant::now() + Duration::from_millis(50)));
        match exited.as_mut() {
            Some(rx) => {
                tokio::select! {
                    r = rx => { *exited = None; if r.is_ok() { return true; } }
                    _ = poll => {}
                }
            }
            None => poll.await,
        }
    }
}

/// Stops the server within `grace`: protocol `shutdown` (half the grace), SIGTERM (until 85%),
/// then SIGKILL. Signals go only to our own live Bazel server ([`is_our_server`]).
pub async fn stop(
    client: Option<&Client>,
    pid: i32,
    mut exited: Option<oneshot::Receiver<ExitInfo>>,
    grace: Duration,
) -> Stopped {
    let start = Instant::now();
    if !alive(pid) {
        return Stopped::AlreadyGone;
    }
    if let Some(c) = client {
        let budget = grace / 2;
        match c.shutdown(budget).await {
            Ok(code) => tracing::info!(pid, exit_code = code, "Bazel acknowledged shutdown"),
            Err(e) => tracing::warn!(pid, error = %ErrorChain(&e), "protocol shutdown failed"),
        }
        if wait_gone(pid, &mut exited, start + budget).await {
            return Stopped::Protocol;
        }
    }
    for (sig, until, outcome) in [
        (
            Signal::SIGTERM,
            start + grace.mul_f32(0.85),
            Stopped::Sigterm,
        ),
        (Signal::SIGKILL, start + grace, Stopped::Sigkill),
    ] {
        if !alive(pid) {
            return outcome;
        }
        if !is_our_server(pid) {
            tracing::warn!(pid, "not our Bazel server process; not signalling it");
            return Stopped::AlreadyGone;
        }
        tracing::info!(pid, signal = %sig, "stopping Bazel server");
        let _ = kill(Pid::from_raw(pid), sig);
        if wait_gone(pid, &mut exited, until).await {
            return outcome;
        }
    }
    Stopped::Failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids() {
        assert_eq!(parse_pid("1234\n"), Some(1234));
        assert_eq!(parse_pid(" 77 "), Some(77));
        for bad in ["", "x", "-5", "0", "1", "12 34"] {
            assert_eq!(parse_pid(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn server_files() {
        let t = tempfile::tempdir().expect("tempdir");
        let s = t.path().join("server");
        std::fs::create_dir(&s).expect("mkdir");
        let err = read_server_files(t.path()).expect_err("empty dir");
        assert!(err.to_string().contains("server.pid.txt"), "{err}");
        std::fs::write(s.join("server.pid.txt"), "4242").expect("write");
        std::fs::write(s.join("command_port"), "127.0.0.1:9001\n").expect("write");
        std::fs::write(s.join("request_cookie"), "req").expect("write");
        std::fs::write(s.join("response_cookie"), "").expect("write");
        let err = read_server_files(t.path()).expect_err("empty cookie");
        assert!(err.to_string().contains("response_cookie"), "{err}");
        std::fs::write(s.join("response_cookie"), "resp").expect("write");
        let f = read_server_files(t.path()).expect("complete");
        assert_eq!((f.pid, f.addr.as_str()), (4242, "127.0.0.1:9001"));
        assert_eq!(
            (f.request_cookie.as_str(), f.response_cookie.as_str()),
            ("req", "resp")
        );
    }

    #[test]
    fn server_files_are_made_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let t = tempfile::tempdir().expect("tempdir");
        let s = t.path().join("server");
        std::fs::create_dir(&s).expect("mkdir");
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for c in COOKIES {
            std::fs::write(t.path().join(c), "c").expect("write");
            std::fs::set_permissions(t.path().join(c), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        let before = secure_server_files(t.path()).expect("secured");
        assert_eq!(before.server_dir, 0o755);
        assert_eq!(
            before.cookies,
            [
                ("server/request_cookie", 0o644),
                ("server/response_cookie", 0o644)
            ]
        );
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode(&s), 0o700);
        for c in COOKIES {
            assert_eq!(mode(&t.path().join(c)), 0o600, "{c}");
        }
        // A planted link is refused, and what it points to is left alone.
        let victim = t.path().join("victim");
        std::fs::write(&victim, "v").expect("write");
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        std::fs::remove_file(s.join("response_cookie")).expect("rm");
        std::os::unix::fs::symlink(&victim, s.join("response_cookie")).expect("symlink");
        let err = secure_server_files(t.path()).expect_err("symlink");
        assert!(err.to_string().contains("response_cookie"), "{err}");
        std::fs::remove_file(s.join("response_cookie")).expect("rm");
        std::fs::hard_link(&victim, s.join("response_cookie")).expect("link");
        let err = secure_server_files(t.path()).expect_err("hard link");
        assert!(err.to_string().contains("2 links"), "{err}");
        assert_eq!(mode(&victim), 0o644, "the link's target is untouched");
    }

    #[test]
    fn this_process_is_alive_and_not_bazel() {
        let me = std::process::id() as i32;
        assert!(alive(me));
        assert!(!is_bazel_server(me));
        assert!(!alive(i32::MAX));
    }
}
