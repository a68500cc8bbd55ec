//! Adversarial review of the command line on bad input: every refusal is clear, has
//! the documented exit code and JSON shape, and nothing a person asked for is
//! silently dropped. Each test states the scenario, what the README or docs promise,
//! and what was observed.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::rampart;
use serde_json::Value;

const POLICY: &str = r#"service: checkout
deploy:
  process:
    command: ["./checkout", "--port", "{port}"]
traffic:
  proxy:
    listen: 127.0.0.1:8080
strategy:
  canary:
    steps:
      - weight: 10
        bake: 1m
analysis:
  metrics:
    - metric: error_rate
      judge: { max: 1% }
"#;

fn validate_json(path: &std::path::Path) -> (i32, Value, String) {
    let out = rampart()
        .args(["validate", "--output", "json", "-f"])
        .arg(path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON value ({e}): {stdout:?}"));
    (
        out.status.code().unwrap(),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Scenario: `rampart validate --output json` on a policy file that cannot be read as
/// a policy: not UTF-8 (a Latin-1 `é` in a comment, saved by an old editor), or
/// missing.
///
/// Expected: docs/policy.md: "`--output json` prints `{"valid": false,
/// "diagnostics": [{"file", "line", "col", "path", "message"}, ...]}`", and
/// docs/json.md lists `validate`'s JSON as `valid`, `file`, `service`, `diagnostics`
/// ("The fields below are stable"). A lint job reading `.valid` and `.diagnostics`
/// must get them for every invalid policy.
///
/// Observed: `{"error": "invalid", "message": "...: stream did not contain valid
/// UTF-8"}`: no `valid`, no `file`, no `diagnostics` (`.valid` reads as null). Fault:
/// crates/rampart/src/commands/validate.rs `validate`, which sends a read failure to
/// `report::fail` instead of the validate shape.
#[test]
fn validate_json_keeps_its_shape_for_a_file_that_cannot_be_read() {
    let dir = tempfile::tempdir().unwrap();
    let latin1 = dir.path().join("latin1.yaml");
    let mut bytes = POLICY
        .replace("service: checkout\n", "service: checkout\n# caf")
        .into_bytes();
    // `# café` in Latin-1: 0xE9 is not UTF-8.
    let at = bytes.iter().position(|b| *b == b'#').unwrap() + 5;
    bytes.insert(at, 0xE9);
    std::fs::write(&latin1, &bytes).unwrap();
    let missing = dir.path().join("missing.yaml");
    for path in [latin1, missing] {
        let (code, v, _) = validate_json(&path);
        assert_eq!(code, 2, "{v}");
        assert_eq!(v["valid"], false, "{}: no `valid` in {v}", path.display());
        assert!(
            v["diagnostics"].as_array().is_some_and(|d| !d.is_empty()),
            "{}: no `diagnostics` in {v}",
            path.display()
        );
        assert!(
            v.get("file").is_some(),
            "{}: no `file` in {v}",
            path.display()
        );
    }
}

/// Scenario: `rampart validate -f latin1.yaml` where line 2 holds a byte that is not
/// UTF-8.
///
/// Expected: the project's rule and README ("reports every problem in a policy with
/// its line and field"): the error points at the file and the line, as a YAML syntax
/// error does (`latin1.yaml:2:6: ...`).
///
/// Observed: `error: latin1.yaml: stream did not contain valid UTF-8`, with no line:
/// in a long policy the person has to bisect the file for an invisible byte. Fault:
/// crates/rampart/src/commands/validate.rs `validate` (and `run`, `replay`, ...) read
/// with `read_to_string`; reading bytes and reporting `Utf8Error::valid_up_to` as a
/// line and column would say where.
#[test]
fn a_policy_that_is_not_utf8_is_refused_at_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latin1.yaml");
    let mut bytes = POLICY
        .replace("service: checkout\n", "service: checkout\n# caf")
        .into_bytes();
    let at = bytes.iter().position(|b| *b == b'#').unwrap() + 5;
    bytes.insert(at, 0xE9);
    std::fs::write(&path, &bytes).unwrap();
    let out = rampart()
        .args(["validate", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("latin1.yaml:2:"),
        "the error names no line:\n{err}"
    );
}

/// Scenario: `rampart validate --output json` on a policy with a valid `service`
/// and one other problem.
///
/// Expected: docs/json.md: `validate -f POLICY` gives `valid`, `file`, `service`,
/// `diagnostics`; "none is renamed or removed without a changelog entry".
///
/// Observed: `{"valid": false, "file": ..., "diagnostics": [...]}`: the `service`
/// field is absent when the policy is invalid (even though the service decoded), so
/// a consumer indexing `service` fails. Fault: crates/rampart/src/commands/validate.rs
/// `validate` (the invalid branch); give `service` (the name, or `null`).
#[test]
fn validate_json_of_an_invalid_policy_still_has_a_service_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.yaml");
    std::fs::write(&path, POLICY.replace("bake: 1m", "baek: 1m")).unwrap();
    let (code, v, _) = validate_json(&path);
    assert_eq!(code, 2, "{v}");
    assert!(v.get("service").is_some(), "no `service` field in {v}");
}

fn freeze(state: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = rampart()
        .args(["freeze", "on", "--output", "json", "--state-dir"])
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Scenario: `rampart freeze on --reason "  "` (or `""`) on the local state directory (no
/// `--server`).
///
/// Expected: the same answer as with `--server`, where `POST /api/v1/freeze` refuses
/// it ("a freeze change needs a reason", crates/rampart/src/serve/api/freeze.rs):
/// README: operator commands exit "2 when refused (... bad input)"; the freeze is
/// "audited", and an audit record without a reason says nothing to whoever must
/// decide when to lift it.
///
/// Observed: exit 0, a freeze in force with `"reason": ""`. Fault:
/// crates/rampart/src/client.rs `Backend::freeze` (the `Local` arm) skips the
/// server's check; move the check where both paths meet.
#[test]
fn a_local_freeze_without_a_reason_is_refused_as_the_server_refuses_it() {
    let dir = tempfile::tempdir().unwrap();
    let (code, out, err) = freeze(dir.path(), &["--reason", "  ", "--as", "alice"]);
    assert_eq!(code, 2, "accepted: {out}{err}");
}

/// Scenario: `rampart freeze on --service Checkout --reason "incident 42"` (or
/// `--service ""`, `--service " checkout"`): a service name that no policy can have
/// (docs/policy.md: a service is "1 to 63 characters, lower-case letters, digits,
/// `-`, `_` or `.`").
///
/// Expected: refused as bad input (exit 2, README), naming the valid form: the
/// person freezing during an incident must not be told a freeze is in force when it
/// stops nothing.
///
/// Observed: exit 0 and a freeze with scope `Checkout` (or `""`) in `freezes`; the
/// text output says "service Checkout: releases frozen", but `freeze_of("checkout")`
/// matches on the exact scope, so `rampart run` of `checkout` is not frozen.
/// Fault: crates/rampart/src/commands/freeze.rs `main` / crates/rampart/src/client.rs
/// `Backend::freeze` and crates/rampart/src/serve/api/freeze.rs `set_freeze`: check
/// `--service` with the policy's service-name rule.
#[test]
fn a_freeze_of_a_service_name_that_cannot_exist_is_refused() {
    for service in ["Checkout", "", " checkout"] {
        let dir = tempfile::tempdir().unwrap();
        let (code, out, err) = freeze(
            dir.path(),
            &[
                "--service",
                service,
                "--reason",
                "incident 42",
                "--as",
                "alice",
            ],
        );
        assert_eq!(code, 2, "--service {service:?} accepted: {out}{err}");
    }
}

/// Scenario: `rampart bench controller --interval 0s --releases 1 --duration 1s
/// --output json` (an out-of-range flag value).
///
/// Expected: README exit codes: "2 bad usage"; the error says which flag and why
/// (`analysis.interval` is at least 100ms, docs/policy.md).
///
/// Observed: exit 1 with `{"error": "internal", "message": "1 problem(s) in
/// policy"}`: an internal error, and no word of which value is wrong (the policy is
/// one the command generates; the person never wrote one). Fault:
/// crates/rampart/src/commands/bench (controller): validate `--interval` as a usage
/// error, or report the generated policy's diagnostics as the flag's.
#[test]
fn bench_controller_with_a_zero_interval_is_bad_usage_that_names_the_flag() {
    let out = rampart()
        .args([
            "bench",
            "controller",
            "--releases",
            "1",
            "--interval",
            "0s",
            "--duration",
            "1s",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stdout}{stderr}");
    assert!(
        stderr.contains("interval"),
        "the error does not say which value: {stderr}"
    );
}

/// A person changing a flag under the name releases write flags as (`--as rampart`):
/// a release resumed after a crash takes changes by `rampart` for its own ramps, so
/// such a kill would be ramped over. Refused (exit 2), and nothing changes.
#[test]
fn no_one_changes_a_flag_under_the_releases_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rampart.yaml");
    std::fs::write(
        &path,
        format!("{POLICY}flags:\n  define:\n    - {{name: beta}}\n"),
    )
    .unwrap();
    let set = |who: &str| {
        rampart()
            .args(["flags", "set", "beta", "--ramp", "0", "--reason", "kill"])
            .args(["--as", who, "--state-dir"])
            .arg(dir.path().join("state"))
            .arg("-f")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = set("rampart");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = set("alice");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
