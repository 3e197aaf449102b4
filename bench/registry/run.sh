#!/usr/bin/env bash
# Benchmarks the built-in registry of `hangar server` against Debian's `docker-registry`
# (the CNCF distribution server) with skopeo as the client, over loopback: push and pull of
# a ~300 MB image of random (incompressible) layers. Every round pushes a fresh image (so no
# blob is skipped as already present) to both registries in alternating order, then pulls it
# back from both into fresh directories. The summary prints median and min-max seconds,
# MB/s and the ratio Hangar/docker-registry of throughput. With --append, the summary is
# appended to docs/benchmarks.md.
#
# Needs: apt-get install -y docker-registry skopeo runc (root: hangar server's preflight).
# Knobs (environment): ROUNDS=5 SIZE_MB=300 LAYERS=3 HANGAR_BIN=<prebuilt hangar>
set -euo pipefail

ROUNDS=${ROUNDS:-5}
SIZE_MB=${SIZE_MB:-300}
LAYERS=${LAYERS:-3}
APPEND=0
[[ "${1:-}" == "--append" ]] && APPEND=1

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
for tool in docker-registry skopeo python3 curl; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y docker-registry skopeo" >&2; exit 1; }
done
if [[ -z "${HANGAR_BIN:-}" ]]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
    cargo build --quiet --release -p hangar --manifest-path "$root/Cargo.toml"
    HANGAR_BIN=$CARGO_TARGET_DIR/release/hangar
fi

work=$(mktemp -d /tmp/hangar-bench-registry.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# Hangar: its own data dir and pools (no machine runs, so no bridge is made).
"$HANGAR_BIN" server --data-dir "$work/hangar" --api-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
    --ipv4-pool 172.27.0.0/16 --ipv6-pool fdac::/16 --ready-file "$work/ready" \
    >"$work/hangar.log" 2>&1 & pids+=($!)
for _ in $(seq 1 300); do [[ -s "$work/ready" ]] && break; sleep 0.1; done
[[ -s "$work/ready" ]] || { echo "hangar server did not start:" >&2; cat "$work/hangar.log" >&2; exit 1; }
hangar_host=$(head -1 "$work/ready")
token=$(cat "$work/hangar/admin-token")
curl -fsS -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    --data '{"app_name":"bench"}' "http://$hangar_host/v1/apps"

# docker-registry: filesystem storage in the work dir, loopback only, no auth.
dr_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat >"$work/registry.yml" <<YAML
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $work/docker-registry
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$dr_port
YAML
docker-registry serve "$work/registry.yml" >"$work/docker-registry.log" 2>&1 & pids+=($!)
for _ in $(seq 1 100); do curl -fs -o /dev/null "http://127.0.0.1:$dr_port/v2/" && break; sleep 0.1; done
curl -fsS -o /dev/null "http://127.0.0.1:$dr_port/v2/" || { echo "docker-registry did not start" >&2; exit 1; }

declare -A host=([hangar]=$hangar_host [docker-registry]=127.0.0.1:$dr_port)
declare -A creds=([hangar]="--creds=bench:$token" [docker-registry]="")
results=$work/results.tsv
: >"$results"
now() { date +%s.%N; }

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load before: $load_before"
for round in $(seq 1 "$ROUNDS"); do
    layout=$work/image-$round
    python3 "$here/make_image.py" "$layout" "$SIZE_MB" "$LAYERS" "$round-$$"
    bytes=$(du -sb "$layout/blobs" | cut -f1)
    if (( round % 2 )); then order=(hangar docker-registry); else order=(docker-registry hangar); fi
    for op in push pull; do
        for name in "${order[@]}"; do
            ref="docker://${host[$name]}/bench/img:r$round"
            # shellcheck disable=SC2086 # creds is one word or empty
            if [[ $op == push ]]; then
                start=$(now)
                skopeo copy --quiet --dest-tls-verify=false ${creds[$name]/--creds/--dest-creds} "oci:$layout:bench" "$ref"
            else
                out=$work/pull-$name-$round
                start=$(now)
                skopeo copy --quiet --src-tls-verify=false ${creds[$name]/--creds/--src-creds} "$ref" "dir:$out"
            fi
            end=$(now)
            printf '%s\t%s\t%s\t%s\n' "$name" "$op" "$(python3 -c "print($end-$start)")" "$bytes" >>"$results"
            [[ $op == pull ]] && rm -rf "$out"
        done
    done
    rm -rf "$layout"
    sync
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
echo "load after: $load_after"

summary=$(python3 - "$results" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().splitlines()]
data = {}
for name, op, secs, size in rows:
    data.setdefault((name, op), []).append((float(secs), int(size)))
print("| op | registry | median s | min-max s | median MB/s | rounds |")
print("|---|---|---|---|---|---|")
med = {}
for op in ("push", "pull"):
    for name in ("hangar", "docker-registry"):
        samples = data[(name, op)]
        secs = [s for s, _ in samples]
        mbs = statistics.median(size / s / 1e6 for s, size in samples)
        med[(name, op)] = mbs
        print(f"| {op} | {name} | {statistics.median(secs):.2f} | {min(secs):.2f}-{max(secs):.2f} | {mbs:.0f} | {len(secs)} |")
print()
for op in ("push", "pull"):
    print(f"- {op}: hangar/docker-registry throughput = {med[('hangar', op)] / med[('docker-registry', op)]:.2f}x")
PY
)
echo "$summary"
if [[ $APPEND == 1 ]]; then
    {
        echo
        echo "## Registry push/pull vs docker-registry ($(date -u +%Y-%m-%d))"
        echo
        echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r); skopeo $(skopeo --version | awk '{print $3}'), docker-registry $(dpkg-query -W -f='${Version}' docker-registry 2>/dev/null || echo '?')."
        echo "Load average before: $load_before, after: $load_after."
        echo "Command: \`ROUNDS=$ROUNDS SIZE_MB=$SIZE_MB LAYERS=$LAYERS bench/registry/run.sh --append\`"
        echo
        echo "$summary"
    } >>"$root/docs/benchmarks.md"
fi
