//! Operator requests (approve, pause, roll back...) queued for a release, for whichever
//! controller drives it to take one at a time; who asked is chained.
//!
//! Owns the commands table. It must not apply a request: the controller turns it into
//! an input of the release.

use rampart_core::ports::{CommandKind, OperatorCommand};

use super::StateStore;
use super::chain::chain;
use super::error::StoreError;
use super::sql::{Tx, args};

/// Queues an operator request for release `id` inside `tx`, and chains who asked.
async fn queue_command(tx: &mut Tx, id: &str, command: &OperatorCommand) -> Result<(), StoreError> {
    let queued = tx
        .query_opt(
            "INSERT INTO commands (release_id, actor, reason, force, kind, at) VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING id",
            args![id, &command.actor, &command.reason, command.force, command.kind.as_str(), command.at],
        )
        .await?
        .ok_or_else(|| StoreError::Database("a queued request got no id".into()))?
        .uint(0)?;
    // The record names the row it vouches for: a row nobody asked for through rampart
    // (written into the table directly) has no record, and is never obeyed.
    let body =
        serde_json::json!({"reason": command.reason, "force": command.force, "command": queued})
            .to_string();
    chain(
        tx,
        command.at,
        &command.actor,
        &format!("request:{}", command.kind.as_str()),
        Some((id, None)),
        &body,
    )
    .await
}

// === impl StateStore: operator requests ===

impl StateStore {
    /// Queues an operator request for exactly release `id`: fails when it does not
    /// exist or is over (a request meant for one release never reaches the next).
    pub async fn push_command_to(
        &self,
        id: &str,
        command: &OperatorCommand,
    ) -> Result<(), StoreError> {
        let mut tx = self.chained().await?;
        let open = tx
            .query_opt(
                "SELECT outcome IS NULL FROM releases WHERE id = ?1",
                args![id],
            )
            .await?
            .map(|r| r.bool(0))
            .transpose()?;
        match open {
            None => return Err(StoreError::NoRelease(id.to_string())),
            Some(false) => return Err(StoreError::Conflict(format!("release {id} is over"))),
            Some(true) => {}
        }
        queue_command(&mut tx, id, command).await?;
        tx.commit().await
    }

    pub(super) async fn queue_for_service(
        &self,
        service: &str,
        command: &OperatorCommand,
    ) -> Result<String, StoreError> {
        let mut tx = self.chained().await?;
        let id = tx
            .query_opt(
                "SELECT id FROM releases WHERE service = ?1 AND outcome IS NULL",
                args![service],
            )
            .await?
            .ok_or_else(|| {
                StoreError::NotFound(format!("service {service} has no release in progress"))
            })?
            .text(0)?;
        queue_command(&mut tx, &id, command).await?;
        tx.commit().await?;
        Ok(id)
    }

    /// The oldest request for `release_id` not answered yet, with its id; marks
    /// nothing (see [`Store::next_command`](rampart_core::ports::Store::next_command)).
    /// A request of a kind this version does not know (written by a newer rampart) is
    /// dropped rather than guessed at.
    pub(super) async fn next_command_now(
        &self,
        release_id: &str,
    ) -> Result<Option<(u64, OperatorCommand)>, StoreError> {
        loop {
            let Some(r) = self
                .db
                .conn()
                .await?
                .query_opt(
                    "SELECT actor, reason, force, kind, at, id FROM commands WHERE release_id = ?1 AND taken = 0 ORDER BY id LIMIT 1",
                    args![release_id],
                )
                .await?
            else {
                return Ok(None);
            };
            let id = r.uint(5)?;
            let kind = r.text(3)?;
            let Some(kind) = CommandKind::parse(&kind) else {
                tracing::warn!(release = %release_id, kind = %kind, "unknown operator request ignored");
                self.drop_command_now(release_id, id).await?;
                continue;
            };
            let command = OperatorCommand {
                kind,
                actor: r.text(0)?,
                reason: r.text(1)?,
                force: r.bool(2)?,
                at: r.uint(4)?,
            };
            if !self.vouched(release_id, id, &command).await? {
                tracing::warn!(
                    release = %release_id,
                    request = id,
                    kind = command.kind.as_str(),
                    actor = %command.actor,
                    "a queued request the audit chain never recorded as it stands (written into the table directly, or edited since) is refused, not obeyed"
                );
                self.refuse_command_now(release_id, id, &command).await?;
                continue;
            }
            return Ok(Some((id, command)));
        }
    }

