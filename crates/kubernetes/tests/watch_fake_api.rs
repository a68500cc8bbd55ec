//! The watch after promotion (`post_release.watch`) on Kubernetes, in each traffic
//! mode: whole releases through the real controller, state machine and SQLite store,
//! against the FAKE cluster of `support::cluster` (no API server), on tokio's paused
//! clock. The new version breaks, when a test says so, once the watch has begun.
//!
//! What these pin: during the watch the stable Deployment still runs the previous
//! version (the promotion comes after the watch passed); under `service_selector` and
//! `http_route` its pods keep running and a failure switches traffic back with one
//! write, before any Deployment is touched; under `replica_ratio` the previous version
//! has no pods at 100 %, rampart says so, and a failure scales it up before traffic
//! moves; a controller restarted during the watch resumes it without replacing or
//! resizing any pod.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_controller::{Controller, Observer, Ports};
use rampart_core::metrics::IntervalSample;
use rampart_core::policy::Policy;
use rampart_core::ports::*;
use rampart_core::release::{AuditEvent, Input, Phase, Release};
use rampart_kubernetes::Kubernetes;
use serde_json::{Value, json};
use support::cluster::{self, World};
use support::*;
use tokio::time::Instant;

/// A moment of the release: how many writes the cluster had taken, and when.
#[derive(Clone, Debug)]
struct Mark {
    writes: usize,
    /// How many replica counts the cluster had recorded (`World::replicas`).
    sizes: usize,
    /// The pod template each Deployment's pods ran (`World::running`).
    running: BTreeMap<String, Value>,
    at: Instant,
}

/// What happened around the watch, as the controller reported it and the fake
/// cluster recorded it.
struct Scene {
    world: Arc<Mutex<World>>,
    /// The new version breaks once the watch has begun.
    breaks: AtomicBool,
    /// The audit events, in order: (kind, message).
    events: Mutex<Vec<(String, String)>>,
    watch_began: Mutex<Option<Mark>>,
    /// When the watch was found failed (the metric's streak reached its limit).
    failed: Mutex<Option<Mark>>,
    watch_passed: Mutex<Option<Mark>>,
}

impl Scene {
    fn now(&self) -> Mark {
        let w = self.world.lock().unwrap();
        Mark {
            writes: w.writes.len(),
            sizes: w.replicas.len(),
            running: w.running.clone(),
            at: Instant::now(),
        }
    }

    fn event(&self, kind: &str) -> Option<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, m)| m.clone())
    }
}

struct Seen(Arc<Scene>);

impl Observer for Seen {
    fn on_transition(&self, _: &Input, _: &Release, events: &[AuditEvent]) {
        let s = &self.0;
        for e in events {
            s.events
                .lock()
                .unwrap()
                .push((e.kind.clone(), e.message.clone()));
            let mark = match e.kind.as_str() {
                "watching" => &s.watch_began,
                "watch_failed" => &s.failed,
                "watch_passed" => &s.watch_passed,
                _ => continue,
            };
            mark.lock().unwrap().get_or_insert(s.now());
        }
    }
}

/// The Prometheus stand-in: the new version's error rate is 0, or 0.2/s (over the
/// policy's 0.05) once the watch has begun, when the scene says it breaks.
struct Queries(Arc<Scene>);

impl MetricsSource for Queries {
    fn measure<'a>(
        &'a self,
        _: &'a rampart_core::release::MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        let s = &self.0;
        let broken = s.breaks.load(Ordering::SeqCst) && s.watch_began.lock().unwrap().is_some();
        let canary = if broken { 0.2 } else { 0.0 };
        Box::pin(async move { Ok(errors_reading(canary)) })
    }
}

const RATIO: &str = "{mode: replica_ratio, replicas: 4}";
const SELECTOR: &str = "{mode: service_selector, service: checkout}";
const ROUTE: &str = "{mode: http_route, service: checkout, route: checkout}";
const CANARY: &str = "{canary: {steps: [{weight: 25, bake: 1m}, {weight: 50, bake: 1m}]}}";
const BLUE_GREEN: &str = "{blue_green: {stability: 1m}}";

