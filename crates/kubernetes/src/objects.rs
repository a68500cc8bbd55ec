//! Pure functions over Kubernetes objects: deriving the canary, reading readiness,
//! building apply bodies and reading weights back.
//!
//! Owns every rule about object shape (which labels, which fields rampart applies).
//! It must not do I/O, so each rule is unit-testable on plain values.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::DynamicObject;
use rampart_core::Weight;
use rampart_core::policy::KubeDeploySpec;
use serde_json::{Value, json};

use crate::{Error, TRACK_LABEL, VERSION_LABEL};

/// The canary's annotation naming the Deployment it was derived from.
pub const DERIVED_FROM: &str = "rampart.dev/derived-from";
/// The canary's annotation keeping the stable's replica count when the release began
/// (`replica_ratio`): what the split is sized from, and what a promotion restores.
pub const STABLE_REPLICAS: &str = "rampart.dev/stable-replicas";
/// The canary's annotation keeping the stable's count the last `replica_ratio` step
/// set: a stable above it was scaled up since (an HPA under load), and the split
/// grows by as much.
pub const STABLE_SET: &str = "rampart.dev/stable-set";

fn is_rampart_own(key: &str) -> bool {
    key.starts_with("rampart.dev/")
}

/// Where a Deployment's rollout stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// The controller has seen the latest spec and every replica is updated and available.
    Ready,
    /// Not yet, and why.
    Waiting(String),
    /// The rollout failed (`ProgressDeadlineExceeded`); waiting longer will not help.
    Failed(String),
}

/// Where `d`'s rollout stands, by the same rules as `kubectl rollout status`.
pub fn readiness(d: &Deployment) -> Readiness {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return Readiness::Waiting(format!(
            "the Deployment controller has not observed generation {generation} yet (at {observed})"
        ));
    }
    if let Some(c) = status.conditions.iter().flatten().find(|c| {
        c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
    }) {
        return Readiness::Failed(format!(
            "rollout failed: ProgressDeadlineExceeded{}",
            c.message
                .as_deref()
                .map(|m| format!(" ({m})"))
                .unwrap_or_default()
        ));
    }
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < want {
        return Readiness::Waiting(format!("{updated} of {want} replicas updated"));
    }
    if total > updated {
        return Readiness::Waiting(format!(
            "{} old replica(s) pending termination",
            total - updated
        ));
    }
    if available != want {
        return Readiness::Waiting(format!("{available} of {want} replicas available"));
    }
    Readiness::Ready
}

/// Whether every pod of `d` runs its current template (none of an older one left):
/// the Deployment controller has seen its spec, and all its pods are updated ones.
/// Ready or not: pods an HPA or a node drain just added run the template too.
pub fn on_template(d: &Deployment) -> bool {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    // A `Recreate` rollout has a moment with no pod counted at all (the old ones
    // terminating, the new ReplicaSet not made yet): none is on the template then.
    status.observed_generation.unwrap_or(0) >= generation
        && updated >= want.min(total)
        && total <= updated
        && (updated > 0 || want == 0)
}

/// Checks the stable Deployment carries `rampart.dev/track: stable` in its selector
/// and its pod template, so stable and canary pods can be selected apart.
pub fn check_stable(d: &Deployment, name: &str) -> Result<(), Error> {
    let spec = d.spec.as_ref();
    let selected = spec
        .and_then(|s| s.selector.match_labels.as_ref())
        .and_then(|l| l.get(TRACK_LABEL))
        .map(String::as_str);
    let labelled = spec
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.as_ref())
        .and_then(|l| l.get(TRACK_LABEL))
        .map(String::as_str);
    if selected != Some("stable") || labelled != Some("stable") {
        return Err(Error::Shape(format!(
            "Deployment `{name}` needs the label `{TRACK_LABEL}: stable` in `spec.selector.matchLabels` and in `spec.template.metadata.labels`, so that its pods and the canary's can be selected apart (see docs/kubernetes.md)"
        )));
    }
    Ok(())
}

/// Checks that the Service a traffic mode names selects one track of the stable
/// Deployment's pods: its selector has `rampart.dev/track` (`stable`, or under
/// `service_selector` also `canary`, as a resumed blue-green release finds it) and
/// its other labels are the stable pods'. A Service that selects `{app: checkout}`
/// would send the canary its share of traffic the moment its pods are ready, before
/// any analysis.
pub fn check_service(
    svc: &Service,
    stable: &Deployment,
    tracks: &[&str],
    why: &str,
) -> Result<(), Error> {
    let name = svc.metadata.name.as_deref().unwrap_or("?");
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let pods = stable
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let track = selector.get(TRACK_LABEL).map(String::as_str);
    if !track.is_some_and(|t| tracks.contains(&t)) {
        return Err(Error::Shape(format!(
            "Service `{name}` selects {selector:?}: {why}, so its selector needs `{TRACK_LABEL}: stable`; without it the canary's pods would get traffic as soon as they are ready, before any analysis (see docs/kubernetes.md)"
        )));
    }
    if let Some((k, v)) = selector
        .iter()
        .find(|(k, v)| k.as_str() != TRACK_LABEL && pods.get(*k) != Some(*v))
    {
        return Err(Error::Shape(format!(
            "Service `{name}` selects `{k}: {v}`, which the pods of Deployment `{}` do not carry: it is not the stable Deployment's Service",
            stable.metadata.name.as_deref().unwrap_or("?")
        )));
    }
    Ok(())
}

