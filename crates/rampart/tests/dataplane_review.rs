#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Adversarial review of the out-of-process data plane (docs/dataplane.md): each test
//! is a defect found in review, and fails on the code it was written against. Real
//! processes and sockets on loopback; backends are small HTTP servers in the test, so
//! that a request can be held in flight exactly as long as a test needs.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use common::serve::until;
use common::servers::SpawnGuarded;
use common::svc::Svc;
use common::{exe, rampart, report};
use rampart_adapters::proxy::remote::RemotePlane;
use rampart_core::Weight;
use rampart_core::ports::TrafficRouter;
use rampart_core::release::Variant;

// === harness ===

impl Svc {
    /// `rampart proxy --state-dir STATE ...`, marked as rampart marks the data planes
    /// it starts (so the guard can stop it), its output in `log`.
    fn proxy(&self, args: &[&str], log: &str) -> Command {
        let mut c = Command::new(exe());
        c.arg("proxy")
            .arg("--state-dir")
            .arg(&self.state)
            .args(args)
            .env("RAMPART_DATAPLANE", &self.name)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.path().join(log)).unwrap())
            .stderr(std::fs::File::create(self.dir.path().join(format!("{log}.err"))).unwrap());
        c
    }

    /// Starts the data plane from the policy, with no routes, and waits until it
    /// serves; returns its pid.
    fn start_plane(&mut self, drain: &str) -> u32 {
        let policy = self.policy.clone();
        let mut cmd = self.proxy(
            &["-f", policy.to_str().unwrap(), "--drain", drain],
            "plane.log",
        );
        let d = cmd.spawn_guarded();
        let pid = d.id();
        self.started.push(d);
        until("the data plane serves", Duration::from_secs(30), || {
            self.lock_pid() == Some(pid) && self.file("sock").exists() && self.answers()
        });
        pid
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn lock_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.file("lock"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|pid| alive(*pid))
    }

    fn answers(&self) -> bool {
        TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    fn stop(&self) -> std::process::Output {
        rampart()
            .args(["stop", "--state-dir"])
            .arg(&self.state)
            .arg("-f")
            .arg(&self.policy)
            .output()
            .unwrap()
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A version in the test: answers every request `200` with its name, or holds each
/// one (with its connection) until it is opened.
struct Backend {
    addr: SocketAddr,
    /// Requests whose head arrived.
    got: Arc<AtomicU64>,
    gate: Arc<(Mutex<bool>, Condvar)>,
    stop: Arc<AtomicBool>,
}

impl Backend {
    fn start(name: &'static str, held: bool) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let got = Arc::new(AtomicU64::new(0));
        let gate = Arc::new((Mutex::new(!held), Condvar::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (g, gt, st) = (got.clone(), gate.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let (g, gt) = (g.clone(), gt.clone());
                std::thread::spawn(move || {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match conn.read(&mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    g.fetch_add(1, Ordering::SeqCst);
                    let (lock, cv) = &*gt;
                    let mut open = lock.lock().unwrap();
                    while !*open {
                        open = cv.wait(open).unwrap();
                    }
                    drop(open);
                    let body = format!("{name}\n");
                    let _ = conn.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    );
                });
            }
        });
        Backend {
            addr,
            got,
            gate,
            stop,
        }
    }

    fn open(&self) {
        let (lock, cv) = &*self.gate;
        *lock.lock().unwrap() = true;
        cv.notify_all();
    }

    fn got(&self) -> u64 {
        self.got.load(Ordering::SeqCst)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.open();
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

/// Routes every request to the canary: `stable` and `canary` the two versions' one
/// endpoint each.
fn all_on_canary(
    rt: &tokio::runtime::Runtime,
    plane: &RemotePlane,
    stable: SocketAddr,
    canary: SocketAddr,
) {
    rt.block_on(plane.set_backends(Variant::Stable, &[stable]))
        .unwrap();
    rt.block_on(plane.set_backends(Variant::Canary, &[canary]))
        .unwrap();
    rt.block_on(plane.set_weight(Weight::FULL, &[])).unwrap();
}

/// One GET through the service's address on a thread: its whole answer, or what
/// broke it.
fn get_on_thread(port: u16) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || get(port))
}

fn get(port: u16) -> String {
    let mut s = match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => s,
        Err(e) => return format!("connect: {e}"),
    };
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    if let Err(e) = s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n") {
        return format!("write: {e}");
    }
    let mut out = String::new();
    match s.read_to_string(&mut out) {
        Ok(_) => out,
        Err(e) => format!("{out}read: {e}"),
    }
}

