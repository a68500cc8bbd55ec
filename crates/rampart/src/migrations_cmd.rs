//! `rampart migrations check FILES|DIR [--output json]`: classify PostgreSQL
//! migrations as expand, contract or irreversible, with lock-risk warnings.
//!
//! Exit codes: 0 when the overall class is `expand`, 3 for `contract`, 4 for
//! `irreversible`, 2 for a file that does not parse (or cannot be read).

use std::path::{Path, PathBuf};

use rampart_core::migrations::{self, Class, StatementReport};
use serde::Serialize;

use crate::run::Output;

/// One file's verdict.
#[derive(Debug, Serialize)]
pub struct FileReport {
    /// The file.
    pub path: String,
    /// Its worst statement's class.
    pub class: Class,
    /// Every statement.
    pub statements: Vec<StatementReport>,
}

/// The whole check.
#[derive(Debug, Serialize)]
pub struct CheckReport {
    /// The worst class over all files.
    pub class: Class,
    /// Each file, in the order checked.
    pub files: Vec<FileReport>,
}

/// The `.sql` files named, with directories expanded (sorted, recursively).
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found).map_err(|e| format!("{}: {e}", p.display()))?;
            found.sort();
            if found.is_empty() {
                return Err(format!("{}: no .sql files", p.display()));
            }
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(format!("{}: no such file or directory", p.display()));
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "sql") {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks the files and returns the report, or `path:line: message` for the first file
/// that cannot be read or parsed.
pub fn check(paths: &[PathBuf]) -> Result<CheckReport, String> {
    let mut files = Vec::new();
    for path in collect(paths)? {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        if let Some(line) = migrations::unexplained_annotations(&text).first() {
            return Err(format!(
                "{}:{line}: `-- {}` needs a reason, such as `-- {} backfill of a new column, reviewed by NAME`",
                path.display(),
                migrations::SAFE_ANNOTATION,
                migrations::SAFE_ANNOTATION
            ));
        }
        let statements = migrations::classify(&text)
            .map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.message))?;
        files.push(FileReport {
            path: path.display().to_string(),
            class: migrations::worst(&statements),
            statements,
        });
    }
    Ok(CheckReport {
        class: files.iter().map(|f| f.class).max().unwrap_or(Class::Expand),
        files,
    })
}

/// Runs the command; returns the exit code.
pub fn run(paths: &[PathBuf], output: Output) -> i32 {
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
