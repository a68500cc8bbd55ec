//! Alertmanager silences against a real Alertmanager (Debian
//! `prometheus-alertmanager`) on loopback: held while the release runs, expired when it
//! ends, and reconciled after a crash, so none is ever left behind.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::servers::SpawnGuarded as _;

use common::servers;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_port, rampart};

fn alertmanager() -> (servers::Daemon, tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("am.yml"),
        "route:\n  receiver: nobody\nreceivers:\n  - name: nobody\n",
    )
    .unwrap();
    let port = free_port();
    let daemon = servers::spawn(
        Command::new("prometheus-alertmanager")
            .arg(format!(
                "--config.file={}",
                dir.path().join("am.yml").display()
            ))
            .arg(format!(
                "--storage.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--cluster.listen-address=")
            .arg("--log.level=warn"),
    );
    let url = format!("http://127.0.0.1:{port}");
    servers::wait_until("alertmanager", || silences(&url).is_some());
    (daemon, dir, url)
}

/// Every silence, or None while Alertmanager is not answering.
fn silences(url: &str) -> Option<Vec<serde_json::Value>> {
    let rt = common::runtime();
    let (status, body) = rt
        .block_on(rampart_adapters::http::get_text(
            &format!("{url}/api/v2/silences"),
            Duration::from_secs(2),
        ))
        .ok()?;
    (status == 200).then(|| serde_json::from_str::<Vec<serde_json::Value>>(&body).unwrap())
}

/// Active silences whose comment starts with `prefix`.
fn active(url: &str, prefix: &str) -> Vec<serde_json::Value> {
    silences(url)
        .unwrap()
        .into_iter()
        .filter(|s| s["status"]["state"] == "active")
        .filter(|s| s["comment"].as_str().unwrap_or("").starts_with(prefix))
        .collect()
}

fn policy(dir: &std::path::Path, am: &str) -> std::path::PathBuf {
    let text = format!(
        r#"service: shop
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 1s}}]}}}}
analysis:
  interval: 1s
  no_data: {{limit: 4, action: rollback}}
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
silences:
  alertmanager: {am}
  matchers:
    - {{name: service, value: shop}}
    - {{name: alertname, value: "High.*", regex: true}}
  ttl: 10m
"#,
        exe = common::exe(),
        port = free_port()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn run(path: &std::path::Path) -> servers::Daemon {
    rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--stable",
            "v1",
            "--state-dir",
        ])
        .arg(path.parent().unwrap().join("state"))
        .arg("-f")
        .arg(path)
        .stdout(Stdio::piped())
        .spawn_guarded()
}

/// Reads the run's output until it says the alerts are silenced.
fn until_silenced(child: &mut std::process::Child) -> impl Iterator<Item = String> + use<> {
    let mut lines = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .map(Result::unwrap);
    assert!(
        lines.by_ref().any(|l| l.contains("alerts silenced")),
        "the run announced its silence"
    );
    lines
}

#[test]
fn a_silence_is_held_while_the_release_runs_and_expired_at_the_end_real_alertmanager() {
    let (_am, _amdir, url) = alertmanager();
    // A silence a previous, long-gone release of this service left behind.
    let rt = common::runtime();
    let stale = serde_json::json!({
        "matchers": [{"name": "service", "value": "shop", "isRegex": false, "isEqual": true}],
        "startsAt": "2026-01-01T00:00:00Z",
        "endsAt": "2099-01-01T00:00:00Z",
        "createdBy": "rampart",
        "comment": "rampart:shop:shop-old-release left by a crash",
    });
    let (status, _) = rt
        .block_on(rampart_adapters::http::send(
            "POST",
            &format!("{url}/api/v2/silences"),
            Some(stale.to_string()),
            Duration::from_secs(2),
        ))
        .unwrap();
    assert_eq!(status, 200);
    let dir = tempfile::tempdir().unwrap();
    let path = policy(dir.path(), &url);
    let _versions = common::Versions(dir.path().join("state"));
    let mut child = run(&path);
    let rest = until_silenced(&mut child);
    let held = active(&url, "rampart:shop:");
    assert_eq!(
        held.len(),
        1,
        "the stale silence was expired, ours is active: {held:#?}"
    );
    let comment = held[0]["comment"].as_str().unwrap();
    assert!(!comment.contains("old-release"), "{comment}");
    let names: Vec<&str> = held[0]["matchers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["service", "alertname"]);
    let rest: Vec<String> = rest.collect();
    assert_eq!(child.wait().unwrap().code(), Some(3));
    assert!(
        active(&url, "rampart:shop:").is_empty(),
        "expired at the end"
    );
    // The expiry is an audit event of the release, after its outcome.
    let rolled_back = rest.iter().position(|l| l.contains("rolled_back"));
    let expired = rest.iter().position(|l| l.contains("silence_expired"));
    assert!(rolled_back.is_some() && expired > rolled_back, "{rest:#?}");
}

#[test]
fn a_silence_left_by_a_crash_is_reconciled_on_resume_real_alertmanager() {
    let (_am, _amdir, url) = alertmanager();
    let dir = tempfile::tempdir().unwrap();
    let path = policy(dir.path(), &url);
    let _versions = common::Versions(dir.path().join("state"));
    let mut child = run(&path);
    let mut rest = until_silenced(&mut child);
    // kill -9 once both versions run (killed while one starts, a process could be left
    // that nobody tracks): nothing runs to expire the silence.
    assert!(
        rest.any(|l| l.contains("weight_set")),
        "the first step began"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let left = active(&url, "rampart:shop:");
    assert_eq!(left.len(), 1, "{left:#?}");
    // The same release, resumed, adopts it and expires it when it ends.
    let mut again = run(&path);
    for _ in until_silenced(&mut again) {}
    assert_eq!(again.wait().unwrap().code(), Some(3));
    assert!(
        active(&url, "rampart:shop:").is_empty(),
        "nothing left behind"
    );
}
