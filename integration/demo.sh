#!/usr/bin/env bash
# The main job (README.md): from nothing to `jbazel build //...` on a remote Bazel server in
# a local Kubernetes pod, and the built binary run from the desktop's mirror.
#
#   ./integration/demo.sh              set up everything, run the demo, leave it running
#   ./integration/demo.sh --teardown   the same, then stop what the demo started
#   ./integration/demo.sh --down       stop the demo's processes/pods and the cluster
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="${HOME:-/root}/.cargo/bin:$PATH"

if [ "${1:-}" = "--down" ]; then
  if [ -x target/debug/jbazel-demo ]; then
    target/debug/jbazel-demo --down || true
  fi
  exec integration/kubernetes/local.sh down
fi

t0=$(date +%s)
bash integration/setup.sh
echo "==> local Kubernetes (integration/kubernetes/local.sh up)"
integration/kubernetes/local.sh up
echo "==> cargo build (orchestrator, jbazel, supervisor, demo driver)"
cargo build --workspace --bins --quiet
echo "==> pod image (image/build.sh)"
image/build.sh --supervisor target/debug/supervisor
echo "==> setup took $(( $(date +%s) - t0 )) s"
export KUBECONFIG=/var/lib/jbazel-cluster/admin.kubeconfig
target/debug/jbazel-demo "$@"
echo "==> kubectl get pods -n jbazel-alice, as alice (KUBECONFIG=~alice/.kube/config)"
KUBECONFIG=~alice/.kube/config kubectl get pods -n jbazel-alice -o wide || true
