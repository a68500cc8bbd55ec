//! Review of the feature flags' contract at the adapter level: the users the flag
//! endpoint answers "on" for are exactly the users the proxy sends to (and measures
//! as) the canary, for every sticky key and at every weight a release puts in force.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart_adapters::clock::TokioClock;
use rampart_adapters::flags::{FlagRouter, FlagServer};
use rampart_adapters::proxy::{Proxy, ProxyOptions, ProxyServer};
use rampart_adapters::store::StateStore;
use rampart_core::flags::{FlagDef, bucket};
use rampart_core::policy::Sticky;
use rampart_core::ports::{FlagStore, TrafficRouter};
use rampart_core::{Variant, Weight};
use tokio::net::TcpListener;

mod common;

use common::client;

const FLAG: &str = "new-checkout";

/// A backend that answers `NAME XFF`: its name, and the `X-Forwarded-For` the proxy
/// sent it (what an application behind the proxy reads as its client's address).
async fn echo_backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .map(|v| v.to_str().unwrap().to_string())
                        .unwrap_or_default();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!(
                        "{name} {xff}"
                    )))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A proxy on `listen` stuck by `sticky` in front of a stable and a canary backend,
/// ramping `FLAG` (defined with `allow`) through a [`FlagRouter`], as `rampart run`
/// builds it for `strategy.canary.flag`; and the flag endpoint on the same store.
async fn flagged(
    listen: &str,
    sticky: Sticky,
    allow: &[&str],
) -> (Proxy, ProxyServer, FlagRouter, FlagServer) {
    let store: Arc<dyn FlagStore> = Arc::new(StateStore::in_memory().await.unwrap());
    store
        .define(
            "shop",
            &[FlagDef {
                name: FLAG.into(),
                default: false,
                allow: allow.iter().map(|a| a.to_string()).collect(),
            }],
            0,
        )
        .await
        .unwrap();
    let (proxy, server) = Proxy::bind(
        listen.parse().unwrap(),
        ProxyOptions {
            sticky: sticky.clone(),
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[echo_backend("stable").await]);
    proxy.set_backends(Variant::Canary, &[echo_backend("canary").await]);
    proxy.set_salt(FLAG);
    let router = FlagRouter::new(
        Arc::new(proxy.clone()),
        store.clone(),
        Arc::new(TokioClock::starting_at(0)),
        "shop",
        FLAG,
        false,
        sticky,
    );
    let endpoint = FlagServer::bind("127.0.0.1:0".parse().unwrap(), store, "shop")
        .await
        .unwrap();
    (proxy, server, router, endpoint)
}

/// `GET /` through the proxy at `addr` with `header` if given: the backend's answer,
/// `NAME XFF`.
async fn through(addr: SocketAddr, header: Option<(&str, &str)>) -> (String, String) {
    let mut req = Request::get(format!("http://{addr}/"));
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let resp = client()
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body).into_owned();
    let (name, xff) = text.split_once(' ').unwrap();
    (name.to_string(), xff.to_string())
}

/// What the flag endpoint answers for `key`: `(on, reason)`.
async fn endpoint_says(endpoint: &FlagServer, key: &str) -> (bool, String) {
    let (status, body) = rampart_adapters::http::get_text(
        &format!("http://{}/flags/{FLAG}?key={key}", endpoint.local_addr()),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    (
        v["on"].as_bool().unwrap(),
        v["reason"].as_str().unwrap().to_string(),
    )
}

/// Under `sticky: client-ip`, the application can only learn its client's address from
/// the `X-Forwarded-For` the proxy writes, and asks the flag endpoint with it. The proxy
/// writes an IPv4 client seen on a dual-stack (IPv6) listener as plain IPv4
/// (`127.0.0.1`), but hashes the sticky key as `peer.ip().to_string()`, i.e.
/// `::ffff:127.0.0.1`: another bucket, so the proxy's cohort and the endpoint's answer
/// disagree for every IPv4 client of a `listen: "[::]:8080"` proxy.
///
/// The ramp is put exactly between the two buckets, so one side says "on" and the
/// other "stable"; expected: the proxy sends the client to the canary iff the endpoint,
/// asked with the forwarded address, says "on".
#[tokio::test]
async fn an_ipv4_client_of_a_dual_stack_listener_is_hashed_as_it_is_forwarded() {
    let (v4, mapped) = (
        bucket(FLAG, b"127.0.0.1"),
        bucket(FLAG, b"::ffff:127.0.0.1"),
    );
    assert_ne!(v4, mapped);
    // Loopback only: the IPv4-mapped loopback address on an IPv6 socket.
    let (_proxy, server, router, endpoint) =
        flagged("[::ffff:127.0.0.1]:0", Sticky::ClientIp, &[]).await;
    let ramp = v4.max(mapped);
    router
        .set_weight(Weight::from_basis_points(ramp).unwrap(), &[])
        .await
        .unwrap();
    let port = server.local_addr().port();
    let (served_by, xff) = through(SocketAddr::from(([127, 0, 0, 1], port)), None).await;
    assert_eq!(xff, "127.0.0.1", "the application's view of its client");
    let (on, _) = endpoint_says(&endpoint, &xff).await;
    assert_eq!(
        served_by == "canary",
        on,
        "the endpoint says the flag is {} for {xff} (bucket {v4}, ramp {ramp}); the proxy served it from {served_by} (bucket of ::ffff:127.0.0.1: {mapped})",
        if on { "on" } else { "off" }
    );
}

/// A first step at weight 0 sends only its `match` (the team's own testers) to the
/// canary. The flag's allowlist (`qa-1`) has the flag on at every weight, so the
/// endpoint tells `qa-1`'s application "on"; the proxy added the allowlist's rule only
/// above 0 %, so `qa-1` was served and measured as stable while its application ran
/// the new feature. Expected: `qa-1` goes to the canary at that step too; and a
/// rollback (weight 0, no match) sends everyone, `qa-1` included, back to stable.
#[tokio::test]
async fn an_allowlisted_user_is_the_canarys_at_a_weight_0_step_and_stables_after_a_rollback() {
    use rampart_core::policy::{MatchSource, RouteMatch};
    let (_proxy, server, router, endpoint) =
        flagged("127.0.0.1:0", Sticky::Header("x-user".into()), &["qa-1"]).await;
    let testers = RouteMatch {
        source: MatchSource::Header("x-team".into()),
        values: vec!["checkout".into()],
    };
    router
        .set_weight(Weight::ZERO, std::slice::from_ref(&testers))
        .await
        .unwrap();
    let addr = server.local_addr();
    let (tester, _) = through(addr, Some(("x-team", "checkout"))).await;
    assert_eq!(tester, "canary", "the step's match");
    let (on, reason) = endpoint_says(&endpoint, "qa-1").await;
    assert!(on, "{reason}");
    let (qa, _) = through(addr, Some(("x-user", "qa-1"))).await;
    assert_eq!(
        qa, "canary",
        "the endpoint says the flag is on for qa-1 ({reason}); the proxy served it from {qa}"
    );
    let (someone, _) = through(addr, Some(("x-user", "someone"))).await;
    assert_eq!(someone, "stable");
    // A rollback: weight 0 and no match.
    router.set_weight(Weight::ZERO, &[]).await.unwrap();
    let (qa, _) = through(addr, Some(("x-user", "qa-1"))).await;
    assert_eq!(qa, "stable", "after the rollback");
}
