//! One request's exchange with an h2c version, on the `h2` crate's client directly:
//! the head is sent from the request's own task, the body is pumped from there while
//! the answer is awaited, and the answer's body is read as the proxy's client side
//! polls it.
//!
//! hyper's HTTP/2 client, which this replaces, passed each request through a channel to
//! its connection's task, spawned a task to wait for each answer (and one to pipe each
//! body), and answered through a second channel: two more tasks woken per request, on
//! a path where a gRPC call is otherwise a few microseconds of work (BENCHMARKS.md).
//! Here the connection's task only reads and writes frames.
//!
//! Owns how one request is put on a stream, its body's flow control, and what kind
//! of failure ended it ([`Failed`]). It must not choose the connection, send anything
//! again, or charge a failure: `upstream.rs` does.
//!
//! Guarantees:
//! - A request the connection never took (closed, or going away, before its head was
//!   queued) fails [`Failed::NotSent`] with its body untouched, so it can be sent on
//!   another connection as it is.
//! - A body's data goes out as the version's flow control allows: a chunk is held until
//!   the stream has send capacity, no capacity is claimed before the body has data
//!   (claiming ahead can stall other streams on a version that only updates its window
//!   once it is spent), and at most one chunk is read ahead. Trailers pass as they
//!   came; a body that ends without them ends its stream with an empty frame.
//! - A client body that fails (cut short, past its limit, too slow) resets the stream
//!   (with the client's own HTTP/2 reason when it has one, else `INTERNAL_ERROR`) and
//!   fails [`Failed::Client`]: never the version's fault. While the answer is awaited
//!   this is the request's result; once the answer's head came, the rest of the body
//!   is pumped by a task of its own (a streaming call goes on both ways), and a
//!   failure there shows in the answer's body as the version's reset.
//! - That task never outlives the client's interest: an answer dropped before its end
//!   (its client left) resets the stream with `CANCEL` through [`Cancel`], even while
//!   the pump waits for send capacity the version will never give. Until the pump is
//!   done it keeps what the caller gave it to hold (the stream's place on its
//!   connection), so a stream h2 still has open is still counted.
//! - The answer's body gives back its connection's receive window as the proxy's
//!   client side takes each chunk, so a client that stops reading holds no more than
//!   its stream's window.
//!
//! Every field the h2 crate refuses in a request head is removed here, whatever
//! `mod.rs` left: a head it refused would fail [`Failed::NotSent`], and the pool would
//! take its healthy connection for a closed one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use h2::client::{ResponseFuture, SendRequest};
use h2::{Reason, RecvStream, SendStream};
use hyper::body::{Body, Frame, SizeHint};
use hyper::{Method, Request, Response};

use tokio::sync::oneshot;

use super::upstream::UpstreamError;

/// How an exchange failed.
#[derive(Debug)]
pub(super) enum Failed {
    /// The connection took nothing of the request: its body is untouched.
    NotSent(h2::Error),
    /// The stream or its connection failed after the head was queued.
    Stream(h2::Error),
    /// The client's body failed on its way; the stream was reset.
    Client(UpstreamError),
}

/// Given with an answer whose request body is still being sent: dropped before
/// [`Cancel::finished`], it resets the stream.
#[derive(Debug)]
pub(super) struct Cancel(Option<oneshot::Sender<()>>);

impl Cancel {
    /// The answer was read to its end: the rest of the body may still go.
    pub(super) fn finished(mut self) {
        self.0 = None;
    }
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if let Some(cancel) = self.0.take() {
            let _ = cancel.send(());
        }
    }
}

/// Sends `head` and `body` on a new stream of `sender`'s connection, and waits for the
/// answer's head; with it, a [`Cancel`] when the body is still being sent. `hold` is
/// kept until nothing more is sent on the stream.
pub(super) async fn exchange<B, H>(
    sender: SendRequest<Bytes>,
    mut head: Request<()>,
    body: B,
    hold: H,
) -> Result<(Response<RecvStream>, Option<Cancel>), Failed>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<UpstreamError>,
    H: Send + Unpin + 'static,
{
    let mut sender = sender.ready().await.map_err(Failed::NotSent)?;
    forbidden_in_http2(head.headers_mut());
    declare_length(&mut head, &body);
    let end = body.is_end_stream();
    let (answer, send) = sender.send_request(head, end).map_err(Failed::NotSent)?;
    drop(sender);
    if end {
        return Ok((answer.await.map_err(Failed::Stream)?, None));
    }
    Exchange {
        answer,
        pump: Some(Pump {
            body,
            send,
            held: None,
            cancelled: None,
            _hold: hold,
        }),
    }
    .await
}

