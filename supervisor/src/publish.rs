//! Files the supervisor publishes in the output base for jbazel, which reads them through the
//! desktop's mirror (`R/U/H/out/jbazel/...`; the names are `proto::mirror`'s):
//!
//! - [`mirror::SYSTEM_RC`]: the image's system rc; jbazel sends it as an rc source.
//! - [`mirror::CLIENT_ENV`]: `KEY=VALUE` lines of the pod-side client env (PATH); jbazel sends
//!   them as `--client_env=...` instead of the desktop's values.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use proto::mirror;

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
    let err = |source| PublishError {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Writes both files into `<out>/jbazel/` (atomically: readers never see half a file).
pub fn publish(out: &Path, system_rc: &str, client_env: &str) -> Result<(), PublishError> {
    let dir = out.join(mirror::JBAZEL_DIR);
    std::fs::create_dir_all(&dir).map_err(|source| PublishError {
        path: dir.clone(),
        source,
    })?;
    write_atomic(&out.join(mirror::SYSTEM_RC), system_rc)?;
    write_atomic(&out.join(mirror::CLIENT_ENV), client_env)?;
    Ok(())
}

/// Whether the server's files are still in the output base as the server wrote them at
/// start: `clean --expunge` (which cannot remove a mounted output base) or a user's `rm -rf`
/// empties it under a live server, and the server never writes them again. Reads one file.
pub fn server_files_intact(out: &Path, request_cookie: &str) -> bool {
    std::fs::read_to_string(out.join(mirror::REQUEST_COOKIE))
        .is_ok_and(|c| c.trim() == request_cookie)
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
        let rc = std::fs::read_to_string(t.path().join(mirror::SYSTEM_RC)).expect("rc");
        let env = std::fs::read_to_string(t.path().join(mirror::CLIENT_ENV)).expect("env");
        assert_eq!((rc.as_str(), env.as_str()), ("build --x\n", "PATH=/bin\n"));
        // Again: overwrites, no temp files left behind.
        publish(t.path(), "build --y\n", "PATH=/bin\n").expect("publish again");
        let names: Vec<_> = std::fs::read_dir(t.path().join(mirror::JBAZEL_DIR))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }

    #[test]
    fn server_files_are_intact_only_with_the_same_cookie() {
        let t = tempfile::tempdir().expect("tempdir");
        assert!(!server_files_intact(t.path(), "c1"), "missing");
        std::fs::create_dir_all(t.path().join(mirror::SERVER_DIR)).expect("mkdir");
        std::fs::write(t.path().join(mirror::REQUEST_COOKIE), "c1\n").expect("write");
        assert!(server_files_intact(t.path(), "c1"));
        assert!(!server_files_intact(t.path(), "c2"), "another server's");
    }
}
