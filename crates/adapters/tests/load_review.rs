//! Adversarial review of rampart's built-in load (`analysis.load`) as the embedded
//! proxy routes it, on loopback.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use http_body_util::{BodyExt, Empty};
use hyper::Request;
use rampart_adapters::proxy::{Proxy, ProxyOptions, VARIANT_HEADER};
use rampart_core::policy::{LOAD_HEADER, Sticky};
use rampart_core::{Variant, Weight};
use std::sync::Arc;
use tokio::sync::Notify;

mod common;

use common::{backend, client};

/// docs/policy.md, *Built-in load*: rampart sends requests itself "so a quiet service
/// can still be judged", "spread over both variants by the sticky header when the
/// policy sticks by one". Under `sticky: client_ip` every load request comes from
/// rampart's one address (rampart/src/load.rs sends no other key), so the proxy puts
/// all of it on one variant (mod.rs `choose`: `sticky_key` of the peer). At a 10 %
/// step the canary usually gets none of it (the quiet canary still has no data and the
/// release halts), and the load dilutes one side only: with `counts: true`, a healthy
/// canary's error rate or latency is compared with a stable side padded with synthetic
/// successes, which a `max_ratio_to_stable` reads as a regression (or, on the canary
/// side, hides one). The load marked as rampart's must reach both variants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_from_one_address_reaches_both_variants_under_client_ip_stickiness() {
    let hold = Arc::new(Notify::new());
    let stable = backend("stable", hold.clone()).await;
    let canary = backend("canary", hold.clone()).await;
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            sticky: Sticky::ClientIp,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[stable]);
    proxy.set_backends(Variant::Canary, &[canary]);
    proxy.set_weight(Weight::from_percent(10).unwrap());
    let addr = server.local_addr();
    let (mut to_stable, mut to_canary) = (0, 0);
    for _ in 0..200 {
        // As `analysis_load` sends it with `counts: true`.
        let req = Request::get(format!("http://{addr}/"))
            .header(LOAD_HEADER, "1")
            .body(Empty::new())
            .unwrap();
        let resp = client().request(req).await.unwrap();
        let variant = resp
            .headers()
            .get(VARIANT_HEADER)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let _ = resp.into_body().collect().await;
        match variant.as_str() {
            "canary" => to_canary += 1,
            _ => to_stable += 1,
        }
    }
    assert!(
        to_canary > 0 && to_stable > 0,
        "all of rampart's load on one variant at 10 %: stable {to_stable}, canary {to_canary}"
    );
}
