//! The `datadog` metrics provider against a local fake of Datadog's metrics query API,
//! following its documented requests and answers: v1 `GET /api/v1/query` (`from` and
//! `to` in seconds, `series[].pointlist`), v2 `POST /api/v2/query/timeseries`
//! (`data.attributes` with `from`/`to` in ms, answered with `series` and `values`),
//! the `DD-API-KEY` and `DD-APPLICATION-KEY` headers, `GET /api/v1/validate`, 403,
//! 429 with `Retry-After`, and empty series.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_provider::{self, Answer, Seen, first_reading, policy, source, window};
use rampart_core::ports::MetricsSource;
use serde_json::{Value, json};

const API_KEY: &str = "dd-api-0f9e8d7c6b5a";
const APP_KEY: &str = "dd-app-1a2b3c4d5e6f";
const KEYS: &[(&str, &str)] = &[("DD_API_KEY", API_KEY), ("DD_APP_KEY", APP_KEY)];

fn keyed(req: &Seen) -> bool {
    req.header("dd-api-key") == API_KEY && req.header("dd-application-key") == APP_KEY
}

/// Datadog v1 as documented: errors and requests per variant, tagged `variant:`.
fn v1(_: usize, req: &Seen) -> Answer {
    if req.target.starts_with("/api/v1/validate") {
        let ok = req.header("dd-api-key") == API_KEY;
        return if ok {
            (200, vec![], r#"{"valid": true}"#.into())
        } else {
            (403, vec![], r#"{"errors": ["Forbidden"]}"#.into())
        };
    }
    if req.method != "GET" || !req.target.starts_with("/api/v1/query?") || !keyed(req) {
        return (403, vec![], r#"{"errors": ["Forbidden"]}"#.into());
    }
    let query = req.param("query").unwrap();
    let canary = query.contains("variant:canary");
    let points: Vec<Value> = match (query.starts_with("sum:errors"), canary) {
        (true, true) => vec![json!([1, 4.0]), json!([2, null]), json!([3, 5.0])],
        (true, false) => vec![json!([1, 1.0]), json!([3, 0.0])],
        (false, _) => vec![json!([1, 100.0]), json!([3, 200.0])],
    };
    let body = json!({
        "status": "ok", "res_type": "time_series", "query": query,
        "from_date": 1_700_000_000_000_u64, "to_date": 1_700_000_030_000_u64,
        "series": [{"pointlist": points, "scope": "variant", "aggr": "sum"}]
    });
    (200, vec![], body.to_string())
}

fn counts_policy(url: &str, api: &str) -> rampart_core::Policy {
    policy(&format!(
        r#"  interval: 30s
  datadog: {{site: datadoghq.eu, url: "{url}", api: {api}}}
  metrics:
    - name: errors
      source: datadog
      bad: 'sum:errors{{service:{{service}},variant:{{variant}},version:{{version}}}}.as_count()'
      total: 'sum:requests{{service:{{service}},variant:{{variant}}}}.as_count()'
      judge: sequential
"#
    ))
}

#[tokio::test]
async fn v1_counts_are_the_sums_of_the_points_in_the_window() {
    let (url, seen) = fake_provider::start(Arc::new(v1)).await;
    let s = source(&counts_policy(&url, "v1"), KEYS);
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert_eq!(
        (q.stable, q.stable_samples, q.canary, q.canary_samples),
        (Some(1.0), Some(300.0), Some(9.0), Some(300.0)),
        "{}",
        q.detail
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert_eq!(
        seen[0].param("query").as_deref(),
        Some("sum:errors{service:shop,variant:stable,version:v1}.as_count()")
    );
    assert_eq!(seen[0].param("from").as_deref(), Some("1700000000"));
    assert_eq!(seen[0].param("to").as_deref(), Some("1700000030"));
    assert!(seen.iter().all(keyed), "both keys on every request");
    let gates = s.check().await;
    assert!(gates[0].ok, "{gates:?}");
    assert_eq!(gates[0].name, "metrics source datadog");
}

#[tokio::test]
async fn a_v1_value_is_the_last_point_or_with_range_the_mean() {
    let (url, _) = fake_provider::start(Arc::new(v1)).await;
    for (range, want) in [("false", 200.0), ("true", 150.0)] {
        let p = policy(&format!(
            "  datadog: {{url: '{url}'}}\n  metrics:\n    - {{name: rps, source: datadog, query: 'sum:requests{{variant:{{variant}}}}', range: {range}, judge: {{min: 1}}}}\n"
        ));
        let q = first_reading(&p, KEYS).await;
        assert_eq!(
            (q.stable, q.canary),
            (Some(want), Some(want)),
            "{}",
            q.detail
        );
    }
}

#[tokio::test]
async fn v2_posts_a_timeseries_request_and_reads_its_values() {
    let (url, seen) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let body: Value = serde_json::from_str(&req.body).unwrap_or_default();
        let a = &body["data"]["attributes"];
        let documented = req.method == "POST"
            && req.target == "/api/v2/query/timeseries"
            && req.header("content-type") == "application/json"
            && body["data"]["type"] == "timeseries_request"
            && a["from"] == 1_700_000_000_000_u64
            && a["to"] == 1_700_000_030_000_u64
            && a["queries"][0]["data_source"] == "metrics"
            && a["queries"][0]["name"] == "a"
            && a["formulas"][0]["formula"] == "a";
        if !documented || !keyed(req) {
            return (400, vec![], r#"{"errors": ["bad request"]}"#.into());
        }
        let query = a["queries"][0]["query"].as_str().unwrap();
        let values = if query.contains("variant:canary") {
            json!([[null, 0.4, 0.2]])
        } else {
            json!([[0.1, 0.1, null]])
        };
        let answer = json!({"data": {"type": "timeseries_response", "attributes": {
            "series": [{"group_tags": [], "query_index": 0, "unit": null}],
            "times": [1_700_000_000_000_u64, 1_700_000_010_000_u64, 1_700_000_020_000_u64],
            "values": values
        }}});
        (200, vec![], answer.to_string())
    }))
    .await;
    let p = policy(&format!(
        "  datadog: {{url: '{url}', api: v2}}\n  metrics:\n    - {{name: ratio, source: datadog, query: 'avg:errors.ratio{{variant:{{variant}}}}', range: true, judge: {{max: 0.5}}}}\n"
    ));
    let q = first_reading(&p, KEYS).await;
    assert_eq!(q.detail, "");
    assert!((q.stable.unwrap() - 0.1).abs() < 1e-9 && (q.canary.unwrap() - 0.3).abs() < 1e-9);
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[tokio::test]
async fn empty_series_are_no_data_in_both_apis() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let body = if req.method == "GET" {
            r#"{"status": "ok", "series": []}"#
        } else {
            r#"{"data": {"type": "timeseries_response", "attributes": {"series": [], "times": [], "values": []}}}"#
        };
        (200, vec![], body.into())
    }))
    .await;
    for api in ["v1", "v2"] {
        let q = first_reading(&counts_policy(&url, api), KEYS).await;
        assert_eq!((q.stable, q.canary, q.canary_samples), (None, None, None));
        assert!(
            q.detail
                .contains("empty series: Datadog returned no series"),
            "{}",
            q.detail
        );
    }
}

