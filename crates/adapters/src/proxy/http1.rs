//! The proxy's HTTP/1.1 connections to the versions: kept alive between requests, and
//! each driven by the task of the request that has it, never by a task of its own.
//!
//! A pooled client that runs each upstream connection in a task of its own hands
//! every request and every answer between two tasks through channels: three or more
//! wake-ups per request, often across threads. Here a request takes an idle
//! connection to its endpoint from the pool (or opens one), and its own task polls
//! the connection while it waits for the answer and while the answer's body streams;
//! the body gives the connection back once it is done.
//!
//! Guarantees:
//! - A connection carries one request at a time, and goes back to the pool only once
//!   its answer's body was read to its end and its request written whole, with the
//!   connection still open; an answer dropped before its end closes its connection
//!   (its bytes are mid-message).
//! - A request answered before its body was all written (a version refusing an upload
//!   at its head) still has its body written: its connection is driven by a task of
//!   its own until then, and the request stays in flight meanwhile. The client's body
//!   keeps flowing, so its connection goes on to its next request; `body_timeout`
//!   still holds the client, and a version that stops reading the body is given up
//!   (the connection closed) after [`IDLE_TIMEOUT`] without progress.
//! - A request that found its pooled connection closed before any byte of it was sent
//!   is sent once more, on a new connection (a version closing an idle connection as
//!   the request arrives is not an error).
//! - An idle connection is dropped once its version closes it (seen when it is next
//!   taken, or by the sweep), once idle for [`IDLE_TIMEOUT`], or once its endpoint
//!   leaves the routes ([`Http1Pool::retain`]), also when it comes back from a request
//!   after that. The sweep runs every [`SWEEP_EVERY`] in a task that lives only while
//!   the pool holds idle connections: nothing is polled per request for it.
//! - An upgrade request (a WebSocket) gets a connection of its own, run in a task of
//!   its own so that the upgraded stream outlives the request.
//!
//! Assumptions: the request's URI is absolute, its authority the endpoint's address;
//! it is sent in origin form, with the endpoint's address as `Host` only when the
//! client sent none.

use std::collections::HashSet;
use std::future::{Future, poll_fn};
use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::{Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::addrhash::{AddrMap, AddrSet};
use super::upstream::UpstreamError;

/// How long a connection may sit idle in the pool before it is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How often the pool looks for idle connections that closed or expired, while it
/// holds any: a connection its version closed is closed here at most this late.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// A client connection to one endpoint: its request side and the connection itself,
/// which makes progress only while polled.
struct Conn<B: Body + 'static> {
    send: http1::SendRequest<B>,
    /// `None` once the connection ended (closed by either side, or failed): dropped
    /// then, so that a request or a body still waiting on it fails at once instead of
    /// waiting for a connection no one drives.
    conn: Option<http1::Connection<TokioIo<TcpStream>, B>>,
    addr: SocketAddr,
    home: Weak<Idle<Conn<B>>>,
}

/// A connection a pool keeps between requests.
pub(super) trait Pooled: Send + 'static {
    /// The endpoint it is connected to.
    fn addr(&self) -> SocketAddr;
    /// Whether it is open and takes a request now.
    fn is_ready(&mut self, cx: &mut Context<'_>) -> bool;
}

/// The idle connections of a pool, by endpoint; the last one in is the first taken.
pub(super) struct Idle<C> {
    by_endpoint: Mutex<Shelf<C>>,
}

/// Idle connections, each with the instant it went idle.
type IdleConns<C> = Vec<(Box<C>, Instant)>;

struct Shelf<C> {
    conns: AddrMap<IdleConns<C>>,
    /// The endpoints the routes name (`None`: not told yet): a connection to another
    /// is not kept.
    routed: Option<AddrSet>,
    /// Whether the sweeping task runs.
    sweeping: bool,
}

/// The pool of HTTP/1.1 connections to the versions.
pub(super) struct Http1Pool<B: Body + 'static> {
    idle: Arc<Idle<Conn<B>>>,
    connect_timeout: Duration,
}

impl<B: Body + 'static> std::fmt::Debug for Http1Pool<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Pool").finish_non_exhaustive()
    }
}

