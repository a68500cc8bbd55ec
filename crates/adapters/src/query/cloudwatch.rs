//! The `cloudwatch` metrics provider: a metric's CloudWatch expression (metric math,
//! `SEARCH`, or a Metrics Insights `SELECT`), read for each variant over the window with
//! GetMetricData in the AWS JSON 1.0 protocol (`POST /`,
//! `Content-Type: application/x-amz-json-1.0`,
//! `X-Amz-Target: GraniteServiceVersion20100801.GetMetricData`), signed with Signature
//! Version 4 for the service `monitoring`.
//!
//! Owns the request (one `Expression` query with the policy's period, the window in
//! epoch seconds rounded down to whole periods, oldest datapoint first), reducing its datapoints to one number, and
//! the pre-release check (credentials found, and a GetMetricData signed with them
//! accepted). It must not send the secret access key at all (only signatures made
//! with it), nor the session token anywhere but `X-Amz-Security-Token`.
//!
//! One number per variant from the datapoints, as for Datadog: `bad`/`good`, `total`
//! and `samples` are the **sum** of the datapoints in the window (use the `Sum`
//! statistic), a `query` value is the **last** datapoint, or their **mean** with
//! `range: true`. No result, or a result without datapoints, is no data.

use std::sync::{Arc, Mutex};

use rampart_core::policy::{CloudWatchSpec, QuerySpec};
use rampart_core::ports::{BoxFuture, Clock};
use serde_json::{Value, json};

use super::aws_credentials::{self, Credentials};
use super::fetch::{self, Request};
use super::{Ask, QueryProvider, ReadError, Reading, Reduce, Secret, number, said, sigv4};

const NAME: &str = "CloudWatch";
/// The operation, as the JSON protocol names it.
pub const TARGET: &str = "GraniteServiceVersion20100801.GetMetricData";
/// The JSON protocol's content type.
pub const CONTENT_TYPE: &str = "application/x-amz-json-1.0";
/// CloudWatch's signing name.
pub const SERVICE: &str = "monitoring";

/// CloudWatch in one region. Credentials from the environment are the ones found
/// when it was built; credentials from the shared file are looked up again before
/// each request (temporary ones are rewritten there as they expire), and the last
/// good ones stay while the file cannot be read.
pub struct CloudWatch {
    url: String,
    host: String,
    path: String,
    region: String,
    period: u32,
    delay: std::time::Duration,
    credentials: Mutex<Result<Credentials, String>>,
    /// Every secret of credentials since replaced: still scrubbed, never sent.
    retired: Mutex<Vec<Secret>>,
    /// The variables the lookup reads, as they were when it was built.
    lookup: Vec<(&'static str, String)>,
    clock: Arc<dyn Clock>,
    quiet: fetch::Quiet,
}

impl std::fmt::Debug for CloudWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudWatch")
            .field("url", &self.url)
            .field("region", &self.region)
            .field("period", &self.period)
            .field("credentials", &self.credentials)
            .field("quiet", &self.quiet)
            .finish_non_exhaustive()
    }
}

impl CloudWatch {
    /// CloudWatch as `spec` says, with credentials found in `env` (and the shared
    /// credentials file it points at) now, signing with `clock`'s time.
    pub fn new(
        spec: &CloudWatchSpec,
        env: &dyn Fn(&str) -> Option<String>,
        clock: Arc<dyn Clock>,
    ) -> CloudWatch {
        let url = format!("{}/", spec.url);
        // The Host and path signed must be the ones the HTTP client sends.
        let (host, path) = match url.parse::<hyper::Uri>() {
            Ok(uri) => (
                uri.authority().map(|a| a.to_string()).unwrap_or_default(),
                uri.path().to_string(),
            ),
            Err(_) => (String::new(), "/".to_string()),
        };
        CloudWatch {
            url,
            host,
            path,
            region: spec.region.clone(),
            period: spec.period,
            delay: spec.delay,
            credentials: Mutex::new(aws_credentials::find(env).map_err(|e| e.to_string())),
            retired: Mutex::default(),
            lookup: aws_credentials::VARIABLES
                .iter()
                .filter_map(|&var| env(var).map(|v| (var, v)))
                .collect(),
            quiet: fetch::Quiet::new(clock.clone()),
            clock,
        }
    }