/// Opens a kept-alive connection through the address and leaves it idle after one
/// answer: the data plane it was accepted by has an open connection to drain.
fn idle_connection(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    s
}

/// Takes the data plane over with `rampart proxy --service NAME --take-over` and waits
/// until the old one has handed its socket over; returns the new one's pid.
fn take_over(svc: &mut Svc, old_log: &str) -> u32 {
    let name = svc.name.clone();
    let mut cmd = svc.proxy(&["--service", &name, "--take-over"], "newer.log");
    let d = cmd.spawn_guarded();
    let pid = d.id();
    svc.started.push(d);
    until(
        "the old data plane handed its socket over",
        Duration::from_secs(30),
        || {
            svc.log(old_log)
                .contains("handed the listening socket over")
        },
    );
    pid
}

// === the defects ===

/// docs/dataplane.md, "Stopping: the drain": "On SIGTERM ... the data plane closes its
/// listening socket first ..., lets every request in flight finish, and exits when the
/// last connection has closed, or at `--drain`". And "What survives what": the data
/// plane upgraded in place (`--take-over`): users see nothing.
///
/// A data plane that took over serves from the moment it has the socket (and tells
/// systemd it is the main process), but it installs its SIGTERM handler only once it
/// holds the lock, i.e. after the old one has finished draining (up to `--drain`,
/// 30 s). A SIGTERM meanwhile (`systemctl stop` after a `systemctl reload`) kills it
/// on the spot: the requests in flight through it are cut.
#[test]
fn a_data_plane_that_took_over_drains_its_requests_in_flight_on_sigterm() {
    let mut svc = Svc::new("sigterm");
    let rt = rt();
    svc.start_plane("20s");
    let fast = Backend::start("fast", false);
    let held = Backend::start("held", true);
    let plane = svc.remote(&rt);
    rt.block_on(plane.set_backends(Variant::Stable, &[fast.addr]))
        .unwrap();
    // The old data plane keeps an open connection: it drains for a while after the
    // hand-over (as it does under any load).
    let _idle = idle_connection(svc.port);
    let newer = take_over(&mut svc, "plane.log.err");
    // Through the newer one, a request in flight to the version.
    drop(plane);
    let plane = svc.remote(&rt);
    rt.block_on(plane.set_backends(Variant::Stable, &[held.addr]))
        .unwrap();
    let client = get_on_thread(svc.port);
    until(
        "the request reached the version",
        Duration::from_secs(10),
        || held.got() >= 1,
    );
    signal(newer, "-TERM");
    // The data plane is draining (it would exit only after this request's answer);
    // the version answers now.
    until(
        "the newer data plane is stopping, or gone",
        Duration::from_secs(10),
        || !svc.answers() || !alive(newer),
    );
    held.open();
    let answer = client.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("held"),
        "the request in flight through the data plane that took over was cut by SIGTERM: {answer:?}; its log: {}",
        svc.log("newer.log.err")
    );
}

/// docs/dataplane.md, "Routes": `POST /drain` waits until a variant, or some
/// endpoints, have nothing in flight (what a controller calls before it stops a
/// version's processes: "While a variant drains ... requests in flight are waited
/// for"); and "the data plane upgraded in place: users see nothing".
///
/// After a take-over, the requests in flight are in the old process, which drains
/// them for up to `--drain`; the controller's drain goes to the new one, which has
/// none in flight and answers `drained: true` at once. The controller then stops the
/// version's processes under a request a user is still waiting for.
#[test]
fn a_drain_after_a_take_over_waits_for_the_requests_the_old_data_plane_has_in_flight() {
    let mut svc = Svc::new("drained");
    let rt = rt();
    svc.start_plane("20s");
    let fast = Backend::start("stable", false);
    let held = Backend::start("canary", true);
    let plane = svc.remote(&rt);
    all_on_canary(&rt, &plane, fast.addr, held.addr);
    let client = get_on_thread(svc.port);
    until(
        "the request reached the canary",
        Duration::from_secs(10),
        || held.got() >= 1,
    );
    take_over(&mut svc, "plane.log.err");
    // A rollback: the canary's share to 0, then its requests in flight drained before
    // its processes stop.
    rt.block_on(plane.set_weight(Weight::ZERO, &[])).unwrap();
    let drained = rt.block_on(plane.drain(Variant::Canary, Duration::from_secs(2)));
    let endpoints = rt.block_on(plane.drain_endpoints(&[held.addr], Duration::from_secs(2)));
    held.open();
    let answer = client.join().unwrap();
    assert!(answer.contains("canary"), "{answer:?}");
    assert!(
        drained.is_err() && endpoints.is_err(),
        "the data plane said the canary was drained ({drained:?}, endpoints {endpoints:?}) while a request to it was in flight"
    );
}

