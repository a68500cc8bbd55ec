//! `rampart demo`: a real canary release on this machine, with nothing to install.
//!
//! Owns the demo scenarios. It writes a policy whose service is the bundled sample
//! service (this binary), drives load through the embedded proxy with the built-in
//! load generator, and runs the same release path as `rampart run`.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::Arc;

use anyhow::Context;
use rampart_core::ports::Clock;

use crate::load::release_under_load;
use crate::report::{Output, Report, RunError, finish};
use crate::run::RunOptions;

/// A demo scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// v2 behaves like v1: it is promoted.
    Healthy,
    /// v2 fails 10x as many requests as v1: it is rolled back.
    BadCanary,
    /// v2's p99 latency is 3x v1's: it is rolled back.
    SlowCanary,
    /// v2 exits on start: it is rolled back before any user reaches it (not with
    /// `--strategy flag`, which starts no new process).
    CrashOnStart,
}

impl Scenario {
    /// (error rate, latency ms, crash) for v2; v1 is always 0.5 %, 50 ms.
    fn canary(self) -> (&'static str, u32, bool) {
        match self {
            Scenario::Healthy => ("0.5%", 50, false),
            Scenario::BadCanary => ("5%", 50, false),
            Scenario::SlowCanary => ("0.5%", 150, false),
            Scenario::CrashOnStart => ("0.5%", 50, true),
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Scenario::Healthy => "v2 behaves like v1 (0.5% errors, ~50ms)",
            Scenario::BadCanary => "v2 fails 5% of requests, 10x v1's 0.5%",
            Scenario::SlowCanary => "v2 answers in ~150ms, 3x v1's ~50ms",
            Scenario::CrashOnStart => "v2 exits as soon as it starts",
        }
    }

    /// The scenario's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Healthy => "healthy",
            Scenario::BadCanary => "bad-canary",
            Scenario::SlowCanary => "slow-canary",
            Scenario::CrashOnStart => "crash-on-start",
        }
    }
}

/// How the demo exposes v2.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoStrategy {
    /// 10 % then 50 %, judged every 2 s.
    Canary,
    /// Preview checks, then all traffic at once, an 8 s stability window, post-release
    /// checks, and v1 kept 4 s for an instant switch back.
    BlueGreen,
    /// Four replicas, replaced one at a time, each batch judged for 3 s.
    Rolling,
    /// No new process: v2's new checkout sits behind the flag `new-checkout`, ramped to
    /// 10 % then 50 % of users; the scenario's errors hit flag-on users only.
    Flag,
}

impl DemoStrategy {
    /// The strategy's name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DemoStrategy::Canary => "canary",
            DemoStrategy::BlueGreen => "blue-green",
            DemoStrategy::Rolling => "rolling",
            DemoStrategy::Flag => "flag",
        }
    }

    fn replicas(self) -> u32 {
        match self {
            DemoStrategy::Rolling => 4,
            _ => 1,
        }
    }

    fn yaml(self, flag_port: u16) -> String {
        if self == DemoStrategy::Flag {
            return format!(
                "flags:
  listen: 127.0.0.1:{flag_port}
  define: [{{name: new-checkout, default: false}}]
strategy:
  flag:
    flag: new-checkout
    steps:
      - {{weight: 10, bake: 6s}}
      - {{weight: 50, bake: 6s}}
"
            );
        }
        let text = match self {
            DemoStrategy::Canary => {
                "strategy:
  canary:
    steps:
      - {weight: 10, bake: 6s}
      - {weight: 50, bake: 6s}
"
            }
            DemoStrategy::BlueGreen => {
                "strategy:
  blue_green:
    preview: [{http: /healthz}]
    stability: 8s
    keep_previous: 4s
post_release:
  wait: 2s
  checks: [{http: /healthz}]
"
            }
            DemoStrategy::Rolling | DemoStrategy::Flag => {
                "strategy:
  rolling: {batch: 1, bake: 3s}
"
            }
        };
        text.to_string()
    }

    /// Makes v2's misbehaviour hit only the users its flag is on for: its errors, and
    /// its latency (`latency` ms; the others keep v1's).
    fn env(self, flag_port: u16, latency: u32) -> String {
        match self {
            DemoStrategy::Flag => format!(
                "\n      SAMPLE_FLAG_URL: \"http://127.0.0.1:{flag_port}/flags/new-checkout\"\n      SAMPLE_FLAG_KEY_HEADER: x-user\n      SAMPLE_FLAG_LATENCY_MS: \"{latency}\""
            ),
            _ => String::new(),
        }
    }

    /// The latency metric: after a blue-green switch stable serves nothing, so the
    /// limit is absolute there.
    fn latency_metric(self) -> &'static str {
        match self {
            DemoStrategy::Canary | DemoStrategy::Flag => {
                "{name: p99-latency, metric: latency_p99, judge: {max_ratio_to_stable: 1.8}}"
            }
            DemoStrategy::BlueGreen | DemoStrategy::Rolling => {
                "{name: p50-latency, metric: latency_p50, judge: {max: 100ms}}"
            }
        }
    }

    fn describe(self) -> &'static str {
        match self {
            DemoStrategy::Canary => {
                "canary steps 10% then 50%, 6s bake each, judged every 2s on error rate (max 2%) and p99 latency (max 1.8x stable)"
            }
            DemoStrategy::BlueGreen => {
                "blue-green: preview check, then all traffic at once, 8s stability window judged every 2s on error rate (max 2%) and p50 latency (max 100ms), post-release check, v1 kept 4s"
            }
            DemoStrategy::Rolling => {
                "rolling: 4 replicas replaced one at a time, each batch judged every 2s for 3s on error rate (max 2%) and p50 latency (max 100ms)"
            }
            DemoStrategy::Flag => {
                "flag: v2 runs alone and its new checkout is ramped to 10% then 50% of users, 6s each, the flag-on users judged against the rest every 2s; a bad flag is switched off (rollback level 1) and nothing else moves"
            }
        }
    }
}

