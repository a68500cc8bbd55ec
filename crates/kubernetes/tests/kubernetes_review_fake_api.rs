#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the Kubernetes adapter: whole releases through the real
//! controller against the FAKE cluster (`support::cluster`, no API server runs), each
//! test showing a defect a real cluster would expose. Where the fake is more lenient
//! than Kubernetes, a strict layer in front of it (`strict`) answers as the API server
//! does.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
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

/// The Prometheus stand-in: the canary's error rate (thousandths), and a hook run at
/// each measurement, i.e. while a step bakes with its weight in force.
struct Queries {
    errors: AtomicU64,
    on_measure: Box<dyn Fn() + Send + Sync>,
}

impl MetricsSource for Queries {
    fn measure<'a>(
        &'a self,
        _: &'a rampart_core::release::MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        (self.on_measure)();
        let canary = self.errors.load(Ordering::SeqCst) as f64 / 1000.0;
        Box::pin(async move { Ok(errors_reading(canary)) })
    }
}

fn policy(service: &str, traffic: &str, strategy: &str) -> String {
    format!(
        r#"
service: {service}
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

const CANARY_STEPS: &str = "{canary: {steps: [{weight: 25, bake: 1m}, {weight: 50, bake: 1m}]}}";

/// Runs release `r1` of v2 over v1 with `client` as the adapter's connection.
async fn run_release(
    text: &str,
    client: kube::Client,
    metrics: Arc<Queries>,
) -> rampart_core::Release {
    let policy = Policy::from_yaml(text).unwrap();
    let (deploy, traffic) = policy.kubernetes().unwrap();
    let k = Arc::new(
        Kubernetes::new(client, deploy.clone(), traffic.clone())
            .with_poll_interval(Duration::from_secs(1))
            .with_drain(policy.rollback.drain),
    );
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let ports = Ports {
        deployer: k.clone(),
        router: k,
        metrics,
        gates: Arc::new(Nothing),
        flags: store.clone(),
        store,
        clock: Arc::new(TokioClock::starting_at(1_000_000)),
        notifier: Arc::new(Nothing),
        silencer: None,
    };
    let controller = Controller::new(policy, ports, Arc::new(Silent));
    controller.create("r1", "v2", text).await.unwrap();
    controller
        .drive("r1", Some("v1".into()), None)
        .await
        .unwrap()
}

fn quiet() -> Arc<Queries> {
    Arc::new(Queries {
        errors: AtomicU64::new(0),
        on_measure: Box::new(|| {}),
    })
}

fn object(world: &Arc<Mutex<World>>, path: &str) -> Option<Value> {
    world.lock().unwrap().objects.get(path).cloned()
}

/// The Service of `http_route`, selecting stable pods, and the route.
fn routed_cluster(service_name: &str) -> Vec<(String, Value)> {
    let mut route = route(None, None);
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = json!(service_name);
    vec![
        (deployments("checkout"), stable("v1", 3)),
        (
            services(service_name),
            service(
                service_name,
                json!({"app": "checkout", "rampart.dev/track": "stable"}),
            ),
        ),
        (routes("checkout"), route),
        (services("admin"), service("admin", json!({"app": "admin"}))),
    ]
}

/// A strict layer in front of the fake cluster, answering as the API server does where
/// the fake is more lenient: an object name that is no DNS label (a Service's name is
/// an RFC 1035 label: at most 63 characters) is refused with 422 Invalid.
fn strict(world: &Arc<Mutex<World>>) -> kube::Client {
    let inner = cluster::connect(world);
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let path = req.uri().path().to_string();
            let service_name = path
                .split("/services/")
                .nth(1)
                .and_then(|rest| rest.split('/').next())
                .map(str::to_string);
            if let Some(name) = service_name.filter(|n| n.len() > 63) {
                let message = format!(
                    "Service \"{name}\" is invalid: metadata.name: Invalid value: \"{name}\": must be no more than 63 characters"
                );
                let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                    "reason": "Invalid", "code": 422, "message": message});
                send.send_response(
                    Response::builder()
                        .status(422)
                        .header("content-type", "application/json")
                        .body(Body::from(serde_json::to_vec(&status).unwrap()))
                        .unwrap(),
                );
                continue;
            }
            let answer = inner.send(req).await.unwrap();
            send.send_response(answer);
        }
    });
    kube::Client::new(mock, NS)
}