/// The other side of the test above: a drain after a take-over is done once neither
/// process has a request in flight to what is drained. The old process goes on
/// draining its open connections for up to `--drain` (20 s here), and a drain that
/// waited for it to exit reported "still in flight" at its timeout with nothing in
/// flight anywhere (the controller then logs a failed drain, or waits out `--drain`
/// at every step of a release run right after an upgrade of rampart).
#[test]
fn a_drain_after_a_take_over_is_done_once_neither_data_plane_has_the_requests() {
    let mut svc = Svc::new("settles");
    let rt = rt();
    svc.start_plane("20s");
    let stable = Backend::start("stable", false);
    let canary = Backend::start("canary", false);
    let plane = svc.remote(&rt);
    all_on_canary(&rt, &plane, stable.addr, canary.addr);
    // A kept-alive connection keeps the old process draining after the take-over.
    let _user = idle_connection(svc.port);
    let old = svc.lock_pid().unwrap();
    take_over(&mut svc, "plane.log.err");

    rt.block_on(plane.set_weight(Weight::ZERO, &[])).unwrap();
    let drained = rt.block_on(plane.drain(Variant::Canary, Duration::from_secs(5)));
    let endpoints = rt.block_on(plane.drain_endpoints(&[canary.addr], Duration::from_secs(5)));
    assert!(
        alive(old),
        "the old data plane exited: the test no longer covers a drain while it drains"
    );
    assert!(
        drained.is_ok() && endpoints.is_ok(),
        "nothing was in flight to the canary, yet the drain failed ({drained:?}, endpoints {endpoints:?})"
    );
}

/// docs/dataplane.md, "What survives what": requests that arrive before a version is
/// ready wait for it (`--hold`) instead of getting an error from rampart; "A release
/// brings a service stopped with `rampart stop` back" (and after a reboot the next
/// release brings it back the same way).
///
/// `rampart stop` stops the versions but leaves their endpoints in the data plane's
/// saved routes. The release that brings the service back starts the data plane from
/// those routes first, then starts the stable version again (on a new port): until the
/// routes follow it, every request is sent to a port nothing listens on and answered
/// `502` by rampart itself, where a data plane without routes would have held it
/// until the version was ready.
#[test]
fn a_release_bringing_a_stopped_service_back_answers_no_request_with_an_error_of_its_own() {
    // The version takes a second to start, as a real one does.
    let command = format!(
        r#"["sh", "-c", "sleep 1; exec {exe} sample-service --port {{port}} --version {{version}}"]"#,
        exe = exe()
    );
    let svc = Svc::with_command("broughtback", &command);
    let (code, v) = report(&svc.run("v1").output().unwrap());
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let out = svc.stop();
    assert!(out.status.success(), "{out:?}");
    assert!(!svc.answers());

    let mut run = svc.run("v2").stdout(Stdio::null()).spawn().unwrap();
    until(
        "the data plane listens again",
        Duration::from_secs(30),
        || svc.answers(),
    );
    // A user's requests, one every 20 ms from the moment it listens, until the
    // service answers.
    let mut answers = Vec::new();
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = get(svc.port);
        let ok = answer.starts_with("HTTP/1.1 200");
        answers.push(answer.lines().next().unwrap_or("").to_string());
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        if ok || now > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20)); // the user's pace
    }
    let _ = run.kill();
    let _ = run.wait();
    let failed: Vec<&String> = answers
        .iter()
        .filter(|a| !a.starts_with("HTTP/1.1 200"))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed while the release brought the stopped service back (the last: {:?}): {:?}",
        failed.len(),
        answers.len(),
        answers.last(),
        failed.first()
    );
}

