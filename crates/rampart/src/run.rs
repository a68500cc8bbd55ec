//! `rampart run`: one release of one service on the embedded default, start to end.
//!
//! Owns wiring the embedded adapters to the controller, finding or creating the
//! release, signals, and the final report. The demo uses the same path.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_adapters::gates::LocalGates;
use rampart_adapters::lockfile;
use rampart_adapters::process::ProcessDeployer;
use rampart_adapters::proxy::Proxy;
use rampart_adapters::store::StateStore;
use rampart_adapters::store::acting::Fenced;
use rampart_controller::{Controller, MigrationPlan, Ports};
use rampart_core::admission::{self, Start, StartRefusal};
use rampart_core::policy::{Policy, Traffic};
use rampart_core::ports::{Clock, Deployer, Store};
use rampart_core::release::{Input, OutcomeKind, Release, Variant};

use crate::progress::{PrintNotifier, Progress};
// `serve` names these through `run`; they belong to `report`.
pub use crate::report::{Output, Report, Requests, RunError};

/// Everything `run` needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The policy file (for paths and messages).
    pub policy_path: PathBuf,
    /// The policy text.
    pub policy_text: String,
    /// The version to release.
    pub version: String,
    /// The version serving now, overriding what the store remembers.
    pub stable: Option<String>,
    /// Where state and logs live.
    pub state_dir: PathBuf,
    /// Output format.
    pub output: Output,
    /// Wait for an interruption (Ctrl-C, SIGTERM) after the release ends.
    pub keep_running: bool,
    /// Route through the service's long-lived data plane (started when absent) rather
    /// than a proxy in this process, and leave the service serving when the release
    /// ends (the embedded proxy; versions are left running whatever the router).
    pub attach: bool,
    /// Stop the service (its versions, and its data plane) when the release ends.
    pub stop_after: bool,
    /// Who starts the release.
    pub initiator: String,
    /// Why this release may run during a freeze (it then needs an approval first).
    pub hotfix: Option<String>,
    /// Where to serve `/metrics` (release and data-plane metrics) while it runs.
    pub metrics_listen: Option<SocketAddr>,
    /// Set when `rampart serve` runs the release rather than a terminal.
    pub served: Option<Served>,
    /// The clock the release runs on.
    pub clock: Arc<dyn Clock>,
}

/// How `rampart serve` runs a release: in its store, under the id the submission got,
/// with progress to a log file and no signal handling (stopping the server leaves the
/// release to be resumed, never rolls it back).
#[derive(Debug, Clone)]
pub struct Served {
    /// The server's store.
    pub store: Arc<StateStore>,
    /// The id the release was submitted under.
    pub release_id: String,
    /// Where the policy's relative paths resolve.
    pub base_dir: PathBuf,
    /// Where progress lines go.
    pub log: PathBuf,
    /// The data plane each service's last release left serving.
    pub serving: Serving,
    /// Wakes the server's controllers when requests are queued for their releases.
    pub inbox: Arc<rampart_controller::Inbox>,
    /// The cluster client `serve --kubernetes` watches with, for its releases.
    pub cluster: Option<crate::dataplane::Cluster>,
}

/// The data plane (the embedded proxy, the flag endpoint) a served release leaves in
/// place when it ends, by service: the service keeps answering through it, on the
/// version the release left serving, until its next release takes the address over.
pub type Serving = Arc<
    tokio::sync::Mutex<
        std::collections::HashMap<String, (crate::dataplane::DataPlane, KeptDeployer)>,
    >,
>;

/// The deployer that runs a served release's versions after the release ended.
#[derive(Clone)]
pub struct KeptDeployer(pub Arc<dyn Deployer>);

impl std::fmt::Debug for KeptDeployer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeptDeployer").finish_non_exhaustive()
    }
}

/// Closes what served releases left in this process, at a server's orderly shutdown.
/// The services keep serving: their versions run on, behind their long-lived data
/// plane (or nginx, HAProxy, a cluster). `rampart stop` stops one.
pub async fn stop_serving(serving: &Serving) {
    let kept: Vec<_> = serving.lock().await.drain().collect();
    for (_, (plane, _)) in kept {
        plane.close().await;
    }
}

/// This machine's name, as the kernel has it (`rampart` when it has none).
pub fn host_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if host.is_empty() {
        "rampart".to_string()
    } else {
        host
    }
}

/// The state directory whose records of the service's local processes this run uses.
/// With a store of its own, its own. Replicas sharing a PostgreSQL store agree through
/// it: the directory on record wins, so a replica that takes a release over adopts the
/// processes the old leader started (each replica may have a state directory of its
/// own); a replica on another host refuses, since it could neither adopt nor stop them
/// and would only start copies.
pub(crate) async fn process_dir(
    store: &StateStore,
    service: &str,
    state_dir: &Path,
) -> Result<PathBuf, RunError> {
    if !store.is_postgres() {
        return Ok(state_dir.to_path_buf());
    }
    let ours = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let host = host_name();
    let internal = |e: rampart_adapters::store::StoreError| RunError::Internal(anyhow::anyhow!(e));
    // Read first: once recorded, the owner never changes, and serve's supervisor asks
    // every second for every service.
    let recorded = store.process_owner(service).await.map_err(internal)?;
    let (owner_host, owner_dir) = match recorded {
        Some(owner) => owner,
        None => store
            .claim_processes(service, &host, &ours.display().to_string())
            .await
            .map_err(internal)?,
    };
    if owner_host != host {
        return Err(RunError::Internal(anyhow::anyhow!(
            "the local processes of {service} were started on host {owner_host} (recorded in {owner_dir}); this replica runs on {host} and can neither adopt nor stop them, so it does not start copies. Run the replicas that share a store on one host, or deploy with Kubernetes (docs/ha.md)"
        )));
    }
    Ok(PathBuf::from(owner_dir))
}

/// Takes `STATE/locks/SERVICE.run` for as long as the returned file lives: two runs
/// of one service from one directory (two terminals, two CI jobs) would otherwise both
/// touch its data plane before one of them found the other's release (the loser reset
/// the winner's sticky salt and uncounted token). The holder writes
/// its pid there; a second run is refused at once (exit 5), naming it.
fn run_lock(local_dir: &Path, service: &str) -> Result<std::fs::File, RunError> {
    let path = local_dir.join("locks").join(format!("{service}.run"));
    let io = |e: std::io::Error| RunError::Internal(anyhow::anyhow!("{}: {e}", path.display()));
    let mut file = lockfile::open(&path).map_err(|(_, e)| io(e))?;
    if lockfile::try_take(&mut file).map_err(io)? {
        return Ok(file);
    }
    let holder = lockfile::holder(&path, "another rampart process");
    Err(RunError::Blocked(format!(
        "{holder} holds {service} from this state directory ({}): a release in progress, or serving it (`--keep-running`). Wait for it, or follow it with `rampart status {service} --state-dir {}`",
        path.display(),
        local_dir.display()
    )))
}

