//! `rampart load`: a load that reached nothing says so in its exit code.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{free_port, rampart};

#[test]
fn a_load_that_no_service_answers_exits_1() {
    let url = format!("http://127.0.0.1:{}/", free_port());
    let out = rampart()
        .args([
            "load",
            "--url",
            &url,
            "--rps",
            "20",
            "--duration",
            "1s",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], 0, "{v}");
    assert!(v["failed"].as_u64().unwrap() > 0, "{v}");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("got an answer"), "{err}");
}

/// `analysis.load` stops with its release (its task is aborted), but each request ran
/// in a task of its own that lived on up to its 30 s limit: a service that stopped
/// answering kept getting held connections from a release that had ended. Stopping a
/// generator that cuts on stop (a release's own load) ends its requests in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_load_ends_its_requests_in_flight() {
    use std::sync::Arc;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spec = rampart::load::LoadSpec {
        url: format!("http://{}/", listener.local_addr().unwrap()),
        rps: 20,
        user_header: None,
        users: 1,
        duration: None,
        paths: Vec::new(),
        headers: Vec::new(),
        cut_on_stop: true,
    };
    let load = tokio::spawn(rampart::load::generate(
        spec,
        Arc::new(rampart::load::LoadStats::default()),
    ));
    // A service that reads the request and never answers.
    let (mut held, _) = listener.accept().await.unwrap();
    let mut buf = [0u8; 4096];
    assert!(held.read(&mut buf).await.unwrap() > 0);
    load.abort();
    let _ = load.await;
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match held.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "a request of a stopped load was still held open 10 s later"
    );
}
