//! A FAKE cluster: an in-memory object store behind the same mock transport, for whole
//! releases driven by the real controller. No API server runs.
//!
//! Owns a small model of server-side apply: a body merges into the stored object
//! (maps by key, lists of named items by name, other lists replaced), `generation`
//! grows when the spec changes, and a Deployment's rollout completes at once. It must
//! not be mistaken for Kubernetes: no admission, no conflicts, no garbage collection;
//! `fake_api.rs` pins the exact requests instead.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response};
use kube::client::Body;
use serde_json::{Value, json};

/// What the fake cluster holds, by API path, and every write it took.
#[derive(Debug, Default)]
pub struct World {
    pub objects: BTreeMap<String, Value>,
    /// `METHOD path` of every write, in order.
    pub writes: Vec<String>,
    /// `spec.replicas` of each Deployment after each write, by path.
    pub replicas: Vec<(String, i64)>,
}

fn merge(into: &mut Value, from: &Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                match a.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        a.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(a), Value::Array(b))
            if !b.is_empty()
                && b.iter()
                    .all(|e| e.get("name").is_some_and(Value::is_string)) =>
        {
            for item in b {
                match a.iter_mut().find(|e| e.get("name") == item.get("name")) {
                    Some(existing) => merge(existing, item),
                    None => a.push(item.clone()),
                }
            }
        }
        (a, b) => *a = b.clone(),
    }
}

fn complete_rollout(obj: &mut Value) {
    if obj["kind"] != "Deployment" {
        return;
    }
    let replicas = obj["spec"]["replicas"].as_i64().unwrap_or(1);
    let generation = obj["metadata"]["generation"].clone();
    obj["status"] = json!({
        "observedGeneration": generation,
        "replicas": replicas,
        "updatedReplicas": replicas,
        "readyReplicas": replicas,
        "availableReplicas": replicas,
    });
}

fn apply(world: &mut World, path: &str, body: &Value) -> Value {
    let obj = match world.objects.get(path) {
        Some(existing) => {
            let mut next = existing.clone();
            merge(&mut next, body);
            if next["spec"] != existing["spec"] {
                let g = existing["metadata"]["generation"].as_i64().unwrap_or(1);
                next["metadata"]["generation"] = json!(g + 1);
            }
            next
        }
        None => {
            let mut created = body.clone();
            created["metadata"]["generation"] = json!(1);
            created
        }
    };
    let mut obj = obj;
    complete_rollout(&mut obj);
    if let Some(r) = obj["spec"]["replicas"].as_i64() {
        world.replicas.push((path.to_string(), r));
    }
    world.objects.insert(path.to_string(), obj.clone());
    obj
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
           "code": code, "message": reason})
}

/// Starts a fake cluster holding `objects` (path, object) and returns a client to it.
pub fn start(objects: Vec<(String, Value)>) -> (kube::Client, Arc<Mutex<World>>) {
    let world = Arc::new(Mutex::new(World {
        objects: objects
            .into_iter()
            .map(|(p, mut o)| {
                complete_rollout(&mut o);
                (p, o)
            })
            .collect(),
        writes: Vec::new(),
        replicas: Vec::new(),
    }));
    (connect(&world), world)
}

/// Another client to the same cluster (a second controller, after a "crash").
pub fn connect(world: &Arc<Mutex<World>>) -> kube::Client {
    let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let shared = world.clone();
    tokio::spawn(async move {
        while let Some((req, send)) = handle.next_request().await {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            let query = req.uri().query().unwrap_or("").to_string();
            let bytes = req.into_body().collect_bytes().await.expect("body");
            let (code, answer) = {
                let mut w = shared.lock().expect("world");
                match method {
                    Method::GET => match w.objects.get(&path) {
                        Some(o) => (200, o.clone()),
                        None => (404, status(404, "NotFound")),
                    },
                    Method::PATCH => {
                        assert!(
                            query.contains("fieldManager=rampart") && query.contains("force=true"),
                            "every write is a forced apply by rampart: {query}"
                        );
                        let body: Value = serde_json::from_slice(&bytes).expect("JSON");
                        w.writes.push(format!("PATCH {path}"));
                        (200, apply(&mut w, &path, &body))
                    }
                    Method::DELETE => {
                        w.writes.push(format!("DELETE {path}"));
                        match w.objects.remove(&path) {
                            Some(o) => (200, o),
                            None => (404, status(404, "NotFound")),
                        }
                    }
                    other => panic!("the fake cluster does not do {other} {path}"),
                }
            };
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
