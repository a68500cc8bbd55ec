//! Fuzzes the proxy's two doors with real sockets on loopback (issue 18, item 4).
//!
//! The request path: arbitrary bytes, and valid requests mutated (bytes flipped,
//! tokens such as `\r\n`, `:` or `chunked` inserted, cut short, parts repeated), are
//! written to a live proxy. Properties: nothing panics; whatever comes back is a
//! well-formed HTTP response (HTTP/2 frames, after the HTTP/2 preface) or a close,
//! never a hang; the version behind is never
//! charged an error for a client's bytes (a client must not be able to fail a
//! canary); and a normal request is served afterwards.
//!
//! Answers from a version: arbitrary bytes, and valid answers mutated, as a version's
//! answer to a plain GET (the lean HTTP/1.1 path). Properties: the client gets
//! well-formed HTTP or a close, never a hang; the next request through the proxy gets
//! its own answer whole (nothing of a bad answer is left on a kept connection), and
//! so does one a client pipelined behind it, or behind a `HEAD` the same bytes answer;
//! the same bytes answering an HTTP/2 client's stream (read into hyper's form on the
//! lean path's connection) end in an answer or a failed stream, and the next request
//! gets its own answer.
//! Inputs worth keeping are byte files in `tests/data/fuzz/answers/`, replayed by
//! [`the_answer_corpus_replays_clean`].
//!
//! The admin API: arbitrary methods, paths, tokens and bodies (JSON with the API's own
//! field names, or raw bytes). Properties: nothing panics (`/healthz` still answers);
//! no answer is a 5xx; a 2xx comes only for a known route and method with the token;
//! an answer of 4xx leaves the routes exactly as they were, and its body is the API's
//! JSON error.
//!
//! Cases: 64 of each in CI (`PROPTEST_CASES` overrides; `scripts/fuzz-proxy.sh` runs
//! many more). Failures proptest finds are kept in `proptest-regressions/`; inputs
//! worth keeping for good are byte files in `tests/data/fuzz/proxy/`, replayed by
//! [`the_corpus_replays_clean`].

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::Config;
use rampart_adapters::proxy::admin::AdminServer;
use rampart_adapters::proxy::{Proxy, ProxyOptions, ProxyServer, RouteTable};
use rampart_adapters::telemetry::Telemetry;
use rampart_core::Variant;
use rampart_core::policy::ProxyLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The longest a case may wait for its answer or close before it counts as a hang.
const PATIENCE: Duration = Duration::from_secs(10);
const TOKEN: &str = "fuzz-token-0123456789abcdef";

/// One proxy (and admin API) for every case: a runtime on threads of its own.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    proxy: Proxy,
    addr: SocketAddr,
    admin_proxy: Proxy,
    admin: SocketAddr,
    _servers: (ProxyServer, ProxyServer, AdminServer),
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let (proxy, server, admin_proxy, admin_plane, admin) = runtime.block_on(async {
            let stable = common::backend("stable", Arc::new(Notify::new())).await;
            // Short timeouts: a case whose head never completes ends at the header
            // timeout, a kept-alive one at the idle timeout, so no case waits long.
            let limits = ProxyLimits {
                header_timeout: Duration::from_millis(50),
                idle_timeout: Duration::from_millis(50),
                max_header_bytes: 16 << 10,
                max_body_bytes: Some(64 << 10),
                ..ProxyLimits::default()
            };
            let (proxy, server) = Proxy::bind(
                "127.0.0.1:0".parse().unwrap(),
                ProxyOptions {
                    limits,
                    ..ProxyOptions::default()
                },
            )
            .await
            .unwrap();
            proxy.set_backends(Variant::Stable, &[stable]);
            let (admin_proxy, admin_plane) =
                Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
                    .await
                    .unwrap();
            admin_proxy.set_backends(Variant::Stable, &[stable]);
            let telemetry = Arc::new(Telemetry::new("fuzz", Arc::new(admin_proxy.clone())));
            let admin = AdminServer::bind(
                "127.0.0.1:0".parse().unwrap(),
                admin_proxy.clone(),
                TOKEN.into(),
                telemetry,
            )
            .await
            .unwrap();
            (proxy, server, admin_proxy, admin_plane, admin)
        });
        let addr = server.local_addr();
        let admin_addr = admin.local_addr();
        Fixture {
            runtime,
            proxy,
            addr,
            admin_proxy,
            admin: admin_addr,
            _servers: (server, admin_plane, admin),
        }
    })
}

