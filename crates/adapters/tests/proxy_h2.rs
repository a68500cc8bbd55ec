//! HTTP/2 through the embedded proxy, with real sockets on loopback (issue 18): h2c
//! clients with prior knowledge on the plain listener, served by HTTP/1.1 versions and
//! by h2c versions (`upstream_protocol: h2c`); weights and stickiness per stream;
//! gRPC calls counted by their `grpc-status` at their end; and the limits as HTTP/2
//! answers them (too many streams, an oversize header block, an idle or silent
//! connection, the drain's GOAWAY) without harming the connection's other streams; and
//! h2c versions that rotate their connections (a graceful GOAWAY) or refuse streams,
//! charged nothing for it. (HTTP/2 over TLS through ALPN is in `proxy_tls.rs`, beside
//! its certificates.)
//!
//! Where the proxy's own framing is what is tested, the client writes HTTP/2 frames by
//! hand: hyper's client would queue a stream over the limit rather than send it. Where
//! a version's is, the version does: a GOAWAY or a refusal then comes exactly when
//! the test says.
//! Nothing waits for a fixed time: every wait is for an event, within a deadline.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_adapters::proxy::{Proxy, ProxyOptions, ProxyServer, VARIANT_HEADER};
use rampart_core::policy::{MatchSource, ProxyLimits, RouteMatch, Sticky, UpstreamProtocol};
use rampart_core::{Variant, Weight};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use common::{holding_backend, until};

/// The longest any test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(10);

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An h2c connection with prior knowledge to `addr`.
async fn h2c(addr: SocketAddr) -> Sender {
    common::h2c(addr).await
}

/// `GET path` on `send`: the status, the variant and the body.
async fn get(send: &Sender, path: &str, user: Option<&str>) -> (StatusCode, String, String) {
    let mut req = Request::get(format!("http://svc.test{path}"));
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let resp = tokio::time::timeout(
        PATIENCE,
        send.clone()
            .send_request(req.body(Full::default()).unwrap()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    let status = resp.status();
    let variant = variant_of(resp.headers());
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, variant, String::from_utf8_lossy(&body).into_owned())
}

fn variant_of(h: &HeaderMap) -> String {
    h.get(VARIANT_HEADER)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

async fn proxy(options: ProxyOptions) -> (Proxy, ProxyServer) {
    Proxy::bind("127.0.0.1:0".parse().unwrap(), options)
        .await
        .unwrap()
}

// === versions ===

/// A body given frame by frame: data, then trailers, or an error in their place, the
/// last of them after `hold` when given; `dropped` is told when the server lets go of
/// it.
struct Scripted {
    frames: VecDeque<Frame<Bytes>>,
    hold: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    fail: bool,
    dropped: Option<Arc<Notify>>,
}

impl Body for Scripted {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        let last = if this.fail { 0 } else { 1 };
        if this.frames.len() <= last
            && let Some(hold) = &mut this.hold
        {
            std::task::ready!(hold.as_mut().poll(cx));
            this.hold = None;
        }
        match this.frames.pop_front() {
            Some(f) => Poll::Ready(Some(Ok(f))),
            None if this.fail => {
                this.fail = false;
                Poll::Ready(Some(Err(std::io::Error::other("broken off"))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty() && !self.fail && self.hold.is_none()
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        if let Some(d) = &self.dropped {
            d.notify_one();
        }
    }
}

/// One gRPC message: an uncompressed, 5-byte-prefixed frame.
fn grpc_message(payload: &[u8]) -> Bytes {
    let mut m = vec![0u8];
    m.extend_from_slice(&u32::try_from(payload.len()).unwrap().to_be_bytes());
    m.extend_from_slice(payload);
    Bytes::from(m)
}

fn trailers(status: &'static str) -> Frame<Bytes> {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", status.parse().unwrap());
    Frame::trailers(t)
}

/// What a version under test knows: its name, and, for `/pkg.Svc/Slow`, when to send
/// its trailers and whom to tell that its answer was dropped.
#[derive(Clone)]
struct Script {
    name: &'static str,
    release: Arc<Notify>,
    dropped: Arc<Notify>,
}

/// The answer of a version that speaks gRPC at `/pkg.Svc/*` and echoes, at any other
/// path, its name, and in headers the protocol and authority it was asked in.
fn answer(script: &Script, req: &Request<Incoming>) -> Response<Scripted> {
    let name = script.name;
    let grpc = |frames: Vec<Frame<Bytes>>| {
        let mut resp = Response::new(Scripted {
            frames: frames.into(),
            hold: None,
            fail: false,
            dropped: None,
        });
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        resp
    };
    let data = || Frame::data(grpc_message(name.as_bytes()));
    match req.uri().path() {
        "/pkg.Svc/Ok" => grpc(vec![data(), trailers("0")]),
        "/pkg.Svc/NotFound" => grpc(vec![trailers("5")]),
        "/pkg.Svc/Unavailable" => grpc(vec![data(), trailers("14")]),
        "/pkg.Svc/NoStatus" => grpc(vec![data()]),
        // Trailers-Only: the status in the headers, and nothing after them.
        "/pkg.Svc/OnlyOk" | "/pkg.Svc/OnlyUnavailable" => {
            let mut resp = grpc(Vec::new());
            let code = if req.uri().path().ends_with("Ok") {
                "0"
            } else {
                "14"
            };
            resp.headers_mut()
                .insert("grpc-status", code.parse().unwrap());
            resp
        }
        "/pkg.Svc/Reset" => {
            let mut resp = grpc(vec![data()]);
            resp.body_mut().fail = true;
            let release = script.release.clone();
            resp.body_mut().hold = Some(Box::pin(async move { release.notified().await }));
            resp
        }
        "/big-headers" => {
            let mut resp = Response::new(Scripted {
                frames: vec![Frame::data(Bytes::from(name))].into(),
                hold: None,
                fail: false,
                dropped: None,
            });
            resp.headers_mut()
                .insert("x-big", "b".repeat(20 * 1024).parse().unwrap());
            resp
        }
        "/pkg.Svc/Slow" => {
            let mut resp = grpc(vec![data(), trailers("0")]);
            let release = script.release.clone();
            resp.body_mut().hold = Some(Box::pin(async move { release.notified().await }));
            resp.body_mut().dropped = Some(script.dropped.clone());
            resp
        }
        _ => {
            let mut resp = Response::new(Scripted {
                frames: vec![Frame::data(Bytes::from(name))].into(),
                hold: None,
                fail: false,
                dropped: None,
            });
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .or_else(|| {
                    req.headers()
                        .get("host")
                        .map(|h| h.to_str().unwrap().to_string())
                })
                .unwrap_or_default();
            let h = resp.headers_mut();
            h.insert(
                "x-seen-version",
                format!("{:?}", req.version()).parse().unwrap(),
            );
            h.insert("x-seen-authority", authority.parse().unwrap());
            h.insert(
                "x-seen-host-header",
                req.headers()
                    .contains_key("host")
                    .to_string()
                    .parse()
                    .unwrap(),
            );
            // Each Cookie line it got, in order, between brackets.
            let cookies: String = req
                .headers()
                .get_all("cookie")
                .iter()
                .map(|c| format!("[{}]", c.to_str().unwrap()))
                .collect();
            h.insert("x-seen-cookies", cookies.parse().unwrap());
            resp
        }
    }
}

/// A version that speaks `protocol` (HTTP/1.1, or h2c with prior knowledge).
async fn version(script: Script, protocol: UpstreamProtocol) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let script = script.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = answer(&script, &req);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let io = TokioIo::new(stream);
                let _ = match protocol {
                    UpstreamProtocol::H2c => {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                            .serve_connection(io, svc)
                            .await
                    }
                    UpstreamProtocol::Http1 => {
                        hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, svc)
                            .await
                    }
                };
            });
        }
    });
    addr
}

fn script(name: &'static str) -> Script {
    Script {
        name,
        release: Arc::new(Notify::new()),
        dropped: Arc::new(Notify::new()),
    }
}

/// A proxy speaking `upstream` to two versions that speak it too.
async fn split(upstream: UpstreamProtocol, sticky: Sticky) -> (Proxy, ProxyServer, Script) {
    let canary = script("canary");
    let stable = version(script("stable"), upstream).await;
    let canary_addr = version(canary.clone(), upstream).await;
    let (proxy, server) = proxy(ProxyOptions {
        sticky,
        upstream,
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[stable]);
    proxy.set_backends(Variant::Canary, &[canary_addr]);
    (proxy, server, canary)
}

// === routing ===

/// Each stream of one connection is a request: routed by weight on its own, or kept
/// on one variant per user with stickiness, and counted in its variant; HTTP/1.1
/// versions answer an h2c client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_h2c_stream_is_routed_by_weight_to_http1_versions() {
    let (proxy, server, _) = split(UpstreamProtocol::Http1, Sticky::None).await;
    let send = h2c(server.local_addr()).await;
    let (status, variant, body) = get(&send, "/", None).await;
    assert_eq!(
        (status, variant.as_str(), body.as_str()),
        (StatusCode::OK, "stable", "stable")
    );

    proxy.set_weight(Weight::from_percent(30).unwrap());
    let streams: Vec<_> = (0..1000)
        .map(|_| {
            let send = send.clone();
            tokio::spawn(async move { get(&send, "/", None).await })
        })
        .collect();
    let mut canary = 0;
    for s in streams {
        let (status, variant, body) = s.await.unwrap();
        assert_eq!(
            (status, &variant),
            (StatusCode::OK, &body),
            "answered by its variant"
        );
        canary += usize::from(variant == "canary");
    }
    assert!((230..=370).contains(&canary), "{canary} of 1000 at 30%");
    let totals = proxy.totals();
    assert_eq!(totals.canary.requests, canary as u64);
    assert_eq!(totals.stable.requests, 1001 - canary as u64);
    assert_eq!(
        proxy.open_connections(),
        1,
        "one connection carried them all"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_users_keep_their_variant_on_every_stream() {
    let (proxy, server, _) = split(UpstreamProtocol::Http1, Sticky::Header("x-user".into())).await;
    proxy.set_weight(Weight::from_percent(50).unwrap());
    let send = h2c(server.local_addr()).await;
    let mut seen = std::collections::HashMap::new();
    for round in 0..5 {
        for u in 0..40 {
            let user = format!("user-{u}");
            let (_, variant, _) = get(&send, "/", Some(&user)).await;
            let first = seen.entry(user.clone()).or_insert(variant.clone());
            assert_eq!(*first, variant, "{user} moved in round {round}");
        }
    }
    let on_canary = seen.values().filter(|v| *v == "canary").count();
    assert!((8..=32).contains(&on_canary), "{on_canary} of 40 at 50%");
}

/// Review: routing ran before `Host` was filled in from `:authority`, so a match rule
/// on `host` never matched an HTTP/2 client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_match_rule_on_host_sees_an_http2_clients_authority() {
    let (proxy, server, _) = split(UpstreamProtocol::Http1, Sticky::None).await;
    let beta = RouteMatch {
        source: MatchSource::Header("host".into()),
        values: vec!["beta.svc.test".into()],
    };
    proxy.set_route(Weight::ZERO, &[beta]);
    let send = h2c(server.local_addr()).await;
    let ask = |host: &'static str| {
        let send = send.clone();
        async move {
            let req = Request::get(format!("http://{host}/"))
                .body(Full::default())
                .unwrap();
            let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
                .await
                .unwrap()
                .unwrap();
            variant_of(resp.headers())
        }
    };
    for _ in 0..10 {
        assert_eq!(ask("beta.svc.test").await, "canary");
        assert_eq!(ask("svc.test").await, "stable");
    }
}

