//! `rampart stop`: stops a service that releases left serving: its data plane (which
//! drains its connections first) and its versions; or, with `--canary`, only the canary
//! a finished release left carrying traffic (a halt, an escalation, a level-1 rollback):
//! its traffic back to stable first, then its versions, through the adapter of the
//! policy's data plane (the embedded proxy, nginx, HAProxy or Kubernetes).
//!
//! Owns the order of stopping. Refuses while a release of the service is unfinished:
//! that release owns the service until its outcome. `--canary` never leaves users with
//! nothing: it refuses when no stable endpoint answers, and after a release that
//! shipped non-backward-compatible migrations it needs `--force` and a reason (the
//! old code on the new schema is the human's call).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rampart_adapters::haproxy::HaproxyRouter;
use rampart_adapters::nginx::NginxRouter;
use rampart_adapters::process::ProcessDeployer;
use rampart_adapters::store::StateStore;
use rampart_core::migrations::Class;
use rampart_core::policy::{Policy, Traffic};
use rampart_core::ports::{Clock, Deployer, Store, TrafficRouter};
use rampart_core::release::{Input, OutcomeKind, Variant};

use crate::report::RunError;

/// The arguments of `rampart stop`.
#[derive(Debug, clap::Args)]
pub struct StopArgs {
    /// The service's policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// Where state and logs are kept.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: PathBuf,
    /// The store releases are recorded in: `sqlite:PATH` or `postgres://...` (a
    /// server's shared store, whose recorded directory for the service's versions and
    /// data plane is used instead of --state-dir); defaults to the state directory's.
    #[arg(long, env = "RAMPART_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// Only the canary a finished release left carrying traffic: all traffic back to
    /// stable (which must answer), then the canary's versions stopped.
    #[arg(long)]
    pub canary: bool,
    /// With --canary after an escalated release (non-backward-compatible migrations):
    /// the data is repaired and the old code may serve again.
    #[arg(long, requires = "canary")]
    pub force: bool,
    /// Why, for the audit trail (with --canary; required with --force).
    #[arg(long, requires = "canary")]
    pub reason: Option<String>,
    /// Who (with --canary; defaults to $USER, else $LOGNAME, else the user id).
    #[arg(long = "as", value_name = "NAME", requires = "canary")]
    pub actor: Option<String>,
}

/// Runs `rampart stop`.
pub async fn main(args: StopArgs, clock: Arc<dyn Clock>) -> i32 {
    match stop(&args, None, clock.as_ref()).await {
        Ok(lines) => {
            for line in lines {
                println!("{line}");
            }
            0
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            e.exit_code()
        }
    }
}

/// `rampart stop`, its lines on success; with `cluster`, a Kubernetes policy's canary
/// is settled through that client instead of the one its kubeconfig context makes.
pub async fn stop(
    args: &StopArgs,
    cluster: Option<crate::dataplane::Cluster>,
    clock: &dyn Clock,
) -> Result<Vec<String>, RunError> {
    let text = crate::run::read_text(&args.file)?;
    let policy = crate::run::load_stored_policy(&args.file, &text)?;
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let store = crate::serve::open_store(args.store.as_deref(), &args.state_dir)
        .await
        .map_err(RunError::Invalid)?;
    if let Some(active) = store
        .active(&policy.service)
        .await
        .map_err(|e| internal(e.to_string()))?
    {
        return Err(RunError::Blocked(format!(
            "release {} of {} {} is unfinished and owns the service until its outcome; finish it (`rampart run -f {} --version {}`) or roll it back (`rampart rollback {}`) first",
            active.id,
            policy.service,
            active.version,
            args.file.display(),
            active.version,
            active.id
        )));
    }
    if args.canary {
        return stop_canary(args, &policy, &store, cluster, clock).await;
    }
    // Where its data plane and versions are: with a server's store, the directory it
    // records (serve's), not this command's.
    let local_dir = local_dir(&store, &policy, &args.state_dir).await?;
    // First, so that neither a running `serve`'s supervisor nor its next start brings
    // the service back.
    let files = rampart_adapters::proxy::plane::PlaneFiles::new(&local_dir, &policy.service);
    files
        .create_dir()
        .and_then(|()| {
            std::fs::write(files.stopped(), "stopped by `rampart stop`\n").map_err(|source| {
                rampart_adapters::proxy::plane::PlaneError::Io {
                    path: files.stopped(),
                    source,
                }
            })
        })
        .map_err(|e| internal(e.to_string()))?;
    let mut lines = Vec::new();
    if crate::dataplane::attach::stop(&policy.service, &local_dir).await? {
        lines.push(format!(
            "{}: the data plane stopped (open connections drained)",
            policy.service
        ));
    }
    if let Some(deployer) = deployer(args, &policy, &local_dir) {
        for v in [Variant::Canary, Variant::Stable] {
            let detail = deployer
                .stop(v)
                .await
                .map_err(|e| internal(e.to_string()))?;
            lines.push(format!("{} {}: {detail}", policy.service, v.as_str()));
        }
        // Its versions are gone: a data plane started again (by the next release)
        // holds requests until that release's versions answer, instead of sending
        // them to the ports the stopped ones had.
        let path = files.state();
        match rampart_adapters::proxy::plane::PlaneState::load(&path) {
            Ok(Some(mut saved)) => {
                saved.routes.stable.clear();
                saved.routes.canary.clear();
                if let Err(e) = saved.save(&path) {
                    lines.push(format!(
                        "{}: its saved routes still name the stopped versions ({e})",
                        policy.service
                    ));
                }
            }
            Ok(None) => {}
            // Stopped all the same: the file is the operator's to restore (a data
            // plane refuses to start from it, and says why).
            Err(e) => lines.push(format!(
                "{}: its saved routes were left as they are ({e})",
                policy.service
            )),
        }
    }
    if lines.is_empty() {
        lines.push(format!("{}: nothing of it runs here", policy.service));
    }
    Ok(lines)
}

