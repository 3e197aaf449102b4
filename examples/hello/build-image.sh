#!/usr/bin/env bash
# Builds the example app as an OCI image layout directory, offline and without Docker:
# one layer with busybox-static (its httpd serves www/) and a config whose entrypoint runs it.
# Usage: build-image.sh OUT_DIR   (then: hangar images import OUT_DIR --tag hello:latest)
set -euo pipefail
out=${1:?usage: build-image.sh OUT_DIR}
here=$(cd "$(dirname "$0")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "busybox not found at $busybox: apt-get install busybox-static" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
mkdir -p "$root/bin" "$root/www" "$root/etc" "$root/tmp"
chmod 1777 "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for applet in sh httpd cat echo ls env id hostname sleep wget ip nc dd ps kill; do
  ln -s busybox "$root/bin/$applet"
done
cp "$here/www/index.html" "$root/www/index.html"
echo 'root:x:0:0:root:/:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"

tar --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -C "$root" -cf "$work/layer.tar" .
gzip -n -9 <"$work/layer.tar" >"$work/layer.tar.gz"
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
diff_id=$(sha "$work/layer.tar")

mkdir -p "$out/blobs/sha256"
layer_digest=$(sha "$work/layer.tar.gz")
cp "$work/layer.tar.gz" "$out/blobs/sha256/$layer_digest"

jq -cn --arg diff "sha256:$diff_id" '{
  architecture: "amd64", os: "linux",
  config: {
    Entrypoint: ["/bin/httpd", "-f", "-v", "-p", "8080", "-h", "/www"],
    Env: ["PATH=/bin"],
    ExposedPorts: {"8080/tcp": {}},
    WorkingDir: "/www",
    Labels: {"org.opencontainers.image.title": "hangar hello example"}
  },
  rootfs: {type: "layers", diff_ids: [$diff]},
  history: [{created_by: "examples/hello/build-image.sh"}]
}' >"$work/config.json"
config_digest=$(sha "$work/config.json")
cp "$work/config.json" "$out/blobs/sha256/$config_digest"

jq -cn --arg c "sha256:$config_digest" --argjson cs "$(size "$work/config.json")" \
  --arg l "sha256:$layer_digest" --argjson ls "$(size "$work/layer.tar.gz")" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.manifest.v1+json",
  config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $c, size: $cs},
  layers: [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $l, size: $ls}]
}' >"$work/manifest.json"
manifest_digest=$(sha "$work/manifest.json")
cp "$work/manifest.json" "$out/blobs/sha256/$manifest_digest"

jq -cn --arg m "sha256:$manifest_digest" --argjson ms "$(size "$work/manifest.json")" '{
  schemaVersion: 2,
  mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json", digest: $m, size: $ms,
               annotations: {"org.opencontainers.image.ref.name": "hello:latest"}}]
}' >"$out/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
echo "$out"