/// Review: the h2c client took response headers up to hyper's default 16 KiB, so a
/// larger header block from the version was reset and counted as its 502, where an
/// HTTP/1.1 version's same answer passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_response_header_block_from_an_h2c_version_passes() {
    for upstream in [UpstreamProtocol::H2c, UpstreamProtocol::Http1] {
        let (proxy, server, _) = split(upstream, Sticky::None).await;
        let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .max_header_list_size(1024 * 1024)
            .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        let req = Request::get("http://svc.test/big-headers")
            .body(Full::default())
            .unwrap();
        let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{upstream:?}");
        assert_eq!(resp.headers()["x-big"].len(), 20 * 1024, "{upstream:?}");
        assert_eq!(proxy.totals().stable.errors, 0, "{upstream:?}");
    }
}

/// With `upstream_protocol: h2c` the versions are asked in HTTP/2, with the client's
/// authority as `:authority` (and no `Host`), whether the client spoke HTTP/2 or
/// HTTP/1.1; with the default, in HTTP/1.1 with the authority as `Host`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_asked_in_their_protocol_with_the_clients_authority() {
    for upstream in [UpstreamProtocol::H2c, UpstreamProtocol::Http1] {
        let (_proxy, server, _) = split(upstream, Sticky::None).await;
        let addr = server.local_addr();
        let want = match upstream {
            UpstreamProtocol::H2c => ("HTTP/2.0", "false"),
            UpstreamProtocol::Http1 => ("HTTP/1.1", "true"),
        };
        // An h2c client.
        let send = h2c(addr).await;
        let req = Request::get("http://svc.test:8080/")
            .body(Full::default())
            .unwrap();
        let resp = send.clone().send_request(req).await.unwrap();
        let h = resp.headers();
        assert_eq!(
            (
                h["x-seen-version"].to_str().unwrap(),
                h["x-seen-authority"].to_str().unwrap(),
                h["x-seen-host-header"].to_str().unwrap(),
            ),
            (want.0, "svc.test:8080", want.1),
            "{upstream:?}, an h2c client"
        );
        // An HTTP/1.1 client.
        let req = Request::get(format!("http://{addr}/"))
            .header("host", "shop.test")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = common::client().request(req).await.unwrap();
        assert_eq!(resp.version(), hyper::Version::HTTP_11);
        let h = resp.headers();
        assert_eq!(
            (
                h["x-seen-version"].to_str().unwrap(),
                h["x-seen-authority"].to_str().unwrap(),
            ),
            (want.0, "shop.test"),
            "{upstream:?}, an HTTP/1.1 client"
        );
    }
}

/// An HTTP/2 client may send its cookies as a field each (RFC 9113 8.2.3): an
/// HTTP/1.1 version gets them as one `Cookie` line joined by `; `, as HTTP/1.1 allows
/// one line only (a version reading the first would miss the rest); an h2c version
/// gets them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_cookie_crumbs_reach_an_http1_version_as_one_line() {
    for (upstream, want) in [
        (UpstreamProtocol::Http1, "[a=1; b=2; c=3]"),
        (UpstreamProtocol::H2c, "[a=1][b=2][][c=3]"),
    ] {
        let (_proxy, server, _) = split(upstream, Sticky::None).await;
        let send = h2c(server.local_addr()).await;
        let req = Request::get("http://svc.test/")
            .header("cookie", "a=1")
            .header("cookie", "b=2")
            .header("cookie", "")
            .header("cookie", "c=3")
            .body(Full::default())
            .unwrap();
        let resp = send.clone().send_request(req).await.unwrap();
        assert_eq!(resp.headers()["x-seen-cookies"], want, "{upstream:?}");
        // One line stays as it is.
        let req = Request::get("http://svc.test/")
            .header("cookie", "a=1; b=2")
            .body(Full::default())
            .unwrap();
        let resp = send.clone().send_request(req).await.unwrap();
        assert_eq!(
            resp.headers()["x-seen-cookies"],
            "[a=1; b=2]",
            "{upstream:?}"
        );
    }
}

// === gRPC ===

/// A unary gRPC call to `path` on `send`: the HTTP status and the `grpc-status` (from
/// the trailers, or the headers of a Trailers-Only answer).
async fn call(send: &Sender, path: &str) -> (StatusCode, Option<String>) {
    let req = Request::post(format!("http://svc.test{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(grpc_message(b"hello")))
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let in_headers = resp.headers().get("grpc-status").cloned();
    let collected = resp.into_body().collect().await.unwrap();
    let code = collected
        .trailers()
        .and_then(|t| t.get("grpc-status").cloned())
        .or(in_headers)
        .map(|v| v.to_str().unwrap().to_string());
    (status, code)
}

/// The canary's error count rises with UNAVAILABLE (in trailers or Trailers-Only) and
/// with a call that ends without any status, never with OK or NOT_FOUND, though every
/// answer is HTTP 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unavailable_counts_against_the_canary_and_ok_or_not_found_do_not() {
    let (proxy, server, _) = split(UpstreamProtocol::H2c, Sticky::None).await;
    proxy.set_weight(Weight::FULL);
    let send = h2c(server.local_addr()).await;
    let calls = [
        ("/pkg.Svc/Ok", Some("0"), false),
        ("/pkg.Svc/OnlyOk", Some("0"), false),
        ("/pkg.Svc/NotFound", Some("5"), false),
        ("/pkg.Svc/Unavailable", Some("14"), true),
        ("/pkg.Svc/OnlyUnavailable", Some("14"), true),
        ("/pkg.Svc/NoStatus", None, true),
    ];
    let mut errors = 0;
    for (n, (path, code, error)) in calls.iter().cycle().take(3 * calls.len()).enumerate() {
        let (status, got) = call(&send, path).await;
        assert_eq!((status, got.as_deref()), (StatusCode::OK, *code), "{path}");
        errors += u64::from(*error);
        // Counted once its stream has ended: wait for it, then look.
        until("the call counted", async || {
            proxy.totals().canary.requests == n as u64 + 1
        })
        .await;
        let c = proxy.totals().canary;
        assert_eq!(
            (c.requests, c.errors),
            (n as u64 + 1, errors),
            "after {path}"
        );
    }
    let c = proxy.totals().canary;
    assert_eq!(
        (c.latency.count(), c.latency_total.count()),
        (18, 18),
        "each call timed once, at its end"
    );
    assert_eq!(proxy.totals().stable.requests, 0);
}

/// A gRPC call is counted when its trailers pass, not at its headers; one the client
/// leaves before its end (with no deadline stated) counts as abandoned, not as an
/// error; one the version breaks off (a reset stream) is an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_counts_at_its_end_and_a_client_leaving_is_not_the_versions_fault() {
    let (proxy, server, canary) = split(UpstreamProtocol::H2c, Sticky::None).await;
    proxy.set_weight(Weight::FULL);
    let send = h2c(server.local_addr()).await;
    let slow = |send: &Sender| {
        let req = Request::post("http://svc.test/pkg.Svc/Slow")
            .header("content-type", "application/grpc")
            .body(Full::new(grpc_message(b"hello")))
            .unwrap();
        send.clone().send_request(req)
    };

    // Headers and a message have passed; the trailers are held.
    let resp = slow(&send).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    assert_eq!(
        proxy.totals().canary.requests,
        0,
        "not counted at its headers"
    );
    canary.release.notify_one();
    let end = body.frame().await.unwrap().unwrap();
    assert_eq!(end.trailers_ref().unwrap()["grpc-status"], "0");
    until("the call counted", async || {
        proxy.totals().canary.requests == 1
    })
    .await;
    assert_eq!(proxy.totals().canary.errors, 0);

    // The client leaves mid-call: the version's answer is dropped, and the call
    // counts as abandoned, not as an error.
    let resp = slow(&send).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    drop(body);
    tokio::time::timeout(PATIENCE, canary.dropped.notified())
        .await
        .expect("the version's stream was reset when the client left");
    until("the call counted as abandoned", async || {
        proxy.abandoned(Variant::Canary) == 1
    })
    .await;
    let c = proxy.totals().canary;
    assert_eq!(
        (c.requests, c.errors),
        (2, 0),
        "the client's leaving is not the version's error"
    );

    // The version breaks its stream off after a message: an error.
    let req = Request::post("http://svc.test/pkg.Svc/Reset")
        .header("content-type", "application/grpc")
        .body(Full::new(grpc_message(b"hello")))
        .unwrap();
    let resp = send.clone().send_request(req).await.unwrap();
    let mut body = resp.into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    canary.release.notify_one();
    assert!(
        body.frame().await.unwrap().is_err(),
        "the client sees the reset, not a clean end"
    );
    until("the reset counted", async || {
        proxy.totals().canary.requests == 3
    })
    .await;
    assert_eq!(proxy.totals().canary.errors, 1);
    assert_eq!(proxy.abandoned(Variant::Canary), 1);
}

