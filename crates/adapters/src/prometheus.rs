//! The `prometheus` metrics provider: the policy's PromQL queries, read for each
//! variant over Prometheus's HTTP API (a [`QueryProvider`] of [`crate::query`]). A
//! counts metric's `bad`/`good` and `total` are its query and its `samples` query: the
//! same two reads. A latency metric's `buckets` query is read as a vector of
//! cumulative histogram buckets and turned into a rampart [`Histogram`] ([`histogram_of`]).
//!
//! Owns instant and range reads, and turning every way a read can go wrong (an HTTP error,
//! an error status, an empty vector, several series, NaN, buckets without `le` or
//! without a request) into a missing value, which the judges treat as no data: never
//! a pass.

use rampart_core::Millis;
use rampart_core::metrics::{BUCKETS, Histogram, bucket_of};
use rampart_core::policy::{BucketUnit, QuerySpec};
use rampart_core::ports::BoxFuture;
use serde_json::Value;

use crate::query::{Ask, QueryProvider, ReadError, Reading};

/// The Prometheus server `source: prometheus` metrics are read from.
#[derive(Debug)]
pub struct Prometheus {
    url: String,
    /// The waits its 429s asked for (a query frontend in front of it: Thanos, Cortex,
    /// Mimir, Grafana Cloud), as every provider keeps them.
    quiet: crate::query::fetch::Quiet,
}

/// Why a query gave no value. Every one of them is "no data" to the judges, never a
/// pass; the message goes into the reading's detail, where operators see it.
#[derive(Debug, thiserror::Error)]
pub enum PrometheusError {
    /// The HTTP request got no answer (bad URL, refused, timed out).
    #[error(transparent)]
    Unanswered(crate::http::HttpError),
    /// Not read, as the providers' reads fail: rate limited past the interval's
    /// budget, or no answer.
    #[error(transparent)]
    Read(crate::query::ReadError),
    /// The answer's body is not JSON (a proxy's error page, a wrong URL).
    #[error("Prometheus answered {status} with a body that is not JSON")]
    NotJson {
        /// The HTTP status of the answer.
        status: u16,
    },
    /// Prometheus answered with `"status": "error"` (a bad query, a timeout).
    #[error("Prometheus answered {status}: {message}")]
    Failed {
        /// The HTTP status of the answer.
        status: u16,
        /// Prometheus's `error`, or "no error message".
        message: String,
    },
    /// `data.result` is not a list of series.
    #[error("no result")]
    NoResult,
    /// No series matched the query.
    #[error("the query returned an empty vector")]
    EmptyVector,
    /// A query frontend (Thanos, Cortex, Mimir) answered from part of its stores: a
    /// sum over part of the series would undercount.
    #[error("the answer is partial ({0}): a sum over part of the series would undercount")]
    Partial(String),
    /// More than one series: rampart needs one number per variant.
    #[error("the query returned {0} series; aggregate it to one (sum, avg, max)")]
    ManySeries(usize),
    /// A sample without its value.
    #[error("a sample without a value")]
    NoValue,
    /// A sample whose value does not parse.
    #[error("`{0}` is not a number")]
    NotANumber(String),
    /// A sample that is NaN or infinite (a division by zero, mostly).
    #[error("the value is {0}")]
    NotFinite(String),
    /// A range series without values.
    #[error("a series without values")]
    NoValues,
    /// A range whose every value is NaN or infinite.
    #[error("no finite value in the range")]
    NoFiniteValue,
    /// A result type other than scalar, vector or matrix (or, for buckets, vector).
    #[error("unexpected result type {0:?}")]
    UnexpectedType(Option<String>),
    /// A bucket series without an `le` label.
    #[error("a bucket series has no `le` label; aggregate with `sum by (le) (...)`")]
    NoBound,
    /// An `le` label that is not a number or `+Inf`.
    #[error("`le=\"{0}\"` is not a bucket bound")]
    BadBound(String),
    /// Only the `+Inf` bucket: nothing says how fast the requests were.
    #[error("no finite bucket bound, only `+Inf`")]
    OnlyInfinite,
    /// Buckets counting no request in the interval.
    #[error("the buckets count no request in the interval")]
    NoRequests,
    /// No `+Inf` bucket: the requests slower than the last bound are counted nowhere.
    #[error("no `le=\"+Inf\"` bucket, which alone counts every request; keep it in the query")]
    NoInfBucket,
    /// A bucket counting fewer requests than one below it, by more than `increase`'s
    /// extrapolation explains: not cumulative buckets.
    #[error(
        "`le=\"{bound}\"` counts {count}, fewer than the {below} below it: the buckets are not cumulative"
    )]
    NotCumulative {
        /// The bucket's bound.
        bound: String,
        /// Its cumulative count.
        count: f64,
        /// The largest cumulative count below it.
        below: f64,
    },
}

