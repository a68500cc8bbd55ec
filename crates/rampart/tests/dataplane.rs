//! The service outlives its controller: the embedded proxy runs as the service's own
//! long-lived data plane, which `rampart run` starts when absent and attaches to when
//! present. Real processes and real load on loopback: every request a client sends is
//! counted, and none may fail across controller kills, hand-overs between releases and
//! upgrades of the data plane itself.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::serve::until;
use common::{exe, free_port, rampart, report, runtime, start_load};
use rampart::load::LoadStats;

/// A service's policy and state in a temporary directory; stops whatever of it still
/// runs when dropped (the data plane and the versions outlive `rampart run`).
struct Service {
    _dir: tempfile::TempDir,
    name: String,
    policy: PathBuf,
    state: PathBuf,
    port: u16,
}

impl Service {
    fn new(name: &str) -> Service {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let policy_path = dir.path().join("rampart.yaml");
        std::fs::write(
            &policy_path,
            common::plane_policy(name, port, &common::sample_service()),
        )
        .unwrap();
        let state = dir.path().join("state");
        Service {
            name: name.to_string(),
            policy: policy_path,
            state,
            port,
            _dir: dir,
        }
    }

    fn run(&self, version: &str) -> Command {
        let mut c = rampart();
        c.args([
            "run",
            "--version",
            version,
            "--output",
            "json",
            "--state-dir",
        ])
        .arg(&self.state)
        .arg("-f")
        .arg(&self.policy);
        c
    }

    /// [`Service::new`] whose releases halt after 2 intervals without data: without
    /// load, a release that started ends halted within seconds.
    fn halting_without_load(name: &str) -> Service {
        let svc = Service::new(name);
        let text = std::fs::read_to_string(&svc.policy).unwrap().replace(
            "no_data: {limit: 1000, action: halt}",
            "no_data: {limit: 2, action: halt}",
        );
        std::fs::write(&svc.policy, text).unwrap();
        svc
    }

    /// `rampart run --version VERSION`, to its end: the exit code and the report.
    fn release(&self, version: &str) -> (i32, serde_json::Value) {
        let out = self.run(version).output().unwrap();
        report(&out)
    }

    /// `rampart proxy --state-dir STATE --service NAME`: the service's data plane.
    fn plane(&self) -> Command {
        let mut c = Command::new(exe());
        c.args(["proxy", "--state-dir"])
            .arg(&self.state)
            .args(["--service", &self.name]);
        c
    }

    fn stop(&self) -> Output {
        rampart()
            .args(["stop", "--state-dir"])
            .arg(&self.state)
            .arg("-f")
            .arg(&self.policy)
            .output()
            .unwrap()
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.state
            .join("dataplane")
            .join(format!("{}.{ext}", self.name))
    }

