#!/usr/bin/env bash
# Builds the orchestrator's image without Docker or a registry and imports it into the local
# cluster's containerd (integration/kubernetes/local.sh), tagged
# docker.io/library/jbazel-orchestrator:dev (deploy/overlays/local runs it with
# imagePullPolicy: Never). image/orchestrator.Dockerfile builds the same image with Docker.
#
# One layer, nothing but what the binary needs:
#   /usr/local/bin/orchestrator   the binary (stripped), the ENTRYPOINT
#   the shared libraries `ldd` lists, at the paths the dynamic loader looks in
#   /etc/ssl/certs/ca-certificates.crt   the host's CA bundle (Spanner and other https peers)
#   /etc/passwd, /etc/group       root and nonroot (65532), the uid the Deployment runs as
#   /etc/nsswitch.conf, /tmp      name lookup order; a sticky /tmp (the Deployment mounts an
#                                 emptyDir there: its root filesystem is read-only)
# The rootfs is checked by running `orchestrator --version` in it (chroot) before packing.
# -> a docker-archive tar (image/docker-archive.sh; also `docker load` / `kind load
#    image-archive`) -> `ctr -n k8s.io images import` on the cluster's containerd socket.
#
# Usage: image/build-orchestrator.sh [--no-import] [--no-cargo] [--orchestrator BIN] [--out FILE]
#   --no-import          only write the archive
#   --no-cargo           use target/release/orchestrator as it is (do not run cargo)
#   --orchestrator BIN   put BIN in the image (e.g. target/debug/orchestrator, to skip a
#                        release build); implies --no-cargo
#   --out FILE           where the archive goes (default
#                        /var/cache/jbazel/image/jbazel-orchestrator-dev.tar)
# Env: JBAZEL_CONTAINERD_SOCK (default /var/lib/jbazel-cluster/containerd/containerd.sock),
#      CARGO_TARGET_DIR, JBAZEL_ORCHESTRATOR_IMAGE (the tag).
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${JBAZEL_CACHE:-/var/cache/jbazel}/image
TAG=${JBAZEL_ORCHESTRATOR_IMAGE:-docker.io/library/jbazel-orchestrator:dev}
SOCK=${JBAZEL_CONTAINERD_SOCK:-/var/lib/jbazel-cluster/containerd/containerd.sock}
NONROOT_UID=65532
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

import=1 cargo=1 out=$CACHE/jbazel-orchestrator-dev.tar binary=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-import) import=0; shift ;;
        --no-cargo) cargo=0; shift ;;
        --orchestrator) binary=$(realpath "$2"); cargo=0; shift 2 ;;
        --out) out=$(realpath -m "$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build-orchestrator.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[orchestrator-image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
t0=$SECONDS

[[ $(id -u) == 0 ]] || die "needs root (chroot check, ctr)"
for tool in ldd strip tar sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[[ -s $CA_BUNDLE ]] || die "no CA bundle at $CA_BUNDLE (apt-get install ca-certificates)"

target_dir=${CARGO_TARGET_DIR:-$REPO/target}
if ((cargo)); then
    log "cargo build --release -p orchestrator"
    (cd "$REPO" && cargo build --release -p orchestrator --quiet) || die "cargo build of the orchestrator failed"
fi
binary=${binary:-$target_dir/release/orchestrator}
[[ -x $binary ]] || die "$binary missing (cargo build --release -p orchestrator)"
log "orchestrator: $binary"

mkdir -p "$CACHE" "$(dirname "$out")"
work=$(mktemp -d "$CACHE/.orchestrator.XXXXXX")
trap 'rm -rf "$work"' EXIT
rootfs=$work/rootfs
mkdir -p "$rootfs/usr/local/bin" "$rootfs/etc/ssl/certs" "$rootfs/tmp"
chmod 1777 "$rootfs/tmp"
strip --strip-unneeded -o "$rootfs/usr/local/bin/orchestrator" "$binary"

# The libraries the binary loads, at the paths ldd resolves them to (the loader itself at
# its absolute path, e.g. /lib64/ld-linux-x86-64.so.2), as regular files.
libs=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
[[ -n $libs ]] || die "ldd lists no libraries for $binary (a static binary needs none: remove this check)"
while IFS= read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
done <<<"$libs"

cp "$CA_BUNDLE" "$rootfs$CA_BUNDLE"
cat >"$rootfs/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
nonroot:x:$NONROOT_UID:$NONROOT_UID:nonroot:/nonexistent:/sbin/nologin
EOF
cat >"$rootfs/etc/group" <<EOF
root:x:0:
nonroot:x:$NONROOT_UID:
EOF
echo "hosts: files dns" >"$rootfs/etc/nsswitch.conf"
chmod -R u=rwX,go=rX "$rootfs/usr" "$rootfs/etc"

version=$(chroot --userspec="$NONROOT_UID:$NONROOT_UID" "$rootfs" /usr/local/bin/orchestrator --version 2>&1) ||
    die "the orchestrator does not run in its rootfs (as uid $NONROOT_UID): $version"
log "runs in its rootfs as uid $NONROOT_UID: $version"

tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$rootfs" -cf "$work/layer.tar" .
"$HERE/docker-archive.sh" --out "$out" --tag "$TAG" \
    --entrypoint '["/usr/local/bin/orchestrator"]' \
    --env PATH=/usr/local/bin --env SSL_CERT_FILE="$CA_BUNDLE" --workdir / \
    "$work/layer.tar" >/dev/null
log "archive $out ($(du -h "$out" | cut -f1); layer: binary $(du -h "$rootfs/usr/local/bin/orchestrator" | cut -f1), libraries $(wc -l <<<"$libs"))"

if ((import)); then
    [[ -S $SOCK ]] || die "no containerd socket at $SOCK: start the cluster first (integration/kubernetes/local.sh up) or pass --no-import"
    ctr --address "$SOCK" -n k8s.io images import "$out" >"$work/import.log" 2>&1 ||
        { cat "$work/import.log" >&2; die "ctr images import of $out failed"; }
    ctr --address "$SOCK" -n k8s.io images ls -q "name==$TAG" | grep -q . ||
        die "$TAG is not in containerd after the import"
    log "imported $TAG: $(ctr --address "$SOCK" -n k8s.io images ls "name==$TAG" | awk 'NR == 2 { print $3, $4, $5 }')"
fi
log "done in $((SECONDS - t0)) s"
