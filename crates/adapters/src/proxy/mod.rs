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
//! A client cannot hold it: every connection is bounded in time, head size, body
//! size and number, and a request body's silence in time (see [`ProxyLimits`] and
//! [`limits`]); what a client's fault costs is counted apart, never against a
//! version. With `traffic.proxy.tls` it terminates TLS first (see [`tls`]); the
//! handshake is bounded by the header timeout and its failures are counted apart too.
//!
//! One listener serves HTTP/1.1 and HTTP/2: over TLS as ALPN agreed, in plain text
//! by the connection's first bytes (HTTP/2 with prior knowledge, see [`h2`]). Each
//! HTTP/2 stream is a request, routed and counted as an HTTP/1.1 request is, and every
//! limit holds for it. The versions are spoken to in HTTP/1.1 or h2c, as the policy
//! says (see [`upstream`]). A gRPC call is counted at its end, by its `grpc-status`
//! (see [`grpc`] and [`timed`]).
//!
//! An HTTP/1.1 upgrade (WebSocket and any other protocol but h2c) is routed like any
//! request; once the chosen version answers 101, the connection becomes a tunnel of
//! bytes to that version for its life (see `Proxy::tunnel`): a later weight change
//! moves new upgrades, never an open tunnel.
//!
//! Every forwarded request carries the proxy's forwarding headers (see `forwarded.rs`):
//! a client's own are believed only from a peer `traffic.proxy.forwarded.trust` names.

/// `AsyncWrite` for a wrapper `$t<I>` of an `io: I` that only watches reads: every
/// write goes straight through.
macro_rules! write_through {
    ($t:ident) => {
        impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $t<I> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}

mod addrhash;
pub mod admin;
mod exchange;
mod forwarded;
mod grpc;
mod h2;
mod http1;
mod lean;
mod limits;
mod park;
pub mod plane;
pub mod remote;
mod replay;
mod stats;
mod timed;
#[cfg(feature = "tls")]
pub mod tls;
mod tunnel;
mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{Either, Full, LengthLimitError, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rampart_core::flags::{bucket, mix};
use rampart_core::metrics::IntervalSample;
use rampart_core::policy::{MatchSource, ProxyLimits, RouteMatch, Sticky, Trust, UpstreamProtocol};
use rampart_core::ports::{BoxFuture, MetricsSource, PortError, TrafficRouter};
use rampart_core::release::MeasureWindow;
use rampart_core::{Variant, Weight};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use limits::{BodyDeadline, FaultSlot};
pub use limits::{files_needed, raise_open_files_limit};
pub use stats::VariantCounters;
use timed::{Clock, Timed, Waiting};

/// hyper's smallest read buffer (`max_buf_size` panics below it).
const MIN_BUF: usize = 8192;

/// How long closing a parked connection may take (a TLS one writes `close_notify`).
const CLOSE_PATIENCE: Duration = Duration::from_secs(1);

/// The most an HTTP/2 stream buffers of a response its client is not reading.
const SEND_BUFFER_PER_STREAM: usize = 64 * 1024;

/// An upstream's body passed through, or rampart's own short answer, timed to its
/// end: no allocation per response.
type Body = Timed<Either<upstream::Answer, Full<Bytes>>>;

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
    /// The versions' side, in the policy's protocol. Clients' bodies go upstream
    /// through `Limited` (`max_body_bytes`) and a read deadline (`body_timeout`).
    upstream: upstream::Upstream<Scrubbed<BodyDeadline<Limited<Incoming>>>>,
    /// The lean path's connections to the versions, when they speak HTTP/1.1 (see
    /// `lean`).
    lean: Option<lean::Pool>,
    sequence: AtomicU64,
    idle: Notify,
    endpoints: std::sync::Mutex<std::collections::HashMap<SocketAddr, Arc<AtomicU64>>>,
    /// Woken at every route change (requests waiting for a first backend).
    changed: Notify,
    /// How long a request waits for a backend when its variant has none.
    hold: std::sync::Mutex<Duration>,
    /// Requests waiting now for a backend (the hold).
    held: AtomicU64,
    /// Requests routed to the canary when the weight last became 0 with no match rule.
    canary_at_zero: AtomicU64,
    /// Client connections open now.
    connections: AtomicU64,
    /// Client connections answered 503 and closed at `max_connections`.
    refused: AtomicU64,
    /// Request bodies cut at `body_timeout` (the client stalled in its body): answered
    /// 408, unless the version had answered already.
    body_timeouts: Arc<AtomicU64>,
    /// HTTP/2 streams in flight beyond their connection's first, each holding an
    /// upstream connection (an open file): at most `max_connections` (see
    /// `UpstreamSlot`).
    upstream_in_use: AtomicU64,
    /// HTTP/2 streams answered 503 because `upstream_in_use` was at its bound.
    refused_requests: AtomicU64,
    /// HTTP/1 connections parked while idle, so far (see `park`).
    parked: AtomicU64,
    /// What one client may hold of the proxy.
    limits: ProxyLimits,
    /// Whose forwarding headers are believed (`traffic.proxy.forwarded.trust`).
    trust: Trust,
    /// Set once this proxy handed its socket over: every HTTP/1 answer closes its
    /// connection, and every HTTP/2 connection is sent GOAWAY.
    retiring: tokio::sync::watch::Sender<bool>,
    /// Becomes `true` at the drain's deadline (or when the server is dropped): upgraded
    /// connections, which no HTTP timer bounds, are cut then.
    cut: tokio::sync::watch::Receiver<bool>,
    /// Tells this proxy's counters from another's (a restarted data plane counts from
    /// zero again).
    instance: u64,
    /// TLS termination, when `traffic.proxy.tls` is set.
    #[cfg(feature = "tls")]
    tls: Option<Arc<tls::TlsTerminator>>,
}

/// What the request path knows of the client connection a request came on.
#[derive(Clone, Copy, Debug)]
struct ClientConn {
    peer: SocketAddr,
    /// Whether the client spoke TLS to the proxy (for `X-Forwarded-Proto` and logs).
    tls: bool,
}

/// Whether `b` may be in a token, a field name among them (RFC 9110 5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl Inner {
    /// `max_header_bytes` as a buffer size.
    fn max_head(&self) -> usize {
        usize::try_from(self.limits.max_header_bytes).unwrap_or(usize::MAX)
    }

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
        let routed: std::collections::HashSet<SocketAddr> = next
            .stable
            .iter()
            .chain(&next.canary)
            .map(|b| b.addr)
            .collect();
        if let Some(lean) = &self.lean {
            lean.retain(routed.clone());
        }
        self.upstream.retain(routed);
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
    /// `variant`'s backends.
    fn of(&self, variant: Variant) -> &[Backend] {
        match variant {
            Variant::Stable => &self.stable,
            Variant::Canary => &self.canary,
        }
    }

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
    /// Cuts the upgraded connections (see `Inner::cut`).
    cut: tokio::sync::watch::Sender<bool>,
    /// A second descriptor of the listening socket, to hand it to the next data plane;
    /// `None` once [`ProxyServer::stop_accepting`] has let go of it.
    shared: Option<std::os::fd::OwnedFd>,
}

impl ProxyServer {
    /// Where the proxy listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The listening socket, for handing it over to another process.
    pub fn listener_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        // Only `stop_accepting`, which consumes the server, lets go of it.
        #[allow(clippy::expect_used)]
        std::os::fd::AsFd::as_fd(self.shared.as_ref().expect("held until the server stops"))
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
    ///
    /// Either way this process's listening socket closes first, so a client that
    /// connects meanwhile is refused at once (or, after a hand-over, served by the
    /// other process) instead of waiting in a backlog nobody accepts from.
    pub async fn stop_accepting(mut self, proxy: &Proxy, timeout: Duration, retire: bool) {
        proxy.inner.retiring.send_replace(true);
        self.task.abort();
        let _ = (&mut self.task).await;
        drop(self.shared.take());
        if !retire {
            let _ = self.closing.send(true);
        }
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
        // An upgraded connection has no request to finish: it is cut at the deadline.
        self.cut.send_replace(true);
    }