/// Requests per second the demo's load generator sends.
const DEMO_RPS: u32 = 300;

/// The demo policy for `scenario`, releasing the sample service at `exe` behind `port`.
pub fn policy(
    scenario: Scenario,
    strategy: DemoStrategy,
    exe: &str,
    port: u16,
    flag_port: u16,
) -> String {
    let (err, latency, crash) = scenario.canary();
    // Behind a flag, v2 serves everyone: its flag-off users keep v1's latency.
    let v2_latency = if strategy == DemoStrategy::Flag {
        50
    } else {
        latency
    };
    let exe = serde_json::to_string(exe).unwrap_or_else(|_| "\"rampart\"".into());
    format!(
        r#"# Generated by `rampart demo --scenario {name}`: {describe}.
service: demo-shop
deploy:
  process:
    command: [{exe}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env:
      SAMPLE_ERROR_RATE: "v1=0.5%,v2={err}"
      SAMPLE_LATENCY_MS: "v1=50,v2={v2_latency}"
      SAMPLE_CRASH_ON_START: "v1=0,v2={crash}"{flag_env}
    readiness: {{http: /healthz, timeout: 5s, period: 50ms}}
    stop_timeout: 2s
    replicas: {replicas}
traffic:
  proxy:
    listen: 127.0.0.1:{port}
    sticky: {{header: x-user}}
{strategy}analysis:
  interval: 2s
  min_samples: 40
  failure_limit: 2
  inconclusive: {{limit: 5, action: halt}}
  no_data: {{limit: 3, action: rollback}}
  metrics:
    - name: error-rate
      metric: error_rate
      judge: {{max: 2%}}
    - {latency_metric}
rollback:
  drain: 2s
  verify_timeout: 5s
"#,
        name = scenario.name(),
        describe = scenario.describe(),
        crash = u8::from(crash),
        strategy = strategy.yaml(flag_port),
        flag_env = strategy.env(flag_port, latency),
        latency_metric = strategy.latency_metric(),
        replicas = strategy.replicas(),
    )
}

/// Runs one scenario and returns its report.
pub async fn run(
    scenario: Scenario,
    strategy: DemoStrategy,
    output: Output,
    clock: Arc<dyn Clock>,
) -> Result<Report, RunError> {
    if strategy == DemoStrategy::Flag && scenario == Scenario::CrashOnStart {
        return Err(RunError::Invalid(
            "--strategy flag starts no new process (v2 already serves; its new checkout is behind a flag), so crash-on-start does not apply: try bad-canary or slow-canary".into(),
        ));
    }
    let dir = tempfile::Builder::new()
        .prefix("rampart-demo-")
        .tempdir()
        .context("creating a temporary directory")?;
    let exe = std::env::current_exe().context("finding the rampart executable")?;
    // Both bound at once, so the two ports differ.
    let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port");
    let (a, b) = (bind()?, bind()?);
    let port_of = |l: &TcpListener| {
        l.local_addr()
            .map(|a| a.port())
            .context("finding a free port")
    };
    let (port, flag_port) = (port_of(&a)?, port_of(&b)?);
    drop((a, b));
    let text = policy(scenario, strategy, &exe.to_string_lossy(), port, flag_port);
    let policy_path = dir.path().join("rampart.yaml");
    std::fs::write(&policy_path, &text).context("writing the demo policy")?;
    let say = |line: String| match output {
        Output::Text => println!("{line}"),
        Output::Json => eprintln!("{line}"),
    };
    say(format!(
        "rampart demo: {} {} ({})",
        strategy.name(),
        scenario.name(),
        scenario.describe()
    ));
    say(format!(
        "{}; {DEMO_RPS} requests/s of load",
        strategy.describe()
    ));
    release_under_load(
        RunOptions {
            policy_path,
            policy_text: text,
            version: "v2".into(),
            stable: Some("v1".into()),
            state_dir: dir.path().join("state"),
            output,
            keep_running: false,
            attach: false,
            stop_after: true,
            initiator: "demo".into(),
            hotfix: None,
            metrics_listen: None,
            served: None,
            clock,
        },
        "/checkout",
        Some(DEMO_RPS),
    )
    .await
}

/// The arguments of `rampart demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// What the new version does.
    #[arg(long, value_enum, default_value = "healthy")]
    pub scenario: Scenario,
    /// How the new version is exposed.
    #[arg(long, value_enum, default_value = "canary")]
    pub strategy: DemoStrategy,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart demo`: one scenario, then its report.
pub async fn main(args: DemoArgs, clock: Arc<dyn Clock>) -> i32 {
    let DemoArgs {
        scenario,
        strategy,
        output,
    } = args;
    let result = run(scenario, strategy, output, clock).await;
    if let (Ok(r), Output::Json) = (&result, output) {
        let mut value = serde_json::to_value(r).unwrap_or_default();
        if let Some(obj) = value.as_object_mut() {
            obj.insert("scenario".into(), scenario.name().into());
            obj.insert("strategy".into(), strategy.name().into());
        }
        println!("{value}");
        return r.exit_code();
    }
    finish(output, result)
}