/// Review (issue 18): a gRPC client that cancels a call at its deadline (a version
/// that hangs past `grpc-timeout`) left it counted nowhere, so a hanging canary looked
/// healthy. Cancelled past its stated deadline it is an error (`DEADLINE_EXCEEDED`),
/// well before it (the caller's own choice) it is not; both count as abandoned, with
/// their wait as their latency. A client that states no deadline is not believed to
/// have had one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_call_cancelled_past_its_deadline_is_an_error_and_one_cancelled_before_is_not() {
    // A deadline of 1 ns has passed by the time the version holds the call; one of an
    // hour has not.
    for (deadline, error) in [(Some("1n"), 1), (Some("1H"), 0), (None, 0)] {
        let release = Arc::new(Notify::new());
        let (canary, held) = holding_backend("canary", release.clone()).await;
        let (proxy, server) = proxy(ProxyOptions::default()).await;
        proxy.set_backends(Variant::Canary, &[canary]);
        proxy.set_weight(Weight::FULL);
        let send = h2c(server.local_addr()).await;
        let mut req = Request::post("http://svc.test/hold")
            .header("content-type", "application/grpc")
            .header("te", "trailers");
        if let Some(d) = deadline {
            req = req.header("grpc-timeout", d);
        }
        let call = tokio::spawn(
            send.clone()
                .send_request(req.body(Full::new(grpc_message(b"hello"))).unwrap()),
        );
        until("the version holds the call", async || {
            held.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        // Cancelled: hyper resets the stream when the call's future is dropped.
        call.abort();
        until("the call counted as abandoned", async || {
            proxy.abandoned(Variant::Canary) == 1
        })
        .await;
        let c = proxy.totals().canary;
        assert_eq!((c.requests, c.errors), (1, error), "deadline {deadline:?}");
        assert_eq!(c.latency.count(), 1, "timed by its wait");
        release.notify_waiters();
    }
}

// === limits ===

/// HTTP/2 frames written and read by hand.
mod raw {
    use super::*;

    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// RST_STREAM's REFUSED_STREAM.
    pub const REFUSED_STREAM: u32 = 0x7;
    /// GOAWAY's NO_ERROR (a graceful close) and INTERNAL_ERROR.
    pub const NO_ERROR: u32 = 0x0;
    pub const INTERNAL_ERROR: u32 = 0x2;

    /// One frame as it is read: type, flags, stream and payload.
    #[derive(Debug)]
    pub struct Read {
        pub kind: u8,
        pub flags: u8,
        pub stream: u32,
        pub payload: Vec<u8>,
    }

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// `GET path` on `stream`, its header block in HPACK without indexing or Huffman.
    pub fn get(stream: u32, path: &str) -> Vec<u8> {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
        for (index, value) in [(4u8, path), (1u8, "svc.test")] {
            // Literal without indexing, indexed name (:path, :authority).
            block.push(index);
            block.push(u8::try_from(value.len()).unwrap());
            block.extend_from_slice(value.as_bytes());
        }
        frame(HEADERS, END_STREAM | END_HEADERS, stream, &block)
    }

    /// Connects with prior knowledge and acknowledges the proxy's settings, so that
    /// they are in force for the streams that follow.
    pub async fn connect(addr: SocketAddr) -> TcpStream {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(PREFACE).await.unwrap();
        tcp.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        loop {
            let f = next(&mut tcp).await.expect("the proxy's settings");
            if f.kind == SETTINGS && f.flags & 1 == 0 {
                tcp.write_all(&frame(SETTINGS, 1, 0, &[])).await.unwrap();
                return tcp;
            }
        }
    }

    /// The next frame, or `None` at the end of the connection.
    pub async fn next(tcp: &mut TcpStream) -> Option<Read> {
        let mut head = [0u8; 9];
        tokio::time::timeout(PATIENCE, tcp.read_exact(&mut head))
            .await
            .expect("a frame or the end, in time")
            .ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.ok()?;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        // As any client does: a graceful GOAWAY waits for this acknowledgement.
        if head[3] == PING && head[4] & 1 == 0 {
            tcp.write_all(&frame(PING, 1, 0, &payload)).await.ok()?;
        }
        Some(Read {
            kind: head[3],
            flags: head[4],
            stream,
            payload,
        })
    }
}

/// Review (issue 18): each HTTP/2 stream to an HTTP/1.1 version holds an upstream
/// connection until its answer is done, so `max_connections` clients with
/// `max_streams` each could open far more files than the budget sized from
/// `max_connections`. A connection's first stream in flight is its own; the further
/// streams of all HTTP/2 connections share `max_connections` rooms, each kept until
/// its answer's body is done (not only its headers). One more is answered 503,
/// counted against no version, and never an HTTP/1.1 client's request or another
/// connection's first stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_max_connections_in_flight_get_503_and_count_against_no_version() {
    let canary = common::slow_body_backend("canary", Duration::from_secs(60)).await;
    let (proxy, server) = proxy(ProxyOptions {
        limits: ProxyLimits {
            max_connections: 3,
            max_streams: 10,
            ..ProxyLimits::default()
        },
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Canary, &[canary]);
    proxy.set_weight(Weight::FULL);
    let ask = async |send: &Sender| {
        let req = Request::get("http://svc.test/slow")
            .body(Full::default())
            .unwrap();
        tokio::time::timeout(PATIENCE, send.clone().send_request(req))
            .await
            .expect("answered at once")
            .unwrap()
    };
    // Four answers whose bodies are still coming: the first stream's own room and
    // the three shared ones.
    let send = h2c(server.local_addr()).await;
    let mut streaming = Vec::new();
    for _ in 0..4 {
        let resp = ask(&send).await;
        assert_eq!(resp.status(), StatusCode::OK);
        streaming.push(resp);
    }
    let refused = ask(&send).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    assert_eq!(proxy.refused_requests(), 1);
    // An HTTP/1.1 client, and another HTTP/2 connection's first stream, still pass
    // (three connections in all, within `max_connections`).
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(b"GET /slow HTTP/1.1\r\nhost: svc.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 12];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&head, b"HTTP/1.1 200");
    let other = h2c(server.local_addr()).await;
    assert_eq!(ask(&other).await.status(), StatusCode::OK);
    // A body given up frees its room.
    drop(streaming.pop());
    let mut again = None;
    until("a room free again", async || {
        let resp = ask(&send).await;
        let ok = resp.status() == StatusCode::OK;
        again = Some(resp);
        ok
    })
    .await;
    let c = proxy.totals().canary;
    assert_eq!(c.errors, 0, "the 503s are the proxy's own");
}

/// One stream over `max_streams` is refused alone (REFUSED_STREAM); the streams in
/// flight on the same connection are answered, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_over_max_streams_is_refused_and_the_others_go_on() {
    let release = Arc::new(Notify::new());
    let (stable, held) = holding_backend("stable", release.clone()).await;
    let (proxy, server) = proxy(ProxyOptions {
        limits: ProxyLimits {
            max_streams: 2,
            ..ProxyLimits::default()
        },
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[stable]);
    let mut tcp = raw::connect(server.local_addr()).await;
    for stream in [1, 3, 5] {
        tcp.write_all(&raw::get(stream, "/hold")).await.unwrap();
    }
    let refused = loop {
        let f = raw::next(&mut tcp).await.expect("an answer to stream 5");
        assert_ne!(f.kind, raw::GOAWAY, "the connection is not closed: {f:?}");
        if f.stream == 5 {
            break f;
        }
    };
    assert_eq!(refused.kind, raw::RST_STREAM, "{refused:?}");
    assert_eq!(
        u32::from_be_bytes(refused.payload[..4].try_into().unwrap()),
        raw::REFUSED_STREAM
    );
    // The two in flight are answered once the version lets them go.
    until("both held", async || {
        held.load(std::sync::atomic::Ordering::SeqCst) == 2
    })
    .await;
    release.notify_waiters();
    let mut ended = std::collections::BTreeSet::new();
    while ended.len() < 2 {
        let f = raw::next(&mut tcp).await.expect("the answers");
        assert_ne!(f.kind, raw::GOAWAY, "{f:?}");
        assert_ne!(f.kind, raw::RST_STREAM, "{f:?}");
        if f.flags & raw::END_STREAM != 0 {
            ended.insert(f.stream);
        }
    }
    assert_eq!(ended.into_iter().collect::<Vec<_>>(), [1, 3]);
    // And the connection takes a new stream.
    tcp.write_all(&raw::get(7, "/")).await.unwrap();
    loop {
        let f = raw::next(&mut tcp).await.expect("an answer to stream 7");
        if f.stream == 7 && f.flags & raw::END_STREAM != 0 {
            assert_ne!(f.kind, raw::RST_STREAM, "{f:?}");
            break;
        }
    }
    assert_eq!(
        proxy.routed(Variant::Stable),
        3,
        "the refused stream reached no version"
    );
}

/// A header block over `max_header_bytes` is answered 431 on its own stream, reaches
/// no version and counts in no metric; the connection's other streams are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_header_block_gets_431_on_its_stream_alone() {
    let stable = version(script("stable"), UpstreamProtocol::Http1).await;
    let (proxy, server) = proxy(ProxyOptions {
        limits: ProxyLimits {
            max_header_bytes: 1024,
            ..ProxyLimits::default()
        },
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[stable]);
    let send = h2c(server.local_addr()).await;
    let big = "x".repeat(2000);
    let req = Request::get("http://svc.test/")
        .header("x-big", big.as_str())
        .body(Full::default())
        .unwrap();
    let (oversize, ordinary) = tokio::join!(send.clone().send_request(req), get(&send, "/", None));
    assert_eq!(
        oversize.unwrap().status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    assert_eq!(ordinary.0, StatusCode::OK);
    assert_eq!(
        get(&send, "/", None).await.0,
        StatusCode::OK,
        "the connection goes on"
    );
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (2, 0), "the 431 reached no version");
}

/// A connection that never sends the preface is closed at the header timeout; one that
/// sends it and no stream is sent GOAWAY then; one whose last stream ended is sent
/// GOAWAY at the idle timeout. Which timeout acts is told apart without a clock: the
/// other one is set to an hour, far past the test's patience. (When each fires is
/// checked on virtual time, in `h2.rs` and `limits.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_http2_connections_are_closed_at_their_timeouts() {
    const SHORT: Duration = Duration::from_millis(200);
    const HOUR: Duration = Duration::from_secs(3600);
    let stable = version(script("stable"), UpstreamProtocol::Http1).await;
    let limited = async |header_timeout, idle_timeout| {
        let (proxy, server) = proxy(ProxyOptions {
            limits: ProxyLimits {
                header_timeout,
                idle_timeout,
                ..ProxyLimits::default()
            },
            ..ProxyOptions::default()
        })
        .await;
        proxy.set_backends(Variant::Stable, &[stable]);
        (proxy, server)
    };
    let (header_proxy, header_server) = limited(SHORT, HOUR).await;
    let addr = header_server.local_addr();

    // Half a preface, then silence: closed with no answer, by the header timeout.
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&raw::PREFACE[..8]).await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, tcp.read(&mut buf))
        .await
        .expect("closed at the header timeout, not the idle one");
    assert!(matches!(n, Ok(0) | Err(_)), "closed with no answer: {n:?}");

    // The preface and no stream: GOAWAY at the header timeout.
    let mut tcp = raw::connect(addr).await;
    let goaway = tokio::time::timeout(PATIENCE, async {
        loop {
            let f = raw::next(&mut tcp).await.expect("a GOAWAY before the end");
            if f.kind == raw::GOAWAY {
                return;
            }
        }
    })
    .await;
    assert!(goaway.is_ok(), "GOAWAY at the header timeout");

    // A stream, then idle: no GOAWAY before its answer, then GOAWAY at the idle timeout
    // (the header timeout, an hour, no longer applies once a stream came).
    let (idle_proxy, idle_server) = limited(HOUR, SHORT).await;
    let mut tcp = raw::connect(idle_server.local_addr()).await;
    tcp.write_all(&raw::get(1, "/")).await.unwrap();
    loop {
        let f = raw::next(&mut tcp).await.expect("the answer");
        assert_ne!(f.kind, raw::GOAWAY, "{f:?}");
        if f.stream == 1 && f.flags & raw::END_STREAM != 0 {
            break;
        }
    }
    let goaway = tokio::time::timeout(PATIENCE, async {
        loop {
            let f = raw::next(&mut tcp).await.expect("a GOAWAY before the end");
            if f.kind == raw::GOAWAY {
                return;
            }
        }
    })
    .await;
    assert!(goaway.is_ok(), "GOAWAY at the idle timeout");
    // The header proxy drops its connections that got GOAWAY and did not close; the
    // idle proxy waits an hour for that, so its client closes.
    drop(tcp);
    for proxy in [&header_proxy, &idle_proxy] {
        until("the connections closed", async || {
            proxy.open_connections() == 0
        })
        .await;
    }
}

