//! Whole releases through the real controller, state machine and SQLite store, with
//! the Kubernetes adapter as deployer and router, against a FAKE cluster (an in-memory
//! object store behind the mock transport, see `support::cluster`), on tokio's paused
//! clock. No Kubernetes API server is involved.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_controller::{Controller, Ports, Silent};
use rampart_core::metrics::IntervalSample;
use rampart_core::policy::Policy;
use rampart_core::ports::*;
use rampart_core::release::Phase;
use rampart_kubernetes::Kubernetes;
use serde_json::{Value, json};
use support::cluster::{self, World};
use support::*;

/// The Prometheus stand-in: the canary's error rate, in thousandths.
#[derive(Default)]
struct Queries(AtomicU64);

impl MetricsSource for Queries {
    fn measure<'a>(
        &'a self,
        _: &'a rampart_core::release::MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        let canary = self.0.load(Ordering::SeqCst) as f64 / 1000.0;
        Box::pin(async move { Ok(errors_reading(canary)) })
    }
}

fn policy(traffic: &str, strategy: &str) -> String {
    format!(
        r#"
service: checkout
deploy:
  kubernetes:
    namespace: {NS}
    deployment: checkout
    container: app
    image: "registry.example.com/checkout:{{version}}"
traffic:
  kubernetes: {traffic}
strategy: {strategy}
analysis:
  interval: 10s
  prometheus: http://127.0.0.1:9
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(errors{{track="{{variant}}"}}[1m]))'
      judge: {{max: 0.05}}
"#
    )
}

struct Release {
    world: Arc<Mutex<World>>,
    metrics: Arc<Queries>,
    controller: Controller,
}

async fn release(policy_text: &str, objects: Vec<(String, Value)>) -> Release {
    let policy = Policy::from_yaml(policy_text).unwrap();
    let (deploy, traffic) = policy.kubernetes().unwrap();
    let (client, world) = cluster::start(objects);
    let k = Arc::new(
        Kubernetes::new(client, deploy.clone(), traffic.clone())
            .with_poll_interval(Duration::from_secs(1))
            .with_drain(policy.rollback.drain),
    );
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let metrics = Arc::new(Queries::default());
    let ports = Ports {
        deployer: k.clone(),
        router: k,
        metrics: metrics.clone(),
        gates: Arc::new(Nothing),
        flags: store.clone(),
        store,
        clock: Arc::new(TokioClock::starting_at(1_000_000)),
        notifier: Arc::new(Nothing),
        silencer: None,
    };
    Release {
        world,
        metrics,
        controller: Controller::new(policy, ports, Arc::new(Silent)),
    }
}

fn controller_over(
    r: &Release,
    policy_text: &str,
    store: Arc<StateStore>,
    client: kube::Client,
) -> Controller {
    let policy = Policy::from_yaml(policy_text).unwrap();
    let (deploy, traffic) = policy.kubernetes().unwrap();
    let k = Arc::new(
        Kubernetes::new(client, deploy.clone(), traffic.clone())
            .with_poll_interval(Duration::from_secs(1))
            .with_drain(policy.rollback.drain),
    );
    let ports = Ports {
        deployer: k.clone(),
        router: k,
        metrics: r.metrics.clone(),
        gates: Arc::new(Nothing),
        flags: store.clone(),
        store,
        clock: Arc::new(TokioClock::starting_at(1_000_000)),
        notifier: Arc::new(Nothing),
        silencer: None,
    };
    Controller::new(policy, ports, Arc::new(Silent))
}

impl Release {
    async fn run(&self, policy_text: &str) -> rampart_core::Release {
        self.controller
            .create("r1", "v2", policy_text)
            .await
            .unwrap();
        self.controller
            .drive("r1", Some("v1".into()), None)
            .await
            .unwrap()
    }

    fn client(&self) -> kube::Client {
        cluster::connect(&self.world)
    }

