#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the rolling and flag strategies' state machine: rollbacks
//! taken up again after a controller restart. Driven through the real state machine
//! on virtual time (every instant an explicit `now`; nothing sleeps or reads a clock).
//! Each test fails on the reviewed code and should pass once the contract it names
//! holds.

mod common;

use common::{BLUE_GREEN_KEEPING, start, stats};
use rampart_core::metrics::IntervalSample;
use rampart_core::migrations::Class;
use rampart_core::release::{Action, Input, Phase, Release, step};
use rampart_core::{Millis, Policy, Weight};

fn healthy() -> IntervalSample {
    IntervalSample {
        stable: stats(900, 1),
        canary: stats(100, 0),
        ..Default::default()
    }
}

/// The new code fails half its requests; stable is fine.
fn failing() -> IntervalSample {
    IntervalSample {
        stable: stats(900, 1),
        canary: stats(100, 50),
        ..Default::default()
    }
}

/// Drives the release on virtual time, answering every action successfully
/// (measurements with `sample`), every wait with a `Tick` at the release's own wake-up
/// time, until `stop` holds or the release ends. Returns the state, the time, and every
/// action asked for.
fn drive(
    p: &Policy,
    mut s: Release,
    mut now: Millis,
    sample: fn() -> IntervalSample,
    stop: impl Fn(&Release) -> bool,
) -> (Release, Millis, Vec<Action>) {
    let mut asked = Vec::new();
    if let Some(a) = &s.pending {
        asked.push(a.clone());
    }
    for _ in 0..10_000 {
        if stop(&s) || s.phase.is_terminal() {
            break;
        }
        let input = match &s.pending {
            Some(a) => common::succeeded(a, Class::Expand)
                .unwrap_or_else(|| Input::Measured { sample: sample() }),
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
            asked.push(a.clone());
        }
    }
    (s, now, asked)
}

/// Feeds `Resumed` (a restarted controller) and drives the release to its end with
/// every answer a success and every measurement healthy. Returns the end state and
/// every action asked after the restart.
fn resume_to_end(p: &Policy, s: &Release, now: Millis) -> (Release, Vec<Action>) {
    let t = step(p, s, &Input::Resumed, now + 1);
    let (end, _, asked) = drive(p, t.state, now + 1, healthy, |_| false);
    assert!(end.phase.is_terminal(), "never ended: {:?}", end.phase);
    (end, asked)
}

fn flags_off_asked(asked: &[Action], flag: &str) -> bool {
    asked
        .iter()
        .any(|a| matches!(a, Action::FlagsOff { flags } if flags.iter().any(|f| f == flag)))
}

const T0: Millis = 1_000_000;

const FLAG_RELEASE: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080", sticky: {header: x-user}}}
flags:
  define:
    - {name: new-checkout}
    - {name: recs-v2, default: true}
strategy:
  flag:
    flag: new-checkout
    steps: [{weight: 20, bake: 1m}, {weight: 50, bake: 1m}]
rollback: {flags: [recs-v2]}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#;