fn config() -> Config {
    let mut config = Config {
        // Beside the test's data: proptest finds no lib.rs from an integration test.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::Direct(
                "tests/data/fuzz/proxy_fuzz.proptest-regressions",
            ),
        )),
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = 64;
    }
    config
}

// === the request path ===

/// Valid requests the mutations start from.
const SEEDS: &[&[u8]] = &[
    b"GET / HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET /a/b?c=d&e HTTP/1.1\r\nhost: x\r\nx-user: 7\r\ncookie: a=b; c=d\r\n\r\n",
    b"POST /p HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\n\r\nhello",
    b"POST /p HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HEAD / HTTP/1.1\r\nhost: x\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET http://elsewhere.example/x HTTP/1.1\r\nhost: x\r\n\r\n",
    b"PUT /u HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\ncontent-length: 3\r\n\r\nabc",
    b"GET / HTTP/1.0\r\nconnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: x\r\n\r\nGET /second HTTP/1.1\r\nhost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nhost: x\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n",
];

/// Tokens the mutations insert: the bytes HTTP parsers get wrong.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b":",
    b" ",
    b"\t",
    b"\0",
    b"\r\n\r\n",
    b"transfer-encoding: chunked\r\n",
    b"content-length: 99999999999999999999\r\n",
    b"content-length: 1, 2\r\n",
    b"ffffffffffffffffff\r\n",
    b"\r\n folded",
    b"x-rampart-load: 1\r\n",
    b"HTTP/1.1",
    b"%00%2e%2e/",
];

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, usize),
    Cut(usize),
    Repeat(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| Mutation::Flip(at, b)),
        (any::<usize>(), 0..TOKENS.len()).prop_map(|(at, t)| Mutation::Insert(at, t)),
        any::<usize>().prop_map(Mutation::Cut),
        (any::<usize>(), 1usize..64).prop_map(|(at, n)| Mutation::Repeat(at, n)),
    ]
}

fn mutate(seed: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    for m in mutations {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % (len + 1) };
        match *m {
            Mutation::Flip(i, b) if !bytes.is_empty() => {
                let i = i % bytes.len();
                bytes[i] = b;
            }
            Mutation::Flip(..) => {}
            Mutation::Insert(i, t) => {
                let i = at(i, bytes.len());
                bytes.splice(i..i, TOKENS[t].iter().copied());
            }
            Mutation::Cut(i) => bytes.truncate(at(i, bytes.len())),
            Mutation::Repeat(i, n) => {
                let i = at(i, bytes.len());
                let part: Vec<u8> = bytes[i..(i + n).min(bytes.len())].to_vec();
                bytes.splice(i..i, part);
            }
        }
    }
    bytes
}

fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..600),
        3 => (0..SEEDS.len(), proptest::collection::vec(mutation(), 1..6))
            .prop_map(|(seed, ms)| mutate(SEEDS[seed], &ms)),
    ]
}

/// Everything the proxy sent on a connection until it closed it.
#[derive(Debug)]
enum Outcome {
    /// The bytes, then a close (EOF or reset).
    Closed(Vec<u8>),
    /// No close within [`PATIENCE`].
    Hung(Vec<u8>),
}

async fn exchange(addr: SocketAddr, bytes: &[u8]) -> Outcome {
    let mut conn = TcpStream::connect(addr).await.unwrap();
    // The proxy may close before it has read everything: a failed write is fine.
    let _ = conn.write_all(bytes).await;
    let mut got = Vec::new();
    let mut chunk = [0u8; 8192];
    let read = async {
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    };
    match tokio::time::timeout(PATIENCE, read).await {
        Ok(()) => Outcome::Closed(got),
        Err(_) => Outcome::Hung(got),
    }
}

/// The HTTP/2 connection preface: bytes that begin with it are answered in HTTP/2.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Checks that `got` is a sequence of whole HTTP/2 frames, the first of them the
/// server's SETTINGS. No status is returned (HPACK is not decoded here): what is
/// checked is that the proxy spoke HTTP/2, and then closed.
fn frames(got: &[u8]) -> Result<Vec<u16>, String> {
    let mut rest = got;
    let mut first = true;
    while !rest.is_empty() {
        if rest.len() < 9 {
            return Err(format!("a frame header cut short: {rest:?}"));
        }
        let len =
            9 + (usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]));
        if rest.len() < len {
            return Err(format!("a frame cut short: {rest:?}"));
        }
        if first && rest[3] != 0x4 {
            return Err(format!("the first frame is not SETTINGS: {rest:?}"));
        }
        first = false;
        rest = &rest[len..];
    }
    Ok(Vec::new())
}