/// `rampart stop --canary`: the canary a finished release left carrying traffic goes:
/// stable brought back to its replicas, each ready (as a rollback does), every request
/// to stable, the canary's requests drained, then the canary's versions stop. Audited
/// as `canary_stopped`, or `canary_stop_failed` when it failed after traffic moved.
async fn stop_canary(
    args: &StopArgs,
    file_policy: &Policy,
    store: &std::sync::Arc<StateStore>,
    cluster: Option<crate::dataplane::Cluster>,
    clock: &dyn Clock,
) -> Result<Vec<String>, RunError> {
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let service = &file_policy.service;
    if args.force && args.reason.is_none() {
        return Err(RunError::Invalid(
            "--force needs --reason: say what was repaired, for the audit trail".into(),
        ));
    }
    let releases = store
        .releases(service)
        .await
        .map_err(|e| internal(e.to_string()))?;
    // The routes and processes in place are the ones the last release of a canary set
    // up, with the policy it ran (the file may have changed since; a flag release
    // after it changed no process); its stable is the version to go back to.
    let mut ran: Option<(&rampart_core::ports::ReleaseRecord, Policy)> = None;
    let mut stable_version = None;
    // Every release since the service last promoted may have left a schema stable's
    // code cannot run on: escalated, or shipping non-backward-compatible migrations.
    let mut breaking = None;
    for r in &releases {
        if r.outcome == Some(OutcomeKind::Promoted) {
            break;
        }
        let (_, log) = store
            .load(&r.id)
            .await
            .map_err(|e| internal(e.to_string()))?;
        let start = log.iter().find_map(|entry| match &entry.input {
            Input::Start {
                stable,
                planned_migrations,
                ..
            } => Some((stable.clone(), *planned_migrations)),
            _ => None,
        });
        if ran.is_none()
            && let Ok(p) = Policy::from_stored(&r.policy)
            && !p.strategy.flag_only()
        {
            stable_version = start.as_ref().and_then(|(s, _)| s.clone());
            ran = Some((r, p));
        }
        let contract = start.is_some_and(|(_, m)| m.is_some_and(|c| c >= Class::Contract));
        if breaking.is_none() && (r.outcome == Some(OutcomeKind::Escalated) || contract) {
            breaking = Some(r);
        }
    }
    if let Some(r) = breaking
        && !args.force
    {
        return Err(RunError::Blocked(format!(
            "release {} of {service} {} shipped non-backward-compatible migrations: stable's code may not run on the new schema. Repair the data, then `rampart stop -f {} --canary --force --reason \"what was repaired\"`",
            r.id,
            r.version,
            args.file.display()
        )));
    }
    let policy = ran.as_ref().map_or(file_policy, |(_, p)| p);
    if policy.strategy.flag_only() {
        return Err(RunError::Invalid(format!(
            "{service} releases by flag: it has no canary process, and its flag-on users are set with `rampart flags set`"
        )));
    }
    // Where serve keeps the service's processes, run from the directory its release
    // was submitted from.
    let local_dir = local_dir(store, policy, &args.state_dir).await?;
    let submitted = match ran.as_ref() {
        Some((r, _)) => store
            .submission(&r.id)
            .await
            .map_err(|e| internal(e.to_string()))?
            .map(|s| PathBuf::from(s.workdir)),
        None => None,
    };
    let base = submitted.unwrap_or_else(|| policy_dir(args));
    let mut done = Done::default();
    let settling = Settling {
        args,
        policy,
        store,
        stable_version: stable_version.as_deref(),
        processes: policy
            .process()
            .map(|process| ProcessDeployer::new(service, process.clone(), &base, &local_dir)),
        local_dir: &local_dir,
    };
    let settled = match &policy.traffic {
        Traffic::Proxy(_) => settling.embedded(&mut done).await,
        _ => settling.routed(cluster, &mut done).await,
    };
    // A flag ramped with the canary's weight is on for the canary's users only: once
    // they are on stable (this run moved them, or an earlier one that failed after it
    // did), it goes off too, whatever happens next (as a rollback takes it to 0 with
    // the weight), or they would get it from the old version, measured as stable.
    let mut settled = settled;
    if done.moved || matches!(settled, Ok(true)) {
        match canary_flag_off(args, policy, store, clock).await {
            Ok(Some(line)) => done.lines.push(line),
            Ok(None) => {}
            Err(why) if settled.is_ok() => {
                settled = Err(RunError::Internal(anyhow::anyhow!(why)));
            }
            Err(why) => done.lines.push(why),
        }
    }
    // The trail says what was done, not only why.
    let what = std::iter::once(reason(args))
        .chain(done.lines.iter().cloned())
        .collect::<Vec<_>>()
        .join("; ");
    match settled {
        Ok(true) => {}
        Ok(false) => return Ok(vec![format!("{service}: no data plane runs here")]),
        Err(e) if !done.moved && done.lines.is_empty() => return Err(e),
        Err(e) => {
            // Something was done (stable's replicas, traffic): the trail says what,
            // and how it ended.
            let why = format!("{what}; then failed: {e}");
            let _ = audit(args, store, clock, service, "canary_stop_failed", &why).await;
            return Err(e);
        }
    }
    let actor = audit(args, store, clock, service, "canary_stopped", &what).await?;
    let mut lines = done.lines;
    lines.push(format!("{service}: audited as canary_stopped by {actor}"));
    Ok(lines)
}

