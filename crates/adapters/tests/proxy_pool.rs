//! The proxy's HTTP/1.1 connections to the versions: kept alive and reused, never
//! reused mid-answer, and let go when their version closes them or leaves the routes.
//! Real sockets on loopback; the version is a raw TCP server that counts its
//! connections, so what the proxy does on the wire is seen as a version sees it.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::proxy_to;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use hyper::{Request, StatusCode};
use rampart_adapters::proxy::{Proxy, ProxyOptions};
use rampart_core::Variant;
use rampart_core::policy::ProxyLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

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
                                        // Closed before it is told, so that a
                                        // count seen means a FIN sent.
                                        drop(stream);
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
                    // `POST /early` is answered at its head, its body read after.
                    let mut early_body = if head.starts_with("POST /early ") {
                        content_length(&head)
                    } else {
                        0
                    };
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
                    while early_body > 0 {
                        if pending.is_empty() {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => {
                                    counts.closed_by_peer.fetch_add(1, Ordering::SeqCst);
                                    return;
                                }
                                Ok(n) => pending.extend_from_slice(&buf[..n]),
                            }
                        }
                        let take = early_body.min(pending.len());
                        pending.drain(..take);
                        early_body -= take;
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

/// The `content-length` a request head names, or 0.
fn content_length(head: &str) -> usize {
    head.lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// `GET /small` through the proxy at `addr` is answered `ok`.
async fn small_ok(addr: SocketAddr) {
    assert_eq!(
        common::get_body(addr, "/small", None).await,
        (StatusCode::OK, "ok".to_owned())
    );
}

/// Requests one after another use one connection to their version, whichever client
/// connection they come on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_one_after_another_share_one_connection_to_the_version() {
    let (version, seen) = raw_version(Keep::Alive).await;
    let (_proxy, server) = proxy_to(version).await;
    for _ in 0..10 {
        small_ok(server.local_addr()).await;
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
        small_ok(server.local_addr()).await;
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
        small_ok(server.local_addr()).await;
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
    small_ok(server.local_addr()).await;
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
        small_ok(server.local_addr()).await;
        common::until("the version to close its idle connection", async || {
            seen.closed_idle.load(Ordering::SeqCst) == n
        })
        .await;
    }
    assert_eq!(seen.accepted.load(Ordering::SeqCst), 5);
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (5, 0));
}

/// Reads one answer with a `content-length` from `conn`: its status line and body.
async fn read_answer(conn: &mut TcpStream) -> (String, String) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let length = content_length(&head);
            if got.len() >= end + 4 + length {
                let body = String::from_utf8_lossy(&got[end + 4..end + 4 + length]).into_owned();
                let status = head.lines().next().unwrap_or_default().to_owned();
                return (status, body);
            }
        }
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the proxy closed the connection mid-answer: {got:?}");
        got.extend_from_slice(&buf[..n]);
    }
}

/// `GET /small` sent next on `conn` (after an upload) is answered `ok`.
async fn next_small_ok(conn: &mut TcpStream) {
    conn.write_all(b"GET /small HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let (status, body) = tokio::time::timeout(BOUND, read_answer(conn))
        .await
        .expect("the next request on the connection was never answered");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
}

/// How long a test waits for the proxy to answer or close.
const BOUND: std::time::Duration = std::time::Duration::from_secs(20);

/// A connection to the proxy at `addr` that sent `POST /early` announcing a body of
/// `length` bytes and the first of them, `sent`, and read the version's answer, which
/// came before the body's end.
async fn answered_early(addr: SocketAddr, length: usize, sent: &[u8]) -> TcpStream {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(
        format!("POST /early HTTP/1.1\r\nhost: x\r\ncontent-length: {length}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    conn.write_all(sent).await.unwrap();
    let (status, body) = tokio::time::timeout(BOUND, read_answer(&mut conn))
        .await
        .expect("the early answer never came");
    assert_eq!((status.as_str(), body.as_str()), ("HTTP/1.1 200 OK", "ok"));
    conn
}

/// A version that answers an upload at its head, before its body: the client gets
/// the answer, sends the rest of its body, and its connection goes on to its next
/// request. The upstream connection still has the body to write when the answer
/// ends; put back in the pool then, no one would write it, and the client would
/// wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_answered_before_its_body_is_sent_whole_and_the_connection_goes_on() {
    let (version, seen) = raw_version(Keep::Alive).await;
    let (proxy, server) = proxy_to(version).await;
    let upload = 1024 * 1024;
    let mut conn = answered_early(server.local_addr(), upload, b"").await;
    // In flight until its body is written: a drain of the version waits for it.
    let short = std::time::Duration::from_millis(300);
    assert!(!proxy.drain(Variant::Stable, short).await);
    tokio::time::timeout(BOUND, conn.write_all(&vec![b'u'; upload]))
        .await
        .expect("the proxy stopped reading the upload once it was answered")
        .unwrap();
    next_small_ok(&mut conn).await;
    assert!(proxy.drain(Variant::Stable, BOUND).await);
    // Another client's requests, and the upstream connection the upload went on.
    for _ in 0..3 {
        small_ok(server.local_addr()).await;
    }
    assert_eq!(seen.closed_by_peer.load(Ordering::SeqCst), 0);
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (5, 0));
}

/// A client that stalls in an upload its version already answered is still held to
/// `body_timeout`: its connection is closed, not left open forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_upload_answered_early_is_closed_at_the_body_timeout() {
    let (version, seen) = raw_version(Keep::Alive).await;
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits: ProxyLimits {
                body_timeout: std::time::Duration::from_millis(200),
                idle_timeout: std::time::Duration::from_secs(600),
                ..ProxyLimits::default()
            },
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[version]);
    let mut conn = answered_early(server.local_addr(), 100_000, b"abc").await;
    let mut rest = [0u8; 64];
    let read = tokio::time::timeout(BOUND, conn.read(&mut rest))
        .await
        .expect("the stalled upload's connection was never closed");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    // The upstream connection, mid-body, is closed too, never pooled.
    common::until("the version to see its connection closed", async || {
        seen.closed_by_peer.load(Ordering::SeqCst) == 1
    })
    .await;
    assert_eq!(proxy.body_timeouts(), 1, "counted as a body timeout");
}

