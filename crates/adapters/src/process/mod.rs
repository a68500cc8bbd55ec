//! The local process deployer: runs each version as a child process on a free port.
//!
//! Owns starting, adopting, probing and stopping processes, and their log files. It
//! must not route traffic or judge health beyond readiness.
//!
//! Every process is started in its own process group (so a Ctrl-C at the terminal
//! reaches rampart, which rolls back in order, and not the service) and is marked with
//! `RAMPART_SERVICE`, `RAMPART_VARIANT` and `RAMPART_VERSION` in its environment. Its
//! pid, start time and port are written to a state file, so that after a controller
//! crash the next run adopts a still-ready process instead of starting a second copy,
//! and only ever signals a pid that is still the process it started (the same start
//! time; a program may rewrite its environment, as process-title libraries do, but not
//! its start time).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
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

/// How long one readiness probe may wait for its answer.
const PROBE_OVERRUN: Duration = Duration::from_secs(2);

/// Why starting, probing or keeping a process failed. The deployer's callers see it
/// as a [`PortError`] with the same words, in the audit trail.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The readiness path answered with a status that is not 2xx.
    #[error("{path} answered {code}")]
    ProbeStatus {
        /// The readiness path.
        path: String,
        /// The HTTP status.
        code: u16,
    },
    /// The readiness request got no answer.
    #[error(transparent)]
    ProbeUnanswered(crate::http::HttpError),
    /// Nothing accepts TCP connections on the process's port yet.
    #[error("tcp connect: {0}")]
    ProbeConnect(#[source] std::io::Error),
    /// The process exited before its readiness probe passed.
    #[error("exited ({status}) before becoming ready; stderr: {stderr}")]
    ExitedBeforeReady {
        /// How it exited.
        status: ExitStatus,
        /// The end of its stderr log, on one line.
        stderr: String,
    },
    /// The readiness probe kept failing until the readiness timeout.
    #[error("not ready after {}s (last probe: {last})", .timeout.as_secs())]
    NotReady {
        /// The readiness timeout.
        timeout: Duration,
        /// The last probe's failure.
        #[source]
        last: Box<ProcessError>,
    },
    /// No port could be reserved for the process.
    #[error("no free port: {0}")]
    NoFreePort(#[source] std::io::Error),
    /// A log or state file could not be created, opened or written.
    #[error("{doing} {}: {source}", .path.display())]
    File {
        /// `creating`, `opening`, `writing` or `locking`.
        doing: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the filesystem said.
        source: std::io::Error,
    },
    /// The state file's records could not be encoded.
    #[error("{0}")]
    Records(#[source] serde_json::Error),
    /// Another deployer of the service (in this rampart process or another) held its
    /// processes longer than any of its operations should take.
    #[error("{holder} has held {} for {}s, starting or stopping the service's versions; gave up waiting for it", .path.display(), .waited.as_secs())]
    Busy {
        /// The service's lock file.
        path: PathBuf,
        /// Who holds it, as its lock file says.
        holder: String,
        /// How long this one waited.
        waited: Duration,
    },
    /// The command could not be started.
    #[error("could not start `{program}` in {}: {source}", .workdir.display())]
    Spawn {
        /// The command's program.
        program: String,
        /// Where it was started.
        workdir: PathBuf,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// The process was gone before its pid could be read.
    #[error("process exited at once")]
    ExitedAtOnce,
    /// `verify` found no process of the variant.
    #[error("{} is not running", .0.as_str())]
    NotRunning(Variant),
    /// `verify` found a replica that has exited.
    #[error("{} pid {pid} exited", .variant.as_str())]
    Exited {
        /// Its variant.
        variant: Variant,
        /// Its pid.
        pid: u32,
    },
    /// `verify` found a replica whose readiness probe kept failing.
    #[error("{} not ready on port {port}: {last}", .variant.as_str())]
    Unready {
        /// Its variant.
        variant: Variant,
        /// Its port.
        port: u16,
        /// The last probe's failure.
        #[source]
        last: Box<ProcessError>,
    },
}

impl From<ProcessError> for PortError {
    fn from(e: ProcessError) -> PortError {
        PortError::new(e.to_string())
    }
}

/// What the state file records about one running replica.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRecord {
    /// The version it runs.
    pub version: String,
    /// Its pid (and process group id).
    pub pid: u32,
    /// The port it listens on.
    pub port: u16,
    /// When it started, in clock ticks since boot (`/proc/PID/stat`, field 22): a pid
    /// reused by another process has another start time. Records written before start
    /// times were kept have none and are recognised by their environment instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<u64>,
    /// Its index among its version's replicas (`RAMPART_REPLICA`, its log files'
    /// names). Records written before indexes were kept have none: the process's
    /// environment says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<usize>,
}

/// A process's state letter and start time (clock ticks since boot), from
/// `/proc/PID/stat`, or `None` when there is no such process.
fn proc_stat(pid: u32) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name in parentheses may hold spaces and parentheses: the fields
    // after it start at the last `)`, with the state (field 3).
    let mut rest = stat.rsplit_once(')')?.1.split_whitespace();
    let state = rest.next()?.chars().next()?;
    let started = rest.nth(18)?.parse().ok()?;
    Some((state, started))
}

/// The start time of process `pid`, when it runs.
pub fn start_time(pid: u32) -> Option<u64> {
    proc_stat(pid).map(|(_, started)| started)
}

#[derive(Debug)]
struct Running {
    record: ProcessRecord,
    /// `None` when adopted from an earlier controller.
    child: Option<Child>,
    /// Whether it passed its readiness probe (adopted ones did, or are not served): one
    /// whose start was given up on (a cancelled deploy) is never kept as an endpoint.
    ready: bool,
}

impl Running {
    /// A replica an earlier controller started, taken up from its record (which
    /// [`ProcessDeployer::owns`] has just matched to the process at its pid). A record
    /// from before start times were kept gains one now, so the pid is never taken for
    /// this process once it is reused: every later check (alive, terminate) compares it.
    fn adopted(mut record: ProcessRecord) -> Running {
        if record.started.is_none() {
            record.started = start_time(record.pid);
        }
        Running {
            record,
            child: None,
            ready: true,
        }
    }

    /// Its index among its version's replicas: recorded, or (a record from before
    /// indexes were kept) from its environment; 0 when neither says.
    fn index(&self) -> usize {
        self.record.replica.unwrap_or_else(|| {
            std::fs::read(format!("/proc/{}/environ", self.record.pid))
                .ok()
                .and_then(|env| {
                    env.split(|b| *b == 0).find_map(|kv| {
                        std::str::from_utf8(kv.strip_prefix(b"RAMPART_REPLICA=")?)
                            .ok()?
                            .parse()
                            .ok()
                    })
                })
                .unwrap_or(0)
        })
    }

    fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            // Adopted: still the process that was started (a reused pid is not).
            None => match (self.record.started, proc_stat(self.record.pid)) {
                (_, None | Some(('Z', _))) => false,
                (Some(recorded), Some((_, started))) => recorded == started,
                (None, Some(_)) => true,
            },
        }
    }

    fn endpoint(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.record.port))
    }
}