/// Checks that `got` is a sequence of well-formed HTTP/1.x responses (the last one
/// may be cut short by the close only after a complete head), returning their
/// statuses.
fn responses(got: &[u8]) -> Result<Vec<u16>, String> {
    let mut statuses = Vec::new();
    let mut rest = got;
    while !rest.is_empty() {
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(format!(
                "an incomplete head: {:?}",
                String::from_utf8_lossy(rest)
            ));
        };
        let head = std::str::from_utf8(&rest[..end]).map_err(|e| format!("head not UTF-8: {e}"))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = match status_line.as_bytes() {
            [
                b'H',
                b'T',
                b'T',
                b'P',
                b'/',
                b'1',
                b'.',
                b'0' | b'1',
                b' ',
                d @ ..,
            ] if d.len() >= 3 => std::str::from_utf8(&d[..3])
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
            _ => 0,
        };
        if !(100..=599).contains(&status) {
            return Err(format!("not a status line: {status_line:?}"));
        }
        let mut length = None;
        let mut chunked = false;
        for line in lines {
            let Some((name, value)) = line.split_once(':') else {
                return Err(format!("not a header line: {line:?}"));
            };
            let valid_name = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !valid_name {
                return Err(format!("not a header name: {name:?}"));
            }
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
                _ => {}
            }
        }
        statuses.push(status);
        rest = &rest[end + 4..];
        if chunked {
            // The backend's bodies have a length; a chunked answer ends the check.
            return Ok(statuses);
        }
        // A HEAD's answer has a length and no body: what follows is a new head.
        let body = length.unwrap_or(0);
        if rest.starts_with(b"HTTP/1.") || body == 0 {
            continue;
        }
        if rest.len() < body {
            // Cut by the close mid-body: allowed (the client's request failed).
            return Ok(statuses);
        }
        rest = &rest[body..];
    }
    Ok(statuses)
}

fn check_request(bytes: &[u8]) -> Result<(), TestCaseError> {
    let f = fixture();
    let errors_before = f.proxy.totals().stable.errors;
    let outcome = f.runtime.block_on(exchange(f.addr, bytes));
    let got = match outcome {
        Outcome::Closed(got) => got,
        Outcome::Hung(got) => {
            return Err(TestCaseError::fail(format!(
                "no close in {PATIENCE:?} (sent {:?}, got {:?})",
                String::from_utf8_lossy(bytes),
                String::from_utf8_lossy(&got)
            )));
        }
    };
    let parse = if bytes.starts_with(H2_PREFACE) {
        frames
    } else {
        responses
    };
    let statuses = parse(&got).map_err(|e| {
        TestCaseError::fail(format!(
            "{e} (sent {:?}, got {:?})",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&got)
        ))
    })?;
    prop_assert!(
        !statuses.iter().any(|s| *s == 500 || *s == 502),
        "the proxy failed a client's bytes as its own or upstream's error: {statuses:?} for {:?}",
        String::from_utf8_lossy(bytes)
    );
    prop_assert_eq!(
        f.proxy.totals().stable.errors,
        errors_before,
        "the version was charged an error for {:?}",
        String::from_utf8_lossy(bytes)
    );
    // Still serving.
    let after = f.runtime.block_on(exchange(
        f.addr,
        b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    ));
    match after {
        Outcome::Closed(got) => prop_assert!(
            got.starts_with(b"HTTP/1.1 200 ") && got.ends_with(b"stable"),
            "after {:?} a normal request got {:?}",
            String::from_utf8_lossy(bytes),
            String::from_utf8_lossy(&got)
        ),
        Outcome::Hung(_) => prop_assert!(false, "a normal request hung"),
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_get_a_well_formed_answer_or_a_close_and_the_proxy_serves_on(
        bytes in request_bytes()
    ) {
        check_request(&bytes)?;
    }
}

/// The corpus: inputs worth keeping (each once found something, or probes a parser's
/// classic mistake), replayed on every run.
#[test]
fn the_corpus_replays_clean() {
    replay("tests/data/fuzz/proxy", check_request);
}

/// Runs `check` on each byte file in `dir` (under the crate), of which there must be
/// at least ten.
fn replay(dir: &str, check: fn(&[u8]) -> Result<(), TestCaseError>) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= 10,
        "the corpus in {} is missing",
        dir.display()
    );
    for file in files {
        let bytes = std::fs::read(&file).unwrap();
        if let Err(e) = check(&bytes) {
            panic!("{}: {e}", file.display());
        }
    }
}

