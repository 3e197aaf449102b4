#!/usr/bin/env bash
# Machine start latency: the time of Hangar's create call (`POST /v1/apps/bench/machines`,
# which answers once the machine is `started`) against starting the same image with bare
# `runc run -d` (runc's default spec: a fresh, empty network namespace), with "runc-net"
# (the same host work Hangar does: netns + veth on a bridge + addresses + overlay rootfs,
# then `runc run -d`; see net-start.sh) and with Debian's `docker run -d`.
# Rounds alternate the systems (rotating the order); each start is checked and then
# undone untimed. Prints median and min–max of each and the ratios.
#
# Usage (as root, from anywhere): bench/machine-start/run.sh [ROUNDS]   (default 30)
# Environment: HANGAR_BIN=path skips the release build (HGB_HANGAR_REV=commit names it in the
# output); CARGO_TARGET_DIR is honoured;
# HGB_OUT=dir keeps the per-sample CSV, the strace log and logs (default /tmp/hgbench-results);
# HGB_PROFILE=N makes N more Hangar starts under strace after the run and prints where
# their time goes (default 10; 0 skips it).
# Installs with apt what it lacks; cleans up everything it made on exit, failure or ^C:
# machines, the server, runc containers, the namespace and bridges, the dockerd it started.
set -euo pipefail

