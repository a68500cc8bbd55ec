//! The lean HTTP/1.1 path: a plain-text client's requests without a body (GET, HEAD,
//! DELETE and the like, most of a service's traffic) or with a small one of a declared
//! length (a JSON call, a form: up to [`MAX_BODY`]) forwarded by the proxy's own code
//! rather than through hyper's server and client: a request costs its four socket
//! calls, one parse of each head, and no task, channel or boxed future of its own.
//!
//! Owns reading request heads (and small bodies) off plain HTTP/1.1 client
//! connections, forwarding the requests it can forward whole, and its pool of upstream
//! HTTP/1.1 connections. hyper's path sends its requests without a body (an HTTP/2
//! client's streams, most of all) on that pool too ([`Pool::fetch`]): the answer's
//! head comes back as hyper's, and its body reads itself off the connection, so such
//! a request costs no task, channel or dispatch of hyper's client either. It must not decide anything hyper's path decides: the route,
//! the forwarding headers, what is counted and when (`Proxy::route`,
//! `Proxy::forwarding`, `Clock`, `Waiting`, `Flight`) are the same code on both paths,
//! so versions and judges see no difference.
//!
//! A request with a body is forwarded here only when its body came whole with its
//! head (in the reads that brought the head, as a client's one write of a small
//! request arrives): head and body go to the version in one write, and the request
//! is sent again on the same terms as one without a body. A body still on its way
//! streams through hyper's path, which sends the head at once: a version may answer
//! an upload before its end, and a client may wait for that answer before sending
//! the rest.
//!
//! At the first request it does not forward whole (a body not whole with its head, a
//! chunked one, one longer than [`MAX_BODY`] or `max_body_bytes`, a length hyper
//! would read differently (a list, repeated, leading zeros), an upgrade, `Expect`,
//! HTTP/1.0, a target not in origin form, a gRPC call, a head that does not parse or
//! passes `max_header_bytes`), the connection is handed to hyper's path
//! (`Proxy::serve_http1`) with every byte read and not yet used, which hyper reads
//! first: hyper answers as it always has (400, 413, 431, the upload, the WebSocket)
//! and keeps the connection to its end.
//!
//! Guarantees:
//! - The limits of hyper's path: the first head is due within `header_timeout` of the
//!   connection's opening; a later one within `idle_timeout` of the last answer for
//!   its first byte, then within `header_timeout` of that byte. A connection past its
//!   deadline is closed, as hyper closes it.
//! - A request is counted once, in its variant, as on hyper's path: at its answer's
//!   head (an error when 5xx, with its header time), its total time at the answer's
//!   end, or as abandoned when its client leaves before the answer's head; no answer
//!   from the version is a 502 and an error without latency.
//! - An upstream connection goes back to the pool only after an answer read to its end
//!   (framed by its length or its chunks, with nothing after it) and neither side
//!   asked to close it. A request is sent once more, on a new connection, only when
//!   the pooled one it was sent on had closed before any byte of an answer and the
//!   request is safe to repeat (its method is idempotent, or no byte of it was
//!   written). A request's body is framed at the version by the length the proxy
//!   read it by, whatever the client's `Connection` names.
//! - An idle connection gives up its buffers after `park::park_after`, as hyper's does
//!   when it parks.
//! - The server's stop closes an idle connection at once, and one with a request in
//!   flight after its answer (sent with `Connection: close`); a retiring proxy closes
//!   each connection after its next answer, as does a client's `Connection: close`.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::Method;
use hyper::body::{Body, Frame};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::http1::{Idle, Pooled};
use super::timed::{Clock, Waiting};
use super::{ClientConn, Flight, OpenConnection, Proxy, VARIANT_HEADER};

/// The most header fields a request head may have here (hyper's own bound); one with
/// more goes to hyper's path, which refuses it.
const MAX_FIELDS: usize = 100;

/// The largest request body the lean path forwards, whole once it has all of it (a
/// JSON call's, a form's); a larger one streams through hyper's path, as does one
/// past `max_body_bytes`.
const MAX_BODY: usize = 64 * 1024;

/// The most header fields, and bytes, of a version's answer head (hyper's client
/// allows about 400 KiB).
const MAX_ANSWER_FIELDS: usize = 100;
const MAX_ANSWER_HEAD: usize = 256 * 1024;

/// The room a read off a socket is first given, and the most it grows to. Small, so
/// that a burst of connections costs little memory (an idle connection's buffers are
/// freed after `park::park_after`, but a burst's pages stay resident among the
/// connections' live state); a larger head or body grows it, doubling.
const READ_MIN: usize = 1024;
const READ_MAX: usize = 64 * 1024;

/// Makes room in `buf` for a read: [`READ_MIN`] at first, then as much again as it
/// holds each time a read filled it, up to [`READ_MAX`].
fn room(buf: &mut Vec<u8>, filled: bool) {
    let spare = buf.capacity() - buf.len();
    if filled {
        let want = (2 * buf.capacity()).clamp(READ_MIN, READ_MAX);
        if spare < want {
            buf.reserve(want);
        }
    } else if spare < READ_MIN / 4 {
        buf.reserve(buf.capacity().clamp(READ_MIN, READ_MAX));
    }
}

/// Whether `bytes` (the newly read end of a partial head, with the 3 bytes before
/// it) may hold the head's end: its empty line, `\r\n\r\n` or a bare `\n\n`. A
/// partial head is parsed again only then, as hyper does: a client sending its head a
/// byte at a time costs a scan of each byte, not a parse of the whole head each time.
fn may_end_head(bytes: &[u8]) -> bool {
    bytes.windows(2).any(|w| w == b"\n\n") || bytes.windows(3).any(|w| w == b"\n\r\n")
}

// === impl Pool ===

/// The lean path's idle connections to the versions.
pub(super) struct Pool {
    idle: Arc<Idle<Upstream>>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("lean::Pool").finish_non_exhaustive()
    }
}

/// An HTTP/1.1 connection to one version's endpoint, between requests or carrying one.
struct Upstream {
    stream: TcpStream,
    addr: SocketAddr,
}

impl Pooled for Upstream {
    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// An idle connection has nothing to read: a readable one was closed by its
    /// version (or sent bytes no request asked for), and is done either way.
    fn is_ready(&mut self, cx: &mut Context<'_>) -> bool {
        match self.stream.poll_read_ready(cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => matches!(
                self.stream.try_read(&mut [0u8; 1]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

impl Pool {
    pub(super) fn new(connect_timeout: Duration) -> Pool {
        Pool {
            idle: Idle::new(),
            connect_timeout,
        }
    }

    /// Forgets the idle connections to endpoints not `routed`.
    pub(super) fn retain(&self, routed: std::collections::HashSet<SocketAddr>) {
        self.idle.retain(routed);
    }

    async fn connect(&self, addr: SocketAddr) -> std::io::Result<Box<Upstream>> {
        let stream = super::http1::connect(addr, self.connect_timeout).await?;
        Ok(Box::new(Upstream { stream, addr }))
    }
}

// === request heads ===

/// A request head the lean path forwards.
struct Head {
    /// Its length at the start of the buffer.
    len: usize,
    /// The length of its body, which follows it (`Content-Length`; 0 without one).
    body: usize,
    method: Method,
    /// Where its target (origin form) is in the buffer.
    target: Range<usize>,
    headers: HeaderMap,
    /// Whether the client asked to close the connection after the answer.
    close: bool,
}

/// What the start of a client's buffer holds.
enum Parsed {
    Head(Head),
    /// Not a whole head yet.
    Partial,
    /// A head for hyper's path (see the module's doc).
    Hyper,
}

/// Parses the request head at the start of `buf`.
fn parse_head(buf: &[u8]) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut fields);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Hyper,
    };
    let (Some(1), Some(method), Some(path)) = (req.version, req.method, req.path) else {
        return Parsed::Hyper;
    };
    if !path.starts_with('/') {
        return Parsed::Hyper;
    }
    // A target hyper's path refuses (`400`) or rewrites (a fragment dropped) is left
    // to it, so that both paths send a version the same targets.
    match hyper::http::uri::PathAndQuery::try_from(path) {
        Ok(pq) if pq.as_str().len() == path.len() => {}
        _ => return Parsed::Hyper,
    }
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Parsed::Hyper;
    };
    if method == Method::CONNECT {
        return Parsed::Hyper;
    }
    let start = path.as_ptr() as usize - buf.as_ptr() as usize;
    let target = start..start + path.len();
    // Room for the forwarding headers the proxy adds, so that they cost no regrowth.
    let mut headers = HeaderMap::with_capacity(req.headers.len() + 4);
    let mut host = false;
    let mut close = false;
    let mut body = None;
    for field in req.headers.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Parsed::Hyper;
        };
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Parsed::Hyper;
        }
        if name == header::CONTENT_LENGTH {
            // One length, in its plain form: a list, a repeated field or a length
            // with leading zeros is hyper's to read (or refuse), and a length past
            // what the lean path holds streams through hyper's path.
            let length = match value.as_bytes() {
                b"0" => Some(0),
                [b'0', ..] => None,
                digits => content_length(digits).and_then(|n| usize::try_from(n).ok()),
            };
            match (body, length) {
                (None, Some(n)) if n <= MAX_BODY => body = Some(n),
                _ => return Parsed::Hyper,
            }
        }
        if name == header::HOST {
            // Two, or one that is no host, are refused by hyper's path
            // (`Proxy::handle`).
            if host || !super::valid_host(value.as_bytes()) {
                return Parsed::Hyper;
            }
            host = true;
        }
        if name == header::CONNECTION && has_token(value.as_bytes(), b"close") {
            close = true;
        }
        headers.append(name, value);
    }
    if !host || super::grpc::is_grpc(&headers) {
        return Parsed::Hyper;
    }
    Parsed::Head(Head {
        len,
        body: body.unwrap_or(0),
        method,
        target,
        headers,
        close,
    })
}

