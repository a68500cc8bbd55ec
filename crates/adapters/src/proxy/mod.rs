//! The embedded traffic-splitting proxy: weighted, sticky, measured.
//!
//! Owns the data path between users and the two variants: choosing a variant per
//! request, forwarding it, and counting requests, errors and latency per variant
//! (the `builtin` metrics): the time to response headers, and the total time to the
//! body's last byte (see [`timed`]). It must not decide weights; the controller sets them
//! through [`TrafficRouter`].
//!
//! Guarantees: a weight change swaps one `Arc` and is seen by the next request;
//! requests in flight keep the route they started with, so none is dropped by a
//! change. Sticky assignment hashes a stable key into 10 000 buckets and sends buckets
//! below the weight to the canary, so a user on the canary at 5 % stays there at 20 %.

pub mod admin;
pub mod plane;
pub mod remote;
mod stats;
mod timed;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_core::flags::{bucket, mix};
use rampart_core::metrics::IntervalSample;
use rampart_core::policy::{MatchSource, RouteMatch, Sticky};
use rampart_core::ports::{BoxFuture, MetricsSource, PortError, TrafficRouter};
use rampart_core::release::MeasureWindow;
use rampart_core::{Variant, Weight};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

pub use stats::VariantCounters;
use timed::{Clock, Timed};

/// An upstream's body passed through, or rampart's own short answer, timed to its
/// end: no allocation per response.
type Body = Timed<Either<Incoming, Full<Bytes>>>;

/// The response header that tells which variant answered.
pub const VARIANT_HEADER: &str = "x-rampart-variant";

/// One endpoint and its requests in flight (shared across routing tables, so that an
/// endpoint taken out of rotation can be drained).
#[derive(Debug, Clone)]
struct Backend {
    addr: SocketAddr,
    /// `addr` as a URI authority, parsed once.
    authority: hyper::http::uri::Authority,
    in_flight: Arc<AtomicU64>,
}

#[derive(Debug, Default)]
struct Routes {
    stable: Vec<Backend>,
    canary: Vec<Backend>,
    weight: Weight,
    matches: Vec<RouteMatch>,
    /// Salts the sticky hash: a ramped flag's name, so the canary's users are exactly
    /// the users the flag store puts in the ramp. Empty for plain splitting.
    salt: String,
    /// The token of rampart's own load that must not count (`analysis.load` with
    /// `counts: false`); empty when there is none.
    uncounted: String,
}

#[derive(Debug)]
struct Inner {
    routes: RwLock<Arc<Routes>>,
    sticky: Sticky,
    stable: VariantCounters,
    canary: VariantCounters,
    client: Client<HttpConnector, Incoming>,
    sequence: AtomicU64,
    idle: Notify,
    endpoints: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<AtomicU64>>>,
    /// Woken at every route change (requests waiting for a first backend).
    changed: Notify,
    /// How long a request waits for a backend when its variant has none.
    hold: std::sync::Mutex<Duration>,
    /// Requests routed to the canary when the weight last became 0 with no match rule.
    canary_at_zero: AtomicU64,
    /// Client connections open now.
    connections: AtomicU64,
    /// Set once this proxy handed its socket over: every answer closes its connection.
    retiring: std::sync::atomic::AtomicBool,
    /// Tells this proxy's counters from another's (a restarted data plane counts from
    /// zero again).
    instance: u64,
}

impl Inner {
    fn counters(&self, v: Variant) -> &VariantCounters {
        match v {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        }
    }

    fn routes(&self) -> Arc<Routes> {
        match self.routes.read() {
            Ok(r) => Arc::clone(&r),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut Routes)) -> Arc<Routes> {
        let mut guard = match self.routes.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        let mut next = Routes {
            stable: guard.stable.clone(),
            canary: guard.canary.clone(),
            weight: guard.weight,
            matches: guard.matches.clone(),
            salt: guard.salt.clone(),
            uncounted: guard.uncounted.clone(),
        };
        f(&mut next);
        if next.weight == Weight::ZERO && next.matches.is_empty() && !guard.is_closed() {
            self.canary_at_zero
                .store(self.canary.routed(), Ordering::Release);
        }
        *guard = Arc::new(next);
        self.changed.notify_waiters();
        Arc::clone(&guard)
    }
}

