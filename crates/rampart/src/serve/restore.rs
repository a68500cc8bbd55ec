//! Desired state kept by `rampart serve`: every service it served runs the version
//! its last release left serving. At start, before any release resumes, everything
//! missing is brought back; afterwards a supervisor restarts a version process that
//! exits between releases.
//!
//! Owns bringing back what is missing: the service's data plane (with its saved
//! routes), its stable version's processes (adopted when they still run, started when
//! they are gone, as after a reboot or a crash), and routes that send everything to
//! them. It must not decide anything about a release: services with a release in
//! flight are left to it, a service whose last release needs a human (halted,
//! escalated) is left alone, and so is one stopped with `rampart stop`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_adapters::process::ProcessDeployer;
use rampart_adapters::proxy::plane::PlaneFiles;
use rampart_adapters::store::StateStore;
use rampart_core::Weight;
use rampart_core::policy::{Policy, ProcessSpec, Traffic};
use rampart_core::ports::{Clock, Deployer, Store};
use rampart_core::release::{OutcomeKind, Variant};

/// How often the supervisor looks at the services' processes.
const WATCH: Duration = Duration::from_secs(1);

/// The first wait before restarting a version that keeps exiting; doubled at every
/// exit within [`STEADY`] of the previous restart, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF_MS: u64 = 1_000;
const MAX_BACKOFF_MS: u64 = 60_000;
const STEADY_MS: u64 = 60_000;

/// What a service should run, from its last release.
struct Desired {
    service: String,
    version: String,
    policy: Policy,
    process: ProcessSpec,
    workdir: PathBuf,
    local_dir: PathBuf,
    promoted: bool,
    /// The last release, when it rolled back a canary of a version: a level-1 rollback
    /// (flags off, verified) left the canary its users on purpose, and only a person
    /// moves them (`rampart stop --canary`). Read only when the routes are not all on
    /// stable.
    rolled_back: Option<String>,
}

impl Desired {
    fn processes(&self) -> ProcessDeployer {
        ProcessDeployer::new(
            &self.service,
            self.process.clone(),
            &self.workdir,
            &self.local_dir,
        )
    }
}

/// How many services are brought back at once (each waits for its version's
/// readiness, mostly idle).
const AT_ONCE: usize = 16;

/// Restores every service, several at once; returns one line per service, for the
/// server's output.
pub async fn restore(
    store: &Arc<StateStore>,
    state_dir: &Path,
    clock: &Arc<dyn Clock>,
) -> Vec<String> {
    let services = match store.services().await {
        Ok(s) => s,
        Err(e) => return vec![format!("rampart serve: services not restored: {e}")],
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for service in services {
        let (store, state_dir, slots, clock) = (
            store.clone(),
            state_dir.to_path_buf(),
            slots.clone(),
            clock.clone(),
        );
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await;
            let restored = match desired(&store, &state_dir, &service).await {
                // (A promoted flag release's canary is none of its own: see `hand_over`.)
                Ok(Some(Ok(d))) => {
                    let rebase = d.promoted && !d.policy.strategy.flag_only();
                    bring_back(&d, rebase, &store, clock.as_ref())
                        .await
                        .map(Some)
                }
                Ok(Some(Err(said))) => Ok(Some(said)),
                Ok(None) => Ok(None),
                Err(e) => Err(e),
            };
            match restored {
                Ok(line) => line,
                Err(e) => Some(format!("rampart serve: {service} not restored: {e}")),
            }
        });
    }
    let mut lines = Vec::new();
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(line)) = done {
            lines.push(line);
        }
    }
    lines
}

