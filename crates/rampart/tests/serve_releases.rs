//! Real releases under `rampart serve`: several services at once, a queue per service,
//! a server killed mid-release and restarted, approvals with four eyes, pause and
//! promote from the CLI client, and `rampart run --server` with its exit codes.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::time::Duration;

use common::serve::{Server, policy, submit, until};
use common::{free_port, rampart, runtime, start_load};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

fn kinds(server: &Server, token: &str, id: &str) -> Vec<String> {
    let (_, v) = server.call(
        "GET",
        &format!("/api/v1/releases/{id}/events"),
        Some(token),
        None,
    );
    v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

/// A client command against the server, as `token`; returns the exit code and stdout.
fn client(server: &Server, token: &str, args: &[&str]) -> (i32, String) {
    let out = rampart()
        .args(args)
        .env("RAMPART_SERVER", &server.url)
        .env("RAMPART_TOKEN", token)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn two_services_release_at_once_and_both_finish_after_the_server_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start(&state);
    let ci = server.token("deployer", "ci");
    let viewer = server.token("viewer", "watch");
    let rt = runtime();
    let slow = "      - {weight: 30, bake: 4s}\n";
    let mut ids = Vec::new();
    for service in ["alpha", "beta"] {
        let port = free_port();
        let _ = start_load(&rt, port, 150);
        ids.push(submit(&server, &ci, &policy(service, port, slow)));
    }
    // Both run at the same time.
    for id in &ids {
        server.wait_release(id, &viewer, LONG, |v| {
            v["phase"] == "progressing" && v["weight"].as_f64().unwrap() > 0.0
        });
    }
    server.kill();
    let server = Server::start_on(&state, server.port);
    for id in &ids {
        let end = server.wait_release(id, &viewer, LONG, |v| v["report"].is_object());
        assert_eq!(end["outcome"], "promoted", "{end}");
        assert_eq!(end["report"]["outcome"], "promoted", "{end}");
        let kinds = kinds(&server, &viewer, id);
        assert_eq!(
            kinds.iter().filter(|k| *k == "release_started").count(),
            1,
            "started once: {kinds:?}"
        );
        assert!(kinds.iter().any(|k| k == "resumed"), "{kinds:?}");
    }
    // Everything the two releases did is in an intact audit chain.
    let verify = || {
        rampart()
            .args(["audit", "verify", "--output", "json", "--state-dir"])
            .arg(&state)
            .output()
            .unwrap()
    };
    let out = verify();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report["log_entries"].as_u64().unwrap() > 10, "{report}");
    drop(server);
    let conn = rusqlite::Connection::open(state.join("rampart.db")).unwrap();
    conn.execute(
        "UPDATE events SET audit = replace(audit, 'promoting', 'PROMOTING') WHERE audit LIKE '%promoting%'",
        [],
    )
    .unwrap();
    let out = verify();
    assert_eq!(out.status.code(), Some(4), "tampering goes unnoticed");
}

#[test]
fn a_service_runs_one_release_at_a_time_and_the_next_waits_in_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let ci = server.token("deployer", "ci");
    let rt = runtime();
    let port = free_port();
    let _ = start_load(&rt, port, 150);
    let text = policy("gamma", port, "");
    // Follow the live stream from before the first submission.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    {
        use std::io::Write;
        write!(
            stream,
            "GET /api/v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ci}\r\n\r\n"
        )
        .unwrap();
    }
    let first = submit(&server, &ci, &text);
    // The stream carries the release's entries as they are appended.
    let mut seen = String::new();
    stream.set_read_timeout(Some(LONG)).unwrap();
    while !(seen.contains("event: entry")
        && seen.contains(&first)
        && seen.contains("release_started"))
    {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the stream ended: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    let body = json!({"policy": text, "version": "v3"});
    let (status, second) = server.call("POST", "/api/v1/releases", Some(&ci), Some(body));
    assert_eq!(status, 201, "{second}");
    let second = second["id"].as_str().unwrap().to_string();
    server.wait_release(&first, &ci, LONG, |v| v["phase"] == "progressing");
    let (_, waiting) = server.call(
        "GET",
        &format!("/api/v1/releases/{second}"),
        Some(&ci),
        None,
    );
    assert_eq!(waiting["phase"], "queued", "{waiting}");
    let (_, list) = server.call("GET", "/api/v1/releases?service=gamma", Some(&ci), None);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    let one = server.wait_release(&first, &ci, LONG, |v| v["report"].is_object());
    assert_eq!(one["outcome"], "promoted");
    let two = server.wait_release(&second, &ci, LONG, |v| v["report"].is_object());
    assert_eq!(two["outcome"], "promoted", "{two}");
    assert_eq!(
        two["stable"], "v2",
        "the second starts from what the first left serving"
    );
}

