//! An adversarial review of how operator requests reach a release: the request queue
//! (`commands`) is a table anyone who can write to the state database can insert
//! into, and docs/control-plane.md promises that a forged approval is never obeyed and
//! that `rampart audit verify` reports "an approval, promotion, pause or resume
//! applied that nobody asked for". The controller runs here in the test kit's fake
//! world over a real SQLite store on a file, on tokio's paused clock; the forgery is a
//! plain `INSERT` through another connection, as an attacker with the file would do.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_controller::{Controller, Observer};
use rampart_core::ports::{Clock, CommandKind, OperatorCommand, Store};
use rampart_core::release::{AuditEvent, Input, Phase, Release};
use rampart_core::{Policy, Weight};
use rampart_testkit::FakeWorld;
use tokio::sync::watch;

/// A canary with an approval point (ten minutes to answer) between its two steps.
const APPROVAL_POLICY: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy:
  canary:
    steps: [{weight: 10, bake: 1m}, {approval: {role: approver, timeout: 10m}}, {weight: 50, bake: 1m}]
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - metric: error_rate
      judge: {max: 5%}
"#;

/// A plain two-step canary.
const PLAIN_POLICY: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy:
  canary:
    steps: [{weight: 10, bake: 5m}, {weight: 50, bake: 5m}]
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - metric: error_rate
      judge: {max: 5%}
"#;

/// The release's phase and whether it is paused, after each transition.
struct Watch(watch::Sender<(Phase, bool)>);

impl Observer for Watch {
    fn on_transition(&self, _: &Input, state: &Release, _: &[AuditEvent]) {
        self.0.send_replace((state.phase, state.paused.is_some()));
    }
}

/// A store on a file, a controller for `policy` started by `alice`, and what it
/// observes.
async fn setup(
    path: &Path,
    policy: &str,
) -> (
    Arc<StateStore>,
    Arc<FakeWorld>,
    Arc<TokioClock>,
    Controller,
    watch::Receiver<(Phase, bool)>,
) {
    let store = Arc::new(StateStore::open(path).await.unwrap());
    let world = FakeWorld::new();
    let clock = Arc::new(TokioClock::starting_at(1_000_000));
    let ports = world.ports(store.clone(), store.clone(), clock.clone());
    let (tx, rx) = watch::channel((Phase::Pending, false));
    let c = Controller::new(
        Policy::from_yaml(policy).unwrap(),
        ports,
        Arc::new(Watch(tx)),
    )
    .with_initiator("alice");
    c.create("r1", "v2", policy).await.unwrap();
    (store, world, clock, c, rx)
}

/// What someone with write access to the database file does: one statement through a
/// connection of their own.
fn forge(path: &Path, sql: &str) {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(c.execute(sql, []).unwrap(), 1, "{sql}");
}

/// Requests in the queue not taken yet.
fn untaken(path: &Path) -> i64 {
    let c = rusqlite::Connection::open(path).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row("SELECT COUNT(*) FROM commands WHERE taken = 0", [], |r| {
        r.get(0)
    })
    .unwrap()
}

/// A request as the API queues it (`push_command_to`: the row and its chain record).
fn request(kind: CommandKind, actor: &str, at: u64) -> OperatorCommand {
    OperatorCommand {
        kind,
        actor: actor.into(),
        reason: format!("{} by {actor}", kind.as_str()),
        force: false,
        at,
    }
}

/// Review: the controller takes operator requests from the `commands` table
/// (`next_command_now`, crates/adapters/src/store/requests.rs) without looking for the
/// `request:approve` chain record that `push_command_to` writes with every real one.
/// A row inserted straight into the table, with no chain record, is applied like an
/// approver's: the release passes its approval point and moves traffic to the next
/// step. docs/control-plane.md: "refuses to act on an entry the chain did not record
/// ..., so a forged approval is never obeyed". `audit verify` reports it only after
/// the traffic moved. Once fixed, the approval point times out and rolls back.
#[tokio::test(start_paused = true)]
async fn an_approval_row_the_chain_never_recorded_is_not_obeyed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.db");
    let (store, world, clock, c, mut phases) = setup(&path, APPROVAL_POLICY).await;
    let attacker = async {
        phases
            .wait_for(|(p, _)| *p == Phase::AwaitingApproval)
            .await
            .unwrap();
        // Dated a moment after the approval point began, as a real one would be.
        let at = clock.now() + 1;
        forge(
            &path,
            &format!(
                "INSERT INTO commands (release_id, actor, reason, force, kind, at) \
                 VALUES ('r1', 'bob', 'looks fine', 0, 'approve', {at})"
            ),
        );
    };
    let (end, ()) = tokio::join!(c.drive("r1", Some("v1".into()), None), attacker);
    let end = end.unwrap();
    let records = store.chain_records(Some("r1")).await.unwrap();
    assert!(
        !records.iter().any(|r| r.action.starts_with("request:")),
        "setup: nobody asked for anything through the API"
    );
    let fifty = Weight::from_percent(50).unwrap();
    assert!(
        !world.weight_changes().contains(&fifty),
        "an approval nobody asked for (a row inserted into the request queue, no chain record) \
         took the release past its approval point to 50 %; it ended {} with weights {:?}",
        end.phase.as_str(),
        world.weight_changes()
    );
}

