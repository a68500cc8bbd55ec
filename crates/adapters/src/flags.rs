//! The built-in feature flags' moving parts: a router that ramps a flag with the
//! traffic, and the HTTP endpoint applications read flags from.
//!
//! Owns keeping the flag store and the proxy in step (same ramp, same users, same
//! allowlist) and serving flag evaluations. It must not decide anything: the release
//! state machine says when a ramp moves and when flags go off.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use rampart_core::flags::FlagState;
use rampart_core::policy::{MatchSource, RouteMatch, Sticky};
use rampart_core::ports::{BoxFuture, Clock, FlagChange, FlagStore, PortError, TrafficRouter};
use rampart_core::{Variant, Weight};
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
            let change = FlagChange {
                name: self.flag.clone(),
                ramp: Some(weight),
                default: None,
                actor: "rampart".into(),
                reason: format!("ramped with the release to {weight}"),
                at: self.clock.now(),
            };
            self.flags.set_flag(&self.service, &change).await?;
            let mut rules = matches.to_vec();
            if weight > Weight::ZERO
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
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let service: Arc<str> = Arc::from(service);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (store, service) = (Arc::clone(&store), Arc::clone(&service));
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (store, service) = (Arc::clone(&store), Arc::clone(&service));
                        async move { Ok::<_, Infallible>(answer(&*store, &service, &req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
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

fn json(status: StatusCode, value: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(value.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    json(
        status,
        &serde_json::json!({"error": {"code": code, "message": message}}),
    )
}

fn describe(f: &FlagState) -> serde_json::Value {
    serde_json::json!({
        "name": f.name,
        "default": f.default,
        "ramp": f.ramp,
        "allow": f.allow,
    })
}

async fn answer(
    store: &dyn FlagStore,
    service: &str,
    req: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "flags are read with GET; change them with `rampart flags set`",
        );
    }
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/flags") else {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "try GET /flags or GET /flags/NAME?key=KEY",
        );
    };
    let flags = match store.flags(service).await {
        Ok(f) => f,
        // The store is unreachable: say so, and let the application use its default.
        Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, "store_unavailable", &e.0),
    };
    let name = rest.trim_start_matches('/');
    if name.is_empty() {
        let all: Vec<serde_json::Value> = flags.iter().map(describe).collect();
        return json(
            StatusCode::OK,
            &serde_json::json!({"service": service, "flags": all}),
        );
    }
    let Some(flag) = flags.iter().find(|f| f.name == name) else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_flag",
            &format!("{service} has no flag `{name}`"),
        );
    };
    let query = parse_query(req.uri().query().unwrap_or(""));
    let key = query.get("key").map(String::as_str);
    let e = flag.evaluate(key);
    json(
        StatusCode::OK,
        &serde_json::json!({"name": flag.name, "on": e.on, "reason": e.reason}),
    )
}

/// `a=b&c=d` with percent-decoding (and `+` as a space).
fn parse_query(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (decode(k), decode(v)))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_decoded() {
        let q = parse_query("key=user%2042&x=a+b&bad=%zz&end=%4");
        assert_eq!(q["key"], "user 42");
        assert_eq!(q["x"], "a b");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
