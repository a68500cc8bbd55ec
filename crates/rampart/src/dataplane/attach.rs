//! A controller's way to the service's long-lived data plane: attach to the one that
//! runs, or start it first.
//!
//! Owns finding, starting and checking the data plane process. It must not decide
//! anything about the release.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rampart_adapters::process::LiveEndpoints;
use rampart_adapters::proxy::plane::{self, PlaneFiles, PlaneState};
use rampart_adapters::proxy::remote::{RemoteError, RemotePlane};
use rampart_core::policy::ProxySpec;

use crate::report::RunError;

/// How long a data plane may take to start answering on its admin socket.
const START: Duration = Duration::from_secs(15);

/// The environment mark of a data plane process rampart started (its value is the
/// service), so that nothing else is ever signalled as one.
pub const MARK: &str = "RAMPART_DATAPLANE";

/// Attaches to `service`'s data plane under `state_dir`, starting it when none runs.
/// A running one must listen where the policy says, and keep users on a variant the
/// way it says: moving either means stopping the service first (`rampart stop`).
pub async fn attach(
    service: &str,
    spec: &ProxySpec,
    state_dir: &Path,
    live: Option<&LiveEndpoints>,
) -> Result<Arc<RemotePlane>, RunError> {
    attach_telling(service, spec, state_dir, None, live)
        .await
        .map(|(p, _)| p)
}

/// [`attach`], also saying which: "started" or "attached to", with the pid.
///
/// `tls`: the certificates a data plane started here serves (`Some(None)` for plain
/// HTTP); `None` keeps the ones in its state file (a restore, which has no policy
/// directory to resolve them against).
///
/// `live`: where rampart runs the versions, the endpoints of those that run now. A
/// data plane started afresh (after a reboot, or a crash of its own) comes back with
/// the routes it saved, and routes to none of their endpoints that is not live: the
/// versions may have gone with the host, and their ports may be another program's by
/// now, which users' requests must never reach. Requests wait for the versions' new
/// endpoints (a 503 until they come) instead.
pub async fn attach_telling(
    service: &str,
    spec: &ProxySpec,
    state_dir: &Path,
    tls: Option<Option<plane::TlsState>>,
    live: Option<&LiveEndpoints>,
) -> Result<(Arc<RemotePlane>, String), RunError> {
    let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let files = PlaneFiles::new(&state_dir, service);
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let saved = PlaneState::load(&files.state()).map_err(|e| internal(e.to_string()))?;
    let sticky = plane::StickyBy::from(&spec.sticky);
    if files.is_running() {
        matches(service, spec, saved.as_ref(), tls.as_ref())?;
    } else {
        // The desired address, stickiness, limits and certificates, with the routes
        // it last had.
        let (mut routes, saved_tls) = saved.map(|s| (s.routes, s.tls)).unwrap_or_default();
        if let Some(live) = live {
            only_live(&mut routes, live);
        }
        let state = PlaneState {
            format: plane::FORMAT,
            service: service.to_string(),
            listen: spec.listen,
            sticky,
            routes,
            limits: plane::LimitsState::from(&spec.limits),
            tls: tls.unwrap_or(saved_tls),
            forwarded: plane::TrustState::from(&spec.forwarded),
            upstream_protocol: plane::UpstreamState::from(spec.upstream_protocol),
        };
        files.create_dir().map_err(|e| internal(e.to_string()))?;
        files.ensure_token().map_err(|e| internal(e.to_string()))?;
        state
            .save(&files.state())
            .map_err(|e| internal(e.to_string()))?;
        let plane = start(service, &state_dir, &files).await?;
        return Ok((plane, said("started", &files)));
    }
    // One that holds the lock may not have bound its admin socket yet (it is
    // starting): tried again while it runs, as a start waits for its own.
    let deadline = tokio::time::Instant::now() + START;
    let plane = loop {
        match RemotePlane::attach(&files.socket(), &files.token()).await {
            Ok(plane) => break Arc::new(plane),
            Err(RemoteError::Unreachable { .. })
                if tokio::time::Instant::now() < deadline && files.is_running() =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(internal(e.to_string())),
        }
    };
    Ok((plane, said("attached to", &files)))
}

