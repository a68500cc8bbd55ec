//! `impl TrafficRouter for Kubernetes`: the three ways a share of traffic reaches the
//! canary.
//!
//! Owns `replica_ratio` (replica counts behind one Service), `service_selector` (the
//! Service selects one track) and `http_route` (HTTPRoute backendRef weights), each
//! read back after the change. It must not create or delete Deployments (except
//! scaling them in `replica_ratio`), and it never touches the Gateway.

use std::net::SocketAddr;
use std::time::Duration;

use rampart_core::policy::{KubeMode, RouteMatch};
use rampart_core::ports::{BoxFuture, PortError, TrafficRouter};
use rampart_core::{Variant, Weight};

use crate::objects;
use crate::{Error, Kubernetes};

// === impl Kubernetes ===

impl Kubernetes {
    async fn set_replica_ratio(&self, grid: u32, weight: Weight) -> Result<Weight, Error> {
        let stable = self.stable_for(weight).await?;
        let canary = self.deployment_opt(&self.deploy.canary_name).await?;
        // Sized from the stable's count when the release began (kept on the canary),
        // else from what runs now; grown by what an HPA added to the stable since the
        // last step set it (load between steps is followed, not undone).
        let live = objects::replicas(&stable) + canary.as_ref().map_or(0, objects::replicas);
        let grown = canary
            .as_ref()
            .and_then(objects::stable_set)
            .map_or(0, |set| (objects::replicas(&stable) - set).max(0));
        let start = canary
            .as_ref()
            .and_then(objects::start_replicas)
            .map_or(live, |began| began.saturating_add(grown));
        let hpa = self.hpa_bounds(&self.deploy.deployment).await?;
        let (c, s) = objects::ratio_split(grid, u32::try_from(start).unwrap_or(1), weight, hpa);
        let (c, s) = (
            i32::try_from(c).unwrap_or(i32::MAX),
            i32::try_from(s).unwrap_or(i32::MAX),
        );
        let Some(canary) = canary else {
            if c > 0 {
                return Err(Error::Weight(format!(
                    "Deployment `{}` does not exist, so it cannot take {weight}",
                    self.deploy.canary_name
                )));
            }
            return self.scale_stable_only(s).await;
        };
        let mut canary_body = objects::rescaled(&canary, c);
        canary_body["metadata"]["annotations"][objects::STABLE_REPLICAS] = start.to_string().into();
        if objects::replicas(&canary) == 0 && c > 0 {
            objects::start_pods(&mut canary_body);
        }
        // The stable count this step set is recorded once the stable has it, never
        // before: a step that fails half-way must not read as an HPA's growth later.
        let set = s.to_string();
        // The side that grows goes first, so capacity never dips during the change.
        if c >= objects::replicas(&canary) {
            self.apply_deployment(&self.deploy.canary_name, &canary_body)
                .await?;
            self.wait_ready(&self.deploy.canary_name, self.deploy.ready_timeout)
                .await?;
            self.scale_deployment(&self.deploy.deployment, s).await?;
            self.annotate_deployment(&self.deploy.canary_name, objects::STABLE_SET, &set)
                .await?;
        } else {
            self.scale_deployment(&self.deploy.deployment, s).await?;
            self.wait_ready(&self.deploy.deployment, self.deploy.ready_timeout)
                .await?;
            canary_body["metadata"]["annotations"][objects::STABLE_SET] = set.into();
            self.apply_deployment(&self.deploy.canary_name, &canary_body)
                .await?;
        }
        let stable = self
            .wait_ready(&self.deploy.deployment, self.deploy.ready_timeout)
            .await?;
        let canary = self
            .wait_ready(&self.deploy.canary_name, self.deploy.ready_timeout)
            .await?;
        objects::replica_weight(objects::replicas(&canary), objects::replicas(&stable))
    }

    async fn scale_stable_only(&self, replicas: i32) -> Result<Weight, Error> {
        self.scale_deployment(&self.deploy.deployment, replicas)
            .await?;
        self.wait_ready(&self.deploy.deployment, self.deploy.ready_timeout)
            .await?;
        Ok(Weight::ZERO)
    }

    async fn set_selector(&self, service: &str, weight: Weight) -> Result<Weight, Error> {
        let track = match weight {
            Weight::ZERO => "stable",
            Weight::FULL => "canary",
            other => {
                return Err(Error::Weight(format!(
                    "`mode: service_selector` sends all traffic to one Deployment: 0 % or 100 %, not {other}"
                )));
            }
        };
        let stable = self.stable_for(weight).await?;
        let labels = objects::track_labels(&stable, track);
        let body = objects::selector_patch(service, &self.deploy.namespace, &labels);
        self.apply_service(service, &body).await?;
        let svc = self.service(service).await?;
        objects::selector_weight(
            &svc,
            &objects::track_labels(&stable, "stable"),
            &objects::track_labels(&stable, "canary"),
        )
    }

    async fn set_route(&self, service: &str, route: &str, weight: Weight) -> Result<Weight, Error> {
        let canary_service = objects::canary_service_name(service);
        // Read first only on the way to 0 %: with no rule sending to the canary's
        // Service yet (a release refused before its first step), all traffic is on the
        // stable already, and nothing is written (a Service of that name that is not
        // rampart's is left alone).
        let read_first = match weight {
            Weight::ZERO => Some(self.route(route).await?),
            _ => None,
        };
        if let Some(current) = &read_first
            && !objects::route_sends_to(current, &canary_service)
        {
            return objects::route_weight(current, service, &canary_service);
        }
        let stable = self.stable_for(weight).await?;
        let stable_svc = self.service(service).await?;
        let body = objects::canary_service(
            &stable_svc,
            &canary_service,
            &self.deploy.namespace,
            &objects::track_labels(&stable, "canary"),
        );
        self.apply_service(&canary_service, &body).await?;
        let current = match read_first {
            Some(current) => current,
            None => self.route(route).await?,
        };
        let body = objects::weighted_route(&current, service, &canary_service, weight)?;
        self.apply_route(route, &body).await?;
        let read = self.wait_route(route, self.deploy.ready_timeout).await?;
        objects::route_weight(&read, service, &canary_service)
    }

