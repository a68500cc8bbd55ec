//! One analysis interval judged for the release: each metric's reading, the streaks,
//! the failure score and the interval's verdict, recorded in the audit trail. It must
//! not act on the verdict; progress and rollback do.

use super::builder::Builder;
use crate::judge::{self, MetricReading, StableSide, Verdict};
use crate::metrics::{IntervalSample, Timing};
use crate::policy::{BuiltinMetric, FailureCount, Judge, MetricSpec, Threshold};

/// One interval judged: every metric's reading, the overall verdict, and the metrics
/// whose failures decide the release.
pub(super) struct Judged {
    pub(super) readings: Vec<MetricReading>,
    pub(super) verdict: Verdict,
    pub(super) deciding: Vec<usize>,
}

/// A threshold judge on this interval, or, when the intervals since its last verdict
/// held fewer than `min_samples` requests, on them and this one pooled as one (low
/// traffic): the pool grows until it holds enough to judge, then starts again empty,
/// so no request counts toward two verdicts. An interval without canary requests is no
/// data and leaves the pool as it was; a plain query value cannot be pooled. A latency
/// metric read from Prometheus buckets pools its histograms.
fn pooled_threshold(
    m: &MetricSpec,
    t: &Threshold,
    raw: &IntervalSample,
    side: StableSide,
    pool: &mut Option<(IntervalSample, u32)>,
    baseline: Option<Option<&IntervalSample>>,
) -> MetricReading {
    // While watching, the intervals are pooled as they were read and stable's side
    // is the baseline, put in once the pool is made: never summed with itself.
    fn judged<'s>(
        baseline: Option<Option<&IntervalSample>>,
        s: &'s IntervalSample,
    ) -> std::borrow::Cow<'s, IntervalSample> {
        match baseline {
            Some(base) => std::borrow::Cow::Owned(against_baseline(base, s)),
            None => std::borrow::Cow::Borrowed(s),
        }
    }
    let counts = m.metric == BuiltinMetric::Counts;
    // A counts metric's interval is read as a lone interval reads it (clamped, or no
    // reading) before anything is pooled.
    let cleaned;
    let raw = if counts {
        let mut c = raw.clone();
        for q in c.queries.iter_mut().filter(|q| q.name == m.name) {
            *q = judge::counts_read(q);
        }
        cleaned = c;
        &cleaned
    } else {
        raw
    };
    let prepared = judged(baseline, raw);
    let sample: &IntervalSample = &prepared;
    let poolable = m.metric != BuiltinMetric::Query;
    let buckets = reads_buckets(m);
    // A counts value (or a histogram) missing from this interval would make the pool's
    // sum missing for good: the interval is judged alone (no data) and the pool kept
    // as it was. Stable's side counts only for a limit relative to it: after a switch
    // to 100 % it has no series, and an absolute limit is judged (and pooled) without.
    let reading = sample.queries.iter().find(|q| q.name == m.name);
    let needs_stable = t.relative();
    // A canary total of 0 is an interval without canary requests: no data, as for the
    // builtin metrics, never pooled.
    let missing = (counts
        && reading.is_none_or(|q| {
            q.canary.is_none()
                || q.canary_samples.is_none_or(|n| n == 0.0)
                || (needs_stable && (q.stable.is_none() || q.stable_samples.is_none()))
        }))
        || (buckets
            && reading.is_none_or(|q| {
                q.canary_histogram.is_none() || (needs_stable && q.stable_histogram.is_none())
            }));
    let builtin = !counts && !buckets;
    if !poolable || missing || (builtin && sample.canary.requests == 0) {
        return judge::threshold_in(m, t, sample, side);
    }
    let (merged, n) = match pool.take() {
        Some((mut p, n)) => {
            p.merge(raw, &[m.name.as_str()]);
            (p, n + 1)
        }
        None => (raw.clone(), 1),
    };
    let mut r = judge::threshold_in(m, t, &judged(baseline, &merged), side);
    // Too few requests, or a latency above a limit by its value alone (more decide).
    let short = r.verdict == Verdict::Inconclusive
        && (r.canary_requests < m.min_samples
            || (t.relative() && r.stable_requests < m.min_samples)
            || r.detail.contains(judge::WITHIN_NOISE));
    if short && r.canary_requests > 0 {
        r.detail = format!(
            "{} (pooling: {n} interval{} so far)",
            r.detail,
            if n == 1 { "" } else { "s" }
        );
        *pool = Some((merged, n));
    } else if n > 1 && matches!(r.verdict, Verdict::Pass | Verdict::Fail) {
        r.detail = format!(
            "{} (the last {n} intervals pooled to reach min_samples {})",
            r.detail, m.min_samples
        );
    }
    r
}

