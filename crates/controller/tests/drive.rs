//! The controller loop in the test kit's fake world (deployer, router, metrics,
//! Alertmanager: `rampart_testkit::FakeWorld`) and the real SQLite store, on tokio's
//! paused clock: a 10-minute canary takes milliseconds, and a "crash" is dropping the
//! driving future mid-bake.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_controller::{Controller, Ports, Silent};
use rampart_core::policy::Policy;
use rampart_core::ports::*;
use rampart_core::release::{GateResult, Input, Phase, Release, SilenceOp};
use rampart_core::{Variant, Weight};
use rampart_testkit::FakeWorld;

const POLICY: &str = r#"
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

fn ports(world: &Arc<FakeWorld>, store: Arc<StateStore>) -> Ports {
    world.ports(
        store.clone(),
        store,
        Arc::new(TokioClock::starting_at(1_000_000)),
    )
}

fn controller(world: &Arc<FakeWorld>, store: &Arc<StateStore>) -> Controller {
    Controller::new(
        Policy::from_yaml(POLICY).unwrap(),
        ports(world, store.clone()),
        Arc::new(Silent),
    )
}

/// Creates release `r1` of `policy_text` and drives it with `c` for `secs` virtual
/// seconds, then "crashes": the driving future and the controller are dropped while
/// the release still runs.
async fn crash_after(c: Controller, policy_text: &str, secs: u64) {
    c.create("r1", "v2", policy_text).await.unwrap();
    let crashed = tokio::time::timeout(
        Duration::from_secs(secs),
        c.drive("r1", Some("v1".into()), None),
    )
    .await;
    assert!(
        crashed.is_err(),
        "release must still be running at the crash"
    );
}

