#!/usr/bin/env bash
# Benchmarks the Hangar edge proxy against nginx and haproxy in front of the same fast upstream
# on loopback. Each proxy is pinned to core 1; the load generator and the upstream share core 0.
# nginx and haproxy are configured to do the same work per request as Hangar (the forwarding
# headers and a request id, sent upstream and echoed back): core 0 parses what the proxies
# send, so a proxy that sends less would make core 0's share of the work smaller.
# Runs alternate between the proxies, ROUNDS times, and the summary prints median, min-max and
# ratios. With --append, the summary is appended to docs/benchmarks.md.
#
# Needs: apt-get install -y nginx-light haproxy wrk nghttp2-client
# Knobs (environment): ROUNDS=5 DURATION=10 CONNS=64 RATE=10000 RATE_REQUESTS=100000 IDLE=9000
set -euo pipefail

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-64}
RATE=${RATE:-10000}
RATE_REQUESTS=${RATE_REQUESTS:-100000}
# haproxy needs two descriptors per maxconn slot and the container caps descriptors at 20000,
# so 9,000 idle connections is the most all three proxies can hold here.
IDLE=${IDLE:-9000}
APPEND=0
[[ "${1:-}" == "--append" ]] && APPEND=1

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
for tool in nginx haproxy wrk h2load taskset python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install -y nginx-light haproxy wrk nghttp2-client" >&2; exit 1; }
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target}
cargo build --quiet --release -p hangar-proxy --examples --manifest-path "$root/Cargo.toml"
ex=$CARGO_TARGET_DIR/release/examples
ulimit -n "$(ulimit -Hn)"

work=$(mktemp -d /tmp/hangar-bench-proxy.XXXXXX)
mkdir -p /tmp/hangar-bench-nginx
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

taskset -c 0 "$ex/upstream" 127.0.0.1:18000 2>/dev/null & pids+=($!)
taskset -c 1 "$ex/edge" 127.0.0.1:18081 127.0.0.1:18000 2>/dev/null & pids+=($!); edge_pid=$!
taskset -c 1 nginx -c "$here/nginx.conf" -p /tmp/hangar-bench-nginx & pids+=($!); nginx_pid=$!
taskset -c 1 haproxy -f "$here/haproxy.cfg" & pids+=($!); haproxy_pid=$!

declare -A port=([hangar]=18081 [nginx]=18082 [haproxy]=18083)
for name in hangar nginx haproxy; do
    ok=0
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null -H 'Host: bench.localhost' "http://127.0.0.1:${port[$name]}/"; then ok=1; break; fi
        sleep 0.1
    done
    [[ $ok == 1 ]] || { echo "$name did not come up on ${port[$name]}" >&2; exit 1; }
done

# All processes of a proxy (nginx runs a master and a worker).
proxy_pids() {
    case $1 in
        hangar) echo "$edge_pid" ;;
        nginx) echo "$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')" ;;
        haproxy) echo "$haproxy_pid $(pgrep -P "$haproxy_pid" | tr '\n' ' ')" ;;
    esac
}
cpu_ticks() {
    local total=0
    for pid in $(proxy_pids "$1"); do
        total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
    done
    echo "$total"
}
pss_kib() {
    local total=0
    for pid in $(proxy_pids "$1"); do
        total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")))
    done
    echo "$total"
}
to_us() { # wrk latency like 812.00us / 1.23ms / 2.00s
    python3 -c "import sys,re; v=sys.argv[1]; m=re.match(r'([0-9.]+)(us|ms|s)',v); print(float(m.group(1))*{'us':1,'ms':1000,'s':1e6}[m.group(2)])" "$1"
}