/// Regression (review): Datadog documents a v2 failure's `errors` at the top of the
/// body, beside `data`; read from `data.attributes` only, its message was lost and the
/// interval said "returned no series". What it says is scrubbed like an error.
#[tokio::test]
async fn a_v2_error_is_read_where_datadog_puts_it_and_scrubbed() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let answer = json!({
            "data": {"type": "timeseries_response", "attributes": {"series": [], "times": [], "values": []}},
            "errors": format!("Error parsing query: unknown metric 'sum:errors'; key {}", req.header("dd-application-key"))
        });
        (200, vec![], answer.to_string())
    }))
    .await;
    let q = first_reading(&counts_policy(&url, "v2"), KEYS).await;
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail.contains(
            "stable: Datadog: Error parsing query: unknown metric 'sum:errors'; key <$DD_APP_KEY>"
        ),
        "{}",
        q.detail
    );
    assert!(!q.detail.contains("no series"), "{}", q.detail);
    assert!(!q.detail.contains(APP_KEY), "{}", q.detail);
}

#[tokio::test]
async fn refused_keys_are_no_data_and_fail_the_check_and_never_show() {
    // The fake echoes the keys it got, as a careless proxy might.
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let echo = format!(
            "{} {}",
            req.header("dd-api-key"),
            req.header("dd-application-key")
        );
        (
            403,
            vec![],
            json!({"errors": [format!("Forbidden: {echo}")]}).to_string(),
        )
    }))
    .await;
    let s = source(&counts_policy(&url, "v1"), KEYS);
    let sample = s.measure(&window()).await.unwrap();
    let q = &sample.queries[0];
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail.contains("Datadog refused the credentials (403)"),
        "{}",
        q.detail
    );
    let gates = s.check().await;
    assert!(!gates[0].ok);
    assert!(
        gates[0].detail.contains("refused the credentials (403)"),
        "{gates:?}"
    );
    let everything = format!("{} {gates:?} {sample:?} {s:?}", q.detail);
    for key in [API_KEY, APP_KEY] {
        assert!(!everything.contains(key), "{everything}");
    }
    assert!(everything.contains("<$DD_API_KEY>"), "{everything}");
}

#[tokio::test]
async fn a_missing_key_fails_the_check_by_name_and_sends_nothing() {
    let (url, seen) = fake_provider::start(Arc::new(v1)).await;
    let s = source(&counts_policy(&url, "v1"), &[("DD_API_KEY", API_KEY)]);
    let gates = s.check().await;
    assert!(!gates[0].ok);
    assert!(
        gates[0].detail.contains("DD_APP_KEY is not set"),
        "{gates:?}"
    );
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert!(q.detail.contains("DD_APP_KEY is not set"), "{}", q.detail);
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_its_retry_after_then_reads() {
    let (url, seen) = fake_provider::start(Arc::new(|n, req: &Seen| {
        if n == 0 {
            (
                429,
                vec![("retry-after", "4".to_string())],
                r#"{"errors": ["Rate limit exceeded"]}"#.into(),
            )
        } else {
            v1(n, req)
        }
    }))
    .await;
    let q = first_reading(&counts_policy(&url, "v1"), KEYS).await;
    assert_eq!((q.stable, q.canary), (Some(1.0), Some(9.0)), "{}", q.detail);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5, "one retry");
    assert_eq!(seen[0].target, seen[1].target, "the same request again");
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_secs(4) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
}
