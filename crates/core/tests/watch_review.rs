#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the watch after promotion, the post-release checks and the
//! previous version kept for a switch back (`post_release`, `keep_previous`), driven
//! through the real state machine on virtual time (every instant an explicit `now`;
//! nothing sleeps or reads a clock). Each test fails on the reviewed code and should
//! pass once the contract it names holds.

mod common;

use common::{BLUE_GREEN_KEEPING, start, stats};
use rampart_core::metrics::IntervalSample;
use rampart_core::migrations::Class;
use rampart_core::release::{Action, Input, Phase, Release, Variant, step};
use rampart_core::{Millis, Policy, Weight};

const T0: Millis = 1_000_000;

/// Both versions healthy, whatever the weight.
fn healthy(_: &Release) -> IntervalSample {
    IntervalSample {
        stable: stats(900, 1),
        canary: stats(900, 1),
        ..Default::default()
    }
}

/// Healthy while stable serves; at 100 % (the watch) the new version fails a fifth of
/// its requests.
fn fails_at_full(s: &Release) -> IntervalSample {
    if s.weight == Weight::FULL {
        IntervalSample {
            stable: stats(0, 0),
            canary: stats(1000, 200),
            ..Default::default()
        }
    } else {
        healthy(s)
    }
}

/// Drives the release on virtual time: every action answered by `answer` (a
/// measurement by `sample`, from the state it is asked in), every wait with a `Tick`
/// at the release's own wake-up time, until `stop` holds, the release ends, or it is
/// stuck (nothing pending, nothing to wake it). Returns the state, the time, and every
/// action asked for, in order.
fn drive(
    p: &Policy,
    mut s: Release,
    mut now: Millis,
    sample: fn(&Release) -> IntervalSample,
    answer: &mut dyn FnMut(&Action) -> Option<Input>,
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
            Some(a) => answer(a)
                .or_else(|| common::succeeded(a, Class::Expand))
                .unwrap_or_else(|| Input::Measured { sample: sample(&s) }),
            None => match s.wake_at() {
                Some(t) => {
                    now = now.max(t);
                    Input::Tick
                }
                None => break,
            },
        };
        let before = s.pending.clone();
        s = step(p, &s, &input, now).state;
        now += 1;
        if let Some(a) = &s.pending
            && (before.as_ref() != Some(a) || !matches!(a, Action::Measure(_)))
        {
            asked.push(a.clone());
        }
    }
    (s, now, asked)
}

/// Every answer a success.
fn ok(_: &Action) -> Option<Input> {
    None
}

fn is_stable_deploy(a: &Action) -> bool {
    matches!(
        a,
        Action::Deploy {
            variant: Variant::Stable,
            ..
        }
    )
}

/// The previous version does not come back: every stable deploy fails.
fn lose_stable(a: &Action) -> Option<Input> {
    is_stable_deploy(a).then(|| Input::Deployed {
        variant: Variant::Stable,
        ok: false,
        detail: "port in use".into(),
    })
}

fn is_weight_zero(a: &Action) -> bool {
    matches!(a, Action::SetWeight { weight, .. } if *weight == Weight::ZERO)
}

/// A canary with a watch after promotion (and so a switch back to the previous
/// version, which "keeps running until the watch ends").
const CANARY_WATCHED: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy: {canary: {steps: [{weight: 50, bake: 1m}]}}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {name: errors, metric: error_rate, judge: {max: 5%}}
post_release: {watch: 5m}
"#;

