//! `rampart gameday`: rehearses the safety guards on the embedded default — real
//! processes, the real proxy, real load — and checks each one did the right thing.
//!
//! Owns the scenarios and their expectations. A guard that misbehaves makes the command
//! exit non-zero.

use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use rampart_core::ports::Clock;
use rampart_core::release::OutcomeKind;
use serde::Serialize;

use crate::load::release_under_load;
use crate::report::{Output, RunError};
use crate::run::RunOptions;

/// One rehearsal.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum GameScenario {
    /// The new version fails 30 % of requests: it must roll back.
    BadCanary,
    /// One burst of errors that lasts a second: it must not roll back.
    FlakySpike,
    /// No traffic reaches the canary, so nothing can be measured: it must not promote.
    MetricsOutage,
    /// A contract migration shipped and the canary is bad: it must escalate, not roll back.
    ContractMigration,
    /// Both versions fail: it must halt, not flip traffic.
    StableUnhealthy,
    /// The automatic rollback cap is reached: the next failure must halt.
    CapReached,
}

const ALL: [GameScenario; 6] = [
    GameScenario::BadCanary,
    GameScenario::FlakySpike,
    GameScenario::MetricsOutage,
    GameScenario::ContractMigration,
    GameScenario::StableUnhealthy,
    GameScenario::CapReached,
];

impl GameScenario {
    fn name(self) -> &'static str {
        match self {
            GameScenario::BadCanary => "bad-canary",
            GameScenario::FlakySpike => "flaky-spike",
            GameScenario::MetricsOutage => "metrics-outage",
            GameScenario::ContractMigration => "contract-migration",
            GameScenario::StableUnhealthy => "stable-unhealthy",
            GameScenario::CapReached => "cap-reached",
        }
    }

    fn expect(self) -> OutcomeKind {
        match self {
            GameScenario::BadCanary => OutcomeKind::RolledBack,
            GameScenario::FlakySpike => OutcomeKind::Promoted,
            GameScenario::MetricsOutage
            | GameScenario::StableUnhealthy
            | GameScenario::CapReached => OutcomeKind::Halted,
            GameScenario::ContractMigration => OutcomeKind::Escalated,
        }
    }

    /// `SAMPLE_ERROR_RATE` and `SAMPLE_SPIKE` for the scenario.
    fn errors(self) -> (&'static str, &'static str) {
        match self {
            GameScenario::FlakySpike => ("0", "v2=1500:1000:60%,*=0:0:0"),
            GameScenario::MetricsOutage => ("0", "0:0:0"),
            GameScenario::StableUnhealthy => ("30%", "0:0:0"),
            _ => ("v1=0,v2=30%", "0:0:0"),
        }
    }
}

/// How one rehearsal went.
#[derive(Debug, Serialize)]
pub struct GameResult {
    /// Scenario name.
    pub scenario: &'static str,
    /// The outcome the guard must produce.
    pub expected: OutcomeKind,
    /// What happened.
    pub outcome: Option<OutcomeKind>,
    /// Whether it matched.
    pub passed: bool,
    /// The release's reason, or the error.
    pub reason: String,
}

/// The whole rehearsal.
#[derive(Debug, Serialize)]
pub struct GameReport {
    /// Whether every guard behaved.
    pub passed: bool,
    /// One entry per scenario.
    pub scenarios: Vec<GameResult>,
}

fn policy(s: GameScenario, exe: &str, port: u16) -> String {
    let (errors, spike) = s.errors();
    let exe = serde_json::to_string(exe).unwrap_or_else(|_| "\"rampart\"".into());
    let mut extra = String::new();
    if s == GameScenario::ContractMigration {
        // This rehearsal is about what happens after the migration ran; its approval is
        // rehearsed in the test suite.
        extra.push_str(
            "migrations: {dir: \"migrations/{version}\", command: [\"true\"], approval: none}\n",
        );
    }
    if s == GameScenario::CapReached {
        extra.push_str("rollback: {max_automatic: {count: 1, per: 1h}, drain: 2s}\n");
    }
    format!(
        r#"service: gameday-{name}
deploy:
  process:
    command: [{exe}, "sample-service", "--port", "{{port}}", "--version", "{{version}}"]
    env: {{SAMPLE_ERROR_RATE: "{errors}", SAMPLE_SPIKE: "{spike}", SAMPLE_LATENCY_MS: "5"}}
    readiness: {{http: /healthz, timeout: 5s, period: 50ms}}
    stop_timeout: 2s
traffic:
  proxy: {{listen: "127.0.0.1:{port}", sticky: {{header: x-user}}}}
strategy:
  canary:
    steps: [{{weight: 20, bake: 6s}}]
analysis:
  interval: 2s
  min_samples: 20
  failure_limit: 3
  no_data: {{limit: 2, action: halt}}
  inconclusive: {{limit: 3, action: halt}}
  metrics:
    - {{name: error-rate, metric: error_rate, judge: {{max: 5%}}}}
{extra}"#,
        name = s.name()
    )
}

