//! The pre-release check's trial read: a query its source refuses blocks the release
//! before traffic moves; no data does not (a fake Prometheus HTTP API on loopback,
//! answering as Prometheus documents its errors).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::fake_provider::{self, Seen, policy, source};
use rampart_core::ports::MetricsSource;

fn prometheus_policy(url: &str) -> rampart_core::Policy {
    policy(&format!(
        "  prometheus: {url}\n  metrics:\n    - {{name: errors, source: prometheus, query: 'sum(rate(http_errors_total{{track=\"{{variant}}\"}}[1m])', judge: {{max: 1}}}}\n"
    ))
}

/// Regression (review): a PromQL syntax error was found only mid-release, as no data
/// on every interval; the pre-release check never asked the query.
#[tokio::test]
async fn a_query_prometheus_cannot_parse_fails_the_pre_release_check_fake_prometheus() {
    let (url, seen) = fake_provider::start(Arc::new(|_, _: &Seen| {
        (
            400,
            vec![],
            r#"{"status":"error","errorType":"bad_data","error":"1:38: parse error: unclosed left parenthesis"}"#.into(),
        )
    }))
    .await;
    let gates = source(&prometheus_policy(&url), &[]).check().await;
    let failed: Vec<_> = gates.iter().filter(|g| !g.ok).collect();
    assert_eq!(failed.len(), 1, "{gates:?}");
    assert_eq!(failed[0].name, "metric errors");
    assert!(
        failed[0].detail.contains("parse error"),
        "{}",
        failed[0].detail
    );
    assert!(!seen.lock().unwrap().is_empty(), "the query was asked");
}

/// A service with no traffic yet has no data: that blocks nothing.
#[tokio::test]
async fn an_empty_answer_passes_the_pre_release_check_fake_prometheus() {
    let (url, _) = fake_provider::start(Arc::new(|_, _: &Seen| {
        (
            200,
            vec![],
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into(),
        )
    }))
    .await;
    let gates = source(&prometheus_policy(&url), &[]).check().await;
    assert!(gates.iter().all(|g| g.ok), "{gates:?}");
}

fn refusing_prometheus() -> fake_provider::Responder {
    Arc::new(|_, _: &Seen| {
        (
            400,
            vec![],
            r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#.into(),
        )
    })
}

/// Regression (review): the trial read asked with an empty `{version}`, which turns a
/// valid query into one its source refuses (a Datadog tag `version:` with no value):
/// such a query is not tried before the release.
#[tokio::test]
async fn a_query_naming_the_version_is_not_tried_before_the_release_fake_prometheus() {
    let (url, seen) = fake_provider::start(refusing_prometheus()).await;
    let p = policy(&format!(
        "  prometheus: {url}\n  metrics:\n    - {{name: errors, source: prometheus, query: 'sum(rate(http_errors_total{{version=\"{{version}}\"}}[1m]))', judge: {{max: 1}}}}\n"
    ));
    let gates = source(&p, &[]).check().await;
    assert!(gates.iter().all(|g| g.ok), "{gates:?}");
    assert!(seen.lock().unwrap().is_empty(), "nothing was asked");
}

/// Regression (review): a bucket query's errors were untyped, so one Prometheus
/// cannot parse passed the pre-release check.
#[tokio::test]
async fn a_bucket_query_prometheus_cannot_parse_fails_the_pre_release_check_fake_prometheus() {
    let (url, _) = fake_provider::start(refusing_prometheus()).await;
    let p = policy(&format!(
        "  prometheus: {url}\n  metrics:\n    - {{name: p99, source: prometheus, metric: latency_p99, buckets: 'sum by (le) (increase(d_bucket{{track=\"{{variant}}\"}}[1m])', judge: sequential}}\n"
    ));
    let gates = source(&p, &[]).check().await;
    assert!(
        gates.iter().any(|g| !g.ok && g.name == "metric p99"),
        "{gates:?}"
    );
}