/// Contract (docs/policy.md `post_release.watch`: "A failure switches traffic back at
/// once; the previous version keeps running until the watch ends"; resume.rs: "re-
/// establish the world the persisted state assumes ... before going on"). A controller
/// restarted while it switched all traffic to the new version (phase `promoting`) re-
/// establishes only the new version (resume.rs `Phase::Promoting`: the stable deploy is
/// added only when `keep_previous` is set, which a canary never has), then starts the
/// watch and, on a watch failure, moves every user back to a previous version nothing
/// made sure still runs (the processes may have died with the controller's host). A
/// restart one tick later, in phase `watching`, does re-establish it.
#[test]
fn a_promotion_resumed_before_its_watch_makes_sure_the_previous_version_runs() {
    let p = Policy::from_yaml(CANARY_WATCHED).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| s.phase == Phase::Promoting);
    assert_eq!(s.phase, Phase::Promoting, "{:?}", s.decision);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let (end, _, asked) = drive(&p, t.state, now + 1, fails_at_full, &mut ok, |_| false);
    assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.decision);
    let back = asked.iter().position(is_weight_zero).unwrap();
    assert!(
        asked[..back].iter().any(is_stable_deploy),
        "the watch switched every user back to the previous version, which nothing made sure of after the restart: {asked:?}"
    );
}

/// Contract (resume.rs `ensured`, `Phase::Promoting, Variant::Stable`: "The switch to
/// the new version goes on (it serves everyone, or is about to): only the instant
/// switch back is lost, and said so"). A blue-green release whose controller restarted
/// during the switch, and whose previous colour does not come back, says
/// `previous_lost`, but the failed deploy's answer clears the rest of the resume chain
/// (step.rs: `b.s.queued.clear()` on an unsuccessful answer) and `ensured` asks for
/// nothing: the release is left in `promoting` with nothing pending and no timer, which
/// the controller reports as stuck (`ControllerError::Stuck`). The promotion never goes
/// on.
#[test]
fn a_previous_colour_lost_at_a_resumed_switch_lets_the_promotion_go_on() {
    let p = Policy::from_yaml(BLUE_GREEN_KEEPING).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| s.phase == Phase::Promoting);
    assert_eq!(s.phase, Phase::Promoting, "{:?}", s.decision);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let (end, _, asked) = drive(&p, t.state, now + 1, healthy, &mut lose_stable, |_| false);
    assert!(
        end.phase.is_terminal() || end.pending.is_some() || end.wake_at().is_some(),
        "stuck in {:?} with nothing pending and no timer after the previous colour was lost: {asked:?}",
        end.phase
    );
    assert_eq!(end.phase, Phase::Succeeded, "{:?}", end.decision);
}

/// Contract (docs/strategies.md, blue-green: "While the old colour is kept, an operator
/// can switch back at once"; docs/safety.md: "A rollback must never make things
/// worse"; resume.rs: the world the state assumes is re-established "before going
/// on"). A controller restarted during the keep window starts by re-establishing the
/// old colour (`Deploy { Stable }`), and the controller feeds an operator's waiting
/// `rampart rollback` just before it starts a version. That abort replaces the pending
/// deploy (`rollback_traffic` sets weight 0 at once, `queued` cleared), so every user
/// is switched to an old colour nothing brought back, then the new colour is stopped:
/// with the old colour gone with the host, nobody is served. (A promotion or an
/// approval in the same spot is deferred until the versions run, operator.rs `defer`;
/// an abort is not.)
#[test]
fn an_operator_switch_back_after_a_restart_in_the_keep_window_waits_for_the_previous_colour() {
    let p = Policy::from_yaml(BLUE_GREEN_KEEPING).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| {
        s.phase == Phase::KeepingPrevious
    });
    assert_eq!(s.phase, Phase::KeepingPrevious, "{:?}", s.decision);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    assert!(
        t.state.pending.as_ref().is_some_and(is_stable_deploy),
        "{:?}",
        t.state.pending
    );
    // The controller applies the operator's waiting request before starting a version.
    let abort = Input::Abort {
        actor: "bob".into(),
        reason: "support tickets".into(),
        force: false,
    };
    let t = step(&p, &t.state, &abort, now + 2);
    let (end, _, asked) = drive(&p, t.state, now + 2, healthy, &mut ok, |_| false);
    assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.decision);
    let back = asked.iter().position(is_weight_zero).unwrap();
    assert!(
        asked[..back].iter().any(is_stable_deploy),
        "every user switched back to the old colour before anything made sure it runs again after the restart: {asked:?}"
    );
}

