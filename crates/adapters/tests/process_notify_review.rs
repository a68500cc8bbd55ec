#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the local process deployer (stops, crashes, pid reuse,
//! readiness probes) and the notification hooks (secrets in logs, hooks that hang or
//! leave processes behind). Each test fails on the defect it names.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::processes::{SERVER, alive, processes_of, server_spec, spec};
use rampart_adapters::notify::HookNotifier;
use rampart_adapters::process::{ProcessDeployer, ProcessRecord};
use rampart_core::Variant;
use rampart_core::Weight;
use rampart_core::policy::{NotifyHook, NotifyTarget, Secret};
use rampart_core::ports::{Deployer, Notice, Notifier};
use rampart_core::release::NoticeKind;

fn kill(pid: u32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// Polls `ok` until it holds or `within` has passed; whether it held.
async fn eventually(within: Duration, mut ok: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if ok() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn record(state: &Path, service: &str, variant: &str) -> Option<ProcessRecord> {
    std::fs::read_to_string(state.join(format!("processes/{service}.{variant}.json")))
        .ok()
        .and_then(|t| serde_json::from_str::<Vec<ProcessRecord>>(&t).ok())
        .and_then(|v| v.into_iter().next())
}

// ---------------------------------------------------------------------------------
// Process deployer
// ---------------------------------------------------------------------------------

/// docs/adapters.md: "Stop. SIGTERM to the process group, then SIGKILL after
/// `stop_timeout`." A version started through a wrapper (`sh -c 'server & wait'`)
/// whose leader exits on SIGTERM while the server ignores it: `terminate` waits only
/// for the leader, reports "stopped" and never sends the group SIGKILL, so the server
/// runs on, orphaned, with no record naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_kills_group_members_that_outlive_the_leader() {
    let service = "rv-group-stop";
    let dir = tempfile::tempdir().unwrap();
    let server = format!("import signal; signal.signal(signal.SIGTERM, signal.SIG_IGN); {SERVER}");
    let s = spec(
        &[
            "sh",
            "-c",
            "python3 -c \"$0\" \"$1\" & wait",
            &server,
            "{port}",
        ],
        Duration::from_secs(20),
    );
    let d = ProcessDeployer::new(service, s, dir.path(), dir.path());
    d.deploy(Variant::Stable, "v1").await.unwrap();
    assert_eq!(processes_of(service).len(), 2, "sh and its server");
    let stopped = d.stop(Variant::Stable).await.unwrap();
    // Well past stop_timeout (1 s): the group should have had its SIGKILL.
    let gone = eventually(Duration::from_secs(15), || processes_of(service).is_empty()).await;
    let left = processes_of(service);
    left.iter().for_each(|p| kill(*p));
    assert!(
        gone,
        "after stop ({stopped}) these processes of the version's group still run: {left:?}"
    );
}

/// docs/adapters.md "Crash safety": after a controller crash the next run adopts a
/// ready process or stops it. A controller that dies while a version is starting (its
/// readiness not yet passed) leaves a process that no record names: the record is
/// written only once the process is ready, so the next run can neither adopt nor stop
/// it. The deploy future is dropped here, which is what a crash does to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_dying_during_a_start_leaves_no_unrecorded_process() {
    let service = "rv-crash-start";
    let dir = tempfile::tempdir().unwrap();
    // Never ready (nothing listens), so the start is still waiting when it is cut.
    let s = spec(&["sleep", "300", "{port}"], Duration::from_secs(120));
    let first = ProcessDeployer::new(service, s.clone(), dir.path(), dir.path());
    let starting = tokio::spawn(async move { first.deploy(Variant::Canary, "v2").await });
    assert!(
        eventually(Duration::from_secs(10), || !processes_of(service)
            .is_empty())
        .await
    );
    starting.abort();
    let _ = starting.await;
    let orphans = processes_of(service);

    let next = ProcessDeployer::new(service, s, dir.path(), dir.path());
    let said = next.stop(Variant::Canary).await.unwrap();
    let gone = eventually(Duration::from_secs(10), || processes_of(service).is_empty()).await;
    let left = processes_of(service);
    left.iter().for_each(|p| kill(*p));
    assert!(
        gone,
        "the next controller's stop ({said}) left {left:?} (started before the crash: {orphans:?})"
    );
}

/// Starts `sleep 300` as its own process group leader with pid `target`, using
/// `ns_last_pid` (needs CAP_SYS_ADMIN in the pid namespace): `None` when that is not
/// possible here.
fn spawn_with_pid(target: u32) -> Option<std::process::Child> {
    use std::os::unix::process::CommandExt;
    for _ in 0..500 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (target - 1).to_string()).ok()?;
        let mut c = std::process::Command::new("sleep")
            .arg("300")
            .process_group(0)
            .spawn()
            .ok()?;
        if c.id() == target {
            return Some(c);
        }
        let _ = c.kill();
        let _ = c.wait();
        if Path::new(&format!("/proc/{target}")).exists() {
            return None; // someone else's process took it
        }
    }
    None
}

