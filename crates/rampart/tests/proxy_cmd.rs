//! `rampart proxy`: the embedded proxy as a stand-alone data plane, driven through its
//! token-guarded admin endpoint.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{exe, free_port, servers};
use rampart_adapters::http::{get_text, send_with};

const TOKEN: &str = "test-token-0123456789";

fn sample(version: &str) -> (servers::Daemon, u16) {
    let port = free_port();
    let d = servers::spawn(
        Command::new(exe())
            .args([
                "sample-service",
                "--port",
                &port.to_string(),
                "--version",
                version,
            ])
            .env("SAMPLE_LATENCY_MS", "0"),
    );
    servers::wait_until("sample service", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (d, port)
}

#[test]
fn the_admin_endpoint_sets_backends_and_weights_with_a_token() {
    let (_a, a) = sample("a");
    let (_b, b) = sample("b");
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("rampart.yaml"),
        format!(
            "service: edge\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:{port}\", sticky: {{header: x-user}}}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}\n"
        ),
    )
    .unwrap();
    let no_token = Command::new(exe())
        .args(["proxy", "-f"])
        .arg(dir.path().join("rampart.yaml"))
        .env_remove("RAMPART_PROXY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(2), "never unauthenticated");
    let _proxy = servers::spawn(
        Command::new(exe())
            .args(["proxy", "--admin", &format!("127.0.0.1:{admin}"), "-f"])
            .arg(dir.path().join("rampart.yaml"))
            .env("RAMPART_PROXY_TOKEN", TOKEN),
    );
    servers::wait_until("rampart proxy", || {
        std::net::TcpStream::connect(("127.0.0.1", admin)).is_ok()
    });
    let rt = common::runtime();
    let call = |method: &str, path: &str, body: &str, token: Option<&str>| {
        let headers: Vec<(&str, String)> = token
            .map(|t| vec![("authorization", format!("Bearer {t}"))])
            .unwrap_or_default();
        rt.block_on(send_with(
            method,
            &format!("http://127.0.0.1:{admin}{path}"),
            (!body.is_empty()).then(|| body.to_string()),
            &headers,
            Duration::from_secs(2),
        ))
        .unwrap()
    };
    assert_eq!(call("PUT", "/weight", r#"{"weight": 50}"#, None).0, 401);
    assert_eq!(
        call(
            "PUT",
            "/weight",
            r#"{"weight": 50}"#,
            Some("wrong-token-0123456789")
        )
        .0,
        401
    );
    let stable = format!(r#"{{"endpoints": ["127.0.0.1:{a}"]}}"#);
    let canary = format!(r#"{{"endpoints": ["127.0.0.1:{b}"]}}"#);
    assert_eq!(call("PUT", "/backends/stable", &stable, Some(TOKEN)).0, 200);
    assert_eq!(call("PUT", "/backends/canary", &canary, Some(TOKEN)).0, 200);
    let (status, body) = call("PUT", "/weight", r#"{"weight": 20}"#, Some(TOKEN));
    assert_eq!((status, body.as_str()), (200, r#"{"weight":20.0}"#));
    assert_eq!(
        call("PUT", "/weight", r#"{"weight": 120}"#, Some(TOKEN)).0,
        400
    );
    let mut on_b = 0;
    for u in 0..500 {
        let (_, body) = rt
            .block_on(send_with(
                "GET",
                &format!("http://127.0.0.1:{port}/"),
                None,
                &[("x-user", format!("user-{u}"))],
                Duration::from_secs(2),
            ))
            .unwrap();
        if body.trim() == "b" {
            on_b += 1;
        }
    }
    assert!((60..=140).contains(&on_b), "{on_b} of 500 users at 20%");
    let (_, state) = call("GET", "/state", "", Some(TOKEN));
    assert!(state.contains(&format!("127.0.0.1:{b}")), "{state}");
    let (status, metrics) = rt
        .block_on(get_text(
            &format!("http://127.0.0.1:{admin}/metrics"),
            Duration::from_secs(2),
        ))
        .unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("rampart_requests_total{service=\"edge\",variant=\"canary\"}"),
        "{metrics}"
    );
    // Both latency histograms reach the controller and Prometheus: every request was
    // timed to its headers and to its body's end.
    let (status, counters) = call("GET", "/counters", "", Some(TOKEN));
    assert_eq!(status, 200, "{counters}");
    let counters: serde_json::Value = serde_json::from_str(&counters).unwrap();
    let totals: rampart_core::metrics::IntervalSample =
        serde_json::from_value(counters["totals"].clone()).unwrap();
    for v in [&totals.stable, &totals.canary] {
        assert_eq!(v.latency.count(), v.requests, "{v:?}");
        assert_eq!(v.latency_total.count(), v.requests, "{v:?}");
    }
    assert_eq!(totals.stable.requests + totals.canary.requests, 500);
    assert!(
        metrics.contains("# TYPE rampart_request_total_duration_seconds histogram"),
        "{metrics}"
    );
}

/// A backend on a thread of its own: answers every request at once, except `/held`,
/// which it announces on `arrived` and answers when `release` says so.
fn holding_backend(
    arrived: std::sync::mpsc::Sender<()>,
    release: std::sync::mpsc::Receiver<()>,
) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let release = std::sync::Arc::new(std::sync::Mutex::new(release));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (arrived, release) = (arrived.clone(), release.clone());
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    match conn.read(&mut byte) {
                        Ok(1) => head.push(byte[0]),
                        _ => return,
                    }
                }
                if head.starts_with(b"GET /held ") {
                    let _ = arrived.send(());
                    let _ = release.lock().unwrap().recv();
                }
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                );
            });
        }
    });
    port
}