/// Contract (resume.rs: "It must not re-make a decision the state already records";
/// resume.rs `ensured` for a promotion: "only the instant switch back is lost, and
/// said so"). A blue-green release already promoted (decision `promote`, stability
/// window and checks passed) and keeping the old colour for `keep_previous` is
/// restarted; the old colour does not come back. The release halts ("stable did not
/// come back after restart"): a promoted release re-decided as halted, exit 4, with
/// the new colour serving everyone and the service's record left on the old colour
/// (the controller records a serving version only for a promotion or a rollback).
#[test]
fn a_previous_colour_lost_during_the_keep_window_does_not_undo_the_promotion() {
    let p = Policy::from_yaml(BLUE_GREEN_KEEPING).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| {
        s.phase == Phase::KeepingPrevious
    });
    assert_eq!(s.phase, Phase::KeepingPrevious, "{:?}", s.decision);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let (end, _, _) = drive(&p, t.state, now + 1, healthy, &mut lose_stable, |_| false);
    assert_ne!(
        end.phase,
        Phase::Halted,
        "a promoted release was re-decided after the restart: {:?}",
        end.decision
    );
    assert_eq!(end.phase, Phase::Succeeded, "{:?}", end.decision);
}

/// A blue-green release with post-release checks right after the switch, keeping the
/// old colour afterwards.
const BLUE_GREEN_CHECKED: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy:
  blue_green:
    stability: 1m
    keep_previous: 10m
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
post_release:
  checks: [{http: /healthz}]
"#;

/// The router's answer that it could not set `weight`, to every `SetWeight` of it.
fn traffic_fails_at(weight: Weight) -> impl FnMut(&Action) -> Option<Input> {
    move |a: &Action| match a {
        Action::SetWeight { weight: w, .. } if *w == weight => Some(Input::TrafficFailed {
            detail: "router unreachable".into(),
        }),
        _ => None,
    }
}

/// Contract (docs/policy.md `post_release`: "The release is `promoted` only when they
/// pass"; a release is never left with nothing to do). A controller restarted while
/// the post-release checks ran re-establishes both versions, re-applies all traffic
/// on the new one, then runs the checks again. When the router cannot re-apply the
/// traffic, the failed answer clears the rest of the chain (the checks) and nothing
/// handles it in `verifying` (step.rs `on_answer` has no arm for it): nothing pending,
/// no timer, the release stuck (`ControllerError::Stuck`), neither switched back nor
/// halted and paged.
#[test]
fn a_failed_traffic_reapply_while_post_release_checks_ran_does_not_leave_the_release_stuck() {
    let p = Policy::from_yaml(BLUE_GREEN_CHECKED).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| {
        matches!(s.pending, Some(Action::RunChecks { .. })) && s.phase == Phase::Verifying
    });
    assert_eq!(s.phase, Phase::Verifying, "{:?}", s.decision);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let mut fail = traffic_fails_at(Weight::FULL);
    let (end, _, asked) = drive(&p, t.state, now + 1, healthy, &mut fail, |_| false);
    assert!(
        end.phase.is_terminal() || end.pending.is_some() || end.wake_at().is_some(),
        "stuck in {:?} with nothing pending and no timer after the router failed: {asked:?}",
        end.phase
    );
}

