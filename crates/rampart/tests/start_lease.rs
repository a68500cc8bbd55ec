//! A release run by a `rampart serve` replica that lost its lease on a shared store
//! (another replica took it over) leaves the service alone: the data plane may be the
//! one the new leader's release uses.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use rampart::report::RunError;
use rampart::run::{Output, RunOptions, Served, run_release};
use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_core::ports::FlagStore;

/// Regression (review): the policy's flags, a release's first write the store checks
/// against the lease, were defined only after its data plane was started (its state
/// written, its sticky salt and uncounted token reset): a deposed replica touched the
/// data plane before it learnt it no longer acts. The lease is checked first now.
#[tokio::test]
async fn a_replica_that_lost_its_lease_leaves_the_data_plane_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.db");
    let deposed = Arc::new(StateStore::open(&path).await.unwrap());
    let leader = StateStore::open(&path).await.unwrap();
    let token = deposed
        .take_lease("serve", "a", None)
        .await
        .unwrap()
        .unwrap();
    deposed.fence_as_leader("serve", "a", token);
    let seen = leader.lease_state("serve").await.unwrap().unwrap();
    let token = leader
        .take_lease("serve", "b", Some(&seen))
        .await
        .unwrap()
        .unwrap();
    leader.fence_as_leader("serve", "b", token);

    let exe = common::exe();
    let port = common::free_port();
    let policy = format!(
        r#"service: lease
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy: {{canary: {{steps: [{{weight: 50, bake: 1m}}]}}}}
analysis:
  interval: 1s
  metrics:
    - {{metric: error_rate, judge: {{max: 5%}}}}
flags:
  define:
    - {{name: new-checkout, default: true}}
"#
    );
    let options = RunOptions {
        policy_path: "release lease-1".into(),
        policy_text: policy,
        version: "v2".into(),
        stable: None,
        state_dir: dir.path().to_path_buf(),
        output: Output::Text,
        keep_running: false,
        attach: true,
        stop_after: false,
        initiator: "ci".into(),
        hotfix: None,
        metrics_listen: None,
        served: Some(Served {
            store: deposed.clone(),
            release_id: "lease-1".into(),
            base_dir: dir.path().to_path_buf(),
            log: dir.path().join("logs/lease-1.log"),
            serving: Arc::default(),
            inbox: Arc::default(),
            cluster: None,
        }),
        clock: Arc::new(TokioClock::starting_at(1_800_000_000_000)),
    };
    // Without the check, the release writes the data plane's state and token and
    // starts it (here this test binary, as the current executable, which refuses the
    // data plane's arguments), before its flags are refused.
    let err = run_release(options, None).await.unwrap_err();
    assert!(matches!(err, RunError::Internal(_)), "{err}");
    assert!(err.to_string().contains("no longer acts"), "{err}");
    let planes = dir.path().join("dataplane");
    assert!(
        !planes.join("lease.json").exists() && !planes.join("lease.token").exists(),
        "the data plane's files were not written"
    );
    assert!(leader.flags("lease").await.unwrap().is_empty());
}
