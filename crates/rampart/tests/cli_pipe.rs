//! Output into a pipe whose reader has gone (`rampart ... | head`): the command ends
//! quietly with 141, as a Unix tool stopped by SIGPIPE, never with a panic.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use common::rampart;

/// Runs `rampart args` with its output into a pipe already closed at the other end:
/// its exit code and what it said on stderr.
fn into_a_closed_pipe(args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = rampart()
        .args(args)
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_command_whose_output_pipe_closed_ends_quietly_with_141() {
    let policy = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/rampart.yaml");
    for args in [
        &["completions", "bash"][..],
        &["validate", "-f", policy],
        &["runbook", "-f", policy],
        &["skill", "-f", policy],
    ] {
        let (code, stderr) = into_a_closed_pipe(args);
        assert_eq!(code, Some(141), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}
