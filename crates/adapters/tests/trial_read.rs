//! The pre-release check and its trial read: a query its source refuses, credentials
//! it turns down, or a source that cannot be reached blocks the release before
//! traffic moves; no data does not (fakes of Prometheus, Datadog, NerdGraph and an
//! `http` endpoint on loopback, answering as each documents its errors).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::fake_provider::{self, Answer, Seen, policy, source};
use rampart_core::ports::MetricsSource;
use serde_json::{Value, json};

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
/// valid query into one its source refuses (a Datadog tag `version:` with no value).
/// Regression (review): then such a query was not tried at all, so a source that
/// refuses it (credentials, syntax) passed. It is tried with a placeholder version.
#[tokio::test]
async fn a_query_naming_the_version_is_tried_with_a_placeholder_version_fake_prometheus() {
    // Refuses an empty version, and has no data for any other.
    let (url, seen) = fake_provider::start(Arc::new(|_, req: &Seen| {
        if req.param("query").unwrap().contains("version=\"\"") {
            return refusing_prometheus()(0, req);
        }
        (
            200,
            vec![],
            r#"{"status":"success","data":{"resultType":"vector","result":[]}}"#.into(),
        )
    }))
    .await;
    let p = policy(&format!(
        "  prometheus: {url}\n  metrics:\n    - {{name: errors, source: prometheus, query: 'sum(rate(http_errors_total{{version=\"{{version}}\"}}[1m]))', judge: {{max: 1}}}}\n"
    ));
    let gates = source(&p, &[]).check().await;
    assert!(gates.iter().all(|g| g.ok), "{gates:?}");
    let asked: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter_map(|r| r.param("query"))
        .collect();
    assert_eq!(
        asked,
        vec![
            "1".to_string(),
            "sum(rate(http_errors_total{version=\"rampart-check\"}[1m]))".to_string()
        ],
        "the check's query, then the trial read's"
    );
}

