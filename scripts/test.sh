#!/usr/bin/env bash
# Runs every check CI runs: formatting, lints and all tests.
# Installs what is missing first (Debian packages through apt-get, Rust components
# through rustup). Tests start and stop their own processes on loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."

apt_missing=()
command -v cc >/dev/null 2>&1 || apt_missing+=(gcc libc6-dev)   # SQLite is compiled from source
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)     # the Python example service
command -v psql >/dev/null 2>&1 || apt_missing+=(postgresql-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_missing+=(postgresql)  # a real server for migration tests
# Real servers for the adapter tests, each started on loopback by the tests themselves.
command -v nginx >/dev/null 2>&1 || apt_missing+=(nginx-light)
command -v haproxy >/dev/null 2>&1 || apt_missing+=(haproxy)
command -v prometheus >/dev/null 2>&1 || apt_missing+=(prometheus)
command -v prometheus-alertmanager >/dev/null 2>&1 || apt_missing+=(prometheus-alertmanager)
# The dashboard's browser test: headless Chromium driven over WebDriver.
command -v chromium >/dev/null 2>&1 || apt_missing+=(chromium fonts-dejavu-core)
command -v chromedriver >/dev/null 2>&1 || apt_missing+=(chromium-driver)
python3 -m venv --help >/dev/null 2>&1 || apt_missing+=(python3-venv)
command -v systemd-analyze >/dev/null 2>&1 || apt_missing+=(systemd)   # verifies deploy/systemd
# A version's host that dies, simulated in a network namespace (`unshare -rn` and a
# blackhole route: tests/proxy_dead_host.rs).
command -v ip >/dev/null 2>&1 || apt_missing+=(iproute2)
command -v unshare >/dev/null 2>&1 || apt_missing+=(util-linux)
# shellcheck source=scripts/apt-install.sh
. scripts/apt-install.sh
apt_install ${apt_missing[@]+"${apt_missing[@]}"}
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
    rustup component add "$component"
  fi
done

# schemathesis (PyPI) fuzzes the API from its OpenAPI document, and the MCP SDK drives
# `rampart mcp`; both are kept in a virtual environment under target/ so nothing is
# installed system-wide.
venv=target/tools/venv
if ! "$venv/bin/schemathesis" --version >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.*"
fi
export RAMPART_SCHEMATHESIS="$PWD/$venv/bin/schemathesis"
# The Python MCP SDK (PyPI `mcp`) is the real client of `rampart mcp` in its test.
if ! "$venv/bin/python" -c "import mcp.client.stdio" >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==2.*"
fi
export RAMPART_MCP_PYTHON="$PWD/$venv/bin/python"
# The Helm chart (deploy/helm) is rendered by Helm's own engine, Helm v4's Go SDK that
# PyPI's helm-python-sdk ships as a library (there is no helm in Debian), and every
# object is checked against the Kubernetes API schemas that kubernetes-validate bundles.
# Both work offline; scripts/helm_check.py drives them.
if ! "$venv/bin/python" -c "import helm_python, kubernetes_validate" >/dev/null 2>&1; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "helm-python-sdk==0.2.*" "kubernetes-validate==1.37.*"
fi
export RAMPART_HELM_PYTHON="$PWD/$venv/bin/python"

# Every process the tests start inherits this mark, so the end of the run can tell
# them from anything else on the machine (see leftovers below).
RAMPART_TEST_RUN="$$-$(date +%s%N)"
export RAMPART_TEST_RUN

# Lists the processes of this run still alive (their environment carries the mark),
# stops them, and fails: a test must stop every server it starts. Only processes with
# this run's mark are signalled.
leftovers() {
  local status=$? found=0 d pid
  set +x
  for d in /proc/[0-9]*; do
    pid=${d#/proc/}
    [ "$pid" = "$$" ] && continue
    [ "$pid" = "$BASHPID" ] && continue
    if { tr '\0' '\n' <"$d/environ"; } 2>/dev/null | grep -qx "RAMPART_TEST_RUN=$RAMPART_TEST_RUN"; then
      [ -r "$d/cmdline" ] || continue
      found=1
      echo "LEFT RUNNING by the tests: pid $pid ($(readlink "$d/cwd" 2>/dev/null)): $({ tr '\0' ' ' <"$d/cmdline"; } 2>/dev/null)" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  if [ "$found" -ne 0 ]; then
    echo "FAILED: the tests left the processes above running (now stopped); every test must stop what it starts, on failure and panic too" >&2
    exit 1
  fi
  exit "$status"
}
trap leftovers EXIT

# A clean checkout (CI) never reuses incremental state, which would be a quarter of the
# build's disk; set CARGO_INCREMENTAL=1 to keep it between local runs.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

set -x
cargo fmt --all -- --check
# The optional adapters (cargo features) are linted too. The tests build the binary
# with the PostgreSQL store (its HA tests run against a real server) and without
# Kubernetes; rampart-kubernetes's fake-API tests run as a workspace member.
cargo clippy --workspace --all-targets --locked --features rampart/postgres,rampart/kubernetes -- -D warnings
cargo check -p rampart-adapters --no-default-features --locked   # the build without TLS
cargo check -p rampart --locked                                   # the default build, without the features
cargo test --workspace --locked --features rampart/postgres
# The binary with Kubernetes support: its CLI tests (no cluster is needed for them),
# and the tests of `serve --kubernetes` (GitOps), `stop --canary` and a release's
# refusals at its start against the fake Kubernetes API.
cargo test -p rampart --features kubernetes --test cli_validate --test gitops_fake_api \
  --test stop_canary_fake_api --test start_refusals_fake_api --locked
