#!/usr/bin/env bash
# Installs the system packages the project needs on a fresh Debian 12 machine.
# Idempotent and quiet: when everything is there it prints nothing and takes well under a
# second. Run as root (CI and the dev machines are root).
set -euo pipefail

# Bazel 4.2.3 (offline with the rule stubs in image/bazel) and the sandbox.
# The rest is what the local Kubernetes needs (see integration/cluster/).
PACKAGES=(
  bazel-bootstrap bubblewrap util-linux
  build-essential
  golang-go etcd-server containerd runc containernetworking-plugins
  debootstrap dpkg-dev iproute2 iptables openssl curl ca-certificates
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# `apt-get source kubernetes` needs a deb-src entry (deb822, same key as the main archive).
src_list=/etc/apt/sources.list.d/jbazel-deb-src.sources
need_update=0
if ! grep -rqsE '^deb-src .*bookworm|^Types:.*deb-src' /etc/apt/sources.list /etc/apt/sources.list.d/; then
  cat > "$src_list" <<'SRC'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  need_update=1
fi

if [ ${#missing[@]} -gt 0 ] || [ $need_update = 1 ]; then
  echo "setup: installing ${missing[*]:-(source index only)}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  if [ ${#missing[@]} -gt 0 ]; then
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

command -v cargo >/dev/null || { echo "setup: cargo is missing (install Rust with rustup)" >&2; exit 1; }
