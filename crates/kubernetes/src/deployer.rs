//! `impl Deployer for Kubernetes`: the canary Deployment's life, and promotion.
//!
//! Owns deriving, applying, scaling and deleting the canary, and moving the stable
//! Deployment to a version. It must not delete or rename the stable Deployment: it is
//! the user's, and rampart only applies its image (and, for `replica_ratio`, its
//! replica count).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment as KubeDeployment;
use rampart_core::policy::KubeMode;
use rampart_core::ports::{BoxFuture, Deployer, Deployment, PortError};
use rampart_core::{Variant, Weight};

use crate::{Error, Kubernetes};
use crate::{gitops, objects};

fn deployed(detail: String) -> Deployment {
    // Pods have no address rampart routes to: Services and routes do that.
    Deployment {
        endpoints: Vec::new(),
        retired: Vec::new(),
        detail,
    }
}

// === impl Kubernetes ===

impl Kubernetes {
    /// The policy's `replicas` for `replica_ratio` (the grid of its weights), when
    /// rampart sizes the Deployments.
    pub(crate) fn ratio_grid(&self) -> Option<i32> {
        match self.traffic.mode {
            KubeMode::ReplicaRatio { replicas } => {
                Some(i32::try_from(replicas).unwrap_or(i32::MAX))
            }
            _ => None,
        }
    }

    /// Applies `version`'s image to the stable Deployment (`live`, as just read), sets
    /// its `replicas` when given, and waits for its rollout.
    /// The image of `version` by the policy's template, refused when it is none a
    /// registry takes: a version Git started (`TAG+REVISION`) whose Deployment no longer
    /// opts in must never be written as an image (it would roll out pods that cannot
    /// pull, unpaused).
    fn image_for(&self, version: &str) -> Result<String, Error> {
        let image = self.deploy.image_of(version);
        match objects::image_problem(&image) {
            Some(why) => Err(Error::Shape(format!(
                "version {version} makes the image `{image}` by `deploy.kubernetes.image`, and {why}: nothing is written (a version Git started is released only while its Deployment opts in)"
            ))),
            None => Ok(image),
        }
    }

    pub(crate) async fn apply_stable(
        &self,
        live: &KubeDeployment,
        version: &str,
        replicas: Option<i32>,
    ) -> Result<KubeDeployment, Error> {
        if gitops::opted_in(live) {
            // Git owns the template: the stable keeps its running pods (paused) and
            // only its count changes; its promotion is `promote_gitops`.
            if let Some(n) = replicas {
                self.scale_deployment(&self.deploy.deployment, n).await?;
            }
            return self
                .wait_ready(&self.deploy.deployment, self.deploy.ready_timeout)
                .await;
        }
        let image = self.image_for(version)?;
        let keep =
            objects::applies_replicas(live).then(|| replicas.unwrap_or(objects::replicas(live)));
        let body = objects::stable_patch(&self.deploy, &image, keep);
        self.apply_deployment(&self.deploy.deployment, &body)
            .await?;
        if let Some(n) = replicas.filter(|_| keep.is_none()) {
            self.scale_deployment(&self.deploy.deployment, n).await?;
        }
        self.wait_ready(&self.deploy.deployment, self.deploy.ready_timeout)
            .await
    }

    /// Applies the canary for `version` with `replicas` and waits for its rollout.
    /// Under `replica_ratio` it keeps the stable's count when the release began (the
    /// one an existing canary of `version` kept, else the stable's now).
    ///
    /// An existing canary of `version` keeps its pod template as it is: a re-apply (a
    /// resumed release) that changed it, even by an annotation, would replace every
    /// canary pod, the ones serving all traffic during a watch included.
    pub(crate) async fn apply_canary(
        &self,
        stable: &KubeDeployment,
        version: &str,
        replicas: i32,
        existing: Option<&KubeDeployment>,
    ) -> Result<KubeDeployment, Error> {
        let same = existing.filter(|c| objects::canary_version(c).as_deref() == Some(version));
        let start = self.ratio_grid().map(|_| {
            same.and_then(objects::start_replicas)
                .unwrap_or(objects::replicas(stable))
        });
        let mut body = objects::canary(stable, &self.deploy, version, replicas, start)?;
        if same.is_some_and(objects::first_pods_started) {
            objects::start_pods(&mut body);
        }
        if gitops::opted_in(stable) {
            gitops::canary_of_revision(&mut body, stable, &self.deploy.container, version)?;
        } else {
            self.image_for(version)?;
        }
        self.apply_deployment(&self.deploy.canary_name, &body)
            .await?;
        self.wait_ready(&self.deploy.canary_name, self.deploy.ready_timeout)
            .await
    }