/// Every mode with a strategy it takes.
const MODES: [(&str, &str); 3] = [(RATIO, CANARY), (SELECTOR, BLUE_GREEN), (ROUTE, CANARY)];

/// A policy in `traffic` mode with `strategy`, watched for 1m after the switch.
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
post_release:
  watch: 1m
"#
    )
}

/// The cluster a mode needs: the stable Deployment of 4 on v1, and the Service (and
/// route, with the other backend of its second rule) the mode names.
fn cluster_for(traffic: &str) -> Vec<(String, Value)> {
    let mut objects = vec![(deployments("checkout"), stable("v1", 4))];
    if traffic != RATIO {
        let selector = json!({"app": "checkout", "rampart.dev/track": "stable"});
        objects.push((services("checkout"), service("checkout", selector)));
    }
    if traffic == ROUTE {
        objects.push((routes("checkout"), route(None, None)));
        objects.push((services("admin"), service("admin", json!({"app": "admin"}))));
    }
    objects
}

struct Run {
    text: String,
    scene: Arc<Scene>,
    world: Arc<Mutex<World>>,
    /// One clock for every controller: a restarted one reads the same time.
    clock: Arc<TokioClock>,
}

impl Run {
    fn new(traffic: &str, strategy: &str, breaks: bool) -> Run {
        let text = policy(traffic, strategy);
        let (_, world) = cluster::start(cluster_for(traffic));
        let scene = Arc::new(Scene {
            world: world.clone(),
            breaks: AtomicBool::new(breaks),
            events: Mutex::default(),
            watch_began: Mutex::default(),
            failed: Mutex::default(),
            watch_passed: Mutex::default(),
        });
        Run {
            text,
            scene,
            world,
            clock: Arc::new(TokioClock::starting_at(1_000_000)),
        }
    }

    /// A controller over the cluster (its own client: a new process) and `store`.
    fn controller(&self, store: Arc<StateStore>) -> Controller {
        let policy = Policy::from_yaml(&self.text).unwrap();
        let (deploy, traffic) = policy.kubernetes().unwrap();
        let k = Arc::new(
            Kubernetes::new(
                cluster::connect(&self.world),
                deploy.clone(),
                traffic.clone(),
            )
            .with_poll_interval(Duration::from_secs(1))
            .with_drain(policy.rollback.drain),
        );
        let ports = Ports {
            deployer: k.clone(),
            router: k,
            metrics: Arc::new(Queries(self.scene.clone())),
            gates: Arc::new(Nothing),
            flags: store.clone(),
            store,
            clock: self.clock.clone(),
            notifier: Arc::new(Nothing),
            silencer: None,
        };
        Controller::new(policy, ports, Arc::new(Seen(self.scene.clone())))
    }

    /// The whole release by one controller.
    async fn release(&self) -> Release {
        let store = Arc::new(StateStore::in_memory().await.unwrap());
        let c = self.controller(store);
        c.create("r1", "v2", &self.text).await.unwrap();
        c.drive("r1", Some("v1".into()), None).await.unwrap()
    }

    /// The release by a controller that dies 15 s into the watch, then by another
    /// over the same store. `meanwhile` runs between the two.
    async fn release_with_restart(&self, meanwhile: impl FnOnce()) -> Release {
        let store = Arc::new(StateStore::in_memory().await.unwrap());
        let first = self.controller(store.clone());
        first.create("r1", "v2", &self.text).await.unwrap();
        let scene = self.scene.clone();
        tokio::select! {
            end = first.drive("r1", Some("v1".into()), None) => {
                panic!("the release ended before the watch: {end:?}")
            }
            () = async {
                while scene.watch_began.lock().unwrap().is_none() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                tokio::time::sleep(Duration::from_secs(15)).await;
            } => {}
        }
        drop(first);
        meanwhile();
        self.controller(store)
            .drive("r1", None, None)
            .await
            .unwrap()
    }

    fn mark(&self, which: &Mutex<Option<Mark>>, what: &str) -> Mark {
        which
            .lock()
            .unwrap()
            .clone()
            .unwrap_or_else(|| panic!("no {what}:\n{}", self.timeline()))
    }

