//! The response body that times the whole request: the total time (`latency_total_*`)
//! ends when the proxy is done sending the body, which only the body itself sees. A
//! gRPC call is counted there too, whole: its outcome is in its trailers (see
//! [`grpc`](super::grpc)). And the guard that counts a request its client abandoned.
//!
//! Owns when the total time is recorded: once per response, at the end of its body,
//! at an upstream error mid-body, or when the client goes away (hyper then drops the
//! body unsent). For a gRPC call it also owns when the call is counted: at its
//! trailers (or the end of a body without any), with the time to them as both
//! latencies; a body that breaks off upstream is an error, unless its h2c connection
//! failed and another stream was charged with that (see [`upstream`](super::upstream)).
//!
//! A request its client abandons before the version's answer is done (it closed its
//! connection, reset its stream, or its gRPC deadline passed) was never answered:
//! counting it nowhere would let a version that hangs past its callers' patience look
//! healthy, with neither errors nor latency. It is counted as a request, with the time
//! it had waited as its latency (a lower bound: the version had not answered yet), in
//! `rampart_proxy_abandoned_total`, and as an error only when the client had stated a
//! deadline (`grpc-timeout`) and at least 90 % of it had passed (the client and the
//! proxy do not start the clock at the same instant): the version failed to answer in
//! the time it was given, which is gRPC's `DEADLINE_EXCEEDED`. A client that leaves
//! early for its own reasons is no evidence against the version.
//!
//! It must not change a byte of the body, and costs no allocation per request: the
//! clock is a field of the body, and recording is one atomic add.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use hyper::body::{Body, Frame, SizeHint};
use rampart_core::Variant;
use tokio::time::Instant;

use super::{Inner, grpc};

/// A body that records its request's total time in its variant's counters, once.
#[derive(Debug)]
pub(super) struct Timed<B: Body> {
    body: B,
    /// `None` for an answer that is not measured (no backend), or once recorded.
    clock: Option<Clock>,
    /// The request in flight, until this body is done (dropped after the record).
    flight: Option<super::Flight>,
    /// Its client connection's answer on its way, until this body is done.
    busy: Option<super::park::Busy>,
}

/// Where and since when to time one request.
#[derive(Debug)]
pub(super) struct Clock {
    inner: Arc<Inner>,
    variant: Variant,
    started: Instant,
    /// Set for a gRPC call, which is counted at its end rather than at its headers:
    /// the `grpc-status` its headers carried (a Trailers-Only answer), if any.
    grpc: Option<Option<u32>>,
    /// Set when the client's request body failed (see `limits::BodyDeadline`): an
    /// upstream stream cut because of it is not the version's failure.
    fault: Option<super::limits::FaultSlot>,
    /// The deadline the client stated (`grpc-timeout`), if any.
    deadline: Option<Duration>,
}

/// How a gRPC call's body came to an end.
enum End {
    /// Its trailers, with their `grpc-status`.
    Trailers(Option<u32>),
    /// Its end without trailers.
    Complete,
    /// The upstream broke it off.
    Broken,
    /// Its h2c connection's failure broke it off, already charged to the version on
    /// another stream (see [`upstream`](super::upstream)).
    Uncharged,
}

impl Clock {
    /// Times a request to `variant` that the proxy forwards at `started`, whose client
    /// stated `deadline` (`grpc-timeout`), if any.
    pub(super) fn new(
        inner: Arc<Inner>,
        variant: Variant,
        started: Instant,
        deadline: Option<Duration>,
    ) -> Clock {
        Clock {
            inner,
            variant,
            started,
            grpc: None,
            fault: None,
            deadline,
        }
    }

    /// Makes this the clock of a gRPC call, counted at its end; `status` is the
    /// `grpc-status` of its headers.
    pub(super) fn grpc(
        mut self,
        status: Option<u32>,
        fault: Option<super::limits::FaultSlot>,
    ) -> Clock {
        self.grpc = Some(status);
        self.fault = fault;
        self
    }

    /// Records the total time of a request answered whole (or whose client left
    /// mid-answer), once its answer is done; not for a gRPC call.
    pub(super) fn finish(self) {
        self.inner
            .counters(self.variant)
            .record_total(self.started.elapsed());
    }

