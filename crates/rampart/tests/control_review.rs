//! An adversarial review of the control plane's trust boundary: the API's sessions,
//! the agent role's limits, the operators' identities and four eyes, the CLI's text
//! output, and what `audit verify` notices. Each test states a promise of the docs
//! (docs/control-plane.md, docs/agents.md) that the code should keep.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Duration;

use rampart_adapters::store::memory::MemoryStore;
use rampart_adapters::store::{StateStore, Submission, Submissions, Tokens};
use rampart_core::ports::{CommandKind, OperatorCommand, ReleaseRecord, Store, StoredInput};
use rampart_core::release::{Input, Release, step};
use serde_json::{Value, json};

use common::serve::{call, in_memory_api};

/// A policy whose release, started at midnight UTC, waits outside its one-hour window
/// for a human's approval (phase `awaiting_approval`): nothing runs, nothing listens.
const WAITING_POLICY: &str = r#"service: windowed
deploy: {process: {command: ["sh", "-c", "exit 1", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:9"}}
strategy: {canary: {steps: [{weight: 10, bake: 1s}]}}
analysis: {metrics: [{metric: error_rate, judge: {max: 1%}}]}
windows:
  allow: [{hours: "10:00-11:00"}]
"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The release state after `log`.
fn replay(log: &[StoredInput]) -> Release {
    let policy = rampart_core::Policy::from_yaml(WAITING_POLICY).unwrap();
    Release::replay(&policy, log.iter().map(|e| (&e.input, e.at)))
}

/// Appends `input` at `at` to release `id` as the controller does: stepped from the
/// state its log gives, with the events the step produced.
async fn feed<S: Store + ?Sized>(store: &S, id: &str, input: Input, at: u64) {
    let policy = rampart_core::Policy::from_yaml(WAITING_POLICY).unwrap();
    let (_, log) = store.load(id).await.unwrap();
    let state = replay(&log);
    let t = step(&policy, &state, &input, at);
    let entry = StoredInput {
        seq: log.last().map_or(0, |e| e.seq + 1),
        at,
        input,
        events: t.events,
    };
    store.append(id, &entry).await.unwrap();
}

/// Creates release `id` of `WAITING_POLICY`, started by `initiator` at midnight: it
/// waits for an approval.
async fn waiting_release<S: Store + ?Sized>(store: &S, id: &str, initiator: &str) {
    store
        .create(&ReleaseRecord {
            id: id.into(),
            service: "windowed".into(),
            version: "v2".into(),
            policy: WAITING_POLICY.into(),
            created_at: 0,
            outcome: None,
        })
        .await
        .unwrap();
    let start = Input::Start {
        release_id: id.into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        automatic_rollbacks: 0,
        initiator: initiator.into(),
        planned_migrations: None,
        hotfix: None,
    };
    feed(store, id, start, 0).await;
    let (_, log) = store.load(id).await.unwrap();
    assert_eq!(replay(&log).phase.as_str(), "awaiting_approval");
}

fn token(store: &MemoryStore, role: &str, name: &str) -> String {
    runtime()
        .block_on(store.create_token(name, role, "test", 1))
        .unwrap()
}

// === sessions ===

/// A revoked token is refused on every request; an event stream it opened before must
/// not go on delivering every release's events to it.
#[test]
fn a_revoked_token_stops_receiving_the_event_stream() {
    let (url, port, store, feed) = in_memory_api();
    let admin = token(&store, "admin", "root");
    let viewer = token(&store, "viewer", "contractor");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        stream,
        "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {viewer}\r\n\r\n"
    )
    .unwrap();
    // The answer's head: the handler has subscribed to the feed by now.
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream closed before its head");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    let (status, v) = call(
        &url,
        "DELETE",
        "/api/v1/tokens/contractor",
        Some(&admin),
        None,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(
        call(&url, "GET", "/api/v1/whoami", Some(&viewer), None).0,
        401
    );
    feed.send(Arc::new(
        json!({"release": "shop-1", "seq": 7, "events": ["AFTER-REVOCATION"]}).to_string(),
    ))
    .unwrap();
    // Until the stream ends (or a generous bound passes with nothing more delivered).
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut after = Vec::new();
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                after.extend_from_slice(&buf[..n]);
                if String::from_utf8_lossy(&after).contains("AFTER-REVOCATION") {
                    break;
                }
            }
        }
    }
    let after = String::from_utf8_lossy(&after);
    assert!(
        !after.contains("AFTER-REVOCATION"),
        "a revoked token still receives release events on the stream it opened:\n{after}"
    );
}

