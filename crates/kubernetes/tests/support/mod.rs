//! A FAKE Kubernetes API server for the adapter's tests: no cluster runs here.
//!
//! Owns the scripted transport: `kube::Client::new` over a `tower_test::mock::pair`, and
//! a task that answers each request from a named scenario, asserting its method, path,
//! query and (for writes) its JSON body. It must not reach the network: every byte
//! stays in memory. Tests against a real cluster live in `scripts/e2e-kind.sh` and in
//! tests marked `#[ignore = "needs cluster"]`.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::time::Duration;

use http::{Method, Request, Response};
use kube::client::Body;
use rampart_core::policy::{KubeDeploySpec, KubeMode, KubeTrafficSpec};
use rampart_kubernetes::Kubernetes;
use serde_json::{Value, json};

pub const NS: &str = "shop";

pub fn deployments(name: &str) -> String {
    format!("/apis/apps/v1/namespaces/{NS}/deployments/{name}")
}

pub fn services(name: &str) -> String {
    format!("/api/v1/namespaces/{NS}/services/{name}")
}

pub fn hpas() -> String {
    format!("/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers")
}

/// A list of HPAs as the API server answers it.
pub fn hpa_list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
           "metadata": {"resourceVersion": "1"}, "items": items})
}

/// An HPA scaling the Deployment `target` between `min` and `max` replicas.
pub fn hpa(target: &str, min: i32, max: i32) -> Value {
    json!({
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": target, "namespace": NS},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": min, "maxReplicas": max,
        }
    })
}

pub fn routes(name: &str) -> String {
    format!("/apis/gateway.networking.k8s.io/v1/namespaces/{NS}/httproutes/{name}")
}

type Check = Box<dyn Fn(&Value) + Send>;

/// What the fake answers.
pub enum Answer {
    /// A status and a JSON body.
    Json(u16, Value),
    /// A transport failure (connection refused).
    Refused,
}

/// One expected request and its canned answer.
pub struct Exchange {
    method: Method,
    path: String,
    query: Vec<(&'static str, &'static str)>,
    content_type: &'static str,
    check: Option<Check>,
    answer: Answer,
}

/// A named, ordered list of exchanges.
pub struct Scenario {
    name: &'static str,
    steps: Vec<Exchange>,
}

impl Scenario {
    pub fn new(name: &'static str) -> Scenario {
        Scenario {
            name,
            steps: Vec::new(),
        }
    }

    pub fn get(mut self, path: String, status: u16, body: Value) -> Scenario {
        self.steps.push(Exchange {
            method: Method::GET,
            path,
            query: Vec::new(),
            content_type: "",
            check: None,
            answer: Answer::Json(status, body),
        });
        self
    }

    /// A server-side apply by the field manager `rampart`, with `force`.
    pub fn apply(
        mut self,
        path: String,
        check: impl Fn(&Value) + Send + 'static,
        status: u16,
        body: Value,
    ) -> Scenario {
        self.steps.push(Exchange {
            method: Method::PATCH,
            path,
            query: vec![("fieldManager", "rampart"), ("force", "true")],
            content_type: "application/apply-patch+yaml",
            check: Some(Box::new(check)),
            answer: Answer::Json(status, body),
        });
        self
    }

