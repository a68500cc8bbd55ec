//! The `http` metrics source against a local fake endpoint: the URL filled per
//! variant and window, secrets in headers from the environment, JSON paths, and
//! every way a read fails (credentials refused, 429, an empty series) turned into no
//! data with a detail that never shows the secret.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_provider::{self, Seen, first_reading, policy, source, window};
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

/// Each variant's first request is answered `status` with `Retry-After: secs`: the
/// read waits that long, asks once more, and reads the counts.
async fn waited_out_then_read(status: u16, secs: u64) {
    let (url, seen) = fake_provider::start(Arc::new(move |n, req: &Seen| {
        if n % 2 == 0 {
            (status, vec![("retry-after", secs.to_string())], "{}".into())
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
            waited >= Duration::from_secs(secs) && waited < Duration::from_secs(secs + 1),
            "retried after {waited:?}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_is_waited_out_as_retry_after_asks_then_read() {
    waited_out_then_read(429, 7).await;
}

/// A 503 that says when to come back (`Retry-After`, RFC 9110 15.6.4: a server down
/// for maintenance, a query frontend shedding load) is waited out like a 429, not
/// asked again at once by every later read.
#[tokio::test(start_paused = true)]
async fn a_503_with_retry_after_is_waited_out_like_a_429() {
    waited_out_then_read(503, 5).await;
}

/// A `Retry-After` longer than the interval is no data at once, and the canary's read
/// sends nothing: the server asked for 120 s.
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
    assert!(
        q.detail.contains(
            "canary: the HTTP source is rate limiting (429) and asked not to be asked again for 120s more, longer than the 30s left of the interval (nothing was sent)"
        ),
        "{}",
        q.detail
    );
    assert_eq!(
        seen.lock().unwrap().len(),
        1,
        "stable's request only: no retry, and the canary's read waits its turn"
    );
}

/// Regression (review): a `Retry-After` longer than what was left of the interval was
/// forgotten at once, so the canary's read, the source's other metrics and the next
/// measurement all asked again (8 requests in 30 s against `Retry-After: 120`). The
/// wait holds for every metric on that server, and it ends when it was asked to.
#[tokio::test(start_paused = true)]
async fn a_retry_after_past_the_interval_holds_for_every_read_until_it_is_over() {
    let (url, seen) = fake_provider::start(Arc::new(|n, req: &Seen| {
        if n == 0 {
            (429, vec![("retry-after", "120".to_string())], "{}".into())
        } else {
            counts(n, req)
        }
    }))
    .await;
    let p = policy(&format!(
        r#"  interval: 30s
  metrics:
    - name: errors
      source: http
      url: "{url}/stats/{{variant}}?m=1"
      headers: {{Authorization: "Bearer {{env:STATS_TOKEN}}"}}
      bad: $.counts.errors
      total: $.counts.requests
      judge: sequential
    - name: errors-again
      source: http
      url: "{url}/other/{{variant}}?m=2"
      headers: {{Authorization: "Bearer {{env:STATS_TOKEN}}"}}
      bad: $.counts.errors
      total: $.counts.requests
      judge: sequential
"#
    ));
    let s = source(&p, &[("STATS_TOKEN", TOKEN)]);
    // Measurements at 0, 30 and 60 s: each read has 30 s, and the wait is longer.
    for _ in 0..3 {
        let sample = s.measure(&window()).await.unwrap();
        assert!(sample.queries.iter().all(|q| q.canary.is_none()));
        tokio::time::sleep(Duration::from_secs(30)).await;
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "nothing more sent");
    // 120 s on, every metric is read again.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let sample = s.measure(&window()).await.unwrap();
    for q in &sample.queries {
        assert_eq!((q.stable, q.canary), (Some(1.0), Some(9.0)), "{}", q.detail);
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 5);
    assert!(seen[1].at - seen[0].at >= Duration::from_secs(120));
}

/// A wait asked for that fits in what is left of the interval is waited out by the
/// next read, which then sends (the canary is not left without data by the stable
/// read's last 429).
#[tokio::test(start_paused = true)]
async fn the_next_read_waits_out_a_wait_that_fits_in_the_interval() {
    // Stable's three attempts are rate limited; the last asks for 5 s.
    let (url, seen) = fake_provider::start(Arc::new(|n, req: &Seen| {
        if n < 3 {
            (429, vec![("retry-after", "5".to_string())], "{}".into())
        } else {
            counts(n, req)
        }
    }))
    .await;
    let s = source(&counts_policy(&url), &[("STATS_TOKEN", TOKEN)]);
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert_eq!((q.stable, q.canary), (None, Some(9.0)), "{}", q.detail);
    assert!(q.detail.contains("after 3 attempts"), "{}", q.detail);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4);
    assert!(seen[3].at - seen[2].at >= Duration::from_secs(5));
}

/// Regression (review): a `Retry-After` given as an HTTP date (RFC 9110 10.2.3) was
/// taken for none, and the server asked again after 1 s.
#[tokio::test(start_paused = true)]
async fn a_retry_after_as_an_http_date_is_waited_until_that_date() {
    // 20 s after the test clock's start (2023-11-14T22:14:00Z).
    let (url, seen) = fake_provider::start(Arc::new(|n, req: &Seen| {
        if n == 0 {
            let date = "Tue, 14 Nov 2023 22:14:20 GMT".to_string();
            (429, vec![("retry-after", date)], "{}".into())
        } else {
            counts(n, req)
        }
    }))
    .await;
    let s = source(&counts_policy(&url), &[("STATS_TOKEN", TOKEN)]);
    let q = s.measure(&window()).await.unwrap().queries.remove(0);
    assert_eq!((q.stable, q.canary), (Some(1.0), Some(9.0)), "{}", q.detail);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one retry");
    let waited = seen[1].at - seen[0].at;
    assert!(
        waited >= Duration::from_secs(20) && waited < Duration::from_secs(21),
        "retried after {waited:?}"
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
    let q = first_reading(&p, &[]).await;
    assert_eq!((q.stable, q.canary), (None, None));
    assert_eq!(
        q.detail,
        "stable: nothing at `$.series[0].value` in the answer (it is null); canary: nothing at `$.series[0].value` in the answer (`$.series` has 0 items, no [0])"
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
    let q = first_reading(&p, &[]).await;
    assert_eq!(
        q.detail,
        "stable: `\"fast\"` is not a number; canary: the HTTP source answered with something that is not JSON"
    );
}

/// Regression (review): `{interval}` was always the analysis interval, so a query
/// reading back from the window's end (PromQL's `increase(...[{interval}])`) counted
/// again time a shorter window (the first after a restart starts where the last one
/// read ended) leaves out; and a window with no time in it (a clock behind the last
/// window read) was asked anyway.
#[tokio::test]
async fn interval_is_the_window_and_an_empty_window_asks_nothing() {
    let (url, seen) = fake_provider::start(Arc::new(counts)).await;
    let p = policy(&format!(
        "  interval: 30s\n  metrics:\n    - {{name: errors, source: http, url: '{url}/stats/{{variant}}?over={{interval}}', headers: {{Authorization: 'Bearer {{env:STATS_TOKEN}}'}}, bad: $.counts.errors, total: $.counts.requests, judge: sequential}}\n"
    ));
    let s = source(&p, &[("STATS_TOKEN", TOKEN)]);
    let short = rampart_core::release::MeasureWindow {
        from: window().to - 12_500,
        ..window()
    };
    // Longer than the interval (a slow measurement before it, a late tick): the
    // whole window, or its first seconds are never counted.
    let long = rampart_core::release::MeasureWindow {
        from: window().to - 41_900,
        ..window()
    };
    s.measure(&short).await.unwrap();
    s.measure(&window()).await.unwrap();
    s.measure(&long).await.unwrap();
    let targets: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.target.clone())
        .collect();
    assert_eq!(
        targets,
        vec![
            "/stats/stable?over=12s",
            "/stats/canary?over=12s",
            "/stats/stable?over=30s",
            "/stats/canary?over=30s",
            "/stats/stable?over=41s",
            "/stats/canary?over=41s",
        ]
    );
    let empty = rampart_core::release::MeasureWindow {
        from: window().to,
        ..window()
    };
    let q = s.measure(&empty).await.unwrap().queries.remove(0);
    assert_eq!((q.stable, q.canary), (None, None));
    assert!(
        q.detail.contains("the window holds no time yet"),
        "{}",
        q.detail
    );
    assert_eq!(seen.lock().unwrap().len(), 6, "nothing asked for it");
}
