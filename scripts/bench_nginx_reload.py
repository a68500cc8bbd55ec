"""Failed requests while nginx's split flips under load, for each reload mitigation.

    python3 scripts/bench_nginx_reload.py            # BENCH_DURATION=8 s per variant
    BENCH_ROUNDS=3 python3 scripts/bench_nginx_reload.py
    BENCH_ONLY="before,after" BENCH_ROUNDS=5 python3 scripts/bench_nginx_reload.py

Loopback only; needs nginx and wrk. Two backends (a second nginx answering "a" or "b",
so the reloads hit only the router), and for each variant a router nginx splitting
between them on `$request_id` with upstream keep-alive, like rampart's rendered file.
Under `wrk -t1 -c50` the split flips 0 -> 100 -> 0 every 250 ms; wrk's non-2xx and
socket errors are the failed requests. Then the same load for as long with no change
(the cost of the selection itself). Every variant runs in the same run, in turn,
BENCH_ROUNDS times. Variants:

- reload: what rampart rendered before issue 21, a reload per change;
- worker_shutdown_timeout 1s;
- keepalive_timeout 1s (a short client keep-alive during a release);
- keepalive_requests 100;
- keepalive_timeout 0 (no client keep-alive);
- no reload: the variant chosen per request by two `if (-f ...)` on files in a
  directory swapped with one rename, and no reload (what rampart renders now, see
  crates/adapters/src/nginx.rs).
"""

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

DURATION = int(os.environ.get("BENCH_DURATION", "8"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "1"))
TMP = tempfile.mkdtemp(prefix="rampart-nginx-bench-")
PROCS = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listens on {port}")


def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()


def common(d):
    return f"""worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
"""


def temps(d):
    return f"""    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
"""


