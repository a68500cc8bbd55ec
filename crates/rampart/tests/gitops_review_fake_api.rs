#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
//! An adversarial review of GitOps-triggered releases under `rampart serve
//! --kubernetes`, against the FAKE cluster (see `gitops_fake_api.rs`, whose harness
//! this file repeats). Each test here failed on the code it reviewed.

#![cfg(feature = "kubernetes")]

#[path = "../../kubernetes/tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart::dataplane::Cluster;
use rampart::serve::App;
use rampart::serve::api::actions::{Act, act};
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

fn template_image(world: &Arc<Mutex<World>>) -> String {
    let w = world.lock().unwrap();
    at(&w.objects[STABLE], "spec/template/spec/containers/0/image").to_string()
}

/// Review: Git reverted to the running revision while v2's release waited (it was
/// superseded, rolled back by the watch, never by analysis), then went forward to v2
/// again ("revert the revert"). v2 was taken as refused: the superseded release's
/// outcome (`rolled_back`) counted as a verdict on the revision, and nothing was ever
/// released until Git applied yet another template.
#[test]
fn gitops_a_revision_superseded_by_a_revert_is_released_when_git_returns_to_it_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let v1 = annotation(&world, "rampart.dev/released-revision").unwrap();
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    // Git reverts to what runs: the release is superseded, and nothing starts.
    git_applies(&world, "v1");
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Superseded(first.clone()))),
        "{did:?}"
    );
    assert_eq!(annotation(&world, "rampart.dev/revision"), Some(v1.clone()));
    server.wait_phase(&first, "rolled_back");
    assert_eq!(server.tick(), vec![("shop/checkout".into(), Did::Nothing)]);
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released")
    );
    // Git goes forward to v2 again: nothing judged v2, so it is released.
    git_applies(&world, "v2");
    let did = server.tick();
    assert!(
        did.iter().any(|(_, d)| matches!(d, Did::Started(_))),
        "v2 was not released again: {did:?}; phase {:?}: {:?}",
        annotation(&world, "rampart.dev/phase"),
        annotation(&world, "rampart.dev/message")
    );
    assert_ne!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("refused")
    );
}

/// Review: the Deployment opted out (Git dropped `rampart.dev/policy`) while
/// `rampart serve` was down with a release of v2 waiting for approval. On restart the
/// queue resumed the release before any tick, and its "ensure the stable" step, no
/// longer in GitOps mode, applied the image of the GitOps version (`v1+<revision>`,
/// not a tag that exists) to the user's Deployment: Git's template replaced by an
/// image that cannot be pulled, owned by rampart's field manager.
#[test]
fn gitops_a_release_resumed_after_an_opt_out_never_writes_its_version_as_an_image_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    drop(server); // rampart serve is down
    // Git drops the opt-in; the template stays v2.
    let body = as_git_has_it(manifest("v2", false));
    world
        .lock()
        .unwrap()
        .apply_as(STABLE, &body, "argocd-controller");
    let server = Server::start(&world, dir.path());
    // The queue takes the release up again on its own: wait for the resume to act
    // (an event after `resumed`), with no tick in between.
    wait_until("the release resumed and acted", || {
        let events = server.events(&id);
        events
            .iter()
            .position(|(k, _)| k == "resumed")
            .is_some_and(|i| i + 1 < events.len())
            || template_image(&world).contains('+')
    });
    let image = template_image(&world);
    assert_eq!(
        image,
        "\"registry.example.com/checkout:v2\"",
        "rampart rewrote Git's image: {:?}",
        server.events(&id)
    );
    assert!(
        !world
            .lock()
            .unwrap()
            .owns(STABLE, "rampart", "spec.template.spec.containers"),
        "rampart's field manager owns the stable's image"
    );
}

/// Waits for the release to settle where a human or the watch decides next (waiting
/// for approval) or to be over, at most `DEADLINE`, and says where.
fn wait_settled(server: &Server, id: &str) -> String {
    let mut now = String::new();
    wait_until("the release settled", || {
        now = server.phase(id);
        [
            "awaiting_approval",
            "promoted",
            "rolled_back",
            "halted",
            "escalated",
            "aborted",
        ]
        .contains(&now.as_str())
    });
    now
}