/// Review: an HPA that scales the stable up under load between two `replica_ratio`
/// steps is undone by the next step. The docs say "Between steps the HPA still scales
/// the stable with load, and the next step sizes from there", but the split is always
/// sized from `rampart.dev/stable-replicas` (the count when the release began): a
/// stable the HPA took from 3 to 12 pods is cut to 2 at 50 %, the service dropping
/// from 13 pods to 4 in the middle of the load that made the HPA scale.
#[tokio::test(start_paused = true)]
async fn review_an_hpa_scale_up_between_steps_is_undone_by_the_next_step_fake_api() {
    let text = policy(
        "checkout",
        "{mode: replica_ratio, replicas: 4}",
        CANARY_STEPS,
    );
    let (_, world) = cluster::start(vec![
        (deployments("checkout"), stable("v1", 4)),
        (format!("{}/checkout", hpas()), hpa("checkout", 2, 20)),
    ]);
    let hpa_at = Arc::new(Mutex::new(None::<usize>));
    let scaled = Arc::new(AtomicBool::new(false));
    let metrics = {
        let (world, hpa_at, scaled) = (world.clone(), hpa_at.clone(), scaled.clone());
        Arc::new(Queries {
            errors: AtomicU64::new(0),
            // While the 25 % step bakes (canary 1, stable 3), load makes the HPA scale
            // the stable to 12, as it does through the scale subresource.
            on_measure: Box::new(move || {
                let mut w = world.lock().unwrap();
                let canary = w.objects.get(&deployments("checkout-canary"));
                let at_25 = canary.is_some_and(|c| c["spec"]["replicas"] == json!(1));
                if at_25 && !scaled.swap(true, Ordering::SeqCst) {
                    w.scale_as(
                        &deployments("checkout"),
                        12,
                        "horizontal-pod-autoscaler/scale",
                    );
                    *hpa_at.lock().unwrap() = Some(w.replicas.len());
                }
            }),
        })
    };
    let end = run_release(&text, cluster::connect(&world), metrics).await;
    let from = hpa_at
        .lock()
        .unwrap()
        .expect("the 25 % step baked with the canary at 1");
    let w = world.lock().unwrap();
    // The pods after each write, from the HPA's scale-up on.
    let (mut stable, mut canary) = (12, 1);
    let mut at_50 = None;
    for (path, n) in &w.replicas[from..] {
        if *path == deployments("checkout") {
            stable = *n;
        } else {
            canary = *n;
        }
        if canary > 1 && canary == stable {
            at_50 = Some((canary, stable));
            break;
        }
    }
    let (c, s) = at_50.unwrap_or_else(|| panic!("no 50 % split was written: {end:?}"));
    assert!(
        c + s >= 12,
        "the HPA had scaled the stable to 12 under load; the 50 % step left {c} canary + {s} stable pods"
    );
}

/// Review: under `http_route` rampart server-side applies the Service
/// `<service>-canary` with `force`, whoever it belongs to. A team coming from Flagger
/// or Argo Rollouts has exactly such a Service (`checkout-canary`, selecting their
/// canary pods); rampart silently takes over its selector (and leaves it selecting
/// rampart's deleted canary after the release), while the canary Deployment of the
/// same name is protected (`rampart.dev/derived-from`, "Only rampart's canary").
#[tokio::test(start_paused = true)]
async fn review_someone_elses_canary_service_is_taken_over_fake_api() {
    let text = policy(
        "checkout",
        "{mode: http_route, service: checkout, route: checkout}",
        "{canary: {steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]}}",
    );
    let mut objects = routed_cluster("checkout");
    let theirs = json!({"app": "checkout-legacy", "role": "canary"});
    objects.push((
        services("checkout-canary"),
        service("checkout-canary", theirs.clone()),
    ));
    let (_, world) = cluster::start(objects);
    let end = run_release(&text, cluster::connect(&world), quiet()).await;
    let svc = object(&world, &services("checkout-canary")).unwrap();
    assert_eq!(
        svc["spec"]["selector"], theirs,
        "a Service rampart did not create was rewritten by the release ({:?}); its metadata: {}",
        end.phase, svc["metadata"]
    );
}

/// Review: the canary Service of `http_route` is `<service>-canary`, but the policy
/// decoder accepts any `service` up to 63 characters. A Service name is an RFC 1035
/// label (at most 63): for a 57- to 63-character Service (Helm's `fullname` truncates
/// to exactly 63) the API server refuses the canary Service, so every release starts a
/// full-size canary and rolls back at its first step. The fake accepts any name; the
/// strict layer answers 422 as Kubernetes does. Fixed: `rampart validate` refuses the
/// policy, or the release names its canary Service within 63 characters.
#[tokio::test(start_paused = true)]
async fn review_a_long_service_name_makes_a_canary_service_name_kubernetes_refuses_fake_api() {
    let long = format!("checkout-{}", "x".repeat(63 - "checkout-".len()));
    assert_eq!(long.len(), 63);
    let text = policy(
        "checkout",
        &format!("{{mode: http_route, service: {long}, route: checkout}}"),
        "{canary: {steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]}}",
    );
    if Policy::from_yaml(&text).is_err() {
        return; // refused up front: fixed
    }
    let (_, world) = cluster::start(routed_cluster(&long));
    let end = run_release(&text, strict(&world), quiet()).await;
    assert_eq!(
        end.phase,
        Phase::Succeeded,
        "the policy validated, but its release cannot run on Kubernetes: {:?}",
        end.decision.map(|d| d.reason)
    );
}

