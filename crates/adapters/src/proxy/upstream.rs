//! The proxy's side toward the versions (`traffic.proxy.upstream_protocol`): HTTP/1.1
//! through hyper's client on pooled connections (requests without a body go on the
//! lean path's instead, see `lean::Pool::fetch`), or HTTP/2 with prior knowledge
//! (h2c) on a few multiplexed connections per endpoint, spoken with the `h2` crate's
//! client from each request's own task (see [`exchange`](super::exchange)).
//!
//! Owns the upstream connections and how a request is put to them (sent again, to the
//! same endpoint, when the version did not process it), and tells a failure of a
//! request's own from one its connection's failure caused or its version's graceful
//! close left (see [`is_uncharged`]). It must not choose a variant or an endpoint, nor
//! count anything but its connections' failures: `mod.rs` does both, and hands it the
//! endpoint.
//!
//! Guarantees (h2c), so that no client can break other clients' streams to a version,
//! nor have their breakage counted against it:
//! - A connection carries at most [`STREAMS_PER_CONNECTION`] streams at once, or fewer
//!   when its version's `SETTINGS_MAX_CONCURRENT_STREAMS` says so; requests that find
//!   every connection of their endpoint full open one more between them (one opening
//!   at a time per endpoint; those that waited on one that failed fail with its
//!   cause). A version that sets its limit to 0 on its newest open connection (RFC
//!   9113 5.1.2 lets it, for a while) gets no other connection for
//!   [`ZERO_PATIENCE`]: requests fail at once, its errors, until it raises the limit
//!   or closes the connection, rather than each opening a connection as full as the
//!   last; past that, one more connection is tried. A connection is opened on
//!   the first request that needs it and dropped once closed (a version restarted,
//!   an idle connection closed by the version), or once idle while another of the
//!   same endpoint is idle too. A stream counts from its request until its response
//!   body is done or dropped.
//! - A stream whose client stops reading holds at most [`STREAM_WINDOW`] of its
//!   connection's receive window, which is [`CONNECTION_WINDOW`]: every stream of a
//!   full connection at its window. Slow readers can never stall the other streams.
//! - A request header block larger than its version accepts (its
//!   `SETTINGS_MAX_HEADER_LIST_SIZE`, read off the connection's first frame) is never
//!   sent: it is refused here ([`HeaderListTooLarge`], the client's 431). A version
//!   may answer such a block with a connection error, which would break every stream
//!   on the connection. A version that sets no limit gets every block the proxy took
//!   from its client, as an HTTP/1.1 version does (HTTP/2 counts 32 bytes more per
//!   field than the head's bytes, so `max_header_bytes` would refuse heads an
//!   HTTP/1.1 client sent within it).
//! - A failure of the whole connection (a `GOAWAY` with an error code, its socket's
//!   error or close) fails every stream on it, and which stream caused it cannot be
//!   told: it is charged once per connection, to the first stream that sees it and
//!   whose failure is counted (a request waiting for its answer, a gRPC call, but not
//!   a plain answer mid-body, counted at its head); every other stream it breaks, at
//!   its request or in its response body, fails [uncharged](is_uncharged) (its client
//!   still gets its 502, or its broken body). Each such connection is counted once in
//!   [`Upstream::connection_errors`], by the first stream that sees it. A stream's own
//!   failure (reset by the version) is its own, as before.
//! - A graceful `GOAWAY` (`NO_ERROR`: a version rotating its connections, as grpc-go's
//!   `MaxConnectionAge` does, or shutting down) is no failure. From the first one read
//!   off the socket, the connection takes no new stream; its streams at or below the
//!   last stream id go on to their end on it; those above it, which the version did
//!   not process (RFC 9113 6.8), are sent again on another connection (opened if
//!   need be). Nothing of it is charged, nor counted in `connection_errors`; a stream
//!   it left unprocessed that cannot be sent again, or whose second try no connection
//!   takes, fails uncharged (its client gets its 502). Streams at or below the last stream id that the version then leaves
//!   unfinished (it closes the socket) are a connection failure, as above.
//! - A stream the version refuses alone (`REFUSED_STREAM`: not processed, RFC 9113
//!   8.7) is sent once more, on a connection with room (the same one if it still
//!   takes streams); only if that fails is the failure reported, and it is the
//!   version's, as any stream's own.
//! - A request that found its connection closed before any byte of it was sent is
//!   sent once more, on another connection, as hyper-util's pool does for HTTP/1.1.
//! - A request is sent again at most once, whatever the cause, and only while all of
//!   its body that was read is kept: up to [`KEPT_BYTES`](super::replay::KEPT_BYTES),
//!   until the version's answer begins (see [`replay`](super::replay)). A refused
//!   stream that cannot be sent again is the version's failure.
//! - The request reaches the version with the client's authority as `:authority` (not
//!   the endpoint's address), and without `Host`.
//! - An upgrade request (a WebSocket) goes in HTTP/1.1, on a connection of its own:
//!   HTTP/2 has no upgrade. (A `CONNECT` never comes here: the proxy refuses it.)
//!
//! Assumptions: a version that speaks h2c accepts prior knowledge (no `Upgrade: h2c`
//! dance), as gRPC servers and `h2c`-enabled HTTP servers do, and sends its SETTINGS
//! first (RFC 9113 3.4) within [`CONNECT_TIMEOUT`]. A later SETTINGS that lowers its
//! header list size is not seen (its stream limit is). A version means what it says
//! of a stream it did not process (`REFUSED_STREAM`, a `GOAWAY`'s last stream id):
//! such a request is sent again whatever its method, as RFC 9113 8.7 allows.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, Uri};
use rampart_core::policy::UpstreamProtocol;

use super::addrhash::AddrMap;
use super::exchange::{Cancel, Failed, Received, declared_length, exchange};
use super::http1::{Http1Pool, Lent};
use super::replay::Tape;
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::oneshot;

/// The largest response (or trailer) header block taken from an h2c version, as
/// HTTP/2 counts it. hyper's default (16 KiB) reset larger ones, which the client
/// saw as the version's 502 where an HTTP/1.1 version's answer passed.
const RESPONSE_HEADER_LIST: u32 = 256 * 1024;

