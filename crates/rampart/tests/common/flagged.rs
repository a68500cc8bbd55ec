//! A service whose flag `new-checkout` (allowlist `qa-1`) a release ramps, behind the
//! embedded proxy stuck by `x-user`, and what its store says: the flag's ramp, its
//! audited changes, and the release log as a crash at a chosen entry leaves it.

use std::path::{Path, PathBuf};

use super::{free_port, rampart};

/// Writes the service's policy, its flag ramped by `strategy`, in `dir`: the policy's
/// path and the proxy's port.
pub fn policy(dir: &Path, strategy: &str) -> (PathBuf, u16) {
    let (port, flag_port) = (free_port(), free_port());
    let text = format!(
        r#"service: flagged
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env:
      SAMPLE_ERROR_RATE: "0"
      SAMPLE_LATENCY_MS: "1"
      SAMPLE_FLAG_URL: "http://127.0.0.1:{flag_port}/flags/new-checkout"
      SAMPLE_FLAG_KEY_HEADER: x-user
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}}}
flags:
  listen: "127.0.0.1:{flag_port}"
  define:
    - {{name: new-checkout, default: false, allow: [qa-1]}}
strategy: {strategy}
analysis:
  interval: 1s
  min_samples: 10
  failure_limit: 2
  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]
"#,
        exe = super::exe()
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    (path, port)
}

/// `rampart flags ARGS --state-dir STATE -f POLICY`: exit code, stdout, stderr.
pub fn flags(path: &Path, args: &[&str]) -> (i32, String, String) {
    let out = rampart()
        .arg("flags")
        .args(args)
        .arg("--state-dir")
        .arg(path.parent().unwrap().join("state"))
        .arg("-f")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn db(path: &Path) -> PathBuf {
    path.parent().unwrap().join("state/rampart.db")
}

/// The flag's ramp in basis points, from the store.
pub fn ramp_bp(path: &Path) -> Option<i64> {
    let conn = rusqlite::Connection::open(db(path)).ok()?;
    conn.query_row(
        "SELECT ramp_bp FROM flags WHERE service = 'flagged' AND name = 'new-checkout'",
        [],
        |r| r.get(0),
    )
    .ok()
}

/// Every `flag_set` audit record: (actor, detail), oldest first.
pub fn flag_audit(path: &Path) -> Vec<(String, String)> {
    let conn = rusqlite::Connection::open(db(path)).unwrap();
    let mut stmt = conn
        .prepare("SELECT actor, detail FROM audit WHERE kind = 'flag_set' ORDER BY id")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Every logged `traffic_set` of the state directory's releases: (seq, weight in %).
pub fn traffic_sets(db: &Path) -> Vec<(i64, f64)> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT seq, input FROM events ORDER BY seq")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .filter_map(|(seq, text)| {
            let input: serde_json::Value = serde_json::from_str(&text).unwrap();
            (input.get("type")?.as_str()? == "traffic_set")
                .then(|| Some((seq, input.get("weight")?.as_f64()?)))?
        })
        .collect()
}

/// The log and its audit chain as a crash before entry `seq` leaves them: that entry
/// and everything after it never written (the chain's tail too, so it stays whole).
pub fn forget_from(db: &Path, seq: i64) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let deleted = conn
        .execute(
            "DELETE FROM chain WHERE id >= (SELECT id FROM chain WHERE seq = ?1 AND release_id IS NOT NULL)",
            [seq],
        )
        .unwrap();
    assert!(deleted > 0, "entry {seq} has no chain record");
    conn.execute("DELETE FROM events WHERE seq >= ?1", [seq])
        .unwrap();
}