/// Checks that `canary` was derived by rampart from the policy's stable Deployment
/// (its `rampart.dev/derived-from` annotation names it).
pub fn check_derived(canary: &Deployment, spec: &KubeDeploySpec) -> Result<(), Error> {
    let from = canary
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DERIVED_FROM));
    if from != Some(&spec.deployment) {
        return Err(Error::Shape(format!(
            "Deployment `{}` exists but rampart did not derive it from `{}` (its `{DERIVED_FROM}` annotation is {}): it is not rampart's to overwrite or delete; remove it or set `deploy.kubernetes.canary_name`",
            spec.canary_name,
            spec.deployment,
            from.map_or("missing".to_string(), |f| format!("`{f}`"))
        )));
    }
    Ok(())
}

/// The image `container` runs in `d`.
pub fn container_image(d: &Deployment, container: &str) -> Result<String, Error> {
    let name = d.metadata.name.as_deref().unwrap_or("?");
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .and_then(|p| p.containers.iter().find(|c| c.name == container))
        .and_then(|c| c.image.clone())
        .ok_or_else(|| {
            Error::Shape(format!(
                "Deployment `{name}` has no container `{container}` with an image; `deploy.kubernetes.container` names the container whose image is the version"
            ))
        })
}

/// The labels that select one track's pods: the stable selector with the track set.
pub fn track_labels(stable: &Deployment, track: &str) -> BTreeMap<String, String> {
    let mut labels = stable
        .spec
        .as_ref()
        .and_then(|s| s.selector.match_labels.clone())
        .unwrap_or_default();
    labels.insert(TRACK_LABEL.into(), track.into());
    labels
}

/// The version a canary Deployment runs: its `rampart.dev/version` annotation (the
/// label of a canary an older rampart made).
pub fn canary_version(d: &Deployment) -> Option<String> {
    let m = &d.metadata;
    m.annotations
        .as_ref()
        .and_then(|a| a.get(VERSION_LABEL))
        .or_else(|| m.labels.as_ref()?.get(VERSION_LABEL))
        .cloned()
}

/// `version` as a label value: itself when it is one (at most 63 characters,
/// alphanumeric at both ends, `-`, `_` and `.` between), else `h-` and a 64-bit hash
/// of it (a digest, a long CI tag, `1.4.2+build.7`). The full version is in the
/// annotation of the same name.
pub fn version_label(version: &str) -> String {
    let valid = version.len() <= 63
        && version.starts_with(|c: char| c.is_ascii_alphanumeric())
        && version.ends_with(|c: char| c.is_ascii_alphanumeric())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        return version.to_string();
    }
    format!("h-{:016x}", fnv1a(version))
}

/// Why `image` is no image reference a registry could serve, if it is not: its tag
/// (after the last `:` of its last path part; a digest `@sha256:...` is not one) must
/// be 1 to 128 of letters, digits, `_`, `.` and `-`, not starting with `.` or `-`. A
/// version with `+` (Git's `TAG+REVISION`, semver build metadata) makes no tag.
pub fn image_problem(image: &str) -> Option<String> {
    let last = image.rsplit('/').next().unwrap_or(image);
    if last.contains('@') {
        return None;
    }
    let (_, tag) = last.split_once(':')?;
    let ok = (1..=128).contains(&tag.len())
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        && !tag.starts_with(['.', '-']);
    (!ok).then(|| {
        format!("its tag `{tag}` is none a registry takes (letters, digits, `_`, `.` and `-`, at most 128)")
    })
}

/// FNV-1a of `text`: stable across Rust versions and platforms, unlike the std hasher.
pub(crate) fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The name of `http_route`'s canary Service: `<service>-canary`, or, when that is over
/// the 63 characters a Service name may have (a Helm `fullname` is often exactly 63),
/// the service's first 46 characters, `-`, 8 hex digits of a hash of the whole name,
/// and `-canary`.
pub fn canary_service_name(service: &str) -> String {
    let plain = format!("{service}-canary");
    if plain.len() <= 63 {
        return plain;
    }
    let prefix: String = service.chars().take(46).collect();
    format!(
        "{}-{:08x}-canary",
        prefix.trim_end_matches('-'),
        fnv1a(service) as u32
    )
}

/// Checks that an existing Service named like `http_route`'s canary Service is
/// rampart's own, created for `service` (its [`DERIVED_FROM`] annotation names it, or,
/// made by a rampart before that annotation, it has no such annotation and carries
/// `rampart.dev/track: canary`): a `checkout-canary` another tool (Flagger, Argo
/// Rollouts) or a team made is not rampart's to take over.
pub fn check_canary_service(existing: &Service, service: &str) -> Result<(), Error> {
    let from = existing
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(DERIVED_FROM));
    if from.map(String::as_str) == Some(service) {
        return Ok(());
    }
    // One a rampart before this mark created: labelled with the canary track only.
    let labelled = existing
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.get(TRACK_LABEL).map(String::as_str) == Some("canary"));
    if from.is_none() && labelled {
        return Ok(());
    }
    Err(Error::Shape(format!(
        "Service `{}` exists but rampart did not create it for Service `{service}` (its `{DERIVED_FROM}` annotation is {}): it is not rampart's to take over; remove or rename it",
        existing.metadata.name.as_deref().unwrap_or("?"),
        from.map_or("missing".to_string(), |f| format!("`{f}`"))
    )))
}

