//! A real Bazel 4.2.3 server laid out as the pod would have it, without a cluster.
//!
//! - a temp filestore `R/U/H/{src,out}` where `H = md5(P)` for a temp desktop path `P`, `src`
//!   a copy of `integration/sample-workspace` (plus any extra files);
//! - a Bazel server started in its own mount namespace (`unshare -m`, a tmpfs on `/work`,
//!   `R/U/H/src` bound on `/work/src`, `R/U/H/out` on `/work/out`), with the platform's
//!   startup options: `--output_base=/work/out --command_port=<free port>
//!   --host_jvm_args=-Djava.net.preferIPv4Stack=true`, and the system rc made from
//!   `image/bazel/system.bazelrc.in`;
//! - `out/jbazel/system.bazelrc` and `out/jbazel/client-env` written as the supervisor does;
//! - jbazel run from `P` (a bind mount of `R/U/H/src` in a private mount namespace per
//!   invocation, so nothing leaks into the host's mount table).
//!
//! The server is stopped by its pid (from `out/server/server.pid.txt`) when the fixture drops.
//! Shared by the integration tests and the `no_op` bench (included with `#[path]`).
//!
//! [`stand_in`]: a stand-in server answering what a test chooses, for what no real Bazel
//! server would say.

#![allow(dead_code)]

pub mod stand_in;

/// A command's bytes as text (invalid UTF-8 replaced).
pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A finished command for a failure message: its status, stdout and stderr.
pub fn describe(o: &std::process::Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        text(&o.stdout),
        text(&o.stderr)
    )
}

use anyhow::{bail, Context, Result};
use md5::{Digest, Md5};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The pod image's PATH, as the supervisor publishes it in `client-env`.
pub const POD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// The fixture's UserId.
pub const USER: &str = "tester";
/// The fixture's SessionId.
pub const SESSION: &str = "test-session";

/// The repository checkout (`/work/main`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/work/main"))
}

pub fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// Waits for `cond` to hold, polling, until `deadline`; Err names what was awaited.
pub fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) -> Result<()> {
    if !testkit::wait_until(deadline, &mut cond) {
        bail!("timed out after {deadline:?} waiting for {what}");
    }
    Ok(())
}

fn pid_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie is dead; its parent (init or a subreaper) has not reaped it yet.
        Ok(stat) => !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Options for [`BazelServer::start`].
#[derive(Default)]
pub struct Options {
    /// Extra files in the workspace (relative path, contents); `{T}` is replaced by the
    /// fixture's temp dir; `*.sh` files are made executable.
    pub files: Vec<(String, String)>,
    /// Put Debian's `/etc/bazel/bazelrc` in front of the published system rc, so jbazel
    /// sends exactly the options the real client sends (for the bench).
    pub debian_rc_in_system_rc: bool,
}

/// One filestore, one output base, one real Bazel server.
pub struct BazelServer {
    pub tmp: tempfile::TempDir,
    /// `R`.
    pub filestore: PathBuf,
    /// `P`: where the desktop sees the checkout.
    pub desktop: PathBuf,
    /// `H = md5(P)`.
    pub hash: String,
    /// `R/U/H/src`.
    pub src: PathBuf,
    /// `R/U/H/out`.
    pub out: PathBuf,
    /// The system rc the server was started with (from `system.bazelrc.in`).
    pub system_rc: PathBuf,
    /// `$HOME` for every Bazel client here (no stray `~/.bazelrc`).
    pub home: PathBuf,
    pub port: u16,
    pub server_pid: i32,
    /// How long `bazel info release` took to start the server.
    pub startup: Duration,
}

