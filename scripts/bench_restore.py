#!/usr/bin/env python3
"""Time from `rampart serve` start to every service answering, after a simulated reboot.

For each N given: N services are released through one `rampart serve` (an initial
release each, the bundled sample service behind its own data plane), then everything
of rampart's is stopped (serve, the data planes, the versions: SIGKILL), and serve is
started again. Measured: from starting serve to the moment every service's address
answers HTTP 200. Prints one JSON line per N.

    scripts/bench_restore.py target/release/rampart 1 10 100
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.path.abspath(sys.argv[1])
SIZES = [int(n) for n in sys.argv[2:]] or [1, 10, 100]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(port):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


def call(url, token, body):
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def get(url, token):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def policy(name, port):
    return f"""service: {name}
deploy:
  process:
    command: [{json.dumps(BIN)}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    readiness: {{http: /healthz, timeout: 30s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy: {{canary: {{steps: [{{weight: 50, bake: 1s}}]}}}}
analysis: {{metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]}}
"""


def serve(state, port):
    return subprocess.Popen(
        [BIN, "serve", "--listen", f"127.0.0.1:{port}", "--state-dir", state],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def wait(what, limit, ready):
    deadline = time.monotonic() + limit
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not within {limit}s")
        time.sleep(0.02)


def kill_everything(state):
    pids = []
    for d, ext in (("dataplane", ".lock"), ("processes", ".json")):
        path = os.path.join(state, d)
        for f in os.listdir(path) if os.path.isdir(path) else []:
            if not f.endswith(ext):
                continue
            text = open(os.path.join(path, f)).read().strip()
            if ext == ".lock":
                pids.append(int(text))
            else:
                pids.extend(r["pid"] for r in json.loads(text))
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def one(n):
    with tempfile.TemporaryDirectory() as tmp:
        state = os.path.join(tmp, "state")
        api_port = free_port()
        server = serve(state, api_port)
        url = f"http://127.0.0.1:{api_port}"
        wait("serve", 30, lambda: answers_api(url))
        token = subprocess.run(
            [BIN, "token", "create", "--role", "deployer", "--name", "bench", "--state-dir", state],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
        ports = [free_port() for _ in range(n)]
        ids = [
            call(f"{url}/api/v1/releases", token, {"policy": policy(f"svc{i}", p), "version": "v1"})["id"]
            for i, p in enumerate(ports)
        ]
        wait("releases", 600, lambda: all(get(f"{url}/api/v1/releases/{i}", token).get("outcome") for i in ids))
        outcomes = {get(f"{url}/api/v1/releases/{i}", token)["outcome"] for i in ids}
        assert outcomes == {"promoted"}, outcomes
        server.send_signal(signal.SIGKILL)
        server.wait()
        kill_everything(state)
        wait("everything down", 30, lambda: not any(answers(p) for p in ports))
        started = time.monotonic()
        server = serve(state, api_port)
        try:
            wait("every service answers", 600, lambda: all(answers(p) for p in ports))
            elapsed = time.monotonic() - started
        finally:
            server.send_signal(signal.SIGKILL)
            server.wait()
            kill_everything(state)
        return {"services": n, "seconds_to_all_answering": round(elapsed, 3)}


def answers_api(url):
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return r.status == 200
    except Exception:
        return False


if __name__ == "__main__":
    for n in SIZES:
        print(json.dumps(one(n)), flush=True)
