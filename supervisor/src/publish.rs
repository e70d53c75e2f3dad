//! Files the supervisor publishes in the output base for jbazel, which reads them through the
//! desktop's mirror (`R/U/H/out/jbazel/...`):
//!
//! - `jbazel/system.bazelrc`: the image's system rc; jbazel sends it as an rc source.
//! - `jbazel/client-env`: `KEY=VALUE` lines of the pod-side client env (PATH); jbazel sends
//!   them as `--client_env=...` instead of the desktop's values.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// Subdirectory of the output base.
pub const DIR: &str = "jbazel";
pub const SYSTEM_RC: &str = "system.bazelrc";
pub const CLIENT_ENV: &str = "client-env";

/// PATH when the pod has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The client env variables published.
pub const CLIENT_ENV_VARS: &[&str] = &["PATH"];

#[derive(Debug, thiserror::Error)]
#[error("cannot publish {path:?}")]
pub struct PublishError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// `KEY=VALUE` lines for the given variables; values with a newline are left out. Pure.
pub fn client_env_text(get: impl Fn(&str) -> Option<String>) -> String {
    let mut s = String::new();
    for k in CLIENT_ENV_VARS {
        let v = get(k).or_else(|| (*k == "PATH").then(|| DEFAULT_PATH.to_owned()));
        if let Some(v) = v.filter(|v| !v.contains('\n') && !v.contains('\0')) {
            s.push_str(k);
            s.push('=');
            s.push_str(&v);
            s.push('\n');
        }
    }
    s
}

fn write_atomic(path: &Path, text: &str) -> Result<(), PublishError> {
    write_atomic_mode(path, text, 0o644)
}

fn write_atomic_mode(path: &Path, text: &str, mode: u32) -> Result<(), PublishError> {
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PublishError {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes both files into `<out>/jbazel/` (atomically: readers never see half a file).
pub fn publish(out: &Path, system_rc: &str, client_env: &str) -> Result<(), PublishError> {
    let dir = out.join(DIR);
    std::fs::create_dir_all(&dir).map_err(|source| PublishError {
        path: dir.clone(),
        source,
    })?;
    write_atomic(&dir.join(SYSTEM_RC), system_rc)?;
    write_atomic(&dir.join(CLIENT_ENV), client_env)?;
    Ok(())
}

/// The server's own files, as it wrote them at start (`out/server/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerFileTexts<'a> {
    pub pid: i32,
    pub command_port: &'a str,
    pub request_cookie: &'a str,
    pub response_cookie: &'a str,
}

/// Writes the live server's files back when they were deleted under it (`clean --expunge`
/// on a mounted output base, or a user's `rm -rf`): jbazel finds the server through them.
/// The server itself never rewrites them. Returns whether anything was missing. Cookies
/// are 0600: whoever can read them may command the server.
pub fn restore_server_files(out: &Path, f: &ServerFileTexts<'_>) -> Result<bool, PublishError> {
    let dir = out.join("server");
    let cookie = dir.join("request_cookie");
    if std::fs::read_to_string(&cookie).is_ok_and(|c| c.trim() == f.request_cookie) {
        return Ok(false);
    }
    std::fs::create_dir_all(&dir).map_err(|source| PublishError {
        path: dir.clone(),
        source,
    })?;
    write_atomic(&dir.join("server.pid.txt"), &f.pid.to_string())?;
    write_atomic(&dir.join("command_port"), f.command_port)?;
    write_atomic_mode(&dir.join("response_cookie"), f.response_cookie, 0o600)?;
    // Last: jbazel reads the request cookie first, so its presence means the set is whole.
    write_atomic_mode(&cookie, f.request_cookie, 0o600)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lines() {
        assert_eq!(client_env_text(|_| Some("/a:/b".into())), "PATH=/a:/b\n");
        assert_eq!(client_env_text(|_| None), format!("PATH={DEFAULT_PATH}\n"));
        assert_eq!(client_env_text(|_| Some("x\ny".into())), "");
    }

    #[test]
    fn publishes_both_files() {
        let t = tempfile::tempdir().expect("tempdir");
        publish(t.path(), "build --x\n", "PATH=/bin\n").expect("publish");
        let rc = std::fs::read_to_string(t.path().join("jbazel/system.bazelrc")).expect("rc");
        let env = std::fs::read_to_string(t.path().join("jbazel/client-env")).expect("env");
        assert_eq!((rc.as_str(), env.as_str()), ("build --x\n", "PATH=/bin\n"));
        // Again: overwrites, no temp files left behind.
        publish(t.path(), "build --y\n", "PATH=/bin\n").expect("publish again");
        let names: Vec<_> = std::fs::read_dir(t.path().join("jbazel"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn server_files_are_restored_only_when_missing() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().expect("tempdir");
        let f = ServerFileTexts {
            pid: 42,
            command_port: "127.0.0.1:9001",
            request_cookie: "req",
            response_cookie: "resp",
        };
        assert!(restore_server_files(t.path(), &f).expect("restore"));
        let dir = t.path().join("server");
        assert_eq!(
            std::fs::read_to_string(dir.join("request_cookie")).expect("read"),
            "req"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("response_cookie")).expect("read"),
            "resp"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("command_port")).expect("read"),
            "127.0.0.1:9001"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("server.pid.txt")).expect("read"),
            "42"
        );
        let mode = std::fs::metadata(dir.join("request_cookie"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(
            !restore_server_files(t.path(), &f).expect("again"),
            "present: untouched"
        );
        std::fs::remove_dir_all(&dir).expect("rm");
        assert!(restore_server_files(t.path(), &f).expect("after rm"));
    }
}
