#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the release guardrails: approvals, release windows and
//! freezes, driven through the real state machine on virtual time (every instant is
//! an explicit `now`; nothing sleeps or reads a clock). Each test fails on the
//! reviewed code and should pass once the guarantee it names holds.

mod common;

use common::stats;
use rampart_core::metrics::IntervalSample;
use rampart_core::migrations::Class;
use rampart_core::release::{Action, Input, Phase, Release, Variant, step};
use rampart_core::{Millis, Policy, Weight};

fn healthy() -> IntervalSample {
    IntervalSample {
        stable: stats(900, 1),
        canary: stats(100, 0),
        ..Default::default()
    }
}

fn start(stable: Option<&str>, planned: Option<rampart_core::migrations::Class>) -> Input {
    Input::Start {
        release_id: "r".into(),
        version: "v2".into(),
        stable: stable.map(str::to_string),
        automatic_rollbacks: 0,
        initiator: "alice".into(),
        planned_migrations: planned,
        hotfix: None,
    }
}

/// The successful answer to `action` (migrations: contract; measurements: healthy).
fn answer(action: &Action) -> Input {
    common::succeeded(action, Class::Contract)
        .unwrap_or_else(|| Input::Measured { sample: healthy() })
}

/// Drives a healthy release on virtual time (every action succeeds at once, every wait
/// is a `Tick` at the release's own wake-up time) until `stop` holds. Returns the state,
/// the time, and every action asked for with the time it was asked.
fn drive_until(
    p: &Policy,
    mut s: Release,
    mut now: Millis,
    stop: impl Fn(&Release) -> bool,
) -> (Release, Millis, Vec<(Action, Millis)>) {
    let mut asked = Vec::new();
    if let Some(a) = &s.pending {
        asked.push((a.clone(), now));
    }
    for _ in 0..10_000 {
        if stop(&s) || s.phase.is_terminal() {
            break;
        }
        let input = match &s.pending {
            Some(a) => answer(a),
            None => {
                now = now.max(
                    s.wake_at()
                        .unwrap_or_else(|| panic!("stuck in {:?}", s.phase)),
                );
                Input::Tick
            }
        };
        let before = s.pending.clone();
        s = step(p, &s, &input, now).state;
        if let Some(a) = &s.pending
            && (before.as_ref() != Some(a) || matches!(input, Input::Tick))
        {
            asked.push((a.clone(), now));
        }
    }
    assert!(
        stop(&s),
        "stopped in {:?} before the condition held",
        s.phase
    );
    (s, now, asked)
}

const APPROVAL: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy:
  canary:
    steps:
      - {weight: 10, bake: 1m}
      - {approval: {role: release-manager, timeout: 2h}}
      - {weight: 50, bake: 1m}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#;

const T0: Millis = 1_000_000;

/// A healthy release under `p` driven to its approval point.
fn at_approval(p: &Policy) -> (Release, Millis) {
    let s = step(p, &Release::default(), &start(Some("v1"), None), T0).state;
    let (s, now, _) = drive_until(p, s, T0, |s| s.phase == Phase::AwaitingApproval);
    (s, now)
}

/// Whether a `Deploy` of the canary was asked before the canary's weight went above
/// `held`.
fn canary_ensured_before_weight_above(asked: &[(Action, Millis)], held: Weight) -> bool {
    for (a, _) in asked {
        match a {
            Action::Deploy {
                variant: Variant::Canary,
                ..
            } => return true,
            Action::SetWeight { weight, .. } if *weight > held => return false,
            _ => {}
        }
    }
    true
}

// 1. A restarted controller re-establishes the world before going on: on `Resumed` at an
// approval point it asks to deploy stable, then the canary, then re-applies the weight
// (resume.rs: "re-establish the world this state assumes ... before going on"). The
// controller applies waiting operator commands right before starting a version
// (controller lib.rs: "Before starting a version ... apply what operators asked
// meanwhile"), so an approval given while the controller was down is fed while that
// re-establishing `Deploy` is pending. `approved` (operator.rs) then calls `next_step`,
// whose `b.chain(..)` overwrites `pending` and the queue: the canary's Deploy is never
// asked, and traffic moves to 50 % onto a canary that may have died with the controller.
#[test]
fn an_approval_taken_during_a_restart_does_not_skip_re_deploying_the_canary() {
    let p = Policy::from_yaml(APPROVAL).unwrap();
    let (s, now) = at_approval(&p);
    assert_eq!(s.weight, Weight::from_percent(10).unwrap());
    let restart = now + 60_000;
    let resumed = step(&p, &s, &Input::Resumed, restart).state;
    let mut asked = vec![(resumed.pending.clone().unwrap(), restart)];
    let approval = Input::Approved {
        by: "bob".into(),
        asked_at: Some(restart),
    };
    // Taken now or once the world is re-established: either way it must not be lost
    // (the drive below ends only once the release went past the approval point).
    let t = step(&p, &resumed, &approval, restart + 1);
    let (_, _, more) = drive_until(&p, t.state, restart + 1, |s| {
        s.phase == Phase::Progressing && s.weight > Weight::from_percent(10).unwrap()
    });
    asked.extend(more);
    assert!(
        canary_ensured_before_weight_above(&asked, s.weight),
        "after a restart the canary must be re-deployed before more traffic goes to it: {asked:?}"
    );
}

