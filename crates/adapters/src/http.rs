//! A minimal HTTP/1.1 GET client for probes and gates.
//!
//! Owns one-shot requests with a hard time limit. It must not pool connections or
//! follow redirects: a probe measures exactly one answer from exactly one endpoint.

use std::time::Duration;

use http_body_util::Full;
use hyper::Request;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// POSTs a JSON body and returns the status code, or why there is none.
pub async fn post_json(url: &str, body: String, timeout: Duration) -> Result<u16, String> {
    post_json_with(url, body, &[], timeout).await
}

/// POSTs a JSON body with extra headers and returns the status code.
pub async fn post_json_with(
    url: &str,
    body: String,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<u16, String> {
    let sent = exchange(url, "POST", Some(body), headers, false);
    match tokio::time::timeout(timeout, sent).await {
        Ok(r) => r.map(|(status, _)| status),
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

/// Sends `GET url` and returns the status code, or why there is none.
pub async fn get_status(url: &str, timeout: Duration) -> Result<u16, String> {
    match tokio::time::timeout(timeout, request(url, "GET", None)).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

/// Sends `method url` with an optional JSON body; returns the status and the body text.
pub async fn send(
    method: &str,
    url: &str,
    body: Option<String>,
    timeout: Duration,
) -> Result<(u16, String), String> {
    send_with(method, url, body, &[], timeout).await
}

/// [`send`] with extra headers.
pub async fn send_with(
    method: &str,
    url: &str,
    body: Option<String>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<(u16, String), String> {
    let exchange = async {
        let (status, body) = exchange(url, method, body, headers, true).await?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {}ms", timeout.as_millis())),
    }
}

/// Sends `GET url` and returns the status code and the body as text.
pub async fn get_text(url: &str, timeout: Duration) -> Result<(u16, String), String> {
    send("GET", url, None, timeout).await
}

async fn request(url: &str, method: &str, body: Option<String>) -> Result<u16, String> {
    exchange(url, method, body, &[], false)
        .await
        .map(|(status, _)| status)
}

/// One request; the body is read only when `read_body` (a probe needs the status only).
async fn exchange(
    url: &str,
    method: &str,
    body: Option<String>,
    headers: &[(&str, String)],
    read_body: bool,
) -> Result<(u16, Bytes), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL `{url}`: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("`{url}` is not an http:// URL"));
    }
    let host = uri.host().ok_or_else(|| format!("`{url}` has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let stream = TcpStream::connect((host, port))
        .await
        .map_err(|e| format!("connect {host}:{port}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let mut req = Request::builder();
    for (name, value) in headers {
        req = req.header(*name, value.as_str());
    }
    let req = req
        .method(method)
        .uri(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, "rampart")
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| e.to_string())?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        if !read_body {
            return Ok((status, Bytes::new()));
        }
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .map_err(|e| format!("reading the body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}