// === answers from a version ===

/// How long the scripted version keeps a connection with no request on it (as a
/// server closes idle connections): a close-delimited or cut-short answer ends then.
const VERSION_IDLE: Duration = Duration::from_millis(100);

/// A proxy in front of a version that answers `GET /fuzz` with the case's bytes
/// (whatever they are) and anything else with a good answer, keeping its connections
/// for more requests until they idle.
struct AnswerFixture {
    answer: Arc<std::sync::Mutex<Vec<u8>>>,
    addr: SocketAddr,
    _server: ProxyServer,
}

fn answer_fixture() -> &'static AnswerFixture {
    static FIXTURE: OnceLock<AnswerFixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let answer = Arc::new(std::sync::Mutex::new(Vec::new()));
        let f = fixture();
        let (addr, server) = f.runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let version = listener.local_addr().unwrap();
            let script = answer.clone();
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    let script = script.clone();
                    tokio::spawn(async move {
                        let mut pending = Vec::new();
                        loop {
                            let next = common::raw::read_head(&mut stream, &mut pending);
                            let Ok(Some(head)) = tokio::time::timeout(VERSION_IDLE, next).await
                            else {
                                return;
                            };
                            let bytes = if head.starts_with("GET /fuzz ")
                                || head.starts_with("HEAD /fuzz ")
                            {
                                script.lock().unwrap().clone()
                            } else {
                                b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ngood".to_vec()
                            };
                            if stream.write_all(&bytes).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            let (proxy, server) =
                Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
                    .await
                    .unwrap();
            proxy.set_backends(Variant::Stable, &[version]);
            (server.local_addr(), server)
        });
        AnswerFixture {
            answer,
            addr,
            _server: server,
        }
    })
}

/// Valid answers the mutations start from: each framing, informational answers,
/// answers without a body.
const ANSWER_SEEDS: &[&[u8]] = &[
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nx-t: 1\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\n\r\nended by the close",
    b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
    b"HTTP/1.1 503 Busy\r\ncontent-length: 0\r\nx-rampart-variant: canary\r\n\r\n",
];

/// An answer longer than the proxy's first reads (1 KiB), whose bytes past its
/// length, or past its last chunk, stay in the socket until read.
fn long_answer(chunked: bool, extra: usize) -> Vec<u8> {
    let body = vec![b'x'; 3000];
    let mut answer = if chunked {
        let mut a = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nbb8\r\n".to_vec();
        a.extend_from_slice(&body);
        a.extend_from_slice(b"\r\n0\r\n\r\n");
        a
    } else {
        let mut a = b"HTTP/1.1 200 OK\r\ncontent-length: 3000\r\n\r\n".to_vec();
        a.extend_from_slice(&body);
        a
    };
    answer.extend(std::iter::repeat_n(b'y', extra));
    answer
}

fn answer_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..300),
        4 => (0..ANSWER_SEEDS.len(), proptest::collection::vec(mutation(), 1..6))
            .prop_map(|(seed, ms)| mutate(ANSWER_SEEDS[seed], &ms)),
        1 => (any::<bool>(), 0usize..2000, proptest::collection::vec(mutation(), 0..3))
            .prop_map(|(chunked, extra, ms)| mutate(&long_answer(chunked, extra), &ms)),
    ]
}