/// Stopping the server, or handing its socket over, sends GOAWAY on an HTTP/2
/// connection at once; its stream in flight is still answered, and the connection
/// then closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_and_a_hand_over_send_goaway_and_finish_the_streams_in_flight() {
    for retire in [false, true] {
        let release = Arc::new(Notify::new());
        let (stable, held) = holding_backend("stable", release.clone()).await;
        let (proxy, server) = proxy(ProxyOptions::default()).await;
        proxy.set_backends(Variant::Stable, &[stable]);
        let mut tcp = raw::connect(server.local_addr()).await;
        tcp.write_all(&raw::get(1, "/hold")).await.unwrap();
        until("the stream held", async || {
            held.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        let stopping = tokio::spawn({
            let proxy = proxy.clone();
            async move { server.stop_accepting(&proxy, PATIENCE, retire).await }
        });
        loop {
            let f = raw::next(&mut tcp).await.expect("a GOAWAY");
            assert_ne!(
                f.stream, 1,
                "retire {retire}: nothing on the held stream before the GOAWAY: {f:?}"
            );
            if f.kind == raw::GOAWAY {
                break;
            }
        }
        release.notify_waiters();
        let mut answered = false;
        while let Some(f) = raw::next(&mut tcp).await {
            if f.stream == 1 && f.flags & raw::END_STREAM != 0 {
                assert_ne!(f.kind, raw::RST_STREAM, "retire {retire}: {f:?}");
                answered = true;
            }
        }
        assert!(
            answered,
            "retire {retire}: the stream in flight was answered before the close"
        );
        tokio::time::timeout(PATIENCE, stopping)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(proxy.open_connections(), 0);
    }
}

// === the h2c upstream side: one client must not break the others ===

type Reply = Response<http_body_util::combinators::UnsyncBoxBody<Bytes, std::io::Error>>;
type Handler =
    Arc<dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// `text` as a version's whole answer.
fn text(text: &'static str) -> Reply {
    Response::new(
        Full::new(Bytes::from_static(text.as_bytes()))
            .map_err(|e| match e {})
            .boxed_unsync(),
    )
}

/// An h2c version answering with `handler`, advertising `max_streams`
/// (`SETTINGS_MAX_CONCURRENT_STREAMS`) and `max_header_list` when given (hyper's
/// defaults otherwise: 200 and 16 KiB). A request to `/kill` drops the connection it
/// came on, every stream on it with it. Also returns its count of connections accepted.
async fn h2c_version(
    max_streams: Option<u32>,
    max_header_list: Option<u32>,
    handler: Handler,
) -> (SocketAddr, Arc<AtomicUsize>) {
    h2c_version_counting(max_streams, max_header_list, handler, Arc::default()).await
}

/// [`h2c_version`], counting in `open` its connections not yet closed.
async fn h2c_version_counting(
    max_streams: Option<u32>,
    max_header_list: Option<u32>,
    handler: Handler,
    open: Arc<AtomicUsize>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            open.fetch_add(1, Ordering::SeqCst);
            let open = open.clone();
            let kill = Arc::new(Notify::new());
            let killer = kill.clone();
            let handler = handler.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let handler = handler.clone();
                let killer = killer.clone();
                async move {
                    if req.uri().path() == "/kill" {
                        killer.notify_one();
                        std::future::pending::<()>().await;
                    }
                    Ok::<_, Infallible>(handler(req).await)
                }
            });
            let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
            if let Some(n) = max_streams {
                http.max_concurrent_streams(n);
            }
            if let Some(n) = max_header_list {
                http.max_header_list_size(n);
            }
            tokio::spawn(async move {
                tokio::select! {
                    _ = http.serve_connection(TokioIo::new(stream), svc) => {}
                    () = kill.notified() => {}
                }
                open.fetch_sub(1, Ordering::SeqCst);
            });
        }
    });
    (addr, accepted)
}

/// A proxy speaking h2c to `version`, its stable variant.
async fn h2c_proxy(version: SocketAddr) -> (Proxy, ProxyServer) {
    let (proxy, server) = proxy(ProxyOptions {
        upstream: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[version]);
    (proxy, server)
}

/// A version that holds every request until `release` says so, counting in `arrived`
/// those it holds.
fn holding(
    arrived: tokio::sync::watch::Sender<usize>,
    release: tokio::sync::watch::Receiver<bool>,
) -> Handler {
    Arc::new(move |_req| {
        let mut release = release.clone();
        arrived.send_modify(|n| *n += 1);
        Box::pin(async move {
            let _ = release.wait_for(|r| *r).await;
            text("held")
        })
    })
}

/// `n` requests at once through a proxy to a version that advertises `max_streams`:
/// all must be held by the version at the same time, then all answered. Returns how
/// many connections the proxy opened to it.
async fn all_at_once(max_streams: Option<u32>, n: usize) -> usize {
    let (arrived, mut seen) = tokio::sync::watch::channel(0);
    let (release, held) = tokio::sync::watch::channel(false);
    let (version, connections) = h2c_version(max_streams, None, holding(arrived, held)).await;
    let (proxy, server) = h2c_proxy(version).await;
    // The proxy takes `max_streams` (100) streams per client connection.
    let clients = [
        h2c(server.local_addr()).await,
        h2c(server.local_addr()).await,
    ];
    let calls: Vec<_> = (0..n)
        .map(|i| {
            let send = clients[i % 2].clone();
            tokio::spawn(async move { get(&send, "/", None).await.0 })
        })
        .collect();
    let all_in = tokio::time::timeout(PATIENCE, seen.wait_for(|a| *a == n))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        all_in,
        "only {} of {n} requests reached the version at once",
        *seen.borrow()
    );
    release.send_replace(true);
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (n as u64, 0));
    connections.load(Ordering::SeqCst)
}

/// Review (h2c, critical): one connection per endpoint carried every stream, so one
/// stream's connection error broke them all. A connection carries at most 100 streams,
/// or fewer when its version says so: more requests at once open as many more
/// connections as they need, and all are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_streams_than_a_connection_carries_open_another_connection() {
    // hyper's server allows 200 at once: the proxy's own cap opens a second, and only
    // one (requests that find no room wait for the one being opened).
    assert_eq!(
        all_at_once(None, 150).await,
        2,
        "connections for 150 streams"
    );
    // A version that allows 10 gets 25 on three connections, none queued.
    assert_eq!(
        all_at_once(Some(10), 25).await,
        3,
        "connections for 25 streams"
    );
}

/// Uploads larger than every window on the way (the version's 1 MiB per stream and per
/// connection, the proxy's own toward its clients), several at once on one upstream
/// connection, reach the version whole and in order: the request body goes out as the
/// version's flow control lets it, each stream waiting for its share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_past_the_versions_windows_arrive_whole() {
    const SIZE: usize = 3 << 20;
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            // Its length and a digest of its order: each byte weighted by its place.
            let digest = body.iter().enumerate().fold(0u64, |d, (i, b)| {
                d.wrapping_add((i as u64 + 1) * u64::from(*b))
            });
            Response::new(
                Full::new(Bytes::from(format!("{} {digest}", body.len())))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
        })
    });
    let (version, connections) = h2c_version(None, None, handler).await;
    let (proxy, server) = h2c_proxy(version).await;
    let send = h2c(server.local_addr()).await;
    let calls: Vec<_> = (0..6u8)
        .map(|n| {
            let send = send.clone();
            tokio::spawn(async move {
                let body: Vec<u8> = (0..SIZE).map(|i| (i % 251) as u8 ^ n).collect();
                let digest = body.iter().enumerate().fold(0u64, |d, (i, b)| {
                    d.wrapping_add((i as u64 + 1) * u64::from(*b))
                });
                let req = Request::post("http://svc.test/upload")
                    .body(Full::new(Bytes::from(body)))
                    .unwrap();
                let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
                    .await
                    .expect("answered in time")
                    .unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                let got = resp.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(String::from_utf8_lossy(&got), format!("{SIZE} {digest}"));
            })
        })
        .collect();
    for call in calls {
        call.await.unwrap();
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "one upstream connection"
    );
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (6, 0));
}

/// An HTTP/1.1 client's chunked upload, with a `TE` other than `trailers`, reaches an
/// h2c version whole: what HTTP/2 forbids in a request (`Transfer-Encoding`, such a
/// `TE`) is left out of its head, which the h2 client would otherwise refuse to send.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_chunked_upload_reaches_an_h2c_version_without_http1_framing() {
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let framing = ["transfer-encoding", "te"]
                .iter()
                .filter(|h| req.headers().contains_key(**h))
                .count();
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let answer = format!("{framing} {}", String::from_utf8_lossy(&body));
            Response::new(
                Full::new(Bytes::from(answer))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
        })
    });
    let (version, _) = h2c_version(None, None, handler).await;
    let (proxy, server) = h2c_proxy(version).await;
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(
        b"POST /upload HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\
          TE: gzip\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("0 hello world"), "{answer}");
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (1, 0));
}

/// Review: an HTTP/1.1 client names its `TE` in `Connection`, as RFC 9110 10.1.4
/// asks, and the proxy stripped it as this hop's before a gRPC call went to its h2c
/// version: a gRPC server may refuse a call without `te: trailers`. It arrives as
/// `trailers` alone, whatever else the client listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_clients_te_named_in_connection_still_asks_an_h2c_version_for_trailers() {
    let handler: Handler = Arc::new(|req: Request<Incoming>| {
        Box::pin(async move {
            let te: Vec<String> = req
                .headers()
                .get_all("te")
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            Response::new(
                Full::new(Bytes::from(format!("te={}", te.join("|"))))
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
        })
    });
    let (version, _) = h2c_version(None, None, handler).await;
    let (_proxy, server) = h2c_proxy(version).await;
    for (te, expected) in [
        ("trailers", "te=trailers"),
        ("gzip, trailers", "te=trailers"),
        ("gzip", "te="),
    ] {
        let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
        let head = format!(
            "POST /pkg.Svc/Call HTTP/1.1\r\nHost: svc.test\r\nContent-Type: application/grpc\r\n\
             TE: {te}\r\nConnection: TE, close\r\nContent-Length: 0\r\n\r\n"
        );
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut answer))
            .await
            .expect("answered in time")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(expected), "TE: {te}: {answer}");
    }
}