#[tokio::test(start_paused = true)]
async fn ten_minute_canary_promotes_on_virtual_time() {
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = controller(&world, &store);
    c.create("r1", "v2", POLICY).await.unwrap();
    let end = c.drive("r1", Some("v1".into()), None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    let d = end.decision.unwrap();
    assert_eq!((d.at - end.started_at) / 1000, 600);
    assert_eq!(
        world.weight_changes(),
        vec![
            Weight::from_percent(10).unwrap(),
            Weight::from_percent(50).unwrap(),
            Weight::FULL
        ]
    );
    assert_eq!(
        store.serving_version("shop").await.unwrap().as_deref(),
        Some("v2")
    );
    assert!(store.active("shop").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn crash_mid_bake_then_resume_finishes_without_repeating_decisions() {
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    // Run until 7 minutes in (inside the second step's bake), then "crash".
    crash_after(controller(&world, &store), POLICY, 7 * 60).await;
    let (_, log_at_crash) = store.load("r1").await.unwrap();
    let steps_done = log_at_crash
        .iter()
        .flat_map(|e| &e.events)
        .filter(|e| e.kind == "step_completed")
        .count();
    assert_eq!(steps_done, 1);

    let second = controller(&world, &store);
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    let (_, log) = store.load("r1").await.unwrap();
    let count = |kind: &str| {
        log.iter()
            .flat_map(|e| &e.events)
            .filter(|e| e.kind == kind)
            .count()
    };
    assert_eq!(count("step_completed"), 2, "each step decided once");
    assert_eq!(count("promoting"), 1);
    assert_eq!(count("resumed"), 1);
    assert_eq!(
        log.iter()
            .filter(|e| matches!(e.input, Input::Start { .. }))
            .count(),
        1
    );
    // The resumed controller re-applied the 50 % weight rather than starting over at 10 %.
    let changes = world.weight_changes();
    assert_eq!(
        changes
            .iter()
            .filter(|w| **w == Weight::from_percent(10).unwrap())
            .count(),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn a_release_resumed_under_rules_that_decide_its_log_otherwise_halts_where_it_stood() {
    let world = FakeWorld::new();
    // 2 % errors: within the policy's 5 %.
    world.set_canary_errors_per_mille(20);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    crash_after(controller(&world, &store), POLICY, 7 * 60).await;
    let at_crash = world.weight_changes();
    assert_eq!(world.weight(), Weight::from_percent(50).unwrap());
    let (notices, stops) = (world.notices(), world.stops().len());

    // Taken up again by rules that judge stricter (a stricter limit stands for an
    // upgraded judge): its analyses passed under the old rules and fail under the new
    // ones, so its log no longer rebuilds what happened. It halts at the weight it
    // was left at; nothing moves.
    let stricter = POLICY.replace("max: 5%", "max: 1%");
    let second = Controller::new(
        Policy::from_yaml(&stricter).unwrap(),
        ports(&world, store.clone()),
        Arc::new(Silent),
    );
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Halted);
    assert_eq!(end.weight, Weight::from_percent(50).unwrap());
    assert_eq!(world.weight_changes(), at_crash, "no traffic moved");
    assert_eq!(world.stops().len(), stops, "nothing stopped");
    assert!(world.notices() > notices, "a human is paged");
    let (record, log) = store.load("r1").await.unwrap();
    assert_eq!(record.outcome, Some(rampart_core::OutcomeKind::Halted));
    let last = log.last().unwrap();
    assert!(matches!(last.input, Input::RulesChanged { .. }));
    assert_eq!(last.events[0].kind, "rules_changed");
    assert!(
        store.active("shop").await.unwrap().is_none(),
        "the service is free for the next release"
    );
    // A third controller (the log now holds the halt) takes it up as a halted release.
    let third = Controller::new(
        Policy::from_yaml(&stricter).unwrap(),
        ports(&world, store.clone()),
        Arc::new(Silent),
    );
    assert_eq!(
        third.drive("r1", None, None).await.unwrap().phase,
        Phase::Halted
    );
    assert_eq!(world.weight_changes(), at_crash);
}

#[tokio::test(start_paused = true)]
async fn bad_canary_rolls_back_and_stops_it() {
    let world = FakeWorld::new();
    world.set_canary_errors_per_mille(200);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = controller(&world, &store);
    c.create("r1", "v2", POLICY).await.unwrap();
    let end = c.drive("r1", Some("v1".into()), None).await.unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    assert_eq!(world.weight(), Weight::ZERO);
    assert_eq!(world.stops(), vec![Variant::Canary]);
    assert_eq!(
        store.serving_version("shop").await.unwrap().as_deref(),
        Some("v1")
    );
}

#[tokio::test(start_paused = true)]
async fn operator_abort_rolls_back() {
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = controller(&world, &store);
    c.create("r1", "v2", POLICY).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = async {
        tokio::time::sleep(Duration::from_secs(90)).await;
        tx.send(Input::Abort {
            actor: "alice".into(),
            reason: "looks off".into(),
            force: false,
        })
        .unwrap();
    };
    let (end, ()) = tokio::join!(c.drive("r1", Some("v1".into()), Some(rx)), sender);
    let end = end.unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    assert!(end.decision.unwrap().reason.contains("alice"));
}

#[tokio::test(start_paused = true)]
async fn a_second_controller_cannot_append_to_the_same_log() {
    // Two controllers, each with its own handle on one store file (two processes), drive
    // the same release: the second resumes from the log as the first left it, and both
    // then record the next decision at the same position. The store refuses whichever
    // comes second, by its sequence check, and that controller stops without acting.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let world = FakeWorld::new();
    let first_store = Arc::new(StateStore::open(&path).await.unwrap());
    let second_store = Arc::new(StateStore::open(&path).await.unwrap());
    let first = controller(&world, &first_store);
    let second = controller(&world, &second_store);
    first.create("r1", "v2", POLICY).await.unwrap();
    let (a, b) = tokio::join!(
        first.drive("r1", Some("v1".into()), None),
        second.drive("r1", Some("v1".into()), None)
    );
    let (won, refused) = match (a, b) {
        (Ok(end), Err(e)) | (Err(e), Ok(end)) => (end, e.to_string()),
        (a, b) => panic!("exactly one controller must be refused: {a:?} / {b:?}"),
    };
    assert!(
        refused.contains("another controller is acting on this release"),
        "refused by the sequence check, not by anything else: {refused}"
    );
    assert_eq!(won.phase, Phase::Succeeded);
    let (_, log) = first_store.load("r1").await.unwrap();
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (0..log.len() as u64).collect::<Vec<_>>(),
        "one log, without gaps or repeats"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rollback_queued_in_the_store_reaches_the_driving_controller() {
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = controller(&world, &store);
    c.create("r1", "v2", POLICY).await.unwrap();
    let operator = async {
        tokio::time::sleep(Duration::from_secs(100)).await;
        let cmd = OperatorCommand {
            kind: CommandKind::Rollback,
            actor: "bob (cli)".into(),
            reason: "pager went off".into(),
            force: false,
            at: 0,
        };
        assert_eq!(store.push_command("shop", &cmd).await.unwrap(), "r1");
    };
    let (end, ()) = tokio::join!(c.drive("r1", Some("v1".into()), None), operator);
    let end = end.unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    let d = end.decision.unwrap();
    assert!(
        d.reason.contains("bob (cli)") && d.reason.contains("pager went off"),
        "{}",
        d.reason
    );
    // Picked up within one poll of being queued.
    assert!(
        (d.at - end.started_at) <= 100_000 + 250,
        "{}",
        d.at - end.started_at
    );
}

#[tokio::test(start_paused = true)]
async fn the_rollback_cap_counts_automatic_rollbacks_across_releases() {
    let world = FakeWorld::new();
    world.set_canary_errors_per_mille(200);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let capped = format!("{POLICY}rollback: {{max_automatic: {{count: 1, per: 1h}}}}\n");
    let c = Controller::new(
        Policy::from_yaml(&capped).unwrap(),
        ports(&world, store.clone()),
        Arc::new(Silent),
    );
    c.create("r1", "v2", &capped).await.unwrap();
    assert_eq!(
        c.drive("r1", Some("v1".into()), None).await.unwrap().phase,
        Phase::RolledBack
    );
    assert_eq!(store.automatic_rollbacks("shop", 0).await.unwrap(), 1);
    c.create("r2", "v3", &capped).await.unwrap();
    let second = c.drive("r2", Some("v1".into()), None).await.unwrap();
    assert_eq!(
        second.phase,
        Phase::Halted,
        "the cap of 1 per hour is reached"
    );
    // Outside the window the count starts again.
    tokio::time::sleep(Duration::from_secs(3700)).await;
    c.create("r3", "v4", &capped).await.unwrap();
    assert_eq!(
        c.drive("r3", Some("v1".into()), None).await.unwrap().phase,
        Phase::RolledBack
    );
}

/// A notifier whose every delivery hangs, like a webhook that never answers.
struct Hanging;

impl Notifier for Hanging {
    fn notify<'a>(&'a self, _n: &'a rampart_core::ports::Notice) -> BoxFuture<'a, ()> {
        Box::pin(std::future::pending())
    }
}

#[tokio::test(start_paused = true)]
async fn a_notifier_that_never_answers_never_holds_up_a_rollback() {
    let world = FakeWorld::new();
    world.set_canary_errors_per_mille(200);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let mut ports = ports(&world, store.clone());
    ports.notifier = Arc::new(Hanging);
    let c = Controller::new(Policy::from_yaml(POLICY).unwrap(), ports, Arc::new(Silent));
    c.create("r1", "v2", POLICY).await.unwrap();
    let clock = TokioClock::starting_at(0);
    let end = tokio::time::timeout(
        Duration::from_secs(3600),
        c.drive("r1", Some("v1".into()), None),
    )
    .await
    .expect("the release ended although no notice was ever delivered")
    .unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    assert_eq!(world.stops(), vec![Variant::Canary]);
    // The rollback was decided after two bad 30 s intervals and carried out at once; the
    // only wait after it is the bounded flush of undelivered notices.
    let decided = end.decision.unwrap().at;
    let (_, log) = store.load("r1").await.unwrap();
    let finished = log.last().unwrap().at;
    assert!(
        finished - decided < 1_000,
        "the rollback waited on notices: {decided} -> {finished}"
    );
    assert!(
        rampart_core::ports::Clock::now(&clock) >= 30_000,
        "the flush is bounded at 30 s"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_that_changes_nothing_does_not_restart_the_action_in_flight() {
    let world = FakeWorld::new();
    world.set_gate_secs(60);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let text = format!("{POLICY}gates: {{pre: [{{env: [HOME]}}]}}\n");
    let c = Controller::new(
        Policy::from_yaml(&text).unwrap(),
        ports(&world, store.clone()),
        Arc::new(Silent),
    );
    c.create("r1", "v2", &text).await.unwrap();
    let operator = async {
        // While the gate runs (a minute), a pause arrives: refused before the steps.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cmd = OperatorCommand {
            kind: CommandKind::Pause,
            actor: "carol".into(),
            reason: "looking".into(),
            force: false,
            at: 0,
        };
        store.push_command("shop", &cmd).await.unwrap();
    };
    let (end, ()) = tokio::join!(c.drive("r1", Some("v1".into()), None), operator);
    let end = end.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    // The gate in flight was not started over.
    assert_eq!(world.gate_runs(), 1);
    let (_, log) = store.load("r1").await.unwrap();
    let refused = log
        .iter()
        .flat_map(|e| &e.events)
        .any(|e| e.kind == "pause_refused" && e.actor == "carol");
    assert!(refused);
}

#[tokio::test(start_paused = true)]
async fn an_abort_waits_for_the_version_being_started_so_no_process_is_left_behind() {
    let world = FakeWorld::new();
    world.set_deploy_secs(60);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = controller(&world, &store);
    c.create("r1", "v2", POLICY).await.unwrap();
    let operator = async {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let cmd = OperatorCommand {
            kind: CommandKind::Rollback,
            actor: "carol".into(),
            reason: "wrong build".into(),
            force: false,
            at: 0,
        };
        store.push_command("shop", &cmd).await.unwrap();
    };
    let (end, ()) = tokio::join!(c.drive("r1", Some("v1".into()), None), operator);
    let end = end.unwrap();
    // Stable finished starting (it was not dropped half-way), then the abort applied.
    assert_eq!(world.deploys(), 1);
    assert_eq!(world.deploys_done(), 1);
    // The abort applied before the canary was started.
    assert_eq!(end.phase, Phase::RolledBack);
}

#[tokio::test(start_paused = true)]
async fn controllers_sharing_an_inbox_get_their_own_requests() {
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let inbox = rampart_controller::Inbox::start(
        store.clone(),
        Arc::new(TokioClock::starting_at(1_000_000)),
    );
    let c = controller(&world, &store).with_inbox(inbox.clone());
    c.create("r1", "v2", POLICY).await.unwrap();
    let operator = async {
        tokio::time::sleep(Duration::from_secs(100)).await;
        let cmd = OperatorCommand {
            kind: CommandKind::Rollback,
            actor: "bob".into(),
            reason: "pager".into(),
            force: false,
            at: 0,
        };
        store.push_command("shop", &cmd).await.unwrap();
    };
    let (end, ()) = tokio::join!(c.drive("r1", Some("v1".into()), None), operator);
    let end = end.unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    let d = end.decision.unwrap();
    assert!(d.reason.contains("bob"), "{}", d.reason);
    assert!(
        d.at - end.started_at <= 100_000 + 250,
        "{}",
        d.at - end.started_at
    );
}

/// The test policy with a 2-minute Alertmanager silence (renewed every minute).
fn silenced() -> String {
    format!(
        "{POLICY}silences: {{alertmanager: \"http://127.0.0.1:9093\", matchers: [{{name: service, value: shop}}], ttl: 2m}}\n"
    )
}

fn silence_controller(world: &Arc<FakeWorld>, store: &Arc<StateStore>) -> Controller {
    Controller::new(
        Policy::from_yaml(&silenced()).unwrap(),
        ports(world, store.clone()),
        Arc::new(Silent),
    )
}

/// Drives release `r1` of the silenced policy in `world` to its end.
async fn drive_silenced(world: &Arc<FakeWorld>) -> (Arc<StateStore>, Release) {
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = silence_controller(world, &store);
    c.create("r1", "v2", &silenced()).await.unwrap();
    let end = c.drive("r1", Some("v1".into()), None).await.unwrap();
    (store, end)
}

/// The kinds of a release's audit events about its silence, in order.
async fn silence_events(store: &StateStore, id: &str) -> Vec<String> {
    let (_, log) = store.load(id).await.unwrap();
    log.iter()
        .flat_map(|e| &e.events)
        .filter(|e| e.kind.starts_with("silence"))
        .map(|e| e.kind.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_silence_is_held_renewed_on_the_controllers_clock_and_expired_after_the_end() {
    let world = FakeWorld::new();
    // Each version takes 2.5 virtual minutes to start: renewals fall due while a start
    // that must not be interrupted is in flight.
    world.set_deploy_secs(150);
    let (store, end) = drive_silenced(&world).await;
    assert_eq!(end.phase, Phase::Succeeded);
    let d = end.decision.unwrap();
    assert_eq!(
        (d.at - end.started_at) / 1000,
        300 + 600,
        "the silence delays nothing"
    );
    assert_eq!(world.deploys_done(), 2);
    // Held for 2m from the start, renewed every minute through 5 minutes of deploys and
    // the 10-minute canary, then expired once, after the promotion.
    let calls = world.silences();
    let mut expected: Vec<(String, String, SilenceOp)> = (0..=15)
        .map(|k| {
            let from = end.started_at + k * 60_000;
            let until = from + 120_000;
            ("r1".into(), "v2".into(), SilenceOp::Hold { from, until })
        })
        .collect();
    expected.push(("r1".into(), String::new(), SilenceOp::Expire));
    assert_eq!(calls, expected);
    let mut kinds = vec!["silenced".to_string()];
    kinds.extend(std::iter::repeat_n("silence_renewed".to_string(), 15));
    kinds.push("silence_expired".into());
    assert_eq!(silence_events(&store, "r1").await, kinds);
    // The expiry is on the record before the release is recorded finished.
    let (record, log) = store.load("r1").await.unwrap();
    assert_eq!(record.outcome, Some(rampart_core::OutcomeKind::Promoted));
    assert_eq!(log.last().unwrap().input, Input::SilenceExpired);
    assert!(store.active("shop").await.unwrap().is_none());
}

#[tokio::test(start_paused = true)]
async fn a_failing_alertmanager_is_on_the_record_and_never_holds_the_release_up() {
    for fail in [false, true] {
        let world = FakeWorld::new();
        world.set_canary_errors_per_mille(200);
        world.set_silences_fail(fail);
        let (store, end) = drive_silenced(&world).await;
        // The same rollback as without a silence, decided after two bad 30 s intervals.
        assert_eq!(end.phase, Phase::RolledBack, "fail: {fail}");
        let d = end.decision.unwrap();
        assert_eq!(d.at - end.started_at, 60_000, "fail: {fail}");
        assert_eq!(world.stops(), vec![Variant::Canary]);
        // Held at the start, renewed a minute in (when the rollback is decided), expired.
        let expected = if fail {
            vec!["silence_failed"; 3]
        } else {
            vec!["silenced", "silence_renewed", "silence_expired"]
        };
        assert_eq!(silence_events(&store, "r1").await, expected);
        assert!(store.active("shop").await.unwrap().is_none());
    }
}

#[tokio::test(start_paused = true)]
async fn a_resumed_release_holds_the_silence_again_and_expires_it_at_the_end() {
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    crash_after(silence_controller(&world, &store), &silenced(), 7 * 60 + 30).await;
    let before = world.silences().len();
    assert!(
        world
            .silences()
            .iter()
            .all(|(_, _, op)| *op != SilenceOp::Expire),
        "a crash expires nothing"
    );
    let second = silence_controller(&world, &store);
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    let calls = world.silences()[before..].to_vec();
    // The resumed run holds the silence at once (the adapter adopts the one left),
    // renews it, and expires it at the end.
    assert!(
        matches!(calls.first(), Some((_, _, SilenceOp::Hold { .. }))),
        "{calls:?}"
    );
    assert_eq!(calls.last().unwrap().2, SilenceOp::Expire);
    let kinds = silence_events(&store, "r1").await;
    assert_eq!(
        kinds.iter().filter(|k| *k == "silenced").count(),
        2,
        "one per run: {kinds:?}"
    );
    assert_eq!(kinds.last().map(String::as_str), Some("silence_expired"));
}

/// [`POLICY`] with migrations run file by file.
fn migrating_policy() -> String {
    format!(
        "{POLICY}migrations:\n  dir: migrations/{{version}}\n  command: [\"psql\", \"-f\", \"{{file}}\"]\n"
    )
}

/// A controller of [`migrating_policy`] with three files in `dir`, the policy's
/// directory joined with `migrations/v2` as `rampart run -f` spelled it.
fn migrating_controller(world: &Arc<FakeWorld>, store: &Arc<StateStore>, dir: &str) -> Controller {
    use rampart_core::admission::MigrationPlan;
    Controller::new(
        Policy::from_yaml(&migrating_policy()).unwrap(),
        ports(world, store.clone()),
        Arc::new(Silent),
    )
    .with_migrations(MigrationPlan {
        files: ["001.sql", "002.sql", "003.sql"]
            .iter()
            .map(|f| std::path::Path::new(dir).join(f))
            .collect(),
        class: rampart_core::migrations::Class::Expand,
        annotations: Vec::new(),
    })
}

/// The files the world was asked to run (their names), in order.
fn files_run(world: &FakeWorld) -> Vec<String> {
    world
        .gate_commands()
        .into_iter()
        .filter_map(|argv| {
            let path = std::path::PathBuf::from(argv.last()?);
            Some(path.file_name()?.to_string_lossy().into_owned())
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_migration_file_running_when_the_controller_died_is_never_run_again() {
    let world = FakeWorld::new();
    world.set_gate_secs(10);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    // Each file takes 10 s: at 25 s the first two are applied and the third runs.
    let first = migrating_controller(&world, &store, "deploy/migrations/v2");
    crash_after(first, &migrating_policy(), 25).await;
    assert_eq!(files_run(&world), ["001.sql", "002.sql", "003.sql"]);

    // Taken up again from another directory: `-f rampart.yaml` from `deploy/`.
    let second = migrating_controller(&world, &store, "migrations/v2");
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(
        files_run(&world),
        ["001.sql", "002.sql", "003.sql"],
        "nothing runs again: not the files applied, not the one whose effect is unknown"
    );
    assert_eq!(end.phase, Phase::Blocked, "{:?}", end.decision);
    let reason = end.decision.unwrap().reason;
    assert!(
        reason.contains(
            "2 applied (001.sql, 002.sql), then the controller stopped while 003.sql ran"
        ),
        "{reason}"
    );
    assert_eq!(world.deploys(), 0, "nothing was deployed");
    let marks = store.migration_marks("r1").await.unwrap();
    assert_eq!(
        marks,
        [
            ("001.sql".to_string(), MigrationMark::Started),
            ("001.sql".to_string(), MigrationMark::Applied),
            ("002.sql".to_string(), MigrationMark::Started),
            ("002.sql".to_string(), MigrationMark::Applied),
            ("003.sql".to_string(), MigrationMark::Started),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn migration_files_applied_before_a_restart_are_skipped_and_the_rest_applied() {
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let c = migrating_controller(&world, &store, "migrations/v2");
    c.create("r1", "v2", &migrating_policy()).await.unwrap();
    // What a controller that died between two files left on the record.
    for mark in [MigrationMark::Started, MigrationMark::Applied] {
        store
            .mark_migration("r1", "001.sql", mark, 1_000_000)
            .await
            .unwrap();
    }
    let end = c.drive("r1", Some("v1".into()), None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded, "{:?}", end.decision);
    assert_eq!(files_run(&world), ["002.sql", "003.sql"]);
    let (_, log) = store.load("r1").await.unwrap();
    let migrated = log
        .iter()
        .flat_map(|e| &e.events)
        .find(|e| e.kind == "migrated")
        .unwrap();
    assert!(
        migrated
            .message
            .contains("3 file(s): migrations/v2/001.sql, migrations/v2/002.sql, migrations/v2/003.sql (1 applied before the controller restarted, not run again)"),
        "{}",
        migrated.message
    );
}

/// rampart's own counters as a test sets them: cumulative, read at any time.
#[derive(Clone, Debug, Default)]
struct Counted(Arc<std::sync::Mutex<rampart_core::metrics::IntervalSample>>);

impl rampart_adapters::proxy::Totals for Counted {
    fn totals(&self) -> rampart_core::metrics::IntervalSample {
        self.0.lock().unwrap().clone()
    }
}

/// Tells when a release waits for an approval.
struct Asked(tokio::sync::watch::Sender<bool>);

impl rampart_controller::Observer for Asked {
    fn on_transition(&self, _: &Input, state: &Release, _: &[rampart_core::release::AuditEvent]) {
        self.0.send_replace(state.phase == Phase::AwaitingApproval);
    }
}

/// Review: rampart's own counters are read as totals since their last reading, so the
/// first window of the step after an approval counted the whole wait before it, at
/// the weight before. A canary failing from that step's weight on was diluted by
/// ten minutes of healthy traffic and passed that window; it is caught in its own.
#[tokio::test(start_paused = true)]
async fn the_first_window_after_an_approval_counts_none_of_the_wait() {
    // The usual policy with an approval point between its steps.
    let approved = POLICY.replace(
        "steps: [{weight: 10, bake: 5m}, {weight: 50, bake: 5m}]",
        "steps: [{weight: 10, bake: 1m}, {approval: releaser}, {weight: 50, bake: 5m}]",
    );
    assert_ne!(approved, POLICY);
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let clock = Arc::new(TokioClock::starting_at(1_000_000));
    let mut ports = world.ports(store.clone(), store.clone(), clock.clone());
    let counted = Counted::default();
    ports.metrics = Arc::new(rampart_adapters::proxy::BuiltinMetrics::new(
        counted.clone(),
    ));
    let (asked, mut waiting) = tokio::sync::watch::channel(false);
    let c = Controller::new(
        Policy::from_yaml(&approved).unwrap(),
        ports,
        Arc::new(Asked(asked)),
    )
    .with_initiator("alice");
    c.create("r1", "v2", &approved).await.unwrap();
    // Every second, 100 requests on each side; from 50 % on, a fifth of the canary's fail.
    let traffic = {
        let (world, counted) = (world.clone(), counted.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            loop {
                every.tick().await;
                let failing = world.weight() >= Weight::from_percent(50).unwrap();
                let mut s = counted.0.lock().unwrap();
                s.stable.requests += 100;
                s.canary.requests += 100;
                s.canary.errors += if failing { 20 } else { 0 };
            }
        })
    };
    // Approved ten minutes after the release reached its approval point.
    let approver = async {
        waiting.wait_for(|w| *w).await.unwrap();
        tokio::time::sleep(Duration::from_secs(600)).await;
        let at = rampart_core::ports::Clock::now(clock.as_ref());
        let cmd = OperatorCommand {
            kind: CommandKind::Approve,
            actor: "bob".into(),
            reason: "looks fine".into(),
            force: false,
            at,
        };
        store.push_command("shop", &cmd).await.unwrap();
        at
    };
    let (end, approved_at) = tokio::join!(c.drive("r1", Some("v1".into()), None), approver);
    traffic.abort();
    let end = end.unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    // The step's first window is its first 30 s: 100 canary requests a second.
    let (_, log) = store.load("r1").await.unwrap();
    let first = log
        .iter()
        .find_map(|e| match &e.input {
            Input::Measured { sample } if e.at > approved_at => Some((e.at, sample)),
            _ => None,
        })
        .unwrap();
    assert_eq!(first.0 - approved_at, 30_000);
    assert_eq!(first.1.canary.requests, 30 * 100, "the wait was counted");
    // Two failing windows roll back (the default): the first two of the step.
    let decided = end.decision.unwrap().at;
    assert_eq!(decided - approved_at, 60_000);
}

/// Which window each transition opened: `open` (a fresh one) or `resume` (the
/// resumed step's, which a data plane that ran on counts from its last measurement).
struct Windows {
    inner: Arc<dyn MetricsSource>,
    calls: Arc<std::sync::Mutex<Vec<&'static str>>>,
}

impl MetricsSource for Windows {
    fn measure<'a>(
        &'a self,
        window: &'a rampart_core::release::MeasureWindow,
    ) -> BoxFuture<'a, Result<rampart_core::metrics::IntervalSample, PortError>> {
        self.inner.measure(window)
    }

    fn open_window(&self, at: rampart_core::Millis) -> BoxFuture<'_, ()> {
        self.calls.lock().unwrap().push("open");
        self.inner.open_window(at)
    }

    fn resume_window(&self, at: rampart_core::Millis) -> BoxFuture<'_, ()> {
        self.calls.lock().unwrap().push("resume");
        self.inner.resume_window(at)
    }
}

/// A controller whose metrics record the windows it opens.
fn recording(
    world: &Arc<FakeWorld>,
    store: &Arc<StateStore>,
    policy: &str,
) -> (Controller, Arc<std::sync::Mutex<Vec<&'static str>>>) {
    let mut p = ports(world, store.clone());
    let calls = Arc::new(std::sync::Mutex::new(Vec::new()));
    p.metrics = Arc::new(Windows {
        inner: p.metrics.clone(),
        calls: calls.clone(),
    });
    let c = Controller::new(Policy::from_yaml(policy).unwrap(), p, Arc::new(Silent));
    (c, calls)
}

#[tokio::test(start_paused = true)]
async fn a_release_resumed_mid_step_keeps_the_steps_window_and_only_that_one() {
    // Crashed inside the second step's bake: the resumed controller's first window is
    // the step's own (what the versions served meanwhile is judged), every later one
    // fresh.
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    crash_after(controller(&world, &store), POLICY, 7 * 60).await;
    let (second, calls) = recording(&world, &store, POLICY);
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded);
    let calls = calls.lock().unwrap().clone();
    assert_eq!(calls.first(), Some(&"resume"), "{calls:?}");
    assert!(calls[1..].iter().all(|c| *c == "open"), "{calls:?}");
}

#[tokio::test(start_paused = true)]
async fn a_release_resumed_at_an_approval_point_opens_the_next_steps_window_fresh() {
    // Crashed while waiting for an approval between steps: nothing of the wait is
    // the next step's, so its window opens fresh after the approval.
    let approved = POLICY.replace(
        "steps: [{weight: 10, bake: 5m}, {weight: 50, bake: 5m}]",
        "steps: [{weight: 10, bake: 1m}, {approval: releaser}, {weight: 50, bake: 5m}]",
    );
    assert_ne!(approved, POLICY);
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let first = Controller::new(
        Policy::from_yaml(&approved).unwrap(),
        ports(&world, store.clone()),
        Arc::new(Silent),
    )
    .with_initiator("alice");
    crash_after(first, &approved, 5 * 60).await;
    let (second, calls) = recording(&world, &store, &approved);
    let second = second.with_initiator("alice");
    let cmd = OperatorCommand {
        kind: CommandKind::Approve,
        actor: "bob".into(),
        reason: "fine".into(),
        force: false,
        at: 2_000_000,
    };
    store.push_command("shop", &cmd).await.unwrap();
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Succeeded, "{end:?}");
    let calls = calls.lock().unwrap().clone();
    assert!(
        !calls.is_empty() && calls.iter().all(|c| *c == "open"),
        "{calls:?}"
    );
}

/// A flag store that refuses to change one flag.
struct Refusing {
    inner: Arc<StateStore>,
    refused: &'static str,
}

impl FlagStore for Refusing {
    fn define<'a>(
        &'a self,
        service: &'a str,
        defs: &'a [rampart_core::flags::FlagDef],
        at: rampart_core::Millis,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.inner.define(service, defs, at)
    }

    fn flags<'a>(
        &'a self,
        service: &'a str,
    ) -> BoxFuture<'a, Result<Vec<rampart_core::flags::FlagState>, PortError>> {
        self.inner.flags(service)
    }

    fn set_flag<'a>(
        &'a self,
        service: &'a str,
        change: &'a FlagChange,
    ) -> BoxFuture<'a, Result<rampart_core::flags::FlagState, PortError>> {
        if change.name == self.refused {
            return Box::pin(async { Err(PortError::new("the flag store is read-only")) });
        }
        self.inner.set_flag(service, change)
    }
}

/// Level 1 switches every `rollback.flags` kill switch off: one the store refuses
/// must not leave the ones after it on (the rollback goes on to the traffic, and
/// those flags would stay on for everyone).
#[tokio::test(start_paused = true)]
async fn a_kill_switch_that_cannot_be_switched_off_leaves_none_after_it_on() {
    let policy = format!(
        "{POLICY}flags:\n  define:\n    - {{name: first, default: true}}\n    - {{name: second, default: true}}\nrollback: {{flags: [first, second]}}\n"
    );
    let world = FakeWorld::new();
    world.set_canary_errors_per_mille(200);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let flags = Arc::new(Refusing {
        inner: store.clone(),
        refused: "first",
    });
    let p = Policy::from_yaml(&policy).unwrap();
    FlagStore::define(&*store, "shop", &p.flags.as_ref().unwrap().define, 0)
        .await
        .unwrap();
    let clock = Arc::new(TokioClock::starting_at(1_000_000));
    let c = Controller::new(
        p,
        world.ports(store.clone(), flags, clock),
        Arc::new(Silent),
    );
    c.create("r1", "v2", &policy).await.unwrap();
    let end = c.drive("r1", Some("v1".into()), None).await.unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    let states = FlagStore::flags(&*store, "shop").await.unwrap();
    let second = states.iter().find(|f| f.name == "second").unwrap();
    assert!(
        !second.default,
        "`second` stayed on because `first` could not be switched off: {states:?}"
    );
    assert_eq!(
        world.weight(),
        Weight::ZERO,
        "level 2 moved the traffic back"
    );
}

/// Two replicas of the new colour; the preview's health check fails on the second.
struct TwoReplicas(Arc<FakeWorld>);

impl Deployer for TwoReplicas {
    fn deploy<'a>(
        &'a self,
        v: Variant,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async move {
            let mut d = self.0.deploy(v, version).await?;
            if v == Variant::Canary {
                d.endpoints = vec![
                    "127.0.0.1:7001".parse().unwrap(),
                    "127.0.0.1:7002".parse().unwrap(),
                ];
            }
            Ok(d)
        })
    }

    fn scale<'a>(
        &'a self,
        v: Variant,
        version: &'a str,
        n: u32,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        self.0.scale(v, version, n)
    }

    fn trim(&self, v: Variant, n: u32) -> BoxFuture<'_, Result<String, PortError>> {
        self.0.trim(v, n)
    }

    fn stop(&self, v: Variant) -> BoxFuture<'_, Result<String, PortError>> {
        self.0.stop(v)
    }

    fn verify(&self, v: Variant, t: Duration) -> BoxFuture<'_, Result<String, PortError>> {
        self.0.verify(v, t)
    }
}