    /// The pid of the data plane that holds the lock now.
    fn plane_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.file("lock"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|pid| alive(*pid))
    }

    fn stable_pids(&self) -> Vec<u64> {
        let path = self
            .state
            .join("processes")
            .join(format!("{}.stable.json", self.name));
        let text = std::fs::read_to_string(path).unwrap_or_else(|_| "[]".into());
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        list.iter().filter_map(|r| r["pid"].as_u64()).collect()
    }

    fn answers(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        common::stop_versions(&self.state);
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn failed(stats: &Arc<LoadStats>) -> u64 {
    stats.failed.load(Ordering::Relaxed)
}

/// Stops the load and waits until every request it sent has its answer (or failure)
/// counted; returns how many were sent.
fn settle(load: &tokio::task::JoinHandle<()>, stats: &Arc<LoadStats>) -> u64 {
    load.abort();
    until(
        "every request sent is answered",
        Duration::from_secs(30),
        || stats.ok.load(Ordering::Relaxed) + failed(stats) >= sent(stats),
    );
    sent(stats)
}

fn sent(stats: &Arc<LoadStats>) -> u64 {
    stats.sent.load(Ordering::Relaxed)
}

/// The first release of a service, with load from the moment its address accepts a
/// connection: requests that arrive before the first version is ready wait for it
/// rather than getting 503. Returns the load's counters (the load keeps running).
fn first_release_under_load(
    svc: &Service,
    rt: &tokio::runtime::Runtime,
) -> (tokio::task::JoinHandle<()>, Arc<LoadStats>) {
    let first = svc.run("v1").stdout(Stdio::piped()).spawn().unwrap();
    until("the data plane listens", Duration::from_secs(30), || {
        svc.answers()
    });
    let load = start_load(rt, svc.port, 100);
    let out = first.wait_with_output().unwrap();
    let (code, v) = report(&out);
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    load
}

#[test]
fn releases_hand_over_with_no_failed_request_and_the_stable_version_is_not_restarted() {
    let svc = Service::new("handover");
    let rt = runtime();
    let (load, stats) = first_release_under_load(&svc, &rt);
    let plane = svc
        .plane_pid()
        .expect("a data plane runs after the release");

    for (version, previous) in [("v2", "v1"), ("v3", "v2")] {
        // The live version serves as stable: no --stable, and its process is adopted.
        let serving = svc.stable_pids();
        assert_eq!(serving.len(), 1, "{previous} serves as stable");
        let (code, v) = svc.release(version);
        assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
        assert_eq!(v["stable_version"], previous, "{v}");
        let adopted = v["timeline"].as_array().unwrap().iter().any(|e| {
            e["kind"] == "version_ready"
                && e["message"]
                    .as_str()
                    .is_some_and(|d| d.contains(&format!("pid {} on port", serving[0])))
        });
        assert!(adopted, "{previous} was restarted rather than adopted: {v}");
        assert!(v["requests"]["canary"].as_u64().unwrap() > 0, "{v}");
    }
    assert_eq!(svc.plane_pid(), Some(plane), "one data plane throughout");
    assert!(svc.answers(), "the winner keeps serving after the release");
    let total = settle(&load, &stats);
    assert!(total > 300, "load ran: {total} requests");
    assert_eq!(failed(&stats), 0, "failed requests out of {total}");

    let stopped = svc.stop();
    assert!(stopped.status.success(), "{stopped:?}");
    assert!(
        svc.plane_pid().is_none(),
        "`rampart stop` stops the data plane"
    );
    assert!(svc.stable_pids().is_empty(), "and the versions");
    assert!(!svc.answers());
}

/// Kills `rampart run` (SIGKILL) at `after` into each release, runs it again to its
/// outcome, and counts what users saw. One release in CI; `scripts/controller-kill.sh`
/// runs 20 at random points.
#[test]
fn a_controller_killed_mid_release_fails_no_user_request() {
    let releases: u32 = std::env::var("RAMPART_KILL_RELEASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    let seed: u64 = std::env::var("RAMPART_KILL_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| {
            use std::hash::{BuildHasher, Hasher};
            std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish()
        });
    eprintln!("kill points from seed {seed} (RAMPART_KILL_SEED={seed} repeats them)");
    let svc = Service::new("killed");
    let rt = runtime();
    let (load, stats) = first_release_under_load(&svc, &rt);
    let mut state = seed;
    for n in 0..releases {
        let version = format!("v{}", n + 2);
        // A kill point anywhere from the start to past the end of the steps.
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let after = Duration::from_millis(200 + (state >> 33) % 5_500);
        let mut controller = svc.run(&version).stdout(Stdio::null()).spawn().unwrap();
        std::thread::sleep(after); // the kill point itself, not a wait for anything
        let _ = controller.kill();
        let _ = controller.wait();
        let (code, v) = svc.release(&version);
        assert_eq!(
            (code, v["outcome"].as_str()),
            (0, Some("promoted")),
            "release {version} killed at {after:?}: {v}"
        );
        eprintln!(
            "release {version}: killed at {after:?}, promoted; {} requests, {} failed so far",
            sent(&stats),
            failed(&stats)
        );
    }
    let total = settle(&load, &stats);
    assert_eq!(failed(&stats), 0, "failed requests out of {total}");
    assert!(svc.stop().status.success());
}

#[test]
fn the_data_plane_is_upgraded_in_place_under_load_with_no_failed_request() {
    let svc = Service::new("upgraded");
    let rt = runtime();
    let (load, stats) = first_release_under_load(&svc, &rt);
    let old = svc.plane_pid().unwrap();
    let before = sent(&stats);

    // The newer data plane takes the listening socket; the old one drains and exits.
    // As `systemctl reload` runs it: --detach returns once the newer one serves, and
    // the newer one tells the service manager it is the main process now.
    let manager = svc.state.join("notify.sock");
    let notified = std::os::unix::net::UnixDatagram::bind(&manager).unwrap();
    notified
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let status = svc
        .plane()
        .args(["--take-over", "--detach", "--drain", "5s"])
        .env("RAMPART_DATAPLANE", &svc.name)
        .env("NOTIFY_SOCKET", &manager)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "{status}");
    let newer = svc
        .plane_pid()
        .expect("the newer data plane holds the lock");
    assert_ne!(newer, old);
    until(
        "the old data plane exits, drained",
        Duration::from_secs(10),
        || !alive(old),
    );
    let mut buf = [0u8; 256];
    let n = notified.recv(&mut buf).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&buf[..n]),
        format!("READY=1\nMAINPID={newer}")
    );
    until(
        "load goes on through the newer one",
        Duration::from_secs(30),
        || sent(&stats) > before + 200,
    );
    // The newer one has the routes and takes the next release.
    let (code, v) = svc.release("v2");
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let total = settle(&load, &stats);
    assert_eq!(failed(&stats), 0, "failed requests out of {total}");
    assert!(svc.stop().status.success());
}

