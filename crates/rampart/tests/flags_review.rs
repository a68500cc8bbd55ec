//! Review of feature flags end to end: releases that ramp a flag, and the
//! `rampart flags` commands people use on the same flags.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::time::Duration;

use common::flagged::{flag_audit, flags, forget_from, policy, ramp_bp, traffic_sets};
use common::servers::SpawnGuarded as _;
use common::{rampart, release_json};

/// Waits (60 s at most) until the store holds the flag at `bp` basis points.
fn until_ramp(path: &Path, bp: i64) {
    common::serve::until(
        &format!("the flag at {bp} basis points"),
        Duration::from_secs(60),
        || ramp_bp(path) == Some(bp),
    );
}

/// An on-call's kill switch: `rampart flags set new-checkout --ramp 0`.
fn kill(path: &Path) -> (i32, String, String) {
    flags(
        path,
        &[
            "set",
            "new-checkout",
            "--ramp",
            "0",
            "--reason",
            "kill: checkout errors",
            "--as",
            "oncall",
        ],
    )
}

/// Every audit record: (kind, detail), oldest first.
fn audit(path: &Path) -> Vec<(String, String)> {
    let db = path.parent().unwrap().join("state/rampart.db");
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT kind, detail FROM audit ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

const FLAG_ONLY: &str =
    "{flag: {flag: new-checkout, steps: [{weight: 20, bake: 2s}, {weight: 50, bake: 2s}]}}";

/// A flag already on for 60 % of users (`rampart flags set --ramp 60`, or a previous
/// release of the same policy that left it at 100 %) is ramped by a new release. The
/// release refuses a flag the store has on by default, because "everyone outside the
/// ramp has it on already, and the release would measure them as stable"; a ramp
/// already above the first step is the same situation, and worse: the release's first
/// step takes the flag away from the users between 20 % and 60 %.
///
/// Expected: refused with exit 5 and the flag untouched (60 %). Observed: the release
/// runs (exit 0) and rampart's first flag change is "ramp 20%": two users in five who
/// had the feature lose it mid-session, without anyone asking.
#[test]
fn a_release_refuses_to_ramp_a_flag_already_on_for_part_of_its_users() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = policy(dir.path(), FLAG_ONLY);
    let (code, _, err) = flags(
        &path,
        &[
            "set",
            "new-checkout",
            "--ramp",
            "60",
            "--reason",
            "beta",
            "--as",
            "alice",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let (code, v) = release_json(&path, port, 100);
    let lowered: Vec<String> = flag_audit(&path)
        .into_iter()
        .filter(|(actor, d)| actor == "rampart" && d.contains("ramp 20%"))
        .map(|(_, d)| d)
        .collect();
    assert_eq!(
        (code, lowered.as_slice()),
        (5, &[][..]),
        "the release ran over a flag 60 % of users had on: {v}"
    );
}

/// An operator kills a flag a release is ramping (`rampart flags set new-checkout
/// --ramp 0`), the documented way to change a flag, mid-step. Nothing refuses it, and
/// the store and the proxy now disagree (the proxy still measures 20 % as the flag's
/// cohort). Then the release's next step writes the ramp again as if nothing had
/// happened, and promotion turns the flag on for everyone.
///
/// Expected: either the change is refused while a release owns the flag (non-zero
/// exit, naming the release), or the operator's 0 % stands (the release does not ramp
/// it up again). Observed: the change is accepted (exit 0) and the flag ends at 100 %.
#[test]
fn an_operators_kill_of_a_ramping_flag_is_not_undone_by_the_next_step() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = policy(
        dir.path(),
        "{flag: {flag: new-checkout, steps: [{weight: 20, bake: 5s}, {weight: 50, bake: 2s}]}}",
    );
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let rt = common::runtime();
    let (load, _) = common::start_load(&rt, port, 100);
    let mut run = common::run_json(&path, &state, "v1", None)
        .arg("--stop-after")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn_guarded();
    until_ramp(&path, 2000);
    let (code, _, err) = kill(&path);
    let out = run.0.wait_with_output_guarded();
    load.abort();
    let end = ramp_bp(&path);
    let report = String::from_utf8_lossy(&out).into_owned();
    // The kill goes through (it is the safe direction), and the release does not
    // ramp the flag up again over it: it rolls back at its next step.
    assert_eq!(code, 0, "the kill switch was refused: {err}");
    assert_eq!(
        end,
        Some(0),
        "the operator's kill was undone: the flag ended at {end:?} basis points; flag changes: {:?}; report: {report}",
        flag_audit(&path)
    );
    assert!(report.contains("rolled_back"), "{report}");
}

/// Extension for reading a spawned child's stdout to the end once it exits.
trait WaitOutput {
    fn wait_with_output_guarded(&mut self) -> Vec<u8>;
}

impl WaitOutput for std::process::Child {
    fn wait_with_output_guarded(&mut self) -> Vec<u8> {
        use std::io::Read as _;
        let mut buf = Vec::new();
        if let Some(mut out) = self.stdout.take() {
            let _ = out.read_to_end(&mut buf);
        }
        let _ = self.wait();
        buf
    }
}

/// The allowlist decides who has a flag on before any ramp: adding a key to it turns
/// the flag on for that user. Editing `flags.define[].allow` and running any `rampart
/// flags` command (even `list`, a read) writes the new allowlist to the store. docs/
/// flags.md: "Every change, by a person, a release or a rollback, is recorded in the
/// audit table with who, when and why (`kind = 'flag_set'`)."
///
/// Expected: an audit record of the allowlist change. Observed: `qa-2` has the flag on
/// (reason "allowlist") and the audit table holds no record at all of the change.
#[test]
fn a_change_to_a_flags_allowlist_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = policy(dir.path(), FLAG_ONLY);
    let (code, _, err) = flags(&path, &["list"]);
    assert_eq!(code, 0, "{err}");
    let before = audit(&path);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("allow: [qa-1]", "allow: [qa-1, qa-2]");
    std::fs::write(&path, text).unwrap();
    let (code, out, err) = flags(&path, &["list"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("qa-1,qa-2"), "{out}");
    let (_, out, _) = flags(
        &path,
        &["get", "new-checkout", "--key", "qa-2", "--output", "json"],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["on"].as_bool(), v["reason"].as_str()),
        (Some(true), Some("allowlist"))
    );
    let after = audit(&path);
    let new: Vec<_> = after[before.len()..].to_vec();
    assert!(
        new.iter().any(|(_, d)| d.contains("qa-2")),
        "qa-2 now has new-checkout on, and the audit says nothing: {new:?}"
    );
}

