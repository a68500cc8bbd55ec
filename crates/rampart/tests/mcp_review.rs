#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test
//! Adversarial review of `rampart mcp`: what one tool call of an agent can do to the
//! session. The client here reads the server's answers on a thread of its own, so a
//! server that stops answering fails the test at a deadline instead of hanging it.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long a request may go unanswered before the server counts as stuck (generous:
/// the answers below need no I/O beyond a refusal).
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

struct Session {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Session {
    fn start(args: &[&str]) -> Session {
        let mut child = common::rampart()
            .arg("mcp")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Session {
            stdin: child.stdin.take(),
            child,
            lines,
        };
        s.send(&json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "review", "version": "1"}}}));
        let init = s.answer_to(0).expect("the handshake is answered");
        assert_eq!(init["result"]["serverInfo"]["name"], "rampart", "{init}");
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        s
    }

    fn send(&mut self, msg: &Value) {
        let stdin = self.stdin.as_mut().unwrap();
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    }

    /// The answer to request `id`, or `None` when none came within [`ANSWER_WITHIN`].
    fn answer_to(&mut self, id: u64) -> Option<Value> {
        self.answers_to(&[id]).remove(&id)
    }

    /// The answers to requests `ids` that came within [`ANSWER_WITHIN`], by id.
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    fn answers_to(&mut self, ids: &[u64]) -> std::collections::HashMap<u64, Value> {
        let mut got = std::collections::HashMap::new();
        let deadline = Instant::now() + ANSWER_WITHIN;
        while got.len() < ids.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let v: Value = serde_json::from_str(&line).unwrap();
                    if let Some(id) = v["id"].as_u64().filter(|id| ids.contains(id)) {
                        got.insert(id, v);
                    }
                }
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        got
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent names a policy `file` that is not a regular file: `/dev/stdin` (a model
/// passing "read it from stdin"). The tool reads it with a blocking
/// `std::fs::read_to_string` on the server's async runtime, and `/dev/stdin` is the
/// protocol's own input: the call is never answered (the read lasts until the client
/// closes the session), a runtime thread is blocked meanwhile, and whatever lines the
/// read wins from the transport are swallowed as "the policy". The same happens with a FIFO, and `/dev/zero` grows the
/// server's memory until it is killed. A tool should refuse a path that is not a
/// regular file (and bound what it reads) and answer at once.
#[test]
fn a_policy_file_that_is_not_a_regular_file_is_refused_instead_of_hanging_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut s = Session::start(&["--state-dir", state.to_str().unwrap()]);
    s.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "validate_policy", "arguments": {"file": "/dev/stdin"}}}));
    // The session goes on: a ping sent after the call is answered...
    s.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping", "params": {}}));
    let mut got = s.answers_to(&[1, 2]);
    let pinged = got.remove(&2);
    // ...and the call itself is answered, with a refusal.
    let validated = got.remove(&1).unwrap_or_else(|| {
        panic!(
            "validate_policy {{file: /dev/stdin}} was not answered within {ANSWER_WITHIN:?} (the ping after it answered: {})",
            pinged.is_some()
        )
    });
    assert_eq!(validated["result"]["isError"], true, "{validated}");
    assert!(pinged.is_some(), "a ping after the call was not answered");
}

/// The MCP specification's stdio shutdown is: close stdin, then SIGTERM, then SIGKILL.
/// Without `--server`, `rampart mcp` runs a `rampart serve` of its own in-process,
/// whose SIGINT/SIGTERM handler takes the signal: that embedded server stops, but the
/// `rampart mcp` process goes on (every tool now answers `unreachable`) and never
/// revokes the session's agent token, which docs/agents.md says is "revoked when it
/// ends". A client that escalates to SIGKILL then leaves the token live in the store
/// for good. SIGTERM should end the session as closing stdin does: token revoked,
/// process gone.
#[test]
fn sigterm_ends_a_local_session_and_revokes_its_agent_token() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let mut s = Session::start(&["--state-dir", state_arg]);
    let tokens = || -> Vec<Value> {
        let out = common::rampart()
            .args([
                "token",
                "list",
                "--state-dir",
                state_arg,
                "--output",
                "json",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let session: Vec<Value> = tokens()
        .into_iter()
        .filter(|t| t["name"].as_str().unwrap().starts_with("mcp-agent-"))
        .collect();
    assert_eq!(session.len(), 1, "{session:?}");
    assert_eq!(session[0]["revoked"], false, "{session:?}");
    let name = session[0]["name"].clone();

    let term = std::process::Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = Instant::now() + ANSWER_WITHIN;
    #[allow(clippy::disallowed_methods)]
    let exited = loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let revoked = tokens()
        .into_iter()
        .find(|t| t["name"] == name)
        .map(|t| t["revoked"].clone());
    assert!(
        exited.is_some(),
        "rampart mcp was still running {ANSWER_WITHIN:?} after SIGTERM (its session token revoked: {revoked:?})"
    );
    assert_eq!(
        revoked,
        Some(Value::Bool(true)),
        "the session's token outlived it"
    );
}

/// The token list of the store in `state`, as `rampart token list` shows it.
fn token_list(state: &str) -> Vec<Value> {
    let out = common::rampart()
        .args(["token", "list", "--state-dir", state, "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Whether the token `name` is revoked.
fn revoked(tokens: &[Value], name: &Value) -> bool {
    let t = tokens.iter().find(|t| t["name"] == *name).unwrap();
    t["revoked"] == true
}

/// A local session killed with SIGKILL cannot revoke its agent token: it stayed live
/// for good, and a later session whose process got the same pid (`mcp-agent-PID`)
/// could not start ("a token named ... exists"). The next local session on the store
/// (which holds its lock, so no other local session runs) revokes what killed ones
/// left; a token a person named alike is theirs and stays.
#[test]
fn a_killed_sessions_token_is_revoked_by_the_next_session() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let state_arg = state.to_str().unwrap();
    let mut first = Session::start(&["--state-dir", state_arg]);
    let session_token = |tokens: &[Value]| -> Vec<Value> {
        tokens
            .iter()
            .filter(|t| {
                t["name"].as_str().unwrap().starts_with("mcp-agent-") && t["revoked"] == false
            })
            .map(|t| t["name"].clone())
            .collect()
    };
    let killed = session_token(&token_list(state_arg));
    assert_eq!(killed.len(), 1, "{killed:?}");
    first.child.kill().unwrap();
    first.child.wait().unwrap();
    drop(first);
    let out = common::rampart()
        .args([
            "token",
            "create",
            "--role",
            "viewer",
            "--name",
            "mcp-agent-dashboard",
            "--state-dir",
            state_arg,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !revoked(&token_list(state_arg), &killed[0]),
        "a SIGKILL cannot revoke: the test would prove nothing"
    );

    let _second = Session::start(&["--state-dir", state_arg]);
    let tokens = token_list(state_arg);
    assert!(
        revoked(&tokens, &killed[0]),
        "the killed session's token is still live: {tokens:?}"
    );
    assert!(!revoked(&tokens, &Value::from("mcp-agent-dashboard")));
    let live = session_token(&tokens);
    assert_eq!(
        live.len(),
        2,
        "the new session's and the person's: {live:?}"
    );
}
