//! The operator commands without a server (on the local state directory), their exit
//! codes, and shell completions.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::rampart;

fn run(args: &[&str], state: &std::path::Path) -> (i32, String) {
    let out = rampart()
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .env_remove("RAMPART_SERVER")
        .env_remove("RAMPART_TOKEN")
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn local_operator_commands_keep_their_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (code, out) = run(&["list", "--output", "json"], &state);
    assert_eq!((code, out.trim()), (0, "[]"));
    let (code, out) = run(&["status", "nothing", "--output", "json"], &state);
    assert_eq!(code, 5, "unknown release");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    assert_eq!(
        run(&["approve", "nothing"], &state).0,
        2,
        "approve needs --as locally"
    );
    assert_eq!(run(&["approve", "nothing", "--as", "bob"], &state).0, 5);
    assert_eq!(run(&["pause", "nothing", "--as", "bob"], &state).0, 5);
    let (code, out) = run(
        &[
            "freeze", "on", "--reason", "sale", "--as", "carol", "--output", "json",
        ],
        &state,
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["freezes"][0]["actor"], "carol");
    let out = rampart()
        .args(["list", "--server", "http://127.0.0.1:9"])
        .env_remove("RAMPART_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a server needs a token");
}

#[test]
fn completions_cover_every_command_in_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = rampart().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        let script = String::from_utf8(out.stdout).unwrap();
        for command in [
            "serve", "approve", "promote", "pause", "resume", "abort", "freeze", "status",
            "events", "token",
        ] {
            assert!(script.contains(command), "{shell} lacks {command}");
        }
    }
    let out = rampart().args(["completions", "bash"]).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rampart.bash");
    std::fs::write(&file, out.stdout).unwrap();
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&file)
        .status()
        .unwrap();
    assert!(check.success(), "the bash script parses");
}
