//! `rampart migrations check`: classifies PostgreSQL migrations as expand, contract or
//! irreversible, with lock-risk warnings; the classifier is `crate::migrations`.
//!
//! Exit codes: 0 when the overall class is `expand`, 3 for `contract`, 4 for
//! `irreversible`, 2 for a file that does not parse (or cannot be read).

use std::path::PathBuf;

use clap::Subcommand;

use crate::migrations::check;
use crate::report::Output;

/// The arguments of `rampart migrations`.
#[derive(Debug, clap::Args)]
pub struct MigrationsArgs {
    #[command(subcommand)]
    pub what: MigrationsCommand,
}

/// What to do with migrations.
#[derive(Debug, Subcommand)]
pub enum MigrationsCommand {
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

/// Runs `rampart migrations`.
pub fn main(args: MigrationsArgs) -> i32 {
    let MigrationsCommand::Check { paths, output } = args.what;
    run(&paths, output)
}

/// Runs the command; returns the exit code.
fn run(paths: &[PathBuf], output: Output) -> i32 {
    let report = match check(paths) {
        Ok(r) => r,
        Err(e) => {
            if output == Output::Json {
                println!("{}", serde_json::json!({"error": "invalid", "message": e}));
            }
            eprintln!("error: {e}");
            return 2;
        }
    };
    match output {
        Output::Json => println!("{}", serde_json::to_string(&report).unwrap_or_default()),
        Output::Text => {
            for f in &report.files {
                println!("{}: {}", f.path, f.class);
                for s in &f.statements {
                    let mut notes: Vec<String> = s.rules.iter().map(|r| r.to_string()).collect();
                    notes.extend(s.warnings.iter().map(|w| format!("warning: {w}")));
                    if let Some(reason) = &s.safe {
                        notes.push(format!("marked safe: {reason}"));
                    }
                    println!(
                        "  {:>4}  {:<12} {}  [{}]",
                        s.line,
                        s.class.as_str(),
                        s.sql,
                        notes.join(", ")
                    );
                }
            }
            println!("overall: {}", report.class);
        }
    }
    report.class.exit_code()
}
