//! Desired state restored when `rampart serve` starts: every service it served comes
//! back on the version its last release left serving, before any release resumes.
//!
//! Owns bringing back what is missing: the service's data plane (with its saved
//! routes), its stable version's processes (adopted when they still run, started when
//! they are gone, as after a reboot), and routes that send everything to them. It must
//! not decide anything about a release: services with a release in flight are left to
//! it, and a service whose last release needs a human (halted, escalated) is left alone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_adapters::process::ProcessDeployer;
use rampart_adapters::store::StateStore;
use rampart_core::Weight;
use rampart_core::policy::{Policy, Traffic};
use rampart_core::ports::{Deployer, Store, TrafficRouter};
use rampart_core::release::{OutcomeKind, Variant};

/// Restores every service; returns one line per service, for the server's output.
pub async fn restore(store: &Arc<StateStore>, state_dir: &Path) -> Vec<String> {
    let services = match store.services().await {
        Ok(s) => s,
        Err(e) => return vec![format!("rampart serve: services not restored: {e}")],
    };
    let mut lines = Vec::new();
    for service in services {
        match restore_one(store, state_dir, &service).await {
            Ok(Some(line)) => lines.push(line),
            Ok(None) => {}
            Err(e) => lines.push(format!("rampart serve: {service} not restored: {e}")),
        }
    }
    lines
}

async fn restore_one(
    store: &Arc<StateStore>,
    state_dir: &Path,
    service: &str,
) -> Result<Option<String>, String> {
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
    let policy = Policy::from_yaml(&last.policy).map_err(|e| e.to_string())?;
    let Some(process) = policy.process() else {
        return Ok(None); // a cluster keeps its own desired state
    };
    let local_dir = crate::run::process_dir(store, service, state_dir)
        .await
        .map_err(|e| e.to_string())?;
    if rampart_adapters::proxy::plane::PlaneFiles::new(&local_dir, service)
        .stopped()
        .exists()
    {
        return Ok(Some(format!(
            "rampart serve: {service} stays stopped (`rampart stop`); its next release starts it"
        )));
    }
    let processes = ProcessDeployer::new(
        service,
        process.clone(),
        &PathBuf::from(&submission.workdir),
        &local_dir,
    );
    if last.outcome == Some(OutcomeKind::Promoted) {
        // A winner still recorded as the canary (its release ended before the hand-over).
        processes.rebase().await.map_err(|e| e.to_string())?;
    }
    let deployed = processes
        .deploy(Variant::Stable, &version)
        .await
        .map_err(|e| e.to_string())?;
    let Traffic::Proxy(spec) = &policy.traffic else {
        return Ok(Some(format!(
            "rampart serve: {service} {version} runs ({})",
            deployed.detail
        )));
    };
    let plane = crate::dataplane::attach::attach(service, spec, &local_dir)
        .await
        .map_err(|e| e.to_string())?;
    let table = plane.table().await.map_err(|e| e.to_string())?;
    if table.stable != deployed.endpoints
        || !table.canary.is_empty()
        || table.weight != Weight::ZERO
    {
        plane
            .set_backends(Variant::Stable, &deployed.endpoints)
            .await
            .map_err(|e| e.to_string())?;
        plane
            .set_weight(Weight::ZERO, &[])
            .await
            .map_err(|e| e.to_string())?;
        plane
            .set_backends(Variant::Canary, &[])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(Some(format!(
        "rampart serve: {service} {version} serves on http://{} ({})",
        spec.listen, deployed.detail
    )))
}