impl Routes {
    /// Whether nothing reaches the canary through these routes.
    fn is_closed(&self) -> bool {
        self.weight == Weight::ZERO && self.matches.is_empty()
    }
}

/// The routes of a proxy, as addresses: what the data plane persists and restores.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RouteTable {
    /// Stable's endpoints.
    pub stable: Vec<SocketAddr>,
    /// The canary's endpoints.
    pub canary: Vec<SocketAddr>,
    /// The canary's share.
    pub weight: Weight,
    /// Rules that send matching requests to the canary whatever the weight.
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// The sticky hash's salt (a ramped flag's name), empty for plain splitting.
    #[serde(default)]
    pub salt: String,
    /// The token that marks rampart's own load as not counted (see
    /// [`Proxy::set_uncounted`]); empty when all requests count.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uncounted: String,
}

/// A running proxy. Cloning shares it; dropping the last [`ProxyServer`] stops it.
#[derive(Debug, Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

/// The accept loop. Dropping it stops accepting connections and closes the open ones
/// once their request in flight is answered.
#[derive(Debug)]
pub struct ProxyServer {
    task: JoinHandle<()>,
    addr: SocketAddr,
    closing: tokio::sync::watch::Sender<bool>,
    /// A second descriptor of the listening socket, to hand it to the next data plane.
    shared: std::os::fd::OwnedFd,
}

impl ProxyServer {
    /// Where the proxy listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, for handing it over to another process.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.shared)
    }

    /// Stops accepting (the listening socket stays open while another process holds
    /// it) and ends the open connections, returning when all have closed or at
    /// `timeout`, when the rest are closed.
    ///
    /// `retire` (a hand-over, where another process serves the address): each
    /// connection answers its next request, or the one in flight, with
    /// `Connection: close` and closes after it, so a client never has an idle
    /// connection closed under a request it is sending. Otherwise (the service
    /// stops): idle connections close at once, busy ones after their answer.
    pub async fn stop_accepting(mut self, proxy: &Proxy, timeout: Duration, retire: bool) {
        proxy.inner.retiring.store(true, Ordering::Release);
        if !retire {
            let _ = self.closing.send(true);
        }
        self.task.abort();
        let _ = (&mut self.task).await;
        let open = async {
            loop {
                let notified = proxy.inner.idle.notified();
                if proxy.inner.connections.load(Ordering::Acquire) == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, open).await;
        let _ = self.closing.send(true);
    }

    /// Stops accepting and returns once the listening socket is closed, so the address
    /// can be bound again at once (dropping only asks the accept loop to stop).
    pub async fn close(mut self) {
        let _ = self.closing.send(true);
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        // Keep-alive clients must not stay on a proxy whose backends are gone: they
        // reconnect, to whatever listens next.
        let _ = self.closing.send(true);
        self.task.abort();
    }
}

impl Proxy {
    /// Binds `listen` and starts serving. With no backends, every request gets 503.
    pub async fn bind(listen: SocketAddr, sticky: Sticky) -> std::io::Result<(Proxy, ProxyServer)> {
        let listener = TcpListener::bind(listen).await?;
        Proxy::serve(listener, sticky, &RouteTable::default(), Duration::ZERO)
    }

