//! A request body kept as it is sent to an h2c version, so that a request the version
//! did not process (RFC 9113 8.7: a stream refused with `REFUSED_STREAM`, or above a
//! graceful `GOAWAY`'s last stream id) can be sent again from its first byte.
//!
//! Owns the copy of the body and when it is let go. It must not decide whether a
//! request is sent again: `upstream.rs` does, and asks [`Tape::replay`] whether it can
//! be.
//!
//! Guarantees: a [`Play`] gives the version the frames the client's body gave, in
//! order, trailers included, whether it reads them from the client or from what was
//! kept. At most [`KEPT_BYTES`] of a body's data are kept, and only until
//! [`Tape::forget`] (the version's answer began, or the request is given up) or the
//! tape is dropped: a body that went past it, or failed, cannot be played again. Only
//! the latest play reads: an older one, still held by the stream it was sent on,
//! fails at its next read and takes nothing from the body. The data kept shares the
//! client's buffers (`Bytes`), nothing is copied.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes};
use hyper::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};

/// The most of a request body's data kept for sending it again. gRPC calls and most
/// requests a version refuses are far smaller; what it costs is bounded by the streams
/// in flight.
pub(super) const KEPT_BYTES: usize = 64 * 1024;

/// A client's request body and what was read of it, shared by its plays.
pub(super) struct Tape<B>(Arc<Mutex<Reel<B>>>);

/// One request body's state.
struct Reel<B> {
    /// The client's body, from where the reading is.
    body: B,
    /// While the body can be played again, every frame read from it, in order; once it
    /// cannot, those the current play has yet to give.
    kept: VecDeque<Kept>,
    /// The data bytes in `kept`, while the body can be played again.
    kept_bytes: usize,
    /// How many of `kept` the current play gave, while the body can be played again.
    at: usize,
    /// `body` gave its end.
    ended: bool,
    /// Something read was not kept (past [`KEPT_BYTES`], forgotten, or the body
    /// failed): the body cannot be played again from its start.
    lost: bool,
    /// The play that may read; older ones fail.
    current: u64,
}

/// A frame kept.
enum Kept {
    Data(Bytes),
    Trailers(HeaderMap),
}

impl Kept {
    fn frame(&self) -> Frame<Bytes> {
        match self {
            Kept::Data(data) => Frame::data(data.clone()),
            Kept::Trailers(trailers) => Frame::trailers(trailers.clone()),
        }
    }

    fn into_frame(self) -> Frame<Bytes> {
        match self {
            Kept::Data(data) => Frame::data(data),
            Kept::Trailers(trailers) => Frame::trailers(trailers),
        }
    }

    fn len(&self) -> usize {
        match self {
            Kept::Data(data) => data.len(),
            Kept::Trailers(_) => 0,
        }
    }
}

/// One sending of a tape's body: what hyper reads.
pub(super) struct Play<B> {
    reel: Arc<Mutex<Reel<B>>>,
    /// Which play it is.
    take: u64,
}

/// A play read after the request was sent again on another stream: the stream it
/// belongs to is over.
#[derive(Debug, thiserror::Error)]
#[error("the request body was sent again on another stream")]
pub(super) struct Superseded;

fn lock<B>(reel: &Mutex<Reel<B>>) -> MutexGuard<'_, Reel<B>> {
    reel.lock().unwrap_or_else(|p| p.into_inner())
}

impl<B> Reel<B> {
    /// Nothing more is kept, and the body cannot be played again; what the current
    /// play has given is let go, what it has yet to give stays until it does.
    fn lose(&mut self) {
        self.lost = true;
        self.kept.drain(..self.at.min(self.kept.len()));
        self.at = 0;
        self.kept_bytes = 0;
    }

    /// Keeps `frame` if the body can still be played again with it; whether it was.
    fn keep(&mut self, frame: &Frame<Bytes>) -> bool {
        if self.lost {
            return false;
        }
        let kept = if let Some(data) = frame.data_ref() {
            Kept::Data(data.clone())
        } else if let Some(trailers) = frame.trailers_ref() {
            Kept::Trailers(trailers.clone())
        } else {
            self.lose();
            return false;
        };
        if self.kept_bytes + kept.len() > KEPT_BYTES {
            self.lose();
            return false;
        }
        self.kept_bytes += kept.len();
        self.kept.push_back(kept);
        true
    }

    /// The kept frames the current play has yet to give.
    fn unplayed(&self) -> impl Iterator<Item = &Kept> {
        let skip = if self.lost { 0 } else { self.at };
        self.kept.iter().skip(skip)
    }

    /// The current play's next kept frame, if it has one to give.
    fn next_kept(&mut self) -> Option<Frame<Bytes>> {
        if self.lost {
            return self.kept.pop_front().map(Kept::into_frame);
        }
        let frame = self.kept.get(self.at)?.frame();
        self.at += 1;
        Some(frame)
    }
}

// === impl Tape ===

impl<B> Tape<B> {
    /// A tape of `body`, and its first play.
    pub(super) fn new(body: B) -> (Tape<B>, Play<B>) {
        let reel = Arc::new(Mutex::new(Reel {
            body,
            kept: VecDeque::new(),
            kept_bytes: 0,
            at: 0,
            ended: false,
            lost: false,
            current: 0,
        }));
        let play = Play {
            reel: reel.clone(),
            take: 0,
        };
        (Tape(reel), play)
    }

    /// A play of the body from its first byte, if all that was read of it was kept;
    /// every earlier play reads nothing more.
    pub(super) fn replay(&self) -> Option<Play<B>> {
        let mut reel = lock(&self.0);
        if reel.lost {
            return None;
        }
        reel.current += 1;
        reel.at = 0;
        Some(Play {
            reel: self.0.clone(),
            take: reel.current,
        })
    }

