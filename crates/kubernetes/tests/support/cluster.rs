//! A FAKE cluster: an in-memory object store behind the same mock transport, for whole
//! releases driven by the real controller. No API server runs.
//!
//! Owns a small model of what an API server, the Deployment controller, an HPA and a
//! Gateway do with the objects rampart touches:
//! - server-side apply with field ownership: each manager owns the fields it set; an
//!   apply takes the fields of its body (`force`: from anyone), and a field its
//!   manager applied before, left out now and owned by nobody else, is **removed**
//!   (then defaulted: a Deployment without `spec.replicas` has 1); lists merge by
//!   their keys (containers by name, Service ports by port and protocol), other lists
//!   are replaced whole; a forced apply never conflicts;
//! - merge patches (the scale subresource), owned by their manager as an update;
//! - paused Deployments: a new template makes no new pods until unpaused (the pods
//!   run the template of the last rollout, `World::running`), a scale still applies;
//! - rollouts that take time (virtual time, `World::rollout`), and broken pods: a new
//!   template then fails with `ProgressDeadlineExceeded`, a mere scale waits forever,
//!   as the Deployment controller does;
//! - an HPA that puts its target back within its bounds after each write;
//! - a Gateway that writes an HTTPRoute's `status.parents` a moment after each change:
//!   accepted, refused, or missing backends;
//! - label values validated as the API server does (422);
//! - `metadata.resourceVersion`, new at each write; an apply that states one that is
//!   no longer current is refused (409), as the API server does with a precondition;
//! - namespaces the controller may not list (403);
//! - every request recorded as RBAC sees it, and two ways to play the world around a
//!   controller: a write performed but never answered (the controller died before it
//!   heard back), and someone else's edit after a given write.
//!
//! It must not be mistaken for Kubernetes: no other admission, no garbage collection,
//! no pods; `fake_api.rs` pins the exact requests instead.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Map, Value, json};
use tokio::time::Instant;

/// A field's path: member names, and `k:{...}` for an item of a keyed list.
pub type Field = Vec<String>;

/// What the fake Gateway makes of an HTTPRoute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gateway {
    /// Accepts the route; `ResolvedRefs` is false while a backend Service is missing.
    Accepts,
    /// Refuses it (`Accepted: False`, `NotAllowedByListeners`).
    Refuses,
    /// No Gateway controller: nobody writes the route's status.
    Absent,
}

#[derive(Clone, Copy, Debug)]
struct Rollout {
    done_at: Instant,
    /// A new template (a new ReplicaSet): the progress deadline applies. A scale of a
    /// completed Deployment alone does not get one.
    deadline: bool,
}

/// What the fake cluster holds, by API path, and every write it took.
#[derive(Debug)]
pub struct World {
    pub objects: BTreeMap<String, Value>,
    /// Object path -> manager -> the fields it owns.
    pub owners: BTreeMap<String, BTreeMap<String, BTreeSet<Field>>>,
    /// `METHOD path` of every write, in order.
    pub writes: Vec<String>,
    /// When each of `writes` happened (virtual time).
    pub written_at: Vec<Instant>,
    /// A write (`METHOD path`) the cluster performs but never answers, as if the
    /// controller died before it heard back.
    pub hang_after: Option<String>,
    /// Someone else's change: after the write `.0` (`METHOD path`), the value at the
    /// JSON pointer `.2` of the object at `.1` becomes `.3`, once. A `GET path` works
    /// too: the change lands between a read and the write decided on it.
    pub edit_after: Option<(String, String, String, Value)>,
    /// Git's apply of `.1` by manager `.2` to the Deployment at `.0`, once, right after
    /// a write leaves it unpaused (a GitOps sync landing during a promotion).
    pub apply_on_unpause: Option<(String, Value, String)>,
    /// Namespaces whose Deployments may not be listed (403, no Role there).
    pub forbidden: BTreeSet<String>,
    /// A mutating admission webhook that pins every Deployment's images to their
    /// digests (`shop:v1` is stored as `shop:v1@sha256:...`), as Kyverno's image
    /// verification does by default.
    pub pin_digests: bool,
    /// The last `resourceVersion` given.
    version: u64,
    /// Every request as RBAC sees it: (API group, resource, verb, object name).
    pub asked: BTreeSet<(String, String, String, String)>,
    /// `spec.replicas` of each Deployment after each write, by path.
    pub replicas: Vec<(String, i64)>,
    /// How long a Deployment's rollout takes.
    pub rollout: Duration,
    /// Deployments whose new pods never become ready.
    pub broken: BTreeSet<String>,
    /// The Gateway in front of HTTPRoutes, and how long it takes to see a change.
    pub gateway: Gateway,
    pub gateway_delay: Duration,
    rollouts: BTreeMap<String, Rollout>,
    /// The pod template each Deployment's pods run (its last rollout), by path.
    pub running: BTreeMap<String, Value>,
    /// When each HTTPRoute's current generation was written.
    routed_at: BTreeMap<String, (i64, Instant)>,
}

