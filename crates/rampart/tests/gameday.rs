//! `rampart gameday`, part of the test suite: every safety guard is rehearsed end to end
//! on the embedded default and must end the way it promises.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

#[test]
fn every_guard_behaves_in_the_gameday() {
    let out = common::rampart()
        .args(["gameday", "--output", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    let names: Vec<&str> = v["scenarios"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scenario"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            "bad-canary",
            "flaky-spike",
            "metrics-outage",
            "contract-migration",
            "stable-unhealthy",
            "cap-reached"
        ]
    );
    for s in v["scenarios"].as_array().unwrap() {
        assert_eq!(s["passed"], true, "{s}");
    }
    assert_eq!(out.status.code(), Some(0), "{v}");
}