// 1b. The same with an operator's promotion fed while the restart's Deploy is pending:
// `promote` sets weight 100 % over the pending re-establishing chain, so every user goes
// to a canary that was never brought back.
#[test]
fn a_promotion_taken_during_a_restart_does_not_skip_re_deploying_the_canary() {
    let p = Policy::from_yaml(APPROVAL).unwrap();
    let s = step(&p, &Release::default(), &start(Some("v1"), None), T0).state;
    let (s, now, _) = drive_until(&p, s, T0, |s| {
        s.phase == Phase::Progressing && s.weight > Weight::ZERO && s.pending.is_none()
    });
    let restart = now + 10_000;
    let resumed = step(&p, &s, &Input::Resumed, restart).state;
    let mut asked = vec![(resumed.pending.clone().unwrap(), restart)];
    let promote = Input::Promote {
        actor: "bob".into(),
        reason: "looks good".into(),
        frozen: None,
    };
    let t = step(&p, &resumed, &promote, restart + 1);
    let (_, _, more) = drive_until(&p, t.state, restart + 1, |s| s.weight == Weight::FULL);
    asked.extend(more);
    assert!(
        canary_ensured_before_weight_above(&asked, s.weight),
        "after a restart the canary must be re-deployed before all traffic goes to it: {asked:?}"
    );
}

// 2. "Without an approval before the timeout, the release rolls back" (policy.md,
// steps[].approval). `approved` never looks at the approval point's timer: an approval
// asked after the timeout passed is accepted whenever it is fed before the `Tick` that
// would time the point out (the controller's select between its sleep and a command,
// or any restart: the tick waits behind the re-establishing chain while waiting
// commands are fed first), and the release goes on to 50 %.
#[test]
fn an_approval_asked_after_the_approval_point_timed_out_does_not_pass_it() {
    let p = Policy::from_yaml(APPROVAL).unwrap();
    let (s, _) = at_approval(&p);
    let deadline = s.timer.unwrap();
    let late = deadline + 10 * 60_000;
    let t = step(
        &p,
        &s,
        &Input::Approved {
            by: "bob".into(),
            asked_at: Some(late),
        },
        late,
    );
    let (end, _, _) = drive_until(&p, t.state, late, |s| {
        s.phase.is_terminal() || s.weight > Weight::from_percent(10).unwrap()
    });
    assert_eq!(
        end.phase,
        Phase::RolledBack,
        "no approval came before the timeout, so the release rolls back (weight {})",
        end.weight
    );
}

// 2b. The same for breaking migrations: "without an approval in time it is blocked
// (exit 5) with nothing applied or deployed" (policy.md, migrations.approval). A late
// approval applies contract migrations instead.
#[test]
fn breaking_migrations_approved_after_their_timeout_are_not_applied() {
    use rampart_core::migrations::Class;
    let p = Policy::from_yaml(&format!(
        "{APPROVAL}migrations: {{dir: m, command: [psql, -f, \"{{file}}\"], approval: {{role: dba, timeout: 1h}}}}\n"
    ))
    .unwrap();
    let s = step(
        &p,
        &Release::default(),
        &start(Some("v1"), Some(Class::Contract)),
        T0,
    )
    .state;
    let s = step(&p, &s, &Input::GatesChecked { results: vec![] }, T0 + 1).state;
    assert_eq!(s.phase, Phase::AwaitingApproval);
    let late = s.timer.unwrap() + 60_000;
    let t = step(
        &p,
        &s,
        &Input::Approved {
            by: "bob".into(),
            asked_at: Some(late),
        },
        late,
    );
    assert_ne!(
        t.state.pending,
        Some(Action::RunMigrations),
        "an approval after the timeout must not apply breaking migrations"
    );
    let end = step(&p, &t.state, &Input::Tick, late);
    assert_eq!(end.state.phase, Phase::Blocked);
}

