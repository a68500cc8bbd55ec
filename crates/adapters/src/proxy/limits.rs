//! The limits that keep the proxy serving whatever a client does: how long a client
//! may take over a request head, idle between requests or stall in a request body,
//! and how many connections it may hold open (`traffic.proxy.limits`; sizes are
//! enforced in `mod.rs` through hyper's builder and `http_body_util::Limited`).
//!
//! Owns the two per-connection timers, the request body's read deadline
//! ([`BodyDeadline`]) and the answer to a connection over the limit. It must not look
//! inside a request, and it costs the hot path no lock and no allocation per request
//! beyond the one sleep hyper allocates per request head for its own header timeout:
//! one atomic add per read, one `Arc` per connection, and one sleep per request body
//! that ever makes the proxy wait.
//!
//! How the timers work: hyper arms its header-read timer (through the [`Timer`] it is
//! given) when it starts waiting for a request head, on a new connection and after
//! every answer on a kept-alive one. [`HeadTimer`] hands it a sleep that counts the
//! idle timeout while no byte of the next request has been read, and the header
//! timeout from the first byte on ([`Watched`] counts the reads). A new connection
//! gets the header timeout from its opening, as HAProxy's `timeout http-request`
//! does: a client that connects and sends nothing is no better than one that
//! dribbles.
//!
//! An upgraded connection (a WebSocket after its 101) is no longer HTTP: hyper stops
//! arming these timers when it hands the socket to the tunnel, so neither timeout
//! applies to it. It still counts toward `max_connections` until it closes, and the
//! drain's deadline cuts it (see `Proxy::tunnel`).
//!
//! The body deadline is an inactivity deadline, restarted by every chunk of the body
//! that arrives, not a cap on the whole upload: how long a real upload takes grows
//! with its size and the client's link (16 MiB at 1 Mbit/s is over two minutes), so
//! no one cap would both let it through and cut a stalled client early. What tells a
//! stalled or dead client from a slow one is silence. A client that trickles a byte
//! just inside every deadline keeps its connection, as it could keep it by sending
//! requests; `max_connections` bounds how many such clients hold the proxy.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use hyper::rt::{Sleep, Timer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// What a connection over `max_connections` gets before it is closed: a complete,
/// final answer, so a client fails at once instead of waiting in a queue.
pub(super) const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: 35\r\nconnection: close\r\nretry-after: 1\r\n\r\nrampart: too many open connections\n";

/// Answers a connection over the limit and closes it, without waiting on the client:
/// one non-blocking write (the answer fits any socket buffer) and one non-blocking
/// read of what the client already sent, so that closing rarely resets the answer
/// away.
pub(super) fn refuse(stream: TcpStream) {
    let _ = stream.try_write(REFUSED);
    let mut scrap = [0u8; 2048];
    let _ = stream.try_read(&mut scrap);
}

/// A client connection that counts its reads, for [`HeadTimer`] to see the first
/// byte of a request arrive.
#[derive(Debug)]
pub(super) struct Watched<I> {
    io: I,
    reads: Arc<AtomicU64>,
}

impl<I> Watched<I> {
    pub(super) fn new(io: I, reads: Arc<AtomicU64>) -> Watched<I> {
        Watched { io, reads }
    }

    /// The connection, no longer counted.
    pub(super) fn into_inner(self) -> I {
        self.io
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
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.reads.fetch_add(1, Ordering::Relaxed);
        }
        polled
    }
}

write_through!(Watched);

/// A client's socket that gives up on a write the client takes nothing of for
/// `send_timeout`: the write fails (`TimedOut`) and whoever writes (hyper, the lean
/// path, a tunnel, TLS) closes the connection. It sits under TLS, on the socket
/// itself, so any bytes the client takes (however few) start the wait again: TLS's
/// own buffering (a flush that waits until a whole record is out) never makes a slow
/// reader look stalled. The sleep is made only when a write has to wait.
#[derive(Debug)]
pub(super) struct SendDeadline<I> {
    io: I,
    send: Duration,
    /// Since the first write that had to wait, while none has gone through.
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<I> SendDeadline<I> {
    pub(super) fn new(io: I, send: Duration) -> SendDeadline<I> {
        SendDeadline {
            io,
            send,
            stalled: None,
        }
    }

    /// What a write's `polled` leaves: a write that waits counts toward the send
    /// timeout, and fails once it is past.
    fn waited<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let send = self.send;
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(send)));
        match stalled.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client took nothing of what was sent to it for send_timeout",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendDeadline<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendDeadline<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.waited(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.waited(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_flush(cx);
        this.waited(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.io).poll_shutdown(cx);
        this.waited(cx, polled)
    }
}