/// Contract (docs/flags.md, docs/policy.md `rollback.flags`): "Level 1 of every
/// rollback sets them (and any ramped flag) to ramp 0, default off", and a rollback
/// taken up after a restart re-establishes what its state assumes (resume.rs: "switch
/// them off again (it is idempotent)"). A flag release whose controller dies while its
/// level-1 `FlagsOff` is in flight resumes through the generic rollback arm (weight 0,
/// verify stable) and never switches the `rollback.flags` kill switch off: the release
/// ends `rolled_back` with the kill switch still on for everyone.
#[test]
fn a_flag_release_resumed_mid_flags_off_still_switches_its_kill_switches_off() {
    let p = Policy::from_yaml(FLAG_RELEASE).unwrap();
    let s = step(&p, &Release::default(), &start("v1", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, failing, |s| s.phase == Phase::RollingBack);
    assert_eq!(s.phase, Phase::RollingBack, "the bad flag trips");
    assert!(
        matches!(&s.pending, Some(Action::FlagsOff { flags }) if flags.iter().any(|f| f == "recs-v2")),
        "level 1 asks for the kill switch off: {:?}",
        s.pending
    );
    // The controller dies with that FlagsOff in flight (never answered).
    let (end, asked) = resume_to_end(&p, &s, now);
    assert_eq!(end.phase, Phase::RolledBack);
    assert!(
        flags_off_asked(&asked, "recs-v2"),
        "after the restart the rollback never switched the kill switch `recs-v2` off; actions after the restart: {asked:?}"
    );
}

const ROLLING: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"], replicas: 4}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
flags:
  define:
    - {name: recs-v2, default: true}
strategy:
  rolling: {batch: 1, bake: 1m}
rollback: {flags: [recs-v2]}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#;

/// A rolling release driven healthy to its second batch (2 of 4 replicas new), then
/// tripped: the rollback starts at level 1 (`FlagsOff` pending).
fn rolling_at_level_one(p: &Policy) -> (Release, Millis) {
    let s = step(p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(p, s, T0, healthy, |s| {
        s.step == 1 && s.step_started_at.is_some() && s.pending.is_none()
    });
    assert_eq!((s.canary_replicas, s.stable_replicas), (2, 2), "{s:?}");
    let (s, now, _) = drive(p, s, now, failing, |s| s.phase == Phase::RollingBack);
    assert_eq!(s.phase, Phase::RollingBack, "the bad batch trips");
    assert_eq!(s.rollback_level, Some(1));
    assert!(
        matches!(&s.pending, Some(Action::FlagsOff { .. })),
        "{:?}",
        s.pending
    );
    (s, now)
}

/// Contract (docs/policy.md `rollback`, levels "each verified before the next";
/// `rollback.flags` "switched off at level 1 of any rollback"): a rolling release
/// whose controller dies while level 1's `FlagsOff` is in flight resumes through
/// `resume_rolling`, which restores the batches but never asks for the flags off, so
/// the kill switch stays on after a rollback that reports success.
#[test]
fn a_rolling_release_resumed_mid_flags_off_still_switches_its_kill_switches_off() {
    let p = Policy::from_yaml(ROLLING).unwrap();
    let (s, now) = rolling_at_level_one(&p);
    let (end, asked) = resume_to_end(&p, &s, now);
    assert_eq!(end.phase, Phase::RolledBack);
    assert!(
        flags_off_asked(&asked, "recs-v2"),
        "after the restart the rolling rollback never switched the kill switch `recs-v2` off; actions after the restart: {asked:?}"
    );
}

/// Contract (docs/policy.md `rollback`): `rollback_level` 1 means "traffic and the new
/// version stay where they are"; levels 2-3 mean traffic moved back and the new version
/// was stopped. A rolling release restarted while level 1 is being verified (flags off
/// confirmed, its one measurement in flight) resumes with the full batch-by-batch
/// restore, yet its state keeps `rollback_level: 1` and its `rolled_back` event says
/// the new version "keeps ... of traffic with its flags off": the report describes a
/// rollback that did not happen, and hides the one that did.
#[test]
fn a_rolling_rollback_resumed_during_level_one_reports_the_level_it_took() {
    let p = Policy::from_yaml(ROLLING).unwrap();
    let (s, now) = rolling_at_level_one(&p);
    // Flags off confirmed; the interval that verifies level 1 starts.
    let s = step(
        &p,
        &s,
        &Input::FlagsOff {
            ok: true,
            detail: "recs-v2 off".into(),
        },
        now,
    )
    .state;
    assert_eq!(s.phase, Phase::RollingBack);
    let (s, now, _) = drive(&p, s, now, healthy, |s| {
        matches!(s.pending, Some(Action::Measure(_)))
    });
    // The controller dies with that measurement in flight.
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let mut events = t.events.clone();
    let mut s = t.state;
    let mut now = now + 1;
    for _ in 0..1000 {
        if s.phase.is_terminal() {
            break;
        }
        let input = match &s.pending {
            Some(a) => common::succeeded(a, Class::Expand)
                .unwrap_or_else(|| Input::Measured { sample: healthy() }),
            None => {
                now = now.max(s.wake_at().unwrap());
                Input::Tick
            }
        };
        let t = step(&p, &s, &input, now);
        events.extend(t.events);
        s = t.state;
    }
    assert_eq!(s.phase, Phase::RolledBack);
    let last = events
        .iter()
        .rfind(|e| e.kind == "rolled_back")
        .map(|e| e.message.clone())
        .unwrap_or_default();
    assert!(
        !(s.canary_replicas == 0 && s.rollback_level == Some(1)),
        "every new replica was stopped and stable restored to {} replica(s), yet the release reports rollback_level {:?}: \"{last}\"",
        s.stable_replicas,
        s.rollback_level
    );
}

/// A rolling release tripped by its error rate at its first batch (1 of 4 replicas
/// new, 25 % of traffic): the automatic rollback is at level 1, its `FlagsOff` pending.
fn rolling_tripped_at_first_batch(p: &Policy) -> (Release, Millis) {
    let s = step(p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(p, s, T0, failing, |s| s.phase == Phase::RollingBack);
    assert_eq!(s.phase, Phase::RollingBack);
    assert_eq!((s.rollback_level, s.canary_replicas), (Some(1), 1));
    assert!(
        matches!(&s.pending, Some(Action::FlagsOff { .. })),
        "{:?}",
        s.pending
    );
    (s, now)
}

fn operator_abort() -> Input {
    Input::Abort {
        actor: "bob".into(),
        reason: "support tickets".into(),
        force: false,
    }
}

/// Contract (docs/policy.md `rollback`, level 1: "not waited for when an operator asked
/// for the rollback"; operator.rs: "Waiting to see whether flags off was enough: the
/// operator does not wait"). An operator's `rampart rollback` that arrives while level
/// 1's verifying measurement is in flight (the controller takes commands while a
/// measurement runs) hits `abort`'s guard `pending.is_none()` and is dropped without a
/// trace; the interval then passes and the release stops at level 1, leaving the
/// new replicas their users against the operator's explicit request.
#[test]
fn an_operator_rollback_during_level_one_verification_is_never_dropped() {
    let p = Policy::from_yaml(ROLLING).unwrap();
    let (s, now) = rolling_tripped_at_first_batch(&p);
    let flags_off = Input::FlagsOff {
        ok: true,
        detail: "recs-v2 off".into(),
    };
    let s = step(&p, &s, &flags_off, now).state;
    let (s, now, _) = drive(&p, s, now, healthy, |s| {
        matches!(s.pending, Some(Action::Measure(_)))
    });
    let t = step(&p, &s, &operator_abort(), now + 1);
    let (end, _, _) = drive(&p, t.state, now + 1, healthy, |_| false);
    assert_eq!(end.phase, Phase::RolledBack);
    assert!(
        !(end.rollback_level == Some(1) && end.weight > Weight::ZERO),
        "bob's rollback was dropped: the release stopped at level 1 with v2 still on {} replica(s) and {} of traffic",
        end.canary_replicas,
        end.weight
    );
}

/// Contract: as above, for the operator's rollback arriving while level 1's
/// `FlagsOff` is in flight: it is dropped too, and the automatic rollback goes on to
/// wait for a verifying interval that the operator asked not to wait for, ending at
/// level 1 with the new replicas keeping their users.
#[test]
fn an_operator_rollback_while_flags_go_off_is_never_dropped() {
    let p = Policy::from_yaml(ROLLING).unwrap();
    let (s, now) = rolling_tripped_at_first_batch(&p);
    let t = step(&p, &s, &operator_abort(), now + 1);
    let (end, _, _) = drive(&p, t.state, now + 1, healthy, |_| false);
    assert_eq!(end.phase, Phase::RolledBack);
    assert!(
        !(end.rollback_level == Some(1) && end.weight > Weight::ZERO),
        "bob's rollback was dropped: the release stopped at level 1 with v2 still on {} replica(s) and {} of traffic",
        end.canary_replicas,
        end.weight
    );
}

/// Contract (docs/policy.md `keep_previous`: the old colour keeps running "so that
/// `rampart rollback` switches back instantly"): a blue-green release whose controller
/// restarted while it switched everyone to the new colour took up the switch again
/// with the new colour only, never making sure the old one still ran (the processes
/// may have gone with the host), and then offered the instant switch back to it.
#[test]
fn a_blue_green_switch_resumed_keeps_the_previous_colour_it_offers_to_switch_back_to() {
    let p = Policy::from_yaml(BLUE_GREEN_KEEPING).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, |s| s.phase == Phase::Promoting);
    assert_eq!(s.phase, Phase::Promoting, "{:?}", s.phase);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let (end, _, asked) = drive(&p, t.state, now + 1, healthy, |s| {
        s.phase == Phase::KeepingPrevious
    });
    assert_eq!(end.phase, Phase::KeepingPrevious);
    assert!(
        asked.iter().any(|a| matches!(
            a,
            Action::Deploy {
                variant: rampart_core::release::Variant::Stable,
                ..
            }
        )),
        "the previous colour offered for a switch back was never made sure of after the restart: {asked:?}"
    );
}

const CANARY_WITH_KILL_SWITCH: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
flags:
  define:
    - {name: recs-v2, default: true}
strategy:
  canary:
    steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]
rollback: {flags: [recs-v2]}
migrations: {dir: "migrations/{version}", command: [psql, -f, "{file}"], on_incompatible: escalate}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#;

/// Drives a canary release until the traffic change to `weight` is in flight
/// (asked for, not yet answered).
fn in_flight_to(p: &Policy, weight: u16, class: Class) -> (Release, Millis) {
    let mut s = step(p, &Release::default(), &start("v2", "v1"), T0).state;
    let mut now = T0;
    for _ in 0..10_000 {
        if let Some(Action::SetWeight { weight: w, .. }) = &s.pending
            && w.basis_points() == weight
        {
            return (s, now);
        }
        let input = match &s.pending {
            Some(a) => {
                common::succeeded(a, class).unwrap_or_else(|| Input::Measured { sample: healthy() })
            }
            None => {
                now = now.max(s.wake_at().unwrap());
                Input::Tick
            }
        };
        s = step(p, &s, &input, now).state;
        assert!(!s.phase.is_terminal(), "ended: {:?}", s.decision);
    }
    panic!("never asked for {weight} basis points");
}

/// Regression (review): an operator's rollback that arrived while the first step's
/// traffic change was in flight was decided at the weight before it (0): "no user met
/// the new version", so level 1 was skipped, and the answer that the router had put
/// 10 % on the new version was thrown away as stale. Users had met it: the rollback
/// waits for the change in flight, then switches the kill switches off first.
#[test]
fn an_abort_while_the_first_step_goes_in_force_still_switches_flags_off() {
    let p = Policy::from_yaml(CANARY_WITH_KILL_SWITCH).unwrap();
    let (s, now) = in_flight_to(&p, 1_000, Class::Expand);
    let s = step(&p, &s, &operator_abort(), now + 1).state;
    let w = Weight::from_basis_points(1_000).unwrap();
    let s = step(&p, &s, &Input::TrafficSet { weight: w }, now + 2).state;
    assert_eq!(s.weight, w, "the router's answer was dropped");
    assert!(
        matches!(&s.pending, Some(Action::FlagsOff { flags }) if flags.iter().any(|f| f == "recs-v2")),
        "{:?}",
        s.pending
    );
    let (end, _, _) = drive(&p, s, now + 2, healthy, |_| false);
    assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.decision);
    assert_eq!(end.weight, Weight::ZERO);
}