/// A file that cannot be read as text: missing, unreadable, or not UTF-8 (then `at`
/// says the line and column of the first byte that is not, from 1).
#[derive(Debug)]
pub struct Unreadable {
    /// The file.
    pub file: PathBuf,
    /// Where the first byte that is not UTF-8 is.
    pub at: Option<(u64, u64)>,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.at {
            Some((line, col)) => {
                write!(f, "{}:{line}:{col}: {}", self.file.display(), self.message)
            }
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl From<Unreadable> for RunError {
    fn from(e: Unreadable) -> RunError {
        RunError::Invalid(e.to_string())
    }
}

/// Reads a policy (or any text file a command is given) as UTF-8 text; a byte that
/// is not is refused at its line and column, as a syntax error is.
pub fn read_text(file: &Path) -> Result<String, Unreadable> {
    let unreadable = |at, message| Unreadable {
        file: file.to_path_buf(),
        at,
        message,
    };
    let bytes = std::fs::read(file).map_err(|e| unreadable(None, e.to_string()))?;
    String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let good = e.utf8_error().valid_up_to();
        // The prefix is valid UTF-8 by definition of `valid_up_to`.
        let before = std::str::from_utf8(&bytes[..good]).unwrap_or_default();
        let line = before.matches('\n').count() + 1;
        let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
        unreadable(
            Some((line as u64, col as u64)),
            format!(
                "byte 0x{:02X} is not UTF-8; save the file as UTF-8",
                bytes.get(good).copied().unwrap_or(0)
            ),
        )
    })
}

/// Reads and checks the policy file a command was given. On a problem it prints it
/// and gives exit code 2.
pub fn policy_file(file: &Path) -> Result<Policy, i32> {
    let text = read_text(file).map_err(|e| {
        eprintln!("error: {e}");
        2
    })?;
    load_policy(file, &text).map_err(|e| {
        eprintln!("{e}");
        2
    })
}

/// The policy's TLS certificates (`traffic.proxy.tls`), read and checked, relative
/// paths taken from `base_dir`: `None` for plain HTTP. A missing or unreadable file,
/// bad PEM or a key that does not match its certificate is refused at its field's
/// line in `policy_path`. This is the pre-release check: `rampart validate` reads no
/// file but the policy.
pub fn proxy_tls(
    policy_path: &Path,
    base_dir: &Path,
    spec: &rampart_core::policy::ProxySpec,
) -> Result<Option<rampart_adapters::proxy::tls::TlsFiles>, RunError> {
    use rampart_adapters::proxy::tls::{TlsFile, TlsFiles};
    let Some(tls) = &spec.tls else {
        return Ok(None);
    };
    let files = TlsFiles::from_spec(tls, base_dir);
    files.check().map_err(|(i, e)| {
        let Some(c) = tls.certificates.get(i) else {
            return RunError::Invalid(format!("{}: {e}", policy_path.display()));
        };
        let (pos, field) = match e.file() {
            TlsFile::Cert => (c.cert_pos, "cert"),
            TlsFile::Key => (c.key_pos, "key"),
        };
        RunError::Invalid(format!(
            "{}:{}:{}: {}.{field}: {e}",
            policy_path.display(),
            pos.line,
            pos.col,
            c.path
        ))
    })?;
    Ok(Some(files))
}

/// Parses a policy and turns diagnostics into `file:line:col: path: message` lines.
pub fn load_policy(path: &Path, text: &str) -> Result<Policy, RunError> {
    decoded(path, Policy::from_yaml(text))
}

/// [`load_policy`] of a policy a release may already run with (a resume, a stop):
/// the rules only a new release is refused by are not applied (see
/// `Policy::from_stored`).
pub fn load_stored_policy(path: &Path, text: &str) -> Result<Policy, RunError> {
    decoded(path, Policy::from_stored(text))
}

fn decoded(
    path: &Path,
    policy: Result<Policy, rampart_core::policy::PolicyError>,
) -> Result<Policy, RunError> {
    policy.map_err(|e| {
        let lines: Vec<String> = e
            .diagnostics
            .iter()
            .map(|d| format!("{}:{d}", path.display()))
            .collect();
        RunError::Invalid(lines.join("\n"))
    })
}

/// A readable, unique release id: `service-YYYYMMDD-HHMMSS-xxxx`.
pub fn release_id(service: &str, now_ms: u64) -> String {
    // Random per call (std's hasher keys are random per process and per RandomState):
    // two releases started in the same second do not collide but by chance, and a
    // collision is retried with a new id.
    let suffix = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(now_ms);
        h.write_u32(std::process::id());
        h.finish()
    };
    // A clock reading too large for a calendar date (past the year 9999) is no real
    // time: it is shown as the epoch rather than refused, the suffix keeps ids apart.
    let at = i64::try_from(now_ms)
        .ok()
        .and_then(|ms| jiff::Timestamp::from_millisecond(ms).ok())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    format!(
        "{service}-{}-{:04x}",
        at.to_zoned(jiff::tz::TimeZone::UTC)
            .strftime("%Y%m%d-%H%M%S"),
        suffix & 0xffff
    )
}

/// The versions the stable processes run, each once, in order.
fn stable_versions(processes: Option<&ProcessDeployer>) -> Vec<String> {
    let mut versions = processes
        .map(|p| p.versions(Variant::Stable))
        .unwrap_or_default();
    versions.sort();
    versions.dedup();
    versions
}

/// Refuses a flag release run with another version than the one serving: its stable
/// processes' when they run, else the one on record. It would replace every stable
/// process with that version at once, with no canary and no analysis. With nothing
/// running and nothing on record, the version given starts on its own. (A flag ramp
/// is on the embedded proxy, so its versions are local processes.)
async fn flag_release_serves(
    service: &str,
    version: &str,
    processes: Option<&ProcessDeployer>,
    store: &StateStore,
) -> Result<(), RunError> {
    let mut serving = stable_versions(processes);
    if serving.is_empty() {
        serving.extend(
            store
                .serving_version(service)
                .await
                .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?,
        );
    }
    match serving.as_slice() {
        [] => Ok(()),
        [one] if one == version => Ok(()),
        [one] => Err(RunError::Invalid(format!(
            "{service} serves {one}: a flag release changes no code, so it runs with the version serving (`--version {one}`); release {version} with a canary, blue-green or rolling strategy first"
        ))),
        several => Err(RunError::Invalid(format!(
            "{service}'s stable processes run several versions ({}): a flag release changes no code and runs on one; release the version that should serve with a canary, blue-green or rolling strategy first",
            several.join(", ")
        ))),
    }
}