/// A connection lent to an answer's body: driven while the body is read, given back
/// to its pool at the body's end.
pub(super) trait Lent: Send {
    /// Drives the connection (it reads the answer's body into the body's channel).
    fn drive(&mut self, cx: &mut Context<'_>);
    /// Gives the connection back to its pool: its answer was read to its end. Its
    /// request may still be writing: then `flight` is taken, and held until it is
    /// written.
    fn give_back(self: Box<Self>, flight: &mut Option<super::Flight>);
}

impl<B> Http1Pool<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// An empty pool; a connection attempt may take `connect_timeout`.
    pub(super) fn new(connect_timeout: Duration) -> Self {
        Http1Pool {
            idle: Idle::new(),
            connect_timeout,
        }
    }

    /// Sends `req` to `addr` and waits for its answer's head, driving the connection
    /// meanwhile. The answer's body comes with its connection ([`Lent`]) while the
    /// connection may be used again.
    pub(super) async fn request(
        &self,
        addr: SocketAddr,
        mut req: Request<B>,
    ) -> Result<Response<(Incoming, Option<Box<dyn Lent>>)>, UpstreamError> {
        if req.headers().contains_key(hyper::header::UPGRADE) {
            return upgrade(addr, req, self.connect_timeout).await;
        }
        origin_form(&mut req);
        let mut pooled = self.idle.take(addr).await;
        loop {
            let reused = pooled.is_some();
            let mut conn = match pooled.take() {
                Some(conn) => conn,
                None => self.open(addr).await?,
            };
            let sent = conn.send.try_send_request(req);
            match conn.drive_until(sent).await {
                Ok(resp) => {
                    let lent = conn.conn.is_some().then_some(conn as Box<dyn Lent>);
                    return Ok(resp.map(|body| (body, lent)));
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the pooled connection had closed under it.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(e.into_error().into()),
                },
            }
        }
    }

    /// Forgets the idle connections to endpoints not `routed` (those the routes name),
    /// and keeps none to them from now on.
    pub(super) fn retain(&self, routed: HashSet<SocketAddr>) {
        self.idle.retain(routed);
    }

    /// A new connection to `addr`.
    async fn open(&self, addr: SocketAddr) -> Result<Box<Conn<B>>, UpstreamError> {
        let (send, conn) = self.handshake(addr).await?;
        Ok(Box::new(Conn {
            send,
            conn: Some(conn),
            addr,
            home: Arc::downgrade(&self.idle),
        }))
    }

    async fn handshake(
        &self,
        addr: SocketAddr,
    ) -> Result<
        (
            http1::SendRequest<B>,
            http1::Connection<TokioIo<TcpStream>, B>,
        ),
        UpstreamError,
    > {
        handshake(addr, self.connect_timeout).await
    }
}

/// A new HTTP/1.1 connection to `addr`, connected within `connect_timeout`.
async fn handshake<B>(
    addr: SocketAddr,
    connect_timeout: Duration,
) -> Result<
    (
        http1::SendRequest<B>,
        http1::Connection<TokioIo<TcpStream>, B>,
    ),
    UpstreamError,
>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = connect(addr, connect_timeout).await?;
    Ok(http1::handshake(TokioIo::new(stream)).await?)
}

/// A new TCP connection to a version's endpoint, within `connect_timeout`, without
/// Nagle's delay (a request head is one write), and given up by the kernel once its
/// version's host stops answering (see [`liveness`]). Every connection the proxy
/// opens to a version is opened here, h2c's and upgrades' too.
pub(super) async fn connect(
    addr: SocketAddr,
    connect_timeout: Duration,
) -> std::io::Result<TcpStream> {
    let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("connecting to {addr} timed out"),
            )
        })??;
    stream.set_nodelay(true)?;
    // Best effort: a kernel without these options still gets its connections, with
    // its own limits.
    if let Err(e) = liveness(&stream) {
        tracing::debug!(error = %e, %addr, "TCP liveness options not set");
    }
    Ok(stream)
}

