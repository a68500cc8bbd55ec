//! The local process deployer: runs each version as a child process on a free port.
//!
//! Owns starting, adopting, probing and stopping processes, and their log files. It
//! must not route traffic or judge health beyond readiness.
//!
//! Every process is started in its own process group (so a Ctrl-C at the terminal
//! reaches rampart, which rolls back in order, and not the service) and is marked with
//! `RAMPART_SERVICE`, `RAMPART_VARIANT` and `RAMPART_VERSION` in its environment. Its
//! pid and port are written to a state file, so that after a controller crash the
//! next run adopts a still-ready process instead of starting a second copy, and only
//! ever signals a pid whose environment carries those marks.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rampart_core::Variant;
use rampart_core::policy::ProcessSpec;
use rampart_core::ports::{BoxFuture, Deployer, Deployment, PortError};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::gates::tail;
use crate::http::get_status;

/// What the state file records about a running version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The version it runs.
    pub version: String,
    /// Its pid (and process group id).
    pub pid: u32,
    /// The port it listens on.
    pub port: u16,
}

#[derive(Debug)]
struct Running {
    record: ProcessRecord,
    /// `None` when adopted from an earlier controller.
    child: Option<Child>,
}

/// Runs versions as local processes.
#[derive(Debug, Clone)]
pub struct ProcessDeployer {
    service: String,
    spec: ProcessSpec,
    workdir: PathBuf,
    state_dir: PathBuf,
    running: Arc<Mutex<HashMap<Variant, Running>>>,
}