    /// Counts a request its client abandoned before its answer was done (see the
    /// module's doc).
    fn abandon(self) {
        let elapsed = self.started.elapsed();
        let late = self.deadline.is_some_and(|d| elapsed >= d.mul_f64(0.9));
        let counters = self.inner.counters(self.variant);
        counters.abandon();
        counters.record(late, elapsed);
        counters.record_total(elapsed);
    }
}

/// A request forwarded whose answer has not come yet: dropped before [`Self::answered`]
/// (the client went away, and hyper dropped the request's future), it counts the
/// request as abandoned.
#[derive(Debug)]
pub(super) struct Waiting(Option<Clock>);

impl Waiting {
    /// Waits for the answer of the request `clock` times; `None` for a request that is
    /// not counted (rampart's own uncounted load).
    pub(super) fn new(clock: Option<Clock>) -> Waiting {
        Waiting(clock)
    }

    /// The version answered (or failed to): the clock goes on with the answer.
    pub(super) fn answered(mut self) -> Option<Clock> {
        self.0.take()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(clock) = self.0.take() {
            clock.abandon();
        }
    }
}

impl<B: Body> Timed<B> {
    /// `body`, timed by `clock`.
    pub(super) fn new(body: B, clock: Clock) -> Timed<B> {
        Timed {
            body,
            clock: Some(clock),
            flight: None,
            busy: None,
        }
    }

    /// This body, holding its request in flight until it is done.
    pub(super) fn holding(mut self, flight: Option<super::Flight>) -> Timed<B> {
        self.flight = flight;
        self
    }

    /// This body, keeping its client connection busy (unparked) until it is done.
    pub(super) fn busy(mut self, busy: super::park::Busy) -> Timed<B> {
        self.busy = Some(busy);
        self
    }

    /// `body`, not timed (rampart's own answers that no version was asked for).
    pub(super) fn untimed(body: B) -> Timed<B> {
        Timed {
            body,
            clock: None,
            flight: None,
            busy: None,
        }
    }

    /// Records the total time, the first time only; a gRPC call is counted by how it
    /// ended.
    fn record(&mut self, end: End) {
        let Some(c) = self.clock.take() else {
            return;
        };
        let counters = c.inner.counters(c.variant);
        let elapsed = c.started.elapsed();
        let Some(in_headers) = c.grpc else {
            counters.record_total(elapsed);
            return;
        };
        let failed = match end {
            End::Trailers(status) => grpc::is_failure(status.or(in_headers)),
            End::Complete => grpc::is_failure(in_headers),
            // Cut because the client's own body failed: the client's doing.
            End::Broken if c.fault.as_ref().is_some_and(|f| f.get().is_some()) => return,
            End::Broken => true,
            End::Uncharged => return,
        };
        counters.record(failed, elapsed);
        counters.record_total(elapsed);
    }
}

impl<B> Body for Timed<B>
where
    B: Body + Unpin,
    B::Error: AsRef<dyn std::error::Error + Send + Sync>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = ready!(Pin::new(&mut this.body).poll_frame(cx));
        match &frame {
            // The end of the body, or an upstream that broke off: nothing more is sent.
            None => this.record(End::Complete),
            Some(Err(e)) if super::upstream::is_uncharged(e.as_ref()) => {
                this.record(End::Uncharged);
            }
            Some(Err(_)) => this.record(End::Broken),
            Some(Ok(f)) => {
                if let Some(trailers) = f.trailers_ref() {
                    this.record(End::Trailers(grpc::status(trailers)));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: Body> Drop for Timed<B> {
    /// hyper drops a body once its last frame is written (a body of known length is
    /// never polled to its end, and a Trailers-Only answer's not at all), or unsent
    /// when the client went away: either way the proxy is done with the request. A
    /// gRPC call whose body had not ended is one its client abandoned.
    fn drop(&mut self) {
        let ended = self.body.is_end_stream();
        if let Some(c) = self.clock.take_if(|c| c.grpc.is_some() && !ended) {
            c.abandon();
            return;
        }
        self.record(End::Complete);
    }
}