/// Switches off the flag the canary's release ramped with its weight, if it is still on
/// for some users; what it did, or why it could not.
async fn canary_flag_off(
    args: &StopArgs,
    policy: &Policy,
    store: &StateStore,
    clock: &dyn Clock,
) -> Result<Option<String>, String> {
    let service = &policy.service;
    let Some(flag) = policy.strategy.ramped_flag() else {
        return Ok(None);
    };
    let still_on = rampart_core::ports::FlagStore::flags(store, service)
        .await
        .map_err(|e| e.0)?
        .into_iter()
        .any(|f| f.name == flag && f.ramp > rampart_core::Weight::ZERO);
    if !still_on {
        return Ok(None);
    }
    let change = rampart_core::ports::FlagChange {
        name: flag.to_string(),
        ramp: Some(rampart_core::Weight::ZERO),
        default: None,
        actor: args.actor.clone().unwrap_or_else(crate::client::local_user),
        reason: format!("{}: the canary stopped, its flag with it", reason(args)),
        at: clock.now(),
    };
    match rampart_core::ports::FlagStore::set_flag(store, service, &change).await {
        Ok(_) => Ok(Some(format!("{service}: flag `{flag}` off (ramp 0)"))),
        Err(e) => Err(format!(
            "flag `{flag}` is still on for the canary's users, now on stable: {e}; switch it off with `rampart flags set {flag} --ramp 0`"
        )),
    }
}

fn reason(args: &StopArgs) -> String {
    args.reason
        .clone()
        .unwrap_or_else(|| "the canary stopped from the command line".into())
}