    /// The body will not be played again: what is kept is let go as soon as the
    /// current play has given it, and the rest passes without being kept.
    pub(super) fn forget(&self) {
        lock(&self.0).lose();
    }
}

impl<B> Drop for Tape<B> {
    fn drop(&mut self) {
        self.forget();
    }
}

impl<B> std::fmt::Debug for Tape<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let reel = lock(&self.0);
        f.debug_struct("Tape")
            .field("kept_bytes", &reel.kept_bytes)
            .field("ended", &reel.ended)
            .field("lost", &reel.lost)
            .finish()
    }
}

// === impl Play ===

impl<B> std::fmt::Debug for Play<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Play").field("take", &self.take).finish()
    }
}

impl<B> Body for Play<B>
where
    B: Body + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut reel = lock(&self.reel);
        if reel.current != self.take {
            return Poll::Ready(Some(Err(Box::new(Superseded))));
        }
        if let Some(frame) = reel.next_kept() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if reel.ended {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut reel.body).poll_frame(cx));
        Poll::Ready(match frame {
            Some(Ok(frame)) => {
                let frame = frame.map_data(|mut d| d.copy_to_bytes(d.remaining()));
                if reel.keep(&frame) {
                    reel.at += 1;
                }
                Some(Ok(frame))
            }
            Some(Err(e)) => {
                reel.lose();
                Some(Err(e.into()))
            }
            None => {
                reel.ended = true;
                None
            }
        })
    }

    fn is_end_stream(&self) -> bool {
        let reel = lock(&self.reel);
        reel.current == self.take
            && reel.unplayed().next().is_none()
            && (reel.ended || reel.body.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let reel = lock(&self.reel);
        let kept = reel.unplayed().map(Kept::len).sum::<usize>();
        let kept = u64::try_from(kept).unwrap_or(u64::MAX);
        let rest = if reel.ended {
            SizeHint::with_exact(0)
        } else {
            reel.body.size_hint()
        };
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower().saturating_add(kept));
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper.saturating_add(kept));
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// A client's body: the frames given, each read once, then its end.
    struct Given(VecDeque<Result<Frame<Bytes>, std::io::Error>>);

    impl Given {
        fn data(chunks: &[&'static [u8]]) -> Given {
            Given(
                chunks
                    .iter()
                    .map(|c| Ok(Frame::data(Bytes::from_static(c))))
                    .collect(),
            )
        }
    }

    impl Body for Given {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Ready(self.get_mut().0.pop_front())
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// Every frame of `play`: its data joined, and its trailers.
    async fn read<B>(play: Play<B>) -> (Bytes, Option<HeaderMap>)
    where
        B: Body + Unpin,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let collected = play.collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        (collected.to_bytes(), trailers)
    }

    /// A body read whole, or in part, plays again from its first byte, trailers and
    /// all, with its length known; the first play reads nothing more once replaced.
    #[tokio::test]
    async fn a_body_plays_again_from_its_first_byte() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let mut given = Given::data(&[b"one ", b"two ", b"three"]);
        given.0.push_back(Ok(Frame::trailers(trailers.clone())));
        let (tape, mut first) = Tape::new(given);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "one ");
        let second = tape.replay().unwrap();
        assert!(first.frame().await.unwrap().unwrap_err().is::<Superseded>());
        assert_eq!(second.size_hint().lower(), 4);
        assert_eq!(
            read(second).await,
            (Bytes::from("one two three"), Some(trailers.clone()))
        );
        let third = tape.replay().unwrap();
        assert_eq!(third.size_hint().exact(), Some(13));
        assert!(!third.is_end_stream());
        assert_eq!(
            read(third).await,
            (Bytes::from("one two three"), Some(trailers))
        );
    }

    /// An empty body is at its end from the start, on every play.
    #[tokio::test]
    async fn an_empty_body_is_at_its_end_on_every_play() {
        let (tape, first) = Tape::new(Given::data(&[]));
        assert!(first.is_end_stream());
        drop(first);
        let again = tape.replay().unwrap();
        assert!(again.is_end_stream());
        assert_eq!(read(again).await.0, Bytes::new());
    }

    /// Past `KEPT_BYTES` nothing is kept and the body cannot be played again; the play
    /// under way still gives all of it.
    #[tokio::test]
    async fn a_body_past_the_kept_bytes_cannot_be_played_again() {
        static BIG: [u8; KEPT_BYTES] = [7; KEPT_BYTES];
        let (tape, first) = Tape::new(Given::data(&[b"x", &BIG]));
        assert_eq!(read(first).await.0.len(), KEPT_BYTES + 1);
        assert!(tape.replay().is_none());
    }

    /// Forgotten while a play of kept frames is under way, the play still gives every
    /// frame, and no play follows.
    #[tokio::test]
    async fn forgetting_mid_play_loses_no_frame_of_it() {
        let (tape, first) = Tape::new(Given::data(&[b"a", b"b", b"c"]));
        assert_eq!(read(first).await.0, "abc");
        let mut again = tape.replay().unwrap();
        let frame = again.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "a");
        tape.forget();
        assert!(tape.replay().is_none());
        assert_eq!(read(again).await.0, "bc");
    }

    /// A body that failed is not played again.
    #[tokio::test]
    async fn a_failed_body_is_not_played_again() {
        let mut given = Given::data(&[b"a"]);
        given.0.push_back(Err(std::io::Error::other("cut short")));
        let (tape, first) = Tape::new(given);
        assert!(first.collect().await.is_err());
        assert!(tape.replay().is_none());
    }
}
