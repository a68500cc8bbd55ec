//! Parking: an HTTP/1 client connection idle for [`park_after`] (a second, or a
//! quarter of its idle timeout) gives up its HTTP state (hyper's read and write
//! buffers, 16 KiB and more) and waits for its next request holding only its socket;
//! the first byte of that request starts a fresh HTTP/1 connection on the same
//! socket. A TLS connection keeps its TLS state (rustls' buffers) while parked.
//!
//! A busy connection never parks: hyper keeps it from one request to the next, as
//! before. The wait that decides is the one [`super::limits::HeadTimer`] already arms
//! for the idle timeout, so a request costs no timer more.
//!
//! Guarantees: a connection parks only when no byte of a next request has been read
//! since its last answer, no answer of it is still on its way ([`Busy`]), and the last
//! thing done on its socket was a completed flush (hyper holds no unsent byte); so no
//! byte is lost or reordered. A parked connection keeps its idle timeout (counted
//! from its last answer, as before), is closed at once when the server stops, and its
//! next request has the header timeout from its first byte, as on a kept-alive
//! connection. (hyper 1.x starts no wait for a next head while an answer is still
//! being written, so [`Busy`] is a guard against a change there, not a path tests
//! can reach today.)

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// How long an HTTP/1 connection waits for its next request before it parks, at most.
pub(super) const PARK_AFTER: Duration = Duration::from_secs(1);

/// How long a connection whose idle timeout is `idle` waits before it parks:
/// [`PARK_AFTER`], or a quarter of its idle timeout when that is shorter.
pub(super) fn park_after(idle: Duration) -> Duration {
    PARK_AFTER.min(idle / 4)
}

/// One connection's parking state, shared by its serving loop, its head timer, its
/// requests and its socket.
#[derive(Debug, Default)]
pub(super) struct Park {
    /// Requests whose answer is not done.
    busy: AtomicUsize,
    /// Whether the last thing done on the socket was a completed flush.
    flushed: AtomicBool,
    /// The last ask to park: the idle timeout's deadline, and the read count then.
    asked: Mutex<Option<Ask>>,
    notify: Notify,
}

/// An idle wait's ask to park.
#[derive(Debug, Clone, Copy)]
pub(super) struct Ask {
    /// When the idle timeout closes the connection.
    pub(super) deadline: Instant,
    /// The socket's read count when the wait began.
    reads: u64,
}

impl Park {
    /// Asks the serving loop to park (an idle wait reached [`park_after`]).
    pub(super) fn ask(&self, deadline: Instant, reads: u64) {
        *self.asked.lock().unwrap_or_else(|p| p.into_inner()) = Some(Ask { deadline, reads });
        self.notify.notify_one();
    }

    /// The next ask to park.
    pub(super) async fn asked(&self) -> Ask {
        loop {
            self.notify.notified().await;
            if let Some(ask) = self.asked.lock().unwrap_or_else(|p| p.into_inner()).take() {
                return ask;
            }
        }
    }

    /// Whether the connection may park now on `ask`: nothing read since the wait
    /// began, no answer on its way, nothing unsent.
    pub(super) fn may_park(&self, ask: Ask, reads: &AtomicU64) -> bool {
        reads.load(Ordering::Relaxed) == ask.reads
            && self.busy.load(Ordering::Acquire) == 0
            && self.flushed.load(Ordering::Acquire)
    }
}

/// A request of the connection whose answer is not done, until dropped.
#[derive(Debug)]
pub(super) struct Busy(Arc<Park>);

impl Busy {
    pub(super) fn enter(park: &Arc<Park>) -> Busy {
        park.busy.fetch_add(1, Ordering::AcqRel);
        Busy(Arc::clone(park))
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A client connection's socket as hyper sees it: what was read before a fresh HTTP
/// connection started is read first, and completed flushes are noted for [`Park`].
#[derive(Debug)]
pub(super) struct Parkable<I> {
    io: I,
    prefix: Bytes,
    park: Arc<Park>,
}

impl<I: AsyncRead + Unpin> Parkable<I> {
    pub(super) fn new(io: I, park: Arc<Park>) -> Parkable<I> {
        Parkable {
            io,
            prefix: Bytes::new(),
            park,
        }
    }

    /// The connection, and the bytes read from it and not yet used (a tunnel's, once
    /// the connection is upgraded).
    pub(super) fn into_parts(self) -> (I, Bytes) {
        (self.io, self.prefix)
    }

    /// Puts `read` (bytes hyper read and did not use) before the socket's next bytes,
    /// copied: `read` is a view of hyper's whole read buffer, which parking frees.
    pub(super) fn unread(&mut self, read: &[u8]) {
        debug_assert!(self.prefix.is_empty());
        if !read.is_empty() {
            self.prefix = Bytes::copy_from_slice(read);
        }
    }

    /// Waits for the next byte from the client, holding no buffer while it waits;
    /// `false` when the connection closed or failed instead.
    pub(super) async fn next_byte(&mut self) -> bool {
        if !self.prefix.is_empty() {
            return true;
        }
        let mut byte = [0u8; 1];
        let read = std::future::poll_fn(|cx| {
            let mut buf = ReadBuf::new(&mut byte);
            match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) => Poll::Ready(buf.filled().len() == 1),
                Poll::Ready(Err(_)) => Poll::Ready(false),
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        if read {
            self.prefix = Bytes::copy_from_slice(&byte);
        }
        read
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Parkable<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        super::tunnel::poll_read_after(&mut this.prefix, &mut this.io, cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Parkable<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.park.flushed.store(false, Ordering::Release);
        Pin::new(&mut this.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.park.flushed.store(false, Ordering::Release);
        Pin::new(&mut this.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let flushed = Pin::new(&mut this.io).poll_flush(cx);
        if matches!(flushed, Poll::Ready(Ok(()))) {
            this.park.flushed.store(true, Ordering::Release);
        }
        flushed
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.park.flushed.store(false, Ordering::Release);
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