/// Runs (or resumes) one release. `on_proxy` is called once the proxy listens.
pub async fn run_release(
    opts: RunOptions,
    on_proxy: Option<Box<dyn FnOnce(SocketAddr) + Send>>,
) -> Result<Report, RunError> {
    // Strict for a new release (below); a release under way resumes with its own.
    let file_policy = load_stored_policy(&opts.policy_path, &opts.policy_text)?;
    if opts.stable.as_deref() == Some(opts.version.as_str()) {
        return Err(RunError::Invalid(format!(
            "--stable {} is the version being released; name the version serving now",
            opts.version
        )));
    }
    let store = match &opts.served {
        Some(served) => served.store.clone(),
        None => Arc::new(
            StateStore::open(&opts.state_dir.join("rampart.db"))
                .await
                .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?,
        ),
    };
    let clock = opts.clock.clone();

    // An unfinished release of this service is resumed with the policy it started with;
    // a freeze blocks new releases (the rule is core's, read from these two facts).
    let active = store
        .active(&file_policy.service)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
    let freeze = match active {
        Some(_) => None,
        None => store
            .freeze(&file_policy.service)
            .await
            .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?,
    };
    let admitted = admission::admit_release(
        &opts.version,
        &opts.policy_text,
        opts.hotfix.as_deref(),
        active.as_ref(),
        freeze.as_ref(),
    );
    let (policy, resume_id, hotfix) = match admitted {
        Ok(Start::Resume {
            id,
            policy,
            policy_changed,
        }) => {
            if policy_changed {
                eprintln!(
                    "note: {} changed since release {id} started; the release continues with the policy it started with",
                    opts.policy_path.display(),
                );
            }
            (
                load_stored_policy(&opts.policy_path, &policy)?,
                Some(id),
                None,
            )
        }
        Ok(Start::New { hotfix }) => {
            // Every rule applies to a new release.
            load_policy(&opts.policy_path, &opts.policy_text)?;
            // A calendar freeze yields to a hotfix too, once approved.
            let hotfix = hotfix.or_else(|| {
                admission::calendar_hotfix(
                    opts.hotfix.as_deref(),
                    file_policy.windows.as_ref(),
                    clock.now(),
                )
            });
            (file_policy, None, hotfix)
        }
        Err(StartRefusal::Unfinished(rec)) => {
            return Err(RunError::Blocked(format!(
                "release {} of {} {} is unfinished; finish it with `rampart run -f {} --version {}` before releasing {}",
                rec.id,
                rec.service,
                rec.version,
                opts.policy_path.display(),
                rec.version,
                opts.version
            )));
        }
        Err(StartRefusal::Frozen(f)) => {
            return Err(RunError::Blocked(format!(
                "releases of {} are frozen by {}: {} (lift with `rampart freeze off`, or run a hotfix with `--hotfix REASON`, which needs an approval)",
                file_policy.service, f.actor, f.reason
            )));
        }
    };

    // The service's local processes (its versions, its data plane) live in one
    // directory: with a shared store, the one on record, so that a replica taking a
    // release over finds them.
    let local_dir = match (&policy.traffic, policy.process()) {
        (Traffic::Proxy(_), _) | (_, Some(_)) => {
            process_dir(&store, &policy.service, &opts.state_dir).await?
        }
        _ => opts.state_dir.clone(),
    };
    // One `rampart run` of the service at a time from this directory, before anything
    // of it is touched; one that started meanwhile may have created its release since
    // the check above. (A server runs one release of a service at a time already, and
    // its replicas take turns by the lease.)
    let _running = match opts.served {
        None => Some(run_lock(&local_dir, &policy.service)?),
        Some(_) => None,
    };
    // What is active now must still be what the check above found: nothing for a new
    // release, the same release for a resume (another run may have finished it).
    let active = store
        .active(&policy.service)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
    match (&resume_id, active) {
        (None, None) => {}
        (Some(id), Some(rec)) if rec.id == *id => {}
        (_, Some(rec)) => {
            return Err(RunError::Blocked(format!(
                "release {} of {} {} started meanwhile and is unfinished",
                rec.id, rec.service, rec.version
            )));
        }
        (Some(id), None) => {
            return Err(RunError::Blocked(format!(
                "release {id} of {} finished meanwhile (another run took it to its end); run again to release",
                policy.service
            )));
        }
    }
    let base_dir = match &opts.served {
        Some(served) => served.base_dir.clone(),
        None => opts
            .policy_path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
    };
    let base_dir = if base_dir.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base_dir
    };
    let tls = match policy.proxy() {
        Some(spec) => proxy_tls(&opts.policy_path, &base_dir, spec)?,
        None => None,
    };
    // A release taken up again after it set its routes keeps the split in force (and
    // a flag it ramped is known to stand where its last change put it); one that had
    // not yet (gates, migrations, an approval before anything) starts from 0 %, as a
    // new one does, whatever an earlier release left there.
    let resumed = match &resume_id {
        Some(id) => {
            let (_, log) = store
                .load(id)
                .await
                .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
            Some(crate::dataplane::Resumed {
                routed: log.iter().rev().find_map(|e| match e.input {
                    Input::TrafficSet { weight } => Some(weight),
                    _ => None,
                }),
                since: rampart_core::Release::first_weight_asked(
                    &policy,
                    log.iter().map(|e| (&e.input, e.at)),
                ),
            })
        }
        None => None,
    };
    // Whatever can refuse the release is found before its data plane is touched (a
    // stopped service started again, its sticky salt or uncounted token changed, its
    // flags defined, the last release's flag endpoint closed): its input, a canary left
    // with users, the data plane as it runs, the version serving now, and the address
    // of `/metrics`. A refused release leaves the service as it was.
    let migrations = migration_plan(&policy, &base_dir, &opts.version)?;
    if resume_id.is_none() {
        leftover_canary(
            &policy,
            opts.attach.then_some(local_dir.as_path()),
            &base_dir,
            &local_dir,
            &opts.policy_path,
            store.as_ref(),
        )
        .await?;
        if let Some(dir) = opts.attach.then_some(local_dir.as_path()) {
            unpromoted_canary(&policy, dir, &base_dir, &opts.policy_path, store.as_ref()).await?;
        }
        ramped_flag_is_off(&policy, &opts.policy_path, store.as_ref()).await?;
    }
    let found = crate::dataplane::find(
        &policy,
        opts.attach.then_some(local_dir.as_path()),
        opts.served.as_ref().and_then(|s| s.cluster.clone()),
        tls,
    )
    .await?;
    // On Kubernetes the cluster keeps a canary a halt left with users: a new release
    // would roll it out to its own version under them (or move them), unasked.
    if resume_id.is_none()
        && let Some((left, weight)) = found.canary_in_force()
    {
        return Err(RunError::Blocked(format!(
            "the canary a finished release left ({}) gets {weight} of {}'s traffic; a new release would move those users before any analysis, to its own version or back to stable. Decide where that traffic goes first: `rampart stop -f {} --canary` sends it back to stable and removes the canary",
            left.as_deref().unwrap_or("another version"),
            policy.service,
            opts.policy_path.display()
        )));
    }
    let processes = match (found.cluster_runs_versions(), policy.process()) {
        (false, Some(process)) => Some(Arc::new(ProcessDeployer::new(
            &policy.service,
            process.clone(),
            &base_dir,
            &local_dir,
        ))),
        _ => None,
    };
    let deployer: Arc<dyn Deployer> = match (found.deployer(), &processes) {
        (Some(cluster), _) => cluster,
        (None, Some(processes)) => processes.clone(),
        (None, None) => {
            return Err(RunError::Invalid(
                "the policy's `deploy` section has no deployer in this build".into(),
            ));
        }
    };

    // The version serving now. A resumed release that had started keeps the one it
    // recorded; one that was created but stopped before its start needs it again.
    // On Kubernetes the cluster is the truth: the stable Deployment's image says which
    // version serves, whatever an earlier release recorded.
    // Without one on record (no release of the service was promoted or rolled back
    // yet: the first one halted), the version of the stable processes rampart runs for
    // it, when they all run one: else the next release would take them for nothing
    // and go to 100 % at once, as an initial release.
    let remembered = if opts.stable.is_none() && found.running_version().is_none() {
        let recorded = store
            .serving_version(&policy.service)
            .await
            .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
        match recorded {
            Some(version) => Some(version),
            None => {
                let mut running = stable_versions(processes.as_deref());
                // A flag release runs on the version serving: its own check below
                // says what to do with several.
                if running.len() > 1 && !policy.strategy.flag_only() {
                    return Err(RunError::Blocked(format!(
                        "no version of {} is on record as serving, and its stable processes run {}: say which one serves with `--stable VERSION`",
                        policy.service,
                        running.join(", ")
                    )));
                }
                running.pop()
            }
        }
    } else {
        None
    };
    let stable = admission::stable_version(
        opts.stable.as_deref(),
        found.running_version(),
        remembered.as_deref(),
    );
    // A flag release changes no code: the version released is both sides, and it
    // must be the one serving.
    let stable = if policy.strategy.flag_only() {
        // Checked when it starts; a resumed one keeps what it started with.
        if resume_id.is_none() {
            flag_release_serves(&policy.service, &opts.version, processes.as_deref(), &store)
                .await?;
        }
        Some(opts.version.clone())
    } else {
        stable
    };
    if stable.is_none() && found.cluster_runs_versions() {
        // On a cluster the stable Deployment always exists (it is the canary's
        // template), so "no stable version" means its image did not match the policy's
        // template; an initial release would leave the canary serving beside it.
        return Err(RunError::Invalid(
            "the stable Deployment's image does not match `deploy.kubernetes.image`, so the version it runs is unknown; fix the template or pass `--stable VERSION`".into(),
        ));
    }
    // Bound now, served once the data plane counts: an address in use is refused here.
    let metrics_listener = match opts.metrics_listen {
        Some(listen) => Some((
            listen,
            tokio::net::TcpListener::bind(listen).await.map_err(|e| {
                RunError::Internal(anyhow::anyhow!("/metrics cannot listen on {listen}: {e}"))
            })?,
        )),
        None => None,
    };
    let tty =
        opts.served.is_none() && opts.output == Output::Text && std::io::stdout().is_terminal();
    let out: Box<dyn std::io::Write + Send> = match (&opts.served, opts.output) {
        (Some(served), _) => Box::new(open_log(&served.log)?),
        (None, Output::Text) => Box::new(std::io::stdout()),
        (None, Output::Json) => Box::new(std::io::stderr()),
    };
    let progress = Progress::new(out, tty, policy.strategy.steps().len());

    // A replica of a shared store that lost its lease leaves the service alone: the
    // data plane may be the one the new leader's release uses (its first acting write,
    // the policy's flags, comes only once the data plane is up).
    store
        .check_acting()
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
    // What the server kept serving from the last release (its flag endpoint) gives
    // way to this one, now that nothing refuses it. A flag endpoint on another port is
    // bound before the last one closes: one in use fails the release with the last
    // one still serving. On the same port it can only be bound once the last one is
    // closed.
    let mut flags_bound = None;
    if let Some(served) = &opts.served {
        let had = served
            .serving
            .lock()
            .await
            .get(&policy.service)
            .and_then(|(previous, _)| previous.flag_addr());
        let listen = policy.flags.as_ref().and_then(|f| f.listen);
        if !matches!((listen, had), (Some(l), Some(h)) if l.port() == h.port()) {
            flags_bound = crate::dataplane::flag_listener(&policy).await?;
        }
        let previous = served.serving.lock().await.remove(&policy.service);
        if let Some((previous, _)) = previous {
            previous.close().await;
        }
    }
    // A data plane started afresh routes only to versions that run now.
    let found = match &processes {
        // The versions are rampart's processes: with none on record, none runs.
        Some(_) => found.with_live(Some(
            rampart_adapters::process::live_endpoints(&policy.service, &local_dir)
                .unwrap_or_default(),
        )),
        None => found,
    };
    let reaching = clock.now_micros();
    let plane = crate::dataplane::start(
        &policy,
        &store,
        &clock,
        opts.attach.then_some(local_dir.as_path()),
        found,
        resumed,
        flags_bound,
    )
    .await?;
    if resume_id.is_none()
        && let (Some(remote), Some(processes)) = (&plane.remote, &processes)
        && let Some(said) = finish_hand_over(
            &policy,
            &store,
            &clock,
            remote,
            plane.routes.as_ref(),
            processes,
        )
        .await?
    {
        progress.line(&said);
    }
    let telemetry = Arc::new(rampart_adapters::telemetry::Telemetry::new(
        &policy.service,
        plane.counted.clone(),
    ));
    let _metrics_server = match metrics_listener {
        Some((listen, listener)) => Some(
            rampart_adapters::telemetry::MetricsServer::serve(listener, telemetry.clone())
                .map_err(|e| {
                    RunError::Internal(anyhow::anyhow!("/metrics cannot listen on {listen}: {e}"))
                })?,
        ),
        None => None,
    };
    if let (Some(f), Some(entry)) = (on_proxy, plane.entry) {
        f(entry);
    }
    if let Some(reached) = &plane.reached {
        progress.line(&format!(
            "{reached} of {} in {:.1} ms",
            policy.service,
            clock.now_micros().saturating_sub(reaching) as f64 / 1000.0
        ));
    }
    // Query metrics' commands run in the policy's directory, like its processes.
    let metrics: Arc<dyn rampart_core::ports::MetricsSource> = {
        let queries = rampart_adapters::query::WithQueries::new(
            plane.metrics.clone(),
            &policy.service,
            &policy.analysis,
            &base_dir,
            &rampart_adapters::query::process_env,
            clock.clone(),
        );
        if queries.any() {
            Arc::new(queries)
        } else {
            plane.metrics.clone()
        }
    };
    // A leader of several replicas that stalls past its lease between a decision and
    // its change must not make the change when it wakes (see `store::acting`).
    let fenced_deployer: Arc<dyn Deployer> = Arc::new(Fenced::new(deployer.clone(), store.clone()));
    let fenced_router: Arc<dyn rampart_core::ports::TrafficRouter> =
        Arc::new(Fenced::new(plane.router.clone(), store.clone()));
    let ports = Ports {
        deployer: fenced_deployer.clone(),
        // A switch to stable finds it running (see `revive`): started again, fenced
        // like every other change, when every replica exited mid-release.
        router: match &processes {
            Some(p) => Arc::new(crate::dataplane::revive::StableRevived::new(
                fenced_router,
                fenced_deployer,
                p.clone(),
                &policy.service,
            )),
            None => fenced_router,
        },
        metrics,
        // A migration command run alone: one that a controller which died left
        // running is waited for, never run beside (see `LocalGates::alone_by`).
        gates: Arc::new(LocalGates::alone_by(
            local_dir
                .join("locks")
                .join(format!("{}.migrations", policy.service)),
        )),
        store: store.clone(),
        flags: store.clone(),
        clock: clock.clone(),
        notifier: Arc::new(PrintNotifier(
            progress.clone(),
            rampart_adapters::notify::HookNotifier::new(policy.notify.clone()),
        )),
        silencer: policy.silences.clone().map(|spec| {
            Arc::new(rampart_adapters::alertmanager::Silencer::new(
                spec,
                &policy.service,
            )) as Arc<dyn rampart_core::ports::Silencer>
        }),
    };
    let watch = Arc::new(RollbackWatch {
        progress: progress.clone(),
        proxy: plane.proxy.clone(),
        telemetry,
        canary_routed_at_zero: std::sync::Mutex::new(None),
    });
    let mut controller =
        Controller::new(policy.clone(), ports, watch.clone()).with_initiator(&opts.initiator);
    if let Some(why) = &hotfix {
        controller = controller.with_hotfix(why);
    }
    if let Some(served) = &opts.served {
        controller = controller.with_inbox(served.inbox.clone());
    }
    if let Some(plan) = migrations {
        progress.line(&format!(
            "migrations: {} file(s), {}",
            plan.files.len(),
            plan.class
        ));
        controller = controller.with_migrations(plan);
    }
    let (id, stable) = match resume_id {
        Some(id) => {
            progress.line(&format!(
                "resuming release {id} of {} {}",
                policy.service, opts.version
            ));
            (id, stable)
        }
        None => {
            let mut id = match &opts.served {
                Some(served) => served.release_id.clone(),
                None => release_id(&policy.service, clock.now()),
            };
            let mut attempts = 0;
            loop {
                match controller
                    .create(&id, &opts.version, &opts.policy_text)
                    .await
                {
                    Ok(()) => break,
                    Err(rampart_controller::ControllerError::Store(e))
                        if e.kind() == rampart_core::ports::PortErrorKind::AlreadyExists
                            && attempts < 5
                            && opts.served.is_none() =>
                    {
                        attempts += 1;
                        id = release_id(&policy.service, clock.now());
                    }
                    Err(e) => return Err(RunError::Blocked(e.to_string())),
                }
            }
            progress.line(&format!(
                "release {id}: {} {} (stable: {}){}",
                policy.service,
                opts.version,
                stable.as_deref().unwrap_or("none, initial release"),
                plane
                    .entry
                    .map(|a| format!(" behind http://{a}"))
                    .unwrap_or_default()
            ));
            (id, stable)
        }
    };

    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let signals = match opts.served {
        None => tokio::spawn(forward_signals(tx, progress.clone())),
        Some(_) => tokio::spawn(async move {
            // Stopping the server leaves the release to resume; nothing aborts it.
            let _keep = tx;
            std::future::pending::<()>().await
        }),
    };
    let status = progress.spawn_status(plane.counted.clone());
    // rampart's own traffic while the release is analysed (`analysis.load`).
    let own_load = crate::load::analysis_load(&policy, plane.entry, plane.uncounted.as_deref());
    let end = controller
        .drive(&id, stable, Some(rx))
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)));
    if let Some(t) = own_load {
        t.abort();
    }
    // The token dies with the release: nothing sent later can hide from the metrics.
    if plane.uncounted.is_some() {
        match (&plane.remote, &plane.proxy) {
            (Some(remote), _) => {
                let _ = remote.set_uncounted("").await;
            }
            (None, Some(proxy)) => proxy.set_uncounted(""),
            (None, None) => {}
        }
    }
    let end = end?;
    if let Some(t) = status {
        t.abort();
    }
    let after = match &plane.remote {
        Some(remote) => {
            // The latest counts, for the report (the status line reads a cached copy).
            let _ = remote.refresh().await;
            (end.outcome() == Some(OutcomeKind::RolledBack))
                .then(|| remote.canary_routed_since_closed())
                .flatten()
        }
        None => watch
            .canary_routed_at_zero
            .lock()
            .ok()
            .and_then(|g| *g)
            .zip(plane.proxy.as_ref())
            .map(|(at_zero, p)| p.routed(Variant::Canary).saturating_sub(at_zero)),
    };
    let totals = plane.counted.totals();

    // The release is over: signals no longer abort it.
    signals.abort();
    if opts.keep_running
        && matches!(
            end.outcome(),
            Some(OutcomeKind::Promoted | OutcomeKind::RolledBack)
        )
    {
        progress.line(&format!(
            "serving on {} until interrupted (Ctrl-C or SIGTERM)",
            plane.serving_on(&policy)
        ));
        until_interrupted().await;
    }
    let leave = !opts.stop_after
        && (opts.attach || opts.served.is_some())
        && (plane.remote.is_some() || end.outcome().is_some_and(|o| o != OutcomeKind::Blocked));
    // A replica that lost its lease since the release ended leaves the versions and
    // the data plane as they are: the next leader decides what runs and where
    // traffic goes (on a shared host, they may be its release's now).
    let acting = match store.may_act() {
        Ok(()) => true,
        Err(e) => {
            progress.line(&format!(
                "{e}: {}'s versions and data plane are left as they are",
                policy.service
            ));
            false
        }
    };
    match (&opts.served, leave) {
        // The service goes on serving what the release left (a halted release
        // included: rampart does not touch its traffic), until its next release: on
        // the winner, which becomes the next release's stable.
        (served, true) => {
            // A flag release runs no canary of its own: a canary still running is an
            // earlier release's (a level-1 rollback left it), never the winner.
            if acting
                && end.outcome() == Some(OutcomeKind::Promoted)
                && !policy.strategy.flag_only()
                && let Some(processes) = &processes
            {
                match hand_over(processes, plane.routes.as_ref()).await {
                    Ok(Some(n)) => progress.line(&format!(
                        "{} {} serves as stable ({n} replica(s)); the next release starts from it",
                        policy.service, end.version
                    )),
                    Ok(None) => {}
                    Err(e) => progress.line(&format!(
                        "WARNING: the winner serves, but as the canary: {e}; the next release (or `rampart serve`) finishes the hand-over first"
                    )),
                }
            }
            // A promoted flag release routed its flag-on users as the canary cohort,
            // on stable's own processes: with the flag on for everyone now, the
            // routes go back to all-stable (the same processes, so no user notices),
            // or the next release's new version would take the canary's weight, and
            // every user, the moment it is ready. (`routes`: the flag stays on.)
            if acting
                && end.outcome() == Some(OutcomeKind::Promoted)
                && policy.strategy.flag_only()
                && let Some(processes) = &processes
            {
                let stable = processes.endpoints(Variant::Stable);
                if !stable.is_empty()
                    && let Err(e) = all_to_stable(plane.routes.as_ref(), &stable).await
                {
                    progress.line(&format!(
                        "WARNING: the data plane still routes the flag-on users as the canary cohort ({e}): the next release's new version would take their share once ready; release again only once the routes send all to stable (`rampart status`)"
                    ));
                }
            }
            // A data plane that routes to nothing (a first release blocked or rolled
            // back) has nothing to keep serving.
            let idle = match &plane.remote {
                Some(remote) => remote
                    .table()
                    .await
                    .is_ok_and(|t| t.stable.is_empty() && t.canary.is_empty()),
                None => false,
            };
            if idle && acting {
                crate::dataplane::attach::stop(&policy.service, &local_dir).await?;
            }
            match served {
                Some(served) => {
                    served.serving.lock().await.insert(
                        policy.service.clone(),
                        (plane, KeptDeployer(deployer.clone())),
                    );
                }
                None => {
                    if !idle && end.outcome() != Some(OutcomeKind::Blocked) {
                        progress.line(&format!(
                            "{} keeps serving on {}; `rampart stop -f {}` stops it",
                            policy.service,
                            plane.serving_on(&policy),
                            opts.policy_path.display()
                        ));
                    }
                    plane.close().await;
                }
            }
        }
        (_, false) => {
            // The embedded proxy ends with this process, so nothing would reach the
            // versions: stop them rather than leave orphans. Logs stay in the state
            // directory. A cluster keeps serving what the release left (stopping the
            // stable variant there would be a promotion).
            // The data plane goes first (its clients see the service gone, as after
            // any stop), then the versions behind it: the other way round, every
            // request between the two would be answered 502 by the data plane.
            let stop_versions = acting && !plane.cluster_runs_versions();
            if stop_versions
                && let Some(router) = crate::dataplane::DataPlane::external_router(&policy)
                && end.outcome() != Some(OutcomeKind::Blocked)
            {
                progress.line(&stopping_behind(&policy.service, &router));
            }
            let attached = plane.remote.is_some();
            plane.close().await;
            let plane_stopped = if attached && acting {
                crate::dataplane::attach::stop(&policy.service, &local_dir)
                    .await
                    .map(drop)
            } else {
                Ok(())
            };
            // A data plane that did not stop still sends users to the versions: they
            // stay, and the error says why.
            if stop_versions && plane_stopped.is_ok() {
                for v in [Variant::Canary, Variant::Stable] {
                    let _ = deployer.stop(v).await;
                }
            }
            plane_stopped?;
        }
    }

    let (_, log) = store
        .load(&id)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
    let timeline: Vec<_> = log.into_iter().flat_map(|e| e.events).collect();
    Ok(report(&policy, &end, timeline, totals, after))
}

