#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the analysis semantics: judges, pooling, the watch after
//! promotion and rollback level 1, driven through the real state machine on virtual
//! time (every wait is a `Tick` at the release's own wake-up time).

mod common;

use common::stats;
use rampart_core::metrics::IntervalSample;
use rampart_core::migrations::Class;
use rampart_core::release::{Action, AuditEvent, Input, Phase, Release, step};
use rampart_core::{Millis, Policy, Weight};

fn start_input() -> Input {
    Input::Start {
        release_id: "r".into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        automatic_rollbacks: 0,
        initiator: "alice".into(),
        planned_migrations: None,
        hotfix: None,
    }
}

/// What a drive saw: the final state, every audit event, every action asked for.
struct Drove {
    state: Release,
    events: Vec<AuditEvent>,
    actions: Vec<Action>,
}

/// Runs a release to its end on virtual time. Every action succeeds; each measurement
/// is `measure(state, now)`, the state being the one that asked for it.
fn drive(p: &Policy, mut measure: impl FnMut(&Release, Millis) -> IntervalSample) -> Drove {
    let mut now: Millis = 1_000_000;
    let mut s = step(p, &Release::default(), &start_input(), now).state;
    let (mut events, mut actions) = (Vec::new(), Vec::new());
    for _ in 0..20_000 {
        if s.phase.is_terminal() {
            break;
        }
        let input = match s.pending.clone() {
            Some(a) => {
                actions.push(a.clone());
                common::succeeded(&a, Class::Expand).unwrap_or_else(|| Input::Measured {
                    sample: measure(&s, now),
                })
            }
            None => {
                let at = s
                    .wake_at()
                    .unwrap_or_else(|| panic!("stuck in {:?}", s.phase));
                now = now.max(at);
                Input::Tick
            }
        };
        let t = step(p, &s, &input, now);
        events.extend(t.events);
        s = t.state;
    }
    assert!(
        s.phase.is_terminal(),
        "the release never ended: {:?}",
        s.phase
    );
    Drove {
        state: s,
        events,
        actions,
    }
}

fn kinds(events: &[AuditEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// Rollback level 1 (flags off) is verified by "the first interval after it", judged on
/// its own with fresh evidence and fresh streaks. A threshold judge needs `min_samples`
/// canary requests in that interval (else inconclusive: level 2 follows), and so does a
/// sequential judge on counts (its own `seen` is reset with the evidence). The builtin
/// sequential judge's `min_samples` gate reads the release-wide `canary_seen`, which is
/// NOT reset: one interval with 6 canary requests (min_samples 50), fresh evidence that
/// cannot possibly reject yet, "passes outright", and the rollback stops at level 1
/// with the still-failing new version keeping its share of the traffic.
#[test]
fn level_one_is_not_verified_by_a_sequential_judge_without_min_samples_behind_it() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080, sticky: {header: x-user-id}}}
flags:
  define:
    - {name: new-checkout, default: false}
strategy: {canary: {flag: new-checkout, steps: [{weight: 20, bake: 10m}]}}
analysis:
  interval: 30s
  min_samples: 50
  metrics:
    - {metric: error_rate, judge: sequential}
"#,
    )
    .unwrap();
    let d = drive(&p, |s, _| {
        if s.rollback_level == Some(1) {
            // The level-1 check: a quiet interval, the canary still failing a sixth of
            // its requests (stable 0.5 %), far too few requests to say either way.
            IntervalSample {
                stable: stats(200, 1),
                canary: stats(6, 1),
                ..Default::default()
            }
        } else {
            // Before: a clearly bad canary (10 % errors against 0.5 %).
            IntervalSample {
                stable: stats(800, 4),
                canary: stats(200, 20),
                ..Default::default()
            }
        }
    });
    assert_eq!(d.state.phase, Phase::RolledBack, "{:?}", d.state.decision);
    let verified = d
        .events
        .iter()
        .find(|e| e.kind == "level_verified")
        .map(|e| e.message.clone());
    assert_eq!(
        verified,
        None,
        "6 canary requests against min_samples 50 verified level 1: {:?}",
        kinds(&d.events)
    );
    assert_ne!(
        d.state.rollback_level,
        Some(1),
        "the failing version kept {} of traffic",
        d.state.weight
    );
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::SetWeight { weight, .. } if *weight == Weight::ZERO)),
        "traffic never went back to stable"
    );
}

