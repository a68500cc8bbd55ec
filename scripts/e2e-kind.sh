#!/usr/bin/env bash
# Runs releases against a real cluster (kind, k3s, any) where one is reachable through
# kubectl's current context, in the namespace `default`. Not run by CI: the CI
# machines have no cluster (the adapter's CI tests use a fake API transport, see
# crates/kubernetes/tests/). Without kubectl or a reachable cluster it prints
# "no cluster: skipped" and exits 0.
#
#   kind create cluster --name rampart && scripts/e2e-kind.sh
#
# What it checks (the items of issue 22 a fake cannot prove):
#   5  replica_ratio on a stable scaled to 6 with an HPA (min 3): the stable never
#      drops below 3 replicas and has its 6 back after the promotion;
#   7  a blue-green release whose Service selects both tracks stops before any canary
#      pod exists (exit 3);
#   1  a blue-green release after the replica_ratio one: the stable keeps 6 replicas;
#   2  a promotion the stable cannot take (a pod quota blocks its rolling update, so
#      it fails with ProgressDeadlineExceeded): halted (exit 4), the Service left on
#      the canary, the canary kept;
#   3  with the Gateway API CRDs: a route no Gateway accepts is never promoted; with
#      a Gateway `public` that accepts examples/kubernetes/httproute.yaml, a release
#      through it is promoted.
# GitOps (issue 19, item 2): `rampart serve --kubernetes` adopts the Deployment that
#      opts in (`rampart.dev/policy`, its policy in a ConfigMap) and pauses it; a new
#      image applied with kubectl makes no new pods until serve has released it
#      through a canary, then the Deployment runs it, paused again, phase `released`.
# The namespace `default` should hold nothing else: the quota of item 2 counts pods.
#
# Metrics come from a Prometheus at 127.0.0.1:9090: a running one is used, otherwise
# `prometheus` from PATH is started on loopback for the run. An empty one has no
# request counts, so the policies here then leave out the metric's `samples` floor
# (with it, every interval would be "no data" and the releases would halt).
# VERSION, VERSION2 and VERSION3 (default 1.27-alpine, 1.28-alpine, 1.26-alpine) are
# the nginx versions released in turn over the manifest's 1.26-alpine.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v kubectl >/dev/null 2>&1 || ! kubectl version --request-timeout=5s >/dev/null 2>&1; then
  echo "no cluster: skipped"
  exit 0
fi
version="${VERSION:-1.27-alpine}"
version2="${VERSION2:-1.28-alpine}"
version3="${VERSION3:-1.26-alpine}"
work="$(mktemp -d)"
prom_pid=""
sampler_pid=""
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ]; then kill "$serve_pid" 2>/dev/null || true; fi
  if [ -n "$sampler_pid" ]; then kill "$sampler_pid" 2>/dev/null || true; fi
  if [ -n "$prom_pid" ]; then kill "$prom_pid" 2>/dev/null || true; fi
  kubectl delete resourcequota rampart-e2e --ignore-not-found >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
fail() {
  echo "FAIL: $*"
  exit 1
}

echo "== cluster: $(kubectl config current-context)"
floor=true
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
  floor=false
fi

cargo build --release -p rampart --features kubernetes
rampart=target/release/rampart
"$rampart" validate -f examples/kubernetes.yaml
"$rampart" validate -f examples/kubernetes-http-route.yaml

# policy NAME TRAFFIC STRATEGY [READY_TIMEOUT]: a policy like examples/kubernetes.yaml.
policy() {
  local samples=""
  if $floor; then
    samples="samples: 'sum(increase(http_requests_total{app=\"checkout\",track=\"{variant}\"}[{interval}]))'"
  fi
  cat >"$work/$1.yaml" <<EOF
service: checkout
deploy:
  kubernetes:
    namespace: default
    deployment: checkout
    container: web
    image: docker.io/library/nginx:{version}
    ready_timeout: ${4:-3m}
traffic:
  kubernetes: $2
strategy: $3
analysis:
  interval: 10s
  prometheus: http://127.0.0.1:9090
  metrics:
    - name: errors-per-second
      source: prometheus
      query: 'sum(rate(http_requests_total{app="checkout",track="{variant}",code=~"5.."}[1m])) or vector(0)'
      ${samples}
      judge: {max: 0.5}
rollback: {verify_timeout: 3m, drain: 5s}
EOF
  echo "$work/$1.yaml"
}