/// How long opening a connection to an endpoint may take, its version's SETTINGS
/// included.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The most streams one h2c connection carries at once. It bounds what one
/// connection-level failure breaks, and the receive window a connection must grant
/// ([`CONNECTION_WINDOW`]). 100 is the least RFC 9113 (5.1.2) asks servers to allow,
/// so most versions take that many; one that allows fewer is held to its own number.
const STREAMS_PER_CONNECTION: usize = 100;

/// What one stream's unread response may hold of its connection's receive window.
/// Small enough that a connection's window can cover every stream at it, large enough
/// for a stream to move tens of MB/s over a millisecond of round trip. (hyper's default,
/// 2 MiB per stream in 5 MiB per connection, let three stalled streams stop the rest.)
const STREAM_WINDOW: u32 = 256 * 1024;

/// A connection's receive window: every stream it may carry at [`STREAM_WINDOW`], so
/// streams whose clients stopped reading never hold what the others need.
const CONNECTION_WINDOW: u32 = STREAMS_PER_CONNECTION as u32 * STREAM_WINDOW;

/// What one h2c connection buffers of its streams' outgoing data beyond what the
/// version's windows let it send (hyper's client's default, kept).
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// The largest first frame taken from a version: HTTP/2's initial `SETTINGS_MAX_FRAME_SIZE`.
const MAX_PREFACE_FRAME: usize = 16_384;

/// A failure to get an answer from a version.
pub(super) type UpstreamError = Box<dyn std::error::Error + Send + Sync>;

/// A request refused before it was sent: its header block is larger than its version
/// accepts. The client's fault, not the version's: answered 431.
#[derive(Debug, thiserror::Error)]
#[error("a request header block of {size} bytes is over the {limit} bytes the version accepts")]
pub(super) struct HeaderListTooLarge {
    /// The block's size, as HTTP/2 counts it (RFC 9113 6.5.2).
    size: usize,
    /// The version's limit.
    limit: usize,
}

/// A stream's failure that is not counted against its version.
#[derive(Debug, thiserror::Error)]
pub(super) enum Uncharged {
    /// Broken by its connection's failure, which another stream of that connection
    /// was already charged with.
    #[error("upstream connection failed (charged to another stream of it)")]
    Shared(#[source] ::h2::Error),
    /// Not processed by a version closing its connection gracefully (a `GOAWAY` with
    /// `NO_ERROR`), and not sent again: it was sent again once already, or its body
    /// was past what is kept for that.
    #[error("the version closed its connection before processing the request")]
    Unprocessed(#[source] ::h2::Error),
    /// Not processed by a version closing its connection gracefully, and sent again,
    /// but no connection to it took the second try (it stopped listening as it shut
    /// down).
    #[error("the version closed its connection before processing the request, then took no other")]
    Unplaced(#[source] UpstreamError),
}

/// Whether `e` (or what caused it) is a failure not counted against the version: a
/// stream broken by a connection failure that is already charged to it once, or a
/// request it did not process as it closed its connection gracefully.
pub(super) fn is_uncharged(e: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(e), |e| e.source()).any(|e| e.is::<Uncharged>())
}

/// The versions' side of the proxy, in the protocol the policy chose.
#[derive(Debug)]
pub(super) enum Upstream<B: Body + 'static> {
    /// HTTP/1.1, pooled, each connection driven by the request using it.
    Http1(Http1Pool<B>),
    /// HTTP/2 with prior knowledge, a few connections per endpoint.
    H2c(H2cPool),
}

impl<B> Upstream<B>
where
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// An upstream side speaking `protocol`.
    pub(super) fn new(protocol: UpstreamProtocol) -> Self {
        match protocol {
            UpstreamProtocol::Http1 => Upstream::Http1(Http1Pool::new(CONNECT_TIMEOUT)),
            UpstreamProtocol::H2c => Upstream::H2c(H2cPool {
                conns: Mutex::new(AddrMap::default()),
                connection_errors: Arc::new(AtomicU64::new(0)),
            }),
        }
    }

    /// The protocol spoken.
    pub(super) fn protocol(&self) -> UpstreamProtocol {
        match self {
            Upstream::Http1(_) => UpstreamProtocol::Http1,
            Upstream::H2c(_) => UpstreamProtocol::H2c,
        }
    }

    /// h2c connections that failed as a whole while streams were on them, so far
    /// (each charged to the version once); `None` over HTTP/1.1.
    pub(super) fn connection_errors(&self) -> Option<u64> {
        match self {
            Upstream::Http1(_) => None,
            Upstream::H2c(pool) => Some(pool.connection_errors.load(Ordering::Relaxed)),
        }
    }

    /// Sends `req` to the endpoint `addr`. `req`'s URI is absolute, with `addr` as its
    /// authority; its version and headers are set here for the protocol. `counted`
    /// says whether the proxy counts it in a version's metrics: only a counted stream
    /// takes its h2c connection's failure (see `Slot::failed`).
    pub(super) async fn request(
        &self,
        addr: SocketAddr,
        mut req: Request<B>,
        counted: bool,
    ) -> Result<Response<Answer>, UpstreamError> {
        match self {
            Upstream::Http1(pool) => {
                // The proxy speaks HTTP/1.1 on each hop: a 1.0 client's request
                // forwarded as 1.0 would pin the pooled upstream connection to 1.0,
                // and every later client would get 1.0 answers (hyper still answers a
                // 1.0 client in 1.0).
                *req.version_mut() = hyper::Version::HTTP_11;
                let resp = pool.request(addr, req).await?;
                Ok(resp.map(|(body, lent)| Answer {
                    body: Source::Hyper(body),
                    slot: None,
                    lent,
                    flight: None,
                    settled: false,
                }))
            }
            // HTTP/2 has no upgrade: a WebSocket goes in HTTP/1.1.
            Upstream::H2c(_) if req.headers().contains_key(hyper::header::UPGRADE) => {
                let resp = super::http1::upgrade(addr, req, CONNECT_TIMEOUT).await?;
                Ok(resp.map(|(body, lent)| Answer {
                    body: Source::Hyper(body),
                    slot: None,
                    lent,
                    flight: None,
                    settled: false,
                }))
            }
            Upstream::H2c(pool) => {
                *req.version_mut() = hyper::Version::HTTP_2;
                authority_from_host(&mut req);
                pool.request(addr, req, counted).await
            }
        }
    }

