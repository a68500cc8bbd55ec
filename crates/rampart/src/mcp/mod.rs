//! `rampart mcp`: a Model Context Protocol server on stdio, through which an AI agent
//! drives releases.
//!
//! The protocol (negotiation, framing, schemas) is the official Rust SDK's (`rmcp`);
//! `tools` holds the tools, `resources` the resources, both over the client the CLI
//! uses (`client::Backend`). This module owns the session: which server the tools act
//! on (a `rampart serve`, or one of this process over the local store), the agent guard
//! (a token whose role could approve is refused) and the session's end. It must not
//! decide who may do what: `rampart serve` does, by the token's role (an `agent` token
//! can never approve, promote, resume, force a rollback or lift a freeze), so a tool
//! that is listed here is no permission. Nothing but protocol messages goes to stdout.

mod resources;
mod tools;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rampart_core::ports::Clock;
use rmcp::ServiceExt;
use rmcp::service::ServerInitializeError;

use crate::client::{Backend, Target};
use crate::report::Output;

/// Where the server's tools act.
#[derive(Debug, Clone)]
pub struct McpOptions {
    /// The `rampart serve` the release tools act on; without one, the local store.
    pub server: Option<String>,
    /// The local state directory, without a server.
    pub state_dir: PathBuf,
    /// Its API token (an `agent` token).
    pub token: Option<String>,
    /// Accept a token of a human role (approver, admin), which lets the agent do
    /// what only humans should.
    pub any_role: bool,
    /// The clock of the local server and its session token.
    pub clock: Arc<dyn Clock>,
}

/// Runs the server until stdin closes. Exit code 0, or 2 when the token's role would
/// let an agent do what only humans may (unless told to accept it).
pub async fn run(opts: McpOptions) -> i32 {
    let local = match &opts.server {
        Some(_) => None,
        None => match local_server(&opts.state_dir, &opts.clock).await {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("error: {e}");
                return 2;
            }
        },
    };
    let backend = match &local {
        Some(l) => Backend::Remote {
            base: format!("http://{}", l.addr),
            token: l.token.clone(),
        },
        None => {
            let target = Target {
                server: opts.server.clone(),
                token: opts.token.clone(),
                state_dir: opts.state_dir.clone(),
                output: Output::Json,
            };
            match Backend::open(&target, None, &opts.clock).await {
                Ok(b) => b,
                Err(f) => {
                    eprintln!("error: {}", f.message);
                    return 2;
                }
            }
        }
    };
    let code = match guard(&backend, &opts).await {
        // SIGTERM or SIGINT end a local session as closing stdin does (the MCP stdio
        // shutdown is: close stdin, SIGTERM, SIGKILL): the in-process server has its
        // own handler for them, which would otherwise take the signal and leave this
        // process running with its agent token live.
        Ok(()) if local.is_some() => tokio::select! {
            code = serve_stdio(tools::Rampart::new(backend)) => code,
            () = terminated() => 0,
        },
        Ok(()) => serve_stdio(tools::Rampart::new(backend)).await,
        Err(message) => {
            eprintln!("error: {message}");
            2
        }
    };
    if let Some(l) = local {
        l.close().await;
    }
    code
}

/// Resolves at SIGTERM or SIGINT (never, if they cannot be listened for).
async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
        }
        _ => std::future::pending::<()>().await,
    }
}

/// Who creates (and revokes) local sessions' tokens, in the audit chain.
const BY: &str = "rampart mcp";

/// The start of a local session's token name; its pid follows.
const SESSION_PREFIX: &str = "mcp-agent-";

/// The local store behind a `rampart serve` of this process on loopback, with an agent
/// token for this session only: the same rules as against a real server, enforced the
/// same way.
struct Local {
    addr: std::net::SocketAddr,
    token: String,
    name: String,
    store: Arc<rampart_adapters::store::StateStore>,
    clock: Arc<dyn Clock>,
}

impl Local {
    async fn close(self) {
        let now = self.clock.now();
        if let Err(e) = self.store.revoke_token(&self.name, BY, now).await {
            eprintln!(
                "warning: the session's agent token {} stays live: {e}",
                self.name
            );
        }
    }
}

async fn local_server(state_dir: &Path, clock: &Arc<dyn Clock>) -> Result<Local, String> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let opts = crate::serve::ServeOptions {
        kubernetes: None,
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        state_dir: state_dir.to_path_buf(),
        store: None,
        replica: None,
        lease_ttl: Duration::from_secs(15),
        announce: Some(tx),
        clock: clock.clone(),
    };
    let server = tokio::spawn(crate::serve::run(opts));
    // The server holds the store's lock once it listens; only then is a token made.
    let Some(addr) = rx.recv().await else {
        let code = server.await.unwrap_or(1);
        return Err(format!(
            "the local server did not start (exit {code}); see the message above"
        ));
    };
    let store = crate::serve::open_store(None, state_dir).await?;
    let now = clock.now();
    // This process holds the store's lock: no other local session runs on it, so a
    // session token still live is one a killed session left behind (its secret died
    // with it). Revoked, so none outlives its session, and its name (the pid of a
    // process long gone, perhaps this one's) is free again.
    let left: Vec<String> = store
        .tokens()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|t| !t.revoked && t.created_by == BY && t.name.starts_with(SESSION_PREFIX))
        .map(|t| t.name)
        .collect();
    for stale in left {
        if let Err(e) = store.revoke_token(&stale, BY, now).await {
            eprintln!("warning: the agent token {stale} a killed session left stays live: {e}");
        }
    }
    let name = format!("{SESSION_PREFIX}{}", std::process::id());
    let token = store
        .create_token(&name, "agent", BY, now)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Local {
        addr,
        token,
        name,
        store,
        clock: clock.clone(),
    })
}

/// The agent guard: against a `rampart serve`, the token must be an agent's (or a
/// viewer's), since whatever its role allows the agent can do; `--any-role` accepts any.
/// The session's own token over the local store is an agent's by construction.
async fn guard(backend: &Backend, opts: &McpOptions) -> Result<(), String> {
    if opts.server.is_none() {
        return Ok(());
    }
    let who = backend
        .call("GET", "/api/v1/whoami", None)
        .await
        .map_err(|f| f.message)?;
    let role = who["role"].as_str().unwrap_or_default();
    if !matches!(role, "agent" | "viewer") && !opts.any_role {
        return Err(format!(
            "the token in RAMPART_TOKEN has role {role}: an agent using it could approve, promote or lift freezes. Create one with `rampart token create --role agent --name NAME` (or pass --any-role)"
        ));
    }
    Ok(())
}

/// Serves the protocol on stdin and stdout until the client closes stdin.
async fn serve_stdio(server: tools::Rampart) -> i32 {
    let running = match server.serve(rmcp::transport::stdio()).await {
        Ok(r) => r,
        // The client left before the handshake: a session that ended.
        Err(ServerInitializeError::ConnectionClosed(_)) => return 0,
        Err(e) => {
            eprintln!("error: the MCP session did not start: {e}");
            return 1;
        }
    };
    match running.waiting().await {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("error: the MCP session failed: {e}");
            1
        }
    }
}