/// docs/dataplane.md, "Who may drive it": "A second data plane for the same service is
/// refused while the first holds the lock (\"a data plane for SERVICE already runs (pid
/// N)\", exit 3)", the exit code a service manager is told not to restart on
/// (`RestartPreventExitStatus=3`).
///
/// Whether a data plane runs is read by taking the lock shared for a moment
/// (`PlaneFiles::is_running`, which `rampart run`, `stop`, `status` and `serve` call);
/// a data plane that starts in that moment finds the lock taken and exits 3, saying
/// another one runs (with the pid of one long gone) while none does. Under systemd it
/// then stays down. Here a controller looks in a loop while the data plane starts.
#[test]
fn a_controller_looking_whether_the_data_plane_runs_never_makes_its_start_fail() {
    let svc = Svc::new("looked");
    let files = rampart_adapters::proxy::plane::PlaneFiles::new(&svc.state, &svc.name);
    files.create_dir().unwrap();
    let looking = Arc::new(AtomicBool::new(true));
    let looker = {
        let (files, looking) = (files.clone(), looking.clone());
        std::thread::spawn(move || {
            while looking.load(Ordering::Relaxed) {
                let _ = files.is_running();
            }
        })
    };
    let mut refused = Vec::new();
    let mut starts = 0;
    while starts < 100 && refused.is_empty() {
        starts += 1;
        let mut cmd = svc.proxy(&["-f", svc.policy.to_str().unwrap()], "start.log");
        let mut d = cmd.spawn_guarded();
        let pid = d.id();
        let mut exited = None;
        until(
            "the data plane serves or exits",
            Duration::from_secs(30),
            || {
                exited = d.try_wait().unwrap();
                exited.is_some() || (svc.lock_pid() == Some(pid) && svc.answers())
            },
        );
        if let Some(status) = exited {
            refused.push(format!("{status}: {}", svc.log("start.log.err").trim()));
        }
        d.stop();
        until("the address is free", Duration::from_secs(10), || {
            !svc.answers()
        });
    }
    looking.store(false, Ordering::Relaxed);
    looker.join().unwrap();
    assert!(
        refused.is_empty(),
        "start {starts} of a data plane, none other running, was refused: {:?}",
        refused.first()
    );
}

/// docs/dataplane.md, "Routes": `GET /counters` is cumulative, "which the controller
/// turns into each interval's sample"; "What survives what": a controller killed
/// mid-release, "the next run resumes the release". The project's rule: a crashed
/// controller never makes a verdict judge wrong numbers.
///
/// A controller that attached took the counts at that moment as its base: whatever
/// the canary answered while no controller ran was in no interval, and a canary that
/// failed every request its users sent while the controller was down was judged on
/// the requests after the restart alone, and promoted. Now the first interval after
/// the resume counts from the last measurement, and fails on those errors; with
/// `failure_limit: 1` that rolls the release back (with the default of 2 failing
/// intervals in a row, one failing interval is one, however long it spans).
#[test]
fn a_resumed_release_judges_the_errors_its_canary_served_while_no_controller_ran() {
    let mut svc = Svc::new("unjudged");
    // v2 fails every request from 4 s to 8 s after it starts.
    let text = std::fs::read_to_string(&svc.policy).unwrap().replace(
        r#"env: {SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "2"}"#,
        r#"env: {SAMPLE_ERROR_RATE: "0", SAMPLE_LATENCY_MS: "2", SAMPLE_SPIKE: "v2=4000:4000:100%"}"#,
    );
    let text = text.replace(
        "      judge: {max: 5%}",
        "      judge: {max: 5%}\n      failure_limit: 1",
    );
    assert!(text.contains("failure_limit: 1"), "{text}");
    std::fs::write(&svc.policy, text).unwrap();
    let (code, v) = report(&svc.run("v1").output().unwrap());
    assert_eq!((code, v["outcome"].as_str()), (0, Some("promoted")), "{v}");
    let load_rt = common::runtime();
    let (load, _stats) = common::start_load(&load_rt, svc.port, 100);
    let rt = rt();
    let plane = svc.remote(&rt);

    let controller = svc.run("v2").stdout(Stdio::null()).spawn_guarded();
    svc.started.push(controller);
    until(
        "the canary has its first share",
        Duration::from_secs(30),
        || {
            rt.block_on(plane.table())
                .is_ok_and(|t| !t.canary.is_empty() && t.weight > Weight::ZERO)
        },
    );
    // The controller dies before the canary's errors begin.
    let killed = svc.started.pop().unwrap();
    drop(killed);
    let canary = |plane: &RemotePlane| rt.block_on(plane.refresh()).unwrap().canary;
    until(
        "the canary fails its users",
        Duration::from_secs(30),
        || canary(&plane).errors >= 20,
    );
    // ... until it is healthy again.
    let mut last = canary(&plane);
    until("the canary answers again", Duration::from_secs(30), || {
        let now = canary(&plane);
        let healthy = now.errors == last.errors && now.requests >= last.requests + 20;
        if now.errors != last.errors {
            last = now;
        }
        healthy
    });
    let failed = canary(&plane);
    let (code, v) = report(&svc.run("v2").output().unwrap());
    load.abort();
    let after_resume: Vec<&str> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .skip_while(|e| e["kind"] != "resumed")
        .filter(|e| e["kind"] == "analysis")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        after_resume.first().is_some_and(|m| m.contains("FAIL")),
        "the first interval after the resume did not judge the errors of the time without a controller: {after_resume:?}"
    );
    assert_ne!(
        v["outcome"].as_str(),
        Some("promoted"),
        "exit {code}: the canary failed {} of its {} requests while no controller ran, and the resumed release promoted it: {v}",
        failed.errors,
        failed.requests
    );
}

