//! Review of the crash windows between an effect and its log entry: a controller killed
//! (SIGKILL) after it changed the world and before it logged the answer, then taken up
//! again by the next `rampart run` of the same policy. The crash is made deterministic
//! as in `flags_review.rs`: the controller is killed once the effect is seen, then the
//! log's tail (and the matching tail of the audit chain, so the chain stays whole) is
//! removed from the first entry that recorded the effect on, as if it had never been
//! written.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::flagged::{flag_audit, flags, forget_from, policy, ramp_bp, traffic_sets};
use common::free_port;
use common::servers::SpawnGuarded as _;

/// Waits (60 s at most) until `cond` holds.
fn until(what: &str, cond: impl FnMut() -> bool) {
    common::serve::until(what, Duration::from_secs(60), cond);
}

/// The first logged `traffic_set` to `percent`, if the log has one.
fn traffic_set_to(db: &Path, percent: f64) -> Option<i64> {
    traffic_sets(db)
        .into_iter()
        .find_map(|(seq, w)| ((w - percent).abs() < 1e-9).then_some(seq))
}

/// A flag release's second step wrote the ramp (50 %) and its controller died before
/// logging it. While no controller ran, the on-call turned the flag back down to the
/// first step's 20 % (`rampart flags set new-checkout --ramp 20`): a partial kill, which
/// the CLI accepts and says "the release rolls back at its next step rather than ramp it
/// up again". The release is then taken up again.
///
/// `FlagRouter::resumed` documents that a ramp someone other than a release turned down
/// since the release began is a kill "whatever the log says (the last controller may
/// have written a ramp and died before logging it)". But it only looks at who set the
/// ramp when the log recorded no ramp at all; here the log recorded 20 %, and the
/// operator's 20 % is not below that, so the turn-down is not seen.
///
/// Expected: the resumed release does not ramp the flag up again over the operator's
/// turn-down (it rolls back; the flag ends at or below 20 %). Observed: it writes 50 %
/// again, then promotes the flag to 100 % for everyone (exit 0).
#[test]
fn an_operators_turn_down_of_an_unlogged_ramp_is_not_ramped_over_when_the_release_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, port) = policy(
        dir.path(),
        "{flag: {flag: new-checkout, steps: [{weight: 20, bake: 2s}, {weight: 50, bake: 6s}]}}",
    );
    let state = dir.path().join("state");
    let db = state.join("rampart.db");
    let _versions = common::Versions(state.clone());
    let rt = common::runtime();
    let (load, _) = common::start_load(&rt, port, 100);
    let mut first = common::run_json(&path, &state, "v1", None)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn_guarded();
    until("the second step's ramp (50 %)", || {
        ramp_bp(&path) == Some(5000)
    });
    first.0.kill().unwrap(); // SIGKILL: the release stays resumable
    first.0.wait().unwrap();
    // The crash came between the ramp's write and its log entry.
    if let Some(seq) = traffic_set_to(&db, 50.0) {
        forget_from(&db, seq);
    }
    assert!(
        traffic_set_to(&db, 20.0).is_some(),
        "the log records the first step's 20 %"
    );
    let (code, _, err) = flags(
        &path,
        &[
            "set",
            "new-checkout",
            "--ramp",
            "20",
            "--reason",
            "back to the first step: checkout errors",
            "--as",
            "oncall",
        ],
    );
    assert_eq!(code, 0, "the turn-down was refused: {err}");
    let out = common::run_json(&path, &state, "v1", None)
        .arg("--stop-after")
        .output()
        .unwrap();
    load.abort();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let end = ramp_bp(&path);
    let raised_after_turn_down: Vec<(String, String)> = flag_audit(&path)
        .into_iter()
        .skip_while(|(actor, _)| actor != "oncall")
        .filter(|(actor, d)| actor == "rampart" && (d.contains("50") || d.contains("100")))
        .collect();
    assert!(
        raised_after_turn_down.is_empty() && end.is_some_and(|bp| bp <= 2000),
        "the operator's turn-down to 20 % was ramped over by the resumed release (exit {:?}): the flag ended at {end:?} basis points; rampart's raises after it: {raised_after_turn_down:?}; report: {report}",
        out.status.code()
    );
}