/// Refuses, changing nothing, when the service's data plane runs under `state_dir` and
/// [`attach_telling`] would refuse it (the same arguments): it listens or keeps users
/// otherwise than `spec` says, serves HTTPS for plain HTTP or the other way round, or
/// speaks another protocol to the versions; and, whether one runs or not, when its
/// state file is of a newer format or corrupt. A release checks this before it
/// touches anything.
pub fn check(
    service: &str,
    spec: &ProxySpec,
    state_dir: &Path,
    tls: Option<&Option<plane::TlsState>>,
) -> Result<(), RunError> {
    let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let files = PlaneFiles::new(&state_dir, service);
    // Read whether or not one runs: a data plane started again reads it too, and
    // one of a newer format, or corrupt, refuses the start.
    let saved = PlaneState::load(&files.state())
        .map_err(|e| RunError::Internal(anyhow::anyhow!(e.to_string())))?;
    if !files.is_running() {
        return Ok(());
    }
    matches(service, spec, saved.as_ref(), tls)
}

/// Whether a running data plane whose state file says `saved` is the one `spec` (and
/// `tls`, unless `None`) describes: moving its address or its stickiness means
/// stopping the service first, switching HTTPS or the versions' protocol a hand-over.
fn matches(
    service: &str,
    spec: &ProxySpec,
    saved: Option<&PlaneState>,
    tls: Option<&Option<plane::TlsState>>,
) -> Result<(), RunError> {
    let Some(saved) = saved else {
        return Ok(());
    };
    let sticky = plane::StickyBy::from(&spec.sticky);
    if (saved.listen != spec.listen && spec.listen.port() != 0) || saved.sticky != sticky {
        return Err(RunError::Invalid(format!(
            "the data plane of {service} runs on {} keeping users by {:?}; the policy says {} by {:?}. Stop the service first (`rampart stop -f POLICY`), then release again",
            saved.listen, saved.sticky, spec.listen, sticky
        )));
    }
    // Plain HTTP and HTTPS are different services to a client: never switched under a
    // running data plane by a release that only attaches to it.
    if let Some(want) = tls
        && saved.tls.is_some() != want.is_some()
    {
        let (runs, says) = if saved.tls.is_some() {
            ("HTTPS", "plain HTTP")
        } else {
            ("plain HTTP", "HTTPS (`tls`)")
        };
        return Err(RunError::Invalid(format!(
            "the data plane of {service} serves {runs} on {}; the policy says {says}. Hand it over to a data plane that reads the policy (`rampart proxy --state-dir DIR -f POLICY --take-over`), then release again",
            saved.listen
        )));
    }
    // Versions that speak one protocol are not spoken to in another by a release that
    // only attaches.
    if saved.upstream_protocol != plane::UpstreamState::from(spec.upstream_protocol) {
        return Err(RunError::Invalid(format!(
            "the data plane of {service} speaks {} to its versions; the policy says `upstream_protocol: {}`. Hand it over to a data plane that reads the policy (`rampart proxy --state-dir DIR -f POLICY --take-over`), then release again",
            rampart_core::policy::UpstreamProtocol::from(saved.upstream_protocol).as_str(),
            spec.upstream_protocol.as_str()
        )));
    }
    Ok(())
}

/// The routes of the service's data plane under `state_dir`, read without changing
/// or starting anything: a running one's, else the ones its state file saved (a data
/// plane started again comes back with them). `None` when it never ran there.
pub async fn routes(
    service: &str,
    state_dir: &Path,
) -> Result<Option<rampart_adapters::proxy::RouteTable>, RunError> {
    let state_dir = std::path::absolute(state_dir).unwrap_or_else(|_| state_dir.to_path_buf());
    let files = PlaneFiles::new(&state_dir, service);
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    if files.is_running() {
        let plane = RemotePlane::attach(&files.socket(), &files.token())
            .await
            .map_err(|e| internal(e.to_string()))?;
        return plane
            .table()
            .await
            .map(Some)
            .map_err(|e| internal(e.to_string()));
    }
    let saved = PlaneState::load(&files.state()).map_err(|e| internal(e.to_string()))?;
    Ok(saved.map(|s| s.routes))
}

