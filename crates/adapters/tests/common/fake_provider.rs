//! A scripted stand-in for a metrics provider's HTTP API, on loopback: it records
//! every request (method, target, headers, body, and when on tokio's clock, which is
//! virtual in paused tests) and answers with what the test's responder says.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, Response, StatusCode};

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    /// `GET`, `POST`.
    pub method: String,
    /// Path and query, as sent.
    pub target: String,
    /// The headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub body: String,
    /// When it arrived, on tokio's clock.
    pub at: tokio::time::Instant,
}

impl Seen {
    /// A header's value, or "".
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }

    /// The query parameter `name`, percent-decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let query = self.target.split_once('?')?.1;
        query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            (k == name).then(|| {
                percent_encoding::percent_decode_str(v)
                    .decode_utf8_lossy()
                    .into_owned()
            })
        })
    }
}

/// An answer: status, extra headers, body.
pub type Answer = (u16, Vec<(&'static str, String)>, String);

/// What the fake answers to the `n`th request (from 0) it sees.
pub type Responder = Arc<dyn Fn(usize, &Seen) -> Answer + Send + Sync>;

/// Starts the fake; returns its base URL and the requests it has seen.
pub async fn start(respond: Responder) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let log = seen.clone();
    let app = axum::Router::new().fallback(move |req: Request| {
        let log = log.clone();
        let respond = respond.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20)
                .await
                .unwrap_or_default();
            let request = Seen {
                method: parts.method.to_string(),
                target: parts
                    .uri
                    .path_and_query()
                    .map(|p| p.as_str().to_string())
                    .unwrap_or_default(),
                headers: parts.headers,
                body: String::from_utf8_lossy(&body).into_owned(),
                at: tokio::time::Instant::now(),
            };
            let n = {
                let mut log = log.lock().unwrap();
                log.push(request.clone());
                log.len() - 1
            };
            let (status, headers, body) = respond(n, &request);
            let mut answer = Response::builder()
                .status(StatusCode::from_u16(status).unwrap())
                .header("content-type", "application/json");
            for (k, v) in headers {
                answer = answer.header(k, v);
            }
            answer.body(Body::from(body)).unwrap()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

/// A window of 30 s ending at unix second 1,700,000,030, v1 against v2.
pub fn window() -> rampart_core::release::MeasureWindow {
    rampart_core::release::MeasureWindow {
        from: 1_700_000_000_000,
        to: 1_700_000_030_000,
        stable: Some("v1".into()),
        canary: "v2".into(),
    }
}

/// Builtin measurements that are always empty: the query metrics alone are tested.
pub struct NoBuiltin;

impl rampart_core::ports::MetricsSource for NoBuiltin {
    fn measure<'a>(
        &'a self,
        _: &'a rampart_core::release::MeasureWindow,
    ) -> rampart_core::ports::BoxFuture<
        'a,
        Result<rampart_core::metrics::IntervalSample, rampart_core::ports::PortError>,
    > {
        Box::pin(async { Ok(Default::default()) })
    }
}

/// A policy whose `analysis` section is `analysis` (YAML, indented two spaces).
pub fn policy(analysis: &str) -> rampart_core::Policy {
    let text = format!(
        "service: shop\ndeploy: {{process: {{command: [\"x\", \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:1\"}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis:\n{analysis}"
    );
    rampart_core::Policy::from_yaml(&text).unwrap_or_else(|e| panic!("{text}\n{e:?}"))
}

/// When [`clock`] starts: ten seconds after [`window`]'s end.
pub const NOW_MS: u64 = 1_700_000_040_000;

/// A clock at [`NOW_MS`], advancing with tokio's (virtual in paused tests).
pub fn clock() -> Arc<dyn rampart_core::ports::Clock> {
    Arc::new(rampart_adapters::clock::TokioClock::starting_at(NOW_MS))
}

/// The reading of `policy`'s first query metric in one measurement of [`window`].
pub async fn first_reading(
    policy: &rampart_core::Policy,
    env: &[(&str, &str)],
) -> rampart_core::metrics::QueryReading {
    use rampart_core::ports::MetricsSource as _;
    source(policy, env)
        .measure(&window())
        .await
        .unwrap()
        .queries
        .remove(0)
}

/// The query metrics of `policy`, with `env` as the environment and [`clock`]'s time.
pub fn source(
    policy: &rampart_core::Policy,
    env: &[(&str, &str)],
) -> rampart_adapters::query::WithQueries {
    rampart_adapters::query::WithQueries::new(
        Arc::new(NoBuiltin),
        "shop",
        &policy.analysis,
        std::path::Path::new("."),
        &|var| {
            env.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        },
        clock(),
    )
}