/// How long bytes written to a version may go unacknowledged by its host before the
/// connection fails (`TCP_USER_TIMEOUT`). A host that died without a word (a crash, a
/// power loss, a partition) never resets its connections: without this, a request
/// written to one waits for the kernel's own retransmission limit, about 15 minutes
/// on Linux (`tcp_retries2`), and an h2c connection keeps taking new streams all
/// that time. A version that is merely slow is not concerned: its host's kernel
/// acknowledges the bytes whatever the process does.
pub(super) const UNACKED_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection with nothing in flight is probed by TCP keepalive after this long
/// quiet, then every [`KEEPALIVE_INTERVAL`]: an idle pooled connection to a dead host
/// is found out within about [`UNACKED_TIMEOUT`] rather than when a request is put on
/// it. Probes are the kernel's: the version's process never sees them (unlike HTTP/2
/// `PING`s, which gRPC servers may answer with `GOAWAY` when they come too often).
pub(super) const KEEPALIVE_IDLE: Duration = Duration::from_secs(15);

/// Between two keepalive probes of a quiet connection.
pub(super) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);

/// Sets [`UNACKED_TIMEOUT`] and keepalive on a connection to a version.
fn liveness(stream: &TcpStream) -> std::io::Result<()> {
    let socket = socket2::SockRef::from(stream);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    #[cfg(any(target_os = "linux", target_os = "android"))]
    let keepalive = keepalive.with_retries(3);
    socket.set_tcp_keepalive(&keepalive)?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    socket.set_tcp_user_timeout(Some(UNACKED_TIMEOUT))?;
    Ok(())
}

/// An upgrade request (a WebSocket) to `addr` in HTTP/1.1, whatever the versions are
/// otherwise spoken to in, on a connection of its own run by a task of its own: the
/// upgraded stream lives on after the request. `req`'s URI is absolute, as for
/// [`Http1Pool::request`].
pub(super) async fn upgrade<B>(
    addr: SocketAddr,
    mut req: Request<B>,
    connect_timeout: Duration,
) -> Result<Response<(Incoming, Option<Box<dyn Lent>>)>, UpstreamError>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    *req.version_mut() = hyper::Version::HTTP_11;
    origin_form(&mut req);
    let (mut send, conn) = handshake(addr, connect_timeout).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, %addr, "upgrade connection ended");
        }
    });
    let resp = send.send_request(req).await?;
    Ok(resp.map(|body| (body, None)))
}

impl<C> Idle<C> {
    /// An empty shelf, keeping connections to any endpoint until told the routed ones.
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Idle {
            by_endpoint: Mutex::new(Shelf {
                conns: AddrMap::default(),
                routed: None,
                sweeping: false,
            }),
        })
    }

    fn shelf(&self) -> std::sync::MutexGuard<'_, Shelf<C>> {
        self.by_endpoint.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the idle connections to endpoints not `routed`, and keeps none to them
    /// from now on.
    pub(super) fn retain(&self, routed: HashSet<SocketAddr>) {
        let mut shelf = self.shelf();
        shelf.conns.retain(|addr, _| routed.contains(addr));
        shelf.routed = Some(routed.into_iter().collect());
    }
}

impl<C: Pooled> Idle<C> {
    /// An idle connection to `addr` that is still open and ready for a request.
    pub(super) async fn take(&self, addr: SocketAddr) -> Option<Box<C>> {
        loop {
            let mut conn = {
                let mut shelf = self.shelf();
                let conns = shelf.conns.get_mut(&addr)?;
                let (conn, _) = conns.pop()?;
                conn
            };
            if poll_fn(|cx| Poll::Ready(conn.is_ready(cx))).await {
                return Some(conn);
            }
        }
    }