    /// Forgets the connections to endpoints not `routed` (those the routes name).
    pub(super) fn retain(&self, routed: HashSet<SocketAddr>) {
        match self {
            Upstream::H2c(pool) => pool.lock().retain(|addr, _| routed.contains(addr)),
            Upstream::Http1(pool) => pool.retain(routed),
        }
    }
}

/// Makes the request's `Host` its `:authority` (HTTP/2 has no `Host`; RFC 9113
/// 8.3.1): the version sees the name the client asked for. A request without a
/// usable `Host` keeps the endpoint's address.
fn authority_from_host<B>(req: &mut Request<B>) {
    let Some(host) = req.headers_mut().remove(hyper::header::HOST) else {
        return;
    };
    let Ok(authority) = hyper::http::uri::Authority::try_from(host.as_bytes()) else {
        return;
    };
    let mut parts = req.uri().clone().into_parts();
    parts.authority = Some(authority);
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

/// The size of the header block the h2 client makes of `req`, as
/// `SETTINGS_MAX_HEADER_LIST_SIZE` counts it: each field's name and value, plus 32
/// (RFC 9113 6.5.2), the pseudo-header fields included.
fn header_list_size<B>(req: &Request<B>) -> usize {
    const FIELD: usize = 32;
    let uri = req.uri();
    let pseudo = [
        ":method".len() + req.method().as_str().len(),
        ":scheme".len() + uri.scheme_str().map_or(0, str::len),
        ":authority".len() + uri.authority().map_or(0, |a| a.as_str().len()),
        ":path".len() + uri.path_and_query().map_or(1, |p| p.as_str().len()),
    ];
    let fields = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + FIELD);
    pseudo.iter().map(|p| p + FIELD).chain(fields).sum()
}

// === impl H2cPool ===

/// A few HTTP/2 connections per endpoint, each shared by up to its stream limit of
/// requests.
#[derive(Debug)]
pub(super) struct H2cPool {
    conns: Mutex<AddrMap<Endpoint>>,
    /// Connections that failed as a whole with streams on them.
    connection_errors: Arc<AtomicU64>,
}

/// One endpoint's connections.
#[derive(Debug, Default)]
struct Endpoint {
    conns: Vec<Conn>,
    /// Taken to open a connection: a burst of requests that find no room opens one
    /// connection, not one each.
    gate: Arc<tokio::sync::Mutex<Gate>>,
}

/// What the last opening of a connection to an endpoint left.
#[derive(Debug, Default)]
struct Gate {
    /// When it failed, and why: requests that waited for it fail with it, rather than
    /// each waiting out its own attempt at an endpoint that does not answer.
    failed: Option<(tokio::time::Instant, String)>,
}

/// One connection to an endpoint.
#[derive(Debug)]
struct Conn {
    sender: ::h2::client::SendRequest<Bytes>,
    shared: Arc<Shared>,
    /// Set when the version's first `GOAWAY` is read off the socket: the connection
    /// takes no new stream. h2 may learn of the `GOAWAY` only when its connection's
    /// task next runs, and fail a request given to it meanwhile unsent.
    going_away: Arc<AtomicBool>,
}

/// What the requests on one connection share.
#[derive(Debug)]
struct Shared {
    /// Streams on the connection now (see [`Slot`]).
    streams: AtomicUsize,
    /// The most the connection may carry: [`STREAMS_PER_CONNECTION`], or its version's
    /// `SETTINGS_MAX_CONCURRENT_STREAMS` when lower, from each SETTINGS as it is read
    /// off the socket (see [`Watched`]).
    max_streams: Arc<Limit>,
    /// The largest request header block its version accepts, when it says.
    header_limit: Option<usize>,
    /// Set once a stream was charged with the connection's failure.
    charged: AtomicBool,
    /// Set once the connection's failure was counted in `connection_errors`.
    reported: AtomicBool,
    /// Set when the connection's task ended (its socket closed or failed), or when it
    /// took no request given to it: it takes no more.
    closed: Arc<AtomicBool>,
    /// The pool's count of connections that failed as a whole.
    connection_errors: Arc<AtomicU64>,
}

impl Conn {
    /// Whether it can take one more stream.
    fn has_room(&self) -> bool {
        self.is_open()
            && self.shared.streams.load(Ordering::Acquire) < self.shared.max_streams.get()
    }

    /// Whether it may take new streams at all: neither closed nor going away.
    fn is_open(&self) -> bool {
        !self.shared.closed.load(Ordering::Acquire) && !self.going_away.load(Ordering::Acquire)
    }

    fn is_idle(&self) -> bool {
        self.shared.streams.load(Ordering::Acquire) == 0
    }
}

