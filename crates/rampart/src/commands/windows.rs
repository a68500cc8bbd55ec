//! `rampart windows`: whether releases may run now under the policy's windows and
//! freeze calendar, and when the next window opens.
//!
//! Only reads the policy and the clock; it must not change anything.

use std::path::PathBuf;
use std::sync::Arc;

use rampart_core::Millis;
use rampart_core::ports::Clock;

use crate::report::{Output, RunError, fail};

/// The arguments of `rampart windows`.
#[derive(Debug, clap::Args)]
pub struct WindowsArgs {
    /// The policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart windows`.
pub fn main(args: WindowsArgs, clock: Arc<dyn Clock>) -> i32 {
    windows(&args.file, args.output, clock.now())
}

/// `rampart windows`: 0 when releases may run now, 5 when they may not.
fn windows(file: &std::path::Path, output: Output, now: Millis) -> i32 {
    use rampart_core::windows::Status;
    let policy = match crate::run::read_text(file)
        .map_err(RunError::from)
        .and_then(|t| crate::run::load_policy(file, &t))
    {
        Ok(p) => p,
        Err(e) => return fail(output, &e),
    };
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
                "opens_at": opens_at.map(|t| w.rfc3339(t)),
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
