#!/usr/bin/env bash
# Undoes net-start.sh after bench.py has run `runc delete -f` (untimed). Tolerates a
# half-done start so that cleanup after a failure works too.
# Usage: net-stop.sh [CONTAINER_ID]
set -uo pipefail
d=$HGB_NET_DIR
mountpoint -q "$d/rootfs" && umount "$d/rootfs"
ip netns del hgbench-rn 2>/dev/null
ip link del hgbench-rnh 2>/dev/null
exit 0
