//! An adversarial review of GitOps-triggered releases (`rampart serve --kubernetes`),
//! against the FAKE cluster of `crates/kubernetes/tests/support/cluster.rs` (no API
//! server runs) and a stub Prometheus that reads 0 errors. Each test failed on the
//! code it reviewed; its doc comment says the scenario and what should happen.
//! The helpers are those of `gitops_fake_api.rs`.

#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../kubernetes/tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart::dataplane::Cluster;
use rampart::serve::App;
use rampart::serve::api::actions::{Act, act};
use rampart::serve::api::releases::{CreateRelease, submit_as};
use rampart::serve::auth::{Caller, Role};
use rampart::serve::gitops::{Did, Watch};
use rampart::serve::queue::Queue;
use rampart::serve::views::Loaded;
use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_core::ports::Clock;
use rampart_kubernetes::gitops::Watched;
use serde_json::{Value, json};
use support::cluster::{self, World};
use support::{NS, at, deployments};

const DEADLINE: Duration = Duration::from_secs(60);
const STABLE: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout";
const CANARY: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout-canary";

/// A stub Prometheus: every query reads 0.
async fn prometheus() -> String {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [0, "0"]}]}}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

const RATIO: &str = "{mode: replica_ratio, replicas: 2}";
const STEPS: &str = "{canary: {steps: [{weight: 50, bake: 1s}, {approval: release-manager}]}}";

fn policy(prometheus: &str, traffic: &str, strategy: &str) -> String {
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
  interval: 1s
  prometheus: {prometheus}
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(errors{{track="{{variant}}"}}[1m]))'
      judge: {{max: 0.05}}
rollback:
  drain: 0s
"#
    )
}

/// The user's Deployment as Git has it, opted in, running `version`.
fn manifest(version: &str, opted_in: bool) -> Value {
    let mut d = support::stable(version, 2);
    let annotations = d["metadata"]["annotations"].as_object_mut().unwrap();
    annotations.remove("deployment.kubernetes.io/revision");
    if opted_in {
        annotations.insert("rampart.dev/policy".into(), json!("checkout-policy"));
    }
    d
}

fn config_map(policy: &str) -> (String, Value) {
    (
        format!("/api/v1/namespaces/{NS}/configmaps/checkout-policy"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "checkout-policy", "namespace": NS},
               "data": {"rampart.yaml": policy}}),
    )
}

/// A manifest as it is in Git: no status, nothing the server sets.
fn as_git_has_it(mut d: Value) -> Value {
    d.as_object_mut().unwrap().remove("status");
    let meta = d["metadata"].as_object_mut().unwrap();
    for k in ["generation", "resourceVersion", "uid"] {
        meta.remove(k);
    }
    d
}

/// Git applies `version` (Argo CD's field manager): a new pod template.
fn git_applies(world: &Arc<Mutex<World>>, version: &str) {
    let body = as_git_has_it(manifest(version, true));
    world
        .lock()
        .unwrap()
        .apply_as(STABLE, &body, "argocd-controller");
}

/// The time a server starts at: a fixed date, plus the time since the test binary
/// started, so that a restarted server's clock goes on from where the last one was
/// (as a host's wall clock does), never back to the date it started at.
fn wall_clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    #[allow(clippy::disallowed_methods)] // the test's own wall clock, read once
    let start = *START.get_or_init(std::time::Instant::now);
    1_800_000_000_000 + u64::try_from(start.elapsed().as_millis()).unwrap()
}

/// One `rampart serve --kubernetes`: a runtime of its own, the queue running.
struct Server {
    rt: tokio::runtime::Runtime,
    app: App,
    watch: Watch,
}

impl Server {
    fn start(world: &Arc<Mutex<World>>, dir: &std::path::Path) -> Server {
        Server::watching(world, dir, &[NS])
    }