/// The canary Deployment for `version`, derived from `stable`: the same spec with the
/// container's image replaced, `rampart.dev/track: canary` in its labels, selector
/// and pod template, and `rampart.dev/version` on the Deployment and its pods, as a
/// label ([`version_label`]) and an annotation (the version itself).
///
/// The version stays out of the selector: a selector cannot change, and a leftover
/// canary of another version must still be updatable in place.
pub fn canary(
    stable: &Deployment,
    spec: &KubeDeploySpec,
    version: &str,
    replicas: i32,
    stable_replicas: Option<i32>,
) -> Result<Value, Error> {
    let mut d = stable
        .spec
        .clone()
        .ok_or_else(|| Error::Shape(format!("Deployment `{}` has no spec", spec.deployment)))?;
    d.replicas = Some(replicas);
    // A stable kept paused (GitOps releases) must not pass that on: a paused canary
    // would never start its pods.
    d.paused = None;
    d.selector.match_labels = Some(track_labels(stable, "canary"));
    let template_meta = d.template.metadata.get_or_insert_with(Default::default);
    let labels = template_meta.labels.get_or_insert_with(Default::default);
    labels.insert(TRACK_LABEL.into(), "canary".into());
    labels.insert(VERSION_LABEL.into(), version_label(version));
    template_meta
        .annotations
        .get_or_insert_with(Default::default)
        .insert(VERSION_LABEL.into(), version.into());
    let image = spec.image_of(version);
    let container = d
        .template
        .spec
        .as_mut()
        .and_then(|p| p.containers.iter_mut().find(|c| c.name == spec.container))
        .ok_or_else(|| {
            Error::Shape(format!(
                "Deployment `{}` has no container `{}`",
                spec.deployment, spec.container
            ))
        })?;
    container.image = Some(image);
    let mut labels = canary_labels(stable);
    labels.insert(VERSION_LABEL.into(), version_label(version));
    let mut annotations = BTreeMap::from([
        (DERIVED_FROM.to_string(), spec.deployment.clone()),
        (VERSION_LABEL.to_string(), version.to_string()),
    ]);
    if let Some(n) = stable_replicas {
        annotations.insert(STABLE_REPLICAS.into(), n.to_string());
    }
    Ok(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": spec.canary_name,
            "namespace": spec.namespace,
            "labels": labels,
            "annotations": annotations,
        },
        "spec": d,
    }))
}

/// Labels of the stable Deployment (not its pods) the canary Deployment carries too.
const KEPT_LABELS: &[&str] = &[
    "app",
    "app.kubernetes.io/name",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
];

/// The canary Deployment's own labels: its selector's (stable's, with the canary
/// track) and the few of the stable Deployment's that name the application
/// ([`KEPT_LABELS`]), never a GitOps tool's tracking label ([`is_tool_owned`]): the
/// canary is not in git, and Argo CD prunes what carries its label but is not.
/// `app.kubernetes.io/managed-by` says who does manage it. The pod template keeps
/// every label of the stable's pods: Services, policies and monitors select by them.
pub fn canary_labels(stable: &Deployment) -> BTreeMap<String, String> {
    let own = stable
        .metadata
        .labels
        .iter()
        .flatten()
        .filter(|(k, _)| KEPT_LABELS.contains(&k.as_str()));
    let mut labels: BTreeMap<String, String> = track_labels(stable, "canary")
        .into_iter()
        .chain(own.map(|(k, v)| (k.clone(), v.clone())))
        .filter(|(k, _)| !is_tool_owned(k))
        .collect();
    labels.insert("app.kubernetes.io/managed-by".into(), "rampart".into());
    labels
}

/// The fields rampart applies to the stable Deployment: the container's image, and
/// nothing else, so the rest of the object stays the owner's. Replica counts go
/// through the scale subresource (see `Kubernetes::scale_deployment`).
///
/// `keep_replicas` is for a Deployment whose `spec.replicas` an earlier rampart
/// applied (see [`applies_replicas`]): leaving the field out would remove it, so the
/// live count is applied again.
pub fn stable_patch(spec: &KubeDeploySpec, image: &str, keep_replicas: Option<i32>) -> Value {
    let mut body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": spec.deployment, "namespace": spec.namespace },
        "spec": {
            "template": { "spec": { "containers": [ { "name": spec.container, "image": image } ] } }
        }
    });
    if let (Some(r), Some(s)) = (keep_replicas, body.get_mut("spec")) {
        s["replicas"] = json!(r);
    }
    body
}

/// Whether rampart's server-side apply owns `d`'s `spec.replicas` (an earlier rampart
/// applied it), read from `metadata.managedFields`.
pub fn applies_replicas(d: &Deployment) -> bool {
    d.metadata.managed_fields.iter().flatten().any(|m| {
        m.manager.as_deref() == Some(crate::FIELD_MANAGER)
            && m.operation.as_deref() == Some("Apply")
            && m.subresource.as_deref().unwrap_or("").is_empty()
            && m.fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .and_then(|s| s.get("f:replicas"))
                .is_some()
    })
}