/// How long the pre-release check's query may take (readings go through `fetch`, with
/// every provider's timeout, within the analysis interval).
const QUERY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

impl Prometheus {
    /// Reads from the server at `url` (`http://HOST:9090`), on `clock`'s time.
    pub fn new(url: String, clock: std::sync::Arc<dyn rampart_core::ports::Clock>) -> Prometheus {
        Prometheus {
            url,
            quiet: crate::query::fetch::Quiet::new(clock),
        }
    }

    async fn read(&self, range: bool, query: &str, ask: &Ask) -> Result<f64, PrometheusError> {
        value_of(&self.data(range, query, ask).await?)
    }

    /// An answer's `data`, after its status says success. A 429 is waited out within
    /// the interval's budget, as every provider does (`fetch`).
    async fn data(&self, range: bool, query: &str, ask: &Ask) -> Result<Value, PrometheusError> {
        let (from, to) = (ask.from, ask.to);
        let url = if range {
            let step = ((to.saturating_sub(from)) / 10).max(1000);
            format!(
                "{}/api/v1/query_range?query={}&start={}&end={}&step={}",
                self.url,
                crate::http::encode(query),
                seconds(from),
                seconds(to),
                seconds(step)
            )
        } else {
            format!(
                "{}/api/v1/query?query={}&time={}",
                self.url,
                crate::http::encode(query),
                seconds(to)
            )
        };
        let req = crate::query::fetch::Request {
            provider: "Prometheus",
            method: "GET",
            url,
            body: None,
            headers: Vec::new(),
            secrets: Vec::new(),
            sign: None,
            throttled: None,
        };
        let answer = crate::query::fetch::answer(&req, &ask.budget, &self.quiet)
            .await
            .map_err(PrometheusError::Read)?;
        let (status, body) = (answer.status, answer.body);
        let v: Value =
            serde_json::from_str(&body).map_err(|_| PrometheusError::NotJson { status })?;
        if v["status"] != "success" {
            return Err(PrometheusError::Failed {
                status,
                message: v["error"]
                    .as_str()
                    .unwrap_or("no error message")
                    .to_string(),
            });
        }
        // A query frontend that could not reach some stores still says `success`,
        // with the sum of the others and a warning saying so.
        if let Some(partial) = v["warnings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .find(|w| w.to_ascii_lowercase().contains("partial"))
        {
            return Err(PrometheusError::Partial(partial.to_string()));
        }
        Ok(v["data"].clone())
    }
}

impl QueryProvider for Prometheus {
    /// Range queries read `ask.from..ask.to`, instant queries `ask.to`; the request
    /// count is one instant read of the interval, whatever `range` says.
    fn read<'a>(&'a self, spec: &'a QuerySpec, ask: &'a Ask) -> BoxFuture<'a, Reading> {
        Box::pin(async move {
            let fill = |q: &str| ask.fill(q, str::to_string);
            if let Some(unit) = spec.buckets {
                // The histogram's total is the value; it is its own request count.
                let histogram = self
                    .data(false, &fill(&spec.query), ask)
                    .await
                    .and_then(|data| histogram_of(&data, unit))
                    .map_err(|e| self.read_error(e));
                return Reading {
                    value: histogram
                        .as_ref()
                        .map(|h| h.count() as f64)
                        .map_err(|e| ReadError::Other(e.to_string())),
                    samples: None,
                    histogram: Some(histogram),
                };
            }
            let value = self
                .read(spec.range, &fill(&spec.query), ask)
                .await
                .map_err(|e| self.read_error(e));
            let samples = match &spec.samples {
                Some(q) => Some(
                    self.read(false, &fill(q), ask)
                        .await
                        .map_err(|e| self.read_error(e)),
                ),
                None => None,
            };
            Reading {
                value,
                samples,
                histogram: None,
            }
        })
    }

    /// Prometheus takes no credentials: the check asks the query `1`, so that a server
    /// that cannot be reached (a wrong host or port, a refused connection, a failed
    /// TLS session) blocks the release before traffic moves. Any other answer, or
    /// none in time, passes: the trial reads and the readings say what is wrong.
    fn check(&self) -> BoxFuture<'_, Result<String, ReadError>> {
        Box::pin(async move {
            let url = format!("{}/api/v1/query?query=1", self.url);
            match crate::http::get_text(&url, QUERY_TIMEOUT).await {
                Err(e) if e.is_unreachable() => {
                    Err(self.read_error(PrometheusError::Unanswered(e)))
                }
                _ => Ok(format!("{} (no credentials)", self.url)),
            }
        })
    }
}

