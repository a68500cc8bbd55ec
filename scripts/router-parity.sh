#!/usr/bin/env bash
# The router-parity acceptance run (issue: a policy is judged the same behind nginx,
# HAProxy or the embedded proxy): N releases (default 20) through each router of the
# same healthy service whose latency is bimodal (1 % of requests 40 ms slower), judged
# on a p99 ratio to stable. Passes only if all N are promoted on every router, and a
# canary with 15 % of its requests 200 ms slower is still rolled back on each. CI runs
# one release per router of the same test; this runs all N. Needs nginx and haproxy
# (scripts/test.sh installs them).
#   scripts/router-parity.sh [N]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
echo "router parity: $n healthy releases per router"
RAMPART_PARITY_RUNS="$n" \
  cargo test -p rampart --locked --test routers -- --exact \
  a_bimodal_healthy_service_is_promoted_through_every_router --nocapture
