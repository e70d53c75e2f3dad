//! Shared fixtures for the supervisor's integration tests: a temp filestore, the real
//! supervisor binary, real Bazel and bwrap, and helpers that poll conditions with deadlines.
//!
//! Everything lives under /tmp (never under /work: the pivot hides /work behind a tmpfs).
#![allow(dead_code)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

pub use proto::mirror;
pub use proto::pod::env as pod_env;
pub use testkit::wait_until;

/// A free loopback port (see `testkit::free_port`); panics in a test that cannot get one.
pub fn free_port() -> u16 {
    testkit::free_port().expect("a free loopback port")
}

pub const HASH: &str = "0123456789abcdef0123456789abcdef";
pub const USER: &str = "alice";
pub const MARKER: &str = "marker-7f3a from the filestore\n";

/// The supervisor under test: this build's binary, or `SUPERVISOR_BIN` (e.g. an image's
/// binary or a differently tuned build).
pub fn supervisor_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SUPERVISOR_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_supervisor").to_owned())
    })
}

/// Repository root of the workspace (for the sample workspace and the rule stubs).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

/// A scratch dir holding a filestore root `fs/` with `alice/<HASH>/{src,out}` and
/// `src/MARKER`, and, beside it (outside R, which the pivot hides), what the image would
/// provide: the system rc and the rule stubs.
pub struct Filestore {
    pub dir: tempfile::TempDir,
}

impl Filestore {
    pub fn new() -> Filestore {
        let dir = tempfile::Builder::new()
            .prefix("jbazel-sup-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let fs = Filestore { dir };
        std::fs::create_dir_all(fs.src()).expect("mkdir src");
        std::fs::create_dir_all(fs.out()).expect("mkdir out");
        std::fs::write(fs.src().join("MARKER"), MARKER).expect("marker");
        fs
    }

    /// The filestore root R.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("fs")
    }

    /// The scratch dir (R's parent; stands in for the image's own files).
    pub fn scratch(&self) -> &Path {
        self.dir.path()
    }

    pub fn repo(&self) -> PathBuf {
        self.root().join(USER).join(HASH)
    }

    pub fn src(&self) -> PathBuf {
        self.repo().join("src")
    }

    pub fn out(&self) -> PathBuf {
        self.repo().join("out")
    }

    /// Lets an unprivileged user traverse the tree (and write `out`).
    pub fn open_up(&self) {
        for d in [
            self.scratch().to_owned(),
            self.root(),
            self.root().join(USER),
            self.repo(),
            self.src(),
        ] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        std::fs::set_permissions(self.out(), std::fs::Permissions::from_mode(0o777))
            .expect("chmod out");
    }

