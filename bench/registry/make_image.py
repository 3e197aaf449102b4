#!/usr/bin/env python3
"""Writes an OCI image layout with LAYERS uncompressed layers of random (incompressible)
bytes, SIZE_MB in total, tagged `bench`. Usage: make_image.py DIR SIZE_MB LAYERS SEED"""
import hashlib
import io
import json
import os
import random
import sys
import tarfile


def blob(layout, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(layout, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest


def main():
    layout, size_mb, layers, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    os.makedirs(os.path.join(layout, "blobs", "sha256"), exist_ok=True)
    per_layer = size_mb * 1024 * 1024 // layers
    descriptors, diff_ids = [], []
    for i in range(layers):
        payload = os.urandom(per_layer)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo(f"data/{seed}-{i}.bin")
            info.size = len(payload)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(payload))
        data = buf.getvalue()
        digest = blob(layout, data)
        diff_ids.append(digest)
        descriptors.append({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": len(data),
        })
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": f"bench {seed} {random.random()}"}],
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": blob(layout, config),
            "size": len(config),
        },
        "layers": descriptors,
    }).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": blob(layout, manifest),
            "size": len(manifest),
            "annotations": {"org.opencontainers.image.ref.name": "bench"},
        }],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)


if __name__ == "__main__":
    main()
