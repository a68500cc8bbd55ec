"""The data-plane benchmark behind scripts/bench-proxy.sh. Loopback only.

Targets: direct (one backend), rampart (the embedded proxy via `rampart proxy`, set
over TCP), rampart-plane (the same proxy as a service's long-lived data plane,
`rampart proxy --state-dir`, set over its Unix socket), nginx (split_clients) and
haproxy (server weights), the last four splitting 80/20.
For each: wrk -t1 -c50 throughput and p50/p99 latency, then the time a weight change
takes to be in force, and the failed requests while the weight flips 0 -> 100 -> 0
under load.

Every load is measured in BENCH_ROUNDS (default 3) alternating rounds of
BENCH_DURATION / BENCH_ROUNDS seconds per target, the targets one after the other in
each round: requests/s is the mean over the rounds, p50 and p99 the median of the
rounds' (see `interleaved`). On a shared machine whose speed drifts, ratios between
targets measured in back-to-back blocks moved by 15 % between runs; alternating puts
a drift on every target alike.

Then, for rampart, nginx and HAProxy (BENCH_PROTOCOLS=0 skips them):
- a new connection per request (wrk with `Connection: close`);
- a small POST on kept-alive connections (wrk with a script: a 100-byte JSON body,
  `Content-Type: application/json`, written with its head);
- TLS termination (the same keep-alive load over https, a self-signed P-256
  certificate made with openssl; TLS 1.3);
- HTTP/2 from clients, cleartext with prior knowledge (h2load -c50 -m10, latencies
  from its per-request log), to the same HTTP/1.1 backends;
- gRPC unary: h2load -c50 -m10 POSTing one length-prefixed gRPC message
  (`content-type: application/grpc`, `te: trailers`) to the backends' echo method
  over h2c end to end (rampart `upstream_protocol: h2c`, nginx `grpc_pass`, HAProxy
  `proto h2` on its servers); before the load, one call through each proxy with curl
  must come back with `grpc-status: 0`, since h2load sees HTTP statuses only;
- WebSocket echo: ws-echo-load (crates/testkit, built next to rampart: 50
  connections upgraded through the proxy, each sending a small masked text frame and
  waiting for its echo, closed-loop), messages/s and p50/p99 per message;
- memory per idle keep-alive connection (BENCH_ONLY=memory runs only this row), each
  proxy fresh after one second of keep-alive load: the proxy's resident memory (nginx: its
  worker's) with 2,000 connections each idle after one request, less before, over
  2,000.
Each of those rows is also put against nginx's figure of the same run.

BENCH_ONLY=cpu runs only the CPU time per request: each proxy's user+system CPU time
over the requests wrk completed under the keep-alive load, in alternating rounds, and
the two backends' CPU time per request behind it;
BENCH_AGAINST=<another rampart binary> adds it as "rampart-against" (an A/B of a change);
BENCH_CPU_LOAD=post measures the small POST load instead of GETs, BENCH_CPU_LOAD=h2
HTTP/2 from clients, BENCH_CPU_LOAD=grpc gRPC unary (h2load, as in their rows) and
BENCH_CPU_LOAD=ws the WebSocket echo (per message) and BENCH_CPU_LOAD=close a new
connection per request (its accept and close included).

Every proxy runs one worker thread, like for like: nginx `worker_processes 1`, HAProxy
`nbthread 1`, rampart `RAMPART_WORKER_THREADS=1` (BENCH_RAMPART_THREADS sets another
number, 0 for rampart's default of one per core).

Every proxy writes the same four forwarding headers on each request it forwards, as
rampart does by default (`forwarded.trust: none`): `X-Forwarded-For` (the client's
address, replacing any), `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
(`for=...;proto=...;host="..."`). An edge in front of services is configured so;
without them the references do less work per request than rampart, and the backends
parse fewer headers. BENCH_BARE_REFERENCES=1 runs nginx and HAProxy without them (the
configurations before 2026-12-04, for comparison with older figures).
"""

from http.client import HTTPConnection
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

