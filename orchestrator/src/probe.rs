//! `orchestrator probe`: the readiness and liveness check of an orchestrator container.
//!
//! Kubernetes 1.20 has no gRPC probe, so the Deployment runs this as an exec probe in the
//! orchestrator's own container. It asks grpc.health.v1 `Check` for the Orchestrator
//! service on the local listen port and exits 0 only when the answer is SERVING: a server
//! that accepts TCP but no longer answers gRPC, or answers NOT_SERVING, fails the probe.
//!
//! It reads the orchestrator's own environment (the probe runs with the container's env), so
//! the probe command needs no arguments:
//! - `JBAZEL_ORCHESTRATOR_LISTEN`: the port (an unspecified address means loopback);
//! - `JBAZEL_TLS_CERT_FILE`: when set, the port serves TLS and the probe speaks TLS;
//! - the certificate is verified as the server pods verify it (they report to the same
//!   server): against the CA they use (`JBAZEL_PROBE_CA_FILE`, else
//!   `JBAZEL_CLIENT_CA_FILE`, the orchestrator's default for the pods' CA) and for the name in
//!   `JBAZEL_POD_ORCHESTRATOR_ADDR`. A certificate the pods would refuse fails the probe.
//!   The probe never skips verification: it sends no credential, but a passing probe must
//!   mean the pods can report.
//!
//! Pure decisions ([`plan`]) are separate from the one network call ([`check`]).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The service whose health the probe asks for (the server marks it SERVING once it serves).
pub const ORCHESTRATOR_SERVICE: &str = proto::orchestrator::orchestrator_server::SERVICE_NAME;

/// Checks that the orchestrator on this host answers grpc.health.v1 Check with SERVING
/// (exit 0); any other answer, or none within the timeout, exits 1. For exec probes: with
/// no flags it reads the orchestrator's environment (listen port, TLS, CA, the pods' name
/// of the orchestrator).
#[derive(Debug, Clone, Parser)]
#[command(name = "orchestrator probe", bin_name = "orchestrator probe")]
pub struct ProbeArgs {
    /// URL to check (http:// or https://); default: the local listen port, https when the
    /// orchestrator serves TLS.
    #[arg(long)]
    pub addr: Option<String>,

    /// The orchestrator's listen address (its --listen); the probe's default target port.
    #[arg(
        long,
        env = "JBAZEL_ORCHESTRATOR_LISTEN",
        default_value = "0.0.0.0:50051"
    )]
    pub listen: SocketAddr,

    /// The orchestrator's TLS certificate (its --tls-cert-file): when set, the default
    /// target is https. Only its presence matters here.
    #[arg(long, env = "JBAZEL_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,

    /// CA bundle that verifies the orchestrator's certificate; default: the client CA
    /// (JBAZEL_CLIENT_CA_FILE), which is also the pods' default CA.
    #[arg(long, env = "JBAZEL_PROBE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,

    /// The orchestrator's client CA (its --client-ca-file): the fallback of --ca-file.
    #[arg(long, env = "JBAZEL_CLIENT_CA_FILE", value_name = "FILE", hide = true)]
    pub client_ca_file: Option<PathBuf>,

    /// The orchestrator's URL as the pods reach it (its --pod-orchestrator-addr): its host is
    /// the name the certificate is verified for, unless --server-name says otherwise.
    #[arg(long, env = "JBAZEL_POD_ORCHESTRATOR_ADDR", hide = true)]
    pub pod_orchestrator_addr: Option<String>,

    /// Name (DNS name or IP address) to verify the certificate for.
    #[arg(long)]
    pub server_name: Option<String>,

    /// grpc.health.v1 service to ask about ("" is the whole server).
    #[arg(long, default_value = ORCHESTRATOR_SERVICE)]
    pub service: String,

    /// Seconds the whole check may take (connect, handshake, answer).
    #[arg(long, default_value_t = 3.0, value_parser = parse_timeout)]
    pub timeout_secs: f64,
}

/// What to connect to and how to verify it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    pub tls: Option<TlsCheck>,
}

/// How the server's certificate is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsCheck {
    pub ca_file: PathBuf,
    pub server_name: String,
}

/// Why the probe could not check.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "{url} is TLS but no CA bundle verifies it: give --ca-file (or JBAZEL_CLIENT_CA_FILE)"
    )]
    NoCa { url: String },
    #[error("bad probe address {url}: want http://HOST:PORT or https://HOST:PORT")]
    BadUrl { url: String },
    #[error("cannot read the CA bundle {path}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("bad endpoint {url}")]
    Endpoint {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("cannot connect to {url}")]
    Connect {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("grpc.health.v1 Check({service:?}) on {url} failed")]
    Check {
        url: String,
        service: String,
        #[source]
        source: tonic::Status,
    },
    #[error("no answer from {url} within {secs} s")]
    Timeout { url: String, secs: f64 },
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
}