impl H2cPool {
    fn lock(&self) -> std::sync::MutexGuard<'_, AddrMap<Endpoint>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn request<B>(
        &self,
        addr: SocketAddr,
        req: Request<B>,
        counted: bool,
    ) -> Result<Response<Answer>, UpstreamError>
    where
        B: hyper::body::Body + Send + Unpin + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let size = header_list_size(&req);
        // The head is kept to be sent again; each attempt sends a copy of it.
        let (parts, body) = req.into_parts();
        let head = Request::from_parts(parts, ());
        let (tape, mut play) = Tape::new(body);
        // Sent again at most once, whatever the cause.
        let mut retried = false;
        // Sent again because a graceful close left it unprocessed.
        let mut gone_away = false;
        loop {
            let (sender, mut slot) = match self.stream(addr).await {
                Ok(placed) => placed,
                Err(e) if gone_away => return Err(Uncharged::Unplaced(e).into()),
                Err(e) => return Err(e),
            };
            slot.1 = counted;
            let slot = Arc::new(slot);
            if let Some(limit) = slot.0.header_limit
                && size > limit
            {
                return Err(HeaderListTooLarge { size, limit }.into());
            }
            let e = match exchange(sender, head_of(&head), play, slot.clone()).await {
                Ok((resp, cancel)) => {
                    // The version has the request: it is never sent again.
                    tape.forget();
                    let length = declared_length(resp.headers());
                    return Ok(resp.map(|recv| Answer {
                        body: Source::H2(Received::new(recv, length), cancel),
                        slot: Some(slot),
                        lent: None,
                        flight: None,
                        settled: false,
                    }));
                }
                // The client's body failed: its fault, never the version's.
                Err(Failed::Client(e)) => return Err(super::lean::ClientBody(e).into()),
                // Not sent at all (the connection closed or went away under it): once
                // more, on another connection (a closed one is dropped when streams are
                // placed), with the body as it is.
                // Nothing of its body was read, so it plays again from its start.
                Err(Failed::NotSent(e)) => {
                    // Its task may not have ended yet: no later request may find it.
                    slot.0.closed.store(true, Ordering::Release);
                    match tape.replay() {
                        Some(again) if !retried => {
                            tracing::debug!(error = %e, %addr, "h2c request not taken; sent on another connection");
                            retried = true;
                            play = again;
                            continue;
                        }
                        _ => e,
                    }
                }
                Err(Failed::Stream(e)) => e,
            };
            let unprocessed = unprocessed(&e);
            // Not processed by the version (RFC 9113 8.7): once more, from the body's
            // first byte, on a connection that takes new streams.
            if unprocessed.is_some()
                && !retried
                && let Some(again) = tape.replay()
            {
                retried = true;
                gone_away = unprocessed == Some(Unprocessed::GoneAway);
                play = again;
                continue;
            }
            return Err(match unprocessed {
                // A graceful close is no failure of the version's.
                Some(Unprocessed::GoneAway) => Uncharged::Unprocessed(e).into(),
                Some(Unprocessed::Refused) | None => slot.failed(e, true),
            });
        }
    }

    /// A stream on one of the endpoint's connections with room for it, opened if none
    /// has any.
    async fn stream(
        &self,
        addr: SocketAddr,
    ) -> Result<(::h2::client::SendRequest<Bytes>, Slot), UpstreamError> {
        if let Some(placed) = self.place(addr, None) {
            return Ok(placed);
        }
        let asked = tokio::time::Instant::now();
        let gate = self.lock().entry(addr).or_default().gate.clone();
        let mut gate = gate.lock().await;
        // Another request may have opened one meanwhile, with room.
        if let Some(placed) = self.place(addr, None) {
            return Ok(placed);
        }
        if let Some((at, why)) = &gate.failed
            && *at >= asked
        {
            return Err(format!("connecting to {addr} failed: {why}").into());
        }
        // A version at a stream limit of 0 would be as full on a new connection: none
        // is opened for it for a while (see `takes_no_stream`).
        if self.takes_no_stream(addr) {
            return Err(no_stream(addr));
        }
        let conn = match self.open(addr).await {
            Ok(conn) => conn,
            Err(e) => {
                gate.failed = Some((tokio::time::Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        gate.failed = None;
        self.place(addr, Some(conn)).ok_or_else(|| {
            if self.takes_no_stream(addr) {
                no_stream(addr)
            } else {
                format!("the new connection to {addr} closed before its first request").into()
            }
        })
    }

    /// Whether the newest open connection to `addr` has had its version's stream
    /// limit at 0 for less than [`ZERO_PATIENCE`]: another would most likely be as
    /// full. An older connection at 0 beside a newer one with streams says nothing of
    /// a new one (a version may drain one connection so), and once the limit has
    /// stayed at 0 that long, one more connection is tried.
    fn takes_no_stream(&self, addr: SocketAddr) -> bool {
        self.lock().get(&addr).is_some_and(|e| {
            e.conns
                .iter()
                .find(|c| c.is_open())
                .is_some_and(|c| c.shared.max_streams.refusing())
        })
    }

    /// Takes a stream on a connection to `addr` with room for it, `new` first if given
    /// (then kept in the pool). Drops closed connections and those going away (their
    /// streams finish on them), and idle ones but the first.
    fn place(
        &self,
        addr: SocketAddr,
        new: Option<Conn>,
    ) -> Option<(::h2::client::SendRequest<Bytes>, Slot)> {
        let mut pool = self.lock();
        let conns = &mut pool.entry(addr).or_default().conns;
        if let Some(new) = new {
            conns.insert(0, new);
        }
        let mut kept_idle = false;
        conns.retain(|c| {
            if !c.is_open() {
                return false;
            }
            if c.is_idle() {
                // A burst's extra connections close once it has passed.
                if kept_idle {
                    return false;
                }
                kept_idle = true;
            }
            true
        });
        let conn = conns.iter().find(|c| c.has_room())?;
        conn.shared.streams.fetch_add(1, Ordering::AcqRel);
        Some((conn.sender.clone(), Slot(conn.shared.clone(), true)))
    }

    /// Opens a connection to `addr` and reads its version's SETTINGS.
    async fn open(&self, addr: SocketAddr) -> Result<Conn, UpstreamError> {
        let opening = async {
            let tcp = super::http1::connect(addr, CONNECT_TIMEOUT).await?;
            let (told, settings) = oneshot::channel();
            let going_away = Arc::new(AtomicBool::new(false));
            let max_streams = Arc::new(Limit::default());
            let io = Watched::new(tcp, told, going_away.clone(), max_streams.clone());
            let (sender, conn) = ::h2::client::Builder::new()
                .max_header_list_size(RESPONSE_HEADER_LIST)
                .initial_max_send_streams(STREAMS_PER_CONNECTION)
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_send_buffer_size(MAX_SEND_BUFFER)
                .enable_push(false)
                .handshake::<_, Bytes>(io)
                .await?;
            let closed = Arc::new(AtomicBool::new(false));
            let ended = closed.clone();
            tokio::spawn(async move {
                // Ends once the version closes it, or once the pool let it go and its
                // streams are done (h2 wakes it when its last handle is dropped).
                let result = conn.await;
                ended.store(true, Ordering::Release);
                if let Err(e) = result {
                    tracing::debug!(error = %e, %addr, "upstream h2c connection ended");
                }
            });
            let settings = settings
                .await
                .map_err(|_| format!("{addr} closed before its HTTP/2 settings"))?;
            let header_limit = settings
                .max_header_list
                .map(|l| usize::try_from(l).unwrap_or(usize::MAX));
            Ok::<_, UpstreamError>(Conn {
                sender,
                going_away,
                shared: Arc::new(Shared {
                    streams: AtomicUsize::new(0),
                    max_streams,
                    header_limit,
                    charged: AtomicBool::new(false),
                    reported: AtomicBool::new(false),
                    closed,
                    connection_errors: self.connection_errors.clone(),
                }),
            })
        };
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, opening)
            .await
            .map_err(|_| format!("connecting to {addr} timed out"))??;
        Ok(conn)
    }
}

/// Whether `e` failed the whole connection rather than one stream: a `GOAWAY` (sent or
/// received, of any code), or the socket's error or close (h2 fails every stream of a
/// connection whose socket closed with a broken pipe).
fn is_connection_failure(e: &::h2::Error) -> bool {
    e.is_go_away() || e.is_io()
}

/// Why a version did not process a stream, as it said (RFC 9113 8.7): its request may
/// be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unprocessed {
    /// Refused alone (`RST_STREAM` with `REFUSED_STREAM`).
    Refused,
    /// Above the last stream id of a graceful `GOAWAY` (`NO_ERROR`), or given to the
    /// connection after one came: h2 then fails it unsent.
    GoneAway,
}

/// Whether the version said it did not process the stream that failed with `e`. h2
/// fails a stream above a `GOAWAY`'s last stream id with that `GOAWAY` (the version's,
/// with its code), and so too a request it refuses to open after one; a stream the
/// version refuses, with the version's `RST_STREAM`.
fn unprocessed(e: &::h2::Error) -> Option<Unprocessed> {
    if !e.is_remote() {
        return None;
    }
    match e.reason()? {
        ::h2::Reason::REFUSED_STREAM if e.is_reset() => Some(Unprocessed::Refused),
        ::h2::Reason::NO_ERROR if e.is_go_away() => Some(Unprocessed::GoneAway),
        _ => None,
    }
}

/// A copy of `req`'s head, to send it again.
fn head_of<B>(req: &Request<B>) -> Request<()> {
    let mut head = Request::new(());
    *head.method_mut() = req.method().clone();
    *head.uri_mut() = req.uri().clone();
    *head.version_mut() = req.version();
    *head.headers_mut() = req.headers().clone();
    *head.extensions_mut() = req.extensions().clone();
    head
}

/// A stream counted on its connection until dropped; and whether the proxy counts the
/// stream in a version's metrics (rampart's own uncounted load is not).
#[derive(Debug)]
struct Slot(Arc<Shared>, bool);

impl Slot {
    /// `e` as the version's failure, unless it is its connection's, already charged to
    /// another stream: then [`Uncharged`]. The first counted stream to see its
    /// connection fail counts the connection in the pool's `connection_errors`.
    /// A stream that is not counted, or whose failure is not (`counts` false: a plain
    /// answer mid-body, counted at its head), never takes the charge: another stream
    /// on the same connection must, or the failure would count nowhere.
    fn failed(&self, e: ::h2::Error, counts: bool) -> UpstreamError {
        if !is_connection_failure(&e) {
            return e.into();
        }
        if self.1 && !self.0.reported.swap(true, Ordering::AcqRel) {
            self.0.connection_errors.fetch_add(1, Ordering::Relaxed);
        }
        if !(self.1 && counts) || self.0.charged.swap(true, Ordering::AcqRel) {
            return Uncharged::Shared(e).into();
        }
        e.into()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::AcqRel);
    }
}

