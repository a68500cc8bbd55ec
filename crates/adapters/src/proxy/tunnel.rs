//! An upgraded connection's bytes, both ways, for its life (see `Proxy::tunnel`).
//!
//! hyper hands an upgraded connection over as an `Upgraded`: the connection behind a
//! boxed reader, with what hyper read past the upgrade's head in front of it. On a
//! plain client connection the tunnel takes the sockets back out of it
//! ([`Ends::plain`]): every message is then read and written on the two sockets
//! themselves, without the layers the client's HTTP needed (the protocol sniff, the
//! read counter the header timer watches, the parking, hyper's rewind and box). The
//! client's `send_timeout` stays: a client that takes nothing of what the version
//! sends is cut, as on any connection. A TLS client keeps hyper's wrapping.
//!
//! Nothing read is lost in the unwrapping: the bytes hyper had read past the head, and
//! those the layers held, are read again first, in the order they came.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::h2::Prefixed;
use super::limits::{SendDeadline, Watched};
use super::park::Parkable;

/// A plain client connection as the proxy serves it to hyper.
pub(super) type PlainClient = TokioIo<Parkable<Prefixed<Watched<SendDeadline<TcpStream>>>>>;

/// Any connection a tunnel carries.
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Copies both ways between `client` and `upstream` until either side closes or fails.
pub(super) async fn pump(client: Upgraded, upstream: Upgraded) -> std::io::Result<(u64, u64)> {
    match (plain_client(client), plain_upstream(upstream)) {
        (Ok(client), Ok(upstream)) => copy(client, upstream).await,
        (client, upstream) => copy(boxed(client), boxed(upstream)).await,
    }
}

async fn copy<A: Io, B: Io>(mut a: A, mut b: B) -> std::io::Result<(u64, u64)> {
    tokio::io::copy_bidirectional(&mut a, &mut b).await
}

/// Either end, wrapped as hyper gave it when it could not be taken apart.
fn boxed<I: Io + 'static>(end: Result<Unread<I>, Upgraded>) -> Box<dyn Io> {
    match end {
        Ok(io) => Box::new(io),
        Err(upgraded) => Box::new(TokioIo::new(upgraded)),
    }
}

/// A plain client's socket, with its `send_timeout`, behind every byte read from it
/// and not yet used. `Err` gives the connection back when it is not a plain one.
fn plain_client(client: Upgraded) -> Result<Unread<SendDeadline<TcpStream>>, Upgraded> {
    let parts = client.downcast::<PlainClient>()?;
    let (prefixed, parked) = parts.io.into_inner().into_parts();
    let (watched, sniffed) = prefixed.into_parts();
    // What hyper read came first from the layers, so it goes first.
    let unread = join(&[&parts.read_buf, &parked, &sniffed]);
    Ok(Unread::new(watched.into_inner(), unread))
}

/// The socket to the version, behind what hyper read past its 101.
fn plain_upstream(upstream: Upgraded) -> Result<Unread<TcpStream>, Upgraded> {
    let parts = upstream.downcast::<TokioIo<TcpStream>>()?;
    Ok(Unread::new(parts.io.into_inner(), parts.read_buf))
}

/// `pieces` in one buffer, in order.
fn join(pieces: &[&[u8]]) -> Bytes {
    let mut all = BytesMut::new();
    for p in pieces {
        all.extend_from_slice(p);
    }
    all.freeze()
}

/// A connection whose first bytes were already read: they are read again first.
#[derive(Debug)]
pub(super) struct Unread<I> {
    unread: Bytes,
    io: I,
}

impl<I> Unread<I> {
    fn new(io: I, unread: Bytes) -> Unread<I> {
        Unread { unread, io }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Unread<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        poll_read_after(&mut this.unread, &mut this.io, cx, buf)
    }
}

write_through!(Unread);

/// Reads `unread` first, then `io`: for a connection some of whose bytes were already
/// read by whoever looked at it before.
pub(super) fn poll_read_after<I: AsyncRead + Unpin>(
    unread: &mut Bytes,
    io: &mut I,
    cx: &mut Context<'_>,
    buf: &mut ReadBuf<'_>,
) -> Poll<std::io::Result<()>> {
    if unread.is_empty() {
        return Pin::new(io).poll_read(cx, buf);
    }
    let n = unread.len().min(buf.remaining());
    buf.put_slice(&unread[..n]);
    unread.advance(n);
    Poll::Ready(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_keeps_the_order_the_bytes_came_in() {
        assert_eq!(join(&[b"ab", b"", b"cd"]), Bytes::from_static(b"abcd"));
        assert_eq!(join(&[b"", b"x", b""]), Bytes::from_static(b"x"));
        assert!(join(&[b"", b""]).is_empty());
    }

    #[tokio::test]
    async fn unread_bytes_come_before_the_connection_s_own() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut far, near) = tokio::io::duplex(64);
        far.write_all(b" world").await.unwrap();
        drop(far);
        let mut io = Unread::new(near, Bytes::from_static(b"hello"));
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
