//! `/metrics` in Prometheus's text format: the release (phase, weight, verdicts,
//! rollbacks) and the data plane (per-variant requests, errors, latency histograms: to
//! response headers, and total).
//!
//! Owns the metric names and the exposition. It observes; it never decides.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use rampart_core::metrics::{Histogram, Timing, bucket_upper_ms};
use rampart_core::release::{Phase, Release};
use rampart_core::{Variant, Weight};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::proxy::Totals;

/// The histogram buckets exposed, in seconds.
const LE: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Seen {
    release: String,
    version: String,
    phase: Option<Phase>,
    weight: Weight,
    intervals: u32,
    verdicts: BTreeMap<&'static str, u64>,
    rollbacks: u64,
    outcomes: BTreeMap<&'static str, u64>,
}

/// What `/metrics` shows for one service.
pub struct Telemetry {
    service: String,
    counted: Arc<dyn Totals>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Telemetry {
    /// Telemetry for `service`, its data plane counted by `counted`.
    pub fn new(service: &str, counted: Arc<dyn Totals>) -> Telemetry {
        Telemetry {
            service: service.to_string(),
            counted,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Records a release's state after a transition.
    pub fn observe(&self, state: &Release) {
        let Ok(mut seen) = self.seen.lock() else {
            return;
        };
        if seen.release != state.id {
            seen.release = state.id.clone();
            seen.intervals = 0;
        }
        seen.version = state.version.clone();
        if state.intervals > seen.intervals {
            if let Some(v) = state.last_verdict {
                *seen.verdicts.entry(v.label_snake()).or_default() += 1;
            }
            seen.intervals = state.intervals;
        }
        if state.phase == Phase::RollingBack && seen.phase != Some(Phase::RollingBack) {
            seen.rollbacks += 1;
        }
        if state.phase.is_terminal()
            && seen.phase.is_some_and(|p| !p.is_terminal())
            && let Some(o) = state.outcome()
        {
            *seen.outcomes.entry(o.as_str()).or_default() += 1;
        }
        seen.phase = Some(state.phase);
        seen.weight = state.weight;
    }

    /// The exposition.
    pub fn render(&self) -> String {
        let svc = escape(&self.service);
        let mut out = String::new();
        let seen = self.seen.lock().map(|s| {
            (
                s.release.clone(),
                s.version.clone(),
                s.phase,
                s.weight,
                s.verdicts.clone(),
                s.rollbacks,
                s.outcomes.clone(),
            )
        });
        if let Ok((release, version, phase, weight, verdicts, rollbacks, outcomes)) = seen {
            out.push_str("# HELP rampart_release_phase The phase of the service's current release (1 for the phase it is in).\n# TYPE rampart_release_phase gauge\n");
            if let Some(p) = phase {
                let _ = writeln!(
                    out,
                    "rampart_release_phase{{service=\"{svc}\",release=\"{}\",version=\"{}\",phase=\"{}\"}} 1",
                    escape(&release),
                    escape(&version),
                    p.as_str()
                );
            }
            out.push_str("# HELP rampart_canary_weight The share of traffic on the new version, 0 to 1.\n# TYPE rampart_canary_weight gauge\n");
            let _ = writeln!(
                out,
                "rampart_canary_weight{{service=\"{svc}\"}} {}",
                weight.percent() / 100.0
            );
            out.push_str("# HELP rampart_verdicts_total Analysis intervals by verdict.\n# TYPE rampart_verdicts_total counter\n");
            for v in ["pass", "fail", "inconclusive", "no_data"] {
                let _ = writeln!(
                    out,
                    "rampart_verdicts_total{{service=\"{svc}\",verdict=\"{v}\"}} {}",
                    verdicts.get(v).copied().unwrap_or(0)
                );
            }
            out.push_str("# HELP rampart_rollbacks_total Rollbacks started.\n# TYPE rampart_rollbacks_total counter\n");
            let _ = writeln!(
                out,
                "rampart_rollbacks_total{{service=\"{svc}\"}} {rollbacks}"
            );
            out.push_str("# HELP rampart_releases_total Releases finished, by outcome.\n# TYPE rampart_releases_total counter\n");
            for o in ["promoted", "rolled_back", "halted", "escalated", "blocked"] {
                let _ = writeln!(
                    out,
                    "rampart_releases_total{{service=\"{svc}\",outcome=\"{o}\"}} {}",
                    outcomes.get(o).copied().unwrap_or(0)
                );
            }
        }
        let totals = self.counted.totals();
        out.push_str("# HELP rampart_requests_total Requests answered, by variant.\n# TYPE rampart_requests_total counter\n");
        for (v, s) in [
            (Variant::Stable, &totals.stable),
            (Variant::Canary, &totals.canary),
        ] {
            let _ = writeln!(
                out,
                "rampart_requests_total{{service=\"{svc}\",variant=\"{}\"}} {}",
                v.as_str(),
                s.requests
            );
        }
        out.push_str("# HELP rampart_request_errors_total Requests answered 5xx or not at all, by variant.\n# TYPE rampart_request_errors_total counter\n");
        for (v, s) in [
            (Variant::Stable, &totals.stable),
            (Variant::Canary, &totals.canary),
        ] {
            let _ = writeln!(
                out,
                "rampart_request_errors_total{{service=\"{svc}\",variant=\"{}\"}} {}",
                v.as_str(),
                s.errors
            );
        }
        for (name, help, timing) in [
            (
                "rampart_request_duration_seconds",
                "Time to response headers by variant (latency_pXX)",
                Timing::Headers,
            ),
            (
                "rampart_request_total_duration_seconds",
                "Time to the response body's last byte by variant (latency_total_pXX)",
                Timing::Total,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}; the sum is estimated from rampart's finer buckets (within 5 %).\n# TYPE {name} histogram"
            );
            for (v, s) in [
                (Variant::Stable, &totals.stable),
                (Variant::Canary, &totals.canary),
            ] {
                let series = Series {
                    name,
                    svc: &svc,
                    variant: v.as_str(),
                };
                histogram(&mut out, &series, s.latency_to(timing));
            }
        }
        // The embedded proxy's own counters, where the counter is the proxy (`None`
        // elsewhere): one series each.
        let connections = self.counted.connections();
        for (kind, name, help, n) in [
            (
                "gauge",
                "rampart_proxy_open_connections",
                "Client connections open on the embedded proxy.",
                connections.map(|(open, _)| open),
            ),
            (
                "counter",
                "rampart_proxy_refused_connections_total",
                "Client connections answered 503 and closed at traffic.proxy.limits.max_connections.",
                connections.map(|(_, refused)| refused),
            ),
            (
                "counter",
                "rampart_proxy_refused_requests_total",
                "HTTP/2 streams answered 503 because traffic.proxy.limits.max_connections streams beyond their connections' first were in flight; counted against no version.",
                self.counted.refused_requests(),
            ),
            (
                "gauge",
                "rampart_proxy_held_requests",
                "Requests waiting now for their variant's first backend (the data plane's hold before a service's first version is ready).",
                self.counted.held_requests(),
            ),
            (
                "counter",
                "rampart_proxy_body_timeouts_total",
                "Requests answered 408 because their client sent nothing of its body for traffic.proxy.limits.body_timeout; counted against no version.",
                self.counted.body_timeouts(),
            ),
            (
                "counter",
                "rampart_proxy_upstream_connection_errors_total",
                "h2c connections to the versions that failed as a whole (a GOAWAY with an error code, socket error or close) while streams were on them; each is charged to its version once, not once per stream it broke. A graceful GOAWAY (NO_ERROR) is not counted.",
                self.counted.upstream_connection_errors(),
            ),
            (
                "counter",
                "rampart_proxy_tls_handshake_failures_total",
                "TLS handshakes on the embedded proxy that failed or did not finish within traffic.proxy.limits.header_timeout; counted against no version.",
                self.counted.tls_handshake_failures(),
            ),
        ] {
            if let Some(n) = n {
                let _ = writeln!(
                    out,
                    "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{service=\"{svc}\"}} {n}"
                );
            }
        }
        if let Some((stable, canary)) = self.counted.abandoned() {
            out.push_str("# HELP rampart_proxy_abandoned_total Requests whose client left before the version's answer was done, by variant; each is counted in rampart_requests_total with its wait as its latency, and as an error only past its client's stated grpc-timeout.\n# TYPE rampart_proxy_abandoned_total counter\n");
            for (v, n) in [(Variant::Stable, stable), (Variant::Canary, canary)] {
                let _ = writeln!(
                    out,
                    "rampart_proxy_abandoned_total{{service=\"{svc}\",variant=\"{}\"}} {n}",
                    v.as_str()
                );
            }
        }
        out
    }
}

/// One histogram series: its metric name and labels.
struct Series<'a> {
    name: &'a str,
    svc: &'a str,
    variant: &'a str,
}

fn histogram(out: &mut String, series: &Series<'_>, h: &Histogram) {
    let Series { name, svc, variant } = series;
    let buckets: Vec<(f64, u64)> = h
        .buckets()
        .map(|(i, c)| (bucket_upper_ms(i) / 1000.0, c))
        .collect();
    for le in LE {
        let n: u64 = buckets
            .iter()
            .filter(|(up, _)| *up <= le)
            .map(|(_, c)| c)
            .sum();
        let _ = writeln!(
            out,
            "{name}_bucket{{service=\"{svc}\",variant=\"{variant}\",le=\"{le}\"}} {n}"
        );
    }
    let count: u64 = buckets.iter().map(|(_, c)| c).sum();
    let _ = writeln!(
        out,
        "{name}_bucket{{service=\"{svc}\",variant=\"{variant}\",le=\"+Inf\"}} {count}"
    );
    // Each bucket's observations at the bucket's geometric middle (edges ~9 % apart).
    let sum: f64 = buckets
        .iter()
        .map(|(up, c)| up / 1.09f64.sqrt() * *c as f64)
        .sum();
    let _ = writeln!(
        out,
        "{name}_sum{{service=\"{svc}\",variant=\"{variant}\"}} {sum}"
    );
    let _ = writeln!(
        out,
        "{name}_count{{service=\"{svc}\",variant=\"{variant}\"}} {count}"
    );
}

/// The exposition as an HTTP answer, with the content type Prometheus scrapes.
pub fn exposition(telemetry: &Telemetry) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        telemetry.render(),
    )
        .into_response()
}

