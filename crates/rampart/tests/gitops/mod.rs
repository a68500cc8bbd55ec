//! What the GitOps tests share (`gitops_fake_api.rs`, `gitops_review_fake_api.rs`):
//! a FAKE cluster (the adapter's in-memory object store behind a mock transport, see
//! `crates/kubernetes/tests/support/cluster.rs`; no Kubernetes API server runs), a
//! stub Prometheus that reads 0 errors, the user's opted-in Deployment and its policy,
//! and a "server": `rampart serve --kubernetes` on a runtime of its own over a SQLite
//! store in a temporary directory, so a restart drops every task it had.

#![allow(dead_code)] // each test binary uses its own part

#[path = "../../../kubernetes/tests/support/mod.rs"]
pub mod support;

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

pub const DEADLINE: Duration = Duration::from_secs(60);
/// The phases that end a release.
pub const ENDS: [&str; 6] = [
    "promoted",
    "rolled_back",
    "halted",
    "escalated",
    "aborted",
    "blocked",
];
pub const STABLE: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout";
pub const CANARY: &str = "/apis/apps/v1/namespaces/shop/deployments/checkout-canary";

/// A stub Prometheus: every query reads 0.
pub async fn prometheus() -> String {
    let app = axum::Router::new().fallback(|| async {
        axum::Json(json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [0, "0"]}]}}))
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

pub const RATIO: &str = "{mode: replica_ratio, replicas: 2}";
pub const STEPS: &str = "{canary: {steps: [{weight: 50, bake: 1s}, {approval: release-manager}]}}";

pub fn policy(prometheus: &str, traffic: &str, strategy: &str) -> String {
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
pub fn manifest(version: &str, opted_in: bool) -> Value {
    let mut d = support::stable(version, 2);
    let annotations = d["metadata"]["annotations"].as_object_mut().unwrap();
    annotations.remove("deployment.kubernetes.io/revision");
    if opted_in {
        annotations.insert("rampart.dev/policy".into(), json!("checkout-policy"));
    }
    d
}

pub fn config_map(policy: &str) -> (String, Value) {
    (
        format!("/api/v1/namespaces/{NS}/configmaps/checkout-policy"),
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "checkout-policy", "namespace": NS},
               "data": {"rampart.yaml": policy}}),
    )
}

/// A manifest as it is in Git: no status, nothing the server sets.
pub fn as_git_has_it(mut d: Value) -> Value {
    d.as_object_mut().unwrap().remove("status");
    let meta = d["metadata"].as_object_mut().unwrap();
    for k in ["generation", "resourceVersion", "uid"] {
        meta.remove(k);
    }
    d
}

/// Git applies `version` (Argo CD's field manager): a new pod template.
pub fn git_applies(world: &Arc<Mutex<World>>, version: &str) {
    let body = as_git_has_it(manifest(version, true));
    world
        .lock()
        .unwrap()
        .apply_as(STABLE, &body, "argocd-controller");
}

/// The time a server starts at: a fixed date, plus the time since the test binary
/// started, so that a restarted server's clock goes on from where the last one was
/// (as a host's wall clock does), never back to the date it started at.
pub fn wall_clock() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    #[allow(clippy::disallowed_methods)] // the test's own wall clock, read once
    let start = *START.get_or_init(std::time::Instant::now);
    1_800_000_000_000 + u64::try_from(start.elapsed().as_millis()).unwrap()
}

/// One `rampart serve --kubernetes`: a runtime of its own, the queue running.
pub struct Server {
    pub rt: tokio::runtime::Runtime,
    pub app: App,
    pub watch: Watch,
    /// The store behind `app`, as the lease fences it.
    pub store: Arc<StateStore>,
}

impl Server {
    pub fn start(world: &Arc<Mutex<World>>, dir: &std::path::Path) -> Server {
        Server::watching(world, dir, &[NS])
    }

    /// A server whose `--kubernetes` watches `namespaces`.
    pub fn watching(
        world: &Arc<Mutex<World>>,
        dir: &std::path::Path,
        namespaces: &[&str],
    ) -> Server {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (app, watch, store) = rt.block_on(async {
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
            (app, watch, store)
        });
        Server {
            rt,
            app,
            watch,
            store,
        }
    }

    pub fn tick(&self) -> Vec<(String, Did)> {
        self.rt.block_on(self.watch.tick()).unwrap()
    }