    /// Starts serving on a listening socket bound elsewhere (handed over by an earlier
    /// data plane, say), with `routes` in effect and requests held up to `hold` for a
    /// backend, from the first connection accepted.
    pub fn serve(
        listener: TcpListener,
        sticky: Sticky,
        routes: &RouteTable,
        hold: Duration,
    ) -> std::io::Result<(Proxy, ProxyServer)> {
        let addr = listener.local_addr()?;
        let shared = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        let proxy = Proxy {
            inner: Arc::new(Inner {
                routes: RwLock::new(Arc::new(Routes::default())),
                sticky,
                stable: VariantCounters::new(),
                canary: VariantCounters::new(),
                client,
                sequence: AtomicU64::new(0),
                idle: Notify::new(),
                endpoints: std::sync::Mutex::new(std::collections::HashMap::new()),
                changed: Notify::new(),
                hold: std::sync::Mutex::new(hold),
                canary_at_zero: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                retiring: std::sync::atomic::AtomicBool::new(false),
                instance: {
                    let mut raw = [0u8; 8];
                    // Without randomness, the pid still tells most restarts apart.
                    if getrandom::fill(&mut raw).is_err() {
                        raw[..4].copy_from_slice(&std::process::id().to_le_bytes());
                    }
                    u64::from_le_bytes(raw)
                },
            }),
        };
        proxy.restore(routes);
        let serving = proxy.clone();
        let (closing, closed) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move { serving.accept_loop(listener, closed).await });
        Ok((
            proxy,
            ProxyServer {
                task,
                addr,
                closing,
                shared,
            },
        ))
    }

    async fn accept_loop(self, listener: TcpListener, closed: tokio::sync::watch::Receiver<bool>) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "proxy accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let mut closed = closed.clone();
            tokio::spawn(async move {
                let _open = OpenConnection::enter(proxy.inner.clone());
                let svc = service_fn(move |req| {
                    let proxy = proxy.clone();
                    async move { Ok::<_, Infallible>(proxy.forward(peer, req).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                let ended = tokio::select! {
                    ended = conn.as_mut() => ended,
                    _ = closed.changed() => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "proxy connection ended");
                }
            });
        }
    }

    /// A fresh token for [`Proxy::set_uncounted`]: 128 random bits in hex, or `None`
    /// when the system has no randomness to give.
    pub fn fresh_token() -> Option<String> {
        let mut raw = [0u8; 16];
        getrandom::fill(&mut raw).ok()?;
        Some(hex::encode(raw))
    }

    /// Salts the sticky hash with a ramped flag's name (see [`bucket`]).
    pub fn set_salt(&self, salt: &str) {
        self.inner.update(|r| r.salt = salt.to_string());
    }

    /// Requests whose `x-rampart-load` header is exactly `token` (rampart's own load
    /// with `counts: false`) are routed as any other but counted in no metric, and
    /// reach the service with the header's value `1`: the token never leaves the
    /// proxy. Any other value, and an empty token, counts as usual, so no client can
    /// hide its requests without the token.
    pub fn set_uncounted(&self, token: &str) {
        self.inner.update(|r| r.uncounted = token.to_string());
    }

    /// Points `variant` at `endpoints`.
    pub fn set_backends(&self, variant: Variant, endpoints: &[SocketAddr]) {
        let backends = self.backends(endpoints);
        self.inner.update(|r| match variant {
            Variant::Stable => r.stable = backends,
            Variant::Canary => r.canary = backends,
        });
    }

    fn backends(&self, endpoints: &[SocketAddr]) -> Vec<Backend> {
        endpoints
            .iter()
            .filter_map(|addr| {
                // A socket address is always a valid authority.
                let authority = addr.to_string().parse().ok()?;
                Some(Backend {
                    addr: *addr,
                    authority,
                    in_flight: self.endpoint_counter(*addr),
                })
            })
            .collect()
    }

    fn endpoint_counter(&self, addr: SocketAddr) -> Arc<AtomicU64> {
        let mut known = match self.inner.endpoints.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        known.entry(addr).or_default().clone()
    }

    /// Waits until no request is in flight to any of `endpoints`, at most `timeout`.
    pub async fn drain_endpoints(&self, endpoints: &[SocketAddr], timeout: Duration) -> bool {
        let counters: Vec<Arc<AtomicU64>> = endpoints
            .iter()
            .map(|a| self.endpoint_counter(*a))
            .collect();
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if counters.iter().all(|c| c.load(Ordering::Acquire) == 0) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// Sets the canary weight and returns the weight now in effect.
    pub fn set_weight(&self, weight: Weight) -> Weight {
        self.inner.update(|r| r.weight = weight).weight
    }

    /// Sets the weight and the match rules together, in one atomic change.
    pub fn set_route(&self, weight: Weight, matches: &[RouteMatch]) -> Weight {
        self.inner
            .update(|r| {
                r.weight = weight;
                r.matches = matches.to_vec();
            })
            .weight
    }

    /// Makes a request whose variant has no backend wait up to `hold` for one, instead
    /// of answering 503 at once (a data plane started before its first version is
    /// ready).
    pub fn set_hold(&self, hold: Duration) {
        *self.inner.hold.lock().unwrap_or_else(|p| p.into_inner()) = hold;
    }

    /// The routes in effect, as addresses.
    pub fn table(&self) -> RouteTable {
        let r = self.inner.routes();
        RouteTable {
            stable: r.stable.iter().map(|b| b.addr).collect(),
            canary: r.canary.iter().map(|b| b.addr).collect(),
            weight: r.weight,
            matches: r.matches.clone(),
            salt: r.salt.clone(),
            uncounted: r.uncounted.clone(),
        }
    }

    /// Puts `table` in effect, in one change.
    pub fn restore(&self, table: &RouteTable) {
        let stable = self.backends(&table.stable);
        let canary = self.backends(&table.canary);
        self.inner.update(|r| {
            r.stable = stable;
            r.canary = canary;
            r.weight = table.weight;
            r.matches = table.matches.clone();
            r.salt = table.salt.clone();
            r.uncounted = table.uncounted.clone();
        });
    }

    /// This proxy's counters' identity: another value means counting started again.
    pub fn instance(&self) -> u64 {
        self.inner.instance
    }

    /// How requests are kept on one variant.
    pub fn sticky(&self) -> &Sticky {
        &self.inner.sticky
    }

    /// Requests routed to the canary since the weight last became 0 with no match rule
    /// (after a rollback: none, if the rollback held).
    pub fn canary_routed_since_closed(&self) -> Option<u64> {
        self.inner.routes().is_closed().then(|| {
            self.routed(Variant::Canary)
                .saturating_sub(self.inner.canary_at_zero.load(Ordering::Acquire))
        })
    }

    /// The canary weight in effect.
    pub fn weight(&self) -> Weight {
        self.inner.routes().weight
    }

    /// Cumulative counters for both variants since the proxy started.
    pub fn totals(&self) -> IntervalSample {
        IntervalSample {
            stable: self.inner.stable.snapshot(),
            canary: self.inner.canary.snapshot(),
            ..Default::default()
        }
    }

    /// Requests routed to `variant` since the proxy started.
    pub fn routed(&self, variant: Variant) -> u64 {
        self.inner.counters(variant).routed()
    }

    /// Requests in flight to `variant`.
    pub fn in_flight(&self, variant: Variant) -> u64 {
        self.inner.counters(variant).in_flight()
    }

    /// Waits until `variant` has nothing in flight, at most `timeout`.
    pub async fn drain(&self, variant: Variant, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.in_flight(variant) == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    fn choose(&self, routes: &Routes, peer: SocketAddr, req: &Request<Incoming>) -> Variant {
        if routes.canary.is_empty() {
            return Variant::Stable;
        }
        if routes.matches.iter().any(|m| matches(m, req)) {
            return Variant::Canary;
        }
        let bp = routes.weight.basis_points();
        if bp == 0 {
            return Variant::Stable;
        }
        if bp >= 10_000 || routes.stable.is_empty() {
            return Variant::Canary;
        }
        match sticky_key(&self.inner.sticky, peer, req) {
            Some(k) => sticky_variant(&routes.salt, &k, bp),
            // No key: spread requests evenly, independently of each other.
            None => {
                let spread = mix(self.inner.sequence.fetch_add(1, Ordering::Relaxed)) % 10_000;
                if spread < u64::from(bp) {
                    Variant::Canary
                } else {
                    Variant::Stable
                }
            }
        }
    }

    /// The routes and the variant for `req`; when that variant has no backend, waits
    /// (up to the hold) for a route change that gives it one.
    async fn route(&self, peer: SocketAddr, req: &Request<Incoming>) -> (Arc<Routes>, Variant) {
        let hold = *self.inner.hold.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = tokio::time::Instant::now() + hold;
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let routes = self.inner.routes();
            let variant = self.choose(&routes, peer, req);
            let empty = match variant {
                Variant::Stable => routes.stable.is_empty(),
                Variant::Canary => routes.canary.is_empty(),
            };
            if !empty || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return (routes, variant);
            }
        }
    }

    async fn forward(&self, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Body> {
        let (routes, variant) = self.route(peer, &req).await;
        let backends = match variant {
            Variant::Stable => &routes.stable,
            Variant::Canary => &routes.canary,
        };
        if backends.is_empty() {
            return plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "rampart: no backend is ready\n",
            );
        }
        let n = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        let picked = &backends[usize::try_from(n).unwrap_or(0) % backends.len()];
        let backend = picked.addr;
        let mut parts = hyper::http::uri::Parts::default();
        parts.scheme = Some(hyper::http::uri::Scheme::HTTP);
        parts.authority = Some(picked.authority.clone());
        parts.path_and_query = Some(
            req.uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/")),
        );
        let Ok(uri) = Uri::from_parts(parts) else {
            return plain(StatusCode::BAD_REQUEST, "rampart: bad request target\n");
        };
        *req.uri_mut() = uri;
        let forwarded = match req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) => format!("{prev}, {}", peer.ip()),
            None => peer.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded) {
            req.headers_mut()
                .insert(HeaderName::from_static("x-forwarded-for"), v);
        }

        // rampart's own load that must not count: the token is swapped for `1`.
        let load = HeaderName::from_static(rampart_core::policy::LOAD_HEADER);
        let uncounted = !routes.uncounted.is_empty()
            && req
                .headers()
                .get(&load)
                .is_some_and(|v| v.as_bytes() == routes.uncounted.as_bytes());
        if uncounted {
            req.headers_mut()
                .insert(load, HeaderValue::from_static("1"));
        } else if !routes.uncounted.is_empty() {
            // While rampart's load is marked, only it reaches the service marked: a
            // client's own mark is dropped, so the service can trust the header.
            req.headers_mut().remove(&load);
        }
        let counters = self.inner.counters(variant);
        let _flight = counters.enter(&self.inner.idle);
        let _endpoint = EndpointFlight::enter(picked.in_flight.clone(), &self.inner.idle);
        let started = tokio::time::Instant::now();
        let result = self.inner.client.request(req).await;
        let elapsed = started.elapsed();
        let mut resp = match result {
            Ok(resp) if uncounted => resp.map(|body| Timed::untimed(Either::Left(body))),
            Ok(resp) => {
                counters.record(resp.status().is_server_error(), elapsed);
                // The total time, from the same start, is recorded when the body is done.
                let clock = Clock::new(Arc::clone(&self.inner), variant, started);
                resp.map(|body| Timed::new(Either::Left(body), clock))
            }
            Err(e) => {
                tracing::debug!(error = %e, variant = variant.as_str(), %backend, "upstream failed");
                // No version answered: an error, and in neither latency (as nginx and
                // HAProxy log it), so the proxy never times its own 502.
                if !uncounted {
                    counters.record_logged(true, None, None);
                }
                plain_body(StatusCode::BAD_GATEWAY, "rampart: upstream unavailable\n")
                    .map(Timed::untimed)
            }
        };
        resp.headers_mut().insert(
            HeaderName::from_static(VARIANT_HEADER),
            HeaderValue::from_static(variant.as_str()),
        );
        if self.inner.retiring.load(Ordering::Acquire) {
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}

