//! An AI agent drives a release through `rampart mcp` with the Python MCP SDK (PyPI
//! `mcp`, installed by `scripts/test.sh` into a virtual environment named in
//! `RAMPART_MCP_PYTHON`): it lists the tools, starts a release, watches it reach its
//! approval point, is refused when it tries to approve (by the server, for its `agent`
//! token), asks for an approval, a human approves with the CLI, and the release is
//! promoted. The audit log records the agent's actions under its token's name.
//!
//! The other tests speak the protocol line by line (`common::mcp`): the tools an agent
//! sees (names, descriptions, arguments), refusals of arguments outside a tool's
//! schema, and the protocol rules the MCP SDK sets (version negotiation, no batches,
//! a 2026-07-28 client without a handshake).

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

/// A tool as agents know it.
struct Tool {
    name: &'static str,
    description: &'static str,
    /// Each argument with its description.
    args: &'static [(&'static str, &'static str)],
    required: &'static [&'static str],
}

/// The tools as agents know them.
const TOOLS: &[Tool] = &[
    Tool {
        name: "validate_policy",
        description: "Checks a release policy and lists every problem with its line and field.",
        args: &[("file", FILE), ("policy", POLICY)],
        required: &[],
    },
    Tool {
        name: "start_release",
        description: "Submits a release of VERSION under the policy to rampart serve and returns its id at once; follow it with release_status.",
        args: &[
            ("file", FILE),
            ("policy", POLICY),
            ("version", "the version to release"),
            (
                "stable",
                "the version serving now, if rampart does not know it",
            ),
        ],
        required: &["version"],
    },
    Tool {
        name: "release_status",
        description: "A release's phase, weight, step, what it waits for, and its outcome once over.",
        args: &[("release", RELEASE)],
        required: &["release"],
    },
    Tool {
        name: "list_releases",
        description: "The newest releases, optionally of one service.",
        args: &[("service", "")],
        required: &[],
    },
    Tool {
        name: "release_events",
        description: "A release's audit events (decisions, weights, verdicts, who acted), optionally only after a log position.",
        args: &[
            ("release", RELEASE),
            ("after", "only events after this log position"),
        ],
        required: &["release"],
    },
    Tool {
        name: "replay_policy",
        description: "Backtests a policy on recorded traffic (a CSV of t_s,variant,requests,errors) in simulated time: the outcome it would have reached and when.",
        args: &[
            ("file", "the policy file"),
            ("samples", "the samples CSV file"),
        ],
        required: &["file", "samples"],
    },
    Tool {
        name: "check_migrations",
        description: "Classifies PostgreSQL migrations: expand (safe to roll back), contract or irreversible (automatic rollback blocked, a human decides).",
        args: &[("paths", "SQL files or directories")],
        required: &["paths"],
    },
    Tool {
        name: "render_runbook",
        description: "The release runbook derived from the policy: checklist, triggers, approval points, rollback order.",
        args: &[("file", FILE), ("policy", POLICY), ("version", "")],
        required: &[],
    },
    Tool {
        name: "pause_release",
        description: "Holds a release at its current step (analysis goes on, a failure still rolls back).",
        args: ACTION,
        required: &["release", "reason"],
    },
    Tool {
        name: "abort_release",
        description: "Stops a release and rolls it back in order (flags, traffic, artifact).",
        args: ACTION,
        required: &["release", "reason"],
    },
    Tool {
        name: "rollback_release",
        description: "Rolls a release back now. A release that shipped a contract migration is escalated instead; only a human may force that rollback.",
        args: &[
            ("release", RELEASE),
            ("reason", REASON),
            ("force", "roll back past contract migrations (humans only)"),
        ],
        required: &["release", "reason"],
    },
    Tool {
        name: "freeze_releases",
        description: "Freezes new releases of one service, or of every service (audited). Lifting a freeze is for humans.",
        args: &[
            ("reason", REASON),
            ("service", "one service; every service without it"),
        ],
        required: &["reason"],
    },
    Tool {
        name: "request_approval",
        description: "Asks the humans to approve a release (they are notified through the policy's hooks) and returns a handle; the release moves on once an approver approves.",
        args: ACTION,
        required: &["release", "reason"],
    },
    Tool {
        name: "approve_release",
        description: "Approves the approval point a release waits at. Needs a human approver: an agent's token is refused, and the refusal says what to do instead.",
        args: ACTION,
        required: &["release"],
    },
];
/// The arguments of an action on a release.
const ACTION: &[(&str, &str)] = &[("release", RELEASE), ("reason", REASON)];
const FILE: &str = "path of the policy file (rampart.yaml), relative to where rampart mcp runs";
const POLICY: &str = "the policy as YAML text, instead of file";
const RELEASE: &str = "the release id";
const REASON: &str = "why, in words for the humans reading the audit log";

