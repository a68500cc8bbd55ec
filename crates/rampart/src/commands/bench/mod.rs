//! `rampart bench controller|decisions`: the benchmarks' arguments and reports; the
//! benchmarks are `controller` and `decisions` beside this file.
//!
//! Results are measured, never asserted: they go in BENCHMARKS.md.

pub mod controller;
pub mod decisions;

use std::sync::Arc;
use std::time::Duration;

use clap::Subcommand;
use rampart_core::ports::Clock;
use rampart_core::units::parse_duration;

use crate::report::{Output, RunError, fail};

/// The arguments of `rampart bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub what: BenchCommand,
}

/// Which benchmark.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Many concurrent simulated releases on one controller and one store: evaluations
    /// per second, decision latency, memory per release, and whether it keeps up.
    Controller {
        /// Concurrent releases.
        #[arg(long, default_value_t = 1000)]
        releases: usize,
        /// The store: `sqlite` (a file in a temporary directory) or `postgres` (the
        /// database `--postgres-url` names; needs a build with `--features postgres`).
        #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
        store: String,
        /// The PostgreSQL database for `--store postgres`.
        #[arg(long, env = "RAMPART_BENCH_POSTGRES_URL", hide_env_values = true)]
        postgres_url: Option<String>,
        /// Each release's analysis interval.
        #[arg(long, default_value = "10s", value_parser = parse_interval)]
        interval: Duration,
        /// How long to measure, once every release runs.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        duration: Duration,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// False rollbacks, power and time to decision of each judge on simulated releases.
    Decisions {
        /// Trials per error-rate scenario (latency scenarios get a quarter).
        #[arg(long, default_value_t = 1000)]
        trials: u64,
        /// Seed of the simulation.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Also run savvi's multinomial test (Python package `savvi`) with this
        /// interpreter on the error-rate streams, as the reference.
        #[arg(long, value_name = "PYTHON")]
        savvi: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// An analysis interval as a policy takes it (`analysis.interval`: 100ms to 1h): the
/// releases this bench runs are policies too, and a value no policy could have is the
/// flag's error, not theirs.
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_millis(100) || d > Duration::from_secs(3600) {
        return Err(format!(
            "{text} is not an analysis interval; use 100ms to 1h, as `analysis.interval` takes"
        ));
    }
    Ok(d)
}

/// Runs `rampart bench`.
pub async fn main(args: BenchArgs, clock: Arc<dyn Clock>) -> i32 {
    match args.what {
        BenchCommand::Controller {
            releases,
            store,
            postgres_url,
            interval,
            duration,
            output,
        } => {
            controller_main(
                releases,
                store,
                postgres_url,
                interval,
                duration,
                output,
                clock,
            )
            .await
        }
        BenchCommand::Decisions {
            trials,
            seed,
            savvi,
            output,
        } => decisions_main(trials, seed, savvi, output),
    }
}

/// `rampart bench controller`.
async fn controller_main(
    releases: usize,
    store: String,
    postgres_url: Option<String>,
    interval: Duration,
    duration: Duration,
    output: Output,
    clock: Arc<dyn Clock>,
) -> i32 {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => return fail(output, &RunError::Internal(anyhow::anyhow!(e))),
    };
    let url = match (store.as_str(), postgres_url) {
        ("postgres", _) if !cfg!(feature = "postgres") => {
            eprintln!(
                "error: this build of rampart has no PostgreSQL store; build it with `--features postgres`"
            );
            return 2;
        }
        ("postgres", Some(url)) => url,
        ("postgres", None) => {
            eprintln!(
                "error: --store postgres needs --postgres-url postgres://USER@HOST/DB (an empty database)"
            );
            return 2;
        }
        _ => format!("sqlite:{}", dir.path().join("rampart.db").display()),
    };
    let report = match controller::run(releases.max(1), interval, duration, &url, clock).await {
        Ok(r) => r,
        Err(e) => return fail(output, &RunError::Internal(anyhow::anyhow!(e))),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
        Output::Text => println!(
            "{} releases on {}, every {}s, measured {:.0}s: {:.0} evaluations/s (due {:.0}/s), decision p50 {:.2} ms, p99 {:.2} ms, max {:.1} ms, RSS {} MiB ({} KiB per release), keeps up: {}; the store alone takes {:.0} appends/s",
            report.releases,
            report.store,
            report.interval_s,
            report.measured_s,
            report.evaluations_per_s,
            report.evaluations_due_per_s,
            report.decision_p50_ms,
            report.decision_p99_ms,
            report.decision_max_ms,
            report.rss_bytes >> 20,
            report.rss_per_release_bytes >> 10,
            report.keeps_up,
            report.store_appends_per_s
        ),
    }
    0
}

/// `rampart bench decisions`.
fn decisions_main(trials: u64, seed: u64, savvi: Option<String>, output: Output) -> i32 {
    let report = match decisions::run(trials.max(1), seed, savvi.as_deref()) {
        Ok(r) => r,
        Err(e) => return fail(output, &RunError::Internal(anyhow::anyhow!(e))),
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
        Output::Text => {
            print!("{}", decisions::markdown(&report));
            println!(
                "\n{} trials per error scenario, {} per latency scenario, seed {}, {:.1}s",
                report.trials, report.latency_trials, report.seed, report.elapsed_s
            );
        }
    }
    0
}