/// One connection's timer for hyper's header-read timeout: the header timeout on a
/// new connection, then, after each answer, the idle timeout until the first byte of
/// the next request and the header timeout from that byte on.
///
/// Assumption (hyper 1.x): an HTTP/1 server connection arms its timer for the request
/// head only, once per head, through `sleep_until`. `tests` pin that down with real
/// sockets (a dribbled head closed at the header timeout on a kept-alive connection
/// whose idle timeout is far away, and an idle one closed at the idle timeout).
#[derive(Debug)]
pub(super) struct HeadTimer {
    reads: Arc<AtomicU64>,
    header: Duration,
    idle: Duration,
    /// Set once the first request head was waited for: every later wait follows an
    /// answer on a kept-alive connection.
    kept_alive: AtomicBool,
    /// When the connection opened (or its TLS handshake ended): the first head is due
    /// within the header timeout from then, however much of it went to telling the
    /// protocol.
    opened: Instant,
    /// Where an idle wait asks to park, after how long (see `park`).
    park: Option<(Arc<super::park::Park>, Duration)>,
}

impl HeadTimer {
    pub(super) fn new(
        reads: Arc<AtomicU64>,
        header: Duration,
        idle: Duration,
        opened: Instant,
    ) -> HeadTimer {
        HeadTimer {
            reads,
            header,
            idle,
            kept_alive: AtomicBool::new(false),
            opened,
            park: None,
        }
    }

    /// This timer, asking `park` to park once an idle wait has lasted `after` (when
    /// that is shorter than the idle timeout).
    pub(super) fn parking(mut self, park: Arc<super::park::Park>, after: Duration) -> HeadTimer {
        self.park = (after < self.idle).then_some((park, after));
        self
    }
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            reads: None,
            seen: 0,
            header: duration,
            park: None,
            sleep: tokio::time::sleep(duration),
        })
    }

    /// hyper's deadline is its header timeout from now; the deadline kept is this
    /// connection's own (the timer's clock is tokio's, so paused time applies).
    fn sleep_until(&self, _deadline: std::time::Instant) -> Pin<Box<dyn Sleep>> {
        let now = Instant::now();
        if self.kept_alive.swap(true, Ordering::Relaxed) {
            let idle = now + self.idle;
            let (park, first) = match &self.park {
                Some((park, after)) => (Some((park.clone(), idle)), now + *after),
                None => (None, idle),
            };
            Box::pin(HeadSleep {
                reads: Some(self.reads.clone()),
                seen: self.reads.load(Ordering::Relaxed),
                header: self.header,
                park,
                sleep: tokio::time::sleep_until(first),
            })
        } else {
            Box::pin(HeadSleep {
                reads: None,
                seen: 0,
                header: self.header,
                park: None,
                sleep: tokio::time::sleep_until(self.opened + self.header),
            })
        }
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: std::time::Instant) {
        *sleep = self.sleep_until(new_deadline);
    }
}

pin_project_lite::pin_project! {
    /// The wait for one request head: idle while `reads` has not moved since `seen`,
    /// then `header` from the moment it has.
    struct HeadSleep {
        // `None` once the head has started (or on a new connection).
        reads: Option<Arc<AtomicU64>>,
        seen: u64,
        header: Duration,
        // Set while the wait is idle and has not asked to park yet: where to ask, and
        // the idle timeout's deadline, which the sleep then runs to.
        park: Option<(Arc<super::park::Park>, Instant)>,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl std::future::Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        // hyper polls this after every read that left the head incomplete, so the
        // first byte of a head is seen at the read that brought it.
        if let Some(reads) = this.reads
            && reads.load(Ordering::Relaxed) != *this.seen
        {
            *this.reads = None;
            *this.park = None;
            let header = *this.header;
            this.sleep.as_mut().reset(Instant::now() + header);
        }
        if this.sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        // Idle long enough to park: asked once, then on to the idle timeout.
        let Some((park, idle)) = this.park.take() else {
            return Poll::Ready(());
        };
        park.ask(idle, *this.seen);
        this.sleep.as_mut().reset(idle);
        this.sleep.poll(cx)
    }
}

