#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the service's life across its controllers (docs/dataplane.md
//! "What survives what", docs/operations.md "The controller died"): the versions and
//! the data plane outlive `rampart run`, and users see no failed request and no
//! version they were not meant to see. Each test is a defect found in review and
//! fails on the code it was written against. Real processes and sockets on loopback.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::serve::until;
use common::servers::SpawnGuarded as _;
use common::svc::Svc;
use common::{free_port, report};
use rampart_core::Weight;
use rampart_core::ports::TrafficRouter;
use rampart_core::release::Variant;

impl Svc {
    fn records(&self, variant: &str) -> PathBuf {
        self.state
            .join("processes")
            .join(format!("{}.{variant}.json", self.name))
    }

    /// Replaces the policy's `strategy:` section (up to `analysis:`) with `strategy`.
    fn set_strategy(&self, strategy: &str) {
        let text = std::fs::read_to_string(&self.policy).unwrap();
        let (head, rest) = text.split_once("strategy:\n").unwrap();
        let (_, tail) = rest.split_once("analysis:\n").unwrap();
        std::fs::write(
            &self.policy,
            format!("{head}strategy:\n{strategy}analysis:\n{tail}"),
        )
        .unwrap();
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Contract: docs/strategies.md "Full": the new version "waits for an approval ...
/// then takes all traffic" (and a canary's first user comes at its first step); the
/// README's "users see no version they were not meant to see" before the analysis.
///
/// After a promotion `rampart run` hands the winner over (`run.rs` `hand_over`: its
/// records move to stable, then the routes go to weight 0 with the winner as stable).
/// When that hand-over does not happen (the controller is killed between the release's
/// end being recorded and the hand-over, or the hand-over fails: "WARNING: the winner
/// serves, but as the canary ...; the next release starts it again as stable"), the
/// data plane is left at weight 100 % on the canary, and the winner's records name it
/// the canary. Nothing in the next `rampart run` puts the weight back to 0
/// (`leftover_canary` lets a promoted last release through; `rampart serve`'s restore
/// rebases, `run` does not): its `Deploy { canary }` puts the new version's endpoints
/// into the canary slot, under that 100 %, and every user is on the unapproved,
/// unanalysed version while the release waits for its approval.
///
/// The test builds the state such a cut hand-over leaves (records and routes exactly
/// as after the promotion's `Stop { stable }`), then releases v2 with `strategy.full`
/// under load. Expected: no request answered by v2 before the approval. Observed:
/// every request after v2 is in rotation (weight 100 %).
#[test]
fn a_release_after_a_cut_hand_over_sends_no_user_to_its_version_before_the_approval() {
    after_a_cut_hand_over("cutover", false);
}

/// As above, with the winner gone too (the host lost its processes): the routes
/// still had the canary at 100 %, and the hand-over, finding nothing to hand over,
/// left them so: the new version took every user the moment it was ready. The
/// routes go to stable (the new release starts it again) before anything else.
#[test]
fn a_release_after_a_cut_hand_over_whose_winner_died_sends_no_user_to_its_version() {
    after_a_cut_hand_over("cutdead", true);
}

fn after_a_cut_hand_over(name: &str, kill_winner: bool) {
    let mut svc = Svc::new(name);
    let (code, v) = report(&svc.run("v1").output().unwrap());
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let rt = rt();
    let plane = svc.remote(&rt);
    let table = rt.block_on(plane.table()).unwrap();
    let winner: Vec<SocketAddr> = table.stable.clone();
    assert!(!winner.is_empty() && table.canary.is_empty(), "{table:?}");

    // The state a promotion leaves before its hand-over: the winner recorded (and
    // routed) as the canary at 100 %, stable stopped and out of the routes. Each
    // change routes every request to the winner.
    std::fs::rename(svc.records("stable"), svc.records("canary")).unwrap();
    rt.block_on(plane.set_backends(Variant::Canary, &winner))
        .unwrap();
    rt.block_on(plane.set_weight(Weight::FULL, &[])).unwrap();
    rt.block_on(plane.set_backends(Variant::Stable, &[]))
        .unwrap();
    if kill_winner {
        let text = std::fs::read_to_string(svc.records("canary")).unwrap();
        let records: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
        for pid in records.iter().filter_map(|r| r["pid"].as_u64()) {
            let pid = u32::try_from(pid).unwrap();
            common::servers::kill_group(pid);
            until("the winner is gone", Duration::from_secs(20), || {
                std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
                    st.rsplit_once(')')
                        .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
                })
            });
        }
    }

