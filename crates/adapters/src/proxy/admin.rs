//! The embedded proxy's admin endpoint, for `rampart proxy`: a controller (or an
//! operator) sets backends, weight and match rules over HTTP with a bearer token.
//!
//! Owns the routes, their JSON and the token check. `/healthz` and `/metrics` are open;
//! everything else needs `Authorization: Bearer TOKEN`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use axum::{Json, Router};
use rampart_core::policy::RouteMatch;
use rampart_core::{Variant, Weight};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Proxy;
use crate::telemetry::{Telemetry, exposition};

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
        let app = router(Admin {
            proxy,
            token: Arc::from(token),
            telemetry,
        });
        let task = tokio::spawn(async move {
            // It only returns when the task is aborted: accept errors are retried.
            let _ = axum::serve(listener, app).await;
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

/// Why the admin API refused a request. Each variant is a JSON error
/// `{"error": {"code", "message"}}` whose `code` a controller may branch on.
#[derive(Debug, thiserror::Error)]
pub enum ProxyAdminError {
    /// No `Authorization: Bearer` header, or not the token the proxy was started with.
    #[error("send Authorization: Bearer TOKEN (the token rampart proxy was started with)")]
    Unauthorized,
    /// The request body could not be read off the connection.
    #[error("{0}")]
    BadBody(#[source] axum::Error),
    /// The body is not JSON.
    #[error("{0}")]
    BadJson(#[source] serde_json::Error),
    /// `weight` is missing or not a percentage.
    #[error("`weight` must be a percentage from 0 to 100: {0}")]
    BadWeight(#[source] serde_json::Error),
    /// `matches` is not a list of match rules.
    #[error("{0}")]
    BadMatches(#[source] serde_json::Error),
    /// `/backends/` names neither variant (the raw path segment).
    #[error("`{0}` is not stable or canary")]
    UnknownVariant(String),
    /// `endpoints` is missing or holds something that is not `IP:PORT`.
    #[error("`endpoints` must be a list of IP:PORT")]
    BadEndpoints,
    /// No such route (or not with that method).
    #[error(
        "routes: GET /healthz, GET /metrics, GET /state, PUT /weight, PUT /backends/{{stable|canary}}"
    )]
    NotFound,
}

impl ProxyAdminError {
    /// The stable, machine-readable code in the error body.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyAdminError::Unauthorized => "unauthorized",
            ProxyAdminError::BadBody(_) => "bad_body",
            ProxyAdminError::BadJson(_) => "bad_json",
            ProxyAdminError::BadWeight(_) => "bad_weight",
            ProxyAdminError::BadMatches(_) => "bad_matches",
            ProxyAdminError::UnknownVariant(_) => "unknown_variant",
            ProxyAdminError::BadEndpoints => "bad_endpoints",
            ProxyAdminError::NotFound => "not_found",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ProxyAdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyAdminError::UnknownVariant(_) | ProxyAdminError::NotFound => StatusCode::NOT_FOUND,
            ProxyAdminError::BadBody(_)
            | ProxyAdminError::BadJson(_)
            | ProxyAdminError::BadWeight(_)
            | ProxyAdminError::BadMatches(_)
            | ProxyAdminError::BadEndpoints => StatusCode::BAD_REQUEST,
        }
    }
}

impl IntoResponse for ProxyAdminError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        (self.status(), Json(body)).into_response()
    }
}

/// What every request needs.
#[derive(Clone)]
struct Admin {
    proxy: Proxy,
    token: Arc<str>,
    telemetry: Arc<Telemetry>,
}

/// The routes. Every guarded request is checked in the same order, whatever its
/// route: the token (401), then the body as JSON (400), then the route (404), so a
/// caller without the token learns nothing about the routes. Methods a route does
/// not serve go to `not_found` through `any`, which also keeps axum from adding an
/// `Allow` header the API never sent; HEAD is routed explicitly, since axum would
/// otherwise answer it with the GET handler.
fn router(admin: Admin) -> Router {
    let guarded = || -> MethodRouter<Admin> { any(not_found).head(not_found) };
    Router::new()
        .route("/healthz", guarded().get(healthz))
        .route("/metrics", guarded().get(metrics))
        .route("/state", guarded().get(state))
        .route("/weight", guarded().put(weight))
        .route("/backends/", guarded().put(backends))
        .route("/backends/{*variant}", guarded().put(backends))
        .fallback(not_found)
        .with_state(admin)
}

