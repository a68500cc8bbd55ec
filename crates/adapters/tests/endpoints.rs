//! Pins rampart's small HTTP endpoints byte for byte on the wire (the flag endpoint,
//! `/metrics`, the proxy's admin API): status line, headers and body for the routes,
//! the errors and the odd requests. It must not test what they do behind the answer;
//! each module's own tests do that.
//!
//! The answers were captured once from the hand-written hyper servers, before they
//! moved to axum, so any change a user could see fails here. Only `date` is dropped,
//! and header lines are compared in sorted order.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::net::SocketAddr;
use std::sync::Arc;

use rampart_adapters::flags::FlagServer;
use rampart_adapters::proxy::admin::AdminServer;
use rampart_adapters::proxy::{Proxy, ProxyOptions, Totals};
use rampart_adapters::telemetry::{MetricsServer, Telemetry};
use rampart_core::Weight;
use rampart_core::flags::{FlagDef, FlagState};
use rampart_core::metrics::IntervalSample;
use rampart_core::ports::{BoxFuture, FlagChange, FlagStore, PortError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request` (its head and body, as written) on a fresh connection and returns
/// the whole answer, its headers in order and without `date`.
async fn exchange(addr: SocketAddr, head: &str, body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{head}\r\nhost: test\r\nconnection: close\r\n");
    if !body.is_empty() {
        request.push_str(&format!("content-length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    without_date_in_order(&String::from_utf8(answer).unwrap())
}

/// The answer with its header lines sorted and `date` dropped: the order of
/// different fields means nothing in HTTP (hyper and axum add `content-length` and
/// `connection` in different orders), their names and values do.
fn without_date_in_order(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap();
    let mut headers: Vec<&str> = lines
        .filter(|line| !line.to_ascii_lowercase().starts_with("date:"))
        .collect();
    headers.sort_unstable();
    format!("{status}\r\n{}\r\n\r\n{body}", headers.join("\r\n"))
}

/// `exchange` for several requests, each answer beside its request.
async fn transcript(addr: SocketAddr, requests: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (head, body) in requests {
        out.push_str(&format!(
            ">>> {head} {body}\n{}\n",
            exchange(addr, head, body).await
        ));
    }
    out
}

/// One service's flags, or a store that cannot be reached.
struct Flags(Option<Vec<FlagState>>);

impl FlagStore for Flags {
    fn define<'a>(
        &'a self,
        _: &'a str,
        _: &'a [FlagDef],
        _: rampart_core::Millis,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }

    fn flags<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<Vec<FlagState>, PortError>> {
        Box::pin(async {
            self.0
                .clone()
                .ok_or_else(|| PortError::new("database is locked"))
        })
    }

    fn set_flag<'a>(
        &'a self,
        _: &'a str,
        _: &'a FlagChange,
    ) -> BoxFuture<'a, Result<FlagState, PortError>> {
        Box::pin(async { Err(PortError::new("read-only")) })
    }
}

struct Fixed;

impl Totals for Fixed {
    fn totals(&self) -> IntervalSample {
        let mut s = IntervalSample::default();
        s.canary.requests = 3;
        s.canary.latency.record_micros(2_000);
        s
    }
}

/// Compares with the pinned answers (line ends as `\n`, to keep the literals
/// readable). `RAMPART_PRINT_GOLDEN=1` prints instead, to pin a deliberate change.
fn check(name: &str, got: &str, want: &str) {
    let got = got.replace("\r\n", "\n");
    if std::env::var_os("RAMPART_PRINT_GOLDEN").is_some() {
        println!("==== {name}\n{got}====");
        return;
    }
    assert_eq!(got, want, "{name} answered differently");
}

#[tokio::test]
async fn the_flag_endpoint_answers_as_it_always_has() {
    let beta = FlagState {
        name: "beta".into(),
        default: false,
        ramp: Weight::from_percent(25).unwrap(),
        allow: vec!["alice".into()],
        changed_by: String::new(),
        changed_at: 0,
    };
    let store = Arc::new(Flags(Some(vec![beta])));
    let server = FlagServer::bind("127.0.0.1:0".parse().unwrap(), store, "shop")
        .await
        .unwrap();
    let got = transcript(
        server.local_addr(),
        &[
            ("GET /flags HTTP/1.1", ""),
            ("GET /flags/ HTTP/1.1", ""),
            ("GET /flags/beta?key=alice HTTP/1.1", ""),
            ("GET /flags/beta?key=user-1 HTTP/1.1", ""),
            ("GET /flags/beta?key=user-2 HTTP/1.1", ""),
            ("GET /flags/beta?key=al%69ce&key=bob HTTP/1.1", ""),
            ("GET /flags/beta?k%65y=al%69ce HTTP/1.1", ""),
            ("GET /flags/beta?key=alice+x&other HTTP/1.1", ""),
            ("GET /flags/beta HTTP/1.1", ""),
            ("GET /flags//beta HTTP/1.1", ""),
            ("GET /flagsbeta HTTP/1.1", ""),
            ("GET /flags/be%74a HTTP/1.1", ""),
            ("GET /flags/beta/x HTTP/1.1", ""),
            ("GET /flags/nope HTTP/1.1", ""),
            ("GET /other HTTP/1.1", ""),
            ("GET / HTTP/1.1", ""),
            ("POST /flags HTTP/1.1", "{}"),
            ("HEAD /flags HTTP/1.1", ""),
            ("PUT /other HTTP/1.1", ""),
        ],
    )
    .await;
    check("flags", &got, FLAGS);
    server.close().await;

    let down = FlagServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        Arc::new(Flags(None)),
        "shop",
    )
    .await
    .unwrap();
    let got = transcript(
        down.local_addr(),
        &[
            ("GET /flags HTTP/1.1", ""),
            ("GET /flags/beta HTTP/1.1", ""),
            ("GET /other HTTP/1.1", ""),
        ],
    )
    .await;
    check("flags, store down", &got, FLAGS_DOWN);
}

#[tokio::test]
async fn metrics_answers_as_it_always_has() {
    let telemetry = Arc::new(Telemetry::new("shop", Arc::new(Fixed)));
    let server = MetricsServer::bind("127.0.0.1:0".parse().unwrap(), telemetry.clone())
        .await
        .unwrap();
    let body = telemetry.render();
    let got = transcript(
        server.local_addr(),
        &[
            ("GET /metrics HTTP/1.1", ""),
            ("POST /metrics HTTP/1.1", "x"),
            ("HEAD /metrics HTTP/1.1", ""),
            ("GET / HTTP/1.1", ""),
            ("GET /metrics/ HTTP/1.1", ""),
            ("DELETE /x HTTP/1.1", ""),
        ],
    )
    .await
    .replace(&body, "{EXPOSITION}")
    .replace(
        &format!("content-length: {}\r", body.len()),
        "content-length: {N}\r",
    );
    check("metrics", &got, METRICS);
}

#[tokio::test]
async fn the_proxy_admin_api_answers_as_it_always_has() {
    let (proxy, _serving) = Proxy::bind("127.0.0.1:0".parse().unwrap(), ProxyOptions::default())
        .await
        .unwrap();
    let telemetry = Arc::new(Telemetry::new("edge", Arc::new(Fixed)));
    let body = telemetry.render();
    let admin = AdminServer::bind(
        "127.0.0.1:0".parse().unwrap(),
        proxy,
        "t0ken".into(),
        telemetry,
    )
    .await
    .unwrap();
    let auth = "authorization: Bearer t0ken";
    let with = |line: &str| format!("{line}\r\n{auth}");
    let requests: Vec<(String, &str)> = vec![
        ("GET /healthz HTTP/1.1".into(), ""),
        ("GET /healthz HTTP/1.1".into(), "{"),
        ("HEAD /healthz HTTP/1.1".into(), ""),
        (with("HEAD /healthz HTTP/1.1"), ""),
        ("POST /healthz HTTP/1.1".into(), ""),
        ("GET /metrics HTTP/1.1".into(), ""),
        ("GET /state HTTP/1.1".into(), ""),
        (with("GET /state HTTP/1.1"), ""),
        (with("GET /state HTTP/1.1"), "{"),
        (with("HEAD /state HTTP/1.1"), ""),
        (with("PUT /weight HTTP/1.1"), r#"{"weight": 20}"#),
        (with("PUT /weight HTTP/1.1"), r#"{"weight": 120}"#),
        (
            with("PUT /weight HTTP/1.1"),
            r#"{"weight": 5, "matches": 3}"#,
        ),
        (
            with("PUT /weight HTTP/1.1"),
            r#"{"weight": 5, "matches": [{"source": {"header": "x-beta"}, "values": ["1"]}]}"#,
        ),
        (with("PUT /weight HTTP/1.1"), ""),
        (with("POST /weight HTTP/1.1"), r#"{"weight": 20}"#),
        (
            with("PUT /backends/canary HTTP/1.1"),
            r#"{"endpoints": ["127.0.0.1:9"]}"#,
        ),
        (with("PUT /backends/blue HTTP/1.1"), r#"{"endpoints": []}"#),
        (with("PUT /backends/ HTTP/1.1"), ""),
        (with("PUT /backends/canary/x HTTP/1.1"), ""),
        (with("PUT /backends/st%61ble HTTP/1.1"), ""),
        (
            with("PUT /backends/stable HTTP/1.1"),
            r#"{"endpoints": ["nope"]}"#,
        ),
        (with("PUT /backends/stable HTTP/1.1"), "{}"),
        (with("GET /backends/stable HTTP/1.1"), "{}"),
        (with("GET /nowhere HTTP/1.1"), "{"),
        (with("GET /nowhere HTTP/1.1"), ""),
        ("GET /nowhere HTTP/1.1".into(), ""),
        (
            "GET /state HTTP/1.1\r\nauthorization: bearer t0ken".into(),
            "",
        ),
        (
            "GET /state HTTP/1.1\r\nauthorization: Bearer t0ke".into(),
            "",
        ),
        (
            "GET /state HTTP/1.1\r\nauthorization: Bearer t0ken ".into(),
            "",
        ),
    ];
    let requests: Vec<(&str, &str)> = requests.iter().map(|(h, b)| (h.as_str(), *b)).collect();
    let got = transcript(admin.local_addr(), &requests)
        .await
        .replace(&body, "{EXPOSITION}")
        .replace(
            &format!("content-length: {}\r", body.len()),
            "content-length: {N}\r",
        );
    check("admin", &got, ADMIN);
}

const FLAGS: &str = r##">>> GET /flags HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 90
content-type: application/json

{"flags":[{"allow":["alice"],"default":false,"name":"beta","ramp":25.0}],"service":"shop"}
>>> GET /flags/ HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 90
content-type: application/json

{"flags":[{"allow":["alice"],"default":false,"name":"beta","ramp":25.0}],"service":"shop"}
>>> GET /flags/beta?key=alice HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 46
content-type: application/json

{"name":"beta","on":true,"reason":"allowlist"}
>>> GET /flags/beta?key=user-1 HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 41
content-type: application/json

{"name":"beta","on":true,"reason":"ramp"}
>>> GET /flags/beta?key=user-2 HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 45
content-type: application/json

{"name":"beta","on":false,"reason":"default"}
>>> GET /flags/beta?key=al%69ce&key=bob HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 45
content-type: application/json

{"name":"beta","on":false,"reason":"default"}
>>> GET /flags/beta?k%65y=al%69ce HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 46
content-type: application/json

{"name":"beta","on":true,"reason":"allowlist"}
>>> GET /flags/beta?key=alice+x&other HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 45
content-type: application/json

{"name":"beta","on":false,"reason":"default"}
>>> GET /flags/beta HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 45
content-type: application/json

{"name":"beta","on":false,"reason":"default"}
>>> GET /flags//beta HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 45
content-type: application/json

{"name":"beta","on":false,"reason":"default"}
>>> GET /flagsbeta HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 45
content-type: application/json

{"name":"beta","on":false,"reason":"default"}
>>> GET /flags/be%74a HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 71
content-type: application/json

{"error":{"code":"unknown_flag","message":"shop has no flag `be%74a`"}}
>>> GET /flags/beta/x HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 71
content-type: application/json

{"error":{"code":"unknown_flag","message":"shop has no flag `beta/x`"}}
>>> GET /flags/nope HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 69
content-type: application/json

{"error":{"code":"unknown_flag","message":"shop has no flag `nope`"}}
>>> GET /other HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 84
content-type: application/json

{"error":{"code":"not_found","message":"try GET /flags or GET /flags/NAME?key=KEY"}}
>>> GET / HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 84
content-type: application/json

{"error":{"code":"not_found","message":"try GET /flags or GET /flags/NAME?key=KEY"}}
>>> POST /flags HTTP/1.1 {}
HTTP/1.1 405 Method Not Allowed
connection: close
content-length: 113
content-type: application/json

{"error":{"code":"method_not_allowed","message":"flags are read with GET; change them with `rampart flags set`"}}
>>> HEAD /flags HTTP/1.1 
HTTP/1.1 405 Method Not Allowed
connection: close
content-length: 113
content-type: application/json


>>> PUT /other HTTP/1.1 
HTTP/1.1 405 Method Not Allowed
connection: close
content-length: 113
content-type: application/json

{"error":{"code":"method_not_allowed","message":"flags are read with GET; change them with `rampart flags set`"}}
"##;
const FLAGS_DOWN: &str = r##">>> GET /flags HTTP/1.1 
HTTP/1.1 503 Service Unavailable
connection: close
content-length: 69
content-type: application/json

{"error":{"code":"store_unavailable","message":"database is locked"}}
>>> GET /flags/beta HTTP/1.1 
HTTP/1.1 503 Service Unavailable
connection: close
content-length: 69
content-type: application/json

{"error":{"code":"store_unavailable","message":"database is locked"}}
>>> GET /other HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 84
content-type: application/json

{"error":{"code":"not_found","message":"try GET /flags or GET /flags/NAME?key=KEY"}}
"##;
const METRICS: &str = r##">>> GET /metrics HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: {N}
content-type: text/plain; version=0.0.4

{EXPOSITION}
>>> POST /metrics HTTP/1.1 x
HTTP/1.1 200 OK
connection: close
content-length: {N}
content-type: text/plain; version=0.0.4

{EXPOSITION}
>>> HEAD /metrics HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: {N}
content-type: text/plain; version=0.0.4


>>> GET / HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 13

see /metrics

>>> GET /metrics/ HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 13

see /metrics

>>> DELETE /x HTTP/1.1 
HTTP/1.1 404 Not Found
connection: close
content-length: 13

see /metrics

"##;
const ADMIN: &str = r##">>> GET /healthz HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: 11
content-type: application/json

{"ok":true}
>>> GET /healthz HTTP/1.1 {
HTTP/1.1 200 OK
connection: close
content-length: 11
content-type: application/json

{"ok":true}
>>> HEAD /healthz HTTP/1.1 
HTTP/1.1 401 Unauthorized
connection: close
content-length: 121
content-type: application/json


>>> HEAD /healthz HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 404 Not Found
connection: close
content-length: 229
content-type: application/json


>>> POST /healthz HTTP/1.1 
HTTP/1.1 401 Unauthorized
connection: close
content-length: 121
content-type: application/json

{"error":{"code":"unauthorized","message":"send Authorization: Bearer TOKEN (the token rampart proxy was started with)"}}
>>> GET /metrics HTTP/1.1 
HTTP/1.1 200 OK
connection: close
content-length: {N}
content-type: text/plain; version=0.0.4

{EXPOSITION}
>>> GET /state HTTP/1.1 
HTTP/1.1 401 Unauthorized
connection: close
content-length: 121
content-type: application/json

{"error":{"code":"unauthorized","message":"send Authorization: Bearer TOKEN (the token rampart proxy was started with)"}}
>>> GET /state HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 200 OK
connection: close
content-length: 51
content-type: application/json

{"canary":[],"matches":[],"stable":[],"weight":0.0}
>>> GET /state HTTP/1.1
authorization: Bearer t0ken {
HTTP/1.1 400 Bad Request
connection: close
content-length: 88
content-type: application/json

{"error":{"code":"bad_json","message":"EOF while parsing an object at line 1 column 1"}}
>>> HEAD /state HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 404 Not Found
connection: close
content-length: 229
content-type: application/json


>>> PUT /weight HTTP/1.1
authorization: Bearer t0ken {"weight": 20}
HTTP/1.1 200 OK
connection: close
content-length: 15
content-type: application/json

{"weight":20.0}
>>> PUT /weight HTTP/1.1
authorization: Bearer t0ken {"weight": 120}
HTTP/1.1 400 Bad Request
connection: close
content-length: 155
content-type: application/json

{"error":{"code":"bad_weight","message":"`weight` must be a percentage from 0 to 100: weight 120 is out of range; a weight is a percentage from 0 to 100"}}
>>> PUT /weight HTTP/1.1
authorization: Bearer t0ken {"weight": 5, "matches": 3}
HTTP/1.1 400 Bad Request
connection: close
content-length: 91
content-type: application/json

{"error":{"code":"bad_matches","message":"invalid type: integer `3`, expected a sequence"}}
>>> PUT /weight HTTP/1.1
authorization: Bearer t0ken {"weight": 5, "matches": [{"source": {"header": "x-beta"}, "values": ["1"]}]}
HTTP/1.1 200 OK
connection: close
content-length: 14
content-type: application/json

{"weight":5.0}
>>> PUT /weight HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 400 Bad Request
connection: close
content-length: 121
content-type: application/json

{"error":{"code":"bad_weight","message":"`weight` must be a percentage from 0 to 100: invalid type: null, expected f64"}}
>>> POST /weight HTTP/1.1
authorization: Bearer t0ken {"weight": 20}
HTTP/1.1 404 Not Found
connection: close
content-length: 229
content-type: application/json

{"error":{"code":"not_found","message":"routes: GET /healthz, GET /metrics, GET /state, GET /counters, POST /counters/measured, PUT /weight, PUT /backends/{stable|canary}, PUT /salt, PUT /uncounted, POST /drain, POST /shutdown"}}
>>> PUT /backends/canary HTTP/1.1
authorization: Bearer t0ken {"endpoints": ["127.0.0.1:9"]}
HTTP/1.1 200 OK
connection: close
content-length: 109
content-type: application/json

{"canary":["127.0.0.1:9"],"matches":[{"source":{"header":"x-beta"},"values":["1"]}],"stable":[],"weight":5.0}
>>> PUT /backends/blue HTTP/1.1
authorization: Bearer t0ken {"endpoints": []}
HTTP/1.1 404 Not Found
connection: close
content-length: 79
content-type: application/json

{"error":{"code":"unknown_variant","message":"`blue` is not stable or canary"}}
>>> PUT /backends/ HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 404 Not Found
connection: close
content-length: 75
content-type: application/json

{"error":{"code":"unknown_variant","message":"`` is not stable or canary"}}
>>> PUT /backends/canary/x HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 404 Not Found
connection: close
content-length: 83
content-type: application/json

{"error":{"code":"unknown_variant","message":"`canary/x` is not stable or canary"}}
>>> PUT /backends/st%61ble HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 404 Not Found
connection: close
content-length: 83
content-type: application/json

{"error":{"code":"unknown_variant","message":"`st%61ble` is not stable or canary"}}
>>> PUT /backends/stable HTTP/1.1
authorization: Bearer t0ken {"endpoints": ["nope"]}
HTTP/1.1 400 Bad Request
connection: close
content-length: 84
content-type: application/json

{"error":{"code":"bad_endpoints","message":"`endpoints` must be a list of IP:PORT"}}
>>> PUT /backends/stable HTTP/1.1
authorization: Bearer t0ken {}
HTTP/1.1 400 Bad Request
connection: close
content-length: 84
content-type: application/json

{"error":{"code":"bad_endpoints","message":"`endpoints` must be a list of IP:PORT"}}
>>> GET /backends/stable HTTP/1.1
authorization: Bearer t0ken {}
HTTP/1.1 404 Not Found
connection: close
content-length: 229
content-type: application/json

{"error":{"code":"not_found","message":"routes: GET /healthz, GET /metrics, GET /state, GET /counters, POST /counters/measured, PUT /weight, PUT /backends/{stable|canary}, PUT /salt, PUT /uncounted, POST /drain, POST /shutdown"}}
>>> GET /nowhere HTTP/1.1
authorization: Bearer t0ken {
HTTP/1.1 400 Bad Request
connection: close
content-length: 88
content-type: application/json

{"error":{"code":"bad_json","message":"EOF while parsing an object at line 1 column 1"}}
>>> GET /nowhere HTTP/1.1
authorization: Bearer t0ken 
HTTP/1.1 404 Not Found
connection: close
content-length: 229
content-type: application/json

{"error":{"code":"not_found","message":"routes: GET /healthz, GET /metrics, GET /state, GET /counters, POST /counters/measured, PUT /weight, PUT /backends/{stable|canary}, PUT /salt, PUT /uncounted, POST /drain, POST /shutdown"}}
>>> GET /nowhere HTTP/1.1 
HTTP/1.1 401 Unauthorized
connection: close
content-length: 121
content-type: application/json

{"error":{"code":"unauthorized","message":"send Authorization: Bearer TOKEN (the token rampart proxy was started with)"}}
>>> GET /state HTTP/1.1
authorization: bearer t0ken 
HTTP/1.1 401 Unauthorized
connection: close
content-length: 121
content-type: application/json

{"error":{"code":"unauthorized","message":"send Authorization: Bearer TOKEN (the token rampart proxy was started with)"}}
>>> GET /state HTTP/1.1
authorization: Bearer t0ke 
HTTP/1.1 401 Unauthorized
connection: close
content-length: 121
content-type: application/json

{"error":{"code":"unauthorized","message":"send Authorization: Bearer TOKEN (the token rampart proxy was started with)"}}
>>> GET /state HTTP/1.1
authorization: Bearer t0ken  
HTTP/1.1 200 OK
connection: close
content-length: 109
content-type: application/json

{"canary":["127.0.0.1:9"],"matches":[{"source":{"header":"x-beta"},"values":["1"]}],"stable":[],"weight":5.0}
"##;
