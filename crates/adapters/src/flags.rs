//! The built-in feature flags' moving parts: a router that ramps a flag with the
//! traffic, and the HTTP endpoint applications read flags from.
//!
//! Owns keeping the flag store and the proxy in step (same ramp, same users, same
//! allowlist) and serving flag evaluations. It must not decide anything: the release
//! state machine says when a ramp moves and when flags go off.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, any};
use axum::{Json, Router};
use rampart_core::flags::{FlagState, RELEASE_ACTOR};
use rampart_core::policy::{MatchSource, RouteMatch, Sticky};
use rampart_core::ports::{BoxFuture, Clock, FlagChange, FlagStore, PortError, TrafficRouter};
use rampart_core::{Variant, Weight};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A traffic router that ramps a flag with the canary weight: the flag store's ramp
/// follows every weight, and the flag's allowlist rides along as a match rule, so the
/// users measured as the canary are exactly the users with the flag on.
pub struct FlagRouter {
    inner: Arc<dyn TrafficRouter>,
    flags: Arc<dyn FlagStore>,
    clock: Arc<dyn Clock>,
    service: String,
    flag: String,
    /// A flag-only release: the canary is the same processes as stable.
    flag_only: bool,
    sticky: Sticky,
    /// What the release last wrote, and what it may have written unlogged.
    wrote: std::sync::Mutex<Wrote>,
}

/// What a flag release knows it wrote.
#[derive(Clone, Copy, Debug, Default)]
struct Wrote {
    /// The ramp it last wrote: a lower one in the store since is someone's kill
    /// (`rampart flags set --ramp 0`), which the release never ramps over.
    ramp: Option<Weight>,
    /// A release taken up again, until this router writes: when its log first asked
    /// for a ramp. A ramp someone else set since then is a kill too (the controller
    /// that ramped may have died between its write and its log, so `ramp` may be
    /// short of what it wrote).
    unlogged_since: Option<rampart_core::Millis>,
}

impl std::fmt::Debug for FlagRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlagRouter")
            .field("service", &self.service)
            .field("flag", &self.flag)
            .field("flag_only", &self.flag_only)
            .finish_non_exhaustive()
    }
}

impl FlagRouter {
    /// Wraps `inner` so `flag` of `service` ramps with its weight. The proxy behind
    /// `inner` must hash sticky keys salted with the flag's name.
    pub fn new(
        inner: Arc<dyn TrafficRouter>,
        flags: Arc<dyn FlagStore>,
        clock: Arc<dyn Clock>,
        service: &str,
        flag: &str,
        flag_only: bool,
        sticky: Sticky,
    ) -> FlagRouter {
        FlagRouter {
            inner,
            flags,
            clock,
            service: service.to_string(),
            flag: flag.to_string(),
            flag_only,
            sticky,
            wrote: std::sync::Mutex::new(Wrote::default()),
        }
    }

    /// `Some((written, since))`: a release taken up again by a new controller, whose
    /// log says its last change in force put the ramp at `written` (none: it logged
    /// none), and first asked for a ramp above 0 at `since` (none: it never did).
    /// A lower ramp in the store now is a kill someone made while no controller ran
    /// it, which the release never ramps over (as if this router had written `written`
    /// itself); so is a ramp someone other than a release set since `since`, whatever
    /// the log says (the last controller may have written a ramp and died before
    /// logging it). `None`: a new release, left as it was.
    pub fn resumed(
        self,
        resumed: Option<(Option<Weight>, Option<rampart_core::Millis>)>,
    ) -> FlagRouter {
        if let Some((ramp, unlogged_since)) = resumed {
            *self.wrote.lock().unwrap_or_else(|p| p.into_inner()) = Wrote {
                ramp,
                unlogged_since,
            };
        }
        self
    }

    /// Why raising the ramp to `weight` would undo someone's kill, if it would: the
    /// store's ramp `now` is lower than this release last wrote, or (a resumed release
    /// that has not written yet) someone other than a release set it since its log
    /// first asked for a ramp (while a release ramps a flag, people may only turn it
    /// down).
    fn overrides_a_kill(&self, now: &FlagState, weight: Weight) -> Option<String> {
        if weight <= now.ramp {
            return None;
        }
        let wrote = *self.wrote.lock().unwrap_or_else(|p| p.into_inner());
        match (wrote.ramp, wrote.unlogged_since) {
            (Some(wrote), _) if now.ramp < wrote => Some(format!(
                "flag `{}` was turned down to {} outside the release (it had put it at {wrote}): the release does not ramp it up again over that",
                self.flag, now.ramp
            )),
            (_, Some(since)) if now.changed_at >= since && now.changed_by != RELEASE_ACTOR => {
                Some(format!(
                    "flag `{}` was set to {} by {} while no controller ran the release: the release does not ramp it up again over that",
                    self.flag, now.ramp, now.changed_by
                ))
            }
            _ => None,
        }
    }