rounds=${1:-30}
[[ $rounds =~ ^[0-9]+$ && $rounds -ge 1 && $rounds -le 1000 ]] || { echo "ROUNDS must be 1..1000" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run.sh needs root (runc, mounts, network namespaces): run it with sudo" >&2; exit 1; }

# --- what it needs -------------------------------------------------------------------
need=()
for p in runc docker.io busybox-static jq skopeo curl python3 iproute2 strace; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
# Debian's client (a docker CLI elsewhere in PATH may be another version).
docker=/usr/bin/docker
runc=$(command -v runc)

if [ -z "${HANGAR_BIN:-}" ]; then
  hangar_rev=$(git -C "$repo" describe --always --dirty)
  (cd "$repo" && cargo build --release -p hangar >&2)
  HANGAR_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/hangar
fi
[ -x "$HANGAR_BIN" ] || { echo "no hangar binary at $HANGAR_BIN" >&2; exit 1; }

out=${HGB_OUT:-/tmp/hgbench-results}
mkdir -p "$out"
work=$(mktemp -d /tmp/hgbench.XXXXXX)
server_pid=
dockerd_pid=
addr=
bridges_before=$(ip -o link show type bridge | awk -F': ' '{print $2}' | sort)
# Hangar names organization bridges hgbr1, hgbr2, ... whatever its pools, so another Hangar
# on this host may share ours: cleanup takes back only the addresses from our pools.
v4_pool=172.28.0.0/16
v6_pool=fdad::/16
addrs_before=$(ip -o addr show | awk '{print $2, $4}' | sort)

export HGB_RUNC=$runc HGB_RUNC_ROOT=$work/runc-state HGB_NET_DIR=$work/runc-net

# Waits (bounded) for a process to exit after a signal; SIGKILL if it does not.
stop_pid() {
  local pid=$1
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  if [ -n "$addr" ]; then
    curl -s -m 60 -o /dev/null -X DELETE -H "Authorization: Bearer $(cat "$work/hangar/admin-token")" \
      "http://$addr/v1/apps/bench?force=true"
  fi
  [ -n "$server_pid" ] && stop_pid "$server_pid"
  # Machines the server could not destroy (it died first) are removed by hand: only
  # those of this run's data directory.
  if [ -d "$work/hangar/runc" ]; then
    for c in $("$runc" --root "$work/hangar/runc" list -q 2>/dev/null); do
      "$runc" --root "$work/hangar/runc" delete -f "$c"
    done
  fi
  for m in "$work"/hangar/machines/*; do
    [ -d "$m" ] && ip netns del "hangar-$(basename "$m")" 2>/dev/null
  done
  for c in $("$runc" --root "$HGB_RUNC_ROOT" list -q 2>/dev/null); do
    "$runc" --root "$HGB_RUNC_ROOT" delete -f "$c"
  done
  [ -d "$HGB_NET_DIR" ] && bash "$here/net-stop.sh"
  if [ -n "$dockerd_pid" ]; then
    mapfile -t ids < <("$docker" ps -aq 2>/dev/null)
    [ ${#ids[@]} -gt 0 ] && "$docker" rm -f "${ids[@]}" >/dev/null
    stop_pid "$dockerd_pid"
  fi
  comm -13 <(echo "$addrs_before") <(ip -o addr show | awk '{print $2, $4}' | sort) |
    while read -r dev a; do
      case $dev:$a in hgbr*:172.28.* | hgbr*:fdad:*) ip addr del "$a" dev "$dev" ;; esac
    done
  # Bridges that appeared during the run and have no ports left (ours, the organization
  # bridge our server made, docker0 of the dockerd we started) go; bridges that were
  # there before, or that another Hangar on this host still uses, stay.
  for b in $(comm -13 <(echo "$bridges_before") <(ip -o link show type bridge | awk -F': ' '{print $2}' | sort)); do
    case $b in
      hgbench0 | hgbr* | docker0) [ -z "$(ip -o link show master "$b")" ] && ip link del "$b" ;;
    esac
  done
  # Anything still mounted under the work dir (a failed start) is unmounted before removal.
  grep -o " ${work}[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
  [ $rc -ne 0 ] && for f in "$work/server.log" "$work/dockerd.log"; do
    [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -20 "$f" >&2; cp "$f" "$out/"; }
  done
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the image, as an OCI layout --------------------------------------------------
img=$work/hello-oci
bash "$repo/examples/hello/build-image.sh" "$img" >/dev/null

# --- Hangar -------------------------------------------------------------------------
# setsid: a Ctrl-C reaches only this script and bench.py, so the cleanup below, not the
# signal, decides the order in which things stop (machines survive their server's exit).
setsid "$HANGAR_BIN" server --data-dir "$work/hangar" --api-listen 127.0.0.1:0 --ready-file "$work/ready" \
  --ipv4-pool "$v4_pool" --ipv6-pool "$v6_pool" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do [ -s "$work/ready" ] && break; kill -0 $server_pid || break; sleep 0.1; done
[ -s "$work/ready" ] || { echo "hangar server did not become ready" >&2; exit 1; }
addr=$(tr -d '[:space:]' <"$work/ready")
export HANGAR_API_URL=http://$addr HANGAR_API_TOKEN
HANGAR_API_TOKEN=$(cat "$work/hangar/admin-token")
"$HANGAR_BIN" images import "$img" --tag hello:latest >/dev/null
"$HANGAR_BIN" apps create bench >/dev/null

# --- bare runc bundle: the same layer, the image config's command, runc's defaults ----
bundle=$work/runc-bundle
mkdir -p "$bundle/rootfs" "$HGB_RUNC_ROOT"
manifest=$(jq -r '.manifests[0].digest' "$img/index.json" | sed 's/:/\//')
layer=$(jq -r '.layers[0].digest' "$img/blobs/$manifest" | sed 's/:/\//')
imgcfg=$img/blobs/$(jq -r '.config.digest' "$img/blobs/$manifest" | sed 's/:/\//')
tar -xzf "$img/blobs/$layer" -C "$bundle/rootfs"
"$runc" spec --bundle "$bundle"
jq --slurpfile img "$imgcfg" '
  .process.terminal = false
  | .process.args = (($img[0].config.Entrypoint // []) + ($img[0].config.Cmd // []))
  | .process.env = $img[0].config.Env
  | .process.cwd = $img[0].config.WorkingDir
  | .root.readonly = false
  | .hostname = "hgbench"' "$bundle/config.json" >"$bundle/config.json.new"
mv "$bundle/config.json.new" "$bundle/config.json"

# --- runc-net: the same bundle joining a named netns, rootfs an overlay over the layer --
mkdir -p "$HGB_NET_DIR"
cp -a "$bundle/rootfs" "$HGB_NET_DIR/lower"
jq '.root.path = "rootfs"
  | .linux.namespaces = [.linux.namespaces[] | if .type == "network" then .path = "/run/netns/hgbench-rn" else . end]' \
  "$bundle/config.json" >"$HGB_NET_DIR/config.json"
ip link del hgbench0 2>/dev/null || true
ip -batch - <<IP
link add hgbench0 type bridge
addr add 172.30.254.1/24 dev hgbench0
addr add fdbe:0:254::1/64 dev hgbench0 nodad
link set hgbench0 up
IP

# --- docker: Debian's dockerd, started here (own data root and socket) if none runs --
docker_args=()
if "$docker" info >/dev/null 2>&1; then
  echo "using the dockerd already running" >&2
else
  d=$work/docker
  mkdir -p "$d"
  # --iptables=false keeps the shared host's firewall as it is; `docker run -d` without
  # published ports adds no rules per container, so the timed path is unchanged.
  setsid dockerd --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" \
    -H "unix://$d/docker.sock" --iptables=false --bip 172.31.254.1/24 >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST=unix://$d/docker.sock
  for _ in $(seq 300); do "$docker" info >/dev/null 2>&1 && break; kill -0 $dockerd_pid || break; sleep 0.1; done
  if ! "$docker" info >/dev/null 2>&1; then
    echo "dockerd could not start; docker is left out. Its log:" >&2
    tail -20 "$work/dockerd.log" >&2
    cp "$work/dockerd.log" "$out/"
    docker=
  fi
fi
if [ -n "$docker" ]; then
  skopeo copy -q "oci:$img:hello:latest" "docker-archive:$work/hello.tar:hgbench-hello:latest"
  "$docker" load -q -i "$work/hello.tar" >/dev/null
  docker_args=(--docker "$docker" --docker-image hgbench-hello:latest)
  echo "docker: $("$docker" version -f 'server {{.Server.Version}}, client {{.Client.Version}}'), storage $("$docker" info -f '{{.Driver}}')" >&2
fi

# --- the run ----------------------------------------------------------------------------
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r), cgroup $([ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] && echo v2 || echo v1)"
echo "versions: runc $("$runc" --version | head -1 | awk '{print $3}'), hangar ${hangar_rev:-${HGB_HANGAR_REV:-binary $HANGAR_BIN}}"
echo "command: bench/machine-start/run.sh $rounds"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$here/bench.py" --rounds "$rounds" --hangar-addr "$addr" \
  --hangar-token-file "$work/hangar/admin-token" --app bench --image hello:latest \
  --runc "$runc" --runc-root "$HGB_RUNC_ROOT" --runc-bundle "$bundle" \
  --runc-net-script "$here/net-start.sh" --runc-net-teardown "$here/net-stop.sh" \
  --csv "$out/machine-start.csv" "${docker_args[@]}"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "samples: $out/machine-start.csv"

# --- where Hangar's time goes (strace; HGB_PROFILE=0 skips it) -----------------------
profile=${HGB_PROFILE:-10}
if [ "$profile" -gt 0 ]; then
  echo
  python3 "$here/profile.py" --rounds "$profile" --server-pid "$server_pid" \
    --shim-exe "$(readlink -f "$HANGAR_BIN")" --hangar-addr "$addr" --machines-dir "$work/hangar/machines" \
    --hangar-token-file "$work/hangar/admin-token" --app bench --image hello:latest \
    --log "$out/machine-start.strace"
fi