/// After a promotion: the winner's replicas become the service's stable (they keep
/// running), and the router sends everything to them as stable, through states that
/// each route every request to the winner. Returns how many replicas serve, or `None`
/// when there was no canary replica to hand over (a flag-only release).
async fn hand_over(
    processes: &ProcessDeployer,
    router: &dyn rampart_core::ports::TrafficRouter,
) -> Result<Option<usize>, rampart_core::ports::PortError> {
    let Some(winner) = processes.rebase().await? else {
        return Ok(None);
    };
    all_to_stable(router, &winner).await?;
    Ok(Some(winner.len()))
}

/// The service's newest release that ended, if any.
async fn last_finished(
    store: &StateStore,
    service: &str,
) -> Result<Option<rampart_core::ports::ReleaseRecord>, RunError> {
    Ok(store
        .releases(service)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?
        .into_iter()
        .find(|r| r.outcome.is_some()))
}

/// Where the winner of `last`, a promoted release, runs.
#[derive(Debug, PartialEq, Eq)]
enum Winner {
    /// As the canary (every canary replica runs its version): a hand-over moves it.
    Canary,
    /// On stable's processes already: a flag release's, or one handed over.
    Stable,
    /// The canary runs these other versions: not the winner.
    Other(Vec<String>),
}

fn winner_of(
    last: &rampart_core::ports::ReleaseRecord,
    processes: &ProcessDeployer,
) -> Result<Winner, RunError> {
    // A flag release ran on stable's own processes: any canary still running is an
    // earlier release's, never its winner.
    let flag_only = Policy::from_stored(&last.policy)
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?
        .strategy
        .flag_only();
    let canary = processes.versions(Variant::Canary);
    Ok(if flag_only || canary.is_empty() {
        Winner::Stable
    } else if canary.iter().all(|v| *v == last.version) {
        Winner::Canary
    } else {
        Winner::Other(canary)
    })
}