    /// The writes from `from` on, each with when it happened.
    fn writes_from(&self, from: &Mark) -> Vec<(String, Instant)> {
        let w = self.world.lock().unwrap();
        w.writes
            .iter()
            .zip(&w.written_at)
            .skip(from.writes)
            .map(|(w, at)| (w.clone(), *at))
            .collect()
    }

    /// Every write with its time, for failure messages.
    fn timeline(&self) -> String {
        let w = self.world.lock().unwrap();
        let start = w.written_at.first().copied().unwrap_or_else(Instant::now);
        w.writes
            .iter()
            .zip(&w.written_at)
            .map(|(write, at)| format!("  {:>6.1?} {write}\n", *at - start))
            .collect()
    }

    fn replicas(&self, name: &str) -> i64 {
        let w = self.world.lock().unwrap();
        w.objects[&deployments(name)]["spec"]["replicas"]
            .as_i64()
            .unwrap()
    }
}

fn is_traffic(write: &str) -> bool {
    write.contains("/services/checkout") || write.contains("/httproutes/")
}

fn touches_stable(write: &str) -> bool {
    let stable = deployments("checkout");
    write.ends_with(&stable) || write.ends_with(&format!("{stable}/scale"))
}

fn stable_image(run: &Run) -> Option<String> {
    run.world
        .lock()
        .unwrap()
        .running_image(&deployments("checkout"))
}

