#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Review G: the sequential judge's statistical promises ("the probability of ever
//! failing a canary that is no worse than stable is at most alpha"; a worse canary is
//! caught) under conditions the constant-rate simulations of `sequential_judge.rs` do
//! not cover. Each test is a seeded Monte Carlo over many simulated releases, calling
//! the judge as `release::analysis` does (evidence kept across intervals and steps,
//! stable's latency history grown after each interval).

mod common;

use rampart_core::Policy;
use rampart_core::judge::{self, Evidence, Verdict};
use rampart_core::metrics::{Histogram, IntervalSample, VariantStats};
use rampart_core::policy::{Judge, MetricSpec, Sequential};
use rampart_core::sim::Rng;

fn spec(metric: &str, alpha: f64, min_samples: u64) -> (MetricSpec, Sequential) {
    let p = Policy::from_yaml(&format!(
        r#"service: s
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 5m}}]}}}}
analysis:
  interval: 10s
  metrics: [{{metric: {metric}, judge: {{sequential: {{alpha: {alpha}}}}}, min_samples: {min_samples}}}]
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

/// A release's sequence of intervals judged by one error-rate judge: whether it ever
/// failed, and the verdict of the last interval.
fn judge_errors(m: &MetricSpec, seq: &Sequential, intervals: &[IntervalSample]) -> (bool, Verdict) {
    // The three steps of `schedule`, each also tested from its start.
    let mut ev = Evidence::with_later_tests(2);
    let h = Histogram::default();
    let mut last = Verdict::NoData;
    for (i, s) in intervals.iter().enumerate() {
        if i > 0 && i % 30 == 0 {
            ev.begin_step();
        }
        last = judge::sequential(m, seq, s, &mut ev, &h).verdict;
        if last == Verdict::Fail {
            return (true, last);
        }
    }
    (false, last)
}

fn rate(hits: u64, n: u64) -> f64 {
    hits as f64 / n as f64
}

/// The weights of a three-step canary, one per 10 s interval: 1 %, 10 %, 50 %, five
/// minutes each.
fn schedule() -> Vec<f64> {
    [0.01, 0.10, 0.50]
        .iter()
        .flat_map(|w| std::iter::repeat_n(*w, 30))
        .collect()
}

// ---------------------------------------------------------------------------------
// Guard (passes): the share test keeps alpha when the weight changes between steps,
// traffic is bursty (idle intervals, intervals of a handful of requests, stable with
// none, canary with none), the split served differs from the weight (a router that
// rounds, per-request random), and the error rate bursts for both versions alike.
// ---------------------------------------------------------------------------------

#[test]
fn guard_the_share_test_keeps_alpha_under_steps_bursts_and_uneven_splits() {
    let (m, seq) = spec("error_rate", 0.05, 100);
    let trials = 1000;
    let mut false_fails = 0;
    let mut rng = Rng::new(0x5eed_0001);
    for t in 0..trials {
        let rounding_router = t % 2 == 0;
        let intervals: Vec<IntervalSample> = schedule()
            .into_iter()
            .map(|w| {
                // Bursty traffic: often near-idle, sometimes a flood.
                let n = match rng.next_u64() % 6 {
                    0 => 0,
                    1 => rng.next_u64() % 8,
                    2 => 30 + rng.next_u64() % 100,
                    _ => 500 + rng.next_u64() % 4000,
                };
                let nc = if rounding_router {
                    (n as f64 * w).round() as u64
                } else {
                    rng.binomial(n, w)
                };
                // Some intervals lose stable's side (its instance restarting).
                let ns = if rng.next_u64().is_multiple_of(10) {
                    0
                } else {
                    n - nc
                };
                // The error rate bursts (a dependency blip) for both alike.
                let p = if rng.next_u64().is_multiple_of(8) {
                    0.08
                } else {
                    0.004
                };
                errors((ns, rng.binomial(ns, p)), (nc, rng.binomial(nc, p)))
            })
            .collect();
        false_fails += u64::from(judge_errors(&m, &seq, &intervals).0);
    }
    let r = rate(false_fails, trials);
    eprintln!("false failures {r} (alpha 0.05)");
    assert!(r <= 0.07, "false failure rate {r} above alpha 0.05");
}