    /// A Deployment's replicas set through its scale subresource: a merge patch by the
    /// field manager `rampart`, answered with the Scale.
    pub fn scale(mut self, deployment: String, replicas: i32) -> Scenario {
        let name = deployment.rsplit('/').next().unwrap_or("").to_string();
        self.steps.push(Exchange {
            method: Method::PATCH,
            path: format!("{deployment}/scale"),
            query: vec![("fieldManager", "rampart")],
            content_type: "application/merge-patch+json",
            check: Some(Box::new(move |b| {
                assert_eq!(b, &json!({"spec": {"replicas": replicas}}), "scale body")
            })),
            answer: Answer::Json(
                200,
                json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                       "metadata": {"name": name, "namespace": NS},
                       "spec": {"replicas": replicas}, "status": {"replicas": replicas}}),
            ),
        });
        self
    }

    /// A merge patch of an object (not its scale), checked with `check`.
    pub fn merge(
        mut self,
        path: String,
        check: impl Fn(&Value) + Send + 'static,
        status: u16,
        body: Value,
    ) -> Scenario {
        self.steps.push(Exchange {
            method: Method::PATCH,
            path,
            query: vec![("fieldManager", "rampart")],
            content_type: "application/merge-patch+json",
            check: Some(Box::new(check)),
            answer: Answer::Json(status, body),
        });
        self
    }

    pub fn delete(mut self, path: String, status: u16, body: Value) -> Scenario {
        self.steps.push(Exchange {
            method: Method::DELETE,
            path,
            query: Vec::new(),
            content_type: "",
            check: None,
            answer: Answer::Json(status, body),
        });
        self
    }

    pub fn refused(mut self, method: Method, path: String) -> Scenario {
        self.steps.push(Exchange {
            method,
            path,
            query: Vec::new(),
            content_type: "",
            check: None,
            answer: Answer::Refused,
        });
        self
    }

    /// Starts the fake; returns a client over it and a handle that checks, when
    /// awaited, that every exchange happened and nothing more was asked. The bodies of
    /// every write are returned in order.
    pub fn serve(self) -> (kube::Client, tokio::task::JoinHandle<Vec<Value>>) {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let name = self.name;
        let task = tokio::spawn(async move {
            let mut written = Vec::new();
            for (i, step) in self.steps.into_iter().enumerate() {
                let Some((req, send)) = handle.next_request().await else {
                    panic!(
                        "scenario `{name}`: the client stopped before exchange {i} ({} {})",
                        step.method, step.path
                    );
                };
                let at = format!("scenario `{name}`, exchange {i}");
                assert_eq!(req.method(), step.method, "{at}: method of {}", req.uri());
                assert_eq!(req.uri().path(), step.path, "{at}: path");
                let query: Vec<(String, String)> = req
                    .uri()
                    .query()
                    .unwrap_or("")
                    .split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect();
                for (k, v) in &step.query {
                    assert!(
                        query.iter().any(|(qk, qv)| qk == k && qv == v),
                        "{at}: query {:?} lacks {k}={v}",
                        req.uri().query()
                    );
                }
                if step.method == Method::PATCH {
                    let ct = req
                        .headers()
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    assert_eq!(ct, step.content_type, "{at}: content type");
                }
                let bytes = req.into_body().collect_bytes().await.expect("request body");
                if let Some(check) = &step.check {
                    let body: Value = serde_json::from_slice(&bytes).expect("JSON body");
                    check(&body);
                    written.push(body);
                }
                match step.answer {
                    Answer::Json(status, body) => send.send_response(
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Body::from(serde_json::to_vec(&body).expect("JSON")))
                            .expect("response"),
                    ),
                    Answer::Refused => send.send_error(std::io::Error::new(
                        std::io::ErrorKind::ConnectionRefused,
                        "connection refused",
                    )),
                }
            }
            if let Some((req, _)) = handle.next_request().await {
                panic!(
                    "scenario `{name}`: unexpected extra request {} {}",
                    req.method(),
                    req.uri()
                );
            }
            written
        });
        (kube::Client::new(mock, NS), task)
    }
}

/// Runs `op` against the scenario and returns its result and the bodies written.
/// The adapter (and so the client) is dropped before the scenario's end is checked.
pub async fn run<T>(
    scenario: Scenario,
    mode: KubeMode,
    op: impl AsyncFnOnce(&Kubernetes) -> T,
) -> (T, Vec<Value>) {
    run_with(scenario, deploy_spec(), mode, op).await
}

/// As [`run`], with another deploy spec.
pub async fn run_with<T>(
    scenario: Scenario,
    spec: KubeDeploySpec,
    mode: KubeMode,
    op: impl AsyncFnOnce(&Kubernetes) -> T,
) -> (T, Vec<Value>) {
    let (client, task) = scenario.serve();
    let k = Kubernetes::new(client, spec, KubeTrafficSpec { mode })
        .with_poll_interval(Duration::from_secs(1));
    let out = op(&k).await;
    drop(k);
    (out, task.await.expect("the fake API server panicked"))
}

