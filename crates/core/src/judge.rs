//! Judges: turn one interval's measurements into a verdict per metric.
//!
//! Owns what pass, fail, inconclusive and no-data mean for the threshold judge. Pure:
//! the same sample always gives the same verdict. It must not keep streaks or decide
//! rollbacks; that is the release state machine's job.

use crate::metrics::{IntervalSample, VariantStats};
use crate::policy::{BuiltinMetric, MetricSpec};

/// The verdict on one metric for one interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every limit held.
    Pass,
    /// A limit was broken.
    Fail,
    /// Too little data to say. Never a pass.
    Inconclusive,
    /// The canary had no traffic at all. Never a pass.
    NoData,
}

impl Verdict {
    /// How progress output and audit messages spell it (failures stand out).
    pub fn label(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "FAIL",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NoData => "no data",
        }
    }
}

/// The judge's reading of one metric, with the numbers behind it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MetricReading {
    /// The metric's name in the policy.
    pub name: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The canary's value, when it could be computed.
    pub canary: Option<f64>,
    /// The stable version's value, when it could be computed.
    pub stable: Option<f64>,
    /// Canary requests in the interval.
    pub canary_requests: u64,
    /// Stable requests in the interval.
    pub stable_requests: u64,
    /// Whether stable itself broke the absolute limit (both versions unhealthy).
    pub stable_breached: bool,
    /// Why, in words.
    pub detail: String,
}

fn value(metric: BuiltinMetric, stats: &VariantStats) -> Option<f64> {
    let v = match metric {
        BuiltinMetric::ErrorRate => stats.error_rate(),
        BuiltinMetric::Latency(q) => stats.latency.quantile_ms(q),
    }?;
    v.is_finite().then_some(v)
}

/// Judges one metric against its threshold.
///
/// Guarantees: no data, NaN, or fewer than `min_samples` canary requests is never a
/// pass; a ratio limit needs `min_samples` stable requests too, or the reading is
/// inconclusive (unless an absolute limit already failed).
pub fn judge(spec: &MetricSpec, sample: &IntervalSample) -> MetricReading {
    let m = spec.metric;
    let canary = value(m, &sample.canary);
    let stable = value(m, &sample.stable);
    let mut reading = MetricReading {
        name: spec.name.clone(),
        verdict: Verdict::Inconclusive,
        canary,
        stable,
        canary_requests: sample.canary.requests,
        stable_requests: sample.stable.requests,
        stable_breached: false,
        detail: String::new(),
    };
    if sample.canary.requests == 0 {
        reading.verdict = Verdict::NoData;
        reading.detail = "no canary requests in this interval".into();
        return reading;
    }
    let Some(c) = canary else {
        reading.detail = "canary value could not be computed".into();
        return reading;
    };
    if sample.canary.requests < spec.min_samples {
        reading.detail = format!(
            "{} canary requests, {} needed",
            sample.canary.requests, spec.min_samples
        );
        return reading;
    }
    let stable_enough = sample.stable.requests >= spec.min_samples;
    let mut failures = Vec::new();
    let mut unknown = Vec::new();
    if let Some(max) = spec.judge.max {
        if c > max {
            failures.push(format!("{} > max {}", m.format(c), m.format(max)));
        }
        reading.stable_breached = stable_enough && stable.is_some_and(|s| s > max);
    }
    if let Some(ratio) = spec.judge.max_ratio_to_stable {
        match stable {
            Some(s) if stable_enough => {
                // A stable value of zero (no errors) makes any canary error an infinite
                // ratio; that is a failure, because the canary is measurably worse.
                if c > s * ratio {
                    let shown = if s > 0.0 {
                        format!("{:.2}x", c / s)
                    } else {
                        "more than any multiple".into()
                    };
                    failures.push(format!(
                        "{} is {shown} stable's {} (limit {ratio}x)",
                        m.format(c),
                        m.format(s)
                    ));
                }
            }
            _ => unknown.push(format!(
                "{} stable requests, {} needed for the ratio",
                sample.stable.requests, spec.min_samples
            )),
        }
    }
    if !failures.is_empty() {
        reading.verdict = Verdict::Fail;
        reading.detail = failures.join("; ");
    } else if !unknown.is_empty() {
        reading.detail = unknown.join("; ");
    } else {
        reading.verdict = Verdict::Pass;
        reading.detail = match stable {
            Some(s) => format!("{} (stable {})", m.format(c), m.format(s)),
            None => m.format(c),
        };
    }
    reading
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Histogram;
    use crate::policy::Threshold;

    fn spec(max: Option<f64>, ratio: Option<f64>) -> MetricSpec {
        MetricSpec {
            name: "errors".into(),
            metric: BuiltinMetric::ErrorRate,
            judge: Threshold {
                max,
                max_ratio_to_stable: ratio,
            },
            min_samples: 10,
            failure_limit: 1,
        }
    }

    fn stats(requests: u64, errors: u64) -> VariantStats {
        VariantStats {
            requests,
            errors,
            latency: Histogram::default(),
        }
    }

    fn sample(stable: (u64, u64), canary: (u64, u64)) -> IntervalSample {
        IntervalSample {
            stable: stats(stable.0, stable.1),
            canary: stats(canary.0, canary.1),
        }
    }

    #[test]
    fn absolute_limit() {
        let s = spec(Some(0.05), None);
        assert_eq!(
            judge(&s, &sample((100, 0), (100, 4))).verdict,
            Verdict::Pass
        );
        assert_eq!(
            judge(&s, &sample((100, 0), (100, 6))).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn ratio_limit_and_stable_breach() {
        let s = spec(Some(0.05), Some(2.0));
        let r = judge(&s, &sample((100, 10), (100, 15)));
        assert_eq!(r.verdict, Verdict::Fail);
        assert!(r.stable_breached);
        assert_eq!(
            judge(&s, &sample((100, 2), (100, 3))).verdict,
            Verdict::Pass
        );
        assert_eq!(
            judge(&s, &sample((100, 1), (100, 3))).verdict,
            Verdict::Fail
        );
    }

    #[test]
    fn no_data_and_too_few_samples_never_pass() {
        let s = spec(Some(0.05), None);
        assert_eq!(
            judge(&s, &sample((100, 0), (0, 0))).verdict,
            Verdict::NoData
        );
        assert_eq!(
            judge(&s, &sample((100, 0), (9, 0))).verdict,
            Verdict::Inconclusive
        );
    }

    #[test]
    fn ratio_without_enough_stable_is_inconclusive_unless_absolute_failed() {
        let s = spec(Some(0.05), Some(2.0));
        assert_eq!(
            judge(&s, &sample((3, 0), (100, 1))).verdict,
            Verdict::Inconclusive
        );
        assert_eq!(judge(&s, &sample((3, 0), (100, 9))).verdict, Verdict::Fail);
    }

    #[test]
    fn latency_quantile_ratio() {
        let mut spec = spec(None, Some(1.5));
        spec.metric = BuiltinMetric::Latency(0.99);
        let mut fast = VariantStats {
            requests: 100,
            ..Default::default()
        };
        let mut slow = VariantStats {
            requests: 100,
            ..Default::default()
        };
        for _ in 0..100 {
            fast.latency.record_micros(20_000);
            slow.latency.record_micros(60_000);
        }
        let r = judge(
            &spec,
            &IntervalSample {
                stable: fast.clone(),
                canary: slow,
            },
        );
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        let r = judge(
            &spec,
            &IntervalSample {
                stable: fast.clone(),
                canary: fast,
            },
        );
        assert_eq!(r.verdict, Verdict::Pass);
    }
}
