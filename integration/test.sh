#!/usr/bin/env bash
# The project's test command (README.md): sets up what the tests need on this machine,
# then runs every test of the workspace. Components the tests talk to are real: the Spanner
# emulator (started per test), Debian's Bazel, and the local Kubernetes cluster.
set -euo pipefail
cd "$(dirname "$0")/.."

bash integration/setup.sh

cargo test --workspace --all-targets --locked 2>&1
