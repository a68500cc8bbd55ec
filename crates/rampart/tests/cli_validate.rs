//! `rampart validate` and `rampart run` on invalid policies: exit 2, with the file,
//! line and field of every problem.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{data, rampart};

fn validate(name: &str) -> (i32, String) {
    let out = rampart()
        .args(["validate", "-f"])
        .arg(data(name))
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn typo_in_a_field_name_names_the_line_and_the_field() {
    let (code, err) = validate("typo.yaml");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("typo.yaml:12:9: strategy.canary.steps[0].baek: unknown field `baek`; did you mean `bake`?"), "{err}");
}

#[test]
fn weight_of_120_is_rejected() {
    let (code, err) = validate("weight-120.yaml");
    assert_eq!(code, 2);
    assert!(
        err.contains(
            "weight-120.yaml:11:17: strategy.canary.steps[0].weight: weight 120 is out of range"
        ),
        "{err}"
    );
}

#[test]
fn bad_duration_is_rejected() {
    let (code, err) = validate("bad-duration.yaml");
    assert_eq!(code, 2);
    assert!(
        err.contains("bad-duration.yaml:12:15: strategy.canary.steps[0].bake:"),
        "{err}"
    );
    assert!(err.contains("`mins` is not a duration unit"), "{err}");
}

#[test]
fn bad_proxy_limits_are_refused_at_their_lines() {
    let (code, err) = validate("bad-limits.yaml");
    assert_eq!(code, 2, "{err}");
    for want in [
        "bad-limits.yaml:9:23: traffic.proxy.limits.header_timeout: `10` has no unit",
        "bad-limits.yaml:10:25: traffic.proxy.limits.max_header_bytes: `512B` is out of range; use 1KiB to 1MiB",
        "bad-limits.yaml:11:24: traffic.proxy.limits.max_connections: 0 connections: use 1 to 1000000",
        "bad-limits.yaml:12:21: traffic.proxy.limits.body_timeout: must be longer than 0s",
        "bad-limits.yaml:13:20: traffic.proxy.limits.max_streams: 0 streams: use 1 to 10000",
        "bad-limits.yaml:14:24: traffic.proxy.upstream_protocol: `h2` is not valid; did you mean `h2c`?",
    ] {
        assert!(err.contains(want), "{want}\nnot in:\n{err}");
    }
}

#[test]
fn validate_json_lists_diagnostics() {
    let out = rampart()
        .args(["validate", "--output", "json", "-f"])
        .arg(data("typo.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    let d = &v["diagnostics"];
    assert_eq!(d.as_array().unwrap().len(), 2, "{v}");
    assert!(
        d.as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "strategy.canary.steps[0].baek" && d["line"] == 12)
    );
}

#[test]
fn run_refuses_an_invalid_policy_with_exit_2_before_doing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let out = rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(dir.path())
        .arg("-f")
        .arg(data("weight-120.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["error"], "invalid");
    assert!(v["message"].as_str().unwrap().contains("steps[0].weight"));
    assert!(
        !dir.path().join("rampart.db").exists(),
        "nothing was recorded"
    );
}

#[test]
fn the_shipped_examples_are_valid() {
    for f in [
        "examples/python-service/rampart.yaml",
        "examples/rampart.yaml",
        "examples/flag-release.yaml",
        "examples/kubernetes.yaml",
        "examples/kubernetes-http-route.yaml",
        "examples/kubernetes-sequential.yaml",
        "examples/command-metric.yaml",
        "examples/cloudwatch-metric.yaml",
    ] {
        let out = rampart()
            .args(["validate", "-f"])
            .arg(common::repo().join(f))
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn missing_file_is_a_usage_error() {
    let out = rampart()
        .args(["validate", "-f", "/nonexistent/rampart.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn runbook_is_rendered_from_the_policy() {
    let out = rampart()
        .args(["runbook", "-f"])
        .arg(common::repo().join("examples/rampart.yaml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let md = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "# Release runbook: checkout",
        "| error-rate | threshold | value > 0.5% or value > 2 x stable |",
        "```mermaid",
        "## Rollback order",
    ] {
        assert!(md.contains(needle), "missing `{needle}`:\n{md}");
    }
    let bad = rampart()
        .args(["runbook", "-f"])
        .arg(data("typo.yaml"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[cfg(not(feature = "kubernetes"))]
#[test]
fn a_kubernetes_policy_without_the_feature_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "1.27-alpine",
            "--state-dir",
        ])
        .arg(dir.path())
        .arg("-f")
        .arg(common::repo().join("examples/kubernetes.yaml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--features kubernetes"), "{err}");
}

#[cfg(not(feature = "kubernetes"))]
#[test]
fn serve_kubernetes_without_the_feature_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = rampart()
        .args([
            "serve",
            "--kubernetes",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--features kubernetes"), "{err}");
}

#[cfg(feature = "kubernetes")]
#[test]
fn serve_kubernetes_without_a_cluster_config_exits_2_before_serving() {
    let dir = tempfile::tempdir().unwrap();
    let out = rampart()
        .args([
            "serve",
            "--kubernetes",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
        ])
        .arg(dir.path())
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("rampart serve --kubernetes"), "{err}");
}

#[cfg(feature = "kubernetes")]
#[test]
fn a_kubernetes_policy_without_a_cluster_config_fails_before_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let out = rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "1.27-alpine",
            "--state-dir",
        ])
        .arg(dir.path())
        .arg("-f")
        .arg(common::repo().join("examples/kubernetes.yaml"))
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no Kubernetes configuration"), "{err}");
}
