//! The `newrelic` metrics provider against a local fake of NerdGraph, following New
//! Relic's documented request and answer: `POST /graphql` with the `API-Key` header and
//! a JSON body `{query, variables}`, answered with
//! `data.actor.account.nrql.results`; GraphQL `errors`, 401, 429 with `Retry-After`,
//! and empty results.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_provider::{self, Answer, Seen, first_reading, policy, source, window};
use rampart_core::ports::MetricsSource;
use serde_json::{Value, json};

const KEY: &str = "NRAK-7Q2W9E4R1T6Y3U8I";
const ENV: &[(&str, &str)] = &[("NEW_RELIC_API_KEY", KEY)];

/// NerdGraph as documented: counts by variant for account 4242 and this key.
fn nerdgraph(_: usize, req: &Seen) -> Answer {
    if req.method != "POST" || req.target != "/graphql" {
        return (404, vec![], "{}".into());
    }
    if req.header("api-key") != KEY {
        return (
            401,
            vec![],
            json!({"errors": [{"message": "Invalid API key"}]}).to_string(),
        );
    }
    let body: Value = serde_json::from_str(&req.body).unwrap();
    if body["variables"]["id"] != 4242 {
        let e = json!({"data": {"actor": {"account": null}}, "errors": [{"message": "Account not found"}]});
        return (200, vec![], e.to_string());
    }
    let query = body["query"].as_str().unwrap();
    if query.contains("{ id }") {
        return (
            200,
            vec![],
            json!({"data": {"actor": {"account": {"id": 4242}}}}).to_string(),
        );
    }
    let nrql = body["variables"]["nrql"].as_str().unwrap();
    let results = if nrql.contains("error IS true") {
        if nrql.contains("'canary'") {
            json!([{"count": 12}])
        } else {
            json!([{"count": 2}])
        }
    } else {
        json!([{"count": 400}])
    };
    let answer = json!({"data": {"actor": {"account": {"nrql": {"results": results}}}}});
    (200, vec![], answer.to_string())
}

fn counts_policy(url: &str, account: u64) -> rampart_core::Policy {
    policy(&format!(
        r#"  interval: 30s
  newrelic: {{account_id: {account}, region: eu, url: "{url}"}}
  metrics:
    - name: errors
      source: newrelic
      bad: "SELECT count(*) FROM Transaction WHERE appName = '{{service}}' AND tags.variant = '{{variant}}' AND error IS true"
      total: "SELECT count(*) FROM Transaction WHERE appName = '{{service}}' AND tags.variant = '{{variant}}'"
      judge: sequential
"#
    ))
}

#[tokio::test]
async fn nrql_counts_run_in_the_window_through_nerdgraph() {
    let (url, seen) = fake_provider::start(Arc::new(nerdgraph)).await;
    let s = source(&counts_policy(&url, 4242), ENV);
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert_eq!(
        (q.stable, q.stable_samples, q.canary, q.canary_samples),
        (Some(2.0), Some(400.0), Some(12.0), Some(400.0)),
        "{}",
        q.detail
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    let body: Value = serde_json::from_str(&seen[0].body).unwrap();
    assert_eq!(
        body["variables"]["nrql"],
        "SELECT count(*) FROM Transaction WHERE appName = 'shop' AND tags.variant = 'stable' AND error IS true\nSINCE 1700000000000 UNTIL 1700000030000"
    );
    assert!(
        body["query"]
            .as_str()
            .unwrap()
            .contains("nrql(query: $nrql) { results }")
    );
    assert_eq!(seen[0].header("content-type"), "application/json");
    let gates = s.check().await;
    assert!(gates[0].ok, "{gates:?}");
    assert_eq!(gates[0].name, "metrics source newrelic");
}

#[tokio::test]
async fn graphql_errors_and_empty_results_are_no_data() {
    let (url, _) = fake_provider::start(Arc::new(nerdgraph)).await;
    // An account the key cannot see: NerdGraph's `errors` with a 200.
    let s = source(&counts_policy(&url, 7), ENV);
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail.contains("New Relic: Account not found"),
        "{}",
        q.detail
    );
    assert!(!s.check().await[0].ok);
    let (url, _) = fake_provider::start(Arc::new(|_, _: &Seen| {
        (
            200,
            vec![],
            json!({"data": {"actor": {"account": {"nrql": {"results": []}}}}}).to_string(),
        )
    }))
    .await;
    let q = first_reading(&counts_policy(&url, 4242), ENV).await;
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail
            .contains("empty series: New Relic returned no results"),
        "{}",
        q.detail
    );
}