    /// Gives the user's tree `R/alice` (and all in it) to `uid`:`uid`, as a real filestore
    /// would, and opens the scratch dir and R for traversal (the image's files beside R, the
    /// rule stubs and the system rc, must be readable by that uid). Links are not followed.
    pub fn own_by(&self, uid: u32) {
        for d in [self.scratch().to_owned(), self.root()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        let mut stack = vec![self.root().join(USER)];
        while let Some(p) = stack.pop() {
            std::os::unix::fs::lchown(&p, Some(uid), Some(uid)).expect("lchown");
            if std::fs::symlink_metadata(&p).expect("stat").is_dir() {
                stack.extend(
                    std::fs::read_dir(&p)
                        .expect("readdir")
                        .map(|e| e.expect("entry").path()),
                );
            }
        }
    }

    /// Copies the sample workspace into src and writes a system rc whose rule stubs live in
    /// this temp dir (outside /work, so they stay visible after the pivot). Returns the rc.
    pub fn with_sample_workspace(&self) -> PathBuf {
        testkit::copy_dir(
            &repo_root().join("integration/sample-workspace"),
            &self.src(),
        )
        .expect("copy fixture tree");
        let rules = self.scratch().join("rules");
        for stub in ["rules_cc", "rules_java", "remote_coverage_tools"] {
            testkit::copy_dir(
                &repo_root().join("image/bazel").join(stub),
                &rules.join(stub),
            )
            .expect("copy fixture tree");
        }
        let template = std::fs::read_to_string(repo_root().join("image/bazel/system.bazelrc.in"))
            .expect("rc template");
        let rc = self.scratch().join("system.bazelrc");
        std::fs::write(
            &rc,
            template.replace("@RULES_DIR@", &rules.display().to_string()),
        )
        .expect("write rc");
        rc
    }

    /// The supervisor with this filestore's env (USER_ID, REPO_HASH, MOCK_FILESTORE_PATH).
    pub fn supervisor(&self) -> Command {
        let mut c = Command::new(supervisor_bin());
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env(
                "HOME",
                std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
            )
            .env("RUST_LOG", "info,supervisor=debug")
            .env(pod_env::USER_ID, USER)
            .env(pod_env::REPO_HASH, HASH)
            .env(pod_env::FILESTORE_ROOT, self.root());
        c
    }

    /// `supervisor --mode <mode> run -- sh -c <script>` on this filestore.
    pub fn run_sh(&self, mode: &str, script: &str) -> Command {
        let mut c = self.supervisor();
        c.args(["--mode", mode, "run", "--", "sh", "-c", script]);
        c
    }

    /// The supervisor's Bazel job on this filestore (direct mode): the system rc `rc`, fresh
    /// health and command ports, health checks every second, the log in `<root>/<log_name>`,
    /// and `env` on top. Started in the background.
    pub fn start_bazel_job(&self, rc: &Path, log_name: &str, env: &[(&str, &str)]) -> Running {
        self.start_bazel_job_in("direct", rc, log_name, env)
    }

    /// [`Filestore::start_bazel_job`] in `mode` (`direct`, `bwrap`, ...).
    pub fn start_bazel_job_in(
        &self,
        mode: &str,
        rc: &Path,
        log_name: &str,
        env: &[(&str, &str)],
    ) -> Running {
        let health_port = free_port();
        let command_port = free_port();
        let mut cmd = self.supervisor();
        cmd.env(pod_env::SESSION_ID, "session-1")
            .env(
                pod_env::POD_NAME,
                format!("bazel-server-{}", log_name.trim_end_matches(".log")),
            )
            .env(pod_env::POD_IP, "127.0.0.1")
            .env("SYSTEM_BAZELRC", rc)
            .env("BAZEL_COMMAND_PORT", command_port.to_string())
            .env("HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
            .env("HEALTH_INTERVAL_SECS", "1")
            .env(pod_env::GRACE_PERIOD_SECS, "20")
            .args(["--mode", mode]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Running::start(
            cmd,
            self.root().join(log_name),
            self.out(),
            health_port,
            command_port,
        )
    }

    /// Every path under the root with its kind and size: "nothing was created" checks.
    pub fn snapshot(&self) -> Vec<String> {
        tree_snapshot(self.scratch())
    }
}

/// Every path under `root` (links not followed) whose owner is not `uid`:`gid`, with its
/// owner. Entries that vanish while it walks (a running server's) are skipped.
pub fn not_owned_by(root: &Path, uid: u32, gid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut bad = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(p) = stack.pop() {
        let Ok(m) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if (m.uid(), m.gid()) != (uid, gid) {
            bad.push(format!("{} {}:{}", p.display(), m.uid(), m.gid()));
        }
        if m.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
        }
    }
    bad
}

/// The `Uid:` and `Gid:` lines (and the capability sets) of a process's status.
pub fn status_lines(pid: i32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            ["Uid:", "Gid:", "Groups:", "CapEff:", "CapPrm:", "CapBnd:"]
                .iter()
                .any(|k| l.starts_with(k))
        })
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

pub fn tree_snapshot(root: &Path) -> Vec<String> {
    let mut v = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            v.push(format!("{} {:?} {}", p.display(), m.file_type(), m.len()));
            if m.is_dir() {
                stack.push(p);
            }
        }
    }
    v.sort();
    v
}

/// Mount-table lines that concern this test: /work and the temp filestore. The whole table
/// is not compared: the local cluster and other tests mount things concurrently.
pub fn relevant_mounts(root: &Path) -> Vec<String> {
    let root = std::fs::canonicalize(root).expect("canon root");
    let root = root.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let mount_point = fields.get(4).copied().unwrap_or("");
            let fs_root = fields.get(3).copied().unwrap_or("");
            mount_point == "/work"
                || mount_point.starts_with("/work/")
                || l.contains(&root)
                || fs_root.contains(&root)
        })
        .map(str::to_owned)
        .collect()
}

/// The names directly in the host's /work (a leaked tmpfs would show src/out there).
pub fn work_listing() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/work")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// All of /proc/self/mountinfo (for a coarse "same number of mounts under /work" check).
pub fn work_mounts() -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .filter(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|mp| mp == "/work" || mp.starts_with("/work/"))
        })
        .count()
}

/// Waits for a child with a deadline (polling try_wait).
pub fn wait_child(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let mut status = None;
    wait_until(within, || {
        status = child.try_wait().ok().flatten();
        status.is_some()
    });
    status
}

/// Runs the supervisor to completion, capturing output (for short commands).
pub fn run_to_end(mut cmd: Command, within: Duration) -> (ExitStatus, String, String) {
    let out_file = tempfile::NamedTempFile::new().expect("tmp");
    let err_file = tempfile::NamedTempFile::new().expect("tmp");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out_file.reopen().expect("reopen"))
        .stderr(err_file.reopen().expect("reopen"))
        .spawn()
        .expect("spawn supervisor");
    let status = match wait_child(&mut child, within) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "supervisor did not finish within {within:?}; stderr:\n{}",
                std::fs::read_to_string(err_file.path()).unwrap_or_default()
            );
        }
    };
    (
        status,
        std::fs::read_to_string(out_file.path()).unwrap_or_default(),
        std::fs::read_to_string(err_file.path()).unwrap_or_default(),
    )
}

