#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the local process deployer across controllers: a replica in
//! rotation is taken out of it (drained) before it is stopped, never stopped while
//! users are still sent to it. Real processes (Debian's python3) on loopback.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::processes::{alive, spec};
use rampart_adapters::process::{ProcessDeployer, ProcessRecord};
use rampart_core::Variant;
use rampart_core::ports::Deployer;

/// A python3 HTTP server on the port given as its argument: every path answers 200,
/// except `/ready` while a file `unready-PORT` exists in its directory (503): a
/// replica whose readiness probe fails while it serves its users.
const FLAPPING: &str = r#"
import http.server, os, sys
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        bad = self.path == '/ready' and os.path.exists('unready-%d' % port)
        self.send_response(503 if bad else 200)
        self.send_header('content-length', '2')
        self.end_headers()
        self.wfile.write(b'ok')
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('127.0.0.1', port), H).serve_forever()
"#;

fn records(state: &std::path::Path, variant: &str) -> Vec<ProcessRecord> {
    std::fs::read_to_string(state.join(format!("processes/svc.{variant}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Contract: docs/dataplane.md "What survives what" (a controller restarted: users see
/// nothing) and the deployer's own rule for replicas it replaces (`scale_inner`:
/// "replaced once the new ones are ready, reported retired ... for the caller to take
/// out of rotation and drain before it trims them").
///
/// A controller restarts while stable's replica, in rotation and serving its users,
/// fails its readiness probe (a dependency's health check, a slow `/ready`). The new
/// controller's `deploy(stable)` adopts it only if it answers within the readiness
/// timeout; otherwise `load` (process/mod.rs, the `else { notes.push(self.terminate(..)) }`
/// branch) SIGTERMs it at once, and only then starts its replacement, which takes its
/// own start-up time. The data plane still routes to the old replica until the deploy
/// returns and the controller sets the new backends, so every request in that time is
/// refused (a 502 from the data plane). Expected: the unready replica is kept running,
/// reported `retired`, until its replacement is ready (as a replica of another version
/// is), so that the caller drains it and no request fails. Observed: it is gone before
/// the deploy returns, and requests to it were refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_replica_that_fails_its_probe_serves_until_its_replacement_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(
        &["python3", "-c", FLAPPING, "{port}"],
        Duration::from_secs(2),
    );
    s.readiness.http = Some("/ready".into());
    let first = ProcessDeployer::new("svc", s.clone(), dir.path(), dir.path());
    let d = first.deploy(Variant::Stable, "v1").await.unwrap();
    let old = d.endpoints[0];
    let pid = records(dir.path(), "stable")[0].pid;
    // The controller dies; the replica's probe starts failing, while it serves.
    drop(first);
    std::fs::write(dir.path().join(format!("unready-{}", old.port())), "").unwrap();

    // What the data plane sends the old replica meanwhile: a request every 10 ms.
    let stop = Arc::new(AtomicBool::new(false));
    let (sent, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let client = {
        let (stop, sent, refused) = (stop.clone(), sent.clone(), refused.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                sent.fetch_add(1, Ordering::SeqCst);
                let url = format!("http://{old}/");
                if rampart_adapters::http::get_status(&url, Duration::from_secs(2))
                    .await
                    .is_err()
                {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    let second = ProcessDeployer::new("svc", s, dir.path(), dir.path());
    let d = second.deploy(Variant::Stable, "v1").await.unwrap();
    stop.store(true, Ordering::SeqCst);
    client.await.unwrap();
    let still = alive(pid);
    // The two run side by side until the old one is trimmed: each its own index (and
    // log files).
    let indexes: Vec<Option<String>> = records(dir.path(), "stable")
        .iter()
        .map(|r| env_of(r.pid, "RAMPART_REPLICA"))
        .collect();
    assert_eq!(indexes.len(), 2, "{indexes:?}");
    assert_ne!(indexes[0], indexes[1], "{indexes:?}");
    let (sent, refused) = (sent.load(Ordering::SeqCst), refused.load(Ordering::SeqCst));
    let _ = second.stop(Variant::Stable).await;
    assert!(
        still && d.retired.contains(&old) && refused == 0,
        "the replica users were on (pid {pid}, {old}) was stopped before its replacement was ready: alive when the deploy returned: {still}, retired: {:?}, requests refused meanwhile: {refused} of {sent} ({})",
        d.retired,
        d.detail
    );
}

/// The value of `name` in the environment of process `pid`.
fn env_of(pid: u32, name: &str) -> Option<String> {
    let env = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    env.split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(prefix.as_bytes()))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Contract: each replica has its own index (`RAMPART_REPLICA`, in its environment)
/// and its own log files (docs/operations.md "Where things are": replica 0 has no
/// index in its file name, `ProcessDeployer::log_paths`).
///
/// With two replicas, replica 0 crashes; the next `deploy` (a resumed release, or
/// `serve`'s supervisor) replaces it, but `scale_inner` numbers the new replica
/// `set.list.len()`, the count of survivors (1), not the free index (0): two live
/// replicas then both run with `RAMPART_REPLICA=1` and append to the same
/// `v1-stable-1.*.log`, and a start failure's message quotes the other replica's
/// stderr. Expected: the replacement is replica 0 again. Observed: both are 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_replica_takes_the_index_of_the_one_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = common::processes::server_spec();
    s.replicas = 2;
    let d = ProcessDeployer::new("svc", s, dir.path(), dir.path());
    d.deploy(Variant::Stable, "v1").await.unwrap();
    let first = records(dir.path(), "stable");
    assert_eq!(first.len(), 2, "{first:?}");
    assert_eq!(
        env_of(first[0].pid, "RAMPART_REPLICA").as_deref(),
        Some("0")
    );
    // Replica 0 crashes.
    common::servers::kill_group(first[0].pid);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while alive(first[0].pid) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "pid {} lives on",
            first[0].pid
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    d.deploy(Variant::Stable, "v1").await.unwrap();
    let now = records(dir.path(), "stable");
    let mut indexes: Vec<Option<String>> = now
        .iter()
        .map(|r| env_of(r.pid, "RAMPART_REPLICA"))
        .collect();
    indexes.sort();
    let _ = d.stop(Variant::Stable).await;
    assert_eq!(
        indexes,
        [Some("0".to_string()), Some("1".to_string())],
        "the two live replicas' RAMPART_REPLICA (records: {now:?})"
    );
}