/// Review: a release names one revision (its version is `TAG+REVISION`), but its
/// canary was derived from whatever template the stable had when the canary was
/// made. Git applied v4 while the release of v3 waited in the queue (behind the
/// rollback of the v2 release it superseded): the canary of "v3" ran v4, the
/// approval asked for was for v3, and once approved v4 rolled out to every user,
/// recorded as version v3.
#[test]
fn gitops_a_canary_runs_only_the_revision_its_release_names_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let first = started(&server.tick());
    server.wait_phase(&first, "awaiting_approval");
    git_applies(&world, "v3");
    // Git's next commit lands right as the superseded release removes its canary:
    // the release of v3 is still queued behind it.
    world.lock().unwrap().edit_after = Some((
        format!("DELETE {CANARY}"),
        STABLE.into(),
        "/spec/template/spec/containers/0/image".into(),
        json!("registry.example.com/checkout:v4"),
    ));
    let did = server.tick();
    assert!(
        did.contains(&("shop/checkout".into(), Did::Superseded(first.clone()))),
        "{did:?}"
    );
    let second = started(&did);
    let version = server
        .releases()
        .into_iter()
        .find(|(id, _)| *id == second)
        .unwrap()
        .1;
    assert!(version.starts_with("v3+"), "{version}");
    let settled = wait_settled(&server, &second);
    assert!(
        world.lock().unwrap().edit_after.is_none(),
        "Git's v4 never landed: the test proves nothing"
    );
    if settled == "awaiting_approval" {
        let w = world.lock().unwrap();
        let canary = &w.objects[CANARY];
        let derived = canary["metadata"]["annotations"]["rampart.dev/canary-revision"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let image = at(canary, "spec/template/spec/containers/0/image").to_string();
        drop(w);
        assert!(
            version.ends_with(&derived[..10.min(derived.len())]) && !image.contains("v4"),
            "release {second} of {version} analyses a canary of revision {derived} ({image})"
        );
        // What it leads to, once someone approves "v3".
        server.approve(&second);
        let outcome = server.wait_over(&second);
        if outcome == "promoted" {
            let revision = annotation(&world, "rampart.dev/released-revision").unwrap();
            let released = annotation(&world, "rampart.dev/released-version").unwrap();
            assert!(
                released.ends_with(&revision[..10]),
                "the pods run revision {revision} ({:?}), recorded as version {released}",
                running(&world, STABLE)
            );
        }
    }
}

/// Review: a promotion whose rollout failed halts (phase `failed`: the stable is
/// paused with its pods a mix of two revisions, and the canary keeps serving at
/// 100 %). Git then reverted to the released revision, and the next tick wrote phase
/// `released` ("runs revision v1") from the annotations alone: Argo CD turned Healthy
/// while users were still on the halted release's canary and nobody had acted.
#[test]
fn gitops_a_revert_after_a_halted_promotion_is_not_reported_released_fake_api() {
    let (world, dir, _prom) = setup(true);
    let server = Server::start(&world, dir.path());
    adopted_then_v2(&server, &world);
    let id = started(&server.tick());
    server.wait_phase(&id, "awaiting_approval");
    // The full rollout's new pods never get ready (the canary's did).
    world.lock().unwrap().broken.insert(STABLE.into());
    server.approve(&id);
    assert_eq!(server.wait_over(&id), "halted", "{:?}", server.events(&id));
    server.tick();
    assert_eq!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("failed")
    );
    // The team reverts in Git; nobody has looked at the halted release.
    git_applies(&world, "v1");
    server.tick();
    let canary_left = world.lock().unwrap().objects.contains_key(CANARY);
    assert!(
        canary_left,
        "the halted release's canary is gone: the test proves nothing"
    );
    assert_ne!(
        annotation(&world, "rampart.dev/phase").as_deref(),
        Some("released"),
        "{:?}; the canary {:?} still serves, the stable's pods {:?}",
        annotation(&world, "rampart.dev/message"),
        canary_image(&world),
        running(&world, STABLE)
    );
}