    fn object(&self, path: &str) -> Option<Value> {
        self.world.lock().unwrap().objects.get(path).cloned()
    }
}

fn image(d: &Value) -> &str {
    at(d, "spec/template/spec/containers/0/image")
        .as_str()
        .unwrap()
}

const CANARY_STEPS: &str = "{canary: {steps: [{weight: 25, bake: 1m}, {weight: 50, bake: 1m}]}}";

#[tokio::test(start_paused = true)]
async fn fake_api_release_replica_ratio_promotes_and_leaves_stable_on_the_new_image() {
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(&text, vec![(deployments("checkout"), stable("v1", 4))]).await;
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(image(&stable), "registry.example.com/checkout:v2");
    assert_eq!(at(&stable, "spec/replicas"), 4);
    assert_eq!(
        at(&stable, "spec/template/spec/containers/1/image"),
        "registry.example.com/proxy:1",
        "the rest of the stable Deployment is untouched"
    );
    assert!(
        r.object(&deployments("checkout-canary")).is_none(),
        "canary removed"
    );
    let writes = r.world.lock().unwrap().writes.clone();
    assert_eq!(
        writes.last().unwrap(),
        &format!("DELETE {}", deployments("checkout-canary"))
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_http_route_failing_canary_rolls_back_to_stable() {
    let text = policy(
        "{mode: http_route, service: checkout, route: checkout}",
        "{canary: {steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]}}",
    );
    let r = release(&text, routed_cluster()).await;
    r.metrics.0.store(200, Ordering::SeqCst); // 0.2 errors/s > 0.05
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::RolledBack, "{end:?}");
    let route = r.object(&routes("checkout")).unwrap();
    assert_eq!(
        at(&route, "spec/rules/0/backendRefs"),
        &json!([
            {"name": "checkout", "port": 80, "weight": 10000},
            {"name": "checkout-canary", "port": 80, "weight": 0}
        ])
    );
    assert_eq!(at(&route, "spec/parentRefs/0/name"), "public");
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(image(&stable), "registry.example.com/checkout:v1");
    assert!(
        r.object(&deployments("checkout-canary")).is_none(),
        "canary removed"
    );
    let canary_svc = r.object(&services("checkout-canary")).unwrap();
    assert_eq!(
        at(&canary_svc, "spec/selector")["rampart.dev/track"],
        "canary"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_blue_green_switches_the_selector_and_back_to_promoted_stable() {
    let text = blue_green();
    let r = release(&text, blue_green_cluster()).await;
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    let svc = r.object(&services("checkout")).unwrap();
    assert_eq!(at(&svc, "spec/selector")["rampart.dev/track"], "stable");
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(image(&stable), "registry.example.com/checkout:v2");
    assert!(r.object(&deployments("checkout-canary")).is_none());
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_resumed_after_a_crash_re_applies_without_moving_traffic_back() {
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(&text, vec![(deployments("checkout"), stable("v1", 4))]).await;
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    // One cluster, two controllers: the first "crashes" inside the second step's bake.
    let first = controller_over(&r, &text, store.clone(), r.client());
    first.create("r1", "v2", &text).await.unwrap();
    let crashed = tokio::time::timeout(
        Duration::from_secs(90),
        first.drive("r1", Some("v1".into()), None),
    )
    .await;
    assert!(crashed.is_err(), "still running at the crash");
    drop(first);
    let canary_at_crash = at(
        &r.object(&deployments("checkout-canary")).unwrap(),
        "spec/replicas",
    )
    .clone();
    assert_eq!(canary_at_crash, 2, "50 % of 4");
    let written_before = r.world.lock().unwrap().replicas.len();

    let second = controller_over(&r, &text, store, r.client());
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    // Re-applied on resume: the canary kept its 2 replicas until the weight went to 100 %.
    let after: Vec<i64> = r.world.lock().unwrap().replicas[written_before..]
        .iter()
        .filter(|(p, _)| *p == deployments("checkout-canary"))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        after,
        vec![2, 2, 4, 0],
        "resume re-applies 2, then 100 %, then scale-down before delete"
    );
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(image(&stable), "registry.example.com/checkout:v2");
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_preview_checks_run_without_an_address_when_they_name_their_url() {
    // The Kubernetes deployer reports no endpoints: a check with its own URL still runs
    // (a bare path is refused by the policy decoder, at its line).
    let text = policy(
        "{mode: service_selector, service: checkout}",
        "{blue_green: {stability: 1m, preview: [{http: 'http://checkout-canary.shop.svc/healthz'}]}}",
    );
    let r = release(&text, blue_green_cluster()).await;
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
}

/// The Service of `service_selector` and `http_route`, selecting stable pods.
fn stable_service() -> (String, Value) {
    (
        services("checkout"),
        service(
            "checkout",
            json!({"app": "checkout", "rampart.dev/track": "stable"}),
        ),
    )
}

/// A blue-green policy: `service_selector` on the Service `checkout`.
fn blue_green() -> String {
    policy(
        "{mode: service_selector, service: checkout}",
        "{blue_green: {stability: 1m}}",
    )
}

/// A cluster for `service_selector`: the stable Deployment of 3 and its Service.
fn blue_green_cluster() -> Vec<(String, Value)> {
    vec![(deployments("checkout"), stable("v1", 3)), stable_service()]
}

/// A cluster for `http_route`: the stable Deployment of 3, its Service, the route and
/// the other backend of the route's second rule.
fn routed_cluster() -> Vec<(String, Value)> {
    vec![
        (deployments("checkout"), stable("v1", 3)),
        stable_service(),
        (routes("checkout"), route(None, None)),
        admin_service(),
    ]
}

/// The other backend of the route's second rule.
fn admin_service() -> (String, Value) {
    (services("admin"), service("admin", json!({"app": "admin"})))
}

/// A second release on the same cluster, with its own policy and store.
async fn next_release(
    r: &Release,
    text: &str,
    id: &str,
    version: &str,
    stable: &str,
) -> rampart_core::Release {
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = controller_over(r, text, store, r.client());
    c.create(id, version, text).await.unwrap();
    c.drive(id, Some(stable.into()), None).await.unwrap()
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_switching_from_replica_ratio_to_service_selector_keeps_the_stable_replicas()
 {
    // Issue 22, item 1: under server-side apply, a field the manager applied before and
    // leaves out now is removed. The stable's `spec.replicas` must survive a release in
    // a mode that does not size it.
    let ratio = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(
        &ratio,
        vec![(deployments("checkout"), stable("v1", 4)), stable_service()],
    )
    .await;
    assert_eq!(r.run(&ratio).await.phase, Phase::Succeeded);
    assert_eq!(
        at(
            &r.object(&deployments("checkout")).unwrap(),
            "spec/replicas"
        ),
        4
    );

    let blue_green = blue_green();
    let end = next_release(&r, &blue_green, "r2", "v3", "v2").await;
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(image(&stable), "registry.example.com/checkout:v3");
    assert_eq!(
        at(&stable, "spec/replicas"),
        4,
        "the stable kept its 4 replicas"
    );
    let canary_sizes: Vec<i64> = r
        .world
        .lock()
        .unwrap()
        .replicas
        .iter()
        .filter(|(p, n)| *p == deployments("checkout-canary") && *n > 0)
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        canary_sizes.last(),
        Some(&4),
        "the blue-green canary had the stable's capacity"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_a_promotion_whose_stable_rollout_fails_halts_with_traffic_on_the_canary()
{
    // Issue 22, item 2: the stable Deployment's rollout of the new version fails at
    // promotion (here its pods never become ready: ProgressDeadlineExceeded). The
    // release must not end "promoted"; it halts and says where traffic is.
    let text = blue_green();
    let r = release(&text, blue_green_cluster()).await;
    r.world
        .lock()
        .unwrap()
        .broken
        .insert(deployments("checkout"));
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::Halted, "{end:?}");
    let reason = end.decision.unwrap().reason;
    assert!(reason.contains("ProgressDeadlineExceeded"), "{reason}");
    assert!(
        reason.contains("all on the canary `checkout-canary` (v2), which is kept"),
        "{reason}"
    );
    let svc = r.object(&services("checkout")).unwrap();
    assert_eq!(
        at(&svc, "spec/selector")["rampart.dev/track"],
        "canary",
        "traffic stays on the working canary"
    );
    assert!(r.object(&deployments("checkout-canary")).is_some());
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_an_http_route_the_gateway_refuses_is_never_promoted() {
    // Issue 22, item 3: the Gateway refuses the route, so no request reaches the
    // canary whatever the weights say; a query that reads 0 without traffic must not
    // promote it.
    let text = policy(
        "{mode: http_route, service: checkout, route: checkout}",
        "{canary: {steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]}}",
    );
    let r = release(&text, routed_cluster()).await;
    r.world.lock().unwrap().gateway = cluster::Gateway::Refuses;
    let end = r.run(&text).await;
    assert_ne!(end.phase, Phase::Succeeded, "{end:?}");
    let reason = end.decision.unwrap().reason;
    assert!(reason.contains("Accepted=False"), "{reason}");
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_the_canary_keeps_its_pods_for_the_drain_after_traffic_left_it() {
    // Issue 22, item 4: kube-proxy and Gateways go on sending requests to a backend for
    // a moment after the selector or route changed. The canary's pods stop only after
    // `rollback.drain`, on promotion as on rollback.
    let blue_green = format!("{}rollback: {{drain: 30s}}\n", blue_green());
    let r = release(&blue_green, blue_green_cluster()).await;
    assert_eq!(r.run(&blue_green).await.phase, Phase::Succeeded);
    let waited = |r: &Release, traffic: &str| {
        let w = r.world.lock().unwrap();
        let switched = w.last(&format!("PATCH {traffic}")).unwrap();
        let stopped = w
            .last(&format!("PATCH {}", deployments("checkout-canary")))
            .unwrap();
        stopped - switched
    };
    assert!(
        waited(&r, &services("checkout")) >= Duration::from_secs(30),
        "promotion: {:?}",
        waited(&r, &services("checkout"))
    );

    let routed = format!(
        "{}rollback: {{drain: 30s}}\n",
        policy(
            "{mode: http_route, service: checkout, route: checkout}",
            "{canary: {steps: [{weight: 10, bake: 1m}]}}",
        )
    );
    let r = release(&routed, routed_cluster()).await;
    r.metrics.0.store(200, Ordering::SeqCst);
    assert_eq!(r.run(&routed).await.phase, Phase::RolledBack);
    assert!(
        waited(&r, &routes("checkout")) >= Duration::from_secs(30),
        "rollback: {:?}",
        waited(&r, &routes("checkout"))
    );
}

/// The (stable, canary) replica counts after each write, and the smallest total seen
/// while the canary existed.
fn capacity(r: &Release) -> i64 {
    let w = r.world.lock().unwrap();
    let (mut stable, mut canary, mut least) = (None, None, i64::MAX);
    for (path, n) in &w.replicas {
        if *path == deployments("checkout") {
            stable = Some(*n);
        } else {
            canary = Some(*n);
        }
        if let (Some(s), Some(c)) = (stable, canary) {
            least = least.min(s + c);
        }
    }
    least
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_replica_ratio_sizes_from_the_stables_live_replicas() {
    // Issue 22, item 5: the stable runs 10 replicas, the policy's grid is 4. The split
    // must not shrink the service to 4 pods.
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(&text, vec![(deployments("checkout"), stable("v1", 10))]).await;
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    assert!(capacity(&r) >= 10, "capacity dropped to {}", capacity(&r));
    let canary: Vec<i64> = r
        .world
        .lock()
        .unwrap()
        .replicas
        .iter()
        .filter(|(p, _)| *p == deployments("checkout-canary"))
        .map(|(_, n)| *n)
        .collect();
    assert_eq!(
        canary,
        vec![0, 3, 6, 10, 0],
        "25 % and 50 % of 12, then all 10"
    );
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(
        at(&stable, "spec/replicas"),
        10,
        "the promoted stable has its 10 back"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_replica_ratio_keeps_the_stable_within_its_hpas_bounds() {
    // Issue 22, item 5: an HPA (min 3) scales the stable. At 50 % of 4 the stable would
    // get 2, the HPA would put it back to 3, and the weight read back (40 %) would fail
    // the step: the canary grows instead.
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(
        &text,
        vec![
            (deployments("checkout"), stable("v1", 4)),
            (format!("{}/checkout", hpas()), hpa("checkout", 3, 10)),
        ],
    )
    .await;
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    let w = r.world.lock().unwrap();
    let stable_counts: Vec<i64> = w
        .replicas
        .iter()
        .filter(|(p, _)| *p == deployments("checkout"))
        .map(|(_, n)| *n)
        .collect();
    assert!(
        stable_counts.iter().all(|n| *n == 0 || *n >= 3),
        "the stable never went below the HPA's minimum: {stable_counts:?}"
    );
    assert_eq!(stable_counts.last(), Some(&4));
}

/// The JSON pointers of a recipe block in docs/kubernetes.md, by the kind of the rule
/// they follow.
fn recipe(name: &str) -> Vec<(String, String)> {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/kubernetes.md"
    ))
    .unwrap();
    let start = doc.find(&format!("<!-- recipe: {name} -->")).unwrap();
    let block = doc[start..].split("```").nth(1).unwrap();
    let mut kind = String::new();
    let mut out = Vec::new();
    for line in block.lines() {
        if let Some(i) = line.find("kind: ") {
            kind = line[i + 6..]
                .split([',', '}', ' '])
                .next()
                .unwrap()
                .to_string();
        }
        for token in line.split([' ', '[', ']', ',']) {
            if token.starts_with("/spec/") || token.starts_with("/metadata/") {
                out.push((kind.clone(), token.to_string()));
            }
        }
    }
    out
}

/// The JSON pointers of the fields a manager named `rampart` owns on the object at
/// `path`, leaving out list items' keys (`name` of a container).
fn owned_by_rampart(w: &World, path: &str) -> Vec<String> {
    let Some(object) = w.objects.get(path) else {
        return Vec::new();
    };
    let mut pointers = Vec::new();
    for (manager, fields) in w.owners.get(path).into_iter().flatten() {
        if manager.split('/').next() != Some("rampart") {
            continue;
        }
        for field in fields {
            let (mut at, mut pointer, mut keyed) = (object, String::new(), None::<Value>);
            for seg in field {
                let next = match seg.strip_prefix("k:") {
                    Some(key) => {
                        let key: Value = serde_json::from_str(key).unwrap();
                        let items = at.as_array().unwrap();
                        let i = items
                            .iter()
                            .position(|item| {
                                key.as_object().unwrap().iter().all(|(k, v)| &item[k] == v)
                            })
                            .unwrap();
                        keyed = Some(key);
                        pointer.push_str(&format!("/{i}"));
                        &items[i]
                    }
                    None => {
                        pointer
                            .push_str(&format!("/{}", seg.replace('~', "~0").replace('/', "~1")));
                        &at[seg]
                    }
                };
                at = next;
            }
            let is_key = keyed.is_some_and(|k| field.last().is_some_and(|l| k.get(l).is_some()));
            if !is_key {
                pointers.push(pointer);
            }
        }
    }
    pointers
}

/// A promoted release in each traffic mode (the replica_ratio one under an HPA) and a
/// rolled-back http_route one, each on its own fake cluster.
async fn one_release_per_mode() -> Vec<Release> {
    let objects = |extra: Vec<(String, Value)>| {
        let mut o = vec![(deployments("checkout"), stable("v1", 4)), stable_service()];
        o.extend(extra);
        o
    };
    let routed = || vec![(routes("checkout"), route(None, None)), admin_service()];
    let mut done = Vec::new();
    for (traffic, strategy, extra, errors) in [
        (
            "{mode: replica_ratio, replicas: 4}",
            CANARY_STEPS,
            vec![(format!("{}/checkout", hpas()), hpa("checkout", 1, 10))],
            0,
        ),
        (
            "{mode: service_selector, service: checkout}",
            "{blue_green: {stability: 1m}}",
            vec![],
            0,
        ),
        (
            "{mode: http_route, service: checkout, route: checkout}",
            CANARY_STEPS,
            routed(),
            0,
        ),
        (
            "{mode: http_route, service: checkout, route: checkout}",
            CANARY_STEPS,
            routed(),
            200,
        ),
    ] {
        let text = policy(traffic, strategy);
        let r = release(&text, objects(extra)).await;
        r.metrics.0.store(errors, Ordering::SeqCst);
        let end = r.run(&text).await;
        let expected = if errors > 0 {
            Phase::RolledBack
        } else {
            Phase::Succeeded
        };
        assert_eq!(end.phase, expected, "{end:?}");
        done.push(r);
    }
    done
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_the_role_grants_what_rampart_asks_and_nothing_more() {
    // Issue 22, item 12: the documented Role (examples/kubernetes/rbac.yaml and the
    // one in docs/kubernetes.md) against every request of a release in each mode.
    let mut asked = BTreeSet::new();
    for r in one_release_per_mode().await {
        asked.extend(r.world.lock().unwrap().asked.iter().cloned());
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let example = role_rules(
        &std::fs::read_to_string(format!("{root}/examples/kubernetes/rbac.yaml")).unwrap(),
    );
    let doc = std::fs::read_to_string(format!("{root}/docs/kubernetes.md")).unwrap();
    let block = doc[doc.find("## RBAC").unwrap()..]
        .split("```")
        .nth(1)
        .unwrap();
    let documented = role_rules(block.trim_start_matches("yaml\n"));
    assert_eq!(
        documented, example,
        "docs/kubernetes.md and examples/kubernetes/rbac.yaml differ"
    );
    // The examples name the canary `checkout-canary`, as these releases do.
    for (group, resource, verb, name) in &asked {
        assert!(
            example.iter().any(|(g, r, v, names)| g == group
                && r == resource
                && v == verb
                && (names.is_empty() || names.contains(name))),
            "the Role does not grant {verb} on {group}/{resource} {name}: {example:?}"
        );
    }
    for (group, resource, verb, names) in &example {
        let used = asked.iter().any(|(g, r, v, name)| {
            g == group && r == resource && v == verb && (names.is_empty() || names.contains(name))
        });
        assert!(
            used,
            "the Role grants {verb} on {group}/{resource} {names:?}, which rampart never asks: {asked:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_the_gitops_recipes_cover_every_field_rampart_writes() {
    // Issue 22, item 6: the Argo CD and Flux recipes in docs/kubernetes.md must name
    // every field rampart writes on the user's objects, and nothing else.
    let mut written: Vec<(String, String)> = Vec::new();
    for r in one_release_per_mode().await {
        let w = r.world.lock().unwrap();
        for (kind, path) in [
            ("Deployment", deployments("checkout")),
            ("Service", services("checkout")),
            ("HTTPRoute", routes("checkout")),
        ] {
            for p in owned_by_rampart(&w, &path) {
                written.push((kind.to_string(), p));
            }
        }
    }
    written.sort();
    written.dedup();
    for name in ["argo-cd", "flux"] {
        let ignored = recipe(name);
        for (kind, field) in &written {
            assert!(
                ignored
                    .iter()
                    .any(|(k, p)| k == kind && (field == p || field.starts_with(&format!("{p}/")))),
                "the {name} recipe misses {kind} {field}: {ignored:?}"
            );
        }
        for (kind, p) in &ignored {
            assert!(
                written
                    .iter()
                    .any(|(k, f)| k == kind && (f == p || f.starts_with(&format!("{p}/")))),
                "the {name} recipe names {kind} {p}, which rampart does not write: {written:?}"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_a_service_selecting_both_tracks_stops_the_release_before_the_canary_runs()
{
    // Issue 22, item 7: the Service selects `{app: checkout}`, so a blue-green canary at
    // full capacity would get about half the traffic as soon as its pods are ready.
    let text = blue_green();
    let r = release(
        &text,
        vec![
            (deployments("checkout"), stable("v1", 3)),
            (
                services("checkout"),
                service("checkout", json!({"app": "checkout"})),
            ),
        ],
    )
    .await;
    let end = r.run(&text).await;
    assert_ne!(end.phase, Phase::Succeeded, "{end:?}");
    let reason = end.decision.unwrap().reason;
    assert!(reason.contains("rampart.dev/track: stable"), "{reason}");
    let writes = r.world.lock().unwrap().writes.clone();
    assert!(
        !writes.contains(&format!("PATCH {}", deployments("checkout-canary"))),
        "the canary never started: {writes:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_a_version_that_is_no_label_value_is_hashed_into_the_label() {
    // Issue 22, item 8: label values are at most 63 characters of a small alphabet; a
    // version may be a digest or a long CI tag. The API server refuses such a label
    // (422), so the canary could never be created.
    // (An image tag may be 128 characters; `+` is none a tag may hold, and such a
    // version is refused before anything is written.)
    let version = format!("1.4.2-ci.{}", "7f3a9c".repeat(12));
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(&text, vec![(deployments("checkout"), stable("v1", 4))]).await;
    r.controller.create("r1", &version, &text).await.unwrap();
    let end = r
        .controller
        .drive("r1", Some("v1".into()), None)
        .await
        .unwrap();
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(
        image(&stable),
        format!("registry.example.com/checkout:{version}")
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_resumed_after_the_canary_was_deleted_completes_the_promotion() {
    // Issue 22, item 10: the controller dies after the promotion deleted the canary and
    // before it recorded that. Its successor must just complete the promotion: no
    // canary re-created, the promoted stable never scaled to 0 and back up.
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(&text, vec![(deployments("checkout"), stable("v1", 4))]).await;
    let canary_delete = format!("DELETE {}", deployments("checkout-canary"));
    r.world.lock().unwrap().hang_after = Some(canary_delete.clone());
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let first = controller_over(&r, &text, store.clone(), r.client());
    first.create("r1", "v2", &text).await.unwrap();
    let crashed = tokio::time::timeout(
        Duration::from_secs(3600),
        first.drive("r1", Some("v1".into()), None),
    )
    .await;
    assert!(crashed.is_err(), "the first controller never heard back");
    drop(first);
    let (writes_before, replicas_before) = {
        let mut w = r.world.lock().unwrap();
        w.hang_after = None;
        assert_eq!(w.writes.last(), Some(&canary_delete));
        (w.writes.len(), w.replicas.len())
    };
    assert_eq!(
        image(&r.object(&deployments("checkout")).unwrap()),
        "registry.example.com/checkout:v2"
    );

    let second = controller_over(&r, &text, store, r.client());
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    let w = r.world.lock().unwrap();
    let canary_writes: Vec<&String> = w.writes[writes_before..]
        .iter()
        .filter(|x| x.contains("checkout-canary"))
        .collect();
    assert!(
        canary_writes.is_empty(),
        "the canary was re-created: {canary_writes:?}"
    );
    let stable_counts: Vec<i64> = w.replicas[replicas_before..]
        .iter()
        .filter(|(p, _)| *p == deployments("checkout"))
        .map(|(_, n)| *n)
        .collect();
    assert!(
        stable_counts.iter().all(|n| *n == 4),
        "the stable moved: {stable_counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_a_replica_ratio_canary_that_never_gets_ready_fails_at_its_progress_deadline()
 {
    // Issue 22, item 9: the canary is created with 0 replicas (complete at once) and
    // scaled up at its first step. Kubernetes checks no progress deadline on a mere
    // scale, so a canary whose pods never get ready was held for the whole ready
    // timeout, several times over.
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(&text, vec![(deployments("checkout"), stable("v1", 4))]).await;
    r.world
        .lock()
        .unwrap()
        .broken
        .insert(deployments("checkout-canary"));
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::RolledBack, "{end:?}");
    let decision = end.decision.unwrap();
    assert!(
        decision.reason.contains("ProgressDeadlineExceeded"),
        "{}",
        decision.reason
    );
    assert!(
        decision.at - end.started_at < 60_000,
        "decided after {} ms",
        decision.at - end.started_at
    );
}

#[tokio::test(start_paused = true)]
async fn fake_api_release_a_stable_someone_else_changed_mid_release_stops_the_canary() {
    // Issue 22, item 11: after the first step, someone (kubectl, a GitOps sync) puts
    // another version on the stable Deployment. The canary is no longer compared with
    // the version the release began from: the next step fails and the release rolls
    // back, leaving the stable as they left it.
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let r = release(&text, vec![(deployments("checkout"), stable("v1", 4))]).await;
    r.world.lock().unwrap().edit_after = Some((
        format!("PATCH {}/scale", deployments("checkout")),
        deployments("checkout"),
        "/spec/template/spec/containers/0/image".into(),
        json!("registry.example.com/checkout:v9"),
    ));
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::RolledBack, "{end:?}");
    let reason = end.decision.unwrap().reason;
    assert!(reason.contains("changed mid-release"), "{reason}");
    assert!(reason.contains("checkout:v9"), "{reason}");
    let stable = r.object(&deployments("checkout")).unwrap();
    assert_eq!(image(&stable), "registry.example.com/checkout:v9");
    assert!(r.object(&deployments("checkout-canary")).is_none());
}

/// Regression (review): an admission webhook that pins images to their digests
/// (Kyverno's image verification does by default) stores `checkout:v1` as
/// `checkout:v1@sha256:...`. rampart read that as the stable Deployment "changed
/// mid-release" at the first step with traffic, and failed the release; the stable's
/// version read as `v1@sha256:...`. A digest added to the tag is the same version.
#[tokio::test(start_paused = true)]
async fn fake_api_release_behind_a_digest_pinning_webhook_promotes() {
    let text = policy("{mode: replica_ratio, replicas: 4}", CANARY_STEPS);
    let mut pinned = stable("v1", 4);
    let tagged = image(&pinned).to_string();
    pinned["spec"]["template"]["spec"]["containers"][0]["image"] =
        json!(format!("{tagged}@sha256:{}", "ab".repeat(32)));
    let r = release(&text, vec![(deployments("checkout"), pinned)]).await;
    r.world.lock().unwrap().pin_digests = true;
    let policy = Policy::from_yaml(&text).unwrap();
    let (deploy, traffic) = policy.kubernetes().unwrap();
    let k = Kubernetes::new(r.client(), deploy.clone(), traffic.clone());
    assert_eq!(k.stable_version().await.unwrap().as_deref(), Some("v1"));
    let end = r.run(&text).await;
    assert_eq!(end.phase, Phase::Succeeded, "{:?}", end.decision);
    let stable = r.object(&deployments("checkout")).unwrap();
    assert!(
        image(&stable).starts_with("registry.example.com/checkout:v2@sha256:"),
        "{}",
        image(&stable)
    );
    assert_eq!(k.stable_version().await.unwrap().as_deref(), Some("v2"));
}