/// Whether a metric is latency read from Prometheus histogram buckets.
fn reads_buckets(m: &MetricSpec) -> bool {
    m.query.as_ref().is_some_and(|q| q.buckets.is_some())
}

/// `sample` with the previous version's side replaced by its measurements from before
/// the switch (the watch after promotion): its counts, its counts metrics' events
/// and totals, and its bucket metrics' histograms; a value the baseline lacks is
/// missing.
fn against_baseline(baseline: Option<&IntervalSample>, sample: &IntervalSample) -> IntervalSample {
    let mut judged = sample.clone();
    judged.stable = baseline.map(|b| b.stable.clone()).unwrap_or_default();
    for q in &mut judged.queries {
        let base = baseline.and_then(|b| b.queries.iter().find(|x| x.name == q.name));
        q.stable = base.and_then(|x| x.stable);
        q.stable_samples = base.and_then(|x| x.stable_samples);
        q.stable_histogram = base.and_then(|x| x.stable_histogram.clone());
    }
    judged
}

/// Adds the previous version's side of an interval to the baseline a watch judges
/// against. A counts value missing from one interval (a failed read, a series gone at
/// 100 %) is left out, not allowed to erase what earlier intervals counted; so is a
/// missing histogram of a `buckets` metric.
fn add_to_baseline(
    baseline: &mut Option<IntervalSample>,
    sample: &IntervalSample,
    counts: &[&str],
    buckets: &[&str],
) {
    let base = baseline.get_or_insert_with(IntervalSample::default);
    base.stable.merge(&sample.stable);
    for name in counts {
        let Some(q) = sample.queries.iter().find(|q| q.name == *name) else {
            continue;
        };
        // Read as a lone interval reads it (clamped, or no reading), and events and
        // their total only together, so the share stays right.
        let q = judge::counts_read(q);
        let (Some(events), Some(total)) = (q.stable, q.stable_samples) else {
            continue;
        };
        match base.queries.iter_mut().find(|b| b.name == *name) {
            Some(b) => {
                b.stable = Some(b.stable.unwrap_or(0.0) + events);
                b.stable_samples = Some(b.stable_samples.unwrap_or(0.0) + total);
            }
            None => base.queries.push(crate::metrics::QueryReading {
                name: q.name.clone(),
                stable: Some(events),
                stable_samples: Some(total),
                ..Default::default()
            }),
        }
    }
    for name in buckets {
        let Some(h) = sample
            .queries
            .iter()
            .find(|q| q.name == *name)
            .and_then(|q| q.stable_histogram.as_ref())
        else {
            continue;
        };
        match base.queries.iter_mut().find(|b| b.name == *name) {
            Some(b) => b
                .stable_histogram
                .get_or_insert_with(Default::default)
                .merge(h),
            None => base.queries.push(crate::metrics::QueryReading {
                name: name.to_string(),
                stable_histogram: Some(h.clone()),
                ..Default::default()
            }),
        }
    }
}