#[test]
fn an_on_call_engineer_approves_pauses_and_promotes_from_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let ops = server.token("admin", "ops");
    let alice = server.token("approver", "alice");
    let ci = server.token("deployer", "ci");
    let rt = runtime();
    let port = free_port();
    let _ = start_load(&rt, port, 150);
    let steps = "      - {approval: {role: release-manager, timeout: 10m}}\n      - {weight: 30, bake: 2s}\n";
    let id = submit(&server, &ops, &policy("delta", port, steps));
    let waiting = server.wait_release(&id, &ops, LONG, |v| v["phase"] == "awaiting_approval");
    assert!(
        waiting["awaiting_approval"]
            .as_str()
            .unwrap()
            .contains("approval"),
        "{waiting}"
    );

    // Four eyes: the initiator cannot approve, even as admin; a deployer has no right.
    let (code, _) = client(&server, &ops, &["approve", &id]);
    assert_eq!(code, 2);
    let (code, _) = client(&server, &ci, &["approve", &id]);
    assert_eq!(code, 2);
    let (code, out) = client(&server, &alice, &["approve", "delta", "--output", "json"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()["release"],
        id.as_str()
    );

    // Paused at the 30 % step, it keeps analysing but does not advance.
    server.wait_release(&id, &ops, LONG, |v| v["weight"] == 30.0);
    let (code, _) = client(
        &server,
        &ci,
        &["pause", &id, "--reason", "checking dashboards"],
    );
    assert_eq!(code, 0);
    let paused = server.wait_release(&id, &ops, LONG, |v| v["paused_by"] == "ci");
    let seen = paused["intervals"].as_u64().unwrap();
    // Four more intervals: twice the bake that would have advanced it.
    let held = server.wait_release(&id, &ops, LONG, |v| {
        v["intervals"].as_u64().unwrap() >= seen + 4
    });
    assert_eq!(
        (held["weight"].as_f64(), held["phase"].as_str()),
        (Some(30.0), Some("progressing")),
        "{held}"
    );

    // Promote: only someone other than the initiator, with the approver's right.
    let (code, _) = client(&server, &ci, &["promote", &id, "--reason", "looks good"]);
    assert_eq!(code, 2, "a deployer cannot promote");
    // Never to 100 % during an operator freeze.
    let freeze = |state: &str| {
        let (code, _) = client(
            &server,
            &ops,
            &[
                "freeze",
                state,
                "--service",
                "delta",
                "--reason",
                "incident",
            ],
        );
        assert_eq!(code, 0);
    };
    freeze("on");
    let (code, _) = client(&server, &alice, &["promote", &id, "--reason", "looks good"]);
    assert_eq!(code, 5, "refused: frozen");
    freeze("off");
    let (code, _) = client(&server, &alice, &["promote", &id, "--reason", "looks good"]);
    assert_eq!(code, 0);
    let end = server.wait_release(&id, &ops, LONG, |v| v["outcome"].is_string());
    assert_eq!(end["outcome"], "promoted");
    assert_eq!(end["decision"]["by"], "alice", "{end}");

    // Every action is recorded under the token's name.
    let (code, out) = client(&server, &ops, &["events", &id, "--output", "json"]);
    assert_eq!(code, 0);
    let events: Vec<Value> = serde_json::from_str(&out).unwrap();
    let by = |kind: &str| {
        events
            .iter()
            .find(|e| e["kind"] == kind)
            .map(|e| e["actor"].as_str().unwrap().to_string())
    };
    assert_eq!(by("approved").as_deref(), Some("alice"));
    assert_eq!(by("paused").as_deref(), Some("ci"));
    assert_eq!(by("promoted_by_operator").as_deref(), Some("alice"));
    let (_, audit) = server.call(
        "GET",
        &format!("/api/v1/releases/{id}/audit"),
        Some(&ops),
        None,
    );
    let actions: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"].as_str().unwrap().starts_with("request:"))
        .map(|r| {
            (
                r["action"].as_str().unwrap().into(),
                r["actor"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("request:approve".to_string(), "alice".to_string()),
            ("request:pause".into(), "ci".into()),
            ("request:promote".into(), "alice".into()),
        ]
    );
    let (code, out) = client(&server, &ops, &["list", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        serde_json::from_str::<Value>(&out).unwrap()[0]["id"],
        id.as_str()
    );
    let (code, out) = client(&server, &ops, &["status", &id]);
    assert_eq!(code, 0);
    assert!(out.contains("succeeded"), "{out}");
    let (code, _) = client(&server, &alice, &["approve", &id]);
    assert_eq!(code, 5, "nothing to approve on a finished release");
}

#[test]
fn run_with_server_follows_the_release_and_keeps_the_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let ci = server.token("deployer", "ci");
    let ops = server.token("admin", "ops");
    let rt = runtime();
    let port = free_port();
    let _ = start_load(&rt, port, 150);
    let path = dir.path().join("rampart.yaml");
    std::fs::write(&path, policy("epsilon", port, "")).unwrap();
    let run = || {
        rampart()
            .args([
                "run",
                "--version",
                "v2",
                "--stable",
                "v1",
                "--output",
                "json",
                "--server",
                &server.url,
                "-f",
            ])
            .arg(&path)
            .env("RAMPART_TOKEN", &ci)
            .output()
            .unwrap()
    };
    let out = run();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert_eq!(report["outcome"], "promoted");
    assert!(report["timeline"].as_array().unwrap().len() > 3, "{report}");
    assert!(report["decided_at_s"].as_f64().unwrap() > 0.0);

    let (code, _) = client(
        &server,
        &ops,
        &["freeze", "on", "--service", "epsilon", "--reason", "sale"],
    );
    assert_eq!(code, 0);
    let out = run();
    assert_eq!(out.status.code(), Some(5), "frozen: blocked");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["outcome"], "blocked");

    let out = rampart()
        .args(["run", "--version", "v2", "--server", &server.url, "-f"])
        .arg(&path)
        .env("RAMPART_TOKEN", "rampart_wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a bad token is refused");
}

#[test]
fn run_with_server_workdir_names_the_directory_on_the_server() {
    // A server in a cluster has none of CI's directories: --server-workdir says where
    // the policy's relative paths resolve there instead of the policy file's directory.
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let ci = server.token("deployer", "ci");
    let path = dir.path().join("rampart.yaml");
    std::fs::write(&path, policy("zeta", free_port(), "")).unwrap();
    let run = |extra: &[&str]| {
        rampart()
            .args(["run", "--version", "v2", "--stable", "v1", "-f"])
            .arg(&path)
            .args(extra)
            .env("RAMPART_TOKEN", &ci)
            .env_remove("RAMPART_SERVER")
            .output()
            .unwrap()
    };
    let missing = dir.path().join("not-on-the-server");
    let missing = missing.to_str().unwrap();
    let out = run(&["--server", &server.url, "--server-workdir", missing]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "workdir {missing} is not a directory on the server"
        )),
        "{stderr}"
    );
    let out = run(&["--server-workdir", "."]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--server-workdir needs --server"),
        "{stderr}"
    );
}