/// docs/adapters.md: "... so a recycled pid is never killed." An adopted replica that
/// dies (OOM) is reaped by init at once and its pid is free for reuse. The deployer
/// keeps it in memory; the next deploy (a supervisor replacing the dead replica) sees
/// it is no longer alive (another start time) and still calls `terminate` on it,
/// which sends SIGTERM to the process group of whatever now holds the pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_adopted_replica_s_reused_pid_is_never_signalled() {
    reused_pid_left_alone("rv-reuse", false).await;
}

/// The same for a replica whose record an older rampart wrote, without a start time:
/// `load` stamped one when it adopted it, but `trim` and `rebase` (and `refresh`)
/// adopted it as it was, and its stop later signalled whatever held the pid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_pid_of_a_replica_recorded_without_a_start_time_is_never_signalled() {
    reused_pid_left_alone("rv-reuse-old", true).await;
}

/// A stable replica started by one deployer is adopted by a second (by `deploy`, or
/// with `legacy` from a record without a start time by `trim`), dies, and its pid goes
/// to an unrelated group leader; the second deployer's next `deploy` (or `stop`) must
/// leave that process alone.
async fn reused_pid_left_alone(service: &str, legacy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let first = ProcessDeployer::new(service, server_spec(), dir.path(), dir.path());
    first.deploy(Variant::Stable, "v1").await.unwrap();
    let pid = record(dir.path(), service, "stable").unwrap().pid;
    drop(first); // the controller dies; its replica keeps running
    if legacy {
        let path = dir.path().join(format!("processes/{service}.stable.json"));
        let mut old = record(dir.path(), service, "stable").unwrap();
        old.started = None;
        std::fs::write(&path, serde_json::to_string(&[old]).unwrap()).unwrap();
    }
    let second = ProcessDeployer::new(service, server_spec(), dir.path(), dir.path());
    if legacy {
        second.trim(Variant::Stable, 1).await.unwrap();
    } else {
        let dep = second.deploy(Variant::Stable, "v1").await.unwrap();
        assert!(dep.detail.contains("adopted"), "{}", dep.detail);
    }

    // The replica dies and is reaped; its pid goes to an unrelated group leader.
    kill(pid);
    assert!(
        eventually(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{pid}"
        ))
        .exists())
        .await
    );
    let Some(mut stranger) = spawn_with_pid(pid) else {
        eprintln!("cannot place a process at pid {pid} here (ns_last_pid); not checked");
        second.stop(Variant::Stable).await.unwrap();
        return;
    };
    let after = if legacy {
        second.stop(Variant::Stable).await.map(|_| ())
    } else {
        second.deploy(Variant::Stable, "v1").await.map(|_| ())
    };
    let survived = stranger.try_wait().unwrap().is_none();
    let _ = stranger.kill();
    let _ = stranger.wait();
    second.stop(Variant::Stable).await.unwrap();
    assert!(
        survived,
        "the process now holding pid {pid} was signalled: {after:?}"
    );
}

/// docs/adapters.md: the probe runs "until it passes or `readiness.timeout` ends".
/// With a TCP readiness probe the connect has no time limit: a version whose accept
/// queue is full (its accept loop is stuck) drops the SYN, and the kernel retries it
/// for about two minutes, so `verify` (and adoption, and a start) overrun their
/// timeout by that much, holding the deployer's lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_probe_honours_its_timeout_when_connect_hangs() {
    let service = "rv-tcp-probe";
    let dir = tempfile::tempdir().unwrap();
    // Listens with a backlog of 0 and never accepts: the first connection (rampart's
    // readiness probe) is queued, every later SYN is dropped.
    let wedged = "import socket,sys,time\ns=socket.socket()\ns.bind(('127.0.0.1',int(sys.argv[1])))\ns.listen(0)\ntime.sleep(300)";
    let mut s = spec(
        &["python3", "-c", wedged, "{port}"],
        Duration::from_secs(20),
    );
    s.readiness.http = None;
    let d = ProcessDeployer::new(service, s, dir.path(), dir.path());
    d.deploy(Variant::Canary, "v2").await.unwrap();
    let verified = tokio::time::timeout(
        Duration::from_secs(40),
        d.verify(Variant::Canary, Duration::from_secs(1)),
    )
    .await;
    d.stop(Variant::Canary).await.unwrap();
    assert!(
        verified.is_ok(),
        "verify with a 1 s timeout had not returned 40 s later (the TCP connect has no limit)"
    );
}

// ---------------------------------------------------------------------------------
// Notifications
// ---------------------------------------------------------------------------------