impl Prometheus {
    /// A Prometheus error as the providers' kind: Prometheus's own error answers keep
    /// their status (400 for a query it cannot parse), and a server that cannot be
    /// reached is named, so a trial read can tell them.
    /// An auth proxy in front of it answering 401 or 403 refuses every question, and
    /// a 4xx page that is not Prometheus's JSON (a path prefix missing from the URL,
    /// a login page) keeps its status too.
    fn read_error(&self, e: PrometheusError) -> ReadError {
        let why = |message: String| format!("{message} (Prometheus at {})", self.url);
        match e {
            PrometheusError::Failed {
                status: status @ (401 | 403),
                message,
            } => ReadError::Auth {
                provider: "Prometheus",
                status,
                why: why(message),
            },
            PrometheusError::NotJson {
                status: status @ (401 | 403),
            } => ReadError::Auth {
                provider: "Prometheus",
                status,
                why: why("the answer is not Prometheus's JSON".into()),
            },
            PrometheusError::Failed { status, message } if status >= 400 => ReadError::Status {
                provider: "Prometheus",
                status,
                why: message,
            },
            PrometheusError::NotJson { status } if (400..500).contains(&status) => {
                ReadError::Status {
                    provider: "Prometheus",
                    status,
                    why: why(
                        "the answer is not Prometheus's JSON: is the URL's path right?".into(),
                    ),
                }
            }
            // A redirect (rampart follows none) or a success that is not Prometheus's
            // JSON (a UI's page, a login page served with 200) answers every read
            // the same way: a misconfiguration the trial read blocks.
            PrometheusError::NotJson {
                status: status @ 300..=399,
            } => ReadError::Status {
                provider: "Prometheus",
                status,
                why: why(
                    "a redirect, and rampart follows none: give the URL it redirects to".into(),
                ),
            },
            PrometheusError::NotJson { status } if status < 300 => ReadError::NotJson("Prometheus"),
            PrometheusError::Read(e) => e,
            PrometheusError::Unanswered(e) if e.is_unreachable() => {
                ReadError::Unreachable(format!("Prometheus at {}: {e}", self.url))
            }
            other => ReadError::Other(other.to_string()),
        }
    }
}

fn seconds(ms: Millis) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

/// The one number an answer's `data` holds: a scalar, a vector of exactly one series,
/// or the mean of a matrix of exactly one series.
pub fn value_of(data: &Value) -> Result<f64, PrometheusError> {
    let number = |pair: &Value| -> Result<f64, PrometheusError> {
        let text = pair
            .get(1)
            .and_then(Value::as_str)
            .ok_or(PrometheusError::NoValue)?;
        let v: f64 = text
            .parse()
            .map_err(|_| PrometheusError::NotANumber(text.to_string()))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(PrometheusError::NotFinite(text.to_string()))
        }
    };
    let one = |result: &Value| -> Result<Value, PrometheusError> {
        let series = result.as_array().ok_or(PrometheusError::NoResult)?;
        match series.len() {
            0 => Err(PrometheusError::EmptyVector),
            1 => Ok(series[0].clone()),
            n => Err(PrometheusError::ManySeries(n)),
        }
    };
    match data["resultType"].as_str() {
        Some("scalar") => number(&data["result"]),
        Some("vector") => number(&one(&data["result"])?["value"]),
        Some("matrix") => {
            let values: Vec<f64> = one(&data["result"])?["values"]
                .as_array()
                .ok_or(PrometheusError::NoValues)?
                .iter()
                .filter_map(|p| number(p).ok())
                .collect();
            if values.is_empty() {
                return Err(PrometheusError::NoFiniteValue);
            }
            Ok(values.iter().sum::<f64>() / values.len() as f64)
        }
        other => Err(PrometheusError::UnexpectedType(other.map(str::to_string))),
    }
}

