//! `rampart bench decisions`: how fast and how reliably each judge decides, on
//! simulated releases, side by side on the same streams.
//!
//! Every trial draws one stream (seeded) and replays it through the real state machine
//! under each policy. A/A streams measure false rollbacks; regressions measure power
//! and time to decision.

use std::time::Instant;

use rampart_core::Policy;
use rampart_core::metrics::IntervalSample;
use rampart_core::release::OutcomeKind;
use rampart_core::replay::replay;
use rampart_core::samples::Samples;
use rampart_core::sim::{Latency, Rng, Stream};
use serde::Serialize;

/// The judges compared, as policies: (label, policy YAML).
const ERROR_POLICIES: [(&str, &str); 3] = [
    (
        "threshold 1%/60s, 1 breach",
        r#"{metric: error_rate, judge: {max: 1%}, min_samples: 1, failure_limit: 1}"#,
    ),
    (
        "threshold 1%/60s, 3 breaches",
        r#"{metric: error_rate, judge: {max: 1%}, min_samples: 1, failure_limit: 3}"#,
    ),
    (
        SEQUENTIAL,
        r#"{metric: error_rate, judge: sequential, min_samples: 100}"#,
    ),
];
const MEDIAN_POLICIES: [(&str, &str); 2] = [
    (
        "threshold p50 <= 1.2x stable/60s, 1 breach",
        r#"{metric: latency_p50, judge: {max_ratio_to_stable: 1.2}, min_samples: 1, failure_limit: 1}"#,
    ),
    (
        SEQUENTIAL,
        r#"{metric: latency_p50, judge: sequential, min_samples: 100}"#,
    ),
];
const P99_POLICIES: [(&str, &str); 2] = [
    (
        "threshold p99 <= 1.2x stable/60s, 1 breach",
        r#"{metric: latency_p99, judge: {max_ratio_to_stable: 1.2}, min_samples: 1, failure_limit: 1}"#,
    ),
    (
        SEQUENTIAL,
        r#"{metric: latency_p99, judge: sequential, min_samples: 100}"#,
    ),
];
/// The judge the project ships.
const SEQUENTIAL: &str = "sequential alpha 0.01";
/// The bounds, measured on the same streams (error regressions only).
const KNOWN_RATES: &str = "SPRT knowing both rates (bound)";
const KNOWN_EFFECT: &str = "share test knowing the effect (bound, baseline unknown)";
/// The alpha of the sequential judges and of the bounds.
const ALPHA: f64 = 0.01;

fn policy(metric: &str, interval: &str) -> Policy {
    let text = format!(
        r#"service: bench
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 10m}}]}}}}
analysis:
  interval: {interval}
  no_data: {{limit: 30, action: halt}}
  inconclusive: {{limit: 60, action: halt}}
  metrics: [{metric}]
"#
    );
    // The policies are constants of this file; a failure is a bug here, not input.
    Policy::from_yaml(&text).unwrap_or_else(|e| panic!("bench policy: {:?}", e.diagnostics))
}

/// What a scenario measures, and so which judges it compares.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Errors,
    Median,
    P99,
}

fn judges(kind: Kind) -> Vec<(&'static str, Policy)> {
    let list: &[(&str, &str)] = match kind {
        Kind::Errors => &ERROR_POLICIES,
        Kind::Median => &MEDIAN_POLICIES,
        Kind::P99 => &P99_POLICIES,
    };
    list.iter()
        .map(|(label, metric)| {
            let interval = if label.starts_with("threshold") {
                "60s"
            } else {
                "1s"
            };
            (*label, policy(metric, interval))
        })
        .collect()
}

/// One scenario: a label and the stream it draws.
#[derive(Debug, Clone, Copy)]
struct Scenario {
    name: &'static str,
    stream: Stream,
    regression: bool,
    kind: Kind,
}