/// Whether a comma-separated header value lists `token` (case-insensitive).
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Writes `req`'s head for a version into `out`: its request line in origin form and
/// `headers` (already edited for the version).
fn write_request(out: &mut Vec<u8>, method: &Method, target: &[u8], headers: &HeaderMap) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

// === answer heads ===

/// How an answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// It has none (HEAD, 204, 304).
    Empty,
    /// After this many bytes.
    Length(u64),
    /// At its last chunk and trailers.
    Chunked,
    /// When the version closes the connection.
    Close,
}

/// A version's answer head, read whole.
#[derive(Debug)]
struct Answer {
    /// Its length at the start of the buffer.
    len: usize,
    status: u16,
    framing: Framing,
    /// Whether the version keeps the connection open after it.
    keep_alive: bool,
    /// Whether the client's connection closes after it (its head says so).
    close: bool,
}

/// Now as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted once a second per
/// thread, as hyper's server caches it.
fn http_date() -> [u8; 29] {
    thread_local! {
        static CACHED: std::cell::Cell<(u64, [u8; 29])> =
            const { std::cell::Cell::new((u64::MAX, [0; 29])) };
    }
    // The wall clock, for a header that only reports it: nothing is decided on it.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now();
    let second = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let (at, date) = cached.get();
        if at == second {
            return date;
        }
        let mut date = [b' '; 29];
        let text = httpdate::fmt_http_date(now);
        let n = text.len().min(29);
        date[..n].copy_from_slice(&text.as_bytes()[..n]);
        cached.set((second, date));
        date
    })
}

/// What the start of a version's buffer holds.
#[derive(Debug)]
enum ParsedAnswer {
    Answer(Answer),
    /// An informational answer (1xx but 101) of this length, which the client of a
    /// request without `Expect` is not sent.
    Informational(usize),
    Partial,
}

