#!/usr/bin/env bash
# Builds the benchmark's image as an OCI layout, offline: one layer holding only the static
# test app (`scripts/build-testapp.sh`) as /hangar-testapp, which is the entrypoint. The same
# layout goes into Hangar (`hangar images import`) and into docker (`skopeo copy` to a
# docker archive, `docker load`), so both sides run the same bytes.
# Usage: build-image.sh TESTAPP_BIN OUT_DIR   (the image's ref name in the layout is "base")
set -euo pipefail
bin=${1:?usage: build-image.sh TESTAPP_BIN OUT_DIR}
img=${2:?usage: build-image.sh TESTAPP_BIN OUT_DIR}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

root=$work/rootfs
mkdir -p "$root/tmp" "$img/blobs/sha256"
chmod 1777 "$root/tmp"
cp "$bin" "$root/hangar-testapp"
tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
gzip -n -1 <"$work/layer.tar" >"$work/layer.tar.gz"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
layer=$(sha "$work/layer.tar.gz")
cp "$work/layer.tar.gz" "$img/blobs/sha256/$layer"
jq -cn --arg diff "sha256:$(sha "$work/layer.tar")" '{architecture: "amd64", os: "linux",
  config: {Entrypoint: ["/hangar-testapp"], ExposedPorts: {"8080/tcp": {}}, WorkingDir: "/"},
  rootfs: {type: "layers", diff_ids: [$diff]}}' >"$work/config.json"
cfg=$(sha "$work/config.json")
cp "$work/config.json" "$img/blobs/sha256/$cfg"
jq -cn --arg c "sha256:$cfg" --argjson cs "$(size "$work/config.json")" \
  --arg l "sha256:$layer" --argjson ls "$(size "$work/layer.tar.gz")" '{schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]}' >"$work/manifest.json"
man=$(sha "$work/manifest.json")
cp "$work/manifest.json" "$img/blobs/sha256/$man"
jq -cn --arg m "sha256:$man" --argjson ms "$(size "$work/manifest.json")" '{schemaVersion: 2,
  mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
    annotations: {"org.opencontainers.image.ref.name": "base"}}]}' >"$img/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$img/oci-layout"