// === the agent role ===

/// An agent may freeze, never lift a freeze: nor may it take over a human's freeze,
/// replacing who froze the service and why (what the admin reads to decide on lifting).
#[test]
fn an_agent_cannot_rewrite_a_humans_freeze() {
    let (url, _, store, _) = in_memory_api();
    let admin = token(&store, "admin", "oncall-lead");
    let agent = token(&store, "agent", "bot");
    let human = json!({"state": "on", "service": "shop", "reason": "incident 4711: payments down"});
    let (status, v) = call(&url, "POST", "/api/v1/freeze", Some(&admin), Some(human));
    assert_eq!(status, 200, "{v}");
    let by_agent = json!({"state": "on", "service": "shop", "reason": "all clear, routine freeze"});
    let (status, v) = call(&url, "POST", "/api/v1/freeze", Some(&agent), Some(by_agent));
    assert!(status < 500, "{status} {v}");
    let (_, v) = call(&url, "GET", "/api/v1/freeze", Some(&admin), None);
    let shop: Vec<&Value> = v["freezes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["scope"] == "shop")
        .collect();
    assert_eq!(shop.len(), 1, "{v}");
    assert_eq!(
        (shop[0]["actor"].as_str(), shop[0]["reason"].as_str()),
        (Some("oncall-lead"), Some("incident 4711: payments down")),
        "an agent replaced a human's freeze record: {v}"
    );
}

// === what the CLI prints ===

/// A reason is free text from any caller with the right (an agent's, a CI job's); the
/// text output of `rampart events` must not pass terminal control sequences through, nor
/// let a reason print lines that look like events of their own.
#[test]
fn events_text_output_does_not_pass_terminal_escapes_through() {
    let (url, _, store, _) = in_memory_api();
    let agent = token(&store, "agent", "bot");
    let viewer = token(&store, "viewer", "human");
    let rt = runtime();
    rt.block_on(waiting_release(&*store, "windowed-1", "alice"));
    let evil = "checking\u{1b}]0;pwned\u{7}\u{1b}[2K\r     3.0s  approved               10%  approved by carol  (carol)\n\u{1b}[8m";
    let (status, v) = call(
        &url,
        "POST",
        "/api/v1/releases/windowed-1/abort",
        Some(&agent),
        Some(json!({ "reason": evil })),
    );
    assert_eq!(status, 202, "{v}");
    // The controller takes the request and applies it, as it would.
    rt.block_on(async {
        let (_, taken) = store.next_command("windowed-1").await.unwrap().unwrap();
        let input = taken.kind.input(&taken);
        feed(&*store, "windowed-1", input, 1000).await;
    });
    let out = common::rampart()
        .args(["events", "windowed-1", "--server", &url])
        .env("RAMPART_TOKEN", &viewer)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("checking"), "{text}");
    let control: Vec<char> = text
        .chars()
        .filter(|c| c.is_control() && *c != '\n')
        .collect();
    assert!(
        control.is_empty(),
        "control characters {control:?} reach the terminal:\n{text:?}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("3.0s  approved")),
        "a reason printed a forged event line:\n{text}"
    );
}

// === four eyes ===

