#!/usr/bin/env bash
# Builds the Kubernetes 1.20.2 control plane, the kubelet, kube-proxy and a static pause
# binary from Debian's source package with Debian's Go (1.19), cached under
# /var/cache/jbazel/kubernetes-<version>/bin. A second run finds the cache and returns at
# once; a cache that lacks some binaries (one made before kube-proxy was added) gets only
# those built, each moved into bin/ when done. The source tree, GOPATH and GOCACHE stay
# under the cache dir, so a later build of one more binary compiles only what is new.
# Why from source: no container registry and no Docker here; Debian ships the source.
#
# Usage: build.sh            build (or reuse) the binaries; print the bin dir
#        build.sh --print    print the bin dir only if the cache is complete
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-1.20.2}
CACHE_ROOT=${JBAZEL_CACHE:-/var/cache/jbazel}
CACHE=$CACHE_ROOT/kubernetes-$K8S_VERSION
BIN=$CACHE/bin
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause)

log() { printf '[build-kubernetes %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

missing_binaries() { # the binaries not (yet) in the cache, one a line
    local b
    for b in "${BINARIES[@]}"; do [[ -x $BIN/$b ]] || echo "$b"; done
}

complete() { [[ -f $BIN/.complete && -z $(missing_binaries) ]]; }

if [[ ${1:-} == --print ]]; then
    complete && { echo "$BIN"; exit 0; }
    exit 1
fi

mkdir -p "$CACHE"
# One build at a time (a second `up` waits for the first one's build instead of racing it).
exec 9>"$CACHE/.build.lock"
flock 9
if complete; then echo "$BIN"; exit 0; fi
# Every binary moves into bin/ on its own once built: .complete only says none is missing.
if [[ -d $BIN && -z $(missing_binaries) ]]; then touch "$BIN/.complete"; echo "$BIN"; exit 0; fi
mapfile -t MISSING < <(missing_binaries)
log "to build: ${MISSING[*]}"

for tool in go gcc apt-get dpkg-source; do
    command -v "$tool" >/dev/null || die "$tool not found (integration/setup.sh installs golang-go, gcc, dpkg-dev)"
done

# 1. Source: `apt-get source kubernetes` (needs a deb-src line; setup.sh adds one).
SRC_PARENT=$CACHE/src
shopt -s nullglob
trees=("$SRC_PARENT"/kubernetes-*/)
if [[ ${#trees[@]} -eq 0 || ! -f ${trees[0]}/.unpacked ]]; then
    log "fetching Debian's kubernetes source package"
    rm -rf "$SRC_PARENT"
    mkdir -p "$SRC_PARENT"
    (cd "$SRC_PARENT" && apt-get source kubernetes >"$CACHE/apt-source.log" 2>&1) ||
        { tail -20 "$CACHE/apt-source.log" >&2; die "apt-get source kubernetes failed (is deb-src enabled?)"; }
    trees=("$SRC_PARENT"/kubernetes-*/)
    [[ ${#trees[@]} -eq 1 ]] || die "expected one unpacked tree under $SRC_PARENT"
    touch "${trees[0]}/.unpacked"
fi
TREE=${trees[0]%/}
[[ $TREE == *"$K8S_VERSION" ]] || log "warning: $TREE may not be Kubernetes $K8S_VERSION"

# 2. GOPATH mode (module mode fails under Go 1.19: "updates to go.mod needed").
export GOPATH=$CACHE/gopath
export GOCACHE=$CACHE/gocache
export GO111MODULE=off CGO_ENABLED=0 GOFLAGS=
mkdir -p "$GOPATH/src/k8s.io"
ln -sfn "$TREE" "$GOPATH/src/k8s.io/kubernetes"
PKG=k8s.io/kubernetes
cd "$GOPATH/src/$PKG"

# 3. The tarball lacks pkg/generated/openapi/zz_generated.openapi.go: generate it the way
#    Makefile.generated_files does (every dir with a +k8s:openapi-gen= tag, staging named as
#    vendor, minus code-generator and sample-apiserver).
#    Only kube-apiserver imports it.
OPENAPI_OUT=pkg/generated/openapi/zz_generated.openapi.go
if [[ " ${MISSING[*]} " == *" kube-apiserver "* && ! -s $OPENAPI_OUT ]]; then
    log "building openapi-gen"
    go build -o "$CACHE/tools/openapi-gen" "$PKG/vendor/k8s.io/kube-openapi/cmd/openapi-gen"
    dirs=$(find -H . -not \( \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune \) \
               -type f -name '*.go' -print0 |
           xargs -0 grep -l '^// *+k8s:' |
           xargs grep -l '+k8s:openapi-gen=' |
           sed 's|^\./staging/src|vendor|; s|^\./||; s|/[^/]*$||' |
           grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' |
           LC_ALL=C sort -u)
    log "running openapi-gen over $(wc -l <<<"$dirs") packages"
    mapfile -t packages <<<"$dirs"
    inputs=$(IFS=,; echo "${packages[*]/#/$PKG/}")
    "$CACHE/tools/openapi-gen" --logtostderr -v 0 \
        -i "$inputs" -p "$PKG/pkg/generated/openapi" -O zz_generated.openapi \
        -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
        -r "$CACHE/openapi-violations.report" >"$CACHE/openapi-gen.log" 2>&1 ||
        { tail -20 "$CACHE/openapi-gen.log" >&2; die "openapi-gen failed"; }
    [[ -s $OPENAPI_OUT ]] || die "openapi-gen produced no $OPENAPI_OUT"
    if ! diff -q "$CACHE/openapi-violations.report" api/api-rules/violation_exceptions.list >/dev/null; then
        log "warning: openapi violation report differs from api/api-rules/violation_exceptions.list"
    fi
fi

# 4. The binaries, with the version stamped as hack/lib/version.sh does.
ldflags=""
for kv in "gitVersion=v$K8S_VERSION" "gitMajor=${K8S_VERSION%%.*}" \
          "gitMinor=$(cut -d. -f2 <<<"$K8S_VERSION")" "gitTreeState=clean" \
          "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"; do
    for p in client-go/pkg/version component-base/version; do
        ldflags+=" -X $PKG/vendor/k8s.io/$p.$kv"
    done
done
go_pkgs=()
for b in "${MISSING[@]}"; do [[ $b == pause ]] || go_pkgs+=("$PKG/cmd/$b"); done
rm -rf "$BIN.tmp"
mkdir -p "$BIN.tmp"
if ((${#go_pkgs[@]} > 0)); then
    log "go build ${go_pkgs[*]##*/} (~4 min on 2 cores for all five; ~12 s for kube-proxy once the others are cached)"
    go build -o "$BIN.tmp/" -tags selinux,notest -ldflags "-s -w$ldflags" "${go_pkgs[@]}" \
        >"$CACHE/go-build.log" 2>&1 ||
        { tail -30 "$CACHE/go-build.log" >&2; die "go build failed (log: $CACHE/go-build.log)"; }
    "$BIN.tmp/${go_pkgs[0]##*/}" --version >&2
fi

# 5. The pause binary, static, as build/pause/Makefile compiles it.
if [[ " ${MISSING[*]} " == *" pause "* ]]; then
    gcc -Os -Wall -Werror -static -DVERSION="v3.4.1-jbazel" -o "$BIN.tmp/pause" build/pause/linux/pause.c
fi

# 6. Into the cache, one rename per binary (a running cluster keeps the files it has open).
mkdir -p "$BIN"
for b in "${MISSING[@]}"; do
    [[ -x $BIN.tmp/$b ]] || die "the build left no $b"
    mv "$BIN.tmp/$b" "$BIN/$b"
done
rm -rf "$BIN.tmp"
[[ -z $(missing_binaries) ]] || die "still missing after the build: $(missing_binaries | paste -sd' ' -)"
touch "$BIN/.complete"
log "binaries ready in $BIN (built: ${MISSING[*]})"
echo "$BIN"