    /// The match rule that sends the flag's allowlist to the canary.
    async fn allow_rule(&self) -> Result<Option<RouteMatch>, PortError> {
        let flags = self.flags.flags(&self.service).await?;
        let allow = flags
            .into_iter()
            .find(|f| f.name == self.flag)
            .map(|f| f.allow)
            .unwrap_or_default();
        let source = match &self.sticky {
            Sticky::Header(h) => MatchSource::Header(h.clone()),
            Sticky::Cookie(c) => MatchSource::Cookie(c.clone()),
            Sticky::None | Sticky::ClientIp => return Ok(None),
        };
        Ok((!allow.is_empty()).then_some(RouteMatch {
            source,
            values: allow,
        }))
    }
}

impl TrafficRouter for FlagRouter {
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            self.inner.set_backends(variant, endpoints).await?;
            if self.flag_only && variant == Variant::Stable {
                // The flag-on users are served by the same processes.
                self.inner.set_backends(Variant::Canary, endpoints).await?;
            }
            Ok(())
        })
    }

    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move {
            // Raising the ramp over a kill someone made since this release last wrote
            // it would undo an operator's off switch: the change fails instead (and
            // the release rolls back: its flag goes off, as the operator wanted).
            let wrote = *self.wrote.lock().unwrap_or_else(|p| p.into_inner());
            let watching = wrote.ramp.is_some() || wrote.unlogged_since.is_some();
            if watching && weight > Weight::ZERO {
                let now = self
                    .flags
                    .flags(&self.service)
                    .await?
                    .into_iter()
                    .find(|f| f.name == self.flag);
                if let Some(why) = now.and_then(|f| self.overrides_a_kill(&f, weight)) {
                    return Err(PortError::new(why));
                }
            }
            let change = FlagChange {
                name: self.flag.clone(),
                ramp: Some(weight),
                default: None,
                actor: RELEASE_ACTOR.into(),
                reason: format!("ramped with the release to {weight}"),
                at: self.clock.now(),
            };
            self.flags.set_flag(&self.service, &change).await?;
            *self.wrote.lock().unwrap_or_else(|p| p.into_inner()) = Wrote {
                ramp: Some(weight),
                unlogged_since: None,
            };
            // The allowlist has the flag on at every weight, so its users are the
            // canary's wherever a step sends anyone there: a weight-0 step sends its
            // `match` (a step at 0 % always has one). Only a rollback's 0 % has none:
            // then everyone, the allowlist included, is stable's.
            let mut rules = matches.to_vec();
            if (weight > Weight::ZERO || !matches.is_empty())
                && let Some(rule) = self.allow_rule().await?
            {
                rules.push(rule);
            }
            self.inner.set_weight(weight, &rules).await
        })
    }

    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        self.inner.drain(variant, timeout)
    }

    fn drain_endpoints<'a>(
        &'a self,
        endpoints: &'a [SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        self.inner.drain_endpoints(endpoints, timeout)
    }
}

/// The HTTP endpoint applications read flags from. Dropping it stops it.
#[derive(Debug)]
pub struct FlagServer {
    task: JoinHandle<()>,
    addr: SocketAddr,
}

impl FlagServer {
    /// Binds `listen` and serves `service`'s flags from `store`:
    ///
    /// - `GET /flags`: every flag with its default, ramp and allowlist;
    /// - `GET /flags/NAME?key=KEY`: `{"name", "on", "reason"}` for that key (no key:
    ///   anonymous, which only a 100 % ramp or the default turns on).
    pub async fn bind(
        listen: SocketAddr,
        store: Arc<dyn FlagStore>,
        service: &str,
    ) -> std::io::Result<FlagServer> {
        FlagServer::serve(TcpListener::bind(listen).await?, store, service)
    }

