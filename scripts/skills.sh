#!/usr/bin/env bash
# Regenerates the agent skills of the example policies: examples/skills/NAME/SKILL.md
# from examples/NAME.yaml, with `rampart skill`. A test keeps them in sync.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q -p rampart
bin="${CARGO_TARGET_DIR:-target}/debug/rampart"
rm -rf examples/skills
for policy in examples/*.yaml; do
  "$bin" skill -f "$policy" --out "examples/skills/$(basename "$policy" .yaml)" >/dev/null
done