results=$work/results.tsv
: >"$results"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
names=(hangar nginx haproxy)
echo "throughput: wrk -t1 -c$CONNS -d${DURATION}s, $ROUNDS alternating rounds" >&2
for round in $(seq 1 "$ROUNDS"); do
    # Rotate the order each round so that no proxy always runs first or last.
    order=("${names[@]:$(( (round - 1) % 3 ))}" "${names[@]:0:$(( (round - 1) % 3 ))}")
    for name in "${order[@]}"; do
        out=$(taskset -c 0 wrk -t1 -c"$CONNS" -d"${DURATION}s" --latency -H 'Host: bench.localhost' "http://127.0.0.1:${port[$name]}/")
        rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        p50=$(to_us "$(awk '$1 == "50%" {print $2}' <<<"$out")")
        p99=$(to_us "$(awk '$1 == "99%" {print $2}' <<<"$out")")
        errors=$(awk '/Socket errors|Non-2xx/ {print}' <<<"$out" | tr '\n' ' ')
        printf '%s\trps\t%s\n%s\tp50_us\t%s\n%s\tp99_us\t%s\n' "$name" "$rps" "$name" "$p50" "$name" "$p99" >>"$results"
        echo "  round $round $name: $rps req/s p50 ${p50}us p99 ${p99}us $errors" >&2
    done
done

per_client=$((RATE / 50))
echo "cpu: h2load --h1 -c50 --rps $per_client (= $RATE req/s) -n $RATE_REQUESTS" >&2
hz=$(getconf CLK_TCK)
for round in $(seq 1 "$ROUNDS"); do
    order=("${names[@]:$(( (round - 1) % 3 ))}" "${names[@]:0:$(( (round - 1) % 3 ))}")
    for name in "${order[@]}"; do
        before=$(cpu_ticks "$name")
        out=$(taskset -c 0 h2load --h1 -c50 --rps "$per_client" -n "$RATE_REQUESTS" -H ':authority: bench.localhost' "http://127.0.0.1:${port[$name]}/")
        after=$(cpu_ticks "$name")
        done_ok=$(awk '/^requests:/ {print $8}' <<<"$out")
        [[ "${done_ok:-0}" -gt 0 ]] || { echo "h2load got no successful response from $name: $out" >&2; exit 1; }
        cpu=$(python3 -c "print(($after - $before) / $hz / $done_ok * 100000)")
        printf '%s\tcpu_s_per_100k\t%s\n' "$name" "$cpu" >>"$results"
        echo "  round $round $name: $cpu CPU-s per 100k requests ($done_ok succeeded)" >&2
    done
done

echo "h2c: h2load -c10 -m10 -n 100000 through the Hangar proxy (prior knowledge)" >&2
h2c=$(taskset -c 0 h2load -c10 -m10 -n 100000 -H ':authority: bench.localhost' "http://127.0.0.1:${port[hangar]}/")
grep -E '^(finished|requests:|status codes)' <<<"$h2c" >&2
grep -q 'requests: 100000 total, 100000 started, 100000 done, 100000 succeeded' <<<"$h2c" || { echo "h2c run failed" >&2; exit 1; }

echo "memory: $IDLE idle keep-alive client connections" >&2
for name in "${names[@]}"; do
    before=$(pss_kib "$name")
    coproc IDLE_CLIENTS { taskset -c 0 "$ex/idle_clients" "127.0.0.1:${port[$name]}" "$IDLE"; }
    read -r ready _ <&"${IDLE_CLIENTS[0]}"
    [[ "$ready" == ready ]] || { echo "idle clients failed against $name" >&2; exit 1; }
    after=$(pss_kib "$name")
    # Closing the clients' stdin makes them exit.
    to_clients=${IDLE_CLIENTS[1]}
    exec {to_clients}>&-
    wait "$IDLE_CLIENTS_PID" || true
    printf '%s\tpss_kib_idle\t%s\n%s\tkib_per_idle_conn\t%s\n' "$name" "$after" "$name" "$(python3 -c "print(($after - $before) / $IDLE)")" >>"$results"
    echo "  $name: Pss ${before} KiB -> ${after} KiB with $IDLE idle connections" >&2
    sleep 1
done