impl ProcessDeployer {
    /// A deployer for `service`. Relative `workdir`s resolve against `base_dir` (the
    /// policy file's directory); state and logs go under `state_dir`.
    pub fn new(service: &str, spec: ProcessSpec, base_dir: &Path, state_dir: &Path) -> Self {
        let workdir = match &spec.workdir {
            Some(w) => base_dir.join(w),
            None => base_dir.to_path_buf(),
        };
        ProcessDeployer {
            service: service.to_string(),
            spec,
            workdir,
            state_dir: state_dir.to_path_buf(),
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Where a variant's stdout and stderr go.
    pub fn log_paths(&self, variant: Variant, version: &str) -> (PathBuf, PathBuf) {
        let dir = self.state_dir.join("logs").join(&self.service);
        let stem = format!("{}-{}", sanitize(version), variant.as_str());
        (
            dir.join(format!("{stem}.stdout.log")),
            dir.join(format!("{stem}.stderr.log")),
        )
    }

    fn record_path(&self, variant: Variant) -> PathBuf {
        self.state_dir
            .join("processes")
            .join(format!("{}.{}.json", self.service, variant.as_str()))
    }

    fn read_record(&self, variant: Variant) -> Option<ProcessRecord> {
        let text = std::fs::read_to_string(self.record_path(variant)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write_record(&self, variant: Variant, rec: &ProcessRecord) -> Result<(), PortError> {
        let path = self.record_path(variant);
        let io = |e: std::io::Error| PortError(format!("writing {}: {e}", path.display()));
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string(rec).map_err(PortError::new)?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    fn clear_record(&self, variant: Variant) {
        let _ = std::fs::remove_file(self.record_path(variant));
    }

    /// Whether `pid` is alive and carries this deployer's marks for `variant`.
    fn owns(&self, pid: u32, variant: Variant) -> bool {
        let Ok(environ) = std::fs::read(format!("/proc/{pid}/environ")) else {
            return false;
        };
        let has = |kv: String| environ.split(|b| *b == 0).any(|e| e == kv.as_bytes());
        has(format!("RAMPART_SERVICE={}", self.service))
            && has(format!("RAMPART_VARIANT={}", variant.as_str()))
    }

    async fn probe(&self, port: u16) -> Result<(), String> {
        match &self.spec.readiness.http {
            Some(path) => {
                let url = format!("http://127.0.0.1:{port}{path}");
                match get_status(&url, Duration::from_secs(2)).await {
                    Ok(code) if (200..300).contains(&code) => Ok(()),
                    Ok(code) => Err(format!("{path} answered {code}")),
                    Err(e) => Err(e),
                }
            }
            None => tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .map(drop)
                .map_err(|e| format!("tcp connect: {e}")),
        }
    }

    async fn start(&self, variant: Variant, version: &str) -> Result<Running, PortError> {
        let port = free_port().map_err(|e| PortError(format!("no free port: {e}")))?;
        let fill = |s: &str| {
            s.replace("{port}", &port.to_string())
                .replace("{version}", version)
        };
        let argv: Vec<String> = self.spec.command.iter().map(|a| fill(a)).collect();
        let (out_path, err_path) = self.log_paths(variant, version);
        if let Some(dir) = out_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| PortError(format!("creating {}: {e}", dir.display())))?;
        }
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| PortError(format!("opening {}: {e}", p.display())))
        };
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .current_dir(&self.workdir)
            .stdin(Stdio::null())
            .stdout(open(&out_path)?)
            .stderr(open(&err_path)?)
            .env("RAMPART_SERVICE", &self.service)
            .env("RAMPART_VARIANT", variant.as_str())
            .env("RAMPART_VERSION", version)
            .env("PORT", port.to_string())
            .process_group(0)
            .kill_on_drop(false);
        for (k, v) in &self.spec.env {
            cmd.env(k, fill(v));
        }
        let child = cmd.spawn().map_err(|e| {
            PortError(format!(
                "could not start `{}` in {}: {e}",
                argv[0],
                self.workdir.display()
            ))
        })?;
        let pid = child
            .id()
            .ok_or_else(|| PortError::new("process exited at once"))?;
        let record = ProcessRecord {
            version: version.to_string(),
            pid,
            port,
        };
        self.write_record(variant, &record)?;
        Ok(Running {
            record,
            child: Some(child),
        })
    }

    /// Polls readiness until ready, the process exits, or the timeout passes.
    async fn wait_ready(&self, variant: Variant, run: &mut Running) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + self.spec.readiness.timeout;
        loop {
            if let Some(child) = run.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let (_, err_path) = self.log_paths(variant, &run.record.version);
                let stderr = std::fs::read(&err_path).unwrap_or_default();
                return Err(format!(
                    "exited ({status}) before becoming ready; stderr: {}",
                    tail(&stderr)
                ));
            }
            let last = match self.probe(run.record.port).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {}s (last probe: {last})",
                    self.spec.readiness.timeout.as_secs()
                ));
            }
            tokio::time::sleep(self.spec.readiness.period).await;
        }
    }

    async fn terminate(&self, run: &mut Running) -> String {
        let pid = run.record.pid;
        let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        if killpg(group, Signal::SIGTERM).is_err() {
            if let Some(child) = run.child.as_mut() {
                let _ = child.wait().await;
            }
            return format!("pid {pid} was not running");
        }
        let exited = async {
            match run.child.as_mut() {
                Some(child) => {
                    let _ = child.wait().await;
                }
                None => {
                    while killpg(group, None).is_ok()
                        && std::path::Path::new(&format!("/proc/{pid}")).exists()
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        };
        if tokio::time::timeout(self.spec.stop_timeout, exited)
            .await
            .is_ok()
        {
            return format!("pid {pid} stopped");
        }
        let _ = killpg(group, Signal::SIGKILL);
        if let Some(child) = run.child.as_mut() {
            let _ = child.wait().await;
        }
        format!(
            "pid {pid} ignored SIGTERM for {}s and was killed",
            self.spec.stop_timeout.as_secs()
        )
    }

    async fn deploy_inner(&self, variant: Variant, version: &str) -> Result<Deployment, PortError> {
        let mut running = self.running.lock().await;
        if let Some(run) = running.get_mut(&variant) {
            let alive = run
                .child
                .as_mut()
                .is_none_or(|c| matches!(c.try_wait(), Ok(None)));
            if run.record.version == version && alive && self.probe(run.record.port).await.is_ok() {
                return Ok(deployment(&run.record, "already running"));
            }
            if let Some(mut old) = running.remove(&variant) {
                self.terminate(&mut old).await;
            }
        }
        // A process left behind by a controller that died: adopt it if it is the right
        // version and ready, otherwise stop it so it cannot hold its port or confuse us.
        if let Some(rec) = self.read_record(variant)
            && self.owns(rec.pid, variant)
        {
            if rec.version == version && self.probe(rec.port).await.is_ok() {
                let run = Running {
                    record: rec.clone(),
                    child: None,
                };
                running.insert(variant, run);
                return Ok(deployment(&rec, "adopted from an earlier run"));
            }
            let mut stale = Running {
                record: rec,
                child: None,
            };
            self.terminate(&mut stale).await;
        }
        self.clear_record(variant);
        let mut run = self.start(variant, version).await?;
        if let Err(e) = self.wait_ready(variant, &mut run).await {
            self.terminate(&mut run).await;
            self.clear_record(variant);
            return Err(PortError(e));
        }
        let d = deployment(&run.record, "started");
        running.insert(variant, run);
        Ok(d)
    }
}

fn deployment(rec: &ProcessRecord, how: &str) -> Deployment {
    Deployment {
        endpoints: vec![SocketAddr::from((Ipv4Addr::LOCALHOST, rec.port))],
        detail: format!(
            "{} pid {} on port {} ({how})",
            rec.version, rec.pid, rec.port
        ),
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl Deployer for ProcessDeployer {
    fn deploy<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(self.deploy_inner(variant, version))
    }

    fn stop(&self, variant: Variant) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            let mut running = self.running.lock().await;
            let detail = match running.remove(&variant) {
                Some(mut run) => self.terminate(&mut run).await,
                None => match self.read_record(variant) {
                    Some(rec) if self.owns(rec.pid, variant) => {
                        self.terminate(&mut Running {
                            record: rec,
                            child: None,
                        })
                        .await
                    }
                    _ => "not running".to_string(),
                },
            };
            self.clear_record(variant);
            Ok(detail)
        })
    }

    fn verify(
        &self,
        variant: Variant,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            let port = {
                let mut running = self.running.lock().await;
                let Some(run) = running.get_mut(&variant) else {
                    return Err(PortError(format!("{} is not running", variant.as_str())));
                };
                if let Some(child) = run.child.as_mut()
                    && let Ok(Some(status)) = child.try_wait()
                {
                    return Err(PortError(format!("{} exited ({status})", variant.as_str())));
                }
                run.record.port
            };
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                match self.probe(port).await {
                    Ok(()) => return Ok(format!("{} ready on port {port}", variant.as_str())),
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(PortError(format!("{} not ready: {e}", variant.as_str())));
                    }
                    Err(_) => tokio::time::sleep(self.spec.readiness.period).await,
                }
            }
        })
    }
}
