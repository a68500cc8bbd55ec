//! The command line: parsing, dispatch and exit codes.
//!
//! Exit codes (a contract): 0 promoted; 3 rolled back; 4 halted or escalated; 5 blocked
//! before start; 2 bad usage or invalid policy; 1 internal error.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use rampart_core::units::parse_duration;

use crate::demo::{DemoStrategy, Scenario};
use crate::run::{Output, Report, RunError, RunOptions, print_summary, run_release};

/// rampart: progressive delivery with ordered, automatic, safe rollback.
#[derive(Debug, Parser)]
#[command(name = "rampart", version, about, max_term_width = 100)]
pub struct Cli {
    /// Log lines on stderr: `text` for people, `json` (one object per line, each line
    /// of a release carrying its release id) for machines. The level comes from
    /// `RAMPART_LOG` (`warn` by default).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "RAMPART_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For people.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Release a version: gates, canary steps with analysis, then promotion or rollback.
    Run {
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// The version to release (substituted for {version} in the policy).
        #[arg(long)]
        version: String,
        /// The version serving now. Defaults to the last version rampart left serving;
        /// without either, the release is an initial deployment.
        #[arg(long)]
        stable: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
        /// Where state and logs are kept.
        #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
        state_dir: PathBuf,
        /// After the release ends, keep serving through the proxy until interrupted.
        #[arg(long)]
        keep_running: bool,
        /// Who starts the release (approvers must be someone else); defaults to $USER.
        #[arg(long = "as", value_name = "NAME")]
        initiator: Option<String>,
        /// Release during a freeze as a hotfix, for this reason; it waits for an
        /// approval from someone else before anything runs.
        #[arg(long, value_name = "REASON")]
        hotfix: Option<String>,
        /// Serve `/metrics` (Prometheus text format) here while the release runs.
        #[arg(long, value_name = "ADDR", env = "RAMPART_METRICS_LISTEN")]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Submit the release to this `rampart serve` and follow it there (same exit
        /// codes); relative paths in the policy resolve next to the policy file.
        #[arg(long, value_name = "URL", env = "RAMPART_SERVER")]
        server: Option<String>,
        /// The API token, for --server (prefer the environment variable).
        #[arg(long, env = "RAMPART_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Roll a release back now (a release id, or a service's release in progress).
    /// Waits for the outcome and exits with its code.
    Rollback {
        /// The release id or the service.
        service: String,
        /// Why, for the audit trail (required with --force).
        #[arg(long)]
        reason: Option<String>,
        /// Roll the code back even though the release shipped non-backward-compatible
        /// migrations: say so only once the data is repaired.
        #[arg(long)]
        force: bool,
        /// Return as soon as the request is queued.
        #[arg(long)]
        no_wait: bool,
        /// Who asks (without --server; defaults to $USER).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Approve a release waiting at an approval point. The approver must not be the
    /// person who started it.
    Approve {
        /// The release id (or the service name).
        release: String,
        /// Who approves (without --server; with it, the token's name).
        #[arg(long = "as", value_name = "NAME")]
        approver: Option<String>,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Promote a release now: all traffic to the new version, skipping its remaining
    /// steps. Not by its initiator, never during a freeze.
    Promote {
        /// The release id (or the service name).
        release: String,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: String,
        /// Who promotes (without --server).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Hold a release at its current step: analysis goes on and a failure still rolls
    /// back, but no step advances until `resume`.
    Pause {
        /// The release id (or the service name).
        release: String,
        /// Why, for the audit trail.
        #[arg(long, default_value = "paused from the command line")]
        reason: String,
        /// Who pauses (without --server).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Let a paused release advance again.
    Resume {
        /// The release id (or the service name).
        release: String,
        /// Who resumes (without --server).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Abort a release: it rolls back in order (a release still queued is withdrawn).
    Abort {
        /// The release id (or the service name).
        release: String,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: String,
        /// Who aborts (without --server).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// One release: phase, weight, step, what it waits for, its decision.
    Status {
        /// The release id (or a service name, for its latest release).
        release: String,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Releases, newest first.
    List {
        /// Only this service.
        #[arg(long)]
        service: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// A release's audit events.
    Events {
        /// The release id (or a service name, for its latest release).
        release: String,
        /// Only events of log entries after this one.
        #[arg(long)]
        after: Option<u64>,
        /// Keep printing new events until the release is over.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Freeze releases (of one service, or all) or lift the freeze. Audited; a frozen
    /// service's new releases are blocked (exit 5).
    Freeze {
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Only this service; without it, every service.
        #[arg(long)]
        service: Option<String>,
        /// Why, for the audit trail.
        #[arg(long)]
        reason: String,
        /// Who (without --server).
        #[arg(long = "as", value_name = "NAME")]
        actor: Option<String>,
        #[command(flatten)]
        target: crate::client::Target,
    },
    /// Run the control plane: many releases (one per service at a time, queued), the
    /// API and the dashboard. Releases in flight resume after a restart.
    Serve {
        /// Where the API listens (loopback unless told otherwise).
        #[arg(long, env = "RAMPART_LISTEN", default_value = "127.0.0.1:7070")]
        listen: std::net::SocketAddr,
        /// Where state and logs are kept.
        #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
        state_dir: PathBuf,
        /// The store: `sqlite:PATH`, or `postgres://...` shared by several replicas
        /// (only the one holding the leader lease acts); defaults to the state
        /// directory's SQLite file.
        #[arg(long, env = "RAMPART_STORE", hide_env_values = true)]
        store: Option<String>,
        /// This replica's name in the leader lease (unique among replicas sharing a
        /// PostgreSQL store); defaults to HOSTNAME-PID.
        #[arg(long, env = "RAMPART_REPLICA")]
        replica: Option<String>,
        /// How long a silent leader keeps the lease before a standby takes over
        /// (PostgreSQL store only).
        #[arg(long, env = "RAMPART_LEASE_TTL", default_value = "15s", value_parser = lease_ttl)]
        lease_ttl: std::time::Duration,
    },
    /// A Model Context Protocol server on stdio, for AI agents: tools to validate,
    /// start, watch, pause, abort and roll back releases against a `rampart serve`
    /// (with an `agent` token, which the server never lets approve, promote, resume,
    /// force a rollback or lift a freeze).
    Mcp {
        /// The `rampart serve` the release tools act on; without it, the local state
        /// directory's store, through a server of its own on loopback (with a
        /// one-session agent token).
        #[arg(long, env = "RAMPART_SERVER")]
        server: Option<String>,
        /// Where state is kept, without --server.
        #[arg(long, env = "RAMPART_STATE_DIR", default_value = ".rampart")]
        state_dir: PathBuf,
        /// Its API token; an `agent` token (prefer the environment variable).
        #[arg(long, env = "RAMPART_TOKEN", hide_env_values = true)]
        token: Option<String>,
        /// Accept a token of a human role too (then the agent can do what it can).
        #[arg(long)]
        any_role: bool,
    },
    /// API tokens for `rampart serve`.
    Token {
        #[command(subcommand)]
        what: crate::ops::TokenCommand,
    },
    /// The hash-chained audit log.
    Audit {
        #[command(subcommand)]
        what: crate::ops::AuditCommand,
    },
    /// Print a shell completion script (bash, zsh or fish).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run the embedded proxy on its own, as a data plane: a controller sets its
    /// backends and weights through an admin endpoint guarded by a bearer token.
    Proxy {
        /// The policy file (its `traffic.proxy` section).
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Where the admin endpoint listens.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: std::net::SocketAddr,
        /// The environment variable holding the admin token (at least 16 characters).
        #[arg(long, default_value = "RAMPART_PROXY_TOKEN")]
        token_env: String,
    },
    /// Read, change and serve the service's feature flags.
    Flags {
        #[command(subcommand)]
        what: crate::flags_cmd::FlagsCommand,
    },
    /// Whether releases may run now under the policy's windows and freeze calendar,
    /// and when the next window opens.
    Windows {
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Check a policy file and report every problem with its line and field.
    Validate {
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Watch a real canary release on this machine, with nothing to install.
    Demo {
        /// What the new version does.
        #[arg(long, value_enum, default_value = "healthy")]
        scenario: Scenario,
        /// How the new version is exposed.
        #[arg(long, value_enum, default_value = "canary")]
        strategy: DemoStrategy,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Backtest a policy: run its analysis and state machine on recorded traffic, in
    /// simulated time.
    Replay {
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Recorded traffic: CSV with the header t_s,variant,requests,errors[,p50_ms,...].
        #[arg(long, value_name = "FILE.csv")]
        samples: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Rehearse the safety guards on this machine: each scenario must end the way the
    /// guard promises; exits 1 if any does not.
    Gameday {
        /// One scenario only.
        #[arg(long, value_enum)]
        scenario: Option<crate::gameday::GameScenario>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Print the release runbook for a policy (Markdown), derived from what rampart
    /// enforces.
    Runbook {
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// The version, to include its migration verdict.
        #[arg(long)]
        version: Option<String>,
        /// Output format (`json` prints `{"service", "version", "runbook"}`).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Writes the agent skill (SKILL.md) for the service's releases, generated from the
    /// policy: when to use it, gates, verification signals, approval points, rollback
    /// order, and the exact commands and MCP tools.
    Skill {
        /// The policy file.
        #[arg(short = 'f', long = "file", value_name = "POLICY")]
        file: PathBuf,
        /// Write DIR/SKILL.md instead of printing it.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// Output format (`json` prints `{"service", "path", "skill"}`).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
    /// Database migrations.
    Migrations {
        #[command(subcommand)]
        what: MigrationsCommand,
    },
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
    /// The bundled sample HTTP service (used by the demo; handy for trying policies).
    SampleService {
        /// Port to listen on (127.0.0.1).
        #[arg(long)]
        port: u16,
        /// Version to report; defaults to $RAMPART_VERSION.
        #[arg(long, env = "RAMPART_VERSION", default_value = "dev")]
        version: String,
    },
    /// Send steady HTTP load to a URL (to try a release on one's own service).
    Load {
        /// Target, such as http://127.0.0.1:8080/.
        #[arg(long)]
        url: String,
        /// Requests per second.
        #[arg(long, default_value_t = 100)]
        rps: u32,
        /// Stop after this long (such as 60s); runs until interrupted if absent.
        #[arg(long, value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Send a user id in this header, for sticky routing.
        #[arg(long)]
        user_header: Option<String>,
        /// Distinct users to simulate.
        #[arg(long, default_value_t = 1000)]
        users: u64,
        /// Output format (`json` prints `{"url", "sent", "ok", "failed", "canary"}`).
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

#[derive(Debug, Subcommand)]
enum MigrationsCommand {
    /// Classify PostgreSQL migrations: expand (exit 0), contract (3), irreversible (4);
    /// a file that does not parse exits 2.
    Check {
        /// Files, or directories of .sql files.
        #[arg(required = true, value_name = "FILES|DIR")]
        paths: Vec<PathBuf>,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        output: Output,
    },
}

/// A lease time: a duration of at least 3 s (shorter ones make replicas take the
/// lease from each other on any hiccup).
fn lease_ttl(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < Duration::from_secs(3) {
        return Err(format!("{text} is too short for a lease; give at least 3s"));
    }
    Ok(d)
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
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
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
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

/// Runs the CLI and returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    match cli.command {
        Command::Run {
            file,
            version,
            stable,
            output,
            state_dir,
            keep_running,
            initiator,
            hotfix,
            metrics_listen,
            server,
            token,
        } => {
            if server.is_some() {
                let target = crate::client::Target {
                    server,
                    token,
                    state_dir,
                    output,
                };
                return crate::ops::run_remote(
                    &file,
                    &version,
                    stable.as_deref(),
                    hotfix.as_deref(),
                    &target,
                )
                .await;
            }
            let text = match std::fs::read_to_string(&file) {
                Ok(t) => t,
                Err(e) => {
                    return fail(
                        output,
                        &RunError::Invalid(format!("{}: {e}", file.display())),
                    );
                }
            };
            let opts = RunOptions {
                policy_path: file,
                policy_text: text,
                version,
                stable,
                state_dir,
                output,
                keep_running,
                initiator: initiator
                    .or_else(|| std::env::var("USER").ok())
                    .unwrap_or_else(|| "unknown".into()),
                hotfix,
                metrics_listen,
                served: None,
            };
            finish(output, run_release(opts, None).await)
        }
        Command::Validate { file, output } => validate(&file, output),
        Command::Flags { what } => crate::flags_cmd::run(what).await,
        Command::Proxy {
            file,
            admin,
            token_env,
        } => crate::proxy_cmd::run(&file, admin, &token_env).await,
        Command::Windows { file, output } => windows(&file, output),
        Command::Runbook {
            file,
            version,
            output,
        } => runbook(&file, version.as_deref(), output),
        Command::Skill { file, out, output } => skill(&file, out.as_deref(), output),
        Command::Gameday { scenario, output } => {
            let report = crate::gameday::run(scenario, output).await;
            crate::gameday::finish(&report, output)
        }
        Command::Migrations {
            what: MigrationsCommand::Check { paths, output },
        } => crate::migrations_cmd::run(&paths, output),
        Command::Rollback {
            service,
            reason,
            force,
            no_wait,
            actor,
            target,
        } => {
            crate::ops::rollback(&service, reason, force, no_wait, actor.as_deref(), &target).await
        }
        Command::Approve {
            release,
            approver,
            target,
        } => crate::ops::act("approve", &release, "", approver.as_deref(), &target).await,
        Command::Promote {
            release,
            reason,
            actor,
            target,
        } => crate::ops::act("promote", &release, &reason, actor.as_deref(), &target).await,
        Command::Pause {
            release,
            reason,
            actor,
            target,
        } => crate::ops::act("pause", &release, &reason, actor.as_deref(), &target).await,
        Command::Resume {
            release,
            actor,
            target,
        } => crate::ops::act("resume", &release, "", actor.as_deref(), &target).await,
        Command::Abort {
            release,
            reason,
            actor,
            target,
        } => crate::ops::act("abort", &release, &reason, actor.as_deref(), &target).await,
        Command::Status { release, target } => crate::ops::status(&release, &target).await,
        Command::List {
            service,
            limit,
            target,
        } => crate::ops::list(service.as_deref(), limit, &target).await,
        Command::Events {
            release,
            after,
            follow,
            target,
        } => crate::ops::events(&release, after, follow, &target).await,
        Command::Freeze {
            state,
            service,
            reason,
            actor,
            target,
        } => {
            crate::ops::freeze(
                state == "on",
                service.as_deref(),
                &reason,
                actor.as_deref(),
                &target,
            )
            .await
        }
        Command::Serve {
            listen,
            state_dir,
            store,
            replica,
            lease_ttl,
        } => {
            crate::serve::run(crate::serve::ServeOptions {
                listen,
                state_dir,
                store,
                replica,
                lease_ttl,
                announce: None,
            })
            .await
        }
        Command::Mcp {
            server,
            state_dir,
            token,
            any_role,
        } => {
            crate::mcp::run(crate::mcp::McpOptions {
                server,
                state_dir,
                token,
                any_role,
            })
            .await
        }
        Command::Token { what } => crate::ops::token(what).await,
        Command::Audit { what } => crate::ops::audit(what).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            clap_complete::generate(shell, &mut cmd, "rampart", &mut std::io::stdout());
            0
        }
        Command::Replay {
            file,
            samples,
            output,
        } => finish(output, replay(&file, &samples, output)),
        Command::Bench {
            what:
                BenchCommand::Controller {
                    releases,
                    store,
                    postgres_url,
                    interval,
                    duration,
                    output,
                },
        } => {
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
            let report =
                match crate::bench_controller::run(releases.max(1), interval, duration, &url).await
                {
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
        Command::Bench {
            what:
                BenchCommand::Decisions {
                    trials,
                    seed,
                    savvi,
                    output,
                },
        } => {
            let report = match crate::bench::run(trials.max(1), seed, savvi.as_deref()) {
                Ok(r) => r,
                Err(e) => return fail(output, &RunError::Internal(anyhow::anyhow!(e))),
            };
            match output {
                Output::Json => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
                Output::Text => {
                    print!("{}", crate::bench::markdown(&report));
                    println!(
                        "\n{} trials per error scenario, {} per latency scenario, seed {}, {:.1}s",
                        report.trials, report.latency_trials, report.seed, report.elapsed_s
                    );
                }
            }
            0
        }
        Command::Demo {
            scenario,
            strategy,
            output,
        } => {
            let result = crate::demo::run(scenario, strategy, output).await;
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
        Command::SampleService { port, version } => {
            let behaviour = match crate::sample::Behaviour::from_env(&version) {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("sample-service: {e:#}");
                    return 2;
                }
            };
            match crate::sample::serve(port, behaviour).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("{e:#}");
                    1
                }
            }
        }
        Command::Load {
            url,
            rps,
            duration,
            user_header,
            users,
            output,
        } => {
            let stats = std::sync::Arc::new(crate::load::LoadStats::default());
            let spec = crate::load::LoadSpec {
                url: url.clone(),
                rps,
                user_header,
                users,
                duration,
            };
            tokio::select! {
                () = crate::load::generate(spec, stats.clone()) => {},
                _ = tokio::signal::ctrl_c() => {},
            }
            use std::sync::atomic::Ordering::Relaxed;
            let (sent, ok, failed, canary) = (
                stats.sent.load(Relaxed),
                stats.ok.load(Relaxed),
                stats.failed.load(Relaxed),
                stats.canary.load(Relaxed),
            );
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"url": url, "sent": sent, "ok": ok, "failed": failed, "canary": canary})
                ),
                Output::Text => println!("sent {sent} ok {ok} failed {failed} canary {canary}"),
            }
            0
        }
    }
}

/// Replays a policy on recorded samples; progress lines go to stdout with text output,
/// to stderr with JSON.
pub(crate) fn replay(
    file: &PathBuf,
    samples: &PathBuf,
    output: Output,
) -> Result<Report, RunError> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).map_err(|e| RunError::Invalid(format!("{}: {e}", p.display())))
    };
    let policy = crate::run::load_policy(file, &read(file)?)?;
    let recorded = rampart_core::samples::Samples::parse(&read(samples)?).map_err(|e| {
        RunError::Invalid(format!("{}:{}: {}", samples.display(), e.line, e.message))
    })?;
    let out: Box<dyn std::io::Write + Send> = match output {
        Output::Text => Box::new(std::io::stdout()),
        Output::Json => Box::new(std::io::stderr()),
    };
    let progress = crate::progress::Progress::new(out, false, policy.strategy.steps().len());
    let replayed = rampart_core::replay::replay(&policy, &recorded, |input, state, events| {
        rampart_controller::Observer::on_transition(&*progress, input, state, events);
    });
    let totals = recorded.window(0, recorded.end_s());
    Ok(crate::run::report(
        &policy,
        &replayed.release,
        replayed.timeline,
        totals,
        None,
    ))
}

fn skill(file: &std::path::Path, out: Option<&std::path::Path>, output: Output) -> i32 {
    let policy = match crate::run::policy_file(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let md = rampart_core::skill::render(&policy, &file.display().to_string());
    let path = match out {
        None => None,
        Some(dir) => {
            let path = dir.join("SKILL.md");
            if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, &md)) {
                eprintln!("error: {}: {e}", path.display());
                return 1;
            }
            Some(path)
        }
    };
    match (output, &path) {
        (Output::Json, _) => println!(
            "{}",
            serde_json::json!({"service": policy.service, "path": path.as_ref().map(|p| p.display().to_string()), "skill": md})
        ),
        (Output::Text, None) => print!("{md}"),
        (Output::Text, Some(p)) => println!("{}", p.display()),
    }
    0
}

fn runbook(file: &std::path::Path, version: Option<&str>, output: Output) -> i32 {
    let policy = match crate::run::policy_file(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let class = match (&policy.migrations, version) {
        (Some(m), Some(v)) => {
            let base = file.parent().unwrap_or(std::path::Path::new("."));
            let dir = base.join(m.dir.replace("{version}", v));
            if dir.exists() {
                match crate::migrations_cmd::check(&[dir]) {
                    Ok(r) => Some(r.class),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                }
            } else {
                Some(rampart_core::migrations::Class::Expand)
            }
        }
        _ => None,
    };
    let md = rampart_core::runbook::render(&policy, version, class);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"service": policy.service, "version": version, "runbook": md})
        ),
        Output::Text => print!("{md}"),
    }
    0
}

fn finish(output: Output, result: Result<Report, RunError>) -> i32 {
    match result {
        Ok(report) => {
            match output {
                Output::Json => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
                Output::Text => print_summary(&report),
            }
            report.exit_code()
        }
        Err(e) => fail(output, &e),
    }
}

fn fail(output: Output, e: &RunError) -> i32 {
    let code = e.exit_code();
    match (output, e) {
        (Output::Json, RunError::Blocked(reason)) => {
            let v = serde_json::json!({"outcome": "blocked", "reason": reason, "decided_at_s": 0.0, "timeline": []});
            println!("{v}");
        }
        (Output::Json, e) => {
            let kind = if code == 2 { "invalid" } else { "internal" };
            println!(
                "{}",
                serde_json::json!({"error": kind, "message": format!("{e:#}")})
            );
            eprintln!("error: {e:#}");
        }
        (Output::Text, e) => eprintln!("error: {e:#}"),
    }
    code
}

/// `rampart windows`: 0 when releases may run now, 5 when they may not.
fn windows(file: &PathBuf, output: Output) -> i32 {
    use rampart_core::ports::Clock;
    use rampart_core::windows::Status;
    let policy = match std::fs::read_to_string(file)
        .map_err(|e| RunError::Invalid(format!("{}: {e}", file.display())))
        .and_then(|t| crate::run::load_policy(file, &t))
    {
        Ok(p) => p,
        Err(e) => return fail(output, &e),
    };
    let now = rampart_adapters::clock::TokioClock::new().now();
    let Some(w) = &policy.windows else {
        match output {
            Output::Json => println!(
                "{}",
                serde_json::json!({"open": true, "why": null, "opens_at": null})
            ),
            Output::Text => println!(
                "{} has no release windows: releases may run at any time",
                policy.service
            ),
        }
        return 0;
    };
    let (open, why, opens_at) = match w.status(now) {
        Status::Open => (true, None, None),
        Status::Closed { why, opens_at, .. } => (false, Some(why), opens_at),
    };
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "open": open,
                "why": why,
                "opens_at": opens_at.map(|t| w.show(t)),
                "opens_at_ms": opens_at,
                "windows": w.describe(),
            })
        ),
        Output::Text => match (&why, opens_at) {
            (None, _) => println!("open: {} may release now", policy.service),
            (Some(why), Some(t)) => {
                println!("closed: {why}; the next window opens at {}", w.show(t))
            }
            (Some(why), None) => println!("closed: {why}; no window opens within 60 days"),
        },
    }
    if open { 0 } else { 5 }
}

fn validate(file: &PathBuf, output: Output) -> i32 {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            return fail(
                output,
                &RunError::Invalid(format!("{}: {e}", file.display())),
            );
        }
    };
    match rampart_core::Policy::from_yaml(&text) {
        Ok(p) => {
            match output {
                Output::Json => println!(
                    "{}",
                    serde_json::json!({"valid": true, "file": file, "service": p.service, "diagnostics": []})
                ),
                Output::Text => println!(
                    "{}: valid (service {}, {} {} step(s), {} metric(s), {} gate(s))",
                    file.display(),
                    p.service,
                    p.strategy.steps().len(),
                    p.strategy.name(),
                    p.analysis.metrics.len(),
                    p.gates.pre.len()
                ),
            }
            0
        }
        Err(e) => {
            match output {
                Output::Json => {
                    let diags: Vec<_> = e
                        .diagnostics
                        .iter()
                        .map(|d| serde_json::json!({"file": file, "line": d.line, "col": d.col, "path": d.path, "message": d.message}))
                        .collect();
                    println!(
                        "{}",
                        serde_json::json!({"valid": false, "file": file, "diagnostics": diags})
                    );
                }
                Output::Text => {
                    for d in &e.diagnostics {
                        eprintln!("{}:{d}", file.display());
                    }
                    eprintln!("{} problem(s) in {}", e.diagnostics.len(), file.display());
                }
            }
            2
        }
    }
}