/// Regression (review: tested only as a unit until now). A rollback that stopped at
/// level 1 (its flag off) leaves the canary the users it had; a server restarted
/// afterwards keeps that split while the canary answers, and once it no longer does,
/// sends its users to stable and audits it.
#[test]
fn a_level_one_rollback_keeps_its_split_across_server_restarts_while_the_canary_answers() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start(&state);
    let ci = server.token("deployer", "ci");
    let viewer = server.token("viewer", "watch");
    let (port, flag_port) = (free_port(), free_port());
    let rt = runtime();
    let _load = start_load(&rt, port, 150);
    // v2 fails a fifth of its flag-on requests; v1, and v2 with the flag off, never.
    let text = format!(
        r#"service: levelone
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env:
      SAMPLE_ERROR_RATE: "v1=0,v2=20%"
      SAMPLE_FLAG_URL: "http://127.0.0.1:{flag_port}/flags/new-checkout"
      SAMPLE_FLAG_KEY_HEADER: x-user
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}}}
flags:
  listen: "127.0.0.1:{flag_port}"
  define:
    - {{name: new-checkout, default: false}}
strategy: {{canary: {{flag: new-checkout, steps: [{{weight: 30, bake: 30s}}]}}}}
analysis:
  interval: 1s
  min_samples: 10
  failure_limit: 2
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
"#,
        exe = common::exe()
    );
    let id = submit(&server, &ci, &text);
    let end = server.wait_release(&id, &viewer, LONG, |v| v["report"].is_object());
    assert_eq!(end["outcome"], "rolled_back", "{end}");
    assert_eq!(end["rollback_level"], 1, "{end}");
    let routes = || -> Value {
        let text = std::fs::read_to_string(state.join("dataplane/levelone.json")).unwrap();
        serde_json::from_str::<Value>(&text).unwrap()["routes"].clone()
    };
    assert_eq!(routes()["weight"].as_f64(), Some(30.0), "{}", routes());
    // Restarted (its status lines say when the service is restored).
    let restart = |server: &mut Server, n: u32| {
        server.kill();
        let log = dir.path().join(format!("serve-{n}.log"));
        let again = Server::start_logged(&state, server.port, &log);
        until("the service is restored", LONG, || {
            std::fs::read_to_string(&log).is_ok_and(|l| l.contains("levelone v1 serves on"))
        });
        again
    };
    let mut server = restart(&mut server, 1);
    let kept = routes();
    assert_eq!(kept["weight"].as_f64(), Some(30.0), "{kept}");
    assert_eq!(kept["canary"].as_array().map(Vec::len), Some(1), "{kept}");

    // The canary dies; the next restart finds nobody answering for it.
    let canary: Value = serde_json::from_str(
        &std::fs::read_to_string(state.join("processes/levelone.canary.json")).unwrap(),
    )
    .unwrap();
    let pid = u32::try_from(canary[0]["pid"].as_u64().unwrap()).unwrap();
    common::servers::kill_group(pid);
    until("the canary is gone", LONG, || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
            || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .is_ok_and(|s| s.contains(") Z "))
    });
    let _server = restart(&mut server, 2);
    let moved = routes();
    assert_eq!(moved["weight"].as_f64(), Some(0.0), "{moved}");
    assert_eq!(moved["canary"].as_array().map(Vec::len), Some(0), "{moved}");
    let conn = rusqlite::Connection::open(state.join("rampart.db")).unwrap();
    let audited: i64 = conn
        .query_row(
            "SELECT count(*) FROM audit WHERE kind = 'traffic_restored'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(audited, 1);
}

