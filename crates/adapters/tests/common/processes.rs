//! The process deployer's tests: Debian's python3 as the service, and what they look
//! at in `/proc`.

use std::time::Duration;

use rampart_core::policy::{ProcessSpec, Readiness};

/// A python3 HTTP server on the port given as its argument.
pub const SERVER: &str = "import http.server,os,sys; http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), http.server.SimpleHTTPRequestHandler).serve_forever()";

/// A one-replica spec running `argv`, probed over HTTP at `/` until `timeout`.
pub fn spec(argv: &[&str], timeout: Duration) -> ProcessSpec {
    ProcessSpec {
        command: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![],
        workdir: None,
        readiness: Readiness {
            http: Some("/".into()),
            timeout,
            period: Duration::from_millis(50),
        },
        stop_timeout: Duration::from_secs(1),
        replicas: 1,
    }
}

/// [`spec`] of the [`SERVER`].
pub fn server_spec() -> ProcessSpec {
    spec(
        &["python3", "-c", SERVER, "{port}"],
        Duration::from_secs(20),
    )
}

/// Whether `pid` runs (a zombie, which still has a /proc entry, counts as gone).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z "))
}

/// Pids of the live processes started for `service` (by their marks).
pub fn processes_of(service: &str) -> Vec<u32> {
    let mark = format!("RAMPART_SERVICE={service}");
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|kv| kv == mark.as_bytes()))
        })
        .collect();
    pids.sort_unstable();
    pids
}
