#!/usr/bin/env bash
# Fuzzes the embedded proxy for longer than CI does: arbitrary and mutated request
# bytes to a live proxy, arbitrary and mutated answers from a version behind it, and
# arbitrary requests to its admin API (crates/adapters/tests/proxy_fuzz.rs), CASES of
# each (default 20000).
#
#   scripts/fuzz-proxy.sh [CASES]
#
# A failure is shrunk to a minimal input and its seed saved in
# crates/adapters/tests/data/fuzz/proxy_fuzz.proptest-regressions (replayed by every
# later run, CI's included: check it in). An input worth keeping for good goes in
# crates/adapters/tests/data/fuzz/proxy/ (requests) or .../answers/ (a version's
# answers) as a byte file.
set -euo pipefail
cd "$(dirname "$0")/.."
cases="${1:-20000}"
case "$cases" in
  '' | *[!0-9]*) echo "usage: $0 [CASES]" >&2; exit 2 ;;
esac
PROPTEST_CASES="$cases" PROPTEST_MAX_SHRINK_ITERS="${PROPTEST_MAX_SHRINK_ITERS:-4096}" \
  cargo test -p rampart-adapters --test proxy_fuzz -- --nocapture