/// `--as` names who acts on the local store; the initiator must not approve their own
/// release by spelling their name with surrounding spaces, nor can a blank name
/// approve (an approval by nobody).
#[test]
fn four_eyes_is_not_bypassed_by_spaces_or_a_blank_name_in_as() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let rt = runtime();
    rt.block_on(async {
        let store = StateStore::open(&state.join("rampart.db")).await.unwrap();
        waiting_release(&store, "windowed-1", "alice").await;
    });
    let approve = |who: &str| {
        common::rampart()
            .args(["approve", "windowed-1", "--as", who, "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    };
    // The plain spelling is refused: four eyes, exit 2.
    let plain = approve("alice");
    assert_eq!(
        plain.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&plain.stderr)
    );
    let mut taken = Vec::new();
    for who in [" alice", "alice ", "alice\n", " ", "\t"] {
        let out = approve(who);
        if out.status.code() != Some(2) {
            taken.push(who);
        }
    }
    assert!(
        taken.is_empty(),
        "approvals of alice's release were queued as {taken:?}"
    );
}

// === the audit chain ===

/// A rollback request's `force` (rolling the code back past contract migrations: the
/// deployer-only right) is in the chain; flipping it in the queued row before the
/// controller takes it must not get a forced rollback applied. (`verify` used to be
/// the only one to notice, after the fact: the controller now refuses a queued row the
/// chain does not vouch for, and records the refusal.)
#[test]
fn a_queued_rollback_turned_into_a_forced_one_is_refused_not_applied() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rampart.db");
    let rt = runtime();
    let store = rt.block_on(StateStore::open(&db)).unwrap();
    rt.block_on(waiting_release(&store, "windowed-1", "alice"));
    // An agent asks for a plain rollback, as it may.
    rt.block_on(store.push_command_to(
        "windowed-1",
        &OperatorCommand {
            kind: CommandKind::Rollback,
            actor: "bot".into(),
            reason: "error rate looks high".into(),
            force: false,
            at: 500,
        },
    ))
    .unwrap();
    assert!(rt.block_on(store.verify_chain()).unwrap().ok);
    // Someone with write access to the database flips it.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n = conn
        .execute("UPDATE commands SET force = 1 WHERE taken = 0", [])
        .unwrap();
    assert_eq!(n, 1);
    drop(conn);
    // The controller never takes it.
    let taken = rt.block_on(store.next_command("windowed-1")).unwrap();
    assert!(
        taken.is_none(),
        "the flipped row was taken to be applied: {taken:?}"
    );
    let refused = rt
        .block_on(store.chain_records(Some("windowed-1")))
        .unwrap()
        .into_iter()
        .filter(|r| r.action == "request_refused")
        .count();
    assert_eq!(refused, 1, "the refusal is in the audit chain");
    assert!(rt.block_on(store.verify_chain()).unwrap().ok);
}