/// Counts an open client connection until dropped.
struct OpenConnection(Arc<Inner>);

impl OpenConnection {
    fn enter(inner: Arc<Inner>) -> Self {
        inner.connections.fetch_add(1, Ordering::AcqRel);
        OpenConnection(inner)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// Counts a request in flight to one endpoint until dropped.
struct EndpointFlight<'a> {
    counter: Arc<AtomicU64>,
    idle: &'a Notify,
}

impl<'a> EndpointFlight<'a> {
    fn enter(counter: Arc<AtomicU64>, idle: &'a Notify) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        EndpointFlight { counter, idle }
    }
}

impl Drop for EndpointFlight<'_> {
    fn drop(&mut self) {
        if self.counter.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// rampart's own short answer, not timed (no version was asked).
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    plain_body(status, text).map(Timed::untimed)
}

/// rampart's own short answer, before it is wrapped.
fn plain_body(status: StatusCode, text: &'static str) -> Response<Either<Incoming, Full<Bytes>>> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp
}

fn cookie<'a>(req: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    req.headers()
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn matches(rule: &RouteMatch, req: &Request<Incoming>) -> bool {
    let value: Option<&[u8]> = match &rule.source {
        MatchSource::Header(name) => req.headers().get(name.as_str()).map(|v| v.as_bytes()),
        MatchSource::Cookie(name) => cookie(req, name).map(str::as_bytes),
    };
    match value {
        None => false,
        Some(v) => rule.values.is_empty() || rule.values.iter().any(|want| want.as_bytes() == v),
    }
}

/// The variant of a request with sticky key `key` at `bp` basis points of canary
/// weight: its bucket (salted, independent of the weight) below the weight is the
/// canary, so raising the weight only ever adds keys to the canary.
fn sticky_variant(salt: &str, key: &[u8], bp: u16) -> Variant {
    if bucket(salt, key) < bp {
        Variant::Canary
    } else {
        Variant::Stable
    }
}

fn sticky_key(sticky: &Sticky, peer: SocketAddr, req: &Request<Incoming>) -> Option<Vec<u8>> {
    match sticky {
        Sticky::None => None,
        Sticky::ClientIp => Some(peer.ip().to_string().into_bytes()),
        Sticky::Header(name) => req
            .headers()
            .get(name.as_str())
            .map(|v| v.as_bytes().to_vec()),
        Sticky::Cookie(name) => cookie(req, name).map(|v| v.as_bytes().to_vec()),
    }
}

/// The proxy as the controller's traffic router.
impl TrafficRouter for Proxy {
    fn set_backends<'a>(
        &'a self,
        variant: Variant,
        endpoints: &'a [SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            Proxy::set_backends(self, variant, endpoints);
            Ok(())
        })
    }

    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        matches: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        Box::pin(async move { Ok(Proxy::set_route(self, weight, matches)) })
    }

    fn drain_endpoints<'a>(
        &'a self,
        endpoints: &'a [SocketAddr],
        timeout: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async move {
            if Proxy::drain_endpoints(self, endpoints, timeout).await {
                Ok(())
            } else {
                Err(PortError::new(format!(
                    "requests still in flight to retired endpoints after {}ms",
                    timeout.as_millis()
                )))
            }
        })
    }

    fn drain(&self, variant: Variant, timeout: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async move {
            if Proxy::drain(self, variant, timeout).await {
                Ok(())
            } else {
                Err(PortError::new(format!(
                    "{} request(s) still in flight to {} after {}ms",
                    self.in_flight(variant),
                    variant.as_str(),
                    timeout.as_millis()
                )))
            }
        })
    }
}

