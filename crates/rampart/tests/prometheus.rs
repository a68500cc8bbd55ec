//! The `prometheus` metrics source against a real Prometheus (Debian `prometheus`)
//! that scrapes rampart's own `/metrics` during the release: one stack exercises the
//! `prometheus` and `builtin` sources side by side.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::servers;

use std::process::Command;

use common::{free_port, release_json_with};

/// Prometheus scraping `target` every second; returns it and its base URL.
fn prometheus(target: &str) -> (servers::Daemon, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: rampart\n    static_configs:\n      - targets: [\"{target}\"]\n"
    );
    std::fs::write(dir.path().join("prometheus.yml"), cfg).unwrap();
    let port = free_port();
    let daemon = servers::spawn(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn"),
    );
    let url = format!("http://127.0.0.1:{port}");
    let rt = common::runtime();
    servers::wait_until("prometheus", || {
        rt.block_on(rampart_adapters::http::get_status(
            &format!("{url}/-/ready"),
            std::time::Duration::from_secs(1),
        ))
        .ok()
            == Some(200)
    });
    (daemon, dir, url)
}

/// A canary judged on a Prometheus metric of rampart's own counters (`measured`: its
/// query or counts and its judge), and on the builtin error rate, with v2 failing
/// `v2_errors` of requests. The first intervals may have no data while Prometheus
/// gathers its first samples; they count as inconclusive.
fn policy(
    dir: &std::path::Path,
    prom: &str,
    v2_errors: &str,
    measured: &str,
) -> (std::path::PathBuf, u16) {
    let port = free_port();
    let text = format!(
        r#"service: shop
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "v1=0,v2={v2_errors}", SAMPLE_LATENCY_MS: "2"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}}}
strategy:
  canary:
    steps:
      - {{weight: 30, bake: 6s}}
analysis:
  interval: 2s
  min_samples: 20
  failure_limit: 2
  no_data: {{limit: 4, action: rollback}}
  inconclusive: {{limit: 6, action: halt}}
  prometheus: {prom}
  metrics:
    - name: prom-error-ratio
      source: prometheus
      {measured}
    # Alone, the builtin metric cannot fail the release: the query decides.
    - {{name: builtin-errors, metric: error_rate, judge: {{max: 5%}}, critical: false, weight: 0.5}}
"#,
        exe = common::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    (path, port)
}

/// A query metric judged by `max: 0.05`.
fn query_metric(query: &str) -> String {
    format!("query: '{query}'\n      judge: {{max: 0.05}}")
}

const ERROR_RATIO: &str = r#"sum(rate(rampart_request_errors_total{service="{service}",variant="{variant}"}[4s])) / sum(rate(rampart_requests_total{service="{service}",variant="{variant}"}[4s]))"#;

/// The prometheus metric's readings from a report's timeline.
fn prom_readings(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["readings"].as_array().cloned().unwrap_or_default())
        .filter(|r| r["name"] == "prom-error-ratio")
        .collect()
}

/// A healthy v2 is promoted and one failing 30 % of requests rolled back, decided by
/// the Prometheus metric `measured`, whose readings carry the number `judged`.
fn healthy_promoted_failing_rolled_back(measured: &str, judged: &str) {
    for (errors, want) in [("0", 0), ("30%", 3)] {
        let metrics_port = free_port();
        let (_prom, _pdir, url) = prometheus(&format!("127.0.0.1:{metrics_port}"));
        let dir = tempfile::tempdir().unwrap();
        let (path, port) = policy(dir.path(), &url, errors, measured);
        let listen = format!("127.0.0.1:{metrics_port}");
        let (code, v) = release_json_with(&path, port, 200, &["--metrics-listen", &listen]);
        assert_eq!(code, want, "{}", serde_json::to_string_pretty(&v).unwrap());
        let readings = prom_readings(&v);
        let verdict = if want == 0 { "pass" } else { "fail" };
        assert!(
            readings
                .iter()
                .any(|r| r["verdict"] == verdict && r[judged].is_f64()),
            "the metric was read and decided: {readings:#?}"
        );
        if want == 3 {
            let reason = v["reason"].as_str().unwrap();
            assert!(reason.contains("prom-error-ratio"), "{reason}");
        }
    }
}

#[test]
fn a_prometheus_query_judges_the_canary_beside_the_builtin_source_real_prometheus() {
    healthy_promoted_failing_rolled_back(&query_metric(ERROR_RATIO), "canary");
}

#[test]
fn an_empty_vector_is_no_data_and_never_promotes_real_prometheus() {
    let metrics_port = free_port();
    let (_prom, _pdir, url) = prometheus(&format!("127.0.0.1:{metrics_port}"));
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = policy(
        dir.path(),
        &url,
        "0",
        &query_metric(r#"sum(rate(no_such_metric_total{variant="{variant}"}[4s]))"#),
    );
    let listen = format!("127.0.0.1:{metrics_port}");
    let (code, v) = release_json_with(&path, port, 200, &["--metrics-listen", &listen]);
    // The builtin metric passes, the query has no data: never judged, never promoted.
    assert_eq!(code, 4, "{}", serde_json::to_string_pretty(&v).unwrap());
    assert!(
        v["reason"].as_str().unwrap().contains("cannot be judged"),
        "{v}"
    );
    let readings = prom_readings(&v);
    assert!(!readings.is_empty());
    assert!(
        readings.iter().all(|r| r["verdict"] == "no_data"),
        "{readings:#?}"
    );
    assert!(
        readings[0]["detail"]
            .as_str()
            .unwrap()
            .contains("empty vector"),
        "{readings:#?}"
    );
}

#[test]
fn the_sequential_judge_runs_on_counts_from_prometheus_real_prometheus() {
    // Issue 17, item 2: errors out of requests, two PromQL queries per variant, judged
    // by the sequential test with no help from the builtin counters.
    let counts = r#"bad: 'sum(increase(rampart_request_errors_total{service="{service}",variant="{variant}"}[{interval}])) or vector(0)'
      total: 'sum(increase(rampart_requests_total{service="{service}",variant="{variant}"}[{interval}]))'
      judge: sequential"#;
    // The sequential judge's evidence is on its readings.
    healthy_promoted_failing_rolled_back(counts, "log_evidence");
}