impl Sleep for HeadSleep {}

// === impl BodyDeadline ===

/// A client's request body on its way to a version, failing with [`BodyTimeout`] when
/// the proxy has waited `timeout` for its next bytes.
///
/// Guarantees: only time spent waiting on the client counts. The deadline is armed
/// when the proxy asks for the next chunk and the client has none, and disarmed when
/// one arrives; while the upstream is slow to take the bytes, hyper does not ask, so a
/// slow version never makes its client look slow. Assumption: `body_timeout` is
/// shorter than the versions' own body-read timeouts, or a version may give up on
/// the stalled client first, and that failure is counted as the version's `502`.
#[derive(Debug)]
pub(super) struct BodyDeadline<B> {
    body: B,
    timeout: Duration,
    /// Boxed because hyper's client needs an `Unpin` body; made the first time the
    /// proxy waits, and reset after, so a body that never waits costs no allocation.
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Whether the proxy is waiting on the client now (the sleep is armed).
    waiting: bool,
    /// Where the body's failure is told, when the request path asked.
    fault: Option<FaultSlot>,
    /// The proxy's count of bodies cut at their deadline, counted here, where it
    /// fires: also for a body still on its way after its version answered.
    timeouts: Arc<AtomicU64>,
}

impl<B> BodyDeadline<B> {
    pub(super) fn new(body: B, timeout: Duration, timeouts: Arc<AtomicU64>) -> BodyDeadline<B> {
        BodyDeadline {
            body,
            timeout,
            sleep: None,
            waiting: false,
            fault: None,
            timeouts,
        }
    }

    /// Tells `fault` how the body failed, if it does: for an upstream client that does
    /// not hand the body's error back with the request's (hyper's HTTP/2 client resets
    /// the stream and reports only that).
    pub(super) fn telling(mut self, fault: FaultSlot) -> BodyDeadline<B> {
        self.fault = Some(fault);
        self
    }
}

/// How a client's request body failed, shared by the body and the request path, so
/// that an upstream failure it caused is told from the version's own; and whether the
/// request is a gRPC call the version has answered. One allocation, made only for
/// requests to h2c versions (whose upstream client would lose the cause, and which
/// alone serve gRPC).
#[derive(Debug, Clone, Default)]
pub(super) struct FaultSlot(Arc<Slot>);

#[derive(Debug, Default)]
struct Slot {
    fault: OnceLock<super::ClientFault>,
    /// Set once a gRPC call's response headers came: from then on the call is a
    /// stream both sides may keep open and quiet (a client-streaming or bidirectional
    /// call waiting on its next event), so its request body has no `body_timeout`.
    streaming: AtomicBool,
}

impl FaultSlot {
    /// How the body failed, if it did.
    pub(super) fn get(&self) -> Option<super::ClientFault> {
        self.0.fault.get().copied()
    }

    fn set(&self, fault: super::ClientFault) {
        let _ = self.0.fault.set(fault);
    }

    /// The version answered the gRPC call's headers: the body's deadline is off.
    pub(super) fn answered_grpc(&self) {
        self.0.streaming.store(true, Ordering::Release);
    }

    fn streaming(&self) -> bool {
        self.0.streaming.load(Ordering::Acquire)
    }
}

/// The client sent no byte of its request body for `body_timeout`.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the client sent nothing of its request body for the body timeout")]
pub(super) struct BodyTimeout;

