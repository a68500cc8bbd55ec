//! A small open-loop load generator: a fixed request rate against one URL, with a
//! fresh user id per simulated user in a header, so sticky routing spreads users over
//! both variants. Used by the demo and handy for trying a policy on one's own service.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// How long one generated request may take, answer and body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Counts of what the generator saw.
#[derive(Debug, Default)]
pub struct LoadStats {
    /// Requests sent.
    pub sent: AtomicU64,
    /// Answers with status below 500.
    pub ok: AtomicU64,
    /// 5xx answers and failed requests.
    pub failed: AtomicU64,
    /// Answers served by the canary (per the proxy's variant header).
    pub canary: AtomicU64,
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Target URL (`http://`).
    pub url: String,
    /// Requests per second.
    pub rps: u32,
    /// Header carrying a user id; `None` sends none.
    pub user_header: Option<String>,
    /// How many distinct users to simulate.
    pub users: u64,
    /// Stop after this long; `None` runs until dropped.
    pub duration: Option<Duration>,
    /// Paths requested in turn after `url` (which is then a base such as
    /// `http://HOST:PORT`); empty requests `url` itself.
    pub paths: Vec<String>,
    /// Extra headers on every request.
    pub headers: Vec<(String, String)>,
    /// Whether the requests in flight end with the generator when it is stopped
    /// (aborted): a release's own load must not outlive it. Otherwise they run to
    /// their end (30 s at most) and are counted, as a load whose every answer is
    /// counted needs.
    pub cut_on_stop: bool,
}

/// The generator's requests in flight: cut when it is dropped (a stopped generator)
/// with `cut`, else left to finish.
struct InFlight {
    set: tokio::task::JoinSet<()>,
    cut: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if !self.cut {
            self.set.detach_all();
        }
    }
}