/// Process state letter from /proc/<pid>/stat (None when gone).
pub fn proc_state(pid: i32) -> Option<char> {
    procfs::process::Process::new(pid)
        .and_then(|p| p.stat())
        .ok()
        .map(|s| s.state)
}

/// Children (by PPid) of `pid` that are zombies.
pub fn zombie_children(pid: i32) -> Vec<i32> {
    procfs::process::all_processes()
        .expect("procfs")
        .flatten()
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.ppid == pid && s.state == 'Z')
        .map(|s| s.pid)
        .collect()
}

/// Is this pid a live Bazel server JVM (`bazel(<ws>) ...`)?
pub fn is_bazel_server(pid: i32) -> bool {
    let alive = matches!(proc_state(pid), Some(s) if s != 'Z' && s != 'X');
    alive
        && procfs::process::Process::new(pid)
            .and_then(|p| p.cmdline())
            .is_ok_and(|c| c.first().is_some_and(|a| a.starts_with("bazel(")))
}

/// Processes whose mount namespace is `ns` (e.g. the supervisor's pivoted view).
pub fn processes_in_mnt_ns(ns: &Path) -> Vec<i32> {
    procfs::process::all_processes()
        .expect("procfs")
        .flatten()
        .filter(|p| std::fs::read_link(format!("/proc/{}/ns/mnt", p.pid)).is_ok_and(|l| l == ns))
        .map(|p| p.pid)
        .collect()
}

pub fn mnt_ns_of(pid: i32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("kill");
}

/// A supervisor running in the background, its logs in a file. On drop it is killed, and so
/// are its Bazel servers: its children and the one its output base names (by pid; never by
/// name).
pub struct Running {
    pub child: Child,
    pub log: PathBuf,
    pub out: PathBuf,
    pub health_port: u16,
    pub command_port: u16,
}

impl Running {
    pub fn start(
        mut cmd: Command,
        log: PathBuf,
        out: PathBuf,
        health_port: u16,
        command_port: u16,
    ) -> Running {
        let f = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("clone"))
            .stderr(f)
            .spawn()
            .expect("spawn supervisor");
        Running {
            child,
            log,
            out,
            health_port,
            command_port,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn server_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.out.join("server/server.pid.txt"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    /// GET /readyz on the health port: (status code, body).
    pub fn readyz(&self) -> Option<(u16, String)> {
        http_get(self.health_port, "/readyz")
    }

    /// Waits until /readyz says 200.
    pub fn wait_ready(&self, within: Duration) -> bool {
        wait_until(within, || matches!(self.readyz(), Some((200, _))))
    }

    /// The timestamp (RFC 3339, UTC: ordered as text) of the first log line containing
    /// `what`.
    pub fn logged_at(&self, what: &str) -> Option<String> {
        self.logs()
            .lines()
            .find(|l| l.contains(what))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_owned)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // The servers re-parented to the supervisor (a subreaper here, not PID 1: they
        // outlive it), found before it goes; the pid file may be gone (`clean --expunge`).
        let mut servers: Vec<i32> = procfs::process::all_processes()
            .map(|ps| {
                ps.flatten()
                    .filter_map(|p| p.stat().ok())
                    .filter(|s| s.ppid == self.pid() && is_bazel_server(s.pid))
                    .map(|s| s.pid)
                    .collect()
            })
            .unwrap_or_default();
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        servers.extend(self.server_pid());
        for pid in servers {
            if is_bazel_server(pid) {
                signal(pid, nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

/// A minimal HTTP/1.0 GET against 127.0.0.1:port.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(1),
    )
    .ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split(' ').nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((code, body))
}

/// Runs `bazel <args>` on the supervisor's server over the protocol (as jbazel does); returns
/// the exit code the server sent and what the command wrote to stderr, or the transport error
/// when the server died mid-command.
pub fn run_command(out: &Path, port: u16, args: &[&str]) -> Result<(i32, String), String> {
    let cookie =
        std::fs::read_to_string(out.join(mirror::REQUEST_COOKIE)).map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let mut c = proto::command_server::command_server_client::CommandServerClient::connect(
            format!("http://127.0.0.1:{port}"),
        )
        .await
        .map_err(|e| e.to_string())?;
        let mut arg: Vec<Vec<u8>> = vec![args[0].as_bytes().to_vec()];
        arg.push(b"--client_cwd=/work/src".to_vec());
        arg.extend(args[1..].iter().map(|a| a.as_bytes().to_vec()));
        let mut stream = c
            .run(proto::command_server::RunRequest {
                cookie: cookie.trim().to_owned(),
                arg,
                block_for_lock: true,
                client_description: "pid=1 (supervisor test)".into(),
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?
            .into_inner();
        let mut stderr = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(m)) if m.finished => {
                    return Ok((m.exit_code, String::from_utf8_lossy(&stderr).into_owned()))
                }
                Ok(Some(m)) => stderr.extend_from_slice(&m.standard_error),
                Ok(None) => return Err("stream ended without an exit code".into()),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
}
