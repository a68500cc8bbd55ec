//! The embedded proxy's admin endpoint, for `rampart proxy`: a controller (or an
//! operator) sets backends, weight and match rules over HTTP with a bearer token, on
//! TCP or on a Unix socket (the data plane `rampart run` and `serve` attach to).
//!
//! Owns the routes, their JSON and the token check. `/healthz` and `/metrics` are open;
//! everything else needs `Authorization: Bearer TOKEN`. Every change of the routes is
//! persisted (when the server was given somewhere to persist it) before it is
//! acknowledged.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use axum::{Json, Router};
use rampart_core::metrics::IntervalSample;
use rampart_core::policy::RouteMatch;
use rampart_core::{Variant, Weight};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::Proxy;
use super::plane::InFlight;
use crate::telemetry::{Telemetry, exposition};

/// The admin endpoint. Dropping it stops it.
#[derive(Debug)]
pub struct AdminServer {
    task: JoinHandle<()>,
    addr: Option<SocketAddr>,
    /// Asks a Unix-socket server to stop accepting and finish the requests it has.
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Saves the routes a change is about to put in effect; an error refuses the change.
pub type Persist = Arc<dyn Fn(&super::RouteTable) -> Result<(), String> + Send + Sync>;

/// Asks the data plane this one took over from, while it drains, how many requests it
/// has in flight; `None` when none answers (it has gone, or stopped following).
/// Blocking (at most [`super::plane::FOLLOW_LIMIT`]).
pub type Predecessor = Arc<dyn Fn(&super::plane::InFlight) -> Option<u64> + Send + Sync>;

/// What a data plane adds to the admin API: persistence, and a way to be stopped.
#[derive(Clone, Default)]
pub struct PlaneHooks {
    /// Called after every change of the routes.
    pub persist: Option<Persist>,
    /// Notified by `POST /shutdown`.
    pub shutdown: Option<Arc<tokio::sync::Notify>>,
    /// `false` while a data plane this one took over from still drains (its requests
    /// in flight are not counted here): a drain is done only once it has gone.
    pub settled: Option<tokio::sync::watch::Receiver<bool>>,
    /// While not `settled`: what the process it took over from has in flight. A drain
    /// there is done once it has none to the variant or endpoints drained (its open
    /// connections follow the routes, so no new one goes there), without waiting for
    /// it to exit.
    pub predecessor: Option<Predecessor>,
    /// The counts as of the last measurement a controller took (`POST
    /// /counters/measured`): where a controller that attaches later starts counting,
    /// so that what the versions served while none ran is judged too.
    pub measured: Arc<std::sync::Mutex<Option<IntervalSample>>>,
}

impl std::fmt::Debug for PlaneHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlaneHooks")
            .field("persist", &self.persist.is_some())
            .field("shutdown", &self.shutdown.is_some())
            .field("settled", &self.settled.as_ref().map(|s| *s.borrow()))
            .field("predecessor", &self.predecessor.is_some())
            .field("measured", &self.measured.lock().map(|m| m.is_some()).ok())
            .finish()
    }
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
            hooks: PlaneHooks::default(),
            changing: Arc::default(),
        });
        let task = tokio::spawn(async move {
            // It only returns when the task is aborted: accept errors are retried.
            let _ = axum::serve(listener, app).await;
        });
        Ok(AdminServer {
            task,
            addr: Some(addr),
            stop: None,
        })
    }

    /// Serves `proxy`'s admin API on the Unix socket `path` (replacing a stale one),
    /// readable and writable by its owner only, guarded by `token` too.
    pub async fn bind_unix(
        path: &std::path::Path,
        proxy: Proxy,
        token: String,
        telemetry: Arc<Telemetry>,
        hooks: PlaneHooks,
    ) -> std::io::Result<AdminServer> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(path);
        let listener = tokio::net::UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let app = router(Admin {
            proxy,
            token: Arc::from(token),
            telemetry,
            hooks,
            changing: Arc::default(),
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(AdminServer {
            task,
            addr: None,
            stop: Some(stop),
        })
    }

    /// Where it listens (on TCP).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Stops accepting and returns once the requests in progress are answered (a
    /// change in progress is saved and applied first), at most 10 s.
    pub async fn close(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
            if tokio::time::timeout(std::time::Duration::from_secs(10), &mut self.task)
                .await
                .is_ok()
            {
                return;
            }
        }
        self.task.abort();
        let _ = (&mut self.task).await;
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
    /// A body field is missing or malformed (`/salt`, `/drain`).
    #[error("{0}")]
    BadField(String),
    /// The change could not be saved, so it was not made.
    #[error("the change was not made: it could not be saved: {0}")]
    Persist(String),
    /// No such route (or not with that method).
    #[error(
        "routes: GET /healthz, GET /metrics, GET /state, GET /counters, POST /counters/measured, PUT /weight, PUT /backends/{{stable|canary}}, PUT /salt, PUT /uncounted, POST /drain, POST /shutdown"
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
            ProxyAdminError::BadField(_) => "bad_field",
            ProxyAdminError::Persist(_) => "persist_failed",
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
            | ProxyAdminError::BadEndpoints
            | ProxyAdminError::BadField(_) => StatusCode::BAD_REQUEST,
            ProxyAdminError::Persist(_) => StatusCode::INTERNAL_SERVER_ERROR,
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
    hooks: PlaneHooks,
    /// One change of the routes at a time: saved, then applied.
    changing: Arc<tokio::sync::Mutex<()>>,
}