fn notice(kind: NoticeKind) -> Notice {
    Notice {
        kind,
        page: true,
        service: "shop".into(),
        release: "shop-1".into(),
        version: "v2".into(),
        stable: Some("v1".into()),
        weight: Weight::from_percent(20).unwrap(),
        message: "error-rate 9% > max 2%".into(),
        instead: None,
        at: 1_795_000_000_500,
    }
}

fn hook(target: NotifyTarget) -> HookNotifier {
    HookNotifier::new(vec![NotifyHook {
        target,
        on: rampart_core::policy::PAGES.to_vec(),
    }])
    .with_retries(1, Duration::from_millis(10), Duration::from_secs(1))
}

/// Every event's fields, as text.
struct Capture(Arc<Mutex<String>>);

struct Fields<'a>(&'a mut String);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        use std::fmt::Write;
        let _ = write!(self.0, "{}={:?} ", field.name(), value);
    }
}

impl tracing::Subscriber for Capture {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        let mut text = self.0.lock().unwrap();
        event.record(&mut Fields(&mut text));
        text.push('\n');
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// docs/policy.md: a Slack webhook's "URL is a secret". A delivery that fails is
/// logged with the error, and the error (`NotifyError::Unanswered` / `Status`) is
/// built with the revealed URL: the whole webhook URL, token and all, is in the log.
#[tokio::test(flavor = "current_thread")]
async fn a_failing_slack_hook_never_logs_its_url() {
    let logged = Arc::new(Mutex::new(String::new()));
    let _guard = tracing::subscriber::set_default(Capture(logged.clone()));
    // A port nothing listens on: Slack unreachable.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let token = "XyZzY0SEKRETt0kenQ";
    let n = hook(NotifyTarget::Slack {
        url: Secret::Value(format!(
            "http://127.0.0.1:{port}/services/T0000/B0000/{token}"
        )),
        dashboard: None,
    });
    n.notify(&notice(NoticeKind::Halted)).await;
    let text = logged.lock().unwrap().clone();
    assert!(text.contains("notification hook failed"), "{text}");
    assert!(
        !text.contains(token),
        "the Slack webhook's token is in the log: {text}"
    );
}

/// docs/policy.md: a hook "never fails or delays the release"; the per-attempt limit
/// kills a command that runs too long. The notice is written to the command's stdin
/// before, and outside, that limit: a command that does not read its stdin and a
/// notice larger than the pipe's buffer (64 KiB) block the delivery for good, and
/// every later notice with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_hook_that_never_reads_stdin_is_cut_at_its_time_limit() {
    let n = hook(NotifyTarget::Command(vec!["sleep".into(), "300".into()]));
    let mut big = notice(NoticeKind::Halted);
    // Over the pipe's 64 KiB, under the 128 KiB one environment string may hold
    // (the message is also in RAMPART_MESSAGE).
    big.message = "x".repeat(100_000);
    let delivered = tokio::time::timeout(Duration::from_secs(40), n.notify(&big)).await;
    assert!(
        delivered.is_ok(),
        "a hook with a 1 s limit still held the notice 40 s later"
    );
}

/// A hook command that runs past its time limit "is killed": only the direct child
/// is (kill_on_drop), not what it started, so `sh -c 'sleep 300 & wait'` (a script
/// calling curl, say) leaves its child running after every timed-out attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_hook_command_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let script = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let n = hook(NotifyTarget::Command(vec![
        "sh".into(),
        "-c".into(),
        script,
    ]));
    n.notify(&notice(NoticeKind::Halted)).await;
    let mut pid = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<u32>().ok());
            pid.is_some()
        })
        .await
    );
    let pid = pid.unwrap();
    let gone = eventually(Duration::from_secs(10), || !alive(pid)).await;
    if !gone {
        kill(pid);
    }
    assert!(gone, "the hook's child {pid} outlived the killed hook");
}

/// After the review of the fixes above: a process is recorded (and kept in the
/// deployer's list) from the moment it starts, so a deploy given up on while it waited
/// for readiness (the controller drops an action's future when the release moves on)
/// left an unready process in the list, and the next deploy of the same version kept
/// it as an endpoint without probing it: traffic to a version that never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_given_up_on_is_never_kept_as_an_endpoint() {
    let service = "rv-cancelled-start";
    let dir = tempfile::tempdir().unwrap();
    // Never ready: nothing listens.
    let s = spec(&["sleep", "300", "{port}"], Duration::from_secs(2));
    let d = std::sync::Arc::new(ProcessDeployer::new(service, s, dir.path(), dir.path()));
    let first = d.clone();
    let starting = tokio::spawn(async move { first.deploy(Variant::Canary, "v2").await });
    assert!(
        eventually(Duration::from_secs(10), || !processes_of(service)
            .is_empty())
        .await
    );
    starting.abort();
    let _ = starting.await;
    let again = d.deploy(Variant::Canary, "v2").await;
    let _ = d.stop(Variant::Canary).await;
    processes_of(service).iter().for_each(|p| kill(*p));
    assert!(
        again.is_err(),
        "a version that never passed its probe was served: {again:?}"
    );
}

