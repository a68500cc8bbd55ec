//! The forwarding headers a version sees through the proxy, with real sockets on
//! loopback (`traffic.proxy.forwarded.trust`): an untrusted client's spoofed
//! `X-Forwarded-For`, `-Proto`, `-Host` and `Forwarded` are replaced by the proxy's
//! own, and a trusted peer's chain is extended with its address.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rampart_adapters::proxy::{Proxy, ProxyOptions};
use rampart_core::Variant;
use rampart_core::policy::{IpNet, Trust};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const PATIENCE: Duration = Duration::from_secs(10);

/// A version that answers with the forwarding headers it got, one `name: value` line
/// each, in a fixed order.
async fn mirror() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut seen = String::new();
                    for name in [
                        "x-forwarded-for",
                        "x-forwarded-proto",
                        "x-forwarded-host",
                        "forwarded",
                    ] {
                        for v in req.headers().get_all(name) {
                            seen.push_str(&format!("{name}: {}\n", v.to_str().unwrap()));
                        }
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(seen))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// What the version saw of a request sent through a proxy trusting `trust` with
/// `headers` added.
async fn seen_through(trust: Trust, headers: &str) -> String {
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            forwarded: trust,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[mirror().await]);
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(
        format!("GET / HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n{headers}\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
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
