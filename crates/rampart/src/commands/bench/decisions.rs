//! `rampart bench decisions`: how fast and how reliably each judge decides, on
//! simulated releases, side by side on the same streams.
//!
//! Every trial draws one stream (seeded) and replays it through the real state machine
//! under each policy. A/A streams measure false rollbacks; regressions measure power
//! and time to decision.

use std::time::Instant;

use rampart_core::Policy;
use rampart_core::release::OutcomeKind;
use rampart_core::replay::replay;
use rampart_core::sim::{Rng, Stream};
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
        "sequential alpha 0.01",
        r#"{metric: error_rate, judge: sequential, min_samples: 100}"#,
    ),
];
const LATENCY_POLICIES: [(&str, &str); 2] = [
    (
        "threshold p50 <= 1.2x stable/60s, 1 breach",
        r#"{metric: latency_p50, judge: {max_ratio_to_stable: 1.2}, min_samples: 1, failure_limit: 1}"#,
    ),
    (
        "sequential alpha 0.01",
        r#"{metric: latency_p50, judge: sequential, min_samples: 100}"#,
    ),
];

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

fn judges(latency: bool) -> Vec<(&'static str, Policy)> {
    let list: &[(&str, &str)] = if latency {
        &LATENCY_POLICIES
    } else {
        &ERROR_POLICIES
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
    let err = |name, rate, regression| Scenario {
        name,
        stream: Stream {
            canary_error_rate: rate,
            ..base
        },
        regression,
    };
    let lat = |name, canary, regression| Scenario {
        name,
        stream: Stream {
            latency: Some((50.0, canary, 0.5)),
            ..base
        },
        regression,
    };
    vec![
        err("errors A/A (0.5%)", 0.005, false),
        err("errors 0.5% -> 1% (2x)", 0.01, true),
        err("errors 0.5% -> 2% (4x)", 0.02, true),
        err("errors 0.5% -> 5% (10x)", 0.05, true),
        lat("latency A/A (median 50ms)", 50.0, false),
        lat("latency median +20%", 60.0, true),
        lat("latency median +50%", 75.0, true),
    ]
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

/// Runs every scenario under every judge; with `savvi`, also savvi's multinomial test
/// (run by that Python interpreter) on the error scenarios' streams.
pub fn run(trials: u64, seed: u64, savvi_python: Option<&str>) -> Result<Report, String> {
    #[allow(clippy::disallowed_methods)] // wall time of the benchmark itself, reported only
    let started = Instant::now();
    let latency_trials = (trials / 4).max(1);
    let mut rows = Vec::new();
    for (si, sc) in scenarios().into_iter().enumerate() {
        let latency = sc.stream.latency.is_some();
        let n = if latency { latency_trials } else { trials };
        let js = judges(latency);
        let threads = std::thread::available_parallelism()
            .map_or(1, |p| p.get())
            .min(8) as u64;
        type Trial = (Vec<Option<f64>>, Vec<(u64, u64)>);
        let per_thread: Vec<Vec<Trial>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let js = &js;
                    scope.spawn(move || {
                        let mut out: Vec<Trial> = Vec::new();
                        for trial in (t..n).step_by(threads as usize) {
                            let mut rng = Rng::new(
                                seed ^ ((si as u64) << 40) ^ trial.wrapping_mul(0x9e37_79b9),
                            );
                            let samples = sc.stream.draw(&mut rng);
                            let decisions = js
                                .iter()
                                .map(|(_, p)| {
                                    let r = replay(p, &samples, |_, _, _| {});
                                    match r.release.outcome() {
                                        Some(OutcomeKind::RolledBack) => r
                                            .release
                                            .decision
                                            .as_ref()
                                            .map(|d| d.at as f64 / 1000.0),
                                        _ => None,
                                    }
                                })
                                .collect();
                            let errors = if savvi_python.is_some() && !latency {
                                (0..samples.end_s())
                                    .map(|s| {
                                        let w = samples.window(s, s + 1);
                                        (w.canary.errors, w.stable.errors)
                                    })
                                    .collect()
                            } else {
                                Vec::new()
                            };
                            out.push((decisions, errors));
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().filter_map(|h| h.join().ok()).collect()
        });
        let all: Vec<&Trial> = per_thread.iter().flatten().collect();
        for (j, (label, _)) in js.iter().enumerate() {
            let results: Vec<Option<f64>> = all.iter().map(|t| t.0[j]).collect();
            rows.push(row(&sc, label, &results));
        }
        if let (Some(python), false) = (savvi_python, latency) {
            let streams: Vec<Vec<(u64, u64)>> = all.iter().map(|t| t.1.clone()).collect();
            let results = savvi(python, &streams, 0.01, sc.stream.canary_share)?;
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

/// The report as a Markdown table.
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
    out
}
