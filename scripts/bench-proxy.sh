#!/usr/bin/env bash
# Data-plane benchmark: wrk against the backend directly, the embedded proxy
# (`rampart proxy`), nginx and HAProxy, each splitting 80/20 between two upstreams, on
# loopback; then new connections, TLS, HTTP/2, gRPC unary (h2load) and WebSocket echo
# (crates/testkit's ws-echo-load) through each proxy. Prints one JSON line per target,
# then Markdown tables for BENCHMARKS.md.
#   scripts/bench-proxy.sh            # 10 s per target
#   BENCH_DURATION=30 scripts/bench-proxy.sh
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || missing+=(haproxy)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)   # the TLS row's certificate
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)   # the HTTP/2 and gRPC rows
command -v curl >/dev/null 2>&1 || missing+=(curl)   # the gRPC row's grpc-status check
# shellcheck source=scripts/apt-install.sh
. scripts/apt-install.sh
apt_install ${missing[@]+"${missing[@]}"}

# rampart, and the WebSocket row's load client beside it (target/release/ws-echo-load).
cargo build --release --locked -p rampart -p rampart-testkit --bin rampart --bin ws-echo-load >&2
# 2,000 idle connections per proxy in the memory row, each an open file on both ends.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec python3 scripts/bench_proxy.py target/release/rampart