impl Admin {
    /// Saves the routes a change is about to put in effect (under `changing`): a
    /// change that cannot be saved is refused, not applied.
    fn persist(&self, next: &super::RouteTable) -> Result<(), ProxyAdminError> {
        match &self.hooks.persist {
            Some(save) => save(next).map_err(ProxyAdminError::Persist),
            None => Ok(()),
        }
    }
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
        .route("/counters", guarded().get(counters))
        .route("/counters/measured", guarded().post(measured))
        .route("/salt", guarded().put(salt))
        .route("/uncounted", guarded().put(uncounted))
        .route("/drain", guarded().post(drain))
        .route("/shutdown", guarded().post(shutdown))
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
            .and_then(|v| v.strip_prefix("Bearer "));
        // No credential never passes, even against an empty token (the commands
        // refuse one, but this check stands alone).
        if presented.is_some_and(|p| !p.is_empty() && same(p.as_bytes(), admin.token.as_bytes())) {
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
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
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
    let _one = admin.changing.lock().await;
    let mut next = admin.proxy.table();
    next.weight = weight;
    next.matches.clone_from(&matches);
    admin.persist(&next)?;
    let now = admin.proxy.set_route(weight, &matches);
    Ok(Json(json!({"weight": now})))
}

/// Cumulative counters per variant, for a controller's metrics, and the counts as of
/// the last measurement (`measured`, null before the first).
async fn counters(_: Authorized, State(admin): State<Admin>, _: JsonBody) -> Json<Value> {
    counted(&admin, false)
}

/// [`counters`], the counts it answers kept as the last measurement's.
async fn measured(_: Authorized, State(admin): State<Admin>, _: JsonBody) -> Json<Value> {
    counted(&admin, true)
}

/// The counts now and the last measurement's; `measure`: the counts now become it.
fn counted(admin: &Admin, measure: bool) -> Json<Value> {
    let totals = admin.proxy.totals();
    let mut last = admin
        .hooks
        .measured
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if measure {
        *last = Some(totals.clone());
    }
    Json(json!({
        "instance": admin.proxy.instance(),
        "totals": totals,
        "canary_routed_since_closed": admin.proxy.canary_routed_since_closed(),
        "measured": *last,
    }))
}

async fn salt(
    _: Authorized,
    State(admin): State<Admin>,
    JsonBody(json): JsonBody,
) -> Result<Json<Value>, ProxyAdminError> {
    let salt = json["salt"]
        .as_str()
        .ok_or_else(|| ProxyAdminError::BadField("`salt` must be a string".into()))?;
    let _one = admin.changing.lock().await;
    let mut next = admin.proxy.table();
    next.salt = salt.to_string();
    admin.persist(&next)?;
    admin.proxy.set_salt(salt);
    Ok(Json(describe(&admin.proxy)))
}

/// Sets the token of rampart's own load that counts in no metric: `{"token": "..."}`,
/// empty for none.
async fn uncounted(
    _: Authorized,
    State(admin): State<Admin>,
    JsonBody(json): JsonBody,
) -> Result<Json<Value>, ProxyAdminError> {
    let token = json["token"]
        .as_str()
        .ok_or_else(|| ProxyAdminError::BadField("`token` must be a string".into()))?;
    let _one = admin.changing.lock().await;
    let mut next = admin.proxy.table();
    next.uncounted = token.to_string();
    admin.persist(&next)?;
    admin.proxy.set_uncounted(token);
    Ok(Json(describe(&admin.proxy)))
}

/// Waits until a variant, or some endpoints, have nothing in flight:
/// `{"variant": "stable"}` or `{"endpoints": [...]}`, with `timeout_ms`.
async fn drain(
    _: Authorized,
    State(admin): State<Admin>,
    JsonBody(json): JsonBody,
) -> Result<Json<Value>, ProxyAdminError> {
    let timeout = json["timeout_ms"]
        .as_u64()
        .filter(|ms| *ms <= 3_600_000)
        .map(std::time::Duration::from_millis)
        .ok_or_else(|| {
            ProxyAdminError::BadField("`timeout_ms` must be milliseconds, at most an hour".into())
        })?;
    let drained = match (&json["variant"], &json["endpoints"]) {
        (Value::String(v), Value::Null) => {
            let variant = match v.as_str() {
                "stable" => Variant::Stable,
                "canary" => Variant::Canary,
                other => return Err(ProxyAdminError::UnknownVariant(other.to_string())),
            };
            let (drained, settled) = tokio::join!(
                admin.proxy.drain(variant, timeout),
                settled_within(&admin, InFlight::Variant(variant), timeout)
            );
            json!({"drained": drained && settled, "in_flight": admin.proxy.in_flight(variant)})
        }
        (Value::Null, Value::Array(list)) => {
            let endpoints = list
                .iter()
                .map(|e| e.as_str().unwrap_or("").parse::<SocketAddr>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ProxyAdminError::BadEndpoints)?;
            let (drained, settled) = tokio::join!(
                admin.proxy.drain_endpoints(&endpoints, timeout),
                settled_within(&admin, InFlight::Endpoints(endpoints.clone()), timeout)
            );
            json!({"drained": drained && settled})
        }
        _ => {
            return Err(ProxyAdminError::BadField(
                "name either `variant` or `endpoints`".into(),
            ));
        }
    };
    Ok(Json(drained))
}

/// How often a drain asks the data plane this one took over from what it has in
/// flight, while it has some.
const ASK_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Whether the data plane this one took over from, if one still drains, has nothing
/// in flight to `what` (asked every [`ASK_EVERY`]) or has gone, waiting at most
/// `timeout`. One that does not answer is waited for until it has gone.
async fn settled_within(admin: &Admin, what: InFlight, timeout: std::time::Duration) -> bool {
    let Some(mut settled) = admin.hooks.settled.clone() else {
        return true;
    };
    let ask = admin.hooks.predecessor.clone();
    let wait = async {
        let mut watching = true;
        loop {
            if *settled.borrow_and_update() {
                return;
            }
            if let Some(ask) = &ask {
                let (ask, what) = (ask.clone(), what.clone());
                if let Ok(Some(0)) = tokio::task::spawn_blocking(move || ask(&what)).await {
                    return;
                }
            }
            tokio::select! {
                changed = settled.changed(), if watching => watching = changed.is_ok(),
                () = tokio::time::sleep(ASK_EVERY) => {}
            }
        }
    };
    tokio::time::timeout(timeout, wait).await.is_ok()
}

/// Stops the data plane (`rampart stop`), when it was started as one.
async fn shutdown(_: Authorized, State(admin): State<Admin>, _: JsonBody) -> ProxyAdminErrorOr {
    match &admin.hooks.shutdown {
        Some(stop) => {
            stop.notify_one();
            Ok(Json(json!({"stopping": true})))
        }
        None => Err(ProxyAdminError::NotFound),
    }
}

type ProxyAdminErrorOr = Result<Json<Value>, ProxyAdminError>;

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
    let _one = admin.changing.lock().await;
    let mut next = admin.proxy.table();
    match variant {
        Variant::Stable => next.stable.clone_from(&endpoints),
        Variant::Canary => next.canary.clone_from(&endpoints),
    }
    admin.persist(&next)?;
    admin.proxy.set_backends(variant, &endpoints);
    Ok(Json(describe(&admin.proxy)))
}