// ---------------------------------------------------------------------------------
// Sticky routing: one client's errors all land on one version.
// ---------------------------------------------------------------------------------

/// With `traffic.proxy.sticky` (docs/adapters.md: a user keeps its variant, and the
/// canary's users at 1 % stay on it at 10 % and 50 %), requests are no longer
/// exchangeable: a client that retries a request that fails on BOTH versions (a
/// malformed payload, a broken account) sends all its failures to the one version it
/// is pinned to. The share test treats each error as landing on the canary with the
/// canary's share of requests, so a single retrying client pinned to a 1 % canary is
/// overwhelming "evidence". The null holds exactly here (both versions fail the same
/// requests at the same rates), yet healthy canaries are rolled back far above alpha.
#[test]
#[ignore = "known defect (review G): sticky clients' retries cluster errors on one version; open"]
fn sticky_clients_retrying_a_request_that_fails_everywhere_fail_a_healthy_canary() {
    let (m, seq) = spec("error_rate", 0.05, 100);
    let trials = 1000;
    let mut false_fails = 0;
    let mut rng = Rng::new(0x5eed_0002);
    for _ in 0..trials {
        // 20 clients that now and then retry a request nobody can answer; each is
        // pinned by its hash bucket (below the weight: canary).
        let buckets: Vec<f64> = (0..20).map(|_| rng.unit()).collect();
        let intervals: Vec<IntervalSample> = schedule()
            .into_iter()
            .map(|w| {
                // 200 requests/s of ordinary traffic, 0.5 % errors on either version.
                let n = 2000;
                let nc = rng.binomial(n, w);
                let mut c = (nc, rng.binomial(nc, 0.005));
                let mut s = (n - nc, rng.binomial(n - nc, 0.005));
                for b in &buckets {
                    // Active in 1 % of intervals, retrying about 10 times.
                    if rng.unit() < 0.01 {
                        let k = 5 + rng.binomial(10, 0.5);
                        let side = if *b < w { &mut c } else { &mut s };
                        side.0 += k;
                        side.1 += k;
                    }
                }
                errors(s, c)
            })
            .collect();
        false_fails += u64::from(judge_errors(&m, &seq, &intervals).0);
    }
    let r = rate(false_fails, trials);
    eprintln!("false failures with sticky retrying clients {r} (alpha 0.05)");
    assert!(r <= 0.07, "false failure rate {r} above alpha 0.05");
}

// ---------------------------------------------------------------------------------
// Latency: stable's history as the null while latency drifts for both versions.
// ---------------------------------------------------------------------------------

/// `n` requests of lognormal latency (median `median_ms`, log-sd `sigma`).
fn latencies(rng: &mut Rng, n: u64, median_ms: f64, sigma: f64) -> VariantStats {
    let mut h = Histogram::default();
    for _ in 0..n {
        let ms = median_ms * (sigma * rng.normal()).exp();
        h.record_micros((ms * 1000.0) as u64);
    }
    VariantStats {
        requests: n,
        errors: 0,
        latency_total: h.clone(),
        latency: h,
    }
}

/// Runs a latency judge as `release::analysis` does: stable's history grows after each
/// interval and is never reset. `medians[i]` is both versions' median in interval i.
fn judge_latency(
    m: &MetricSpec,
    seq: &Sequential,
    rng: &mut Rng,
    medians: &[f64],
    rps: u64,
    canary_share: f64,
) -> bool {
    let mut ev = Evidence::default();
    let mut history = Histogram::default();
    for med in medians {
        let n = rps * 10;
        let nc = rng.binomial(n, canary_share);
        let s = IntervalSample {
            stable: latencies(rng, n - nc, *med, 0.5),
            canary: latencies(rng, nc, *med, 0.5),
            ..Default::default()
        };
        if judge::sequential(m, seq, &s, &mut ev, &history).verdict == Verdict::Fail {
            return true;
        }
        history.merge(&s.stable.latency);
    }
    false
}

