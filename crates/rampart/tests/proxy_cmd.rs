//! `rampart proxy`: the embedded proxy as a stand-alone data plane, driven through its
//! token-guarded admin endpoint.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Command;
use std::time::Duration;

use common::{exe, free_port, servers};
use rampart_adapters::http::{get_text, send_with};

const TOKEN: &str = "test-token-0123456789";

fn sample(version: &str) -> (servers::Daemon, u16) {
    let port = free_port();
    let d = servers::spawn(
        Command::new(exe())
            .args([
                "sample-service",
                "--port",
                &port.to_string(),
                "--version",
                version,
            ])
            .env("SAMPLE_LATENCY_MS", "0"),
    );
    servers::wait_until("sample service", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (d, port)
}

#[test]
fn the_admin_endpoint_sets_backends_and_weights_with_a_token() {
    let (_a, a) = sample("a");
    let (_b, b) = sample("b");
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("rampart.yaml"),
        format!(
            "service: edge\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:{port}\", sticky: {{header: x-user}}}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}\n"
        ),
    )
    .unwrap();
    let no_token = Command::new(exe())
        .args(["proxy", "-f"])
        .arg(dir.path().join("rampart.yaml"))
        .env_remove("RAMPART_PROXY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(2), "never unauthenticated");
    let _proxy = servers::spawn(
        Command::new(exe())
            .args(["proxy", "--admin", &format!("127.0.0.1:{admin}"), "-f"])
            .arg(dir.path().join("rampart.yaml"))
            .env("RAMPART_PROXY_TOKEN", TOKEN),
    );
    servers::wait_until("rampart proxy", || {
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
    });
    let rt = common::runtime();
    let call = |method: &str, path: &str, body: &str, token: Option<&str>| {
        let headers: Vec<(&str, String)> = token
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default();
        rt.block_on(send_with(
            method,
            &format!("http://127.0.0.1:{admin}{path}"),
            (!body.is_empty()).then(|| body.to_string()),
            &headers,
            Duration::from_secs(2),
        ))
        .unwrap()
    };
    assert_eq!(call("PUT", "/weight", r#"{"weight": 50}"#, None).0, 401);
    assert_eq!(
        call(
            "PUT",
            "/weight",
            r#"{"weight": 50}"#,
            Some("wrong-token-0123456789")
        )
        .0,
        401
    );
    let stable = format!(r#"{{"endpoints": ["127.0.0.1:{a}"]}}"#);
    let canary = format!(r#"{{"endpoints": ["127.0.0.1:{b}"]}}"#);
    assert_eq!(call("PUT", "/backends/stable", &stable, Some(TOKEN)).0, 200);
    assert_eq!(call("PUT", "/backends/canary", &canary, Some(TOKEN)).0, 200);
    let (status, body) = call("PUT", "/weight", r#"{"weight": 20}"#, Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, r#"{"weight":20.0}"#));
    assert_eq!(
        call("PUT", "/weight", r#"{"weight": 120}"#, Some(TOKEN)).0,
        400
    );
    let mut on_b = 0;
    for u in 0..500 {
        let (_, body) = rt
            .block_on(send_with(
                "GET",
                &format!("http://127.0.0.1:{port}/"),
                None,
                &[("x-user", format!("user-{u}"))],
                Duration::from_secs(2),
            ))
            .unwrap();
        if body.trim() == "b" {
            on_b += 1;
        }
    }
    assert!((60..=140).contains(&on_b), "{on_b} of 500 users at 20%");
    let (_, state) = call("GET", "/state", "", Some(TOKEN));
    assert!(state.contains(&format!("127.0.0.1:{b}")), "{state}");
    let (status, metrics) = rt
        .block_on(get_text(
            &format!("http://127.0.0.1:{admin}/metrics"),
            Duration::from_secs(2),
        ))
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("rampart_requests_total{service=\"edge\",variant=\"canary\"}"),
        "{metrics}"
    );
    // Both latency histograms reach the controller and Prometheus: every request was
    // timed to its headers and to its body's end.
    let (status, counters) = call("GET", "/counters", "", Some(TOKEN));
    assert_eq!(status, 200, "{counters}");
    let counters: serde_json::Value = serde_json::from_str(&counters).unwrap();
    let totals: rampart_core::metrics::IntervalSample =
        serde_json::from_value(counters["totals"].clone()).unwrap();
    for v in [&totals.stable, &totals.canary] {
        assert_eq!(v.latency.count(), v.requests, "{v:?}");
        assert_eq!(v.latency_total.count(), v.requests, "{v:?}");
    }
    assert_eq!(totals.stable.requests + totals.canary.requests, 500);
    assert!(
        metrics.contains("# TYPE rampart_request_total_duration_seconds histogram"),
        "{metrics}"
    );
}