pub fn deploy_spec() -> KubeDeploySpec {
    KubeDeploySpec {
        namespace: NS.into(),
        deployment: "checkout".into(),
        container: "app".into(),
        image: "registry.example.com/checkout:{version}".into(),
        canary_name: "checkout-canary".into(),
        ready_timeout: Duration::from_secs(60),
        context: None,
    }
}

pub fn selector() -> KubeMode {
    KubeMode::ServiceSelector {
        service: "checkout".into(),
    }
}

pub fn http_route() -> KubeMode {
    KubeMode::HttpRoute {
        service: "checkout".into(),
        route: "checkout".into(),
    }
}

pub fn ratio(replicas: u32) -> KubeMode {
    KubeMode::ReplicaRatio { replicas }
}

/// The rollout status of a Deployment: observed generation, updated, available and
/// total replicas.
#[derive(Clone, Copy, Debug)]
pub struct Status {
    pub observed: i64,
    pub updated: i32,
    pub available: i32,
    pub total: i32,
}

impl Status {
    pub fn ready(replicas: i32) -> Status {
        Status {
            observed: 1,
            updated: replicas,
            available: replicas,
            total: replicas,
        }
    }
}

/// A Deployment as the API server returns it (generation 1).
pub fn deployment(name: &str, track: &str, version: &str, replicas: i32, status: Status) -> Value {
    let mut labels = json!({ "app": "checkout", "rampart.dev/track": track });
    let mut pod_labels = labels.clone();
    let mut annotations = json!({ "deployment.kubernetes.io/revision": "3" });
    if track == "canary" {
        labels["rampart.dev/version"] = json!(version);
        pod_labels["rampart.dev/version"] = json!(version);
        annotations["rampart.dev/derived-from"] = json!("checkout");
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": NS,
            "generation": 1,
            "resourceVersion": "42",
            "uid": "0000",
            "labels": labels,
            "annotations": annotations,
        },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": "checkout", "rampart.dev/track": track } },
            "template": {
                "metadata": { "labels": pod_labels },
                "spec": { "containers": [
                    { "name": "app", "image": format!("registry.example.com/checkout:{version}"),
                      "ports": [ { "containerPort": 8080 } ] },
                    { "name": "sidecar", "image": "registry.example.com/proxy:1" }
                ] }
            }
        },
        "status": {
            "observedGeneration": status.observed,
            "updatedReplicas": status.updated,
            "availableReplicas": status.available,
            "readyReplicas": status.available,
            "replicas": status.total,
        }
    })
}

pub fn stable(version: &str, replicas: i32) -> Value {
    deployment(
        "checkout",
        "stable",
        version,
        replicas,
        Status::ready(replicas),
    )
}

pub fn canary(version: &str, replicas: i32) -> Value {
    deployment(
        "checkout-canary",
        "canary",
        version,
        replicas,
        Status::ready(replicas),
    )
}

/// The answer to a GET of the canary before it exists.
pub fn no_canary() -> Value {
    not_found("deployments.apps", "checkout-canary")
}

pub fn not_found(kind: &str, name: &str) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{kind} \"{name}\" not found"), "reason": "NotFound", "code": 404
    })
}

pub fn server_error() -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500
    })
}

pub fn service(name: &str, selector: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": { "name": name, "namespace": NS },
        "spec": {
            "selector": selector,
            "ports": [ { "name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP" } ]
        }
    })
}

pub fn route(stable_weight: Option<i64>, canary_weight: Option<i64>) -> Value {
    let mut refs = vec![json!({ "name": "checkout", "port": 80 })];
    if let Some(w) = stable_weight {
        refs[0]["weight"] = json!(w);
    }
    if let Some(w) = canary_weight {
        refs.push(json!({ "name": "checkout-canary", "port": 80, "weight": w }));
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": { "name": "checkout", "namespace": NS, "resourceVersion": "7", "generation": 1 },
        "status": { "parents": [ route_parent(1, "True", "Accepted") ] },
        "spec": {
            "parentRefs": [ { "name": "public" } ],
            "rules": [
                { "matches": [ { "path": { "type": "PathPrefix", "value": "/" } } ], "backendRefs": refs },
                { "matches": [ { "path": { "type": "PathPrefix", "value": "/admin" } } ],
                  "backendRefs": [ { "name": "admin", "port": 80 } ] }
            ]
        }
    })
}

