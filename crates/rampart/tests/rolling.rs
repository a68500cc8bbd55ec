//! A rolling release of four replicas under steady load: replicas are started before
//! traffic moves to them and taken out of rotation and drained before they stop, so no
//! request fails, and every replica ends up on the new version.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::servers::SpawnGuarded as _;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::Ordering;

use common::{exe, free_port, rampart, runtime, start_load};

#[test]
fn rolling_release_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy = format!(
        r#"service: rolled
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "20"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    replicas: 4
traffic:
  proxy: {{listen: "127.0.0.1:{port}"}}
strategy:
  rolling: {{batch: 2, bake: 1s}}
analysis:
  interval: 1s
  min_samples: 10
  metrics:
    - {{metric: error_rate, judge: {{max: 1%}}}}
rollback: {{drain: 5s}}
"#,
        exe = exe()
    );
    let policy_path = dir.path().join("rampart.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let _versions = common::Versions(dir.path().join("state"));
    let mut run = rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--stable",
            "v1",
            "--keep-running",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("-f")
        .arg(&policy_path)
        .stdout(Stdio::piped())
        .spawn_guarded();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let rt = runtime();
    let mut load = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if line.contains("stable ready") {
            load = Some(start_load(&rt, port, 300));
        }
        let done = line.contains("serving on");
        seen.push(line);
        if done {
            break;
        }
    }
    let (load, stats) = load.unwrap_or_else(|| panic!("never started:\n{}", seen.join("\n")));
    let text = seen.join("\n");
    assert!(text.contains("promoted"), "{text}");
    assert!(text.contains("stable at 0 replica(s)"), "{text}");
    assert!(stats.sent.load(Ordering::Relaxed) > 500);
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "requests failed during the rolling release:\n{text}"
    );
    load.abort();
    std::process::Command::new("kill")
        .args(["-INT", &run.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(run.wait().unwrap().code(), Some(0));
}
