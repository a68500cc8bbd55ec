#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Review H: the sequential judge's mixture over the release's start and each later
//! step's start (`Evidence::for_steps`, `Evidence::begin_step`): what it costs a
//! regression present from the start, and whether the release machine begins exactly
//! the planned tests, where the traffic changes.

mod common;

use rampart_core::Policy;
use rampart_core::judge::{self, Evidence, Verdict};
use rampart_core::metrics::Histogram;
use rampart_core::policy::{Judge, MetricSpec, Sequential};
use rampart_core::sim::Rng;

fn spec(alpha: f64) -> (MetricSpec, Sequential) {
    let p = Policy::from_yaml(&format!(
        r#"service: s
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 1, bake: 5m}}, {{weight: 10, bake: 5m}}, {{weight: 50, bake: 5m}}]}}}}
analysis:
  interval: 10s
  metrics: [{{metric: error_rate, judge: {{sequential: {{alpha: {alpha}}}}}, min_samples: 100}}]
"#
    ))
    .unwrap();
    let m = p.analysis.metrics[0].clone();
    let Judge::Sequential(seq) = m.judge else {
        panic!("not sequential")
    };
    (m, seq)
}

use common::errors;

/// A typical three-step canary: 1 %, 10 %, 50 %, five minutes (30 intervals of 10 s)
/// each, 200 requests/s. Stable fails 0.5 % of requests, the canary `pc` from the
/// start. The interval at which the judge fails, if it does: with the evidence as
/// before the change (`planned` false: one test from the release's start) or as the
/// release plans it now (three steps, a test begun at each later step).
fn first_failure(
    m: &MetricSpec,
    seq: &Sequential,
    rng: &mut Rng,
    pc: f64,
    planned: bool,
) -> Option<usize> {
    let mut ev = if planned {
        Evidence::with_later_tests(2)
    } else {
        Evidence::default()
    };
    let h = Histogram::default();
    let weights = [0.01, 0.10, 0.50];
    for i in 0..90 {
        if planned && i > 0 && i % 30 == 0 {
            ev.begin_step();
        }
        let w = weights[i / 30];
        let s = common::split_errors(rng, 2000, w, 0.005, pc);
        if judge::sequential(m, seq, &s, &mut ev, &h).verdict == Verdict::Fail {
            return Some(i);
        }
    }
    None
}

struct Outcome {
    caught: f64,
    median: f64,
    mean: f64,
}

fn outcome(times: &[Option<usize>]) -> Outcome {
    let mut caught: Vec<usize> = times.iter().flatten().copied().collect();
    caught.sort_unstable();
    let median = caught.get(caught.len() / 2).map_or(f64::NAN, |t| *t as f64);
    let mean = caught.iter().sum::<usize>() as f64 / caught.len().max(1) as f64;
    Outcome {
        caught: caught.len() as f64 / times.len() as f64,
        median,
        mean,
    }
}

/// The price of the restarts for a regression present from the start: the docs say
/// `ln 2` of log-evidence. Measured as releases caught within their 15 minutes and
/// the interval (10 s) at which they were caught, before (one test from the start)
/// and after (the mixture). Also the false-rollback rate of a healthy canary, both
/// ways, at the default `alpha` 0.01. The price must stay small: no more than 2
/// points of releases caught, and no more than 3 intervals (30 s) later at the median.
#[test]
fn a_regression_present_from_the_start_pays_little_for_the_later_steps_tests() {
    let (m, seq) = spec(0.01);
    let trials = 1000;
    let mut report = Vec::new();
    for (pc, what) in [(0.01, "2x"), (0.02, "4x"), (0.0075, "1.5x")] {
        let mut rng = Rng::new(0x5eed_00b1);
        let before: Vec<_> = (0..trials)
            .map(|_| first_failure(&m, &seq, &mut rng, pc, false))
            .collect();
        let mut rng = Rng::new(0x5eed_00b1);
        let after: Vec<_> = (0..trials)
            .map(|_| first_failure(&m, &seq, &mut rng, pc, true))
            .collect();
        let (b, a) = (outcome(&before), outcome(&after));
        eprintln!(
            "{what} from the start: caught {:.3} -> {:.3}; median interval {} -> {}; mean {:.1} -> {:.1}",
            b.caught, a.caught, b.median, a.median, b.mean, a.mean
        );
        report.push((what, b, a));
    }
    let mut rng = Rng::new(0x5eed_00b2);
    let healthy = 2000;
    let before = (0..healthy)
        .filter(|_| first_failure(&m, &seq, &mut rng, 0.005, false).is_some())
        .count() as f64
        / healthy as f64;
    let mut rng = Rng::new(0x5eed_00b2);
    let after = (0..healthy)
        .filter(|_| first_failure(&m, &seq, &mut rng, 0.005, true).is_some())
        .count() as f64
        / healthy as f64;
    eprintln!("healthy canary rolled back: {before:.4} -> {after:.4} (alpha 0.01)");
    assert!(after <= 0.015, "false rollbacks {after} above alpha 0.01");
    for (what, b, a) in report {
        assert!(
            a.caught >= b.caught - 0.02,
            "{what}: caught {} before, {} after",
            b.caught,
            a.caught
        );
        assert!(
            a.median <= b.median + 3.0,
            "{what}: median interval {} before, {} after",
            b.median,
            a.median
        );
    }
}