/// Refuses a new release, before it touches anything, when the last release was
/// promoted and the data plane still routes users to a canary of another version than
/// the one promoted (an escalated release's, left running): the hand-over the new
/// release finishes first ([`finish_hand_over`]) would take it for the winner. Where
/// those users go is a person's call.
async fn unpromoted_canary(
    policy: &Policy,
    state_dir: &Path,
    base_dir: &Path,
    policy_path: &Path,
    store: &StateStore,
) -> Result<(), RunError> {
    let (Traffic::Proxy(_), Some(process)) = (&policy.traffic, policy.process()) else {
        return Ok(());
    };
    let last = last_finished(store, &policy.service).await?;
    let Some(last) = last.filter(|r| r.outcome == Some(OutcomeKind::Promoted)) else {
        return Ok(());
    };
    let Some(table) = crate::dataplane::attach::routes(&policy.service, state_dir).await? else {
        return Ok(());
    };
    if crate::serve::restore::all_on_stable(&table) {
        return Ok(());
    }
    let processes = ProcessDeployer::new(&policy.service, process.clone(), base_dir, state_dir);
    let Winner::Other(canary_versions) = winner_of(&last, &processes)? else {
        return Ok(());
    };
    Err(RunError::Blocked(format!(
        "the routes of {} still send {} of its users to a canary running {}, which is not {}, the version its last release promoted: a new release would move them before any analysis. Decide where that traffic goes first: `rampart stop -f {} --canary` sends it back to stable and stops the canary",
        policy.service,
        table.weight,
        canary_versions.join(", "),
        last.version,
        policy_path.display()
    )))
}

