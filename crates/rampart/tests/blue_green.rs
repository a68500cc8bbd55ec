//! A blue-green release under steady load through the embedded proxy: the switch to
//! the new colour and the operator's switch back (`rampart rollback SERVICE` from
//! another process, while the previous colour is kept) fail no request.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::servers::SpawnGuarded as _;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::atomic::Ordering;

use common::{exe, free_port, rampart, runtime, start_load};

fn policy(port: u16) -> String {
    format!(
        r#"service: colours
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "5"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic:
  proxy: {{listen: "127.0.0.1:{port}"}}
strategy:
  blue_green:
    preview: [{{http: /healthz}}, {{command: [sh, -c, "test -n '{{url}}'"]}}]
    stability: 2s
    keep_previous: 5m
analysis:
  interval: 1s
  min_samples: 10
  metrics:
    - {{metric: error_rate, judge: {{max: 1%}}}}
rollback: {{drain: 5s}}
"#,
        exe = exe()
    )
}

/// Reads lines until one contains `needle`; returns everything read.
fn read_until(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    needle: &str,
) -> Vec<String> {
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains(needle) {
            return seen;
        }
    }
    panic!("`{needle}` never printed:\n{}", seen.join("\n"));
}

#[test]
fn switching_colours_and_back_under_load_fails_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy_path = dir.path().join("rampart.yaml");
    std::fs::write(&policy_path, policy(port)).unwrap();
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());

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
        .arg(&state)
        .arg("-f")
        .arg(&policy_path)
        .stdout(Stdio::piped())
        .spawn_guarded();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    // Load starts once the proxy listens and v1 serves.
    read_until(&mut lines, "stable ready");
    let rt = runtime();
    let (load, stats) = start_load(&rt, port, 300);

    read_until(&mut lines, "keeping_previous");
    let switched = stats.sent.load(Ordering::Relaxed);
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "requests failed during the switch"
    );
    assert!(
        stats.canary.load(Ordering::Relaxed) > 0,
        "the new colour served"
    );

    let rollback = rampart()
        .args([
            "rollback",
            "colours",
            "--reason",
            "support tickets",
            "--state-dir",
        ])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(
        rollback.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&rollback.stderr)
    );
    let seen = read_until(&mut lines, "serving on");
    assert!(
        seen.iter().any(|l| l.contains("support tickets")),
        "{seen:?}"
    );
    let canary_after = stats.canary.load(Ordering::Relaxed);
    // Keep the load on a moment longer: every request now goes to v1.
    let before = stats.sent.load(Ordering::Relaxed);
    while stats.sent.load(Ordering::Relaxed) < before + 100 {
        std::thread::yield_now();
    }
    assert_eq!(
        stats.failed.load(Ordering::Relaxed),
        0,
        "requests failed during the switch back"
    );
    assert_eq!(
        stats.canary.load(Ordering::Relaxed),
        canary_after,
        "nothing reached v2 after the switch back"
    );
    assert!(stats.sent.load(Ordering::Relaxed) > switched);
    load.abort();

    nix_interrupt(run.id());
    let status = run.wait().unwrap();
    assert_eq!(status.code(), Some(3), "the release ended rolled back");
}

fn nix_interrupt(pid: u32) {
    std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
}