    /// Checks the Service the mode names before a canary starts (see
    /// [`objects::check_service`]); `replica_ratio` names none.
    pub(crate) async fn check_service(
        &self,
        stable: &k8s_openapi::api::apps::v1::Deployment,
    ) -> Result<(), Error> {
        let (service, tracks, why): (&str, &[&str], &str) = match &self.traffic.mode {
            KubeMode::ReplicaRatio { .. } => return Ok(()),
            KubeMode::ServiceSelector { service } => (
                service,
                &["stable", "canary"],
                "`mode: service_selector` switches it between the tracks",
            ),
            KubeMode::HttpRoute { service, .. } => (
                service,
                &["stable"],
                "`mode: http_route` weighs it, the stable backend, against the canary's Service",
            ),
        };
        let svc = self.service(service).await?;
        objects::check_service(&svc, stable, tracks, why)?;
        if let KubeMode::HttpRoute { service, .. } = &self.traffic.mode {
            self.check_canary_service(service).await?;
        }
        Ok(())
    }

    /// Under `http_route`: an existing canary Service must be rampart's own (see
    /// [`objects::check_canary_service`]); none is fine, it is created.
    async fn check_canary_service(&self, service: &str) -> Result<(), Error> {
        let name = objects::canary_service_name(service);
        match self.service_opt(&name).await? {
            Some(existing) => objects::check_canary_service(&existing, service),
            None => Ok(()),
        }
    }

    /// A rollback after the stable Deployment of a GitOps-triggered release was
    /// deleted (pruned from Git): there is no stable to send traffic to, and the
    /// canary, derived from a workload that no longer exists, is removed so that
    /// nothing of it stays behind. True when that is the case. A stable deleted under
    /// a release started by hand is still an error: its canary may be all that serves.
    async fn workload_deleted(&self) -> Result<bool, Error> {
        if self
            .deployment_opt(&self.deploy.deployment)
            .await?
            .is_some()
        {
            return Ok(false);
        }
        let gitops = self.canary_opt().await?.is_none_or(|c| {
            c.metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(crate::gitops::CANARY_REVISION))
        });
        if gitops {
            self.remove_canary().await?;
            self.workload_gone
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        Ok(gitops)
    }

    /// All traffic to the stable Deployment, as the end of a promotion needs before the
    /// canary goes. Under `replica_ratio` the stable Deployment's count already did it.
    /// The weight read back must be 0: the canary is removed next.
    pub(crate) async fn route_to_stable(&self) -> Result<(), Error> {
        let got = match &self.traffic.mode {
            KubeMode::ReplicaRatio { .. } => return Ok(()),
            KubeMode::ServiceSelector { service } => {
                self.set_selector(service, Weight::ZERO).await?
            }
            KubeMode::HttpRoute { service, route } => {
                self.set_route(service, route, Weight::ZERO).await?
            }
        };
        if got != Weight::ZERO {
            return Err(Error::Weight(format!(
                "traffic did not return to the stable Deployment: the canary still has {got} after the switch back"
            )));
        }
        Ok(())
    }
}

impl TrafficRouter for Kubernetes {
    /// A no-op: traffic reaches pods through Services, which track pod readiness
    /// themselves; rampart's endpoints are empty here.
    fn set_backends<'a>(
        &'a self,
        _variant: Variant,
        _endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }

    /// Applies the share (see the modes) and returns the one read back.
    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move {
            if !matches.is_empty() {
                return Err(PortError::new(
                    "traffic.kubernetes splits by weight only; match rules are not supported",
                ));
            }
            if weight != Weight::ZERO
                && let Some(done) = self.promoted_weight(weight)
            {
                return Ok(done?);
            }
            if weight == Weight::ZERO && self.workload_deleted().await? {
                return Ok(Weight::ZERO);
            }
            let got = match &self.traffic.mode {
                KubeMode::ReplicaRatio { replicas } => {
                    self.set_replica_ratio(*replicas, weight).await?
                }
                KubeMode::ServiceSelector { service } => self.set_selector(service, weight).await?,
                KubeMode::HttpRoute { service, route } => {
                    self.set_route(service, route, weight).await?
                }
            };
            Ok(got)
        })
    }

    /// The canary, once traffic has left it (a rollback): waits `timeout` before it is
    /// stopped, because kube-proxy and Gateways go on sending it requests for a moment
    /// after the selector or the route changed; nothing tells rampart when they are
    /// done. Under `replica_ratio` traffic left with the pods themselves (scaled to
    /// 0), so there is nothing to wait for. The stable: nothing here, its promotion
    /// waits between the switch back and the canary's removal (`promote`).
    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            if variant == Variant::Canary && self.ratio_grid().is_none() {
                tokio::time::sleep(timeout).await;
            }
            Ok(())
        })
    }

    /// A no-op, as `drain`: there are never endpoints to drain here.
    fn drain_endpoints<'a>(
        &'a self,
        _endpoints: &'a [SocketAddr],
        _timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
}