#[tokio::test]
async fn a_refused_key_fails_the_check_and_never_shows() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let echo = format!("Invalid API key {}", req.header("api-key"));
        (
            401,
            vec![],
            json!({"errors": [{"message": echo}]}).to_string(),
        )
    }))
    .await;
    let s = source(&counts_policy(&url, 4242), ENV);
    let sample = s.measure(&window()).await.unwrap();
    let gates = s.check().await;
    assert!(!gates[0].ok);
    assert!(
        gates[0]
            .detail
            .contains("New Relic refused the credentials (401)"),
        "{gates:?}"
    );
    let everything = format!("{sample:?} {gates:?} {s:?}");
    assert!(!everything.contains(KEY), "{everything}");
    assert!(everything.contains("<$NEW_RELIC_API_KEY>"), "{everything}");
    let missing = source(&counts_policy(&url, 4242), &[]);
    let gates = missing.check().await;
    assert!(
        gates[0].detail.contains("NEW_RELIC_API_KEY is not set"),
        "{gates:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_waits_its_retry_after_then_reads() {
    let (url, seen) = fake_provider::start(Arc::new(|n, req: &Seen| {
        if n == 1 {
            (429, vec![("retry-after", "3".to_string())], "{}".into())
        } else {
            nerdgraph(n, req)
        }
    }))
    .await;
    let q = first_reading(&counts_policy(&url, 4242), ENV).await;
    assert_eq!(
        (q.stable_samples, q.canary),
        (Some(400.0), Some(12.0)),
        "{}",
        q.detail
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    let waited = seen[2].at - seen[1].at;
    assert!(
        waited >= Duration::from_secs(3) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

/// Regression (review): the window went on the query's last line, so after a trailing
/// `--` or `//` comment it was part of the comment and NRQL read its default hour; and
/// a `since` in a comment was taken for the query's own window, so none was added.
#[tokio::test]
async fn a_comment_ending_the_nrql_neither_swallows_nor_replaces_the_window() {
    let (url, seen) = fake_provider::start(Arc::new(nerdgraph)).await;
    let p = policy(&format!(
        r#"  interval: 30s
  newrelic: {{account_id: 4242, url: "{url}"}}
  metrics:
    - name: errors
      source: newrelic
      bad: "SELECT count(*) FROM Transaction WHERE tags.variant = '{{variant}}' AND error IS true -- 5xx only"
      total: "SELECT count(*) FROM Transaction WHERE tags.variant = '{{variant}}' // counted since the v2 cutover"
      judge: sequential
"#
    ));
    let q = first_reading(&p, ENV).await;
    assert_eq!(
        (q.stable, q.canary),
        (Some(2.0), Some(12.0)),
        "{}",
        q.detail
    );
    let sent: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| {
            let b: Value = serde_json::from_str(&r.body).unwrap();
            b["variables"]["nrql"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        sent[0],
        "SELECT count(*) FROM Transaction WHERE tags.variant = 'stable' AND error IS true -- 5xx only\nSINCE 1700000000000 UNTIL 1700000030000"
    );
    assert_eq!(
        sent[1],
        "SELECT count(*) FROM Transaction WHERE tags.variant = 'stable' // counted since the v2 cutover\nSINCE 1700000000000 UNTIL 1700000030000"
    );
}
