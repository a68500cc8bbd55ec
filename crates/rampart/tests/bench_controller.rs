//! `rampart bench controller` runs simulated releases through the real controller and
//! store and reports its contract fields. (The numbers themselves are for
//! BENCHMARKS.md; a test never asserts speed.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

#[test]
fn the_controller_benchmark_reports_every_field() {
    let out = common::rampart()
        .args([
            "bench",
            "controller",
            "--releases",
            "20",
            "--interval",
            "200ms",
            "--duration",
            "1s",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["releases"], 20);
    for field in ["evaluations_per_s", "decision_p99_ms", "rss_bytes"] {
        assert!(v[field].as_f64().unwrap() > 0.0, "{field}: {v}");
    }
    assert!(v["keeps_up"].is_boolean(), "{v}");
    let pg = common::rampart()
        .args(["bench", "controller", "--store", "postgres"])
        .output()
        .unwrap();
    assert_eq!(
        pg.status.code(),
        Some(2),
        "no PostgreSQL store in this build"
    );
}