// === impl Limit ===

/// How long a version's stream limit of 0 on its newest connection keeps the pool from
/// opening another to it (requests fail at once meanwhile); past it, one more is
/// tried, so that a version that never raises the limit on that connection, nor
/// closes it, is not left failing for good.
const ZERO_PATIENCE: Duration = Duration::from_secs(10);

/// A connection's stream limit: [`STREAMS_PER_CONNECTION`], or its version's when
/// lower; and since when it is 0, while it is.
#[derive(Debug)]
struct Limit {
    streams: AtomicUsize,
    zero_since: Mutex<Option<tokio::time::Instant>>,
}

impl Default for Limit {
    fn default() -> Self {
        Limit {
            streams: AtomicUsize::new(STREAMS_PER_CONNECTION),
            zero_since: Mutex::new(None),
        }
    }
}

impl Limit {
    fn get(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// The version's `SETTINGS_MAX_CONCURRENT_STREAMS`, as it says it.
    fn set(&self, n: u32) {
        let n = usize::try_from(n)
            .unwrap_or(usize::MAX)
            .min(STREAMS_PER_CONNECTION);
        let mut zero_since = self.zero_since.lock().unwrap_or_else(|p| p.into_inner());
        self.streams.store(n, Ordering::Relaxed);
        match (n, *zero_since) {
            (0, None) => *zero_since = Some(tokio::time::Instant::now()),
            (0, Some(_)) => {}
            _ => *zero_since = None,
        }
    }

    /// Whether it has been 0 for less than [`ZERO_PATIENCE`].
    fn refusing(&self) -> bool {
        let zero_since = self.zero_since.lock().unwrap_or_else(|p| p.into_inner());
        zero_since.is_some_and(|at| at.elapsed() < ZERO_PATIENCE)
    }
}

/// Why a request to a version that takes no stream fails.
fn no_stream(addr: SocketAddr) -> UpstreamError {
    format!("{addr} takes no new stream now (SETTINGS_MAX_CONCURRENT_STREAMS 0)").into()
}

// === impl Answer ===

/// A version's response body, holding its h2c stream's place on its connection until
/// it is done or dropped, or its HTTP/1.1 connection, which it drives while it is read
/// and gives back to the pool at its end.
pub(super) struct Answer {
    body: Source,
    /// Shared with the task still sending the request's body, if one is.
    slot: Option<Arc<Slot>>,
    lent: Option<Box<dyn Lent>>,
    /// The request in flight, until this answer is done and its request written.
    flight: Option<super::Flight>,
    /// Set when the answer was counted at its head: a failure of its body counts in
    /// no metric, so it takes no connection failure's charge (see [`Slot::failed`]).
    settled: bool,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("body", &self.body)
            .field("slot", &self.slot)
            .field("lent", &self.lent.is_some())
            .finish()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // Read to its end (hyper stops at `is_end_stream`, before the `None`): its
        // connection is between messages.
        if Body::is_end_stream(self)
            && let Some(lent) = self.lent.take()
        {
            lent.give_back(&mut self.flight);
        }
    }
}