/// Before a new release: when the last one was promoted but its hand-over did not
/// finish (its controller died first, or the hand-over failed), the data plane still
/// routes every user to the winner as the canary, at 100 %. The release's own canary
/// would take that slot, and every user, the moment it is ready. The hand-over is
/// finished first, as `rampart serve` does after a restart: the winner's replicas become
/// stable's, and the routes send everything to them as stable (every state between
/// routes each request to the winner). Audited; says what it did, or `None` when there
/// was nothing to finish.
async fn finish_hand_over(
    policy: &Policy,
    store: &Arc<StateStore>,
    clock: &Arc<dyn Clock>,
    remote: &rampart_adapters::proxy::remote::RemotePlane,
    routes: &dyn rampart_core::ports::TrafficRouter,
    processes: &ProcessDeployer,
) -> Result<Option<String>, RunError> {
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let last = last_finished(store, &policy.service).await?;
    let Some(last) = last.filter(|r| r.outcome == Some(OutcomeKind::Promoted)) else {
        return Ok(None);
    };
    let table = remote.table().await.map_err(|e| internal(e.to_string()))?;
    if crate::serve::restore::all_on_stable(&table) {
        return Ok(None);
    }
    // A canary of another version was refused before anything ran
    // (`unpromoted_canary`); one that came meanwhile is not taken for the winner.
    let rebase = winner_of(&last, processes)? == Winner::Canary;
    store.may_act().map_err(|e| internal(e.to_string()))?;
    let winner = if rebase {
        processes
            .rebase()
            .await
            .map_err(|e| internal(e.to_string()))?
    } else {
        None
    };
    // Its records moved already (or a flag release): only the routes are left.
    let serving = winner.unwrap_or_else(|| processes.endpoints(Variant::Stable));
    // With nothing of it left running (the host lost it), the routes still go to
    // stable: the new release's version never takes the share of a winner gone.
    all_to_stable(routes, &serving)
        .await
        .map_err(|e| internal(e.to_string()))?;
    let why = format!(
        "the hand-over after release {} ({} promoted) had not finished: {} serve as stable now, with every user (the routes had the canary at {})",
        last.id,
        last.version,
        if serving.is_empty() {
            "none of its replicas runs any more, and nothing".to_string()
        } else {
            format!("its {} replica(s)", serving.len())
        },
        table.weight
    );
    let audited = store
        .record_operator_action(
            clock.now(),
            "rampart run",
            "traffic_restored",
            &policy.service,
            &why,
        )
        .await;
    Ok(Some(match audited {
        Ok(()) => why,
        Err(e) => format!("{why}; not audited: {e}"),
    }))
}