    /// A server whose `--kubernetes` watches `namespaces`.
    fn watching(world: &Arc<Mutex<World>>, dir: &std::path::Path, namespaces: &[&str]) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (app, watch) = rt.block_on(async {
            let store = Arc::new(StateStore::open(&dir.join("rampart.db")).await.unwrap());
            let clock: Arc<dyn Clock> = Arc::new(TokioClock::starting_at(wall_clock()));
            let client = cluster::connect(world);
            let queue = Queue::with_cluster(
                store.clone(),
                dir.to_path_buf(),
                clock.clone(),
                Some(Cluster(client.clone())),
            );
            let app = App {
                store: store.clone(),
                clock,
                submitted: queue.waker(),
                feed: tokio::sync::broadcast::channel(16).0,
                workdir: dir.to_path_buf(),
            };
            tokio::spawn(queue.run());
            let namespaces = namespaces.iter().map(|n| n.to_string()).collect();
            let watch = Watch::new(app.clone(), Watched::new(client, namespaces));
            (app, watch)
        });
        Server { rt, app, watch }
    }

    fn tick(&self) -> Vec<(String, Did)> {
        self.rt.block_on(self.watch.tick()).unwrap()
    }

    /// The phase (or outcome, once over) of a release.
    fn phase(&self, id: &str) -> String {
        self.rt.block_on(async {
            match Loaded::read(&self.app.store, id).await {
                Some(Ok(l)) => {
                    let v = l.view(None);
                    v.outcome.unwrap_or(v.phase)
                }
                _ => "queued".into(),
            }
        })
    }

    /// Waits for the release's phase (or outcome) to be `want`, at most `DEADLINE`.
    fn wait_phase(&self, id: &str, want: &str) {
        let nap = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            let now = self.phase(id);
            if now == want {
                return;
            }
            assert!(
                waited < DEADLINE && now != "halted",
                "release {id} still {now}, not {want}: {:?}",
                self.events(id)
            );
            std::thread::sleep(nap);
            waited += nap;
        }
    }

    /// Waits for the release to end or halt, at most `DEADLINE`, and says how.
    fn wait_over(&self, id: &str) -> String {
        let nap = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            let now = self.phase(id);
            if ["promoted", "rolled_back", "halted", "escalated", "aborted"].contains(&now.as_str())
            {
                return now;
            }
            assert!(
                waited < DEADLINE,
                "release {id} still {now}: {:?}",
                self.events(id)
            );
            std::thread::sleep(nap);
            waited += nap;
        }
    }

    fn approve(&self, id: &str) {
        let caller = Caller {
            name: "alice".into(),
            role: Role::Approver,
        };
        let _ = self
            .rt
            .block_on(act(
                self.app.clone(),
                caller,
                id.into(),
                Act::Approve,
                axum::body::Bytes::new(),
            ))
            .unwrap();
    }

    fn events(&self, id: &str) -> Vec<(String, String)> {
        self.rt.block_on(async {
            let (_, log) = self.app.store.load(id).await.unwrap();
            log.iter()
                .flat_map(|e| e.events.clone())
                .map(|e| (e.kind, e.message))
                .collect()
        })
    }

    fn releases(&self) -> Vec<(String, String)> {
        self.rt.block_on(async {
            let mut out: Vec<(String, String)> = self
                .app
                .store
                .list_releases(Some("checkout"), 50)
                .await
                .unwrap()
                .into_iter()
                .map(|r| (r.id, r.version))
                .collect();
            for s in self.app.store.open_submissions().await.unwrap() {
                if !out.iter().any(|(id, _)| *id == s.id) {
                    out.push((s.id, s.version));
                }
            }
            out
        })
    }
}