/// Versions whose names differ only in characters a file name cannot carry (`v1/2` and
/// `v1_2`) wrote to one log file: `rampart logs` showed one version's output as the
/// other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_that_differ_only_in_unsafe_characters_keep_their_own_logs() {
    let dir = tempfile::tempdir().unwrap();
    let script =
        format!("import sys; print('I am ' + sys.argv[2], file=sys.stderr, flush=True); {SERVER}");
    let s = spec(
        &["python3", "-c", &script, "{port}", "{version}"],
        Duration::from_secs(20),
    );
    let d = ProcessDeployer::new("rv-log-names", s, dir.path(), dir.path());
    for version in ["v1/2", "v1_2"] {
        d.deploy(Variant::Canary, version).await.unwrap();
        d.stop(Variant::Canary).await.unwrap();
    }
    for version in ["v1/2", "v1_2"] {
        let (_, stderr) = d.log_paths(Variant::Canary, version, 0);
        let text = std::fs::read_to_string(&stderr).unwrap();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with("I am ")).collect();
        assert_eq!(lines, [format!("I am {version}")], "{}", stderr.display());
    }
}

/// A notice's message went to a command hook whole in `RAMPART_MESSAGE`: over 128 KiB
/// (one environment string's limit on Linux) or with a NUL byte in it (a version's
/// stderr tail may carry one), the hook could not start, and the page was lost without
/// a retry. The environment gets a cut, NUL-free text; stdin has the whole notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notice_too_large_for_the_environment_still_reaches_a_command_hook() {
    let dir = tempfile::tempdir().unwrap();
    let (json, env) = (dir.path().join("stdin.json"), dir.path().join("env.txt"));
    let script = format!(
        "cat > {}; printf %s \"$RAMPART_MESSAGE\" > {}",
        json.display(),
        env.display()
    );
    let n = hook(NotifyTarget::Command(vec![
        "sh".into(),
        "-c".into(),
        script,
    ]));
    for message in [
        format!("error-rate 9% > max 2%; stderr: {}end", "é".repeat(100_000)),
        "stderr: bad\0byte".to_string(),
    ] {
        let mut big = notice(NoticeKind::Halted);
        big.message = message.clone();
        n.notify(&big).await;
        let got: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        assert_eq!(got["message"].as_str(), Some(message.as_str()), "on stdin");
        let shown = std::fs::read_to_string(&env).unwrap();
        assert!(shown.starts_with(&message[..10]), "{}", &shown[..20]);
        assert!(!shown.contains('\0'));
        std::fs::remove_file(&json).unwrap();
    }
}

/// A command hook that fails is tried again (4 attempts): a paging script that paged
/// and then exited 1 paged four times, with nothing to tell a retry from a new notice.
/// Every attempt carries the notice's id (`RAMPART_NOTICE_ID`, `id` on stdin) and its
/// number (`RAMPART_ATTEMPT`); a second notice has another id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_command_hook_can_tell_a_retry_from_a_new_notice() {
    let dir = tempfile::tempdir().unwrap();
    let seen = dir.path().join("seen");
    // Pages (writes a line), then fails on the first attempt of each notice.
    let script = format!(
        "id=$(sed -n 's/.*\"id\":\"\\([0-9a-f]*\\)\".*/\\1/p'); echo \"$RAMPART_NOTICE_ID $id $RAMPART_ATTEMPT\" >> {}; [ \"$RAMPART_ATTEMPT\" != 1 ]",
        seen.display()
    );
    let n = HookNotifier::new(vec![NotifyHook {
        target: NotifyTarget::Command(vec!["sh".into(), "-c".into(), script]),
        on: rampart_core::policy::PAGES.to_vec(),
    }])
    .with_retries(3, Duration::from_millis(1), Duration::from_secs(5));
    let first = notice(NoticeKind::Halted);
    let mut second = notice(NoticeKind::Halted);
    second.at += 1;
    n.notify(&first).await;
    n.notify(&second).await;
    let text = std::fs::read_to_string(&seen).unwrap();
    let lines: Vec<Vec<&str>> = text.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), 4, "{text}");
    for l in &lines {
        assert!(
            l[0].len() == 16 && l[0] == l[1],
            "env and stdin agree: {text}"
        );
    }
    let attempts: Vec<&str> = lines.iter().map(|l| l[2]).collect();
    assert_eq!(attempts, ["1", "2", "1", "2"]);
    assert_eq!(lines[0][0], lines[1][0], "a retry keeps its id");
    assert_ne!(lines[1][0], lines[2][0], "another notice has another id");
}
