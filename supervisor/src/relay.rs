//! The pod-IP hop's pod end: a TCP relay from `<pod IP>:<command port>` to the Bazel server's
//! command port on the pod's loopback (Bazel binds only `127.0.0.1`). jbazel connects here
//! when it can reach pod IPs (`JBAZEL_HOP=pod-ip`), saving the API server's port-forward.
//!
//! The relay adds no authority: every RPC still carries the request cookie, which only
//! whoever can read the output base has, and the server checks it. Bytes are copied both
//! ways until either side closes; each connection is its own task.

use std::net::{IpAddr, SocketAddr};

use proto::error_chain::ErrorChain;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// Binds `<ip>:<port>` (the pod IP, so the loopback port stays Bazel's).
pub async fn bind(ip: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind(SocketAddr::new(ip, port)).await
}

/// Accepts forever, relaying each connection to `to`.
pub async fn serve(listener: TcpListener, to: SocketAddr) {
    loop {
        let (mut inbound, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %ErrorChain(&e), "relay accept failed");
                continue;
            }
        };
        let _ = inbound.set_nodelay(true);
        tokio::spawn(
            async move {
                let mut outbound = match TcpStream::connect(to).await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!(%peer, error = %ErrorChain(&e), "relay: the Bazel server is not listening");
                        return;
                    }
                };
                let _ = outbound.set_nodelay(true);
                if let Err(e) = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await {
                    tracing::debug!(%peer, error = %ErrorChain(&e), "relay connection ended");
                }
            }
            .in_current_span(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_flow_both_ways() {
        let server = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let server_addr = server.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut s, _) = server.accept().await.expect("accept");
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.expect("read");
            s.write_all(&buf.map(|b| b.to_ascii_uppercase()))
                .await
                .expect("write");
        });
        let relay = bind("127.0.0.1".parse().expect("ip"), 0)
            .await
            .expect("relay");
        let relay_addr = relay.local_addr().expect("addr");
        tokio::spawn(serve(relay, server_addr));
        let mut c = TcpStream::connect(relay_addr).await.expect("connect");
        c.write_all(b"ping").await.expect("write");
        let mut got = [0u8; 4];
        tokio::time::timeout(std::time::Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&got, b"PING");
    }
}
