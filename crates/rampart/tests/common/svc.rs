//! A service of the data plane tests: its policy (`plane_policy`) and state directory
//! in a temporary directory. Dropping it kills whatever of it still runs, on success
//! and on failure: the processes the test started, data planes in the lock, versions
//! on record, and any process of the service's running in the directory (a version a
//! killed controller was still starting is in no record yet). A test adds the methods
//! it needs in an `impl Svc` of its own.

use std::path::PathBuf;
use std::process::Command;

use rampart_adapters::proxy::remote::RemotePlane;

use super::servers::Daemon;

pub struct Svc {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub policy: PathBuf,
    pub state: PathBuf,
    pub port: u16,
    pub started: Vec<Daemon>,
}

impl Svc {
    /// The service `name` running the sample service.
    pub fn new(name: &str) -> Svc {
        Svc::with_command(name, &super::sample_service())
    }

    /// The service `name` running `command` (a YAML flow sequence).
    pub fn with_command(name: &str, command: &str) -> Svc {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let policy = dir.path().join("rampart.yaml");
        std::fs::write(&policy, super::plane_policy(name, port, command)).unwrap();
        let state = dir.path().join("state");
        Svc {
            name: name.to_string(),
            policy,
            state,
            port,
            dir,
            started: Vec::new(),
        }
    }

    /// The data plane's file with this extension (`sock`, `token`, `lock`, ...).
    pub fn file(&self, ext: &str) -> PathBuf {
        self.state
            .join("dataplane")
            .join(format!("{}.{ext}", self.name))
    }

    /// A controller's client to the running data plane.
    pub fn remote(&self, rt: &tokio::runtime::Runtime) -> RemotePlane {
        rt.block_on(RemotePlane::attach(&self.file("sock"), &self.file("token")))
            .unwrap()
    }

    /// `rampart run --version VERSION --output json` of the service.
    pub fn run(&self, version: &str) -> Command {
        let mut c = super::rampart();
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
}

impl Drop for Svc {
    fn drop(&mut self) {
        for d in &mut self.started {
            d.stop();
        }
        super::stop_versions(&self.state);
        let dir = std::fs::canonicalize(self.dir.path()).unwrap_or_default();
        let mark = format!("RAMPART_SERVICE={}", self.name);
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let ours = std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(&dir));
            let marked = std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|e| e == mark.as_bytes()));
            if ours && marked {
                super::servers::kill_group(pid);
            }
        }
    }
}
