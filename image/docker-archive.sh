#!/usr/bin/env bash
# Packs uncompressed layer tars into a docker-archive (the `docker save` format: manifest.json
# with Config/RepoTags/Layers, an image config, one directory per layer), which
# `ctr images import`, `docker load` and `kind load image-archive` all accept. No registry,
# no Docker engine.
#
# Usage: docker-archive.sh --out IMAGE.tar --tag NAME:TAG [--entrypoint JSON] [--cmd JSON]
#                          [--env K=V]... [--workdir DIR] LAYER.tar...
# A layer's digest is read from LAYER.tar.sha256 when that file is not older than the layer
# (build.sh caches the big base layer's digest there), else computed.
set -euo pipefail

out="" tag="" entrypoint="null" cmd="null" workdir="/"
envs=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --entrypoint) entrypoint=$2; shift 2 ;;
        --cmd) cmd=$2; shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --workdir) workdir=$2; shift 2 ;;
        --help|-h) sed -n '2,10p' "$0"; exit 0 ;;
        --*) echo "docker-archive.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[[ -n $out && -n $tag && $# -gt 0 ]] || { echo "docker-archive.sh: need --out, --tag and at least one layer" >&2; exit 2; }

json_str() { # JSON string literal (the values here are plain paths and env pairs)
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}

layer_digest() {
    local layer=$1
    if [[ -s $layer.sha256 && ! $layer -nt $layer.sha256 ]]; then
        cat "$layer.sha256"
    else
        sha256sum "$layer" | cut -d' ' -f1 | tee "$layer.sha256"
    fi
}

work=$(mktemp -d "$(dirname "$out")/.docker-archive.XXXXXX")
trap 'rm -rf "$work"' EXIT

diff_ids=() layer_paths=()
for layer in "$@"; do
    [[ -f $layer ]] || { echo "docker-archive.sh: no layer $layer" >&2; exit 1; }
    d=$(layer_digest "$layer")
    mkdir -p "$work/$d"
    # Hard link when possible (same filesystem), so a big base layer is not copied twice.
    ln "$layer" "$work/$d/layer.tar" 2>/dev/null || cp "$layer" "$work/$d/layer.tar"
    diff_ids+=("\"sha256:$d\"")
    layer_paths+=("\"$d/layer.tar\"")
done

env_json=""
for e in "${envs[@]}"; do env_json+="${env_json:+,}$(json_str "$e")"; done
join() { local IFS=,; echo "$*"; }

config=$(printf '{"architecture":"amd64","os":"linux","config":{"Env":[%s],"Entrypoint":%s,"Cmd":%s,"WorkingDir":%s},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$env_json" "$entrypoint" "$cmd" "$(json_str "$workdir")" "$(join "${diff_ids[@]}")")
config_digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
printf '%s' "$config" >"$work/$config_digest.json"
printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":[%s]}]\n' \
    "$config_digest" "$(json_str "$tag")" "$(join "${layer_paths[@]}")" >"$work/manifest.json"

tar --owner=0 --group=0 --numeric-owner -C "$work" -cf "$out.tmp" .
mv "$out.tmp" "$out"
echo "$out"
