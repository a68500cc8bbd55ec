//! The long-lived data plane process (`rampart proxy --state-dir`): one per service,
//! started by `rampart run` or `serve` when absent (or by systemd), never by a release.
//!
//! Owns its lifetime: refusing to run twice, restoring and persisting the routes,
//! serving the admin socket, and handing its listening socket to a newer process. It
//! must not decide anything about a release.

use std::net::TcpListener as StdListener;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::io::Write as _;

use rampart_adapters::proxy::admin::{AdminServer, PlaneHooks};
use rampart_adapters::proxy::plane::{self, PlaneError, PlaneFiles, PlaneLock, PlaneState};
use rampart_adapters::proxy::{Proxy, ProxyOptions, RouteTable};
use rampart_adapters::telemetry::Telemetry;
use tokio::sync::Notify;

use crate::commands::proxy::ProxyArgs;

/// Runs the data plane until stopped; returns the exit code (3: another one serves
/// the service).
pub async fn run(state_dir: &Path, args: &ProxyArgs) -> i32 {
    match serve(state_dir, args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {}", e.message);
            e.code
        }
    }
}

/// Where the data plane's state comes from: the saved state, updated from the policy
/// when one is given (its address, stickiness, limits and forwarding trust win; the routes are kept).
fn desired(state_dir: &Path, args: &ProxyArgs) -> Result<(PlaneFiles, PlaneState), String> {
    let (service, from_policy) = match (&args.service, &args.file) {
        (Some(service), _) => (service.clone(), None),
        (None, Some(file)) => {
            let policy = crate::run::policy_file(file)
                .map_err(|_| format!("{}: the policy does not load", file.display()))?;
            let Some(spec) = policy.proxy() else {
                return Err(format!(
                    "{}: `rampart proxy` runs the embedded proxy; this policy routes through another (`traffic` is not `proxy`)",
                    file.display()
                ));
            };
            let base = file
                .parent()
                .filter(|d| !d.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let tls = crate::run::proxy_tls(file, base, spec)
                .map_err(|e| e.to_string())?
                .as_ref()
                .map(plane::TlsState::from);
            (
                policy.service.clone(),
                Some((
                    spec.listen,
                    plane::StickyBy::from(&spec.sticky),
                    plane::LimitsState::from(&spec.limits),
                    tls,
                    plane::TrustState::from(&spec.forwarded),
                    plane::UpstreamState::from(spec.upstream_protocol),
                )),
            )
        }
        (None, None) => return Err("name the service (--service) or its policy (-f)".into()),
    };
    let files = PlaneFiles::new(state_dir, &service);
    let saved = PlaneState::load(&files.state()).map_err(|e| e.to_string())?;
    let state = match (saved, from_policy) {
        (Some(mut saved), Some((listen, sticky, limits, tls, forwarded, upstream))) => {
            saved.listen = listen;
            saved.sticky = sticky;
            saved.limits = limits;
            saved.tls = tls;
            saved.forwarded = forwarded;
            saved.upstream_protocol = upstream;
            saved
        }
        (Some(saved), None) => saved,
        (None, Some((listen, sticky, limits, tls, forwarded, upstream))) => PlaneState {
            format: plane::FORMAT,
            service: service.clone(),
            listen,
            sticky,
            routes: Default::default(),
            limits,
            tls,
            forwarded,
            upstream_protocol: upstream,
        },
        (None, None) => {
            return Err(format!(
                "no saved state for {service} in {}: start its data plane from its policy (-f) first",
                files.state().display()
            ));
        }
    };
    Ok((files, state))
}

async fn serve(state_dir: &Path, args: &ProxyArgs) -> Result<(), Failure> {
    let (files, mut state) = desired(state_dir, args).map_err(Failure::other)?;
    let service = state.service.clone();
    files.create_dir().map_err(Failure::other)?;
    let token = files.ensure_token().map_err(Failure::other)?;

    // The listening socket: taken from the running data plane (which finished every
    // admin request before it sent it, so the saved routes are final), or bound here.
    let (listener, lock, taken): (StdListener, Option<PlaneLock>, _) = if args.take_over {
        let (listener, stream) = plane::take_listener(&files, &token).map_err(Failure::other)?;
        if let Some(saved) = PlaneState::load(&files.state()).map_err(Failure::other)? {
            state.routes = saved.routes;
        }
        (listener, None, Some(stream))
    } else {
        // Started afresh (a reboot, a crash of its own, systemd): the saved routes
        // go to the replicas that still run only; a port a version had may be
        // another program's by now.
        if let Some(live) = rampart_adapters::process::live_endpoints(&service, state_dir) {
            super::attach::only_live(&mut state.routes, &live);
        }
        let lock = files.try_lock(&service).map_err(|e| match e {
            PlaneError::Running { .. } => Failure {
                code: ALREADY_RUNS,
                message: e.to_string(),
            },
            e => Failure::other(e),
        })?;
        let bound = StdListener::bind(state.listen).map_err(|e| {
            Failure::other(format!(
                "the data plane of {service} cannot listen on {}: {e}",
                state.listen
            ))
        })?;
        bound.set_nonblocking(true).map_err(Failure::other)?;
        (bound, Some(lock), None)
    };
    let listener = tokio::net::TcpListener::from_std(listener).map_err(Failure::other)?;
    crate::commands::proxy::open_files_for(&state.limits.into());
    let tls = match &state.tls {
        Some(tls) => {
            let files = rampart_adapters::proxy::tls::TlsFiles::from(tls);
            let terminator = rampart_adapters::proxy::tls::TlsTerminator::new(files)
                .map_err(|(_, e)| Failure::other(e))?;
            Some(terminator)
        }
        None => None,
    };
    let options = ProxyOptions {
        sticky: state.sticky.clone().into(),
        limits: state.limits.into(),
        forwarded: state.forwarded.clone().into(),
        upstream: state.upstream_protocol.into(),
        routes: state.routes.clone(),
        hold: args.hold,
        tls,
    };
    let (proxy, server) = Proxy::serve(listener, options).map_err(Failure::other)?;
    state.listen = server.local_addr();
    state.save(&files.state()).map_err(Failure::other)?;

    let stop = Arc::new(Notify::new());
    // Settled once this process holds the lock: after a take-over, not before the
    // process it took over from has drained and gone.
    let (settled_tx, settled) = tokio::sync::watch::channel(lock.is_some());
    // The data plane this one took over from, while it drains: told every change of
    // the routes, and in effect there before an admin request is answered.
    let predecessor: Arc<std::sync::Mutex<Option<plane::Feed>>> = Arc::default();
    let saved = state.clone();
    let path = files.state();
    let told = predecessor.clone();
    let asked = predecessor.clone();
    let hooks = PlaneHooks {
        persist: Some(Arc::new(move |routes: &RouteTable| {
            let mut next = saved.clone();
            next.routes = routes.clone();
            next.save(&path).map_err(|e| e.to_string())?;
            tell(&told, routes);
            Ok(())
        })),
        shutdown: Some(stop.clone()),
        settled: Some(settled),
        predecessor: Some(Arc::new(move |what: &plane::InFlight| ask(&asked, what))),
        measured: Arc::default(),
    };
    let telemetry = Arc::new(Telemetry::new(&service, Arc::new(proxy.clone())));
    let socket = files.socket();
    let bind_admin = || {
        AdminServer::bind_unix(
            &socket,
            proxy.clone(),
            token.clone(),
            telemetry.clone(),
            hooks.clone(),
        )
    };
    let mut admin = Some(bind_admin().await.map_err(|e| {
        Failure::other(format!(
            "the admin socket {}: {e}",
            files.socket().display()
        ))
    })?);
    let mut handovers = handover_requests(&files, &token).map_err(Failure::other)?;
    println!(
        "rampart data plane for {service}: traffic on http://{}, admin on {} (pid {})",
        server.local_addr(),
        files.socket().display(),
        std::process::id()
    );
    // Under systemd (Type=notify, NotifyAccess=all): ready, and this is the service's
    // main process from now on (after a take-over, before the old one exits).
    sd_notify(&format!("READY=1\nMAINPID={}", std::process::id()));
    // From here on it serves: a stop (a signal, `POST /shutdown`) drains it, also
    // while a process it took over from still drains and holds the lock.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(Failure::other)?;
    let lock = match (lock, taken) {
        (Some(lock), _) => Some(lock),
        (None, Some(mut stream)) => {
            // The old process goes on accepting until it reads this, then drains and
            // exits, letting go of the lock.
            stream
                .write_all(plane::SERVING)
                .map_err(|e| Failure::other(format!("confirming the hand-over: {e}")))?;
            // What changed between the hand-over and now reaches it too (read and sent
            // under the guard every later change takes).
            {
                let mut slot = predecessor.lock().unwrap_or_else(|e| e.into_inner());
                *slot = Some(plane::Feed::new(stream));
                tell_held(&mut slot, &proxy.table());
            }
            loop {
                tokio::select! {
                    held = wait_for_lock(&files, &service) => {
                        let held = held?;
                        settled_tx.send_replace(true);
                        predecessor.lock().unwrap_or_else(|e| e.into_inner()).take();
                        break Some(held);
                    }
                    _ = tokio::signal::ctrl_c() => break None,
                    _ = term.recv() => break None,
                    () = stop.notified() => break None,
                    // A newer data plane takes over before the one this one took over
                    // from has drained: handed on at once (it would otherwise wait for
                    // that whole drain), the routes it is told passed on to that one.
                    Some(next) = handovers.recv() => {
                        if let Some(a) = admin.take() {
                            a.close().await;
                        }
                        match hand_over(next, &server, &proxy, &predecessor).await {
                            Ok(()) => {
                                eprintln!("handed the listening socket over; draining open connections");
                                server.stop_accepting(&proxy, args.drain, true).await;
                                return Ok(());
                            }
                            Err(e) => {
                                eprintln!("hand-over failed, serving on: {e}");
                                admin = Some(bind_admin().await.map_err(Failure::other)?);
                                handovers =
                                    handover_requests(&files, &token).map_err(Failure::other)?;
                            }
                        }
                    }
                }
            }
        }
        (None, None) => return Err(Failure::other("no lock and no hand-over")),
    };
    // Held until the process ends; `None` when it was stopped before the lock came.
    if lock.is_some() {
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = stop.notified() => break,
                Some(stream) = handovers.recv() => {
                    // Every admin request in progress is answered (saved and applied)
                    // before the next process reads the routes.
                    if let Some(a) = admin.take() {
                        a.close().await;
                    }
                    // The connections still open here take their next requests by the
                    // routes the new process is told, not the ones frozen at the
                    // hand-over (a canary rolled back and stopped meanwhile gets none
                    // of them): `hand_over` follows them.
                    match hand_over(stream, &server, &proxy, &predecessor).await {
                        Ok(()) => {
                            eprintln!("handed the listening socket over; draining open connections");
                            server.stop_accepting(&proxy, args.drain, true).await;
                            return Ok(());
                        }
                        Err(e) => {
                            // Still serving: the socket stays ours, and so do admin requests.
                            eprintln!("hand-over failed, serving on: {e}");
                            admin = Some(bind_admin().await.map_err(Failure::other)?);
                            handovers = handover_requests(&files, &token).map_err(Failure::other)?;
                        }
                    }
                }
            }
        }
    }
    sd_notify("STOPPING=1");
    if let Some(a) = admin.take() {
        a.close().await;
    }
    server.stop_accepting(&proxy, args.drain, false).await;
    Ok(())
}