BIN = os.path.abspath(sys.argv[1])
# The WebSocket load client, built beside rampart (scripts/bench-proxy.sh builds both).
WS_LOAD = os.path.join(os.path.dirname(BIN), "ws-echo-load")
DURATION = int(os.environ.get("BENCH_DURATION", "10"))
# The full run measures each load in this many alternating rounds per target, each a
# share of DURATION (see `interleaved`); BENCH_ONLY=cpu runs this many rounds of DURATION.
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
TOKEN = "bench-token-0123456789abcdef"
TMP = tempfile.mkdtemp(prefix="rampart-bench-")
# rampart's runtime threads (see the docstring); 0 leaves rampart's default.
RAMPART_ENV = dict(os.environ)
if os.environ.get("BENCH_RAMPART_THREADS", "1") != "0":
    RAMPART_ENV["RAMPART_WORKER_THREADS"] = os.environ.get("BENCH_RAMPART_THREADS", "1")
# nginx and HAProxy write rampart's forwarding headers (see the docstring) unless this is set.
FORWARDING = os.environ.get("BENCH_BARE_REFERENCES", "0") != "1"
PROCS = []
# The process whose memory counts, by target (a function: nginx's changes).
PIDS = {}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def spawn(args, **kw):
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    PROCS.append(p)
    return p


def wait_port(port, what):
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"{what} did not start on {port}")


def http(method, url, body=None, token=None):
    req = urllib.request.Request(url, method=method, data=body.encode() if body else None)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(req, timeout=5) as r:
        return r.status, r.read().decode()


def post_script():
    """A wrk script that POSTs a small JSON body (100 bytes) on each request."""
    path = os.path.join(TMP, "post.lua")
    body = json.dumps({"user": "u-0123456789", "items": [1, 2, 3], "note": "x" * 44})
    assert len(body) == 100, len(body)
    with open(path, "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                'wrk.headers["Content-Type"] = "application/json"\n')
    return path


def wrk(port, seconds, scheme="http", close=False, script=None):
    args = ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency"]
    if close:
        args += ["-H", "Connection: close"]
    if script:
        args += ["-s", script]
    out = subprocess.run(
        args + [f"{scheme}://127.0.0.1:{port}/"], capture_output=True, text=True, check=True,
    ).stdout
    return parse_wrk(out)


def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(out):
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    lat = {q: ms(v, u) for q, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(x) for x in m.groups())
    return {"rps": round(rps), "p50_ms": round(lat["50"], 3), "p99_ms": round(lat["99"], 3), "errors": errors}


def backends():
    ports = []
    for version in ("a", "b"):
        port = free_port()
        env = dict(os.environ, SAMPLE_LATENCY_MS="0", SAMPLE_ERROR_RATE="0")
        spawn([BIN, "sample-service", "--port", str(port), "--version", version], env=env)
        wait_port(port, f"backend {version}")
        ports.append(port)
    return ports


def rampart_proxy(a, b, tls=None, h2c=False, binary=BIN, name=None):
    port, admin = free_port(), free_port()
    name = name or ("rampart-tls" if tls else ("rampart-h2c" if h2c else "rampart"))
    policy = os.path.join(TMP, f"{name}.yaml")
    extra = f", tls: {{cert: {tls[0]}, key: {tls[1]}}}" if tls else ""
    if h2c:
        extra += ", upstream_protocol: h2c"
    with open(policy, "w") as f:
        f.write(
            f"service: {name}\n"
            "deploy: {process: {command: [x, \"{port}\"]}}\n"
            f"traffic: {{proxy: {{listen: \"127.0.0.1:{port}\"{extra}}}}}\n"
            "strategy: {canary: {steps: [{weight: 20, bake: 1m}]}}\n"
            "analysis: {metrics: [{metric: error_rate, judge: {max: 1%}}]}\n"
        )
    pid = spawn([binary, "proxy", "-f", policy, "--admin", f"127.0.0.1:{admin}"],
                env=dict(RAMPART_ENV, RAMPART_PROXY_TOKEN=TOKEN)).pid
    PIDS[name] = lambda: pid
    wait_port(admin, "rampart proxy admin")
    base = f"http://127.0.0.1:{admin}"
    http("PUT", f"{base}/backends/stable", json.dumps({"endpoints": [f"127.0.0.1:{a}"]}), TOKEN)
    http("PUT", f"{base}/backends/canary", json.dumps({"endpoints": [f"127.0.0.1:{b}"]}), TOKEN)

    def set_weight(pct):
        http("PUT", f"{base}/weight", json.dumps({"weight": pct}), TOKEN)

    set_weight(20)
    wait_port(port, "rampart proxy")
    return port, set_weight


class UnixHTTP(HTTPConnection):
    """HTTP over the data plane's Unix admin socket."""

    def __init__(self, path):
        super().__init__("localhost")
        self.unix_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.unix_path)
        self.sock = s


