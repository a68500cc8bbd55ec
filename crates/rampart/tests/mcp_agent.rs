//! An AI agent drives a release through `rampart mcp` with the Python MCP SDK (PyPI
//! `mcp`, installed by `scripts/test.sh` into a virtual environment named in
//! `RAMPART_MCP_PYTHON`): it lists the tools, starts a release, watches it reach its
//! approval point, is refused when it tries to approve (by the server, for its `agent`
//! token), asks for an approval, a human approves with the CLI, and the release is
//! promoted. The audit log records the agent's actions under its token's name.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use common::serve::{Server, policy};

const LONG: std::time::Duration = std::time::Duration::from_secs(120);
use common::{exe, free_port, rampart, runtime, start_load};

#[test]
fn an_agent_is_refused_the_approval_asks_a_human_and_the_release_is_promoted() {
    let python = std::env::var("RAMPART_MCP_PYTHON").unwrap_or_else(|_| "python3".into());
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let agent = server.token("agent", "release-bot");
    let human = server.token("approver", "alice");
    let port = free_port();
    let rt = runtime();
    let _load = start_load(&rt, port, 150);
    let steps = "      - {approval: {role: release-manager, timeout: 10m}}\n";
    let file = dir.path().join("rampart.yaml");
    let text = policy("mcp-svc", port, steps);
    std::fs::write(&file, &text).unwrap();
    // Humans released this policy before (v1, the service's first release): an agent
    // may release exactly that policy, from the same directory.
    let ci = server.token("deployer", "ci");
    let workdir = std::fs::canonicalize(dir.path()).unwrap();
    let body = serde_json::json!({"policy": text, "version": "v1", "workdir": workdir});
    let (status, v) = server.call("POST", "/api/v1/releases", Some(&ci), Some(body));
    assert_eq!(status, 201, "{v}");
    let first = v["id"].as_str().unwrap().to_string();
    let done = server.wait_release(&first, &human, LONG, |v| v["report"].is_object());
    assert_eq!(done["outcome"], "promoted", "{done}");

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/mcp_agent.py");
    let mut client = Command::new(&python)
        .arg(script)
        .arg(exe())
        .arg(&server.url)
        .arg(&file)
        .env("RAMPART_TOKEN", &agent)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap()).lines();
    let waiting = lines.next().expect("the agent ended early").unwrap();
    let mut words = waiting.split_whitespace();
    assert_eq!(words.next(), Some("WAITING"), "{waiting}");
    let release = words.next().unwrap().to_string();
    assert!(words.next().unwrap().starts_with("approval-"), "{waiting}");

    // The request reached the audit chain under the agent's name; nothing was approved.
    let (_, audit) = server.call(
        "GET",
        &format!("/api/v1/releases/{release}/audit"),
        Some(&human),
        None,
    );
    let actions: Vec<(String, String)> = audit["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_string(),
                r["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        actions.contains(&("approval_requested".into(), "release-bot".into())),
        "{actions:?}"
    );
    assert!(
        actions.contains(&("release_submitted".into(), "release-bot".into())),
        "{actions:?}"
    );
    assert!(
        !actions.iter().any(|(a, _)| a == "request:approve"),
        "{actions:?}"
    );

    // A human approves with the CLI.
    server.approve_with_cli(&release, &human);
    writeln!(client.stdin.as_mut().unwrap(), "approved").unwrap();

    let promoted = lines.next().expect("the agent ended early").unwrap();
    assert_eq!(promoted, format!("PROMOTED {release}"));
    assert!(client.wait().unwrap().success());
}

#[test]
fn rampart_mcp_refuses_a_token_that_could_approve() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("state"));
    let admin = server.token("admin", "root");
    let out = rampart()
        .args(["mcp", "--server", &server.url])
        .env("RAMPART_TOKEN", &admin)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--role agent"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn without_a_server_rampart_mcp_serves_the_local_store_with_the_same_rules() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let mut mcp = common::mcp::Mcp::start(&["--state-dir", state_arg], None);
    let (v, err) = mcp.tool(
        "validate_policy",
        serde_json::json!({"policy": "service: x"}),
    );
    assert!(!err && v["valid"] == false, "{v}");
    let (v, err) = mcp.tool("release_status", serde_json::json!({"release": "nope"}));
    assert!(err && v["error"]["code"] == "not_found", "{v}");
    // A policy no human released is refused to the session's agent token.
    let text = policy("local-svc", common::free_port(), "");
    let (v, err) = mcp.tool(
        "start_release",
        serde_json::json!({"policy": text, "version": "v2"}),
    );
    assert!(err && v["error"]["code"] == "forbidden", "{v}");
    assert!(
        v["error"]["instead"].as_str().unwrap().contains("human"),
        "{v}"
    );
    // One server per SQLite store: a second one on the same directory says so.
    let second = rampart()
        .args(["mcp", "--state-dir", state_arg])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("another rampart serve"),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    // The session's token is revoked when the session ends.
    drop(mcp);
    let out = rampart()
        .args([
            "token",
            "list",
            "--output",
            "json",
            "--state-dir",
            state_arg,
        ])
        .output()
        .unwrap();
    let tokens: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let agents: Vec<&serde_json::Value> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["role"] == "agent")
        .collect();
    assert_eq!(agents.len(), 1, "{tokens}");
    assert_eq!(agents[0]["revoked"], true, "{tokens}");
}
