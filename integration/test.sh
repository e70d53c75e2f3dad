#!/usr/bin/env bash
# The project's test command (README.md): sets up what the tests need on this machine,
# then runs every test of the workspace. Components the tests talk to are real: the Spanner
# emulator (started per test), Debian's Bazel, and the local Kubernetes cluster with the
# project's pod image.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

bash integration/setup.sh
integration/kubernetes/local.sh up
# Binaries first: the image needs the supervisor, the e2e tests run the real binaries.
cargo build --workspace --bins --locked
image/build.sh --supervisor target/debug/supervisor
export KUBECONFIG=/var/lib/jbazel-cluster/admin.kubeconfig

cargo test --workspace --all-targets --locked 2>&1