    // v2, all at once after an approval nobody gives.
    svc.set_strategy("  full: {stability: 1h}\n");
    let load_rt = common::runtime();
    let (load, stats) = common::start_load(&load_rt, svc.port, 100);
    let controller = svc.run("v2").stdout(Stdio::null()).spawn_guarded();
    svc.started.push(controller);
    let mut seen = None;
    until("v2 is deployed", Duration::from_secs(60), || {
        let t = rt.block_on(plane.table()).unwrap();
        let deployed = !t.canary.is_empty() && t.canary.iter().all(|c| !winner.contains(c));
        if deployed {
            seen = Some(t);
        }
        deployed
    });
    let before = stats.canary.load(Ordering::SeqCst);
    let sent = stats.sent.load(Ordering::SeqCst);
    until("200 more requests", Duration::from_secs(60), || {
        stats.ok.load(Ordering::SeqCst) + stats.failed.load(Ordering::SeqCst) >= sent + 200
    });
    let on_v2 = stats.canary.load(Ordering::SeqCst) - before;
    let table = rt.block_on(plane.table()).unwrap();
    load.abort();
    assert_eq!(
        on_v2, 0,
        "{on_v2} of about 200 requests were answered by v2 while its release waited for an approval (routes: {table:?}; when v2 came in: {seen:?})"
    );
}

/// Contract: docs/dataplane.md "the host reboots: nothing answers until `rampart
/// serve` starts, which brings every service back on its last version" (and no user
/// is sent anywhere else).
///
/// After a reboot the ports the versions had are free for anyone: here another
/// program holds the port the stable replica had. `serve`'s restore (`restore.rs`
/// `bring_back`) starts the stable version on a new port first, and only then starts
/// the data plane (`attach`), which comes up serving its saved routes: stable on the
/// old port, the other program's. Users are sent there until `bring_back` sets the
/// new endpoints (after reading the table and checking the canary). Expected: no
/// request reaches a port that no version of the service holds. Observed: the other
/// program is sent users' requests.
#[test]
fn after_a_reboot_no_request_goes_to_the_port_a_version_had_before() {
    use common::serve::{Server, policy as served_policy, submit};
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut server = Server::start(&state);
    let ci = server.token("deployer", "ci");
    let port = free_port();
    let id = submit(&server, &ci, &served_policy("rebooted", port, ""));
    let load_rt = common::runtime();
    let (warmup, _) = common::start_load(&load_rt, port, 50);
    let end = server.wait_release(&id, &ci, Duration::from_secs(90), |v| {
        v["report"].is_object()
    });
    warmup.abort();
    assert_eq!(end["outcome"], "promoted", "{end}");
    let text = std::fs::read_to_string(state.join("processes/rebooted.stable.json")).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let old_port = u16::try_from(list[0]["port"].as_u64().unwrap()).unwrap();

    // The reboot: nothing of rampart's runs, versions included.
    let server_port = server.port;
    server.kill();
    common::stop_versions(&state);
    until("everything is down", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
            && std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err()
    });
    // Another program now holds the port the stable replica had.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", old_port)).unwrap();
    let reached = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    {
        let reached = reached.clone();
        std::thread::spawn(move || {
            for conn in squatter.incoming() {
                let Ok(mut conn) = conn else { continue };
                reached.fetch_add(1, Ordering::SeqCst);
                let mut buf = [0u8; 1024];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\nconnection: close\r\n\r\nsomeone\r\n",
                );
            }
        });
    }
    let (load, stats) = common::start_load(&load_rt, port, 500);
    let server = Server::start_on(&state, server_port);
    until("the service answers again", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let sent = stats.sent.load(Ordering::SeqCst);
    until("500 more requests", Duration::from_secs(60), || {
        stats.sent.load(Ordering::SeqCst) >= sent + 500
    });
    load.abort();
    drop(server);
    let reached = reached.load(Ordering::SeqCst);
    assert_eq!(
        reached, 0,
        "{reached} requests sent to the service after the reboot went to the other program on {old_port}, the port its stable replica had before"
    );
}

/// Regression (review of the fix above): the documented reboot path also starts the
/// data plane on its own, before `rampart serve` (the systemd unit runs `rampart proxy
/// --state-dir ... --service ...`). That path restored the saved routes as they were:
/// users were sent to the port the stable replica had before the reboot, which
/// another program holds now. A data plane started afresh routes only to replicas
/// that run (none yet: 503 until a release or `serve` brings the version back).
#[test]
fn a_data_plane_started_on_its_own_after_a_reboot_sends_nothing_to_old_ports() {
    let mut svc = Svc::new("unitboot");
    let (code, v) = report(&svc.run("v1").output().unwrap());
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let text = std::fs::read_to_string(svc.records("stable")).unwrap();
    let list: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    let old_port = u16::try_from(list[0]["port"].as_u64().unwrap()).unwrap();
    // The reboot: nothing runs, neither the data plane nor the versions.
    common::stop_versions(&svc.state);
    until("everything is down", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", svc.port)).is_err()
            && std::net::TcpStream::connect(("127.0.0.1", old_port)).is_err()
    });
    let squatter = std::net::TcpListener::bind(("127.0.0.1", old_port)).unwrap();
    squatter.set_nonblocking(true).unwrap();
    // The unit starts the data plane.
    let plane = Command::new(common::exe())
        .args(["proxy", "--state-dir"])
        .arg(&svc.state)
        .args(["--service", &svc.name])
        .stdout(Stdio::null())
        .spawn_guarded();
    svc.started.push(plane);
    until("the data plane listens", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", svc.port)).is_ok()
    });
    let load_rt = common::runtime();
    let (load, stats) = common::start_load(&load_rt, svc.port, 50);
    until("200 requests", Duration::from_secs(60), || {
        stats.sent.load(Ordering::SeqCst) >= 200
    });
    load.abort();
    let mut reached = 0;
    while squatter.accept().is_ok() {
        reached += 1;
    }
    assert_eq!(
        reached, 0,
        "{reached} connection(s) reached the program on {old_port}, the port the stable replica had before the reboot"
    );
}

