#!/usr/bin/env bash
# One scripted zero-downtime swap behind nginx, the way a careful Kamal/Dokku-style deploy
# does it: start the new version's container on a free loopback port, poll its /health until
# it answers 200, point nginx's upstream at it, `nginx -s reload`, wait until nginx's old
# workers have exited (SWAP_WAIT_RELOAD=0 skips this), then stop and remove the old container.
#
# Usage: swap.sh NGINX_PREFIX IMAGE VERSION NEW_PORT
# The current container's id and port are read from NGINX_PREFIX/current (`ID PORT`) and the
# new ones written there. DOCKER (default docker) is the client to use.
set -euo pipefail
prefix=${1:?usage: swap.sh NGINX_PREFIX IMAGE VERSION NEW_PORT}
image=${2:?image}
version=${3:?version}
port=${4:?new port}
docker=${DOCKER:-docker}

read -r old_id _old_port <"$prefix/current"
new_id=$("$docker" run -d -p "127.0.0.1:$port:8080" -e "VERSION=$version" "$image")

# Poll every 20 ms, at most 30 s: a careful script, not a `sleep 5`.
healthy=0
for _ in $(seq 1500); do
  if curl -fsS -o /dev/null -m 1 "http://127.0.0.1:$port/health" 2>/dev/null; then healthy=1; break; fi
  sleep 0.02
done
if [ $healthy != 1 ]; then
  echo "swap: the new container $new_id did not answer /health on 127.0.0.1:$port within 30 s" >&2
  "$docker" rm -f "$new_id" >/dev/null
  exit 1
fi

echo "server 127.0.0.1:$port;" >"$prefix/upstream.conf.new"
mv "$prefix/upstream.conf.new" "$prefix/upstream.conf"
# `nginx -s reload` only signals the master, which then starts new workers and tells the old
# ones to finish; until they have, they still pass requests to the old container. Stopping it
# at once gave 502s in half of the rounds of a first version of this script, so the swap
# waits (polling every 10 ms, at most 30 s) for the old workers to exit first.
master=$(cat "$prefix/nginx.pid")
old_workers=$(pgrep -P "$master" | tr '\n' ' ')
nginx -p "$prefix" -c "$prefix/nginx.conf" -s reload
echo "$new_id $port" >"$prefix/current"
if [ "${SWAP_WAIT_RELOAD:-1}" = 1 ]; then
  for _ in $(seq 3000); do
    alive=0
    for w in $old_workers; do kill -0 "$w" 2>/dev/null && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.01
  done
  [ "$alive" = 0 ] || echo "swap: old nginx workers ($old_workers) still run after 30 s; stopping the old container anyway" >&2
fi

"$docker" stop "$old_id" >/dev/null
"$docker" rm "$old_id" >/dev/null