/// Reads one HTTP/1.1 answer (head and `content-length` body) off `s`.
fn read_answer(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => got.push(byte[0]),
            Ok(_) => return format!("{}<closed>", String::from_utf8_lossy(&got)),
            Err(e) => return format!("{}<{e}>", String::from_utf8_lossy(&got)),
        }
    }
    let head = String::from_utf8_lossy(&got).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    if let Err(e) = s.read_exact(&mut body) {
        return format!("{head}<{e}>");
    }
    head + &String::from_utf8_lossy(&body)
}

/// docs/dataplane.md: the data plane upgraded in place: users see nothing; "After a
/// `--take-over`, the old process instead answers each open HTTP/1.1 connection's next
/// request with `Connection: close`"; and the rule that rampart never moves traffic by
/// mistake: a rollback (the canary's share to 0, its endpoints out of the routes)
/// sends no request to the canary from then on.
///
/// The old process stops taking admin requests at the hand-over, but goes on routing
/// the next request of every open connection (for up to `--drain`) by the routes it
/// had then. A rollback made through the new one does not reach it: a user on a
/// kept-alive connection is still sent to the canary after the rollback, which sees
/// nothing of it (the new process's `canary_routed_since_closed` stays 0), and gets a
/// `502` from rampart once the canary's processes are stopped.
#[test]
fn after_a_take_over_no_request_goes_to_a_canary_the_routes_no_longer_have() {
    let mut svc = Svc::new("frozen");
    let rt = rt();
    svc.start_plane("20s");
    let stable = Backend::start("stable", false);
    let canary = Backend::start("canary", false);
    let plane = svc.remote(&rt);
    all_on_canary(&rt, &plane, stable.addr, canary.addr);
    // A user's kept-alive connection, on the canary.
    let mut user = TcpStream::connect(("127.0.0.1", svc.port)).unwrap();
    user.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    user.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let first = read_answer(&mut user);
    assert!(first.contains("canary"), "{first:?}");

    take_over(&mut svc, "plane.log.err");
    // The release rolls back through the data plane now serving: everything to
    // stable, the canary out of the routes, its processes stopped.
    rt.block_on(plane.set_weight(Weight::ZERO, &[])).unwrap();
    rt.block_on(plane.set_backends(Variant::Canary, &[]))
        .unwrap();
    assert_eq!(rt.block_on(plane.table()).unwrap().canary, Vec::new());
    drop(canary);

    user.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        .unwrap();
    let second = read_answer(&mut user);
    assert!(
        second.starts_with("HTTP/1.1 200") && second.contains("stable"),
        "a request after the rollback went to the rolled-back canary: {second:?}"
    );
}

/// docs/dataplane.md, "Stopping: the drain": "On SIGTERM, SIGINT, `POST /shutdown` or
/// `rampart stop`, the data plane closes its listening socket first (a client that
/// connects now is refused at once, not queued)".
///
/// A data plane that took over answers `POST /shutdown` (`{"stopping": true}`) while
/// the old one still drains, but acts on it only once it holds the lock, i.e. once the
/// old one has exited (up to `--drain`, 30 s): until then it goes on accepting and
/// serving new connections, and `rampart stop`, which waits at most 60 s for the data
/// plane to exit, can give up with two drains to wait for.
#[test]
fn a_data_plane_that_took_over_stops_accepting_as_soon_as_it_is_told_to_stop() {
    let mut svc = Svc::new("shutdown");
    let rt = rt();
    svc.start_plane("20s");
    let stable = Backend::start("stable", false);
    let plane = svc.remote(&rt);
    rt.block_on(plane.set_backends(Variant::Stable, &[stable.addr]))
        .unwrap();
    let _idle = idle_connection(svc.port);
    take_over(&mut svc, "plane.log.err");
    rt.block_on(plane.shutdown()).unwrap();
    until(
        "the data plane that was told to stop refuses new connections",
        Duration::from_secs(10),
        || !svc.answers(),
    );
}
