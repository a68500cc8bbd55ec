//! `rampart stop --canary`'s checks before it moves anything, on the store a release
//! history left (SQLite in a temporary directory; no data plane needs to run for a
//! refusal).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use rampart::commands::stop::{StopArgs, stop};
use rampart::report::RunError;
use rampart_adapters::store::StateStore;
use rampart_core::migrations::Class;
use rampart_core::ports::{ReleaseRecord, Store, StoredInput};
use rampart_core::release::{Input, OutcomeKind};

const POLICY: &str = r#"service: shop
deploy:
  process:
    command: ["./shop", "--port", "{port}"]
traffic:
  proxy: {listen: "127.0.0.1:9"}
strategy:
  canary:
    steps: [{weight: 20, bake: 1m}]
analysis:
  interval: 10s
  metrics:
    - {metric: error_rate, judge: {max: 5%}}
"#;

/// A finished release of `version` that planned `migrations`.
async fn finished(
    store: &StateStore,
    id: &str,
    at: u64,
    version: &str,
    migrations: Option<Class>,
    outcome: OutcomeKind,
) {
    let record = ReleaseRecord {
        id: id.into(),
        service: "shop".into(),
        version: version.into(),
        policy: POLICY.into(),
        created_at: at,
        outcome: None,
    };
    store.create(&record).await.unwrap();
    let start = Input::Start {
        release_id: id.into(),
        version: version.into(),
        stable: Some("v1".into()),
        automatic_rollbacks: 0,
        initiator: "bob".into(),
        planned_migrations: migrations,
        hotfix: None,
    };
    let entry = StoredInput {
        seq: 0,
        at,
        input: start,
        events: vec![],
    };
    store.append(id, &entry).await.unwrap();
    store.finish(id, outcome, Some("v1"), false).await.unwrap();
}

fn args(dir: &std::path::Path) -> StopArgs {
    let file = dir.join("rampart.yaml");
    std::fs::write(&file, POLICY).unwrap();
    StopArgs {
        file,
        state_dir: dir.join("state"),
        store: None,
        canary: true,
        force: false,
        reason: None,
        actor: Some("alice".into()),
    }
}

/// Regression: only the newest release was checked, so a roll forward that was
/// blocked before it deployed anything hid the escalated release before it, and the
/// old code went back onto the contracted schema without `--force`.
#[tokio::test]
async fn breaking_migrations_since_the_last_promotion_need_force() {
    let dir = tempfile::tempdir().unwrap();
    let a = args(dir.path());
    std::fs::create_dir_all(&a.state_dir).unwrap();
    let store = StateStore::open(&a.state_dir.join("rampart.db"))
        .await
        .unwrap();
    finished(&store, "r1", 1_000, "v1", None, OutcomeKind::Promoted).await;
    finished(
        &store,
        "r2",
        2_000,
        "v2",
        Some(Class::Contract),
        OutcomeKind::Escalated,
    )
    .await;
    finished(&store, "r3", 3_000, "v3", None, OutcomeKind::Blocked).await;
    let err = stop(&a, None, &clock()).await.unwrap_err();
    assert!(matches!(err, RunError::Blocked(_)), "{err}");
    assert!(
        err.to_string()
            .contains("release r2 of shop v2 shipped non-backward-compatible"),
        "{err}"
    );
    // A promotion since settles it: what ran before it is the past.
    finished(&store, "r4", 4_000, "v4", None, OutcomeKind::Promoted).await;
    let lines = stop(&a, None, &clock()).await.unwrap();
    assert_eq!(lines, ["shop: no data plane runs here"]);
}

/// The clock the audit records are timed by.
fn clock() -> rampart_adapters::clock::TokioClock {
    rampart_adapters::clock::TokioClock::starting_at(1_800_000_000_000)
}