/// Judges one interval, updates the evidence and streaks, and records the analysis.
/// While all traffic is on the new version (the watch after the switch, a step or a
/// blue-green switch at 100 %), the previous version's side is its baseline: its
/// measurements from the intervals before, when it served.
pub(super) fn judge_interval(b: &mut Builder<'_>, sample: &IntervalSample) -> Judged {
    let metrics = &b.policy.analysis.metrics;
    // At 100 % stable serves nothing, and a comparison with it at the same time (the
    // sequential judge's share test, a ratio limit) has nothing to compare with: every
    // interval would be inconclusive. It is judged against the baseline instead.
    let idle = b.s.stable_idle();
    // Stable is idle only by the plan: all traffic on the new version (100 %, a
    // blue-green switch), or the watch after promotion, whose stable side is a
    // baseline. While it serves, a stable value that failed to read is never skipped.
    let side = if idle {
        StableSide::Idle
    } else {
        StableSide::Serving
    };
    let raw = sample;
    let judged;
    let sample = if idle {
        judged = against_baseline(b.s.baseline.as_ref(), sample);
        &judged
    } else {
        let counts: Vec<&str> = metrics
            .iter()
            .filter(|m| m.metric == BuiltinMetric::Counts)
            .map(|m| m.name.as_str())
            .collect();
        let buckets: Vec<&str> = metrics
            .iter()
            .filter(|m| reads_buckets(m))
            .map(|m| m.name.as_str())
            .collect();
        add_to_baseline(&mut b.s.baseline, sample, &counts, &buckets);
        sample
    };
    let mut readings: Vec<MetricReading> = Vec::with_capacity(metrics.len());
    for (i, m) in metrics.iter().enumerate() {
        readings.push(match &m.judge {
            // While watching, the new version's intervals are pooled as in the steps
            // (a slow version gets few requests), against the baseline as it is.
            Judge::Threshold(t) => {
                if b.s.pooled.len() != metrics.len() {
                    b.s.pooled = vec![None; metrics.len()];
                }
                let baseline = idle.then_some(b.s.baseline.as_ref());
                pooled_threshold(m, t, raw, side, &mut b.s.pooled[i], baseline)
            }
            Judge::Sequential(seq) => {
                let history = match m.metric.latency() {
                    Some((_, Timing::Total)) => &b.s.stable_latency_total,
                    _ => &b.s.stable_latency,
                };
                judge::sequential_with(m, seq, sample, &mut b.s.evidence[i], history, idle)
            }
        });
    }
    // Only after judging: the null for this interval came from earlier intervals (and
    // while watching, the baseline is not new data).
    if !idle {
        b.s.stable_latency.merge(&sample.stable.latency);
        b.s.stable_latency_total.merge(&sample.stable.latency_total);
    }
    b.s.canary_seen = b.s.canary_seen.saturating_add(sample.canary.requests);
    b.s.intervals += 1;

    let mut tripped: Vec<usize> = Vec::new();
    for (i, r) in readings.iter().enumerate() {
        match r.verdict {
            // Counted in total, a pass between failures does not wipe them out.
            Verdict::Pass if metrics[i].failure_count == FailureCount::Total => {}
            Verdict::Pass => b.s.failure_streaks[i] = 0,
            Verdict::Fail => b.s.failure_streaks[i] += 1,
            Verdict::Inconclusive | Verdict::NoData => {}
        }
        let trips = match metrics[i].judge {
            Judge::Threshold(_) => b.s.failure_streaks[i] >= metrics[i].failure_limit,
            // Anytime-valid: the first rejection is the decision.
            Judge::Sequential(_) => r.verdict == Verdict::Fail,
        };
        if trips {
            tripped.push(i);
        }
    }
    // Critical metrics fail the release alone; the others only together, once their
    // weights reach the failure score. Below it, their failures are warnings.
    let score: f64 = tripped
        .iter()
        .filter(|i| !metrics[**i].critical)
        .map(|i| metrics[*i].weight)
        .sum();
    let failing_score: f64 = readings
        .iter()
        .zip(metrics)
        .filter(|(r, m)| !m.critical && r.verdict == Verdict::Fail)
        .map(|(_, m)| m.weight)
        .sum();
    let counts = |i: usize| {
        metrics[i].critical
            || readings[i].verdict != Verdict::Fail
            || failing_score >= b.policy.analysis.fail_score
    };
    let counted: Vec<&MetricReading> = (0..readings.len())
        .filter(|i| counts(*i))
        .map(|i| &readings[i])
        .collect();
    let deciding: Vec<usize> =
        if tripped.iter().any(|i| metrics[*i].critical) || score >= b.policy.analysis.fail_score {
            tripped
                .into_iter()
                .filter(|i| counts(*i) || score >= b.policy.analysis.fail_score)
                .collect()
        } else {
            Vec::new()
        };
    let verdict = if counted.iter().any(|r| r.verdict == Verdict::Fail) {
        Verdict::Fail
    } else if !counted.is_empty() && counted.iter().all(|r| r.verdict == Verdict::NoData) {
        Verdict::NoData
    } else if counted.iter().any(|r| r.verdict != Verdict::Pass) {
        Verdict::Inconclusive
    } else {
        Verdict::Pass
    };
    b.s.last_verdict = Some(verdict);
    let summary: Vec<String> = readings
        .iter()
        .map(|r| format!("{} {}: {}", r.name, r.verdict.label(), r.detail))
        .collect();
    b.event_with(
        "analysis",
        "rampart",
        format!(
            "interval {} {}: {}",
            b.s.intervals,
            verdict.label(),
            summary.join("; ")
        ),
        readings.clone(),
    );
    Judged {
        readings,
        verdict,
        deciding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Histogram, QueryReading};
    use crate::policy::{BucketUnit, Direction, QuerySource, QuerySpec};

    fn bucket_metric() -> MetricSpec {
        MetricSpec {
            name: "p99".into(),
            metric: BuiltinMetric::Latency(0.99),
            judge: Judge::Threshold(Threshold {
                max: Some(300.0),
                ..Threshold::default()
            }),
            min_samples: 50,
            failure_limit: 1,
            failure_count: crate::policy::FailureCount::Consecutive,
            critical: true,
            weight: 1.0,
            direction: Direction::LowerIsBetter,
            query: Some(QuerySpec {
                source: QuerySource::Prometheus,
                query: "sum by (le) (x_bucket)".into(),
                range: false,
                samples: None,
                counts: false,
                buckets: Some(BucketUnit::Seconds),
            }),
        }
    }

    fn ms(ms: u64, n: u64) -> Histogram {
        let mut h = Histogram::default();
        h.record_many(ms * 1000, n);
        h
    }

    /// An interval whose buckets say `stable` and `canary` (none read: `None`); the
    /// builtin measurements hold nothing.
    fn interval(stable: Option<Histogram>, canary: Option<Histogram>) -> IntervalSample {
        IntervalSample {
            queries: vec![QueryReading {
                name: "p99".into(),
                stable_histogram: stable,
                canary_histogram: canary,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_bucket_metric_pools_its_histograms_until_min_samples() {
        let m = bucket_metric();
        let Judge::Threshold(t) = m.judge else {
            unreachable!("a threshold metric")
        };
        let mut pool = None;
        let slow = interval(Some(ms(10, 30)), Some(ms(500, 30)));
        let r = pooled_threshold(&m, &t, &slow, StableSide::Serving, &mut pool, None);
        assert_eq!(r.verdict, Verdict::Inconclusive, "{r:?}");
        assert!(r.detail.contains("pooling"), "{r:?}");
        // A missing histogram is judged alone (no data) and leaves the pool as it was.
        let r = pooled_threshold(
            &m,
            &t,
            &interval(Some(ms(10, 30)), None),
            StableSide::Serving,
            &mut pool,
            None,
        );
        assert_eq!(r.verdict, Verdict::NoData, "{r:?}");
        assert!(pool.is_some());
        let r = pooled_threshold(&m, &t, &slow, StableSide::Serving, &mut pool, None);
        assert_eq!(r.verdict, Verdict::Fail, "{r:?}");
        assert_eq!(r.canary_requests, 60);
        assert!(r.detail.contains("2 intervals pooled"), "{r:?}");
    }

    #[test]
    fn the_watch_judges_a_bucket_metric_against_the_previous_versions_buckets() {
        let mut baseline = None;
        add_to_baseline(
            &mut baseline,
            &interval(Some(ms(10, 30)), None),
            &[],
            &["p99"],
        );
        add_to_baseline(&mut baseline, &interval(None, None), &[], &["p99"]);
        add_to_baseline(
            &mut baseline,
            &interval(Some(ms(20, 20)), None),
            &[],
            &["p99"],
        );
        let base = baseline.as_ref().and_then(|b| b.queries.first());
        assert_eq!(
            base.and_then(|q| q.stable_histogram.as_ref().map(Histogram::count)),
            Some(50)
        );
        // After the switch, stable's side is the baseline's, whatever was read now.
        let now = interval(Some(ms(900, 5)), Some(ms(10, 60)));
        let judged = against_baseline(baseline.as_ref(), &now);
        assert_eq!(
            judged.queries[0]
                .stable_histogram
                .as_ref()
                .map(Histogram::count),
            Some(50)
        );
        assert_eq!(
            judged.queries[0].canary_histogram,
            now.queries[0].canary_histogram
        );
    }
}