    /// Whether the audit chain recorded request `command` of `release_id` as it is
    /// queued: a `request:KIND` record of that release naming the request (or, for one
    /// queued before records named their requests, with the same person, time, reason
    /// and force), whose hash is right and which the chain goes on from (the next
    /// record links to it, or it is the head). A row written into the table directly,
    /// or edited since (its time moved, its force flipped), has none.
    async fn vouched(
        &self,
        release_id: &str,
        command: u64,
        asked: &OperatorCommand,
    ) -> Result<bool, StoreError> {
        let mut conn = self.db.conn().await?;
        let records = conn
            .query(
                "SELECT id, at, actor, action, release_id, seq, body, prev, hash FROM chain WHERE release_id = ?1 AND action = ?2 ORDER BY id",
                args![release_id, format!("request:{}", asked.kind.as_str())],
            )
            .await?;
        for row in &records {
            let rec = super::chain::row_to_chain(row)?;
            let body: serde_json::Value = serde_json::from_str(&rec.body).unwrap_or_default();
            let names = match body.get("command") {
                Some(named) => named.as_u64() == Some(command),
                None => true,
            };
            let same = rec.actor == asked.actor
                && rec.at == asked.at
                && body["reason"].as_str() == Some(asked.reason.as_str())
                && body["force"].as_bool() == Some(asked.force);
            if !(names && same && rec.intact()) {
                continue;
            }
            let next = conn
                .query_opt("SELECT prev FROM chain WHERE id = ?1", args![rec.id + 1])
                .await?;
            match next {
                Some(n) if n.text(0)? != rec.hash => continue,
                _ => return Ok(true),
            }
        }
        Ok(false)
    }

    /// Marks request `command` of `release_id` answered without an input, and records
    /// in the chain that it was refused as one nobody asked for.
    async fn refuse_command_now(
        &self,
        release_id: &str,
        command: u64,
        asked: &OperatorCommand,
    ) -> Result<(), StoreError> {
        let mut tx = self.acting().await?;
        tx.execute(ANSWER_COMMAND, args![command, release_id])
            .await?;
        let body = serde_json::json!({
            "command": command,
            "kind": asked.kind.as_str(),
            "actor": asked.actor,
            "at": asked.at,
            "why": "no request recorded in the audit chain matches it",
        })
        .to_string();
        chain(
            &mut tx,
            asked.at,
            "rampart",
            "request_refused",
            Some((release_id, None)),
            &body,
        )
        .await?;
        tx.commit().await
    }

    /// Marks request `command` of `release_id` answered, without an input.
    pub(super) async fn drop_command_now(
        &self,
        release_id: &str,
        command: u64,
    ) -> Result<(), StoreError> {
        let mut tx = self.acting().await?;
        tx.execute(ANSWER_COMMAND, args![command, release_id])
            .await?;
        tx.commit().await
    }

    /// The releases that have requests not taken yet.
    pub(super) async fn releases_with_requests_now(&self) -> Result<Vec<String>, StoreError> {
        let rows = self
            .db
            .conn()
            .await?
            .query(
                "SELECT DISTINCT release_id FROM commands WHERE taken = 0",
                args![],
            )
            .await?;
        rows.iter().map(|r| r.text(0)).collect()
    }
}

/// Marks a request answered (`?1` its id, `?2` its release).
pub(super) const ANSWER_COMMAND: &str =
    "UPDATE commands SET taken = 1 WHERE id = ?1 AND release_id = ?2";
