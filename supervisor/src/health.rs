//! Readiness for Kubernetes: a tiny HTTP/1.0 responder (`GET /readyz`, `GET /healthz`) and
//! the `supervisor probe` client.
//!
//! `/readyz` is 200 only while the Bazel server answers: its start Ping came back with the
//! right response cookie and the last health check passed (the supervising loop keeps
//! [`Readiness`] current); `/healthz` is 200 while the supervisor runs. Hand-rolled on purpose: two fixed routes do not need an HTTP stack.

use proto::error_chain::ErrorChain;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Longest request head read.
const MAX_REQUEST: usize = 2048;
/// A client gets this long to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Is the Bazel server ready, and a word on why (or why not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub ready: bool,
    pub detail: String,
}

/// Writer side of the readiness state.
#[derive(Clone)]
pub struct Readiness(watch::Sender<Status>);

impl Readiness {
    pub fn new() -> Readiness {
        Readiness(watch::Sender::new(Status {
            ready: false,
            detail: "starting".into(),
        }))
    }

    /// Sets the state; logs transitions only.
    pub fn set(&self, ready: bool, detail: impl Into<String>) {
        let detail = detail.into();
        self.0.send_if_modified(|s| {
            let changed = s.ready != ready;
            if changed {
                tracing::info!(ready, detail = %detail, "readiness changed");
            }
            if changed || s.detail != detail {
                *s = Status { ready, detail };
            }
            changed
        });
    }

    pub fn get(&self) -> Status {
        self.0.borrow().clone()
    }

    /// Resolves when the state is ready (for tasks that wait on it).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.0.subscribe()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

/// The response for a request line. Pure.
pub fn respond(request_line: &str, status: &Status) -> (u16, String) {
    let mut parts = request_line.split_ascii_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if method != "GET" && method != "HEAD" {
        return (405, "method not allowed\n".into());
    }
    // Ignore a query string (`/readyz?verbose`).
    match path.split('?').next().unwrap_or("") {
        proto::pod::HEALTHZ_PATH | "/livez" => (200, "ok\n".into()),
        proto::pod::READYZ_PATH if status.ready => (200, format!("ready: {}\n", status.detail)),
        proto::pod::READYZ_PATH => (503, format!("not ready: {}\n", status.detail)),
        _ => (404, "not found (try /readyz or /healthz)\n".into()),
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Serves `/readyz` and `/healthz` until the task is dropped.
pub async fn serve(listener: TcpListener, readiness: Readiness) {
    loop {
        let (mut sock, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "health endpoint: accept failed");
                continue;
            }
        };
        let readiness = readiness.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; MAX_REQUEST];
            let mut len = 0;
            let read = tokio::time::timeout(REQUEST_TIMEOUT, async {
                while len < buf.len() {
                    let n = sock.read(&mut buf[len..]).await?;
                    if n == 0 {
                        break;
                    }
                    len += n;
                    // The request line is all we need.
                    if buf[..len].contains(&b'\n') {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(())
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                tracing::debug!(%peer, "health endpoint: slow or broken client");
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let line = head.lines().next().unwrap_or("");
            let (code, body) = respond(line, &readiness.get());
            let is_head = line.starts_with("HEAD ");
            let resp = format!(
                "HTTP/1.0 {code} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                reason(code),
                body.len(),
                if is_head { "" } else { body.as_str() }
            );
            let _ = sock.write_all(resp.as_bytes()).await;
            let _ = sock.shutdown().await;
        });
    }
}

/// The address a local probe connects to: a wildcard listen address means loopback.
pub fn probe_target(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// `supervisor probe`: GET /readyz; Ok(true) only on 200. Blocking, no runtime.
pub fn probe(listen: SocketAddr, timeout: Duration) -> std::io::Result<(bool, String)> {
    let addr = probe_target(listen);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /readyz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut resp = Vec::new();
    s.take(64 * 1024).read_to_end(&mut resp)?;
    let text = String::from_utf8_lossy(&resp);
    let ok = text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200");
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    Ok((ok, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let ready = Status {
            ready: true,
            detail: "pid 7".into(),
        };
        let not = Status {
            ready: false,
            detail: "starting".into(),
        };
        let cases = [
            ("GET /readyz HTTP/1.1", &ready, 200),
            ("GET /readyz HTTP/1.1", &not, 503),
            ("GET /readyz?verbose HTTP/1.0", &ready, 200),
            ("HEAD /readyz HTTP/1.0", &ready, 200),
            ("GET /healthz HTTP/1.1", &not, 200),
            ("GET /other HTTP/1.1", &ready, 404),
            ("POST /readyz HTTP/1.1", &ready, 405),
            ("", &ready, 405),
        ];
        for (line, st, want) in cases {
            assert_eq!(respond(line, st).0, want, "{line:?}");
        }
        assert!(respond("GET /readyz HTTP/1.1", &not).1.contains("starting"));
    }

    #[test]
    fn probe_targets_loopback_for_wildcards() {
        let a: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        assert_eq!(probe_target(a), "127.0.0.1:8080".parse().expect("addr"));
        let b: SocketAddr = "10.0.0.5:8080".parse().expect("addr");
        assert_eq!(probe_target(b), b);
    }

    #[test]
    fn readiness_transitions() {
        let r = Readiness::new();
        assert!(!r.get().ready);
        r.set(true, "pid 1");
        assert_eq!(
            r.get(),
            Status {
                ready: true,
                detail: "pid 1".into()
            }
        );
        r.set(false, "server died");
        assert!(!r.get().ready);
    }
}