/// Regression (review): an abort after breaking migrations escalates and moves no
/// traffic. Arriving while the next step's change was in flight, it escalated at once
/// and threw the router's answer away: the release said the new version had 10 % while
/// the router gave it 50 %, the number the human escalated to decides on.
#[test]
fn an_escalation_during_a_traffic_change_records_the_weight_in_force() {
    let p = Policy::from_yaml(CANARY_WITH_KILL_SWITCH).unwrap();
    let (s, now) = in_flight_to(&p, 5_000, Class::Contract);
    let s = step(&p, &s, &operator_abort(), now + 1).state;
    let w = Weight::from_basis_points(5_000).unwrap();
    let s = step(&p, &s, &Input::TrafficSet { weight: w }, now + 2).state;
    assert_eq!(s.phase, Phase::Escalated, "{:?}", s.decision);
    assert_eq!(
        s.weight, w,
        "the release records a weight the router does not have"
    );
    assert_eq!(s.pending, None);
}

/// Regression (review of the fix above): an operator's rollback kept for a traffic
/// change in flight, when that change failed: the automatic rollback started (by
/// rampart, counted against the cap), and the kept rollback then waited on *its*
/// traffic change and was applied in the middle of it, as a no-op that also cut the
/// rollback's chain short: nothing was pending, nothing would wake the release, and
/// it never ended (its canary running). The operator's rollback is applied at the
/// failure, under their name.
#[test]
fn an_abort_kept_for_a_traffic_change_that_fails_rolls_back_by_the_operator() {
    let p =
        Policy::from_yaml(&CANARY_WITH_KILL_SWITCH.replace("rollback: {flags: [recs-v2]}\n", ""))
            .unwrap();
    let (s, now) = in_flight_to(&p, 1_000, Class::Expand);
    let s = step(&p, &s, &operator_abort(), now + 1).state;
    assert!(s.deferred.is_some());
    let failed = Input::TrafficFailed {
        detail: "the router did not answer".into(),
    };
    let s = step(&p, &s, &failed, now + 2).state;
    assert!(s.deferred.is_none(), "{:?}", s.deferred);
    let (end, _, _) = drive(&p, s, now + 2, healthy, |_| false);
    assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.decision);
    assert_eq!(end.decision.as_ref().map(|d| d.by.as_str()), Some("bob"));
    assert_eq!(end.weight, Weight::ZERO);
}
