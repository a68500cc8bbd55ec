//! The `http` metrics source against a local fake endpoint: the URL filled per
//! variant and window, secrets in headers from the environment, JSON paths, and
//! every way a read fails (credentials refused, 429, an empty series) turned into no
//! data with a detail that never shows the secret.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_provider::{self, Seen, policy, source, window};
use rampart_core::ports::MetricsSource;

const TOKEN: &str = "tok-5ecret-8842";

fn counts_policy(url: &str) -> rampart_core::Policy {
    policy(&format!(
        r#"  interval: 30s
  metrics:
    - name: errors
      source: http
      url: "{url}/stats/{{service}}/{{variant}}?version={{version}}&from={{from}}&to={{to}}"
      headers: {{Authorization: "Bearer {{env:STATS_TOKEN}}", X-Team: payments}}
      bad: $.counts.errors
      total: $.counts["requests"]
      judge: sequential
"#
    ))
}

/// Counts by variant for a request that carries the token; 401 otherwise.
fn counts(_: usize, req: &Seen) -> fake_provider::Answer {
    if req.header("authorization") != format!("Bearer {TOKEN}") {
        return (401, vec![], r#"{"error": "unauthorized"}"#.into());
    }
    let errors = if req.target.contains("/canary?") {
        9
    } else {
        1
    };
    (
        200,
        vec![],
        format!(r#"{{"counts": {{"errors": {errors}, "requests": "300"}}}}"#),
    )
}

#[tokio::test]
async fn counts_are_read_from_the_json_with_the_secret_header_and_the_window() {
    let (url, seen) = fake_provider::start(Arc::new(counts)).await;
    let p = counts_policy(&url);
    let s = source(&p, &[("STATS_TOKEN", TOKEN)]);
    let sample = s.measure(&window()).await.unwrap();
    let q = &sample.queries[0];
    assert_eq!(
        (q.stable, q.stable_samples, q.canary, q.canary_samples),
        (Some(1.0), Some(300.0), Some(9.0), Some(300.0)),
        "{}",
        q.detail
    );
    let seen = seen.lock().unwrap().clone();
    let targets: Vec<&str> = seen.iter().map(|r| r.target.as_str()).collect();
    assert_eq!(
        targets,
        vec![
            "/stats/shop/stable?version=v1&from=1700000000&to=1700000030",
            "/stats/shop/canary?version=v2&from=1700000000&to=1700000030",
        ],
        "one GET per variant, placeholders filled"
    );
    assert!(
        seen.iter()
            .all(|r| r.method == "GET" && r.header("x-team") == "payments")
    );
    let gates = s.check().await;
    assert!(gates.iter().all(|g| g.ok), "{gates:?}");
}

#[tokio::test]
async fn refused_credentials_are_no_data_and_the_secret_shows_nowhere() {
    // The fake echoes the header it got, as a careless server might.
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        (
            403,
            vec![],
            format!(
                r#"{{"error": "bad token {}"}}"#,
                req.header("authorization")
            ),
        )
    }))
    .await;
    let p = counts_policy(&url);
    let s = source(&p, &[("STATS_TOKEN", TOKEN)]);
    let sample = s.measure(&window()).await.unwrap();
    let q = &sample.queries[0];
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail.contains("refused the credentials (403)"),
        "{}",
        q.detail
    );
    assert!(
        q.detail.contains("<$STATS_TOKEN>"),
        "scrubbed: {}",
        q.detail
    );
    let everything = format!(
        "{} {:?} {:?} {}",
        q.detail,
        sample,
        s,
        serde_json::to_string(&sample).unwrap()
    );
    assert!(!everything.contains(TOKEN), "{everything}");
}

/// Regression (review): a 2xx answer holding an object where the number belongs put
/// that JSON, with the header the server echoed, into the detail unscrubbed; the
/// detail reaches the audit trail and the API.
#[tokio::test]
async fn a_2xx_echo_of_the_header_secret_is_scrubbed_from_the_detail() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let body = serde_json::json!({"v": {"echo": req.header("authorization")}, "n": "x"});
        (200, vec![], body.to_string())
    }))
    .await;
    let p = policy(&format!(
        "  metrics:\n    - {{name: m, source: http, url: '{url}/{{variant}}', headers: {{Authorization: 'Bearer {{env:STATS_TOKEN}}'}}, value: $.v, judge: {{max: 1}}}}\n"
    ));
    let sample = source(&p, &[("STATS_TOKEN", TOKEN)])
        .measure(&window())
        .await
        .unwrap();
    let q = &sample.queries[0];
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail
            .contains(r#"`{"echo":"Bearer <$STATS_TOKEN>"}` is not a number"#),
        "{}",
        q.detail
    );
    let everything = format!("{} {sample:?}", q.detail);
    assert!(!everything.contains(TOKEN), "{everything}");
}