/// Sends `request` on `conn` and reads what comes back until the answer's body is in
/// (by its length) or the connection closes.
fn exchange(conn: &mut std::net::TcpStream, request: &[u8]) -> String {
    use std::io::{Read, Write};
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = conn.write_all(request);
    let mut got = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if got.len() >= end + 4 + length {
                break;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Whether `conn` is closed by the other end within 10 s.
fn closes(conn: &mut std::net::TcpStream) -> bool {
    use std::io::Read;
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut chunk = [0u8; 4096];
    loop {
        match conn.read(&mut chunk) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) => return e.kind() != std::io::ErrorKind::WouldBlock,
        }
    }
}

/// `rampart proxy -f` takes `traffic.proxy.limits` from the policy (431 past
/// `max_header_bytes`, 503 past `max_connections`), and on SIGTERM drains: an idle
/// keep-alive connection is closed at once, the request in flight is answered, then
/// the process exits 0.
#[test]
fn rampart_proxy_holds_the_policys_limits_and_drains_on_sigterm() {
    holds_limits_and_drains(None);
}

/// The same on one thread (`RAMPART_WORKER_THREADS=1`, tokio's current-thread
/// scheduler): nothing waits on a second thread that is not there.
#[test]
fn rampart_proxy_on_one_thread_holds_the_policys_limits_and_drains_on_sigterm() {
    holds_limits_and_drains(Some("1"));
}

/// The names of `pid`'s threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_string())
        .collect()
}

fn holds_limits_and_drains(threads: Option<&str>) {
    use std::net::TcpStream;
    let (arrived_tx, arrived) = std::sync::mpsc::channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    let backend = holding_backend(arrived_tx, release_rx);
    let dir = tempfile::tempdir().unwrap();
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        dir.path().join("rampart.yaml"),
        format!(
            "service: edge\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:{port}\", limits: {{max_header_bytes: 2KiB, max_connections: 2}}}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(exe());
    command
        .args(["proxy", "--admin", &format!("127.0.0.1:{admin}"), "-f"])
        .arg(dir.path().join("rampart.yaml"))
        .env("RAMPART_PROXY_TOKEN", TOKEN);
    match threads {
        Some(n) => command.env("RAMPART_WORKER_THREADS", n),
        None => command.env_remove("RAMPART_WORKER_THREADS"),
    };
    let mut proxy = servers::spawn(&mut command);
    servers::wait_until("rampart proxy", || {
        TcpStream::connect(("127.0.0.1", admin)).is_ok()
    });
    let workers = thread_names(proxy.0.id())
        .iter()
        .filter(|name| name.starts_with("tokio-rt-worker"))
        .count();
    if threads == Some("1") {
        assert_eq!(workers, 0, "one thread runs no runtime worker");
    } else {
        assert!(workers >= 1, "the multi-thread runtime has workers");
    }
    let rt = common::runtime();
    let (status, _) = rt
        .block_on(send_with(
            "PUT",
            &format!("http://127.0.0.1:{admin}/backends/stable"),
            Some(format!(r#"{{"endpoints": ["127.0.0.1:{backend}"]}}"#)),
            &[("authorization", format!("Bearer {TOKEN}"))],
            Duration::from_secs(2),
        ))
        .unwrap();
    assert_eq!(status, 200);

    let get = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(exchange(&mut idle, get).starts_with("HTTP/1.1 200 "));
    // Connections are admitted in the order they are accepted: the second is the
    // last one allowed, the third is over.
    let mut busy = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut over = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let answer = exchange(&mut over, get);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 503 "),
        "{answer}"
    );
    let big = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
        "a".repeat(3000)
    );
    let answer = exchange(&mut busy, big.as_bytes());
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");

    // A request in flight, held by the backend.
    servers::wait_until("a connection slot", || {
        let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
        exchange(
            &mut probe,
            b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
        )
        .starts_with("HTTP/1.1 200 ")
    });
    let in_flight = std::thread::spawn(move || {
        let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
        exchange(&mut conn, b"GET /held HTTP/1.1\r\nhost: x\r\n\r\n")
    });
    arrived.recv_timeout(Duration::from_secs(10)).unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &proxy.0.id().to_string()])
        .status();
    assert!(closes(&mut idle), "the idle connection stayed open");
    release.send(()).unwrap();
    let answer = in_flight.join().unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("ok"),
        "{answer:?}"
    );
    servers::wait_until("rampart proxy to exit", || {
        proxy.0.try_wait().unwrap().is_some()
    });
    assert_eq!(proxy.0.wait().unwrap().code(), Some(0));
}