/// Refuses a new release while the service's data plane still sends users to a canary
/// that the last release left there when it halted, or rolled back at level 1 (flags
/// off, the canary kept its weight): the new release would replace that canary with
/// its own version at that weight, before any analysis. Where those users go is a
/// human's decision (`rampart stop --canary`). Only a canary that still answers is
/// such a leftover: one whose processes are gone (the service stopped, the host
/// rebooted) serves no one, and a new release replacing it makes nothing worse. After
/// an escalation the new release is the roll forward the page offers, and goes on.
///
/// The embedded data plane says what it routes. Behind nginx or HAProxy, with the
/// versions run by rampart, the split is the one the last release recorded, and the
/// canary the processes on record: a new release there would first send those users
/// back to stable, unasked and unaudited, so it is refused the same way. (On
/// Kubernetes the cluster keeps the canary; `rampart stop --canary` settles it too.)
///
/// It reads, and changes nothing: it runs before the release touches its data plane.
async fn leftover_canary(
    policy: &Policy,
    attach_in: Option<&Path>,
    base_dir: &Path,
    local_dir: &Path,
    policy_path: &Path,
    store: &StateStore,
) -> Result<(), RunError> {
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let last = last_finished(store, &policy.service).await?;
    let Some(last) = last.filter(|r| {
        matches!(
            r.outcome,
            Some(OutcomeKind::Halted | OutcomeKind::RolledBack)
        )
    }) else {
        return Ok(());
    };
    let routed = matches!(policy.traffic, Traffic::Nginx(_) | Traffic::Haproxy(_));
    // The embedded data plane's routes, read only: a running one's, else those it
    // would come back with.
    let routes = match (&policy.traffic, attach_in) {
        (Traffic::Proxy(_), Some(dir)) => {
            crate::dataplane::attach::routes(&policy.service, dir).await?
        }
        _ => None,
    };
    let processes = policy
        .process()
        .map(|process| ProcessDeployer::new(&policy.service, process.clone(), base_dir, local_dir));
    let (weight, canary) = match (routes, processes) {
        (Some(table), _) => {
            let carries = table.weight > rampart_core::Weight::ZERO || !table.matches.is_empty();
            // A flag release's cohort runs on stable's own processes: a next flag
            // release takes it over as its own (any other release would give its
            // share to a new version before any analysis, and is refused).
            let flag_cohort = policy.strategy.flag_only()
                && table.canary.iter().all(|c| table.stable.contains(c));
            if !carries || flag_cohort {
                return Ok(());
            }
            (table.weight, table.canary)
        }
        (None, Some(processes)) if routed => {
            // The routes the last release left, as its log rebuilds them: its weight,
            // and its step's match rules unless a rollback cleared them (past level 1).
            let (_, log) = store
                .load(&last.id)
                .await
                .map_err(|e| internal(e.to_string()))?;
            let ran = Policy::from_stored(&last.policy).map_err(|e| internal(e.to_string()))?;
            let end = Release::replay(&ran, log.iter().map(|e| (&e.input, e.at)));
            let matched = !ran.strategy.matches_at(end.step).is_empty()
                && end.rollback_level.is_none_or(|level| level == 1);
            if end.weight == rampart_core::Weight::ZERO && !matched {
                return Ok(());
            }
            (end.weight, processes.endpoints(Variant::Canary))
        }
        _ => return Ok(()),
    };
    if canary.is_empty() || !any_answers(&canary).await {
        return Ok(());
    }
    Err(RunError::Blocked(format!(
        "the routes of {} send {weight} of its users (and any its step's match rules select) to the canary a finished release left there ({} endpoint(s) answering); a new release would move them before any analysis, to its own version or back to stable. Decide where that traffic goes first: `rampart stop -f {} --canary` sends it back to stable and stops the canary",
        policy.service,
        canary.len(),
        policy_path.display()
    )))
}

/// Refuses a release that ramps a flag the store has on by default (the policy's
/// `default` applies only when a flag is first created; `rampart flags set --default
/// on` may have turned it on since): everyone outside the ramp would have it on, and
/// the proxy would measure them as stable. It reads, and changes nothing.
async fn ramped_flag_is_off(
    policy: &Policy,
    policy_path: &Path,
    store: &StateStore,
) -> Result<(), RunError> {
    let Some(flag) = policy.strategy.ramped_flag() else {
        return Ok(());
    };
    let states = rampart_core::ports::FlagStore::flags(store, &policy.service)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
    match states.iter().find(|f| f.name == flag) {
        Some(f) if f.default => Err(RunError::Blocked(format!(
            "flag `{flag}` of {} is on by default in the flag store: everyone outside the ramp has it on already, and the release would measure them as stable. Turn its default off first: `rampart flags set {flag} --default off --reason REASON -f {}`",
            policy.service,
            policy_path.display()
        ))),
        // On for part of the users already (an operator's ramp, a halted release's):
        // the first step would take it from those beyond its weight. On for everyone
        // (the last release of it promoted it), a flag release has nothing left to
        // ramp; a canary that ramps it with its weight starts it from its first step,
        // as a new canary does (the flag gates the new version's code: docs/flags.md).
        Some(f)
            if f.ramp > rampart_core::Weight::ZERO
                && (f.ramp < rampart_core::Weight::FULL || policy.strategy.flag_only()) =>
        {
            Err(RunError::Blocked(format!(
                "flag `{flag}` of {} is on for {} of its users already in the flag store: the release's first step would switch it off for those beyond its weight. Ramp a new flag, or take this one down first (`rampart flags set {flag} --ramp 0 --reason REASON -f {}`: off for everyone it is on for now)",
                policy.service,
                f.ramp,
                policy_path.display()
            )))
        }
        _ => Ok(()),
    }
}