    /// Whether the release is recorded finished.
    pub fn finished(&self, id: &str) -> bool {
        self.rt.block_on(async {
            matches!(Loaded::read(&self.app.store, id).await, Some(Ok(l)) if l.view(None).outcome.is_some())
        })
    }

    /// The phase (or outcome, once over) of a release.
    pub fn phase(&self, id: &str) -> String {
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
    /// Waits for the release to reach phase `want`. An end (`promoted`, `rolled_back`,
    /// ...) is waited for until the release is recorded finished, not only until its
    /// log ends it: the controller records the end a moment after, and a tick in
    /// between still finds the release open.
    pub fn wait_phase(&self, id: &str, want: &str) {
        let nap = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            let now = self.phase(id);
            if now == want && (!ENDS.contains(&want) || self.finished(id)) {
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

    /// Waits for the release to end or halt, at most `DEADLINE`, and says how (once it
    /// is recorded finished).
    pub fn wait_over(&self, id: &str) -> String {
        let nap = Duration::from_millis(50);
        let mut waited = Duration::ZERO;
        loop {
            let now = self.phase(id);
            if ENDS[..5].contains(&now.as_str()) && self.finished(id) {
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

    pub fn approve(&self, id: &str) {
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

    /// A person (bob, a deployer) rolls back release `id` through the API, and it
    /// ends.
    pub fn roll_back(&self, id: &str) {
        let caller = Caller {
            name: "bob".into(),
            role: Role::Deployer,
        };
        let body = axum::body::Bytes::from(r#"{"reason": "support tickets"}"#);
        let _ = self
            .rt
            .block_on(act(
                self.app.clone(),
                caller,
                id.to_string(),
                Act::Rollback,
                body,
            ))
            .unwrap();
        self.wait_phase(id, "rolled_back");
    }

    pub fn events(&self, id: &str) -> Vec<(String, String)> {
        self.rt.block_on(async {
            let (_, log) = self.app.store.load(id).await.unwrap();
            log.iter()
                .flat_map(|e| e.events.clone())
                .map(|e| (e.kind, e.message))
                .collect()
        })
    }

    /// The audit chain's records (about `release`), each as JSON text.
    pub fn chain(&self, release: Option<&str>) -> Vec<String> {
        self.rt.block_on(async {
            self.app
                .store
                .chain_records(release)
                .await
                .unwrap()
                .iter()
                .map(|r| serde_json::to_string(r).unwrap())
                .collect()
        })
    }

    pub fn releases(&self) -> Vec<(String, String)> {
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

pub fn started(did: &[(String, Did)]) -> String {
    did.iter()
        .find_map(|(_, d)| match d {
            Did::Started(id) => Some(id.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no release started: {did:?}"))
}

pub fn annotation(world: &Arc<Mutex<World>>, key: &str) -> Option<String> {
    let w = world.lock().unwrap();
    w.objects[STABLE]["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

pub fn running(world: &Arc<Mutex<World>>, path: &str) -> Option<String> {
    world.lock().unwrap().running_image(path)
}

pub fn canary_image(world: &Arc<Mutex<World>>) -> Option<String> {
    let w = world.lock().unwrap();
    w.objects
        .get(CANARY)
        .map(|c| at(c, "spec/template/spec/containers/0/image").to_string())
}

/// A cluster with the opted-in Deployment on v1 and its policy, a stub Prometheus.
pub type Setup = (
    Arc<Mutex<World>>,
    tempfile::TempDir,
    tokio::runtime::Runtime,
);

pub fn setup(opted_in: bool) -> Setup {
    setup_with(opted_in, RATIO, STEPS, vec![])
}

pub fn setup_with(
    opted_in: bool,
    traffic: &str,
    strategy: &str,
    more: Vec<(String, Value)>,
) -> Setup {
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
pub fn adopted_then_v2(server: &Server, world: &Arc<Mutex<World>>) {
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
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let nap = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    while !done() {
        assert!(waited < DEADLINE, "never: {what}");
        std::thread::sleep(nap);
        waited += nap;
    }
}

/// Whether the user's Deployment is paused.
pub fn paused(world: &Arc<Mutex<World>>) -> Value {
    world.lock().unwrap().objects[STABLE]["spec"]["paused"].clone()
}