#[test]
fn a_crashed_data_plane_comes_back_with_its_routes() {
    let svc = Service::new("restarted");
    let (code, v) = svc.release("v1");
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let pid = svc.plane_pid().unwrap();
    common::servers::kill_group(pid);
    until("the data plane is gone", Duration::from_secs(10), || {
        !alive(pid)
    });
    assert_eq!(
        svc.plane_pid(),
        None,
        "no data plane holds the service's lock"
    );
    let mut again = svc.plane();
    let again_log = std::fs::File::create(svc.state.join("again.log")).unwrap();
    again
        .env("RAMPART_DATAPLANE", &svc.name)
        .env("RAMPART_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(again_log);
    std::os::unix::process::CommandExt::process_group(&mut again, 0);
    let mut again = again.spawn().unwrap();
    let started = again.id();
    until(
        "the data plane serves again",
        Duration::from_secs(30),
        || svc.plane_pid() == Some(started) && svc.file("sock").exists() && svc.answers(),
    );
    // Its saved routes send users to v1, with no release.
    let body = http_get(svc.port);
    assert!(
        body.contains("200 OK") && body.contains("v1"),
        "{body:?}; state {:?}; log {:?}; stable answers directly: {:?}; again: {:?}; its log: {:?}",
        std::fs::read_to_string(svc.file("json")),
        std::fs::read_to_string(svc.file("log")),
        svc.stable_pids()
            .first()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok()),
        again.try_wait(),
        std::fs::read_to_string(svc.state.join("again.log"))
    );
    assert!(svc.stop().status.success());
    again.wait().unwrap();
}

#[test]
fn a_second_data_plane_a_wrong_credential_and_a_corrupt_state_file_are_refused() {
    let svc = Service::new("guarded");
    let (code, v) = svc.release("v1");
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let pid = svc.plane_pid().unwrap();

    // A second data plane for the service: refused, and the first keeps serving.
    let second = svc.plane().output().unwrap();
    assert_eq!(second.status.code(), Some(3), "{second:?}");
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("already runs") && said.contains(&format!("pid {pid}")),
        "{said}"
    );
    assert!(http_get(svc.port).contains("v1"));

    // A controller with the wrong credential: refused, nothing moves.
    let token = std::fs::read_to_string(svc.file("token")).unwrap();
    std::fs::write(svc.file("token"), "0".repeat(48)).unwrap();
    let out = svc.run("v2").output().unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("refused this controller's credential"),
        "{said}"
    );
    assert!(http_get(svc.port).contains("v1"));
    std::fs::write(svc.file("token"), token).unwrap();

    // A state file that is corrupt, or from a newer rampart: refused at start, and
    // left as it is.
    assert!(svc.stop().status.success());
    for text in [
        "{\"format\": 1, \"routes\": ",
        "{\"format\": 9, \"service\": \"guarded\"}",
    ] {
        std::fs::write(svc.file("json"), text).unwrap();
        let out = svc.plane().output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("not a data-plane state file") || said.contains("newer rampart"),
            "{said}"
        );
        assert_eq!(std::fs::read_to_string(svc.file("json")).unwrap(), text);
        let run = svc.run("v2").output().unwrap();
        assert_eq!(run.status.code(), Some(1), "{run:?}");
        assert!(
            !svc.answers(),
            "nothing started on a state file it could not read"
        );
    }
}

