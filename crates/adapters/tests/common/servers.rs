//! Real nginx and HAProxy servers for tests, run in the foreground from a temporary
//! directory on loopback, each in a process group of its own that is killed when
//! dropped. Shared by the adapter tests and the
//! end-to-end release tests (the latter include this file by path).

#![allow(dead_code)] // each test file uses its own subset

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A server process in a process group of its own, the whole group killed when
/// dropped: on success, on failure and on a panic (a worker nginx forked is stopped
/// with its master, never left to PID 1). It derefs to the `Child`, so a test can
/// still read its output, signal it or wait for it.
pub struct Daemon(pub Child);

impl Daemon {
    /// Starts `cmd` as the leader of a new process group.
    pub fn start(cmd: &mut Command) -> std::io::Result<Daemon> {
        cmd.process_group(0).spawn().map(Daemon)
    }

    /// SIGKILL to the group, then reaps the leader. The group is signalled only while
    /// the leader is still this process's child (alive, or exited but not reaped):
    /// then its id cannot have been reused by anyone else.
    pub fn stop(&mut self) {
        let pgid = self.0.id();
        if parent_of(pgid) == Some(std::process::id()) {
            kill_group(pgid);
        }
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Daemon {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Daemon {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns a command as a [`Daemon`].
pub trait SpawnGuarded {
    /// Spawns it in a process group of its own, killed when the guard drops.
    fn spawn_guarded(&mut self) -> Daemon;
}

impl SpawnGuarded for Command {
    fn spawn_guarded(&mut self) -> Daemon {
        Daemon::start(self).unwrap_or_else(|e| panic!("cannot start {self:?}: {e}"))
    }
}

/// The parent of `pid`, from `/proc`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // pid (comm) state ppid ...: comm may hold spaces, so split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILL to the process group `pgid`, which a test created (never 0 or 1: those
/// would reach the test itself or every process).
pub fn kill_group(pgid: u32) {
    if pgid > 1 {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{pgid}")])
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `cmd` in the foreground as a daemon for the test.
pub fn spawn(cmd: &mut Command) -> Daemon {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn_guarded()
}

/// Polls until `ready` holds (a server came up), for at most 10 s.
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    #[allow(clippy::disallowed_methods)] // a test's own time limit
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready() {
        #[allow(clippy::disallowed_methods)]
        let now = Instant::now();
        assert!(now < deadline, "{what} never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A free loopback TCP port for an address a test writes down now and binds later.
///
/// It is taken below the kernel's ephemeral range (`ip_local_port_range`, 32768 and up
/// by default), which is where every `bind(0)` (a version process's port, another
/// test's server) and every client connection's own port come from: between the check
/// and the later bind, none of them can take it. Each test process walks its own part
/// of the range.
pub fn free_port() -> u16 {
    below_ephemeral(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
}

/// A free loopback UDP port, as [`free_port`] (a request log rampart binds later).
pub fn free_udp_port() -> u16 {
    below_ephemeral(|port| std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok())
}

fn below_ephemeral(free: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let first_ephemeral: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let low = first_ephemeral.saturating_sub(12_000).max(1_024);
    let span = first_ephemeral.saturating_sub(low).max(1);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = u16::try_from(low + (start + n) % span).unwrap_or(u16::MAX);
        if free(port) {
            return port;
        }
    }
    panic!("no free port between {low} and {first_ephemeral}")
}

/// A running nginx whose `http {}` includes `DIR/rampart/*.conf`.
pub struct Nginx {
    _daemon: Daemon,
    pub dir: tempfile::TempDir,
    /// A free port for the service's `server` block.
    pub listen: SocketAddr,
    /// The file rampart owns.
    pub include: String,
    /// `nginx -t` for this instance.
    pub test: Vec<String>,
    /// `nginx -s reload` for this instance.
    pub reload: Vec<String>,
    /// Its pid file.
    pub pid: String,
}

/// Starts nginx and waits for its pid file.
pub fn nginx() -> Nginx {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    std::fs::create_dir_all(dir.path().join("rampart")).unwrap();
    std::fs::create_dir_all(dir.path().join("tmp")).unwrap();
    let conf = format!(
        r#"worker_processes 1;
user root;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    include {d}/rampart/*.conf;
}}
"#
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let base = |extra: &[&str]| {
        let mut v: Vec<String> = vec!["nginx".into()];
        v.extend(extra.iter().map(|s| s.to_string()));
        v.extend([
            "-p".into(),
            d.clone(),
            "-c".into(),
            format!("{d}/nginx.conf"),
        ]);
        v
    };
    let start = base(&["-g", "daemon off;"]);
    let daemon = spawn(Command::new(&start[0]).args(&start[1..]));
    let pid = dir.path().join("nginx.pid");
    wait_until("nginx", || pid.exists());
    Nginx {
        _daemon: daemon,
        listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        include: format!("{d}/rampart/service.conf"),
        test: base(&["-t", "-q"]),
        reload: base(&["-s", "reload"]),
        pid: pid.display().to_string(),
        dir,
    }
}

/// A running HAProxy with one backend of `slots` stable and canary server slots.
pub struct Haproxy {
    _daemon: Daemon,
    _dir: tempfile::TempDir,
    /// The runtime API socket.
    pub socket: PathBuf,
    /// Where users connect (to the first backend).
    pub addr: SocketAddr,
    /// Where users connect to each backend, in order.
    pub addrs: Vec<SocketAddr>,
}

/// The `log-format` rampart documents for HAProxy: backend, server, status, the time
/// to response headers and the total time.
pub const HAPROXY_LOG_FORMAT: &str = "rampart-ms %b %s %ST %Tr %Ta";

/// Starts HAProxy: backend `backend` hashes `x-user` over `stable<N>` and `canary<N>`
/// slots, and every request is logged to `log` in rampart's format.
pub fn haproxy(backend: &str, slots: u32, log: SocketAddr) -> Haproxy {
    haproxy_backends(&[backend], slots, log)
}

/// [`haproxy`] with several backends of the same slot names on one HAProxy, each
/// behind a frontend of its own (`addrs`), all logging to `log`.
pub fn haproxy_backends(backends: &[&str], slots: u32, log: SocketAddr) -> Haproxy {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("admin.sock");
    let mut cfg = format!(
        r#"global
    stats socket {sock} mode 600 level admin
    log {log} local0
defaults
    mode http
    log global
    log-format "{HAPROXY_LOG_FORMAT}"
    timeout connect 2s
    timeout client 30s
    timeout server 30s
"#,
        sock = socket.display()
    );
    let mut addrs = Vec::new();
    for backend in backends {
        let port = free_port();
        cfg.push_str(&format!(
            r#"frontend web-{backend}
    bind 127.0.0.1:{port}
    default_backend {backend}
backend {backend}
    balance hdr(x-user)
    hash-type consistent
    server-template stable 1-{slots} 127.0.0.1:9 disabled
    server-template canary 1-{slots} 127.0.0.1:9 disabled
"#
        ));
        addrs.push(format!("127.0.0.1:{port}").parse().unwrap());
    }
    let path = dir.path().join("haproxy.cfg");
    std::fs::write(&path, cfg).unwrap();
    let daemon = spawn(Command::new("haproxy").arg("-db").arg("-f").arg(&path));
    wait_until("haproxy", || socket_accepts(&socket));
    Haproxy {
        _daemon: daemon,
        _dir: dir,
        socket,
        addr: addrs[0],
        addrs,
    }
}

fn socket_accepts(path: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(path).is_ok()
}