# release POLICY VERSION EXPECTED_EXIT: runs a release in a state directory of its own.
runs=0
release() {
  local code=0
  runs=$((runs + 1))
  echo "== rampart run -f $1 --version $2 (expecting exit $3)"
  "$rampart" run -f "$1" --version "$2" --state-dir "$work/state-$runs" \
    >"$work/run-$runs.log" 2>&1 || code=$?
  cat "$work/run-$runs.log"
  [ "$code" -eq "$3" ] || fail "$1 exited $code, expected $3"
}

replicas() { kubectl get deployment checkout -o jsonpath='{.spec.replicas}'; }
image() { kubectl get deployment checkout -o jsonpath='{.spec.template.spec.containers[0].image}'; }
track() { kubectl get service "$1" -o jsonpath='{.spec.selector.rampart\.dev/track}'; }
canary_exists() { kubectl get deployment checkout-canary >/dev/null 2>&1; }

kubectl apply -f examples/kubernetes/manifests.yaml
kubectl rollout status deployment/checkout --timeout=180s

# === 5: sized from the live count, within the HPA's bounds ===
kubectl scale deployment checkout --replicas=6
kubectl rollout status deployment/checkout --timeout=180s
kubectl autoscale deployment checkout --min=3 --max=10 --cpu-percent=80
(while true; do replicas >>"$work/stable-replicas" 2>/dev/null || true; echo >>"$work/stable-replicas"; sleep 1; done) &
sampler_pid=$!
# At 75 % of 8 pods the stable would get 2: the canary grows to 9 and the stable keeps 3.
release "$(policy ratio '{mode: replica_ratio, replicas: 4}' \
  '{canary: {steps: [{weight: 25, bake: 30s}, {weight: 50, bake: 30s}, {weight: 75, bake: 30s}]}}')" "$version" 0
kill "$sampler_pid"
sampler_pid=""
least="$(grep -E '^[1-9][0-9]*$' "$work/stable-replicas" | sort -n | head -1 || true)"
[ "${least:-0}" -ge 3 ] || fail "the stable went down to $least replicas, below the HPA's 3"
[ "$(replicas)" = 6 ] || fail "the promoted stable has $(replicas) replicas, not 6"
[ "$(image)" = "docker.io/library/nginx:$version" ] || fail "stable runs $(image)"
canary_exists && fail "checkout-canary is still there"
kubectl delete hpa checkout

blue_green='{blue_green: {stability: 30s}}'
# === 7: a Service that selects both tracks is refused before the canary starts ===
release "$(policy both '{mode: service_selector, service: checkout}' "$blue_green")" "$version2" 3
grep -q 'rampart.dev/track: stable' "$work/run-$runs.log" || fail "the reason does not name the track label"
canary_exists && fail "a canary was started behind a Service that selects both tracks"

# === 1: a release in another mode keeps the stable's replicas ===
release "$(policy blue-green '{mode: service_selector, service: checkout-stable}' "$blue_green")" "$version2" 0
[ "$(replicas)" = 6 ] || fail "after a mode switch the stable has $(replicas) replicas, not 6"
[ "$(image)" = "docker.io/library/nginx:$version2" ] || fail "stable runs $(image)"
[ "$(track checkout-stable)" = stable ] || fail "checkout-stable selects $(track checkout-stable)"

# === 2: a promotion the stable cannot take halts, traffic left on the canary ===
# 6 stable + 6 canary pods fill the quota; the stable's rolling update needs one more.
kubectl patch deployment checkout --type merge -p \
  '{"spec": {"progressDeadlineSeconds": 30, "strategy": {"rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}}'
kubectl rollout status deployment/checkout --timeout=180s
kubectl wait --for=delete pod -l rampart.dev/track=canary --timeout=180s
kubectl create resourcequota rampart-e2e --hard=pods=12
release "$(policy quota '{mode: service_selector, service: checkout-stable}' "$blue_green")" "$version3" 4
grep -q 'ProgressDeadlineExceeded' "$work/run-$runs.log" || fail "the reason does not name the failed rollout"
[ "$(track checkout-stable)" = canary ] || fail "after the failed promotion checkout-stable selects $(track checkout-stable)"
canary_exists || fail "the canary serving all traffic was removed"
kubectl delete resourcequota rampart-e2e
kubectl delete deployment checkout-canary
kubectl delete -f examples/kubernetes/manifests.yaml
kubectl apply -f examples/kubernetes/manifests.yaml
kubectl rollout status deployment/checkout --timeout=180s