fn started(did: &[(String, Did)]) -> String {
    did.iter()
        .find_map(|(_, d)| match d {
            Did::Started(id) => Some(id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no release started: {did:?}"))
}

fn annotation(world: &Arc<Mutex<World>>, key: &str) -> Option<String> {
    let w = world.lock().unwrap();
    w.objects[STABLE]["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

fn running(world: &Arc<Mutex<World>>, path: &str) -> Option<String> {
    world.lock().unwrap().running_image(path)
}

fn canary_image(world: &Arc<Mutex<World>>) -> Option<String> {
    let w = world.lock().unwrap();
    w.objects
        .get(CANARY)
        .map(|c| at(c, "spec/template/spec/containers/0/image").to_string())
}

/// A cluster with the opted-in Deployment on v1 and its policy, a stub Prometheus.
type Setup = (
    Arc<Mutex<World>>,
    tempfile::TempDir,
    tokio::runtime::Runtime,
);

fn setup(opted_in: bool) -> Setup {
    setup_with(opted_in, RATIO, STEPS, vec![])
}

fn setup_with(opted_in: bool, traffic: &str, strategy: &str, more: Vec<(String, Value)>) -> Setup {
    let prom_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = prom_rt.block_on(prometheus());
    let mut objects = vec![
        (deployments("checkout"), manifest("v1", opted_in)),
        config_map(&policy(&url, traffic, strategy)),
    ];
    objects.extend(more);
    let (_, world) = prom_rt.block_on(async { cluster::start(objects) });
    world.lock().unwrap().rollout = Duration::ZERO;
    (world, tempfile::tempdir().unwrap(), prom_rt)
}

/// Adopts the Deployment (paused, v1 released) and applies v2 from Git.
fn adopted_then_v2(server: &Server, world: &Arc<Mutex<World>>) {
    let did = server.tick();
    assert_eq!(did, vec![("shop/checkout".into(), Did::Adopted)]);
    assert_eq!(
        world.lock().unwrap().objects[STABLE]["spec"]["paused"],
        json!(true)
    );
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(
        annotation(world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    git_applies(world, "v2");
    // Paused: Git's template is stored, and no pod runs it.
    assert_eq!(
        running(world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
}

/// Waits until `done` holds, at most `DEADLINE`.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let nap = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while !done() {
        assert!(waited < DEADLINE, "never: {what}");
        std::thread::sleep(nap);
        waited += nap;
    }
}

fn paused(world: &Arc<Mutex<World>>) -> Value {
    world.lock().unwrap().objects[STABLE]["spec"]["paused"].clone()
}

// === the findings ===

/// An HPA scales a released, paused Deployment up (or a node drain evicts a pod):
/// for the seconds the new pods take to become ready, the Deployment has fewer
/// available replicas than it wants. Nothing was released and nothing halted: its
/// pods all run the released revision. The docs list "an HPA scales it" as a
/// failure mode rampart does nothing about, and say the phase is `released` while
/// the pods all run the released revision.
///
/// Expected: the phase stays `released` (Argo CD stays Healthy). Observed: the tick
/// writes phase `failed`, "a release that halted left them (its canary may still
/// serve)", which the documented Argo CD health check turns Degraded (and its
/// notifications fire) at every scale-up.
#[test]
fn gitops_review_an_hpa_scale_up_of_a_released_deployment_is_not_reported_failed_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    {
        let mut w = world.lock().unwrap();
        // New pods take a while to become ready (an hour: longer than the test).
        w.rollout = Duration::from_secs(3600);
        w.scale_as(STABLE, 4, "horizontal-pod-autoscaler");
    }
    // The pods all run the released template still: the scale-up added pods of it.
    assert_eq!(
        running(&world, STABLE).as_deref(),
        Some("registry.example.com/checkout:v1")
    );
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released"),
        "an HPA scale-up reported as: {:?}",
        annotation(&world, "rampart.dev/message")
    );
}

/// A platform engineer releases an opted-in Deployment through the API (the docs:
/// "release opted-in Deployments through the server (the watch, or its API)"),
/// naming version v5, with nothing pending from Git. rampart never writes the image
/// of an opted-in Deployment, so nothing can roll v5 out.
///
/// Expected: the submission is refused (or the release fails) rather than a success
/// that did not happen. Observed: the canary runs the stable's own template (v1)
/// labelled v5, the release ends `promoted` ("Deployment `checkout` runs
/// registry.example.com/checkout:v5"), and the Deployment is annotated
/// `released-version: v5` and phase `released` while every pod still runs v1.
#[test]
fn gitops_review_an_api_release_of_an_opted_in_deployment_never_claims_a_version_it_did_not_roll_out_fake_api()
 {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    let text = world.lock().unwrap().objects
        [&format!("/api/v1/namespaces/{NS}/configmaps/checkout-policy")]["data"]["rampart.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let caller = Caller {
        name: "bob".into(),
        role: Role::Deployer,
    };
    let body = CreateRelease {
        policy: text,
        version: "v5".into(),
        stable: None,
        hotfix: None,
        workdir: None,
    };
    let submitted = server
        .rt
        .block_on(submit_as(&server.app, &caller, body, false));
    let Ok(s) = submitted else {
        return; // refused at the door: what the docs' promise needs
    };
    let outcome = match wait_settled(&server, &s.id).as_str() {
        "awaiting_approval" => {
            server.approve(&s.id);
            server.wait_over(&s.id)
        }
        other => other.to_string(),
    };
    server.tick();
    let pods = running(&world, STABLE);
    let claimed = annotation(&world, "rampart.dev/released-version");
    assert!(
        !(outcome == "promoted" && pods.as_deref() != Some("registry.example.com/checkout:v5")),
        "release {} of v5 ended {outcome}, the Deployment claims released-version {claimed:?} \
         (phase {:?}: {:?}), but its pods run {pods:?}; events: {:?}",
        s.id,
        annotation(&world, "rampart.dev/phase"),
        annotation(&world, "rampart.dev/message"),
        server.events(&s.id)
    );
}

/// Waits for the release to settle where a human or the watch decides next (waiting
/// for approval) or to be over, at most `DEADLINE`, and says where.
fn wait_settled(server: &Server, id: &str) -> String {
    let settled = [
        "awaiting_approval",
        "promoted",
        "rolled_back",
        "halted",
        "escalated",
        "aborted",
        "blocked",
    ];
    let nap = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    loop {
        let now = server.phase(id);
        if settled.contains(&now.as_str()) {
            return now;
        }
        assert!(
            waited < DEADLINE,
            "release {id} never settled, still {now}: {:?}",
            server.events(id)
        );
        std::thread::sleep(nap);
        waited += nap;
    }
}

/// No template lock (Kubernetes before 1.30, or `gitops.lockTemplate: false`): Git
/// applies v3 while the promotion of v2 rolls out. The promotion halts, paused again
/// with the stable's pods a mix of two revisions, and its v2 canary keeps serving:
/// a person decides (`rampart stop --canary`), as after any halt.
///
/// Observed (review): the loop queued a release of v3, which the queue refused
/// before it started (the halted release's canary has users); that left no release
/// record, so `finished` found nothing for v3 and every tick queued another release
/// of the same revision, forever (one more submission every `--kubernetes-interval`).
/// Expected: v3 is queued once, its refusal is reported on the Deployment (waiting,
/// saying what to do), and it is tried again only after `BLOCKED_RETRY`.
#[test]
fn gitops_review_a_revision_refused_at_its_start_is_not_queued_at_every_tick_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    world.lock().unwrap().apply_on_unpause = Some((
        STABLE.into(),
        as_git_has_it(manifest("v3", true)),
        "argocd-controller".into(),
    ));
    server.approve(&id);
    let outcome = server.wait_over(&id);
    assert_ne!(outcome, "promoted");
    assert_eq!(paused(&world), json!(true));
    assert!(
        canary_image(&world).is_some(),
        "the halted release's canary serves"
    );
    // The watch's next tick: v3 is queued.
    let first = started(&server.tick());
    // The queue takes it: its submission ends, refused before it starts.
    wait_until("the queue took the release of v3", || {
        server.rt.block_on(async {
            !server
                .app
                .store
                .open_submissions()
                .await
                .unwrap()
                .iter()
                .any(|s| s.id == first)
        })
    });
    let report = server
        .rt
        .block_on(server.app.store.submission(&first))
        .unwrap()
        .and_then(|s| s.report);
    for _ in 0..3 {
        let again = server.tick();
        assert!(
            !again.iter().any(|(_, d)| matches!(d, Did::Started(_))),
            "the same revision (v3) queued again: {first} and then {again:?}; {first} ended with report {report:?}"
        );
    }
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("waiting")
    );
    let message = annotation(&world, "rampart.dev/message").unwrap_or_default();
    assert!(
        message.contains(&first) && message.contains("--canary"),
        "the Deployment says why v3 waits and what to do: {message}"
    );
}

/// A person withdraws the queued GitOps release of v2 (`rampart abort`, through the
/// API's abort: "a queued one is withdrawn"), say because v2 must not ship today. It
/// is queued behind another release of the service, so it never started.
///
/// Expected: the person's decision stands until Git applies another template: the
/// loop does not queue v2 again (it reports it refused or failed, as it does a
/// release a person rolled back). Observed: a withdrawn submission leaves no release
/// record, so `finished` finds nothing for v2 and the very next tick queues a new
/// release of v2 as `gitops:shop/checkout`; no one can stop a queued Git change
/// short of a freeze or a commit.
#[test]
fn gitops_review_a_release_a_person_withdrew_is_not_queued_again_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Adopted)]);
    // Another release of the service holds the queue (through the API, waiting for
    // its approval).
    let text = world.lock().unwrap().objects
        [&format!("/api/v1/namespaces/{NS}/configmaps/checkout-policy")]["data"]["rampart.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    let bob = Caller {
        name: "bob".into(),
        role: Role::Deployer,
    };
    // A release of the revision Git holds, through the API (its version names the
    // revision, as the watch's do; any other is refused for an opted-in Deployment).
    let revision = annotation(&world, "rampart.dev/released-revision").unwrap();
    let body = CreateRelease {
        policy: text,
        version: format!("hotfix+{}", &revision[..10]),
        stable: None,
        hotfix: None,
        workdir: None,
    };
    let blocker = server
        .rt
        .block_on(submit_as(&server.app, &bob, body, false))
        .unwrap();
    assert_eq!(
        wait_settled(&server, &blocker.id),
        "awaiting_approval",
        "{:?}",
        server.events(&blocker.id)
    );
    git_applies(&world, "v2");
    let queued = started(&server.tick());
    assert_eq!(server.phase(&queued), "queued");
    // Bob withdraws it.
    let reason = axum::body::Bytes::from(r#"{"reason": "v2 must not ship today"}"#);
    let _ = server
        .rt
        .block_on(act(
            server.app.clone(),
            bob,
            queued.clone(),
            Act::Abort,
            reason,
        ))
        .unwrap();
    let did = server.tick();
    assert!(
        !did.iter().any(|(_, d)| matches!(d, Did::Started(_))),
        "the withdrawn release of v2 was queued again: {did:?}; releases {:?}",
        server.releases()
    );
}

