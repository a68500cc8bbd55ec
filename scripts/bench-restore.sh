#!/usr/bin/env bash
# Reboot benchmark: the time from `rampart serve` starting to every service answering
# again, for 1, 10 and 100 services, after everything of rampart's was stopped.
#   scripts/bench-restore.sh [N...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p rampart >&2
exec python3 scripts/bench_restore.py target/release/rampart "$@"
