#!/usr/bin/env bash
# The main job (README.md): from nothing to `jbazel build //...` on a remote Bazel server.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "demo: the end-to-end demo is not built yet (issue: integration + image)." >&2
exit 1
