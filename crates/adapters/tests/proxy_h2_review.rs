//! Adversarial review of the HTTP/2 paths (rev2): each test here fails on the code it
//! was written against, and shows one defect with real sockets on loopback.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_core::Variant;
use rampart_core::policy::UpstreamProtocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use common::{proxy_speaking, until};

/// The longest any test waits for something that must happen.
const PATIENCE: Duration = Duration::from_secs(10);

/// A body that gives one chunk, then nothing, ever.
struct PartThenSilence(bool);

impl Body for PartThenSilence {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.0 {
            return Poll::Pending;
        }
        this.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))))
    }
}

/// An h2c version: `/stream` answers 200 and one chunk of its body, then nothing more;
/// `/hold` is never answered (its arrival is told in `held`). `kill` drops every
/// connection it has, every stream on them with it.
async fn breaking_version(
    kill: Arc<Notify>,
    held: tokio::sync::watch::Sender<usize>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let kill = kill.clone();
            let held = held.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let held = held.clone();
                    async move {
                        if req.uri().path() == "/hold" {
                            held.send_modify(|n| *n += 1);
                            std::future::pending::<()>().await;
                        }
                        Ok::<_, Infallible>(Response::new(PartThenSilence(false)))
                    }
                });
                let http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                tokio::select! {
                    _ = http.serve_connection(TokioIo::new(stream), svc) => {}
                    () = kill.notified() => {}
                }
            });
        }
    });
    addr
}

/// Review (h2c, metrics): an h2c connection's failure is "charged once, to the first
/// stream that sees it" (`upstream::Slot::failed`). When that first stream is an
/// answer already counted at its head (a plain HTTP answer mid-body), the charge is
/// spent on a stream that records no error (`timed::Timed::record` counts a broken
/// non-gRPC body as nothing but its total time), and every other stream the failure
/// broke is `Uncharged`: its client gets a 502 that no metric counts. The variant's
/// errors stay at 0 while its clients saw failures, and `upstream_connection_errors`
/// says 1. Which stream is first is the scheduler's choice; on a current-thread
/// runtime it is the lowest stream id, here the one mid-body.
#[tokio::test]
async fn a_connection_failure_charged_to_a_stream_mid_body_still_counts_an_error() {
    let kill = Arc::new(Notify::new());
    let (held, mut seen) = tokio::sync::watch::channel(0);
    let version = breaking_version(kill.clone(), held).await;
    let (proxy, server) = proxy_speaking(version, UpstreamProtocol::H2c).await;
    let send: hyper::client::conn::http2::SendRequest<Full<Bytes>> =
        common::h2c(server.local_addr()).await;

    // A plain answer, mid-body: its head was counted as a success.
    let req = Request::get("http://svc.test/stream")
        .body(Full::default())
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut streaming = resp.into_body();
    let first = tokio::time::timeout(PATIENCE, streaming.frame())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), "part");

    // A request waiting for its answer on the same upstream connection.
    let waiting = {
        let send = send.clone();
        tokio::spawn(async move {
            let req = Request::get("http://svc.test/hold")
                .body(Full::default())
                .unwrap();
            send.clone().send_request(req).await.unwrap().status()
        })
    };
    tokio::time::timeout(PATIENCE, seen.wait_for(|n| *n == 1))
        .await
        .unwrap()
        .unwrap();

    kill.notify_waiters();
    let status = tokio::time::timeout(PATIENCE, waiting)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        status,
        StatusCode::BAD_GATEWAY,
        "the waiting client sees a failure"
    );
    let rest = tokio::time::timeout(PATIENCE, streaming.collect())
        .await
        .unwrap();
    assert!(rest.is_err(), "the streaming client sees its body broken");
    until("every stream done", async || {
        proxy.in_flight(Variant::Stable) == 0
    })
    .await;
    assert_eq!(proxy.upstream_connection_errors(), Some(1));
    let s = proxy.totals().stable;
    assert_eq!(
        s.errors, 1,
        "the connection failure (a 502 to one client, a broken body to another) counts once \
         against the version; got {} errors in {} requests",
        s.errors, s.requests
    );
}

