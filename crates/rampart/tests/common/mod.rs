//! Helpers shared by the integration tests: the built binary, free ports, load.

#![allow(clippy::unwrap_used, dead_code)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

pub mod flagged;
pub mod mcp;
pub mod serve;
#[path = "../../../adapters/tests/common/servers.rs"]
pub mod servers;
pub mod svc;

use rampart::load::{LoadSpec, LoadStats, generate};

/// The `rampart` binary under test.
pub fn rampart() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rampart"))
}

/// Path of the binary, for policies that run the bundled sample service.
pub fn exe() -> String {
    env!("CARGO_BIN_EXE_rampart").to_string()
}

/// The data plane tests' service (`dataplane.rs`, `dataplane_review.rs`): two short
/// steps judged every second on the error rate, versions run by `command` (a JSON
/// list; [`sample_service`] is the bundled sample service), behind the embedded proxy
/// on `port`.
pub fn plane_policy(service: &str, port: u16, command: &str) -> String {
    format!(
        r#"service: {service}
deploy:
  process:
    command: {command}
    env: {{SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "2"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic:
  proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}
strategy:
  canary:
    steps: [{{weight: 20, bake: 2s}}, {{weight: 50, bake: 2s}}]
analysis:
  interval: 1s
  min_samples: 1
  no_data: {{limit: 1000, action: halt}}
  inconclusive: {{limit: 1000, action: halt}}
  metrics:
    - metric: error_rate
      judge: {{max: 5%}}
"#
    )
}

/// The bundled sample service as a policy's `command`.
pub fn sample_service() -> String {
    format!(
        r#"[{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]"#,
        exe = exe()
    )
}

/// Stops, when dropped, every version process a `rampart` under test recorded in the
/// state directory it holds: what a `rampart` killed mid-release, or a failed test,
/// would otherwise leave running. Hold one from before the first `rampart run`.
pub struct Versions(pub PathBuf);

impl Drop for Versions {
    fn drop(&mut self) {
        stop_versions(&self.0);
    }
}

/// SIGKILL to the process group of every version recorded in `state/processes/`
/// (each version leads a group of its own), and of every data plane whose lock is in
/// `state/dataplane/`. Only a pid that still carries rampart's `RAMPART_SERVICE` or
/// `RAMPART_DATAPLANE` mark is signalled, so a recycled pid is never touched.
pub fn stop_versions(state: &Path) {
    stop_data_planes(state);
    let records = std::fs::read_dir(state.join("processes"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .filter_map(|text| serde_json::from_str::<Vec<serde_json::Value>>(&text).ok());
    for pid in records.flatten().filter_map(|r| r["pid"].as_u64()) {
        let marked = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|e| e.starts_with(b"RAMPART_SERVICE="))
        });
        if marked && let Ok(pgid) = u32::try_from(pid) {
            eprintln!("stopping version process group {pgid}, left running");
            servers::kill_group(pgid);
        }
    }
}

/// SIGKILL to every data plane recorded in `state/dataplane/*.lock` that still runs.
pub fn stop_data_planes(state: &Path) {
    let pids = std::fs::read_dir(state.join("dataplane"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|f| f.path().extension().is_some_and(|e| e == "lock"))
        .filter_map(|f| std::fs::read_to_string(f.path()).ok())
        .filter_map(|t| t.trim().parse::<u32>().ok());
    for pid in pids {
        let marked = std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
            env.split(|b| *b == 0)
                .any(|e| e.starts_with(b"RAMPART_DATAPLANE="))
        });
        if marked {
            eprintln!("stopping data plane {pid}, left running");
            servers::kill_group(pid);
        }
    }
}

/// A port nothing listens on right now, outside the range `bind(0)` takes from
/// (see [`servers::free_port`]).
pub fn free_port() -> u16 {
    servers::free_port()
}

/// The directory of test data files.
pub fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Starts steady load against `127.0.0.1:port` with sticky user ids in `x-user`.
pub fn start_load(
    rt: &tokio::runtime::Runtime,
    port: u16,
    rps: u32,
) -> (tokio::task::JoinHandle<()>, Arc<LoadStats>) {
    let stats = Arc::new(LoadStats::default());
    let spec = LoadSpec {
        url: format!("http://127.0.0.1:{port}/"),
        rps,
        user_header: Some("x-user".into()),
        users: 1000,
        duration: None,
        paths: Vec::new(),
        headers: Vec::new(),
        // Every request sent is counted once the load stops (see `settle`).
        cut_on_stop: false,
    };
    (rt.spawn(generate(spec, stats.clone())), stats)
}

/// A multi-threaded runtime for background load.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The exit code and the JSON report of a finished `rampart run --output json`.
#[allow(dead_code)] // not every test binary reads a report this way
pub fn report(out: &std::process::Output) -> (i32, serde_json::Value) {
    let code = out.status.code().unwrap_or(-1);
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "no JSON report (exit {code}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (code, v)
}

/// `rampart run --version VERSION [--stable STABLE] --output json` on `policy`, its
/// state in `state`.
pub fn run_json(
    policy: &std::path::Path,
    state: &std::path::Path,
    version: &str,
    stable: Option<&str>,
) -> Command {
    let mut c = rampart();
    c.args(["run", "--version", version, "--output", "json"]);
    if let Some(stable) = stable {
        c.args(["--stable", stable]);
    }
    c.arg("--state-dir").arg(state).arg("-f").arg(policy);
    c
}

/// `rampart run --version v2 --stable v1 --output json` on `policy` (state next to it),
/// with steady load on `port` while it runs; returns the exit code and the report.
pub fn release_json(policy: &std::path::Path, port: u16, rps: u32) -> (i32, serde_json::Value) {
    release_json_with(policy, port, rps, &[])
}

/// [`release_json`] with extra `rampart run` arguments.
pub fn release_json_with(
    policy: &std::path::Path,
    port: u16,
    rps: u32,
    extra: &[&str],
) -> (i32, serde_json::Value) {
    let state = policy.parent().unwrap().join("state");
    let _versions = Versions(state.clone());
    let rt = runtime();
    let (load, _) = start_load(&rt, port, rps);
    let out = run_json(policy, &state, "v2", Some("v1"))
        .arg("--stop-after")
        .args(extra)
        .output()
        .unwrap();
    load.abort();
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

/// A quiet service (`analysis_load.rs`, `analysis_review3.rs`): v2 fails `v2_errors` of its requests; `load` is the
/// `analysis.load` block (empty for none).
pub fn quiet_policy(dir: &std::path::Path, v2_errors: &str, load: &str) -> std::path::PathBuf {
    let text = format!(
        r#"service: quiet
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "v1=0,v2={v2_errors}", SAMPLE_LATENCY_MS: "1"}}
    readiness: {{http: /healthz, timeout: 10s, period: 50ms}}
    stop_timeout: 2s
traffic:
  proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}
strategy:
  canary:
    steps:
      - {{weight: 20, bake: 2s}}
      - {{weight: 50, bake: 2s}}
analysis:
  interval: 1s
  min_samples: 10
  no_data: {{limit: 2, action: halt}}
{load}  metrics:
    - {{name: errors, metric: error_rate, judge: sequential}}
"#,
        exe = exe(),
        port = free_port(),
    );
    let path = dir.join("rampart.yaml");
    std::fs::write(&path, text).unwrap();
    path
}