/// A burst's extra connections close once it has passed: the pool lets go of an idle
/// connection beside another idle one, and the connection itself must then end, not
/// linger with no handle to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bursts_extra_connection_is_closed_once_idle() {
    let (arrived, mut seen) = tokio::sync::watch::channel(0);
    let (release, held) = tokio::sync::watch::channel(false);
    let open = Arc::new(AtomicUsize::new(0));
    let (version, accepted) =
        h2c_version_counting(None, None, holding(arrived, held), open.clone()).await;
    let (_proxy, server) = h2c_proxy(version).await;
    let clients = [
        h2c(server.local_addr()).await,
        h2c(server.local_addr()).await,
    ];
    let calls: Vec<_> = (0..150)
        .map(|i| {
            let send = clients[i % 2].clone();
            tokio::spawn(async move { get(&send, "/", None).await.0 })
        })
        .collect();
    tokio::time::timeout(PATIENCE, seen.wait_for(|a| *a == 150))
        .await
        .expect("the burst reached the version")
        .unwrap();
    release.send_replace(true);
    for call in calls {
        assert_eq!(call.await.unwrap(), StatusCode::OK);
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the burst's connections"
    );
    // A request that finds both idle keeps one and lets the other go, closed. (The
    // burst's last stream may still be counted on its connection for a moment after
    // the client has its answer: the requests go on until one finds both idle.)
    common::until("the extra connection closed", async || {
        assert_eq!(get(&clients[0], "/", None).await.0, StatusCode::OK);
        open.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "no connection opened since"
    );
}

/// A version that takes no stream (`SETTINGS_MAX_CONCURRENT_STREAMS` 0, which RFC 9113
/// 5.1.2 lets it send for a while): each request found its connection full and opened
/// another, which was as full, so every request cost the version a connection and a
/// handshake. Now a request that finds the version saying 0 on an open connection
/// opens none: it fails at once, as before, with no new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_taking_no_streams_is_not_sent_a_connection_per_request() {
    let (version, connections) = h2c_version(
        Some(0),
        None,
        Arc::new(|_req| Box::pin(async { text("ok") })),
    )
    .await;
    let (proxy, server) = h2c_proxy(version).await;
    let client = h2c(server.local_addr()).await;
    for _ in 0..5 {
        assert_eq!(get(&client, "/", None).await.0, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (5, 5), "the version served none");
}

/// An endless answer, counting in its `handed` what the version's server took of it.
struct Endless {
    handed: Arc<AtomicUsize>,
    more: tokio::sync::watch::Sender<usize>,
}

/// One chunk of an endless answer.
const CHUNK: usize = 16 * 1024;

impl Body for Endless {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.handed.fetch_add(CHUNK, Ordering::SeqCst);
        self.more.send_modify(|n| *n += 1);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; CHUNK])))))
    }
}

/// Review (h2c, critical): a client that never read its answer held the shared
/// connection's receive window (hyper's 2 MiB per stream in 5 MiB), and a few such
/// clients stalled every other stream to the version. Now each stream holds at most
/// its own window of a connection window that covers them all: with 60 streams stalled,
/// each holding its full window, another client's request on the same connection is
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_their_answers_do_not_stall_another_client() {
    /// Streams whose clients never read; what each must have been handed (the proxy's
    /// stream window, 256 KiB, less a chunk) before the other client asks.
    const STALLED: usize = 60;
    const HELD: usize = 256 * 1024 - CHUNK;
    let streams: Arc<std::sync::Mutex<Vec<Arc<AtomicUsize>>>> = Arc::default();
    let (more, mut handed) = tokio::sync::watch::channel(0usize);
    let endless = streams.clone();
    let handler: Handler = Arc::new(move |req| {
        if req.uri().path() != "/endless" {
            return Box::pin(async { text("small") });
        }
        let handed = Arc::new(AtomicUsize::new(0));
        endless.lock().unwrap().push(handed.clone());
        let more = more.clone();
        Box::pin(async move { Response::new(Endless { handed, more }.boxed_unsync()) })
    });
    let (version, connections) = h2c_version(None, None, handler).await;
    let (proxy, server) = h2c_proxy(version).await;
    // A client that takes 16 KiB of each answer and reads nothing.
    let tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    let (stalled, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .initial_stream_window_size(16 * 1024)
        .handshake::<_, Full<Bytes>>(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut unread = Vec::new();
    for _ in 0..STALLED {
        let req = Request::get("http://svc.test/endless")
            .body(Full::default())
            .unwrap();
        let resp = tokio::time::timeout(PATIENCE, stalled.clone().send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        unread.push(resp);
    }
    let all_held = |_: &usize| {
        let s = streams.lock().unwrap();
        s.len() == STALLED && s.iter().all(|h| h.load(Ordering::SeqCst) >= HELD)
    };
    tokio::time::timeout(PATIENCE, handed.wait_for(all_held))
        .await
        .expect("each stalled stream was handed its window")
        .unwrap();
    let other = h2c(server.local_addr()).await;
    assert_eq!(
        get(&other, "/", None).await,
        (StatusCode::OK, "stable".into(), "small".into())
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "all on one connection"
    );
    drop(unread);
    let _ = proxy;
}

/// Review (h2c, critical): a header block the proxy takes from its client (up to
/// `max_header_bytes`, 64 KiB) but larger than its version accepts made the version
/// end the shared connection (here a `GOAWAY`, as hyper's server sends for a block 4
/// times over its limit), breaking every stream on it as the version's 502. It is
/// answered 431 by the proxy, never sent, charged to no version; the stream in flight
/// beside it is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_block_over_the_versions_limit_is_answered_431_and_never_sent() {
    let (arrived, mut seen) = tokio::sync::watch::channel(0);
    let (release, held) = tokio::sync::watch::channel(false);
    let holder = holding(arrived, held);
    let handler: Handler = Arc::new(move |req| {
        if req.uri().path() == "/big" {
            return Box::pin(async { text("big") });
        }
        holder(req)
    });
    let (version, _) = h2c_version(None, Some(4096), handler).await;
    let (proxy, server) = h2c_proxy(version).await;
    let send = h2c(server.local_addr()).await;
    let beside = tokio::spawn({
        let send = send.clone();
        async move { get(&send, "/", None).await }
    });
    tokio::time::timeout(PATIENCE, seen.wait_for(|a| *a == 1))
        .await
        .unwrap()
        .unwrap();
    let big = Request::get("http://svc.test/big")
        .header("x-big", "x".repeat(20 * 1024))
        .body(Full::default())
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(big))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    release.send_replace(true);
    assert_eq!(
        beside.await.unwrap(),
        (StatusCode::OK, "stable".into(), "held".into()),
        "the stream beside it is answered"
    );
    assert_eq!(get(&send, "/", None).await.0, StatusCode::OK);
    let s = proxy.totals().stable;
    assert_eq!(
        (s.requests, s.errors),
        (2, 0),
        "the 431 is charged to no version"
    );
}

/// A version whose connection closed under the proxy (it restarted, or dropped the
/// socket with no `GOAWAY`) is asked again on a new connection: the closed one is never
/// handed another request, which it could only fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_connection_is_replaced_for_the_next_requests() {
    let handler: Handler = Arc::new(|_req| Box::pin(async { text("ok") }));
    let open = Arc::new(AtomicUsize::new(0));
    let (version, accepted) = h2c_version_counting(None, None, handler, open.clone()).await;
    let (proxy, server) = h2c_proxy(version).await;
    let send = h2c(server.local_addr()).await;
    assert_eq!(get(&send, "/", None).await.0, StatusCode::OK);
    // The version drops the connection this request came on, with no GOAWAY.
    assert_eq!(get(&send, "/kill", None).await.0, StatusCode::BAD_GATEWAY);
    until("the version's side closed", async || {
        open.load(Ordering::SeqCst) == 0
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(&send, "/", None).await.0, StatusCode::OK);
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 2, "one new connection");
    let s = proxy.totals().stable;
    assert_eq!(
        (s.requests, s.errors),
        (7, 1),
        "only the killed request failed"
    );
}

/// Review (h2c, critical): a connection's failure broke every stream on it, and each
/// was counted as the version's error. Which stream caused it cannot be told: it is
/// charged once, and counted once in `upstream_connection_errors`; the other streams
/// it broke (requests waiting for their answer, gRPC calls mid-body) are not charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_failure_is_charged_to_its_version_once_not_per_stream() {
    const WAITING: usize = 4;
    const CALLS: usize = 4;
    let (arrived, mut seen) = tokio::sync::watch::channel(0);
    let (_release, held) = tokio::sync::watch::channel(false);
    let holder = holding(arrived, held);
    let handler: Handler = Arc::new(move |req| {
        if !req.uri().path().starts_with("/pkg.Svc/") {
            return holder(req);
        }
        // A gRPC call that sends its headers and a message, then nothing more.
        let mut resp = Response::new(
            Scripted {
                // Held before its last frame.
                frames: vec![
                    Frame::data(grpc_message(b"partial")),
                    Frame::data(grpc_message(b"never")),
                ]
                .into(),
                hold: Some(Box::pin(std::future::pending())),
                fail: false,
                dropped: None,
            }
            .boxed_unsync(),
        );
        resp.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        Box::pin(async move { resp })
    });
    let (version, connections) = h2c_version(None, None, handler).await;
    let (proxy, server) = h2c_proxy(version).await;
    let send = h2c(server.local_addr()).await;
    let mut waiting = Vec::new();
    for n in 1..=WAITING {
        let send = send.clone();
        waiting.push(tokio::spawn(async move { get(&send, "/", None).await.0 }));
        tokio::time::timeout(PATIENCE, seen.wait_for(|a| *a == n))
            .await
            .unwrap()
            .unwrap();
    }
    let mut calls = Vec::new();
    for _ in 0..CALLS {
        let req = Request::post("http://svc.test/pkg.Svc/Stuck")
            .header("content-type", "application/grpc")
            .body(Full::new(grpc_message(b"hello")))
            .unwrap();
        let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.is_data());
        calls.push(body);
    }
    let (killed, ..) = get(&send, "/kill", None).await;
    assert_eq!(killed, StatusCode::BAD_GATEWAY);
    for w in waiting {
        assert_eq!(w.await.unwrap(), StatusCode::BAD_GATEWAY);
    }
    for body in calls {
        let broken = tokio::time::timeout(PATIENCE, body.collect())
            .await
            .unwrap();
        assert!(broken.is_err(), "the call's body breaks off");
    }
    // Each gRPC call is counted (or not) as its body ends, at the proxy: wait until
    // nothing is in flight.
    until("every stream done", async || {
        proxy.in_flight(Variant::Stable) == 0
    })
    .await;
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "all on one connection"
    );
    let s = proxy.totals().stable;
    assert_eq!(s.errors, 1, "charged once, not once per broken stream");
    assert_eq!(proxy.upstream_connection_errors(), Some(1));
}

/// A request body fed by the test, chunk by chunk.
struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