/// A first release (no stable) of `p` started at `at`, inside its window: its gates
/// are asked for at once.
fn first_release_inside_the_window(p: &Policy, at: Millis) -> Release {
    let s = step(p, &Release::default(), &start(None, None), at).state;
    assert_eq!(
        s.pending,
        Some(Action::RunGates),
        "started inside the window"
    );
    s
}

/// Milliseconds since the epoch of a UTC wall-clock time.
fn utc(s: &str) -> Millis {
    let dt: jiff::civil::DateTime = s.parse().unwrap();
    let z = dt.to_zoned(jiff::tz::TimeZone::UTC).unwrap();
    u64::try_from(z.timestamp().as_millisecond()).unwrap()
}

// 3. A freeze is "from `from` up to (not including) `to`" in the windows' time zone,
// but `Windows::frozen` (windows.rs) compares civil (wall-clock) times. On the night
// clocks go back, wall-clock time repeats an hour: a freeze that began at 01:30 EDT
// (05:30 UTC) is not in force half an hour later, at 01:00 EST (06:00 UTC), whose wall
// clock reads before `from`. A release started then runs its gates at once instead of
// waiting for the freeze to end.
#[test]
fn a_freeze_stays_in_force_through_the_repeated_hour_when_clocks_go_back() {
    let p = Policy::from_yaml(&format!(
        "{APPROVAL}windows:\n  timezone: America/New_York\n  freeze:\n    - {{from: \"2026-11-01 01:30\", to: \"2026-11-02 00:00\", reason: migration weekend}}\n"
    ))
    .unwrap();
    let w = p.windows.as_ref().unwrap();
    // 01:45 EDT, inside the freeze: closed (as it should be).
    assert!(matches!(
        w.status(utc("2026-11-01 05:45")),
        rampart_core::windows::Status::Closed { freeze: true, .. }
    ));
    // 01:15 EST, 45 minutes later: still inside the freeze.
    let later = utc("2026-11-01 06:15");
    assert!(
        matches!(
            w.status(later),
            rampart_core::windows::Status::Closed { freeze: true, .. }
        ),
        "{:?}",
        w.status(later)
    );
    let t = step(&p, &Release::default(), &start(Some("v1"), None), later);
    assert_ne!(
        t.state.pending,
        Some(Action::RunGates),
        "no release starts inside a freeze"
    );
}

// 4. "Outside a window ... a release under way never goes to 100 % on its own"
// (policy.md, windows). An initial deployment (no stable) checks the window only at its
// start: `deployed` (progress.rs) sets weight 100 % as soon as the new version is ready,
// without `hold_for_window`. Started at 16:50 inside a 09:00-17:00 window, its version
// ready at 17:20 (readiness may take minutes), it takes all traffic outside the window,
// unattended, where a blue-green switch (the same "all at once") would wait.
#[test]
fn an_initial_deployment_does_not_go_to_full_traffic_outside_the_window() {
    let p = Policy::from_yaml(&format!(
        "{APPROVAL}windows:\n  timezone: UTC\n  allow:\n    - {{days: [mon-fri], hours: \"09:00-17:00\"}}\n"
    ))
    .unwrap();
    // 2026-11-25 is a Wednesday.
    let s = first_release_inside_the_window(&p, utc("2026-11-25 16:50"));
    let s = step(
        &p,
        &s,
        &Input::GatesChecked { results: vec![] },
        utc("2026-11-25 16:51"),
    )
    .state;
    assert!(matches!(
        s.pending,
        Some(Action::Deploy {
            variant: Variant::Canary,
            ..
        })
    ));
    let ready = utc("2026-11-25 17:20");
    let t = step(&p, &s, &answer(s.pending.as_ref().unwrap()), ready);
    assert_ne!(
        t.state.pending,
        Some(Action::SetWeight {
            weight: Weight::FULL,
            matches: vec![]
        }),
        "all traffic moved at {ready} outside the release window, unattended"
    );
}