    async fn deploy_stable(&self, version: &str) -> Result<String, Error> {
        let stable = self.stable().await?;
        // The count is left as it is: a resumed release's split stays as it was.
        let d = self.apply_stable(&stable, version, None).await?;
        if let Ok(mut v) = self.stable_version.lock() {
            *v = Some(version.to_string());
        }
        if gitops::opted_in(&stable) {
            return Ok(format!(
                "Deployment `{}` runs {version} ({} ready), paused on its released pods",
                self.deploy.deployment,
                objects::replicas(&d)
            ));
        }
        Ok(format!(
            "Deployment `{}` runs {} ({} ready)",
            self.deploy.deployment,
            self.deploy.image_of(version),
            objects::replicas(&d)
        ))
    }

    async fn deploy_canary(&self, version: &str) -> Result<String, Error> {
        let stable = self.stable().await?;
        let existing = self.canary_opt().await?;
        // A canary of another version that users reach now (what a halted release
        // left) is never rolled out to this version under them.
        if let Some(other) = existing
            .as_ref()
            .filter(|c| objects::canary_version(c).as_deref() != Some(version))
            && let Some((left, weight)) = self.in_force(other, &stable).await?
        {
            return Err(Error::Shape(format!(
                "Deployment `{}` runs {} and gets {weight} of the traffic (a finished release left it there): {version} would replace it under those users before any analysis. Decide where they go first: `rampart stop --canary` sends them back to the stable and removes it",
                self.deploy.canary_name,
                left.as_deref().unwrap_or("another version")
            )));
        }
        if existing.is_none()
            && let Some(done) = self.promotion_done(&stable, version)?
        {
            return Ok(done);
        }
        // A resumed release keeps the count the canary has: during a watch it serves
        // all traffic, while the stable it was sized from may have been scaled down
        // meanwhile (an HPA on an idle stable).
        let kept = existing
            .as_ref()
            .filter(|c| objects::canary_version(c).as_deref() == Some(version))
            .map(objects::replicas);
        let replicas = match self.ratio_grid() {
            // The canary's first pods start with its first step's weight.
            Some(_) => kept.unwrap_or(0),
            // Blue-green and routed canaries get the stable's capacity, once their
            // Service is known to select one track only.
            None => {
                self.check_service(&stable).await?;
                kept.filter(|n| *n > 0)
                    .unwrap_or_else(|| objects::replicas(&stable))
            }
        };
        let d = self
            .apply_canary(&stable, version, replicas, existing.as_ref())
            .await?;
        Ok(format!(
            "Deployment `{}` runs {} ({} ready)",
            self.deploy.canary_name,
            objects::container_image(&d, &self.deploy.container)?,
            objects::replicas(&d)
        ))
    }

    /// The canary Deployment, if it exists, checked to be rampart's: a Deployment of
    /// that name that rampart did not derive (no `rampart.dev/derived-from` naming the
    /// stable) is someone else's, and is neither overwritten nor deleted.
    pub(crate) async fn canary_opt(&self) -> Result<Option<KubeDeployment>, Error> {
        let canary = self.deployment_opt(&self.deploy.canary_name).await?;
        if let Some(c) = &canary {
            objects::check_derived(c, &self.deploy)?;
        }
        Ok(canary)
    }

    /// When the stable already runs `version` and no canary is left, a promotion of
    /// `version` completed (the controller that made it died before recording it):
    /// nothing is started, and the weight 100 % is in force as it is (see
    /// `promoted_weight`). Re-creating the canary would undo the promotion's end, and
    /// under `replica_ratio` take the promoted stable to 0 and back.
    fn promotion_done(
        &self,
        stable: &KubeDeployment,
        version: &str,
    ) -> Result<Option<String>, Error> {
        let image = self.deploy.image_of(version);
        if gitops::opted_in(stable) {
            let released = stable.metadata.annotations.as_ref().and_then(|a| {
                Some((
                    a.get(gitops::RELEASED_REVISION)?,
                    a.get(gitops::RELEASED_VERSION)?,
                ))
            });
            if released != Some((&gitops::revision(stable), &version.to_string())) {
                return Ok(None);
            }
        } else if !self.deploy.runs(
            &objects::container_image(stable, &self.deploy.container)?,
            version,
        ) {
            return Ok(None);
        }
        if let Ok(mut promoted) = self.promoted.lock() {
            *promoted = Some(version.to_string());
        }
        Ok(Some(format!(
            "Deployment `{}` already runs {image} and no canary is left: its promotion completed",
            self.deploy.deployment
        )))
    }

