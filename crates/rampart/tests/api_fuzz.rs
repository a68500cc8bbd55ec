//! Fuzzes the API from its OpenAPI document with schemathesis (from PyPI): no answer
//! is a 5xx, every status code, content type and JSON body is the documented one, and
//! the server never panics. `scripts/test.sh` installs schemathesis into a virtual
//! environment and names it in `RAMPART_SCHEMATHESIS`.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::process::Stdio;

use common::serve::{Server, until};
use common::{free_port, rampart};

#[test]
fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let schemathesis =
        std::env::var("RAMPART_SCHEMATHESIS").unwrap_or_else(|_| "schemathesis".into());
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("serve.log");
    let port = free_port();
    let mut child = rampart()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--state-dir",
        ])
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    until("the server", std::time::Duration::from_secs(20), || {
        common::serve::call(&url, "GET", "/healthz", None, None).0 == 200
    });
    // The token routes are fuzzed too, except revoking: the fuzzer would revoke its own
    // token (the role test covers revocation).
    let token = Server::token_in(&state, "admin", "fuzzer");
    let out = std::process::Command::new(&schemathesis)
        .args(["run", &format!("{url}/openapi.json"), "-H"])
        .arg(format!("Authorization: Bearer {token}"))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
            "--exclude-path",
            "/api/v1/stream",
            "--exclude-path",
            "/api/v1/tokens/{name}",
            "--max-time",
            "45",
            "--workers",
            "2",
            "--seed",
            "7",
        ])
        .env("NO_COLOR", "1")
        // It keeps a cache in its working directory: the test's, not the source tree.
        .current_dir(dir.path())
        .output()
        .unwrap_or_else(|e| {
            panic!("{schemathesis}: {e}; install it with `pip install schemathesis` (scripts/test.sh does) or set RAMPART_SCHEMATHESIS")
        });
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("passed"), "{report}");
    // Still up, and nothing panicked.
    assert_eq!(
        common::serve::call(&url, "GET", "/healthz", None, None).0,
        200
    );
    let _ = child.kill();
    let _ = child.wait();
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(!logged.contains("panicked"), "{logged}");
}
