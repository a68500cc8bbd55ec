//! Metrics from a source's counts (`bad` or `good` events out of a `total`) and
//! metrics where higher is better, judged through the real state machine on seeded
//! simulations (issue 17, items 1 and 2). The builtin proxy counters are left empty,
//! as on Kubernetes: only the source's counts can decide.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use rampart_core::Policy;
use rampart_core::metrics::{IntervalSample, QueryReading};
use rampart_core::release::OutcomeKind;
use rampart_core::replay::{replay, replay_with};
use rampart_core::sim::{Rng, Stream};

fn policy(metric: &str) -> Policy {
    Policy::from_yaml(&format!(
        r#"service: s
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 5m}}]}}}}
analysis:
  interval: 1s
  prometheus: http://127.0.0.1:9090
  no_data: {{limit: 30}}
  inconclusive: {{limit: 60}}
  metrics: [{metric}]
"#
    ))
    .unwrap_or_else(|e| panic!("{metric}: {e}"))
}

/// A counts metric named `m` on the stream's errors (`bad`) or successes (`good`), with
/// the `rest` of its fields.
fn counts(kind: &str, rest: &str) -> Policy {
    policy(&format!(
        "{{name: m, source: prometheus, {kind}: 'x{{variant}}', total: 'y{{variant}}', {rest}}}"
    ))
}

const SEQUENTIAL: &str = "judge: sequential, min_samples: 100";

fn stream(stable_error_rate: f64, canary_error_rate: f64) -> Stream {
    Stream {
        seconds: 300,
        rps: 200,
        canary_share: 0.1,
        stable_error_rate,
        canary_error_rate,
        latency: None,
    }
}

/// How one simulated release ended: the outcome and the decision's second.
type Ended = (Option<OutcomeKind>, Option<u64>);

/// The release on `stream`, measured only through metric `m`'s counts: its `kind`
/// events (`bad`: errors, `good`: successes) out of the requests.
fn through_counts(policy: &Policy, stream: Stream, kind: &str, seed: u64) -> Ended {
    let samples = stream.draw(&mut Rng::new(seed));
    let r = replay_with(
        policy,
        |from, to| {
            let w = samples.window(from, to);
            let events = |v: &rampart_core::metrics::VariantStats| match kind {
                "bad" => v.errors as f64,
                _ => (v.requests - v.errors) as f64,
            };
            IntervalSample {
                queries: vec![QueryReading {
                    name: "m".into(),
                    stable: Some(events(&w.stable)),
                    canary: Some(events(&w.canary)),
                    stable_samples: Some(w.stable.requests as f64),
                    canary_samples: Some(w.canary.requests as f64),
                    detail: String::new(),
                    ..Default::default()
                }],
                ..Default::default()
            }
        },
        |_, _, _| {},
    );
    (r.release.outcome(), r.release.decision.map(|d| d.at / 1000))
}

fn rolled_back(ended: &[Ended]) -> usize {
    ended
        .iter()
        .filter(|(o, _)| *o == Some(OutcomeKind::RolledBack))
        .count()
}

#[test]
fn counts_of_errors_decide_exactly_as_the_builtin_error_rate() {
    // The same counts through a source give the same test as the proxy's counters: the
    // same outcome at the same second, release by release.
    let builtin =
        policy("{metric: error_rate, judge: {sequential: {alpha: 0.05}}, min_samples: 100}");
    let sourced = counts(
        "bad",
        "judge: {sequential: {alpha: 0.05}}, min_samples: 100",
    );
    for (canary, seeds) in [(0.005, 0..40), (0.01, 40..80), (0.05, 80..100)] {
        for seed in seeds {
            let s = stream(0.005, canary);
            let r = replay(&builtin, &s.draw(&mut Rng::new(seed)), |_, _, _| {});
            let expected = (r.release.outcome(), r.release.decision.map(|d| d.at / 1000));
            assert_eq!(
                through_counts(&sourced, s, "bad", seed),
                expected,
                "seed {seed}, canary error rate {canary}"
            );
        }
    }
}

