//! `rampart proxy`: the embedded proxy on its own, as a data plane whose backends and
//! weights a controller (or an operator) sets through an authenticated admin endpoint.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rampart_adapters::proxy::Proxy;
use rampart_adapters::proxy::admin::AdminServer;
use rampart_adapters::telemetry::Telemetry;

/// The arguments of `rampart proxy`.
#[derive(Debug, clap::Args)]
pub struct ProxyArgs {
    /// The policy file (its `traffic.proxy` section).
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// Where the admin endpoint listens.
    #[arg(long, default_value = "127.0.0.1:9901")]
    pub admin: std::net::SocketAddr,
    /// The environment variable holding the admin token (at least 16 characters).
    #[arg(long, default_value = "RAMPART_PROXY_TOKEN")]
    pub token_env: String,
}

/// Runs `rampart proxy`.
pub async fn main(args: ProxyArgs) -> i32 {
    run(&args.file, args.admin, &args.token_env).await
}

/// Runs until interrupted; returns the exit code.
async fn run(file: &Path, admin: SocketAddr, token_env: &str) -> i32 {
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
    let (proxy, server) = match Proxy::bind(spec.listen, spec.sticky.clone()).await {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: the proxy cannot listen on {}: {e}", spec.listen);
            return 1;
        }
    };
    let telemetry = Arc::new(Telemetry::new(&policy.service, Arc::new(proxy.clone())));
    let admin_server = match AdminServer::bind(admin, proxy, token, telemetry).await {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: the admin endpoint cannot listen on {admin}: {e}");
            return 1;
        }
    };
    println!(
        "rampart proxy for {}: traffic on http://{}, admin on http://{} (PUT /backends/stable, PUT /backends/canary, PUT /weight, GET /state, GET /metrics)",
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
    0
}
