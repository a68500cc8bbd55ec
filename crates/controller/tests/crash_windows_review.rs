//! Review of the crash windows between a log entry and the effects it leads to, in the
//! test kit's fake world on tokio's paused clock. A "crash" right after an entry is
//! appended is an observer that panics on that transition: the observer is called after
//! the append and before the transition's effects (its notices) are handed on, so the
//! controller dies exactly there, as a SIGKILL at that instant would leave it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_controller::{Controller, Observer, Silent};
use rampart_core::policy::Policy;
use rampart_core::ports::{BoxFuture, Notice, Notifier, Store};
use rampart_core::release::{AuditEvent, Input, NoticeKind, Phase, Release};
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

/// Records the kind of every notice delivered (the pages people get).
#[derive(Default)]
struct Pages(Mutex<Vec<NoticeKind>>);

impl Notifier for Pages {
    fn notify<'a>(&'a self, n: &'a Notice) -> BoxFuture<'a, ()> {
        self.0.lock().unwrap().push(n.kind);
        Box::pin(async {})
    }
}

/// Dies (panics) right after the transition into `phase` is persisted, before its
/// effects run: the controller's crash in that window.
struct DiesAt(Phase);

impl Observer for DiesAt {
    fn on_transition(&self, _: &Input, state: &Release, _: &[AuditEvent]) {
        if state.phase == self.0 {
            panic!("controller killed right after logging phase {:?}", self.0);
        }
    }
}

fn controller(
    world: &Arc<FakeWorld>,
    store: &Arc<StateStore>,
    pages: Arc<Pages>,
    observer: Arc<dyn Observer>,
) -> Controller {
    let mut ports = world.ports(
        store.clone(),
        store.clone(),
        Arc::new(TokioClock::starting_at(1_000_000)),
    );
    ports.notifier = pages;
    Controller::new(Policy::from_yaml(POLICY).unwrap(), ports, observer)
}

/// Both versions break the absolute limit: the release halts ("rolling back would not
/// help") and pages a human, the one thing a halt does for the service. The controller
/// is killed right after the halt is logged, before the page went out. The same command
/// again takes the release up: its log ends in `halted`, so the resumed controller only
/// records the end, and nothing ever pages.
///
/// docs/safety.md: "Where rampart stops and pages you ... halts and pages"; "Every page
/// goes to the terminal and to the policy's notify hooks". A notice is an effect of the
/// transition that decided it, performed after its log entry like any other, but it is
/// the only effect a resume never re-issues: `step` on a terminal phase does nothing but
/// expire the silence.
///
/// Expected: the resumed controller sends the halt's page that the dead one never sent
/// (at least once). Observed: no `halted` notice is ever delivered.
#[tokio::test(start_paused = true)]
async fn a_halt_logged_just_before_a_crash_is_still_paged_when_the_release_resumes() {
    let world = FakeWorld::new();
    world.set_canary_errors_per_mille(300);
    world.set_stable_errors_per_mille(300);
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    let first_pages = Arc::new(Pages::default());
    let first = controller(
        &world,
        &store,
        first_pages.clone(),
        Arc::new(DiesAt(Phase::Halted)),
    );
    first.create("r1", "v2", POLICY).await.unwrap();
    let crashed =
        tokio::spawn(async move { first.drive("r1", Some("v1".into()), None).await }).await;
    assert!(
        crashed
            .as_ref()
            .is_err_and(tokio::task::JoinError::is_panic),
        "the controller was to die right after logging the halt: {:?}",
        crashed.map(|r| r.map(|s| s.phase))
    );
    let (_, log) = store.load("r1").await.unwrap();
    assert!(
        log.iter()
            .flat_map(|e| &e.events)
            .any(|e| e.kind == "halted"),
        "the halt is in the log"
    );
    assert!(
        !first_pages.0.lock().unwrap().contains(&NoticeKind::Halted),
        "the first controller died before paging"
    );

    // The same command again: the release is taken up and ends.
    let pages = Arc::new(Pages::default());
    let second = controller(&world, &store, pages.clone(), Arc::new(Silent));
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::Halted);
    assert!(
        store.active("shop").await.unwrap().is_none(),
        "recorded finished"
    );
    let delivered = pages.0.lock().unwrap().clone();
    assert!(
        delivered.contains(&NoticeKind::Halted),
        "the halt was never paged: the resumed release delivered only {delivered:?}"
    );
}

/// The fake world's router, except that the controller dies right after the router put
/// `crash_at` in force, before the answer is logged.
struct DiesAfterWeight {
    world: Arc<FakeWorld>,
    crash_at: rampart_core::Weight,
}

