#!/usr/bin/env python3
"""Zero-downtime deploy time under load: `hangar deploy` against a scripted docker + nginx swap.

Each round, for each side (the order rotates every round), a few keep-alive clients send
`GET /` at a fixed pace and record the send and receive time, the status and the version in
every response body (`hello from <id> version <VERSION>`). Once every client has seen the
old version, the deploy command starts (time zero); the load goes on until the command has
exited and one more second has passed since the first response of the new version. Per
round it reports:

- switch: time zero until the last response of the old version was received, i.e. the
  first moment after which every response is the new version;
- first new: time zero until the first response of the new version;
- command: how long the deploy command itself ran (both also stop the old version);
- errors: non-2xx answers and requests that failed (connect, reset, timeout), over the
  whole round;
- reconnects: requests on a reused keep-alive connection that the server had closed
  before answering, sent again once on a new connection (what browsers and HTTP client
  libraries do for an idempotent request); counted separately, an error only when the
  second try fails too;
- mixed: old-version responses to requests sent after the first new-version response
  arrived (the versions alternating rather than switching once).

Run by run.sh, which sets everything up; see bench/README.md.
"""

import argparse
import csv
import http.client
import os
import re
import statistics
import subprocess
import sys
import threading
import time

VERSION_RE = re.compile(rb"version (\S+)")
HARD_CAP_SECONDS = 90.0


class Client(threading.Thread):
    """One keep-alive client sending `GET /` every `period` seconds until told to stop."""

    def __init__(self, host, port, vhost, period, cap, stop):
        super().__init__(daemon=True)
        self.host, self.port, self.vhost = host, port, vhost
        self.period, self.cap, self.stop = period, cap, stop
        self.samples = []  # (t_send, t_recv, status or "ERR", version or error text)
        self.reconnects = 0
        self.conn = None

    def _connect(self):
        if self.conn is not None:
            self.conn.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)

    def _once(self):
        self.conn.request("GET", "/", headers={"Host": self.vhost})
        resp = self.conn.getresponse()
        body = resp.read()
        if resp.will_close:
            self._connect()
        return resp.status, body

    def run(self):
        self._connect()
        fresh = True
        next_send = time.monotonic()
        while not self.stop.is_set() and len(self.samples) < self.cap:
            t_send = time.monotonic()
            try:
                try:
                    status, body = self._once()
                except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                    # The server closed an idle keep-alive connection before this request
                    # reached it; a fresh connection is what any HTTP client tries next.
                    if fresh:
                        raise
                    self.reconnects += 1
                    self._connect()
                    status, body = self._once()
                fresh = False
                m = VERSION_RE.search(body)
                # For an error answer, the start of its body says who refused and why.
                version = m.group(1).decode() if m and status == 200 else body[:80].decode(errors="replace")
                self.samples.append((t_send, time.monotonic(), status, version))
            except Exception as err:  # noqa: BLE001 - every failure is one recorded error
                self.samples.append((t_send, time.monotonic(), "ERR", type(err).__name__))
                self._connect()
                fresh = True
            # Pacing, not synchronisation: keeps the load at a fixed rate on a shared machine.
            next_send += self.period
            delay = next_send - time.monotonic()
            if delay > 0:
                self.stop.wait(delay)
            else:
                next_send = time.monotonic()
        self.conn.close()


