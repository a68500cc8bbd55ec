//! The few API calls the adapter makes, each with its error in words.
//!
//! Owns reading, server-side applying and deleting the objects, and the readiness
//! poll. It must not decide what to write: `deployer` and `router` build the bodies
//! (with `objects`).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Service;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
};
use serde_json::Value;

use crate::objects::{self, Readiness};
use crate::{Error, FIELD_MANAGER, Kubernetes};

/// Gateway API's HTTPRoute, without a typed crate.
pub(crate) fn http_route_resource() -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk(
        "gateway.networking.k8s.io",
        "v1",
        "HTTPRoute",
    ))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

// === impl Kubernetes ===

impl Kubernetes {
    pub(crate) fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.deploy.namespace)
    }

    fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.deploy.namespace)
    }

    fn routes(&self) -> Api<DynamicObject> {
        Api::namespaced_with(
            self.client.clone(),
            &self.deploy.namespace,
            &http_route_resource(),
        )
    }

    fn not_found(&self, kind: &'static str, name: &str) -> Error {
        Error::NotFound {
            kind,
            name: name.to_string(),
            namespace: self.deploy.namespace.clone(),
        }
    }

    /// A Deployment, if it exists.
    pub(crate) async fn deployment_opt(&self, name: &str) -> Result<Option<Deployment>, Error> {
        self.deployments()
            .get_opt(name)
            .await
            .map_err(|source| Error::api(format!("reading Deployment `{name}`"), source))
    }

    /// A Deployment that must exist.
    pub(crate) async fn deployment(&self, name: &str) -> Result<Deployment, Error> {
        self.deployment_opt(name)
            .await?
            .ok_or_else(|| self.not_found("Deployment", name))
    }

    /// The stable Deployment, checked for the labels rampart relies on.
    pub(crate) async fn stable(&self) -> Result<Deployment, Error> {
        let stable = self.deployment(&self.deploy.deployment).await?;
        objects::check_stable(&stable, &self.deploy.deployment)?;
        Ok(stable)
    }

    /// The stable Deployment before a step sends the canary `weight`: unless the weight
    /// is 0, it must still run the version it ran when the release began. Someone
    /// else's change (a `kubectl apply`, a GitOps sync) mid-release means the canary
    /// is no longer compared with that version: the step fails, and the release rolls
    /// back, leaving the stable as they left it.
    pub(crate) async fn stable_for(
        &self,
        weight: rampart_core::Weight,
    ) -> Result<Deployment, Error> {
        let stable = self.stable().await?;
        if crate::gitops::opted_in(&stable) {
            // Git owns the template: a change to it is a new revision, which the watch
            // loop releases after this one (superseding it), never an edit to refuse.
            return Ok(stable);
        }
        let began = self.stable_version.lock().ok().and_then(|v| v.clone());
        if let Some(version) = began.filter(|_| weight != rampart_core::Weight::ZERO) {
            let expected = self.deploy.image_of(&version);
            let now = objects::container_image(&stable, &self.deploy.container)?;
            if !self.deploy.runs(&now, &version) {
                return Err(Error::Shape(format!(
                    "Deployment `{}` runs {now}, not {expected} as when the release began: it was changed mid-release (a kubectl apply, a GitOps sync?), so the canary is no longer compared with the version it replaces; rampart sends it no more traffic",
                    self.deploy.deployment
                )));
            }
        }
        Ok(stable)
    }

    /// Server-side applies a Deployment body and returns what the server stored.
    pub(crate) async fn apply_deployment(
        &self,
        name: &str,
        body: &Value,
    ) -> Result<Deployment, Error> {
        self.deployments()
            .patch(name, &apply_params(), &Patch::Apply(body))
            .await
            .map_err(|source| Error::api(format!("applying Deployment `{name}`"), source))
    }

    /// Sets a Deployment's `spec.replicas` through its scale subresource: an update, not
    /// an apply, so rampart never becomes the field's applier. Under server-side apply
    /// an applier that leaves a field out of a later apply removes it (and the
    /// Deployment falls back to 1 replica); an update's fields are never removed that
    /// way, so a later release in another mode keeps the count.
    pub(crate) async fn scale_deployment(&self, name: &str, replicas: i32) -> Result<(), Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = serde_json::json!({ "spec": { "replicas": replicas } });
        self.deployments()
            .patch_scale(name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|source| {
                Error::api(format!("scaling Deployment `{name}` to {replicas}"), source)
            })?;
        Ok(())
    }

    /// Sets one annotation of a Deployment (a merge patch: nothing else changes).
    pub(crate) async fn annotate_deployment(
        &self,
        name: &str,
        key: &str,
        value: &str,
    ) -> Result<(), Error> {
        let params = PatchParams {
            field_manager: Some(FIELD_MANAGER.into()),
            ..PatchParams::default()
        };
        let patch = serde_json::json!({ "metadata": { "annotations": { key: value } } });
        self.deployments()
            .patch(name, &params, &Patch::Merge(&patch))
            .await
            .map_err(|source| Error::api(format!("annotating Deployment `{name}`"), source))?;
        Ok(())
    }

    /// Deletes a Deployment; one already gone counts as deleted. Returns whether it
    /// existed.
    pub(crate) async fn delete_deployment(&self, name: &str) -> Result<bool, Error> {
        match self
            .deployments()
            .delete(name, &DeleteParams::background())
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_not_found(&e) => Ok(false),
            Err(source) => Err(Error::api(format!("deleting Deployment `{name}`"), source)),
        }
    }

    /// The bounds (`minReplicas`, `maxReplicas`) of an HPA that scales the Deployment
    /// `name`, if one does. KEDA's ScaledObjects work through such an HPA too.
    pub(crate) async fn hpa_bounds(&self, name: &str) -> Result<Option<(u32, u32)>, Error> {
        let hpas: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.client.clone(), &self.deploy.namespace);
        let list = hpas.list(&ListParams::default()).await.map_err(|source| {
            Error::api(
                "listing HorizontalPodAutoscalers (replica_ratio keeps the stable within an HPA's bounds; grant `list` on `autoscaling/horizontalpodautoscalers`)".into(),
                source,
            )
        })?;
        Ok(list.items.iter().find_map(|h| {
            let spec = &h.spec;
            let target = &spec.scale_target_ref;
            (target.kind == "Deployment" && target.name == name).then(|| {
                let min = spec.min_replicas.unwrap_or(1);
                (
                    u32::try_from(min).unwrap_or(1),
                    u32::try_from(spec.max_replicas).unwrap_or(u32::MAX),
                )
            })
        }))
    }

    /// A Service, if it exists.
    pub(crate) async fn service_opt(&self, name: &str) -> Result<Option<Service>, Error> {
        self.services()
            .get_opt(name)
            .await
            .map_err(|source| Error::api(format!("reading Service `{name}`"), source))
    }

    /// A Service that must exist.
    pub(crate) async fn service(&self, name: &str) -> Result<Service, Error> {
        self.service_opt(name)
            .await?
            .ok_or_else(|| self.not_found("Service", name))
    }

    /// Server-side applies a Service body.
    pub(crate) async fn apply_service(&self, name: &str, body: &Value) -> Result<Service, Error> {
        self.services()
            .patch(name, &apply_params(), &Patch::Apply(body))
            .await
            .map_err(|source| Error::api(format!("applying Service `{name}`"), source))
    }

    /// An HTTPRoute that must exist.
    pub(crate) async fn route(&self, name: &str) -> Result<DynamicObject, Error> {
        self.routes()
            .get_opt(name)
            .await
            .map_err(|source| Error::api(format!("reading HTTPRoute `{name}`"), source))?
            .ok_or_else(|| self.not_found("HTTPRoute", name))
    }

    /// Server-side applies an HTTPRoute body.
    pub(crate) async fn apply_route(
        &self,
        name: &str,
        body: &Value,
    ) -> Result<DynamicObject, Error> {
        self.routes()
            .patch(name, &apply_params(), &Patch::Apply(body))
            .await
            .map_err(|source| Error::api(format!("applying HTTPRoute `{name}`"), source))
    }

    /// Polls a Deployment until its rollout is complete (for a paused Deployment opted
    /// in to GitOps releases: its running pods are available), it fails, or `timeout`
    /// has been spent waiting.
    pub(crate) async fn wait_ready(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<Deployment, Error> {
        self.poll(
            &format!("Deployment `{name}`"),
            timeout,
            || self.deployment(name),
            |d: &Deployment| {
                // A paused opted-in Deployment serves from its previous pods while Git's
                // template waits for its release: those pods are what must be ready.
                let paused = d.spec.as_ref().and_then(|s| s.paused) == Some(true);
                if paused && crate::gitops::opted_in(d) {
                    crate::gitops::serving(d)
                } else {
                    objects::readiness(d)
                }
            },
        )
        .await
    }

    /// Polls an HTTPRoute until every Gateway it names has accepted its current
    /// generation with all its backends resolved, one refused it, or `timeout` has
    /// been spent waiting: only then does its weight count as in force.
    pub(crate) async fn wait_route(
        &self,
        name: &str,
        timeout: Duration,
    ) -> Result<DynamicObject, Error> {
        self.poll(
            &format!("HTTPRoute `{name}`"),
            timeout,
            || self.route(name),
            objects::route_readiness,
        )
        .await
    }

    /// Reads `what` until `check` says it is ready or failed, or `timeout` has been
    /// spent. Time is only ever spent in `tokio::time::sleep`, so tests run it on
    /// virtual time.
    pub(crate) async fn poll<T, F>(
        &self,
        what: &str,
        timeout: Duration,
        read: impl Fn() -> F,
        check: impl Fn(&T) -> Readiness,
    ) -> Result<T, Error>
    where
        F: Future<Output = Result<T, Error>>,
    {
        let mut waited = Duration::ZERO;
        loop {
            let object = read().await?;
            match check(&object) {
                Readiness::Ready => return Ok(object),
                Readiness::Failed(why) => {
                    return Err(Error::NotReady(format!("{what}: {why}")));
                }
                Readiness::Waiting(why) if waited >= timeout => {
                    return Err(Error::NotReady(format!(
                        "{what} not ready after {}: {why}",
                        rampart_core::units::format_duration(timeout)
                    )));
                }
                Readiness::Waiting(_) => {}
            }
            let nap = self
                .poll
                .min(timeout.saturating_sub(waited))
                .max(Duration::from_millis(1));
            tokio::time::sleep(nap).await;
            waited += nap;
        }
    }
}
