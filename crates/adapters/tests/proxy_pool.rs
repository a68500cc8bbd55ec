//! The proxy's HTTP/1.1 connections to the versions: kept alive and reused, never
//! reused mid-answer, and let go when their version closes them or leaves the routes.
//! Real sockets on loopback; the version is a raw TCP server that counts its
//! connections, so what the proxy does on the wire is seen as a version sees it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper::{Request, StatusCode};
use rampart_adapters::proxy::{Proxy, ProxyOptions};
use rampart_core::Variant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use common::client;

/// What a raw version saw: connections accepted, and connections it saw closed by
/// the proxy.
#[derive(Default)]
struct Seen {
    accepted: AtomicUsize,
    closed_by_peer: AtomicUsize,
    closed_idle: AtomicUsize,
}

/// How a raw version ends its connections.
#[derive(Clone, Copy)]
enum Keep {
    /// Open until the proxy closes them.
    Alive,
    /// Closed after each answer, without saying so (no `Connection: close`).
    OneAnswer,
    /// Closed once idle for this long after an answer (a keep-alive timeout shorter
    /// than the proxy's).
    IdleFor(std::time::Duration),
}

/// A version that answers `GET /small` with `ok` and `GET /big` with the head and
/// the first 64 KiB of a 4 MiB body, the rest never (until the proxy closes); its
/// connections kept as `keep` says.
async fn raw_version(keep: Keep) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let counts = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counts.accepted.fetch_add(1, Ordering::SeqCst);
            let counts = counts.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                let mut buf = [0u8; 4096];
                loop {
                    let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let read = match keep {
                            Keep::IdleFor(idle) => {
                                match tokio::time::timeout(idle, stream.read(&mut buf)).await {
                                    Ok(read) => read,
                                    Err(_) => {
                                        counts.closed_idle.fetch_add(1, Ordering::SeqCst);
                                        return;
                                    }
                                }
                            }
                            _ => stream.read(&mut buf).await,
                        };
                        match read {
                            Ok(0) | Err(_) => {
                                counts.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                                return;
                            }
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&pending[..end]).into_owned();
                    pending.drain(..end + 4);
                    let answer: Vec<u8> = if head.starts_with("GET /big ") {
                        let mut a = b"HTTP/1.1 200 OK\r\ncontent-length: 4194304\r\n\r\n".to_vec();
                        a.resize(a.len() + 64 * 1024, b'x');
                        a
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec()
                    };
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                    if matches!(keep, Keep::OneAnswer) {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

async fn proxy_to(stable: SocketAddr) -> (Proxy, rampart_adapters::proxy::ProxyServer) {
    let (proxy, server) = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
        .await
        .unwrap();
    proxy.set_backends(Variant::Stable, &[stable]);
    (proxy, server)
}

async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
    common::get_body(addr, path, None).await
}

/// Requests one after another use one connection to their version, whichever client
/// connection they come on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_one_after_another_share_one_connection_to_the_version() {
    let (version, seen) = raw_version(Keep::Alive).await;
    let (_proxy, server) = proxy_to(version).await;
    for _ in 0..10 {
        assert_eq!(
            get(server.local_addr(), "/small").await,
            (StatusCode::OK, "ok".to_owned())
        );
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 1);
}

/// An answer its client drops before its end leaves its connection mid-message: it is
/// closed, never given to the next request (which would read the rest of the old
/// body as its answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_dropped_before_its_end_never_leaves_its_connection_to_the_next_request() {
    let (version, seen) = raw_version(Keep::Alive).await;
    let (_proxy, server) = proxy_to(version).await;
    let big = client()
        .request(
            Request::get(format!("http://{}/big", server.local_addr()))
                .body(Empty::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(big.status(), StatusCode::OK);
    let mut body = big.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    assert!(!body.is_end_stream());
    drop(body);
    common::until("the version to see the cut connection closed", async || {
        seen.closed_by_peer.load(Ordering::SeqCst) == 1
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            get(server.local_addr(), "/small").await,
            (StatusCode::OK, "ok".to_owned())
        );
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 2);
}

/// A version that closes its connections after each answer (its keep-alive shorter
/// than the proxy's) fails no request, and none is counted against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_closing_idle_connections_fails_no_request() {
    let (version, seen) = raw_version(Keep::OneAnswer).await;
    let (proxy, server) = proxy_to(version).await;
    for _ in 0..20 {
        assert_eq!(
            get(server.local_addr(), "/small").await,
            (StatusCode::OK, "ok".to_owned())
        );
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 20);
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (20, 0));
}

/// An idle connection to an endpoint that leaves the routes is closed then, not held
/// until the version closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_to_an_endpoint_leaving_the_routes_are_closed() {
    let (old, seen_old) = raw_version(Keep::Alive).await;
    let (new, _) = raw_version(Keep::Alive).await;
    let (proxy, server) = proxy_to(old).await;
    assert_eq!(
        get(server.local_addr(), "/small").await,
        (StatusCode::OK, "ok".to_owned())
    );
    assert_eq!(seen_old.closed_by_peer.load(Ordering::SeqCst), 0);
    proxy.set_backends(Variant::Stable, &[new]);
    common::until("the old endpoint's idle connection closed", async || {
        seen_old.closed_by_peer.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// A pooled connection its version closed while it sat idle is not used: the request
/// goes on a new connection, and fails nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_its_version_closed_while_idle_fails_no_request() {
    let (version, seen) = raw_version(Keep::IdleFor(std::time::Duration::from_millis(20))).await;
    let (proxy, server) = proxy_to(version).await;
    for n in 1..=5 {
        assert_eq!(
            get(server.local_addr(), "/small").await,
            (StatusCode::OK, "ok".to_owned())
        );
        common::until("the version to close its idle connection", async || {
            seen.closed_idle.load(Ordering::SeqCst) == n
        })
        .await;
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 5);
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (5, 0));
}