impl Answer {
    /// An answer fetched on the lean path's connections: its body reads its own
    /// connection and gives it back.
    pub(super) fn lean(body: super::lean::Fetched) -> Answer {
        Answer {
            body: Source::Lean(body),
            slot: None,
            lent: None,
            flight: None,
            settled: false,
        }
    }

    /// Holds `flight` until this answer is done and its request was written.
    pub(super) fn hold(&mut self, flight: Option<super::Flight>) {
        self.flight = flight;
    }

    /// Says the answer was counted at its head (a plain answer, not a gRPC call
    /// counted by how it ends): a later break of its body is no counted failure.
    pub(super) fn settle(&mut self) {
        self.settled = true;
    }

    /// The next frame of the answer's source.
    fn poll_source(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let this = self;
        let body = match &mut this.body {
            Source::Hyper(body) => body,
            // Its connection is its own: read, given back or closed by the body.
            Source::Lean(body) => return Pin::new(body).poll_frame(cx),
            Source::H2(body, cancel) => {
                let frame = ready!(body.poll_frame(cx));
                return Poll::Ready(match frame {
                    Some(Ok(f)) => Some(Ok(f)),
                    Some(Err(e)) => Some(Err(this.failed(e))),
                    None => {
                        // Read to its end: the request's body, if still on its way,
                        // may go on.
                        if let Some(cancel) = cancel.take() {
                            cancel.finished();
                        }
                        this.slot = None;
                        None
                    }
                });
            }
        };
        if let Some(lent) = &mut this.lent {
            lent.drive(cx);
        }
        let frame = ready!(Pin::new(body).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(f)) => Some(Ok(f)),
            Some(Err(e)) => {
                this.lent = None;
                this.slot = None;
                Some(Err(e.into()))
            }
            None => {
                this.slot = None;
                if let Some(lent) = this.lent.take() {
                    lent.give_back(&mut this.flight);
                }
                None
            }
        })
    }

    /// `e` as the version's failure or [`Uncharged`]; the stream is done with.
    fn failed(&mut self, e: ::h2::Error) -> UpstreamError {
        match self.slot.take() {
            Some(slot) => slot.failed(e, !self.settled),
            None => e.into(),
        }
    }
}

impl Body for Answer {
    type Data = Bytes;
    type Error = UpstreamError;