/// An HTTP/1.1 version that accepts every `CONNECT` (`200`) and echoes the tunnel's
/// bytes; each request head it read is told in `heads`.
async fn tunnelling_version(heads: tokio::sync::mpsc::UnboundedSender<String>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let heads = heads.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if tcp.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let _ = heads.send(String::from_utf8_lossy(&head).into_owned());
                tcp.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .unwrap();
                let (mut r, mut w) = tcp.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Review (HTTP/2 client, CONNECT): an HTTP/2 client's `CONNECT` (RFC 9113 8.5) toward
/// an HTTP/1.1 version is sent as `CONNECT / HTTP/1.1` (the origin form of a rebuilt
/// URI, not the authority form RFC 9112 3.2.3 requires), and the version's `200` is
/// relayed to the client, counted a success, while the tunnel goes nowhere: the
/// client's side of it (the `OnUpgrade` hyper's HTTP/2 server put in the request) is
/// dropped with the request, so hyper resets the stream right after the `200`. An
/// HTTP/1.1 client's `CONNECT` gets no `2xx` (its connection is closed); toward h2c
/// versions it is refused `501`. A client must not be told a tunnel is established
/// when none is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connect_answered_2xx_carries_its_tunnel() {
    let (heads, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let version = tunnelling_version(heads).await;
    let (proxy, server) = proxy_speaking(version, UpstreamProtocol::Http1).await;
    let tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    let (h2, conn) = ::h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut h2 = h2.ready().await.unwrap();
    let req = Request::builder()
        .method(hyper::Method::CONNECT)
        .uri("svc.test:443")
        .body(())
        .unwrap();
    let (resp, mut send) = h2.send_request(req, false).unwrap();
    let resp = tokio::time::timeout(PATIENCE, resp).await.unwrap().unwrap();
    let status = resp.status();
    let head = seen.try_recv().unwrap_or_default();
    let request_line = head.lines().next().unwrap_or_default().to_string();
    if !status.is_success() {
        // Refused, unsent: no tunnel was promised, and the version opened none.
        assert_eq!(status, hyper::StatusCode::NOT_IMPLEMENTED);
        assert_eq!(head, "", "the version got {request_line:?}");
        assert_eq!(proxy.totals().stable.requests, 0);
        return;
    }
    // A tunnel was promised: it carries bytes both ways.
    let sent = send.send_data(Bytes::from_static(b"ping"), false);
    let mut body = resp.into_body();
    let echoed = tokio::time::timeout(PATIENCE, body.data()).await.unwrap();
    let totals = proxy.totals().stable;
    assert!(
        sent.is_ok() && matches!(&echoed, Some(Ok(b)) if b == "ping"),
        "answered {status} to CONNECT, then the tunnel broke: send {sent:?}, read {echoed:?}; \
         the version got {request_line:?}; counted {} requests, {} errors",
        totals.requests,
        totals.errors
    );
}

/// An HTTP/1.1 version that answers every request with the `Host` lines it got.
async fn host_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let hosts: Vec<String> = req
                        .headers()
                        .get_all("host")
                        .iter()
                        .map(|h| h.to_str().unwrap().to_string())
                        .collect();
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(hosts.join("|")))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Review (HTTP/2 client to an HTTP/1.1 version, low): RFC 9113 8.3.1: an intermediary
/// that makes the `Host` of an HTTP/1.1 request from an HTTP/2 one "MUST use the value
/// from the `:authority` pseudo-header field". `Proxy::forward` makes `Host` from
/// `:authority` only when the client sent no `host` field of its own, so a client
/// whose `:authority` and `host` differ reaches the version (and the proxy's `host`
/// match and stickiness rules) with the `host` field's name instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_authority_is_the_http1_versions_host() {
    let version = host_echo().await;
    let (_proxy, server) = proxy_speaking(version, UpstreamProtocol::Http1).await;
    let send: hyper::client::conn::http2::SendRequest<Full<Bytes>> =
        common::h2c(server.local_addr()).await;
    for method in ["GET", "POST"] {
        let req = Request::builder()
            .method(method)
            .uri("https://svc.test/")
            .header("host", "other.test")
            .body(Full::new(Bytes::from_static(b"x")))
            .unwrap();
        let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, "svc.test", "{method}: the Host the version got");
    }
}