mod drive {
    use super::common;
    use rampart_core::metrics::IntervalSample;
    use rampart_core::migrations::Class;
    use rampart_core::release::{Input, Phase, Release, step};
    use rampart_core::{Millis, Policy};

    /// Runs a release to its end on virtual time: every action succeeds, each
    /// approval point is approved by bob, the controller restarts (`Resumed`) right
    /// after every step decision and once mid-step, and an operator pauses and
    /// unpauses once. `check(input, before, after)` sees every transition.
    pub fn drive(
        p: &Policy,
        mut measure: impl FnMut(&Release) -> IntervalSample,
        mut check: impl FnMut(&Input, &Release, &Release),
    ) -> Release {
        let mut now: Millis = 1_000_000;
        let mut s = step(p, &Release::default(), &common::start("v2", "v1"), now).state;
        let (mut restarted_mid_step, mut paused) = (false, false);
        for _ in 0..20_000 {
            if s.phase.is_terminal() || s.phase == Phase::Watching {
                break;
            }
            let input = if s.phase == Phase::AwaitingApproval && s.pending.is_none() {
                Input::Approved {
                    by: "bob".into(),
                    asked_at: None,
                }
            } else if s.phase == Phase::Progressing && s.intervals == 5 && !paused {
                paused = true;
                Input::Pause {
                    actor: "bob".into(),
                    reason: "look".into(),
                }
            } else if s.paused.is_some() && s.intervals >= 40 {
                Input::Unpause {
                    actor: "bob".into(),
                }
            } else if s.phase == Phase::Progressing && s.intervals == 50 && !restarted_mid_step {
                restarted_mid_step = true;
                Input::Resumed
            } else {
                match s.pending.clone() {
                    Some(a) => {
                        common::succeeded(&a, Class::Expand).unwrap_or_else(|| Input::Measured {
                            sample: measure(&s),
                        })
                    }
                    None => {
                        now = now.max(s.wake_at().unwrap());
                        Input::Tick
                    }
                }
            };
            let t = step(p, &s, &input, now);
            check(&input, &s, &t.state);
            // A restart right after a step decision, before its traffic is confirmed.
            let decided = t.state.step != s.step;
            s = t.state;
            if decided {
                let t = step(p, &s, &Input::Resumed, now);
                check(&Input::Resumed, &s, &t.state);
                s = t.state;
            }
        }
        s
    }
}

/// Through the release machine, for each strategy's steps (a canary with an approval
/// point between its steps, a rolling release, a flag ramp), with a pause, approvals
/// and controller restarts (one right after each step decision): every sequential
/// metric's evidence plans a later test per step that sets traffic below 100 % after
/// the first, has begun one per such step entered (never more, never twice for one
/// step), and a test begun at a step sees no interval measured before that step's
/// traffic was confirmed.
#[test]
fn the_release_begins_one_test_per_later_step_where_its_traffic_changes() {
    use rampart_core::release::{Input, Phase};
    let policies = [
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080}}
strategy:
  canary:
    steps:
      - {weight: 10, bake: 5m}
      - {approval: {role: release-manager, timeout: 1h}}
      - {weight: 50, bake: 5m}
      - {weight: 100, bake: 2m}
post_release: {watch: 5m}
analysis:
  interval: 10s
  min_samples: 100
  metrics:
    - {metric: error_rate, judge: {sequential: {alpha: 0.05}}}
    - {metric: error_rate, name: limit, judge: {max: 50%}}
"#,
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"], replicas: 4}}
traffic: {proxy: {listen: 127.0.0.1:8080}}
strategy: {rolling: {batch: 1, bake: 3m}}
post_release: {watch: 5m}
analysis:
  interval: 10s
  min_samples: 100
  metrics:
    - {metric: error_rate, judge: {sequential: {alpha: 0.05}}}
"#,
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080, sticky: {header: x-user-id}}}
flags:
  define:
    - {name: new-checkout, default: false}
strategy: {flag: {flag: new-checkout, steps: [{weight: 5, bake: 3m}, {weight: 25, bake: 3m}, {weight: 75, bake: 3m}]}}
post_release: {watch: 5m}
analysis:
  interval: 10s
  min_samples: 100
  metrics:
    - {metric: error_rate, judge: {sequential: {alpha: 0.05}}}