fn parse_timeout(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(t) if t > 0.0 && t <= 600.0 => Ok(t),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 600]")),
    }
}

/// The address a local client reaches `listen` at: loopback when it listens on every
/// address.
pub fn local_address(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// The host of an `http(s)://HOST[:PORT][/...]` URL, without IPv6 brackets.
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split_once(']')?.0
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

/// Decides the target from the flags and the orchestrator's environment (pure).
pub fn plan(args: &ProbeArgs) -> Result<Target, ProbeError> {
    let url = match &args.addr {
        Some(url) => url.clone(),
        None => {
            let scheme = if args.tls_cert_file.is_some() {
                "https"
            } else {
                "http"
            };
            format!("{scheme}://{}", local_address(args.listen))
        }
    };
    let host = url_host(&url).ok_or_else(|| ProbeError::BadUrl { url: url.clone() })?;
    if !url.starts_with("https://") {
        return Ok(Target { url, tls: None });
    }
    let ca_file = args
        .ca_file
        .clone()
        .or_else(|| args.client_ca_file.clone())
        .ok_or_else(|| ProbeError::NoCa { url: url.clone() })?;
    // The name the pods verify (their URL's host), so a certificate that would fail them
    // fails the probe; a given --server-name wins; the URL's own host last.
    let pods_name = args
        .pod_orchestrator_addr
        .as_deref()
        .filter(|a| a.starts_with("https://"))
        .and_then(url_host);
    let server_name = args
        .server_name
        .clone()
        .or(pods_name.map(str::to_string))
        .unwrap_or_else(|| host.to_string());
    Ok(Target {
        url,
        tls: Some(TlsCheck {
            ca_file,
            server_name,
        }),
    })
}

/// Asks `target` for the health of `service`, within `timeout`.
pub async fn check(
    target: &Target,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, ProbeError> {
    let url = target.url.clone();
    let endpoint_err = |source| ProbeError::Endpoint {
        url: url.clone(),
        source,
    };
    let mut ep = Endpoint::from_shared(url.clone())
        .map_err(endpoint_err)?
        .connect_timeout(timeout)
        .timeout(timeout);
    if let Some(tls) = &target.tls {
        let ca = std::fs::read(&tls.ca_file).map_err(|source| ProbeError::ReadCa {
            path: tls.ca_file.display().to_string(),
            source,
        })?;
        ep = ep
            .tls_config(
                ClientTlsConfig::new()
                    .ca_certificate(Certificate::from_pem(ca))
                    .domain_name(tls.server_name.clone()),
            )
            .map_err(endpoint_err)?;
    }
    let ask = async {
        let channel = ep.connect().await.map_err(|source| ProbeError::Connect {
            url: url.clone(),
            source,
        })?;
        let answer = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|source| ProbeError::Check {
                url: url.clone(),
                service: service.to_string(),
                source,
            })?;
        Ok(answer.into_inner().status())
    };
    tokio::time::timeout(timeout, ask)
        .await
        .map_err(|_| ProbeError::Timeout {
            url: url.clone(),
            secs: timeout.as_secs_f64(),
        })?
}

/// Runs the probe: prints the status (stdout) or the error (stderr), which the kubelet
/// keeps in the pod's events; exit 0 only for SERVING.
pub fn run(args: ProbeArgs) -> ExitCode {
    proto::tls::install_crypto_provider();
    let result = plan(&args).and_then(|target| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ProbeError::Runtime)?;
        let status = rt.block_on(check(
            &target,
            &args.service,
            Duration::from_secs_f64(args.timeout_secs),
        ))?;
        Ok((target, status))
    });
    match result {
        Ok((target, ServingStatus::Serving)) => {
            println!("{}: {} SERVING", target.url, args.service);
            ExitCode::SUCCESS
        }
        Ok((target, status)) => {
            println!("{}: {} {}", target.url, args.service, status.as_str_name());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("orchestrator probe: {}", proto::error_chain::ErrorChain(&e));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Parses without the environment (the test process's env must not leak in).
    fn args(flags: &[&str]) -> ProbeArgs {
        let matches = ProbeArgs::command()
            .mut_args(|a| a.env(None::<&'static str>))
            .try_get_matches_from(std::iter::once("probe").chain(flags.iter().copied()))
            .expect("flags parse");
        <ProbeArgs as clap::FromArgMatches>::from_arg_matches(&matches).expect("args")
    }

    #[test]
    fn cli_is_consistent() {
        ProbeArgs::command().debug_assert();
    }

    #[test]
    fn plaintext_on_loopback_by_default() {
        let t = plan(&args(&[])).expect("plan");
        assert_eq!(
            t,
            Target {
                url: "http://127.0.0.1:50051".into(),
                tls: None
            }
        );
        let t = plan(&args(&["--listen=[::]:7000"])).expect("plan");
        assert_eq!(t.url, "http://[::1]:7000");
        let t = plan(&args(&["--listen=10.1.2.3:7000"])).expect("plan");
        assert_eq!(t.url, "http://10.1.2.3:7000", "a specific address is kept");
    }

    #[test]
    fn tls_verifies_the_name_the_pods_use_with_their_ca() {
        let t = plan(&args(&[
            "--tls-cert-file=/tls/tls.crt",
            "--client-ca-file=/ca/ca.crt",
            "--pod-orchestrator-addr=https://10.96.0.50:50051",
        ]))
        .expect("plan");
        assert_eq!(t.url, "https://127.0.0.1:50051");
        assert_eq!(
            t.tls,
            Some(TlsCheck {
                ca_file: "/ca/ca.crt".into(),
                server_name: "10.96.0.50".into()
            })
        );
        let t = plan(&args(&[
            "--tls-cert-file=/tls/tls.crt",
            "--client-ca-file=/ca/ca.crt",
            "--ca-file=/other/ca.crt",
            "--pod-orchestrator-addr=https://jbazel-orchestrator.jbazel.svc:50051/",
            "--server-name=probe.example",
        ]))
        .expect("plan");
        let tls = t.tls.expect("tls");
        assert_eq!(tls.ca_file, PathBuf::from("/other/ca.crt"));
        assert_eq!(tls.server_name, "probe.example");
    }

    #[test]
    fn tls_without_a_pods_name_verifies_the_url_host() {
        let t = plan(&args(&[
            "--addr=https://localhost:9",
            "--ca-file=/ca.crt",
            "--pod-orchestrator-addr=http://10.0.0.1:1",
        ]))
        .expect("plan");
        assert_eq!(t.tls.expect("tls").server_name, "localhost");
    }

    #[test]
    fn tls_without_a_ca_is_refused_not_unverified() {
        let e = plan(&args(&["--tls-cert-file=/tls/tls.crt"])).expect_err("no CA");
        assert!(e.to_string().contains("--ca-file"), "{e}");
        assert!(plan(&args(&["--addr=ftp://x:1"])).is_err());
    }

    #[test]
    fn url_hosts() {
        assert_eq!(url_host("https://a.b:1/x"), Some("a.b"));
        assert_eq!(url_host("http://10.0.0.1"), Some("10.0.0.1"));
        assert_eq!(url_host("https://[fd00::1]:443"), Some("fd00::1"));
        assert_eq!(url_host("https://u@h:1"), Some("h"));
        assert_eq!(url_host("https://:1"), None);
        assert_eq!(url_host("h:1"), None);
    }

    #[test]
    fn timeouts() {
        assert!(parse_timeout("0").is_err());
        assert!(parse_timeout("-1").is_err());
        assert!(parse_timeout("x").is_err());
        assert_eq!(parse_timeout("0.5"), Ok(0.5));
    }

    async fn health_server(
        serving: bool,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (reporter, service) = tonic_health::server::health_reporter();
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter
            .set_service_status(ORCHESTRATOR_SERVICE, status)
            .await;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tonic::transport::server::TcpIncoming::from(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        (addr, stop, server)
    }

    fn local(addr: SocketAddr) -> Target {
        Target {
            url: format!("http://{addr}"),
            tls: None,
        }
    }

    #[tokio::test]
    async fn answers_serving_and_not_serving() {
        let timeout = Duration::from_secs(5);
        let (addr, stop, server) = health_server(true).await;
        assert_eq!(
            check(&local(addr), ORCHESTRATOR_SERVICE, timeout)
                .await
                .expect("check"),
            ServingStatus::Serving
        );
        let unknown = check(&local(addr), "no.such.Service", timeout)
            .await
            .expect_err("an unknown service is NOT_FOUND");
        assert!(matches!(unknown, ProbeError::Check { .. }), "{unknown}");
        let _ = stop.send(());
        let _ = server.await;

        let (addr, stop, server) = health_server(false).await;
        assert_eq!(
            check(&local(addr), ORCHESTRATOR_SERVICE, timeout)
                .await
                .expect("check"),
            ServingStatus::NotServing
        );
        let _ = stop.send(());
        let _ = server.await;
    }

    #[tokio::test]
    async fn nothing_listening_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let e = check(&local(addr), ORCHESTRATOR_SERVICE, Duration::from_secs(5))
            .await
            .expect_err("refused");
        assert!(matches!(e, ProbeError::Connect { .. }), "{e}");
    }
}