impl World {
    fn wrote(&mut self, what: String) {
        self.writes.push(what);
        self.written_at.push(Instant::now());
    }

    /// When the last write whose `METHOD path` is `what` happened.
    pub fn last(&self, what: &str) -> Option<Instant> {
        self.writes
            .iter()
            .zip(&self.written_at)
            .rfind(|(w, _)| *w == what)
            .map(|(_, at)| *at)
    }

    /// The image the pods of the Deployment at `path` run (its first container's).
    pub fn running_image(&self, path: &str) -> Option<String> {
        self.running
            .get(path)
            .and_then(|t| t.pointer("/spec/containers/0/image"))
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    /// Someone else (Git, through `kubectl apply` or a GitOps tool) applies `body` to
    /// the object at `path` as the field manager `manager`.
    pub fn apply_as(&mut self, path: &str, body: &Value, manager: &str) {
        self.wrote(format!("PATCH {path}"));
        apply(self, path, body, manager);
    }

    /// Someone else scales the Deployment at `path` to `replicas` through its scale
    /// subresource, as the field manager `manager` (an HPA:
    /// `horizontal-pod-autoscaler/scale`).
    pub fn scale_as(&mut self, path: &str, replicas: i64, manager: &str) {
        self.wrote(format!("PATCH {path}/scale"));
        update(
            self,
            path,
            &json!({"spec": {"replicas": replicas}}),
            manager,
        );
    }

    /// Someone deletes the object at `path`.
    pub fn delete(&mut self, path: &str) {
        self.wrote(format!("DELETE {path}"));
        self.owners.remove(path);
        self.rollouts.remove(path);
        self.running.remove(path);
        self.objects.remove(path);
    }

    /// Whether `manager` owns `field` (`.`-separated) of the object at `path`.
    pub fn owns(&self, path: &str, manager: &str, field: &str) -> bool {
        let f: Field = field.split('.').map(str::to_string).collect();
        self.owners
            .get(path)
            .and_then(|m| m.get(manager))
            .is_some_and(|fields| fields.contains(&f))
    }
}

// === fields and merging ===

/// The key of an item of the list `list`, for lists that merge by key; `None` for
/// atomic lists (replaced whole), such as an HTTPRoute's rules.
fn item_key(list: &str, item: &Value) -> Option<String> {
    let key = |names: &[&str]| {
        let mut k = Map::new();
        for n in names {
            let v = item.get(*n)?.clone();
            k.insert((*n).to_string(), v);
        }
        Some(format!("k:{}", Value::Object(k)))
    };
    let with_protocol = |port: &str| {
        let mut k = Map::new();
        k.insert(port.to_string(), item.get(port)?.clone());
        k.insert(
            "protocol".into(),
            item.get("protocol").cloned().unwrap_or(json!("TCP")),
        );
        Some(format!("k:{}", Value::Object(k)))
    };
    match list {
        "containers" | "initContainers" | "volumes" | "env" | "imagePullSecrets" => key(&["name"]),
        "volumeMounts" => key(&["mountPath"]),
        "ports" if item.get("containerPort").is_some() => with_protocol("containerPort"),
        "ports" => with_protocol("port"),
        _ => None,
    }
}

const IDENTITY: &[&str] = &[
    "name",
    "namespace",
    "generation",
    "resourceVersion",
    "uid",
    "managedFields",
    "creationTimestamp",
];

/// The fields `body` sets.
pub fn fields_of(body: &Value) -> BTreeSet<Field> {
    fn walk(v: &Value, at: &mut Field, out: &mut BTreeSet<Field>) {
        let Value::Object(map) = v else {
            out.insert(at.clone());
            return;
        };
        if map.is_empty() {
            out.insert(at.clone());
        }
        for (k, v) in map {
            if at.len() == 1 && at[0] == "metadata" && IDENTITY.contains(&k.as_str()) {
                continue;
            }
            at.push(k.clone());
            match v {
                Value::Array(items)
                    if !items.is_empty() && items.iter().all(|i| item_key(k, i).is_some()) =>
                {
                    for item in items {
                        at.push(item_key(k, item).unwrap_or_default());
                        walk(item, at, out);
                        at.pop();
                    }
                }
                _ => walk(v, at, out),
            }
            at.pop();
        }
    }
    let mut out = BTreeSet::new();
    if let Value::Object(map) = body {
        for (k, v) in map {
            if matches!(k.as_str(), "apiVersion" | "kind" | "status") {
                continue;
            }
            walk(v, &mut vec![k.clone()], &mut out);
        }
    }
    out
}

fn merge(into: &mut Value, from: &Value, name: &str) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge(existing, v, k),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b)) if b.iter().all(|i| item_key(name, i).is_some()) => {
            for item in b {
                let key = item_key(name, item);
                match a.iter_mut().find(|e| item_key(name, e) == key) {
                    Some(existing) => merge(existing, item, ""),
                    None => a.push(item.clone()),
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn remove(obj: &mut Value, field: &[String]) {
    let Some((last, head)) = field.split_last() else {
        return;
    };
    let mut at = obj;
    let mut list = "";
    for seg in head {
        let next = match at {
            Value::Object(m) => m.get_mut(seg),
            Value::Array(items) => items
                .iter_mut()
                .find(|i| item_key(list, i).as_deref() == Some(seg.as_str())),
            _ => None,
        };
        let Some(next) = next else { return };
        list = seg;
        at = next;
    }
    match at {
        Value::Object(m) => {
            m.remove(last);
        }
        Value::Array(items) => items.retain(|i| item_key(list, i).as_deref() != Some(last)),
        _ => {}
    }
}

/// `metadata.managedFields` as the API server shows it.
fn managed_fields(owners: &BTreeMap<String, BTreeSet<Field>>) -> Value {
    let entries: Vec<Value> = owners
        .iter()
        .filter(|(_, f)| !f.is_empty())
        .map(|(manager, fields)| {
            let mut tree = json!({});
            for f in fields {
                let mut at = &mut tree;
                for seg in f {
                    let key = if seg.starts_with("k:") {
                        seg.clone()
                    } else {
                        format!("f:{seg}")
                    };
                    at = at
                        .as_object_mut()
                        .expect("a fields tree")
                        .entry(key)
                        .or_insert(json!({}));
                }
            }
            let (name, operation, sub) = match manager.split_once('/') {
                Some((name, sub)) => (name, "Update", Some(sub)),
                None if manager.starts_with("rampart") || manager.starts_with("git:") => {
                    (manager.as_str(), "Apply", None)
                }
                None => (manager.as_str(), "Update", None),
            };
            let mut e = json!({"manager": name, "operation": operation,
                               "fieldsType": "FieldsV1", "fieldsV1": tree});
            if let Some(sub) = sub {
                e["subresource"] = json!(sub);
            }
            e
        })
        .collect();
    Value::Array(entries)
}

// === the controllers ===

fn is_deployment(path: &str) -> bool {
    path.contains("/deployments/")
}

/// A Deployment's status now, from its rollout.
fn deployment_status(w: &World, path: &str, obj: &Value) -> Value {
    let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
    let complete = json!({
        "observedGeneration": generation, "replicas": want, "updatedReplicas": want,
        "readyReplicas": want, "availableReplicas": want,
    });
    let pending = obj["spec"]["paused"] == json!(true)
        && w.running.get(path) != Some(&obj["spec"]["template"]);
    let complete = if pending {
        // Paused with a template not rolled out: the old pods serve, none is updated.
        json!({
            "observedGeneration": generation, "replicas": want, "updatedReplicas": 0,
            "readyReplicas": want, "availableReplicas": want,
        })
    } else {
        complete
    };
    let Some(r) = w.rollouts.get(path) else {
        return complete;
    };
    if want == 0 {
        return complete;
    }
    if Instant::now() < r.done_at {
        // A scale alone adds pods of the template the others run: updated from the
        // start, not ready yet. A new template's pods are not there yet.
        let updated = if r.deadline { 0 } else { want };
        return json!({
            "observedGeneration": generation, "replicas": want, "updatedReplicas": updated,
            "readyReplicas": 0, "availableReplicas": 0,
        });
    }
    if !w.broken.contains(path) {
        return complete;
    }
    // New pods that never become ready. A new template's old pods are kept meanwhile
    // (none of the new is available to replace them): pods of two templates. A scale
    // alone has pods of one.
    let old = if r.deadline { want } else { 0 };
    let mut stuck = json!({
        "observedGeneration": generation, "replicas": want + old, "updatedReplicas": want,
        "readyReplicas": old, "availableReplicas": old, "unavailableReplicas": want,
    });
    if r.deadline {
        stuck["conditions"] = json!([{
            "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": "ReplicaSet has timed out progressing."
        }]);
    }
    stuck
}

fn route_status(w: &World, path: &str, obj: &Value) -> Option<Value> {
    if w.gateway == Gateway::Absent {
        return None;
    }
    let generation = obj["metadata"]["generation"].as_i64().unwrap_or(1);
    let observed = match w.routed_at.get(path) {
        Some((g, at)) if Instant::now() < *at + w.gateway_delay => g - 1,
        _ => generation,
    };
    if observed < 1 {
        return None;
    }
    let ns = path.split('/').nth(5).unwrap_or("default");
    let missing: Vec<String> = obj["spec"]["rules"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|r| r["backendRefs"].as_array().cloned().unwrap_or_default())
        .filter_map(|b| b["name"].as_str().map(str::to_string))
        .filter(|name| {
            !w.objects
                .contains_key(&format!("/api/v1/namespaces/{ns}/services/{name}"))
        })
        .collect();
    let condition = |type_: &str, ok: bool, reason: &str, message: String| {
        json!({"type": type_, "status": if ok { "True" } else { "False" }, "reason": reason,
               "message": message, "observedGeneration": observed})
    };
    let accepted = w.gateway == Gateway::Accepts;
    let parents: Vec<Value> = obj["spec"]["parentRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|parent| {
            json!({
                "parentRef": parent,
                "controllerName": "example.com/gateway",
                "conditions": [
                    if accepted {
                        condition("Accepted", true, "Accepted", "Route is accepted".into())
                    } else {
                        condition("Accepted", false, "NotAllowedByListeners",
                                  "no listener of the Gateway allows this route".into())
                    },
                    if missing.is_empty() {
                        condition("ResolvedRefs", true, "ResolvedRefs", "resolved".into())
                    } else {
                        condition("ResolvedRefs", false, "BackendNotFound",
                                  format!("Service {} not found", missing.join(", ")))
                    },
                ]
            })
        })
        .collect();
    Some(json!({ "parents": parents }))
}

/// The object as a GET shows it now.
fn shown(w: &World, path: &str) -> Option<Value> {
    let mut obj = w.objects.get(path)?.clone();
    if is_deployment(path) {
        obj["status"] = deployment_status(w, path, &obj);
    }
    if path.contains("/httproutes/") {
        match route_status(w, path, &obj) {
            Some(s) => obj["status"] = s,
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    if let Some(owners) = w.owners.get(path) {
        obj["metadata"]["managedFields"] = managed_fields(owners);
    }
    Some(obj)
}

/// After a write to `path`: an HPA that targets it puts its replicas back within its
/// bounds (it leaves a Deployment scaled to 0 alone, as Kubernetes' HPA does).
fn autoscale(w: &mut World, path: &str) {
    let Some(name) = path.rsplit('/').next().map(str::to_string) else {
        return;
    };
    let bounds = w
        .objects
        .iter()
        .filter(|(p, _)| p.contains("/horizontalpodautoscalers/"))
        .map(|(_, h)| &h["spec"])
        .find(|s| s["scaleTargetRef"]["name"] == name.as_str())
        .map(|s| {
            (
                s["minReplicas"].as_i64().unwrap_or(1),
                s["maxReplicas"].as_i64().unwrap_or(i64::MAX),
            )
        });
    let (Some((min, max)), Some(obj)) = (bounds, w.objects.get(path)) else {
        return;
    };
    let now = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    if now == 0 || (min..=max).contains(&now) {
        return;
    }
    let body = json!({"spec": {"replicas": now.clamp(min, max)}});
    update(w, path, &body, "horizontal-pod-autoscaler/scale");
}

// === writes ===

/// Records a write of `path`; `spec_written` says whether it wrote the spec (a merge
/// patch of metadata alone is not a write of the replica count).
fn record(w: &mut World, path: &str, before: Option<&Value>, spec_written: bool) {
    w.version += 1;
    let version = w.version.to_string();
    let Some(obj) = w.objects.get_mut(path) else {
        return;
    };
    obj["metadata"]["resourceVersion"] = json!(version);
    let changed = before.is_none_or(|b| b["spec"] != obj["spec"]);
    if changed {
        let g = before
            .and_then(|b| b["metadata"]["generation"].as_i64())
            .unwrap_or(0);
        obj["metadata"]["generation"] = json!(g + 1);
    }
    if is_deployment(path) {
        if obj["spec"].get("replicas").is_none() {
            // Defaulted, as the API server does when nobody sets it.
            obj["spec"]["replicas"] = json!(1);
        }
        let r = obj["spec"]["replicas"].as_i64().unwrap_or(1);
        let paused = obj["spec"]["paused"] == json!(true);
        let template = obj["spec"]["template"].clone();
        // A paused Deployment makes no ReplicaSet for a new template; unpaused, the
        // template it does not run yet rolls out.
        let template_changed = !paused && w.running.get(path) != Some(&template);
        if template_changed {
            w.running.insert(path.to_string(), template);
        }
        let scaled = before.is_none_or(|b| b["spec"]["replicas"] != obj["spec"]["replicas"]);
        if changed && (!paused || scaled) {
            // A rollout still under way keeps its deadline; once complete (its pods
            // ready, or none wanted), a mere scale gets none, as in Kubernetes.
            let was_zero = before.is_some_and(|b| b["spec"]["replicas"] == json!(0));
            let under_way = w.rollouts.get(path).is_some_and(|r| {
                r.deadline && !was_zero && (Instant::now() < r.done_at || w.broken.contains(path))
            });
            let deadline = template_changed || under_way;
            let done_at = Instant::now() + w.rollout;
            w.rollouts
                .insert(path.to_string(), Rollout { done_at, deadline });
        }
        if spec_written {
            w.replicas.push((path.to_string(), r));
        }
    }
    if path.contains("/httproutes/") && changed {
        let g = w.objects[path]["metadata"]["generation"]
            .as_i64()
            .unwrap_or(1);
        w.routed_at.insert(path.to_string(), (g, Instant::now()));
    }
}

/// A server-side apply by `manager` with `force`.
fn apply(w: &mut World, path: &str, body: &Value, manager: &str) -> Value {
    let new = fields_of(body);
    let before = w.objects.get(path).cloned();
    let mut next = match &before {
        None => {
            let mut created = body.clone();
            created["metadata"]["uid"] = json!(format!("uid-{}", w.objects.len()));
            created
        }
        Some(existing) => {
            let owners = w.owners.entry(path.to_string()).or_default();
            for (m, fields) in owners.iter_mut() {
                if m != manager {
                    fields.retain(|f| !new.contains(f));
                }
            }
            let others: BTreeSet<Field> = owners
                .iter()
                .filter(|(m, _)| *m != manager)
                .flat_map(|(_, f)| f.iter().cloned())
                .collect();
            let mut next = existing.clone();
            if let Some(previous) = owners.get(manager) {
                for gone in previous.difference(&new).filter(|f| !others.contains(*f)) {
                    remove(&mut next, gone);
                }
            }
            merge(&mut next, body, "");
            next
        }
    };
    if let Some(m) = next.as_object_mut() {
        m.remove("status");
    }
    admit(w, path, &mut next);
    w.objects.insert(path.to_string(), next);
    w.owners
        .entry(path.to_string())
        .or_default()
        .insert(manager.to_string(), new);
    record(w, path, before.as_ref(), true);
    autoscale(w, path);
    shown(w, path).unwrap_or_default()
}

/// The mutating admission in force (see [`World::pin_digests`]) on a Deployment about
/// to be stored.
fn admit(w: &World, path: &str, object: &mut Value) {
    if !w.pin_digests || !path.contains("/deployments/") {
        return;
    }
    let Some(containers) = object["spec"]["template"]["spec"]["containers"].as_array_mut() else {
        return;
    };
    for c in containers {
        if let Some(image) = c["image"].as_str().filter(|i| !i.contains('@')) {
            // A stand-in digest, the same for the same image.
            let digest: String = image
                .bytes()
                .cycle()
                .take(64)
                .map(|b| char::from(b"0123456789abcdef"[usize::from(b % 16)]))
                .collect();
            c["image"] = json!(format!("{image}@sha256:{digest}"));
        }
    }
}

/// A merge patch (an update) by `manager`: it owns the fields it changed.
fn update(w: &mut World, path: &str, patch: &Value, manager: &str) {
    let Some(before) = w.objects.get(path).cloned() else {
        return;
    };
    let mut next = before.clone();
    merge(&mut next, patch, "");
    let changed: BTreeSet<Field> = fields_of(patch)
        .into_iter()
        .filter(|f| value_at(&before, f) != value_at(&next, f))
        .collect();
    let owners = w.owners.entry(path.to_string()).or_default();
    for fields in owners.values_mut() {
        fields.retain(|f| !changed.contains(f));
    }
    owners
        .entry(manager.to_string())
        .or_default()
        .extend(changed);
    admit(w, path, &mut next);
    w.objects.insert(path.to_string(), next);
    record(w, path, Some(&before), patch.get("spec").is_some());
}

fn value_at<'v>(v: &'v Value, f: &Field) -> Option<&'v Value> {
    f.iter().try_fold(v, |v, seg| v.get(seg))
}

/// The API server's validation of label values: at most 63 characters, alphanumeric
/// at both ends, `-`, `_` and `.` between.
fn invalid_label(body: &Value) -> Option<String> {
    let valid = |v: &str| {
        v.is_empty()
            || (v.len() <= 63
                && v.starts_with(|c: char| c.is_ascii_alphanumeric())
                && v.ends_with(|c: char| c.is_ascii_alphanumeric())
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    };
    [
        &body["metadata"]["labels"],
        &body["spec"]["selector"]["matchLabels"],
        &body["spec"]["template"]["metadata"]["labels"],
    ]
    .into_iter()
    .filter_map(Value::as_object)
    .flatten()
    .find(|(_, v)| !v.as_str().is_some_and(valid))
    .map(|(k, v)| {
        format!(
            "metadata.labels: Invalid value: {v}: a valid label must be 63 characters or less ({k})"
        )
    })
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": reason})
}

fn scale_of(obj: &Value) -> Value {
    json!({
        "apiVersion": "autoscaling/v1", "kind": "Scale",
        "metadata": {"name": obj["metadata"]["name"], "namespace": obj["metadata"]["namespace"]},
        "spec": {"replicas": obj["spec"]["replicas"]},
        "status": {"replicas": obj["spec"]["replicas"]},
    })
}

fn query_value<'q>(query: &'q str, key: &str) -> Option<&'q str> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

const COLLECTIONS: &[&str] = &["horizontalpodautoscalers", "deployments", "services"];

/// Applies `World::apply_on_unpause` once its Deployment is unpaused.
fn git_on_unpause(w: &mut World) {
    let Some((path, _, _)) = &w.apply_on_unpause else {
        return;
    };
    let unpaused = w
        .objects
        .get(path)
        .is_some_and(|o| o["spec"]["paused"] != json!(true));
    if !unpaused {
        return;
    }
    if let Some((path, body, manager)) = w.apply_on_unpause.take() {
        w.apply_as(&path, &body, &manager);
    }
}

/// Applies `World::edit_after` once its write happened.
fn someone_else(w: &mut World, write: &str) {
    if w.edit_after.as_ref().is_none_or(|e| e.0 != write) {
        return;
    }
    let Some((_, path, pointer, value)) = w.edit_after.take() else {
        return;
    };
    let Some(before) = w.objects.get(&path).cloned() else {
        return;
    };
    if let Some(slot) = w
        .objects
        .get_mut(&path)
        .and_then(|o| o.pointer_mut(&pointer))
    {
        *slot = value;
    }
    record(w, &path, Some(&before), true);
}

/// A request as RBAC sees it: the API group, the resource (with a subresource), the
/// verb and the object's name. A server-side apply of an object that does not exist
/// yet is also a create.
fn authorized(w: &mut World, method: &Method, path: &str) {
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _, rest @ ..] => (String::new(), rest),
        ["apis", group, _, rest @ ..] => ((*group).to_string(), rest),
        _ => return,
    };
    let (resource, name) = match rest {
        ["namespaces", _, resource] => ((*resource).to_string(), String::new()),
        ["namespaces", _, resource, name] => ((*resource).to_string(), (*name).to_string()),
        ["namespaces", _, resource, name, sub] => {
            (format!("{resource}/{sub}"), (*name).to_string())
        }
        _ => return,
    };
    let mut verbs = vec![match *method {
        Method::GET if name.is_empty() => "list",
        Method::GET => "get",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }];
    if *method == Method::PATCH && !w.objects.contains_key(path) && !resource.contains('/') {
        verbs.push("create");
    }
    for verb in verbs {
        w.asked.insert((
            group.clone(),
            resource.clone(),
            verb.to_string(),
            name.clone(),
        ));
    }
}

