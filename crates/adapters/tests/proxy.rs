//! The embedded proxy against real HTTP backends on loopback: weighted split, sticky
//! assignment across weight changes, atomic switches with requests in flight, and the
//! builtin metrics (5xx and connection failures count as errors).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode};
use rampart_adapters::proxy::{BuiltinMetrics, Proxy, ProxyOptions, VARIANT_HEADER};
use rampart_core::metrics::bucket_upper_ms;
use rampart_core::policy::{MatchSource, RouteMatch, Sticky};
use rampart_core::ports::MetricsSource;
use rampart_core::{Variant, Weight};
use tokio::sync::Notify;

mod common;

use common::proxy_to;

use common::{backend, client};

async fn get(addr: SocketAddr, path: &str, user: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let resp = client()
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let variant = resp
        .headers()
        .get(VARIANT_HEADER)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let _ = resp.into_body().collect().await;
    (status, variant)
}

async fn setup(sticky: Sticky) -> (Proxy, rampart_adapters::proxy::ProxyServer, Arc<Notify>) {
    let hold = Arc::new(Notify::new());
    let stable = backend("stable", hold.clone()).await;
    let canary = backend("canary", hold.clone()).await;
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            sticky,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[stable]);
    proxy.set_backends(Variant::Canary, &[canary]);
    (proxy, server, hold)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_splits_traffic() {
    let (proxy, server, _) = setup(Sticky::None).await;
    let addr = server.local_addr();
    for _ in 0..20 {
        assert_eq!(get(addr, "/", None).await.1, "stable");
    }
    proxy.set_weight(Weight::from_percent(30).unwrap());
    let mut canary = 0;
    for _ in 0..2000 {
        if get(addr, "/", None).await.1 == "canary" {
            canary += 1;
        }
    }
    assert!((520..=680).contains(&canary), "{canary} of 2000 at 30%");
    proxy.set_weight(Weight::FULL);
    for _ in 0..20 {
        assert_eq!(get(addr, "/", None).await.1, "canary");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_stay_on_the_canary_as_the_weight_grows() {
    let (proxy, server, _) = setup(Sticky::Header("x-user".into())).await;
    let addr = server.local_addr();
    proxy.set_weight(Weight::from_percent(10).unwrap());
    let mut on_canary = Vec::new();
    for u in 0..500 {
        let user = format!("user-{u}");
        let first = get(addr, "/", Some(&user)).await.1;
        // The same user gets the same answer every time at a fixed weight.
        assert_eq!(get(addr, "/", Some(&user)).await.1, first);
        if first == "canary" {
            on_canary.push(user);
        }
    }
    assert!(
        (25..=80).contains(&on_canary.len()),
        "{} of 500 at 10%",
        on_canary.len()
    );
    proxy.set_weight(Weight::from_percent(50).unwrap());
    for user in &on_canary {
        assert_eq!(
            get(addr, "/", Some(user)).await.1,
            "canary",
            "{user} moved back to stable"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weight_change_is_atomic_and_keeps_requests_in_flight() {
    let (proxy, server, hold) = setup(Sticky::None).await;
    let addr = server.local_addr();
    proxy.set_weight(Weight::FULL);
    let in_flight = tokio::spawn(get(addr, "/hold", None));
    // Wait (without sleeping) until the held request is inside the canary.
    while proxy.in_flight(Variant::Canary) == 0 {
        tokio::task::yield_now().await;
    }
    proxy.set_weight(Weight::ZERO);
    let routed_before = proxy.routed(Variant::Canary);
    for _ in 0..50 {
        assert_eq!(get(addr, "/", None).await.1, "stable");
    }
    assert_eq!(
        proxy.routed(Variant::Canary),
        routed_before,
        "nothing new reached the canary"
    );
    let draining = tokio::spawn({
        let proxy = proxy.clone();
        async move { proxy.drain(Variant::Canary, Duration::from_secs(30)).await }
    });
    hold.notify_one();
    let (status, variant) = in_flight.await.unwrap();
    assert_eq!(
        (status, variant.as_str()),
        (StatusCode::OK, "canary"),
        "the in-flight request completed"
    );
    assert!(
        draining.await.unwrap(),
        "drain finished once the request completed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builtin_metrics_count_5xx_and_connection_failures_per_variant() {
    let (proxy, server, _) = setup(Sticky::None).await;
    let addr = server.local_addr();
    let metrics = BuiltinMetrics::new(proxy.clone());
    for _ in 0..10 {
        get(addr, "/", None).await;
    }
    for _ in 0..5 {
        assert_eq!(
            get(addr, "/fail", None).await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
    let s = metrics.measure(&any_window()).await.unwrap();
    assert_eq!((s.stable.requests, s.stable.errors), (15, 5));
    assert_eq!(s.stable.latency.count(), 15);
    assert_eq!(s.stable.latency_total.count(), 15, "every body was sent");
    assert_eq!(s.canary.requests, 0);

    // A canary that is not listening: every request is a 502 and an error.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    proxy.set_backends(Variant::Canary, &[dead]);
    proxy.set_weight(Weight::FULL);
    for _ in 0..4 {
        assert_eq!(get(addr, "/", None).await.0, StatusCode::BAD_GATEWAY);
    }
    let s = metrics.measure(&any_window()).await.unwrap();
    assert_eq!(
        (s.canary.requests, s.canary.errors),
        (4, 4),
        "deltas since the last measure"
    );
    // Regression (review): the proxy timed its own 502s, where nginx and HAProxy log
    // no time for a request no version answered (docs/policy.md: neither latency).
    assert_eq!(
        (s.canary.latency.count(), s.canary.latency_total.count()),
        (0, 0),
        "no version answered: in neither latency"
    );
    assert_eq!(s.stable.requests, 0);
}

/// A window that starts afresh (a new step after an approval wait) reads none of what
/// was counted before it, from the proxy in the controller's process and from a data
/// plane over its socket alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_opened_counts_from_its_start() {
    use rampart_adapters::proxy::admin::{AdminServer, PlaneHooks};
    use rampart_adapters::proxy::remote::RemotePlane;
    let (proxy, server, _) = setup(Sticky::None).await;
    let addr = server.local_addr();
    let dir = tempfile::tempdir().unwrap();
    let (socket, token_file) = (dir.path().join("svc.sock"), dir.path().join("svc.token"));
    let token = "window-token-0123456789abcdef";
    std::fs::write(&token_file, token).unwrap();
    let telemetry = Arc::new(rampart_adapters::telemetry::Telemetry::new(
        "svc",
        Arc::new(proxy.clone()),
    ));
    let admin = AdminServer::bind_unix(
        &socket,
        proxy.clone(),
        token.to_string(),
        telemetry,
        PlaneHooks::default(),
    )
    .await
    .unwrap();
    let remote = RemotePlane::attach(&socket, &token_file).await.unwrap();
    let local = BuiltinMetrics::new(proxy.clone());
    // Both read once, as a controller does at the window before.
    remote.measure(&any_window()).await.unwrap();
    local.measure(&any_window()).await.unwrap();
    for _ in 0..7 {
        get(addr, "/", None).await; // the wait: no window's
    }
    remote.open_window(0).await;
    local.open_window(0).await;
    for _ in 0..3 {
        get(addr, "/", None).await;
    }
    for source in [&remote as &dyn MetricsSource, &local] {
        let s = source.measure(&any_window()).await.unwrap();
        assert_eq!(
            s.stable.requests, 3,
            "the time before the window was counted"
        );
    }
    admin.close().await;
}

/// Issue 21: the time to headers stays the version's own time while the total time
/// (`latency_total_*`) includes a body that comes in a later write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_time_includes_a_body_sent_after_the_headers() {
    let delay = Duration::from_millis(200);
    let (proxy, server) = proxy_to(common::slow_body_backend("stable", delay).await).await;
    let metrics = BuiltinMetrics::new(proxy.clone());
    for _ in 0..5 {
        let (status, body) = common::get_body(server.local_addr(), "/", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "stable"));
    }
    let s = metrics.measure(&any_window()).await.unwrap().stable;
    assert_eq!(
        (s.requests, s.latency.count(), s.latency_total.count()),
        (5, 5, 5)
    );
    let (slowest_headers, _) = s.latency.buckets().last().unwrap();
    let (fastest_total, _) = s.latency_total.buckets().next().unwrap();
    assert!(
        bucket_upper_ms(slowest_headers) < 200.0,
        "the headers came before the body's delay: {:?}",
        s.latency
    );
    assert!(
        bucket_upper_ms(fastest_total) >= 200.0,
        "every total time includes the 200 ms body: {:?}",
        s.latency_total
    );
}

/// A client that hangs up before the body arrives: the request is still timed, once
/// the proxy is done with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_time_is_recorded_when_the_client_goes_away_mid_body() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The body is sent only when the test says so: after the client went away.
    let release = Arc::new(Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn({
        let release = release.clone();
        async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
                .await;
            release.notified().await;
            let _ = stream.write_all(b"stable").await;
        }
    });
    let (proxy, server) = proxy_to(backend).await;
    let mut conn = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed before the headers");
        head.extend_from_slice(&buf[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let t = proxy.totals().stable;
    assert_eq!(
        (t.latency.count(), t.latency_total.count()),
        (1, 0),
        "headers timed; the body is still on its way"
    );
    drop(conn);
    release.notify_one();
    common::until("the total time", async || {
        proxy.totals().stable.latency_total.count() == 1
    })
    .await;
}

/// A request is in flight until its answer's body is done, not only until its headers:
/// a drain (before a version is stopped) waits for a body still on its way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_waits_for_an_answer_whose_body_is_still_on_its_way() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The body is sent only when the test says so.
    let release = Arc::new(Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend = listener.local_addr().unwrap();
    tokio::spawn({
        let release = release.clone();
        async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf).await;
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n")
                .await;
            release.notified().await;
            let _ = stream.write_all(b"stable").await;
            let _ = stream.read(&mut buf).await;
        }
    });
    let (proxy, server) = proxy_to(backend).await;
    let mut conn = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed before the headers");
        answer.extend_from_slice(&buf[..n]);
    }
    assert_eq!(
        proxy.in_flight(Variant::Stable),
        1,
        "in flight while its body is on its way"
    );
    let drains = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            let timeout = Duration::from_secs(10);
            let endpoints = [backend];
            tokio::join!(
                proxy.drain(Variant::Stable, timeout),
                proxy.drain_endpoints(&endpoints, timeout)
            )
        }
    });
    release.notify_one();
    while !answer.ends_with(b"stable") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed before the body's end");
        answer.extend_from_slice(&buf[..n]);
    }
    assert_eq!(drains.await.unwrap(), (true, true));
    assert_eq!(proxy.in_flight(Variant::Stable), 0);
}

