//! `rampart mcp`: the MCP server's arguments; the server itself is `crate::mcp`.
//!
//! It must not do more than turn its arguments into `McpOptions`.

use std::path::PathBuf;
use std::sync::Arc;

use rampart_core::ports::Clock;

/// The arguments of `rampart mcp`.
#[derive(Debug, clap::Args)]
pub struct McpArgs {
    /// The `rampart serve` the release tools act on; without it, the local state
    /// directory's store, through a server of its own on loopback (with a
    /// one-session agent token).
    #[arg(long, env = "RAMPART_SERVER")]
    pub server: Option<String>,
    /// Where state is kept, without --server.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: PathBuf,
    /// Its API token; an `agent` token (prefer the environment variable).
    #[arg(long, env = "RAMPART_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Accept a token of a human role too (then the agent can do what it can).
    #[arg(long)]
    pub any_role: bool,
}

/// Runs `rampart mcp`.
pub async fn main(args: McpArgs, clock: Arc<dyn Clock>) -> i32 {
    let McpArgs {
        server,
        state_dir,
        token,
        any_role,
    } = args;
    crate::mcp::run(crate::mcp::McpOptions {
        server,
        state_dir,
        token,
        any_role,
        clock,
    })
    .await
}
