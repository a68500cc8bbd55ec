//! HTTP/1.1 upgrades (WebSocket) through the proxy, with real sockets on loopback: the
//! upgrade reaches the version with its `Upgrade` and `Connection`, the 101 comes
//! back, bytes flow both ways, the tunnel stays on the version chosen at the upgrade
//! whatever the weight becomes, it is counted once in that version's metrics, a
//! refused upgrade passes its status through, bytes sent with either head are carried,
//! no HTTP timer cuts it, it counts toward `max_connections`, and the drain's deadline
//! closes it.
//!
//! The upstream is a raw socket server: it answers 101 and echoes bytes (the proxy
//! must not care about WebSocket frames). The stable one echoes them as they are, the
//! canary in upper case, so an answer tells which version it came from.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::time::Duration;

use rampart_adapters::proxy::{Proxy, ProxyOptions, ProxyServer};
use rampart_core::policy::ProxyLimits;
use rampart_core::{Variant, Weight};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The longest any test waits for something that must happen: only a missing feature
/// reaches it.
const PATIENCE: Duration = Duration::from_secs(10);

const UPGRADE: &[u8] = b"GET /chat HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n";

/// An upstream that switches any request asking `Upgrade: websocket` (named in
/// `Connection`) and echoes its bytes (those that came with the request's head too),
/// upper-cased when `shout`; `/greet` is switched with `hello` in the 101's own write,
/// `/refuse` gets 400, and a request that does not ask gets 200.
async fn echo_upstream(shout: bool) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let Some((head, early)) = read_head(&mut conn).await else {
                    return;
                };
                let asked = head.contains("\r\nupgrade: websocket\r\n")
                    && head.contains("\r\nconnection: upgrade\r\n");
                if !asked {
                    // A plain request: what a version that never saw the upgrade does.
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                if head.starts_with("get /refuse") {
                    let _ = conn
                        .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let mut switched = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n".to_vec();
                if head.starts_with("get /greet") {
                    switched.extend_from_slice(b"hello");
                }
                conn.write_all(&switched).await.unwrap();
                let mut early = early;
                if shout {
                    early.make_ascii_uppercase();
                }
                if conn.write_all(&early).await.is_err() {
                    return;
                }
                let mut chunk = [0u8; 4096];
                loop {
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if shout {
                                chunk[..n].make_ascii_uppercase();
                            }
                            if conn.write_all(&chunk[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Reads a message head, lower-cased, and whatever came after it; `None` at EOF.
async fn read_head(conn: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_ascii_lowercase();
            return Some((head, buf[end + 4..].to_vec()));
        }
        match tokio::time::timeout(PATIENCE, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no head and no close in {PATIENCE:?}"),
        }
    }
}

async fn proxy_with(limits: ProxyLimits) -> (Proxy, ProxyServer) {
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            limits,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[echo_upstream(false).await]);
    proxy.set_backends(Variant::Canary, &[echo_upstream(true).await]);
    (proxy, server)
}

/// Opens a connection and upgrades it: the answer's head, and the connection.
async fn upgrade(addr: SocketAddr, request: &[u8]) -> (String, TcpStream) {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let (head, rest) = read_head(&mut conn)
        .await
        .expect("an answer to the upgrade");
    assert!(rest.is_empty(), "bytes before anything was sent: {rest:?}");
    (head, conn)
}

/// Sends `text` on an upgraded connection and returns the echo.
async fn echo(conn: &mut TcpStream, text: &str) -> String {
    conn.write_all(text.as_bytes()).await.unwrap();
    let mut got = vec![0u8; text.len()];
    tokio::time::timeout(PATIENCE, conn.read_exact(&mut got))
        .await
        .expect("no echo")
        .expect("the tunnel closed");
    String::from_utf8(got).unwrap()
}

/// Whether `conn` is closed (EOF or reset) within [`PATIENCE`].
async fn closed(conn: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 64];
    loop {
        match tokio::time::timeout(PATIENCE, conn.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_is_switched_and_echoes_both_ways() {
    let (proxy, server) = proxy_with(ProxyLimits::default()).await;
    let (head, mut conn) = upgrade(server.local_addr(), UPGRADE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");
    assert!(head.contains("\r\nx-rampart-variant: stable\r\n"), "{head}");
    assert!(head.contains("sec-websocket-accept: "), "{head}");
    for text in ["ping", "a longer message, several times", "ping"] {
        assert_eq!(echo(&mut conn, text).await, text);
    }
    // Counted once, as a success, in the variant that switched it.
    let totals = proxy.totals();
    assert_eq!((totals.stable.requests, totals.stable.errors), (1, 0));
    assert_eq!(totals.canary.requests, 0);
}

/// Bytes sent in the same write as an upgrade's head, both ways: a client's first
/// message sent with its request, and a version's greeting sent with its 101. Each
/// end read them with the head, before the tunnel took the connection over, and they
/// must come first, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_sent_with_the_upgrade_heads_are_carried_both_ways() {
    let (_proxy, server) = proxy_with(ProxyLimits::default()).await;
    let mut conn = TcpStream::connect(server.local_addr()).await.unwrap();
    let request = String::from_utf8(UPGRADE.to_vec())
        .unwrap()
        .replace("GET /chat", "GET /greet");
    conn.write_all(format!("{request}early").as_bytes())
        .await
        .unwrap();
    let (head, mut got) = read_head(&mut conn).await.expect("an answer");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    while got.len() < "helloearly".len() {
        let mut chunk = [0u8; 64];
        match tokio::time::timeout(PATIENCE, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!("the tunnel gave {got:?}, then {other:?}"),
        }
    }
    assert_eq!(String::from_utf8_lossy(&got), "helloearly");
    assert_eq!(echo(&mut conn, "later").await, "later");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_stays_on_its_variant_when_the_weight_flips() {
    let (proxy, server) = proxy_with(ProxyLimits::default()).await;
    proxy.set_weight(Weight::FULL);
    let (head, mut on_canary) = upgrade(server.local_addr(), UPGRADE).await;
    assert!(head.contains("x-rampart-variant: canary"), "{head}");
    assert_eq!(echo(&mut on_canary, "ping").await, "PING");

    proxy.set_weight(Weight::ZERO);
    let (head, mut on_stable) = upgrade(server.local_addr(), UPGRADE).await;
    assert!(head.contains("x-rampart-variant: stable"), "{head}");
    assert_eq!(echo(&mut on_stable, "ping").await, "ping");
    // The open one still talks to the canary.
    assert_eq!(echo(&mut on_canary, "still there").await, "STILL THERE");

    let totals = proxy.totals();
    assert_eq!((totals.canary.requests, totals.canary.errors), (1, 0));
    assert_eq!((totals.stable.requests, totals.stable.errors), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_passes_its_status_through_and_counts_it() {
    let (proxy, server) = proxy_with(ProxyLimits::default()).await;
    let refused = String::from_utf8_lossy(UPGRADE).replacen("/chat", "/refuse", 1);
    let (head, _conn) = upgrade(server.local_addr(), refused.as_bytes()).await;
    assert!(head.starts_with("http/1.1 400"), "{head}");
    assert!(!head.contains("upgrade: websocket"), "{head}");
    let totals = proxy.totals();
    // A 4xx is the version's answer, not its error (as for any request).
    assert_eq!((totals.stable.requests, totals.stable.errors), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_http_timer_cuts_an_upgraded_connection() {
    let limits = ProxyLimits {
        header_timeout: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(100),
        ..ProxyLimits::default()
    };
    let (_proxy, server) = proxy_with(limits).await;
    let (head, mut conn) = upgrade(server.local_addr(), UPGRADE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    // The behaviour is that time passes without a close: five times both timeouts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(echo(&mut conn, "ping").await, "ping");
    // A connection silent past both timeouts again is not cut either.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(echo(&mut conn, "pong").await, "pong");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgraded_connection_counts_toward_max_connections() {
    let limits = ProxyLimits {
        max_connections: 1,
        ..ProxyLimits::default()
    };
    let (proxy, server) = proxy_with(limits).await;
    let (head, mut conn) = upgrade(server.local_addr(), UPGRADE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(echo(&mut conn, "ping").await, "ping");
    assert_eq!(proxy.open_connections(), 1);

    let mut second = TcpStream::connect(server.local_addr()).await.unwrap();
    second.write_all(UPGRADE).await.unwrap();
    let (head, _) = read_head(&mut second).await.expect("the refusal");
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert_eq!(proxy.refused_connections(), 1);

    // Closed by the client: the slot is free again.
    drop(conn);
    while proxy.open_connections() != 0 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_closes_an_open_websocket() {
    let (proxy, server) = proxy_with(ProxyLimits::default()).await;
    let (head, mut conn) = upgrade(server.local_addr(), UPGRADE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(echo(&mut conn, "ping").await, "ping");
    server
        .stop_accepting(&proxy, Duration::from_millis(200), false)
        .await;
    assert!(closed(&mut conn).await, "the WebSocket outlived the drain");
    while proxy.open_connections() != 0 {
        tokio::task::yield_now().await;
    }
}

/// With `upstream_protocol: h2c`, an upgrade still reaches its version in HTTP/1.1,
/// the only protocol an `Upgrade` means anything in (HTTP/2 has no upgrade): a
/// service whose requests go in h2c keeps its WebSockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_goes_in_http1_when_the_versions_are_spoken_to_in_h2c() {
    let (proxy, server) = Proxy::bind(
        "127.0.0.1:0".parse().unwrap(),
        ProxyOptions {
            upstream: rampart_core::policy::UpstreamProtocol::H2c,
            ..ProxyOptions::default()
        },
    )
    .await
    .unwrap();
    proxy.set_backends(Variant::Stable, &[echo_upstream(false).await]);
    let (head, mut conn) = upgrade(server.local_addr(), UPGRADE).await;
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert_eq!(echo(&mut conn, "ping").await, "ping");
    let totals = proxy.totals();
    assert_eq!((totals.stable.requests, totals.stable.errors), (1, 0));
}