/// The canary's whole body as stored, with `replicas` changed: rampart owns every
/// field of the canary, so it re-applies all of them.
pub fn rescaled(canary: &Deployment, replicas: i32) -> Value {
    let mut spec = canary.spec.clone().unwrap_or_default();
    spec.replicas = Some(replicas);
    // Only rampart's own annotations: the others (the revision) are the controller's.
    let annotations: BTreeMap<&str, &String> = canary
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| is_rampart_own(k))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": canary.metadata.name,
            "namespace": canary.metadata.namespace,
            "labels": canary.metadata.labels,
            "annotations": annotations,
        },
        "spec": spec,
    })
}

/// A Deployment's `spec.replicas` (1 when unset, as the API server defaults it).
pub fn replicas(d: &Deployment) -> i32 {
    d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

/// The stable's replica count when the release began, as the canary keeps it (grown
/// by what an HPA added between steps).
pub fn start_replicas(canary: &Deployment) -> Option<i32> {
    count_in(canary, STABLE_REPLICAS).filter(|n| *n > 0)
}

/// The stable's count the last `replica_ratio` step set, as the canary keeps it.
pub fn stable_set(canary: &Deployment) -> Option<i32> {
    count_in(canary, STABLE_SET)
}

fn count_in(canary: &Deployment, annotation: &str) -> Option<i32> {
    canary
        .metadata
        .annotations
        .as_ref()?
        .get(annotation)?
        .parse()
        .ok()
}

/// `replica_ratio`'s (canary, stable) replicas for `weight`. `start` is the stable's
/// count when the release began, `grid` the policy's `replicas` (steps are multiples
/// of `100 / grid` %), `hpa` the bounds of an HPA that scales the stable.
///
/// At 0 % the stable gets `start` back and at 100 % the canary has `start`. In
/// between, the total is `start` rounded up to a multiple of `grid`, so the split is
/// exact and capacity never drops below what the stable had. An HPA puts a stable
/// below its `minReplicas` back up (and would change the weight), so the total grows
/// by `grid` until the stable's share reaches it; an HPA leaves a Deployment scaled to
/// 0 alone.
pub fn ratio_split(grid: u32, start: u32, weight: Weight, hpa: Option<(u32, u32)>) -> (u32, u32) {
    let start = start.max(1);
    let (min, max) = hpa.unwrap_or((0, u32::MAX));
    if weight == Weight::ZERO {
        return (0, start.clamp(min.max(1), max.max(1)));
    }
    if weight == Weight::FULL {
        return (start, 0);
    }
    let grid = grid.max(1);
    let split = |total: u32| {
        let c = canary_replicas(total, weight);
        (c, total - c)
    };
    let mut total = start.div_ceil(grid).saturating_mul(grid);
    while split(total).1 < min && total < u32::MAX / 2 {
        total += grid;
    }
    while split(total).1 > max && total > grid && split(total - grid).1 >= min {
        total -= grid;
    }
    split(total)
}

/// The pod template annotation that marks a canary's first pods.
pub const FIRST_PODS: &str = "rampart.dev/first-pods";

/// Marks a canary body's pod template for its first pods (a `replica_ratio` canary
/// created with 0 replicas, at its first step). The Deployment controller checks
/// `progressDeadlineSeconds` only on a rollout of a new template, never on a mere
/// scale of a complete Deployment, and one of 0 replicas is complete at once: without
/// a new template, pods that never get ready would hold the step for the whole
/// `ready_timeout` instead of failing at the deadline. No pod exists yet, so the new
/// template replaces nothing.
pub fn start_pods(body: &mut Value) {
    let meta = &mut body["spec"]["template"]["metadata"];
    if !meta["annotations"].is_object() {
        meta["annotations"] = json!({});
    }
    meta["annotations"][FIRST_PODS] = json!("true");
}

/// Whether a canary's pod template carries [`FIRST_PODS`] (its first pods were
/// started by [`start_pods`]).
pub fn first_pods_started(canary: &Deployment) -> bool {
    canary
        .spec
        .as_ref()
        .and_then(|s| s.template.metadata.as_ref())
        .and_then(|m| m.annotations.as_ref())
        .is_some_and(|a| a.contains_key(FIRST_PODS))
}

/// Replicas of the canary for `weight` out of `total`: rounded, and at least one when
/// the weight is above 0.
pub fn canary_replicas(total: u32, weight: Weight) -> u32 {
    let bp = u64::from(weight.basis_points());
    if bp == 0 {
        return 0;
    }
    let c = (u64::from(total) * bp + 5_000) / 10_000;
    u32::try_from(c.clamp(1, u64::from(total))).unwrap_or(total)
}

/// The weight `canary` of `canary + stable` replicas makes.
pub fn replica_weight(canary: i32, stable: i32) -> Result<Weight, Error> {
    let (c, s) = (
        u64::try_from(canary).unwrap_or(0),
        u64::try_from(stable).unwrap_or(0),
    );
    if c + s == 0 {
        return Err(Error::Weight("neither Deployment has replicas".into()));
    }
    ratio(c, c + s)
}

fn ratio(part: u64, whole: u64) -> Result<Weight, Error> {
    let bp = (part * 10_000 + whole / 2) / whole;
    u16::try_from(bp)
        .ok()
        .and_then(Weight::from_basis_points)
        .ok_or_else(|| Error::Weight(format!("{part} of {whole} is not a weight")))
}

/// The Service's selector, as rampart applies it.
pub fn selector_patch(name: &str, namespace: &str, labels: &BTreeMap<String, String>) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": name, "namespace": namespace },
        "spec": { "selector": labels },
    })
}

