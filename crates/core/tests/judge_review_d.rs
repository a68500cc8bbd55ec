#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Review D: adversarial inputs to the judges (threshold, sequential, pooling), each
//! a verdict that is wrong in the dangerous or the surprising direction.

use rampart_core::Policy;
use rampart_core::judge::{self, Evidence, MetricReading, Verdict};
use rampart_core::metrics::{Histogram, IntervalSample, VariantStats};
use rampart_core::policy::{Judge, MetricSpec};
use rampart_core::release::OutcomeKind;
use rampart_core::replay::replay;
use rampart_core::samples::Samples;

fn policy(metrics: &str) -> Policy {
    Policy::from_yaml(&format!(
        r#"service: s
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 5m}}]}}}}
analysis:
  interval: 10s
  prometheus: http://127.0.0.1:9
  metrics:
{metrics}
"#
    ))
    .unwrap()
}

fn metric(p: &Policy) -> MetricSpec {
    p.analysis.metrics[0].clone()
}

/// A healthy stable's 500 requests: 10 to 40 ms.
fn spread() -> Histogram {
    let mut h = at(10, 200);
    h.merge(&at(15, 150));
    h.merge(&at(20, 140));
    h.merge(&at(40, 10));
    h
}

/// `n` requests at `ms` each.
fn at(ms: u64, n: u64) -> Histogram {
    let mut h = Histogram::default();
    h.record_many(ms * 1000, n);
    h
}

fn stats(requests: u64, errors: u64, latency: Histogram) -> VariantStats {
    VariantStats {
        requests,
        errors,
        latency_total: latency.clone(),
        latency,
    }
}

/// Runs a sequential judge over `intervals`, stable's latency history growing as the
/// release grows it (after each interval), and returns the last reading.
fn sequential_run(spec: &MetricSpec, intervals: &[IntervalSample]) -> MetricReading {
    let Judge::Sequential(seq) = &spec.judge else {
        panic!("not sequential")
    };
    let mut ev = Evidence::default();
    let mut history = Histogram::default();
    let mut last = None;
    for s in intervals {
        last = Some(judge::sequential(spec, seq, s, &mut ev, &history));
        history.merge(&s.stable.latency);
    }
    last.unwrap()
}

/// A canary that answers nothing (every request a failed upstream connection: an
/// error, and in neither latency, as the proxy, nginx and HAProxy count it) has
/// requests but an empty latency histogram. The threshold judge says its p99 "could
/// not be computed" (inconclusive); the sequential latency judge counts its requests
/// toward `min_samples`, tests zero of them, and PASSES it.
#[test]
fn a_sequential_latency_judge_never_passes_a_canary_with_no_latency_recorded() {
    let spec = metric(&policy(
        "    - {metric: latency_p99, judge: sequential, min_samples: 50}",
    ));
    // Stable healthy: 500 requests at 20 ms per interval. Canary: 100 requests per
    // interval, every one a 502 with no time recorded.
    let dead = IntervalSample {
        stable: stats(500, 0, spread()),
        canary: stats(100, 100, Histogram::default()),
        queries: Vec::new(),
    };
    let r = sequential_run(&spec, &[dead.clone(), dead.clone(), dead]);
    assert_ne!(
        r.verdict,
        Verdict::Pass,
        "a canary with no latency measured passed its latency metric: {r:?}"
    );
}

/// The same through the state machine (`rampart replay`): a recorded canary whose
/// every request failed with no time recorded (its latency cells empty) is PROMOTED by
/// a policy judging latency sequentially.
#[test]
fn a_release_whose_canary_answers_nothing_is_not_promoted_on_its_latency() {
    let p = Policy::from_yaml(
        r#"service: s
deploy: {process: {command: ["x", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy: {canary: {steps: [{weight: 10, bake: 1m}]}}
analysis:
  interval: 10s
  metrics:
    - {metric: latency_p99, judge: sequential, min_samples: 50}
"#,
    )
    .unwrap();
    let mut csv = String::from("t_s,variant,requests,errors,p50_ms,p99_ms\n");
    for t in 0..600 {
        csv.push_str(&format!("{t},stable,90,0,20,45\n{t},canary,10,10,,\n"));
    }
    let samples = Samples::parse(&csv).unwrap();
    let r = replay(&p, &samples, |_, _, _| {});
    assert_ne!(
        r.release.outcome(),
        Some(OutcomeKind::Promoted),
        "a canary that answered no request was promoted on its p99"
    );
}

/// A latency `max` above the histogram's range (its last bucket starts near 192 s and
/// holds everything slower) could never be broken: a canary whose every request took
/// 20 minutes passed `max: 5m`. Such a limit is refused at its line; one just inside
/// the range still fails a canary far over it.
#[test]
fn a_latency_max_beyond_the_histograms_range_is_refused_and_one_inside_it_judges() {
    let yaml = |max: &str| {
        format!(
            r#"service: s
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 5m}}]}}}}
analysis:
  interval: 10s
  metrics:
    - metric: latency_p99
      judge: {{max: {max}}}
"#
        )
    };
    let d = Policy::from_yaml(&yaml("5m")).unwrap_err().diagnostics;
    let max = d
        .iter()
        .find(|d| d.path == "analysis.metrics[0].judge.max")
        .unwrap_or_else(|| panic!("{d:?}"));
    assert_eq!(max.line, 9, "{max:?}");
    assert!(max.message.contains("never be broken"), "{max:?}");
    let spec = metric(&Policy::from_yaml(&yaml("3m")).unwrap());
    let Judge::Threshold(t) = &spec.judge else {
        panic!()
    };
    let hanging = IntervalSample {
        stable: stats(500, 0, spread()),
        canary: stats(100, 0, at(20 * 60 * 1000, 100)),
        queries: Vec::new(),
    };
    let r = judge::threshold(&spec, t, &hanging);
    assert_eq!(
        r.verdict,
        Verdict::Fail,
        "every canary request at 20 minutes against max 3m: {r:?}"
    );
}

/// The threshold judge's `min_samples` gate counts requests, not the latencies
/// behind the quantile: a canary with 100 requests of which 98 got no answer (no time
/// recorded) and 2 fast ones is judged on those 2, and its p99 PASSES `max: 200ms`
/// with `min_samples: 50`. (Stable's breach check reads `stable.requests` the same way.)
#[test]
fn a_latency_threshold_needs_min_samples_latencies_not_just_requests() {
    let spec = metric(&policy(
        "    - {metric: latency_p99, judge: {max: 200ms}, min_samples: 50}",
    ));
    let Judge::Threshold(t) = &spec.judge else {
        panic!()
    };
    let mostly_unanswered = IntervalSample {
        stable: stats(500, 0, spread()),
        canary: stats(100, 98, at(10, 2)),
        queries: Vec::new(),
    };
    let r = judge::threshold(&spec, t, &mostly_unanswered);
    assert_ne!(
        r.verdict,
        Verdict::Pass,
        "a p99 of 2 latencies passed a min_samples of 50: {r:?}"
    );
}
