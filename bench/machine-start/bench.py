#!/usr/bin/env python3
"""Times machine starts: Hangar's API create call against bare `runc run -d` and `docker run -d`.

run.sh prepares everything (server, image, bundles, dockerd) and calls this with the
paths; this file only runs the alternating rounds, checks each start really happened,
cleans up each container (untimed), and prints the table. Every wait is bounded.
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# A single start that takes longer than this is a failure, not a sample.
STEP_TIMEOUT_S = 60


def run(cmd, **kw):
    """Runs an untimed command with a deadline and fails loudly with its output."""
    res = subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=STEP_TIMEOUT_S,
        check=False,
        **kw,
    )
    if res.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}"
        )
    return res.stdout


def timed(cmd):
    """Runs `cmd` once and returns (seconds, stdout) of it.

    Not `subprocess.run(timeout=...)`: with a timeout, Python waits for the child by
    polling with sleeps that double from 0.5 ms up to 50 ms, which would add up to tens
    of ms to a start (its samples land on 32, 64, 114 ms). A blocking wait returns as soon
    as the child exits; a timer kills the child if it outlives the deadline. The command's
    stdout and stderr go to files, not pipes: a container inherits runc's stdio, and a pipe
    would stay open as long as it runs.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        watchdog = threading.Timer(STEP_TIMEOUT_S, proc.kill)
        watchdog.start()
        try:
            code = proc.wait()
        finally:
            watchdog.cancel()
        dt = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        if code != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({code}): {err.read().decode().strip()}"
            )
        return dt, out.read().decode()


class Hangar:
    name = "hangar"

    def __init__(self, addr, token, app, image):
        host, port = addr.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/json",
        }
        self.app, self.image = app, image

    def _call(self, method, path, body=None):
        # A fresh connection per call, like `curl` or `hangar machine run` would make.
        conn = http.client.HTTPConnection(self.host, self.port, timeout=STEP_TIMEOUT_S)
        try:
            conn.request(method, path, body=body, headers=self.headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:500]!r}")
        return json.loads(data) if data else None

    def start(self):
        body = json.dumps({"config": {"image": self.image}})
        t0 = time.perf_counter()
        m = self._call("POST", f"/v1/apps/{self.app}/machines", body)
        dt = time.perf_counter() - t0
        if m.get("state") != "started":
            raise RuntimeError(f"create answered state {m.get('state')!r}, not started")
        return dt, m["id"]

    def cleanup(self, mid):
        self._call("DELETE", f"/v1/apps/{self.app}/machines/{mid}?force=true")


class Runc:
    """`runc run -d` of a bundle; `script`, when given, is timed instead (netns, veth, overlay, runc)."""

    def __init__(self, name, runc, root, bundle, script=None, teardown=None):
        self.name, self.runc, self.root, self.bundle = name, runc, root, bundle
        self.script, self.teardown = script, teardown
        self.n = 0

    def start(self):
        self.n += 1
        cid = f"hgbench-{self.name}-{os.getpid()}-{self.n}"
        if self.script:
            cmd = ["bash", self.script, cid]
        else:
            cmd = [
                self.runc,
                "--root",
                self.root,
                "run",
                "-d",
                "--bundle",
                self.bundle,
                cid,
            ]
        dt, _ = timed(cmd)
        state = json.loads(run([self.runc, "--root", self.root, "state", cid]))
        if state.get("status") != "running":
            raise RuntimeError(
                f"runc container {cid} is {state.get('status')!r}, not running"
            )
        return dt, cid

    def cleanup(self, cid):
        run([self.runc, "--root", self.root, "delete", "-f", cid])
        if self.teardown:
            run(["bash", self.teardown, cid])


class Docker:
    name = "docker"

    def __init__(self, docker, image):
        self.docker, self.image = docker, image

    def start(self):
        dt, out = timed([self.docker, "run", "-d", "--rm", self.image])
        cid = out.strip().splitlines()[-1]
        running = run([self.docker, "inspect", "-f", "{{.State.Running}}", cid]).strip()
        if running != "true":
            raise RuntimeError(f"docker container {cid} is not running ({running})")
        return dt, cid

    def cleanup(self, cid):
        # `--rm` may already be removing it once killed; that is the state we want.
        res = subprocess.run(
            [self.docker, "rm", "-f", cid],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=STEP_TIMEOUT_S,
            check=False,
        )
        if (
            res.returncode != 0
            and "already in progress" not in res.stderr
            and "No such container" not in res.stderr
        ):
            raise RuntimeError(f"docker rm -f {cid} failed: {res.stderr.strip()}")


def fmt_ms(s):
    return f"{s * 1000:.1f}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--hangar-addr", required=True)
    ap.add_argument("--hangar-token-file", required=True)
    ap.add_argument("--app", default="bench")
    ap.add_argument("--image", default="hello:latest")
    ap.add_argument("--runc", default="runc")
    ap.add_argument("--runc-root", required=True)
    ap.add_argument("--runc-bundle", required=True)
    ap.add_argument(
        "--runc-net-script", help="timed script: netns + veth + overlay + runc run -d"
    )
    ap.add_argument("--runc-net-teardown")
    ap.add_argument(
        "--docker", help="docker client; omitted when dockerd could not run"
    )
    ap.add_argument("--docker-image", default="hello:latest")
    ap.add_argument("--csv", help="write every sample here")
    args = ap.parse_args()

    with open(args.hangar_token_file) as f:
        token = f.read().strip()
    systems = [
        Hangar(args.hangar_addr, token, args.app, args.image),
        Runc("runc", args.runc, args.runc_root, args.runc_bundle),
    ]
    if args.runc_net_script:
        systems.append(
            Runc(
                "runc-net",
                args.runc,
                args.runc_root,
                None,
                args.runc_net_script,
                args.runc_net_teardown,
            )
        )
    if args.docker:
        systems.append(Docker(args.docker, args.docker_image))

    # One untimed start of each first: page cache, image store, dockerd's lazy setup.
    for s in systems:
        _, cid = s.start()
        s.cleanup(cid)

    samples = {s.name: [] for s in systems}
    for r in range(args.rounds):
        # Rotate the order each round so no system always runs right after another.
        k = r % len(systems)
        for s in systems[k:] + systems[:k]:
            dt, cid = s.start()
            s.cleanup(cid)
            samples[s.name].append(dt)
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {fmt_ms(v[-1])} ms" for n, v in samples.items()),
            file=sys.stderr,
            flush=True,
        )

    if args.csv:
        with open(args.csv, "w") as f:
            f.write("round," + ",".join(samples) + "\n")
            for r in range(args.rounds):
                f.write(
                    f"{r + 1},"
                    + ",".join(f"{v[r]:.6f}" for v in samples.values())
                    + "\n"
                )

    hangar_med = statistics.median(samples["hangar"])
    print("| system | n | median ms | min–max ms | median / hangar |")
    print("|---|---|---|---|---|")
    for name, v in samples.items():
        med = statistics.median(v)
        print(
            f"| {name} | {len(v)} | {fmt_ms(med)} | {fmt_ms(min(v))}–{fmt_ms(max(v))} "
            f"| {med / hangar_med:.2f}× |"
        )
    print()
    for name, v in samples.items():
        if name != "hangar":
            print(f"hangar / {name} (medians): {hangar_med / statistics.median(v):.2f}")


if __name__ == "__main__":
    main()
