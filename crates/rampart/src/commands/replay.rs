//! `rampart replay`: backtests a policy on recorded traffic; the backtest itself is
//! `crate::replay`.
//!
//! It must not do more than call it and print the report.

use std::path::PathBuf;

use crate::report::{Output, finish};

/// The arguments of `rampart replay`.
#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// The policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// Recorded traffic: CSV with the header t_s,variant,requests,errors[,p50_ms,...].
    #[arg(long, value_name = "FILE.csv")]
    pub samples: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart replay`.
pub fn main(args: ReplayArgs) -> i32 {
    let ReplayArgs {
        file,
        samples,
        output,
    } = args;
    finish(output, crate::replay::replay(&file, &samples, output))
}
