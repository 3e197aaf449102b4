#!/usr/bin/env bash
# Zero-downtime deploy time under load (issue 6): from the start of `hangar deploy DIR --image`
# (image present) until every response is the new version, for a one-machine app with an
# instant health endpoint, and the errors under load; side by side with a scripted swap of
# the same image behind nginx (swap.sh: `docker run -d` on another port, poll /health,
# rewrite the upstream, `nginx -s reload`, `docker stop` + `docker rm` the old container).
# Rounds alternate the two (the order flips every round); bench.py runs them and prints
# medians, min–max, ratios and error counts.
#
# Usage (as root, from anywhere): bench/deploy/run.sh [ROUNDS]   (default 10)
# Environment: HANGAR_BIN=path skips the release build (HGB_HANGAR_REV=commit names it in the
# output); CARGO_TARGET_DIR is honoured; TESTAPP_BIN=path skips scripts/build-testapp.sh;
# HGB_OUT=dir keeps the per-response and per-round CSVs and the commands' output
# (default /tmp/hgbench-deploy); HGB_CLIENTS (4) and HGB_PERIOD_MS (5) shape the load.
# Installs with apt what it lacks; cleans up everything it made on exit, failure or ^C:
# the app and its machines, the server, nginx, the containers and the dockerd it started.
set -euo pipefail

rounds=${1:-10}
[[ $rounds =~ ^[0-9]+$ && $rounds -ge 1 && $rounds -le 200 ]] || { echo "ROUNDS must be 1..200" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
[ "$(id -u)" = 0 ] || { echo "run.sh needs root (runc, mounts, network namespaces, dockerd): run it with sudo" >&2; exit 1; }

# --- what it needs -------------------------------------------------------------------
need=()
for p in runc docker.io nginx-light jq skopeo curl python3 iproute2; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}" >&2
  apt-get update -q >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >&2
fi
docker=/usr/bin/docker
runc=$(command -v runc)

if [ -z "${HANGAR_BIN:-}" ]; then
  hangar_rev=$(git -C "$repo" describe --always --dirty)
  (cd "$repo" && cargo build --release -p hangar >&2)
  HANGAR_BIN=${CARGO_TARGET_DIR:-$repo/target}/release/hangar
fi
[ -x "$HANGAR_BIN" ] || { echo "no hangar binary at $HANGAR_BIN" >&2; exit 1; }
TESTAPP_BIN=${TESTAPP_BIN:-$(bash "$repo/scripts/build-testapp.sh")}
[ -x "$TESTAPP_BIN" ] || { echo "no test app at $TESTAPP_BIN" >&2; exit 1; }

out=${HGB_OUT:-/tmp/hgbench-deploy}
mkdir -p "$out"
: >"$out/commands.log"
work=$(mktemp -d /tmp/hgbench-deploy.XXXXXX)
server_pid=
dockerd_pid=
addr=
nginx_started=
bridges_before=$(ip -o link show type bridge | awk -F': ' '{print $2}' | sort)
# Pools no test and no other benchmark uses. Organization bridges are named hgbr1, ...
# whatever the pools, so cleanup takes back only the addresses from these pools.
v4_pool=172.31.0.0/16
v6_pool=fdac::/16
addrs_before=$(ip -o addr show | awk '{print $2, $4}' | sort)

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
      "http://$addr/v1/apps/web?force=true"
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
  if [ -n "$nginx_started" ] && [ -s "$work/nginx/nginx.pid" ]; then
    stop_pid "$(cat "$work/nginx/nginx.pid")"
  fi
  if [ -n "$dockerd_pid" ]; then
    mapfile -t ids < <("$docker" ps -aq 2>/dev/null)
    [ ${#ids[@]} -gt 0 ] && "$docker" rm -f "${ids[@]}" >/dev/null
    stop_pid "$dockerd_pid"
  fi
  comm -13 <(echo "$addrs_before") <(ip -o addr show | awk '{print $2, $4}' | sort) |
    while read -r dev a; do
      case $dev:$a in hgbr*:172.31.* | hgbr*:fdac:*) ip addr del "$a" dev "$dev" ;; esac
    done
  # Bridges that appeared during the run and have no ports left (the organization bridge our
  # server made, docker0 of the dockerd we started) go; the others stay.
  for b in $(comm -13 <(echo "$bridges_before") <(ip -o link show type bridge | awk -F': ' '{print $2}' | sort)); do
    case $b in
      hgbr* | docker0) [ -z "$(ip -o link show master "$b")" ] && ip link del "$b" ;;
    esac
  done
  # The server's log has the deploys' steps with timestamps (created, healthy, drained):
  # kept for every run, to see where a slow round's time went.
  [ -s "$work/server.log" ] && cp "$work/server.log" "$out/server.log"
  grep -o " ${work}[^ ]*" /proc/self/mounts | sort -r | while read -r m; do umount -l "$m"; done
  [ $rc -ne 0 ] && for f in "$work/server.log" "$work/dockerd.log" "$work/nginx/error.log"; do
    [ -s "$f" ] && { echo "--- tail of $f" >&2; tail -20 "$f" >&2; cp "$f" "$out/"; }
  done
  rm -rf "$work"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port (bound and released; nothing else on this host picks ports from
# this range on purpose, and a clash fails the run loudly rather than mixing traffic).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- the image: the test app alone, as an OCI layout ----------------------------------
img=$work/web-oci
bash "$here/build-image.sh" "$TESTAPP_BIN" "$img"

# --- Hangar: server, app, image, first deploy -------------------------------------------
# setsid: a Ctrl-C reaches only this script and bench.py, so the cleanup decides the order
# in which things stop.
setsid "$HANGAR_BIN" server --data-dir "$work/hangar" --api-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --ready-file "$work/ready" --ipv4-pool "$v4_pool" --ipv6-pool "$v6_pool" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 300); do [ -s "$work/ready" ] && break; kill -0 $server_pid || break; sleep 0.1; done
[ -s "$work/ready" ] || { echo "hangar server did not become ready" >&2; exit 1; }
addr=$(sed -n 1p "$work/ready" | tr -d '[:space:]')
proxy=$(sed -n 2p "$work/ready" | tr -d '[:space:]')
export HANGAR_API_URL=http://$addr HANGAR_API_TOKEN
HANGAR_API_TOKEN=$(cat "$work/hangar/admin-token")
"$HANGAR_BIN" images import "$img" --tag web:base >/dev/null
"$HANGAR_BIN" apps create web >/dev/null
app=$work/app
mkdir -p "$app"
cat >"$app/hangar.toml" <<'TOML'
app = "web"

