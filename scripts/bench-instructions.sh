#!/usr/bin/env bash
# Instructions per request of this checkout's proxy against another rampart build,
# counted by valgrind (scripts/bench_instructions.py says how). The A/B for a change
# whose effect is smaller than this machine's drift in CPU time.
#   scripts/bench-instructions.sh BASE_BINARY
#   BENCH_LOADS=get,post,h2,grpc ROUNDS=3 scripts/bench-instructions.sh BASE_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] || { echo "usage: $0 BASE_BINARY (a rampart build to compare with)" >&2; exit 2; }
base="$(realpath "$1")"

missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v h2load >/dev/null 2>&1 || missing+=(nghttp2-client)
command -v python3 >/dev/null 2>&1 || missing+=(python3)
# shellcheck source=scripts/apt-install.sh
. scripts/apt-install.sh
apt_install ${missing[@]+"${missing[@]}"}

cargo build --release --locked -p rampart --bin rampart >&2
exec python3 scripts/bench_instructions.py target/release/rampart "$base"