def rampart_plane(a, b):
    """The same proxy as the service's long-lived data plane (`rampart proxy
    --state-dir`, what `rampart run` and `serve` start), set over its Unix socket."""
    port = free_port()
    state = os.path.join(TMP, "plane")
    policy = os.path.join(TMP, "plane.yaml")
    with open(policy, "w") as f:
        f.write(
            "service: bench-plane\n"
            "deploy: {process: {command: [x, \"{port}\"]}}\n"
            f"traffic: {{proxy: {{listen: \"127.0.0.1:{port}\"}}}}\n"
            "strategy: {canary: {steps: [{weight: 20, bake: 1m}]}}\n"
            "analysis: {metrics: [{metric: error_rate, judge: {max: 1%}}]}\n"
        )
    spawn([BIN, "proxy", "--state-dir", state, "-f", policy], env=RAMPART_ENV)
    sock = os.path.join(state, "dataplane", "bench-plane.sock")
    wait_port(port, "rampart data plane")
    token = open(os.path.join(state, "dataplane", "bench-plane.token")).read().strip()

    def call(method, path, body):
        c = UnixHTTP(sock)
        c.request(method, path, body, {"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        c.close()
        assert r.status == 200, (path, r.status)

    call("PUT", "/backends/stable", json.dumps({"endpoints": [f"127.0.0.1:{a}"]}))
    call("PUT", "/backends/canary", json.dumps({"endpoints": [f"127.0.0.1:{b}"]}))

    def set_weight(pct):
        call("PUT", "/weight", json.dumps({"weight": pct}))

    set_weight(20)
    return port, set_weight


def nginx(a, b, tls=None, h2=False, grpc=False):
    port = free_port()
    d = os.path.join(TMP, "nginx-tls" if tls else ("nginx-grpc" if grpc else ("nginx-h2" if h2 else "nginx")))
    listen = f"127.0.0.1:{port} ssl" if tls else f"127.0.0.1:{port}" + (" http2" if h2 or grpc else "")
    # gRPC to the backends over h2c; otherwise HTTP/1.1, WebSocket upgrades passed on /ws.
    to_backend = "grpc_pass grpc://up_$side;" if grpc else """proxy_pass http://up_$side;
            proxy_http_version 1.1;
            proxy_set_header Connection "";"""
    # The forwarding headers (grpc_pass has its own directive); nginx's default Host
    # is the upstream's name, so the client's is set too, as the other proxies pass it.
    fwd = ""
    if FORWARDING:
        directive = "grpc_set_header" if grpc else "proxy_set_header"
        fwd = "".join(f"\n            {directive} {name} {value};" for name, value in (
            ("Host", "$http_host"),
            ("X-Forwarded-For", "$remote_addr"),
            ("X-Forwarded-Proto", "$scheme"),
            ("X-Forwarded-Host", "$http_host"),
            ("Forwarded", '"for=$remote_addr;proto=$scheme;host=\\"$http_host\\""'),
        ))
    to_backend += fwd
    certs = f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]}; ssl_protocols TLSv1.3;" if tls else ""
    os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
    conf = os.path.join(d, "nginx.conf")

    def write(pct):
        split = "* a;" if pct == 0 else ("* b;" if pct == 100 else f"{pct}% b; * a;")
        with open(conf, "w") as f:
            f.write(f"""worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    upstream up_a {{ server 127.0.0.1:{a}; keepalive 64; }}
    upstream up_b {{ server 127.0.0.1:{b}; keepalive 64; }}
    split_clients "$request_id" $side {{ {split} }}
    server {{
        listen {listen};
        {certs}
        keepalive_requests 1000000;
        location = /__bench {{ return 200 "{pct}"; }}
        location / {{
            {to_backend}
        }}
        location = /ws {{
            proxy_pass http://up_$side;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";{fwd.replace("grpc_set_header", "proxy_set_header")}
        }}
    }}
}}
""")

    write(20)
    master = spawn(["nginx", "-p", d, "-c", conf, "-g", "daemon off;"])
    wait_port(port, "nginx")
    # Its worker, found when asked: a reload replaces it.
    PIDS[os.path.basename(d)] = lambda: worker_of(master.pid)

    def set_weight(pct):
        write(pct)
        subprocess.run(["nginx", "-p", d, "-c", conf, "-s", "reload"], check=True)
        # In force once a fresh connection sees the new configuration.
        while http("GET", f"http://127.0.0.1:{port}/__bench")[1] != str(pct):
            time.sleep(0.001)

    return port, set_weight


