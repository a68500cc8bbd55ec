//! The proxy's limits (`traffic.proxy.limits`) with real sockets on loopback: a head
//! dribbled past the header timeout and an idle kept-alive connection are closed, an
//! oversized head gets 431 and an oversized body 413, a body stalled past the body
//! timeout gets 408 (and no version is blamed) while a slow but steady one, or one a
//! version is slow to read, goes through, a connection over `max_connections` gets
//! 503 at once, stopping answers what is in flight while idle connections close at
//! once, and an answer slower than both head timeouts is not cut.
//!
//! Timeouts are short and configured; each test waits for the close itself (EOF),
//! never for a fixed time, except where the behaviour is that a time passes without a
//! close (said at that line).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

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
    reading_backend_with(Duration::ZERO, None).await
}

/// [`reading_backend`], starting to read each body only `wait` after its head (a
/// version slow to take a body), and with a body-read timeout of its own, `patience`:
/// a body not whole by then is dropped with its connection, unanswered, as a version
/// whose server gives up on a slow client does.
async fn reading_backend_with(wait: Duration, patience: Option<Duration>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    tokio::time::sleep(wait).await;
                    let body = req.into_body().collect();
                    let n = match patience {
                        Some(patience) => match tokio::time::timeout(patience, body).await {
                            Ok(Ok(b)) => b.to_bytes().len(),
                            Ok(Err(_)) => 0,
                            Err(_) => return Err(std::io::Error::other("body read timed out")),
                        },
                        None => body.await.map_or(0, |b| b.to_bytes().len()),
                    };
                    Ok(Response::new(Full::new(Bytes::from(n.to_string()))))
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
    // The first request's flight may end a moment after its client read the answer:
    // the next one is seen in flight only once that one has left.
    while proxy.in_flight(Variant::Stable) != 0 {
        tokio::task::yield_now().await;
    }
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

/// An idle keep-alive connection parks (gives up its HTTP state and waits with its
/// socket alone) and loses nothing: its next requests, even two sent in one write,
/// are answered in order, it parks again after them, and a stop closes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_connection_parks_and_serves_its_next_requests_whole() {
    let limits = ProxyLimits {
        header_timeout: Duration::from_millis(200),
        // Parks after a quarter of it; stays open for the test's length.
        idle_timeout: Duration::from_secs(600),
        ..ProxyLimits::default()
    };
    let (proxy, server, _) = proxy_with(limits).await;
    // A version that answers with the request line it got: a byte lost or reordered
    // on the way shows.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    proxy.set_backends(Variant::Stable, &[listener.local_addr().unwrap()]);
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let line = format!("{} {}", req.method(), req.uri().path());
                    Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(line))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    let addr = server.local_addr();
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(GET).await.unwrap();
    assert_eq!(response(&mut conn).await.unwrap(), (200, b"GET /".to_vec()));
    common::until("the idle connection parked", async || {
        proxy.parked_connections() == 1
    })
    .await;
    // Past the header timeout since its last answer: a parked connection's next head
    // has the header timeout from its first byte, as a kept-alive one's.
    conn.write_all(b"GET /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    // Both answers, whole and in order (`response` reads one answer at a time only).
    let count = |buf: &[u8], what: &[u8]| buf.windows(what.len()).filter(|w| *w == what).count();
    let mut answers = Vec::new();
    let mut chunk = [0u8; 4096];
    while !answers.ends_with(b"\r\n\r\nGET /b") {
        let n = tokio::time::timeout(PATIENCE, conn.read(&mut chunk))
            .await
            .expect("both answers")
            .unwrap();
        assert!(n > 0, "closed before both answers");
        answers.extend_from_slice(&chunk[..n]);
    }
    assert_eq!(count(&answers, b"HTTP/1.1 200 OK\r\n"), 2);
    assert_eq!(count(&answers, b"\r\n\r\nGET /a"), 1, "the first answer");
    assert!(answers.starts_with(b"HTTP/1.1 200 OK\r\n"));
    common::until("the connection parked again", async || {
        proxy.parked_connections() == 2
    })
    .await;
    let stopping = tokio::spawn({
        let proxy = proxy.clone();
        async move {
            server
                .stop_accepting(&proxy, Duration::from_secs(600), false)
                .await
        }
    });
    assert!(
        closed(&mut conn).await,
        "the parked connection was kept open"
    );
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

/// Issue 18: a client that sent its head and then stalled in its body held its
/// slot until the version's own body-read timeout, and the version's giving up (a
/// closed connection, so the proxy's 502) counted as the version's error: a client
/// could fail a canary by stalling uploads. Now the proxy gives up first, at
/// `body_timeout`, answers 408 and closes, and counts it apart: the version's error
/// count does not move, and a normal client is served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stalled_past_the_body_timeout_gets_408_and_is_not_the_versions_error() {
    let limits = ProxyLimits {
        body_timeout: Duration::from_millis(300),
        ..ProxyLimits::default()
    };
    // The version gives up on a body after 3 s, ten times the proxy's timeout.
    let version = reading_backend_with(Duration::ZERO, Some(Duration::from_secs(3))).await;
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[version]);
    let addr = server.local_addr();

    // Two clients that stall: one with a declared length, one chunked, each with a
    // first part of its body sent.
    let mut declared = TcpStream::connect(addr).await.unwrap();
    declared
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nfirst ten.")
        .await
        .unwrap();
    let mut chunked = TcpStream::connect(addr).await.unwrap();
    chunked
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\na\r\nfirst ten.\r\n")
        .await
        .unwrap();
    // Both are routed and on their way to the version before the normal client asks.
    let routed = async {
        while proxy.in_flight(Variant::Stable) < 2 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(PATIENCE, routed).await.unwrap();

    // A normal client at the same time: its whole body at once, served.
    let mut normal = TcpStream::connect(addr).await.unwrap();
    normal
        .write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello")
        .await
        .unwrap();
    let (status, body) = response(&mut normal).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, b"5".as_slice()));

    for (name, conn) in [("declared", &mut declared), ("chunked", &mut chunked)] {
        let (status, body) = response(conn)
            .await
            .unwrap_or_else(|| panic!("{name}: closed with no answer"));
        assert_eq!(
            (status, String::from_utf8_lossy(&body).as_ref()),
            (408, "rampart: request body timed out\n"),
            "{name}"
        );
        assert!(closed(conn).await, "{name}: the connection stayed open");
    }

    let stable = proxy.totals().stable;
    assert_eq!(
        (stable.requests, stable.errors),
        (1, 0),
        "a client's stalled body is not the version's request, nor its error"
    );
    assert_eq!(proxy.body_timeouts(), 2);
    let exposition =
        rampart_adapters::telemetry::Telemetry::new("edge", Arc::new(proxy.clone())).render();
    assert!(
        exposition.contains("rampart_proxy_body_timeouts_total{service=\"edge\"} 2\n"),
        "{exposition}"
    );
}

