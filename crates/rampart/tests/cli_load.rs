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
