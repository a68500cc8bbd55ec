#!/usr/bin/env python3
"""Time from a controller start to re-attached to the service's running data plane.

A service is released once (v1) and keeps serving through its data plane. Then, N
times: `rampart run --version v2` is started and timed until it prints that it
attached to the data plane, and killed (SIGKILL) right after, as a crashed
controller would be; the last run goes on to the release's outcome. Prints one JSON
line: the median, p90 and maximum, in milliseconds, and the data plane's own
reading of the attach (connect, authenticate, first counter read).

    scripts/bench_attach.py target/release/rampart [N]
"""
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

BIN = os.path.abspath(sys.argv[1])
N = int(sys.argv[2]) if len(sys.argv) > 2 else 20


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        policy = os.path.join(tmp, "rampart.yaml")
        with open(policy, "w") as f:
            f.write(f"""service: attach-bench
deploy:
  process:
    command: [{json.dumps(BIN)}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy: {{canary: {{steps: [{{weight: 20, bake: 1s}}]}}}}
analysis:
  interval: 1s
  min_samples: 1
  no_data: {{limit: 1000, action: halt}}
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
""")
        state = os.path.join(tmp, "state")
        run = [BIN, "run", "-f", policy, "--state-dir", state]
        subprocess.run(run + ["--version", "v1"], check=True, capture_output=True)
        load = subprocess.Popen([BIN, "load", "--url", f"http://127.0.0.1:{port}/", "--rps", "50"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        outside, inside = [], []
        try:
            for _ in range(N):
                started = time.monotonic()
                p = subprocess.Popen(run + ["--version", "v2"], stdout=subprocess.PIPE, text=True)
                for line in p.stdout:
                    m = re.search(r"attached to the data plane .* in ([0-9.]+) ms", line)
                    if m:
                        outside.append((time.monotonic() - started) * 1000)
                        inside.append(float(m.group(1)))
                        break
                p.send_signal(signal.SIGKILL)
                p.wait()
            done = subprocess.run(run + ["--version", "v2", "--stop-after"], capture_output=True, text=True)
        finally:
            load.send_signal(signal.SIGTERM)
            load.wait()
        q = lambda xs, f: round(sorted(xs)[min(len(xs) - 1, int(f * len(xs)))], 1)
        print(json.dumps({
            "controller_starts": N,
            "start_to_attached_ms": {"median": round(statistics.median(outside), 1), "p90": q(outside, 0.9), "max": round(max(outside), 1)},
            "attach_itself_ms": {"median": round(statistics.median(inside), 1), "max": round(max(inside), 1)},
            "final_run_exit": done.returncode,
        }))


if __name__ == "__main__":
    main()