/// Serves `GET /metrics` until dropped.
#[derive(Debug)]
pub struct MetricsServer {
    task: JoinHandle<()>,
    addr: SocketAddr,
}

impl MetricsServer {
    /// Binds `listen` and serves `telemetry`.
    pub async fn bind(
        listen: SocketAddr,
        telemetry: Arc<Telemetry>,
    ) -> std::io::Result<MetricsServer> {
        MetricsServer::serve(TcpListener::bind(listen).await?, telemetry)
    }

    /// [`MetricsServer::bind`] on a listener bound already: a release binds the address
    /// before it changes anything, and serves once its data plane counts.
    pub fn serve(
        listener: TcpListener,
        telemetry: Arc<Telemetry>,
    ) -> std::io::Result<MetricsServer> {
        let addr = listener.local_addr()?;
        // Any method: a scraper's HEAD or POST has always had the exposition.
        let app = Router::new()
            .route(
                "/metrics",
                any(|State(t): State<Arc<Telemetry>>| async move { exposition(&t) }),
            )
            .fallback(|| async {
                // No content type, as the hand-written server answered.
                (StatusCode::NOT_FOUND, Body::from("see /metrics\n"))
            })
            .with_state(telemetry);
        let task = tokio::spawn(async move {
            // It only returns when the task is aborted: accept errors are retried.
            let _ = axum::serve(listener, app).await;
        });
        Ok(MetricsServer { task, addr })
    }