/// Regression (review): a Datadog application key Datadog refuses passed the gates when
/// the query named `{version}` (as the documented example does): the trial read was
/// skipped, and the release ran with no data on every interval.
#[tokio::test]
async fn a_refused_datadog_application_key_fails_the_pre_release_check() {
    let (url, seen) = fake_provider::start(Arc::new(|_, req: &Seen| -> Answer {
        if req.target.starts_with("/api/v1/validate") {
            return (200, vec![], r#"{"valid": true}"#.into());
        }
        if req.header("dd-application-key") != "app-good" {
            return (403, vec![], r#"{"errors": ["Forbidden"]}"#.into());
        }
        let b = json!({"status": "ok", "series": [{"pointlist": [[1, 3.0]]}]});
        (200, vec![], b.to_string())
    }))
    .await;
    let p = policy(&format!(
        r#"  interval: 30s
  datadog: {{url: "{url}"}}
  metrics:
    - name: errors
      source: datadog
      bad: 'sum:errors{{variant:{{variant}},version:{{version}}}}.as_count()'
      total: 'sum:requests{{variant:{{variant}},version:{{version}}}}.as_count()'
      judge: sequential
"#
    ));
    let env = [("DD_API_KEY", "api-good"), ("DD_APP_KEY", "app-WRONG")];
    let gates = source(&p, &env).check().await;
    let failed: Vec<_> = gates.iter().filter(|g| !g.ok).collect();
    assert_eq!(failed.len(), 1, "{gates:?}");
    assert_eq!(failed[0].name, "metric errors");
    assert!(
        failed[0]
            .detail
            .contains("a trial read was refused: Datadog refused the credentials (403)"),
        "{}",
        failed[0].detail
    );
    assert!(!format!("{gates:?}").contains("app-WRONG"));
    let trial = seen.lock().unwrap()[1].param("query").unwrap();
    assert_eq!(
        trial,
        "sum:errors{variant:stable,version:rampart-check}.as_count()"
    );
    // With the right key the same query passes, though the placeholder has no data.
    let env = [("DD_API_KEY", "api-good"), ("DD_APP_KEY", "app-good")];
    let gates = source(&p, &env).check().await;
    assert!(gates.iter().all(|g| g.ok), "{gates:?}");
}

/// NerdGraph: the account check passes; an NRQL query answers `errors` with a 200.
fn nerdgraph_refusing_nrql(error: Value) -> fake_provider::Responder {
    Arc::new(move |_, req: &Seen| -> Answer {
        let body: Value = serde_json::from_str(&req.body).unwrap();
        if body["query"].as_str().unwrap().contains("{ id }") {
            let a = json!({"data": {"actor": {"account": {"id": 4242}}}});
            return (200, vec![], a.to_string());
        }
        let e = json!({"data": {"actor": {"account": {"nrql": null}}}, "errors": [error]});
        (200, vec![], e.to_string())
    })
}

fn newrelic_policy(url: &str) -> rampart_core::Policy {
    policy(&format!(
        r#"  interval: 30s
  newrelic: {{account_id: 4242, url: "{url}"}}
  metrics:
    - name: errors
      source: newrelic
      bad: "SELECT cuont(*) FROM Transaction WHERE tags.variant = '{{variant}}' AND error IS true"
      total: "SELECT count(*) FROM Transaction WHERE tags.variant = '{{variant}}'"
      judge: sequential
"#
    ))
}

/// Regression (review): NerdGraph answers an NRQL syntax error with a 200 and GraphQL
/// `errors`; that passed the gates, and every interval was no data.
#[tokio::test]
async fn an_nrql_syntax_error_fails_the_pre_release_check() {
    let error = json!({"message": "NRQL Syntax Error: Error at line 1 position 8, unexpected 'cuont' (key NRAK-1)"});
    let (url, _) = fake_provider::start(nerdgraph_refusing_nrql(error)).await;
    let gates = source(&newrelic_policy(&url), &[("NEW_RELIC_API_KEY", "NRAK-1")])
        .check()
        .await;
    let failed: Vec<_> = gates.iter().filter(|g| !g.ok).collect();
    assert_eq!(failed.len(), 1, "{gates:?}");
    assert_eq!(failed[0].name, "metric errors");
    assert_eq!(
        failed[0].detail,
        "a trial read was refused: New Relic: NRQL Syntax Error: Error at line 1 position 8, unexpected 'cuont' (key <$NEW_RELIC_API_KEY>)"
    );
}

/// NerdGraph's time limits and failures on its side come as GraphQL `errors` too: no
/// answer for now, which blocks nothing.
#[tokio::test]
async fn an_nrql_timeout_passes_the_pre_release_check() {
    let error = json!({"message": "NRDB query timed out", "extensions": {"errorClass": "TIMEOUT"}});
    let (url, _) = fake_provider::start(nerdgraph_refusing_nrql(error)).await;
    let gates = source(&newrelic_policy(&url), &[("NEW_RELIC_API_KEY", "NRAK-1")])
        .check()
        .await;
    assert!(gates.iter().all(|g| g.ok), "{gates:?}");
}

/// Regression (review): a metrics source that could not even be connected to (a
/// wrong host or port) passed the gates: traffic moved, then the release halted with
/// the canary serving.
#[tokio::test]
async fn an_unreachable_prometheus_fails_the_pre_release_check() {
    let p = policy(
        r#"  interval: 30s
  prometheus: http://127.0.0.1:1
  metrics:
    - name: errors
      source: prometheus
      bad: 'sum(increase(http_requests_total{track="{variant}",code=~"5.."}[{interval}])) or vector(0)'
      total: 'sum(increase(http_requests_total{track="{variant}"}[{interval}]))'
      judge: sequential
"#,
    );
    let gates = source(&p, &[]).check().await;
    assert_eq!(gates.len(), 1, "{gates:?}");
    assert_eq!(gates[0].name, "metrics source prometheus");
    assert!(!gates[0].ok);
    assert!(
        gates[0]
            .detail
            .starts_with("cannot reach Prometheus at http://127.0.0.1:1: connect 127.0.0.1:1"),
        "{}",
        gates[0].detail
    );
}

/// Regression (review): a Prometheus URL missing its path prefix (every path answers a
/// plain-text 404) and a Prometheus behind an auth proxy (401 or 403; rampart sends no
/// credentials to Prometheus) passed the gates, and every reading was then no data.
/// Each now blocks, naming the server and its status.
#[tokio::test]
async fn a_prometheus_answering_404_text_or_401_fails_the_pre_release_check() {
    for (status, body, says) in [
        (404, "404 page not found\n", "404"),
        (
            401,
            r#"{"status":"error","error":"unauthorized"}"#,
            "refused the credentials (401)",
        ),
        (403, "<html>sign in</html>", "refused the credentials (403)"),
    ] {
        let (url, _) =
            fake_provider::start(Arc::new(move |_, _: &Seen| (status, vec![], body.into()))).await;
        let p = policy(&format!(
            "  prometheus: {url}\n  metrics:\n    - {{name: errors, source: prometheus, query: 'sum(rate(e{{track=\"{{variant}}\"}}[1m]))', judge: {{max: 1}}}}\n"
        ));
        let gates = source(&p, &[]).check().await;
        let failed: Vec<_> = gates.iter().filter(|g| !g.ok).collect();
        assert!(!failed.is_empty(), "{status}: {gates:?}");
        assert!(
            failed.iter().any(|g| g.detail.contains(says)),
            "{status}: {gates:?}"
        );
    }
}

/// The `http` source's check sends nothing; its trial read finds a server that
/// cannot be reached, and names it, not the token.
#[tokio::test]
async fn an_unreachable_http_source_fails_the_pre_release_check() {
    let p = policy(
        "  metrics:\n    - {name: p99, source: http, url: 'http://127.0.0.1:1/p99/{variant}', headers: {Authorization: 'Bearer {env:T}'}, value: $.v, judge: {max: 250}}\n",
    );
    let gates = source(&p, &[("T", "tok-5ecret-8842")]).check().await;
    let failed: Vec<_> = gates.iter().filter(|g| !g.ok).collect();
    assert_eq!(failed.len(), 1, "{gates:?}");
    assert_eq!(failed[0].name, "metric p99");
    assert!(
        failed[0].detail.starts_with(
            "a trial read failed: cannot reach the HTTP source at http://127.0.0.1:1: connect 127.0.0.1:1"
        ),
        "{}",
        failed[0].detail
    );
    assert!(!format!("{gates:?}").contains("tok-5ecret-8842"));
}

/// An `http` URL naming `{version}` is asked for the placeholder, which the server
/// may not know (404): only refused credentials block it.
#[tokio::test]
async fn an_http_url_naming_the_version_blocks_on_refused_credentials_only() {
    let (url, seen) = fake_provider::start(Arc::new(|_, req: &Seen| -> Answer {
        if req.header("authorization") != "Bearer good" {
            return (401, vec![], r#"{"error": "unauthorized"}"#.into());
        }
        (404, vec![], r#"{"error": "no such version"}"#.into())
    }))
    .await;
    let p = policy(&format!(
        "  metrics:\n    - {{name: p99, source: http, url: '{url}/p99/{{version}}', headers: {{Authorization: 'Bearer {{env:T}}'}}, value: $.v, judge: {{max: 250}}}}\n"
    ));
    let gates = source(&p, &[("T", "good")]).check().await;
    assert!(gates.iter().all(|g| g.ok), "{gates:?}");
    assert_eq!(seen.lock().unwrap()[0].target, "/p99/rampart-check");
    let gates = source(&p, &[("T", "bad")]).check().await;
    assert!(
        gates
            .iter()
            .any(|g| !g.ok && g.detail.contains("refused the credentials (401)")),
        "{gates:?}"
    );
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

/// Regression (review): the trial reads ran in turn on one deadline, and the first to
/// use it up ended them all: a misconfigured metric listed after one whose source
/// does not answer passed the gate. They run at once now, each to the deadline.
#[tokio::test]
async fn a_metric_after_one_whose_source_never_answers_is_still_tried() {
    // Accepts connections and never answers them.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((conn, _)) = silent.accept().await {
            open.push(conn);
        }
    });
    let (url, seen) = fake_provider::start(Arc::new(|_, _: &Seen| -> Answer {
        (401, vec![], r#"{"error": "unauthorized"}"#.into())
    }))
    .await;
    let p = policy(&format!(
        "  interval: 1s\n  metrics:\n    - {{name: slow, source: http, url: 'http://{silent_addr}/v/{{variant}}', value: $.v, judge: {{max: 1}}}}\n    - {{name: refused, source: http, url: '{url}/v/{{variant}}', value: $.v, judge: {{max: 1}}}}\n"
    ));
    let gates = source(&p, &[]).check().await;
    held.abort();
    let failed: Vec<_> = gates.iter().filter(|g| !g.ok).collect();
    assert_eq!(failed.len(), 1, "{gates:?}");
    assert_eq!(failed[0].name, "metric refused");
    assert!(
        failed[0].detail.contains("refused the credentials (401)"),
        "{}",
        failed[0].detail
    );
    assert_eq!(seen.lock().unwrap().len(), 1, "the second metric was asked");
}