/// Which track a Service selects: 100 % for the canary's labels, 0 % for stable's.
pub fn selector_weight(
    svc: &Service,
    stable: &BTreeMap<String, String>,
    canary: &BTreeMap<String, String>,
) -> Result<Weight, Error> {
    let selector = svc
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    let selects =
        |want: &BTreeMap<String, String>| want.iter().all(|(k, v)| selector.get(k) == Some(v));
    match (selects(canary), selects(stable)) {
        (true, false) => Ok(Weight::FULL),
        (false, true) => Ok(Weight::ZERO),
        _ => Err(Error::Weight(format!(
            "Service `{}` selects {selector:?}, which is neither the stable nor the canary pods",
            svc.metadata.name.as_deref().unwrap_or("?")
        ))),
    }
}

/// The canary Service for the `http_route` mode: the stable Service's ports,
/// selecting the canary's pods, marked as rampart's (derived from the stable Service).
pub fn canary_service(
    stable: &Service,
    name: &str,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> Value {
    let ports: Vec<Value> = stable
        .spec
        .as_ref()
        .and_then(|s| s.ports.clone())
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let mut port = json!({ "port": p.port });
            for (key, value) in [
                ("name", p.name.map(Value::from)),
                ("protocol", p.protocol.map(Value::from)),
                ("appProtocol", p.app_protocol.map(Value::from)),
                (
                    "targetPort",
                    p.target_port.and_then(|t| serde_json::to_value(t).ok()),
                ),
            ] {
                if let Some(v) = value {
                    port[key] = v;
                }
            }
            port
        })
        .collect();
    // Gateways read a backend's protocol from Service annotations too (h2c, gRPC,
    // TLS to the backend); the canary share must reach the pods the same way.
    let mut annotations: BTreeMap<String, String> = stable
        .metadata
        .annotations
        .iter()
        .flatten()
        .filter(|(k, _)| !is_tool_owned(k) && k.as_str() != DERIVED_FROM)
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    annotations.insert(
        DERIVED_FROM.to_string(),
        stable.metadata.name.clone().unwrap_or_default(),
    );
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": { TRACK_LABEL: "canary" },
            "annotations": annotations,
        },
        "spec": { "selector": labels, "ports": ports },
    })
}

/// Labels and annotations that belong to the tool that applied an object, not to the
/// object: copied onto rampart's canary they would make a GitOps tool adopt it (and
/// prune it, as Argo CD does with its tracking label or annotation) or a client think
/// it applied it.
pub fn is_tool_owned(key: &str) -> bool {
    const KEYS: &[&str] = &[
        "app.kubernetes.io/instance",
        "app.kubernetes.io/managed-by",
        "kubectl.kubernetes.io/last-applied-configuration",
    ];
    const PREFIXES: &[&str] = &[
        "argocd.argoproj.io/",
        "kustomize.toolkit.fluxcd.io/",
        "helm.toolkit.fluxcd.io/",
        "meta.helm.sh/",
    ];
    KEYS.contains(&key) || PREFIXES.iter().any(|p| key.starts_with(p))
}