    /// The credentials to sign with now: those from the shared file as it is now (or
    /// the last good ones while it cannot be read), else those found at the start.
    fn credentials(&self) -> Result<Credentials, ReadError> {
        let mut held = self
            .credentials
            .lock()
            .map_err(|_| ReadError::Other("the credentials lock is poisoned".into()))?;
        if held.as_ref().is_ok_and(|c| c.from_file) {
            let env = |var: &str| {
                self.lookup
                    .iter()
                    .find(|(k, _)| *k == var)
                    .map(|(_, v)| v.clone())
            };
            if let Ok(now) = aws_credentials::find(&env) {
                if let Ok(before) = held.as_ref()
                    && let Ok(mut retired) = self.retired.lock()
                {
                    let kept = now.secrets();
                    for s in before.secrets() {
                        let gone = !kept.iter().any(|k| k.expose() == s.expose());
                        if gone && !retired.iter().any(|r| r.expose() == s.expose()) {
                            retired.push(s.clone());
                        }
                    }
                }
                *held = Ok(now);
            }
        }
        held.clone().map_err(ReadError::Other)
    }

    /// Sends one GetMetricData request with `body`; returns the answer.
    async fn get_metric_data(
        &self,
        body: Value,
        budget: &super::Budget,
    ) -> Result<Value, ReadError> {
        let credentials = self.credentials()?;
        let body = body.to_string();
        let sign = || {
            let amz_date = sigv4::amz_date(self.clock.now())
                .ok_or_else(|| ReadError::Other("the clock is past the year 9999".into()))?;
            let req = sigv4::Request {
                method: "POST",
                path: &self.path,
                query: &[],
                headers: &[
                    ("content-type", CONTENT_TYPE),
                    ("host", &self.host),
                    ("x-amz-target", TARGET),
                ],
                payload: body.as_bytes(),
            };
            let scope = sigv4::Scope {
                region: &self.region,
                service: SERVICE,
                amz_date: &amz_date,
            };
            Ok(sigv4::sign(&req, &credentials.keys(), &scope))
        };
        let req = Request {
            provider: NAME,
            method: "POST",
            url: self.url.clone(),
            body: Some(body.clone()),
            headers: vec![
                ("Content-Type", CONTENT_TYPE.to_string()),
                ("X-Amz-Target", TARGET.to_string()),
            ],
            secrets: credentials.secrets(),
            sign: Some(&sign),
            throttled: Some(throttled),
        };
        let answer = fetch::json(&req, budget, &self.quiet).await?;
        // A result CloudWatch could not compute, or may not show, says why in its
        // messages; anything it echoes is scrubbed like an error.
        for result in answer["MetricDataResults"].as_array().into_iter().flatten() {
            let status = result["StatusCode"].as_str().unwrap_or("Complete");
            let messages = || said(&messages(&result["Messages"]), &credentials.secrets());
            match status {
                // The keys may not read that data (a cross-Region or cross-account read
                // they are not allowed): every read is refused the same way.
                "Forbidden" => {
                    return Err(ReadError::Refused {
                        provider: NAME,
                        why: format!(
                            "CloudWatch may not show this data (Forbidden){}",
                            messages()
                        ),
                    });
                }
                "InternalError" => {
                    return Err(ReadError::Other(format!(
                        "CloudWatch could not compute the expression ({status}){}",
                        messages()
                    )));
                }
                // Part of the metrics a SEARCH matches: no window reads otherwise.
                "PartialData" if too_many_metrics(&result["Messages"]) => {
                    return Err(too_many(&messages()));
                }
                // Some of the window's datapoints are missing (a math expression gets
                // no `NextToken` to ask for the rest): a sum of part of the window
                // would undercount, so it is no data.
                "PartialData" if answer.get("NextToken").is_none_or(Value::is_null) => {
                    return Err(ReadError::Empty(format!(
                        "CloudWatch returned part of the window's datapoints (PartialData){}",
                        messages()
                    )));
                }
                _ => {}
            }
        }
        // A message about the whole operation (with or without words) means
        // CloudWatch did not run all of it ("as much of the operation as possible is
        // still executed"), most often because the expressions match more metrics
        // than one request reads. A sum of what it did read would undercount. (After
        // the results: a refusal among them says more.)
        let overall = &answer["Messages"];
        if overall.as_array().is_some_and(|m| !m.is_empty()) {
            let said = said(&messages(overall), &credentials.secrets());
            if too_many_metrics(overall) {
                return Err(too_many(&said));
            }
            return Err(ReadError::Empty(format!(
                "CloudWatch did not run the whole request{said}"
            )));
        }
        Ok(answer)
    }