impl<B> Body for BodyDeadline<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = B::Data;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, Self::Error>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            this.waiting = false;
            return Poll::Ready(frame.map(|f| {
                f.map_err(|e| {
                    let e: Self::Error = e.into();
                    if let Some(slot) = &this.fault {
                        let fault = if e.is::<http_body_util::LengthLimitError>() {
                            super::ClientFault::TooLarge
                        } else {
                            super::ClientFault::Body
                        };
                        slot.set(fault);
                    }
                    e
                })
            }));
        }
        // A gRPC call under way is a stream: its client may be quiet for as long as
        // the call lasts (bounded by its deadline and the version, not by the proxy).
        if this.fault.as_ref().is_some_and(FaultSlot::streaming) {
            this.waiting = false;
            return Poll::Pending;
        }
        // The deadline runs from the first poll that found nothing, until a chunk.
        let sleep = match (&mut this.sleep, this.waiting) {
            (Some(sleep), true) => sleep,
            (Some(sleep), false) => {
                sleep.as_mut().reset(Instant::now() + this.timeout);
                sleep
            }
            (None, _) => this
                .sleep
                .insert(Box::pin(tokio::time::sleep(this.timeout))),
        };
        this.waiting = true;
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.timeouts.fetch_add(1, Ordering::Relaxed);
                if let Some(slot) = &this.fault {
                    slot.set(super::ClientFault::Slow);
                }
                Poll::Ready(Some(Err(Box::new(BodyTimeout))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Raises this process's soft limit of open files to its hard limit and returns the
/// limit now in force: every client connection costs a descriptor, and one more to
/// its upstream, so the usual soft limit of 1024 would cap the default
/// `max_connections` long before the setting does. For the data plane process only
/// (its children would inherit it).
pub fn raise_open_files_limit() -> std::io::Result<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(std::io::Error::from)?;
    }
    Ok(hard.max(soft))
}

/// The open files `max_connections` can take: a client's descriptor each, an upstream
/// connection for each one's first request in flight (or its tunnel), as many again
/// for HTTP/2 streams beyond a connection's first (the proxy caps those at
/// `max_connections`, however many streams clients open), and a margin for the
/// listener, the admin socket and the files. Idle pooled upstream connections come on
/// top, bounded by the peak in use within the pool's idle timeout.
pub fn files_needed(max_connections: u32) -> u64 {
    u64::from(max_connections) * 3 + 64
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A client's body fed by hand: each message one chunk.
    struct Fed(mpsc::Receiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
        }
    }

    const TIMEOUT: Duration = Duration::from_secs(30);

    /// Chunks 29 s apart go through for as long as they come (an upload three times
    /// the timeout), and the silence after the last is cut at the timeout, to the
    /// second.
    #[tokio::test(start_paused = true)]
    async fn the_deadline_restarts_at_each_chunk_and_cuts_a_silence() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = BodyDeadline::new(Fed(rx), TIMEOUT, Arc::default());
        let started = Instant::now();
        let client = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
                tx.send(Bytes::from_static(b"x")).await.unwrap();
            }
            // Then silence, the connection still open (`tx` is held).
            std::future::pending::<()>().await;
        });
        for _ in 0..3 {
            assert!(body.frame().await.unwrap().unwrap().is_data());
        }
        let cut = body.frame().await.unwrap().unwrap_err();
        assert!(cut.is::<BodyTimeout>(), "{cut}");
        assert_eq!(
            started.elapsed(),
            3 * (TIMEOUT - Duration::from_secs(1)) + TIMEOUT
        );
        client.abort();
    }

    /// Time in which the proxy does not ask for the body (its upstream is slow to take
    /// what it has) is not the client's: ten minutes of it, then a chunk 29 s after the
    /// proxy asks again, goes through.
    #[tokio::test(start_paused = true)]
    async fn time_the_proxy_does_not_ask_is_not_counted() {
        let (tx, rx) = mpsc::channel(1);
        let mut body = BodyDeadline::new(Fed(rx), TIMEOUT, Arc::default());
        tx.send(Bytes::from_static(b"a")).await.unwrap();
        assert!(body.frame().await.unwrap().unwrap().is_data());
        tokio::time::sleep(Duration::from_secs(600)).await;
        let client = tokio::spawn(async move {
            tokio::time::sleep(TIMEOUT - Duration::from_secs(1)).await;
            tx.send(Bytes::from_static(b"b")).await.unwrap();
        });
        assert!(body.frame().await.unwrap().unwrap().is_data());
        client.await.unwrap();
    }
}
