//! HTTP/2 from clients: which protocol a connection speaks, and the limits of an
//! HTTP/2 connection that hyper does not keep by itself.
//!
//! Owns telling HTTP/2 with prior knowledge (its connection preface) from HTTP/1.1 on
//! a plain connection ([`sniff`]), and an HTTP/2 connection's stream count and idle
//! deadline ([`Activity`]). It must not route or count requests: each stream is a
//! request to `Proxy::forward`, as an HTTP/1.1 request is.
//!
//! Guarantees: the preface is read within the header timeout from the connection's
//! opening, so a client that connects and sends nothing, or dribbles the preface, is
//! closed as one that never sends a request head is; bytes read to tell the protocol
//! are handed on to it untouched. An HTTP/2 connection with no stream open is closed
//! (GOAWAY) at the header timeout when it never had one, and at the idle timeout after
//! its last stream otherwise. A connection whose client cancels (`RST_STREAM`) more
//! than [`FLOOD_RESETS`] streams before their answers, and at least half of all its
//! streams, is sent GOAWAY (the "rapid reset" flood: each stream it opens and
//! cancels has already gone on to a version, at no cost to the client): its streams
//! in flight finish, as at a drain, a stream it opens anyway reaches no version, and
//! it is cut at the header timeout if it has not closed. Costs: a connection's first
//! bytes (up to 1 KiB) on the heap until they have been read again, a few atomic adds
//! per stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The HTTP/2 connection preface (RFC 9113 3.4), which a client with prior knowledge
/// sends before anything else.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a plain connection speaks, told by its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Protocol {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge.
    H2,
}

/// How many of a plain connection's first bytes its sniff reads at most: a small
/// request's whole head, so that the HTTP/1.1 server's first read of the socket is
/// not a second system call for the rest of it.
const SNIFF_BYTES: usize = 1024;

