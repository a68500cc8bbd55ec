//! Review 5 of the metrics providers: partial answers read as whole counts, and
//! histogram buckets whose extrapolated counts lose requests to rounding. Fakes bind
//! 127.0.0.1 only; nothing sleeps.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;

use common::fake_provider::{self, Seen, first_reading, policy};
use rampart_core::policy::BucketUnit;
use serde_json::json;

/// The Prometheus HTTP API documents `warnings` beside `data` ("Only set if there were
/// warnings while executing the request. There will still be data in the data
/// field."). Thanos, Cortex and Mimir, the query frontends docs/adapters.md names, answer
/// a query some stores could not serve with `status: success`, the sum of what the
/// others held, and a warning (`partial_response`). A canary's `bad` count summed over
/// part of its series undercounts its errors; the providers' own rule (CloudWatch's
/// `PartialData`, "a sum of part of the window would undercount") makes such an answer
/// no data. Here the canary's 40 errors of 1000 read as 4 and the canary passes
/// `max: 1%`.
#[tokio::test]
async fn a_prometheus_partial_response_is_no_data_not_an_undercount() {
    let (url, _) = fake_provider::start(Arc::new(|_, req: &Seen| {
        let q = req.param("query").unwrap_or_default();
        let (value, warnings) = match (q.contains("canary"), q.starts_with("bad")) {
            (true, true) => (
                "4",
                json!(["partial response: store 10.0.3.7:10901 (eu-west-1b) unavailable: rpc error: code = Unavailable"]),
            ),
            (true, false) => ("1000", json!(null)),
            (false, true) => ("2", json!(null)),
            (false, false) => ("9000", json!(null)),
        };
        let mut body = json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [1_700_000_030, value]}]}});
        if !warnings.is_null() {
            body["warnings"] = warnings;
        }
        (200, vec![], body.to_string())
    }))
    .await;
    let p = policy(&format!(
        "  interval: 30s\n  prometheus: {url}\n  metrics:\n    - {{name: errors, source: prometheus, bad: 'bad{{track=\"{{variant}}\"}}', total: 'total{{track=\"{{variant}}\"}}', judge: {{max: 1%}}}}\n"
    ));
    let spec = p.analysis.metrics[0].clone();
    let rampart_core::policy::Judge::Threshold(t) = spec.judge else {
        panic!("{:?}", spec.judge)
    };
    let q = first_reading(&p, &[]).await;
    let sample = rampart_core::metrics::IntervalSample {
        queries: vec![q.clone()],
        ..Default::default()
    };
    let r = rampart_core::judge::threshold(&spec, &t, &sample);
    assert!(
        q.canary.is_none(),
        "a partial response (warnings) was read as the canary's whole count: {q:?}; judged {:?}: {}",
        r.verdict,
        r.detail
    );
}

/// `increase` extrapolates each bucket's series (and each pod's, under `sum by (le)`)
/// on its own, so cumulative counts come back fractional. docs/policy.md: "the
/// buckets' total is the variant's request count" and "`increase`'s extrapolated
/// counts are rounded". Rounding each bucket's own share (the difference with the
/// bucket below) instead of the cumulative counts drops every share under one half:
/// here the `+Inf` bucket says 52 requests, the histogram holds 50, and the two
/// slowest (over 1 s, and beyond 10 s) are counted nowhere.
#[test]
fn rounding_extrapolated_buckets_loses_no_request() {
    let data = json!({"resultType": "vector", "result": [
        {"metric": {"le": "0.1"}, "value": [1, "50.4"]},
        {"metric": {"le": "1"}, "value": [1, "50.8"]},
        {"metric": {"le": "5"}, "value": [1, "51.2"]},
        {"metric": {"le": "10"}, "value": [1, "51.6"]},
        {"metric": {"le": "+Inf"}, "value": [1, "52.0"]}
    ]});
    let h = rampart_adapters::prometheus::histogram_of(&data, BucketUnit::Seconds).unwrap();
    assert_eq!(
        h.count(),
        52,
        "the +Inf bucket counts 52 requests, the histogram {}: {:?}",
        h.count(),
        h.buckets().collect::<Vec<_>>()
    );
}
