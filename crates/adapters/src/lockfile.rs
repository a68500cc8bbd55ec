//! Lock files under a state directory (`locks/`): one rampart process at a time holds
//! each, with the operating system's lock, so it goes with the process however it
//! ends. The holder writes who it is into the file, for whoever finds it taken.
//!
//! Owns opening, taking and reading such a file. It must not decide how long to wait
//! for one, nor what a taken lock means: its callers do.

use std::fs::File;
use std::io::Write;
use std::path::Path;

/// Opens the lock file at `path`, creating it and its directory. The error says what
/// failed (`"creating"` the directory or `"opening"` the file).
pub fn open(path: &Path) -> Result<File, (&'static str, std::io::Error)> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| ("creating", e))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| ("opening", e))
}

/// Takes `file`'s lock if no one holds it (`true`), and writes this process in as its
/// holder (best effort: it only informs); `false` while another holds it.
pub fn try_take(file: &mut File) -> std::io::Result<bool> {
    match file.try_lock() {
        Ok(()) => {
            let _ = file
                .set_len(0)
                .and_then(|()| write!(file, "rampart process {}", std::process::id()));
            Ok(true)
        }
        Err(std::fs::TryLockError::WouldBlock) => Ok(false),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Who holds the lock file at `path`, as its holder wrote it; `unknown` when it says
/// nothing readable.
pub fn holder(path: &Path, unknown: &str) -> String {
    std::fs::read_to_string(path)
        .ok()
        .filter(|h| !h.trim().is_empty())
        .unwrap_or_else(|| unknown.into())
}
