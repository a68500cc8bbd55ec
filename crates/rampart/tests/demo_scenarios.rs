//! `rampart demo`: every scenario end to end with real processes on loopback ports, a
//! real proxy and real load. Scenarios run one at a time (they measure latency).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::process::Command;
use std::sync::Mutex;

static SERIAL: Mutex<()> = Mutex::new(());

fn demo(scenario: &str) -> (i32, serde_json::Value) {
    demo_with("canary", scenario)
}

fn demo_with(strategy: &str, scenario: &str) -> (i32, serde_json::Value) {
    let _guard = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args([
            "demo",
            "--output",
            "json",
            "--strategy",
            strategy,
            "--scenario",
            scenario,
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{scenario}: no JSON ({e}); stderr:\n{stderr}"));
    (out.status.code().unwrap(), v)
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
fn healthy_canary_is_promoted() {
    let (code, v) = demo("healthy");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "promoted");
    assert_eq!(v["final_weight"], 100.0);
    assert!(v["requests"]["canary"].as_u64().unwrap() > 0);
    let k = kinds(&v);
    assert_eq!(k.iter().filter(|k| *k == "step_completed").count(), 2);
    assert!(v["decided_at_s"].as_f64().unwrap() >= 12.0, "two 6s bakes");
}

#[test]
fn bad_canary_is_rolled_back_and_traffic_ends_on_stable() {
    let (code, v) = demo("bad-canary");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    assert_eq!(v["final_weight"], 0.0);
    assert_eq!(
        v["canary_routed_after_rollback"], 0,
        "no request reached the canary after the switch"
    );
    assert!(
        v["reason"].as_str().unwrap().contains("error-rate"),
        "{}",
        v["reason"]
    );
    assert!(kinds(&v).contains(&"rolled_back".to_string()));
}

#[test]
fn slow_canary_is_rolled_back_on_latency() {
    let (code, v) = demo("slow-canary");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    assert!(
        v["reason"].as_str().unwrap().contains("p99-latency"),
        "{}",
        v["reason"]
    );
    assert_eq!(v["final_weight"], 0.0);
}

#[test]
fn canary_that_crashes_on_start_gets_no_requests() {
    let (code, v) = demo("crash-on-start");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    assert_eq!(v["requests"]["canary"], 0);
    assert!(
        v["requests"]["stable"].as_u64().unwrap() > 0,
        "users were served by stable throughout"
    );
    assert!(v["reason"].as_str().unwrap().contains("never became ready"));
    let weights: Vec<f64> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["weight"].as_f64().unwrap())
        .collect();
    assert!(
        weights.iter().all(|w| *w == 0.0),
        "weight never left 0: {weights:?}"
    );
}

#[test]
fn blue_green_healthy_is_promoted_after_its_checks_and_keep_window() {
    let (code, v) = demo_with("blue-green", "healthy");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "promoted");
    assert_eq!(v["strategy"], "blue-green");
    let k = kinds(&v);
    for kind in [
        "preview_passed",
        "post_release_passed",
        "keeping_previous",
        "previous_released",
        "promoted",
    ] {
        assert!(k.contains(&kind.to_string()), "{kind} missing: {k:?}");
    }
}

#[test]
fn blue_green_bad_version_switches_back_at_once() {
    let (code, v) = demo_with("blue-green", "bad-canary");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    assert_eq!(v["final_weight"], 0.0);
    assert_eq!(v["canary_routed_after_rollback"], 0);
    // The rollback's first event is the switch back: nothing happens in between.
    let t = v["timeline"].as_array().unwrap();
    let i = t
        .iter()
        .position(|e| e["kind"] == "rollback_started")
        .unwrap();
    assert_eq!(t[i + 1]["kind"], "traffic_restored", "{t:?}");
}

#[test]
fn rolling_healthy_replaces_every_replica_and_promotes() {
    let (code, v) = demo_with("rolling", "healthy");
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "promoted");
    let t = v["timeline"].as_array().unwrap();
    let completed = t.iter().filter(|e| e["kind"] == "step_completed").count();
    assert_eq!(completed, 4, "one step per replica");
    let last_stable = t
        .iter()
        .rev()
        .find(|e| e["kind"] == "scaled" && e["message"].as_str().unwrap().starts_with("stable"))
        .unwrap();
    assert!(
        last_stable["message"]
            .as_str()
            .unwrap()
            .starts_with("stable at 0 replica(s)"),
        "{last_stable}"
    );
}

#[test]
fn rolling_bad_version_restores_every_replaced_batch() {
    let (code, v) = demo_with("rolling", "bad-canary");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    assert_eq!(v["canary_routed_after_rollback"], 0);
    let t = v["timeline"].as_array().unwrap();
    let from = t
        .iter()
        .position(|e| e["kind"] == "rollback_started")
        .unwrap();
    let restored: Vec<&str> = t[from..]
        .iter()
        .filter(|e| e["kind"] == "scaled")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert!(
        restored
            .first()
            .unwrap()
            .starts_with("stable at 4 replica(s)"),
        "{restored:?}"
    );
    assert!(
        restored
            .last()
            .unwrap()
            .starts_with("canary at 0 replica(s)"),
        "{restored:?}"
    );
    assert_eq!(t.last().unwrap()["kind"], "rolled_back");
}

#[test]
fn flag_demo_switches_a_bad_flag_off_and_starts_or_stops_no_process() {
    let (code, v) = demo_with("flag", "bad-canary");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["rollback_level"], 1);
    let kinds: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"flags_off"), "{kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "version_ready").count(),
        1,
        "one process, the running version: {kinds:?}"
    );
    assert!(!kinds.contains(&"canary_stopped"), "{kinds:?}");
}

/// Behind a flag, v2 serves everyone and its slow new checkout is slow for the
/// flag-on users alone: they are judged against the rest and the flag is switched off,
/// as `demo --help` says of slow-canary. crash-on-start does not apply to a release
/// that starts no new process: a usage error, not a halt.
#[test]
fn flag_demo_switches_a_slow_flag_off_and_refuses_crash_on_start() {
    let (code, v) = demo_with("flag", "slow-canary");
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["rollback_level"], 1);
    assert_eq!(
        v["stable_version"], "v2",
        "the running version is both sides"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rampart"))
        .args(["demo", "--strategy", "flag", "--scenario", "crash-on-start"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("starts no new process"), "{err}");
}
