//! Measurements the judges read: per-variant request counts, errors and latency
//! histograms (time to response headers, and total time) for one analysis interval.
//!
//! Owns the histogram layout (shared with the proxy, which fills it) and quantile
//! estimation. It must not decide anything; judging lives in [`crate::judge`].

use std::collections::BTreeMap;

/// Lower edge of the first histogram bucket, in microseconds.
const BASE_US: f64 = 50.0;
/// Buckets per doubling: 8 gives edges about 9 % apart, so a quantile is within ±4.5 %.
const PER_DOUBLING: f64 = 8.0;
/// Number of buckets: 50 µs doubled 22 times reaches about 210 s.
pub const BUCKETS: usize = 22 * 8 + 1;

/// The bucket a latency in microseconds falls in.
pub fn bucket_of(micros: u64) -> usize {
    if (micros as f64) <= BASE_US {
        return 0;
    }
    let idx = ((micros as f64 / BASE_US).log2() * PER_DOUBLING).ceil();
    (idx as usize).min(BUCKETS - 1)
}

/// The slowest latency measured as itself, in milliseconds (about 192 s): the last
/// bucket holds every slower one, so a latency limit must be below this to be broken.
pub fn measured_up_to_ms() -> f64 {
    bucket_upper_ms(BUCKETS - 2)
}

/// Upper edge of bucket `i`, in milliseconds.
pub fn bucket_upper_ms(i: usize) -> f64 {
    BASE_US * (i as f64 / PER_DOUBLING).exp2() / 1000.0
}

/// A latency histogram with the fixed layout above, stored sparsely. It serializes as
/// a list of `[bucket, count]` pairs (map keys would turn into strings in JSON).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(into = "Vec<(u16, u64)>", from = "Vec<(u16, u64)>")]
pub struct Histogram {
    counts: BTreeMap<u16, u64>,
}

impl From<Histogram> for Vec<(u16, u64)> {
    fn from(h: Histogram) -> Self {
        h.counts.into_iter().collect()
    }
}

impl From<Vec<(u16, u64)>> for Histogram {
    fn from(pairs: Vec<(u16, u64)>) -> Self {
        let mut counts = BTreeMap::new();
        for (i, c) in pairs {
            if usize::from(i) < BUCKETS && c > 0 {
                *counts.entry(i).or_default() += c;
            }
        }
        Histogram { counts }
    }
}

impl Histogram {
    /// Builds a histogram from dense bucket counts, as the proxy keeps them.
    pub fn from_dense(dense: &[u64]) -> Histogram {
        let counts = dense
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .filter_map(|(i, c)| u16::try_from(i).ok().map(|i| (i, *c)))
            .collect();
        Histogram { counts }
    }

    /// Non-empty buckets, in order: (bucket index, count).
    pub fn buckets(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.counts.iter().map(|(i, c)| (usize::from(*i), *c))
    }

    /// Records one observation.
    pub fn record_micros(&mut self, micros: u64) {
        self.record_many(micros, 1);
    }

    /// Records `n` observations of `micros` each (a histogram read from elsewhere, whose
    /// bucket bounds are put in the bucket holding them).
    pub fn record_many(&mut self, micros: u64, n: u64) {
        self.record_in_bucket(bucket_of(micros), n);
    }

    /// Records `n` observations in bucket `bucket` (the last one if beyond it).
    pub fn record_in_bucket(&mut self, bucket: usize, n: u64) {
        if n == 0 {
            return;
        }
        let i = u16::try_from(bucket.min(BUCKETS - 1)).unwrap_or(u16::MAX);
        let c = self.counts.entry(i).or_default();
        *c = c.saturating_add(n);
    }

    /// Whether it holds no observation.
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// `self - earlier`, bucket by bucket, saturating at zero (a counter reset after a
    /// restart must not produce negative counts).
    pub fn since(&self, earlier: &Histogram) -> Histogram {
        let counts = self
            .counts
            .iter()
            .filter_map(|(i, c)| {
                let d = c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0));
                (d > 0).then_some((*i, d))
            })
            .collect();
        Histogram { counts }
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (i, c) in &other.counts {
            *self.counts.entry(*i).or_default() += c;
        }
    }

    /// The bucket holding the `q` quantile (rank `ceil(q * count)`), or `None` when empty.
    pub fn quantile_bucket(&self, q: f64) -> Option<usize> {
        let total = self.count();
        if total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // The rank is 1-based and rounded up, so p99 of 100 samples is the 99th.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        self.counts.iter().find_map(|(i, c)| {
            seen += c;
            (seen >= rank).then_some(usize::from(*i))
        })
    }

    /// Observations in buckets above and below `bucket` (those in it are ties).
    pub fn split_at(&self, bucket: usize) -> (u64, u64) {
        self.counts.iter().fold((0, 0), |(above, below), (i, c)| {
            match usize::from(*i).cmp(&bucket) {
                std::cmp::Ordering::Greater => (above + c, below),
                std::cmp::Ordering::Less => (above, below + c),
                std::cmp::Ordering::Equal => (above, below),
            }
        })
    }

    /// The `q` quantile in milliseconds (the geometric middle of its bucket), or `None`
    /// when empty or `q` is outside 0..=1.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let i = self.quantile_bucket(q)?;
        let upper = bucket_upper_ms(i);
        let lower = if i == 0 {
            upper / 2.0
        } else {
            bucket_upper_ms(i - 1)
        };
        Some((upper * lower).sqrt())
    }
}

