//! Shared by the adapter tests: backends that answer with their name, a plain client,
//! and real servers (nginx, HAProxy) run from a temporary directory on loopback.

#![allow(dead_code)] // each test file uses its own subset

pub mod raw;

use std::convert::Infallible;
pub mod fake_provider;
pub mod processes;
pub mod servers;
pub mod sigv4;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// A backend that answers with its name; `/fail` answers 503; `/hold` waits for `release`.
pub async fn backend(name: &'static str, release: Arc<Notify>) -> SocketAddr {
    holding_backend(name, release).await.0
}

/// [`backend`], with the number of `/hold` requests it holds now.
pub async fn holding_backend(
    name: &'static str,
    release: Arc<Notify>,
) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let held = Arc::new(AtomicUsize::new(0));
    let holding = held.clone();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let release = release.clone();
            let held = held.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let release = release.clone();
                    let held = held.clone();
                    async move {
                        if req.uri().path() == "/hold" {
                            let released = release.notified();
                            held.fetch_add(1, Ordering::SeqCst);
                            released.await;
                            held.fetch_sub(1, Ordering::SeqCst);
                        }
                        let mut resp = Response::new(Full::new(Bytes::from(name)));
                        if req.uri().path() == "/fail" {
                            *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, holding)
}

/// A backend that sends its response headers at once and its body (its name) `delay`
/// later in a second write, like a service whose body is slow to compute: the time
/// to headers and the total time differ by `delay`.
pub async fn slow_body_backend(name: &'static str, delay: Duration) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    // One response per request head on this keep-alive connection.
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        let head =
                            format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", name.len());
                        if stream.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        let _ = stream.flush().await;
                        tokio::time::sleep(delay).await;
                        if stream.write_all(name.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    addr
}

/// An address nothing listens on: a connection to it is refused.
pub fn refusing() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// rampart's request-log receiver for `service`, on a free loopback UDP port.
pub async fn request_log(service: &str) -> rampart_adapters::accesslog::AccessLog {
    rampart_adapters::accesslog::AccessLog::bind("127.0.0.1:0".parse().unwrap(), service)
        .await
        .unwrap()
}

/// An h2c connection with prior knowledge to `addr`, its requests' bodies of type `B`.
pub async fn h2c<B>(addr: SocketAddr) -> hyper::client::conn::http2::SendRequest<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

/// A plain HTTP/1 client.
pub fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// `GET path` with `x-user: user` if given; the status and the body.
pub async fn get_body(addr: SocketAddr, path: &str, user: Option<&str>) -> (StatusCode, String) {
    let mut req = Request::get(format!("http://{addr}{path}"));
    if let Some(u) = user {
        req = req.header("x-user", u);
    }
    let resp = client()
        .request(req.body(Empty::new()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// How many of `users` distinct users reach the backend named `name`.
pub async fn share_of(addr: SocketAddr, name: &str, users: usize) -> usize {
    let mut n = 0;
    for u in 0..users {
        if get_body(addr, "/", Some(&format!("user-{u}"))).await.1 == name {
            n += 1;
        }
    }
    n
}

/// Polls until `ready` holds (a server came up), for at most 10 s.
pub async fn until(what: &str, mut ready: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ready().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether something accepts TCP connections at `addr`.
pub async fn listening(addr: SocketAddr) -> bool {
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

/// A proxy with default options in front of `stable` alone.
pub async fn proxy_to(
    stable: SocketAddr,
) -> (
    rampart_adapters::proxy::Proxy,
    rampart_adapters::proxy::ProxyServer,
) {
    let (proxy, server) = proxy_alone().await;
    proxy.set_backends(rampart_core::Variant::Stable, &[stable]);
    (proxy, server)
}

/// A proxy speaking `upstream` to `stable` alone, its options otherwise the defaults.
pub async fn proxy_speaking(
    stable: SocketAddr,
    upstream: rampart_core::policy::UpstreamProtocol,
) -> (
    rampart_adapters::proxy::Proxy,
    rampart_adapters::proxy::ProxyServer,
) {
    let (proxy, server) = rampart_adapters::proxy::Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        rampart_adapters::proxy::ProxyOptions {
            upstream,
            ..rampart_adapters::proxy::ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(rampart_core::Variant::Stable, &[stable]);
    (proxy, server)
}

/// A proxy with default options and no backend yet.
pub async fn proxy_alone() -> (
    rampart_adapters::proxy::Proxy,
    rampart_adapters::proxy::ProxyServer,
) {
    rampart_adapters::proxy::Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        rampart_adapters::proxy::ProxyOptions::default(),
    )
    .await
    .unwrap()
}