/// Records an operator action on the service; returns who acted.
async fn audit(
    args: &StopArgs,
    store: &StateStore,
    clock: &dyn Clock,
    service: &str,
    kind: &str,
    why: &str,
) -> Result<String, RunError> {
    let actor = args.actor.clone().unwrap_or_else(crate::client::local_user);
    store
        .record_operator_action(clock.now(), &actor, kind, service, why)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?;
    Ok(actor)
}

/// What settling a canary did so far: whether traffic moved, and each step, in words.
#[derive(Default)]
struct Done {
    moved: bool,
    lines: Vec<String>,
}

/// What settling a canary needs.
struct Settling<'a> {
    args: &'a StopArgs,
    policy: &'a Policy,
    store: &'a StateStore,
    /// The version the last release kept as stable, when it named one.
    stable_version: Option<&'a str>,
    /// The service's local processes, when it runs any.
    processes: Option<ProcessDeployer>,
    /// Where its processes and data plane are recorded.
    local_dir: &'a std::path::Path,
}

impl Settling<'_> {
    /// Behind the embedded data plane. `false` when no data plane runs here.
    async fn embedded(&self, done: &mut Done) -> Result<bool, RunError> {
        let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
        let service = &self.policy.service;
        let files = rampart_adapters::proxy::plane::PlaneFiles::new(self.local_dir, service);
        if !files.is_running() {
            return Ok(false);
        }
        let plane =
            rampart_adapters::proxy::remote::RemotePlane::attach(&files.socket(), &files.token())
                .await
                .map_err(|e| internal(e.to_string()))?;
        let table = plane.table().await.map_err(|e| internal(e.to_string()))?;
        let processes = self.processes.as_ref();
        if !table.canary.is_empty() || table.weight > rampart_core::Weight::ZERO {
            self.still_idle().await?;
            let (stable, retired) = match processes {
                Some(p) => self.stable_processes(p, done).await?,
                // Endpoints outside rampart's processes: the table's, each answering.
                None => {
                    every_stable_answers(self.args, service, &table.stable).await?;
                    (table.stable.clone(), Vec::new())
                }
            };
            self.to_stable(&plane, &stable, done).await?;
            if let Some(p) = processes {
                self.retire(&plane, p, &retired, stable.len(), done).await;
            }
            done.lines
                .push(format!("{service}: the canary had {}", table.weight));
        }
        if let Some(p) = processes {
            self.stop_the_canary(p, done).await?;
        }
        Ok(true)
    }

    /// Behind nginx or HAProxy (the versions are local processes), or on Kubernetes
    /// (the stable Deployment must be ready): the router's own adapter moves the
    /// traffic, as a release would.
    async fn routed(
        &self,
        cluster: Option<crate::dataplane::Cluster>,
        done: &mut Done,
    ) -> Result<bool, RunError> {
        let service = &self.policy.service;
        self.still_idle().await?;
        let processes = self.processes.clone();
        let (router, (stable, retired), deployer): (
            Arc<dyn TrafficRouter>,
            Endpoints,
            Arc<dyn Deployer>,
        ) = match (&self.policy.traffic, processes) {
            (Traffic::Kubernetes(_), _) => {
                let plane = crate::dataplane::cluster(self.policy, cluster).await?;
                let cluster = plane.deployer.clone();
                // The Services send users to ready pods: stable must have them.
                if let Err(e) = cluster.verify(Variant::Stable, STABLE_READY).await {
                    return Err(RunError::Blocked(format!(
                        "stable of {service} is not ready ({e}): sending the canary's users there would leave them with nothing. Nothing was moved; the canary keeps its users"
                    )));
                }
                (plane.router.clone(), (Vec::new(), Vec::new()), cluster)
            }
            (_, None) => {
                return Err(RunError::Invalid(format!(
                    "{service}'s versions are not run by rampart here (no `deploy.process`): set its canary with the tools that run them"
                )));
            }
            (traffic, Some(processes)) => {
                let stable = self.stable_processes(&processes, done).await?;
                let router: Arc<dyn TrafficRouter> = match traffic {
                    // Nobody receives nginx's request log between releases; the
                    // next release renders its own receiver.
                    Traffic::Nginx(spec) => Arc::new(NginxRouter::new(
                        spec.clone(),
                        service,
                        SocketAddr::from(([127, 0, 0, 1], 9)),
                    )),
                    Traffic::Haproxy(spec) => Arc::new(
                        HaproxyRouter::new(&spec.socket, &spec.backend).keeping_the_split(),
                    ),
                    Traffic::Proxy(_) | Traffic::Kubernetes(_) => {
                        unreachable!("settled above and by Settling::embedded")
                    }
                };
                (router, stable, Arc::new(processes))
            }
        };
        self.to_stable(router.as_ref(), &stable, done).await?;
        self.retire(
            router.as_ref(),
            deployer.as_ref(),
            &retired,
            stable.len(),
            done,
        )
        .await;
        self.stop_the_canary(deployer.as_ref(), done).await?;
        Ok(true)
    }

    /// Stable's replicas beyond its count (a policy that asks for fewer now), out of
    /// rotation since `to_stable`: drained, then stopped, so that no request still on
    /// its way to one is cut off.
    async fn retire(
        &self,
        router: &dyn TrafficRouter,
        deployer: &dyn Deployer,
        retired: &[SocketAddr],
        kept: usize,
        done: &mut Done,
    ) {
        if retired.is_empty() {
            return;
        }
        let service = &self.policy.service;
        if let Err(e) = router
            .drain_endpoints(retired, self.policy.rollback.drain)
            .await
        {
            done.lines.push(format!("{service} stable: {e}"));
        }
        match deployer
            .trim(Variant::Stable, u32::try_from(kept).unwrap_or(u32::MAX))
            .await
        {
            Ok(detail) => done.lines.push(format!("{service} stable: {detail}")),
            Err(e) => done.lines.push(format!(
                "{service} stable: its replicas beyond {kept} were not stopped: {e}"
            )),
        }
    }

    /// Stable's processes, brought back to their replicas and each ready (a rolling
    /// release may have replaced some, a replica may have exited), as a rollback does
    /// before it moves traffic; their endpoints. Without the stable version on record,
    /// the replicas running must be all there and answer. Moves no traffic.
    async fn stable_processes(
        &self,
        p: &ProcessDeployer,
        done: &mut Done,
    ) -> Result<Endpoints, RunError> {
        let service = &self.policy.service;
        // Stable as it runs: never replaced by another version here, never started
        // from nothing (a person decides that).
        let running = p.versions(Variant::Stable);
        if running.is_empty() {
            return Err(RunError::Blocked(format!(
                "stable of {service} does not run: sending the canary's users there would leave them with nothing. Nothing was moved; the canary keeps its users. Start stable again, or stop the whole service (`rampart stop -f {}`)",
                self.args.file.display()
            )));
        }
        if let Some(version) = self.stable_version
            && running.iter().any(|v| v != version)
        {
            return Err(RunError::Blocked(format!(
                "stable of {service} runs {}, not {version} as its last release recorded: nothing was moved or restarted; the canary keeps its users",
                running.join(", ")
            )));
        }
        let Some(version) = self.stable_version else {
            let stable = p.endpoints(Variant::Stable);
            every_stable_answers(self.args, service, &stable).await?;
            if stable.len() < p.replicas() {
                return Err(RunError::Blocked(format!(
                    "stable of {service} runs {} of its {} replicas: they would take the whole load. Nothing was moved; the canary keeps its users",
                    stable.len(),
                    p.replicas()
                )));
            }
            return Ok((stable, Vec::new()));
        };
        // What it took (replicas adopted, replaced or started) goes on the record.
        match p.deploy(Variant::Stable, version).await {
            Ok(d) if !d.endpoints.is_empty() => {
                done.lines.push(format!("{service} stable: {}", d.detail));
                Ok((d.endpoints, d.retired))
            }
            // Stable's replicas may have been replaced or started on the way: on the
            // record either way.
            Ok(_) => {
                done.lines
                    .push(format!("{service} stable: {version} has no replica"));
                Err(RunError::Blocked(format!(
                    "stable of {service} ({version}) has no replica. Nothing was moved; the canary keeps its users"
                )))
            }
            Err(e) => {
                done.lines
                    .push(format!("{service} stable: {version} not ready: {e}"));
                Err(RunError::Blocked(format!(
                    "stable of {service} ({version}) is not ready at its {} replicas ({e}): sending the canary's users there would leave them with nothing, or with too little. Nothing was moved; the canary keeps its users",
                    p.replicas()
                )))
            }
        }
    }

    /// Every request to stable, then the canary's requests in flight drained.
    async fn to_stable(
        &self,
        router: &dyn TrafficRouter,
        stable: &[SocketAddr],
        done: &mut Done,
    ) -> Result<(), RunError> {
        let service = &self.policy.service;
        self.still_idle().await?;
        done.moved = true;
        crate::run::all_to_stable(router, stable)
            .await
            .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?;
        done.lines.push(if stable.is_empty() {
            format!("{service}: all traffic to stable")
        } else {
            format!(
                "{service}: all traffic to stable ({} endpoint(s))",
                stable.len()
            )
        });
        if let Err(e) = router
            .drain(Variant::Canary, self.policy.rollback.drain)
            .await
        {
            done.lines
                .push(format!("{service} canary: not drained: {e}"));
        }
        Ok(())
    }

    /// Refuses when a release of the service started since `stop` looked: it owns
    /// the service (and a canary of the same name) until its outcome.
    async fn still_idle(&self) -> Result<(), RunError> {
        let active = self
            .store
            .active(&self.policy.service)
            .await
            .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?;
        match active {
            None => Ok(()),
            Some(r) => Err(RunError::Blocked(format!(
                "release {} of {} started meanwhile and owns the service until its outcome: stopped here",
                r.id, self.policy.service
            ))),
        }
    }

    async fn stop_the_canary(
        &self,
        deployer: &dyn Deployer,
        done: &mut Done,
    ) -> Result<(), RunError> {
        let service = &self.policy.service;
        // A release started meanwhile would own a canary of the same name.
        self.still_idle().await?;
        let detail = deployer
            .stop(Variant::Canary)
            .await
            .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?;
        done.lines.push(format!("{service} canary: {detail}"));
        Ok(())
    }
}
/// How long a Kubernetes stable Deployment may take to report itself ready.
const STABLE_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Stable's endpoints to route to, and its replicas beyond its count (retired: to
/// drain and stop once out of rotation).
type Endpoints = (Vec<SocketAddr>, Vec<SocketAddr>);

