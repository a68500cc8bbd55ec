//! The same canary release through a real nginx and a real HAProxy (Debian packages,
//! started on loopback from a temporary directory): promoted when the new version is
//! healthy, rolled back when it is bad, judged on the request log each sends rampart.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;
#[path = "../../adapters/tests/common/servers.rs"]
mod servers;

use common::release_json;

/// The release, with `traffic` as the router and v2 failing `v2_errors` of requests.
fn policy(dir: &std::path::Path, traffic: &str, v2_errors: &str) -> std::path::PathBuf {
    let text = format!(
        r#"service: shop
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "v1=0,v2={v2_errors}", SAMPLE_LATENCY_MS: "2"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic:
{traffic}
strategy:
  canary:
    steps:
      - {{weight: 20, bake: 2s}}
      - {{weight: 50, bake: 2s}}
analysis:
  interval: 1s
  min_samples: 20
  failure_limit: 2
  metrics:
    - {{name: errors, metric: error_rate, judge: {{max: 5%}}}}
    - {{name: p50, metric: latency_p50, judge: {{max: 500ms}}}}
rollback: {{drain: 2s, verify_timeout: 5s}}
"#,
        exe = common::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

fn nginx_traffic(n: &servers::Nginx) -> String {
    format!(
        "  nginx:\n    listen: \"{}\"\n    include: {:?}\n    test: {:?}\n    reload: {:?}\n    pid: {:?}\n    sticky: {{header: x-user}}\n",
        n.listen, n.include, n.test, n.reload, n.pid
    )
}

fn udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn assert_outcome(code: i32, v: &serde_json::Value, want: i32) {
    assert_eq!(code, want, "{}", serde_json::to_string_pretty(v).unwrap());
    let requests =
        v["requests"]["stable"].as_u64().unwrap() + v["requests"]["canary"].as_u64().unwrap();
    assert!(requests > 100, "the router's request log was counted: {v}");
    assert!(v["requests"]["canary"].as_u64().unwrap() > 10, "{v}");
}

#[test]
fn a_canary_through_nginx_is_promoted_when_healthy_and_rolled_back_when_bad() {
    for (errors, want) in [("0", 0), ("30%", 3)] {
        let n = servers::nginx();
        let dir = tempfile::tempdir().unwrap();
        let path = policy(dir.path(), &nginx_traffic(&n), errors);
        let (code, v) = release_json(&path, n.listen.port(), 200);
        assert_outcome(code, &v, want);
        let rendered = std::fs::read_to_string(&n.include).unwrap();
        let expected = if want == 0 { "* canary;" } else { "* stable;" };
        assert!(rendered.contains(expected), "{rendered}");
    }
}

#[test]
fn a_canary_through_haproxy_is_promoted_when_healthy_and_rolled_back_when_bad() {
    for (errors, want) in [("0", 0), ("30%", 3)] {
        let log: std::net::SocketAddr = format!("127.0.0.1:{}", udp_port()).parse().unwrap();
        let h = servers::haproxy("shop", 2, log);
        let dir = tempfile::tempdir().unwrap();
        let traffic = format!(
            "  haproxy:\n    socket: {:?}\n    backend: shop\n    log_listen: \"{log}\"\n",
            h.socket
        );
        let path = policy(dir.path(), &traffic, errors);
        let (code, v) = release_json(&path, h.addr.port(), 200);
        assert_outcome(code, &v, want);
    }
}
