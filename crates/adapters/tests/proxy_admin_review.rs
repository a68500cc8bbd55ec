//! What a review of the admin API and its client found, with a real data plane's admin
//! socket: each test failed on the code it was written against.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use rampart_adapters::proxy::admin::{AdminServer, PlaneHooks};
use rampart_adapters::proxy::remote::RemotePlane;
use rampart_adapters::proxy::{Proxy, ProxyOptions};
use rampart_adapters::telemetry::Telemetry;

mod common;

/// A controller's handle on the data plane holds the admin token, and its `Debug`
/// (derived) printed it: any `{:?}` of the handle, or of a structure holding it (a
/// `tracing` field, a panic message, an error's context), writes the credential that
/// moves all traffic into logs. The token file's path says where it is; the token
/// itself must never be shown, as `TlsTerminator` and `PlaneHooks` already take care.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_planes_debug_does_not_show_the_admin_token() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("svc.sock");
    let token_file = dir.path().join("svc.token");
    let token = "s3cret-admin-token-0123456789abcdef".to_string();
    std::fs::write(&token_file, &token).unwrap();
    let (proxy, _server) = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
        .await
        .unwrap();
    let telemetry = Arc::new(Telemetry::new("svc", Arc::new(proxy.clone())));
    let admin = AdminServer::bind_unix(
        &socket,
        proxy,
        token.clone(),
        telemetry,
        PlaneHooks::default(),
    )
    .await
    .unwrap();
    let plane = RemotePlane::attach(&socket, &token_file).await.unwrap();
    let shown = format!("{plane:?}");
    assert!(
        !shown.contains(&token),
        "the admin token is in the handle's Debug: {shown}"
    );
    admin.close().await;
}

/// The admin API started with an empty token (`AdminServer::bind` takes any string; the
/// 16-character floor lives in its callers alone) let in a request with no
/// `Authorization` at all: the missing header is read as the empty token, and the
/// empty token matches. An absent credential must never pass, whatever the token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_authorization_is_refused_even_when_the_token_is_empty() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (proxy, _server) = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
        .await
        .unwrap();
    let telemetry = Arc::new(Telemetry::new("svc", Arc::new(proxy.clone())));
    let admin = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        proxy,
        String::new(),
        telemetry,
    )
    .await
    .unwrap();
    let mut conn = tokio::net::TcpStream::connect(admin.local_addr())
        .await
        .unwrap();
    conn.write_all(
        b"PUT /weight HTTP/1.1\r\nhost: admin\r\nconnection: close\r\ncontent-length: 15\r\n\r\n{\"weight\": 100}",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        conn.read_to_end(&mut answer),
    )
    .await
    .expect("no answer")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 401"),
        "a request without credentials moved the weight:\n{answer}"
    );
}

/// The data plane restarted under a controller (a crash, systemd starting it again):
/// it counts from zero under another identity. The measurements skipped that interval
/// as they should, but the release's totals (the report's `requests`, the status line)
/// were the new counts minus the old base, clamped at 0: the requests before the
/// restart vanished, and the first ones after it too until the new counts passed the
/// old. Expected: what both data planes counted, each from where this controller
/// first saw it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_totals_keep_what_a_data_plane_counted_before_it_restarted() {
    use rampart_adapters::proxy::Totals as _;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("svc.sock");
    let token_file = dir.path().join("svc.token");
    let token = "a-token-of-the-data-plane-0123456789".to_string();
    std::fs::write(&token_file, &token).unwrap();
    let stable = common::backend("stable", Arc::new(tokio::sync::Notify::new())).await;
    let plane_on = async || {
        let (proxy, server) = common::proxy_to(stable).await;
        let telemetry = Arc::new(Telemetry::new("svc", Arc::new(proxy.clone())));
        let _ = std::fs::remove_file(&socket);
        let admin = AdminServer::bind_unix(
            &socket,
            proxy,
            token.clone(),
            telemetry,
            PlaneHooks::default(),
        )
        .await
        .unwrap();
        (admin, server)
    };
    let send = async |server: &rampart_adapters::proxy::ProxyServer, n: usize| {
        for _ in 0..n {
            let (status, _) = common::get_body(server.local_addr(), "/", None).await;
            assert_eq!(status, 200);
        }
    };
    let (first, first_server) = plane_on().await;
    send(&first_server, 3).await;
    // The controller attaches after 3 requests: its totals count from there.
    let plane = RemotePlane::attach(&socket, &token_file).await.unwrap();
    send(&first_server, 40).await;
    plane.refresh().await.unwrap();
    assert_eq!(plane.totals().stable.requests, 40);
    first.close().await;
    first_server.close().await;
    // Started again: counting from zero.
    let (second, second_server) = plane_on().await;
    send(&second_server, 5).await;
    plane.refresh().await.unwrap();
    assert_eq!(
        plane.totals().stable.requests,
        45,
        "40 counted before the restart, 5 after"
    );
    send(&second_server, 50).await;
    plane.refresh().await.unwrap();
    assert_eq!(plane.totals().stable.requests, 95);
    second.close().await;
}
