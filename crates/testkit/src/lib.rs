//! The fake world rampart's controller is tested and benchmarked against: one
//! service's versions, router, traffic and gates, in memory.
//!
//! Owns what a deployer, a router, a metrics source, a gate runner, a notifier and an
//! Alertmanager do
//! when nothing real is behind them: deploys succeed (after a set virtual delay), the
//! router remembers its weight, and traffic splits by that weight with set error rates.
//! It must not decide anything about a release: the controller and core do, exactly
//! as they do against the real adapters. Used by the controller's tests and by
//! `rampart bench controller`; the store is the caller's (SQLite, PostgreSQL, or the
//! in-memory one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_controller::Ports;
use rampart_core::metrics::{IntervalSample, VariantStats};
use rampart_core::policy::{Gate, RouteMatch};
use rampart_core::ports::{
    BoxFuture, Clock, Deployer, Deployment, FlagStore, GateRunner, MetricsSource, Notice, Notifier,
    PortError, Silencer, Store, TrafficRouter,
};
use rampart_core::release::{GateResult, MeasureWindow, SilenceOp};
use rampart_core::{Millis, Variant, Weight};

/// Requests the fake traffic sends per measured interval, split by the weight.
pub const REQUESTS_PER_INTERVAL: u64 = 1000;

/// One service's world. Every knob is an atomic, so a test turns it while a
/// controller runs.
#[derive(Debug, Default)]
pub struct FakeWorld {
    weight: Mutex<Weight>,
    weight_changes: Mutex<Vec<Weight>>,
    stable_errors_per_mille: AtomicU32,
    canary_errors_per_mille: AtomicU32,
    deploy_secs: AtomicU32,
    gate_secs: AtomicU32,
    deploys: AtomicU32,
    deploys_done: AtomicU32,
    gate_runs: AtomicU32,
    gate_commands: Mutex<Vec<Vec<String>>>,
    stops: Mutex<Vec<Variant>>,
    notices: AtomicU64,
    silences: Mutex<Vec<(String, String, SilenceOp)>>,
    silences_fail: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A test that panicked while holding a lock has failed already; its data is
    // still the best account of what happened.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeWorld {
    /// A healthy world: no errors, instant deploys and gates.
    pub fn new() -> Arc<FakeWorld> {
        Arc::new(FakeWorld::default())
    }

    /// The ports a controller drives this world through, with the caller's store,
    /// flag store and clock.
    pub fn ports(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        flags: Arc<dyn FlagStore>,
        clock: Arc<dyn Clock>,
    ) -> Ports {
        Ports {
            deployer: self.clone(),
            router: self.clone(),
            metrics: self.clone(),
            gates: self.clone(),
            store,
            clock,
            notifier: self.clone(),
            flags,
            silencer: Some(self.clone()),
        }
    }

    /// Sets the canary's error rate, in errors per 1,000 requests.
    pub fn set_canary_errors_per_mille(&self, n: u32) {
        self.canary_errors_per_mille.store(n, Ordering::SeqCst);
    }

    /// Sets the stable version's error rate, in errors per 1,000 requests.
    pub fn set_stable_errors_per_mille(&self, n: u32) {
        self.stable_errors_per_mille.store(n, Ordering::SeqCst);
    }

    /// Makes every deploy take `secs` (on tokio's clock: virtual in a paused test).
    pub fn set_deploy_secs(&self, secs: u32) {
        self.deploy_secs.store(secs, Ordering::SeqCst);
    }

    /// Makes every gate take `secs`.
    pub fn set_gate_secs(&self, secs: u32) {
        self.gate_secs.store(secs, Ordering::SeqCst);
    }

    /// The canary weight the router holds now.
    pub fn weight(&self) -> Weight {
        *lock(&self.weight)
    }

    /// Every weight the router was asked for, in order.
    pub fn weight_changes(&self) -> Vec<Weight> {
        lock(&self.weight_changes).clone()
    }

    /// Deploys started.
    pub fn deploys(&self) -> u32 {
        self.deploys.load(Ordering::SeqCst)
    }

    /// Deploys that ran to their end (were not dropped half-way).
    pub fn deploys_done(&self) -> u32 {
        self.deploys_done.load(Ordering::SeqCst)
    }

    /// Gates run.
    pub fn gate_runs(&self) -> u32 {
        self.gate_runs.load(Ordering::SeqCst)
    }

    /// The commands of the command gates started (migrations run as these), in order.
    pub fn gate_commands(&self) -> Vec<Vec<String>> {
        lock(&self.gate_commands).clone()
    }

    /// The variants stopped, in order.
    pub fn stops(&self) -> Vec<Variant> {
        lock(&self.stops).clone()
    }

    /// Notices sent.
    pub fn notices(&self) -> u64 {
        self.notices.load(Ordering::SeqCst)
    }

    /// Makes Alertmanager refuse every silence operation (after a virtual second).
    pub fn set_silences_fail(&self, fail: bool) {
        self.silences_fail.store(fail, Ordering::SeqCst);
    }

    /// Every silence operation asked for, with its release and version, in order.
    pub fn silences(&self) -> Vec<(String, String, SilenceOp)> {
        lock(&self.silences).clone()
    }

