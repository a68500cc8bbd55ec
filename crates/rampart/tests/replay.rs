//! `rampart replay` on `examples/ci-canary.yaml`: recorded healthy traffic is promoted
//! at the end of the 10-minute bake; a regression is rolled back mid-bake; bad files are
//! usage errors that name the line.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::{rampart, repo};
use rampart_core::sim::{Rng, Stream};

fn samples(dir: &Path, canary_error_rate: f64, seed: u64) -> std::path::PathBuf {
    let stream = Stream {
        seconds: 660,
        rps: 200,
        canary_share: 0.1,
        stable_error_rate: 0.005,
        canary_error_rate,
        latency: None,
    };
    let path = dir.join(format!("samples-{seed}.csv"));
    std::fs::write(&path, stream.draw(&mut Rng::new(seed)).to_csv()).unwrap();
    path
}

fn replay(samples: &Path) -> (i32, serde_json::Value) {
    let out = rampart()
        .args(["replay", "--output", "json", "-f"])
        .arg(repo().join("examples/ci-canary.yaml"))
        .arg("--samples")
        .arg(samples)
        .output()
        .unwrap();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

#[test]
fn healthy_recording_is_promoted_at_the_end_of_the_bake() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v) = replay(&samples(dir.path(), 0.005, 11));
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "promoted");
    assert_eq!(v["decided_at_s"], 600.0);
}

#[test]
fn regressed_recording_is_rolled_back_with_the_second_of_the_decision() {
    let dir = tempfile::tempdir().unwrap();
    let (code, v) = replay(&samples(dir.path(), 0.02, 12));
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    let t = v["decided_at_s"].as_f64().unwrap();
    assert!(t > 0.0 && t < 600.0 && t.fract() == 0.0, "{t}");
    assert!(
        v["reason"].as_str().unwrap().contains("worse than stable"),
        "{}",
        v["reason"]
    );
    let last = v["timeline"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["kind"], "rolled_back");
}

#[test]
fn text_output_shows_every_interval_and_the_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let out = rampart()
        .args(["replay", "-f"])
        .arg(repo().join("examples/ci-canary.yaml"))
        .arg("--samples")
        .arg(samples(dir.path(), 0.05, 13))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("interval 1 "), "{text}");
    assert!(text.contains("outcome: ci-canary rolled back"), "{text}");
}

#[test]
fn a_bad_samples_file_is_a_usage_error_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.csv");
    std::fs::write(
        &path,
        "t_s,variant,requests,errors\n0,stable,100,1\n0,green,10,0\n",
    )
    .unwrap();
    let out = rampart()
        .args(["replay", "-f"])
        .arg(repo().join("examples/ci-canary.yaml"))
        .arg("--samples")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.csv:3: variant `green`"), "{err}");
}

/// The recorded files the README and docs/replay.md run (with comments before their
/// header): the incident is rolled back, the healthy week promoted.
#[test]
fn the_example_recordings_replay_as_the_docs_say() {
    let (code, v) = replay(&repo().join("examples/replay/incident.csv"));
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    let (code, v) = replay(&repo().join("examples/replay/healthy.csv"));
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "promoted");
}
