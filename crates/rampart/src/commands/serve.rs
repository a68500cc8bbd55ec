//! `rampart serve`: the control plane's arguments; the control plane itself is
//! `crate::serve`.
//!
//! It must not do more than turn its arguments into `ServeOptions`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rampart_core::ports::Clock;
use rampart_core::units::parse_duration;

/// The arguments of `rampart serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Where the API listens (loopback unless told otherwise).
    #[arg(long, env = "RAMPART_LISTEN", default_value = "127.0.0.1:7070")]
    pub listen: std::net::SocketAddr,
    /// Where state and logs are kept.
    #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
    pub state_dir: PathBuf,
    /// The store: `sqlite:PATH`, or `postgres://...` shared by several replicas
    /// (only the one holding the leader lease acts); defaults to the state
    /// directory's SQLite file.
    #[arg(long, env = "RAMPART_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// This replica's name in the leader lease (unique among replicas sharing a
    /// PostgreSQL store); defaults to HOSTNAME-PID.
    #[arg(long, env = "RAMPART_REPLICA")]
    pub replica: Option<String>,
    /// How long a silent leader keeps the lease before a standby takes over
    /// (PostgreSQL store only).
    #[arg(long, env = "RAMPART_LEASE_TTL", default_value = "15s", value_parser = lease_ttl)]
    pub lease_ttl: std::time::Duration,
}

/// A lease time: a duration of at least 3 s (shorter ones make replicas take the
/// lease from each other on any hiccup).
fn lease_ttl(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(3) {
        return Err(format!("{text} is too short for a lease; give at least 3s"));
    }
    Ok(d)
}

/// Runs `rampart serve`.
pub async fn main(args: ServeArgs, clock: Arc<dyn Clock>) -> i32 {
    let ServeArgs {
        listen,
        state_dir,
        store,
        replica,
        lease_ttl,
    } = args;
    crate::serve::run(crate::serve::ServeOptions {
        listen,
        state_dir,
        store,
        replica,
        lease_ttl,
        announce: None,
        clock,
    })
    .await
}
