//! `jbazel`: gathers the process's facts, runs the command ([`jbazel::command::run`]) and
//! exits with Bazel's exit code, dies by the signal that stopped the command, or prints
//! the error chain and exits with the error's code.

use jbazel::command::{self, Done};
use jbazel::invocation::Invocation;
use proto::error_chain::ErrorChain;
use std::time::Instant;

fn main() {
    let started = Instant::now();
    // ring, not the programs' aws-lc (proto::tls): jbazel is a process per command, and
    // aws-lc seeds its RNG with CPU-jitter entropy at first use, 55 ms of every command
    // measured (strace: no syscall between its fork-safety probe and the ClientHello);
    // ring reads getrandom(2). Both the orchestrator's TLS and kube's port-forward use it.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let invocation = Invocation::gather(started);
    let code = match command::run(&invocation) {
        Ok(Done::Exit(code)) => code,
        Ok(Done::Signal(sig)) => jbazel::client::die_by_signal(sig),
        Err(e) => {
            eprintln!("jbazel: ERROR: {}", ErrorChain(&e));
            e.exit_code()
        }
    };
    std::process::exit(code.code());
}
