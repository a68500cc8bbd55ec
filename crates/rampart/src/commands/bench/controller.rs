//! `rampart bench controller`: many concurrent simulated releases on one controller
//! process and one store, each analysed every interval, to see whether the controller
//! keeps up and what each release costs.
//!
//! Owns the simulated world (instant deploys, an in-memory router and a healthy metrics
//! source per release) and the timing. The releases run through the real controller,
//! state machine and store: only the outside world is simulated.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rampart_adapters::clock::TokioClock;
use rampart_adapters::store::StateStore;
use rampart_controller::{Controller, Observer, Ports};
use rampart_core::metrics::{IntervalSample, VariantStats};
use rampart_core::policy::{Gate, RouteMatch};
use rampart_core::ports::{
    BoxFuture, Deployer, Deployment, GateRunner, MetricsSource, Notice, Notifier, PortError,
    TrafficRouter,
};
use rampart_core::release::{AuditEvent, GateResult, Input, Release};
use rampart_core::{Policy, Variant, Weight};
use serde::Serialize;

/// What the benchmark measured.
#[derive(Debug, Serialize)]
pub struct ControllerReport {
    /// Concurrent releases.
    pub releases: usize,
    /// The store.
    pub store: String,
    /// Each release's analysis interval, in seconds.
    pub interval_s: f64,
    /// How long the measurement ran (after every release had started), in seconds.
    pub measured_s: f64,
    /// Evaluations (analysed intervals, persisted) per second over the measurement.
    pub evaluations_per_s: f64,
    /// Evaluations the releases were due over the measurement (`releases * measured_s /
    /// interval_s`).
    pub evaluations_due_per_s: f64,
    /// From an evaluation being due to its decision being persisted: median and 99th
    /// percentile, in milliseconds.
    pub decision_p50_ms: f64,
    /// See `decision_p50_ms`.
    pub decision_p99_ms: f64,
    /// The worst, in milliseconds.
    pub decision_max_ms: f64,
    /// Resident memory of the process at the end, in bytes.
    pub rss_bytes: u64,
    /// Resident memory per release, in bytes (the process's total over the releases).
    pub rss_per_release_bytes: u64,
    /// Whether every release was evaluated within its interval, all the time.
    pub keeps_up: bool,
    /// The reference, measured in the same run before the releases start: one writer
    /// appending log entries to the same store back to back, per second.
    pub store_appends_per_s: f64,
}

/// Appends `n` log entries to one release back to back and returns the rate: what the
/// store can take with nothing else going on.
async fn store_ceiling(
    store: &StateStore,
    clock: &TokioClock,
    n: u64,
    run_id: &str,
) -> Result<f64, String> {
    use rampart_core::ports::{ReleaseRecord, Store, StoredInput};
    let id = format!("reference-{run_id}");
    let record = ReleaseRecord {
        id: id.clone(),
        service: id.clone(),
        version: "v2".into(),
        policy: String::new(),
        created_at: 0,
        outcome: None,
    };
    store.create(&record).await.map_err(|e| e.0)?;
    let started = clock.now_micros();
    for seq in 0..n {
        let entry = StoredInput {
            seq,
            at: seq,
            input: Input::Tick,
            events: Vec::new(),
        };
        store.append(&id, &entry).await.map_err(|e| e.0)?;
    }
    let secs = clock.now_micros().saturating_sub(started) as f64 / 1e6;
    Ok(n as f64 / secs.max(1e-9))
}

/// One simulated release's world: instant deploys, a router that remembers its
/// weight, and healthy traffic split by that weight.
#[derive(Debug, Default)]
struct Sim {
    weight_bp: AtomicU32,
}

fn ok_deployment() -> Deployment {
    Deployment {
        endpoints: vec![std::net::SocketAddr::from(([127, 0, 0, 1], 9))],
        retired: Vec::new(),
        detail: "simulated".into(),
    }
}