    /// [`FlagServer::bind`] on a listener bound already (a release binds the address
    /// before it touches its service's data plane, and serves on it at once).
    pub fn serve(
        listener: TcpListener,
        store: Arc<dyn FlagStore>,
        service: &str,
    ) -> std::io::Result<FlagServer> {
        let addr = listener.local_addr()?;
        let app = router(Endpoint {
            store,
            service: Arc::from(service),
        });
        let task = tokio::spawn(async move {
            // It only returns when the task is aborted: accept errors are retried.
            let _ = axum::serve(listener, app).await;
        });
        Ok(FlagServer { task, addr })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl FlagServer {
    /// Stops serving and returns once the listening socket is closed.
    pub async fn close(mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for FlagServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why the flag endpoint answered with an error instead of flags. Each variant is a
/// JSON error `{"error": {"code", "message"}}` whose `code` applications may branch on.
#[derive(Debug, thiserror::Error)]
pub enum FlagEndpointError {
    /// Anything but GET: flags change through rampart, which audits the change.
    #[error("flags are read with GET; change them with `rampart flags set`")]
    MethodNotAllowed,
    /// A path outside `/flags`.
    #[error("try GET /flags or GET /flags/NAME?key=KEY")]
    NotFound,
    /// The flag store could not be read; the application should use its default.
    #[error(transparent)]
    StoreUnavailable(PortError),
    /// The service defines no flag of that name.
    #[error("{service} has no flag `{name}`")]
    UnknownFlag {
        /// The service served.
        service: String,
        /// The name asked for, as it appeared in the path.
        name: String,
    },
}

impl FlagEndpointError {
    /// The stable, machine-readable code in the error body.
    pub fn code(&self) -> &'static str {
        match self {
            FlagEndpointError::MethodNotAllowed => "method_not_allowed",
            FlagEndpointError::NotFound => "not_found",
            FlagEndpointError::StoreUnavailable(_) => "store_unavailable",
            FlagEndpointError::UnknownFlag { .. } => "unknown_flag",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            FlagEndpointError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            FlagEndpointError::NotFound | FlagEndpointError::UnknownFlag { .. } => {
                StatusCode::NOT_FOUND
            }
            FlagEndpointError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for FlagEndpointError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code(), "message": self.to_string()}});
        (self.status(), Json(body)).into_response()
    }
}

/// What every request needs: where flags are kept, and whose.
#[derive(Clone)]
struct Endpoint {
    store: Arc<dyn FlagStore>,
    service: Arc<str>,
}

fn router(endpoint: Endpoint) -> Router {
    Router::new()
        .route("/flags", read())
        .route("/flags/", read())
        .route("/flags/{*name}", read())
        .fallback(outside)
        .with_state(endpoint)
}

/// GET answers; every other method is refused with the JSON 405. `any` first, so
/// axum adds no `Allow` header (the endpoint never sent one), and HEAD explicitly,
/// since axum would otherwise answer HEAD with the GET handler.
fn read() -> MethodRouter<Endpoint> {
    any(refuse).get(flags).head(refuse)
}

async fn refuse() -> FlagEndpointError {
    FlagEndpointError::MethodNotAllowed
}

async fn flags(State(e): State<Endpoint>, uri: Uri) -> Result<Json<Value>, FlagEndpointError> {
    let rest = uri.path().strip_prefix("/flags").unwrap_or_default();
    lookup(&e, rest, &uri).await
}

/// Everything the routes miss. The endpoint has always read any path starting with
/// `/flags` as a flag (`/flagsNAME` as `/flags/NAME`), so that stays.
async fn outside(
    State(e): State<Endpoint>,
    method: Method,
    uri: Uri,
) -> Result<Json<Value>, FlagEndpointError> {
    if method != Method::GET {
        return Err(FlagEndpointError::MethodNotAllowed);
    }
    match uri.path().strip_prefix("/flags") {
        Some(rest) => lookup(&e, rest, &uri).await,
        None => Err(FlagEndpointError::NotFound),
    }
}

fn describe(f: &FlagState) -> Value {
    json!({
        "name": f.name,
        "default": f.default,
        "ramp": f.ramp,
        "allow": f.allow,
    })
}

/// Every flag (`rest` empty), or the one named by `rest` evaluated for `?key=`. The
/// name is the raw path: it is not percent-decoded.
async fn lookup(e: &Endpoint, rest: &str, uri: &Uri) -> Result<Json<Value>, FlagEndpointError> {
    let flags = e
        .store
        .flags(&e.service)
        .await
        .map_err(FlagEndpointError::StoreUnavailable)?;
    let name = rest.trim_start_matches('/');
    if name.is_empty() {
        let all: Vec<Value> = flags.iter().map(describe).collect();
        return Ok(Json(json!({"service": &*e.service, "flags": all})));
    }
    let Some(flag) = flags.iter().find(|f| f.name == name) else {
        return Err(FlagEndpointError::UnknownFlag {
            service: e.service.to_string(),
            name: name.to_string(),
        });
    };
    let key = key(uri);
    let e = flag.evaluate(key.as_deref());
    Ok(Json(
        json!({"name": flag.name, "on": e.on, "reason": e.reason}),
    ))
}

/// `?key=`, percent-decoded with `+` as a space; a query that does not parse (it
/// always does) reads as no key.
fn key(uri: &Uri) -> Option<String> {
    Query::<HashMap<String, String>>::try_from_uri(uri)
        .ok()
        .and_then(|Query(mut q)| q.remove("key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_of(query: &str) -> Option<String> {
        key(&format!("/flags/f?{query}").parse().expect("a test URI"))
    }

    /// A router behind the flag's that takes every weight.
    struct Takes;

    impl TrafficRouter for Takes {
        fn set_backends<'a>(
            &'a self,
            _: Variant,
            _: &'a [SocketAddr],
        ) -> BoxFuture<'a, Result<(), PortError>> {
            Box::pin(async { Ok(()) })
        }
        fn set_weight<'a>(
            &'a self,
            weight: Weight,
            _: &'a [RouteMatch],
        ) -> BoxFuture<'a, Result<Weight, PortError>> {
            Box::pin(async move { Ok(weight) })
        }
        fn drain(&self, _: Variant, _: Duration) -> BoxFuture<'_, Result<(), PortError>> {
            Box::pin(async { Ok(()) })
        }
        fn drain_endpoints<'a>(
            &'a self,
            _: &'a [SocketAddr],
            _: Duration,
        ) -> BoxFuture<'a, Result<(), PortError>> {
            Box::pin(async { Ok(()) })
        }
    }

    /// A resumed release, which first asked for a ramp at 1,000, whose log says it put the ramp at `logged`
    /// %, asks for `ask` %: with the flag at `ramp` % set last by `by` at `at`, is it
    /// refused?
    async fn refused(
        by: &str,
        at: rampart_core::Millis,
        logged: Option<u8>,
        ramp: u8,
        ask: u8,
    ) -> bool {
        let percent = |p: u8| Weight::from_percent(p).expect("a percentage");
        let store = Arc::new(
            crate::store::StateStore::in_memory()
                .await
                .expect("a store"),
        );
        let def = rampart_core::flags::FlagDef {
            name: "f".into(),
            default: false,
            allow: Vec::new(),
        };
        store.define("svc", &[def], 0).await.expect("defined");
        if by != "policy" {
            let change = FlagChange {
                name: "f".into(),
                ramp: Some(percent(ramp)),
                default: None,
                actor: by.into(),
                reason: "test".into(),
                at,
            };
            store.set_flag("svc", &change).await.expect("set");
        }
        let router = FlagRouter::new(
            Arc::new(Takes),
            store,
            Arc::new(crate::clock::TokioClock::starting_at(5_000)),
            "svc",
            "f",
            true,
            Sticky::None,
        )
        .resumed(Some((logged.map(percent), Some(1_000))));
        router.set_weight(percent(ask), &[]).await.is_err()
    }

    /// Only someone's change since the release began is a kill: the policy's
    /// definition, a kill before the release, or a release's own ramp are not; and a
    /// turn-down to where the log says the release stood is one too (the release may
    /// have written more and died before logging it).
    #[tokio::test]
    async fn a_resumed_release_ramps_over_nothing_but_a_kill_made_since_it_began() {
        assert!(refused("oncall", 1_000, None, 0, 20).await);
        assert!(refused("oncall", 4_000, None, 0, 20).await);
        assert!(!refused("oncall", 999, None, 0, 20).await);
        assert!(!refused("policy", 0, None, 0, 20).await);
        assert!(!refused(RELEASE_ACTOR, 2_000, None, 0, 20).await);
        assert!(refused("oncall", 2_000, Some(20), 20, 50).await);
        assert!(!refused(RELEASE_ACTOR, 2_000, Some(20), 50, 50).await);
        assert!(!refused(RELEASE_ACTOR, 2_000, Some(20), 20, 50).await);
    }

    #[test]
    fn keys_are_percent_decoded() {
        assert_eq!(key_of("key=user%2042").as_deref(), Some("user 42"));
        assert_eq!(key_of("x=1&key=a+b").as_deref(), Some("a b"));
        assert_eq!(key_of("key=%zz").as_deref(), Some("%zz"));
        assert_eq!(key_of("key=%4").as_deref(), Some("%4"));
        assert_eq!(key_of("key=%2B").as_deref(), Some("+"));
        assert_eq!(key_of("k%65y=v").as_deref(), Some("v"));
        assert_eq!(key_of("key=a&key=b").as_deref(), Some("b"));
        assert_eq!(key_of("key").as_deref(), Some(""));
        assert_eq!(key_of("other=1"), None);
    }
}
