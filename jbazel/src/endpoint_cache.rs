//! The last endpoint the orchestrator gave for this repository, kept on the desktop so the
//! pod-IP hop can dial it while GetServer confirms the session (the two overlap instead of
//! adding up).
//!
//! Trust: the cache only decides where to open a TCP/HTTP2 connection early. No cookie and
//! no command go over it until GetServer has answered READY with exactly this endpoint for
//! this session; a stale entry (after a bounce, a respawn, another IP) is dropped and the
//! fresh endpoint dialled instead. Then, as on every path, the server must answer with the
//! output base's response cookie.
//!
//! File: `$XDG_CACHE_HOME/jbazel/endpoints/<repo hash>` (else `~/.cache/...`), one line
//! `v1 <session> <namespace> <pod> <ip> <port>`. Pure parsing here; two small I/O helpers.

use std::path::{Path, PathBuf};

/// Where a session's server was reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub session_id: String,
    pub namespace: String,
    pub pod: String,
    pub ip: String,
    pub port: u16,
}

impl Endpoint {
    /// The cache line.
    pub fn to_line(&self) -> String {
        format!(
            "v1 {} {} {} {} {}\n",
            self.session_id, self.namespace, self.pod, self.ip, self.port
        )
    }

    /// Parses a cache line; anything else (older format, damage) is no entry.
    pub fn parse(line: &str) -> Option<Endpoint> {
        let mut f = line.split_whitespace();
        if f.next()? != "v1" {
            return None;
        }
        let (session_id, namespace, pod, ip) = (f.next()?, f.next()?, f.next()?, f.next()?);
        let port: u16 = f.next()?.parse().ok()?;
        if f.next().is_some() || ip.parse::<std::net::IpAddr>().is_err() || port == 0 {
            return None;
        }
        Some(Endpoint {
            session_id: session_id.into(),
            namespace: namespace.into(),
            pod: pod.into(),
            ip: ip.into(),
            port,
        })
    }
}

/// The cache file for a repository, or `None` without a cache or home directory.
pub fn path(repo_hash: &str) -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".cache"))
        })?;
    Some(base.join("jbazel/endpoints").join(repo_hash))
}

/// The cached endpoint, if any.
pub fn read(path: &Path) -> Option<Endpoint> {
    Endpoint::parse(&std::fs::read_to_string(path).ok()?)
}

/// Replaces the cached endpoint (atomically); failures only cost the next command the
/// overlap, so they are logged.
pub fn write(path: &Path, e: &Endpoint) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, e.to_line())?;
        std::fs::rename(&tmp, path)
    };
    if let Err(err) = write() {
        tracing::debug!(path = %path.display(), error = %err, "cannot cache the endpoint");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e() -> Endpoint {
        Endpoint {
            session_id: "boot-1".into(),
            namespace: "jbazel".into(),
            pod: "bazel-server-alice-65a21fb3".into(),
            ip: "10.244.0.7".into(),
            port: 9001,
        }
    }

    #[test]
    fn round_trip_and_damage() {
        assert_eq!(Endpoint::parse(&e().to_line()), Some(e()));
        for bad in [
            "",
            "v0 boot-1 jbazel pod 10.244.0.7 9001",
            "v1 boot-1 jbazel pod 10.244.0.7",
            "v1 boot-1 jbazel pod not-an-ip 9001",
            "v1 boot-1 jbazel pod 10.244.0.7 0",
            "v1 boot-1 jbazel pod 10.244.0.7 70000",
            "v1 boot-1 jbazel pod 10.244.0.7 9001 extra",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/b/hash");
        assert_eq!(read(&p), None);
        write(&p, &e());
        assert_eq!(read(&p), Some(e()));
        let mut other = e();
        other.session_id = "boot-2".into();
        write(&p, &other);
        assert_eq!(read(&p), Some(other));
    }
}
