#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the metrics providers (Datadog, New Relic, CloudWatch, the
//! `http` and `command` sources, Prometheus through the same seam). Each test failed
//! on the code it was written against and names the contract it holds the code to.
//! Fakes bind 127.0.0.1 only (the shared `fake_provider`); no sleeps, no wall clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_provider::{self, Seen, first_reading, policy, source};
use rampart_core::ports::MetricsSource;
use serde_json::json;

const AWS_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "AKIARAMPARTREVIEW0001"),
    (
        "AWS_SECRET_ACCESS_KEY",
        "reviewSecret/0123456789abcdefEXAMPLEKEY",
    ),
];

fn prometheus_policy(url: &str) -> rampart_core::Policy {
    policy(&format!(
        "  prometheus: {url}\n  metrics:\n    - {{name: errors, source: prometheus, query: 'sum(rate(e{{track=\"{{variant}}\"}}[1m]))', judge: {{max: 1}}}}\n"
    ))
}

/// The `http` source's redirect blocks the gate (rampart follows none, so every read
/// would be no data), but a Prometheus URL that redirects (`http://` moved to
/// `https://`, an auth proxy sending to its login page) is read as `NotJson { 301 }`,
/// which `read_error` maps to `ReadError::Other`: not a misconfiguration, so the trial
/// read passes, the check (only "unreachable" fails it) passes, traffic moves, and
/// every interval is then no data.
#[tokio::test]
async fn a_prometheus_that_redirects_fails_the_pre_release_check() {
    let (url, seen) = fake_provider::start(Arc::new(|_, req: &Seen| {
        (
            301,
            vec![(
                "location",
                format!("https://prometheus.example.test{}", req.target),
            )],
            "<html><body>Moved Permanently</body></html>".into(),
        )
    }))
    .await;
    let gates = source(&prometheus_policy(&url), &[]).check().await;
    assert!(!seen.lock().unwrap().is_empty(), "the server was asked");
    assert!(
        gates.iter().any(|g| !g.ok),
        "a Prometheus that only ever redirects passed every gate: {gates:?}"
    );
}

/// Same for a Prometheus URL that answers 200 with a page (a UI's `index.html`, a
/// login page served with 200): `NotJson { 200 }` is `ReadError::Other` for
/// Prometheus, where every other provider's `NotJson` blocks the trial read.
#[tokio::test]
async fn a_prometheus_answering_a_200_page_fails_the_pre_release_check() {
    let (url, _) = fake_provider::start(Arc::new(|_, _: &Seen| {
        (
            200,
            vec![],
            "<!doctype html><html><body>Sign in</body></html>".into(),
        )
    }))
    .await;
    let gates = source(&prometheus_policy(&url), &[]).check().await;
    assert!(
        gates.iter().any(|g| !g.ok),
        "a Prometheus URL answering an HTML page passed every gate: {gates:?}"
    );
}

fn cloudwatch_counts_policy(url: &str) -> rampart_core::Policy {
    policy(&format!(
        r#"  interval: 30s
  cloudwatch: {{region: eu-west-1, url: "{url}", period: 10, delay: 0s}}
  metrics:
    - name: errors
      source: cloudwatch
      bad: "FILL(SEARCH('{{Shop,Variant}} MetricName=\"Errors\" Variant=\"{{variant}}\"', 'Sum', 10), 0)"
      total: "SELECT SUM(Requests) FROM Shop WHERE Variant = '{{variant}}'"
      judge: sequential
"#
    ))
}

/// AWS documents `StatusCode: PartialData` as "an incomplete set of data points were
/// returned", and that "NextToken is not returned if you are performing a math
/// expression". `series_values` only refuses an answer with a `NextToken`, so a
/// math expression's partial result (here the errors counted in part of the window)
/// is summed as if it were the whole window: a partial series read as a complete
/// count, which under-counts the canary's errors and can pass it.
#[tokio::test]
async fn a_cloudwatch_result_marked_partial_data_is_no_data() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
        let expression = body["MetricDataQueries"][0]["Expression"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let (status, values) = if expression.starts_with("FILL") {
            // Errors: only part of the window came back.
            ("PartialData", json!([1.0]))
        } else {
            ("Complete", json!([100.0, 100.0, 100.0]))
        };
        (
            200,
            vec![],
            json!({"MetricDataResults": [{"Id": "q", "Label": "q", "Timestamps": [1], "Values": values, "StatusCode": status, "Messages": []}], "Messages": []})
                .to_string(),
        )
    }))
    .await;
    let q = first_reading(&cloudwatch_counts_policy(&url), AWS_ENV).await;
    assert_eq!(
        (q.stable, q.canary),
        (None, None),
        "a PartialData result was read as the whole window's count: {q:?}"
    );
    assert!(
        q.detail.to_ascii_lowercase().contains("partial"),
        "{}",
        q.detail
    );
}