/// The body timeout is a deadline between chunks, not a cap on the upload: a body
/// that keeps coming, each chunk well inside the timeout, for four times as long as
/// the timeout, is forwarded whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_steady_body_is_not_cut_at_the_body_timeout() {
    let timeout = Duration::from_millis(500);
    let limits = ProxyLimits {
        body_timeout: timeout,
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
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: 20\r\n\r\n")
        .await
        .unwrap();
    // The pacing is the client's behaviour under test, not a wait for the proxy.
    for _ in 0..20 {
        tokio::time::sleep(timeout / 5).await;
        // A write that fails was cut: the answer below says how.
        if conn.write_all(b"s").await.is_err() {
            break;
        }
    }
    let (status, body) = response(&mut conn).await.unwrap();
    assert_eq!((status, body.as_slice()), (200, b"20".as_slice()));
    assert_eq!(proxy.body_timeouts(), 0);
}

/// Only the time the proxy waits on its client counts: a version that takes a large
/// body only a second after its head (far past the body timeout) makes the proxy stop
/// reading from the client, which is then not waited on, and the body goes through
/// whole. (The body is larger than the sockets on its way can buffer, so the proxy's
/// writes upstream block for that second.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_slow_to_take_a_body_does_not_time_its_client_out() {
    let limits = ProxyLimits {
        body_timeout: Duration::from_millis(200),
        max_body_bytes: None,
        ..ProxyLimits::default()
    };
    let slow = reading_backend_with(Duration::from_secs(1), None).await;
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
    let size = 64usize << 20;
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    let head = format!("POST / HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'b'; 1 << 20];
    for _ in 0..(size >> 20) {
        // A write that fails was cut: the answer below says how.
        if conn.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let (status, body) = response(&mut conn).await.unwrap();
    assert_eq!(
        (status, String::from_utf8_lossy(&body).into_owned()),
        (200, size.to_string())
    );
    assert_eq!(proxy.body_timeouts(), 0);
}