def haproxy(a, b, tls=None, h2=False, grpc=False):
    port = free_port()
    d = os.path.join(TMP, "haproxy-tls" if tls else ("haproxy-grpc" if grpc else ("haproxy-h2" if h2 else "haproxy")))
    bind = f"127.0.0.1:{port} ssl crt {tls[2]} ssl-min-ver TLSv1.3" if tls else f"127.0.0.1:{port}" + (" proto h2" if h2 or grpc else "")
    # WebSocket passes in http mode as it is; gRPC needs h2c to the backends too.
    server = " proto h2" if grpc else ""
    fwd = "".join(f"    http-request set-header {name} {value}\n" for name, value in (
        ("X-Forwarded-For", "%[src]"),
        ("X-Forwarded-Proto", "https" if tls else "http"),
        ("X-Forwarded-Host", "%[req.hdr(host)]"),
        ("Forwarded", f'"for=%[src];proto={"https" if tls else "http"};host=\\"%[req.hdr(host)]\\""'),
    )) if FORWARDING else ""
    os.makedirs(d, exist_ok=True)
    sock = os.path.join(d, "admin.sock")
    cfg = os.path.join(d, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(f"""global
    stats socket {sock} mode 600 level admin
    nbthread 1
    maxconn 5000
defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend web
    bind {bind}
    default_backend app
{fwd}backend app
    balance roundrobin
    server a 127.0.0.1:{a} weight 80{server}
    server b 127.0.0.1:{b} weight 20{server}
""")
    pid = spawn(["haproxy", "-db", "-f", cfg]).pid
    PIDS[os.path.basename(d)] = lambda: pid
    wait_port(port, "haproxy")

    def cmd(c):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.sendall((c + "\n").encode())
        out = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            out += chunk
        s.close()
        return out.decode()

    def set_weight(pct):
        # The side gaining traffic first: never both at 0.
        order = [("b", pct), ("a", 100 - pct)] if pct >= 50 else [("a", 100 - pct), ("b", pct)]
        for server, w in order:
            cmd(f"set server app/{server} weight {w}")

    return port, set_weight


def worker_of(master):
    """nginx's one worker process, a child of its master (not one shutting down)."""
    time.sleep(0.2)  # a reload's old worker exits; the new one is what serves
    for _ in range(500):
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = open(f"/proc/{entry}/stat").read()
                except OSError:
                    continue
                if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                    return int(entry)
        time.sleep(0.01)
    raise SystemExit("nginx has no worker")


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for {pid}")


# Connections held idle in the memory row (BENCH_IDLE): resident memory grows by the
# allocator's segments (4 MiB for rampart's), so fewer connections make a coarser
# figure (2,000: 2 KiB steps).
IDLE = int(os.environ.get("BENCH_IDLE", "2000"))


def idle_kib(port, pid):
    """Resident KiB per keep-alive connection left idle after one request."""
    before = rss_kib(pid)
    conns = []
    for _ in range(IDLE):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        conns.append(s)
    for s in conns:
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(65536)
            if not chunk:
                raise SystemExit("a proxy closed an idle connection")
            got += chunk
    # Idle for 2 s: rampart's HTTP/1 connections give up their buffers (park) after
    # 1 s idle; nginx and HAProxy free theirs at once. Memory, not timing, is measured.
    time.sleep(2)
    after = rss_kib(pid)
    for s in conns:
        s.close()
    return round((after - before) / IDLE, 2)


def certificate():
    """A self-signed P-256 certificate for 127.0.0.1: (cert, key, cert+key for HAProxy)."""
    cert, key, both = (os.path.join(TMP, n) for n in ("cert.pem", "key.pem", "both.pem"))
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    with open(both, "w") as f:
        f.write(open(cert).read() + open(key).read())
    return cert, key, both


def flip_ms(set_weight):
    """Milliseconds from asking for a weight change until it is in force."""
    samples = []
    for pct in (100, 0, 100, 0, 20):
        t0 = time.perf_counter()
        set_weight(pct)
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return round(samples[len(samples) // 2], 3)


def flip_under_load(port, set_weight, seconds):
    """Failed requests while the weight flips 0 -> 100 -> 0 every 250 ms under load."""
    out = tempfile.TemporaryFile(mode="w+")
    load = subprocess.Popen(
        ["wrk", "-t1", "-c50", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/"],
        stdout=out, stderr=subprocess.DEVNULL, text=True,
    )
    end = time.time() + seconds - 0.5
    pct = 100
    flips = 0
    while time.time() < end:
        set_weight(pct)
        flips += 1
        pct = 100 - pct
        time.sleep(0.25)
    load.wait()
    out.seek(0)
    result = parse_wrk(out.read())
    set_weight(20)
    return result["errors"], flips


GRPC_PATH = "/rampart.sample.Sample/Echo"


def grpc_message():
    """A file holding one gRPC message: uncompressed, its length in 4 bytes, then the
    payload (a protobuf string field; the backends echo it without decoding)."""
    payload = b"\x0a\x12rampart grpc bench"
    path = os.path.join(TMP, "grpc-message.bin")
    with open(path, "wb") as f:
        f.write(b"\x00" + len(payload).to_bytes(4, "big") + payload)
    return path


def grpc_check(name, port, message):
    """One call through the proxy must end with `grpc-status: 0`: h2load counts HTTP
    statuses, and a failed gRPC call is still a 200."""
    out = subprocess.run(
        ["curl", "-sS", "-v", "--http2-prior-knowledge", "--data-binary", f"@{message}",
         "-H", "content-type: application/grpc", "-H", "te: trailers", "-o", os.devnull,
         f"http://127.0.0.1:{port}{GRPC_PATH}"],
        capture_output=True, text=True,
    )
    if not re.search(r"^< grpc-status: 0\r?$", out.stderr, re.M):
        raise SystemExit(f"{name}: the gRPC check did not end with grpc-status 0:\n{out.stderr}")


def h2load(port, seconds, grpc=None):
    """HTTP/2 with prior knowledge: requests/s, p50/p99 from h2load's per-request log.
    With `grpc` (a message file): POSTs it to the backends' gRPC echo method."""
    log = os.path.join(TMP, f"h2load-{port}.log")
    args = ["h2load", "-c50", "-m10", "-D", str(seconds), "--warm-up-time=1", f"--log-file={log}"]
    if grpc:
        args += ["-d", grpc, "-H", "content-type: application/grpc", "-H", "te: trailers",
                 f"http://127.0.0.1:{port}{GRPC_PATH}"]
    else:
        args.append(f"http://127.0.0.1:{port}/")
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out).group(1))
    done = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    codes = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    errors = int(done.group(2)) + int(done.group(3)) + int(done.group(4)) + int(codes.group(4))
    micros = sorted(int(line.split("\t")[2]) for line in open(log) if line.strip())
    q = lambda f: micros[min(len(micros) - 1, int(f * len(micros)))] / 1000
    return {"rps": round(rps), "p50_ms": round(q(0.5), 3), "p99_ms": round(q(0.99), 3), "errors": errors}


def ws_load(port, seconds):
    """WebSocket echo through the proxy: messages/s, p50/p99 per message."""
    out = subprocess.run(
        [WS_LOAD, f"127.0.0.1:{port}", "/ws", "50", str(seconds)],
        capture_output=True, text=True, check=True,
    ).stdout
    r = json.loads(out)
    return {"rps": round(r["rps"]), "p50_ms": r["p50_ms"], "p99_ms": r["p99_ms"], "errors": r["errors"]}


def interleaved(targets, run, load=None):
    """Measures `run(port, seconds)` on each of `targets` ((name, port) pairs) in ROUNDS
    alternating rounds of DURATION / ROUNDS seconds (at least 1), one target after the
    other in each round: a drift of the machine's speed (a shared virtual machine's
    neighbours, frequency) falls on every target alike, where back-to-back blocks of
    DURATION seconds per target put it all on some. Requests/s is the mean of the
    rounds (their total over their time), p50 and p99 the median of the rounds',
    errors their sum; each round's requests/s is kept in `rounds`."""
    seconds = max(1, round(DURATION / ROUNDS))
    each = {name: [] for name, _ in targets}
    for _ in range(ROUNDS):
        for name, port in targets:
            each[name].append(run(port, seconds))
    median = lambda xs: sorted(xs)[len(xs) // 2]
    out = []
    for name, _ in targets:
        rs = each[name]
        row = {"target": name}
        if load:
            row["load"] = load
        row.update({
            "rps": round(sum(r["rps"] for r in rs) / len(rs)),
            "p50_ms": median([r["p50_ms"] for r in rs]),
            "p99_ms": median([r["p99_ms"] for r in rs]),
            "errors": sum(r["errors"] for r in rs),
            "rounds": [r["rps"] for r in rs],
        })
        out.append(row)
    return out


def table(title, rows, columns):
    print(f"\n{title}\n")
    print("| " + " | ".join(c for c, _ in columns) + " |")
    print("| " + " | ".join("---" for _ in columns) + " |")
    for r in rows:
        print("| " + " | ".join(str(f(r)) for _, f in columns) + " |")


def protocols(a, b, plain):
    """New connections, TLS termination, HTTP/2, gRPC, WebSocket and idle memory,
    against HAProxy's and nginx's figures."""
    results = []

    def measure(load, targets, run, warm_up):
        for _, port in targets:
            warm_up(port)
        results.extend(interleaved(targets, run, load))

    measure("new connection per request", plain,
            lambda port, s: wrk(port, s, close=True), lambda port: wrk(port, 1, close=True))
    post = post_script()
    measure("small POST (keep-alive, 100-byte JSON)", plain,
            lambda port, s: wrk(port, s, script=post), lambda port: wrk(port, 1, script=post))
    tls = certificate()
    measure("TLS termination (keep-alive)",
            [(name, make(a, b, tls)[0]) for name, make in (("rampart", rampart_proxy), ("nginx", nginx), ("haproxy", haproxy))],
            lambda port, s: wrk(port, s, scheme="https"), lambda port: wrk(port, 1, scheme="https"))
    if shutil.which("h2load"):
        # h2load warms each round up for a second of its own (`--warm-up-time`).
        h2 = [("rampart", dict(plain)["rampart"])]
        for name, make in (("nginx", nginx), ("haproxy", haproxy)):
            h2.append((name, make(a, b, h2=True)[0]))
        measure("HTTP/2 from clients (h2c)", h2, h2load, lambda port: None)
        message = grpc_message()
        grpc = [("rampart", rampart_proxy(a, b, h2c=True)[0])]
        for name, make in (("nginx", nginx), ("haproxy", haproxy)):
            grpc.append((name, make(a, b, grpc=True)[0]))
        for name, port in grpc:
            grpc_check(name, port, message)
        measure("gRPC unary (h2c end to end)", grpc,
                lambda port, s: h2load(port, s, grpc=message), lambda port: None)
    if os.path.exists(WS_LOAD):
        measure("WebSocket echo (50 connections)", plain, ws_load, lambda port: ws_load(port, 1))
    else:
        print(f"no {WS_LOAD}: the WebSocket row is skipped (cargo build --release -p rampart-testkit)",
              file=sys.stderr)
    # Each proxy fresh: one that served the loads above has freed memory to reuse, and
    # its resident size would hide what an idle connection costs.
    results.extend(memory_rows(a, b))
    for r in results:
        if "rps" in r:
            for ref_name in ("haproxy", "nginx"):
                ref = next(x for x in results if x["target"] == ref_name and x["load"] == r["load"])
                r[f"rps_vs_{ref_name}"] = round(r["rps"] / ref["rps"], 3)
                r[f"p99_vs_{ref_name}"] = round(r["p99_ms"] / ref["p99_ms"], 3)
        print(json.dumps(r), flush=True)
    return results


def memory_rows(a, b):
    """The idle-memory row: each proxy fresh, after one second of keep-alive load."""
    rows = []
    for name, make in (("rampart", rampart_proxy), ("nginx", nginx), ("haproxy", haproxy)):
        port, _ = make(a, b)
        wrk(port, 1)
        rows.append({"target": name, "load": "memory per idle connection",
                     "kib": idle_kib(port, PIDS[name]())})
    return rows


def cpu_seconds(pid):
    """User plus system CPU seconds `pid` has used (its threads included)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_only(a, b):
    """BENCH_ONLY=cpu: the proxy's CPU time per request under the keep-alive load,
    in alternating rounds (BENCH_ROUNDS, default 3) of DURATION seconds per proxy,
    with the requests/s each round made.
    CPU per request barely depends on how the cores are shared with the load client
    and the backends, where requests/s does: a steadier figure for a change's cost."""
    load = os.environ.get("BENCH_CPU_LOAD", "get")
    if load not in ("get", "post", "h2", "grpc", "ws", "close"):
        raise SystemExit(f"BENCH_CPU_LOAD={load}: get, post, h2, grpc, ws or close")
    h2, grpc, ws = load == "h2", load == "grpc", load == "ws"
    # (name, the key of its process in PIDS, how to start it)
    makers = [("rampart", "rampart", lambda a, b: rampart_proxy(a, b, h2c=grpc, name="rampart"))]
    against = os.environ.get("BENCH_AGAINST")
    if against:
        makers.append(("rampart-against", "rampart-against", lambda a, b: rampart_proxy(
            a, b, h2c=grpc, binary=os.path.abspath(against), name="rampart-against")))
    suffix = "-grpc" if grpc else ("-h2" if h2 else "")
    makers += [(name, name + suffix, lambda a, b, make=make: make(a, b, h2=h2, grpc=grpc))
               for name, make in (("nginx", nginx), ("haproxy", haproxy))]
    script = post_script() if load == "post" else None
    message = grpc_message() if grpc else None

    def run(port, seconds):
        if ws:
            return ws_load(port, seconds)
        if h2 or grpc:
            return h2load(port, seconds, grpc=message)
        return wrk(port, seconds, script=script, close=load == "close")

    targets = []
    keys = {}
    for name, key, make in makers:
        port, _ = make(a, b)
        if grpc:
            grpc_check(name, port, message)
        run(port, 1)  # warm up
        targets.append((name, port))
        keys[name] = key
    rows = {name: [] for name, _ in targets}
    rps = {name: [] for name, _ in targets}
    # The two backends (spawned first): what a proxy's requests cost them.
    backend_pids = [p.pid for p in PROCS[:2]]
    behind = {name: [] for name, _ in targets}
    for _ in range(ROUNDS):
        for name, port in targets:
            pid = PIDS[keys[name]]()
            before = cpu_seconds(pid)
            backends_before = sum(cpu_seconds(p) for p in backend_pids)
            r = run(port, DURATION)
            used = cpu_seconds(pid) - before
            requests = r["rps"] * DURATION
            rows[name].append(used / requests * 1e6)
            rps[name].append(r["rps"])
            behind[name].append((sum(cpu_seconds(p) for p in backend_pids) - backends_before) / requests * 1e6)
    median = lambda xs: sorted(xs)[len(xs) // 2]
    haproxy_us = median(rows["haproxy"])
    haproxy_rps = median(rps["haproxy"])
    print("\n| target | CPU µs per request (median of rounds) | rounds | vs HAProxy | the backends' CPU µs per request (median) | requests/s (median of rounds) | vs HAProxy |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, _ in targets:
        each = ", ".join(f"{x:.2f}" for x in rows[name])
        print(f"| {name} | {median(rows[name]):.2f} | {each} | {median(rows[name]) / haproxy_us:.3f} | {median(behind[name]):.2f} "
              f"| {median(rps[name])} | {median(rps[name]) / haproxy_rps:.3f} |", flush=True)


def memory_only(a, b):
    """BENCH_ONLY=memory: the idle-memory row alone (a shorter loop for work on the
    proxy's memory)."""
    for row in memory_rows(a, b):
        print(json.dumps(row), flush=True)


def main():
    a, b = backends()
    if os.environ.get("BENCH_ONLY") == "memory":
        memory_only(a, b)
        return
    if os.environ.get("BENCH_ONLY") == "cpu":
        cpu_only(a, b)
        return
    targets = [("direct", a, None)]
    for name, make in (("rampart", rampart_proxy), ("rampart-plane", rampart_plane), ("nginx", nginx), ("haproxy", haproxy)):
        port, set_weight = make(a, b)
        targets.append((name, port, set_weight))
    for _, port, _ in targets:
        wrk(port, 2)  # warm up
    results = interleaved([(name, port) for name, port, _ in targets], wrk)
    for r, (_, port, set_weight) in zip(results, targets):
        if set_weight:
            r["flip_ms"] = flip_ms(set_weight)
            r["flip_errors"], r["flips"] = flip_under_load(port, set_weight, max(4, DURATION // 2))
    direct = results[0]
    for r in results:
        r["rps_ratio"] = round(r["rps"] / direct["rps"], 3)
        r["p50_ratio"] = round(r["p50_ms"] / direct["p50_ms"], 3)
        r["p99_ratio"] = round(r["p99_ms"] / direct["p99_ms"], 3)
        print(json.dumps(r), flush=True)
    extra = []
    if os.environ.get("BENCH_PROTOCOLS", "1") != "0":
        plain = [(n, p) for n, p, _ in targets if n in ("rampart", "nginx", "haproxy")]
        extra = protocols(a, b, plain)
    print("\n| target | requests/s | vs direct | p50 ms | p99 ms | p99 vs direct | errors | weight change in force (ms) | failed during 0-100-0 flips |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        flip = f"{r['flip_ms']}" if "flip_ms" in r else "-"
        flips = f"{r['flip_errors']} in {r['flips']} flips" if "flips" in r else "-"
        print(f"| {r['target']} | {r['rps']} | {r['rps_ratio']} | {r['p50_ms']} | {r['p99_ms']} | {r['p99_ratio']} | {r['errors']} | {flip} | {flips} |")
    if extra:
        loads = [r for r in extra if "rps" in r]
        table("Protocols, against HAProxy and nginx in the same run (WebSocket: messages/s):", loads, [
            ("load", lambda r: r["load"]), ("target", lambda r: r["target"]),
            ("requests/s", lambda r: r["rps"]), ("vs HAProxy", lambda r: r["rps_vs_haproxy"]),
            ("vs nginx", lambda r: r["rps_vs_nginx"]),
            ("p50 ms", lambda r: r["p50_ms"]), ("p99 ms", lambda r: r["p99_ms"]),
            ("p99 vs HAProxy", lambda r: r["p99_vs_haproxy"]), ("p99 vs nginx", lambda r: r["p99_vs_nginx"]),
            ("errors", lambda r: r["errors"]),
        ])
        table(f"Memory per idle keep-alive connection ({IDLE} connections):",
              [r for r in extra if "kib" in r],
              [("target", lambda r: r["target"]), ("KiB per connection", lambda r: r["kib"])])


def stop_all():
    for p in PROCS:
        p.terminate()
    for p in PROCS:
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
    shutil.rmtree(TMP, ignore_errors=True)


# Importable (a scratch A/B can call the functions above); run as a script, it benchmarks.
if __name__ == "__main__":
    try:
        main()
    finally:
        stop_all()