/// The latency null is stable's quantile over ALL its earlier intervals, not stable at
/// the same time (docs/policy.md: "stable's XX quantile of the same time"). A one-minute
/// slowdown of a shared dependency (both versions twice as slow, the canary exactly as
/// fast as stable throughout) puts most of the canary's requests of that minute above
/// stable's p99 of the ten calm minutes before: a healthy canary is rolled back.
#[test]
fn a_one_minute_slowdown_shared_by_both_versions_fails_a_healthy_canary_at_p99() {
    let (m, seq) = spec("latency_p99", 0.05, 100);
    let trials = 100;
    let mut rng = Rng::new(0x5eed_0003);
    // 10 s intervals at 100 requests/s, canary 20 %: 10 calm minutes, one minute at
    // twice the latency for both, 9 calm minutes.
    let medians: Vec<f64> = (0..120)
        .map(|i| if (60..66).contains(&i) { 100.0 } else { 50.0 })
        .collect();
    let fails = (0..trials)
        .filter(|_| judge_latency(&m, &seq, &mut rng, &medians, 100, 0.2))
        .count() as u64;
    let r = rate(fails, trials);
    eprintln!("false failures of a p99 judge under a shared 1-minute slowdown {r} (alpha 0.05)");
    assert!(r <= 0.12, "false failure rate {r} above alpha 0.05");
}

/// The same with a sustained rise (a traffic ramp: both versions 30 % slower at p99's
/// judge, 50 % at p50's, from minute 5 of a 20-minute release).
#[test]
fn a_sustained_latency_rise_shared_by_both_versions_fails_a_healthy_canary() {
    let trials = 100;
    let mut rng = Rng::new(0x5eed_0004);
    let mut worst = Vec::new();
    for (metric, factor) in [("latency_p99", 1.3), ("latency_p50", 1.5)] {
        let (m, seq) = spec(metric, 0.05, 100);
        let medians: Vec<f64> = (0..120)
            .map(|i| if i < 30 { 50.0 } else { 50.0 * factor })
            .collect();
        let fails = (0..trials)
            .filter(|_| judge_latency(&m, &seq, &mut rng, &medians, 100, 0.2))
            .count() as u64;
        let r = rate(fails, trials);
        eprintln!(
            "false failures of {metric} under a shared sustained x{factor}: {r} (alpha 0.05)"
        );
        worst.push((metric, r));
    }
    assert!(
        worst.iter().all(|(_, r)| *r <= 0.12),
        "false failure rates above alpha 0.05: {worst:?}"
    );
}

/// Control (passes; guards the latency judge's null when nothing drifts).
#[test]
fn guard_a_stationary_latency_keeps_alpha() {
    let trials = 100;
    let mut rng = Rng::new(0x5eed_0005);
    let medians = vec![50.0; 120];
    for metric in ["latency_p99", "latency_p50"] {
        let (m, seq) = spec(metric, 0.05, 100);
        let fails = (0..trials)
            .filter(|_| judge_latency(&m, &seq, &mut rng, &medians, 100, 0.2))
            .count() as u64;
        let r = rate(fails, trials);
        eprintln!("false failures of {metric} without drift {r}");
        assert!(
            r <= 0.11,
            "{metric}: false failure rate {r} above alpha 0.05"
        );
    }
}

// ---------------------------------------------------------------------------------
// Power: evidence a long healthy step drove down, kept across the step change.
// ---------------------------------------------------------------------------------

/// A release: 30 healthy minutes at 10 % (0.5 % errors on both), then a 5-minute step
/// at 50 % where the canary's error rate doubles (a regression that shows only under
/// load: a pool sized for a share, a cache that no longer fits). Whether the judge
/// caught it, carrying the evidence over the step change (`carry`) or starting afresh.
fn late_regression(m: &MetricSpec, seq: &Sequential, rng: &mut Rng, carry: bool) -> bool {
    // As `release::progress` keeps it: planned for the policy's two steps, and told
    // when the second begins.
    let mut ev = Evidence::with_later_tests(1);
    let h = Histogram::default();
    for i in 0..210 {
        let (w, pc) = if i < 180 { (0.1, 0.005) } else { (0.5, 0.01) };
        if i == 180 {
            if carry {
                ev.begin_step();
            } else {
                ev = Evidence::default();
            }
        }
        let s = common::split_errors(rng, 2000, w, 0.005, pc);
        if judge::sequential(m, seq, &s, &mut ev, &h).verdict == Verdict::Fail {
            return i >= 180;
        }
    }
    false
}