#[tokio::test]
async fn a_missing_secret_fails_the_pre_release_check_and_every_reading() {
    let (url, seen) = fake_provider::start(Arc::new(counts)).await;
    let p = counts_policy(&url);
    let s = source(&p, &[]);
    let gates = s.check().await;
    assert_eq!(gates.len(), 1);
    assert!(!gates[0].ok);
    assert_eq!(gates[0].name, "metrics source http");
    assert!(
        gates[0].detail.contains("STATS_TOKEN is not set"),
        "{gates:?}"
    );
    let sample = s.measure(&window()).await.unwrap();
    assert_eq!(sample.queries[0].canary, None);
    assert!(
        seen.lock().unwrap().is_empty(),
        "nothing is sent without the secret"
    );
}

#[tokio::test(start_paused = true)]
async fn a_429_is_waited_out_as_retry_after_asks_then_read() {
    // Each variant's first request is rate limited for 7 s.
    let (url, seen) = fake_provider::start(Arc::new(|n, req: &Seen| {
        if n % 2 == 0 {
            (429, vec![("retry-after", "7".to_string())], "{}".into())
        } else {
            counts(n, req)
        }
    }))
    .await;
    let p = counts_policy(&url);
    let s = source(&p, &[("STATS_TOKEN", TOKEN)]);
    let sample = s.measure(&window()).await.unwrap();
    let q = &sample.queries[0];
    assert_eq!((q.stable, q.canary), (Some(1.0), Some(9.0)), "{}", q.detail);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "one retry per variant");
    for pair in seen.chunks(2) {
        let waited = pair[1].at - pair[0].at;
        assert!(
            waited >= Duration::from_secs(7) && waited < Duration::from_secs(8),
            "retried after {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_longer_than_the_interval_is_no_data_without_hammering() {
    let (url, seen) = fake_provider::start(Arc::new(|_, _: &Seen| {
        (429, vec![("retry-after", "120".to_string())], "{}".into())
    }))
    .await;
    let p = counts_policy(&url);
    let s = source(&p, &[("STATS_TOKEN", TOKEN)]);
    let sample = s.measure(&window()).await.unwrap();
    let q = &sample.queries[0];
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail
            .contains("rate limiting (429) and asks to wait 120s, more than the 30s left"),
        "{}",
        q.detail
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        2,
        "one request per variant, no retry"
    );
}

#[tokio::test(start_paused = true)]
async fn a_provider_that_keeps_rate_limiting_gets_three_requests_per_read() {
    let (url, seen) = fake_provider::start(Arc::new(|_, _: &Seen| {
        (429, vec![("retry-after", "1".to_string())], "{}".into())
    }))
    .await;
    let s = source(&counts_policy(&url), &[("STATS_TOKEN", TOKEN)]);
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert_eq!(q.canary, None);
    assert!(q.detail.contains("after 3 attempts"), "{}", q.detail);
    assert_eq!(seen.lock().unwrap().len(), 6);
}

#[tokio::test]
async fn an_empty_series_or_a_null_is_no_data_never_a_pass() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let body = if req.target.contains("canary") {
            r#"{"series": []}"#
        } else {
            r#"{"series": [{"value": null}]}"#
        };
        (200, vec![], body.into())
    }))
    .await;
    let p = policy(&format!(
        "  metrics:\n    - {{name: p99, source: http, url: '{url}/{{variant}}', value: '$.series[0].value', judge: {{max: 250}}}}\n"
    ));
    let q = source(&p, &[])
        .measure(&window())
        .await
        .unwrap()
        .queries
        .remove(0);
    assert_eq!((q.stable, q.canary), (None, None));
    assert_eq!(
        q.detail,
        "stable: nothing at `$.series[0].value` in the answer; canary: nothing at `$.series[0].value` in the answer"
    );
}

#[tokio::test]
async fn an_answer_that_is_not_json_or_not_a_number_is_no_data() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let body = if req.target.contains("canary") {
            "<html>bad gateway</html>"
        } else {
            r#"{"v": "fast"}"#
        };
        (200, vec![], body.into())
    }))
    .await;
    let p = policy(&format!(
        "  metrics:\n    - {{name: p99, source: http, url: '{url}/{{variant}}', value: $.v, judge: {{max: 250}}}}\n"
    ));
    let q = source(&p, &[])
        .measure(&window())
        .await
        .unwrap()
        .queries
        .remove(0);
    assert_eq!(
        q.detail,
        "stable: `\"fast\"` is not a number; canary: the HTTP source answered with something that is not JSON"
    );
}
