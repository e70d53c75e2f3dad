#!/usr/bin/env bash
# Installs the system packages the project needs on a fresh Debian 12 machine, and creates
# the demo's desktop users (alice, bob, mallory).
# Idempotent and quiet: when everything is there it prints nothing and takes well under a
# second. Run as root (CI and the dev machines are root).
set -euo pipefail

# Bazel 4.2.3 (offline with the rule stubs in image/bazel) and the sandbox.
# Then what the local Kubernetes needs (see integration/kubernetes/), and CI's shell lint.
PACKAGES=(
  bazel-bootstrap bubblewrap util-linux
  build-essential
  golang-go etcd-server containerd runc containernetworking-plugins
  debootstrap dpkg-dev iproute2 iptables openssl curl ca-certificates
  shellcheck
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

# `apt-get source kubernetes` needs a deb-src entry for the distribution's own suite. It is
# derived from the machine's configured `deb` entry for that suite (same URIs, components and
# signing key), never spelled out here: the project names no archive host.
codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[ -n "$codename" ] || { echo "setup: /etc/os-release has no VERSION_CODENAME" >&2; exit 1; }
src_list=/etc/apt/sources.list.d/jbazel-deb-src.sources
# shellcheck source=../image/apt-sources.sh
. "$(dirname "${BASH_SOURCE[0]}")/../image/apt-sources.sh"
mapfile -t apt_files < <(apt_source_files "$src_list")

need_update=0
has_deb_src=0
for f in "${apt_files[@]}" "$src_list"; do
  [ -f "$f" ] || continue
  if grep -qsE "^deb-src .*[[:space:]]${codename}[[:space:]]" "$f" \
    || { grep -qsiE '^Types:.*deb-src' "$f" && grep -qsiE "^Suites:.*(^|[[:space:]])$codename([[:space:]]|$)" "$f"; }; then
    has_deb_src=1
  fi
done
if [ $has_deb_src = 0 ]; then
  entry=$(apt_deb_entries "${apt_files[@]}" | awk -F'\t' -v suite="$codename" '$2 == suite {
    printf "Types: deb-src\nURIs: %s\nSuites: %s\nComponents: %s\n", $1, $2, $3
    if ($4 != "") printf "Signed-By: %s\n", $4
    print ""
  }')
  if [ -z "$entry" ]; then
    echo "setup: no apt 'deb' entry for suite '$codename' in /etc/apt/sources.list or /etc/apt/sources.list.d/;" \
      "add the distribution's archive there (the deb-src entry for 'apt-get source kubernetes' is derived from it)" >&2
    exit 1
  fi
  printf '%s\n' "$entry" > "$src_list"
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

# The demo's desktop users: jbazel runs as a non-root user whose credentials
# (integration/kubernetes/local.sh user NAME) it is given.
for u in alice bob mallory; do
  if ! id -u "$u" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$u"
    echo "setup: created user $u" >&2
  fi
done