/// Removes what HTTP/2 forbids in a request (RFC 9113 8.2.2), and the `h2` crate
/// refuses: the connection-specific fields (`mod.rs` already took the hop-by-hop ones
/// off; `Transfer-Encoding` and `Upgrade` it leaves for HTTP/1.1 versions), and every
/// transfer coding a `TE` asks for but `trailers`, which HTTP/2 allows alone.
pub(super) fn forbidden_in_http2(headers: &mut hyper::HeaderMap) {
    const CONNECTION_SPECIFIC: [hyper::header::HeaderName; 5] = [
        hyper::header::CONNECTION,
        hyper::header::TRANSFER_ENCODING,
        hyper::header::UPGRADE,
        super::KEEP_ALIVE,
        super::PROXY_CONNECTION,
    ];
    super::remove_named(headers, &CONNECTION_SPECIFIC);
    // Every line, not only the first: `te: trailers` then `te: gzip` is a `TE` that
    // is not `trailers` alone, which a version may answer with a malformed-request
    // reset, counted as its failure. A gRPC call's `te: trailers` passes as it is;
    // `trailers` among other codings (`te: trailers, gzip`) is kept alone, since a
    // gRPC server may refuse a call whose `TE` lost it.
    if !super::named_any(headers, &[hyper::header::TE]) {
        return;
    }
    let lines = headers.get_all(hyper::header::TE);
    let mut iter = lines.iter();
    if iter.next().is_some_and(|te| te == "trailers") && iter.next().is_none() {
        return;
    }
    let trailers = asks_trailers(headers);
    headers.remove(hyper::header::TE);
    if trailers {
        headers.insert(
            hyper::header::TE,
            hyper::header::HeaderValue::from_static("trailers"),
        );
    }
}

/// Whether a `TE` line lists `trailers` among its codings.
pub(super) fn asks_trailers(headers: &hyper::HeaderMap) -> bool {
    headers.get_all(hyper::header::TE).iter().any(|te| {
        te.as_bytes()
            .split(|b| *b == b',')
            .any(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"trailers"))
    })
}

/// Declares a body of a known length in `Content-Length` when the client did not, as
/// hyper's client does: a non-empty body, or an empty one where the method gives a
/// body a meaning.
fn declare_length<B: Body>(head: &mut Request<()>, body: &B) {
    let Some(len) = body.size_hint().exact() else {
        return;
    };
    let meaningless = [Method::GET, Method::HEAD, Method::DELETE, Method::CONNECT];
    if (len != 0 || !meaningless.contains(head.method()))
        && !head.headers().contains_key(hyper::header::CONTENT_LENGTH)
    {
        head.headers_mut()
            .insert(hyper::header::CONTENT_LENGTH, len.into());
    }
}

/// Waits for the answer's head while the body is pumped.
struct Exchange<B, H> {
    answer: ResponseFuture,
    /// `None` once the body was sent whole, or its stream failed (the answer tells how).
    pump: Option<Pump<B, H>>,
}

impl<B, H> Future for Exchange<B, H>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<UpstreamError>,
    H: Send + Unpin + 'static,
{
    type Output = Result<(Response<RecvStream>, Option<Cancel>), Failed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Some(pump) = &mut this.pump
            && let Poll::Ready(done) = Pin::new(pump).poll(cx)
        {
            this.pump = None;
            if let Err(Pumped::Client(e)) = done {
                return Poll::Ready(Err(Failed::Client(e)));
            }
        }
        let answer = ready!(Pin::new(&mut this.answer).poll(cx)).map_err(Failed::Stream)?;
        let mut cancel = None;
        if let Some(mut pump) = this.pump.take() {
            // Made only here: a unary call's body is sent before its answer comes.
            let (tell, told) = oneshot::channel();
            pump.cancelled = Some(told);
            cancel = Some(Cancel(Some(tell)));
            // The version answered before the body was all sent (a streaming call, or
            // an early answer): the rest goes on beside the answer.
            tokio::spawn(Box::pin(async move {
                match pump.await {
                    Ok(()) => {}
                    Err(Pumped::Stream(e)) => {
                        tracing::debug!(error = %e, "h2c stream ended before its request body");
                    }
                    Err(Pumped::Client(e)) => {
                        tracing::debug!(error = %e, "request body to an h2c version failed");
                    }
                }
            }));
        }
        Poll::Ready(Ok((answer, cancel)))
    }
}