/// One GET through the service's address: the status line and the body.
fn http_get(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn serve_killed_and_restarted_keeps_every_service_answering_and_a_reboot_brings_them_back() {
    use common::serve::{Server, policy as served_policy, submit};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start(&state);
    let ci = server.token("deployer", "ci");
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    // Traffic for the releases to judge (counted from the next phase on only: before
    // the first release, nothing listens on these addresses yet).
    let rt = runtime();
    let warmup: Vec<_> = ports.iter().map(|p| start_load(&rt, *p, 50)).collect();
    let ids: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, port)| submit(&server, &ci, &served_policy(&format!("svc{i}"), *port, "")))
        .collect();
    for id in &ids {
        let end = server.wait_release(id, &ci, Duration::from_secs(90), |v| {
            v["report"].is_object()
        });
        assert_eq!(end["outcome"], "promoted", "{end}");
    }
    for (load, _) in &warmup {
        load.abort();
    }

    // A checker on every service, a request every 10 ms each, while serve is killed
    // (SIGKILL) and started again.
    let checkers: Vec<_> = ports.iter().map(|p| start_load(&rt, *p, 100)).collect();
    let total = || checkers.iter().map(|(_, s)| sent(s)).sum::<u64>();
    let before = total();
    until("the checkers run", Duration::from_secs(30), || {
        total() > before + 300
    });
    server.kill();
    let mid = total();
    until(
        "the checkers run on without serve",
        Duration::from_secs(30),
        || total() > mid + 300,
    );
    let server = Server::start_on(&state, server.port);
    let again = total();
    until(
        "the checkers run on after the restart",
        Duration::from_secs(30),
        || total() > again + 300,
    );
    for (load, stats) in &checkers {
        settle(load, stats);
        assert_eq!(failed(stats), 0, "failed out of {}", sent(stats));
    }

    // A reboot: nothing of rampart's runs, versions included. serve brings every
    // service back on the version its last release left serving.
    let port = server.port;
    drop(server);
    common::stop_versions(&state);
    until("everything is down", Duration::from_secs(10), || {
        ports
            .iter()
            .all(|p| std::net::TcpStream::connect(("127.0.0.1", *p)).is_err())
    });
    #[allow(clippy::disallowed_methods)] // measured for the docs, not asserted
    let started = std::time::Instant::now();
    let _server = Server::start_on(&state, port);
    until(
        "every service answers again",
        Duration::from_secs(60),
        || {
            ports.iter().all(|p| {
                std::net::TcpStream::connect(("127.0.0.1", *p)).is_ok()
                    && http_get(*p).starts_with("HTTP/1.1 200")
            })
        },
    );
    eprintln!(
        "after the reboot, {} services answered {:?} after serve started",
        ports.len(),
        started.elapsed()
    );
    for p in &ports {
        assert!(http_get(*p).contains("v2"), "the promoted version serves");
    }

    // Between releases, a version process that exits is restarted by serve's
    // supervisor, and the restart is recorded.
    let records = state.join("processes/svc0.stable.json");
    let pid_of = || -> Option<u64> {
        let text = std::fs::read_to_string(&records).ok()?;
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).ok()?;
        list.first()?["pid"].as_u64()
    };
    let old = pid_of().unwrap();
    common::servers::kill_group(u32::try_from(old).unwrap());
    until(
        "the exited version is replaced",
        Duration::from_secs(30),
        || pid_of().is_some_and(|p| p != old) && http_get(ports[0]).starts_with("HTTP/1.1 200"),
    );
    let log = std::fs::read_to_string(state.join("logs/svc0.restarts.log")).unwrap();
    assert!(log.contains(&format!("\"{old}\"")), "{log}");
}