    /// The one series `expression` gives over `ask`'s window, as its values.
    async fn values(&self, expression: &str, ask: &Ask) -> Result<Vec<f64>, ReadError> {
        // Read `delay` behind the interval, so its datapoints have arrived.
        let delay = rampart_core::Millis::try_from(self.delay.as_millis()).unwrap_or(u64::MAX);
        let (start, end) = aligned(
            ask.from.saturating_sub(delay),
            ask.to.saturating_sub(delay),
            rampart_core::policy::cloudwatch_alignment(self.period),
        );
        // Windows are at least an interval long, and the policy makes an interval
        // whole periods, so an aligned window holds at least one period. One that
        // holds none (a window shorter than a period: a clock set back) is no data;
        // its datapoints are the next window's, which starts at the same boundary.
        if start >= end {
            return Err(ReadError::Empty(format!(
                "the window holds no whole CloudWatch period of {}s yet",
                self.period
            )));
        }
        // `{from}`, `{to}` and `{interval}` are the window asked, as `StartTime` and
        // `EndTime` are.
        let asked = Ask {
            service: ask.service.clone(),
            variant: ask.variant,
            version: ask.version.clone(),
            from: start * 1000,
            to: end * 1000,
            interval: std::time::Duration::from_secs(end - start),
            budget: ask.budget.clone(),
        };
        let expression = asked.fill(expression, str::to_string);
        let body = json!({
            "MetricDataQueries": [{
                "Id": "q",
                "Expression": expression,
                "Period": self.period,
                "ReturnData": true
            }],
            "StartTime": start,
            "EndTime": end,
            "ScanBy": "TimestampAscending"
        });
        let answer = self.get_metric_data(body, &ask.budget).await?;
        series_values(&answer)
    }

    async fn one(&self, expression: &str, ask: &Ask, reduce: Reduce) -> Result<f64, ReadError> {
        let values = self.values(expression, ask).await?;
        reduce.apply(&values, "CloudWatch returned no datapoint in the window")
    }
}

/// The window `from`..`to` (ms) as GetMetricData is asked it: both ends in epoch
/// seconds rounded down to a multiple of `period`.
///
/// CloudWatch answers in whole periods and rounds `StartTime` down to a boundary
/// itself (to the minute for periods of a minute or more, to the period's division
/// of the minute below that). Asked the raw window, consecutive windows would share
/// the period each boundary falls in, and its events would be counted twice. Aligned,
/// each window ends where the next begins, and every period is read once: the one a
/// window's end falls in is left whole to the next window. The first window thus
/// reads from the boundary before the interval began (up to a period before it) to
/// the last boundary before it ends.
fn aligned(from: rampart_core::Millis, to: rampart_core::Millis, period: u32) -> (u64, u64) {
    let period = u64::from(period.max(1));
    let down = |ms: rampart_core::Millis| ms / 1000 / period * period;
    (down(from), down(to))
}

/// CloudWatch's 400 that means "slow down": `Throttling` (or
/// `ThrottlingException`) in the error's `__type`.
fn throttled(status: u16, body: &str) -> bool {
    if status != 400 {
        return false;
    }
    let Ok(error) = serde_json::from_str::<Value>(body) else {
        return false;
    };
    let kind = error["__type"].as_str().unwrap_or_default();
    let kind = kind.rsplit('#').next().unwrap_or(kind);
    matches!(kind, "Throttling" | "ThrottlingException")
}

/// Whether a `Messages` list says the request matched more metrics than CloudWatch
/// reads at once (`Maximum number of allowed metrics exceeded`).
fn too_many_metrics(list: &Value) -> bool {
    list.as_array().into_iter().flatten().any(|m| {
        let code = m["Code"].as_str().unwrap_or_default().to_ascii_lowercase();
        let value = m["Value"].as_str().unwrap_or_default().to_ascii_lowercase();
        code.contains("maxmetrics") || value.contains("maximum number of allowed metrics")
    })
}

/// The refusal of an expression that matches more metrics than one request reads:
/// every window would read part of them, so it fails the pre-release check.
fn too_many(said: &str) -> ReadError {
    ReadError::Refused {
        provider: NAME,
        why: format!(
            "the expression matches more metrics than CloudWatch reads in one request, and a sum of part of them undercounts; narrow its SEARCH (more dimensions, a fixed metric name){said}"
        ),
    }
}

/// `: message; message` from a `Messages` list, or nothing.
fn messages(list: &Value) -> String {
    let all: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["Value"].as_str())
        .collect();
    if all.is_empty() {
        String::new()
    } else {
        format!(": {}", all.join("; "))
    }
}