/// Whether any of `addrs` accepts a TCP connection (probed one after another, up to
/// the first that does).
pub(crate) async fn any_answers(addrs: &[SocketAddr]) -> bool {
    for addr in addrs {
        if answers(*addr).await {
            return true;
        }
    }
    false
}

/// Whether something at `addr` accepts a TCP connection within 2 s: a version's
/// process that still runs.
pub(crate) async fn answers(addr: SocketAddr) -> bool {
    let connect = tokio::net::TcpStream::connect(addr);
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(2), connect).await,
        Ok(Ok(_))
    )
}

/// Routes everything to `stable` as stable, through states that each send every
/// request to `stable` or to what served before (stable's endpoints first, then the
/// weight to 0, then no canary).
pub(crate) async fn all_to_stable(
    router: &dyn rampart_core::ports::TrafficRouter,
    stable: &[SocketAddr],
) -> Result<(), rampart_core::ports::PortError> {
    router.set_backends(Variant::Stable, stable).await?;
    router.set_weight(rampart_core::Weight::ZERO, &[]).await?;
    router.set_backends(Variant::Canary, &[]).await
}

/// Opens (appending) a served release's progress log.
fn open_log(path: &Path) -> Result<std::fs::File, RunError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| RunError::Internal(anyhow::anyhow!("{}: {e}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| RunError::Internal(anyhow::anyhow!("{}: {e}", path.display())))
}

/// Reads and classifies the migrations this version ships, before anything runs; which
/// of them apply is core's decision. A file that does not parse stops the release here
/// (exit 2).
fn migration_plan(
    policy: &Policy,
    base_dir: &Path,
    version: &str,
) -> Result<Option<MigrationPlan>, RunError> {
    let shipped = match &policy.migrations {
        Some(spec) => {
            let dir = base_dir.join(spec.dir_for(version));
            let has_sql = std::fs::read_dir(&dir)
                .map(|d| {
                    d.flatten().any(|e| {
                        e.path().extension().is_some_and(|x| x == "sql") || e.path().is_dir()
                    })
                })
                .unwrap_or(false);
            if has_sql {
                Some(crate::migrations::check(&[dir]).map_err(RunError::Invalid)?)
            } else {
                None
            }
        }
        None => None,
    };
    Ok(admission::migration_plan(
        policy.migrations.as_ref(),
        shipped.as_ref(),
    ))
}

/// Passes transitions to the progress printer and remembers how many requests had been
/// routed to the canary when a rollback confirmed weight 0, so the report can show
/// that none were routed there afterwards (the embedded proxy counts routing).
struct RollbackWatch {
    progress: Arc<Progress>,
    proxy: Option<Proxy>,
    telemetry: Arc<rampart_adapters::telemetry::Telemetry>,
    canary_routed_at_zero: std::sync::Mutex<Option<u64>>,
}

impl rampart_controller::Observer for RollbackWatch {
    fn on_transition(
        &self,
        input: &Input,
        state: &Release,
        events: &[rampart_core::release::AuditEvent],
    ) {
        if state.phase == rampart_core::Phase::RollingBack
            && state.weight == rampart_core::Weight::ZERO
            && let Some(proxy) = &self.proxy
            && let Ok(mut at) = self.canary_routed_at_zero.lock()
            && at.is_none()
        {
            *at = Some(proxy.routed(Variant::Canary));
        }
        self.telemetry.observe(state);
        self.progress.on_transition(input, state, events);
    }
}

/// Builds the final report of a release.
pub fn report(
    policy: &Policy,
    end: &Release,
    timeline: Vec<rampart_core::release::AuditEvent>,
    totals: rampart_core::metrics::IntervalSample,
    after: Option<u64>,
) -> Report {
    let decision = end.decision.clone();
    let outcome = end.outcome().unwrap_or(OutcomeKind::Halted);
    Report {
        outcome,
        reason: decision
            .as_ref()
            .map(|d| d.reason.clone())
            .unwrap_or_default(),
        decided_at_s: decision
            .as_ref()
            .map_or(0.0, |d| d.at.saturating_sub(end.started_at) as f64 / 1000.0),
        release_id: end.id.clone(),
        service: policy.service.clone(),
        version: end.version.clone(),
        stable_version: end.stable.clone(),
        final_weight: end.weight.percent(),
        requests: Requests {
            stable: totals.stable.requests,
            canary: totals.canary.requests,
        },
        canary_routed_after_rollback: after,
        rollback_level: (outcome == OutcomeKind::RolledBack)
            .then_some(end.rollback_level)
            .flatten(),
        timeline,
    }
}

/// What `rampart run --stop-after` says when it stops the versions an external router
/// still points at.
fn stopping_behind(service: &str, router: &str) -> String {
    format!(
        "WARNING: stopping {service}'s versions while {router} still routes its users to them: they get 502/503 from now on (--stop-after). Without --stop-after the winner keeps serving after the release; or point the router elsewhere first."
    )
}

/// Returns at the first SIGINT or SIGTERM (either ends `--keep-running`, as it ends
/// the release before the outcome).
async fn until_interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
}

/// First SIGINT or SIGTERM: abort, which rolls back in order. Second: exit at once
/// (the release stays resumable).
async fn forward_signals(tx: tokio::sync::mpsc::UnboundedSender<Input>, progress: Arc<Progress>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return;
    };
    let which = tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
    };
    progress.line(&format!("{which} received: aborting and rolling back (send it again to exit at once; the release can be resumed)"));
    let _ = tx.send(Input::Abort {
        actor: format!("operator ({which})"),
        reason: "interrupted".into(),
        force: false,
    });
    tokio::select! {
        _ = int.recv() => {},
        _ = term.recv() => {},
    }
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    use super::release_id;

    #[test]
    fn release_ids_carry_the_utc_date_and_time_of_their_start() {
        // Expected values from an independent calendar (Python's datetime), including a
        // leap day and the last millisecond of a year.
        for (ms, when) in [
            (0, "19700101-000000"),
            (951_782_400_000, "20000229-000000"),
            (1_764_633_600_123, "20251202-000000"),
            (4_102_444_799_999, "20991231-235959"),
        ] {
            let id = release_id("checkout", ms);
            let (prefix, suffix) = id.rsplit_once('-').expect("a suffix");
            assert_eq!(prefix, format!("checkout-{when}"));
            assert_eq!(suffix.len(), 4, "{id}");
            assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        }
    }
}