load_after=$(cut -d' ' -f1-3 /proc/loadavg)
nginx_version=$(nginx -v 2>&1 | cut -d/ -f2)
# awk reads all of its input: `head` would make haproxy die of SIGPIPE under pipefail.
haproxy_version=$(haproxy -v 2>/dev/null | awk 'NR == 1 {print $3}')
summary=$(python3 - "$results" "$ROUNDS" "$DURATION" "$CONNS" "$RATE" "$RATE_REQUESTS" "$IDLE" "$nginx_version" "$haproxy_version" "$load_before" "$load_after" <<'PY'
import statistics, sys, collections, datetime, platform, subprocess
path, rounds, duration, conns, rate, rate_requests, idle, nginx_version, haproxy_version, load_before, load_after = sys.argv[1:]
data = collections.defaultdict(list)
for line in open(path):
    name, metric, value = line.rstrip("\n").split("\t")
    data[(name, metric)].append(float(value))
metrics = [("rps", "requests/s (wrk)", True), ("p50_us", "p50 latency µs", False),
           ("p99_us", "p99 latency µs", False), ("cpu_s_per_100k", f"CPU-s per 100k req at {rate} req/s", False),
           ("pss_kib_idle", f"Pss KiB with {idle} idle conns", False), ("kib_per_idle_conn", "KiB per idle conn", False)]
def fmt(v):
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.2f}"
cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"], capture_output=True, text=True).stdout.strip()
out = []
out.append(f"## Edge proxy vs nginx vs haproxy ({datetime.date.today().isoformat()})\n")
out.append(f"Machine: {platform.node()}, {cpu}, {subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores, Linux {platform.release()}. "
           f"nginx {nginx_version}, haproxy {haproxy_version}. Load average (1/5/15 min) {load_before} at the start, {load_after} at the end.\n")
out.append(f"Command: `bench/proxy/run.sh` (ROUNDS={rounds} DURATION={duration} CONNS={conns} RATE={rate} RATE_REQUESTS={rate_requests} IDLE={idle}). "
           f"Each proxy pinned to core 1 (`taskset -c 1`, one worker/thread, current-thread tokio runtime for Hangar); "
           f"upstream (`--example upstream`, 6-byte body) and load generator on core 0; "
           f"throughput `wrk -t1 -c{conns} -d{duration}s --latency`, CPU `h2load --h1 -c50 --rps {int(rate)//50} -n {rate_requests}` "
           f"(utime+stime of the proxy's processes), memory Pss (smaps_rollup) after `--example idle_clients` holds {idle} keep-alive connections. "
           f"Alternating order, {rounds} rounds; median (min–max).\n")
out.append("| metric | hangar | nginx | haproxy | hangar/nginx | hangar/haproxy |")
out.append("|---|---|---|---|---|---|")
for key, label, _ in metrics:
    cells, med = [], {}
    for name in ("hangar", "nginx", "haproxy"):
        vals = data.get((name, key), [])
        if not vals:
            cells.append("n/a"); continue
        med[name] = statistics.median(vals)
        cells.append(fmt(med[name]) if len(vals) == 1 else f"{fmt(med[name])} ({fmt(min(vals))}–{fmt(max(vals))})")
    ratio = lambda other: f"{med['hangar'] / med[other]:.2f}×" if other in med and "hangar" in med and med[other] else "n/a"
    out.append(f"| {label} | {' | '.join(cells)} | {ratio('nginx')} | {ratio('haproxy')} |")
print("\n".join(out))
PY
)
echo
echo "$summary"
if [[ $APPEND == 1 ]]; then
    # shellcheck disable=SC2016 # the backquotes are Markdown
    [[ -e "$root/docs/benchmarks.md" ]] || printf '# Benchmarks\n\nResults of the scripts in `bench/`, newest last.\n' >"$root/docs/benchmarks.md"
    printf '\n%s\n' "$summary" >>"$root/docs/benchmarks.md"
    echo "appended to docs/benchmarks.md" >&2
fi