/// The exit code of a data plane refused because another one serves the service (a
/// service manager's unit can tell it from a failure: `RestartPreventExitStatus=3`).
pub const ALREADY_RUNS: i32 = 3;

/// Why the data plane stopped or did not start, and its exit code.
#[derive(Debug)]
struct Failure {
    code: i32,
    message: String,
}

impl Failure {
    fn other(e: impl std::fmt::Display) -> Failure {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

/// Sends the listening socket to the process that asked, and waits (at most 30 s)
/// for it to confirm that it serves. Until it does, this process goes on accepting.
///
/// Once it serves, the stream carries its changes of the routes: a thread of their
/// own puts them in effect here from that moment on (started on the blocking thread
/// itself, so that the first one never waits for this process's busy runtime).
async fn hand_over(
    stream: std::os::unix::net::UnixStream,
    server: &rampart_adapters::proxy::ProxyServer,
    proxy: &Proxy,
    predecessor: &Arc<std::sync::Mutex<Option<plane::Feed>>>,
) -> Result<(), String> {
    plane::send_listener(&stream, server.listener_fd()).map_err(|e| e.to_string())?;
    let follower = proxy.clone();
    // A data plane this one took over from and that still drains (a take-over of a
    // take-over) follows the same routes, and its requests in flight count too.
    let (told, asked) = (predecessor.clone(), predecessor.clone());
    tokio::task::spawn_blocking(move || {
        let feed = plane::await_serving(stream, Duration::from_secs(30))?;
        std::thread::spawn(move || {
            plane::follow_routes(
                feed,
                |table| {
                    follower.restore(table);
                    tell(&told, table);
                },
                |what| follower.in_flight_of(what) + in_flight_before(&asked, what),
            );
        });
        Ok::<(), PlaneError>(())
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())
}

/// Sends a state change to the service manager, when one listens (`$NOTIFY_SOCKET`,
/// a path or an abstract socket name starting with `@`). Best effort: a manager that
/// does not listen changes nothing.
pub fn sd_notify(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixDatagram};
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let target = target.to_string_lossy().into_owned();
    let addr = match target.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&target),
    };
    if let (Ok(addr), Ok(socket)) = (addr, UnixDatagram::unbound()) {
        let _ = socket.send_to_addr(state.as_bytes(), &addr);
    }
}

