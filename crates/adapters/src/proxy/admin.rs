//! The embedded proxy's admin endpoint, for `rampart proxy`: a controller (or an
//! operator) sets backends, weight and match rules over HTTP with a bearer token.
//!
//! Owns the routes, their JSON and the token check. `/healthz` and `/metrics` are open;
//! everything else needs `Authorization: Bearer TOKEN`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rampart_core::policy::RouteMatch;
use rampart_core::{Variant, Weight};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Proxy;
use crate::telemetry::Telemetry;

/// The admin endpoint. Dropping it stops it.
#[derive(Debug)]
pub struct AdminServer {
    task: JoinHandle<()>,
    addr: SocketAddr,
}

impl AdminServer {
    /// Serves `proxy`'s admin API on `listen`, guarded by `token`.
    pub async fn bind(
        listen: SocketAddr,
        proxy: Proxy,
        token: String,
        telemetry: Arc<Telemetry>,
    ) -> std::io::Result<AdminServer> {
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let token: Arc<str> = Arc::from(token);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (proxy, token, telemetry) =
                    (proxy.clone(), Arc::clone(&token), Arc::clone(&telemetry));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (proxy, token, telemetry) =
                            (proxy.clone(), Arc::clone(&token), Arc::clone(&telemetry));
                        async move { Ok::<_, Infallible>(route(&proxy, &token, &telemetry, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(AdminServer { task, addr })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    reply(status, json!({"error": {"code": code, "message": message}}))
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn state(proxy: &Proxy) -> Value {
    let routes = proxy.inner.routes();
    let addrs = |v: &[super::Backend]| v.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>();
    json!({
        "weight": routes.weight,
        "stable": addrs(&routes.stable),
        "canary": addrs(&routes.canary),
        "matches": routes.matches,
    })
}

async fn route(
    proxy: &Proxy,
    token: &str,
    telemetry: &Telemetry,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    match (req.method(), path.as_str()) {
        (&Method::GET, "/healthz") => return reply(StatusCode::OK, json!({"ok": true})),
        (&Method::GET, "/metrics") => {
            let mut r = Response::new(Full::new(Bytes::from(telemetry.render())));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return r;
        }
        _ => {}
    }
    let presented = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !same(presented.as_bytes(), token.as_bytes()) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer TOKEN (the token rampart proxy was started with)",
        );
    }
    let method = req.method().clone();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_body", &e.to_string()),
    };
    let json: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_json", &e.to_string()),
        }
    };
    match (method, path.as_str()) {
        (Method::GET, "/state") => reply(StatusCode::OK, state(proxy)),
        (Method::PUT, "/weight") => {
            let weight = match serde_json::from_value::<Weight>(json["weight"].clone()) {
                Ok(w) => w,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "bad_weight",
                        &format!("`weight` must be a percentage from 0 to 100: {e}"),
                    );
                }
            };
            let matches: Vec<RouteMatch> = match &json["matches"] {
                Value::Null => Vec::new(),
                m => match serde_json::from_value(m.clone()) {
                    Ok(m) => m,
                    Err(e) => return error(StatusCode::BAD_REQUEST, "bad_matches", &e.to_string()),
                },
            };
            let now = proxy.set_route(weight, &matches);
            reply(StatusCode::OK, json!({"weight": now}))
        }
        (Method::PUT, p) if p.starts_with("/backends/") => {
            let variant = match &p["/backends/".len()..] {
                "stable" => Variant::Stable,
                "canary" => Variant::Canary,
                other => {
                    return error(
                        StatusCode::NOT_FOUND,
                        "unknown_variant",
                        &format!("`{other}` is not stable or canary"),
                    );
                }
            };
            let endpoints: Result<Vec<SocketAddr>, _> = json["endpoints"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|e| e.as_str().unwrap_or("").parse::<SocketAddr>())
                .collect();
            match endpoints {
                Ok(eps) if json["endpoints"].is_array() => {
                    proxy.set_backends(variant, &eps);
                    reply(StatusCode::OK, state(proxy))
                }
                _ => error(
                    StatusCode::BAD_REQUEST,
                    "bad_endpoints",
                    "`endpoints` must be a list of IP:PORT",
                ),
            }
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            "routes: GET /healthz, GET /metrics, GET /state, PUT /weight, PUT /backends/{stable|canary}",
        ),
    }
}
