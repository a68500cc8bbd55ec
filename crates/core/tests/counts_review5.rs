//! Review 5: counts metrics (`bad`/`good` out of `total`) pooled by the threshold judge
//! at low traffic. Each interval alone reads its events as `events_within` says (a
//! negative count is no reading; events above the total by more than increase's
//! extrapolation are no reading, and a little above are read as the total); pooled, the
//! raw floats were summed first, so one interval's impossible reading cancelled
//! another's real failures.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use rampart_core::Policy;
use rampart_core::metrics::{IntervalSample, QueryReading};
use rampart_core::release::OutcomeKind;
use rampart_core::replay::replay_with;

fn counts(kind: &str, judge: &str) -> Policy {
    counts_with(
        kind,
        judge,
        "no_data: {limit: 30}\n  inconclusive: {limit: 60}",
    )
}

fn counts_with(kind: &str, judge: &str, escalation: &str) -> Policy {
    Policy::from_yaml(&format!(
        r#"service: s
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 2m}}]}}}}
analysis:
  interval: 1s
  prometheus: http://127.0.0.1:9090
  {escalation}
  metrics:
    - {{name: m, source: prometheus, {kind}: 'x{{variant}}', total: 'y{{variant}}', judge: {judge}, min_samples: 100}}
"#
    ))
    .unwrap()
}

/// Each interval: stable 180 requests, canary 20; the canary's events read as
/// `canary(i)` for the i-th measurement, stable's as `stable_events`.
fn run(p: &Policy, stable_events: f64, canary: impl Fn(u64) -> f64) -> Option<OutcomeKind> {
    run_with(p, stable_events, canary, |_| 20.0)
}

/// [`run`], with the canary's total read as `canary_total(i)`.
fn run_with(
    p: &Policy,
    stable_events: f64,
    canary: impl Fn(u64) -> f64,
    canary_total: impl Fn(u64) -> f64,
) -> Option<OutcomeKind> {
    let mut i = 0u64;
    let r = replay_with(
        p,
        |_from, _to| {
            i += 1;
            IntervalSample {
                queries: vec![QueryReading {
                    name: "m".into(),
                    stable: Some(stable_events),
                    canary: Some(canary(i)),
                    stable_samples: Some(180.0),
                    canary_samples: Some(canary_total(i)),
                    ..Default::default()
                }],
                ..Default::default()
            }
        },
        |_, _, _| {},
    );
    r.release.outcome()
}

/// A `good` count whose increase() extrapolates a little over its total every other
/// interval (22 of 20: read alone, the total, 100 %) beside intervals where the canary
/// is 90 % good (18 of 20). Clamped as each interval is read alone, the pool is 94 %
/// good, under `min: 98%`; summed raw it is 100 of 100 and the canary is promoted.
#[test]
fn pooled_good_counts_clamp_each_interval_to_its_total_as_a_lone_interval_does() {
    let p = counts("good", "{min: 98%}");
    let outcome = run(&p, 179.0, |i| if i % 2 == 0 { 22.0 } else { 18.0 });
    assert_ne!(
        outcome,
        Some(OutcomeKind::Promoted),
        "a canary 90 % good in every other interval (and never more than 100 %) was promoted: pooling summed the extrapolated excess over the total into the failing intervals"
    );
}

/// A `bad` count that reads negative every other interval (a `delta()` over a counter
/// reset, a source's glitch): alone, a negative count is no reading. Pooled, -4 cancels
/// the 4 errors of the interval before: 20 % of the canary's requests fail in every
/// interval that can be read, and the pool reads 4 %, under `max: 5%`.
#[test]
fn a_negative_count_pooled_never_cancels_another_intervals_errors() {
    let p = counts("bad", "{max: 5%}");
    let outcome = run(&p, 1.0, |i| if i % 2 == 0 { -4.0 } else { 4.0 });
    assert_ne!(
        outcome,
        Some(OutcomeKind::Promoted),
        "a canary failing 20 % of its requests in every readable interval was promoted: a negative count pooled cancelled its errors"
    );
}

/// docs/policy.md, *Low traffic*: "An interval without any canary request is no data
/// and leaves the pool as it was." A counts metric's interval whose canary `total` is
/// 0 (the canary stopped getting requests: crashed, or unrouted) was added to the pool
/// instead, and reported inconclusive ("pooling"): `no_data.action: rollback` never
/// came, and the release waited out `inconclusive.limit` and halted, the canary still
/// holding its weight. The builtin metrics judge such an interval alone, as no data.
#[test]
fn an_interval_without_canary_requests_is_no_data_not_pooled() {
    let p = counts_with(
        "bad",
        "{max: 5%}",
        "no_data: {limit: 3, action: rollback}\n  inconclusive: {limit: 20, action: halt}",
    );
    // 20 requests in the first interval, none after.
    let outcome = run_with(&p, 1.0, |_| 0.0, |i| if i == 1 { 20.0 } else { 0.0 });
    assert_eq!(
        outcome,
        Some(OutcomeKind::RolledBack),
        "a canary without a request for the rest of the release reached no_data.limit (3, rollback) but ended {outcome:?}"
    );
}