/// Contract (step.rs, `Promoting` with `releasing_previous`: the previous version is
/// stopped only with all traffic confirmed on the new one, else "could not set all
/// traffic on ... while the previous version was being stopped" halts). A controller
/// restarted during the keep window re-applies all traffic on the new colour; when the
/// router cannot, the failure is ignored in `keeping_previous` (no arm in step.rs
/// `on_answer`), and when the window ends the previous colour, which the router may
/// still send users to, is stopped and the release reported promoted.
#[test]
fn a_failed_traffic_reapply_in_the_keep_window_never_stops_the_previous_colour() {
    let p = Policy::from_yaml(BLUE_GREEN_KEEPING).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| {
        s.phase == Phase::KeepingPrevious
    });
    assert_eq!(s.phase, Phase::KeepingPrevious, "{:?}", s.decision);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let mut fail = traffic_fails_at(Weight::FULL);
    let (end, _, asked) = drive(&p, t.state, now + 1, healthy, &mut fail, |_| false);
    let failed_at = asked
        .iter()
        .position(|a| matches!(a, Action::SetWeight { weight, .. } if *weight == Weight::FULL))
        .unwrap();
    assert!(
        !asked[failed_at..].iter().any(|a| matches!(
            a,
            Action::Stop {
                variant: Variant::Stable
            }
        )),
        "the previous colour was stopped although the router never confirmed all traffic on {} after the restart (ended {:?}): {asked:?}",
        end.version,
        end.phase
    );
}