/// Review: `rampart run --stop-after` ends the service with the release: it stopped
/// the versions first and the data plane after, so every request in between reached
/// a data plane with nothing behind it and was answered 502 by rampart itself. The
/// data plane stops first (its clients see the service gone, connection refused, as
/// after any stop), then the versions.
#[test]
fn stop_after_ends_the_service_without_answering_502() {
    let svc = Svc::new("stopafter");
    let (code, v) = report(&svc.run("v1").output().unwrap());
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let load_rt = common::runtime();
    let url = format!("http://127.0.0.1:{}/", svc.port);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counts = std::sync::Arc::new([
        std::sync::atomic::AtomicU64::new(0), // answered below 500
        std::sync::atomic::AtomicU64::new(0), // answered 5xx
    ]);
    let client = {
        let (stop, counts) = (stop.clone(), counts.clone());
        load_rt.spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match rampart_adapters::http::get_status(&url, Duration::from_secs(5)).await {
                    Ok(s) if s >= 500 => counts[1].fetch_add(1, Ordering::SeqCst),
                    Ok(_) => counts[0].fetch_add(1, Ordering::SeqCst),
                    // Refused or reset once the service is gone: not an answer.
                    Err(_) => 0,
                };
            }
        })
    };
    let mut run = svc.run("v2");
    run.arg("--stop-after");
    let (code, v) = report(&run.output().unwrap());
    stop.store(true, Ordering::SeqCst);
    load_rt.block_on(client).unwrap();
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let (ok, failed) = (
        counts[0].load(Ordering::SeqCst),
        counts[1].load(Ordering::SeqCst),
    );
    assert!(ok > 100, "{ok}");
    assert_eq!(
        failed, 0,
        "{failed} requests answered 5xx by rampart as the service ended ({ok} answered)"
    );
}

/// Kills every recorded replica of `variant` and waits until each is gone (a zombie
/// counts as gone).
fn kill_replicas(svc: &Svc, variant: &str) {
    let text = std::fs::read_to_string(svc.records(variant)).unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    for pid in records.iter().filter_map(|r| r["pid"].as_u64()) {
        let pid = u32::try_from(pid).unwrap();
        common::servers::kill_group(pid);
        until("the replica is gone", Duration::from_secs(20), || {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| {
                st.rsplit_once(')')
                    .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
            })
        });
    }
}

/// The stable version's only replica crashed mid-release (nothing restarts a version
/// while a release owns the service), then the on-call rolled back. The rollback moved
/// every user to the dead stable (all of them got 502 from rampart), found stable
/// unhealthy, and halted there: the rollback made things worse. A rollback's switch to
/// stable needs stable running: its missing replicas are started again first (as a
/// resume does), then the traffic moves, and the service answers.
#[test]
fn a_rollback_to_a_stable_that_died_mid_release_starts_it_again_before_moving_traffic() {
    let svc = Svc::new("deadstable");
    let (code, v) = report(&svc.run("v1").output().unwrap());
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    svc.set_strategy("  canary:\n    steps: [{weight: 20, bake: 1h}]\n");
    let rt = rt();
    let plane = svc.remote(&rt);
    let mut run = svc
        .run("v2")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn_guarded();
    until("the canary takes 20 %", Duration::from_secs(60), || {
        rt.block_on(plane.table())
            .is_ok_and(|t| !t.canary.is_empty() && t.weight == Weight::from_percent(20).unwrap())
    });
    kill_replicas(&svc, "stable");
    let rollback = common::rampart()
        .args([
            "rollback",
            "deadstable",
            "--reason",
            "on-call",
            "--state-dir",
        ])
        .arg(&svc.state)
        .output()
        .unwrap();
    assert!(
        rollback.status.code().is_some(),
        "{}",
        String::from_utf8_lossy(&rollback.stderr)
    );
    let mut stdout = Vec::new();
    std::io::Read::read_to_end(&mut run.stdout.take().unwrap(), &mut stdout).unwrap();
    let status = run.wait().unwrap();
    let (code, v) = report(&std::process::Output {
        status,
        stdout,
        stderr: Vec::new(),
    });
    assert_eq!(
        (code, v["outcome"].as_str()),
        (3, Some("rolled_back")),
        "{v}"
    );
    // Every user is on stable again, and stable answers.
    let answered = rt.block_on(rampart_adapters::http::get_status(
        &format!("http://127.0.0.1:{}/", svc.port),
        Duration::from_secs(5),
    ));
    assert_eq!(answered.ok(), Some(200), "after the rollback");
}