# === 3: a weight counts once a Gateway accepts the route ===
if kubectl get crd httproutes.gateway.networking.k8s.io >/dev/null 2>&1; then
  kubectl apply -f - <<'EOF'
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: checkout-unrouted}
spec:
  parentRefs: [{name: no-such-gateway}]
  rules: [{backendRefs: [{name: checkout-stable, port: 80}]}]
EOF
  code=0
  "$rampart" run -f "$(policy unrouted '{mode: http_route, service: checkout-stable, route: checkout-unrouted}' \
    '{canary: {steps: [{weight: 20, bake: 30s}]}}' 30s)" --version "$version" \
    --state-dir "$work/state-unrouted" || code=$?
  [ "$code" -ne 0 ] || fail "a release through a route no Gateway accepts was promoted"
  kubectl delete httproute checkout-unrouted
  kubectl delete deployment checkout-canary --ignore-not-found
  kubectl apply -f examples/kubernetes/httproute.yaml
  if kubectl wait httproute/checkout --timeout=60s \
    --for=jsonpath='{.status.parents[0].conditions[?(@.type=="Accepted")].status}'=True; then
    release "$(policy route '{mode: http_route, service: checkout-stable, route: checkout}' \
      '{canary: {steps: [{weight: 5, bake: 30s}, {weight: 50, bake: 30s}]}}')" "$version" 0
    [ "$(image)" = "docker.io/library/nginx:$version" ] || fail "stable runs $(image)"
  else
    echo "no Gateway \`public\` accepts the route: the promoted http_route release is skipped"
  fi
else
  echo "no Gateway API CRDs: the http_route checks are skipped"
fi
# === GitOps: serve --kubernetes releases what kubectl applies ===
annotation() {
  kubectl get deployment checkout -o jsonpath="{.metadata.annotations.rampart\\.dev/$1}"
}
# wait_for WHAT SECONDS COMMAND...: until COMMAND succeeds, at most SECONDS.
wait_for() {
  local what="$1" seconds="$2"
  shift 2
  for _ in $(seq "$seconds"); do
    "$@" && return 0
    sleep 1
  done
  fail "$what after ${seconds}s (phase $(annotation phase): $(annotation message))"
}
phase_is() { [ "$(annotation phase)" = "$1" ]; }
paused() { [ "$(kubectl get deployment checkout -o jsonpath='{.spec.paused}')" = true ]; }
pods_run() {
  kubectl get pods -l app=checkout,rampart.dev/track=stable \
    -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | sort -u
}
released_is() { case "$(annotation released-version)" in "$1"+*) return 0 ;; *) return 1 ;; esac; }

kubectl delete deployment checkout-canary --ignore-not-found
kubectl apply -f examples/kubernetes/manifests.yaml
kubectl rollout status deployment/checkout --timeout=180s
gitops_policy="$(policy gitops '{mode: replica_ratio, replicas: 2}' \
  '{canary: {steps: [{weight: 50, bake: 30s}]}}')"
kubectl create configmap checkout-policy --from-file=rampart.yaml="$gitops_policy" \
  --dry-run=client -o yaml | kubectl apply -f -
kubectl annotate deployment checkout rampart.dev/policy=checkout-policy --overwrite
"$rampart" serve --kubernetes --kubernetes-namespace default --kubernetes-interval 2s \
  --listen 127.0.0.1:0 --state-dir "$work/serve" >"$work/serve.log" 2>&1 &
serve_pid=$!
wait_for "the opted-in Deployment is not adopted" 60 paused
wait_for "the adopted Deployment is not released" 60 phase_is released
before="$(pods_run)"
kubectl set image deployment/checkout web="docker.io/library/nginx:$version2"
wait_for "the release of the applied image did not start" 60 phase_is progressing
# Paused: the applied template has no pods of its own until the release promotes it.
[ "$(pods_run)" = "$before" ] || fail "the applied image reached the stable pods before its release: $(pods_run)"
wait_for "the applied image was not released" 600 phase_is released
released_is "$version2" || fail "released $(annotation released-version), not $version2"
paused || fail "the promoted Deployment is not paused again"
pods_are() { [ "$(pods_run)" = "$1" ]; }
# Pods of the previous ReplicaSet may still be terminating.
wait_for "the stable pods do not all run $version2" 120 pods_are "docker.io/library/nginx:$version2"
canary_exists && fail "checkout-canary is still there after the GitOps release"
kill "$serve_pid"
serve_pid=""
cat "$work/serve.log"
kubectl annotate deployment checkout rampart.dev/policy-
kubectl patch deployment checkout --type merge -p '{"spec": {"paused": false}}'
kubectl delete configmap checkout-policy

echo "ok: $(kubectl config current-context)"