/// Refuses (moving nothing) unless stable has endpoints and every one answers: fewer
/// would take the whole load.
async fn every_stable_answers(
    args: &StopArgs,
    service: &str,
    stable: &[SocketAddr],
) -> Result<(), RunError> {
    let mut silent = Vec::new();
    for addr in stable {
        if !crate::run::answers(*addr).await {
            silent.push(addr.to_string());
        }
    }
    if stable.is_empty() || !silent.is_empty() {
        return Err(RunError::Blocked(format!(
            "stable of {service} does not answer ({}): sending the canary's users there would leave them with nothing, or with too little. Nothing was moved; the canary keeps its users. Start stable again, or stop the whole service (`rampart stop -f {}`)",
            if stable.is_empty() {
                "it has no endpoint".to_string()
            } else {
                format!("silent: {}", silent.join(", "))
            },
            args.file.display()
        )));
    }
    Ok(())
}

/// The service's local processes, when it runs any, resolved as its releases ran them
/// (relative to the policy's directory), recorded in `local_dir`.
fn deployer(
    args: &StopArgs,
    policy: &rampart_core::policy::Policy,
    local_dir: &std::path::Path,
) -> Option<ProcessDeployer> {
    let process = policy.process()?;
    Some(ProcessDeployer::new(
        &policy.service,
        process.clone(),
        &policy_dir(args),
        local_dir,
    ))
}

/// Where the service's data plane and local processes are: the directory a server's
/// store records for it (serve's), else `state_dir`. Read only: a stop records no
/// directory (nothing it stops starts there).
async fn local_dir(
    store: &StateStore,
    policy: &Policy,
    state_dir: &std::path::Path,
) -> Result<PathBuf, RunError> {
    let service = &policy.service;
    let local = matches!(policy.traffic, Traffic::Proxy(_)) || policy.process().is_some();
    if !local || !store.is_postgres() {
        return Ok(state_dir.to_path_buf());
    }
    let owner = store
        .process_owner(service)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e)))?;
    let here = crate::run::host_name();
    match owner {
        None => Ok(state_dir.to_path_buf()),
        Some((host, dir)) if host == here => Ok(PathBuf::from(dir)),
        Some((host, dir)) => Err(RunError::Invalid(format!(
            "the versions of {service} run on host {host} (recorded in {dir}), not on {here}: run this command there"
        ))),
    }
}

/// The policy file's directory, which a release resolves its processes against.
fn policy_dir(args: &StopArgs) -> PathBuf {
    args.file
        .parent()
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."))
}
