//! The local process deployer with real processes (Debian's python3 as the service):
//! readiness, early exits, timeouts, graceful and forced stops, and adoption of a
//! process left behind by an earlier controller.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::time::Duration;

use common::processes::{SERVER, alive, processes_of, server_spec, spec};
use rampart_adapters::process::{ProcessDeployer, ProcessRecord};
use rampart_core::Variant;
use rampart_core::ports::Deployer;

fn records(state: &Path, variant: &str) -> Vec<ProcessRecord> {
    std::fs::read_to_string(state.join(format!("processes/svc.{variant}.json")))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn record(state: &Path, variant: &str) -> Option<ProcessRecord> {
    records(state, variant).into_iter().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_probes_and_stops_a_process() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    let dep = d.deploy(Variant::Canary, "v2").await.unwrap();
    assert!(dep.detail.contains("started"), "{}", dep.detail);
    let rec = record(dir.path(), "canary").unwrap();
    assert_eq!(dep.endpoints[0].port(), rec.port);
    assert!(alive(rec.pid));
    d.verify(Variant::Canary, Duration::from_secs(5))
        .await
        .unwrap();
    // Deploying the same version again is idempotent.
    let again = d.deploy(Variant::Canary, "v2").await.unwrap();
    assert!(again.detail.contains("already running"), "{}", again.detail);
    let stopped = d.stop(Variant::Canary).await.unwrap();
    assert!(stopped.contains("stopped"), "{stopped}");
    assert!(!alive(rec.pid));
    assert!(record(dir.path(), "canary").is_none());
    // Stopping again is fine.
    assert_eq!(d.stop(Variant::Canary).await.unwrap(), "not running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_exits_early_fails_fast_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(
        &[
            "sh",
            "-c",
            "echo 'missing config file' >&2; exit 3",
            "{port}",
        ],
        Duration::from_secs(60),
    );
    let d = ProcessDeployer::new("svc", s, dir.path(), dir.path());
    let err = d.deploy(Variant::Canary, "v2").await.unwrap_err();
    assert!(
        err.0.contains("before becoming ready") && err.0.contains("missing config file"),
        "{err}"
    );
    assert!(record(dir.path(), "canary").is_none());
    let (_, stderr) = d.log_paths(Variant::Canary, "v2", 0);
    assert!(
        std::fs::read_to_string(stderr)
            .unwrap()
            .contains("missing config file")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_never_gets_ready_is_killed_at_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(&["sleep", "60", "{port}"], Duration::from_millis(400));
    let d = ProcessDeployer::new("svc", s, dir.path(), dir.path());
    let err = d.deploy(Variant::Canary, "v2").await.unwrap_err();
    assert!(err.0.contains("not ready after"), "{err}");
    assert!(record(dir.path(), "canary").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_ignoring_sigterm_is_killed_after_stop_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let code = format!("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); {SERVER}");
    let d = ProcessDeployer::new(
        "svc",
        spec(&["python3", "-c", &code, "{port}"], Duration::from_secs(20)),
        dir.path(),
        dir.path(),
    );
    d.deploy(Variant::Stable, "v1").await.unwrap();
    let pid = record(dir.path(), "stable").unwrap().pid;
    let stopped = d.stop(Variant::Stable).await.unwrap();
    assert!(stopped.contains("was killed"), "{stopped}");
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_controller_adopts_a_ready_process_of_the_same_version() {
    let dir = tempfile::tempdir().unwrap();
    let first = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    first.deploy(Variant::Stable, "v1").await.unwrap();
    let pid = record(dir.path(), "stable").unwrap().pid;
    drop(first); // the controller "dies"; its child keeps running

    let second = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    let dep = second.deploy(Variant::Stable, "v1").await.unwrap();
    assert!(dep.detail.contains("adopted"), "{}", dep.detail);
    assert_eq!(
        record(dir.path(), "stable").unwrap().pid,
        pid,
        "no second copy"
    );
    second.stop(Variant::Stable).await.unwrap();
    assert!(!alive(pid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_process_of_another_version_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let first = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    first.deploy(Variant::Canary, "v2").await.unwrap();
    let old = record(dir.path(), "canary").unwrap().pid;
    drop(first);
    let second = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    let dep = second.deploy(Variant::Canary, "v3").await.unwrap();
    assert!(dep.detail.contains("started"), "{}", dep.detail);
    // The v2 that answers may still be in rotation: reported retired, running, for
    // the caller to take out of rotation and drain first; then trimmed.
    assert_eq!(dep.retired.len(), 1, "{dep:?}");
    assert!(alive(old), "the stale v2 was stopped while it may serve");
    second.trim(Variant::Canary, 1).await.unwrap();
    assert!(!alive(old), "the stale v2 was stopped");
    second.stop(Variant::Canary).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_pid_that_is_not_ours_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    // Point the record at this test process: it lacks the RAMPART_* marks.
    let me = std::process::id();
    std::fs::create_dir_all(dir.path().join("processes")).unwrap();
    std::fs::write(
        dir.path().join("processes/svc.canary.json"),
        serde_json::to_string(&ProcessRecord {
            version: "v2".into(),
            pid: me,
            port: 1,
            started: None,
            replica: None,
        })
        .unwrap(),
    )
    .unwrap();
    let d = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    assert_eq!(d.stop(Variant::Canary).await.unwrap(), "not running");
    assert!(alive(me));
}

/// Regression (issue 16 review): a process was recognised by the marks in its
/// environment, so a service that rewrites it (process-title libraries overwrite that
/// memory; here `env -i` execs the server with an empty one, under the same pid)
/// looked exited to the next controller, which started a second copy beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_rewrote_its_environment_is_still_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let spec = || {
        let mut s = server_spec();
        s.command
            .splice(0..0, ["env".to_string(), "-i".to_string()]);
        s
    };
    let first = ProcessDeployer::new("svc", spec(), dir.path(), dir.path());
    first.deploy(Variant::Stable, "v1").await.unwrap();
    let rec = record(dir.path(), "stable").unwrap();
    assert!(rec.started.is_some(), "{rec:?}");
    let environ = std::fs::read(format!("/proc/{}/environ", rec.pid)).unwrap();
    assert!(
        environ.is_empty(),
        "the server runs with an empty environment"
    );
    drop(first);

    let second = ProcessDeployer::new("svc", spec(), dir.path(), dir.path());
    assert_eq!(second.live(Variant::Stable), 1);
    assert!(second.exited(Variant::Stable).is_empty());
    let dep = second.deploy(Variant::Stable, "v1").await.unwrap();
    assert!(dep.detail.contains("adopted"), "{}", dep.detail);
    assert_eq!(record(dir.path(), "stable").unwrap().pid, rec.pid);
    second.stop(Variant::Stable).await.unwrap();
    assert!(!alive(rec.pid));
}

/// Regression (issue 16 review): a live replica of the right version whose one
/// adoption probe was slow (here its second request takes 3 s, past the probe's 2 s)
/// was stopped and started again, failing the requests users had on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_slow_to_answer_one_probe_is_adopted_not_restarted() {
    const SLOW_ONCE: &str = "import http.server,sys,time\nn=[0]\nclass H(http.server.BaseHTTPRequestHandler):\n  def do_GET(s):\n    n[0]+=1\n    if n[0]==2: time.sleep(3)\n    s.send_response(200); s.end_headers(); s.wfile.write(b'ok')\n  def log_message(*a): pass\nhttp.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()";
    let dir = tempfile::tempdir().unwrap();
    let spec = || {
        spec(
            &["python3", "-c", SLOW_ONCE, "{port}"],
            Duration::from_secs(20),
        )
    };
    let first = ProcessDeployer::new("svc", spec(), dir.path(), dir.path());
    first.deploy(Variant::Stable, "v1").await.unwrap();
    let pid = record(dir.path(), "stable").unwrap().pid;
    drop(first);
    let second = ProcessDeployer::new("svc", spec(), dir.path(), dir.path());
    let dep = second.deploy(Variant::Stable, "v1").await.unwrap();
    assert!(dep.detail.contains("adopted"), "{}", dep.detail);
    assert_eq!(record(dir.path(), "stable").unwrap().pid, pid);
    assert!(alive(pid));
    second.stop(Variant::Stable).await.unwrap();
}

/// A recorded pid now held by another process (a reuse: same pid, another start
/// time) is never adopted nor signalled, whatever its environment says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_with_another_start_time_is_never_signalled() {
    let dir = tempfile::tempdir().unwrap();
    let first = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    first.deploy(Variant::Canary, "v2").await.unwrap();
    let mut rec = record(dir.path(), "canary").unwrap();
    drop(first);
    // The record now describes a process that started at another time.
    rec.started = rec.started.map(|t| t + 1);
    std::fs::write(
        dir.path().join("processes/svc.canary.json"),
        serde_json::to_string(&vec![rec.clone()]).unwrap(),
    )
    .unwrap();
    let second = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    assert_eq!(second.exited(Variant::Canary).len(), 1);
    assert_eq!(second.stop(Variant::Canary).await.unwrap(), "not running");
    assert!(
        alive(rec.pid),
        "a process that is not the recorded one is left alone"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(rec.pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scales_up_then_retires_replicas_beyond_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = ProcessDeployer::new("svc", server_spec(), dir.path(), dir.path());
    let three = d.scale(Variant::Canary, "v2", 3).await.unwrap();
    assert_eq!(three.endpoints.len(), 3);
    assert!(three.retired.is_empty());
    let pids: Vec<u32> = records(dir.path(), "canary")
        .iter()
        .map(|r| r.pid)
        .collect();
    assert_eq!(pids.len(), 3);
    // Scaling down reports the extra replica as retired and keeps it running...
    let one = d.scale(Variant::Canary, "v2", 1).await.unwrap();
    assert_eq!(one.endpoints, three.endpoints[..1].to_vec());
    assert_eq!(one.retired, three.endpoints[1..].to_vec());
    assert!(pids.iter().all(|p| alive(*p)));
    // ...until it is trimmed.
    d.trim(Variant::Canary, 1).await.unwrap();
    assert!(alive(pids[0]) && !alive(pids[1]) && !alive(pids[2]));
    assert_eq!(records(dir.path(), "canary").len(), 1);
    d.stop(Variant::Canary).await.unwrap();
    assert!(!alive(pids[0]));
    assert!(records(dir.path(), "canary").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployers_of_one_service_never_leave_an_unrecorded_replica() {
    // Two rampart processes driving one service's processes (serve's supervisor and
    // `rampart stop --canary`, each with a deployer of its own) both replace a
    // replica that died: one replacement runs, and it is the one on record.
    let dir = tempfile::tempdir().unwrap();
    let service = "svc-shared";
    let first = ProcessDeployer::new(service, server_spec(), dir.path(), dir.path());
    let second = ProcessDeployer::new(service, server_spec(), dir.path(), dir.path());
    first.deploy(Variant::Stable, "v1").await.unwrap();
    let adopted = second.deploy(Variant::Stable, "v1").await.unwrap();
    assert!(adopted.detail.contains("adopted"), "{}", adopted.detail);
    let file = |v| {
        std::fs::read_to_string(dir.path().join(format!("processes/{service}.{v}.json")))
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<ProcessRecord>>(&t).ok())
            .unwrap_or_default()
    };
    let died = file("stable")[0].pid;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(died).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    while alive(died) {
        tokio::task::yield_now().await;
    }
    let (a, b) = tokio::join!(
        first.deploy(Variant::Stable, "v1"),
        second.deploy(Variant::Stable, "v1")
    );
    a.unwrap();
    b.unwrap();
    let recorded: Vec<u32> = file("stable").iter().map(|r| r.pid).collect();
    assert_eq!(
        processes_of(service),
        recorded,
        "every live replica is on record, once"
    );
    assert_eq!(recorded.len(), 1);
    first.stop(Variant::Stable).await.unwrap();
    second.stop(Variant::Stable).await.unwrap();
    assert_eq!(processes_of(service), Vec::<u32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_record_was_lost_is_kept_and_recorded_again() {
    // A record write that failed (or a record file removed) must not orphan the
    // replica the deployer started: it is still this deployer's to stop.
    let dir = tempfile::tempdir().unwrap();
    let service = "svc-lost-record";
    let d = ProcessDeployer::new(service, server_spec(), dir.path(), dir.path());
    d.deploy(Variant::Stable, "v1").await.unwrap();
    let path = dir.path().join(format!("processes/{service}.stable.json"));
    let first: Vec<ProcessRecord> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    std::fs::remove_file(&path).unwrap();
    let again = d.deploy(Variant::Stable, "v1").await.unwrap();
    assert!(again.detail.contains("already running"), "{}", again.detail);
    let recorded: Vec<ProcessRecord> =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(recorded[0].pid, first[0].pid);
    assert_eq!(processes_of(service), vec![first[0].pid]);
    d.stop(Variant::Stable).await.unwrap();
    assert_eq!(processes_of(service), Vec::<u32>::new());
}