impl Deployer for Sim {
    fn deploy<'a>(
        &'a self,
        _: Variant,
        _: &'a str,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async { Ok(ok_deployment()) })
    }
    fn scale<'a>(
        &'a self,
        _: Variant,
        _: &'a str,
        _: u32,
    ) -> BoxFuture<'a, Result<Deployment, PortError>> {
        Box::pin(async { Ok(ok_deployment()) })
    }
    fn trim(&self, _: Variant, _: u32) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async { Ok(String::new()) })
    }
    fn stop(&self, _: Variant) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async { Ok(String::new()) })
    }
    fn verify(&self, _: Variant, _: Duration) -> BoxFuture<'_, Result<String, PortError>> {
        Box::pin(async { Ok(String::new()) })
    }
}

impl TrafficRouter for Sim {
    fn set_backends<'a>(
        &'a self,
        _: Variant,
        _: &'a [std::net::SocketAddr],
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
    fn set_weight<'a>(
        &'a self,
        weight: Weight,
        _: &'a [RouteMatch],
    ) -> BoxFuture<'a, Result<Weight, PortError>> {
        self.weight_bp
            .store(u32::from(weight.basis_points()), Ordering::Relaxed);
        Box::pin(async move { Ok(weight) })
    }
    fn drain(&self, _: Variant, _: Duration) -> BoxFuture<'_, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
    fn drain_endpoints<'a>(
        &'a self,
        _: &'a [std::net::SocketAddr],
        _: Duration,
    ) -> BoxFuture<'a, Result<(), PortError>> {
        Box::pin(async { Ok(()) })
    }
}

impl MetricsSource for Sim {
    fn measure<'a>(
        &'a self,
        _: &'a rampart_core::release::MeasureWindow,
    ) -> BoxFuture<'a, Result<IntervalSample, PortError>> {
        let canary = u64::from(self.weight_bp.load(Ordering::Relaxed)) / 10;
        let stats = |requests: u64| VariantStats {
            requests,
            errors: requests / 1000,
            latency: Default::default(),
        };
        Box::pin(async move {
            Ok(IntervalSample {
                stable: stats(1000 - canary),
                canary: stats(canary),
                ..Default::default()
            })
        })
    }
}

impl GateRunner for Sim {
    fn run<'a>(&'a self, gate: &'a Gate) -> BoxFuture<'a, GateResult> {
        Box::pin(async move {
            GateResult {
                name: gate.name.clone(),
                ok: true,
                detail: String::new(),
            }
        })
    }
}