/// A canary whose last step is all the traffic (`weight: 100`, a common last step)
/// judged by the sequential error-rate judge: at 100 % stable serves nothing, and the
/// share test (errors falling on the canary with its traffic share) has nothing to
/// share with, so every interval of that step is inconclusive ("not enough stable
/// data to compare with yet") however healthy the canary and however much evidence
/// the earlier steps gathered. The healthy release is halted at the inconclusive limit.
/// The policy validates: nothing refuses it (blue-green and full are refused without an
/// absolute `max`; a canary step at 100 % is not). Either refuse the policy at its line,
/// or judge the 100 % step as the watch does (against stable's measurements from before).
#[test]
fn a_healthy_canary_with_a_last_step_at_100_percent_is_not_halted_by_the_sequential_judge() {
    let yaml = r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080}}
strategy: {canary: {steps: [{weight: 20, bake: 2m}, {weight: 100, bake: 2m}]}}
analysis:
  interval: 30s
  min_samples: 50
  metrics:
    - {metric: error_rate, judge: sequential}
"#;
    let p = Policy::from_yaml(yaml).unwrap();
    // Both versions fail 0.5 % of 2,000 requests an interval, split by the weight.
    let d = drive(&p, |s, _| {
        let canary = 2000 * u64::from(s.weight.basis_points()) / 10_000;
        let stable = 2000 - canary;
        IntervalSample {
            stable: stats(stable, stable / 200),
            canary: stats(canary, canary / 200),
            ..Default::default()
        }
    });
    assert_eq!(
        d.state.phase,
        Phase::Succeeded,
        "a healthy canary ended {:?}: {:?}",
        d.state.phase,
        d.state.decision.map(|d| d.reason)
    );
}

/// Non-critical metrics fail the release only once the weights of the tripped ones
/// reach `fail_score`; below it their failures are warnings that do not hold a step.
/// A policy whose metrics are all non-critical with weights that can never add up to
/// `fail_score` (here one metric, `weight: 0.5`, `fail_score: 1`) can therefore never
/// fail: a canary failing half its requests every interval is promoted. The decoder
/// already reasons about which metrics "can fail the release on their own" (for the
/// CloudWatch watch check) but accepts an analysis that can fail nothing at all.
#[test]
fn an_analysis_that_can_never_fail_the_release_is_refused_or_still_rolls_back() {
    let yaml = r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080}}
strategy: {canary: {steps: [{weight: 20, bake: 2m}]}}
analysis:
  interval: 30s
  min_samples: 50
  metrics:
    - {metric: error_rate, judge: {max: 1%}, critical: false, weight: 0.5}
"#;
    let metrics_line = yaml
        .lines()
        .position(|l| l.trim_start().starts_with("- {metric: error_rate"))
        .unwrap() as u32
        + 1;
    let e = Policy::from_yaml(yaml).unwrap_err();
    let d = e
        .diagnostics
        .iter()
        .find(|d| d.path == "analysis.metrics")
        .unwrap_or_else(|| panic!("not refused at its metrics: {:?}", e.diagnostics));
    assert_eq!(d.line, metrics_line, "{d:?}");
    // With one metric that can fail on its own, the same analysis is accepted, and
    // the failing canary does not pass.
    let p = Policy::from_yaml(
        &yaml.replace("critical: false, weight: 0.5", "critical: false, weight: 1"),
    )
    .unwrap();
    let d = drive(&p, |_, _| IntervalSample {
        stable: stats(800, 0),
        canary: stats(200, 100),
        ..Default::default()
    });
    assert_ne!(
        d.state.phase,
        Phase::Succeeded,
        "a canary failing 50 % of its requests (limit 1 %) every interval was promoted: {:?}",
        kinds(&d.events)
    );
}

