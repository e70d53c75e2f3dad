//! Wiring: one Spanner store, one kube client, the reconciler and the gRPC server, started
//! together. `main` and the integration tests both start the orchestrator through here.

use std::net::SocketAddr;
use std::path::Path;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::PostParams;
use kube::runtime::reflector::Store as PodCache;
use kube::Api;
use proto::orchestrator::orchestrator_server::OrchestratorServer;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinError;
use tokio_util::task::AbortOnDropHandle;
use tonic::transport::server::TcpIncoming;

use crate::auth::{Authenticator, KubeReviewer};
use crate::config::Transport;
use crate::engine::{Engine, Reconciler};
use crate::notify::ReadyNotices;
use crate::pods::{KubePods, PodClient, PodSettings};
use crate::service::{OrchestratorService, ServiceSettings};
use crate::store::Store;

/// Errors starting or running the orchestrator.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot configure the Kubernetes client")]
    KubeConfig(#[from] kube::config::InferConfigError),
    #[error("cannot create the Kubernetes client")]
    KubeClient(#[source] kube::Error),
    #[error("cannot get or create namespace {namespace}")]
    Namespace {
        namespace: String,
        #[source]
        source: kube::Error,
    },
    #[error("gRPC server on {addr} failed")]
    Serve {
        addr: SocketAddr,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot read {what} {path}")]
    ReadTls {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad TLS settings")]
    Tls(#[source] tonic::transport::Error),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A long-lived task panicked (or was cancelled): the process must not go on without it.
    #[error("the {task} task failed")]
    Task {
        task: Task,
        #[source]
        source: JoinError,
    },
    /// A long-lived task that runs until the process stops returned by itself.
    #[error("the {task} task ended by itself")]
    Ended { task: Task },
}

/// The orchestrator's long-lived tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// The gRPC server: ends after [`Running::stop`], or with its error.
    Server,
    /// The reconciler and the pod cache's feed: run as long as the process.
    Reconciler,
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Task::Server => "gRPC server",
            Task::Reconciler => "reconciler",
        })
    }
}

/// What the process makes of a long-lived task that ended (`joined`: the task's join
/// result around its own). A task that panicked or was cancelled is an error, so `main`
/// exits non-zero and prints the panic; so is a reconciler that returned (it has no reason
/// to); the server's own error is passed on; only the server ending cleanly (after
/// [`Running::stop`]) is success.
pub fn task_ended(
    task: Task,
    joined: Result<Result<(), AppError>, JoinError>,
) -> Result<(), AppError> {
    match joined {
        Err(source) => Err(AppError::Task { task, source }),
        Ok(Err(e)) => Err(e),
        Ok(Ok(())) if task == Task::Server => Ok(()),
        Ok(Ok(())) => Err(AppError::Ended { task }),
    }
}

/// The kube client: from `kubeconfig` when given, else the standard lookup.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, AppError> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                AppError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .map_err(|source| AppError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer().await?,
    };
    kube::Client::try_from(config).map_err(AppError::KubeClient)
}

/// Creates `namespace` unless it exists.
pub async fn ensure_namespace(client: &kube::Client, namespace: &str) -> Result<(), AppError> {
    let api: Api<Namespace> = Api::all(client.clone());
    let err = |source| AppError::Namespace {
        namespace: namespace.to_string(),
        source,
    };
    if api.get_opt(namespace).await.map_err(err)?.is_some() {
        return Ok(());
    }
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(namespace.to_string()),
            ..Default::default()
        },
        ..Default::default()
    };
    match api.create(&PostParams::default(), &ns).await {
        Ok(_) => {
            tracing::info!(namespace, "created namespace");
            Ok(())
        }
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(err(e)),
    }
}

/// The orchestrator's TLS material, read.
#[derive(Clone)]
pub struct TlsMaterial {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// CA of users' client certificates (optional: bearer tokens need none).
    pub client_ca_pem: Option<Vec<u8>>,
}

/// Reads what [`Transport`] names (`None` for plaintext).
pub fn read_tls(transport: &Transport) -> Result<Option<TlsMaterial>, AppError> {
    let Transport::Tls {
        cert,
        key,
        client_ca,
    } = transport
    else {
        return Ok(None);
    };
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| AppError::ReadTls {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    Ok(Some(TlsMaterial {
        cert_pem: read("the TLS certificate", cert)?,
        key_pem: read("the TLS private key", key)?,
        client_ca_pem: client_ca
            .as_deref()
            .map(|p| read("the client CA bundle", p))
            .transpose()?,
    }))
}

/// What the orchestrator is made of.
pub struct Parts {
    pub store: Store,
    pub kube: kube::Client,
    /// TLS, or plaintext when `None` (the caller checked that this is allowed).
    pub tls: Option<TlsMaterial>,
    pub pods: PodSettings,
    pub service: ServiceSettings,
    /// How often the reconciler sweeps every active row.
    pub resync_interval: std::time::Duration,
}

/// A running orchestrator: gRPC server + reconciler. Dropping it stops both.
pub struct Running {
    /// Where the gRPC server listens.
    pub addr: SocketAddr,
    /// The reconciler's pod cache.
    pub cache: PodCache<Pod>,
    server: AbortOnDropHandle<Result<(), tonic::transport::Error>>,
    reconciler: AbortOnDropHandle<()>,
    shutdown: Option<oneshot::Sender<()>>,
}

/// Binds `listen` and starts everything.
pub async fn bind_and_start(parts: Parts, listen: SocketAddr) -> Result<Running, AppError> {
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| AppError::Bind {
            addr: listen,
            source,
        })?;
    start(parts, listener).await
}