/// Why a version's answer cannot be passed on.
#[derive(Debug, thiserror::Error)]
enum BadAnswer {
    #[error("malformed answer head: {0}")]
    Parse(#[from] httparse::Error),
    #[error("answer head over {MAX_ANSWER_HEAD} bytes")]
    TooLarge,
    #[error("unasked-for 101 Switching Protocols")]
    Switched,
    #[error("conflicting or invalid Content-Length")]
    Length,
    #[error("a Transfer-Encoding that names no coding")]
    Coding,
    #[error("status {0} is not an HTTP status")]
    Status(u16),
}

/// A `Content-Length` value: digits only, as hyper reads it.
pub(super) fn content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Parses the answer head at the start of `buf` to a request (`head_request`: a HEAD
/// one). A whole one is written for the client into `out`: its status line, its
/// fields but those of the version's connection, then `x-rampart-variant: variant`,
/// and `Connection: close` when `close` (or when its end is the connection's).
fn parse_answer(
    buf: &[u8],
    head_request: bool,
    variant: &str,
    close: bool,
    out: &mut Vec<u8>,
) -> Result<ParsedAnswer, BadAnswer> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_ANSWER_FIELDS];
    let mut resp = httparse::Response::new(&mut fields);
    let len = match resp.parse(buf)? {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial if buf.len() > MAX_ANSWER_HEAD => {
            return Err(BadAnswer::TooLarge);
        }
        httparse::Status::Partial => return Ok(ParsedAnswer::Partial),
    };
    let Some(status) = final_status(&resp)? else {
        return Ok(ParsedAnswer::Informational(len));
    };
    let Framed {
        framing,
        keep_alive,
        length,
        chunked,
    } = framed(&resp, status, head_request)?;
    // The fields the version's `Connection` names are its connection's too (rare:
    // looked for only when it names more than `close` or `keep-alive`).
    let names_fields = resp.headers.iter().any(|f| {
        f.name.eq_ignore_ascii_case("connection")
            && f.value.split(|b| *b == b',').any(|t| {
                let t = t.trim_ascii();
                !t.is_empty()
                    && !t.eq_ignore_ascii_case(b"close")
                    && !t.eq_ignore_ascii_case(b"keep-alive")
            })
    });
    let listed = |name: &str| {
        names_fields
            && resp.headers.iter().any(|f| {
                f.name.eq_ignore_ascii_case("connection")
                    && f.value
                        .split(|b| *b == b',')
                        .any(|t| t.trim_ascii().eq_ignore_ascii_case(name.as_bytes()))
            })
    };
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa3(status).as_slice());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut wrote_length = false;
    for field in resp.headers.iter() {
        let name = field.name;
        let is_length = name.eq_ignore_ascii_case("content-length");
        let hop = name.eq_ignore_ascii_case("connection")
            || name.eq_ignore_ascii_case("keep-alive")
            || name.eq_ignore_ascii_case("proxy-connection")
            // A body with a transfer coding carries its own end: a length beside it
            // is wrong (RFC 9112 6.3); a 204 has none (RFC 9110 8.6).
            || ((chunked.is_some() || status == 204) && is_length)
            // The proxy's own field replaces a version's.
            || name.eq_ignore_ascii_case(VARIANT_HEADER)
            // The client reads the body by its framing, whatever `Connection` says.
            || (listed(name) && !is_length && !name.eq_ignore_ascii_case("transfer-encoding"));
        // A length goes once, as the value read: a list of equal values, or the
        // field repeated, is not passed on as it came (RFC 9110 8.6).
        if hop || (is_length && wrote_length) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        if is_length {
            wrote_length = true;
            push_decimal(out, length.unwrap_or(0));
        } else {
            out.extend_from_slice(field.value);
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(VARIANT_HEADER.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(variant.as_bytes());
    out.extend_from_slice(b"\r\n");
    // As hyper's server does: an answer without a `Date` gets the proxy's (RFC 9110
    // 6.6.1).
    if !resp
        .headers
        .iter()
        .any(|f| f.name.eq_ignore_ascii_case("date"))
    {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(&http_date());
        out.extend_from_slice(b"\r\n");
    }
    let close = close || framing == Framing::Close;
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    Ok(ParsedAnswer::Answer(Answer {
        len,
        status,
        framing,
        keep_alive,
        close,
    }))
}

/// How a version's answer is framed, as its head says.
struct Framed {
    framing: Framing,
    /// Whether the version keeps the connection open after it.
    keep_alive: bool,
    /// Its `Content-Length`, read once (a list of equal values is one value).
    length: Option<u64>,
    /// Whether it has a `Transfer-Encoding`, and whether its last coding is chunked.
    chunked: Option<bool>,
}

/// A parsed answer head's status: `None` for an informational answer (1xx but 101),
/// which the client of a request without `Expect` is not sent.
fn final_status(resp: &httparse::Response<'_, '_>) -> Result<Option<u16>, BadAnswer> {
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        return Err(BadAnswer::Switched);
    }
    if status < 100 {
        return Err(BadAnswer::Status(status));
    }
    Ok((status >= 200).then_some(status))
}

/// Reads how the answer head `resp` (of `status`, to a HEAD request when
/// `head_request`) frames its body.
fn framed(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    head_request: bool,
) -> Result<Framed, BadAnswer> {
    let mut keep_alive = resp.version == Some(1);
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for field in resp.headers.iter() {
        let name = field.name;
        if name.eq_ignore_ascii_case("connection") {
            keep_alive &= !has_token(field.value, b"close");
        } else if name.eq_ignore_ascii_case("content-length") {
            // Digits only; a list of equal values is one value (RFC 9110 8.6).
            for value in field.value.split(|b| *b == b',') {
                let n = content_length(value.trim_ascii()).ok_or(BadAnswer::Length)?;
                if length.is_some_and(|l| l != n) {
                    return Err(BadAnswer::Length);
                }
                length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding says how the body ends (RFC 9112 6.3); empty list
            // elements are no codings (RFC 9110 5.6.1), and a field of none at all
            // says nothing a client would read alike: refused.
            let last = field
                .value
                .rsplit(|b| *b == b',')
                .map(<[u8]>::trim_ascii)
                .find(|t| !t.is_empty())
                .ok_or(BadAnswer::Coding)?;
            chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
    }
    let framing = if head_request || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::Close,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::Close,
        }
    };
    if framing == Framing::Close {
        keep_alive = false;
    }
    Ok(Framed {
        framing,
        keep_alive,
        length,
        chunked,
    })
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A status code's three digits.
fn itoa3(status: u16) -> [u8; 3] {
    let s = status.min(999);
    [
        b'0' + (s / 100) as u8,
        b'0' + (s / 10 % 10) as u8,
        b'0' + (s % 10) as u8,
    ]
}

/// rampart's own short answer, as hyper's path writes it (`plain`): to a `HEAD`
/// (`head_request`), its head alone, as hyper's server sends it.
fn write_plain(
    out: &mut Vec<u8>,
    status: &str,
    text: &str,
    variant: Option<&str>,
    close: bool,
    head_request: bool,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_bytes());
    out.extend_from_slice(b"\r\ncontent-length: ");
    out.extend_from_slice(text.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if let Some(variant) = variant {
        out.extend_from_slice(VARIANT_HEADER.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(variant.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&http_date());
    out.extend_from_slice(b"\r\n");
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request {
        out.extend_from_slice(text.as_bytes());
    }
}

// === impl Chunks ===

/// Where a chunked body is, to find its end without changing a byte of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunks {
    /// In a chunk's size line: the size so far, and whether a digit was seen.
    Size(u64, bool),
    /// In the white space after a chunk's size: only more of it, the extensions'
    /// `;` or the line's end may follow (RFC 9112 7.1.1, as hyper reads it).
    SizeSpace(u64),
    /// In a chunk's extensions, after its size.
    Extension(u64),
    /// After the size line's CR.
    SizeLf(u64),
    /// In a chunk's data: how many bytes are left.
    Data(u64),
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// In a trailer line's name (`true`: some of it came), or at the start of the
    /// empty line that ends the trailer section (`false`).
    TrailerName(bool),
    /// In a trailer line's value, after its name's `:`.
    TrailerValue,
    /// After a trailer line's CR (`true`: the empty line that ends the body).
    TrailerLf(bool),
    Done,
}

/// A chunked body that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("malformed chunked body")]
struct BadChunks;

impl Chunks {
    fn new() -> Chunks {
        Chunks::Size(0, false)
    }

    /// Moves over `bytes`; how many belong to the body (all of them, or up to its end).
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, BadChunks> {
        let mut at = 0;
        while at < bytes.len() && *self != Chunks::Done {
            if let Chunks::Data(left) = *self {
                let take = left.min((bytes.len() - at) as u64);
                at += take as usize;
                *self = if take == left {
                    Chunks::DataCr
                } else {
                    Chunks::Data(left - take)
                };
                continue;
            }
            let b = bytes[at];
            at += 1;
            *self = match (*self, b) {
                (Chunks::Size(n, _), _) if b.is_ascii_hexdigit() => {
                    let digit = u64::from((b as char).to_digit(16).unwrap_or(0) as u8);
                    let n = n
                        .checked_mul(16)
                        .and_then(|n| n.checked_add(digit))
                        .ok_or(BadChunks)?;
                    Chunks::Size(n, true)
                }
                (Chunks::Size(n, true) | Chunks::SizeSpace(n), b' ' | b'\t') => {
                    Chunks::SizeSpace(n)
                }
                (Chunks::Size(n, true) | Chunks::SizeSpace(n), b';') => Chunks::Extension(n),
                (Chunks::Size(n, true) | Chunks::SizeSpace(n) | Chunks::Extension(n), b'\r') => {
                    Chunks::SizeLf(n)
                }
                (Chunks::Extension(_), b'\n') => return Err(BadChunks),
                (Chunks::Extension(n), _) => Chunks::Extension(n),
                (Chunks::SizeLf(0), b'\n') => Chunks::TrailerName(false),
                (Chunks::SizeLf(n), b'\n') => Chunks::Data(n),
                (Chunks::DataCr, b'\r') => Chunks::DataLf,
                (Chunks::DataLf, b'\n') => Chunks::Size(0, false),
                // A trailer is a field line (RFC 9112 7.1.2): a name of token
                // characters, `:`, a value; anything else is refused, as hyper
                // refuses it (a line that is not a field could be read as the start
                // of another answer).
                (Chunks::TrailerName(false), b'\r') => Chunks::TrailerLf(true),
                (Chunks::TrailerName(_), _) if super::is_tchar(b) => Chunks::TrailerName(true),
                (Chunks::TrailerName(true), b':') => Chunks::TrailerValue,
                (Chunks::TrailerValue, b'\r') => Chunks::TrailerLf(false),
                (Chunks::TrailerValue, _) if b != b'\n' => Chunks::TrailerValue,
                (Chunks::TrailerLf(true), b'\n') => Chunks::Done,
                (Chunks::TrailerLf(false), b'\n') => Chunks::TrailerName(false),
                _ => return Err(BadChunks),
            };
        }
        Ok(at)
    }

    fn done(&self) -> bool {
        *self == Chunks::Done
    }
}

// === impl Proxy (the lean path) ===

/// How waiting for a request head ended.
enum Wait {
    Head(Head),
    /// The connection goes to hyper's path; the head's first byte came at this instant
    /// (or the connection opened then, for its first head).
    Hyper(Instant),
    /// The client left.
    Gone,
    /// The connection timed out, or the server stops: closed as hyper's path closes
    /// it (a TLS one with `close_notify`).
    Expired,
}

/// How forwarding one request ended.
enum Done {
    /// The connection takes its next request.
    Next,
    /// The connection is closed (the answer said so, or it broke).
    Close,
}

/// What one client connection holds while it is busy; freed while it is parked.
#[derive(Default)]
struct Buffers {
    /// Bytes read from the client and not used yet.
    read: Vec<u8>,
    /// A head on its way out.
    out: Vec<u8>,
    /// Bytes read from the version.
    answer: Vec<u8>,
    /// The request head last sent, kept for the answer head after the next one: the
    /// two heads swap buffers instead of one growing from nothing on every request.
    spare: Vec<u8>,
}

impl Buffers {
    fn park(&mut self) {
        debug_assert!(self.read.is_empty());
        *self = Buffers::default();
    }
}

impl Proxy {
    /// Serves HTTP/1.1 on one plain client connection: the lean path while its requests
    /// allow it, hyper's path from the first one that does not (see the module's doc).
    pub(super) async fn serve_lean<I>(
        self,
        mut io: I,
        reads: Arc<std::sync::atomic::AtomicU64>,
        conn: ClientConn,
        mut closed: watch::Receiver<bool>,
        open: Arc<OpenConnection>,
        opened: Instant,
    ) where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut bufs = Buffers::default();
        let mut first = true;
        let mut since = opened;
        loop {
            let head = match self
                .next_head(&mut io, &mut bufs, first, since, &mut closed)
                .await
            {
                Wait::Head(head) => head,
                Wait::Hyper(started) => {
                    let unread = std::mem::take(&mut bufs.read);
                    drop(bufs);
                    Box::pin(self.serve_http1(io, reads, conn, closed, open, started, &unread))
                        .await;
                    return;
                }
                Wait::Gone => return,
                Wait::Expired => {
                    let _ = tokio::time::timeout(super::CLOSE_PATIENCE, io.shutdown()).await;
                    return;
                }
            };
            first = false;
            match self
                .forward_lean(&mut io, &mut bufs, head, conn, &closed)
                .await
            {
                Done::Next => {}
                Done::Close => {
                    // Bounded: a client that reads nothing cannot hold a TLS close.
                    let _ = tokio::time::timeout(super::CLOSE_PATIENCE, io.shutdown()).await;
                    return;
                }
            }
            since = Instant::now();
        }
    }

    /// Waits for the next request head on the connection, under its deadlines.
    async fn next_head<I>(
        &self,
        io: &mut I,
        bufs: &mut Buffers,
        first: bool,
        since: Instant,
        closed: &mut watch::Receiver<bool>,
    ) -> Wait
    where
        I: AsyncRead + Unpin,
    {
        let limits = self.inner.limits;
        let max_head = self.inner.max_head();
        let max_body = limits.max_body_bytes.unwrap_or(u64::MAX);
        // The head's deadline once its first byte came (the connection's opening for
        // its first head); until then, the idle deadline, and parking before it.
        let mut started = first.then_some(since);
        let idle_until = since + limits.idle_timeout;
        let park_at = since + super::park::park_after(limits.idle_timeout);
        // A stop that came during the last answer: a request already read is not
        // served (hyper's graceful shutdown reads none). A connection's first request
        // is: its client connected before the stop, as hyper's path serves it.
        let mut stopping = *closed.borrow();
        if stopping && !first {
            return Wait::Expired;
        }
        // How much of the buffer is known to hold no head's end.
        let mut scanned: usize = 0;
        loop {
            if !bufs.read.is_empty() {
                let fresh = &bufs.read[scanned.saturating_sub(3)..];
                let parsed = if scanned == 0 || may_end_head(fresh) {
                    parse_head(&bufs.read)
                } else {
                    Parsed::Partial
                };
                match parsed {
                    // A body must have come whole with its head: one still on its
                    // way streams through hyper's path, which sends the head at
                    // once (a version may answer it before the body's end).
                    Parsed::Head(head)
                        if head.len <= max_head
                            && bufs.read.len() >= head.len + head.body
                            && u64::try_from(head.body).unwrap_or(u64::MAX) <= max_body =>
                    {
                        return Wait::Head(head);
                    }
                    Parsed::Head(_) | Parsed::Hyper => {
                        return Wait::Hyper(started.unwrap_or(since));
                    }
                    // As hyper gives up on a head: at the limit, not past it.
                    Parsed::Partial if bufs.read.len() >= max_head => {
                        return Wait::Hyper(started.unwrap_or(since));
                    }
                    Parsed::Partial => {}
                }
                scanned = bufs.read.len();
                started.get_or_insert_with(Instant::now);
            }
            let parked = bufs.read.capacity() == 0 && started.is_none() && !first;
            let deadline = match started {
                Some(at) => at + limits.header_timeout,
                None if parked => idle_until,
                None => park_at.min(idle_until),
            };
            let read = async {
                if parked {
                    // Parked: the wait holds one byte of room, not a buffer.
                    let mut byte = [0u8; 1];
                    let n = io.read(&mut byte).await?;
                    bufs.read.extend_from_slice(&byte[..n]);
                    Ok::<usize, std::io::Error>(n)
                } else {
                    room(&mut bufs.read, false);
                    io.read_buf(&mut bufs.read).await
                }
            };
            tokio::select! {
                biased;
                n = read => match n {
                    Ok(0) | Err(_) => return Wait::Gone,
                    Ok(_) => {}
                },
                () = tokio::time::sleep_until(deadline) => {
                    if started.is_some() || Instant::now() >= idle_until {
                        return Wait::Expired;
                    }
                    bufs.park();
                    self.inner.parked.fetch_add(1, Ordering::Relaxed);
                }
                // A stop while a head arrives (or before a connection's first) lets
                // it come, within the header timeout, to be answered; an idle
                // kept-alive connection closes at once.
                _ = closed.changed(), if !stopping => {
                    if started.is_none() && !first {
                        return Wait::Expired;
                    }
                    stopping = true;
                }
            }
        }
    }

    /// Forwards one request whose head is at the start of `bufs.read`, and passes its
    /// answer on. The connection closes after it when the client asked, or when the
    /// server stops or retires before the answer's head is written (`closed`,
    /// `retiring`), as on hyper's path.
    async fn forward_lean<I>(
        &self,
        io: &mut I,
        bufs: &mut Buffers,
        head: Head,
        conn: ClientConn,
        closed: &watch::Receiver<bool>,
    ) -> Done
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let Head {
            len,
            body,
            method,
            target,
            mut headers,
            close,
        } = head;
        let close = || close || *closed.borrow() || *self.inner.retiring.borrow();
        // A client that leaves while its request waits for a backend (the hold) is
        // not waited for: nothing is sent, and nothing counted, as on hyper's path.
        let (routes, variant) = tokio::select! {
            biased;
            routed = self.route(conn.peer, &headers) => routed,
            () = client_gone(io, &mut bufs.read, len + body, self.inner.max_head()) => return Done::Close,
        };
        let backends = routes.of(variant);
        if backends.is_empty() {
            bufs.read.drain(..len + body);
            write_plain(
                &mut bufs.out,
                "503 Service Unavailable",
                "rampart: no backend is ready\n",
                None,
                close(),
                method == Method::HEAD,
            );
            return after_own_answer(write_flushed(io, &bufs.out).await, close());
        }
        let n = self.inner.sequence.fetch_add(1, Ordering::Relaxed);
        let picked = &backends[usize::try_from(n).unwrap_or(0) % backends.len()];
        let backend = picked.addr;
        super::strip_hop_by_hop(&mut headers);
        // The body's length goes with it whatever `Connection` named: a client's
        // `Connection: content-length` would otherwise send its body to the version
        // as the start of a request the proxy never read (hyper's client frames a
        // body by its size the same way).
        if body > 0 && !headers.contains_key(header::CONTENT_LENGTH) {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(body));
        }
        let uncounted = self.forwarding(&mut headers, &routes, conn);
        write_request(&mut bufs.out, &method, &bufs.read[target], &headers);
        // The body goes in the same write as its head.
        bufs.out.extend_from_slice(&bufs.read[len..len + body]);
        bufs.read.drain(..len + body);
        drop(headers);

        let counters = self.inner.counters(variant);
        let flight = Flight::enter(&self.inner, variant, picked.in_flight.clone());
        let started = Instant::now();
        let waiting = Waiting::new(
            (!uncounted).then(|| Clock::new(Arc::clone(&self.inner), variant, started, None)),
        );
        let exchanged = self
            .exchange(io, bufs, backend, &method, variant.as_str(), &close)
            .await;
        let (mut up, answer) = match exchanged {
            Exchange::Answered(up, answer) => (up, answer),
            // Dropping `waiting` counts the request as abandoned.
            Exchange::Abandoned => return Done::Close,
            Exchange::Failed(e) => {
                // Answered, by the proxy: not abandoned.
                let _ = waiting.answered();
                tracing::debug!(error = %e, variant = variant.as_str(), %backend, "upstream failed");
                if !uncounted {
                    counters.record_logged(true, None, None);
                }
                write_plain(
                    &mut bufs.out,
                    "502 Bad Gateway",
                    "rampart: upstream unavailable\n",
                    Some(variant.as_str()),
                    close(),
                    method == Method::HEAD,
                );
                drop(flight);
                return after_own_answer(write_flushed(io, &bufs.out).await, close());
            }
        };
        let mut clock = waiting.answered();
        if clock.is_some() {
            counters.record((500..600).contains(&answer.status), started.elapsed());
        }
        let max_pipelined = self.inner.max_head();
        let relayed = relay(io, &mut up, bufs, &answer, max_pipelined, &mut clock).await;
        if let Some(clock) = clock {
            clock.finish();
        }
        drop(flight);
        match relayed {
            Relayed::Whole { clean } => {
                if clean
                    && answer.keep_alive
                    && let Some(pool) = &self.inner.lean
                {
                    pool.idle.shelve(up);
                }
                // Closed as its head said (the client asked, the server stops, or
                // the body's end was the version's close).
                if answer.close {
                    Done::Close
                } else {
                    Done::Next
                }
            }
            Relayed::UpstreamBroke | Relayed::ClientGone => Done::Close,
        }
    }

    /// Sends the request head in `bufs.out` to `backend` (on a pooled connection, or a
    /// new one) and reads its answer's head into `bufs.answer`, writing the client's
    /// into `bufs.out`; watches the client meanwhile, keeping up to `max_header_bytes`
    /// bytes it sends on.
    async fn exchange<I>(
        &self,
        io: &mut I,
        bufs: &mut Buffers,
        backend: SocketAddr,
        method: &Method,
        variant: &str,
        close: &(dyn Fn() -> bool + Sync),
    ) -> Exchange
    where
        I: AsyncRead + Unpin,
    {
        let Some(pool) = &self.inner.lean else {
            return Exchange::Failed("no HTTP/1.1 pool".into());
        };
        let head_request = *method == Method::HEAD;
        let max_pipelined = self.inner.max_head();
        let mut retried = false;
        loop {
            let pooled = if retried {
                None
            } else {
                pool.idle.take(backend).await
            };
            let reused = pooled.is_some();
            let mut up = match pooled {
                Some(up) => up,
                None => match pool.connect(backend).await {
                    Ok(up) => up,
                    Err(e) => return Exchange::Failed(e.into()),
                },
            };
            let Buffers {
                read,
                out,
                answer,
                spare,
            } = &mut *bufs;
            let request = std::mem::replace(out, std::mem::take(spare));
            let mut written = false;
            let result = {
                let exchange = async {
                    write_all_told(&mut up.stream, &request, &mut written)
                        .await
                        .map_err(AnswerError::Reset)?;
                    read_answer(&mut up.stream, answer, head_request, variant, close, out).await
                };
                tokio::select! {
                    biased;
                    result = exchange => result,
                    () = client_gone(io, read, 0, max_pipelined) => return Exchange::Abandoned,
                }
            };
            match result {
                Ok(parsed) => {
                    keep_spare(spare, request);
                    return Exchange::Answered(up, parsed);
                }
                // The pooled connection had closed under the request, which got no byte
                // of an answer: sent once more, on a new connection, when that is safe.
                Err(e @ (AnswerError::Closed | AnswerError::Reset(_)))
                    if reused && (!written || method.is_idempotent()) =>
                {
                    tracing::debug!(error = %e, %backend, "pooled connection closed under a request; sending it again");
                    retried = true;
                    keep_spare(spare, std::mem::replace(out, request));
                }
                Err(e) => return Exchange::Failed(e.into()),
            }
        }
    }
}

