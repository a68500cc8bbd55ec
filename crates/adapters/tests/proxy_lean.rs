//! The proxy's lean HTTP/1.1 path (plain requests, without a body or with a small one
//! whole with its head), with real sockets
//! on loopback against a version that writes its answers byte by byte as scripted:
//! each way a version may end an answer (a length, chunks with trailers, its
//! connection's close, nothing for HEAD), pipelined requests, small uploads whole with
//! their heads (and sent again only when idempotent), a connection handed to hyper's
//! path at its first large upload and served on, and a version's answer that breaks
//! the rules.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::proxy_to;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::raw::{Client, field, read_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A version answering by its request's target (see each arm); counts the
/// connections it accepted.
async fn version() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut pending = Vec::new();
                loop {
                    let Some(head) = read_head(&mut stream, &mut pending).await else {
                        return;
                    };
                    let line = head.lines().next().unwrap_or_default().to_owned();
                    let mut parts = line.split(' ');
                    let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
                    if method == "CONNECT" {
                        // A tunnel to nowhere: what follows its 200 is swallowed.
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        let mut sink = [0u8; 4096];
                        while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                        return;
                    }
                    let writes: Vec<Vec<u8>> = if method == "HEAD" {
                        vec![b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n".to_vec()]
                    } else if content_length(&head) > 0 {
                        let length = content_length(&head);
                        while pending.len() < length {
                            let mut buf = [0u8; 4096];
                            let n = stream.read(&mut buf).await.unwrap();
                            if n == 0 {
                                return;
                            }
                            pending.extend_from_slice(&buf[..n]);
                        }
                        let got: Vec<u8> = pending.drain(..length).collect();
                        // A short body is echoed, to show it reached the version whole.
                        let body = if length <= 64 {
                            format!("got {length}: {}", String::from_utf8_lossy(&got))
                        } else {
                            format!("got {length}")
                        };
                        vec![
                            format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            )
                            .into_bytes(),
                        ]
                    } else {
                        match target {
                            "/chunked" => vec![
                                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Case: Kept\r\n\r\n".to_vec(),
                                b"5\r\nhel".to_vec(),
                                b"lo\r\n6;ext=1\r\n worl".to_vec(),
                                b"d\r\n0\r\nx-trailer: t\r".to_vec(),
                                b"\n\r\n".to_vec(),
                            ],
                            "/close" => vec![
                                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ".to_vec(),
                                b"the end".to_vec(),
                            ],
                            "/extra" => vec![b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA".to_vec()],
                            "/reason" => vec![b"HTTP/1.1 200 Fine Indeed\r\ncontent-length: 2\r\n\r\nok".to_vec()],
                            "/garbage" => vec![b"NOT HTTP AT ALL\r\n\r\n".to_vec()],
                            "/fail" => vec![b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\n\r\nfail".to_vec()],
                            _ => vec![format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{target}",
                                target.len()
                            )
                            .into_bytes()],
                        }
                    };
                    for w in writes {
                        if stream.write_all(&w).await.is_err() {
                            return;
                        }
                        // Each piece its own segment: the proxy must join them.
                        tokio::task::yield_now().await;
                    }
                    if target == "/close" || target == "/garbage" {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// The `content-length` a head names, or 0.
fn content_length(head: &str) -> usize {
    field(head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// A chunked answer, written in pieces that split its size lines and its trailers,
/// reaches the client byte for byte, trailers and all; the version's connection and
/// the client's both go on to the next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_answer_passes_whole_with_its_trailers_and_both_connections_go_on() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /chunked HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.status(), "HTTP/1.1 200 OK");
    assert_eq!(
        String::from_utf8_lossy(&a.body),
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: t\r\n\r\n"
    );
    assert!(a.head.contains("X-Case: Kept\r\n"), "{}", a.head);
    assert_eq!(field(&a.head, "x-rampart-variant"), Some("stable"));
    c.send(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"/next");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the version's connection was kept"
    );
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (2, 0));
    assert_eq!(stable.latency_total.count(), 2);
}

/// An answer the version ends by closing its connection reaches the client whole,
/// and then the client's connection closes too: nothing else could tell it where the
/// body ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_ended_by_the_versions_close_reaches_the_client_whole_then_closes_it() {
    let (version, _) = version().await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /close HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(field(&a.head, "connection"), Some("close"));
    assert_eq!(a.body, b"until the end");
}

/// Requests a client sends at once, without waiting for answers, are answered in
/// order on the same connection, whatever their answers' framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let (version, _) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(
        b"GET /one HTTP/1.1\r\nhost: x\r\n\r\nGET /chunked HTTP/1.1\r\nhost: x\r\n\r\nHEAD /h HTTP/1.1\r\nhost: x\r\n\r\nGET /three HTTP/1.1\r\nhost: x\r\n\r\n",
    )
    .await;
    assert_eq!(c.answer(false).await.body, b"/one");
    assert!(
        c.answer(false)
            .await
            .body
            .ends_with(b"0\r\nx-trailer: t\r\n\r\n")
    );
    let head = c.answer(true).await;
    assert_eq!(field(&head.head, "content-length"), Some("5"));
    assert_eq!(c.answer(false).await.body, b"/three");
    assert_eq!(proxy.totals().stable.requests, 4);
}

