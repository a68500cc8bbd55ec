//! The sample service's one gRPC method, `rampart.sample.Sample/Echo`: a unary call
//! that answers its request message unchanged, for gRPC releases and the proxy
//! benchmark's gRPC row.
//!
//! Owns gRPC's length-prefixed framing and its status trailers, by hand (no protobuf:
//! the message's bytes are echoed whatever they encode). It must not decide whether a
//! call fails: the service's behaviour does (`super::outcome`), as for HTTP.

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hyper::body::Frame;

/// The method's path.
pub const ECHO: &str = "/rampart.sample.Sample/Echo";

/// gRPC's default largest message a server accepts (4 MiB), with its 5-byte prefix.
const MAX_MESSAGE: usize = 4 * 1024 * 1024 + 5;

/// The codes this method answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `OK`: the message is echoed.
    Ok = 0,
    /// `UNIMPLEMENTED`: a compressed message (no `grpc-encoding` is accepted).
    Unimplemented = 12,
    /// `INTERNAL`: the service's configured error rate, or a request that is not one
    /// well-framed message.
    Internal = 13,
}

/// Whether a request is a gRPC call (`application/grpc`, alone, with a `+codec` or
/// with parameters); anything else on the method's path is answered as HTTP.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(['+', ';']))
}

/// The request's one message, still framed, or the code that refuses it.
pub async fn message(req: Request) -> Result<Bytes, (Code, &'static str)> {
    let body = axum::body::to_bytes(req.into_body(), MAX_MESSAGE)
        .await
        .map_err(|_| {
            (
                Code::Internal,
                "the request body is unreadable or over 4 MiB",
            )
        })?;
    let Some((&compressed, rest)) = body.split_first() else {
        return Err((Code::Internal, "no request message"));
    };
    let len = rest
        .first_chunk::<4>()
        .map(|l| u32::from_be_bytes(*l) as usize);
    if len != Some(rest.len().saturating_sub(4)) {
        return Err((
            Code::Internal,
            "the request is not one length-prefixed message",
        ));
    }
    if compressed != 0 {
        return Err((Code::Unimplemented, "compressed messages are not accepted"));
    }
    Ok(body)
}

/// A gRPC answer: `message` (already framed, or none) then `grpc-status` in the
/// trailers, under HTTP 200 as gRPC requires.
pub fn answer(message: Option<Bytes>, code: Code, why: &str) -> Response {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code as u32));
    if let Ok(why) = HeaderValue::from_str(why)
        && code != Code::Ok
    {
        trailers.insert("grpc-message", why);
    }
    let mut frames = Vec::with_capacity(2);
    if let Some(m) = message {
        frames.push(Ok::<_, std::convert::Infallible>(Frame::data(m)));
    }
    frames.push(Ok(Frame::trailers(trailers)));
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
    (
        StatusCode::OK,
        [(CONTENT_TYPE, "application/grpc")],
        Body::new(body),
    )
        .into_response()
}