/// A `strategy.canary.flag` release halts at 30 % (no data, `action: halt`): the flag
/// is on for 30 % of users, served by the canary (v2). The operator settles it the
/// documented way, `rampart stop --canary`: those users go back to stable (v1) and v2
/// stops. A rollback does the same move through the flag router, which takes the ramp
/// to 0 with the weight, since a user with the flag on must be a canary user (the
/// flag's code runs on the new version); the stop must too.
///
/// Expected: the flag's ramp is 0 once the canary is stopped. Observed: it stays at
/// 30 % (3000 basis points): 30 % of users get the flag on from v1, measured as stable.
#[test]
fn stopping_a_halted_flag_canary_turns_its_flag_off_with_its_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let (path, _) = policy(
        dir.path(),
        "{canary: {flag: new-checkout, steps: [{weight: 30, bake: 60s}]}}",
    );
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "  failure_limit: 2\n",
        "  failure_limit: 2\n  no_data: {limit: 1, action: halt}\n",
    );
    std::fs::write(&path, text).unwrap();
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    // No load: the canary sees no requests, so the first interval halts the release.
    let out = common::run_json(&path, &state, "v2", Some("v1"))
        .output()
        .unwrap();
    let (_, v) = common::report(&out);
    assert_eq!(v["outcome"], "halted", "{v}");
    assert_eq!(ramp_bp(&path), Some(3000), "halted where it stood: {v}");
    let out = rampart()
        .args([
            "stop",
            "--canary",
            "--reason",
            "v2 halted",
            "--as",
            "alice",
            "--state-dir",
        ])
        .arg(&state)
        .arg("-f")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let canary =
        std::fs::read_to_string(state.join("processes/flagged.canary.json")).unwrap_or_default();
    assert!(!canary.contains("\"v2\""), "v2 is stopped: {canary}");
    assert_eq!(
        ramp_bp(&path),
        Some(0),
        "v2 is gone, yet the flag is still on for its users (now on v1); stop said: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The same kill, made while the controller ramping the flag is down (killed with
/// SIGKILL at the first step, an on-call switching the flag off before anyone runs it
/// again). The release resumes in a new process, which had not written the ramp
/// itself: it took the 0 % for where its ramp stood and wrote 20 %, then 50 %, then
/// promoted the flag to everyone. A lower ramp in the store is someone's kill, and the
/// resumed release rolls back over it instead.
///
/// The controller is killed as soon as the flag stands at 20 %, which may be before its
/// log says so (the ramp is written, then logged): the test takes the log back to before
/// the step whichever it was, since the resumed release must see the kill either way
/// (it first did only when the log had the step: CI caught the other case).
#[test]
fn a_kill_made_while_the_controller_is_down_is_not_undone_when_the_release_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = policy(
        dir.path(),
        "{flag: {flag: new-checkout, steps: [{weight: 20, bake: 4s}, {weight: 50, bake: 2s}]}}",
    );
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let rt = common::runtime();
    let (load, _) = common::start_load(&rt, port, 100);
    let mut first = common::run_json(&path, &state, "v1", None)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn_guarded();
    until_ramp(&path, 2000);
    first.0.kill().unwrap(); // SIGKILL: the release stays resumable
    first.0.wait().unwrap();
    // The log and its audit chain as a crash before the step's log entry leaves them:
    // the entry and anything after it never written (the chain's tail, so the chain
    // stays whole).
    let db = state.join("rampart.db");
    if let Some(&(step, _)) = traffic_sets(&db).first() {
        forget_from(&db, step);
    }
    let (code, _, err) = kill(&path);
    assert_eq!(code, 0, "the kill switch was refused: {err}");
    let out = common::run_json(&path, &state, "v1", None)
        .arg("--stop-after")
        .output()
        .unwrap();
    load.abort();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let end = ramp_bp(&path);
    assert_eq!(
        end,
        Some(0),
        "the operator's kill was undone by the resumed release: the flag ended at {end:?} basis points; flag changes: {:?}; report: {report}",
        flag_audit(&path)
    );
    assert!(
        report.contains("\"resumed\"") || report.contains("resum"),
        "{report}"
    );
    assert!(report.contains("rolled_back"), "{report}");
}
