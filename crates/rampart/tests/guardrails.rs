//! Guardrails from the command line: a freeze blocks new releases (exit 5) until it is
//! lifted, and both actions are audited.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;

use common::{free_port, rampart};

#[test]
fn a_freeze_blocks_new_releases_until_lifted() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A service whose new version never starts: a release that runs ends rolled back.
    let policy = format!(
        r#"service: frozen
deploy: {{process: {{command: ["sh", "-c", "exit 1", "{{port}}"], readiness: {{timeout: 2s}}}}}}
traffic: {{proxy: {{listen: "127.0.0.1:{}"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 1s}}]}}}}
analysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}
"#,
        free_port()
    );
    let policy_path = dir.path().join("rampart.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let run = || {
        rampart()
            .args([
                "run",
                "--stop-after",
                "--version",
                "v2",
                "--output",
                "json",
                "--state-dir",
            ])
            .arg(&state)
            .arg("-f")
            .arg(&policy_path)
            .output()
            .unwrap()
    };
    let freeze = |state_arg: &str, service: Option<&str>| {
        let mut c = rampart();
        c.args([
            "freeze",
            state_arg,
            "--reason",
            "holiday code freeze",
            "--state-dir",
        ])
        .arg(&state);
        if let Some(s) = service {
            c.args(["--service", s]);
        }
        assert!(c.status().unwrap().success());
    };

    freeze("on", None);
    let out = run();
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["outcome"], "blocked");
    assert!(
        v["reason"]
            .as_str()
            .unwrap()
            .contains("holiday code freeze"),
        "{v}"
    );

    // A hotfix may run during the freeze, once someone else approves it.
    let mut hotfix = rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--as",
            "alice",
            "--hotfix",
            "payment outage",
            "--state-dir",
        ])
        .arg(&state)
        .arg("-f")
        .arg(&policy_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(
        approve_after(&mut hotfix, "awaiting_approval", "frozen", &state),
        Some(3),
        "the approved hotfix ran (and rolled back)"
    );

    freeze("off", None);
    freeze("on", Some("other-service"));
    let out = run();
    assert_eq!(
        out.status.code(),
        Some(3),
        "not frozen: the release ran (and rolled back): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A release run from a terminal has its report in `status` and `list` once over,
    // as one the server ran (docs/json.md).
    let ran: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for args in [&["status", "frozen"][..], &["list"]] {
        let shown = rampart()
            .args(args)
            .args(["--output", "json", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap_or_else(|e| {
            panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&shown.stderr))
        });
        let release = if v.is_array() {
            v.as_array()
                .unwrap()
                .iter()
                .find(|r| r["id"] == ran["release_id"])
                .cloned()
                .unwrap()
        } else {
            v
        };
        assert_eq!(
            release["report"]["outcome"], "rolled_back",
            "{args:?}: {release}"
        );
        assert_eq!(release["report"]["release_id"], ran["release_id"]);
    }

    let conn = rusqlite::Connection::open(state.join("rampart.db")).unwrap();
    let kinds: Vec<String> = conn
        .prepare("SELECT kind FROM audit ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(kinds, vec!["freeze_on", "freeze_off", "freeze_on"]);
}

#[test]
fn a_halted_release_pages_through_the_policy_hook() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("pages.jsonl");
    // The stable version cannot start: nothing is safe to fall back to, so it halts.
    let policy = format!(
        r#"service: paged
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_CRASH_ON_START: "v1=1,v2=0"}}
    readiness: {{http: /healthz, timeout: 5s}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 1s}}]}}}}
analysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}
notify:
  - command: [sh, -c, "cat >> {pages}; echo >> {pages}"]
"#,
        exe = common::exe(),
        port = free_port(),
        pages = pages.display()
    );
    let policy_path = dir.path().join("rampart.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let out = rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--stable",
            "v1",
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .arg("-f")
        .arg(&policy_path)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(4),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&pages).unwrap();
    let page: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(page["service"], "paged");
    assert_eq!(page["page"], true);
    assert!(
        page["message"].as_str().unwrap().contains("halted"),
        "{page}"
    );
}

