//! `supervisor`: wires the command line to the modules. See `lib.rs` for the reading order.
//!
//! Order matters: validate (reads only) -> plan (pure) -> pivot while single-threaded -> only
//! then build the (current-thread) tokio runtime, whose threads and children inherit the view.

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use tracing::Instrument as _;

use proto::error_chain::ErrorChain;
use supervisor::cli::{Cli, Command, Format, LogFormat, ModeRequest};
use supervisor::config::{Config, Job};
use supervisor::health;
use supervisor::jobs::{self, ServeSettings};
use supervisor::owner::{self, OwnerFs};
use supervisor::pivot::{self, PivotError};
use supervisor::plan::{self, HostFacts, Mode};
use supervisor::reaper::Reaper;

/// Exit code for a refused configuration (bad names, paths, missing dirs).
const EXIT_CONFIG: i32 = 2;
/// Exit code for a failure to set up (no mode, pivot failed, no runtime).
const EXIT_SETUP: i32 = 1;

struct Failure {
    code: i32,
    error: anyhow::Error,
}

impl Failure {
    fn new(code: i32, error: impl Into<anyhow::Error>) -> Failure {
        Failure {
            code,
            error: error.into(),
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn real_main(cli: Cli) -> Result<i32, Failure> {
    let opts = &cli.opts;
    // bwrap mode's helper, in the view: nothing to validate, nothing else to do.
    if let Some(Command::DropPrivileges {
        uid,
        gid,
        switch,
        cmd,
    }) = &cli.command
    {
        let (code, e) = pivot::exec_dropped(switch.then_some((*uid, *gid)), cmd);
        eprintln!(
            "supervisor drop-privileges: cannot run {:?} as uid {uid} gid {gid}: {e}",
            cmd.first().map(String::as_str).unwrap_or("")
        );
        return Ok(code);
    }
    if let Some(Command::Probe) = cli.command {
        let addr = health::probe_target(opts.health_addr);
        return Ok(
            match health::probe(opts.health_addr, Duration::from_secs(3)) {
                Ok((true, body)) => {
                    println!("{body}");
                    0
                }
                Ok((false, body)) => {
                    println!("{body}");
                    1
                }
                Err(e) => {
                    eprintln!("supervisor probe: {addr}: {e}");
                    1
                }
            },
        );
    }

    let cfg = Config::load(opts, cli.command.as_ref()).map_err(|e| Failure::new(EXIT_CONFIG, e))?;
    let span = tracing::info_span!(
        "supervisor",
        user = %cfg.identity.user_id,
        repo_hash = %cfg.identity.repo_hash,
        session = cfg.identity.session_id.as_deref().unwrap_or("-"),
        pod = %cfg.report.pod_name,
    );
    let entered = span.enter();
    let facts = HostFacts::detect(&opts.bwrap);
    let mut the_plan = plan::plan(&cfg, opts.mode, &facts, &opts.bwrap)
        .map_err(|e| Failure::new(EXIT_SETUP, e))?;

    if opts.dry_run {
        let image = plan::ImageFacts::detect(&opts.system_bazelrc, &opts.bazel);
        let needs = match &cfg.job {
            Job::Serve => plan::needs(&facts, &image, &the_plan.mode),
            Job::Run(_) => Vec::new(),
        };
        match opts.format {
            Format::Human => print!("{}", plan::render::dry_run_human(&the_plan, &needs)),
            Format::Json => {
                let json = plan::render::dry_run_json(&the_plan, &facts, &image, &needs)
                    .context("serializing the plan")
                    .map_err(|e| Failure::new(EXIT_SETUP, e))?;
                println!("{json}");
            }
        }
        return Ok(0);
    }

    tracing::info!(
        mode = ?the_plan.mode.mode,
        user_namespace = the_plan.mode.user_namespace,
        reason = %the_plan.mode.reason,
        src = %the_plan.src.display(),
        out = %the_plan.out.display(),
        "pivot mode chosen"
    );
    // ReportReady's token lives in a secret dir the pivot hides from this process too.
    if let Err(e) = supervisor::report::keep_token_dir() {
        tracing::warn!(error = %ErrorChain(&e), "cannot open the bound token's directory; readiness is not pushed");
    }
    if the_plan.mode.mode == Mode::Direct {
        let started = std::time::Instant::now();
        match pivot::enter_direct(&the_plan) {
            Ok(r) => tracing::info!(
                work_fs = %r.work_fs,
                src_dev = %r.src_majmin,
                out_dev = %r.out_majmin,
                mounts = r.mounts_in_namespace,
                read_only_mounts = r.read_only_mounts,
                micros = started.elapsed().as_micros() as u64,
                "pivoted: /work/src and /work/out verified in /proc/self/mountinfo"
            ),
            Err(e @ PivotError::Unshare { .. })
                if opts.mode == ModeRequest::Auto && facts.bwrap.is_some() =>
            {
                tracing::warn!(error = %ErrorChain(&e), "direct pivot refused; falling back to bwrap");
                the_plan = plan::plan(&cfg, ModeRequest::Bwrap, &facts, &opts.bwrap)
                    .map_err(|e| Failure::new(EXIT_SETUP, e))?;
            }
            Err(e) => return Err(Failure::new(EXIT_SETUP, e)),
        }
    }
    tracing::info!(
        uid = the_plan.run_as.uid,
        gid = the_plan.run_as.gid,
        switch = the_plan.run_as.switch,
        reason = %the_plan.run_as.reason,
        "the command runs as"
    );
    // From here on (still single-threaded: the runtime's threads inherit it) the supervisor
    // touches files with the owner's filesystem ids: what it creates in out/ is the owner's.
    owner::drop_supplementary_groups(&the_plan.run_as).map_err(|e| Failure::new(EXIT_SETUP, e))?;
    let _as_owner = OwnerFs::enter(&the_plan.run_as).map_err(|e| Failure::new(EXIT_SETUP, e))?;
    drop(entered);

    if let Job::Run(_) = &cfg.job {
        let _g = span.enter();
        return Ok(supervisor::run::run_command(&the_plan));
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")
        .map_err(|e| Failure::new(EXIT_SETUP, e))?;
    let serve = ServeSettings {
        health_addr: opts.health_addr,
        health_interval: Duration::from_secs(opts.health_interval_secs.max(1)),
        grace: Duration::from_secs(opts.grace_period_secs.max(1)),
        startup_deadline: Duration::from_secs(opts.startup_deadline_secs.max(1)),
        termination_log: opts.termination_log.clone(),
    };
    rt.block_on(
        async {
            let reaper = Reaper::install()
                .context("installing the reaper (SIGCHLD, subreaper)")
                .map_err(|e| Failure::new(EXIT_SETUP, e))?;
            Ok(jobs::serve(&cfg, &the_plan, &serve, &reaper).await)
        }
        .instrument(span.clone()),
    )
}

fn main() {
    let cli = Cli::parse();
    init_tracing(cli.opts.log_format);
    let code = match real_main(cli) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("supervisor: error: {}", ErrorChain(f.error.as_ref()));
            f.code
        }
    };
    std::process::exit(code);
}
