#!/usr/bin/env bash
# The controller-kill acceptance run (issue: the service outlives its controller):
# N releases (default 20) of one service under steady load, each with `rampart run`
# killed (SIGKILL) at a pseudo-random point and run again to its outcome. Passes only
# if every release is promoted and no user request failed. CI runs one release of the
# same test; this runs all N.
#   scripts/controller-kill.sh [N] [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-20}"
seed="${2:-$RANDOM}"
echo "controller kills: $n releases, seed $seed"
RAMPART_KILL_RELEASES="$n" RAMPART_KILL_SEED="$seed" \
  cargo test -p rampart --locked --test dataplane -- --exact \
  a_controller_killed_mid_release_fails_no_user_request --nocapture