fn serve_one(
    w: &mut World,
    method: &Method,
    path: &str,
    query: &str,
    ct: &str,
    bytes: &[u8],
) -> (u16, Value) {
    authorized(w, method, path);
    let ns = path
        .split("/namespaces/")
        .nth(1)
        .and_then(|r| r.split('/').next());
    if ns.is_some_and(|ns| w.forbidden.contains(ns)) {
        return (403, status(403, "Forbidden"));
    }
    match *method {
        Method::GET => {
            if let Some(o) = shown(w, path) {
                return (200, o);
            }
            if path
                .rsplit('/')
                .next()
                .is_some_and(|c| COLLECTIONS.contains(&c))
            {
                let prefix = format!("{path}/");
                let items: Vec<Value> = w
                    .objects
                    .keys()
                    .filter(|p| p.starts_with(&prefix) && !p[prefix.len()..].contains('/'))
                    .filter_map(|p| shown(w, p))
                    .collect();
                return (
                    200,
                    json!({"kind": "List", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": "1"}, "items": items}),
                );
            }
            (404, status(404, "NotFound"))
        }
        Method::PATCH if ct == "application/apply-patch+yaml" => {
            let manager = query_value(query, "fieldManager").unwrap_or("");
            assert!(
                matches!(manager, "rampart" | "rampart-gitops")
                    && query_value(query, "force") == Some("true"),
                "every apply is forced, by rampart (or rampart-gitops): {query}"
            );
            let manager = manager.to_string();
            let body: Value = serde_json::from_slice(bytes).expect("JSON");
            if let Some(why) = invalid_label(&body) {
                return (422, status(422, &why));
            }
            if let Some(stated) = body["metadata"]["resourceVersion"].as_str() {
                let now = w
                    .objects
                    .get(path)
                    .map(|o| &o["metadata"]["resourceVersion"]);
                if now.and_then(Value::as_str) != Some(stated) {
                    return (409, status(409, "Conflict"));
                }
            }
            w.wrote(format!("PATCH {path}"));
            (200, apply(w, path, &body, &manager))
        }
        Method::PATCH if ct == "application/merge-patch+json" => {
            let patch: Value = serde_json::from_slice(bytes).expect("JSON");
            let manager = query_value(query, "fieldManager").unwrap_or("unknown");
            w.wrote(format!("PATCH {path}"));
            let (object, sub) = match path.strip_suffix("/scale") {
                Some(object) => (object.to_string(), "/scale"),
                None => (path.to_string(), ""),
            };
            if !w.objects.contains_key(&object) {
                return (404, status(404, "NotFound"));
            }
            update(w, &object, &patch, &format!("{manager}{sub}"));
            autoscale(w, &object);
            let obj = shown(w, &object).unwrap_or_default();
            (200, if sub.is_empty() { obj } else { scale_of(&obj) })
        }
        Method::DELETE => {
            w.wrote(format!("DELETE {path}"));
            w.owners.remove(path);
            w.rollouts.remove(path);
            w.running.remove(path);
            match w.objects.remove(path) {
                Some(o) => (200, o),
                None => (404, status(404, "NotFound")),
            }
        }
        ref other => panic!("the fake cluster does not do {other} {path} ({ct})"),
    }
}

/// Starts a fake cluster holding `objects` (path, object), each owned by `kubectl`, its
/// rollouts complete, and returns a client to it. Rollouts take 3 s from then on.
pub fn start(objects: Vec<(String, Value)>) -> (kube::Client, Arc<Mutex<World>>) {
    let mut world = World {
        objects: BTreeMap::new(),
        owners: BTreeMap::new(),
        writes: Vec::new(),
        written_at: Vec::new(),
        asked: BTreeSet::new(),
        hang_after: None,
        edit_after: None,
        apply_on_unpause: None,
        forbidden: BTreeSet::new(),
        pin_digests: false,
        version: 0,
        replicas: Vec::new(),
        rollout: Duration::from_secs(3),
        broken: BTreeSet::new(),
        gateway: Gateway::Accepts,
        gateway_delay: Duration::from_secs(1),
        rollouts: BTreeMap::new(),
        running: BTreeMap::new(),
        routed_at: BTreeMap::new(),
    };
    for (path, mut o) in objects {
        if let Some(m) = o.as_object_mut() {
            m.remove("status");
        }
        if let Some(m) = o["metadata"].as_object_mut() {
            m.remove("managedFields");
        }
        if is_deployment(&path) {
            world
                .running
                .insert(path.clone(), o["spec"]["template"].clone());
        }
        world.version += 1;
        o["metadata"]["resourceVersion"] = json!(world.version.to_string());
        let mut owners = BTreeMap::new();
        owners.insert("kubectl".to_string(), fields_of(&o));
        world.owners.insert(path.clone(), owners);
        world.objects.insert(path, o);
    }
    let world = Arc::new(Mutex::new(world));
    (connect(&world), world)
}

/// Another client to the same cluster (a second controller, after a "crash").
pub fn connect(world: &Arc<Mutex<World>>) -> kube::Client {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let shared = world.clone();
    tokio::spawn(async move {
        let mut unanswered = Vec::new();
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let ct = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let (code, answer, hang) = {
                let mut w = shared.lock().expect("world");
                let (code, answer) = serve_one(&mut w, &method, &path, &query, &ct, &bytes);
                let hang = w.hang_after.as_deref() == Some(&format!("{method} {path}"));
                someone_else(&mut w, &format!("{method} {path}"));
                git_on_unpause(&mut w);
                (code, answer, hang)
            };
            if hang {
                // Done, never answered: the client waits until it is dropped.
                unanswered.push(send);
                continue;
            }
            send.send_response(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).expect("JSON")))
                    .expect("response"),
            );
        }
    });
    kube::Client::new(mock, super::NS)
}