/// The largest buffer kept as [`Buffers::spare`]: a head's. One grown by a body
/// (answers and uploads pass through `out`) is let go, as before there was a spare,
/// so that a busy connection holds one large buffer at most.
const SPARE_MAX: usize = 4096;

/// Keeps `buf` as the next answer head's buffer, unless a body grew it.
fn keep_spare(spare: &mut Vec<u8>, buf: Vec<u8>) {
    if buf.capacity() <= SPARE_MAX {
        *spare = buf;
    }
}

/// How sending a request to a version ended.
enum Exchange {
    Answered(Box<Upstream>, Answer),
    /// The client closed its connection before the answer's head.
    Abandoned,
    Failed(super::upstream::UpstreamError),
}

/// Why no answer head came.
#[derive(Debug, thiserror::Error)]
enum AnswerError {
    #[error("the version closed the connection before answering")]
    Closed,
    #[error("the connection failed before any byte of an answer: {0}")]
    Reset(std::io::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Bad(#[from] BadAnswer),
}

/// Reads an answer head into `buf` (which it clears first), skipping informational
/// answers, and writes the client's head into `out` (see [`parse_answer`]).
async fn read_answer(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
    variant: &str,
    close: &(dyn Fn() -> bool + Sync),
    out: &mut Vec<u8>,
) -> Result<Answer, AnswerError> {
    buf.clear();
    // Whether the version sent any byte (an informational answer counts): then a
    // failure is not a closed pooled connection's, and not sent again.
    let mut heard = false;
    loop {
        if !buf.is_empty() {
            heard = true;
            match parse_answer(buf, head_request, variant, close(), out)? {
                ParsedAnswer::Answer(answer) => return Ok(answer),
                ParsedAnswer::Informational(len) => {
                    buf.drain(..len);
                    continue;
                }
                ParsedAnswer::Partial => {}
            }
        }
        room(buf, false);
        head_read(stream.read_buf(buf).await, heard)?;
    }
}

/// What a read while waiting for an answer head says: nothing (more bytes came), or
/// why no head will come. Before any byte of an answer (`heard` false), a close or a
/// failure is the connection's ([`AnswerError::Closed`], [`AnswerError::Reset`]),
/// which a request may be sent again after.
fn head_read(read: std::io::Result<usize>, heard: bool) -> Result<(), AnswerError> {
    match read {
        Ok(0) if !heard => Err(AnswerError::Closed),
        Ok(0) => Err(AnswerError::Io(std::io::ErrorKind::UnexpectedEof.into())),
        Ok(_) => Ok(()),
        Err(e) if !heard => Err(AnswerError::Reset(e)),
        Err(e) => Err(e.into()),
    }
}

/// Writes `bytes` whole. `written` turns true at the first byte taken: a request that
/// fails part way may have been read by the version, and is not sent again unless
/// it is idempotent.
async fn write_all_told<W: AsyncWrite + Unpin>(
    w: &mut W,
    mut bytes: &[u8],
    written: &mut bool,
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        match w.write(bytes).await? {
            0 => return Err(std::io::ErrorKind::WriteZero.into()),
            n => {
                *written = true;
                bytes = &bytes[n..];
            }
        }
    }
    Ok(())
}

/// Returns once the client closed its side or failed, reading what it sends meanwhile
/// (a next request, pipelined) into `read` after its first `start` bytes (the request
/// in progress, when its head is still there), up to `max` bytes: past them, it waits
/// without reading.
async fn client_gone<I: AsyncRead + Unpin>(
    io: &mut I,
    read: &mut Vec<u8>,
    start: usize,
    max: usize,
) {
    loop {
        if read.len() >= start + max {
            std::future::pending::<()>().await;
        }
        match io.read_buf(read).await {
            // A half-close after a next request ends that request, not the client's
            // wait (hyper answers what it read): its end is seen again when the next
            // head is waited for.
            // (A TLS client's cut without `close_notify` is an error, a reset too.)
            Ok(0) | Err(_) if read.len() > start => std::future::pending::<()>().await,
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// How passing an answer on ended.
enum Relayed {
    /// Whole; `clean`: the version sent nothing after it.
    Whole { clean: bool },
    /// The version broke off, or sent more than its answer.
    UpstreamBroke,
    /// The client went away.
    ClientGone,
}

/// Passes `answer` on to the client: its head (in `bufs.out`), then its body as it
/// comes, framed as the version framed it.
async fn relay<I>(
    io: &mut I,
    up: &mut Upstream,
    bufs: &mut Buffers,
    answer: &Answer,
    max_pipelined: usize,
    clock: &mut Option<Clock>,
) -> Relayed
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    let Buffers {
        out,
        answer: buf,
        read,
        ..
    } = bufs;
    let mut body = &buf[answer.len..];
    let mut chunks = Chunks::new();
    // How much of the body is still to come (`None`: up to the connection's end).
    let mut left: Option<u64> = match answer.framing {
        Framing::Empty => Some(0),
        Framing::Length(n) => Some(n),
        Framing::Chunked | Framing::Close => None,
    };
    let mut extra = false;
    let mut ended = false;
    // Whether the last read filled the buffer: a long body's reads grow with it.
    let mut filled = false;
    loop {
        let take = match answer.framing {
            Framing::Empty | Framing::Length(_) => {
                let l = left.unwrap_or(0);
                let take = l.min(body.len() as u64) as usize;
                left = Some(l - take as u64);
                ended = left == Some(0);
                take
            }
            Framing::Chunked => match chunks.feed(body) {
                Ok(n) => {
                    ended = chunks.done();
                    n
                }
                Err(_) => {
                    // The answer's head (if still held) goes first, as hyper's path
                    // sends it: the client sees the answer it was counted by, cut
                    // short, rather than a connection closed with nothing.
                    let _ = write_flushed(io, out).await;
                    return Relayed::UpstreamBroke;
                }
            },
            Framing::Close => body.len(),
        };
        extra |= take < body.len();
        // Timed at the answer's last byte from the version, before it is written (as
        // hyper's path at its body's last frame): a client that read the answer finds
        // it counted.
        if ended && let Some(clock) = clock.take() {
            clock.finish();
        }
        out.extend_from_slice(&body[..take]);
        if !out.is_empty() && write_flushed(io, out).await.is_err() {
            return Relayed::ClientGone;
        }
        out.clear();
        if ended {
            return Relayed::Whole { clean: !extra };
        }
        buf.clear();
        room(buf, filled);
        let spare = buf.capacity();
        // A client that leaves while the version is slow to send is seen leaving.
        let more = tokio::select! {
            biased;
            more = up.stream.read_buf(buf) => more,
            () = client_gone(io, read, 0, max_pipelined) => return Relayed::ClientGone,
        };
        match more {
            Ok(0) if answer.framing == Framing::Close => return Relayed::Whole { clean: false },
            Ok(0) | Err(_) => return Relayed::UpstreamBroke,
            Ok(n) => filled = n == spare,
        }
        body = &buf[..];
    }
}

// === requests from hyper's path ===

/// Why a request from hyper's path got no answer on the lean path's connections.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error(transparent)]
    Answer(#[from] AnswerError),
    #[error("malformed answer field")]
    Field,
    #[error("malformed trailer section")]
    Trailers,
    #[error("chunk framing (extensions, trailers) over {MAX_CHUNK_FRAMING} bytes")]
    Framing,
    #[error(transparent)]
    Chunks(#[from] BadChunks),
    #[error("the version closed the connection mid-answer")]
    Cut,
}

impl From<BadAnswer> for FetchError {
    fn from(e: BadAnswer) -> Self {
        FetchError::Answer(AnswerError::Bad(e))
    }
}

impl Pool {
    /// Sends a request that hyper's path read (an HTTP/2 client's stream, or an
    /// HTTP/1.1 request hyper serves), without a body or with a small one of a
    /// declared length (see [`buffers`]), to `addr` on this pool's connections, and
    /// returns its answer's head, with a body that reads the rest off the connection
    /// and gives the connection back at its end.
    ///
    /// The request goes as hyper's client would send it: in origin form, with `Host`
    /// from its URI's authority when it has none, without `Transfer-Encoding`. A body
    /// is read whole first (its failure is the client's: past `max_body_bytes`,
    /// stalled, cut short) and goes in the same write as the head, with its length as
    /// `Content-Length`. It is
    /// sent once more, on a new connection, on the lean path's
    /// terms: the pooled connection closed before any byte of an answer, and the
    /// request is idempotent or no byte of it was written. The answer comes with its
    /// fields as the version sent them (the proxy strips the hop-by-hop ones), but
    /// its length is given once, as read, and none beside a transfer coding; a
    /// chunked body comes decoded, with its trailers.
    pub(super) async fn fetch<B>(
        &self,
        addr: SocketAddr,
        req: hyper::Request<B>,
    ) -> Result<hyper::Response<Fetched>, super::upstream::UpstreamError>
    where
        B: Body<Data = Bytes> + Unpin,
        B::Error: Into<super::upstream::UpstreamError>,
    {
        let (mut parts, body) = req.into_parts();
        // A body (see `buffers`) is read whole first; its failure is the client's
        // (`client_fault` reads it in the error).
        let body = if body.is_end_stream() {
            Bytes::new()
        } else {
            let body = body
                .collect()
                .await
                .map_err(|e| ClientBody(e.into()))?
                .to_bytes();
            parts
                .headers
                .insert(header::CONTENT_LENGTH, body.len().into());
            body
        };
        if !parts.headers.contains_key(header::HOST)
            && let Some(authority) = parts.uri.authority()
            && let Ok(host) = HeaderValue::from_str(authority.as_str())
        {
            parts.headers.insert(header::HOST, host);
        }
        parts.headers.remove(header::TRANSFER_ENCODING);
        let mut out = Vec::with_capacity(512 + body.len());
        write_request(
            &mut out,
            &parts.method,
            target(&parts.uri).as_bytes(),
            &parts.headers,
        );
        out.extend_from_slice(&body);
        let head_request = parts.method == Method::HEAD;
        let mut pooled = self.idle.take(addr).await;
        loop {
            let reused = pooled.is_some();
            let mut up = match pooled.take() {
                Some(up) => up,
                None => Box::pin(self.connect(addr)).await?,
            };
            let mut written = false;
            let mut buf = BytesMut::with_capacity(FETCH_READ);
            // A write that fails is the connection's failure before any byte of an
            // answer: sent again, or not, by what was written (below).
            let answer = match write_all_told(&mut up.stream, &out, &mut written).await {
                Ok(()) => read_fetched(&mut up.stream, &mut buf, head_request).await,
                Err(e) => Err(AnswerError::Reset(e).into()),
            };
            match answer {
                Ok((resp, framing, keep_alive)) => {
                    let body = Fetched::new(
                        Some(up),
                        Arc::downgrade(&self.idle),
                        buf,
                        framing,
                        keep_alive,
                    );
                    return Ok(resp.map(|()| body));
                }
                Err(FetchError::Answer(AnswerError::Closed | AnswerError::Reset(_)))
                    if reused && (!written || parts.method.is_idempotent()) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A request body that failed as [`Pool::fetch`] read it: the client's fault, whatever
/// the cause (cut short, malformed, reset), never the version's.
#[derive(Debug, thiserror::Error)]
#[error("the request body failed: {0}")]
pub(super) struct ClientBody(#[source] pub(super) super::upstream::UpstreamError);

/// Whether an HTTP/2 client's request, whose body is not known to be empty, is
/// forwarded by [`Pool::fetch`], its body read whole first: a body of a declared
/// length (`Content-Length`, as hyper read it) of at most [`MAX_BODY`], as a browser's
/// or an API client's JSON call declares it and sends it with its head. The version
/// then gets head and body in one write, as from the lean path. A larger or
/// undeclared body streams through hyper's client, which sends the head at once (a
/// version may answer an upload at its head), as does a request with `Expect` (its
/// client waits for the version's word before it sends the body). An HTTP/1.1
/// upload on hyper's path keeps hyper's client too: its head goes at once.
pub(super) fn buffers<B: Body>(headers: &HeaderMap, body: &B) -> bool {
    headers.contains_key(header::CONTENT_LENGTH)
        && !headers.contains_key(header::EXPECT)
        && body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_BODY as u64)
}

/// `uri`'s request target in origin form, as hyper's client writes it: its path (`/`
/// when it has none, as for a target that is a query alone) and its query.
fn target(uri: &hyper::Uri) -> std::borrow::Cow<'_, str> {
    match uri.path_and_query() {
        Some(pq) if pq.as_str().starts_with('/') => pq.as_str().into(),
        Some(pq) => match pq.query() {
            Some(query) => format!("{}?{query}", pq.path()).into(),
            None => pq.path().into(),
        },
        None => "/".into(),
    }
}

/// The room a fetched answer is first read into.
const FETCH_READ: usize = 4096;

/// The most bytes of a chunked body's framing taken in a row from a version, between
/// chunks' data (a size line and its extensions) or after the last chunk (the trailer
/// section); and the most bytes of chunk extensions in the whole body (hyper's client
/// allows as many).
const MAX_CHUNK_FRAMING: usize = 16 * 1024;

/// Reads an answer head off `stream` into `buf`, skipping informational answers; the
/// head is taken out of `buf`, which keeps the bytes after it.
async fn read_fetched(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    head_request: bool,
) -> Result<(hyper::Response<()>, Framing, bool), FetchError> {
    let mut heard = false;
    loop {
        if !buf.is_empty() {
            heard = true;
            let mut fields = [httparse::EMPTY_HEADER; MAX_ANSWER_FIELDS];
            let mut resp = httparse::Response::new(&mut fields);
            let len = match resp.parse(buf).map_err(BadAnswer::from)? {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial if buf.len() > MAX_ANSWER_HEAD => {
                    return Err(BadAnswer::TooLarge.into());
                }
                httparse::Status::Partial => 0,
            };
            if len > 0 {
                let Some(status) = final_status(&resp)? else {
                    buf.advance(len);
                    continue;
                };
                let framed = framed(&resp, status, head_request)?;
                let head = answer_head(&resp, status, &framed)?;
                buf.advance(len);
                return Ok((head, framed.framing, framed.keep_alive));
            }
        }
        if buf.capacity() - buf.len() < READ_MIN {
            buf.reserve(buf.capacity().clamp(READ_MIN, READ_MAX));
        }
        head_read(stream.read_buf(buf).await, heard)?;
    }
}

/// The answer head `resp` as hyper's: its fields as the version sent them, but its
/// length once, as read, and none beside a transfer coding or on a 204.
fn answer_head(
    resp: &httparse::Response<'_, '_>,
    status: u16,
    framed: &Framed,
) -> Result<hyper::Response<()>, FetchError> {
    let mut head = hyper::Response::new(());
    *head.status_mut() =
        hyper::StatusCode::from_u16(status).map_err(|_| BadAnswer::Status(status))?;
    // A reason the version gave other than its status's usual one reaches an
    // HTTP/1.1 client served by hyper, as hyper's client kept it.
    if let Some(reason) = resp.reason
        && Some(reason) != head.status().canonical_reason()
        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(reason.as_bytes())
    {
        head.extensions_mut().insert(reason);
    }
    let headers = head.headers_mut();
    headers.reserve(resp.headers.len());
    for field in resp.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).map_err(|_| FetchError::Field)?;
        if name == header::CONTENT_LENGTH {
            if let (None, false, Some(n)) = (framed.chunked, status == 204, framed.length)
                && !headers.contains_key(header::CONTENT_LENGTH)
            {
                headers.insert(name, HeaderValue::from(n));
            }
            continue;
        }
        let value = HeaderValue::from_bytes(field.value).map_err(|_| FetchError::Field)?;
        headers.append(name, value);
    }
    Ok(head)
}

/// A fetched answer's body (see [`Pool::fetch`]): read off its connection as it is
/// polled, decoded from its chunks when chunked; the connection goes back to the pool
/// at the body's end when the version keeps it open and sent nothing after the
/// answer, and is closed otherwise (the body dropped before its end, or broken).
pub(super) struct Fetched {
    up: Option<Box<Upstream>>,
    home: std::sync::Weak<Idle<Upstream>>,
    /// Bytes read and not passed on yet.
    buf: BytesMut,
    framing: Framing,
    /// What is left of a body framed by its length.
    left: u64,
    chunks: Chunks,
    /// A chunked body's trailer section, as it is read.
    trailers: Vec<u8>,
    /// Framing bytes read since the last chunk's data.
    framing_run: usize,
    /// Chunk extension bytes read in the whole body.
    extensions: usize,
    /// The room the next read off the connection is given.
    room: usize,
    keep_alive: bool,
    done: bool,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetched")
            .field("framing", &self.framing)
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Fetched {
    /// The body of an answer framed as `framing`, the bytes after its head in `buf`,
    /// read off `up` (given back to `home` at its end when `keep_alive`). A body with
    /// nothing to read is done at once.
    fn new(
        up: Option<Box<Upstream>>,
        home: std::sync::Weak<Idle<Upstream>>,
        buf: BytesMut,
        framing: Framing,
        keep_alive: bool,
    ) -> Fetched {
        let mut body = Fetched {
            up,
            home,
            buf,
            left: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            framing,
            chunks: Chunks::new(),
            trailers: Vec::new(),
            framing_run: 0,
            extensions: 0,
            room: FETCH_READ,
            keep_alive,
            done: false,
        };
        if framing == Framing::Empty || framing == Framing::Length(0) {
            body.finish();
        }
        body
    }

    /// The body is read to its end: its connection goes back to the pool, or is closed.
    fn finish(&mut self) {
        self.done = true;
        let up = self.up.take();
        if let (Some(up), Some(home), true, true) = (
            up,
            self.home.upgrade(),
            self.keep_alive,
            self.buf.is_empty(),
        ) {
            home.shelve(up);
        }
    }

    /// The next frame out of the bytes read, `None` when more must be read first (or
    /// the body is done).
    fn next_frame(&mut self) -> Result<Option<Frame<Bytes>>, FetchError> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::Empty => {
                self.finish();
                Ok(None)
            }
            Framing::Length(_) => {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                let take = self.left.min(self.buf.len() as u64);
                let data = self
                    .buf
                    .split_to(usize::try_from(take).unwrap_or(0))
                    .freeze();
                self.left -= take;
                if self.left == 0 {
                    self.finish();
                }
                Ok(Some(Frame::data(data)))
            }
            Framing::Close => {
                Ok((!self.buf.is_empty()).then(|| Frame::data(self.buf.split().freeze())))
            }
            Framing::Chunked => self.next_chunk(),
        }
    }

    fn next_chunk(&mut self) -> Result<Option<Frame<Bytes>>, FetchError> {
        loop {
            if self.chunks.done() {
                return self.end_chunks();
            }
            if self.buf.is_empty() {
                return Ok(None);
            }
            if let Chunks::Data(left) = self.chunks {
                self.framing_run = 0;
                let take = usize::try_from(left.min(self.buf.len() as u64)).unwrap_or(0);
                self.chunks.feed(&self.buf[..take])?;
                return Ok(Some(Frame::data(self.buf.split_to(take).freeze())));
            }
            // The framing between chunks, a byte at a time, at most
            // `MAX_CHUNK_FRAMING` of it in a row (a size line's extensions, or the
            // trailer section, which is kept).
            let in_trailers = matches!(
                self.chunks,
                Chunks::TrailerName(_) | Chunks::TrailerValue | Chunks::TrailerLf(_)
            );
            self.chunks.feed(&self.buf[..1])?;
            self.framing_run += 1;
            if matches!(self.chunks, Chunks::Extension(_)) {
                self.extensions += 1;
            }
            if self.framing_run > MAX_CHUNK_FRAMING || self.extensions > MAX_CHUNK_FRAMING {
                return Err(FetchError::Framing);
            }
            if in_trailers {
                self.trailers.push(self.buf[0]);
            }
            self.buf.advance(1);
        }
    }

    /// The chunked body's end: its trailers, if it has any, as a last frame.
    /// The chunked body's end: its trailers, if it has any, as a last frame. Read
    /// before the connection is given back: trailers that do not parse break the body,
    /// and its connection is closed.
    fn end_chunks(&mut self) -> Result<Option<Frame<Bytes>>, FetchError> {
        let section = std::mem::take(&mut self.trailers);
        let trailers = if section.len() <= 2 {
            None
        } else {
            Some(trailer_fields(&section)?)
        };
        self.finish();
        Ok(trailers.map(Frame::trailers))
    }
}

/// A chunked body's trailer section (its field lines and the empty line) as fields.
fn trailer_fields(section: &[u8]) -> Result<HeaderMap, FetchError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_ANSWER_FIELDS];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(section, &mut fields)
    else {
        return Err(FetchError::Trailers);
    };
    let mut trailers = HeaderMap::with_capacity(fields.len());
    for field in fields.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(field.name.as_bytes()),
            HeaderValue::from_bytes(field.value),
        ) else {
            return Err(FetchError::Trailers);
        };
        trailers.append(name, value);
    }
    Ok(trailers)
}

