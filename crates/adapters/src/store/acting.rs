//! A replica's actions outside the store, fenced by its lease as its writes are.
//!
//! Owns checking, right before a router or a deployer changes anything, that this
//! process may still act ([`StateStore::may_act`]): a leader that was paused (or
//! starved) past half its lease time between recording a decision and carrying it
//! out must not carry it out when it wakes, because another replica may have taken the
//! release over meanwhile and moved its traffic since. The store's fencing token
//! cannot follow a weight into nginx, HAProxy or a cluster; the lease's deadline on
//! this replica's own clock can, since no candidate takes the lease over before a
//! whole lease time of silence.
//!
//! Guarantees: a refused change reaches nothing behind the wrapper and comes back as
//! a `Fenced` port error (the release then stops acting: its next append is refused
//! too). What only reads or waits (`verify`, `drain`) is passed on unchecked.
//! Assumptions: the remaining window is the time between the check and the change's
//! first write, a few instructions unless the process is paused exactly there.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rampart_core::policy::RouteMatch;
use rampart_core::ports::{BoxFuture, Deployer, Deployment, PortError, TrafficRouter};
use rampart_core::{Variant, Weight};

use super::StateStore;

/// A router or a deployer whose changes are fenced by `store`'s lease.
pub struct Fenced<T: ?Sized> {
    inner: Arc<T>,
    store: Arc<StateStore>,
}

impl<T: ?Sized> Fenced<T> {
    /// Wraps `inner`, checking `store` before each change.
    pub fn new(inner: Arc<T>, store: Arc<StateStore>) -> Fenced<T> {
        Fenced { inner, store }
    }

    fn may_act(&self) -> Result<(), PortError> {
        self.store.may_act().map_err(super::StoreError::into_port)
    }
}

impl<T: ?Sized> std::fmt::Debug for Fenced<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fenced { .. }")
    }
}

impl<T: TrafficRouter + ?Sized> TrafficRouter for Fenced<T> {
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.may_act()?;
            self.inner.set_backends(variant, endpoints).await
        })
    }

    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move {
            self.may_act()?;
            self.inner.set_weight(weight, matches).await
        })
    }

    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        self.inner.drain(variant, timeout)
    }

    fn drain_endpoints<'a>(
        &'a self,
        endpoints: &'a [SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.inner.drain_endpoints(endpoints, timeout)
    }
}

impl<T: Deployer + ?Sized> Deployer for Fenced<T> {
    fn deploy<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async move {
            self.may_act()?;
            self.inner.deploy(variant, version).await
        })
    }

    fn scale<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
        replicas: u32,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async move {
            self.may_act()?;
            self.inner.scale(variant, version, replicas).await
        })
    }

    fn trim(&self, variant: Variant, replicas: u32) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            self.may_act()?;
            self.inner.trim(variant, replicas).await
        })
    }

    fn stop(&self, variant: Variant) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            self.may_act()?;
            self.inner.stop(variant).await
        })
    }

    fn verify(
        &self,
        variant: Variant,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<String, PortError>> {
        self.inner.verify(variant, timeout)
    }
}
