#!/usr/bin/env bash
# Packages natsguard's wasm module as a Wasm OCI image in the "compat" variant (one
# application/vnd.oci.image.layer.v1.tar+gzip layer holding plugin.wasm), written as an OCI image
# layout directory, without docker. Istio's agent accepts this variant (istio/istio
# pkg/wasm/imagefetcher.go); push it with any OCI copier, e.g.
#   skopeo copy oci:oci/natsguard:0.1.0 docker://registry.example.com/natsguard:0.1.0
#
# Usage: scripts/oci-image.sh [wasm path] [out dir] [tag]
#   wasm path  default target/wasm32-wasip1/release/natsguard.wasm (built by `make build`)
#   out dir    default oci/natsguard; replaced if it already holds an OCI layout
#   tag        default the crate version from Cargo.toml
#
# Output is reproducible: the same wasm bytes always give the same manifest digest.
# Prints the manifest digest (what a WasmPlugin's `sha256` pins for an oci:// url) and the
# wasm file's sha256 (what `sha256` pins for an http(s):// url).
set -euo pipefail
cd "$(dirname "$0")/.."

wasm=${1:-target/wasm32-wasip1/release/natsguard.wasm}
out=${2:-oci/natsguard}
tag=${3:-$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)}

die() { echo "oci-image: $*" >&2; exit 1; }

[[ -f $wasm ]] || die "$wasm not found (run \`make build\` first)"
# A wasm module starts with "\0asm" and version 1; refuse anything else early.
[[ $(head -c 8 "$wasm" | od -An -tx1 | tr -d ' \n') == 0061736d01000000 ]] || die "$wasm is not a wasm module"
[[ -n $tag && $tag =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "invalid tag '$tag'"
if [[ -e $out ]]; then
    [[ -f $out/oci-layout || -z $(ls -A "$out") ]] || die "$out exists and is not an OCI layout; refusing to replace it"
    rm -rf "$out"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }
# Stores a file as a content-addressed blob and prints its hex digest.
store_blob() {
    local digest
    digest=$(sha256_of "$1")
    cp "$1" "$out/blobs/sha256/$digest"
    echo "$digest"
}

# Layer: a tar with only plugin.wasm, fixed owner/mode/mtime, no compression timestamp.
cp "$wasm" "$work/plugin.wasm"
tar --format=ustar --sort=name --owner=0 --group=0 --numeric-owner --mode=0644 --mtime=@0 \
    -C "$work" -cf "$work/layer.tar" plugin.wasm
gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"

mkdir -p "$out/blobs/sha256"
layer_digest=$(store_blob "$work/layer.tar.gz")
layer_size=$(size_of "$work/layer.tar.gz")

printf '{"architecture":"wasm","os":"wasip1","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(sha256_of "$work/layer.tar")" >"$work/config.json"
config_digest=$(store_blob "$work/config.json")
config_size=$(size_of "$work/config.json")

printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%d}],"annotations":{"module.wasm.image/variant":"compat"}}' \
    "$config_digest" "$config_size" "$layer_digest" "$layer_size" >"$work/manifest.json"
manifest_digest=$(store_blob "$work/manifest.json")
manifest_size=$(size_of "$work/manifest.json")

printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest_digest" "$manifest_size" "$tag" >"$out/index.json"
printf '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"

echo "oci-image: wrote $out (tag $tag)"
echo "manifest digest: sha256:$manifest_digest"
echo "wasm sha256: $(sha256_of "$wasm")"