/// The values of the one result that has any, oldest first.
fn series_values(answer: &Value) -> Result<Vec<f64>, ReadError> {
    if answer.get("NextToken").is_some_and(|t| !t.is_null()) {
        return Err(ReadError::Other(
            "CloudWatch split the answer into pages: the expression gives far more datapoints than one window holds; aggregate it to one series".into(),
        ));
    }
    let results = answer["MetricDataResults"]
        .as_array()
        .ok_or_else(|| ReadError::Empty("CloudWatch returned no results".into()))?;
    let with_data: Vec<&Value> = results
        .iter()
        .filter(|r| r["Values"].as_array().is_some_and(|v| !v.is_empty()))
        .collect();
    match with_data.as_slice() {
        [] => Err(ReadError::Empty(
            "CloudWatch returned no datapoint in the window".into(),
        )),
        [one] => Ok(one["Values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(number)
            .collect()),
        many => Err(ReadError::ManySeries(many.len())),
    }
}

impl QueryProvider for CloudWatch {
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

    /// The credentials' secrets as they are now, and those of every set they replaced.
    fn secrets(&self) -> Vec<Secret> {
        let mut all: Vec<Secret> = self
            .credentials()
            .iter()
            .flat_map(|c| c.secrets().into_iter().cloned())
            .collect();
        if let Ok(retired) = self.retired.lock() {
            all.extend(retired.iter().cloned());
        }
        all
    }

    /// A GetMetricData for a metric nobody publishes, over the last five minutes: it
    /// costs nothing, and only answers 200 to a valid signature made with keys allowed
    /// `cloudwatch:GetMetricData`.
    fn check(&self) -> BoxFuture<'_, Result<String, ReadError>> {
        Box::pin(async move {
            let credentials = self.credentials()?;
            let end = self.clock.now() / 1000 / 60 * 60;
            let body = json!({
                "MetricDataQueries": [{
                    "Id": "check",
                    "MetricStat": {
                        "Metric": {"Namespace": "rampart/check", "MetricName": "check"},
                        "Period": 60,
                        "Stat": "Sum"
                    },
                    "ReturnData": true
                }],
                "StartTime": end.saturating_sub(300),
                "EndTime": end
            });
            // A check has no interval to wait in: throttling here is a failed check.
            let answer = self
                .get_metric_data(body, &super::Budget::new(Default::default()))
                .await?;
            if !answer["MetricDataResults"].is_array() {
                return Err(ReadError::Other(format!(
                    "CloudWatch at {} did not answer GetMetricData",
                    self.url
                )));
            }
            Ok(format!(
                "{} ({}) accepts GetMetricData signed with the credentials from {}",
                self.url, self.region, credentials.source
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_become_values_or_no_data() {
        let v = |s: &str| series_values(&serde_json::from_str(s).unwrap());
        assert_eq!(
            v(r#"{"MetricDataResults":[{"Id":"q","Timestamps":[1,2],"Values":[2.0,4.5],"StatusCode":"Complete"}]}"#).ok(),
            Some(vec![2.0, 4.5])
        );
        assert!(matches!(
            v(
                r#"{"MetricDataResults":[{"Id":"q","Timestamps":[],"Values":[],"StatusCode":"Complete"}]}"#
            ),
            Err(ReadError::Empty(_))
        ));
        assert!(matches!(
            v(r#"{"MetricDataResults":[]}"#),
            Err(ReadError::Empty(_))
        ));
        assert!(matches!(v(r#"{}"#), Err(ReadError::Empty(_))));
        assert!(matches!(
            v(r#"{"MetricDataResults":[{"Values":[1]},{"Values":[2]}]}"#),
            Err(ReadError::ManySeries(2))
        ));
        assert!(matches!(
            v(r#"{"MetricDataResults":[{"Values":[1]}],"NextToken":"t"}"#),
            Err(ReadError::Other(_))
        ));
    }

    #[test]
    fn windows_are_aligned_to_the_period_and_never_overlap() {
        // Windows starting 20.5 s into a minute, with a period of 30 s.
        let t = 1_700_000_000_500;
        assert_eq!(aligned(t, t + 30_000, 30), (1_699_999_980, 1_700_000_010));
        assert_eq!(
            aligned(t + 30_000, t + 60_000, 30),
            (1_700_000_010, 1_700_000_040)
        );
        // Shorter than a period: nothing whole to read.
        let (start, end) = aligned(t, t + 5_000, 60);
        assert_eq!(start, end);
        assert_eq!(aligned(0, 60_000, 60), (0, 60));
        // A 1 s period is asked in whole minutes.
        let minute = rampart_core::policy::cloudwatch_alignment(1);
        assert_eq!(
            aligned(t + 5_000, t + 65_000, minute),
            (1_699_999_980, 1_700_000_040)
        );
    }

    #[test]
    fn throttling_is_a_400_with_its_type() {
        assert!(throttled(
            400,
            r#"{"__type":"com.amazonaws.coral.availability#ThrottlingException","message":"Rate exceeded"}"#
        ));
        assert!(throttled(400, r#"{"__type":"Throttling"}"#));
        assert!(!throttled(
            400,
            r#"{"__type":"com.amazon.coral.validate#ValidationException"}"#
        ));
        assert!(!throttled(500, r#"{"__type":"Throttling"}"#));
        assert!(!throttled(400, "Throttling"));
    }
}