[env]
  VERSION = "v1"

[http_service]
  internal_port = 8080

  [[http_service.checks]]
    interval = "1s"
    timeout = "1s"
    grace_period = "1s"
    method = "GET"
    path = "/health"

[deploy]
  strategy = "rolling"
TOML
"$HANGAR_BIN" deploy "$app" --image web:base >>"$out/commands.log" 2>&1 ||
  { echo "the first hangar deploy failed; see $out/commands.log" >&2; exit 1; }

# --- docker: Debian's dockerd, started here (own data root and socket) if none runs --
if "$docker" info >/dev/null 2>&1; then
  echo "using the dockerd already running" >&2
else
  d=$work/docker
  mkdir -p "$d"
  # --iptables=false keeps the shared host's firewall as it is; published ports then go
  # through docker-proxy on 127.0.0.1, as they do for loopback clients anyway.
  setsid dockerd --data-root "$d/data" --exec-root "$d/exec" --pidfile "$d/dockerd.pid" \
    -H "unix://$d/docker.sock" --iptables=false --bip 172.30.253.1/24 >"$work/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST=unix://$d/docker.sock
  for _ in $(seq 300); do "$docker" info >/dev/null 2>&1 && break; kill -0 $dockerd_pid || break; sleep 0.1; done
  "$docker" info >/dev/null 2>&1 || { echo "dockerd could not start" >&2; exit 1; }
fi
skopeo copy -q "oci:$img:base" "docker-archive:$work/web.tar:hgbench-web:base"
"$docker" load -q -i "$work/web.tar" >/dev/null

# --- nginx in front of the first container --------------------------------------------
p1=$(free_port)
p2=$(free_port)
while [ "$p2" = "$p1" ]; do p2=$(free_port); done
nginx_port=$(free_port)
ng=$work/nginx
mkdir -p "$ng"
sed -e "s|@WORK@|$ng|g" -e "s|@LISTEN@|$nginx_port|g" "$here/nginx.conf.in" >"$ng/nginx.conf"
first=$("$docker" run -d -p "127.0.0.1:$p1:8080" -e VERSION=v1 hgbench-web:base)
echo "$first $p1" >"$ng/current"
echo "server 127.0.0.1:$p1;" >"$ng/upstream.conf"
nginx_started=1
nginx -p "$ng" -c "$ng/nginx.conf"
ok=0
for _ in $(seq 300); do
  curl -fsS -o /dev/null -m 1 -H 'Host: web.localhost' "http://127.0.0.1:$nginx_port/" 2>/dev/null && { ok=1; break; }
  sleep 0.1
done
[ $ok = 1 ] || { echo "nginx → docker did not answer on 127.0.0.1:$nginx_port" >&2; exit 1; }
curl -fsS -m 5 -H 'Host: web.localhost' "http://$proxy/" >/dev/null ||
  { echo "hangar's proxy did not answer for web.localhost on $proxy" >&2; exit 1; }

# --- the run ----------------------------------------------------------------------------
echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(free -g | awk '/Mem:/{print $2}') GiB, kernel $(uname -r)"
echo "versions: hangar ${hangar_rev:-${HGB_HANGAR_REV:-binary $HANGAR_BIN}}, runc $("$runc" --version | head -1 | awk '{print $3}'), $("$docker" version -f 'docker {{.Server.Version}}'), $(nginx -v 2>&1 | sed 's|.*/|nginx |')"
echo "command: bench/deploy/run.sh $rounds"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)"
DOCKER=$docker python3 "$here/bench.py" --rounds "$rounds" --hangar-bin "$HANGAR_BIN" --hangar-proxy "$proxy" \
  --config-dir "$app" --image web:base --nginx "127.0.0.1:$nginx_port" --nginx-prefix "$ng" \
  --swap "$here/swap.sh" --docker-image hgbench-web:base --docker-ports "$p1,$p2" \
  --clients "${HGB_CLIENTS:-4}" --period-ms "${HGB_PERIOD_MS:-5}" --out "$out"
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "samples: $out/deploy-samples.csv, rounds: $out/deploy-rounds.csv, command output: $out/commands.log"