impl BazelServer {
    pub fn start(opts: Options) -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix("jbazel-it.").tempdir()?;
        let t = tmp.path().to_path_buf();
        let desktop = t.join("desktop").join("ws");
        std::fs::create_dir_all(&desktop)?;
        let hash = md5_hex(&desktop.to_string_lossy());
        let filestore = t.join("fs");
        let base = filestore.join(USER).join(&hash);
        let (src, out) = (base.join("src"), base.join("out"));
        std::fs::create_dir_all(&out)?;
        let repo = repo_root();
        testkit::copy_dir(&repo.join("integration/sample-workspace"), &src)?;
        for (rel, text) in &opts.files {
            let p = src.join(rel);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d)?;
            }
            std::fs::write(&p, text.replace("{T}", &t.to_string_lossy()))?;
            if rel.ends_with(".sh") {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
            }
        }
        // The rule stubs must be visible inside the server's namespace (its /work is a tmpfs).
        let rules = t.join("rules");
        for stub in ["rules_cc", "rules_java", "remote_coverage_tools"] {
            testkit::copy_dir(&repo.join("image/bazel").join(stub), &rules.join(stub))?;
        }
        let template = std::fs::read_to_string(repo.join("image/bazel/system.bazelrc.in"))
            .context("read image/bazel/system.bazelrc.in")?;
        let system_rc = t.join("system.bazelrc");
        std::fs::write(
            &system_rc,
            template.replace("@RULES_DIR@", &rules.to_string_lossy()),
        )?;
        let home = t.join("home");
        std::fs::create_dir_all(&home)?;
        // The desktop's per-user runtime dir (jbazel puts `run`'s runfiles views there).
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(t.join("xdg"))?;
        }
        let port = testkit::free_port().context("a free loopback port")?;

        let started = Instant::now();
        let pid = launch(&src, &out, port, &system_rc, &home)?;
        let startup = started.elapsed();

        // What the supervisor publishes.
        std::fs::create_dir_all(out.join("jbazel"))?;
        let mut rc = String::new();
        if opts.debian_rc_in_system_rc {
            rc.push_str(&std::fs::read_to_string("/etc/bazel/bazelrc").unwrap_or_default());
            rc.push('\n');
        }
        rc.push_str(&std::fs::read_to_string(&system_rc)?);
        std::fs::write(out.join("jbazel/system.bazelrc"), rc)?;
        std::fs::write(out.join("jbazel/client-env"), format!("PATH={POD_PATH}\n"))?;

        Ok(BazelServer {
            tmp,
            filestore,
            desktop,
            hash,
            src,
            out,
            system_rc,
            home,
            port,
            server_pid: pid,
            startup,
        })
    }

    /// Starts the server again after it died (e.g. killed by a test), on a new port (the
    /// old one may linger in TIME_WAIT); the same output base, workspace and rc.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let port = testkit::free_port().context("a free loopback port")?;
        self.server_pid = launch(&self.src, &self.out, port, &self.system_rc, &self.home)?;
        self.port = port;
        Ok(())
    }

    /// The pid in `out/server/server.pid.txt` is alive.
    pub fn server_alive(&self) -> bool {
        self.server_pid > 0 && pid_alive(self.server_pid)
    }

    /// `XDG_RUNTIME_DIR` of every jbazel here.
    pub fn runtime_dir(&self) -> PathBuf {
        self.tmp.path().join("xdg")
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `R/U/H/out/execroot/__main__/bazel-out/k8-fastbuild/bin/<rel>`.
    pub fn bin(&self, rel: &str) -> PathBuf {
        self.out
            .join("execroot/__main__/bazel-out/k8-fastbuild/bin")
            .join(rel)
    }

    /// jbazel, run from `P/<rel_cwd>` as a user would, talking to this server at its address
    /// (`JBAZEL_SERVER`).
    pub fn jbazel(&self, jbazel: &Path, rel_cwd: &str, args: &[&str]) -> Command {
        let mut c = Command::new("unshare");
        c.args([
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            r#"mount --bind "$1" "$2" && cd "$2/$3" && shift 3 && exec "$@""#,
            "sh",
        ])
        .arg(&self.src)
        .arg(&self.desktop)
        .arg(rel_cwd)
        .arg(jbazel)
        .args(args)
        .env_clear()
        .env("PATH", POD_PATH)
        .env("HOME", &self.home)
        .env("XDG_RUNTIME_DIR", self.runtime_dir())
        .env("TERM", "dumb")
        .env("JBAZEL_SERVER", self.addr())
        .env("JBAZEL_FILESTORE_ROOT", &self.filestore)
        .env("JBAZEL_USER", USER)
        .env("JBAZEL_SESSION_ID", SESSION)
        .stdin(Stdio::null());
        c
    }

    /// [`BazelServer::jbazel`] as one `sh` command line (for `script`, which gives it a
    /// terminal). Every path here is a temp path without shell-special characters.
    pub fn jbazel_shell_line(&self, jbazel: &Path, rel_cwd: &str, args: &[&str]) -> String {
        format!(
            "env -i PATH={POD_PATH} HOME={home} XDG_RUNTIME_DIR={xdg} TERM=xterm JBAZEL_SERVER={addr} \
             JBAZEL_FILESTORE_ROOT={fs} JBAZEL_USER={USER} JBAZEL_SESSION_ID={SESSION} \
             unshare -m --propagation private sh -c \
             'mount --bind \"$1\" \"$2\" && cd \"$2/$3\" && shift 3 && exec \"$@\"' \
             sh {src} {desktop} '{rel_cwd}' {jbazel} {args}",
            home = self.home.display(),
            xdg = self.runtime_dir().display(),
            addr = self.addr(),
            fs = self.filestore.display(),
            src = self.src.display(),
            desktop = self.desktop.display(),
            jbazel = jbazel.display(),
            args = args.join(" "),
        )
    }

    /// The real Bazel client on this very server: in the server's mount namespace, from
    /// `/work/src`, with the startup options the server was started with (else it restarts).
    pub fn real_bazel(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg("-t")
            .arg(self.server_pid.to_string())
            .args([
                "-m",
                "sh",
                "-c",
                r#"cd /work/src && exec "$@""#,
                "sh",
                "bazel",
            ])
            .args(server_startup_args(self.port, &self.system_rc))
            .args(args)
            .env_clear()
            .env("PATH", POD_PATH)
            .env("HOME", &self.home)
            .env("TERM", "dumb")
            .stdin(Stdio::null());
        c
    }

    /// The real Bazel client in batch mode on a separate local output base, on a copy of
    /// this workspace: the reference for exit codes.
    pub fn real_bazel_local(&self, args: &[&str]) -> Result<Command> {
        let ws = self.tmp.path().join("local-ws");
        if !ws.exists() {
            testkit::copy_dir(&self.src, &ws)?;
        }
        let mut c = Command::new("bazel");
        c.arg("--batch")
            .arg(format!(
                "--output_base={}",
                self.tmp.path().join("local-out").display()
            ))
            .arg(format!("--bazelrc={}", self.system_rc.display()))
            .args(args)
            .current_dir(&ws)
            .env_clear()
            .env("PATH", POD_PATH)
            .env("HOME", &self.home)
            .env("TERM", "dumb")
            .stdin(Stdio::null());
        Ok(c)
    }

    /// Stops the server by its pid and waits until it is gone.
    pub fn stop(&mut self) {
        if self.server_pid <= 0 || !pid_alive(self.server_pid) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.server_pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        if wait_for("server exit", Duration::from_secs(15), || {
            !pid_alive(self.server_pid)
        })
        .is_err()
        {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = wait_for("server kill", Duration::from_secs(5), || {
                !pid_alive(self.server_pid)
            });
        }
        self.server_pid = 0;
    }
}