/// The moment a latency is measured to. Both start when the request reaches the
/// router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timing {
    /// The response headers (`latency_pXX`): what a version's own work costs, free of
    /// how its body is written.
    Headers,
    /// The response body's last byte sent to the client (`latency_total_pXX`).
    Total,
}

/// What one variant did during an interval.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VariantStats {
    /// Requests answered (including errors).
    pub requests: u64,
    /// 5xx answers and upstream connection failures.
    pub errors: u64,
    /// Time to response headers.
    pub latency: Histogram,
    /// Time to the response body's last byte. It holds fewer observations than
    /// `latency` while bodies are still being sent, and none behind a router that does
    /// not log it (HAProxy without `%Ta`). Absent from samples saved before it existed.
    #[serde(default)]
    pub latency_total: Histogram,
}

impl VariantStats {
    /// The latency histogram measured to `timing`.
    pub fn latency_to(&self, timing: Timing) -> &Histogram {
        match timing {
            Timing::Headers => &self.latency,
            Timing::Total => &self.latency_total,
        }
    }

    /// Error rate, or `None` without requests.
    pub fn error_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.errors as f64 / self.requests as f64)
    }

    /// Adds another interval's counts: the two intervals as one.
    pub fn merge(&mut self, other: &VariantStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.latency.merge(&other.latency);
        self.latency_total.merge(&other.latency_total);
    }

    /// Counts accumulated since `earlier` (saturating, so restarts never go negative).
    pub fn since(&self, earlier: &VariantStats) -> VariantStats {
        VariantStats {
            requests: self.requests.saturating_sub(earlier.requests),
            errors: self.errors.saturating_sub(earlier.errors),
            latency: self.latency.since(&earlier.latency),
            latency_total: self.latency_total.since(&earlier.latency_total),
        }
    }
}

/// Both variants over one analysis interval.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct IntervalSample {
    /// The version users had before.
    pub stable: VariantStats,
    /// The version being released.
    pub canary: VariantStats,
    /// Values of the policy's Prometheus queries for this interval, by metric name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queries: Vec<QueryReading>,
}

impl IntervalSample {
    /// Adds a later interval: both variants' counts, and the `pooled` metrics' events
    /// and totals, or their latency histograms (a value missing from either interval is
    /// missing from both together; a query's plain value cannot be added and is
    /// dropped).
    pub fn merge(&mut self, later: &IntervalSample, pooled: &[&str]) {
        self.stable.merge(&later.stable);
        self.canary.merge(&later.canary);
        let add = |a: Option<f64>, b: Option<f64>| Some(a? + b?);
        let add_h = |a: &Option<Histogram>, b: &Option<Histogram>| {
            let mut sum = a.clone()?;
            sum.merge(b.as_ref()?);
            Some(sum)
        };
        let mut merged = Vec::new();
        for name in pooled {
            let (Some(a), Some(b)) = (
                self.queries.iter().find(|q| q.name == *name),
                later.queries.iter().find(|q| q.name == *name),
            ) else {
                continue;
            };
            merged.push(QueryReading {
                name: a.name.clone(),
                stable: add(a.stable, b.stable),
                canary: add(a.canary, b.canary),
                detail: if b.detail.is_empty() {
                    a.detail.clone()
                } else {
                    b.detail.clone()
                },
                stable_samples: add(a.stable_samples, b.stable_samples),
                canary_samples: add(a.canary_samples, b.canary_samples),
                stable_histogram: add_h(&a.stable_histogram, &b.stable_histogram),
                canary_histogram: add_h(&a.canary_histogram, &b.canary_histogram),
            });
        }
        self.queries = merged;
    }
}