fn scenarios() -> Vec<Scenario> {
    let base = Stream {
        seconds: 600,
        rps: 200,
        canary_share: 0.1,
        stable_error_rate: 0.005,
        canary_error_rate: 0.005,
        latency: None,
    };
    let err = |name, rps, rate| Scenario {
        name,
        stream: Stream {
            rps,
            canary_error_rate: rate,
            ..base
        },
        regression: rate > base.stable_error_rate,
        kind: Kind::Errors,
    };
    let lat = |name, latency: Latency, kind| Scenario {
        name,
        stream: Stream {
            latency: Some(latency),
            ..base
        },
        regression: latency != Latency::medians(50.0, 50.0, 0.5),
        kind,
    };
    vec![
        err("errors A/A (0.5%)", 200, 0.005),
        err("errors 0.5% -> 1% (2x)", 200, 0.01),
        err("errors 0.5% -> 2% (4x)", 200, 0.02),
        err("errors 0.5% -> 5% (10x)", 200, 0.05),
        err("low traffic 20 rps: errors A/A (0.5%)", 20, 0.005),
        err("low traffic 20 rps: errors 0.5% -> 2% (4x)", 20, 0.02),
        err("low traffic 20 rps: errors 0.5% -> 5% (10x)", 20, 0.05),
        lat(
            "latency A/A (median 50ms)",
            Latency::medians(50.0, 50.0, 0.5),
            Kind::Median,
        ),
        lat(
            "latency median +20%",
            Latency::medians(50.0, 60.0, 0.5),
            Kind::Median,
        ),
        lat(
            "latency median +50%",
            Latency::medians(50.0, 75.0, 0.5),
            Kind::Median,
        ),
        lat(
            "latency A/A (p99 160ms)",
            Latency::medians(50.0, 50.0, 0.5),
            Kind::P99,
        ),
        lat(
            "latency p99 +50%",
            Latency::tail(50.0, 0.5, 0.99, 1.5),
            Kind::P99,
        ),
        lat(
            "latency p99 +200%",
            Latency::tail(50.0, 0.5, 0.99, 3.0),
            Kind::P99,
        ),
    ]
}

/// The first second at which a one-sided sequential probability ratio test of `p0`
/// against `p1` reaches `1/alpha`, on per-second (bad, trials, p0, p1).
fn sprt(seconds: impl IntoIterator<Item = (u64, u64, f64, f64)>, alpha: f64) -> Option<f64> {
    let mut log_lr = 0.0;
    for (s, (bad, trials, p0, p1)) in seconds.into_iter().enumerate() {
        if !(p0 > 0.0 && p0 < 1.0 && trials > 0) {
            continue;
        }
        let good = trials.saturating_sub(bad) as f64;
        log_lr += bad as f64 * (p1 / p0).ln() + good * ((1.0 - p1) / (1.0 - p0)).ln();
        if log_lr >= (1.0 / alpha).ln() {
            return Some(s as f64 + 1.0);
        }
    }
    None
}

/// The two bounds on an error regression's stream: an SPRT on the canary's requests
/// that knows both error rates, and the test of each error's side (rampart's) that
/// knows the effect, the best any test can do without knowing stable's rate.
fn bounds(stream: &Stream, samples: &Samples) -> (Option<f64>, Option<f64>) {
    let (ps, pc) = (stream.stable_error_rate, stream.canary_error_rate);
    let per_second: Vec<IntervalSample> = (0..samples.end_s())
        .map(|s| samples.window(s, s + 1))
        .collect();
    let known_rates = sprt(
        per_second
            .iter()
            .map(|w| (w.canary.errors, w.canary.requests, ps, pc)),
        ALPHA,
    );
    let known_effect = sprt(
        per_second.iter().map(|w| {
            let (nc, ns) = (w.canary.requests as f64, w.stable.requests as f64);
            let p0 = nc / (nc + ns);
            let p1 = nc * pc / (nc * pc + ns * ps);
            (w.canary.errors, w.canary.errors + w.stable.errors, p0, p1)
        }),
        ALPHA,
    );
    (known_rates, known_effect)
}

/// One row of the benchmark table.
#[derive(Debug, Serialize)]
pub struct Row {
    /// The scenario.
    pub scenario: String,
    /// The judge.
    pub judge: String,
    /// `false_rollbacks` (A/A: the canary is as good as stable) or `power`.
    pub measures: &'static str,
    /// Trials run.
    pub trials: u64,
    /// Share of trials rolled back (false rollbacks on A/A, power on regressions).
    pub rolled_back: f64,
    /// Median seconds to the rollback decision, among rolled back trials.
    pub median_s: Option<f64>,
    /// 90th percentile of the same.
    pub p90_s: Option<f64>,
}

/// The whole benchmark result.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Seed of the first trial.
    pub seed: u64,
    /// Trials per error scenario.
    pub trials: u64,
    /// Trials per latency scenario.
    pub latency_trials: u64,
    /// Wall time, seconds.
    pub elapsed_s: f64,
    /// Results.
    pub rows: Vec<Row>,
}

fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    Some(sorted[idx])
}

/// The reference script, run with `--savvi PYTHON`.
const SAVVI_SCRIPT: &str = include_str!("../../../../../scripts/bench_savvi.py");

/// Runs savvi's multinomial test on the error counts of `streams`; returns the decision
/// second of each trial, or why it could not run.
fn savvi(
    python: &str,
    streams: &[Vec<(u64, u64)>],
    alpha: f64,
    share: f64,
) -> Result<Vec<Option<f64>>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let script = dir.path().join("bench_savvi.py");
    let data = dir.path().join("streams.jsonl");
    std::fs::write(&script, SAVVI_SCRIPT).map_err(|e| e.to_string())?;
    let lines: Vec<String> = streams
        .iter()
        .map(|s| serde_json::to_string(s).unwrap_or_default())
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").map_err(|e| e.to_string())?;
    let out = std::process::Command::new(python)
        .arg(&script)
        .arg(&data)
        .arg(alpha.to_string())
        .arg(share.to_string())
        .output()
        .map_err(|e| format!("running {python}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{python} bench_savvi.py: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("reading savvi's output: {e}"))
}

fn row(scenario: &Scenario, judge: &str, results: &[Option<f64>]) -> Row {
    let mut times: Vec<f64> = results.iter().flatten().copied().collect();
    times.sort_by(f64::total_cmp);
    Row {
        scenario: scenario.name.to_string(),
        judge: judge.to_string(),
        measures: if scenario.regression {
            "power"
        } else {
            "false_rollbacks"
        },
        trials: results.len() as u64,
        rolled_back: times.len() as f64 / results.len().max(1) as f64,
        median_s: quantile(&times, 0.5),
        p90_s: quantile(&times, 0.9),
    }
}

/// One trial's results.
struct Trial {
    /// The second each judge rolled back at, if it did.
    decisions: Vec<Option<f64>>,
    /// Errors per second (canary, stable), for savvi.
    errors: Vec<(u64, u64)>,
    /// The bounds' decision seconds (error regressions only).
    bounds: (Option<f64>, Option<f64>),
}

/// Draws one stream and replays it under each judge.
fn run_trial(sc: &Scenario, js: &[(&str, Policy)], rng: &mut Rng, savvi: bool) -> Trial {
    let samples = sc.stream.draw(rng);
    let decisions = js
        .iter()
        .map(|(_, p)| {
            let r = replay(p, &samples, |_, _, _| {});
            match r.release.outcome() {
                Some(OutcomeKind::RolledBack) => {
                    r.release.decision.as_ref().map(|d| d.at as f64 / 1000.0)
                }
                _ => None,
            }
        })
        .collect();
    let errors = sc.kind == Kind::Errors;
    Trial {
        decisions,
        errors: if savvi && errors {
            (0..samples.end_s())
                .map(|s| {
                    let w = samples.window(s, s + 1);
                    (w.canary.errors, w.stable.errors)
                })
                .collect()
        } else {
            Vec::new()
        },
        bounds: if errors && sc.regression {
            bounds(&sc.stream, &samples)
        } else {
            (None, None)
        },
    }
}

/// Runs every scenario under every judge; with `savvi`, also savvi's multinomial test
/// (run by that Python interpreter) on the error scenarios' streams.
pub fn run(trials: u64, seed: u64, savvi_python: Option<&str>) -> Result<Report, String> {
    #[allow(clippy::disallowed_methods)] // wall time of the benchmark itself, reported only
    let started = Instant::now();
    let latency_trials = (trials / 4).max(1);
    let mut rows = Vec::new();
    for (si, sc) in scenarios().into_iter().enumerate() {
        let errors = sc.kind == Kind::Errors;
        let n = if errors { trials } else { latency_trials };
        let js = judges(sc.kind);
        let threads = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(8) as u64;
        let per_thread: Vec<Vec<Trial>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let js = &js;
                    scope.spawn(move || {
                        (t..n)
                            .step_by(threads as usize)
                            .map(|trial| {
                                let mut rng = Rng::new(
                                    seed ^ ((si as u64) << 40) ^ trial.wrapping_mul(0x9e37_79b9),
                                );
                                run_trial(&sc, js, &mut rng, savvi_python.is_some())
                            })
                            .collect::<Vec<Trial>>()
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let all: Vec<&Trial> = per_thread.iter().flatten().collect();
        for (j, (label, _)) in js.iter().enumerate() {
            let results: Vec<Option<f64>> = all.iter().map(|t| t.decisions[j]).collect();
            rows.push(row(&sc, label, &results));
        }
        if errors && sc.regression {
            let rates: Vec<Option<f64>> = all.iter().map(|t| t.bounds.0).collect();
            rows.push(row(&sc, KNOWN_RATES, &rates));
            let effect: Vec<Option<f64>> = all.iter().map(|t| t.bounds.1).collect();
            rows.push(row(&sc, KNOWN_EFFECT, &effect));
        }
        if let (Some(python), true) = (savvi_python, errors) {
            let streams: Vec<Vec<(u64, u64)>> = all.iter().map(|t| t.errors.clone()).collect();
            let results = savvi(python, &streams, ALPHA, sc.stream.canary_share)?;
            rows.push(row(
                &sc,
                "savvi multinomial alpha 0.01 (reference)",
                &results,
            ));
        }
    }
    Ok(Report {
        seed,
        trials,
        latency_trials,
        elapsed_s: started.elapsed().as_secs_f64(),
        rows,
    })
}

/// The report as Markdown: every row, then the sequential judge's median time against
/// the two bounds on each error regression.
pub fn markdown(r: &Report) -> String {
    let mut out = String::from(
        "| scenario | judge | trials | rolled back | median s | p90 s |\n| --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    let fmt = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
    for row in &r.rows {
        out.push_str(&format!(
            "| {} | {} | {} | {:.1}% | {} | {} |\n",
            row.scenario,
            row.judge,
            row.trials,
            row.rolled_back * 100.0,
            fmt(row.median_s),
            fmt(row.p90_s)
        ));
    }
    out.push_str(
        "\n| scenario | sequential median s | knowing both rates | ratio | knowing the effect | ratio |\n| --- | ---: | ---: | ---: | ---: | ---: |\n",
    );
    let median = |scenario: &str, judge: &str| {
        r.rows
            .iter()
            .find(|x| x.scenario == scenario && x.judge == judge)
            .and_then(|x| x.median_s)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".to_string(),
    };
    for row in r.rows.iter().filter(|x| x.judge == KNOWN_RATES) {
        let ours = median(&row.scenario, SEQUENTIAL);
        let effect = median(&row.scenario, KNOWN_EFFECT);
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            row.scenario,
            fmt(ours),
            fmt(row.median_s),
            ratio(ours, row.median_s),
            fmt(effect),
            ratio(ours, effect)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sprt_stops_at_the_first_second_over_the_threshold() {
        // ln(0.02/0.01) = 0.693 per bad outcome, ln(0.98/0.99) per good one; the
        // threshold ln(100) = 4.61 needs 7 bad outcomes with no good ones.
        let all_bad = std::iter::repeat_n((1, 1, 0.01, 0.02), 10);
        assert_eq!(sprt(all_bad, 0.01), Some(7.0));
        let all_good = std::iter::repeat_n((0, 100, 0.01, 0.02), 100);
        assert_eq!(sprt(all_good, 0.01), None);
        // Seconds without trials carry no evidence, and still count as seconds.
        let gaps = [(0, 0, 0.01, 0.02), (7, 7, 0.01, 0.02)];
        assert_eq!(sprt(gaps, 0.01), Some(2.0));
    }

    #[test]
    fn the_bound_knowing_both_rates_is_faster_than_the_one_that_does_not() {
        let stream = Stream {
            seconds: 300,
            rps: 200,
            canary_share: 0.1,
            stable_error_rate: 0.005,
            canary_error_rate: 0.02,
            latency: None,
        };
        let (mut rates, mut effect) = (Vec::new(), Vec::new());
        for seed in 0..200 {
            let (a, b) = bounds(&stream, &stream.draw(&mut Rng::new(seed)));
            rates.push(a.unwrap_or(f64::INFINITY));
            effect.push(b.unwrap_or(f64::INFINITY));
        }
        rates.sort_by(f64::total_cmp);
        effect.sort_by(f64::total_cmp);
        // Wald's approximation: ln(100) / (20 requests/s x KL(2% || 0.5%)) = 17.9 s
        // knowing both rates; the share test gets the errors' side only, 21.6 s.
        let (a, b) = (rates[100], effect[100]);
        assert!((12.0..=22.0).contains(&a), "median knowing both rates: {a}");
        assert!(a < b, "knowing both rates {a}, knowing the effect {b}");
    }
}
