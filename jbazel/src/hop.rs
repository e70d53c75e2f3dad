//! The hop from the desktop to the Bazel server's command port in the pod, along one
//! [`Route`]:
//!
//! - [`Route::PortForward`] (default): the Kubernetes API server's port-forward, in process
//!   (kube-rs `Api::<Pod>::portforward`, WebSocket), honouring `KUBECONFIG` through
//!   `kube::Client::try_default`. Each HTTP/2 connection tonic opens is one port-forward
//!   stream, bridged into the `Channel` by a custom connector; no local port is bound and no
//!   kubectl is needed.
//! - [`Route::PodIp`]: straight to `<pod ip>:<port>` (where the network reaches pods and the
//!   supervisor relays); falls back to port-forward when it does not connect in time.
//! - [`Route::Fixed`]: the address in `JBAZEL_SERVER=host:port`, for tests and setups where
//!   the server's address is known; no orchestrator, no fallback.

use hyper_util::rt::TokioIo;
use k8s_openapi::api::core::v1::Pod;
use proto::error_chain::ErrorChain;
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long a TCP connect may take before a pod IP counts as unreachable.
pub const POD_IP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How to reach the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `JBAZEL_SERVER`: this address, as given.
    Fixed { addr: String },
    /// The API server's port-forward to the pod.
    PortForward {
        namespace: String,
        pod: String,
        port: u16,
    },
    /// The pod IP (the supervisor's relay), port-forward when it does not connect.
    PodIp {
        ip: String,
        port: u16,
        namespace: String,
        pod: String,
    },
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Route::Fixed { addr } => write!(f, "{addr} (JBAZEL_SERVER)"),
            Route::PortForward {
                namespace,
                pod,
                port,
            } => write!(
                f,
                "pod {namespace}/{pod} port {port} (API server port-forward)"
            ),
            Route::PodIp { ip, port, .. } => write!(f, "{ip}:{port} (pod IP)"),
        }
    }
}

/// Why the hop failed.
#[derive(Debug, thiserror::Error)]
pub enum HopError {
    #[error("invalid server address {addr:?}")]
    BadAddress {
        addr: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to the Bazel server at {target}")]
    Connect {
        target: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot load the Kubernetes client config (KUBECONFIG)")]
    Kube {
        #[source]
        source: kube::Error,
    },
}

fn endpoint(uri: String) -> Result<Endpoint, HopError> {
    Ok(Endpoint::from_shared(uri.clone())
        .map_err(|source| HopError::BadAddress { addr: uri, source })?
        .connect_timeout(Duration::from_secs(10))
        .tcp_nodelay(true)
        // Notice a dead connection during a long silent build (then Cancel, exit).
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true))
}

/// A channel to the Bazel server along `route`.
pub async fn connect(route: &Route) -> Result<Channel, HopError> {
    match route {
        Route::Fixed { addr } => dial(addr, None).await,
        Route::PortForward {
            namespace,
            pod,
            port,
        } => port_forward(namespace, pod, *port).await,
        Route::PodIp {
            ip,
            port,
            namespace,
            pod,
        } => match dial_pod_ip(ip, *port).await {
            Ok(c) => Ok(c),
            Err(e) => {
                tracing::warn!(pod = %pod, error = %ErrorChain(&e), "pod IP unreachable; using port-forward");
                port_forward(namespace, pod, *port).await
            }
        },
    }
}

/// A connection straight to `<ip>:<port>` (the supervisor's relay), no fallback.
pub async fn dial_pod_ip(ip: &str, port: u16) -> Result<Channel, HopError> {
    let addr = if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    };
    dial(&addr, Some(POD_IP_CONNECT_TIMEOUT)).await
}

/// A plain TCP connection to `addr` (`host:port`).
async fn dial(addr: &str, timeout: Option<Duration>) -> Result<Channel, HopError> {
    let mut ep = endpoint(format!("http://{addr}"))?;
    if let Some(t) = timeout {
        ep = ep.connect_timeout(t);
    }
    ep.connect().await.map_err(|source| HopError::Connect {
        target: addr.to_string(),
        source,
    })
}

async fn port_forward(namespace: &str, pod: &str, port: u16) -> Result<Channel, HopError> {
    let client = kube::Client::try_default()
        .await
        .map_err(|source| HopError::Kube { source })?;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client, namespace);
    let pod_name = pod.to_string();
    let connector = tower::service_fn(move |_: Uri| {
        let pods = pods.clone();
        let pod_name = pod_name.clone();
        async move {
            let mut pf = pods.portforward(&pod_name, &[port]).await?;
            let stream = pf.take_stream(port).ok_or_else(|| {
                std::io::Error::other(format!("port-forward to {pod_name}:{port} gave no stream"))
            })?;
            if let Some(err) = pf.take_error(port) {
                let pod = pod_name.clone();
                tokio::spawn(async move {
                    if let Some(msg) = err.await {
                        tracing::warn!(pod = %pod, port, error = %msg, "port-forward error");
                    }
                });
            }
            // The forwarder's task runs on its own; dropping the handle does not stop it.
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(TokioIo::new(stream))
        }
    });
    let target = format!("{namespace}/{pod}:{port}");
    endpoint(format!("http://{pod}.{namespace}.portforward:{port}"))?
        .connect_with_connector(connector)
        .await
        .map_err(|source| HopError::Connect { target, source })
}