    /// After [`promotion_done`](Self::promotion_done): 100 % is in force (the stable
    /// runs the new version); any other share has no canary to go to. `None` when no
    /// completed promotion was found.
    pub(crate) fn promoted_weight(&self, weight: Weight) -> Option<Result<Weight, Error>> {
        let version = self.promoted.lock().ok()?.clone()?;
        Some(match weight {
            Weight::FULL => Ok(Weight::FULL),
            other => Err(Error::Weight(format!(
                "Deployment `{}` already runs {version} and no canary is left, so it cannot take {other}",
                self.deploy.deployment
            ))),
        })
    }

    /// Scales the canary to 0 and deletes it; one already gone is stopped.
    pub(crate) async fn remove_canary(&self) -> Result<String, Error> {
        let name = &self.deploy.canary_name;
        let Some(canary) = self.canary_opt().await? else {
            return Ok(format!("Deployment `{name}` already gone"));
        };
        // Scaled to 0 first, so its pods terminate gracefully while the Deployment is
        // still there to show it; then deleted.
        self.apply_deployment(name, &objects::rescaled(&canary, 0))
            .await?;
        match self.delete_deployment(name).await? {
            true => Ok(format!("Deployment `{name}` scaled to 0 and deleted")),
            false => Ok(format!("Deployment `{name}` scaled to 0; already deleted")),
        }
    }

    /// Promotion: the stable Deployment takes the canary's version, traffic returns to
    /// it, and the canary is removed. Each step is idempotent, so a promotion that was
    /// interrupted completes when repeated; each is verified (the stable's rollout,
    /// the traffic read back), and a failure says where traffic is.
    async fn promote(&self) -> Result<String, Error> {
        let Some(canary) = self.canary_opt().await? else {
            let stable = self
                .wait_ready(&self.deploy.deployment, self.deploy.ready_timeout)
                .await?;
            if gitops::opted_in(&stable)
                && !stable.metadata.annotations.as_ref().is_some_and(|a| {
                    a.get(gitops::RELEASED_REVISION) == Some(&gitops::revision(&stable))
                })
            {
                // Git's template waits paused, and no canary is left that ran it:
                // nothing analysed it, so nothing is rolled out.
                return Err(Error::Shape(format!(
                    "the canary `{}` is gone and Deployment `{}` has revision {} paused, not released: nothing analysed it, so the promotion does not roll it out",
                    self.deploy.canary_name,
                    self.deploy.deployment,
                    gitops::revision(&stable)
                )));
            }
            return Ok(format!(
                "no canary left; Deployment `{}` as it is",
                self.deploy.deployment
            ));
        };
        let version = objects::canary_version(&canary).ok_or_else(|| {
            Error::Shape(format!(
                "Deployment `{}` has no `{}` label; it was not made by rampart",
                self.deploy.canary_name,
                crate::VERSION_LABEL
            ))
        })?;
        let (stable_name, canary_name) = (&self.deploy.deployment, &self.deploy.canary_name);
        let half_way = |traffic: String| {
            move |e: Error| Error::Promotion {
                source: Box::new(e),
                traffic,
            }
        };
        let on_canary = match self.ratio_grid() {
            Some(_) => format!(
                "traffic: the canary `{canary_name}` ({version}) keeps serving, with the stable `{stable_name}` pods that are ready; the canary is kept"
            ),
            None => format!(
                "traffic: all on the canary `{canary_name}` ({version}), which is kept; the stable `{stable_name}` has none"
            ),
        };
        let stable = self.stable().await.map_err(half_way(on_canary.clone()))?;
        let replicas = match self.ratio_grid() {
            // What serves now (the canary, at 100 %), never below the count the stable
            // had when the release began, within an HPA's bounds.
            Some(grid) => {
                let start = objects::start_replicas(&canary)
                    .unwrap_or(grid)
                    .max(objects::replicas(&canary));
                let hpa = self
                    .hpa_bounds(stable_name)
                    .await
                    .map_err(half_way(on_canary.clone()))?;
                let (min, max) = hpa.map_or((1, i32::MAX), |(min, max)| {
                    let n = |x: u32| i32::try_from(x).unwrap_or(i32::MAX);
                    (n(min).max(1), n(max).max(1))
                });
                Some(start.clamp(min, max.max(min)))
            }
            None => None,
        };
        if gitops::opted_in(&stable) {
            if let Some(n) = replicas {
                self.scale_deployment(stable_name, n)
                    .await
                    .map_err(half_way(on_canary.clone()))?;
            }
            self.promote_gitops(&canary, &version)
                .await
                .map_err(half_way(on_canary.clone()))?;
        } else {
            self.apply_stable(&stable, &version, replicas)
                .await
                .map_err(half_way(on_canary.clone()))?;
        }
        self.route_to_stable()
            .await
            .map_err(half_way(format!(
                "{on_canary}, unless the switch back to the stable `{stable_name}` (now {version}) took effect"
            )))?;
        if self.ratio_grid().is_none() {
            // Traffic left the canary with the switch; Gateways and kube-proxy take a
            // moment to follow it (see `drain`).
            tokio::time::sleep(self.drain).await;
        }
        let removed = self.remove_canary().await.map_err(half_way(format!(
            "traffic: all on the stable `{stable_name}`, now {version}; the canary `{canary_name}` is left"
        )))?;
        Ok(format!(
            "promoted: Deployment `{stable_name}` runs {}; {removed}",
            self.deploy.image_of(&version)
        ))
    }