/// A request that presented the admin token.
struct Authorized;

impl FromRequestParts<Admin> for Authorized {
    type Rejection = ProxyAdminError;

    async fn from_request_parts(parts: &mut Parts, admin: &Admin) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if same(presented.as_bytes(), admin.token.as_bytes()) {
            Ok(Authorized)
        } else {
            Err(ProxyAdminError::Unauthorized)
        }
    }
}

/// The body as JSON; an empty body is `null`. Read whole and unlimited, as the API
/// always has (it is guarded by the token, and its bodies are small).
struct JsonBody(Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ProxyAdminError;

    async fn from_request(req: Request, _: &S) -> Result<Self, Self::Rejection> {
        let body = axum::body::to_bytes(req.into_body(), usize::MAX)
            .await
            .map_err(ProxyAdminError::BadBody)?;
        if body.is_empty() {
            return Ok(JsonBody(Value::Null));
        }
        serde_json::from_slice(&body)
            .map(JsonBody)
            .map_err(ProxyAdminError::BadJson)
    }
}

/// Compares without stopping at the first difference.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn describe(proxy: &Proxy) -> Value {
    let routes = proxy.inner.routes();
    let addrs = |v: &[super::Backend]| v.iter().map(|b| b.addr.to_string()).collect::<Vec<_>>();
    json!({
        "weight": routes.weight,
        "stable": addrs(&routes.stable),
        "canary": addrs(&routes.canary),
        "matches": routes.matches,
    })
}

// === handlers ===

/// Open, like `/metrics`: a load balancer's health check has no token.
async fn healthz() -> Json<Value> {
    Json(json!({"ok": true}))
}

async fn metrics(State(admin): State<Admin>) -> Response {
    exposition(&admin.telemetry)
}

async fn not_found(_: Authorized, _: JsonBody) -> ProxyAdminError {
    ProxyAdminError::NotFound
}

async fn state(_: Authorized, State(admin): State<Admin>, _: JsonBody) -> Json<Value> {
    Json(describe(&admin.proxy))
}

async fn weight(
    _: Authorized,
    State(admin): State<Admin>,
    JsonBody(json): JsonBody,
) -> Result<Json<Value>, ProxyAdminError> {
    let weight = serde_json::from_value::<Weight>(json["weight"].clone())
        .map_err(ProxyAdminError::BadWeight)?;
    let matches: Vec<RouteMatch> = match &json["matches"] {
        Value::Null => Vec::new(),
        m => serde_json::from_value(m.clone()).map_err(ProxyAdminError::BadMatches)?,
    };
    let now = admin.proxy.set_route(weight, &matches);
    Ok(Json(json!({"weight": now})))
}

async fn backends(
    _: Authorized,
    State(admin): State<Admin>,
    uri: Uri,
    JsonBody(json): JsonBody,
) -> Result<Json<Value>, ProxyAdminError> {
    // The raw path, not percent-decoded: `st%61ble` has never named a variant.
    let variant = match uri.path().strip_prefix("/backends/").unwrap_or_default() {
        "stable" => Variant::Stable,
        "canary" => Variant::Canary,
        other => return Err(ProxyAdminError::UnknownVariant(other.to_string())),
    };
    let endpoints = json["endpoints"]
        .as_array()
        .ok_or(ProxyAdminError::BadEndpoints)?
        .iter()
        .map(|e| e.as_str().unwrap_or("").parse::<SocketAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| ProxyAdminError::BadEndpoints)?;
    admin.proxy.set_backends(variant, &endpoints);
    Ok(Json(describe(&admin.proxy)))
}