impl Notifier for Sim {
    fn notify<'a>(&'a self, _: &'a Notice) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

/// Decision latencies of every release, in microseconds, while measuring.
#[derive(Debug, Default)]
struct Timings {
    measuring: std::sync::atomic::AtomicBool,
    latencies_us: Mutex<Vec<u64>>,
    late: AtomicU64,
}

/// Times one release's evaluations: from when the interval was due to the moment its
/// result is persisted (the observer runs right after the append).
struct Timer {
    clock: Arc<TokioClock>,
    due: AtomicU64,
    timings: Arc<Timings>,
    interval_ms: u64,
}

impl Observer for Timer {
    fn on_transition(&self, input: &Input, state: &Release, _: &[AuditEvent]) {
        let now_us = self.clock.now_micros();
        if matches!(input, Input::Measured { .. }) && self.timings.measuring.load(Ordering::Relaxed)
        {
            let due_us = self.due.load(Ordering::Relaxed).saturating_mul(1000);
            let waited = now_us.saturating_sub(due_us);
            if waited >= self.interval_ms * 1000 {
                self.timings.late.fetch_add(1, Ordering::Relaxed);
            }
            if let Ok(mut l) = self.timings.latencies_us.lock() {
                l.push(waited);
            }
        }
        if let Some(next) = state.next_analysis_at {
            self.due.store(next, Ordering::Relaxed);
        }
    }
}

fn policy_text(service: &str, interval: Duration) -> String {
    format!(
        "service: {service}\ndeploy: {{process: {{command: [\"simulated\", \"{{port}}\"]}}}}\ntraffic: {{proxy: {{listen: \"127.0.0.1:1\"}}}}\nstrategy: {{canary: {{steps: [{{weight: 10, bake: 24h}}, {{weight: 50, bake: 24h}}]}}}}\nanalysis:\n  interval: {}ms\n  min_samples: 10\n  metrics:\n    - {{metric: error_rate, judge: {{max: 5%}}}}\n",
        interval.as_millis()
    )
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

/// Runs `releases` simulated releases on the store `url` names (a SQLite file, or a
/// PostgreSQL database): starts them spread over one interval, lets them settle for one
/// more, then measures for `duration`.
pub async fn run(
    releases: usize,
    interval: Duration,
    duration: Duration,
    url: &str,
) -> Result<ControllerReport, String> {
    let store = Arc::new(StateStore::open_url(url).await.map_err(|e| e.to_string())?);
    // Releases of earlier runs in the same database stay unfinished: a run's services
    // are its own.
    let clock = Arc::new(TokioClock::new());
    let run_id = format!(
        "{:x}",
        rampart_core::ports::Clock::now(&*clock) & 0xff_ffff_ffff
    );
    let store_appends_per_s = store_ceiling(&store, &clock, 2000, &run_id).await?;
    let inbox = rampart_controller::Inbox::start(store.clone(), clock.clone());
    let timings = Arc::new(Timings::default());
    let interval_ms = u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let mut tasks = Vec::with_capacity(releases);
    for i in 0..releases {
        let service = format!("svc-{run_id}-{i:05}");
        let text = policy_text(&service, interval);
        let policy = Policy::from_yaml(&text).map_err(|e| e.to_string())?;
        let sim = Arc::new(Sim::default());
        let ports = Ports {
            deployer: sim.clone(),
            router: sim.clone(),
            metrics: sim.clone(),
            gates: sim.clone(),
            store: store.clone(),
            flags: store.clone(),
            clock: clock.clone(),
            notifier: sim,
            silencer: None,
        };
        let timer = Arc::new(Timer {
            clock: clock.clone(),
            due: AtomicU64::new(0),
            timings: timings.clone(),
            interval_ms,
        });
        let controller = Controller::new(policy, ports, timer)
            .with_initiator("bench")
            .with_inbox(inbox.clone());
        // Spread the starts over one interval, as releases started at random would be.
        let offset = interval.mul_f64(i as f64 / releases.max(1) as f64);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(offset).await;
            let id = format!("{service}-bench");
            controller
                .create(&id, "v2", &text)
                .await
                .map_err(|e| e.to_string())?;
            controller
                .drive(&id, Some("v1".into()), None)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }));
    }
    tokio::time::sleep(interval * 2).await;
    timings.measuring.store(true, Ordering::Relaxed);
    let started = clock.now_micros();
    tokio::time::sleep(duration).await;
    timings.measuring.store(false, Ordering::Relaxed);
    let measured_s = clock.now_micros().saturating_sub(started) as f64 / 1e6;
    let rss = rss_bytes();
    for t in &tasks {
        if t.is_finished() {
            return Err("a simulated release ended early; the benchmark is void".into());
        }
    }
    for t in tasks {
        t.abort();
    }
    let mut latencies = timings
        .latencies_us
        .lock()
        .map(|l| l.clone())
        .unwrap_or_default();
    latencies.sort_unstable();
    let evaluations = latencies.len() as f64;
    let due_per_s = releases as f64 / interval.as_secs_f64();
    let late = timings.late.load(Ordering::Relaxed);
    Ok(ControllerReport {
        releases,
        store: if store.is_postgres() {
            "postgres"
        } else {
            "sqlite"
        }
        .into(),
        interval_s: interval.as_secs_f64(),
        measured_s,
        evaluations_per_s: evaluations / measured_s.max(1e-9),
        evaluations_due_per_s: due_per_s,
        decision_p50_ms: quantile(&latencies, 0.5),
        decision_p99_ms: quantile(&latencies, 0.99),
        decision_max_ms: latencies.last().map_or(0.0, |v| *v as f64 / 1000.0),
        rss_bytes: rss,
        rss_per_release_bytes: rss / releases.max(1) as u64,
        // Every release evaluated about once per interval, none of them late.
        keeps_up: late == 0 && evaluations >= 0.95 * due_per_s * measured_s,
        store_appends_per_s,
    })
}
