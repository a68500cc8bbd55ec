#!/usr/bin/env bash
# The controller scale benchmark on both stores, in one run: builds rampart in release
# mode with the PostgreSQL store, starts a throwaway PostgreSQL on a loopback port in a
# temporary directory (Debian's `postgresql`; installed if missing), and runs
#   rampart bench controller --releases N --store sqlite|postgres --output json
# for each N given (default: 1000 10000). Prints one JSON object a line.
set -euo pipefail
cd "$(dirname "$0")/.."
sizes=("${@:-1000 10000}")
read -r -a sizes <<<"${sizes[*]}"
duration="${BENCH_DURATION:-30s}"

sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends postgresql
fi
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg=()
[ "$(id -u)" -eq 0 ] && as_pg=(runuser -u postgres --)

tmp=$(mktemp -d)
chown postgres "$tmp" 2>/dev/null || true
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
  "${as_pg[@]}" "$bin/pg_ctl" -D "$tmp/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
"${as_pg[@]}" "$bin/initdb" -A trust -U postgres -D "$tmp/data" >/dev/null
# Durable commits, as in production (fsync and synchronous_commit stay on).
"${as_pg[@]}" "$bin/pg_ctl" -D "$tmp/data" -w -l "$tmp/log" \
  -o "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$tmp" start >/dev/null

cargo build --release -p rampart --features postgres
for n in "${sizes[@]}"; do
  ./target/release/rampart bench controller --releases "$n" --store sqlite --duration "$duration" --output json
  db="bench_$n"
  psql -h 127.0.0.1 -p "$port" -U postgres -X -q -c "CREATE DATABASE $db"
  ./target/release/rampart bench controller --releases "$n" --store postgres \
    --postgres-url "postgres://postgres@127.0.0.1:$port/$db" --duration "$duration" --output json
done
