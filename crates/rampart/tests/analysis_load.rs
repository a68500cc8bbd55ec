//! `analysis.load`: rampart's own traffic judges a service nobody uses during the
//! release (real processes behind the embedded proxy, no other client).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

/// `rampart run` with no client at all: (exit code, report).
fn release(path: &std::path::Path) -> (i32, serde_json::Value) {
    let state = path.parent().unwrap().join("state");
    let _versions = common::Versions(state.clone());
    let out = common::rampart()
        .args(["run", "--stop-after", "--version", "v2", "--stable", "v1"])
        .args(["--output", "json", "--state-dir"])
        .arg(&state)
        .arg("-f")
        .arg(path)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

/// Without users, a bad canary cannot be judged: the release halts for want of data.
/// With `analysis.load`, rampart's own requests judge it and it is rolled back; with
/// `counts: false` they reach the service but count in no metric, so it halts again.
#[test]
fn a_quiet_service_is_judged_on_rampart_s_own_load() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v) = release(&common::quiet_policy(dir.path(), "30%", ""));
    assert_eq!(code, 4, "no users, no data: {v}");

    let dir = tempfile::tempdir().unwrap();
    let load = "  load: {rate: 100, paths: [/, /orders], headers: {x-tenant: synthetic}}\n";
    let (code, v) = release(&common::quiet_policy(dir.path(), "30%", load));
    assert_eq!(code, 3, "rolled back on its own load's evidence: {v}");
    assert!(v["requests"]["canary"].as_u64().unwrap() > 10, "{v}");
    assert!(v["reason"].to_string().contains("errors"), "{v}");

    let dir = tempfile::tempdir().unwrap();
    let uncounted = "  load: {rate: 100, counts: false}\n";
    let (code, v) = release(&common::quiet_policy(dir.path(), "30%", uncounted));
    assert_eq!(code, 4, "its own load counted in nothing: {v}");
    assert_eq!(v["requests"]["canary"].as_u64(), Some(0), "{v}");
    assert_eq!(v["requests"]["stable"].as_u64(), Some(0), "{v}");
}