impl Drop for BazelServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a Bazel server on `out` for the workspace `src` in its own mount namespace (as
/// the pod has them: `/work/src`, `/work/out`) and returns its pid.
fn launch(src: &Path, out: &Path, port: u16, system_rc: &Path, home: &Path) -> Result<i32> {
    let script = r#"set -e
mount -t tmpfs tmpfs /work
mkdir -p /work/src /work/out
mount --bind "$1" /work/src
mount --bind "$2" /work/out
cd /work/src
shift 2
exec "$@""#;
    let st = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(src)
        .arg(out)
        .arg("bazel")
        .args(server_startup_args(port, system_rc))
        .args(["info", "release"])
        .env_clear()
        .env("PATH", POD_PATH)
        .env("HOME", home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("run unshare + bazel info (needs root, util-linux and bazel-bootstrap)")?;
    if !st.status.success() {
        bail!(
            "starting the Bazel server failed ({}): {}",
            st.status,
            String::from_utf8_lossy(&st.stderr)
        );
    }
    let pid_file = out.join("server/server.pid.txt");
    std::fs::read_to_string(&pid_file)
        .with_context(|| format!("read {}", pid_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("parse {}", pid_file.display()))
}

/// The platform's server startup options (supervisor's, with a free port and a finite idle
/// time so a crashed test leaves nothing running for long).
pub fn server_startup_args(port: u16, system_rc: &Path) -> Vec<String> {
    vec![
        "--output_base=/work/out".into(),
        "--max_idle_secs=600".into(),
        format!("--command_port={port}"),
        "--host_jvm_args=-Djava.net.preferIPv4Stack=true".into(),
        format!("--bazelrc={}", system_rc.display()),
    ]
}
