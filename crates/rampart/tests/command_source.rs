//! Metrics providers end to end through `rampart run`: a counts metric read by the
//! `command` source rolls a bad canary back, and a provider that cannot read (its
//! credential is not in the environment) blocks the release before any traffic
//! moves, at the pre-release gates.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{free_port, release_json};

/// A one-step canary of the sample service, judged on the query metric `metric`
/// (YAML lines at the metric's indentation) and, without deciding anything, on the
/// builtin error rate.
fn policy(dir: &std::path::Path, metric: &str) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let text = format!(
        r#"service: shop
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_LATENCY_MS: "2"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}}}
strategy:
  canary:
    steps:
      - {{weight: 30, bake: 6s}}
analysis:
  interval: 1s
  min_samples: 20
  no_data: {{limit: 3, action: halt}}
  metrics:
{metric}
    # Alone, the builtin metric cannot fail the release: the provider's metric decides.
    - {{name: builtin-errors, metric: error_rate, judge: {{max: 5%}}, critical: false, weight: 0.5}}
"#,
        exe = common::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    (path, port)
}

fn kinds(v: &serde_json::Value) -> Vec<String> {
    v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_counts_metric_from_a_command_rolls_a_failing_canary_back() {
    // The job the command stands for reports, each interval, 30 failed checkouts in
    // 100 for the canary and none for stable; the script lives beside the policy.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("checkouts.sh"),
        "if [ \"$1\" = canary ]; then bad=30; else bad=0; fi\necho \"{\\\"failed\\\": $bad, \\\"all\\\": 100}\"\n",
    )
    .unwrap();
    let (path, port) = policy(
        dir.path(),
        "    - {name: failed-checkouts, source: command, command: [sh, ./checkouts.sh, '{variant}'], bad: $.failed, total: $.all, judge: sequential}",
    );
    let (code, v) = release_json(&path, port, 100);
    assert_eq!(code, 3, "{}", serde_json::to_string_pretty(&v).unwrap());
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("failed-checkouts"), "{reason}");
    let readings: Vec<&serde_json::Value> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["readings"].as_array().into_iter().flatten())
        .filter(|r| r["name"] == "failed-checkouts")
        .collect();
    assert!(
        readings.iter().any(|r| r["verdict"] == "fail"),
        "{readings:#?}"
    );
}

#[test]
fn a_provider_without_its_credential_blocks_the_release_before_traffic_moves() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = policy(
        dir.path(),
        "    - {name: p99, source: http, url: 'http://127.0.0.1:9/p99/{variant}', headers: {Authorization: 'Bearer {env:RAMPART_TEST_SURELY_UNSET_TOKEN}'}, judge: {max: 250}}",
    );
    let (code, v) = release_json(&path, port, 20);
    assert_eq!(code, 5, "{}", serde_json::to_string_pretty(&v).unwrap());
    assert_eq!(v["outcome"], "blocked");
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("metrics source http")
            && reason.contains("RAMPART_TEST_SURELY_UNSET_TOKEN is not set"),
        "{reason}"
    );
    let kinds = kinds(&v);
    assert!(kinds.contains(&"blocked".to_string()), "{kinds:?}");
    assert!(
        !kinds.contains(&"weight_set".to_string()),
        "no traffic moved: {kinds:?}"
    );
}