/// A canary service (as in `tests/crash_resume.rs`) whose version ships migrations
/// applied by `command` (a YAML flow sequence), run once for the whole directory.
fn migrating_policy(dir: &Path, command: &str) -> PathBuf {
    let port = free_port();
    let migrations = dir.join("migrations/v2");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("001_coupons.sql"),
        "CREATE TABLE coupons (id bigint PRIMARY KEY, code text NOT NULL);\n",
    )
    .unwrap();
    let text = format!(
        r#"service: migrating
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "1"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic:
  proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}
strategy:
  canary:
    steps: [{{weight: 50, bake: 1s}}]
analysis:
  interval: 1s
  min_samples: 1
  metrics:
    - metric: error_rate
      judge: {{max: 5%}}
migrations:
  dir: migrations/{{version}}
  command: {command}
  approval: none
"#,
        exe = common::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The lines of `path` (none when it does not exist).
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// A release whose migrations are one command for the whole directory (`[sqlx,
/// migrate, run]`, or here a script that takes a few seconds) is killed (SIGKILL: an
/// OOM kill, `kill -9`) while that command runs. The command is a child of the
/// controller that dies with nothing to stop it (`kill_on_drop` acts on a drop, not on
/// the controller's death): it keeps running, orphaned. The operator does what
/// docs/operations.md says, "run the same command again", and the resumed release, in
/// phase `migrating`, runs the migration command again at once, while the first run is
/// still applying the same migrations to the same database.
///
/// docs/policy.md accepts that a single migration command is run again after a crash
/// ("the migration tool's own run, which records what it applied"), but a tool records
/// what it applied only when it has applied it: two runs at once both see the
/// migration unapplied (a plain `psql -f`, or any tool without a lock, applies it twice).
/// Run file by file, rampart refuses to run again a file that was running; run once,
/// nothing keeps the two runs apart.
///
/// Expected: the resumed release does not start the migration command while the run
/// the dead controller started is still running (it waits for it, or refuses as the
/// per-file ledger does). Observed: the runs overlap: `start, start, end, end`.
#[test]
fn a_migration_command_still_running_from_a_killed_controller_is_not_run_again_beside_it() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs.log");
    // Each run says when it starts and when it is done, and takes 8 s in between
    // (nothing on stdout or stderr: the orphan's pipes have no reader any more).
    let script = format!(
        "echo start >> {runs}; sleep 8; echo end >> {runs}",
        runs = runs.display()
    );
    let path = migrating_policy(dir.path(), &format!("[sh, -c, {script:?}]"));
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let mut first = common::run_json(&path, &state, "v2", Some("v1"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn_guarded();
    until("the first migration run to start", || {
        lines(&runs) == ["start"]
    });
    first.0.kill().unwrap(); // SIGKILL, mid-migration: the release stays resumable
    first.0.wait().unwrap();
    // The same command again: the release resumes in phase `migrating`.
    let mut second = common::run_json(&path, &state, "v2", Some("v1"))
        .arg("--stop-after")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn_guarded();
    // Both runs (the orphan's and any the resumed release starts) have ended.
    until("the migration runs to end", || {
        let l = lines(&runs);
        l.iter().filter(|x| *x == "start").count() == l.iter().filter(|x| *x == "end").count()
    });
    let _ = second.0.kill();
    let _ = second.0.wait();
    let seen = lines(&runs);
    let overlapped = seen.windows(2).any(|w| w[0] == "start" && w[1] == "start");
    assert!(
        !overlapped,
        "the resumed release ran the migration command while the killed controller's run was still applying it: {seen:?}"
    );
}
