//! A slow canary under closed-loop clients (each user waits for its answer before the
//! next request), with real processes behind the embedded proxy: the slow version gets
//! few requests, too few for `min_samples` in any one interval.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// v2 answers in `v2_ms`, v1 in 5 ms; p99 judged on a ratio to stable.
fn policy(dir: &std::path::Path, port: u16, v2_ms: u32) -> std::path::PathBuf {
    let text = format!(
        r#"service: slowpoke
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_LATENCY_MS: "v1=5,v2={v2_ms}"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic:
  proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}
strategy:
  canary:
    steps:
      - {{weight: 10, bake: 6s}}
analysis:
  interval: 1s
  min_samples: 20
  failure_limit: 2
  metrics:
    - {{name: p99, metric: latency_p99, judge: {{max_ratio_to_stable: 3}}}}
"#,
        exe = common::exe(),
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `users` clients, each sending its next request when the last one answered, until
/// `stop`; each keeps its own user id, so the sticky split puts some on the canary.
fn closed_loop(rt: &tokio::runtime::Runtime, port: u16, users: u32, stop: Arc<AtomicBool>) {
    for u in 0..users {
        let stop = stop.clone();
        rt.spawn(async move {
            let url = format!("http://127.0.0.1:{port}/");
            while !stop.load(Ordering::Relaxed) {
                let got = rampart_adapters::http::send_with(
                    "GET",
                    &url,
                    None,
                    &[("x-user", format!("user-{u}"))],
                    std::time::Duration::from_secs(5),
                )
                .await;
                if got.is_err() {
                    // Not listening yet (the data plane starts with the release): a
                    // client's own back-off before it tries again.
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
            }
        });
    }
}

/// Regression (issue 17): every interval of a canary 60 times slower than stable was
/// inconclusive for want of `min_samples` under closed-loop clients, and the release
/// halted and paged a human. The threshold judge pools intervals until they hold
/// `min_samples`: rolled back (exit 3), not halted (exit 4).
#[test]
fn a_slow_canary_under_closed_loop_clients_is_rolled_back_not_halted() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let path = policy(dir.path(), port, 300);
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let rt = common::runtime();
    let stop = Arc::new(AtomicBool::new(false));
    closed_loop(&rt, port, 40, stop.clone());
    let out = common::rampart()
        .args(["run", "--stop-after", "--version", "v2", "--stable", "v1"])
        .args(["--output", "json", "--state-dir"])
        .arg(&state)
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(3), "{v}");
    assert!(v["reason"].to_string().contains("p99"), "{v}");
    // The canary never had min_samples in one interval: the verdict came from a pool.
    let timeline = v["timeline"].as_array().unwrap();
    let pooled = timeline.iter().any(|e| {
        e["readings"].as_array().is_some_and(|r| {
            r.iter()
                .any(|r| r["detail"].as_str().is_some_and(|d| d.contains("pooled")))
        })
    });
    assert!(pooled, "{v}");
}
