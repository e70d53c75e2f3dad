#!/usr/bin/env bash
# Packs uncompressed layer tars into an image archive, without a registry or a Docker engine:
#   docker format (default): the `docker save` layout (manifest.json with Config/RepoTags/
#     Layers, the image config, one directory per layer), which `ctr images import`,
#     `docker load` and `kind load image-archive` all accept;
#   --oci: an OCI image layout (index.json, blobs/sha256/...) for `ctr images import`, where
#     --omit-blob DIGEST leaves a layer's blob out of the tar (the manifest still lists it):
#     containerd takes it from its content store, so re-importing an image whose big base
#     layer is already there costs ~1 s instead of re-reading the whole layer.
#
# Usage: docker-archive.sh --out IMAGE.tar --tag NAME:TAG [--oci [--omit-blob DIGEST]...]
#                          [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--workdir DIR]
#                          LAYER.tar...
# A layer's digest is read from LAYER.tar.sha256 when that file is not older than the layer
# (build.sh caches the big base layer's digest there), else computed (and cached there).
# With --print-digests, prints "<config digest> <layer digests...>" instead of the path.
set -euo pipefail

out="" tag="" entrypoint="null" cmd="null" workdir="/" oci=0 print_digests=0
envs=() omit=()
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        --oci) oci=1; shift ;;
        --omit-blob) omit+=("${2#sha256:}"); shift 2 ;;
        --entrypoint) entrypoint=$2; shift 2 ;;
        --cmd) cmd=$2; shift 2 ;;
        --env) envs+=("$2"); shift 2 ;;
        --workdir) workdir=$2; shift 2 ;;
        --print-digests) print_digests=1; shift ;;
        --help|-h) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
        --*) echo "docker-archive.sh: unknown option $1" >&2; exit 2 ;;
        *) break ;;
    esac
done
[[ -n $out && -n $tag && $# -gt 0 ]] || { echo "docker-archive.sh: need --out, --tag and at least one layer" >&2; exit 2; }
[[ $tag == */* ]] || tag=docker.io/library/$tag

json_str() { # JSON string literal (the values here are plain paths and env pairs)
    local s=${1//\\/\\\\}
    s=${s//\"/\\\"}
    printf '"%s"' "$s"
}
join() { local IFS=,; echo "$*"; }

layer_digest() {
    local layer=$1
    if [[ -s $layer.sha256 && ! $layer -nt $layer.sha256 ]]; then
        cat "$layer.sha256"
    else
        sha256sum "$layer" | cut -d' ' -f1 | tee "$layer.sha256"
    fi
}

omitted() { local d; for d in "${omit[@]}"; do [[ $d == "$1" ]] && return 0; done; return 1; }

# Hard link when possible (same filesystem), so a big base layer is not copied twice.
place() { ln "$1" "$2" 2>/dev/null || cp "$1" "$2"; }

work=$(mktemp -d "$(dirname "$out")/.image-archive.XXXXXX")
trap 'rm -rf "$work"' EXIT

digests=() sizes=()
for layer in "$@"; do
    [[ -f $layer ]] || { echo "docker-archive.sh: no layer $layer" >&2; exit 1; }
    digests+=("$(layer_digest "$layer")")
    sizes+=("$(stat -c %s "$layer")")
done

env_json=""
for e in "${envs[@]}"; do env_json+="${env_json:+,}$(json_str "$e")"; done
diff_ids=()
for d in "${digests[@]}"; do diff_ids+=("\"sha256:$d\""); done
config=$(printf '{"architecture":"amd64","os":"linux","config":{"Env":[%s],"Entrypoint":%s,"Cmd":%s,"WorkingDir":%s},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$env_json" "$entrypoint" "$cmd" "$(json_str "$workdir")" "$(join "${diff_ids[@]}")")
config_digest=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)

if ((oci)); then
    mkdir -p "$work/blobs/sha256"
    printf '%s' "$config" >"$work/blobs/sha256/$config_digest"
    layers_json=()
    for i in "${!digests[@]}"; do
        layers_json+=("$(printf '{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}' "${digests[i]}" "${sizes[i]}")")
        omitted "${digests[i]}" || place "${@:i+1:1}" "$work/blobs/sha256/${digests[i]}"
    done
    manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' \
        "$config_digest" "${#config}" "$(join "${layers_json[@]}")")
    manifest_digest=$(printf '%s' "$manifest" | sha256sum | cut -d' ' -f1)
    printf '%s' "$manifest" >"$work/blobs/sha256/$manifest_digest"
    printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":%s,"org.opencontainers.image.ref.name":%s}}]}\n' \
        "$manifest_digest" "${#manifest}" "$(json_str "$tag")" "$(json_str "${tag##*:}")" >"$work/index.json"
    echo '{"imageLayoutVersion":"1.0.0"}' >"$work/oci-layout"
else
    layer_paths=()
    for i in "${!digests[@]}"; do
        mkdir -p "$work/${digests[i]}"
        place "${@:i+1:1}" "$work/${digests[i]}/layer.tar"
        layer_paths+=("\"${digests[i]}/layer.tar\"")
    done
    printf '%s' "$config" >"$work/$config_digest.json"
    printf '[{"Config":"%s.json","RepoTags":[%s],"Layers":[%s]}]\n' \
        "$config_digest" "$(json_str "$tag")" "$(join "${layer_paths[@]}")" >"$work/manifest.json"
fi

tar --owner=0 --group=0 --numeric-owner -C "$work" -cf "$out.tmp" .
mv "$out.tmp" "$out"
if ((print_digests)); then
    echo "$config_digest ${digests[*]}"
else
    echo "$out"
fi
