#!/usr/bin/env bash
# Builds the jbazel pod image without Docker or a registry and imports it into the local
# cluster's containerd (integration/kubernetes/local.sh), tagged
# docker.io/library/jbazel-bazel-server:dev (pods use imagePullPolicy: Never).
#
#   layer 1  debootstrap --variant=minbase bookworm + image/packages.txt (the list
#            image/Dockerfile installs too). Cached under /var/cache/jbazel/image/, keyed by
#            the package list, the mirror and this recipe's version: built once (~3-5 min).
#   layer 2  /opt/jbazel/{rules_cc,rules_java,remote_coverage_tools} (offline stand-ins for
#            repositories Bazel 4.2.3 downloads) and /etc/jbazel/system.bazelrc
#            (image/bazel/system.bazelrc.in, @RULES_DIR@=/opt/jbazel)
#   layer 3  /usr/local/bin/supervisor (`cargo build --release -p supervisor`), the ENTRYPOINT
# -> a docker-archive tar (also loadable with `docker load` / `kind load image-archive`)
#    -> `ctr -n k8s.io images import` on the cluster's containerd socket; when containerd
#    already has the base layer, an OCI layout without it is imported instead (~1 s).
#
# Usage: image/build.sh [--no-import] [--no-cargo] [--supervisor BIN] [--out FILE]
#   --no-import       only write the archive
#   --no-cargo        use target/release/supervisor as it is (do not run cargo)
#   --supervisor BIN  put BIN in the image as the supervisor (e.g. target/debug/supervisor,
#                     to skip a release build); implies --no-cargo
#   --out FILE        also write the docker archive there (for docker load / kind load);
#                     default /var/cache/jbazel/image/jbazel-bazel-server-dev.tar, written
#                     only with --no-import or when containerd lacks the base layer
# Env: JBAZEL_CONTAINERD_SOCK (default /var/lib/jbazel-cluster/containerd/containerd.sock),
#      DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR (default: the machine's apt archive for the
#      suite, from /etc/apt; see image/apt-sources.sh), CARGO_TARGET_DIR.
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
CACHE=${JBAZEL_CACHE:-/var/cache/jbazel}/image
TAG=docker.io/library/jbazel-bazel-server:dev
SOCK=${JBAZEL_CONTAINERD_SOCK:-/var/lib/jbazel-cluster/containerd/containerd.sock}
SUITE=bookworm
# shellcheck source=apt-sources.sh
. "$HERE/apt-sources.sh"
MIRROR=${DEBIAN_MIRROR:-$(apt_archive_uri "$SUITE")}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-$(apt_archive_uri "$SUITE-security")}
RULES_DIR=/opt/jbazel
RECIPE_VERSION=1 # bump when the base-layer recipe below changes

import=1 cargo=1 out=$CACHE/jbazel-bazel-server-dev.tar out_given=0 supervisor=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --no-import) import=0; shift ;;
        --no-cargo) cargo=0; shift ;;
        --supervisor) supervisor=$(realpath "$2"); cargo=0; shift 2 ;;
        --out) out=$(realpath -m "$2"); out_given=1; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "build.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