/// Reads a plain connection's first bytes, as many as came (up to [`SNIFF_BYTES`]),
/// until they show the HTTP/2 preface or a byte that differs from it, until
/// `deadline`. `None` when the client closed or sent too little in time.
///
/// Each read lands on the stack of the poll that makes it, and only the bytes read are
/// kept, on the heap until read again: a connection holds no buffer while it waits
/// for its first bytes, and the allocator none of the sniff's size once they are read.
pub(super) async fn sniff<I: AsyncRead + Unpin>(
    mut io: I,
    deadline: Instant,
) -> Option<(Protocol, Prefixed<I>)> {
    let mut head: Vec<u8> = Vec::new();
    let read = async {
        loop {
            let got = std::future::poll_fn(|cx| {
                let mut buf = [0u8; SNIFF_BYTES];
                let mut read = ReadBuf::new(&mut buf);
                match Pin::new(&mut io).poll_read(cx, &mut read) {
                    Poll::Ready(Ok(())) => {
                        head.extend_from_slice(read.filled());
                        Poll::Ready(Ok(read.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await;
            if got.ok()? == 0 {
                return None;
            }
            let seen = head.len().min(PREFACE.len());
            if head[..seen] != PREFACE[..seen] {
                return Some(Protocol::Http1);
            }
            if seen == PREFACE.len() {
                return Some(Protocol::H2);
            }
        }
    };
    let protocol = tokio::time::timeout_at(deadline, read).await.ok()??;
    Some((protocol, Prefixed { head, at: 0, io }))
}

/// A connection whose first bytes, read to tell its protocol, are read again first.
#[derive(Debug)]
pub(super) struct Prefixed<I> {
    head: Vec<u8>,
    at: usize,
    io: I,
}

impl<I> Prefixed<I> {
    /// The connection, and those of its first bytes not read again yet.
    pub(super) fn into_parts(self) -> (I, bytes::Bytes) {
        let mut head = self.head;
        head.drain(..self.at.min(head.len()));
        (self.io, bytes::Bytes::from(head))
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.head.len() {
            let n = (this.head.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.head[this.at..this.at + n]);
            this.at += n;
            if this.at == this.head.len() {
                // Read again whole: the connection keeps no buffer for its life.
                this.head = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

write_through!(Prefixed);

// === impl Activity ===

/// Streams a client may cancel before their answers before its connection can be
/// closed for it (see [`Activity::flooded`]). Browsers cancel streams as pages change
/// and gRPC clients at their deadlines, a few at a time and among many answered: a
/// connection is closed only past this many, and only when they are at least half of
/// its streams.
pub(super) const FLOOD_RESETS: u64 = 200;

/// The streams open on one HTTP/2 connection, for its idle deadline, and those its
/// client cancelled, for its flood limit.
#[derive(Debug, Default)]
pub(super) struct Activity {
    open: AtomicU64,
    /// Set at the first stream: the idle timeout applies from then on.
    begun: AtomicBool,
    /// Woken when the connection becomes idle or busy.
    changed: Notify,
    /// Streams so far, and those cancelled by the client before their answer's head.
    started: AtomicU64,
    cancelled: AtomicU64,
    /// Set, and woken, once the cancelled streams pass the flood limit.
    flooding: AtomicBool,
    flood: Notify,
}

impl Activity {
    /// Counts a stream open until the guard (kept in its answer's body) drops; and
    /// whether it is the only one open.
    pub(super) fn enter(self: &Arc<Self>) -> (Active, bool) {
        self.begun.store(true, Ordering::Relaxed);
        self.started.fetch_add(1, Ordering::Relaxed);
        let first = self.open.fetch_add(1, Ordering::AcqRel) == 0;
        if first {
            self.changed.notify_waiters();
        }
        (Active(self.clone()), first)
    }

    /// Returns once the connection has had no stream open for `first` since `since`
    /// (before its first stream), or for `later` since its last stream ended.
    pub(super) async fn idle(&self, since: Instant, first: Duration, later: Duration) {
        let mut since = since;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.open.load(Ordering::Acquire) == 0 {
                let wait = if self.begun.load(Ordering::Relaxed) {
                    later
                } else {
                    first
                };
                if tokio::time::timeout_at(since + wait, changed)
                    .await
                    .is_err()
                {
                    return;
                }
            } else {
                changed.await;
            }
            since = Instant::now();
        }
    }
}

impl Activity {
    /// A watch on one stream until its answer's head is ready: dropped before
    /// [`Unanswered::answered`], the stream was cancelled (hyper drops a stream's
    /// request on its client's `RST_STREAM`).
    pub(super) fn unanswered(self: &Arc<Self>) -> Unanswered {
        Unanswered(Some(self.clone()))
    }

    /// Returns once the client has cancelled more than [`FLOOD_RESETS`] streams
    /// before their answers, and at least half of its streams.
    pub(super) async fn flooded(&self) {
        loop {
            let flood = self.flood.notified();
            tokio::pin!(flood);
            flood.as_mut().enable();
            if self.flooding.load(Ordering::Acquire) {
                return;
            }
            flood.await;
        }
    }

    /// Whether the client has passed the flood limit (see [`Activity::flooded`]).
    pub(super) fn is_flooding(&self) -> bool {
        self.flooding.load(Ordering::Acquire)
    }

    fn cancelled(&self) {
        let cancelled = self.cancelled.fetch_add(1, Ordering::AcqRel) + 1;
        let started = self.started.load(Ordering::Relaxed);
        if cancelled > FLOOD_RESETS && cancelled.saturating_mul(2) >= started {
            self.flooding.store(true, Ordering::Release);
            self.flood.notify_waiters();
        }
    }
}

/// One stream whose answer's head is not ready yet (see [`Activity::unanswered`]).
#[derive(Debug)]
pub(super) struct Unanswered(Option<Arc<Activity>>);

impl Unanswered {
    /// The stream's answer's head is ready: the stream was not cancelled before it.
    pub(super) fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some(activity) = self.0.take() {
            activity.cancelled();
        }
    }
}

/// One open stream of an HTTP/2 connection, until dropped.
#[derive(Debug)]
pub(super) struct Active(Arc<Activity>);

impl Drop for Active {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.changed.notify_waiters();
        }
    }
}

/// An answer's body that keeps its stream counted open until hyper is done with it.
#[derive(Debug)]
pub(super) struct Held<B> {
    body: B,
    _active: (Active, Option<super::UpstreamSlot>),
}

impl<B> Held<B> {
    /// `body`, keeping its stream counted open, and its upstream room (if it took
    /// one) taken, until hyper is done with it.
    pub(super) fn new(body: B, active: (Active, Option<super::UpstreamSlot>)) -> Held<B> {
        Held {
            body,
            _active: active,
        }
    }
}

impl<B: Body + Unpin> Body for Held<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn sniffed(sent: &[u8]) -> Option<(Protocol, Vec<u8>)> {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(sent).await.unwrap();
        drop(client);
        let (protocol, mut io) = sniff(server, Instant::now() + Duration::from_secs(10)).await?;
        let mut again = Vec::new();
        io.read_to_end(&mut again).await.unwrap();
        Some((protocol, again))
    }

    #[tokio::test]
    async fn the_preface_is_http2_anything_else_http1_and_no_byte_is_lost() {
        let h2 = [PREFACE.as_slice(), b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"].concat();
        assert_eq!(sniffed(&h2).await, Some((Protocol::H2, h2.clone())));
        let get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        assert_eq!(sniffed(&get).await, Some((Protocol::Http1, get.clone())));
        // POST shares the preface's first letter.
        let post = b"POST / HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(sniffed(&post).await, Some((Protocol::Http1, post.clone())));
        assert_eq!(sniffed(b"PRI * HT").await, None, "closed mid-preface");
        assert_eq!(sniffed(b"").await, None);
    }

    /// The sniff reads what came, not only the preface's length: a small request's
    /// whole head is in its one read (the HTTP/1.1 server then needs no second system
    /// call for the rest), and the buffer is freed once it has been read again.
    #[tokio::test]
    async fn the_sniff_takes_a_small_head_whole_and_frees_it_once_read_again() {
        let (mut client, server) = tokio::io::duplex(4096);
        let get =
            b"GET /api/items?page=2 HTTP/1.1\r\nHost: shop.example\r\nConnection: close\r\n\r\n";
        client.write_all(get).await.unwrap();
        let (protocol, mut io) = sniff(server, Instant::now() + Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(protocol, Protocol::Http1);
        assert_eq!(io.head, get.to_vec(), "the whole head in the sniff's read");
        let mut again = vec![0u8; get.len()];
        io.read_exact(&mut again).await.unwrap();
        assert_eq!(again, get.to_vec());
        assert_eq!(
            io.head.capacity(),
            0,
            "the sniff's buffer kept after it was read"
        );
        // What comes next is read from the connection itself.
        client.write_all(b"more").await.unwrap();
        let mut more = [0u8; 4];
        io.read_exact(&mut more).await.unwrap();
        assert_eq!(&more, b"more");
        let (_, rest) = io.into_parts();
        assert!(rest.is_empty());
    }

    /// A client that sends the preface's first bytes and stops is cut at the deadline.
    #[tokio::test(start_paused = true)]
    async fn a_dribbled_preface_is_cut_at_the_deadline() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b"PRI * ").await.unwrap();
        let started = Instant::now();
        assert!(
            sniff(server, started + Duration::from_secs(10))
                .await
                .is_none()
        );
        assert_eq!(started.elapsed(), Duration::from_secs(10));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_waits_first_then_later_after_its_last_stream() {
        let activity = Arc::new(Activity::default());
        let started = Instant::now();
        let first = Duration::from_secs(10);
        let later = Duration::from_secs(60);
        activity.idle(started, first, later).await;
        assert_eq!(started.elapsed(), first, "no stream yet: the first wait");

        let stream = activity.enter();
        let idle = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle(Instant::now(), first, later).await }
        });
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(!idle.is_finished(), "a stream is open: never idle");
        let ended = Instant::now();
        drop(stream);
        idle.await.unwrap();
        assert_eq!(
            ended.elapsed(),
            later,
            "after the last stream: the later wait"
        );
    }
}
