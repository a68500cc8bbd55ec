//! A `rampart serve` for tests: started on a free loopback port with its own state
//! directory, tokens of every role, and a small JSON client.

#![allow(clippy::unwrap_used, dead_code)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use serde_json::Value;

use super::{exe, free_port, rampart};

/// A running server.
pub struct Server {
    pub child: Child,
    pub url: String,
    pub port: u16,
    pub state: PathBuf,
    /// Whether the process was already stopped (and reaped).
    stopped: bool,
}

impl Server {
    /// Starts `rampart serve` on `state` and waits until it answers.
    pub fn start(state: &Path) -> Server {
        Server::start_on(state, free_port())
    }

    /// Starts it on a given port (to restart it where it was).
    pub fn start_on(state: &Path, port: u16) -> Server {
        Server::start_with(state, port, &[])
    }

    /// Starts it on a given port with more arguments (`--store`, `--replica`, ...).
    pub fn start_with(state: &Path, port: u16, args: &[&str]) -> Server {
        Server::spawn(state, port, args, Stdio::null())
    }

    /// Starts it on a given port, its status lines (stderr) written to `log`.
    #[allow(dead_code)] // not every test binary reads them
    pub fn start_logged(state: &Path, port: u16, log: &Path) -> Server {
        let file = std::fs::File::create(log).unwrap();
        Server::spawn(state, port, &[], Stdio::from(file))
    }

    fn spawn(state: &Path, port: u16, args: &[&str], stderr: Stdio) -> Server {
        let child = rampart()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--state-dir",
            ])
            .arg(state)
            .args(args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap();
        let s = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
            port,
            state: state.to_path_buf(),
            stopped: false,
        };
        until("the server answers", Duration::from_secs(20), || {
            call(&s.url, "GET", "/healthz", None, None).0 == 200
        });
        s
    }

    /// Creates a token with `rampart token create` and returns it.
    pub fn token(&self, role: &str, name: &str) -> String {
        Server::token_in(&self.state, role, name)
    }

    /// Creates a token in the store under `state`.
    pub fn token_in(state: &Path, role: &str, name: &str) -> String {
        Server::token_with(state, role, name, &[])
    }

    /// Creates a token with more arguments (`--store URL`).
    pub fn token_with(state: &Path, role: &str, name: &str, args: &[&str]) -> String {
        let out = rampart()
            .args([
                "token",
                "create",
                "--role",
                role,
                "--name",
                name,
                "--state-dir",
            ])
            .arg(state)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    /// One API call.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        call(&self.url, method, path, token, body)
    }

    /// A release's view, polled until `done` holds (at most `limit`).
    pub fn wait_release(
        &self,
        id: &str,
        token: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        #[allow(clippy::disallowed_methods)] // a test's own time limit
        let deadline = std::time::Instant::now() + limit;
        loop {
            let (status, v) =
                self.call("GET", &format!("/api/v1/releases/{id}"), Some(token), None);
            if status == 200 && done(&v) {
                return v;
            }
            #[allow(clippy::disallowed_methods)]
            let now = std::time::Instant::now();
            assert!(
                now < deadline,
                "release {id}: not reached within {limit:?}; last seen {status} {v}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A human approves `release` with the CLI client and `token`.
    pub fn approve_with_cli(&self, release: &str, token: &str) {
        let out = rampart()
            .args(["approve", release, "--server", &self.url])
            .env("RAMPART_TOKEN", token)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL, like a crash.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.stopped = true;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if !self.stopped {
            // An orderly stop, so the versions the server keeps serving are stopped too.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
        // Whatever a killed server (or a failed orderly stop) left behind.
        super::stop_versions(&self.state);
    }
}

/// One HTTP call with an optional bearer token and JSON body: the status and the JSON
/// answer (`null` when the body is not JSON).
pub fn call(
    base: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut headers = vec![("content-type", "application/json".to_string())];
    if let Some(t) = token {
        headers.push(("authorization", format!("Bearer {t}")));
    }
    let url = format!("{base}{path}");
    let answer = rt.block_on(rampart_adapters::http::send_with(
        method,
        &url,
        body.map(|b| b.to_string()),
        &headers,
        Duration::from_secs(10),
    ));
    match answer {
        Ok((status, text)) => (status, serde_json::from_str(&text).unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// Polls `ready` every 50 ms until it holds; fails the test after `limit`.
pub fn until(what: &str, limit: Duration, mut ready: impl FnMut() -> bool) {
    #[allow(clippy::disallowed_methods)] // a test's own time limit
    let deadline = std::time::Instant::now() + limit;
    while !ready() {
        #[allow(clippy::disallowed_methods)]
        let now = std::time::Instant::now();
        assert!(now < deadline, "{what}: not reached within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A canary policy of the bundled sample service behind the embedded proxy on `port`:
/// short bakes, one-second intervals, `extra_steps` inserted before the last step.
pub fn policy(service: &str, port: u16, extra_steps: &str) -> String {
    let exe = exe();
    format!(
        r#"service: {service}
deploy:
  process:
    command: [{exe:?}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    readiness: {{http: /healthz, timeout: 10s}}
traffic: {{proxy: {{listen: "127.0.0.1:{port}"}}}}
strategy:
  canary:
    steps:
      - {{weight: 20, bake: 2s}}
{extra_steps}      - {{weight: 50, bake: 2s}}
analysis:
  interval: 1s
  min_samples: 1
  no_data: {{limit: 1000, action: halt}}
  inconclusive: {{limit: 1000, action: halt}}
  metrics:
    - {{metric: error_rate, judge: {{max: 5%}}}}
"#
    )
}

/// Submits a release of `policy` (version v2 over v1) and returns its id.
pub fn submit(server: &Server, token: &str, policy: &str) -> String {
    let body = serde_json::json!({"policy": policy, "version": "v2", "stable": "v1"});
    let (status, v) = server.call("POST", "/api/v1/releases", Some(token), Some(body));
    assert_eq!(status, 201, "{v}");
    v["id"].as_str().unwrap().to_string()
}

/// The API's router over the in-memory store, served in this process (on a thread of
/// its own) on a free loopback port: its URL, its port, the store, and the live feed's
/// sender (what the server's follower publishes on).
pub fn in_memory_api() -> (
    String,
    u16,
    std::sync::Arc<rampart_adapters::store::memory::MemoryStore>,
    tokio::sync::broadcast::Sender<std::sync::Arc<String>>,
) {
    use std::sync::Arc;
    let store = Arc::new(rampart_adapters::store::memory::MemoryStore::new());
    let feed = tokio::sync::broadcast::channel(16).0;
    let app = rampart::serve::App {
        store: store.clone(),
        // A fixed origin: nothing here depends on the calendar.
        clock: Arc::new(rampart_adapters::clock::TokioClock::starting_at(
            1_700_000_000_000,
        )),
        submitted: Arc::new(tokio::sync::Notify::new()),
        feed: feed.clone(),
        workdir: std::env::temp_dir(),
    };
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, rampart::serve::router(app))
                .await
                .unwrap();
        });
    });
    (format!("http://127.0.0.1:{port}"), port, store, feed)
}
