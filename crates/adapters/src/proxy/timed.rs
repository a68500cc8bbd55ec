//! The response body that times the whole request: the total time (`latency_total_*`)
//! ends when the proxy is done sending the body, which only the body itself sees.
//!
//! Owns when the total time is recorded: once per response, at the end of its body,
//! at an upstream error mid-body, or when the client goes away (hyper then drops the
//! body unsent). It must not change a byte of the body, and costs no allocation per
//! request: the clock is a field of the body, and recording is one atomic add.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::body::{Body, Frame, SizeHint};
use rampart_core::Variant;
use tokio::time::Instant;

use super::Inner;

/// A body that records its request's total time in its variant's counters, once.
#[derive(Debug)]
pub(super) struct Timed<B> {
    body: B,
    /// `None` for an answer that is not measured (no backend), or once recorded.
    clock: Option<Clock>,
}

/// Where and since when to time one request.
#[derive(Debug)]
pub(super) struct Clock {
    inner: Arc<Inner>,
    variant: Variant,
    started: Instant,
}

impl Clock {
    /// Times a request to `variant` that the proxy forwarded at `started`.
    pub(super) fn new(inner: Arc<Inner>, variant: Variant, started: Instant) -> Clock {
        Clock {
            inner,
            variant,
            started,
        }
    }
}

impl<B> Timed<B> {
    /// `body`, timed by `clock`.
    pub(super) fn new(body: B, clock: Clock) -> Timed<B> {
        Timed {
            body,
            clock: Some(clock),
        }
    }

    /// `body`, not timed (rampart's own answers that no version was asked for).
    pub(super) fn untimed(body: B) -> Timed<B> {
        Timed { body, clock: None }
    }

    /// Records the total time, the first time only.
    fn record(&mut self) {
        if let Some(c) = self.clock.take() {
            c.inner
                .counters(c.variant)
                .record_total(c.started.elapsed());
        }
    }
}

impl<B: Body + Unpin> Body for Timed<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        // The end of the body, or an upstream that broke off: nothing more is sent.
        if matches!(frame, Poll::Ready(None | Some(Err(_)))) {
            this.record();
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> Drop for Timed<B> {
    /// hyper drops a body once its last frame is written (a body of known length is
    /// never polled to its end), or unsent when the client went away: either way the
    /// proxy is done with the request.
    fn drop(&mut self) {
        self.record();
    }
}