impl Body for Fed {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

/// A bidirectional gRPC answer: each message of the request echoed as it comes, and
/// `OK` in the trailers when the request ends.
struct Echo(Option<Incoming>);

impl Body for Echo {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        loop {
            let Some(req) = &mut this.0 else {
                return Poll::Ready(None);
            };
            match std::task::ready!(Pin::new(req).poll_frame(cx)) {
                Some(Ok(f)) => {
                    if let Ok(data) = f.into_data() {
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    this.0 = None;
                    return Poll::Ready(Some(Ok(trailers("0"))));
                }
            }
        }
    }
}

/// Review (issue 18): `body_timeout` cut a bidirectional gRPC call whose client was
/// quiet between messages (a chat, a watch with acknowledgements), long after the
/// version had answered. Once a gRPC call's answer has begun, its client may be quiet
/// for as long as the call lasts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bidirectional_grpc_call_may_be_quiet_past_the_body_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let version = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::new(Echo(Some(req.into_body())));
                    resp.headers_mut()
                        .insert("content-type", "application/grpc".parse().unwrap());
                    Ok::<_, Infallible>(resp)
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let body_timeout = Duration::from_millis(200);
    let (proxy, server) = proxy(ProxyOptions {
        upstream: UpstreamProtocol::H2c,
        limits: ProxyLimits {
            body_timeout,
            ..ProxyLimits::default()
        },
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[version]);

    let mut send = common::h2c(server.local_addr()).await;
    let (feed, fed) = tokio::sync::mpsc::channel(4);
    let req = Request::post("http://svc.test/pkg.Svc/Chat")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Fed(fed))
        .unwrap();
    feed.send(grpc_message(b"one")).await.unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, grpc_message(b"one"));
    // Quiet for three body timeouts: what is tested is time passing, not an event.
    tokio::time::sleep(body_timeout * 3).await;
    feed.send(grpc_message(b"two")).await.unwrap();
    let second = body.frame().await.unwrap().expect("the call goes on");
    assert_eq!(second.into_data().unwrap(), grpc_message(b"two"));
    drop(feed);
    let end = body.frame().await.unwrap().unwrap();
    assert_eq!(end.trailers_ref().unwrap()["grpc-status"], "0");
    until("the call counted", async || {
        proxy.totals().stable.requests == 1
    })
    .await;
    assert_eq!(proxy.totals().stable.errors, 0);
    assert_eq!(proxy.body_timeouts(), 0);
}

/// Review (issue 18): a connection failure is charged to the first stream that sees
/// it; when that stream was rampart's own uncounted load, the version's failure
/// counted nowhere, and a canary crashing under `analysis.load` with `counts: false`
/// showed no error. Only a counted stream takes the charge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rampart_s_uncounted_load_never_takes_a_connection_failures_charge() {
    const UNCOUNTED: usize = 30;
    let (arrived, mut seen) = tokio::sync::watch::channel(0);
    let (_release, held) = tokio::sync::watch::channel(false);
    let (version, _connections) = h2c_version(None, None, holding(arrived, held)).await;
    let (proxy, server) = h2c_proxy(version).await;
    proxy.set_uncounted("tok");
    let send = h2c(server.local_addr()).await;
    let load = rampart_core::policy::LOAD_HEADER;
    let mut calls = Vec::new();
    // The uncounted streams first, the counted one last: the first to see the
    // connection fail is likely one of the load's.
    for i in 0..=UNCOUNTED {
        let mut req = Request::get("http://svc.test/hold");
        if i < UNCOUNTED {
            req = req.header(load, "tok");
        }
        calls.push(tokio::spawn(
            send.clone()
                .send_request(req.body(Full::default()).unwrap()),
        ));
        tokio::time::timeout(PATIENCE, seen.wait_for(|a| *a == i + 1))
            .await
            .unwrap()
            .unwrap();
    }
    let kill = Request::get("http://svc.test/kill")
        .header(load, "tok")
        .body(Full::default())
        .unwrap();
    let _ = send.clone().send_request(kill).await;
    for c in calls {
        let _ = c.await;
    }
    until("every stream done", async || {
        proxy.in_flight(Variant::Stable) == 0
    })
    .await;
    let s = proxy.totals().stable;
    assert_eq!(
        (s.requests, s.errors),
        (1, 1),
        "the counted stream is charged"
    );
    assert_eq!(proxy.upstream_connection_errors(), Some(1));
}

// === versions that close connections or refuse streams (RFC 9113 6.8, 8.7) ===

/// One connection of an h2c version written frame by frame, to close its connection or
/// refuse streams exactly when a test says: it reads each request's stream and body,
/// and answers (echoing the body), refuses or goes away.
struct RawVersion {
    tcp: TcpStream,
    /// The bodies of the requests still coming, by stream.
    bodies: HashMap<u32, Vec<u8>>,
}

impl RawVersion {
    /// Takes the proxy's connection preface and sends the version's SETTINGS.
    async fn accept(mut tcp: TcpStream) -> RawVersion {
        let mut preface = [0u8; raw::PREFACE.len()];
        tcp.read_exact(&mut preface).await.unwrap();
        assert_eq!(preface, raw::PREFACE);
        tcp.write_all(&raw::frame(raw::SETTINGS, 0, 0, &[]))
            .await
            .unwrap();
        RawVersion {
            tcp,
            bodies: HashMap::new(),
        }
    }

    /// The next whole request, its stream and its body; `None` at the end of the
    /// connection.
    async fn request(&mut self) -> Option<(u32, Vec<u8>)> {
        loop {
            let f = raw::next(&mut self.tcp).await?;
            match f.kind {
                raw::SETTINGS if f.flags & 1 == 0 => {
                    let ack = raw::frame(raw::SETTINGS, 1, 0, &[]);
                    self.tcp.write_all(&ack).await.ok()?;
                }
                raw::HEADERS => {
                    self.bodies.insert(f.stream, Vec::new());
                }
                raw::DATA => {
                    if let Some(body) = self.bodies.get_mut(&f.stream) {
                        body.extend_from_slice(&f.payload);
                    }
                }
                _ => {}
            }
            if matches!(f.kind, raw::HEADERS | raw::DATA)
                && f.flags & raw::END_STREAM != 0
                && let Some(body) = self.bodies.remove(&f.stream)
            {
                return Some((f.stream, body));
            }
        }
    }

    /// Answers `stream` 200 with `body`.
    async fn answer(&mut self, stream: u32, body: &[u8]) {
        // `:status: 200`, indexed in HPACK's static table.
        let headers = raw::frame(raw::HEADERS, raw::END_HEADERS, stream, &[0x88]);
        self.tcp.write_all(&headers).await.unwrap();
        let data = raw::frame(raw::DATA, raw::END_STREAM, stream, body);
        self.tcp.write_all(&data).await.unwrap();
    }

    /// Refuses `stream`: not processed, the client may send it again (RFC 9113 8.7).
    async fn refuse(&mut self, stream: u32) {
        let reason = raw::REFUSED_STREAM.to_be_bytes();
        let rst = raw::frame(raw::RST_STREAM, 0, stream, &reason);
        self.tcp.write_all(&rst).await.unwrap();
    }

    /// Sends a PING and reads on to its acknowledgement: the proxy has read every frame
    /// sent before it.
    async fn ping(&mut self) {
        let ping = raw::frame(raw::PING, 0, 0, b"rotating");
        self.tcp.write_all(&ping).await.unwrap();
        loop {
            let f = raw::next(&mut self.tcp)
                .await
                .expect("the PING's acknowledgement");
            if f.kind == raw::PING && f.flags & 1 != 0 {
                return;
            }
        }
    }

    /// Sends GOAWAY with `last` as the last stream id processed, and `code`.
    async fn go_away(&mut self, last: u32, code: u32) {
        let mut payload = last.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        let goaway = raw::frame(raw::GOAWAY, 0, 0, &payload);
        self.tcp.write_all(&goaway).await.unwrap();
    }
}

/// A version written frame by frame: each connection it accepts is served by `serve`,
/// with its number (from 0). Also returns its count of connections accepted.
async fn raw_version<F, Fut>(serve: F) -> (SocketAddr, Arc<AtomicUsize>)
where
    F: Fn(usize, RawVersion) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    let serve = Arc::new(serve);
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let serve = serve.clone();
            tokio::spawn(async move { serve(n, RawVersion::accept(tcp).await).await });
        }
    });
    (addr, accepted)
}

/// `POST /echo` with `body` on `send`: the status and the answer's body.
async fn post(send: &Sender, body: &'static str) -> (StatusCode, String) {
    let req = Request::post("http://svc.test/echo")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// What a [`rotating`] version tells its test.
struct Rotation {
    addr: SocketAddr,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// Requests the first connection holds.
    held: tokio::sync::watch::Receiver<usize>,
    /// Requests the connections after the first received (each is answered).
    echoed: tokio::sync::watch::Receiver<usize>,
    /// Lets the first connection answer its lowest stream.
    release: Arc<Notify>,
    /// The requests that came on the first connection after its GOAWAY, told once
    /// the proxy closed it.
    after: tokio::sync::oneshot::Receiver<usize>,
}

/// A version whose first connection, once it holds `HELD` requests, sends GOAWAY with
/// `code`, keeping the lowest of its streams: gracefully (`NO_ERROR`) as grpc-go's
/// `MaxConnectionAge` and h2's server do, first with the last stream id 2^31-1 and a
/// PING, then, once the PING is acknowledged, with that stream's id; with an error
/// code, once. It answers that stream when released, then reads on to the end of the
/// connection. Its later connections answer every request at once.
async fn rotating(code: u32) -> Rotation {
    const HELD: usize = 3;
    let (echo, echoed) = tokio::sync::watch::channel(0);
    let (hold, held) = tokio::sync::watch::channel(0);
    let release = Arc::new(Notify::new());
    let (tell, after) = tokio::sync::oneshot::channel();
    let tell = Arc::new(std::sync::Mutex::new(Some(tell)));
    let released = release.clone();
    let (addr, connections) = raw_version(move |n, mut conn| {
        let echo = echo.clone();
        let hold = hold.clone();
        let released = released.clone();
        let tell = tell.clone();
        async move {
            if n > 0 {
                while let Some((stream, body)) = conn.request().await {
                    echo.send_modify(|e| *e += 1);
                    conn.answer(stream, &body).await;
                }
                return;
            }
            let mut held = Vec::new();
            while held.len() < HELD {
                held.push(conn.request().await.unwrap());
                hold.send_replace(held.len());
            }
            held.sort();
            let (kept, body) = held.swap_remove(0);
            if code == raw::NO_ERROR {
                conn.go_away(0x7fff_ffff, code).await;
                conn.ping().await;
            }
            conn.go_away(kept, code).await;
            released.notified().await;
            conn.answer(kept, &body).await;
            let mut after = 0;
            while conn.request().await.is_some() {
                after += 1;
            }
            if let Some(tell) = tell.lock().unwrap().take() {
                let _ = tell.send(after);
            }
        }
    })
    .await;
    Rotation {
        addr,
        connections,
        held,
        echoed,
        release,
        after,
    }
}

/// Fix: grpc-go's `MaxConnectionAge` and many HTTP/2 servers rotate connections with a
/// graceful GOAWAY (`NO_ERROR`), and its streams above the last stream id were each the
/// version's 502, charged as a connection failure: a healthy canary could be rolled
/// back. Those streams were not processed (RFC 9113 6.8): they are sent again, bodies
/// and all, on a new connection, and their clients get their answers; the stream at
/// the last stream id is answered on its connection; a request after the GOAWAY goes
/// to the new connection only; nothing is charged to the version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_goaway_sends_the_unprocessed_streams_again_and_charges_nothing() {
    let mut v = rotating(raw::NO_ERROR).await;
    let (proxy, server) = h2c_proxy(v.addr).await;
    let send = h2c(server.local_addr()).await;
    // One at a time, each held by the version before the next: all on one connection,
    // whose side in the proxy is idle when the GOAWAY comes.
    let mut calls = Vec::new();
    for (n, body) in ["one", "two", "three"].into_iter().enumerate() {
        let send = send.clone();
        calls.push(tokio::spawn(async move { (body, post(&send, body).await) }));
        tokio::time::timeout(PATIENCE, v.held.wait_for(|h| *h == n + 1))
            .await
            .unwrap()
            .unwrap();
    }
    // The two streams above the last stream id, sent again.
    tokio::time::timeout(PATIENCE, v.echoed.wait_for(|e| *e == 2))
        .await
        .expect("the unprocessed streams are sent again on a new connection")
        .unwrap();
    assert_eq!(
        post(&send, "four").await,
        (StatusCode::OK, "four".into()),
        "a request after the GOAWAY"
    );
    assert_eq!(*v.echoed.borrow(), 3, "answered on the new connection");
    v.release.notify_one();
    for call in calls {
        let (body, answer) = call.await.unwrap();
        assert_eq!(answer, (StatusCode::OK, body.to_string()));
    }
    let after = tokio::time::timeout(PATIENCE, &mut v.after)
        .await
        .expect("the proxy closes the connection after its last stream")
        .unwrap();
    assert_eq!(after, 0, "no request on the connection after its GOAWAY");
    assert_eq!(v.connections.load(Ordering::SeqCst), 2);
    until("every stream done", async || {
        proxy.in_flight(Variant::Stable) == 0
    })
    .await;
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (4, 0), "nothing charged");
    assert_eq!(proxy.upstream_connection_errors(), Some(0));
}

