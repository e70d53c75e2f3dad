//! `orchestrator`: see `orchestrator --help`.

use anyhow::Context;
use clap::Parser;
use orchestrator::app::{self, Parts};
use orchestrator::config::Config;
use orchestrator::schema;
use orchestrator::store::Store;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
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
            pods: config.pod_settings(),
            service: config.service_settings(),
        },
        config.listen,
    )
    .await?;
    let addr = running.addr;
    tokio::select! {
        r = tokio::signal::ctrl_c() => {
            r.context("waiting for Ctrl-C")?;
            tracing::info!(%addr, "stopping");
            running.stop();
        }
        _ = terminate() => {
            tracing::info!(%addr, "SIGTERM: stopping");
            running.stop();
        }
    }
    running.wait().await?;
    Ok(())
}

async fn terminate() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot install the SIGTERM handler");
            std::future::pending::<()>().await;
        }
    }
}