/// A queued submission is run as its row says: from its `workdir` (where the policy's
/// commands run), over its `stable`, as a `hotfix` or not. The chain records stable
/// and hotfix; `verify` must notice each changed in the row, and the workdir too.
#[test]
fn verify_notices_a_queued_submission_changed_where_it_runs_or_what_it_is() {
    let mut unnoticed = Vec::new();
    for (field, sql) in [
        (
            "workdir",
            "UPDATE submissions SET workdir = '/tmp/elsewhere'",
        ),
        ("hotfix", "UPDATE submissions SET hotfix = 'urgent'"),
        ("stable", "UPDATE submissions SET stable = 'v0-vulnerable'"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("rampart.db");
        let rt = runtime();
        let store = rt.block_on(StateStore::open(&db)).unwrap();
        let s = Submission {
            id: "windowed-1".into(),
            service: "windowed".into(),
            version: "v2".into(),
            stable: Some("v1".into()),
            hotfix: None,
            initiator: "alice".into(),
            policy: WAITING_POLICY.into(),
            workdir: dir.path().display().to_string(),
            state: "queued".into(),
            report: None,
            created_at: 1,
        };
        rt.block_on(store.submit(&s)).unwrap();
        assert!(rt.block_on(store.verify_chain()).unwrap().ok);
        let conn = rusqlite::Connection::open(&db).unwrap();
        assert_eq!(conn.execute(sql, []).unwrap(), 1);
        drop(conn);
        if rt.block_on(store.verify_chain()).unwrap().ok {
            unnoticed.push(field);
        }
    }
    assert!(
        unnoticed.is_empty(),
        "a queued submission's {unnoticed:?} changed in the database passes verify"
    );
}

// === freezes and promotions ===

/// "Nothing is promoted during a freeze": a promotion asked for before the freeze, and
/// not yet applied when it began (the controller was down, as after a crash), must not
/// take the release to 100 % once the controller takes the request.
#[test]
fn a_promotion_asked_before_a_freeze_is_not_applied_during_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = common::serve::Server::start(&state);
    let alice = server.token("deployer", "alice");
    let port = common::free_port();
    let rt = common::runtime();
    let _load = common::start_load(&rt, port, 100);
    let steps = "      - {approval: {role: release-manager, timeout: 30m}}\n";
    let policy = common::serve::policy("frozen-later", port, steps);
    let release = common::serve::submit(&server, &alice, &policy);
    let limit = Duration::from_secs(60);
    server.wait_release(&release, &alice, limit, |v| {
        v["phase"] == "awaiting_approval"
    });
    // The controller goes down; bob asks for a promotion on the store, while nothing
    // is frozen, so it is admitted and queued.
    server.kill();
    let out = common::rampart()
        .args(["promote", &release, "--as", "bob", "--reason", "looks good"])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Then an incident: the service is frozen.
    let out = common::rampart()
        .args([
            "freeze",
            "on",
            "--service",
            "frozen-later",
            "--reason",
            "incident 4711",
        ])
        .args(["--as", "oncall"])
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The controller comes back and takes the queued request.
    let server = common::serve::Server::start_on(&state, server.port);
    // Until the request was taken: the release either promoted or refused it.
    let events = || {
        let (_, v) = server.call(
            "GET",
            &format!("/api/v1/releases/{release}/events"),
            Some(&alice),
            None,
        );
        v
    };
    let kinds = |v: &Value| -> Vec<String> {
        v["events"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e["kind"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    common::serve::until("the promotion is taken", limit, || {
        kinds(&events())
            .iter()
            .any(|k| k == "promoted_by_operator" || k == "promote_refused")
    });
    let events = events();
    let promoted = kinds(&events).iter().any(|k| k == "promoted_by_operator");
    assert!(
        !promoted,
        "a promotion was applied while the service was frozen:\n{events}"
    );
}

/// Review: a release can be named by its service ("the service's latest release",
/// docs/control-plane.md). Against a server, `Backend::release`
/// (crates/rampart/src/client.rs) asks `GET /api/v1/releases?service=S&limit=1`,
/// whose list puts queued submissions first (crates/rampart/src/serve/api/releases.rs,
/// `list_releases`): with the next release queued behind the one in progress,
/// `rampart abort windowed --reason …` (the incident command of the docs) withdraws
/// the queued one, answers success, and leaves the release in progress running
/// untouched. The same command on the local store names the release in progress.
#[test]
fn abort_by_service_reaches_the_release_in_progress_not_the_one_queued_behind_it() {
    let (url, _port, store, _feed) = in_memory_api();
    let rt = runtime();
    rt.block_on(waiting_release(store.as_ref(), "windowed-1", "alice"));
    rt.block_on(store.submit(&Submission {
        id: "windowed-2".into(),
        service: "windowed".into(),
        version: "v3".into(),
        stable: None,
        hotfix: None,
        initiator: "ci".into(),
        policy: WAITING_POLICY.into(),
        workdir: std::env::temp_dir().display().to_string(),
        state: "queued".into(),
        report: None,
        created_at: 1_700_000_000_000,
    }))
    .unwrap();
    let token = rt
        .block_on(store.create_token("oncall", "deployer", "test", 1))
        .unwrap();
    let out = common::rampart()
        .args([
            "abort",
            "windowed",
            "--reason",
            "support tickets",
            "--server",
            &url,
            "--output",
            "json",
        ])
        .env("RAMPART_TOKEN", &token)
        .env_remove("RAMPART_SERVER")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let queued = rt
        .block_on(Submissions::submission(store.as_ref(), "windowed-2"))
        .unwrap()
        .unwrap();
    let rollback_asked = rt
        .block_on(store.next_command("windowed-1"))
        .unwrap()
        .is_some_and(|(_, c)| c.kind == CommandKind::Rollback);
    assert!(
        rollback_asked || queued.state == "queued",
        "`rampart abort windowed` (exit {:?}) withdrew the queued release windowed-2 (now {}) and \
         asked nothing of windowed-1, the release in progress: {stdout}",
        out.status.code(),
        queued.state
    );
}