/// An upstream that promises a 100-byte body and closes after 3 bytes.
async fn truncating_backend() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nabc")
                    .await;
            });
        }
    });
    addr
}

/// A body that breaks off upstream ends the request: it is timed then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn total_time_is_recorded_when_the_upstream_body_breaks_off() {
    let (proxy, server) = proxy_to(truncating_backend().await).await;
    let req = Request::get(format!("http://{}/", server.local_addr()))
        .body(Empty::new())
        .unwrap();
    // The client sees the answer cut short: its head and a broken body, or (when the
    // whole break arrives before the head is flushed) a connection closed mid-answer.
    if let Ok(resp) = client().request(req).await {
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(
            resp.into_body().collect().await.is_err(),
            "the client sees the body cut short"
        );
    }
    let t = proxy.totals().stable;
    assert_eq!((t.latency.count(), t.latency_total.count()), (1, 1));
}

async fn get_with(addr: SocketAddr, headers: &[(&str, &str)]) -> String {
    let mut req = Request::get(format!("http://{addr}/"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client()
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    resp.headers()
        .get(VARIANT_HEADER)
        .unwrap()
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_rules_send_internal_users_and_allowlisted_ids_to_the_canary() {
    let (proxy, server, _) = setup(Sticky::Header("x-user".into())).await;
    let addr = server.local_addr();
    let internal = RouteMatch {
        source: MatchSource::Header("x-internal-user".into()),
        values: vec![],
    };
    let allowlist = RouteMatch {
        source: MatchSource::Cookie("uid".into()),
        values: vec!["alice".into(), "bob".into()],
    };
    proxy.set_route(Weight::ZERO, &[internal.clone(), allowlist]);
    assert_eq!(
        get_with(addr, &[("x-internal-user", "yes")]).await,
        "canary"
    );
    assert_eq!(
        get_with(addr, &[("cookie", "theme=dark; uid=bob")]).await,
        "canary"
    );
    assert_eq!(get_with(addr, &[("cookie", "uid=mallory")]).await, "stable");
    assert_eq!(get_with(addr, &[("x-user", "someone")]).await, "stable");
    // Alongside a weight, the rules still hold; clearing them leaves only the weight.
    proxy.set_route(Weight::from_percent(5).unwrap(), &[internal]);
    assert_eq!(get_with(addr, &[("x-internal-user", "1")]).await, "canary");
    proxy.set_route(Weight::ZERO, &[]);
    assert_eq!(get_with(addr, &[("x-internal-user", "1")]).await, "stable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_backends_means_503_not_a_hang() {
    let (_proxy, server) = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
        .await
        .unwrap();
    assert_eq!(
        get(server.local_addr(), "/", None).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

/// A server running many releases binds the same address for the next release of a
/// service as soon as one ends: keep-alive clients must be let go (or they would keep
/// talking to a proxy whose backends are stopped) and the address must be free.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_frees_the_address_and_lets_keep_alive_clients_go() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_proxy, server, _) = setup(Sticky::None).await;
    let addr = server.local_addr();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = conn.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );
    server.close().await;
    let (_again, server2) = Proxy::bind(addr, ProxyOptions::default())
        .await
        .expect("the address is free at once");
    // The kept-alive connection is closed by the old proxy (EOF), not left serving.
    let eof = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf)).await;
    assert!(matches!(eof, Ok(Ok(0))), "{eof:?}");
    drop(server2);
}

/// A window for counting sources, which report what they counted since the previous
/// call whatever the window says.
fn any_window() -> rampart_core::release::MeasureWindow {
    rampart_core::release::MeasureWindow {
        from: 0,
        to: 0,
        stable: Some("v1".into()),
        canary: "v2".into(),
    }
}

/// A backend that answers each request with the value of its `x-rampart-load` header
/// (`-` without one), keep-alive.
async fn load_echo_backend() -> SocketAddr {
    let app = axum::Router::new().fallback(|headers: hyper::HeaderMap| async move {
        headers
            .get("x-rampart-load")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// `GET /` with `x-rampart-load: mark` (none when `None`): the body.
async fn get_marked(addr: SocketAddr, mark: Option<&str>) -> String {
    let mut req = Request::get(format!("http://{addr}/"));
    if let Some(m) = mark {
        req = req.header("x-rampart-load", m);
    }
    let resp = common::client()
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// rampart's own load with `counts: false` carries the data plane's token: routed as
/// any request, counted in no metric, and the service sees `1`, never the token. Any
/// other value (a client guessing, or copying rampart's `1`) counts like a user's
/// request and reaches the service unmarked (review: a client's own `1` looked like
/// rampart's load to the service).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_marked_with_the_token_is_served_but_not_counted() {
    let (proxy, server) = proxy_to(load_echo_backend().await).await;
    let addr = server.local_addr();
    let token = Proxy::fresh_token().unwrap();
    proxy.set_uncounted(&token);
    for _ in 0..5 {
        assert_eq!(get_marked(addr, Some(&token)).await, "1");
    }
    assert_eq!(
        proxy.totals().stable.requests,
        0,
        "the load counted in nothing"
    );
    assert_eq!(get_marked(addr, Some("1")).await, "-");
    assert_eq!(get_marked(addr, Some("guess")).await, "-");
    assert_eq!(get_marked(addr, None).await, "-");
    assert_eq!(proxy.totals().stable.requests, 3, "everything else counts");
    assert_eq!(proxy.table().uncounted, token, "saved with the routes");
    // Without a token set, nothing is left out.
    proxy.set_uncounted("");
    assert_eq!(get_marked(addr, Some(&token)).await, token);
    assert_eq!(proxy.totals().stable.requests, 4);
}

/// Review (issue 18): a client that gives up on a version that does not answer was
/// counted nowhere, so a canary that hangs past its callers' patience showed neither
/// errors nor latency. It counts as a request, with its wait as its latency (a lower
/// bound), as abandoned, and not as an error (no deadline was stated).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_its_client_abandons_counts_with_its_wait_and_no_error() {
    use tokio::io::AsyncWriteExt;

    let release = Arc::new(Notify::new());
    let (canary, held) = common::holding_backend("canary", release.clone()).await;
    let (proxy, server) = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
        .await
        .unwrap();
    proxy.set_backends(Variant::Canary, &[canary]);
    proxy.set_weight(Weight::FULL);

    let mut client = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    client
        .write_all(b"GET /hold HTTP/1.1\r\nhost: svc.test\r\n\r\n")
        .await
        .unwrap();
    common::until("the version holds the request", async || {
        held.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    let waited = Duration::from_millis(150);
    // Time passing is what is measured here, not a wait for an event.
    tokio::time::sleep(waited).await;
    drop(client);
    common::until("the request counted as abandoned", async || {
        proxy.abandoned(Variant::Canary) == 1
    })
    .await;
    let c = proxy.totals().canary;
    assert_eq!((c.requests, c.errors), (1, 0));
    assert_eq!((c.latency.count(), c.latency_total.count()), (1, 1));
    let bucket = c.latency.quantile_bucket(0.5).unwrap();
    assert!(
        bucket_upper_ms(bucket) >= waited.as_secs_f64() * 1000.0,
        "its latency is at least its wait: bucket up to {} ms",
        bucket_upper_ms(bucket)
    );
    assert_eq!(proxy.abandoned(Variant::Stable), 0);
    // The version's answer, once it comes, changes nothing.
    release.notify_waiters();
    assert_eq!(proxy.totals().canary.requests, 1);
}

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
    let (proxy, server, _) = setup(Sticky::ClientIp).await;
    proxy.set_weight(Weight::from_percent(10).unwrap());
    let addr = server.local_addr();
    let (mut to_stable, mut to_canary) = (0, 0);
    for _ in 0..200 {
        // As `analysis_load` sends it with `counts: true`.
        let req = Request::get(format!("http://{addr}/"))
            .header(rampart_core::policy::LOAD_HEADER, "1")
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