/// A canary judged by the sequential judge on its error rate alone, one step at 50 %
/// baked for `bake`, watched for 5 minutes after the switch.
fn sequential_watched(bake: &str) -> Policy {
    Policy::from_yaml(&format!(
        r#"
service: shop
deploy: {{process: {{command: ["./shop", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:8080"}}}}
strategy: {{canary: {{steps: [{{weight: 50, bake: {bake}}}]}}}}
analysis:
  interval: 30s
  min_samples: 50
  metrics:
    - {{name: errors, metric: error_rate, judge: sequential}}
post_release: {{watch: 5m}}
"#
    ))
    .unwrap()
}

/// Both versions fail 1 % of their requests while they share the traffic; at 100 % the
/// new version fails 3 %, three times the previous version's rate (far beyond the
/// watch's tolerance of 1.5).
fn triples_at_full(s: &Release) -> IntervalSample {
    if s.weight == Weight::FULL {
        IntervalSample {
            stable: stats(0, 0),
            canary: stats(2000, 60),
            ..Default::default()
        }
    } else {
        IntervalSample {
            stable: stats(1000, 10),
            canary: stats(1000, 10),
            ..Default::default()
        }
    }
}

/// Contract (docs/policy.md, the watch after promotion: "Failures that show only under
/// all the traffic ... pass every canary step"; a sequential judge during the watch
/// "tolerates at least 50 % more bad outcomes ... so drift alone is never a regression
/// while a doubling still is"). The sequential judge's e-process carries on from the
/// steps (analysis.rs: `&mut b.s.evidence[i]`, never restarted at the switch), and a
/// mixture of likelihood ratios that a healthy canary drove far below 1 during long
/// steps has to climb all the way back before it can reject: the longer and healthier
/// the steps, the blinder the watch. After a 2-minute step, a new version that triples
/// its error rate at 100 % is switched back within the 5-minute watch; after a 4-hour
/// step (the docs' "hours of bake, `judge: sequential`" for medium risk), the same
/// tripled error rate passes the whole watch and is promoted.
#[test]
fn a_long_healthy_canary_does_not_blind_the_sequential_watch_to_a_tripled_error_rate() {
    let run = |bake: &str| {
        let p = sequential_watched(bake);
        let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
        drive(&p, s, T0, triples_at_full, &mut ok, |_| false).0
    };
    let short = run("2m");
    assert_eq!(
        short.phase,
        Phase::RolledBack,
        "control: after a short step the tripled error rate is caught: {:?}",
        short.decision
    );
    let long = run("4h");
    assert_eq!(
        long.phase,
        Phase::RolledBack,
        "after a long healthy step, a new version failing 3x the previous version's rate at 100 % passed its watch: {:?}",
        long.decision
    );
}

// === after a read-only review of the fixes ===

fn rollback_by(actor: &str) -> Input {
    Input::Abort {
        actor: actor.into(),
        reason: "support tickets".into(),
        force: false,
    }
}

/// The previous version lost at a resumed switch: the promotion goes on, but nothing
/// may switch back to it. An operator's rollback (which the keep window would have
/// offered) halted and paged before; the first fix let it set weight 0, sending every
/// user to a version that does not run, then stop the only one that does.
#[test]
fn a_rollback_after_the_previous_version_was_lost_halts_instead_of_switching_to_nothing() {
    let p = Policy::from_yaml(BLUE_GREEN_KEEPING).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| s.phase == Phase::Promoting);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let (s, now, _) = drive(&p, t.state, now + 1, healthy, &mut lose_stable, |s| {
        s.previous_lost
    });
    assert!(s.previous_lost, "{:?}", s.phase);
    let mut t = step(&p, &s, &rollback_by("bob"), now + 1);
    // The switch's traffic change in flight is waited for (the rollback is decided on
    // the weight in force), and moves nothing meanwhile.
    if let Some(Action::SetWeight { weight, .. }) = &s.pending {
        assert!(t.state.deferred.is_some(), "{:?}", t.state.phase);
        assert!(
            !t.effects
                .iter()
                .any(|e| matches!(e, rampart_core::release::Effect::Do(_)))
        );
        t = step(
            &p,
            &t.state,
            &Input::TrafficSet { weight: *weight },
            now + 2,
        );
    }
    assert_eq!(t.state.phase, Phase::Halted, "{:?}", t.state.decision);
    assert!(
        !t.effects
            .iter()
            .any(|e| matches!(e, rampart_core::release::Effect::Do(a) if is_weight_zero(a))),
        "{:?}",
        t.effects
    );
    // Left alone, it is promoted without a keep window offering that switch.
    let t = step(&p, &s, &Input::Tick, now + 1);
    let (end, _, asked) = drive(&p, t.state, now + 1, healthy, &mut lose_stable, |_| false);
    assert_eq!(end.phase, Phase::Succeeded, "{:?}", end.decision);
    assert!(!asked.iter().any(is_weight_zero), "{asked:?}");
}

/// A canary whose post-release checks run at once after the switch, nothing kept.
const CANARY_CHECKED: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy: {canary: {steps: [{weight: 50, bake: 1m}]}}
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - {metric: error_rate, judge: {max: 5%}}
post_release:
  checks: [{http: /healthz}]
"#;

/// An operator's rollback deferred while a restart re-established the versions past
/// the switch waited for no action at all (`pending` empty), which never came: the
/// checks ran, the previous version was stopped, and the release ended promoted, the
/// rollback dropped without a word. It applies once the versions run.
#[test]
fn a_rollback_deferred_at_a_resumed_switch_is_applied_once_the_versions_run() {
    let p = Policy::from_yaml(CANARY_CHECKED).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| s.phase == Phase::Promoting);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    assert!(
        matches!(t.state.pending, Some(Action::Deploy { .. })),
        "{:?}",
        t.state.pending
    );
    let t = step(&p, &t.state, &rollback_by("bob"), now + 2);
    assert!(t.state.deferred.is_some());
    let (end, _, asked) = drive(&p, t.state, now + 2, healthy, &mut ok, |_| false);
    assert_eq!(
        end.phase,
        Phase::RolledBack,
        "the deferred rollback was dropped: {asked:?}"
    );
    assert!(
        !asked.iter().any(|a| matches!(
            a,
            Action::Stop {
                variant: Variant::Stable
            }
        )),
        "{asked:?}"
    );
}

const ROLLING_FLAGGED: &str = r#"
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

/// The new version fails a fifth of its requests.
fn failing(_: &Release) -> IntervalSample {
    IntervalSample {
        stable: stats(900, 1),
        canary: stats(1000, 200),
        ..Default::default()
    }
}

/// An operator's rollback that comes while a restart at level 1 re-establishes the
/// replicas (a `Scale` pending) was dropped: level 1 then verified and could stop
/// there, the new version keeping its users against the operator's request.
#[test]
fn a_rollback_during_a_resumed_level_one_goes_on_to_the_traffic() {
    let p = Policy::from_yaml(ROLLING_FLAGGED).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, failing, &mut ok, |s| {
        s.phase == Phase::RollingBack
    });
    assert_eq!(s.rollback_level, Some(1));
    let t = step(&p, &s, &Input::Resumed, now + 1);
    assert!(
        matches!(t.state.pending, Some(Action::Scale { .. })),
        "{:?}",
        t.state.pending
    );
    let t = step(&p, &t.state, &rollback_by("bob"), now + 2);
    let (end, _, _) = drive(&p, t.state, now + 2, healthy, &mut ok, |_| false);
    assert_eq!(end.phase, Phase::RolledBack);
    assert_eq!(
        (end.rollback_level, end.weight),
        (Some(2), Weight::ZERO),
        "bob's rollback stopped at level 1"
    );
}

/// Regression (review): a rollback at 100 % (a failure during the watch) switches the
/// kill switches off first, so it is at level 1 while they go off. A controller
/// restarted then took level 1 up as at a step: the new version started again before
/// the flags (to judge them against), and when it did not come back the rollback
/// halted ("stable did not come back"). At 100 % nothing is judged: the previous
/// version is made sure of, the flags go off again, and traffic goes back to it.
#[test]
fn a_rollback_at_full_traffic_resumed_during_flags_off_does_not_need_the_new_version() {
    let p = Policy::from_yaml(&format!(
        "{CANARY_WATCHED}flags:\n  define:\n    - {{name: recs-v2, default: true}}\nrollback: {{flags: [recs-v2]}}\n"
    ))
    .unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, fails_at_full, &mut ok, |s| {
        matches!(s.pending, Some(Action::FlagsOff { .. }))
    });
    assert_eq!(s.phase, Phase::RollingBack, "{:?}", s.decision);
    assert_eq!(s.weight, Weight::FULL);
    // The controller dies with the flags going off; the new version is gone with it.
    let t = step(&p, &s, &Input::Resumed, now + 1);
    let mut lose_canary = |a: &Action| {
        matches!(
            a,
            Action::Deploy {
                variant: Variant::Canary,
                ..
            }
        )
        .then(|| Input::Deployed {
            variant: Variant::Canary,
            ok: false,
            detail: "exited at once".into(),
        })
    };
    let (end, _, asked) = drive(
        &p,
        t.state,
        now + 1,
        fails_at_full,
        &mut lose_canary,
        |_| false,
    );
    assert_eq!(end.phase, Phase::RolledBack, "{:?}", end.decision);
    assert_eq!(end.weight, Weight::ZERO);
    assert!(
        asked.iter().any(|a| matches!(a, Action::FlagsOff { .. })),
        "{asked:?}"
    );
}

/// Regression (review): an operator's rollback kept while a restarted controller
/// started the versions again, when the new version did not come back: the automatic
/// rollback that followed was rampart's (counted against the cap, refused by it, and
/// escalated where the operator had forced it). It is the operator's rollback.
#[test]
fn a_kept_rollback_is_the_operators_when_an_automatic_one_starts_first() {
    let p = Policy::from_yaml(CANARY_WATCHED).unwrap();
    let s = step(&p, &Release::default(), &start("v2", "v1"), T0).state;
    let (s, now, _) = drive(&p, s, T0, healthy, &mut ok, |s| s.phase == Phase::Watching);
    let t = step(&p, &s, &Input::Resumed, now + 1);
    assert!(
        matches!(t.state.pending, Some(Action::Deploy { .. })),
        "{:?}",
        t.state.pending
    );
    let t = step(&p, &t.state, &rollback_by("bob"), now + 2);
    assert!(t.state.deferred.is_some());
    let mut lose_canary = |a: &Action| {
        matches!(
            a,
            Action::Deploy {
                variant: Variant::Canary,
                ..
            }
        )
        .then(|| Input::Deployed {
            variant: Variant::Canary,
            ok: false,
            detail: "exited at once".into(),
        })
    };
    let (end, _, _) = drive(&p, t.state, now + 2, healthy, &mut lose_canary, |_| false);
    assert!(end.phase.is_terminal(), "{:?}", end.phase);
    let d = end.decision.unwrap();
    assert_eq!(d.by, "bob", "{d:?}");
}