#[test]
fn rampart_proxy_refuses_unusable_tls_files_at_the_fields_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("rampart.yaml");
    std::fs::write(
        &policy,
        format!(
            "service: edge\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:{}\", tls: {{cert: site.pem, key: site.key}}}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}\n",
            free_port()
        ),
    )
    .unwrap();
    let refused = || {
        let out = Command::new(exe())
            .args(["proxy", "-f"])
            .arg(&policy)
            .env("RAMPART_PROXY_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // No files at all: the certificate is named at its line.
    let said = refused();
    assert!(said.contains("rampart.yaml:3:"), "{said}");
    assert!(said.contains("traffic.proxy.tls.cert:"), "{said}");

    // A certificate with another certificate's key.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["edge.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(dir.path().join("site.pem"), cert.pem()).unwrap();
    let other = rcgen::KeyPair::generate().unwrap();
    std::fs::write(dir.path().join("site.key"), other.serialize_pem()).unwrap();
    let said = refused();
    assert!(said.contains("rampart.yaml:3:"), "{said}");
    assert!(said.contains("traffic.proxy.tls.key:"), "{said}");
    assert!(said.contains("does not match"), "{said}");
}

#[test]
fn the_data_plane_serves_https_from_the_policys_certificates_and_keeps_their_paths() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let port = free_port();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::create_dir(dir.path().join("tls")).unwrap();
    std::fs::write(dir.path().join("tls/site.pem"), cert.pem()).unwrap();
    std::fs::write(dir.path().join("tls/site.key"), key.serialize_pem()).unwrap();
    let policy = dir.path().join("rampart.yaml");
    std::fs::write(
        &policy,
        format!(
            "service: edge\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:{port}\", tls: {{cert: tls/site.pem, key: tls/site.key}}}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis: {{metrics: [{{metric: error_rate, judge: {{max: 1%}}}}]}}\n"
        ),
    )
    .unwrap();
    let _plane = servers::spawn(
        Command::new(exe())
            .args(["proxy", "--hold", "0s", "--state-dir"])
            .arg(&state)
            .arg("-f")
            .arg(&policy),
    );
    servers::wait_until("the data plane", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let rt = common::runtime();
    rampart_adapters::http::tls::add_roots(cert.pem().as_bytes()).unwrap();
    // No backend yet: the proxy's own 503, over TLS.
    let (status, body) = rt
        .block_on(get_text(
            &format!("https://localhost:{port}/"),
            Duration::from_secs(5),
        ))
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let saved = std::fs::read_to_string(state.join("dataplane/edge.json")).unwrap();
    let saved: serde_json::Value = serde_json::from_str(&saved).unwrap();
    let kept = saved["tls"]["certificates"][0]["cert"].as_str().unwrap();
    assert!(
        Path::new(kept).is_absolute() && kept.ends_with("tls/site.pem"),
        "{saved}"
    );
}

/// `RAMPART_WORKER_THREADS=1` puts `rampart proxy` on one thread alone; `rampart
/// serve`, whose store commits block the thread they run on, keeps a worker thread
/// apart for its proxies.
#[test]
fn one_thread_for_serve_keeps_a_worker_apart_from_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let serve = servers::spawn(
        Command::new(exe())
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--state-dir",
            ])
            .arg(dir.path())
            .env("RAMPART_WORKER_THREADS", "1"),
    );
    servers::wait_until("rampart serve", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let workers = thread_names(serve.0.id())
        .iter()
        .filter(|name| name.starts_with("tokio-rt-worker"))
        .count();
    assert_eq!(workers, 1, "one worker, apart from the main thread");
}
