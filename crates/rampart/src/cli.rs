//! The command line: the global flags, one `Command` variant per command (its
//! arguments and body live in `commands::<name>`), and the dispatch.
//!
//! Exit codes (a contract): 0 promoted; 3 rolled back; 4 halted or escalated; 5 blocked
//! before start; 2 bad usage or invalid policy; 1 internal error.

use std::sync::Arc;

use clap::{CommandFactory, Parser, Subcommand};
use rampart_adapters::clock::TokioClock;
use rampart_core::ports::Clock;

use crate::commands;

/// The exit code of a command whose output's reader went away before the end (a pipe
/// into `head`): 128 + SIGPIPE, as a Unix tool that SIGPIPE stops reports it.
pub const CLOSED_PIPE: i32 = 141;

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

impl Cli {
    /// Whether the command is a data plane alone (`rampart proxy`, `rampart
    /// sample-service`): nothing in it blocks its thread, so it may run on one thread
    /// (tokio's current-thread scheduler). The others reach the store, whose SQLite
    /// calls block while they commit.
    pub fn serves_alone(&self) -> bool {
        matches!(self.command, Command::Proxy(_) | Command::SampleService(_))
    }
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
    Run(commands::run::RunArgs),
    /// Roll a release back now (a release id, or a service's release in progress).
    /// Waits for the outcome and exits with its code.
    Rollback(commands::rollback::RollbackArgs),
    /// Approve a release waiting at an approval point. The approver must not be the
    /// person who started it.
    Approve(commands::operator::ApproveArgs),
    /// Promote a release now: all traffic to the new version, skipping its remaining
    /// steps. Not by its initiator, never during a freeze.
    Promote(commands::operator::PromoteArgs),
    /// Hold a release at its current step: analysis goes on and a failure still rolls
    /// back, but no step advances until `resume`.
    Pause(commands::operator::PauseArgs),
    /// Let a paused release advance again.
    Resume(commands::operator::ResumeArgs),
    /// Abort a release: it rolls back in order (a release still queued is withdrawn).
    Abort(commands::operator::AbortArgs),
    /// One release: phase, weight, step, what it waits for, its decision.
    Status(commands::status::StatusArgs),
    /// Releases, newest first.
    List(commands::list::ListArgs),
    /// A release's audit events.
    Events(commands::events::EventsArgs),
    /// Freeze releases (of one service, or all) or lift the freeze. Audited; a frozen
    /// service's new releases are blocked (exit 5).
    Freeze(commands::freeze::FreezeArgs),
    /// Run the control plane: many releases (one per service at a time, queued), the
    /// API and the dashboard. Releases in flight resume after a restart.
    Serve(commands::serve::ServeArgs),
    /// A Model Context Protocol server on stdio, for AI agents: tools to validate,
    /// start, watch, pause, abort and roll back releases against a `rampart serve`
    /// (with an `agent` token, which the server never lets approve, promote, resume,
    /// force a rollback or lift a freeze).
    Mcp(commands::mcp::McpArgs),
    /// API tokens for `rampart serve`.
    Token(commands::token::TokenArgs),
    /// The hash-chained audit log.
    Audit(commands::audit::AuditArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completions(commands::completions::CompletionsArgs),
    /// Run the embedded proxy on its own, as a data plane: a controller sets its
    /// backends and weights through an admin endpoint guarded by a bearer token. With
    /// --state-dir, the service's long-lived data plane that `run` and `serve` attach to.
    Proxy(commands::proxy::ProxyArgs),
    /// Stop a service that releases left serving: its data plane, then its versions.
    Stop(commands::stop::StopArgs),
    /// Read, change and serve the service's feature flags.
    Flags(commands::flags::FlagsArgs),
    /// Whether releases may run now under the policy's windows and freeze calendar,
    /// and when the next window opens.
    Windows(commands::windows::WindowsArgs),
    /// Write a rampart policy from an Argo Rollouts Rollout or a Flagger Canary and
    /// their templates; lists every field it could not map (exit 4), or exits 2 for
    /// input it does not understand.
    Import(commands::import::ImportArgs),
    /// Check a policy file and report every problem with its line and field.
    Validate(commands::validate::ValidateArgs),
    /// Watch a real canary release on this machine, with nothing to install.
    Demo(commands::demo::DemoArgs),
    /// Backtest a policy: run its analysis and state machine on recorded traffic, in
    /// simulated time.
    Replay(commands::replay::ReplayArgs),
    /// Rehearse the safety guards on this machine: each scenario must end the way the
    /// guard promises; exits 1 if any does not.
    Gameday(commands::gameday::GamedayArgs),
    /// Print the release runbook for a policy (Markdown), derived from what rampart
    /// enforces.
    Runbook(commands::runbook::RunbookArgs),
    /// Writes the agent skill (SKILL.md) for the service's releases, generated from the
    /// policy: when to use it, gates, verification signals, approval points, rollback
    /// order, and the exact commands and MCP tools.
    Skill(commands::skill::SkillArgs),
    /// Database migrations.
    Migrations(commands::migrations::MigrationsArgs),
    /// Benchmarks.
    Bench(commands::bench::BenchArgs),
    /// The bundled sample HTTP service (used by the demo; handy for trying policies).
    SampleService(commands::sample_service::SampleServiceArgs),
    /// Send steady HTTP load to a URL (to try a release on one's own service).
    Load(commands::load::LoadArgs),
}

/// Runs the CLI and returns the process exit code.
pub async fn main(cli: Cli) -> i32 {
    // The one wall clock, read here and handed down as the `Clock` port.
    #[allow(clippy::disallowed_methods)]
    let clock: Arc<dyn Clock> = Arc::new(TokioClock::new());
    match cli.command {
        Command::Run(args) => commands::run::main(args, clock).await,
        Command::Rollback(args) => commands::rollback::main(args, clock).await,
        Command::Approve(args) => commands::operator::approve(args, clock).await,
        Command::Promote(args) => commands::operator::promote(args, clock).await,
        Command::Pause(args) => commands::operator::pause(args, clock).await,
        Command::Resume(args) => commands::operator::resume(args, clock).await,
        Command::Abort(args) => commands::operator::abort(args, clock).await,
        Command::Status(args) => commands::status::main(args, clock).await,
        Command::List(args) => commands::list::main(args, clock).await,
        Command::Events(args) => commands::events::main(args, clock).await,
        Command::Freeze(args) => commands::freeze::main(args, clock).await,
        Command::Serve(args) => commands::serve::main(args, clock).await,
        Command::Mcp(args) => commands::mcp::main(args, clock).await,
        Command::Token(args) => commands::token::main(args, clock).await,
        Command::Audit(args) => commands::audit::main(args).await,
        Command::Completions(args) => commands::completions::main(args, Cli::command()),
        Command::Proxy(args) => commands::proxy::main(args).await,
        Command::Stop(args) => commands::stop::main(args, clock).await,
        Command::Flags(args) => commands::flags::main(args, clock).await,
        Command::Windows(args) => commands::windows::main(args, clock),
        Command::Import(args) => commands::import::main(args),
        Command::Validate(args) => commands::validate::main(args),
        Command::Demo(args) => commands::demo::main(args, clock).await,
        Command::Replay(args) => commands::replay::main(args),
        Command::Gameday(args) => commands::gameday::main(args, clock).await,
        Command::Runbook(args) => commands::runbook::main(args),
        Command::Skill(args) => commands::skill::main(args),
        Command::Migrations(args) => commands::migrations::main(args),
        Command::Bench(args) => commands::bench::main(args, clock).await,
        Command::SampleService(args) => commands::sample_service::main(args).await,
        Command::Load(args) => commands::load::main(args).await,
    }
}
