#!/usr/bin/env python3
"""Where a Hangar machine start spends its time, in two ways.

Untraced: N create calls, each split at the shim's own timestamped log lines in the
machine directory, read before the machine is destroyed: `shim ... starting` (everything
the server does before it: validation, the store, addresses, netns, overlay, bundle, the
shim's exec), `runc run`, `started` (runc returned). This costs nothing extra. (File
mtimes would not do: ext4 stamps them from a coarse clock, a few ms behind.)

Traced: attaches `strace -f` to the running server, makes N create calls (each followed by an
untimed destroy), and splits each call at the events strace saw between the request and
the answer: the netns (unshare), the overlay mount, the shim's exec, runc's exec
(`run --detach`, or `create` then `start`), `runc init`, the container's exec of its
command. Prints the median of each phase.
strace slows every traced syscall, so phases are inflated compared with the untraced
run; read them as shares, not as absolute numbers.
"""

import argparse
import calendar
import os
import re
import signal
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import Hangar

LINE = re.compile(r"^(\d+)\s+(\d+\.\d+)\s+(.*)$")


def parse(path):
    """Yields (time, pid, syscall, text, duration) for each completed or started call."""
    with open(path) as f:
        for raw in f:
            m = LINE.match(raw.rstrip("\n"))
            if not m:
                continue
            pid, ts, rest = int(m.group(1)), float(m.group(2)), m.group(3)
            if rest.startswith("<... "):
                continue  # the resumed half; the start time is on the first half
            name = rest.split("(", 1)[0]
            dur = re.search(r"<(\d+\.\d+)>$", rest)
            yield ts, pid, name, rest, float(dur.group(1)) if dur else 0.0


def phases(events, t0, t1, shim_exe, container_cmd):
    """Marks of one create call, as offsets in ms from the request."""
    marks = {}
    sync_s = 0.0
    syncs = 0

    def mark(key, ts):
        marks.setdefault(key, (ts - t0) * 1000)

    for ts, pid, name, text, dur in events:
        if ts < t0 or ts > t1:
            continue
        if name in ("fsync", "fdatasync") and "shim" not in marks:
            syncs += 1
            sync_s += dur
        elif name == "unshare" and "CLONE_NEWNET" in text:
            mark("netns", ts)
        elif name == "mount" and '"overlay"' in text:
            mark("overlay", ts)
        elif name == "execve" and text.startswith(f'execve("{shim_exe}"'):
            mark("shim", ts)
        elif (
            name == "execve"
            and "runc" in text
            and ('"run"' in text or '"create"' in text)
        ):
            mark("runc run/create", ts)
        elif name == "execve" and '"init"' in text and "runc" in text:
            mark("runc init", ts)
        elif name == "execve" and '"start"' in text and "runc" in text:
            mark("runc start", ts)
        elif name == "execve" and text.startswith(f'execve("{container_cmd}"'):
            mark("container exec", ts)
    marks["answer"] = (t1 - t0) * 1000
    return marks, syncs, sync_s * 1000


def parse_rfc3339(ts):
    """Seconds since the epoch of `2026-01-02T03:04:05.123456789Z` (nanoseconds kept)."""
    whole, _, frac = ts.rstrip("Z").partition(".")
    return calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float(
        "0." + (frac or "0")
    )


def dir_marks(machine_dir, t0, t1):
    """Offsets in ms from the request of what the machine directory recorded."""
    marks = {}
    with open(os.path.join(machine_dir, "shim.log")) as f:
        for line in f:
            ts, _, msg = line.rstrip("\n").partition(" ")
            if msg.startswith("shim ") and "starting" in msg:
                marks.setdefault("shim running", parse_rfc3339(ts))
            elif msg == "runc run" or msg.startswith("runc create"):
                marks.setdefault("runc invoked", parse_rfc3339(ts))
            elif msg.startswith("started"):
                marks.setdefault("runc returned", parse_rfc3339(ts))
    marks = {k: (v - t0) * 1000 for k, v in marks.items()}
    marks["answer"] = (t1 - t0) * 1000
    return marks


def print_marks(title, rows, order):
    print(title)
    print("| mark | median ms from the request | phase before it, median ms |")
    print("|---|---|---|")
    prev = None
    for key in order:
        offs = [m[key] for m in rows if key in m]
        if not offs:
            print(f"| {key} | not seen | |")
            continue
        if prev is None:
            gaps = offs
        else:
            gaps = [m[key] - m[prev] for m in rows if key in m and prev in m]
        print(
            f"| {key} | {statistics.median(offs):.1f} | {statistics.median(gaps):.1f} |"
        )
        prev = key


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument(
        "--machines-dir", required=True, help="<data dir>/machines of the server"
    )
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--shim-exe", required=True)
    ap.add_argument("--container-cmd", default="/bin/httpd")
    ap.add_argument("--hangar-addr", required=True)
    ap.add_argument("--hangar-token-file", required=True)
    ap.add_argument("--app", default="bench")
    ap.add_argument("--image", default="hello:latest")
    ap.add_argument("--log", required=True)
    args = ap.parse_args()
    with open(args.hangar_token_file) as f:
        hangar = Hangar(args.hangar_addr, f.read().strip(), args.app, args.image)

    rows = []
    for _ in range(args.rounds):
        t0 = time.time()
        _, mid = hangar.start()
        t1 = time.time()
        rows.append(dir_marks(os.path.join(args.machines_dir, mid), t0, t1))
        hangar.cleanup(mid)
    print_marks(
        f"Hangar create call, untraced, {args.rounds} calls (shim log timestamps)",
        rows,
        ["shim running", "runc invoked", "runc returned", "answer"],
    )
    print()

    strace = subprocess.Popen(
        # (--seccomp-bpf, which would stop only the traced calls, does not work with -p.)
        [
            "strace",
            "-f",
            "-ttt",
            "-T",
            "-s",
            "128",
            "-o",
            args.log,
            "-e",
            "trace=execve,unshare,mount,fsync,fdatasync",
            "-p",
            str(args.server_pid),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        # strace says "Process N attached" on stderr once it traces the server.
        deadline = time.monotonic() + 30
        line = b""
        while b"attached" not in line:
            if time.monotonic() > deadline or strace.poll() is not None:
                raise RuntimeError("strace did not attach to the server")
            line = strace.stderr.readline()
        windows = []
        for _ in range(args.rounds):
            t0 = time.time()
            _, mid = hangar.start()
            t1 = time.time()
            windows.append((t0, t1))
            hangar.cleanup(mid)
    finally:
        strace.send_signal(signal.SIGINT)
        try:
            strace.wait(timeout=30)
        except subprocess.TimeoutExpired:
            strace.kill()
            strace.wait(timeout=30)

    events = list(parse(args.log))
    traced = [
        phases(events, t0, t1, args.shim_exe, args.container_cmd) for t0, t1 in windows
    ]
    print_marks(
        f"Hangar create call under strace -f, {args.rounds} calls (inflated: shares only)",
        [m for m, _, _ in traced],
        [
            "netns",
            "overlay",
            "shim",
            "runc run/create",
            "runc init",
            "runc start",
            "container exec",
            "answer",
        ],
    )
    syncs = [n for _, n, _ in traced]
    sync_ms = [ms for _, _, ms in traced]
    print(
        f"\nfsync/fdatasync before the shim's exec: median {statistics.median(syncs)} calls, "
        f"{statistics.median(sync_ms):.1f} ms in total"
    )


if __name__ == "__main__":
    main()
