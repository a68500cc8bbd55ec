//! A version's host that dies without a word: no reset, no close, its packets simply
//! stop (a crash, a power loss, a partition). On loopback the kernel answers for every
//! address, so the test runs in a network namespace of its own (`unshare -rn`, which
//! needs no privilege where user namespaces are allowed) and kills the host there with
//! a blackhole route to its address: exactly what the proxy sees of a dead host.
//!
//! Without the proxy's TCP liveness options, a request written to such a host waits
//! for the kernel's retransmission limit (about 15 minutes), and an h2c connection to
//! it takes every new stream meanwhile.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_core::policy::UpstreamProtocol;
use tokio::net::TcpListener;

/// Set for the test binary run inside the namespace.
const INSIDE: &str = "RAMPART_TEST_IN_NETNS";

/// The dead host's address, inside the namespace.
const HOST: &str = "127.0.0.2";

/// Runs [`inside_a_network_namespace`] in a network namespace of its own.
#[test]
fn requests_to_a_version_whose_host_died_fail_rather_than_hang_in_a_network_namespace() {
    let out = Command::new("unshare")
        .arg("-rn")
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "inside_a_network_namespace",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INSIDE, "1")
        .output()
        .expect("`unshare` (util-linux) runs the test in a network namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "in the namespace: {}\n{stdout}\n{stderr}",
        out.status
    );
}

/// Inside the namespace: a request through the proxy to a version over HTTP/1.1 and
/// one to a version over h2c each open a connection that then stays pooled; the
/// versions' host dies; the next request to each is answered `502` once its bytes
/// have gone unacknowledged for the proxy's limit (30 s), where without it each
/// would still be waiting long after the test's 120 s bound.
#[test]
#[ignore = "run by the test above, in a network namespace of its own"]
fn inside_a_network_namespace() {
    if std::env::var_os(INSIDE).is_none() {
        eprintln!("changes its network namespace's routes: run by the test above only");
        return;
    }
    ip(&["link", "set", "lo", "up"]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (_h1, h1_server) =
            common::proxy_speaking(http1_version().await, UpstreamProtocol::Http1).await;
        let (_h2c, h2c_server) =
            common::proxy_speaking(h2c_version().await, UpstreamProtocol::H2c).await;
        for server in [&h1_server, &h2c_server] {
            assert_eq!(get(server.local_addr()).await, StatusCode::OK);
        }

        ip(&[
            "route",
            "add",
            "blackhole",
            &format!("{HOST}/32"),
            "table",
            "local",
        ]);

        let answers = tokio::time::timeout(Duration::from_secs(120), async {
            tokio::join!(get(h1_server.local_addr()), get(h2c_server.local_addr()))
        })
        .await
        .expect("a request to a dead host is still waiting after 120 s");
        assert_eq!(
            answers,
            (StatusCode::BAD_GATEWAY, StatusCode::BAD_GATEWAY),
            "(HTTP/1.1, h2c)"
        );
    });
}

/// Runs `ip args`, which must succeed.
fn ip(args: &[&str]) {
    let status = Command::new("ip").args(args).status().unwrap();
    assert!(status.success(), "ip {args:?}: {status}");
}

/// `GET /` through the proxy at `addr`, on a connection of its own: the status.
async fn get(addr: SocketAddr) -> StatusCode {
    common::client()
        .request(
            Request::get(format!("http://{addr}/"))
                .body(http_body_util::Empty::new())
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
}

/// An HTTP/1.1 version on [`HOST`] answering `ok` to every request, keeping its
/// connections.
async fn http1_version() -> SocketAddr {
    common::raw::answering(
        HOST,
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok".to_vec(),
    )
    .await
}

/// An h2c version on [`HOST`] answering `ok` to every request.
async fn h2c_version() -> SocketAddr {
    let listener = TcpListener::bind((HOST, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = service_fn(|_req: Request<Incoming>| async {
                Ok::<_, Infallible>(Response::new(Full::new(bytes::Bytes::from_static(b"ok"))))
            });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc),
            );
        }
    });
    addr
}