/// What `service` should run, if `serve` keeps it running: `None` when it is not
/// serve's to keep (no finished release served here, a release in flight, a cluster),
/// `Some(Err(line))` when it is left alone on purpose, with why.
async fn desired(
    store: &Arc<StateStore>,
    state_dir: &Path,
    service: &str,
) -> Result<Option<Result<Desired, String>>, String> {
    if store
        .active(service)
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Ok(None); // its release resumes, and owns the service until its outcome
    }
    let Some(version) = store
        .serving_version(service)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None);
    };
    let releases = store.releases(service).await.map_err(|e| e.to_string())?;
    let Some(last) = releases.first() else {
        return Ok(None);
    };
    if !matches!(
        last.outcome,
        Some(OutcomeKind::Promoted | OutcomeKind::RolledBack)
    ) {
        return Ok(None);
    }
    let Some(submission) = store
        .submission(&last.id)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(None); // released by `rampart run` into this store: not served here
    };
    let policy = Policy::from_stored(&last.policy).map_err(|e| e.to_string())?;
    let Some(process) = policy.process().cloned() else {
        return Ok(None); // a cluster keeps its own desired state
    };
    if !matches!(policy.traffic, Traffic::Proxy(_)) {
        // Behind nginx or HAProxy, a version started again would get a new port the
        // router does not know: left to the service's next release.
        return Ok(None);
    }
    let local_dir = crate::run::process_dir(store, service, state_dir)
        .await
        .map_err(|e| e.to_string())?;
    if PlaneFiles::new(&local_dir, service).stopped().exists() {
        return Ok(Some(Err(format!(
            "rampart serve: {service} stays stopped (`rampart stop`); its next release starts it"
        ))));
    }
    // The last release of a canary since the last promotion (a flag release after it
    // left its canary as it was), when it rolled back.
    let rolled_back = releases
        .iter()
        .take_while(|r| r.outcome != Some(OutcomeKind::Promoted))
        .find(|r| Policy::from_stored(&r.policy).is_ok_and(|p| !p.strategy.flag_only()))
        .filter(|r| r.outcome == Some(OutcomeKind::RolledBack))
        .map(|r| r.id.clone());
    Ok(Some(Ok(Desired {
        service: service.to_string(),
        version,
        policy,
        process,
        workdir: PathBuf::from(&submission.workdir),
        local_dir,
        promoted: last.outcome == Some(OutcomeKind::Promoted),
        rolled_back,
    })))
}

/// Brings the service's stable version and routes back; says what it did. For the
/// supervisor (`rebase` false), a service stopped meanwhile (`rampart stop`) is left
/// stopped: what was just started is stopped again. Traffic it moves is audited.
async fn bring_back(
    d: &Desired,
    rebase: bool,
    store: &Arc<StateStore>,
    clock: &dyn Clock,
) -> Result<String, String> {
    let service = &d.service;
    let version = &d.version;
    // Read from the store before this; each step may wait (a version's readiness): a
    // replica that lost its lease meanwhile changes nothing more, the next leader
    // decides (the service may be in its release by then).
    let acting = || store.may_act().map_err(|e| e.to_string());
    acting()?;
    let processes = d.processes();
    if rebase {
        // A winner still recorded as the canary (its release ended before the hand-over).
        processes.rebase().await.map_err(|e| e.to_string())?;
    }
    let deployed = processes
        .deploy(Variant::Stable, version)
        .await
        .map_err(|e| e.to_string())?;
    // Replicas beyond the policy's count: stopped once nothing of ours routes to
    // them (no router of rampart's here; the data plane's below, after its routes).
    let kept = u32::try_from(deployed.endpoints.len()).unwrap_or(u32::MAX);
    let Traffic::Proxy(spec) = &d.policy.traffic else {
        if !deployed.retired.is_empty() {
            processes
                .trim(Variant::Stable, kept)
                .await
                .map_err(|e| e.to_string())?;
        }
        return Ok(format!(
            "rampart serve: {service} {version} runs ({})",
            deployed.detail
        ));
    };
    if PlaneFiles::new(&d.local_dir, service).stopped().exists() {
        let _ = processes.stop(Variant::Stable).await;
        return Err(format!("{service} was stopped (`rampart stop`) meanwhile"));
    }
    acting()?;
    // The routes as they were: a data plane started afresh drops the endpoints of
    // replicas that are gone, canary's share with them, which is still a move of
    // users this restore reports and audits.
    let before = crate::dataplane::attach::routes(service, &d.local_dir)
        .await
        .ok()
        .flatten();
    // The versions are rampart's processes here: with none on record, none runs.
    let live = rampart_adapters::process::live_endpoints(service, &d.local_dir).unwrap_or_default();
    let plane = crate::dataplane::attach::attach(service, spec, &d.local_dir, Some(&live))
        .await
        .map_err(|e| e.to_string())?;
    let mut table = plane.table().await.map_err(|e| e.to_string())?;
    // Decided (and audited) on the routes as they were; a canary the fresh start
    // dropped is gone, whoever answers on its port now.
    let mut dropped = false;
    if let Some(before) = before.filter(|b| !all_on_stable(b) && all_on_stable(&table)) {
        table = before;
        dropped = true;
    }
    let mut said = format!(
        "rampart serve: {service} {version} serves on http://{} ({})",
        spec.listen, deployed.detail
    );
    // A canary nobody answers for serves no one: its users go to stable.
    let keep_split = !dropped
        && !all_on_stable(&table)
        && level_one(store, d).await?
        && crate::run::any_answers(&table.canary).await;
    acting()?;
    match routes_to_restore(&table, &deployed.endpoints, keep_split) {
        Restore::Nothing => {}
        Restore::StableEndpoints => {
            rampart_core::ports::TrafficRouter::set_backends(
                plane.as_ref(),
                Variant::Stable,
                &deployed.endpoints,
            )
            .await
            .map_err(|e| e.to_string())?;
            if keep_split {
                said.push_str("; the canary keeps the users its level-1 rollback left it (`rampart stop --canary` moves them)");
            }
        }
        Restore::AllToStable => {
            let why = format!(
                "all traffic to {version}, the version its last release left serving (the routes had the canary at {} with {} endpoint(s))",
                table.weight,
                table.canary.len()
            );
            crate::run::all_to_stable(plane.as_ref(), &deployed.endpoints)
                .await
                .map_err(|e| e.to_string())?;
            if let Err(e) = store
                .record_operator_action(
                    clock.now(),
                    "rampart serve",
                    "traffic_restored",
                    service,
                    &why,
                )
                .await
            {
                said.push_str(&format!("; not audited: {e}"));
            }
            said.push_str(&format!("; {why}"));
        }
    }
    if !deployed.retired.is_empty() {
        let drain = d.policy.rollback.drain;
        if let Err(e) = rampart_core::ports::TrafficRouter::drain_endpoints(
            plane.as_ref(),
            &deployed.retired,
            drain,
        )
        .await
        {
            said.push_str(&format!("; {e}"));
        }
        let trimmed = processes
            .trim(Variant::Stable, kept)
            .await
            .map_err(|e| e.to_string())?;
        said.push_str(&format!("; {trimmed}"));
    }
    Ok(said)
}