/// `--detach`: starts this same command in the background (without `--detach`) and
/// returns once it serves: it holds the lock, or after a take-over, the old process
/// has let go of it. Its exit code if it fails first.
pub async fn detach(state_dir: &Path, args: &ProxyArgs) -> i32 {
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("error: cannot find this executable");
        return 1;
    };
    let forwarded: Vec<std::ffi::OsString> = std::env::args_os()
        .skip(1)
        .filter(|a| a != "--detach")
        .collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&forwarded).stdin(std::process::Stdio::null());
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: starting the data plane: {e}");
            return 1;
        }
    };
    let Ok((files, _)) = desired(state_dir, args) else {
        // The child reports what is wrong and exits.
        return child.wait().ok().and_then(|s| s.code()).unwrap_or(1);
    };
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code().unwrap_or(1);
        }
        if files.pid() == Some(child.id()) && files.is_running() {
            return 0;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Accepts hand-over requests (on a thread: the exchange is a few blocking calls) and
/// passes on the ones that carry the token.
fn handover_requests(
    files: &PlaneFiles,
    token: &str,
) -> Result<tokio::sync::mpsc::Receiver<std::os::unix::net::UnixStream>, String> {
    let listener = plane::handover_listener(files).map_err(|e| e.to_string())?;
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let token = token.to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            match plane::read_handover_request(&mut stream, &token) {
                Ok(()) => {
                    if tx.blocking_send(stream).is_err() {
                        return;
                    }
                }
                Err(e) => eprintln!("{e}"),
            }
        }
    });
    Ok(rx)
}

