//! Reading the store across releases: the release list, the services, and the release
//! logs of every release in the order they were written (the live feed).
//!
//! Owns these read-only queries. It must not change anything nor interpret a log.

use super::StateStore;
use super::error::StoreError;
use super::releases::{RELEASE_COLUMNS, row_to_entry, row_to_release};
use super::sql::args;
use rampart_core::ports::{ReleaseRecord, StoredInput};

// === impl StateStore: listing ===

impl StateStore {
    /// Releases, newest first, optionally of one service, at most `limit`.
    pub async fn list_releases(
        &self,
        service: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                &format!("SELECT {} FROM releases WHERE CAST(?1 AS TEXT) IS NULL OR service = ?1 ORDER BY created_at DESC, id DESC LIMIT ?2", RELEASE_COLUMNS),
                args![service, u64::try_from(limit).unwrap_or(u64::MAX)],
            )
            .await?;
        rows.iter().map(row_to_release).collect()
    }

    /// The position of the newest release log entry (0 when there is none), for
    /// following the logs of every release with [`StateStore::entries_after`].
    pub async fn log_cursor(&self) -> Result<i64, StoreError> {
        self.db
            .conn()
            .await?
            .one("SELECT COALESCE(MAX(rowid), 0) FROM events", args![])
            .await?
            .int(0)
    }

    /// Release log entries appended after `cursor`, oldest first, at most `limit`, with
    /// their release id and their own cursor.
    pub async fn entries_after(
        &self,
        cursor: i64,
        limit: usize,
    ) -> Result<Vec<(i64, String, StoredInput)>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT seq, at, input, audit, rowid, release_id FROM events WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                args![cursor, u64::try_from(limit).unwrap_or(u64::MAX)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                let release = r.text(5)?;
                let entry = row_to_entry(r, &release)?;
                Ok((r.int(4)?, release, entry))
            })
            .collect()
    }

    /// Every service the store knows of (from releases and submissions), unordered.
    pub async fn services(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT service FROM releases UNION SELECT service FROM submissions",
                args![],
            )
            .await?;
        rows.iter().map(|r| r.text(0)).collect()
    }

    /// Every release of a service, newest first.
    pub async fn releases(&self, service: &str) -> Result<Vec<ReleaseRecord>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE service = ?1 ORDER BY created_at DESC, id DESC"),
                args![service],
            )
            .await?;
        rows.iter().map(row_to_release).collect()
    }
}
