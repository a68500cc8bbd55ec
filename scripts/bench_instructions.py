"""Instructions the proxy executes per request, counted by valgrind's callgrind: an
A/B of two rampart builds that this machine's drifting speed cannot blur.

    python3 scripts/bench_instructions.py NEW_BINARY BASE_BINARY

For each load (BENCH_LOADS, default `get,grpc`: HTTP/1.1 keep-alive GETs, or gRPC unary
calls over h2c end to end; also `post`, `h2` and `ws`, the WebSocket echo per message), each binary runs as `rampart proxy`
under callgrind in front of two sample backends, twice: once for N1 requests and once
for N2 (h2load, 10 connections, a fixed count). The difference of the two totals over
N2 - N1 is the cost per request, without the start and the stop. ROUNDS repeats it,
alternating the binaries. Prints one JSON line per measurement, then a Markdown table
with NEW's instructions per request as a ratio of BASE's.

Counts are not times: a change that saves instructions but waits more (or misses the
cache more) shows here and not in requests/s. They are repeatable to about 1 % between
rounds, where CPU time per request on a shared 2-vCPU VM moves by 10 % or more.
"""

import glob
import json
import os
import re
import statistics
import subprocess
import sys
import time

NEW, BASE = (os.path.abspath(p) for p in sys.argv[1:3])
# bench_proxy starts the backends with its first argument's `sample-service`.
sys.argv = [sys.argv[0], BASE]
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_proxy as bp  # noqa: E402

LOADS = os.environ.get("BENCH_LOADS", "get,grpc").split(",")
N1 = int(os.environ.get("N1", "2000"))
N2 = int(os.environ.get("N2", "10000"))
ROUNDS = int(os.environ.get("ROUNDS", "2"))
# The WebSocket echo (`ws`) runs for WS_S1 and WS_S2 seconds instead of N1 and N2 messages.
WS_S1 = float(os.environ.get("WS_S1", "2"))
WS_S2 = float(os.environ.get("WS_S2", "6"))
OUT = os.path.join(bp.TMP, "callgrind")


def under_callgrind(binary, tag):
    """A wrapper that runs `binary` under callgrind, its totals to OUT/tag.PID."""
    os.makedirs(OUT, exist_ok=True)
    wrapper = os.path.join(OUT, f"{tag}.sh")
    with open(wrapper, "w") as f:
        f.write(f"#!/bin/sh\nexec valgrind --tool=callgrind --callgrind-out-file={OUT}/{tag}.%p {binary} \"$@\"\n")
    os.chmod(wrapper, 0o755)
    return wrapper


def load_args(load, port, n):
    if load == "grpc":
        return ["h2load", "-n", str(n), "-c10", "-m10", "-d", bp.grpc_message(),
                "-H", "content-type: application/grpc", "-H", "te: trailers",
                f"http://127.0.0.1:{port}{bp.GRPC_PATH}"]
    if load == "h2":
        return ["h2load", "-n", str(n), "-c10", "-m10", f"http://127.0.0.1:{port}/"]
    if load == "post":
        body = os.path.join(bp.TMP, "post-body.bin")
        with open(body, "wb") as f:
            f.write(b"x" * 256)
        return ["h2load", "--h1", "-n", str(n), "-c10", "-d", body, f"http://127.0.0.1:{port}/"]
    if load == "get":
        return ["h2load", "--h1", "-n", str(n), "-c10", f"http://127.0.0.1:{port}/"]
    raise SystemExit(f"BENCH_LOADS: {load} is not get, post, h2, grpc or ws")


def total(binary, load, n, tag):
    """The proxy's instructions over a run of `n` requests, and how many succeeded."""
    for old in glob.glob(os.path.join(OUT, f"{tag}.*")):
        os.remove(old)
    a, b = bp.backends()
    port, _ = bp.rampart_proxy(a, b, h2c=(load == "grpc"), binary=under_callgrind(binary, tag),
                               name=f"rampart-{tag}")
    if load == "ws":
        # The echo runs for a time, not a count: n is its seconds, and what it
        # echoed is the count.
        out = subprocess.run([bp.WS_LOAD, f"127.0.0.1:{port}", "/ws", "50", str(n)],
                             capture_output=True, text=True, check=True).stdout
        ok = json.loads(out)["messages"]
    else:
        out = subprocess.run(load_args(load, port, n), capture_output=True, text=True, check=True).stdout
        ok = int(re.search(r"(\d+) succeeded", out).group(1))
    for p in bp.PROCS:
        p.terminate()
    for p in bp.PROCS:
        p.wait(timeout=60)
    bp.PROCS.clear()
    counted = 0
    for path in glob.glob(os.path.join(OUT, f"{tag}.*[0-9]")):
        for line in open(path):
            if line.startswith(("summary:", "totals:")):
                counted = max(counted, int(line.split()[1]))
    if not counted:
        raise SystemExit(f"callgrind wrote no totals for {tag}")
    return counted, ok


def per_request(binary, load, rnd, name):
    n1, n2 = (WS_S1, WS_S2) if load == "ws" else (N1, N2)
    t1, ok1 = total(binary, load, n1, f"{name}-{load}-{rnd}-a")
    t2, ok2 = total(binary, load, n2, f"{name}-{load}-{rnd}-b")
    per = (t2 - t1) / (ok2 - ok1)
    print(json.dumps({"binary": name, "load": load, "round": rnd, "requests": [ok1, ok2],
                      "instructions": [t1, t2], "per_request": round(per)}), flush=True)
    return per


def main():
    rows = []
    try:
        for load in LOADS:
            got = {"new": [], "base": []}
            for rnd in range(ROUNDS):
                order = [("new", NEW), ("base", BASE)] if rnd % 2 == 0 else [("base", BASE), ("new", NEW)]
                for name, binary in order:
                    got[name].append(per_request(binary, load, rnd, name))
            new, base = statistics.median(got["new"]), statistics.median(got["base"])
            rows.append((load, new, base, got))
    finally:
        bp.stop_all()
    print()
    print("| load | instructions per request, new | base | new / base | rounds (new; base) |")
    print("| --- | --- | --- | --- | --- |")
    for load, new, base, got in rows:
        rounds = ", ".join(f"{x:,.0f}" for x in got["new"]) + "; " + ", ".join(f"{x:,.0f}" for x in got["base"])
        print(f"| {load} | {new:,.0f} | {base:,.0f} | {new / base:.3f} | {rounds} |")


if __name__ == "__main__":
    main()
