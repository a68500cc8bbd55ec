//! The bundled sample service: a tiny HTTP server whose error rate and latency are set
//! by environment, so the demo (and anyone trying rampart) can release a good or a bad
//! version without writing one.
//!
//! Behaviour is deterministic: an error rate of 0.5 % fails exactly every 200th request,
//! and latency cycles evenly through ±20 % of the configured value. That makes the
//! demo's outcomes repeatable; real services are noisier, which is what the analysis
//! settings (`min_samples`, `failure_limit`) are for.
//!
//! It speaks HTTP/1.1 and, to clients with prior knowledge, h2c on the same port. Any
//! method on any path gets the version; two paths do more: a gRPC unary echo
//! (`grpc.rs`) and a WebSocket echo (`websocket.rs`).

mod grpc;
mod websocket;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use rampart_core::units::Rate;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// How the sample service behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct Behaviour {
    /// The version it reports.
    pub version: String,
    /// Fraction of requests answered with 500.
    pub error_rate: f64,
    /// Typical latency.
    pub latency: Duration,
    /// Exit with an error instead of serving.
    pub crash_on_start: bool,
    /// A burst of errors: from `start` after start-up, for `len`, at `rate`.
    pub spike: Option<(Duration, Duration, f64)>,
    /// A slow mode: this share of requests, picked pseudo-randomly, waits this much
    /// longer before answering (a bimodal latency, like a cache miss or a GC pause).
    pub slow: Option<(f64, Duration)>,
    /// When set, the errors only hit requests for which this feature flag is on: the
    /// flag's URL (`http://HOST:PORT/flags/NAME`) and the header carrying the user key.
    pub flag: Option<(String, String)>,
    /// With `flag`: the latency of the requests it is on for, in place of `latency`.
    pub flag_latency: Option<Duration>,
}

/// Picks the value for `version` from `VALUE` or `VERSION=VALUE,...,*=DEFAULT`.
pub fn for_version<'a>(spec: &'a str, version: &str) -> Option<&'a str> {
    if !spec.contains('=') {
        return Some(spec.trim());
    }
    let mut fallback = None;
    for part in spec.split(',') {
        let (k, v) = part.split_once('=')?;
        match k.trim() {
            k if k == version => return Some(v.trim()),
            "*" => fallback = Some(v.trim()),
            _ => {}
        }
    }
    fallback
}

