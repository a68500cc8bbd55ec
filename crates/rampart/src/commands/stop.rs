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
use rampart_core::policy::Traffic;
use rampart_core::ports::{Deployer, Store, TrafficRouter};
use rampart_core::release::Variant;

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
    /// Who (with --canary; defaults to $USER).
    #[arg(long = "as", value_name = "NAME", requires = "canary")]
    pub actor: Option<String>,
}

/// Runs `rampart stop`.
pub async fn main(args: StopArgs) -> i32 {
    match stop(&args, None).await {
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
) -> Result<Vec<String>, RunError> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| RunError::Invalid(format!("{}: {e}", args.file.display())))?;
    let policy = crate::run::load_policy(&args.file, &text)?;
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let store = StateStore::open(&args.state_dir.join("rampart.db"))
        .await
        .map_err(|e| internal(e.to_string()))?;
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
        return stop_canary(args, &policy, &store, cluster).await;
    }
    // First, so that neither a running `serve`'s supervisor nor its next start brings
    // the service back.
    let files = rampart_adapters::proxy::plane::PlaneFiles::new(&args.state_dir, &policy.service);
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
    if crate::dataplane::attach::stop(&policy.service, &args.state_dir).await? {
        lines.push(format!(
            "{}: the data plane stopped (open connections drained)",
            policy.service
        ));
    }
    if let Some(deployer) = deployer(args, &policy) {
        for v in [Variant::Canary, Variant::Stable] {
            let detail = deployer
                .stop(v)
                .await
                .map_err(|e| internal(e.to_string()))?;
            lines.push(format!("{} {}: {detail}", policy.service, v.as_str()));
        }
    }
    if lines.is_empty() {
        lines.push(format!("{}: nothing of it runs here", policy.service));
    }
    Ok(lines)
}

/// `rampart stop --canary`: the canary a finished release left carrying traffic goes:
/// every request to stable (stable's endpoints, the weight to 0, no canary, each state
/// routing every request to stable or to what served before), then the canary's
/// versions stop. Audited as `canary_stopped`.
async fn stop_canary(
    args: &StopArgs,
    policy: &rampart_core::policy::Policy,
    store: &StateStore,
    cluster: Option<crate::dataplane::Cluster>,
) -> Result<Vec<String>, RunError> {
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let service = &policy.service;
    if args.force && args.reason.is_none() {
        return Err(RunError::Invalid(
            "--force needs --reason: say what was repaired, for the audit trail".into(),
        ));
    }
    if policy.strategy.flag_only() {
        return Err(RunError::Invalid(format!(
            "{service} releases by flag: it has no canary process, and its flag-on users are set with `rampart flags set`"
        )));
    }
    let last = store
        .releases(service)
        .await
        .map_err(|e| internal(e.to_string()))?
        .into_iter()
        .next();
    // A release that shipped non-backward-compatible migrations (escalated, or halted
    // before it could) leaves a schema stable's code may not run on.
    let breaking = match &last {
        Some(last) => {
            let (_, log) = store
                .load(&last.id)
                .await
                .map_err(|e| internal(e.to_string()))?;
            last.outcome == Some(rampart_core::release::OutcomeKind::Escalated)
                || log.iter().any(|entry| {
                    matches!(
                        entry.input,
                        rampart_core::release::Input::Start {
                            planned_migrations: Some(
                                rampart_core::migrations::Class::Contract
                                    | rampart_core::migrations::Class::Irreversible
                            ),
                            ..
                        }
                    )
                })
        }
        None => false,
    };
    if let Some(last) = &last
        && breaking
        && !args.force
    {
        return Err(RunError::Blocked(format!(
            "release {} of {service} {} shipped non-backward-compatible migrations: stable's code may not run on the new schema. Repair the data, then `rampart stop -f {} --canary --force --reason \"what was repaired\"`",
            last.id,
            last.version,
            args.file.display()
        )));
    }
    let mut lines = match &policy.traffic {
        Traffic::Proxy(_) => match settle_embedded(args, policy).await? {
            Some(lines) => lines,
            None => return Ok(vec![format!("{service}: no data plane runs here")]),
        },
        _ => settle_routed(args, policy, cluster).await?,
    };
    let actor = args
        .actor
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".into());
    let reason = args
        .reason
        .clone()
        .unwrap_or_else(|| "the canary stopped from the command line".into());
    #[allow(clippy::disallowed_methods)] // an audit record's wall-clock time
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    store
        .record_operator_action(at, &actor, "canary_stopped", service, &reason)
        .await
        .map_err(|e| internal(e.to_string()))?;
    lines.push(format!("{service}: audited as canary_stopped by {actor}"));
    Ok(lines)
}