/// A Gateway's report on the route's parent `public`: `Accepted` with `accepted`
/// (`True` or `False`) and `reason`, `ResolvedRefs` true, both at `observed`.
pub fn route_parent(observed: i64, accepted: &str, reason: &str) -> Value {
    json!({
        "parentRef": { "name": "public" },
        "controllerName": "example.com/gateway",
        "conditions": [
            { "type": "Accepted", "status": accepted, "reason": reason,
              "message": "by the listener", "observedGeneration": observed },
            { "type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs",
              "message": "", "observedGeneration": observed },
        ]
    })
}

/// A JSON value at a `/`-separated path (`spec/template/metadata/labels`).
pub fn at<'v>(v: &'v Value, path: &str) -> &'v Value {
    path.split('/').fold(v, |v, k| match k.parse::<usize>() {
        Ok(i) => &v[i],
        Err(_) => &v[k],
    })
}

/// The rules of the Role in a YAML text (several documents): (API group, resource,
/// verb, the names it is limited to).
pub fn role_rules(text: &str) -> BTreeSet<(String, String, String, Vec<String>)> {
    use rampart_core::yaml::{Node, NodeKind};
    let list = |n: Option<&Node>| -> Vec<String> {
        match n.map(|n| &n.kind) {
            Some(NodeKind::Seq(items)) => items
                .iter()
                .map(|i| match &i.kind {
                    NodeKind::Scalar { text, .. } => text.clone(),
                    _ => String::new(),
                })
                .collect(),
            _ => Vec::new(),
        }
    };
    let get = |n: &Node, key: &str| -> Option<Node> {
        match &n.kind {
            NodeKind::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.text == key)
                .map(|(_, v)| v.clone()),
            _ => None,
        }
    };
    let mut out = BTreeSet::new();
    for doc in text.split("\n---\n") {
        let doc = rampart_core::yaml::parse(doc).expect("a Role in YAML");
        let kind = get(&doc, "kind");
        if !matches!(kind.map(|k| k.kind), Some(NodeKind::Scalar { text, .. }) if text == "Role") {
            continue;
        }
        let Some(Node {
            kind: NodeKind::Seq(rules),
            ..
        }) = get(&doc, "rules")
        else {
            panic!("a Role without rules");
        };
        for rule in &rules {
            let names = list(get(rule, "resourceNames").as_ref());
            for group in list(get(rule, "apiGroups").as_ref()) {
                for resource in list(get(rule, "resources").as_ref()) {
                    for verb in list(get(rule, "verbs").as_ref()) {
                        out.insert((group.clone(), resource.clone(), verb, names.clone()));
                    }
                }
            }
        }
    }
    out
}

pub mod cluster;

/// Gates that all pass and notices that go nowhere, for releases driven whole.
pub struct Nothing;

impl rampart_core::ports::GateRunner for Nothing {
    fn run<'a>(
        &'a self,
        g: &'a rampart_core::policy::Gate,
    ) -> rampart_core::ports::BoxFuture<'a, rampart_core::release::GateResult> {
        Box::pin(async move {
            rampart_core::release::GateResult {
                name: g.name.clone(),
                ok: true,
                detail: String::new(),
            }
        })
    }
}

impl rampart_core::ports::Notifier for Nothing {
    fn notify<'a>(
        &'a self,
        _: &'a rampart_core::ports::Notice,
    ) -> rampart_core::ports::BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// One interval of the test policies' `errors` query: 0 on stable, `canary` on the
/// canary.
pub fn errors_reading(canary: f64) -> rampart_core::metrics::IntervalSample {
    rampart_core::metrics::IntervalSample {
        queries: vec![rampart_core::metrics::QueryReading {
            name: "errors".into(),
            stable: Some(0.0),
            canary: Some(canary),
            ..Default::default()
        }],
        ..Default::default()
    }
}