/// What the routes need for a service brought back.
#[derive(Debug, PartialEq, Eq)]
enum Restore {
    /// They send everything to stable's endpoints already.
    Nothing,
    /// Stable's endpoints changed (a version started again); the split stays.
    StableEndpoints,
    /// Everything to stable (a promotion whose hand-over did not finish, routes lost).
    AllToStable,
}

/// Whether the routes send every request to stable.
pub(crate) fn all_on_stable(table: &rampart_adapters::proxy::RouteTable) -> bool {
    table.canary.is_empty() && table.weight == Weight::ZERO && table.matches.is_empty()
}

/// Whether the service's last release ended in a level-1 rollback.
async fn level_one(store: &Arc<StateStore>, d: &Desired) -> Result<bool, String> {
    let Some(id) = &d.rolled_back else {
        return Ok(false);
    };
    match crate::serve::views::Loaded::read(store, id).await {
        Some(Ok(l)) => Ok(l.state().rollback_level == Some(1)),
        Some(Err(e)) => Err(e),
        None => Ok(false),
    }
}

/// What the routes `table` need with stable on `stable`; `keep_split` when the last
/// release left a canary that answers its users on purpose (a level-1 rollback).
fn routes_to_restore(
    table: &rampart_adapters::proxy::RouteTable,
    stable: &[std::net::SocketAddr],
    keep_split: bool,
) -> Restore {
    match (
        table.stable.as_slice() == stable,
        all_on_stable(table) || keep_split,
    ) {
        (true, true) => Restore::Nothing,
        (false, true) => Restore::StableEndpoints,
        (_, false) => Restore::AllToStable,
    }
}

/// When a service's stable may be restarted next, and how long it waits after that.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    not_before: u64,
    wait: u64,
    last_restart: u64,
}

