//! Review 3 of the forwarding headers: what else an untrusted client can pass itself
//! off with.
//!
//! dataplane.md: with `trust: none` "a client cannot pass itself off as another
//! address", and an untrusted peer's forwarding headers are dropped and replaced. The
//! proxy drops four (`X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`) and their `_`
//! spellings, but the other client-address and scheme headers that common servers and
//! frameworks read in front of (or instead of) those reach the version as the client
//! wrote them:
//! - `X-Real-IP` and `True-Client-IP` (go-chi's `middleware.RealIP` reads them before
//!   `X-Forwarded-For`; nginx deployments set `X-Real-IP` for the app);
//! - `X-Forwarded-Ssl: on` (Rack's `Request#scheme` reads it before
//!   `X-Forwarded-Proto`: a plain-HTTP request is taken for HTTPS);
//! - `X-Forwarded-Port` and `X-Forwarded-Prefix` (Spring's `ForwardedHeaderFilter`
//!   builds the links it sends, e.g. a password-reset URL, from them).

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
use rampart_core::policy::Trust;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A version that answers with every header it got, one `name: value` line each.
async fn mirror() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut seen = String::new();
                    for (name, v) in req.headers() {
                        seen.push_str(&format!(
                            "{name}: {}\n",
                            String::from_utf8_lossy(v.as_bytes())
                        ));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_clients_other_address_and_scheme_headers_do_not_reach_the_version() {
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            forwarded: Trust::None,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[mirror().await]);
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    conn.write_all(
        b"GET / HTTP/1.1\r\nhost: shop.example\r\nconnection: close\r\n\
          x-real-ip: 203.0.113.66\r\ntrue-client-ip: 203.0.113.66\r\n\
          x-forwarded-ssl: on\r\nx-forwarded-port: 443\r\n\
          x-forwarded-prefix: //evil.example\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("no answer")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let spoofed: Vec<&str> = body
        .lines()
        .filter(|l| {
            l.contains("203.0.113.66")
                || l.contains("evil.example")
                || *l == "x-forwarded-ssl: on"
                || *l == "x-forwarded-port: 443"
        })
        .collect();
    assert!(
        spoofed.is_empty(),
        "an untrusted client's own address/scheme headers reached the version as it wrote them: {spoofed:?}"
    );
}