/// Releases `service` under `server`, with a flag endpoint and load (on `rt`, while it
/// lives), to its promotion: its policy, its proxy's port and its flag endpoint's port.
fn promoted_with_flags(
    server: &Server,
    ci: &str,
    viewer: &str,
    rt: &tokio::runtime::Runtime,
    service: &str,
) -> (String, u16, u16) {
    let (port, flag_port) = (free_port(), free_port());
    start_load(rt, port, 150);
    let text = format!(
        "{}flags:\n  listen: \"127.0.0.1:{flag_port}\"\n  define:\n    - {{name: new-checkout, default: false}}\n",
        policy(service, port, "")
    );
    let id = submit(server, ci, &text);
    let end = server.wait_release(&id, viewer, LONG, |v| v["report"].is_object());
    assert_eq!(end["outcome"], "promoted", "{end}");
    assert!(
        flag_endpoint_answers(flag_port),
        "the flag endpoint serves after the release"
    );
    (text, port, flag_port)
}

fn flag_endpoint_answers(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// Regression (review): under `rampart serve`, the flag endpoint the last release left
/// serving was closed before some refusals of the next release were found (here, a
/// running data plane the policy does not match): a refused release left the service's
/// applications without their flags. It is closed only once nothing refuses.
#[test]
fn a_refused_release_leaves_the_last_releases_flag_endpoint_serving() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let ci = server.token("deployer", "ci");
    let viewer = server.token("viewer", "watch");
    let rt = runtime();
    let (first, port, flag_port) = promoted_with_flags(&server, &ci, &viewer, &rt, "theta");
    let answers = || flag_endpoint_answers(flag_port);
    // The next release keeps users by a header the running data plane does not.
    let listen = format!("listen: \"127.0.0.1:{port}\"");
    let second = first.replace(&listen, &format!("{listen}, sticky: {{header: x-user}}"));
    assert_ne!(second, first);
    let id = submit(&server, &ci, &second);
    let end = server.wait_release(&id, &viewer, LONG, |v| v["report"].is_object());
    assert_eq!(end["report"]["exit_code"], 2, "{end}");
    assert!(
        end["report"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("Stop the service first"),
        "{end}"
    );
    assert!(answers(), "the flag endpoint still serves");
}

/// Regression (review): under `rampart serve`, a release whose flag endpoint moves to
/// an address in use closed the last release's flag endpoint, then failed to bind its
/// own (an internal error, retried): the service's applications had no flag endpoint
/// until the address was free. The new address is bound before the last endpoint
/// closes now.
#[test]
fn a_flag_endpoint_address_in_use_leaves_the_last_releases_flag_endpoint_serving() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("serve.log");
    let server = Server::start_logged(&dir.path().join("state"), free_port(), &log);
    let ci = server.token("deployer", "ci");
    let viewer = server.token("viewer", "watch");
    let rt = runtime();
    let (first, _, flag_port) = promoted_with_flags(&server, &ci, &viewer, &rt, "iota");
    let answers = || flag_endpoint_answers(flag_port);
    // The next release's flag endpoint listens on an address another process holds.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let moved = taken.local_addr().unwrap();
    let second = first.replace(
        &format!("listen: \"127.0.0.1:{flag_port}\""),
        &format!("listen: \"{moved}\""),
    );
    assert_ne!(second, first);
    submit(&server, &ci, &second);
    let refused = format!("the flag endpoint cannot listen on {moved}");
    until(
        "the next release fails on its flag endpoint's address",
        LONG,
        || std::fs::read_to_string(&log).is_ok_and(|t| t.contains(&refused)),
    );
    assert!(answers(), "the last release's flag endpoint still serves");
    drop(taken);
}