impl Behaviour {
    /// Reads `SAMPLE_ERROR_RATE`, `SAMPLE_LATENCY_MS` and `SAMPLE_CRASH_ON_START`, each
    /// either one value or a per-version list such as `v1=0.5%,v2=5%`.
    pub fn from_env(version: &str) -> Result<Behaviour> {
        let get = |name: &str| std::env::var(name).ok();
        let pick = |name: &str| -> Option<String> {
            get(name).and_then(|s| for_version(&s, version).map(str::to_string))
        };
        let error_rate = match pick("SAMPLE_ERROR_RATE") {
            Some(t) => {
                Rate::parse(&t)
                    .map_err(anyhow::Error::msg)
                    .context("SAMPLE_ERROR_RATE")?
                    .0
            }
            None => 0.0,
        };
        // A latency in milliseconds, from 0 to a minute.
        let latency = |name: &str| -> Result<Option<Duration>> {
            let Some(t) = pick(name) else {
                return Ok(None);
            };
            let ms: f64 = t
                .parse()
                .with_context(|| format!("{name}: `{t}` is not a number"))?;
            if !(0.0..=60_000.0).contains(&ms) {
                bail!("{name} must be between 0 and 60000");
            }
            Ok(Some(Duration::from_secs_f64(ms / 1000.0)))
        };
        let crash_on_start = matches!(
            pick("SAMPLE_CRASH_ON_START").as_deref(),
            Some("1" | "true" | "yes")
        );
        // SAMPLE_SPIKE=START_MS:LEN_MS:RATE, such as 1000:1000:50%.
        let spike = match pick("SAMPLE_SPIKE") {
            None => None,
            Some(t) => {
                let parts: Vec<&str> = t.split(':').collect();
                let [start, len, rate] = parts.as_slice() else {
                    bail!("SAMPLE_SPIKE: `{t}` is not START_MS:LEN_MS:RATE");
                };
                let ms = |v: &str| {
                    v.parse::<u64>()
                        .map(Duration::from_millis)
                        .with_context(|| format!("SAMPLE_SPIKE: `{v}` is not milliseconds"))
                };
                let rate = Rate::parse(rate)
                    .map_err(anyhow::Error::msg)
                    .context("SAMPLE_SPIKE")?
                    .0;
                Some((ms(start)?, ms(len)?, rate))
            }
        };
        // SAMPLE_SLOW=SHARE:MS, such as 1%:40: that share of requests waits MS more.
        let slow = match pick("SAMPLE_SLOW") {
            None => None,
            Some(t) => {
                let Some((share, ms)) = t.split_once(':') else {
                    bail!("SAMPLE_SLOW: `{t}` is not SHARE:MS, such as 1%:40");
                };
                let share = Rate::parse(share)
                    .map_err(anyhow::Error::msg)
                    .context("SAMPLE_SLOW")?
                    .0;
                let ms: u64 = ms
                    .parse()
                    .with_context(|| format!("SAMPLE_SLOW: `{ms}` is not milliseconds"))?;
                if ms > 60_000 {
                    bail!("SAMPLE_SLOW: at most 60000 ms");
                }
                Some((share, Duration::from_millis(ms)))
            }
        };
        // SAMPLE_FLAG_URL=http://127.0.0.1:7071/flags/NAME: the bug sits behind that flag.
        let flag = pick("SAMPLE_FLAG_URL").map(|url| {
            let header = get("SAMPLE_FLAG_KEY_HEADER").unwrap_or_else(|| "x-user-id".into());
            (url, header.to_ascii_lowercase())
        });
        // SAMPLE_FLAG_LATENCY_MS: the latency of a request the flag is on for (the new
        // code path), in place of SAMPLE_LATENCY_MS.
        let flag_latency = latency("SAMPLE_FLAG_LATENCY_MS")?;
        if flag_latency.is_some() && flag.is_none() {
            bail!("SAMPLE_FLAG_LATENCY_MS needs SAMPLE_FLAG_URL");
        }
        Ok(Behaviour {
            version: version.to_string(),
            error_rate,
            latency: latency("SAMPLE_LATENCY_MS")?.unwrap_or(Duration::from_millis(5)),
            crash_on_start,
            spike,
            slow,
            flag,
            flag_latency,
        })
    }
}

