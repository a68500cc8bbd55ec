//! The forwarding headers a version sees through the proxy, with real sockets on
//! loopback (`traffic.proxy.forwarded.trust`): an untrusted client's spoofed
//! `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` are replaced by the proxy's
//! own, and a trusted peer's chain is extended with its address. A review found two
//! ways a client's own still reached the version (look-alike names, trailers).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart_adapters::proxy::{Proxy, ProxyOptions};
use rampart_core::Variant;
use rampart_core::policy::{IpNet, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(10);

/// A version that answers with the headers it got, one `name: value` line each: the
/// four forwarding headers in a fixed order, or (`all`) every field in the order it
/// got them, then its body's trailer fields after a `--` line.
async fn mirror(all: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| async move {
                    let line = |name: &dyn std::fmt::Display, v: &hyper::header::HeaderValue| {
                        format!("{name}: {}\n", String::from_utf8_lossy(v.as_bytes()))
                    };
                    let mut seen = String::new();
                    if !all {
                        for name in FOUR {
                            for v in req.headers().get_all(name) {
                                seen.push_str(&line(&name, v));
                            }
                        }
                        return Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))));
                    }
                    for (name, v) in req.headers() {
                        seen.push_str(&line(name, v));
                    }
                    seen.push_str("--\n");
                    let collected = req.into_body().collect().await.unwrap();
                    for (name, v) in collected.trailers().into_iter().flatten() {
                        seen.push_str(&line(name, v));
                    }
                    Ok(Response::new(Full::new(Bytes::from(seen))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

const FOUR: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
];

/// What the version saw of a request sent through a proxy trusting `trust` with
/// `headers` added.
async fn seen_through(trust: Trust, headers: &str) -> String {
    answer_through(
        trust,
        false,
        &format!("GET / HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n{headers}\r\n"),
    )
    .await
}

/// What the version saw (its echo of every field) of `raw`, sent whole through a
/// proxy trusting nobody.
async fn seen_through_edge(raw: &str) -> String {
    answer_through(Trust::None, true, raw).await
}

/// The body of the answer to `raw`, sent whole through a proxy trusting `trust` to a
/// [`mirror`] (of every field, when `all`).
async fn answer_through(trust: Trust, all: bool, raw: &str) -> String {
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            forwarded: trust,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[mirror(all).await]);
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(raw.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, conn.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    let answer = String::from_utf8(answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    answer.split_once("\r\n\r\n").unwrap().1.to_string()
}

const SPOOFED: &str = "x-forwarded-for: 6.6.6.6\r\nx-forwarded-proto: https\r\nx-forwarded-host: evil.example\r\nforwarded: for=6.6.6.6;proto=https\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_clients_spoofed_forwarding_headers_are_replaced() {
    let want = "x-forwarded-for: 127.0.0.1\nx-forwarded-proto: http\nx-forwarded-host: shop.example\nforwarded: for=127.0.0.1;proto=http;host=shop.example\n";
    assert_eq!(seen_through(Trust::None, SPOOFED).await, want);
    // Trusting other networks than the client's is not trusting it.
    let elsewhere = Trust::Networks(vec![IpNet::parse("10.0.0.0/8").unwrap()]);
    assert_eq!(seen_through(elsewhere, SPOOFED).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peers_chain_is_appended_and_its_proto_and_host_kept() {
    let want = "x-forwarded-for: 6.6.6.6, 127.0.0.1\nx-forwarded-proto: https\nx-forwarded-host: evil.example\nforwarded: for=6.6.6.6;proto=https, for=127.0.0.1\n";
    let loopback = Trust::Networks(vec![IpNet::parse("127.0.0.0/8").unwrap()]);
    assert_eq!(seen_through(loopback, SPOOFED).await, want);
    assert_eq!(seen_through(Trust::All, SPOOFED).await, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_forwarding_headers_gets_the_proxys_own() {
    let want = "x-forwarded-for: 127.0.0.1\nx-forwarded-proto: http\nx-forwarded-host: shop.example\nforwarded: for=127.0.0.1;proto=http;host=shop.example\n";
    assert_eq!(seen_through(Trust::All, "").await, want);
}

/// The header lines of the echo whose name a CGI-style server (WSGI, Rack, PHP: the
/// name upper-cased, `-` made `_`) reads as one of the four forwarding headers, with
/// a value the proxy did not write.
fn spoofed(echo: &str) -> Vec<String> {
    echo.lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(name, value)| {
            let cgi = name.to_ascii_uppercase().replace('-', "_");
            [
                "X_FORWARDED_FOR",
                "X_FORWARDED_PROTO",
                "X_FORWARDED_HOST",
                "FORWARDED",
            ]
            .contains(&cgi.as_str())
                && (value.contains("6.6.6.6") || value.contains("evil") || *value == "https")
        })
        .map(|(name, value)| format!("{name}: {value}"))
        .collect()
}

const UNDERSCORED: &str =
    "X_Forwarded_For: 6.6.6.6\r\nx-forwarded_proto: https\r\nX_FORWARDED_HOST: evil.example\r\n";

/// The proxy is the edge (`trust: none`), so a client's own forwarding headers are
/// dropped. A name spelled with `_` for `-` is the same header to every server that
/// maps names CGI-style (`HTTP_X_FORWARDED_FOR`), and reached the version beside the
/// proxy's own: the client chose its address, scheme and host as the version reads
/// them (nginx drops such names by default, `underscores_in_headers off`, for this
/// reason). On the lean path (a GET) and on hyper's (a chunked upload) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_clients_underscored_forwarding_headers_do_not_reach_the_version() {
    let lean = seen_through_edge(&format!(
        "GET / HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n{UNDERSCORED}\r\n"
    ))
    .await;
    assert!(lean.contains("x-forwarded-for: 127.0.0.1\n"), "{lean}");
    assert_eq!(spoofed(&lean), Vec::<String>::new(), "lean path:\n{lean}");
    let hyper = seen_through_edge(&format!(
        "POST / HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\ntransfer-encoding: chunked\r\n{UNDERSCORED}\r\n2\r\nhi\r\n0\r\n\r\n"
    ))
    .await;
    assert!(hyper.contains("x-forwarded-for: 127.0.0.1\n"), "{hyper}");
    assert_eq!(
        spoofed(&hyper),
        Vec::<String>::new(),
        "hyper's path:\n{hyper}"
    );
}

/// An untrusted client's forwarding header sent as a trailer field of its chunked
/// upload (announced in `Trailer`): the proxy replaces the four in the head, and the
/// same names at the body's end must not reach the version either, where a server
/// that folds trailers into the request's fields (or a framework reading "the last
/// X-Forwarded-For") would believe them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_clients_forwarding_headers_in_trailers_do_not_reach_the_version() {
    let echo = seen_through_edge(
        "POST / HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\ntransfer-encoding: chunked\r\ntrailer: x-forwarded-for, forwarded\r\n\r\n2\r\nhi\r\n0\r\nx-forwarded-for: 6.6.6.6\r\nforwarded: for=6.6.6.6\r\n\r\n",
    )
    .await;
    let (head, trailers) = echo.split_once("--\n").unwrap();
    assert!(head.contains("x-forwarded-for: 127.0.0.1\n"), "{echo}");
    assert_eq!(spoofed(trailers), Vec::<String>::new(), "{echo}");
}