    fn silence(
        &self,
        release: &str,
        version: &str,
        op: SilenceOp,
    ) -> BoxFuture<'_, Result<(), PortError>> {
        lock(&self.silences).push((release.into(), version.into(), op));
        let fail = self.silences_fail.load(Ordering::SeqCst);
        Box::pin(async move {
            if fail {
                take(1).await;
                return Err(PortError::new("connection refused"));
            }
            Ok(())
        })
    }

    fn deployment(version: &str) -> Deployment {
        Deployment {
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 9))],
            retired: Vec::new(),
            detail: format!("{version} up"),
        }
    }
}

/// Waits `secs` on tokio's clock; nothing when 0 (the benchmark's instant world).
async fn take(secs: u32) {
    if secs > 0 {
        tokio::time::sleep(Duration::from_secs(u64::from(secs))).await;
    }
}

impl Deployer for FakeWorld {
    fn deploy<'a>(
        &'a self,
        _: Variant,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        self.deploys.fetch_add(1, Ordering::SeqCst);
        let secs = self.deploy_secs.load(Ordering::SeqCst);
        Box::pin(async move {
            take(secs).await;
            self.deploys_done.fetch_add(1, Ordering::SeqCst);
            Ok(Self::deployment(version))
        })
    }

    fn scale<'a>(
        &'a self,
        v: Variant,
        version: &'a str,
        _: u32,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        self.deploy(v, version)
    }

    fn trim(&self, _: Variant, _: u32) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async { Ok("trimmed".into()) })
    }

    fn stop(&self, v: Variant) -> BoxFuture<'_, Result<String, PortError>> {
        lock(&self.stops).push(v);
        Box::pin(async { Ok("stopped".into()) })
    }

    fn verify(&self, _: Variant, _: Duration) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async { Ok("ready".into()) })
    }
}

impl TrafficRouter for FakeWorld {
    fn set_backends<'a>(
        &'a self,
        _: Variant,
        _: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }

    fn set_weight<'a>(
        &'a self,
        w: Weight,
        _: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        *lock(&self.weight) = w;
        lock(&self.weight_changes).push(w);
        Box::pin(async move { Ok(w) })
    }

    fn drain(&self, _: Variant, _: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }

    fn drain_endpoints<'a>(
        &'a self,
        _: &'a [SocketAddr],
        _: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
}

impl MetricsSource for FakeWorld {
    /// [`REQUESTS_PER_INTERVAL`] requests, split by the weight the router holds, each
    /// variant failing at its set rate.
    fn measure<'a>(
        &'a self,
        _: &'a MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        let canary = REQUESTS_PER_INTERVAL * u64::from(self.weight().basis_points()) / 10_000;
        let stats = |requests: u64, per_mille: &AtomicU32| VariantStats {
            requests,
            errors: requests * u64::from(per_mille.load(Ordering::SeqCst)) / 1000,
            ..VariantStats::default()
        };
        let sample = IntervalSample {
            stable: stats(
                REQUESTS_PER_INTERVAL - canary,
                &self.stable_errors_per_mille,
            ),
            canary: stats(canary, &self.canary_errors_per_mille),
            ..Default::default()
        };
        Box::pin(async move { Ok(sample) })
    }
}

impl GateRunner for FakeWorld {
    fn run<'a>(&'a self, gate: &'a Gate) -> BoxFuture<'a, GateResult> {
        self.gate_runs.fetch_add(1, Ordering::SeqCst);
        if let rampart_core::policy::GateCheck::Command { run, .. } = &gate.check {
            lock(&self.gate_commands).push(run.clone());
        }
        let secs = self.gate_secs.load(Ordering::SeqCst);
        Box::pin(async move {
            take(secs).await;
            GateResult {
                name: gate.name.clone(),
                ok: true,
                detail: String::new(),
            }
        })
    }
}

impl Silencer for FakeWorld {
    fn hold<'a>(
        &'a self,
        release: &'a str,
        version: &'a str,
        from: Millis,
        until: Millis,
    ) -> BoxFuture<'a, Result<String, PortError>> {
        let held = self.silence(release, version, SilenceOp::Hold { from, until });
        Box::pin(async move { held.await.map(|()| format!("silence-of-{release}")) })
    }

    fn expire<'a>(&'a self, release: &'a str) -> BoxFuture<'a, Result<(), PortError>> {
        self.silence(release, "", SilenceOp::Expire)
    }
}

impl Notifier for FakeWorld {
    fn notify<'a>(&'a self, _: &'a Notice) -> BoxFuture<'a, ()> {
        self.notices.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The traffic follows the router: a test of a release is only as honest as this.
    #[tokio::test]
    async fn traffic_splits_by_the_weight_the_router_holds() {
        let world = FakeWorld::new();
        world.set_canary_errors_per_mille(50);
        let window = MeasureWindow {
            from: 0,
            to: 1,
            stable: Some("v1".into()),
            canary: "v2".into(),
        };
        let none = world.measure(&window).await.unwrap();
        assert_eq!((none.stable.requests, none.canary.requests), (1000, 0));
        let ten = Weight::from_percent(10).unwrap();
        assert_eq!(world.set_weight(ten, &[]).await.unwrap(), ten);
        let s = world.measure(&window).await.unwrap();
        assert_eq!((s.stable.requests, s.canary.requests), (900, 100));
        assert_eq!((s.stable.errors, s.canary.errors), (0, 5));
        assert_eq!(world.weight_changes(), vec![ten]);
    }
}