/// Answers every HTTP check but those on port 7002.
struct SecondReplicaUnhealthy(Mutex<Vec<String>>);

impl GateRunner for SecondReplicaUnhealthy {
    fn run<'a>(&'a self, gate: &'a rampart_core::policy::Gate) -> BoxFuture<'a, GateResult> {
        let url = match &gate.check {
            rampart_core::policy::GateCheck::Http { url, .. } => url.clone(),
            _ => String::new(),
        };
        self.0.lock().unwrap().push(url.clone());
        Box::pin(async move {
            GateResult {
                name: gate.name.clone(),
                ok: !url.contains(":7002"),
                detail: format!("{url} answered"),
            }
        })
    }
}

/// A preview (or post-release) health check on a path asked the new version's first
/// replica only: a second replica that fails it went on to serve its share of users.
/// Every replica is asked; the one that fails is named.
#[tokio::test(start_paused = true)]
async fn a_preview_health_check_asks_every_replica_of_the_new_colour() {
    let policy = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy:
  blue_green:
    preview: [{http: /healthz}]
    stability: 1m
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - metric: error_rate
      judge: {max: 5%}
"#;
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let mut ports = ports(&world, store.clone());
    ports.deployer = Arc::new(TwoReplicas(world.clone()));
    let gates = Arc::new(SecondReplicaUnhealthy(Mutex::new(Vec::new())));
    ports.gates = gates.clone();
    let c = Controller::new(Policy::from_yaml(policy).unwrap(), ports, Arc::new(Silent));
    c.create("r1", "v2", policy).await.unwrap();
    let end = c.drive("r1", Some("v1".into()), None).await.unwrap();
    assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.decision);
    let asked = gates.0.lock().unwrap().clone();
    assert!(
        asked.iter().any(|u| u == "http://127.0.0.1:7002/healthz"),
        "{asked:?}"
    );
    let reason = end.decision.unwrap().reason;
    assert!(reason.contains("replica 2 of 2"), "{reason}");
    assert_eq!(
        world.weight(),
        Weight::ZERO,
        "no user reached the new colour"
    );
}
