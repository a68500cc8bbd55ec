//! `rampart mcp` driven over its stdio protocol by the tests, one JSON-RPC message a
//! line: enough of a client to check the server's answers (the end-to-end test uses the
//! Python MCP SDK instead).

#![allow(clippy::unwrap_used, dead_code)] // a failed unwrap is a failed test

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};

use serde_json::{Value, json};

use super::rampart;

/// `rampart mcp` as a child, one JSON-RPC message a line.
pub struct Mcp {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
    next: u64,
    /// The answer to `initialize`.
    pub init: Value,
}

impl Mcp {
    /// Starts `rampart mcp ARGS` (with `RAMPART_TOKEN`, if given) and does the
    /// handshake.
    pub fn start(args: &[&str], token: Option<&str>) -> Mcp {
        Mcp::start_asking(args, token, "2025-06-18")
    }

    /// `start`, asking for protocol version `version` in the handshake.
    pub fn start_asking(args: &[&str], token: Option<&str>, version: &str) -> Mcp {
        let mut mcp = Mcp::spawn(args, token);
        let init = mcp.request(
            "initialize",
            json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "guard-test", "version": "1"}}),
        );
        assert_eq!(init["result"]["serverInfo"]["name"], "rampart", "{init}");
        mcp.init = init;
        mcp.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string());
        mcp
    }

    /// Starts `rampart mcp ARGS` without a handshake.
    pub fn spawn(args: &[&str], token: Option<&str>) -> Mcp {
        let mut cmd = rampart();
        cmd.arg("mcp").args(args);
        if let Some(t) = token {
            cmd.env("RAMPART_TOKEN", t);
        }
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        Mcp {
            stdin: child.stdin.take(),
            stdout: BufReader::new(child.stdout.take().unwrap()),
            child,
            next: 0,
            init: Value::Null,
        }
    }

    /// Writes one line as it is.
    pub fn send(&mut self, line: &str) {
        writeln!(self.stdin.as_mut().unwrap(), "{line}").unwrap();
    }

    /// Reads the next message.
    pub fn answer(&mut self) -> Value {
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    pub fn request(&mut self, method: &str, params: Value) -> Value {
        self.next += 1;
        let msg = json!({"jsonrpc": "2.0", "id": self.next, "method": method, "params": params});
        self.send(&msg.to_string());
        let answer = self.answer();
        assert_eq!(answer["id"], self.next, "{answer}");
        answer
    }

    /// A tool's structured result and whether it is an error.
    pub fn tool(&mut self, name: &str, args: Value) -> (Value, bool) {
        let a = self.request("tools/call", json!({"name": name, "arguments": args}));
        let r = &a["result"];
        (
            r["structuredContent"].clone(),
            r["isError"].as_bool().unwrap(),
        )
    }
}

impl Drop for Mcp {
    /// Closes stdin, the end of a session, and waits for the server to finish (killing
    /// it after ten seconds).
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..200 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
