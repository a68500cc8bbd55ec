//! `rampart stop --canary` on Kubernetes, against a FAKE cluster (the adapter's
//! in-memory object store behind a mock transport, see
//! `crates/kubernetes/tests/support/cluster.rs`; no Kubernetes API server runs here):
//! the canary a halted or escalated release left carrying users goes, through the
//! same adapter a release moves traffic with, only while stable is ready.

#![cfg(feature = "kubernetes")]
#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

#[path = "../../kubernetes/tests/support/mod.rs"]
mod support;

use rampart::commands::stop::{StopArgs, stop};
use rampart::dataplane::Cluster;
use rampart::report::RunError;
use support::cluster;
use support::{NS, deployments};

const POLICY: &str = r#"
service: checkout
deploy:
  kubernetes:
    namespace: shop
    deployment: checkout
    container: app
    image: "registry.example.com/checkout:{version}"
traffic:
  kubernetes: {mode: replica_ratio, replicas: 2}
strategy: {canary: {steps: [{weight: 50, bake: 1m}]}}
analysis:
  interval: 10s
  prometheus: http://127.0.0.1:9
  metrics:
    - name: errors
      source: prometheus
      query: 'sum(rate(errors{track="{variant}"}[1m]))'
      judge: {max: 0.05}
rollback:
  drain: 0s
"#;

/// A policy file and an empty state directory.
fn args(dir: &std::path::Path) -> StopArgs {
    assert_eq!(NS, "shop");
    let file = dir.join("rampart.yaml");
    std::fs::write(&file, POLICY).unwrap();
    StopArgs {
        file,
        state_dir: dir.join("state"),
        store: None,
        canary: true,
        force: false,
        reason: Some("v2 halted".into()),
        actor: Some("alice".into()),
    }
}

/// The cluster a halt left: stable v1 and the canary v2 at one replica each (50 %).
fn halted_at_half() -> (
    kube::Client,
    std::sync::Arc<std::sync::Mutex<cluster::World>>,
) {
    cluster::start(vec![
        (deployments("checkout"), support::stable("v1", 1)),
        (deployments("checkout-canary"), support::canary("v2", 1)),
    ])
}

fn replicas(world: &std::sync::Arc<std::sync::Mutex<cluster::World>>, name: &str) -> Option<i64> {
    let w = world.lock().unwrap();
    w.objects
        .get(&deployments(name))
        .map(|d| d["spec"]["replicas"].as_i64().unwrap_or(1))
}

#[tokio::test(start_paused = true)]
async fn the_canary_goes_and_stable_takes_every_replica_fake_api() {
    let dir = tempfile::tempdir().unwrap();
    let (client, world) = halted_at_half();
    let lines = stop(&args(dir.path()), Some(Cluster(client)), &clock())
        .await
        .unwrap();
    let text = lines.join("\n");
    assert_eq!(replicas(&world, "checkout-canary"), None, "{text}");
    assert_eq!(replicas(&world, "checkout"), Some(2), "{text}");
    assert!(
        text.contains("audited as canary_stopped by alice"),
        "{text}"
    );
}

#[tokio::test(start_paused = true)]
async fn nothing_moves_while_stable_is_not_ready_fake_api() {
    let dir = tempfile::tempdir().unwrap();
    let (client, world) = halted_at_half();
    {
        // Stable's new pods never get ready.
        let mut w = world.lock().unwrap();
        w.scale_as(&deployments("checkout"), 3, "kubectl");
        w.broken.insert(deployments("checkout"));
    }
    let err = stop(&args(dir.path()), Some(Cluster(client)), &clock())
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Blocked(_)), "{err}");
    assert!(
        err.to_string().contains("stable of checkout is not ready"),
        "{err}"
    );
    assert_eq!(
        replicas(&world, "checkout-canary"),
        Some(1),
        "the canary keeps its users"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stop_that_fails_after_moving_users_audits_what_it_did_fake_api() {
    let dir = tempfile::tempdir().unwrap();
    let (client, world) = halted_at_half();
    // Stable is ready as it is, but the replica it is given for the canary's users
    // never gets ready: the stop fails after it has begun.
    world.lock().unwrap().broken.insert(deployments("checkout"));
    let a = args(dir.path());
    let err = stop(&a, Some(Cluster(client)), &clock()).await.unwrap_err();
    assert!(matches!(err, RunError::Internal(_)), "{err}");
    assert_eq!(
        replicas(&world, "checkout"),
        Some(2),
        "the stop had begun: stable was given the canary's replica ({err})"
    );
    assert_eq!(
        replicas(&world, "checkout-canary"),
        Some(1),
        "it failed before the canary went"
    );
    let store = rampart_adapters::store::StateStore::open(&a.state_dir.join("rampart.db"))
        .await
        .unwrap();
    let chain = store.chain_records(None).await.unwrap();
    let actions: Vec<&str> = chain.iter().map(|r| r.action.as_str()).collect();
    assert!(!actions.contains(&"canary_stopped"), "{actions:?}");
    let failed = serde_json::to_string(
        chain
            .iter()
            .rfind(|r| r.action == "canary_stop_failed")
            .unwrap_or_else(|| panic!("no canary_stop_failed in {actions:?} ({err})")),
    )
    .unwrap();
    assert!(
        failed.contains("v2 halted") && failed.contains("then failed") && failed.contains("alice"),
        "the trail says why, what was done, and how it ended: {failed}"
    );
}

/// The clock the audit records are timed by.
fn clock() -> rampart_adapters::clock::TokioClock {
    rampart_adapters::clock::TokioClock::starting_at(1_800_000_000_000)
}