/// Writes a policy for `service` on the sample service behind the proxy on `port`:
/// `steps` (YAML list items), then 50 % for a second; returns its path.
fn approval_policy(dir: &std::path::Path, service: &str, port: u16, steps: &str) -> PathBuf {
    let policy = format!(
        r#"service: {service}
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "2"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy:
  canary:
    steps:
{steps}      - {{weight: 50, bake: 1s}}
analysis:
  interval: 1s
  min_samples: 1
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
"#,
        exe = common::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, policy).unwrap();
    path
}

#[test]
fn an_approval_point_waits_for_someone_other_than_the_initiator() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let policy_path = approval_policy(
        dir.path(),
        "approved",
        port,
        "      - {weight: 10, bake: 1s}\n      - {approval: {role: release-manager, timeout: 5m}}\n",
    );
    let mut run = rampart()
        .args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--stable",
            "v1",
            "--as",
            "alice",
            "--state-dir",
        ])
        .arg(&state)
        .arg("-f")
        .arg(&policy_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(run.stdout.take().unwrap()).lines();
    let rt = common::runtime();
    let (load, _) = common::start_load(&rt, port, 200);
    let mut wait_for = |needle: &str| {
        for line in lines.by_ref() {
            if line.unwrap().contains(needle) {
                return;
            }
        }
        panic!("`{needle}` never printed");
    };
    wait_for("awaiting_approval");
    let approve = |who: &str| {
        rampart()
            .args(["approve", "approved", "--as", who, "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    };
    // The local CLI admits a request as the API does: the initiator is refused at once
    // (four eyes, exit 2) and nothing is queued for the release. A local approval
    // names its approver: `$USER` alone is not taken for one.
    let by_default = rampart()
        .env("USER", "bob")
        .args(["approve", "approved", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_eq!(by_default.status.code(), Some(2), "{by_default:?}");
    assert!(
        String::from_utf8_lossy(&by_default.stderr).contains("needs --as NAME"),
        "{by_default:?}"
    );
    let own = approve("alice");
    assert_eq!(own.status.code(), Some(2));
    let said = String::from_utf8_lossy(&own.stderr);
    assert!(
        said.contains("alice started release") && said.contains("someone else must approve"),
        "{said}"
    );
    let out = approve("bob");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("approved");
    let status = run.wait().unwrap();
    load.abort();
    assert_eq!(status.code(), Some(0));
}

/// An attacker with write access to the store forges the approval a killed release
/// waits for (at row position 0, which both databases accept). `audit verify` finds it,
/// and the next run refuses to act on the log instead of promoting.
#[test]
fn a_forged_approval_is_found_by_verify_and_refused_on_resume() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let policy_path = approval_policy(
        dir.path(),
        "forged",
        port,
        "      - {approval: {role: release-manager, timeout: 5m}}\n",
    );
    let run = || {
        let mut c = rampart();
        c.args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--stable",
            "v1",
            "--as",
            "alice",
            "--state-dir",
        ])
        .arg(&state)
        .arg("-f")
        .arg(&policy_path);
        c
    };
    let mut first = run().stdout(std::process::Stdio::piped()).spawn().unwrap();
    let lines = BufReader::new(first.stdout.take().unwrap()).lines();
    for line in lines {
        if line.unwrap().contains("awaiting_approval") {
            break;
        }
    }
    first.kill().unwrap(); // SIGKILL: the versions it started keep running
    first.wait().unwrap();
    let db = state.join("rampart.db");
    let release: String = {
        let c = rusqlite::Connection::open(&db).unwrap();
        let id: String = c
            .query_row("SELECT id FROM releases", [], |r| r.get(0))
            .unwrap();
        let next: i64 = c
            .query_row(
                "SELECT MAX(seq) + 1 FROM events WHERE release_id = ?1",
                [&id],
                |r| r.get(0),
            )
            .unwrap();
        c.execute(
            "INSERT INTO events (rowid, release_id, seq, at, input, audit) VALUES (0, ?1, ?2, 0, '{\"type\":\"approved\",\"by\":\"bob\"}', '[]')",
            rusqlite::params![id, next],
        )
        .unwrap();
        id
    };
    let verify = rampart()
        .args(["audit", "verify", "--state-dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert_ne!(verify.status.code(), Some(0));
    let said = String::from_utf8_lossy(&verify.stdout);
    assert!(said.contains("not in the audit chain"), "{said}");
    let second = run().args(["--output", "json"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    // Stop what the first run left before asserting, so a failure leaves nothing behind.
    common::stop_versions(&state);
    assert_eq!(second.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("rampart will not act on it"), "{stderr}");
    let c = rusqlite::Connection::open(&db).unwrap();
    let outcome: Option<String> = c
        .query_row(
            "SELECT outcome FROM releases WHERE id = ?1",
            [&release],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(outcome, None, "the forged approval promoted the release");
}

#[test]
fn release_windows_and_the_freeze_calendar_hold_a_release_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // The window opens three hours from now (UTC), so it is closed while this runs.
    #[allow(clippy::disallowed_methods)] // the test builds a window around the real clock
    let hour = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 3600
        % 24;
    let (from, to) = ((hour + 3) % 24, (hour + 4) % 24);
    let policy = |windows: &str| {
        format!(
            r#"service: windowed
deploy: {{process: {{command: ["sh", "-c", "exit 1", "{{port}}"], readiness: {{timeout: 2s}}}}}}
traffic: {{proxy: {{listen: "127.0.0.1:{}"}}}}
strategy: {{canary: {{steps: [{{weight: 10, bake: 1s}}]}}}}
analysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}
windows:
{windows}"#,
            free_port()
        )
    };
    let run = |text: String, extra: &[&str]| {
        let path = dir.path().join("rampart.yaml");
        std::fs::write(&path, text).unwrap();
        let mut c = rampart();
        c.args([
            "run",
            "--stop-after",
            "--version",
            "v2",
            "--as",
            "alice",
            "--state-dir",
        ])
        .arg(&state)
        .arg("-f")
        .arg(&path)
        .args(extra);
        c
    };

    // A calendar freeze in force blocks the release (exit 5) and says until when.
    let out = run(
        policy(
            "  freeze: [{from: 2020-01-01, to: 2100-01-01, reason: migration to the new region}]\n",
        ),
        &["--output", "json"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = v["reason"].as_str().unwrap();
    assert!(
        reason.contains("calendar freeze until 2100-01-01 00:00 UTC (migration to the new region)"),
        "{reason}"
    );

    // A hotfix runs inside it, once someone other than its initiator approves it.
    let mut hotfix = run(
        policy(
            "  freeze: [{from: 2020-01-01, to: 2100-01-01, reason: migration to the new region}]\n",
        ),
        &["--hotfix", "payment outage"],
    )
    .stdout(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    assert_eq!(
        approve_after(&mut hotfix, "during a freeze", "windowed", &state),
        Some(3),
        "the approved hotfix ran (and rolled back its broken canary)"
    );

    // Outside the allowed hours with `outside: block`: blocked, naming the next window.
    let hours = format!("  allow: [{{hours: \"{from:02}:00-{to:02}:00\"}}]\n");
    let out = run(
        policy(&format!("{hours}  outside: block\n")),
        &["--output", "json"],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(5));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains(&format!("{from:02}:00 UTC")), "{reason}");

    // By default it waits; someone other than the initiator may release it now.
    let mut waiting = run(policy(&hours), &[])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert_eq!(
        approve_after(
            &mut waiting,
            "waits for the next window",
            "windowed",
            &state
        ),
        Some(3),
        "the approved release ran (and rolled back its broken canary)"
    );
}

/// Reads a running release's output until it prints `needle`, approves `service` as
/// bob, and returns the release's exit code once it ends.
fn approve_after(
    child: &mut std::process::Child,
    needle: &str,
    service: &str,
    state: &std::path::Path,
) -> Option<i32> {
    use std::io::{BufRead, BufReader};
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.unwrap().contains(needle)),
        "the release never printed `{needle}`"
    );
    let out = rampart()
        .args(["approve", service, "--as", "bob", "--state-dir"])
        .arg(state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in lines.by_ref() {}
    child.wait().unwrap().code()
}