def run_round(side, addr, vhost, old, new, command, args, log):
    host, port = addr.rsplit(":", 1)
    stop = threading.Event()
    clients = [Client(host, int(port), vhost, args.period_ms / 1000, args.cap, stop) for _ in range(args.clients)]
    for c in clients:
        c.start()

    # Warm-up: every client has had an answer, and all answers so far are the old version.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(len(c.samples) >= 3 for c in clients):
        stop.wait(0.01)
    warm = [s for c in clients for s in c.samples]
    bad = [s for s in warm if s[2] != 200 or s[3] != old]
    if len(warm) == 0 or bad or not all(len(c.samples) >= 3 for c in clients):
        stop.set()
        for c in clients:
            c.join()
        raise SystemExit(f"{side}: before the deploy the app did not answer {old} on every request: {bad[:3] or 'no answers'}")

    t0 = time.monotonic()
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    killer = threading.Timer(HARD_CAP_SECONDS, proc.kill)
    killer.start()
    rc = proc.wait()
    killer.cancel()
    t_cmd = time.monotonic() - t0

    # Load goes on until one second after the first new-version answer (bounded).
    hard = t0 + HARD_CAP_SECONDS
    first_new = None
    while time.monotonic() < hard:
        news = [s[1] for c in clients for s in list(c.samples) if s[1] >= t0 and s[3] == new]
        if news:
            first_new = min(news)
            if time.monotonic() >= first_new + 1.0:
                break
        if all(len(c.samples) >= args.cap for c in clients):
            break
        stop.wait(0.05)
    stop.set()
    for c in clients:
        c.join()

    samples = sorted((s for c in clients for s in c.samples), key=lambda s: s[1])
    during = [s for s in samples if s[1] >= t0]
    olds = [s[1] for s in during if s[3] == old]
    news = [s[1] for s in during if s[3] == new]
    errors = [s for s in samples if s[2] != 200 and not (isinstance(s[2], int) and 200 <= s[2] < 300)]
    first_new_t = min(news) if news else None
    last_old_t = max(olds) if olds else t0
    # A request sent before the switch may be answered by the old version a moment after a
    # later request got the new one; only an old answer to a request sent after the first
    # new answer arrived means the versions alternate.
    mixed = sum(1 for s in during if s[3] == old and first_new_t is not None and s[0] > first_new_t)
    others = [s for s in during if s[2] == 200 and s[3] not in (old, new)]
    result = {
        "side": side,
        "rc": rc,
        "switch_ms": (last_old_t - t0) * 1000 if first_new_t is not None else None,
        "first_new_ms": (first_new_t - t0) * 1000 if first_new_t is not None else None,
        "command_ms": t_cmd * 1000,
        "requests": len(samples),
        "errors": len(errors),
        "error_kinds": sorted({str(s[2]) + ":" + s[3] for s in errors}),
        "reconnects": sum(c.reconnects for c in clients),
        "mixed": mixed,
        "other_versions": len(others),
    }
    return result, [(round(s[0] - t0, 4), round(s[1] - t0, 4), s[2], s[3]) for s in samples]


