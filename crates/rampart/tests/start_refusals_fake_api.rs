//! A release on Kubernetes that is refused at its start changes nothing first, against
//! a FAKE cluster (the adapter's in-memory object store behind a mock transport, see
//! `crates/kubernetes/tests/support/cluster.rs`; no Kubernetes API server runs here).
//! The release runs as `rampart serve` runs it (the server's store, its cluster
//! client); "nothing" is no write to the cluster and no flag defined in the store
//! (the flags the service's applications read).

#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../kubernetes/tests/support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};

use rampart::dataplane::Cluster;
use rampart::report::RunError;
use rampart::run::{Output, RunOptions, Served, run_release};
use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_core::ports::FlagStore;
use support::cluster::{self, World};
use support::{NS, deployments};

fn policy() -> String {
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
  kubernetes: {{mode: replica_ratio, replicas: 2}}
strategy: {{canary: {{steps: [{{weight: 50, bake: 1m}}]}}}}
analysis:
  interval: 10s
  prometheus: http://127.0.0.1:9
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(errors{{track="{{variant}}"}}[1m]))'
      judge: {{max: 0.05}}
flags:
  define:
    - {{name: new-checkout, default: true}}
rollback:
  drain: 0s
"#
    )
}

/// Runs a release of v2 (no `--stable`) as a server would, on the cluster `client`
/// talks to; returns how it ended and the store's flags of the service afterwards.
async fn release(
    dir: &std::path::Path,
    client: kube::Client,
) -> (Result<rampart::run::Report, RunError>, usize) {
    let store = Arc::new(StateStore::open(&dir.join("rampart.db")).await.unwrap());
    let options = RunOptions {
        policy_path: "release checkout-1".into(),
        policy_text: policy(),
        version: "v2".into(),
        stable: None,
        state_dir: dir.to_path_buf(),
        output: Output::Text,
        keep_running: false,
        attach: true,
        stop_after: false,
        initiator: "ci".into(),
        hotfix: None,
        metrics_listen: None,
        served: Some(Served {
            store: store.clone(),
            release_id: "checkout-1".into(),
            base_dir: dir.to_path_buf(),
            log: dir.join("logs/checkout-1.log"),
            serving: Arc::default(),
            inbox: Arc::default(),
            cluster: Some(Cluster(client)),
        }),
        clock: Arc::new(TokioClock::starting_at(1_800_000_000_000)),
    };
    let result = run_release(options, None).await;
    let flags = store.flags("checkout").await.unwrap().len();
    (result, flags)
}

fn writes(world: &Arc<Mutex<World>>) -> Vec<String> {
    world.lock().unwrap().writes.clone()
}

/// Regression (review): a release with no stable Deployment in the cluster failed
/// reading it only after it had defined the policy's flags (and, under a server,
/// closed the last release's flag endpoint).
#[tokio::test]
async fn no_stable_deployment_refuses_before_anything_changes_fake_api() {
    let dir = tempfile::tempdir().unwrap();
    let (client, world) = cluster::start(Vec::new());
    let (result, flags) = release(dir.path(), client).await;
    let err = result.unwrap_err();
    assert!(matches!(err, RunError::Internal(_)), "{err}");
    assert!(err.to_string().starts_with("Kubernetes: "), "{err}");
    assert_eq!(flags, 0, "no flag defined");
    assert_eq!(writes(&world), Vec::<String>::new());
}

/// Regression (review): a stable Deployment whose image the policy's template does not
/// match runs a version nobody knows; the release was refused (exit 2) only after it
/// had defined the policy's flags (and, under a server, closed the last release's flag
/// endpoint).
#[tokio::test]
async fn a_stable_version_the_template_does_not_match_refuses_before_anything_changes_fake_api() {
    let dir = tempfile::tempdir().unwrap();
    let mut stable = support::stable("v1", 2);
    stable["spec"]["template"]["spec"]["containers"][0]["image"] =
        serde_json::json!("registry.example.com/elsewhere:v1");
    let (client, world) = cluster::start(vec![(deployments("checkout"), stable)]);
    let (result, flags) = release(dir.path(), client).await;
    let err = result.unwrap_err();
    assert!(matches!(err, RunError::Invalid(_)), "{err}");
    assert!(
        err.to_string()
            .contains("does not match `deploy.kubernetes.image`"),
        "{err}"
    );
    assert_eq!(flags, 0, "no flag defined");
    assert_eq!(writes(&world), Vec::<String>::new());
}

/// Review: a halt leaves the canary with users on Kubernetes (here v9's pods, half of
/// `replica_ratio`'s); a new release of v2 rolled that Deployment out to v2 in place,
/// under those users, before any analysis. It is refused (exit 5) before anything
/// changes, naming `rampart stop --canary`.
#[tokio::test]
async fn a_canary_a_halt_left_with_users_refuses_a_new_release_before_anything_changes_fake_api() {
    let dir = tempfile::tempdir().unwrap();
    let (client, world) = cluster::start(vec![
        (deployments("checkout"), support::stable("v1", 2)),
        (deployments("checkout-canary"), support::canary("v9", 2)),
    ]);
    let (result, flags) = release(dir.path(), client).await;
    let err = result.unwrap_err();
    assert!(matches!(err, RunError::Blocked(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("v9")
            && text.contains("50")
            && text.contains("stop")
            && text.contains("--canary"),
        "{text}"
    );
    assert_eq!(flags, 0, "no flag defined");
    assert_eq!(writes(&world), Vec::<String>::new());
}
