//! Structured logs: with `--log-format json`, stderr carries one JSON object per log
//! line, and every line the release writes names its release id.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{free_port, rampart};

#[test]
fn every_log_line_of_a_release_carries_its_release_id() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy = format!(
        r#"service: logged
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 1s}}]}}}}
analysis:
  interval: 500ms
  no_data: {{limit: 2, action: rollback}}
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
"#,
        exe = common::exe()
    );
    let path = dir.path().join("rampart.yaml");
    std::fs::write(&path, policy).unwrap();
    // No load: the release rolls back for lack of data, logging as it goes.
    let out = rampart()
        .args([
            "--log-format",
            "json",
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--stable",
            "v1",
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("-f")
        .arg(&path)
        .env("RAMPART_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["release_id"].as_str().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("timestamp").is_some())
        .collect();
    let of_release: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| {
            v["target"]
                .as_str()
                .unwrap_or("")
                .starts_with("rampart_controller")
        })
        .collect();
    assert!(
        of_release.len() >= 5,
        "the release logged its events: {lines:#?}"
    );
    for line in of_release {
        assert_eq!(line["span"]["release"], id, "{line}");
        assert!(line["level"].is_string(), "{line}");
        assert!(line["fields"]["message"].is_string(), "{line}");
    }
}