log() { printf '[image %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
t0=$SECONDS
[[ -n $MIRROR ]] || die "no apt archive for suite $SUITE in /etc/apt/sources.list{,.d}: configure one, or set DEBIAN_MIRROR"

[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot, ctr)"
mkdir -p "$CACHE"
exec 9>"$CACHE/.build.lock"
flock 9

# Deterministic tars: the same content gives the same layer digest, so containerd keeps
# one copy and re-imports of unchanged layers cost nothing.
det_tar() { # det_tar DIR OUT.tar
    tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$1" -cf "$2.tmp" .
    mv "$2.tmp" "$2"
}

packages=$(sed 's/#.*//' "$HERE/packages.txt" | awk NF | sort -u | paste -sd' ' -)
[[ -n $packages ]] || die "no packages in $HERE/packages.txt"
key=$(printf '%s\n' "recipe=$RECIPE_VERSION" "suite=$SUITE" "mirror=$MIRROR" "$packages" |
    sha256sum | cut -c1-16)
BASE_DIR=$CACHE/base-$key
BASE_LAYER=$BASE_DIR/layer.tar

# ---------------------------------------------------------------------------------------
# Layer 1: the base rootfs.

unmount_under() {
    local m
    awk -v s="$1/" 'index($5, s) == 1 { print $5 }' /proc/self/mountinfo | sort -r |
        while IFS= read -r m; do umount "$m" 2>/dev/null || umount -l "$m"; done
}

build_base() {
    local tmp=$BASE_DIR.tmp rootfs=$BASE_DIR.tmp/rootfs
    command -v debootstrap >/dev/null || die "debootstrap missing: run integration/setup.sh"
    [[ -d $tmp ]] && unmount_under "$tmp"
    rm -rf "$tmp"
    mkdir -p "$rootfs" "$CACHE/debs/partial"
    trap 'unmount_under "'"$tmp"'"' EXIT
    log "debootstrap --variant=minbase $SUITE (log $tmp/debootstrap.log)"
    debootstrap --variant=minbase --cache-dir="$CACHE/debs" "$SUITE" "$rootfs" "$MIRROR" \
        >"$tmp/debootstrap.log" 2>&1 ||
        { tail -30 "$tmp/debootstrap.log" >&2; die "debootstrap failed"; }

    cat >"$rootfs/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
${SECURITY_MIRROR:+deb $SECURITY_MIRROR $SUITE-security main}
EOF
    printf '#!/bin/sh\nexit 101\n' >"$rootfs/usr/sbin/policy-rc.d"
    chmod +x "$rootfs/usr/sbin/policy-rc.d"
    cp /etc/resolv.conf "$rootfs/etc/resolv.conf"
    mount -t proc proc "$rootfs/proc"
    mount --rbind /dev "$rootfs/dev"
    mount --make-rslave "$rootfs/dev"
    mount --bind "$CACHE/debs" "$rootfs/var/cache/apt/archives"

    log "installing: $packages (log $tmp/apt.log)"
    # shellcheck disable=SC2086 # the package list is meant to split
    if ! chroot "$rootfs" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
        DEBIAN_FRONTEND=noninteractive LANG=C.UTF-8 \
        sh -c "apt-get update && apt-get install -y --no-install-recommends $packages" \
        >"$tmp/apt.log" 2>&1; then
        tail -30 "$tmp/apt.log" >&2
        die "installing the packages in the rootfs failed"
    fi
    unmount_under "$tmp"
    trap - EXIT

    # What a container runtime provides or a layer should not carry.
    rm -f "$rootfs/usr/sbin/policy-rc.d"
    : >"$rootfs/etc/resolv.conf"
    rm -rf "${rootfs:?}"/var/lib/apt/lists/* "${rootfs:?}"/var/cache/apt/*.bin "${rootfs:?}"/var/log/*.log \
        "${rootfs:?}"/dev/* "${rootfs:?}"/proc/* "${rootfs:?}"/sys/* "${rootfs:?}"/tmp/* "${rootfs:?}"/run/*
    chroot "$rootfs" bazel --version >"$tmp/bazel-version" 2>&1 ||
        { cat "$tmp/bazel-version" >&2; die "bazel does not run in the new rootfs"; }

    log "packing the base layer"
    det_tar "$rootfs" "$tmp/layer.tar"
    sha256sum "$tmp/layer.tar" | cut -d' ' -f1 >"$tmp/layer.tar.sha256"
    rm -rf "$rootfs"
    rm -rf "$BASE_DIR"
    mv "$tmp" "$BASE_DIR"
    # Older bases (another package list) are dead weight.
    find "$CACHE" -maxdepth 1 -name 'base-*' ! -name "base-$key" -exec rm -rf {} +
}

if [[ -s $BASE_LAYER && -s $BASE_LAYER.sha256 ]]; then
    log "base layer cached: $BASE_DIR ($(du -h "$BASE_LAYER" | cut -f1))"
else
    build_base
    log "base layer built in $((SECONDS - t0)) s ($(du -h "$BASE_LAYER" | cut -f1))"
fi

# ---------------------------------------------------------------------------------------
# Layer 2: offline repository stand-ins and the system rc.

work=$(mktemp -d "$CACHE/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT
# /work: the supervisor's mount point for the pivoted view (/work/src, /work/out).
mkdir -p "$work/jbazel$RULES_DIR" "$work/jbazel/etc/jbazel" "$work/jbazel/work"
cp -r "$HERE/bazel/rules_cc" "$HERE/bazel/rules_java" "$HERE/bazel/remote_coverage_tools" \
    "$work/jbazel$RULES_DIR/"
sed "/^#/!s|@RULES_DIR@|$RULES_DIR|g" "$HERE/bazel/system.bazelrc.in" >"$work/jbazel/etc/jbazel/system.bazelrc"
chmod -R u=rwX,go=rX "$work/jbazel"
det_tar "$work/jbazel" "$work/jbazel.tar"

# ---------------------------------------------------------------------------------------
# Layer 3: the supervisor.

target_dir=${CARGO_TARGET_DIR:-$REPO/target}
if ((cargo)); then
    log "cargo build --release -p supervisor"
    (cd "$REPO" && cargo build --release -p supervisor --quiet) || die "cargo build of the supervisor failed"
fi
supervisor=${supervisor:-$target_dir/release/supervisor}
[[ -x $supervisor ]] || die "$supervisor missing (cargo build --release -p supervisor)"
log "supervisor: $supervisor"
mkdir -p "$work/sup/usr/local/bin"
cp "$supervisor" "$work/sup/usr/local/bin/supervisor"
det_tar "$work/sup" "$work/supervisor.tar"

# ---------------------------------------------------------------------------------------
# Archive and import.

archive() { # archive OUT [extra docker-archive.sh flags]
    local to=$1; shift
    "$HERE/docker-archive.sh" --out "$to" --tag "$TAG" "$@" \
        --entrypoint '["/usr/local/bin/supervisor"]' \
        --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        --env HOME=/root --env LANG=C.UTF-8 --workdir / \
        "$BASE_LAYER" "$work/jbazel.tar" "$work/supervisor.tar" >/dev/null
}

import_archive() {
    ctr --address "$SOCK" -n k8s.io images import "$1" >"$work/import.log" 2>&1 ||
        { cat "$work/import.log" >&2; die "ctr images import of $1 failed"; }
}

# The docker archive (for docker load / kind load) is written when asked for, when nothing
# is imported, or when containerd needs the whole image.
wrote_archive=0
if ((!import)) || [[ $out_given == 1 ]]; then
    mkdir -p "$(dirname "$out")"
    archive "$out"
    wrote_archive=1
    log "archive $out ($(du -h "$out" | cut -f1))"
fi

if ((import)); then
    [[ -S $SOCK ]] || die "no containerd socket at $SOCK: start the cluster first (integration/kubernetes/local.sh up) or pass --no-import"
    base_digest=$(cat "$BASE_LAYER.sha256")
    if ctr --address "$SOCK" -n k8s.io content ls -q 2>/dev/null | grep -qx "sha256:$base_digest"; then
        # containerd has the base layer: send only the small layers (OCI layout).
        archive "$work/image-oci.tar" --oci --omit-blob "$base_digest"
        import_archive "$work/image-oci.tar"
        log "imported $TAG (base layer already in containerd)"
    else
        if ((!wrote_archive)); then
            mkdir -p "$(dirname "$out")"
            archive "$out"
            log "archive $out ($(du -h "$out" | cut -f1))"
        fi
        import_archive "$out"
        log "imported $TAG with its base layer"
    fi
    ctr --address "$SOCK" -n k8s.io images ls -q "name==$TAG" | grep -q . ||
        die "$TAG is not in containerd after the import"
    log "image in $SOCK: $(ctr --address "$SOCK" -n k8s.io images ls "name==$TAG" | awk 'NR == 2 { print $3 }')"
fi
log "done in $((SECONDS - t0)) s"