def start_nginx(name, text):
    d = os.path.join(TMP, name)
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(text(d))
    p = subprocess.Popen(["nginx", "-p", d, "-c", conf, "-g", "daemon off;"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    PROCS.append(p)
    return d, conf, p


def backends():
    a, b = free_port(), free_port()
    start_nginx("backends", lambda d: common(d) + "http {\n" + temps(d) + f"""
    server {{ listen 127.0.0.1:{a}; location / {{ return 200 "a"; }} }}
    server {{ listen 127.0.0.1:{b}; location / {{ return 200 "b"; }} }}
}}
""")
    wait_port(a)
    wait_port(b)
    return a, b


def reloading(extra, main=""):
    """A router that rewrites its split and reloads on every change."""

    def make(name, a, b):
        port = free_port()
        state = {"pct": 20}

        def text(d):
            pct = state["pct"]
            split = "* a;" if pct == 0 else ("* b;" if pct == 100 else f"{pct}% b; * a;")
            return common(d) + main + "http {\n" + temps(d) + f"""    {extra}
    upstream up_a {{ server 127.0.0.1:{a} max_fails=0; keepalive 16; }}
    upstream up_b {{ server 127.0.0.1:{b} max_fails=0; keepalive 16; }}
    split_clients "$request_id" $side {{ {split} }}
    server {{
        listen 127.0.0.1:{port};
        location = /__bench {{ return 200 "{pct}"; }}
        location / {{
            proxy_pass http://up_$side;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream off;
        }}
    }}
}}
"""

        d, conf, _ = start_nginx(name, text)
        wait_port(port)

        def set_weight(pct):
            state["pct"] = pct
            with open(conf + ".tmp", "w") as f:
                f.write(text(d))
            os.rename(conf + ".tmp", conf)
            subprocess.run(["nginx", "-p", d, "-c", conf, "-s", "reload"], check=True,
                           stderr=subprocess.DEVNULL)
            while get(f"http://127.0.0.1:{port}/__bench") != str(pct):
                time.sleep(0.001)

        return port, set_weight

    return make


def no_reload(name, a, b):
    """The variant read per request from a directory swapped by one rename."""
    port = free_port()
    hundreds = " ".join(f"1% {i:02};" for i in range(99)) + " * 99;"

    def text(d):
        return common(d) + "http {\n" + temps(d) + f"""
    upstream up_a {{ server 127.0.0.1:{a} max_fails=0; keepalive 16; }}
    upstream up_b {{ server 127.0.0.1:{b} max_fails=0; keepalive 16; }}
    split_clients "$request_id" $hi {{ {hundreds} }}
    split_clients "$request_id~" $lo {{ {hundreds} }}
    server {{
        listen 127.0.0.1:{port};
        set $side a;
        if (-f "{d}/weight/current/h$hi") {{ set $side b; }}
        if (-f "{d}/weight/current/l$hi$lo") {{ set $side b; }}
        location = /__bench {{ alias {d}/weight/current/state; }}
        location / {{
            proxy_pass http://up_$side;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_next_upstream off;
        }}
    }}
}}
"""

    d = os.path.join(TMP, name)
    gen = [0]

    def set_weight(pct):
        gen[0] += 1
        g = os.path.join(d, "weight", f"g{gen[0]}")
        os.makedirs(g)
        for i in range(pct):
            open(os.path.join(g, f"h{i:02}"), "w").close()
        with open(os.path.join(g, "state"), "w") as f:
            f.write(str(pct))
        link = os.path.join(d, "weight", "current.tmp")
        os.symlink(f"g{gen[0]}", link)
        os.rename(link, os.path.join(d, "weight", "current"))
        if gen[0] > 2:
            shutil.rmtree(os.path.join(d, "weight", f"g{gen[0] - 2}"))
        while get(f"http://127.0.0.1:{port}/__bench") != str(pct):
            time.sleep(0.001)

    os.makedirs(os.path.join(d, "weight"), exist_ok=True)
    # The directory must exist before nginx serves a request.
    gen[0] += 1
    g = os.path.join(d, "weight", "g1")
    os.makedirs(g)
    with open(os.path.join(g, "state"), "w") as f:
        f.write("0")
    os.symlink("g1", os.path.join(d, "weight", "current"))
    start_nginx(name, text)
    wait_port(port)
    set_weight(20)
    return port, set_weight


VARIANTS = [
    ("reload (before)", reloading("")),
    ("worker_shutdown_timeout 1s", reloading("", main="worker_shutdown_timeout 1s;\n")),
    ("keepalive_timeout 1s", reloading("keepalive_timeout 1s;")),
    ("keepalive_requests 100", reloading("keepalive_requests 100;")),
    ("keepalive_timeout 0", reloading("keepalive_timeout 0;")),
    ("no reload (after)", no_reload),
]


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return rps, total, errors


def steady(port):
    """Requests/s with the split at 20 % and no change: the cost of the selection."""
    out = subprocess.run(
        ["wrk", "-t1", "-c50", f"-d{DURATION}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout
    return round(parse_wrk(out)[0])


def flips_under_load(port, set_weight):
    load = subprocess.Popen(
        ["wrk", "-t1", "-c50", f"-d{DURATION}s", f"http://127.0.0.1:{port}/"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    end = time.time() + DURATION - 0.5
    pct, flips = 100, 0
    while time.time() < end:
        set_weight(pct)
        flips += 1
        pct = 100 - pct
        time.sleep(0.25)
    out, _ = load.communicate()
    rps, total, errors = parse_wrk(out)
    set_weight(20)
    return {"flips": flips, "requests": total, "failed": errors, "rps": round(rps)}


def main():
    a, b = backends()
    only = [v for v in os.environ.get("BENCH_ONLY", "").split(",") if v]
    variants = []
    for i, (name, make) in enumerate(VARIANTS):
        if only and not any(v in name for v in only):
            continue
        port, set_weight = make(f"v{i}", a, b)
        variants.append((name, port, set_weight))
    results = {name: [] for name, _, _ in variants}
    for _ in range(ROUNDS):
        for name, port, set_weight in variants:
            r = {**flips_under_load(port, set_weight), "steady_rps": steady(port)}
            results[name].append(r)
            print(json.dumps({"variant": name, **r}), flush=True)
    print(f"\n| variant | failed requests (flips) per {DURATION} s run | requests/s under flips | requests/s, no flips |")
    print("| --- | --- | --- | --- |")
    for name, rs in results.items():
        failed = ", ".join(f"{r['failed']} ({r['flips']})" for r in rs)
        rps = ", ".join(str(r["rps"]) for r in rs)
        still = ", ".join(str(r["steady_rps"]) for r in rs)
        print(f"| {name} | {failed} | {rps} | {still} |")


try:
    main()
finally:
    for p in PROCS:
        try:
            os.killpg(p.pid, 9)
        except ProcessLookupError:
            pass
        p.wait()
    shutil.rmtree(TMP, ignore_errors=True)
