//! Adversarial review of the lean HTTP/1.1 path (`proxy/lean.rs`), with real sockets
//! on loopback: each test is a finding, and fails on the code it was written against.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;

use common::proxy_to;
use common::raw::{Client, fields};
use tokio::sync::mpsc::UnboundedReceiver;

/// A version that answers every request head with `answer` (one write), keeps its
/// connections, and reports each head it read.
async fn scripted(answer: &'static [u8]) -> (SocketAddr, UnboundedReceiver<String>) {
    common::raw::answering_telling("127.0.0.1", answer.to_vec()).await
}

/// Finding: a chunked answer whose framing is malformed within the first read from
/// the version (here at once after its head) is never started: `relay` returns
/// `UpstreamBroke` from `Chunks::feed` before it writes the head it holds in
/// `bufs.out`, so the client's connection is closed with no byte of an answer, while
/// the request was already counted as a success (a 200, with latency) at the head.
/// A client that got nothing must get the proxy's 502 (and the version be charged an
/// error), or at least the head the request was counted by.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_malformed_in_its_first_read_leaves_the_client_with_nothing_counted_ok() {
    let (version, _) =
        scripted(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\nnot a chunk\r\n")
            .await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /bad-chunks HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let head = c.head().await;
    let stable = proxy.totals().stable;
    assert!(
        head.is_some() || stable.errors == 1,
        "the client got no byte of an answer (connection closed), yet the request \
         counts as a success: requests {}, errors {}",
        stable.requests,
        stable.errors
    );
}

/// The heads the version has read so far.
fn heads_seen(seen: &mut UnboundedReceiver<String>) -> Vec<String> {
    let mut heads = Vec::new();
    while let Ok(h) = seen.try_recv() {
        heads.push(h);
    }
    heads
}

/// Finding: a request with two `Host` lines is forwarded with both (RFC 9112 3.2: a
/// server MUST answer 400 to a request with more than one `Host` line). The proxy
/// routes by the first (`choose`, `X-Forwarded-Host`), while a version may read the
/// last: a request the proxy routed, matched and marked as for host `a` is served as
/// one for host `b`. `parse_head` checks only that some `Host` is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_with_two_host_lines_is_refused_not_forwarded() {
    let (version, mut seen) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: public.example\r\nhost: internal.example\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    let heads = heads_seen(&mut seen);
    let forwarded_hosts: Vec<Vec<&str>> = heads.iter().map(|h| fields(h, "host")).collect();
    assert!(
        a.status() == "HTTP/1.1 400 Bad Request" && heads.is_empty(),
        "answered {:?}; the version read Host lines {forwarded_hosts:?}",
        a.status()
    );
}

/// Review: a `Host` that is no host (a space, a path, user information) was
/// forwarded (RFC 9112 3.2: answered 400): the proxy routes and writes
/// `X-Forwarded-Host` from one reading of it, a version, its logs and the links it
/// builds may take another. Refused on both paths (a GET is the lean path's, a chunked
/// upload hyper's); hosts with a port, IPv6 literals and an empty `Host` pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_field_that_is_no_host_is_refused_not_forwarded() {
    let (version, mut seen) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let (_proxy, server) = proxy_to(version).await;
    let requests = |host: &str| {
        [
            format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n"),
            format!(
                "POST / HTTP/1.1\r\nhost: {host}\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
            ),
        ]
    };
    for bad in [
        "a b",
        "shop.example/admin",
        "user@shop.example",
        "a\\b",
        "x?y",
        "x#y",
    ] {
        for request in requests(bad) {
            let mut c = Client::to(server.local_addr()).await;
            c.send(request.as_bytes()).await;
            let a = c.answer(false).await;
            assert_eq!(a.status(), "HTTP/1.1 400 Bad Request", "{request:?}");
            assert!(
                heads_seen(&mut seen).is_empty(),
                "{request:?} was forwarded"
            );
        }
    }
    for good in [
        "shop.example:8080",
        "[::1]:8080",
        "",
        "xn--bcher-kva.example",
    ] {
        for request in requests(good) {
            let mut c = Client::to(server.local_addr()).await;
            c.send(request.as_bytes()).await;
            assert_eq!(c.answer(false).await.body, b"ok", "{request:?}");
            assert!(!heads_seen(&mut seen).is_empty(), "{request:?}");
        }
    }
}

/// Finding: a client's `Connection: host` makes the lean path send its version a
/// request without any `Host` (`strip_hop_by_hop` drops the field the client named,
/// and nothing puts one back), which no HTTP/1.1 request may be (RFC 9112 3.2: a
/// client MUST send `Host`); hyper's path sends the same request with one (`fetch`
/// and hyper's client add it from the URI's authority). The version answers 400 on
/// one path and 200 on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_connection_naming_host_still_sends_the_version_a_host() {
    let (version, mut seen) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: host\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.body, b"ok");
    let heads = heads_seen(&mut seen);
    assert_eq!(heads.len(), 1);
    assert!(
        !fields(&heads[0], "host").is_empty(),
        "the version got a request without Host: {:?}",
        heads[0]
    );
}

/// An HTTP/1.1 request without `Host` is answered 400 and reaches no version (RFC
/// 9112 3.2); it was sent on with the endpoint's address as its `Host`. An HTTP/1.0
/// one, which need not name its host, is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http11_request_without_host_is_refused_not_forwarded() {
    let (version, mut seen) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(c.answer(false).await.status(), "HTTP/1.1 400 Bad Request");
    assert!(heads_seen(&mut seen).is_empty());
    let mut old = Client::to(server.local_addr()).await;
    old.send(b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(old.answer(false).await.body, b"ok");
    assert_eq!(heads_seen(&mut seen).len(), 1);
    assert_eq!(proxy.totals().stable.requests, 1);
}

/// An absolute-form target names the request's host, over its `Host` line, but
/// without the user information it may carry (review: `user:pw@shop.example` became
/// the version's `Host`, and reached its logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absolute_targets_host_reaches_the_version_without_its_user_information() {
    let (version, mut seen) = scripted(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET http://user:pw@shop.example:8080/x HTTP/1.1\r\nhost: other.example\r\n\r\n")
        .await;
    assert_eq!(c.answer(false).await.body, b"ok");
    let heads = heads_seen(&mut seen);
    assert_eq!(heads.len(), 1);
    assert_eq!(fields(&heads[0], "host"), ["shop.example:8080"]);
    assert!(!heads[0].contains("pw"), "{}", heads[0]);
}