    fn name_of(&self, variant: Variant) -> &str {
        match variant {
            Variant::Stable => &self.deploy.deployment,
            Variant::Canary => &self.deploy.canary_name,
        }
    }
}

impl Deployer for Kubernetes {
    /// Stable: applies `version`'s image to the stable Deployment (a no-op when it runs
    /// it) and waits. Canary: derives and applies the canary Deployment and waits.
    fn deploy<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async move {
            let detail = match variant {
                Variant::Stable => self.deploy_stable(version).await?,
                Variant::Canary => self.deploy_canary(version).await?,
            };
            Ok(deployed(detail))
        })
    }

    /// Sets the variant's replica count and waits; Kubernetes retires surplus pods
    /// itself, so nothing is reported retired.
    fn scale<'a>(
        &'a self,
        variant: Variant,
        version: &'a str,
        replicas: u32,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async move {
            let n = i32::try_from(replicas).map_err(|_| PortError::new("too many replicas"))?;
            match variant {
                Variant::Stable => {
                    let stable = self.stable().await?;
                    self.apply_stable(&stable, version, Some(n)).await?
                }
                Variant::Canary => {
                    let stable = self.stable().await?;
                    let existing = match self.ratio_grid() {
                        Some(_) => self.deployment_opt(&self.deploy.canary_name).await?,
                        None => None,
                    };
                    self.apply_canary(&stable, version, n, existing.as_ref())
                        .await?
                }
            };
            Ok(deployed(format!(
                "Deployment `{}` at {replicas} replica(s)",
                self.name_of(variant)
            )))
        })
    }

    /// Nothing to do: the Deployment controller stops surplus pods after a scale.
    fn trim(&self, variant: Variant, replicas: u32) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            Ok(format!(
                "Deployment `{}` keeps {replicas} replica(s); Kubernetes stops the rest",
                self.name_of(variant)
            ))
        })
    }

    /// Canary: scaled to 0 and deleted (gone already is success). Stable: this is the
    /// end of a promotion (the state machine stops the previous version once the new
    /// one serves everything), so the stable Deployment takes the new version and the
    /// canary goes.
    fn stop(&self, variant: Variant) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            Ok(match variant {
                Variant::Canary => self.remove_canary().await?,
                Variant::Stable => self.promote().await?,
            })
        })
    }

    /// Checks the variant's rollout is complete, waiting at most `timeout`.
    fn verify(
        &self,
        variant: Variant,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async move {
            let name = self.name_of(variant);
            if variant == Variant::Stable
                && self.workload_gone.load(std::sync::atomic::Ordering::SeqCst)
                && self.deployment_opt(name).await?.is_none()
            {
                return Ok(format!(
                    "Deployment `{name}` was deleted: nothing serves, nothing is left to verify"
                ));
            }
            let d = self.wait_ready(name, timeout).await?;
            Ok(format!(
                "Deployment `{name}`: {} replica(s) ready",
                objects::replicas(&d)
            ))
        })
    }
}