/// The evidence was one product of likelihood ratios from the first interval of the
/// release, never restarted at a step (only at the watch and at rollback level 1).
/// Half an hour of healthy 10 % traffic drives every alternative's log-likelihood far
/// below zero (about -47 for the odds ratio 2), and a regression that appears at the
/// 50 % step had first to climb all of it back: a canary with twice stable's error
/// rate over five minutes of 50 % traffic (about 1 000 canary errors against 500) was
/// promoted in about half of the releases (caught 0.52, against 0.95 with evidence
/// started at the step). Now a test also starts at each later step (`Evidence::with_later_tests`).
#[test]
fn evidence_from_a_long_healthy_step_hides_a_regression_that_appears_at_a_later_step() {
    let (m, seq) = spec("error_rate", 0.05, 100);
    let trials = 300;
    let mut rng = Rng::new(0x5eed_0006);
    let carried = (0..trials)
        .filter(|_| late_regression(&m, &seq, &mut rng, true))
        .count() as u64;
    let fresh = (0..trials)
        .filter(|_| late_regression(&m, &seq, &mut rng, false))
        .count() as u64;
    let (carried, fresh) = (rate(carried, trials), rate(fresh, trials));
    eprintln!("2x regression at the 50 % step caught: {carried} carried, {fresh} fresh");
    assert!(
        carried >= fresh - 0.1,
        "a 2x regression caught in {carried} of releases with the steps' evidence carried, {fresh} with it started at the step"
    );
}

/// The same through the release itself (`release::step` on virtual time): a
/// two-step canary, 30 healthy minutes at 10 %, then 5 minutes at 50 % where the
/// canary's error rate doubles. It must be rolled back, as a release whose steps each
/// tested afresh would be, far more often than the carried evidence managed (about
/// half); and a canary healthy at both steps must still keep alpha.
#[test]
fn a_release_rolls_back_a_regression_that_appears_at_its_second_step() {
    let p = Policy::from_yaml(
        r#"
service: shop
deploy: {process: {command: ["./shop", "--port", "{port}"]}}
traffic: {proxy: {listen: 127.0.0.1:8080}}
strategy: {canary: {steps: [{weight: 10, bake: 30m}, {weight: 50, bake: 5m}]}}
analysis:
  interval: 10s
  min_samples: 100
  metrics:
    - {metric: error_rate, judge: {sequential: {alpha: 0.05}}}
"#,
    )
    .unwrap();
    let mut rng = Rng::new(0x5eed_0008);
    let mut run = |late: f64| {
        let (s, _) = drive::drive(&p, |s| {
            let w = s.weight.percent() / 100.0;
            let pc = if w > 0.2 { late } else { 0.005 };
            common::split_errors(&mut rng, 2000, w, 0.005, pc)
        });
        s.phase == rampart_core::release::Phase::RolledBack
    };
    let trials = 100;
    let caught = rate((0..trials).filter(|_| run(0.01)).count() as u64, trials);
    let false_fails = rate((0..trials).filter(|_| run(0.005)).count() as u64, trials);
    eprintln!("late 2x regression rolled back {caught}; healthy rolled back {false_fails}");
    assert!(
        caught >= 0.85,
        "a 2x regression at the second step rolled back in {caught}"
    );
    assert!(
        false_fails <= 0.1,
        "healthy canaries rolled back in {false_fails}"
    );
}

// ---------------------------------------------------------------------------------
// The watch after promotion: a frozen baseline as the null.
// ---------------------------------------------------------------------------------