/// A result CloudWatch marks `Forbidden` (the keys may not read that data: AWS's
/// `MessageData` documents it for a cross-Region or cross-account read the caller is
/// not allowed) is a refusal of the question itself, like a 403, and no later read
/// will get past it. It is `ReadError::Other`, which `is_misconfiguration` does not
/// count, so the trial read lets the release start; the check passes too (it asks a
/// metric nobody publishes, which is never forbidden).
#[tokio::test]
async fn a_cloudwatch_result_marked_forbidden_fails_the_pre_release_check() {
    let (url, seen) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let body: serde_json::Value = serde_json::from_str(&req.body).unwrap_or_default();
        let id = body["MetricDataQueries"][0]["Id"].as_str().unwrap_or_default();
        let result = if id == "check" {
            json!({"Id": "check", "Label": "check", "Timestamps": [], "Values": [], "StatusCode": "Complete"})
        } else {
            json!({"Id": id, "Label": id, "Timestamps": [], "Values": [], "StatusCode": "Forbidden",
                   "Messages": [{"Code": "Forbidden", "Value": "Authentication too complex to retrieve cross region data"}]})
        };
        (
            200,
            vec![],
            json!({"MetricDataResults": [result], "Messages": []}).to_string(),
        )
    }))
    .await;
    let gates = source(&cloudwatch_counts_policy(&url), AWS_ENV)
        .check()
        .await;
    assert!(seen.lock().unwrap().len() >= 2, "the metric was tried");
    assert!(
        gates.iter().any(|g| !g.ok),
        "a query CloudWatch answers Forbidden passed every gate: {gates:?}"
    );
}

/// A header secret that can never be sent (a value ending in a newline, as a secret
/// written from a file often does) fails every read with "invalid HTTP header value"
/// (`HttpError::Build`, read as `ReadError::Unanswered`). Datadog's and New Relic's
/// checks send their keys and fail; the `http` source's check only looks the variable
/// up, and its trial read's `Unanswered` is no misconfiguration: the gate passes, and
/// every interval of the release is then no data.
#[tokio::test]
async fn an_http_header_secret_that_cannot_be_sent_fails_the_pre_release_check() {
    let (url, _) =
        fake_provider::start(Arc::new(|_, _: &Seen| (200, vec![], r#"{"v": 1}"#.into()))).await;
    let p = policy(&format!(
        "  interval: 30s\n  metrics:\n    - {{name: m, source: http, url: '{url}/stats?track={{variant}}', headers: {{Authorization: 'Bearer {{env:STATS_TOKEN}}'}}, value: $.v, judge: {{max: 5}}}}\n"
    ));
    let env: &[(&str, &str)] = &[("STATS_TOKEN", "tok-review-7731\n")];
    let s = source(&p, env);
    let q = s
        .measure(&fake_provider::window())
        .await
        .unwrap()
        .queries
        .remove(0);
    assert_eq!((q.stable, q.canary), (None, None), "{q:?}");
    let gates = s.check().await;
    assert!(
        gates.iter().any(|g| !g.ok),
        "a header that can never be sent passed every gate: {gates:?}"
    );
    assert!(!format!("{gates:?} {q:?}").contains("tok-review-7731"));
}

/// `Retry-After` is `1*DIGIT` seconds (RFC 9110 10.2.3) with no upper bound. A value
/// past `u64::MAX` fails `parse::<u64>()` and falls to the one-second default: a
/// server asking for an enormous wait is asked again after one second, the least
/// wait there is, where the cap (`MAX_WAIT`) is what any wait beyond it gets.
#[test]
fn a_retry_after_too_large_for_u64_waits_the_cap_not_the_floor() {
    use rampart_adapters::query::fetch::{MAX_WAIT, retry_after};
    let now = 1_445_412_480_000;
    assert_eq!(retry_after(Some("18446744073709551615"), now), MAX_WAIT);
    assert_eq!(
        retry_after(Some("18446744073709551616"), now),
        MAX_WAIT,
        "one more second than u64 holds"
    );
    assert_eq!(
        retry_after(Some("99999999999999999999999999"), now),
        MAX_WAIT
    );
    assert!(retry_after(Some("99999999999999999999999999"), now) > Duration::from_secs(1));
}
