//! `rampart runbook`: prints the release runbook for a policy (Markdown), derived
//! from what rampart enforces.
//!
//! Only reads the policy (and the version's migrations); it must not change anything.

use std::path::PathBuf;

use crate::report::Output;

/// The arguments of `rampart runbook`.
#[derive(Debug, clap::Args)]
pub struct RunbookArgs {
    /// The policy file.
    #[arg(short = 'f', long = "file", value_name = "POLICY")]
    pub file: PathBuf,
    /// The version, to include its migration verdict.
    #[arg(long)]
    pub version: Option<String>,
    /// Output format (`json` prints `{"service", "version", "runbook"}`).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// Runs `rampart runbook`.
pub fn main(args: RunbookArgs) -> i32 {
    runbook(&args.file, args.version.as_deref(), args.output)
}

fn runbook(file: &std::path::Path, version: Option<&str>, output: Output) -> i32 {
    let policy = match crate::run::policy_file(file) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let class = match (&policy.migrations, version) {
        (Some(m), Some(v)) => {
            let base = file.parent().unwrap_or(std::path::Path::new("."));
            let dir = base.join(m.dir_for(v));
            let shipped = if dir.exists() {
                match crate::migrations::check(&[dir]) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        eprintln!("error: {e}");
                        return 2;
                    }
                }
            } else {
                None
            };
            rampart_core::admission::migration_plan(Some(m), shipped.as_ref()).map(|p| p.class)
        }
        _ => None,
    };
    let md = rampart_core::runbook::render(&policy, &file.display().to_string(), version, class);
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"service": policy.service, "version": version, "runbook": md})
        ),
        Output::Text => print!("{md}"),
    }
    0
}