#[test]
fn a_higher_is_better_metric_whose_canary_drops_is_rolled_back() {
    // Success rate 99.5 % on stable, 95 % on the canary.
    let p = counts("good", SEQUENTIAL);
    let ended: Vec<Ended> = (0..50)
        .map(|seed| through_counts(&p, stream(0.005, 0.05), "good", seed))
        .collect();
    assert_eq!(rolled_back(&ended), 50, "{ended:?}");
    // Decided mid-step, within seconds, not at the end of the 5-minute bake.
    assert!(ended.iter().all(|(_, t)| t.unwrap() < 60), "{ended:?}");
    // The threshold judge on the same counts, by its lower limits.
    for judge in ["{min: 98%}", "{min_ratio_to_stable: 0.98}"] {
        let p = counts("good", &format!("judge: {judge}, min_samples: 10"));
        let ended = through_counts(&p, stream(0.005, 0.05), "good", 1);
        assert_eq!(ended.0, Some(OutcomeKind::RolledBack), "{judge}: {ended:?}");
    }
}

#[test]
fn a_higher_is_better_metric_whose_canary_rises_is_never_rolled_back() {
    // Stable succeeds 95 % of the time, the canary always: better, never worse.
    let seq = counts(
        "good",
        "judge: {sequential: {alpha: 0.1}}, min_samples: 100",
    );
    let ended: Vec<Ended> = (0..200)
        .map(|seed| through_counts(&seq, stream(0.05, 0.0), "good", seed))
        .collect();
    assert_eq!(rolled_back(&ended), 0);
    assert!(
        ended.iter().all(|(o, _)| *o == Some(OutcomeKind::Promoted)),
        "{ended:?}"
    );
    for judge in ["{min: 90%}", "{min_ratio_to_stable: 0.99}"] {
        let p = counts("good", &format!("judge: {judge}, min_samples: 10"));
        let ended: Vec<Ended> = (0..20)
            .map(|seed| through_counts(&p, stream(0.05, 0.0), "good", seed))
            .collect();
        assert_eq!(rolled_back(&ended), 0, "{judge}: {ended:?}");
    }
}

#[test]
fn false_alarms_stay_under_alpha_for_a_higher_is_better_metric() {
    // Equal streams: a judge that tested the wrong side, or not anytime-valid, fails
    // this. alpha 0.1 so that 400 trials can see a violation (bound + 3 standard
    // errors is about 0.145).
    let (alpha, trials) = (0.1, 400);
    let p = counts(
        "good",
        "judge: {sequential: {alpha: 0.1}}, min_samples: 100",
    );
    let ended: Vec<Ended> = (0..trials)
        .map(|seed| through_counts(&p, stream(0.01, 0.01), "good", 1000 + seed))
        .collect();
    let rate = rolled_back(&ended) as f64 / trials as f64;
    let bound = alpha + 3.0 * (alpha * (1.0 - alpha) / trials as f64).sqrt();
    assert!(rate <= bound, "false alarm rate {rate} above {bound}");
}

/// Review: a `good` query that lost its `{variant}` filter counts every variant's
/// successes, far more than the canary's `total`. Read as the total (clamped), a
/// failing canary was 100 % good and promoted; it is no reading, and never a pass.
#[test]
fn good_events_far_above_their_total_never_promote_a_failing_canary() {
    for judge in [SEQUENTIAL, "judge: {min: 98%}, min_samples: 10"] {
        let p = counts("good", judge);
        let samples = stream(0.005, 0.05).draw(&mut Rng::new(7));
        let r = replay_with(
            &p,
            |from, to| {
                let w = samples.window(from, to);
                let everyone = (w.stable.requests - w.stable.errors + w.canary.requests
                    - w.canary.errors) as f64;
                IntervalSample {
                    queries: vec![QueryReading {
                        name: "m".into(),
                        stable: Some((w.stable.requests - w.stable.errors) as f64),
                        canary: Some(everyone),
                        stable_samples: Some(w.stable.requests as f64),
                        canary_samples: Some(w.canary.requests as f64),
                        ..Default::default()
                    }],
                    ..Default::default()
                }
            },
            |_, _, _| {},
        );
        assert_ne!(
            r.release.outcome(),
            Some(OutcomeKind::Promoted),
            "{judge}: a canary read as more good than its total was promoted"
        );
    }
}
