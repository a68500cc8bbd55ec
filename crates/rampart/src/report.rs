//! What a command ends with: the `--output` format, the final `Report` (the contract of
//! `--output json`), `RunError`, and the exit codes they map to; printing them.
//!
//! Exit codes (a contract): 0 promoted; 3 rolled back; 4 halted or escalated; 5 blocked
//! before start; 2 bad usage or invalid policy; 1 internal error.
//!
//! A leaf: it must not run, resolve or change anything, only describe and print.

use rampart_core::release::OutcomeKind;
use serde::Serialize;

/// How the result is printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Progress and a summary for people.
    Text,
    /// Progress on stderr, one JSON object on stdout at the end.
    Json,
}

/// Why `run` ended without an outcome.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The policy or the command line is wrong (exit 2).
    #[error("{0}")]
    Invalid(String),
    /// The release cannot start (exit 5).
    #[error("{0}")]
    Blocked(String),
    /// Something broke (exit 1).
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl RunError {
    /// The process exit code.
    pub fn exit_code(&self) -> i32 {
        match self {
            RunError::Invalid(_) => 2,
            RunError::Blocked(_) => 5,
            RunError::Internal(_) => 1,
        }
    }
}

/// The final report: the contract of `--output json`.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `promoted`, `rolled_back`, `halted`, `escalated` or `blocked`.
    pub outcome: OutcomeKind,
    /// Why, in words.
    pub reason: String,
    /// Seconds from release start to the decision.
    pub decided_at_s: f64,
    /// Release id.
    pub release_id: String,
    /// Service name.
    pub service: String,
    /// The version released.
    pub version: String,
    /// The version serving before.
    pub stable_version: Option<String>,
    /// The canary weight at the end, in percent.
    pub final_weight: f64,
    /// Requests this run's proxy served, per variant.
    pub requests: Requests,
    /// After a rollback: requests routed to the canary once traffic was confirmed back
    /// on stable (always 0: the switch is atomic). `null` without a rollback.
    pub canary_routed_after_rollback: Option<u64>,
    /// After a rollback: the level that restored health (1 flags off, 2 traffic back
    /// to stable, 3 the new version reverted). `null` without a rollback.
    pub rollback_level: Option<u8>,
    /// The audit trail.
    pub timeline: Vec<rampart_core::release::AuditEvent>,
}

/// Request counts per variant.
#[derive(Debug, Serialize, Default, Clone, Copy)]
pub struct Requests {
    /// Served by stable.
    pub stable: u64,
    /// Served by the canary.
    pub canary: u64,
}

impl Report {
    /// The process exit code for this outcome.
    pub fn exit_code(&self) -> i32 {
        self.outcome.exit_code()
    }
}

/// Prints the human summary.
pub fn print_summary(r: &Report) {
    let verdict = match r.outcome {
        OutcomeKind::Promoted => format!("{} {} promoted", r.service, r.version),
        OutcomeKind::RolledBack => format!(
            "{} rolled back to {}",
            r.service,
            r.stable_version.as_deref().unwrap_or("nothing")
        ),
        OutcomeKind::Halted => format!("{} {} HALTED: a human must decide", r.service, r.version),
        OutcomeKind::Escalated => {
            format!("{} {} ESCALATED: a human must decide", r.service, r.version)
        }
        OutcomeKind::Blocked => format!("{} {} blocked before start", r.service, r.version),
    };
    println!();
    println!("outcome: {verdict} (exit {})", r.exit_code());
    println!("why:     {}", r.reason);
    println!("decided: {:.1}s after start", r.decided_at_s);
    println!(
        "traffic: canary weight {}% at the end; served stable {} / canary {} requests",
        r.final_weight, r.requests.stable, r.requests.canary
    );
}

/// Prints a command's report (or its error) in the chosen format; gives its exit code.
pub fn finish(output: Output, result: Result<Report, RunError>) -> i32 {
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

/// Prints why a command failed in the chosen format; gives its exit code.
pub fn fail(output: Output, e: &RunError) -> i32 {
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

/// The exit code of an outcome named in an answer (1 when it names none).
pub fn outcome_code(outcome: &str) -> i32 {
    serde_json::from_value::<rampart_core::release::OutcomeKind>(outcome.into())
        .map_or(1, |o| o.exit_code())
}