/// A connection whose requests turn to an upload the lean path does not hold (here
/// its second: a body past 64 KiB) is served on by hyper's path from there, the bytes
/// already read included: every request is answered and counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_goes_on_through_hyper_from_its_first_large_upload() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /before HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"/before");
    // The upload and the request after it arrive together: the lean path has read
    // part or all of both, and hyper must see both.
    let size = 64 * 1024 + 1;
    let mut upload =
        format!("POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: {size}\r\n\r\n").into_bytes();
    upload.extend(std::iter::repeat_n(b'u', size));
    upload.extend_from_slice(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n");
    c.send(&upload).await;
    let up = c.answer(false).await;
    assert_eq!(up.body, format!("got {size}").as_bytes());
    assert_eq!(field(&up.head, "x-rampart-variant"), Some("stable"));
    assert_eq!(c.answer(false).await.body, b"/after");
    assert_eq!(proxy.totals().stable.requests, 3);
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "hyper's path went on its own connection to the version"
    );
}

/// Small uploads that come whole with their heads (a JSON call, a form: a client's
/// one write) stay on the lean path: each reaches the version whole, on the one
/// connection the lean path keeps to it (hyper's path would open its own), pipelined
/// requests behind them included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_uploads_whole_with_their_heads_stay_lean_and_reach_the_version_whole() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /before HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"/before");
    c.send(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\n{\"a\": true}PUT /put HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nxyzGET /after HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let up = c.answer(false).await;
    assert_eq!(up.body, b"got 11: {\"a\": true}");
    assert_eq!(field(&up.head, "x-rampart-variant"), Some("stable"));
    assert_eq!(c.answer(false).await.body, b"got 3: xyz");
    assert_eq!(c.answer(false).await.body, b"/after");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "every request went on the lean path's connection"
    );
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (4, 0));
    assert_eq!(stable.latency_total.count(), 4);
}

/// Review (issue 18): a client's `Connection: content-length` made the proxy drop
/// the length it had read the body by (a hop-by-hop field, named so), and the body
/// reached the version as the start of a request the proxy never read: routed,
/// marked and counted by no one. The version gets the body as its length says,
/// with a method that has a body or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_length_the_client_names_in_connection_still_frames_its_body_at_the_version() {
    let (version, _) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    let inner = "GET /smuggled HTTP/1.1\r\nhost: y\r\n\r\n";
    for method in ["POST", "GET"] {
        let request = format!(
            "{method} /up HTTP/1.1\r\nhost: x\r\nconnection: keep-alive, Content-Length\r\ncontent-length: {}\r\n\r\n{inner}",
            inner.len()
        );
        c.send(request.as_bytes()).await;
        let a = c.answer(false).await;
        assert_eq!(
            String::from_utf8_lossy(&a.body),
            format!("got {}: {inner}", inner.len()),
            "{method}"
        );
    }
    c.send(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"/next");
    assert_eq!(proxy.totals().stable.requests, 3);
}

