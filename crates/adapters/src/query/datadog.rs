//! The `datadog` metrics provider: a metric's Datadog query, read for each variant
//! over the window with the metrics query API v1 (`GET /api/v1/query`) or v2
//! (`POST /api/v2/query/timeseries`), with the API and application keys from the
//! environment (`DD-API-KEY`, `DD-APPLICATION-KEY` headers).
//!
//! Owns both request shapes, reducing a series to one number, and the pre-release
//! check (the keys are set; `GET /api/v1/validate` accepts the API key). It must not
//! send a key anywhere but those headers.
//!
//! One number per variant from a series: a counts metric's `bad`/`good` and `total`,
//! and a `samples` count, are the **sum** of the points in the window (write them
//! with `.as_count()`); a `query` value is the **last** point, or the **mean** of the
//! points with `range: true`. No series, or no non-null point, is no data.

use std::sync::Arc;

use rampart_core::policy::{DatadogApi, DatadogSpec, QuerySpec};
use rampart_core::ports::{BoxFuture, Clock};
use serde_json::{Value, json};

use super::fetch::{self, Request};
use super::{Ask, QueryProvider, ReadError, Reading, Reduce, Secret, number, said};

pub(super) const NAME: &str = "Datadog";

/// Datadog's metrics query API, with its keys.
pub struct Datadog {
    url: String,
    api: DatadogApi,
    api_key: Result<Secret, String>,
    app_key: Result<Secret, String>,
    quiet: fetch::Quiet,
}

impl std::fmt::Debug for Datadog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Datadog")
            .field("url", &self.url)
            .field("api", &self.api)
            .field("api_key", &self.api_key)
            .field("app_key", &self.app_key)
            .field("quiet", &self.quiet)
            .finish()
    }
}

impl Datadog {
    /// Datadog as `spec` says, with its keys read from `env` now; the waits it asks
    /// for are kept on `clock`'s time.
    pub fn new(
        spec: &DatadogSpec,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
    ) -> Datadog {
        let key = |var: &str| Secret::from_env(var, env).map_err(|e| e.to_string());
        Datadog {
            url: spec.url.clone(),
            api: spec.api,
            api_key: key(&spec.api_key_env),
            app_key: key(&spec.app_key_env),
            quiet: fetch::Quiet::new(clock),
        }
    }

    fn keys(&self) -> Result<(&Secret, &Secret), ReadError> {
        let (api, app) = (self.api_key.as_ref(), self.app_key.as_ref());
        match (api, app) {
            (Ok(api), Ok(app)) => Ok((api, app)),
            (Err(e), _) | (_, Err(e)) => Err(ReadError::Other(e.clone())),
        }
    }

    /// The one series `query` answers over `ask`'s window, as its points.
    async fn points(&self, query: &str, ask: &Ask) -> Result<Vec<f64>, ReadError> {
        let (api_key, app_key) = self.keys()?;
        let headers = vec![
            ("DD-API-KEY", api_key.expose().to_string()),
            ("DD-APPLICATION-KEY", app_key.expose().to_string()),
        ];
        let query = ask.fill(query, str::to_string);
        let req = match self.api {
            DatadogApi::V1 => Request {
                provider: NAME,
                method: "GET",
                url: format!(
                    "{}/api/v1/query?from={}&to={}&query={}",
                    self.url,
                    ask.from / 1000,
                    ask.to / 1000,
                    crate::http::encode(&query)
                ),
                body: None,
                headers,
                secrets: vec![api_key, app_key],
                sign: None,
                throttled: None,
            },
            DatadogApi::V2 => Request {
                provider: NAME,
                method: "POST",
                url: format!("{}/api/v2/query/timeseries", self.url),
                body: Some(v2_body(&query, ask).to_string()),
                headers,
                secrets: vec![api_key, app_key],
                sign: None,
                throttled: None,
            },
        };
        let answer = fetch::json(&req, &ask.budget, &self.quiet).await?;
        let secrets = [api_key, app_key];
        match self.api {
            DatadogApi::V1 => v1_points(&answer, &secrets),
            DatadogApi::V2 => v2_points(&answer, &secrets),
        }
    }

    async fn one(&self, query: &str, ask: &Ask, reduce: Reduce) -> Result<f64, ReadError> {
        let points = self.points(query, ask).await?;
        reduce.apply(&points, "the series has no point in the window")
    }
}

/// The v2 request: one metrics query over the window, and the formula that returns
/// it.
fn v2_body(query: &str, ask: &Ask) -> Value {
    json!({
        "data": {
            "type": "timeseries_request",
            "attributes": {
                "from": ask.from,
                "to": ask.to,
                "queries": [{"data_source": "metrics", "query": query, "name": "a"}],
                "formulas": [{"formula": "a"}]
            }
        }
    })
}

/// An error Datadog reports inside a 200 answer: the query refused (a syntax error,
/// an unknown metric or function), which no later read will get past, but for a
/// time limit or a failure on its side, which a later read may.
fn query_error(why: &str) -> ReadError {
    let lower = why.to_ascii_lowercase();
    if [
        "timeout",
        "timed out",
        "internal",
        "unavailable",
        "try again",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        ReadError::Other(format!("Datadog: {why}"))
    } else {
        ReadError::Refused {
            provider: NAME,
            why: why.to_string(),
        }
    }
}

