//! The lean HTTP/1.1 path answers as hyper's path does, where a client, a version or
//! a hand-over can tell (each test found a difference in review, and fails without
//! its fix): pipelined requests then a half-close, a retirement while a request is at
//! the version, the variant header, `Date`, framing fields a version names in
//! `Connection`, targets hyper refuses or rewrites, a client leaving while its request
//! waits for a backend. Real sockets on loopback.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{proxy_alone, proxy_to, until};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use common::raw::{BOUND, Client, field, fields, read_head};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{Notify, mpsc};

/// A version that reports each request's head on `heads`, answers `/hold` once
/// `release` is notified, and otherwise answers by target (see the match).
async fn version(release: Arc<Notify>) -> (SocketAddr, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            let release = release.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some(head) = read_head(&mut stream, &mut pending).await else {
                        return;
                    };
                    let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
                    let released = release.notified();
                    let _ = tx.send(head);
                    let answer: Vec<u8> = match target.as_str() {
                        "/hold" => {
                            released.await;
                            b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nheld".to_vec()
                        }
                        "/spoof" => b"HTTP/1.1 200 OK\r\nx-rampart-variant: canary\r\ncontent-length: 2\r\n\r\nok".to_vec(),
                        "/hop-length" => b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: content-length\r\n\r\nok".to_vec(),
                        "/hop-chunked" => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: transfer-encoding\r\n\r\n2\r\nok\r\n0\r\n\r\n".to_vec(),
                        _ => format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{target}",
                            target.len()
                        )
                        .into_bytes(),
                    };
                    if stream.write_all(&answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Pipelined requests followed by the client's half-close (it has nothing more to
/// send: `printf '...' | nc`), which comes while the first is at the version: hyper's
/// path answers every request but the last (a busy connection with bytes of a next
/// request in its buffer does not look for EOF, see hyper's
/// `proto::h1::conn::mid_message_detect_eof`), so the first two are answered and the
/// first is not counted as abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_then_a_half_close_are_answered_as_on_hypers_path() {
    let release = Arc::new(Notify::new());
    let (version, mut heads) = version(release.clone()).await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\n\r\nGET /three HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    assert!(heads.recv().await.unwrap().starts_with("GET /hold "));
    // The client has sent all it will send while its first request is at the version.
    c.conn.shutdown().await.unwrap();
    release.notify_one();
    let one = c.answer(false).await.into_pair();
    assert_eq!(one.1, b"held");
    let two = c.answer(false).await.into_pair();
    assert_eq!(two.1, b"/two");
}

/// A hand-over (`stop_accepting(retire)`) while a request is in flight: as on hyper's
/// path (`forward` looks at `retiring` when the answer comes), its answer says
/// `Connection: close` and the connection closes after it, so the hand-over ends
/// with the answer instead of at its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_when_the_proxy_retires_is_answered_with_close() {
    let release = Arc::new(Notify::new());
    let (version, mut heads) = version(release.clone()).await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /hold HTTP/1.1\r\nhost: x\r\n\r\n").await;
    // The version holds the request.
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("GET /hold "), "{head}");
    let stop = server.stop_accepting(&proxy, BOUND, true);
    tokio::pin!(stop);
    // One poll: `retiring` is set before the first await of `stop_accepting`.
    let polled = std::future::poll_fn(|cx| Poll::Ready(stop.as_mut().poll(cx).is_pending())).await;
    assert!(polled);
    release.notify_one();
    let started = tokio::time::Instant::now();
    let client = async {
        let (head, body) = c.answer(false).await.into_pair();
        assert_eq!(body, b"held");
        assert_eq!(field(&head, "connection"), Some("close"), "{head}");
        assert!(c.closed().await);
    };
    tokio::join!(client, stop);
    assert!(
        started.elapsed() < BOUND / 2,
        "the hand-over waited for its timeout"
    );
}

/// A version's own `x-rampart-variant` is replaced, as hyper's path `insert`s it:
/// the client sees one, the proxy's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versions_own_variant_header_is_replaced_not_doubled() {
    let (version, _heads) = version(Arc::new(Notify::new())).await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /spoof HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (head, _) = c.answer(false).await.into_pair();
    assert_eq!(fields(&head, "x-rampart-variant"), vec!["stable"], "{head}");
}

/// An answer always carries a `Date` (hyper's server adds one, RFC 9110 6.6.1: an
/// origin with a clock must send it; a proxy adds it when missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_without_date_gets_one_as_on_hypers_path() {
    let (version, _heads) = version(Arc::new(Notify::new())).await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /plain HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (head, _) = c.answer(false).await.into_pair();
    assert!(field(&head, "date").is_some(), "{head}");
}

/// A version naming a framing field in its `Connection` (nonsense, but a version's
/// bytes are not trusted): the client's answer must still be framed (hyper's path
/// strips the field and frames the body itself), never left without a length, chunks
/// or a close on a kept-alive connection, where the next answer would be read as the
/// rest of this body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_stays_framed_when_the_version_lists_its_framing_in_connection() {
    let (version, _heads) = version(Arc::new(Notify::new())).await;
    let (_proxy, server) = proxy_to(version).await;
    for target in ["/hop-length", "/hop-chunked"] {
        let mut c = Client::to(server.local_addr()).await;
        c.send(format!("GET {target} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
            .await;
        let head = c.head().await.unwrap();
        let framed = field(&head, "content-length").is_some()
            || field(&head, "transfer-encoding").is_some_and(|v| v.contains("chunked"))
            || field(&head, "connection").is_some_and(|v| v.contains("close"));
        assert!(
            framed,
            "{target}: unframed answer on a kept-alive connection: {head}"
        );
    }
}

/// Request targets hyper's path refuses (the `http` crate's URI parser rejects
/// `<`, `>` and `` ` `` in a path) are refused here too, 400,
/// and never reach a version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_hyper_refuses_is_refused_not_forwarded() {
    let (version, _heads) = version(Arc::new(Notify::new())).await;
    let (proxy, server) = proxy_to(version).await;
    for target in [&b"/<script>"[..], b"/a`b"] {
        let mut c = Client::to(server.local_addr()).await;
        let mut req = b"GET ".to_vec();
        req.extend_from_slice(target);
        req.extend_from_slice(b" HTTP/1.1\r\nhost: x\r\n\r\n");
        c.send(&req).await;
        let head = c.head().await.unwrap();
        assert!(
            head.starts_with("HTTP/1.1 400"),
            "{}: {head}",
            String::from_utf8_lossy(target)
        );
    }
    assert_eq!(proxy.totals().stable.requests, 0);
}

