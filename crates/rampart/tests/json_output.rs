//! `--output json` everywhere (docs/json.md): every command a person runs for an answer
//! takes it, and the local ones print exactly one JSON value on stdout with the
//! documented fields.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::{rampart, repo};
use serde_json::Value;

const COMMANDS: &[&[&str]] = &[
    &["run"],
    &["rollback"],
    &["approve"],
    &["promote"],
    &["pause"],
    &["resume"],
    &["abort"],
    &["status"],
    &["list"],
    &["events"],
    &["freeze"],
    &["token", "create"],
    &["token", "list"],
    &["token", "revoke"],
    &["audit", "verify"],
    &["flags", "list"],
    &["flags", "get"],
    &["flags", "set"],
    &["windows"],
    &["validate"],
    &["import", "argo"],
    &["demo"],
    &["replay"],
    &["gameday"],
    &["runbook"],
    &["skill"],
    &["migrations", "check"],
    &["bench", "decisions"],
    &["bench", "controller"],
    &["load"],
];

#[test]
fn every_command_with_an_answer_takes_output_json() {
    for cmd in COMMANDS {
        let out = rampart().args(*cmd).arg("--help").output().unwrap();
        let help = String::from_utf8_lossy(&out.stdout);
        assert!(
            help.contains("--output"),
            "rampart {} has no --output",
            cmd.join(" ")
        );
    }
}

fn json(args: &[&str], state: &std::path::Path) -> Value {
    let out = rampart()
        .current_dir(repo())
        .args(args)
        .args(["--output", "json"])
        .env("RAMPART_STATE_DIR", state)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.trim().lines().count(), 1, "{args:?}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

fn has(v: &Value, fields: &[&str], what: &str) {
    for f in fields {
        assert!(v.get(f).is_some(), "{what}: no {f} in {v}");
    }
}

#[test]
fn local_commands_print_one_json_object_with_the_documented_fields() {
    let dir = tempfile::tempdir().unwrap();
    let st = dir.path();
    let p = "examples/rampart.yaml";
    has(
        &json(&["validate", "-f", p], st),
        &["valid", "file", "service", "diagnostics"],
        "validate",
    );
    has(
        &json(&["runbook", "-f", p], st),
        &["service", "version", "runbook"],
        "runbook",
    );
    has(
        &json(&["skill", "-f", p], st),
        &["service", "path", "skill"],
        "skill",
    );
    has(
        &json(&["windows", "-f", p], st),
        &["open", "why", "windows"],
        "windows",
    );
    has(
        &json(&["token", "create", "--role", "agent", "--name", "bot"], st),
        &["name", "role", "token"],
        "token create",
    );
    assert!(json(&["token", "list"], st).is_array());
    has(
        &json(&["token", "revoke", "bot"], st),
        &["name", "revoked"],
        "token revoke",
    );
    has(
        &json(&["audit", "verify"], st),
        &["ok", "records", "log_entries", "head", "problems"],
        "audit",
    );
    has(
        &json(&["freeze", "on", "--reason", "r", "--as", "me"], st),
        &["freezes"],
        "freeze",
    );
    let f = "examples/flag-release.yaml";
    let flags = json(&["flags", "list", "-f", f], st);
    has(&flags, &["service", "flags"], "flags list");
    let name = flags["flags"][0]["name"].as_str().unwrap().to_string();
    has(
        &json(
            &[
                "flags", "set", &name, "-f", f, "--ramp", "5", "--reason", "r", "--as", "me",
            ],
            st,
        ),
        &["service", "flag"],
        "flags set",
    );
    has(
        &json(&["flags", "get", &name, "-f", f], st),
        &["name", "on", "reason"],
        "flags get",
    );
}
