//! Reading migration files and classifying them (expand, contract or irreversible,
//! with lock-risk warnings), for `rampart migrations check`, `rampart run`, the
//! runbook and the MCP tools.
//!
//! Owns finding and reading the `.sql` files; the rules and the report are in
//! `rampart-core`. It must not print or run a migration.

use std::path::{Path, PathBuf};

use rampart_core::migrations::{self, CheckReport, FileReport};

/// The `.sql` files named, with directories expanded (sorted, recursively).
fn collect(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut found, &mut std::collections::HashSet::new())
                .map_err(|e| format!("{}: {e}", p.display()))?;
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

/// The `.sql` files under `dir` (regular files, or links to them), links to
/// directories followed, each directory read once: a link back up (or `/proc/*/root`)
/// ends the walk there instead of never.
fn walk(
    dir: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
) -> std::io::Result<()> {
    if !seen.insert(std::fs::canonicalize(dir)?) {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out, seen)?;
        } else if path.extension().is_some_and(|e| e == "sql") && path.is_file() {
            out.push(path);
        }
    }
    Ok(())
}

/// Checks the files and returns the report, or `path:line: message` for the first file
/// that cannot be read or parsed.
pub fn check(paths: &[PathBuf]) -> Result<CheckReport, String> {
    let mut files = Vec::new();
    // Functions the files before created: a later file calling one runs its body.
    let mut functions = std::collections::HashSet::new();
    for path in collect(paths)? {
        // A byte that is not UTF-8 is refused at its line, as a parse error is.
        let text = crate::run::read_text(&path).map_err(|e| e.to_string())?;
        if let Some(line) = migrations::unexplained_annotations(&text).first() {
            return Err(format!(
                "{}:{line}: `-- {}` needs a reason, such as `-- {} backfill of a new column, reviewed by NAME`",
                path.display(),
                migrations::SAFE_ANNOTATION,
                migrations::SAFE_ANNOTATION
            ));
        }
        let statements = migrations::classify_with(&text, &mut functions)
            .map_err(|e| format!("{}:{}: {}", path.display(), e.line, e.message))?;
        files.push(FileReport::new(path.display().to_string(), statements));
    }
    Ok(CheckReport::new(files))
}
