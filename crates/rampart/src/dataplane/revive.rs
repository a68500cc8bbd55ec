//! A switch back to stable that finds stable dead starts it again first.
//!
//! Owns one rule of the traffic a release moves over the processes rampart runs: a
//! weight that gives stable users needs stable running. Nothing restarts a version
//! while a release owns its service (`serve`'s supervisor waits for the release to
//! end), so a stable whose every replica crashed mid-release would take back every
//! user at a rollback and answer none of them (502 from the data plane, then a halt
//! with nothing serving). It must not decide when traffic moves: it only makes sure
//! there is something to move it to, or refuses the change (the release then halts
//! where it stands, its canary still serving, and pages).

use std::sync::Arc;
use std::time::Duration;

use rampart_adapters::process::ProcessDeployer;
use rampart_core::policy::RouteMatch;
use rampart_core::ports::{BoxFuture, Deployer, PortError, TrafficRouter};
use rampart_core::{Variant, Weight};

/// `inner`, with stable's replicas started again when a weight below 100 % finds them
/// all gone.
pub struct StableRevived {
    inner: Arc<dyn TrafficRouter>,
    /// Starts the replicas: the release's own deployer, fenced by the lease as every
    /// change of the release is (so is `inner`).
    deployer: Arc<dyn Deployer>,
    /// What runs: the records and the processes behind them.
    processes: Arc<ProcessDeployer>,
    service: String,
}

impl std::fmt::Debug for StableRevived {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableRevived")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

impl StableRevived {
    /// Wraps the (fenced) router of a release whose versions `processes` runs, and
    /// whose (fenced) `deployer` starts them.
    pub fn new(
        inner: Arc<dyn TrafficRouter>,
        deployer: Arc<dyn Deployer>,
        processes: Arc<ProcessDeployer>,
        service: &str,
    ) -> StableRevived {
        StableRevived {
            inner,
            deployer,
            processes,
            service: service.to_string(),
        }
    }

    /// Stable's replicas started again, and routed to, when every recorded one is
    /// gone; nothing when one runs, or none was ever recorded (a first release).
    async fn revive(&self) -> Result<(), PortError> {
        let gone = self.processes.exited(Variant::Stable);
        if gone.is_empty() || self.processes.live(Variant::Stable) > 0 {
            return Ok(());
        }
        let version = gone[0].version.clone();
        tracing::warn!(
            service = %self.service,
            %version,
            "every stable replica has exited: starting stable again before traffic moves to it"
        );
        // As many as the records held (a rolling release's stable runs fewer than the
        // policy's replicas at its later steps).
        let replicas = u32::try_from(gone.len()).unwrap_or(u32::MAX);
        let deployed = self
            .deployer
            .scale(Variant::Stable, &version, replicas)
            .await
            .map_err(|e| {
                PortError::new(format!(
                    "stable ({version}) is not running (every replica exited) and did not start again: {}",
                    e.0
                ))
            })?;
        self.inner
            .set_backends(Variant::Stable, &deployed.endpoints)
            .await
    }
}

impl TrafficRouter for StableRevived {
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [std::net::SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.inner.set_backends(variant, endpoints)
    }

    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move {
            if weight < Weight::FULL {
                self.revive().await?;
            }
            self.inner.set_weight(weight, matches).await
        })
    }

    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        self.inner.drain(variant, timeout)
    }

    fn drain_endpoints<'a>(
        &'a self,
        endpoints: &'a [std::net::SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.inner.drain_endpoints(endpoints, timeout)
    }
}
