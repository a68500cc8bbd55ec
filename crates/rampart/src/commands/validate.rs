//! `rampart validate`: checks a policy file and reports every problem with its line
//! and field.
//!
//! Pure apart from reading the file; it must not start anything.

use std::path::PathBuf;

use crate::report::{Output, RunError, fail};

/// The arguments of `rampart validate`.
#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart validate`.
pub fn main(args: ValidateArgs) -> i32 {
    validate(&args.file, args.output)
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
