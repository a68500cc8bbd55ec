//! `rampart validate`: checks a policy file and reports every problem with its line
//! and field.
//!
//! Pure apart from reading the file; it must not start anything.

use std::path::PathBuf;

use crate::report::Output;

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
    let text = match crate::run::read_text(file) {
        Ok(t) => t,
        Err(e) => {
            // The same shape as any invalid policy: line and column 0 when the problem
            // is the file itself (missing, unreadable), not a place in it.
            let (line, col) = e.at.unwrap_or((0, 0));
            return invalid(
                file,
                output,
                None,
                &[(line, col, String::new(), e.message.clone())],
                &[e.to_string()],
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
            let diags: Vec<_> = e
                .diagnostics
                .iter()
                .map(|d| {
                    (
                        u64::from(d.line),
                        u64::from(d.col),
                        d.path.clone(),
                        d.message.clone(),
                    )
                })
                .collect();
            let lines: Vec<String> = e
                .diagnostics
                .iter()
                .map(|d| format!("{}:{d}", file.display()))
                .collect();
            invalid(file, output, service_of(&text), &diags, &lines)
        }
    }
}

/// Reports an invalid policy: JSON `{"valid": false, "file", "service",
/// "diagnostics"}`, or each line of `text` and a count on stderr. Exit code 2.
fn invalid(
    file: &PathBuf,
    output: Output,
    service: Option<String>,
    diags: &[(u64, u64, String, String)],
    text: &[String],
) -> i32 {
    match output {
        Output::Json => {
            let diags: Vec<_> = diags
                .iter()
                .map(|(line, col, path, message)| serde_json::json!({"file": file, "line": line, "col": col, "path": path, "message": message}))
                .collect();
            println!(
                "{}",
                serde_json::json!({"valid": false, "file": file, "service": service, "diagnostics": diags})
            );
        }
        Output::Text => {
            for line in text {
                eprintln!("{line}");
            }
            eprintln!("{} problem(s) in {}", text.len(), file.display());
        }
    }
    2
}

/// The service an invalid policy names, when its name is valid (`null` otherwise).
fn service_of(text: &str) -> Option<String> {
    let root = rampart_core::yaml::parse(text).ok()?;
    let node = root.field("service")?;
    let rampart_core::yaml::NodeKind::Scalar { text, .. } = &node.kind else {
        return None;
    };
    rampart_core::policy::valid_service_name(text).then(|| text.clone())
}
