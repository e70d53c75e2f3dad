//! A Cloud Spanner emulator for one test (or one demo run).
//!
//! [`SpannerEmulator::start`] runs the preinstalled `emulator_main` on a free loopback port,
//! in its own process group, creates an instance and a database from the repository's
//! `schema.sql` over the admin gRPC API (`orchestrator::schema`; no REST gateway, no gcloud),
//! and kills the whole
//! group when the value is dropped. Each test gets its own emulator: no shared state, no
//! ordering between tests.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use gcloud_gax::conn::Environment;
use gcloud_spanner::client::{Client, ClientConfig};

use crate::process::GroupChild;
use testkit::free_port;

/// Where the Google Cloud SDK installs the emulator; `SPANNER_EMULATOR_BIN` overrides it.
pub const DEFAULT_EMULATOR_BIN: &str =
    "/usr/lib/google-cloud-sdk/bin/cloud_spanner_emulator/emulator_main";

const PROJECT: &str = "jbazel-test";
const INSTANCE: &str = "jbazel";
const DATABASE: &str = "sessions";
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Why the emulator fixture could not be set up.
#[derive(thiserror::Error)]
pub enum EmulatorError {
    /// The emulator binary is missing or not executable.
    #[error("cannot start the Spanner emulator {bin} (install the Cloud SDK's cloud-spanner-emulator component, or name its emulator_main in SPANNER_EMULATOR_BIN)")]
    Spawn { bin: PathBuf, source: io::Error },
    /// No free loopback port could be reserved.
    #[error("cannot reserve a loopback port for the Spanner emulator")]
    Port(#[source] io::Error),
    /// The emulator exited or did not listen in time.
    #[error("the Spanner emulator on {addr} did not start: {reason}")]
    NotListening { addr: SocketAddr, reason: String },
    /// An admin call (create instance/database) failed.
    #[error("Spanner emulator admin call {call} failed: {message}")]
    Admin { call: &'static str, message: String },
    /// The data client could not be created.
    #[error("cannot create a Spanner client for {database}: {message}")]
    Client { database: String, message: String },
}
debug_is_the_chain!(EmulatorError);

/// A running emulator with the project's database created. Dropping it stops the emulator.
pub struct SpannerEmulator {
    child: GroupChild,
    addr: SocketAddr,
}

/// How to start an emulator; the default is a test's: a free port, killed on drop.
#[derive(Debug, Clone, Copy, Default)]
pub struct EmulatorOptions {
    /// Listen here instead of on a free loopback port (the demo uses 127.0.0.1:9010).
    pub addr: Option<SocketAddr>,
    /// Outlive this handle and this process (the demo leaves the emulator running).
    pub detached: bool,
}

impl SpannerEmulator {
    /// Starts an emulator on a free port and creates the instance, the database and the
    /// schema. Fails loudly (never skips) when the emulator cannot run.
    pub async fn start() -> Result<Self, EmulatorError> {
        Self::start_with(EmulatorOptions::default()).await
    }

    /// Starts an emulator as `options` say and creates the instance, database and schema.
    pub async fn start_with(options: EmulatorOptions) -> Result<Self, EmulatorError> {
        let bin = std::env::var_os("SPANNER_EMULATOR_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_EMULATOR_BIN));
        let addr = match options.addr {
            Some(addr) => addr,
            None => SocketAddr::from(([127, 0, 0, 1], free_port().map_err(EmulatorError::Port)?)),
        };
        let mut cmd = Command::new(&bin);
        cmd.arg(format!("--host_port={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        // Not detached until set up: a failure below still kills the group on drop.
        let child = GroupChild::spawn(&mut cmd, options.detached).map_err(|source| {
            EmulatorError::Spawn {
                bin: bin.clone(),
                source,
            }
        })?;
        let mut emulator = SpannerEmulator { child, addr };
        emulator
            .child
            .wait_listening(addr, START_DEADLINE)
            .map_err(|reason| EmulatorError::NotListening { addr, reason })?;
        emulator.create_database().await?;
        if options.detached {
            emulator.child.detach();
        }
        Ok(emulator)
    }

    /// Kills the emulator (SIGKILL): its data go with it, as with any emulator restart.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// Starts a fresh emulator on the same address and creates the instance, database
    /// and schema again (an operator bringing it back).
    pub async fn restart(&mut self) -> Result<(), EmulatorError> {
        self.child.kill();
        let fresh = Self::start_with(EmulatorOptions {
            addr: Some(self.addr),
            detached: false,
        })
        .await?;
        *self = fresh;
        Ok(())
    }

    /// Process group id (= pid of the emulator): what a tear-down kills.
    pub fn pgid(&self) -> u32 {
        self.child.pgid()
    }

    /// `host:port` for `SPANNER_EMULATOR_HOST`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// The project id the fixture uses.
    pub fn project(&self) -> &'static str {
        PROJECT
    }

    /// The instance id the fixture uses.
    pub fn instance(&self) -> &'static str {
        INSTANCE
    }

    /// The database id the fixture uses.
    pub fn database(&self) -> &'static str {
        DATABASE
    }

    /// `projects/P/instances/I/databases/D`.
    pub fn database_path(&self) -> String {
        format!("projects/{PROJECT}/instances/{INSTANCE}/databases/{DATABASE}")
    }

    /// A data client on the fixture's database.
    pub async fn client(&self) -> Result<Client, EmulatorError> {
        let config = ClientConfig {
            environment: Environment::Emulator(self.host()),
            ..Default::default()
        };
        Client::new(self.database_path(), config)
            .await
            .map_err(|e| EmulatorError::Client {
                database: self.database_path(),
                message: e.to_string(),
            })
    }

    async fn create_database(&self) -> Result<(), EmulatorError> {
        // The orchestrator owns the schema and how it is applied; the fixture reuses it.
        orchestrator::schema::create_database(&self.host(), PROJECT, INSTANCE, DATABASE)
            .await
            .map_err(|e| EmulatorError::Admin {
                call: "create instance and database",
                message: e.to_string(),
            })
    }
}
