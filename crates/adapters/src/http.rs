//! A minimal HTTP/1.1 client for probes, gates, notifications and adapter APIs.
//!
//! Owns one-shot requests with a hard time limit, over plain TCP or (with the `tls`
//! feature, on by default) TLS with Mozilla's root certificates plus any in
//! `RAMPART_CA_FILE`. It must not pool connections or follow redirects: a probe
//! measures exactly one answer from exactly one endpoint.

use std::time::Duration;

use http_body_util::Full;
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use tokio::net::TcpStream;

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - _ . ~`): safe in a
/// path segment and in a query value alike, whatever the server does with `+` or `/`.
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why a request got no answer. The text is for people; callers match the variant.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The URL does not parse.
    #[error("bad URL `{url}`: {source}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// Why it does not parse.
        source: hyper::http::uri::InvalidUri,
    },
    /// An https:// URL, and this build has no TLS.
    #[error("`{url}` is https:// but this rampart was built without the `tls` feature")]
    NoTls {
        /// The URL as given.
        url: String,
    },
    /// Neither http:// nor https://.
    #[error("`{url}` is not an http:// or https:// URL")]
    Scheme {
        /// The URL as given.
        url: String,
    },
    /// The URL names no host.
    #[error("`{url}` has no host")]
    NoHost {
        /// The URL as given.
        url: String,
    },
    /// No TCP connection (refused, unreachable, no such host).
    #[error("connect {host}:{port}: {source}")]
    Connect {
        /// The host.
        host: String,
        /// The port.
        port: u16,
        /// The operating system's reason.
        source: std::io::Error,
    },
    /// The trusted roots could not be loaded (`RAMPART_CA_FILE`).
    #[error("{0}")]
    TlsRoots(String),
    /// The host is not a name a certificate can be checked against.
    #[error("`{host}` is not a TLS server name: {why}")]
    TlsName {
        /// The host.
        host: String,
        /// Why not.
        why: String,
    },
    /// The TLS handshake failed (an untrusted or mismatched certificate, a protocol
    /// error).
    #[error("TLS with {host}: {source}")]
    Tls {
        /// The host.
        host: String,
        /// What the TLS library said.
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake failed.
    #[error("handshake: {0}")]
    Handshake(#[source] hyper::Error),
    /// The request could not be built (a header value that is not allowed).
    #[error("{0}")]
    Build(#[from] hyper::http::Error),
    /// The request was sent and no answer came back (the connection closed).
    #[error("request: {0}")]
    Request(#[source] hyper::Error),
    /// The answer's body could not be read to its end.
    #[error("reading the body: {0}")]
    Body(#[source] hyper::Error),
    /// No answer within the time limit.
    #[error("no answer within {}ms", .0.as_millis())]
    Timeout(Duration),
}

impl HttpError {
    /// Whether no connection to the server could be made at all: a URL that names
    /// none, a name that does not resolve, a connection refused or unreachable, a TLS
    /// session that could not be set up. A server that was reached and then did not
    /// answer (a time limit, a connection closed mid-exchange) is not unreachable.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            HttpError::BadUrl { .. }
                | HttpError::NoTls { .. }
                | HttpError::Scheme { .. }
                | HttpError::NoHost { .. }
                | HttpError::Connect { .. }
                | HttpError::TlsRoots(_)
                | HttpError::TlsName { .. }
                | HttpError::Tls { .. }
        )
    }
}

/// Percent-encodes a path segment or a query value (everything but unreserved
/// characters, in upper-case hex).
pub fn encode(s: &str) -> String {
    utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// POSTs a JSON body and returns the status code, or why there is none.
pub async fn post_json(url: &str, body: String, timeout: Duration) -> Result<u16, HttpError> {
    post_json_with(url, body, &[], timeout).await
}

/// POSTs a JSON body with extra headers and returns the status code.
pub async fn post_json_with(
    url: &str,
    body: String,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<u16, HttpError> {
    let sent = exchange(url, "POST", Some(body), headers, false);
    match tokio::time::timeout(timeout, sent).await {
        Ok(r) => r.map(|a| a.status),
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

/// Sends `GET url` and returns the status code, or why there is none.
pub async fn get_status(url: &str, timeout: Duration) -> Result<u16, HttpError> {
    match tokio::time::timeout(timeout, request(url, "GET", None)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

/// Sends `method url` with an optional JSON body; returns the status and the body text.
pub async fn send(
    method: &str,
    url: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    send_with(method, url, body, &[], timeout).await
}

/// [`send`] with extra headers.
pub async fn send_with(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let answer = send_answer(method, url, body, headers, timeout).await?;
    Ok((answer.status, answer.body))
}

/// An answer with what adapter APIs read besides the body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The `Retry-After` header, as sent (seconds, or an HTTP date).
    pub retry_after: Option<String>,
    /// The `X-RateLimit-Reset` header, as sent: Datadog's seconds until its limit
    /// resets, which it sends with a 429 instead of `Retry-After`.
    pub ratelimit_reset: Option<String>,
    /// The body as text.
    pub body: String,
}

/// [`send_with`], returning the `Retry-After` header too. A `content-type` among
/// `headers` replaces the default `application/json`.
pub async fn send_answer(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<Answer, HttpError> {
    match tokio::time::timeout(timeout, exchange(url, method, body, headers, true)).await {
        Ok(r) => r,
        Err(_) => Err(HttpError::Timeout(timeout)),
    }
}

/// Sends `GET url` and returns the status code and the body as text.
pub async fn get_text(url: &str, timeout: Duration) -> Result<(u16, String), HttpError> {
    send("GET", url, None, timeout).await
}

async fn request(url: &str, method: &str, body: Option<String>) -> Result<u16, HttpError> {
    exchange(url, method, body, &[], false)
        .await
        .map(|a| a.status)
}

/// One request; the body is read only when `read_body` (a probe needs the status only).
async fn exchange(
    url: &str,
    method: &str,
    body: Option<String>,
    headers: &[(&str, String)],
    read_body: bool,
) -> Result<Answer, HttpError> {
    let uri: hyper::Uri = url.parse().map_err(|source| HttpError::BadUrl {
        url: url.to_string(),
        source,
    })?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") if cfg!(feature = "tls") => true,
        Some("https") => {
            return Err(HttpError::NoTls { url: url.into() });
        }
        _ => return Err(HttpError::Scheme { url: url.into() }),
    };
    let host = uri
        .host()
        .ok_or_else(|| HttpError::NoHost { url: url.into() })?;
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let stream = TcpStream::connect((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|source| HttpError::Connect {
            host: host.to_string(),
            port,
            source,
        })?;
    #[cfg(feature = "tls")]
    if https {
        let tls = tls::connect(host, stream).await?;
        return over(
            TokioIo::new(tls),
            &uri,
            host,
            method,
            body,
            headers,
            read_body,
        )
        .await;
    }
    over(
        TokioIo::new(stream),
        &uri,
        host,
        method,
        body,
        headers,
        read_body,
    )
    .await
}

/// One request over an open connection.
async fn over<S>(
    io: TokioIo<S>,
    uri: &hyper::Uri,
    host: &str,
    method: &str,
    body: Option<String>,
    headers: &[(&str, String)],
    read_body: bool,
) -> Result<Answer, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(HttpError::Handshake)?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut req = Request::builder();
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let typed = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    if !typed {
        req = req.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "rampart")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))?;
    let result = async {
        let resp = sender.send_request(req).await.map_err(HttpError::Request)?;
        let status = resp.status().as_u16();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (retry_after, ratelimit_reset) = (header("retry-after"), header("x-ratelimit-reset"));
        let body = if read_body {
            let bytes = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .map_err(HttpError::Body)?
                .to_bytes();
            String::from_utf8_lossy(&bytes).into_owned()
        } else {
            String::new()
        };
        Ok(Answer {
            status,
            retry_after,
            ratelimit_reset,
            body,
        })
    }
    .await;
    driver.abort();
    result
}

/// TLS for https:// URLs: rustls with ring, Mozilla's roots, and any extra roots.
#[cfg(feature = "tls")]
pub mod tls {
    use std::sync::{Arc, RwLock};

    use rustls::ClientConfig;
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::client::TlsStream;

    use super::HttpError;

    /// Roots added at run time, and the configuration built from all roots.
    static EXTRA: RwLock<Vec<CertificateDer<'static>>> = RwLock::new(Vec::new());
    static CONFIG: RwLock<Option<Arc<ClientConfig>>> = RwLock::new(None);

    /// Trusts the certificates in `pem` too (a private CA). Returns how many.
    pub fn add_roots(pem: &[u8]) -> Result<usize, HttpError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| HttpError::TlsRoots(format!("not PEM certificates: {e:?}")))?;
        let n = certs.len();
        if let Ok(mut extra) = EXTRA.write() {
            extra.extend(certs);
        }
        if let Ok(mut config) = CONFIG.write() {
            *config = None;
        }
        Ok(n)
    }

    fn config() -> Result<Arc<ClientConfig>, String> {
        if let Some(c) = CONFIG.read().ok().and_then(|c| c.clone()) {
            return Ok(c);
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Ok(path) = std::env::var("RAMPART_CA_FILE") {
            let pem = std::fs::read(&path).map_err(|e| format!("RAMPART_CA_FILE {path}: {e}"))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| format!("RAMPART_CA_FILE {path}: {e:?}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("RAMPART_CA_FILE {path}: {e}"))?;
            }
        }
        for cert in EXTRA.read().map(|e| e.clone()).unwrap_or_default() {
            roots.add(cert).map_err(|e| e.to_string())?;
        }
        let config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(roots)
                .with_no_client_auth();
        let config = Arc::new(config);
        if let Ok(mut slot) = CONFIG.write() {
            *slot = Some(config.clone());
        }
        Ok(config)
    }

    /// A TLS session to `host` over `stream`, the certificate checked against `host`.
    pub async fn connect(host: &str, stream: TcpStream) -> Result<TlsStream<TcpStream>, HttpError> {
        let name =
            ServerName::try_from(host.trim_matches(['[', ']']).to_string()).map_err(|e| {
                HttpError::TlsName {
                    host: host.to_string(),
                    why: e.to_string(),
                }
            })?;
        TlsConnector::from(config().map_err(HttpError::TlsRoots)?)
            .connect(name, stream)
            .await
            .map_err(|source| HttpError::Tls {
                host: host.to_string(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The promise, stated byte by byte (it is also the hand-written encoder this
    /// module had before `percent-encoding`): unreserved bytes pass, every other
    /// byte is `%XX` in upper-case hex.
    fn by_hand(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|&b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }

    #[test]
    fn the_set_encodes_every_byte_but_the_unreserved_ones() {
        for b in 0..=255u8 {
            assert_eq!(
                percent_encoding::percent_encode(&[b], NOT_UNRESERVED).to_string(),
                by_hand(&[b]),
                "byte {b:#04x}"
            );
        }
        let text = "up{job=\"shop\"} / 2 ~ é 🙂 a+b&c=d%";
        assert_eq!(encode(text), by_hand(text.as_bytes()));
    }

    #[test]
    fn known_encodings() {
        for (plain, encoded) in [
            ("", ""),
            ("AZaz09-_.~", "AZaz09-_.~"),
            ("a b", "a%20b"),
            ("a+b", "a%2Bb"),
            ("a/b?c=d&e#f", "a%2Fb%3Fc%3Dd%26e%23f"),
            ("100%", "100%25"),
            ("é", "%C3%A9"),
            ("rate(x[5m])", "rate%28x%5B5m%5D%29"),
        ] {
            assert_eq!(encode(plain), encoded, "{plain:?}");
        }
    }
}