/// Sends requests at `spec.rps` until the duration passes (or forever).
pub async fn generate(spec: LoadSpec, stats: Arc<LoadStats>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(256)
        .build(connector);
    let limit = Arc::new(Semaphore::new(512));
    let period = Duration::from_secs_f64(1.0 / f64::from(spec.rps.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = tokio::time::Instant::now();
    let mut n: u64 = 0;
    // The requests in flight belong to the generator: stopped (its release ended and
    // aborted it), they end with it with `cut_on_stop`, else they finish.
    let mut in_flight = InFlight {
        set: tokio::task::JoinSet::new(),
        cut: spec.cut_on_stop,
    };
    loop {
        ticker.tick().await;
        while in_flight.set.try_join_next().is_some() {}
        if spec.duration.is_some_and(|d| started.elapsed() >= d) {
            // A run of set length lets its last requests finish (up to their limit).
            while in_flight.set.join_next().await.is_some() {}
            return;
        }
        n += 1;
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut req = match spec.paths.len() {
            0 => Request::get(spec.url.as_str()),
            k => Request::get(format!(
                "{}{}",
                spec.url.trim_end_matches('/'),
                spec.paths[usize::try_from(n).unwrap_or(0) % k]
            )),
        };
        for (name, value) in &spec.headers {
            req = req.header(name.as_str(), value.as_str());
        }
        if let Some(h) = &spec.user_header {
            // Users cycle through a fixed population, like returning visitors.
            req = req.header(h.as_str(), format!("user-{}", n % spec.users.max(1)));
        }
        // One request that cannot be made (the policy refuses what would make it, so
        // this is a bug) is one failed request: the load goes on with the next.
        let Ok(req) = req.body(Empty::new()) else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            drop(permit);
            continue;
        };
        let client = client.clone();
        let stats = stats.clone();
        in_flight.set.spawn(async move {
            stats.sent.fetch_add(1, Ordering::Relaxed);
            // A hung request ends at the deadline: stopping the generator never leaves
            // requests behind for long.
            let answer = tokio::time::timeout(REQUEST_TIMEOUT, async {
                let resp = client.request(req).await.ok()?;
                let canary = resp
                    .headers()
                    .get("x-rampart-variant")
                    .is_some_and(|v| v == "canary");
                let error = resp.status().is_server_error();
                let _ = resp.into_body().collect().await;
                Some((canary, error))
            })
            .await;
            match answer {
                Ok(Some((canary, error))) => {
                    if canary {
                        stats.canary.fetch_add(1, Ordering::Relaxed);
                    }
                    let counter = if error { &stats.failed } else { &stats.ok };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
                _ => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }
}

/// The sticky header the load varies its users' ids in: the policy's, unless its
/// `load.headers` set that header themselves (a tester's id, to pin the load), whose
/// value is then the one sent, alone.
fn spread_by(policy: &rampart_core::Policy, headers: &[(String, String)]) -> Option<String> {
    use rampart_core::policy::{Sticky, Traffic};
    let sticky = match &policy.traffic {
        Traffic::Proxy(p) => &p.sticky,
        Traffic::Nginx(n) => &n.sticky,
        _ => return None,
    };
    match sticky {
        Sticky::Header(h) if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(h)) => {
            Some(h.clone())
        }
        _ => None,
    }
}

/// Starts the policy's `analysis.load` against `entry` (or its own `url`), marked with
/// `x-rampart-load`: `1`, or `uncounted` (the data plane's token) for load that must
/// not count. Users' ids spread over the variants by the sticky header when the policy
/// sticks by one. `None` when the policy sends no load or there is nowhere to send it.
pub fn analysis_load(
    policy: &rampart_core::Policy,
    entry: Option<std::net::SocketAddr>,
    uncounted: Option<&str>,
) -> Option<tokio::task::JoinHandle<()>> {
    let load = policy.analysis.load.as_ref()?;
    let url = match &load.url {
        Some(u) => u.clone(),
        None => format!("http://{}", entry?),
    };
    let mut headers = load.headers.clone();
    let mark = if load.counts { "1" } else { uncounted? };
    headers.push((
        rampart_core::policy::LOAD_HEADER.to_string(),
        mark.to_string(),
    ));
    let user_header = spread_by(policy, &load.headers);
    let spec = LoadSpec {
        url,
        rps: load.rate,
        user_header,
        users: 1000,
        duration: None,
        paths: load.paths.clone(),
        headers,
        cut_on_stop: true,
    };
    Some(tokio::spawn(generate(spec, Arc::new(LoadStats::default()))))
}

/// Runs a release with steady load (`rps`, sticky user ids in `x-user`) sent through its
/// proxy from the moment the proxy listens until the release ends; `None` sends none.
pub async fn release_under_load(
    opts: crate::run::RunOptions,
    path: &str,
    rps: Option<u32>,
) -> Result<crate::report::Report, crate::report::RunError> {
    let load = Arc::new(std::sync::Mutex::new(None::<tokio::task::JoinHandle<()>>));
    let slot = load.clone();
    let path = path.to_string();
    let on_proxy = Box::new(move |addr: std::net::SocketAddr| {
        let Some(rps) = rps else { return };
        let spec = LoadSpec {
            url: format!("http://{addr}{path}"),
            rps,
            user_header: Some("x-user".into()),
            users: 1000,
            duration: None,
            paths: Vec::new(),
            headers: Vec::new(),
            cut_on_stop: false,
        };
        let task = tokio::spawn(generate(spec, Arc::new(LoadStats::default())));
        if let Ok(mut slot) = slot.lock() {
            *slot = Some(task);
        }
    });
    let result = crate::run::run_release(opts, Some(on_proxy)).await;
    if let Ok(mut slot) = load.lock()
        && let Some(task) = slot.take()
    {
        task.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every path the policy accepts can be sent (the load never stops on one), and
    /// what it refuses could not be.
    #[test]
    fn the_paths_the_policy_accepts_are_the_ones_the_client_sends() {
        let policy = |paths: &str| {
            rampart_core::Policy::from_yaml(&format!(
                "service: shop\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:1\"}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis:\n  load: {{rate: 10, paths: [{paths}]}}\n  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]\n"
            ))
        };
        let sends = |path: &str| {
            Request::get(format!("http://127.0.0.1:1{path}"))
                .body(Empty::<bytes::Bytes>::new())
                .is_ok()
        };
        for path in [
            "/items?page[size]=10&ids[]=1",
            "/f?fields=a|b&q=`x`",
            "/caf\u{e9}",
            "/a\\b^c{d}\"e\"",
            "/orders?total%3E10",
        ] {
            let quoted = format!("{path:?}");
            assert!(policy(&quoted).is_ok(), "{path}: refused");
            assert!(sends(path), "{path}: accepted, but cannot be sent");
        }
        for path in ["/orders?total>10", "/a<b", "/a#b", "/a`b", "/a\u{1}b"] {
            let quoted = format!("{path:?}");
            assert!(policy(&quoted).is_err(), "{path}: accepted");
        }
    }

    /// A sticky header the policy's load sets itself is sent as set, once: the load's
    /// own user ids would have been a second value of it, and a proxy reads the first.
    #[test]
    fn the_load_varies_the_sticky_header_unless_its_headers_set_it() {
        let policy = |headers: &str| {
            rampart_core::Policy::from_yaml(&format!(
                "service: shop\ndeploy: {{process: {{command: [x, \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:1\", sticky: {{header: x-user}}}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 1m}}]}}}}\nanalysis:\n  load: {{rate: 10{headers}}}\n  metrics: [{{metric: error_rate, judge: {{max: 5%}}}}]\n"
            ))
            .unwrap_or_else(|e| panic!("{e:?}"))
        };
        let p = policy("");
        let load = p.analysis.load.as_ref().unwrap();
        assert_eq!(spread_by(&p, &load.headers).as_deref(), Some("x-user"));
        let p = policy(", headers: {X-User: qa-alice}");
        let load = p.analysis.load.as_ref().unwrap();
        assert_eq!(spread_by(&p, &load.headers), None);
    }
}