/// A target's fragment is not part of what a server is asked for: hyper's path
/// (`http::Uri`) drops it, and the version sees `/a`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_fragment_is_not_sent_to_the_version() {
    let (version, mut heads) = version(Arc::new(Notify::new())).await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /a?q=1#frag HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let _ = c.answer(false).await.into_pair();
    let head = heads.recv().await.unwrap();
    assert!(head.starts_with("GET /a?q=1 HTTP/1.1\r\n"), "{head}");
}

/// A proxy with no backend yet, whose requests wait for one far longer than `until`
/// waits (an hour): in these tests only the client, or a backend coming, ends a wait.
async fn holding_proxy() -> (
    rampart_adapters::proxy::Proxy,
    rampart_adapters::proxy::ProxyServer,
) {
    let (proxy, server) = proxy_alone().await;
    proxy.set_hold(Duration::from_secs(3600));
    (proxy, server)
}

/// A client that leaves while its request waits for a backend (the hold of a data
/// plane started before its first version): the proxy lets it go at once, and the
/// request never reaches the version that comes later, nor counts; hyper's path (a
/// request with a body) does the same. Without the watch, the lean path kept the
/// connection for the whole hold and sent the request when the version came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_its_request_is_held_is_let_go_and_nothing_is_sent() {
    let (version, mut heads) = version(Arc::new(Notify::new())).await;
    let (proxy, server) = holding_proxy().await;
    for request in [
        &b"GET /lean HTTP/1.1\r\nhost: x\r\n\r\n"[..],
        b"POST /hyper HTTP/1.1\r\nhost: x\r\ncontent-length: 1\r\n\r\nx",
    ] {
        let mut c = Client::to(server.local_addr()).await;
        c.send(request).await;
        until("the request waits for a backend", async || {
            proxy.held_requests() == 1
        })
        .await;
        let exposition =
            rampart_adapters::telemetry::Telemetry::new("edge", Arc::new(proxy.clone())).render();
        assert!(
            exposition.contains("rampart_proxy_held_requests{service=\"edge\"} 1\n"),
            "{exposition}"
        );
        drop(c);
        until("the proxy let the client go", async || {
            proxy.open_connections() == 0 && proxy.held_requests() == 0
        })
        .await;
    }
    proxy.set_backends(rampart_core::Variant::Stable, &[version]);
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let (_, body) = c.answer(false).await.into_pair();
    assert_eq!(body, b"/after");
    let first = heads.recv().await.unwrap();
    assert!(first.starts_with("GET /after "), "{first}");
    assert_eq!(proxy.totals().stable.requests, 1);
    assert_eq!(proxy.abandoned(rampart_core::Variant::Stable), 0);
}

/// Pipelined requests and then the client's half-close while the first waits for a
/// backend: the half-close does not end the wait (bytes of a next request are there),
/// so once a version comes the requests are answered in order, as when the first is
/// at the version (see `pipelined_requests_then_a_half_close_are_answered_as_on_hypers_path`:
/// all but the last, as hyper's path).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_then_a_half_close_during_the_hold_are_answered() {
    let (version, mut heads) = version(Arc::new(Notify::new())).await;
    let (proxy, server) = holding_proxy().await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /two HTTP/1.1\r\nhost: x\r\n\r\nGET /three HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    c.conn.shutdown().await.unwrap();
    until("the first request waits for a backend", async || {
        proxy.held_requests() == 1
    })
    .await;
    // The half-close came before (loopback delivers it with the `shutdown`): the
    // proxy reads it in the wait, from the same poll that began it at the latest.
    proxy.set_backends(rampart_core::Variant::Stable, &[version]);
    assert_eq!(c.answer(false).await.into_pair().1, b"/one");
    assert_eq!(c.answer(false).await.into_pair().1, b"/two");
    assert!(heads.recv().await.unwrap().starts_with("GET /one "));
    assert!(heads.recv().await.unwrap().starts_with("GET /two "));
}

/// The proxy's own answers to a `HEAD` (here `503`: no backend) are a head alone, as
/// hyper's server sends them: a body after it would be read by the client as the
/// start of its next answer. Found by the answers fuzz (a `502` to a `HEAD`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxys_own_answer_to_a_head_has_no_body() {
    let (proxy, server) = proxy_alone().await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"HEAD /a HTTP/1.1\r\nhost: x\r\n\r\nGET /b HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let first = c.answer(true).await;
    assert!(
        first.status().starts_with("HTTP/1.1 503 "),
        "{}",
        first.head
    );
    assert!(
        field(&first.head, "content-length").is_some(),
        "{}",
        first.head
    );
    let second = c.answer(false).await;
    assert!(
        second.status().starts_with("HTTP/1.1 503 "),
        "{}",
        second.head
    );
    assert_eq!(second.body, b"rampart: no backend is ready\n");
    drop(proxy);
}
