//! A user's own service, written in Python (Debian's python3), started from the policy's
//! command line and released with `rampart run`: the example shipped in the docs.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;

use common::{free_port, release_json, repo};

/// Copies the example into a temporary directory with a free port and short bakes,
/// lets `prepare` adjust it, and releases v2 over v1 under load.
fn release(prepare: impl FnOnce(&Path, String) -> String) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let text =
        std::fs::read_to_string(repo().join("examples/python-service/rampart.yaml")).unwrap();
    let text = text
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{port}"))
        .replace("bake: 10s", "bake: 3s");
    std::fs::copy(
        repo().join("examples/python-service/app.py"),
        dir.path().join("app.py"),
    )
    .unwrap();
    let text = prepare(dir.path(), text);
    let policy = dir.path().join("rampart.yaml");
    std::fs::write(&policy, text).unwrap();
    release_json(&policy, port, 150)
}

#[test]
fn python_service_is_released_and_promoted() {
    let (code, v) = release(|_, text| text);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["outcome"], "promoted");
    assert!(v["requests"]["canary"].as_u64().unwrap() > 0);
}

#[test]
fn failing_python_release_is_rolled_back() {
    // Each version is its own directory, as with real artifacts; v2 fails every 10th
    // request.
    let (code, v) = release(|dir, text| {
        let app = std::fs::read_to_string(dir.join("app.py")).unwrap();
        for (version, every) in [("v1", "0"), ("v2", "10")] {
            std::fs::create_dir_all(dir.join(version)).unwrap();
            let code = app.replace(
                "os.environ.get(\"APP_ERROR_EVERY\", \"0\")",
                &format!("\"{every}\""),
            );
            std::fs::write(dir.join(version).join("app.py"), code).unwrap();
        }
        text.replace("\"app.py\"", "\"{version}/app.py\"")
    });
    assert_eq!(code, 3, "{v}");
    assert_eq!(v["outcome"], "rolled_back");
    assert!(
        v["reason"].as_str().unwrap().contains("error-rate"),
        "{}",
        v["reason"]
    );
}