impl hyper::body::Body for Fetched {
    type Data = Bytes;
    type Error = super::upstream::UpstreamError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.next_frame() {
                Ok(Some(frame)) => return Poll::Ready(Some(Ok(frame))),
                Ok(None) if this.done => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Some(Err(this.broken(e)))),
            }
            let Some(up) = &this.up else {
                return Poll::Ready(Some(Err(this.broken(FetchError::Cut))));
            };
            // Each read is given the room the last one had, doubled when it filled
            // it, up to `READ_MAX` (the frames already passed on keep theirs).
            if this.buf.capacity() - this.buf.len() < this.room {
                this.buf.reserve(this.room);
            }
            let spare = this.buf.capacity() - this.buf.len();
            let read = loop {
                if let Err(e) = std::task::ready!(up.stream.poll_read_ready(cx)) {
                    break Err(e);
                }
                match up.stream.try_read_buf(&mut this.buf) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    read => break read,
                }
            };
            match read {
                Ok(0) if this.framing == Framing::Close => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(this.broken(FetchError::Cut)))),
                Ok(n) if n >= spare => this.room = (2 * this.room).min(READ_MAX),
                Ok(_) => {}
                Err(e) => {
                    return Poll::Ready(Some(Err(
                        this.broken(FetchError::Answer(AnswerError::Io(e)))
                    )));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        match self.framing {
            _ if self.done => hyper::body::SizeHint::with_exact(0),
            Framing::Length(_) => hyper::body::SizeHint::with_exact(self.left),
            _ => hyper::body::SizeHint::default(),
        }
    }
}

