//! Releases submitted to `rampart serve`: queued, claimed for running, withdrawn before
//! they start, and done with their report; each submission and withdrawal is chained.
//!
//! Owns the submissions table. It must not decide when a submission runs (the server's
//! queue does) nor run it.

use super::StateStore;
use super::chain::{chain, sha256_hex};
use super::error::StoreError;
use super::sql::{Row, Tx, args};
use rampart_core::Millis;

/// A release submitted to `rampart serve`, as queued.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Submission {
    /// The release id it gets.
    pub id: String,
    /// Service name.
    pub service: String,
    /// The version to release.
    pub version: String,
    /// The version serving now, if the submitter named it.
    pub stable: Option<String>,
    /// Why this is a hotfix during a freeze, if it is one.
    pub hotfix: Option<String>,
    /// Who submitted it.
    pub initiator: String,
    /// The policy text.
    pub policy: String,
    /// Where the policy's relative paths resolve.
    pub workdir: String,
    /// `queued`, `running` or `done`.
    pub state: String,
    /// The final report (JSON), once done.
    pub report: Option<String>,
    /// When it was submitted.
    pub created_at: Millis,
}

pub(super) fn row_to_submission(r: &Row) -> Result<Submission, StoreError> {
    Ok(Submission {
        id: r.text(0)?,
        service: r.text(1)?,
        version: r.text(2)?,
        stable: r.opt_text(3)?,
        hotfix: r.opt_text(4)?,
        initiator: r.text(5)?,
        policy: r.text(6)?,
        workdir: r.text(7)?,
        state: r.text(8)?,
        report: r.opt_text(9)?,
        created_at: r.uint(10)?,
    })
}

pub(super) const SUBMISSION_COLUMNS: &str =
    "id, service, version, stable, hotfix, initiator, policy, workdir, state, report, created_at";

// === impl StateStore: submissions ===

impl StateStore {
    /// Queues a release for `rampart serve`, and records who asked.
    pub async fn submit(&self, s: &Submission) -> Result<(), StoreError> {
        let tx = self.chained().await?;
        Self::insert_submission(tx, s).await
    }

    /// [`StateStore::submit`] for the leader itself (a release it starts on its own,
    /// as `serve --kubernetes` does for Git's changes): fenced like its other acting
    /// writes, so that a deposed leader never queues a release beside its successor.
    pub async fn submit_acting(&self, s: &Submission) -> Result<(), StoreError> {
        let tx = self.acting().await?;
        Self::insert_submission(tx, s).await
    }

    async fn insert_submission(mut tx: Tx, s: &Submission) -> Result<(), StoreError> {
        tx.execute(
            &format!("INSERT INTO submissions ({SUBMISSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
            args![
                &s.id,
                &s.service,
                &s.version,
                s.stable.as_deref(),
                s.hotfix.as_deref(),
                &s.initiator,
                &s.policy,
                &s.workdir,
                &s.state,
                s.report.as_deref(),
                s.created_at
            ],
        )
        .await?;
        let body = serde_json::json!({
            "service": s.service,
            "version": s.version,
            "stable": s.stable,
            "hotfix": s.hotfix,
            "policy_sha256": sha256_hex(&s.policy),
            "workdir": s.workdir,
            // Its leaving the queue is recorded too (`submission_done`).
            "tracked": true,
        })
        .to_string();
        chain(
            &mut tx,
            s.created_at,
            &s.initiator,
            "release_submitted",
            Some((&s.id, None)),
            &body,
        )
        .await?;
        tx.commit().await
    }

    /// A submission by release id.
    pub async fn submission(&self, id: &str) -> Result<Option<Submission>, StoreError> {
        let row = self
            .db
            .conn()
            .await?
            .query_opt(
                &format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE id = ?1"),
                args![id],
            )
            .await?;
        row.as_ref().map(row_to_submission).transpose()
    }

    /// Submissions not done yet, oldest first.
    pub async fn open_submissions(&self) -> Result<Vec<Submission>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                &format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE state != 'done' ORDER BY rowid"),
                args![],
            )
            .await?;
        rows.iter().map(row_to_submission).collect()
    }

    /// The last `limit` submissions of `version` of `service`, whatever their state,
    /// newest first.
    pub async fn submissions_of(
        &self,
        service: &str,
        version: &str,
        limit: usize,
    ) -> Result<Vec<Submission>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .db
            .conn()
            .await?
            .query(
                &format!("SELECT {SUBMISSION_COLUMNS} FROM submissions WHERE service = ?1 AND version = ?2 ORDER BY rowid DESC LIMIT ?3"),
                args![service, version, limit],
            )
            .await?;
        rows.iter().map(row_to_submission).collect()
    }

    /// Claims a submission for running: `false` when it is done (withdrawn) already.
    pub async fn claim_submission(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.acting().await?;
        let n = tx
            .execute(
                "UPDATE submissions SET state = 'running' WHERE id = ?1 AND state != 'done'",
                args![id],
            )
            .await?;
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Withdraws a submission that has not started, with its final report. Fails when
    /// it has started (or is over).
    pub async fn withdraw(
        &self,
        id: &str,
        by: &str,
        report: &str,
        at: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.chained().await?;
        let n = tx
            .execute(
                "UPDATE submissions SET state = 'done', report = ?2 WHERE id = ?1 AND state = 'queued'",
                args![id, report],
            )
            .await?;
        if n == 0 {
            return Err(StoreError::Conflict(format!(
                "release {id} is no longer queued; abort it as a running release"
            )));
        }
        chain(
            &mut tx,
            at,
            by,
            "release_withdrawn",
            Some((id, None)),
            report,
        )
        .await?;
        tx.commit().await
    }

    /// Moves a submission on (`running`, or `done` with its report); `done` is
    /// recorded in the audit chain at `at` (`submission_done`), so that a queued
    /// release cannot leave the queue unseen.
    pub async fn set_submission(
        &self,
        id: &str,
        state: &str,
        report: Option<&str>,
        at: Millis,
    ) -> Result<(), StoreError> {
        let mut tx = self.acting().await?;
        tx.execute(
            "UPDATE submissions SET state = ?2, report = COALESCE(?3, report) WHERE id = ?1",
            args![id, state, report],
        )
        .await?;
        if state == "done" {
            let body = serde_json::json!({"state": state}).to_string();
            chain(
                &mut tx,
                at,
                "rampart",
                "submission_done",
                Some((id, None)),
                &body,
            )
            .await?;
        }
        tx.commit().await
    }
}