/// A GOAWAY with an error code is still the connection's failure: its streams above
/// the last stream id are not sent again, and are charged to the version once; the
/// stream at the last stream id is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_goaway_with_an_error_code_is_charged_once_and_not_sent_again() {
    let v = rotating(raw::INTERNAL_ERROR).await;
    let (proxy, server) = h2c_proxy(v.addr).await;
    let send = h2c(server.local_addr()).await;
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for body in ["one", "two", "three"] {
        let send = send.clone();
        let done = done.clone();
        tokio::spawn(async move { done.send((body, post(&send, body).await)) });
    }
    let mut next = async || {
        tokio::time::timeout(PATIENCE, answers.recv())
            .await
            .unwrap()
            .unwrap()
    };
    for _ in 0..2 {
        let (_, (status, _)) = next().await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "above the last stream id");
    }
    v.release.notify_one();
    let (body, answer) = next().await;
    assert_eq!(answer, (StatusCode::OK, body.to_string()));
    until("every stream done", async || {
        proxy.in_flight(Variant::Stable) == 0
    })
    .await;
    assert_eq!(v.connections.load(Ordering::SeqCst), 1, "not sent again");
    assert_eq!(*v.echoed.borrow(), 0);
    let s = proxy.totals().stable;
    // The other stream it broke counts nowhere, as any stream of a failed connection
    // but the one charged.
    assert_eq!((s.requests, s.errors), (2, 1), "charged once");
    assert_eq!(proxy.upstream_connection_errors(), Some(1));
}

/// Fix: a stream the version refused (`REFUSED_STREAM`: not processed, RFC 9113 8.7)
/// was the version's 502. It is sent once more, body and all (here on the same
/// connection, which still takes streams), and its client gets the answer, charged
/// nothing. Refused again, it is the version's failure, charged once, and not sent a
/// third time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_stream_is_sent_once_more_and_charged_only_when_refused_again() {
    let arrivals: Arc<std::sync::Mutex<HashMap<Vec<u8>, usize>>> = Arc::default();
    let seen = arrivals.clone();
    let (version, connections) = raw_version(move |_, mut conn| {
        let seen = seen.clone();
        async move {
            while let Some((stream, body)) = conn.request().await {
                let n = {
                    let mut seen = seen.lock().unwrap();
                    let n = seen.entry(body.clone()).or_default();
                    *n += 1;
                    *n
                };
                match (&body[..], n) {
                    (b"refused once", 1) | (b"refused always", _) => conn.refuse(stream).await,
                    _ => conn.answer(stream, &body).await,
                }
            }
        }
    })
    .await;
    let (proxy, server) = h2c_proxy(version).await;
    let send = h2c(server.local_addr()).await;
    assert_eq!(
        post(&send, "refused once").await,
        (StatusCode::OK, "refused once".into())
    );
    let (status, _) = post(&send, "refused always").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let arrived = |body: &str| arrivals.lock().unwrap()[body.as_bytes()];
    assert_eq!(arrived("refused once"), 2);
    assert_eq!(arrived("refused always"), 2, "sent once more, not twice");
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    until("every stream done", async || {
        proxy.in_flight(Variant::Stable) == 0
    })
    .await;
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (2, 1), "only the refusal repeated");
    assert_eq!(proxy.upstream_connection_errors(), Some(0));
}

/// `SETTINGS_MAX_CONCURRENT_STREAMS` as one setting of a SETTINGS frame.
fn max_streams_setting(n: u32) -> Vec<u8> {
    let mut payload = 3u16.to_be_bytes().to_vec();
    payload.extend_from_slice(&n.to_be_bytes());
    raw::frame(raw::SETTINGS, 0, 0, &payload)
}

/// A version whose connection, once serving, says it takes no stream, then takes
/// streams again: meanwhile requests fail (the version's errors) and no other
/// connection is opened to it; once it raises its limit, the same connection
/// carries the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_back_from_taking_no_streams_is_served_on_its_connection() {
    let (zero_tx, zero) = tokio::sync::oneshot::channel::<()>();
    let (raise, raise_rx) = tokio::sync::oneshot::channel::<()>();
    let (raised_tx, raised) = tokio::sync::oneshot::channel::<()>();
    let steps = Arc::new(std::sync::Mutex::new(Some((zero_tx, raise_rx, raised_tx))));
    let (version, connections) = raw_version(move |n, mut conn| {
        let steps = steps.lock().unwrap().take();
        async move {
            let Some((zero_tx, raise_rx, raised_tx)) = steps.filter(|_| n == 0) else {
                // Another connection: answers what comes (the test counts it).
                while let Some((stream, body)) = conn.request().await {
                    conn.answer(stream, &body).await;
                }
                return;
            };
            let (stream, body) = conn.request().await.unwrap();
            conn.answer(stream, &body).await;
            conn.tcp.write_all(&max_streams_setting(0)).await.unwrap();
            // Read by the proxy (frames in order) once the PING is answered.
            conn.ping().await;
            zero_tx.send(()).unwrap();
            raise_rx.await.unwrap();
            conn.tcp.write_all(&max_streams_setting(100)).await.unwrap();
            conn.ping().await;
            raised_tx.send(()).unwrap();
            while let Some((stream, body)) = conn.request().await {
                conn.answer(stream, &body).await;
            }
        }
    })
    .await;
    let (proxy, server) = h2c_proxy(version).await;
    let send = h2c(server.local_addr()).await;
    assert_eq!(post(&send, "first").await, (StatusCode::OK, "first".into()));
    zero.await.unwrap();
    for _ in 0..3 {
        assert_eq!(post(&send, "refused").await.0, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "no connection opened while at 0"
    );
    raise.send(()).unwrap();
    raised.await.unwrap();
    assert_eq!(post(&send, "again").await, (StatusCode::OK, "again".into()));
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (5, 3));
}

/// An h2c connection through the `h2` crate itself, which can reset its streams: its
/// sender, and its connection's task (finished once the proxy closes it).
async fn raw_h2c(
    addr: SocketAddr,
) -> (
    ::h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), ::h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (send, conn) = ::h2::client::handshake(tcp).await.unwrap();
    (send, tokio::spawn(conn))
}

/// Opens `n` streams for `/hold` on `send` (the version never answers them), waits
/// until the proxy has routed every one, then cancels them all and waits until the
/// proxy has let them go.
async fn open_and_cancel(proxy: &Proxy, send: &mut ::h2::client::SendRequest<Bytes>, n: usize) {
    let routed = proxy.routed(Variant::Stable);
    let mut streams = Vec::new();
    for _ in 0..n {
        let req = Request::get("http://svc.test/hold").body(()).unwrap();
        *send = send.clone().ready().await.unwrap();
        let (answer, stream) = send.send_request(req, true).unwrap();
        streams.push((answer, stream));
    }
    until("the proxy to route every stream", async || {
        proxy.routed(Variant::Stable) == routed + n as u64
    })
    .await;
    for (_, stream) in &mut streams {
        stream.send_reset(::h2::Reason::CANCEL);
    }
    until("the proxy to let the cancelled streams go", async || {
        proxy.in_flight(Variant::Stable) == 0
    })
    .await;
}

/// `GET /` on a raw h2c connection: the answer's body.
async fn raw_get(send: &mut ::h2::client::SendRequest<Bytes>) -> String {
    let req = Request::get("http://svc.test/").body(()).unwrap();
    *send = send.clone().ready().await.unwrap();
    let (answer, _) = send.send_request(req, true).unwrap();
    let resp = tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    String::from_utf8(got).unwrap()
}

/// A "rapid reset" flood: a client that opens streams and cancels them before their
/// answers, each already gone on to a version at no cost to it. Its connection is
/// closed once it has cancelled more than 200, most of its streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancelling_most_of_many_streams_is_closed() {
    let (stable, _) = holding_backend("stable", Arc::new(Notify::new())).await;
    let (proxy, server) = proxy(ProxyOptions::default()).await;
    proxy.set_backends(Variant::Stable, &[stable]);
    let (mut send, conn) = raw_h2c(server.local_addr()).await;
    for _ in 0..4 {
        open_and_cancel(&proxy, &mut send, 50).await;
    }
    // 200 cancelled: not yet over the limit.
    assert!(!conn.is_finished());
    assert_eq!(raw_get(&mut send).await, "stable");
    open_and_cancel(&proxy, &mut send, 50).await;
    tokio::time::timeout(PATIENCE, conn)
        .await
        .expect("the flooding connection was never closed")
        .unwrap()
        .ok();
    // Other clients go on.
    let (mut other, _) = raw_h2c(server.local_addr()).await;
    assert_eq!(raw_get(&mut other).await, "stable");
}

/// A client that cancels streams among many it lets finish (a browser leaving pages,
/// gRPC deadlines) keeps its connection, even past 200 cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancelling_a_minority_of_its_streams_keeps_its_connection() {
    let (stable, _) = holding_backend("stable", Arc::new(Notify::new())).await;
    let (proxy, server) = proxy(ProxyOptions::default()).await;
    proxy.set_backends(Variant::Stable, &[stable]);
    let (mut send, conn) = raw_h2c(server.local_addr()).await;
    for _ in 0..5 {
        for _ in 0..60 {
            assert_eq!(raw_get(&mut send).await, "stable");
        }
        open_and_cancel(&proxy, &mut send, 50).await;
    }
    // 250 cancelled of 550.
    assert_eq!(raw_get(&mut send).await, "stable");
    assert!(!conn.is_finished());
}

