//! `rampart import argo|flagger FILES...`: an Argo Rollouts `Rollout` or a Flagger
//! `Canary`, with its templates, written as a rampart policy; the mapping itself is
//! `rampart_core::import`.
//!
//! Exit codes: 0 every field mapped; 4 a policy written with unmapped fields (listed);
//! 2 input that is not a Rollout or Canary it understands, or a file it cannot read;
//! 1 the policy could not be written to `--out`. Writes only `--out`.

use std::path::PathBuf;

use rampart_core::import::{self, ImportError, Imported, Kind, Source};

use crate::report::Output;

/// The arguments of `rampart import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Where the manifests come from.
    #[arg(value_enum)]
    pub from: From,
    /// The manifests: the Rollout (or Canary) and its AnalysisTemplates,
    /// ClusterAnalysisTemplates (or MetricTemplates, AlertProviders), and the target
    /// Deployment; several documents per file.
    #[arg(required = true, value_name = "FILES")]
    pub files: Vec<PathBuf>,
    /// Write the policy to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Output format (`json` prints `{"kind", "service", "policy", "unmapped", "notes",
    /// "sources", "out"}`).
    #[arg(long, value_enum, default_value = "text")]
    pub output: Output,
}

/// The tool the manifests come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum From {
    /// Argo Rollouts: Rollout, AnalysisTemplate, ClusterAnalysisTemplate.
    Argo,
    /// Flagger: Canary, MetricTemplate, AlertProvider.
    Flagger,
}

/// Runs `rampart import`.
pub fn main(args: ImportArgs) -> i32 {
    let kind = match args.from {
        From::Argo => Kind::Argo,
        From::Flagger => Kind::Flagger,
    };
    let mut sources = Vec::new();
    for f in &args.files {
        // A byte that is not UTF-8 is refused at its line and column.
        match crate::run::read_text(f) {
            Ok(text) => sources.push(Source {
                name: f.display().to_string(),
                text,
            }),
            Err(e) => {
                let (line, col) = e.at.unwrap_or((0, 0));
                let message = match e.at {
                    Some(_) => e.message,
                    None => format!("cannot read it: {}", e.message),
                };
                return refuse(
                    args.output,
                    &ImportError {
                        file: f.display().to_string(),
                        document: None,
                        pos: rampart_core::yaml::Pos {
                            line: u32::try_from(line).unwrap_or(u32::MAX),
                            col: u32::try_from(col).unwrap_or(u32::MAX),
                        },
                        field: String::new(),
                        message,
                    },
                );
            }
        }
    }
    let imported = match import::import(kind, &sources) {
        Ok(i) => i,
        Err(e) => return refuse(args.output, &e),
    };
    if let Some(out) = &args.out
        && let Err(e) = std::fs::write(out, &imported.policy)
    {
        let e = crate::report::RunError::Internal(anyhow::anyhow!("{}: {e}", out.display()));
        return crate::report::fail(args.output, &e);
    }
    report(&imported, args.out.as_ref(), args.output);
    if imported.unmapped.is_empty() { 0 } else { 4 }
}

fn report(i: &Imported, out: Option<&PathBuf>, output: Output) {
    match output {
        Output::Json => println!(
            "{}",
            serde_json::json!({
                "kind": i.kind.id(),
                "service": i.service,
                "policy": i.policy,
                "out": out.map(|p| p.display().to_string()),
                "unmapped": i.unmapped,
                "notes": i.notes,
                "sources": i.sources,
            })
        ),
        Output::Text => {
            match out {
                Some(p) => eprintln!("wrote {} (service {})", p.display(), i.service),
                None => print!("{}", i.policy),
            }
            if !i.notes.is_empty() {
                eprintln!("notes ({}):", i.notes.len());
                for n in &i.notes {
                    eprintln!("  - {n}");
                }
            }
            if i.unmapped.is_empty() {
                eprintln!("every field mapped");
            } else {
                eprintln!("unmapped ({}):", i.unmapped.len());
                for u in &i.unmapped {
                    eprintln!(
                        "  - {} {} ({}:{}): {}",
                        u.object, u.field, u.file, u.line, u.why
                    );
                }
            }
        }
    }
}

fn refuse(output: Output, e: &ImportError) -> i32 {
    if output == Output::Json {
        println!(
            "{}",
            serde_json::json!({"error": "invalid", "message": e.to_string(), "file": e.file, "document": e.document, "line": e.pos.line, "col": e.pos.col, "field": e.field})
        );
    }
    eprintln!("error: {e}");
    2
}