/// An h2c version that reads each request's body whole, trailers included, and
/// answers 200 with its length.
async fn collecting_h2c_version() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let body = req.into_body().collect().await;
                    let len = body.map(|b| b.to_bytes().len()).unwrap_or(usize::MAX);
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(len.to_string()))))
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Review (HTTP/1.1 client to an h2c version, hang): hyper's HTTP/1.1 server hands on
/// a chunked body's trailer section whatever its fields, and `exchange::Pump` gives the
/// trailers to h2 as they came. h2 refuses trailers with a connection-specific field
/// (`keep-alive`, `connection`, `te` other than `trailers`...: RFC 9113 8.2.2) with a
/// user error and leaves the stream as it was; the pump stops with that error
/// (`Pumped::Stream`) without ending or resetting the stream, and the version, waiting
/// for the request's end, never answers. The client waits forever (no timer of the
/// proxy's covers a request whose body is all read), and its stream stays open on
/// the upstream connection. The head's forbidden fields are removed
/// (`forbidden_in_http2`); the trailers' are not. (With `x-sum: 1` alone in the
/// trailers, the same request is answered at once.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_upload_with_a_connection_specific_trailer_is_answered() {
    let version = collecting_h2c_version().await;
    let (_proxy, server) = proxy_speaking(version, UpstreamProtocol::H2c).await;
    let mut tcp = tokio::net::TcpStream::connect(server.local_addr())
        .await
        .unwrap();
    tcp.write_all(
        b"POST /up HTTP/1.1\r\nHost: svc.test\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nkeep-alive: timeout=5\r\nx-sum: 1\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = vec![0u8; 12];
    let read = tokio::time::timeout(PATIENCE, tcp.read_exact(&mut answer)).await;
    assert!(read.is_ok(), "no answer in {PATIENCE:?}: the request hangs");
    assert!(
        answer.starts_with(b"HTTP/1.1 "),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
}

/// Review (HTTP/2 client from an HTTP/1.1 version, the mirror of the one above): the
/// lean path decodes a chunked answer's trailers as the version sent them
/// (`lean::trailer_fields`), and hyper's HTTP/2 server gives them to h2, which refuses
/// a trailer block with a connection-specific field (RFC 9113 8.2.2): hyper then
/// resets the client's stream after its whole body. The client sees an answer that
/// breaks at its end, which the proxy counted a success at its head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_versions_connection_specific_trailer_does_not_break_an_http2_answer() {
    // Its chunked `hello`'s trailer section has a connection-specific field beside an
    // ordinary one.
    let version = common::raw::answering(
        "127.0.0.1",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\nkeep-alive: timeout=5\r\nx-sum: 1\r\n\r\n"
            .to_vec(),
    )
    .await;
    let (proxy, server) = proxy_speaking(version, UpstreamProtocol::Http1).await;
    let send: hyper::client::conn::http2::SendRequest<Full<Bytes>> =
        common::h2c(server.local_addr()).await;
    let req = Request::get("http://svc.test/t")
        .header("te", "trailers")
        .body(Full::default())
        .unwrap();
    let resp = tokio::time::timeout(PATIENCE, send.clone().send_request(req))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(PATIENCE, resp.into_body().collect())
        .await
        .unwrap();
    let s = proxy.totals().stable;
    match body {
        Ok(body) => assert_eq!(body.to_bytes(), "hello"),
        Err(e) => panic!(
            "the answer broke at its end ({e}); counted {} requests, {} errors",
            s.requests, s.errors
        ),
    }
}