/// A version's answer, whatever its bytes, reaches the client as well-formed HTTP
/// (framed as the proxy passes it, or a 502) or a close, never a hang; the next
/// request through the proxy gets its own answer, whole: nothing of a malformed or
/// over-long answer is left on an upstream connection the proxy keeps (no answer
/// desync between clients); and a request pipelined behind it on the same client
/// connection gets its own answer whole, or a close.
fn check_answer(answer: &[u8]) -> Result<(), TestCaseError> {
    // One case at a time: the scripted version is shared by the tests of this file,
    // which `cargo test` runs on threads at once (one's script would answer the
    // other's requests).
    static ONE_CASE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _case = ONE_CASE.lock().unwrap_or_else(|p| p.into_inner());
    let f = fixture();
    let a = answer_fixture();
    *a.answer.lock().unwrap() = answer.to_vec();
    let sent = String::from_utf8_lossy(answer);
    // How the answer is asked for, and how it is read off what the client got: what
    // follows it (`None`: the close came first).
    let asked: [(&str, &[u8], ReadFirst); 3] = [
        (
            "alone",
            b"GET /fuzz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            |got| one_answer(got).map(|()| None),
        ),
        // A next request pipelined behind it: the client and the proxy must agree
        // where the first answer ended.
        (
            "pipelined",
            b"GET /fuzz HTTP/1.1\r\nhost: x\r\n\r\nGET /good HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            first_answer,
        ),
        // The same bytes answering a HEAD: a head and no body, whatever they say.
        (
            "HEAD",
            b"HEAD /fuzz HTTP/1.1\r\nhost: x\r\n\r\nGET /good HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
            |got| heads_only(got).map(Some),
        ),
    ];
    // What the HTTP/1.1 client asking alone got, to hold the HTTP/2 client's to.
    let mut alone = None;
    for (what, request, read_first) in asked {
        let Outcome::Closed(got) = f.runtime.block_on(exchange(a.addr, request)) else {
            return Err(TestCaseError::fail(format!(
                "{what}: no close in {PATIENCE:?} for the answer {sent:?}"
            )));
        };
        if what == "alone" {
            alone = plain_answer(&got);
        }
        let rest = read_first(&got).map_err(|e| {
            TestCaseError::fail(format!(
                "{what}: {e} (the version sent {sent:?}, the client got {:?})",
                String::from_utf8_lossy(&got)
            ))
        })?;
        // The connection went on: the next answer is the good one, whole.
        if let Some(rest) = rest.filter(|r| !r.is_empty()) {
            prop_assert!(
                is_good(rest),
                "{}: after the answer {:?} the next answer was {:?}",
                what,
                sent,
                String::from_utf8_lossy(rest)
            );
        }
        next_request_is_good(a.addr, what, &sent)?;
    }
    // The same bytes answering an HTTP/2 client's stream, which the proxy reads into
    // hyper's form (not byte for byte): an answer or a failed stream, never a hang;
    // and the next request still gets its own answer, whole.
    let h2 = f
        .runtime
        .block_on(async { tokio::time::timeout(PATIENCE, h2_fuzz(a.addr)).await });
    let Ok(h2) = h2 else {
        return Err(TestCaseError::fail(format!(
            "HTTP/2: no end in {PATIENCE:?} for the answer {sent:?}"
        )));
    };
    // Both paths read an answer the version gave alike: the same status, and, where
    // the HTTP/1.1 client got its body whole by its length or the close, an answer
    // with the same body (not a failed stream). (Where it got chunks, or a body cut
    // short, the HTTP/2 stream may fail instead. The proxy's own 502 on either side
    // is left out: this version closes a connection idle for 100 ms, which a loaded
    // machine can make it do as a request arrives on a new one.)
    const OURS: &[u8] = b"rampart: upstream unavailable\n";
    let h1_ours = matches!(&alone, Some((502, Some(b))) if b == OURS);
    let h2_ours = matches!(&h2, Some((502, b)) if b == OURS);
    if !h1_ours && !h2_ours {
        match (&alone, &h2) {
            (Some((status, Some(body))), h2) => prop_assert_eq!(
                Some((*status, body.clone())),
                h2.clone(),
                "HTTP/2: the answer for the version's {:?}",
                sent
            ),
            (Some((status, None)), Some((h2_status, _))) => prop_assert_eq!(
                status,
                h2_status,
                "HTTP/2: the status for the version's {:?}",
                sent
            ),
            _ => {}
        }
    }
    next_request_is_good(a.addr, "HTTP/2", &sent)
}

