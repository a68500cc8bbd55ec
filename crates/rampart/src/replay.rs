//! Backtesting a policy: its analysis and state machine on recorded traffic, in
//! simulated time, for `rampart replay` and the MCP `replay` tool.
//!
//! Owns reading the policy and the samples and building the report. It must not touch
//! a data plane, a store or the clock.

use std::path::PathBuf;

use crate::report::{Output, Report, RunError};

/// Replays a policy on recorded samples; progress lines go to stdout with text output,
/// to stderr with JSON.
pub(crate) fn replay(
    file: &PathBuf,
    samples: &PathBuf,
    output: Output,
) -> Result<Report, RunError> {
    let read = |p: &PathBuf| crate::run::read_text(p).map_err(RunError::from);
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