/// During the watch the new version's errors are tested against the previous
/// version's rate from the steps (its upper 99 % bound, odds tolerance 1.5). Nothing
/// conditions on what the service as a whole is going through NOW: a one-minute blip
/// of a shared dependency that triples the error rate in the watch's first minutes
/// (which the share test of the steps shrugs off, see the guard above) fails a version
/// exactly as good as the previous one. docs/policy.md: "drift alone is never a
/// regression". (The same blip after 5 healthy minutes of watch is not caught: the
/// evidence deficit of the test above.)
#[test]
#[ignore = "known defect (review G): the watch's frozen baseline cannot absorb a service-wide blip; open"]
fn the_watch_rolls_back_a_version_as_good_as_the_previous_one_on_a_shared_error_blip() {
    let (m, seq) = spec("error_rate", 0.05, 100);
    let trials = 300;
    let mut rng = Rng::new(0x5eed_0007);
    let h = Histogram::default();
    let mut fails = 0;
    for _ in 0..trials {
        // The baseline: 30 minutes of the previous version at 90 % of 200 requests/s.
        let base_n = 324_000;
        let baseline = common::stats(base_n, rng.binomial(base_n, 0.005));
        let mut ev = Evidence::default();
        for i in 0..60 {
            let p = if (3..9).contains(&i) { 0.015 } else { 0.005 };
            let s = IntervalSample {
                stable: baseline.clone(),
                canary: common::stats(2000, rng.binomial(2000, p)),
                ..Default::default()
            };
            let r = judge::sequential_with(&m, &seq, &s, &mut ev, &h, true);
            if r.verdict == Verdict::Fail {
                fails += 1;
                break;
            }
        }
    }
    let r = rate(fails, trials);
    eprintln!("watch false failures under a shared 1-minute x3 blip {r} (alpha 0.05)");
    assert!(r <= 0.08, "false failure rate {r} above alpha 0.05");
}

// ---------------------------------------------------------------------------------
// Rollback level 1: one interval of fresh evidence is read as "health restored".
// ---------------------------------------------------------------------------------

mod drive {
    use super::common;
    use rampart_core::metrics::IntervalSample;
    use rampart_core::migrations::Class;
    use rampart_core::release::{AuditEvent, Input, Release, step};
    use rampart_core::{Millis, Policy};

    /// Runs a release to its end on virtual time (as `judges_review.rs`): every action
    /// succeeds; each measurement is `measure(state)`.
    pub fn drive(
        p: &Policy,
        mut measure: impl FnMut(&Release) -> IntervalSample,
    ) -> (Release, Vec<AuditEvent>) {
        let mut now: Millis = 1_000_000;
        let mut s = step(p, &Release::default(), &common::start("v2", "v1"), now).state;
        let mut events = Vec::new();
        for _ in 0..20_000 {
            if s.phase.is_terminal() {
                break;
            }
            let input = match s.pending.clone() {
                Some(a) => {
                    common::succeeded(&a, Class::Expand).unwrap_or_else(|| Input::Measured {
                        sample: measure(&s),
                    })
                }
                None => {
                    now = now.max(s.wake_at().unwrap());
                    Input::Tick
                }
            };
            let t = step(p, &s, &input, now);
            events.extend(t.events);
            s = t.state;
        }
        assert!(s.phase.is_terminal(), "never ended: {:?}", s.phase);
        (s, events)
    }
}

/// Level 1 (flags off) is verified by "the first interval after it", which must pass
/// outright, judged with FRESH evidence. For a threshold judge a pass is a reading
/// within its limits; for the sequential judge a pass only means "not yet rejected",
/// and one interval of fresh evidence almost never rejects a moderate regression.
/// Here the flags did not help: the canary still fails 1 % of 500 requests against
/// stable's 0.5 % (twice as bad, min_samples met) and "level 1 restored health": the
/// rollback stops, and the still-bad version keeps its 20 % of the traffic.
#[test]
fn level_one_is_verified_by_one_interval_of_a_canary_still_twice_as_bad() {
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
    let (s, events) = drive::drive(&p, |s| {
        if s.rollback_level == Some(1) {
            errors((2000, 10), (500, 5))
        } else {
            errors((800, 4), (200, 20))
        }
    });
    let verified = events.iter().any(|e| e.kind == "level_verified");
    assert!(
        !verified,
        "level 1 verified on a canary still twice as bad; it keeps {} of traffic",
        s.weight
    );
}
