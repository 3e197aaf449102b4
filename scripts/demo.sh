#!/usr/bin/env bash
# The demo: installs what is needed, builds Hangar, starts `hangar server` in the background
# (API on 127.0.0.1:4280, edge proxy on :80), then `hangar launch examples/hello`: writes
# examples/hello/hangar.toml, creates the app, builds the Dockerfile on the server (buildah,
# offline: FROM scratch with busybox-static), deploys it, and curls it through the proxy at
# http://hello.localhost/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh

echo "==> building hangar (release)"
cargo build --release --locked -p hangar
hangar=$PWD/target/release/hangar
data_dir=${HANGAR_DATA_DIR:-/var/lib/hangar}
export HANGAR_DATA_DIR=$data_dir

if ! curl -fsS http://127.0.0.1:4280/healthz >/dev/null 2>&1; then
  echo "==> starting hangar server (log: /var/log/hangar.log)"
  nohup "$hangar" server --data-dir "$data_dir" >/var/log/hangar.log 2>&1 &
  for _ in $(seq 1 100); do
    curl -fsS http://127.0.0.1:4280/healthz >/dev/null 2>&1 && break
    sleep 0.1
  done
  curl -fsS http://127.0.0.1:4280/healthz >/dev/null || { cat /var/log/hangar.log; exit 1; }
fi

echo "==> hangar launch examples/hello (Dockerfile FROM scratch, built on the server by buildah, offline)"
./examples/hello/prepare.sh >/dev/null
"$hangar" launch examples/hello --name hello
echo "==> hangar status --app hello"
"$hangar" status --app hello
echo "URL: http://hello.localhost/"
for _ in $(seq 1 50); do
  curl -fsS --resolve hello.localhost:80:127.0.0.1 http://hello.localhost/ >/dev/null 2>&1 && break
  sleep 0.1
done
echo "==> curl http://hello.localhost/"
curl -fsS --resolve hello.localhost:80:127.0.0.1 http://hello.localhost/