/// The list at `section.field` of a route (`spec.rules`, `status.parents`).
fn list_in(route: &DynamicObject, section: &str, field: &str) -> Vec<Value> {
    route
        .data
        .get(section)
        .and_then(|s| s.get(field))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn rules(route: &DynamicObject) -> Vec<Value> {
    list_in(route, "spec", "rules")
}

fn refs(rule: &Value) -> Vec<Value> {
    rule.get("backendRefs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn names(r: &Value, service: &str) -> bool {
    r.get("name").and_then(Value::as_str) == Some(service)
        && r.get("kind")
            .and_then(Value::as_str)
            .is_none_or(|k| k == "Service")
}

/// The Gateway API's largest backendRef weight.
const MAX_REF_WEIGHT: u64 = 1_000_000;

/// A backendRef's weight (Gateway API's default is 1).
fn ref_weight(r: &Value) -> u64 {
    r.get("weight").and_then(Value::as_u64).unwrap_or(1)
}

/// The weights of a rule's stable and canary backendRefs for `bp` basis points, and
/// the factor the rule's other backendRefs' weights are multiplied by; `None` when the
/// rule gives the stable (and the canary) no weight at all (nothing to share). The
/// canary's share comes out of the stable's alone: alone in its rule, the two weigh
/// `10000 - bp` and `bp`; beside other backends (a split the team runs), the two share
/// what the stable had, every weight of the rule scaled by one factor (shares
/// unchanged) whenever the two hold less than 10,000, so basis points have room, and
/// every other backend keeps its share.
fn group_weights(
    refs: &[Value],
    service: &str,
    canary_service: &str,
    bp: u64,
) -> Option<(u64, u64, u64)> {
    let others: Vec<u64> = refs
        .iter()
        .filter(|r| !names(r, service) && !names(r, canary_service))
        .map(ref_weight)
        .collect();
    let split = |group: u64| {
        let c = (u128::from(group) * u128::from(bp) / 10_000) as u64;
        (group - c, c)
    };
    if others.is_empty() {
        let (s, c) = split(10_000);
        return Some((s, c, 1));
    }
    let group = weight_to(refs, service).saturating_add(weight_to(refs, canary_service));
    if group == 0 {
        return None;
    }
    let largest = others.iter().copied().max().unwrap_or(0).max(group);
    let factor = if group >= 10_000 {
        1
    } else {
        10_000u64
            .div_ceil(group)
            .min(MAX_REF_WEIGHT / largest)
            .max(1)
    };
    let (s, c) = split(group.saturating_mul(factor));
    Some((s, c, factor))
}

/// The HTTPRoute body that weighs `service` against `canary_service` at `weight` in
/// every rule that sends to `service`. The whole `spec.rules` list is applied (it is
/// one atomic field); each stable backendRef is kept as it was (port, namespace,
/// filters) and copied for the canary. Other backends in such a rule keep their share
/// of its traffic (see [`group_weights`]).
pub fn weighted_route(
    route: &DynamicObject,
    service: &str,
    canary_service: &str,
    weight: Weight,
) -> Result<Value, Error> {
    let bp = u64::from(weight.basis_points());
    let mut touched = 0;
    let rules: Vec<Value> = rules(route)
        .into_iter()
        .map(|mut rule| {
            let refs = refs(&rule);
            let Some(stable) = refs.iter().find(|r| names(r, service)).cloned() else {
                return rule;
            };
            // A rule that gives the stable no weight has no share to split: as it is.
            let Some((s, c, factor)) = group_weights(&refs, service, canary_service, bp) else {
                return rule;
            };
            touched += 1;
            let mut stable_ref = stable.clone();
            stable_ref["weight"] = json!(s);
            let mut canary_ref = stable;
            canary_ref["name"] = json!(canary_service);
            canary_ref["weight"] = json!(c);
            let mut kept: Vec<Value> = refs
                .into_iter()
                .filter(|r| !names(r, service) && !names(r, canary_service))
                .map(|mut r| {
                    if factor > 1 {
                        r["weight"] = json!(ref_weight(&r).saturating_mul(factor));
                    }
                    r
                })
                .collect();
            kept.splice(0..0, [stable_ref, canary_ref]);
            rule["backendRefs"] = Value::Array(kept);
            rule
        })
        .collect();
    let name = route.metadata.name.clone().unwrap_or_default();
    if touched == 0 {
        return Err(Error::Shape(format!(
            "HTTPRoute `{name}` has no rule with a backendRef to Service `{service}`"
        )));
    }
    Ok(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": { "name": name, "namespace": route.metadata.namespace },
        "spec": { "rules": rules },
    }))
}

/// Whether the Gateways an HTTPRoute names have taken its current spec: for every
/// `spec.parentRefs` entry, the `status.parents` entries for it have observed the
/// route's generation with `Accepted` and `ResolvedRefs` true. A route a Gateway
/// refused, or whose backends it cannot resolve, routes nothing by these weights.
pub fn route_readiness(route: &DynamicObject) -> Readiness {
    let generation = route.metadata.generation.unwrap_or(0);
    let parents = list_in(route, "status", "parents");
    let wanted = list_in(route, "spec", "parentRefs");
    if wanted.is_empty() {
        return Readiness::Failed("it has no `parentRefs`, so no Gateway routes by it".into());
    }
    let same = |a: &Value, b: &Value, key: &str| a.get(key).is_none() || a.get(key) == b.get(key);
    for parent in &wanted {
        let name = parent.get("name").and_then(Value::as_str).unwrap_or("?");
        let reports: Vec<&Value> = parents
            .iter()
            .filter(|p| {
                let r = p.get("parentRef").unwrap_or(&Value::Null);
                r.get("name") == parent.get("name")
                    && ["namespace", "sectionName", "port"]
                        .iter()
                        .all(|k| same(parent, r, k))
            })
            .collect();
        if reports.is_empty() {
            return Readiness::Waiting(format!(
                "no Gateway controller has reported on parent `{name}` yet"
            ));
        }
        for report in reports {
            let conditions = report
                .get("conditions")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for type_ in ["Accepted", "ResolvedRefs"] {
                let Some(c) = conditions.iter().find(|c| c["type"] == type_) else {
                    return Readiness::Waiting(format!(
                        "parent `{name}` reports no `{type_}` condition yet"
                    ));
                };
                let observed = c["observedGeneration"].as_i64().unwrap_or(0);
                if observed < generation {
                    return Readiness::Waiting(format!(
                        "parent `{name}` has not observed generation {generation} yet (at {observed})"
                    ));
                }
                // A Gateway resolves Services through its own caches, which may not
                // have the canary's Service created a moment ago: a backend not found
                // is waited for (until the change's timeout), anything else fails.
                if c["status"] != "True" && c["reason"] == "BackendNotFound" {
                    return Readiness::Waiting(format!(
                        "parent `{name}` does not resolve a backend yet (BackendNotFound): {}",
                        c["message"].as_str().unwrap_or("")
                    ));
                }
                if c["status"] != "True" {
                    return Readiness::Failed(format!(
                        "parent `{name}` reports {type_}={} ({}): {}",
                        c["status"].as_str().unwrap_or("?"),
                        c["reason"].as_str().unwrap_or(""),
                        c["message"].as_str().unwrap_or("")
                    ));
                }
            }
        }
    }
    Readiness::Ready
}

/// The weight a rule's backendRefs give Service `service` (each 1 when unset).
fn weight_to(refs: &[Value], service: &str) -> u64 {
    refs.iter()
        .filter(|r| names(r, service))
        .map(ref_weight)
        .sum()
}

