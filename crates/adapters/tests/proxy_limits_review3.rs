//! Review 3 of the proxy's limits: a client that stops reading its answer.
//!
//! The limits promise that "a slow one, a broken one or a hostile one is cut off at a
//! limit". An upload that stops is cut at `body_timeout`; a head that stops at
//! `header_timeout`; an idle connection at `idle_timeout`. A download the client stops
//! reading has no limit at all: the proxy waits forever to write the answer, holding
//! the client's connection, an upstream connection, the version's handler, and the
//! request in flight (so `POST /drain` of that variant cannot finish before its own
//! timeout). A client whose host vanished mid-answer (no close, no reset) is the same
//! case until the kernel's retransmissions give up, about 15 minutes on Linux.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use rampart_adapters::proxy::{Proxy, ProxyOptions};
use rampart_core::Variant;
use rampart_core::policy::ProxyLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};

/// A version that answers every request with a 256 MiB body, written as fast as its
/// socket takes it: far more than every socket buffer between it and a client.
async fn huge_version() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let size: u64 = 256 << 20;
                let answer = format!("HTTP/1.1 200 OK\r\ncontent-length: {size}\r\n\r\n");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let zeros = vec![0u8; 64 * 1024];
                let mut sent = 0;
                while sent < size {
                    if stream.write_all(&zeros).await.is_err() {
                        return;
                    }
                    sent += zeros.len() as u64;
                }
            });
        }
    });
    addr
}

/// With every timeout at 1 s, a client that sends its request and then reads nothing
/// must be cut off at some limit, and its request leave the flight, well within 20 s.
/// It stayed in flight for as long as the client kept its socket open: `send_timeout`
/// cuts it now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_answer_is_cut_off_at_a_limit() {
    let second = Duration::from_secs(1);
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits: ProxyLimits {
                header_timeout: second,
                idle_timeout: second,
                body_timeout: second,
                send_timeout: second,
                ..ProxyLimits::default()
            },
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[huge_version().await]);

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(server.local_addr()).await.unwrap();
    client
        .write_all(b"GET /download HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    // The request reaches the version and is in flight (a bounded poll on the counter).
    common_until("the request in flight", || {
        proxy.in_flight(Variant::Stable) == 1
    })
    .await;

    // The client reads nothing from here on. Some limit must cut it off: poll, bounded.
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if proxy.in_flight(Variant::Stable) == 0 {
            break;
        }
        #[allow(clippy::disallowed_methods)] // the test's own time limit
        let now = std::time::Instant::now();
        assert!(
            now < deadline,
            "a client that reads nothing still holds its request in flight (and an upstream \
             connection, and its version's handler) 20 s after it stopped reading, with \
             header, idle, body and send timeouts of 1 s: no limit cuts it off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The client left (it took nothing): no error of the version's.
    assert_eq!(proxy.totals().stable.errors, 0);
    drop(client);
}

/// Polls `ready` every 20 ms, for at most 10 s.
async fn common_until(what: &str, mut ready: impl FnMut() -> bool) {
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ready() {
        #[allow(clippy::disallowed_methods)] // the test's own time limit
        let now = std::time::Instant::now();
        assert!(now < deadline, "{what} never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A version that switches every request to a WebSocket and then sends as fast as its
/// socket takes it.
async fn flooding_websocket() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                }
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
                if stream.write_all(switched).await.is_err() {
                    return;
                }
                let frames = vec![0u8; 64 * 1024];
                while stream.write_all(&frames).await.is_ok() {}
            });
        }
    });
    addr
}

/// The same for a WebSocket: a client that takes nothing of what its version sends is
/// cut at `send_timeout`, its tunnel and connection let go (a quiet tunnel, with
/// nothing to send, is `proxy_upgrade.rs`'s: no timer cuts it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_takes_nothing_is_cut_at_the_send_timeout() {
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits: ProxyLimits {
                send_timeout: Duration::from_secs(1),
                ..ProxyLimits::default()
            },
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[flooding_websocket().await]);
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(server.local_addr()).await.unwrap();
    client
        .write_all(b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
        .await
        .unwrap();
    common_until("the tunnel is open", || proxy.open_connections() == 1).await;
    // The client reads nothing from here on.
    common_until("the tunnel is cut", || proxy.open_connections() == 0).await;
    drop(client);
}