/// Keeps `routes` to the `live` endpoints: stable's to live stable replicas, the
/// canary's to live replicas of either (a flag release's cohort is stable's own; a
/// hand-over cut short has the winner recorded as stable and routed as the canary). A
/// canary with none left gets no share.
pub(crate) fn only_live(routes: &mut rampart_adapters::proxy::RouteTable, live: &LiveEndpoints) {
    routes.stable.retain(|e| live.stable.contains(e));
    routes
        .canary
        .retain(|e| live.canary.contains(e) || live.stable.contains(e));
    if routes.canary.is_empty() {
        routes.weight = rampart_core::Weight::ZERO;
        routes.matches.clear();
    }
}

fn said(how: &str, files: &PlaneFiles) -> String {
    match files.pid() {
        Some(pid) => format!("{how} the data plane (pid {pid})"),
        None => format!("{how} the data plane"),
    }
}

/// Starts the data plane as a process of its own (its own process group, so a Ctrl-C
/// at the terminal does not reach it, and nothing of the controller's end does) and
/// waits until its admin socket answers.
async fn start(
    service: &str,
    state_dir: &Path,
    files: &PlaneFiles,
) -> Result<Arc<RemotePlane>, RunError> {
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let exe = std::env::current_exe().map_err(|e| internal(e.to_string()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(files.log())
        .map_err(|e| internal(format!("{}: {e}", files.log().display())))?;
    let log2 = log.try_clone().map_err(|e| internal(e.to_string()))?;
    let mut child = std::process::Command::new(exe);
    child
        .arg("proxy")
        .arg("--state-dir")
        .arg(state_dir)
        .arg("--service")
        .arg(service)
        .env(MARK, service)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    std::os::unix::process::CommandExt::process_group(&mut child, 0);
    let mut child = child
        .spawn()
        .map_err(|e| internal(format!("starting the data plane: {e}")))?;
    let deadline = tokio::time::Instant::now() + START;
    loop {
        match RemotePlane::attach(&files.socket(), &files.token()).await {
            Ok(plane) => {
                // Reaped when it exits (a long-lived `serve` would otherwise keep a
                // zombie of every data plane it started and that stopped since).
                std::thread::spawn(move || {
                    let _ = child.wait();
                });
                return Ok(Arc::new(plane));
            }
            Err(RemoteError::Unreachable { .. }) if tokio::time::Instant::now() < deadline => {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(internal(format!(
                        "the data plane of {service} exited ({status}) as it started; its log {} says: {}",
                        files.log().display(),
                        last_line(&files.log())
                    )));
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => {
                return Err(internal(format!(
                    "the data plane of {service} did not answer: {e}"
                )));
            }
        }
    }
}

fn last_line(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// Stops `service`'s data plane, if one runs: it drains its connections and exits.
/// Returns whether one ran.
pub async fn stop(service: &str, state_dir: &Path) -> Result<bool, RunError> {
    let files = PlaneFiles::new(state_dir, service);
    if !files.is_running() {
        return Ok(false);
    }
    let internal = |e: String| RunError::Internal(anyhow::anyhow!(e));
    let plane = RemotePlane::attach(&files.socket(), &files.token())
        .await
        .map_err(|e| internal(e.to_string()))?;
    plane
        .shutdown()
        .await
        .map_err(|e| internal(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while files.is_running() {
        if tokio::time::Instant::now() > deadline {
            return Err(internal(format!(
                "the data plane of {service} did not stop within 60s"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(true)
}