async fn release(
    s: GameScenario,
    dir: &Path,
    output: Output,
    clock: &Arc<dyn Clock>,
) -> Result<crate::report::Report, RunError> {
    let exe = std::env::current_exe().context("finding the rampart executable")?;
    let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .context("finding a free port")?
        .port();
    let text = policy(s, &exe.to_string_lossy(), port);
    let policy_path = dir.join("rampart.yaml");
    std::fs::write(&policy_path, &text).context("writing the policy")?;
    if s == GameScenario::ContractMigration {
        let m = dir.join("migrations/v2");
        std::fs::create_dir_all(&m).context("writing the migration")?;
        std::fs::write(
            m.join("001_rename.sql"),
            "ALTER TABLE orders RENAME COLUMN total TO amount;\n",
        )
        .context("writing the migration")?;
    }
    let rps = (s != GameScenario::MetricsOutage).then_some(300);
    release_under_load(
        RunOptions {
            policy_path,
            policy_text: text,
            version: "v2".into(),
            stable: Some("v1".into()),
            state_dir: dir.join("state"),
            output,
            keep_running: false,
            attach: false,
            stop_after: true,
            initiator: "gameday".into(),
            hotfix: None,
            metrics_listen: None,
            served: None,
            clock: clock.clone(),
        },
        "/",
        rps,
    )
    .await
}

/// Runs the scenarios (all of them when `only` is `None`).
pub async fn run(only: Option<GameScenario>, output: Output, clock: Arc<dyn Clock>) -> GameReport {
    let mut scenarios = Vec::new();
    for s in ALL.into_iter().filter(|s| only.is_none_or(|o| o == *s)) {
        let say = format!("gameday: {} (must end {})", s.name(), s.expect().as_str());
        match output {
            Output::Text => println!("{say}"),
            Output::Json => eprintln!("{say}"),
        }
        let dir = match tempfile::Builder::new()
            .prefix("rampart-gameday-")
            .tempdir()
        {
            Ok(d) => d,
            Err(e) => {
                scenarios.push(GameResult {
                    scenario: s.name(),
                    expected: s.expect(),
                    outcome: None,
                    passed: false,
                    reason: e.to_string(),
                });
                continue;
            }
        };
        // The cap scenario first spends the one automatic rollback the cap allows.
        let mut result = release(s, dir.path(), output, &clock).await;
        if s == GameScenario::CapReached
            && matches!(&result, Ok(r) if r.outcome == OutcomeKind::RolledBack)
        {
            result = release(s, dir.path(), output, &clock).await;
        }
        scenarios.push(match result {
            Ok(r) => GameResult {
                scenario: s.name(),
                expected: s.expect(),
                outcome: Some(r.outcome),
                passed: r.outcome == s.expect(),
                reason: r.reason,
            },
            Err(e) => GameResult {
                scenario: s.name(),
                expected: s.expect(),
                outcome: None,
                passed: false,
                reason: e.to_string(),
            },
        });
    }
    GameReport {
        passed: scenarios.iter().all(|s| s.passed),
        scenarios,
    }
}

/// Prints the report and returns the exit code: 0 when every guard behaved.
pub fn finish(report: &GameReport, output: Output) -> i32 {
    match output {
        Output::Json => println!("{}", serde_json::to_string(report).unwrap_or_default()),
        Output::Text => {
            println!();
            for s in &report.scenarios {
                println!(
                    "{} {:<20} expected {:<12} got {:<12} {}",
                    if s.passed { "PASS" } else { "FAIL" },
                    s.scenario,
                    s.expected.as_str(),
                    s.outcome.map_or("error", |o| o.as_str()),
                    s.reason
                );
            }
        }
    }
    if report.passed { 0 } else { 1 }
}

/// The arguments of `rampart gameday`.
#[derive(Debug, clap::Args)]
pub struct GamedayArgs {
    /// One scenario only.
    #[arg(long, value_enum)]
    pub scenario: Option<GameScenario>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart gameday`.
pub async fn main(args: GamedayArgs, clock: Arc<dyn Clock>) -> i32 {
    let report = run(args.scenario, args.output, clock).await;
    finish(&report, args.output)
}
