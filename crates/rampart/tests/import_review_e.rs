#![allow(clippy::unwrap_used)]
//! Adversarial review of `rampart import`, round E: the command's JSON contract.

mod common;

use std::path::PathBuf;

use common::rampart;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import")
        .join(name)
}

/// docs/json.md: "Every command a person runs for an answer takes `--output json` and
/// then prints one JSON object (or array) on stdout". When `--out` cannot be written,
/// `rampart import ... --output json` exits 1 with the error on stderr only: stdout is
/// empty, so a pipeline parsing it (`| jq .unmapped`) fails on no input instead of
/// reading an error object.
#[test]
fn a_failed_out_write_still_prints_one_json_object() {
    let dir = tempfile::tempdir().unwrap();
    let out = rampart()
        .args(["import", "argo"])
        .arg(fixture("argo-canary-nginx.yaml"))
        .arg("--out")
        .arg(dir.path().join("missing-dir/rampart.yaml"))
        .args(["--output", "json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("one JSON object on stdout ({e}): {text:?}"));
    assert!(v.get("error").is_some(), "{v}");
}
