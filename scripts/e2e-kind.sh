#!/usr/bin/env bash
# Runs a release of examples/kubernetes.yaml against a real cluster (kind, k3s, any),
# where one is reachable through kubectl's current context. Not run by CI: the CI
# machines have no cluster (the adapter's CI tests use a fake API transport, see
# crates/kubernetes/tests/). Without kubectl or a reachable cluster it prints
# "no cluster: skipped" and exits 0.
#
#   kind create cluster --name rampart && scripts/e2e-kind.sh
#
# Metrics come from a Prometheus at 127.0.0.1:9090 (the example's address): a running
# one is used, otherwise `prometheus` from PATH is started on loopback for the run (an
# empty one: the example's query falls back to 0, so the release is promoted).
# VERSION (default 1.27-alpine) is the version released over the manifest's 1.26-alpine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null 2>&1 || ! kubectl version --request-timeout=5s >/dev/null 2>&1; then
  echo "no cluster: skipped"
  exit 0
fi
version="${VERSION:-1.27-alpine}"
work="$(mktemp -d)"
prom_pid=""
cleanup() {
  if [ -n "$prom_pid" ]; then kill "$prom_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== cluster: $(kubectl config current-context)"
kubectl apply -f examples/kubernetes/manifests.yaml
kubectl rollout status deployment/checkout --timeout=180s
route=false
if kubectl get crd httproutes.gateway.networking.k8s.io >/dev/null 2>&1; then
  kubectl apply -f examples/kubernetes/httproute.yaml
  route=true
fi

if ! curl -fsS http://127.0.0.1:9090/-/ready >/dev/null 2>&1; then
  if ! command -v prometheus >/dev/null 2>&1; then
    echo "no Prometheus at 127.0.0.1:9090 and none on PATH: skipped"
    exit 0
  fi
  printf 'global: {scrape_interval: 5s}\n' >"$work/prometheus.yml"
  prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
    --web.listen-address=127.0.0.1:9090 >"$work/prometheus.log" 2>&1 &
  prom_pid=$!
  for _ in $(seq 50); do
    curl -fsS http://127.0.0.1:9090/-/ready >/dev/null 2>&1 && break
    sleep 0.2
  done
fi

cargo build --release -p rampart --features kubernetes
rampart=target/release/rampart

release() {
  local policy="$1" code=0
  echo "== rampart run -f $policy --version $version"
  "$rampart" run -f "$policy" --version "$version" --state-dir "$work/state" || code=$?
  if [ "$code" -ne 0 ]; then
    echo "FAIL: $policy exited $code (0 = promoted)"
    exit 1
  fi
  # Promoted: the stable Deployment runs the new image and the canary is gone.
  image="$(kubectl get deployment checkout -o jsonpath='{.spec.template.spec.containers[0].image}')"
  [ "$image" = "docker.io/library/nginx:$version" ] || { echo "FAIL: stable runs $image"; exit 1; }
  if kubectl get deployment checkout-canary >/dev/null 2>&1; then
    echo "FAIL: checkout-canary is still there"
    exit 1
  fi
}

release examples/kubernetes.yaml
if $route; then
  # Back to the manifest's version, then the same release through the HTTPRoute.
  kubectl apply -f examples/kubernetes/manifests.yaml
  kubectl rollout status deployment/checkout --timeout=180s
  rm -rf "$work/state"
  release examples/kubernetes-http-route.yaml
fi
echo "ok: promoted $version on $(kubectl config current-context)"