/// The share of traffic each backend of `rule` gets (Gateway API: weight / sum of the
/// rule's weights, 1 when unset).
fn shares(rule: &Value) -> Vec<(String, f64)> {
    let refs = rule["backendRefs"].as_array().cloned().unwrap_or_default();
    let weight = |r: &Value| r["weight"].as_f64().unwrap_or(1.0);
    let total: f64 = refs.iter().map(weight).sum();
    refs.iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("?").to_string(),
                weight(r) / total,
            )
        })
        .collect()
}

/// Review: under `http_route`, a rule that sends to the stable Service *and* to another
/// backend (a weighted split the team already runs: a migration to a new backend, an
/// A/B split) is rewritten with the stable at `10000 - w` and the canary at `w` while
/// the other backend keeps its weight (50): its share falls from 50 % to 0.5 %, and
/// almost all of its traffic lands on `checkout` and the canary. The docs promise the
/// route stays the team's but for the weighing of the stable against its canary.
#[tokio::test(start_paused = true)]
async fn review_a_rule_splitting_the_stable_with_another_backend_loses_that_split_fake_api() {
    let text = policy(
        "checkout",
        "{mode: http_route, service: checkout, route: checkout}",
        "{canary: {steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]}}",
    );
    let mut objects = routed_cluster("checkout");
    // Rule 0 splits `/` evenly between checkout and checkout-next.
    objects[2].1["spec"]["rules"][0]["backendRefs"] = json!([
        {"name": "checkout", "port": 80, "weight": 50},
        {"name": "checkout-next", "port": 80, "weight": 50}
    ]);
    objects.push((
        services("checkout-next"),
        service("checkout-next", json!({"app": "checkout-next"})),
    ));
    let (_, world) = cluster::start(objects);
    let seen = Arc::new(Mutex::new(None::<Vec<(String, f64)>>));
    let metrics = {
        let (world, seen) = (world.clone(), seen.clone());
        Arc::new(Queries {
            errors: AtomicU64::new(0),
            // While the 10 % step bakes: the route's first rule as the Gateway routes it.
            on_measure: Box::new(move || {
                let w = world.lock().unwrap();
                let rule = &w.objects[&routes("checkout")]["spec"]["rules"][0];
                // The canary at 10 % of what the stable Service had.
                let weight = |name: &str| {
                    rule["backendRefs"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter(|r| r["name"] == name)
                        .map(|r| r["weight"].as_f64().unwrap_or(1.0))
                        .sum::<f64>()
                };
                let (c, s) = (weight("checkout-canary"), weight("checkout"));
                let canary = c > 0.0 && (c / (c + s) - 0.1).abs() < 1e-9;
                let mut seen = seen.lock().unwrap();
                if canary && seen.is_none() {
                    *seen = Some(shares(rule));
                }
            }),
        })
    };
    let end = run_release(&text, cluster::connect(&world), metrics).await;
    let seen = seen.lock().unwrap().clone();
    let seen = seen.unwrap_or_else(|| panic!("the 10 % step never baked: {end:?}"));
    let next = seen
        .iter()
        .find(|(n, _)| n == "checkout-next")
        .map(|(_, s)| *s)
        .unwrap_or(0.0);
    assert!(
        (next - 0.5).abs() < 0.01,
        "checkout-next had 50 % of `/`; at the 10 % step it gets {:.2} % ({seen:?})",
        next * 100.0
    );
}

/// A client to the fake cluster that records each write of the canary Deployment that
/// rolls out v2 while `serving(world)` says the canary receives users' traffic.
fn canary_rollouts(
    world: &Arc<Mutex<World>>,
    serving: impl Fn(&World) -> bool + Send + 'static,
) -> (kube::Client, Arc<Mutex<Vec<String>>>) {
    let exposed = Arc::new(Mutex::new(Vec::<String>::new()));
    let inner = cluster::connect(world);
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let (world, seen) = (world.clone(), exposed.clone());
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let (parts, body) = req.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let canary_write = parts.method == http::Method::PATCH
                && parts.uri.path() == deployments("checkout-canary");
            if canary_write {
                let body: Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let image = body
                    .pointer("/spec/template/spec/containers/0/image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                if image.ends_with(":v2") && serving(&world.lock().unwrap()) {
                    seen.lock().unwrap().push(image);
                }
            }
            let req = Request::from_parts(parts, Body::from(bytes.to_vec()));
            send.send_response(inner.send(req).await.unwrap());
        }
    });
    (kube::Client::new(mock, NS), exposed)
}