/// A small body past `max_body_bytes` is not the lean path's: hyper's path refuses
/// it (`413`) and the version never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_body_past_max_body_bytes_is_refused_before_the_version() {
    let (version, accepted) = version().await;
    let (proxy, server) = rampart_adapters::proxy::Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        rampart_adapters::proxy::ProxyOptions {
            limits: rampart_core::policy::ProxyLimits {
                max_body_bytes: Some(10),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(rampart_core::Variant::Stable, &[version]);
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"POST /up HTTP/1.1\r\nhost: x\r\ncontent-length: 11\r\n\r\nhello world")
        .await;
    assert_eq!(
        c.answer(false).await.status(),
        "HTTP/1.1 413 Payload Too Large"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert_eq!(proxy.totals().stable.requests, 0);
}

/// A version that answers the first request on each connection (echoing its method
/// and body) and closes the connection at the second, unanswered, as a version whose
/// keep-alive ran out as the request came; reports each request it read.
async fn closing_at_second_request() -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut pending = Vec::new();
                for nth in 0.. {
                    let Some(head) = read_head(&mut stream, &mut pending).await else {
                        return;
                    };
                    let length = content_length(&head);
                    while pending.len() < length {
                        let mut buf = [0u8; 4096];
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => pending.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body: Vec<u8> = pending.drain(..length).collect();
                    let method = head.split(' ').next().unwrap_or_default();
                    let seen = format!("{method} {}", String::from_utf8_lossy(&body));
                    let _ = tx.send(seen.clone());
                    if nth == 1 {
                        return;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{seen}",
                        seen.len()
                    );
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// An upload on a pooled connection that its version closed under it, before any
/// byte of an answer: an idempotent one (`PUT`) is sent once more, body and all, on a
/// new connection; a `POST`, which the version may have acted on, is not (the
/// client's 502), as for requests without a body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_by_its_pooled_connections_close_is_sent_again_only_when_idempotent() {
    let (version, mut seen) = closing_at_second_request().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /warm HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"GET ");
    // The pooled connection's second request: read, then the connection closed.
    c.send(b"PUT /p HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nxyz")
        .await;
    assert_eq!(c.answer(false).await.body, b"PUT xyz");
    // The connection it was sent again on is pooled; its second request is cut too.
    c.send(b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\r\nabc")
        .await;
    let post = c.answer(false).await;
    assert_eq!(post.status(), "HTTP/1.1 502 Bad Gateway");
    let mut requests = Vec::new();
    while let Ok(r) = seen.try_recv() {
        requests.push(r);
    }
    assert_eq!(requests, ["GET ", "PUT xyz", "PUT xyz", "POST abc"]);
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (3, 1));
}

/// A client's `Connection: close` is answered with the same, and its connection is
/// closed after the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_close_is_honoured_after_its_answer() {
    let (version, _) = version().await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /bye HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await;
    let a = c.answer(false).await;
    assert_eq!(a.body, b"/bye");
    assert_eq!(field(&a.head, "connection"), Some("close"));
    assert!(c.closed().await);
}

/// A version that sends bytes past its answer's length: the client gets the answer
/// as long as it said, and that connection to the version is not used again (its
/// next bytes would be taken for the next answer).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_past_an_answers_length_are_dropped_with_the_versions_connection() {
    let (version, accepted) = version().await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /extra HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"ok");
    c.send(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"/next");
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
}

/// An answer that is not HTTP is the proxy's 502 and the version's error; a 5xx is
/// passed on and counted as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_a_502_and_an_error_and_a_5xx_counts_as_one() {
    let (version, _) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /garbage HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.status(), "HTTP/1.1 502 Bad Gateway");
    assert_eq!(a.body, b"rampart: upstream unavailable\n");
    c.send(b"GET /fail HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(
        (a.status(), a.body.as_slice()),
        ("HTTP/1.1 503 Service Unavailable", &b"fail"[..])
    );
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (2, 2));
    assert_eq!(
        stable.latency.count(),
        1,
        "the proxy's own 502 is not timed"
    );
}

// === HTTP/2 clients' requests on the lean path's connections ===

/// What an HTTP/2 client got: the status, the fields, the body and the trailers.
struct H2Answer {
    status: u16,
    headers: hyper::HeaderMap,
    body: Vec<u8>,
    trailers: Option<hyper::HeaderMap>,
}

/// An h2c connection with prior knowledge to `addr`.
async fn h2c(
    addr: SocketAddr,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    common::h2c(addr).await
}

/// `method path` without a body on `send`.
async fn h2_ask(
    send: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    method: &str,
    path: &str,
) -> H2Answer {
    use http_body_util::BodyExt;
    let req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://svc.test{path}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    H2Answer {
        status,
        headers,
        body: collected.to_bytes().to_vec(),
        trailers,
    }
}