/// Puts `routes` in effect in the data plane this one took over from, if it still
/// drains; one that does not answer is let go (it keeps the routes it had).
fn tell(predecessor: &std::sync::Mutex<Option<plane::Feed>>, routes: &RouteTable) {
    tell_held(
        &mut predecessor.lock().unwrap_or_else(|e| e.into_inner()),
        routes,
    );
}

/// [`tell`], with the guard held.
fn tell_held(slot: &mut Option<plane::Feed>, routes: &RouteTable) {
    if let Some(feed) = slot.as_mut()
        && let Err(e) = feed.send_routes(routes)
    {
        eprintln!("the data plane this one took over from no longer follows the routes: {e}");
        *slot = None;
    }
}

/// What the data plane this one took over from has in flight to `what`, if it still
/// drains and answers now. A question gives way to a route change holding the feed
/// (`None`, asked again later); a feed out of step is let go, as in [`tell`].
fn ask(predecessor: &std::sync::Mutex<Option<plane::Feed>>, what: &plane::InFlight) -> Option<u64> {
    match asked(predecessor, what) {
        Before::Count(n) => Some(n),
        Before::Gone | Before::Busy => None,
    }
}

/// What [`ask`] learns of the data plane this one took over from.
enum Before {
    /// It has gone, or never was, or no longer answers (let go).
    Gone,
    /// It cannot answer now (a route change holds the feed, or it is mid-answer).
    Busy,
    /// Its requests in flight.
    Count(u64),
}

fn asked(predecessor: &std::sync::Mutex<Option<plane::Feed>>, what: &plane::InFlight) -> Before {
    let mut slot = match predecessor.try_lock() {
        Ok(slot) => slot,
        Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return Before::Busy,
    };
    let Some(feed) = slot.as_mut() else {
        return Before::Gone;
    };
    match feed.ask_in_flight(what) {
        Ok(plane::Asked::Count(n)) => Before::Count(n),
        Ok(plane::Asked::NotNow) => Before::Busy,
        Err(e) => {
            eprintln!("the data plane this one took over from no longer answers: {e}");
            *slot = None;
            Before::Gone
        }
    }
}

/// What the data plane this one took over from has in flight to `what`, for a data
/// plane that took over from this one: 0 once it has gone (or never was), and 1 (busy:
/// asked again) when it cannot answer now, so a drain never ends on its account
/// while it may still have a request there.
fn in_flight_before(
    predecessor: &std::sync::Mutex<Option<plane::Feed>>,
    what: &plane::InFlight,
) -> u64 {
    match asked(predecessor, what) {
        Before::Gone => 0,
        Before::Busy => 1,
        Before::Count(n) => n,
    }
}

/// Waits until the previous data plane has drained its connections and exited,
/// letting go of the lock (however long its drain takes: this process serves
/// meanwhile).
async fn wait_for_lock(files: &PlaneFiles, service: &str) -> Result<PlaneLock, Failure> {
    loop {
        match files.try_lock(service) {
            Ok(lock) => return Ok(lock),
            Err(PlaneError::Running { .. }) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(Failure::other(e)),
        }
    }
}