    /// Stops accepting and returns once the listening socket is closed, so the address
    /// can be bound again at once (dropping only asks the accept loop to stop).
    pub async fn close(mut self) {
        let _ = self.closing.send(true);
        self.cut.send_replace(true);
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

impl Drop for ProxyServer {
    fn drop(&mut self) {
        // Keep-alive clients must not stay on a proxy whose backends are gone: they
        // reconnect, to whatever listens next.
        let _ = self.closing.send(true);
        self.cut.send_replace(true);
        self.task.abort();
    }
}

/// How a proxy serves: everything but its listening socket. The default is plain
/// HTTP, no stickiness, the default [`ProxyLimits`], no forwarding headers believed,
/// no routes (every request gets 503) and no hold.
#[derive(Debug, Default)]
pub struct ProxyOptions {
    /// How a request is pinned to one variant (`traffic.proxy.sticky`).
    pub sticky: Sticky,
    /// What one client may hold of the proxy (`traffic.proxy.limits`).
    pub limits: ProxyLimits,
    /// Whose forwarding headers are believed (`traffic.proxy.forwarded.trust`).
    pub forwarded: Trust,
    /// The routes in effect from the first connection accepted (those an earlier data
    /// plane saved, say).
    pub routes: RouteTable,
    /// How long a request waits for a backend when its variant has none (see
    /// [`Proxy::set_hold`]).
    pub hold: Duration,
    /// Terminates TLS (`traffic.proxy.tls`), its certificates reloaded when their
    /// files change while the server runs; `None` serves plain HTTP.
    #[cfg(feature = "tls")]
    pub tls: Option<tls::TlsTerminator>,
    /// The protocol spoken to the versions (`traffic.proxy.upstream_protocol`).
    pub upstream: UpstreamProtocol,
}

impl Proxy {
    /// Binds `listen` and starts serving it with `options`.
    pub async fn bind(
        listen: SocketAddr,
        options: ProxyOptions,
    ) -> std::io::Result<(Proxy, ProxyServer)> {
        let listener = TcpListener::bind(listen).await?;
        Proxy::serve(listener, options)
    }

    /// Starts serving on a listening socket bound elsewhere (handed over by an earlier
    /// data plane, say) with `options`.
    pub fn serve(
        listener: TcpListener,
        options: ProxyOptions,
    ) -> std::io::Result<(Proxy, ProxyServer)> {
        let ProxyOptions {
            sticky,
            limits,
            forwarded: trust,
            routes,
            hold,
            #[cfg(feature = "tls")]
            tls,
            upstream,
        } = options;
        let addr = listener.local_addr()?;
        let shared = std::os::fd::AsFd::as_fd(&listener).try_clone_to_owned()?;
        let (cut, uncut) = tokio::sync::watch::channel(false);
        let proxy = Proxy {
            inner: Arc::new(Inner {
                routes: RwLock::new(Arc::new(Routes::default())),
                sticky,
                stable: VariantCounters::new(),
                canary: VariantCounters::new(),
                upstream: upstream::Upstream::new(upstream),
                lean: (upstream == UpstreamProtocol::Http1)
                    .then(|| lean::Pool::new(upstream::CONNECT_TIMEOUT)),
                sequence: AtomicU64::new(0),
                idle: Notify::new(),
                endpoints: std::sync::Mutex::new(std::collections::HashMap::new()),
                changed: Notify::new(),
                hold: std::sync::Mutex::new(hold),
                canary_at_zero: AtomicU64::new(0),
                connections: AtomicU64::new(0),
                refused: AtomicU64::new(0),
                body_timeouts: Arc::default(),
                upstream_in_use: AtomicU64::new(0),
                refused_requests: AtomicU64::new(0),
                parked: AtomicU64::new(0),
                held: AtomicU64::new(0),
                limits,
                trust,
                retiring: tokio::sync::watch::Sender::new(false),
                cut: uncut,
                instance: {
                    let mut raw = [0u8; 8];
                    // Without randomness, the pid still tells most restarts apart.
                    if getrandom::fill(&mut raw).is_err() {
                        raw[..4].copy_from_slice(&std::process::id().to_le_bytes());
                    }
                    u64::from_le_bytes(raw)
                },
                #[cfg(feature = "tls")]
                tls: tls.map(Arc::new),
            }),
        };
        proxy.restore(&routes);
        let serving = proxy.clone();
        let (closing, closed) = tokio::sync::watch::channel(false);
        // The certificates are watched while the accept loop runs, and no longer.
        #[cfg(feature = "tls")]
        let watch = proxy.inner.tls.clone().map(|t| AbortOnDrop(t.watch()));
        let task = tokio::spawn(async move {
            #[cfg(feature = "tls")]
            let _watch = watch;
            serving.accept_loop(listener, closed).await
        });
        Ok((
            proxy,
            ProxyServer {
                task,
                addr,
                closing,
                cut,
                shared: Some(shared),
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
            let opened = tokio::time::Instant::now();
            // Over the limit: a 503 and a close now, never a wait in a queue.
            let Some(open) = OpenConnection::admit(&self.inner) else {
                limits::refuse(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let proxy = self.clone();
            let closed = closed.clone();
            // Shared with the connection's tunnel, if it is upgraded: a tunnel is still
            // this connection, counted until it closes.
            let open = Arc::new(open);
            tokio::spawn(async move {
                // Boxed: a TLS handshake's state is several KiB, and an idle plain
                // connection's task would hold room for it for its whole life.
                #[cfg(feature = "tls")]
                if let Some(tls) = proxy.inner.tls.clone() {
                    Box::pin(proxy.handshake(&tls, stream, peer, closed, open)).await;
                    return;
                }
                let conn = ClientConn { peer, tls: false };
                proxy.serve_plain(stream, conn, closed, open, opened).await;
            });
        }
    }

    /// Terminates TLS on `stream`, then serves it in the protocol ALPN agreed. The
    /// handshake must be done within the header timeout (a client that connects and
    /// never says hello is closed, as one that never sends a head is), and a failed one
    /// closes this connection only, counted apart from every version's errors.
    #[cfg(feature = "tls")]
    async fn handshake(
        self,
        tls: &tls::TlsTerminator,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        closed: tokio::sync::watch::Receiver<bool>,
        open: Arc<OpenConnection>,
    ) {
        let header = self.inner.limits.header_timeout;
        // A stop meanwhile does not cut the handshake: its client connected before the
        // stop, and its first request is answered (within the header timeout, as ever).
        let accepted = tokio::time::timeout(
            header,
            tls.acceptor().accept(limits::SendDeadline::new(
                stream,
                self.inner.limits.send_timeout,
            )),
        )
        .await;
        match accepted {
            Ok(Ok(stream)) => {
                let conn = ClientConn { peer, tls: true };
                // The request head has its own header timeout, from here.
                let opened = tokio::time::Instant::now();
                let reads = Arc::new(AtomicU64::new(0));
                let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                let io = limits::Watched::new(stream, reads.clone());
                if h2 {
                    self.serve_http2(io, conn, closed, open, opened).await;
                } else if self.inner.lean.is_some() {
                    Box::pin(self.serve_lean(io, reads, conn, closed, open, opened)).await;
                } else {
                    self.serve_http1(io, reads, conn, closed, open, opened, &[])
                        .await;
                }
            }
            Ok(Err(e)) => {
                tls.count_failure();
                tracing::debug!(error = %e, %peer, "proxy TLS handshake failed");
            }
            Err(_) => {
                tls.count_failure();
                tracing::debug!(%peer, "proxy TLS handshake timed out");
            }
        }
    }

    /// Serves a plain connection in the protocol its first bytes say: HTTP/2 when they
    /// are its preface, HTTP/1 otherwise. Those bytes must come within the header
    /// timeout, as a request head must.
    async fn serve_plain(
        self,
        stream: tokio::net::TcpStream,
        conn: ClientConn,
        closed: tokio::sync::watch::Receiver<bool>,
        open: Arc<OpenConnection>,
        opened: tokio::time::Instant,
    ) {
        let reads = Arc::new(AtomicU64::new(0));
        let io = limits::Watched::new(
            limits::SendDeadline::new(stream, self.inner.limits.send_timeout),
            reads.clone(),
        );
        let deadline = opened + self.inner.limits.header_timeout;
        let Some((protocol, io)) = h2::sniff(io, deadline).await else {
            return;
        };
        match protocol {
            // Boxed, so that an HTTP/1 connection's task holds no room for HTTP/2's.
            h2::Protocol::H2 => {
                Box::pin(self.serve_http2(io, conn, closed, open, opened)).await;
            }
            h2::Protocol::Http1 if self.inner.lean.is_some() => {
                self.serve_lean(io, reads, conn, closed, open, opened).await;
            }
            h2::Protocol::Http1 => {
                self.serve_http1(io, reads, conn, closed, open, opened, &[])
                    .await;
            }
        }
    }

    /// Serves HTTP/1 on one client connection (plain, or TLS once terminated) until
    /// it closes, or until `closed` says the server stops. `reads` counts the reads
    /// of `io`; the first head is due within the header timeout from `opened`.
    ///
    /// A connection idle for [`park::park_after`] parks: its HTTP state is dropped,
    /// and the first byte of its next request starts a fresh one (see `park`).
    #[allow(clippy::too_many_arguments)]
    async fn serve_http1<I>(
        self,
        io: I,
        reads: Arc<AtomicU64>,
        conn: ClientConn,
        mut closed: tokio::sync::watch::Receiver<bool>,
        open: Arc<OpenConnection>,
        opened: tokio::time::Instant,
        unread: &[u8],
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self;
        let limits = proxy.inner.limits;
        let park = Arc::new(park::Park::default());
        let mut http = hyper::server::conn::http1::Builder::new();
        let head = proxy.inner.max_head();
        http.keep_alive(true)
            .header_read_timeout(limits.header_timeout)
            // A complete head over the limit is refused by its size, an
            // incomplete one when it fills the buffer: 431 either way.
            .max_header_size(head)
            .max_buf_size(head.max(MIN_BUF));
        // Boxed per request: hyper keeps room for the service's future for the
        // connection's whole life, and a request's state is about 4 KiB, which an
        // idle keep-alive connection would hold for nothing.
        let svc = {
            let (proxy, park) = (proxy.clone(), park.clone());
            service_fn(move |req| {
                let proxy = proxy.clone();
                let open = open.clone();
                let busy = park::Busy::enter(&park);
                Box::pin(async move {
                    let resp = proxy.forward(conn, req, open).await;
                    Ok::<_, Infallible>(resp.map(|body| body.busy(busy)))
                })
            })
        };
        let mut io = park::Parkable::new(io, park.clone());
        io.unread(unread);
        let mut opened = opened;
        loop {
            http.timer(
                limits::HeadTimer::new(
                    reads.clone(),
                    limits.header_timeout,
                    limits.idle_timeout,
                    opened,
                )
                .parking(park.clone(), park::park_after(limits.idle_timeout)),
            );
            // Boxed: a parked connection holds none of it. Once a 101 is sent, hyper
            // hands the socket to the tunnel and this connection's HTTP timers stop
            // with it.
            let mut served = Box::pin(
                http.serve_connection(TokioIo::new(io), svc.clone())
                    .with_upgrades(),
            );
            let ask = loop {
                tokio::select! {
                    ended = served.as_mut() => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, "proxy connection ended");
                        }
                        return;
                    }
                    _ = closed.changed() => {
                        served.as_mut().graceful_shutdown();
                        if let Err(e) = served.await {
                            tracing::debug!(error = %e, "proxy connection ended");
                        }
                        return;
                    }
                    ask = park.asked() => if park.may_park(ask, &reads) {
                        break ask;
                    },
                }
            };
            // Idle, nothing unsent, nothing of a next request read: the socket alone
            // waits for that request.
            let Some(parts) = std::pin::Pin::into_inner(served).into_parts() else {
                return;
            };
            let hyper::server::conn::http1::Parts {
                io: parked,
                read_buf,
                ..
            } = parts;
            io = parked.into_inner();
            io.unread(&read_buf);
            // Before the wait: a view of hyper's read buffer holds all of it.
            drop(read_buf);
            proxy.inner.parked.fetch_add(1, Ordering::Relaxed);
            let woke = tokio::select! {
                woke = io.next_byte() => woke,
                () = tokio::time::sleep_until(ask.deadline) => false,
                _ = closed.changed() => false,
            };
            if !woke {
                // Closed as hyper closes the connections it holds: a TLS one with
                // `close_notify`, which a client tells from a cut. Bounded: a peer
                // that reads nothing cannot hold it.
                let _ = tokio::time::timeout(CLOSE_PATIENCE, io.shutdown()).await;
                return;
            }
            opened = tokio::time::Instant::now();
        }
    }

    /// Serves HTTP/2 on one client connection until it closes. Every stream is a
    /// request to [`Proxy::forward`].
    ///
    /// Guarantees: a request head (a header block) is at most `max_header_bytes` as
    /// HTTP/2 counts it (`SETTINGS_MAX_HEADER_LIST_SIZE`; a larger one is answered 431
    /// on its stream alone); at most `max_streams` streams are open at once (one more
    /// is refused, `REFUSED_STREAM`, the others go on); a connection with no stream
    /// open is sent GOAWAY and closed at the header timeout from `opened` if it never
    /// had one, at the idle timeout after its last one otherwise; the server's drain
    /// and a hand-over send GOAWAY at once, and streams in flight finish. After a
    /// GOAWAY, a connection with no stream left that does not close within the header
    /// timeout (a client that never acknowledges it) is dropped, as are all at the
    /// drain's deadline.
    async fn serve_http2<I>(
        self,
        io: I,
        conn: ClientConn,
        mut closed: tokio::sync::watch::Receiver<bool>,
        open: Arc<OpenConnection>,
        opened: tokio::time::Instant,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = self.clone();
        let limits = self.inner.limits;
        let activity = Arc::new(h2::Activity::default());
        let mut http = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // hyper's default send buffer is 400 KiB per stream: a client that opens
        // `max_streams` streams with large windows and stops reading would hold
        // 40 MB per connection. 64 KiB per stream, and the windows we grant bounded
        // to match (hyper's defaults: 1 MiB per connection, 64 KiB per stream).
        http.max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .max_concurrent_streams(limits.max_streams)
            .max_send_buf_size(SEND_BUFFER_PER_STREAM)
            .initial_stream_window_size(64 * 1024)
            .initial_connection_window_size(1024 * 1024);
        let streams = activity.clone();
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            let open = open.clone();
            // Counted from the stream's request head until its answer is done.
            let (active, first) = streams.enter();
            // A stream beside others in flight needs a room of its own (see
            // `UpstreamSlot`), kept until its answer is done.
            let slot = (!first).then(|| UpstreamSlot::take(&proxy.inner));
            let unanswered = streams.unanswered();
            let flooding = streams.is_flooding();
            async move {
                let resp = match slot {
                    // Past the flood limit, a stream the client opens anyway (it
                    // ignores the GOAWAY) reaches no version.
                    _ if flooding => plain(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rampart: connection closing\n",
                    ),
                    Some(None) => {
                        let mut resp = plain(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "rampart: too many requests in flight\n",
                        );
                        resp.headers_mut()
                            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
                        resp
                    }
                    // Boxed: hyper spawns a task per stream, and a future held inline
                    // is copied whole into it (the forward future is large): 17 % less
                    // CPU per HTTP/2 request (BENCHMARKS.md).
                    _ => Box::pin(proxy.forward(conn, req, open)).await,
                };
                unanswered.answered();
                let slot = slot.flatten();
                Ok::<_, Infallible>(resp.map(|body| h2::Held::new(body, (active, slot))))
            }
        });
        let served = http.serve_connection(TokioIo::new(io), svc);
        tokio::pin!(served);
        let mut retiring = self.inner.retiring.subscribe();
        let header = limits.header_timeout;
        let ended = tokio::select! {
            ended = served.as_mut() => Some(ended),
            _ = closed.changed() => None,
            _ = retiring.wait_for(|r| *r) => None,
            () = activity.idle(opened, header, limits.idle_timeout) => None,
            () = activity.flooded() => {
                // A flood of cancelled streams (see `h2::FLOOD_RESETS`): GOAWAY, as
                // below, and a stream opened anyway reaches no version. A client
                // that does not close (hyper's GOAWAY waits for the client's PING
                // acknowledgement before it refuses new streams) is cut at the
                // header timeout. A legitimate client caught by it (a gRPC client
                // whose calls all reached their deadlines) only reconnects.
                tracing::warn!(peer = %conn.peer, "HTTP/2 client cancelled most of its many streams: connection closed");
                None
            }
        };
        let ended = match ended {
            Some(ended) => ended,
            None => {
                // GOAWAY: no new stream; those in flight finish.
                served.as_mut().graceful_shutdown();
                let mut cut = self.inner.cut.clone();
                let now = tokio::time::Instant::now();
                let flood_cut = async {
                    if activity.is_flooding() {
                        tokio::time::sleep_until(now + header).await;
                    } else {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    ended = served.as_mut() => ended,
                    _ = cut.wait_for(|c| *c) => Ok(()),
                    () = activity.idle(now, header, header) => Ok(()),
                    () = flood_cut => Ok(()),
                }
            }
        };
        if let Err(e) = ended {
            tracing::debug!(error = %e, "proxy HTTP/2 connection ended");
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

    /// Requests in flight now to what a data plane that took over asks about.
    pub fn in_flight_of(&self, what: &plane::InFlight) -> u64 {
        match what {
            plane::InFlight::Variant(v) => self.in_flight(*v),
            plane::InFlight::Endpoints(e) => self.in_flight_to(e),
        }
    }

    /// Requests in flight now to any of `endpoints`.
    pub fn in_flight_to(&self, endpoints: &[SocketAddr]) -> u64 {
        let known = match self.inner.endpoints.lock() {
            Ok(k) => k,
            Err(poisoned) => poisoned.into_inner(),
        };
        endpoints
            .iter()
            .filter_map(|a| known.get(a))
            .map(|c| c.load(Ordering::Acquire))
            .sum()
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

    /// The limits this proxy serves within.
    pub fn limits(&self) -> ProxyLimits {
        self.inner.limits
    }

    /// Client connections open now.
    pub fn open_connections(&self) -> u64 {
        self.inner.connections.load(Ordering::Acquire)
    }

    /// Client connections refused (503 and closed) at `max_connections` so far.
    pub fn refused_connections(&self) -> u64 {
        self.inner.refused.load(Ordering::Relaxed)
    }

    /// Request bodies cut so far because their client sent nothing of them for
    /// `body_timeout` (answered 408, unless the version had answered already); counted
    /// against no version.
    pub fn body_timeouts(&self) -> u64 {
        self.inner.body_timeouts.load(Ordering::Relaxed)
    }

    /// h2c connections to the versions that failed as a whole (a `GOAWAY` with an error
    /// code, a socket error or close) while streams were on them, so far; `None` when
    /// the proxy speaks HTTP/1.1 to them. Each is charged to its version once, whatever
    /// the number of streams it broke. A graceful `GOAWAY` (`NO_ERROR`) is no failure.
    pub fn upstream_connection_errors(&self) -> Option<u64> {
        self.inner.upstream.connection_errors()
    }

    /// TLS handshakes that failed or timed out so far; `None` when the proxy serves
    /// plain HTTP.
    pub fn tls_handshake_failures(&self) -> Option<u64> {
        #[cfg(feature = "tls")]
        if let Some(tls) = &self.inner.tls {
            return Some(tls.handshake_failures());
        }
        None
    }

    /// The TLS terminator, when the proxy serves TLS (to reload it, or read its
    /// counts).
    #[cfg(feature = "tls")]
    pub fn tls(&self) -> Option<&tls::TlsTerminator> {
        self.inner.tls.as_deref()
    }

    /// This proxy's counters' identity: another value means counting started again.
    pub fn instance(&self) -> u64 {
        self.inner.instance
    }

    /// Whose forwarding headers this proxy believes.
    pub fn trust(&self) -> &Trust {
        &self.inner.trust
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

    /// HTTP/2 streams answered 503 so far because `max_connections` streams beyond
    /// their connections' first were in flight.
    pub fn refused_requests(&self) -> u64 {
        self.inner.refused_requests.load(Ordering::Relaxed)
    }

    /// Requests to `variant` whose clients left before the answer was done, so far
    /// (each is counted in [`Self::totals`] too, see `timed`).
    pub fn abandoned(&self, variant: Variant) -> u64 {
        self.inner.counters(variant).abandoned()
    }

    /// How many times an idle HTTP/1 client connection gave up its HTTP state (its
    /// buffers) to wait for its next request with its socket alone, so far.
    pub fn parked_connections(&self) -> u64 {
        self.inner.parked.load(Ordering::Relaxed)
    }

    /// Requests waiting now for their variant's first backend (see
    /// [`Proxy::set_hold`]).
    pub fn held_requests(&self) -> u64 {
        self.inner.held.load(Ordering::Relaxed)
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

    fn choose(&self, routes: &Routes, peer: SocketAddr, headers: &hyper::HeaderMap) -> Variant {
        if routes.canary.is_empty() {
            return Variant::Stable;
        }
        if routes.matches.iter().any(|m| matches(m, headers)) {
            return Variant::Canary;
        }
        let bp = routes.weight.basis_points();
        if bp == 0 {
            return Variant::Stable;
        }
        if bp >= 10_000 || routes.stable.is_empty() {
            return Variant::Canary;
        }
        // rampart's own load comes from one address: stuck by it, all of it would
        // land on one variant. Spread instead (sticking by an address is no promise
        // to a client that marks its requests as load).
        let key = match &self.inner.sticky {
            Sticky::ClientIp if headers.contains_key(rampart_core::policy::LOAD_HEADER) => None,
            sticky => sticky_key(sticky, peer, headers),
        };
        match key {
            Some(k) => sticky_variant(&routes.salt, &k, bp),
            // A ramped flag (salted): a caller without a key gets the flag's default,
            // off, until the ramp is 100 %, so it is none of the flag-on cohort.
            None if !routes.salt.is_empty() => Variant::Stable,
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
    async fn route(&self, peer: SocketAddr, headers: &hyper::HeaderMap) -> (Arc<Routes>, Variant) {
        // The usual case first: no wait, so no waiter registered on `changed`.
        let routes = self.inner.routes();
        let variant = self.choose(&routes, peer, headers);
        if !routes.of(variant).is_empty() {
            return (routes, variant);
        }
        let hold = *self.inner.hold.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = tokio::time::Instant::now() + hold;
        // Counted while it waits, however the wait ends (a client leaving drops it).
        struct Held<'a>(&'a AtomicU64);
        impl Drop for Held<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::Relaxed);
            }
        }
        self.inner.held.fetch_add(1, Ordering::Relaxed);
        let _held = Held(&self.inner.held);
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let routes = self.inner.routes();
            let variant = self.choose(&routes, peer, headers);
            let empty = routes.of(variant).is_empty();
            if !empty || tokio::time::timeout_at(deadline, changed).await.is_err() {
                return (routes, variant);
            }
        }
    }

    /// Writes the forwarding headers of a request from `conn` and settles rampart's
    /// load mark; `true` when the request is rampart's own load that must not count.
    /// Shared by hyper's path and the lean one, so both send a version the same.
    fn forwarding(
        &self,
        headers: &mut hyper::HeaderMap,
        routes: &Routes,
        conn: ClientConn,
    ) -> bool {
        let peer = conn.peer.ip();
        forwarded::set(headers, peer, self.inner.trust.trusts(peer), conn.tls);
        // rampart's own load that must not count: the token is swapped for `1`.
        let load = HeaderName::from_static(rampart_core::policy::LOAD_HEADER);
        let uncounted = !routes.uncounted.is_empty()
            && headers
                .get(&load)
                .is_some_and(|v| admin::same(v.as_bytes(), routes.uncounted.as_bytes()));
        if uncounted {
            headers.insert(load, HeaderValue::from_static("1"));
        } else if !routes.uncounted.is_empty() {
            // While rampart's load is marked, only it reaches the service marked: a
            // client's own mark is dropped, so the service can trust the header.
            remove_named(headers, &[load]);
        }
        uncounted
    }

    async fn forward(
        &self,
        conn: ClientConn,
        mut req: Request<Incoming>,
        open: Arc<OpenConnection>,
    ) -> Response<Body> {
        let peer = conn.peer;
        // A body declared too large is refused before anything is routed or counted;
        // one that grows too large on the way fails upstream, answered 413 below.
        let max_body = self.inner.limits.max_body_bytes.unwrap_or(u64::MAX);
        if hyper::body::Body::size_hint(req.body()).lower() > max_body {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "rampart: request body too large\n",
            );
        }
        // The proxy opens no tunnels (a WebSocket upgrades a GET): a `CONNECT` sent on
        // would have the version open one to nowhere, and its client told one is
        // there. Refused unsent, nobody's failure.
        if req.method() == hyper::Method::CONNECT {
            return plain(
                StatusCode::NOT_IMPLEMENTED,
                "rampart: CONNECT is not forwarded\n",
            );
        }
        // An HTTP/2 request names its host in `:authority`, and an HTTP/1.1 request in
        // absolute form in its target; either wins over a `host` field the client
        // also sent (RFC 9113 8.3.1, RFC 9112 3.2.2). The version gets it as `Host`
        // (HTTP/1.1) or as its own `:authority` (h2c), and the forwarding headers are
        // made from it. Before routing, so that match and stickiness rules on `host`
        // see what the version will.
        let version = req.version();
        let http2 = version == hyper::Version::HTTP_2;
        // Two `Host` lines name two hosts: the proxy would route by one and the
        // version may serve the other (RFC 9112 3.2: answered 400, not forwarded).
        // An HTTP/2 request's `:authority` settles it.
        if !(http2 && req.uri().authority().is_some())
            && req
                .headers()
                .get_all(hyper::header::HOST)
                .iter()
                .nth(1)
                .is_some()
        {
            return plain(
                StatusCode::BAD_REQUEST,
                "rampart: more than one Host field\n",
            );
        }
        // And one whose `Host` is no host (RFC 9112 3.2): a space, a `/` or an `@`
        // in it is read otherwise by the version, its logs and the links it builds.
        // An HTTP/2 request's `:authority` (a valid URI authority) replaces any
        // `host` field below: nothing to look up then.
        if !(http2 && req.uri().authority().is_some())
            && let Some(host) = req.headers().get(hyper::header::HOST)
            && !valid_host(host.as_bytes())
        {
            return plain(StatusCode::BAD_REQUEST, "rampart: invalid Host field\n");
        }
        // So is an HTTP/1.1 request that names no host at all (RFC 9112 3.2); it
        // was sent on with the endpoint's address as its `Host`.
        if version == hyper::Version::HTTP_11
            && req.uri().authority().is_none()
            && !req.headers().contains_key(hyper::header::HOST)
        {
            return plain(StatusCode::BAD_REQUEST, "rampart: no Host field\n");
        }
        // Its host and port, without any user information (`user:pw@`), which is no
        // part of a `Host` (RFC 9112 3.2.2) and would reach the version's logs.
        if let Some(authority) = req.uri().authority()
            && let Ok(host) = HeaderValue::from_str(
                authority
                    .as_str()
                    .rsplit_once('@')
                    .map_or(authority.as_str(), |(_, host)| host),
            )
        {
            req.headers_mut().insert(hyper::header::HOST, host);
        }
        let (routes, variant) = self.route(peer, req.headers()).await;
        // Taken before the request is sent on: hyper keeps the client's side of an
        // upgrade in the request it read.
        let upgrade = upgrade_of(req.headers()).map(|proto| (proto, hyper::upgrade::on(&mut req)));
        let body_timeout = self.inner.limits.body_timeout;
        let timeouts = &self.inner.body_timeouts;
        // hyper's HTTP/2 client reports a request body's failure as a reset stream,
        // without its cause: the body tells it here.
        let told =
            (self.inner.upstream.protocol() == UpstreamProtocol::H2c).then(FaultSlot::default);
        let mut req = req.map(|b| {
            let limited = Limited::new(b, usize::try_from(max_body).unwrap_or(usize::MAX));
            let body = BodyDeadline::new(limited, body_timeout, timeouts.clone());
            Scrubbed(match &told {
                Some(slot) => body.telling(slot.clone()),
                None => body,
            })
        });
        let backends = routes.of(variant);
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
        // An HTTP/1.1 client names its `TE` in `Connection` (RFC 9110 10.1.4), so it
        // is this hop's; but a gRPC server over h2c wants `te: trailers` to take the
        // call, and the proxy, which relays trailers, asks it in its own name.
        // Only a `Connection` field can name it, which HTTP/2 has none of: a gRPC
        // call over it looks nothing up.
        let trailers = !http2
            && self.inner.upstream.protocol() == UpstreamProtocol::H2c
            && req.headers().contains_key(hyper::header::CONNECTION)
            && exchange::asks_trailers(req.headers());
        strip_hop_by_hop(req.headers_mut());
        if trailers && !req.headers().contains_key(hyper::header::TE) {
            req.headers_mut()
                .insert(hyper::header::TE, HeaderValue::from_static("trailers"));
        }
        // An `Upgrade` that `Connection` does not name asks for nothing (RFC 9110
        // 7.8): dropped, so that only a real upgrade is sent as one.
        remove_named(req.headers_mut(), &[hyper::header::UPGRADE]);
        if http2 && self.inner.upstream.protocol() == UpstreamProtocol::Http1 {
            join_cookies(req.headers_mut());
        }
        if let Some((proto, _)) = &upgrade {
            restore_upgrade(req.headers_mut(), proto.clone());
        }
        let uncounted = self.forwarding(req.headers_mut(), &routes, conn);
        let counters = self.inner.counters(variant);
        // Held by the version's answer when there is one (an HTTP/1.1 upload it
        // answered early is in flight until its body is written), else by ours.
        let mut flight = Some(Flight::enter(
            &self.inner,
            variant,
            picked.in_flight.clone(),
        ));
        let started = tokio::time::Instant::now();
        let deadline = grpc::is_grpc(req.headers())
            .then(|| grpc::timeout(req.headers()))
            .flatten();
        // Counts the request as abandoned if the client leaves before the answer.
        let waiting = Waiting::new(
            (!uncounted).then(|| Clock::new(Arc::clone(&self.inner), variant, started, deadline)),
        );
        // A request without a body, or an HTTP/2 client's with a small one of a
        // declared length, goes on the lean path's connections, when the versions speak
        // HTTP/1.1: no task, channel or dispatch of hyper's client.
        let lean = self.inner.lean.as_ref().filter(|_| {
            upgrade.is_none()
                && (hyper::body::Body::is_end_stream(req.body())
                    || (http2 && lean::buffers(req.headers(), req.body())))
        });
        let mut result = match lean {
            Some(pool) => pool
                .fetch(backend, req)
                .await
                .map(|resp| resp.map(upstream::Answer::lean)),
            None => self.inner.upstream.request(backend, req, !uncounted).await,
        };
        let clock = waiting.answered();
        let elapsed = started.elapsed();
        // Set for an answer after which the client's connection cannot go on.
        let mut close = false;
        let fault = |e: &upstream::UpstreamError| {
            told.as_ref()
                .and_then(FaultSlot::get)
                .or_else(|| client_fault(e.as_ref()))
        };
        let grpc_answer = result
            .as_ref()
            .is_ok_and(|r| r.status() == StatusCode::OK && grpc::is_grpc(r.headers()));
        if grpc_answer && let Some(slot) = &told {
            slot.answered_grpc();
        }
        if let Ok(resp) = &mut result {
            resp.body_mut().hold(flight.take());
        }
        let mut resp = match result {
            Ok(mut resp) => match clock {
                None => {
                    resp.body_mut().settle();
                    resp.map(|body| Timed::untimed(Either::Left(body)))
                }
                // A gRPC call is counted at its end, by its status (see `grpc`).
                Some(clock) if grpc_answer => {
                    let clock = clock.grpc(grpc::status(resp.headers()), told.clone());
                    resp.map(|body| Timed::new(Either::Left(body), clock))
                }
                Some(clock) => {
                    // Counted here: a break of its body counts in no metric, and
                    // takes no h2c connection failure's charge from a stream whose
                    // failure would count.
                    resp.body_mut().settle();
                    counters.record(resp.status().is_server_error(), elapsed);
                    // The total time, from the same start, is recorded when the body
                    // is done.
                    resp.map(|body| Timed::new(Either::Left(body), clock))
                }
            },
            // The client's own body failed on its way (past `max_body_bytes`,
            // malformed chunks, cut short): the client's fault, not the version's,
            // so counted in no metric. A client could otherwise fail a canary.
            Err(e) if fault(&e) == Some(ClientFault::TooLarge) => plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "rampart: request body too large\n",
            ),
            Err(e) if fault(&e) == Some(ClientFault::Body) => plain(
                StatusCode::BAD_REQUEST,
                "rampart: request body malformed or cut short\n",
            ),
            // The client stalled in its body past `body_timeout`: its connection is
            // mid-body, so it is closed after the answer (if the client still reads).
            Err(e) if fault(&e) == Some(ClientFault::Slow) => {
                tracing::debug!(%peer, variant = variant.as_str(), "request body timed out");
                // An HTTP/2 stream ends alone: its connection goes on.
                close = !http2;
                plain(
                    StatusCode::REQUEST_TIMEOUT,
                    "rampart: request body timed out\n",
                )
            }
            // A header block its h2c version would refuse, maybe with an error that
            // breaks its connection's other streams: not sent, the client's fault.
            Err(e) if e.is::<upstream::HeaderListTooLarge>() => {
                tracing::debug!(error = %e, variant = variant.as_str(), %backend, "request header block refused");
                plain(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "rampart: request header block too large for the version\n",
                )
            }
            // Broken by its h2c connection's failure, which another stream was already
            // charged with, or left unprocessed by a version closing its connection
            // gracefully and not sent again (see `upstream`): the client gets its 502,
            // the version is not charged.
            Err(e) if upstream::is_uncharged(e.as_ref()) => {
                tracing::debug!(error = %e, variant = variant.as_str(), %backend, "upstream connection failed");
                plain(StatusCode::BAD_GATEWAY, "rampart: upstream unavailable\n")
            }
            Err(e) => {
                tracing::debug!(error = %e, variant = variant.as_str(), %backend, tls = conn.tls, "upstream failed");
                // No version answered: an error, and in neither latency (as nginx and
                // HAProxy log it), so the proxy never times its own 502.
                if !uncounted {
                    counters.record_logged(true, None, None);
                }
                plain_body(StatusCode::BAD_GATEWAY, "rampart: upstream unavailable\n")
                    .map(Timed::untimed)
            }
        };
        *resp.version_mut() = if http2 {
            hyper::Version::HTTP_2
        } else {
            hyper::Version::HTTP_11
        };
        let switched = match upgrade {
            Some((_, client)) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => {
                let proto = resp.headers().get(hyper::header::UPGRADE).cloned();
                let upstream = hyper::upgrade::on(&mut resp);
                self.tunnel(client, upstream, open, variant, backend);
                proto
            }
            _ => None,
        };
        strip_hop_by_hop(resp.headers_mut());
        if http2 {
            // An HTTP/1.1 version's framing, which HTTP/2 has no place for.
            remove_named(
                resp.headers_mut(),
                &[hyper::header::TRANSFER_ENCODING, hyper::header::UPGRADE],
            );
        }
        if let Some(proto) = switched {
            restore_upgrade(resp.headers_mut(), proto);
        }
        resp.headers_mut().insert(
            HeaderName::from_static(VARIANT_HEADER),
            HeaderValue::from_static(variant.as_str()),
        );
        if close
            || (!http2
                && *self.inner.retiring.borrow()
                && resp.status() != StatusCode::SWITCHING_PROTOCOLS)
        {
            resp.headers_mut()
                .insert(hyper::header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp.map(|body| body.holding(flight))
    }
}

// === impl Proxy (upgrades) ===

impl Proxy {
    /// Copies bytes both ways between an upgraded client connection and the version
    /// that switched it, for the connection's life, in a task of its own.
    ///
    /// Guarantees: the tunnel stays on the backend that answered 101, whatever the
    /// routes become; it counts as an open connection (`max_connections`) until either
    /// side closes, or until the drain's deadline cuts it. Assumptions: the upgrade was
    /// already counted once in `variant`'s metrics, as its 101; no HTTP timer applies
    /// to it (hyper has stopped reading HTTP on it), so a silent WebSocket stays open,
    /// and liveness is its endpoints' business (pings).
    fn tunnel(
        &self,
        client: hyper::upgrade::OnUpgrade,
        upstream: hyper::upgrade::OnUpgrade,
        open: Arc<OpenConnection>,
        variant: Variant,
        backend: SocketAddr,
    ) {
        let mut cut = self.inner.cut.clone();
        let copy = tokio::spawn(async move {
            let _open = open;
            let (client, upstream) = match tokio::try_join!(client, upstream) {
                Ok(both) => both,
                Err(e) => {
                    tracing::debug!(error = %e, variant = variant.as_str(), %backend, "upgrade failed");
                    return;
                }
            };
            if let Err(e) = tunnel::pump(client, upstream).await {
                tracing::debug!(error = %e, variant = variant.as_str(), %backend, "tunnel ended");
            }
        });
        // The drain's cut is watched from a task of its own, which wakes only when the
        // tunnel ends or is cut: the copy's task wakes for every message, and polling
        // the cut there cost a lock each time.
        let abort = copy.abort_handle();
        tokio::spawn(async move {
            tokio::select! {
                _ = copy => {}
                _ = cut.wait_for(|cut| *cut) => abort.abort(),
            }
        });
    }
}

/// A client's request body whose trailers lose what the proxy decides in a request's
/// head: the forwarding headers (and their look-alikes) and rampart's load marker.
/// Trailers come after the head the proxy edited, and a server that merges them into
/// it would read the client's own `X-Forwarded-For` or mark. (What HTTP/2 forbids is
/// the h2c pump's to take off, see `exchange`.)
#[derive(Debug)]
struct Scrubbed<B>(B);

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Scrubbed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        let mut frame = std::task::ready!(std::pin::Pin::new(&mut self.get_mut().0).poll_frame(cx));
        if let Some(Ok(f)) = &mut frame
            && let Some(trailers) = f.trailers_mut()
        {
            forwarded::drop_from_trailers(trailers);
            remove_named(
                trailers,
                &[HeaderName::from_static(rampart_core::policy::LOAD_HEADER)],
            );
        }
        std::task::Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0.size_hint()
    }
}

/// The protocol a request asks its connection be switched to: its `Upgrade`, when
/// `Connection` names it. h2c is refused (`None`): the proxy speaks HTTP/1.1 to the
/// versions, and its upgrade is only a hop's affair.
fn upgrade_of(headers: &hyper::HeaderMap) -> Option<HeaderValue> {
    let proto = headers.get(hyper::header::UPGRADE)?;
    let asked = headers
        .get_all(hyper::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    let h2c = proto.to_str().map_or(true, |p| {
        p.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c"))
    });
    (asked && !h2c).then(|| proto.clone())
}

/// Puts back the two hop-by-hop headers an upgrade must pass on.
fn restore_upgrade(headers: &mut hyper::HeaderMap, proto: HeaderValue) {
    headers.insert(hyper::header::UPGRADE, proto);
    headers.insert(
        hyper::header::CONNECTION,
        HeaderValue::from_static("upgrade"),
    );
}

/// Removes the headers that describe one hop's connection: each side of the proxy
/// manages its own (hyper sets them). An upstream's `Connection: close` would
/// otherwise close the client's kept-alive connection, and a client's would churn the
/// upstream pool. A few map lookups per message, no allocation.
fn strip_hop_by_hop(headers: &mut hyper::HeaderMap) {
    // Most heads have none: one pass over the names, no lookup (nor `entry`, which
    // grows a full map even for a name it does not find).
    if !named_any(headers, &HOP_BY_HOP) {
        return;
    }
    // Every Connection line, not only the first: each names headers of this hop.
    let listed: Vec<hyper::header::HeaderValue> = match headers.entry(hyper::header::CONNECTION) {
        hyper::header::Entry::Occupied(e) => e.remove_entry_mult().1.collect(),
        hyper::header::Entry::Vacant(_) => Vec::new(),
    };
    // Headers the Connection header names are this hop's too (RFC 9110 7.6.1); but
    // not `Host`, which every HTTP/1.1 request must carry (RFC 9112 3.2): a client's
    // `Connection: host` would have its version sent a request without one.
    for listed in listed.iter().filter_map(|v| v.to_str().ok()) {
        for name in listed.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if !["close", "keep-alive", "host"]
                .iter()
                .any(|kept| name.eq_ignore_ascii_case(kept))
            {
                headers.remove(name);
            }
        }
    }
    for name in LEGACY_HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether a `Host` value can be a host and port (RFC 9112 3.2, RFC 3986 3.2.2):
/// none of the whitespace, control characters and delimiters (`/ \\ ? # @`) that end
/// or split an authority, which a version, its logs and the links it builds would
/// read otherwise than the proxy. Empty is allowed (a target without an authority).
/// As nginx checks it: bytes past ASCII (a raw international name) pass.
fn valid_host(value: &[u8]) -> bool {
    value.iter().all(|&b| HOST_BYTES[usize::from(b)])
}

/// The bytes a `Host` may hold (see [`valid_host`]), one lookup each: the check runs
/// on every request of the lean path.
const HOST_BYTES: [bool; 256] = {
    let mut ok = [true; 256];
    let mut b = 0;
    while b <= b' ' as usize {
        ok[b] = false;
        b += 1;
    }
    ok[0x7f] = false;
    let delimiters = *b"/\\?#@";
    let mut i = 0;
    while i < delimiters.len() {
        ok[delimiters[i] as usize] = false;
        i += 1;
    }
    ok
};

/// Hop-by-hop fields older HTTP/1.x peers send without naming them in `Connection`
/// (RFC 9110 7.6.1), parsed once.
const LEGACY_HOP_BY_HOP: [HeaderName; 2] = [KEEP_ALIVE, PROXY_CONNECTION];
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// `Connection` and the legacy hop-by-hop fields: a head with none of them has
/// nothing of its hop to strip.
const HOP_BY_HOP: [HeaderName; 3] = [hyper::header::CONNECTION, KEEP_ALIVE, PROXY_CONNECTION];

/// Whether `headers` has a field named one of `names`, in one pass over its names.
/// A head has a few fields, and comparing names is cheaper than the hash each
/// lookup takes, so checking before a series of `remove`s that usually find nothing
/// saves their work.
pub(super) fn named_any(headers: &hyper::HeaderMap, names: &[HeaderName]) -> bool {
    headers.keys().any(|name| names.contains(name))
}

/// Removes every field named one of `names`, looking each up only when the pass of
/// [`named_any`] found one of them.
pub(super) fn remove_named(headers: &mut hyper::HeaderMap, names: &[HeaderName]) {
    if named_any(headers, names) {
        for name in names {
            headers.remove(name);
        }
    }
}

/// Joins an HTTP/2 client's cookie crumbs, which it may send as a field each (RFC 9113
/// 8.2.3), into the one `Cookie` line HTTP/1.1 allows (RFC 6265 5.4), separated by
/// `; `: a version reading the first line alone would miss the rest. One lookup when
/// there is a line or none.
fn join_cookies(headers: &mut hyper::HeaderMap) {
    let crumbs = headers.get_all(hyper::header::COOKIE);
    if crumbs.iter().nth(1).is_none() {
        return;
    }
    let joined = crumbs
        .iter()
        .map(HeaderValue::as_bytes)
        .filter(|crumb| !crumb.is_empty())
        .collect::<Vec<_>>()
        .join(&b"; "[..]);
    // Each crumb was a valid value, and `; ` is too.
    if let Ok(joined) = HeaderValue::from_bytes(&joined) {
        headers.insert(hyper::header::COOKIE, joined);
    }
}

/// How a request failed through its client's fault rather than upstream's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientFault {
    /// The body grew past `max_body_bytes`.
    TooLarge,
    /// The body could not be read off the client's connection (malformed chunks, the
    /// client went away mid-body): hyper's client reports its request body's error as
    /// a user error.
    Body,
    /// The client sent nothing of its body for `body_timeout`.
    Slow,
}

/// Whether an upstream request failed through its client's fault, and how.
fn client_fault(e: &(dyn std::error::Error + 'static)) -> Option<ClientFault> {
    let mut fault = None;
    let mut cause = Some(e);
    while let Some(e) = cause {
        if e.is::<LengthLimitError>() {
            return Some(ClientFault::TooLarge);
        }
        if e.is::<limits::BodyTimeout>() {
            return Some(ClientFault::Slow);
        }
        if e.is::<lean::ClientBody>()
            || e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user)
        {
            fault = Some(ClientFault::Body);
        }
        cause = e.source();
    }
    fault
}

/// Aborts a task when dropped.
#[cfg(feature = "tls")]
struct AbortOnDrop(JoinHandle<()>);

#[cfg(feature = "tls")]
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Counts an open client connection until dropped.
struct OpenConnection(Arc<Inner>);

impl OpenConnection {
    /// Counts a new connection, or refuses it (`None`) when `max_connections` are
    /// open: one atomic add, taken back when refused.
    fn admit(inner: &Arc<Inner>) -> Option<Self> {
        let open = inner.connections.fetch_add(1, Ordering::AcqRel);
        let admitted = OpenConnection(inner.clone());
        if open >= u64::from(inner.limits.max_connections) {
            inner.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(admitted)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        if self.0.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A room for one more HTTP/2 stream in flight, beyond each connection's first, until
/// its answer is done. A client connection's first request in flight (HTTP/1.1 has
/// only that one, and its tunnel) holds one upstream connection of its own; the
/// further streams of HTTP/2 connections share `max_connections` rooms between them.
/// So the open files stay within [`limits::files_needed`] whatever `max_streams`
/// allows, and HTTP/2 clients holding many streams can refuse other HTTP/2 clients'
/// extra streams, never an HTTP/1.1 client's request or any connection's first stream.
#[derive(Debug)]
struct UpstreamSlot(Arc<Inner>);

impl UpstreamSlot {
    /// Takes a room, or `None` when all are in use (and then counts the refusal).
    fn take(inner: &Arc<Inner>) -> Option<Self> {
        let max = u64::from(inner.limits.max_connections);
        let taken = inner
            .upstream_in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if !taken {
            inner.refused_requests.fetch_add(1, Ordering::Relaxed);
        }
        taken.then(|| UpstreamSlot(inner.clone()))
    }
}

impl Drop for UpstreamSlot {
    fn drop(&mut self) {
        self.0.upstream_in_use.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A request in flight to its variant and to its endpoint, from its routing until its
/// answer is done: its body read to its end, or dropped (the client left). A drain
/// (`Proxy::drain`, `Proxy::drain_endpoints`) waits for it, so a version is not
/// stopped under a body still on its way.
#[derive(Debug)]
struct Flight {
    inner: Arc<Inner>,
    variant: Variant,
    endpoint: Arc<AtomicU64>,
}

impl Flight {
    fn enter(inner: &Arc<Inner>, variant: Variant, endpoint: Arc<AtomicU64>) -> Self {
        inner.counters(variant).enter();
        endpoint.fetch_add(1, Ordering::AcqRel);
        Flight {
            inner: Arc::clone(inner),
            variant,
            endpoint,
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        let last_of_variant = self.inner.counters(self.variant).leave();
        let last_of_endpoint = self.endpoint.fetch_sub(1, Ordering::AcqRel) == 1;
        if last_of_variant || last_of_endpoint {
            self.inner.idle.notify_waiters();
        }
    }
}

/// rampart's own short answer, not timed (no version was asked).
fn plain(status: StatusCode, text: &'static str) -> Response<Body> {
    plain_body(status, text).map(Timed::untimed)
}

/// rampart's own short answer, before it is wrapped.
fn plain_body(
    status: StatusCode,
    text: &'static str,
) -> Response<Either<upstream::Answer, Full<Bytes>>> {
    let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
        text.as_bytes(),
    ))));
    *resp.status_mut() = status;
    resp
}

fn cookie<'a>(headers: &'a hyper::HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

fn matches(rule: &RouteMatch, headers: &hyper::HeaderMap) -> bool {
    let value: Option<&[u8]> = match &rule.source {
        MatchSource::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes()),
        MatchSource::Cookie(name) => cookie(headers, name).map(str::as_bytes),
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

fn sticky_key(sticky: &Sticky, peer: SocketAddr, headers: &hyper::HeaderMap) -> Option<Vec<u8>> {
    match sticky {
        Sticky::None => None,
        // As forwarded (`X-Forwarded-For`), the address the application knows: an
        // IPv4 client of a dual-stack listener, not its IPv4-mapped IPv6 form.
        Sticky::ClientIp => Some(peer.ip().to_canonical().to_string().into_bytes()),
        Sticky::Header(name) => headers.get(name.as_str()).map(|v| v.as_bytes().to_vec()),
        Sticky::Cookie(name) => cookie(headers, name).map(|v| v.as_bytes().to_vec()),
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

    /// Client connections open now and refused at `max_connections` so far, where
    /// the counter is the embedded proxy itself.
    fn connections(&self) -> Option<(u64, u64)> {
        None
    }

    /// HTTP/2 streams refused (503) because `max_connections` streams beyond their
    /// connections' first were in flight, where the counter is the embedded proxy
    /// itself.
    fn refused_requests(&self) -> Option<u64> {
        None
    }

    /// Requests waiting now for their variant's first backend (the hold), where the
    /// counter is the embedded proxy itself.
    fn held_requests(&self) -> Option<u64> {
        None
    }

    /// TLS handshakes that failed or timed out so far, where the counter terminates
    /// TLS.
    fn tls_handshake_failures(&self) -> Option<u64> {
        None
    }

    /// Requests answered 408 at `body_timeout` so far, where the counter is the
    /// embedded proxy itself.
    fn body_timeouts(&self) -> Option<u64> {
        None
    }

    /// Requests abandoned by their clients before the answer so far (stable, canary),
    /// where the counter sees them (the embedded proxy, nginx's 499 in its log).
    fn abandoned(&self) -> Option<(u64, u64)> {
        None
    }

    /// Upstream h2c connections that failed as a whole so far, where the counter is
    /// the embedded proxy speaking h2c to the versions.
    fn upstream_connection_errors(&self) -> Option<u64> {
        None
    }
}

impl Totals for Proxy {
    fn totals(&self) -> IntervalSample {
        Proxy::totals(self)
    }

    fn connections(&self) -> Option<(u64, u64)> {
        Some((self.open_connections(), self.refused_connections()))
    }

    fn refused_requests(&self) -> Option<u64> {
        Some(Proxy::refused_requests(self))
    }

    fn held_requests(&self) -> Option<u64> {
        Some(Proxy::held_requests(self))
    }

    fn tls_handshake_failures(&self) -> Option<u64> {
        Proxy::tls_handshake_failures(self)
    }

    fn body_timeouts(&self) -> Option<u64> {
        Some(Proxy::body_timeouts(self))
    }

    fn abandoned(&self) -> Option<(u64, u64)> {
        Some((
            Proxy::abandoned(self, Variant::Stable),
            Proxy::abandoned(self, Variant::Canary),
        ))
    }

    fn upstream_connection_errors(&self) -> Option<u64> {
        Proxy::upstream_connection_errors(self)
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

    /// Counts from now: what was counted before belongs to no window.
    fn open_window(&self, _at: rampart_core::Millis) -> BoxFuture<'_, ()> {
        if let Ok(mut last) = self.last.lock() {
            *last = self.counted.totals();
        }
        Box::pin(async {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review: only the first `Connection` line was read, so a header a second line
    /// names (`x-internal`, meant for this hop) reached the version.
    #[test]
    fn every_connection_line_names_headers_of_this_hop() {
        let mut h = hyper::HeaderMap::new();
        h.append(hyper::header::CONNECTION, "keep-alive".parse().unwrap());
        h.append(
            hyper::header::CONNECTION,
            "x-internal, x-trace".parse().unwrap(),
        );
        h.insert("x-internal", "secret".parse().unwrap());
        h.insert("x-trace", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("x-kept", "yes".parse().unwrap());
        strip_hop_by_hop(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-kept"]);
    }

    /// The check before the lookups: a head with any one hop-by-hop field among
    /// others has it stripped, wherever it sits; one with none is left as it was.
    #[test]
    fn any_one_hop_by_hop_field_is_found_among_others() {
        for (i, field) in ["keep-alive", "proxy-connection", "connection"]
            .into_iter()
            .enumerate()
        {
            for at in 0..4 {
                let mut h = hyper::HeaderMap::new();
                for k in 0..4 {
                    if k == at {
                        h.insert(field, "x-named".parse().unwrap());
                    }
                    h.insert(
                        HeaderName::try_from(format!("x-{i}-{k}")).unwrap(),
                        "v".parse().unwrap(),
                    );
                }
                h.insert("x-named", "n".parse().unwrap());
                strip_hop_by_hop(&mut h);
                assert!(!h.contains_key(field), "{field} at {at}");
                // Only `Connection` names `x-named` for this hop.
                assert_eq!(h.contains_key("x-named"), field != "connection");
                assert_eq!(h.len(), 4 + usize::from(field != "connection"));
            }
        }
        let mut h = hyper::HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        h.insert("content-type", "application/grpc".parse().unwrap());
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

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
                changed_by: String::new(),
                changed_at: 0,
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