def fmt(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return "n/a"
    med = statistics.median(vals)
    return f"{med:,.0f} ({min(vals):,.0f}–{max(vals):,.0f})"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, required=True)
    p.add_argument("--hangar-bin", required=True)
    p.add_argument("--hangar-proxy", required=True, help="host:port of Hangar's HTTP proxy")
    p.add_argument("--config-dir", required=True, help="the app's directory with hangar.toml")
    p.add_argument("--image", required=True, help="image on the Hangar server")
    p.add_argument("--nginx", required=True, help="host:port nginx listens on")
    p.add_argument("--nginx-prefix", required=True)
    p.add_argument("--swap", required=True, help="swap.sh")
    p.add_argument("--docker-image", required=True)
    p.add_argument("--docker-ports", required=True, help="two loopback ports, P1,P2; P1 runs v1")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--period-ms", type=float, default=5.0)
    p.add_argument("--cap", type=int, default=20000, help="most requests per client per round")
    p.add_argument("--out", required=True, help="directory for the CSVs and command logs")
    args = p.parse_args()

    toml = os.path.join(args.config_dir, "hangar.toml")
    versions = {"hangar": 1, "docker": 1}
    ports = [int(x) for x in args.docker_ports.split(",")]
    results = []
    log = open(os.path.join(args.out, "commands.log"), "ab")
    samples_f = open(os.path.join(args.out, "deploy-samples.csv"), "w", newline="")
    samples_w = csv.writer(samples_f)
    samples_w.writerow(["round", "side", "t_send_s", "t_recv_s", "status", "version_or_error"])
    sides = ["hangar", "docker"]
    for r in range(1, args.rounds + 1):
        order = sides if r % 2 == 1 else sides[::-1]
        for side in order:
            old = f"v{versions[side]}"
            new = f"v{versions[side] + 1}"
            log.write(f"--- round {r} {side} {old} -> {new}\n".encode())
            log.flush()
            if side == "hangar":
                text = open(toml).read()
                text, n = re.subn(r'VERSION = "v\d+"', f'VERSION = "{new}"', text)
                if n != 1:
                    raise SystemExit(f"no VERSION line in {toml}")
                with open(toml, "w") as f:
                    f.write(text)
                cmd = [args.hangar_bin, "deploy", args.config_dir, "--image", args.image]
                addr = args.hangar_proxy
            else:
                port = ports[versions[side] % 2]
                cmd = ["bash", args.swap, args.nginx_prefix, args.docker_image, new, str(port)]
                addr = args.nginx
            res, samples = run_round(side, addr, "web.localhost", old, new, cmd, args, log)
            versions[side] += 1
            res["round"] = r
            results.append(res)
            for s in samples:
                samples_w.writerow([r, side, *s])
            sw = f"{res['switch_ms']:.0f}" if res["switch_ms"] is not None else "never"
            print(
                f"  round {r} {side}: switch {sw} ms, command {res['command_ms']:.0f} ms (exit {res['rc']}), "
                f"{res['requests']} requests, {res['errors']} errors {res['error_kinds']}, "
                f"{res['reconnects']} reconnects, {res['mixed']} mixed",
                file=sys.stderr,
                flush=True,
            )
            if res["rc"] != 0 or res["switch_ms"] is None:
                raise SystemExit(f"{side} round {r} failed (exit {res['rc']}); see {args.out}/commands.log")
    samples_f.close()

    with open(os.path.join(args.out, "deploy-rounds.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0].keys()))
        w.writeheader()
        w.writerows(results)

    by = {s: [x for x in results if x["side"] == s] for s in sides}
    med = {s: statistics.median(x["switch_ms"] for x in by[s]) for s in sides}
    medc = {s: statistics.median(x["command_ms"] for x in by[s]) for s in sides}
    print(f"| {args.rounds} rounds, {args.clients} clients × 1 req / {args.period_ms:g} ms | hangar | docker + nginx | hangar/docker |")
    print("|---|---|---|---|")
    print(f"| switch: start → all responses new, ms, median (min–max) | {fmt([x['switch_ms'] for x in by['hangar']])} | {fmt([x['switch_ms'] for x in by['docker']])} | {med['hangar'] / med['docker']:.2f}× |")
    print(f"| first new-version response, ms | {fmt([x['first_new_ms'] for x in by['hangar']])} | {fmt([x['first_new_ms'] for x in by['docker']])} | |")
    print(f"| command until exit (old version stopped), ms | {fmt([x['command_ms'] for x in by['hangar']])} | {fmt([x['command_ms'] for x in by['docker']])} | {medc['hangar'] / medc['docker']:.2f}× |")
    for key, label in (("errors", "errors (non-2xx, failed requests), all rounds"),
                       ("reconnects", "reconnects (closed keep-alive, retried once), all rounds"),
                       ("mixed", "old answers to requests sent after the first new answer, all rounds"),
                       ("requests", "requests, all rounds")):
        print(f"| {label} | {sum(x[key] for x in by['hangar'])} | {sum(x[key] for x in by['docker'])} | |")
    worst = max(x["switch_ms"] for x in by["hangar"])
    errs = sum(x["errors"] for x in by["hangar"])
    verdict = "met" if worst <= 1500 and errs == 0 else "NOT met"
    print(f"\ngoal (every Hangar switch ≤ 1500 ms, zero errors): {verdict} (worst {worst:.0f} ms, {errs} errors)")


if __name__ == "__main__":
    main()