// After the session's review of the fixes above: a first release waiting for the
// window (no version before it, weight 0) and restarted there, approved while the
// restart starts its version again. The approval must wait for that, and the release
// must end with all traffic on the version it started (not promoted at 0 %).
#[test]
fn a_first_release_approved_during_a_restart_ends_with_its_version_serving() {
    let p = Policy::from_yaml(&format!(
        "{APPROVAL}windows:\n  timezone: UTC\n  allow:\n    - {{days: [mon-fri], hours: \"09:00-17:00\"}}\n"
    ))
    .unwrap();
    let s = step(
        &p,
        &Release::default(),
        &start(None, None),
        utc("2026-11-25 16:50"),
    )
    .state;
    let ready = utc("2026-11-25 17:20");
    let (s, _, _) = drive_until(&p, s, ready, |s| s.phase == Phase::AwaitingApproval);
    let restart = ready + 60_000;
    let resumed = step(&p, &s, &Input::Resumed, restart).state;
    assert!(
        matches!(resumed.pending, Some(Action::Deploy { .. })),
        "{:?}",
        resumed.pending
    );
    let mut asked = vec![(resumed.pending.clone().unwrap(), restart)];
    let approval = Input::Approved {
        by: "bob".into(),
        asked_at: Some(restart),
    };
    let t = step(&p, &resumed, &approval, restart + 1);
    assert_eq!(
        t.state.pending, resumed.pending,
        "the approval replaced the version's start"
    );
    let (end, _, more) = drive_until(&p, t.state, restart + 1, |s| s.phase.is_terminal());
    asked.extend(more);
    assert_eq!(end.phase, Phase::Succeeded, "{:?}", end.decision);
    assert_eq!(
        end.weight,
        Weight::FULL,
        "promoted with {} of traffic",
        end.weight
    );
    assert!(
        canary_ensured_before_weight_above(&asked, Weight::ZERO),
        "traffic moved before the version ran again: {asked:?}"
    );
}

// A first release whose wait for the window ends at `max_wait` (no opening found
// within the horizon: a freeze of months, and a window only on Monday mornings, which
// the freeze's end, a Wednesday, is not) must look at the window again, not take all
// traffic inside the freeze.
#[test]
fn a_first_release_does_not_take_all_traffic_when_its_wait_ends_inside_a_freeze() {
    let p = Policy::from_yaml(&format!(
        "{APPROVAL}windows:\n  timezone: UTC\n  max_wait: 1d\n  allow:\n    - {{days: [mon], hours: \"09:00-10:00\"}}\n  freeze:\n    - {{from: \"2026-11-23 09:40\", to: \"2027-03-03 09:00\", reason: long freeze}}\n"
    ))
    .unwrap();
    // 2026-11-23 is a Monday: started inside the window, ready inside the freeze.
    let s = first_release_inside_the_window(&p, utc("2026-11-23 09:30"));
    let (s, now, _) = drive_until(&p, s, utc("2026-11-23 09:50"), |s| {
        s.phase == Phase::AwaitingApproval || s.phase.is_terminal()
    });
    assert_eq!(s.phase, Phase::AwaitingApproval, "{:?}", s.decision);
    let due = s.timer.unwrap();
    let t = step(&p, &s, &Input::Tick, due.max(now));
    assert!(
        !matches!(t.state.pending, Some(Action::SetWeight { weight, .. }) if weight == Weight::FULL),
        "all traffic moved inside a freeze when the wait ended"
    );
}

// 6. "No release starts and none goes to 100 % inside [a calendar freeze], except a
// hotfix" (policy.md). A release that started before a freeze and waits for approval
// of its breaking migrations applied them when approved inside the freeze: an
// irreversible change, made while nothing else may change. The approval is refused
// (the wait, and its deadline, go on); a hotfix's lifted freeze lets it through.
#[test]
fn breaking_migrations_are_not_applied_inside_a_calendar_freeze() {
    let p = Policy::from_yaml(&format!(
        "{APPROVAL}migrations: {{dir: m, command: [psql, -f, \"{{file}}\"], approval: {{role: dba, timeout: 2d}}}}\nwindows:\n  timezone: UTC\n  freeze:\n    - {{from: \"2026-12-21 00:00\", to: \"2026-12-22 00:00\", reason: year-end}}\n"
    ))
    .unwrap();
    let before = utc("2026-12-20T23:00:00");
    let s = step(
        &p,
        &Release::default(),
        &start(Some("v1"), Some(Class::Contract)),
        before,
    )
    .state;
    let s = step(&p, &s, &Input::GatesChecked { results: vec![] }, before + 1).state;
    assert_eq!(s.phase, Phase::AwaitingApproval);
    let approve = |s: &Release, at: Millis| {
        step(
            &p,
            s,
            &Input::Approved {
                by: "bob".into(),
                asked_at: Some(at),
            },
            at,
        )
    };
    let inside = utc("2026-12-21T10:00:00");
    let t = approve(&s, inside);
    assert_ne!(
        t.state.pending,
        Some(Action::RunMigrations),
        "breaking migrations were applied inside a calendar freeze"
    );
    assert_eq!(t.state.phase, Phase::AwaitingApproval, "the wait goes on");
    assert!(
        t.events
            .iter()
            .any(|e| e.kind == "approval_refused" && e.message.contains("year-end")),
        "{:?}",
        t.events
    );
    // After the freeze, the same wait takes an approval.
    let after = approve(&t.state, utc("2026-12-22T08:00:00"));
    assert_eq!(after.state.pending, Some(Action::RunMigrations));
}