/// An HTTP/2 client's requests without a body go to an HTTP/1.1 version on the lean
/// path's pooled connections, the same ones its HTTP/1.1 clients use: one connection
/// to the version serves them all. Each way an answer ends reaches the HTTP/2 client
/// whole: a length, chunks (decoded, their trailers as HTTP/2 trailers), nothing for
/// HEAD (its length kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_requests_without_a_body_share_the_lean_paths_connections() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut h2 = h2c(server.local_addr()).await;
    let a = h2_ask(&mut h2, "GET", "/plain").await;
    assert_eq!((a.status, a.body.as_slice()), (200, &b"/plain"[..]));
    assert_eq!(a.headers.get("x-rampart-variant").unwrap(), "stable");
    let chunked = h2_ask(&mut h2, "GET", "/chunked").await;
    assert_eq!(chunked.body, b"hello world");
    assert_eq!(chunked.headers.get("x-case").unwrap(), "Kept");
    assert!(chunked.headers.get("transfer-encoding").is_none());
    assert_eq!(chunked.trailers.unwrap().get("x-trailer").unwrap(), "t");
    let head = h2_ask(&mut h2, "HEAD", "/h").await;
    assert_eq!((head.status, head.body.len()), (200, 0));
    assert_eq!(head.headers.get("content-length").unwrap(), "5");

    // Each answer gave its connection back before its last bytes reached the
    // client: an HTTP/1.1 client's request now finds it idle.
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /last HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(c.answer(false).await.body, b"/last");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "one connection to the version for both clients"
    );
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (4, 0));
    assert_eq!(stable.latency_total.count(), 4);
}

/// A request body an HTTP/2 client sends: `data` under a declared `content-length` of
/// `declared`, then the end of the stream, or a failure when `cut` (the client's
/// stream is reset mid-body).
struct H2Upload {
    data: Option<bytes::Bytes>,
    declared: u64,
    cut: bool,
}

impl hyper::body::Body for H2Upload {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>>> {
        let this = self.get_mut();
        std::task::Poll::Ready(match this.data.take() {
            Some(data) => Some(Ok(hyper::body::Frame::data(data))),
            None if this.cut => Some(Err(std::io::Error::other("the client gave up"))),
            None => None,
        })
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.declared)
    }
}

/// `POST path` with `upload` on a new h2c connection to `addr`: the status and body, or
/// `None` when the stream failed.
async fn h2_post(addr: SocketAddr, path: &str, upload: H2Upload) -> Option<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let mut send = common::h2c(addr).await;
    let req = hyper::Request::post(format!("http://svc.test{path}"))
        .header("content-length", upload.declared)
        .body(upload)
        .unwrap();
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
    Some((status, body))
}

/// An HTTP/2 client's small upload of a declared length (a browser's JSON call) goes
/// whole, head and body in one write, on the lean path's pooled connection, the one
/// its other requests and HTTP/1.1 clients use; one larger than the lean path takes
/// still reaches the version whole, through hyper's client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_small_upload_goes_on_the_lean_paths_connection() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let json = bytes::Bytes::from_static(br#"{"a":1}"#);
    let upload = H2Upload {
        declared: json.len() as u64,
        data: Some(json),
        cut: false,
    };
    assert_eq!(
        h2_post(server.local_addr(), "/p", upload).await,
        Some((200, br#"got 7: {"a":1}"#.to_vec()))
    );
    let mut h2 = h2c(server.local_addr()).await;
    assert_eq!(h2_ask(&mut h2, "GET", "/g").await.body, b"/g");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the upload and the GET on one connection to the version"
    );
    let large = 100_000;
    let upload = H2Upload {
        declared: large,
        data: Some(vec![b'x'; 100_000].into()),
        cut: false,
    };
    assert_eq!(
        h2_post(server.local_addr(), "/p", upload).await,
        Some((200, b"got 100000".to_vec()))
    );
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (3, 0));
}