    /// Where it listens.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rampart_core::metrics::IntervalSample;

    struct Fixed;

    impl Totals for Fixed {
        fn totals(&self) -> IntervalSample {
            let mut s = IntervalSample::default();
            s.canary.requests = 10;
            s.canary.errors = 2;
            for ms in [1u64, 3, 40, 400] {
                s.canary.latency.record_micros(ms * 1000);
            }
            // The bodies took 200 ms more, and one is still being sent.
            for ms in [201u64, 203, 240] {
                s.canary.latency_total.record_micros(ms * 1000);
            }
            s
        }
    }

    #[test]
    fn the_exposition_is_cumulative_and_names_what_the_dashboard_uses() {
        let t = Telemetry::new("shop", Arc::new(Fixed));
        t.observe(&Release {
            id: "r1".into(),
            phase: Phase::Progressing,
            ..Release::default()
        });
        let text = t.render();
        assert!(
            text.contains("rampart_request_errors_total{service=\"shop\",variant=\"canary\"} 2")
        );
        assert!(text.contains("rampart_request_duration_seconds_bucket{service=\"shop\",variant=\"canary\",le=\"0.005\"} 2"));
        assert!(text.contains("rampart_request_duration_seconds_bucket{service=\"shop\",variant=\"canary\",le=\"+Inf\"} 4"));
        assert!(text.contains("# TYPE rampart_request_total_duration_seconds histogram\n"));
        assert!(text.contains("rampart_request_total_duration_seconds_bucket{service=\"shop\",variant=\"canary\",le=\"0.1\"} 0"));
        assert!(text.contains("rampart_request_total_duration_seconds_bucket{service=\"shop\",variant=\"canary\",le=\"0.25\"} 3"));
        assert!(text.contains(
            "rampart_request_total_duration_seconds_count{service=\"shop\",variant=\"canary\"} 3"
        ));
        assert!(text.contains(
            "rampart_request_total_duration_seconds_count{service=\"shop\",variant=\"stable\"} 0"
        ));
        let dashboard = include_str!("../../../deploy/grafana/rampart-release.json");
        let mut names: Vec<&str> = dashboard
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("rampart_"))
            .collect();
        names.sort_unstable();
        names.dedup();
        assert!(names.len() >= 6, "{names:?}");
        for name in names {
            assert!(
                text.contains(&format!("\n{name}{{")),
                "the dashboard uses {name}, which /metrics lacks"
            );
        }
    }
}
