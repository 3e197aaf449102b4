#!/usr/bin/env bash
# Puts the static busybox the Dockerfile copies into bin/ (the context of `hangar build`).
# Usage: ./prepare.sh   (then: hangar build . --app hello, or hangar deploy / launch here)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
busybox=${BUSYBOX:-/bin/busybox}
[ -x "$busybox" ] || { echo "busybox not found at $busybox: apt-get install busybox-static" >&2; exit 1; }
# A dynamically linked busybox would not start in a FROM scratch image.
if ldd "$busybox" >/dev/null 2>&1 && ! ldd "$busybox" 2>&1 | grep -q "statically linked"; then
  echo "$busybox is not static: apt-get install busybox-static, or set BUSYBOX" >&2
  exit 1
fi
mkdir -p "$here/bin"
cp -f "$busybox" "$here/bin/busybox.tmp"
chmod 0755 "$here/bin/busybox.tmp"
mv -f "$here/bin/busybox.tmp" "$here/bin/busybox"
echo "$here/bin/busybox"
