#!/usr/bin/env bash
# Property-based API tests: runs schemathesis against a real `hangar server` using the
# server's own GET /v1/openapi.json, and fails on any 5xx, undocumented status code or
# content type, or response that does not match its schema.
#
# Usage (as root, from anywhere): scripts/schemathesis.sh [extra schemathesis run args...]
# Environment:
#   CARGO_TARGET_DIR     where `cargo build -p hangar` puts the binary (default: <repo>/target)
#   HANGAR_BIN           use this binary instead of building one
#   ST_MAX_EXAMPLES      test cases per operation in the fuzzing phase (default 25)
#   ST_REQUEST_TIMEOUT   seconds per request (default 20)
#   ST_SCHEMA            test against this document instead of the one the server serves
#                        (e.g. crates/hangar-control/openapi.json while editing it)
#   ST_KEEP=1            keep the work directory (server log, reports) after the run
#
# What it does: builds the binary from the current tree, starts `hangar server` on
# 127.0.0.1:<free port> with a temporary data dir and address pools of its own
# (172.31.0.0/16, fdac::/16), imports a small busybox image (examples/hello), creates an
# app with two machines the machine operations are pointed at, runs schemathesis, then
# destroys every machine and stops the server, also when something fails.
#
# Traffic stays on loopback and the server's own bridges: image pulls are not fuzzed
# (POST /v1/images/pull is excluded) and a hook pins `config.image` of generated machine
# bodies to the local image, so no generated body makes the server reach a registry.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
max_examples=${ST_MAX_EXAMPLES:-25}
request_timeout=${ST_REQUEST_TIMEOUT:-20}

if [ "$(id -u)" != 0 ]; then
  echo "schemathesis.sh: run as root: the server runs machines with runc and creates bridges" >&2
  exit 1
fi
for tool in curl jq runc busybox; do
  command -v "$tool" >/dev/null || { echo "schemathesis.sh: $tool is missing (apt-get install curl jq runc busybox-static)" >&2; exit 1; }
done
if ! command -v schemathesis >/dev/null; then
  echo "schemathesis.sh: installing schemathesis with pip" >&2
  python3 -m pip install --quiet 'schemathesis>=4.32,<5'
  hash -r
fi

if [ -n "${HANGAR_BIN:-}" ]; then
  hangar=$HANGAR_BIN
else
  (cd "$repo" && cargo build --quiet -p hangar)
  hangar=${CARGO_TARGET_DIR:-$repo/target}/debug/hangar
fi

work=$(mktemp -d /tmp/hangar-schemathesis.XXXXXX)
data=$work/data
server_pid=
addr=
token=

api() { # METHOD PATH [curl args...]: prints the body; fails on a non-2xx status.
  local method=$1 path=$2
  shift 2
  curl --silent --show-error --fail-with-body --max-time 60 -X "$method" \
    -H "Authorization: Bearer $token" "http://$addr$path" "$@"
}

cleanup() {
  local rc=$?
  set +e
  if [ -n "$addr" ] && [ -n "$token" ]; then
    # Destroy every machine of every app (also those the fuzzer created), so that no
    # container, netns or mount outlives the run.
    for app in $(api GET /v1/apps | jq -r '.apps[].name'); do
      for id in $(api GET "/v1/apps/$app/machines" | jq -r '.[].id'); do
        api DELETE "/v1/apps/$app/machines/$id?force=true" >/dev/null ||
          echo "schemathesis.sh: could not destroy machine $id of $app" >&2
      done
    done
  fi
  if [ -n "$server_pid" ]; then
    kill -TERM "$server_pid" 2>/dev/null
    # Bounded wait for a clean shutdown, then SIGKILL.
    for _ in $(seq 1 100); do
      kill -0 "$server_pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
  fi
  if [ "${ST_KEEP:-0}" = 1 ] || [ "$rc" != 0 ]; then
    echo "schemathesis.sh: kept $work (server.log, report/)" >&2
  else
    rm -rf "$work"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

"$hangar" server --data-dir "$data" --api-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  --ready-file "$work/ready" --ipv4-pool 172.31.0.0/16 --ipv6-pool fdac::/16 >"$work/server.log" 2>&1 &
server_pid=$!
# The ready file holds the API's address on line 1 (and the proxy's on line 2).
for _ in $(seq 1 300); do
  [ -s "$work/ready" ] && [ "$(wc -l <"$work/ready")" -ge 1 ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; echo "schemathesis.sh: the server exited" >&2; exit 1; }
  sleep 0.1
done
[ -s "$work/ready" ] || { echo "schemathesis.sh: the server did not become ready in 30s" >&2; exit 1; }
addr=$(head -n 1 "$work/ready")
token=$(cat "$data/admin-token")
echo "schemathesis.sh: server on $addr (data in $data)"

# A small image: busybox-static with a few applets (examples/hello's httpd image).
image=st-busybox:latest
"$repo/examples/hello/build-image.sh" "$work/image" >/dev/null
for tag in "$image" st-doomed:latest; do
  HANGAR_API_URL=http://$addr HANGAR_API_TOKEN=$token "$hangar" images import "$work/image" --tag "$tag" >/dev/null
done

# st-app holds the machines the machine operations act on; st-doomed and the st-doomed
# image exist to be deleted, so that deletes succeed without removing what the rest needs.
for app in st-app st-doomed; do
  api POST /v1/apps -H 'Content-Type: application/json' -d "{\"app_name\": \"$app\"}" >/dev/null
done
# The machines exit on any catchable signal (a shell as PID 1 ignores the ones it does not
# trap), so fuzzed stops and restarts finish at once instead of waiting out their grace
# period; `always` brings them back after a fuzzed signal.
launch() { # NAME: creates a started machine, prints its id.
  jq -n --arg image "$image" --arg name "$1" '{name: $name, config: {image: $image,
    init: {exec: ["/bin/sh", "-c", "trap \"exit 0\" HUP INT QUIT ILL TRAP ABRT FPE USR1 SEGV USR2 PIPE ALRM TERM; while :; do sleep 1; done"]},
    restart: {policy: "always"}, stop_config: {timeout: "2s"}}}' |
    api POST /v1/apps/st-app/machines -H 'Content-Type: application/json' -d @- | jq -r .id
}
main_id=$(launch st-main)
victim_id=$(launch st-victim)
echo "schemathesis.sh: machines $main_id (operations on a machine) and $victim_id (destroy)"