/// An upload its version answered early that keeps coming, slowly, is written whole
/// however long it takes: only a version that stops reading it is given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_upload_answered_early_that_keeps_coming_is_never_cut() {
    let (version, seen) = raw_version(Keep::Alive).await;
    let (_proxy, server) = proxy_to(version).await;
    let chunks = 35;
    let mut conn = answered_early(server.local_addr(), chunks * 10, b"").await;
    // The pacing is the client's behaviour under test: past the 30 s the proxy
    // gives a version that stops reading, one chunk a second.
    for _ in 0..chunks {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        conn.write_all(&[b'u'; 10]).await.unwrap();
    }
    next_small_ok(&mut conn).await;
    assert_eq!(seen.closed_by_peer.load(Ordering::SeqCst), 0);
}

/// A client that leaves mid-upload after its answer leaves nothing behind: its
/// connection and the upstream connection its body was going on are closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_an_upload_answered_early_leaves_no_connection_open() {
    let (version, seen) = raw_version(Keep::Alive).await;
    let (proxy, server) = proxy_to(version).await;
    let conn = answered_early(server.local_addr(), 1_000_000, &vec![b'u'; 200_000]).await;
    drop(conn);
    common::until("the client's connection closed at the proxy", async || {
        proxy.open_connections() == 0
    })
    .await;
    common::until("the upstream connection closed", async || {
        seen.closed_by_peer.load(Ordering::SeqCst) == 1
    })
    .await;
}

/// Sockets in CLOSE_WAIT (the peer closed, this side not yet) to `port` on loopback,
/// from the kernel's table: a connection its version closed that the proxy holds on.
fn close_wait_to(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let remote_port = fields
                .get(2)
                .and_then(|remote| remote.split_once(':'))
                .and_then(|(_, port)| u16::from_str_radix(port, 16).ok());
            remote_port == Some(port) && fields.get(3) == Some(&"08")
        })
        .count()
}

/// An idle connection its version closes is closed by the proxy too, with no request
/// coming to notice it: no socket is left half-closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_its_version_closed_is_closed_without_another_request() {
    let (version, seen) = raw_version(Keep::IdleFor(std::time::Duration::from_millis(20))).await;
    let (_proxy, server) = proxy_to(version).await;
    small_ok(server.local_addr()).await;
    common::until("the version to close its idle connection", async || {
        seen.closed_idle.load(Ordering::SeqCst) == 1
    })
    .await;
    common::until("the proxy to close its side", async || {
        close_wait_to(version.port()) == 0
    })
    .await;
}

/// A connection that comes back from its request after its endpoint left the routes
/// is closed then, not pooled for an endpoint no request goes to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_back_from_an_endpoint_that_left_the_routes_is_closed() {
    let (old, seen_old) = raw_version(Keep::Alive).await;
    let (new, _) = raw_version(Keep::Alive).await;
    let (proxy, server) = proxy_to(old).await;
    // An upload answered early keeps its connection busy until its body is written.
    let mut conn = answered_early(server.local_addr(), 3, b"").await;
    proxy.set_backends(Variant::Stable, &[new]);
    conn.write_all(b"abc").await.unwrap();
    common::until("the old endpoint's connection closed", async || {
        seen_old.closed_by_peer.load(Ordering::SeqCst) == 1
    })
    .await;
    next_small_ok(&mut conn).await;
}