/// Behind the embedded data plane: its routing table says where stable is. `None` when
/// no data plane runs here.
async fn settle_embedded(
    args: &StopArgs,
    policy: &rampart_core::policy::Policy,
) -> Result<Option<Vec<String>>, RunError> {
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let service = &policy.service;
    let files = rampart_adapters::proxy::plane::PlaneFiles::new(&args.state_dir, service);
    if !files.is_running() {
        return Ok(None);
    }
    let plane =
        rampart_adapters::proxy::remote::RemotePlane::attach(&files.socket(), &files.token())
            .await
            .map_err(|e| internal(e.to_string()))?;
    let table = plane.table().await.map_err(|e| internal(e.to_string()))?;
    let mut lines = Vec::new();
    if !table.canary.is_empty() || table.weight > rampart_core::Weight::ZERO {
        every_stable_answers(args, service, &table.stable).await?;
        lines.extend(to_stable(policy, &plane, &table.stable).await?);
        lines.push(format!("{service}: the canary had {}", table.weight));
    }
    if let Some(deployer) = deployer(args, policy) {
        lines.push(stop_the_canary(service, &deployer).await?);
    }
    Ok(Some(lines))
}

/// Behind nginx or HAProxy (the versions are local processes, their records say
/// where stable listens), or on Kubernetes (the stable Deployment must be ready):
/// the router's own adapter moves the traffic, as a release would.
async fn settle_routed(
    args: &StopArgs,
    policy: &rampart_core::policy::Policy,
    cluster: Option<crate::dataplane::Cluster>,
) -> Result<Vec<String>, RunError> {
    let service = &policy.service;
    let processes = deployer(args, policy);
    let (router, stable, deployer): (Arc<dyn TrafficRouter>, Vec<SocketAddr>, Arc<dyn Deployer>) =
        match (&policy.traffic, processes) {
            (Traffic::Kubernetes(_), _) => {
                let plane = crate::dataplane::kubernetes(policy, None, cluster).await?;
                let Some(cluster) = plane.deployer.clone() else {
                    return Err(RunError::Internal(anyhow::anyhow!(
                        "the Kubernetes adapter came without its deployer"
                    )));
                };
                // The Services send users to ready pods: stable must have them.
                if let Err(e) = cluster.verify(Variant::Stable, STABLE_READY).await {
                    return Err(RunError::Blocked(format!(
                        "stable of {service} is not ready ({e}): sending the canary's users there would leave them with nothing. Nothing was moved; the canary keeps its users"
                    )));
                }
                (plane.router.clone(), Vec::new(), cluster)
            }
            (_, None) => {
                return Err(RunError::Invalid(format!(
                    "{service}'s versions are not run by rampart here (no `deploy.process`): set its canary with the tools that run them"
                )));
            }
            (traffic, Some(processes)) => {
                let stable = processes.endpoints(Variant::Stable);
                every_stable_answers(args, service, &stable).await?;
                let router: Arc<dyn TrafficRouter> = match traffic {
                    // Nobody receives nginx's request log between releases; the next
                    // release renders its own receiver.
                    Traffic::Nginx(spec) => Arc::new(NginxRouter::new(
                        spec.clone(),
                        service,
                        SocketAddr::from(([127, 0, 0, 1], 9)),
                    )),
                    Traffic::Haproxy(spec) => {
                        Arc::new(HaproxyRouter::new(&spec.socket, &spec.backend))
                    }
                    Traffic::Proxy(_) | Traffic::Kubernetes(_) => {
                        unreachable!("settled above and by settle_embedded")
                    }
                };
                (router, stable, Arc::new(processes))
            }
        };
    let mut lines = to_stable(policy, router.as_ref(), &stable).await?;
    lines.push(stop_the_canary(service, deployer.as_ref()).await?);
    Ok(lines)
}

/// How long a Kubernetes stable Deployment may take to report itself ready.
const STABLE_READY: std::time::Duration = std::time::Duration::from_secs(10);

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

/// Every request to stable, then the canary's requests in flight drained.
async fn to_stable(
    policy: &rampart_core::policy::Policy,
    router: &dyn TrafficRouter,
    stable: &[SocketAddr],
) -> Result<Vec<String>, RunError> {
    let service = &policy.service;
    crate::run::all_to_stable(router, stable)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?;
    let mut lines = vec![if stable.is_empty() {
        format!("{service}: all traffic to stable")
    } else {
        format!(
            "{service}: all traffic to stable ({} endpoint(s))",
            stable.len()
        )
    }];
    if let Err(e) = router.drain(Variant::Canary, policy.rollback.drain).await {
        lines.push(format!("{service} canary: not drained: {e}"));
    }
    Ok(lines)
}

async fn stop_the_canary(service: &str, deployer: &dyn Deployer) -> Result<String, RunError> {
    let detail = deployer
        .stop(Variant::Canary)
        .await
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?;
    Ok(format!("{service} canary: {detail}"))
}

/// The service's local processes, when it runs any, resolved as its releases ran them
/// (relative to the policy's directory).
fn deployer(args: &StopArgs, policy: &rampart_core::policy::Policy) -> Option<ProcessDeployer> {
    let process = policy.process()?;
    let base = args
        .file
        .parent()
        .map(PathBuf::from)
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| PathBuf::from("."));
    Some(ProcessDeployer::new(
        &policy.service,
        process.clone(),
        &base,
        &args.state_dir,
    ))
}