/// Review: a `service_selector` release that starts while the Service selects the
/// canary track, as a halted promotion leaves it ("the Service left on the canary",
/// docs/kubernetes.md), updates that canary Deployment in place to the new version:
/// every user is on the new version, mid-rollout, before any analysis or preview.
/// `check_service` accepts `track: canary` for a resumed release, but cannot tell it
/// from a new one whose canary runs another version.
#[tokio::test(start_paused = true)]
async fn review_a_new_blue_green_release_rolls_out_on_the_canary_serving_everyone_fake_api() {
    let text = policy(
        "checkout",
        "{mode: service_selector, service: checkout}",
        "{blue_green: {stability: 1m}}",
    );
    // What a halted promotion of v9 left: all traffic on its canary.
    let (_, world) = cluster::start(vec![
        (deployments("checkout"), stable("v1", 3)),
        (deployments("checkout-canary"), canary("v9", 3)),
        (
            services("checkout"),
            service(
                "checkout",
                json!({"app": "checkout", "rampart.dev/track": "canary"}),
            ),
        ),
    ]);
    let (client, exposed) = canary_rollouts(&world, |w| {
        w.objects[&services("checkout")]["spec"]["selector"]["rampart.dev/track"] == "canary"
    });
    let end = run_release(&text, client, quiet()).await;
    let exposed = exposed.lock().unwrap().clone();
    assert!(
        exposed.is_empty(),
        "the canary serving all traffic was rolled out to {exposed:?} before any analysis (release {:?})",
        end.phase
    );
}

/// Review: the same under `http_route`: a halted promotion leaves the route with the
/// canary's Service at 10000 ("all on the canary, which is kept"); the next release
/// checks the stable Service's selector only, never the route's weights, and updates
/// the canary serving everyone in place to the new version before its first step.
#[tokio::test(start_paused = true)]
async fn review_a_new_routed_release_rolls_out_on_the_canary_the_route_sends_everyone_to_fake_api()
{
    let text = policy(
        "checkout",
        "{mode: http_route, service: checkout, route: checkout}",
        "{canary: {steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]}}",
    );
    let mut objects = routed_cluster("checkout");
    objects[2].1 = route(Some(0), Some(10_000));
    objects.push((deployments("checkout-canary"), canary("v9", 3)));
    // rampart's own canary Service, as the last release left it.
    let mut theirs = service(
        "checkout-canary",
        json!({"app": "checkout", "rampart.dev/track": "canary"}),
    );
    theirs["metadata"]["annotations"] = json!({"rampart.dev/derived-from": "checkout"});
    objects.push((services("checkout-canary"), theirs));
    let (_, world) = cluster::start(objects);
    let (client, exposed) = canary_rollouts(&world, |w| {
        let rule = &w.objects[&routes("checkout")]["spec"]["rules"][0];
        shares(rule)
            .iter()
            .any(|(n, s)| n == "checkout-canary" && *s > 0.0)
    });
    let end = run_release(&text, client, quiet()).await;
    let exposed = exposed.lock().unwrap().clone();
    let writes = exposed.len();
    assert!(
        exposed.is_empty(),
        "the canary the route sent all traffic to was rolled out to v2 ({writes} write(s)) before its first step (release {:?})",
        end.phase
    );
}

/// After the review of the fixes: the stable count a `replica_ratio` step set was
/// recorded on the canary before the stable was scaled. A step whose grown canary never
/// got ready (its pods broken here) failed before the stable shrank, and the rollback
/// then read the stable's untouched count above the record as an HPA's growth: a
/// stable of 4 came back as 6. It must come back as it was.
#[tokio::test(start_paused = true)]
async fn review_a_failed_replica_ratio_step_does_not_read_as_an_hpa_s_growth_fake_api() {
    let text = policy(
        "checkout",
        "{mode: replica_ratio, replicas: 4}",
        CANARY_STEPS,
    );
    let (_, world) = cluster::start(vec![(deployments("checkout"), stable("v1", 4))]);
    let metrics = {
        let world = world.clone();
        Arc::new(Queries {
            errors: AtomicU64::new(0),
            // While 25 % bakes, the canary's pods break: the 50 % step's new ones never
            // get ready.
            on_measure: Box::new(move || {
                world
                    .lock()
                    .unwrap()
                    .broken
                    .insert(deployments("checkout-canary"));
            }),
        })
    };
    let end = run_release(&text, cluster::connect(&world), metrics).await;
    assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.decision);
    let stable = object(&world, &deployments("checkout")).unwrap();
    assert_eq!(
        stable["spec"]["replicas"], 4,
        "the stable had 4 before the release"
    );
}