/// The one series of a v1 answer, as its non-null points; what Datadog says is
/// scrubbed of `secrets`.
fn v1_points(answer: &Value, secrets: &[&Secret]) -> Result<Vec<f64>, ReadError> {
    if answer["status"] == "error" {
        let why = answer["error"].as_str().unwrap_or("no error message");
        return Err(query_error(&said(why, secrets)));
    }
    let series = answer["series"]
        .as_array()
        .ok_or_else(|| ReadError::Empty("Datadog returned no series".into()))?;
    match series.as_slice() {
        [] => Err(ReadError::Empty("Datadog returned no series".into())),
        [one] => Ok(one["pointlist"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p.get(1).and_then(number))
            .collect()),
        many => Err(ReadError::ManySeries(many.len())),
    }
}

/// The one series of a v2 answer (`data.attributes.series` and `values`), as its
/// non-null points; what Datadog says is scrubbed of `secrets`.
fn v2_points(answer: &Value, secrets: &[&Secret]) -> Result<Vec<f64>, ReadError> {
    let attributes = &answer["data"]["attributes"];
    let series = attributes["series"].as_array().map_or(0, Vec::len);
    if series == 0 {
        // Datadog documents `errors` beside `data`, at the top of the body; the
        // attributes are read too, as they were before.
        let errors = [&answer["errors"], &attributes["errors"]]
            .into_iter()
            .find_map(error_text);
        return match errors {
            Some(why) => Err(query_error(&said(&why, secrets))),
            None => Err(ReadError::Empty("Datadog returned no series".into())),
        };
    }
    if series > 1 {
        return Err(ReadError::ManySeries(series));
    }
    Ok(attributes["values"][0]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(number)
        .collect())
}

/// An `errors` value's text: a string, or a list of strings joined; `None` when
/// empty.
fn error_text(errors: &Value) -> Option<String> {
    let text = match errors {
        Value::String(s) => s.clone(),
        Value::Array(list) => list
            .iter()
            .filter_map(Value::as_str)
            .collect::<Vec<_>>()
            .join("; "),
        _ => return None,
    };
    (!text.trim().is_empty()).then_some(text)
}

impl QueryProvider for Datadog {
    fn read<'a>(&'a self, spec: &'a QuerySpec, ask: &'a Ask) -> BoxFuture<'a, Reading> {
        Box::pin(async move {
            let reduce = Reduce::of(spec);
            let value = self.one(&spec.query, ask, reduce).await;
            let samples = match &spec.samples {
                Some(q) => Some(self.one(q, ask, Reduce::Sum).await),
                None => None,
            };
            Reading {
                value,
                samples,
                histogram: None,
            }
        })
    }

    fn secrets(&self) -> Vec<Secret> {
        [&self.api_key, &self.app_key]
            .into_iter()
            .filter_map(|k| k.as_ref().ok().cloned())
            .collect()
    }

    fn check(&self) -> BoxFuture<'_, Result<String, ReadError>> {
        Box::pin(async move {
            let (api_key, app_key) = self.keys()?;
            let req = Request {
                provider: NAME,
                method: "GET",
                url: format!("{}/api/v1/validate", self.url),
                body: None,
                headers: vec![("DD-API-KEY", api_key.expose().to_string())],
                secrets: vec![api_key, app_key],
                sign: None,
                throttled: None,
            };
            // A check has no interval to wait in: a 429 here is a failed check.
            let answer =
                fetch::json(&req, &super::Budget::new(Default::default()), &self.quiet).await?;
            if answer["valid"] != true {
                return Err(ReadError::Other(format!(
                    "Datadog did not confirm the API key in ${}",
                    api_key.var
                )));
            }
            Ok(format!(
                "{} accepts the API key in ${}; ${} is set",
                self.url, api_key.var, app_key.var
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_become_points_or_no_data() {
        let v1 = |s: &str| v1_points(&serde_json::from_str(s).unwrap(), &[]);
        assert_eq!(
            v1(r#"{"status":"ok","series":[{"pointlist":[[1,2.0],[2,null],[3,"4"]]}]}"#).ok(),
            Some(vec![2.0, 4.0])
        );
        assert!(matches!(
            v1(r#"{"status":"ok","series":[]}"#),
            Err(ReadError::Empty(_))
        ));
        assert!(matches!(
            v1(r#"{"status":"ok","series":[{},{}]}"#),
            Err(ReadError::ManySeries(2))
        ));
        let v2 = |s: &str| v2_points(&serde_json::from_str(s).unwrap(), &[]);
        assert_eq!(
            v2(r#"{"data":{"attributes":{"series":[{}],"times":[1,2],"values":[[1.5,null]]}}}"#)
                .ok(),
            Some(vec![1.5])
        );
        assert!(matches!(
            v2(r#"{"data":{"attributes":{"series":[],"values":[]}}}"#),
            Err(ReadError::Empty(_))
        ));
        for errors in [
            r#"{"data":{"attributes":{"series":[]}},"errors":"bad query"}"#,
            r#"{"errors":["bad query"]}"#,
            r#"{"data":{"attributes":{"series":[],"errors":"bad query"}}}"#,
        ] {
            assert_eq!(
                v2(errors).unwrap_err().to_string(),
                "Datadog: bad query",
                "{errors}"
            );
        }
    }
}