cat >"$work/hooks.py" <<EOF
import schemathesis

MACHINE_BODIES = {("POST", "/v1/apps/{app}/machines"), ("POST", "/v1/apps/{app}/machines/{id}")}


@schemathesis.hook
def before_call(context, case, kwargs):
    # Generated images would make the server pull from registries: pin them to the local one.
    if (case.operation.method.upper(), case.operation.path) in MACHINE_BODIES:
        body = case.body
        if isinstance(body, dict) and isinstance(body.get("config"), dict) and "image" in body["config"]:
            body["config"]["image"] = "$image"
EOF

# Operation names are "METHOD /path". Only the first matching [[operations]] entry applies.
cat >"$work/schemathesis.toml" <<EOF
[[operations]]
include-name = "DELETE /v1/apps/{app}/machines/{id}"
parameters = { "path.app" = "st-app", "path.id" = "$victim_id" }

[[operations]]
include-name = ["POST /v1/apps/{app}/machines", "POST /v1/apps/{app}/machines/{id}"]
parameters = { "path.app" = "st-app", "path.id" = "$main_id" }
# Every generated body that is valid starts a machine: keep them few.
generation.max-examples = 5
phases.coverage.enabled = false

[[operations]]
include-name = "GET /v1/apps/{app}/machines/{id}/logs"
# follow=true streams until the client goes away.
parameters = { "path.app" = "st-app", "path.id" = "$main_id", "query.follow" = "false" }

[[operations]]
include-name = "GET /v1/apps/{app}/machines/{id}/wait"
parameters = { "path.app" = "st-app", "path.id" = "$main_id", "query.timeout" = 1 }

[[operations]]
include-path-regex = "^/v1/apps/\\\\{app\\\\}/machines"
parameters = { "path.app" = "st-app", "path.id" = "$main_id" }

[[operations]]
include-name = "GET /v1/apps/{app}"
parameters = { "path.app" = "st-app" }

[[operations]]
include-name = "DELETE /v1/apps/{app}"
parameters = { "path.app" = "st-doomed" }

[[operations]]
include-name = "DELETE /v1/images/{name}"
parameters = { "path.name" = "st-doomed:latest" }
EOF

echo "schemathesis.sh: running schemathesis (max $max_examples examples per operation)"
schema=${ST_SCHEMA:-http://$addr/v1/openapi.json}
[ -f "$schema" ] && schema=$(realpath "$schema")
# From the work directory, so that schemathesis's cache (.schemathesis/) stays out of the tree.
cd "$work"
SCHEMATHESIS_HOOKS=hooks PYTHONPATH=$work schemathesis --config-file "$work/schemathesis.toml" run \
  "$schema" --url "http://$addr/" \
  --header "Authorization: Bearer $token" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --exclude-name "POST /v1/images/pull" \
  --phases examples,coverage,fuzzing \
  --max-examples "$max_examples" \
  --request-timeout "$request_timeout" \
  --workers 2 \
  --seed "${ST_SEED:-1}" \
  --generation-database none \
  --report junit --report-dir "$work/report" \
  "$@"
echo "schemathesis.sh: no failures"
