//! Releases and their logs as the controller sees them: created, read back whole,
//! finished; the service's unfinished release, its automatic rollbacks and the version
//! it serves.
//!
//! Owns the releases and services tables and reading log rows. It must not interpret a
//! log (replay is core's job); appending to one is `appends`'s.

use rampart_core::ports::{ReleaseRecord, StoredInput};
use rampart_core::release::OutcomeKind;

use super::StateStore;
use super::chain::{chain, sha256_hex};
use super::error::StoreError;
use super::sql::{Row, args, db_err};

pub(super) const RELEASE_COLUMNS: &str = "id, service, version, policy, created_at, outcome";

fn outcome_from(text: Option<String>) -> Option<OutcomeKind> {
    text.and_then(|t| serde_json::from_value(serde_json::Value::String(t)).ok())
}

pub(super) fn row_to_release(r: &Row) -> Result<ReleaseRecord, StoreError> {
    Ok(ReleaseRecord {
        id: r.text(0)?,
        service: r.text(1)?,
        version: r.text(2)?,
        policy: r.text(3)?,
        created_at: r.uint(4)?,
        outcome: outcome_from(r.opt_text(5)?),
    })
}

pub(super) fn row_to_entry(r: &Row, release: &str) -> Result<StoredInput, StoreError> {
    let seq = r.uint(0)?;
    Ok(StoredInput {
        seq,
        at: r.uint(1)?,
        input: serde_json::from_str(&r.text(2)?)
            .map_err(|e| db_err(format!("event {seq} of {release} is unreadable: {e}")))?,
        events: serde_json::from_str(&r.text(3)?).map_err(|e| {
            db_err(format!(
                "audit of event {seq} of {release} is unreadable: {e}"
            ))
        })?,
    })
}

// === impl StateStore: releases ===

impl StateStore {
    pub(super) async fn create_release(&self, rel: &ReleaseRecord) -> Result<(), StoreError> {
        let mut tx = self.acting().await?;
        // Checked before the insert: PostgreSQL aborts a transaction at its first error.
        let taken = tx
            .one(
                "SELECT EXISTS(SELECT 1 FROM releases WHERE id = ?1)",
                args![&rel.id],
            )
            .await?
            .bool(0)?;
        if taken {
            return Err(StoreError::IdTaken(rel.id.clone()));
        }
        let busy = tx
            .one(
                "SELECT EXISTS(SELECT 1 FROM releases WHERE service = ?1 AND outcome IS NULL)",
                args![&rel.service],
            )
            .await?
            .bool(0)?;
        if busy {
            return Err(StoreError::Busy(rel.service.clone()));
        }
        tx.execute(
            "INSERT INTO releases (id, service, version, policy, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![&rel.id, &rel.service, &rel.version, &rel.policy, rel.created_at],
        )
        .await?;
        let body = serde_json::json!({
            "service": rel.service,
            "version": rel.version,
            "policy_sha256": sha256_hex(&rel.policy),
        })
        .to_string();
        chain(
            &mut tx,
            rel.created_at,
            "rampart",
            "release_created",
            Some((&rel.id, None)),
            &body,
        )
        .await?;
        tx.commit().await
    }

    pub(super) async fn load_release(
        &self,
        release_id: &str,
    ) -> Result<(ReleaseRecord, Vec<StoredInput>), StoreError> {
        let mut c = self.db.conn().await?;
        let rel = c
            .query_opt(
                &format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE id = ?1"),
                args![release_id],
            )
            .await?
            .ok_or_else(|| StoreError::NoRelease(release_id.to_string()))?;
        let rows = c
            .query(
                "SELECT seq, at, input, audit FROM events WHERE release_id = ?1 ORDER BY seq",
                args![release_id],
            )
            .await?;
        let log = rows
            .iter()
            .map(|r| row_to_entry(r, release_id))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((row_to_release(&rel)?, log))
    }