impl Fetched {
    /// The body broke: its connection is closed, and the failure passed on.
    fn broken(&mut self, e: FetchError) -> super::upstream::UpstreamError {
        self.up = None;
        self.done = true;
        e.into()
    }
}

/// Writes `bytes` whole to the client and flushes them: a TLS stream keeps what the
/// socket did not take until flushed (a plain socket's flush does nothing), and the
/// lean path reads next, which would leave an answer's end unsent.
async fn write_flushed<I: AsyncWrite + Unpin>(io: &mut I, bytes: &[u8]) -> std::io::Result<()> {
    io.write_all(bytes).await?;
    io.flush().await
}

/// What writing rampart's own answer leaves of the connection.
fn after_own_answer(result: std::io::Result<()>, close: bool) -> Done {
    match result {
        Ok(()) if !close => Done::Next,
        Ok(()) | Err(_) => Done::Close,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (review): a buffer a body grew (answers pass through `out`) was kept
    /// as the spare, and a busy connection held two large buffers instead of one.
    #[test]
    fn only_a_heads_buffer_is_kept_as_the_spare() {
        let mut spare = Vec::new();
        keep_spare(&mut spare, Vec::with_capacity(64 * 1024));
        assert_eq!(spare.capacity(), 0);
        keep_spare(&mut spare, Vec::with_capacity(512));
        assert!(spare.capacity() >= 512 && spare.capacity() <= SPARE_MAX);
    }

    fn head(raw: &str) -> Head {
        match parse_head(raw.as_bytes()) {
            Parsed::Head(h) => h,
            Parsed::Partial => panic!("partial: {raw:?}"),
            Parsed::Hyper => panic!("hyper: {raw:?}"),
        }
    }

    fn is_hyper(raw: &str) -> bool {
        matches!(parse_head(raw.as_bytes()), Parsed::Hyper)
    }

    #[test]
    fn a_plain_get_is_lean_and_its_target_and_fields_are_read() {
        let raw = "GET /a?b=1 HTTP/1.1\r\nHost: x\r\nX-One: 1\r\nConnection: keep-alive, Close\r\n\r\nGET";
        let h = head(raw);
        assert_eq!(h.len, raw.len() - 3);
        assert_eq!(&raw[h.target.clone()], "/a?b=1");
        assert_eq!(h.method, Method::GET);
        assert_eq!(
            h.headers.get("x-one").map(|v| v.as_bytes()),
            Some(&b"1"[..])
        );
        assert!(h.close);
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn requests_the_lean_path_does_not_forward_whole_go_to_hyper() {
        let too_long = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        for raw in [
            // Lengths hyper reads as one (or refuses): its to read.
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 03\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\nabc",
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            &too_long,
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            "PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n",
            "GET / HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
            "CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n",
            "POST /s/M HTTP/1.1\r\nHost: x\r\ncontent-type: application/grpc\r\n\r\n",
            "GET / HTTP/1.1\r\nHo st: x\r\n\r\n",
            "GARBAGE\r\n\r\n",
        ] {
            assert!(is_hyper(raw), "{raw:?}");
        }
        let many: String = (0..=MAX_FIELDS).map(|i| format!("x-{i}: v\r\n")).collect();
        assert!(is_hyper(&format!(
            "GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n"
        )));
        // An empty body declared as such stays lean.
        assert!(!is_hyper(
            "DELETE /x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
        ));
    }

    #[test]
    fn a_small_body_of_one_plain_length_is_lean_and_its_length_read() {
        let raw = "POST /calls HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n{\"a\": true}";
        let h = head(raw);
        assert_eq!((h.len, h.body), (raw.len() - 11, 11));
        assert_eq!(head("GET / HTTP/1.1\r\nHost: x\r\n\r\n").body, 0);
        let largest = format!("PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_BODY}\r\n\r\n");
        assert_eq!(head(&largest).body, MAX_BODY);
    }

    fn answer(raw: &str, head_request: bool, close: bool) -> (Answer, String) {
        let mut out = Vec::new();
        match parse_answer(raw.as_bytes(), head_request, "canary", close, &mut out) {
            Ok(ParsedAnswer::Answer(a)) => (a, String::from_utf8(out).unwrap_or_default()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_answers_framing_and_its_connections_fields_are_read_and_left_out() {
        let (a, out) = answer(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-End: 2\r\nDate: then\r\n\r\nhello",
            false,
            false,
        );
        assert_eq!(
            (a.status, a.framing, a.keep_alive),
            (200, Framing::Length(5), false)
        );
        assert_eq!(
            out,
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-End: 2\r\nDate: then\r\nx-rampart-variant: canary\r\n\r\n"
        );
        let (a, out) = answer(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 9\r\n\r\n",
            false,
            true,
        );
        assert_eq!((a.framing, a.keep_alive), (Framing::Chunked, true));
        assert!(!out.contains("Content-Length"), "{out}");
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
        let (a, out) = answer("HTTP/1.1 200 OK\r\n\r\n", false, false);
        assert_eq!((a.framing, a.keep_alive), (Framing::Close, false));
        assert!(out.ends_with("connection: close\r\n\r\n"), "{out}");
        assert_eq!(
            answer("HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true, false)
                .0
                .framing,
            Framing::Empty
        );
        assert_eq!(
            answer("HTTP/1.1 304 Not Modified\r\n\r\n", false, false)
                .0
                .framing,
            Framing::Empty
        );
        assert!(
            !answer("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, false)
                .0
                .keep_alive
        );
        let mut out = Vec::new();
        assert!(matches!(
            parse_answer(
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200",
                false,
                "stable",
                false,
                &mut out
            ),
            Ok(ParsedAnswer::Informational(25))
        ));
        // A version's own variant field is replaced; framing named in `Connection` is
        // kept; a `Date` is added when missing; a list of equal lengths, or the
        // field repeated, is one.
        let (a, head) = answer(
            "HTTP/1.1 200 OK\r\nx-rampart-variant: stable\r\nContent-Length: 2, 2\r\nConnection: content-length\r\n\r\n",
            false,
            false,
        );
        assert_eq!(a.framing, Framing::Length(2));
        assert_eq!(head.matches("x-rampart-variant").count(), 1, "{head}");
        assert!(head.contains("x-rampart-variant: canary"), "{head}");
        // Passed on once, as one value (RFC 9110 8.6: a list is not forwarded as is).
        assert!(head.contains("Content-Length: 2\r\n"), "{head}");
        assert_eq!(head.matches("2, 2").count(), 0, "{head}");
        let (a, head) = answer(
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-a: 1\r\ncontent-length: 2\r\n\r\n",
            false,
            false,
        );
        assert_eq!(a.framing, Framing::Length(2));
        assert_eq!(head.matches("content-length").count(), 1, "{head}");
        // A 204 has no length (RFC 9110 8.6): a version's is left out.
        let (a, head) = answer(
            "HTTP/1.1 204 No Content\r\ncontent-length: 3\r\n\r\n",
            false,
            false,
        );
        assert_eq!(a.framing, Framing::Empty);
        assert_eq!(head.matches("content-length").count(), 0, "{head}");
        // An empty list element is no coding: `chunked,` is chunked.
        let (a, _) = answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked,\r\n\r\n",
            false,
            false,
        );
        assert_eq!(a.framing, Framing::Chunked);
        assert!(
            head.contains("\r\ndate: ") && head.contains(" GMT\r\n"),
            "{head}"
        );
        for bad in [
            "HTTP/1.1 099 Odd\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: ,\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding:\r\n\r\n",
        ] {
            assert!(
                parse_answer(bad.as_bytes(), false, "stable", false, &mut out).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_filled_buffer_doubles_up_to_its_bound_and_a_partial_heads_end_is_seen() {
        let mut b: Vec<u8> = Vec::new();
        room(&mut b, false);
        assert!(b.capacity() >= READ_MIN);
        let mut seen = vec![b.capacity()];
        for _ in 0..10 {
            room(&mut b, true);
            seen.push(b.capacity());
        }
        assert!(seen.windows(2).all(|w| w[1] >= w[0]), "{seen:?}");
        assert!(seen[1] >= 2 * seen[0], "{seen:?}");
        assert!(*seen.last().unwrap_or(&0) >= READ_MAX, "{seen:?}");
        assert!(b.capacity() < 2 * READ_MAX, "bounded: {}", b.capacity());
        for end in [&b"x: y\r\n\r\n"[..], b"\n\r\n", b"a\n\n"] {
            assert!(may_end_head(end), "{end:?}");
        }
        for not_yet in [&b"\r\n\r"[..], b"aaaa\r\nbbbb", b""] {
            assert!(!may_end_head(not_yet), "{not_yet:?}");
        }
    }

    #[test]
    fn a_chunked_body_ends_at_its_last_chunk_and_trailers_whatever_the_pieces() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n";
        for split in 0..=body.len() {
            let mut c = Chunks::new();
            let a = c.feed(&body[..split]).map_err(|_| split);
            assert_eq!(a, Ok(split));
            let mut tail = body[split..].to_vec();
            tail.extend_from_slice(b"HTTP/1.1");
            assert_eq!(c.feed(&tail).map_err(|_| split), Ok(body.len() - split));
            assert!(c.done(), "split at {split}");
        }
        let mut c = Chunks::new();
        assert_eq!(c.feed(b"0\r\n\r\n").ok(), Some(5));
        assert!(c.done());
        // White space after a size, then the extensions or the line's end.
        let mut c = Chunks::new();
        assert_eq!(c.feed(b"0 \t;x=1\r\n\r\n").ok(), Some(11));
        assert!(c.done());
        let mut c = Chunks::new();
        assert_eq!(c.feed(b"0 \r\n\r\n").ok(), Some(6));
        assert!(c.done());
        for bad in [
            &b"x\r\n"[..],
            b"4\r\nWikiXX",
            b"\r\n",
            b"fffffffffffffffff\r\n",
            // Anything else after a size's white space (a fuzzed version's answer
            // passed as a last chunk: the proxy and its client must not disagree on
            // where a body ends).
            b"00 OK\r\n\r\n",
            b"5 5\r\n",
            // Trailers that are not field lines.
            b"0\r\nHTTP/1.1 200 OK\r\n\r\n",
            b"0\r\n: no name\r\n\r\n",
            b"0\r\nx y: 1\r\n\r\n",
        ] {
            assert!(Chunks::new().feed(bad).is_err(), "{bad:?}");
        }
        let mut c = Chunks::new();
        assert_eq!(c.feed(b"3\r\nab").ok(), Some(5));
        assert!(!c.done());
    }

    /// A fetched body with no connection, fed `pieces` as reads would bring them: its
    /// data, its trailers, and whether it ended.
    fn fetched(
        framing: Framing,
        pieces: &[&[u8]],
    ) -> Result<(Vec<u8>, Option<HeaderMap>, bool), ()> {
        let mut body = Fetched::new(None, std::sync::Weak::new(), BytesMut::new(), framing, true);
        let (mut data, mut trailers) = (Vec::new(), None);
        for piece in pieces {
            body.buf.extend_from_slice(piece);
            while let Some(frame) = body.next_frame().map_err(|_| ())? {
                match frame.into_data() {
                    Ok(d) => data.extend_from_slice(&d),
                    Err(frame) => trailers = frame.into_trailers().ok(),
                }
            }
        }
        Ok((data, trailers, body.done))
    }

    #[test]
    fn a_fetched_chunked_body_is_decoded_with_its_trailers_whatever_the_pieces() {
        let body = b"4;ext=1\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\nx-u:  two \r\n\r\n";
        for a in 0..=body.len() {
            for b in a..=body.len() {
                let (data, trailers, done) =
                    fetched(Framing::Chunked, &[&body[..a], &body[a..b], &body[b..]]).unwrap();
                assert_eq!(data, b"Wikipedia", "split at {a}, {b}");
                let trailers = trailers.unwrap();
                assert_eq!(trailers.get("x-t").unwrap(), "1");
                assert_eq!(trailers.get("x-u").unwrap(), "two");
                assert!(done);
            }
        }
        let (data, trailers, done) =
            fetched(Framing::Chunked, &[b"3\r\nabc\r\n0\r\n\r\n"]).unwrap();
        assert_eq!((data.as_slice(), trailers, done), (&b"abc"[..], None, true));
        assert_eq!(fetched(Framing::Chunked, &[b"3\r\nabcd\r\n"]), Err(()));
        let (data, _, done) = fetched(Framing::Chunked, &[b"3\r\nab"]).unwrap();
        assert_eq!((data.as_slice(), done), (&b"ab"[..], false));
        // Framing without end: a size line's extensions, or a trailer section, past
        // 16 KiB in a row; a trailer the chunk reader takes but is not a field.
        let long = [
            b"3;x=".as_slice(),
            &[b'y'; MAX_CHUNK_FRAMING],
            b"\r\nabc\r\n0\r\n\r\n",
        ]
        .concat();
        assert_eq!(fetched(Framing::Chunked, &[&long]), Err(()));
        let long = [
            b"0\r\nx: ".as_slice(),
            &[b'y'; MAX_CHUNK_FRAMING],
            b"\r\n\r\n",
        ]
        .concat();
        assert_eq!(fetched(Framing::Chunked, &[&long]), Err(()));
        let many: Vec<u8> =
            std::iter::repeat_n(&b"1;x=yyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\r\na\r\n"[..], 600)
                .flatten()
                .copied()
                .collect();
        assert_eq!(
            fetched(Framing::Chunked, &[&many]),
            Err(()),
            "extensions over the body"
        );
        let fine = [b"3;x=".as_slice(), &[b'y'; 1000], b"\r\nabc\r\n0\r\n\r\n"].concat();
        assert_eq!(fetched(Framing::Chunked, &[&fine]).unwrap().0, b"abc");
        assert_eq!(
            fetched(Framing::Chunked, &[b"0\r\nx: \x01\r\n\r\n"]),
            Err(())
        );
    }

    #[test]
    fn a_fetched_requests_target_is_in_origin_form_as_hyper_writes_it() {
        let pq = |s: &'static str| {
            let mut parts = hyper::http::uri::Parts::default();
            parts.path_and_query = Some(hyper::http::uri::PathAndQuery::from_static(s));
            hyper::Uri::from_parts(parts).unwrap()
        };
        assert_eq!(target(&pq("/a/b?c=1")), "/a/b?c=1");
        assert_eq!(target(&pq("?c=1")), "/?c=1");
        assert_eq!(target(&"http://svc.test".parse().unwrap()), "/");
    }

    #[test]
    fn a_fetched_body_of_a_length_ends_at_it_and_one_to_the_close_does_not_end_on_its_own() {
        let (data, _, done) = fetched(Framing::Length(5), &[b"he", b"lloEXTRA"]).unwrap();
        assert_eq!((data.as_slice(), done), (&b"hello"[..], true));
        let (data, _, done) = fetched(Framing::Length(5), &[b"hel"]).unwrap();
        assert_eq!((data.as_slice(), done), (&b"hel"[..], false));
        let (data, _, done) = fetched(Framing::Close, &[b"until ", b"the end"]).unwrap();
        assert_eq!((data.as_slice(), done), (&b"until the end"[..], false));
        let (data, _, done) = fetched(Framing::Empty, &[b""]).unwrap();
        assert_eq!((data.len(), done), (0, true));
    }

    /// A writer that takes `take` bytes at most per write, then fails after `fail_after`.
    struct Cut {
        took: usize,
        take: usize,
        fail_after: usize,
    }

    impl AsyncWrite for Cut {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            if self.took >= self.fail_after {
                return Poll::Ready(Err(std::io::ErrorKind::ConnectionReset.into()));
            }
            let n = buf.len().min(self.take);
            self.took += n;
            Poll::Ready(Ok(n))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Review (issue 18): a request was "written" only once the last of its bytes
    /// was, so an upload cut part way (its head read by the version) counted as
    /// unsent and a `POST` went out twice. Any byte taken makes it written.
    #[tokio::test]
    async fn a_request_cut_part_way_counts_as_written_and_one_refused_whole_does_not() {
        let request = vec![b'r'; 100];
        let mut part = Cut {
            took: 0,
            take: 30,
            fail_after: 30,
        };
        let mut written = false;
        assert!(
            write_all_told(&mut part, &request, &mut written)
                .await
                .is_err()
        );
        assert!(written, "30 of 100 bytes were taken");
        let mut none = Cut {
            took: 0,
            take: 30,
            fail_after: 0,
        };
        let mut written = false;
        assert!(
            write_all_told(&mut none, &request, &mut written)
                .await
                .is_err()
        );
        assert!(!written);
        let mut whole = Cut {
            took: 0,
            take: 30,
            fail_after: usize::MAX,
        };
        let mut written = false;
        assert!(
            write_all_told(&mut whole, &request, &mut written)
                .await
                .is_ok()
        );
        assert!(written && whole.took == 100);
    }
}
