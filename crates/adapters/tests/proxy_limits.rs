//! The proxy's limits (`traffic.proxy.limits`) with real sockets on loopback: a head
//! dribbled past the header timeout and an idle kept-alive connection are closed, an
//! oversized head gets 431 and an oversized body 413, a connection over
//! `max_connections` gets 503 at once, stopping answers what is in flight while idle
//! connections close at once, and an answer slower than both timeouts is not cut.
//!
//! Timeouts are short and configured; each test waits for the close itself (EOF),
//! never for a fixed time, except where the behaviour is that a time passes without a
//! close (said at that line).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart_adapters::proxy::{Proxy, ProxyOptions, ProxyServer};
use rampart_core::Variant;
use rampart_core::policy::ProxyLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use common::backend;

/// The longest any test waits for something that must happen (a close, an answer):
/// far above the configured timeouts, so only a missing feature reaches it.
const PATIENCE: Duration = Duration::from_secs(10);

async fn proxy_with(limits: ProxyLimits) -> (Proxy, ProxyServer, Arc<Notify>) {
    let hold = Arc::new(Notify::new());
    let stable = backend("stable", hold.clone()).await;
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[stable]);
    (proxy, server, hold)
}

/// Reads one response: its status and body, or `None` at EOF or a reset before a
/// complete head.
async fn response(conn: &mut TcpStream) -> Option<(u16, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        match tokio::time::timeout(PATIENCE, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no answer and no close in {PATIENCE:?}"),
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = buf[end..].to_vec();
    while body.len() < length {
        match tokio::time::timeout(PATIENCE, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => body.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("body incomplete after {PATIENCE:?}"),
        }
    }
    Some((status, body))
}

/// Whether the proxy closes `conn` (EOF or reset) within [`PATIENCE`], reading and
/// dropping whatever it sends first.
async fn closed(conn: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 4096];
    loop {
        match tokio::time::timeout(PATIENCE, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dribbled_head_is_closed_at_the_header_timeout_new_or_kept_alive() {
    let limits = ProxyLimits {
        header_timeout: Duration::from_millis(200),
        idle_timeout: Duration::from_secs(600),
        ..ProxyLimits::default()
    };
    let (_proxy, server, _) = proxy_with(limits).await;
    let addr = server.local_addr();

    // A new connection that starts its head and never finishes it.
    let mut fresh = TcpStream::connect(addr).await.unwrap();
    fresh
        .write_all(b"GET / HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    assert!(closed(&mut fresh).await, "the dribbled head was not closed");

    // A kept-alive connection: one answer, then a head begun and never finished, far
    // inside the idle timeout.
    let mut kept = TcpStream::connect(addr).await.unwrap();
    kept.write_all(GET).await.unwrap();
    assert_eq!(response(&mut kept).await.unwrap().0, 200);
    kept.write_all(b"GET / HTTP/1.1\r\nx-slow: ").await.unwrap();
    assert!(
        closed(&mut kept).await,
        "a kept-alive connection's dribbled head was not closed"
    );
}

/// Review: the test above writes its partial head once, so a timer that restarted at
/// every byte read would pass it. Here the head comes one byte at a time, each well
/// inside the header timeout, for ten times as long as it (40 bytes, one every
/// quarter timeout): the connection must be
/// closed before the dribble ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_dribbled_one_byte_at_a_time_is_closed_at_the_header_timeout() {
    let timeout = Duration::from_millis(200);
    let limits = ProxyLimits {
        header_timeout: timeout,
        idle_timeout: Duration::from_secs(600),
        ..ProxyLimits::default()
    };
    let (_proxy, server, _) = proxy_with(limits).await;
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    let head = b"GET / HTTP/1.1\r\nx-slow: "
        .iter()
        .chain([b'a'; 14].iter());
    let mut cut = false;
    // The pacing is the client's behaviour under test, not a wait for the proxy.
    for (sent, byte) in head.enumerate() {
        if sent > 0 {
            tokio::time::sleep(timeout / 4).await;
        }
        if conn.write_all(&[*byte]).await.is_err() {
            cut = true;
            break;
        }
        // Anything the proxy says (an error answer, a close) ends the head.
        let mut probe = [0u8; 256];
        if tokio::time::timeout(Duration::ZERO, conn.read(&mut probe))
            .await
            .is_ok()
        {
            cut = true;
            break;
        }
    }
    assert!(
        cut,
        "a head dribbled for 10x the header timeout was never cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_at_the_idle_timeout() {
    let limits = ProxyLimits {
        header_timeout: Duration::from_secs(600),
        idle_timeout: Duration::from_millis(200),
        ..ProxyLimits::default()
    };
    let (proxy, server, _) = proxy_with(limits).await;
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(GET).await.unwrap();
    assert_eq!(response(&mut conn).await.unwrap().0, 200);
    assert!(closed(&mut conn).await, "the idle connection stayed open");
    while proxy.open_connections() != 0 {
        tokio::task::yield_now().await;
    }
}

/// The header timeout starts at a kept-alive connection's first byte, not at its
/// previous answer: a client idle for longer than the header timeout (but within the
/// idle timeout) is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_alive_connection_idle_past_the_header_timeout_is_still_served() {
    let limits = ProxyLimits {
        header_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_secs(600),
        ..ProxyLimits::default()
    };
    let (_proxy, server, _) = proxy_with(limits).await;
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(GET).await.unwrap();
    assert_eq!(response(&mut conn).await.unwrap().0, 200);
    // The behaviour under test is time passing with nothing sent: five header
    // timeouts of idleness.
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.write_all(GET).await.unwrap();
    assert_eq!(
        response(&mut conn).await.map(|r| r.0),
        Some(200),
        "closed while idle, at the header timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_head_gets_431_complete_or_not() {
    let limits = ProxyLimits {
        max_header_bytes: 8 << 10,
        ..ProxyLimits::default()
    };
    let (proxy, server, _) = proxy_with(limits).await;
    let addr = server.local_addr();
    let big = "a".repeat(12 << 10);

    // Complete, and over the limit.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut conn).await.map(|r| r.0), Some(431));

    // Never complete: the buffer fills first.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-big: {big}").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut conn).await.map(|r| r.0), Some(431));

    // Just under it: served.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let fits = "a".repeat(7 << 10);
    conn.write_all(format!("GET / HTTP/1.1\r\nhost: x\r\nx-fits: {fits}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    assert_eq!(response(&mut conn).await.map(|r| r.0), Some(200));
    assert_eq!(proxy.totals().stable.requests, 1, "431s reach no version");
}

/// A backend that reads the whole body before it answers with the body's length.
async fn reading_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let n = match req.into_body().collect().await {
                        Ok(b) => b.to_bytes().len(),
                        Err(_) => 0,
                    };
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(n.to_string()))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_413_declared_or_streamed() {
    let limits = ProxyLimits {
        max_body_bytes: Some(1024),
        ..ProxyLimits::default()
    };
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[reading_backend().await]);
    let addr = server.local_addr();

    // Declared too large: refused before it is routed.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 4096\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(response(&mut conn).await.map(|r| r.0), Some(413));

    // Chunked, no length declared: refused when it grows past the limit.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", "b".repeat(0x200));
    for _ in 0..4 {
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    assert_eq!(response(&mut conn).await.map(|r| r.0), Some(413));

    // At the limit: forwarded whole.
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let body = "c".repeat(1024);
    conn.write_all(
        format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 1024\r\n\r\n{body}").as_bytes(),
    )
    .await
    .unwrap();
    let (status, answer) = response(&mut conn).await.unwrap();
    assert_eq!((status, answer.as_slice()), (200, b"1024".as_slice()));

    let stable = proxy.totals().stable;
    assert_eq!(
        (stable.requests, stable.errors),
        (1, 0),
        "a client's oversized body is not the version's error"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_over_max_connections_gets_503_at_once() {
    let limits = ProxyLimits {
        max_connections: 3,
        ..ProxyLimits::default()
    };
    let (proxy, server, _) = proxy_with(limits).await;
    let addr = server.local_addr();
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    while proxy.open_connections() < 3 {
        tokio::task::yield_now().await;
    }
    // The fourth: an answer and a close, not a wait.
    let mut over = TcpStream::connect(addr).await.unwrap();
    let _ = over.write_all(GET).await;
    // An answer, or, when the client's request raced the close, a reset: at once
    // either way.
    if let Some((status, body)) = response(&mut over).await {
        assert_eq!(status, 503);
        assert_eq!(body, b"rampart: too many open connections\n");
    }
    assert!(closed(&mut over).await);
    assert_eq!(proxy.refused_connections(), 1);
    // What an operator sees on /metrics.
    let exposition =
        rampart_adapters::telemetry::Telemetry::new("edge", Arc::new(proxy.clone())).render();
    assert!(
        exposition.contains("rampart_proxy_refused_connections_total{service=\"edge\"} 1\n"),
        "{exposition}"
    );

    // The held ones are served, and a slot freed is a slot taken.
    held[0].write_all(GET).await.unwrap();
    assert_eq!(response(&mut held[0]).await.map(|r| r.0), Some(200));
    drop(held.pop());
    while proxy.open_connections() > 2 {
        tokio::task::yield_now().await;
    }
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(GET).await.unwrap();
    assert_eq!(response(&mut next).await.map(|r| r.0), Some(200));
}

/// Stopping (`rampart stop`, SIGTERM): idle keep-alive connections close at once,
/// the request in flight is answered, a new client is refused rather than queued,
/// and the stop returns when the last connection is gone, well before its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_answers_in_flight_requests_and_closes_idle_connections_at_once() {
    let (proxy, server, hold) = proxy_with(ProxyLimits::default()).await;
    let addr = server.local_addr();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(GET).await.unwrap();
    assert_eq!(response(&mut idle).await.unwrap().0, 200);
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    while proxy.in_flight(Variant::Stable) == 0 {
        tokio::task::yield_now().await;
    }

    let stopping = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            server
                .stop_accepting(&proxy, Duration::from_secs(600), false)
                .await
        }
    });
    assert!(closed(&mut idle).await, "the idle connection was kept open");
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "a new client was queued on a stopping proxy"
    );
    assert!(!stopping.is_finished(), "stopped with a request in flight");
    hold.notify_one();
    let (status, body) = response(&mut busy).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, b"stable".as_slice()));
    assert!(closed(&mut busy).await);
    tokio::time::timeout(PATIENCE, stopping)
        .await
        .expect("the stop waited for its timeout")
        .unwrap();
}

/// The timers run only while the proxy waits for a request head: an answer slower
/// than both (a body that comes 500 ms after its headers, timeouts of 100 ms) is
/// delivered whole, and the connection serves the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_answer_is_not_cut_by_the_head_timers() {
    let limits = ProxyLimits {
        header_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(100),
        ..ProxyLimits::default()
    };
    let slow = common::slow_body_backend("slow", Duration::from_millis(500)).await;
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[slow]);
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    for _ in 0..2 {
        conn.write_all(GET).await.unwrap();
        let (status, body) = response(&mut conn).await.unwrap();
        assert_eq!((status, body.as_slice()), (200, b"slow".as_slice()));
    }
}