#[test]
fn the_tools_keep_their_names_descriptions_and_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut mcp = common::mcp::Mcp::start(&["--state-dir", state.to_str().unwrap()], None);
    let listed = mcp.request("tools/list", serde_json::json!({}));
    let tools = listed["result"]["tools"].as_array().unwrap();
    assert_eq!(tools.len(), TOOLS.len(), "{listed}");
    for Tool {
        name,
        description,
        args,
        required,
    } in TOOLS
    {
        let tool = tools
            .iter()
            .find(|t| t["name"] == *name)
            .unwrap_or_else(|| panic!("no tool {name} in {listed}"));
        assert_eq!(tool["description"], *description, "{tool}");
        let schema = &tool["inputSchema"];
        assert_eq!(schema["type"], "object", "{tool}");
        assert_eq!(schema["additionalProperties"], false, "{tool}");
        let properties = schema["properties"].as_object().unwrap();
        let mut names: Vec<&str> = properties.keys().map(String::as_str).collect();
        let mut expected: Vec<&str> = args.iter().map(|(a, _)| *a).collect();
        names.sort_unstable();
        expected.sort_unstable();
        assert_eq!(names, expected, "{tool}");
        for (arg, text) in *args {
            let found = properties[*arg]["description"].as_str().unwrap_or_default();
            assert_eq!(found, *text, "{name}.{arg}: {tool}");
        }
        let mut found: Vec<&str> = schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| r.as_str().unwrap())
            .collect();
        let mut required = required.to_vec();
        found.sort_unstable();
        required.sort_unstable();
        assert_eq!(found, required, "{tool}");
    }
}

#[test]
fn arguments_outside_a_tool_s_schema_are_refused_with_what_to_do_instead() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut mcp = common::mcp::Mcp::start(&["--state-dir", state.to_str().unwrap()], None);
    let invalid = |(v, err): (serde_json::Value, bool), naming: &str| {
        assert!(err, "{v}");
        assert_eq!(v["error"]["code"], "invalid_request", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(naming), "{v}");
        assert!(
            v["error"]["instead"]
                .as_str()
                .unwrap()
                .contains("fix the arguments"),
            "{v}"
        );
    };
    // An argument no tool takes (a typo of `file`) is refused, not ignored.
    invalid(
        mcp.tool(
            "validate_policy",
            serde_json::json!({"policy": "service: x", "fiel": "rampart.yaml"}),
        ),
        "fiel",
    );
    invalid(mcp.tool("release_status", serde_json::json!({})), "release");
    invalid(
        mcp.tool("release_status", serde_json::json!({"release": ""})),
        "argument release is required",
    );
    invalid(
        mcp.tool(
            "release_events",
            serde_json::json!({"release": "r", "after": "soon"}),
        ),
        "soon",
    );
    // A tool that does not exist is a protocol error, not a tool's answer.
    let unknown = mcp.request(
        "tools/call",
        serde_json::json!({"name": "promote_release", "arguments": {}}),
    );
    assert_eq!(unknown["error"]["code"], -32602, "{unknown}");
}

#[test]
fn the_protocol_rules_are_the_sdk_s() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let args = ["--state-dir", state.to_str().unwrap()];
    // A version the server speaks is agreed to; any other gets the newest with a
    // handshake.
    let mut mcp = common::mcp::Mcp::start_asking(&args, None, "2024-11-05");
    assert_eq!(mcp.init["result"]["protocolVersion"], "2024-11-05");
    assert_eq!(
        mcp.init["result"]["capabilities"],
        serde_json::json!({"tools": {}, "resources": {}})
    );
    // A batch is not a message since protocol 2025-06-18: one Invalid Request answers it.
    mcp.send(r#"[{"jsonrpc": "2.0", "id": "b1", "method": "ping"}]"#);
    let batch = mcp.answer();
    assert_eq!(batch["error"]["code"], -32600, "{batch}");
    assert!(batch["id"].is_null(), "{batch}");
    // A line that is not JSON is not answered; the next request is.
    mcp.send("not json");
    let ping = mcp.request("ping", serde_json::json!({}));
    assert_eq!(ping["result"], serde_json::json!({}), "{ping}");
    // No prompts here.
    let prompts = mcp.request("prompts/list", serde_json::json!({}));
    assert_eq!(prompts["error"]["code"], -32601, "{prompts}");
    drop(mcp);

    let mut mcp = common::mcp::Mcp::start_asking(&args, None, "1999-01-01");
    assert_eq!(mcp.init["result"]["protocolVersion"], "2025-11-25");
    let listed = mcp.request("resources/list", serde_json::json!({}));
    assert_eq!(
        listed["result"]["resources"],
        serde_json::json!([]),
        "{listed}"
    );
    let missing = mcp.request(
        "resources/read",
        serde_json::json!({"uri": "rampart://policies/nothing"}),
    );
    assert_eq!(missing["error"]["code"], -32002, "{missing}");
    drop(mcp);

    // A client of 2026-07-28 has no handshake: it discovers the server and names the
    // version in every request.
    let mut mcp = common::mcp::Mcp::spawn(&args, None);
    let meta = serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "modern-test", "version": "1"},
        "io.modelcontextprotocol/clientCapabilities": {},
    });
    let found = mcp.request("server/discover", serde_json::json!({ "_meta": meta }));
    let versions = &found["result"]["supportedVersions"];
    assert!(
        versions.as_array().unwrap().contains(&"2026-07-28".into()),
        "{found}"
    );
    let status = mcp.request(
        "tools/call",
        serde_json::json!({"_meta": meta, "name": "release_status", "arguments": {"release": "nope"}}),
    );
    assert_eq!(status["result"]["isError"], true, "{status}");
    assert_eq!(
        status["result"]["structuredContent"]["error"]["code"], "not_found",
        "{status}"
    );
}