/// Review: `verify_chain` (crates/adapters/src/store/chain.rs, the `request:` and
/// `input:` arms) matches each applied pause, resume, approval or promotion with any
/// earlier request of the same kind by the same actor for the release, by count. A
/// request the controller dropped because it changed nothing (`feed_answering` in
/// crates/controller/src/lib.rs: a resume of a release that was not paused) is never
/// taken off that count, so it vouches for a later forged one: here bob's resume,
/// asked through the API while nothing was paused, lets a row inserted into the queue
/// resume the release carol paused, and `audit verify` says intact.
#[tokio::test(start_paused = true)]
async fn a_dropped_request_does_not_vouch_for_a_later_forged_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.db");
    let (store, _world, clock, c, mut state) = setup(&path, PLAIN_POLICY).await;
    let operators = async {
        state
            .wait_for(|(p, _)| *p == Phase::Progressing)
            .await
            .unwrap();
        // Bob (deployer) asks for a resume while nothing is paused: the API admits it,
        // the controller drops it as changing nothing.
        store
            .push_command_to("r1", &request(CommandKind::Resume, "bob", clock.now()))
            .await
            .unwrap();
        let mut polls = 0;
        while untaken(&path) > 0 {
            polls += 1;
            assert!(polls < 1000, "the controller never took bob's request");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        // Carol pauses it: something looks wrong.
        store
            .push_command_to("r1", &request(CommandKind::Pause, "carol", clock.now()))
            .await
            .unwrap();
        state.wait_for(|(_, paused)| *paused).await.unwrap();
        // The forgery: bob's resume, straight into the queue.
        let at = clock.now();
        forge(
            &path,
            &format!(
                "INSERT INTO commands (release_id, actor, reason, force, kind, at) \
                 VALUES ('r1', 'bob', 'resume', 0, 'resume', {at})"
            ),
        );
        // A bound in virtual time: the release either resumes or stays paused.
        let resumed = tokio::time::timeout(
            Duration::from_secs(3600),
            state.wait_for(|(_, paused)| !*paused),
        )
        .await
        .is_ok();
        if !resumed {
            store
                .push_command_to("r1", &request(CommandKind::Rollback, "carol", clock.now()))
                .await
                .unwrap();
        }
        resumed
    };
    let (end, resumed) = tokio::join!(c.drive("r1", Some("v1".into()), None), operators);
    end.unwrap();
    let (_, log) = store.load("r1").await.unwrap();
    let bobs_resumes = log
        .iter()
        .filter(|e| matches!(&e.input, Input::Unpause { actor } if actor == "bob"))
        .count();
    assert!(
        !resumed || bobs_resumes == 1,
        "setup: the only resume applied is the forged one"
    );
    let report = store.verify_chain().await.unwrap();
    assert!(
        !resumed
            || (!report.ok
                && report
                    .problems
                    .iter()
                    .any(|p| p.contains("resume") && p.contains("bob"))),
        "a resume nobody asked for (a row inserted into the queue) was applied, and `audit verify` \
         says ok={} with problems {:?}: bob's earlier resume, dropped as changing nothing, vouched for it",
        report.ok,
        report.problems
    );
}

/// Review: an approval "asked in time and read late (the controller was down) still
/// counts" (docs/policy.md), by the `at` of its row in the `commands` table. That row
/// is not compared with the `request:approve` chain record written with it, neither
/// by the controller nor by `verify_chain` (which matches requests and applied inputs
/// by release, kind and actor only). Here the controller is down past the approval
/// point's deadline, bob approves too late through the API, and someone with write
/// access to the database moves the row's `at` before the deadline: the release
/// passes its approval point instead of rolling back, and `audit verify` says intact.
#[tokio::test(start_paused = true)]
async fn a_late_approval_redated_in_the_queue_does_not_pass_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.db");
    let (store, world, clock, c, mut phases) = setup(&path, APPROVAL_POLICY).await;
    // Driven until it waits at its approval point; then the controller is gone.
    tokio::select! {
        end = c.drive("r1", Some("v1".into()), None) => panic!("the release ended first: {end:?}"),
        waited = phases.wait_for(|(p, _)| *p == Phase::AwaitingApproval) => { waited.unwrap(); }
    }
    drop(c);
    let (_, log) = store.load("r1").await.unwrap();
    let policy = Policy::from_yaml(APPROVAL_POLICY).unwrap();
    let waiting = Release::replay(&policy, log.iter().map(|e| (&e.input, e.at)));
    let deadline = waiting.timer.unwrap();
    // The controller stays down until five minutes past the deadline; bob approves
    // then, through the API's path (a row and its chain record).
    tokio::time::advance(Duration::from_millis(deadline - clock.now() + 300_000)).await;
    let late = clock.now();
    assert!(late > deadline);
    store
        .push_command_to("r1", &request(CommandKind::Approve, "bob", late))
        .await
        .unwrap();
    // The tampering: the row says it was asked a second before the deadline.
    forge(
        &path,
        &format!(
            "UPDATE commands SET at = {} WHERE release_id = 'r1' AND actor = 'bob'",
            deadline - 1_000
        ),
    );
    // The controller comes back.
    let ports = world.ports(store.clone(), store.clone(), clock.clone());
    let (tx, _rx) = watch::channel((Phase::Pending, false));
    let again = Controller::new(policy, ports, Arc::new(Watch(tx))).with_initiator("alice");
    let end = again.drive("r1", None, None).await.unwrap();
    let fifty = Weight::from_percent(50).unwrap();
    let passed = world.weight_changes().contains(&fifty);
    let report = store.verify_chain().await.unwrap();
    assert!(
        !passed || !report.ok,
        "an approval asked {} s after the approval point's deadline passed it once its queued \
         row was re-dated (the release ended {}), and `audit verify` says ok={} {:?}",
        (late - deadline) / 1000,
        end.phase.as_str(),
        report.ok,
        report.problems
    );
}