/// A stable version that crashes during a release shows as stable's failed requests
/// (502 from the data plane), which the rules that already exist judge: when the
/// canary fails too, the release halts and pages, since rolling back to a dead stable
/// would not help.
#[test]
fn stable_and_canary_crashing_mid_release_halt_it_rather_than_roll_back() {
    let svc = Service::new("crashing");
    let rt = runtime();
    let (load, _) = first_release_under_load(&svc, &rt);
    let run = svc.run("v2").stdout(Stdio::piped()).spawn().unwrap();
    let canary_weight = || {
        std::fs::read_to_string(svc.file("json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|v| v["routes"]["weight"].as_f64())
            .unwrap_or(0.0)
    };
    until("the canary takes users", Duration::from_secs(30), || {
        canary_weight() > 0.0
    });
    let records = |variant: &str| -> Vec<u32> {
        let path = svc
            .state
            .join("processes")
            .join(format!("{}.{variant}.json", svc.name));
        let text = std::fs::read_to_string(path).unwrap_or_else(|_| "[]".into());
        let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        list.iter()
            .filter_map(|r| r["pid"].as_u64())
            .filter_map(|p| u32::try_from(p).ok())
            .collect()
    };
    for pid in records("stable").into_iter().chain(records("canary")) {
        common::servers::kill_group(pid);
    }
    let out = run.wait_with_output().unwrap();
    load.abort();
    let (code, v) = report(&out);
    assert_eq!((code, v["outcome"].as_str()), (4, Some("halted")), "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("both versions are unhealthy"), "{reason}");
}

/// A release that halts with users on its canary leaves them there (rampart does not
/// move traffic after a halt). The next release does not start on top of it: it would
/// replace that canary with its own version, at that weight, before any analysis. The
/// operator settles it with `rampart stop --canary` (stable must answer), and the next
/// release then starts from a canary with no users.
#[test]
fn a_canary_left_with_users_by_a_halt_blocks_the_next_release_until_stopped() {
    let svc = Service::halting_without_load("leftover");
    let (code, v) = svc.release("v1");
    assert_eq!(code, 0, "{v}");
    // No load: no data, twice, at the first step: halted with the canary at 20 %.
    let (code, v) = svc.release("v2");
    assert_eq!((code, v["outcome"].as_str()), (4, Some("halted")), "{v}");
    let routes = || -> serde_json::Value {
        let text = std::fs::read_to_string(svc.file("json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["routes"].clone()
    };
    assert!(routes()["weight"].as_f64().unwrap() > 0.0, "{}", routes());

    let (code, v) = svc.release("v3");
    assert_eq!(code, 5, "blocked: {v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("--canary"), "{reason}");
    assert!(routes()["weight"].as_f64().unwrap() > 0.0, "nothing moved");

    // Stable running another version than the release recorded (v1) is never
    // replaced or restarted by the stop: it moves nothing.
    let records = svc
        .state
        .join("processes")
        .join(format!("{}.stable.json", svc.name));
    let recorded = std::fs::read_to_string(&records).unwrap();
    std::fs::write(&records, recorded.replace("\"v1\"", "\"v0\"")).unwrap();
    let stop = || {
        rampart()
            .args([
                "stop",
                "--canary",
                "--reason",
                "v2 halted",
                "--as",
                "alice",
                "--state-dir",
            ])
            .arg(&svc.state)
            .arg("-f")
            .arg(&svc.policy)
            .output()
            .unwrap()
    };
    let refused = stop();
    assert_eq!(refused.status.code(), Some(5), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("runs v0, not v1"), "{said}");
    assert!(routes()["weight"].as_f64().unwrap() > 0.0, "nothing moved");
    std::fs::write(&records, recorded).unwrap();

    let out = stop();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after = routes();
    assert_eq!(after["weight"].as_f64(), Some(0.0), "{after}");
    assert_eq!(after["canary"].as_array().map(Vec::len), Some(0), "{after}");
    assert!(http_get(svc.port).contains("v1"), "stable serves");
    // The audit trail says what was done (stable's replicas, the traffic, the
    // canary's stop), not only why.
    let chain = runtime().block_on(async {
        let store = rampart_adapters::store::StateStore::open(&svc.state.join("rampart.db"))
            .await
            .unwrap();
        store.chain_records(None).await.unwrap()
    });
    let stopped = serde_json::to_string(
        chain
            .iter()
            .rfind(|r| r.action == "canary_stopped")
            .unwrap(),
    )
    .unwrap();
    assert!(
        stopped.contains("v2 halted")
            && stopped.contains("stable: v1 x1")
            && stopped.contains("all traffic to stable"),
        "{stopped}"
    );

    // The next release starts (and, without load, halts on its own no data).
    let (code, v) = svc.release("v3");
    assert_eq!((code, v["outcome"].as_str()), (4, Some("halted")), "{v}");
}

/// Regression (review): the leftover check read a running data plane only; one that
/// died (kill -9, OOM) while the halted canary's processes still answered let the
/// next release through, and its data plane came back with the canary's users.
#[test]
fn a_canary_left_with_users_blocks_the_next_release_while_its_data_plane_is_down() {
    let svc = Service::halting_without_load("leftover-down");
    let (code, v) = svc.release("v1");
    assert_eq!(code, 0, "{v}");
    let (code, v) = svc.release("v2");
    assert_eq!((code, v["outcome"].as_str()), (4, Some("halted")), "{v}");
    let pid = svc.plane_pid().expect("the data plane runs");
    common::servers::kill_group(pid);
    until("the data plane is gone", Duration::from_secs(10), || {
        svc.plane_pid().is_none()
    });
    let (code, v) = svc.release("v3");
    assert_eq!(code, 5, "blocked: {v}");
    assert!(
        v["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("--canary"),
        "{v}"
    );
    assert_eq!(
        svc.plane_pid(),
        None,
        "nothing started by the refused release"
    );
}

/// Regression (review): two `rampart run`s of one service from one directory both
/// touched its data plane (sticky salt, uncounted token) before one found the other's
/// release. The second is refused at once, naming the first, touching nothing.
#[test]
fn a_second_run_of_a_service_is_refused_before_it_touches_anything() {
    let svc = Service::halting_without_load("twice");
    let (code, v) = svc.release("v1");
    assert_eq!(code, 0, "{v}");
    let out = svc.stop();
    assert!(out.status.success(), "{out:?}");
    // Another run holds the service (as a run in another terminal would).
    let path = svc.state.join("locks/twice.run");
    let held = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap();
    held.lock().unwrap();
    std::fs::write(&path, "rampart process 4242").unwrap();
    let (code, v) = svc.release("v2");
    assert_eq!(code, 5, "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rampart process 4242"), "{v}");
    assert_eq!(svc.plane_pid(), None, "the stopped service stayed stopped");
    assert!(svc.file("stopped").exists());
    drop(held);
    // Once it is free, the release runs (and, without load, halts on its own).
    let (code, v) = svc.release("v2");
    assert_eq!((code, v["outcome"].as_str()), (4, Some("halted")), "{v}");
}

/// Regression (review): a release refused on its input (here a migration file that
/// does not parse) had already started a stopped service's data plane again, and
/// reset its sticky salt and uncounted token, before it refused.
#[test]
fn a_release_refused_on_its_input_leaves_a_stopped_service_stopped() {
    let svc = Service::new("refused");
    let (code, v) = svc.release("v1");
    assert_eq!(code, 0, "{v}");
    let out = svc.stop();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(svc.plane_pid(), None);
    let text = std::fs::read_to_string(&svc.policy).unwrap();
    std::fs::write(
        &svc.policy,
        format!("{text}migrations:\n  dir: migrations/{{version}}\n  command: [\"true\"]\n"),
    )
    .unwrap();
    let shipped = svc.policy.parent().unwrap().join("migrations/v2");
    std::fs::create_dir_all(&shipped).unwrap();
    std::fs::write(shipped.join("001.sql"), "CREATE TABL half (;\n").unwrap();
    let (code, v) = svc.release("v2");
    assert_eq!(code, 2, "{v}");
    assert_eq!(svc.plane_pid(), None, "the data plane stayed stopped");
    assert!(svc.file("stopped").exists());
}

/// The data plane a `--stop-after` release stopped comes back with its saved routes,
/// the winner as its canary at 100 %: no leftover of a halt, so the next release starts.
#[test]
fn a_release_after_a_stopped_promoted_one_is_not_blocked() {
    let svc = Service::halting_without_load("after-stop");
    let out = svc.run("v1").arg("--stop-after").output().unwrap();
    let (code, v) = report(&out);
    assert_eq!(code, 0, "{v}");
    // No load: it halts on its own no data, having started.
    let (code, v) = svc.release("v2");
    assert_eq!((code, v["outcome"].as_str()), (4, Some("halted")), "{v}");
}

/// Regression (review): `--metrics-listen` on an address already in use was found
/// only once the release had started a stopped service's data plane again (and reset
/// its sticky salt and uncounted token). The address is bound first now.
#[test]
fn a_metrics_address_in_use_leaves_a_stopped_service_stopped() {
    let svc = Service::new("metrics-taken");
    let (code, v) = svc.release("v1");
    assert_eq!(code, 0, "{v}");
    let out = svc.stop();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(svc.plane_pid(), None);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let out = svc
        .run("v2")
        .args(["--metrics-listen", &listen])
        .output()
        .unwrap();
    let (code, v) = report(&out);
    assert_eq!(code, 1, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("/metrics cannot listen on"), "{v}");
    assert_eq!(svc.plane_pid(), None, "the data plane stayed stopped");
    assert!(svc.file("stopped").exists());
}

/// Starts stable processes of v1 and v2 for `svc` and records them, as a state with
/// no version on record as serving would leave them (rampart's own deploys replace a
/// replica of another version, so the test makes the state rather than a release).
/// The processes run while the guards live.
fn stable_processes_of_two_versions(svc: &Service) -> Vec<common::servers::Daemon> {
    use common::servers::SpawnGuarded as _;
    let mut records = Vec::new();
    let mut running = Vec::new();
    for version in ["v1", "v2"] {
        let port = free_port();
        let daemon = Command::new(exe())
            .args(["sample-service", "--port", &port.to_string()])
            .args(["--version", version])
            .env("RAMPART_SERVICE", &svc.name)
            .env("RAMPART_VARIANT", "stable")
            .stdout(Stdio::null())
            .spawn_guarded();
        let pid = daemon.0.id();
        let started = rampart_adapters::process::start_time(pid).unwrap();
        records.push(serde_json::json!({
            "version": version, "pid": pid, "port": port, "started": started
        }));
        running.push(daemon);
    }
    let dir = svc.state.join("processes");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(format!("{}.stable.json", svc.name)),
        serde_json::to_string(&records).unwrap(),
    )
    .unwrap();
    running
}

/// Regression (review): with no version on record as serving and stable processes of
/// two versions, the release asked for `--stable` only after it had started the
/// service's data plane.
#[test]
fn stable_processes_of_two_versions_refuse_before_the_data_plane_starts() {
    let svc = Service::new("ambiguous");
    let _running = stable_processes_of_two_versions(&svc);
    let (code, v) = svc.release("v3");
    assert_eq!(code, 5, "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("run v1, v2") && reason.contains("--stable VERSION"),
        "{v}"
    );
    assert_eq!(svc.plane_pid(), None, "no data plane was started");
    assert!(
        !svc.file("json").exists(),
        "no data plane state was written"
    );
}

/// Regression: a flag release in the same state was refused with the generic
/// "pass `--stable`" (exit 5), which a flag release cannot use (it runs on the
/// version serving, whatever `--stable` says). It gets the flag release's own
/// refusal (exit 2), before anything starts.
#[test]
fn a_flag_release_on_stable_processes_of_two_versions_says_why_it_cannot_run() {
    let svc = Service::new("flag-ambiguous");
    let text = std::fs::read_to_string(&svc.policy).unwrap();
    let canary =
        "strategy:\n  canary:\n    steps: [{weight: 20, bake: 2s}, {weight: 50, bake: 2s}]\n";
    assert!(text.contains(canary));
    let flag = "strategy:\n  flag: {flag: f, steps: [{weight: 20, bake: 2s}]}\nflags:\n  define: [{name: f, default: false}]\n";
    std::fs::write(&svc.policy, text.replace(canary, flag)).unwrap();
    let _running = stable_processes_of_two_versions(&svc);
    let (code, v) = svc.release("v1");
    assert_eq!((code, v["error"].as_str()), (2, Some("invalid")), "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("several versions (v1, v2)") && message.contains("flag release"),
        "{v}"
    );
    assert_eq!(svc.plane_pid(), None, "no data plane was started");
    assert!(
        !svc.file("json").exists(),
        "no data plane state was written"
    );
}

/// Regression (review): a running data plane that listens or keeps users otherwise
/// than the policy says refuses the release (exit 2), but only after the release had
/// defined the policy's flags in the store (what the flag endpoint answers
/// applications). A refused release defines nothing now.
#[test]
fn a_data_plane_the_policy_does_not_match_refuses_before_the_flags_are_defined() {
    let svc = Service::halting_without_load("mismatch");
    let (code, v) = svc.release("v1");
    assert_eq!(code, 0, "{v}");
    assert!(svc.plane_pid().is_some(), "the data plane keeps serving");
    let text = std::fs::read_to_string(&svc.policy)
        .unwrap()
        .replace("sticky: {header: x-user}", "sticky: {header: x-tenant}");
    std::fs::write(
        &svc.policy,
        format!("{text}flags:\n  define:\n    - {{name: new-checkout, default: true}}\n"),
    )
    .unwrap();
    let (code, v) = svc.release("v2");
    assert_eq!(code, 2, "{v}");
    let message = v["message"].as_str().unwrap_or_default();
    assert!(message.contains("Stop the service first"), "{v}");
    let conn = rusqlite::Connection::open(svc.state.join("rampart.db")).unwrap();
    let flags: i64 = conn
        .query_row(
            "SELECT count(*) FROM flags WHERE service = ?1",
            [&svc.name],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(flags, 0, "no flag was defined by the refused release");
}

/// Regression (review): the flag endpoint's address was bound before the release
/// reached its data plane, but served only once the data plane was up: applications
/// connected and got no answer for as long as that took (up to 15 s for a data plane
/// that starts). It serves what the store holds from the moment it is bound now. Here
/// the release is held where it reaches the data plane: one "runs" (its lock is held)
/// whose admin socket never answers.
#[test]
fn the_flag_endpoint_answers_while_the_release_reaches_its_data_plane() {
    use std::io::{Read as _, Write as _};
    let svc = Service::new("flags-early");
    let flag_port = free_port();
    let text = std::fs::read_to_string(&svc.policy).unwrap();
    std::fs::write(
        &svc.policy,
        format!(
            "{text}flags:\n  listen: \"127.0.0.1:{flag_port}\"\n  define:\n    - {{name: new-checkout, default: false}}\n"
        ),
    )
    .unwrap();
    std::fs::create_dir_all(svc.state.join("dataplane")).unwrap();
    let lock = std::fs::File::create(svc.file("lock")).unwrap();
    lock.lock().unwrap();
    std::fs::write(svc.file("token"), "never-answered\n").unwrap();
    let _silent = std::os::unix::net::UnixListener::bind(svc.file("sock")).unwrap();
    let mut release = svc
        .run("v1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    until(
        "the flag endpoint is bound",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", flag_port)).is_ok(),
    );
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", flag_port)).unwrap();
    conn.write_all(b"GET /flags HTTP/1.1\r\nHost: flags\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    let _ = conn.read_to_string(&mut answer);
    let still_held = release.try_wait().unwrap().is_none();
    let _ = release.kill();
    let _ = release.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(still_held, "the release was still reaching its data plane");
}

/// A flag release after a halt that left users on a canary: the check for that
/// leftover skipped flag releases, whose data plane then replaced the canary's
/// backends with stable's processes (moving its users, unasked and unaudited) and left
/// the canary's processes running for nobody. Refused as any other release is.
#[test]
fn a_flag_release_does_not_start_on_a_canary_left_with_users() {
    let svc = Service::halting_without_load("leftover-flag");
    let (code, v) = svc.release("v1");
    assert_eq!(code, 0, "{v}");
    let (code, v) = svc.release("v2");
    assert_eq!((code, v["outcome"].as_str()), (4, Some("halted")), "{v}");
    let routes = || -> serde_json::Value {
        let text = std::fs::read_to_string(svc.file("json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["routes"].clone()
    };
    let before = routes();
    assert!(before["weight"].as_f64().unwrap() > 0.0, "{before}");
    let text = std::fs::read_to_string(&svc.policy).unwrap();
    let flagged = text.replace(
        "strategy:\n  canary:\n",
        "flags:\n  define: [{name: new-checkout, default: false}]\nstrategy:\n  flag:\n    flag: new-checkout\n",
    );
    assert_ne!(flagged, text);
    std::fs::write(&svc.policy, flagged).unwrap();
    // A flag release runs the version serving.
    let (code, v) = svc.release("v1");
    assert_eq!(
        code, 5,
        "a flag release started on the leftover canary: {v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("--canary"), "{v}");
    assert_eq!(routes(), before, "nothing moved");
}