/// The next request through the proxy at `addr` gets its own answer, whole: nothing of
/// the answer `sent` (asked for as `what`) is left on an upstream connection the proxy
/// keeps.
fn next_request_is_good(addr: SocketAddr, what: &str, sent: &str) -> Result<(), TestCaseError> {
    match fixture().runtime.block_on(exchange(
        addr,
        b"GET /good HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )) {
        Outcome::Closed(got) => prop_assert!(
            is_good(&got),
            "{}: after the answer {:?} the next request got {:?}",
            what,
            sent,
            String::from_utf8_lossy(&got)
        ),
        Outcome::Hung(_) => prop_assert!(false, "{}: the next request hung", what),
    }
    Ok(())
}

/// `GET /fuzz` from an HTTP/2 client with prior knowledge, read to its end: its status
/// and body, or `None` when the stream failed.
async fn h2_fuzz(addr: SocketAddr) -> Option<(u16, Vec<u8>)> {
    use http_body_util::BodyExt;
    let mut send = common::h2c(addr).await;
    let req = hyper::Request::get("http://svc.test/fuzz")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.ok()?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.ok()?.to_bytes().to_vec();
    Some((status, body))
}

/// The final answer an HTTP/1.1 client got (informational heads skipped): its status,
/// and its body when it is framed by a length or by the close (`None` for chunks,
/// or for an answer without a body).
fn plain_answer(got: &[u8]) -> Option<(u16, Option<Vec<u8>>)> {
    let mut at = 0;
    loop {
        let end = at + got[at..].windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = std::str::from_utf8(&got[at..end]).ok()?;
        let status: u16 = head.get(9..12)?.parse().ok()?;
        if (100..200).contains(&status) {
            at = end;
            continue;
        }
        let field = |name: &str| {
            head.split("\r\n").find_map(|line| {
                let (n, v) = line.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        };
        let body = if status == 204 || status == 304 || field("transfer-encoding").is_some() {
            None
        } else if let Some(length) = field("content-length") {
            let length: usize = length.parse().ok()?;
            got.get(end..end + length).map(<[u8]>::to_vec)
        } else {
            Some(got[end..].to_vec())
        };
        return Some((status, body));
    }
}

/// Reads a fuzzed answer off the start of what a client got (see `check_answer`).
type ReadFirst = fn(&[u8]) -> Result<Option<&[u8]>, String>;

/// Whether `got` is the scripted version's good answer, whole and alone.
fn is_good(got: &[u8]) -> bool {
    got.starts_with(b"HTTP/1.1 200 ") && got.ends_with(b"\r\n\r\ngood") && one_answer(got).is_ok()
}

/// Reads the answer to a HEAD off the start of `got`: informational heads, then a
/// final head, with no body whatever its fields say; what follows it.
fn heads_only(got: &[u8]) -> Result<&[u8], String> {
    let mut rest = got;
    loop {
        if rest.is_empty() {
            return Ok(rest);
        }
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err("an incomplete head".into());
        };
        let status = rest
            .strip_prefix(b"HTTP/1.1 ")
            .and_then(|r| r.get(..3))
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| d.parse::<u16>().ok())
            .ok_or("not a status line")?;
        rest = &rest[end + 4..];
        if !(100..200).contains(&status) {
            return Ok(rest);
        }
    }
}

/// The answers' corpus: a version's answers worth keeping (each found a difference
/// between how the proxy and a client read an answer, or probes one), replayed on
/// every run.
#[test]
fn the_answer_corpus_replays_clean() {
    replay("tests/data/fuzz/answers", check_answer);
}

/// Checks that `got` is what a client that asked `GET` with `connection: close` may
/// get: informational answers, then one final answer framed by its head (a length,
/// chunks to their last and the trailers, or the close; none for 204 and 304), with
/// nothing after it; or a close with nothing, or cut by the close mid-body.
fn one_answer(got: &[u8]) -> Result<(), String> {
    match first_answer(got)? {
        Some(rest) if !rest.is_empty() => Err(format!(
            "bytes after the answer: {:?}",
            String::from_utf8_lossy(rest)
        )),
        _ => Ok(()),
    }
}

/// Reads informational answers, then one final answer framed by its head, off the
/// start of `got`: what follows it, or `None` when the close came first (nothing at
/// all, or cut mid-body).
fn first_answer(got: &[u8]) -> Result<Option<&[u8]>, String> {
    let mut rest = got;
    loop {
        if rest.is_empty() {
            return Ok(None);
        }
        let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err("an incomplete head".into());
        };
        // Field values may hold any byte but controls (obs-text).
        let head = String::from_utf8_lossy(&rest[..end]);
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not a status line: {status_line:?}"))?;
        let mut length = None;
        // The final transfer coding, when there is one (RFC 9112 6.3: chunked ends
        // the body by its chunks, any other by the close).
        let mut coding: Option<String> = None;
        let mut closes = false;
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| format!("not a header line: {line:?}"))?;
            match name.to_ascii_lowercase().as_str() {
                "content-length" => {
                    if length.is_some() {
                        return Err("two lengths".into());
                    }
                    length = Some(
                        value
                            .trim()
                            .parse::<usize>()
                            .map_err(|e| format!("length: {e}"))?,
                    );
                }
                "transfer-encoding" => {
                    let last = value.rsplit(',').map(str::trim).find(|t| !t.is_empty());
                    coding = Some(last.unwrap_or("").to_ascii_lowercase());
                }
                "connection" => closes |= value.to_ascii_lowercase().contains("close"),
                _ => {}
            }
        }
        rest = &rest[end + 4..];
        if (100..200).contains(&status) {
            continue;
        }
        if coding.is_some() && length.is_some() {
            return Err("both a length and a transfer coding".into());
        }
        let body_end = if status == 204 || status == 304 {
            Some(0)
        } else if coding.as_deref() == Some("chunked") {
            chunked_end(rest)?
        } else if coding.is_some() {
            if !closes {
                return Err("a body ended by the close without `connection: close`".into());
            }
            Some(rest.len())
        } else {
            match length {
                Some(n) if rest.len() >= n => Some(n),
                // Cut by the close mid-body.
                Some(_) => None,
                None if !closes => {
                    return Err("a body ended by the close without `connection: close`".into());
                }
                None => Some(rest.len()),
            }
        };
        return Ok(body_end.map(|n| &rest[n..]));
    }
}

