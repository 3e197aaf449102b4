#!/usr/bin/env bash
# The demo: installs what is needed, builds Hangar, starts `hangar server` in the background
# (API on 127.0.0.1:4280, edge proxy on :80), imports the example image (built offline from
# busybox-static), runs a machine that serves HTTP, and curls it through the proxy at
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

echo "==> building and importing the example image"
image_dir=$(mktemp -d)
trap 'rm -rf "$image_dir"' EXIT
./examples/hello/build-image.sh "$image_dir/hello"
"$hangar" images import "$image_dir/hello" --tag hello:latest

"$hangar" apps list --json | jq -e '.[] | select(.name == "hello")' >/dev/null 2>&1 || "$hangar" apps create hello
for id in $("$hangar" machine list --app hello --json | jq -r '.[].id'); do
  "$hangar" machine destroy "$id" --app hello --force >/dev/null
done
echo "==> hangar machine run hello:latest --app hello --port 80:8080/tcp:http"
"$hangar" machine run hello:latest --app hello --name web --port 80:8080/tcp:http
ip=$("$hangar" machine list --app hello --json | jq -r '.[0].private_ipv4')
echo "==> the machine answers on its private address: curl http://$ip:8080/"
curl -fsS "http://$ip:8080/" >/dev/null
echo "==> and through the edge proxy:"
echo "URL: http://hello.localhost/"
for _ in $(seq 1 50); do
  curl -fsS --resolve hello.localhost:80:127.0.0.1 http://hello.localhost/ >/dev/null 2>&1 && break
  sleep 0.1
done
echo "==> curl http://hello.localhost/"
curl -fsS --resolve hello.localhost:80:127.0.0.1 http://hello.localhost/