/// Why a pump stopped before the body's end.
#[derive(Debug)]
enum Pumped {
    /// The stream was reset or its connection failed: the answer says how.
    Stream(h2::Error),
    /// The client's body failed; the stream was reset.
    Client(UpstreamError),
}

/// Moves a request body onto its stream, as flow control allows.
struct Pump<B, H> {
    body: B,
    send: SendStream<Bytes>,
    /// A chunk read from the body, waiting for send capacity, and whether it is the last.
    held: Option<(Bytes, bool)>,
    /// Told when the answer was dropped before its end; `None` once it was read to it.
    cancelled: Option<oneshot::Receiver<()>>,
    _hold: H,
}

impl<B, H> Future for Pump<B, H>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<UpstreamError>,
    H: Unpin,
{
    type Output = Result<(), Pumped>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            // The client left: nothing more is sent, and the version is told.
            if let Some(cancelled) = &mut this.cancelled
                && let Poll::Ready(told) = Pin::new(cancelled).poll(cx)
            {
                this.cancelled = None;
                if told.is_ok() {
                    this.send.send_reset(Reason::CANCEL);
                    return Poll::Ready(Err(Pumped::Stream(Reason::CANCEL.into())));
                }
            }
            // Woken by a reset too, while waiting for the body or for capacity.
            if let Poll::Ready(reset) = this.send.poll_reset(cx) {
                return Poll::Ready(Err(Pumped::Stream(match reset {
                    Ok(reason) => reason.into(),
                    Err(e) => e,
                })));
            }
            if let Some((data, last)) = this.held.take() {
                if this.send.capacity() == 0 {
                    match this.send.poll_capacity(cx) {
                        Poll::Pending => {
                            this.held = Some((data, last));
                            return Poll::Pending;
                        }
                        Poll::Ready(Some(Ok(_))) => {
                            this.held = Some((data, last));
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Pumped::Stream(e))),
                        Poll::Ready(None) => {
                            return Poll::Ready(Err(Pumped::Stream(Reason::CANCEL.into())));
                        }
                    }
                }
                this.send.send_data(data, last).map_err(Pumped::Stream)?;
                if last {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            let frame = match ready!(Pin::new(&mut this.body).poll_frame(cx)) {
                Some(Ok(frame)) => frame,
                Some(Err(e)) => {
                    let e: UpstreamError = e.into();
                    this.send.send_reset(client_reason(e.as_ref()));
                    return Poll::Ready(Err(Pumped::Client(e)));
                }
                None => {
                    this.send
                        .send_data(Bytes::new(), true)
                        .map_err(Pumped::Stream)?;
                    return Poll::Ready(Ok(()));
                }
            };
            match frame.into_data() {
                Ok(data) => {
                    let last = this.body.is_end_stream();
                    if data.is_empty() {
                        this.send.send_data(data, last).map_err(Pumped::Stream)?;
                        if last {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                    // A claim of one byte: h2 raises it to the chunk's length as it
                    // sends, and a stream waiting for capacity pins no more of the
                    // connection's window than that.
                    this.send.reserve_capacity(1);
                    this.held = Some((data, last));
                }
                Err(frame) => {
                    if let Ok(mut trailers) = frame.into_trailers() {
                        this.send.reserve_capacity(0);
                        // A chunked upload's trailer section may carry what HTTP/2
                        // forbids; h2 would refuse the block and leave the stream
                        // open, the version waiting for its end for ever.
                        forbidden_in_http2(&mut trailers);
                        if let Err(e) = this.send.send_trailers(trailers) {
                            this.send.send_reset(Reason::INTERNAL_ERROR);
                            return Poll::Ready(Err(Pumped::Stream(e)));
                        }
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

/// The reason a stream is reset with when its client's body failed: the client's own,
/// when its HTTP/2 stream was reset (a gRPC client's `CANCEL` reaches the version as
/// such), else `INTERNAL_ERROR`.
fn client_reason(e: &(dyn std::error::Error + 'static)) -> Reason {
    std::iter::successors(Some(e), |e| e.source())
        .find_map(|e| e.downcast_ref::<h2::Error>())
        .and_then(h2::Error::reason)
        .unwrap_or(Reason::INTERNAL_ERROR)
}

/// An h2c version's answer body: data, then trailers if any.
#[derive(Debug)]
pub(super) struct Received {
    recv: RecvStream,
    /// The data is all read: trailers are next.
    data_done: bool,
    /// What `Content-Length` says is left, when it says.
    left: Option<u64>,
}

impl Received {
    /// The body of an answer whose head declared `length`.
    pub(super) fn new(recv: RecvStream, length: Option<u64>) -> Self {
        Received {
            recv,
            data_done: false,
            left: length,
        }
    }

    /// Reads the next frame.
    pub(super) fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        if !self.data_done {
            match ready!(self.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // Taken: its share of the windows goes back to the version.
                    let _ = self.recv.flow_control().release_capacity(data.len());
                    if let Some(left) = &mut self.left {
                        *left = left.saturating_sub(data.len() as u64);
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => self.data_done = true,
            }
        }
        Poll::Ready(match ready!(self.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Some(Ok(Frame::trailers(trailers))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        })
    }

    pub(super) fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }

    pub(super) fn size_hint(&self) -> SizeHint {
        match self.left {
            Some(left) => SizeHint::with_exact(left),
            None => SizeHint::default(),
        }
    }
}

/// The length an answer's head declares, if it declares one (and only one).
pub(super) fn declared_length(headers: &hyper::HeaderMap) -> Option<u64> {
    let mut values = headers.get_all(hyper::header::CONTENT_LENGTH).iter();
    let first = values.next()?;
    if values.any(|v| v != first) {
        return None;
    }
    super::lean::content_length(first.as_bytes().trim_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What HTTP/2 forbids goes, wherever it sits among the fields; `te: trailers`
    /// (every gRPC call's) and everything else stays.
    #[test]
    fn what_http2_forbids_is_removed_and_nothing_else() {
        let forbidden = [
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
        ];
        for (name, value) in forbidden {
            let mut h = hyper::HeaderMap::new();
            h.insert("content-type", "application/grpc".parse().unwrap());
            h.insert(name, value.parse().unwrap());
            h.insert("x-kept", "1".parse().unwrap());
            forbidden_in_http2(&mut h);
            let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(left, ["content-type", "x-kept"], "{name}");
        }
        let mut h = hyper::HeaderMap::new();
        h.insert("te", "trailers".parse().unwrap());
        h.insert("content-type", "application/grpc".parse().unwrap());
        let before = h.clone();
        forbidden_in_http2(&mut h);
        assert_eq!(h, before);
        // Review: only the first `TE` line was read.
        h.append("te", "gzip".parse().unwrap());
        forbidden_in_http2(&mut h);
        assert_eq!(te_lines(&h), ["trailers"]);
    }

    fn te_lines(h: &hyper::HeaderMap) -> Vec<&str> {
        h.get_all("te")
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect()
    }

    /// `trailers` among other codings stays, alone, on one line (review: the whole
    /// line went, and a gRPC server may refuse a call without it); codings that only
    /// look like it do not count.
    #[test]
    fn trailers_among_other_codings_is_kept_alone() {
        let cases: [(&[&str], &[&str]); 7] = [
            (&["trailers, gzip"], &["trailers"]),
            (&["gzip;q=0.5,  Trailers "], &["trailers"]),
            (&["gzip", "trailers"], &["trailers"]),
            (&["trailers", "trailers"], &["trailers"]),
            (&["gzip;q=0.5, deflate"], &[]),
            (&["trailersx, gzip"], &[]),
            (&["trailers;q=1"], &[]),
        ];
        for (given, kept) in cases {
            let mut h = hyper::HeaderMap::new();
            for line in given {
                h.append("te", line.parse().unwrap());
            }
            h.insert("content-type", "application/grpc".parse().unwrap());
            forbidden_in_http2(&mut h);
            assert_eq!(te_lines(&h), kept, "{given:?}");
            assert!(h.contains_key("content-type"));
        }
    }
}
