#!/usr/bin/env bash
# Installs what Hangar needs on a fresh Debian 12 machine (as root): the container runtime,
# networking tools, test images' busybox, the peers and clients used by tests, and the
# Rust tools the checks use. Safe to run again: it skips what is already there.
set -euo pipefail

packages=(
  runc busybox-static iproute2 nftables ca-certificates curl jq
  skopeo umoci docker-registry apache2-utils
  buildah  # server-side Dockerfile builds (docs/builds.md)
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's docker-registry package starts a registry on :5000 by default; tests run their own.
if systemctl is-active --quiet docker-registry 2>/dev/null; then systemctl stop docker-registry || true; fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo is missing: install Rust 1.95.0 (rustup) first" >&2
  exit 1
fi
if [ "${1:-}" = "--dev" ]; then
  command -v cargo-nextest >/dev/null 2>&1 || cargo install --locked cargo-nextest
  command -v cargo-deny >/dev/null 2>&1 || cargo install --locked cargo-deny
fi