/// Where a chunked body that starts `body` ends (after its trailers), `None` when the
/// close cut it.
fn chunked_end(body: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(eol) = body[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        // Extensions may hold any byte but CR and LF: the size is read as bytes.
        let line = &body[at..at + eol];
        let size_part = line
            .split(|b| *b == b';')
            .next()
            .unwrap_or(b"")
            .trim_ascii();
        let size = std::str::from_utf8(size_part)
            .ok()
            .and_then(|t| usize::from_str_radix(t, 16).ok())
            .ok_or_else(|| format!("chunk size {:?}", String::from_utf8_lossy(line)))?;
        at += eol + 2;
        if size == 0 {
            // Trailers, to the empty line.
            loop {
                let Some(eol) = body[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                at += eol + 2;
                if eol == 0 {
                    return Ok(Some(at));
                }
            }
        }
        let Some(end) = at.checked_add(size).and_then(|e| e.checked_add(2)) else {
            return Ok(None);
        };
        if body.len() < end {
            return Ok(None);
        }
        if &body[end - 2..end] != b"\r\n" {
            return Err("a chunk without its CRLF".into());
        }
        at = end;
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_answer_reaches_the_client_framed_or_closed_and_the_next_request_gets_its_own(
        answer in answer_bytes()
    ) {
        check_answer(&answer)?;
    }
}

// === the admin API ===

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/healthz"),
    ("GET", "/metrics"),
    ("GET", "/state"),
    ("GET", "/counters"),
    ("PUT", "/weight"),
    ("PUT", "/backends/stable"),
    ("PUT", "/backends/canary"),
    ("PUT", "/salt"),
    ("PUT", "/uncounted"),
    ("POST", "/drain"),
];

const FIELDS: &[&str] = &[
    "weight",
    "matches",
    "endpoints",
    "salt",
    "token",
    "variant",
    "timeout_ms",
    "header",
    "values",
];

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        (-1000.0f64..1000.0).prop_map(serde_json::Value::from),
        prop_oneof![
            Just("stable".to_string()),
            Just("canary".to_string()),
            Just("127.0.0.1:9".to_string()),
            Just("[::1]:80".to_string()),
            Just("50%".to_string()),
            "[ -~]{0,12}",
        ]
        .prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map(
                prop_oneof![
                    (0..FIELDS.len()).prop_map(|i| FIELDS[i].to_string()),
                    "[a-z_]{1,8}"
                ],
                inner,
                0..4
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
struct AdminCase {
    method: String,
    path: String,
    auth: Option<String>,
    body: Vec<u8>,
    /// The body is one the route accepts (so with the token, it must succeed).
    valid_body: bool,
}

/// A body `path` accepts.
fn valid_body(path: &str) -> BoxedStrategy<Vec<u8>> {
    let json = |v: serde_json::Value| v.to_string().into_bytes();
    match path {
        "/weight" => (0u8..=100)
            .prop_map(move |w| json(serde_json::json!({"weight": w, "matches": []})))
            .boxed(),
        "/backends/stable" | "/backends/canary" => (1u16..65535)
            .prop_map(move |port| {
                json(serde_json::json!({"endpoints": [format!("127.0.0.1:{port}")]}))
            })
            .boxed(),
        "/salt" => "[a-z-]{0,8}"
            .prop_map(move |salt| json(serde_json::json!({"salt": salt})))
            .boxed(),
        "/uncounted" => "[0-9a-f]{0,8}"
            .prop_map(move |token| json(serde_json::json!({"token": token})))
            .boxed(),
        "/drain" => Just(json(
            serde_json::json!({"variant": "stable", "timeout_ms": 0}),
        ))
        .boxed(),
        _ => Just(Vec::new()).boxed(),
    }
}

fn admin_case() -> impl Strategy<Value = AdminCase> {
    let any_method = prop_oneof![
        4 => prop_oneof![
            Just("GET"), Just("PUT"), Just("POST"), Just("DELETE"), Just("PATCH"),
            Just("HEAD"), Just("OPTIONS")
        ].prop_map(str::to_string),
        1 => "[A-Z]{1,8}",
    ];
    let route = prop_oneof![
        4 => (0..ROUTES.len()).prop_map(|i| (ROUTES[i].0.to_string(), ROUTES[i].1.to_string())),
        1 => (any_method.clone(), 0..ROUTES.len()).prop_map(|(m, i)| (m, ROUTES[i].1.to_string())),
        1 => (any_method.clone(), 0..ROUTES.len(), "[a-zA-Z0-9%/._~-]{1,12}")
            .prop_map(|(m, i, tail)| (m, format!("{}{tail}", ROUTES[i].1))),
        1 => (any_method, "/[a-zA-Z0-9%/._~?=&-]{0,24}"),
    ];
    let auth = prop_oneof![
        3 => Just(Some(TOKEN.to_string())),
        1 => Just(None),
        1 => "[ -~]{0,30}".prop_map(Some),
    ];
    (route, auth).prop_flat_map(|((method, path), auth)| {
        let body = prop_oneof![
            2 => valid_body(&path).prop_map(|b| (b, true)),
            2 => json_value().prop_map(|v| (v.to_string().into_bytes(), false)),
            1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(|b| (b, false)),
        ];
        (Just(method), Just(path), Just(auth), body).prop_map(
            |(method, path, auth, (body, valid_body))| AdminCase {
                method,
                path,
                auth,
                body,
                valid_body,
            },
        )
    })
}

/// Sends one admin request; the status and body.
async fn admin_call(addr: SocketAddr, case: &AdminCase) -> (u16, Vec<u8>) {
    let mut req = format!(
        "{} {} HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n",
        case.method, case.path
    );
    if let Some(token) = &case.auth {
        req.push_str(&format!("authorization: Bearer {token}\r\n"));
    }
    req.push_str(&format!("content-length: {}\r\n\r\n", case.body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(&case.body);
    match exchange(addr, &bytes).await {
        Outcome::Closed(got) => {
            let status = responses(&got)
                .ok()
                .and_then(|s| s.first().copied())
                .unwrap_or(0);
            let body = got
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map_or(Vec::new(), |end| got[end + 4..].to_vec());
            (status, body)
        }
        Outcome::Hung(_) => (0, Vec::new()),
    }
}

fn state(proxy: &Proxy) -> RouteTable {
    proxy.table()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn junk_to_the_admin_api_gets_a_4xx_and_changes_nothing(case in admin_case()) {
        let f = fixture();
        let before = state(&f.admin_proxy);
        let (status, body) = f.runtime.block_on(admin_call(f.admin, &case));
        prop_assert!(status != 0, "no well-formed answer, or a hang: {case:?}");
        prop_assert!(status < 500, "{status} for {case:?}: {}", String::from_utf8_lossy(&body));
        let known = ROUTES
            .iter()
            .any(|(m, p)| *m == case.method && *p == case.path);
        let authorized = case.auth.as_deref() == Some(TOKEN);
        let open = matches!(case.path.as_str(), "/healthz" | "/metrics") && case.method == "GET";
        if known && authorized && case.valid_body {
            prop_assert!((200..300).contains(&status), "{status} for a valid {case:?}: {}", String::from_utf8_lossy(&body));
        }
        if (200..300).contains(&status) {
            prop_assert!(known && (authorized || open), "{status} for {case:?}");
        } else {
            prop_assert!((400..500).contains(&status), "{status} for {case:?}");
            prop_assert_eq!(&state(&f.admin_proxy), &before, "a refused request changed the routes: {:?}", case);
            if case.method != "HEAD" {
                let error: serde_json::Value = serde_json::from_slice(&body)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&body))))?;
                prop_assert!(error["error"]["code"].is_string(), "{error}");
            }
        }
        // Still up.
        let health = AdminCase {
            method: "GET".into(),
            path: "/healthz".into(),
            auth: None,
            body: Vec::new(),
            valid_body: true,
        };
        prop_assert_eq!(f.runtime.block_on(admin_call(f.admin, &health)).0, 200);
    }
}