    /// A frame as its source gave it, but trailers without what HTTP/2 forbids
    /// (`keep-alive`, `connection`...: RFC 9113 8.2.2): an HTTP/1.1 version may send
    /// them in a chunked body's trailer section, and h2 refuses such a block and
    /// resets the stream at its very end (an HTTP/2 client's answer broken though
    /// whole). They are connection-specific in HTTP/1.1 too.
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, UpstreamError>>> {
        let mut frame = ready!(self.get_mut().poll_source(cx));
        if let Some(Ok(f)) = &mut frame
            && let Some(trailers) = f.trailers_mut()
        {
            super::exchange::forbidden_in_http2(trailers);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.body {
            Source::Hyper(body) => body.is_end_stream(),
            Source::Lean(body) => body.is_end_stream(),
            Source::H2(body, _) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.body {
            Source::Hyper(body) => body.size_hint(),
            Source::Lean(body) => body.size_hint(),
            Source::H2(body, _) => body.size_hint(),
        }
    }
}

/// Where an answer's body is read from.
#[derive(Debug)]
enum Source {
    /// hyper's HTTP/1.1 client.
    Hyper(Incoming),
    /// An h2c version's stream; with, while its request's body is still being sent,
    /// what stops that when the answer is dropped unread.
    H2(Received, Option<Cancel>),
    /// The lean path's connection (see `lean::Pool::fetch`).
    Lean(super::lean::Fetched),
}

// === impl Watched ===

/// The version's side of an h2c connection, watched as it is read: its first frame for
/// its SETTINGS (RFC 9113 3.4), which h2 applies but does not tell; then each
/// frame's header until a `GOAWAY`, which h2 does not tell either (see
/// `Conn::going_away`), and each later SETTINGS for its stream limit, as the first's
/// (h2 keeps it to itself: the pool must know it to place each request). Every byte goes through untouched; a read costs a step per
/// frame header in it (and a copy of a SETTINGS frame's payload, a few bytes), and one
/// branch once a `GOAWAY` was read.
struct Watched<I> {
    io: I,
    /// The first frame's bytes so far, and whom to tell its settings; `None` once told.
    first: Option<(Vec<u8>, oneshot::Sender<Settings>)>,
    /// Where the reading is in the frames after the first.
    frames: Frames,
}

/// The length of an HTTP/2 frame header.
const FRAME_HEAD: usize = 9;

/// Frame types and the flag the proxy looks at (RFC 9113 6).
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const ACK: u8 = 0x1;

/// Whether the frame `head` starts is a SETTINGS frame whose payload is read: not an
/// acknowledgement, and of a size a SETTINGS payload can have.
fn is_settings(head: &[u8]) -> bool {
    let len = payload_len(head);
    head[3] == SETTINGS && head[4] & ACK == 0 && len <= MAX_PREFACE_FRAME && len.is_multiple_of(6)
}

/// Where the reading is in a version's frames, looked at for a `GOAWAY` and for each
/// SETTINGS' stream limit.
#[derive(Debug)]
struct Frames {
    /// The current frame header's bytes so far.
    head: [u8; FRAME_HEAD],
    filled: usize,
    /// What is left to read of the current frame's payload.
    payload: usize,
    /// Set at the first `GOAWAY`.
    going_away: Arc<AtomicBool>,
    /// A `GOAWAY` was read: nothing more is looked at.
    done: bool,
    /// The payload so far of the SETTINGS frame being read, when one is.
    settings: Option<Vec<u8>>,
    /// Where each SETTINGS' `SETTINGS_MAX_CONCURRENT_STREAMS` goes, the first's too.
    max_streams: Arc<Limit>,
}

/// What the proxy needs of a version's SETTINGS.
#[derive(Debug, Default)]
struct Settings {
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, if set.
    max_header_list: Option<u32>,
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`, if set.
    max_streams: Option<u32>,
}

/// The payload length in a frame header.
fn payload_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

impl<I> Watched<I> {
    /// `io` watched: `told` gets its first frame's settings, `going_away` is set at
    /// its first `GOAWAY`, `max_streams` at each SETTINGS that names a stream limit.
    fn new(
        io: I,
        told: oneshot::Sender<Settings>,
        going_away: Arc<AtomicBool>,
        max_streams: Arc<Limit>,
    ) -> Self {
        Watched {
            io,
            first: Some((Vec::new(), told)),
            frames: Frames {
                head: [0; FRAME_HEAD],
                filled: 0,
                payload: 0,
                going_away,
                done: false,
                settings: None,
                max_streams,
            },
        }
    }

    /// Takes `read`, the next bytes from the version.
    fn watch(&mut self, read: &[u8]) {
        let Some((buf, _)) = &mut self.first else {
            self.frames.walk(read);
            return;
        };
        buf.extend_from_slice(read);
        let Some((end, settings)) = Settings::parse(buf) else {
            return;
        };
        let Some((buf, told)) = self.first.take() else {
            return;
        };
        // Not a SETTINGS frame, or too large for one: nothing known.
        let settings = settings.unwrap_or_default();
        // Stored before the frames after it are walked (they may be in this read, and
        // a later limit must win over the first).
        if let Some(n) = settings.max_streams {
            self.frames.max_streams.set(n);
        }
        let _ = told.send(settings);
        match buf.get(end..) {
            Some(rest) => self.frames.walk(rest),
            None => self.frames.payload = end - buf.len(),
        }
    }
}

impl Frames {
    /// Follows the frames through `read`, the next bytes after the first frame.
    fn walk(&mut self, mut read: &[u8]) {
        while !read.is_empty() && !self.done {
            if self.payload > 0 {
                let n = self.payload.min(read.len());
                if let Some(settings) = &mut self.settings {
                    settings.extend_from_slice(&read[..n]);
                }
                self.payload -= n;
                read = &read[n..];
                if self.payload == 0 {
                    self.settled();
                }
                continue;
            }
            let n = (FRAME_HEAD - self.filled).min(read.len());
            self.head[self.filled..self.filled + n].copy_from_slice(&read[..n]);
            self.filled += n;
            read = &read[n..];
            if self.filled == FRAME_HEAD {
                self.filled = 0;
                self.payload = payload_len(&self.head);
                if self.head[3] == GOAWAY {
                    self.going_away.store(true, Ordering::Release);
                    self.done = true;
                } else if self.payload > 0 && is_settings(&self.head) {
                    self.settings = Some(Vec::with_capacity(self.payload));
                }
            }
        }
    }

    /// A SETTINGS frame was read whole: its stream limit, if it names one, is the
    /// connection's from now.
    fn settled(&mut self) {
        let Some(payload) = self.settings.take() else {
            return;
        };
        if let Some(n) = Settings::entries(&payload).max_streams {
            self.max_streams.set(n);
        }
    }
}

impl Settings {
    /// `frame`, the start of a version's first frame: `None` until what is needed of
    /// it is read, then the frame's whole length and its settings (`None` when it is
    /// not a SETTINGS frame that can be read).
    fn parse(frame: &[u8]) -> Option<(usize, Option<Settings>)> {
        let head = frame.get(..FRAME_HEAD)?;
        let end = FRAME_HEAD + payload_len(head);
        if !is_settings(head) {
            return Some((end, None));
        }
        let payload = frame.get(FRAME_HEAD..end)?;
        Some((end, Some(Settings::entries(payload))))
    }

    /// The settings in a SETTINGS frame's payload (the last of a repeated one).
    fn entries(payload: &[u8]) -> Settings {
        const MAX_CONCURRENT_STREAMS: u16 = 0x3;
        const MAX_HEADER_LIST_SIZE: u16 = 0x6;
        let mut settings = Settings::default();
        for entry in payload.chunks_exact(6) {
            let value = Some(u32::from_be_bytes([entry[2], entry[3], entry[4], entry[5]]));
            match u16::from_be_bytes([entry[0], entry[1]]) {
                MAX_CONCURRENT_STREAMS => settings.max_streams = value,
                MAX_HEADER_LIST_SIZE => settings.max_header_list = value,
                _ => {}
            }
        }
        settings
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        if !this.frames.done {
            this.watch(&buf.filled()[before..]);
        }
        Poll::Ready(Ok(()))
    }
}

write_through!(Watched);

#[cfg(test)]
mod tests {
    use super::*;

    /// A version's first SETTINGS frame, as hyper's h2 server sends it, is read for its
    /// header list size and stream limit, whole or in pieces; another first frame tells
    /// nothing.
    #[test]
    fn the_header_list_size_is_read_from_the_first_settings_frame() {
        let mut frame = vec![0, 0, 12, 0x4, 0, 0, 0, 0, 0];
        frame.extend_from_slice(&[0, 0x3, 0, 0, 0, 200]);
        frame.extend_from_slice(&[0, 0x6, 0, 0, 0x40, 0]);
        for cut in [0, 5, 9, 14, frame.len()] {
            let (told, mut settings) = oneshot::channel();
            let mut p = Watched::new((), told, Arc::default(), Arc::default());
            p.watch(&frame[..cut]);
            if cut < frame.len() {
                assert!(settings.try_recv().is_err(), "told at {cut} bytes");
            }
            p.watch(&frame[cut..]);
            assert!(p.first.is_none());
            let settings = settings.try_recv().unwrap();
            assert_eq!(settings.max_header_list, Some(16_384));
            assert_eq!(settings.max_streams, Some(200));
        }
        let ping = [0, 0, 8, 0x6, 0, 0, 0, 0, 0];
        assert!(matches!(Settings::parse(&ping), Some((17, None))));
    }

    /// A version's `GOAWAY` is seen as soon as its header is read, however the bytes
    /// are cut, and not before; the bytes of other frames' payloads are never taken
    /// for a header.
    #[test]
    fn a_goaway_is_seen_after_any_frames_however_they_are_read() {
        fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
            f.extend_from_slice(payload);
            f
        }
        let mut read = frame(0x4, &[0, 0x3, 0, 0, 0, 10]);
        // A DATA frame whose payload looks like a GOAWAY header, then a PING.
        read.extend(frame(0x0, &[0, 0, 8, 0x7, 0, 0, 0, 0, 0]));
        read.extend(frame(0x6, &[0; 8]));
        let before = read.len();
        read.extend(frame(0x7, &[0, 0, 0, 1, 0, 0, 0, 0]));
        for cut in 0..read.len() {
            let (told, _settings) = oneshot::channel();
            let going_away = Arc::new(AtomicBool::new(false));
            let mut w = Watched::new((), told, going_away.clone(), Arc::default());
            let (a, b) = read.split_at(cut);
            w.watch(a);
            let seen = going_away.load(Ordering::Acquire);
            assert_eq!(seen, cut >= before + FRAME_HEAD, "cut at {cut}");
            w.watch(b);
            assert!(going_away.load(Ordering::Acquire), "cut at {cut}");
        }
        // Byte by byte.
        let (told, _settings) = oneshot::channel();
        let going_away = Arc::new(AtomicBool::new(false));
        let mut w = Watched::new((), told, going_away.clone(), Arc::default());
        for (i, byte) in read.iter().enumerate() {
            assert_eq!(going_away.load(Ordering::Acquire), i >= before + FRAME_HEAD);
            w.watch(std::slice::from_ref(byte));
        }
        assert!(going_away.load(Ordering::Acquire));
    }

    /// A later SETTINGS frame's stream limit is the connection's as soon as the frame
    /// is read whole, however the bytes are cut (hyper tells it only when a request
    /// comes); an acknowledgement, a SETTINGS without the limit, or a DATA payload
    /// that looks like one change nothing; a limit above the pool's is the pool's.
    #[test]
    fn a_later_settings_frames_stream_limit_is_seen_as_it_is_read() {
        fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 0];
            f.extend_from_slice(payload);
            f
        }
        let limit = |n: u32| {
            let mut entry = vec![0, 0x3];
            entry.extend_from_slice(&n.to_be_bytes());
            entry
        };
        let mut read = frame(0x4, 0, &[]);
        let first = read.len();
        read.extend(frame(0x0, 0, &frame(0x4, 0, &limit(7))));
        // An acknowledgement carries no settings: one that did is not read as any.
        read.extend(frame(0x4, 0x1, &limit(3)));
        read.extend(frame(0x4, 0, &[0, 0x4, 0, 1, 0, 0]));
        let zero_at = read.len();
        let mut zero = frame(0x4, 0, &[0, 0x4, 0, 1, 0, 0]);
        zero.extend_from_slice(&limit(0));
        zero[2] = 12;
        read.extend(zero);
        let zero_end = read.len();
        read.extend(frame(0x4, 0, &limit(5000)));
        let raised_end = read.len();
        for cut in first..read.len() {
            let (told, _settings) = oneshot::channel();
            let max = Arc::new(Limit::default());
            let mut w = Watched::new((), told, Arc::default(), max.clone());
            w.watch(&read[..first]);
            let (a, b) = read[first..].split_at(cut - first);
            w.watch(a);
            let want = if (zero_end..raised_end).contains(&cut) {
                0
            } else {
                STREAMS_PER_CONNECTION
            };
            assert_eq!(max.get(), want, "cut at {cut} (zero at {zero_at})");
            w.watch(b);
            assert_eq!(max.get(), STREAMS_PER_CONNECTION, "cut at {cut}");
        }
    }

    /// Review (h2c): the first SETTINGS' limit was stored by `open` after the frames
    /// behind it in the same read had been walked, and won over theirs: a version
    /// that said 0 then 100 at once was left at 0. Whatever the reads, the last
    /// limit said is the connection's.
    #[test]
    fn the_last_limit_said_wins_over_the_first_in_any_reads() {
        let settings = |n: u32| {
            let mut f = vec![0, 0, 6, 0x4, 0, 0, 0, 0, 0, 0, 0x3];
            f.extend_from_slice(&n.to_be_bytes());
            f
        };
        for (first, later, want) in [(0, 100, STREAMS_PER_CONNECTION), (10, 50, 50), (50, 0, 0)] {
            let mut read = settings(first);
            read.extend(settings(later));
            for cut in 0..=read.len() {
                let (told, mut told_rx) = oneshot::channel();
                let max = Arc::new(Limit::default());
                let mut w = Watched::new((), told, Arc::default(), max.clone());
                let (a, b) = read.split_at(cut);
                w.watch(a);
                w.watch(b);
                assert_eq!(max.get(), want, "{first} then {later}, cut at {cut}");
                assert_eq!(told_rx.try_recv().unwrap().max_streams, Some(first));
            }
        }
        // The first frame's limit alone, then a SETTINGS that names none: the first's.
        let mut read = settings(7);
        read.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let (told, _told) = oneshot::channel();
        let max = Arc::new(Limit::default());
        let mut w = Watched::new((), told, Arc::default(), max.clone());
        w.watch(&read);
        assert_eq!(max.get(), 7);
    }

    /// A limit of 0 keeps the pool from opening another connection for
    /// [`ZERO_PATIENCE`] from when it was first said, not from its last repeat; a
    /// limit above 0 ends it.
    #[tokio::test(start_paused = true)]
    async fn a_limit_of_zero_refuses_new_connections_for_a_while() {
        let limit = Limit::default();
        assert!(!limit.refusing());
        limit.set(0);
        assert!(limit.refusing());
        tokio::time::advance(ZERO_PATIENCE / 2).await;
        limit.set(0);
        assert!(limit.refusing());
        tokio::time::advance(ZERO_PATIENCE / 2).await;
        assert!(!limit.refusing(), "past the patience, one more is tried");
        limit.set(5);
        assert_eq!(limit.get(), 5);
        limit.set(0);
        assert!(limit.refusing());
        limit.set(1000);
        assert!(!limit.refusing());
        assert_eq!(limit.get(), STREAMS_PER_CONNECTION);
    }

    /// The size counted is the one RFC 9113 defines: 32 per field, pseudo-fields too.
    #[test]
    fn a_header_block_is_counted_as_http2_counts_it() {
        let req = Request::get("http://svc.test/a?b")
            .header("x-one", "1")
            .body(())
            .unwrap();
        let want = (7 + 3 + 32) + (7 + 4 + 32) + (10 + 8 + 32) + (5 + 4 + 32) + (5 + 1 + 32);
        assert_eq!(header_list_size(&req), want);
    }
}