    /// Puts `conn`, between requests, on the shelf; starts the sweep if it is not
    /// running.
    pub(super) fn shelve(self: &Arc<Self>, conn: Box<C>) {
        let mut shelf = self.shelf();
        let addr = conn.addr();
        if shelf
            .routed
            .as_ref()
            .is_some_and(|routed| !routed.contains(&addr))
        {
            return;
        }
        shelf
            .conns
            .entry(addr)
            .or_default()
            .push((conn, Instant::now()));
        if !shelf.sweeping
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            shelf.sweeping = true;
            runtime.spawn(Self::sweeping(Arc::downgrade(self)));
        }
    }

    /// Sweeps the shelf every [`SWEEP_EVERY`] until it is empty or the pool is gone.
    async fn sweeping(idle: Weak<Self>) {
        /// Clears the flag however the task ends (its runtime may drop it mid-sleep),
        /// so that the next connection shelved starts another.
        struct Stopped<C>(Weak<Idle<C>>);
        impl<C> Drop for Stopped<C> {
            fn drop(&mut self) {
                if let Some(idle) = self.0.upgrade() {
                    idle.shelf().sweeping = false;
                }
            }
        }
        let _stopped = Stopped(idle.clone());
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            let Some(idle) = idle.upgrade() else {
                return;
            };
            let mut shelf = idle.shelf();
            shelf.sweep();
            if shelf.conns.is_empty() {
                return;
            }
        }
    }
}

impl<C: Pooled> Shelf<C> {
    /// Drops the idle connections that expired or that their versions closed.
    fn sweep(&mut self) {
        let now = Instant::now();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for conns in self.conns.values_mut() {
            conns.retain_mut(|(conn, since)| {
                now.duration_since(*since) < IDLE_TIMEOUT && conn.is_ready(&mut cx)
            });
        }
        self.conns.retain(|_, conns| !conns.is_empty());
    }
}

impl<B> Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Polls the connection once; drops it once it ended.
    fn poll_conn(&mut self, cx: &mut Context<'_>) {
        let Some(conn) = &mut self.conn else {
            return;
        };
        if let Poll::Ready(result) = Pin::new(conn).poll(cx) {
            self.conn = None;
            if let Err(e) = result {
                tracing::debug!(error = %e, addr = %self.addr, "upstream connection ended");
            }
        }
    }

    /// Waits for `fut`, driving the connection meanwhile: first the connection (it
    /// writes the request, reads the answer), then `fut`, which then often needs no
    /// wake-up of its own.
    async fn drive_until<F: Future>(&mut self, fut: F) -> F::Output {
        let mut fut = pin!(fut);
        poll_fn(|cx| {
            self.poll_conn(cx);
            fut.as_mut().poll(cx)
        })
        .await
    }
}

impl<B> Pooled for Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn is_ready(&mut self, cx: &mut Context<'_>) -> bool {
        self.poll_conn(cx);
        self.conn.is_some() && matches!(self.send.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

impl<B> Lent for Conn<B>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn drive(&mut self, cx: &mut Context<'_>) {
        self.poll_conn(cx);
    }

    fn give_back(mut self: Box<Self>, flight: &mut Option<super::Flight>) {
        let Some(home) = self.home.upgrade() else {
            return;
        };
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if self.is_ready(&mut cx) {
            home.shelve(self);
            return;
        }
        if self.conn.is_none() {
            return;
        }
        // Answered before its request was written whole: written on by a task of its
        // own, then shelved.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let flight = flight.take();
        runtime.spawn(async move {
            let _flight = flight;
            // Reset at each wake-up: the client's bytes or the version's reading
            // moved the body on. A wake-up by this sleep alone is the silence.
            let mut quiet = Box::pin(tokio::time::sleep(IDLE_TIMEOUT));
            let written = poll_fn(|cx| {
                if self.is_ready(cx) {
                    return Poll::Ready(true);
                }
                if self.conn.is_none() || quiet.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(false);
                }
                quiet.as_mut().reset(Instant::now() + IDLE_TIMEOUT);
                let _ = quiet.as_mut().poll(cx);
                Poll::Pending
            })
            .await;
            if written {
                home.shelve(self);
            }
        });
    }
}

/// The request's URI in origin form (`/path?query`), as HTTP/1.1 sends it to an
/// origin server; the endpoint's address becomes its `Host` when the client sent none
/// (an HTTP/1.0 client).
fn origin_form<B>(req: &mut Request<B>) {
    if !req.headers().contains_key(hyper::header::HOST)
        && let Some(authority) = req.uri().authority()
        && let Ok(host) = hyper::header::HeaderValue::from_str(authority.as_str())
    {
        req.headers_mut().insert(hyper::header::HOST, host);
    }
    let path = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| hyper::http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(path);
}
