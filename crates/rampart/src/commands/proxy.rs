//! `rampart proxy`: the embedded proxy on its own, as a data plane whose backends and
//! weights a controller (or an operator) sets through an authenticated admin endpoint.
//!
//! With `--state-dir` it is the long-lived data plane `rampart run` and `serve` start
//! and attach to (one per service): admin on a Unix socket, routes persisted, the
//! listening socket handed over to a newer process with `--take-over`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_adapters::proxy::admin::AdminServer;
use rampart_adapters::proxy::{Proxy, ProxyOptions};
use rampart_adapters::telemetry::Telemetry;

/// The arguments of `rampart proxy`.
#[derive(Debug, clap::Args)]
#[command(group = clap::ArgGroup::new("what").required(true).args(["file", "service"]))]
pub struct ProxyArgs {
    /// The policy file (its `traffic.proxy` section).
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: Option<PathBuf>,
    /// Where the admin endpoint listens (without --state-dir).
    #[arg(long, default_value = "127.0.0.1:9901", conflicts_with = "state_dir")]
    pub admin: std::net::SocketAddr,
    /// The environment variable holding the admin token (at least 16 characters;
    /// without --state-dir).
    #[arg(
        long,
        default_value = "RAMPART_PROXY_TOKEN",
        conflicts_with = "state_dir"
    )]
    pub token_env: String,
    /// Run as the service's long-lived data plane, with its files (admin socket,
    /// token, routes, lock) in DIR/dataplane/.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The service whose data plane to run from its saved state (with --state-dir).
    #[arg(long, requires = "state_dir", conflicts_with = "file")]
    pub service: Option<String>,
    /// Take over from the data plane running now: its listening socket passes to this
    /// process, which serves from then on while the old one drains and exits.
    #[arg(long, requires = "state_dir")]
    pub take_over: bool,
    /// How long a request waits for a ready backend when there is none yet, rather
    /// than getting 503 at once (with --state-dir).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration)]
    pub hold: std::time::Duration,
    /// Start the data plane in the background and return once it serves (exit 0) or
    /// has failed (its exit code): for a service manager's reload command, with
    /// --take-over.
    #[arg(long, requires = "state_dir")]
    pub detach: bool,
    /// How long open connections may take to finish when this data plane stops or
    /// hands over.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration)]
    pub drain: std::time::Duration,
}

fn duration(text: &str) -> Result<std::time::Duration, String> {
    rampart_core::units::parse_duration(text)
}

/// Raises the open-file limit for the proxy's connections and says when
/// `max_connections` can still reach it first (past it, new connections wait in the
/// kernel's backlog until a connection closes).
pub fn open_files_for(limits: &rampart_core::policy::ProxyLimits) {
    let need = rampart_adapters::proxy::files_needed(limits.max_connections);
    match rampart_adapters::proxy::raise_open_files_limit() {
        Ok(have) if have < need => eprintln!(
            "warning: max_connections {} needs about {need} open files and this process may open {have}; raise its limit (LimitNOFILE= under systemd) or lower max_connections",
            limits.max_connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("warning: the open-file limit could not be raised: {e}"),
    }
}

/// Runs `rampart proxy`.
pub async fn main(args: ProxyArgs) -> i32 {
    match (&args.state_dir, &args.file) {
        (Some(dir), _) if args.detach => crate::dataplane::agent::detach(dir, &args).await,
        (Some(dir), _) => crate::dataplane::agent::run(dir, &args).await,
        (None, Some(file)) => run(file, args.admin, &args.token_env, args.drain).await,
        (None, None) => {
            eprintln!("error: name the policy (-f) or, with --state-dir, the service");
            2
        }
    }
}

/// Runs until interrupted, then drains (answers what is in flight, closes idle
/// connections, at most `drain`); returns the exit code.
async fn run(file: &Path, admin: SocketAddr, token_env: &str, drain: std::time::Duration) -> i32 {
    let policy = match crate::run::policy_file(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let Some(spec) = policy.proxy() else {
        eprintln!(
            "error: {}: `rampart proxy` runs the embedded proxy; this policy routes through another (`traffic` is not `proxy`)",
            file.display()
        );
        return 2;
    };
    let token = match std::env::var(token_env) {
        Ok(t) if t.len() >= 16 => t,
        _ => {
            eprintln!(
                "error: set {token_env} to a token of at least 16 characters; the admin endpoint moves traffic and will not run unauthenticated"
            );
            return 2;
        }
    };
    let base = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tls = match crate::run::proxy_tls(file, base, spec) {
        Ok(Some(files)) => match rampart_adapters::proxy::tls::TlsTerminator::new(files) {
            Ok(t) => Some(t),
            Err((_, e)) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
        Ok(None) => None,
        Err(e) => {
            eprintln!("{e}");
            return 2;
        }
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let options = ProxyOptions {
        sticky: spec.sticky.clone(),
        limits: spec.limits,
        forwarded: spec.forwarded.clone(),
        upstream: spec.upstream_protocol,
        tls,
        ..ProxyOptions::default()
    };
    let (proxy, server) = match Proxy::bind(spec.listen, options).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: the proxy cannot listen on {}: {e}", spec.listen);
            return 1;
        }
    };
    let telemetry = Arc::new(Telemetry::new(&policy.service, Arc::new(proxy.clone())));
    let admin_server = match AdminServer::bind(admin, proxy.clone(), token, telemetry).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: the admin endpoint cannot listen on {admin}: {e}");
            return 1;
        }
    };
    println!(
        "rampart proxy for {}: traffic on {scheme}://{}, admin on http://{} (PUT /backends/stable, PUT /backends/canary, PUT /weight, GET /state, GET /metrics)",
        policy.service,
        server.local_addr(),
        admin_server.local_addr()
    );
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return 1;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    admin_server.close().await;
    server.stop_accepting(&proxy, drain, false).await;
    0
}
