//! Store URLs: which database a URL names, read in one place for opening a store and
//! for `rampart serve`'s single-server lock.
//!
//! Owns the URL schemes. It must not open anything.

use std::path::Path;

use super::error::StoreError;

/// Where a store URL points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Location<'a> {
    /// A SQLite file.
    Sqlite(&'a Path),
    /// A PostgreSQL server (`postgres://`, `postgresql://`, or `host=... dbname=...`).
    Postgres,
}

/// Reads a store URL: `sqlite:PATH`, `sqlite://PATH` or a bare path, or a PostgreSQL
/// one. The error never quotes the URL (it may carry a password).
pub fn locate(url: &str) -> Result<Location<'_>, StoreError> {
    let key_value = !url.contains("://") && url.contains('=') && url.contains(' ');
    if url.starts_with("postgres://") || url.starts_with("postgresql://") || key_value {
        return Ok(Location::Postgres);
    }
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    if path.contains("://") {
        return Err(StoreError::Unsupported(
            "the store URL has an unknown scheme; use sqlite:PATH or postgres://...".into(),
        ));
    }
    Ok(Location::Sqlite(Path::new(path)))
}