/// Something that counts both variants' requests cumulatively.
pub trait Totals: Send + Sync {
    /// Cumulative counters for both variants.
    fn totals(&self) -> IntervalSample;
}

impl Totals for Proxy {
    fn totals(&self) -> IntervalSample {
        Proxy::totals(self)
    }
}

/// The `builtin` metrics source: what rampart's own data path counted (the embedded
/// proxy, or the request log nginx or HAProxy send it), per interval.
#[derive(Debug)]
pub struct BuiltinMetrics<T: Totals = Proxy> {
    counted: T,
    last: std::sync::Mutex<IntervalSample>,
}

impl<T: Totals> BuiltinMetrics<T> {
    /// Measures `counted`, starting from now.
    pub fn new(counted: T) -> Self {
        let last = std::sync::Mutex::new(counted.totals());
        BuiltinMetrics { counted, last }
    }
}

impl<T: Totals> MetricsSource for BuiltinMetrics<T> {
    /// What was counted since the previous call: counters have no history to query, so
    /// the window is the time between calls.
    fn measure<'a>(
        &'a self,
        _window: &'a MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        Box::pin(async move {
            let now = self.counted.totals();
            let mut last = self
                .last
                .lock()
                .map_err(|_| PortError::new("metrics state poisoned"))?;
            let delta = IntervalSample {
                stable: now.stable.since(&last.stable),
                canary: now.canary.since(&last.canary),
                ..Default::default()
            };
            *last = now;
            Ok(delta)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden assignments, computed once from the shipped hash: a user's variant must
    /// never change across rampart versions or machines (a user would flip between
    /// versions mid-session), so any change to hashing or bucketing fails here.
    #[test]
    fn known_keys_land_in_known_buckets_and_variants() {
        let keys = [
            ("", ""),
            ("", "user-1"),
            ("", "alice"),
            ("", "10.0.0.7"),
            ("new-checkout", "user-1"),
            ("new-checkout", "alice"),
        ];
        let buckets: Vec<u16> = keys
            .iter()
            .map(|(salt, key)| bucket(salt, key.as_bytes()))
            .collect();
        assert_eq!(buckets, [6203, 7624, 572, 924, 8393, 4245]);
        // At 5 %, 20 % and 50 %: which of user-0..user-9 are on the canary.
        let canary_at = |salt: &str, bp: u16| -> Vec<usize> {
            (0..10)
                .filter(|u| {
                    sticky_variant(salt, format!("user-{u}").as_bytes(), bp) == Variant::Canary
                })
                .collect()
        };
        let got: Vec<Vec<usize>> = [500, 2_000, 5_000]
            .iter()
            .flat_map(|bp| [canary_at("", *bp), canary_at("new-checkout", *bp)])
            .collect();
        let want: Vec<Vec<usize>> = vec![
            vec![],
            vec![],
            vec![0],
            vec![5],
            vec![0, 4, 5, 8, 9],
            vec![4, 5, 9],
        ];
        assert_eq!(got, want);
    }

