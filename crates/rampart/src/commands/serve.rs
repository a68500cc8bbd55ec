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
    /// Release what Git applies to Deployments that opt in (`rampart.dev/policy`);
    /// needs a build with the `kubernetes` feature.
    #[arg(long)]
    pub kubernetes: bool,
    /// A namespace `--kubernetes` watches (repeat for more); defaults to the
    /// kubeconfig's namespace, or the service account's.
    #[arg(
        long = "kubernetes-namespace",
        value_name = "NS",
        requires = "kubernetes"
    )]
    pub kubernetes_namespaces: Vec<String>,
    /// How often `--kubernetes` reads the opted-in Deployments.
    #[arg(long, default_value = "10s", value_parser = interval, requires = "kubernetes")]
    pub kubernetes_interval: Duration,
}

/// A polling interval: from 1 s to 10 min.
fn interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(1) || d > Duration::from_secs(600) {
        return Err(format!("{text}: give an interval from 1s to 10m"));
    }
    Ok(d)
}

/// A lease time: from 3 s (shorter ones make replicas take the lease from each other
/// on any hiccup) to 5 min (a dead leader is replaced within one lease time).
fn lease_ttl(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(3) {
        return Err(format!("{text} is too short for a lease; give at least 3s"));
    }
    if d > Duration::from_secs(300) {
        return Err(format!(
            "{text} is too long for a lease: a dead leader would be replaced only after it; give at most 5m"
        ));
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
        kubernetes,
        kubernetes_namespaces,
        kubernetes_interval,
    } = args;
    if kubernetes && !cfg!(feature = "kubernetes") {
        eprintln!(
            "error: `rampart serve --kubernetes` needs Kubernetes support, which this rampart was built without; build it with `cargo build --release -p rampart --features kubernetes`"
        );
        return 2;
    }
    crate::serve::run(crate::serve::ServeOptions {
        listen,
        state_dir,
        store,
        replica,
        lease_ttl,
        announce: None,
        clock,
        kubernetes: kubernetes.then_some(crate::serve::KubernetesWatch {
            namespaces: kubernetes_namespaces,
            interval: kubernetes_interval,
        }),
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_long_enough_to_ride_out_a_hiccup_and_short_enough_to_replace_a_dead_leader() {
        assert_eq!(lease_ttl("15s").unwrap(), Duration::from_secs(15));
        assert_eq!(lease_ttl("5m").unwrap(), Duration::from_secs(300));
        assert!(lease_ttl("2s").unwrap_err().contains("at least 3s"));
        assert!(lease_ttl("6m").unwrap_err().contains("at most 5m"));
        assert!(
            lease_ttl("9223372036854775807ms")
                .unwrap_err()
                .contains("too long")
        );
    }
}