/// `analysis.load.counts: false` "works behind the embedded proxy only (refused
/// elsewhere at its line)" (docs/policy.md). The refusal names the right field, but
/// points at the line of `analysis:` rather than at `counts:`; so do the other load
/// refusals (`url` with `counts: false`, `https://`), which all use the position of
/// the whole `analysis` mapping.
#[test]
fn load_counts_false_behind_nginx_is_refused_at_the_counts_line() {
    let yaml = "service: shop
deploy: {process: {command: [\"./shop\", \"{port}\"]}}
traffic: {nginx: {listen: \"127.0.0.1:8080\", include: /tmp/rampart-review.conf}}
strategy: {canary: {steps: [{weight: 10, bake: 2m}]}}
analysis:
  interval: 30s
  metrics: [{metric: error_rate, judge: {max: 1%}}]
  load:
    rate: 20
    counts: false
";
    let counts_line = yaml
        .lines()
        .position(|l| l.trim_start().starts_with("counts:"))
        .unwrap() as u32
        + 1;
    let e = Policy::from_yaml(yaml).unwrap_err();
    let d = e
        .diagnostics
        .iter()
        .find(|d| d.path == "analysis.load.counts")
        .unwrap_or_else(|| panic!("not refused: {:?}", e.diagnostics));
    assert_eq!(d.line, counts_line, "{d:?}");
}

/// Low traffic is pooled (docs/policy.md, *Low traffic*) so that a version with few
/// requests is judged, not halted. After a blue-green switch stable serves nothing,
/// and a counts source has no stable series to give (a `{variant}="stable"` query
/// over no traffic is empty): the interval's counts were then "missing", which judged
/// each interval alone, so a bad version with 10 requests an interval (min_samples
/// 50) was inconclusive every time and halted. Its limit is absolute (`max`, as
/// blue-green requires): stable's side is not needed to judge, or to pool.
#[test]
fn a_slow_bad_version_after_a_blue_green_switch_is_pooled_and_switched_back() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080}}
strategy: {blue_green: {stability: 10m}}
analysis:
  interval: 30s
  min_samples: 50
  prometheus: http://127.0.0.1:9090
  metrics:
    - name: failed
      source: prometheus
      bad: 'sum(increase(failed{track="{variant}"}[{interval}]))'
      total: 'sum(increase(requests{track="{variant}"}[{interval}]))'
      judge: {max: 5%}
"#,
    )
    .unwrap();
    let d = drive(&p, |_, _| IntervalSample {
        canary: stats(10, 3),
        queries: vec![rampart_core::metrics::QueryReading {
            name: "failed".into(),
            canary: Some(3.0),
            canary_samples: Some(10.0),
            ..Default::default()
        }],
        ..Default::default()
    });
    assert_eq!(
        d.state.phase,
        Phase::RolledBack,
        "a version failing 30 % of its few requests ended {:?}: {:?}",
        d.state.phase,
        d.state.decision.map(|d| d.reason)
    );
}

/// Rollback level 1 (flags off) is verified by comparing the next interval with
/// stable's; during the watch there is no stable traffic, so the rollback starts with
/// traffic. A canary step at 100 % is the same: judged against the baseline, a
/// quiet interval after flags off could "verify" level 1 and leave all traffic on
/// the version that just failed. It starts with traffic too.
#[test]
fn a_failure_at_a_100_percent_step_moves_traffic_back() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080, sticky: {header: x-user-id}}}
flags:
  define:
    - {name: new-checkout, default: false}
