#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

//! Review 5 of the out-of-process data plane's in-place upgrade (`--take-over`):
//! real processes and sockets on loopback.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::exe;
use common::serve::until;
use common::servers::SpawnGuarded;
use common::svc::Svc;
use rampart_core::ports::TrafficRouter;
use rampart_core::release::Variant;

impl Svc {
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

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn lock_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.file("lock"))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|pid| alive(*pid))
    }

    /// `rampart proxy --service NAME --take-over`, its output in `log`; returns its pid.
    fn take_over(&mut self, log: &str) -> u32 {
        let name = self.name.clone();
        let mut cmd = self.proxy(&["--service", &name, "--take-over"], log);
        let d = cmd.spawn_guarded();
        let pid = d.id();
        self.started.push(d);
        pid
    }
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit(')')
            .next()
            .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
    })
}

/// A version answering every request `200 stable` on a kept-alive connection.
fn version() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                loop {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                    if head.ends_with(b"\r\n\r\n") {
                        head.clear();
                        if conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 7\r\n\r\nstable\n")
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

/// A kept-alive connection left idle after one answer: the data plane that accepted
/// it has a connection to drain (until the idle timeout, 60 s by default).
fn idle_connection(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    s
}

/// docs/dataplane.md, "Starting, upgrading and stopping it": `--take-over` connects to
/// the running data plane's hand-over socket, which sends its listening socket and
/// drains; "the new process serves from the moment it has the socket". A data plane
/// that took over answers a hand-over request only once it holds the lock, i.e. once
/// the process it took over from has drained and exited (`agent.rs`: `handovers` is
/// polled only in the loop after `wait_for_lock`). A second upgrade while the first
/// old process still drains (an idle keep-alive client or a WebSocket holds it for
/// up to `--drain`) hangs for that whole drain, and fails outright once the drain is
/// longer than the 60 s the taker waits for the socket; the request it left queued is
/// then taken up by the serving process, which closes its admin endpoint for it.
#[test]
fn a_second_take_over_while_the_first_old_data_plane_drains_gets_the_socket() {
    let mut svc = Svc::new("twice");
    let policy = svc.policy.clone();
    let mut cmd = svc.proxy(&["-f", policy.to_str().unwrap(), "--drain", "90s"], "a.log");
    let a = cmd.spawn_guarded();
    let first = a.id();
    svc.started.push(a);
    let port = svc.port;
    until("the data plane serves", Duration::from_secs(30), || {
        svc.lock_pid() == Some(first)
            && svc.file("sock").exists()
            && TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let plane = svc.remote(&rt);
    rt.block_on(plane.set_backends(Variant::Stable, &[version()]))
        .unwrap();
    // Keeps the first data plane draining after it hands over.
    let _user = idle_connection(port);

    svc.take_over("b.log");
    until(
        "the first take-over: the socket handed over",
        Duration::from_secs(30),
        || {
            svc.log("a.log.err")
                .contains("handed the listening socket over")
        },
    );
    // The second upgrade: a take-over from the process that took over.
    let third = svc.take_over("c.log");
    #[allow(clippy::disallowed_methods)] // the test's own time limit
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !svc
        .log("b.log.err")
        .contains("handed the listening socket over")
    {
        #[allow(clippy::disallowed_methods)] // the test's own time limit
        let now = std::time::Instant::now();
        assert!(
            now < deadline,
            "the second take-over got no socket within 20 s while the first old data plane (alive: {}) drains; third alive: {}; second's stderr: {:?}; third's stderr: {:?}",
            alive(first),
            alive(third),
            svc.log("b.log.err"),
            svc.log("c.log.err")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        alive(third),
        "the third data plane exited: {}",
        svc.log("c.log.err")
    );
    // The third serves new clients, by the routes the second had.
    let _served = idle_connection(port);
    assert!(
        alive(first),
        "the first data plane exited: the test no longer covers a take-over during its drain"
    );
}