    proptest::proptest! {
        /// The proxy's sticky promise, through the function the proxy routes with: a
        /// key on the canary at one weight is on the canary at every higher weight,
        /// for any salt. An implementation that hashed the weight in, or re-drew
        /// buckets per weight, breaks it.
        #[test]
        fn a_key_on_the_canary_stays_there_at_every_higher_weight(
            salt in "[a-z-]{0,12}",
            key in proptest::collection::vec(proptest::num::u8::ANY, 0..24),
            low in 0u16..=10_000,
            high in 0u16..=10_000,
        ) {
            let (low, high) = (low.min(high), low.max(high));
            if sticky_variant(&salt, &key, low) == Variant::Canary {
                proptest::prop_assert_eq!(
                    sticky_variant(&salt, &key, high),
                    Variant::Canary,
                    "on the canary at {} bp, back on stable at {} bp", low, high
                );
            }
            // And the other way round: off the canary at the higher weight means off
            // at the lower one.
            if sticky_variant(&salt, &key, high) == Variant::Stable {
                proptest::prop_assert_eq!(sticky_variant(&salt, &key, low), Variant::Stable);
            }
        }

        /// The canary's users are the flag's users: with the flag's name as the salt,
        /// the proxy sends a key to the canary exactly when the flag store turns the
        /// flag on for it at the same ramp.
        #[test]
        fn the_canary_is_exactly_the_flags_ramp(
            key in "[a-zA-Z0-9-]{1,16}",
            bp in 1u16..10_000,
        ) {
            let flag = rampart_core::flags::FlagState {
                name: "new-checkout".into(),
                default: false,
                ramp: Weight::from_basis_points(bp).expect("a weight below 100 %"),
                allow: Vec::new(),
            };
            proptest::prop_assert_eq!(
                sticky_variant("new-checkout", key.as_bytes(), bp) == Variant::Canary,
                flag.evaluate(Some(&key)).on
            );
        }
    }

    #[test]
    fn hashing_spreads_keys_evenly() {
        let n = 20_000u32;
        let on = (0..n)
            .filter(|u| bucket("", format!("user-{u}").as_bytes()) < 1000)
            .count();
        let share = on as f64 / f64::from(n);
        assert!((share - 0.10).abs() < 0.01, "{share}");
    }
}