"#,
    ];
    // For each policy, the later tests begun once each step is entered: a test at each
    // step that sets traffic below 100 % after the first (not at an approval point,
    // not at 100 %).
    let begun_by_step: [&[usize]; 3] = [&[0, 0, 1, 1], &[0, 1, 2, 2], &[0, 1, 2]];
    for (yaml, begun_by_step) in policies.into_iter().zip(begun_by_step) {
        let p = Policy::from_yaml(yaml).unwrap();
        let steps = p.strategy.steps().len();
        assert_eq!(steps, begun_by_step.len(), "{yaml}");
        let planned = *begun_by_step.last().unwrap();
        let mut rng = Rng::new(0x5eed_00b3);
        // Measured intervals since the last step decision, before its traffic.
        let mut waiting_for_traffic = false;
        let mut entered = std::collections::BTreeSet::new();
        let end = drive::drive(
            &p,
            |s| {
                let w = (s.weight.percent() / 100.0).clamp(0.0, 1.0);
                common::split_errors(&mut rng, 2000, w, 0.005, 0.005)
            },
            |input, before, after| {
                if !matches!(after.phase, Phase::Progressing | Phase::AwaitingApproval) {
                    return;
                }
                if after.steps_begun {
                    entered.insert(after.step);
                }
                for (e, m) in after.evidence.iter().zip(&p.analysis.metrics) {
                    // A threshold judge has no tests to plan.
                    let sequential = matches!(m.judge, Judge::Sequential(_));
                    let (planned, begun) = if sequential {
                        (planned, begun_by_step[after.step])
                    } else {
                        (0, 0)
                    };
                    assert_eq!(e.restarts.planned(), planned, "{yaml}");
                    assert_eq!(
                        e.restarts.begun(),
                        begun,
                        "step {} of {yaml}: {:?} after {input:?}",
                        after.step,
                        after.phase
                    );
                }
                let begun = |s: &rampart_core::release::Release| {
                    s.evidence.first().map_or(0, |e| e.restarts.begun())
                };
                match input {
                    Input::TrafficSet { .. } | Input::Scaled { ok: true, .. } => {
                        waiting_for_traffic = false;
                    }
                    Input::Measured { .. } => assert!(
                        !waiting_for_traffic,
                        "an interval measured before step {}'s traffic was confirmed, in {yaml}",
                        after.step
                    ),
                    _ => {}
                }
                // (Checked after the input: the interval that ends a step is judged
                // before the next step's test begins.)
                if begun(after) > begun(before) {
                    waiting_for_traffic = true;
                }
            },
        );
        assert_eq!(end.phase, Phase::Watching, "{:?} in {yaml}", end.decision);
        assert_eq!(entered.len(), steps, "{yaml}");
    }
}

/// An approval point is a step of the policy (`strategy.steps()`), but no traffic of
/// its own starts there: the release waits at the previous weight, unmeasured. Planned
/// as a step (`steps - 1` later tests), a trailing one (approve before 100 %, a common
/// shape) began a test that saw no interval before promotion: its share was lost, and
/// the 50 % step's test had a quarter of the weight instead of half (`ln 4`, not
/// `ln 2`, for a regression that starts there); a leading one moved a share onto the
/// release's start. The same data must give the same evidence whether or not the
/// release also waits for a human.
#[test]
fn an_approval_point_takes_no_share_of_the_later_steps_weight() {
    use rampart_core::release::Input;
    let policy = |steps: &str| {
        Policy::from_yaml(&format!(
            r#"
service: shop
deploy: {{process: {{command: ["./shop", "--port", "{{port}}"]}}}}
traffic: {{proxy: {{listen: 127.0.0.1:8080}}}}
strategy: {{canary: {{steps: [{steps}]}}}}
analysis:
  interval: 10s
  min_samples: 100
  metrics:
    - {{metric: error_rate, judge: {{sequential: {{alpha: 0.01}}}}}}
"#
        ))
        .unwrap()
    };
    let approval = "{approval: {role: release-manager, timeout: 1h}}";
    let plain = "{weight: 10, bake: 10m}, {weight: 50, bake: 5m}";
    // The log-evidence after each measured interval, the canary's errors 1.3x
    // stable's at 50 % (too little to trip in five minutes), on the same stream.
    let evidence = |steps: &str| {
        let p = policy(steps);
        let mut rng = Rng::new(0x5eed_00b4);
        let mut seen = Vec::new();
        drive::drive(
            &p,
            |s| {
                let w = s.weight.percent() / 100.0;
                let pc = if w > 0.2 { 0.0065 } else { 0.005 };
                common::split_errors(&mut rng, 2000, w, 0.005, pc)
            },
            |input, _, after| {
                // (Every interval of the steps: `drive` stops at the watch.)
                if matches!(input, Input::Measured { .. }) {
                    seen.push(after.evidence[0].log_e());
                }
            },
        );
        seen
    };
    let without = evidence(plain);
    let mut off = Vec::new();
    for steps in [
        format!("{plain}, {approval}"),
        format!("{approval}, {plain}"),
    ] {
        let with = evidence(&steps);
        assert_eq!(with.len(), without.len(), "{steps}");
        let worst = with
            .iter()
            .zip(&without)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        if worst >= 1e-9 {
            off.push(format!(
                "[{steps}]: log-evidence up to {worst:.3} away from the same release without the approval point (last {:.3} against {:.3})",
                with.last().unwrap(),
                without.last().unwrap()
            ));
        }
    }
    assert!(off.is_empty(), "{}", off.join("\n"));
}

