//! An adversarial review of the operator commands against `rampart serve`: which
//! release a command names reaches the one its user means. The API runs in this
//! process over the in-memory store (tests/common/serve.rs); the CLI is the built
//! binary.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use rampart_adapters::store::memory::MemoryStore;
use rampart_adapters::store::{Submission, Submissions, Tokens};
use rampart_core::ports::{CommandKind, ReleaseRecord, Store, StoredInput};
use rampart_core::release::{Input, Release, step};

use common::serve::in_memory_api;

/// A policy whose release, started at midnight UTC, waits outside its one-hour window
/// for a human's approval (phase `awaiting_approval`): nothing runs, nothing listens.
const WAITING_POLICY: &str = r#"service: windowed
deploy: {process: {command: ["sh", "-c", "exit 1", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:9"}}
strategy: {canary: {steps: [{weight: 10, bake: 1s}]}}
analysis: {metrics: [{metric: error_rate, judge: {max: 1%}}]}
windows:
  allow: [{hours: "10:00-11:00"}]
"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn replay(log: &[StoredInput]) -> Release {
    let policy = rampart_core::Policy::from_yaml(WAITING_POLICY).unwrap();
    Release::replay(&policy, log.iter().map(|e| (&e.input, e.at)))
}

/// Creates release `id` of `WAITING_POLICY` started by `initiator`, as the controller
/// would: it is in progress, waiting for an approval.
async fn release_in_progress(store: &MemoryStore, id: &str, initiator: &str) {
    store
        .create(&ReleaseRecord {
            id: id.into(),
            service: "windowed".into(),
            version: "v2".into(),
            policy: WAITING_POLICY.into(),
            created_at: 0,
            outcome: None,
        })
        .await
        .unwrap();
    let policy = rampart_core::Policy::from_yaml(WAITING_POLICY).unwrap();
    let start = Input::Start {
        release_id: id.into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        automatic_rollbacks: 0,
        initiator: initiator.into(),
        planned_migrations: None,
        hotfix: None,
    };
    let t = step(&policy, &replay(&[]), &start, 0);
    let entry = StoredInput {
        seq: 0,
        at: 0,
        input: start,
        events: t.events,
    };
    store.append(id, &entry).await.unwrap();
    let (_, log) = store.load(id).await.unwrap();
    assert_eq!(replay(&log).phase.as_str(), "awaiting_approval");
}

/// Review: a release can be named by its service ("the service's latest release",
/// docs/control-plane.md). Against a server, `Backend::release`
/// (crates/rampart/src/client.rs) asks `GET /api/v1/releases?service=S&limit=1`,
/// whose list puts queued submissions first (crates/rampart/src/serve/api/releases.rs,
/// `list_releases`): with the next release queued behind the one in progress,
/// `rampart abort windowed --reason …` (the incident command of the docs) withdraws
/// the queued one, answers success, and leaves the release in progress running
/// untouched. The same command on the local store names the release in progress.
#[test]
fn abort_by_service_reaches_the_release_in_progress_not_the_one_queued_behind_it() {
    let (url, _port, store, _feed) = in_memory_api();
    let rt = runtime();
    rt.block_on(release_in_progress(&store, "windowed-1", "alice"));
    rt.block_on(store.submit(&Submission {
        id: "windowed-2".into(),
        service: "windowed".into(),
        version: "v3".into(),
        stable: None,
        hotfix: None,
        initiator: "ci".into(),
        policy: WAITING_POLICY.into(),
        workdir: std::env::temp_dir().display().to_string(),
        state: "queued".into(),
        report: None,
        created_at: 1_700_000_000_000,
    }))
    .unwrap();
    let token = rt
        .block_on(store.create_token("oncall", "deployer", "test", 1))
        .unwrap();
    let out = common::rampart()
        .args([
            "abort",
            "windowed",
            "--reason",
            "support tickets",
            "--server",
            &url,
            "--output",
            "json",
        ])
        .env("RAMPART_TOKEN", &token)
        .env_remove("RAMPART_SERVER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let queued = rt
        .block_on(Submissions::submission(store.as_ref(), "windowed-2"))
        .unwrap()
        .unwrap();
    let rollback_asked = rt
        .block_on(store.next_command("windowed-1"))
        .unwrap()
        .is_some_and(|(_, c)| c.kind == CommandKind::Rollback);
    assert!(
        rollback_asked || queued.state == "queued",
        "`rampart abort windowed` (exit {:?}) withdrew the queued release windowed-2 (now {}) and \
         asked nothing of windowed-1, the release in progress: {stdout}",
        out.status.code(),
        queued.state
    );
}