/// Whether any rule of `route` has a backendRef to Service `service`.
pub fn route_sends_to(route: &DynamicObject, service: &str) -> bool {
    rules(route)
        .iter()
        .any(|rule| refs(rule).iter().any(|r| names(r, service)))
}

/// The canary's share in the first rule that sends to `service`, read from the
/// route's weights.
pub fn route_weight(
    route: &DynamicObject,
    service: &str,
    canary_service: &str,
) -> Result<Weight, Error> {
    let name = route.metadata.name.as_deref().unwrap_or("?");
    let sending: Vec<Vec<Value>> = rules(route)
        .into_iter()
        .map(|r| refs(&r))
        .filter(|refs| refs.iter().any(|r| names(r, service)))
        .collect();
    if sending.is_empty() {
        return Err(Error::Shape(format!(
            "HTTPRoute `{name}` has no rule with a backendRef to Service `{service}`"
        )));
    }
    // The first rule that gives the two any weight (one that gives the stable none
    // is left as it is, see `weighted_route`).
    let (s, c) = sending
        .iter()
        .map(|rule| (weight_to(rule, service), weight_to(rule, canary_service)))
        .find(|(s, c)| s + c > 0)
        .ok_or_else(|| {
            Error::Weight(format!(
                "HTTPRoute `{name}` gives both Services weight 0 in every rule"
            ))
        })?;
    ratio(c, s + c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Gateway that has not yet seen the canary's Service (its caches lag the Service
    /// created a moment ago) says BackendNotFound: waited for. A reference it refuses
    /// fails at once.
    #[test]
    fn a_backend_not_found_yet_is_waited_for_and_a_refused_one_fails() {
        let route = |reason: &str| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "r", "namespace": "ns", "generation": 2},
                "spec": {"parentRefs": [{"name": "public"}], "rules": []},
                "status": {"parents": [{"parentRef": {"name": "public"}, "conditions": [
                    {"type": "Accepted", "status": "True", "reason": "Accepted", "observedGeneration": 2},
                    {"type": "ResolvedRefs", "status": "False", "reason": reason,
                     "message": "Service app-canary", "observedGeneration": 2}
                ]}]}
            }))
            .unwrap()
        };
        assert!(matches!(
            route_readiness(&route("BackendNotFound")),
            Readiness::Waiting(_)
        ));
        assert!(matches!(
            route_readiness(&route("RefNotPermitted")),
            Readiness::Failed(_)
        ));
    }

    #[test]
    fn an_image_whose_tag_no_registry_takes_is_named() {
        for fine in [
            "registry.example.com/checkout:v2",
            "registry.example.com:5000/team/checkout:1.4.2-rc.1_b7",
            "checkout",
            "registry.example.com/checkout@sha256:0123abcd",
        ] {
            assert_eq!(image_problem(fine), None, "{fine}");
        }
        for wrong in [
            "registry.example.com/checkout:v1+80cb43b8e9",
            "registry.example.com/checkout:.hidden",
            &format!("checkout:{}", "a".repeat(129)),
        ] {
            assert!(image_problem(wrong).is_some(), "{wrong}");
        }
    }

    #[test]
    fn a_canary_service_name_fits_a_service_name() {
        assert_eq!(canary_service_name("checkout"), "checkout-canary");
        let long = format!("checkout-{}", "x".repeat(54));
        let name = canary_service_name(&long);
        assert!(name.len() <= 63 && name.ends_with("-canary"), "{name}");
        let other = canary_service_name(&format!("checkout-{}y", "x".repeat(53)));
        assert_ne!(
            name, other,
            "names that share their first characters stay apart"
        );
    }

    #[test]
    fn only_rampart_s_canary_service_is_rampart_s() {
        let svc = |labels: Value, annotations: Value| -> Service {
            serde_json::from_value(json!({"metadata": {
                "name": "checkout-canary", "labels": labels, "annotations": annotations}}))
            .unwrap()
        };
        let ours = svc(json!({}), json!({DERIVED_FROM: "checkout"}));
        assert!(check_canary_service(&ours, "checkout").is_ok());
        // Made by a rampart before the annotation: the canary track label only.
        let older = svc(json!({TRACK_LABEL: "canary"}), json!({}));
        assert!(check_canary_service(&older, "checkout").is_ok());
        let flaggers = svc(json!({"app": "checkout"}), json!({}));
        let err = check_canary_service(&flaggers, "checkout").unwrap_err();
        assert!(err.to_string().contains("not rampart's"), "{err}");
        let another = svc(
            json!({TRACK_LABEL: "canary"}),
            json!({DERIVED_FROM: "cart"}),
        );
        assert!(check_canary_service(&another, "checkout").is_err());
    }

    /// A rule that splits the stable with another backend keeps that backend's share
    /// at every step and after the canary leaves; the canary's share is out of the
    /// stable's alone.
    #[test]
    fn a_rule_shared_with_another_backend_keeps_its_share() {
        let route = |refs: Value| -> DynamicObject {
            serde_json::from_value(json!({
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
                "metadata": {"name": "r", "namespace": "ns"},
                "spec": {"rules": [{"backendRefs": refs}]}
            }))
            .unwrap()
        };
        let shares = |body: &Value| -> Vec<(String, f64)> {
            let refs = body["spec"]["rules"][0]["backendRefs"]
                .as_array()
                .unwrap()
                .clone();
            let total: f64 = refs.iter().map(|r| ref_weight(r) as f64).sum();
            refs.iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap().to_string(),
                        ref_weight(r) as f64 / total,
                    )
                })
                .collect()
        };
        // Unset weights (1 each): half to `next`.
        let mut current = route(json!([{"name": "app", "port": 80}, {"name": "next", "port": 80}]));
        for (bp, canary) in [(1_000, 0.05), (5_000, 0.25), (10_000, 0.5), (0, 0.0)] {
            let body = weighted_route(
                &current,
                "app",
                "app-canary",
                Weight::from_basis_points(bp).unwrap(),
            )
            .unwrap();
            let got = shares(&body);
            let of = |n: &str| {
                got.iter()
                    .find(|(name, _)| name == n)
                    .map_or(0.0, |(_, s)| *s)
            };
            assert!((of("next") - 0.5).abs() < 1e-9, "{bp}: {got:?}");
            assert!((of("app-canary") - canary).abs() < 1e-9, "{bp}: {got:?}");
            assert!(
                body["spec"]["rules"][0]["backendRefs"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|r| ref_weight(r) <= MAX_REF_WEIGHT)
            );
            current.data["spec"] = body["spec"].clone();
        }
        // A canary ref left at 0 by an earlier release, weights the team set small
        // since: scaled again, so 1 % is a share, not 0.
        let left = route(json!([
            {"name": "app", "port": 80, "weight": 50},
            {"name": "app-canary", "port": 80, "weight": 0},
            {"name": "next", "port": 80, "weight": 50}
        ]));
        let body = weighted_route(
            &left,
            "app",
            "app-canary",
            Weight::from_basis_points(100).unwrap(),
        )
        .unwrap();
        let got = shares(&body);
        let of = |n: &str| {
            got.iter()
                .find(|(name, _)| name == n)
                .map_or(0.0, |(_, s)| *s)
        };
        assert!((of("app-canary") - 0.005).abs() < 1e-9, "{got:?}");
        assert!((of("next") - 0.5).abs() < 1e-9, "{got:?}");
        // A rule that gives the stable nothing is left as it is.
        let none = route(json!([
            {"name": "app", "port": 80, "weight": 0},
            {"name": "next", "port": 80, "weight": 1}
        ]));
        let kept = none.data["spec"]["rules"].clone();
        let body = weighted_route(
            &none,
            "app",
            "app-canary",
            Weight::from_basis_points(100).unwrap(),
        );
        assert!(body.is_err() || body.unwrap()["spec"]["rules"] == kept);
        // Alone in its rule, the stable and the canary weigh in basis points, as before.
        let alone = route(json!([{"name": "app", "port": 80}]));
        let body = weighted_route(
            &alone,
            "app",
            "app-canary",
            Weight::from_basis_points(1_000).unwrap(),
        )
        .unwrap();
        assert_eq!(body["spec"]["rules"][0]["backendRefs"][0]["weight"], 9_000);
        assert_eq!(body["spec"]["rules"][0]["backendRefs"][1]["weight"], 1_000);
    }

    #[test]
    fn canary_replicas_round_and_keep_one_above_zero() {
        let w = |p| Weight::from_percent(p).unwrap();
        assert_eq!(canary_replicas(4, w(0)), 0);
        assert_eq!(canary_replicas(4, w(5)), 1);
        assert_eq!(canary_replicas(4, w(50)), 2);
        assert_eq!(canary_replicas(10, w(25)), 3);
        assert_eq!(canary_replicas(4, w(100)), 4);
        assert_eq!(replica_weight(1, 3).unwrap(), w(25));
    }

    #[test]
    fn a_version_that_is_no_label_value_is_hashed() {
        assert_eq!(version_label("v1.4.2"), "v1.4.2");
        let digest = format!("sha256:{}", "ab".repeat(32));
        let label = version_label(&digest);
        assert_eq!(label.len(), 18);
        assert!(label.starts_with("h-"), "{label}");
        assert_eq!(
            label,
            version_label(&digest),
            "the same version, the same label"
        );
        assert_ne!(label, version_label("1.4.2+build.7"));
        assert_eq!(version_label(&"7".repeat(64)).len(), 18, "too long");
    }

    #[test]
    fn ratio_split_keeps_the_stables_capacity_and_an_hpas_minimum() {
        let w = |p| Weight::from_percent(p).unwrap();
        // The policy's 4 replicas are the grid; a stable of 10 keeps its capacity.
        assert_eq!(ratio_split(4, 10, w(25), None), (3, 9));
        assert_eq!(ratio_split(4, 10, w(50), None), (6, 6));
        assert_eq!(ratio_split(4, 10, w(100), None), (10, 0));
        assert_eq!(ratio_split(4, 10, w(0), None), (0, 10));
        assert_eq!(ratio_split(4, 4, w(25), None), (1, 3));
        // An HPA with minReplicas 3: the canary grows rather than the stable shrink.
        assert_eq!(ratio_split(4, 4, w(50), Some((3, 10))), (4, 4));
        assert_eq!(ratio_split(4, 4, w(75), Some((3, 10))), (9, 3));
        assert_eq!(ratio_split(4, 2, w(0), Some((3, 10))), (0, 3));
        assert_eq!(ratio_split(4, 4, w(100), Some((3, 10))), (4, 0));
    }
}
