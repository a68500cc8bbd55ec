//! rampart-kubernetes: the Kubernetes adapter, one object that is both the `Deployer`
//! and the `TrafficRouter` of a release.
//!
//! Owns the translation from the ports to Kubernetes objects: a canary Deployment
//! derived from the stable one, replica counts, a Service selector or an HTTPRoute's
//! weights. Every write is a server-side apply by the field manager `rampart` (replica
//! counts: an update of the scale subresource), so a resumed release re-applies safely. It must not make release decisions, and it must
//! not touch objects other than the ones the policy names (and the canary Deployment
//! and canary Service it derives from them).
//!
//! One type serves both ports because a promotion is both: the stable Deployment takes
//! the new image, traffic returns to it, and only then is the canary removed.
//!
//! A stable Deployment opted in to GitOps-triggered releases (`gitops`) is Git's: it is
//! kept paused, the canary runs its template as Git applied it, and a promotion
//! unpauses it rather than apply an image. `gitops` also reads the opted-in
//! Deployments and their policies (ConfigMaps) for `rampart serve --kubernetes`.

#![forbid(unsafe_code)]

mod api;
mod deployer;
mod error;
pub mod gitops;
pub mod objects;
mod router;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_core::Weight;
use rampart_core::policy::{KubeDeploySpec, KubeMode, KubeTrafficSpec};

pub use error::Error;
/// The client crate, so that callers build clients (and tests fake transports) with
/// the same version.
pub use kube;

/// The field manager of every write rampart makes.
pub const FIELD_MANAGER: &str = "rampart";
/// The label that tells stable pods from canary pods.
pub const TRACK_LABEL: &str = "rampart.dev/track";
/// The canary's version: an annotation with the version, and a label with the version
/// or, when it is no label value, a hash of it (`objects::version_label`).
pub const VERSION_LABEL: &str = "rampart.dev/version";

/// A release's Deployments and the traffic between them, in one namespace.
///
/// Guarantees: every method is idempotent (server-side apply with `force`; a delete of
/// something already gone succeeds). Assumptions: the stable Deployment, and the
/// Service or HTTPRoute the mode names, exist before the release starts; the stable
/// Deployment's selector and pod template carry `rampart.dev/track: stable`.
#[derive(Clone)]
pub struct Kubernetes {
    client: kube::Client,
    deploy: KubeDeploySpec,
    traffic: KubeTrafficSpec,
    poll: Duration,
    drain: Duration,
    /// The version whose promotion this adapter found complete: the stable runs it and
    /// no canary is left (a controller resumed after the promotion deleted the canary).
    promoted: Arc<Mutex<Option<String>>>,
    /// The version the stable ran when the release began (or resumed): a step checks
    /// nobody else changed it since.
    stable_version: Arc<Mutex<Option<String>>>,
    /// Set when a rollback found the stable of a GitOps-triggered release deleted (see
    /// `workload_deleted`): there is then no stable to verify.
    workload_gone: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for Kubernetes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubernetes")
            .field("deploy", &self.deploy)
            .field("traffic", &self.traffic)
            .field("poll", &self.poll)
            .field("drain", &self.drain)
            .finish_non_exhaustive()
    }
}

impl Kubernetes {
    /// An adapter over an existing client (tests pass one over a fake transport).
    pub fn new(client: kube::Client, deploy: KubeDeploySpec, traffic: KubeTrafficSpec) -> Self {
        Kubernetes {
            client,
            deploy,
            traffic,
            poll: Duration::from_secs(2),
            drain: Duration::from_secs(10),
            promoted: Arc::default(),
            stable_version: Arc::default(),
            workload_gone: Arc::default(),
        }
    }

    /// Connects with the kubeconfig (`KUBECONFIG`, then `~/.kube/config`; the policy's
    /// `context` when given) or, inside a pod, the service account.
    pub async fn connect(deploy: KubeDeploySpec, traffic: KubeTrafficSpec) -> Result<Self, Error> {
        let config = match &deploy.context {
            Some(context) => kube::Config::from_kubeconfig(&kube::config::KubeConfigOptions {
                context: Some(context.clone()),
                ..Default::default()
            })
            .await
            .map_err(|e| Error::Config(format!("kubeconfig context `{context}`: {e}")))?,
            None => kube::Config::infer()
                .await
                .map_err(|e| Error::Config(e.to_string()))?,
        };
        let client = kube::Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Kubernetes::new(client, deploy, traffic))
    }

    /// How often readiness is polled (2 s unless changed).
    pub fn with_poll_interval(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// How long the canary keeps its pods after traffic left it, before they stop (the
    /// policy's `rollback.drain`; 10 s unless changed): kube-proxy and Gateways send
    /// requests to a backend for a moment after a Service or route stops naming it.
    pub fn with_drain(mut self, drain: Duration) -> Self {
        self.drain = drain;
        self
    }

    /// The version the stable Deployment runs now, read from its image through the
    /// policy's template; `None` when the image does not match the template. Fails
    /// when the stable Deployment is missing or lacks the labels rampart needs, so a
    /// misconfigured release stops before anything changes. A Deployment opted in to
    /// GitOps-triggered releases runs the version last released
    /// (`rampart.dev/released-version`).
    pub async fn stable_version(&self) -> Result<Option<String>, Error> {
        let stable = self.stable().await?;
        let released = stable
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(gitops::RELEASED_VERSION))
            .filter(|_| gitops::opted_in(&stable));
        if let Some(version) = released {
            // Paused on the running pods: their version is the one last released, and
            // the template (Git's) may already be the next one.
            return Ok(Some(version.clone()));
        }
        let image = objects::container_image(&stable, &self.deploy.container)?;
        Ok(self.deploy.version_of(&image))
    }

    /// The canary Deployment a finished release left, when users reach it now: its
    /// version (`None` when it carries none) and the share of traffic the mode gives it
    /// (its pods' share under `replica_ratio`, the Service's track under
    /// `service_selector`, the route's weight under `http_route`). `None` when there is
    /// no canary or it gets no traffic. Reads only.
    pub async fn canary_in_force(&self) -> Result<Option<(Option<String>, Weight)>, Error> {
        let Some(canary) = self.canary_opt().await? else {
            return Ok(None);
        };
        let stable = self.stable().await?;
        self.in_force(&canary, &stable).await
    }

    /// [`Kubernetes::canary_in_force`] of `canary` and `stable` as read.
    pub(crate) async fn in_force(
        &self,
        canary: &k8s_openapi::api::apps::v1::Deployment,
        stable: &k8s_openapi::api::apps::v1::Deployment,
    ) -> Result<Option<(Option<String>, Weight)>, Error> {
        let weight = match &self.traffic.mode {
            KubeMode::ReplicaRatio { .. } => {
                if objects::replicas(canary) == 0 {
                    Weight::ZERO
                } else {
                    objects::replica_weight(objects::replicas(canary), objects::replicas(stable))?
                }
            }
            KubeMode::ServiceSelector { service } => {
                let svc = self.service(service).await?;
                objects::selector_weight(
                    &svc,
                    &objects::track_labels(stable, "stable"),
                    &objects::track_labels(stable, "canary"),
                )?
            }
            KubeMode::HttpRoute { service, route } => {
                let canary_service = objects::canary_service_name(service);
                let route = self.route(route).await?;
                if objects::route_sends_to(&route, &canary_service) {
                    objects::route_weight(&route, service, &canary_service)?
                } else {
                    Weight::ZERO
                }
            }
        };
        Ok((weight > Weight::ZERO).then(|| (objects::canary_version(canary), weight)))
    }
}