/// A latency histogram from a `buckets` query's answer: a vector of one series per
/// `le` label, each the requests at or below that bound (Prometheus buckets are
/// cumulative), with bounds in `unit`.
///
/// Each Prometheus bucket's own requests (its count less the one below it; a negative
/// difference, from a counter reset, is none) go in the rampart bucket holding its
/// upper bound: as slow as its bound, never faster. The `+Inf` bucket's go in the
/// slowest bucket there is (about 210 s): nothing says how slow they were, and a
/// hanging request must not read as barely over the last bound. Counts are rounded
/// (`increase` extrapolates).
///
/// Guarantees: an empty vector, a series without `le`, a bound or count that is not a
/// number (NaN included), only `+Inf`, or no request at all is an error: no data,
/// never a histogram that could pass.
pub fn histogram_of(data: &Value, unit: BucketUnit) -> Result<Histogram, PrometheusError> {
    match data["resultType"].as_str() {
        Some("vector") => {}
        other => return Err(PrometheusError::UnexpectedType(other.map(str::to_string))),
    }
    let series = data["result"].as_array().ok_or(PrometheusError::NoResult)?;
    if series.is_empty() {
        return Err(PrometheusError::EmptyVector);
    }
    let mut bounds: Vec<(f64, f64)> = Vec::with_capacity(series.len());
    for s in series {
        let le = s["metric"]["le"].as_str().ok_or(PrometheusError::NoBound)?;
        let bound = match le.trim() {
            "+Inf" | "Inf" | "inf" | "+inf" => f64::INFINITY,
            text => text
                .parse::<f64>()
                .ok()
                .filter(|b| b.is_finite())
                .ok_or_else(|| PrometheusError::BadBound(le.to_string()))?,
        };
        let text = s["value"]
            .get(1)
            .and_then(Value::as_str)
            .ok_or(PrometheusError::NoValue)?;
        let count: f64 = text
            .parse()
            .map_err(|_| PrometheusError::NotANumber(text.to_string()))?;
        if !count.is_finite() {
            return Err(PrometheusError::NotFinite(text.to_string()));
        }
        bounds.push((bound, count));
    }
    bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Several series at one bound (`le="1"` and `le="1.0"` from two exporters, or a
    // query not aggregated `by (le)`) are several populations' cumulative counts at it:
    // their sum is the whole's, as `sum by (le)` would have made it.
    bounds.dedup_by(|later, kept| {
        let same = later.0 == kept.0;
        if same {
            kept.1 += later.1;
        }
        same
    });
    // Only the `+Inf` bucket counts every request: without it the slowest are lost
    // and the rest read fast (`histogram_quantile` answers NaN for such buckets).
    if bounds.last().is_none_or(|(b, _)| b.is_finite()) {
        return Err(PrometheusError::NoInfBucket);
    }
    let mut h = Histogram::default();
    let mut below = 0.0;
    // The cumulative count so far, rounded: each bucket gets what its rounded cumulative
    // count adds (rounding each bucket's own share would lose every share under a
    // half, and the `+Inf` bucket's requests with them).
    let mut counted: u64 = 0;
    let mut last_finite: Option<usize> = None;
    for (bound, cumulative) in &bounds {
        // `increase` extrapolates each bucket's series on its own, so one may count a
        // little under the bucket below it (counting none); far under, the requests
        // between them would vanish: that is no histogram.
        if below - cumulative > (0.05 * below).max(2.0) {
            return Err(PrometheusError::NotCumulative {
                bound: if bound.is_finite() {
                    bound.to_string()
                } else {
                    "+Inf".into()
                },
                count: *cumulative,
                below,
            });
        }
        below = cumulative.max(below);
        let so_far = below.round() as u64;
        let own = so_far.saturating_sub(counted);
        counted = counted.max(so_far);
        let bucket = if bound.is_finite() {
            let micros = (bound * unit.micros()).round().clamp(0.0, u64::MAX as f64) as u64;
            let b = bucket_of(micros);
            last_finite = Some(b);
            b
        } else {
            // Beyond the last bound nothing says how slow: as slow as can be counted,
            // so a hanging request never reads as barely over the last bound.
            last_finite.ok_or(PrometheusError::OnlyInfinite)?;
            BUCKETS - 1
        };
        h.record_in_bucket(bucket, own);
    }
    if h.is_empty() {
        return Err(PrometheusError::NoRequests);
    }
    Ok(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    use rampart_core::metrics::IntervalSample;
    use rampart_core::ports::{MetricsSource, PortError};
    use rampart_core::release::MeasureWindow;

    use crate::query::WithQueries;

    fn with_queries(p: &rampart_core::Policy) -> WithQueries {
        WithQueries::new(
            Arc::new(Nothing),
            "shop",
            &p.analysis,
            std::path::Path::new("."),
            &|_| None,
            Arc::new(crate::clock::TokioClock::starting_at(0)),
        )
    }

    #[test]
    fn answers_map_to_one_number_or_no_data() {
        let v = |s: &str| value_of(&serde_json::from_str(s).unwrap());
        assert_eq!(
            v(r#"{"resultType":"scalar","result":[1,"0.25"]}"#).ok(),
            Some(0.25)
        );
        assert_eq!(
            v(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}"#).ok(),
            Some(3.0)
        );
        assert!(matches!(
            v(r#"{"resultType":"vector","result":[]}"#),
            Err(PrometheusError::EmptyVector)
        ));
        assert!(matches!(
            v(r#"{"resultType":"vector","result":[{"value":[1,"NaN"]}]}"#),
            Err(PrometheusError::NotFinite(x)) if x == "NaN"
        ));
        assert!(matches!(
            v(r#"{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}"#),
            Err(PrometheusError::ManySeries(2))
        ));
        assert!(matches!(
            v(r#"{"resultType":"matrix","result":[{"values":[[1,"NaN"]]}]}"#),
            Err(PrometheusError::NoFiniteValue)
        ));
        assert!(matches!(
            v(r#"{"resultType":"string","result":[1,"x"]}"#),
            Err(PrometheusError::UnexpectedType(x)) if x.as_deref() == Some("string")
        ));
        // The messages operators read in the reading's detail.
        assert_eq!(
            PrometheusError::ManySeries(2).to_string(),
            "the query returned 2 series; aggregate it to one (sum, avg, max)"
        );
        assert_eq!(
            PrometheusError::UnexpectedType(None).to_string(),
            "unexpected result type None"
        );
        assert_eq!(
            v(r#"{"resultType":"matrix","result":[{"values":[[1,"1"],[2,"NaN"],[3,"3"]]}]}"#).ok(),
            Some(2.0)
        );
    }

    /// A `buckets` answer: one series per `(le, cumulative count)`.
    fn buckets(series: &[(&str, &str)]) -> Value {
        let result: Vec<Value> = series
            .iter()
            .map(|(le, v)| serde_json::json!({"metric": {"le": le}, "value": [1, v]}))
            .collect();
        serde_json::json!({"resultType": "vector", "result": result})
    }

    #[test]
    fn cumulative_buckets_become_per_bucket_counts_at_their_upper_bound() {
        // Out of order, as Prometheus may return them; bounds in seconds.
        let data = buckets(&[
            ("+Inf", "100"),
            ("0.1", "90"),
            ("0.025", "60"),
            ("0.05", "60"),
        ]);
        let h = histogram_of(&data, BucketUnit::Seconds).unwrap();
        let at = |ms: u64| bucket_of(ms * 1000);
        // Regression (review): +Inf went just above the last bound, so a canary
        // whose requests all hung read as barely slower than 100 ms.
        let inf = BUCKETS - 1;
        assert_eq!(
            h.buckets().collect::<Vec<_>>(),
            vec![(at(25), 60), (at(100), 30), (inf, 10)],
            "the empty 50ms bucket holds nothing, +Inf goes in the slowest bucket"
        );
        // The same bounds in milliseconds land in the same buckets.
        let ms = buckets(&[("25", "60"), ("50", "60"), ("100", "90"), ("+Inf", "100")]);
        assert_eq!(histogram_of(&ms, BucketUnit::Milliseconds).unwrap(), h);
        // Each request is as slow as its bucket's bound, never faster.
        assert!(h.quantile_ms(0.5).unwrap() > 22.0, "{h:?}");
        // `increase` extrapolates: counts are rounded.
        let h = histogram_of(
            &buckets(&[("0.1", "2.6"), ("+Inf", "2.6")]),
            BucketUnit::Seconds,
        )
        .unwrap();
        assert_eq!(h.count(), 3);
    }

    #[test]
    fn series_at_one_bound_written_differently_are_summed() {
        // Two exporters: one writes `le="0.1"`, the other `le="0.10"`; neither is
        // aggregated away by `sum by (le)`, and both are requests at 100 ms.
        let data = buckets(&[("0.1", "3"), ("0.10", "4"), ("+Inf", "5"), ("+Inf", "4")]);
        let h = histogram_of(&data, BucketUnit::Seconds).unwrap();
        assert_eq!(
            h.buckets().collect::<Vec<_>>(),
            vec![(bucket_of(100_000), 7), (BUCKETS - 1, 2)]
        );
    }

    #[test]
    fn a_bucket_extrapolated_a_little_under_the_one_below_counts_no_negative_requests() {
        // The 0.2 bucket reads a little below the 0.1 one (`increase` extrapolates each
        // series on its own); far below is no histogram (query_review.rs).
        let data = buckets(&[("0.1", "50"), ("0.2", "48"), ("0.4", "70"), ("+Inf", "70")]);
        let h = histogram_of(&data, BucketUnit::Seconds).unwrap();
        assert_eq!(
            h.buckets().collect::<Vec<_>>(),
            vec![(bucket_of(100_000), 50), (bucket_of(400_000), 20)]
        );
    }

    #[test]
    fn buckets_that_say_nothing_are_no_data() {
        let no = |data: Value| histogram_of(&data, BucketUnit::Seconds).unwrap_err();
        assert!(matches!(no(buckets(&[])), PrometheusError::EmptyVector));
        assert!(matches!(
            no(buckets(&[("0.1", "0"), ("+Inf", "0")])),
            PrometheusError::NoRequests
        ));
        assert!(matches!(
            no(buckets(&[("0.1", "NaN"), ("+Inf", "3")])),
            PrometheusError::NotFinite(_)
        ));
        assert!(matches!(
            no(buckets(&[("+Inf", "3")])),
            PrometheusError::OnlyInfinite
        ));
        assert!(matches!(
            no(buckets(&[("fast", "3")])),
            PrometheusError::BadBound(_)
        ));

        let unlabelled = serde_json::json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, "3"]}]});
        assert!(matches!(no(unlabelled), PrometheusError::NoBound));
        let scalar = serde_json::json!({"resultType": "scalar", "result": [1, "3"]});
        assert!(matches!(no(scalar), PrometheusError::UnexpectedType(_)));
    }

    #[test]
    fn placeholders_and_encoding() {
        assert_eq!(crate::query::prom_duration(Duration::from_secs(30)), "30s");
        assert_eq!(
            crate::query::prom_duration(Duration::from_millis(1500)),
            "1500ms"
        );
        assert_eq!(
            crate::http::encode("a{b=\"c\"}[1m] / 2"),
            "a%7Bb%3D%22c%22%7D%5B1m%5D%20%2F%202"
        );
        assert_eq!(seconds(1_234_567), "1234.567");
    }

    struct Nothing;

    impl MetricsSource for Nothing {
        fn measure<'a>(
            &'a self,
            _: &'a MeasureWindow,
        ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
            Box::pin(async { Ok(IntervalSample::default()) })
        }
    }

    fn window(from: Millis, to: Millis) -> MeasureWindow {
        MeasureWindow {
            from,
            to,
            stable: Some("v1".into()),
            canary: "v2".into(),
        }
    }

    fn policy(query: &str, range: bool, url: &str) -> rampart_core::Policy {
        rampart_core::Policy::from_yaml(&format!(
            r#"service: shop
deploy: {{process: {{command: ["x", "{{port}}"]}}}}
traffic: {{proxy: {{listen: "127.0.0.1:1"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}
analysis:
  interval: 30s
  prometheus: {url}
  metrics: [{{name: q, source: prometheus, query: '{query}', range: {range}, judge: {{max: 1}}}}]
"#
        ))
        .unwrap()
    }

    /// A Prometheus stand-in that answers every query with one series of value 1 and
    /// keeps the request targets it was sent.
    async fn fake_prometheus() -> (String, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let target = head.split(' ').nth(1).unwrap_or_default().to_string();
                let matrix = target.contains("query_range");
                log.lock().unwrap().push(target);
                let body = if matrix {
                    r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"]]}]}}"#
                } else {
                    r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{},"value":[1,"1"]}]}}"#
                };
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(answer.as_bytes()).await;
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn queries_read_the_window_they_are_given_not_a_clock() {
        let (url, seen) = fake_prometheus().await;
        let p = policy("errors{version=\"{version}\"}", true, &url);
        let source = with_queries(&p);
        // Two contiguous windows, far from any clock's now.
        let first = source.measure(&window(1_000_000, 1_030_000)).await.unwrap();
        assert_eq!(
            (first.queries[0].stable, first.queries[0].canary),
            (Some(1.0), Some(1.0)),
            "{}",
            first.queries[0].detail
        );
        source.measure(&window(1_030_000, 1_061_500)).await.unwrap();
        let seen = seen.lock().unwrap().clone();
        let version = |v: &str| crate::http::encode(&format!("errors{{version=\"{v}\"}}"));
        assert_eq!(
            seen,
            vec![
                format!(
                    "/api/v1/query_range?query={}&start=1000.000&end=1030.000&step=3.000",
                    version("v1")
                ),
                format!(
                    "/api/v1/query_range?query={}&start=1000.000&end=1030.000&step=3.000",
                    version("v2")
                ),
                format!(
                    "/api/v1/query_range?query={}&start=1030.000&end=1061.500&step=3.150",
                    version("v1")
                ),
                format!(
                    "/api/v1/query_range?query={}&start=1030.000&end=1061.500&step=3.150",
                    version("v2")
                ),
            ]
        );
    }

    #[tokio::test]
    async fn instant_queries_read_at_the_end_of_the_window() {
        let (url, seen) = fake_prometheus().await;
        let p = policy("up", false, &url);
        let source = with_queries(&p);
        let mut w = window(5_000, 35_250);
        w.stable = None;
        source.measure(&w).await.unwrap();
        assert_eq!(
            seen.lock().unwrap().clone(),
            vec![
                "/api/v1/query?query=up&time=35.250",
                "/api/v1/query?query=up&time=35.250"
            ]
        );
    }

    #[tokio::test]
    async fn a_sample_count_is_read_for_each_variant_at_the_end_of_the_window() {
        let (url, seen) = fake_prometheus().await;
        let mut p = policy("errors", true, &url);
        if let Some(q) = p.analysis.metrics[0].query.as_mut() {
            q.samples = Some("requests{track=\"{variant}\"}".into());
        }
        let source = with_queries(&p);
        let s = source.measure(&window(1_000_000, 1_030_000)).await.unwrap();
        let q = &s.queries[0];
        assert_eq!(
            (q.stable_samples, q.canary_samples),
            (Some(1.0), Some(1.0)),
            "{}",
            q.detail
        );
        let seen = seen.lock().unwrap().clone();
        let count = |v: &str| crate::http::encode(&format!("requests{{track=\"{v}\"}}"));
        assert_eq!(
            seen[1],
            format!("/api/v1/query?query={}&time=1030.000", count("stable"))
        );
        assert_eq!(
            seen[3],
            format!("/api/v1/query?query={}&time=1030.000", count("canary"))
        );
    }

    #[tokio::test]
    async fn an_unreachable_prometheus_is_no_data_not_a_pass() {
        let policy = rampart_core::Policy::from_yaml(
            r#"service: shop
deploy: {process: {command: ["x", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy: {canary: {steps: [{weight: 10, bake: 1m}]}}
analysis:
  prometheus: http://127.0.0.1:9
  metrics: [{name: q, source: prometheus, query: 'up{job="{service}"}', judge: {max: 1}}]
"#,
        )
        .unwrap();
        let source = with_queries(&policy);
        let sample = source.measure(&window(0, 30_000)).await.unwrap();
        let q = &sample.queries[0];
        assert_eq!((q.stable, q.canary), (None, None));
        assert!(q.detail.contains("connect"), "{}", q.detail);
    }
}