/// Restarts, for as long as the server runs, a version process of a served service
/// that exited between releases: with backoff while it keeps exiting, each restart
/// said on the server's output and appended to `logs/SERVICE.restarts.log` in the
/// state directory.
pub async fn supervise(queue: Arc<super::queue::Queue>, clock: Arc<dyn Clock>) {
    let store = queue.store().clone();
    let state_dir = queue.state_dir().to_path_buf();
    let mut backoff: HashMap<String, Backoff> = HashMap::new();
    loop {
        tokio::time::sleep(WATCH).await;
        let Ok(services) = store.services().await else {
            continue;
        };
        for service in services {
            let Ok(Some(Ok(d))) = desired(&store, &state_dir, &service).await else {
                continue;
            };
            let processes = d.processes();
            if processes.live(Variant::Stable) >= processes.replicas() {
                continue;
            }
            let gone = processes.exited(Variant::Stable);
            let now = clock.now();
            let b = backoff.entry(service.clone()).or_insert(Backoff {
                not_before: 0,
                wait: FIRST_BACKOFF_MS,
                last_restart: 0,
            });
            if now < b.not_before {
                continue;
            }
            // No release of the service starts while its version is restarted (one
            // that started since the look owns the service: left to it).
            if !queue.claim(&service) {
                continue;
            }
            if store.active(&service).await.ok().flatten().is_some() {
                queue.unclaim(&service);
                continue;
            }
            let result = bring_back(&d, false, &store, clock.as_ref()).await;
            queue.unclaim(&service);
            b.wait = if b.last_restart > 0 && now.saturating_sub(b.last_restart) < STEADY_MS {
                (b.wait * 2).min(MAX_BACKOFF_MS)
            } else {
                FIRST_BACKOFF_MS
            };
            b.last_restart = now;
            b.not_before = now + b.wait;
            let pids: Vec<String> = gone.iter().map(|r| r.pid.to_string()).collect();
            let line = serde_json::json!({
                "at": now,
                "service": service,
                "version": d.version,
                "exited_pids": pids,
                "restarted": result.is_ok(),
                "detail": match &result { Ok(s) | Err(s) => s.clone() },
                "next_restart_not_before_ms": b.wait,
            });
            eprintln!(
                "rampart serve: {service} {}: process(es) {} exited; {}",
                d.version,
                pids.join(", "),
                match &result {
                    Ok(s) => format!("restarted: {s}"),
                    Err(e) => format!("restart failed (again in {} ms): {e}", b.wait),
                }
            );
            record(&state_dir, &service, &line.to_string());
        }
    }
}

/// Appends one restart to the service's restart log.
fn record(state_dir: &Path, service: &str, line: &str) {
    use std::io::Write as _;
    let dir = state_dir.join("logs");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{service}.restarts.log")))
    {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::{Restore, routes_to_restore};
    use rampart_adapters::proxy::RouteTable;
    use rampart_core::Weight;
    use std::net::SocketAddr;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn table(stable: u16, canary: Option<u16>, percent: u8) -> RouteTable {
        RouteTable {
            stable: vec![addr(stable)],
            canary: canary.map(addr).into_iter().collect(),
            weight: Weight::from_percent(percent).unwrap(),
            ..RouteTable::default()
        }
    }

    #[test]
    fn a_level_one_rollback_keeps_its_split_and_anything_else_goes_to_stable() {
        let on_canary = table(1, Some(2), 20);
        // Found as its last release left it: nothing to do.
        assert_eq!(
            routes_to_restore(&table(1, None, 0), &[addr(1)], false),
            Restore::Nothing
        );
        assert_eq!(
            routes_to_restore(&on_canary, &[addr(1)], true),
            Restore::Nothing
        );
        // Stable started again on another port: the routes follow it, and a level-1
        // rollback's canary keeps its users; a canary no rollback left is sent none.
        assert_eq!(
            routes_to_restore(&on_canary, &[addr(3)], true),
            Restore::StableEndpoints
        );
        assert_eq!(
            routes_to_restore(&table(1, None, 0), &[addr(3)], false),
            Restore::StableEndpoints
        );
        assert_eq!(
            routes_to_restore(&on_canary, &[addr(1)], false),
            Restore::AllToStable
        );
        assert_eq!(
            routes_to_restore(&on_canary, &[addr(3)], false),
            Restore::AllToStable
        );
    }
}
