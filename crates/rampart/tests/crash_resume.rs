//! kill -9 of `rampart run` in the middle of a bake, then the same command again: the
//! release resumes (adopting the still-running versions), finishes, and its event log
//! holds every decision exactly once.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::servers::SpawnGuarded as _;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::{exe, free_port, rampart, runtime, start_load};

fn policy(port: u16) -> String {
    format!(
        r#"service: resumable
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "5"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic:
  proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}
strategy:
  canary:
    steps: [{{weight: 20, bake: 3s}}, {{weight: 50, bake: 3s}}]
analysis:
  interval: 1s
  min_samples: 10
  metrics:
    - metric: error_rate
      judge: {{max: 5%}}
"#,
        exe = exe()
    )
}

fn run_cmd(policy: &Path, state: &Path) -> Command {
    let mut c = rampart();
    c.args(["run", "--version", "v2", "--stable", "v1", "--state-dir"])
        .arg(state)
        .arg("-f")
        .arg(policy);
    c
}

fn audit_kinds(db: &Path) -> Vec<String> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT audit FROM events ORDER BY seq")
        .unwrap();
    let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
    let mut kinds = Vec::new();
    for audit in rows {
        let events: serde_json::Value = serde_json::from_str(&audit.unwrap()).unwrap();
        for e in events.as_array().unwrap() {
            kinds.push(e["kind"].as_str().unwrap().to_string());
        }
    }
    kinds
}

#[test]
fn kill_9_during_a_bake_then_rerun_finishes_without_repeating_decisions() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let policy_path = dir.path().join("rampart.yaml");
    std::fs::write(&policy_path, policy(port)).unwrap();
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let rt = runtime();
    let (load, _) = start_load(&rt, port, 200);

    // First run: wait until the first step has passed an analysis interval, mid-bake.
    let mut first = run_cmd(&policy_path, &state)
        .stdout(Stdio::piped())
        .spawn_guarded();
    let stdout = BufReader::new(first.stdout.take().unwrap());
    let mut seen = Vec::new();
    for line in stdout.lines() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("interval 1 pass") {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.contains("interval 1 pass")),
        "never reached a bake:\n{}",
        seen.join("\n")
    );
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    // The versions it started outlive it; the second run adopts them.
    let second = run_cmd(&policy_path, &state)
        .args(["--output", "json"])
        .output()
        .unwrap();
    load.abort();
    let code = second.status.code();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&second.stdout).unwrap();
    assert_eq!(report["outcome"], "promoted");

    let kinds = audit_kinds(&state.join("rampart.db"));
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    assert_eq!(count("release_started"), 1, "{kinds:?}");
    assert_eq!(count("resumed"), 1, "{kinds:?}");
    assert_eq!(
        count("step_completed"),
        2,
        "each step decided once: {kinds:?}"
    );
    assert_eq!(count("promoting"), 1, "{kinds:?}");
    assert_eq!(count("rollback_started"), 0, "{kinds:?}");
    assert_eq!(count("promoted"), 1, "{kinds:?}");
    let timeline = report["timeline"].as_array().unwrap();
    assert!(
        timeline
            .iter()
            .any(|e| e["message"].as_str().unwrap_or("").contains("adopted")),
        "the resumed run adopted the running versions"
    );
    // The winner keeps serving, as the service's stable, and nothing else runs.
    let records: Vec<String> = std::fs::read_dir(state.join("processes"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(records, ["resumable.stable.json"], "{records:?}");
    let stable = std::fs::read_to_string(state.join("processes/resumable.stable.json")).unwrap();
    assert!(stable.contains("\"v2\""), "{stable}");
    let stopped = rampart()
        .args(["stop", "--state-dir"])
        .arg(&state)
        .arg("-f")
        .arg(&policy_path)
        .output()
        .unwrap();
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(
        std::fs::read_dir(state.join("processes"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn a_release_killed_before_it_started_resumes_against_the_stable_version() {
    // The crash window between recording a release and recording its start: the
    // store holds the release with an empty log.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let _versions = common::Versions(state.clone());
    let port = free_port();
    let text = policy(port).replace(
        "SAMPLE_ERROR_RATE: \"0\"",
        "SAMPLE_ERROR_RATE: \"v1=0,v2=30%\"",
    );
    let path = dir.path().join("rampart.yaml");
    std::fs::write(&path, &text).unwrap();
    {
        use rampart_core::ports::Store;
        let rt = runtime();
        let store = rt
            .block_on(rampart_adapters::store::StateStore::open(
                &state.join("rampart.db"),
            ))
            .unwrap();
        let record = rampart_core::ports::ReleaseRecord {
            id: "resumable-created-only".into(),
            service: "resumable".into(),
            version: "v2".into(),
            policy: text,
            created_at: 0,
            outcome: None,
        };
        rt.block_on(store.create(&record)).unwrap();
    }
    // v2 is bad: judged against v1 it is rolled back. Started as an initial release
    // (stable forgotten), it would have been promoted without any comparison.
    let rt = runtime();
    let (load, _) = start_load(&rt, port, 200);
    let out = run_cmd(&path, &state)
        .args(["--output", "json"])
        .output()
        .unwrap();
    load.abort();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["release_id"], "resumable-created-only");
    assert_eq!(v["stable_version"], "v1", "{v}");
    assert_eq!(out.status.code(), Some(3), "{v}");
}
