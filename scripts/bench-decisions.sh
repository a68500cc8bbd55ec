#!/usr/bin/env bash
# The decision benchmark with savvi (PyPI) as the reference, in one run.
# Creates a Python virtual environment with savvi in target/, builds rampart in release
# mode, and prints the table that BENCHMARKS.md holds. Without Python, run
#   cargo run --release -p rampart -- bench decisions
# which prints the same table without the reference rows.
set -euo pipefail
cd "$(dirname "$0")/.."
trials="${1:-2000}"
venv=target/savvi-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -c "import ensurepip" 2>/dev/null || { sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo; $sudo apt-get install -y -qq python3-venv; }
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet savvi==0.3.1 matplotlib
fi
cargo build --release -p rampart
./target/release/rampart bench decisions --trials "$trials" --seed 1 --savvi "$venv/bin/python"
