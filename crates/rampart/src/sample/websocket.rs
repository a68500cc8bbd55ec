//! The sample service's WebSocket echo (`GET /ws` with `Upgrade: websocket`): every
//! text or binary frame it reads comes back unchanged, for WebSocket releases and the
//! proxy benchmark's WebSocket row.
//!
//! Owns RFC 6455's handshake and framing, by hand (a server's side only: it reads
//! masked frames and writes unmasked ones). It must not interpret messages: fragments
//! are echoed frame by frame, as they come.

use std::io;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

/// The endpoint's path.
pub const PATH: &str = "/ws";

/// The largest frame payload echoed; a larger frame closes the connection (1009).
const MAX_PAYLOAD: u64 = 1024 * 1024;

/// Whether a request asks for a WebSocket (RFC 6455, version 13); anything else on
/// the endpoint's path is answered as HTTP.
pub fn is_upgrade(req: &Request) -> bool {
    let has = |name, token: &str| {
        req.headers().get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    req.method() == Method::GET
        && has(UPGRADE, "websocket")
        && has(CONNECTION, "upgrade")
        && req
            .headers()
            .get("sec-websocket-version")
            .map(|v| v.as_bytes())
            == Some(b"13")
        && req.headers().contains_key(SEC_WEBSOCKET_KEY)
}

/// Answers the handshake (101) and echoes on the upgraded connection in its own task.
pub fn accept(mut req: Request) -> Response {
    let Some(key) = req.headers().get(SEC_WEBSOCKET_KEY) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let accept = accept_key(key.as_bytes());
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        // A failed upgrade (the client left) or a closed connection ends the echo;
        // there is nobody left to tell.
        if let Ok(upgraded) = upgrade.await {
            let _ = echo(TokioIo::new(upgraded)).await;
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (UPGRADE, "websocket".to_string()),
            (CONNECTION, "Upgrade".to_string()),
            (SEC_WEBSOCKET_ACCEPT, accept),
        ],
        Body::empty(),
    )
        .into_response()
}

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455, 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    base64(&Sha1::new().chain_update(key).chain_update(GUID).finalize())
}

/// Standard base64 with padding, for the 20 bytes of a SHA-1 digest.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Echoes frames until the client closes (its close frame is answered with the same
/// status) or breaks the protocol (an unmasked or oversized frame: closed with 1002
/// or 1009).
async fn echo<S: AsyncRead + AsyncWrite + Unpin>(io: S) -> io::Result<()> {
    let mut io = BufReader::new(io);
    let mut payload = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut head = [0u8; 2];
        io.read_exact(&mut head).await?;
        let (first, opcode) = (head[0], head[0] & 0x0f);
        let len = match head[1] & 0x7f {
            126 => u64::from(io.read_u16().await?),
            127 => io.read_u64().await?,
            n => u64::from(n),
        };
        if head[1] & 0x80 == 0 {
            return close(&mut io, 1002).await;
        }
        if len > MAX_PAYLOAD {
            return close(&mut io, 1009).await;
        }
        let mut mask = [0u8; 4];
        io.read_exact(&mut mask).await?;
        payload.resize(len as usize, 0);
        io.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        let first = match opcode {
            0xA => continue, // a pong answers nothing
            0x9 => 0x8A,     // a ping is answered with a pong carrying its payload
            _ => first,
        };
        out.clear();
        frame(&mut out, first, &payload);
        io.write_all(&out).await?;
        io.flush().await?;
        if opcode == 0x8 {
            return Ok(());
        }
    }
}

/// Sends a close frame with `status` (a protocol error: nothing more is read).
async fn close<S: AsyncWrite + Unpin>(io: &mut S, status: u16) -> io::Result<()> {
    let mut out = Vec::new();
    frame(&mut out, 0x88, &status.to_be_bytes());
    io.write_all(&out).await?;
    io.flush().await
}

/// Appends one unmasked frame: `first` is its FIN bit and opcode.
fn frame(out: &mut Vec<u8>, first: u8, payload: &[u8]) {
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(n as u8),
        n @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6455's own example (section 1.3).
    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foobar"), "Zm9vYmFy");
    }
}