    pub(super) async fn finish_release(
        &self,
        release_id: &str,
        outcome: OutcomeKind,
        serving: Option<&str>,
        automatic_rollback: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.acting().await?;
        let service = tx
            .query_opt(
                "SELECT service FROM releases WHERE id = ?1",
                args![release_id],
            )
            .await?
            .ok_or_else(|| StoreError::NoRelease(release_id.to_string()))?
            .text(0)?;
        tx.execute(
            "UPDATE releases SET outcome = ?2, automatic_rollback = ?3, finished_at = (SELECT MAX(at) FROM events WHERE release_id = ?1) WHERE id = ?1",
            args![release_id, outcome.as_str(), automatic_rollback],
        )
        .await?;
        if let Some(v) = serving {
            tx.execute(
                "INSERT INTO services (service, serving_version) VALUES (?1, ?2) ON CONFLICT(service) DO UPDATE SET serving_version = excluded.serving_version",
                args![service.as_str(), v],
            )
            .await?;
        }
        let body = serde_json::json!({
            "outcome": outcome.as_str(),
            "serving": serving,
            "automatic_rollback": automatic_rollback,
        })
        .to_string();
        let at = tx
            .one(
                "SELECT COALESCE(MAX(at), 0) FROM events WHERE release_id = ?1",
                args![release_id],
            )
            .await?
            .uint(0)?;
        chain(
            &mut tx,
            at,
            "rampart",
            "release_finished",
            Some((release_id, None)),
            &body,
        )
        .await?;
        tx.commit().await
    }

    /// The service's unfinished release, if any.
    pub(super) async fn active_release(
        &self,
        service: &str,
    ) -> Result<Option<ReleaseRecord>, StoreError> {
        self.db
            .conn()
            .await?
            .query_opt(
                &format!(
                    "SELECT {RELEASE_COLUMNS} FROM releases WHERE service = ?1 AND outcome IS NULL"
                ),
                args![service],
            )
            .await?
            .as_ref()
            .map(row_to_release)
            .transpose()
    }

    /// Automatic rollbacks of a service finished at or after `since`.
    pub(super) async fn count_automatic_rollbacks(
        &self,
        service: &str,
        since: u64,
    ) -> Result<u32, StoreError> {
        let n = self
            .db
            .conn()
            .await?
            .one(
                "SELECT COUNT(*) FROM releases WHERE service = ?1 AND automatic_rollback = 1 AND finished_at >= ?2",
                args![service, since],
            )
            .await?
            .int(0)?;
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    /// Where the service's local version processes are recorded: the owner already on
    /// record (a host and a directory there), or, when none is, `(host, dir)`, recorded
    /// now. Whoever drives the service's next release adopts its processes from there.
    pub async fn claim_processes(
        &self,
        service: &str,
        host: &str,
        dir: &str,
    ) -> Result<(String, String), StoreError> {
        let mut tx = self.db.begin().await?;
        tx.execute(
            "INSERT INTO services (service) VALUES (?1) ON CONFLICT(service) DO NOTHING",
            args![service],
        )
        .await?;
        tx.execute(
            "UPDATE services SET process_host = ?2, process_dir = ?3 WHERE service = ?1 AND process_host IS NULL",
            args![service, host, dir],
        )
        .await?;
        let r = tx
            .one(
                "SELECT process_host, process_dir FROM services WHERE service = ?1",
                args![service],
            )
            .await?;
        let owner = (r.text(0)?, r.text(1)?);
        tx.commit().await?;
        Ok(owner)
    }

    /// The host and directory on record for the service's local processes, if any,
    /// without claiming them (see [`Self::claim_processes`]).
    pub async fn process_owner(
        &self,
        service: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row = self
            .db
            .conn()
            .await?
            .query_opt(
                "SELECT process_host, process_dir FROM services WHERE service = ?1",
                args![service],
            )
            .await?;
        Ok(match row {
            Some(r) => r.opt_text(0)?.zip(r.opt_text(1)?),
            None => None,
        })
    }

    /// The version the service last finished on.
    pub(super) async fn serving(&self, service: &str) -> Result<Option<String>, StoreError> {
        let row = self
            .db
            .conn()
            .await?
            .query_opt(
                "SELECT serving_version FROM services WHERE service = ?1",
                args![service],
            )
            .await?;
        Ok(row.map(|r| r.opt_text(0)).transpose()?.flatten())
    }
}
