//! A leader of several replicas that stalls between recording a decision and carrying
//! it out, long enough for another replica to take the lease over, must not carry it
//! out when it wakes: the store's fencing token refuses its writes, and its router and
//! deployer are fenced by the lease's deadline (`store::acting::Fenced`), as
//! `rampart serve` wires them. On virtual time, two replicas sharing one SQLite file,
//! the test kit's fake world behind them.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_adapters::store::acting::Fenced;
use rampart_adapters::store::lease::Lease;
use rampart_controller::{Controller, Silent};
use rampart_core::Weight;
use rampart_core::policy::{Policy, RouteMatch};
use rampart_core::ports::{BoxFuture, Clock, PortError, PortErrorKind, Store, TrafficRouter};
use rampart_core::release::{Input, Variant};
use rampart_testkit::FakeWorld;

const POLICY: &str = r#"
service: shop
deploy: {process: {command: ["./shop", "{port}"]}}
traffic: {proxy: {listen: "127.0.0.1:1"}}
strategy:
  canary:
    steps: [{weight: 10, bake: 1m}, {weight: 50, bake: 1m}]
analysis:
  interval: 30s
  min_samples: 10
  metrics:
    - metric: error_rate
      judge: {max: 5%}
"#;

const TTL: Duration = Duration::from_secs(9);

/// A router whose caller stalls just before its change to 50 %: the renewals of its
/// replica's lease stop with it (the whole process is paused), for two lease times.
struct StallsBefore50 {
    inner: Arc<dyn TrafficRouter>,
    clock: Arc<TokioClock>,
    renewals: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl TrafficRouter for StallsBefore50 {
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
            let renewals = if weight == Weight::from_percent(50).unwrap() {
                self.renewals.lock().unwrap().take()
            } else {
                None
            };
            if let Some(renewals) = renewals {
                renewals.abort();
                let ttl = u64::try_from(TTL.as_millis()).unwrap();
                self.clock.sleep_until(self.clock.now() + 2 * ttl).await;
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

#[tokio::test(start_paused = true)]
async fn a_leader_stalled_past_its_lease_changes_no_weight_when_it_wakes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = Arc::new(StateStore::open(&path).await.unwrap());
    let b = Arc::new(StateStore::open(&path).await.unwrap());
    let clock = Arc::new(TokioClock::starting_at(1_000_000));
    let lease_a = Lease::new(a.clone(), clock.clone(), "serve", "a", TTL);
    let lease_b = Lease::new(b.clone(), clock.clone(), "serve", "b", TTL);
    let held = lease_a.acquire().await;
    let renewals = tokio::spawn(async move {
        lease_a.hold(held).await;
    });
    let campaign = tokio::spawn(async move { lease_b.acquire().await });

    let world = FakeWorld::new();
    let mut ports = world.ports(a.clone(), a.clone(), clock.clone());
    ports.router = Arc::new(StallsBefore50 {
        inner: Arc::new(Fenced::new(ports.router.clone(), a.clone())),
        clock: clock.clone(),
        renewals: Mutex::new(Some(renewals)),
    });
    ports.deployer = Arc::new(Fenced::new(ports.deployer.clone(), a.clone()));
    let c = Controller::new(Policy::from_yaml(POLICY).unwrap(), ports, Arc::new(Silent));
    c.create("r1", "v2", POLICY).await.unwrap();
    let driven = c.drive("r1", Some("v1".into()), None).await;

    // The other replica took the lease while `a` stalled.
    let taken = campaign.await.unwrap();
    assert_eq!(taken.token, held.token + 1);
    // `a` had recorded the step to 50 % before it stalled; waking, it neither moved
    // the traffic nor recorded anything more.
    let ten = Weight::from_percent(10).unwrap();
    assert_eq!(
        world.weight_changes(),
        vec![ten],
        "a deposed leader moved traffic"
    );
    let err = driven.unwrap_err();
    let rampart_controller::ControllerError::Store(e) = &err else {
        panic!("{err}");
    };
    assert_eq!(e.kind(), PortErrorKind::Fenced, "{err}");
    // Nothing after the decision to go to 50 %: neither the change as made nor its
    // failure (on which the next leader would roll a healthy release back).
    let (_, log) = b.load("r1").await.unwrap();
    let answers: Vec<&Input> = log
        .iter()
        .map(|e| &e.input)
        .filter(|i| matches!(i, Input::TrafficSet { .. } | Input::TrafficFailed { .. }))
        .collect();
    assert!(
        matches!(answers.as_slice(), [Input::TrafficSet { weight }] if *weight == ten),
        "the deposed leader recorded more than the 10 % step: {answers:?}"
    );
}