impl rampart_core::ports::TrafficRouter for DiesAfterWeight {
    fn set_backends<'a>(
        &'a self,
        v: rampart_core::Variant,
        e: &'a [std::net::SocketAddr],
    ) -> BoxFuture<'a, Result<(), rampart_core::ports::PortError>> {
        self.world.set_backends(v, e)
    }

    fn set_weight<'a>(
        &'a self,
        w: rampart_core::Weight,
        m: &'a [rampart_core::policy::RouteMatch],
    ) -> BoxFuture<'a, Result<rampart_core::Weight, rampart_core::ports::PortError>> {
        Box::pin(async move {
            let set = self.world.set_weight(w, m).await;
            if w == self.crash_at {
                panic!("controller killed right after the router put {w} in force");
            }
            set
        })
    }

    fn drain(
        &self,
        v: rampart_core::Variant,
        t: std::time::Duration,
    ) -> BoxFuture<'_, Result<(), rampart_core::ports::PortError>> {
        self.world.drain(v, t)
    }

    fn drain_endpoints<'a>(
        &'a self,
        e: &'a [std::net::SocketAddr],
        t: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), rampart_core::ports::PortError>> {
        self.world.drain_endpoints(e, t)
    }
}

/// The first step's weight (10 %) is put in force and the controller dies before logging
/// it: users are on the new version, its log says 0 %. While it is down, an operator
/// asks for a rollback (`rampart rollback shop`, applied when the release resumes). The
/// resumed controller applies the request before re-establishing anything, and decides
/// the rollback on the weight its log recorded: 0 %, "no user reached the new code", so
/// level 1 (the policy's kill switch `new-path` off) is skipped and the switch stays on.
///
/// Without the crash the same request at the same point rolls back from 10 % and turns
/// the kill switch off first. docs/operations.md: "A rollback that arrives while a
/// traffic change is being applied waits for the router's answer, then starts from the
/// weight in force: whether users met the new version ... are then what the router has,
/// not what it had before"; a traffic change re-issued by the resume is such a change
/// (in `operator::abort` it is deferred only when the `SetWeight` is the action pending,
/// or past the switch to 100 %, not while the resume re-deploys before it).
///
/// Expected: the kill switch is switched off (the rollback starts from the weight in
/// force, 10 %). Observed: it stays on, and the rollback starts "at 0 %".
#[tokio::test(start_paused = true)]
async fn a_rollback_asked_while_the_controller_was_down_after_an_unlogged_weight_still_switches_flags_off()
 {
    use rampart_core::ports::{CommandKind, FlagStore, OperatorCommand};
    let policy = format!(
        "{POLICY}flags:\n  define:\n    - {{name: new-path, default: true}}\nrollback: {{flags: [new-path]}}\n"
    );
    let p = Policy::from_yaml(&policy).unwrap();
    let world = FakeWorld::new();
    let store = Arc::new(StateStore::in_memory().await.unwrap());
    FlagStore::define(&*store, "shop", &p.flags.as_ref().unwrap().define, 0)
        .await
        .unwrap();
    let ten = rampart_core::Weight::from_percent(10).unwrap();
    let mut ports = world.ports(
        store.clone(),
        store.clone(),
        Arc::new(TokioClock::starting_at(1_000_000)),
    );
    ports.router = Arc::new(DiesAfterWeight {
        world: world.clone(),
        crash_at: ten,
    });
    let first = Controller::new(p.clone(), ports, Arc::new(Silent));
    first.create("r1", "v2", &policy).await.unwrap();
    let crashed =
        tokio::spawn(async move { first.drive("r1", Some("v1".into()), None).await }).await;
    assert!(crashed.is_err_and(|e| e.is_panic()));
    assert_eq!(world.weight(), ten, "users are on the new version");
    let (_, log) = store.load("r1").await.unwrap();
    assert!(
        !log.iter()
            .any(|e| matches!(e.input, Input::TrafficSet { .. })),
        "the weight was never logged"
    );

    // While no controller runs: `rampart rollback shop`.
    store
        .push_command(
            "shop",
            &OperatorCommand {
                kind: CommandKind::Rollback,
                actor: "oncall".into(),
                reason: "checkout errors".into(),
                force: false,
                at: 1_000_000,
            },
        )
        .await
        .unwrap();
    let second = Controller::new(
        p,
        world.ports(
            store.clone(),
            store.clone(),
            Arc::new(TokioClock::starting_at(1_000_000)),
        ),
        Arc::new(Silent),
    );
    let end = second.drive("r1", None, None).await.unwrap();
    assert_eq!(end.phase, Phase::RolledBack);
    assert_eq!(world.weight(), rampart_core::Weight::ZERO);
    let states = FlagStore::flags(&*store, "shop").await.unwrap();
    let kill = states.iter().find(|f| f.name == "new-path").unwrap();
    let (_, log) = store.load("r1").await.unwrap();
    let started: Vec<String> = log
        .iter()
        .flat_map(|e| &e.events)
        .filter(|e| e.kind == "rollback_started")
        .map(|e| format!("{} at {}", e.message, e.weight))
        .collect();
    assert!(
        !kill.default && kill.ramp == rampart_core::Weight::ZERO,
        "users met the new version at 10 %, yet the rollback left the kill switch on: {kill:?}; {started:?}"
    );
}