/// Starts the reconciler and the gRPC server on `listener`.
pub async fn start(parts: Parts, listener: TcpListener) -> Result<Running, AppError> {
    let addr = listener.local_addr().map_err(|source| AppError::Bind {
        addr: "0.0.0.0:0"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        source,
    })?;
    let notices = ReadyNotices::default();
    let pods = PodClient::new(parts.kube.clone(), parts.pods);
    let (pods, cache_feed) = KubePods::new(pods, parts.kube.clone());
    let cache = pods.cache();
    let engine = std::sync::Arc::new(Engine::new(
        parts.store,
        pods,
        notices,
        parts.service.default_command_port,
    ));
    let reconciler = Reconciler::new(engine.clone(), parts.resync_interval);
    // The feed fills the cache that the reconciler and the requests read; neither ends by
    // itself, so either ending ends the task (and `task_ended` says so).
    let reconciler = AbortOnDropHandle::new(tokio::spawn(async move {
        tokio::select! {
            () = cache_feed.run() => {}
            () = reconciler.run() => {}
        }
    }));
    let auth = Authenticator::new(Box::new(KubeReviewer(parts.kube.clone())));
    let service = OrchestratorService::new(engine, std::sync::Arc::new(auth), parts.service);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &parts.tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &tls.cert_pem,
                &tls.key_pem,
            ))
            // Pods present a bearer token, not a certificate.
            .client_auth_optional(true)
            .timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &tls.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config).map_err(AppError::Tls)?;
    }
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<OrchestratorServer<OrchestratorService<Store, KubePods>>>()
        .await;
    let (shutdown, shutdown_rx) = oneshot::channel::<()>();
    let server = AbortOnDropHandle::new(tokio::spawn(
        builder
            .add_service(health_service)
            .add_service(OrchestratorServer::new(service))
            // Our own listener: tonic's `tcp_nodelay` does not apply to it, so set it on
            // the incoming stream (without it, Nagle + delayed ACK adds milliseconds to
            // every small response).
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                async {
                    let _ = shutdown_rx.await;
                },
            ),
    ));
    tracing::info!(%addr, tls = parts.tls.is_some(), "orchestrator listening (gRPC: jbazel.orchestrator.v1.Orchestrator, grpc.health.v1.Health)");
    Ok(Running {
        addr,
        cache,
        server,
        reconciler,
        shutdown: Some(shutdown),
    })
}

impl Running {
    /// Waits until a long-lived task ends, and says what that means ([`task_ended`]): the
    /// server ends only on [`Running::stop`] or an error, the reconciler never by itself.
    /// Cancel-safe: `main` waits on it together with the signals, then again after
    /// [`Running::stop`].
    pub async fn wait(&mut self) -> Result<(), AppError> {
        let addr = self.addr;
        tokio::select! {
            joined = &mut self.server => task_ended(
                Task::Server,
                joined.map(|served| served.map_err(|source| AppError::Serve { addr, source })),
            ),
            joined = &mut self.reconciler => task_ended(Task::Reconciler, joined.map(Ok)),
        }
    }

    /// Asks the server to stop accepting requests and to finish the running ones.
    pub fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Drop for Running {
    /// Stops the server; both tasks are aborted as their handles drop.
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn panicked() -> JoinError {
        tokio::spawn(async { panic!("boom") })
            .await
            .expect_err("the task panics")
    }

    #[tokio::test]
    async fn a_panicked_task_is_an_error_naming_it() {
        for task in [Task::Server, Task::Reconciler] {
            let e = task_ended(task, Err(panicked().await)).expect_err("a panic is an error");
            assert!(
                matches!(e, AppError::Task { task: t, .. } if t == task),
                "{e:?}"
            );
            let chain = proto::error_chain::ErrorChain(&e).to_string();
            assert!(chain.contains(&task.to_string()), "{chain}");
            assert!(chain.contains("boom"), "the panic is printed: {chain}");
        }
    }

    #[test]
    fn only_the_server_may_end_cleanly() {
        assert!(task_ended(Task::Server, Ok(Ok(()))).is_ok());
        assert!(matches!(
            task_ended(Task::Reconciler, Ok(Ok(()))),
            Err(AppError::Ended {
                task: Task::Reconciler
            })
        ));
        let bind = AppError::Bind {
            addr: SocketAddr::from(([127, 0, 0, 1], 1)),
            source: std::io::Error::other("x"),
        };
        assert!(matches!(
            task_ended(Task::Server, Ok(Err(bind))),
            Err(AppError::Bind { .. })
        ));
    }
}
