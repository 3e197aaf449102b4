#!/usr/bin/env bash
# The "runc-net" peer, timed as a whole by bench.py: the host-side work Hangar does for a
# machine start, done with plain tools and no control plane: a named network namespace
# with a veth on a bridge, addresses and routes (the same `ip -batch` lines as
# hangar-net's commands.rs), a fresh overlay rootfs over the unpacked image layer, then
# `runc run -d` of a bundle that joins that namespace.
# Usage: net-start.sh CONTAINER_ID   (environment from run.sh: HGB_NET_DIR, HGB_RUNC, HGB_RUNC_ROOT)
set -euo pipefail
cid=$1
d=$HGB_NET_DIR
ip -batch - <<IP
netns add hgbench-rn
link add hgbench-rnh up master hgbench0 type veth peer name eth0 netns hgbench-rn
IP
ip -n hgbench-rn -batch - <<IP
addr add 172.30.254.2/24 dev eth0
addr add fdbe:0:254::2/64 dev eth0 nodad
link set lo up
link set eth0 up
route add default via 172.30.254.1 dev eth0
route add default via fdbe:0:254::1 dev eth0
IP
rm -rf "$d/upper" "$d/work"
mkdir -p "$d/upper" "$d/work" "$d/rootfs"
mount -t overlay overlay -o "lowerdir=$d/lower,upperdir=$d/upper,workdir=$d/work" "$d/rootfs"
exec "$HGB_RUNC" --root "$HGB_RUNC_ROOT" run -d --bundle "$d" "$cid"