/// Evidence whose tests begun outnumber those planned (deserialized as it came) weighed
/// them above 1 in all, and was worth more than 1 before any outcome ("evidence never
/// comes from nothing", `sequential.rs`). A state is rebuilt from its log, so only a
/// hand-made or foreign one gets there: the begun count at most the plan.
#[test]
fn evidence_with_more_tests_begun_than_planned_is_not_worth_more_than_one_before_any_outcome() {
    let fresh = serde_json::to_value(rampart_core::sequential::EProcess::default()).unwrap();
    let mut e = serde_json::to_value(Evidence::with_later_tests(1)).unwrap();
    e["restarts"]["began_at"] = serde_json::json!([fresh.clone(), fresh.clone(), fresh]);
    let e: Evidence = serde_json::from_value(e).unwrap();
    assert!(
        e.log_e() <= 1e-12,
        "log-evidence {:.3} before any outcome ({} begun of {} planned)",
        e.log_e(),
        e.restarts.begun(),
        e.restarts.planned()
    );
}

/// Guard (passes): evidence with tests begun round-trips through JSON as it is, and
/// evidence saved before the restarts existed (no `restarts`) loads with nothing
/// planned: a step's start then begins nothing, and the e-value is the release's test
/// alone, as before.
#[test]
fn guard_evidence_round_trips_and_evidence_saved_before_restarts_loads_as_before() {
    let (m, seq) = spec(0.01);
    let h = Histogram::default();
    let mut e = Evidence::with_later_tests(2);
    judge::sequential(&m, &seq, &errors((1800, 9), (200, 4)), &mut e, &h);
    e.begin_step();
    judge::sequential(&m, &seq, &errors((1000, 5), (1000, 12)), &mut e, &h);
    let json = serde_json::to_value(&e).unwrap();
    assert_eq!(json["restarts"]["planned"], 2);
    let back: Evidence = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(back, e);
    let mut old = json;
    old.as_object_mut().unwrap().remove("restarts");
    let mut old: Evidence = serde_json::from_value(old).unwrap();
    old.begin_step();
    assert!(old.restarts.is_empty());
    assert_eq!(old.log_e(), old.process.log_e());
    assert_ne!(old.log_e(), e.log_e());
}

/// A rolling release of many replicas has a step per batch: the later tests are at
/// most 16, begun at steps spread over the whole release (the last begun near its
/// end), so a test's share never shrinks below a 64th.
#[test]
fn a_release_of_many_steps_plans_at_most_sixteen_later_tests_spread_over_it() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"], replicas: 40}}
traffic: {proxy: {listen: 127.0.0.1:8080}}
strategy: {rolling: {batch: 1, bake: 1m}}
analysis:
  interval: 10s
  min_samples: 100
  metrics:
    - {metric: error_rate, judge: {sequential: {alpha: 0.05}}}
"#,
    )
    .unwrap();
    let steps = p.strategy.steps().len();
    assert_eq!(steps, 40);
    let mut rng = Rng::new(0x5eed_00b5);
    let mut begun_at = Vec::new();
    drive::drive(
        &p,
        |s| {
            let w = (s.weight.percent() / 100.0).clamp(0.0, 1.0);
            common::split_errors(&mut rng, 2000, w, 0.005, 0.005)
        },
        |_, before, after| {
            let begun = |s: &rampart_core::release::Release| {
                s.evidence.first().map_or(0, |e| e.restarts.begun())
            };
            if let Some(e) = after.evidence.first()
                && after.steps_begun
            {
                assert_eq!(e.restarts.planned(), 16);
            }
            if begun(after) > begun(before) {
                begun_at.push(after.step);
            }
        },
    );
    assert_eq!(begun_at.len(), 16, "{begun_at:?}");
    assert!(
        begun_at[0] >= 1 && *begun_at.last().unwrap() >= 30,
        "{begun_at:?}"
    );
    assert!(begun_at.windows(2).all(|w| w[1] > w[0]), "{begun_at:?}");
}