/// An h2c version on the `h2` crate's defaults, which announce no header list limit:
/// it answers every request `ok`, and tells in `x-seen-fields` how many header
/// fields it got.
async fn h2c_version_without_limits() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Ok(mut conn) = ::h2::server::handshake(stream).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let fields = req.headers().len().to_string();
                    let resp = Response::builder()
                        .header("x-seen-fields", fields)
                        .body(())
                        .unwrap();
                    if let Ok(mut body) = respond.send_response(resp, false) {
                        let _ = body.send_data(Bytes::from_static(b"ok"), true);
                    }
                }
            });
        }
    });
    addr
}

/// A version that sets no header list limit gets every head the proxy took from its
/// client. HTTP/2 counts 32 bytes more per field than an HTTP/1.1 head's bytes, so a
/// head of many fields within `max_header_bytes` came out larger than it in HTTP/2,
/// and was refused 431 as if the version had said so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_sets_no_header_limit_gets_every_head_the_proxy_took() {
    let version = h2c_version_without_limits().await;
    let (proxy, server) = proxy(ProxyOptions {
        upstream: UpstreamProtocol::H2c,
        limits: ProxyLimits {
            max_header_bytes: 4096,
            ..ProxyLimits::default()
        },
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[version]);
    // 60 fields of 40 bytes: 2.4 KiB as HTTP/1.1 sends it, 4.3 KiB as HTTP/2 counts.
    let mut req = Request::get(format!("http://{}/", server.local_addr()));
    for n in 0..60 {
        req = req.header(format!("x-field-{n:02}"), "v".repeat(28));
    }
    let resp = common::client()
        .request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let fields: usize = resp.headers()["x-seen-fields"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(fields >= 60, "{fields} fields reached the version");
}

/// Review (flood guard): hyper's GOAWAY refuses new streams only once the client has
/// acknowledged its PING. A flooding client that never does keeps its connection
/// open past the GOAWAY: the streams it opens then reach no version, and the
/// connection is cut at the header timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_client_that_ignores_the_goaway_reaches_no_version_and_is_cut() {
    let (stable, _) = holding_backend("stable", Arc::new(Notify::new())).await;
    let (proxy, server) = proxy(ProxyOptions {
        limits: ProxyLimits {
            header_timeout: Duration::from_millis(500),
            ..ProxyLimits::default()
        },
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[stable]);
    let tcp = raw::connect(server.local_addr()).await;
    let (mut rd, mut wr) = tcp.into_split();
    // Reads every frame to the end, and never acknowledges a PING.
    let reader = tokio::spawn(async move {
        let mut head = [0u8; 9];
        loop {
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                return;
            }
        }
    });
    let mut id = 1u32;
    let mut open_and_cancel = async |cancel: bool| {
        let routed = proxy.routed(Variant::Stable);
        let ids: Vec<u32> = (0..50).map(|n| id + 2 * n).collect();
        id += 100;
        for &stream in &ids {
            wr.write_all(&raw::get(stream, "/hold")).await.unwrap();
        }
        if !cancel {
            return;
        }
        until("the proxy to route every stream", async || {
            proxy.routed(Variant::Stable) == routed + 50
        })
        .await;
        for &stream in &ids {
            // RST_STREAM with CANCEL.
            let _ = wr
                .write_all(&raw::frame(raw::RST_STREAM, 0, stream, &8u32.to_be_bytes()))
                .await;
        }
        until("the proxy to let the cancelled streams go", async || {
            proxy.in_flight(Variant::Stable) == 0
        })
        .await;
    };
    for _ in 0..5 {
        open_and_cancel(true).await;
    }
    // 250 cancelled: the GOAWAY is sent; the client opens more streams anyway, and
    // goes on opening one every 50 ms (its pacing is the behaviour under test), so
    // the connection is never idle.
    open_and_cancel(false).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !reader.is_finished() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the flooding connection was never cut"
        );
        let _ = wr.write_all(&raw::get(id, "/hold")).await;
        id += 2;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        proxy.routed(Variant::Stable),
        250,
        "no stream past the flood reached the version"
    );
}

/// Review: an `Upgrade` header that `Connection` does not name asks for no upgrade
/// (RFC 9110 7.8). Taken for one, the request went to an h2c version in HTTP/1.1,
/// failed, and was counted as the version's error: any client could fail a canary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_upgrade_header_is_no_upgrade_and_fails_no_h2c_version() {
    let version = h2c_version_without_limits().await;
    let (proxy, server) = proxy(ProxyOptions {
        upstream: UpstreamProtocol::H2c,
        ..ProxyOptions::default()
    })
    .await;
    proxy.set_backends(Variant::Stable, &[version]);
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: svc.test\r\nUpgrade: websocket\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(PATIENCE, tcp.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (1, 0));
}

/// A stream as a version on the h2 crate's server gets it: the request, and its answer's
/// sender.
type Streamed = (Request<::h2::RecvStream>, ::h2::server::SendResponse<Bytes>);

/// An h2c version on the h2 crate's server, allowing `max_streams` at once if given:
/// each stream goes to the test as it comes, to answer (or not) as it chooses. Its
/// windows are h2's defaults (64 KiB), and it gives back none the test does not.
async fn streamed_version(
    max_streams: Option<u32>,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Streamed>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (streams, streamed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let streams = streams.clone();
            tokio::spawn(async move {
                let mut builder = ::h2::server::Builder::new();
                if let Some(n) = max_streams {
                    builder.max_concurrent_streams(n);
                }
                let mut conn = builder.handshake(tcp).await.unwrap();
                while let Some(Ok(stream)) = conn.accept().await {
                    let _ = streams.send(stream);
                }
            });
        }
    });
    (addr, streamed)
}

/// Review (h2c): a client that left while the proxy waited for the version's window to
/// send more of its upload left the version's stream open for good: the rest of the
/// body is sent by a task of its own once the answer began, and that task, waiting for
/// send capacity, never looked at the client again. Now the answer's end tells it: a
/// client gone before the answer's end resets the version's stream with `CANCEL`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_upload_resets_the_versions_stream_while_its_window_is_full() {
    let (version, mut streams) = streamed_version(None).await;
    let (_proxy, server) = h2c_proxy(version).await;
    let (mut send, _conn) = raw_h2c(server.local_addr()).await;
    let req = Request::post("http://svc.test/upload").body(()).unwrap();
    let (answer, mut upload) = send.send_request(req, false).unwrap();
    let (req, mut respond) = tokio::time::timeout(PATIENCE, streams.recv())
        .await
        .expect("the request reached the version")
        .unwrap();
    // The version answers at once and reads the upload without giving back its window.
    let mut out = respond.send_response(Response::new(()), false).unwrap();
    out.send_data(Bytes::from_static(b"abc"), false).unwrap();
    let answer = tokio::time::timeout(PATIENCE, answer)
        .await
        .expect("the answer's head came")
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    // Twice the version's window: the proxy's side takes it all, the version half.
    upload
        .send_data(Bytes::from(vec![7u8; 128 * 1024]), false)
        .unwrap();
    let mut body = req.into_body();
    let mut taken = 0;
    while taken < 65_535 {
        let data = tokio::time::timeout(PATIENCE, body.data())
            .await
            .expect("the upload reached the version up to its window")
            .unwrap()
            .unwrap();
        taken += data.len();
    }
    // The client leaves.
    drop(answer);
    drop(upload);
    let reset = tokio::time::timeout(PATIENCE, std::future::poll_fn(|cx| out.poll_reset(cx)))
        .await
        .expect("the version's stream was reset")
        .unwrap();
    assert_eq!(reset, ::h2::Reason::CANCEL);
}

/// A stream the version answered whole while its request's body is still on its way
/// stays open on the version's side, and so holds one of the streams the version
/// allows: the pool keeps counting it until nothing more is sent on it. Counted only
/// until its answer's end, the next request went on the same connection, over the
/// version's limit of one, and waited there for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_still_uploading_after_its_answer_keeps_its_place_on_the_connection() {
    let (version, mut streams) = streamed_version(Some(1)).await;
    let (proxy, server) = h2c_proxy(version).await;
    let (mut send, _conn) = raw_h2c(server.local_addr()).await;
    let req = Request::post("http://svc.test/upload").body(()).unwrap();
    let (answer, _upload) = send.send_request(req, false).unwrap();
    let (_req, mut respond) = tokio::time::timeout(PATIENCE, streams.recv())
        .await
        .expect("the upload reached the version")
        .unwrap();
    let mut out = respond.send_response(Response::new(()), false).unwrap();
    out.send_data(Bytes::from_static(b"done"), true).unwrap();
    let answer = tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap()
        .unwrap();
    let mut body = answer.into_body();
    let mut got = Vec::new();
    while let Some(data) = tokio::time::timeout(PATIENCE, body.data())
        .await
        .expect("the whole answer came")
    {
        got.extend_from_slice(&data.unwrap());
    }
    assert_eq!(got, b"done");
    // The upload stays open. Another client's request must still be served.
    let other = h2c(server.local_addr()).await;
    let call = tokio::spawn(async move { get(&other, "/next", None).await.0 });
    let (next, mut respond) = tokio::time::timeout(PATIENCE, streams.recv())
        .await
        .expect("the next request reached the version")
        .unwrap();
    assert_eq!(next.uri().path(), "/next");
    respond.send_response(Response::new(()), true).unwrap();
    assert_eq!(call.await.unwrap(), StatusCode::OK);
    assert_eq!(proxy.totals().stable.errors, 0);
}

/// Review (h2c): a version shutting down stops listening, then closes its connection
/// gracefully with the request unprocessed (`GOAWAY`, `NO_ERROR`, last stream 0). Its
/// second try finds no listener. That is no failure of the version's, as any request
/// a graceful close leaves that cannot be sent again; it was charged as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_a_graceful_close_left_is_not_charged_when_its_retry_finds_no_listener() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        drop(listener);
        let mut conn = RawVersion::accept(tcp).await;
        let (stream, _) = conn.request().await.expect("the request");
        assert_eq!(stream, 1);
        conn.go_away(0, raw::NO_ERROR).await;
        while conn.request().await.is_some() {}
    });
    let (proxy, server) = h2c_proxy(addr).await;
    let send = h2c(server.local_addr()).await;
    assert_eq!(get(&send, "/", None).await.0, StatusCode::BAD_GATEWAY);
    let s = proxy.totals().stable;
    assert_eq!(s.errors, 0, "charged to the version");
}

/// A `CONNECT` toward h2c versions is refused by the proxy (`501`), never sent as a
/// stream the version cannot make a tunnel of, and counts against no version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_toward_h2c_versions_is_refused_and_counts_against_none() {
    let handler: Handler = Arc::new(|_req| Box::pin(async { text("ok") }));
    let (version, accepted) = h2c_version(None, None, handler).await;
    let (proxy, server) = h2c_proxy(version).await;
    let mut tcp = TcpStream::connect(server.local_addr()).await.unwrap();
    tcp.write_all(b"CONNECT svc.test:443 HTTP/1.1\r\nHost: svc.test:443\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(PATIENCE, tcp.read_exact(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 501");
    let s = proxy.totals().stable;
    assert_eq!((s.requests, s.errors), (0, 0));
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "nothing reached the version"
    );
}