#[derive(Debug, Default)]
struct Replicas {
    /// Whether processes left by an earlier controller were looked for.
    loaded: bool,
    list: Vec<Running>,
}

/// Runs versions as local processes, `replicas` copies per variant.
#[derive(Debug, Clone)]
pub struct ProcessDeployer {
    service: String,
    spec: ProcessSpec,
    workdir: PathBuf,
    state_dir: PathBuf,
    running: Arc<Mutex<HashMap<Variant, Replicas>>>,
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

    /// Where a replica's stdout and stderr go (replica 0 has no index in its name).
    pub fn log_paths(&self, variant: Variant, version: &str, replica: usize) -> (PathBuf, PathBuf) {
        let dir = self.state_dir.join("logs").join(&self.service);
        let mut stem = format!("{}-{}", file_part(version), variant.as_str());
        if replica > 0 {
            stem.push_str(&format!("-{replica}"));
        }
        (
            dir.join(format!("{stem}.stdout.log")),
            dir.join(format!("{stem}.stderr.log")),
        )
    }

    fn record_path(&self, variant: Variant) -> PathBuf {
        record_path(&self.state_dir, &self.service, variant)
    }

    /// Takes the service's lock file, held until the returned file is dropped. Every
    /// operation that starts, stops or records processes holds it, so that two rampart
    /// processes sharing a state directory (serve's supervisor and `rampart stop
    /// --canary`, or a controller that took a release over) never both replace a
    /// replica, the second record overwriting the first and leaving a process no record
    /// names. It waits as long as the other holder's operation can take.
    async fn own(&self) -> Result<std::fs::File, ProcessError> {
        // Beside the records, not among them: `processes/` holds only running versions.
        let path = self
            .state_dir
            .join("locks")
            .join(format!("{}.processes", self.service));
        let io = |doing, source| ProcessError::File {
            doing,
            path: path.clone(),
            source,
        };
        let mut file = crate::lockfile::open(&path).map_err(|(doing, e)| io(doing, e))?;
        // The holder may adopt or stop every replica on record, then start each one
        // (a readiness timeout, and a probe's own 2 s, apiece), with a policy of its
        // own: twice that for ours, and a minute's slack.
        let replicas = self.spec.replicas.saturating_add(1);
        let waited = (self.spec.readiness.timeout + self.spec.stop_timeout + PROBE_OVERRUN)
            .saturating_mul(replicas.saturating_mul(2))
            + Duration::from_secs(60);
        let deadline = tokio::time::Instant::now() + waited;
        loop {
            if crate::lockfile::try_take(&mut file).map_err(|e| io("locking", e))? {
                return Ok(file);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcessError::Busy {
                    holder: crate::lockfile::holder(&path, "another deployer"),
                    path,
                    waited,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Under the service's lock: the records are the truth, since another rampart
    /// process may have changed them since this deployer last did. Replicas this
    /// deployer started keep their handles; ones another process recorded are taken
    /// as adopted; ones no longer on record (stopped, or handed over to the other
    /// variant) are no longer this variant's.
    ///
    /// A replica this deployer started that no record names at all (its record's
    /// write failed, or the file was lost) is kept, still its: dropping it would leave
    /// a process nothing stops. As in [`Self::load`], a canary record of stable's
    /// winner (a hand-over cut short) is stable's.
    fn refresh(&self, variant: Variant, set: &mut Replicas) {
        if !set.loaded {
            return;
        }
        let other = self.read_records(variant.other());
        let mut mine = std::mem::take(&mut set.list);
        for rec in self.read_records(variant) {
            if variant == Variant::Canary && other.iter().any(|o| o.pid == rec.pid) {
                continue;
            }
            let same = |r: &Running| r.record.pid == rec.pid && r.record.started == rec.started;
            if let Some(i) = mine.iter().position(same) {
                set.list.push(mine.swap_remove(i));
            } else if self.owns(&rec, variant) {
                set.list.push(Running::adopted(rec));
            }
        }
        for mut run in mine {
            let recorded = other.iter().any(|o| o.pid == run.record.pid);
            if run.child.is_some() && !recorded && run.alive() {
                set.list.push(run);
            }
        }
    }

    fn read_records(&self, variant: Variant) -> Vec<ProcessRecord> {
        read_records(&self.record_path(variant))
    }

    fn write_records(&self, variant: Variant, list: &[Running]) -> Result<(), ProcessError> {
        let path = self.record_path(variant);
        if list.is_empty() {
            let _ = std::fs::remove_file(&path);
            return Ok(());
        }
        let io = |source| ProcessError::File {
            doing: "writing",
            path: path.clone(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let records: Vec<&ProcessRecord> = list.iter().map(|r| &r.record).collect();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string(&records).map_err(ProcessError::Records)?;
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// Whether the recorded replica still runs as the process this deployer started:
    /// the same start time, or for a record without one, this service's marks for
    /// `variant` in its environment. A zombie is no longer running.
    fn owns(&self, rec: &ProcessRecord, variant: Variant) -> bool {
        owned(&self.service, rec, variant)
    }

    /// How many replicas of `variant` the records hold that still run as this
    /// service's processes (a supervisor compares it with the replicas wanted: a
    /// replica whose restart failed is in no record, yet still missing).
    pub fn live(&self, variant: Variant) -> usize {
        let recorded = self.read_records(variant).len();
        recorded.saturating_sub(self.exited(variant).len())
    }

    /// The endpoints of the recorded replicas of `variant` that still run as this
    /// service's processes (what a command outside the release, such as `rampart stop
    /// --canary`, routes to).
    pub fn endpoints(&self, variant: Variant) -> Vec<SocketAddr> {
        live_of(&self.state_dir, &self.service, variant)
    }

    /// The versions of the recorded replicas of `variant` that still run as this
    /// service's processes, one per replica.
    pub fn versions(&self, variant: Variant) -> Vec<String> {
        self.read_records(variant)
            .into_iter()
            .filter(|r| self.owns(r, variant))
            .map(|r| r.version)
            .collect()
    }

    /// How many replicas a variant runs when serving.
    pub fn replicas(&self) -> usize {
        self.spec.replicas as usize
    }

    /// The recorded replicas of `variant` that no longer run (exited, or their pid is
    /// no longer one of this service's processes): what a supervisor replaces.
    pub fn exited(&self, variant: Variant) -> Vec<ProcessRecord> {
        self.read_records(variant)
            .into_iter()
            .filter(|r| !self.owns(r, variant))
            .collect()
    }

    /// After a promotion: the canary's replicas become stable's (they keep running
    /// and serving; only their records move) and their endpoints are returned, so the
    /// next release adopts them as its stable instead of starting it again. Stable
    /// replicas still running (none, after a promotion) are stopped. With no canary
    /// replica alive (a release that only ramped a flag), nothing changes: `None`.
    pub async fn rebase(&self) -> Result<Option<Vec<SocketAddr>>, PortError> {
        let mut running = self.running.lock().await;
        let _owned = self.own().await?;
        for (variant, set) in running.iter_mut() {
            self.refresh(*variant, set);
        }
        let mut canary = running.remove(&Variant::Canary).unwrap_or_default();
        if !canary.loaded {
            for rec in self.read_records(Variant::Canary) {
                if self.owns(&rec, Variant::Canary) {
                    canary.list.push(Running::adopted(rec));
                }
            }
        }
        canary.list.retain_mut(Running::alive);
        if canary.list.is_empty() {
            running.insert(Variant::Canary, canary);
            return Ok(None);
        }
        let stable = running.entry(Variant::Stable).or_default();
        if !stable.loaded {
            stable.loaded = true;
            for rec in self.read_records(Variant::Stable) {
                if self.owns(&rec, Variant::Stable) {
                    stable.list.push(Running::adopted(rec));
                }
            }
        }
        for mut old in std::mem::take(&mut stable.list) {
            // The winner already recorded as stable (an earlier hand-over cut short)
            // is the one being handed over: never stopped here.
            if canary.list.iter().any(|c| c.record.pid == old.record.pid) {
                continue;
            }
            self.terminate(&mut old).await;
        }
        stable.list = canary.list;
        let endpoints = stable.list.iter().map(Running::endpoint).collect();
        self.write_records(Variant::Stable, &stable.list)?;
        self.write_records(Variant::Canary, &[])?;
        running.insert(
            Variant::Canary,
            Replicas {
                loaded: true,
                list: Vec::new(),
            },
        );
        Ok(Some(endpoints))
    }

    async fn probe(&self, port: u16) -> Result<(), ProcessError> {
        match &self.spec.readiness.http {
            Some(path) => {
                let url = format!("http://127.0.0.1:{port}{path}");
                match get_status(&url, PROBE_OVERRUN).await {
                    Ok(code) if (200..300).contains(&code) => Ok(()),
                    Ok(code) => Err(ProcessError::ProbeStatus {
                        path: path.clone(),
                        code,
                    }),
                    Err(e) => Err(ProcessError::ProbeUnanswered(e)),
                }
            }
            // Within the probe's own limit: a full accept queue drops the handshake,
            // and the kernel would retry it for minutes.
            None => match tokio::time::timeout(
                PROBE_OVERRUN,
                tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)),
            )
            .await
            {
                Ok(connected) => connected.map(drop).map_err(ProcessError::ProbeConnect),
                Err(_) => Err(ProcessError::ProbeConnect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no connection within {}s", PROBE_OVERRUN.as_secs()),
                ))),
            },
        }
    }

    async fn start(
        &self,
        variant: Variant,
        version: &str,
        replica: usize,
    ) -> Result<Running, ProcessError> {
        let port = free_port().map_err(ProcessError::NoFreePort)?;
        let fill = |s: &str| {
            s.replace("{port}", &port.to_string())
                .replace("{version}", version)
        };
        let argv: Vec<String> = self.spec.command.iter().map(|a| fill(a)).collect();
        let (out_path, err_path) = self.log_paths(variant, version, replica);
        if let Some(dir) = out_path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| ProcessError::File {
                doing: "creating",
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|source| ProcessError::File {
                    doing: "opening",
                    path: p.to_path_buf(),
                    source,
                })
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
            .env("RAMPART_REPLICA", replica.to_string())
            .env("PORT", port.to_string())
            .process_group(0)
            .kill_on_drop(false);
        for (k, v) in &self.spec.env {
            cmd.env(k, fill(v));
        }
        let child = cmd.spawn().map_err(|source| ProcessError::Spawn {
            program: argv[0].clone(),
            workdir: self.workdir.clone(),
            source,
        })?;
        let pid = child.id().ok_or(ProcessError::ExitedAtOnce)?;
        Ok(Running {
            record: ProcessRecord {
                version: version.to_string(),
                pid,
                port,
                started: start_time(pid),
                replica: Some(replica),
            },
            child: Some(child),
            ready: false,
        })
    }

    /// Polls readiness until ready, the process exits, or the timeout passes.
    async fn wait_ready(
        &self,
        variant: Variant,
        run: &mut Running,
        replica: usize,
    ) -> Result<(), ProcessError> {
        let deadline = tokio::time::Instant::now() + self.spec.readiness.timeout;
        self.wait_ready_until(variant, run, replica, deadline).await
    }

    /// [`Self::wait_ready`] until `deadline` (shared by the replicas being adopted).
    async fn wait_ready_until(
        &self,
        variant: Variant,
        run: &mut Running,
        replica: usize,
        deadline: tokio::time::Instant,
    ) -> Result<(), ProcessError> {
        loop {
            if let Some(child) = run.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let (_, err_path) = self.log_paths(variant, &run.record.version, replica);
                let stderr = std::fs::read(&err_path).unwrap_or_default();
                return Err(ProcessError::ExitedBeforeReady {
                    status,
                    stderr: tail(&stderr),
                });
            }
            let last = match self.probe(run.record.port).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            // An adopted process has no child to ask: it is gone when it no longer runs.
            if tokio::time::Instant::now() >= deadline || (run.child.is_none() && !run.alive()) {
                return Err(ProcessError::NotReady {
                    timeout: self.spec.readiness.timeout,
                    last: Box::new(last),
                });
            }
            tokio::time::sleep(self.spec.readiness.period).await;
        }
    }

    async fn terminate(&self, run: &mut Running) -> String {
        let pid = run.record.pid;
        let group = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        // An adopted replica whose pid now belongs to another process (started later):
        // its group had emptied (a pid still naming a group is never reused), and that
        // process is someone else's. Never signalled.
        if run.child.is_none()
            && let (Some(recorded), Some((_, started))) = (run.record.started, proc_stat(pid))
            && recorded != started
        {
            return format!("pid {pid} had exited (the pid is another process's now, left alone)");
        }
        if killpg(group, Signal::SIGTERM).is_err() {
            if let Some(child) = run.child.as_mut() {
                let _ = child.wait().await;
            }
            return format!("pid {pid} was not running");
        }
        // Done when the whole group has gone, not only its leader: a wrapper (`sh -c
        // 'server & wait'`) exits on SIGTERM while what it started may not.
        let exited = async {
            if let Some(child) = run.child.as_mut() {
                let _ = child.wait().await;
            }
            while killpg(group, None).is_ok() {
                tokio::time::sleep(Duration::from_millis(50)).await;
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

    /// Takes up processes an earlier controller left: ready replicas of the right
    /// version are adopted, anything else of ours is stopped.
    async fn load(&self, variant: Variant, version: &str, set: &mut Replicas) -> Vec<String> {
        let mut notes = Vec::new();
        if set.loaded {
            return notes;
        }
        set.loaded = true;
        // A crash in the middle of a hand-over ([`ProcessDeployer::rebase`]) can leave
        // the winner in both record files: it is stable's, never a canary to replace.
        let stable: Vec<u32> = match variant {
            Variant::Canary => self
                .read_records(Variant::Stable)
                .iter()
                .map(|r| r.pid)
                .collect(),
            Variant::Stable => Vec::new(),
        };
        // One readiness timeout for all of them: adopting never waits longer than
        // starting them would.
        let deadline = tokio::time::Instant::now() + self.spec.readiness.timeout;
        for rec in self.read_records(variant) {
            if !self.owns(&rec, variant) || stable.contains(&rec.pid) {
                continue;
            }
            let mut run = Running::adopted(rec);
            // A replica is given its readiness timeout to answer, as at its start: one
            // slow probe must not stop a version users are on. One of another version
            // that answers may serve users too: it is kept until its replacement is
            // ready (see `scale_inner`). So is one that still runs without answering
            // its probe: it may be in rotation, serving users while its probe fails (a
            // dependency's health check), and is replaced, not stopped under them.
            let index = run.index();
            if self
                .wait_ready_until(variant, &mut run, index, deadline)
                .await
                .is_ok()
            {
                if run.record.version == version {
                    notes.push(format!(
                        "pid {} on port {} adopted from an earlier run",
                        run.record.pid, run.record.port
                    ));
                }
                set.list.push(run);
            } else if run.alive() {
                notes.push(format!(
                    "pid {} on port {} runs but is not ready: replaced",
                    run.record.pid, run.record.port
                ));
                run.ready = false;
                set.list.push(run);
            } else {
                notes.push(self.terminate(&mut run).await);
            }
        }
        notes
    }

    /// Ensures at least `n` ready replicas of `version`; returns the first `n` as the
    /// serving endpoints and any beyond as retired (still running until [`Self::trim`]).
    async fn scale_inner(
        &self,
        variant: Variant,
        version: &str,
        n: usize,
    ) -> Result<Deployment, ProcessError> {
        let mut running = self.running.lock().await;
        let _owned = self.own().await?;
        let set = running.entry(variant).or_default();
        self.refresh(variant, set);
        let mut notes = self.load(variant, version, set).await;
        // Replicas that died are replaced at once. Ones that serve another version
        // may still be in rotation: they are replaced once the new ones are ready,
        // reported retired (after the `n` serving), for the caller to take out of
        // rotation and drain before it trims them.
        let mut kept = Vec::new();
        let mut replaced = Vec::new();
        for mut run in std::mem::take(&mut set.list) {
            // Adopted and not ready (see `load`): replaced like another version's.
            let adopted_unready = run.child.is_none() && !run.ready;
            if run.alive() && run.record.version == version && run.ready {
                kept.push(run);
            } else if run.alive() && (run.ready || adopted_unready) {
                replaced.push(run);
            } else {
                notes.push(self.terminate(&mut run).await);
            }
        }
        set.list = kept;
        let mut started = 0;
        while set.list.len() < n {
            // The lowest index no running replica of this version holds: a replica
            // that died is replaced under its own index, and no two running ones
            // share one (nor their log files; one still serving until its
            // replacement is ready keeps its own).
            let taken: Vec<usize> = set
                .list
                .iter()
                .chain(replaced.iter().filter(|r| r.record.version == version))
                .map(Running::index)
                .collect();
            let replica = (0..).find(|i| !taken.contains(i)).unwrap_or(set.list.len());
            let run = self.start(variant, version, replica).await?;
            // Recorded from the moment it runs: a controller that dies while it starts
            // leaves a process the next one finds (and adopts once ready, or stops).
            set.list.push(run);
            let recorded = self.write_records(variant, &set.list);
            let ready = match (recorded, set.list.last_mut()) {
                (Ok(()), Some(run)) => self.wait_ready(variant, run, replica).await,
                (Err(e), _) => Err(e),
                (Ok(()), None) => break,
            };
            if let Err(e) = ready {
                if let Some(mut run) = set.list.pop() {
                    self.terminate(&mut run).await;
                }
                // The other version's replicas stay, serving as before.
                set.list.append(&mut replaced);
                self.write_records(variant, &set.list)?;
                return Err(e);
            }
            if let Some(run) = set.list.last_mut() {
                run.ready = true;
            }
            started += 1;
            self.write_records(variant, &set.list)?;
        }
        if !replaced.is_empty() {
            notes.push(format!(
                "{} replica(s) of {} to retire",
                replaced.len(),
                replaced
                    .iter()
                    .map(|r| r.record.version.as_str())
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        set.list.append(&mut replaced);
        self.write_records(variant, &set.list)?;
        let serving: Vec<&Running> = set.list.iter().take(n).collect();
        let pids: Vec<String> = serving
            .iter()
            .map(|r| format!("{}:{}", r.record.pid, r.record.port))
            .collect();
        let mut detail = if n == 0 {
            "no replicas".to_string()
        } else {
            format!("{version} x{n} (pid:port {})", pids.join(", "))
        };
        if started > 0 {
            detail.push_str(&format!(", {started} started"));
        }
        if !notes.is_empty() {
            detail.push_str(&format!("; {}", notes.join("; ")));
        }
        if n > 0 && started == 0 && notes.is_empty() {
            detail.push_str(", already running");
        }
        Ok(Deployment {
            endpoints: serving.iter().map(|r| r.endpoint()).collect(),
            retired: set.list.iter().skip(n).map(Running::endpoint).collect(),
            detail,
        })
    }

    async fn trim_inner(&self, variant: Variant, n: usize) -> Result<String, ProcessError> {
        let mut running = self.running.lock().await;
        let _owned = self.own().await?;
        let set = running.entry(variant).or_default();
        self.refresh(variant, set);
        let mut notes = Vec::new();
        if !set.loaded {
            set.loaded = true;
            for rec in self.read_records(variant) {
                if self.owns(&rec, variant) {
                    set.list.push(Running::adopted(rec));
                }
            }
        }
        let extra: Vec<Running> = set.list.drain(n.min(set.list.len())..).collect();
        for mut run in extra {
            notes.push(self.terminate(&mut run).await);
        }
        self.write_records(variant, &set.list)?;
        Ok(if notes.is_empty() {
            "not running".to_string()
        } else {
            notes.join("; ")
        })
    }
}

/// Where the records of `service`'s `variant` are, under `state_dir`.
fn record_path(state_dir: &Path, service: &str, variant: Variant) -> PathBuf {
    state_dir
        .join("processes")
        .join(format!("{service}.{}.json", variant.as_str()))
}

fn read_records(path: &Path) -> Vec<ProcessRecord> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    serde_json::from_str::<Vec<ProcessRecord>>(&text)
        .or_else(|_| serde_json::from_str::<ProcessRecord>(&text).map(|r| vec![r]))
        .unwrap_or_default()
}

/// Whether the recorded replica still runs as the process `service`'s deployer
/// started: the same start time, or for a record without one, this service's marks
/// for `variant` in its environment. A zombie is no longer running.
fn owned(service: &str, rec: &ProcessRecord, variant: Variant) -> bool {
    let Some((state, started)) = proc_stat(rec.pid) else {
        return false;
    };
    if state == 'Z' {
        return false;
    }
    if let Some(recorded) = rec.started {
        return recorded == started;
    }
    let Ok(environ) = std::fs::read(format!("/proc/{}/environ", rec.pid)) else {
        return false;
    };
    let has = |kv: String| environ.split(|b| *b == 0).any(|e| e == kv.as_bytes());
    // A replica started as the canary serves as stable once its release is
    // promoted ([`ProcessDeployer::rebase`]): its record says which it is now.
    has(format!("RAMPART_SERVICE={}", service))
        && (has(format!("RAMPART_VARIANT={}", variant.as_str()))
            || has(format!("RAMPART_VARIANT={}", variant.other().as_str())))
}

/// The endpoints of `service`'s replicas recorded under `state_dir` that still run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveEndpoints {
    /// Stable's.
    pub stable: Vec<SocketAddr>,
    /// The canary's.
    pub canary: Vec<SocketAddr>,
}

/// [`LiveEndpoints`] of `service` under `state_dir`; `None` when no replica of it is
/// recorded there at all (its versions are not processes rampart runs here). Reads
/// only: a data plane started afresh routes to these and no other (after a reboot
/// the ports its routes name may be another program's).
pub fn live_endpoints(service: &str, state_dir: &Path) -> Option<LiveEndpoints> {
    let recorded = [Variant::Stable, Variant::Canary]
        .iter()
        .any(|v| record_path(state_dir, service, *v).exists());
    recorded.then(|| LiveEndpoints {
        stable: live_of(state_dir, service, Variant::Stable),
        canary: live_of(state_dir, service, Variant::Canary),
    })
}

/// The endpoints of `service`'s recorded replicas of `variant` that still run.
fn live_of(state_dir: &Path, service: &str, variant: Variant) -> Vec<SocketAddr> {
    read_records(&record_path(state_dir, service, variant))
        .into_iter()
        .filter(|r| owned(service, r, variant))
        .map(|r| SocketAddr::from((Ipv4Addr::LOCALHOST, r.port)))
        .collect()
}

fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

/// `s` as a file-name part, one to one: letters, digits, `.`, `-` and `_` kept, every
/// other byte written `%HH` (so `v1/2` and `v1_2` never share a file).
pub(crate) fn file_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Deployer for ProcessDeployer {
    fn deploy<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        // Replicas beyond the policy's count (it asks for fewer now) are reported
        // retired, still running: the caller takes them out of rotation and drains
        // them before it trims them, as after a scale.
        Box::pin(async move {
            Ok(self
                .scale_inner(variant, version, self.spec.replicas as usize)
                .await?)
        })
    }

    fn scale<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
        replicas: u32,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async move {
            Ok(self
                .scale_inner(variant, version, replicas as usize)
                .await?)
        })
    }

    fn trim(&self, variant: Variant, replicas: u32) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move { Ok(self.trim_inner(variant, replicas as usize).await?) })
    }

    fn stop(&self, variant: Variant) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move { Ok(self.trim_inner(variant, 0).await?) })
    }

    fn verify(
        &self,
        variant: Variant,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            let ports: Vec<u16> = {
                let mut running = self.running.lock().await;
                let Some(set) = running.get_mut(&variant).filter(|s| !s.list.is_empty()) else {
                    return Err(ProcessError::NotRunning(variant).into());
                };
                for run in &mut set.list {
                    if !run.alive() {
                        return Err(ProcessError::Exited {
                            variant,
                            pid: run.record.pid,
                        }
                        .into());
                    }
                }
                set.list.iter().map(|r| r.record.port).collect()
            };
            let deadline = tokio::time::Instant::now() + timeout;
            for port in &ports {
                loop {
                    match self.probe(*port).await {
                        Ok(()) => break,
                        Err(e) if tokio::time::Instant::now() >= deadline => {
                            return Err(ProcessError::Unready {
                                variant,
                                port: *port,
                                last: Box::new(e),
                            }
                            .into());
                        }
                        Err(_) => tokio::time::sleep(self.spec.readiness.period).await,
                    }
                }
            }
            Ok(format!(
                "{} ready ({} replica(s))",
                variant.as_str(),
                ports.len()
            ))
        })
    }
}
