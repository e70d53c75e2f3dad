//! `orchestrator`: see `orchestrator --help`.

use anyhow::Context;
use clap::Parser;
use orchestrator::app::{self, Parts};
use orchestrator::config::Config;
use orchestrator::schema;
use orchestrator::store::Store;
use proto::error_chain::ErrorChain;

fn main() -> std::process::ExitCode {
    // `orchestrator probe ...`: the exec probe (its own flags; see `orchestrator probe --help`).
    if std::env::args_os().nth(1).is_some_and(|a| a == "probe") {
        let args = orchestrator::probe::ProbeArgs::parse_from(std::env::args_os().skip(1));
        return orchestrator::probe::run(args);
    }
    let config = Config::parse();
    let result = tokio::runtime::Runtime::new()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(config)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("orchestrator: ERROR: {}", ErrorChain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    proto::tls::install_crypto_provider();

    if config.create_database {
        schema::create_database(
            &config.spanner_emulator_host,
            &config.project,
            &config.instance,
            &config.database,
        )
        .await
        .context("--create-database")?;
    }
    let transport = config.transport()?;
    let tls = app::read_tls(&transport)?;
    let pod_ca = config
        .pod_ca_file()
        .map(|p| {
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read the pods' CA bundle {}", p.display()))
        })
        .transpose()?;
    let store = Store::connect(&config.database_path(), &config.spanner_emulator_host).await?;
    let kube = app::kube_client(config.kubeconfig.as_deref()).await?;
    app::ensure_namespace(&kube, &config.namespace).await?;
    tracing::info!(
        database = %config.database_path(),
        namespace = %config.namespace,
        image = %config.image,
        filestore_root = %config.filestore_root.display(),
        "orchestrator starting"
    );
    let mut running = app::bind_and_start(
        Parts {
            store,
            kube,
            tls,
            pods: config.pod_settings(pod_ca),
            service: config.service_settings(),
            resync_interval: config.resync_interval(),
        },
        config.listen,
    )
    .await?;
    let addr = running.addr;
    tokio::select! {
        // A task ended on its own (a panic, the server's error): exit with its error.
        ended = running.wait() => return Ok(ended?),
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            tracing::info!(%addr, "stopping");
        }
        _ = terminate() => tracing::info!(%addr, "SIGTERM: stopping"),
    }
    running.stop();
    running.wait().await?;
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::warn!(error = %ErrorChain(&e), "cannot install the SIGTERM handler");
            std::future::pending::<()>().await;
        }
    }
}