/// Serves until killed.
pub async fn serve(port: u16, b: Behaviour) -> Result<()> {
    if b.crash_on_start {
        bail!(
            "sample-service {}: SAMPLE_CRASH_ON_START is set, exiting before serving",
            b.version
        );
    }
    let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
        .await
        .with_context(|| format!("binding 127.0.0.1:{port}"))?;
    eprintln!(
        "sample-service {} on 127.0.0.1:{port}: error rate {}, latency {}ms",
        b.version,
        Rate(b.error_rate),
        b.latency.as_millis()
    );
    let sample = Arc::new(Sample {
        b,
        started: Instant::now(),
        requests: AtomicU64::new(0),
        flagged: AtomicU64::new(0),
    });
    // Any method, any path; answers carry no content type, as they always have.
    let app = Router::new()
        .route("/healthz", any(|| async { Body::from("ok\n") }))
        .route(grpc::ECHO, any(grpc_echo))
        .route(websocket::PATH, any(websocket_echo))
        .fallback(answer)
        .with_state(sample);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, app.clone()));
            }
            // Out of files or a connection reset before it was accepted: the next
            // accept may succeed, and a sample service should outlive a burst.
            Err(e) => {
                eprintln!("sample-service: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one connection: HTTP/2 if it opens with the HTTP/2 preface (h2c with prior
/// knowledge, as gRPC clients and proxies speak it), HTTP/1.1 with upgrades otherwise.
async fn connection(stream: TcpStream, app: Router) {
    // No deadline for the first bytes, as before h2c: a quiet client costs a parked task.
    let Ok(h2) = prior_knowledge(&stream).await else {
        return;
    };
    let io = TokioIo::new(stream);
    let service = TowerToHyperService::new(app);
    // A connection's errors (a reset, a malformed request) end only that connection.
    let _ = if h2 {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, service)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .with_upgrades()
            .await
    };
}

/// Whether the client's first bytes are the HTTP/2 preface; they are only peeked at,
/// and stay for the server that reads them.
async fn prior_knowledge(stream: &TcpStream) -> std::io::Result<bool> {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut first = [0u8; PREFACE.len()];
    loop {
        let n = stream.peek(&mut first).await?;
        if n == 0 || first[..n] != PREFACE[..n] {
            return Ok(false);
        }
        if n == PREFACE.len() {
            return Ok(true);
        }
        // Part of the preface so far: peeking again would return at once with the
        // same bytes, so wait a little for the rest.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// `POST /rampart.sample.Sample/Echo` as a gRPC call: the message back, or the
/// behaviour's error as `INTERNAL`. Not a gRPC call: the version, as on any path.
async fn grpc_echo(State(s): State<Arc<Sample>>, req: Request) -> Response {
    if !grpc::is_grpc(req.headers()) {
        return answer(State(s), req.headers().clone())
            .await
            .into_response();
    }
    if outcome(&s, req.headers()).await {
        return grpc::answer(
            None,
            grpc::Code::Internal,
            "the sample service's error rate",
        );
    }
    match grpc::message(req).await {
        Ok(message) => grpc::answer(Some(message), grpc::Code::Ok, ""),
        Err((code, why)) => grpc::answer(None, code, why),
    }
}

/// `GET /ws` with a WebSocket upgrade: the echo. Anything else: the version.
async fn websocket_echo(State(s): State<Arc<Sample>>, req: Request) -> Response {
    if websocket::is_upgrade(&req) {
        return websocket::accept(req);
    }
    answer(State(s), req.headers().clone())
        .await
        .into_response()
}

/// The service's behaviour and what it has counted since it started.
#[derive(Debug)]
struct Sample {
    b: Behaviour,
    started: Instant,
    /// Requests answered (health checks aside).
    requests: AtomicU64,
    /// Requests the flag was on for, when the bug sits behind a flag.
    flagged: AtomicU64,
}

async fn answer(State(s): State<Arc<Sample>>, headers: HeaderMap) -> (StatusCode, Body) {
    let status = if outcome(&s, &headers).await {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    };
    (status, Body::from(format!("{}\n", s.b.version)))
}

/// Waits the request's latency, then says whether it fails (by the error rate, the
/// spike, and the flag when the bug sits behind one).
async fn outcome(s: &Sample, headers: &HeaderMap) -> bool {
    let b = &s.b;
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    // Whether the flag is on for this request, when the bug sits behind one.
    let flagged = match &b.flag {
        None => None,
        Some((url, header)) => {
            let key = headers
                .get(header.as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            Some(flag_on(url, key).await)
        }
    };
    let latency = match (flagged, b.flag_latency) {
        (Some(true), Some(flag_latency)) => flag_latency,
        _ => b.latency,
    };
    // Evenly spread ±20 % around the configured latency (golden-ratio sequence).
    let spread = 0.8 + 0.4 * ((n as f64 * 0.618_033_988_75) % 1.0);
    let mut wait = latency.mul_f64(spread);
    if let Some((share, extra)) = b.slow
        && unit_interval(n) < share
    {
        wait += extra;
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    let rate = match b.spike {
        Some((from, len, rate)) if (from..from + len).contains(&s.started.elapsed()) => rate,
        _ => b.error_rate,
    };
    // Behind a flag, only flag-on requests count toward the error rate.
    let n = match flagged {
        None => n,
        Some(false) => return false,
        Some(true) => s.flagged.fetch_add(1, Ordering::Relaxed),
    };
    ((n + 1) as f64 * rate).floor() > (n as f64 * rate).floor()
}

/// A pseudo-random number in [0, 1) for request `n` (splitmix64): which requests are
/// slow is irregular, as in a real service, and the same on every run.
fn unit_interval(n: u64) -> f64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// Asks the flag endpoint, as an application would; an unreachable endpoint means the
/// flag's safe default, off.
async fn flag_on(url: &str, key: &str) -> bool {
    let encoded: String = key
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    match rampart_adapters::http::get_text(&format!("{url}?key={encoded}"), Duration::from_secs(1))
        .await
    {
        Ok((200, body)) => serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["on"].as_bool())
            .unwrap_or(false),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slow_share_is_close_to_the_one_asked_for() {
        let slow = (0..100_000).filter(|n| unit_interval(*n) < 0.012).count();
        assert!((1_100..1_300).contains(&slow), "{slow}");
        assert!((0..1000).all(|n| (0.0..1.0).contains(&unit_interval(n))));
    }

    #[test]
    fn per_version_values() {
        assert_eq!(for_version("5%", "v1"), Some("5%"));
        assert_eq!(for_version("v1=0.5%,v2=5%", "v2"), Some("5%"));
        assert_eq!(for_version("v1=0.5%,*=1%", "v9"), Some("1%"));
        assert_eq!(for_version("v1=0.5%", "v9"), None);
    }

    /// The whole answer to `head` on a fresh connection, its headers in order and
    /// without `date`.
    async fn exchange(port: u16, head: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let request = format!("{head}\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        let answer = String::from_utf8(answer).unwrap();
        // Header lines in order: the order of different fields means nothing in HTTP.
        let (head, body) = answer.split_once("\r\n\r\n").unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap();
        let mut headers: Vec<&str> = lines.filter(|l| !l.starts_with("date:")).collect();
        headers.sort_unstable();
        format!("{status}\r\n{}\r\n\r\n{body}", headers.join("\r\n"))
    }

    /// A sample service reporting `v2` on a free port, once it listens.
    async fn started(error_rate: f64) -> u16 {
        let port = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let b = Behaviour {
            version: "v2".into(),
            error_rate,
            latency: Duration::ZERO,
            crash_on_start: false,
            spike: None,
            slow: None,
            flag: None,
            flag_latency: None,
        };
        tokio::spawn(serve(port, b));
        for _ in 0..200 {
            if tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
                .await
                .is_ok()
            {
                return port;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the sample service never listened");
    }

    /// Pinned on the wire, captured from the hand-written server: the demo and the
    /// tests read these answers (no content type, `ok` for health, the version).
    #[tokio::test]
    async fn the_sample_service_answers_as_it_always_has() {
        let port = started(0.5).await;
        let mut got = String::new();
        for head in [
            "GET /healthz HTTP/1.1",
            "POST /healthz HTTP/1.1",
            "GET / HTTP/1.1",
            "GET /anything?x=1 HTTP/1.1",
            "POST /orders HTTP/1.1",
            "HEAD / HTTP/1.1",
        ] {
            got.push_str(&format!(">>> {head}\n{}\n", exchange(port, head).await));
        }
        // Line ends as `\n`, to keep the literal readable.
        let got = got.replace("\r\n", "\n");
        if std::env::var_os("RAMPART_PRINT_GOLDEN").is_some() {
            println!("{got}");
            return;
        }
        assert_eq!(got, SAMPLE);
    }

    /// One gRPC call over h2c with prior knowledge: the answer's content type, its
    /// body and its trailers' `grpc-status`.
    async fn grpc_call(port: u16, body: Vec<u8>) -> (String, Vec<u8>, Option<String>) {
        use http_body_util::BodyExt;
        let stream = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        let (mut send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = axum::http::Request::post(format!("http://127.0.0.1:{port}{}", grpc::ECHO))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.version(), axum::http::Version::HTTP_2);
        assert_eq!(resp.status(), StatusCode::OK);
        let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
        let collected = resp.into_body().collect().await.unwrap();
        let status = collected
            .trailers()
            .and_then(|t| t.get("grpc-status"))
            .map(|v| v.to_str().unwrap().to_string());
        (ct, collected.to_bytes().to_vec(), status)
    }

    #[tokio::test]
    async fn the_grpc_echo_answers_its_message_with_status_0_trailers_over_h2c() {
        let port = started(0.0).await;
        let message = [&[0u8, 0, 0, 0, 5][..], b"hello"].concat();
        let (ct, body, status) = grpc_call(port, message.clone()).await;
        assert_eq!(ct, "application/grpc");
        assert_eq!(body, message);
        assert_eq!(status.as_deref(), Some("0"));
        // A body that is not one framed message, and a compressed one.
        let (_, body, status) = grpc_call(port, vec![0, 0, 0, 0, 9, 1]).await;
        assert!(body.is_empty());
        assert_eq!(status.as_deref(), Some("13"));
        let (_, _, status) = grpc_call(port, vec![1, 0, 0, 0, 1, 7]).await;
        assert_eq!(status.as_deref(), Some("12"));
    }

    #[tokio::test]
    async fn the_grpc_echo_fails_at_the_error_rate_as_internal() {
        let port = started(1.0).await;
        let (_, body, status) = grpc_call(port, vec![0, 0, 0, 0, 1, 7]).await;
        assert!(body.is_empty());
        assert_eq!(status.as_deref(), Some("13"));
    }

    #[tokio::test]
    async fn the_websocket_endpoint_echoes_text_and_answers_close() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let port = started(0.0).await;
        let mut ws = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
            .await
            .unwrap();
        ws.write_all(
            b"GET /ws HTTP/1.1\r\nhost: test\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(ws.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
            "{head}"
        );
        // A masked text frame, "hi", then a close with 1000.
        let mask = [1u8, 2, 3, 4];
        let masked =
            |p: &[u8]| -> Vec<u8> { p.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect() };
        for (first, payload) in [(0x81u8, &b"hi"[..]), (0x88, &[0x03, 0xe8][..])] {
            let frame = [
                &[first, 0x80 | payload.len() as u8][..],
                &mask,
                &masked(payload),
            ]
            .concat();
            ws.write_all(&frame).await.unwrap();
            let mut echo = vec![0u8; 2 + payload.len()];
            ws.read_exact(&mut echo).await.unwrap();
            assert_eq!(echo, [&[first, payload.len() as u8][..], payload].concat());
        }
        // After the close, the server has nothing more to say.
        assert_eq!(ws.read(&mut [0u8; 1]).await.unwrap(), 0);
    }

    const SAMPLE: &str = r#">>> GET /healthz HTTP/1.1
HTTP/1.1 200 OK
connection: close
content-length: 3

ok

>>> POST /healthz HTTP/1.1
HTTP/1.1 200 OK
connection: close
content-length: 3

ok

>>> GET / HTTP/1.1
HTTP/1.1 200 OK
connection: close
content-length: 3

v2

>>> GET /anything?x=1 HTTP/1.1
HTTP/1.1 500 Internal Server Error
connection: close
content-length: 3

v2

>>> POST /orders HTTP/1.1
HTTP/1.1 200 OK
connection: close
content-length: 3

v2

>>> HEAD / HTTP/1.1
HTTP/1.1 500 Internal Server Error
connection: close
content-length: 3


"#;
}