/// Regression (review): a data plane state file of a newer format (or corrupt) was
/// refused only when the release started its data plane, not among the refusals found
/// before anything is touched, when no data plane ran: under `rampart serve` the last
/// release's flag endpoint was closed first, and the service's applications had none.
#[test]
fn a_newer_data_plane_state_file_leaves_the_last_releases_flag_endpoint_serving() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("serve.log");
    let server = Server::start_logged(&state, free_port(), &log);
    let ci = server.token("deployer", "ci");
    let viewer = server.token("viewer", "watch");
    let rt = runtime();
    let (first, _, flag_port) = promoted_with_flags(&server, &ci, &viewer, &rt, "kappa");
    let answers = || flag_endpoint_answers(flag_port);
    // The data plane is gone, and its state file is one a newer rampart wrote.
    let planes = state.join("dataplane");
    let pid = std::fs::read_to_string(planes.join("kappa.lock")).unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-KILL", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success());
    until("the data plane is gone", LONG, || {
        std::fs::File::open(planes.join("kappa.lock"))
            .unwrap()
            .try_lock_shared()
            .is_ok()
    });
    let file = planes.join("kappa.json");
    let mut saved: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    saved["format"] = json!(99);
    std::fs::write(&file, saved.to_string()).unwrap();
    submit(&server, &ci, &first);
    until("the next release fails on the state file", LONG, || {
        std::fs::read_to_string(&log)
            .is_ok_and(|t| t.contains("written by a newer rampart (state format 99"))
    });
    assert!(answers(), "the last release's flag endpoint still serves");
}