/// One Prometheus query's value for both variants over an interval. A missing value
/// (an error, an empty vector, NaN) is no data: never a pass.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct QueryReading {
    /// The metric's name in the policy.
    pub name: String,
    /// Stable's value.
    pub stable: Option<f64>,
    /// The canary's value.
    pub canary: Option<f64>,
    /// Why a value is missing, if one is.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// Stable's requests in the interval, from the metric's `samples` query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_samples: Option<f64>,
    /// The canary's requests in the interval, from the metric's `samples` query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_samples: Option<f64>,
    /// Stable's latency in the interval, from a latency metric's `buckets` query
    /// (Prometheus histogram buckets); `None` when it has none or it was not read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_histogram: Option<Histogram>,
    /// The canary's latency in the interval, from a latency metric's `buckets` query.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_histogram: Option<Histogram>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_intervals_add_up_and_a_missing_count_stays_missing() {
        let reading = |name: &str, events: Option<f64>, total: f64| QueryReading {
            name: name.into(),
            stable: Some(1.0),
            canary: events,
            stable_samples: Some(100.0),
            canary_samples: Some(total),
            ..Default::default()
        };
        let interval = |ms: u64, events: Option<f64>| {
            let mut v = VariantStats {
                requests: 10,
                errors: 1,
                ..Default::default()
            };
            v.latency.record_micros(ms * 1000);
            IntervalSample {
                stable: v.clone(),
                canary: v,
                queries: vec![
                    reading("paid", events, 10.0),
                    reading("value", Some(3.0), 10.0),
                ],
            }
        };
        let mut pooled = interval(5, Some(2.0));
        pooled.merge(&interval(50, Some(3.0)), &["paid"]);
        assert_eq!((pooled.canary.requests, pooled.canary.errors), (20, 2));
        assert_eq!(pooled.canary.latency.count(), 2);
        assert_eq!(pooled.queries.len(), 1, "a plain value is not pooled");
        assert_eq!(pooled.queries[0].canary, Some(5.0));
        assert_eq!(pooled.queries[0].canary_samples, Some(20.0));
        pooled.merge(&interval(5, None), &["paid"]);
        assert_eq!(pooled.queries[0].canary, None);
        assert_eq!(pooled.queries[0].canary_samples, Some(30.0));
    }

    #[test]
    fn pooled_bucket_histograms_add_up_and_a_missing_one_stays_missing() {
        let h = |ms: u64, n: u64| {
            let mut h = Histogram::default();
            h.record_many(ms * 1000, n);
            h
        };
        let interval = |canary: Option<Histogram>| IntervalSample {
            queries: vec![QueryReading {
                name: "p99".into(),
                stable_histogram: Some(h(10, 5)),
                canary_histogram: canary,
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut pooled = interval(Some(h(20, 3)));
        pooled.merge(&interval(Some(h(40, 4))), &["p99"]);
        let q = &pooled.queries[0];
        assert_eq!(q.stable_histogram.as_ref().map(Histogram::count), Some(10));
        assert_eq!(q.canary_histogram.as_ref().map(Histogram::count), Some(7));
        pooled.merge(&interval(None), &["p99"]);
        assert_eq!(pooled.queries[0].canary_histogram, None);
        // Saved readings without histograms still load, and none are written.
        let old: QueryReading =
            serde_json::from_str(r#"{"name":"q","stable":1,"canary":2}"#).unwrap();
        assert_eq!(old.canary_histogram, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("histogram"));
    }

    #[test]
    fn buckets_are_monotonic_and_bounded() {
        let mut last = 0;
        for us in [0, 10, 50, 51, 100, 1_000, 20_000, 1_000_000, u64::MAX] {
            let b = bucket_of(us);
            assert!(b >= last && b < BUCKETS);
            last = b;
        }
    }

    #[test]
    fn quantile_is_within_bucket_precision() {
        let mut h = Histogram::default();
        for ms in 1..=100u64 {
            h.record_micros(ms * 1000);
        }
        let p99 = h.quantile_ms(0.99).unwrap();
        assert!((p99 - 99.0).abs() / 99.0 < 0.05, "{p99}");
        let p50 = h.quantile_ms(0.5).unwrap();
        assert!((p50 - 50.0).abs() / 50.0 < 0.05, "{p50}");
        assert_eq!(Histogram::default().quantile_ms(0.5), None);
    }

    #[test]
    fn since_never_goes_negative_after_a_reset() {
        let mut before = Histogram::default();
        before.record_micros(5000);
        before.record_micros(5000);
        let mut after = Histogram::default();
        after.record_micros(5000);
        assert_eq!(after.since(&before).count(), 0);
        let a = VariantStats {
            requests: 3,
            errors: 1,
            latency: after.clone(),
            latency_total: after,
        };
        let b = VariantStats {
            requests: 10,
            errors: 5,
            latency: before.clone(),
            latency_total: before,
        };
        assert_eq!(a.since(&b).requests, 0);
        assert_eq!(a.since(&b).latency_total.count(), 0);
    }

    #[test]
    fn stats_saved_before_total_time_existed_still_load() {
        let old = r#"{"requests":2,"errors":0,"latency":[[40,2]]}"#;
        let s: VariantStats = serde_json::from_str(old).unwrap();
        assert_eq!((s.requests, s.latency.count()), (2, 2));
        assert!(s.latency_total.is_empty());
        assert!(s.latency_to(Timing::Total).is_empty());
        assert_eq!(s.latency_to(Timing::Headers).count(), 2);
    }
}