strategy: {canary: {flag: new-checkout, steps: [{weight: 20, bake: 1m}, {weight: 100, bake: 5m}]}}
analysis:
  interval: 30s
  min_samples: 50
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#,
    )
    .unwrap();
    let d = drive(&p, |s, _| {
        let canary = u64::from(s.weight.basis_points()) / 10;
        let failing = s.weight == Weight::FULL && s.rollback_level.is_none();
        IntervalSample {
            stable: stats(1000 - canary, 1),
            canary: stats(canary, if failing { canary / 5 } else { 1 }),
            ..Default::default()
        }
    });
    assert_eq!(d.state.phase, Phase::RolledBack, "{:?}", d.state.decision);
    assert!(
        d.actions
            .iter()
            .any(|a| matches!(a, Action::SetWeight { weight, .. } if *weight == Weight::ZERO)),
        "the rollback ended with {} of traffic on the version that failed: {:?}",
        d.state.weight,
        kinds(&d.events)
    );
}

/// "Halt and page when both versions are unhealthy": a trip where stable breaks the
/// same absolute limit halts instead of rolling back. The check of rollback level 1
/// (flags off) ignored it: an interval where the canary still fails and stable fails
/// the same limit moved every user to the unhealthy stable.
#[test]
fn a_level_one_check_where_both_versions_fail_halts_instead_of_moving_traffic() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080, sticky: {header: x-user-id}}}
flags:
  define:
    - {name: new-checkout, default: false}
strategy: {canary: {flag: new-checkout, steps: [{weight: 20, bake: 10m}]}}
analysis:
  interval: 30s
  min_samples: 50
  metrics:
    - {metric: error_rate, judge: {max: 2%}}
"#,
    )
    .unwrap();
    let d = drive(&p, |s, _| {
        if s.rollback_level == Some(1) {
            // Flags off, and now stable fails the same limit as the canary.
            IntervalSample {
                stable: stats(800, 40),
                canary: stats(200, 20),
                ..Default::default()
            }
        } else {
            IntervalSample {
                stable: stats(800, 4),
                canary: stats(200, 20),
                ..Default::default()
            }
        }
    });
    assert_eq!(
        d.state.phase,
        Phase::Halted,
        "both versions failed the level-1 check: {:?}",
        kinds(&d.events)
    );
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::SetWeight { weight, .. } if *weight == Weight::ZERO)),
        "traffic moved to an unhealthy stable"
    );
}

/// The sequential judge's `min_samples` gate counted every canary request the release
/// had seen, also those of intervals it could not test (no stable requests to compare
/// with): 190 untested requests and 25 tested ones passed a gate of 100. Only tested
/// intervals count now, so the first pass comes once 100 canary requests were tested.
#[test]
fn the_sequential_gate_counts_only_the_canary_requests_it_tested() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:8080"}}
strategy:
  canary:
    steps:
      - {weight: 10, bake: 30s}
analysis:
  interval: 1s
  min_samples: 100
  metrics:
    - {metric: error_rate, judge: sequential}
"#,
    )
    .unwrap();
    let mut measured = 0u64;
    let drove = drive(&p, |_, _| {
        measured += 1;
        // The first two intervals: no stable request yet (nothing to compare with).
        if measured <= 2 {
            IntervalSample {
                stable: stats(0, 0),
                canary: stats(95, 0),
                ..Default::default()
            }
        } else {
            IntervalSample {
                stable: stats(900, 2),
                canary: stats(25, 0),
                ..Default::default()
            }
        }
    });
    let judged: Vec<_> = drove
        .events
        .iter()
        .filter_map(|e| e.readings.first())
        .collect();
    let first_pass = judged
        .iter()
        .position(|r| r.verdict == rampart_core::judge::Verdict::Pass)
        .unwrap_or_else(|| panic!("no pass: {:?}", drove.state.decision));
    // Intervals 1-2 untested; four tested intervals of 25 make the 100.
    assert_eq!(
        first_pass + 1,
        6,
        "passed at interval {} with {} canary requests tested",
        first_pass + 1,
        25 * (first_pass + 1).saturating_sub(2)
    );
}
