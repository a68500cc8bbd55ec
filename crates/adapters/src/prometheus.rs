//! The `prometheus` metrics source: the policy's PromQL queries, read for each variant
//! over Prometheus's HTTP API, beside the builtin measurements.
//!
//! Owns placeholder substitution (`{service}`, `{variant}`, `{version}`, `{interval}`),
//! instant and range reads, and turning every way a read can go wrong (an HTTP error,
//! an error status, an empty vector, several series, NaN) into a missing value, which
//! the judges treat as no data: never a pass.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::Millis;
use rampart_core::metrics::{IntervalSample, QueryReading};
use rampart_core::policy::{Analysis, QuerySpec};
use rampart_core::ports::{BoxFuture, Clock, MetricsSource, PortError};
use serde_json::Value;

/// The versions a release compares, for `{version}`.
#[derive(Debug, Default, Clone)]
pub struct Versions {
    /// The version serving before.
    pub stable: String,
    /// The version being released.
    pub canary: String,
}

/// Builtin measurements plus the policy's Prometheus queries.
pub struct WithQueries {
    builtin: Arc<dyn MetricsSource>,
    url: String,
    service: String,
    interval: Duration,
    queries: Vec<(String, QuerySpec)>,
    versions: Arc<Mutex<Versions>>,
    clock: Arc<dyn Clock>,
    last: Mutex<Option<Millis>>,
}

impl std::fmt::Debug for WithQueries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithQueries")
            .field("url", &self.url)
            .field("queries", &self.queries)
            .finish_non_exhaustive()
    }
}

/// Why a query gave no value. Every one of them is "no data" to the judges, never a
/// pass; the message goes into the reading's detail, where operators see it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PrometheusError {
    /// The HTTP request got no answer (bad URL, refused, timed out), in the HTTP
    /// client's words.
    #[error("{0}")]
    Unanswered(String),
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
    /// A result type other than scalar, vector or matrix.
    #[error("unexpected result type {0:?}")]
    UnexpectedType(Option<String>),
}

/// How long one query may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

impl WithQueries {
    /// Adds `analysis`'s query metrics to `builtin`; `versions` is kept current by the
    /// caller as the release learns them.
    pub fn new(
        builtin: Arc<dyn MetricsSource>,
        service: &str,
        analysis: &Analysis,
        versions: Arc<Mutex<Versions>>,
        clock: Arc<dyn Clock>,
    ) -> WithQueries {
        WithQueries {
            builtin,
            url: analysis.prometheus.clone().unwrap_or_default(),
            service: service.to_string(),
            interval: analysis.interval,
            queries: analysis
                .metrics
                .iter()
                .filter_map(|m| m.query.clone().map(|q| (m.name.clone(), q)))
                .collect(),
            versions,
            clock,
            last: Mutex::new(None),
        }
    }

    fn substitute(&self, query: &str, variant: &str, version: &str) -> String {
        query
            .replace("{service}", &self.service)
            .replace("{variant}", variant)
            .replace("{version}", version)
            .replace("{interval}", &prom_duration(self.interval))
    }

    async fn read(
        &self,
        spec: &QuerySpec,
        query: &str,
        from: Millis,
        to: Millis,
    ) -> Result<f64, PrometheusError> {
        let url = if spec.range {
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
        let (status, body) = crate::http::get_text(&url, QUERY_TIMEOUT)
            .await
            .map_err(PrometheusError::Unanswered)?;
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
        value_of(&v["data"])
    }
}

/// A Prometheus duration: whole seconds, or milliseconds below a second.
fn prom_duration(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
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

impl MetricsSource for WithQueries {
    fn measure(&self) -> BoxFuture<'_, Result<IntervalSample, PortError>> {
        Box::pin(async move {
            let mut sample = self.builtin.measure().await?;
            let to = self.clock.now();
            let from = {
                let mut last = self
                    .last
                    .lock()
                    .map_err(|_| PortError::new("query state poisoned"))?;
                let from = last.unwrap_or(
                    to.saturating_sub(u64::try_from(self.interval.as_millis()).unwrap_or(0)),
                );
                *last = Some(to);
                from
            };
            let versions = self.versions.lock().map(|v| v.clone()).unwrap_or_default();
            for (name, spec) in &self.queries {
                let mut reading = QueryReading {
                    name: name.clone(),
                    ..QueryReading::default()
                };
                let mut why = Vec::new();
                for (variant, version) in
                    [("stable", &versions.stable), ("canary", &versions.canary)]
                {
                    let q = self.substitute(&spec.query, variant, version);
                    match self.read(spec, &q, from, to).await {
                        Ok(v) if variant == "stable" => reading.stable = Some(v),
                        Ok(v) => reading.canary = Some(v),
                        Err(e) => why.push(format!("{variant}: {e}")),
                    }
                }
                reading.detail = why.join("; ");
                sample.queries.push(reading);
            }
            Ok(sample)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_one_number_or_no_data() {
        let v = |s: &str| value_of(&serde_json::from_str(s).unwrap());
        assert_eq!(
            v(r#"{"resultType":"scalar","result":[1,"0.25"]}"#),
            Ok(0.25)
        );
        assert_eq!(
            v(r#"{"resultType":"vector","result":[{"metric":{},"value":[1,"3"]}]}"#),
            Ok(3.0)
        );
        assert_eq!(
            v(r#"{"resultType":"vector","result":[]}"#),
            Err(PrometheusError::EmptyVector)
        );
        assert_eq!(
            v(r#"{"resultType":"vector","result":[{"value":[1,"NaN"]}]}"#),
            Err(PrometheusError::NotFinite("NaN".into()))
        );
        assert_eq!(
            v(r#"{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}"#),
            Err(PrometheusError::ManySeries(2))
        );
        assert_eq!(
            v(r#"{"resultType":"matrix","result":[{"values":[[1,"NaN"]]}]}"#),
            Err(PrometheusError::NoFiniteValue)
        );
        assert_eq!(
            v(r#"{"resultType":"string","result":[1,"x"]}"#),
            Err(PrometheusError::UnexpectedType(Some("string".into())))
        );
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
            v(r#"{"resultType":"matrix","result":[{"values":[[1,"1"],[2,"NaN"],[3,"3"]]}]}"#),
            Ok(2.0)
        );
    }

    #[test]
    fn placeholders_and_encoding() {
        assert_eq!(prom_duration(Duration::from_secs(30)), "30s");
        assert_eq!(prom_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(
            crate::http::encode("a{b=\"c\"}[1m] / 2"),
            "a%7Bb%3D%22c%22%7D%5B1m%5D%20%2F%202"
        );
        assert_eq!(seconds(1_234_567), "1234.567");
    }

    struct Nothing;

    impl MetricsSource for Nothing {
        fn measure(&self) -> BoxFuture<'_, Result<IntervalSample, PortError>> {
            Box::pin(async { Ok(IntervalSample::default()) })
        }
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
        let source = WithQueries::new(
            Arc::new(Nothing),
            "shop",
            &policy.analysis,
            Arc::default(),
            Arc::new(crate::clock::TokioClock::new()),
        );
        let sample = source.measure().await.unwrap();
        let q = &sample.queries[0];
        assert_eq!((q.stable, q.canary), (None, None));
        assert!(q.detail.contains("connect"), "{}", q.detail);
    }
}