/// Under `service_selector` and `http_route`: a watch that fails switches traffic back
/// with its first writes, no Deployment written before, within `within` of the
/// failing measurement, to the stable Deployment that ran the previous version on all
/// its pods throughout the watch.
fn switched_back_at_once(run: &Run, end: &Release, within: Duration) {
    assert_eq!(end.phase, Phase::RolledBack, "{end:?}\n{}", run.timeline());
    let reason = &end.decision.as_ref().unwrap().reason;
    assert!(reason.contains("after all traffic moved"), "{reason}");
    let began = run.mark(&run.scene.watch_began, "watch");
    let failed = run.mark(&run.scene.failed, "failure");
    let during: Vec<(String, Instant)> = run.writes_from(&began)[..failed.writes - began.writes]
        .iter()
        .filter(|(w, _)| touches_stable(w))
        .cloned()
        .collect();
    assert!(
        during.is_empty(),
        "the stable Deployment was written during the watch: {during:?}"
    );
    let after = run.writes_from(&failed);
    let switch = after
        .iter()
        .position(|(w, _)| is_traffic(w))
        .unwrap_or_else(|| panic!("traffic never moved back:\n{}", run.timeline()));
    assert!(
        after[..switch]
            .iter()
            .all(|(w, _)| !w.contains("/deployments/")),
        "a Deployment was written before traffic moved back: {after:?}"
    );
    let took = after[switch].1 - failed.at;
    assert!(
        took <= within,
        "traffic moved back {took:?} after the failure"
    );
    assert!(
        after.iter().all(|(w, _)| !touches_stable(w)),
        "the switch back touched the stable Deployment: {after:?}"
    );
    assert_eq!(
        stable_image(run).as_deref(),
        Some("registry.example.com/checkout:v1"),
        "the previous version's pods ran throughout and still do"
    );
    assert_eq!(run.replicas("checkout"), 4);
    assert!(
        !run.world
            .lock()
            .unwrap()
            .objects
            .contains_key(&deployments("checkout-canary")),
        "the canary is removed"
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_watch_switches_the_selector_back_to_the_running_previous_version_fake_api() {
    let run = Run::new(SELECTOR, BLUE_GREEN, true);
    let end = run.release().await;
    switched_back_at_once(&run, &end, Duration::ZERO);
    let svc = run.world.lock().unwrap().objects[&services("checkout")].clone();
    assert_eq!(at(&svc, "spec/selector")["rampart.dev/track"], "stable");
    let watching = run.scene.event("watching").unwrap();
    assert!(watching.contains("kept running"), "{watching}");
}

#[tokio::test(start_paused = true)]
async fn a_failed_watch_switches_the_route_back_to_the_running_previous_version_fake_api() {
    let run = Run::new(ROUTE, CANARY, true);
    let end = run.release().await;
    // The Gateway takes a second to report on the route: the switch counts from then.
    switched_back_at_once(&run, &end, Duration::from_secs(2));
    let route = run.world.lock().unwrap().objects[&routes("checkout")].clone();
    assert_eq!(
        at(&route, "spec/rules/0/backendRefs"),
        &json!([
            {"name": "checkout", "port": 80, "weight": 10000},
            {"name": "checkout-canary", "port": 80, "weight": 0}
        ])
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_watch_under_replica_ratio_says_the_switch_back_is_a_scale_up_fake_api() {
    // Under replica_ratio the Service selects both tracks and a share of traffic is a
    // share of the pods: at 100 % the previous version has none, and none can be kept
    // without taking traffic. rampart must not claim an instant switch back; the
    // switch back scales the previous version up first, its capacity before the
    // canary's goes.
    let run = Run::new(RATIO, CANARY, true);
    let end = run.release().await;
    assert_eq!(end.phase, Phase::RolledBack, "{end:?}\n{}", run.timeline());
    let watching = run.scene.event("watching").unwrap();
    assert!(
        watching.contains("not running") && watching.contains("`replica_ratio`"),
        "{watching}"
    );
    assert!(!watching.contains("instant"), "{watching}");
    let began = run.mark(&run.scene.watch_began, "watch");
    let failed = run.mark(&run.scene.failed, "failure");
    assert!(
        run.writes_from(&began)[..failed.writes - began.writes].is_empty(),
        "nothing written during the watch"
    );
    let after = run.writes_from(&failed);
    let stable = format!("PATCH {}/scale", deployments("checkout"));
    let canary = format!("PATCH {}", deployments("checkout-canary"));
    assert_eq!(after[0].0, stable, "the previous version scales up first");
    let canary_down = after.iter().find(|(w, _)| *w == canary).unwrap();
    assert!(
        canary_down.1 - after[0].1 >= Duration::from_secs(3),
        "the canary left only once the previous version's pods were ready (the fake's rollouts take 3 s): {after:?}"
    );
    assert_eq!(
        stable_image(&run).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    assert_eq!(run.replicas("checkout"), 4);
}

#[tokio::test(start_paused = true)]
async fn a_passed_watch_promotes_the_stable_only_afterwards_fake_api() {
    for (traffic, strategy) in MODES {
        let run = Run::new(traffic, strategy, false);
        let end = run.release().await;
        assert_eq!(end.phase, Phase::Succeeded, "{traffic}: {end:?}");
        let began = run.mark(&run.scene.watch_began, "watch");
        let passed = run.mark(&run.scene.watch_passed, "pass");
        assert!(
            passed.at - began.at >= Duration::from_secs(60),
            "{traffic}: the watch lasted {:?}",
            passed.at - began.at
        );
        let during = &run.writes_from(&began)[..passed.writes - began.writes];
        assert!(
            during.iter().all(|(w, _)| !touches_stable(w)),
            "{traffic}: the stable Deployment was written during the watch: {during:?}"
        );
        let after = run.writes_from(&passed);
        assert_eq!(
            after[0].0,
            format!("PATCH {}", deployments("checkout")),
            "{traffic}: the promotion is the first thing after the watch"
        );
        assert_eq!(
            stable_image(&run).as_deref(),
            Some("registry.example.com/checkout:v2"),
            "{traffic}"
        );
        assert_eq!(run.replicas("checkout"), 4, "{traffic}");
    }
}

/// The replica counts of both Deployments.
fn pods(run: &Run) -> (i64, i64) {
    let canary = run
        .world
        .lock()
        .unwrap()
        .objects
        .get(&deployments("checkout-canary"))
        .map_or(0, |c| c["spec"]["replicas"].as_i64().unwrap());
    (run.replicas("checkout"), canary)
}

#[tokio::test(start_paused = true)]
async fn a_controller_restarted_during_the_watch_resumes_it_without_replacing_pods_fake_api() {
    // A second controller takes the watch over: it re-applies what the state records
    // (idempotent), and no pod is replaced or resized by that, neither the previous
    // version's nor the ones serving all traffic. Then the watch goes on: it passes and
    // promotes, or fails and switches back.
    for (traffic, strategy) in MODES {
        for breaks in [false, true] {
            let run = Run::new(traffic, strategy, false);
            let crash = Mutex::new(None);
            let end = run
                .release_with_restart(|| {
                    *crash.lock().unwrap() = Some((pods(&run), run.scene.now()));
                    // The new version breaks (or not) under the resumed controller.
                    run.scene.breaks.store(breaks, Ordering::SeqCst);
                })
                .await;
            let ((stable_n, canary_n), crashed) = crash.lock().unwrap().take().unwrap();
            let case = format!("{traffic}, breaks: {breaks}");
            let began = run.mark(&run.scene.watch_began, "watch");
            let until = if breaks {
                run.mark(&run.scene.failed, "failure")
            } else {
                run.mark(&run.scene.watch_passed, "pass")
            };
            assert!(
                until.at - began.at <= Duration::from_secs(90),
                "{case}: the watch went on for {:?}\n{}",
                until.at - began.at,
                run.timeline()
            );
            let resumed = &run.writes_from(&crashed)[..until.writes - crashed.writes];
            assert!(!resumed.is_empty(), "{case}: nothing re-applied");
            {
                // From the restart to the end of the watch: the same pods, the same
                // counts.
                let w = run.world.lock().unwrap();
                assert_eq!(
                    until.running, crashed.running,
                    "{case}: the resume replaced pods ({resumed:?})"
                );
                for (path, n) in &w.replicas[crashed.sizes..until.sizes] {
                    let want = if *path == deployments("checkout") {
                        stable_n
                    } else {
                        canary_n
                    };
                    assert_eq!(*n, want, "{case}: the resume resized {path}: {resumed:?}");
                }
            }
            assert!(
                canary_n > 0,
                "{case}: the new version had pods at the crash"
            );
            if breaks {
                assert_eq!(end.phase, Phase::RolledBack, "{case}: {end:?}");
                let after = run.writes_from(&until);
                let first = &after[0].0;
                match traffic {
                    RATIO => assert_eq!(
                        first,
                        &format!("PATCH {}/scale", deployments("checkout")),
                        "{case}"
                    ),
                    _ => assert!(is_traffic(first), "{case}: {after:?}"),
                }
                assert_eq!(
                    stable_image(&run).as_deref(),
                    Some("registry.example.com/checkout:v1"),
                    "{case}"
                );
            } else {
                assert_eq!(end.phase, Phase::Succeeded, "{case}: {end:?}");
                assert_eq!(
                    stable_image(&run).as_deref(),
                    Some("registry.example.com/checkout:v2"),
                    "{case}"
                );
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_restart_during_the_watch_keeps_the_canarys_pods_when_an_hpa_shrank_the_idle_stable_fake_api()
 {
    // During the watch the stable gets no traffic, and an HPA scales it down towards its
    // minimum. A controller restarted then re-applied the canary, which serves all
    // traffic, with the stable's count of the moment.
    for (traffic, strategy) in [(SELECTOR, BLUE_GREEN), (ROUTE, CANARY)] {
        let run = Run::new(traffic, strategy, false);
        run.world
            .lock()
            .unwrap()
            .objects
            .insert(format!("{}/checkout", hpas()), hpa("checkout", 1, 10));
        let end = run
            .release_with_restart(|| {
                run.world.lock().unwrap().scale_as(
                    &deployments("checkout"),
                    1,
                    "horizontal-pod-autoscaler/scale",
                );
            })
            .await;
        assert_eq!(end.phase, Phase::Succeeded, "{traffic}: {end:?}");
        let passed = run.mark(&run.scene.watch_passed, "pass");
        let canary: Vec<i64> = run.world.lock().unwrap().replicas[..passed.sizes]
            .iter()
            .filter(|(p, _)| *p == deployments("checkout-canary"))
            .map(|(_, n)| *n)
            .collect();
        assert!(
            canary.iter().all(|n| *n == 4),
            "{traffic}: the canary serving all traffic was resized: {canary:?}"
        );
    }
}