/// v2's release rolled back (phase `refused`); the team reverts in Git (v1, what
/// runs: phase `released`), then applies v2 again ("revert the revert", say once the
/// dependency that broke it is fixed). `rampart.dev/refused-revision` still names
/// v2's revision, so the loop returns at once, writing nothing.
///
/// Expected: the Deployment's phase speaks of the revision Git now has: either a
/// release of v2 starts, or the phase is `refused` for v2's revision (the documented
/// Argo CD health check then says Degraded). Observed: the annotations still say
/// phase `released`, "runs revision <v1>", `rampart.dev/revision` = v1's: Argo CD
/// shows the application Synced and Healthy with v2 in Git, while nothing runs v2
/// and nothing will.
#[test]
fn gitops_review_git_returning_to_a_refused_revision_is_not_reported_released_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let v1 = annotation(&world, "rampart.dev/released-revision").unwrap();
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    let caller = Caller {
        name: "bob".into(),
        role: Role::Deployer,
    };
    let body = axum::body::Bytes::from(r#"{"reason": "support tickets"}"#);
    let _ = server
        .rt
        .block_on(act(
            server.app.clone(),
            caller,
            id.clone(),
            Act::Rollback,
            body,
        ))
        .unwrap();
    server.wait_phase(&id, "rolled_back");
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("refused")
    );
    let v2 = annotation(&world, "rampart.dev/refused-revision").unwrap();
    // The revert: v1 again, what runs.
    git_applies(&world, "v1");
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    // And forward to v2 again.
    git_applies(&world, "v2");
    let did = server.tick();
    let started_again = did.iter().any(|(_, d)| matches!(d, Did::Started(_)));
    let phase = annotation(&world, "rampart.dev/phase");
    let revision = annotation(&world, "rampart.dev/revision");
    assert!(
        started_again || (phase.as_deref() == Some("refused") && revision.as_deref() == Some(&v2)),
        "Git has v2 ({v2}) again; the Deployment says phase {phase:?} about revision {revision:?} \
         (v1 is {v1}): {:?}; did {did:?}",
        annotation(&world, "rampart.dev/message")
    );
}
