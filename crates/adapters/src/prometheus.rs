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
    ) -> Result<f64, String> {
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
        let (status, body) = crate::http::get_text(&url, QUERY_TIMEOUT).await?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|_| format!("Prometheus answered {status} with a body that is not JSON"))?;
        if v["status"] != "success" {
            return Err(format!(
                "Prometheus answered {status}: {}",
                v["error"].as_str().unwrap_or("no error message")
            ));
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
pub fn value_of(data: &Value) -> Result<f64, String> {
    let number = |pair: &Value| -> Result<f64, String> {
        let text = pair
            .get(1)
            .and_then(Value::as_str)
            .ok_or("a sample without a value")?;
        let v: f64 = text
            .parse()
            .map_err(|_| format!("`{text}` is not a number"))?;
        if v.is_finite() {
            Ok(v)
        } else {
            Err(format!("the value is {text}"))
        }
    };
    let one = |result: &Value| -> Result<Value, String> {
        let series = result.as_array().ok_or("no result")?;
        match series.len() {
            0 => Err("the query returned an empty vector".into()),
            1 => Ok(series[0].clone()),
            n => Err(format!(
                "the query returned {n} series; aggregate it to one (sum, avg, max)"
            )),
        }
    };
    match data["resultType"].as_str() {
        Some("scalar") => number(&data["result"]),
        Some("vector") => number(&one(&data["result"])?["value"]),
        Some("matrix") => {
            let values: Vec<f64> = one(&data["result"])?["values"]
                .as_array()
                .ok_or("a series without values")?
                .iter()
                .filter_map(|p| number(p).ok())
                .collect();
            if values.is_empty() {
                return Err("no finite value in the range".into());
            }
            Ok(values.iter().sum::<f64>() / values.len() as f64)
        }
        other => Err(format!("unexpected result type {other:?}")),
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
        assert!(
            v(r#"{"resultType":"vector","result":[]}"#)
                .unwrap_err()
                .contains("empty vector")
        );
        assert!(
            v(r#"{"resultType":"vector","result":[{"value":[1,"NaN"]}]}"#)
                .unwrap_err()
                .contains("NaN")
        );
        assert!(
            v(r#"{"resultType":"vector","result":[{"value":[1,"1"]},{"value":[1,"2"]}]}"#)
                .unwrap_err()
                .contains("2 series")
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