/// An HTTP/2 client whose small upload fails on its way reaches no version and counts
/// against none: the failure is the client's. Its stream reset mid-body, or ended
/// short of its declared length (which the proxy's HTTP/2 server refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_upload_cut_short_is_the_clients_fault_not_the_versions() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    for cut in [true, false] {
        let upload = H2Upload {
            declared: 10,
            data: Some(bytes::Bytes::from_static(b"abcd")),
            cut,
        };
        let answer = h2_post(server.local_addr(), "/p", upload).await;
        assert!(
            matches!(answer, None | Some((400, _))),
            "cut {cut}: {answer:?}"
        );
    }
    // The proxy has answered or dropped the stream once the client can go on: a
    // request after it on another connection is answered, and counted alone.
    let mut h2 = h2c(server.local_addr()).await;
    assert_eq!(h2_ask(&mut h2, "GET", "/after").await.body, b"/after");
    common::until("the cut upload to be done with", async || {
        proxy.in_flight(rampart_core::Variant::Stable) == 0
    })
    .await;
    let stable = proxy.totals().stable;
    assert_eq!(
        stable.errors, 0,
        "the client's failure is not the version's"
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

/// An HTTP/2 client's answer the version ends by closing, or follows with bytes no
/// request asked for, reaches the client whole, and that connection to the version is
/// not used again; an answer that is not HTTP is the proxy's 502 and the version's
/// error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_answers_end_as_the_version_framed_them() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut h2 = h2c(server.local_addr()).await;
    assert_eq!(
        h2_ask(&mut h2, "GET", "/close").await.body,
        b"until the end"
    );
    assert_eq!(h2_ask(&mut h2, "GET", "/extra").await.body, b"ok");
    assert_eq!(h2_ask(&mut h2, "GET", "/next").await.body, b"/next");
    assert_eq!(accepted.load(Ordering::SeqCst), 3, "neither was kept");
    let garbage = h2_ask(&mut h2, "GET", "/garbage").await;
    assert_eq!(garbage.status, 502);
    assert_eq!(garbage.body, b"rampart: upstream unavailable\n");
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (4, 1));
}

/// An HTTP/2 client's request on a pooled connection its version closed under it,
/// before any byte of an answer, is sent once more on a new connection when it is
/// idempotent (a `GET`), and not when the version may have acted on it (a `POST`,
/// even without a body): that one is the client's 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_clients_request_cut_by_its_pooled_connections_close_is_sent_again_only_when_idempotent()
 {
    let (version, mut seen) = closing_at_second_request().await;
    let (proxy, server) = proxy_to(version).await;
    let mut h2 = h2c(server.local_addr()).await;
    assert_eq!(h2_ask(&mut h2, "GET", "/warm").await.body, b"GET ");
    assert_eq!(h2_ask(&mut h2, "GET", "/again").await.body, b"GET ");
    assert_eq!(h2_ask(&mut h2, "POST", "/p").await.status, 502);
    let mut requests = Vec::new();
    while let Ok(r) = seen.try_recv() {
        requests.push(r);
    }
    assert_eq!(requests, ["GET ", "GET ", "GET ", "POST "]);
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (3, 1));
}

/// A `CONNECT` is refused (`501`) and never sent: the proxy opens no tunnels, and
/// one the version opened (its `200` turns its connection into a tunnel, RFC 9112
/// 6.3) would go nowhere while its client was told it is there (review). The client's
/// connection goes on in HTTP, and the next request is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_is_refused_unsent_and_the_connection_goes_on() {
    let (version, accepted) = version().await;
    let (proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"CONNECT svc.test:443 HTTP/1.1\r\nhost: svc.test:443\r\n\r\n")
        .await;
    let refused = c.answer(false).await;
    assert_eq!(refused.status(), "HTTP/1.1 501 Not Implemented");
    c.send(b"GET /after HTTP/1.1\r\nhost: x\r\n\r\n").await;
    let next = c.answer(false).await;
    assert_eq!(next.body, b"/after");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "only the GET reached the version"
    );
    let stable = proxy.totals().stable;
    assert_eq!((stable.requests, stable.errors), (1, 0));
}

/// A request hyper's path serves (HTTP/1.0 goes there) without a body goes on the lean
/// path's connections too (a lean request after it finds its connection idle), and
/// its client gets the version's own reason phrase, as hyper's client kept it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_hyper_s_path_takes_the_lean_connections_and_keeps_the_reason_phrase() {
    let (version, accepted) = version().await;
    let (_proxy, server) = proxy_to(version).await;
    let mut c = Client::to(server.local_addr()).await;
    c.send(b"GET /reason HTTP/1.0\r\nhost: x\r\n\r\n").await;
    let a = c.answer(false).await;
    assert_eq!(a.status(), "HTTP/1.0 200 Fine Indeed");
    assert_eq!(a.body, b"ok");
    let mut lean = Client::to(server.local_addr()).await;
    lean.send(b"GET /next HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert_eq!(lean.answer(false).await.body, b"/next");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}
